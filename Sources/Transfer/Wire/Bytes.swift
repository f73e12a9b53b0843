/// Little-endian encoder for control messages (control traffic only: the data path encodes its
/// fixed headers in place, without allocating).
struct ByteWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    mutating func raw(_ v: [UInt8]) { bytes.append(contentsOf: v) }
    mutating func hash(_ h: ChunkHash) { u64(h.low); u64(h.high) }
    /// A string as u16 length + UTF-8 bytes.
    mutating func string(_ s: String) {
        let u = Array(s.utf8)
        precondition(u.count <= Int(UInt16.max))
        u16(UInt16(u.count))
        bytes.append(contentsOf: u)
    }
    mutating func blob(_ v: [UInt8]) {
        precondition(v.count <= Int(UInt16.max))
        u16(UInt16(v.count))
        bytes.append(contentsOf: v)
    }
}

/// Bounds-checked little-endian decoder: every read checks the remaining length and throws a
/// protocol error instead of trapping, so a hostile frame ends one connection, not the server.
struct ByteReader {
    private let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }

    private mutating func take(_ n: Int) throws -> Int {
        guard n >= 0, remaining >= n else { throw TransferError.protocolError("message truncated") }
        let at = offset
        offset += n
        return at
    }

    mutating func u8() throws -> UInt8 { bytes[try take(1)] }
    mutating func u16() throws -> UInt16 {
        let at = try take(2)
        return UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8
    }
    mutating func u32() throws -> UInt32 {
        let at = try take(4)
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(bytes[at + i]) << (8 * i) }
        return v
    }
    mutating func u64() throws -> UInt64 {
        let at = try take(8)
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(bytes[at + i]) << (8 * i) }
        return v
    }
    mutating func i64() throws -> Int64 { Int64(bitPattern: try u64()) }
    mutating func hash() throws -> ChunkHash { ChunkHash(low: try u64(), high: try u64()) }
    mutating func raw(_ n: Int) throws -> [UInt8] {
        let at = try take(n)
        return Array(bytes[at..<at + n])
    }
    /// A u16-length string, at most `maxBytes`, valid UTF-8.
    mutating func string(maxBytes: Int) throws -> String {
        let n = Int(try u16())
        guard n <= maxBytes else { throw TransferError.protocolError("string of \(n) bytes exceeds \(maxBytes)") }
        let at = try take(n)
        guard let s = String(validating: bytes[at..<at + n], as: UTF8.self) else {
            throw TransferError.protocolError("string is not valid UTF-8")
        }
        return s
    }
    mutating func blob(maxBytes: Int) throws -> [UInt8] {
        let n = Int(try u16())
        guard n <= maxBytes else { throw TransferError.protocolError("field of \(n) bytes exceeds \(maxBytes)") }
        return try raw(n)
    }
    func expectEnd() throws {
        if remaining != 0 { throw TransferError.protocolError("\(remaining) unexpected trailing bytes") }
    }
}
