import Glibc

/// What identifies a source file's version: if any of it changes, a partial copy is useless
/// and the file starts over.
struct SourceIdentity: Equatable {
    var size: UInt64
    var mtimeSeconds: Int64
    var mtimeNanoseconds: UInt32
    var chunkBytes: UInt32
}

/// The receiver's durable record of which chunks of a partial file are written and verified.
///
/// Layout (little-endian): a 64-byte header (magic `FERRYJ01`, chunk size, source size and
/// mtime, chunk count), then one 32-byte record per chunk at a fixed offset: u32 state
/// (1 = durable), u32 index, u64 check, 16-byte chunk hash. A record is written only after the
/// partial file's data for that chunk has been made durable (fdatasync of the partial, then
/// the records, then fdatasync of the journal), so a record never claims data that a crash
/// could lose. The check word catches a torn or stale record; such a chunk is sent again.
final class ResumeJournal {
    static let headerBytes = 64
    static let recordBytes = 32
    static let magic: UInt64 = 0x3130_4A59_5252_4546  // "FERRYJ01"

    let fd: Int32
    let identity: SourceIdentity
    let chunkCount: Int
    private var record = [UInt8](repeating: 0, count: ResumeJournal.recordBytes)

    private init(fd: Int32, identity: SourceIdentity, chunkCount: Int) {
        self.fd = fd
        self.identity = identity
        self.chunkCount = chunkCount
    }

    deinit { Glibc.close(fd) }

    static func chunkCount(size: UInt64, chunkBytes: Int) -> Int {
        size == 0 ? 0 : Int((size + UInt64(chunkBytes) - 1) / UInt64(chunkBytes))
    }

    /// Creates (or truncates) the journal `name` in `dir` for a fresh partial file.
    static func create(dir: Int32, name: String, identity: SourceIdentity) throws -> ResumeJournal {
        let fd = try sys("cannot create journal \(name)") { openat(dir, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600) }
        let n = chunkCount(size: identity.size, chunkBytes: Int(identity.chunkBytes))
        var w = ByteWriter(capacity: headerBytes)
        w.u64(magic)
        w.u32(1)
        w.u32(identity.chunkBytes)
        w.u64(identity.size)
        w.i64(identity.mtimeSeconds)
        w.u32(identity.mtimeNanoseconds)
        w.u32(0)
        w.u64(UInt64(n))
        w.raw([UInt8](repeating: 0, count: headerBytes - w.bytes.count))
        let j = ResumeJournal(fd: fd, identity: identity, chunkCount: n)
        try j.pwriteAll(w.bytes, at: 0, name: name)
        return j
    }

    /// Opens an existing journal when it belongs to the same source version; returns the
    /// journal and the durable chunks (index → hash), or nil when absent, stale or corrupt.
    static func open(dir: Int32, name: String, identity: SourceIdentity) -> (ResumeJournal, [Int: ChunkHash])? {
        let fd = openat(dir, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
        if fd < 0 { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0 else { Glibc.close(fd); return nil }
        let n = chunkCount(size: identity.size, chunkBytes: Int(identity.chunkBytes))
        let expected = headerBytes + n * recordBytes
        guard st.st_size >= headerBytes, st.st_size <= expected else { Glibc.close(fd); return nil }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard got == bytes.count else { Glibc.close(fd); return nil }
        var r = ByteReader(bytes)
        do {
            guard try r.u64() == magic, try r.u32() == 1 else { Glibc.close(fd); return nil }
            let cb = try r.u32()
            let size = try r.u64()
            let sec = try r.i64()
            let nsec = try r.u32()
            let stored = SourceIdentity(size: size, mtimeSeconds: sec, mtimeNanoseconds: nsec, chunkBytes: cb)
            _ = try r.u32()
            guard stored == identity, try r.u64() == UInt64(n) else { Glibc.close(fd); return nil }
        } catch {
            Glibc.close(fd)
            return nil
        }
        var have: [Int: ChunkHash] = [:]
        var at = headerBytes
        while at + recordBytes <= bytes.count {
            var rr = ByteReader(Array(bytes[at..<at + recordBytes]))
            if let state = try? rr.u32(), state == 1, let index = try? rr.u32(), let check = try? rr.u64(), let h = try? rr.hash(),
               Int(index) == (at - headerBytes) / recordBytes, check == checkWord(index: index, hash: h) {
                have[Int(index)] = h
            }
            at += recordBytes
        }
        return (ResumeJournal(fd: fd, identity: identity, chunkCount: n), have)
    }

    private static func checkWord(index: UInt32, hash: ChunkHash) -> UInt64 {
        (hash.low ^ (hash.high &* 0x9E37_79B9_7F4A_7C15) ^ UInt64(index) ^ magic) | 1
    }

    /// Writes the records of chunks whose data is already durable, then makes them durable.
    func recordDurable(_ chunks: [(index: Int, hash: ChunkHash)]) throws {
        if chunks.isEmpty { return }
        for c in chunks {
            var w = ByteWriter(capacity: ResumeJournal.recordBytes)
            w.u32(1)
            w.u32(UInt32(c.index))
            w.u64(ResumeJournal.checkWord(index: UInt32(c.index), hash: c.hash))
            w.hash(c.hash)
            try pwriteAll(w.bytes, at: ResumeJournal.headerBytes + c.index * ResumeJournal.recordBytes, name: "journal")
        }
        _ = try sys("cannot sync journal") { fdatasync(fd) }
    }

    private func pwriteAll(_ bytes: [UInt8], at offset: Int, name: String) throws {
        var done = 0
        while done < bytes.count {
            let r = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, $0.count - done, off_t(offset + done)) }
            if r < 0 {
                if errno == EINTR { continue }
                throw TransferError.system("cannot write \(name)", errno: errno, resumable: true)
            }
            done += r
        }
    }
}
