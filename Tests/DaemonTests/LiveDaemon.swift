// A real `ferry serve` with a [daemon] table, for the daemon's own suites: the built binary
// (FERRY_BIN, else .build/debug/ferry) in its own temporary directory with its own federation
// CA, talked to over real sockets on 127.0.0.1 only. Every wait is bounded; every process runs
// under coreutils `timeout` and is stopped by the test (or its deinit).

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct LiveError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

enum Live {
    static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var ferry: String {
        if let bin = ProcessInfo.processInfo.environment["FERRY_BIN"], !bin.isEmpty { return bin }
        return packageRoot + "/.build/debug/ferry"
    }

    static func seconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Polls `condition` until it holds or `timeout` seconds pass (bounded iterations).
    @discardableResult
    static func wait(_ timeout: Double, interval: Double = 0.05, _ condition: () -> Bool) -> Bool {
        let end = seconds() + timeout
        for _ in 0..<(Int(timeout / interval) + 2) {
            if condition() { return true }
            if seconds() >= end { break }
            usleep(useconds_t(interval * 1e6))
        }
        return condition()
    }

    /// Runs `ferry ARGS` to its end (at most 60 s): status and output (stdout then stderr).
    static func run(_ args: [String], in dir: String) -> (status: Int32, output: String) {
        let out = dir + "/tool-\(UUID().uuidString).out"
        FileManager.default.createFile(atPath: out, contents: nil)
        defer { unlink(out) }
        guard let h = FileHandle(forWritingAtPath: out) else { return (-1, "cannot write \(out)") }
        defer { try? h.close() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        p.arguments = ["-k", "5", "60", ferry] + args
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        var env = ProcessInfo.processInfo.environment
        env["FERRY_CONFIG"] = ""
        p.environment = env
        p.standardOutput = h
        p.standardError = h
        p.standardInput = FileHandle.nullDevice
        do { try unblocked { try p.run() } } catch { return (-1, "\(error)") }
        _ = wait(75, interval: 0.02) { !p.isRunning }
        let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        return (p.isRunning ? -1 : p.terminationStatus, text)
    }

    /// The test runner may block signals in its threads; a child inherits that mask and would
    /// never see SIGTERM.
    static func unblocked<T>(_ body: () throws -> T) rethrows -> T {
        var empty = sigset_t(), old = sigset_t()
        sigemptyset(&empty)
        pthread_sigmask(SIG_SETMASK, &empty, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        return try body()
    }
}

/// A temporary directory (mode 0755: accounts the daemon acts as can traverse it) with a CA
/// and the certificates of centers hlrs and wuxi (pki/).
final class LiveSandbox {
    let path: String
    var pki: String { path + "/pki" }

    init(_ name: String) throws {
        var t = Array("/tmp/ferry-dt-\(name)-XXXXXX".utf8CString)
        guard mkdtemp(&t) != nil else { throw LiveError("mkdtemp failed: errno \(errno)") }
        path = String(cString: t)
        chmod(path, 0o755)
        try tool(["ca", "init", "--dir", pki])
        for c in ["hlrs", "wuxi"] { try tool(["ca", "issue", "--dir", pki, "--center", c, "--host", "127.0.0.1"]) }
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    @discardableResult
    func tool(_ args: [String]) throws -> String {
        let r = Live.run(args, in: path)
        guard r.status == 0 else { throw LiveError("ferry \(args.joined(separator: " ")): \(r.output)") }
        return r.output
    }

    /// A token issued by `center`'s key for `user` with `scopes`.
    func token(_ user: String, _ scopes: [String], by center: String = "hlrs") throws -> String {
        var args = ["token", "issue", "--cert", "\(pki)/\(center).crt", "--key", "\(pki)/\(center).key", "--user", user, "--ttl", "2h"]
        for s in scopes { args += ["--scope", s] }
        return try tool(args).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @discardableResult
    func dir(_ rel: String, mode: mode_t = 0o755) throws -> String {
        let p = path + "/" + rel
        try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        chmod(p, mode)
        return p
    }

    func write(_ rel: String, _ text: String, mode: mode_t = 0o644) throws {
        let p = path + "/" + rel
        try Data(text.utf8).write(to: URL(fileURLWithPath: p))
        chmod(p, mode)
    }
}

/// One running `ferry serve --config FILE` (stdout and stderr in files beside it).
final class LiveServer {
    let process = Process()
    let out: String
    let err: String
    /// The transfer server's address and the API's port (0 without a daemon).
    private(set) var transferPort = 0
    private(set) var apiPort = 0

    init(_ sb: LiveSandbox, config: String, name: String, daemon: Bool) throws {
        out = sb.path + "/\(name).out"
        err = sb.path + "/\(name).err"
        FileManager.default.createFile(atPath: out, contents: nil)
        FileManager.default.createFile(atPath: err, contents: nil)
        guard let o = FileHandle(forWritingAtPath: out), let e = FileHandle(forWritingAtPath: err) else { throw LiveError("logs") }
        process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        process.arguments = ["-k", "5", "600", Live.ferry, "serve", "--config", sb.path + "/" + config]
        process.currentDirectoryURL = URL(fileURLWithPath: sb.path)
        var env = ProcessInfo.processInfo.environment
        env["FERRY_CONFIG"] = ""
        process.environment = env
        process.standardOutput = o
        process.standardError = e
        process.standardInput = FileHandle.nullDevice
        try Live.unblocked { try process.run() }
        try? o.close()
        try? e.close()
        let ok = Live.wait(30) {
            let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") {
                if let r = line.range(of: " listening on "), transferPort == 0, !line.contains("api listening") {
                    transferPort = Int(line[r.upperBound...].split(separator: ":").last ?? "") ?? 0
                }
                if let r = line.range(of: "api listening on http://127.0.0.1:") { apiPort = Int(line[r.upperBound...]) ?? 0 }
            }
            return (transferPort > 0 && (!daemon || apiPort > 0)) || !process.isRunning
        }
        guard ok, transferPort > 0, !daemon || apiPort > 0 else {
            stop()
            throw LiveError("ferry serve did not start: \((try? String(contentsOfFile: out, encoding: .utf8)) ?? "") \((try? String(contentsOfFile: err, encoding: .utf8)) ?? "")")
        }
    }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        if !Live.wait(10, { !process.isRunning }) {
            kill(process.processIdentifier, SIGKILL)
            _ = Live.wait(10) { !process.isRunning }
        }
    }

    deinit { stop() }
}

/// HTTP/1.1 over a TCP socket to 127.0.0.1 (no library between the test and the daemon's
/// parser): one request per connection, or many on one kept alive.
final class LiveHTTP {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw LiveError("socket: \(errno)") }
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = UInt16(port).bigEndian
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0 else { close(fd); throw LiveError("connect to 127.0.0.1:\(port): errno \(errno)") }
    }

    deinit { close(fd) }

    private var buffer: [UInt8] = []

    /// Sends one request and reads its answer (status, body), by Content-Length or chunks.
    func request(_ method: String, _ path: String, token: String? = nil, body: [UInt8]? = nil, headers: [String] = []) throws -> (status: Int, body: String) {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        for h in headers { head += h + "\r\n" }
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        head += "\r\n"
        let bytes = Array(head.utf8) + (body ?? [])
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 {
                // The daemon may answer (413) and close before a large body is all sent.
                if sent > head.utf8.count { break }
                throw LiveError("send: errno \(errno)")
            }
            sent += n
        }
        return try readAnswer()
    }

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw LiveError("connection closed or timed out (errno \(errno))") }
        buffer += chunk[..<n]
    }

    private func readAnswer() throws -> (status: Int, body: String) {
        var headEnd: Int?
        for _ in 0..<10_000 {
            if let i = find([13, 10, 13, 10]) { headEnd = i; break }
            try fill()
        }
        guard let headEnd else { throw LiveError("no answer head") }
        let head = String(decoding: buffer[..<headEnd], as: UTF8.self)
        buffer.removeFirst(headEnd + 4)
        let lines = head.components(separatedBy: "\r\n")
        let status = Int(lines[0].split(separator: " ").dropFirst().first ?? "") ?? 0
        var length: Int?
        var chunked = false
        for l in lines.dropFirst() {
            let lower = l.lowercased()
            if lower.hasPrefix("content-length:") { length = Int(lower.dropFirst(15).trimmingCharacters(in: .whitespaces)) }
            if lower.hasPrefix("transfer-encoding:") && lower.contains("chunked") { chunked = true }
        }
        var body: [UInt8] = []
        if let length {
            for _ in 0..<100_000 where buffer.count < length { try fill() }
            body = Array(buffer[..<length])
            buffer.removeFirst(length)
        } else if chunked {
            for _ in 0..<100_000 {
                guard let crlf = find([13, 10]) else { try fill(); continue }
                let size = Int(String(decoding: buffer[..<crlf], as: UTF8.self).split(separator: ";")[0], radix: 16) ?? 0
                for _ in 0..<100_000 where buffer.count < crlf + 2 + size + 2 { try fill() }
                body += buffer[(crlf + 2)..<(crlf + 2 + size)]
                buffer.removeFirst(crlf + 2 + size + 2)
                if size == 0 { break }
            }
        }
        return (status, String(decoding: body, as: UTF8.self))
    }

    private func find(_ needle: [UInt8]) -> Int? {
        guard buffer.count >= needle.count else { return nil }
        for i in 0...(buffer.count - needle.count) where buffer[i] == needle[0] && Array(buffer[i..<(i + needle.count)]) == needle { return i }
        return nil
    }

    /// One request on its own connection.
    static func once(_ port: Int, _ method: String, _ path: String, token: String? = nil, body: String? = nil) throws -> (status: Int, body: String) {
        try LiveHTTP(port: port).request(method, path, token: token, body: body.map { Array($0.utf8) })
    }

    static func object(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
    }
}

/// Centers hlrs (`ferry serve` with a [daemon], its audit log `hlrs-audit.jsonl`, its queue
/// `hlrs-jobs.sqlite`) and wuxi (a transfer server whose exports `incoming` (rw) and
/// `outgoing` (ro) admit `center:hlrs`, acting as root), both on 127.0.0.1.
/// `hlrsTop`: top-level lines of hlrs's configuration; `hlrsDaemon`: lines of its [daemon]
/// table; `hlrsTables`: tables appended (`[[identity]]`). hlrs's export `scratch`
/// (sandbox/hlrs/scratch, rw, every user) is the one its users' jobs use.
final class LiveCenters {
    let sb: LiveSandbox
    let wuxi: LiveServer
    let hlrs: LiveServer
    var api: Int { hlrs.apiPort }
    var audit: String { sb.path + "/hlrs-audit.jsonl" }
    var scratch: String { sb.path + "/hlrs/scratch" }
    var incoming: String { sb.path + "/wuxi/incoming" }
    var outgoing: String { sb.path + "/wuxi/outgoing" }

    init(_ name: String, hlrsTop: String = "", hlrsDaemon: String = "", hlrsTables: String = "") throws {
        sb = try LiveSandbox(name)
        try sb.dir("hlrs/scratch")
        try sb.dir("wuxi/incoming")
        try sb.dir("wuxi/outgoing")
        try sb.write("wuxi.toml", """
            center = "wuxi"
            listen = ["127.0.0.1:0"]
            run_as = "root"
            certificate = "pki/wuxi.crt"
            key = "pki/wuxi.key"
            ca = "pki/ca.crt"
            [[export]]
            name = "incoming"
            path = "wuxi/incoming"
            access = "rw"
            users = ["center:hlrs"]
            [[export]]
            name = "outgoing"
            path = "wuxi/outgoing"
            access = "ro"
            users = ["center:hlrs"]

            """)
        wuxi = try LiveServer(sb, config: "wuxi.toml", name: "wuxi", daemon: false)
        try sb.write("hlrs.toml", """
            center = "hlrs"
            listen = ["127.0.0.1:0"]
            \(hlrsTop)
            certificate = "pki/hlrs.crt"
            key = "pki/hlrs.key"
            ca = "pki/ca.crt"
            audit_log = "hlrs-audit.jsonl"
            [daemon]
            database = "hlrs-jobs.sqlite"
            api_listen = "127.0.0.1:0"
            workers = 2
            max_attempts = 1
            \(hlrsDaemon)
            [[peer]]
            name = "wuxi"
            address = "127.0.0.1:\(wuxi.transferPort)"
            [[export]]
            name = "scratch"
            path = "hlrs/scratch"
            access = "rw"
            users = ["*"]
            \(hlrsTables)

            """)
        hlrs = try LiveServer(sb, config: "hlrs.toml", name: "hlrs", daemon: true)
    }

    func stop() {
        hlrs.stop()
        wuxi.stop()
    }

    /// The audit log's lines, parsed.
    func auditLines() -> [[String: Any]] {
        let text = (try? String(contentsOfFile: audit, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map { LiveHTTP.object(String($0)) }
    }

    var auditBytes: Int {
        var st = stat()
        return stat(audit, &st) == 0 ? Int(st.st_size) : 0
    }

    /// Waits (at most `timeout` s) for job `id` to reach a final state; the job as the API
    /// shows it to `token`.
    func waitJob(_ id: Int, token: String, timeout: Double = 90) throws -> [String: Any] {
        var job: [String: Any] = [:]
        _ = Live.wait(timeout, interval: 0.2) {
            guard let r = try? LiveHTTP.once(api, "GET", "/api/v1/transfers/\(id)", token: token) else { return false }
            job = LiveHTTP.object(r.body)
            let state = job["state"] as? String ?? ""
            return ["success", "skipped", "failed", "upstream_failed"].contains(state)
        }
        return job
    }
}
