// A byte flipped in flight is caught, only that chunk travels again, the result is identical.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Corruption in flight")
struct CorruptionTests {
    /// clear: the chunk hash catches the flip; private (the default): the GCM tag does (tampered
    /// ciphertext), the frame is rejected and its chunk fetched again.
    @Test("one byte flipped 3 MiB into a data stream", arguments: [KillCase.Direction.push, .pull], ["clear", "private"])
    func flippedByte(_ direction: KillCase.Direction, _ protection: String) throws {
        let sb = try Sandbox("flip-\(direction)-\(protection)")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let size = 32 * E2E.MiB
        let (srcPath, dstPath) =
            direction == .push
            ? (local + "/data.bin", root + "/data.bin")
            : (root + "/data.bin", local + "/data.bin")
        try writeRandomFile(srcPath, size: size)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let proxy = try FlipProxy(
            targetPort: server.port, flipOffset: 3 * E2E.MiB,
            direction: direction == .push ? .clientToServer : .serverToClient)
        defer { proxy.stop() }

        let url = "ferry://127.0.0.1:\(proxy.port)/data.bin"
        let (from, to) = direction == .push ? (srcPath, url) : (url, dstPath)
        // Random (incompressible) data: 3 MiB into a stream lands inside a chunk's payload.
        let r = try sb.cp(from, to, options: ["--streams", "2", "--protection", protection])
        #expect(proxy.flipped, "no connection carried 3 MiB; traffic: \(proxy.traffic)")
        #expect(r.succeeded, "\(r)")
        #expect(filesIdentical(srcPath, dstPath), "result differs from the source")
        let s = try #require(r.summary, "\(r)")
        #expect(s.retransmittedChunks == 1, "exactly the one damaged chunk is sent again: \(s)")
        // Default chunks are 4 MiB: everything once plus one chunk again.
        #expect(
            s.wireBytes <= size + 4 * E2E.MiB + 64 * E2E.KiB,
            "more than one chunk travelled again: \(s)")
        #expect(proxy.connections >= 2, "expected a control and data connections through the proxy")
    }
}
