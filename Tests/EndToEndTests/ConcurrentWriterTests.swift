// Two sessions writing one destination at once (a command started twice, two jobs staging the
// same file): each whole file's partial copy is claimed by one session (an open-file-description
// lock, `PartialNames` "Claims"), so the other is refused as busy instead of writing into it;
// the file that lands is always one whole source, never chunks of both, and the session that
// says "verified" is the one whose bytes are there. A stream's partial copy (which nothing can
// resume) is removed when its session breaks.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Holds a lock on a file the way another session's claim does (a record lock of this test
/// process, which conflicts with the server's open-file-description lock), until `release`.
private final class HeldPartial {
    let fd: Int32
    init(_ path: String, content: String) throws {
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw HarnessError("open \(path): errno \(errno)") }
        _ = content.withCString { write(fd, $0, strlen($0)) }
        var fl = flock()
        fl.l_type = Int16(F_WRLCK)
        fl.l_whence = Int16(SEEK_SET)
        guard fcntl(fd, F_SETLK, &fl) == 0 else { throw HarnessError("lock \(path): errno \(errno)") }
    }
    func release() { close(fd) }
}

@Suite("One destination, two writers")
struct ConcurrentWriterTests {
    @Test("two pushes of one file at once: the second is refused as busy, the first lands whole, a rerun replaces it whole")
    func twoPushes() throws {
        let sb = try Sandbox("two-writers")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        try writeRandomFile(local + "/a.bin", size: 64 * E2E.MiB)
        try writeRandomFile(local + "/b.bin", size: 64 * E2E.MiB)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        // A, slowed down so that B starts while A writes.
        let a = try sb.startCp(local + "/a.bin", server.url("f.bin"), options: ["--bwlimit", "24M"])
        guard waitForProgress(a, fraction: 0.05, timeout: 60) != nil, a.isRunning else {
            Issue.record("the first push was never seen under way: \(sb.finish(a, timeout: 5))")
            return
        }
        let b = try sb.cp(local + "/b.bin", server.url("f.bin"), timeout: 120)
        #expect(b.status == 1, "the second writer: \(b)")
        #expect(b.allMessages.contains("another transfer is writing it now"), "\(b)")
        #expect(b.summary == nil, "a summary from the refused writer: \(b)")
        let ra = sb.finish(a, timeout: 120)
        #expect(ra.succeeded, "the first writer: \(ra)")
        #expect(filesIdentical(local + "/a.bin", root + "/f.bin"), "the file is not the first writer's source")
        #expect(ferryLeftovers(root).isEmpty, "\(ferryLeftovers(root))")

        // Once A has ended, B's rerun writes its own source, whole.
        let again = try sb.cp(local + "/b.bin", server.url("f.bin"))
        #expect(again.succeeded, "\(again)")
        #expect(filesIdentical(local + "/b.bin", root + "/f.bin"), "the rerun did not land the second source")
        #expect(ferryLeftovers(root).isEmpty, "\(ferryLeftovers(root))")
    }

    @Test("a partial another session holds is never written into: small and large files fail as busy, and land once it is let go")
    func heldPartials() throws {
        let sb = try Sandbox("held-partial")
        let root = try sb.dir("root")
        let tree = try sb.dir("local/t")
        try writeRandomFile(tree + "/small.bin", size: 4096)  // one chunk: the batch path
        try writeRandomFile(tree + "/large.bin", size: 9 * E2E.MiB)  // three chunks: journal and partial
        try writeRandomFile(tree + "/other.bin", size: 4096)
        try writeRandomFile(tree + "/readonly.bin", size: 100)  // a 0444 file: its partial is 0600 until renamed
        chmod(tree + "/readonly.bin", 0o444)
        _ = try sb.dir("root/t")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let small = try HeldPartial(root + "/t/.small.bin.ferry-part", content: "held by another session")
        let large = try HeldPartial(root + "/t/.large.bin.ferry-part", content: "held by another session")

        let r = try sb.cp(tree, server.url("t"), options: ["-r", "-v", "--chunk-size", "4M"], json: false)
        #expect(r.status == 1, "\(r)")
        for name in ["small.bin", "large.bin"] {
            #expect((r.stdout + r.allMessages).contains("cannot write '\(name)': another transfer is writing it now"), "\(name): \(r)")
            #expect(!exists(root + "/t/" + name), "\(name) was put in place although its partial was held")
            let held = (try? String(contentsOfFile: root + "/t/.\(name).ferry-part", encoding: .utf8)) ?? ""
            #expect(held == "held by another session", "the held partial of \(name) was written into: \(held.prefix(40))")
        }
        #expect(filesIdentical(tree + "/other.bin", root + "/t/other.bin"), "the file nobody held did not land")

        small.release()
        large.release()
        let again = try sb.cp(tree, server.url("t"), options: ["-r", "--chunk-size", "4M"])
        #expect(again.succeeded, "\(again)")
        for name in ["small.bin", "large.bin", "other.bin", "readonly.bin"] {
            #expect(filesIdentical(tree + "/" + name, root + "/t/" + name), "\(name) differs after the rerun")
        }
        #expect(IdentityTests.owner(root + "/t/readonly.bin")?.mode == 0o444, "the 0444 file landed with mode \(String(IdentityTests.owner(root + "/t/readonly.bin")?.mode ?? 0, radix: 8))")
        #expect(ferryLeftovers(root).isEmpty, "the leftovers of the ended session stay: \(ferryLeftovers(root))")
    }

    @Test("a stream's partial copy is removed when its session breaks (nothing can resume it)")
    func streamPartialRemoved() throws {
        let sb = try Sandbox("stream-partial")
        let root = try sb.dir("root")
        let src = try sb.dir("local") + "/in.bin"
        try writeRandomFile(src, size: 6 * E2E.MiB)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let fifo = sb.file("in.fifo")
        guard mkfifo(fifo, 0o644) == 0 else { throw HarnessError("mkfifo: errno \(errno)") }
        // The writer sends some bytes and keeps the FIFO open: the stream never ends by itself.
        let writer = try FerryShell("(cat '\(src)'; sleep 60) > '\(fifo)'", logDir: sb.path + "/logs")
        let cp = try sb.startCp(fifo, server.url("streamed.bin"), options: ["--chunk-size", "1M"])
        let arrived = waitUntil(timeout: 60) {
            (listDirectory(root) ?? []).contains(".streamed.bin.ferry-part") && (fileSize(root + "/.streamed.bin.ferry-part") ?? 0) >= E2E.MiB
        }
        #expect(arrived, "the stream's partial copy never grew on the server")
        cp.kill9()
        _ = sb.finish(cp, timeout: 10)
        let gone = waitUntil(timeout: 30) { ferryLeftovers(root).isEmpty }
        #expect(gone, "the broken stream's partial copy stays: \(ferryLeftovers(root))")
        #expect(!exists(root + "/streamed.bin"), "a broken stream was put in place")
    }
}
