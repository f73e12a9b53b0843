import Foundation
import GlobalFS
import Hummingbird
import Transfer

#if canImport(Glibc)
import Glibc
#endif

/// Prestaging for the batch scheduler, the daemon's side (`ferry stage-in`, `stage-out`,
/// `stage teardown|sweep|status|cache` call these routes with the scheduler's operator token):
///   POST /api/v1/stage/in        {job, uid, gid, user, directives, retry}  pin, start or reuse transfers, link what is ready
///   POST /api/v1/stage/out       {job, uid, gid, user, directives, retry}  one daemon job per stage_out
///   POST /api/v1/stage/teardown  {job, hurry}                       unpin, remove the job's links, drop orphans
///   POST /api/v1/stage/sweep     {keep_jobs?, max_pin_hours?}       what crashed jobs left
///   GET  /api/v1/stage/status?job=ID                                 pins, links, stage-outs of a job
///   GET  /api/v1/stage/cache                                         entries, pins, quota
/// Every call can be repeated (the scheduler may run a hook twice): stage-in and stage-out are
/// answered from the recorded state; the CLI calls them again each second until everything is
/// ready or something failed. A failed transfer is started again only when a request says
/// `retry` (the CLI's first request of each run does, its polls do not): a poll reports the
/// failure instead of restarting it for ever, and a new run of the hook (a requeue, an operator
/// who made room) tries once more.
///
/// Data comes in through the staging cache (`StagingCache`): a gfs:// source whose best
/// replica is at this center is linked directly, anything else is one transfer job into
/// `[daemon] staging` (/EXPORT/DIR/ENTRY/data) shared by every job that asks for it. The job's
/// DST becomes a symbolic link to it, owned by the job's user. Local paths in directives are
/// real paths and must lie within one of this center's exports (the daemon runs as root: it
/// writes nowhere else).
public struct StagingSettings: Sendable {
    public var cache: StagingCache
    /// The cache directory as a local job path (/EXPORT/DIR) and as a real path.
    public var root: String
    public var rootReal: String
    public var quota: Int64
    /// Pins older than this are dropped by a sweep (a job that long is not running).
    public var maxPinHours: Int64 = 7 * 24
    /// `staging_bwlimit`: bytes per second for each staging transfer.
    public var bandwidth: Int64?
    /// The job queue's generation the last complete settle began at (`settle`).
    let settled = SettledMark()
    /// Scheduler jobs torn down lately, so that a poll of a stage-in the scheduler has not yet
    /// killed does not stage their data again (`TornDownJobs`).
    let tornDown = TornDownJobs()

    public init(cache: StagingCache, root: String, rootReal: String, quota: Int64) {
        self.cache = cache; self.root = root; self.rootReal = rootReal; self.quota = quota
    }
}

/// The queue generation (`JobStore.generation`) a complete settle began at. Entries move from
/// staging only when their job changes, and every job change (this daemon's, or another's
/// through LISTEN/NOTIFY on PostgreSQL) moves the generation: an ask that finds it where the
/// last settle left it has nothing to settle. (The settler service's round and a sweep settle
/// the whole cache; an ask settles only its own entries, `DaemonAPI.settled`.)
final class SettledMark: @unchecked Sendable {
    private let lock = NSLock()
    private var generation: UInt64?
    func isCurrent(_ g: UInt64) -> Bool { lock.withLock { generation == g } }
    func set(_ g: UInt64) { lock.withLock { generation = g } }
}

/// Scheduler jobs this daemon tore down in the last hour. Slurm runs teardown --hurry on a
/// scancel during stage-in and may do so before its kill of the stage-in hook has landed (seen:
/// milliseconds; under load, longer): the hook's next poll (`retry: false`) would then pin the
/// job's data again and start a transfer for a job that no longer exists, kept until a sweep.
/// A poll for a job torn down here is answered "failed" instead and stages nothing; a new run
/// of the hook (its first request, `retry` true or absent: a requeue, a restarted controller)
/// clears the mark. Kept in memory and bounded (a restarted daemon forgets: the hook's poll
/// then stages again, and a sweep of jobs the scheduler no longer knows removes it).
final class TornDownJobs: @unchecked Sendable {
    private let lock = NSLock()
    private var at: [String: Double] = [:]
    static let keepSeconds = 3600.0
    static let limit = 10_000

    func mark(_ job: String) {
        let t = ProcessInfo.processInfo.systemUptime
        lock.withLock {
            if at.count >= TornDownJobs.limit {
                at = at.filter { t - $0.value < TornDownJobs.keepSeconds }
                // Still full (10,000 teardowns within the hour): the oldest half goes.
                if at.count >= TornDownJobs.limit {
                    let cut = at.values.sorted()[at.count / 2]
                    at = at.filter { $0.value > cut }
                }
            }
            at[job] = t
        }
    }

    func contains(_ job: String) -> Bool {
        lock.withLock { at[job].map { ProcessInfo.processInfo.systemUptime - $0 < TornDownJobs.keepSeconds } ?? false }
    }

    func clear(_ job: String) { _ = lock.withLock { at.removeValue(forKey: job) } }

    /// Jobs remembered (expired ones included until the next pruning).
    var count: Int { lock.withLock { at.count } }
}

/// The hook's request and each directive's answer: the contract's types (`V1`).
typealias StageItem = V1.StageItem
typealias StageRequest = V1.StageRequest

extension DaemonAPI {
    func addStagingRoutes(_ router: Router<APIRequestContext>) {
        route(router, "stageIn") { request, _ in
            try await handle(request) { user in
                let r = try stageRequest(try await request.body.collect(upTo: 4 << 20), user)
                let items = try stageIn(r)
                auditStaging(user, "stage-in", r, items)
                return try codable(200, V1.StageItems(items: items))
            }
        }
        route(router, "stageOut") { request, _ in
            try await handle(request) { user in
                let r = try stageRequest(try await request.body.collect(upTo: 4 << 20), user)
                let items = try stageOut(r)
                auditStaging(user, "stage-out", r, items)
                return try codable(200, V1.StageItems(items: items))
            }
        }
        route(router, "stageTeardown") { request, _ in
            try await handle(request) { user in
                let st = try stagingFor(user)
                let body = try APIJSON.decode(V1.TeardownRequest.self, from: Data(buffer: try await request.body.collect(upTo: 1 << 16)))
                let job = body.job
                guard !job.isEmpty else { throw HTTPFailure(status: 400, message: "give {\"job\": \"ID\"}") }
                let answer = try teardown(st, job: job)
                auditLine(user, action: "stage-teardown", path: "scheduler job \(job)", result: "ok")
                return try codable(200, answer)
            }
        }
        route(router, "stageSweep") { request, _ in
            try await handle(request) { user in
                let st = try stagingFor(user)
                let data = Data(buffer: try await request.body.collect(upTo: 1 << 22))
                // An empty body is a sweep with the defaults.
                let body = data.isEmpty ? V1.SweepRequest(keepJobs: nil, maxPinHours: nil) : try APIJSON.decode(V1.SweepRequest.self, from: data)
                let keep = body.keepJobs.map(Set.init)
                let hours = body.maxPinHours ?? st.maxPinHours
                guard hours >= 0 else { throw HTTPFailure(status: 400, message: "max_pin_hours is 0 or more") }
                let answer = try sweep(st, keep: keep, maxPinHours: hours)
                auditLine(user, action: "stage-sweep", path: "", result: "ok")
                return try codable(200, answer)
            }
        }
        route(router, "stageStatus") { request, _ in
            try await handle(request) { user in
                let st = try stagingFor(user)
                guard let job = request.uri.queryParameters["job"].map(String.init) else { throw HTTPFailure(status: 400, message: "give ?job=ID") }
                let s = try st.cache.status(schedulerJob: job)
                return try codable(200, V1.StageStatus(job: job, entries: s.entries, links: s.links.map { [$0.path, $0.target] }, stageOut: s.outbound))
            }
        }
        route(router, "stageCache") { request, _ in
            try await handle(request) { user in
                let st = try stagingFor(user)
                let entries = try st.cache.entries()
                return try codable(200, V1.CacheView(root: st.root, quota: st.quota, readyBytes: entries.filter { $0.state == .ready }.reduce(0) { $0 + $1.bytes }, entries: entries,
                                                     evictions: try st.cache.evictions(limit: 100)))
            }
        }
    }

    /// One audit line per directive of a stage-in or stage-out request: the scheduler job's
    /// user, SRC -> DST, and the item's state (the hook asks again until each is final).
    func auditStaging(_ user: User, _ action: String, _ r: StageRequest, _ items: [StageItem]) {
        for item in items {
            var who = user
            who.user = r.user
            auditLine(who, action: action, path: "\(item.source) -> \(item.destination) (scheduler job \(r.job), asked by \(user.user))",
                      result: item.state == "failed" ? "failed: " + (item.error ?? "") : item.state)
        }
    }

    func stagingFor(_ user: User) throws -> StagingSettings {
        guard let staging else { throw HTTPFailure(status: 409, message: "center \(center) does no prestaging (no [daemon] staging = \"/EXPORT/DIR\")") }
        guard user.isOperator else { throw HTTPFailure(status: 403, message: "prestaging is the scheduler's: an operator token (rw:/) is needed") }
        return staging
    }

    func stageRequest(_ body: ByteBuffer, _ user: User) throws -> StageRequest {
        _ = try stagingFor(user)
        do { return try APIJSON.decode(StageRequest.self, from: Data(buffer: body)) } catch let e as DecodingError {
            throw HTTPFailure(status: 400, message: "the body is not a stage request ({job, user, uid, gid, directives}): " + DaemonAPI.explain(e))
        }
    }

    // MARK: stage in

    func stageIn(_ r: StageRequest) throws -> [StageItem] {
        guard let st = staging else { throw HTTPFailure(status: 409, message: "no staging") }
        let poll = r.retry == false
        if !poll { st.tornDown.clear(r.job) }
        let gone = "scheduler job \(r.job) was torn down (cancelled or ended); a new run of its stage-in stages again"
        func refused() -> [StageItem] {
            r.directives.filter { $0.direction == .stageIn }.map {
                StageItem(line: $0.line, direction: $0.direction.rawValue, source: $0.source, destination: $0.destination, optional: $0.optional,
                          state: "failed", error: "\($0.source): " + gone)
            }
        }
        if poll && st.tornDown.contains(r.job) { return refused() }
        var items: [StageItem] = []
        for d in r.directives where d.direction == .stageIn {
            var item = StageItem(line: d.line, direction: d.direction.rawValue, source: d.source, destination: d.destination, optional: d.optional, state: "staging")
            do {
                try stageOne(st, d, r, &item)
            } catch {
                item.state = "failed"
                item.error = "\(d.source): " + message(error)
            }
            if item.state == "failed" && d.optional { item.state = "skipped" }
            items.append(item)
        }
        // A teardown that arrived while this request pinned (a first request cleared the mark
        // above, so a mark now is that teardown's): it marks before it releases, so what this
        // request pinned after that release is released here, as the teardown would have.
        if st.tornDown.contains(r.job) {
            _ = try teardown(st, job: r.job)
            return refused()
        }
        return items
    }

    func message(_ e: Error) -> String {
        if let f = e as? HTTPFailure { return f.message }
        if let t = e as? TransferError { return t.message }
        return "\(e)"
    }

    private func stageOne(_ st: StagingSettings, _ d: StageDirective, _ r: StageRequest, _ item: inout StageItem) throws {
        guard let catalog, let runner else { throw HTTPFailure(status: 503, message: "no catalog") }
        let dst = try exportPath(d.destination, what: "DST")
        if d.source.hasPrefix("/") {
            // A local source: linked where it is.
            var sb = stat()
            guard lstat(d.source, &sb) == 0 else { throw HTTPFailure(status: 404, message: "does not exist") }
            _ = try exportPath(d.source, what: "SRC")
            try link(st, job: r.job, dst: dst, target: d.source, uid: r.uid, gid: r.gid)
            item.state = "ready"
            return
        }
        var key = d.source
        var fetch = d.source
        var recursive = true
        var peer = ""
        if d.source.hasPrefix("gfs://") {
            let p = try GFSPath(d.source)
            guard let (ds, within) = try catalog.resolve(p, as: Viewer(user: r.user)) else {
                throw HTTPFailure(status: 404, message: "no dataset there (or \(r.user) may not read it)")
            }
            guard let e = try catalog.stat(dataset: ds.id, path: within, as: Viewer(user: r.user)) else {
                throw HTTPFailure(status: 404, message: "no such file or directory in gfs://\(ds.center)/\(ds.qualifiedName)")
            }
            recursive = e.kind == .directory
            let ranked = rankReplicas(try catalog.replicas(dataset: ds.id, as: .operator))
            guard let best = ranked.first(where: { $0.rank == 1 }) else {
                throw HTTPFailure(status: 409, message: "no usable replica (\(ranked.map { "\($0.center): \($0.reason)" }.joined(separator: "; ")))")
            }
            let path = best.path + (within.isEmpty ? "" : "/" + within)
            if best.center == center {
                // Here already: linked, not copied.
                guard case .local(let real) = try runner.endpoint(path).0 else { throw HTTPFailure(status: 500, message: "replica path \(path) is not local") }
                try link(st, job: r.job, dst: dst, target: real, uid: r.uid, gid: r.gid)
                item.state = "ready"
                return
            }
            key = "gfs://\(ds.center)/\(ds.qualifiedName)/\(within)#\(ds.updated)"
            fetch = "ferry://\(best.center)" + path
            peer = best.center
        } else if d.source.hasPrefix("ferry://") {
            do { peer = try FerryURL(parsing: d.source).authority } catch let e as TransferError { throw HTTPFailure(status: 400, message: e.message) }
            guard runner.settings.peers[peer] != nil else { throw HTTPFailure(status: 400, message: "'\(peer)' is not a peer of center \(center) ([[peer]])") }
        }
        let (entry, created, links, recorded) = try st.cache.pin(key: key, source: d.source, schedulerJob: r.job, retryFailed: r.retry ?? false, now: now(),
                                                                  linkIfReady: (dst.real, { $0 + "/data" })) { id in st.rootReal + "/\(id)" }
        item.entry = entry.id
        var current = entry
        if created {
            try? FileManager.default.removeItem(atPath: entry.path)
            try FileManager.default.createDirectory(atPath: entry.path, withIntermediateDirectories: true)
            var req = JobRequest(source: fetch, destination: st.root + "/\(entry.id)/data")
            req.recursive = recursive
            req.checksum = d.checksum
            req.bwlimit = st.bandwidth.map { UInt64($0) }
            // The daemon's own fetch into the shared cache (`Job.daemonMade`): with its rights,
            // not the scheduler job's user's (the entry is shared by every job that asks).
            let id = try store.submit(owner: r.user, request: req, peer: peer, now: now(), daemonMade: true)
            try st.cache.setJob(entry.id, job: id)
            current.job = id
        }
        item.job = current.job
        if current.state == .staging, !created { current = settled(st, current) }
        switch current.state {
        case .ready:
            try link(st, job: r.job, dst: dst, target: current.path + "/data", uid: r.uid, gid: r.gid, recorded: links, recordedNow: recorded)
            item.state = "ready"
        case .failed:
            item.state = "failed"
            item.error = "\(d.source): " + (current.error ?? "the transfer failed")
        case .staging:
            item.state = "staging"
        }
    }

    /// A real path in a directive, checked to lie within one of this center's exports (its
    /// existing part resolved: a symbolic link cannot lead out).
    func exportPath(_ path: String, what: String) throws -> (real: String, job: String) {
        guard path.hasPrefix("/"), !path.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
            throw HTTPFailure(status: 400, message: "\(what) '\(path)' must be an absolute path without . or ..")
        }
        guard let runner else { throw HTTPFailure(status: 503, message: "no runner") }
        // The deepest existing ancestor of the parent, resolved; the last component is taken
        // as it is (it may be the link a previous stage-in of this job made: resolving it
        // would lead into the cache).
        let last = (path as NSString).lastPathComponent
        var probe = (path as NSString).deletingLastPathComponent
        var rest: [String] = last.isEmpty ? [] : [last]
        for _ in 0..<4096 {
            if let r = realpath(probe, nil) {
                let real = String(cString: r)
                free(r)
                let full = ([real == "/" ? "" : real] + rest.reversed()).joined(separator: "/")
                if let job = jobPath(real: full, runner) { return (full, job) }
                throw HTTPFailure(status: 403, message: "\(what) '\(path)' is not within an export of center \(center)")
            }
            guard let slash = probe.lastIndex(of: "/"), probe != "/" else { break }
            rest.append(String(probe[probe.index(after: slash)...]))
            probe = slash == probe.startIndex ? "/" : String(probe[..<slash])
        }
        throw HTTPFailure(status: 400, message: "\(what) '\(path)' cannot be resolved")
    }

    /// `full` (a real path, taken as it is) as a job path `/EXPORT/PATH`, when it lies within
    /// an export; nil otherwise.
    func jobPath(real full: String, _ runner: JobRunner) -> String? {
        for e in runner.settings.exports {
            guard let b = realpath(e.path, nil) else { continue }
            let base = String(cString: b)
            free(b)
            if full == base || full.hasPrefix(base + "/") {
                let rel = String(full.dropFirst(base.count))
                return (e.name.isEmpty ? "" : "/" + e.name) + (rel.isEmpty ? "/" : rel)
            }
        }
        return nil
    }

    /// Removes the link a stage-in made at `path` (recorded as a real path) if it still points
    /// to `target`. The path is not resolved again: its directory is opened beneath the export
    /// without following any symbolic link (the daemon removes it with its own rights, and a
    /// parent the job's user swapped for a link must not lead it into another directory), and
    /// the link is read and removed by name in that directory. True when it was removed.
    func removeLink(_ path: String, target: String) -> Bool {
        guard let runner, let job = jobPath(real: path, runner),
              case (.confined(let root, let components, _), _, _)? = try? runner.jobEndpoint(job), let name = components.last else { return false }
        let rootFd = open(root, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
        guard rootFd >= 0 else { return false }
        let parents = components.dropLast().joined(separator: "/")
        let opened = parents.isEmpty ? dup(rootFd) : ((try? openBeneath(rootFd, parents, flags: O_DIRECTORY | O_RDONLY)) ?? -1)
        close(rootFd)
        guard opened >= 0 else { return false }
        let dir = opened
        defer { close(dir) }
        guard DaemonAPI.linkTarget(dir, name) == target else { return false }
        return unlinkat(dir, name, 0) == 0
    }

    /// DST → target as a symbolic link owned by the job's user (parents made, owned by them
    /// too). Idempotent; refuses to replace anything that is not a link Ferry made.
    ///
    /// Made as the job's user (the account of `uid`, when the daemon runs as root), in the
    /// directory opened beneath the export component by component: the kernel decides whether
    /// that user may put a link there, and a parent swapped for a link cannot send the daemon's
    /// rights elsewhere. Only the system calls on DST run as the user; the cache's records
    /// stay the daemon's.
    ///
    /// `recorded`: the job's links as read by the caller (nil: read them here). `recordedNow`:
    /// the caller's transaction has already recorded this link (`StagingCache.pin`); if it
    /// cannot be made, the record is put back as `recorded` had it.
    func link(_ st: StagingSettings, job: String, dst: (real: String, job: String), target: String, uid: UInt32?, gid: UInt32?,
              recorded: [(path: String, target: String)]? = nil, recordedNow: Bool = false) throws {
        let known = try recorded ?? st.cache.links(schedulerJob: job)
        let before = known.first(where: { $0.path == dst.real })?.target
        do {
            try makeLink(dst: dst, target: target, uid: uid, gid: gid, ours: before != nil)
        } catch {
            // A crash before this leaves a record of a link never made: a later ask of the same
            // job may then replace a symbolic link at DST (never a file or a directory), and a
            // teardown removes only a link that points at the recorded target.
            if recordedNow, before != target { try? st.cache.restoreLink(schedulerJob: job, path: dst.real, before: before) }
            throw error
        }
        // Recorded already with this target (a poll after the link was made, or this ask's
        // own transaction): nothing to write.
        if recordedNow || before == target { return }
        try st.cache.recordLink(schedulerJob: job, path: dst.real, target: target)
    }

    /// The link itself, as the job's user (`link`). `ours`: the job has a record of a link at
    /// DST, which may then be replaced.
    private func makeLink(dst: (real: String, job: String), target: String, uid: UInt32?, gid: UInt32?, ours: Bool) throws {
        guard let runner, case (.confined(let root, let components, _), _, _) = try runner.jobEndpoint(dst.job) else {
            throw HTTPFailure(status: 400, message: "DST \(dst.real) is not a path of this center")
        }
        var account: LocalAccount?
        if let uid, IdentityMap.canSwitch {
            guard let pw = getpwuid(uid) else { throw HTTPFailure(status: 400, message: "no local account has uid \(uid)") }
            account = try LocalAccount.lookup(String(cString: pw.pointee.pw_name))
            if let gid, gid != account!.gid, !account!.groups.contains(gid) {
                throw HTTPFailure(status: 400, message: "uid \(uid) is not in group \(gid)")
            }
        }
        try {
            if let account { try ThreadIdentity.adopt(account) }
            defer { if account != nil { ThreadIdentity.restore() } }
            return try withConfinedParent(root: root, components: components) { dir, name in
                if let existing = DaemonAPI.linkTarget(dir, name) {
                    if existing == target { return }  // made by an earlier request of this job
                    guard ours else { throw HTTPFailure(status: 409, message: "DST \(dst.real) exists (a link Ferry did not make); not replaced") }
                    _ = unlinkat(dir, name, 0)
                } else {
                    var sb = stat()
                    if fstatat(dir, name, &sb, AT_SYMLINK_NOFOLLOW) == 0 {
                        throw HTTPFailure(status: 409, message: "DST \(dst.real) exists; Ferry links staged data there and does not overwrite")
                    }
                }
                guard symlinkat(target, dir, name) == 0 else {
                    let e = errno
                    throw HTTPFailure(status: e == EACCES || e == EPERM ? 403 : 500, message: "cannot link \(dst.real): \(String(cString: strerror(e)))")
                }
            }
        }()
    }

    /// What the symbolic link `name` in the directory `dir` points to; nil when it is not a link.
    static func linkTarget(_ dir: Int32, _ name: String) -> String? {
        var buf = [CChar](repeating: 0, count: PathLimits.symlinkTargetBytesMax + 1)
        let n = readlinkat(dir, name, &buf, buf.count - 1)
        return n < 0 ? nil : String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: settling, eviction

    /// Entries whose transfer ended: ready (bytes counted, then the cache trimmed to its
    /// quota) or failed (the job's error).
    func settle(_ st: StagingSettings) {
        let generation = store.generation
        if st.settled.isCurrent(generation) { return }
        guard let entries = try? st.cache.entries(in: .staging) else { return }
        guard let jobs = try? store.get(entries.compactMap(\.job)) else { return }
        var readied = false
        var complete = true
        for e in entries where e.state == .staging {
            guard let id = e.job, let job = jobs[id] else { continue }
            do {
                if job.state.satisfiesDependents {
                    try st.cache.finish(e.id, state: .ready, bytes: DaemonAPI.bytes(under: e.path), now: now())
                    readied = true
                } else if job.state == .failed || job.state == .upstreamFailed {
                    try st.cache.finish(e.id, state: .failed, error: job.error ?? "the transfer failed", now: now())
                }
            } catch {
                complete = false  // settled again by the next ask
            }
        }
        if readied { evict(st) }
        if complete { st.settled.set(generation) }
    }

    /// `entry` (staging) settled if its transfer has ended: an ask settles the entry it pins and
    /// no other (the settler service does the rest once a second). Each ask had settled the
    /// whole cache whenever the job queue had moved since the last settle, which at start-up
    /// is every ask: a thousand hooks' first asks, while their transfers ran, each read every
    /// staging entry and its job and raced the others to finish the same rows (their answers
    /// took 1-2.5 s for the first ten seconds, `bench/stall.sh` on PostgreSQL).
    func settled(_ st: StagingSettings, _ entry: StagingCache.Entry) -> StagingCache.Entry {
        guard let id = entry.job, let job = try? store.get(id) else { return entry }
        var e = entry
        do {
            if job.state.satisfiesDependents {
                e.bytes = DaemonAPI.bytes(under: e.path)
                try st.cache.finish(e.id, state: .ready, bytes: e.bytes, now: now())
                e.state = .ready
                evict(st)
            } else if job.state == .failed || job.state == .upstreamFailed {
                e.error = job.error ?? "the transfer failed"
                try st.cache.finish(e.id, state: .failed, error: e.error, now: now())
                e.state = .failed
            }
        } catch {
            return entry  // settled by the next ask, or by the settler
        }
        return e
    }

    /// Unpinned ready entries, least recently used first, until the cache fits its quota; each
    /// recorded (`stage_evictions`: the Staging view and `ferry stage cache` list them).
    func evict(_ st: StagingSettings) {
        guard let plan = try? st.cache.evictionPlan(quota: st.quota), !plan.candidates.isEmpty else { return }
        var ready = plan.ready
        for e in plan.candidates {
            try? FileManager.default.removeItem(atPath: e.path)
            let reason = "over quota: \(byteText(UInt64(max(0, ready)))) ready of \(byteText(UInt64(max(0, st.quota)))), least recently used and pinned by no job"
            try? st.cache.evicted(e, reason: reason, now: now())
            ready -= e.bytes
        }
    }

    static func bytes(under path: String) -> Int64 {
        var total: Int64 = 0
        guard let walk = FileManager.default.enumerator(atPath: path) else { return 0 }
        for case let rel as String in walk {
            if let a = try? FileManager.default.attributesOfItem(atPath: path + "/" + rel), a[.type] as? FileAttributeType == .typeRegular {
                total += (a[.size] as? NSNumber)?.int64Value ?? 0
            }
        }
        return total
    }

    // MARK: teardown, sweep

    func teardown(_ st: StagingSettings, job: String) throws -> V1.TeardownAnswer {
        // Marked first: a poll of the job's stage-in from now on stages nothing (`TornDownJobs`).
        st.tornDown.mark(job)
        // The records in one transaction (links, pins, orphaned entries; the links removed from
        // the job's directories as their records are deleted), then the orphans' files.
        let released = try st.cache.release(schedulerJob: job) { l in removeLink(l.path, target: l.target) }
        var cancelled = 0
        for e in released.orphans {
            if e.state == .staging, let j = e.job {
                _ = try? store.cancel(j, by: "ferry-stage", now: now())
                cancelled += 1
            }
            try? FileManager.default.removeItem(atPath: e.path)
        }
        if released.readyBytes > st.quota { evict(st) }
        return V1.TeardownAnswer(job: job, unpinned: released.unpinned.count, linksRemoved: released.linksRemoved, transfersCancelled: cancelled)
    }

    /// Entries no job pins any more that are not ready (a transfer nobody waits for, or a
    /// failed one): the transfer is cancelled, the directory and the row removed.
    func dropOrphans(_ st: StagingSettings) throws -> Int {
        var n = 0
        for e in try st.cache.entries() where e.pins.isEmpty && e.state != .ready {
            if e.state == .staging, let j = e.job {
                _ = try? store.cancel(j, by: "ferry-stage", now: now())
                n += 1
            }
            try? FileManager.default.removeItem(atPath: e.path)
            try st.cache.remove(e.id)
        }
        return n
    }

    func sweep(_ st: StagingSettings, keep: Set<String>?, maxPinHours: Int64) throws -> V1.SweepAnswer {
        settle(st)
        let expired = try st.cache.expirePins(keep: keep, before: now() - maxPinHours * 3600)
        for j in expired {
            for l in try st.cache.links(schedulerJob: j) { _ = removeLink(l.path, target: l.target) }
            try st.cache.forgetLinks(schedulerJob: j)
        }
        let dropped = try dropOrphans(st)
        // Directories under the cache root that no entry owns (a crash between making one and
        // recording it, or a database restored from backup).
        let known = Set(try st.cache.entries().map { ($0.path as NSString).lastPathComponent })
        var strays: [String] = []
        for name in (try? FileManager.default.contentsOfDirectory(atPath: st.rootReal)) ?? [] where !known.contains(name) {
            try? FileManager.default.removeItem(atPath: st.rootReal + "/" + name)
            strays.append(name)
        }
        evict(st)
        return V1.SweepAnswer(pinsExpired: expired, transfersCancelled: dropped, strayDirectories: strays.sorted())
    }

    // MARK: stage out

    func stageOut(_ r: StageRequest) throws -> [StageItem] {
        guard staging != nil else { throw HTTPFailure(status: 409, message: "no staging") }
        let recorded = Dictionary(try staging!.cache.outbound(schedulerJob: r.job).map { ($0.index, $0) }, uniquingKeysWith: { a, _ in a })
        var items: [StageItem] = []
        for (i, d) in r.directives.filter({ $0.direction == .stageOut }).enumerated() {
            var item = StageItem(line: d.line, direction: d.direction.rawValue, source: d.source, destination: d.destination, optional: d.optional, state: "staging")
            do {
                var o = recorded[i]
                if r.retry == true, let j = o?.job, let job = try store.get(j), job.state == .failed || job.state == .upstreamFailed {
                    o = nil  // a failed delivery is tried again by a new run of stage-out
                }
                if o == nil || o?.job == nil {
                    o = try submitOut(d, index: i, r)
                }
                item.job = o!.job
                if let j = o!.job, let job = try store.get(j) {
                    switch job.state {
                    case .success, .skipped: item.state = "done"
                    case .failed, .upstreamFailed:
                        item.state = "failed"
                        item.error = "\(d.source) -> \(d.destination): " + (job.error ?? "failed")
                    default: item.state = "staging"
                    }
                }
            } catch {
                item.state = "failed"
                item.error = "\(d.source) -> \(d.destination): " + message(error)
            }
            if item.state == "failed" && d.optional { item.state = "skipped" }
            items.append(item)
        }
        return items
    }

    private func submitOut(_ d: StageDirective, index: Int, _ r: StageRequest) throws -> StagingCache.Outbound {
        guard d.source.hasPrefix("/") else { throw HTTPFailure(status: 400, message: "a stage_out SRC is a local path (the job's results)") }
        var sb = stat()
        guard lstat(d.source, &sb) == 0 else { throw HTTPFailure(status: 404, message: "\(d.source) does not exist") }
        let src = try exportPath(d.source, what: "SRC")
        let dst: String
        var peer = ""
        if d.destination.hasPrefix("ferry://") {
            dst = d.destination
            peer = try remoteKey(d.destination) ?? ""
        } else if d.destination.hasPrefix("/") {
            dst = try exportPath(d.destination, what: "DST").job
        } else {
            throw HTTPFailure(status: 400, message: "a stage_out DST is ferry://CENTER/EXPORT/PATH or a local path; to publish results in Global Files, deliver them to the center and register them there")
        }
        var req = JobRequest(source: src.job, destination: dst)
        req.recursive = (sb.st_mode & S_IFMT) == S_IFDIR
        let id = try store.submit(owner: r.user, request: req, peer: peer, now: now())
        let o = StagingCache.Outbound(schedulerJob: r.job, index: index, source: d.source, destination: d.destination, optional: d.optional, job: id, error: nil)
        try staging!.cache.recordOutbound(o)
        return o
    }
}
