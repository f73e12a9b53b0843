// Security: every refusal (certificates, tokens, scopes, exports, tampered / replayed /
// reordered frames) with a clear error and an audit line, while a legitimate transfer runs at
// the same time and completes byte-identical.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Security")
struct SecurityTests {
    /// Audit lines (parsed JSON objects) of a log file.
    static func auditLines(_ path: String) -> [[String: Any]] {
        guard let data = readFile(path) else { return [] }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }
    }

    @Test("refusals: CA, certificates, center name, tokens, scopes, exports; a legitimate transfer meanwhile stays byte-identical")
    func refusalsWhileTransferRuns() throws {
        let sb = try Sandbox("security")
        let data = try sb.dir("exports/data")
        let archive = try sb.dir("exports/archive")
        let priv = try sb.dir("exports/private")
        let local = try sb.dir("local")
        try writeRandomFile(archive + "/kept.bin", size: 64 * E2E.KiB)
        try writeRandomFile(local + "/small.bin", size: 256 * E2E.KiB)
        let revocations = sb.file("revoked.txt")
        let audit = sb.file("audit.jsonl")
        let config = sb.file("serve.toml")
        try writeFile(config, Array("""
            center = "hlrs"
            run_as = "root"
            certificate = "pki/hlrs.crt"
            key = "pki/hlrs.key"
            ca = "pki/ca.crt"
            revocations = "revoked.txt"
            audit_log = "audit.jsonl"

            [[export]]
            name = "data"
            path = "exports/data"
            access = "rw"
            users = ["alice", "bob", "center:wuxi"]

            [[export]]
            name = "archive"
            path = "exports/archive"
            access = "ro"
            users = ["*"]

            [[export]]
            name = "private"
            path = "exports/private"
            access = "rw"
            users = ["carol"]

            """.utf8))
        let server = try FerryServer(sb, root: "", extra: ["--config", config])
        defer { server.stop() }

        // Credentials for the refusals.
        let otherPKI = sb.file("pki-foreign")
        try Sandbox.ferryTool(["ca", "init", "--dir", otherPKI])
        try Sandbox.ferryTool(["ca", "issue", "--dir", otherPKI, "--center", "wuxi", "--host", "127.0.0.1"])
        try Sandbox.ferryTool(["ca", "issue", "--dir", sb.pki, "--center", "wuxi", "--host", "127.0.0.1"])
        let expiredPKI = try sb.dir("pki-expired")
        try Sandbox.ferryTool(["ca", "issue", "--dir", expiredPKI, "--ca-dir", sb.pki, "--center", "wuxi", "--host", "127.0.0.1", "--days", "1", "--backdate-days", "3"])
        let alice = try sb.issueToken(scopes: ["rw:/data/alice", "read:/archive"], name: "alice.tok")
        let expired = try sb.issueToken(scopes: ["rw:/data/alice"], ttl: "1h", extra: ["--backdate", "2h"], name: "expired.tok")
        let forged = try sb.wrongTokenFile()
        let revoked = try sb.issueToken(scopes: ["rw:/data/alice"], name: "revoked.tok")
        let r0 = try sb.ferry(["token", "revoke", "@" + revoked, "--revocations", revocations, "--reason", "laptop stolen"])
        #expect(r0.status == 0, "\(r0)")
        let writeOnly = try sb.issueToken(scopes: ["write:/data/alice"], name: "writeonly.tok")

        // The legitimate transfer: 192 MiB at 12 MiB/s runs for ~16 s while the refusals happen
        // (about 15 short `ferry` runs; a debug build on a busy CI machine takes up to ~0.5 s each).
        let bigSize = 192 * E2E.MiB
        try writeRandomFile(local + "/big.bin", size: bigSize)
        let legit = try sb.startCp(local + "/big.bin", server.url("data/alice/big.bin"), options: ["--bwlimit", "12M"], tokenFile: alice)
        #expect(waitUntil(timeout: 10) { exists(data + "/alice/.big.bin.ferry-part") || exists(data + "/alice/big.bin") }, "the legitimate transfer did not start")

        struct Case {
            var name: String
            var args: [String]  // extra cp options
            var tokenFile: String?
            var url: String
            var clientSays: [String]  // any of these in the client's message (lowercased)
            var auditSays: [String]  // any of these in a refused audit line
            var target: String?  // must not exist afterwards
        }
        let u = { (p: String) in server.url(p) }
        let cases: [Case] = [
            Case(name: "wrong CA", args: ["--ca", otherPKI + "/ca.crt"], tokenFile: alice, url: u("data/alice/wrongca.bin"),
                 clientSays: ["certificate verification failed"], auditSays: ["tls handshake failed"], target: data + "/alice/wrongca.bin"),
            Case(name: "client certificate from another CA", args: ["--cert", otherPKI + "/wuxi.crt", "--key", otherPKI + "/wuxi.key"], tokenFile: nil, url: u("data/othercert.bin"),
                 clientSays: ["tls", "alert"], auditSays: ["certificate verification failed", "unable to get local issuer"], target: data + "/othercert.bin"),
            Case(name: "expired client certificate", args: ["--cert", expiredPKI + "/wuxi.crt", "--key", expiredPKI + "/wuxi.key"], tokenFile: nil, url: u("data/expiredcert.bin"),
                 clientSays: ["tls", "alert", "expired"], auditSays: ["certificate has expired"], target: data + "/expiredcert.bin"),
            Case(name: "wrong center name", args: ["--center", "wuxi"], tokenFile: alice, url: u("data/alice/wrongname.bin"),
                 clientSays: ["hostname mismatch"], auditSays: ["tls handshake failed"], target: data + "/alice/wrongname.bin"),
            Case(name: "expired token", args: [], tokenFile: expired, url: u("data/alice/expired.bin"),
                 clientSays: ["expired"], auditSays: ["expired"], target: data + "/alice/expired.bin"),
            Case(name: "forged token", args: [], tokenFile: forged, url: u("data/alice/forged.bin"),
                 clientSays: ["signature"], auditSays: ["signature"], target: data + "/alice/forged.bin"),
            Case(name: "revoked token", args: [], tokenFile: revoked, url: u("data/alice/revoked.bin"),
                 clientSays: ["revoked"], auditSays: ["revoked"], target: data + "/alice/revoked.bin"),
            Case(name: "out of scope (another user's directory)", args: [], tokenFile: alice, url: u("data/bob/x.bin"),
                 clientSays: ["does not allow"], auditSays: ["does not allow"], target: data + "/bob/x.bin"),
            Case(name: "out of scope (read with a write-only token)", args: [], tokenFile: writeOnly, url: u("data/alice/big.bin"),
                 clientSays: ["does not allow"], auditSays: ["does not allow"], target: nil),
            Case(name: "read-only export", args: [], tokenFile: alice, url: u("archive/new.bin"),
                 clientSays: ["read-only"], auditSays: ["read-only"], target: archive + "/new.bin"),
            Case(name: "export of other users", args: [], tokenFile: alice, url: u("private/x.bin"),
                 clientSays: ["may not use"], auditSays: ["may not use"], target: priv + "/x.bin"),
            Case(name: "no such export", args: [], tokenFile: alice, url: u("nosuch/x.bin"),
                 clientSays: ["no export named"], auditSays: ["no export named"], target: nil),
        ]
        for c in cases {
            let before = SecurityTests.auditLines(audit).count
            let isPull = c.name.contains("write-only")
            let r = isPull
                ? try sb.cp(c.url, local + "/pulled-\(c.name.count).bin", options: c.args, tokenFile: c.tokenFile, timeout: 30)
                : try sb.cp(local + "/small.bin", c.url, options: c.args, tokenFile: c.tokenFile, timeout: 30)
            #expect(!r.succeeded && r.status == 1, "\(c.name): must be refused with exit 1: \(r)")
            let msg = (r.error?.message ?? r.stderr).lowercased()
            #expect(c.clientSays.contains { msg.contains($0) }, "\(c.name): the message should say why: \(msg)")
            if let t = c.target { #expect(!exists(t), "\(c.name): \(t) was written") }
            var refusedLine: [String: Any]?
            waitUntil(timeout: 5) {
                refusedLine = SecurityTests.auditLines(audit).dropFirst(before).first { ($0["result"] as? String ?? "").hasPrefix("refused") }
                return refusedLine != nil
            }
            let result = (refusedLine?["result"] as? String ?? "").lowercased()
            #expect(c.auditSays.contains { result.contains($0) }, "\(c.name): audit line should say why: \(String(describing: refusedLine))")
            #expect(refusedLine?["peer"] as? String != nil && refusedLine?["time"] as? String != nil, "\(c.name): audit line lacks peer/time")
        }
        // A refusal names the user when the token is genuine.
        let lines = SecurityTests.auditLines(audit)
        #expect(lines.contains { ($0["result"] as? String ?? "").contains("revoked") && ($0["user"] as? String ?? "").contains("alice") })
        // A peer center's certificate (no token) is accepted where the export lists it.
        let byCenter = try sb.cp(local + "/small.bin", u("data/from-wuxi.bin"), options: ["--cert", sb.pki + "/wuxi.crt", "--key", sb.pki + "/wuxi.key"], tokenFile: nil, timeout: 30)
        #expect(byCenter.succeeded, "center certificate: \(byCenter)")
        #expect(filesIdentical(local + "/small.bin", data + "/from-wuxi.bin"))
        #expect(SecurityTests.auditLines(audit).contains { $0["user"] as? String == "center:wuxi" && $0["center"] as? String == "wuxi" && $0["result"] as? String == "ok" })
        // Reading within scope works.
        let read = try sb.cp(u("archive/kept.bin"), local + "/kept.bin", tokenFile: alice, timeout: 30)
        #expect(read.succeeded, "\(read)")
        #expect(filesIdentical(archive + "/kept.bin", local + "/kept.bin"))

        // The legitimate transfer was still running through the refusals, and completes intact.
        #expect(legit.isRunning, "the legitimate transfer ended before the refusals were done (make it slower)")
        let done = sb.finish(legit, timeout: 120)
        #expect(done.succeeded, "\(done)")
        #expect(filesIdentical(local + "/big.bin", data + "/alice/big.bin"))
        let ok = SecurityTests.auditLines(audit).first { $0["path"] as? String == "data/alice/big.bin" && $0["result"] as? String == "ok" }
        #expect(ok?["user"] as? String == "alice" && (ok?["bytes"] as? Int) == bigSize && ok?["protection"] as? String == "private", "audit line of the transfer: \(String(describing: ok))")
        #expect(server.isRunning)
    }

    @Test("a symlink inside a user's scope cannot lead a pull or a push into another user's directory")
    func symlinkOutOfScope() throws {
        let sb = try Sandbox("scope-link")
        let root = try sb.dir("root")
        try sb.dir("root/bob")
        try writeFile(root + "/bob/secret.txt", Array("bob's\n".utf8))
        try sb.dir("root/alice/tree")
        symlink("../bob", root + "/alice/tree/d")  // as a pushed tree with a link would leave it
        symlink("sub", root + "/alice/inside")     // a link within the scope keeps working
        try sb.dir("root/alice/sub")
        try writeFile(root + "/alice/sub/mine.txt", Array("alice's\n".utf8))
        let local = try sb.dir("local")
        let alice = try sb.issueToken(scopes: ["rw:/alice"], name: "alice.tok")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let pull = try sb.cp(server.url("alice/tree/d/secret.txt"), local + "/stolen.txt", tokenFile: alice, timeout: 30)
        #expect(pull.status == 1 && !exists(local + "/stolen.txt"), "\(pull)")
        #expect((pull.error?.message ?? pull.stderr).contains("outside"), "\(pull)")
        try writeFile(local + "/x.txt", Array("x\n".utf8))
        let push = try sb.cp(local + "/x.txt", server.url("alice/tree/d/x.txt"), tokenFile: alice, timeout: 30)
        #expect(push.status == 1 && !exists(root + "/bob/x.txt"), "\(push)")
        let ok = try sb.cp(server.url("alice/inside/mine.txt"), local + "/mine.txt", tokenFile: alice, timeout: 30)
        #expect(ok.succeeded && filesIdentical(root + "/alice/sub/mine.txt", local + "/mine.txt"), "\(ok)")
    }

    @Test("a link at the limit of a token's scope is not followed (the scope holds on disk), and a tree's destination that is a link is neither written nor deleted in")
    func linksAtScopeAndTreeDestination() throws {
        let sb = try Sandbox("scope-limit-link")
        let root = try sb.dir("root")
        try writeFile(try sb.dir("root/shared/b") + "/data.txt", Array("b's\n".utf8))
        symlink("b", root + "/shared/c")  // beneath its own directory, but out of the scope /shared/c
        let local = try sb.dir("local")
        let reader = try sb.issueToken(scopes: ["read:/shared/c"], name: "c-read.tok")
        let writer = try sb.issueToken(scopes: ["rw:/shared/c"], name: "c-rw.tok")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let pull = try sb.cp(server.url("shared/c/data.txt"), local + "/got.txt", tokenFile: reader, timeout: 30)
        #expect(!pull.succeeded && !exists(local + "/got.txt") && (pull.error?.message ?? pull.stderr).contains("symbolic link"), "\(pull)")
        let ls = try sb.ferry(["ls", "--ca", sb.ca, "--token-file", reader, server.url("shared/c")], timeout: 30)
        #expect(!ls.succeeded && !ls.stdout.contains("data.txt"), "\(ls)")
        try writeFile(local + "/x.txt", Array("x\n".utf8))
        let push = try sb.cp(local + "/x.txt", server.url("shared/c/x.txt"), tokenFile: writer, timeout: 30)
        #expect(!push.succeeded && !exists(root + "/shared/b/x.txt"), "\(push)")

        // A shared project directory: someone who can write it puts a link where the user's
        // tree goes; the user's own `cp -r --delete` must not empty the linked directory.
        let archive = try sb.dir("root/proj/archive")
        for n in ["precious1", "precious2"] { try writeFile(archive + "/" + n, Array(n.utf8)) }
        symlink("archive", root + "/proj/tree")
        let src = try sb.dir("local/src")
        try writeFile(src + "/new.txt", Array("new\n".utf8))
        let proj = try sb.issueToken(scopes: ["rw:/proj"], name: "proj.tok")
        let del = try sb.cp(src, server.url("proj/tree"), options: ["-r", "--delete"], tokenFile: proj, timeout: 30)
        #expect(!del.succeeded && (del.error?.message ?? del.stderr).contains("symbolic link"), "\(del)")
        #expect(exists(archive + "/precious1") && exists(archive + "/precious2") && !exists(archive + "/new.txt"), "the linked directory was changed")
        // Links beneath the limit still work where they stay in their directory.
        try writeFile(try sb.dir("root/shared/c2/sub") + "/in.txt", Array("in\n".utf8))
        symlink("sub", root + "/shared/c2/inside")
        let c2 = try sb.issueToken(scopes: ["read:/shared/c2"], name: "c2.tok")
        let ok = try sb.cp(server.url("shared/c2/inside/in.txt"), local + "/in.txt", tokenFile: c2, timeout: 30)
        #expect(ok.succeeded && filesIdentical(root + "/shared/c2/sub/in.txt", local + "/in.txt"), "\(ok)")
        #expect(server.isRunning)
    }

    @Test("an expired server certificate is refused by the client")
    func expiredServerCertificate() throws {
        let sb = try Sandbox("expired-server")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        try writeFile(local + "/a", [1, 2, 3])
        let old = try sb.dir("old")
        try Sandbox.ferryTool(["ca", "issue", "--dir", old, "--ca-dir", sb.pki, "--center", "hlrs", "--host", "127.0.0.1", "--days", "1", "--backdate-days", "5"])
        let server = try FerryServer(sb, root: root, extra: ["--cert", old + "/hlrs.crt", "--key", old + "/hlrs.key"])
        defer { server.stop() }
        let r = try sb.cp(local + "/a", server.url("a"), timeout: 30)
        #expect(r.status == 1)
        #expect((r.error?.message ?? r.stderr).contains("certificate has expired"), "\(r)")
        #expect(!exists(root + "/a"))
    }

    @Test("sealed frames replayed or reordered in flight are rejected; the copy completes identical", arguments: [FlipProxy.FrameAction.replay, .reorder], ["safe", "private"])
    func replayedAndReordered(_ action: FlipProxy.FrameAction, _ protection: String) throws {
        let sb = try Sandbox("frames-\(action)-\(protection)")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let size = 24 * E2E.MiB
        try writeRandomFile(local + "/data.bin", size: size)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let proxy = try FlipProxy(targetPort: server.port, flipOffset: Int.max, direction: .clientToServer)
        proxy.frameAction = action
        proxy.frameIndex = 2
        defer { proxy.stop() }
        let r = try sb.cp(local + "/data.bin", "ferry://127.0.0.1:\(proxy.port)/data.bin",
                          options: ["--streams", "2", "--chunk-size", "1M", "--protection", protection])
        #expect(proxy.frameActionDone, "the proxy never saw data frame 2")
        #expect(r.succeeded, "\(r)")
        #expect(filesIdentical(local + "/data.bin", root + "/data.bin"))
        let s = try #require(r.summary, "\(r)")
        // A replayed frame is dropped (its chunk arrived already); a reordered one leaves a gap
        // that is fetched again (one chunk), and its late copy is dropped.
        #expect(s.retransmittedChunks == (action == .replay ? 0 : 1), "\(s)")
        #expect(waitUntil(timeout: 5) { server.process.stderr.contains("1 frames rejected") }, "server log: \(server.process.stderr)")
    }

    @Test("server configuration: unknown settings and bad exports are refused with the line")
    func configErrors() throws {
        let sb = try Sandbox("config")
        let bad = [
            ("listen = [\"127.0.0.1:0\"]\nca = \"pki/ca.crt\"\ncertificate = \"pki/hlrs.crt\"\nkey = \"pki/hlrs.key\"\nexprot = 1\n", "unknown setting 'exprot'"),
            ("[[export]]\nname = \"x\"\npath = \"/nonexistent-ferry\"\naccess = \"rwx\"\n", "access must be"),
            ("center = \"hlrs\"\nlisten = [\"127.0.0.1:0\",\n  \"[::1]:0\"]\nca = \"pki/ca.crt\"\ncertificate = \"pki/hlrs.crt\"\nkey = \"pki/hlrs.key\"\n[[export]]\nname = \"a/b\"\npath = \"x\"\n", "bad export name"),
            ("center = \"wuxi\"\nlisten = [\"127.0.0.1:0\"]\nca = \"pki/ca.crt\"\ncertificate = \"pki/hlrs.crt\"\nkey = \"pki/hlrs.key\"\n[[export]]\nname = \"a\"\npath = \".\"\n", "not for center 'wuxi'"),
            ("listen = [\"127.0.0.1:0\"\n", "unterminated array"),
        ]
        for (i, (text, says)) in bad.enumerated() {
            let p = sb.file("bad\(i).toml")
            try writeFile(p, Array(text.utf8))
            let r = try sb.ferry(["serve", "--config", p])
            #expect(r.status == 64, "\(r)")
            #expect(r.stderr.contains(says), "config \(i) should say '\(says)': \(r.stderr)")
        }
    }
}
