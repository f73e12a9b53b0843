import Foundation
import Glibc
import Storage
import Testing
import TestSupport
import Transfer
@testable import GlobalFS

/// The catalog on both storage engines (SQLite; a real PostgreSQL server), against real trees.
@Suite("Global Files catalog")
struct CatalogTests {
    static let nfc = "caf\u{E9}"
    static let nfd = "cafe\u{301}"
    static let deep = (1...100).map { "d\($0)" }.joined(separator: "/")

    /// Names with spaces, UTF-8 (and one name in two normal forms: two files), symlinks (one
    /// dangling), empty directories, a FIFO (skipped), and a tree 100 levels deep.
    static func sampleTree() throws -> Tree {
        let t = try Tree()
        try t.file("a.txt", size: 10)
        try t.file("b.bin", size: 1000, mtime: 1_900_000_000)
        try t.file("with space.txt", size: 5)
        try t.file("ünïcödé/日本語 ファイル.txt", size: 42)
        try t.file(nfc, size: 1)
        try t.file(nfd, size: 2)
        try t.file("sub/x.dat", size: 100)
        try t.file("sub/y.dat", size: 200)
        try t.file("sub/nested/z.smi", size: 300)
        try t.dir("sub/emptier")
        try t.dir("empty")
        try t.symlink("link", to: "a.txt")
        try t.symlink("dangling", to: "nowhere/at all")
        try t.file(deep + "/leaf.txt", size: 3)
        t.fifo("pipe")
        return t
    }

    /// Search that scales (issue 21): `find` takes its candidates from the name index (a
    /// glob's literal start), the size or the date index when few rows fall in their range,
    /// else reads the rows in key order. Whichever way, the answer is what `fnmatch` and the
    /// bounds say, in key order, and pages join up to it.
    @Test("find by an index gives what a scan gives: literal starts at the edges of their range, SQL wildcards as text, size and date bounds, pages; many candidates are scanned", arguments: Backend.allCases)
    func searchByIndex(_ backend: Backend) throws {
        let t = try Tree()
        for d in 0..<3 {
            for i in 0..<300 {
                try t.file("T\(d)/T\(d).\(String(format: "%05d", i)).smi", size: (i * 37) % 500, mtime: 1_700_000_000 + i * 10 + d)
            }
        }
        // Names at the edges of a literal start's range (its successor skips the surrogates
        // and carries past U+10FFFF), and SQL's wildcards as plain text.
        let odd = ["ab", "ab\u{10FFFF}", "ab\u{10FFFF}z", "ac", "a\u{D7FF}x", "a\u{E000}", "50%_off", "50%", "50x", "x*y", "xyz", "日本語.txt"]
        for n in odd { try t.file("odd/" + n, size: 1, mtime: 1_600_000_000) }
        let db = try openDatabase(try backend.newDatabase())
        let cat = try Catalog(db: db, indexes: [.size, .mtime])
        #expect(cat.searchIndexes.isSuperset(of: ["files_name", "files_size", "files_mtime"]))
        let r = try cat.register(root: t.root, dataset: "lib", owner: "alice", center: "c1", readers: ["*"], now: 1000)
        let me = Viewer(user: "bob")
        let all = try cat.find(dataset: r.dataset, limit: 100_000, as: me)
        #expect(all.count == 900 + odd.count + 4)
        #expect(zip(all, all.dropFirst()).allSatisfy { a, b in
            a.dir == b.dir ? a.name.utf8.lexicographicallyPrecedes(b.name.utf8) : a.dir.utf8.lexicographicallyPrecedes(b.dir.utf8)
        })

        struct Q { var glob: String?; var min: Int64?; var max: Int64?; var newer: Int64?; var by: String }
        let base: Int64 = 1_700_000_000
        let queries = [
            Q(glob: "T1.0012*", by: "name"), Q(glob: "T1.00123.smi", by: "name"), Q(glob: "*.smi", by: "scan"),
            Q(glob: "ab*", by: "name"), Q(glob: "ab\u{10FFFF}*", by: "name"), Q(glob: "a\u{D7FF}*", by: "name"),
            Q(glob: "50%*", by: "name"), Q(glob: "50_*", by: "name"), Q(glob: "x\\*y", by: "name"), Q(glob: "x[y]*", by: "name"),
            Q(glob: "日本*", by: "name"), Q(glob: "[ab]*", by: "scan"), Q(glob: "T?.0001*", by: "name"),
            Q(min: 490, by: "size"), Q(min: 100, max: 101, by: "size"), Q(newer: (base + 2_975) * 1_000_000_000, by: "mtime"),
            Q(glob: "T2*", newer: (base + 2_950) * 1_000_000_000, by: "mtime"), Q(glob: "T2.002*", min: 0, by: "name"),
        ]
        for q in queries {
            let want: [Entry] = all.filter { (e: Entry) -> Bool in
                if let g = q.glob, fnmatch(g, e.name, 0) != 0 { return false }
                if let m = q.min, e.size < m { return false }
                if let m = q.max, e.size > m { return false }
                if let n = q.newer, e.mtimeNs <= n { return false }
                return true
            }
            func run(limit: Int, after: EntryKey? = nil) throws -> [Entry] {
                try cat.find(dataset: r.dataset, nameGlob: q.glob, minSize: q.min, maxSize: q.max, newerThan: q.newer, after: after, limit: limit, as: me)
            }
            cat.indexedCandidates = -1  // every index refused: a scan in key order
            let scanned = try run(limit: 100_000)
            cat.indexedCandidates = 20_000
            let before = cat.searchCounts()
            let got = try run(limit: 100_000)
            #expect(cat.searchCounts()[q.by, default: 0] == before[q.by, default: 0] + 1, "\(q.glob ?? "") \(q.min ?? 0) \(q.newer ?? 0): not by \(q.by)")
            #expect(got.map { $0.path } == want.map { $0.path }, "\(q.glob ?? "") min \(q.min ?? 0) newer \(q.newer ?? 0)")
            #expect(scanned.map { $0.path } == want.map { $0.path })
            var paged: [Entry] = []
            for _ in 0..<200 {
                let page = try run(limit: 7, after: paged.last.map { EntryKey(dataset: r.dataset, dir: $0.dir, name: $0.name) })
                paged += page
                if page.count < 7 { break }
            }
            #expect(paged.map { $0.path } == want.map { $0.path })
        }
        #expect(try cat.find(dataset: r.dataset, nameGlob: "T1.0012*", as: me).count == 10)

        // Over the bound: a literal start that 301 names share is read in key order.
        cat.indexedCandidates = 50
        let scans = cat.searchCounts()["scan", default: 0]
        #expect(try cat.find(dataset: r.dataset, nameGlob: "T1*", as: me).count == 301)  // the directory T1 and its files
        #expect(cat.searchCounts()["scan", default: 0] == scans + 1)

        // A search no index serves, at a budget of 100 rows a page: on SQLite short pages
        // (empty ones too) that say where to go on, and join up to the whole answer; on
        // PostgreSQL (no budget: parallel workers) one page.
        cat.scanBudget = 100
        let last = all.filter { $0.name.hasSuffix("00299.smi") }
        #expect(last.count == 3)
        var joined: [Entry] = []
        var cursor: EntryKey?
        var pages = 0, empty = 0
        for _ in 0..<1000 {
            let page = try cat.findPage(dataset: r.dataset, nameGlob: "*00299.smi", after: cursor, limit: 1000, as: me)
            pages += 1
            if page.entries.isEmpty { empty += 1 }
            joined += page.entries
            guard let resume = page.resume else { break }
            #expect(cursor.map { c in c.dir < resume.dir || (c.dir == resume.dir && c.name < resume.name) } ?? true)  // always forward
            cursor = resume
        }
        #expect(joined.map { $0.path } == last.map { $0.path })
        if backend == .sqlite {
            #expect(pages == (all.count + 99) / 100 && empty > 0)
        } else {
            #expect(pages == 1)
        }
        #expect(try cat.find(dataset: r.dataset, nameGlob: "*00299.smi", as: me).map { $0.path } == last.map { $0.path })
        cat.scanBudget = 2_000_000

        // The operator takes the size and date indexes away: they are dropped, and find
        // gives the same answers without them. A tool opening the catalog leaves them be.
        let plain = try Catalog(db: db, indexes: [])
        #expect(plain.searchIndexes.contains("files_name") && !plain.searchIndexes.contains("files_size") && !plain.searchIndexes.contains("files_mtime"))
        #expect(try plain.find(dataset: r.dataset, minSize: 490, as: me).count == all.filter { $0.size >= 490 }.count)
        #expect(plain.searchCounts() == ["scan": 1])
        _ = try Catalog(db: db, indexes: [.mtime])
        #expect(try Catalog(db: db).searchIndexes.contains("files_mtime"))
        #expect(!(try Catalog(db: db).searchIndexes.contains("files_size")))
    }

    @Test("register a tree; list with paging, stat, find by glob, size and mtime, du, resolve", arguments: Backend.allCases)
    func registerAndQuery(_ backend: Backend) throws {
        let t = try CatalogTests.sampleTree()
        let spec = try backend.newDatabase()
        let cat = try Catalog(database: spec)
        let s = try cat.register(root: t.root, dataset: "datasets/zinc22", owner: "alice", center: "c1", readers: ["*"], now: 1000)
        let disk = t.snapshot()
        #expect(s.added == disk.count && s.changed == 0 && s.removed == 0 && s.unchanged == 0)
        #expect(s.skipped == 1 && s.unreadable == 0)
        #expect(s.files == 10 && s.bytes == 10 + 1000 + 5 + 42 + 1 + 2 + 100 + 200 + 300 + 3)
        #expect(try catalogSnapshot(cat, s.dataset) == disk)
        let me = Viewer(user: "bob")

        // Listing: byte order, pages of 3 join up to the whole directory.
        let top = try cat.list(dataset: s.dataset, as: me)
        #expect(top.map(\.name) == top.map(\.name).sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) })
        #expect(top.count == disk.filter { !$0.path.contains(UInt8(ascii: "/")) }.count)
        var paged: [Entry] = []
        var after: String?
        for _ in 0..<100 {
            let page = try cat.list(dataset: s.dataset, after: after, limit: 3, as: me)
            if page.isEmpty { break }
            #expect(page.count <= 3)
            paged += page
            after = page.last!.name
        }
        #expect(paged == top)
        #expect(try cat.list(dataset: s.dataset, dir: "empty", as: me).isEmpty)
        #expect(try cat.list(dataset: s.dataset, dir: "/sub/", as: me).map(\.name) == ["emptier", "nested", "x.dat", "y.dat"])
        #expect(try cat.list(dataset: s.dataset, dir: "sub/x.dat", as: me).map(\.name) == ["x.dat"])
        #expect(throws: CatalogError.self) { try cat.list(dataset: s.dataset, dir: "nothing", as: me) }
        #expect(try cat.list(dataset: s.dataset, dir: CatalogTests.deep, as: me).map(\.name) == ["leaf.txt"])

        // stat
        let z = try #require(try cat.stat(dataset: s.dataset, path: "sub/nested/z.smi", as: me))
        #expect(z.kind == .file && z.size == 300 && z.dir == "sub/nested" && z.digest == nil && z.mode == 0o644)
        #expect(try cat.stat(dataset: s.dataset, path: "link", as: me)?.target == "a.txt")
        #expect(try cat.stat(dataset: s.dataset, path: "dangling", as: me)?.kind == .symlink)
        #expect(try cat.stat(dataset: s.dataset, path: "ünïcödé/日本語 ファイル.txt", as: me)?.size == 42)
        #expect(try cat.stat(dataset: s.dataset, path: CatalogTests.nfc, as: me)?.size == 1)
        #expect(try cat.stat(dataset: s.dataset, path: CatalogTests.nfd, as: me)?.size == 2)
        #expect(try cat.stat(dataset: s.dataset, path: CatalogTests.deep + "/leaf.txt", as: me)?.size == 3)
        #expect(try cat.stat(dataset: s.dataset, path: "pipe", as: me) == nil)
        #expect(try cat.stat(dataset: s.dataset, path: "", as: me)?.kind == .directory)
        #expect(throws: CatalogError.self) { try cat.stat(dataset: s.dataset, path: "sub/../a.txt", as: me) }

        // find
        func names(_ e: [Entry]) -> [String] { e.map(\.path) }
        #expect(names(try cat.find(nameGlob: "*.dat", as: me)) == ["sub/x.dat", "sub/y.dat"])
        #expect(names(try cat.find(dataset: s.dataset, nameGlob: "[xy].dat", as: me)) == ["sub/x.dat", "sub/y.dat"])
        #expect(names(try cat.find(nameGlob: "[!x].dat", as: me)) == ["sub/y.dat"])
        #expect(names(try cat.find(nameGlob: "?.txt", as: me)) == ["a.txt"])
        #expect(names(try cat.find(nameGlob: "with *", as: me)) == ["with space.txt"])
        #expect(names(try cat.find(nameGlob: "*ファイル*", as: me)) == ["ünïcödé/日本語 ファイル.txt"])
        #expect(names(try cat.find(under: "sub", nameGlob: "*.smi", as: me)) == ["sub/nested/z.smi"])
        #expect(names(try cat.find(under: "sub/nested", as: me)) == ["sub/nested/z.smi"])
        #expect(try cat.find(under: "su", as: me).isEmpty)  // a prefix of a name is not a directory
        #expect(names(try cat.find(minSize: 150, kind: .file, as: me)) == ["b.bin", "sub/nested/z.smi", "sub/y.dat"].sorted { a, b in
            CatalogTests.findOrder(a, b) })
        #expect(names(try cat.find(minSize: 100, maxSize: 200, as: me)) == ["sub/x.dat", "sub/y.dat"])
        #expect(names(try cat.find(newerThan: 1_800_000_000 * 1_000_000_000, as: me)) == ["b.bin"])
        #expect(try cat.find(nameGlob: "*", kind: .directory, as: me).count == 105)  // ünïcödé sub nested emptier empty d1...d100
        #expect(try cat.find(limit: 7, as: me).count == 7)
        // A glob with the characters SQL patterns treat specially.
        try t.file("odd_%name[1].txt", size: 1)
        try cat.register(root: t.root, dataset: "datasets/zinc22", owner: "alice", center: "c1", now: 2000)
        #expect(names(try cat.find(nameGlob: "odd_%*", as: me)) == ["odd_%name[1].txt"])
        #expect(names(try cat.find(nameGlob: "odd?%name\\[1].txt", as: me)) == ["odd_%name[1].txt"])
        #expect(try cat.find(nameGlob: "odd%", as: me).isEmpty)

        // du
        let all = try cat.du(dataset: s.dataset, as: me)
        #expect(all.files == 11 && all.bytes == s.bytes + 1 && all.directories == 105)
        #expect(try cat.du(dataset: s.dataset, under: "sub", as: me) == DiskUsage(files: 3, bytes: 600, directories: 2))
        #expect(try cat.du(dataset: s.dataset, under: "b.bin", as: me) == DiskUsage(files: 1, bytes: 1000, directories: 0))

        // gfs:// resolution and the replica
        let r = try #require(try cat.resolve(try GFSPath("gfs://c1/datasets/zinc22/sub/x.dat"), as: me))
        #expect(r.dataset.id == s.dataset && r.path == "sub/x.dat")
        #expect(try cat.resolve(try GFSPath("gfs://c2/datasets/zinc22/sub/x.dat"), as: me) == nil)
        let reps = try cat.replicas(dataset: s.dataset, as: me)
        #expect(reps.count == 1 && reps[0].center == "c1" && reps[0].state == .complete && reps[0].verifiedAt == 2000)
        #expect(reps[0].files == 11 && reps[0].path == URL(fileURLWithPath: t.root).resolvingSymlinksInPath().path)
        let d = try #require(try cat.datasets(visibleTo: me).first)
        #expect(d.name == "datasets/zinc22" && d.owner == "alice" && d.fileCount == 11 && d.root != nil)

        // The API's one-read forms (for a dataset already resolved): the same pages as list,
        // a file alone and marked, a missing path refused unless a cursor says it was there.
        func listing(_ p: String, after: String? = nil, limit: Int = 1000) throws -> ([String], Bool) {
            let l = try cat.listing(of: d, path: p, after: after, limit: limit)
            return (l.entries.map(\.name), l.isFile)
        }
        let now = try cat.list(dataset: s.dataset, as: me).map(\.name)  // top and the odd name
        #expect(try listing("").0 == now && now.count == top.count + 1)
        #expect(try listing("", after: now[1], limit: 2).0 == Array(now[2..<4]))
        #expect(try listing("/sub/") == (["emptier", "nested", "x.dat", "y.dat"], false))
        #expect(try listing("sub/x.dat") == (["x.dat"], true))
        #expect(try listing("sub/x.dat", after: "x.dat") == (["x.dat"], true))
        #expect(try listing("link") == (["link"], true))
        #expect(try listing("empty") == ([], false))
        #expect(try listing("sub/emptier", after: "zzz") == ([], false))
        #expect(throws: CatalogError.self) { try cat.listing(of: d, path: "nothing", after: nil, limit: 10) }
        #expect(try listing("nothing", after: "a") == ([], false))
        #expect(throws: CatalogError.self) { try cat.listing(of: d, path: "sub/../..", after: nil, limit: 10) }
        let x = try cat.details(of: d, path: "sub/x.dat")
        #expect(x.entry?.size == 100 && x.replicas == reps)
        #expect(try cat.details(of: d, path: "").entry?.kind == .directory)
        #expect(try cat.details(of: d, path: "pipe").entry == nil)

        // The centers as recently read: a change through this catalog is seen at once.
        #expect(try cat.recentCentersList().map(\.name) == (try cat.centers()).map(\.name))
        try cat.setCenter("c9", api: "https://c9.example:7700")
        #expect(try cat.recentCentersList().contains { $0.name == "c9" && $0.reachable })
        try cat.recordSync(center: "c9", reachable: false)
        #expect(try cat.recentCentersList().contains { $0.name == "c9" && !$0.reachable })
        // One made by another daemon on the same database: within Recent.lifetime (1 s).
        try Catalog(database: spec).recordSync(center: "c9", reachable: true)
        usleep(1_100_000)
        #expect(try cat.recentCentersList().contains { $0.name == "c9" && $0.reachable })
    }

    /// find's order: (dir, name) by bytes.
    static func findOrder(_ a: String, _ b: String) -> Bool {
        func split(_ p: String) -> ([UInt8], [UInt8]) {
            let u = Array(p.utf8)
            guard let i = u.lastIndex(of: UInt8(ascii: "/")) else { return ([], u) }
            return (Array(u[..<i]), Array(u[(i + 1)...]))
        }
        let (x, y) = (split(a), split(b))
        return x.0 == y.0 ? x.1.lexicographicallyPrecedes(y.1) : x.0.lexicographicallyPrecedes(y.0)
    }

    @Test("re-register: exactly what changed is written, gone entries and subtrees removed, digests kept", arguments: Backend.allCases)
    func reregister(_ backend: Backend) throws {
        let t = try CatalogTests.sampleTree()
        let cat = try Catalog(database: try backend.newDatabase())
        let first = try cat.register(root: t.root, dataset: "lib", owner: "alice", center: "c1", hash: true, chunkSize: 64)
        let n = t.snapshot().count
        #expect(first.added == n && first.hashed == 10)

        // The stored digest is the engine's: FileDigest over 64-byte chunk hashes.
        let bytes = t.bytes("b.bin")
        let chunks = stride(from: 0, to: bytes.count, by: 64).map { ChunkHash.of(Array(bytes[$0..<min($0 + 64, bytes.count)])) }
        let b = try #require(try cat.stat(dataset: first.dataset, path: "b.bin", as: .operator))
        #expect(b.digest == FileDigest.of(chunks).description && b.chunkSize == 64)
        #expect(try fileDigest(path: t.full("b.bin"), chunkSize: 64) == b.digest)
        #expect(try cat.stat(dataset: first.dataset, path: "sub", as: .operator)?.digest == nil)

        // Modify one file, add one, delete one (all at the top: the top directory has no row).
        try t.file("a.txt", size: 11, seed: 9)
        try t.file("new.txt", size: 77)
        try t.remove("b.bin")
        let second = try cat.register(root: t.root, dataset: "lib", owner: "alice", center: "c1")
        #expect(second.changed == 1 && second.added == 1 && second.removed == 1 && second.unchanged == n - 2 && second.hashed == 0)
        #expect(try catalogSnapshot(cat, first.dataset) == t.snapshot())
        #expect(try cat.stat(dataset: first.dataset, path: "a.txt", as: .operator)?.digest == nil)  // changed: no digest yet
        #expect(try cat.stat(dataset: first.dataset, path: "sub/x.dat", as: .operator)?.digest != nil)  // unchanged: kept

        // Hashing resumes: only what has no digest is read.
        let third = try cat.register(root: t.root, dataset: "lib", owner: "alice", center: "c1", hash: true, chunkSize: 64)
        #expect(third.hashed == 2 && third.changed == 0 && third.added == 0 && third.removed == 0 && third.unchanged == n)

        // A directory goes (with everything below it); another becomes a file.
        try t.remove("sub")
        try t.remove("empty")
        try t.file("empty", size: 4)
        let fourth = try cat.register(root: t.root, dataset: "lib", owner: "alice", center: "c1")
        #expect(fourth.removed == 6 && fourth.changed == 1 && fourth.added == 0)
        #expect(try catalogSnapshot(cat, first.dataset) == t.snapshot())
        #expect(try cat.find(dataset: first.dataset, under: "sub", as: .operator).isEmpty)

        // Nothing changed: nothing written.
        let fifth = try cat.register(root: t.root, dataset: "lib", owner: "alice", center: "c1")
        #expect(fifth.unchanged == t.snapshot().count && fifth.added + fifth.changed + fifth.removed == 0)
        let d = try cat.dataset(first.dataset, as: .operator)
        #expect(d.fileCount == fifth.files && d.bytes == 11 + 5 + 42 + 1 + 2 + 3 + 77 + 4)
    }

    /// What a follower does with a peer's catalog, page by page (the daemon's Federation does
    /// it over HTTP): returns (written, removed) over all pages.
    static func mirror(from a: Catalog, _ remote: Dataset, into b: Catalog, pageSize: Int) throws -> (Int, Int) {
        let id = try b.mirrorDataset(remote)
        var after = (dir: "", name: "")
        var total = (0, 0)
        for _ in 0..<10_000 {
            let page = try a.exportEntries(dataset: remote.id, afterDir: after.dir, afterName: after.name, limit: pageSize)
            let last = page.count < pageSize
            let r = try b.mergeMirror(dataset: id, after: after, page: page, last: last)
            total = (total.0 + r.written, total.1 + r.removed)
            if last { break }
            after = (page.last!.dir, page.last!.name)
        }
        return total
    }

    /// What the daemon's follower does with a peer's entry feed (`Federation.syncDataset`),
    /// catalog to catalog: every tombstone after `since` up to `upto`, then every changed
    /// row, in pages of `pageSize`; returns (rows, tombstones) carried.
    static func follow(from a: Catalog, _ remote: Int64, into b: Catalog, mirror: Int64, since: Int64, upto: Int64, pageSize: Int) throws -> (Int, Int) {
        var carried = (0, 0)
        try feedPages { after in
            let page = try a.removedEntries(dataset: remote, since: since, upto: upto, after: after, limit: pageSize)
            carried.1 += page.removed.count
            _ = try b.applyRemoved(mirror: mirror, page.removed)
            return page.next
        }
        try feedPages { after in
            let page = try a.changedEntries(dataset: remote, since: since, upto: upto, after: after, limit: pageSize)
            carried.0 += page.entries.count
            _ = try b.applyChanged(mirror: mirror, page.entries)
            return page.next
        }
        try b.setMirrorSeq(mirror, upto)
        return carried
    }

    /// Calls `page` with each page's cursor (nil first) until it returns none (10,000 at most).
    static func feedPages(_ page: (EntryCursor?) throws -> EntryCursor?) throws {
        var after: EntryCursor?
        for _ in 0..<10_000 {
            guard let next = try page(after) else { return }
            after = next
        }
    }

    @Test("the entry feed: a re-registration's changed rows and tombstones (a subtree as one) and nothing else, applied to a mirror page by page; pruned tombstones raise the floor",
          arguments: Backend.allCases)
    func entryFeed(_ backend: Backend) throws {
        let t = try CatalogTests.sampleTree()
        let a = try Catalog(database: try backend.newDatabase())
        let b = try Catalog(database: try backend.newDatabase())
        let reg = try a.register(root: t.root, dataset: "lib", owner: "alice", center: "c1", readers: ["*"])
        let remote = try a.dataset(reg.dataset, as: .operator)
        // A first registration: its rows out of the feed (stamped 0), the floor at its one
        // number (a follower reads a new dataset whole).
        let h0 = try a.entrySeq(dataset: remote.id)
        #expect(h0.seq > 0 && h0.floor == h0.seq, "\(h0)")
        #expect(try a.changedEntries(dataset: remote.id, since: 0, upto: h0.seq, after: nil, limit: 1000).entries.isEmpty)
        _ = try CatalogTests.mirror(from: a, remote, into: b, pageSize: 5)
        let local = try #require(try b.mirroredDataset(center: "c1", remoteID: remote.id))
        try b.setMirrorSeq(local, h0.seq)
        #expect(try b.entrySeq(dataset: local).seq == h0.seq)

        // Registered again unchanged: no write, the sequence stays.
        _ = try a.register(root: t.root, dataset: "lib", owner: "alice", center: "c1")
        #expect(try a.entrySeq(dataset: remote.id).seq == h0.seq)

        // Ten files rewritten in place (no directory's mtime moves): exactly those ten rows.
        let ten = ["a.txt", "b.bin", "with space.txt", "ünïcödé/日本語 ファイル.txt", CatalogTests.nfc, CatalogTests.nfd,
                   "sub/x.dat", "sub/y.dat", "sub/nested/z.smi", CatalogTests.deep + "/leaf.txt"]
        for (i, f) in ten.enumerated() { try t.file(f, size: 50 + i, seed: 9) }
        let r1 = try a.register(root: t.root, dataset: "lib", owner: "alice", center: "c1")
        #expect(r1.changed == 10 && r1.added == 0 && r1.removed == 0, "\(r1)")
        let h1 = try a.entrySeq(dataset: remote.id).seq
        #expect(h1 > h0.seq)
        let changed = try a.changedEntries(dataset: remote.id, since: h0.seq, upto: h1, after: nil, limit: 1000)
        #expect(changed.entries.map(\.path).sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) } == ten.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) })
        #expect(changed.next == nil && changed.entries.allSatisfy { $0.dataset == remote.id })
        #expect(try a.removedEntries(dataset: remote.id, since: h0.seq, upto: h1, after: nil, limit: 1000).removed.isEmpty)
        #expect(try CatalogTests.follow(from: a, remote.id, into: b, mirror: local, since: h0.seq, upto: h1, pageSize: 3) == (10, 0))
        #expect(try catalogSnapshot(b, local) == t.snapshot())

        // A subtree gone, a directory that becomes a file, a file removed, one added: one
        // tombstone each for the three that went (not one per entry below them).
        try t.remove("sub")
        try t.remove("empty")
        try t.file("empty", size: 7)
        try t.remove("with space.txt")
        try t.file("new.txt", size: 3)
        let r2 = try a.register(root: t.root, dataset: "lib", owner: "alice", center: "c1")
        let h2 = try a.entrySeq(dataset: remote.id).seq
        let gone = try a.removedEntries(dataset: remote.id, since: h1, upto: h2, after: nil, limit: 1000).removed
        #expect(Set(gone.map(\.path)) == ["sub", "empty", "with space.txt"], "\(gone) after \(r2)")
        let carried = try CatalogTests.follow(from: a, remote.id, into: b, mirror: local, since: h1, upto: h2, pageSize: 2)
        #expect(carried.0 == r2.added + r2.changed, "\(carried) vs \(r2)")
        #expect(try catalogSnapshot(b, local) == t.snapshot())
        // Removed and added again: both in the range; applied in order, the entry is there.
        try t.file("with space.txt", size: 5)
        try t.remove("new.txt")
        _ = try a.register(root: t.root, dataset: "lib", owner: "alice", center: "c1")
        let h3 = try a.entrySeq(dataset: remote.id).seq
        _ = try CatalogTests.follow(from: a, remote.id, into: b, mirror: local, since: h2, upto: h3, pageSize: 1000)
        #expect(try catalogSnapshot(b, local) == t.snapshot())
        // A peer's bad tombstone or row is refused whole; a mirror's own rows only.
        #expect(throws: CatalogError.self) { try b.applyRemoved(mirror: local, [RemovedEntry(seq: 1, dir: "..", name: "x")]) }
        #expect(throws: CatalogError.self) { try b.applyChanged(mirror: local, [changed.entries[0], changed.entries[0]]) }
        #expect(throws: CatalogError.self) { try a.applyRemoved(mirror: remote.id, [RemovedEntry(seq: 1, dir: "", name: "a.txt")]) }
        #expect(try catalogSnapshot(b, local) == t.snapshot())

        // Tombstones beyond max(kept, entries): the oldest half goes, the floor rises.
        a.tombstonesKept = 1
        for i in 0..<30 { try t.file("many/f\(i)", size: 1) }
        _ = try a.register(root: t.root, dataset: "lib", owner: "alice", center: "c1")
        try t.remove("many")
        for i in 0..<40 { try t.file("gone\(i)", size: 1) }
        _ = try a.register(root: t.root, dataset: "lib", owner: "alice", center: "c1")
        for i in 0..<40 { try t.remove("gone\(i)") }
        let before = try a.entrySeq(dataset: remote.id)
        let r3 = try a.register(root: t.root, dataset: "lib", owner: "alice", center: "c1")
        let after3 = try a.entrySeq(dataset: remote.id)
        #expect(r3.removed == 40 && before.floor == h0.seq && after3.floor > h2, "\(before) \(after3)")
    }

    @Test("a dataset mirrored for the first time is seen by no reader (list, name, path, id, find) until its last page; a re-sync leaves it seen", arguments: Backend.allCases)
    func firstMirrorHidden(_ backend: Backend) throws {
        let t = try CatalogTests.sampleTree()
        let a = try Catalog(database: try backend.newDatabase())
        let b = try Catalog(database: try backend.newDatabase())
        let reg = try a.register(root: t.root, dataset: "lib", owner: "alice", center: "c1", readers: ["*"])
        let remote = try a.dataset(reg.dataset, as: .operator)
        let id = try b.mirrorDataset(remote)
        let page = try a.exportEntries(dataset: remote.id, afterDir: "", afterName: "", limit: 3)
        _ = try b.mergeMirror(dataset: id, after: ("", ""), page: page, last: false)
        let path = try GFSPath("gfs://c1/lib")
        func seen() throws -> [Bool] {
            [try b.datasets(visibleTo: .operator).contains { $0.name == "lib" },
             try b.dataset(center: "c1", name: "lib", as: .operator) != nil,
             try b.resolve(path, as: .operator) != nil,
             (try? b.dataset(id, as: .operator)) != nil,
             !(try b.find(as: .operator)).isEmpty]
        }
        let half = try seen()
        #expect(half == [false, false, false, false, false], "half mirrored: \(half)")
        #expect(try b.mirroredDataset(center: "c1", remoteID: remote.id) == id, "the follower itself finds it, to go on")
        // The rest, then the last page: seen, whole.
        _ = try CatalogTests.mirror(from: a, remote, into: b, pageSize: 1000)
        #expect(try seen() == [true, true, true, true, true])
        #expect(try catalogSnapshot(b, id) == t.snapshot())
        _ = try CatalogTests.mirror(from: a, remote, into: b, pageSize: 3)
        #expect(try seen() == [true, true, true, true, true], "a re-sync of a known mirror never hides it")
    }

    @Test("mirroring a peer's dataset: the same entries, only differences written on re-sync, no echo in the follower's feed", arguments: Backend.allCases)
    func mirror(_ backend: Backend) throws {
        let t = try CatalogTests.sampleTree()
        let a = try Catalog(database: try backend.newDatabase())
        let b = try Catalog(database: try backend.newDatabase())
        let reg = try a.register(root: t.root, dataset: "lib", version: "1", owner: "alice", center: "c1", readers: ["bob"])
        let remote = try a.dataset(reg.dataset, as: .operator)
        let n = t.snapshot().count
        // Pages of 3 (many page boundaries, one inside the 100-level-deep chain).
        let first = try CatalogTests.mirror(from: a, remote, into: b, pageSize: 3)
        #expect(first.0 == n && first.1 == 0)
        let local = try #require(try b.mirroredDataset(center: "c1", remoteID: remote.id))
        #expect(try catalogSnapshot(b, local) == t.snapshot())
        let m = try b.dataset(local, as: .operator)
        #expect(m.center == "c1" && m.qualifiedName == "lib@1" && m.readers == ["bob"] && m.fileCount == reg.files && m.remoteID == remote.id)
        // Rights travel with the mirror: bob sees it, carol does not.
        #expect(try b.resolve(try GFSPath("gfs://c1/lib@1/sub"), as: Viewer(user: "bob"))?.path == "sub")
        #expect(try b.resolve(try GFSPath("gfs://c1/lib@1"), as: Viewer(user: "carol")) == nil)
        // Unchanged: nothing written.
        #expect(try CatalogTests.mirror(from: a, remote, into: b, pageSize: 3) == (0, 0))
        // A peer's bad page is refused whole and nothing of it written: a name that is not one
        // component, a parent that escapes, nonsense values, keys out of order.
        let good = try a.exportEntries(dataset: remote.id, afterDir: "", afterName: "", limit: 2)
        func spoilt(_ change: (inout Entry) -> Void) -> [Entry] {
            var page = good
            change(&page[1])
            return page
        }
        let badPages: [[Entry]] = [
            spoilt { $0.name = ".." }, spoilt { $0.name = "x/y" }, spoilt { $0.name = "" }, spoilt { $0.name = "nul\0" },
            spoilt { $0.dir = "../etc" }, spoilt { $0.dir = "a//b" }, spoilt { $0.dir = "/abs" },
            spoilt { $0.size = -1 }, spoilt { $0.mode = 0o170000 }, spoilt { $0.digest = "XYZ" },
            [good[1], good[0]],
        ]
        for page in badPages {
            #expect(throws: CatalogError.self, "\(page.map(\.path))") { try b.mergeMirror(dataset: local, after: ("", ""), page: page, last: false) }
        }
        // The same page again after its own last key (a pager that never advances).
        #expect(throws: CatalogError.self) { try b.mergeMirror(dataset: local, after: (good[1].dir, good[1].name), page: good, last: false) }
        #expect(try catalogSnapshot(b, local) == t.snapshot())
        // One changed, one added, a subtree gone: exactly those (and the top-level dirs' rows).
        try t.file("a.txt", size: 12, seed: 3)
        try t.file("zz new.txt", size: 5)
        try t.remove("sub")
        let again = try a.register(root: t.root, dataset: "lib", version: "1", owner: "alice", center: "c1")
        let second = try CatalogTests.mirror(from: a, try a.dataset(reg.dataset, as: .operator), into: b, pageSize: 4)
        #expect(second.0 == again.added + again.changed && second.1 == again.removed, "\(second) vs \(again)")
        #expect(try catalogSnapshot(b, local) == t.snapshot())
        // Replicas the peer holds; one of a dataset not known here is counted, not invented.
        var ghost = remote
        ghost.center = "c9"
        let unknown = try b.mirrorReplicas(at: "c1", [(remote, Replica(dataset: remote.id, center: "c1", state: .complete, path: "/x")),
                                                      (ghost, Replica(dataset: 77, center: "c1", state: .complete, path: "/y"))])
        #expect(unknown == 1)
        #expect(try b.replicas(dataset: local, as: .operator).map(\.center) == ["c1"])
        // None of this went into b's own change feed (no echo between centers).
        #expect(try b.changes(after: 0).isEmpty)
        // The peer deleted it: the mirror goes, with its entries and replicas.
        try b.dropMirror(center: "c1", remoteID: remote.id)
        #expect(try b.mirroredDataset(center: "c1", remoteID: remote.id) == nil)
        #expect(try b.find(as: .operator).isEmpty)
    }

    @Test("a private dataset is invisible to others in datasets, list, stat, find, du and resolve", arguments: Backend.allCases)
    func privateDataset(_ backend: Backend) throws {
        let t = try Tree()
        try t.file("secret.txt", size: 3)
        try t.file("d/more.txt", size: 4)
        let cat = try Catalog(database: try backend.newDatabase())
        let pub = try cat.register(root: t.root, dataset: "open", owner: "alice", center: "c1", readers: ["*"])
        let priv = try cat.register(root: t.root, dataset: "open/closed", owner: "alice", center: "c1", readers: ["bob", "center:c2"])
        let carol = Viewer(user: "carol")
        #expect(try cat.datasets(visibleTo: carol).map(\.name) == ["open"])
        #expect(throws: CatalogError.self) { try cat.list(dataset: priv.dataset, as: carol) }
        #expect(throws: CatalogError.self) { try cat.stat(dataset: priv.dataset, path: "secret.txt", as: carol) }
        #expect(throws: CatalogError.self) { try cat.du(dataset: priv.dataset, as: carol) }
        #expect(throws: CatalogError.self) { try cat.replicas(dataset: priv.dataset, as: carol) }
        #expect(throws: CatalogError.self) { try cat.find(dataset: priv.dataset, as: carol) }
        #expect(try cat.find(nameGlob: "*.txt", as: carol).allSatisfy { $0.dataset == pub.dataset })
        #expect(try cat.find(nameGlob: "*.txt", as: carol).count == 2)
        // The private dataset hides behind the public one whose name is its prefix.
        let r = try #require(try cat.resolve(try GFSPath("gfs://c1/open/closed/secret.txt"), as: carol))
        #expect(r.dataset.id == pub.dataset && r.path == "closed/secret.txt")
        #expect(try cat.dataset(center: "c1", name: "open/closed", as: carol) == nil)

        for v in [Viewer(user: "alice"), Viewer(user: "bob"), Viewer(user: "center:c2"), Viewer(user: "root", isOperator: true)] {
            #expect(try cat.datasets(visibleTo: v).map(\.name) == ["open", "open/closed"])
            #expect(try cat.list(dataset: priv.dataset, as: v).map(\.name) == ["d", "secret.txt"])
            #expect(try cat.find(nameGlob: "*.txt", as: v).count == 4)
            #expect(try cat.resolve(try GFSPath("gfs://c1/open/closed/secret.txt"), as: v)?.dataset.id == priv.dataset)
        }
        #expect(!Catalog.visible(try cat.dataset(priv.dataset, as: .operator), to: "", isOperator: false))
        #expect(!Catalog.visible(try cat.dataset(priv.dataset, as: .operator), to: "center:c3", isOperator: false))
        // A user of another center asks as NAME@CENTER: the owner and readers of c1's dataset
        // are c1's names, so alice@c1 and bob@c1 see it, alice@c2 and a bare "@c1" do not.
        let ds = try cat.dataset(priv.dataset, as: .operator)
        for (who, sees) in [("alice@c1", true), ("bob@c1", true), ("alice@c2", false), ("carol@c1", false), ("@c1", false), ("alice@", false)] {
            #expect(Catalog.visible(ds, to: who, isOperator: false) == sees, "\(who)")
        }
        // Asked at a center: a bare name is that center's user. c2's alice is not c1's.
        #expect(Catalog.visible(ds, to: "alice", isOperator: false, center: "c1"))
        #expect(!Catalog.visible(ds, to: "alice", isOperator: false, center: "c2"))
        #expect(!Catalog.visible(ds, to: "bob", isOperator: false, center: "c2"))
        #expect(Catalog.visible(ds, to: "alice@c1", isOperator: false, center: "c2"))
        #expect(Catalog.visible(ds, to: "center:c2", isOperator: false, center: "c2"))
        #expect(try cat.datasets(visibleTo: Viewer(user: "alice", center: "c2")).map(\.name) == ["open"])

        // Made public later: now carol sees it, and followers hear of it.
        try cat.updateDataset(priv.dataset, readers: ["*"], description: "now open")
        #expect(try cat.datasets(visibleTo: carol).map(\.name) == ["open", "open/closed"])
        #expect(try cat.dataset(priv.dataset, as: carol).description == "now open")
        #expect(try cat.changes(after: 0).last.map { ($0.dataset, $0.kind) }! == (priv.dataset, .datasetUpdated))
        #expect(throws: CatalogError.self) { try cat.updateDataset(priv.dataset, readers: ["a,b"]) }
    }

    @Test("resolve's kept datasets: a change through the catalog is seen at once (readers taken away, deleted, registered, mirrored), another daemon's within a second", arguments: Backend.allCases)
    func resolutionKept(_ backend: Backend) throws {
        let t = try Tree()
        try t.file("secret.txt", size: 3)
        let spec = try backend.newDatabase()
        let cat = try Catalog(database: spec)
        let bob = Viewer(user: "bob")
        let p = try GFSPath("gfs://c1/lab/secret.txt")
        func seen() throws -> Int64? { try cat.resolve(p, as: bob)?.dataset.id }
        let lab = try cat.register(root: t.root, dataset: "lab", owner: "alice", center: "c1", readers: ["bob"])
        #expect(try seen() == lab.dataset)
        #expect(cat.recentDatasets.count == 1, "the answer is kept")
        // Taken away from bob: his next resolution, at once, finds nothing.
        try cat.updateDataset(lab.dataset, readers: ["carol"])
        #expect(try seen() == nil)
        try cat.updateDataset(lab.dataset, readers: ["bob"])
        #expect(try seen() == lab.dataset)
        // A longer name registered now wins at once (not the kept "lab").
        let deeper = try cat.register(root: t.root, dataset: "lab/secret.txt", owner: "alice", center: "c1", readers: ["bob"])
        #expect(try cat.resolve(p, as: bob).map { ($0.dataset.id, $0.path) }! == (deeper.dataset, ""))
        try cat.deleteDataset(deeper.dataset)
        let labRow = try cat.dataset(lab.dataset, as: .operator)
        try cat.deleteDataset(lab.dataset)
        #expect(try seen() == nil)
        // A peer's dataset mirrored, then dropped.
        let peer = try GFSPath("gfs://c2/shared/x")
        #expect(try cat.resolve(peer, as: bob) == nil)
        var mirrored = labRow
        (mirrored.id, mirrored.center, mirrored.name, mirrored.readers, mirrored.root) = (77, "c2", "shared", ["*"], nil)
        let local = try cat.mirrorDataset(mirrored)
        #expect(try cat.resolve(peer, as: bob) == nil, "not seen before its first pass ends")
        _ = try cat.mergeMirror(dataset: local, after: ("", ""), page: [], last: true)
        #expect(try cat.resolve(peer, as: bob)?.dataset.id == local)
        try cat.dropMirror(center: "c2", remoteID: 77)
        #expect(try cat.resolve(peer, as: bob) == nil)

        // Another daemon on the same database: seen within Recent.lifetime (1 s).
        let again = try cat.register(root: t.root, dataset: "lab", owner: "alice", center: "c1", readers: ["bob"])
        #expect(try seen() == again.dataset)
        try Catalog(database: spec).updateDataset(again.dataset, readers: ["carol"])
        usleep(1_100_000)
        #expect(try seen() == nil, "another daemon's change is seen within a second")

        // A top name with more datasets below it than a family keeps: resolved by its own
        // names (and each of them still found).
        cat.familyMax = 2
        for n in ["big/a", "big/b", "big/c"] { try cat.register(root: t.root, dataset: n, owner: "alice", center: "c1", readers: ["bob"]) }
        for n in ["a", "b", "c"] {
            #expect(try cat.resolve(try GFSPath("gfs://c1/big/\(n)/secret.txt"), as: bob).map { ($0.dataset.name, $0.path) }! == ("big/\(n)", "secret.txt"))
        }
        #expect(cat.recentDatasets.fresh(["c1", "big"]).map { $0 == nil } == true, "too many to keep: kept as such")
        #expect(try cat.resolve(try GFSPath("gfs://c1/big/d/secret.txt"), as: bob) == nil)

        // A read that began before a forget keeps nothing.
        let stamp = cat.recentDatasets.stamp()
        cat.recentDatasets.forget()
        cat.recentDatasets.keep(["c1", "old"], [], stamp: stamp)
        #expect(cat.recentDatasets.fresh(["c1", "old"]) == nil)
        cat.recentDatasets.keep(["c1", "old"], [], stamp: cat.recentDatasets.stamp())
        #expect(cat.recentDatasets.fresh(["c1", "old"]) != nil)
    }

    @Test("gfs:// resolution: the longest dataset name, @VERSION, the unversioned one first", arguments: Backend.allCases)
    func resolution(_ backend: Backend) throws {
        let t = try Tree()
        try t.file("x", size: 1)
        let cat = try Catalog(database: try backend.newDatabase())
        let top = try cat.register(root: t.root, dataset: "datasets", owner: "o", center: "c1", readers: ["*"])
        let v1 = try cat.register(root: t.root, dataset: "datasets/zinc22", version: "v1", owner: "o", center: "c1", readers: ["*"], now: 10)
        let v2 = try cat.register(root: t.root, dataset: "datasets/zinc22", version: "v2", owner: "o", center: "c1", readers: ["*"], now: 20)
        let me = Viewer(user: "u")
        func resolve(_ s: String) throws -> (Int64, String)? { try cat.resolve(try GFSPath(s), as: me).map { ($0.dataset.id, $0.path) } }
        #expect(try resolve("gfs://c1/datasets/zinc22/x")! == (v2.dataset, "x"))  // the latest version
        #expect(try resolve("gfs://c1/datasets/zinc22@v1/x")! == (v1.dataset, "x"))
        #expect(try resolve("gfs://c1/datasets/zinc22@v3/x")! == (top.dataset, "zinc22@v3/x"))
        #expect(try resolve("gfs://c1/datasets/other/x")! == (top.dataset, "other/x"))
        #expect(try resolve("gfs://c1/datasets")! == (top.dataset, ""))
        #expect(try resolve("gfs://c1/nothing") == nil)
        let unversioned = try cat.register(root: t.root, dataset: "datasets/zinc22", owner: "o", center: "c1", readers: ["*"], now: 5)
        #expect(try resolve("gfs://c1/datasets/zinc22")! == (unversioned.dataset, ""))
        #expect(throws: CatalogError.self) { try cat.register(root: t.root, dataset: "a@b", owner: "o", center: "c1") }
        #expect(throws: CatalogError.self) { try cat.register(root: t.root, dataset: "a/../b", owner: "o", center: "c1") }
        #expect(throws: CatalogError.self) { try cat.register(root: t.root, dataset: "a", version: "1/2", owner: "o", center: "c1") }
        #expect(throws: CatalogError.self) { try cat.register(root: t.full("missing"), dataset: "m", owner: "o", center: "c1") }
        #expect(try cat.dataset(center: "c1", name: "m", as: .operator) == nil)
        #expect(throws: CatalogError.self) { try cat.register(root: t.root, dataset: "m", owner: "o", center: "bad center") }
        #expect(throws: CatalogError.self) { try cat.register(root: t.root, dataset: "m", owner: "o", center: "c1", readers: [""]) }
    }

    @Test("names with quotes, backslashes, commas, braces, NULL, \\N, tabs, returns and newlines survive both engines", arguments: Backend.allCases)
    func oddNames(_ backend: Backend) throws {
        let t = try Tree()
        // (Also COPY's text form, a first registration's on PostgreSQL: \N is its NULL, and
        // backslash, tab, newline and return its escapes.)
        let names = ["a\"b", "c\\d", "e,f", "{g}", "NULL", " lead", "tab\there", "new\nline", "", "\\\"", "\\N", "cr\rhere", "\\\\n"]
            .filter { !$0.isEmpty }
        for n in names { try t.file(n, size: n.utf8.count) }
        try t.file("x,y{z}\"w\\/in \"dir\"", size: 1)
        try t.symlink("odd link", to: "../\"quoted\", {x}\\")
        let cat = try Catalog(database: try backend.newDatabase())
        let s = try cat.register(root: t.root, dataset: "odd", owner: "o", center: "c1", hash: true)
        #expect(try catalogSnapshot(cat, s.dataset) == t.snapshot())
        for n in names {
            #expect(try cat.stat(dataset: s.dataset, path: n, as: .operator)?.size == Int64(n.utf8.count), "\(n)")
        }
        #expect(try cat.list(dataset: s.dataset, dir: "x,y{z}\"w\\", as: .operator).map(\.name) == ["in \"dir\""])
        #expect(try cat.stat(dataset: s.dataset, path: "odd link", as: .operator)?.target == "../\"quoted\", {x}\\")
        let again = try cat.register(root: t.root, dataset: "odd", owner: "o", center: "c1")
        #expect(again.unchanged == t.snapshot().count && again.added + again.changed + again.removed == 0)
    }

    @Test("the change feed: increasing seqs, resumable after a given seq", arguments: Backend.allCases)
    func changeFeed(_ backend: Backend) throws {
        let t = try Tree()
        try t.file("f", size: 1)
        let cat = try Catalog(database: try backend.newDatabase())
        let a = try cat.register(root: t.root, dataset: "a", owner: "o", center: "c1", now: 1)
        let b = try cat.register(root: t.root, dataset: "b", owner: "o", center: "c1", now: 2)
        try cat.setReplica(dataset: b.dataset, center: "c2", state: .partial, files: 1, bytes: 1, now: 3)
        try cat.register(root: t.root, dataset: "a", owner: "o", center: "c1", now: 4)
        try cat.removeReplica(dataset: b.dataset, center: "c2", now: 5)
        try cat.deleteDataset(a.dataset, now: 6)
        let all = try cat.changes(after: 0)
        #expect(all.map(\.kind) == [.datasetRegistered, .replicaUpdated, .datasetRegistered, .replicaUpdated, .replicaUpdated,
                                    .datasetUpdated, .replicaUpdated, .replicaDeleted, .datasetDeleted])
        #expect(all.map(\.dataset) == [a.dataset, a.dataset, b.dataset, b.dataset, b.dataset, a.dataset, a.dataset, b.dataset, a.dataset])
        #expect(zip(all, all.dropFirst()).allSatisfy { $0.seq < $1.seq })
        #expect(all[4].center == "c2" && all[8].at == 6)
        let rest = try cat.changes(after: all[2].seq, limit: 2)
        #expect(rest.map(\.seq) == [all[3].seq, all[4].seq])
        #expect(try cat.changes(after: all.last!.seq).isEmpty)
        #expect(throws: CatalogError.self) { try cat.dataset(a.dataset, as: .operator) }
        #expect(try cat.replicas(dataset: b.dataset, as: .operator).map(\.center) == ["c1"])
        try cat.recordSync(center: "c2", lastSeq: 42, reachable: true, at: 7)
        #expect(try cat.centers().map(\.name) == ["c1", "c2"])
        #expect(try cat.centers().last == Center(name: "c2", api: "", lastSeq: 42, lastSync: 7, reachable: true))
        // A failed sync marks it down and keeps the time and seq of the last good one.
        try cat.recordSync(center: "c2", reachable: false, at: 9)
        #expect(try cat.centers().last == Center(name: "c2", api: "", lastSeq: 42, lastSync: 7, reachable: false))
    }

    @Test("one directory of 1,000,000 entries, paged by 1,000: every entry once, in order; registered again with ten changed, those ten written and in the entry feed", arguments: Backend.allCases)
    func hugeDirectory(_ backend: Backend) throws {
        let n = 1_000_000
        let t = try Tree(tmpfsMiB: 1024)
        try t.dir("big")
        var names: [String] = []
        names.reserveCapacity(n)
        for i in 0..<n {
            let name = i % 10 == 0 ? "ü-\(i).smi" : "f\(i) x.smi"
            names.append(name)
            let fd = open(t.full("big/" + name), O_WRONLY | O_CREAT, 0o644)
            try #require(fd >= 0)
            close(fd)
        }
        names.sort { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        let cat = try Catalog(database: try backend.newDatabase())
        let s = try cat.register(root: t.root, dataset: "big", owner: "o", center: "c1")
        print("GlobalFS register \(backend): \(s.added) entries in \(String(format: "%.2f", s.seconds)) s = \(Int(s.entriesPerSecond)) entries/s")
        #expect(s.added == n + 1)

        var got: [String] = []
        var after: String?
        var pages = 0
        let t0 = Date()
        for _ in 0..<(n / 1000 + 5) {
            let page = try cat.list(dataset: s.dataset, dir: "big", after: after, limit: 1000, as: .operator)
            if page.isEmpty { break }
            pages += 1
            got += page.map(\.name)
            after = page.last!.name
        }
        let ms = Date().timeIntervalSince(t0) * 1000 / Double(max(pages, 1))
        print("GlobalFS list \(backend): \(pages) pages of 1000, \(String(format: "%.2f", ms)) ms per page")
        #expect(pages == n / 1000)
        #expect(got.count == n)
        #expect(got.elementsEqual(names) { $0.utf8.elementsEqual($1.utf8) })

        // Registered again with ten files changed among the million: it reads the directory
        // back and writes those ten rows; a follower's feed after the sequence it had applied
        // carries those ten and nothing else. (That an unchanged re-registration writes
        // nothing and keeps the sequence: `entryFeed`, on a small tree.)
        let h0 = try cat.entrySeq(dataset: s.dataset).seq
        let ten = (0..<10).map { names[$0 * 99_991] }
        for name in ten {
            let fd = open(t.full("big/" + name), O_WRONLY | O_APPEND)
            try #require(fd >= 0)
            _ = write(fd, "C", 1)
            close(fd)
        }
        let again = try cat.register(root: t.root, dataset: "big", owner: "o", center: "c1")
        print("GlobalFS re-register \(backend): \(again.unchanged) unchanged entries, \(again.changed) changed, in \(String(format: "%.2f", again.seconds)) s")
        #expect(again.changed == 10 && again.added + again.removed == 0 && again.unchanged == n + 1 - 10, "\(again)")
        let h1 = try cat.entrySeq(dataset: s.dataset).seq
        var carried: [String] = []
        try CatalogTests.feedPages { cursor in
            let page = try cat.changedEntries(dataset: s.dataset, since: h0, upto: h1, after: cursor, limit: 4)
            carried += page.entries.map(\.path)
            return page.next
        }
        #expect(carried.sorted() == ten.map { "big/" + $0 }.sorted())
        #expect(try cat.removedEntries(dataset: s.dataset, since: h0, upto: h1, after: nil, limit: 100).removed.isEmpty)
    }
}

extension CatalogTests {
    @Test("PostgreSQL: entries read on a thread's own connection (one binary row each) and pages there are those read on a leased one (text arrays) and on SQLite: odd names, links, NULL digests, sizes, times and modes alike")
    func binaryRowsAsTextArrays() async throws {
        let t = try CatalogTests.sampleTree()
        try t.file("odd/a\"b,{c}\\NULL", size: 7, mtime: 1_700_000_001)
        try t.symlink("odd/\"link\"", to: "../a.txt")
        let pg = try Catalog(database: try Backend.postgres.newDatabase())
        let lite = try Catalog(database: try Backend.sqlite.newDatabase())
        // Digests on one dataset only: NULL and text digests both pass through.
        let hashed = try pg.register(root: t.root, dataset: "hashed", owner: "o", center: "c1", hash: true)
        let plain = try pg.register(root: t.root, dataset: "plain", owner: "o", center: "c1")
        let liteHashed = try lite.register(root: t.root, dataset: "hashed", owner: "o", center: "c1", hash: true)
        let dirs = ["", "sub", "sub/nested", "ünïcödé", "odd", CatalogTests.deep]
        func pages(_ cat: Catalog, _ id: Int64) throws -> [[Entry]] {
            try dirs.map { dir in
                var all: [Entry] = []
                var after: String?
                for _ in 0..<100 {  // pages of 2: the cursor crosses odd names too
                    let page = try cat.list(dataset: id, dir: dir, after: after, limit: 2, as: .operator)
                    all += page
                    guard page.count == 2 else { break }
                    after = page.last?.name
                }
                return all
            }
        }
        func stats(_ cat: Catalog, _ id: Int64, _ listed: [[Entry]]) throws -> [Entry?] {
            try listed.joined().map { e in try cat.stat(dataset: id, path: e.dir.isEmpty ? e.name : e.dir + "/" + e.name, as: .operator) }
        }
        let leased = try [hashed.dataset, plain.dataset].map { id in try pages(pg, id) }
        let leasedStats = try [hashed.dataset, plain.dataset].enumerated().map { i, id in try stats(pg, id, leased[i]) }
        let pool = ThreadPoolExecutor(threads: 1, name: "ferry-test-binrows")
        let (own, ownStats, prepared) = try await Task(executorPreference: pool) {
            try await pg.db.sharingReads { () -> ([[[Entry]]], [[Entry?]], Int64) in
                let own = try [hashed.dataset, plain.dataset].map { id in try pages(pg, id) }
                let ownStats = try [hashed.dataset, plain.dataset].enumerated().map { i, id in try stats(pg, id, own[i]) }
                // The entries above were read by the prepared (binary) statement of one key.
                let n = try pg.db.read { s in
                    try s.one("SELECT COUNT(*) AS n FROM pg_prepared_statements WHERE statement LIKE 'SELECT dataset, dir, name%name = $3' AND statement NOT LIKE '%array_agg%'")!.int("n")
                }
                return (own, ownStats, n)
            }
        }.value
        #expect(prepared >= 1, "the own connection prepared the entries' SELECT")
        #expect(own == leased)
        #expect(ownStats == leasedStats)
        #expect(leased[0].joined().contains { $0.digest != nil } && leased[1].joined().allSatisfy { $0.digest == nil })
        #expect(leased[0].joined().contains { $0.target == "../a.txt" && $0.kind == .symlink })
        // The same entries as SQLite's (the dataset ids may differ).
        let liteListed = try pages(lite, liteHashed.dataset).map { $0.map { var e = $0; e.dataset = hashed.dataset; return e } }
        #expect(own[0] == liteListed)
        #expect(own[0].joined().count == leased[0].joined().count && own[0].joined().count > 10)
    }
}
