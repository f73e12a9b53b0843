// Trees (-r): metadata, symlinks, empty directories, odd names, many files, deep nesting, sync.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Trees")
struct TreeTests {
    /// A fixed past time with a sub-second part, so that a kept mtime is recognisable.
    static let oldSeconds = 1_234_567_890
    static let oldNanoseconds = 123_456_789

    /// Builds a tree with the features a user cares about; returns the path of the symlink
    /// that points outside the tree and the place it points to.
    static func buildFeatureTree(_ src: String, outside: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: src + "/bin", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: src + "/private", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: src + "/empty", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: src + "/nested/empty/deeper", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: src + "/dir with spaces", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: src + "/ünïcödé ディレクトリ", withIntermediateDirectories: true)

        try writeFile(src + "/README.txt", Array("hello ferry\n".utf8))
        try writeRandomFile(src + "/bin/tool", size: 70_000)
        chmod(src + "/bin/tool", 0o755)
        try writeFile(src + "/private/secret.key", Array("k3y\n".utf8))
        chmod(src + "/private/secret.key", 0o600)
        chmod(src + "/private", 0o700)
        try writeFile(src + "/readonly.txt", Array("ro\n".utf8))
        chmod(src + "/readonly.txt", 0o444)
        try writeFile(src + "/dir with spaces/file with spaces.txt", Array("spaces\n".utf8))
        try writeFile(src + "/ünïcödé ディレクトリ/ファイル 🚀.dat", randomBytes(3000))
        try writeFile(src + "/nested/empty-file", [])
        try fm.createDirectory(atPath: src + "/.config", withIntermediateDirectories: true)
        try writeFile(src + "/.hidden", Array("dot file\n".utf8))
        try writeFile(src + "/.config/settings.ini", Array("[a]\nb=c\n".utf8))
        try writeFile(src + "/looks like.ferry-part", Array("not a helper file\n".utf8))
        try writeRandomFile(src + "/nested/multi-chunk.bin", size: 9 * E2E.MiB + 5)

        // Symlinks: relative inside, to a directory, dangling, absolute outside, relative outside.
        symlink("../README.txt", src + "/bin/readme-link")
        symlink("dir with spaces", src + "/link-to-dir")
        symlink("does/not/exist", src + "/dangling")
        symlink(outside + "/target.txt", src + "/abs-outside")
        symlink("../outside/target.txt", src + "/rel-outside")

        // mtimes: a fixed old time on files (set after writing), and on directories last.
        for rel in [
            "README.txt", "bin/tool", "private/secret.key", "readonly.txt",
            "dir with spaces/file with spaces.txt", "ünïcödé ディレクトリ/ファイル 🚀.dat",
            "nested/empty-file", "nested/multi-chunk.bin",
        ] {
            try setMtime(src + "/" + rel, seconds: oldSeconds, nanoseconds: oldNanoseconds)
        }
        for (i, rel) in ["empty", "nested/empty/deeper", "nested/empty", "bin", "nested"].enumerated() {
            try setMtime(src + "/" + rel, seconds: oldSeconds + 1000 * (i + 1))
        }
    }

    @Test("tree push and pull: content, mode, mtime, symlinks as links, empty dirs, odd names")
    func featureTree() throws {
        let sb = try Sandbox("tree")
        let root = try sb.dir("root")
        let outside = try sb.dir("outside")
        try writeFile(outside + "/target.txt", Array("outside, must stay untouched\n".utf8))
        let src = sb.file("src")
        try Self.buildFeatureTree(src, outside: outside)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let push = try sb.cp(src, server.url("tree"), options: ["-r"])
        #expect(push.succeeded, "\(push)")
        let pushed = root + "/tree"
        let pushDiffs = treeDifferences(src, pushed)
        #expect(pushDiffs.isEmpty, "push: \(pushDiffs)")
        // The symlink pointing outside is a link at the destination, not a copy of its target.
        #expect(meta(pushed + "/abs-outside")?.kind == .symlink)
        #expect(meta(pushed + "/abs-outside")?.linkTarget == outside + "/target.txt")
        #expect(meta(pushed + "/rel-outside")?.kind == .symlink)
        #expect(meta(pushed + "/dangling")?.kind == .symlink)
        #expect(meta(pushed + "/link-to-dir")?.kind == .symlink)
        #expect(meta(pushed + "/empty")?.kind == .dir)
        #expect(meta(pushed + "/nested/empty/deeper")?.kind == .dir)
        #expect(ferryLeftovers(pushed) == ferryLeftovers(src), "\(ferryLeftovers(pushed))")
        if let s = push.summary {
            #expect(s.files == 11, "11 regular files in the tree: \(s)")
        } else {
            Issue.record("no summary: \(push)")
        }

        let pulled = sb.file("pulled")
        let pull = try sb.cp(server.url("tree"), pulled, options: ["-r"])
        #expect(pull.succeeded, "\(pull)")
        let pullDiffs = treeDifferences(src, pulled)
        #expect(pullDiffs.isEmpty, "pull: \(pullDiffs)")
        #expect(meta(pulled + "/abs-outside")?.kind == .symlink)
        #expect(ferryLeftovers(pulled) == ferryLeftovers(src), "\(ferryLeftovers(pulled))")
        #expect(readFile(outside + "/target.txt") == Array("outside, must stay untouched\n".utf8))
    }

    /// Directory permissions and modification times are kept too (like rsync -a).
    @Test("tree: directory mode and mtime kept")
    func directoryMetadata() throws {
        let sb = try Sandbox("dirmeta")
        let root = try sb.dir("root")
        let src = try sb.dir("src")
        try sb.dir("src/a/b")
        try sb.dir("src/empty")
        try writeFile(src + "/a/b/f.txt", Array("x\n".utf8))
        chmod(src + "/a", 0o750)
        chmod(src + "/a/b", 0o711)
        chmod(src + "/empty", 0o705)
        try setMtime(src + "/a/b", seconds: Self.oldSeconds + 10)
        try setMtime(src + "/a", seconds: Self.oldSeconds + 20)
        try setMtime(src + "/empty", seconds: Self.oldSeconds + 30)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let push = try sb.cp(src, server.url("t"), options: ["-r"])
        #expect(push.succeeded, "\(push)")
        let d1 = treeDifferences(src, root + "/t", checkDirMtime: true)
        #expect(d1.isEmpty, "push: \(d1)")

        let pulled = sb.file("pulled")
        let pull = try sb.cp(server.url("t"), pulled, options: ["-r"])
        #expect(pull.succeeded, "\(pull)")
        let d2 = treeDifferences(src, pulled, checkDirMtime: true)
        #expect(d2.isEmpty, "pull: \(d2)")
    }

    @Test("tree of 10,000 small files, push and pull")
    func manySmallFiles() throws {
        let sb = try Sandbox("many")
        let root = try sb.dir("root")
        let src = try sb.dir("src")
        let pool = randomBytes(8192)
        var total = 0
        for d in 0..<100 {
            let dir = src + String(format: "/d%02d/sub%d", d, d % 7)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            for f in 0..<100 {
                let size = (d * 100 + f) * 37 % 4097  // 0 ... 4096 bytes
                let start = (d * 131 + f * 17) % 4096
                try writeFile(dir + String(format: "/f%03d.dat", f), Array(pool[start..<(start + size)]))
                total += size
            }
        }
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let t0 = monotonicSeconds()
        let push = try sb.cp(src, server.url("many"), options: ["-r"], timeout: 240)
        let pushSeconds = monotonicSeconds() - t0
        #expect(push.succeeded, "\(push)")
        if let s = push.summary {
            #expect(s.files == 10_000, "\(s)")
            #expect(s.bytes == total, "\(s)")
        } else {
            Issue.record("no summary: \(push)")
        }
        let d1 = treeDifferences(src, root + "/many")
        #expect(d1.isEmpty, "push: \(d1)")

        let pulled = sb.file("pulled")
        let pull = try sb.cp(server.url("many"), pulled, options: ["-r"], timeout: 240)
        #expect(pull.succeeded, "\(pull)")
        let d2 = treeDifferences(src, pulled)
        #expect(d2.isEmpty, "pull: \(d2)")
        print("10,000 files: push took \(String(format: "%.1f", pushSeconds)) s (debug build)")
    }

    @Test("deep nesting: 100 levels")
    func deepNesting() throws {
        let sb = try Sandbox("deep")
        let root = try sb.dir("root")
        let src = try sb.dir("src")
        var rel = ""
        for level in 0..<100 {
            rel += (rel.isEmpty ? "" : "/") + String(format: "level-%03d", level)
            if level % 25 == 0 {
                try FileManager.default.createDirectory(
                    atPath: src + "/" + rel, withIntermediateDirectories: true)
                try writeFile(src + "/" + rel + "/file-at-\(level).txt", Array("depth \(level)\n".utf8))
            }
        }
        try FileManager.default.createDirectory(atPath: src + "/" + rel + "/empty-bottom",
            withIntermediateDirectories: true)
        try writeRandomFile(src + "/" + rel + "/bottom.bin", size: 100_000)
        symlink("bottom.bin", src + "/" + rel + "/bottom-link")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let push = try sb.cp(src, server.url("deep"), options: ["-r"])
        #expect(push.succeeded, "\(push)")
        let d1 = treeDifferences(src, root + "/deep")
        #expect(d1.isEmpty, "push: \(d1)")

        let pulled = sb.file("pulled")
        let pull = try sb.cp(server.url("deep"), pulled, options: ["-r"])
        #expect(pull.succeeded, "\(pull)")
        let d2 = treeDifferences(src, pulled)
        #expect(d2.isEmpty, "pull: \(d2)")
    }

    /// Re-running the same copy skips everything; `--checksum` finds a file whose content
    /// changed while its size and mtime did not.
    @Test("rerun skips everything; --checksum re-sends a same-size same-mtime change")
    func syncAndChecksum() throws {
        let sb = try Sandbox("sync")
        let root = try sb.dir("root")
        let src = try sb.dir("src")
        try sb.dir("src/sub")
        for i in 0..<20 {
            try writeRandomFile(src + "/sub/f\(i).bin", size: 1000 * i + 1)
        }
        try writeRandomFile(src + "/big.bin", size: 6 * E2E.MiB)
        try writeRandomFile(src + "/victim.bin", size: 20_000)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let first = try sb.cp(src, server.url("mirror"), options: ["-r"])
        #expect(first.succeeded, "\(first)")
        #expect(treeDifferences(src, root + "/mirror").isEmpty)
        let s1 = try #require(first.summary, "\(first)")
        #expect(s1.files == 22, "\(s1)")

        let again = try sb.cp(src, server.url("mirror"), options: ["-r"])
        #expect(again.succeeded, "\(again)")
        let s2 = try #require(again.summary, "\(again)")
        #expect(s2.wireBytes == 0, "rerun sent data: \(s2)")
        #expect(s2.skippedBytes == s2.bytes && s2.bytes == s1.bytes, "\(s2) vs first \(s1)")
        #expect(s2.filesSkipped == s2.files, "\(s2)")

        // Same size, same mtime, different content.
        let victim = src + "/victim.bin"
        let before = try #require(meta(victim))
        try writeRandomFile(victim, size: 20_000)
        try setMtime(victim, seconds: before.mtimeSeconds, nanoseconds: before.mtimeNanoseconds)
        #expect(meta(victim)?.mtimeSeconds == before.mtimeSeconds)

        let checked = try sb.cp(src, server.url("mirror"), options: ["-r", "--checksum"])
        #expect(checked.succeeded, "\(checked)")
        #expect(filesIdentical(victim, root + "/mirror/victim.bin"), "--checksum did not re-send")
        let diffs = treeDifferences(src, root + "/mirror")
        #expect(diffs.isEmpty, "\(diffs)")
        let s3 = try #require(checked.summary, "\(checked)")
        #expect(s3.wireBytes > 0, "\(s3)")
        #expect(s3.wireBytes < 2 * E2E.MiB, "only the changed file should travel: \(s3)")
        #expect(s3.filesSkipped == s3.files - 1, "\(s3)")

        // The same for pulls: a second identical pull sends nothing.
        let pulled = sb.file("pulled")
        let pull = try sb.cp(server.url("mirror"), pulled, options: ["-r"])
        #expect(pull.succeeded, "\(pull)")
        #expect(treeDifferences(src, pulled).isEmpty, "\(treeDifferences(src, pulled))")
        let pullAgain = try sb.cp(server.url("mirror"), pulled, options: ["-r"])
        #expect(pullAgain.succeeded, "\(pullAgain)")
        let s4 = try #require(pullAgain.summary, "\(pullAgain)")
        #expect(s4.wireBytes == 0, "pull rerun sent data: \(s4)")
        #expect(s4.skippedBytes == s4.bytes && s4.bytes == s1.bytes, "\(s4) vs first \(s1)")
        #expect(s4.filesSkipped == s4.files, "\(s4)")
    }
}
