import CAEAD
import COpenSSL
import Glibc

/// Protection of the data streams, chosen per transfer (like GridFTP's PROT levels).
/// The control stream is always TLS 1.3; this is about the bulk bytes.
public enum ProtectionLevel: UInt8, Sendable, CustomStringConvertible, Comparable {
    /// XXH3-128 per chunk: catches damage, not an attacker.
    case clear = 0
    /// Every frame authenticated with AES-256-GCM (GMAC over the whole frame), sent in clear.
    case safe = 1
    /// Every frame encrypted and authenticated with AES-256-GCM.
    case `private` = 2

    public init(parsing text: String) throws {
        switch text {
        case "clear": self = .clear
        case "safe": self = .safe
        case "private": self = .private
        default: throw TransferError(.usage, "--protection takes clear, safe or private, not '\(text)'")
        }
    }

    public var description: String {
        switch self {
        case .clear: "clear"
        case .safe: "safe"
        case .private: "private"
        }
    }

    public static func < (a: ProtectionLevel, b: ProtectionLevel) -> Bool { a.rawValue < b.rawValue }
}

/// Sealed data-frame layout (safe and private). After the 8-byte frame header:
///   u64 frame counter | subheader (chunk 40 / batch 16 bytes) | payload | 16-byte GCM tag
/// The nonce is the stream index (u32) and the counter (u64), both big-endian: every stream of
/// a session has its own index and counts its frames from 0, and each direction of a session
/// has its own key (exported from the TLS session), so a (key, nonce) pair never repeats.
/// Authenticated data: the frame header, the counter and the subheader's identity fields
/// (chunk: file id, index, length, codec; batch: the whole subheader). `private` encrypts the
/// rest (the chunk hash and the payload); `safe` encrypts nothing and authenticates everything.
enum Sealing {
    static let counterBytes = 8
    static let tagBytes = 16
    static let overheadBytes = counterBytes + tagBytes
    /// Bytes of a chunk subheader that stay readable in `private` (the hash after them is secret).
    static let chunkClearSubheaderBytes = 24

    /// Label for `SSL_export_keying_material`; one key per direction of flow.
    static func keyLabel(_ direction: Direction) -> String {
        direction == .push ? "EXPORTER-ferry-data-client-to-server" : "EXPORTER-ferry-data-server-to-client"
    }

    /// Runs the GCM operation `op` (seal or open) over a frame laid out at `frame`: the first
    /// `aadBytes` authenticated, the rest up to `total` encrypted or decrypted in place, the tag
    /// at `total`. The 12-byte nonce is the counter then the stream index, both big-endian.
    static func gcm(_ op: (OpaquePointer, UnsafePointer<UInt8>, UnsafePointer<UInt8>, Int, UnsafeMutablePointer<UInt8>, Int, UnsafeMutablePointer<UInt8>) -> Int32,
                    _ ctx: OpaquePointer, stream: UInt32, counter: UInt64, frame: UnsafeMutableRawPointer, aadBytes: Int, total: Int) -> Bool {
        var iv = (counter.bigEndian, stream.bigEndian)
        return withUnsafeBytes(of: &iv) { ivp in
            op(ctx, ivp.baseAddress!.assumingMemoryBound(to: UInt8.self),
               UnsafePointer(frame.assumingMemoryBound(to: UInt8.self)), aadBytes,
               (frame + aadBytes).assumingMemoryBound(to: UInt8.self), total - aadBytes,
               (frame + total).assumingMemoryBound(to: UInt8.self))
        } == 1
    }
}

/// One stream's sealing state, sender side. Not thread-safe: one per stream worker.
final class FrameSealer {
    private let gcm: OpaquePointer
    let level: ProtectionLevel
    let stream: UInt32
    private(set) var counter: UInt64 = 0

    init(key: [UInt8], level: ProtectionLevel, stream: Int) {
        precondition(level != .clear && key.count == 32)
        gcm = ferry_gcm_new(key)!
        self.level = level
        self.stream = UInt32(stream)
    }

    deinit { ferry_gcm_free(gcm) }

    /// Seals a frame laid out at `frame`: header (8), counter (8, written here), subheader of
    /// `subheaderBytes`, payload of `payloadBytes`; writes the tag after the payload. The frame
    /// header must already carry the final length. `clearSubheaderBytes`: how much of the
    /// subheader stays readable in `private`. Returns the counter used.
    @discardableResult
    func seal(frame: UnsafeMutableRawPointer, subheaderBytes: Int, clearSubheaderBytes: Int, payloadBytes: Int) -> UInt64 {
        let c = counter
        counter += 1
        frame.storeBytes(of: c.littleEndian, toByteOffset: Wire.frameHeaderBytes, as: UInt64.self)
        let bodyStart = Wire.frameHeaderBytes + Sealing.counterBytes
        let total = bodyStart + subheaderBytes + payloadBytes
        let aadBytes = level == .private ? bodyStart + clearSubheaderBytes : total
        let ok = Sealing.gcm({ ferry_gcm_seal($0, $1, $2, $3, $4, $5, $6) }, gcm, stream: stream, counter: c, frame: frame, aadBytes: aadBytes, total: total)
        precondition(ok, "AES-GCM seal failed")
        return c
    }
}

/// One stream's opening state, receiver side: checks the tag and the counter order.
final class FrameOpener {
    enum Verdict {
        /// Authentic and in order. `missing`: counters skipped before it (removed or
        /// reordered frames), whose contents must be fetched again.
        case accept(missing: ClosedRange<UInt64>?)
        /// Authentic but older than a frame already accepted: a replay or a reordered frame.
        case replayed(UInt64)
        /// The tag does not match: tampered (or forged). `position`: the counter the genuine
        /// frame at this place in the stream would carry.
        case tampered(position: UInt64)
        /// Authentic but impossible: a counter at the end of its range, or further ahead than
        /// any sender has frames in flight. Ends the stream.
        case invalid(UInt64)
    }

    /// How far ahead of the last accepted frame a counter may jump (frames removed in flight).
    static let gapMax: UInt64 = 512

    private let gcm: OpaquePointer
    let level: ProtectionLevel
    let stream: UInt32
    /// Lowest counter not yet accepted or skipped.
    private(set) var next: UInt64 = 0

    init(key: [UInt8], level: ProtectionLevel, stream: Int) {
        precondition(level != .clear && key.count == 32)
        gcm = ferry_gcm_new(key)!
        self.level = level
        self.stream = UInt32(stream)
    }

    deinit { ferry_gcm_free(gcm) }

    /// Opens a frame laid out at `frame` (header, counter, subheader, payload, tag; `frameBytes`
    /// counts everything including the header and tag). In `private` the secret part is
    /// decrypted in place.
    func open(frame: UnsafeMutableRawPointer, frameBytes: Int, clearSubheaderBytes: Int) -> Verdict {
        let bodyStart = Wire.frameHeaderBytes + Sealing.counterBytes
        let total = frameBytes - Sealing.tagBytes
        let c = UInt64(littleEndian: frame.loadUnaligned(fromByteOffset: Wire.frameHeaderBytes, as: UInt64.self))
        let aadBytes = level == .private ? min(total, bodyStart + clearSubheaderBytes) : total
        let ok = Sealing.gcm({ ferry_gcm_open($0, $1, $2, $3, $4, $5, $6) }, gcm, stream: stream, counter: c, frame: frame, aadBytes: aadBytes, total: total)
        guard ok else { return .tampered(position: next) }
        if c < next { return .replayed(c) }
        // Both ends hold the key in a push, so a hostile client can seal any counter: refuse
        // the end of the range (no overflow) and jumps larger than a sender has in flight.
        if c == .max || c - next > FrameOpener.gapMax { return .invalid(c) }
        let missing: ClosedRange<UInt64>? = c > next ? next...(c - 1) : nil
        next = c + 1
        return .accept(missing: missing)
    }
}
