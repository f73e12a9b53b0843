import Foundation
import Testing
import TestSupport

/// The API and the CLI never cut a listing silently, and refuse at submit what a job would
/// only fail on later (issue 14: "Listings are silently cut", "Validation at submit").
@Suite("Honest listings and submissions", .serialized)
struct ListingTests {
    @Test("find pages through 2,500 matches; --limit and ls say how to get the rest; an unknown state, protection or a missing source is a 400 with the reason")
    func pagesAndRefusals() throws {
        let c = try DaemonE2ETests.start("listing")
        defer { c.a.stop(); c.b.stop() }
        let sb = c.sb
        // `ferry COMMAND [SUBCOMMAND] --api ... ARGS`.
        func ferry(_ args: [String]) throws -> CpResult {
            let n = args[0] == "jobs" ? 2 : 1
            return try sb.ferry(Array(args.prefix(n)) + ["--api", c.api, "--token-file", sb.tokenFile] + args.dropFirst(n), timeout: 60)
        }
        // 2,500 files in two directories: more than two pages of find's 1,000.
        for d in ["a", "b"] {
            let dir = try sb.dir("hlrs/scratch/tree/\(d)")
            for i in 0..<1250 { try writeFile(dir + "/f\(String(format: "%04d", i)).dat", [UInt8(i & 0xFF)]) }
        }
        let reg = try ferry(["register", "/scratch/tree", "--dataset", "tree", "--readers", "*"])
        #expect(reg.succeeded, "\(reg)")

        // find: every match by default, each once, in order.
        let all = try ferry(["find", "gfs://hlrs/tree", "--name", "*.dat"])
        let lines = all.stdout.split(separator: "\n")
        #expect(all.succeeded && lines.count == 2500 && Set(lines).count == 2500, "find printed \(lines.count) lines: \(all.stderr)")
        #expect(!all.stderr.contains("more"), "\(all.stderr)")
        // --limit: the first ones and exactly how to go on; going on gives the rest.
        let first = try ferry(["find", "gfs://hlrs/tree", "--name", "*.dat", "--limit", "1200"])
        #expect(first.stdout.split(separator: "\n").count == 1200 && first.stderr.contains("more matches follow: --after 'a/f1199.dat'"), "\(first.stderr)")
        let rest = try ferry(["find", "gfs://hlrs/tree", "--name", "*.dat", "--after", "a/f1199.dat"])
        #expect(rest.stdout.split(separator: "\n").count == 1300 && rest.stdout.hasPrefix("a/f1200.dat\n"), "\(rest.stdout.prefix(200)) \(rest.stderr)")
        #expect(Set(first.stdout.split(separator: "\n") + rest.stdout.split(separator: "\n")).count == 2500)
        // ls: one page, and the hint; the JSON says more.
        let ls = try ferry(["ls", "gfs://hlrs/tree/a", "--limit", "3"])
        #expect(ls.stdout.split(separator: "\n").count == 3 && ls.stderr.contains("more entries follow: --after 'f0002.dat'"), "\(ls)")
        let lsLast = try ferry(["ls", "gfs://hlrs/tree/a", "--limit", "3", "--after", "f1246.dat", "--json"])
        #expect(lsLast.stdout.contains("\"more\":false") && !lsLast.stderr.contains("more entries"), "\(lsLast)")
        // Exactly a page left: no false "more".
        let exact = try ferry(["ls", "gfs://hlrs/tree/a", "--limit", "3", "--after", "f1246.dat"])
        #expect(exact.stdout.split(separator: "\n").count == 3 && !exact.stderr.contains("more"), "\(exact)")

        // Jobs: three, listed two at a time.
        try writeRandomFile(c.scratch + "/in.bin", size: 1000)
        for i in 0..<3 {
            let s = try ferry(["jobs", "submit", "/scratch/in.bin", "ferry://wuxi/incoming/j\(i).bin"])
            #expect(s.succeeded, "\(s)")
        }
        let page = try ferry(["jobs", "list", "--limit", "2"])
        #expect(page.stdout.split(separator: "\n").count == 2 && page.stderr.contains("more jobs follow: --after 2"), "\(page)")
        let next = try ferry(["jobs", "list", "--limit", "2", "--after", "2"])
        #expect(next.stdout.split(separator: "\n").count == 1 && !next.stderr.contains("more"), "\(next)")
        // Not a state: refused as bad usage (64), with the states there are; one bad state
        // among good ones too. The daemon refuses it as well (below).
        for states in ["done", "success,done", ""] {
            let done = try ferry(["jobs", "list", "--state", states])
            #expect(done.status == 64 && done.stderr.contains("'\(states.split(separator: ",").last ?? "")' is not a job state") && done.stderr.contains("success"), "\(done)")
        }
        // As problem details (RFC 9457), with a code for programs.
        let raw = TrustTests.http("GET", c.api + "/api/v1/transfers?state=done", token: sb.tokenFile)
        let problem = TrustTests.object(raw.body)
        #expect(raw.status == 400 && problem["status"] as? Int == 400 && problem["code"] as? String == "invalid_request"
                && (problem["detail"] as? String ?? "").contains("unknown state") && problem["title"] as? String == "Bad Request", "\(raw)")

        // Refused at submit, not failed later: a protection that does not exist, a source
        // that does not exist. No job is made for either.
        let bad = try ferry(["jobs", "submit", "--protection", "secret", "/scratch/in.bin", "ferry://wuxi/incoming/x.bin"])
        #expect(!bad.succeeded && bad.stderr.contains("secret"), "\(bad)")
        let missing = try ferry(["jobs", "submit", "/scratch/no-such-file", "ferry://wuxi/incoming/y.bin"])
        #expect(!missing.succeeded && missing.stderr.contains("does not exist"), "\(missing)")
        // Both sides here, or both at peers: refused at submit too (the engine would refuse it
        // when the job ran).
        let inside = try ferry(["jobs", "submit", "/scratch/in.bin", "/scratch/copy.bin"])
        #expect(!inside.succeeded && inside.stderr.contains("one side is ferry://PEER/PATH"), "\(inside)")
        let between = try ferry(["jobs", "submit", "ferry://wuxi/archive/a", "ferry://wuxi/incoming/b"])
        #expect(!between.succeeded && between.stderr.contains("source center's daemon"), "\(between)")
        let count = try ferry(["jobs", "list", "--json"])
        #expect((DaemonE2ETests.lastJSON(count)["transfers"] as? [Any])?.count == 3, "\(count)")

        // A cancelled job says so (the platform's states have no "cancelled": it is failed,
        // marked cancelled), and its cut transfer is not held against the link.
        try writeRandomFile(c.scratch + "/slow.bin", size: 24 * E2E.MiB)
        let slow = try ferry(["jobs", "submit", "--bwlimit", "2M", "/scratch/slow.bin", "ferry://wuxi/incoming/slow.bin", "--json"])
        let slowID = DaemonE2ETests.lastJSON(slow)["id"] as? Int ?? 0
        let (_, running) = DaemonE2ETests.waitForState(c, slowID, "running", timeout: 60)
        #expect(running["state"] as? String == "running", "\(running)")
        usleep(1_500_000)
        let cancel = try ferry(["jobs", "cancel", String(slowID)])
        #expect(cancel.succeeded && cancel.stdout.contains("failed (cancelled)"), "\(cancel)")
        let shown = try ferry(["jobs", "show", String(slowID), "--json"])
        let o = DaemonE2ETests.lastJSON(shown)
        #expect(o["state"] as? String == "failed" && o["cancelled"] as? Bool == true && (o["error"] as? String ?? "").hasPrefix("cancelled by"), "\(o)")
        usleep(3_000_000)  // the runner notices the lost lease and ends the transfer
        let health = DaemonE2ETests.httpGet(c.api + "/api/v1/health")
        let wuxi = ((try? JSONSerialization.jsonObject(with: Data(health.utf8)) as? [String: Any])?["peers"] as? [String: Any])?["wuxi"] as? [String: Any]
        #expect(wuxi?["errors"] as? Int == 0, "the cancellation counted as a link error: \(health)")
    }
}
