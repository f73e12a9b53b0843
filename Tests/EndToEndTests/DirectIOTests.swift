// Direct I/O on the receiving side (issue 18): whole aligned chunks of a large file written
// with O_DIRECT on ext4, the rest buffered. The correctness cases of the buffered path, run
// again where the direct path is taken: pushes and pulls at every protection, a byte flipped
// in flight, kill -9 of the receiver and a resume, a sparse file, a full disk; and the
// fallbacks (tmpfs, `--direct-io off`).
//
// And on the sending side: chunks of a large file on ext4 that the page cache does not hold
// are read with O_DIRECT, the next one's read in flight while a chunk is sent (`SenderWorker`,
// "Direct reads"): pushes and pulls at every protection and three stream counts, a byte flipped in
// flight (the chunk read again, in `flippedByte`), kill -9 of the sender and a resume (the resumed chunks read
// direct to be hashed), and the fallbacks (a file the cache holds, a sparse one, tmpfs,
// `--direct-io off`).

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
    static func directReadBytes(_ r: CpResult) -> Int? { r.summary?.raw["direct_read_bytes"] as? Int }

    /// Drops `path`'s pages from the page cache (written back first), as a file that was
    /// written long ago and not read since: what a data transfer node mostly reads.
    static func evict(_ path: String) {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return }
        fsync(fd)
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
        close(fd)
    }

    @Test("read direct, kill -9 of the sender half way: the rerun resumes, reading direct, identical")
    func readDirectKillSender() throws {
        let sb = try Sandbox("dio-read-kill")
        defer { sb.unmountAll() }
        let local = sb.file("local")
        try sb.mountExt4(at: local, sizeMiB: 192)
        let root = try sb.dir("root")
        let src = local + "/big.bin"
        let size = 128 * E2E.MiB
        try writeRandomFile(src, size: size)
        Self.evict(src)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let first = try sb.startCp(src, server.url("big.bin"), options: ["--bwlimit", "32M"])
        guard waitForProgress(first, fraction: 0.5) != nil else {
            Issue.record("never saw progress ≥ 50 %: \(sb.finish(first, timeout: 5))")
            return
        }
        first.kill9()
        #expect(!exists(root + "/big.bin") && exists(root + "/.big.bin.ferry-part"), "\(walkTree(root))")
        Self.evict(src)
        let rerun = try sb.cp(src, server.url("big.bin"))
        #expect(rerun.succeeded && filesIdentical(src, root + "/big.bin"), "\(rerun)")
        let s = try #require(rerun.summary, "\(rerun)")
        #expect(s.skippedBytes > 0 && Double(s.wireBytes) <= 0.6 * Double(size), "the rerun did not resume: \(s)")
        // The chunks the receiver held were read (direct) and hashed to compare, the rest sent.
        #expect(Self.directReadBytes(rerun) == size, "\(rerun)")
    }

    @Test("reads stay buffered: a sparse file, a file on tmpfs, --direct-io off")
    func readFallbacks() throws {
        let sb = try Sandbox("dio-read-fallback")
        defer { sb.unmountAll() }
        let local = sb.file("local")
        try sb.mountExt4(at: local, sizeMiB: 640)
        let root = try sb.dir("root")
        let shm = try sb.dir("shm")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let sparse = local + "/sparse.bin"
        try Scenarios.sparseFile(sparse, size: 96 * E2E.MiB, data: [(16 * E2E.MiB, 4 * E2E.MiB), (60 * E2E.MiB + 100, 2 * E2E.MiB)])
        Self.evict(sparse)
        let r1 = try sb.cp(sparse, server.url("sparse.bin"))
        #expect(r1.succeeded && filesIdentical(sparse, root + "/sparse.bin"), "\(r1)")
        #expect(Self.directReadBytes(r1) == 0, "\(r1)")
        // tmpfs: its pages are the file, always resident, so `mincore` alone keeps it buffered
        // (the filesystem check, `DirectIO.filesystems`, is not what decides here).
        try writeRandomFile(shm + "/t.bin", size: Self.size)
        let r2 = try sb.cp(shm + "/t.bin", server.url("t.bin"))
        #expect(r2.succeeded && filesIdentical(shm + "/t.bin", root + "/t.bin") && Self.directReadBytes(r2) == 0, "\(r2)")
        try writeRandomFile(local + "/off.bin", size: Self.size)
        Self.evict(local + "/off.bin")
        let r3 = try sb.cp(local + "/off.bin", server.url("off.bin"), options: ["--direct-io", "off"])
        #expect(r3.succeeded && filesIdentical(local + "/off.bin", root + "/off.bin") && Self.directReadBytes(r3) == 0, "\(r3)")
    }

    /// Each side writes direct what it receives and reads direct what it sends from a file the
    /// page cache does not hold; a file the cache holds is read buffered.
    @Test("push and pull between ext4 at every protection: identical, read and written direct",
          arguments: [("clear", 1), ("safe", 2), ("private", 4)])
    func pushAndPull(_ protection: String, _ streams: Int) throws {
        let sb = try Sandbox("dio-\(protection)")
        defer { sb.unmountAll() }
        let root = sb.file("root")
        let local = sb.file("local")
        try sb.mountExt4(at: root, sizeMiB: 192)
        try sb.mountExt4(at: local, sizeMiB: 192)
        let src = local + "/src.bin"
        try writeRandomFile(src, size: Self.size)
        Self.evict(src)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let options = ["--protection", protection, "--streams", String(streams)]

        let push = try sb.cp(src, server.url("pushed.bin"), options: options)
        #expect(push.succeeded, "\(push)")
        #expect(filesIdentical(src, root + "/pushed.bin"), "pushed file differs")
        #expect(Self.directReadBytes(push) == Self.size, "every chunk of the push read direct: \(push)")
        // The server is the receiver of a push: its session line says what went direct.
        #expect(waitUntil(timeout: 5) { server.process.stderr.contains("40.0 MiB written direct") },
            "the server's session line does not say the file was written direct: \(server.process.stderr.suffix(600))")

        Self.evict(root + "/pushed.bin")
        let pull = try sb.cp(server.url("pushed.bin"), local + "/pulled.bin", options: options)
        #expect(pull.succeeded, "\(pull)")
        #expect(filesIdentical(src, local + "/pulled.bin"), "pulled file differs")
        #expect(Self.directBytes(pull) == Self.directExpected, "direct bytes of the pull: \(pull)")
        // The server is the sender of a pull: its session line says what it read direct.
        #expect(waitUntil(timeout: 5) { server.process.stderr.contains("40.0 MiB read direct") },
                "the server's session line does not say it read the whole file direct: \(server.process.stderr.suffix(600))")
        #expect(ferryLeftovers(local).isEmpty && ferryLeftovers(root).isEmpty)

        // The source is in the page cache now (filesIdentical read it): read buffered.
        let again = try sb.cp(src, server.url("again.bin"), options: options)
        #expect(again.succeeded && filesIdentical(src, root + "/again.bin"), "\(again)")
        #expect(Self.directReadBytes(again) == 0, "a file the cache holds is read buffered: \(again)")
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

        // Pulled back, not in the cache: the server reads it direct as ferryu1 (its direct
        // descriptor is opened through /proc/self/fd by the thread acting as the user).
        Self.evict(d1 + "/big.bin")
        let back = try sb.cp(server.url("u1/big.bin"), sb.file("local/back.bin"), tokenFile: token)
        #expect(back.succeeded && filesIdentical(src, sb.file("local/back.bin")), "\(back)")
        #expect(waitUntil(timeout: 5) { server.process.stderr.contains("40.0 MiB read direct") }, "\(server.process.stderr.suffix(600))")
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

    /// Both directions of direct I/O at once: the server reads the file direct (not in the
    /// cache), the client writes it direct.
    @Test("a byte flipped in flight: the chunk is read again direct, fetched again and written direct", arguments: ["clear", "private"])
    func flippedByte(_ protection: String) throws {
        let sb = try Sandbox("dio-flip-\(protection)")
        defer { sb.unmountAll() }
        let root = sb.file("root")
        let local = sb.file("local")
        try sb.mountExt4(at: root, sizeMiB: 96)
        try sb.mountExt4(at: local, sizeMiB: 128)
        try writeRandomFile(root + "/data.bin", size: 32 * E2E.MiB)
        Self.evict(root + "/data.bin")
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
        // 32 MiB, and the chunk sent again read again (direct: the cache does not hold it).
        #expect(waitUntil(timeout: 5) { server.process.stderr.contains("36.0 MiB read direct") }, "\(server.process.stderr.suffix(600))")
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
