import Foundation
import Testing
import GlobalFS
import TestSupport
import Transfer
@testable import Daemon
@testable import Storage

/// Event streams are pushed by the queue's change feed (issue 14, item 3), on both engines:
/// a watcher costs no query while nothing changes, and on PostgreSQL a change made through
/// another store (another daemon sharing the queue) reaches it through LISTEN/NOTIFY.
@Suite("Change feed")
struct ChangeFeedTests {

    /// The events route's body (`DaemonAPI.streamEvents`) for job `id`, run in a task: what it
    /// sends, as it sends it.
    final class Watcher: @unchecked Sendable {
        private let lock = NSLock()
        private var sent: [(String, ContinuousClock.Instant)] = []
        private(set) var task: Task<Void, Never>?

        init(_ api: DaemonAPI, _ id: Int64) {
            // On the daemon's own pool, as the route runs it (`handle` → `onPool`): the full
            // suite's synchronous tests can hold Swift's two cooperative threads for minutes.
            task = Task(executorPreference: BlockingPool.reads) {
                try? await api.streamEvents(of: id, render: { "\($0.state.rawValue) \($0.error ?? "")" }) { text in
                    self.lock.withLock { self.sent.append((text, ContinuousClock.now)) }
                }
            }
        }

        var events: [(String, ContinuousClock.Instant)] { lock.withLock { sent } }

        /// Waits (at most `seconds`) for an event containing `text`; when it came.
        func wait(for text: String, seconds: Double) async -> ContinuousClock.Instant? {
            let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
            while ContinuousClock.now < end {
                if let e = events.first(where: { $0.0.contains(text) }) { return e.1 }
                try? await Task.sleep(for: .milliseconds(10))
            }
            // Once more at the end: a waiter that woke late still sees what came in time.
            return events.first(where: { $0.0.contains(text) })?.1
        }
    }

    static func api(_ store: JobStore) -> DaemonAPI {
        DaemonAPI(store: store, verifier: TokenVerifier(issuers: [:], revocationsPath: nil), center: "here", runner: nil)
    }

    @Test("an idle watcher makes no query for 10 s; a change reaches it at once", arguments: Backend.allCases)
    func idleWatcherDoesNotPoll(_ backend: Backend) async throws {
        try await onPool(.writes) { try await Self.idleWatcher(backend) }
    }

    static func idleWatcher(_ backend: Backend) async throws {
        let counting = CountingDatabase(try openDatabase(try backend.newDatabase()))
        let store = try JobStore(db: counting)
        let id = try store.submit(owner: "u", request: JobRequest(source: "/a", destination: "ferry://b/a"), peer: "b", now: 1)
        let watcher = Watcher(api(store), id)
        defer { watcher.task?.cancel() }
        // The first event (the job as it is) is bounded loosely: a loaded host in the full suite.
        #expect(await watcher.wait(for: "event: progress", seconds: 30) != nil)
        let before = counting.statements
        try await Task.sleep(for: .seconds(10))
        // Nothing changed: not one statement reached the database (the route used to read the
        // job every 5 s, and before that twice a second).
        #expect(counting.statements == before, "the idle watcher made \(counting.statements - before) queries in 10 s")
        #expect(watcher.events.count == 1)
        let changed = ContinuousClock.now
        _ = try store.cancel(id, by: "u", now: 2)
        // Pushed: the watcher was waiting for the feed (with no change it would sleep 30 s).
        // The bound is loose for a loaded two-core host; the count above is the exact check.
        let seen = try #require(await watcher.wait(for: "event: end", seconds: 10))
        #expect(seen - changed < .seconds(3))
        #expect(watcher.events.last?.0.contains("failed cancelled by u") == true)
        await watcher.task?.value
    }

    @Test("a thread waiting on the feed (a runner's worker) wakes at a change, waits out its timeout without one, and returns at once when it already moved")
    func blockingWait() {
        let feed = ChangeFeed()
        let g = feed.generation
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.1) { feed.bump() }
        let t0 = ContinuousClock.now
        let v = feed.waitBlocking(after: g, timeout: 30)
        #expect(v == g + 1 && ContinuousClock.now - t0 < .seconds(10))
        let t1 = ContinuousClock.now
        #expect(feed.waitBlocking(after: v, timeout: 0.3) == v)
        #expect(ContinuousClock.now - t1 >= .milliseconds(250))
        let t2 = ContinuousClock.now
        #expect(feed.waitBlocking(after: g, timeout: 30) == v && ContinuousClock.now - t2 < .seconds(5))
    }

    @Test("an idle runner waits on the feed: about one claim per worker per second, not five; a submitted job is claimed without waiting for the next poll", arguments: Backend.allCases)
    func idleRunner(_ backend: Backend) throws {
        let counting = CountingDatabase(try openDatabase(try backend.newDatabase()))
        let store = try JobStore(db: counting)
        let before = counting.statements
        _ = try store.claim(worker: "probe", now: 1, leaseSeconds: 30)
        let perClaim = counting.statements - before
        _ = try store.promote(now: 1)
        let perPromote = counting.statements - before - perClaim
        let dir = NSTemporaryDirectory() + "ferry-idle-runner-\(getpid())-\(backend.rawValue)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try CertificateAuthority.initialize(name: "test CA", days: 1, certificate: dir + "/ca.crt", key: dir + "/ca.key")
        var settings = RunnerSettings(exports: [Export(name: "data", path: dir, writable: true)], tls: TLSIdentity(certificate: nil, key: nil, ca: dir + "/ca.crt"))
        settings.workers = 2
        let runner = try JobRunner(store: store, settings: settings, workerID: "idle")
        runner.start()
        defer { runner.stop() }
        Thread.sleep(forTimeInterval: 1)
        let idleStart = counting.statements
        Thread.sleep(forTimeInterval: 5)
        let idle = counting.statements - idleStart
        // Two workers for 5 s: one claim each per second (and a promote per second between
        // them); polling every 0.2 s made five each. Loose by half for a loaded host.
        #expect(idle <= 15 * perClaim + 8 * perPromote, "an idle runner made \(idle) statements in 5 s (\(perClaim) per claim, \(perPromote) per promote)")
        // A job (whose source does not exist: it fails at once) leaves the queue well before a
        // worker's next timed look would have come.
        let t0 = ContinuousClock.now
        let id = try store.submit(owner: "u", request: JobRequest(source: "/data/missing", destination: "/data/copy"), peer: "", now: Int64(Date().timeIntervalSince1970))
        var state = JobState.queued
        for _ in 0..<200 where state == .queued {
            Thread.sleep(forTimeInterval: 0.01)
            state = try store.get(id)?.state ?? .queued
        }
        #expect(state != .queued && ContinuousClock.now - t0 < .seconds(2), "still \(state)")
    }

    @Test("PostgreSQL: a change made by a second store (another daemon) on the same database wakes the watcher (LISTEN/NOTIFY)")
    func otherDaemonsChangeReachesWatcher() async throws {
        try await onPool(.writes) { try await Self.otherDaemonsChange() }
    }

    static func otherDaemonsChange() async throws {
        let url = try Backend.postgres.newDatabase()
        let here = try JobStore(database: url)
        let there = try JobStore(database: url)
        for _ in 0..<300 where !here.changes.isListening { try await Task.sleep(for: .milliseconds(100)) }
        #expect(here.changes.isListening)
        let id = try here.submit(owner: "u", request: JobRequest(source: "/a", destination: "ferry://b/a"), peer: "b", now: 1)
        let watcher = Watcher(api(here), id)
        defer { watcher.task?.cancel() }
        #expect(await watcher.wait(for: "queued", seconds: 10) != nil)
        // The other daemon claims the job, then cancels it; `here` wrote nothing since.
        let g = here.generation
        let changed = ContinuousClock.now
        _ = try #require(try there.claim(worker: "there-1", now: 2, leaseSeconds: 60))
        // The exact check: `here` wrote nothing, yet its feed moved (the NOTIFY of `there`).
        #expect(await here.waitForChange(after: g, timeout: .seconds(20)) != g)
        let running = try #require(await watcher.wait(for: "running", seconds: 20), "no event within 20 s of the other store's claim")
        #expect(running - changed < .seconds(3))
        let cancelled = ContinuousClock.now
        _ = try there.cancel(id, by: "u", now: 3)
        let end = try #require(await watcher.wait(for: "event: end", seconds: 20))
        #expect(end - cancelled < .seconds(3))
        await watcher.task?.value
    }

    @Test("the feed: waiters wake on a change, time out without one, leave on cancellation; no-op writes wake nobody", arguments: Backend.allCases)
    func feed(_ backend: Backend) async throws {
        let store = try JobStore(database: try backend.newDatabase())
        let g0 = store.generation
        // A claim that finds nothing and a promote that moves nothing change no row.
        #expect(try store.claim(worker: "w", now: 1, leaseSeconds: 30) == nil)
        #expect(try store.promote(now: 1) == 0)
        #expect(store.generation == g0)
        let t0 = ContinuousClock.now
        #expect(await store.waitForChange(after: g0, timeout: .milliseconds(300)) == g0)
        #expect(ContinuousClock.now - t0 >= .milliseconds(250))
        let waiting = Task { await store.waitForChange(after: g0, timeout: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(100))
        try store.submit(owner: "u", request: JobRequest(source: "/a", destination: "/b"), peer: "", now: 1)
        #expect(await waiting.value != g0)
        let g1 = store.generation
        // Cancelled, the waiter leaves long before its timeout. (The bound is loose: on a loaded
        // two-core CI machine, tests that block the cooperative pool with child processes
        // delayed this waiter's resumption by 16 s once and by 70 s in a later run; a waiter
        // that ignored its cancellation would take the whole hour.)
        let cancelled = Task { await store.waitForChange(after: g1, timeout: .seconds(3600)) }
        try await Task.sleep(for: .milliseconds(100))
        let t1 = ContinuousClock.now
        cancelled.cancel()
        #expect(await cancelled.value == g1)
        #expect(ContinuousClock.now - t1 < .seconds(900))
    }
}

extension ChangeFeedTests {
    @Test("async reads beside synchronous ones on a small blocking pool: no deadlock (few readers or connections, many tasks)", arguments: Backend.allCases)
    func asyncAndSyncReadsTogether(_ backend: Backend) async throws {
        let url = try backend.newDatabase()
        // PostgreSQL: 4 connections (one is the LISTEN's); SQLite: GRDB's 8 readers.
        let store = try JobStore(db: backend == .postgres ? try PostgreSQLDatabase(url: url, size: 4) : try openDatabase(url))
        let id = try store.submit(owner: "u", request: JobRequest(source: "/a", destination: "/b"), peer: "", now: 1)
        // Two threads, as busy as the API's pool gets: while they block in synchronous reads,
        // an async read must never hold a reader or a connection waiting for one of them.
        let pool = BlockingPool(threads: 2, name: "ferry-test-pool")
        let finished = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<40 {
                group.addTask(executorPreference: pool) {
                    var n = 0
                    for _ in 0..<20 {
                        if try await store.fetchJob(id) != nil { n += 1 }
                        if try store.get(id) != nil { n += 1 }
                    }
                    return n
                }
            }
            group.addTask {
                try await Task.sleep(for: .seconds(120))
                return -1
            }
            var total = 0
            for _ in 0..<40 {
                let n = try await group.next()!
                if n < 0 { break }
                total += n
            }
            group.cancelAll()
            return total
        }
        #expect(finished == 40 * 40, "the reads did not finish within 120 s: a deadlock")
    }
}

/// A database that counts the statements and reads that reach it: how the tests see that a
/// watcher does not poll.
final class CountingDatabase: SQLDatabase, @unchecked Sendable {
    let base: any SQLDatabase
    private let lock = NSLock()
    private var n = 0
    init(_ base: any SQLDatabase) { self.base = base }
    var statements: Int { lock.withLock { n } }
    private func count(_ k: Int = 1) { lock.withLock { n += k } }

    var dialect: SQLDialect { base.dialect }
    var location: String { base.location }

    final class Session: SQLSession {
        let base: any SQLSession
        let db: CountingDatabase
        init(_ base: any SQLSession, _ db: CountingDatabase) { self.base = base; self.db = db }
        var dialect: SQLDialect { base.dialect }
        func query(_ sql: String, _ args: [any SQLArgument]) throws -> [SQLRow] { db.count(); return try base.query(sql, args) }
        func execute(_ sql: String, _ args: [any SQLArgument]) throws -> Int { db.count(); return try base.execute(sql, args) }
    }

    func write<T>(_ body: (any SQLSession) throws -> T) throws -> T { try base.write { s in try body(Session(s, self)) } }
    func read<T>(_ body: (any SQLSession) throws -> T) throws -> T { try base.read { s in try body(Session(s, self)) } }
    func fetch(_ sql: String, _ args: [SQLValue]) async throws -> [SQLRow] { count(); return try await base.fetch(sql, args) }
    func listen(_ channel: String, listening: @escaping @Sendable () -> Void, notify: @escaping @Sendable (String) -> Void) -> Task<Void, Never>? {
        base.listen(channel, listening: listening, notify: notify)
    }
}

extension ChangeFeedTests {
    @Test("PostgreSQL reads inside sharingReads: one connection of each thread's own, kept across requests; a connection the server ends is replaced and the read still answers")
    func threadOwnedConnections() async throws {
        let db = try PostgreSQLDatabase(url: try Backend.postgres.newDatabase(), size: 4)
        func backend() throws -> Int64 { try db.read { s in try s.one("SELECT pg_backend_pid() AS pid")!.int("pid") } }
        let pool = BlockingPool(threads: 2, name: "ferry-test-own")
        // Each task's reads, on one of two threads: per thread one backend, the same every time.
        let seen = try await withThrowingTaskGroup(of: [Int64].self) { group in
            for _ in 0..<8 {
                group.addTask(executorPreference: pool) { try await db.sharingReads { [try backend(), try backend(), try backend()] } }
            }
            var all: [[Int64]] = []
            for try await r in group { all.append(r) }
            return all
        }
        for r in seen { #expect(Set(r).count == 1, "one request's reads on one connection: \(r)") }
        let owners = Set(seen.flatMap { $0 })
        #expect(owners.count <= 2, "at most one connection per thread: \(owners)")
        // Outside sharingReads, a read leases from the pool: not one of the threads' own.
        let leased = try backend()
        #expect(!owners.contains(leased))

        // The server ends a thread's connection (as a restart or an operator would).
        let victim = try #require(owners.first)
        let ended = try db.read { s in try s.one("SELECT pg_terminate_backend(CAST(? AS integer)) AS ok", victim)!.int("ok") }
        #expect(ended == 1)
        let after = try await withThrowingTaskGroup(of: [Int64].self) { group in
            for _ in 0..<8 {
                group.addTask(executorPreference: pool) { try await db.sharingReads { [try backend(), try backend()] } }
            }
            var all: [[Int64]] = []
            for try await r in group { all.append(r) }
            return all
        }
        #expect(after.count == 8, "every read answered after its connection was ended")
        #expect(!after.flatMap { $0 }.contains(victim), "the ended connection is not used again")
    }
}

extension ChangeFeedTests {
    @Test("queryLater: its rows come after the next statement's (one round trip on PostgreSQL); a failing one fails the read with its own message", arguments: Backend.allCases)
    func queryLater(_ backend: Backend) throws {
        let db = try openDatabase(try backend.newDatabase())
        try db.write { s in
            try s.execute("CREATE TABLE later_t (k INTEGER)")
            try s.execute("INSERT INTO later_t VALUES (1), (2), (3)")
        }
        let (n, ks) = try db.read { s -> (Int64, [Int64]) in
            let later = try s.queryLater("SELECT k FROM later_t WHERE k > ? ORDER BY k", [1])
            let n = try s.one("SELECT COUNT(*) AS n FROM later_t")!.int("n")
            return (n, try later().map { $0.int("k") })
        }
        #expect(n == 3 && ks == [2, 3])
        #expect {
            try db.read { s in
                let later = try s.queryLater("SELECT k FROM no_such_table", [])
                _ = try s.one("SELECT 1 AS one")
                _ = try later()
            }
        } throws: { "\($0)".contains("no_such_table") }
        // The connection answers again afterwards.
        #expect(try db.read { s in try s.one("SELECT COUNT(*) AS n FROM later_t")!.int("n") } == 3)
    }
}

extension ChangeFeedTests {
    @Test("PostgreSQL reads on a thread's own connection are prepared once and run again by name; a binding the server's inferred type refuses runs unprepared")
    func preparedOnOwnConnections() async throws {
        let db = try PostgreSQLDatabase(url: try Backend.postgres.newDatabase(), size: 2)
        let pool = BlockingPool(threads: 1, name: "ferry-test-prep")
        let probe = "SELECT pg_backend_pid() AS pid, CAST(? AS bigint) + 1 AS n"
        let (answers, prepared, narrow) = try await Task(executorPreference: pool) {
            try await db.sharingReads { () -> ([Int64], [String], [Int64]) in
                var answers: [Int64] = []
                for i in 0..<5 { answers.append(try db.read { s in try s.one(probe, Int64(i))!.int("n") }) }
                let prepared = try db.read { s in try s.query("SELECT statement FROM pg_prepared_statements", []).map { $0.text("statement") } }
                // `integer` inferred for the parameter: a 64-bit binding is refused (22P03), so
                // the statement is run unprepared, every time, with the right answer.
                var narrow: [Int64] = []
                for i in 0..<3 { narrow.append(try db.read { s in try s.one("SELECT CAST(? AS integer) * 2 AS n", Int64(i + 20))!.int("n") }) }
                return (answers, prepared, narrow)
            }
        }.value
        #expect(answers == [1, 2, 3, 4, 5])
        #expect(prepared.filter { $0.contains("pg_backend_pid()") }.count == 1, "one statement, prepared once: \(prepared)")
        #expect(narrow == [40, 42, 44])
        // Outside sharingReads (a leased connection): nothing prepared there.
        #expect(try db.read { s in try s.one(probe, Int64(9))!.int("n") } == 10)
    }
}

extension ChangeFeedTests {
    @Test("PostgreSQL placeholders: ? becomes $1, $2, ... (two digits past nine), not inside quotes; names in any script stay as they are")
    func numberedPlaceholders() {
        let sql = "SELECT ? AS a, '?' AS q, 'it''s ?' AS r, ? , ?,?,?,?,?,?,?,?, ? AS ü FROM t WHERE name = 'ünï?'"
        #expect(PostgreSQLDatabase.Session.numbered(sql)
                == "SELECT $1 AS a, '?' AS q, 'it''s ?' AS r, $2 , $3,$4,$5,$6,$7,$8,$9,$10, $11 AS ü FROM t WHERE name = 'ünï?'")
        #expect(PostgreSQLDatabase.Session.numbered("SELECT 1") == "SELECT 1")
    }
}

extension ChangeFeedTests {
    @Test("PostgreSQL transactions inside sharingConnection: on the thread's own connection, prepared and pipelined; a refused binding (22P03) runs the transaction again unprepared, once; a failed one leaves the connection usable; a nested one and one after the backend was ended run on the pool")
    func transactionsOnOwnConnections() async throws {
        let url = try Backend.postgres.newDatabase()
        let db = try PostgreSQLDatabase(url: url, size: 3)
        try db.write { s in
            try s.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT NOT NULL)")
            try s.execute("CREATE TABLE narrow (k INTEGER NOT NULL)")
        }
        let pool = BlockingPool(threads: 1, name: "ferry-test-txn")
        let pid = "SELECT pg_backend_pid() AS pid"
        let outcome = try await Task(executorPreference: pool) {
            try await db.sharingConnection { () -> [String: [Int64]] in
                var out: [String: [Int64]] = [:]
                let readPid = try db.read { s in try s.one(pid)!.int("pid") }
                // Five transactions: each a sent INSERT and a count read after the COMMIT.
                for i in 1...5 {
                    let (writePid, count) = try db.write { s -> (Int64, () throws -> [SQLRow]) in
                        try s.send("INSERT INTO t (id, v) VALUES (?, ?)", Int64(i), "v\(i)")
                        return (try s.one(pid)!.int("pid"), try s.queryLater("SELECT count(*) AS n FROM t"))
                    }
                    out["pids", default: []].append(writePid - readPid)
                    out["counts", default: []].append(try count().first!.int("n"))
                }
                out["prepared"] = [try db.read { s in try s.one("SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE 'INSERT INTO t %'")!.int("n") }]
                // `integer` inferred for the column: the 64-bit binding is refused inside the
                // transaction, which runs again unprepared; its rows are written once.
                var runs: Int64 = 0
                try db.write { s in
                    runs += 1
                    try s.send("INSERT INTO narrow (k) VALUES (?)", Int64(7))
                    try s.send("INSERT INTO t (id, v) VALUES (?, ?)", Int64(100), "after narrow")
                }
                out["narrow"] = [runs, try db.read { s in try s.one("SELECT count(*) AS n FROM narrow")!.int("n") },
                                 try db.read { s in try s.one("SELECT count(*) AS n FROM t WHERE id = 100")!.int("n") }]
                // A duplicate key, sent and not waited for: the COMMIT's wait reports it, nothing
                // of the transaction stays, and the connection serves the next one.
                var failure = ""
                do {
                    try db.write { s in
                        try s.send("INSERT INTO t (id, v) VALUES (?, ?)", Int64(200), "kept?")
                        try s.send("INSERT INTO t (id, v) VALUES (?, ?)", Int64(1), "duplicate")
                    }
                } catch { failure = "\(error)" }
                out["duplicate"] = [failure.contains("duplicate key") ? 1 : 0, try db.read { s in try s.one("SELECT count(*) AS n FROM t WHERE id = 200")!.int("n") },
                                    try db.write { s in try s.one(pid)!.int("pid") } - readPid]
                // Nested: the inner transaction leases a connection of its own and commits on its
                // own; the outer one's failure does not undo it.
                var inner: Int64 = 0
                _ = try? db.write { s -> Void in
                    try s.send("INSERT INTO t (id, v) VALUES (?, ?)", Int64(300), "outer")
                    inner = try db.write { s2 in
                        try s2.send("INSERT INTO t (id, v) VALUES (?, ?)", Int64(301), "inner")
                        return try s2.one(pid)!.int("pid")
                    }
                    throw SQLStoreError("the outer one fails")
                }
                out["nested"] = [inner == readPid ? 0 : 1, try db.read { s in try s.query("SELECT id FROM t WHERE id IN (300, 301) ORDER BY id", []).map { $0.int("id") } }.first ?? 0]
                // A table changed under a prepared `SELECT *` (another daemon's migration): the
                // read answers with the new column, and so does the statement prepared again.
                let admin = try PostgreSQLDatabase(url: url, size: 1)
                let row = "SELECT * FROM t WHERE id = ?"
                _ = try db.read { s in try s.one(row, Int64(1)) }
                _ = try admin.write { s in try s.execute("ALTER TABLE t ADD COLUMN w TEXT NOT NULL DEFAULT 'new'") }
                out["migrated"] = try (0..<2).map { _ in try db.read { s in try s.one(row, Int64(1))!.optionalText("w") == "new" ? 1 : 0 } }
                    + [try db.write { s in try s.one(row, Int64(2))!.optionalText("w") == "new" ? 1 : 0 }]
                // The backend ended by an operator: the next transaction either finds the
                // connection closed (and opens another) or fails on it before its COMMIT (and
                // runs again on the pool); either way it is written once.
                _ = try admin.read { s in try s.query("SELECT pg_terminate_backend(CAST(? AS integer)) AS ok", [readPid]) }
                var attempts: Int64 = 0
                try db.write { s in
                    attempts += 1
                    try s.send("INSERT INTO t (id, v) VALUES (?, ?)", Int64(400), "after the end")
                }
                out["ended"] = [attempts, try db.read { s in try s.one("SELECT count(*) AS n FROM t WHERE id = 400")!.int("n") }]
                // Ended in the middle of a transaction (idle in it): the statements written after
                // the connection closed are never answered by postgres-nio; the transaction
                // must not wait for them for ever, and as its COMMIT could not be sent, it runs
                // again on the pool, written once.
                var midRuns: Int64 = 0
                let started = Date()
                try db.write { s in
                    midRuns += 1
                    try s.send("INSERT INTO t (id, v) VALUES (?, ?)", Int64(500), "ended midway")
                    if midRuns == 1, let session = s as? PostgreSQLDatabase.Session {
                        let victim = try s.one(pid)!.int("pid")
                        _ = try admin.read { a in try a.query("SELECT pg_terminate_backend(CAST(? AS integer)) AS ok", [victim]) }
                        for _ in 0..<100 where !session.conn.isClosed { Thread.sleep(forTimeInterval: 0.1) }
                    }
                    try s.send("INSERT INTO t (id, v) VALUES (?, ?)", Int64(501), "after the end")
                }
                out["midway"] = [midRuns, try db.read { s in try s.query("SELECT id FROM t WHERE id IN (500, 501) ORDER BY id", []).map { $0.int("id") } }.reduce(0, +),
                                 Date().timeIntervalSince(started) < 15 ? 1 : 0]
                return out
            }
        }.value
        #expect(outcome["pids"] == [0, 0, 0, 0, 0], "every transaction on the thread's own connection")
        #expect(outcome["counts"] == [1, 2, 3, 4, 5])
        #expect(outcome["prepared"] == [1], "the INSERT prepared once on that connection")
        #expect(outcome["narrow"] == [2, 1, 1], "two runs of the body, one row each")
        #expect(outcome["duplicate"] == [1, 0, 0])
        #expect(outcome["nested"] == [1, 301])
        #expect(outcome["midway"] == [2, 1001, 1], "run twice, both rows once, within seconds: \(outcome["midway"] ?? [])")
        #expect(outcome["migrated"] == [1, 1, 1])
        // Run once when the connection was seen closed before the transaction began (a new
        // own connection), twice when the FATAL came as its first answer (then on the pool).
        #expect(outcome["ended"] == [1, 1] || outcome["ended"] == [2, 1], "\(outcome["ended"] ?? [])")
    }
}

extension ChangeFeedTests {
    @Test("PostgreSQL through its Unix socket (postgres://USER@/DB?host=/DIR): the queue works there, its own connections too, LISTEN/NOTIFY reaches a TCP store; bad socket URLs are refused with the reason")
    func unixSocket() async throws {
        let tcp = try Backend.postgres.newDatabase()
        // Where the test server's socket is, from the server itself.
        let probe = try PostgreSQLDatabase(url: tcp, size: 2)
        let (dirs, port) = try probe.read { s in
            (try s.one("SELECT current_setting('unix_socket_directories') AS d")!.text("d"), try s.one("SELECT current_setting('port') AS p")!.text("p"))
        }
        let dir = try #require(dirs.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.first { $0.hasPrefix("/") })
        let u = try #require(URLComponents(string: tcp))
        let url = "postgres://\(u.user!)@:\(port)/\(u.path.dropFirst())?host=\(dir)"
        let server = try PostgreSQLDatabase.server(url)
        #expect(server.socket == dir + "/.s.PGSQL.\(port)")

        // A job submitted through the socket is seen through TCP and the other way round; a
        // watcher of the TCP store is woken by the socket store's change (NOTIFY crosses).
        let viaSocket = try JobStore(database: url)
        let viaTCP = try JobStore(database: tcp)
        #expect(viaSocket.location.contains("?host=\(dir)"))
        let feed = viaTCP.changes
        for _ in 0..<300 where !feed.isListening || !viaSocket.changes.isListening { try await Task.sleep(for: .milliseconds(100)) }
        #expect(feed.isListening && viaSocket.changes.isListening)
        let before = feed.generation
        let id = try viaSocket.submit(owner: "alice", request: JobRequest(source: "/data/a", destination: "ferry://wuxi/b"), peer: "wuxi", now: 1)
        #expect(try viaTCP.get(id)?.owner == "alice")
        #expect(await feed.wait(after: before, timeout: .seconds(10)) != before, "the TCP store's feed woke for the socket store's change")
        let id2 = try viaTCP.submit(owner: "bob", request: JobRequest(source: "/data/c", destination: "ferry://wuxi/d"), peer: "wuxi", now: 2)
        #expect(try viaSocket.get(id2)?.owner == "bob")
        // The API's own connections (prepared statements) over the socket.
        let db = try PostgreSQLDatabase(url: url, size: 2)
        let pool = ThreadPoolExecutor(threads: 1, name: "ferry-test-sock")
        let n = try await Task(executorPreference: pool) {
            try await db.sharingReads { try db.read { s in try s.one("SELECT COUNT(*) AS n FROM jobs WHERE owner IN (?, ?)", "alice", "bob")!.int("n") } }
        }.value
        #expect(n == 2)

        // Refusals, each with its reason, before any connection is tried.
        let refusals: [(String, String)] = [
            ("postgres://ferry@/db?host=relative/dir", "absolute path"),
            ("postgres://ferry@/db?host=/\(String(repeating: "d", count: 100))", "must fit in 107 bytes"),
            ("postgres://ferry@db.example/db?host=/tmp", "both given"),
            ("postgres://ferry@/db?host=/tmp&sslmode=require", "'sslmode' is not understood"),
            ("postgres://ferry@/db?host=/tmp&host=/var", "not understood"),
            ("postgres://@/db?host=/tmp", "postgres://USER"),
            ("postgres://ferry@/db", "postgres://USER"),
        ]
        for (bad, why) in refusals {
            #expect { try PostgreSQLDatabase.server(bad) } throws: { "\($0)".contains(why) }
        }
        // A directory with no server's socket in it: the connection's own reason.
        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("ferry-nosock-\(getpid())").path
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        #expect { try PostgreSQLDatabase(url: "postgres://ferry@/db?host=\(empty)", size: 2) } throws: {
            "\($0)".contains("cannot connect to postgres://ferry@/db?host=\(empty)")
        }
    }
}
