// kill -9 of either side half way, then a rerun that sends only what is missing.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct KillCase: Sendable, CustomTestStringConvertible {
    enum Direction: String, Sendable { case push, pull }
    enum Victim: String, Sendable { case server, client }
    let direction: Direction
    let victim: Victim

    var isReceiverKilled: Bool {
        (direction == .push && victim == .server) || (direction == .pull && victim == .client)
    }
    var testDescription: String {
        "\(direction.rawValue), kill -9 the \(victim.rawValue) (\(isReceiverKilled ? "receiver" : "sender"))"
    }

    static let all: [KillCase] = [
        KillCase(direction: .push, victim: .server),
        KillCase(direction: .push, victim: .client),
        KillCase(direction: .pull, victim: .client),
        KillCase(direction: .pull, victim: .server),
    ]
}

/// Starts a slowed-down copy, waits (bounded) until `--json` progress reports at least
/// `fraction` of the bytes done, and returns the last progress seen (nil if the copy ended or
/// the wait timed out first).
func waitForProgress(_ cp: FerryProcess, fraction: Double, timeout: Double = 120) -> Progress? {
    var seen: Progress?
    waitUntil(timeout: timeout, interval: 0.02) {
        if let p = cp.lastProgress, p.bytesTotal > 0,
            Double(p.bytesDone) >= fraction * Double(p.bytesTotal)
        {
            seen = p
            return true
        }
        return !cp.isRunning
    }
    return seen
}

@Suite("Resume after kill -9")
struct ResumeTests {
    @Test("kill -9 half way, rerun resumes", arguments: KillCase.all)
    func killHalfWay(_ c: KillCase) throws {
        let sb = try Sandbox("kill-\(c.direction)-\(c.victim)")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let size = 256 * E2E.MiB
        let (srcPath, dstPath, dstDir) =
            c.direction == .push
            ? (local + "/big.bin", root + "/big.bin", root)
            : (root + "/big.bin", local + "/big.bin", local)
        try writeRandomFile(srcPath, size: size)

        var server = try FerryServer(sb, root: root)
        func endpoints(_ s: FerryServer) -> (String, String) {
            c.direction == .push ? (srcPath, s.url("big.bin")) : (s.url("big.bin"), dstPath)
        }
        var (from, to) = endpoints(server)
        let first = try sb.startCp(from, to, options: ["--bwlimit", "32M"])
        let progress = waitForProgress(first, fraction: 0.5)
        guard let progress else {
            let r = sb.finish(first, timeout: 5)
            server.stop()
            Issue.record("never saw progress ≥ 50 % before the copy ended: \(r)")
            return
        }
        #expect(progress.bytesTotal == size)

        switch c.victim {
        case .server:
            server.kill9()
            let r = sb.finish(first, timeout: 60)
            #expect(!r.timedOut, "client did not give up within 60 s after the server died: \(r)")
            #expect(r.status == 1, "client exit status after the server was killed: \(r)")
            if let e = r.error {
                #expect(e.resumable == true, "error event should say resumable: \(e.message)")
                #expect(!e.message.isEmpty)
            } else {
                Issue.record("no {\"type\":\"error\"} line: \(r)")
            }
            server = try FerryServer(sb, root: root)
        case .client:
            first.kill9()
            #expect(server.isRunning, "the server died with its client")
        }
        defer { server.stop() }
        #expect(!exists(dstPath), "a file appeared under its final name before it was complete")
        #expect(
            exists(dstDir + "/.big.bin.ferry-part"),
            "no partial file .big.bin.ferry-part after the kill; present: \(walkTree(dstDir))")

        (from, to) = endpoints(server)
        let rerun = try sb.cp(from, to)
        #expect(rerun.succeeded, "\(rerun)")
        #expect(filesIdentical(srcPath, dstPath), "result differs from the source")
        #expect(ferryLeftovers(dstDir).isEmpty, "helper files left: \(ferryLeftovers(dstDir))")
        let s = try #require(rerun.summary, "\(rerun)")
        #expect(s.bytes == size, "\(s)")
        #expect(
            Double(s.wireBytes) <= 0.55 * Double(size),
            "rerun sent \(s.wireBytes) bytes (\(100 * s.wireBytes / size) %) after a kill at \(100 * progress.bytesDone / size) %: \(s)"
        )
        #expect(s.skippedBytes > 0, "\(s)")
        // Said as what it is: bytes of an interrupted run, checked by chunk hash; nothing of the
        // file skipped by size and mtime.
        #expect(s.raw["bytes_resumed"] as? Int == s.skippedBytes && s.raw["files_unread"] as? Int == 0 && s.raw["files_identical"] as? Int == 0, "\(s)")
    }

    /// A partial file damaged at rest between the interrupted run and the rerun: the journal
    /// still vouches for the chunk, but the sender re-reads and re-hashes every chunk the
    /// receiver claims, so the damaged one is sent again and the result is byte-identical.
    @Test("a partial file damaged between runs is repaired by the resume, not trusted")
    func damagedPartial() throws {
        let sb = try Sandbox("damaged-partial")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let size = 256 * E2E.MiB
        try writeRandomFile(local + "/big.bin", size: size)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let first = try sb.startCp(local + "/big.bin", server.url("big.bin"), options: ["--bwlimit", "32M"])
        guard waitForProgress(first, fraction: 0.5) != nil else {
            Issue.record("never saw progress ≥ 50 %: \(sb.finish(first, timeout: 5))")
            return
        }
        first.kill9()
        let part = root + "/.big.bin.ferry-part"
        // Chunk 0 went first and is journaled by now; damage one of its bytes in place.
        let fd = open(part, O_RDWR)
        #expect(fd >= 0, "no partial file after the kill: \(walkTree(root))")
        var b: UInt8 = 0
        #expect(pread(fd, &b, 1, 100) == 1)
        b ^= 0xFF
        #expect(pwrite(fd, &b, 1, 100) == 1)
        close(fd)

        let rerun = try sb.cp(local + "/big.bin", server.url("big.bin"))
        #expect(rerun.succeeded, "\(rerun)")
        #expect(filesIdentical(local + "/big.bin", root + "/big.bin"), "the damaged chunk survived the resume")
        let s = try #require(rerun.summary, "\(rerun)")
        #expect(s.skippedBytes > 0 && Double(s.wireBytes) <= 0.55 * Double(size) + Double(4 * E2E.MiB), "\(s)")
    }

    /// The source changes between the interrupted run and the rerun: the file starts over and
    /// the result is the new source.
    @Test(
        "source changed after an interruption: the file starts over",
        arguments: [KillCase.Direction.push, .pull])
    func sourceChanged(_ direction: KillCase.Direction) throws {
        let sb = try Sandbox("changed-\(direction)")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let size = 64 * E2E.MiB
        let (srcPath, dstPath, dstDir) =
            direction == .push
            ? (local + "/data.bin", root + "/data.bin", root)
            : (root + "/data.bin", local + "/data.bin", local)
        try writeRandomFile(srcPath, size: size)
        try setMtime(srcPath, seconds: 1_600_000_000)

        var server = try FerryServer(sb, root: root)
        func endpoints(_ s: FerryServer) -> (String, String) {
            direction == .push ? (srcPath, s.url("data.bin")) : (s.url("data.bin"), dstPath)
        }
        var (from, to) = endpoints(server)
        let first = try sb.startCp(from, to, options: ["--bwlimit", "16M"])
        guard waitForProgress(first, fraction: 0.5) != nil else {
            let r = sb.finish(first, timeout: 5)
            server.stop()
            Issue.record("never saw progress ≥ 50 % before the copy ended: \(r)")
            return
        }
        server.kill9()
        _ = sb.finish(first, timeout: 60)
        #expect(exists(dstDir + "/.data.bin.ferry-part"), "\(walkTree(dstDir))")

        // New content, same size, another mtime.
        try writeRandomFile(srcPath, size: size)
        try setMtime(srcPath, seconds: 1_600_000_100)

        server = try FerryServer(sb, root: root)
        defer { server.stop() }
        (from, to) = endpoints(server)
        let rerun = try sb.cp(from, to)
        #expect(rerun.succeeded, "\(rerun)")
        #expect(filesIdentical(srcPath, dstPath), "result is not the new source")
        #expect(meta(dstPath)?.mtimeSeconds == 1_600_000_100)
        #expect(ferryLeftovers(dstDir).isEmpty, "\(ferryLeftovers(dstDir))")
        let s = try #require(rerun.summary, "\(rerun)")
        #expect(s.skippedBytes == 0, "nothing of the old partial file may count: \(s)")
        #expect(Double(s.wireBytes) >= 0.95 * Double(size), "new random content must travel: \(s)")
    }
}
