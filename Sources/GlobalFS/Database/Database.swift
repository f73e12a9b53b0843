import Foundation
import GRDB
import Logging
import NIOCore
import NIOPosix
import PostgresNIO

/// The storage behind the job queue and the catalog: one small SQL interface with two engines.
/// Embedded SQLite (GRDB) is the default, one daemon per file; PostgreSQL (postgres-nio) when
/// the configuration names a `postgres://` URL, and then several daemons of one center share
/// it (the job queue claims rows with `FOR UPDATE SKIP LOCKED`).
///
/// The interface is synchronous on purpose: its callers are the runner's worker threads and the
/// API's handlers, and a query is a loopback round trip. The PostgreSQL engine waits on NIO
/// futures, which complete on NIO's own event-loop threads, never on the Swift concurrency
/// pool, so a handler blocking here cannot starve the thread that would complete it.
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
}

extension SQLSession {
    public func query(_ sql: String, _ args: any SQLArgument...) throws -> [SQLRow] { try query(sql, args) }
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
}

public struct SQLStoreError: Error, CustomStringConvertible, Sendable {
    public var description: String
    /// The database was busy (a lock held longer than the busy timeout, no free connection):
    /// asking again later can succeed (the API answers 503).
    public var busy = false
    public init(_ d: String, busy: Bool = false) { description = d; self.busy = busy }
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

    public init(path: String) throws {
        var config = Configuration()
        config.busyMode = .timeout(10)
        config.maximumReaderCount = 8
        location = path
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
        do { return try queue.read { db in try body(Session(db: db)) } } catch let e as DatabaseError where SQLiteDatabase.isBusy(e) {
            throw SQLStoreError("the database \(location) is busy (locked for more than 10 s): \(e.message ?? "")", busy: true)
        }
    }

    static func isBusy(_ e: DatabaseError) -> Bool {
        e.resultCode == .SQLITE_BUSY || e.resultCode == .SQLITE_LOCKED
    }

    struct Session: SQLSession {
        let db: GRDB.Database
        var dialect: SQLDialect { .sqlite }

        func query(_ sql: String, _ args: [any SQLArgument]) throws -> [SQLRow] {
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

        func execute(_ sql: String, _ args: [any SQLArgument]) throws -> Int {
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

/// A small pool of PostgreSQL connections (postgres-nio), used synchronously. A connection
/// that broke (server restarted) is replaced on its next use.
public final class PostgreSQLDatabase: SQLDatabase, @unchecked Sendable {
    public let dialect = SQLDialect.postgres
    public let location: String
    private let configuration: PostgresConnection.Configuration
    private let logger = Logger(label: "ferry.postgres")
    private let lock = NSLock()
    private var idle: [PostgresConnection] = []
    private let slots: DispatchSemaphore
    private var nextID = 0

    /// `size`: connections at most (each worker thread and API request holds one briefly).
    public init(url: String, size: Int = 8) throws {
        guard let u = URLComponents(string: url), let host = u.host, !host.isEmpty, let user = u.user, !user.isEmpty else {
            throw SQLStoreError("a PostgreSQL database is postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, not '\(url)'")
        }
        let database = String(u.path.drop { $0 == "/" })
        var c = PostgresConnection.Configuration(host: host, port: u.port ?? 5432, username: user, password: u.password,
                                                 database: database.isEmpty ? user : database, tls: .disable)
        c.options.connectTimeout = .seconds(10)
        configuration = c
        location = "postgres://\(user)@\(host):\(u.port ?? 5432)/\(database.isEmpty ? user : database)"
        slots = DispatchSemaphore(value: max(1, size))
        // Fail now, with the reason, rather than at the first job.
        _ = try read { s in try s.query("SELECT 1 AS one") }
    }

    deinit {
        for c in idle { _ = try? c.close().wait() }
    }

    private func withConnection<T>(_ body: (PostgresConnection) throws -> T) throws -> T {
        guard slots.wait(timeout: .now() + 30) == .success else {
            throw SQLStoreError("no free connection to \(location) within 30 s", busy: true)
        }
        defer { slots.signal() }
        var conn = lock.withLock { idle.popLast() }
        if conn?.isClosed ?? false { conn = nil }
        if conn == nil {
            let id = lock.withLock { () -> Int in nextID += 1; return nextID }
            do {
                conn = try PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.any(), configuration: configuration,
                                                      id: id, logger: logger).wait()
            } catch {
                throw SQLStoreError("cannot connect to \(location): \(PostgreSQLDatabase.reason(error))")
            }
        }
        let c = conn!
        // Back to the pool whether or not `body` threw (a failed statement leaves the
        // connection usable; `write` rolled back); a broken one is closed, never just dropped
        // (postgres-nio requires every connection to be closed).
        defer {
            if c.isClosed { _ = try? c.close().wait() } else { lock.withLock { idle.append(c) } }
        }
        return try body(c)
    }

    public func write<T>(_ body: (any SQLSession) throws -> T) throws -> T {
        try withConnection { c in
            let s = Session(conn: c, logger: logger)
            try s.execute("BEGIN")
            do {
                let r = try body(s)
                try s.execute("COMMIT")
                return r
            } catch {
                _ = try? s.execute("ROLLBACK")
                throw error
            }
        }
    }

    public func read<T>(_ body: (any SQLSession) throws -> T) throws -> T {
        try withConnection { c in try body(Session(conn: c, logger: logger)) }
    }

    /// The server's message, not postgres-nio's generic description.
    static func reason(_ error: Error) -> String {
        if let e = error as? PSQLError {
            if let m = e.serverInfo?[.message] { return m }
            return "\(e.code)" + (e.underlying.map { ": \($0)" } ?? "")
        }
        return "\(error)"
    }

    struct Session: SQLSession {
        let conn: PostgresConnection
        let logger: Logger
        var dialect: SQLDialect { .postgres }

        func run(_ sql: String, _ args: [any SQLArgument]) throws -> PostgresQueryResult {
            var binds = PostgresBindings(capacity: args.count)
            for a in args {
                switch a.sqlValue {
                case .int(let i): binds.append(i)
                case .real(let d): binds.append(d)
                case .text(let s): binds.append(s)
                case .null: binds.appendNull()
                }
            }
            do {
                return try conn.query(PostgresQuery(unsafeSQL: Session.numbered(sql), binds: binds), logger: logger).wait()
            } catch {
                throw SQLStoreError(PostgreSQLDatabase.reason(error))
            }
        }

        func query(_ sql: String, _ args: [any SQLArgument]) throws -> [SQLRow] {
            try run(sql, args).rows.map { row in
                var values: [String: SQLValue] = [:]
                for cell in row {
                    values[cell.columnName] = try Session.value(cell)
                }
                return SQLRow(values: values)
            }
        }

        func execute(_ sql: String, _ args: [any SQLArgument]) throws -> Int {
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

        /// `?` → `$1, $2, ...`, outside quoted strings.
        static func numbered(_ sql: String) -> String {
            var out = ""
            out.reserveCapacity(sql.utf8.count + 16)
            var n = 0
            var quoted = false
            for ch in sql {
                if ch == "'" { quoted.toggle() }
                if ch == "?" && !quoted {
                    n += 1
                    out += "$\(n)"
                } else {
                    out.append(ch)
                }
            }
            return out
        }
    }
}
