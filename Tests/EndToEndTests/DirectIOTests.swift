// Direct I/O on the receiving side (issue 18): whole aligned chunks of a large file written
// with O_DIRECT on ext4, the rest buffered. The correctness cases of the buffered path, run
// again where the direct path is taken: pushes and pulls at every protection, a byte flipped
// in flight, kill -9 of the receiver and a resume, a sparse file, a full disk; and the
// fallbacks (tmpfs, `--direct-io off`).

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Direct I/O", .serialized, .enabled(if: E2E.isRoot, "mounting an ext4 image needs root"))
struct DirectIOTests {
    /// 10 chunks of 4 MiB and a tail of 12,345 bytes: the full chunks go direct, and of the
    /// tail its whole 4 KiB blocks (12,288 bytes); the last 57 bytes are written buffered.
    static let size = 40 * E2E.MiB + 12_345
    static let directExpected = 40 * E2E.MiB + 12_288

    static func directBytes(_ r: CpResult) -> Int? { r.summary?.raw["direct_bytes"] as? Int }

    @Test("push and pull onto ext4 at every protection: identical, written direct", arguments: ["clear", "safe", "private"])
    func pushAndPull(_ protection: String) throws {
        let sb = try Sandbox("dio-\(protection)")
        defer { sb.unmountAll() }
        let root = sb.file("root")
        let local = sb.file("local")
        try sb.mountExt4(at: root, sizeMiB: 192)
        try sb.mountExt4(at: local, sizeMiB: 192)
        let src = local + "/src.bin"
        try writeRandomFile(src, size: Self.size)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let push = try sb.cp(src, server.url("pushed.bin"), options: ["--protection", protection])
        #expect(push.succeeded, "\(push)")
        #expect(filesIdentical(src, root + "/pushed.bin"), "pushed file differs")
        // The server is the receiver of a push: its session line says what went direct.
        #expect(waitUntil(timeout: 5) { server.process.stderr.contains("40.0 MiB written direct") },
            "the server's session line does not say the file was written direct: \(server.process.stderr.suffix(600))")

        let pull = try sb.cp(server.url("pushed.bin"), local + "/pulled.bin", options: ["--protection", protection])
        #expect(pull.succeeded, "\(pull)")
        #expect(filesIdentical(src, local + "/pulled.bin"), "pulled file differs")
        #expect(Self.directBytes(pull) == Self.directExpected, "direct bytes of the pull: \(pull)")
        #expect(ferryLeftovers(local).isEmpty && ferryLeftovers(root).isEmpty)
    }

    /// The direct descriptor is opened by the session's thread acting as the user (through
    /// /proc/self/fd): a user's push is written direct into a file that is the user's, and a
    /// directory the user may not write stays closed to it.
    @Test("a user's push onto ext4 is written direct, as the user's account")
    func asTheUser() throws {
        let (sb, root, u1, _) = try IdentityTests.setUp("dio-user") { sb, root in try sb.mountExt4(at: root, sizeMiB: 192) }
        defer { sb.unmountAll() }
        let d1 = root + "/u1", d2 = root + "/u2"
        let src = try sb.dir("local") + "/big.bin"
        try writeRandomFile(src, size: Self.size)
        let token = try sb.issueToken(user: "ferryu1", scopes: ["rw:/"], name: "u1.token")
        let server = try FerryServer(sb, root: root, runAsRoot: false)
        defer { server.stop() }

        let r = try sb.cp(src, server.url("u1/big.bin"), tokenFile: token)
        #expect(r.succeeded, "\(r)")
        #expect(filesIdentical(src, d1 + "/big.bin"))
        #expect(IdentityTests.owner(d1 + "/big.bin")?.uid == u1.0, "not owned by ferryu1")
        #expect(waitUntil(timeout: 5) { server.process.stderr.contains("as ferryu1") && server.process.stderr.contains("40.0 MiB written direct") },
            "\(server.process.stderr.suffix(600))")

        let refused = try sb.cp(src, server.url("u2/big.bin"), tokenFile: token)
        #expect(refused.status != 0, "ferryu1 wrote into ferryu2's 0700 directory: \(refused)")
        #expect(!exists(d2 + "/big.bin") && !exists(d2 + "/.big.bin.ferry-part"))
    }

    /// What an operator sets in ferry.toml: `direct_io = "off"` keeps a push onto ext4 in the
    /// page cache, `zero_copy = true` sends a pull's chunks zero-copy.
    @Test("the server's config file: direct_io = \"off\" and zero_copy = true")
    func configFile() throws {
        let sb = try Sandbox("dio-config")
        defer { sb.unmountAll() }
        let root = sb.file("root")
        try sb.mountExt4(at: root, sizeMiB: 160)
        let config = sb.file("ferry.toml")
        try "run_as = \"root\"\ndirect_io = \"off\"\nzero_copy = true\n[[export]]\nname = \"data\"\npath = \"\(root)\"\naccess = \"rw\"\n"
            .write(toFile: config, atomically: false, encoding: .utf8)
        let src = try sb.dir("local") + "/src.bin"
        try writeRandomFile(src, size: Self.size)
        let server = try FerryServer(sb, root: "", extra: ["--config", config])
        defer { server.stop() }
        let push = try sb.cp(src, server.url("data/pushed.bin"))
        #expect(push.succeeded && filesIdentical(src, root + "/pushed.bin"), "\(push)")
        let pull = try sb.cp(server.url("data/pushed.bin"), sb.file("local/pulled.bin"))
        #expect(pull.succeeded && filesIdentical(src, sb.file("local/pulled.bin")), "\(pull)")
        #expect(waitUntil(timeout: 5) { server.process.stderr.components(separatedBy: " by alice ").count > 2 }, "\(server.process.stderr.suffix(800))")
        let log = server.process.stderr
        #expect(!log.contains("written direct"), "direct_io = \"off\" wrote direct: \(log.suffix(800))")
        #expect(log.contains("sent zero-copy"), "zero_copy = true did not send zero-copy: \(log.suffix(800))")
    }

    @Test("fallbacks: tmpfs, --direct-io off, a small file and compressible chunks")
    func fallbacks() throws {
        let sb = try Sandbox("dio-fallback")
        defer { sb.unmountAll() }
        let root = sb.file("root")
        let ext4 = sb.file("ext4")
        try sb.mountExt4(at: root, sizeMiB: 160)
        try sb.mountExt4(at: ext4, sizeMiB: 160)
        let shm = try sb.dir("shm")  // the sandbox: tmpfs
        try writeRandomFile(root + "/big.bin", size: Self.size)
        try writeRandomFile(root + "/small.bin", size: 5 * E2E.MiB)
        // Compressible: chunks arrive as zstd and are written from the decompression buffer.
        let text = String(repeating: "CC(=O)Oc1ccccc1C(=O)O aspirin 0123456789\n", count: 500_000)
        try text.write(toFile: root + "/text.smi", atomically: false, encoding: .utf8)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let toTmpfs = try sb.cp(server.url("big.bin"), shm + "/big.bin")
        #expect(toTmpfs.succeeded && filesIdentical(root + "/big.bin", shm + "/big.bin"), "\(toTmpfs)")
        #expect(Self.directBytes(toTmpfs) == 0, "tmpfs is written buffered: \(toTmpfs)")

        let off = try sb.cp(server.url("big.bin"), ext4 + "/off.bin", options: ["--direct-io", "off"])
        #expect(off.succeeded && filesIdentical(root + "/big.bin", ext4 + "/off.bin"), "\(off)")
        #expect(Self.directBytes(off) == 0, "--direct-io off: \(off)")

        let small = try sb.cp(server.url("small.bin"), ext4 + "/small.bin")
        #expect(small.succeeded && filesIdentical(root + "/small.bin", ext4 + "/small.bin"), "\(small)")
        #expect(Self.directBytes(small) == 0, "a file under 8 MiB is written buffered: \(small)")

        let smiles = try sb.cp(server.url("text.smi"), ext4 + "/text.smi", options: ["--compress", "3"])
        #expect(smiles.succeeded && filesIdentical(root + "/text.smi", ext4 + "/text.smi"), "\(smiles)")
        let s = try #require(smiles.summary, "\(smiles)")
        #expect(s.wireBytes < s.bytes / 2, "the text travelled compressed: \(s)")
        let textBytes = fileSize(root + "/text.smi") ?? 0
        #expect(Self.directBytes(smiles) == textBytes & ~4095, "decompressed chunks written direct: \(smiles)")

        let bad = try sb.cp(server.url("big.bin"), ext4 + "/x.bin", options: ["--direct-io", "sometimes"])
        #expect(bad.status != 0 && bad.allMessages.contains("--direct-io takes auto or off"), "\(bad)")
        #expect(!exists(ext4 + "/x.bin"))
    }

    @Test("a byte flipped in flight: the chunk is fetched again and written direct", arguments: ["clear", "private"])
    func flippedByte(_ protection: String) throws {
        let sb = try Sandbox("dio-flip-\(protection)")
        defer { sb.unmountAll() }
        let root = try sb.dir("root")
        let local = sb.file("local")
        try sb.mountExt4(at: local, sizeMiB: 128)
        try writeRandomFile(root + "/data.bin", size: 32 * E2E.MiB)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let proxy = try FlipProxy(targetPort: server.port, flipOffset: 3 * E2E.MiB, direction: .serverToClient)
        defer { proxy.stop() }
        let r = try sb.cp("ferry://127.0.0.1:\(proxy.port)/data.bin", local + "/data.bin", options: ["--streams", "2", "--protection", protection])
        #expect(proxy.flipped, "no connection carried 3 MiB")
        #expect(r.succeeded, "\(r)")
        #expect(filesIdentical(root + "/data.bin", local + "/data.bin"), "result differs from the source")
        #expect(r.summary?.retransmittedChunks == 1, "\(r)")
        #expect(Self.directBytes(r) == 32 * E2E.MiB, "every chunk, the one sent again too, written direct: \(r)")
    }

    @Test("kill -9 of the receiving server half way onto ext4, then a rerun resumes")
    func killReceiver() throws {
        let sb = try Sandbox("dio-kill")
        defer { sb.unmountAll() }
        let root = sb.file("root")
        try sb.mountExt4(at: root, sizeMiB: 384)
        let r = try Scenarios.killReceiverThenResume(sb, root: root, local: try sb.dir("local"), sizeMiB: 128)
        #expect(r?.serverLog.contains("written direct") == true, "the rerun's session did not write direct: \(r?.serverLog.suffix(600) ?? "")")
    }

    @Test("a sparse file pulled onto ext4 stays sparse; its data chunks go direct")
    func sparse() throws {
        let sb = try Sandbox("dio-sparse")
        defer { sb.unmountAll() }
        let root = try sb.dir("root")
        let local = sb.file("local")
        // Room for the declared size: a file larger than the free space is refused up front.
        try sb.mountExt4(at: local, sizeMiB: 640)
        let src = root + "/sparse.bin"
        let size = 512 * E2E.MiB
        try Scenarios.sparseFile(src, size: size, data: [(64 * E2E.MiB, 4 * E2E.MiB), (size - 3 * E2E.MiB - 100, 3 * E2E.MiB + 100)])
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let r = try sb.cp(server.url("sparse.bin"), local + "/sparse.bin", timeout: 120)
        #expect(r.succeeded, "\(r)")
        #expect(filesIdentical(src, local + "/sparse.bin"), "pulled sparse file differs")
        let allocated = allocatedBytes(local + "/sparse.bin") ?? -1
        #expect(allocated >= 0 && allocated < 24 * E2E.MiB, "not sparse: \(allocated) bytes allocated")
        // The 4 MiB chunk and the last one (whose data starts 100 bytes before its 3 MiB):
        // 4 MiB + 4 MiB, every block of them aligned.
        #expect(Self.directBytes(r) == 8 * E2E.MiB, "\(r)")
    }

    @Test("a full ext4 disk: a clear no-space error, then the rerun resumes once there is room")
    func diskFull() throws {
        let sb = try Sandbox("dio-full")
        defer { sb.unmountAll() }
        let root = try sb.dir("root")
        let small = root + "/small"
        try sb.mountExt4(at: small, sizeMiB: 96)
        // About 85 MiB free (no reserved blocks); a filler of 40 MiB leaves room for one of the
        // two files of 30 MiB and half of the other: each fits when planned, the second fills it.
        try writeRandomFile(small + "/filler", size: 40 * E2E.MiB)
        let r = try Scenarios.diskFullThenResume(sb, root: root, small: small) {
            try FileManager.default.removeItem(atPath: small + "/filler")
        }
        #expect(r.serverLog.contains("written direct"), "the server wrote nothing direct: \(r.serverLog.suffix(600))")
    }
}
