// Prestaging on a real Slurm (22.05 from Debian, one node on 127.0.0.1, burst_buffer/lua with
// contrib/slurm/burst_buffer.lua and job_submit.lua; scripts/slurm-test.sh). Two centers:
// hlrs runs Slurm and a daemon with a staging cache (quota 24 MiB, staging at 16 MiB/s); wuxi
// holds the datasets and takes results. Jobs are submitted by the ordinary user ferryjob.

import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Prestaging on Slurm", .serialized)
struct SlurmE2ETests {
    /// Runs a shell command to completion (output to a file, not a pipe: slurm-test.sh
    /// starts daemons), at most `timeout` seconds.
    static func sh(_ command: String, timeout: Int = 60, env: [String: String] = [:]) -> (status: Int32, output: String) {
        runTool("/bin/sh", ["-c", "(\(command)) < /dev/null"], timeout: timeout, env: env)
    }

    final class Site {
        let sb: Sandbox
        let slurmDir: String
        var conf = ""
        var servers: [String: FerryServer] = [:]
        var api: [String: String] = [:]
        let scratch: String
        let operatorToken: String
        var uid: UInt32 = 0

        init(sb: Sandbox, operatorToken: String) {
            self.sb = sb
            self.operatorToken = operatorToken
            slurmDir = sb.path + "/slurm"
            scratch = sb.path + "/hlrs/scratch/ferryjob"
        }

        func slurm(_ command: String, timeout: Int = 60) -> (status: Int32, output: String) {
            SlurmE2ETests.sh(command, timeout: timeout, env: ["SLURM_CONF": conf])
        }

        /// sbatch as ferryjob; the job id, or the refusal.
        func submit(_ name: String, _ body: String) throws -> (id: String?, output: String) {
            let path = scratch + "/" + name + ".sh"
            try writeFile(path, Array(body.utf8))
            chown(path, uid, uid)
            let r = slurm("cd '\(scratch)' && runuser -u ferryjob -- env SLURM_CONF='\(conf)' sbatch --parsable -o '\(scratch)/%j.out' '\(path)'")
            let id = r.output.split(separator: "\n").last.map { $0.trimmingCharacters(in: .whitespaces) }
            return (r.status == 0 ? id : nil, r.output)
        }

        /// "STATE|REASON" of a job (scontrol, as root).
        func state(_ id: String) -> String {
            let r = slurm("scontrol show job -o \(id)")
            func field(_ k: String) -> String {
                r.output.split(separator: " ").first { $0.hasPrefix(k + "=") }.map { String($0.dropFirst(k.count + 1)) } ?? "?"
            }
            let reason = r.output.range(of: "Reason=").map { String(r.output[$0.upperBound...].prefix { $0 != "\n" }) } ?? ""
            return field("JobState") + "|" + reason
        }

        /// Waits until the job is in a final state, at most `seconds` of wall time (and never
        /// beyond the test's own deadline, whatever a hanging scontrol costs); returns the state.
        func waitEnd(_ id: String, seconds: Int = 240) -> String {
            var s = ""
            let until = min(monotonicSeconds() + Double(seconds), deadline)
            for _ in 0..<(seconds * 2 + 1) {
                s = state(id)
                if ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"].contains(where: { s.hasPrefix($0 + "|") }) { return s }
                if monotonicSeconds() >= until { break }
                usleep(500_000)
            }
            return s
        }

        /// The whole test ends by then: every wait below is clamped to it, so a Slurm that stops
        /// answering costs at most this long, not count × command timeout.
        let deadline = monotonicSeconds() + 1500
        var timeLeft: Bool { monotonicSeconds() < deadline }

        func ferry(_ c: String, _ args: [String], timeout: Double = 60) throws -> CpResult {
            // Group commands (jobs, stage) take the options after their subcommand.
            let k = ["jobs", "stage"].contains(args[0]) ? 2 : 1
            return try sb.ferry(Array(args.prefix(k)) + ["--api", api[c]!, "--token-file", operatorToken] + args.dropFirst(k), timeout: timeout)
        }

        func cache(_ key: String = "entries") throws -> [[String: Any]] {
            let r = try ferry("hlrs", ["stage", "cache", "--json"])
            let obj = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [String: Any]
            return (obj?[key] as? [[String: Any]]) ?? []
        }

        func stop() {
            // The controller's and node's logs outlive the sandbox, for a failure's post-mortem.
            _ = SlurmE2ETests.sh("mkdir -p /tmp/ferry-slurm-logs && cp '\(slurmDir)'/log/*.log /tmp/ferry-slurm-logs/ 2>/dev/null; cp '\(sb.path)'/logs/* /tmp/ferry-slurm-logs/ 2>/dev/null; true")
            _ = SlurmE2ETests.sh("'\(E2E.packageRoot)/scripts/slurm-test.sh' stop '\(slurmDir)'", timeout: 60)
            for s in servers.values { s.stop() }
        }
    }

    static func start() throws -> Site {
        let sb = try Sandbox("slurm")
        chmod(sb.path, 0o755)
        try Sandbox.ferryTool(["ca", "issue", "--dir", sb.pki, "--center", "wuxi", "--host", "127.0.0.1"])
        let op = try sb.issueToken(user: "slurm", scopes: ["rw:/"], name: "slurm.tok")
        chmod(op, 0o600)
        let site = Site(sb: sb, operatorToken: op)
        var tport: [String: Int] = [:], aport: [String: Int] = [:]
        for c in ["hlrs", "wuxi"] {
            tport[c] = try FederationE2ETests.freePort()
            aport[c] = try FederationE2ETests.freePort()
        }
        for (c, other) in [("hlrs", "wuxi"), ("wuxi", "hlrs")] {
            try sb.dir("\(c)/data")
            let exports = c == "hlrs" ? """
                [[export]]
                name = "scratch"
                path = "hlrs/scratch"
                access = "rw"
                users = ["*"]
                [[export]]
                name = "cache"
                path = "hlrs/cache"
                access = "rw"
                users = ["slurm"]
                """ : """
                [[export]]
                name = "data"
                path = "wuxi/data"
                access = "rw"
                users = ["*", "center:hlrs"]
                [[export]]
                name = "results"
                path = "wuxi/results"
                access = "rw"
                users = ["center:hlrs"]
                """
            let staging = c == "hlrs" ? "staging = \"/cache/stage\"\nstaging_quota = \"24M\"\nstaging_bwlimit = \"16M\"\n" : ""
            try writeFile(sb.file("\(c).toml"), Array("""
                center = "\(c)"
                run_as = "root"
                listen = ["127.0.0.1:\(tport[c]!)"]
                certificate = "pki/\(c).crt"
                key = "pki/\(c).key"
                ca = "pki/ca.crt"
                token_issuers = ["pki/hlrs.crt"]
                [daemon]
                database = "\(c).sqlite"
                api_listen = "127.0.0.1:\(aport[c]!)"
                workers = 4
                per_user = 16
                retry_base_seconds = 1
                sync_seconds = 1
                \(staging)
                [[peer]]
                name = "\(other)"
                address = "127.0.0.1:\(tport[other]!)"
                api = "127.0.0.1:\(aport[other]!)"

                \(exports)

                """.utf8))
        }
        try sb.dir("hlrs/scratch")
        try sb.dir("hlrs/cache")
        try sb.dir("wuxi/results")
        for c in ["hlrs", "wuxi"] {
            site.servers[c] = try FerryServer(sb, root: "", listen: [], extra: ["--config", sb.file("\(c).toml"), "--cert", sb.pki + "/\(c).crt", "--key", sb.pki + "/\(c).key"])
            site.api[c] = try DaemonE2ETests.apiURL(site.servers[c]!)
        }
        // Slurm, with the hooks talking to hlrs's daemon as the operator "slurm".
        let r = sh("'\(E2E.packageRoot)/scripts/slurm-test.sh' start '\(site.slurmDir)' '\(E2E.packageRoot)/contrib/slurm/burst_buffer.lua'", timeout: 120,
                   env: ["FERRY_BIN": E2E.ferryBinary, "FERRY_API": site.api["hlrs"]!, "FERRY_TOKEN_FILE": op, "FERRY_CA": sb.ca])
        guard r.status == 0, let line = r.output.split(separator: "\n").first(where: { $0.hasPrefix("SLURM_CONF=") }) else {
            site.stop()
            throw HarnessError("the test Slurm did not start: \(r.output)")
        }
        site.conf = String(line.dropFirst("SLURM_CONF=".count))
        guard let pw = getpwnam("ferryjob") else { throw HarnessError("no user ferryjob") }
        site.uid = pw.pointee.pw_uid
        try sb.dir("hlrs/scratch/ferryjob")
        chown(site.scratch, site.uid, pw.pointee.pw_gid)
        return site
    }

    static func sha256(_ path: String) -> String {
        String(sh("sha256sum '\(path)'").output.prefix(64))
    }

    @Test("jobs run on verified staged data; a missing source holds the job with the reason; results go to another center; ten jobs make one transfer; a cancel leaves nothing; quota evicts only unpinned data; a controller restart still ends well")
    func prestaging() throws {
        let site = try SlurmE2ETests.start()
        defer { site.stop() }
        let sb = site.sb
        let S = site.scratch
        // Datasets at wuxi: ensemble (8 MiB), genome (10 MiB), lib (10 MiB), atlas (10 MiB),
        // slow (160 MiB), cancel (640 MiB, only for the cancelled stage-in).
        let sizes = ["ensemble": 8, "genome": 10, "lib": 10, "atlas": 10, "slow": 160, "cancel": 640]
        for (name, mib) in sizes {
            let d = try sb.dir("wuxi/data/\(name)")
            if name == "slow" || name == "cancel" {
                // Random: compression cannot shorten it, so staging_bwlimit (16 MiB/s) makes slow
                // take ~10 s and cancel ~40 s. (5) cancels a stage-in of its own dataset: at 96,
                // then 160 MiB a loaded CI saw Slurm's teardown of the cancelled job arrive after
                // the transfer had finished (the entry was then a finished, unpinned one, not
                // the cancelled transfer (5) means to test); its 40 s leave room for that.
                #expect(SlurmE2ETests.sh("head -c \(mib << 20) /dev/urandom > '\(d)/part 1.bin'").status == 0)
            } else {
                try writeFile(d + "/part 1.bin", (0..<(mib << 20)).map { UInt8(truncatingIfNeeded: ($0 &* 2654435761 &+ mib) >> 11) })
            }
            try writeFile(d + "/README", Array("dataset \(name)\n".utf8))
            let reg = try site.ferry("wuxi", ["register", "/data/\(name)", "--dataset", name, "--readers", "*"])
            #expect(reg.status == 0, "\(reg)")
        }
        let sum = SlurmE2ETests.sha256(sb.file("wuxi/data/ensemble/part 1.bin"))
        // hlrs follows wuxi's catalog: gfs://wuxi/... resolves there, every one of the six
        // (registered in a dictionary's order: one being there says nothing of the others).
        var seen = false
        for _ in 0..<60 where !seen && site.timeLeft {
            seen = try sizes.keys.allSatisfy { (try site.ferry("hlrs", ["ls", "gfs://wuxi/\($0)"])).status == 0 }
            if !seen { usleep(500_000) }
        }
        #expect(seen)

        // (1) Stage in, compute on it, stage the results out to wuxi.
        let j1 = try site.submit("one", """
            #!/bin/sh
            #SBATCH -J one
            #FERRY stage_in gfs://wuxi/ensemble \(S)/%j/in
            #FERRY stage_out \(S)/%j/out ferry://wuxi/results/run-%j
            set -e
            mkdir -p \(S)/$SLURM_JOB_ID/out
            sha256sum "$FERRY_STAGED_1/part 1.bin" | cut -c1-64 > \(S)/$SLURM_JOB_ID/out/sum.txt
            cp "$FERRY_STAGED_1/README" \(S)/$SLURM_JOB_ID/out/
            echo "staged at $FERRY_STAGED_1"

            """)
        let id1 = try #require(j1.id, "\(j1.output)")
        #expect(site.waitEnd(id1).hasPrefix("COMPLETED"), "\(site.state(id1))")
        // Stage-out ran after the job: its results are at wuxi, and they say the job read exactly
        // the dataset's bytes.
        var delivered = ""
        for _ in 0..<60 where delivered.isEmpty && site.timeLeft {
            delivered = (try? String(contentsOfFile: sb.file("wuxi/results/run-\(id1)/sum.txt"), encoding: .utf8)) ?? ""
            if delivered.isEmpty { usleep(500_000) }
        }
        #expect(delivered.trimmingCharacters(in: .whitespacesAndNewlines) == sum, "results: '\(delivered)' vs \(sum); job output: \((try? String(contentsOfFile: S + "/\(id1).out", encoding: .utf8)) ?? "")")
        #expect(filesIdentical(sb.file("wuxi/data/ensemble/README"), sb.file("wuxi/results/run-\(id1)/README")))
        // Teardown removed the job's link and unpinned the entry (it stays, ready, for reuse).
        var after: [[String: Any]] = []
        for _ in 0..<40 where site.timeLeft {
            after = try site.cache()
            if after.contains(where: { $0["source"] as? String == "gfs://wuxi/ensemble" && ($0["pins"] as? [String] ?? ["x"]).isEmpty }) { break }
            usleep(500_000)
        }
        #expect(after.contains { $0["source"] as? String == "gfs://wuxi/ensemble" && $0["state"] as? String == "ready" && ($0["pins"] as? [String] ?? ["x"]).isEmpty }, "\(after)")
        #expect(!FileManager.default.fileExists(atPath: S + "/\(id1)/in"))

        // (2) A source that does not exist: the job is held with the reason in squeue.
        let j2 = try site.submit("missing", "#!/bin/sh\n#FERRY stage_in gfs://wuxi/no-such-dataset \(S)/%j/in\necho never\n")
        let id2 = try #require(j2.id, "\(j2.output)")
        var held = ""
        for _ in 0..<60 where site.timeLeft {
            held = site.slurm("squeue -h -j \(id2) -o '%T|%r'").output
            if held.contains("no dataset") { break }
            usleep(500_000)
        }
        #expect(held.contains("PENDING") && held.contains("no-such-dataset") && held.contains("no dataset"), "\(held)")
        _ = site.slurm("scancel \(id2)")

        // (3) A directive after the first command: refused at submission.
        let late = try site.submit("late", "#!/bin/sh\nhostname\n#FERRY stage_in gfs://wuxi/ensemble \(S)/%j/in\n")
        #expect(late.id == nil && late.output.contains("would be ignored by Slurm"), "\(late.output)")

        // (4) Ten jobs on one dataset: one transfer.
        var ten: [String] = []
        for k in 0..<10 {
            let j = try site.submit("ten\(k)", "#!/bin/sh\n#FERRY stage_in gfs://wuxi/genome \(S)/%j/g\nset -e\ntest \"$(sha256sum \"$FERRY_STAGED_1/part 1.bin\" | cut -c1-64)\" = \"\(SlurmE2ETests.sha256(sb.file("wuxi/data/genome/part 1.bin")))\"\n")
            ten.append(try #require(j.id, "\(j.output)"))
        }
        // Slurm may requeue a job at launch (seen once in many runs: Restarts=1, eligible again
        // two minutes later); it then stages in again and runs, so wait long enough for that.
        let tenDeadline = Date().addingTimeInterval(480)
        for id in ten { #expect(site.waitEnd(id, seconds: max(5, Int(tenDeadline.timeIntervalSinceNow))).hasPrefix("COMPLETED"), "\(id): \(site.state(id))") }
        let transfers = try site.ferry("hlrs", ["jobs", "list", "--json"])
        let list = ((try? JSONSerialization.jsonObject(with: Data(transfers.stdout.utf8))) as? [String: Any])?["transfers"] as? [[String: Any]] ?? []
        let genomeJobs = list.filter { ($0["source"] as? String ?? "").hasSuffix("/data/genome") }
        #expect(genomeJobs.count == 1 && genomeJobs.first?["state"] as? String == "success", "\(transfers.stdout)")

        // (5) Cancel during stage-in (640 MiB at 16 MiB/s): no orphan transfer, no pin, no link.
        let j5 = try site.submit("cancel", "#!/bin/sh\n#FERRY stage_in gfs://wuxi/cancel \(S)/%j/s\necho ran\n")
        let id5 = try #require(j5.id, "\(j5.output)")
        var staging: [String: Any]?
        for _ in 0..<60 where staging == nil && site.timeLeft {
            // Staging, with its transfer job recorded (the entry exists a moment before it).
            staging = try site.cache().first { $0["source"] as? String == "gfs://wuxi/cancel" && $0["state"] as? String == "staging" && $0["job"] is Int }
            if staging == nil { usleep(250_000) }
        }
        let entryJob = try #require(staging?["job"] as? Int, "\(String(describing: staging))")
        let scancel = site.slurm("scancel \(id5)")
        #expect(scancel.status == 0, "\(scancel.output)")
        // What Slurm's teardown sends on a cancel (burst_buffer.lua), sent here at once: under
        // CI load Slurm's own came more than 30 s late, after the transfer this step means to
        // stop had nearly finished. Slurm's own arrives at its pace; checked at the end.
        let td = try site.ferry("hlrs", ["stage", "teardown", "--job", id5, "--hurry"])
        #expect(td.status == 0, "\(td)")
        var gone = false
        for _ in 0..<60 where !gone && site.timeLeft {
            gone = try !site.cache().contains { $0["source"] as? String == "gfs://wuxi/cancel" }
            if !gone { usleep(500_000) }
        }
        #expect(gone, "\(String(describing: try? site.cache()))")
        // A poll of the stage-in hook that Slurm has not killed yet (retry false) stages nothing
        // again for the torn-down job: "failed", and the cache stays without it.
        let poll = SlurmE2ETests.sh("""
            python3 -c "import sys,json,urllib.request,urllib.error
            body=json.dumps({'job':sys.argv[3],'user':'ferryjob','uid':\(site.uid),'gid':\(site.uid),'retry':False,'directives':[{'direction':'stage_in','source':'gfs://wuxi/cancel','destination':sys.argv[4],'optional':False,'checksum':False,'line':2}]}).encode()
            r=urllib.request.Request(sys.argv[1]+'/api/v1/stage/in',data=body,headers={'Authorization':'Bearer '+open(sys.argv[2]).read().strip(),'Content-Type':'application/json'})
            try: print(urllib.request.urlopen(r,timeout=30).read().decode())
            except urllib.error.HTTPError as e: print(e.code, e.read().decode())" '\(site.api["hlrs"]!)' '\(site.operatorToken)' '\(id5)' '\(S)/\(id5)/s'
            """)
        #expect(poll.output.contains("failed") && poll.output.contains("was torn down"), "\(poll.output)")
        #expect(try !site.cache().contains { $0["source"] as? String == "gfs://wuxi/cancel" })
        let cancelled = try site.ferry("hlrs", ["jobs", "show", "--json", "\(entryJob)"])
        #expect(cancelled.stdout.contains("\"state\":\"failed\""), "\(cancelled.stdout)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: sb.file("hlrs/cache/stage")).count == (try site.cache()).count)
        #expect(!FileManager.default.fileExists(atPath: S + "/\(id5)/s"))

        // (6) Quota 24 MiB: lib is pinned by a running job while atlas comes in; only unpinned
        // entries (least recently used first) are evicted, never lib.
        let j6 = try site.submit("pinned", "#!/bin/sh\n#FERRY stage_in gfs://wuxi/lib \(S)/%j/l\nset -e\nsleep 12\nsha256sum \"$FERRY_STAGED_1/part 1.bin\"\n")
        let id6 = try #require(j6.id, "\(j6.output)")
        for _ in 0..<120 where site.timeLeft && !site.state(id6).hasPrefix("RUNNING") { usleep(500_000) }
        let j7 = try site.submit("atlas", "#!/bin/sh\n#FERRY stage_in gfs://wuxi/atlas \(S)/%j/a\ncat \"$FERRY_STAGED_1/README\"\n")
        let id7 = try #require(j7.id, "\(j7.output)")
        #expect(site.waitEnd(id7).hasPrefix("COMPLETED"), "\(site.state(id7))")
        let mid = try site.cache().compactMap { $0["source"] as? String }
        let midOK = mid.contains("gfs://wuxi/lib") && mid.contains("gfs://wuxi/atlas") && !mid.contains("gfs://wuxi/ensemble") && !mid.contains("gfs://wuxi/genome")
        #expect(midOK, "cache during job \(id6): \(mid)")
        #expect(site.waitEnd(id6).hasPrefix("COMPLETED"), "\(site.state(id6))")

        // (7) The controller restarts during a stage-in: the job still runs, on verified data.
        let slowSum = SlurmE2ETests.sha256(sb.file("wuxi/data/slow/part 1.bin"))
        let j8 = try site.submit("restart", "#!/bin/sh\n#FERRY stage_in gfs://wuxi/slow \(S)/%j/s\nset -e\ntest \"$(sha256sum \"$FERRY_STAGED_1/part 1.bin\" | cut -c1-64)\" = \"\(slowSum)\"\necho verified\n")
        let id8 = try #require(j8.id, "\(j8.output)")
        for _ in 0..<60 where try site.timeLeft && !(site.cache().contains { $0["source"] as? String == "gfs://wuxi/slow" }) { usleep(250_000) }
        let restart = site.slurm("'\(E2E.packageRoot)/scripts/slurm-test.sh' restart-ctld '\(site.slurmDir)'", timeout: 90)
        #expect(restart.status == 0, "\(restart.output)")
        #expect(site.waitEnd(id8, seconds: 300).hasPrefix("COMPLETED"), "\(site.state(id8))")
        #expect(((try? String(contentsOfFile: S + "/\(id8).out", encoding: .utf8)) ?? "").contains("verified"))

        // (8) What a crashed job leaves: its pin (a job the scheduler no longer knows) and a
        // stray directory; the sweep clears both, and keeps live jobs' pins.
        try writeFile(S + "/ghost.sh", Array("#!/bin/sh\n#FERRY stage_in gfs://wuxi/atlas \(S)/ghost/a\n".utf8))
        let ghost = try site.sb.ferry(["stage-in", "--api", site.api["hlrs"]!, "--token-file", site.operatorToken, "--job", "999999",
                                       "--script", S + "/ghost.sh", "--uid", "\(site.uid)"], timeout: 60)
        #expect(ghost.status == 0, "\(ghost)")
        try sb.dir("hlrs/cache/stage/stray-from-a-crash")
        #expect(try site.cache().contains { ($0["pins"] as? [String] ?? []).contains("999999") })
        let live = ([id1, id2, id5, id6, id7, id8] + ten).joined(separator: ",")
        let sweep = try site.ferry("hlrs", ["stage", "sweep", "--keep-jobs", live])
        #expect(sweep.status == 0 && sweep.stdout.contains("pins of 1 jobs") && sweep.stdout.contains("1 stray directories"), "\(sweep)")
        #expect(try !site.cache().contains { ($0["pins"] as? [String] ?? []).contains("999999") })
        #expect(!FileManager.default.fileExists(atPath: sb.file("hlrs/cache/stage/stray-from-a-crash")))
        #expect(!FileManager.default.fileExists(atPath: S + "/ghost/a"))

        // (9) Other schedulers: the PBS prologue and epilogue (contrib/pbs), run as PBS would,
        // block until the data is there or fail with the reason as their last line.
        let pbs = try sb.dir("pbs/mom_priv/jobs")
        try writeFile(pbs + "/42.pbs.SC", Array("#!/bin/sh\n#PBS -N dock\n#FERRY stage_in gfs://wuxi/lib \(S)/pbs42/l\n./dock\n".utf8))
        try writeFile(pbs + "/43.pbs.SC", Array("#!/bin/sh\n#FERRY stage_in gfs://wuxi/not-there \(S)/pbs43/l\n./dock\n".utf8))
        let bin = (E2E.ferryBinary as NSString).deletingLastPathComponent
        // FERRY_STAGE_ENV: not the host's /etc/ferry/stage.env (the package test installs one
        // while this runs, and its token file is not this site's).
        let env = ["PBS_HOME": sb.file("pbs"), "FERRY_API": site.api["hlrs"]!, "FERRY_TOKEN_FILE": site.operatorToken,
                   "FERRY_STAGE_ENV": sb.file("no-stage.env"),
                   "PATH": bin + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")]
        let pro = SlurmE2ETests.sh("'\(E2E.packageRoot)/contrib/pbs/prologue' 42.pbs ferryjob ferryjob", timeout: 120, env: env)
        #expect(pro.status == 0, "\(pro.output)")
        #expect(filesIdentical(S + "/pbs42/l/part 1.bin", sb.file("wuxi/data/lib/part 1.bin")))
        let bad = SlurmE2ETests.sh("'\(E2E.packageRoot)/contrib/pbs/prologue' 43.pbs ferryjob ferryjob", timeout: 120, env: env)
        let reason = bad.output.split(separator: "\n").last.map(String.init) ?? ""
        #expect(bad.status == 1 && reason.contains("gfs://wuxi/not-there") && reason.contains("no dataset"), "\(bad.output)")
        let epi = SlurmE2ETests.sh("'\(E2E.packageRoot)/contrib/pbs/epilogue' 42.pbs ferryjob ferryjob", timeout: 120, env: env)
        #expect(epi.status == 0 && !FileManager.default.fileExists(atPath: S + "/pbs42/l"), "\(epi.output)")
        // Without waiting: "still staging" is exit 75 (EX_TEMPFAIL); asked again, it is done.
        try writeFile(pbs + "/44.pbs.SC", Array("#!/bin/sh\n#FERRY stage_in gfs://wuxi/slow \(S)/pbs44/s\n".utf8))
        _ = try site.ferry("hlrs", ["stage", "teardown", "--job", id8])
        // Unpinned, 160 MiB over a 24 MiB quota: the teardown evicted it, so it is staged anew.
        let slowLeft = try site.cache().filter { $0["source"] as? String == "gfs://wuxi/slow" }
        #expect(slowLeft.isEmpty, "\(slowLeft)")
        // ... and recorded: what, how big, why (`ferry stage cache`, the console's Staging view).
        let evicted = try site.cache("evictions").filter { $0["source"] as? String == "gfs://wuxi/slow" }
        #expect(!evicted.isEmpty && (evicted.first?["bytes"] as? Int ?? 0) >= 160 * 1024 * 1024
                && (evicted.first?["reason"] as? String ?? "").contains("over quota"), "\(evicted)")
        let listed = try site.ferry("hlrs", ["stage", "cache"])
        #expect(listed.stdout.contains("evicted") && listed.stdout.contains("gfs://wuxi/slow"), "\(listed)")
        let nowait = try sb.ferry(["stage-in", "--no-wait", "--api", site.api["hlrs"]!, "--token-file", site.operatorToken, "--job", "44",
                                   "--script", pbs + "/44.pbs.SC"], timeout: 60)
        #expect(nowait.status == 75 && nowait.stderr.contains("still staging"), "\(nowait)")
        let waited = try sb.ferry(["stage-in", "--wait", "--api", site.api["hlrs"]!, "--token-file", site.operatorToken, "--job", "44",
                                   "--script", pbs + "/44.pbs.SC"], timeout: 120)
        #expect(waited.status == 0 && waited.stdout.contains("done"), "\(waited)")
        #expect(filesIdentical(S + "/pbs44/s/part 1.bin", sb.file("wuxi/data/slow/part 1.bin")))
        // Asked again (a requeue, a restarted controller): the same answer, the link kept.
        let twice = try sb.ferry(["stage-in", "--api", site.api["hlrs"]!, "--token-file", site.operatorToken, "--job", "44",
                                  "--script", pbs + "/44.pbs.SC"], timeout: 120)
        #expect(twice.status == 0 && twice.stdout.contains("done"), "\(twice)")
        #expect(filesIdentical(S + "/pbs44/s/part 1.bin", sb.file("wuxi/data/slow/part 1.bin")))

        // (10) The daemon (root) writes only within its exports: a DST outside them, or one
        // that leads out through a symbolic link, is refused and nothing is made.
        let outside = try sb.dir("elsewhere")
        symlink(outside, S + "/escape")
        for (k, dst) in [(45, outside + "/x"), (46, S + "/escape/x"), (47, S + "/../../wuxi/data/x")] {
            try writeFile(pbs + "/\(k).SC", Array("#!/bin/sh\n#FERRY stage_in gfs://wuxi/lib \(dst)\n".utf8))
            let r = try sb.ferry(["stage-in", "--api", site.api["hlrs"]!, "--token-file", site.operatorToken, "--job", "\(k)", "--script", pbs + "/\(k).SC"], timeout: 60)
            #expect(r.status == 1 && (r.stderr.contains("not within an export") || r.stderr.contains("without . or ..")), "\(dst): \(r)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty)
        // (5), continued: Slurm's own teardown of the cancelled job came (the hook ran and the
        // daemon answered), however late; and it, or the stage-in hook before its kill, staged
        // nothing again.
        var slurmTeardown = false
        let log = site.slurmDir + "/log/slurmctld.log"
        for _ in 0..<600 where !slurmTeardown && site.timeLeft {
            slurmTeardown = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("teardown JobId=\(id5): stage teardown succeeded")
            if !slurmTeardown { usleep(500_000) }
        }
        #expect(slurmTeardown, "no teardown of the cancelled job \(id5) in \(log)")
        #expect(try !site.cache().contains { $0["source"] as? String == "gfs://wuxi/cancel" })
        #expect(!FileManager.default.fileExists(atPath: S + "/\(id5)/s"))

        // Garbage instead of a stage request: 400, nothing else.
        let garbage = SlurmE2ETests.sh("python3 -c \"import sys,urllib.request,urllib.error\nr=urllib.request.Request(sys.argv[1]+'/api/v1/stage/in',data=b'{not json',headers={'Authorization':'Bearer '+open(sys.argv[2]).read().strip()})\ntry: urllib.request.urlopen(r,timeout=10); print(200)\nexcept urllib.error.HTTPError as e: print(e.code)\" '\(site.api["hlrs"]!)' '\(site.operatorToken)'")
        #expect(garbage.output.hasPrefix("400"), "\(garbage.output)")
    }
}
