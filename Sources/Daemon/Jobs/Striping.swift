import Foundation
import Logging
import Transfer

/// How a center stripes jobs across its transfer nodes (`[daemon] nodes`, `stripe_*`,
/// `per_node`; docs/STRIPING.md).
public struct StripeSettings: Sendable, Equatable {
    /// A job moving at least this many bytes is striped unless it says `stripe: false`.
    public var threshold: Int64 = 4 << 30
    /// A big file's part: a multiple of the 4 MiB chunk; files of at least two of them move
    /// as ranges.
    public var rangeBytes: Int64 = 256 << 20
    /// A tree's other files go in parts of at most this many entries and about this many bytes.
    public var groupFiles = 1000
    public var groupBytes: Int64 = 256 << 20
    /// Parts one node runs at once (its workers claim no more).
    public var perNode = 2

    public init() {}

    /// A node's name: 1 to 64 of letters, digits, '.', '-', '_' (it is written in the queue
    /// and in metrics).
    public static func isNodeName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64 && s.unicodeScalars.allSatisfy { ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) || $0 == "." || $0 == "-" || $0 == "_" }
    }
}

/// A job cut into parts, run by every node of the center that shares the queue (issue 19).
///
/// The first attempt of a job that should be striped walks its source (a listing: local for a
/// push, the peer's for a pull), cuts it (`StripePlanner`) and writes the parts; from then on
/// the job's attempt is its **coordinator**: it runs parts itself like any other worker, takes
/// over commits whose committer was lost, and ends the job when every part succeeded and
/// every striped file is committed (or fails it with the first part's or commit's error that
/// a new attempt would meet again). Every worker of every node claims parts before whole jobs
/// (`workerLoop`). A range part moves chunks of one file into the partial copy shared by all
/// its ranges on the destination's shared filesystem; the worker that finishes a file's last
/// range commits it (`StripedCommit`: the ranges' journals against the source's digest made
/// of the parts' hashes, then one rename).
///
/// Fencing: a part's keeper renews its lease every third of it and stops the part when a
/// renewal is refused or none succeeded for two thirds of the lease; the queue takes a part
/// back only a whole lease after it expired. A node cut off from the database has therefore
/// stopped before another resumes its range from the journal.
extension JobRunner {
    /// Striping needs several nodes sharing one queue: PostgreSQL and `nodes > 1`.
    public var canStripe: Bool { store.db.dialect == .postgres && settings.nodes > 1 }

    static let notStripedEmbedded = "not striped: an embedded SQLite queue means one transfer node; give the center's nodes one postgres:// database and [daemon] nodes"

    /// Runs `job` striped when it should be; nil when it runs whole (the caller does that).
    func stripedAttempt(_ job: Job, progress: TransferProgress, worker: String) -> AttemptOutcome? {
        if !job.striped {
            if job.request.stripe == false { return nil }
            guard canStripe else {
                if job.request.stripe == true && job.note == nil { try? store.setNote(job.id, JobRunner.notStripedEmbedded, now: JobRunner.now()) }
                return nil
            }
            // Weighing a job against the threshold takes a walk of its source: done for local
            // sources (a push) only; a pull is striped when asked (a listing of the peer per job
            // would cost every small pull a session).
            if job.request.stripe == nil && FerryURL.isFerry(job.request.source) { return nil }
            do {
                let clock = ContinuousClock()
                let t0 = clock.now
                guard let plan = try planStripes(job) else { return nil }
                let t1 = clock.now
                try store.plan(job.id, worker: worker, plan: plan, now: JobRunner.now())
                let ms = { (d: Duration) in d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000 }
                Logger(label: "ferry.daemon").info("job \(job.id) striped into \(plan.partCount) parts (\(plan.files.count) files as ranges; planned in \(ms(t1 - t0)) ms, queued in \(ms(clock.now - t1)) ms)")
            } catch {
                let e = (error as? TransferError) ?? TransferError(.io, "\(error)")
                if isStoppingNow { return .interrupted }
                // Not asked for: the job runs whole, and meets the same trouble there if it is real.
                if job.request.stripe == nil { return nil }
                return .failure(message: "planning the stripes: " + e.message, resumable: e.resumable && !JobRunner.permanent.contains(e.code), code: e.code)
            }
        }
        return coordinate(job, progress: progress, worker: worker)
    }

    /// The job's parts, or nil when it should run whole: below the threshold (unless asked),
    /// or fewer than two parts (a note says so when striping was asked for).
    func planStripes(_ job: Job) throws -> StripePlan? {
        let (src, srcPeer, srcExport) = try jobEndpoint(job.request.source, linkFree: job.linkFree)
        let (_, dstPeer, dstExport) = try jobEndpoint(job.request.destination, linkFree: job.linkFree)
        let creds = ClientCredentials(tls: try tlsContextForJobs(peer: job.peer), token: nil, center: srcPeer ?? dstPeer)
        let account = try localAccount(job, srcExport ?? dstExport)
        var entries: [StripePlanner.Entry] = []
        var total: Int64 = 0
        var pathBytes = 0
        var readOnlyDirectory: String?
        do {
            if let account { try ThreadIdentity.adopt(account) }
            defer { if account != nil { ThreadIdentity.restore() } }
            _ = try TransferClient.list(src, request: ListRequest(depth: job.request.recursive ? .max : 0), credentials: creds) { e in
                // A listing (a peer's, or a local tree) is bounded before it is held.
                pathBytes += e.path.utf8.count + 64
                guard entries.count < StripePlanner.entriesMax, pathBytes < StripePlanner.pathBytesMax else {
                    throw TransferError(.usage, "more than \(StripePlanner.entriesMax) entries or \(StripePlanner.pathBytesMax >> 20) MiB of names: too many to stripe in one job")
                }
                // Each part's session sets the directories it passes to their modes at its end:
                // one the owner may not write would lock the next parts out of it.
                if e.kind == .directory && e.mode & 0o200 == 0 && readOnlyDirectory == nil { readOnlyDirectory = e.path.isEmpty ? "." : e.path }
                if e.path.isEmpty && e.kind == .directory { return }  // the root: made by every part
                // A peer's listing is checked where it is decoded; once more here, since these
                // paths become local paths of range parts and commits.
                if !e.path.isEmpty { _ = try namespaceComponents(e.path) }
                let size = Int64(clamping: e.size)
                entries.append(.init(path: e.path, size: size, mtimeSeconds: e.mtimeSeconds, mtimeNanoseconds: Int64(e.mtimeNanoseconds),
                                     mode: Int64(e.mode & 0o7777), isFile: e.kind == .file))
                if e.kind == .file { total = total.addingReportingOverflow(size).overflow ? .max : total + size }
            }
        }
        if job.request.stripe == nil && total < settings.stripe.threshold { return nil }
        if let dir = readOnlyDirectory {
            if job.request.stripe == true && job.note == nil {
                try? store.setNote(job.id, "not striped: directory '\(dir)' is not writable by its owner (parts would lock each other out of it)", now: JobRunner.now())
            }
            return nil
        }
        let s = settings.stripe
        let plan = try StripePlanner.plan(entries, chunkBytes: Int64(Wire.chunkBytesDefault), rangeBytes: s.rangeBytes, groupFiles: s.groupFiles, groupBytes: s.groupBytes,
                                          slots: settings.nodes * s.perNode)
        // One file too small for ranges travels whole; so does a job of one part.
        let whole = plan.partCount < 2 || plan.groups.contains { $0.paths.contains("") }
        if whole {
            if job.request.stripe == true && job.note == nil {
                try? store.setNote(job.id, "not striped: \(plan.partCount < 2 ? "one part" : "one file below two stripe ranges") (stripe_range \(byteText(UInt64(s.rangeBytes))))",
                                   now: JobRunner.now())
            }
            return nil
        }
        return plan
    }

    /// The job's attempt once it is striped: run parts, take over lost commits, end the job.
    func coordinate(_ job: Job, progress: TransferProgress, worker: String) -> AttemptOutcome {
        for _ in 0..<Int.max {
            if isStoppingNow { return .interrupted }
            if progress.isCancelled { return .interrupted }
            let seen = store.changes.generation
            do {
                // Every worker may be a coordinator: the time-based moves must not wait for one
                // that is not.
                try promoteIfDue(JobRunner.now())
                if let part = try store.claimPart(worker: worker, node: settings.node, now: JobRunner.now(), leaseSeconds: settings.leaseSeconds,
                                                  perNodeMax: settings.stripe.perNode, perPeerMax: settings.perPeerMax, perUserMax: settings.perUserMax,
                                                  peerLimits: tuner.activeLimits()) {
                    runPart(part, worker: worker)
                    continue
                }
                if let file = try store.claimCommit(worker: worker, now: JobRunner.now(), leaseSeconds: settings.leaseSeconds + 600) {
                    runCommit(file, worker: worker)
                    continue
                }
                let p = try store.partProgress(job.id)
                if p.complete {
                    do {
                        try finishDirectories(job)
                    } catch {
                        let e = (error as? TransferError) ?? TransferError(.io, "\(error)")
                        return .failure(message: "the directories' modes and times after the parts: " + e.message, resumable: e.resumable && !JobRunner.permanent.contains(e.code), code: e.code)
                    }
                    return .success(bytes: p.bytes, files: p.files)
                }
                if p.filesFailed > 0, let f = try store.stripedFiles(job.id).first(where: { $0.state == .failed }) {
                    return .failure(message: "\(f.path.isEmpty ? "the file" : f.path): \(f.error ?? "its commit failed")", resumable: false)
                }
                if p.byState[.failed, default: 0] > 0, let f = try store.parts(job.id).first(where: { $0.state == .failed }) {
                    let what = f.kind == .range ? "range \(f.range.map(\.description) ?? "?") of part \(f.seq)" : "part \(f.seq) (\(f.selection.count) paths)"
                    return .failure(message: "\(what): \(f.error ?? "failed")", resumable: false)
                }
            } catch {
                Logger(label: "ferry.daemon").error("job \(job.id): queue error while coordinating: \(error)")
            }
            _ = store.changes.waitBlocking(after: seen, timeout: settings.pollSeconds)
        }
        return .interrupted
    }

    /// A commit makes the whole partial copy durable (what the nodes wrote and the filesystem
    /// still holds dirty): its lease is the job lease plus the file at 100 MB/s.
    func commitLease(_ size: UInt64) -> Int64 { settings.leaseSeconds + Int64(size / 100_000_000) }

    /// The endpoints of a part: the job's sides, the remote one at the part's peer node, and
    /// for a range the file beneath them.
    func partEndpoints(_ job: Job, path: String, peerNode: String?) throws -> (src: Endpoint, dst: Endpoint, creds: ClientCredentials, account: LocalAccount?, remotePeer: String?) {
        let (src, srcPeer, srcExport) = try jobEndpoint(job.request.source, linkFree: job.linkFree)
        let (dst, dstPeer, dstExport) = try jobEndpoint(job.request.destination, linkFree: job.linkFree)
        let node = try peerNode.map { try HostPort(parsing: $0) }
        func place(_ e: Endpoint, destination: Bool) -> Endpoint {
            var e = e
            if case .remote(let server, let p) = e { e = .remote(node ?? server, path: p) }
            guard !path.isEmpty else {
                // One file into a directory (named with a trailing '/', or a local one that
                // exists): its name beneath it, as the engine does for a whole copy.
                if destination, let name = job.request.source.split(separator: "/").last,
                   job.request.destination.hasSuffix("/") || JobRunner.isDirectory(e) {
                    return JobRunner.beneath(e, String(name))
                }
                return e
            }
            return JobRunner.beneath(e, path)
        }
        let creds = ClientCredentials(tls: try tlsContextForJobs(peer: job.peer), token: nil, center: srcPeer ?? dstPeer)
        return (place(src, destination: false), place(dst, destination: true), creds, try localAccount(job, srcExport ?? dstExport), srcPeer ?? dstPeer)
    }

    /// Whether a local job path is an existing directory (opened step by step beneath its
    /// export, no link followed; the daemon's own look, no content read).
    static func isDirectory(_ e: Endpoint) -> Bool {
        guard case .confined(let root, let components, _) = e, !components.isEmpty else { return false }
        return isConfinedDirectory(root: root, components: components)
    }

    static func beneath(_ e: Endpoint, _ rel: String) -> Endpoint {
        switch e {
        case .local(let p): return .local(p.hasSuffix("/") ? p + rel : p + "/" + rel)
        case .remote(let hp, let p): return .remote(hp, path: p.hasSuffix("/") ? p + rel : p + "/" + rel)
        case .confined(let root, let c, let linkFree): return .confined(root: root, components: c + rel.split(separator: "/").map(String.init), linkFree: linkFree)
        }
    }

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

    /// Runs one part under its lease (renewed, and self-fenced), records its outcome, and
    /// commits the file when this was its last range.
    func runPart(_ part: JobPart, worker: String) {
        // (`done` is signalled once the transfer ended; the keeper and its renewals stop.)
        let progress = TransferProgress()
        let done = DispatchSemaphore(value: 0)
        let recorded = SampleCounter()
        let lease = Double(settings.leaseSeconds)
        // Renewals run on threads of their own, so that a database that hangs cannot stop the
        // watch: the part stops once no renewal succeeded for two thirds of its lease, well
        // before the queue would hand it to another node (a whole lease after its expiry).
        let held = RenewalWatch()
        let keeper = Thread { [self] in
            let every = max(0.5, lease / 3)
            var nextRenewal = ProcessInfo.processInfo.systemUptime + every
            while done.wait(timeout: .now() + 0.25) == .timedOut {
                let now = ProcessInfo.processInfo.systemUptime
                if now - held.lastHeld > lease * 2 / 3 {
                    progress.cancel("part \(part.seq) of job \(part.job): no lease renewal for \(Int(lease * 2 / 3)) s")
                }
                guard now >= nextRenewal, held.begin() else { continue }
                nextRenewal = now + every
                Thread.detachNewThread { [self] in
                    defer { held.end() }
                    let s = progress.snapshot()
                    let moved = recorded.advance(to: JobRunner.moved(s))
                    switch Result(catching: { try store.renewPart(part.id, worker: worker, now: JobRunner.now(), bytes: Int64(s.bytesDone), files: Int64(s.filesDone), moved: moved) }) {
                    case .success(true): held.renewed(at: now)
                    case .success(false): progress.cancel("part \(part.seq) of job \(part.job) was cancelled or taken over")
                    case .failure: break  // the watch above decides
                    }
                }
            }
        }
        guard track(part: part.id, progress) else {
            _ = try? store.finishPart(part.id, worker: worker, outcome: .interrupted, now: JobRunner.now())
            return
        }
        defer { _ = track(part: part.id, nil) }
        keeper.start()
        var hashes: [ChunkHash] = []
        var commitSeconds = settings.leaseSeconds
        let outcome: AttemptOutcome
        do {
            guard let job = try store.get(part.job) else { throw TransferError(.notFound, "job \(part.job) is gone") }
            var options = try baseOptions(job)
            var path = ""
            switch part.kind {
            case .range:
                guard let fileID = part.file, let file = try store.stripedFile(fileID), let r = part.range else {
                    throw TransferError(.io, "part \(part.id): its striped file is not in the queue")
                }
                path = file.path
                commitSeconds = commitLease(UInt64(file.size))
                options.recursive = false
                options.checksum = false
                options.chunkBytes = Int(file.chunkBytes)
                options.range = StripeRange(first: r.first, count: r.count, size: UInt64(file.size), mtimeSeconds: file.mtimeSeconds,
                                            mtimeNanoseconds: UInt32(clamping: file.mtimeNanoseconds))
            case .files:
                options.recursive = true
                options.selection = part.selection
            }
            let ends = try partEndpoints(job, path: path, peerNode: part.peerNode)
            let s: TransferSummary
            do {
                if let a = ends.account { try ThreadIdentity.adopt(a) }
                defer { if ends.account != nil { ThreadIdentity.restore() } }
                s = try TransferClient.copy(from: ends.src, to: ends.dst, options: options, credentials: ends.creds, progress: progress)
            } catch {
                if let e = error as? TransferError, JobRunner.isLinkTrouble(e), !progress.isCancelled, let node = part.peerNode {
                    // That node of the peer rests a minute; the part's next attempt goes to another.
                    try? store.markPeerNodeDown(part.peer, node, until: JobRunner.now() + 60)
                }
                throw error
            }
            hashes = s.rangeHashes
            outcome = .success(bytes: Int64(s.bytes), files: Int64(s.files))
        } catch {
            let e = (error as? TransferError) ?? TransferError(.io, "\(error)")
            outcome = isStoppingNow || progress.isCancelled ? .interrupted
                : .failure(message: e.message, resumable: e.resumable && !JobRunner.permanent.contains(e.code), code: e.code)
        }
        done.signal()
        let moved = recorded.advance(to: JobRunner.moved(progress.snapshot()))
        do {
            let finish = try store.finishPart(part.id, worker: worker, outcome: outcome, hashes: hashes, now: JobRunner.now(),
                                              commitLease: commitSeconds, moved: moved)
            if let file = finish?.commit { runCommit(file, worker: worker) }
        } catch {
            Logger(label: "ferry.daemon").error("part \(part.id) of job \(part.job): \(error)")
        }
    }

    /// Renames a striped file into place once all its ranges are in, at the destination (the
    /// peer's node for a push, here for a pull), with the job owner's rights.
    func runCommit(_ file: StripedFile, worker: String) {
        let outcome: JobStore.CommitOutcome
        do {
            guard let job = try store.get(file.job) else { return }
            guard let hashes = try store.sourceHashes(file: file.id) else {
                try store.finishCommit(file.id, worker: worker, outcome: .redoAll, now: JobRunner.now())
                return
            }
            let request = CommitRequest(size: UInt64(file.size), mtimeSeconds: file.mtimeSeconds, mtimeNanoseconds: UInt32(clamping: file.mtimeNanoseconds),
                                        mode: UInt32(file.mode), chunkBytes: Int(file.chunkBytes), digest: FileDigest.of(hashes), ranges: try store.ranges(file: file.id))
            // A push commits at the peer: at its address, else at its other nodes in turn (the
            // partial copy is on their shared filesystem); a pull commits here.
            let nodes = FerryURL.isFerry(job.request.destination) ? peerNodesInTurn(job) : [nil]
            var unreachable: TransferError?
            var result: JobStore.CommitOutcome?
            for node in nodes {
                let ends = try partEndpoints(job, path: file.path, peerNode: node)
                do {
                    if let a = ends.account { try ThreadIdentity.adopt(a) }
                    defer { if ends.account != nil { ThreadIdentity.restore() } }
                    _ = try TransferClient.commit(ends.dst, request, credentials: ends.creds)
                    result = .committed
                    break
                } catch let e as TransferError where FerryURL.isFerry(job.request.destination) && !e.fromPeer && e.code != .usage {
                    // The peer's node could not be reached or did not answer in time: not the
                    // file's fault; the next node, or later.
                    unreachable = e
                }
            }
            outcome = result ?? .release(seconds: 15, why: "commit of \(file.path.isEmpty ? "the file" : file.path): \(unreachable?.message ?? "no node of the peer answered")")
        } catch {
            let e = (error as? TransferError) ?? TransferError(.io, "\(error)")
            // What the committer found: a digest that does not match, a partial copy gone or not
            // holding what its ranges recorded (a chunk of each read back) → the ranges run again (each resumes from its journal where one is left;
            // a digest mismatch removed them, so that file moves again whole). A refusal a new
            // attempt would meet again fails the file, and the job.
            if e.code == .verify || e.code == .notFound || (e.resumable && !JobRunner.permanent.contains(e.code)) {
                Logger(label: "ferry.daemon").warning("job \(file.job): commit of \(file.path.isEmpty ? "the file" : file.path): \(e.message); its ranges run again")
                outcome = .redoAll
            } else {
                outcome = .failed(e.message)
            }
        }
        _ = try? store.finishCommit(file.id, worker: worker, outcome: outcome, now: JobRunner.now())
    }

    /// After every part of a tree: its directories once more (made, not entered), so that their
    /// modes and times are the source's after the parts wrote into them.
    func finishDirectories(_ job: Job) throws {
        guard job.request.recursive, let parts = try? store.parts(job.id) else { return }
        var dirs: [String] = []
        var seen = Set<String>()
        for p in parts where p.kind == .files {
            for path in p.selection {
                var prefix = Substring(path)
                while let slash = prefix.lastIndex(of: "/") {
                    prefix = prefix[..<slash]
                    if seen.insert(String(prefix)).inserted { dirs.append(String(prefix)) }
                }
            }
        }
        for p in parts where p.kind == .range {
            guard let id = p.file, let f = try? store.stripedFile(id) else { continue }
            var prefix = Substring(f.path)
            while let slash = prefix.lastIndex(of: "/") {
                prefix = prefix[..<slash]
                if seen.insert(String(prefix)).inserted { dirs.append(String(prefix)) }
            }
        }
        guard !dirs.isEmpty else { return }
        dirs.sort()
        var options = try baseOptions(job)
        options.recursive = true
        // At the peer's address, else at its other nodes in turn.
        var lastError: Error?
        for node in peerNodesInTurn(job) {
            let ends = try partEndpoints(job, path: "", peerNode: node)
            do {
                if let a = ends.account { try ThreadIdentity.adopt(a) }
                defer { if ends.account != nil { ThreadIdentity.restore() } }
                for start in stride(from: 0, to: dirs.count, by: 65_536) {
                    options.selection = Array(dirs[start..<min(dirs.count, start + 65_536)])
                    _ = try TransferClient.copy(from: ends.src, to: ends.dst, options: options, credentials: ends.creds)
                }
                return
            } catch let e as TransferError where !e.fromPeer && e.code != .usage && e.resumable {
                lastError = e
            }
        }
        if let lastError { throw lastError }
    }

    /// The peer's address (nil), then its other nodes: where a job's own steps (a commit, the
    /// directories at the end) may go when the address does not answer.
    func peerNodesInTurn(_ job: Job) -> [String?] {
        var nodes: [String?] = [nil]
        let remoteSide = [job.request.source, job.request.destination].first { FerryURL.isFerry($0) }
        if let r = remoteSide, let peer = try? remote(FerryURL(parsing: r).authority).key {
            nodes += (settings.peerNodes[peer] ?? []).map(\.description).filter { $0 != settings.peers[peer]?.description }
        }
        return nodes
    }
}

/// When a part's lease was last renewed (monotonic seconds), and whether a renewal is under way.
final class RenewalWatch: @unchecked Sendable {
    private let lock = NSLock()
    private var held = ProcessInfo.processInfo.systemUptime
    private var busy = false
    var lastHeld: Double { lock.withLock { held } }
    func renewed(at t: Double) { lock.withLock { held = max(held, t) } }
    /// Starts a renewal unless one is still under way.
    func begin() -> Bool { lock.withLock { if busy { return false }; busy = true; return true } }
    func end() { lock.withLock { busy = false } }
}
