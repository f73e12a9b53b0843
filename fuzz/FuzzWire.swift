// libFuzzer target for Ferry's wire decoders. Built by fuzz/run.sh into the same module as the
// Sources/Transfer files it lists (so `internal` types are visible), with
// `swiftc -sanitize=fuzzer,address -parse-as-library`.
//
// The first input byte picks the decoder (modulo the number of targets), the rest is its input.
// The contract checked for every decoder:
//   - it returns a value or throws a TransferError (wire decoders: code protocolViolation);
//     a trap, any other error type or an ASan report is a finding;
//   - nothing allocates more than the input justifies (libFuzzer's -malloc_limit_mb catches it);
//   - where an encoder exists, decode(encode(decoded)) succeeds and equals `decoded`, and
//     encoding is stable (encode(decode(encode(x))) == encode(x)).
// Strings are compared as UTF-8 bytes, never with String ==, which is Unicode-equivalence and
// would hide byte differences that the kernel (paths) or the peer would see.
import Glibc

/// One finding: libFuzzer reports the trap with the input that caused it.
@inline(never)
func finding(_ what: String) -> Never {
    fatalError("FuzzWire finding: \(what)")
}

func expectWireError(_ error: Error, _ what: String) {
    guard let e = error as? TransferError else { finding("\(what) threw a non-TransferError: \(error)") }
    guard e.code == .protocolViolation else { finding("\(what) threw \(e.code) (\(e.message)), expected protocolViolation") }
}

func bytesOf(_ s: String) -> [UInt8] { Array(s.utf8) }

// MARK: - value equality (the message types are not Equatable; compare field by field)

func same(_ a: CompressionMode, _ b: CompressionMode) -> Bool { a == b }

func same(_ a: Hello, _ b: Hello) -> Bool {
    a.token == b.token && a.direction == b.direction && bytesOf(a.path) == bytesOf(b.path)
        && a.options.recursive == b.options.recursive && a.options.streams == b.options.streams
        && same(a.options.compression, b.options.compression) && a.options.checksum == b.options.checksum
        && a.options.bandwidthLimitBytesPerSecond == b.options.bandwidthLimitBytesPerSecond
        && a.options.chunkBytes == b.options.chunkBytes && a.options.protection == b.options.protection
        && a.options.range == b.options.range && a.options.selection?.count == b.options.selection?.count
}

func same(_ a: Welcome, _ b: Welcome) -> Bool {
    a.sessionID == b.sessionID && a.secret == b.secret && a.streams == b.streams
}

func same(_ a: Join, _ b: Join) -> Bool {
    a.sessionID == b.sessionID && a.proof == b.proof && a.streamIndex == b.streamIndex
}

func same(_ a: ManifestEntry, _ b: ManifestEntry) -> Bool {
    a.id == b.id && a.kind == b.kind && bytesOf(a.path) == bytesOf(b.path) && a.size == b.size
        && a.mtimeSeconds == b.mtimeSeconds && a.mtimeNanoseconds == b.mtimeNanoseconds && a.mode == b.mode
        && bytesOf(a.linkTarget) == bytesOf(b.linkTarget)
}

func same(_ a: PlanEntry, _ b: PlanEntry) -> Bool {
    guard a.id == b.id else { return false }
    switch (a.action, b.action) {
    case (.skip, .skip), (.full, .full): return true
    case (.compareDigest(let x), .compareDigest(let y)): return x == y
    case (.resume(let x), .resume(let y)):
        return x.count == y.count && zip(x, y).allSatisfy { $0.index == $1.index && $0.hash == $1.hash }
    default: return false
    }
}

// MARK: - targets

enum Target: UInt8, CaseIterable {
    case frameHeader = 0
    case hello
    case welcome
    case join
    case manifestFrame
    case planFrame
    case chunkFrame
    case byteReader
    case wirePath
    case controlStream
    case token
    case toml
    case sealed
    case errorFrame
    case location
    case commitRequest
}

/// User tokens as the server reads them from HELLO: decode throws an `.auth` TransferError or
/// succeeds, and a decoded payload re-encodes to exactly its bytes (so one token has one
/// meaning). Signature checks need a key and are not the decoder's business.
func fuzzToken(_ b: [UInt8]) {
    let text = String(decoding: b, as: UTF8.self)
    do {
        let (t, payload, sig) = try UserToken.unverified(text)
        guard sig.count == 64 else { finding("token signature of \(sig.count) bytes accepted") }
        guard t.payload() == payload else { finding("token payload does not re-encode to its bytes") }
        guard t.scopes.count <= UserToken.scopesMax, t.id.count == 16 else { finding("token fields out of range") }
        // And the verifier refuses it without a trusted key, with an auth error.
        do {
            _ = try TokenVerifier(issuers: [:], revocationsPath: nil).verify(text)
            finding("an untrusted token verified")
        } catch {
            guard let e = error as? TransferError, e.code == .auth else { finding("verify threw \(error)") }
        }
    } catch {
        guard let e = error as? TransferError, e.code == .auth || e.code == .protocolViolation else { finding("token decode threw \(error)") }
    }
    // base64url: what decodes re-encodes to the same text.
    if let d = Base64URL.decode(text), Base64URL.encode(d) != text { finding("base64url is not canonical for \(hex(b))") }
}

/// Server configuration text: parses or throws a `.usage` TransferError naming the line.
func fuzzTOML(_ b: [UInt8]) {
    let text = String(decoding: b, as: UTF8.self)
    do { _ = try TOML.parse(text) } catch {
        guard let e = error as? TransferError, e.code == .usage else { finding("TOML.parse threw \(error)") }
    }
    do { _ = try ServerConfigFile(parsing: text, relativeTo: "/etc/ferry") } catch {
        guard let e = error as? TransferError, e.code == .usage || e.code == .path else { finding("ServerConfigFile threw \(error)") }
    }
}

/// Sealed data frames: arbitrary bytes never open (and never crash the opener); what a sealer
/// seals opens to the same bytes; one flipped byte is "tampered"; the same frame again is
/// "replayed". Input: a selector byte (bit 0: safe or private, bit 1: chunk or batch
/// subheader, bits 2-7: where to flip), then the subheader and payload.
enum Sealed {
    static let key = [UInt8](repeating: 0x42, count: 32)

    static func run(_ b: [UInt8]) {
        guard let sel = b.first else { return }
        let level: ProtectionLevel = sel & 1 == 0 ? .safe : .private
        let subBytes = sel & 2 == 0 ? DataLayout.chunkSubheaderBytes : DataLayout.batchSubheaderBytes
        let clear = subBytes == DataLayout.chunkSubheaderBytes ? Sealing.chunkClearSubheaderBytes : subBytes
        let body = Array(b.dropFirst())
        // 1. Arbitrary bytes as a received frame (header + body), exactly sized for ASan.
        let n = Wire.frameHeaderBytes + body.count
        if body.count >= Sealing.overheadBytes + subBytes {
            let f = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 8)
            defer { f.deallocate() }
            f.initializeMemory(as: UInt8.self, repeating: 0, count: Wire.frameHeaderBytes)
            body.withUnsafeBytes { (f + Wire.frameHeaderBytes).copyMemory(from: $0.baseAddress!, byteCount: body.count) }
            let opener = FrameOpener(key: key, level: level, stream: 3)
            if case .accept = opener.open(frame: f, frameBytes: n, clearSubheaderBytes: clear) { finding("a forged frame opened") }
        }
        // 2. Round trip of the input as subheader + payload.
        guard body.count >= subBytes else { return }
        let total = Wire.frameHeaderBytes + Sealing.overheadBytes + body.count
        let f = UnsafeMutableRawPointer.allocate(byteCount: total, alignment: 8)
        defer { f.deallocate() }
        FrameHeader.write(to: f, length: total - Wire.frameHeaderBytes, type: subBytes == DataLayout.chunkSubheaderBytes ? .chunk : .batch)
        let bodyAt = f + Wire.frameHeaderBytes + Sealing.counterBytes
        body.withUnsafeBytes { bodyAt.copyMemory(from: $0.baseAddress!, byteCount: body.count) }
        let sealer = FrameSealer(key: key, level: level, stream: 3)
        sealer.seal(frame: f, subheaderBytes: subBytes, clearSubheaderBytes: clear, payloadBytes: body.count - subBytes)
        let sealed = Array(UnsafeRawBufferPointer(start: f, count: total))
        let opener = FrameOpener(key: key, level: level, stream: 3)
        guard case .accept(let missing) = opener.open(frame: f, frameBytes: total, clearSubheaderBytes: clear), missing == nil else { finding("a sealed frame did not open") }
        guard Array(UnsafeRawBufferPointer(start: bodyAt, count: body.count)) == body else { finding("open did not restore the plaintext") }
        // The same frame again: a replay.
        sealed.withUnsafeBytes { f.copyMemory(from: $0.baseAddress!, byteCount: total) }
        guard case .replayed = opener.open(frame: f, frameBytes: total, clearSubheaderBytes: clear) else { finding("a replayed frame was not detected") }
        // One flipped byte anywhere: tampered.
        let at = Int(sel >> 2) * 7919 % total
        sealed.withUnsafeBytes { f.copyMemory(from: $0.baseAddress!, byteCount: total) }
        f.storeBytes(of: f.load(fromByteOffset: at, as: UInt8.self) ^ 0x01, toByteOffset: at, as: UInt8.self)
        let fresh = FrameOpener(key: key, level: level, stream: 3)
        guard case .tampered = fresh.open(frame: f, frameBytes: total, clearSubheaderBytes: clear) else { finding("a frame flipped at byte \(at) opened") }
    }
}

/// FrameHeader: the array and the in-place (pointer) decoder agree; a decoded header re-encodes
/// to exactly the 8 input bytes (every field is significant; reserved must be zero).
func fuzzFrameHeader(_ b: [UInt8]) {
    var fromArray: FrameHeader?
    do { fromArray = try FrameHeader(b) } catch { expectWireError(error, "FrameHeader([UInt8])") }
    guard b.count >= Wire.frameHeaderBytes else {
        if fromArray != nil { finding("FrameHeader accepted \(b.count) bytes") }
        return
    }
    var fromPointer: FrameHeader?
    do {
        fromPointer = try b.withUnsafeBytes { try FrameHeader(pointer: $0.baseAddress!) }
    } catch { expectWireError(error, "FrameHeader(pointer:)") }
    switch (fromArray, fromPointer) {
    case (nil, nil): return
    case (let x?, let y?):
        guard x.length == y.length, x.type == y.type, x.flags == y.flags else { finding("FrameHeader decoders disagree") }
        var out = [UInt8](repeating: 0xAA, count: Wire.frameHeaderBytes)
        out.withUnsafeMutableBytes { FrameHeader.write(to: $0.baseAddress!, length: x.length, type: x.type, flags: x.flags) }
        guard out == Array(b[0..<Wire.frameHeaderBytes]) else { finding("FrameHeader does not re-encode to its input") }
    default: finding("one FrameHeader decoder accepts what the other refuses")
    }
}

func fuzzHello(_ b: [UInt8]) {
    let v: Hello
    do { v = try Hello.decode(b) } catch { expectWireError(error, "Hello.decode"); return }
    let e1 = v.encode()
    let v2: Hello
    do { v2 = try Hello.decode(e1) } catch { finding("re-encoded Hello does not decode: \(error)") }
    guard same(v, v2) else { finding("Hello round trip changed the value") }
    guard v2.encode() == e1 else { finding("Hello encoding is not stable") }
    guard e1.count == b.count else { finding("Hello re-encodes to another length than its input") }
}

/// A striped file's COMMIT (Direction.commit): decode throws a protocol error or yields ranges
/// within the file that cover it exactly, and the value survives a round trip unchanged.
func fuzzCommitRequest(_ b: [UInt8]) {
    let v: CommitRequest
    do { v = try CommitRequest.decode(b) } catch { expectWireError(error, "CommitRequest.decode"); return }
    var next = 0
    for r in v.ranges {
        guard r.first == next, r.count >= 1 else { finding("CommitRequest ranges with a gap or an overlap accepted") }
        next = r.end
    }
    guard next == v.chunkCount, v.mode <= 0o7777 else { finding("CommitRequest not covering its file, or mode bits beyond 0o7777") }
    let e1 = v.encode()
    let v2: CommitRequest
    do { v2 = try CommitRequest.decode(e1) } catch { finding("re-encoded CommitRequest does not decode: \(error)") }
    guard v2 == v, v2.encode() == e1 else { finding("CommitRequest round trip changed the value") }
}

func fuzzWelcome(_ b: [UInt8]) {
    let v: Welcome
    do { v = try Welcome.decode(b) } catch { expectWireError(error, "Welcome.decode"); return }
    guard v.sessionID.count == 16, v.secret.count == 32 else { finding("Welcome field sizes") }
    let e1 = v.encode()
    guard e1 == b else { finding("Welcome does not re-encode to its input") }
    let v2: Welcome
    do { v2 = try Welcome.decode(e1) } catch { finding("re-encoded Welcome does not decode: \(error)") }
    guard same(v, v2) else { finding("Welcome round trip changed the value") }
}

func fuzzJoin(_ b: [UInt8]) {
    let v: Join
    do { v = try Join.decode(b) } catch { expectWireError(error, "Join.decode"); return }
    guard v.sessionID.count == 16, v.proof.count == 32 else { finding("Join field sizes") }
    let e1 = v.encode()
    guard e1 == b else { finding("Join does not re-encode to its input") }
    let v2: Join
    do { v2 = try Join.decode(e1) } catch { finding("re-encoded Join does not decode: \(error)") }
    guard same(v, v2) else { finding("Join round trip changed the value") }
}

/// ERROR frames (first byte: the header's flags, the rest the payload) and SOURCE_FAILED
/// payloads (the same bytes): decode throws a protocol error or gives the peer's error
/// (`fromPeer`, no control characters); re-encoding keeps code, flag and text.
func fuzzErrorFrame(_ b: [UInt8]) {
    guard let flags = b.first else { return }
    let payload = Array(b.dropFirst())
    do {
        let e = try ErrorFrame.decode(flags: flags, payload: payload)
        guard e.fromPeer else { finding("an ERROR frame decoded without fromPeer") }
        guard !e.message.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { finding("control character in a decoded ERROR") }
        let (f2, p2) = ErrorFrame.encode(TransferError(e.code, String(decoding: payload, as: UTF8.self), resumable: e.resumable))
        let e2: TransferError
        do { e2 = try ErrorFrame.decode(flags: f2, payload: p2) } catch { finding("re-encoded ERROR does not decode: \(error)") }
        guard e2.code == e.code, e2.resumable == e.resumable else { finding("ERROR round trip changed code or flag") }
    } catch {
        expectWireError(error, "ErrorFrame.decode")
    }
    do {
        let list = try SourceFailure.decode(b)
        let again: [SourceFailure]
        do { again = try SourceFailure.decode(SourceFailure.encode(list[...])) } catch { finding("re-encoded SOURCE_FAILED does not decode: \(error)") }
        guard again.count == list.count, zip(again, list).allSatisfy({ $0.id == $1.id && $0.changed == $1.changed && $0.code == $1.code }) else {
            finding("SOURCE_FAILED round trip changed a field")
        }
    } catch {
        expectWireError(error, "SourceFailure.decode")
    }
}

/// The one parser of locations, sizes and center names (Location.swift), fed any text: it
/// returns or throws a TransferError; what it accepts has no NUL, no `..`, a port in range,
/// and prints back to a text that parses to the same value.
func fuzzLocation(_ b: [UInt8]) {
    let text = String(decoding: b, as: UTF8.self)
    do {
        switch try Location(parsing: text) {
        case .ferry(let u):
            guard u.path.utf8.first == UInt8(ascii: "/"), !u.path.utf8.contains(0),
                  !u.path.utf8.split(separator: UInt8(ascii: "/")).contains(where: { $0.elementsEqual("..".utf8) }),
                  !u.authority.isEmpty, u.authority.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 && $0.value != 0x7F }) else {
                finding("FerryURL accepted \(hex(b))")
            }
            if let p = u.port, p == 0 { finding("FerryURL accepted port 0") }
            let again: FerryURL
            do { again = try FerryURL(parsing: u.description) } catch { finding("FerryURL's description does not parse: \(error)") }
            guard again == u else { finding("FerryURL round trip changed the value") }
        case .gfs(let center, let components):
            guard CenterName.isValid(center), components.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." && !$0.utf8.contains(0) && !$0.contains("/") }) else {
                finding("gfs:// accepted \(hex(b))")
            }
        case .local(let p):
            guard !p.isEmpty, !p.utf8.contains(0) else { finding("local path accepted \(hex(b))") }
            if let parts = try? Location.exportComponents(p) {
                guard parts.allSatisfy({ !$0.isEmpty && !$0.utf8.contains(UInt8(ascii: "/")) && !$0.utf8.elementsEqual(".".utf8) && !$0.utf8.elementsEqual("..".utf8) }) else {
                    finding("exportComponents accepted \(hex(b))")
                }
            }
        }
    } catch {
        guard error is TransferError else { finding("Location threw a non-TransferError: \(error)") }
    }
    do {
        let n = try ByteSize.parse(text)
        guard n <= ByteSize.maximum else { finding("ByteSize over the maximum") }
    } catch {
        guard error is TransferError else { finding("ByteSize threw a non-TransferError: \(error)") }
    }
    if CenterName.isValid(text) {
        guard text.utf8.count <= CenterName.bytesMax, text.unicodeScalars.allSatisfy({ $0.isASCII }) else { finding("CenterName accepted \(hex(b))") }
    }
}

/// A MANIFEST payload as the receiver reads it: u32 count (bounded), that many entries, end.
func fuzzManifestFrame(_ b: [UInt8]) {
    var r = ByteReader(b)
    var entries: [ManifestEntry] = []
    do {
        let n = Int(try r.u32())
        guard n <= Wire.manifestEntriesPerFrameMax else { throw TransferError.protocolError("manifest frame too long") }
        for _ in 0..<n { entries.append(try ManifestEntry.decode(&r)) }
        try r.expectEnd()
    } catch { expectWireError(error, "ManifestEntry.decode") }
    // Every entry decoded so far (also before a later one failed) must survive a round trip.
    var w = ByteWriter()
    w.u32(UInt32(entries.count))
    for e in entries {
        guard e.mtimeNanoseconds < 1_000_000_000, e.mode <= (e.kind == .special ? 0o177777 : 0o7777), e.size <= 1 << 56 || e.size == ManifestEntry.streamSize else { finding("ManifestEntry field out of its range") }
        guard e.kind == .symlink || e.linkTarget.isEmpty else { finding("link target on a non-link") }
        guard e.path.utf8.count <= PathLimits.pathBytesMax, e.linkTarget.utf8.count <= PathLimits.symlinkTargetBytesMax else { finding("ManifestEntry string over its limit") }
        e.encode(&w)
    }
    var r2 = ByteReader(w.bytes)
    do {
        guard Int(try r2.u32()) == entries.count else { finding("count") }
        for e in entries {
            let d = try ManifestEntry.decode(&r2)
            guard same(e, d) else { finding("ManifestEntry round trip changed the value") }
        }
        try r2.expectEnd()
    } catch { finding("re-encoded manifest does not decode: \(error)") }
}

/// A PLAN payload as the sender reads it: u32 count (bounded), that many entries, end.
func fuzzPlanFrame(_ b: [UInt8]) {
    var r = ByteReader(b)
    var entries: [PlanEntry] = []
    do {
        let n = Int(try r.u32())
        guard n <= Wire.manifestEntriesPerFrameMax else { throw TransferError.protocolError("plan too long") }
        for _ in 0..<n { entries.append(try PlanEntry.decode(&r)) }
        try r.expectEnd()
    } catch { expectWireError(error, "PlanEntry.decode") }
    var w = ByteWriter()
    for e in entries { e.encode(&w) }
    var r2 = ByteReader(w.bytes)
    do {
        for e in entries {
            let d = try PlanEntry.decode(&r2)
            guard same(e, d) else { finding("PlanEntry round trip changed the value") }
        }
        try r2.expectEnd()
    } catch { finding("re-encoded plan does not decode: \(error)") }
}

/// A data frame as a receiver worker sees it: 8-byte header parsed in place, then for CHUNK the
/// 40-byte subheader whose check field must not influence its own check.
func fuzzChunkFrame(_ b: [UInt8]) {
    guard b.count >= Wire.frameHeaderBytes else { return }
    fuzzFrameHeader(b)
    let h: FrameHeader
    do { h = try b.withUnsafeBytes { try FrameHeader(pointer: $0.baseAddress!) } } catch { return }
    guard h.type == .chunk || h.type == .batch else { return }
    let body = Array(b[Wire.frameHeaderBytes...])
    guard h.type == .chunk, body.count >= DataLayout.chunkSubheaderBytes else { return }
    // Exactly 40 bytes on the heap, so ASan sees any read past the subheader.
    let sub = UnsafeMutableRawPointer.allocate(byteCount: DataLayout.chunkSubheaderBytes, alignment: 1)
    defer { sub.deallocate() }
    body.withUnsafeBytes { sub.copyMemory(from: $0.baseAddress!, byteCount: DataLayout.chunkSubheaderBytes) }
    let c1 = DataLayout.subheaderCheck(sub)
    sub.storeBytes(of: c1.littleEndian, toByteOffset: 20, as: UInt32.self)
    let c2 = DataLayout.subheaderCheck(sub)
    sub.storeBytes(of: ~c1, toByteOffset: 20, as: UInt32.self)
    let c3 = DataLayout.subheaderCheck(sub)
    guard c1 == c2, c1 == c3 else { finding("subheaderCheck depends on its own check field") }
    // The fields the receiver reads, at the offsets it reads them, stay inside the 40 bytes.
    _ = sub.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
    _ = sub.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
    _ = sub.loadUnaligned(fromByteOffset: 12, as: UInt32.self)
    _ = ChunkCodec(rawValue: sub.load(fromByteOffset: 16, as: UInt8.self))
    _ = sub.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
    _ = sub.loadUnaligned(fromByteOffset: 32, as: UInt64.self)
}

/// ByteReader driven by a script: the small control messages (FILE_DIGEST, FILE_SKIP, FILE_DONE
/// verdict lists, RESEND, the journal) are parsed inline with these primitives. Input: one byte
/// k, then k (at most 31) op bytes, then the data. After the ops that succeeded, re-encoding
/// their values with ByteWriter must give exactly the bytes consumed.
func fuzzByteReader(_ b: [UInt8]) {
    guard let first = b.first else { return }
    let k = min(Int(first & 31), b.count - 1)
    let ops = Array(b[1..<1 + k])
    let data = Array(b[(1 + k)...])
    var r = ByteReader(data)
    var w = ByteWriter()
    for op in ops {
        let before = r.offset
        let arg = Int(op >> 4)
        do {
            switch op & 0x0F {
            case 0: w.u8(try r.u8())
            case 1: w.u16(try r.u16())
            case 2: w.u32(try r.u32())
            case 3: w.u64(try r.u64())
            case 4: w.i64(try r.i64())
            case 5: w.hash(try r.hash())
            case 6:
                let n = arg - 2  // -2...13: negative lengths must be refused, not trap
                let v = try r.raw(n)
                guard n >= 0, v.count == n else { finding("raw(\(n)) returned \(v.count) bytes") }
                w.raw(v)
            case 7:
                let max = arg * 300
                let s = try r.string(maxBytes: max)
                guard s.utf8.count <= max else { finding("string over maxBytes") }
                w.string(s)
            case 8:
                let max = arg * 300
                let v = try r.blob(maxBytes: max)
                guard v.count <= max else { finding("blob over maxBytes") }
                w.blob(v)
            case 9:
                try r.expectEnd()
                guard r.remaining == 0 else { finding("expectEnd with bytes left") }
            default: w.u8(try r.u8())
            }
        } catch {
            expectWireError(error, "ByteReader op \(op & 0x0F)")
            guard r.offset >= before, r.offset <= data.count else { finding("offset out of range after a throw") }
            break
        }
        guard r.offset >= before, r.remaining == data.count - r.offset, r.remaining >= 0 else { finding("ByteReader offset/remaining inconsistent") }
        guard w.bytes == Array(data[0..<r.offset]) else { finding("ByteWriter does not reproduce what ByteReader consumed") }
    }
}

/// Paths from the wire (manifest entries, HELLO): what Paths.components accepts must be safe at
/// the byte level, where the kernel works: each component non-empty, not "." or "..", no '/',
/// no NUL, at most 255 bytes; the components rejoin to the path; the path is not absolute.
/// The helper names derived from a component are single components too.
func fuzzWirePath(_ b: [UInt8]) {
    guard let path = String(validating: b, as: UTF8.self) else { return }
    checkComponents(path, from: "Paths.components")
    do {
        let (rel, _) = try Paths.remoteRelative(path)
        checkComponents(rel, from: "Paths.remoteRelative")
    } catch {
        guard error is TransferError else { finding("Paths.remoteRelative threw a non-TransferError: \(error)") }
    }
}

func checkComponents(_ path: String, from what: String) {
    let parts: [Substring]
    do { parts = try Paths.components(of: path) } catch {
        guard let e = error as? TransferError, e.code == .path else { finding("Paths.components threw \(error)") }
        return
    }
    let slash = UInt8(ascii: "/")
    let bytes = Array(path.utf8)
    if bytes.isEmpty {
        guard parts.isEmpty else { finding("\(what): components of an empty path") }
        return
    }
    guard bytes.count <= PathLimits.pathBytesMax else { finding("\(what): accepted a path of \(bytes.count) bytes") }
    guard bytes.first != slash else { finding("\(what): accepted an absolute path (bytes \(hex(bytes)))") }
    // The kernel's view: split on the byte '/'.
    for c in bytes.split(separator: slash, omittingEmptySubsequences: false) {
        let c = Array(c)
        guard !c.isEmpty, c != [0x2E], c != [0x2E, 0x2E] else {
            finding("\(what): accepted a path whose kernel component is '\(String(decoding: c, as: UTF8.self))' (bytes \(hex(bytes)))")
        }
        guard !c.contains(0) else { finding("\(what): NUL in an accepted path") }
        guard c.count <= PathLimits.componentBytesMax else { finding("\(what): component of \(c.count) bytes accepted") }
    }
    var joined: [UInt8] = []
    for (i, p) in parts.enumerated() {
        let pb = Array(p.utf8)
        guard !pb.contains(slash) else { finding("\(what): component contains '/' (bytes \(hex(bytes)))") }
        if i > 0 { joined.append(slash) }
        joined += pb
        let part = PartialNames.part(String(p))
        let journal = PartialNames.journal(String(p))
        for helper in [part, journal] {
            let hb = Array(helper.utf8)
            guard !hb.contains(slash), !hb.contains(0), hb.count <= PathLimits.componentBytesMax,
                  hb != [0x2E], hb != [0x2E, 0x2E], PartialNames.isHelper(helper) else {
                finding("PartialNames helper name (bytes \(hex(hb))) of component \(hex(pb)) is not a single safe component recognised by isHelper (isHelper: \(PartialNames.isHelper(helper)))")
            }
        }
    }
    guard joined == bytes else { finding("\(what): components do not rejoin to the path") }
}

func hex(_ b: [UInt8]) -> String {
    b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}

/// The real control-stream entry points, Connection.recvPreamble then Connection.receive in a
/// loop, fed the input through a socketpair (the stream ends after the input: EOF).
enum ControlStream {
    nonisolated(unsafe) static var ring: Ring? = nil

    static func run(_ b: [UInt8]) {
        if ring == nil {
            do { ring = try Ring(entries: 8) } catch { finding("cannot create an io_uring: \(error)") }
        }
        let ring = ring!
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            finding("socketpair: \(errno)")
        }
        var size: Int32 = 1 << 20
        _ = setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
        var done = 0
        while done < b.count {
            let n = b.withUnsafeBytes { Glibc.send(fds[1], $0.baseAddress! + done, b.count - done, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }  // socket buffer full: the rest of the input is not sent
            done += n
        }
        Glibc.close(fds[1])
        let conn = Connection(fd: fds[0])
        do {
            _ = try conn.recvPreamble(ring: ring, timeoutNs: 5_000_000_000)
            // Each frame costs at least 8 input bytes: 64 KiB of input holds at most 8192.
            for _ in 0...8192 {
                let (type, payload) = try conn.receive(ring: ring, timeoutNs: 5_000_000_000)
                guard payload.count <= Wire.controlPayloadBytesMax else { finding("payload over the control limit") }
                guard type != .error else { finding("an ERROR frame was returned, not thrown") }
            }
        } catch {
            guard let e = error as? TransferError else { finding("Connection threw a non-TransferError: \(error)") }
            // An ERROR frame throws the peer's own code (`fromPeer`).
            guard e.code == .protocolViolation || e.code == .io || e.fromPeer else {
                finding("Connection threw \(e.code): \(e.message)")
            }
        }
        conn.close()
    }
}

/// FUZZ_SKIP=wirePath,controlStream (target names, comma-separated) turns targets off, e.g.
/// to keep fuzzing the others while a known finding awaits its fix.
let skippedTargets: Set<Target> = {
    guard let c = getenv("FUZZ_SKIP") else { return [] }
    let names = String(cString: c).split(separator: ",").map { String($0) }
    return Set(Target.allCases.filter { names.contains(String(describing: $0)) })
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWireTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 0, let data else { return 0 }
    let all = UnsafeBufferPointer(start: data, count: size)
    guard let target = Target(rawValue: all[0] % UInt8(Target.allCases.count)) else { return 0 }
    if skippedTargets.contains(target) { return -1 }  // -1: libFuzzer keeps it out of the corpus
    let b = Array(all[1...])
    switch target {
    case .frameHeader: fuzzFrameHeader(b)
    case .hello: fuzzHello(b)
    case .welcome: fuzzWelcome(b)
    case .join: fuzzJoin(b)
    case .manifestFrame: fuzzManifestFrame(b)
    case .planFrame: fuzzPlanFrame(b)
    case .chunkFrame: fuzzChunkFrame(b)
    case .byteReader: fuzzByteReader(b)
    case .wirePath: fuzzWirePath(b)
    case .controlStream: ControlStream.run(b)
    case .token: fuzzToken(b)
    case .toml: fuzzTOML(b)
    case .sealed: Sealed.run(b)
    case .errorFrame: fuzzErrorFrame(b)
    case .location: fuzzLocation(b)
    case .commitRequest: fuzzCommitRequest(b)
    }
    return 0
}
