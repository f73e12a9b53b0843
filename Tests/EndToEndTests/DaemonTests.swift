// The daemon: two centers on loopback. Center hlrs runs `ferry serve --config` with a [daemon]
// table (job queue, runner, API); center wuxi is a plain server whose export admits
// `center:hlrs`. A user submits jobs to hlrs with `ferry jobs`; hlrs pushes to wuxi itself
// (third-party transfer: the client only watches).

import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Daemon")
struct DaemonE2ETests {
    struct Centers {
        let sb: Sandbox
        let a: FerryServer
        let b: FerryServer
        let api: String
        let scratch: String
        let incoming: String
        let archive: String
        /// wuxi's further transfer nodes (`wuxiNodes`), serving the same directories.
        var bNodes: [FerryServer] = []
        /// hlrs's queue (a SQLite file name beside the configuration, or a postgres:// URL).
        var database = ""
    }

    /// Centers hlrs (daemon, its queue on `backend`) and wuxi. `database`: an existing queue
    /// (a second daemon of hlrs on the same PostgreSQL).
    /// `hlrsIdentity`: top-level identity lines of hlrs's configuration (default: everyone acts
    /// as root); `hlrsTables`: tables appended to it (`[[identity]]` entries). `wuxiLocked`: wuxi
    /// also has an export `locked` (a directory only root may write) where it acts as `nobody`.
    static func start(_ name: String, backend: Backend = .sqlite, hlrsIdentity: String = "run_as = \"root\"", hlrsTables: String = "", hlrsDaemon: String = "",
                      wuxiLocked: Bool = false, wuxiNodes: Int = 1) throws -> Centers {
        let sb = try Sandbox(name + "-" + backend.rawValue)
        let database = backend == .sqlite ? "hlrs-jobs.sqlite" : try backend.newDatabase()
        try Sandbox.ferryTool(["ca", "issue", "--dir", sb.pki, "--center", "wuxi", "--host", "127.0.0.1"])
        let scratch = try sb.dir("hlrs/scratch")
        let incoming = try sb.dir("wuxi/incoming")
        let archive = try sb.dir("wuxi/archive")
        if wuxiLocked { chmod(try sb.dir("wuxi/locked"), 0o755) }
        try writeFile(sb.file("wuxi.toml"), Array("""
            center = "wuxi"
            run_as = "root"
            audit_log = "wuxi-audit.jsonl"
            certificate = "pki/wuxi.crt"
            key = "pki/wuxi.key"
            ca = "pki/ca.crt"
            [[export]]
            name = "incoming"
            path = "wuxi/incoming"
            access = "rw"
            users = ["center:hlrs"]
            [[export]]
            name = "archive"
            path = "wuxi/archive"
            access = "ro"
            users = ["center:hlrs"]
            \(wuxiLocked ? "[[export]]\nname = \"locked\"\npath = \"wuxi/locked\"\naccess = \"rw\"\nusers = [\"center:hlrs\"]\naccount = \"nobody\"" : "")

            """.utf8))
        let b = try FerryServer(sb, root: "", extra: ["--config", sb.file("wuxi.toml"), "--cert", sb.pki + "/wuxi.crt", "--key", sb.pki + "/wuxi.key"])
        let bNodes = try (1..<max(1, wuxiNodes)).map { _ in
            try FerryServer(sb, root: "", extra: ["--config", sb.file("wuxi.toml"), "--cert", sb.pki + "/wuxi.crt", "--key", sb.pki + "/wuxi.key"])
        }
        let nodesLine = bNodes.isEmpty ? "" : "nodes = [" + ([b] + bNodes).map { "\"127.0.0.1:\($0.port)\"" }.joined(separator: ", ") + "]"
        try writeFile(sb.file("hlrs.toml"), Array("""
            center = "hlrs"
            \(hlrsIdentity)
            certificate = "pki/hlrs.crt"
            key = "pki/hlrs.key"
            ca = "pki/ca.crt"
            audit_log = "hlrs-audit.jsonl"
            [daemon]
            database = "\(database)"
            api_listen = "127.0.0.1:0"
            workers = 2
            lease_seconds = 6
            retry_base_seconds = 2
            \(hlrsDaemon)
            [[peer]]
            name = "wuxi"
            address = "127.0.0.1:\(b.port)"
            \(nodesLine)
            [[export]]
            name = "scratch"
            path = "hlrs/scratch"
            access = "rw"
            users = ["*"]
            \(hlrsTables)

            """.utf8))
        let a = try FerryServer(sb, root: "", extra: ["--config", sb.file("hlrs.toml")])
        return Centers(sb: sb, a: a, b: b, api: try apiURL(a), scratch: scratch, incoming: incoming, archive: archive, bNodes: bNodes, database: database)
    }

    /// The API address a daemon printed ("... api listening on http://HOST:PORT").
    static func apiURL(_ a: FerryServer) throws -> String {
        var api = ""
        _ = waitUntil(timeout: 20) {
            api = a.process.stdout.split(separator: "\n").compactMap { l in l.range(of: "api listening on ").map { String(l[$0.upperBound...]) } }.first ?? ""
            return !api.isEmpty
        }
        guard !api.isEmpty else { throw HarnessError("no API line: \(a.process.stdout) \(a.process.stderr)") }
        return api
    }

    static func jobs(_ c: Centers, _ args: [String], timeout: Double = 120) throws -> CpResult {
        let sub = args[0]
        return try c.sb.ferry(["jobs", sub, "--api", c.api, "--token-file", c.sb.tokenFile, "--json"] + args.dropFirst(), timeout: timeout)
    }

    /// A plain GET through Python's urllib (Foundation on Linux reads no http URLs directly).
    static func httpGet(_ url: String) -> String {
        runTool("/usr/bin/python3", ["-c", "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())", url]).output
    }

    static func lastJSON(_ r: CpResult) -> [String: Any] {
        guard let line = r.stdout.split(separator: "\n").last,
              let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return [:] }
        return o
    }

    @Test("a job submitted with `ferry jobs` makes hlrs push a tree to wuxi; byte-identical; a rerun ends skipped; list, show, API errors", arguments: Backend.allCases)
    func thirdPartyPush(_ backend: Backend) throws {
        let c = try DaemonE2ETests.start("daemon-push", backend: backend)
        defer { c.a.stop(); c.b.stop() }
        let run = try c.sb.dir("hlrs/scratch/run1/sub")
        try writeRandomFile(run + "/big.bin", size: 20 * E2E.MiB)
        for i in 0..<50 { try writeFile(c.scratch + "/run1/f\(i).txt", Array("file \(i)\n".utf8)) }
        let r = try DaemonE2ETests.jobs(c, ["submit", "-r", "--wait", "/scratch/run1", "ferry://wuxi/incoming/run1"])
        #expect(r.status == 0, "\(r)")
        #expect(DaemonE2ETests.lastJSON(r)["state"] as? String == "success", "\(r.stdout)")
        #expect(treeDifferences(c.scratch + "/run1", c.incoming + "/run1").isEmpty)
        // Nothing to do the second time: `skipped`.
        let again = try DaemonE2ETests.jobs(c, ["submit", "-r", "--wait", "/scratch/run1", "ferry://wuxi/incoming/run1"])
        #expect(DaemonE2ETests.lastJSON(again)["state"] as? String == "skipped", "\(again)")
        let list = try DaemonE2ETests.jobs(c, ["list"])
        let all = (DaemonE2ETests.lastJSON(list)["transfers"] as? [[String: Any]]) ?? []
        #expect(all.count == 2 && all.allSatisfy { $0["owner"] as? String == "alice" }, "\(list.stdout)")
        // Outside the token's scopes? The sandbox token has rw:/, so ask with a narrower one.
        let narrow = try c.sb.issueToken(scopes: ["read:/scratch/other"], name: "narrow.tok")
        let refused = try c.sb.ferry(["jobs", "submit", "--api", c.api, "--token-file", narrow, "/scratch/run1", "ferry://wuxi/incoming/x"], timeout: 30)
        #expect(refused.status == 1 && refused.stderr.contains("does not allow reading"), "\(refused)")
        let noToken = try c.sb.ferry(["jobs", "list", "--api", c.api, "--token-file", c.sb.file("nonexistent")], timeout: 30)
        #expect(noToken.status != 0)
        // Server-sent events of a finished job: its final state, then the stream ends.
        let events = runTool("/usr/bin/python3", ["-c", "import sys, urllib.request; r = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + open(sys.argv[2]).read().strip()}); sys.stdout.write(urllib.request.urlopen(r, timeout=20).read().decode())", c.api + "/api/v1/transfers/1/events", c.sb.tokenFile]).output
        #expect(events.hasPrefix("event: end\ndata: {") && events.contains("\"state\":\"success\""), "\(events)")
        // `ferry cp` between two centers: a job at the source center's daemon, watched.
        let hlrsURL = "ferry://127.0.0.1:\(c.a.port)/scratch/run1"
        let cp = try c.sb.ferry(["cp", "-r", "--api", c.api, "--token-file", c.sb.tokenFile, hlrsURL, "ferry://wuxi/incoming/run2"], timeout: 120)
        #expect(cp.status == 0 && cp.stdout.contains("success"), "\(cp)")
        #expect(treeDifferences(c.scratch + "/run1", c.incoming + "/run2").isEmpty)
        // Several sources, one destination directory: one job each.
        let multi = try DaemonE2ETests.jobs(c, ["submit", "--wait", "/scratch/run1/f1.txt", "/scratch/run1/sub/big.bin", "ferry://wuxi/incoming/multi/"])
        #expect(multi.status == 0, "\(multi)")
        #expect(multi.stdout.components(separatedBy: "\"source\"").count - 1 >= 2, "\(multi.stdout)")
        #expect(filesIdentical(c.scratch + "/run1/f1.txt", c.incoming + "/multi/f1.txt") && filesIdentical(c.scratch + "/run1/sub/big.bin", c.incoming + "/multi/big.bin"))
        // The wuxi side saw hlrs (the center), not the laptop.
        #expect(c.b.process.stderr.contains("push to 'incoming/run1' by center:hlrs"), "\(c.b.process.stderr)")
    }

    /// The start of the event-stream tests' Python: `stream()` opens one event stream of job
    /// argv[3] at the API argv[1] with the token in argv[2], and returns the socket and what
    /// came before its first `data:` (10 s at most).
    static let eventStreamPython = #"""
            import socket, sys, time, urllib.request
            host, port = sys.argv[1].rsplit("//", 1)[1].split(":")
            token = open(sys.argv[2]).read().strip(); job = sys.argv[3]
            def stream():
                s = socket.create_connection((host, int(port)), timeout=10)
                s.sendall(("GET /api/v1/transfers/%s/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % (job, token)).encode())
                got = b""
                end = time.time() + 10
                while b"data:" not in got and time.time() < end:
                    b = s.recv(65536)
                    if not b: break
                    got += b
                return s, got

            """#

    /// A daemon (`hlrsDaemon`: its [daemon] lines) running a 24 MiB job at 1 MiB/s, so that the
    /// job runs while the streams are opened; `held` event streams of it are opened and kept,
    /// then one more. The Python after `eventStreamPython` gets `held` (the kept streams),
    /// `first` (how many of them got an event), `refused` (the one more got `event: refused`
    /// saying `reason`) and `health` (the health check's status), and prints what `tail` says.
    static func eventStreamsRun(_ name: String, hlrsDaemon: String = "", held: Int, reason: String, tail: String) throws -> String {
        let c = try DaemonE2ETests.start(name, hlrsDaemon: hlrsDaemon)
        defer { c.a.stop(); c.b.stop() }
        try writeFile(c.scratch + "/slow.bin", randomBytes(24 << 20))
        let sub = try DaemonE2ETests.jobs(c, ["submit", "--bwlimit", "1M", "/scratch/slow.bin", "ferry://wuxi/incoming/slow.bin"])
        let id = DaemonE2ETests.lastJSON(sub)["id"] as? Int ?? -1
        #expect(id > 0, "\(sub)")
        let script = DaemonE2ETests.eventStreamPython + """
            held = [stream() for _ in range(\(held))]
            first = sum(1 for _, g in held if b"event: progress" in g or b"event: end" in g)
            _, last = stream()
            refused = b"event: refused" in last and b"\(reason)" in last
            health = urllib.request.urlopen(sys.argv[1] + "/api/v1/health", timeout=10).status
            for s, _ in held: s.close()

            """ + tail
        let r = runTool("/usr/bin/python3", ["-c", script, c.api, c.sb.tokenFile, "\(id)"], timeout: 90)
        _ = try DaemonE2ETests.jobs(c, ["cancel", "\(id)"])
        #expect(c.a.isRunning)
        return r.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("one user's event streams cannot take the API's connections: past 64 a stream gets `event: refused` and ends; the health check and a closed place answer again")
    func eventStreamsLimited() throws {
        let out = try Self.eventStreamsRun("daemon-event-limit", held: 64, reason: "limit per user", tail: #"""
            # A stream's place is given back when its next write finds the client gone (a
            # running job's progress goes out at least once a second).
            freed = False
            for _ in range(20):
                time.sleep(0.5)
                again, g = stream()
                again.close()
                if b"event: refused" not in g:
                    freed = True
                    break
            print(first, refused, health, freed)
            """#)
        #expect(out == "64 True 200 True", "\(out)")
    }

    /// All users' event streams together get half the API's connections (`EventStreamLimit`):
    /// with `api_connections = 16`, eight. One user below their own 64 fills it; the ninth
    /// stream is refused with the daemon's reason, and the other half still answers.
    @Test("all users' event streams together get half the API's connections: past it a stream gets `event: refused` with the daemon's limit, and the health check still answers")
    func eventStreamsLimitedForAll() throws {
        let out = try Self.eventStreamsRun("daemon-event-all", hlrsDaemon: "api_connections = 16", held: 8, reason: "its limit", tail: "print(first, refused, health)\n")
        #expect(out == "8 True 200", "\(out)")
    }

    /// `ferry jobs wait` and `watch` follow the job's event stream (pushed by the daemon's queue
    /// changes) instead of polling: one connection for the whole wait. Through a proxy that cuts
    /// event streams the wait still ends right, polling.
    @Test("`ferry jobs wait` and `watch` follow the job's event stream: one request, not a poll; polling when a proxy cuts the stream")
    func waitFollowsEvents() throws {
        let c = try DaemonE2ETests.start("daemon-events")
        defer { c.a.stop(); c.b.stop() }
        try writeFile(c.scratch + "/slow.bin", randomBytes(12 << 20))
        guard let apiPort = Int(c.api.split(separator: ":").last ?? "") else { throw HarnessError("no port in \(c.api)") }
        let proxy = try CountingProxy(targetPort: apiPort)
        defer { proxy.stop() }
        let via = ["--api", "http://127.0.0.1:\(proxy.port)", "--token-file", c.sb.tokenFile]
        // 12 MiB at 4 MiB/s: about three seconds of transfer to wait for.
        let sub = try DaemonE2ETests.jobs(c, ["submit", "--bwlimit", "4M", "/scratch/slow.bin", "ferry://wuxi/incoming/slow.bin"])
        let id = DaemonE2ETests.lastJSON(sub)["id"] as? Int ?? -1
        #expect(id > 0, "\(sub)")
        let t0 = Date()
        let w = try c.sb.ferry(["jobs", "wait"] + via + ["\(id)", "--timeout", "60"], timeout: 70)
        let took = Date().timeIntervalSince(t0)
        #expect(w.status == 0 && w.stdout.contains("success"), "\(w)")
        #expect(w.stderr.contains("ferry jobs: \(id) running") || w.stderr.contains("ferry jobs: \(id) queued"), "state changes on stderr: \(w)")
        #expect(took > 1.5, "the wait returned before the transfer could end: \(took) s")
        #expect(proxy.connections == 1 && proxy.eventStreamRequests == 1,
                "one connection for the whole wait, not a poll (\(proxy.connections) connections in \(took) s)")
        #expect(filesIdentical(c.scratch + "/slow.bin", c.incoming + "/slow.bin"))
        // A job that has ended: `watch` prints its last line from the stream's first event.
        let watched = try c.sb.ferry(["jobs", "watch"] + via + ["\(id)", "--timeout", "30"], timeout: 40)
        #expect(watched.status == 0 && watched.stdout.contains("\(id) success"), "\(watched)")
        #expect(proxy.connections == 2, "\(proxy.connections)")

        // The same wait through a proxy that closes every event stream: it polls, and still
        // reports the end (a failed job: exit 1).
        let cutting = try CountingProxy(targetPort: apiPort, cutEventStreams: true)
        defer { cutting.stop() }
        try writeFile(c.scratch + "/slow2.bin", randomBytes(8 << 20))
        let sub2 = try DaemonE2ETests.jobs(c, ["submit", "--bwlimit", "4M", "/scratch/slow2.bin", "ferry://wuxi/archive/slow2.bin"])
        let id2 = DaemonE2ETests.lastJSON(sub2)["id"] as? Int ?? -1
        let w2 = try c.sb.ferry(["jobs", "wait", "--api", "http://127.0.0.1:\(cutting.port)", "--token-file", c.sb.tokenFile, "\(id2)", "--timeout", "60"], timeout: 70)
        #expect(w2.status == 1 && w2.stdout.contains("failed") && w2.stdout.contains("read-only"), "archive is read-only: \(w2)")
        #expect(cutting.eventStreamRequests == 1 && cutting.connections >= 2, "the stream tried once, then polls: \(cutting.connections)")
        // `watch` of the failed job says why on stderr, not only "failed" (exit 1).
        let wf = try c.sb.ferry(["jobs", "watch"] + via + ["\(id2)", "--timeout", "30"], timeout: 40)
        #expect(wf.status == 1 && wf.stdout.contains("\(id2) failed"), "\(wf)")
        #expect(wf.stderr.contains("ferry: job \(id2) failed: [") && wf.stderr.contains("read-only"), "\(wf)")
    }

    @Test("a refusing destination: the job fails with the reason in `ferry jobs show`; its dependent ends upstream_failed; the API serves its OpenAPI document", arguments: Backend.allCases)
    func failureAndDependency(_ backend: Backend) throws {
        let c = try DaemonE2ETests.start("daemon-fail", backend: backend)
        defer { c.a.stop(); c.b.stop() }
        try writeFile(c.scratch + "/a.txt", Array("a\n".utf8))
        let first = try DaemonE2ETests.jobs(c, ["submit", "/scratch/a.txt", "ferry://wuxi/archive/a.txt"])
        let id = DaemonE2ETests.lastJSON(first)["id"] as? Int ?? -1
        let second = try DaemonE2ETests.jobs(c, ["submit", "--after", "\(id)", "/scratch/a.txt", "ferry://wuxi/incoming/a.txt"])
        let id2 = DaemonE2ETests.lastJSON(second)["id"] as? Int ?? -1
        let w = try DaemonE2ETests.jobs(c, ["wait", "\(id)"])
        #expect(w.status == 1)
        let show = DaemonE2ETests.lastJSON(try DaemonE2ETests.jobs(c, ["show", "\(id)"]))
        #expect(show["state"] as? String == "failed" && (show["error"] as? String ?? "").contains("read-only"), "\(show)")
        let (_, dep) = DaemonE2ETests.waitForState(c, id2, "upstream_failed", timeout: 20)
        #expect(dep["state"] as? String == "upstream_failed", "\(dep)")
        #expect(!exists(c.incoming + "/a.txt"))
        // The OpenAPI document names every route the daemon serves, and each answers.
        let spec = Data(DaemonE2ETests.httpGet(c.api + "/api/v1/openapi.json").utf8)
        let paths = ((try JSONSerialization.jsonObject(with: spec) as? [String: Any])?["paths"] as? [String: Any]) ?? [:]
        for p in ["/api/v1/health", "/api/v1/transfers", "/api/v1/transfers/{id}", "/api/v1/transfers/{id}/cancel", "/api/v1/transfers/{id}/retry", "/api/v1/transfers/{id}/events", "/metrics", "/api/v1/openapi.json"] {
            #expect(paths[p] != nil, "OpenAPI lacks \(p)")
        }
        let metrics = DaemonE2ETests.httpGet(c.api + "/metrics")
        #expect(metrics.contains("ferry_jobs{state=\"failed\"} 1") && metrics.contains("ferry_jobs{state=\"upstream_failed\"} 1"), "\(metrics)")
        // A symlink in the export pointing out of it: refused at submit, nothing leaves the center.
        let outside = try c.sb.dir("hlrs/outside")
        try writeFile(outside + "/secret.txt", Array("not for export\n".utf8))
        symlink("../outside", c.scratch + "/escape")
        let esc = try DaemonE2ETests.jobs(c, ["submit", "--wait", "/scratch/escape/secret.txt", "ferry://wuxi/incoming/secret.txt"])
        #expect(esc.status == 1, "\(esc)")
        #expect(esc.allMessages.contains("symbolic link"), "\(esc)")
        #expect(!exists(c.incoming + "/secret.txt"))
        // The OpenAPI document against the real routes: every operation it lists, called with a
        // real job, answers with one of the statuses documented for it (a missing route would
        // answer 404, undocumented there); a path it does not list is not served. 42: every
        // operation of `APIContract.operations` (five federation routes came with issue 21).
        let conformance = runTool("/usr/bin/python3", ["-c", """
            import json, sys, urllib.request, urllib.error
            api, tok, jid = sys.argv[1], open(sys.argv[2]).read().strip(), sys.argv[3]
            spec = json.load(urllib.request.urlopen(api + "/api/v1/openapi.json", timeout=20))
            def call(method, path, body=None):
                r = urllib.request.Request(api + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                           headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
                try:
                    return urllib.request.urlopen(r, timeout=20).status
                except urllib.error.HTTPError as e:
                    return e.code
            n = 0
            for path, ops in sorted(spec["paths"].items()):
                for method, op in ops.items():
                    body = {"source": "/scratch/a.txt", "destination": "ferry://wuxi/incoming/b.txt"} if method == "post" and path.endswith("/transfers") else None
                    st = call(method.upper(), path.replace("{id}", jid), body)
                    if str(st) not in op["responses"]:
                        print("MISMATCH", method, path, st, sorted(op["responses"]))
                    n += 1
            print("checked", n, "unlisted", call("GET", "/api/v1/transfers/" + jid + "/nonexistent"))
            """, c.api, c.sb.tokenFile, "\(id)"])
        #expect(conformance.output.contains("checked 42 unlisted 404") && !conformance.output.contains("MISMATCH"), "\(conformance.output)")
    }

    @Test("kill -9 of the daemon in the middle of a job with 100 more queued; restart; every job ends success, none ran twice, every file identical", arguments: Backend.allCases)
    func killAndRestart(_ backend: Backend) throws {
        let c = try DaemonE2ETests.start("daemon-kill", backend: backend)
        defer { c.b.stop() }
        try writeRandomFile(c.scratch + "/big.bin", size: 96 * E2E.MiB)
        try c.sb.dir("hlrs/scratch/small")
        for i in 0..<100 { try writeFile(c.scratch + "/small/f\(i).txt", Array("small file \(i)\n".utf8)) }
        let big = try DaemonE2ETests.jobs(c, ["submit", "--bwlimit", "4M", "/scratch/big.bin", "ferry://wuxi/incoming/big.bin"])
        let bigID = DaemonE2ETests.lastJSON(big)["id"] as? Int ?? -1
        // One request, 100 jobs (one per source): quick even on a loaded machine, so the kill
        // below comes while the big job runs, not after it.
        let r = try DaemonE2ETests.jobs(c, ["submit"] + (0..<100).map { "/scratch/small/f\($0).txt" } + ["ferry://wuxi/incoming/small/"])
        #expect(r.status == 0, "\(r)")
        // The big job is well under way: a partial file exists at wuxi.
        #expect(waitUntil(timeout: 30) { exists(c.incoming + "/.big.bin.ferry-part") }, "the big job did not start")
        c.a.kill9()
        // Same configuration, same queue file.
        let a2 = try FerryServer(c.sb, root: "", extra: ["--config", c.sb.file("hlrs.toml")])
        defer { a2.stop() }
        let c2 = Centers(sb: c.sb, a: a2, b: c.b, api: try DaemonE2ETests.apiURL(a2), scratch: c.scratch, incoming: c.incoming, archive: c.archive)
        let (finished, jobs) = DaemonE2ETests.waitAllEnded(c2, count: 101, timeout: 120)
        #expect(finished, "jobs did not all end: \(jobs.filter { $0["state"] as? String != "success" })")
        #expect(jobs.allSatisfy { $0["state"] as? String == "success" }, "\(jobs.filter { $0["state"] as? String != "success" })")
        // Only the jobs cut by the kill (at most one per worker: 2) ran a second time; every
        // other job ran exactly once.
        let rerun = jobs.filter { ($0["attempts"] as? Int ?? 0) != 1 }
        #expect(rerun.count <= 2 && rerun.allSatisfy { $0["attempts"] as? Int == 2 }, "\(rerun)")
        #expect(jobs.first { $0["id"] as? Int == bigID }?["attempts"] as? Int == 2, "the big job was cut by the kill and resumed")
        #expect(filesIdentical(c.scratch + "/big.bin", c.incoming + "/big.bin"))
        for i in 0..<100 { #expect(filesIdentical(c.scratch + "/small/f\(i).txt", c.incoming + "/small/f\(i).txt")) }
    }

    @Test("a peer that is down: the job waits in up_for_retry with the reason, and succeeds once the peer is back", arguments: Backend.allCases)
    func retryWhilePeerDown(_ backend: Backend) throws {
        let c = try DaemonE2ETests.start("daemon-retry", backend: backend)
        defer { c.a.stop() }
        let port = c.b.port
        c.b.stop()
        try writeFile(c.scratch + "/r.txt", Array("retry me\n".utf8))
        let r = try DaemonE2ETests.jobs(c, ["submit", "/scratch/r.txt", "ferry://wuxi/incoming/r.txt"])
        let id = DaemonE2ETests.lastJSON(r)["id"] as? Int ?? -1
        let (waited, job) = DaemonE2ETests.waitForState(c, id, "up_for_retry", timeout: 30)
        #expect(waited, "\(job)")
        #expect((job["error"] as? String ?? "").lowercased().contains("refused") || (job["error"] as? String ?? "").contains("connect"), "\(job)")
        #expect((job["not_before"] as? Int ?? 0) > (job["updated"] as? Int ?? 0), "a backoff is set: \(job)")
        // wuxi comes back on its old address.
        let b2 = try FerryServer(c.sb, root: "", listen: ["127.0.0.1:\(port)"], extra: ["--config", c.sb.file("wuxi.toml"), "--cert", c.sb.pki + "/wuxi.crt", "--key", c.sb.pki + "/wuxi.key"])
        defer { b2.stop() }
        let w = try DaemonE2ETests.jobs(c, ["wait", "\(id)", "--timeout", "90"], timeout: 100)
        #expect(w.status == 0, "\(w)")
        #expect(filesIdentical(c.scratch + "/r.txt", c.incoming + "/r.txt"))
        // The failed attempts count as link errors and halved the streams towards wuxi.
        let metrics = DaemonE2ETests.httpGet(c.api + "/metrics")
        #expect(metrics.contains("ferry_peer_errors_total{peer=\"wuxi\"}") && metrics.contains("ferry_peer_streams{peer=\"wuxi\"} ")
                && !metrics.contains("ferry_peer_streams{peer=\"wuxi\"} 4"), "\(metrics)")
    }

    @Test("SIGTERM: the daemon stops within 10 s, the running job goes back to the queue and finishes after a restart", arguments: Backend.allCases)
    func gracefulStop(_ backend: Backend) throws {
        let c = try DaemonE2ETests.start("daemon-term", backend: backend)
        defer { c.b.stop() }
        try writeRandomFile(c.scratch + "/slow.bin", size: 64 * E2E.MiB)
        let r = try DaemonE2ETests.jobs(c, ["submit", "--bwlimit", "4M", "/scratch/slow.bin", "ferry://wuxi/incoming/slow.bin"])
        let id = DaemonE2ETests.lastJSON(r)["id"] as? Int ?? -1
        #expect(waitUntil(timeout: 30) { exists(c.incoming + "/.slow.bin.ferry-part") })
        let t0 = monotonicSeconds()
        #expect(c.a.stop(grace: 10), "did not exit on SIGTERM within 10 s")
        #expect(monotonicSeconds() - t0 < 10.5)
        let a2 = try FerryServer(c.sb, root: "", extra: ["--config", c.sb.file("hlrs.toml")])
        defer { a2.stop() }
        let c2 = Centers(sb: c.sb, a: a2, b: c.b, api: try DaemonE2ETests.apiURL(a2), scratch: c.scratch, incoming: c.incoming, archive: c.archive)
        // `ferry jobs watch` follows it to the end, with live byte counts.
        let w = try c2.sb.ferry(["jobs", "watch", "--api", c2.api, "--token-file", c2.sb.tokenFile, "\(id)", "--timeout", "90"], timeout: 100)
        #expect(w.status == 0, "\(w)")
        #expect(w.stdout.contains("running") && w.stdout.contains("success"), "\(w.stdout)")
        let j = DaemonE2ETests.lastJSON(try DaemonE2ETests.jobs(c2, ["show", "\(id)"]))
        #expect(j["attempts"] as? Int == 2, "one attempt cut by the stop, one that finished it: \(j)")
        #expect(filesIdentical(c.scratch + "/slow.bin", c.incoming + "/slow.bin"))
    }

    /// Polls `ferry jobs show ID` until the job is in `state`; the last answer either way.
    static func waitForState(_ c: Centers, _ id: Int, _ state: String, timeout: Double) -> (reached: Bool, job: [String: Any]) {
        var job: [String: Any] = [:]
        let reached = waitUntil(timeout: timeout, interval: 0.2) {
            job = (try? lastJSON(jobs(c, ["show", "\(id)"]))) ?? [:]
            return job["state"] as? String == state
        }
        return (reached, job)
    }

    /// All jobs, once every one has ended (or what there was when `timeout` ran out).
    static func waitAllEnded(_ c: Centers, count: Int, timeout: Double) -> (ended: Bool, jobs: [[String: Any]]) {
        var jobs: [[String: Any]] = []
        let ended = waitUntil(timeout: timeout, interval: 0.5) {
            let r = try? DaemonE2ETests.jobs(c, ["list", "--limit", "1000"])
            jobs = r.map { (DaemonE2ETests.lastJSON($0)["transfers"] as? [[String: Any]]) ?? [] } ?? []
            return jobs.count == count && jobs.allSatisfy { ["success", "failed", "upstream_failed", "skipped"].contains($0["state"] as? String ?? "") }
        }
        return (ended, jobs)
    }

    @Test("a full disk at the destination: the peer's no_space fails the job at once (no retry), with the peer's reason and code in `ferry jobs show`; its dependent ends upstream_failed", .enabled(if: E2E.isRoot, "mounting a tmpfs needs root"), arguments: Backend.allCases)
    func destinationDiskFull(_ backend: Backend) throws {
        let c = try DaemonE2ETests.start("daemon-full", backend: backend)
        defer { c.a.stop(); c.b.stop(); c.sb.unmountAll() }
        try c.sb.mountTmpfs(at: c.incoming + "/small", sizeMiB: 8)
        try writeRandomFile(c.scratch + "/big.bin", size: 24 * E2E.MiB)
        let first = try DaemonE2ETests.jobs(c, ["submit", "--max-attempts", "3", "--compress", "off", "/scratch/big.bin", "ferry://wuxi/incoming/small/big.bin"])
        let id = DaemonE2ETests.lastJSON(first)["id"] as? Int ?? -1
        let second = try DaemonE2ETests.jobs(c, ["submit", "--after", "\(id)", "/scratch/big.bin", "ferry://wuxi/incoming/copy.bin"])
        let id2 = DaemonE2ETests.lastJSON(second)["id"] as? Int ?? -1
        let w = try DaemonE2ETests.jobs(c, ["wait", "\(id)", "--timeout", "60"], timeout: 70)
        #expect(w.status == 1, "\(w)")
        let job = DaemonE2ETests.lastJSON(try DaemonE2ETests.jobs(c, ["show", "\(id)"]))
        // Failed on its first attempt: a peer's "no space" is its verdict, not a link error to retry.
        #expect(job["state"] as? String == "failed" && job["attempts"] as? Int == 1, "\(job)")
        let error = job["error"] as? String ?? ""
        #expect(error.contains("remote error (no_space)") && error.contains("no space: 24.0 MiB needed") && !error.contains("gave up after"), "\(job)")
        // The code is a field too: a script need not parse the message.
        #expect(job["error_code"] as? String == "no_space", "\(job)")
        let show = try c.sb.ferry(["jobs", "show", "--api", c.api, "--token-file", c.sb.tokenFile, "\(id)"], timeout: 30)
        #expect(show.stdout.contains("failed") && show.stdout.contains("[no_space] remote error"), "\(show)")
        let audit = (try? String(contentsOfFile: c.sb.file("hlrs-audit.jsonl"), encoding: .utf8)) ?? ""
        #expect(!audit.split(separator: "\n").contains { $0.contains("job.end") && $0.contains("retry: ") }, "the job was retried: \(audit)")
        let (_, dep) = DaemonE2ETests.waitForState(c, id2, "upstream_failed", timeout: 20)
        #expect(dep["state"] as? String == "upstream_failed", "\(dep)")
        #expect(!exists(c.incoming + "/copy.bin") && !exists(c.incoming + "/small/big.bin"))
    }

    @Test("a peer refuses for permission: its export acts as an account that may not write there; the job fails once (not retried) with the peer's reason and code", .enabled(if: E2E.isRoot, "acting as another account needs root"))
    func peerPermissionRefusal() throws {
        let c = try DaemonE2ETests.start("daemon-perm", wuxiLocked: true)
        defer { c.a.stop(); c.b.stop() }
        // A directory of wuxi's writable export that only root may write: wuxi acts for hlrs
        // as `nobody` there (the export's account), so the kernel refuses the file.
        let locked = c.sb.file("wuxi/locked")
        try writeFile(c.scratch + "/a.txt", Array("a\n".utf8))
        let first = try DaemonE2ETests.jobs(c, ["submit", "--max-attempts", "3", "/scratch/a.txt", "ferry://wuxi/locked/a.txt"])
        let id = DaemonE2ETests.lastJSON(first)["id"] as? Int ?? -1
        let w = try DaemonE2ETests.jobs(c, ["wait", "\(id)", "--timeout", "60"], timeout: 70)
        #expect(w.status == 1, "\(w)")
        let job = DaemonE2ETests.lastJSON(try DaemonE2ETests.jobs(c, ["show", "\(id)"]))
        let error = job["error"] as? String ?? ""
        #expect(job["state"] as? String == "failed" && job["attempts"] as? Int == 1, "\(job)")
        #expect(error.contains("remote error (permission)") && error.contains("Permission denied"), "\(job)")
        #expect(job["error_code"] as? String == "permission", "\(job)")
        let show = try c.sb.ferry(["jobs", "show", "--api", c.api, "--token-file", c.sb.tokenFile, "\(id)"], timeout: 30)
        #expect(show.stdout.contains("[permission] remote error"), "\(show)")
        #expect(!exists(locked + "/a.txt"))
        let audit = (try? String(contentsOfFile: c.sb.file("hlrs-audit.jsonl"), encoding: .utf8)) ?? ""
        #expect(!audit.split(separator: "\n").contains { $0.contains("job.end") && $0.contains("retry: ") }, "the job was retried: \(audit)")
    }

    @Test("two daemons of one center on one PostgreSQL share 200 jobs: each runs once, both take work, every file identical")
    func twoDaemonsShareQueue() throws {
        let c = try DaemonE2ETests.start("daemon-shared", backend: .postgres)
        defer { c.a.stop(); c.b.stop() }
        let a2 = try FerryServer(c.sb, root: "", extra: ["--config", c.sb.file("hlrs.toml")])
        defer { a2.stop() }
        let api2 = try DaemonE2ETests.apiURL(a2)
        try c.sb.dir("hlrs/scratch/many")
        for i in 0..<200 { try writeFile(c.scratch + "/many/f\(i).txt", Array("job \(i) \(String(repeating: "x", count: i * 97))\n".utf8)) }
        // Submit through both daemons' APIs, alternating (one Python process: 200 POSTs).
        let submit = runTool("/usr/bin/python3", ["-c", """
            import json, sys, urllib.request
            tok = open(sys.argv[3]).read().strip()
            for i in range(200):
                api = sys.argv[1] if i % 2 == 0 else sys.argv[2]
                body = json.dumps({"source": "/scratch/many/f%d.txt" % i, "destination": "ferry://wuxi/incoming/many/f%d.txt" % i}).encode()
                r = urllib.request.Request(api + "/api/v1/transfers", data=body, method="POST",
                                           headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
                assert urllib.request.urlopen(r, timeout=20).status == 201
            print("submitted")
            """, c.api, api2, c.sb.tokenFile])
        #expect(submit.output.contains("submitted"), "\(submit.output)")
        let (ended, jobs) = DaemonE2ETests.waitAllEnded(c, count: 200, timeout: 180)
        #expect(ended, "not all ended: \(jobs.filter { $0["state"] as? String != "success" }.prefix(5))")
        #expect(jobs.allSatisfy { $0["state"] as? String == "success" && $0["attempts"] as? Int == 1 }, "\(jobs.filter { $0["attempts"] as? Int != 1 }.prefix(5))")
        // Both daemons (two processes: two pids in the worker names) ran jobs.
        let daemons = Set(jobs.compactMap { ($0["worker"] as? String)?.split(separator: "/").first.map(String.init) })
        #expect(daemons.count == 2, "workers: \(daemons)")
        for i in 0..<200 { #expect(filesIdentical(c.scratch + "/many/f\(i).txt", c.incoming + "/many/f\(i).txt")) }
        // wuxi's audit log: every file arrived in exactly one successful push.
        let audit = (try? String(contentsOfFile: c.sb.file("wuxi-audit.jsonl"), encoding: .utf8)) ?? ""
        var pushes: [String: Int] = [:]
        for line in audit.split(separator: "\n") {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  o["action"] as? String == "push", o["result"] as? String == "ok", let p = o["path"] as? String, p.contains("/many/") else { continue }
            pushes[p, default: 0] += 1
        }
        #expect(pushes.count == 200 && pushes.values.allSatisfy { $0 == 1 }, "\(pushes.filter { $0.value != 1 })")
    }
}
