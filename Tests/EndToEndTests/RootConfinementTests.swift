// Paths that try to leave the server's root: refused for reading and writing, nothing written
// outside the root, nothing read from outside it.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A server root with escape hatches, and an "outside" directory next to it whose state is
/// recorded so the test can prove nothing there changed.
final class EscapeFixture {
    let sb: Sandbox
    let root: String
    let outside: String
    let local: String
    let secret = Array("outside secret: must never leave or change\n".utf8)
    let server: FerryServer
    private let outsideBefore: [String: FileMeta]
    private let sandboxTopBefore: Set<String>

    init(_ name: String) throws {
        sb = try Sandbox(name)
        root = try sb.dir("served")
        outside = try sb.dir("elsewhere")
        local = try sb.dir("local")
        try sb.dir("served/sub")
        try sb.dir("served/tree2")
        try sb.dir("elsewhere/dir")
        try writeFile(outside + "/secret.txt", secret)
        try writeFile(outside + "/dir/secret.txt", secret)
        try writeFile(root + "/inside.txt", Array("inside\n".utf8))
        symlink("../elsewhere", root + "/link-out-dir")
        symlink(outside, root + "/link-out-abs")
        symlink("../elsewhere/secret.txt", root + "/link-out-file")
        symlink("../../elsewhere", root + "/tree2/sub")
        try writeFile(local + "/payload.txt", Array("payload from the client\n".utf8))
        try sb.dir("local/tree/sub")
        try writeFile(local + "/tree/sub/secret.txt", Array("overwrite attempt\n".utf8))
        try writeFile(local + "/tree/top.txt", Array("top\n".utf8))
        outsideBefore = EscapeFixture.snapshot(outside)
        sandboxTopBefore = Set(listDirectory(sb.path) ?? [])
        server = try FerryServer(sb, root: root)
    }

    static func snapshot(_ dir: String) -> [String: FileMeta] {
        var m: [String: FileMeta] = [:]
        for rel in walkTree(dir) { m[rel] = meta(dir + "/" + rel) }
        return m
    }

    /// Differences in outside/ and new entries at the sandbox's top level since the start.
    func outsideChanges() -> [String] {
        var changes: [String] = []
        let now = EscapeFixture.snapshot(outside)
        for (rel, m) in now where outsideBefore[rel] != m {
            changes.append("outside/\(rel): \(outsideBefore[rel]?.description ?? "new") -> \(m)")
        }
        for rel in outsideBefore.keys where now[rel] == nil { changes.append("outside/\(rel) removed") }
        if readFile(outside + "/secret.txt") != secret { changes.append("outside/secret.txt content") }
        if readFile(outside + "/dir/secret.txt") != secret { changes.append("outside/dir/secret.txt content") }
        let top = Set(listDirectory(sb.path) ?? []).subtracting(sandboxTopBefore)
        for name in top { changes.append("new entry beside the root: \(name)") }
        return changes
    }

    /// Regular files beneath `dir` whose content is the outside secret.
    func leakedSecrets(in dir: String) -> [String] {
        guard exists(dir) else { return [] }
        if meta(dir)?.kind == .file { return readFile(dir) == secret ? [dir] : [] }
        return walkTree(dir).filter {
            meta(dir + "/" + $0)?.kind == .file && readFile(dir + "/" + $0) == secret
        }
    }

    func url(_ path: String) -> String { server.url(path) }
}

/// A refusal: non-zero exit, not a crash or a hang, and a message saying why.
func expectRefused(_ r: CpResult, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.status != 0 && !r.signaled && !r.timedOut, "\(what) was not refused: \(r)",
        sourceLocation: sourceLocation)
    #expect(r.status == 1 || r.status == 64, "\(what): exit status \(r.status): \(r)",
        sourceLocation: sourceLocation)
    let m = r.allMessages.lowercased()
    // (The fixture's names avoid these words, so a path echoed back cannot pass for a reason.)
    let words = ["root", "outside", "beneath", "escape", "not allowed", "refused", "denied",
                 "invalid", "permission", "absolute", "symlink", "symbolic link"]
    #expect(words.contains { m.contains($0) }, "\(what): message does not say why: \(r)",
        sourceLocation: sourceLocation)
    if let e = r.error {
        #expect(e.resumable == false, "\(what): a refusal is not resumable: \(e.message)",
            sourceLocation: sourceLocation)
    } else if r.status == 1 {
        Issue.record("\(what): no {\"type\":\"error\"} line: \(r)", sourceLocation: sourceLocation)
    }
}

@Suite("Root confinement")
struct RootConfinementTests {
    @Test("push: ../, absolute paths and symlinks leading out are refused; nothing written outside")
    func pushEscapes() throws {
        let f = try EscapeFixture("confine-push")
        defer { f.server.stop() }
        let payload = f.local + "/payload.txt"
        let attempts: [String] = [
            "../x",
            "../elsewhere/pushed.txt",
            "sub/../../elsewhere/pushed.txt",
            f.outside + "/pushed.txt",  // ferry://h:p//abs/path
            "link-out-dir/pushed.txt",
            "link-out-abs/pushed.txt",
            "link-out-dir/dir/secret.txt",
            "link-out-dir/",
        ]
        for a in attempts {
            let r = try f.sb.cp(payload, f.url(a), timeout: 60)
            expectRefused(r, "push to \(a)")
        }
        let tree = try f.sb.cp(f.local + "/tree", f.url("link-out-dir/tree"), options: ["-r"], timeout: 60)
        expectRefused(tree, "push -r into link-out-dir/tree")

        // A symlink as the last component, and a tree whose destination holds a symlink
        // leading out: replacing the link is fine, writing through it is not.
        let onLink = try f.sb.cp(payload, f.url("link-out-file"), timeout: 60)
        #expect(!onLink.timedOut && !onLink.signaled, "\(onLink)")
        let intoLinkedTree = try f.sb.cp(f.local + "/tree", f.url("tree2"), options: ["-r"], timeout: 60)
        #expect(!intoLinkedTree.timedOut && !intoLinkedTree.signaled, "\(intoLinkedTree)")

        let changes = f.outsideChanges()
        #expect(changes.isEmpty, "written outside the root: \(changes)")
        #expect(f.server.isRunning)

        // The server still accepts a legitimate push.
        let ok = try f.sb.cp(payload, f.url("sub/ok.txt"))
        #expect(ok.succeeded, "\(ok)")
        #expect(filesIdentical(payload, f.root + "/sub/ok.txt"))
    }

    @Test("pull: ../, absolute paths and symlinks leading out are refused; nothing read from outside")
    func pullEscapes() throws {
        let f = try EscapeFixture("confine-pull")
        defer { f.server.stop() }
        let attempts: [String] = [
            "../elsewhere/secret.txt",
            "sub/../../elsewhere/secret.txt",
            f.outside + "/secret.txt",  // ferry://h:p//abs/path
            "link-out-dir/secret.txt",
            "link-out-abs/secret.txt",
            "link-out-dir/dir/secret.txt",
        ]
        for (i, a) in attempts.enumerated() {
            let dst = f.local + "/pulled-\(i).txt"
            let r = try f.sb.cp(f.url(a), dst, timeout: 60)
            expectRefused(r, "pull of \(a)")
            #expect(!exists(dst), "pull of \(a) created \(dst)")
        }
        let treeDst = f.local + "/pulled-tree"
        let tree = try f.sb.cp(f.url("link-out-dir/dir"), treeDst, options: ["-r"], timeout: 60)
        expectRefused(tree, "pull -r of link-out-dir/dir")
        #expect(f.leakedSecrets(in: treeDst).isEmpty, "secret leaked into \(treeDst)")

        // A symlink leading out, pulled by its own name: refused, or copied as a link; never
        // its target's content.
        let linkDst = f.local + "/pulled-link"
        let link = try f.sb.cp(f.url("link-out-file"), linkDst, timeout: 60)
        #expect(!link.timedOut && !link.signaled, "\(link)")
        #expect(f.leakedSecrets(in: linkDst).isEmpty, "pull of link-out-file followed the link out")

        // The whole root with -r: the escaping links come as links, never as content.
        let all = f.local + "/whole-root"
        let whole = try f.sb.cp(f.url(""), all, options: ["-r"], timeout: 60)
        #expect(whole.succeeded, "\(whole)")
        #expect(meta(all + "/link-out-dir")?.kind == .symlink, "\(meta(all + "/link-out-dir")?.description ?? "missing")")
        #expect(meta(all + "/link-out-file")?.kind == .symlink)
        #expect(meta(all + "/tree2/sub")?.kind == .symlink)
        #expect(filesIdentical(f.root + "/inside.txt", all + "/inside.txt"))
        #expect(f.leakedSecrets(in: all).isEmpty, "secret leaked: \(f.leakedSecrets(in: all))")

        #expect(f.outsideChanges().isEmpty, "\(f.outsideChanges())")
        #expect(f.server.isRunning)
    }
}
