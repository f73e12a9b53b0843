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
/// Layout (little-endian): a 64-byte header (magic `FERRYJ01`, version, chunk size, source size
/// and mtime, chunk count), then one 32-byte record per chunk at a fixed offset: u32 state
/// (1 = durable), u32 index, u64 check, 16-byte chunk hash. A record is written only after the
/// partial file's data for that chunk has been made durable (fdatasync of the partial, then
/// the records, then fdatasync of the journal), so a record never claims data that a crash
/// could lose. The check word catches a torn or stale record; such a chunk is sent again.
///
/// Version 1 covers the whole file (record of chunk i at 64 + 32i). Version 2 covers one
/// `ChunkRange` of it, for striping: the header adds the range's first chunk and count
/// (u64 each, in what version 1 leaves zero), and the record of chunk i sits at
/// 64 + 32(i - first). Several nodes each write their own range's journal beside one shared
/// partial file (`PartialNames.rangeJournal`); a journal opened for another range, or for
/// the whole file, is not this one (nil).
final class ResumeJournal {
    static let headerBytes = 64
    static let recordBytes = 32
    static let magic: UInt64 = 0x3130_4A59_5252_4546  // "FERRYJ01"

    let fd: Int32
    let identity: SourceIdentity
    /// The whole file's chunks (a range journal too).
    let chunkCount: Int
    /// The chunks this journal records: nil for the whole file (version 1).
    let range: ChunkRange?

    private init(fd: Int32, identity: SourceIdentity, chunkCount: Int, range: ChunkRange?) {
        self.fd = fd
        self.identity = identity
        self.chunkCount = chunkCount
        self.range = range
    }

    deinit { Glibc.close(fd) }

    static func chunkCount(size: UInt64, chunkBytes: Int) -> Int {
        size == 0 ? 0 : Int((size + UInt64(chunkBytes) - 1) / UInt64(chunkBytes))
    }

    /// Creates the journal `name` in `dir` (a new file, replacing any old one) for a fresh partial file, or for a
    /// fresh range of one (`range`; it must lie within the file).
    static func create(dir: Int32, name: String, identity: SourceIdentity, range: ChunkRange? = nil) throws -> ResumeJournal {
        let n = chunkCount(size: identity.size, chunkBytes: Int(identity.chunkBytes))
        if let range { _ = try ChunkRange(first: range.first, count: range.count, of: n) }
        // A new file, not the old one truncated: a session that still holds the old journal (one
        // killed but not yet gone, on another node) goes on writing into a file no one reads.
        // Created with O_EXCL: a journal someone else put under this name (another account, in a
        // shared directory) is never opened. One that cannot be removed, or one re-created
        // between the unlink and the create, fails the file.
        if unlinkat(dir, name, 0) != 0 && (errno == EPERM || errno == EACCES) {
            throw TransferError(.permission, "'\(name)' in its directory belongs to another account (remove it, or ask its owner to)")
        }
        let fd = openat(dir, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        if fd < 0 && errno == EEXIST {
            throw TransferError(.path, "'\(name)' in its directory was re-created by someone else while it was replaced")
        }
        if fd < 0 { throw TransferError.system("cannot create journal \(name)", errno: errno) }
        var w = ByteWriter(capacity: headerBytes)
        w.u64(magic)
        w.u32(range == nil ? 1 : 2)
        w.u32(identity.chunkBytes)
        w.u64(identity.size)
        w.i64(identity.mtimeSeconds)
        w.u32(identity.mtimeNanoseconds)
        w.u32(0)
        w.u64(UInt64(n))
        if let range {
            w.u64(UInt64(range.first))
            w.u64(UInt64(range.count))
        }
        w.raw([UInt8](repeating: 0, count: headerBytes - w.bytes.count))
        let j = ResumeJournal(fd: fd, identity: identity, chunkCount: n, range: range)
        try j.pwriteAll(w.bytes, at: 0, name: name)
        return j
    }

    /// The source version a journal `name` in `dir` was made for (its header only; nil when it
    /// is not a journal): what a range of a new version reads to name the older partial.
    static func storedIdentity(dir: Int32, name: String) -> SourceIdentity? {
        let fd = openat(dir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        if fd < 0 { return nil }
        defer { Glibc.close(fd) }
        guard PartialNames.isOwn(fd) else { return nil }
        var header = [UInt8](repeating: 0, count: headerBytes)
        guard header.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, $0.count, 0) }) == headerBytes else { return nil }
        var r = ByteReader(header)
        return (try? readHeader(&r))?.identity
    }

    /// The header's magic, version and source version (the fields `create` writes first);
    /// nil when the magic is not a journal's.
    private static func readHeader(_ r: inout ByteReader) throws -> (version: UInt32, identity: SourceIdentity)? {
        guard try r.u64() == magic else { return nil }
        let version = try r.u32()
        let cb = try r.u32()
        let size = try r.u64()
        let sec = try r.i64()
        let nsec = try r.u32()
        return (version, SourceIdentity(size: size, mtimeSeconds: sec, mtimeNanoseconds: nsec, chunkBytes: cb))
    }

    /// Opens an existing journal when it belongs to the same source version and covers the
    /// same chunks (the whole file, or `range`); returns the journal and the durable chunks
    /// (index in the file → hash), or nil when absent, stale, another range's or corrupt, or
    /// not the caller's own (`PartialNames.isOwn`: another account's file is never trusted).
    static func open(dir: Int32, name: String, identity: SourceIdentity, range: ChunkRange? = nil) -> (ResumeJournal, [Int: ChunkHash])? {
        let fd = openat(dir, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
        if fd < 0 { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0, PartialNames.isOwn(st) else { Glibc.close(fd); return nil }
        let n = chunkCount(size: identity.size, chunkBytes: Int(identity.chunkBytes))
        let first = range?.first ?? 0
        let expected = headerBytes + (range?.count ?? n) * recordBytes
        guard st.st_size >= headerBytes, st.st_size <= expected else { Glibc.close(fd); return nil }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard got == bytes.count else { Glibc.close(fd); return nil }
        var r = ByteReader(bytes)
        do {
            guard let (version, stored) = try readHeader(&r), version == (range == nil ? 1 : 2) else { Glibc.close(fd); return nil }
            _ = try r.u32()
            guard stored == identity, try r.u64() == UInt64(n) else { Glibc.close(fd); return nil }
            if let range {
                guard try r.u64() == UInt64(range.first), try r.u64() == UInt64(range.count) else { Glibc.close(fd); return nil }
            }
        } catch {
            Glibc.close(fd)
            return nil
        }
        var have: [Int: ChunkHash] = [:]
        var at = headerBytes
        while at + recordBytes <= bytes.count {
            var rr = ByteReader(Array(bytes[at..<at + recordBytes]))
            if let state = try? rr.u32(), state == 1, let index = try? rr.u32(), let check = try? rr.u64(), let h = try? rr.hash(),
               Int(index) == first + (at - headerBytes) / recordBytes, check == checkWord(index: index, hash: h) {
                have[Int(index)] = h
            }
            at += recordBytes
        }
        return (ResumeJournal(fd: fd, identity: identity, chunkCount: n, range: range), have)
    }

    private static func checkWord(index: UInt32, hash: ChunkHash) -> UInt64 {
        (hash.low ^ (hash.high &* 0x9E37_79B9_7F4A_7C15) ^ UInt64(index) ^ magic) | 1
    }

    /// Writes the records of chunks whose data is already durable, then makes them durable.
    /// A chunk outside the journal's range is a caller's bug, refused before anything is written.
    func recordDurable(_ chunks: [(index: Int, hash: ChunkHash)]) throws {
        if chunks.isEmpty { return }
        let first = range?.first ?? 0
        let end = range?.end ?? chunkCount
        if let bad = chunks.first(where: { $0.index < first || $0.index >= end }) {
            throw TransferError.protocolError("chunk \(bad.index) is outside the journal's chunks \(first)..<\(end)")
        }
        for c in chunks {
            var w = ByteWriter(capacity: ResumeJournal.recordBytes)
            w.u32(1)
            w.u32(UInt32(c.index))
            w.u64(ResumeJournal.checkWord(index: UInt32(c.index), hash: c.hash))
            w.hash(c.hash)
            try pwriteAll(w.bytes, at: ResumeJournal.headerBytes + (c.index - first) * ResumeJournal.recordBytes, name: "journal")
        }
        _ = try sys("cannot sync journal") { fdatasync(fd) }
    }

    /// Clears the records of `chunks` (state 0: not written), durably: chunks a resume found
    /// no longer on disk as recorded, before they are sent again.
    func forget(_ chunks: [Int]) throws {
        if chunks.isEmpty { return }
        let first = range?.first ?? 0
        let end = range?.end ?? chunkCount
        let zeros = [UInt8](repeating: 0, count: ResumeJournal.recordBytes)
        for i in chunks where i >= first && i < end {
            try pwriteAll(zeros, at: ResumeJournal.headerBytes + (i - first) * ResumeJournal.recordBytes, name: "journal")
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
