// Global Files through a daemon: register a directory of center hlrs as a dataset, then list,
// stat, find and du it with the `ferry` commands (the daemon's catalog API), copy from it with a
// gfs:// source; re-register after
// a change; a private dataset stays invisible to another user. Federation between centers:
// FederationTests.swift.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Global Files")
struct GlobalFilesE2ETests {
    func run(_ c: DaemonE2ETests.Centers, _ args: [String], token: String? = nil) throws -> CpResult {
        try c.sb.ferry([args[0], "--api", c.api, "--token-file", token ?? c.sb.tokenFile] + args.dropFirst(), timeout: 60)
    }

    @Test("register a dataset, list it a page at a time, stat, find and du; re-register after a change; private datasets stay hidden")
    func registerAndBrowse() throws {
        let c = try DaemonE2ETests.start("gfs")
        defer { c.a.stop(); c.b.stop() }
        let root = try c.sb.dir("hlrs/scratch/zinc")
        for t in ["H20 P100", "H21 P200", "H22 Müller"] {
            try c.sb.dir("hlrs/scratch/zinc/\(t)")
            for i in 0..<3 { try writeFile(root + "/\(t)/part \(i).smi", Array(String(repeating: "CCO\tZINC\(i)\n", count: 100 * (i + 1)).utf8)) }
        }
        try writeFile(root + "/README", Array("tranches by heavy atoms and logP\n".utf8))
        let reg = try run(c, ["register", "/scratch/zinc", "--dataset", "zinc22@2024", "--readers", "*", "--license", "CC-BY"])
        #expect(reg.status == 0 && reg.stdout.contains("10 files") && reg.stdout.contains("13 added"), "\(reg)")
        let ds = try run(c, ["datasets"])
        #expect(ds.stdout.contains("gfs://hlrs/zinc22@2024"), "\(ds)")
        // Pages of 2 entries (the top: 3 directories and README), followed to the end: every entry once, in order.
        let ls = try run(c, ["ls", "--all", "--limit", "2", "gfs://hlrs/zinc22@2024"])
        #expect(ls.stdout.split(separator: "\n") == ["H20 P100/", "H21 P200/", "H22 Müller/", "README"], "\(ls)")
        let sub = try run(c, ["ls", "-l", "gfs://hlrs/zinc22@2024/H22 Müller"])
        #expect(sub.stdout.contains("part 2.smi") && sub.stdout.contains("f 0644"), "\(sub)")
        let st = try run(c, ["stat", "--json", "gfs://hlrs/zinc22@2024/H20 P100/part 2.smi"])
        #expect(st.status == 0 && st.stdout.contains("\"size\":3000") && st.stdout.contains("\"state\":\"complete\"") && st.stdout.contains("\"center\":\"hlrs\""), "\(st)")
        let find = try run(c, ["find", "--name", "part 2*", "--size", "+2K", "gfs://hlrs/zinc22@2024"])
        #expect(find.stdout.split(separator: "\n").sorted() == ["H20 P100/part 2.smi", "H21 P200/part 2.smi", "H22 Müller/part 2.smi"], "\(find)")
        let du = try run(c, ["du", "--json", "gfs://hlrs/zinc22@2024"])
        #expect(du.stdout.contains("\"files\":10") && du.stdout.contains("\"bytes\":18033"), "\(du)")
        // A gfs:// path as the source of `ferry cp`: read from the dataset's replica at hlrs.
        let laptop = try c.sb.dir("laptop")
        let getDir = try c.sb.ferry(["cp", "-r", "--api", c.api, "--ca", c.sb.ca, "--token-file", c.sb.tokenFile,
                                     "gfs://hlrs/zinc22@2024/H22 Müller", laptop + "/H22"], timeout: 60)
        #expect(getDir.status == 0, "\(getDir)")
        #expect(treeDifferences(root + "/H22 Müller", laptop + "/H22").isEmpty)
        let getFile = try c.sb.ferry(["cp", "--api", c.api, "--ca", c.sb.ca, "--token-file", c.sb.tokenFile,
                                      "gfs://hlrs/zinc22@2024/README", laptop + "/README"], timeout: 60)
        #expect(getFile.status == 0 && filesIdentical(root + "/README", laptop + "/README"), "\(getFile)")
        let noDir = try c.sb.ferry(["cp", "--api", c.api, "--ca", c.sb.ca, "--token-file", c.sb.tokenFile,
                                    "gfs://hlrs/zinc22@2024/H20 P100", laptop + "/x"], timeout: 60)
        #expect(noDir.status == 64 && noDir.stderr.contains("give -r"), "\(noDir)")
        // Among several sources, the directory is refused before the file before it moves.
        let multi = try c.sb.dir("laptop/multi")
        let noDirs = try c.sb.ferry(["cp", "--api", c.api, "--ca", c.sb.ca, "--token-file", c.sb.tokenFile,
                                     "gfs://hlrs/zinc22@2024/README", "gfs://hlrs/zinc22@2024/H20 P100", multi + "/"], timeout: 60)
        #expect(noDirs.status == 64 && noDirs.stderr.contains("H20 P100 is a directory: give -r"), "\(noDirs)")
        #expect(access(multi + "/README", F_OK) != 0, "the file before the directory was copied")
        // A source the catalog does not have fails alone: the one after it is copied.
        let oneMissing = try c.sb.ferry(["cp", "--api", c.api, "--ca", c.sb.ca, "--token-file", c.sb.tokenFile,
                                         "gfs://hlrs/zinc22@2024/nope.smi", "gfs://hlrs/zinc22@2024/README", multi + "/"], timeout: 60)
        #expect(oneMissing.status == 1 && oneMissing.stderr.contains("nope.smi") && oneMissing.stderr.contains("1 of 2 sources failed"), "\(oneMissing)")
        #expect(filesIdentical(root + "/README", multi + "/README"), "the source after the missing one was not copied")
        // One file changed, one added, one removed: exactly those are written (and the two
        // directories whose mtimes moved with the addition and the removal).
        try writeFile(root + "/README", Array("changed\n".utf8))
        try writeFile(root + "/H20 P100/new.smi", Array("C\n".utf8))
        unlink(root + "/H21 P200/part 0.smi")
        let again = try run(c, ["register", "/scratch/zinc", "--dataset", "zinc22@2024"])
        #expect(again.stdout.contains("10 files") && again.stdout.contains("1 added, 3 changed, 1 removed, 9 unchanged"), "\(again)")
        // A private dataset: its owner sees it, another user does not (not listed, not found).
        try c.sb.dir("hlrs/scratch/mine")
        try writeFile(c.scratch + "/mine/secret.txt", Array("x\n".utf8))
        #expect(try run(c, ["register", "/scratch/mine", "--dataset", "alice/private"]).status == 0)
        let bob = try c.sb.issueToken(user: "bob", scopes: ["read:/scratch/bob"], name: "bob.tok")
        let bobSees = try run(c, ["datasets"], token: bob)
        #expect(bobSees.stdout.contains("zinc22") && !bobSees.stdout.contains("alice/private"), "\(bobSees)")
        let bobLs = try run(c, ["ls", "gfs://hlrs/alice/private"], token: bob)
        #expect(bobLs.status == 1 && bobLs.stderr.contains("no dataset"), "\(bobLs)")
        #expect(try run(c, ["ls", "gfs://hlrs/alice/private"]).stdout.contains("secret.txt"))
        // Registering outside one's token scopes is refused.
        let refused = try run(c, ["register", "/scratch/zinc", "--dataset", "stolen"], token: bob)
        #expect(refused.status == 1 && refused.stderr.contains("does not allow reading"), "\(refused)")
    }

    /// A search no index serves, on a daemon whose requests read at most 100 rows
    /// (`catalog_scan_rows`): the API's pages come back short or empty with `more`, and
    /// `ferry find` follows them to every match, in order.
    @Test("a search read in bounded requests: short and empty pages say more, and ferry find prints every match in order")
    func boundedSearch() throws {
        let c = try DaemonE2ETests.start("gfs-scan", hlrsDaemon: "catalog_scan_rows = 100")
        defer { c.a.stop(); c.b.stop() }
        let root = try c.sb.dir("hlrs/scratch/lib")
        for d in 0..<4 {
            try c.sb.dir("hlrs/scratch/lib/T\(d)")
            for i in 0..<250 { try writeFile(root + "/T\(d)/m\(String(format: "%04d", i)).smi", [UInt8(i & 0xFF)]) }
        }
        #expect(try run(c, ["register", "/scratch/lib", "--dataset", "lib", "--readers", "*"]).status == 0)
        let want = (0..<4).flatMap { d in [77, 177].map { "T\(d)/m\(String(format: "%04d", $0)).smi" } }
        let all = try run(c, ["find", "--name", "*77.smi", "gfs://hlrs/lib"])
        #expect(all.status == 0 && all.stdout.split(separator: "\n").map(String.init) == want, "\(all)")
        // The API's pages as `--json` prints them (one object a page; the empty ones left
        // out): the first read T0..T3 and T0/m0000..m0095 (100 rows), found m0077, and says
        // more, after the last row it read. 1,004 rows: eleven requests, some found nothing.
        let json = try run(c, ["find", "--json", "--name", "*77.smi", "gfs://hlrs/lib"])
        let pages = json.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let first = try #require(pages.first)
        #expect((first["entries"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["m0077.smi"], "\(json)")
        #expect(first["more"] as? Bool == true && first["next_after"] as? String == "T0/m0095.smi", "\(first)")
        #expect(pages.dropLast().allSatisfy { $0["more"] as? Bool == true } && pages.last?["more"] as? Bool == false, "\(json)")
        #expect(pages.count < 11 && pages.flatMap { ($0["entries"] as? [[String: Any]]) ?? [] }.count == want.count, "\(json)")
    }
}
