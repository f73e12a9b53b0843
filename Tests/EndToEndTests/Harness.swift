// End-to-end harness: runs the built `ferry` binary the way a user would.
//
// Everything here is bounded in time: every wait is a deadline loop, every child process runs
// under coreutils `timeout` (so a crashed test run cannot leave a server behind for long), and
// all traffic goes to 127.0.0.1 or ::1.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// MARK: - Errors and paths

/// A failure of the harness itself (as opposed to a failed expectation about ferry).
struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

enum E2E {
    /// The package root, derived from this file's location (Tests/EndToEndTests/Harness.swift).
    static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// `FERRY_BIN` if set, else `<package root>/.build/debug/ferry`.
    static var ferryBinary: String {
        if let bin = ProcessInfo.processInfo.environment["FERRY_BIN"], !bin.isEmpty { return bin }
        return packageRoot + "/.build/debug/ferry"
    }

    static let isRoot: Bool = getuid() == 0

    static let KiB = 1024
    static let MiB = 1024 * 1024
    static let GiB = 1024 * 1024 * 1024
}

/// Monotonic seconds.
func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func sleepSeconds(_ seconds: Double) {
    usleep(useconds_t(max(0, seconds) * 1_000_000))
}

/// Polls `condition` every `interval` seconds until it holds or `timeout` seconds have passed.
/// The number of iterations is bounded by timeout / interval + 1.
@discardableResult
func waitUntil(timeout: Double, interval: Double = 0.05, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicSeconds() + timeout
    let maxIterations = Int(timeout / interval) + 2
    for _ in 0..<maxIterations {
        if condition() { return true }
        if monotonicSeconds() >= deadline { break }
        sleepSeconds(interval)
    }
    return condition()
}

// MARK: - Sandbox: temp dirs, a federation CA, a center certificate and a user token

/// A private temp directory (under /dev/shm by default) with its own PKI, made with the real
/// `ferry ca` and `ferry token` commands: pki/ca.crt, pki/hlrs.crt (center "hlrs", valid for
/// 127.0.0.1 and ::1) and a token for user "alice" with scope rw:/ in `tokenFile`. Removed on
/// deinit.
final class Sandbox {
    let path: String
    let tokenFile: String
    let token: String
    let pki: String
    var ca: String { pki + "/ca.crt" }
    var centerCert: String { pki + "/hlrs.crt" }
    var centerKey: String { pki + "/hlrs.key" }
    private var mounts: [String] = []

    init(_ name: String, base: String = "/dev/shm") throws {
        let template = "\(base)/ferry-e2e-\(name)-XXXXXX"
        var bytes = Array(template.utf8CString)
        guard mkdtemp(&bytes) != nil else {
            throw HarnessError("mkdtemp(\(template)) failed: errno \(errno)")
        }
        path = String(cString: bytes)
        pki = path + "/pki"
        try FileManager.default.createDirectory(
            atPath: path + "/logs", withIntermediateDirectories: true)
        try Sandbox.ferryTool(["ca", "init", "--dir", pki])
        try Sandbox.ferryTool(["ca", "issue", "--dir", pki, "--center", "hlrs", "--host", "127.0.0.1", "--host", "::1"])
        token = try Sandbox.ferryTool(["token", "issue", "--cert", pki + "/hlrs.crt", "--key", pki + "/hlrs.key", "--user", "alice", "--scope", "rw:/", "--ttl", "2h"])
            .trimmingCharacters(in: .whitespacesAndNewlines)
        tokenFile = path + "/token"
        try writeFile(tokenFile, Array((token + "\n").utf8))
        chmod(tokenFile, 0o600)
    }

    /// Runs a short `ferry` command (PKI set-up); its stdout, or an error with its output.
    @discardableResult
    static func ferryTool(_ args: [String]) throws -> String {
        let r = runTool("/usr/bin/timeout", ["30", E2E.ferryBinary] + args)
        guard r.status == 0 else { throw HarnessError("ferry \(args.joined(separator: " ")) failed: \(r.output)") }
        return r.output
    }

    /// Issues a token with the sandbox's center key (options as for `ferry token issue`).
    func issueToken(user: String = "alice", scopes: [String] = ["rw:/"], ttl: String = "2h", extra: [String] = [], name: String) throws -> String {
        var args = ["token", "issue", "--cert", centerCert, "--key", centerKey, "--user", user, "--ttl", ttl] + extra
        for s in scopes { args += ["--scope", s] }
        let t = try Sandbox.ferryTool(args).trimmingCharacters(in: .whitespacesAndNewlines)
        let p = path + "/" + name
        try writeFile(p, Array((t + "\n").utf8))
        return p
    }

    /// `path/rel`, created (with parents) as a directory.
    @discardableResult
    func dir(_ rel: String) throws -> String {
        let p = path + "/" + rel
        try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }

    /// `path/rel` (nothing created).
    func file(_ rel: String) -> String { path + "/" + rel }

    /// A forged token: same issuer name ("hlrs"), user and scopes, but signed by a key of
    /// another CA's "hlrs" certificate.
    func wrongTokenFile() throws -> String {
        let other = path + "/pki-other"
        if !exists(other + "/hlrs.crt") {
            try Sandbox.ferryTool(["ca", "init", "--dir", other])
            try Sandbox.ferryTool(["ca", "issue", "--dir", other, "--center", "hlrs", "--host", "127.0.0.1"])
        }
        let t = try Sandbox.ferryTool(["token", "issue", "--cert", other + "/hlrs.crt", "--key", other + "/hlrs.key", "--user", "alice", "--scope", "rw:/"])
        let p = path + "/wrong-token"
        try writeFile(p, Array(t.utf8))
        chmod(p, 0o600)
        return p
    }

    /// Mounts a tmpfs of `sizeMiB` at `dir` (created); unmounted in `unmountAll` / deinit.
    func mountTmpfs(at dir: String, sizeMiB: Int) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let r = runTool("/bin/mount", ["-t", "tmpfs", "-o", "size=\(sizeMiB)m", "tmpfs", dir])
        guard r.status == 0 else { throw HarnessError("mount tmpfs at \(dir) failed: \(r.output)") }
        mounts.append(dir)
    }

    /// A fresh ext4 filesystem of `sizeMiB` at `dir`: an image file in the sandbox, formatted
    /// and mounted through a loop device (a real block filesystem with direct I/O, wherever
    /// the sandbox itself lives).
    func mountExt4(at dir: String, sizeMiB: Int) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let image = path + "/ext4-\(mounts.count).img"
        guard let f = FileHandle(forWritingAtPath: image) ?? {
            _ = FileManager.default.createFile(atPath: image, contents: nil)
            return FileHandle(forWritingAtPath: image)
        }() else { throw HarnessError("cannot create \(image)") }
        try f.truncate(atOffset: UInt64(sizeMiB) << 20)
        try f.close()
        let mk = runTool("/usr/sbin/mkfs.ext4", ["-q", "-F", "-m", "0", image], timeout: 60)
        guard mk.status == 0 else { throw HarnessError("mkfs.ext4 \(image) failed: \(mk.output)") }
        let r = runTool("/bin/mount", ["-o", "loop", image, dir])
        guard r.status == 0 else { throw HarnessError("mount -o loop \(image) at \(dir) failed: \(r.output)") }
        mounts.append(dir)
    }

    func remountTmpfs(at dir: String, sizeMiB: Int) throws {
        let r = runTool("/bin/mount", ["-o", "remount,size=\(sizeMiB)m", dir])
        guard r.status == 0 else { throw HarnessError("remount \(dir) failed: \(r.output)") }
    }

    func unmountAll() {
        for m in mounts.reversed() {
            if runTool("/bin/umount", [m]).status != 0 {
                _ = runTool("/bin/umount", ["-l", m])
            }
        }
        mounts.removeAll()
    }

    deinit {
        unmountAll()
        if ProcessInfo.processInfo.environment["FERRY_E2E_KEEP"] == nil {
            try? FileManager.default.removeItem(atPath: path)
        }
    }
}

// MARK: - Running processes

/// Runs `body` (which spawns a child) with no signals blocked in the calling thread.
/// Test functions run on Dispatch worker threads that block most signals, and a spawned child
/// inherits that mask: `ferry serve` would then never see SIGTERM.
func withSignalsUnblocked<T>(_ body: () throws -> T) rethrows -> T {
    var empty = sigset_t()
    var old = sigset_t()
    sigemptyset(&empty)
    pthread_sigmask(SIG_SETMASK, &empty, &old)
    defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
    return try body()
}

/// Runs a helper tool (mount, umount, a shell command, ...) to completion, bounded by
/// `timeout` seconds (killed after), with `env` added to the environment. Output goes to a
/// file, and the wait is a bounded poll: reading a pipe to its end, or Foundation's
/// waitUntilExit, never returns if something the tool started (a daemon) keeps the
/// descriptor open.
func runTool(_ exe: String, _ args: [String], timeout: Int = 30, env: [String: String] = [:]) -> (status: Int32, output: String) {
    let out = NSTemporaryDirectory() + "ferry-tool-\(getpid())-\(logCounter.next()).out"
    defer { unlink(out) }
    guard FileManager.default.createFile(atPath: out, contents: nil), let handle = FileHandle(forWritingAtPath: out) else {
        return (-1, "cannot create \(out)")
    }
    defer { try? handle.close() }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
    p.arguments = ["-k", "5", String(timeout), exe] + args
    if !env.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(env) { _, b in b } }
    p.standardOutput = handle
    p.standardError = handle
    p.standardInput = FileHandle.nullDevice
    do { try withSignalsUnblocked { try p.run() } } catch { return (-1, "\(error)") }
    let output = { (try? String(contentsOfFile: out, encoding: .utf8)) ?? "" }
    // Foundation's `isRunning` waits for its own monitor to reap the child; once (a loaded
    // host, two suites at once) it stayed true for 45 s after the tool had exited. The kernel
    // knows sooner: a child that exited and is not reaped yet is a zombie, and its wait status
    // is the last field of /proc/PID/stat. A zombie for a second is taken as exited.
    var zombieSince: Double?
    var zombieStatus: Int32?
    guard waitUntil(timeout: Double(timeout + 15), interval: 0.02, {
        if !p.isRunning { return true }
        guard let status = exitedChildStatus(p.processIdentifier) else { return false }
        let now = Date().timeIntervalSince1970
        if zombieSince == nil { zombieSince = now }
        zombieStatus = status
        return now - zombieSince! >= 1
    }) else {
        return (-1, "\(exe): no exit reported within \(timeout + 15) s: \(output())")
    }
    if p.isRunning, let zombieStatus { return (zombieStatus, output()) }
    return (p.terminationStatus, output())
}

/// The exit status of a child that has exited but is not reaped yet (a zombie: state `Z` in
/// /proc/PID/stat, whose last field is the wait status); nil while it runs or once reaped.
func exitedChildStatus(_ pid: Int32) -> Int32? {
    guard pid > 0, let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return nil }
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.first == "Z", let raw = Int32(fields.last!.trimmingCharacters(in: .whitespacesAndNewlines)) else { return nil }
    // A wait status: exited (code in bits 8-15) or killed by a signal (bits 0-6: the signal,
    // as Foundation's `terminationStatus` gives it).
    return raw & 0x7f == 0 ? (raw >> 8) & 0xff : raw & 0x7f
}

private let logCounter = Counter()

final class Counter: @unchecked Sendable {  // guarded by lock
    private let lock = NSLock()
    private var value = 0
    func next() -> Int {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value
    }
}

/// One running `ferry` process. stdout and stderr go to files in the sandbox's logs/ directory
/// (no pipes: a child that inherits a pipe can never hold up another process's EOF).
/// The process runs under `timeout` in its own process group, so `kill9()` kills the group.
final class FerryProcess {
    let process: Process
    let stdoutPath: String
    let stderrPath: String
    let arguments: [String]
    let startedAt: Double

    /// `stdinPath`: a file to read standard input from (default: /dev/null).
    /// `environment`: variables set (nil: unset) for this process only, over the test's own.
    /// FERRY_CONFIG is "" (no client configuration file) unless given: a developer's
    /// ~/.config/ferry/config.toml must not change what a test runs.
    /// `journalStream`: JOURNAL_STREAM names the stderr file (device:inode), as systemd does
    /// when journald reads a service's standard error.
    init(_ args: [String], logDir: String, wallLimitSeconds: Int = 600, stdinPath: String? = nil, environment: [String: String?] = [:], journalStream: Bool = false) throws {
        let bin = E2E.ferryBinary
        guard FileManager.default.isExecutableFile(atPath: bin) else {
            throw HarnessError(
                "ferry binary not found at \(bin): build it (swift build) or set FERRY_BIN")
        }
        let n = logCounter.next()
        let tag = args.first ?? "ferry"
        stdoutPath = "\(logDir)/\(n)-\(tag).out"
        stderrPath = "\(logDir)/\(n)-\(tag).err"
        _ = FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
        guard let out = FileHandle(forWritingAtPath: stdoutPath),
            let err = FileHandle(forWritingAtPath: stderrPath)
        else { throw HarnessError("cannot open log files in \(logDir)") }
        arguments = args
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        process.arguments = ["-k", "5", String(wallLimitSeconds), bin] + args
        var env = ProcessInfo.processInfo.environment
        env["FERRY_CONFIG"] = ""
        for (k, v) in environment { env[k] = v }  // nil removes
        var st = stat()
        if journalStream && stat(stderrPath, &st) == 0 { env["JOURNAL_STREAM"] = "\(st.st_dev):\(st.st_ino)" }
        process.environment = env
        process.standardOutput = out
        process.standardError = err
        if let stdinPath {
            guard let input = FileHandle(forReadingAtPath: stdinPath) else { throw HarnessError("cannot read \(stdinPath)") }
            process.standardInput = input
        } else {
            process.standardInput = FileHandle.nullDevice
        }
        startedAt = monotonicSeconds()
        try withSignalsUnblocked { try process.run() }
        try? out.close()
        try? err.close()
    }

    /// The `timeout` wrapper's pid (signals to it reach the ferry process).
    var pid: pid_t { process.processIdentifier }
    /// The ferry process itself, the wrapper's child: what its descriptors and memory are
    /// measured on (`/proc/PID/fd`, VmRSS). The wrapper's pid until the child exists.
    var ferryPid: pid_t {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").first.flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? pid
    }
    var isRunning: Bool { process.isRunning }

    var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    /// Complete JSON lines of stdout so far.
    var jsonLines: [[String: Any]] {
        let text = stdout
        var lines = text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
        if !text.hasSuffix("\n"), !lines.isEmpty { lines.removeLast() }  // incomplete last line
        return lines.compactMap { line in
            guard let data = line.data(using: .utf8),
                let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            else { return nil }
            return obj
        }
    }

    /// The latest progress event so far.
    var lastProgress: Progress? {
        jsonLines.last { ($0["type"] as? String) == "progress" }.map(Progress.init)
    }

    /// Waits (bounded) for the process to exit. Returns false on timeout.
    @discardableResult
    func waitExit(timeout: Double) -> Bool {
        waitUntil(timeout: timeout, interval: 0.02) { !process.isRunning }
    }

    /// SIGKILL to the whole process group (timeout wrapper and ferry).
    func kill9() {
        guard process.isRunning else { return }
        if kill(-pid, SIGKILL) != 0 { kill(pid, SIGKILL) }
        waitExit(timeout: 10)
    }

    /// SIGTERM (forwarded by `timeout` to ferry); SIGKILL after `grace` seconds.
    /// Returns true when the process exited within the grace period.
    @discardableResult
    func terminate(grace: Double = 5) -> Bool {
        guard process.isRunning else { return true }
        kill(pid, SIGTERM)
        if waitExit(timeout: grace) { return true }
        kill9()
        return false
    }

    deinit {
        if process.isRunning { kill9() }
    }
}

// MARK: - JSON events

struct Progress {
    let bytesDone: Int
    let bytesTotal: Int
    let filesDone: Int
    let filesTotal: Int
    init(_ obj: [String: Any]) {
        bytesDone = intField(obj, "bytes_done") ?? -1
        bytesTotal = intField(obj, "bytes_total") ?? -1
        filesDone = intField(obj, "files_done") ?? -1
        filesTotal = intField(obj, "files_total") ?? -1
    }
}

/// The final `{"type":"summary",...}` line of `ferry cp --json`.
struct Summary: CustomStringConvertible {
    let files: Int
    let bytes: Int
    let wireBytes: Int
    let skippedBytes: Int
    let filesSkipped: Int
    let retransmittedChunks: Int
    let seconds: Double
    let raw: [String: Any]

    init?(_ obj: [String: Any]) {
        guard (obj["type"] as? String) == "summary",
            let files = intField(obj, "files"), let bytes = intField(obj, "bytes"),
            let wire = intField(obj, "wire_bytes"), let skipped = intField(obj, "skipped_bytes"),
            let retrans = intField(obj, "retransmitted_chunks")
        else { return nil }
        self.files = files
        self.bytes = bytes
        self.wireBytes = wire
        self.skippedBytes = skipped
        self.filesSkipped = intField(obj, "files_skipped") ?? -1
        self.retransmittedChunks = retrans
        self.seconds = (obj["seconds"] as? NSNumber)?.doubleValue ?? -1
        self.raw = obj
    }

    var description: String {
        "summary(files: \(files), bytes: \(bytes), wire_bytes: \(wireBytes), "
            + "skipped_bytes: \(skippedBytes), files_skipped: \(filesSkipped), "
            + "retransmitted_chunks: \(retransmittedChunks), seconds: \(seconds))"
    }
}

/// `{"type":"error","message":"...","resumable":...}`.
struct ErrorEvent {
    let message: String
    let resumable: Bool?
    init?(_ obj: [String: Any]) {
        guard (obj["type"] as? String) == "error" else { return nil }
        message = obj["message"] as? String ?? ""
        resumable = (obj["resumable"] as? NSNumber)?.boolValue
    }
}

private func intField(_ obj: [String: Any], _ key: String) -> Int? {
    guard let n = obj[key] as? NSNumber else { return nil }
    return n.intValue
}

// MARK: - ferry cp

/// The outcome of one finished `ferry cp`.
struct CpResult: CustomStringConvertible {
    let status: Int32
    let signaled: Bool
    let timedOut: Bool
    let stdout: String
    let stderr: String
    let jsonLines: [[String: Any]]
    let args: [String]

    var summary: Summary? { jsonLines.compactMap(Summary.init).last }
    var error: ErrorEvent? { jsonLines.compactMap(ErrorEvent.init).last }
    var succeeded: Bool { status == 0 && !signaled && !timedOut }
    /// The error message from the JSON error event and stderr together (for message checks).
    var allMessages: String { (error?.message ?? "") + "\n" + stderr }

    var description: String {
        var s = "ferry \(args.joined(separator: " "))\n  exit \(status)"
        if signaled { s += " (signal)" }
        if timedOut { s += " (TIMED OUT, killed)" }
        s += "\n  stdout (last lines): "
            + stdout.split(separator: "\n").suffix(4).joined(separator: "\n    ")
        s += "\n  stderr: " + String(stderr.suffix(2000))
        return s
    }

    init(_ p: FerryProcess, timedOut: Bool) {
        status = p.process.isRunning ? -1 : p.process.terminationStatus
        signaled = !p.process.isRunning && p.process.terminationReason == .uncaughtSignal
        self.timedOut = timedOut
        stdout = p.stdout
        stderr = p.stderr
        jsonLines = p.jsonLines
        args = p.arguments
    }
}

extension Sandbox {
    /// Starts `ferry cp OPTIONS --json --token-file T SRC DST` without waiting.
    func startCp(
        _ src: String, _ dst: String, options: [String] = [], tokenFile: String? = nil,
        json: Bool = true
    ) throws -> FerryProcess {
        var args = ["cp"] + options
        if json { args.append("--json") }
        if !options.contains("--ca") { args += ["--ca", ca] }
        if !options.contains("--cert") || tokenFile != nil { args += ["--token-file", tokenFile ?? self.tokenFile] }
        args += [src, dst]
        return try FerryProcess(args, logDir: path + "/logs")
    }

    /// Runs `ferry cp` to completion (bounded by `timeout` seconds; killed after that).
    func cp(
        _ src: String, _ dst: String, options: [String] = [], tokenFile: String? = nil,
        json: Bool = true, timeout: Double = 180
    ) throws -> CpResult {
        let p = try startCp(src, dst, options: options, tokenFile: tokenFile, json: json)
        return finish(p, timeout: timeout)
    }

    /// Runs `ferry ARGS` to completion (for usage-error checks).
    func ferry(_ args: [String], timeout: Double = 30) throws -> CpResult {
        let p = try FerryProcess(args, logDir: path + "/logs")
        return finish(p, timeout: timeout)
    }

    func finish(_ p: FerryProcess, timeout: Double) -> CpResult {
        let exited = p.waitExit(timeout: timeout)
        if !exited { p.kill9() }
        return CpResult(p, timedOut: !exited)
    }
}

// MARK: - ferry serve

/// A running `ferry serve`; stopped (SIGTERM, then SIGKILL) by `stop()` or deinit.
final class FerryServer {
    let process: FerryProcess
    /// The printed listener addresses, e.g. "127.0.0.1:43521" or "[::1]:43521".
    let addresses: [String]
    let root: String

    /// `runAsRoot`: map every user to root (`--run-as root`) unless `extra` maps identities.
    init(_ sandbox: Sandbox, root: String, listen: [String] = ["127.0.0.1:0"], extra: [String] = [], runAsRoot: Bool = true, journalStream: Bool = false)
        throws
    {
        self.root = root
        var args = ["serve"]
        if !extra.contains("--config") && !extra.contains("--export") { args += ["--root", root] }
        for l in listen { args += ["--listen", l] }
        if !extra.contains("--cert") { args += ["--cert", sandbox.centerCert, "--key", sandbox.centerKey] }
        // The tests run as root with the token user "alice", which has no local account: the
        // server acts as root unless a test maps identities itself (IdentityTests do).
        if runAsRoot && !extra.contains("--config") && !extra.contains("--run-as") && !extra.contains("--map") { args += ["--run-as", "root"] }
        if !extra.contains("--ca") { args += ["--ca", sandbox.ca] }
        args += extra
        let p = try FerryProcess(args, logDir: sandbox.path + "/logs", journalStream: journalStream)
        process = p
        var found: [String] = []
        let ok = waitUntil(timeout: 20, interval: 0.02) {
            found = FerryServer.parseListening(p.stdout)
            return found.count >= listen.count || !p.isRunning
        }
        guard ok, found.count >= listen.count else {
            let out = p.stdout
            let err = p.stderr
            p.kill9()
            throw HarnessError(
                "ferry serve did not print \(listen.count) 'listening on' line(s) within 20 s;"
                    + " stdout: \(out) stderr: \(err)")
        }
        addresses = found
    }

    static func parseListening(_ text: String) -> [String] {
        let marker = " listening on "
        return text.split(separator: "\n").compactMap { line in
            guard let r = line.range(of: marker) else { return nil }
            return String(line[r.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
    }

    var address: String { addresses[0] }

    /// The port of the first listener.
    var port: Int {
        Int(address.split(separator: ":").last ?? "") ?? -1
    }

    /// `ferry://ADDRESS/path` for the first listener (or the given address).
    func url(_ path: String, address: String? = nil) -> String {
        "ferry://\(address ?? self.address)/\(path)"
    }

    var isRunning: Bool { process.isRunning }

    /// SIGTERM, then SIGKILL after the grace period; true when it exited on SIGTERM in time.
    @discardableResult
    func stop(grace: Double = 5) -> Bool { process.terminate(grace: grace) }

    func kill9() { process.kill9() }

    deinit { process.terminate(grace: 3) }
}

// MARK: - Files

func randomHex(bytes n: Int) -> String {
    var rng = SystemRandomNumberGenerator()
    return (0..<n).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }
        .joined()
}

func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
        throw HarnessError("cannot create \(path)")
    }
}

func readFile(_ path: String) -> [UInt8]? {
    guard let d = FileManager.default.contents(atPath: path) else { return nil }
    return [UInt8](d)
}

/// Fills `n` bytes at `ptr` from /dev/urandom.
func fillRandom(_ ptr: UnsafeMutableRawPointer, _ n: Int) {
    let fd = open("/dev/urandom", O_RDONLY)
    precondition(fd >= 0, "cannot open /dev/urandom")
    defer { close(fd) }
    var got = 0
    var failures = 0
    while got < n {
        let r = read(fd, ptr + got, n - got)
        if r > 0 {
            got += r
        } else {
            failures += 1
            precondition(failures < 1000, "reading /dev/urandom keeps failing")
        }
    }
}

/// Random bytes from /dev/urandom.
func randomBytes(_ n: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: n)
    if n > 0 { out.withUnsafeMutableBytes { fillRandom($0.baseAddress!, n) } }
    return out
}

/// Creates (or truncates) `path` and fills it with `size` random bytes.
func writeRandomFile(_ path: String, size: Int) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw HarnessError("open \(path): errno \(errno)") }
    defer { close(fd) }
    try writeRandom(fd: fd, offset: 0, count: size, path: path)
}

/// Writes `count` random bytes at `offset` of an open file.
func writeRandom(fd: Int32, offset: Int, count: Int, path: String) throws {
    let block = 4 * E2E.MiB
    var buf = [UInt8](repeating: 0, count: min(block, max(count, 1)))
    var done = 0
    while done < count {
        let n = min(buf.count, count - done)
        try buf.withUnsafeMutableBytes { raw in
            fillRandom(raw.baseAddress!, n)
            var written = 0
            while written < n {
                let w = pwrite(fd, raw.baseAddress! + written, n - written, off_t(offset + done + written))
                if w < 0 {
                    if errno == EINTR { continue }
                    throw HarnessError("pwrite \(path): errno \(errno)")
                }
                written += w
            }
        }
        done += n
    }
}

/// Byte-by-byte comparison of two regular files (reads both in 4 MiB blocks).
func filesIdentical(_ a: String, _ b: String) -> Bool {
    let fa = open(a, O_RDONLY)
    let fb = open(b, O_RDONLY)
    defer {
        if fa >= 0 { close(fa) }
        if fb >= 0 { close(fb) }
    }
    guard fa >= 0, fb >= 0 else { return false }
    var sa = stat()
    var sb = stat()
    guard fstat(fa, &sa) == 0, fstat(fb, &sb) == 0, sa.st_size == sb.st_size else { return false }
    let block = 4 * E2E.MiB
    let ba = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 4096)
    let bb = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 4096)
    defer {
        ba.deallocate()
        bb.deallocate()
    }
    var offset: off_t = 0
    let size = off_t(sa.st_size)
    // Bounded: size / block iterations (plus retries for short reads, which advance offset).
    while offset < size {
        let want = min(block, Int(size - offset))
        let ra = preadFully(fa, ba, want, offset)
        let rb = preadFully(fb, bb, want, offset)
        guard ra == want, rb == want else { return false }
        if memcmp(ba, bb, want) != 0 { return false }
        offset += off_t(want)
    }
    return true
}

private func preadFully(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ n: Int, _ offset: off_t)
    -> Int
{
    var got = 0
    while got < n {
        let r = pread(fd, buf + got, n - got, offset + off_t(got))
        if r < 0 && errno == EINTR { continue }
        if r <= 0 { break }
        got += r
    }
    return got
}

func fileSize(_ path: String) -> Int? {
    var st = stat()
    guard lstat(path, &st) == 0 else { return nil }
    return Int(st.st_size)
}

/// Bytes actually allocated on disk (st_blocks × 512).
func allocatedBytes(_ path: String) -> Int? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return Int(st.st_blocks) * 512
}

func exists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
}

/// Sets atime and mtime (without following a symlink).
/// Changes one byte of `path` in place and puts its access and modification times back.
func flipByte(_ path: String, at offset: Int) throws {
    var st = stat()
    guard stat(path, &st) == 0 else { throw HarnessError("stat \(path)") }
    let fd = open(path, O_RDWR)
    guard fd >= 0 else { throw HarnessError("open \(path)") }
    defer { close(fd) }
    var b: UInt8 = 0
    guard pread(fd, &b, 1, off_t(offset)) == 1 else { throw HarnessError("read \(path)") }
    b ^= 0x5a
    guard pwrite(fd, &b, 1, off_t(offset)) == 1 else { throw HarnessError("write \(path)") }
    var times = [st.st_atim, st.st_mtim]
    guard futimens(fd, &times) == 0 else { throw HarnessError("futimens \(path)") }
}

func setMtime(_ path: String, seconds: Int, nanoseconds: Int = 0) throws {
    var times = [
        timespec(tv_sec: seconds, tv_nsec: nanoseconds),
        timespec(tv_sec: seconds, tv_nsec: nanoseconds),
    ]
    guard utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) == 0 else {
        throw HarnessError("utimensat \(path): errno \(errno)")
    }
}

struct FileMeta: Equatable, CustomStringConvertible {
    enum Kind: Equatable { case file, dir, symlink, other }
    let kind: Kind
    let mode: UInt32  // permission bits
    let size: Int
    let mtimeSeconds: Int
    let mtimeNanoseconds: Int
    let linkTarget: String?

    var description: String {
        "\(kind) mode \(String(mode, radix: 8)) size \(size) mtime \(mtimeSeconds).\(mtimeNanoseconds)"
            + (linkTarget.map { " -> \($0)" } ?? "")
    }
}

func meta(_ path: String) -> FileMeta? {
    var st = stat()
    guard lstat(path, &st) == 0 else { return nil }
    let fmt = st.st_mode & S_IFMT
    let kind: FileMeta.Kind =
        fmt == S_IFREG ? .file : fmt == S_IFDIR ? .dir : fmt == S_IFLNK ? .symlink : .other
    var target: String? = nil
    if kind == .symlink {
        var buf = [CChar](repeating: 0, count: 4097)
        let n = readlink(path, &buf, 4096)
        if n >= 0 {
            target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
    return FileMeta(
        kind: kind, mode: UInt32(st.st_mode & 0o7777), size: Int(st.st_size),
        mtimeSeconds: Int(st.st_mtim.tv_sec), mtimeNanoseconds: Int(st.st_mtim.tv_nsec),
        linkTarget: target)
}

/// Names in a directory (raw, unsorted, without "." and ".."), via opendir so that names keep
/// their exact bytes.
func listDirectory(_ path: String) -> [String]? {
    guard let d = opendir(path) else { return nil }
    defer { closedir(d) }
    var names: [String] = []
    // Bounded by the directory's entry count.
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { raw -> String in
            let bytes = raw.bindMemory(to: UInt8.self)
            let len = bytes.firstIndex(of: 0) ?? bytes.count
            return String(decoding: bytes[0..<len], as: UTF8.self)
        }
        if name == "." || name == ".." { continue }
        names.append(name)
    }
    return names
}

/// All entries beneath `root` as relative paths (depth-first, iterative; symlinks not followed).
func walkTree(_ root: String) -> [String] {
    var out: [String] = []
    var stack: [String] = [""]
    while let rel = stack.popLast() {
        let full = rel.isEmpty ? root : root + "/" + rel
        guard let names = listDirectory(full) else { continue }
        for name in names {
            let childRel = rel.isEmpty ? name : rel + "/" + name
            out.append(childRel)
            if meta(root + "/" + childRel)?.kind == .dir { stack.append(childRel) }
        }
    }
    return out.sorted()
}

/// Differences between two trees (empty when they mirror each other): same entries (by exact
/// name bytes), same kinds, same content, same symlink targets; with `checkMetadata`, also the
/// same permission bits for files and directories and the same mtime for files (to the
/// microsecond). Directory mtimes are checked when `checkDirMtime` is set.
func treeDifferences(
    _ a: String, _ b: String, checkMetadata: Bool = true, checkDirMtime: Bool = false,
    limit: Int = 20
) -> [String] {
    var diffs: [String] = []
    let ea = walkTree(a)
    let eb = walkTree(b)
    let setA = Set(ea.map { Array($0.utf8) })
    let setB = Set(eb.map { Array($0.utf8) })
    for rel in ea where !setB.contains(Array(rel.utf8)) {
        diffs.append("missing at destination: \(rel)")
        if diffs.count >= limit { return diffs }
    }
    for rel in eb where !setA.contains(Array(rel.utf8)) {
        diffs.append("extra at destination: \(rel)")
        if diffs.count >= limit { return diffs }
    }
    for rel in ea where setB.contains(Array(rel.utf8)) {
        guard let ma = meta(a + "/" + rel), let mb = meta(b + "/" + rel) else {
            diffs.append("cannot stat \(rel)")
            continue
        }
        if ma.kind != mb.kind {
            diffs.append("\(rel): kind \(ma.kind) vs \(mb.kind)")
        } else {
            switch ma.kind {
            case .file:
                if !filesIdentical(a + "/" + rel, b + "/" + rel) {
                    diffs.append("\(rel): content differs (size \(ma.size) vs \(mb.size))")
                }
                if checkMetadata {
                    if ma.mode != mb.mode {
                        diffs.append(
                            "\(rel): mode \(String(ma.mode, radix: 8)) vs \(String(mb.mode, radix: 8))")
                    }
                    if ma.mtimeSeconds != mb.mtimeSeconds
                        || abs(ma.mtimeNanoseconds - mb.mtimeNanoseconds) >= 1000
                    {
                        diffs.append(
                            "\(rel): mtime \(ma.mtimeSeconds).\(ma.mtimeNanoseconds) vs \(mb.mtimeSeconds).\(mb.mtimeNanoseconds)"
                        )
                    }
                }
            case .dir:
                if checkMetadata && ma.mode != mb.mode {
                    diffs.append(
                        "\(rel)/: mode \(String(ma.mode, radix: 8)) vs \(String(mb.mode, radix: 8))")
                }
                if checkDirMtime && ma.mtimeSeconds != mb.mtimeSeconds {
                    diffs.append("\(rel)/: mtime \(ma.mtimeSeconds) vs \(mb.mtimeSeconds)")
                }
            case .symlink:
                if ma.linkTarget != mb.linkTarget {
                    diffs.append(
                        "\(rel): link target \(ma.linkTarget ?? "?") vs \(mb.linkTarget ?? "?")")
                }
            case .other:
                break
            }
        }
        if diffs.count >= limit { return diffs }
    }
    return diffs
}

/// Leftover `.NAME.ferry-part` / `.NAME.ferry-journal` / `.NAME.v<VERSION>.ferry-stripe` helper files beneath `root`.
func ferryLeftovers(_ root: String) -> [String] {
    walkTree(root).filter { $0.hasSuffix(".ferry-part") || $0.hasSuffix(".ferry-journal") || $0.hasSuffix(".ferry-stripe") }
}

// MARK: - Raw TCP (bad clients and the proxy)

/// A blocking IPv4 TCP socket connected to 127.0.0.1:port (loopback only).
final class RawClient {
    private(set) var fd: Int32

    /// Connects within `timeout` seconds (non-blocking connect + poll), then goes blocking.
    init(port: Int, timeout: Double = 5) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: errno \(errno)") }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        var addr = loopbackAddress(port: port)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        var err: Int32 = r == 0 ? 0 : errno
        if r != 0 && err == EINPROGRESS {
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            if poll(&pfd, 1, Int32(timeout * 1000)) == 1 {
                var soErr: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soErr, &len)
                err = soErr
            } else {
                err = ETIMEDOUT
            }
        }
        guard err == 0 else {
            close(fd)
            fd = -1
            throw HarnessError("connect 127.0.0.1:\(port): errno \(err)")
        }
        _ = fcntl(fd, F_SETFL, flags)
    }

    /// Sends everything; false when the peer has closed or reset the connection.
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        sendAll(fd, bytes, bytes.count)
    }

    func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    /// Reads until the peer closes (EOF or reset) or `timeout` seconds pass.
    /// Returns what was read and whether the connection was closed by the peer.
    func readUntilClosed(timeout: Double, maxBytes: Int = 1 << 20) -> (data: [UInt8], closed: Bool) {
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        let deadline = monotonicSeconds() + timeout
        let maxIterations = Int(timeout / 0.05) + 4096
        for _ in 0..<maxIterations {
            let left = deadline - monotonicSeconds()
            if left <= 0 { break }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let pr = poll(&pfd, 1, Int32(min(left, 0.05) * 1000) + 1)
            if pr < 0 && errno == EINTR { continue }
            if pr <= 0 { continue }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n == 0 { return (data, true) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return (data, true)  // ECONNRESET and friends: closed
            }
            if data.count < maxBytes { data += buf[0..<n] }
        }
        return (data, false)
    }

    deinit { if fd >= 0 { close(fd) } }
}

/// A loopback port that was free a moment ago (bound to port 0, read back, closed).
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw HarnessError("socket: errno \(errno)") }
    defer { close(fd) }
    var addr = loopbackAddress(port: 0)
    let b = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard b == 0 else { throw HarnessError("bind: errno \(errno)") }
    var bound = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &bound) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return Int(UInt16(bigEndian: bound.sin_port))
}

func loopbackAddress(port: Int) -> sockaddr_in {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port)).bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    return addr
}

func sendAll(_ fd: Int32, _ ptr: UnsafeRawPointer, _ count: Int) -> Bool {
    var sent = 0
    var spins = 0
    while sent < count {
        let n = Glibc.send(fd, ptr + sent, count - sent, Int32(MSG_NOSIGNAL))
        if n < 0 {
            if errno == EINTR || errno == EAGAIN {
                spins += 1
                if spins > 100_000 { return false }
                continue
            }
            return false
        }
        sent += n
    }
    return true
}

func sendAll(_ fd: Int32, _ bytes: [UInt8], _ count: Int) -> Bool {
    bytes.withUnsafeBytes { sendAll(fd, $0.baseAddress!, count) }
}

// MARK: - Wire helpers (docs/CONTRACT.md, "Wire")

enum Wire {
    static let magic: [UInt8] = Array("FERRY".utf8) + [0, 0, 0]
    static let errorFrameType: UInt8 = 0x7F

    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
    static func le32(_ v: UInt32) -> [UInt8] {
        [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF), UInt8((v >> 16) & 0xFF), UInt8(v >> 24)]
    }

    /// The 16-byte connection preamble.
    static func preamble(
        magic: [UInt8] = Wire.magic, version: UInt16 = 1, role: UInt16 = 1, reserved: UInt32 = 0
    ) -> [UInt8] {
        magic + le16(version) + le16(role) + le32(reserved)
    }

    /// A frame: u32 length, u8 type, u8 flags, u16 reserved, payload.
    static func frame(
        type: UInt8, flags: UInt8 = 0, reserved: UInt16 = 0, payload: [UInt8],
        length: UInt32? = nil
    ) -> [UInt8] {
        le32(length ?? UInt32(payload.count)) + [type, flags] + le16(reserved) + payload
    }

    /// Parses a leading ERROR frame from received bytes: its message, or nil.
    static func errorMessage(in data: [UInt8]) -> String? {
        guard data.count >= 8, data[4] == errorFrameType else { return nil }
        let len = Int(data[0]) | Int(data[1]) << 8 | Int(data[2]) << 16 | Int(data[3]) << 24
        guard len > 0, data.count >= 8 + len else { return nil }
        return String(validating: data[8..<(8 + len)], as: UTF8.self)
    }
}
