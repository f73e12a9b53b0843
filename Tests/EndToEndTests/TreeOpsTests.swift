// The command line of a daily rsync / rclone user (issue 16, items 1 and 2): filters applied on
// the sending side, --dry-run that predicts the real run, --delete confined to the destination,
// remote ls / stat / du through the transfer server, and `ferry check`.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Filters, dry runs, deletion, remote listings, check", .serialized)
struct TreeOpsTests {
    /// Every entry of a tree with its kind, size, mode and mtime: equal before and after means
    /// nothing was written.
    static func snapshot(_ root: String) -> [String] {
        walkTree(root).map { "\($0) \(meta(root + "/" + $0).map { "\($0)" } ?? "?")" }
    }

    /// The per-file lines of a `-v` run (sent, skipped, identical, failed, deleted), sorted.
    static func fileLines(_ r: CpResult) -> [String] {
        r.stdout.split(separator: "\n").map(String.init)
            .filter { ["sent ", "received ", "skipped ", "identical ", "failed ", "deleted "].contains(where: $0.hasPrefix) }
            .sorted()
    }

    @Test("--exclude / --include / --filter-from on push and pull, in the order given; an excluded file the server's account cannot read is never opened")
    func filters() throws {
        let (sb, root, u1, u2) = try IdentityTests.setUp("filters")
        let token = try sb.issueToken(user: "ferryu1", scopes: ["rw:/"], name: "u1.token")
        // u1's tree holds one file u1 cannot read (u2's, 0600): only an exclude lets a pull pass.
        let tree = try sb.dir("export/u1/tree")
        chown(tree, u1.0, u1.1)
        for name in ["a.dat", "b.tmp", "keep.tmp", "sub/c.dat", "sub/d.tmp", "cache/big.bin", "deep/cache/x"] {
            let p = tree + "/" + name
            try FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try writeRandomFile(p, size: 1000)
        }
        try writeRandomFile(tree + "/private.key", size: 100)
        chown(tree + "/private.key", u2.0, u2.1)
        chmod(tree + "/private.key", 0o600)
        let server = try FerryServer(sb, root: root, runAsRoot: false)
        defer { server.stop() }

        // Without the exclude the unreadable file fails the pull (it is opened).
        let plain = try sb.cp(server.url("u1/tree"), sb.file("plain"), options: ["-r"], tokenFile: token)
        #expect(!plain.succeeded && plain.allMessages.contains("private.key") && plain.allMessages.contains("Permission denied"), "\(plain)")

        // include before exclude: keep.tmp stays; a directory pattern and an anchored one.
        let rules = sb.file("rules")
        try writeFile(rules, Array("# generated data\n- cache/\n\n+ /sub/d.tmp\n- private.key\n".utf8))
        let pulled = try sb.cp(server.url("u1/tree"), sb.file("pulled"), options: ["-r", "--include", "keep.tmp", "--exclude", "*.tmp", "--filter-from", rules], tokenFile: token)
        #expect(pulled.succeeded, "\(pulled)")
        let got = walkTree(sb.file("pulled"))
        #expect(got == ["a.dat", "deep", "keep.tmp", "sub", "sub/c.dat"], "\(got)")
        // The order decides: exclude first, the include never matches.
        let reordered = try sb.cp(server.url("u1/tree"), sb.file("reordered"), options: ["-r", "--exclude", "*.tmp", "--include", "keep.tmp", "--filter-from", rules], tokenFile: token)
        #expect(reordered.succeeded && !exists(sb.file("reordered/keep.tmp")) && exists(sb.file("reordered/a.dat")), "\(reordered)")

        // Push: the same rules, applied by the client before anything is read or sent.
        let local = try sb.dir("localtree")
        for name in ["x.dat", "y.tmp", "cache/z", "sub/cache/w", "sub/v.dat"] {
            let p = local + "/" + name
            try FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try writeRandomFile(p, size: 10)
        }
        let pushed = try sb.cp(local, server.url("u1/pushed"), options: ["-r", "--exclude", "*.tmp", "--exclude", "/cache/"], tokenFile: token)
        #expect(pushed.succeeded, "\(pushed)")
        #expect(walkTree(root + "/u1/pushed") == ["sub", "sub/cache", "sub/cache/w", "sub/v.dat", "x.dat"], "\(walkTree(root + "/u1/pushed"))")

        // Bad rules are usage errors with their line.
        try writeFile(rules, Array("- ok\nP bad\n".utf8))
        let bad = try sb.cp(local, server.url("u1/bad"), options: ["-r", "--filter-from", rules], tokenFile: token, json: false)
        #expect(bad.status == 64 && bad.stderr.contains("rules:2"), "\(bad)")
        #expect(!exists(root + "/u1/bad"))
    }

    /// The trees of the dry-run tests: a source, and a destination that already holds part of
    /// it (same, changed by size, changed in place with size and mtime kept, extra entries).
    static func trees(_ src: String, _ dst: String) throws {
        for (name, size) in [("same.bin", 5000), ("grown.bin", 3000), ("inplace.bin", 4000), ("new.bin", 2000), ("sub/same2.bin", 100), ("sub/new2.bin", 100)] {
            let p = src + "/" + name
            try FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try writeRandomFile(p, size: size)
            try setMtime(p, seconds: 1_700_000_000)
        }
        for name in ["same.bin", "inplace.bin", "sub/same2.bin"] {
            let q = dst + "/" + name
            try FileManager.default.createDirectory(atPath: (q as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: src + "/" + name, toPath: q)
            try setMtime(q, seconds: 1_700_000_000)
        }
        try flipByte(dst + "/inplace.bin", at: 100)
        try writeRandomFile(dst + "/grown.bin", size: 10)
        try writeRandomFile(dst + "/extra.bin", size: 10)
        try writeRandomFile(try sbDir(dst + "/olddir/inner") + "/f", size: 10)
    }

    static func sbDir(_ p: String) throws -> String {
        try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }

    @Test("--dry-run writes nothing and prints exactly the file lines the real run then prints (push and pull, with --delete, with and without --checksum)")
    func dryRunPredicts() throws {
        let sb = try Sandbox("dryrun")
        let root = try sb.dir("root")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        for direction in ["push", "pull"] {
            for checksum in [false, true] {
                let tag = "\(direction)\(checksum ? "-sum" : "")"
                let src = direction == "push" ? try sb.dir("src-\(tag)") : try sb.dir("root/src-\(tag)")
                let dst = direction == "push" ? try sb.dir("root/dst-\(tag)") : try sb.dir("dst-\(tag)")
                try Self.trees(src, dst)
                let (from, to) = direction == "push" ? (src, server.url("dst-\(tag)")) : (server.url("src-\(tag)"), dst)
                let opts = ["-r", "-v", "--delete"] + (checksum ? ["--checksum"] : [])
                let before = Self.snapshot(dst)
                let dry = try sb.cp(from, to, options: opts + ["--dry-run"], json: false)
                #expect(dry.succeeded && dry.stderr.contains("dry run, nothing written"), "\(tag): \(dry)")
                #expect(Self.snapshot(dst) == before, "\(tag): the dry run changed the destination")
                let predicted = Self.fileLines(dry)
                let moved = direction == "push" ? "sent       " : "received   "
                let expected = ([moved + "grown.bin", moved + "new.bin", moved + "sub/new2.bin",
                                 checksum ? moved + "inplace.bin" : "skipped    inplace.bin (same size and mtime, not read)",
                                 checksum ? "identical  same.bin (compared by content)" : "skipped    same.bin (same size and mtime, not read)",
                                 checksum ? "identical  sub/same2.bin (compared by content)" : "skipped    sub/same2.bin (same size and mtime, not read)",
                                 "deleted    extra.bin", "deleted    olddir", "deleted    olddir/inner", "deleted    olddir/inner/f"]).sorted()
                #expect(predicted == expected, "\(tag): \(dry.stdout)")
                let real = try sb.cp(from, to, options: opts, json: false)
                #expect(real.succeeded, "\(tag): \(real)")
                #expect(Self.fileLines(real) == predicted, "\(tag): the real run did other than predicted:\n\(real.stdout)\nvs\n\(dry.stdout)")
                // After the real run the destination mirrors the source (but the in-place
                // change a plain run cannot see).
                let diff = treeDifferences(src, dst, checkMetadata: false)
                #expect(checksum ? diff.isEmpty : diff.count == 1 && diff[0].contains("inplace.bin"), "\(tag): \(diff)")
            }
        }
        // A destination that does not exist yet: everything would be sent, and it still does
        // not exist afterwards; one file into a directory URL keeps its name.
        let src = try sb.dir("fresh-src")
        try writeRandomFile(src + "/a", size: 10)
        try writeRandomFile(try sb.dir("fresh-src/b") + "/c", size: 20)
        for (from, to, made, moved) in [(src, server.url("fresh/new"), root + "/fresh", "sent "), (server.url("dst-push"), sb.file("fresh-local/x"), sb.file("fresh-local"), "received ")] {
            let dry = try sb.cp(from, to, options: ["-r", "-n", "-v"], json: false)
            #expect(dry.succeeded && !exists(made), "\(dry)")
            #expect(!Self.fileLines(dry).isEmpty && Self.fileLines(dry).allSatisfy { $0.hasPrefix(moved) }, "\(dry)")
        }
        let one = try sb.cp(src + "/a", server.url("dst-push/"), options: ["-n", "--json"])
        let plan = one.jsonLines.first { ($0["type"] as? String) == "dry_run" }
        #expect(one.succeeded && plan?["files_to_send"] as? Int == 1 && !exists(root + "/dst-push/a"), "\(one)")
        let real = try sb.cp(src + "/a", server.url("dst-push/"))
        #expect(real.succeeded && exists(root + "/dst-push/a"), "\(real)")
        let again = try sb.cp(src + "/a", server.url("dst-push/"), options: ["-n", "--json"])
        let plan2 = again.jsonLines.first { ($0["type"] as? String) == "dry_run" }
        #expect(plan2?["files_to_send"] as? Int == 0 && plan2?["files_unread"] as? Int == 1, "\(again)")
    }

    @Test("--delete removes only extraneous entries inside the destination: never through a symlink, never an excluded one, never for an empty or missing source, never after a failed copy")
    func deleteConfined() throws {
        let sb = try Sandbox("delete")
        let root = try sb.dir("root")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let src = try sb.dir("src")
        try writeRandomFile(src + "/keep.bin", size: 100)
        let dst = try sb.dir("root/dst")
        // Outside the destination, reached by a link inside it.
        let outside = try sb.dir("root/outside")
        try writeRandomFile(outside + "/precious", size: 10)
        symlink("../outside", dst + "/link-out")
        try writeRandomFile(dst + "/stale.bin", size: 10)
        try writeRandomFile(dst + "/notes.local", size: 10)

        // An empty source: refused before anything is written or deleted.
        let empty = try sb.dir("empty")
        let e = try sb.cp(empty, server.url("dst"), options: ["-r", "--delete"], json: false)
        #expect(e.status == 64 && e.stderr.contains("is empty"), "\(e)")
        // ... unless there is nothing there to delete: an empty mirror of an empty directory,
        // new or existing, succeeds (a cron job's sync of a sometimes-empty directory).
        _ = try sb.dir("root/emptymirror")
        for target in ["emptymirror", "newmirror"] {
            let ok = try sb.cp(empty, server.url(target), options: ["-r", "--delete"], json: false)
            #expect(ok.succeeded, "\(target): \(ok)")
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: root + "/" + target)) ?? ["?"]).isEmpty, "\(target)")
        }
        // A destination ending in '/' (rsync's "into"): refused with --delete, both ways and in
        // a dry run, before anything is read or deleted.
        for (from, to) in [(src, server.url("dst") + "/"), (server.url("dst"), dst + "/")] {
            for extra in [[], ["--dry-run"]] {
                let slash = try sb.cp(from, to, options: ["-r", "--delete"] + extra, json: false)
                #expect(slash.status == 64 && slash.stderr.contains("ends in '/'"), "\(to) \(extra): \(slash)")
            }
        }
        #expect(exists(dst + "/stale.bin") && exists(dst + "/notes.local") && !exists(dst + "/keep.bin"))
        // A missing source: an error, nothing deleted.
        let m = try sb.cp(sb.file("no-such-dir"), server.url("dst"), options: ["-r", "--delete"], json: false)
        #expect(!m.succeeded, "\(m)")
        #expect(exists(dst + "/stale.bin") && exists(dst + "/notes.local"))

        // Excluded at the destination too: protected.
        let r = try sb.cp(src, server.url("dst"), options: ["-r", "--delete", "--exclude", "*.local", "-v"], json: false)
        #expect(r.succeeded && r.stdout.contains("deleted    stale.bin") && r.stdout.contains("deleted    link-out") && r.stdout.contains("deleted 2 extraneous entries"), "\(r)")
        #expect(!exists(dst + "/stale.bin") && exists(dst + "/notes.local") && exists(dst + "/keep.bin"))
        #expect(exists(outside + "/precious") && meta(dst + "/link-out") == nil, "the link was removed, not what it points to")

        // Pull into a local directory: the same, locally.
        let local = try sb.dir("localdst")
        try writeRandomFile(local + "/old", size: 5)
        let p = try sb.cp(server.url("dst"), local, options: ["-r", "--delete"])
        #expect(p.succeeded && !exists(local + "/old") && exists(local + "/keep.bin") && exists(local + "/notes.local"), "\(p)")
        #expect(p.jsonLines.contains { ($0["type"] as? String) == "deleted" && ($0["entries"] as? Int) == 1 }, "\(p.jsonLines)")

        // A copy with a failed file deletes nothing.
        try writeRandomFile(local + "/old2", size: 5)
        _ = try sb.dir("localdst/keep.bin.dir")
        try writeRandomFile(src + "/keep.bin.dir", size: 5)  // a file where the destination holds a directory
        try writeRandomFile(root + "/dst/keep.bin.dir", size: 5)
        let failed = try sb.cp(server.url("dst"), local, options: ["-r", "--delete"])
        #expect(!failed.succeeded && exists(local + "/old2"), "\(failed)")
    }

    /// `ferry cp a b dir ferry://.../proj/`, as cp and rsync take several sources: each lands
    /// in DST under its own name, one transfer each; one that fails stops none of the others.
    @Test("several sources: each lands in DST/ under its own name (push and pull); a missing one fails the command and no other; DST without '/', two sources of one name, --delete: refused before anything moves")
    func severalSources() throws {
        let sb = try Sandbox("several")
        let root = try sb.dir("root")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let src = try sb.dir("src")
        try writeRandomFile(src + "/a.nc", size: 3 * E2E.MiB + 5)
        try writeRandomFile(src + "/b.nc", size: 100)
        try writeRandomFile(try sb.dir("src/runs/r1") + "/out.txt", size: 2000)
        // Sources before the options, as a shell glob puts them.
        let up = try sb.cp(src + "/b.nc", server.url("proj/"), options: [src + "/a.nc", src + "/runs", "-r"])
        #expect(up.succeeded, "\(up)")
        #expect(up.jsonLines.filter { $0["type"] as? String == "summary" }.count == 3, "one summary per source: \(up)")
        #expect(filesIdentical(src + "/a.nc", root + "/proj/a.nc") && filesIdentical(src + "/b.nc", root + "/proj/b.nc"))
        #expect(filesIdentical(src + "/runs/r1/out.txt", root + "/proj/runs/r1/out.txt"), "a directory lands under its name, not merged into DST")
        // Pulled back into a local directory.
        let back = try sb.dir("back")
        let down = try sb.cp(server.url("proj/a.nc"), back + "/", options: [server.url("proj/b.nc")])
        #expect(down.succeeded, "\(down)")
        #expect(filesIdentical(src + "/a.nc", back + "/a.nc") && filesIdentical(src + "/b.nc", back + "/b.nc"))
        // A missing source in the middle: the others land, the command fails and names it.
        let gap = try sb.cp(src + "/b.nc", server.url("gap/"), options: [src + "/a.nc", src + "/missing.nc"])
        #expect(gap.status == 1 && gap.allMessages.contains("missing.nc") && gap.stderr.contains("1 of 3 sources failed"), "\(gap)")
        #expect(filesIdentical(src + "/a.nc", root + "/gap/a.nc") && filesIdentical(src + "/b.nc", root + "/gap/b.nc"))
        // Ctrl-C during the first source stops the command: the sources after it are not started.
        try writeRandomFile(src + "/slow.bin", size: 8 * E2E.MiB)
        let slow = try sb.startCp(src + "/b.nc", server.url("stop/"), options: [src + "/slow.bin", "--bwlimit", "1M"])
        #expect(waitUntil(timeout: 20) { ((try? String(contentsOfFile: slow.stdoutPath, encoding: .utf8)) ?? "").range(of: #""bytes_done":[1-9]"#, options: .regularExpression) != nil })
        // ferry itself (under the harness's `timeout` wrapper, when there is one).
        let pid = slow.process.processIdentifier
        let child = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)).flatMap { Int32($0.split(separator: " ").first ?? "") } ?? pid
        kill(child, SIGINT)
        let stopped = sb.finish(slow, timeout: 30)
        #expect(stopped.status == 130, "\(stopped)")
        #expect(!exists(root + "/stop/b.nc"), "a source after the interrupt was copied")
        // Refused before anything moves (exit 64).
        let refusals: [(String, [String], String)] = [
            ("nodir", [src + "/a.nc"], "end it with '/'"),
            ("same/", [src + "/runs/../a.nc"], "would both land at"),
            ("del/", [src + "/runs", "-r", "--delete"], "--delete with several sources"),
        ]
        for (dst, extra, why) in refusals {
            let r = try sb.cp(src + "/b.nc", server.url(dst), options: [src + "/a.nc"] + extra)
            #expect(r.status == 64 && r.allMessages.contains(why), "\(dst): \(r)")
            #expect(!exists(root + "/" + dst.replacingOccurrences(of: "/", with: "")), "\(dst): something was made")
        }
        // A remote source, then a local one into a local directory (local to local): refused
        // before the remote one is pulled.
        let mixedDir = try sb.dir("mixed")
        let mixed = try sb.cp(src + "/b.nc", mixedDir + "/", options: [server.url("proj/a.nc")])
        #expect(mixed.status == 64 && mixed.allMessages.contains("one side must be a ferry:// URL"), "\(mixed)")
        #expect(!exists(mixedDir + "/a.nc"), "the remote source was pulled before the refusal")
    }

    @Test("a tree pushed or pulled to a new nested path: its missing parents are made 0755 less the process's umask, as mkdir -p (they were 0700)")
    func newParentsReadable() throws {
        let sb = try Sandbox("parents")
        let root = try sb.dir("root")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let src = try sb.dir("src")
        try writeRandomFile(src + "/a", size: 100)
        chmod(src, 0o750)
        let up = try sb.cp(src, server.url("new/deeper/tree"), options: ["-r"])
        #expect(up.succeeded, "\(up)")
        let um = umask(0)
        umask(um)
        for p in ["new", "new/deeper"] {
            #expect(meta(root + "/" + p)?.mode == UInt32(0o755 & ~um), "\(p): \(String(describing: meta(root + "/" + p)))")
        }
        #expect(meta(root + "/new/deeper/tree")?.mode == 0o750, "the tree's own directory keeps its source's mode")
        #expect(filesIdentical(src + "/a", root + "/new/deeper/tree/a"))
        // A pull into a new nested local path, by a user whose umask is 027: its new parents
        // are 0750, as mkdir -p would make them in that shell.
        let local = try sb.dir("local")
        let pull = runTool("/bin/sh", ["-c", "umask 027 && exec \"$0\" \"$@\"", E2E.ferryBinary, "cp", "-r", "--ca", sb.ca, "--token-file", sb.tokenFile,
                                       server.url("new/deeper/tree"), local + "/p1/p2/tree"], timeout: 60)
        #expect(pull.status == 0, "\(pull.output)")
        for p in ["p1", "p1/p2"] {
            #expect(meta(local + "/" + p)?.mode == 0o750, "\(p): \(String(describing: meta(local + "/" + p)))")
        }
        #expect(filesIdentical(src + "/a", local + "/p1/p2/tree/a"))
    }

    /// Linux names are bytes: "café" in NFC (é one code point) and in NFD (e and a combining
    /// accent) are two directories. Swift's String compares them as equal, and the receiver's
    /// directory cache keyed by String handed one's handle for the other's entries.
    @Test("two directories whose names differ only by Unicode normalisation (NFC, NFD) each get their own files, push and pull")
    func normalisationTwins() throws {
        let sb = try Sandbox("nfc-nfd")
        let root = try sb.dir("root")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let src = try sb.dir("src")
        let nfc = "caf\u{E9}", nfd = "cafe\u{301}"
        #expect(nfc == nfd && Array(nfc.utf8) != Array(nfd.utf8), "Swift calls them equal, their bytes differ")
        for (name, byte) in [(nfc, UInt8(1)), (nfd, UInt8(2))] {
            try writeFile(try sb.dir("src/" + name) + "/x", [UInt8](repeating: byte, count: 1000))
        }
        let up = try sb.cp(src, server.url("twins"), options: ["-r"])
        #expect(up.succeeded, "\(up)")
        let local = try sb.dir("back")
        let down = try sb.cp(server.url("twins"), local + "/twins", options: ["-r"])
        #expect(down.succeeded, "\(down)")
        for (name, byte) in [(nfc, UInt8(1)), (nfd, UInt8(2))] {
            for base in [root + "/twins/", local + "/twins/"] {
                let got = FileManager.default.contents(atPath: base + name + "/x").map { [UInt8]($0) }
                #expect(got == [UInt8](repeating: byte, count: 1000), "\(base)\(Array(name.utf8)): \(String(describing: got?.prefix(4)))")
            }
        }
    }

    /// A copy of a multi-chunk file interrupted, then its source shrunk to one chunk: the rerun
    /// succeeds and leaves no journal behind (a one-chunk file never read or removed it).
    @Test("no journal is left beside a file that shrank to one chunk after an interrupted copy")
    func shrunkFileLeavesNoJournal() throws {
        let sb = try Sandbox("shrunk")
        let root = try sb.dir("root")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let src = try sb.dir("src")
        try writeRandomFile(src + "/f.bin", size: 6 * E2E.MiB)
        let journal = root + "/out/.f.bin.ferry-journal"
        _ = try sb.dir("root/out")
        let p = try sb.startCp(src + "/f.bin", server.url("out/f.bin"), options: ["--chunk-size", "1M", "--bwlimit", "1M"])
        #expect(waitUntil(timeout: 20) { exists(journal) }, "a journal while the copy runs")
        p.kill9()
        _ = p.waitExit(timeout: 10)
        #expect(exists(journal) && !exists(root + "/out/f.bin"))
        try writeRandomFile(src + "/f.bin", size: 100_000)
        let again = try sb.cp(src + "/f.bin", server.url("out/f.bin"), options: ["--chunk-size", "1M", "-v"], json: false)
        #expect(again.succeeded, "\(again)")
        // -v names a single file as it lands (it said "."), and so does the dry run.
        #expect(again.stdout.contains("sent       f.bin"), "\(again)")
        let dry = try sb.cp(src + "/f.bin", server.url("out/f.bin"), options: ["-n"], json: false)
        #expect(dry.succeeded && dry.stdout.contains("skipped    f.bin (same size and mtime, not read)"), "\(dry)")
        #expect(filesIdentical(src + "/f.bin", root + "/out/f.bin"))
        #expect(!exists(journal), "the larger version's journal is gone")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: root + "/out")) ?? []
        #expect(left == ["f.bin"], "\(left)")
    }

    @Test("ferry check names exactly the differing, missing and extra files and exits 1; identical trees exit 0")
    func check() throws {
        let sb = try Sandbox("check")
        let root = try sb.dir("root")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let src = try sb.dir("src")
        for (name, size) in [("same", 3000), ("changed", 5 * E2E.MiB + 1), ("missing", 10), ("d/deep", 100)] {
            let p = src + "/" + name
            try FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try writeRandomFile(p, size: size)
        }
        let up = try sb.cp(src, server.url("copy"), options: ["-r"])
        #expect(up.succeeded, "\(up)")
        let ok = try sb.ferry(["check", "--ca", sb.ca, "--token-file", sb.tokenFile, src, server.url("copy")])
        #expect(ok.succeeded && ok.stderr.contains("4 identical, 0 differ, 0 missing, 0 extra"), "\(ok)")
        // One byte changed in place (size and mtime kept), one file gone, one extra.
        let m = meta(root + "/copy/changed")
        try flipByte(root + "/copy/changed", at: 4 * E2E.MiB + 3)
        _ = m
        unlink(root + "/copy/missing")
        try writeRandomFile(root + "/copy/d/extra", size: 1)
        let bad = try sb.ferry(["check", "--ca", sb.ca, "--token-file", sb.tokenFile, src, server.url("copy")])
        let lines = bad.stdout.split(separator: "\n").map(String.init).sorted()
        #expect(bad.status == 1 && lines == ["differs changed", "extra   d/extra", "missing missing"], "\(bad)")
        // The other way round, both remote-side names as the user gives them.
        let rev = try sb.ferry(["check", "--ca", sb.ca, "--token-file", sb.tokenFile, server.url("copy"), src, "--exclude", "changed"])
        #expect(rev.status == 1 && rev.stdout.split(separator: "\n").map(String.init).sorted() == ["extra   missing", "missing d/extra"], "\(rev)")
    }

    @Test("names and messages from the other side reach the terminal with their control characters escaped; the files keep their names")
    func hostileNames() throws {
        let sb = try Sandbox("hostile-names")
        let root = try sb.dir("root")
        // Another member of a shared project names files to attack whoever lists them: an OSC
        // that retitles the window, a clear-screen, a forged line, a right-to-left override.
        let names = ["evil\u{1B}]0;pwned\u{07}\u{1B}[2J.txt", "two\nsent       fake.bin", "\u{202E}txt.exe", "plain.txt"]
        let shared = try sb.dir("root/shared")
        for n in names { try writeRandomFile(shared + "/" + n, size: 100) }
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        func ferry(_ args: [String]) throws -> CpResult {
            try sb.ferry([args[0], "--ca", sb.ca, "--token-file", sb.tokenFile] + args.dropFirst(), timeout: 60)
        }
        func raw(_ r: CpResult) -> Bool {
            (r.stdout + r.stderr).unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x202E }
        }
        let ls = try ferry(["ls", server.url("shared")])
        let lines = ls.stdout.split(separator: "\n").map(String.init).sorted()
        #expect(ls.succeeded && !raw(ls) && lines == ["\\u202etxt.exe", "evil\\u001b]0;pwned\\u0007\\u001b[2J.txt", "plain.txt", "two\\u000asent       fake.bin"], "\(lines)")
        let long = try ferry(["ls", "-l", server.url("shared")])
        #expect(long.succeeded && !raw(long) && long.stdout.split(separator: "\n").count == 4, "\(long)")
        // --json keeps the exact name (JSON's own escapes).
        let json = try ferry(["ls", "--json", server.url("shared")])
        let paths = json.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }.compactMap { $0["path"] as? String }
        #expect(Set(paths) == Set(names) && !raw(json), "\(json)")
        // A pull with -v and its dry run: lines escaped, the files land under their real names.
        let dry = try sb.cp(server.url("shared"), sb.file("back"), options: ["-r", "-v", "-n"], json: false)
        #expect(dry.succeeded && !raw(dry) && Self.fileLines(dry).count == 4 && Self.fileLines(dry).allSatisfy { $0.hasPrefix("received   ") }, "\(dry)")
        let pull = try sb.cp(server.url("shared"), sb.file("back"), options: ["-r", "-v"], json: false)
        #expect(pull.succeeded && !raw(pull) && Self.fileLines(pull) == Self.fileLines(dry), "\(pull)")
        for n in names { #expect(filesIdentical(shared + "/" + n, sb.file("back/" + n)), "\(n)") }
        // A refusal quotes the path it was given: the server shows it with '?', and an error
        // of the client's own that names a path is escaped on its way out.
        let missing = try ferry(["ls", server.url("shared/no\u{1B}[31mpe")])
        #expect(!missing.succeeded && !raw(missing) && missing.stderr.contains("[31mpe"), "\(missing)")
        let local = try sb.cp(sb.file("no\u{1B}[31mpe"), server.url("x"), json: false)
        #expect(!local.succeeded && !raw(local) && local.stderr.contains("no\\u001b[31mpe"), "\(local)")
        #expect(server.isRunning)
    }

    @Test("remote ls pages through 100,000 entries; -l, -R, stat and du; a token scoped to one directory lists only that")
    func remoteListing() throws {
        let sb = try Sandbox("remote-ls")
        let root = try sb.dir("root")
        let big = try sb.dir("root/big")
        for i in 0..<100_000 {
            let fd = open(big + "/f\(i)", O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)
            if fd >= 0 { close(fd) }
        }
        try writeRandomFile(try sb.dir("root/small/sub") + "/x", size: 1234)
        // Names that sort between "sub" and "sub/x" when whole paths are compared bytewise.
        try writeRandomFile(root + "/small/sub-a", size: 1)
        try writeRandomFile(root + "/small/sub.txt", size: 1)
        try writeRandomFile(try sb.dir("root/secret") + "/s", size: 10)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        func ferry(_ args: [String], token: String? = nil) throws -> CpResult {
            try sb.ferry([args[0], "--ca", sb.ca, "--token-file", token ?? sb.tokenFile] + args.dropFirst(), timeout: 120)
        }
        let ls = try ferry(["ls", server.url("big")])
        let names = ls.stdout.split(separator: "\n")
        #expect(ls.succeeded && names.count == 100_000 && Set(names).count == 100_000 && names.contains("f99999"), "\(names.count) \(ls.stderr)")
        // Sorted bytewise, as `LC_ALL=C ls` prints them (the server sends them in its walk's order).
        #expect(names.elementsEqual(names.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }), "not sorted: \(names.prefix(5))")
        let long = try ferry(["ls", "-l", "-R", server.url("small")])
        let ll = long.stdout.split(separator: "\n").map(String.init)
        // A directory's entries right after it, as `ls -R` keeps them together.
        #expect(ll.map { String($0.split(separator: " ").last ?? "") } == ["sub/", "sub/x", "sub-a", "sub.txt"], "\(ll)")
        #expect(long.succeeded && ll.count == 4 && ll.contains { $0.hasPrefix("directory ") && $0.hasSuffix(" sub/") }
                && ll.contains { $0.hasPrefix("file      0644") && $0.contains(" 1234 ") && $0.hasSuffix(" sub/x") }, "\(long)")
        // The columns line up: the directory first (sorted), then its file; the mode at one place.
        #expect(ll.first?.hasSuffix(" sub/") == true && Set(ll.map { $0.firstRange(of: " 0")?.lowerBound.utf16Offset(in: $0) ?? -1 }) == [9], "\(ll)")
        let st = try ferry(["stat", server.url("small/sub/x")])
        #expect(st.succeeded && st.stdout.hasPrefix("file ") && st.stdout.contains(" 1234 "), "\(st)")
        let du = try ferry(["du", server.url("")])
        #expect(du.succeeded && du.stdout.contains("100004 files") && du.stdout.contains("5 directories"), "\(du)")
        // A token for /small alone: /small lists, /secret and the root are refused.
        let narrow = try sb.issueToken(scopes: ["read:/small"], name: "narrow.token")
        let mine = try ferry(["ls", server.url("small")], token: narrow)
        #expect(mine.succeeded && mine.stdout == "sub/\nsub-a\nsub.txt\n", "\(mine)")
        for path in ["secret", "", "small/../secret"] {
            let no = try ferry(["ls", server.url(path)], token: narrow)
            #expect(!no.succeeded && !no.stdout.contains("s\n"), "\(path): \(no)")
        }
        let nodu = try ferry(["du", server.url("secret")], token: narrow)
        #expect(!nodu.succeeded, "\(nodu)")
        #expect(server.isRunning)
    }
}
