import CXXHash
import Foundation
import Glibc
import Testing
@testable import Transfer

@Suite("Chunks and journal")
struct ChunkAndJournalTests {
    @Test("XXH3-128 detects a single flipped bit; the digest depends on chunk order")
    func hashes() {
        var data = [UInt8](repeating: 7, count: 1 << 20)
        let a = ChunkHash.of(data)
        data[12345] ^= 0x10
        let b = ChunkHash.of(data)
        #expect(a != b)
        #expect(FileDigest.of([a, b]) != FileDigest.of([b, a]))
        #expect(FileDigest.of([a, b]) == FileDigest.of([a, b]))
    }

    /// The chunk hash is XXH3-128 whichever loop this CPU runs (issue 18: AVX2 where the CPU and
    /// kernel allow it, SSE2 otherwise). Known answers from Debian's libxxhash 0.8.1 (a separately
    /// compiled SSE2 build; the empty input's is the one in xxHash's specification), at an odd
    /// address, across the short/long boundary at 240 bytes; then the loops against each other
    /// at every alignment within a cache line and lengths around the stripe and block sizes.
    @Test("XXH3-128 is the same function on every vector unit: known answers, and SSE2 against AVX2 at every alignment")
    func hashVariants() {
        let known: [(Int, UInt64, UInt64)] = [
            (0, 0x6001c324468d497f, 0x99aa06d3014798d8), (1, 0xc11d5b404d018be6, 0x0a066a54b29b706c),
            (16, 0x95c60b52cfd4890e, 0x4e3e652e8e22a3ca), (17, 0x2dbe8ced421955ad, 0x187d98c4e8e81cb5),
            (128, 0xaaf32c8f2a050a68, 0xfc6b3a5cf4e3219c), (129, 0x94a8ea09f37174cc, 0x2f144670bee13d28),
            (240, 0xc3a2ab85084e8179, 0x4ac21736d0d7a909), (241, 0xabfabd285b60b404, 0xbbbf9c747cdca4e1),
            (1024, 0xc294fc044385c546, 0x2403b435922cd967), (4099, 0xc78b4902f9c43203, 0xff4db26d83d4b67d),
            (1_048_581, 0x84d3a495cadfb8ee, 0xfcfddb56b227b3cd),
        ]
        var pattern = [UInt8](repeating: 0, count: (1 << 20) + 64)
        for i in pattern.indices { pattern[i] = UInt8(truncatingIfNeeded: (i * 31 + 7) % 251) }
        // The loops this build has: SSE2 and AVX2 on x86-64, the portable one elsewhere.
        let portable = ferry_xxh3_kind() == Int32(FERRY_XXH3_PORTABLE)
        let kinds = portable ? [Int32(FERRY_XXH3_PORTABLE)] : [Int32(FERRY_XXH3_SSE2), Int32(FERRY_XXH3_AVX2)]
        pattern.withUnsafeBytes { raw in
            let base = raw.baseAddress!
            for (length, low, high) in known {
                #expect(ChunkHash.of(base + 1, length) == ChunkHash(low: low, high: high), "length \(length)")
                for kind in kinds {
                    var lo: UInt64 = 0, hi: UInt64 = 0
                    guard ferry_xxh3_128_with(kind, base + 1, length, &lo, &hi) == 0 else { continue }
                    #expect(lo == low && hi == high, "kind \(kind), length \(length)")
                }
            }
            var avx2Ran = 0
            for offset in 0..<64 where !portable {
                for length in [241, 255, 256, 1023, 1024, 1025, 4096, 65_599, 4103] {
                    var l1: UInt64 = 0, h1: UInt64 = 0, l2: UInt64 = 0, h2: UInt64 = 0
                    #expect(ferry_xxh3_128_with(Int32(FERRY_XXH3_SSE2), base + offset, length, &l1, &h1) == 0)
                    guard ferry_xxh3_128_with(Int32(FERRY_XXH3_AVX2), base + offset, length, &l2, &h2) == 0 else { continue }
                    avx2Ran += 1
                    #expect(l1 == l2 && h1 == h2, "offset \(offset), length \(length)")
                }
            }
            // The process uses AVX2 exactly when the kernel says this CPU has it (its flags list
            // avx2 only with the YMM state enabled), and then both loops ran at every alignment.
            #if arch(x86_64)
            let flags = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
                .split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ") ?? []
            #expect((ferry_xxh3_kind() == Int32(FERRY_XXH3_AVX2)) == flags.contains("avx2"))
            #expect(avx2Ran == (flags.contains("avx2") ? 64 * 9 : 0))
            #endif
        }
    }

    @Test("zstd round trip; incompressible data is reported as not shrinking; corrupt input throws")
    func compression() throws {
        let c = Compressor()
        let text = Array(String(repeating: "CC(=O)Oc1ccccc1C(=O)O ZINC000000000042\n", count: 20_000).utf8)
        let dst = UnsafeMutableRawPointer.allocate(byteCount: Compressor.bound(text.count), alignment: 16)
        let back = UnsafeMutableRawPointer.allocate(byteCount: text.count, alignment: 16)
        defer { dst.deallocate(); back.deallocate() }
        let n = try #require(text.withUnsafeBytes { c.compress($0.baseAddress!, $0.count, into: dst, capacity: Compressor.bound(text.count), level: 1) })
        #expect(n < text.count / 3)
        try c.decompress(dst, n, into: back, expected: text.count)
        #expect(memcmp(back, text, text.count) == 0)
        var random = [UInt8](repeating: 0, count: 1 << 16)
        for i in random.indices { random[i] = UInt8.random(in: 0...255) }
        #expect(random.withUnsafeBytes { c.compress($0.baseAddress!, $0.count, into: dst, capacity: Compressor.bound(1 << 16), level: 1) } == nil)
        dst.storeBytes(of: UInt8(0xFF), toByteOffset: n / 2, as: UInt8.self)
        dst.storeBytes(of: UInt8(0x00), toByteOffset: n / 3, as: UInt8.self)
        #expect(throws: TransferError.self) { try c.decompress(dst, n, into: back, expected: text.count) }
    }

    @Test("the journal keeps durable chunks across reopen, and a changed source invalidates it")
    func journal() throws {
        let dir = try TempDir()
        let dfd = dir.fd
        let id = SourceIdentity(size: 10 << 20, mtimeSeconds: 1000, mtimeNanoseconds: 5, chunkBytes: 1 << 20)
        let j = try ResumeJournal.create(dir: dfd, name: "j", identity: id)
        #expect(j.chunkCount == 10)
        let h3 = ChunkHash(low: 3, high: 33)
        let h7 = ChunkHash(low: 7, high: 77)
        try j.recordDurable([(3, h3), (7, h7)])
        let (_, have) = try #require(ResumeJournal.open(dir: dfd, name: "j", identity: id))
        #expect(have == [3: h3, 7: h7])
        var changed = id
        changed.mtimeSeconds += 1
        #expect(ResumeJournal.open(dir: dfd, name: "j", identity: changed) == nil)
        var otherChunk = id
        otherChunk.chunkBytes = 2 << 20
        #expect(ResumeJournal.open(dir: dfd, name: "j", identity: otherChunk) == nil)
    }

    @Test("a journal's cleared records are gone after reopen; its header names its version; a new journal is a new file, so a holder of the old one writes where no one reads")
    func journalForgetAndReplace() throws {
        let dir = try TempDir()
        let dfd = dir.fd
        let id = SourceIdentity(size: 10 << 20, mtimeSeconds: 1000, mtimeNanoseconds: 5, chunkBytes: 1 << 20)
        let range = try ChunkRange(first: 2, count: 6, of: 10)
        let old = try ResumeJournal.create(dir: dfd, name: "r", identity: id, range: range)
        let h = (0..<10).map { ChunkHash(low: UInt64($0), high: UInt64($0) * 11) }
        try old.recordDurable([(2, h[2]), (3, h[3]), (5, h[5])])
        try old.forget([3, 9])  // 9: outside the range, ignored
        let (_, have) = try #require(ResumeJournal.open(dir: dfd, name: "r", identity: id, range: range))
        #expect(have == [2: h[2], 5: h[5]])
        #expect(ResumeJournal.storedIdentity(dir: dfd, name: "r") == id && ResumeJournal.storedIdentity(dir: dfd, name: "nothing") == nil)
        // Made again (a rerun that starts the range over): the old holder's records land elsewhere.
        _ = try ResumeJournal.create(dir: dfd, name: "r", identity: id, range: range)
        try old.recordDurable([(4, h[4])])
        let (_, fresh) = try #require(ResumeJournal.open(dir: dfd, name: "r", identity: id, range: range))
        #expect(fresh.isEmpty, "\(fresh)")
    }

    @Test("a torn journal record is ignored, not trusted")
    func tornRecord() throws {
        let dir = try TempDir()
        let dfd = dir.fd
        let id = SourceIdentity(size: 4 << 20, mtimeSeconds: 1, mtimeNanoseconds: 0, chunkBytes: 1 << 20)
        let j = try ResumeJournal.create(dir: dfd, name: "j", identity: id)
        try j.recordDurable([(1, ChunkHash(low: 11, high: 12)), (2, ChunkHash(low: 21, high: 22))])
        // Flip a byte of record 2's hash: its check word no longer matches.
        let fd = openat(dfd, "j", O_RDWR)
        var b: UInt8 = 0xAB
        pwrite(fd, &b, 1, off_t(ResumeJournal.headerBytes + 2 * ResumeJournal.recordBytes + 20))
        close(fd)
        let (_, have) = try #require(ResumeJournal.open(dir: dfd, name: "j", identity: id))
        #expect(have.keys.sorted() == [1])
    }

    @Test("a range journal (striping) records only its own chunks, reopens only for the same range and source, and ignores a torn record")
    func rangeJournal() throws {
        let dir = try TempDir()
        let dfd = dir.fd
        // 10 MiB in 1 MiB chunks; this node's range is chunks 4, 5 and 6.
        let id = SourceIdentity(size: 10 << 20, mtimeSeconds: 1000, mtimeNanoseconds: 5, chunkBytes: 1 << 20)
        let range = try ChunkRange(first: 4, count: 3, of: 10)
        let j = try ResumeJournal.create(dir: dfd, name: "r", identity: id, range: range)
        let h4 = ChunkHash(low: 4, high: 44), h5 = ChunkHash(low: 5, high: 55), h6 = ChunkHash(low: 6, high: 66)
        try j.recordDurable([(4, h4), (6, h6)])
        // Records sit at their place in the range, not the file: the journal is 64 + 3 × 32 bytes.
        var st = stat()
        #expect(fstatat(dfd, "r", &st, 0) == 0 && st.st_size == off_t(ResumeJournal.headerBytes + 3 * ResumeJournal.recordBytes))
        // A chunk of another range is refused and nothing is written.
        #expect(throws: TransferError.self) { try j.recordDurable([(5, h5), (7, ChunkHash(low: 7, high: 77))]) }
        #expect(throws: TransferError.self) { try j.recordDurable([(3, ChunkHash(low: 3, high: 33))]) }
        let (again, have) = try #require(ResumeJournal.open(dir: dfd, name: "r", identity: id, range: range))
        #expect(have == [4: h4, 6: h6])
        #expect(again.range == range && again.chunkCount == 10)
        // Not the whole file's journal, nor another range's, nor another version of the source.
        #expect(ResumeJournal.open(dir: dfd, name: "r", identity: id) == nil)
        #expect(ResumeJournal.open(dir: dfd, name: "r", identity: id, range: try ChunkRange(first: 4, count: 2, of: 10)) == nil)
        #expect(ResumeJournal.open(dir: dfd, name: "r", identity: id, range: try ChunkRange(first: 3, count: 3, of: 10)) == nil)
        var changed = id
        changed.mtimeNanoseconds += 1
        #expect(ResumeJournal.open(dir: dfd, name: "r", identity: changed, range: range) == nil)
        // ... and a whole-file journal is not a range's.
        let whole = try ResumeJournal.create(dir: dfd, name: "w", identity: id)
        try whole.recordDurable([(5, h5)])
        #expect(ResumeJournal.open(dir: dfd, name: "w", identity: id, range: range) == nil)
        // A torn record (a byte of chunk 6's hash flipped) is dropped, the others kept.
        let fd = openat(dfd, "r", O_RDWR)
        var b: UInt8 = 0x5A
        pwrite(fd, &b, 1, off_t(ResumeJournal.headerBytes + 2 * ResumeJournal.recordBytes + 20))
        close(fd)
        let (_, torn) = try #require(ResumeJournal.open(dir: dfd, name: "r", identity: id, range: range))
        #expect(torn == [4: h4])
        // A range must hold a chunk and lie within the file, when made and when journaled.
        #expect(throws: TransferError.self) { try ChunkRange(first: 8, count: 3, of: 10) }
        #expect(throws: TransferError.self) { try ChunkRange(first: 0, count: 0, of: 10) }
        #expect(throws: TransferError.self) { try ChunkRange(first: -1, count: 2, of: 10) }
        #expect(throws: TransferError.self) { try ChunkRange(first: Int.max, count: Int.max, of: 10) }
        let small = SourceIdentity(size: 2 << 20, mtimeSeconds: 1000, mtimeNanoseconds: 5, chunkBytes: 1 << 20)
        #expect(throws: TransferError.self) { try ResumeJournal.create(dir: dfd, name: "x", identity: small, range: range) }
        #expect(faccessat(dfd, "x", F_OK, 0) != 0)
    }

    @Test("range journal names: one per range beside the partial, skipped by walks, within NAME_MAX for long names")
    func rangeJournalNames() throws {
        let a = PartialNames.rangeJournal("data.bin", try ChunkRange(first: 0, count: 64, of: 256))
        let b = PartialNames.rangeJournal("data.bin", try ChunkRange(first: 64, count: 64, of: 256))
        #expect(a == ".data.bin.r0+64.ferry-journal" && a != b)
        #expect(PartialNames.isHelper(a) && PartialNames.isHelper(b))
        #expect(a != PartialNames.journal("data.bin"))
        let long = String(repeating: "n", count: 250)
        let la = PartialNames.rangeJournal(long, try ChunkRange(first: 0, count: 64, of: 1 << 20))
        let lb = PartialNames.rangeJournal(long, try ChunkRange(first: 999_936, count: 64, of: 1 << 20))
        #expect(la.utf8.count <= 255 && lb.utf8.count <= 255 && la != lb && PartialNames.isHelper(la))
    }

    /// Simulates a link on which compressed chunks deliver `compressedRate` raw bytes per
    /// second and raw chunks `rawRate`; returns the share of chunks sent compressed.
    /// The probe sees a core that compresses at `sampleSpeed` bytes/s with ratio 4.
    private func compressedShare(compressedRate: Double, rawRate: Double, sampleSpeed: Double = 400e6) -> Double {
        var p = CompressionPolicy(mode: .auto)
        var compressible: Bool? = nil
        var since = 0
        var now: UInt64 = 1
        var compressed = 0
        let chunks = 2000
        for _ in 0..<chunks {
            var tick: UInt64 = 0
            let clock = { () -> UInt64 in
                tick += UInt64(65536 / sampleSpeed * 1e9)
                return tick
            }
            let level = p.level(compressible: &compressible, chunksSinceProbe: &since, sampleSize: 65536, probe: { _ in 16_384 }, clock: clock)
            let bytes = 4 << 20
            now += UInt64(Double(bytes) / (level != nil ? compressedRate : rawRate) * 1e9)
            if level != nil { compressed += 1 }
            p.delivered(rawBytes: bytes, compressedArm: level != nil, nowNs: now)
        }
        return Double(compressed) / Double(chunks)
    }

    @Test("auto compression settles on the faster arm: compressed on a slow link, raw on a fast one")
    func policyPicksFasterArm() {
        // 1 Gbit/s link, fast core: compression promises ~3x and delivers it.
        #expect(compressedShare(compressedRate: 300e6, rawRate: 125e6) > 0.9)
        // Loopback-like: raw is fast, the prediction never promises a gain: never compressed.
        #expect(compressedShare(compressedRate: 300e6, rawRate: 1000e6) == 0)
        // The prediction promised a gain that did not materialise: back to raw, rarely re-tried.
        #expect(compressedShare(compressedRate: 80e6, rawRate: 125e6) < 0.1)
    }

    /// The levels `auto` uses on a link of `rawRate` bytes/s with two cores: a core compresses
    /// the sample at -1 / 1 / 3 at 400 / 250 / 100 MB/s to ratios 2.9 / 3.7 / 4.2 (SMILES-like);
    /// compressed chunks deliver what the slower of the cores and the wire allows. Returns the
    /// count of chunks sent at each level (nil: raw).
    private func levelsUsed(rawRate: Double) -> [Int32?: Int] {
        let speed: [Int32: Double] = [-1: 400e6, 1: 250e6, 3: 100e6]
        let size: [Int32: Int] = [-1: 22_600, 1: 17_712, 3: 15_604]
        var p = CompressionPolicy(mode: .auto, parallelism: 2)
        var compressible: Bool? = nil
        var since = 0
        var now: UInt64 = 1
        var used: [Int32?: Int] = [:]
        var tick: UInt64 = 0
        var probing: Int32 = -1
        for _ in 0..<2000 {
            let clock = { () -> UInt64 in tick += UInt64(65536 / speed[probing]! * 1e9); return tick }
            let level = p.level(compressible: &compressible, chunksSinceProbe: &since, sampleSize: 65536, probe: { l in probing = l; return size[l] }, clock: clock)
            let bytes = 4 << 20
            let rate = level.map { min(2 * speed[$0]!, rawRate * 65536 / Double(size[$0]!)) } ?? rawRate
            now += UInt64(Double(bytes) / rate * 1e9)
            used[level, default: 0] += 1
            p.delivered(rawBytes: bytes, compressedArm: level != nil, nowNs: now)
        }
        return used
    }

    @Test("auto compression picks its level from its measurements: -1 when the CPU is the limit, 1 on a 1 Gbit/s link, 3 on 100 Mbit/s, none on loopback")
    func policyPicksLevel() {
        let gigabit = levelsUsed(rawRate: 125e6)
        #expect((gigabit[1] ?? 0) > 1800, "\(gigabit)")
        let slow = levelsUsed(rawRate: 12.5e6)
        #expect((slow[3] ?? 0) > 1800, "\(slow)")
        // 5 Gbit/s: the cores are the limit (2 x 400 MB/s against the wire's 625): never a
        // slower level (raw, or -1 when tried).
        let five = levelsUsed(rawRate: 625e6)
        #expect(five[1] == nil && five[3] == nil, "\(five)")
        let loopback = levelsUsed(rawRate: 4000e6)
        #expect(loopback.keys.allSatisfy { $0 == nil }, "\(loopback)")
    }

    @Test("the compression policy sends incompressible data raw without compressing whole chunks")
    func policyIncompressible() {
        var p = CompressionPolicy(mode: .auto)
        var compressible: Bool? = nil
        var since = 0
        var probes = 0
        for _ in 0..<64 {
            let level = p.level(compressible: &compressible, chunksSinceProbe: &since, sampleSize: 65536, probe: { _ in
                probes += 1
                return nil
            })
            #expect(level == nil)
        }
        #expect(probes == 5)  // one probe per 16 chunks (the first also a cold run, not timed), at one level
        var off = CompressionPolicy(mode: .off)
        #expect(off.level(compressible: &compressible, chunksSinceProbe: &since, sampleSize: 1, probe: { _ in 1 }) == nil)
    }
}

@Suite("io_uring")
struct RingTests {
    @Test("READ_FIXED and WRITE_FIXED through registered buffers move the bytes they claim")
    func fixedBuffers() throws {
        let dir = try TempDir()
        let ring = try Ring(entries: 8)
        let pool = try BufferPool(count: 2, bytesPerBuffer: 1 << 16)
        try pool.register(with: ring)
        let fd = open(dir.path + "/f", O_RDWR | O_CREAT, 0o600)
        defer { close(fd) }
        let src = pool.buffer(0)
        for i in 0..<(1 << 16) { src.storeBytes(of: UInt8(truncatingIfNeeded: i * 7), toByteOffset: i, as: UInt8.self) }
        let w = try ring.runOne { try ring.write(fd: fd, buffer: src, length: 1 << 16, offset: 4096, bufferIndex: 0, tag: 1) }
        #expect(w == 1 << 16)
        let r = try ring.runOne { try ring.read(fd: fd, buffer: pool.buffer(1), length: 1 << 16, offset: 4096, bufferIndex: 1, tag: 2) }
        #expect(r == 1 << 16)
        #expect(memcmp(pool.buffer(0), pool.buffer(1), 1 << 16) == 0)
        var st = stat()
        fstat(fd, &st)
        #expect(st.st_size == 4096 + (1 << 16))
    }

    @Test("buffers registered lazily: plain operations until the first fixed one, which registers them unless something is in flight; the bytes are right either way")
    func lazyRegistration() throws {
        let dir = try TempDir()
        let ring = try Ring(entries: 8)
        let pool = try BufferPool(count: 2, bytesPerBuffer: 1 << 16)
        pool.registerLazily(with: ring)
        let fd = open(dir.path + "/f", O_RDWR | O_CREAT, 0o600)
        defer { close(fd) }
        let src = pool.buffer(0)
        for i in 0..<(1 << 16) { src.storeBytes(of: UInt8(truncatingIfNeeded: i * 13), toByteOffset: i, as: UInt8.self) }
        // A plain write (a batch's kind of operation) does not register.
        #expect(try ring.runOne { try ring.write(fd: fd, buffer: src, length: 1 << 16, offset: 0, bufferIndex: nil, tag: 1) } == 1 << 16)
        #expect(!ring.buffersRegistered)
        // A fixed operation while a receive is in flight goes plain, and registers nothing.
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let byte = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1)
        defer { byte.deallocate() }
        try ring.recv(fd: fds[0], buffer: byte, length: 1, tag: 9)
        try ring.read(fd: fd, buffer: pool.buffer(1), length: 1 << 16, offset: 0, bufferIndex: 1, tag: 2)
        #expect(!ring.buffersRegistered)
        #expect(write(fds[1], "x", 1) == 1)
        var got: [UInt64: Int32] = [:]
        try ring.drain { tag, res in got[tag] = res }
        #expect(got[2] == 1 << 16 && got[9] == 1)
        #expect(memcmp(pool.buffer(0), pool.buffer(1), 1 << 16) == 0)
        // The first fixed operation with nothing in flight registers, and moves the bytes.
        memset(pool.buffer(1), 0, 1 << 16)
        #expect(try ring.runOne { try ring.read(fd: fd, buffer: pool.buffer(1), length: 1 << 16, offset: 0, bufferIndex: 1, tag: 3) } == 1 << 16)
        #expect(ring.buffersRegistered)
        #expect(memcmp(pool.buffer(0), pool.buffer(1), 1 << 16) == 0)
    }

    @Test("a linked timeout cancels a receive that never completes")
    func timeout() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let ring = try Ring(entries: 8)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 8)
        defer { buf.deallocate() }
        let start = monotonicNs()
        let r = try ring.runOne(timeoutNs: 200_000_000) { try ring.recv(fd: fds[0], buffer: buf, length: 16, tag: 1) }
        #expect(r == -ETIMEDOUT)
        #expect(monotonicNs() - start < 5_000_000_000)
    }
}
