// Zero-copy sends (issue 18, `--zero-copy`): raw chunks sent with io_uring SEND_ZC from the
// stream's own slot buffers. Loopback gains nothing from it (the kernel copies on delivery), so
// these are correctness tests: the buffered path's cases run again with the switch on, on
// whichever side sends: push and pull at every protection, a byte flipped in flight, kill -9 of
// the receiver and a resume, a sparse file, a full disk.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Zero-copy sends", .serialized)
struct ZeroCopyTests {
    static func zeroCopyBytes(_ r: CpResult) -> Int? { r.summary?.raw["zero_copy_bytes"] as? Int }

    @Test("push and pull with --zero-copy at every protection: identical, sent zero-copy", arguments: ["clear", "safe", "private"])
    func pushAndPull(_ protection: String) throws {
        let sb = try Sandbox("zc-\(protection)")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let size = 24 * E2E.MiB + 777
        try writeRandomFile(local + "/src.bin", size: size)
        let server = try FerryServer(sb, root: root, extra: ["--zero-copy"])
        defer { server.stop() }

        let push = try sb.cp(local + "/src.bin", server.url("src.bin"), options: ["--zero-copy", "--protection", protection])
        #expect(push.succeeded, "\(push)")
        #expect(filesIdentical(local + "/src.bin", root + "/src.bin"))
        // Every chunk (random data travels raw) went zero-copy: its bytes and the frames' headers.
        let sent = Self.zeroCopyBytes(push) ?? 0
        #expect(sent >= size && sent < size + 64 * E2E.KiB, "zero_copy_bytes \(sent) for \(size): \(push)")

        let pull = try sb.cp(server.url("src.bin"), local + "/back.bin", options: ["--protection", protection])
        #expect(pull.succeeded, "\(pull)")
        #expect(filesIdentical(local + "/src.bin", local + "/back.bin"))
        #expect(Self.zeroCopyBytes(pull) == 0, "the client received; it sent nothing zero-copy: \(pull)")
        #expect(waitUntil(timeout: 5) { server.process.stderr.contains("MiB sent zero-copy") },
            "the server (the sender of the pull) does not say it sent zero-copy: \(server.process.stderr.suffix(600))")

        // Off by default: the same push without the switch copies.
        let plain = try sb.cp(local + "/src.bin", server.url("plain.bin"), options: ["--protection", protection])
        #expect(plain.succeeded && Self.zeroCopyBytes(plain) == 0, "\(plain)")
    }

    @Test("a byte flipped in flight from a zero-copy sender: the chunk is sent again, the result identical")
    func flippedByte() throws {
        let sb = try Sandbox("zc-flip")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        try writeRandomFile(local + "/data.bin", size: 32 * E2E.MiB)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let proxy = try FlipProxy(targetPort: server.port, flipOffset: 3 * E2E.MiB, direction: .clientToServer)
        defer { proxy.stop() }
        let r = try sb.cp(local + "/data.bin", "ferry://127.0.0.1:\(proxy.port)/data.bin", options: ["--zero-copy", "--streams", "2", "--protection", "clear"])
        #expect(proxy.flipped, "no connection carried 3 MiB")
        #expect(r.succeeded, "\(r)")
        #expect(filesIdentical(local + "/data.bin", root + "/data.bin"), "result differs from the source")
        #expect(r.summary?.retransmittedChunks == 1, "\(r)")
        #expect((Self.zeroCopyBytes(r) ?? 0) > 32 * E2E.MiB, "the chunk sent again went zero-copy too: \(r)")
    }

    @Test("kill -9 of the receiving server half way, zero-copy sender, then a rerun resumes")
    func killReceiver() throws {
        let sb = try Sandbox("zc-kill")
        let r = try Scenarios.killReceiverThenResume(sb, root: try sb.dir("root"), local: try sb.dir("local"), sizeMiB: 128, options: ["--zero-copy"])
        #expect((r.flatMap { Self.zeroCopyBytes($0.rerun) } ?? 0) > 0, "the rerun did not send zero-copy: \(String(describing: r?.rerun))")
    }

    @Test("a sparse file pushed zero-copy stays sparse; only its data chunks travel")
    func sparse() throws {
        let sb = try Sandbox("zc-sparse")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let src = local + "/sparse.bin"
        try Scenarios.sparseFile(src, size: 256 * E2E.MiB, data: [(32 * E2E.MiB + 999, 4 * E2E.MiB)])
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let r = try sb.cp(src, server.url("sparse.bin"), options: ["--zero-copy"], timeout: 120)
        #expect(r.succeeded, "\(r)")
        #expect(filesIdentical(src, root + "/sparse.bin"))
        let allocated = allocatedBytes(root + "/sparse.bin") ?? -1
        #expect(allocated >= 0 && allocated < 16 * E2E.MiB, "not sparse: \(allocated)")
        // The data spans two chunks; holes travel as headers, by copy.
        let sent = Self.zeroCopyBytes(r) ?? 0
        #expect(sent >= 8 * E2E.MiB && sent < 8 * E2E.MiB + 4 * E2E.KiB, "zero_copy_bytes \(sent): \(r)")
    }

    @Test("a zero-copy push onto a full disk: the no-space error, the server alive, the rerun resumes", .enabled(if: E2E.isRoot, "mounting a tmpfs needs root"))
    func diskFull() throws {
        let sb = try Sandbox("zc-full")
        defer { sb.unmountAll() }
        let root = try sb.dir("root")
        let small = root + "/small"
        try sb.mountTmpfs(at: small, sizeMiB: 48)
        let r = try Scenarios.diskFullThenResume(sb, root: root, small: small, options: ["--zero-copy"]) {
            try sb.remountTmpfs(at: small, sizeMiB: 256)
        }
        #expect((Self.zeroCopyBytes(r.rerun) ?? 0) > 0, "the rerun did not send zero-copy: \(r.rerun)")
    }
}
