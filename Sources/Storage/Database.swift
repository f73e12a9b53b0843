import Foundation
import GRDB
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PostgresNIO

/// The storage behind the job queue and the catalog: one small SQL interface with two engines.
/// Embedded SQLite (GRDB) is the default, one daemon per file; PostgreSQL (postgres-nio) when
/// the configuration names a `postgres://` URL, and then several daemons of one center share
/// it (the job queue claims rows with `FOR UPDATE SKIP LOCKED`).
///
/// Transactions (`read`, `write`) are synchronous: their callers are the runner's worker
/// threads and the API's blocking pool, and the queue's and the catalog's transactions are
/// written as straight-line code. Nothing they wait for runs on Swift's cooperative pool (NIO's
/// threads complete PostgreSQL's futures; the pool's leases run on `PostgresExecutor`), so a
/// blocked caller cannot starve the thread that would wake it. Single-statement reads also
/// have an async way in (`fetch`) that holds no thread while it waits, and PostgreSQL adds
/// LISTEN/NOTIFY (`listen`) for change feeds across daemons (issue 14, item 3).
public enum SQLDialect: Sendable { case sqlite, postgres }

/// A value bound to a statement or read from a row. Integers are 64-bit in both engines
/// (the schemas use BIGINT in PostgreSQL).
public enum SQLValue: Sendable, Equatable {
    case int(Int64), real(Double), text(String), null
}

/// Swift values usable as statement arguments.
public protocol SQLArgument { var sqlValue: SQLValue { get } }
extension Int64: SQLArgument { public var sqlValue: SQLValue { .int(self) } }
extension Int: SQLArgument { public var sqlValue: SQLValue { .int(Int64(self)) } }
extension UInt64: SQLArgument { public var sqlValue: SQLValue { .int(Int64(bitPattern: self)) } }
extension Double: SQLArgument { public var sqlValue: SQLValue { .real(self) } }
extension String: SQLArgument { public var sqlValue: SQLValue { .text(self) } }
extension Bool: SQLArgument { public var sqlValue: SQLValue { .int(self ? 1 : 0) } }
extension SQLValue: SQLArgument { public var sqlValue: SQLValue { self } }
extension Optional: SQLArgument where Wrapped: SQLArgument { public var sqlValue: SQLValue { self?.sqlValue ?? .null } }

/// One result row, by column name.
public struct SQLRow: Sendable {
    public var values: [String: SQLValue]

    public func int(_ c: String) -> Int64 { optionalInt(c) ?? 0 }
    public func optionalInt(_ c: String) -> Int64? {
        switch values[c] {
        case .int(let v): return v
        case .real(let d): return Int64(d)
        case .text(let s): return Int64(s)
        default: return nil
        }
    }
    public func text(_ c: String) -> String { optionalText(c) ?? "" }
    public func optionalText(_ c: String) -> String? {
        switch values[c] {
        case .text(let s): return s
        case .int(let v): return String(v)
        case .real(let d): return String(d)
        default: return nil
        }
    }
}

/// Statements inside one transaction (`write`) or one read. SQL uses `?` placeholders in
/// both engines (rewritten to `$n` for PostgreSQL).
public protocol SQLSession {
    var dialect: SQLDialect { get }
    func query(_ sql: String, _ args: [any SQLArgument]) throws -> [SQLRow]
    /// Runs a statement; returns the number of rows it changed.
    @discardableResult func execute(_ sql: String, _ args: [any SQLArgument]) throws -> Int
    /// Sends a statement whose answer nobody needs now (a NOTIFY): PostgreSQL queues it on the
    /// connection and the next statement's wait (at the latest COMMIT's) also reports its error,
    /// which spares the calling thread one wake-up per statement. Elsewhere `execute`.
    func send(_ sql: String, _ args: [any SQLArgument]) throws
    /// A query whose rows are needed after the next statement's: PostgreSQL sends it now and
    /// the connection answers both in one round trip (the returned closure waits for nothing
    /// more once the next statement was waited for). Elsewhere it runs now. Call the closure
    /// before the session ends, or, in a `write`, after it returned: COMMIT's wait was the
    /// last, so the rows are there (a transaction's results read after its COMMIT cost no wait
    /// of their own).
    func queryLater(_ sql: String, _ args: [any SQLArgument]) throws -> () throws -> [SQLRow]
}

extension SQLSession {
    public func send(_ sql: String, _ args: [any SQLArgument]) throws { try execute(sql, args) }
    public func queryLater(_ sql: String, _ args: [any SQLArgument]) throws -> () throws -> [SQLRow] {
        let rows = try query(sql, args)
        return { rows }
    }
    public func query(_ sql: String, _ args: any SQLArgument...) throws -> [SQLRow] { try query(sql, args) }
    public func send(_ sql: String, _ args: any SQLArgument...) throws { try send(sql, args) }
    public func queryLater(_ sql: String, _ args: any SQLArgument...) throws -> () throws -> [SQLRow] { try queryLater(sql, args) }
    @discardableResult public func execute(_ sql: String, _ args: any SQLArgument...) throws -> Int { try execute(sql, args) }
    public func one(_ sql: String, _ args: any SQLArgument...) throws -> SQLRow? { try query(sql, args).first }
}

public protocol SQLDatabase: AnyObject, Sendable {
    var dialect: SQLDialect { get }
    /// Where it is, without a password: for messages and the health endpoint.
    var location: String { get }
    /// One transaction: committed when `body` returns, rolled back when it throws.
    func write<T>(_ body: (any SQLSession) throws -> T) throws -> T
    /// Reads outside a write transaction.
    func read<T>(_ body: (any SQLSession) throws -> T) throws -> T
    /// One statement outside any transaction, awaited: the calling task's thread is free while
    /// the database works (SQLite: on GRDB's reader queue; PostgreSQL: a lease from the pool and
    /// the round trip are suspensions). For the API's reads, which should hold no thread.
    func fetch(_ sql: String, _ args: [SQLValue]) async throws -> [SQLRow]
    /// Notifications sent on `channel` by any connection to this database, this process's or
    /// another daemon's (PostgreSQL LISTEN/NOTIFY); nil where there are none (SQLite: one
    /// process owns the file, and changes are known in-process). See PostgreSQLDatabase.listen.
    func listen(_ channel: String, listening: @escaping @Sendable () -> Void, notify: @escaping @Sendable (String) -> Void) -> Task<Void, Never>?
    /// Runs `body` with the database's reads sharing one connection: every `read` made by the
    /// calling task inside it uses that connection instead of leasing one each (PostgreSQL:
    /// a lease is a handoff to the pool's task and back; an API read made four of them). For
    /// short, read-only work on a blocking thread (the API's bounded reads); writes still lease
    /// their own. SQLite: `body` as is.
    func sharingReads<T>(_ body: () async throws -> T) async throws -> T
    /// `sharingReads`, and the transactions (`write`) made inside it too: on the thread's own
    /// connection, with its prepared statements. For the API's bounded writes (a hook's ask or
    /// teardown, a submission), which run on a few permanent threads as the bounded reads do.
    func sharingConnection<T>(_ body: () async throws -> T) async throws -> T
}

extension SQLDatabase {
    /// The synchronous read, for engines without an async path of their own (it blocks).
    public func fetch(_ sql: String, _ args: [SQLValue]) async throws -> [SQLRow] {
        try read { s in try s.query(sql, args) }
    }

    public func listen(_ channel: String, listening: @escaping @Sendable () -> Void, notify: @escaping @Sendable (String) -> Void) -> Task<Void, Never>? {
        nil
    }

    public func sharingReads<T>(_ body: () async throws -> T) async throws -> T { try await body() }
    public func sharingConnection<T>(_ body: () async throws -> T) async throws -> T { try await body() }
}

public struct SQLStoreError: Error, CustomStringConvertible, Sendable {
    public var description: String
    /// The database was busy (a lock held longer than the busy timeout, no free connection):
    /// asking again later can succeed (the API answers 503).
    public var busy = false
    /// The connection the statement ran on is gone or going (the server closed it, or ended
    /// its backend: SQLSTATE classes 08 and 57): a read can be asked again on another one.
    public var connectionEnded = false
    /// The server refused a prepared statement's bindings (PostgreSQL 22P03: it inferred a
    /// parameter's type narrower than the value sent; the statement runs unprepared from now
    /// on) or its plan (0A000: a table changed under it; prepared again on its next use), and
    /// a transaction it broke can run again.
    public var preparedRefused = false
    /// A statement of a transaction failed before its COMMIT: the transaction committed
    /// nothing, whatever happened to the connection after.
    public var uncommitted = false
    public init(_ d: String, busy: Bool = false, connectionEnded: Bool = false) {
        description = d; self.busy = busy; self.connectionEnded = connectionEnded
    }
}

/// Opens the database a configuration names: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`
/// (or `postgresql://`), else a SQLite file path (":memory:" for a private one).
public func openDatabase(_ spec: String) throws -> any SQLDatabase {
    if spec.hasPrefix("postgres://") || spec.hasPrefix("postgresql://") {
        return try PostgreSQLDatabase(url: spec)
    }
    return try SQLiteDatabase(path: spec)
}

// MARK: - SQLite

public final class SQLiteDatabase: SQLDatabase, @unchecked Sendable {
    public let dialect = SQLDialect.sqlite
    public let location: String
    /// A file's database is a `DatabasePool` (WAL): reads run on their own connections beside a
    /// write transaction (a registration's, the runner's), so an API read never waits behind
    /// a long write. ":memory:" has one connection (`DatabaseQueue`).
    private let queue: any DatabaseWriter
    /// Connections for the synchronous reads of a file database (nil for ":memory:").
    private let readers: Readers?

    /// Read-only connections of a file database, one per reader at a time, kept for reuse.
    ///
    /// Not GRDB's `DatabasePool.read`: its reader pool takes a dispatch semaphore inside a
    /// concurrent queue's `sync` and gives each reader back with a barrier block run on a
    /// dispatch worker thread, so every read cost a thread handoff and, with the API's 16 read
    /// threads, waits on that queue (a third of a catalog read's CPU was dispatch and futex
    /// under `bench/api.sh`). Here a reader is popped from a stack under a lock and used on the
    /// calling thread (its own serial queue is never contended, so `sync` runs inline). The
    /// database's WAL lets any number of them read beside the writer; a reader beyond the
    /// stack's size is opened for the call and closed after it.
    final class Readers: @unchecked Sendable {
        let path: String
        let configuration: Configuration
        private let lock = NSLock()
        private var idle: [DatabaseQueue] = []
        static let kept = 32

        init(path: String, configuration: Configuration) {
            self.path = path
            self.configuration = configuration
        }

        /// `body` in one deferred (read) transaction on a reader: one snapshot for all of it.
        func read<T>(_ body: (GRDB.Database) throws -> T) throws -> T {
            lock.lock()
            let kept = idle.popLast()
            lock.unlock()
            let reader = try kept ?? DatabaseQueue(path: path, configuration: configuration)
            defer {
                lock.lock()
                if idle.count < Readers.kept { idle.append(reader) }
                lock.unlock()
            }
            return try reader.inDatabase { db in
                var result: T?
                try db.inTransaction(.deferred) {
                    result = try body(db)
                    return .commit
                }
                return result!
            }
        }
    }

    public init(path: String) throws {
        var config = Configuration()
        config.busyMode = .timeout(10)
        config.maximumReaderCount = 8
        location = path
        var readOnly = config
        readOnly.readonly = true
        readers = path == ":memory:" ? nil : Readers(path: path, configuration: readOnly)
        do {
            if path == ":memory:" {
                queue = try DatabaseQueue(configuration: config)
            } else {
                config.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = NORMAL") }
                queue = try DatabasePool(path: path, configuration: config)
            }
            try queue.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL") }
        } catch {
            throw SQLStoreError("cannot open the database \(path): \(error)")
        }
    }

    public func write<T>(_ body: (any SQLSession) throws -> T) throws -> T {
        do { return try queue.write { db in try body(Session(db: db)) } } catch let e as DatabaseError where SQLiteDatabase.isBusy(e) {
            throw SQLStoreError("the database \(location) is busy (locked for more than 10 s): \(e.message ?? "")", busy: true)
        }
    }

    public func read<T>(_ body: (any SQLSession) throws -> T) throws -> T {
        do {
            if let readers { return try readers.read { db in try body(Session(db: db)) } }
            return try queue.read { db in try body(Session(db: db)) }
        } catch let e as DatabaseError where SQLiteDatabase.isBusy(e) {
            throw SQLStoreError("the database \(location) is busy (locked for more than 10 s): \(e.message ?? "")", busy: true)
        }
    }

    /// The statement runs on one of the pool's reader connections (GRDB's `asyncRead`: its
    /// dispatch queues) while the caller is suspended; the caller resumes after the reader is
    /// back in the pool.
    ///
    /// Not GRDB's `async` read: that one holds its reader while it resumes on the calling
    /// task's executor, and the API's tasks run on the blocking pool, whose threads may all be
    /// waiting in synchronous reads for a reader: a deadlock (seen under `bench/stall.sh`: 16
    /// threads waiting for 8 readers that event streams held while waiting for a thread).
    public func fetch(_ sql: String, _ args: [SQLValue]) async throws -> [SQLRow] {
        let location = self.location
        return try await withCheckedThrowingContinuation { (k: CheckedContinuation<[SQLRow], any Error>) in
            queue.asyncRead { db in
                k.resume(with: Result {
                    do { return try Session(db: try db.get()).query(sql, args) } catch let e as DatabaseError where SQLiteDatabase.isBusy(e) {
                        throw SQLStoreError("the database \(location) is busy (locked for more than 10 s): \(e.message ?? "")", busy: true)
                    }
                })
            }
        }
    }

    static func isBusy(_ e: DatabaseError) -> Bool {
        e.resultCode == .SQLITE_BUSY || e.resultCode == .SQLITE_LOCKED
    }

    package struct Session: SQLSession {
        package let db: GRDB.Database
        package var dialect: SQLDialect { .sqlite }

        package func query(_ sql: String, _ args: [any SQLArgument]) throws -> [SQLRow] {
            let statement = try db.cachedStatement(sql: sql)
            return try Row.fetchAll(statement, arguments: Session.arguments(args)).map { row in
                var values: [String: SQLValue] = [:]
                for (name, v) in row {
                    switch v.storage {
                    case .int64(let i): values[name] = .int(i)
                    case .double(let d): values[name] = .real(d)
                    case .string(let s): values[name] = .text(s)
                    case .blob(let b): values[name] = .text(String(decoding: b, as: UTF8.self))
                    case .null: values[name] = .null
                    }
                }
                return SQLRow(values: values)
            }
        }

        package func execute(_ sql: String, _ args: [any SQLArgument]) throws -> Int {
            if args.isEmpty && sql.contains(";") {
                try db.execute(sql: sql)  // a script (schema)
            } else {
                try db.cachedStatement(sql: sql).execute(arguments: Session.arguments(args))
            }
            return db.changesCount
        }

        static func arguments(_ args: [any SQLArgument]) -> StatementArguments {
            StatementArguments(args.map { a -> (any DatabaseValueConvertible)? in
                switch a.sqlValue {
                case .int(let i): return i
                case .real(let d): return d
                case .text(let s): return s
                case .null: return nil
                }
            })
        }
    }
}

// MARK: - PostgreSQL

/// The threads on which postgres-nio's pool runs (`PostgresClient.run`, its connection
/// leases and the LISTEN loops): two of their own, never Swift's cooperative pool.
///
/// Why not the cooperative pool: the synchronous interface (`read`, `write`) is still called
/// from threads that block (the runner's workers, the API's blocking pool, and test bodies,
/// which Swift Testing runs on the cooperative pool). A thread blocked waiting for a lease must
/// never be one that the pool needs to hand the lease out: on a two-core host the cooperative
/// pool has two threads, and two blocked waiters would deadlock the process. Work here is
/// tiny (state-machine steps between suspensions), so two threads are plenty.
enum PostgresExecutor {
    static let shared = ThreadPoolExecutor(threads: 2, name: "ferry-pg")
}

/// A fixed set of threads of its own that runs the jobs of tasks preferring it, in the order
/// they come (a FIFO under one lock). For work that blocks, or that must never wait for a
/// thread that blocks: PostgreSQL's leases (`PostgresExecutor`) and the daemon's API handlers
/// (`BlockingPool` in the daemon, which says why).
public final class ThreadPoolExecutor: TaskExecutor, @unchecked Sendable {
    private let cond = NSCondition()
    private var jobs: [UnownedJob] = []
    private var head = 0
    public let threads: Int

    /// `threads` threads named NAME-0, NAME-1, ...; `stackSize` in bytes (nil: the default).
    public init(threads: Int, name: String, stackSize: Int? = nil) {
        self.threads = max(1, threads)
        for i in 0..<self.threads {
            let t = Thread { [unowned self] in self.loop() }
            t.name = "\(name)-\(i)"
            if let stackSize { t.stackSize = stackSize }
            t.start()
        }
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        cond.lock()
        jobs.append(unowned)
        cond.signal()
        cond.unlock()
    }

    private func loop() {
        while true {
            cond.lock()
            while head == jobs.count { cond.wait() }
            let job = jobs[head]
            head += 1
            if head > 1024 && head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            cond.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}

/// PostgreSQL through postgres-nio's `PostgresClient`: its connection pool (up to `size`
/// connections, opened on demand, closed after a minute idle, replaced when broken), run for
/// as long as this object lives in a task of its own on `PostgresExecutor`.
///
/// Two ways in:
/// - `fetch` (async): one statement, awaited. The caller's thread is free while the lease and
///   the round trip are pending: the API's hot reads use it (`JobStore.fetchJob` and its
///   siblings), so a read waiting for PostgreSQL holds no handler thread.
/// - `read` / `write` (synchronous, the `SQLDatabase` interface that JobStore, Catalog and
///   StagingCache are written against): the connection is leased from the same pool
///   asynchronously and handed to the calling thread for the body (statements are
///   `EventLoopFuture.wait()`s completed by NIO's threads). Kept because rewriting the queue's
///   and the catalog's transactions (claims with advisory locks, registrations in batches,
///   mirrors) as async code is a larger change than this one; their callers are threads that
///   may block (runner workers, the API's blocking pool).
///
/// Why the PostgreSQL tail was long (issue 14, `bench/stall.sh`, bench/RESULTS.md): the old
/// pool had 8 connections behind one semaphore, for 16 + 16 API threads, the runner's workers,
/// the staging settler and a registration's batches. Every kind of request, reads included,
/// waited seconds for a connection (p50 3.7 s) while the server sat idle. Now up to `size`
/// (default 40) connections, handed out by postgres-nio's pool in order; reads p50 50-170 ms
/// under the same load. Writes were the slow part (stage-in, submit: ~1-2 s at p50 there):
/// each many statements, each a synchronous round trip. Now statements whose answer is not
/// needed at once are sent without waiting (`send`, `queryLater`: a hook's ask and teardown
/// are two round trips each), and the API's bounded writes run on their thread's own
/// connection with prepared statements (`sharingConnection`); 1,000 hooks: 327 → 500
/// stage-ins/s (bench/RESULTS.md, 2026-12-04). Async transactions would be the next step.
public final class PostgreSQLDatabase: SQLDatabase, @unchecked Sendable {
    public let dialect = SQLDialect.postgres
    public let location: String
    /// The pool (postgres-nio). Its `run()` is driven by `running`.
    public let client: PostgresClient
    private let running: Task<Void, Never>
    /// How a thread's own connection is opened (`sharingReads`).
    private let ownConfiguration: PostgresConnection.Configuration
    private let owned = ThreadConnections()
    private let logger = Logger(label: "ferry.postgres")
    /// How long a synchronous caller waits for a connection before the database counts as busy.
    static let leaseTimeout: DispatchTimeInterval = .seconds(30)

    /// `size`: connections at most. The default leaves room for a few daemons on PostgreSQL's
    /// default max_connections (100): a daemon's demand is its API threads plus its workers.
    public init(url: String, size: Int = 40) throws {
        let server = try PostgreSQLDatabase.server(url)
        location = server.location
        // Fail now, with the server's reason (a pool would only retry and time out).
        var probe = server.connection
        probe.options.connectTimeout = .seconds(10)
        do {
            let c = try PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.any(), configuration: probe, id: 0, logger: logger).wait()
            try? c.close().wait()
        } catch {
            throw SQLStoreError("cannot connect to \(location): \(PostgreSQLDatabase.reason(error))")
        }
        var c = server.pool
        c.options.connectTimeout = .seconds(10)
        c.options.minimumConnections = 0
        c.options.maximumConnections = max(2, size)
        c.options.connectionIdleTimeout = .seconds(60)
        var quiet = Logger(label: "ferry.postgres.pool")
        quiet.logLevel = .error
        let client = PostgresClient(configuration: c, eventLoopGroup: MultiThreadedEventLoopGroup.singleton, backgroundLogger: quiet)
        self.client = client
        ownConfiguration = probe
        running = Task(executorPreference: PostgresExecutor.shared) { await client.run() }
    }

    /// Where a `postgres://` URL points. Two forms:
    /// - `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`: TCP;
    /// - `postgres://USER[:PASSWORD]@/DATABASE?host=/DIR` (libpq's form; `[:PORT]` after the
    ///   empty host picks the socket's number): the server's Unix socket `DIR/.s.PGSQL.PORT`.
    ///   What a DTN with its PostgreSQL on the same host, or several nodes in network namespaces
    ///   of one host, use: a pathname socket is not confined to a network namespace.
    /// The database defaults to the user's name. Any other query parameter is refused, not
    /// ignored (TLS to PostgreSQL is not offered: `sslmode` would be a promise not kept).
    package struct Server: Equatable, Sendable {
        var user: String, password: String?, database: String
        var host: String, port: Int
        /// The socket file's path, for the socket form.
        var socket: String?
        var location: String {
            socket == nil ? "postgres://\(user)@\(host):\(port)/\(database)" : "postgres://\(user)@/\(database)?host=\(host) (socket \(socket!))"
        }
        /// One connection to it (the probe, the API threads' own connections).
        var connection: PostgresConnection.Configuration {
            if let socket { return .init(unixSocketPath: socket, username: user, password: password, database: database) }
            return .init(host: host, port: port, username: user, password: password, database: database, tls: .disable)
        }
        /// The pool's connections to it.
        var pool: PostgresClient.Configuration {
            if let socket { return .init(unixSocketPath: socket, username: user, password: password, database: database) }
            return .init(host: host, port: port, username: user, password: password, database: database, tls: .disable)
        }
    }

    package static func server(_ url: String) throws -> Server {
        let usage = "a PostgreSQL database is postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or postgres://USER[:PASSWORD]@/DATABASE?host=/SOCKET/DIR"
        guard let u = URLComponents(string: url), let user = u.user, !user.isEmpty else { throw SQLStoreError("\(usage), not '\(url)'") }
        let database = String(u.path.drop { $0 == "/" })
        let name = database.isEmpty ? user : database
        let port = u.port ?? 5432
        guard (1...65535).contains(port) else { throw SQLStoreError("\(usage): port \(port) is not 1 to 65535") }
        var dir: String?
        for item in u.queryItems ?? [] {
            guard item.name == "host", let v = item.value, dir == nil else {
                throw SQLStoreError("\(usage): the query parameter '\(item.name)' is not understood (only one ?host=/DIR)")
            }
            dir = v
        }
        if let dir {
            guard u.host?.isEmpty ?? true else { throw SQLStoreError("\(usage): a host and ?host=\(dir) both given in '\(url)'") }
            // The directory's path plus the socket's name must fit sockaddr_un (108 bytes with its NUL).
            let socket = (dir.hasSuffix("/") && dir.count > 1 ? String(dir.dropLast()) : dir) + "/.s.PGSQL.\(port)"
            guard dir.hasPrefix("/"), !dir.contains("\0"), socket.utf8.count < 108 else {
                throw SQLStoreError("\(usage): ?host= names the socket's directory by its absolute path, and DIR/.s.PGSQL.PORT must fit in 107 bytes, not '\(dir)'")
            }
            return Server(user: user, password: u.password, database: name, host: dir, port: port, socket: socket)
        }
        guard let host = u.host, !host.isEmpty else { throw SQLStoreError("\(usage), not '\(url)'") }
        return Server(user: user, password: u.password, database: name, host: host, port: port, socket: nil)
    }

    /// A connection of the pool handed to the calling (blocking) thread until it returns.
    private final class Lease: @unchecked Sendable {
        let lock = NSLock()
        let ready = DispatchSemaphore(value: 0)
        var connection: PostgresConnection?
        var error: (any Error)?
        var abandoned = false
        var finished = false
        var release: CheckedContinuation<Void, Never>?

        /// The pool's side: false when the caller gave up waiting (the connection goes back).
        func deliver(_ c: PostgresConnection) -> Bool {
            guard lock.withLock({ () -> Bool in
                if abandoned { return false }
                connection = c
                return true
            }) else { return false }
            ready.signal()
            return true
        }

        func fail(_ e: any Error) {
            lock.withLock { if connection == nil { error = e } }
            ready.signal()
        }

        /// Suspends (no thread) until the caller is done with the connection.
        func held() async {
            await withCheckedContinuation { (k: CheckedContinuation<Void, Never>) in
                let now = lock.withLock { () -> Bool in
                    if finished { return true }
                    release = k
                    return false
                }
                if now { k.resume() }
            }
        }

        /// The caller's side.
        func finish() {
            let k = lock.withLock { () -> CheckedContinuation<Void, Never>? in
                finished = true
                defer { release = nil }
                return release
            }
            k?.resume()
        }

        /// True when no connection had come (the lease request is then cancelled).
        func abandon() -> Bool {
            lock.withLock {
                if connection == nil && error == nil { abandoned = true; return true }
                return false
            }
        }
    }

    /// Connections owned by threads, for the reads made inside `sharingReads`: one per
    /// thread, opened on its first such read and kept (at most `limit`; a thread beyond them
    /// leases from the pool). The API's bounded reads run on a few permanent threads
    /// (`BlockingPool.quickReads`), so these are a few connections that each thread uses
    /// alone, one statement after another, without the pool: a lease is a handoff to the
    /// pool's task and back, and its release another (`bench/api.sh`: a quarter of a page's
    /// cost on PostgreSQL was those handoffs and the pool's bookkeeping).
    private final class ThreadConnections: @unchecked Sendable {
        static let limit = 8
        let lock = NSLock()
        var byThread: [UInt: OwnConnection] = [:]
    }

    /// A thread's own connection and the statements prepared on it, by their SQL: the API's
    /// reads are a few statements asked thousands of times a second, and a prepared one is
    /// neither parsed nor planned again (`pgbench` of a page's SELECT, four clients: 18,600
    /// executions/s prepared against 10,700 parsed each time). Used only by the owning thread.
    /// At most `statementsMax`; a statement the server cannot prepare for our bindings (a
    /// parameter whose type it infers narrower than the 64-bit integer we send) runs as before.
    final class OwnConnection: @unchecked Sendable {
        static let statementsMax = 64
        let conn: PostgresConnection
        var statements: [String: PreparedQuery] = [:]
        var refused: Set<String> = []
        /// A transaction is open on it: a read or write nested in it leases its own connection,
        /// as everywhere else (they must not see, join or end the open transaction).
        var inTransaction = false
        init(_ conn: PostgresConnection) { self.conn = conn }
    }
    @TaskLocal private static var sharing: ObjectIdentifier?
    @TaskLocal private static var sharingWrites: ObjectIdentifier?

    public func sharingReads<T>(_ body: () async throws -> T) async throws -> T {
        if Self.sharing == ObjectIdentifier(self) { return try await body() }
        return try await Self.$sharing.withValue(ObjectIdentifier(self)) { try await body() }
    }

    public func sharingConnection<T>(_ body: () async throws -> T) async throws -> T {
        try await sharingReads {
            if Self.sharingWrites == ObjectIdentifier(self) { return try await body() }
            return try await Self.$sharingWrites.withValue(ObjectIdentifier(self)) { try await body() }
        }
    }

    deinit {
        // Ends the pool's run: its connections are closed; so are the threads' own.
        running.cancel()
        for c in owned.lock.withLock({ Array(owned.byThread.values) }) { PostgreSQLDatabase.closeKeeping(c.conn) }
    }

    /// Closes `c`, holding it until the close is done (postgres-nio wants a connection closed
    /// before it is released).
    private static func closeKeeping(_ c: PostgresConnection) {
        let f: EventLoopFuture<Void> = c.close()
        f.whenComplete { _ in withExtendedLifetime(c) {} }
    }

    /// The calling thread's own connection inside `sharingReads` (nil outside it, or when
    /// `ThreadConnections.limit` threads have one already). A closed one is replaced.
    private func threadConnection() throws -> OwnConnection? {
        guard Self.sharing == ObjectIdentifier(self) else { return nil }
        let me = UInt(pthread_self())
        let (kept, room) = owned.lock.withLock { () -> (OwnConnection?, Bool) in
            (owned.byThread[me], owned.byThread.count < ThreadConnections.limit)
        }
        if let kept, !kept.conn.isClosed { return kept }
        guard kept != nil || room else { return nil }
        let c: PostgresConnection
        do {
            c = try PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.any(), configuration: ownConfiguration, id: Int(truncatingIfNeeded: me),
                                               logger: logger).wait()
        } catch {
            throw SQLStoreError("cannot connect to \(location): \(PostgreSQLDatabase.reason(error))", busy: true)
        }
        let own = OwnConnection(c)
        owned.lock.withLock { owned.byThread[me] = own }
        if let kept { PostgreSQLDatabase.closeKeeping(kept.conn) }
        return own
    }

    /// Drops `c` as the calling thread's own connection (and closes it).
    private func forgetThreadConnection(_ c: PostgresConnection) {
        let me = UInt(pthread_self())
        let dropped = owned.lock.withLock { () -> Bool in
            guard owned.byThread[me]?.conn === c else { return false }
            owned.byThread[me] = nil
            return true
        }
        if dropped { PostgreSQLDatabase.closeKeeping(c) }
    }

    private func withConnection<T>(_ body: (PostgresConnection) throws -> T) throws -> T {
        let lease = try acquire()
        defer { lease.finish() }
        guard let c = lease.connection else {
            throw SQLStoreError("cannot connect to \(location): \(PostgreSQLDatabase.reason(lease.error ?? CancellationError()))", busy: true)
        }
        return try body(c)
    }

    /// A lease of one connection, handed to the calling (blocking) thread; `finish()` gives it
    /// back. Waits at most `leaseTimeout`.
    private func acquire() throws -> Lease {
        let lease = Lease()
        let client = self.client
        let task = Task(executorPreference: PostgresExecutor.shared) {
            do {
                try await client.withConnection { (conn: PostgresConnection) async -> Void in
                    if lease.deliver(conn) { await lease.held() }
                }
            } catch {
                lease.fail(error)
            }
        }
        if lease.ready.wait(timeout: .now() + PostgreSQLDatabase.leaseTimeout) == .timedOut {
            if lease.abandon() {
                task.cancel()
                throw SQLStoreError("no free connection to \(location) within 30 s", busy: true)
            }
            lease.ready.wait()  // it came just now
        }
        return lease
    }

    /// One transaction. BEGIN is sent, not waited for: the first statement is queued behind it
    /// on the connection and one wait covers both (each wait of a blocked thread is a wake-up,
    /// and on a loaded two-core host a wake-up costs milliseconds: `bench/stall.sh` measured
    /// about 12 ms a round trip with two CPU hogs, most of it the threads' turns, not the server).
    ///
    /// Inside `sharingConnection`, on the thread's own connection, whose prepared statements
    /// the session uses (and pipelines: `send`, `queryLater`). A transaction there that
    /// committed nothing for certain, because the server ended the connection before its
    /// COMMIT or refused a prepared statement (22P03, 0A000: see `Session.refusing`), runs once
    /// more on the pool's connection. A connection whose ROLLBACK was not answered is forgotten
    /// (a transaction left open would poison its next use).
    public func write<T>(_ body: (any SQLSession) throws -> T) throws -> T {
        if Self.sharingWrites == ObjectIdentifier(self), let own = try threadConnection(), !own.inTransaction {
            own.inTransaction = true
            defer { own.inTransaction = false }
            var outcome = Outcome()
            do {
                return try transaction(on: own.conn, own: own, body, &outcome)
            } catch {
                if !outcome.rolledBack { forgetThreadConnection(own.conn) }
                let failure = error as? SQLStoreError
                let ended = own.conn.isClosed || failure?.connectionEnded == true
                // A refused statement broke the transaction wherever it was found (its COMMIT
                // then rolls back); an ended connection committed nothing unless the COMMIT
                // itself was sent and went unanswered.
                let refused = failure?.preparedRefused == true
                guard refused || (ended && (!outcome.committing || failure?.uncommitted == true)) else { throw error }
            }
        }
        var outcome = Outcome()
        return try withConnection { c in try transaction(on: c, own: nil, body, &outcome) }
    }

    /// How a transaction that threw ended: whether its COMMIT was written on an open
    /// connection (it may have been committed) and whether its ROLLBACK was answered.
    private struct Outcome { var committing = false, rolledBack = false }

    private func transaction<T>(on c: PostgresConnection, own: OwnConnection?, _ body: (any SQLSession) throws -> T,
                                _ outcome: inout Outcome) throws -> T {
        let s = Session(conn: c, logger: logger, pending: Session.Pending(), own: own, transactional: true)
        do {
            try s.send("BEGIN", [])
            let r = try body(s)
            // A connection closed before the COMMIT is written cannot carry it.
            outcome.committing = !c.isClosed
            try s.commit()
            return r
        } catch {
            let ended = c.isClosed || (error as? SQLStoreError)?.connectionEnded == true
            outcome.rolledBack = !ended && s.rollback()
            throw error
        }
    }

    public func read<T>(_ body: (any SQLSession) throws -> T) throws -> T {
        if let own = try threadConnection(), !own.inTransaction {
            let c = own.conn
            do {
                return try body(Session(conn: c, logger: logger, pending: Session.Pending(), own: own))
            } catch let e where c.isClosed || (e as? SQLStoreError)?.connectionEnded == true {
                // The server went away under it (a restart, an operator's pg_terminate_backend):
                // once more on the pool's connection (a read has no effect to repeat). The
                // thread's connection is forgotten now, closed or not yet: its next read opens
                // a new one.
                forgetThreadConnection(c)
            }
        }
        return try withConnection { c in try body(Session(conn: c, logger: logger, pending: Session.Pending())) }
    }

    /// One statement on a leased connection, awaited (see the type's comment). The lease, the
    /// query and the release run in a task on `PostgresExecutor`, and the caller resumes after
    /// the release: a connection is never held by a task waiting for a thread of the API's
    /// blocking pool (whose threads may all be waiting for connections: a deadlock).
    public func fetch(_ sql: String, _ args: [SQLValue]) async throws -> [SQLRow] {
        let query = PostgresQuery(unsafeSQL: Session.numbered(sql), binds: Session.bindings(args))
        let (client, logger) = (self.client, self.logger)
        let task = Task(executorPreference: PostgresExecutor.shared) { () async throws -> [SQLRow] in
            try await client.withConnection { (conn: PostgresConnection) async throws -> [SQLRow] in
                var out: [SQLRow] = []
                for try await row in try await conn.query(query, logger: logger) {
                    var values: [String: SQLValue] = [:]
                    for cell in row { values[cell.columnName] = try Session.value(cell) }
                    out.append(SQLRow(values: values))
                }
                return out
            }
        }
        do {
            return try await withTaskCancellationHandler { try await task.value } onCancel: { task.cancel() }
        } catch let e as SQLStoreError {
            throw e
        } catch {
            throw PostgreSQLDatabase.storeError(error)
        }
    }

    /// LISTEN on `channel` on a connection of its own (leased from the pool for as long as the
    /// returned task runs): `notify` gets each notification's payload; `listening` is called
    /// each time the LISTEN is (re)established (after a broken connection, notifications sent
    /// meanwhile are lost: the caller should look again). Retries every second until cancelled.
    public func listen(_ channel: String, listening: @escaping @Sendable () -> Void, notify: @escaping @Sendable (String) -> Void) -> Task<Void, Never>? {
        let client = self.client
        return Task(executorPreference: PostgresExecutor.shared) {
            for _ in 0..<Int.max {
                if Task.isCancelled { return }
                do {
                    try await client.withConnection { (conn: PostgresConnection) async throws -> Void in
                        try await conn.listen(on: channel) { notifications in
                            listening()
                            for try await n in notifications { notify(n.payload) }
                        }
                    }
                } catch {
                    // The connection broke, or the task was cancelled.
                }
                if Task.isCancelled { return }
                try? await Task.sleep(nanoseconds: 1_000_000_000)
            }
        }
    }

    /// `error` as the store's error: the server's message, and whether the connection ended
    /// with it. A terminated backend (`pg_terminate_backend`, a server shutting down) first
    /// sends its FATAL message (SQLSTATE 57P01) and closes after: the statement fails before
    /// `isClosed` is true, so the code, not the connection's state, tells.
    package static func storeError(_ error: Error) -> SQLStoreError {
        if let e = error as? SQLStoreError { return e }  // already ours (`awaited`): its flags kept
        var ended = false
        if let e = error as? PSQLError, e.code == .serverClosedConnection || e.code == .uncleanShutdown || e.code == .clientClosedConnection { ended = true }
        if case .connectionClosed? = error as? PostgresError { ended = true }
        if let state = sqlState(error), state.hasPrefix("08") || state.hasPrefix("57") { ended = true }
        return SQLStoreError(reason(error), connectionEnded: ended)
    }

    /// The server's SQLSTATE, from either of postgres-nio's error types (its `prepare` and
    /// prepared executions give the older `PostgresError`).
    static func sqlState(_ error: Error) -> String? {
        if let e = error as? PSQLError { return e.serverInfo?[.sqlState] }
        if case .server(let m)? = error as? PostgresError { return m.fields[.sqlState] }
        return nil
    }

    /// The server's message, not postgres-nio's generic description.
    package static func reason(_ error: Error) -> String {
        if let e = error as? PSQLError {
            if let m = e.serverInfo?[.message] { return m }
            return "\(e.code)" + (e.underlying.map { ": \($0)" } ?? "")
        }
        if case .server(let m)? = error as? PostgresError, let text = m.fields[.message] { return text }
        return "\(error)"
    }

    package struct Session: SQLSession {
        package let conn: PostgresConnection
        package let logger: Logger
        /// Statements sent and not waited for (`send`, `queryLater`), with their SQL (as sent,
        /// numbered): checked after the next wait.
        final class Pending { var futures: [(sql: String, done: EventLoopFuture<Void>)] = [] }
        let pending: Pending
        /// The thread's own connection, whose statements are prepared (nil: a leased one).
        var own: OwnConnection? = nil
        /// Inside BEGIN ... COMMIT: a failed statement breaks what follows.
        var transactional = false
        package var dialect: SQLDialect { .postgres }

        package func send(_ sql: String, _ args: [any SQLArgument]) throws {
            _ = try sent(sql, args)
        }

        package func queryLater(_ sql: String, _ args: [any SQLArgument]) throws -> () throws -> [SQLRow] {
            // Also pending: the next statement's wait reports its error first, as for `send`.
            let answer = try sent(sql, args)
            return {
                switch answer {
                case .prepared(let f):
                    do { return try Session.rows(try awaited(f), binary: true) } catch { throw PostgreSQLDatabase.storeError(error) }
                case .plain(let f):
                    do { return try Session.rows(try awaited(f)) } catch { throw PostgreSQLDatabase.storeError(error) }
                }
            }
        }

        enum Sent {
            case prepared(EventLoopFuture<[PostgresRow]>)
            case plain(EventLoopFuture<PostgresQueryResult>)
        }

        /// Sends a statement without waiting: by its prepared statement on a thread's own
        /// connection (prepared first if need be: that is a wait), else as it is.
        private func sent(_ sql: String, _ args: [any SQLArgument]) throws -> Sent {
            let numbered = Session.numbered(sql)
            if let own, let statement = try statement(own, numbered) {
                let f = statement.execute(Session.data(args))
                pending.futures.append((numbered, f.map { _ in }))
                return .prepared(f)
            }
            let f = conn.query(PostgresQuery(unsafeSQL: numbered, binds: Session.bindings(args.map(\.sqlValue))), logger: logger)
            pending.futures.append((numbered, f.map { _ in }))
            return .plain(f)
        }

        /// The answer to a statement sent on `conn`, waited for. Not `EventLoopFuture.wait()`
        /// alone: a statement written after the connection's pipeline was torn down (the server
        /// ended the backend, its FATAL answered an earlier statement of the same transaction)
        /// never gets an answer from postgres-nio, whose write drops it with its promise, and
        /// the thread waited for ever (`ChangeFeedTests.transactionsOnOwnConnections` hung so).
        /// Here the wait looks at the connection every half second, and once it is closed the
        /// statement gets half a second more, then fails as `connectionEnded`.
        func awaited<T: Sendable>(_ f: EventLoopFuture<T>) throws -> T {
            // The answer is kept by the callback (one callback and one lock, as `wait()` has:
            // a second wait after this one cost the API's job reads a tenth of their rate).
            let answer = Answer<T>()
            f.whenComplete { r in
                answer.done.lock()
                answer.result = r
                answer.done.unlock(withValue: 1)
            }
            var closedSeen = false
            // As long as the statement runs (a long one may take minutes), or until it is lost.
            while !answer.done.lock(whenValue: 1, timeoutSeconds: 0.5) {
                if closedSeen {
                    throw SQLStoreError("the connection to the database closed before it answered", connectionEnded: true)
                }
                closedSeen = conn.isClosed
            }
            let result = answer.result!
            answer.done.unlock()
            return try result.get()
        }

        private final class Answer<T>: @unchecked Sendable {
            let done = ConditionLock(value: 0)
            var result: Result<T, any Error>?
        }

        /// Waits for what was sent before (already answered: the connection answers in order).
        /// A prepared statement whose bindings the server refused (22P03) runs unprepared from
        /// now on.
        func settle() throws {
            let sent = pending.futures
            pending.futures.removeAll()
            for (sql, f) in sent {
                do { _ = try awaited(f) } catch { throw refusing(sql, error) }
            }
        }

        /// `error` as the store's; a 22P03 for a prepared statement of `sql` refuses it. A
        /// 0A000 ("cached plan must not change result type": a table of a `SELECT *` changed,
        /// another daemon's migration) drops it, to be prepared again on its next use.
        private func refusing(_ sql: String, _ error: Error) -> SQLStoreError {
            var e = PostgreSQLDatabase.storeError(error)
            let state = PostgreSQLDatabase.sqlState(error)
            if let own, state == "22P03" || state == "0A000", let statement = own.statements[sql] {
                own.statements[sql] = nil
                if state == "22P03" { own.refused.insert(sql) }
                _ = statement.deallocate()
                e.preparedRefused = true
            }
            return e
        }

        /// Sends COMMIT and waits for it and for everything sent before it. A statement before
        /// it that failed is reported first, as `uncommitted`: the server ends a transaction
        /// with a failed statement, or a connection that closed, by rolling it back.
        func commit() throws {
            let f = conn.query(PostgresQuery(unsafeSQL: "COMMIT"), logger: logger)
            do {
                try settle()
            } catch var e as SQLStoreError {
                e.uncommitted = true
                throw e
            }
            do { _ = try awaited(f) } catch { throw PostgreSQLDatabase.storeError(error) }
        }

        /// Ends the transaction: what was sent and not waited for is answered before the
        /// ROLLBACK (in order) and no longer matters. False when the connection did not answer.
        func rollback() -> Bool {
            pending.futures.removeAll()
            do {
                _ = try awaited(conn.query(PostgresQuery(unsafeSQL: "ROLLBACK"), logger: logger))
                return true
            } catch {
                return false
            }
        }

        static func data(_ args: [any SQLArgument]) -> [PostgresData] {
            args.map { a -> PostgresData in
                switch a.sqlValue {
                case .int(let i): return PostgresData(int64: i)
                case .real(let d): return PostgresData(double: d)
                case .text(let t): return PostgresData(string: t)
                case .null: return .null
                }
            }
        }

        static func bindings(_ args: [SQLValue]) -> PostgresBindings {
            var binds = PostgresBindings(capacity: args.count)
            for a in args {
                switch a {
                case .int(let i): binds.append(i)
                case .real(let d): binds.append(d)
                case .text(let s): binds.append(s)
                case .null: binds.appendNull()
                }
            }
            return binds
        }

        package func run(_ sql: String, _ args: [any SQLArgument]) throws -> PostgresQueryResult {
            let binds = Session.bindings(args.map(\.sqlValue))
            let result: Result<PostgresQueryResult, any Error>
            do {
                result = .success(try awaited(conn.query(PostgresQuery(unsafeSQL: Session.numbered(sql), binds: binds), logger: logger)))
            } catch {
                result = .failure(error)
            }
            // A statement sent before that failed is the cause: its error first.
            try settle()
            do { return try result.get() } catch { throw PostgreSQLDatabase.storeError(error) }
        }

        package func query(_ sql: String, _ args: [any SQLArgument]) throws -> [SQLRow] {
            if let own, let rows = try prepared(own, Session.numbered(sql), args) { return try Session.rows(rows, binary: true) }
            return try Session.rows(run(sql, args).rows)
        }

        /// A query's rows: by its prepared statement on a thread's own connection, else as
        /// `run`. For text columns only: a prepared statement's rows come in binary but their
        /// cells say text (postgres-nio's `prepare` keeps the description the server gave
        /// before the format was chosen), which is the same bytes for text, not for numbers.
        package func textRows(_ sql: String, _ args: [any SQLArgument]) throws -> [PostgresRow] {
            if let own, let rows = try prepared(own, Session.numbered(sql), args) { return rows }
            return try run(sql, args).rows
        }

        /// A query's rows by its prepared statement on the thread's own connection, every cell
        /// in binary whatever its format says (see `textRows`); nil when the session has no own
        /// connection or the statement is not prepared there (the caller then asks otherwise).
        /// For callers that decode cells by their data type (`FastSQL.entries`, one entry by
        /// its key: bench/RESULTS.md, "API reads, fifth pass").
        package func binaryRows(_ sql: String, _ args: [any SQLArgument]) throws -> [PostgresRow]? {
            guard let own else { return nil }
            return try prepared(own, Session.numbered(sql), args)
        }

        /// The prepared statement of `sql` on `own` (prepared now if need be); nil when it is
        /// not to be prepared: not a query or a change of rows (BEGIN, NOTIFY), the
        /// connection's statements are at their limit, or the server refused it before.
        private func statement(_ own: OwnConnection, _ sql: String) throws -> PreparedQuery? {
            if let kept = own.statements[sql] { return kept }
            if own.refused.contains(sql) || own.statements.count >= OwnConnection.statementsMax { return nil }
            let verb = sql.prefix { !$0.isWhitespace }.uppercased()
            guard ["SELECT", "INSERT", "UPDATE", "DELETE", "WITH"].contains(verb) else { return nil }
            do {
                let statement = try awaited(conn.prepare(query: sql))
                own.statements[sql] = statement
                return statement
            } catch {
                let e = PostgreSQLDatabase.storeError(error)
                // A statement sent before that failed is the cause (in a transaction, the
                // Parse is refused after it): its error first.
                try settle()
                if e.connectionEnded { throw e }
                own.refused.insert(sql)
                return nil
            }
        }

        /// A query's rows by its prepared statement on a thread's own connection; nil: not
        /// prepared (see `statement`), or the server refused our bindings for it (22P03: a
        /// 64-bit integer for an `integer` parameter; outside a transaction it runs again
        /// unprepared, inside one the transaction is broken and the error says so).
        private func prepared(_ own: OwnConnection, _ sql: String, _ args: [any SQLArgument]) throws -> [PostgresRow]? {
            guard let statement = try statement(own, sql) else { return nil }
            let result: Result<[PostgresRow], any Error>
            do { result = .success(try awaited(statement.execute(Session.data(args)))) } catch { result = .failure(error) }
            try settle()
            switch result {
            case .success(let rows): return rows
            case .failure(let error):
                let e = refusing(sql, error)
                if e.preparedRefused && !transactional { return nil }
                throw e
            }
        }

        static func rows(_ result: PostgresQueryResult) throws -> [SQLRow] {
            try rows(result.rows)
        }

        /// `binary`: the cells are in binary whatever they say (a prepared statement's; see
        /// `textRows`).
        static func rows(_ rows: [PostgresRow], binary: Bool = false) throws -> [SQLRow] {
            try rows.map { row in
                var values: [String: SQLValue] = [:]
                for var cell in row {
                    if binary { cell.format = .binary }
                    values[cell.columnName] = try Session.value(cell)
                }
                return SQLRow(values: values)
            }
        }

        package func execute(_ sql: String, _ args: [any SQLArgument]) throws -> Int {
            if args.isEmpty && sql.contains(";") {
                // A script: the extended protocol takes one statement at a time.
                for part in sql.split(separator: ";") where !part.allSatisfy({ $0.isWhitespace }) {
                    _ = try run(String(part), [])
                }
                return 0
            }
            return try run(sql, args).metadata.rows ?? 0
        }

        static func value(_ cell: PostgresCell) throws -> SQLValue {
            if cell.bytes == nil { return .null }
            switch cell.dataType {
            case .int2, .int4, .int8: return .int(try cell.decode(Int64.self))
            case .float4, .float8: return .real(try cell.decode(Double.self))
            case .bool: return .int(try cell.decode(Bool.self) ? 1 : 0)
            default: return .text(try cell.decode(String.self))
            }
        }

        /// `?` → `$1, $2, ...`, outside quoted strings. On the UTF-8 bytes (every statement
        /// passes here; by Characters it was 5 % of a page's CPU on PostgreSQL).
        static func numbered(_ sql: String) -> String {
            let question = UInt8(ascii: "?"), quote = UInt8(ascii: "'")
            guard sql.utf8.contains(question) else { return sql }
            var out: [UInt8] = []
            out.reserveCapacity(sql.utf8.count + 16)
            var n = 0
            var quoted = false
            for b in sql.utf8 {
                if b == quote { quoted.toggle() }
                if b == question && !quoted {
                    n += 1
                    out.append(UInt8(ascii: "$"))
                    var digits: [UInt8] = []
                    var m = n
                    while m > 0 { digits.append(UInt8(ascii: "0") + UInt8(m % 10)); m /= 10 }
                    out.append(contentsOf: digits.reversed())
                } else {
                    out.append(b)
                }
            }
            return String(decoding: out, as: UTF8.self)
        }
    }
}

extension PostgreSQLDatabase.Session {
    /// `COPY table (columns) FROM STDIN` of `data` (COPY's text format) on this session's
    /// connection, inside its transaction, while the calling thread waits. The
    /// copy (async only in postgres-nio) runs in a task on `PostgresExecutor`'s own threads:
    /// on the cooperative pool it would wait for a thread that callers like this one may all
    /// be blocking (it did, in the tests: both engines' registrations at once on two cores).
    package func copy(into table: String, columns: [String], _ data: [UInt8]) throws {
        let conn = self.conn, logger = self.logger
        let done = conn.eventLoop.makePromise(of: Void.self)
        Task(executorPreference: PostgresExecutor.shared) {
            do {
                try await conn.copyFrom(table: table, columns: columns, logger: logger) { writer in
                    try await writer.write(ByteBuffer(bytes: data))
                }
                done.succeed(())
            } catch {
                done.fail(error)
            }
        }
        do {
            try done.futureResult.wait()
        } catch {
            throw PostgreSQLDatabase.storeError(error)
        }
    }
}
