import Foundation
import GRDB

/// The persistent job queue on embedded SQLite (GRDB). One daemon owns the file; writes are
/// serialised by SQLite, so a claim (select the next runnable job and mark it running, in one
/// write transaction) can never hand one job to two runners.
///
/// PostgreSQL (several daemons of one center on one database) implements the same operations
/// with `SELECT ... FOR UPDATE SKIP LOCKED`; see docs/NEXT.md.
public final class SQLiteJobStore: @unchecked Sendable {
    private let db: DatabaseQueue
    public let retry: RetryPolicy

    /// Opens (creating if needed) the queue at `path`; ":memory:" for a private in-memory queue.
    public init(path: String, retry: RetryPolicy = RetryPolicy()) throws {
        var config = Configuration()
        config.busyMode = .timeout(10)
        db = path == ":memory:" ? try DatabaseQueue(configuration: config) : try DatabaseQueue(path: path, configuration: config)
        self.retry = retry
        try db.write { db in
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS jobs (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    owner TEXT NOT NULL,
                    request TEXT NOT NULL,
                    state TEXT NOT NULL,
                    priority INTEGER NOT NULL DEFAULT 0,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    max_attempts INTEGER NOT NULL,
                    not_before INTEGER NOT NULL DEFAULT 0,
                    deadline INTEGER,
                    lease_owner TEXT,
                    lease_expires INTEGER,
                    error TEXT,
                    bytes INTEGER NOT NULL DEFAULT 0,
                    files INTEGER NOT NULL DEFAULT 0,
                    peer TEXT NOT NULL DEFAULT '',
                    created INTEGER NOT NULL,
                    updated INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS job_deps (
                    job INTEGER NOT NULL REFERENCES jobs(id),
                    depends_on INTEGER NOT NULL REFERENCES jobs(id),
                    PRIMARY KEY (job, depends_on));
                CREATE INDEX IF NOT EXISTS jobs_runnable ON jobs(state, priority DESC, id);
                CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, id);
                CREATE INDEX IF NOT EXISTS job_deps_on ON job_deps(depends_on);
                """)
        }
    }

    // MARK: submit, read

    /// Adds a job: `queued`, or `scheduled` while it waits for its dependencies.
    @discardableResult
    public func submit(owner: String, request: JobRequest, peer: String, now: Int64) throws -> Int64 {
        let json = String(decoding: try JSONEncoder().encode(request), as: UTF8.self)
        return try db.write { db in
            for d in request.dependsOn {
                guard try Int.fetchOne(db, sql: "SELECT 1 FROM jobs WHERE id = ?", arguments: [d]) != nil else {
                    throw JobStoreError("job \(d) (a dependency) does not exist")
                }
            }
            let state: JobState = request.dependsOn.isEmpty ? .queued : .scheduled
            try db.execute(sql: """
                INSERT INTO jobs (owner, request, state, priority, max_attempts, deadline, peer, created, updated)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [owner, json, state.rawValue, request.priority, request.maxAttempts ?? retry.maxAttempts,
                                 request.deadline, peer, now, now])
            let id = db.lastInsertedRowID
            for d in Set(request.dependsOn) {
                try db.execute(sql: "INSERT INTO job_deps (job, depends_on) VALUES (?, ?)", arguments: [id, d])
            }
            return id
        }
    }

    public func get(_ id: Int64) throws -> Job? {
        try db.read { db in try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]).map(SQLiteJobStore.job) }
    }

    /// A page of jobs, oldest first, after `afterID` (keyset paging: stable under inserts).
    public func list(_ f: JobFilter) throws -> [Job] {
        var sql = "SELECT * FROM jobs WHERE id > ?"
        var args: [DatabaseValueConvertible?] = [f.afterID]
        if let o = f.owner { sql += " AND owner = ?"; args.append(o) }
        if !f.states.isEmpty {
            sql += " AND state IN (" + f.states.map { _ in "?" }.joined(separator: ",") + ")"
            args += f.states.map { $0.rawValue }
        }
        sql += " ORDER BY id LIMIT ?"
        args.append(max(1, min(f.limit, 1000)))
        return try db.read { db in try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(SQLiteJobStore.job) }
    }

    public func countsByState() throws -> [JobState: Int] {
        try db.read { db in
            var out: [JobState: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state") {
                if let s = JobState(rawValue: row["state"]) { out[s] = row["n"] }
            }
            return out
        }
    }

    // MARK: scheduling

    /// Moves jobs whose wait is over: dependencies done → queued; a dependency failed →
    /// upstream_failed (transitively); backoff or deferral over → queued; leases expired (a
    /// daemon died) → up_for_reschedule → queued; deadline passed → failed. Returns how many
    /// jobs moved.
    @discardableResult
    public func promote(now: Int64) throws -> Int {
        try db.write { db in
            var moved = 0
            try db.execute(sql: """
                UPDATE jobs SET state = 'up_for_reschedule', lease_owner = NULL, lease_expires = NULL, updated = ?,
                    error = 'the daemon running it stopped or lost its lease'
                WHERE state = 'running' AND lease_expires < ?
                """, arguments: [now, now])
            moved += db.changesCount
            try db.execute(sql: """
                UPDATE jobs SET state = 'failed', error = 'deadline passed before the transfer finished', updated = ?
                WHERE state IN ('scheduled', 'queued', 'deferred', 'up_for_retry', 'up_for_reschedule')
                  AND deadline IS NOT NULL AND deadline < ?
                """, arguments: [now, now])
            moved += db.changesCount
            // Failure travels down dependency chains; bounded by the chain length.
            for _ in 0..<10_000 {
                try db.execute(sql: """
                    UPDATE jobs SET state = 'upstream_failed', updated = ?,
                        error = 'a job it depends on failed: ' || (SELECT group_concat(d.depends_on) FROM job_deps d JOIN jobs p ON p.id = d.depends_on
                                                                   WHERE d.job = jobs.id AND p.state IN ('failed', 'upstream_failed'))
                    WHERE state IN ('scheduled', 'queued', 'deferred') AND EXISTS (
                        SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.depends_on
                        WHERE d.job = jobs.id AND p.state IN ('failed', 'upstream_failed'))
                    """, arguments: [now])
                if db.changesCount == 0 { break }
                moved += db.changesCount
            }
            try db.execute(sql: """
                UPDATE jobs SET state = 'queued', updated = ?
                WHERE state = 'scheduled' AND NOT EXISTS (
                    SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.depends_on
                    WHERE d.job = jobs.id AND p.state NOT IN ('success', 'skipped'))
                """, arguments: [now])
            moved += db.changesCount
            try db.execute(sql: """
                UPDATE jobs SET state = 'queued', updated = ?
                WHERE (state IN ('up_for_retry', 'deferred') AND not_before <= ?) OR state = 'up_for_reschedule'
                """, arguments: [now, now])
            moved += db.changesCount
            return moved
        }
    }

    /// Hands the next runnable job to `worker` (state `running`, one more attempt, a lease
    /// until now + leaseSeconds), or nil. Highest priority first, then oldest; jobs over a
    /// per-peer or per-user concurrency limit wait (they stay `queued`).
    public func claim(worker: String, now: Int64, leaseSeconds: Int64, perPeerMax: Int = .max, perUserMax: Int = .max) throws -> Job? {
        try db.write { db in
            var runningByPeer: [String: Int] = [:]
            var runningByOwner: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT peer, owner FROM jobs WHERE state = 'running'") {
                runningByPeer[row["peer"], default: 0] += 1
                runningByOwner[row["owner"], default: 0] += 1
            }
            let candidates = try Row.fetchAll(db, sql: """
                SELECT id, peer, owner FROM jobs WHERE state = 'queued' AND not_before <= ?
                ORDER BY priority DESC, id LIMIT 256
                """, arguments: [now])
            for c in candidates {
                let peer: String = c["peer"]
                let owner: String = c["owner"]
                if !peer.isEmpty && runningByPeer[peer, default: 0] >= perPeerMax { continue }
                if runningByOwner[owner, default: 0] >= perUserMax { continue }
                let id: Int64 = c["id"]
                try db.execute(sql: """
                    UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?, lease_expires = ?, updated = ?
                    WHERE id = ? AND state = 'queued'
                    """, arguments: [worker, now + leaseSeconds, now, id])
                guard db.changesCount == 1 else { continue }
                return try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]).map(SQLiteJobStore.job)
            }
            return nil
        }
    }

    /// Extends a running job's lease; false when the worker no longer holds it (cancelled, or
    /// taken back after it expired): the runner must stop that transfer.
    public func renew(_ id: Int64, worker: String, now: Int64, leaseSeconds: Int64, bytes: Int64, files: Int64) throws -> Bool {
        try db.write { db in
            try db.execute(sql: """
                UPDATE jobs SET lease_expires = ?, bytes = ?, files = ?, updated = ?
                WHERE id = ? AND state = 'running' AND lease_owner = ?
                """, arguments: [now + leaseSeconds, bytes, files, now, id, worker])
            return db.changesCount == 1
        }
    }

    /// Records how an attempt ended. Returns the job's new state, or nil when the worker no
    /// longer held the job (its outcome is then ignored: someone else owns the job now).
    @discardableResult
    public func finish(_ id: Int64, worker: String, outcome: AttemptOutcome, now: Int64, random: Double = Double.random(in: 0..<1)) throws -> JobState? {
        try db.write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ?", arguments: [id, worker]) else {
                return nil
            }
            let job = SQLiteJobStore.job(row)
            var state: JobState
            var error: String? = nil
            var notBefore = job.notBefore
            var bytes = job.bytes
            var files = job.files
            switch outcome {
            case .success(let b, let f):
                state = .success
                bytes = b
                files = f
            case .skipped(let f):
                state = .skipped
                files = f
            case .interrupted:
                state = .upForReschedule
                error = "interrupted; it resumes from its journal"
            case .failure(let message, let resumable):
                error = message
                let pastDeadline = job.request.deadline.map { now >= $0 } ?? false
                if resumable && job.attempts < job.maxAttempts && !pastDeadline {
                    state = .upForRetry
                    notBefore = now + Int64(retry.delay(afterAttempt: job.attempts, random: random).rounded(.up))
                } else {
                    state = .failed
                    if resumable && !pastDeadline { error = message + " (gave up after \(job.attempts) attempts)" }
                    if pastDeadline { error = message + " (deadline passed)" }
                }
            }
            try db.execute(sql: """
                UPDATE jobs SET state = ?, error = ?, not_before = ?, bytes = ?, files = ?, lease_owner = NULL, lease_expires = NULL, updated = ?
                WHERE id = ?
                """, arguments: [state.rawValue, error, notBefore, bytes, files, now, id])
            return state
        }
    }

    /// Cancels a job that has not finished: `failed` with "cancelled"; a running one loses its
    /// lease, so its runner stops at its next renewal. Returns the job after the change.
    public func cancel(_ id: Int64, by user: String, now: Int64) throws -> Job {
        try db.write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]) else { throw JobStoreError("no job \(id)") }
            let job = SQLiteJobStore.job(row)
            guard !job.state.isFinal else { throw JobStoreError("job \(id) already ended \(job.state.rawValue)") }
            try db.execute(sql: "UPDATE jobs SET state = 'failed', error = ?, lease_owner = NULL, lease_expires = NULL, updated = ? WHERE id = ?",
                           arguments: ["cancelled by \(user)", now, id])
            return try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]).map(SQLiteJobStore.job)!
        }
    }

    /// Runs a failed job again (attempts start over); its dependents that failed because of it
    /// go back to waiting for it.
    public func retryJob(_ id: Int64, now: Int64) throws -> Job {
        try db.write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]) else { throw JobStoreError("no job \(id)") }
            let job = SQLiteJobStore.job(row)
            guard job.state == .failed || job.state == .upstreamFailed else {
                throw JobStoreError("job \(id) is \(job.state.rawValue); only failed jobs can be retried")
            }
            let hasDeps = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM job_deps WHERE job = ?", arguments: [id]) ?? 0 > 0
            try db.execute(sql: "UPDATE jobs SET state = ?, attempts = 0, not_before = 0, error = NULL, updated = ? WHERE id = ?",
                           arguments: [(hasDeps ? JobState.scheduled : .queued).rawValue, now, id])
            // Dependents that gave up because of this job wait again (transitively).
            var frontier: [Int64] = [id]
            for _ in 0..<10_000 where !frontier.isEmpty {
                var next: [Int64] = []
                for j in frontier {
                    let ids = try Int64.fetchAll(db, sql: """
                        SELECT d.job FROM job_deps d JOIN jobs c ON c.id = d.job WHERE d.depends_on = ? AND c.state = 'upstream_failed'
                        """, arguments: [j])
                    for c in ids {
                        try db.execute(sql: "UPDATE jobs SET state = 'scheduled', error = NULL, updated = ? WHERE id = ?", arguments: [now, c])
                    }
                    next += ids
                }
                frontier = next
            }
            return try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]).map(SQLiteJobStore.job)!
        }
    }

    static func job(_ r: Row) -> Job {
        let json: String = r["request"]
        let request = (try? JSONDecoder().decode(JobRequest.self, from: Data(json.utf8))) ?? JobRequest(source: "?", destination: "?")
        return Job(id: r["id"], owner: r["owner"], request: request, state: JobState(rawValue: r["state"]) ?? .noStatus,
                   attempts: r["attempts"], maxAttempts: r["max_attempts"], notBefore: r["not_before"],
                   leaseOwner: r["lease_owner"], leaseExpires: r["lease_expires"], error: r["error"],
                   bytes: r["bytes"], files: r["files"], created: r["created"], updated: r["updated"], peer: r["peer"])
    }
}
