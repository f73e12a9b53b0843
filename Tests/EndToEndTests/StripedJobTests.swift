// Striping (issue 19, docs/STRIPING.md step 8) on loopback: center hlrs runs two daemons
// ("nodes" a1 and a2) on one PostgreSQL over one export directory; center wuxi runs two
// transfer servers over one directory. A striped job's parts are claimed by both daemons and
// spread over both of wuxi's servers; big files move as ranges into one partial copy each and
// are committed once. (The netns harness with shaped links is step 10, not here.)

import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Striped jobs", .serialized)
struct StripedJobTests {
    static let stripeSettings = """
        nodes = 2
        stripe_range = "8M"
        stripe_threshold = "1G"
        stripe_files = 40
        stripe_group = "1M"
        per_node = 2
        """

    /// hlrs's two daemons (a1 is `c.a`, a2 returned) and wuxi's two servers.
    static func start(_ name: String) throws -> (DaemonE2ETests.Centers, FerryServer) {
        let c = try DaemonE2ETests.start(name, backend: .postgres, hlrsDaemon: stripeSettings + "\nnode = \"a1\"", wuxiNodes: 2)
        let text = try String(contentsOfFile: c.sb.file("hlrs.toml"), encoding: .utf8).replacingOccurrences(of: "node = \"a1\"", with: "node = \"a2\"")
        try writeFile(c.sb.file("hlrs2.toml"), Array(text.utf8))
        let a2 = try FerryServer(c.sb, root: "", extra: ["--config", c.sb.file("hlrs2.toml")])
        _ = try DaemonE2ETests.apiURL(a2)
        return (c, a2)
    }

    /// Rows of the queue's parts of job `id`: "node|peer_node|kind|state" (psql).
    static func parts(_ c: DaemonE2ETests.Centers, _ id: Int) -> [String] {
        let r = runTool("/usr/bin/psql", [c.database, "-Atc", "SELECT node, peer_node, kind, state FROM job_parts WHERE job = \(id) ORDER BY seq"])
        return r.output.split(separator: "\n").map(String.init)
    }

    static func submit(_ c: DaemonE2ETests.Centers, _ args: [String]) throws -> Int {
        let r = try DaemonE2ETests.jobs(c, ["submit"] + args)
        let id = DaemonE2ETests.lastJSON(r)["id"] as? Int ?? -1
        #expect(id > 0, "\(r)")
        return id
    }

    @Test("a striped push and pull on two nodes of each center: a 100 MiB file as ranges and a tree of 300 files and two big ones, parts on both daemons and both peer servers, byte-identical, directories' times kept, nothing left behind")
    func pushAndPull() throws {
        let (c, a2) = try Self.start("striped")
        defer { c.a.stop(); a2.stop(); c.b.stop(); c.bNodes.forEach { $0.stop() } }
        try writeRandomFile(c.scratch + "/big.bin", size: 100 * E2E.MiB + 12_345)
        try c.sb.dir("hlrs/scratch/tree/d0/e")
        try c.sb.dir("hlrs/scratch/tree/d1/e")
        try c.sb.dir("hlrs/scratch/tree/empty")
        for i in 0..<300 { try writeFile(c.scratch + "/tree/d\(i % 2)\(i % 3 == 0 ? "/e" : "")/f\(i)", randomBytes(100 + i * 37)) }
        try writeRandomFile(c.scratch + "/tree/d0/e/huge.bin", size: 40 * E2E.MiB)
        try writeRandomFile(c.scratch + "/tree/top.bin", size: 17 * E2E.MiB + 1)
        chmod(c.scratch + "/tree/d1", 0o750)
        try setMtime(c.scratch + "/tree/d0/e", seconds: 1_600_000_000)
        try setMtime(c.scratch + "/tree/d0", seconds: 1_600_000_100)
        try setMtime(c.scratch + "/tree/d1", seconds: 1_600_000_200)
        try setMtime(c.scratch + "/tree/empty", seconds: 1_600_000_300)

        // One file, pushed: 26 chunks of 4 MiB as 13 ranges of 8 MiB.
        let file = try Self.submit(c, ["--stripe", "--compress", "off", "/scratch/big.bin", "ferry://wuxi/incoming/big.bin"])
        // A tree, pushed, and the same tree pulled back by the destination side's job.
        let tree = try Self.submit(c, ["--stripe", "-r", "/scratch/tree", "ferry://wuxi/incoming/tree"])
        for id in [file, tree] {
            let w = try DaemonE2ETests.jobs(c, ["wait", "\(id)", "--timeout", "150"], timeout: 160)
            #expect(w.status == 0, "job \(id): \(w)")
        }
        let shown = DaemonE2ETests.lastJSON(try DaemonE2ETests.jobs(c, ["show", "\(file)"]))
        #expect(shown["striped"] as? Bool == true, "\(shown)")
        let parts = shown["parts"] as? [String: Any] ?? [:]
        #expect(parts["total"] as? Int == 13 && parts["success"] as? Int == 13, "\(parts)")
        #expect(parts["bytes_done"] as? Int == 100 * E2E.MiB + 12_345 && parts["bytes_total"] as? Int == 100 * E2E.MiB + 12_345, "\(parts)")
        #expect(filesIdentical(c.scratch + "/big.bin", c.incoming + "/big.bin"))
        #expect(treeDifferences(c.scratch + "/tree", c.incoming + "/tree", checkDirMtime: true).isEmpty,
                "\(treeDifferences(c.scratch + "/tree", c.incoming + "/tree", checkDirMtime: true))")
        #expect(ferryLeftovers(c.incoming).isEmpty, "\(ferryLeftovers(c.incoming))")

        // Both daemons ran parts of each job, toward both of wuxi's servers.
        for id in [file, tree] {
            let rows = Self.parts(c, id).map { $0.split(separator: "|", omittingEmptySubsequences: false).map(String.init) }
            #expect(!rows.isEmpty && rows.allSatisfy { $0.count == 4 && $0[3] == "success" }, "\(rows)")
            #expect(Set(rows.map { $0[0] }) == ["a1", "a2"], "job \(id) nodes: \(rows.map { $0[0] })")
            #expect(Set(rows.map { $0[1] }).count == 2, "job \(id) peer nodes: \(rows.map { $0[1] })")
        }
        let treeRows = Self.parts(c, tree)
        #expect(treeRows.filter { $0.hasSuffix("|range|success") }.count == 5 + 3, "40 MiB as 5 ranges, 17 MiB as 3 (2, 2, 1 chunks): \(treeRows)")

        // The tree pulled back (wuxi's files into hlrs), striped as well.
        let back = try Self.submit(c, ["--stripe", "-r", "ferry://wuxi/incoming/tree", "/scratch/back"])
        let w = try DaemonE2ETests.jobs(c, ["wait", "\(back)", "--timeout", "150"], timeout: 160)
        #expect(w.status == 0, "\(w)")
        #expect(treeDifferences(c.scratch + "/tree", c.scratch + "/back", checkDirMtime: true).isEmpty,
                "\(treeDifferences(c.scratch + "/tree", c.scratch + "/back", checkDirMtime: true))")
        #expect(ferryLeftovers(c.scratch).isEmpty, "\(ferryLeftovers(c.scratch))")
        #expect(Set(Self.parts(c, back).map { String($0.split(separator: "|", omittingEmptySubsequences: false)[0]) }) == ["a1", "a2"])

        // Below the threshold and not asked: one whole job, no parts.
        let plain = try Self.submit(c, ["/scratch/big.bin", "ferry://wuxi/incoming/plain.bin"])
        #expect(try DaemonE2ETests.jobs(c, ["wait", "\(plain)", "--timeout", "60"], timeout: 70).status == 0)
        #expect(Self.parts(c, plain).isEmpty)
        #expect(DaemonE2ETests.lastJSON(try DaemonE2ETests.jobs(c, ["show", "\(plain)"]))["striped"] == nil)
    }

    @Test("on an embedded SQLite queue a job that asks for striping runs whole, and its note says why; --stripe on a copy from this machine is a usage error that explains")
    func sqliteSaysWhy() throws {
        let c = try DaemonE2ETests.start("striped-sqlite", backend: .sqlite, hlrsDaemon: Self.stripeSettings)
        defer { c.a.stop(); c.b.stop() }
        try writeRandomFile(c.scratch + "/big.bin", size: 20 * E2E.MiB)
        let id = try Self.submit(c, ["--stripe", "/scratch/big.bin", "ferry://wuxi/incoming/big.bin"])
        #expect(try DaemonE2ETests.jobs(c, ["wait", "\(id)", "--timeout", "60"], timeout: 70).status == 0)
        let job = DaemonE2ETests.lastJSON(try DaemonE2ETests.jobs(c, ["show", "\(id)"]))
        #expect((job["note"] as? String)?.contains("embedded SQLite") == true, "\(job)")
        #expect(job["striped"] == nil && job["state"] as? String == "success")
        #expect(filesIdentical(c.scratch + "/big.bin", c.incoming + "/big.bin"))
        let human = try c.sb.ferry(["jobs", "show", "--api", c.api, "--token-file", c.sb.tokenFile, "\(id)"])
        #expect(human.stdout.contains("not striped: an embedded SQLite queue"), "\(human)")
        let local = try c.sb.ferry(["cp", "--stripe", c.scratch + "/big.bin", c.scratch + "/copy.bin"])
        #expect(local.status != 0 && local.stderr.contains("center-to-center"), "\(local)")
        #expect(!exists(c.scratch + "/copy.bin"))
    }
}

extension StripedJobTests {
    /// The daemon's own pid (the harness runs it under `timeout`): its worker names carry it.
    static func daemonPid(_ s: FerryServer) -> String {
        let pid = s.process.pid
        let children = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        return children.split(separator: " ").first.map(String.init) ?? "\(pid)"
    }

    static func psql(_ c: DaemonE2ETests.Centers, _ sql: String) -> String {
        runTool("/usr/bin/psql", [c.database, "-Atc", sql]).output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Submits a striped push of `size` bytes, waits until `fraction` of its parts are done,
    /// then `kill` runs; returns the job, the bytes of parts running on `node` at that moment
    /// (nil: any node).
    static func killMidway(_ c: DaemonE2ETests.Centers, size: Int, node: (String) -> String?, victim pick: (String) -> FerryServer) throws -> (id: Int, unfinished: Int) {
        try writeRandomFile(c.scratch + "/big.bin", size: size)
        let id = try submit(c, ["--stripe", "--compress", "off", "--bwlimit", "12M", "/scratch/big.bin", "ferry://wuxi/incoming/big.bin"])
        var unfinished = 0
        var victim = ""
        let reached = waitUntil(timeout: 60, interval: 0.05) {
            let total = Int(psql(c, "SELECT COUNT(*) FROM job_parts WHERE job = \(id)")) ?? 0
            let done = Int(psql(c, "SELECT COUNT(*) FROM job_parts WHERE job = \(id) AND state = 'success'")) ?? 0
            guard total > 0, done * 10 >= total * 3 else { return false }
            let worker = psql(c, "SELECT last_worker FROM jobs WHERE id = \(id)")
            guard let n = node(worker) else { return false }
            let query = "SELECT COALESCE(SUM(bytes_total), 0) FROM job_parts WHERE job = \(id) AND state = 'running' AND (node = '\(n)' OR peer_node = '\(n)')"
            guard let r = Int(psql(c, query)), r > 0 else { return false }
            // Stopped first, then counted, then killed: no part starts on it in between.
            let server = pick(n)
            kill(-server.process.pid, SIGSTOP)
            unfinished = Int(psql(c, query)) ?? r
            server.kill9()
            victim = n
            return true
        }
        #expect(reached && !victim.isEmpty, "the job did not reach 30 % with parts running on the victim")
        return (id, unfinished)
    }

    @Test("kill -9 of the source node coordinating a striped job at a third: the other node takes over the job and the lost parts (from their journals), byte-identical, and what moved again is at most the killed node's unfinished parts")
    func sourceNodeKilled() throws {
        let (c, a2) = try Self.start("striped-kill-src")
        defer { c.a.stop(); a2.stop(); c.b.stop(); c.bNodes.forEach { $0.stop() } }
        let size = 96 * E2E.MiB + 777
        var killed = ""
        let (id, unfinished) = try Self.killMidway(c, size: size, node: { worker in
            // The coordinator's node: its worker is CENTER-PID/N.
            if worker.contains("-\(Self.daemonPid(c.a))/") { return "a1" }
            if worker.contains("-\(Self.daemonPid(a2))/") { return "a2" }
            return nil
        }, victim: { n in
            killed = n
            return n == "a1" ? c.a : a2
        })
        let survivor = killed == "a1" ? a2 : c.a
        let api = try DaemonE2ETests.apiURL(survivor)
        let w = try c.sb.ferry(["jobs", "wait", "--api", api, "--token-file", c.sb.tokenFile, "\(id)", "--timeout", "150"], timeout: 160)
        #expect(w.status == 0, "\(w)")
        #expect(filesIdentical(c.scratch + "/big.bin", c.incoming + "/big.bin"))
        #expect(ferryLeftovers(c.incoming).isEmpty, "\(ferryLeftovers(c.incoming))")
        // Bytes the runners recorded moving (each renewal and each part's end): the killed
        // node's last unrecorded span is missing, so at least size − its unfinished parts, and
        // what moved again (resumed from the journals) at most its unfinished parts.
        let moved = Int(Self.psql(c, "SELECT COALESCE(SUM(bytes), 0) FROM link_samples WHERE job = \(id)")) ?? -1
        #expect(moved >= size - unfinished && moved <= size + unfinished, "moved \(moved) for \(size) (killed node's unfinished parts \(unfinished))")
        let retaken = Int(Self.psql(c, "SELECT COUNT(*) FROM job_parts WHERE job = \(id) AND attempts > 1")) ?? 0
        #expect(retaken >= 1, "no part was taken back from the killed node")
        #expect(Self.psql(c, "SELECT COUNT(*) FROM jobs WHERE id = \(id) AND attempts >= 2") == "1", "the job's coordinator was not taken over")
    }

    @Test("kill -9 of the peer's configured server (one of its two) at a third: its parts go to the other server (the dead one rests) and so does the commit, byte-identical, what moved again at most its unfinished parts")
    func peerNodeKilled() throws {
        let (c, a2) = try Self.start("striped-kill-dst")
        defer { c.a.stop(); a2.stop(); c.b.stop(); c.bNodes.forEach { $0.stop() } }
        let size = 96 * E2E.MiB + 777
        let servers = [c.b] + c.bNodes
        let (id, unfinished) = try Self.killMidway(c, size: size, node: { _ in "127.0.0.1:\(servers[0].port)" }, victim: { _ in servers[0] })
        let w = try DaemonE2ETests.jobs(c, ["wait", "\(id)", "--timeout", "150"], timeout: 160)
        #expect(w.status == 0, "\(w)")
        #expect(filesIdentical(c.scratch + "/big.bin", c.incoming + "/big.bin"))
        #expect(ferryLeftovers(c.incoming).isEmpty, "\(ferryLeftovers(c.incoming))")
        let moved = Int(Self.psql(c, "SELECT COALESCE(SUM(bytes), 0) FROM link_samples WHERE job = \(id)")) ?? -1
        #expect(moved >= size && moved <= size + unfinished, "moved \(moved) for \(size) (the dead server's unfinished parts \(unfinished))")
        #expect(Self.psql(c, "SELECT down_until > 0 FROM peer_nodes WHERE address = '127.0.0.1:\(servers[0].port)'") == "t", "the dead server was not marked down")
    }
}
