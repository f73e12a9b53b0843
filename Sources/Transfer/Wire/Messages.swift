/// Which way data flows, seen from the client that opened the session.
public enum Direction: UInt8, Sendable {
    /// The client sends, the server receives.
    case push = 1
    /// The server sends, the client receives.
    case pull = 2
    /// The server lists a tree on the control stream (`ferry ls`, `du`, `stat`, `check`, and
    /// `cp --dry-run`): entries, and with `checksum` each file's digest; no data streams.
    case list = 3
    /// The server removes entries beneath a destination that the client names (`cp --delete`
    /// after a push): with the user's rights, never through a symlink, never the root.
    case delete = 4
    /// The server renames a striped file's partial copy into place once every range of it is
    /// in (`StripedCommit`): one COMMIT request (a MANIFEST frame) on the control stream, one
    /// answer; write rights on the path, the user's identity, no data streams.
    case commit = 5
}

/// Compression of chunks on the wire.
public enum CompressionMode: Equatable, Sendable, CustomStringConvertible {
    case off
    /// Per file and per chunk: probe compressibility, then keep compressing only while it
    /// delivers more bytes per second than sending raw (the link, not the CPU, is the limit).
    case auto
    /// Always zstd at this level (1...19), raw when a chunk does not shrink.
    case level(Int32)

    public init(parsing text: String) throws {
        switch text {
        case "auto": self = .auto
        case "off", "none", "0": self = .off
        default:
            guard let n = Int32(text), (1...19).contains(n) else {
                throw TransferError(.usage, "--compress takes auto, off or a level 1..19, not '\(text)'")
            }
            self = .level(n)
        }
    }

    public var description: String {
        switch self {
        case .off: "off"
        case .auto: "auto"
        case .level(let n): "\(n)"
        }
    }

    func encode(_ w: inout ByteWriter) {
        switch self {
        case .off: w.u8(0); w.u8(0)
        case .auto: w.u8(1); w.u8(0)
        case .level(let n): w.u8(2); w.u8(UInt8(n))
        }
    }

    static func decode(_ r: inout ByteReader) throws -> CompressionMode {
        let kind = try r.u8()
        let level = try r.u8()
        switch kind {
        case 0: return .off
        case 1: return .auto
        case 2 where (1...19).contains(level): return .level(Int32(level))
        default: throw TransferError.protocolError("bad compression mode")
        }
    }
}

/// A run of whole chunks of one file, `[first, first + count)`: the part of a striped file one
/// transfer node moves (docs/STRIPING.md). Chunk-aligned, so two ranges of one file never share
/// a byte of the partial file, nor a record of a journal.
public struct ChunkRange: Equatable, Hashable, Sendable, CustomStringConvertible {
    public private(set) var first: Int
    public private(set) var count: Int
    public var end: Int { first + count }
    public var description: String { "\(first)+\(count)" }

    /// A range of a file of `chunkCount` chunks: at least one chunk, all within the file.
    public init(first: Int, count: Int, of chunkCount: Int) throws {
        guard first >= 0, count >= 1, first <= chunkCount - count else {
            throw TransferError.protocolError("chunk range \(first)+\(count) is not within the file's \(chunkCount) chunks")
        }
        self.first = first
        self.count = count
    }

    public func contains(_ index: Int) -> Bool { index >= first && index < end }
}

/// What renames a striped file into place (`Direction.commit`, `StripedCommit`): the source
/// version, its mode, the chunk size of its ranges, its whole-file digest (the source's, the
/// same definition as a copy's), and the ranges, which must cover the file's chunks exactly.
public struct CommitRequest: Sendable, Equatable {
    public var size: UInt64
    public var mtimeSeconds: Int64
    public var mtimeNanoseconds: UInt32
    public var mode: UInt32
    public var chunkBytes: Int
    public var digest: ChunkHash
    public var ranges: [ChunkRange]
    static let rangesMax = 1 << 16
    /// A file's chunks, as a receiver bounds them (`Receiver.chunksPerFileMax`): the commit
    /// holds one hash per chunk, so a declared size never decides a larger allocation.
    static let chunksMax = 1 << 22

    public init(size: UInt64, mtimeSeconds: Int64, mtimeNanoseconds: UInt32, mode: UInt32, chunkBytes: Int, digest: ChunkHash, ranges: [ChunkRange]) {
        self.size = size; self.mtimeSeconds = mtimeSeconds; self.mtimeNanoseconds = mtimeNanoseconds
        self.mode = mode; self.chunkBytes = chunkBytes; self.digest = digest; self.ranges = ranges
    }

    var chunkCount: Int { size == 0 ? 0 : Int((size + UInt64(chunkBytes) - 1) / UInt64(chunkBytes)) }

    func encode() -> [UInt8] {
        var w = ByteWriter(capacity: 48 + ranges.count * 16)
        w.u64(size)
        w.i64(mtimeSeconds)
        w.u32(mtimeNanoseconds)
        w.u32(mode)
        w.u32(UInt32(chunkBytes))
        w.hash(digest)
        w.u32(UInt32(ranges.count))
        for r in ranges {
            w.u64(UInt64(r.first))
            w.u64(UInt64(r.count))
        }
        return w.bytes
    }

    /// Every field checked: the chunk size as a HELLO's, the ranges within the file, sorted,
    /// touching, and covering it from its first chunk to its last.
    static func decode(_ bytes: [UInt8]) throws -> CommitRequest {
        var r = ByteReader(bytes)
        let size = try r.u64(), sec = try r.i64(), nsec = try r.u32(), mode = try r.u32()
        let chunkBytes = Int(try r.u32())
        guard (Wire.chunkBytesMin...Wire.chunkBytesMax).contains(chunkBytes), size <= 1 << 56 else {
            throw TransferError.protocolError("a commit's chunk size or file size is out of range")
        }
        let digest = try r.hash()
        let n = Int(try r.u32())
        guard n >= 1, n <= rangesMax, r.remaining == n * 16 else { throw TransferError.protocolError("a commit's range list is malformed") }
        var c = CommitRequest(size: size, mtimeSeconds: sec, mtimeNanoseconds: nsec, mode: mode & 0o7777, chunkBytes: chunkBytes, digest: digest, ranges: [])
        let chunks = c.chunkCount
        guard chunks <= CommitRequest.chunksMax else { throw TransferError.protocolError("a commit of \(chunks) chunks (at most \(CommitRequest.chunksMax))") }
        c.ranges.reserveCapacity(n)
        for _ in 0..<n {
            let first = try r.u64(), count = try r.u64()
            guard first <= 1 << 48, count <= 1 << 48 else { throw TransferError.protocolError("chunk range out of bounds") }
            c.ranges.append(try ChunkRange(first: Int(first), count: Int(count), of: chunks))
        }
        try r.expectEnd()
        do { try c.checkCover() } catch { throw TransferError.protocolError(asTransferError(error).message) }
        return c
    }

    /// The ranges, in order, cover chunks 0..<chunkCount exactly (no gap, no overlap).
    func checkCover() throws {
        guard chunkCount <= CommitRequest.chunksMax else {
            throw TransferError(.usage, "a commit of \(chunkCount) chunks: at most \(CommitRequest.chunksMax) (use larger chunks)")
        }
        var next = 0
        for range in ranges {
            guard range.first == next else {
                throw TransferError(.usage, "the ranges do not cover the file's \(chunkCount) chunks exactly: \(range) follows chunk \(next - 1)")
            }
            next = range.end
        }
        guard next == chunkCount, chunkCount > 1 else { throw TransferError(.usage, "the ranges cover \(next) of the file's \(chunkCount) chunks") }
    }
}

/// One range of one file, with the file's identity as the planner saw it: what a range
/// session (HELLO extension 2) moves. The sender refuses it when its file is no longer that
/// version; the receiver writes the range into the file's shared partial beside its own
/// range journal and renames nothing (`Direction.commit`, later, does).
public struct StripeRange: Sendable, Equatable {
    public var first: Int
    public var count: Int
    public var size: UInt64
    public var mtimeSeconds: Int64
    public var mtimeNanoseconds: UInt32

    public init(first: Int, count: Int, size: UInt64, mtimeSeconds: Int64, mtimeNanoseconds: UInt32) {
        self.first = first; self.count = count; self.size = size
        self.mtimeSeconds = mtimeSeconds; self.mtimeNanoseconds = mtimeNanoseconds
    }

    /// The chunks, checked against the file's chunk count at `chunkBytes`; a range session
    /// is for a file of more than one chunk (a one-chunk file travels whole in a batch).
    func chunks(chunkBytes: Int) throws -> ChunkRange {
        guard size <= 1 << 56 else { throw TransferError.protocolError("range of a file of \(size) bytes") }
        let n = size == 0 ? 0 : Int((size + UInt64(chunkBytes) - 1) / UInt64(chunkBytes))
        guard n > 1 else { throw TransferError.protocolError("a range is for a file of more than one chunk (\(size) bytes at \(chunkBytes)-byte chunks)") }
        return try ChunkRange(first: first, count: count, of: n)
    }

    /// Throws (a protocol error naming why) unless `chunks` would accept the range.
    public func check(chunkBytes: Int) throws { _ = try chunks(chunkBytes: chunkBytes) }

    /// Bytes of the file within the range (its last chunk may be short).
    func bytes(chunkBytes: Int) -> UInt64 {
        let start = UInt64(first) * UInt64(chunkBytes)
        return min(size, UInt64(first + count) * UInt64(chunkBytes)) - min(size, start)
    }
}

/// Options of one transfer, as the client asks for them.
public struct TransferOptions: Sendable {
    public var recursive = false
    /// Data streams; nil = automatic (see `automaticStreams`).
    public var streams: Int?
    public var compression: CompressionMode = .auto
    /// Compare content (whole-file digest), not size and mtime, to decide what is in sync.
    public var checksum = false
    /// Bytes per second on the wire for the whole transfer; nil = unlimited.
    public var bandwidthLimitBytesPerSecond: UInt64?
    public var chunkBytes = Wire.chunkBytesDefault
    /// Data-stream protection; the control stream is TLS 1.3 at every level.
    public var protection: ProtectionLevel = .private
    /// Include and exclude rules, applied where the tree is walked (the sender; both sides of
    /// a listing).
    public var filters = FilterRules()
    /// A listing (`Direction.list`): how deep below the root to go (0: the root alone, 1: its
    /// entries, `UInt32.max`: everything).
    public var listDepth: UInt32 = .max
    /// A range session (striping): one range of one file (push or pull, not recursive).
    public var range: StripeRange?
    /// A files part (striping): only these paths beneath the source directory (with their
    /// ancestor directories), in this order; with `recursive`, without filters. A pull sends
    /// them to the server in SELECTION frames after its HELLO (extension 3).
    public var selection: [String]?

    public init() {}

    /// Two streams per core, between 4 and 8. Each stream's thread works synchronously
    /// (receive, verify, write), so a second stream per core keeps the core busy while the
    /// first waits on its socket; on a long fat link several TCP streams also recover from
    /// loss independently. Measured on 2 cores, 2 GiB over loopback: 1 stream 3.08 s,
    /// 2 streams 2.74 s, 4 streams 2.39 s.
    public static var automaticStreams: Int {
        let cores = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        return max(4, min(8, 2 * cores))
    }
}

import Glibc

/// The client's opening message on the control stream.
struct Hello {
    /// A user token (`ferry1....`), or empty when the client authenticates by its center
    /// certificate alone.
    var token: [UInt8]
    var direction: Direction
    /// Path beneath the server's root: where to write (push) or what to read (pull).
    var path: String
    var options: TransferOptions

    func encode() -> [UInt8] {
        var w = ByteWriter()
        w.blob(token)
        w.u8(direction.rawValue)
        w.string(path)
        w.u8(options.recursive ? 1 : 0)
        w.u8(UInt8(options.streams ?? 0))
        options.compression.encode(&w)
        w.u8(options.checksum ? 1 : 0)
        w.u64(options.bandwidthLimitBytesPerSecond ?? 0)
        w.u32(UInt32(options.chunkBytes))
        w.u8(options.protection.rawValue)
        // Extensions: sent only when used, so that a plain copy's HELLO is the same bytes as
        // before them. Version 1: depth and filters; version 2: the same, then a range (a peer
        // that predates ranges refuses it as an unknown extension, never ignores it).
        if let range = options.range {
            w.u8(2)
            w.u32(options.listDepth)
            options.filters.encode(&w)
            w.u64(UInt64(range.first))
            w.u64(UInt64(range.count))
            w.u64(range.size)
            w.i64(range.mtimeSeconds)
            w.u32(range.mtimeNanoseconds)
        } else if let selection = options.selection {
            w.u8(3)
            w.u32(options.listDepth)
            options.filters.encode(&w)
            w.u32(UInt32(selection.count))
        } else if !options.filters.isEmpty || options.listDepth != .max || direction == .list {
            w.u8(1)
            w.u32(options.listDepth)
            options.filters.encode(&w)
        }
        return w.bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> Hello {
        var r = ByteReader(bytes)
        let token = try r.blob(maxBytes: Wire.tokenBytesMax)
        guard let direction = Direction(rawValue: try r.u8()) else { throw TransferError.protocolError("bad direction") }
        let path = try r.string(maxBytes: PathLimits.pathBytesMax)
        var o = TransferOptions()
        o.recursive = try r.u8() != 0
        let streams = Int(try r.u8())
        o.streams = streams == 0 ? nil : streams
        o.compression = try CompressionMode.decode(&r)
        o.checksum = try r.u8() != 0
        let bw = try r.u64()
        o.bandwidthLimitBytesPerSecond = bw == 0 ? nil : bw
        o.chunkBytes = Int(try r.u32())
        guard (Wire.chunkBytesMin...Wire.chunkBytesMax).contains(o.chunkBytes) else {
            throw TransferError.protocolError("chunk size \(o.chunkBytes) outside \(Wire.chunkBytesMin)...\(Wire.chunkBytesMax)")
        }
        guard streams <= Wire.streamsMax else { throw TransferError.protocolError("too many streams") }
        guard let protection = ProtectionLevel(rawValue: try r.u8()) else { throw TransferError.protocolError("unknown protection level") }
        o.protection = protection
        let extended = r.remaining > 0
        var version: UInt8 = 0
        if extended {
            version = try r.u8()
            guard (1...3).contains(version) else { throw TransferError.protocolError("unknown HELLO extension") }
            o.listDepth = try r.u32()
            o.filters = try FilterRules.decode(&r)
            if version == 2 {
                let first = try r.u64(), count = try r.u64()
                guard first <= 1 << 48, count <= 1 << 48 else { throw TransferError.protocolError("chunk range out of bounds") }
                let range = StripeRange(first: Int(first), count: Int(count), size: try r.u64(), mtimeSeconds: try r.i64(), mtimeNanoseconds: try r.u32())
                guard direction == .push || direction == .pull, !o.recursive, !o.checksum else {
                    throw TransferError.protocolError("a range is of one file, pushed or pulled, without --checksum")
                }
                _ = try range.chunks(chunkBytes: o.chunkBytes)
                o.range = range
            }
            if version == 3 {
                // The paths follow in SELECTION frames (`Selection`); here only their count.
                let n = Int(try r.u32())
                guard n >= 1, n <= Selection.pathsMax else { throw TransferError.protocolError("a selection of \(n) paths (1...\(Selection.pathsMax))") }
                guard direction == .push || direction == .pull, o.recursive, o.filters.isEmpty, o.listDepth == .max else {
                    throw TransferError.protocolError("a selection is of a directory, pushed or pulled with -r, without filters")
                }
                o.selection = [String](repeating: "", count: n)
            }
        }
        // One encoding per HELLO (the fuzzer's round trip): the extension is there exactly when
        // `encode` sends it, in the version it sends.
        if version == 1 {
            guard !o.filters.isEmpty || o.listDepth != .max || direction == .list else { throw TransferError.protocolError("an empty HELLO extension") }
        } else if !extended && direction == .list {
            throw TransferError.protocolError("a listing's HELLO without its extension")
        }
        try r.expectEnd()
        return Hello(token: token, direction: direction, path: path, options: o)
    }
}

/// A selection's paths on the wire: after a pull's HELLO (extension 3, which says how many),
/// the client sends them in SELECTION frames of at most `perFrameMax` paths (u32 count, then
/// each path as a string), so that HELLO stays small; the server reads exactly the announced
/// number before it answers. A push needs no frames: its own Sender walks the selection.
enum Selection {
    static let pathsMax = 65_536
    static let perFrameMax = 4096
    /// Bytes of all paths of one selection (a server holds them for the session): 16 MiB, an
    /// average of 256 bytes a path at the most paths.
    static let bytesMax = 16 << 20
    /// Bytes of one frame's paths, well within a control frame.
    static let frameBytesTarget = 4 << 20

    /// One selected path's components: relative, normalised, beneath the root (not the root),
    /// not one of Ferry's helper names. Every side checks each path with this before use.
    static func components(_ p: String) throws -> [Substring] {
        guard let parts = try? Paths.components(of: p), !parts.isEmpty else {
            throw TransferError(.path, "a selection path that leaves its root or is not normalised: '\(p)' (relative beneath the source; no leading /, no . or .., no //)")
        }
        if let bad = parts.first(where: { PartialNames.isHelper(String($0)) }) { throw TransferError(.path, "a selection names Ferry's own helper file '\(bad)'") }
        return parts
    }

    /// Frames of at most `perFrameMax` paths and about `frameBytesTarget` bytes each.
    static func frames(_ paths: [String]) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var w = ByteWriter()
        var n: UInt32 = 0
        func flush() {
            guard n > 0 else { return }
            var f = ByteWriter(capacity: w.bytes.count + 4)
            f.u32(n)
            f.raw(w.bytes)
            out.append(f.bytes)
            w = ByteWriter()
            n = 0
        }
        for p in paths {
            if n == UInt32(perFrameMax) || w.bytes.count + p.utf8.count + 2 > frameBytesTarget { flush() }
            w.string(p)
            n += 1
        }
        flush()
        return out
    }

    /// One frame's paths, each a valid relative path; at most `room` of them.
    static func decode(_ payload: [UInt8], room: Int) throws -> [String] {
        var r = ByteReader(payload)
        let n = Int(try r.u32())
        guard n >= 1, n <= perFrameMax, n <= room else { throw TransferError.protocolError("a SELECTION frame of \(n) paths (\(room) announced left)") }
        var out: [String] = []
        out.reserveCapacity(n)
        for _ in 0..<n {
            let p = try r.string(maxBytes: PathLimits.pathBytesMax)
            _ = try components(p)
            out.append(p)
        }
        try r.expectEnd()
        return out
    }
}

/// The server's answer: the session to join and how many data streams to open.
struct Welcome {
    var sessionID: [UInt8]  // 16 bytes
    var secret: [UInt8]  // 32 bytes
    var streams: Int

    func encode() -> [UInt8] {
        var w = ByteWriter()
        w.raw(sessionID)
        w.raw(secret)
        w.u8(UInt8(streams))
        return w.bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> Welcome {
        var r = ByteReader(bytes)
        let id = try r.raw(16)
        let secret = try r.raw(32)
        let streams = Int(try r.u8())
        guard (1...Wire.streamsMax).contains(streams) else { throw TransferError.protocolError("bad stream count") }
        try r.expectEnd()
        return Welcome(sessionID: id, secret: secret, streams: streams)
    }
}

/// First frame on a data connection: which session and stream it is, proven with the
/// session's secret (which only went over TLS) without revealing it:
/// proof = HMAC-SHA256(secret, "ferry-join" | session id | stream index).
struct Join {
    var sessionID: [UInt8]
    var streamIndex: Int
    var proof: [UInt8]

    init(sessionID: [UInt8], streamIndex: Int, proof: [UInt8]) {
        self.sessionID = sessionID
        self.streamIndex = streamIndex
        self.proof = proof
    }

    init(sessionID: [UInt8], streamIndex: Int, secret: [UInt8]) {
        self.init(sessionID: sessionID, streamIndex: streamIndex, proof: Join.proof(secret: secret, sessionID: sessionID, streamIndex: streamIndex))
    }

    static func proof(secret: [UInt8], sessionID: [UInt8], streamIndex: Int) -> [UInt8] {
        Crypto.hmacSHA256(key: secret, Array("ferry-join".utf8) + sessionID + [UInt8(streamIndex)])
    }

    func encode() -> [UInt8] {
        var w = ByteWriter()
        w.raw(sessionID)
        w.u8(UInt8(streamIndex))
        w.raw(proof)
        return w.bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> Join {
        var r = ByteReader(bytes)
        let j = Join(sessionID: try r.raw(16), streamIndex: Int(try r.u8()), proof: try r.raw(32))
        try r.expectEnd()
        return j
    }
}

/// Kinds of tree entries.
enum EntryKind: UInt8 {
    case file = 1
    case directory = 2
    case symlink = 3
    /// A device, FIFO or socket met in a tree: never transferred, only named, so that the
    /// receiving side's summary can list what was left out. `mode` keeps its type bits.
    case special = 4
}

/// One entry of the streamed manifest. `path` is relative to the transfer's root ("" = the
/// root itself: the single file, or the top directory).
struct ManifestEntry {
    /// `size` of a stream (standard input, a FIFO): read to its end while it is sent. Its
    /// length travels with its digest (`FILE_DIGEST` then carries a u64 size).
    static let streamSize = UInt64.max
    var id: UInt64
    var kind: EntryKind
    var path: String
    var size: UInt64
    var mtimeSeconds: Int64
    var mtimeNanoseconds: UInt32
    var mode: UInt32
    var linkTarget: String

    func encode(_ w: inout ByteWriter) {
        w.u64(id)
        w.u8(kind.rawValue)
        w.string(path)
        w.u64(size)
        w.i64(mtimeSeconds)
        w.u32(mtimeNanoseconds)
        w.u32(mode)
        if kind == .symlink { w.string(linkTarget) }
    }

    static func decode(_ r: inout ByteReader) throws -> ManifestEntry {
        let id = try r.u64()
        guard let kind = EntryKind(rawValue: try r.u8()) else { throw TransferError.protocolError("bad entry kind") }
        let path = try r.string(maxBytes: PathLimits.pathBytesMax)
        let size = try r.u64()
        let sec = try r.i64()
        let nsec = try r.u32()
        guard nsec < 1_000_000_000 else { throw TransferError.protocolError("bad mtime") }
        let mode = try r.u32()
        let target = kind == .symlink ? try r.string(maxBytes: PathLimits.symlinkTargetBytesMax) : ""
        guard size <= 1 << 56 || (size == ManifestEntry.streamSize && kind == .file) else { throw TransferError.protocolError("file size out of range") }
        return ManifestEntry(id: id, kind: kind, path: path, size: size, mtimeSeconds: sec, mtimeNanoseconds: nsec, mode: kind == .special ? mode & 0o177777 : mode & 0o7777, linkTarget: target)
    }
}

/// What the receiver wants for one file.
enum PlanAction {
    /// Identical at the destination (size and mtime, or digest): nothing to send.
    case skip
    /// Send every chunk.
    case full
    /// A partial copy exists: these chunks are there with these hashes; the sender re-reads
    /// and checks them, sending only the ones missing or different.
    case resume([(index: UInt32, hash: ChunkHash)])
    /// `--checksum`: the destination has this whole-file digest; skip if the source's matches.
    case compareDigest(ChunkHash)
}

struct PlanEntry {
    var id: UInt64
    var action: PlanAction

    func encode(_ w: inout ByteWriter) {
        w.u64(id)
        switch action {
        case .skip: w.u8(0)
        case .full: w.u8(1)
        case .resume(let have):
            w.u8(2)
            w.u32(UInt32(have.count))
            for h in have { w.u32(h.index); w.hash(h.hash) }
        case .compareDigest(let d):
            w.u8(3)
            w.hash(d)
        }
    }

    static func decode(_ r: inout ByteReader) throws -> PlanEntry {
        let id = try r.u64()
        switch try r.u8() {
        case 0: return PlanEntry(id: id, action: .skip)
        case 1: return PlanEntry(id: id, action: .full)
        case 2:
            let n = Int(try r.u32())
            guard n * 20 <= r.remaining else { throw TransferError.protocolError("resume list longer than its frame") }
            var have: [(UInt32, ChunkHash)] = []
            have.reserveCapacity(n)
            for _ in 0..<n { have.append((try r.u32(), try r.hash())) }
            return PlanEntry(id: id, action: .resume(have.map { (index: $0.0, hash: $0.1) }))
        case 3: return PlanEntry(id: id, action: .compareDigest(try r.hash()))
        default: throw TransferError.protocolError("bad plan action")
        }
    }
}

/// A `TransferError.Code` packed into a flags byte beside one flag of its own (bit 0): bit 1 says
/// a code is present, bits 2...7 hold its wire number (1...63, `TransferError.Code.wire`). Used
/// by ERROR frames (header flags; bit 0: a rerun resumes), FILE_DONE verdicts (status byte;
/// bit 0: the file failed) and SOURCE_FAILED entries (bit 0: the source changed).
///
/// This is how these messages are versioned without a new protocol version: peers from before
/// codes sent only bit 0 (0 or 1) and read only bit 0, so a coded byte means the same to them
/// and theirs decode here with no code. Strict: code bits without the code flag, or the flag
/// with code 0, are protocol errors. A nonzero number this side does not know (a newer peer's)
/// decodes as `.remote`: the peer's word stands, with its message, but its meaning is unknown.
enum CodedFlags {
    static let codeFlag: UInt8 = 0b10
    static let codeMax: UInt8 = 63

    static func pack(_ bit0: Bool, _ code: TransferError.Code?) -> UInt8 {
        var f: UInt8 = bit0 ? 1 : 0
        if let code, (1...codeMax).contains(code.wire) { f |= codeFlag | code.wire << 2 }
        return f
    }

    /// Bit 0 and the code (nil when none was sent).
    static func unpack(_ f: UInt8, _ what: String) throws -> (Bool, TransferError.Code?) {
        let bit0 = f & 1 != 0
        let number = f >> 2
        guard f & codeFlag != 0 else {
            guard number == 0 else { throw TransferError.protocolError("\(what): code bits without the code flag (0x\(String(f, radix: 16)))") }
            return (bit0, nil)
        }
        guard number != 0 else { throw TransferError.protocolError("\(what): code flag with no code") }
        return (bit0, TransferError.Code(wire: number) ?? .remote)
    }
}

/// ERROR (0x7F): why a side hangs up, once per connection. Payload: the reason, UTF-8, at most
/// `messageBytesMax` bytes (longer is refused: no peer ever sent more). Header flags: bit 0 a
/// rerun resumes, bits 1...7 the error's code (`CodedFlags`). Decoded, it is the local
/// `TransferError` of the connection: the peer's code (so a peer's "no space" or "permission"
/// keeps its meaning in a daemon job's state), `fromPeer`, and the message
/// `remote error (CODE): TEXT` (`remote error: TEXT` from a peer that sent no code) with
/// control characters shown as `?` (the text reaches terminals and job listings).
enum ErrorFrame {
    static let messageBytesMax = 4096

    static func encode(_ e: TransferError) -> (flags: UInt8, payload: [UInt8]) {
        let all = Array(e.message.utf8)
        var n = min(all.count, messageBytesMax)
        while n > 0 && n < all.count && all[n] & 0xC0 == 0x80 { n -= 1 }  // never cut a character
        return (CodedFlags.pack(e.resumable, e.code), Array(all[..<n]))
    }

    static func decode(flags: UInt8, payload: [UInt8]) throws -> TransferError {
        guard payload.count <= messageBytesMax else {
            throw TransferError.protocolError("ERROR frame of \(payload.count) bytes (at most \(messageBytesMax))")
        }
        let (resumable, code) = try CodedFlags.unpack(flags, "ERROR frame")
        let text = String(String.UnicodeScalarView(String(decoding: payload, as: UTF8.self).unicodeScalars.map {
            $0.value < 0x20 || $0.value == 0x7F || (0x80..<0xA0).contains($0.value) ? "?" : $0
        }))
        var e = TransferError(code ?? .remote, "remote error\(code.map { " (\($0.name))" } ?? ""): \(text)", resumable: resumable)
        e.fromPeer = true
        return e
    }
}

/// A file the sender failed on its own side: it could not be read, or it changed between its
/// manifest entry and its last chunk. Sent so that the receiver fails (and counts) it too: a
/// file never silently stays half-received while either side reports success.
/// Frame payload: u32 count (≤ `perFrameMax`), then per file: u64 id, u8 flags (bit 0: the
/// source changed, so the partial copy is of no use to a rerun; bits 1...7: the failure's
/// code, `CodedFlags`), string message (≤ 4 KiB).
struct SourceFailure: Equatable {
    var id: UInt64
    var changed: Bool
    var message: String
    /// Why the sender failed it (`.permission` for an unreadable file); nil from older peers.
    var code: TransferError.Code? = nil

    static let perFrameMax = 1024
    static let messageBytesMax = 4096

    static func encode(_ list: ArraySlice<SourceFailure>) -> [UInt8] {
        var w = ByteWriter(capacity: 4 + list.count * 64)
        w.u32(UInt32(list.count))
        for f in list {
            w.u64(f.id)
            w.u8(CodedFlags.pack(f.changed, f.code))
            w.string(String(decoding: f.message.utf8.prefix(messageBytesMax - 96), as: UTF8.self))
        }
        return w.bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> [SourceFailure] {
        var r = ByteReader(bytes)
        let n = Int(try r.u32())
        guard n <= perFrameMax, n * 11 <= r.remaining else { throw TransferError.protocolError("source failure list too long") }
        var list: [SourceFailure] = []
        list.reserveCapacity(n)
        for _ in 0..<n {
            let id = try r.u64()
            let (changed, code) = try CodedFlags.unpack(try r.u8(), "source failure")
            list.append(SourceFailure(id: id, changed: changed, message: try r.string(maxBytes: messageBytesMax), code: code))
        }
        try r.expectEnd()
        return list
    }
}
