// What an rsync, rclone or diff user takes for granted (the first-hour review of 2026-12-07):
// `--bwlimit 0` is no limit and a bare number KiB/s; a dry run that predicts a failure exits 1;
// `ferry check` tells "differs" (1) from "could not check" (2); a ping with a token a copy
// would be refused with fails; a pull's summary says "received"; with several sources, one
// ending in '/' puts its content in DST.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Command-line habits")
struct CLIHabitsTests {
    @Test("--bwlimit: 0 and off are no limit, a bare number is KiB/s, megabits are refused")
    func bwlimit() throws {
        let sb = try Sandbox("cli-bwlimit")
        let root = try sb.dir("root")
        let src = try sb.dir("local") + "/f.bin"
        try writeRandomFile(src, size: 2 * E2E.MiB)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        for (i, rate) in ["0", "off"].enumerated() {
            let t0 = monotonicSeconds()
            let r = try sb.cp(src, server.url("zero\(i).bin"), options: ["--bwlimit", rate], timeout: 60)
            #expect(r.succeeded && monotonicSeconds() - t0 < 20, "--bwlimit \(rate) paced the copy: \(r)")
            #expect(filesIdentical(src, root + "/zero\(i).bin"))
        }
        // 1024 KiB/s: 2 MiB take about two seconds (at least one, the pacing's start allowed).
        let t0 = monotonicSeconds()
        let paced = try sb.cp(src, server.url("kib.bin"), options: ["--bwlimit", "1024"], timeout: 60)
        let took = monotonicSeconds() - t0
        #expect(paced.succeeded && took > 1.0 && took < 15, "--bwlimit 1024 (KiB/s) took \(took) s: \(paced)")
        let bits = try sb.cp(src, server.url("bits.bin"), options: ["--bwlimit", "500Mb"], json: false)
        #expect(bits.status == 64 && bits.allMessages.contains("bits"), "\(bits)")
    }

    @Test("a dry run that predicts a failure exits 1, as the run does; one that does not exits 0")
    func dryRunExit() throws {
        let sb = try Sandbox("cli-dryrun")
        let root = try sb.dir("root")
        let tree = try sb.dir("local/tc")
        try writeRandomFile(tree + "/x", size: 10)
        _ = try sb.dir("root/tc/x")  // a directory where the file x would go
        try writeRandomFile(root + "/tc/x/inside", size: 1)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let dry = try sb.cp(tree, server.url("tc"), options: ["-r", "-n"], json: false)
        #expect(dry.status == 1 && dry.allMessages.contains("would fail"), "\(dry)")
        let real = try sb.cp(tree, server.url("tc"), options: ["-r"], json: false)
        #expect(real.status == 1, "\(real)")
        let fine = try sb.cp(tree, server.url("other"), options: ["-r", "-n"], json: false)
        #expect(fine.status == 0, "\(fine)")
    }

    @Test("ferry check: 0 same, 1 differs, 2 when it cannot check; ping fails with an expired token")
    func checkAndPingExit() throws {
        let sb = try Sandbox("cli-check")
        let root = try sb.dir("root")
        let tree = try sb.dir("local/t")
        try writeRandomFile(tree + "/a", size: 100)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        #expect(try sb.cp(tree, server.url("t"), options: ["-r"]).succeeded)
        let args = ["check", "--ca", sb.ca, "--token-file", sb.tokenFile, tree]
        #expect(try sb.ferry(args + [server.url("t")]).status == 0)
        try writeRandomFile(tree + "/b", size: 5)
        let differs = try sb.ferry(args + [server.url("t")])
        #expect(differs.status == 1 && differs.stdout.contains("missing"), "\(differs)")
        let port = try freeLoopbackPort()
        let unreachable = try sb.ferry(args + ["ferry://127.0.0.1:\(port)/t"])
        #expect(unreachable.status == 2, "an unreachable side: \(unreachable)")
        let expired = try sb.issueToken(scopes: ["rw:/"], ttl: "1h", extra: ["--backdate", "2h"], name: "expired.tok")
        let refused = try sb.ferry(["check", "--ca", sb.ca, "--token-file", expired, tree, server.url("t")])
        #expect(refused.status == 2, "an expired token: \(refused)")
        let ping = try sb.ferry(["ping", "--ca", sb.ca, "--token-file", expired, server.url("")])
        #expect(ping.status == 1 && ping.stderr.contains("expired"), "\(ping)")
        let goodPing = try sb.ferry(["ping", "--ca", sb.ca, "--token-file", sb.tokenFile, server.url("")])
        #expect(goodPing.status == 0, "\(goodPing)")
    }

    @Test("a pull's summary says received; with several sources, runs/ puts its content in DST, runs its directory")
    func receivedAndSeveralSources() throws {
        let sb = try Sandbox("cli-sources")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        try writeRandomFile(local + "/a.nc", size: 100)
        _ = try sb.dir("local/runs")
        try writeRandomFile(local + "/runs/r.txt", size: 50)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let merged = try sb.cp(local + "/a.nc", server.url("m/"), options: ["-r"])
        #expect(merged.succeeded)
        let many = try sb.ferry(["cp", "-r", "--ca", sb.ca, "--token-file", sb.tokenFile, local + "/a.nc", local + "/runs/", server.url("m/")])
        #expect(many.status == 0, "\(many)")
        #expect(filesIdentical(local + "/runs/r.txt", root + "/m/r.txt") && !exists(root + "/m/runs"), "runs/ did not put its content in DST")
        let named = try sb.ferry(["cp", "-r", "--ca", sb.ca, "--token-file", sb.tokenFile, local + "/a.nc", local + "/runs", server.url("n/")])
        #expect(named.status == 0 && filesIdentical(local + "/runs/r.txt", root + "/n/runs/r.txt"), "\(named)")
        let pull = try sb.cp(server.url("n/a.nc"), sb.file("pulled.nc"), json: false)
        #expect(pull.succeeded && (pull.stdout + pull.allMessages).contains("1 copied, 100 B received"), "\(pull)")
    }
}
