import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The storage engines a suite runs against: every store test runs on both.
public enum Backend: String, CaseIterable, Sendable, CustomStringConvertible {
    case sqlite, postgres
    public var description: String { rawValue }

    /// A new, empty database: a SQLite file in a fresh directory, or a new database on the
    /// test PostgreSQL server (started once per test process, see `TestPostgres`).
    public func newDatabase(_ label: String = "t") throws -> String {
        switch self {
        case .sqlite:
            var t = Array("/tmp/ferry-db-XXXXXX".utf8CString)
            guard let p = mkdtemp(&t) else { throw TestSetupError("mkdtemp failed") }
            return String(cString: p) + "/\(label).sqlite"
        case .postgres:
            return try TestPostgres.shared.createDatabase()
        }
    }
}

public struct TestSetupError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A real PostgreSQL server for the tests: `FERRY_TEST_POSTGRES` names one (scripts/test.sh
/// starts it), else the first test that needs it starts one with scripts/postgres-test.sh in a
/// temporary directory and stops it when the test process exits.
public final class TestPostgres: @unchecked Sendable {
    public static let shared = TestPostgres()
    private let lock = NSLock()
    private var baseURL: String?
    private var counter = 0

    public static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("scripts/postgres-test.sh").path
    }

    public func url() throws -> String {
        try lock.withLock {
            if let u = baseURL { return u }
            if let env = ProcessInfo.processInfo.environment["FERRY_TEST_POSTGRES"], !env.isEmpty {
                baseURL = env
                return env
            }
            let dir = "/tmp/ferry-pg-\(getpid())"
            let out = try TestPostgres.run([TestPostgres.script, "start", dir])
            startedDir = dir
            atexit { if let d = startedDir { _ = try? TestPostgres.run([TestPostgres.script, "stop", d]) } }
            baseURL = out
            return out
        }
    }

    /// A fresh database on the server, so that tests never see each other's rows.
    public func createDatabase() throws -> String {
        let base = try url()
        let n = lock.withLock { () -> Int in counter += 1; return counter }
        return try TestPostgres.run([TestPostgres.script, "createdb", base, "ferry_\(getpid())_\(n)"])
    }

    /// Runs the script (bounded by `timeout`) with its output in files, not pipes: the server
    /// it starts keeps inherited descriptors open, and a pipe would then never reach its end.
    /// posix_spawn and waitpid directly, with an empty signal mask for the child (test threads
    /// block signals, and a child would inherit that).
    @discardableResult
    static func run(_ args: [String]) throws -> String {
        let base = "/tmp/ferry-pg-run-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { unlink(base + ".out"); unlink(base + ".err") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, base + ".out", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, base + ".err", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
        let argv = ["/usr/bin/timeout", "-k", "5", "120", "/bin/bash"] + args
        var cargs = argv.map { strdup($0) } + [nil]
        defer { for a in cargs { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, &attr, &cargs, environ)
        guard rc == 0 else { throw TestSetupError("cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let o = (try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? ""
        let e = (try? String(contentsOfFile: base + ".err", encoding: .utf8)) ?? ""
        guard status == 0 else {
            throw TestSetupError("\(args.joined(separator: " ")) failed (status \(status)): \(e)")
        }
        return o.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// The directory of a server this process started (read by the atexit handler).
nonisolated(unsafe) private var startedDir: String?
