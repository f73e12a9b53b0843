// Issue 13, tried as an attacker with a valid token of an ordinary user would: the daemon is no
// open proxy, dependencies name only one's own jobs, dataset names have owners, refusals and
// jobs are audited. Two centers on loopback (DaemonE2ETests.start): hlrs runs the daemon,
// wuxi is its only [[peer]].

import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Multi-user trust (daemon)")
struct TrustTests {
    /// One HTTP request through Python's urllib: the status and the body (also for 4xx).
    static func http(_ method: String, _ url: String, token: String?, body: String? = nil) -> (status: Int, body: String) {
        let script = """
            import sys, urllib.request, urllib.error
            url, method, tok, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
            h = {'Content-Type': 'application/json'}
            if tok: h['Authorization'] = 'Bearer ' + open(tok).read().strip()
            req = urllib.request.Request(url, data=body.encode() if body else None, method=method, headers=h)
            try:
                r = urllib.request.urlopen(req, timeout=30); code = r.status; text = r.read().decode()
            except urllib.error.HTTPError as e:
                code = e.code; text = e.read().decode()
            sys.stdout.write(str(code) + '\\n' + text)
            """
        let out = runTool("/usr/bin/python3", ["-c", script, url, method, token ?? "", body ?? ""], timeout: 60).output
        guard let nl = out.firstIndex(of: "\n"), let code = Int(out[..<nl]) else { return (0, out) }
        return (code, String(out[out.index(after: nl)...]))
    }

    static func object(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
    }

    /// Reads the Prometheus text exposition format strictly (comments, then samples
    /// `name{label="value",...} number`, values escaped only as `\\`, `\"`, `\n`): the samples
    /// with their unescaped labels, or nil at the first line the format does not allow.
    static func parseMetrics(_ text: String) -> [(name: String, labels: [String: String], value: Double)]? {
        var out: [(String, [String: String], Double)] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty || line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") { continue }
            var it = Array(line.unicodeScalars)[...]
            func isNameChar(_ c: Unicode.Scalar, first: Bool) -> Bool {
                (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c == "_" || c == ":" || (!first && c >= "0" && c <= "9")
            }
            var name = ""
            while let c = it.first, isNameChar(c, first: name.isEmpty) { name.unicodeScalars.append(c); it = it.dropFirst() }
            guard !name.isEmpty else { return nil }
            var labels: [String: String] = [:]
            if it.first == "{" {
                it = it.dropFirst()
                while it.first != "}" {
                    var key = ""
                    while let c = it.first, isNameChar(c, first: key.isEmpty) { key.unicodeScalars.append(c); it = it.dropFirst() }
                    guard !key.isEmpty, it.first == "=" else { return nil }
                    it = it.dropFirst()
                    guard it.first == "\"" else { return nil }
                    it = it.dropFirst()
                    var value = ""
                    while true {
                        guard let c = it.first else { return nil }
                        it = it.dropFirst()
                        if c == "\"" { break }
                        if c == "\\" {
                            guard let e = it.first else { return nil }
                            it = it.dropFirst()
                            switch e {
                            case "\\": value += "\\"
                            case "\"": value += "\""
                            case "n": value += "\n"
                            default: return nil
                            }
                        } else {
                            value.unicodeScalars.append(c)
                        }
                    }
                    labels[key] = value
                    if it.first == "," { it = it.dropFirst() } else if it.first != "}" { return nil }
                }
                it = it.dropFirst()
            }
            guard it.first == " ", let v = Double(String(String.UnicodeScalarView(it.dropFirst()))) else { return nil }
            out.append((name, labels, v))
        }
        return out
    }

    @Test("the daemon is no open proxy: unknown hosts and hostile names refused at submit (400, nothing dialled, no peer entry); /metrics parses; health shows only configured peers; dependsOn on another user's job answers as a missing one")
    func notAnOpenProxy() throws {
        let c = try DaemonE2ETests.start("trust-proxy")
        defer { c.a.stop(); c.b.stop() }
        let alice = try c.sb.issueToken(user: "alice", scopes: ["rw:/scratch/alice"], name: "alice.tok")
        let bob = try c.sb.issueToken(user: "bob", scopes: ["rw:/scratch/bob"], name: "bob.tok")
        try c.sb.dir("hlrs/scratch/alice")
        try c.sb.dir("hlrs/scratch/bob")
        try writeRandomFile(c.scratch + "/alice/data.bin", size: 3 * E2E.MiB)
        try writeFile(c.scratch + "/bob/b.txt", Array("bob\n".utf8))
        // Something listening on loopback that is not a peer: the daemon must never dial it.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var addr = loopbackAddress(port: 0)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(listen(listener, 16) == 0)
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) } }
        let trapPort = Int(UInt16(bigEndian: bound.sin_port))
        _ = fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK)

        // A legitimate job of alice's to the configured peer, by name.
        let legit = TrustTests.http("POST", c.api + "/api/v1/transfers", token: alice,
                                    body: #"{"source": "/scratch/alice/data.bin", "destination": "ferry://wuxi/incoming/alice-data.bin"}"#)
        #expect(legit.status == 201, "\(legit)")
        let legitID = TrustTests.object(legit.body)["id"] as? Int ?? -1

        // Hosts the configuration does not name, including ones with quotes and newlines.
        let hostile = [
            "ferry://127.0.0.1:\(trapPort)/x",
            "ferry://127.0.0.1:22/x",
            "ferry://localhost:\(trapPort)/x",
            "ferry://ev\\\"il} 1\\nferry_injected{a=\\\"b:1/x",
            "ferry://a\\nb:7400/x",
        ]
        for dst in hostile {
            let r = TrustTests.http("POST", c.api + "/api/v1/transfers", token: bob, body: #"{"source": "/scratch/bob/b.txt", "destination": "\#(dst)"}"#)
            #expect(r.status == 400, "\(dst): \(r)")
            // A name that is no host at all (quotes, line breaks) is refused by the URL parser
            // (`FerryURL`) before the peer check; either way nothing is dialled.
            let why = TrustTests.object(r.body)["error"] as? String ?? ""
            #expect(why.contains("neither a peer of this center") || why.contains("bad URL"), "\(dst): \(r.body)")
            // As a source too (pull from an unknown host into the user's own directory).
            let s = TrustTests.http("POST", c.api + "/api/v1/transfers", token: bob, body: #"{"source": "\#(dst)", "destination": "/scratch/bob/in"}"#)
            #expect(s.status == 400, "\(dst) as source: \(s)")
        }
        // Several sources: refused whole.
        let multi = TrustTests.http("POST", c.api + "/api/v1/transfers", token: bob,
                                    body: #"{"sources": ["/scratch/bob/b.txt"], "destination": "ferry://127.0.0.1:\#(trapPort)/d/"}"#)
        #expect(multi.status == 400, "\(multi)")
        // A peer's own address is that peer (authenticated as wuxi): accepted.
        let byAddress = TrustTests.http("POST", c.api + "/api/v1/transfers", token: bob,
                                        body: #"{"source": "/scratch/bob/b.txt", "destination": "ferry://127.0.0.1:\#(c.b.port)/incoming/bob-b.txt"}"#)
        #expect(byAddress.status == 201, "\(byAddress)")
        #expect(TrustTests.object(byAddress.body)["peer"] as? String == "wuxi", "\(byAddress.body)")

        // Bob's jobs: only the one to wuxi exists.
        let listed = TrustTests.object(TrustTests.http("GET", c.api + "/api/v1/transfers", token: bob).body)["transfers"] as? [[String: Any]] ?? []
        #expect(listed.count == 1, "\(listed)")

        // dependsOn: alice's job id answers for bob exactly as a job that does not exist.
        let missingID = 900_000
        let onAlice = TrustTests.http("POST", c.api + "/api/v1/transfers", token: bob,
                                      body: #"{"source": "/scratch/bob/b.txt", "destination": "ferry://wuxi/incoming/bob2.txt", "dependsOn": [\#(legitID)]}"#)
        let onMissing = TrustTests.http("POST", c.api + "/api/v1/transfers", token: bob,
                                        body: #"{"source": "/scratch/bob/b.txt", "destination": "ferry://wuxi/incoming/bob2.txt", "dependsOn": [\#(missingID)]}"#)
        #expect(onMissing.status != 201, "\(onMissing)")
        #expect(onAlice.status == onMissing.status, "\(onAlice) vs \(onMissing)")
        #expect(onAlice.body.replacingOccurrences(of: "\(legitID)", with: "N") == onMissing.body.replacingOccurrences(of: "\(missingID)", with: "N"),
                "\(onAlice.body) vs \(onMissing.body)")
        // Her own job: accepted.
        let own = TrustTests.http("POST", c.api + "/api/v1/transfers", token: alice,
                                  body: #"{"source": "/scratch/alice/data.bin", "destination": "ferry://wuxi/incoming/alice-2.bin", "dependsOn": [\#(legitID)]}"#)
        #expect(own.status == 201, "\(own)")

        // The legitimate transfers complete byte-identical.
        let (_, done) = DaemonE2ETests.waitForState(c, Int(TrustTests.object(own.body)["id"] as? Int ?? -1), "success", timeout: 60)
        #expect(done["state"] as? String == "success", "\(done)")
        #expect(filesIdentical(c.scratch + "/alice/data.bin", c.incoming + "/alice-data.bin"))
        #expect(filesIdentical(c.scratch + "/alice/data.bin", c.incoming + "/alice-2.bin"))
        #expect(filesIdentical(c.scratch + "/bob/b.txt", c.incoming + "/bob-b.txt"))

        // Nothing ever connected to the trap.
        var peerAddr = sockaddr()
        var peerLen = socklen_t(MemoryLayout<sockaddr>.size)
        let accepted = accept(listener, &peerAddr, &peerLen)
        #expect(accepted < 0, "the daemon dialled a host the configuration does not name")
        if accepted >= 0 { close(accepted) }

        // Health (no token): only configured peers. Metrics (no token): the format parses.
        let health = TrustTests.object(DaemonE2ETests.httpGet(c.api + "/api/v1/health"))
        let peers = (health["peers"] as? [String: Any]) ?? [:]
        #expect(Set(peers.keys).isSubset(of: ["wuxi"]), "\(health)")
        let metrics = DaemonE2ETests.httpGet(c.api + "/metrics")
        let samples = TrustTests.parseMetrics(metrics)
        #expect(samples != nil, "/metrics does not parse: \(metrics)")
        #expect(!(samples ?? []).contains { $0.name == "ferry_injected" }, "\(metrics)")
        #expect((samples ?? []).allSatisfy { ($0.labels["peer"] ?? "wuxi") == "wuxi" }, "\(metrics)")
    }

    @Test("`ferry token issue --out FILE`: mode 0600 whatever was there, never through a symbolic link; `token show` and `ping` say when a token is expired or not yet valid")
    func tokenFiles() throws {
        let sb = try Sandbox("trust-token")
        let issue = ["token", "issue", "--cert", sb.centerCert, "--key", sb.centerKey, "--user", "carol", "--scope", "read:/data"]
        // A new file: 0600.
        let fresh = sb.file("fresh.tok")
        let r1 = try sb.ferry(issue + ["--out", fresh])
        #expect(r1.status == 0, "\(r1)")
        #expect((meta(fresh)?.mode ?? 0) & 0o7777 == 0o600, "\(String(meta(fresh)?.mode ?? 0, radix: 8))")
        #expect(!r1.stdout.contains(String(decoding: readFile(fresh) ?? [], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)), "the token went to stdout too")
        // An existing world-readable file: made 0600 before the token is in it.
        let old = sb.file("old.tok")
        try writeFile(old, Array("an old token that is much longer than any new one would ever be, padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding padding\n".utf8))
        chmod(old, 0o644)
        let r2 = try sb.ferry(issue + ["--out", old])
        #expect(r2.status == 0, "\(r2)")
        #expect((meta(old)?.mode ?? 0) & 0o7777 == 0o600)
        let written = String(decoding: readFile(old) ?? [], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!written.contains("padding") && !written.isEmpty, "\(written)")
        let shown = try sb.ferry(["token", "show", "@" + old, "--cert", sb.centerCert])
        #expect(shown.status == 0 && shown.stdout.contains("\"user\":\"carol\"") && shown.stdout.contains("\"state\":\"valid\""), "\(shown)")
        // A symbolic link (to a file the attacker wants readable, or anywhere): refused, target untouched.
        let target = sb.file("target.txt")
        try writeFile(target, Array("keep\n".utf8))
        chmod(target, 0o644)
        let link = sb.file("link.tok")
        #expect(symlink(target, link) == 0)
        let r3 = try sb.ferry(issue + ["--out", link])
        #expect(r3.status != 0 && r3.stderr.contains("symbolic link"), "\(r3)")
        #expect(readFile(target) == Array("keep\n".utf8))
        #expect((meta(target)?.mode ?? 0) & 0o7777 == 0o644)
        let dangling = sb.file("dangling.tok")
        #expect(symlink(sb.file("nowhere/created.tok"), dangling) == 0)
        let r4 = try sb.ferry(issue + ["--out", dangling])
        #expect(r4.status != 0, "\(r4)")
        #expect(!exists(sb.file("nowhere")))
        // A directory: refused.
        let r5 = try sb.ferry(issue + ["--out", try sb.dir("adir")])
        #expect(r5.status != 0, "\(r5)")

        // Expired and not yet valid: `token show` says so (also with --cert), `ping` too.
        let expired = sb.file("expired.tok")
        #expect(try sb.ferry(issue + ["--ttl", "60s", "--backdate", "2h", "--out", expired]).status == 0)
        let early = sb.file("early.tok")
        #expect(try sb.ferry(issue + ["--ttl", "2h", "--backdate=-1h", "--out", early]).status == 0)
        for cert in [[], ["--cert", sb.centerCert]] {
            let e = try sb.ferry(["token", "show", "@" + expired] + cert)
            #expect(e.status == 0 && e.stdout.contains("\"state\":\"expired\"") && e.stderr.contains("expired at"), "\(e)")
            let n = try sb.ferry(["token", "show", "@" + early] + cert)
            #expect(n.status == 0 && n.stdout.contains("\"state\":\"not_yet_valid\"") && n.stderr.contains("not valid before"), "\(n)")
        }
        let server = try FerryServer(sb, root: try sb.dir("root"))
        defer { server.stop() }
        let pe = try sb.ferry(["ping", server.url(""), "--ca", sb.ca, "--token-file", expired])
        // The server's answer is shown, and the ping fails: a copy would be refused with it.
        #expect(pe.status == 1 && pe.stdout.contains("is center hlrs") && pe.stderr.contains("expired at"), "\(pe)")
        let pn = try sb.ferry(["ping", server.url(""), "--ca", sb.ca, "--token-file", early])
        #expect(pn.status == 1 && pn.stderr.contains("not valid before"), "\(pn)")
        let pv = try sb.ferry(["ping", server.url(""), "--ca", sb.ca, "--token-file", fresh])
        #expect(pv.status == 0 && pv.stderr.contains("valid until"), "\(pv)")
    }

    @Test("the daemon keeps an export's own rules (read-only, its user list) for jobs and registrations as the transfer server does; out-of-range times stop nothing (a query's newer=, a file's mtime in 2^62 s)")
    func exportRulesAndTimes() throws {
        let c = try DaemonE2ETests.start("trust-exports", hlrsTables: """
            [[export]]
            name = "pub"
            path = "hlrs"
            access = "ro"
            users = ["*"]
            [[export]]
            name = "secret"
            path = "wuxi/archive"
            access = "rw"
            users = ["root"]
            """)
        defer { c.a.stop(); c.b.stop() }
        // (Directories that exist when the daemon starts: /pub is hlrs's tree, /secret wuxi's archive.)
        try writeFile(c.archive + "/s.txt", Array("topsecret\n".utf8))
        try writeFile(c.sb.file("hlrs/p.txt"), Array("public\n".utf8))
        // Scopes that would allow all of it: only the exports' rules stand in the way.
        let eve = try c.sb.issueToken(user: "eve", scopes: ["rw:/"], name: "eve.tok")
        func submit(_ body: String) -> (status: Int, body: String) { TrustTests.http("POST", c.api + "/api/v1/transfers", token: eve, body: body) }
        let steal = submit(#"{"source": "/secret/s.txt", "destination": "ferry://wuxi/incoming/stolen.txt"}"#)
        #expect(steal.status == 403 && steal.body.contains("may not use export 'secret'"), "\(steal)")
        let into = submit(#"{"source": "ferry://wuxi/archive/none.txt", "destination": "/pub/by-eve.txt"}"#)
        #expect(into.status == 403 && into.body.contains("read-only"), "\(into)")
        let leak = TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: eve, body: #"{"path": "/secret", "dataset": "leak", "readers": ["*"]}"#)
        #expect(leak.status == 403, "\(leak)")
        // What the exports allow still works: reading the read-only one.
        let ok = submit(#"{"source": "/pub/p.txt", "destination": "ferry://wuxi/incoming/p.txt"}"#)
        #expect(ok.status == 201, "\(ok)")
        #expect(!exists(c.incoming + "/stolen.txt") && !exists(c.sb.file("hlrs/by-eve.txt")))

        // A file whose owner set its mtime far in the future (tmpfs takes 2^62 s), registered;
        // then a search with a `newer` whose nanoseconds overflow. Both stopped the daemon.
        let mine = try c.sb.dir("hlrs/scratch/eve")
        try writeFile(mine + "/future.txt", Array("x".utf8))
        var times = [timespec(tv_sec: 1 << 62, tv_nsec: 0), timespec(tv_sec: 1 << 62, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, mine + "/future.txt", &times, 0) == 0)
        let reg = TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: eve, body: #"{"path": "/scratch/eve", "dataset": "future"}"#)
        #expect(reg.status == 200, "\(reg)")
        for newer in ["9300000000", "-9223372036854775808"] {
            let find = TrustTests.http("GET", c.api + "/api/v1/catalog/find?path=gfs://hlrs/future&newer=" + newer, token: eve)
            #expect(find.status == 400 && find.body.contains("out of range"), "\(newer): \(find)")
        }
        let found = TrustTests.http("GET", c.api + "/api/v1/catalog/find?path=gfs://hlrs/future&newer=0", token: eve)
        #expect(found.status == 200 && found.body.contains("future.txt"), "\(found)")

        // A link at the limit of a token's scope (c -> eve, beside it) is not followed for a
        // job or a registration either: the scope /scratch/c holds on disk.
        symlink("eve", c.scratch + "/c")
        let narrow = try c.sb.issueToken(user: "eve", scopes: ["read:/scratch/c"], name: "eve-c.tok")
        let viaLink = TrustTests.http("POST", c.api + "/api/v1/transfers", token: narrow, body: #"{"source": "/scratch/c/future.txt", "destination": "ferry://wuxi/incoming/f.txt"}"#)
        #expect(viaLink.status == 403 && viaLink.body.contains("symbolic link"), "\(viaLink)")
        let regLink = TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: narrow, body: #"{"path": "/scratch/c", "dataset": "via-link"}"#)
        #expect(regLink.status == 403, "\(regLink)")
        #expect(c.a.isRunning)
    }

    /// The scope check at submit holds when the job runs: the depth no link is followed in goes
    /// into the queue with the job (`Job.linkFree`), since the runner has no token to ask again.
    /// Before, a job that waited (here for another of its owner's jobs) read through a link put
    /// at the scope's limit in the meantime.
    @Test("a link put at the limit of a token's scope after a job was submitted is not followed when the job runs: the job fails, nothing the link leads to leaves", arguments: Backend.allCases)
    func linkAfterSubmit(_ backend: Backend) throws {
        let c = try DaemonE2ETests.start("trust-late-link", backend: backend)
        defer { c.a.stop(); c.b.stop() }
        let slow = try c.sb.dir("hlrs/scratch/s")
        try writeRandomFile(slow + "/slow.bin", size: 6 * E2E.MiB)
        let mine = try c.sb.dir("hlrs/scratch/c")
        try writeFile(mine + "/data.txt", Array("c's own\n".utf8))
        let other = try c.sb.dir("hlrs/scratch/eve")
        try writeFile(other + "/data.txt", Array("eve's, never c's\n".utf8))
        let slowToken = try c.sb.issueToken(user: "eve", scopes: ["read:/scratch/s"], name: "eve-s.tok")
        let narrow = try c.sb.issueToken(user: "eve", scopes: ["read:/scratch/c"], name: "eve-c.tok")
        // Three seconds at 2 MiB/s; the second job waits for it.
        let first = TrustTests.http("POST", c.api + "/api/v1/transfers", token: slowToken,
                                    body: #"{"source": "/scratch/s/slow.bin", "destination": "ferry://wuxi/incoming/slow.bin", "bwlimit": 2097152}"#)
        #expect(first.status == 201, "\(first)")
        let firstID = TrustTests.object(first.body)["id"] as? Int ?? -1
        let second = TrustTests.http("POST", c.api + "/api/v1/transfers", token: narrow,
                                     body: #"{"source": "/scratch/c/data.txt", "destination": "ferry://wuxi/incoming/data.txt", "dependsOn": [\#(firstID)]}"#)
        #expect(second.status == 201, "\(second)")
        let secondID = TrustTests.object(second.body)["id"] as? Int ?? -1
        // While it waits, c becomes a link to eve, beside it.
        #expect(rename(mine, c.scratch + "/c.old") == 0)
        #expect(symlink("eve", c.scratch + "/c") == 0)
        var job: [String: Any] = [:]
        let ended = waitUntil(timeout: 90, interval: 0.2) {
            job = (try? DaemonE2ETests.lastJSON(DaemonE2ETests.jobs(c, ["show", "\(secondID)"]))) ?? [:]
            return ["success", "failed", "upstream_failed", "skipped"].contains(job["state"] as? String ?? "")
        }
        #expect(ended, "\(job)")
        #expect(job["state"] as? String == "failed" && (job["error"] as? String ?? "").contains("symbolic link"), "\(job)")
        #expect(!exists(c.incoming + "/data.txt"), "the file the link leads to left: \((try? String(contentsOfFile: c.incoming + "/data.txt", encoding: .utf8)) ?? "")")
        #expect(filesIdentical(slow + "/slow.bin", c.incoming + "/slow.bin"), "the first job, which no link touched, did not land")
        #expect(c.a.isRunning)
    }

    /// A registration opens its directory as a job does: no link followed down to the limit of
    /// the token's scope, both when the request is checked (`authorizeLocal`'s probe) and when
    /// the directory is opened for the scan (`openConfined(linkFree:)`, for a link swapped in
    /// between). With neither, a user whose scope is `/scratch/c`, `c` a link to another user's
    /// directory, published that directory's files as a dataset of theirs (checked by taking
    /// both out: the register answered 200 and `stolen/secret.txt` was listed).
    @Test("register of a directory that is a link at the limit of the token's scope is refused: no dataset, none of the files the link leads to listed")
    func registerThroughLink() throws {
        let c = try DaemonE2ETests.start("trust-register-link")
        defer { c.a.stop(); c.b.stop() }
        let alice = try c.sb.dir("hlrs/scratch/alice")
        try writeFile(alice + "/secret.txt", Array("alice's\n".utf8))
        #expect(symlink("alice", c.scratch + "/c") == 0)
        let eve = try c.sb.issueToken(user: "eve", scopes: ["read:/scratch/c"], name: "eve-c.tok")
        let reg = TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: eve, body: #"{"path": "/scratch/c", "dataset": "stolen", "readers": ["*"]}"#)
        #expect(reg.status >= 400 && reg.status < 500 && reg.body.contains("symbolic link"), "\(reg)")
        let listed = TrustTests.http("GET", c.api + "/api/v1/catalog/datasets", token: eve)
        #expect(listed.status == 200 && !listed.body.contains("stolen"), "\(listed)")
        let stat = TrustTests.http("GET", c.api + "/api/v1/catalog/stat?path=gfs://hlrs/stolen/secret.txt", token: eve)
        #expect(stat.status == 404, "\(stat)")
        // A link beneath the scope's limit, within its directory, still registers.
        let mine = try c.sb.dir("hlrs/scratch/eve/data")
        try writeFile(mine + "/own.txt", Array("eve's\n".utf8))
        #expect(symlink("data", c.scratch + "/eve/current") == 0)
        let evesOwn = try c.sb.issueToken(user: "eve", scopes: ["read:/scratch/eve"], name: "eve-own.tok")
        let ok = TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: evesOwn, body: #"{"path": "/scratch/eve/current", "dataset": "evedata"}"#)
        #expect(ok.status == 200, "\(ok)")
        let own = TrustTests.http("GET", c.api + "/api/v1/catalog/stat?path=gfs://hlrs/evedata/own.txt", token: evesOwn)
        #expect(own.status == 200, "\(own)")
        #expect(c.a.isRunning)
    }

    /// Replication writes beneath the center's replica root with the requester's rights and, as
    /// a job does, follows no link down to the limit of the token's scope: at the request
    /// (`authorizeLocal`'s probe) and when the job runs (`Job.linkFree`, passed by
    /// `FederationAPI.replicate`). Here `store/hlrs`, the limit of eve's scope, is a link to
    /// another user's directory beside it. Checked by taking the checks out: without the probe
    /// the request is accepted and the job's depth still keeps the replica out; without both,
    /// the replica landed in the other user's directory.
    @Test("replicate into a replica directory that is a link at the limit of the token's scope is refused: nothing lands where the link leads")
    func replicateThroughLink() throws {
        let f = try FederationE2ETests.start(.sqlite)
        defer { f.stopAll() }
        let sb = f.sb
        try writeFile(try sb.dir("hlrs/data/ds") + "/a.txt", Array("a\n".utf8))
        let reg = try f.ferry("hlrs", ["register", "/data/ds", "--dataset", "ds", "--readers", "*"])
        #expect(reg.status == 0, "\(reg)")
        let seen = try FederationE2ETests.eventually(30, { try f.ferry("wuxi", ["ls", "gfs://hlrs/ds"]) }) { $0.status == 0 }
        #expect(seen.status == 0, "\(seen)")
        let victim = try sb.dir("wuxi/replicas/store/victim")
        try writeFile(victim + "/keep.txt", Array("victim's\n".utf8))
        #expect(symlink("victim", sb.file("wuxi/replicas/store/hlrs")) == 0)
        let eve = try sb.issueToken(user: "eve", scopes: ["rw:/replicas/store/hlrs"], name: "eve-rep.tok")
        let r = TrustTests.http("POST", f.api("wuxi") + "/api/v1/catalog/replicate", token: eve, body: #"{"path": "gfs://hlrs/ds"}"#)
        #expect(r.status == 403 && r.body.contains("symbolic link"), "\(r)")
        // Had a job been queued, it would have landed by now (one file, loopback).
        usleep(3_000_000)
        #expect(!exists(victim + "/ds"), "the replica landed where the link leads")
        #expect((try? FileManager.default.contentsOfDirectory(atPath: victim)) == ["keep.txt"])
        #expect(f.servers["wuxi"]!.isRunning)
    }

    @Test("dataset names have owners: another user's register of a taken name is refused (403) and changes nothing; the owner and an operator may register again")
    func datasetNames() throws {
        let c = try DaemonE2ETests.start("trust-names")
        defer { c.a.stop(); c.b.stop() }
        let alice = try c.sb.issueToken(user: "alice", scopes: ["rw:/scratch/alice"], name: "alice.tok")
        let bob = try c.sb.issueToken(user: "bob", scopes: ["rw:/scratch/bob"], name: "bob.tok")
        let ops = try c.sb.issueToken(user: "ops", scopes: ["rw:/"], name: "ops.tok")
        try writeFile(try c.sb.dir("hlrs/scratch/alice/results") + "/secret.txt", Array("alice's\n".utf8))
        try writeFile(try c.sb.dir("hlrs/scratch/bob/fake") + "/planted.txt", Array("bob's\n".utf8))
        let reg = TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: alice, body: #"{"path": "/scratch/alice/results", "dataset": "results"}"#)
        #expect(reg.status == 200, "\(reg)")

        let takeover = TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: bob,
                                       body: #"{"path": "/scratch/bob/fake", "dataset": "results", "readers": ["*"]}"#)
        #expect(takeover.status == 403, "\(takeover)")
        #expect((TrustTests.object(takeover.body)["error"] as? String ?? "").contains("belongs to another user"), "\(takeover.body)")
        // Nor beneath it, nor as another version of it (either would answer for her paths:
        // the longest name wins, then the newest version), nor around a name of hers.
        for taken in ["results/sub", "results@2025"] {
            let r = TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: bob, body: #"{"path": "/scratch/bob/fake", "dataset": "\#(taken)", "readers": ["*"]}"#)
            #expect(r.status == 403 && r.body.contains("would take over paths of 'results'"), "\(taken): \(r)")
        }
        try writeFile(try c.sb.dir("hlrs/scratch/alice/deep") + "/d.txt", Array("d\n".utf8))
        #expect(TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: alice, body: #"{"path": "/scratch/alice/deep", "dataset": "proj/deep"}"#).status == 200)
        let around = TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: bob, body: #"{"path": "/scratch/bob/fake", "dataset": "proj"}"#)
        #expect(around.status == 403, "\(around)")
        let version = TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: alice, body: #"{"path": "/scratch/alice/results", "dataset": "results@2025"}"#)
        #expect(version.status == 200, "the owner registers another version: \(version)")
        let asBob = TrustTests.http("GET", c.api + "/api/v1/catalog/stat?path=gfs://hlrs/results/sub/planted.txt", token: alice)
        #expect(asBob.status == 404, "\(asBob)")
        // Still alice's, still private, still her tree.
        let bobSees = TrustTests.http("GET", c.api + "/api/v1/catalog/datasets", token: bob)
        #expect(bobSees.status == 200 && !bobSees.body.contains("results"), "\(bobSees)")
        let stat = TrustTests.http("GET", c.api + "/api/v1/catalog/stat?path=gfs://hlrs/results/secret.txt", token: alice)
        #expect(stat.status == 200, "\(stat)")
        let planted = TrustTests.http("GET", c.api + "/api/v1/catalog/stat?path=gfs://hlrs/results/planted.txt", token: alice)
        #expect(planted.status == 404, "\(planted)")
        let ds = (TrustTests.object(TrustTests.http("GET", c.api + "/api/v1/catalog/datasets", token: alice).body)["datasets"] as? [[String: Any]]) ?? []
        #expect(ds.count == 3 && ds.allSatisfy { $0["owner"] as? String == "alice" } && (ds.first?["readers"] as? [String]) == [], "\(ds)")

        // The owner registers again; an operator may (readers changed, owner kept).
        #expect(TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: alice, body: #"{"path": "/scratch/alice/results", "dataset": "results"}"#).status == 200)
        let byOps = TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: ops,
                                    body: #"{"path": "/scratch/alice/results", "dataset": "results", "readers": ["carol"]}"#)
        #expect(byOps.status == 200, "\(byOps)")
        let ds2 = (TrustTests.object(TrustTests.http("GET", c.api + "/api/v1/catalog/datasets", token: alice).body)["datasets"] as? [[String: Any]]) ?? []
        let results = ds2.first { $0["name"] as? String == "results" && ($0["version"] as? String ?? "") == "" }
        #expect(results?["owner"] as? String == "alice" && (results?["readers"] as? [String]) == ["carol"], "\(ds2)")
    }

    @Test("the API's refusals (401, 403, 404 on another user's job or dataset, 400 for a host that is no peer) and each job's start and end, submits and registrations are in the center's audit log, in the engine's format")
    func auditTrail() throws {
        let c = try DaemonE2ETests.start("trust-audit")
        defer { c.a.stop(); c.b.stop() }
        let alice = try c.sb.issueToken(user: "alice", scopes: ["rw:/scratch/alice"], name: "alice.tok")
        let bob = try c.sb.issueToken(user: "bob", scopes: ["rw:/scratch/bob"], name: "bob.tok")
        let expired = try c.sb.issueToken(user: "eve", scopes: ["rw:/scratch/eve"], ttl: "60s", extra: ["--backdate", "2h"], name: "eve.tok")
        try writeRandomFile(try c.sb.dir("hlrs/scratch/alice/results") + "/r.bin", size: 1_000_000)
        try c.sb.dir("hlrs/scratch/bob")
        let auditPath = c.sb.file("hlrs-audit.jsonl")

        let job = TrustTests.http("POST", c.api + "/api/v1/transfers", token: alice,
                                  body: #"{"source": "/scratch/alice/results/r.bin", "destination": "ferry://wuxi/incoming/r.bin"}"#)
        #expect(job.status == 201, "\(job)")
        let id = TrustTests.object(job.body)["id"] as? Int ?? -1
        let (_, done) = DaemonE2ETests.waitForState(c, id, "success", timeout: 60)
        #expect(done["state"] as? String == "success", "\(done)")
        #expect(TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: alice, body: #"{"path": "/scratch/alice/results", "dataset": "results"}"#).status == 200)

        // Refusals.
        #expect(TrustTests.http("GET", c.api + "/api/v1/transfers", token: nil).status == 401)
        #expect(TrustTests.http("GET", c.api + "/api/v1/transfers", token: expired).status == 401)
        #expect(TrustTests.http("GET", c.api + "/api/v1/transfers/\(id)", token: bob).status == 404)
        #expect(TrustTests.http("POST", c.api + "/api/v1/transfers/\(id)/cancel", token: bob).status == 404)
        #expect(TrustTests.http("GET", c.api + "/api/v1/catalog/stat?path=gfs://hlrs/results/r.bin", token: bob).status == 404)
        #expect(TrustTests.http("POST", c.api + "/api/v1/catalog/register", token: bob, body: #"{"path": "/scratch/bob", "dataset": "results"}"#).status == 403)
        #expect(TrustTests.http("POST", c.api + "/api/v1/transfers", token: bob, body: #"{"source": "/scratch/alice/results/r.bin", "destination": "ferry://wuxi/incoming/x"}"#).status == 403)
        #expect(TrustTests.http("POST", c.api + "/api/v1/transfers", token: bob, body: #"{"source": "/scratch/bob/x", "destination": "ferry://127.0.0.1:22/x"}"#).status == 400)

        // Every line is one JSON object with the engine's fields; find ours.
        let text = String(decoding: readFile(auditPath) ?? [], as: UTF8.self)
        let lines = text.split(separator: "\n").map { TrustTests.object(String($0)) }
        #expect(!lines.isEmpty && lines.allSatisfy { !$0.isEmpty }, "\(text)")
        let engineKeys: Set<String> = ["time", "user", "center", "peer", "action", "path", "files", "bytes", "result", "protection", "duration_ms"]
        #expect(lines.allSatisfy { engineKeys.isSubset(of: Set($0.keys)) && Set($0.keys).subtracting(engineKeys).isSubset(of: ["account"]) }, "\(text)")
        func has(_ what: String, _ p: @escaping ([String: Any]) -> Bool) {
            let found = lines.contains(where: p)
            #expect(found, "no audit line for \(what) in:\n\(text)")
        }
        func str(_ o: [String: Any], _ k: String) -> String { o[k] as? String ?? "" }
        has("the job's start") { str($0, "action") == "job.start" && str($0, "user") == "alice" && str($0, "peer") == "wuxi" && str($0, "path").contains("/scratch/alice/results/r.bin -> ferry://wuxi/incoming/r.bin") }
        has("the job's end") { str($0, "action") == "job.end" && str($0, "user") == "alice" && str($0, "result") == "ok" && ($0["bytes"] as? Int) == 1_000_000 && ($0["files"] as? Int) == 1 }
        has("the submit") { str($0, "action") == "job.submit" && str($0, "user") == "alice" && str($0, "result") == "ok: job \(id)" }
        has("the registration") { str($0, "action") == "register" && str($0, "user") == "alice" && str($0, "path") == "/scratch/alice/results -> gfs://hlrs/results" && ($0["files"] as? Int) == 1 }
        func refusal(_ user: String, _ path: String, _ status: Int) -> ([String: Any]) -> Bool {
            { str($0, "action") == "api" && str($0, "user") == user && str($0, "path") == path && str($0, "result").hasPrefix("refused: \(status) ") }
        }
        has("401 without a token", refusal("", "GET /api/v1/transfers", 401))
        has("401 of an expired token, naming its user", refusal("refused:eve", "GET /api/v1/transfers", 401))
        has("404 on alice's job", refusal("bob", "GET /api/v1/transfers/\(id)", 404))
        has("404 on cancelling alice's job", refusal("bob", "POST /api/v1/transfers/\(id)/cancel", 404))
        has("404 on alice's dataset", refusal("bob", "GET /api/v1/catalog/stat", 404))
        has("403 on taking alice's dataset name", refusal("bob", "POST /api/v1/catalog/register", 403))
        has("403 on alice's path", refusal("bob", "POST /api/v1/transfers", 403))
        has("400 on a host that is no peer", refusal("bob", "POST /api/v1/transfers", 400))
    }
}
