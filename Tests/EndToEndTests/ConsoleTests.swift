import Foundation
import Testing
import TestSupport

/// The web console (issue 15): in a real headless Chromium (Debian's chromium and
/// chromium-driver, driven by Selenium: Tests/console/console_test.py), and its sessions over
/// plain HTTP, against a real daemon with a real peer.
@Suite("The web console", .serialized)
struct ConsoleTests {
    static let python = "/opt/ferry-test-venv/bin/python"

    /// hlrs (daemon) and wuxi; alice owns "public" (readers *, 250 files and two named like
    /// markup) and "private" (hers only), and has two jobs running to wuxi (slowed to last the
    /// test); bob has a token of the same scope. Tokens are written as `alice.token`, `bob.token`.
    static func start() throws -> (c: DaemonE2ETests.Centers, alice: String, bob: String, running: [Int64]) {
        // Two of alice's jobs run at once (the page shows one's progress and cancels the
        // other): a share of two, where two workers give one by default.
        let c = try DaemonE2ETests.start("console", hlrsDaemon: "per_user = 2")
        let alice = try c.sb.issueToken(user: "alice", scopes: ["rw:/scratch"], name: "alice.token")
        let bob = try c.sb.issueToken(user: "bob", scopes: ["rw:/scratch"], name: "bob.token")
        let pub = try c.sb.dir("hlrs/scratch/public")
        for i in 0..<250 { try writeFile(pub + String(format: "/f%05d", i), Array("\(i)\n".utf8)) }
        try writeFile(pub + "/<img src=x onerror=alert(1)>", Array("a\n".utf8))
        try writeFile(pub + "/\"><svg onload=window.__pwned=1>", Array("b\n".utf8))
        try writeFile(try c.sb.dir("hlrs/scratch/private") + "/secret.txt", Array("alice's\n".utf8))
        for (dir, readers) in [("public", ["--readers", "*"]), ("private", [])] {
            let r = try c.sb.ferry(["register", "--api", c.api, "--token-file", alice, "--dataset", dir, "/scratch/" + dir] + readers, timeout: 60)
            #expect(r.status == 0, "\(r)")
        }
        try writeRandomFile(c.scratch + "/big.bin", size: 32 * E2E.MiB)
        var running: [Int64] = []
        for n in 0..<2 {
            let r = try c.sb.ferry(["jobs", "submit", "--api", c.api, "--token-file", alice, "--json", "--bwlimit", "256K",
                                    "/scratch/big.bin", "ferry://wuxi/incoming/big\(n).bin"], timeout: 30)
            guard let id = DaemonE2ETests.lastJSON(r)["id"] as? Int else { throw HarnessError("no job: \(r)") }
            running.append(Int64(id))
        }
        return (c, alice, bob, running)
    }

    @Test("in Chromium: sign in, the overview's eleven states, a directory of 252 entries, find, an entry's replicas, cancel a job live, CSRF and a forged cross-site POST refused, Chinese, the keyboard alone, sign-out, another user sees nothing of alice's, names with markup stay text",
          .timeLimit(.minutes(5)))
    func inChromium() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"), FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver") else {
            Issue.record("chromium or chromium-driver is missing: scripts/install-deps.sh --tests installs them")
            return
        }
        let (c, alice, bob, running) = try ConsoleTests.start()
        defer { c.a.stop(); c.b.stop() }
        // Screenshots: into the sandbox, or where FERRY_CONSOLE_SHOTS says (docs/console/ holds
        // the committed ones).
        let shots = ProcessInfo.processInfo.environment["FERRY_CONSOLE_SHOTS"] ?? c.sb.file("shots")
        let config: [String: Any] = ["api": c.api, "alice_token": try token(alice), "bob_token": try token(bob),
                                     "running": running[0], "victim": running[1], "shots": shots]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: c.sb.file("console.json")))
        let r = runTool(ConsoleTests.python, [ConsoleTests.script, c.sb.file("console.json")], timeout: 200)
        #expect(r.status == 0, "console_test.py:\n\(r.output.suffix(6000))")
        #expect(r.output.contains("all console checks held"), "\(r.output.suffix(2000))")
        #expect(c.a.isRunning)
    }

    @Test("in Chromium, through federation: wuxi's 100,000-entry directory paged at hlrs (100 pages of 1,000, each entry once), a replication of wuxi's dataset started from its entry and watched to success without a reload, its bytes in the overview, the operator's staging view",
          .enabled(if: E2E.isRoot, "the staging cache is a tmpfs: mounting needs root"), .timeLimit(.minutes(6)))
    func federation() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver") else {
            Issue.record("chromium-driver is missing: scripts/install-deps.sh --tests installs it")
            return
        }
        let f = try FederationE2ETests.start(.sqlite, stagingMiB: 64, stagingQuota: "300K")
        defer { f.stopAll() }
        let sb = f.sb
        // 100,000 empty files in one directory of wuxi's, and a small dataset to replicate.
        let big = try sb.dir("wuxi/data/big")
        for i in 0..<100_000 { FileManager.default.createFile(atPath: big + String(format: "/e%06d", i), contents: nil) }
        try writeRandomFile(try sb.dir("wuxi/data/small") + "/a.bin", size: 256 * 1024)
        for name in ["big", "small"] {
            let r = try f.ferry("wuxi", ["register", "/data/" + name, "--dataset", name, "--readers", "*"], timeout: 120)
            #expect(r.status == 0, "\(r)")
        }
        let seen = try FederationE2ETests.eventually(60, { try f.ferry("hlrs", ["ls", "--json", "--limit", "1", "--after", "e099998", "gfs://wuxi/big"]) }) {
            $0.status == 0 && $0.stdout.contains("e099999")
        }
        #expect(seen.stdout.contains("e099999"), "hlrs has wuxi's 100,000 entries: \(seen)")
        _ = try FederationE2ETests.eventually(30, { try f.ferry("hlrs", ["ls", "gfs://wuxi/small"]) }) { $0.status == 0 }
        // Scheduler job 8 stages the small dataset in at hlrs (the operator's Staging view).
        let staged = try f.stageSmall(job: "8", into: sb.file("hlrs/data/job8/in"))
        #expect(staged.status == 0, "\(staged)")
        // Scheduler job 9 stages "mid" (128 KiB) in and ends: unpinned, over the 300 KiB quota
        // beside job 8's 256 KiB, it is evicted (the Staging view lists the eviction).
        try writeRandomFile(try sb.dir("wuxi/data/mid") + "/m.bin", size: 128 * 1024)
        #expect(try f.ferry("wuxi", ["register", "/data/mid", "--dataset", "mid", "--readers", "*"]).status == 0)
        _ = try FederationE2ETests.eventually(30, { try f.ferry("hlrs", ["ls", "gfs://wuxi/mid"]) }) { $0.status == 0 }
        try writeFile(sb.file("job9.sh"), Array("#!/bin/sh\n#FERRY stage_in gfs://wuxi/mid \(sb.file("hlrs/data/job9/in"))\n".utf8))
        let nine = try sb.ferry(["stage-in", "--api", f.api("hlrs"), "--ca", sb.ca, "--token-file", sb.tokenFile, "--job", "9", "--script", sb.file("job9.sh"),
                                 "--uid", "0"], timeout: 150)
        #expect(nine.status == 0, "\(nine)")
        let down = try sb.ferry(["stage", "teardown", "--api", f.api("hlrs"), "--ca", sb.ca, "--token-file", sb.tokenFile, "--job", "9"], timeout: 60)
        #expect(down.status == 0, "\(down)")
        let shots = ProcessInfo.processInfo.environment["FERRY_CONSOLE_SHOTS"] ?? sb.file("shots")
        let config: [String: Any] = ["mode": "federation", "api": f.api("hlrs"), "alice_token": sb.token, "shots": shots]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: sb.file("console.json")))
        let r = runTool(ConsoleTests.python, [ConsoleTests.script, sb.file("console.json")], timeout: 300)
        #expect(r.status == 0, "console_test.py:\n\(r.output.suffix(6000))")
        #expect(r.output.contains("all console checks held"), "\(r.output.suffix(2000))")
        print(r.output.split(separator: "\n").filter { $0.hasPrefix("pages:") }.joined(separator: "\n"))
        // "Copy to" made a real copy from wuxi's replica.
        #expect(filesIdentical(sb.file("hlrs/data/copy-a.bin"), sb.file("wuxi/data/small/a.bin")), "the console's copy arrived whole")
    }

    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("console/console_test.py").path

    func token(_ file: String) throws -> String { try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) }

    @Test("sessions over HTTP: a bad token signs nobody in, the cookie's flags, POST needs the CSRF token, sign-out ends the session, a forged cookie is refused, one user's sign-ins in a loop keep 20 sessions, the page's policy allows no inline script")
    func sessions() throws {
        let c = try DaemonE2ETests.start("console-http")
        defer { c.a.stop(); c.b.stop() }
        let alice = try token(try c.sb.issueToken(user: "alice", scopes: ["rw:/scratch"], name: "alice.token"))
        let expired = try token(try c.sb.issueToken(user: "alice", scopes: ["rw:/scratch"], ttl: "1s", name: "old.token"))
        sleep(2)
        // The checks run in Python's urllib (Foundation on Linux reads no http URLs directly),
        // one process: each line "name status headers-of-interest body".
        let probe = """
            import json, sys, urllib.request
            api, tok, old = sys.argv[1], sys.argv[2], sys.argv[3]
            def call(method, path, body=None, headers={}):
                req = urllib.request.Request(api + path, method=method, data=None if body is None else json.dumps(body).encode(), headers=headers)
                try:
                    r = urllib.request.urlopen(req, timeout=10)
                except urllib.error.HTTPError as e:
                    r = e
                return r.status, r.headers, r.read()
            def show(name, r):
                print(name, r[0], json.dumps({k: r[1].get(k) for k in ("Set-Cookie", "Content-Security-Policy", "X-Frame-Options")}), r[2][:200].decode(errors="replace"))
            show("page", call("GET", "/"))
            show("garbage", call("POST", "/ui/session", {"token": "ferry1.garbage"}))
            show("expired", call("POST", "/ui/session", {"token": old}))
            show("nobody", call("GET", "/api/v1/transfers"))
            s, h, b = call("POST", "/ui/session", {"token": tok})
            show("signin", (s, h, b))
            cookie = h.get("Set-Cookie").split(";")[0]
            csrf = json.loads(b)["csrf"]
            show("session", call("GET", "/ui/session", headers={"Cookie": cookie}))
            show("list", call("GET", "/api/v1/transfers", headers={"Cookie": cookie}))
            show("nocsrf", call("POST", "/api/v1/transfers", {"source": "/scratch/x", "destination": "ferry://wuxi/incoming/x"}, {"Cookie": cookie}))
            show("badcsrf", call("POST", "/api/v1/transfers", {"source": "/scratch/x", "destination": "ferry://wuxi/incoming/x"}, {"Cookie": cookie, "X-Ferry-CSRF": "x" + csrf[1:]}))
            show("csrf", call("POST", "/api/v1/transfers", {"source": "/scratch/in.bin", "destination": "ferry://wuxi/incoming/x"}, {"Cookie": cookie, "X-Ferry-CSRF": csrf}))
            show("forged", call("GET", "/api/v1/transfers", headers={"Cookie": "ferry_session=" + "A" * 43}))
            show("endnocsrf", call("POST", "/ui/session/end", headers={"Cookie": cookie}))
            show("end", call("POST", "/ui/session/end", headers={"Cookie": cookie, "X-Ferry-CSRF": csrf}))
            show("after", call("GET", "/api/v1/transfers", headers={"Cookie": cookie}))
            # One token signing in over and over: its oldest sessions end, never more than 20.
            jar = []
            for _ in range(25):
                s, h, b = call("POST", "/ui/session", {"token": tok})
                jar.append(h.get("Set-Cookie").split(";")[0])
            show("loopfirst", call("GET", "/api/v1/transfers", headers={"Cookie": jar[0]}))
            show("loop5", call("GET", "/api/v1/transfers", headers={"Cookie": jar[5]}))
            show("looplast", call("GET", "/api/v1/transfers", headers={"Cookie": jar[-1]}))
            """
        try writeRandomFile(c.scratch + "/in.bin", size: 1000)
        let r = runTool("/usr/bin/python3", ["-c", probe, c.api, alice, expired], timeout: 60)
        var lines: [String: (status: Int, rest: String)] = [:]
        for line in r.output.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 2)
            if parts.count == 3, let s = Int(parts[1]) { lines[String(parts[0])] = (s, String(parts[2])) }
        }
        func status(_ k: String) -> Int { lines[k]?.status ?? -1 }
        #expect(status("page") == 200 && lines["page"]!.rest.contains("script-src 'self'") && !lines["page"]!.rest.contains("unsafe-inline")
                && lines["page"]!.rest.contains("DENY"), "\(r.output)")
        #expect(status("garbage") == 401 && !lines["garbage"]!.rest.contains("ferry_session="), "a bad token: 401, no cookie: \(r.output)")
        #expect(status("expired") == 401 && lines["expired"]!.rest.lowercased().contains("expired"), "an expired token: 401: \(r.output)")
        #expect(status("nobody") == 401)
        let signin = lines["signin"]?.rest ?? ""
        #expect(status("signin") == 200 && signin.contains("ferry_session=") && signin.contains("HttpOnly") && signin.contains("SameSite=Strict")
                && !signin.contains("Secure") && signin.contains("\"user\":\"alice\""), "plain HTTP on loopback: no Secure flag: \(r.output)")
        #expect(status("session") == 200 && status("list") == 200, "\(r.output)")
        #expect(status("nocsrf") == 403 && status("badcsrf") == 403, "a POST without the right CSRF token: 403: \(r.output)")
        #expect(status("csrf") == 201, "with it, the job is submitted: \(r.output)")
        #expect(status("forged") == 401, "a cookie the daemon never issued: \(r.output)")
        #expect(status("endnocsrf") == 403 && status("end") == 200 && status("after") == 401, "sign-out needs the CSRF token and ends the session: \(r.output)")
        #expect(status("loopfirst") == 401 && status("loop5") == 200 && status("looplast") == 200,
                "25 sign-ins of one user keep its last 20 sessions: \(r.output)")
        // Every change made through a session is audited under the token's user.
        let audit = (try? String(contentsOfFile: c.sb.file("hlrs-audit.jsonl"), encoding: .utf8)) ?? ""
        #expect(audit.contains("console.sign-in") && audit.contains("console.sign-out") && audit.contains("job.submit"), "audit: \(audit.suffix(1500))")
    }

    @Test("the Chinese catalogue has every key the English one has, and no other; every key the page and its script use is in both")
    func catalogues() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/Daemon/Console")
        func keys(_ name: String) throws -> Set<String> {
            Set((try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("i18n/" + name))) as! [String: String]).keys)
        }
        let en = try keys("en.json"), zh = try keys("zh-CN.json")
        #expect(en == zh, "only in English: \(en.subtracting(zh).sorted()); only in Chinese: \(zh.subtracting(en).sorted())")
        // Keys used: data-i18n="..." in the page, t("...") in the script (keys built at run
        // time: the states, kinds and done messages, checked by their prefixes).
        let html = try String(contentsOf: dir.appendingPathComponent("index.html"), encoding: .utf8)
        let js = try String(contentsOf: dir.appendingPathComponent("console.js"), encoding: .utf8)
        var used = Set<String>()
        for (text, pattern) in [(html, "data-i18n=\"([a-z.]+)\""), (js, "\\bt\\(\"([a-z.]*[a-z])\"")] {
            let re = try NSRegularExpression(pattern: pattern)
            for m in re.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                used.insert(String(text[Range(m.range(at: 1), in: text)!]))
            }
        }
        let dynamic = ["no_status", "scheduled", "queued", "running", "success", "failed", "up_for_retry", "up_for_reschedule", "upstream_failed",
                       "skipped", "deferred"].map { "state." + $0 } + ["kind.f", "kind.d", "kind.l", "jobs.done.cancel", "jobs.done.retry", "staging.state.ready", "staging.state.staging", "staging.state.failed"]
        used.formUnion(dynamic)
        #expect(used.count > 50)
        #expect(used.subtracting(en).isEmpty, "used but not in the catalogues: \(used.subtracting(en).sorted())")
    }
}
