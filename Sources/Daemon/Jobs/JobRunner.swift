import Foundation
import Logging
import Transfer

/// What the runner needs to know about its center.
public struct RunnerSettings: Sendable {
    /// This center's exports: a job's local path `/EXPORT/sub/path` resolves beneath them.
    public var exports: [Export]
    /// The center's certificate: the runner authenticates to peers as `center:NAME`.
    public var tls: TLSIdentity
    /// Peer centers by name: `ferry://NAME/path` in a job goes to this address, and the peer
    /// must prove to be NAME.
    public var peers: [String: HostPort] = [:]
    /// Remote sides a job may name besides the peers: `HOST:PORT` strings (`[daemon]
    /// allow_hosts`). Anything else is refused at submit: the daemon is no open proxy that
    /// dials wherever a user points it with the center's certificate.
    public var allowHosts: [String] = []
    /// Which local account a job's owner acts as (the transfer server's `IdentityMap`): a
    /// job's local side is read and written with that account's rights, as the owner's own
    /// `ferry cp` session would be.
    public var identities = IdentityMap()
    /// The daemon's own areas (`[daemon] staging` and `replicas`, job paths /EXPORT/DIR):
    /// shared by every user, filled from peers' datasets the user may read, so the daemon's own
    /// transfers into them (`Job.daemonMade`) run with the daemon's rights, not the
    /// requester's. A user's job there runs as its owner like any other
    /// (`JobRunner.localAccount`).
    public var daemonAreas: [String] = []
    public var workers = 2
    public var leaseSeconds: Int64 = 30
    public var perPeerMax = 4
    public var perUserMax = 8
    /// Longest a worker with nothing to claim waits before it looks again (time-based moves:
    /// backoff, `not_before`, leases, deadlines, promoted once a second). It looks at once when
    /// the queue changes (`ChangeFeed`: a submission, a finished job freeing a peer's slot,
    /// another daemon's change through NOTIFY), at most every `claimGapSeconds`.
    public var pollSeconds = 1.0
    /// Shortest gap between one worker's claims that found nothing: under a storm of queue
    /// changes an idle worker claims at most 50 times a second, not once per change.
    public var claimGapSeconds = 0.02
    /// Striping (issue 19, Striping.swift): this node's name, the center's number of nodes
    /// (striping needs more than one, on PostgreSQL), how jobs are cut, and the peers' nodes.
    public var node = "node"
    public var nodes = 1
    public var stripe = StripeSettings()
    public var peerNodes: [String: [HostPort]] = [:]

    public init(exports: [Export], tls: TLSIdentity) {
        self.exports = exports
        self.tls = tls
    }
}

/// A running total handed out in increments: `advance(to:)` returns how much `total` grew since
/// the last call (never negative), so two threads sampling one job never count a byte twice.
final class SampleCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var last: Int64 = 0
    func advance(to total: Int64) -> Int64 {
        lock.withLock {
            let d = max(0, total - last)
            last = max(last, total)
            return d
        }
    }
}

/// Runs queued jobs: each worker thread promotes waiting jobs, claims one, runs the transfer
/// with the engine, keeps its lease alive while it runs (and stops it when the lease is lost:
/// cancelled, or taken back), and records the outcome.
/// `@unchecked Sendable`: mutable state guarded by `lock`.
public final class JobRunner: @unchecked Sendable {
    public let store: JobStore
    public let settings: RunnerSettings
    public let workerID: String
    private var tls: TLSContext  // guarded by `lock` (`reloadTLS`)
    /// One client TLS context per peer (made on first use from the center's certificate):
    /// each keeps the TLS 1.3 tickets of its own peer only, so job after job to a peer resumes
    /// its session (no certificate chain sent, verified and signed for again: most of a
    /// one-file job's TLS cost) and a ticket can never be offered to another peer; its
    /// counters say how many handshakes were full and how many resumed (`/metrics`).
    /// Guarded by `lock`; as many as configured peers and allowed hosts.
    private var peerTLS: [String: TLSContext] = [:]
    /// Streams and transfers in flight per peer, tuned from measured throughput and errors.
    public let tuner: LinkTuner
    private let lock = NSLock()
    private var stopping = false
    private var running: [Int64: TransferProgress] = [:]
    /// Attempts this runner ran, claim to end, by outcome (`ferry_job_duration_seconds`).
    private var durations: [String: PromHistogram] = [:]
    /// Jobs' waits from submission to their first attempt here (`ferry_job_queue_wait_seconds`).
    private var queueWait = PromHistogram(buckets: JobRunner.waitBuckets)
    static let durationBuckets: [Double] = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14_400, 86_400]
    static let waitBuckets: [Double] = [0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14_400, 86_400]
    static let outcomes = ["success", "skipped", "failed", "retry", "interrupted"]
    private var threads = 0
    private var lastPromote: Int64 = 0
    /// The center's audit log: each attempt's start and end (set before `start`).
    public var audit: AuditLog?

    public init(store: JobStore, settings: RunnerSettings, workerID: String) throws {
        self.store = store
        self.settings = settings
        self.workerID = workerID
        tls = try TLSContext(server: false, identity: settings.tls)
        tuner = LinkTuner(maxActive: settings.perPeerMax)
        if canStripe {
            for (peer, nodes) in settings.peerNodes { try store.setPeerNodes(peer, nodes.map(\.description)) }
        }
    }

    public func start() {
        for i in 0..<max(1, settings.workers) {
            lock.withLock { threads += 1 }
            let t = Thread { [self] in
                workerLoop(name: "\(workerID)/\(i)")
                lock.withLock { threads -= 1 }
            }
            t.name = "ferry-job-\(i)"
            t.start()
        }
    }

    /// Stops claiming; running transfers end resumably (`up_for_reschedule`, their journals keep
    /// the progress). Waits at most `seconds` for the workers.
    public func stop(seconds: Double = 8) {
        let active = lock.withLock { () -> [TransferProgress] in
            stopping = true
            return Array(running.values)
        }
        for p in active { p.cancel("the daemon is stopping") }
        store.changes.bump()  // idle workers wake and see `stopping`
        let deadline = Date().addingTimeInterval(seconds)
        while lock.withLock({ threads }) > 0 && Date() < deadline { usleep(50_000) }
    }

    private var isStopping: Bool { lock.withLock { stopping } }
    var isStoppingNow: Bool { isStopping }

    /// The configured peers' transfer servers, each asked for a TLS handshake as this center
    /// (`TransferClient.ping`): `ok`, or why not. Answers of the last 10 s are reused, every
    /// probe runs on its own thread and is waited for at most `timeoutSeconds`, and a peer
    /// whose earlier probe still runs is not probed again (a host that swallows SYNs cannot
    /// make readiness checks pile up threads).
    public func probePeers(timeoutSeconds: Double = 3) -> [String: (ok: Bool, detail: String)] {
        let now = Date()
        var toProbe: [(String, HostPort)] = []
        lock.withLock {
            for (name, address) in settings.peers {
                if probing.contains(name) { continue }
                if let last = probes[name], now.timeIntervalSince(last.at) < 10 { continue }
                probing.insert(name)
                toProbe.append((name, address))
            }
        }
        let group = DispatchGroup()
        for (name, address) in toProbe {
            group.enter()
            Thread.detachNewThread { [self] in
                var answer: (Bool, String)
                do {
                    // A context of the probes' own: a probe neither takes a ticket a job would
                    // resume with nor counts among the jobs' handshakes.
                    let creds = ClientCredentials(tls: try probeContext(), token: nil, center: name)
                    let r = try TransferClient.ping(address, credentials: creds)
                    answer = (true, "center \(r.center) at \(address), handshake \(Int(r.handshake * 1000)) ms")
                } catch {
                    let why = (error as? TransferError)?.message ?? "\(error)"
                    answer = (false, "\(address): \(why)")
                }
                lock.withLock {
                    probing.remove(name)
                    probes[name] = (Date(), answer.0, answer.1)
                }
                group.leave()
            }
        }
        _ = group.wait(timeout: .now() + timeoutSeconds)
        return lock.withLock {
            var out: [String: (ok: Bool, detail: String)] = [:]
            for name in settings.peers.keys {
                if let p = probes[name], !(probing.contains(name) && now.timeIntervalSince(p.at) >= 10) {
                    out[name] = (p.ok, p.detail)
                } else {
                    out[name] = (false, "no answer within \(Int(timeoutSeconds)) s")
                }
            }
            return out
        }
    }
    private var probes: [String: (at: Date, ok: Bool, detail: String)] = [:]
    private var probeTLS: TLSContext?

    private func probeContext() throws -> TLSContext {
        if let c = lock.withLock({ probeTLS }) { return c }
        let made = try TLSContext(server: false, identity: settings.tls)
        return lock.withLock {
            if let c = probeTLS { return c }
            probeTLS = made
            return made
        }
    }
    private var probing = Set<String>()

    /// Reads the center's certificate, key and CA again (SIGHUP): the next handshake of every
    /// job uses them; transfers running keep their sessions.
    public func reloadTLS() throws {
        let made = try TLSContext(server: false, identity: settings.tls)
        lock.withLock {
            tls = made
            peerTLS.removeAll()
            probeTLS = nil
        }
    }

    func tlsContextForJobs(peer: String) throws -> TLSContext { try tlsContext(peer: peer) }

    /// The client TLS context for jobs towards `peer` (its tuning key).
    private func tlsContext(peer: String) throws -> TLSContext {
        if peer.isEmpty { return lock.withLock { tls } }
        if let c = lock.withLock({ peerTLS[peer] }) { return c }
        let made = try TLSContext(server: false, identity: settings.tls)
        return lock.withLock {
            if let c = peerTLS[peer] { return c }
            peerTLS[peer] = made
            return made
        }
    }

    /// TLS handshakes towards each peer so far: full ones and resumed ones (a ticket of an
    /// earlier job's session).
    public func tlsHandshakes() -> [String: (full: Int, resumed: Int)] {
        lock.withLock { peerTLS }.mapValues(\.handshakes)
    }

    /// The runner's histograms in Prometheus' text format: each attempt's seconds from claim to
    /// end by outcome (`retry`: failed, resumable; every outcome has its series from the start),
    /// and each job's wait from submission to its first attempt (dependencies and `not_before`
    /// included: the wait a user sees). This daemon's attempts only: daemons sharing a queue
    /// each count their own, and Prometheus sums them.
    public func jobMetricsText() -> String {
        lock.withLock {
            var o = "# HELP ferry_job_duration_seconds Attempts this daemon ran, from claim to end, by outcome.\n# TYPE ferry_job_duration_seconds histogram\n"
            for k in JobRunner.outcomes {
                o += (durations[k] ?? PromHistogram(buckets: JobRunner.durationBuckets)).samples("ferry_job_duration_seconds", labels: "outcome=\"\(k)\"")
            }
            o += "# HELP ferry_job_queue_wait_seconds Jobs' waits from submission to their first attempt on this daemon.\n# TYPE ferry_job_queue_wait_seconds histogram\n"
            return o + queueWait.samples("ferry_job_queue_wait_seconds")
        }
    }

    /// Live counters of a job this runner is running now.
    public func liveProgress(_ id: Int64) -> TransferProgress.Snapshot? {
        lock.withLock { running[id] }?.snapshot()
    }

    private func workerLoop(name: String) {
        while !isStopping {
            let now = Int64(Date().timeIntervalSince1970)
            // Read before the claim: a change after it wakes the wait below at once.
            let seen = store.changes.generation
            let claimedAt = ProcessInfo.processInfo.systemUptime
            var job: Job?
            do {
                // Submitted jobs are queued at once; promote moves only waiting ones (backoff,
                // dependencies, leases, deadlines), so once a second is enough: not per claim.
                try promoteIfDue(now)
                // Parts of striped jobs first: they are jobs already started.
                if canStripe {
                    if let part = try store.claimPart(worker: name, node: settings.node, now: now, leaseSeconds: settings.leaseSeconds,
                                                      perNodeMax: settings.stripe.perNode, perPeerMax: settings.perPeerMax, perUserMax: settings.perUserMax,
                                                      peerLimits: tuner.activeLimits()) {
                        runPart(part, worker: name)
                        continue
                    }
                    if let file = try store.claimCommit(worker: name, now: now, leaseSeconds: settings.leaseSeconds + 600) {
                        runCommit(file, worker: name)
                        continue
                    }
                }
                job = try store.claim(worker: name, now: now, leaseSeconds: settings.leaseSeconds,
                                      perPeerMax: settings.perPeerMax, perUserMax: settings.perUserMax, peerLimits: tuner.activeLimits())
            } catch {
                Logger(label: "ferry.daemon").error("queue error: \(error)")
            }
            guard let job else {
                // Until the queue changes (or the time-based moves are due), then no sooner
                // than the claim gap after the last claim.
                _ = store.changes.waitBlocking(after: seen, timeout: settings.pollSeconds)
                let gap = settings.claimGapSeconds - (ProcessInfo.processInfo.systemUptime - claimedAt)
                if gap > 0 { usleep(useconds_t(gap * 1_000_000)) }
                continue
            }
            run(job, worker: name)
        }
    }

    /// Moves waiting jobs and parts (backoff, dependencies, leases, deadlines) once a second
    /// per daemon, whichever of its workers or coordinators comes first.
    func promoteIfDue(_ now: Int64) throws {
        if lock.withLock({ () -> Bool in
            guard now > lastPromote else { return false }
            lastPromote = now
            return true
        }) {
            try store.promote(now: now)
        }
    }

    /// A part's or commit's progress, cancelled by `stop` like a job's (`running`, keyed by
    /// the negated part id so as not to meet a job's).
    func track(part id: Int64, _ progress: TransferProgress?) -> Bool {
        lock.withLock {
            if progress != nil && stopping { return false }
            running[-id] = progress
            return true
        }
    }

    private func run(_ job: Job, worker: String) {
        let progress = TransferProgress()
        lock.withLock { running[job.id] = progress }
        defer { lock.withLock { running[job.id] = nil } }
        // Keep the lease; a lost lease (cancel, or a takeover) stops the transfer.
        let done = DispatchSemaphore(value: 0)
        // Bytes moved (not skipped as already there) as last recorded: each renewal and the
        // attempt's end record what moved since (`link_samples`, the overview's throughput).
        let recorded = SampleCounter()
        let keeper = Thread { [self] in
            let every = max(1.0, Double(settings.leaseSeconds) / 3)
            while done.wait(timeout: .now() + every) == .timedOut {
                let s = progress.snapshot()
                let moved = recorded.advance(to: JobRunner.moved(s))
                let held = (try? store.renew(job.id, worker: worker, now: Int64(Date().timeIntervalSince1970), leaseSeconds: settings.leaseSeconds,
                                             bytes: Int64(s.bytesDone), files: Int64(s.filesDone), moved: moved)) ?? true
                if !held { progress.cancel("job \(job.id) was cancelled or taken over") }
            }
        }
        keeper.start()
        let started = Date()
        if job.attempts <= 1 {
            let waited = max(0, started.timeIntervalSince1970 - Double(job.created))
            lock.withLock { queueWait.observe(waited) }
        }
        auditJob(job, action: "job.start", result: "running: attempt \(job.attempts) on \(worker)")
        let outcome = stripedAttempt(job, progress: progress, worker: worker) ?? attempt(job, progress: progress)
        done.signal()
        let final = isStopping && outcome != .interrupted ? outcomeWhenStopping(outcome) : outcome
        // The end's line before the state: once a job shows its final state, its line is there.
        switch final {
        case .success(let bytes, let files): auditJob(job, action: "job.end", result: "ok", files: files, bytes: bytes, seconds: Date().timeIntervalSince(started))
        case .skipped(let files): auditJob(job, action: "job.end", result: "ok: skipped, already in sync", files: files, seconds: Date().timeIntervalSince(started))
        case .failure(let message, let resumable, _):
            let s = progress.snapshot()
            auditJob(job, action: "job.end", result: (resumable ? "retry: " : "failed: ") + message, files: Int64(s.filesDone), bytes: Int64(s.bytesDone),
                     seconds: Date().timeIntervalSince(started))
        case .interrupted:
            let s = progress.snapshot()
            auditJob(job, action: "job.end", result: "interrupted: back to the queue", files: Int64(s.filesDone), bytes: Int64(s.bytesDone),
                     seconds: Date().timeIntervalSince(started))
        }
        let kind: String
        switch final {
        case .success: kind = "success"
        case .skipped: kind = "skipped"
        case .failure(_, let resumable, _): kind = resumable ? "retry" : "failed"
        case .interrupted: kind = "interrupted"
        }
        let seconds = Date().timeIntervalSince(started)
        lock.withLock { durations[kind, default: PromHistogram(buckets: JobRunner.durationBuckets)].observe(seconds) }
        // The keeper has stopped (signalled above; a renewal in flight may still add its part:
        // `advance` hands each byte to one of them only).
        let state = try? store.finish(job.id, worker: worker, outcome: final, now: Int64(Date().timeIntervalSince1970),
                                      moved: recorded.advance(to: JobRunner.moved(progress.snapshot())))
        if let (level, line) = JobRunner.endLine(job, final, state: state, seconds: seconds) {
            Logger(label: "ferry.daemon").log(level: level, "\(line)")
        }
    }

    /// The log's line for an attempt's end (journald's `journalctl -u ferry` is where on-call
    /// staff look, beside the audit log): the job, its owner and peer, how it ended and the
    /// state it went to; a failure at warning, with the engine's code. nil when the store
    /// did not take the outcome (the job was cancelled or taken over: nothing of it ended
    /// here). The handler escapes control characters (a message may quote a user's name).
    static func endLine(_ job: Job, _ outcome: AttemptOutcome, state: JobState?, seconds: Double) -> (Logger.Level, String)? {
        guard let state else { return nil }
        let who = "job \(job.id) of \(job.owner)" + (job.peer.isEmpty ? "" : " with \(job.peer)") + ", attempt \(job.attempts)"
        let took = String(format: "%.1f s", seconds)
        switch outcome {
        case .success(let bytes, let files):
            return (.info, "\(who): ok, \(files) file\(files == 1 ? "" : "s"), \(byteText(UInt64(max(0, bytes)))) in \(took)")
        case .skipped(let files):
            return (.info, "\(who): skipped, \(files) file\(files == 1 ? "" : "s") already in sync, in \(took)")
        case .failure(let message, _, let code):
            return (.warning, "\(who): \(state.rawValue) after \(took) (\(code?.description ?? "error")): \(message)")
        case .interrupted:
            return (.notice, "\(who): interrupted after \(took), back to the queue (\(state.rawValue))")
        }
    }

    /// Bytes an attempt moved over its link or disk: accounted for, less those skipped as
    /// already there.
    static func moved(_ s: TransferProgress.Snapshot) -> Int64 {
        Int64(s.bytesDone) - Int64(min(s.skippedBytes, s.bytesDone))
    }

    /// One audit line of a job: its owner, its peer, `SOURCE -> DESTINATION (job N)`.
    private func auditJob(_ job: Job, action: String, result: String, files: Int64 = 0, bytes: Int64 = 0, seconds: Double = 0) {
        guard let audit else { return }
        var r = AuditLog.Record(user: job.owner, peer: job.peer, action: action, path: "\(job.request.source) -> \(job.request.destination) (job \(job.id))", result: result)
        r.files = UInt64(max(0, files))
        r.bytes = UInt64(max(0, bytes))
        r.seconds = seconds
        r.protection = job.request.protection
        // The account the job's local side runs as (the same resolution as `attempt`).
        let local = [job.request.source, job.request.destination].first { !$0.hasPrefix("ferry://") }
        if let local, let export = try? jobEndpoint(local).2, let a = try? localAccount(job, export) {
            r.account = a.name
        }
        audit.write(r)
    }

    /// A transfer cut by the daemon's own stop is not the job's failure.
    private func outcomeWhenStopping(_ o: AttemptOutcome) -> AttemptOutcome {
        if case .failure(_, true, _) = o { return .interrupted }
        return o
    }

    func attempt(_ job: Job, progress: TransferProgress) -> AttemptOutcome {
        do {
            let (src, srcPeer, srcExport) = try jobEndpoint(job.request.source, linkFree: job.linkFree)
            let (dst, dstPeer, dstExport) = try jobEndpoint(job.request.destination, linkFree: job.linkFree)
            let options = try baseOptions(job)
            let tuned = !job.peer.isEmpty
            let creds = ClientCredentials(tls: try tlsContext(peer: job.peer), token: nil, center: srcPeer ?? dstPeer)
            // The owner's account for the local side; this thread (and the transfer's threads it
            // starts) act as it for the copy only: the queue's own work stays the daemon's.
            let account = try localAccount(job, srcExport ?? dstExport)
            let s: TransferSummary
            do {
                if let account { try ThreadIdentity.adopt(account) }
                defer { if account != nil { ThreadIdentity.restore() } }
                s = try TransferClient.copy(from: src, to: dst, options: options, credentials: creds, progress: progress)
            } catch {
                // Link trouble (lost connections, timeouts) counts; refusals (auth, paths) do not,
                // nor a transfer the daemon cut itself (a cancelled job, a lost lease).
                if tuned && !isStopping && !progress.isCancelled, let e = error as? TransferError, JobRunner.isLinkTrouble(e) {
                    tuner.record(peer: job.peer, streams: options.streams ?? 0, bytes: 0, seconds: 0, failed: true)
                }
                throw error
            }
            if tuned {
                tuner.record(peer: job.peer, streams: options.streams ?? 0, bytes: Int64(s.wireBytes), seconds: s.seconds, failed: false)
            }
            // Nothing to do on a first attempt: `skipped`. On a later one it means an earlier
            // attempt delivered everything before it was cut (a kill after the last byte): the
            // job's work is done, `success`.
            if s.wireBytes == 0 && s.filesSkipped == s.files && job.attempts <= 1 { return .skipped(files: Int64(s.files)) }
            return .success(bytes: Int64(s.bytes), files: Int64(s.files))
        } catch {
            let e = (error as? TransferError) ?? TransferError(.io, "\(error)")
            if isStopping { return .interrupted }
            return .failure(message: e.message, resumable: e.resumable && !JobRunner.permanent.contains(e.code), code: e.code)
        }
    }

    /// A job's transfer options as its request and the per-peer tuning say.
    func baseOptions(_ job: Job) throws -> TransferOptions {
        var options = TransferOptions()
        options.recursive = job.request.recursive
        options.checksum = job.request.checksum
        options.streams = job.request.streams ?? (job.peer.isEmpty ? nil : tuner.streams(for: job.peer))
        options.bandwidthLimitBytesPerSecond = job.request.bwlimit
        options.protection = try ProtectionLevel(parsing: job.request.protection)
        options.compression = try CompressionMode(parsing: job.request.compress)
        return options
    }

    /// Failures a later attempt would meet again, from this side or said by the peer (its
    /// ERROR frame or a file's verdict carry the code): the job fails at once with the reason,
    /// and a user retries it once the cause is fixed (freed space, granted rights); the
    /// engine's journal then resumes it.
    static let permanent: Set<TransferError.Code> = [.usage, .auth, .path, .permission, .noSpace, .notFound]

    /// Whether a failure speaks of the link (lost connections, timeouts, protocol breaks) or
    /// of a peer at its connection limits (`busy`), which the per-peer tuning counts (fewer
    /// streams and transfers towards it): not a refusal or a disk's trouble, on either side.
    static func isLinkTrouble(_ e: TransferError) -> Bool {
        e.resumable && (e.code == .busy || (!e.fromPeer && (e.code == .io || e.code == .timeout || e.code == .protocolViolation)))
    }

    /// A job path: `ferry://PEER/path` (a configured peer by name, or HOST:PORT of a configured
    /// peer or of `allowHosts`), or `/EXPORT/path` of this center. Returns the endpoint and the
    /// peer's center name.
    func endpoint(_ text: String) throws -> (Endpoint, String?) {
        if FerryURL.isFerry(text) {
            let url = try FerryURL(parsing: text)
            switch try remote(url.authority) {
            case .peer(let peer): return (.remote(settings.peers[peer]!, path: url.path), peer)
            case .allowed: return (try Endpoint(parsing: text), nil)
            }
        }
        let parts = try Location.exportComponents(text)
        let first = parts[0]
        let root = settings.exports.count == 1 && settings.exports[0].name.isEmpty ? settings.exports[0] : settings.exports.first { $0.name == first }
        guard let export = root else { throw TransferError(.path, "no export named '\(first)' at this center") }
        let beneath = export.name.isEmpty ? parts : Array(parts.dropFirst())
        let path = ([export.path] + beneath).joined(separator: "/")
        try JobRunner.confine(path, within: export.path, shown: text)
        return (.local(path), nil)
    }

    /// The account a job's local side runs as: its owner's mapped account (`IdentityMap`, as
    /// the transfer server maps the same principal; an unmapped owner fails the job with the
    /// reason), whatever its path. The one exception is a job the daemon made itself
    /// (`Job.daemonMade`: a replication, a stage-in's fetch) whose local side lies in one of the
    /// daemon's own areas: it runs with the daemon's rights (nil), since those areas are shared
    /// by every user and filled from data its owner was allowed to read.
    ///
    /// Decided by the job's mark, not by its path (issue: attack review finding 2): before, any
    /// job whose local path lay under `replicas` or `staging` ran as root, so a user with a scope
    /// there submitted a job that read (or overwrote) another user's or root's 0600 file. A
    /// user's submission can never set the mark (the API has no field for it); a mark on a job
    /// whose path lies elsewhere is ignored (the owner's account again).
    func localAccount(_ job: Job, _ export: Export?) throws -> LocalAccount? {
        guard let export else { return nil }
        if job.daemonMade {
            let local = [job.request.source, job.request.destination].first { !$0.hasPrefix("ferry://") } ?? ""
            let parts = local.split(separator: "/")
            for area in settings.daemonAreas {
                let a = area.split(separator: "/")
                if !a.isEmpty && parts.count >= a.count && Array(parts.prefix(a.count)) == a { return nil }
            }
        }
        return try settings.identities.resolve(job.owner, export: export)
    }

    /// A job's side as the runner opens it: a peer's URL as `endpoint` gives it, or a local
    /// path confined beneath its export component by component (no name resolved first and
    /// opened later: a link swapped in after the submit is refused at run time too), with the
    /// export it lies in.
    /// `linkFree`: the job's own (`Job.linkFree`), for its local side.
    func jobEndpoint(_ text: String, linkFree: Int = 0) throws -> (Endpoint, String?, Export?) {
        if FerryURL.isFerry(text) {
            let (e, peer) = try endpoint(text)
            return (e, peer, nil)
        }
        let parts = try Location.exportComponents(text)
        let first = parts[0]
        let root = settings.exports.count == 1 && settings.exports[0].name.isEmpty ? settings.exports[0] : settings.exports.first { $0.name == first }
        guard let export = root else { throw TransferError(.path, "no export named '\(first)' at this center") }
        let beneath = export.name.isEmpty ? parts : Array(parts.dropFirst())
        _ = try namespaceComponents(beneath.joined(separator: "/"))
        return (.confined(root: export.path, components: beneath, linkFree: min(linkFree, beneath.count)), nil, export)
    }

    /// Whether `key` (a job's peer) is one the configuration names: what unauthenticated
    /// answers (health) may show.
    public func isConfiguredKey(_ key: String) -> Bool {
        settings.peers[key] != nil || settings.allowHosts.contains(key)
    }

    /// What the authority of a `ferry://AUTHORITY/...` job path is allowed to be.
    enum Remote: Equatable {
        /// A configured `[[peer]]` (named, or by its exact address): authenticated as that center.
        case peer(String)
        /// An entry of `allowHosts` (the canonical HOST:PORT).
        case allowed(String)

        /// The key for per-peer limits, tuning and metrics: always a string of the configuration.
        var key: String {
            switch self {
            case .peer(let p): return p
            case .allowed(let a): return a
            }
        }
    }

    /// Checks the authority of a job's remote side against the configuration: a peer's name,
    /// a peer's address or an allowed host. Anything else (an unknown host, a port of this
    /// machine, a name with control characters) is refused before anything is dialled.
    func remote(_ authority: String) throws -> Remote {
        if settings.peers[authority] != nil { return .peer(authority) }
        let shown = String(authority.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : Character($0) }.prefix(200))
        if authority.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }), let hp = try? HostPort(parsing: authority) {
            if let peer = settings.peers.filter({ $0.value == hp }).keys.sorted().first { return .peer(peer) }
            if let a = settings.allowHosts.first(where: { (try? HostPort(parsing: $0)) == hp }) { return .allowed(a) }
        }
        throw TransferError(.usage, "'\(shown)' is neither a peer of this center ([[peer]] name or address) nor an allowed host")
    }

    /// The engine opens a job's local path by name, following symlinks (a user's own files on
    /// the command line); the daemon acts for users with fewer rights than its own, so a link in
    /// a user's directory must not carry a job outside the export. The deepest part of `path`
    /// that exists must resolve (realpath) beneath the export's directory.
    static func confine(_ path: String, within root: String, shown: String) throws {
        guard let base = realpath(root, nil) else { throw TransferError(.path, "cannot resolve the export '\(root)': \(String(cString: strerror(errno)))") }
        let rootReal = String(cString: base)
        free(base)
        var probe = path
        for _ in 0..<4096 {
            if let r = realpath(probe, nil) {
                let real = String(cString: r)
                free(r)
                guard real == rootReal || real.hasPrefix(rootReal.hasSuffix("/") ? rootReal : rootReal + "/") else {
                    throw TransferError(.path, "path '\(shown)' resolves outside its export (a symbolic link)")
                }
                return
            }
            guard errno == ENOENT, let slash = probe.lastIndex(of: "/"), slash > probe.startIndex else { break }
            probe = String(probe[..<slash])
        }
        throw TransferError(.path, "path '\(shown)' cannot be resolved")
    }
}
