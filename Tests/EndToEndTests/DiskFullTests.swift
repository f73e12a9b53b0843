// Destination disk full (a small tmpfs): a clear error naming the file that says the rerun
// resumes; after space is freed, the rerun completes.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Disk full", .serialized, .enabled(if: E2E.isRoot, "mounting a tmpfs needs root"))
struct DiskFullTests {
    static func expectDiskFullError(_ r: CpResult, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == 1, "exit status on a full disk: \(r)", sourceLocation: sourceLocation)
        guard let e = r.error else {
            Issue.record("no {\"type\":\"error\"} line: \(r)", sourceLocation: sourceLocation)
            return
        }
        let m = e.message.lowercased()
        #expect(m.contains("big.bin"), "message does not name the file: \(e.message)",
            sourceLocation: sourceLocation)
        #expect(m.contains("space") || m.contains("enospc") || m.contains("full"),
            "message does not give the cause: \(e.message)", sourceLocation: sourceLocation)
        #expect(m.contains("resum") || m.contains("rerun"),
            "message does not say whether a rerun resumes: \(e.message)", sourceLocation: sourceLocation)
        #expect(e.resumable == true, "a full disk is resumable: \(e.message)", sourceLocation: sourceLocation)
    }

    @Test("push onto a full tmpfs beneath the server root, then remount bigger and rerun")
    func pushDiskFull() throws {
        let sb = try Sandbox("diskfull-push")
        defer { sb.unmountAll() }
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let small = root + "/small"
        try sb.mountTmpfs(at: small, sizeMiB: 48)
        let src = local + "/big.bin"
        let size = 96 * E2E.MiB
        try writeRandomFile(src, size: size)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let first = try sb.cp(src, server.url("small/big.bin"), timeout: 120)
        Self.expectDiskFullError(first)
        #expect(!exists(small + "/big.bin"), "an incomplete file under its final name")
        #expect(server.isRunning, "the server died on a full disk")

        try sb.remountTmpfs(at: small, sizeMiB: 256)
        let rerun = try sb.cp(src, server.url("small/big.bin"), timeout: 120)
        #expect(rerun.succeeded, "\(rerun)")
        #expect(filesIdentical(src, small + "/big.bin"), "result differs from the source")
        #expect(ferryLeftovers(small).isEmpty, "\(ferryLeftovers(small))")
        if let s = rerun.summary {
            #expect(s.skippedBytes > 0, "the rerun did not resume: \(s)")
            #expect(s.wireBytes + s.skippedBytes >= size, "\(s)")
        } else {
            Issue.record("no summary: \(rerun)")
        }
    }

    @Test("pull into a full local tmpfs, then remount bigger and rerun")
    func pullDiskFull() throws {
        let sb = try Sandbox("diskfull-pull")
        defer { sb.unmountAll() }
        let root = try sb.dir("root")
        let small = sb.file("local-small")
        try sb.mountTmpfs(at: small, sizeMiB: 48)
        let src = root + "/big.bin"
        let size = 96 * E2E.MiB
        try writeRandomFile(src, size: size)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let dst = small + "/big.bin"
        let first = try sb.cp(server.url("big.bin"), dst, timeout: 120)
        Self.expectDiskFullError(first)
        #expect(!exists(dst), "an incomplete file under its final name")
        #expect(server.isRunning)

        try sb.remountTmpfs(at: small, sizeMiB: 256)
        let rerun = try sb.cp(server.url("big.bin"), dst, timeout: 120)
        #expect(rerun.succeeded, "\(rerun)")
        #expect(filesIdentical(src, dst), "result differs from the source")
        #expect(ferryLeftovers(small).isEmpty, "\(ferryLeftovers(small))")
        if let s = rerun.summary {
            #expect(s.skippedBytes > 0, "the rerun did not resume: \(s)")
        } else {
            Issue.record("no summary: \(rerun)")
        }
    }
}
