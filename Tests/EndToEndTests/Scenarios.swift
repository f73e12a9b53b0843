// Scenarios that suites run again under a switch of the engine (direct I/O, zero-copy sends):
// the same user-visible checks as the buffered path's own tests, in one place.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

enum Scenarios {
    /// Pushes a file of `sizeMiB` slowed to 32 MiB/s, kills the receiving server with SIGKILL
    /// half way, starts it again and reruns the push: the client gave up with a resumable
    /// error, nothing appeared under the final name before the end, the rerun resumed (sent at
    /// most 55 %) and the result is identical. `options`: the copies' extra options. Returns
    /// the rerun and the restarted server's log, once it has its session line.
    @discardableResult
    static func killReceiverThenResume(_ sb: Sandbox, root: String, local: String, sizeMiB: Int, options: [String] = [],
                                       sourceLocation: SourceLocation = #_sourceLocation) throws -> (rerun: CpResult, serverLog: String)? {
        let size = sizeMiB * E2E.MiB
        try writeRandomFile(local + "/big.bin", size: size)
        var server = try FerryServer(sb, root: root)
        let first = try sb.startCp(local + "/big.bin", server.url("big.bin"), options: options + ["--bwlimit", "32M"])
        guard waitForProgress(first, fraction: 0.5) != nil else {
            Issue.record("never saw progress ≥ 50 %: \(sb.finish(first, timeout: 5))", sourceLocation: sourceLocation)
            server.stop()
            return nil
        }
        server.kill9()
        let r = sb.finish(first, timeout: 60)
        #expect(!r.timedOut && r.status == 1 && r.error?.resumable == true, "the client did not give up cleanly: \(r)", sourceLocation: sourceLocation)
        #expect(!exists(root + "/big.bin") && exists(root + "/.big.bin.ferry-part"), "\(walkTree(root))", sourceLocation: sourceLocation)
        server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let rerun = try sb.cp(local + "/big.bin", server.url("big.bin"), options: options)
        #expect(rerun.succeeded, "\(rerun)", sourceLocation: sourceLocation)
        #expect(filesIdentical(local + "/big.bin", root + "/big.bin"), "result differs from the source", sourceLocation: sourceLocation)
        let s = try #require(rerun.summary, "\(rerun)", sourceLocation: sourceLocation)
        #expect(s.skippedBytes > 0 && Double(s.wireBytes) <= 0.55 * Double(size), "the rerun did not resume: \(s)", sourceLocation: sourceLocation)
        #expect(ferryLeftovers(root).isEmpty, "\(ferryLeftovers(root))", sourceLocation: sourceLocation)
        _ = waitUntil(timeout: 5) { server.process.stderr.contains("push to 'big.bin'") }
        return (rerun, server.process.stderr)
    }

    /// Pushes `DiskFullTests.makeTree` (two files of 30 MiB, one stream) into `small` beneath
    /// the server's root, a filesystem with room for one and a half of them: the no-space error
    /// names a file and says the rerun resumes, the server lives; `makeRoom` then frees space
    /// and the rerun completes, resuming. Returns the rerun and the server's log, once it has
    /// the rerun's session line.
    @discardableResult
    static func diskFullThenResume(_ sb: Sandbox, root: String, small: String, options: [String] = [], makeRoom: () throws -> Void,
                                   sourceLocation: SourceLocation = #_sourceLocation) throws -> (rerun: CpResult, serverLog: String) {
        let tree = sb.file("local/tree")
        let names = try DiskFullTests.makeTree(tree)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let target = String(small.dropFirst(root.count + 1)) + "/tree"
        let first = try sb.cp(tree, server.url(target), options: ["-r", "--streams", "1"] + options, timeout: 120)
        DiskFullTests.expectDiskFullError(first, files: names, sourceLocation: sourceLocation)
        #expect(names.filter { exists(small + "/tree/" + $0) }.count <= 1, "an incomplete file under its final name", sourceLocation: sourceLocation)
        #expect(server.isRunning, "the server died on a full disk", sourceLocation: sourceLocation)
        try makeRoom()
        let rerun = try sb.cp(tree, server.url(target), options: ["-r"] + options, timeout: 120)
        #expect(rerun.succeeded, "\(rerun)", sourceLocation: sourceLocation)
        for n in names { #expect(filesIdentical(tree + "/" + n, small + "/tree/" + n), "\(n) differs from the source", sourceLocation: sourceLocation) }
        #expect(ferryLeftovers(small).isEmpty, "\(ferryLeftovers(small))", sourceLocation: sourceLocation)
        #expect((rerun.summary?.skippedBytes ?? 0) > 30 * E2E.MiB, "the rerun did not resume: \(rerun)", sourceLocation: sourceLocation)
        _ = waitUntil(timeout: 5) { server.process.stderr.components(separatedBy: "push to ").count > 2 }
        return (rerun, server.process.stderr)
    }

    /// A sparse file of `size` bytes at `path` with random data at each (offset, count).
    static func sparseFile(_ path: String, size: Int, data: [(offset: Int, count: Int)]) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw HarnessError("cannot create \(path): errno \(errno)") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw HarnessError("ftruncate \(path): errno \(errno)") }
        for d in data { try writeRandom(fd: fd, offset: d.offset, count: d.count, path: path) }
    }
}
