// Selections (issue 19's files parts, and rsync's --files-from): a copy of only the listed
// paths of a directory, with their parent directories. Several disjoint selections of one
// tree, pushed or pulled at once, make the whole tree; what is not a path beneath the source,
// or not there, is refused before anything is copied.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Selections (--files-from)")
struct SelectionTests {
    /// A tree of `n` files in nested directories (a few multi-chunk), plus a symbolic link.
    static func makeTree(_ root: String, files n: Int) throws -> [String] {
        var paths: [String] = []
        for i in 0..<n {
            let dir = "d\(i % 4)/e\(i % 3)"
            try FileManager.default.createDirectory(atPath: root + "/" + dir, withIntermediateDirectories: true)
            let path = dir + "/f\(i).bin"
            try writeRandomFile(root + "/" + path, size: i % 10 == 0 ? 5 * E2E.MiB + i : 1000 + 37 * i)
            paths.append(path)
        }
        symlink("d0/e0/f0.bin", root + "/link")
        paths.append("link")
        // Two names that Swift's String equality takes for one (NFC and NFD): two files on disk.
        if n > 0 {
            for name in ["caf\u{e9}.txt", "cafe\u{301}.txt"] {
                try writeFile(root + "/" + name, Array(name.utf8))
                paths.append(name)
            }
        }
        return paths
    }

    /// A list file in rsync's form; `crlf`: with DOS line ends.
    static func listFile(_ sb: Sandbox, _ name: String, _ paths: [String], crlf: Bool = false) throws -> String {
        let f = sb.file(name)
        let end = crlf ? "\r\n" : "\n"
        try writeFile(f, Array(("# part \(name)" + end + paths.map { "./" + $0 }.joined(separator: end) + end).utf8))
        return f
    }

    @Test("three disjoint selections of one tree, pushed at once and pulled at once, make the whole tree; nothing else is copied")
    func disjointSelections() throws {
        let sb = try Sandbox("select")
        let root = try sb.dir("root")
        let src = try sb.dir("src")
        let pulled = try sb.dir("pulled")
        let paths = try SelectionTests.makeTree(src, files: 60)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let parts = (0..<3).map { k in paths.enumerated().filter { $0.offset % 3 == k }.map(\.element) }
        let lists = try parts.enumerated().map { try SelectionTests.listFile(sb, "part\($0.offset).txt", $0.element, crlf: $0.offset == 1) }
        // One part alone: exactly its files, with their directories, and nothing else.
        let one = try sb.cp(src, server.url("one"), options: ["--files-from", lists[0]])
        #expect(one.succeeded, "\(one)")
        // Compared by bytes: a Set of Strings would take the NFC and NFD names for one.
        let got = Set(walkTree(root + "/one").filter { meta(root + "/one/" + $0)?.kind != .dir }.map { Array($0.utf8) })
        #expect(got == Set(parts[0].map { Array($0.utf8) }), "\(walkTree(root + "/one")) vs \(parts[0])")
        // All three at once, both ways.
        let pushes = try lists.map { try sb.startCp(src, server.url("tree"), options: ["--files-from", $0]) }
        for p in pushes { let r = sb.finish(p, timeout: 180); #expect(r.succeeded, "\(r)") }
        #expect(treeDifferences(src, root + "/tree", checkMetadata: true).isEmpty, "\(treeDifferences(src, root + "/tree"))")
        let pulls = try lists.map { try sb.startCp(server.url("tree"), pulled + "/tree", options: ["--files-from", $0]) }
        for p in pulls { let r = sb.finish(p, timeout: 180); #expect(r.succeeded, "\(r)") }
        #expect(treeDifferences(src, pulled + "/tree", checkMetadata: true).isEmpty, "\(treeDifferences(src, pulled + "/tree"))")
        #expect(ferryLeftovers(root).isEmpty && ferryLeftovers(pulled).isEmpty)
    }

    @Test("a selection naming a path out of the source, a helper file, or a path that is not there is refused before anything is copied; a pull's SELECTION frame is checked by the server")
    func refusedSelections() throws {
        let sb = try Sandbox("select-bad")
        let root = try sb.dir("root")
        let src = try sb.dir("src")
        _ = try sb.dir("secret")
        try writeFile(sb.path + "/secret/key", Array("do not copy\n".utf8))
        try writeFile(root + "/secret-at-server", Array("do not copy\n".utf8))
        let paths = try SelectionTests.makeTree(src, files: 6)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        for (name, list, says, status) in [
            ("up", ["../secret/key"], "leaves its root or is not normalised", Int32(64)),
            ("abs", ["/etc/passwd"], "leaves its root or is not normalised", 64),
            ("dots", ["d0/../../secret/key"], "leaves its root or is not normalised", 64),
            ("missing", [paths[0], "d0/no-such-file", "nowhere/x"], "2 listed paths do not exist", 1),
            ("helper", [".f.bin.ferry-part"], "helper file", 64),
        ] {
            let f = try SelectionTests.listFile(sb, name + ".txt", list)
            let push = try sb.cp(src, server.url(name), options: ["--files-from", f])
            #expect(push.status == status && push.allMessages.contains(says), "\(name): \(push)")
            #expect(!FileManager.default.fileExists(atPath: root + "/" + name), "\(name): something was copied")
        }
        // A pull of a path out of the server's root, past the client's own checks: the raw
        // client sends HELLO extension 3 (one path) and a SELECTION frame naming ../secret.
        func le(_ v: UInt64, _ n: Int) -> String { (0..<n).map { String(format: "%02x", (v >> (8 * UInt64($0))) & 0xFF) }.joined() }
        let path = Array("../secret/key".utf8)
        let payload = le(1, 4) + le(UInt64(path.count), 2) + path.map { String(format: "%02x", $0) }.joined()
        let frame = le(UInt64(payload.count / 2), 4) + "14" + "00" + "0000" + payload
        let a = try RawClientTests.hello(sb, port: server.port, token: sb.token, push: false, path: "", recursive: true,
                                         extensionHex: "03" + "ffffffff" + "0000" + le(1, 4), after: frame)
        #expect(a.type == 0x7F && a.message.contains("leaves its root or is not normalised"), "\(a)")
        // A listed path that is not there, at the server: refused whole.
        let f = try SelectionTests.listFile(sb, "remote-missing.txt", ["secret-at-server", "no-such"])
        let pull = try sb.cp(server.url(""), sb.path + "/pulled", options: ["--files-from", f])
        #expect(pull.status == 1 && pull.allMessages.contains("1 listed path does not exist"), "\(pull)")
        #expect(!FileManager.default.fileExists(atPath: sb.path + "/pulled/secret-at-server"))
    }
}
