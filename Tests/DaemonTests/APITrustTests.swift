// The daemon's API and runner against the reviews of 2026-12-06 (ops.md findings 1 and 2,
// attack.md findings 2 and 8), on a real `ferry serve` with a [daemon] (LiveDaemon.swift):
// who a peer's token is, whose account a job in the daemon's own areas runs as, how much an
// unauthenticated flood can write to the audit log, and what an oversized body answers.

import Foundation
import Testing
import Transfer
@testable import Daemon

#if canImport(Glibc)
import Glibc
#endif

@Suite("API trust (live daemon)", .serialized)
struct APITrustTests {
    static let identities = """
        [[identity]]
        user = "alice"
        account = "daemon"
        [[identity]]
        user = "alice@wuxi"
        account = "nobody"
        """

    @Test("a token issued by a peer center is NAME@PEER: not the local user (their jobs are invisible, cancel is 404), never the operator, its jobs run as the account mapped to NAME@PEER, unmapped it is refused, and the audit names NAME@PEER")
    func peerIssuedTokens() throws {
        let c = try LiveCenters("peer-token", hlrsTop: "token_issuers = [\"pki/hlrs.crt\", \"pki/wuxi.crt\"]", hlrsTables: Self.identities)
        defer { c.stop() }
        let alice = try c.sb.token("alice", ["rw:/scratch"])
        let wuxiAlice = try c.sb.token("alice", ["rw:/scratch"], by: "wuxi")
        let wuxiBob = try c.sb.token("bob", ["rw:/scratch"], by: "wuxi")
        let wuxiOperator = try c.sb.token("mallory", ["rw:/"], by: "wuxi")
        let ops = try c.sb.token("ops", ["rw:/"])
        try c.sb.write("hlrs/scratch/local.txt", "local alice's data\n")
        try c.sb.write("wuxi/outgoing/w.txt", "from wuxi\n")
        try c.sb.dir("hlrs/scratch/drop", mode: 0o777)

        // The local alice's job.
        let mine = try LiveHTTP.once(c.api, "POST", "/api/v1/transfers", token: alice,
                                     body: #"{"source": "/scratch/local.txt", "destination": "ferry://wuxi/incoming/local.txt"}"#)
        #expect(mine.status == 201, "\(mine)")
        let mineID = LiveHTTP.object(mine.body)["id"] as? Int ?? -1
        #expect(LiveHTTP.object(mine.body)["owner"] as? String == "alice")

        // wuxi's "alice" is another principal: alice's job is not hers to see or cancel.
        let list = try LiveHTTP.once(c.api, "GET", "/api/v1/transfers", token: wuxiAlice)
        #expect(list.status == 200, "\(list)")
        let listed = (LiveHTTP.object(list.body)["transfers"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? Int }
        #expect(!listed.contains(mineID), "wuxi's alice lists the local alice's job: \(list.body)")
        let get = try LiveHTTP.once(c.api, "GET", "/api/v1/transfers/\(mineID)", token: wuxiAlice)
        #expect(get.status == 404, "\(get)")
        let cancel = try LiveHTTP.once(c.api, "POST", "/api/v1/transfers/\(mineID)/cancel", token: wuxiAlice)
        #expect(cancel.status == 404, "wuxi's alice cancelled the local alice's job: \(cancel)")

        // Her own job is owned by alice@wuxi and runs as the account mapped to alice@wuxi
        // (nobody), not the local alice's (daemon): the file it writes is nobody's.
        let pull = try LiveHTTP.once(c.api, "POST", "/api/v1/transfers", token: wuxiAlice,
                                     body: #"{"source": "ferry://wuxi/outgoing/w.txt", "destination": "/scratch/drop/w.txt"}"#)
        #expect(pull.status == 201, "\(pull)")
        #expect(LiveHTTP.object(pull.body)["owner"] as? String == "alice@wuxi", "\(pull.body)")
        let pullID = LiveHTTP.object(pull.body)["id"] as? Int ?? -1
        let done = try c.waitJob(pullID, token: wuxiAlice)
        #expect(done["state"] as? String == "success", "\(done)")
        var st = stat()
        #expect(stat(c.scratch + "/drop/w.txt", &st) == 0)
        #expect(st.st_uid == 65534, "the job wrote as uid \(st.st_uid), not nobody's 65534")
        // Nor is her job the local alice's.
        let other = try LiveHTTP.once(c.api, "GET", "/api/v1/transfers/\(pullID)", token: alice)
        #expect(other.status == 404, "\(other)")

        // A peer's user without a mapping has no account here: refused at submit.
        let bob = try LiveHTTP.once(c.api, "POST", "/api/v1/transfers", token: wuxiBob,
                                    body: #"{"source": "/scratch/local.txt", "destination": "ferry://wuxi/incoming/bob.txt"}"#)
        #expect(bob.status == 403, "\(bob)")
        #expect((LiveHTTP.object(bob.body)["detail"] as? String ?? "").contains("'bob@wuxi' has no local account"), "\(bob.body)")

        // A peer's rw:/ token is not this center's operator: no one else's jobs, no federation
        // routes, and the console says so.
        let all = try LiveHTTP.once(c.api, "GET", "/api/v1/transfers?owner=alice", token: wuxiOperator)
        #expect(all.status == 200)
        #expect((LiveHTTP.object(all.body)["transfers"] as? [[String: Any]] ?? []).isEmpty, "\(all.body)")
        let feed = try LiveHTTP.once(c.api, "GET", "/api/v1/federation/changes", token: wuxiOperator)
        #expect(feed.status == 403, "\(feed)")
        let opCancel = try LiveHTTP.once(c.api, "POST", "/api/v1/transfers/\(mineID)/cancel", token: wuxiOperator)
        #expect(opCancel.status == 404, "\(opCancel)")
        let session = try LiveHTTP.once(c.api, "POST", "/ui/session", body: "{\"token\": \"\(wuxiOperator)\"}")
        #expect(session.status == 200, "\(session)")
        #expect(LiveHTTP.object(session.body)["operator"] as? Bool == false, "\(session.body)")
        #expect(LiveHTTP.object(session.body)["user"] as? String == "mallory@wuxi", "\(session.body)")
        // This center's own rw:/ token still is the operator.
        let opsAll = try LiveHTTP.once(c.api, "GET", "/api/v1/transfers?owner=alice", token: ops)
        #expect((LiveHTTP.object(opsAll.body)["transfers"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? Int }.contains(mineID), "\(opsAll.body)")
        #expect(try LiveHTTP.once(c.api, "GET", "/api/v1/federation/changes", token: ops).status == 200)

        // The audit names the qualified principal.
        _ = Live.wait(10) { c.auditLines().contains { $0["action"] as? String == "job.end" && ($0["path"] as? String ?? "").contains("(job \(pullID))") } }
        let lines = c.auditLines()
        #expect(lines.contains { $0["user"] as? String == "alice@wuxi" && $0["action"] as? String == "job.submit" }, "\(lines)")
        #expect(lines.contains { $0["user"] as? String == "alice@wuxi" && $0["action"] as? String == "api" && ($0["result"] as? String ?? "").contains("404") })
        #expect(lines.contains { $0["user"] as? String == "alice@wuxi" && $0["action"] as? String == "job.start" && $0["account"] as? String == "nobody" }, "\(lines)")
        #expect(lines.contains { $0["user"] as? String == "mallory@wuxi" && $0["action"] as? String == "api" })
        #expect(lines.contains { $0["user"] as? String == "mallory@wuxi" && $0["action"] as? String == "console.sign-in" })
        #expect(!lines.contains { $0["user"] as? String == "mallory" }, "an unqualified peer user in the audit")
        // The only refusal of "alice" is the local alice's own (alice@wuxi's job, above).
        #expect(lines.filter { $0["user"] as? String == "alice" && $0["action"] as? String == "api" }.map { $0["path"] as? String ?? "" }
                == ["GET /api/v1/transfers/\(pullID)"], "\(lines)")
    }

    @Test("a user's job under the daemon's replicas area runs as the user: reading a root-owned 0600 file there, or overwriting it, is refused by the kernel; the user's own readable file there is copied")
    func userJobInDaemonArea() throws {
        let c = try LiveCenters("daemon-area", hlrsDaemon: "replicas = \"/scratch/replicas\"", hlrsTables: Self.identities)
        defer { c.stop() }
        try c.sb.dir("hlrs/scratch/replicas/wuxi/ds")
        try c.sb.write("hlrs/scratch/replicas/wuxi/ds/secret.txt", "root's replica\n", mode: 0o600)
        try c.sb.write("hlrs/scratch/replicas/wuxi/ds/public.txt", "anyone may read this\n", mode: 0o644)
        try c.sb.write("wuxi/outgoing/w.txt", "overwritten\n")
        let alice = try c.sb.token("alice", ["rw:/scratch"])

        func job(_ body: String) throws -> [String: Any] {
            let r = try LiveHTTP.once(c.api, "POST", "/api/v1/transfers", token: alice, body: body)
            #expect(r.status == 201, "\(r)")
            return try c.waitJob(LiveHTTP.object(r.body)["id"] as? Int ?? -1, token: alice)
        }
        // Read: the job runs as alice's account (daemon), which may not open root's 0600 file.
        let read = try job(#"{"source": "/scratch/replicas/wuxi/ds/secret.txt", "destination": "ferry://wuxi/incoming/stolen.txt"}"#)
        #expect(read["state"] as? String == "failed", "\(read)")
        #expect((read["error"] as? String ?? "").contains("Permission denied") || read["error_code"] as? String == "permission", "\(read)")
        #expect(access(c.incoming + "/stolen.txt", F_OK) != 0, "root's file was delivered to the peer")
        // Write: nor replace it.
        let write = try job(#"{"source": "ferry://wuxi/outgoing/w.txt", "destination": "/scratch/replicas/wuxi/ds/secret.txt"}"#)
        #expect(write["state"] as? String == "failed", "\(write)")
        #expect((try? String(contentsOfFile: c.scratch + "/replicas/wuxi/ds/secret.txt", encoding: .utf8)) == "root's replica\n")
        // What alice's account may read there is copied as usual.
        let ok = try job(#"{"source": "/scratch/replicas/wuxi/ds/public.txt", "destination": "ferry://wuxi/incoming/public.txt"}"#)
        #expect(ok["state"] as? String == "success", "\(ok)")
        // The audit shows the account (it had none: root).
        _ = Live.wait(10) { c.auditLines().filter { $0["action"] as? String == "job.start" }.count >= 3 }
        let starts = c.auditLines().filter { $0["action"] as? String == "job.start" }
        #expect(starts.count == 3 && starts.allSatisfy { $0["account"] as? String == "daemon" }, "\(starts)")
    }

    @Test("1,000 unauthenticated requests with 2,000-byte paths grow the audit log by a bounded amount: at most ten lines a second, each with the client's address and a cut path, and one line a second counting the rest by address")
    func unauthenticatedFloodBounded() throws {
        let c = try LiveCenters("audit-flood")
        defer { c.stop() }
        let alice = try c.sb.token("alice", ["rw:/scratch"])
        // A refusal of a known user: its address, and its path cut too.
        let long = "/api/v1/transfers/" + String(repeating: "A", count: 2000)
        let known = try LiveHTTP.once(c.api, "GET", long, token: alice)
        #expect(known.status == 404 || known.status == 400, "\(known)")
        let before = c.auditBytes
        let linesBefore = c.auditLines().count
        var conn = try LiveHTTP(port: c.api)
        var refused = 0, reconnects = 0
        let t0 = Live.seconds()
        for _ in 0..<1000 {
            var answer: (status: Int, body: String)?
            for _ in 0..<3 {
                if let a = try? conn.request("GET", long, headers: ["Authorization: Bearer x"]) { answer = a; break }
                reconnects += 1
                conn = try LiveHTTP(port: c.api)
            }
            if answer?.status == 401 { refused += 1 }
        }
        let took = Live.seconds() - t0
        #expect(refused == 1000, "\(refused) of 1,000 refused with 401 (\(reconnects) reconnects)")
        // The last second's count is written when the second is over, with nothing after it.
        usleep(2_500_000)
        let grown = c.auditBytes - before
        // Before: 1,000 lines of 2,100 bytes (2.1 MB). Now about 11 lines a second of < 700
        // bytes: bounded by the flood's duration, not by its requests or their paths.
        let bound = Int((took + 3) * 11 * 700)
        #expect(grown < bound && grown < 256 << 10, "the audit log grew by \(grown) bytes for 1,000 refusals in \(took) s")
        let lines = Array(c.auditLines().dropFirst(linesBefore))
        let single = lines.filter { ($0["result"] as? String ?? "").hasPrefix("refused: 401") }
        let summaries = lines.filter { ($0["result"] as? String ?? "").contains("more unauthenticated requests in 1 s") }
        #expect(!summaries.isEmpty, "\(lines)")
        var counted = 0
        for s in summaries {
            let r = s["result"] as? String ?? ""
            #expect(r.contains("(127.0.0.1: "), "\(r)")
            #expect(s["peer"] as? String == "127.0.0.1")
            counted += Int(r.dropFirst("refused: ".count).split(separator: " ")[0]) ?? 0
        }
        #expect(single.count + counted == 1000, "\(single.count) lines and \(counted) counted")
        #expect(single.count <= Int(took + 2) * 10, "\(single.count) single lines in \(took) s")
        let unaddressed = single.filter { !($0["peer"] as? String ?? "").hasPrefix("127.0.0.1:") }
        #expect(unaddressed.isEmpty, "\(unaddressed.count) lines without the client's address, as \(unaddressed.first ?? [:])")
        let uncut = single.filter { let p = $0["path"] as? String ?? ""; return p.utf8.count >= 300 || !p.hasSuffix("... (2018 bytes)") }
        #expect(uncut.isEmpty, "\(uncut.count) paths not cut, as \((uncut.first?["path"] as? String ?? "").prefix(300))")
        // The known user's refusal: each written, with its address and the path cut.
        let mine = c.auditLines().first { $0["user"] as? String == "alice" && $0["action"] as? String == "api" }
        #expect((mine?["peer"] as? String ?? "").hasPrefix("127.0.0.1:"), "\(String(describing: mine))")
        #expect((mine?["path"] as? String ?? "").hasSuffix("(2018 bytes)"), "\(String(describing: mine))")
    }

    @Test("a request body over the submission's 4 MiB answers 413 with a problem (not 500); the daemon's SQLite database is created mode 0600")
    func oversizedBodyAndDatabaseMode() throws {
        let c = try LiveCenters("big-body")
        defer { c.stop() }
        let alice = try c.sb.token("alice", ["rw:/scratch"])
        let body = Array(#"{"source": "/scratch/x", "destination": "ferry://wuxi/incoming/x", "note": ""#.utf8) + [UInt8](repeating: 0x41, count: 5 << 20) + Array(#""}"#.utf8)
        let r = try LiveHTTP(port: c.api).request("POST", "/api/v1/transfers", token: alice, body: body)
        #expect(r.status == 413, "\(r.status) \(r.body.prefix(300))")
        let problem = LiveHTTP.object(r.body)
        #expect(problem["code"] as? String == "too_large" && problem["status"] as? Int == 413, "\(r.body.prefix(300))")
        // The daemon still answers.
        #expect(try LiveHTTP.once(c.api, "GET", "/api/v1/transfers", token: alice).status == 200)
        var st = stat()
        #expect(stat(c.sb.path + "/hlrs-jobs.sqlite", &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600, "mode \(String(st.st_mode & 0o777, radix: 8))")
    }
}

/// `Job.daemonMade` (attack review finding 2), without a daemon: the mark round-trips through
/// the queue, and only a marked job in a daemon area runs without its owner's account.
@Suite("Daemon-made jobs (unit)")
struct DaemonMadeJobTests {
    @Test("the mark is stored; a marked job in replicas or staging runs as the daemon, an unmarked one (a user's) as its owner's account wherever it lies, a marked one elsewhere as its owner")
    func localAccount() throws {
        let store = try JobStore(database: ":memory:")
        let user = try store.submit(owner: "alice", request: JobRequest(source: "ferry://wuxi/a", destination: "/data/replicas/wuxi/a"), peer: "wuxi", now: 1)
        let made = try store.submit(owner: "alice", request: JobRequest(source: "ferry://wuxi/a", destination: "/data/replicas/wuxi/a"), peer: "wuxi", now: 1, daemonMade: true)
        let madeElsewhere = try store.submit(owner: "alice", request: JobRequest(source: "/data/home/x", destination: "ferry://wuxi/x"), peer: "wuxi", now: 1, daemonMade: true)
        #expect(try store.get(user)?.daemonMade == false && store.get(made)?.daemonMade == true)
        let dir = NSTemporaryDirectory() + "ferry-daemon-made-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try CertificateAuthority.initialize(name: "test CA", days: 1, certificate: dir + "/ca.crt", key: dir + "/ca.key")
        var settings = RunnerSettings(exports: [Export(name: "data", path: dir, writable: true)], tls: TLSIdentity(certificate: nil, key: nil, ca: dir + "/ca.crt"))
        settings.identities = IdentityMap(entries: ["alice": "nobody"])
        settings.daemonAreas = ["/data/replicas", "/data/stage"]
        let runner = try JobRunner(store: store, settings: settings, workerID: "t")
        let export = settings.exports[0]
        guard IdentityMap.canSwitch else { return }
        let jobs = try store.get([user, made, madeElsewhere])
        #expect(try runner.localAccount(jobs[user]!, export)?.name == "nobody")
        #expect(try runner.localAccount(jobs[made]!, export) == nil)
        #expect(try runner.localAccount(jobs[madeElsewhere]!, export)?.name == "nobody")
    }
}

/// How a refusal's path and address reach the audit log (`RefusalAudit`), without a daemon.
@Suite("API refusal audit (unit)")
struct RefusalAuditUnitTests {
    @Test("a long path is cut at a character's start with its length; a short one is kept; an address is counted without its port (IPv4 and IPv6)")
    func shownAndHost() {
        #expect(RefusalAudit.shown("/api/v1/transfers") == "/api/v1/transfers")
        let ascii = String(repeating: "a", count: 300)
        #expect(RefusalAudit.shown(ascii) == String(repeating: "a", count: 256) + "... (300 bytes)")
        // "é" is two bytes: byte 256 would fall inside one, so the cut moves back to its start.
        let wide = "x" + String(repeating: "é", count: 200)
        let cut = RefusalAudit.shown(wide)
        #expect(cut.hasSuffix("... (401 bytes)") && cut.utf8.count <= 256 + "... (401 bytes)".utf8.count, "\(cut)")
        #expect(!cut.contains("\u{FFFD}"))
        #expect(RefusalAudit.host("127.0.0.1:40520") == "127.0.0.1")
        #expect(RefusalAudit.host("[::1]:40520") == "[::1]")
        #expect(RefusalAudit.host("") == "unknown")
    }
}
