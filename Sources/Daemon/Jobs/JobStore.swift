import Foundation
import GlobalFS
import Storage
import Transfer

/// The persistent job queue, on embedded SQLite (one daemon) or PostgreSQL (several daemons of
/// one center sharing it; see `openDatabase`). Every change is one transaction.
///
/// Claims: on SQLite writes are serialised, so selecting the next runnable job and marking it
/// running in one transaction can never hand a job to two runners. On PostgreSQL the candidate
/// rows are locked with `FOR UPDATE SKIP LOCKED` (another daemon's claim skips them instead of
/// waiting), and a per-peer or per-user limit is re-checked under a transaction-scoped advisory
/// lock on that peer and that user, so two daemons cannot both take the last free slot.
/// Leases: a running job carries its worker and an expiry; a daemon that dies stops renewing,
/// and any daemon's next `promote` puts the job back in the queue (`up_for_reschedule`).
/// Times are Unix seconds from the callers' clocks (daemons sharing a database keep NTP time).
public final class JobStore: @unchecked Sendable {
    public let db: any SQLDatabase
    public let retry: RetryPolicy
    public var location: String { db.location }

    /// The queue's change feed (ChangeFeed.swift): bumped after every transaction of this
    /// store that changed a row, and on PostgreSQL also by every other store's (another
    /// daemon's) through LISTEN/NOTIFY. The API's event streams await it instead of polling.
    public let changes = ChangeFeed()
    /// `changes.generation`.
    public var generation: UInt64 { changes.generation }
    /// The LISTEN loop on PostgreSQL (nil on SQLite), ended with the store.
    var listener: Task<Void, Never>?
    /// When this store last pruned `link_samples` (`pruneDue`).
    private let pruneLock = NSLock()
    private var lastPrune: Int64 = 0

    /// One transaction of the store's; when it changed a row, the change feed moves on (on
    /// PostgreSQL a NOTIFY in the same transaction tells the other daemons at commit).
    func write<T>(_ body: (any SQLSession) throws -> T) throws -> T {
        var changed = false
        let r = try db.write { s in
            let counting = ChangeCountingSession(base: s)
            let r = try body(counting)
            changed = counting.changed
            if changed && s.dialect == .postgres { try s.send("SELECT pg_notify(?, ?) AS sent", [ChangeFeed.channel, changes.origin]) }
            return r
        }
        if changed { changes.bump() }
        return r
    }

    deinit { listener?.cancel() }

    /// Opens (creating the tables if needed) the queue in `database`: a SQLite path (":memory:"
    /// for a private one) or a `postgres://` URL.
    public convenience init(database: String, retry: RetryPolicy = RetryPolicy()) throws {
        try self.init(db: try openDatabase(database), retry: retry)
    }

    public init(db: any SQLDatabase, retry: RetryPolicy = RetryPolicy()) throws {
        self.db = db
        self.retry = retry
        let pg = db.dialect == .postgres
        let id = pg ? "id BIGSERIAL PRIMARY KEY" : "id INTEGER PRIMARY KEY AUTOINCREMENT"
        let int = pg ? "BIGINT" : "INTEGER"
        try write { s in
            // Two daemons starting together on one PostgreSQL: one creates, the other waits.
            if pg { try s.execute("SELECT pg_advisory_xact_lock(7265726) AS locked") }
            try s.execute("""
                CREATE TABLE IF NOT EXISTS jobs (
                    \(id),
                    owner TEXT NOT NULL,
                    request TEXT NOT NULL,
                    state TEXT NOT NULL,
                    priority \(int) NOT NULL DEFAULT 0,
                    attempts \(int) NOT NULL DEFAULT 0,
                    max_attempts \(int) NOT NULL,
                    not_before \(int) NOT NULL DEFAULT 0,
                    deadline \(int),
                    lease_owner TEXT,
                    lease_expires \(int),
                    last_worker TEXT,
                    error TEXT,
                    error_code TEXT,
                    bytes \(int) NOT NULL DEFAULT 0,
                    files \(int) NOT NULL DEFAULT 0,
                    peer TEXT NOT NULL DEFAULT '',
                    created \(int) NOT NULL,
                    updated \(int) NOT NULL);
                CREATE TABLE IF NOT EXISTS job_deps (
                    job \(int) NOT NULL REFERENCES jobs(id),
                    depends_on \(int) NOT NULL REFERENCES jobs(id),
                    PRIMARY KEY (job, depends_on));
                CREATE INDEX IF NOT EXISTS jobs_runnable ON jobs(state, priority DESC, id);
                CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, id);
                CREATE INDEX IF NOT EXISTS job_deps_on ON job_deps(depends_on);
                CREATE TABLE IF NOT EXISTS job_attempts (
                    \(id),
                    job \(int) NOT NULL REFERENCES jobs(id),
                    attempt \(int) NOT NULL,
                    worker TEXT NOT NULL,
                    ended \(int) NOT NULL,
                    state TEXT NOT NULL,
                    error TEXT,
                    error_code TEXT,
                    bytes \(int) NOT NULL DEFAULT 0);
                CREATE INDEX IF NOT EXISTS job_attempts_job ON job_attempts(job, id);
                CREATE TABLE IF NOT EXISTS link_samples (
                    at \(int) NOT NULL,
                    job \(int) NOT NULL,
                    owner TEXT NOT NULL,
                    peer TEXT NOT NULL,
                    bytes \(int) NOT NULL);
                CREATE INDEX IF NOT EXISTS link_samples_at ON link_samples(at);
                """)
            try JobStore.migrate(s)
            try JobStore.createPartTables(s)
        }
        listener = changes.listen(db)
    }

    /// Brings a queue made by an older daemon up to this one's columns (in the creating
    /// transaction, under the same lock on PostgreSQL). Each step adds what is missing and
    /// leaves existing rows as they are.
    static func migrate(_ s: any SQLSession) throws {
        // error_code (issue 14): the engine's code of a failed attempt; older rows have none.
        if s.dialect == .postgres {
            try s.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS error_code TEXT")
        } else if try s.one("SELECT COUNT(*) AS n FROM pragma_table_info('jobs') WHERE name = 'error_code'")?.int("n") ?? 0 == 0 {
            try s.execute("ALTER TABLE jobs ADD COLUMN error_code TEXT")
        }
        // striped, note (issue 19): a job cut into parts (PartStore.swift), and a word to its owner.
        try migrateStriping(s)
        // link_free: how deep no link is followed in the job's local path when it runs (the
        // scope's limit at submit, `Job.linkFree`); older rows follow links as before (0).
        if s.dialect == .postgres {
            try s.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS link_free BIGINT NOT NULL DEFAULT 0")
        } else if try s.one("SELECT COUNT(*) AS n FROM pragma_table_info('jobs') WHERE name = 'link_free'")?.int("n") ?? 0 == 0 {
            try s.execute("ALTER TABLE jobs ADD COLUMN link_free INTEGER NOT NULL DEFAULT 0")
        }
        // daemon_made: a job the daemon made itself (a replication, a stage-in's fetch), which
        // alone may run without its owner's account (`Job.daemonMade`). Older rows are users'
        // jobs as far as the runner knows (0): they run as their owners.
        if s.dialect == .postgres {
            try s.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS daemon_made BIGINT NOT NULL DEFAULT 0")
        } else if try s.one("SELECT COUNT(*) AS n FROM pragma_table_info('jobs') WHERE name = 'daemon_made'")?.int("n") ?? 0 == 0 {
            try s.execute("ALTER TABLE jobs ADD COLUMN daemon_made INTEGER NOT NULL DEFAULT 0")
        }
    }

    // MARK: submit, read

    /// Adds a job: `queued`, or `scheduled` while it waits for its dependencies.
    @discardableResult
    /// `linkFree`: `Job.linkFree`, what the API found at submit. `daemonMade`: `Job.daemonMade`,
    /// true only where the daemon makes a job itself (a replication, a stage-in), never for a
    /// user's submission.
    public func submit(owner: String, request: JobRequest, peer: String, now: Int64, linkFree: Int = 0, daemonMade: Bool = false) throws -> Int64 {
        let json = String(decoding: try JSONEncoder().encode(request), as: UTF8.self)
        return try write { s in
            for d in request.dependsOn {
                guard try s.one("SELECT 1 AS one FROM jobs WHERE id = ?", d) != nil else {
                    throw JobStoreError("job \(d) (a dependency) does not exist")
                }
            }
            let state: JobState = request.dependsOn.isEmpty ? .queued : .scheduled
            try JobState.noStatus.checkMove(to: state)
            guard let row = try s.one("""
                INSERT INTO jobs (owner, request, state, priority, max_attempts, deadline, peer, created, updated, link_free, daemon_made)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id
                """, owner, json, state.rawValue, request.priority, request.maxAttempts ?? retry.maxAttempts,
                request.deadline, peer, now, now, linkFree, daemonMade ? 1 : 0) else { throw JobStoreError("the database returned no id for the new job") }
            let id = row.int("id")
            for d in Set(request.dependsOn) {
                try s.execute("INSERT INTO job_deps (job, depends_on) VALUES (?, ?)", id, d)
            }
            return id
        }
    }

    public func get(_ id: Int64) throws -> Job? {
        try db.read { s in try s.one("SELECT * FROM jobs WHERE id = ?", id).map(JobStore.job) }
    }

    /// The jobs with these ids (those that exist), in one read: 500 ids a statement.
    public func get(_ ids: [Int64]) throws -> [Int64: Job] {
        guard !ids.isEmpty else { return [:] }
        return try db.read { s in
            var out: [Int64: Job] = [:]
            for start in stride(from: 0, to: ids.count, by: 500) {
                let part = Array(ids[start..<min(ids.count, start + 500)])
                for r in try s.query("SELECT * FROM jobs WHERE id IN (" + part.map { _ in "?" }.joined(separator: ",") + ")", part.map { $0 as any SQLArgument }) {
                    let j = JobStore.job(r)
                    out[j.id] = j
                }
            }
            return out
        }
    }

    /// A page of jobs, oldest first, after `afterID` (keyset paging: stable under inserts).
    public func list(_ f: JobFilter) throws -> [Job] {
        var sql = "SELECT * FROM jobs WHERE id > ?"
        var args: [any SQLArgument] = [f.afterID]
        if let o = f.owner { sql += " AND owner = ?"; args.append(o) }
        if let p = f.peer { sql += " AND peer = ?"; args.append(p) }
        if let t = f.since { sql += " AND created >= ?"; args.append(t) }
        if !f.states.isEmpty {
            sql += " AND state IN (" + f.states.map { _ in "?" }.joined(separator: ",") + ")"
            args += f.states.map { $0.rawValue }
        }
        sql += " ORDER BY id LIMIT ?"
        args.append(max(1, min(f.limit, 1001)))  // 1,000 a page, and one more to know whether more follow
        return try db.read { s in try s.query(sql, args).map(JobStore.job) }
    }

    /// Bytes moved by jobs that ended in success since `since` (Unix seconds), by peer and by
    /// the span of `bucket` seconds they ended in (each span's start, in Unix seconds); `owner`'s
    /// jobs only, or everyone's. In key order (span, peer).
    public func moved(owner: String?, since: Int64, bucket: Int64) throws -> [(start: Int64, peer: String, bytes: Int64, jobs: Int64)] {
        var sql = "SELECT peer, (updated / ?) * ? AS at, CAST(SUM(bytes) AS BIGINT) AS moved, COUNT(*) AS n FROM jobs WHERE state = 'success' AND updated >= ?"
        var args: [any SQLArgument] = [bucket, bucket, since]
        if let owner { sql += " AND owner = ?"; args.append(owner) }
        sql += " GROUP BY peer, at ORDER BY at, peer"
        return try db.read { s in try s.query(sql, args).map { ($0.int("at"), $0.text("peer"), $0.int("moved"), $0.int("n")) } }
    }

    /// Bytes the runners measured moving since `since`, by peer and span of `bucket` seconds
    /// (`link_samples`: each lease renewal and each attempt's end adds what moved since the
    /// last one), and how many jobs moved bytes in each span; `owner`'s jobs only, or everyone's.
    /// What moved while a job ran, failed attempts included, whether or not it succeeded later.
    public func measured(owner: String?, since: Int64, bucket: Int64) throws -> [(start: Int64, peer: String, bytes: Int64, jobs: Int64)] {
        var sql = "SELECT peer, (at / ?) * ? AS span, CAST(SUM(bytes) AS BIGINT) AS moved, COUNT(DISTINCT job) AS n FROM link_samples WHERE at >= ?"
        var args: [any SQLArgument] = [bucket, bucket, since]
        if let owner { sql += " AND owner = ?"; args.append(owner) }
        sql += " GROUP BY peer, span ORDER BY span, peer"
        return try db.read { s in try s.query(sql, args).map { ($0.int("span"), $0.text("peer"), $0.int("moved"), $0.int("n")) } }
    }

    /// Samples are kept two hours (the overview draws the last one).
    static let samplesKept: Int64 = 7_200

    /// Whether this store's last prune of `link_samples` is a minute old (and now it is not).
    private func pruneDue(_ now: Int64) -> Bool {
        pruneLock.withLock {
            guard now - lastPrune >= 60 || now < lastPrune else { return false }
            lastPrune = now
            return true
        }
    }

    static func sample(_ s: any SQLSession, job: Int64, now: Int64, moved: Int64) throws {
        guard moved > 0 else { return }
        try s.send("INSERT INTO link_samples (at, job, owner, peer, bytes) SELECT ?, id, owner, peer, ? FROM jobs WHERE id = ?", now, moved, job)
    }

    public func countsByState() throws -> [JobState: Int] {
        try db.read { s in
            var out: [JobState: Int] = [:]
            for row in try s.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state") {
                if let st = JobState(rawValue: row.text("state")) { out[st] = Int(row.int("n")) }
            }
            return out
        }
    }

    /// Bytes and files delivered by finished jobs, and attempts beyond each job's first.
    public func totals() throws -> (bytes: Int64, files: Int64, retries: Int64) {
        try db.read { s in
            let r = try s.one("""
                SELECT CAST(COALESCE(SUM(CASE WHEN state = 'success' THEN bytes ELSE 0 END), 0) AS BIGINT) AS b,
                       CAST(COALESCE(SUM(CASE WHEN state = 'success' THEN files ELSE 0 END), 0) AS BIGINT) AS f,
                       CAST(COALESCE(SUM(CASE WHEN attempts > 1 THEN attempts - 1 ELSE 0 END), 0) AS BIGINT) AS r FROM jobs
                """)
            return (r?.int("b") ?? 0, r?.int("f") ?? 0, r?.int("r") ?? 0)
        }
    }

    // MARK: scheduling

    /// Moves jobs whose wait is over: dependencies done → queued; a dependency failed →
    /// upstream_failed (transitively); backoff or deferral over → queued; leases expired (a
    /// daemon died) → up_for_reschedule → queued; deadline passed → failed. Returns how many
    /// jobs moved.
    @discardableResult
    public func promote(now: Int64) throws -> Int {
        try write { s in
            var moved = 0
            // Every move below is checked against JobState's transition table.
            let leaseLost = try JobState.sql(moving: [.running], to: .upForReschedule)
            moved += try s.execute("""
                UPDATE jobs SET \(leaseLost.set), lease_owner = NULL, lease_expires = NULL, updated = ?,
                    error = 'the daemon running it stopped or lost its lease', error_code = NULL
                WHERE \(leaseLost.where) AND lease_expires < ?
                """, now, now)
            let pastDeadline = try JobState.sql(moving: [.scheduled, .queued, .deferred, .upForRetry, .upForReschedule], to: .failed)
            moved += try s.execute("""
                UPDATE jobs SET \(pastDeadline.set), error = 'deadline passed before the transfer finished', error_code = NULL, updated = ?
                WHERE \(pastDeadline.where)
                  AND deadline IS NOT NULL AND deadline < ?
                """, now, now)
            let failedDeps = s.dialect == .postgres ? "string_agg(d.depends_on::text, ',')" : "group_concat(d.depends_on)"
            // Failure travels down dependency chains; bounded by the chain length.
            let upstream = try JobState.sql(moving: [.scheduled, .queued, .deferred], to: .upstreamFailed)
            for _ in 0..<10_000 {
                let n = try s.execute("""
                    UPDATE jobs SET \(upstream.set), updated = ?, error_code = NULL,
                        error = 'a job it depends on failed: ' || (SELECT \(failedDeps) FROM job_deps d JOIN jobs p ON p.id = d.depends_on
                                                                   WHERE d.job = jobs.id AND p.state IN ('failed', 'upstream_failed'))
                    WHERE \(upstream.where) AND id IN (
                        SELECT d.job FROM jobs p JOIN job_deps d ON d.depends_on = p.id
                        WHERE p.state IN ('failed', 'upstream_failed'))
                    """, now)
                if n == 0 { break }
                moved += n
            }
            let ready = try JobState.sql(moving: [.scheduled], to: .queued)
            moved += try s.execute("""
                UPDATE jobs SET \(ready.set), updated = ?
                WHERE \(ready.where) AND NOT EXISTS (
                    SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.depends_on
                    WHERE d.job = jobs.id AND p.state NOT IN ('success', 'skipped'))
                """, now)
            // Two statements, not one with OR: each is then a range of the (state, ...) index,
            // not a scan of the whole queue.
            let waited = try JobState.sql(moving: [.upForRetry, .deferred], to: .queued)
            moved += try s.execute("""
                UPDATE jobs SET \(waited.set), updated = ?
                WHERE \(waited.where) AND not_before <= ?
                """, now, now)
            let rescheduled = try JobState.sql(moving: [.upForReschedule], to: .queued)
            moved += try s.execute("UPDATE jobs SET \(rescheduled.set), updated = ? WHERE \(rescheduled.where)", now)
            moved += try JobStore.promoteParts(s, now: now)
            return moved
        }
    }

    /// Hands the next runnable job to `worker` (state `running`, one more attempt, a lease
    /// until now + leaseSeconds), or nil. The job of a user with the fewest jobs running
    /// first, then highest priority, then oldest; jobs over a per-peer or per-user
    /// concurrency limit wait (they stay `queued`). Toward a peer, what
    /// moves bytes counts (unstriped running jobs and running parts); for a user, running jobs
    /// of both kinds and running parts. `peerLimits` overrides
    /// `perPeerMax` for the peers it names (the link tuner's figure).
    public func claim(worker: String, now: Int64, leaseSeconds: Int64, perPeerMax: Int = .max, perUserMax: Int = .max,
                      peerLimits: [String: Int] = [:]) throws -> Job? {
        try write { s in
            let pg = s.dialect == .postgres
            var runningByPeer: [String: Int] = [:]
            var runningByOwner: [String: Int] = [:]
            // A striped job's own attempt coordinates and moves no bytes: toward its peer its
            // running parts count instead (`runningToward`). For its owner it counts here, with
            // the parts (`startedFor`): each holds a worker for its whole job, so a user's
            // striped jobs must not take every worker; `claimPart` leaves it out (a limit of 1
            // then still runs one part at a time).
            for row in try s.query("SELECT peer, owner, striped, COUNT(*) AS n FROM jobs WHERE state = 'running' GROUP BY peer, owner, striped") {
                if row.int("striped") == 0 { runningByPeer[row.text("peer"), default: 0] += Int(row.int("n")) }
                runningByOwner[row.text("owner"), default: 0] += Int(row.int("n"))
            }
            for row in try s.query("""
                SELECT p.peer AS peer, j.owner AS owner, COUNT(*) AS n FROM job_parts p JOIN jobs j ON j.id = p.job
                WHERE p.state = 'running' GROUP BY p.peer, j.owner
                """) {
                runningByPeer[row.text("peer"), default: 0] += Int(row.int("n"))
                runningByOwner[row.text("owner"), default: 0] += Int(row.int("n"))
            }
            // Owners at their share and peers at their limit are left out before the window's
            // LIMIT: else one user's (or one peer's) older or higher-priority queued jobs fill
            // the window, and every other user's job waits behind them. (At most 400 owners and
            // 98 peers: 499 parameters, an old SQLite's limit; beyond, the window alone and the
            // checks below.)
            var excluded = ""
            var args: [any SQLArgument] = [now]
            func leaveOut(_ column: String, _ names: ArraySlice<String>) {
                guard !names.isEmpty else { return }
                excluded += " AND \(column) NOT IN (\(Array(repeating: "?", count: names.count).joined(separator: ", ")))"
                args += names.map { $0 as any SQLArgument }
            }
            leaveOut("owner", runningByOwner.filter { $0.value >= perUserMax }.keys.sorted().prefix(400))
            leaveOut("peer", runningByPeer.filter { !$0.key.isEmpty && $0.value >= (peerLimits[$0.key] ?? perPeerMax) }.keys.sorted().prefix(98))
            let candidates = try s.query("""
                SELECT id, peer, owner FROM jobs WHERE state = 'queued' AND not_before <= ?\(excluded)
                ORDER BY priority DESC, id LIMIT \(pg ? 16 : 256)\(pg ? " FOR UPDATE SKIP LOCKED" : "")
                """, args)
            if pg {
                // Another daemon may have filled a slot since the counts above: count again
                // under locks that every claimant of a peer or user takes, all in one order
                // (peers sorted, then users sorted), so two claimants never wait on each other.
                let peers = Set(candidates.map { $0.text("peer") }).filter { !$0.isEmpty && (peerLimits[$0] ?? perPeerMax) < .max }
                for peer in peers.sorted() {
                    try s.execute("SELECT pg_advisory_xact_lock(hashtext('ferry-peer:' || ?)) AS locked", peer)
                    runningByPeer[peer] = try JobStore.runningToward(s, peer: peer)
                }
                if perUserMax < .max {
                    for owner in Set(candidates.map { $0.text("owner") }).sorted() {
                        try s.execute("SELECT pg_advisory_xact_lock(hashtext('ferry-user:' || ?)) AS locked", owner)
                        runningByOwner[owner] = try JobStore.startedFor(s, owner: owner)
                    }
                }
            }
            // Fair shares: a user with fewer jobs running goes first, then priority and age.
            // A job's priority orders its owner's own jobs; it cannot put one user's queue
            // ahead of another's, since every user sets their own.
            let fair = candidates.enumerated().sorted {
                let (l, r) = (runningByOwner[$0.element.text("owner"), default: 0], runningByOwner[$1.element.text("owner"), default: 0])
                return l != r ? l < r : $0.offset < $1.offset
            }.map(\.element)
            for c in fair {
                let peer = c.text("peer")
                let owner = c.text("owner")
                let peerMax = peerLimits[peer] ?? perPeerMax
                if !peer.isEmpty && runningByPeer[peer, default: 0] >= peerMax { continue }
                if runningByOwner[owner, default: 0] >= perUserMax { continue }
                let claimed = try JobState.sql(moving: [.queued], to: .running)
                let rows = try s.query("""
                    UPDATE jobs SET \(claimed.set), attempts = attempts + 1, lease_owner = ?, lease_expires = ?, last_worker = ?, updated = ?
                    WHERE id = ? AND \(claimed.where) RETURNING *
                    """, worker, now + leaseSeconds, worker, now, c.int("id"))
                if let r = rows.first { return JobStore.job(r) }
            }
            return nil
        }
    }

    /// Extends a running job's lease; false when the worker no longer holds it (cancelled, or
    /// taken back after it expired): the runner must stop that transfer.
    /// `moved`: bytes moved since the last renewal (the overview's measured throughput).
    public func renew(_ id: Int64, worker: String, now: Int64, leaseSeconds: Int64, bytes: Int64, files: Int64, moved: Int64 = 0) throws -> Bool {
        try write { s in
            let held = try s.execute("""
                UPDATE jobs SET lease_expires = ?, bytes = ?, files = ?, updated = ?
                WHERE id = ? AND state = 'running' AND lease_owner = ?
                """, now + leaseSeconds, bytes, files, now, id, worker) == 1
            if held { try JobStore.sample(s, job: id, now: now, moved: moved) }
            return held
        }
    }

    /// Records how an attempt ended. Returns the job's new state, or nil when the worker no
    /// longer held the job (its outcome is then ignored: someone else owns the job now).
    /// `moved`: bytes moved since the attempt's last lease renewal.
    @discardableResult
    public func finish(_ id: Int64, worker: String, outcome: AttemptOutcome, now: Int64, moved: Int64 = 0, random: Double = Double.random(in: 0..<1)) throws -> JobState? {
        try write { s in
            guard let row = try s.one("SELECT * FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ?\(JobStore.forUpdate(s))", id, worker) else {
                return nil
            }
            try JobStore.sample(s, job: id, now: now, moved: moved)
            // Old samples go once a minute per store, not at every end: on PostgreSQL two
            // attempts ending together would wait for each other's delete of the same rows.
            if pruneDue(now) { try s.execute("DELETE FROM link_samples WHERE at < ?", now - JobStore.samplesKept) }
            let job = JobStore.job(row)
            let pastDeadline = job.request.deadline.map { now >= $0 } ?? false
            let e = ending(outcome, attempts: job.attempts, maxAttempts: job.maxAttempts, pastDeadline: pastDeadline, skipped: .skipped,
                           now: now, notBefore: job.notBefore, bytes: job.bytes, files: job.files, random: random)
            let (state, error, errorCode, notBefore, bytes, files) = (e.state, e.error, e.code, e.notBefore, e.bytes, e.files)
            try job.state.checkMove(to: state)
            try s.execute("""
                UPDATE jobs SET state = ?, error = ?, error_code = ?, not_before = ?, bytes = ?, files = ?, lease_owner = NULL, lease_expires = NULL,
                    updated = ?
                WHERE id = ?
                """, state.rawValue, error, errorCode?.name, notBefore, bytes, files, now, id)
            // The attempt's own line of the job's history (the job keeps only its last error).
            try s.send("INSERT INTO job_attempts (job, attempt, worker, ended, state, error, error_code, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       id, job.attempts, worker, now, state.rawValue, error, errorCode?.name, bytes)
            return state
        }
    }

    /// What an attempt's outcome makes of a job (or of a part: `skipped` is then `success`): its
    /// next state, its error and code, when it may run again, and its bytes and files.
    struct Ending {
        var state: JobState
        var error: String?
        var code: TransferError.Code?
        var notBefore: Int64
        var bytes: Int64
        var files: Int64
    }

    func ending(_ outcome: AttemptOutcome, attempts: Int, maxAttempts: Int, pastDeadline: Bool, skipped: JobState, now: Int64,
                notBefore: Int64, bytes: Int64, files: Int64, random: Double) -> Ending {
        var e = Ending(state: .success, error: nil, code: nil, notBefore: notBefore, bytes: bytes, files: files)
        switch outcome {
        case .success(let b, let f):
            e.bytes = b
            e.files = f
        case .skipped(let f):
            e.state = skipped
            e.files = f
        case .interrupted:
            e.state = .upForReschedule
            e.error = "interrupted; it resumes from its journal"
        case .failure(let message, let resumable, let code):
            e.error = message
            e.code = code
            if resumable && attempts < maxAttempts && !pastDeadline {
                e.state = .upForRetry
                e.notBefore = now + Int64(retry.delay(afterAttempt: attempts, random: random).rounded(.up))
            } else {
                e.state = .failed
                if resumable && !pastDeadline { e.error = message + " (gave up after \(attempts) attempts)" }
                if pastDeadline { e.error = message + " (deadline passed)" }
            }
        }
        return e
    }

    /// A job's attempts, oldest first: how each ended (the state it moved the job to), its
    /// error and code, and the bytes the job had then. Attempts are numbered from 1 again after
    /// a retry (`retryJob`); at most the last `limit`.
    public func attempts(_ id: Int64, limit: Int = 100) throws -> [(attempt: Int, worker: String, ended: Int64, state: String, error: String?, code: String?, bytes: Int64)] {
        try db.read { s in
            try s.query("SELECT * FROM job_attempts WHERE job = ? ORDER BY id DESC LIMIT ?", id, limit).reversed().map {
                (Int($0.int("attempt")), $0.text("worker"), $0.int("ended"), $0.text("state"), $0.optionalText("error"), $0.optionalText("error_code"), $0.int("bytes"))
            }
        }
    }

    /// Cancels a job that has not finished: `failed` with "cancelled"; a running one loses its
    /// lease, so its runner stops at its next renewal. Returns the job after the change.
    /// The error a cancelled job carries ("cancelled by USER"): the API marks such a failed
    /// job `cancelled`.
    public static let cancelledPrefix = "cancelled by "

    public func cancel(_ id: Int64, by user: String, now: Int64) throws -> Job {
        try write { s in
            guard let job = try s.one("SELECT * FROM jobs WHERE id = ?\(JobStore.forUpdate(s))", id).map(JobStore.job) else { throw JobStoreError("no job \(id)") }
            guard !job.state.isFinal else { throw JobStoreError("job \(id) already ended \(job.state.rawValue)") }
            try job.state.checkMove(to: .failed)
            let rows = try s.query("""
                UPDATE jobs SET state = ?, error = ?, error_code = NULL, lease_owner = NULL, lease_expires = NULL, updated = ? WHERE id = ? RETURNING *
                """, JobState.failed.rawValue, JobStore.cancelledPrefix + user, now, id)
            try JobStore.cancelParts(s, job: id, by: user, now: now)
            return JobStore.job(rows[0])
        }
    }

    /// Runs a failed job again (attempts start over); its dependents that failed because of it
    /// go back to waiting for it.
    public func retryJob(_ id: Int64, now: Int64) throws -> Job {
        try write { s in
            guard let job = try s.one("SELECT * FROM jobs WHERE id = ?\(JobStore.forUpdate(s))", id).map(JobStore.job) else { throw JobStoreError("no job \(id)") }
            guard job.state == .failed || job.state == .upstreamFailed else {
                throw JobStoreError("job \(id) is \(job.state.rawValue); only failed jobs can be retried")
            }
            let hasDeps = try s.one("SELECT COUNT(*) AS n FROM job_deps WHERE job = ?", id)?.int("n") ?? 0 > 0
            let next: JobState = hasDeps ? .scheduled : .queued
            try job.state.checkMove(to: next)
            try s.execute("UPDATE jobs SET state = ?, attempts = 0, not_before = 0, error = NULL, error_code = NULL, updated = ? WHERE id = ?",
                          next.rawValue, now, id)
            try JobStore.retryParts(s, job: id, now: now)
            // Dependents that gave up because of this job wait again (transitively).
            var frontier: [Int64] = [id]
            for _ in 0..<10_000 where !frontier.isEmpty {
                var next: [Int64] = []
                for j in frontier {
                    let ids = try s.query("""
                        SELECT d.job AS job FROM job_deps d JOIN jobs c ON c.id = d.job WHERE d.depends_on = ? AND c.state = 'upstream_failed'
                        """, j).map { $0.int("job") }
                    let again = try JobState.sql(moving: [.upstreamFailed], to: .scheduled)
                    for c in ids {
                        try s.execute("UPDATE jobs SET \(again.set), error = NULL, error_code = NULL, updated = ? WHERE id = ? AND \(again.where)", now, c)
                    }
                    next += ids
                }
                frontier = next
            }
            return try s.one("SELECT * FROM jobs WHERE id = ?", id).map(JobStore.job)!
        }
    }

    /// Locks the row read for the rest of the transaction on PostgreSQL (SQLite's writes are
    /// serialised already).
    static func forUpdate(_ s: any SQLSession) -> String { s.dialect == .postgres ? " FOR UPDATE" : "" }

    static func job(_ r: SQLRow) -> Job {
        let request = (try? JSONDecoder().decode(JobRequest.self, from: Data(r.text("request").utf8))) ?? JobRequest(source: "?", destination: "?")
        return Job(id: r.int("id"), owner: r.text("owner"), request: request, state: JobState(rawValue: r.text("state")) ?? .noStatus,
                   attempts: Int(r.int("attempts")), maxAttempts: Int(r.int("max_attempts")), notBefore: r.int("not_before"),
                   leaseOwner: r.optionalText("lease_owner"), leaseExpires: r.optionalInt("lease_expires"), error: r.optionalText("error"),
                   bytes: r.int("bytes"), files: r.int("files"), created: r.int("created"), updated: r.int("updated"), peer: r.text("peer"),
                   lastWorker: r.optionalText("last_worker"), errorCode: r.optionalText("error_code").flatMap(TransferError.Code.init(name:)),
                   striped: r.int("striped") != 0, note: r.optionalText("note"), linkFree: Int(r.int("link_free")),
                   daemonMade: r.int("daemon_made") != 0)
    }
}
