import Glibc

/// Wire protocol constants. The preamble (in clear) carries the version. Version 2: the
/// control connection runs TLS 1.3 right after the preamble; data streams join with an HMAC
/// proof and carry sealed frames at the `safe` and `private` protection levels. Version 1
/// (shared token, no TLS) is refused with a clear message.
public enum Wire {
    public static let version: UInt16 = 2
    public static let magic: [UInt8] = Array("FERRY\0\0\0".utf8)
    public static let preambleBytes = 16
    public static let frameHeaderBytes = 8
    /// Control payloads (manifests, plans) are bounded; manifests stream in many frames.
    public static let controlPayloadBytesMax = 16 << 20
    public static let chunkBytesMin = 64 << 10
    public static let chunkBytesMax = 64 << 20
    public static let chunkBytesDefault = 4 << 20
    /// Entries per manifest frame and files per small-file batch.
    public static let manifestEntriesPerFrameMax = 4096
    public static let batchFilesMax = 1024
    public static let streamsMax = 64
    public static let tokenBytesMax = 4096
}

/// Connection roles announced in the preamble.
enum Role: UInt16 {
    case control = 1
    case data = 2
}

/// Frame types. Control frames carry messages; data frames carry chunks.
enum FrameType: UInt8 {
    case hello = 0x01
    case welcome = 0x02
    case join = 0x03
    case joined = 0x04
    case manifest = 0x05
    case manifestEnd = 0x06
    case plan = 0x07
    case fileDigest = 0x08
    case fileSkip = 0x09
    case fileDone = 0x0A
    case resend = 0x0B
    case end = 0x0C
    case endAck = 0x0D
    case ping = 0x0E
    /// Receiver → sender (control): fetch again what data frame (u32 stream, u64 counter)
    /// carried; sent when a sealed frame was tampered with, removed or reordered.
    case resendFrame = 0x0F
    case chunk = 0x10
    case batch = 0x11
    /// Server → client, first frame after the TLS handshake (payload: the center's name).
    case ready = 0x12
    /// Sender → receiver (control): files the sender failed itself (unreadable, or changed
    /// while being read); see `SourceFailure`. The receiver fails them too.
    case sourceFailed = 0x13
    /// Paths of a pull's selection (striping's files parts), after HELLO (`Selection`).
    case selection = 0x14
    case error = 0x7F
}

/// A framed connection. Sends are serialised by a lock (several threads of a session may send
/// control messages); each call runs on the calling thread's ring.
/// `@unchecked Sendable`: the fd is immutable, sends are locked, receives have one owner.
final class Connection: @unchecked Sendable {
    let fd: Int32
    let peer: String
    /// Held for each whole frame sent (`sendFramed`, and `sendFramedZeroCopy` in ZeroCopy.swift).
    let sendLock = Lock()
    private var closed = false
    /// Set by the first `sendError` (under `errorLock`): a connection says why it hangs up once.
    private var errorSent = false
    private let closeLock = Lock()
    /// Set on control connections once the TLS handshake is done: every byte after the
    /// preamble goes through it.
    var tls: TLSChannel?
    /// Data connections: the stream's index in its session (part of every sealed frame's nonce).
    var streamIndex = 0

    init(fd: Int32) {
        self.fd = fd
        self.peer = Socket.peerName(fd)
    }

    deinit {
        tls = nil
        Glibc.close(fd)
    }

    /// Shuts the socket down (wakes any thread blocked on it). The descriptor itself is closed
    /// when the last reference goes (deinit): other threads of the session may still be in a
    /// call on it, and a closed number can be reused at once by another connection or file,
    /// which they would then read or write.
    func close() {
        closeLock.withLock {
            if closed { return }
            closed = true
            shutdown(fd, Int32(SHUT_RDWR))
        }
    }

    /// Wakes blocked readers without releasing the fd number (safe while other threads use it).
    func shutdownBoth() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// Wakes blocked readers but leaves the sending side open, so a last ERROR frame can go out.
    func shutdownReading() { shutdown(fd, Int32(SHUT_RD)) }

    func sendAll(_ ptr: UnsafeRawPointer, _ length: Int, ring: Ring) throws {
        if let tls { return try tls.write(ptr, length, peer: peer) }
        var done = 0
        var spins = 0
        while done < length {
            let r = try ring.runOne { () throws in
                try ring.send(fd: fd, buffer: ptr + done, length: length - done, tag: 0)
            }
            if r < 0 { throw TransferError.system("send to \(peer)", errno: -r, resumable: true) }
            if r == 0 { spins += 1; if spins > 1000 { throw TransferError(.io, "send to \(peer) makes no progress", resumable: true) } }
            done += Int(r)
        }
    }

    func recvExact(_ ptr: UnsafeMutableRawPointer, _ length: Int, ring: Ring, timeoutNs: Int64) throws {
        var done = 0
        // One deadline for the whole message: a peer dripping a byte at a time cannot stretch
        // it (each call gets what is left).
        let deadline = monotonicNs() + UInt64(max(0, timeoutNs))
        func left() throws -> Int64 {
            let now = monotonicNs()
            if now >= deadline { throw TransferError(.timeout, "\(peer) sent nothing for \(timeoutNs / 1_000_000_000) s", resumable: true) }
            return Int64(deadline - now)
        }
        if let tls {
            while done < length {
                let n = try tls.read(ptr + done, length - done, timeoutNs: try left(), peer: peer)
                if n == 0 { throw TransferError(.io, "\(peer) closed the connection" + (done > 0 ? " in the middle of a message" : ""), resumable: true) }
                done += n
            }
            return
        }
        while done < length {
            let r = try ring.runOne(timeoutNs: try left()) { () throws in
                try ring.recv(fd: fd, buffer: ptr + done, length: length - done, tag: 0)
            }
            if r == -ETIMEDOUT { throw TransferError(.timeout, "\(peer) sent nothing for \(timeoutNs / 1_000_000_000) s", resumable: true) }
            if r < 0 { throw TransferError.system("receive from \(peer)", errno: -r, resumable: true) }
            if r == 0 {
                throw TransferError(.io, "\(peer) closed the connection" + (done > 0 ? " in the middle of a message" : ""), resumable: true)
            }
            done += Int(r)
        }
    }

    func sendPreamble(role: Role, ring: Ring) throws {
        var w = ByteWriter(capacity: 16)
        w.raw(Wire.magic)
        w.u16(Wire.version)
        w.u16(role.rawValue)
        w.u32(0)
        try w.bytes.withUnsafeBytes { (b) throws in try sendAll(b.baseAddress!, b.count, ring: ring) }
    }

    func recvPreamble(ring: Ring, timeoutNs: Int64) throws -> Role {
        var b = [UInt8](repeating: 0, count: Wire.preambleBytes)
        try b.withUnsafeMutableBytes { (p) throws in try recvExact(p.baseAddress!, p.count, ring: ring, timeoutNs: timeoutNs) }
        guard Array(b[0..<8]) == Wire.magic else { throw TransferError.protocolError("not a Ferry client (bad preamble)") }
        var r = ByteReader(Array(b[8...]))
        let version = try r.u16()
        guard version == Wire.version else {
            throw TransferError.protocolError("protocol version \(version) not supported (this server speaks \(Wire.version)\(version < Wire.version ? "; upgrade the client" : ""))")
        }
        guard let role = Role(rawValue: try r.u16()) else { throw TransferError.protocolError("unknown connection role") }
        guard try r.u32() == 0 else { throw TransferError.protocolError("reserved preamble field is not zero") }
        return role
    }

    /// Sends one control frame (header and payload in one send).
    func send(_ type: FrameType, _ payload: [UInt8] = [], flags: UInt8 = 0, ring: Ring) throws {
        precondition(payload.count <= Wire.controlPayloadBytesMax)
        var frame = [UInt8]()
        frame.reserveCapacity(Wire.frameHeaderBytes + payload.count)
        var w = ByteWriter(capacity: 8)
        w.u32(UInt32(payload.count))
        w.u8(type.rawValue)
        w.u8(flags)
        w.u16(0)
        frame.append(contentsOf: w.bytes)
        frame.append(contentsOf: payload)
        try sendLock.withLock { () throws in
            try frame.withUnsafeBytes { (b) throws in try sendAll(b.baseAddress!, b.count, ring: ring) }
        }
    }

    /// Sends bytes already framed by the caller (data path), under the send lock.
    func sendFramed(_ ptr: UnsafeRawPointer, _ length: Int, ring: Ring) throws {
        try sendLock.withLock { () throws in try sendAll(ptr, length, ring: ring) }
    }

    /// Receives one control frame, validating the header before allocating the payload.
    func receive(ring: Ring, timeoutNs: Int64, payloadBytesMax: Int = Wire.controlPayloadBytesMax) throws -> (FrameType, [UInt8]) {
        var h = [UInt8](repeating: 0, count: Wire.frameHeaderBytes)
        try h.withUnsafeMutableBytes { (p) throws in try recvExact(p.baseAddress!, p.count, ring: ring, timeoutNs: timeoutNs) }
        let header = try FrameHeader(h)
        guard header.length <= payloadBytesMax else {
            throw TransferError.protocolError("frame of \(header.length) bytes exceeds the limit of \(payloadBytesMax)")
        }
        var payload = [UInt8](repeating: 0, count: header.length)
        if header.length > 0 {
            try payload.withUnsafeMutableBytes { (p) throws in try recvExact(p.baseAddress!, p.count, ring: ring, timeoutNs: timeoutNs) }
        }
        if header.type == .error { throw try ErrorFrame.decode(flags: header.flags, payload: payload) }
        return (header.type, payload)
    }

    /// Best effort: tell the peer why we hang up, once per connection (the receiver says it as
    /// soon as it fails, before its cleanup; the server's later word is then not sent again).
    /// ERROR frames carry flag bit 0 when a rerun would resume, and the error's code
    /// (`ErrorFrame`). A peer's own error is never sent back to it.
    /// A second caller waits until the first one's frame is out (`errorLock`): a session that
    /// returns once its own call does, and then closes the connection, must not cut the word
    /// another thread is writing (a server stopping tells each client from a thread of its own).
    func sendError(_ error: TransferError, ring: Ring) {
        guard !error.fromPeer else { return }
        errorLock.withLock {
            guard !errorSent else { return }
            errorSent = true
            let (flags, payload) = ErrorFrame.encode(error)
            try? send(.error, payload, flags: flags, ring: ring)
        }
    }
    private let errorLock = Lock()
}

/// The fixed 8-byte frame header: u32 payload length, u8 type, u8 flags, u16 reserved.
struct FrameHeader {
    var length: Int
    var type: FrameType
    var flags: UInt8

    init(_ b: [UInt8]) throws {
        guard b.count >= Wire.frameHeaderBytes else { throw TransferError.protocolError("short frame header") }
        self = try b.withUnsafeBytes { try FrameHeader(pointer: $0.baseAddress!) }
    }

    /// Parses a header in place (data path: no allocation).
    init(pointer b: UnsafeRawPointer) throws {
        length = Int(UInt32(littleEndian: b.loadUnaligned(as: UInt32.self)))
        let typeByte = b.load(fromByteOffset: 4, as: UInt8.self)
        guard let t = FrameType(rawValue: typeByte) else {
            throw TransferError.protocolError("unknown frame type 0x\(String(typeByte, radix: 16))")
        }
        type = t
        flags = b.load(fromByteOffset: 5, as: UInt8.self)
        guard b.loadUnaligned(fromByteOffset: 6, as: UInt16.self) == 0 else {
            throw TransferError.protocolError("reserved frame header field is not zero")
        }
    }

    /// Writes a header at `p` (data path: no allocation).
    static func write(to p: UnsafeMutableRawPointer, length: Int, type: FrameType, flags: UInt8 = 0) {
        p.storeBytes(of: UInt32(length).littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: type.rawValue, toByteOffset: 4, as: UInt8.self)
        p.storeBytes(of: flags, toByteOffset: 5, as: UInt8.self)
        p.storeBytes(of: UInt16(0), toByteOffset: 6, as: UInt16.self)
    }
}
