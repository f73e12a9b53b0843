import CXXHash
import CZstd

/// XXH3-128 of one chunk's raw (uncompressed) bytes.
public struct ChunkHash: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var low: UInt64
    public var high: UInt64

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    public static let zero = ChunkHash(low: 0, high: 0)

    /// Hashes `length` bytes at `data`.
    @inline(__always)
    public static func of(_ data: UnsafeRawPointer, _ length: Int) -> ChunkHash {
        var lo: UInt64 = 0
        var hi: UInt64 = 0
        ferry_xxh3_128(data, length, &lo, &hi)
        return ChunkHash(low: lo, high: hi)
    }

    public static func of(_ bytes: [UInt8]) -> ChunkHash {
        bytes.withUnsafeBytes { of($0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, $0.count) }
    }

    public var description: String {
        String(high, radix: 16).leftPadded(16) + String(low, radix: 16).leftPadded(16)
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}

/// The whole-file digest: XXH3-128 over the chunk hashes in order (16 bytes each, little end
/// first). Both sides compute it independently: the sender from what it read, the receiver
/// from what it verified and wrote.
public struct FileDigest {
    private let state: OpaquePointer

    public init() { state = ferry_xxh3_create() }

    public mutating func add(_ h: ChunkHash) {
        var pair = (h.low.littleEndian, h.high.littleEndian)
        withUnsafeBytes(of: &pair) { ferry_xxh3_update(state, $0.baseAddress, 16) }
    }

    public func finish() -> ChunkHash {
        var lo: UInt64 = 0
        var hi: UInt64 = 0
        ferry_xxh3_digest(state, &lo, &hi)
        ferry_xxh3_free(state)
        return ChunkHash(low: lo, high: hi)
    }

    /// Digest of a list of chunk hashes.
    public static func of<S: Sequence>(_ hashes: S) -> ChunkHash where S.Element == ChunkHash {
        var d = FileDigest()
        for h in hashes { d.add(h) }
        return d.finish()
    }
}

/// How a chunk's payload travels.
enum ChunkCodec: UInt8 {
    case raw = 0
    case zstd = 1
    /// All zero bytes (a hole in a sparse file): no payload at all.
    case zero = 2
}

/// One zstd compression and one decompression context, reused for every chunk of a worker:
/// nothing is allocated per chunk.
final class Compressor {
    private let cctx: OpaquePointer
    private let dctx: OpaquePointer
    private var currentLevel: Int32 = -1000

    init() {
        cctx = ZSTD_createCCtx()
        dctx = ZSTD_createDCtx()
    }

    deinit {
        ZSTD_freeCCtx(cctx)
        ZSTD_freeDCtx(dctx)
    }

    static func bound(_ n: Int) -> Int { ZSTD_compressBound(n) }

    /// Compresses into `dst`; nil when the result would not be smaller than the input.
    func compress(_ src: UnsafeRawPointer, _ n: Int, into dst: UnsafeMutableRawPointer, capacity: Int, level: Int32) -> Int? {
        if level != currentLevel {
            ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level)
            currentLevel = level
        }
        let r = ZSTD_compress2(cctx, dst, min(capacity, n), src, n)
        if ferry_zstd_is_error(r) != 0 || r >= n { return nil }
        return r
    }

    /// Decompresses exactly `expected` bytes; throws when the frame is corrupt or of another size.
    func decompress(_ src: UnsafeRawPointer, _ n: Int, into dst: UnsafeMutableRawPointer, expected: Int) throws {
        let r = ZSTD_decompressDCtx(dctx, dst, expected, src, n)
        if ferry_zstd_is_error(r) != 0 {
            throw TransferError(.verify, "corrupt compressed chunk: \(String(cString: ZSTD_getErrorName(r)))")
        }
        if r != expected { throw TransferError(.verify, "compressed chunk decodes to \(r) bytes, expected \(expected)") }
    }
}

@inline(__always)
func isAllZero(_ p: UnsafeRawPointer, _ n: Int) -> Bool { ferry_all_zero(p, n) != 0 }

/// Hashes of all-zero chunks (holes), by length: computed once per length, not per chunk.
struct ZeroHashes {
    private var byLength: [Int: ChunkHash] = [:]

    /// `scratch` must hold `n` bytes; it is zeroed when a new length is seen.
    mutating func hash(_ n: Int, scratch: UnsafeMutableRawPointer) -> ChunkHash {
        if let h = byLength[n] { return h }
        scratch.initializeMemory(as: UInt8.self, repeating: 0, count: n)
        let h = ChunkHash.of(scratch, n)
        byLength[n] = h
        return h
    }
}
