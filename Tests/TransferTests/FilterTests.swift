import Foundation
import Testing
@testable import Transfer

#if canImport(Glibc)
import Glibc
#endif

/// Filter rules (rsync's subset, `FilterRules`) and the removal primitive of `--delete`.
@Suite("Filter rules and confined deletion")
struct FilterTests {
    func rules(_ list: [(Bool, String)]) throws -> FilterRules {
        try FilterRules(list.map { try FilterRules.Rule(include: $0.0, pattern: $0.1) })
    }

    @Test("globs: * stops at /, ** does not, ? and classes; names vs paths, anchoring, directory-only")
    func matching() throws {
        let r = try rules([(false, "*.tmp")])
        #expect(r.excludes("a.tmp", isDirectory: false) && r.excludes("x/y/a.tmp", isDirectory: false) && !r.excludes("a.tmpx", isDirectory: false))
        let anchored = try rules([(false, "/cache")])
        #expect(anchored.excludes("cache", isDirectory: true) && !anchored.excludes("sub/cache", isDirectory: true))
        let dirOnly = try rules([(false, "build/")])
        #expect(dirOnly.excludes("build", isDirectory: true) && dirOnly.excludes("a/build", isDirectory: true) && !dirOnly.excludes("build", isDirectory: false))
        let path = try rules([(false, "logs/*.txt")])
        #expect(path.excludes("logs/a.txt", isDirectory: false) && path.excludes("x/logs/a.txt", isDirectory: false)
                && !path.excludes("logs/sub/a.txt", isDirectory: false) && !path.excludes("xlogs/a.txt", isDirectory: false))
        let deep = try rules([(false, "data/**/raw")])
        #expect(deep.excludes("data/a/b/raw", isDirectory: true) && deep.excludes("data/x/raw", isDirectory: false) && !deep.excludes("data/raw2", isDirectory: false))
        let cls = try rules([(false, "run[0-9][!a-c]?.nc")])
        #expect(cls.excludes("run1dx.nc", isDirectory: false) && !cls.excludes("run1ax.nc", isDirectory: false) && !cls.excludes("runxdx.nc", isDirectory: false))
        // The first matching rule decides; the root is never excluded.
        let order = try rules([(true, "keep.tmp"), (false, "*.tmp"), (false, "*")])
        #expect(!order.excludes("keep.tmp", isDirectory: false) && order.excludes("x.tmp", isDirectory: false) && order.excludes("y", isDirectory: false) && !order.excludes("", isDirectory: true))
        // A hostile pattern stays linear-ish: many stars against a long name ends quickly.
        let stars = try rules([(false, String(repeating: "*a", count: 200) + "b")])
        let t0 = Date()
        #expect(!stars.excludes(String(repeating: "a", count: 4000), isDirectory: false))
        #expect(Date().timeIntervalSince(t0) < 2)
    }

    @Test("filter files: comments, both spellings, every bad line named; rules travel in HELLO and come back the same")
    func parsingAndWire() throws {
        let parsed = try FilterRules.parse(file: "# c\n; c\n\n- *.o\n+ keep/\ninclude a\nexclude b \n", name: "f")
        #expect(parsed.map(\.pattern) == ["*.o", "keep/", "a", "b"] && parsed.map(\.include) == [false, true, true, false])
        #expect(throws: TransferError.self) { try FilterRules.parse(file: "- ok\nP bad\n! x\n", name: "f") }
        do { _ = try FilterRules.parse(file: "- ok\nP bad\n! x\n", name: "f") } catch let e as TransferError {
            #expect(e.message.contains("f:2") && e.message.contains("f:3"), "\(e.message)")
        }
        #expect(throws: TransferError.self) { try FilterRules.Rule(include: false, pattern: "/") }
        // Bounded: the matching work a peer's rules can ask per entry.
        #expect(throws: TransferError.self) { try FilterRules((0..<20).map { _ in try FilterRules.Rule(include: false, pattern: String(repeating: "a", count: 1000)) }) }
        var o = TransferOptions()
        o.filters = try rules([(true, "a/"), (false, "*")])
        o.listDepth = 1
        let back = try Hello.decode(Hello(token: [], direction: .list, path: "x", options: o).encode())
        #expect(back.options.filters == o.filters && back.options.listDepth == 1 && back.direction == .list)
        // A plain copy's HELLO has no extension at all.
        let plain = Hello(token: [], direction: .push, path: "x", options: TransferOptions()).encode()
        #expect(try Hello.decode(plain).options.filters.isEmpty)
        #expect(throws: TransferError.self) { try Hello.decode(plain + [9]) }
        // Found by the fuzzer: an extension that says nothing has no second encoding.
        #expect(throws: TransferError.self) { try Hello.decode(plain + [1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]) }
    }

    @Test("deletion removes by name beneath its root only: no '..', not the root, not through a symlink, not Ferry's helper files, not a kind that changed")
    func confinedRemoval() throws {
        let base = FileManager.default.temporaryDirectory.path + "/ferry-del-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let root = base + "/root"
        try FileManager.default.createDirectory(atPath: root + "/d", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: base + "/outside", withIntermediateDirectories: true)
        for p in [root + "/f", root + "/d/g", base + "/outside/o", root + "/.h.ferry-part"] { FileManager.default.createFile(atPath: p, contents: Data([1])) }
        symlink("../outside", root + "/link")
        let fd = open(root, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        #expect(Listing.remove(beneath: fd, path: "../outside/o", isDirectory: false) != nil)
        #expect(Listing.remove(beneath: fd, path: "", isDirectory: true) != nil)
        #expect(Listing.remove(beneath: fd, path: "link/o", isDirectory: false) != nil)
        #expect(Listing.remove(beneath: fd, path: "/etc/passwd", isDirectory: false) != nil)
        #expect(Listing.remove(beneath: fd, path: "f", isDirectory: true) != nil, "a file named as a directory is left")
        #expect(Listing.remove(beneath: fd, path: ".h.ferry-part", isDirectory: false) != nil && FileManager.default.fileExists(atPath: root + "/.h.ferry-part"))
        #expect(Listing.remove(beneath: fd, path: "d", isDirectory: true) != nil, "a directory with entries is left")
        #expect(FileManager.default.fileExists(atPath: base + "/outside/o") && FileManager.default.fileExists(atPath: root + "/f"))
        // What may go, goes; a link is removed itself, its target stays.
        #expect(Listing.remove(beneath: fd, path: "d/g", isDirectory: false) == nil)
        #expect(Listing.remove(beneath: fd, path: "d", isDirectory: true) == nil)
        #expect(Listing.remove(beneath: fd, path: "link", isDirectory: false) == nil)
        #expect(Listing.remove(beneath: fd, path: "gone-already", isDirectory: false) == nil)
        #expect(!FileManager.default.fileExists(atPath: root + "/d") && FileManager.default.fileExists(atPath: base + "/outside/o"))
    }
}
