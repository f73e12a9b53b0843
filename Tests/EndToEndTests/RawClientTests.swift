// A hand-written client (Python's ssl module, a different TLS implementation from the server's)
// that speaks the wire protocol byte by byte: it sends what `ferry cp` never would — paths that
// leave the export, absolute paths, bad protection levels — and checks that the server answers
// each with an ERROR frame naming the reason, audits it, writes nothing, and keeps serving a
// legitimate transfer that runs at the same time.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Raw wire client")
struct RawClientTests {
    /// Connects over TLS 1.3, reads READY, sends one HELLO, prints the answer as JSON.
    static let script = #"""
import json, socket, ssl, struct, sys
host, port, ca, token, direction, path, protection = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6], int(sys.argv[7])
extension = bytes.fromhex(sys.argv[8]) if len(sys.argv) > 8 else b""
after = bytes.fromhex(sys.argv[9]) if len(sys.argv) > 9 else b""
recursive = len(sys.argv) > 10 and sys.argv[10] == "1"
def u16(v): return struct.pack("<H", v)
def frame(t, payload): return struct.pack("<IBBH", len(payload), t, 0, 0) + payload
def read_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise EOFError("closed after %d of %d bytes" % (len(b), n))
        b += c
    return b
def read_frame(s):
    n, t, flags, _ = struct.unpack("<IBBH", read_exact(s, 8))
    return t, flags, read_exact(s, n)
raw = socket.create_connection((host, port), timeout=20)
raw.sendall(b"FERRY\0\0\0" + struct.pack("<HHI", 2, 1, 0))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_verify_locations(ca)
s = ctx.wrap_socket(raw, server_hostname=host)
t, _, name = read_frame(s)
assert t == 0x12, "expected READY, got %#x" % t
p = path.encode("utf-8")
tok = token.encode()
hello = u16(len(tok)) + tok + bytes([direction]) + u16(len(p)) + p + bytes([1 if recursive else 0, 0, 1, 0, 0]) + struct.pack("<QI", 0, 4 << 20) + bytes([protection]) + extension
s.sendall(frame(0x01, hello) + after)
try:
    t, flags, payload = read_frame(s)
    print(json.dumps({"center": name.decode(), "type": t, "flags": flags, "message": payload.decode("utf-8", "replace")}))
except EOFError as e:
    print(json.dumps({"center": name.decode(), "type": -1, "message": str(e)}))
"""#

    struct Answer {
        var type: Int
        var message: String
    }

    /// `extensionHex`: bytes appended to the HELLO (its extension), in hex.
    /// `direction`: another than push (1) or pull (2), e.g. 5 (a striped file's commit).
    /// `after`: raw frames (hex) sent right behind the HELLO; `recursive`: HELLO's -r byte.
    static func hello(_ sb: Sandbox, port: Int, token: String, push: Bool, path: String, recursive: Bool = false, protection: Int = 2, extensionHex: String = "",
                      direction: Int? = nil, after: String = "") throws -> Answer {
        let r = runTool("/usr/bin/python3", ["-c", script, "127.0.0.1", String(port), sb.ca, token, String(direction ?? (push ? 1 : 2)), path, String(protection), extensionHex,
                                             after, recursive ? "1" : "0"])
        guard r.status == 0, let line = r.output.split(separator: "\n").last,
              let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw HarnessError("raw client failed: \(r.output)")
        }
        return Answer(type: obj["type"] as? Int ?? -2, message: obj["message"] as? String ?? "")
    }

    @Test("hostile HELLOs over real TLS: each refused with a reason and an audit line; nothing written; a transfer meanwhile completes")
    func hostileHellos() throws {
        let sb = try Sandbox("raw")
        let root = try sb.dir("root")
        let outside = try sb.dir("outside")
        let local = try sb.dir("local")
        let audit = sb.file("audit.jsonl")
        let server = try FerryServer(sb, root: root, extra: ["--audit-log", audit])
        defer { server.stop() }
        let size = 48 * E2E.MiB
        try writeRandomFile(local + "/big.bin", size: size)
        let legit = try sb.startCp(local + "/big.bin", server.url("big.bin"), options: ["--bwlimit", "16M"])
        // A well-formed HELLO first: the raw client itself is right (the server answers WELCOME).
        let good = try RawClientTests.hello(sb, port: server.port, token: sb.token, push: true, path: "fine.bin")
        #expect(good.type == 0x02, "a correct HELLO should get WELCOME: \(good)")
        let cases: [(push: Bool, path: String, protection: Int, says: String)] = [
            (true, "../outside/x.bin", 2, "leaves its root"),
            (true, "sub/../../outside/x.bin", 2, "leaves its root"),
            (false, "../outside", 2, "leaves its root"),
            (true, "/etc/cron.d/x", 2, "absolute"),
            (false, "//etc/passwd", 2, "absolute"),
            (true, "a//b", 2, "not normalised"),
            (true, "x.bin", 9, "protection"),
            // Range sessions (striping, HELLO extension 2): a range past the file's end, one of
            // no chunk, of a one-chunk file, and an unknown extension version.
            (true, "x.bin", 2, "not within the file's 2 chunks"),
            (false, "x.bin", 2, "not within the file's 2 chunks"),
            (true, "x.bin", 2, "chunk range 0+0"),
            (true, "x.bin", 2, "more than one chunk"),
            (true, "x.bin", 2, "unknown HELLO extension"),
        ]
        /// Extension 2: depth (all), no filters, then first, count, size, mtime s, mtime ns.
        func rangeExtension(first: UInt64, count: UInt64, size: UInt64) -> String {
            func le(_ v: UInt64, _ n: Int) -> String { (0..<n).map { String(format: "%02x", (v >> (8 * UInt64($0))) & 0xFF) }.joined() }
            return "02" + "ffffffff" + "0000" + le(first, 8) + le(count, 8) + le(size, 8) + le(1_700_000_000, 8) + le(0, 4)
        }
        let extensions = ["", "", "", "", "", "", "",
                          rangeExtension(first: 1, count: 5, size: 8 << 20), rangeExtension(first: 1, count: 5, size: 8 << 20),
                          rangeExtension(first: 0, count: 0, size: 8 << 20), rangeExtension(first: 0, count: 1, size: 4 << 20), "04"]
        for (c, ext) in zip(cases, extensions) {
            let before = SecurityTests.auditLines(audit).count
            let a = try RawClientTests.hello(sb, port: server.port, token: sb.token, push: c.push, path: c.path, protection: c.protection, extensionHex: ext)
            #expect(a.type == 0x7F, "\(c.path): expected an ERROR frame, got \(a)")
            #expect(a.message.contains(c.says), "\(c.path): the ERROR should say '\(c.says)': \(a.message)")
            var line: [String: Any]?
            waitUntil(timeout: 5) {
                line = SecurityTests.auditLines(audit).dropFirst(before).first { ($0["result"] as? String ?? "").hasPrefix("refused") }
                return line != nil
            }
            #expect((line?["result"] as? String ?? "").contains(c.says), "\(c.path): audit line: \(String(describing: line))")
        }
        // A commit (direction 5) of a path out of the root, or of the root itself.
        let commitOut = try RawClientTests.hello(sb, port: server.port, token: sb.token, push: true, path: "../outside/x.bin", direction: 5)
        #expect(commitOut.type == 0x7F && commitOut.message.contains("leaves its root"), "\(commitOut)")
        let commitRoot = try RawClientTests.hello(sb, port: server.port, token: sb.token, push: true, path: "", direction: 5)
        #expect(commitRoot.type == 0x7F && commitRoot.message.contains("names a file"), "\(commitRoot)")
        // A commit declaring 2^50 bytes in 64 KiB chunks (2^34 chunk hashes to hold): refused
        // before any allocation.
        func le(_ v: UInt64, _ n: Int) -> String { (0..<n).map { String(format: "%02x", (v >> (8 * UInt64($0))) & 0xFF) }.joined() }
        let request = le(1 << 50, 8) + le(1_700_000_000, 8) + le(0, 4) + le(0o644, 4) + le(64 << 10, 4) + String(repeating: "00", count: 16)
            + le(1, 4) + le(0, 8) + le(1 << 34, 8)
        let huge = try RawClientTests.hello(sb, port: server.port, token: sb.token, push: true, path: "huge.bin", direction: 5,
                                            after: le(UInt64(request.count / 2), 4) + "05" + "00" + "0000" + request)
        #expect(huge.type == 0x7F && huge.message.contains("at most 4194304"), "\(huge)")
        #expect(server.isRunning)
        #expect((listDirectory(outside) ?? ["?"]).isEmpty, "something was written outside the root")
        #expect(server.isRunning)
        let done = sb.finish(legit, timeout: 120)
        #expect(done.succeeded, "\(done)")
        #expect(filesIdentical(local + "/big.bin", root + "/big.bin"))
    }
}
