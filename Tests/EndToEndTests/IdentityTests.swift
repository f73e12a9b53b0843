// Identity mapping (issue 13): a root server acts for each user as that user's local account,
// so files belong to who wrote them, the kernel's permission checks apply, setuid bits never
// come from the wire, and a hostile manifest cannot make the server allocate or create what it
// declares. Real local accounts (ferryu1, ferryu2), created here if missing.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Identity mapping and receiver bounds", .serialized)
struct IdentityTests {
    /// Creates the local account `name` (no home, no login shell) if it does not exist.
    static func account(_ name: String) throws -> (uid: uid_t, gid: gid_t) {
        if getpwnam(name) == nil {
            let r = runTool("/usr/sbin/useradd", ["--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name])
            // Two suites may race to create it: the account existing afterwards is what counts.
            guard r.status == 0 || getpwnam(name) != nil else { throw HarnessError("useradd \(name): \(r.output)") }
        }
        guard let pw = getpwnam(name) else { throw HarnessError("no account \(name)") }
        return (pw.pointee.pw_uid, pw.pointee.pw_gid)
    }

    static func owner(_ path: String) -> (uid: uid_t, mode: mode_t)? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return (st.st_uid, st.st_mode & 0o7777)
    }

    /// A sandbox the test accounts can enter, an export root owned by root (0755) with one
    /// directory per account: u1 (0755, ferryu1) and u2 (0700, ferryu2, a 0600 secret in it).
    /// `mount`: makes the export root (a filesystem of its own) before the accounts' directories.
    static func setUp(_ name: String, mount: ((Sandbox, String) throws -> Void)? = nil) throws -> (sb: Sandbox, root: String, u1: (uid_t, gid_t), u2: (uid_t, gid_t)) {
        let u1 = try account("ferryu1")
        let u2 = try account("ferryu2")
        let sb = try Sandbox(name)
        chmod(sb.path, 0o755)
        let root = sb.file("export")
        if let mount { try mount(sb, root) } else { _ = try sb.dir("export") }
        chmod(root, 0o755)
        let d1 = try sb.dir("export/u1")
        chown(d1, u1.uid, u1.gid)
        let d2 = try sb.dir("export/u2")
        chown(d2, u2.uid, u2.gid)
        chmod(d2, 0o700)
        try writeRandomFile(d2 + "/secret", size: 4096)
        chown(d2 + "/secret", u2.uid, u2.gid)
        chmod(d2 + "/secret", 0o600)
        return (sb, root, u1, u2)
    }

    @Test("files a user pushes belong to the user's account; setid bits never arrive")
    func ownershipAndModes() throws {
        let (sb, root, u1, u2) = try Self.setUp("ident-own")
        let token = try sb.issueToken(user: "ferryu1", scopes: ["rw:/"], name: "u1.token")
        let audit = sb.file("audit.jsonl")
        let server = try FerryServer(sb, root: root, extra: ["--audit-log", audit], runAsRoot: false)
        defer { server.stop() }

        let tree = try sb.dir("tree")
        chmod(tree, 0o755)
        // A copy of `id` made setuid and setgid, a world-writable file, a sticky directory.
        try FileManager.default.copyItem(atPath: "/usr/bin/id", toPath: tree + "/id")
        chmod(tree + "/id", 0o6755)
        try writeRandomFile(tree + "/open", size: 100)
        chmod(tree + "/open", 0o777)
        try sb.dir("tree/shared")
        chmod(tree + "/shared", 0o1777)
        try writeRandomFile(tree + "/big.bin", size: 3 * E2E.MiB + 3)  // chunks, not a batch
        chmod(tree + "/big.bin", 0o4755)

        let r = try sb.cp(tree, server.url("u1/pushed"), options: ["-r", "--chunk-size", "1M"], tokenFile: token)
        #expect(r.succeeded, "\(r)")
        for (name, mode) in [("pushed", mode_t(0o755)), ("pushed/id", 0o755), ("pushed/open", 0o777), ("pushed/shared", 0o1777), ("pushed/big.bin", 0o755)] {
            let o = Self.owner(root + "/u1/" + name)
            #expect(o?.uid == u1.0, "\(name) is owned by uid \(o?.uid ?? 9999), not ferryu1 (\(u1.0))")
            #expect(o?.mode == mode, "\(name) has mode \(String(o?.mode ?? 0, radix: 8)), expected \(String(mode, radix: 8))")
        }
        #expect(filesIdentical(tree + "/big.bin", root + "/u1/pushed/big.bin"))
        // Another local account running the pushed binary stays itself.
        let run = runTool("/usr/sbin/runuser", ["-u", "ferryu2", "--", root + "/u1/pushed/id", "-u"])
        #expect(run.status == 0 && run.output.trimmingCharacters(in: .whitespacesAndNewlines) == String(u2.0), "the pushed id ran as: \(run.output)")
        let lines = (try? String(contentsOfFile: audit, encoding: .utf8)) ?? ""
        #expect(lines.contains("\"user\":\"ferryu1\"") && lines.contains("\"account\":\"ferryu1\""), "audit: \(lines)")
    }

    @Test("the kernel decides: another user's private file is unreadable and unwritable, links included")
    func kernelChecks() throws {
        let (sb, root, _, _) = try Self.setUp("ident-deny")
        let token = try sb.issueToken(user: "ferryu1", scopes: ["rw:/"], name: "u1.token")
        // A link in u1's own directory that leads into u2's.
        symlink("../u2", root + "/u1/into-u2")
        let server = try FerryServer(sb, root: root, runAsRoot: false)
        defer { server.stop() }

        for path in ["u2/secret", "u1/into-u2/secret"] {
            let r = try sb.cp(server.url(path), sb.file("stolen"), tokenFile: token)
            // The kernel (Permission denied), or before it the stepwise open of the path, which
            // never lets a link lead out of the directory it sits in.
            #expect(!r.succeeded && (r.allMessages.contains("Permission denied") || r.allMessages.contains("outside")), "pull of \(path): \(r)")
        }
        let src = try sb.dir("local") + "/plant"
        try writeRandomFile(src, size: 10)
        for path in ["u2/plant", "u1/into-u2/plant"] {
            let r = try sb.cp(src, server.url(path), tokenFile: token)
            #expect(!r.succeeded && (r.allMessages.contains("Permission denied") || r.allMessages.contains("outside")), "push to \(path): \(r)")
        }
        #expect(!FileManager.default.fileExists(atPath: root + "/u2/plant"))
        #expect(!FileManager.default.fileExists(atPath: sb.file("stolen")))
        // The owner reads it.
        let own = try sb.issueToken(user: "ferryu2", scopes: ["rw:/"], name: "u2.token")
        let ok = try sb.cp(server.url("u2/secret"), sb.file("mine"), tokenFile: own)
        #expect(ok.succeeded && filesIdentical(root + "/u2/secret", sb.file("mine")), "\(ok)")
    }

    @Test("unmapped users and would-be root are refused with a reason")
    func unmapped() throws {
        let (sb, root, _, _) = try Self.setUp("ident-unmapped")
        let server = try FerryServer(sb, root: root, runAsRoot: false)
        defer { server.stop() }
        let stranger = try sb.issueToken(user: "no-such-user-here", scopes: ["rw:/"], name: "s.token")
        let r = try sb.cp(server.url("u1"), sb.file("x"), options: ["-r"], tokenFile: stranger)
        #expect(!r.succeeded && r.allMessages.contains("has no local account"), "\(r)")
        let rootToken = try sb.issueToken(user: "root", scopes: ["rw:/"], name: "r.token")
        let rr = try sb.cp(server.url("u2/secret"), sb.file("y"), tokenFile: rootToken)
        #expect(!rr.succeeded && rr.allMessages.contains("would act as root"), "\(rr)")
        #expect(!FileManager.default.fileExists(atPath: sb.file("y")))
        // An explicit mapping: the operator's word.
        let mapped = try FerryServer(sb, root: root, extra: ["--map", "no-such-user-here=ferryu1"], runAsRoot: false)
        defer { mapped.stop() }
        let m = try sb.cp(mapped.url("u2/secret"), sb.file("z"), tokenFile: stranger)
        #expect(!m.succeeded && m.allMessages.contains("Permission denied"), "mapped to ferryu1, still not u2's reader: \(m)")
    }

    @Test("hostile manifests: a 32 TiB file, a 1 PiB file, a million entries; memory stays bounded, nothing is created")
    func hostileManifest() throws {
        let sb = try Sandbox("hostile-manifest")
        let small = try sb.dir("small")
        try sb.mountTmpfs(at: small, sizeMiB: 64)
        let server = try FerryServer(sb, root: small)
        defer { server.stop() }
        // 32 TiB declared (64 MiB chunks keep it under the chunk cap: the free-space check answers).
        let huge = try ManifestClient.pushManifest(sb, server: server, to: "huge.bin", entries: [.file(path: "", size: 1 << 45)], chunkBytes: 64 << 20)
        #expect(huge.contains("no space") && huge.contains("free"), "\(huge)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: small)) ?? ["?"]).isEmpty, "something was created on the small filesystem")
        // 1 PiB at 4 MiB chunks: refused before any allocation (its bookkeeping would be 4 GiB).
        let huger = try ManifestClient.pushManifest(sb, server: server, to: "huger.bin", entries: [.file(path: "", size: 1 << 50)], chunkBytes: 4 << 20)
        #expect(huger.contains("chunk"), "\(huger)")
        // A million entries with no data: the receiver's own files-in-flight bound ends it.
        let many = try ManifestClient.pushManifest(sb, server: server, entries: [.directory(path: "")] + (0..<1_000_000).map { .file(path: "f\($0)", size: 1) }, chunkBytes: 4 << 20)
        // The server ends the session with the reason (the client may see only the reset that
        // follows an unread manifest, so the server's own log line is checked).
        let said = waitUntil(timeout: 60, interval: 0.1) { server.process.stderr.contains("files announced without a verdict") }
        #expect(said, "\(many.prefix(300)); server: \(server.process.stderr.suffix(600))")
        let rss = residentKiB(server.process.ferryPid)
        #expect(rss > 0 && rss < 400 * 1024, "server resident memory \(rss) KiB after hostile manifests")
        #expect(server.isRunning)
    }
}

/// Resident memory of a process in KiB (VmRSS), or -1.
func residentKiB(_ pid: pid_t) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return -1 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }
    return -1
}

/// A hand-written pushing client (Python) that declares whatever manifest a test asks for,
/// with one joined data stream and no data: what a hostile peer with a valid token can send.
enum ManifestClient {
    enum Entry {
        case file(path: String, size: UInt64)
        case directory(path: String)
    }

    static let script = #"""
import hashlib, hmac, json, select, socket, ssl, struct, sys, time
host, port, ca, token, chunk, spec, target = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6], sys.argv[7].encode()
def u16(v): return struct.pack("<H", v)
def frame(t, payload): return struct.pack("<IBBH", len(payload), t, 0, 0) + payload
def read_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise EOFError("closed")
        b += c
    return b
def read_frame(s):
    n, t, flags, _ = struct.unpack("<IBBH", read_exact(s, 8))
    return t, read_exact(s, n)
raw = socket.create_connection((host, port), timeout=60)
raw.sendall(b"FERRY\0\0\0" + struct.pack("<HHI", 2, 1, 0))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
s = ctx.wrap_socket(raw, server_hostname=host)
read_frame(s)
tok = token.encode()
hello = u16(len(tok)) + tok + bytes([1]) + u16(len(target)) + target + bytes([1, 1, 0, 0, 0]) + struct.pack("<QI", 0, chunk) + bytes([0])
s.sendall(frame(0x01, hello))
t, w = read_frame(s)
if t != 0x02:
    print(json.dumps({"message": w.decode("utf-8", "replace")})); sys.exit(0)
sid, secret = w[:16], w[16:48]
d = socket.create_connection((host, port), timeout=60)
d.sendall(b"FERRY\0\0\0" + struct.pack("<HHI", 2, 2, 0))
proof = hmac.new(secret, b"ferry-join" + sid + bytes([0]), hashlib.sha256).digest()
d.sendall(frame(0x03, sid + bytes([0]) + proof))
read_frame(d)
# One thread drives the TLS socket both ways, non-blocking: OpenSSL does not allow one
# connection to be read and written from two threads at once (a reader thread beside the
# writer once saw a false end of stream, and the test blamed the server).
answer = {"message": ""}
entries = json.loads(open(spec).read())
s.setblocking(False)
out, inbuf, next_start, deadline = bytearray(), bytearray(), 0, time.time() + 100
def parse():
    while len(inbuf) >= 8:
        n, t, _, _ = struct.unpack("<IBBH", bytes(inbuf[:8]))
        if len(inbuf) < 8 + n: return
        p = bytes(inbuf[8:8 + n]); del inbuf[:8 + n]
        if t == 0x7F:
            answer["message"] = p.decode("utf-8", "replace"); return
        if t == 0x0A:
            # a per-file verdict: [count][id u64][status u8: 0 done, else bit 0 set and the code above it][message]
            c = struct.unpack("<I", p[:4])[0]
            if c and p[12] & 1:
                m = struct.unpack("<H", p[13:15])[0]
                answer["message"] = p[15:15 + m].decode("utf-8", "replace"); return
while not answer["message"] and time.time() < deadline:
    if not out and next_start < len(entries):
        batch = entries[next_start:next_start + 4096]
        body = b""
        for i, (kind, path, size) in enumerate(batch):
            p = path.encode()
            body += struct.pack("<QB", next_start + i + 1, kind) + u16(len(p)) + p + struct.pack("<QqII", size, 0, 0, 0o644)
        out += frame(0x05, struct.pack("<I", len(batch)) + body)
        next_start += len(batch)
    r, w, _ = select.select([s], [s] if out else [], [], 0 if s.pending() else 1.0)
    if r or s.pending():
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    answer["message"] = "closed: end of stream"; break
                inbuf += c
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError as e:
            answer["message"] = "closed: %s" % e
        parse()
    if w and out and not answer["message"]:
        try:
            del out[:s.send(bytes(out[:65536]))]
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError as e:
            answer["message"] = "closed: %s" % e
print(json.dumps(answer))
"""#

    /// Pushes a manifest of `entries` (no data) to `server` as the sandbox's user; returns the
    /// server's answer (its ERROR frame's text, or the first per-file refusal).
    static func pushManifest(_ sb: Sandbox, server: FerryServer, to target: String = "", entries: [Entry], chunkBytes: Int) throws -> String {
        let list: [[Any]] = entries.map {
            switch $0 {
            case .file(let p, let size): return [1, p, size]
            case .directory(let p): return [2, p, 0]
            }
        }
        let spec = sb.file("manifest-\(UInt32.random(in: 0...UInt32.max)).json")
        try JSONSerialization.data(withJSONObject: list).write(to: URL(fileURLWithPath: spec))
        let r = runTool("/usr/bin/python3", ["-c", script, "127.0.0.1", String(server.port), sb.ca, sb.token, String(chunkBytes), spec, target], timeout: 120)
        guard r.status == 0, let line = r.output.split(separator: "\n").last,
              let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw HarnessError("raw client failed: \(r.output)")
        }
        return obj["message"] as? String ?? ""
    }
}

@Suite("Daemon jobs act as their owner", .serialized)
struct DaemonIdentityTests {
    @Test("a job reads and writes with its owner's rights, and a link out of the owner's directory is refused at submit")
    func jobsAsOwner() throws {
        let u1 = try IdentityTests.account("ferryu1")
        let u2 = try IdentityTests.account("ferryu2")
        // hlrs maps each token user to the account of the same name; alice (the sandbox's
        // operator token, used to watch jobs) to ferryu1.
        let c = try DaemonE2ETests.start("ident-jobs", hlrsIdentity: "", hlrsTables: "[[identity]]\nuser = \"alice\"\naccount = \"ferryu1\"")
        defer { c.a.stop(); c.b.stop() }
        chmod(c.sb.path, 0o755)
        chmod(c.sb.path + "/hlrs", 0o755)
        chmod(c.scratch, 0o755)
        let d1 = try c.sb.dir("hlrs/scratch/u1")
        chown(d1, u1.uid, u1.gid)
        let d2 = try c.sb.dir("hlrs/scratch/u2")
        chown(d2, u2.uid, u2.gid)
        chmod(d2, 0o700)
        try writeRandomFile(d2 + "/secret", size: 5000)
        chown(d2 + "/secret", u2.uid, u2.gid)
        chmod(d2 + "/secret", 0o600)
        symlink("../u2", d1 + "/evil")
        try writeRandomFile(c.archive + "/in.bin", size: 2 * E2E.MiB + 1)
        let t1 = try c.sb.issueToken(user: "ferryu1", scopes: ["rw:/scratch"], name: "u1.tok")

        func submit(_ src: String, _ dst: String) -> (status: Int, id: Int, body: String) {
            let r = TrustTests.http("POST", c.api + "/api/v1/transfers", token: t1, body: #"{"source": "\#(src)", "destination": "\#(dst)"}"#)
            return (r.status, TrustTests.object(r.body)["id"] as? Int ?? -1, r.body)
        }
        // A pull into the owner's directory: the file belongs to the owner.
        let pull = submit("ferry://wuxi/archive/in.bin", "/scratch/u1/in.bin")
        #expect(pull.status == 201, "\(pull)")
        let (_, pulled) = DaemonE2ETests.waitForState(c, pull.id, "success", timeout: 60)
        #expect(pulled["state"] as? String == "success", "\(pulled)")
        #expect(IdentityTests.owner(d1 + "/in.bin")?.uid == u1.uid, "the job's file is not ferryu1's")
        #expect(filesIdentical(c.archive + "/in.bin", d1 + "/in.bin"))

        // A link in the owner's directory that leads into another's: refused at submit.
        let evil = submit("/scratch/u1/evil/secret", "ferry://wuxi/incoming/stolen")
        #expect(evil.status == 403 && evil.body.contains("symbolic link"), "\(evil)")
        // Within the token's scope but not the account's rights: the job runs and the kernel
        // refuses (a failed job naming the reason, nothing sent or planted).
        for (src, dst) in [("/scratch/u2/secret", "ferry://wuxi/incoming/stolen2"), ("ferry://wuxi/archive/in.bin", "/scratch/u2/planted")] {
            let j = submit(src, dst)
            #expect(j.status == 201, "\(j)")
            let (_, job) = DaemonE2ETests.waitForState(c, j.id, "failed", timeout: 60)
            #expect(job["state"] as? String == "failed" && (job["error"] as? String ?? "").contains("Permission denied"), "\(src) -> \(dst): \(job)")
            #expect(job["attempts"] as? Int == 1, "a permission refusal is not retried: \(job)")
        }
        #expect(!FileManager.default.fileExists(atPath: c.incoming + "/stolen2"))
        #expect(!FileManager.default.fileExists(atPath: d2 + "/planted"))

        // Registration: the same confinement and the same rights.
        func register(_ path: String, _ name: String) -> (status: Int, body: String) {
            TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: t1, body: #"{"path": "\#(path)", "dataset": "\#(name)", "readers": ["*"]}"#)
        }
        let viaLink = register("/scratch/u1/evil", "stolen")
        #expect(viaLink.status == 403 && viaLink.body.contains("symbolic link"), "\(viaLink)")
        let other = register("/scratch/u2", "theirs")
        #expect(other.status == 403 && other.body.contains("Permission denied"), "\(other)")
        let mine = register("/scratch/u1", "mine")
        #expect(mine.status == 200, "\(mine)")
        // The link inside is recorded as a link, never followed: u2's names do not appear.
        let ls = TrustTests.http("GET", c.api + "/api/v1/catalog/find?path=gfs://hlrs/mine&name=secret", token: t1)
        #expect(!ls.body.contains("secret"), "\(ls)")
    }
}

// MARK: - partial files and journals planted by another account

extension IdentityTests {
    /// Every byte of an open file, read through its descriptor (the inode, whatever its name now).
    static func bytes(ofDescriptor fd: Int32) -> [UInt8] {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return [] }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var got = 0
        while got < out.count {
            let r = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, $0.count - got, off_t(got)) }
            if r <= 0 { break }
            got += r
        }
        return Array(out.prefix(got))
    }

    /// A file `path` owned by `owner`, mode 0666, holding `content`; an open descriptor of it.
    static func plant(_ path: String, _ content: [UInt8], owner: (uid_t, gid_t)) throws -> Int32 {
        try writeFile(path, content)
        chown(path, owner.0, owner.1)
        chmod(path, 0o666)
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw HarnessError("cannot open \(path)") }
        return fd
    }

    /// Another account plants `.NAME.ferry-part` (0666) and `.NAME.ferry-journal` before a push:
    /// in a world-writable directory they are replaced (the push lands the user's own file, with
    /// its mode; the planted files never see a byte of it); in a sticky one, where they cannot be
    /// removed, the file fails with a message naming the partial, and nothing is written into them.
    @Test("a partial file or journal another account planted is never written into or renamed",
          arguments: [false, true])
    func plantedPartial(_ chunked: Bool) throws {
        let (sb, root, u1, u2) = try Self.setUp("ident-plant-\(chunked ? "big" : "small")")
        let token = try sb.issueToken(user: "ferryu1", scopes: ["rw:/"], name: "u1.token")
        let server = try FerryServer(sb, root: root, runAsRoot: false)
        defer { server.stop() }
        let local = try sb.dir("local")
        let src = local + "/data.bin"
        try writeRandomFile(src, size: chunked ? 3 * E2E.MiB + 5 : 5000)
        chmod(src, 0o640)
        let attacker = [UInt8](repeating: 0x41, count: 1000)
        let journalBytes = [UInt8](repeating: 0x4A, count: 200)

        for (dir, mode) in [("open", mode_t(0o777)), ("sticky", mode_t(0o1777))] {
            let d = try sb.dir("export/" + dir)
            chmod(d, mode)
            let part = try Self.plant(d + "/.data.bin.ferry-part", attacker, owner: u2)
            defer { close(part) }
            let journal = try Self.plant(d + "/.data.bin.ferry-journal", journalBytes, owner: u2)
            defer { close(journal) }
            var planted = stat()
            fstat(part, &planted)

            let r = try sb.cp(src, server.url(dir + "/data.bin"), options: ["--chunk-size", "1M"], tokenFile: token)
            if dir == "open" {
                #expect(r.succeeded, "\(r)")
                let o = Self.owner(d + "/data.bin")
                #expect(o?.uid == u1.0 && o?.mode == 0o640, "landed owned by \(o?.uid ?? 9999) with mode \(String(o?.mode ?? 0, radix: 8))")
                #expect(filesIdentical(src, d + "/data.bin"))
                var landed = stat()
                #expect(lstat(d + "/data.bin", &landed) == 0 && landed.st_ino != planted.st_ino, "the planted file was renamed into place")
            } else {
                #expect(!r.succeeded && r.status != 0, "\(r)")
                #expect(r.allMessages.contains("'.data.bin.ferry-part' in its directory belongs to another account"), "\(r)")
                #expect(!exists(d + "/data.bin"))
            }
            // Compared outside #expect: a failing comparison of megabytes would be diffed element by element.
            let partIntact = Self.bytes(ofDescriptor: part) == attacker
            let journalIntact = Self.bytes(ofDescriptor: journal) == journalBytes
            #expect(partIntact, "\(dir): the planted partial holds more than the attacker wrote")
            #expect(journalIntact, "\(dir): the planted journal was written into")
        }
    }

    enum Swap: String, CustomStringConvertible, CaseIterable {
        case chownPartial, copyPartial, chownJournal
        var description: String { rawValue }
    }

    /// An interrupted push leaves a partial and its journal; before the rerun another account
    /// takes one of them over (the file given to it, or a copy of the partial, same bytes, put
    /// in its place). The rerun does not resume from it or write into it: it starts over into
    /// a file of the user's own.
    @Test("a resume never uses a partial or journal that is not the user's own", arguments: Swap.allCases)
    func plantedResume(_ swap: Swap) throws {
        let (sb, root, u1, u2) = try Self.setUp("ident-plant-resume-\(swap)")
        let token = try sb.issueToken(user: "ferryu1", scopes: ["rw:/"], name: "u1.token")
        let server = try FerryServer(sb, root: root, runAsRoot: false)
        defer { server.stop() }
        let d = try sb.dir("export/open")
        chmod(d, 0o777)
        let local = try sb.dir("local")
        let src = local + "/big.bin"
        try writeRandomFile(src, size: 64 * E2E.MiB)
        chmod(src, 0o644)

        let first = try sb.startCp(src, server.url("open/big.bin"), options: ["--chunk-size", "1M", "--bwlimit", "16M"], tokenFile: token)
        guard waitForProgress(first, fraction: 0.3) != nil else {
            Issue.record("never saw progress ≥ 30 %: \(sb.finish(first, timeout: 5))")
            return
        }
        first.kill9()
        sleepSeconds(1)  // the server's session notices and makes what it wrote durable
        let part = d + "/.big.bin.ferry-part"
        let journal = d + "/.big.bin.ferry-journal"
        #expect(Self.owner(part)?.uid == u1.0 && Self.owner(journal)?.uid == u1.0, "no partial of ferryu1's after the kill: \(walkTree(d))")
        let target = swap == .chownJournal ? journal : part
        if swap == .copyPartial {
            let bytes = readFile(part) ?? []
            unlink(part)
            try writeFile(part, bytes)
        }
        chown(target, u2.0, u2.1)
        chmod(target, 0o666)
        let fd = open(target, O_RDONLY)
        defer { close(fd) }
        let before = Self.bytes(ofDescriptor: fd)
        var planted = stat()
        fstat(fd, &planted)

        let rerun = try sb.cp(src, server.url("open/big.bin"), options: ["--chunk-size", "1M"], tokenFile: token)
        #expect(rerun.succeeded, "\(rerun)")
        #expect(filesIdentical(src, d + "/big.bin"))
        let o = Self.owner(d + "/big.bin")
        #expect(o?.uid == u1.0 && o?.mode == 0o644, "landed owned by \(o?.uid ?? 9999) with mode \(String(o?.mode ?? 0, radix: 8))")
        var landed = stat()
        #expect(lstat(d + "/big.bin", &landed) == 0 && landed.st_ino != planted.st_ino, "the other account's file was renamed into place")
        #expect(rerun.summary?.skippedBytes == 0, "resumed from a file that is not ferryu1's: \(rerun.summary.map { "\($0)" } ?? "no summary")")
        let intact = Self.bytes(ofDescriptor: fd) == before  // outside #expect: no element-wise diff of 64 MiB
        #expect(intact, "the other account's file was written into")
    }
}
