// Hostile and broken clients: each gets a clear error or is closed in bounded time, and the
// server keeps serving a valid transfer meanwhile. Also a wrong token and usage errors.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One misbehaving raw client.
struct BadClient: Sendable, CustomStringConvertible {
    let name: String
    let bytes: [UInt8]
    /// Half-close after sending (the server sees EOF).
    let shutdownWrite: Bool
    /// The server must answer with an ERROR frame (type 0x7F) carrying a UTF-8 message.
    let requireErrorFrame: Bool
    /// The server must have closed the connection within this many seconds.
    let closeWithinSeconds: Double

    var description: String { name }

    static let handshakeTimeout = 2.0

    static func all() -> [BadClient] {
        let good = Wire.preamble()
        let slack = 6.0  // beyond the 2 s handshake timeout, for a loaded 2-core machine
        return [
            BadClient(
                name: "garbage instead of a preamble", bytes: Array(randomBytes(64)),
                shutdownWrite: false, requireErrorFrame: false, closeWithinSeconds: 5),
            BadClient(
                name: "bad magic", bytes: Wire.preamble(magic: Array("FERRX\0\0\0".utf8)),
                shutdownWrite: false, requireErrorFrame: true, closeWithinSeconds: 5),
            BadClient(
                name: "unsupported protocol version 99", bytes: Wire.preamble(version: 99),
                shutdownWrite: false, requireErrorFrame: true, closeWithinSeconds: 5),
            BadClient(
                name: "unknown role 9", bytes: Wire.preamble(role: 9),
                shutdownWrite: false, requireErrorFrame: true, closeWithinSeconds: 5),
            BadClient(
                name: "nonzero reserved field in the preamble", bytes: Wire.preamble(reserved: 7),
                shutdownWrite: false, requireErrorFrame: true, closeWithinSeconds: 5),
            BadClient(
                name: "frame length 0xFFFFFFFF",
                bytes: good + Wire.frame(type: 1, payload: [], length: 0xFFFF_FFFF),
                shutdownWrite: false, requireErrorFrame: true, closeWithinSeconds: 5),
            BadClient(
                name: "control frame of 16 MiB + 1",
                bytes: good + Wire.frame(type: 1, payload: [], length: 16 * 1024 * 1024 + 1),
                shutdownWrite: false, requireErrorFrame: true, closeWithinSeconds: 5),
            BadClient(
                name: "unknown frame type 0xEE", bytes: good + Wire.frame(type: 0xEE, payload: []),
                shutdownWrite: false, requireErrorFrame: true, closeWithinSeconds: 5),
            BadClient(
                name: "nonzero reserved field in a frame header",
                bytes: good + Wire.frame(type: 1, reserved: 0xBEEF, payload: []),
                shutdownWrite: false, requireErrorFrame: true, closeWithinSeconds: 5),
            BadClient(
                name: "garbage frame payload",
                bytes: good + Wire.frame(type: 1, payload: Array(randomBytes(40))),
                shutdownWrite: false, requireErrorFrame: false, closeWithinSeconds: 5),
            BadClient(
                name: "garbage frame header", bytes: good + Array(randomBytes(8)),
                shutdownWrite: false, requireErrorFrame: false, closeWithinSeconds: handshakeTimeout + slack),
            BadClient(
                name: "truncated frame, then EOF",
                bytes: good + Array(Wire.frame(type: 1, payload: Array(randomBytes(100))).prefix(18)),
                shutdownWrite: true, requireErrorFrame: false, closeWithinSeconds: 5),
            BadClient(
                name: "truncated frame, then silence",
                bytes: good + Array(Wire.frame(type: 1, payload: Array(randomBytes(100))).prefix(18)),
                shutdownWrite: false, requireErrorFrame: false,
                closeWithinSeconds: handshakeTimeout + slack),
            BadClient(
                name: "truncated preamble, then silence", bytes: Array(good.prefix(9)),
                shutdownWrite: false, requireErrorFrame: false,
                closeWithinSeconds: handshakeTimeout + slack),
            BadClient(
                name: "truncated preamble, then EOF", bytes: Array(good.prefix(9)),
                shutdownWrite: true, requireErrorFrame: false, closeWithinSeconds: 5),
            BadClient(
                name: "connects and says nothing", bytes: [],
                shutdownWrite: false, requireErrorFrame: false,
                closeWithinSeconds: handshakeTimeout + slack),
            BadClient(
                name: "valid control preamble, then nothing", bytes: good,
                shutdownWrite: false, requireErrorFrame: false,
                closeWithinSeconds: handshakeTimeout + slack),
            BadClient(
                name: "valid data preamble, then nothing", bytes: Wire.preamble(role: 2),
                shutdownWrite: false, requireErrorFrame: false,
                closeWithinSeconds: handshakeTimeout + slack),
        ]
    }
}

struct BadClientOutcome {
    let received: [UInt8]
    let closed: Bool
    let seconds: Double
    let connectError: String?
}

final class OutcomeBox: @unchecked Sendable {  // guarded by lock
    private let lock = NSLock()
    private var outcomes: [String: BadClientOutcome] = [:]
    func set(_ name: String, _ o: BadClientOutcome) {
        lock.lock()
        outcomes[name] = o
        lock.unlock()
    }
    func get(_ name: String) -> BadClientOutcome? {
        lock.lock()
        defer { lock.unlock() }
        return outcomes[name]
    }
}

/// Runs one bad client against 127.0.0.1:port and measures how the server answers.
func runBadClient(_ c: BadClient, port: Int) -> BadClientOutcome {
    let t0 = monotonicSeconds()
    do {
        let client = try RawClient(port: port)
        if !c.bytes.isEmpty { client.send(c.bytes) }
        if c.shutdownWrite { client.shutdownWrite() }
        let (data, closed) = client.readUntilClosed(timeout: c.closeWithinSeconds)
        return BadClientOutcome(
            received: data, closed: closed, seconds: monotonicSeconds() - t0, connectError: nil)
    } catch {
        return BadClientOutcome(
            received: [], closed: false, seconds: monotonicSeconds() - t0, connectError: "\(error)")
    }
}

@Suite("Bad input")
struct BadInputTests {
    @Test("broken and hostile clients get an error or are closed; a valid transfer meanwhile completes")
    func badClientsWhileTransferring() throws {
        let sb = try Sandbox("badclients")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let src = local + "/valid.bin"
        try writeRandomFile(src, size: 32 * E2E.MiB)
        // All the bad clients come from 127.0.0.1 at once: room for them in the unauthenticated
        // budget (its default of 8 per address is FloodTests' subject), so each gets its answer.
        let server = try FerryServer(sb, root: root, extra: ["--handshake-timeout", "2", "--max-unauthenticated-per-address", "64"])
        defer { server.stop() }

        // A valid transfer, slowed so that it runs while the bad clients do their worst.
        let valid = try sb.startCp(src, server.url("valid.bin"), options: ["--bwlimit", "8M"])
        _ = waitForProgress(valid, fraction: 0.05, timeout: 30)

        let cases = BadClient.all()
        let box = OutcomeBox()
        let group = DispatchGroup()
        let port = server.port
        for c in cases {
            group.enter()
            Thread {
                box.set(c.name, runBadClient(c, port: port))
                group.leave()
            }.start()
        }
        let allDone = group.wait(timeout: .now() + 60) == .success
        #expect(allDone, "bad clients did not finish within 60 s")

        for c in cases {
            guard let o = box.get(c.name) else {
                Issue.record("\(c.name): no outcome")
                continue
            }
            #expect(o.connectError == nil, "\(c.name): \(o.connectError ?? "")")
            #expect(
                o.closed,
                "\(c.name): connection still open after \(c.closeWithinSeconds) s (received \(o.received.count) bytes)")
            let message = Wire.errorMessage(in: o.received)
            if c.requireErrorFrame {
                #expect(
                    message != nil && !(message ?? "").isEmpty,
                    "\(c.name): expected an ERROR frame (0x7F) with a message; got \(o.received.count) bytes: \(o.received.prefix(32).map { String(format: "%02x", $0) }.joined())")
            } else if !o.received.isEmpty {
                #expect(
                    message != nil,
                    "\(c.name): the server sent something that is not an ERROR frame: \(o.received.prefix(32).map { String(format: "%02x", $0) }.joined())")
            }
            #expect(server.isRunning, "server died after: \(c.name)")
        }

        let r = sb.finish(valid, timeout: 60)
        #expect(r.succeeded, "valid transfer during the attacks: \(r)")
        #expect(filesIdentical(src, root + "/valid.bin"), "valid transfer's result differs")

        // And the server still serves afterwards.
        let back = local + "/back.bin"
        let pull = try sb.cp(server.url("valid.bin"), back)
        #expect(pull.succeeded, "\(pull)")
        #expect(filesIdentical(src, back))
        #expect(server.isRunning)
    }

    @Test("100 silent connections: all closed after the handshake timeout; a transfer still works")
    func manySilentConnections() throws {
        let sb = try Sandbox("silent")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let src = local + "/f.bin"
        try writeRandomFile(src, size: 3 * E2E.MiB)
        let server = try FerryServer(sb, root: root, extra: ["--handshake-timeout", "2", "--max-connections-per-address", "200",
                                                             "--max-unauthenticated", "256", "--max-unauthenticated-per-address", "200"])
        defer { server.stop() }

        let silent = try (0..<100).map { _ in try RawClient(port: server.port) }
        let r = try sb.cp(src, server.url("f.bin"))
        #expect(r.succeeded, "transfer while 100 silent clients hold connections: \(r)")
        #expect(filesIdentical(src, root + "/f.bin"))

        let t0 = monotonicSeconds()
        var stillOpen = 0
        for c in silent {
            let left = max(0.1, 10 - (monotonicSeconds() - t0))
            if !c.readUntilClosed(timeout: left).closed { stillOpen += 1 }
        }
        #expect(stillOpen == 0, "\(stillOpen) of 100 silent connections still open ~10 s later")
        #expect(server.isRunning)
    }

    @Test("a connection flood from one address is cut at its limit; another address still transfers; audited")
    func floodFromOneAddress() throws {
        let sb = try Sandbox("flood")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let audit = sb.file("audit.jsonl")
        try writeRandomFile(local + "/f.bin", size: 3 * E2E.MiB)
        let server = try FerryServer(
            sb, root: root, listen: ["127.0.0.1:0", "[::1]:0"],
            extra: ["--handshake-timeout", "20", "--max-connections-per-address", "8", "--audit-log", audit])
        defer { server.stop() }

        // 20 silent connections from 127.0.0.1: 8 are admitted (the unauthenticated budget of
        // one address; they wait for their handshake timeout), the other 12 are closed at once.
        let flood = try (0..<20).map { _ in try RawClient(port: server.port) }
        var closedAtOnce = 0
        for c in flood where c.readUntilClosed(timeout: 0.3).closed { closedAtOnce += 1 }
        #expect(closedAtOnce == 12, "\(closedAtOnce) of 20 flood connections closed at once, expected 12")

        // From ::1 (another address) a transfer still goes through.
        let v6 = try #require(server.addresses.first { $0.hasPrefix("[") })
        let r = try sb.cp(local + "/f.bin", server.url("f.bin", address: v6))
        #expect(r.succeeded, "\(r)")
        #expect(filesIdentical(local + "/f.bin", root + "/f.bin"))
        let text = (try? String(contentsOfFile: audit, encoding: .utf8)) ?? ""
        // Refusals of connections that never authenticated are audited once per address and
        // interval: the first at once (the count of the rest follows when the interval ends).
        let lines = text.components(separatedBy: "too many unauthenticated connections from 127.0.0.1").count - 1
        #expect(lines >= 1 && lines <= 2, "\(text)")
        #expect(server.isRunning)
    }

    @Test("wrong token: refused with a clear message, nothing written")
    func wrongToken() throws {
        let sb = try Sandbox("token")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        try writeRandomFile(local + "/f.bin", size: 100_000)
        try writeRandomFile(root + "/there.bin", size: 100_000)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let wrong = try sb.wrongTokenFile()

        let push = try sb.cp(local + "/f.bin", server.url("f.bin"), tokenFile: wrong, timeout: 30)
        #expect(push.status == 1, "\(push)")
        #expect(!exists(root + "/f.bin") && ferryLeftovers(root).isEmpty, "\(walkTree(root))")
        let pm = push.allMessages.lowercased()
        #expect(
            ["token", "auth", "denied", "permission"].contains { pm.contains($0) },
            "message should say the token was refused: \(push)")
        if let e = push.error {
            #expect(e.resumable == false, "a wrong token is not resumable: \(e.message)")
        } else {
            Issue.record("no {\"type\":\"error\"} line: \(push)")
        }

        let pull = try sb.cp(server.url("there.bin"), local + "/there.bin", tokenFile: wrong, timeout: 30)
        #expect(pull.status == 1, "\(pull)")
        #expect(!exists(local + "/there.bin"))
        #expect(ferryLeftovers(local).isEmpty)

        // Without --json too: a message on stderr.
        let plain = try sb.cp(
            local + "/f.bin", server.url("f.bin"), tokenFile: wrong, json: false, timeout: 30)
        #expect(plain.status == 1, "\(plain)")
        #expect(!plain.stderr.isEmpty, "no message on stderr: \(plain)")

        #expect(server.isRunning)
        let ok = try sb.cp(local + "/f.bin", server.url("f.bin"))
        #expect(ok.succeeded, "the right token still works: \(ok)")
    }

    @Test("usage errors exit 64 (EX_USAGE), with a message")
    func usageErrors() throws {
        let sb = try Sandbox("usage")
        let local = try sb.dir("local")
        try writeFile(local + "/a", [1, 2, 3])
        let t = sb.tokenFile
        let cases: [[String]] = [
            ["cp"],
            ["cp", "--token-file", t, local + "/a"],
            ["cp", "--token-file", t, local + "/a", local + "/b"],  // neither side remote
            ["cp", "--token-file", t, "ferry://127.0.0.1:1", "ferry://127.0.0.1:2/y"],  // third-party, no source path
            ["cp", "--token-file", t, "--bwlimit", "12Q", local + "/a", "ferry://127.0.0.1:1/a"],
            ["cp", "--token-file", t, "--chunk-size", "lots", local + "/a", "ferry://127.0.0.1:1/a"],
            ["cp", "--token-file", t, "--compress", "99", local + "/a", "ferry://127.0.0.1:1/a"],
            ["cp", "--token-file", t, "--no-such-option", local + "/a", "ferry://127.0.0.1:1/a"],
            ["cp", "--token-file", t, local + "/a", "ferry://127.0.0.1:99999/a"],  // bad port
            ["serve", "--root", local],  // no listener, no token
        ]
        for args in cases {
            let r = try sb.ferry(args)
            #expect(r.status == 64, "usage error should exit 64: \(r)")
            #expect(!r.stderr.isEmpty, "usage error without a message: \(r)")
        }
        // Two local paths and no credentials at all: what helps is that one side must be
        // remote, not a request for a CA and a token.
        let bare = sb.finish(try FerryProcess(["cp", local + "/a", local + "/b"], logDir: sb.path + "/logs",
                                              environment: ["FERRY_CA": nil, "FERRY_TOKEN_FILE": nil]), timeout: 30)
        #expect(bare.status == 64, "\(bare)")
        #expect(bare.stderr.contains("one side must be a ferry:// URL"), "\(bare)")
        #expect(!FileManager.default.fileExists(atPath: local + "/b"))
    }

    /// The server refuses a pull of a directory without -r after its WELCOME, while the client
    /// joins its data streams: the client must report the server's reason (a usage error, exit
    /// 64), not the closed stream ("run the same command again to resume", exit 1), which it
    /// did four times in five.
    @Test("a pulled directory without -r: the server's reason and exit 64, every time")
    func pullDirectoryWithoutRecursion() throws {
        let sb = try Sandbox("pull-dir")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        try writeFile(try sb.dir("root/tree") + "/a", [1, 2, 3])
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        for i in 0..<5 {
            let r = try sb.cp(server.url("tree"), local + "/got\(i)", json: false, timeout: 60)
            #expect(r.status == 64, "run \(i): \(r)")
            #expect(r.stderr.contains("source is a directory (use -r)") && !r.stderr.contains("resume"), "run \(i): \(r)")
            #expect(!FileManager.default.fileExists(atPath: local + "/got\(i)"))
        }
    }

    @Test("unreachable server: exit 1 with a message")
    func unreachable() throws {
        let sb = try Sandbox("unreachable")
        let local = try sb.dir("local")
        try writeFile(local + "/a", [1, 2, 3])
        let port = try freeLoopbackPort()
        let r = try sb.cp(local + "/a", "ferry://127.0.0.1:\(port)/a", timeout: 60)
        #expect(r.status == 1, "\(r)")
        #expect(!r.allMessages.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(r)")
        // Nothing was moved: the advice is to retry, not to resume.
        let plain = try sb.cp(local + "/a", "ferry://127.0.0.1:\(port)/a", json: false, timeout: 60)
        #expect(plain.status == 1 && plain.stderr.contains("nothing was copied; run the same command again to retry")
                && !plain.stderr.contains("resume"), "\(plain)")
    }
}
