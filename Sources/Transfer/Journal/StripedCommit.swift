import Foundation
import Glibc

/// Renames a striped file into place once every range of it is in (issue 19; docs/STRIPING.md).
///
/// Range sessions each leave their chunks in the partial copy their version shares
/// (`.NAME.v<version>.ferry-stripe`) and a range journal whose records are written only after the
/// data is durable, each hash checked against its chunk on receipt (and on disk again at a
/// resume). The commit reads those journals: every range of the request must have its journal
/// for this version of the source with every chunk recorded, and the hashes in chunk order
/// must make the source's digest (the same definition as a copy's: XXH3-128 over the chunk
/// hashes). Then the partial is made durable, gets its mode and mtime and is renamed to NAME,
/// if the version's partial is still the file it opened, and the journals go.
///
/// The data is read again only in part: one chunk of each range (its last that is not all
/// zeros). The journals vouch for the bytes as a whole-file copy's received hashes do before its
/// rename; what they cannot say is into which file they went. Every chunk a complete range
/// journal records is in the file its range's last session had open (a session writes one
/// descriptor; a resume checks the chunks it keeps on disk and clears the records of the rest
/// before sending them again; a new journal is a new file, so a session that still holds an
/// older one writes into a file no one reads), so one
/// chunk per range tells whether that file is the partial opened here, or one removed since
/// (by hand, or by a newer version's range) and made again by another range, whose holes the
/// journals would otherwise vouch for. What wrote over a partial is kept out by its name: a
/// whole-file session of NAME writes `.NAME.ferry-part`, ranges of another version their own
/// partial; left is the owner writing into a hidden helper file, which no copy tool guards
/// against. The whole re-read this replaces cost 0.8 s of a 6 GiB striped file's 19.6 s
/// (docs/STRIPING.md); a chunk per range is 1/64 of the file at the default 256 MiB ranges, more
/// where the plan's guided ranges shrink (40 ranges, 1/38, for a 6 GiB file at six slots; a
/// 512 MiB file alone at six slots gets 16 ranges, 1/8).
///
/// Idempotent, for a coordinator that retries or two that race: no partial, and NAME already
/// that version (size and mtime), is "already committed"; a rename that loses the race (the
/// partial gone, NAME now that version) is the same. A range missing or incomplete is named
/// and nothing changes (run it again); a digest that does not match removes the partial and
/// every range journal (the file is moved again whole). Nothing is ever renamed over a
/// directory, a device, a FIFO or a socket.
public enum StripedCommit {
    public enum Outcome: Sendable, Equatable {
        case committed
        case alreadyCommitted
    }

    /// `dir`: the destination's directory (opened beneath its root, with the user's rights
    /// where a server acts for one); `modeMask`: the mode bits allowed (an export's).
    public static func commit(dir: Int32, name: String, _ r: CommitRequest, modeMask: UInt32 = 0o1777, display: String? = nil) throws -> Outcome {
        let shown = display ?? name
        guard !name.isEmpty, !name.contains("/"), name != ".", name != "..", !PartialNames.isHelper(name) else {
            throw TransferError(.path, "cannot commit '\(shown)': not a file name")
        }
        try r.checkCover()
        /// NAME is this version already (the commit of another, or an earlier, committer).
        func committed() -> Bool {
            var st = stat()
            return fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_mode & S_IFMT == S_IFREG && UInt64(st.st_size) == r.size
                && Int64(st.st_mtim.tv_sec) == r.mtimeSeconds && UInt32(st.st_mtim.tv_nsec) == r.mtimeNanoseconds
        }
        /// A commit found done: journals a crashed committer may have left go too.
        func already() -> Outcome {
            for range in r.ranges { _ = unlinkat(dir, PartialNames.rangeJournal(name, range), 0) }
            return .alreadyCommitted
        }
        var st = stat()
        if fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_mode & S_IFMT != S_IFREG && st.st_mode & S_IFMT != S_IFLNK {
            throw TransferError(.path, "cannot commit '\(shown)': \(Paths.kindName(st.st_mode)) is in the way (Ferry never replaces one)")
        }
        let part = PartialNames.rangePart(name, size: r.size, mtimeSeconds: r.mtimeSeconds, mtimeNanoseconds: r.mtimeNanoseconds, chunkBytes: r.chunkBytes)
        let fd = openat(dir, part, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        if fd < 0 {
            let e = errno
            // Checked after the open: a committer that renamed it a moment ago is seen.
            if e == ENOENT && committed() { return already() }
            if e == ENOENT { throw TransferError(.notFound, "cannot commit '\(shown)': no partial copy of this version of it (no range of this version was moved, or it was committed already)") }
            throw TransferError.system("cannot commit '\(shown)'", errno: e)
        }
        defer { Glibc.close(fd) }
        var pst = stat()
        guard fstat(fd, &pst) == 0, pst.st_mode & S_IFMT == S_IFREG, UInt64(pst.st_size) == r.size else {
            throw TransferError(.verify, "cannot commit '\(shown)': its partial copy is not a file of \(byteText(r.size))")
        }
        // Never renamed into place unless it is the committer's own (`PartialNames.isOwn`).
        guard PartialNames.isOwn(pst) else {
            throw TransferError(.permission, "cannot commit '\(shown)': its partial copy '\(part)' belongs to another account (remove it, or ask its owner to)")
        }
        let identity = SourceIdentity(size: r.size, mtimeSeconds: r.mtimeSeconds, mtimeNanoseconds: r.mtimeNanoseconds, chunkBytes: UInt32(r.chunkBytes))
        var hashes = [ChunkHash](repeating: .zero, count: r.chunkCount)
        var incomplete: [String] = []
        for range in r.ranges {
            guard let (_, have) = ResumeJournal.open(dir: dir, name: PartialNames.rangeJournal(name, range), identity: identity, range: range) else {
                incomplete.append("\(range) (no journal for this version)")
                continue
            }
            let missing = (range.first..<range.end).filter { have[$0] == nil }.count
            if missing > 0 {
                incomplete.append("\(range) (\(missing) of \(range.count) chunks not in)")
                continue
            }
            for i in range.first..<range.end { hashes[i] = have[i]! }
        }
        if !incomplete.isEmpty {
            let list = incomplete.prefix(8).joined(separator: ", ") + (incomplete.count > 8 ? " and \(incomplete.count - 8) more" : "")
            throw TransferError(.io, "cannot commit '\(shown)': ranges not complete: \(list); run them again", resumable: true)
        }
        /// NAME's partial is still the file this commit opened (not one a newer range session
        /// made after another committer renamed this one).
        func stillOurs() -> Bool {
            var now = stat()
            return fstatat(dir, part, &now, AT_SYMLINK_NOFOLLOW) == 0 && now.st_dev == pst.st_dev && now.st_ino == pst.st_ino
        }
        let digest = FileDigest.of(hashes)
        guard digest == r.digest else {
            if stillOurs() { _ = unlinkat(dir, part, 0) }
            for range in r.ranges { _ = unlinkat(dir, PartialNames.rangeJournal(name, range), 0) }
            throw TransferError(.verify, "cannot commit '\(shown)': the ranges' digest \(digest) is not the source's \(r.digest); the partial copy was removed, move the file again")
        }
        // One chunk of each range read back: the journals say what was written, and into which
        // file a range's last session wrote them is what this tells.
        let replaced = try sentinels(fd, hashes, r)
        if !replaced.isEmpty {
            let list = replaced.prefix(8).map(\.description).joined(separator: ", ") + (replaced.count > 8 ? " and \(replaced.count - 8) more" : "")
            throw TransferError(.io, "cannot commit '\(shown)': its partial copy no longer holds what ranges \(list) recorded (it was replaced or written over since); run them again", resumable: true)
        }
        _ = try sys("cannot sync '\(shown)'") { fdatasync(fd) }
        _ = try sys("cannot set the mode of '\(shown)'") { fchmod(fd, mode_t(r.mode & modeMask)) }
        let t = timespec(tv_sec: Int(r.mtimeSeconds), tv_nsec: Int(r.mtimeNanoseconds))
        var times = [t, t]
        _ = try sys("cannot set the times of '\(shown)'") { futimens(fd, &times) }
        guard stillOurs() else {
            if committed() { return already() }
            throw TransferError(.io, "cannot commit '\(shown)': its partial copy was replaced while it was checked; commit again", resumable: true)
        }
        if renameat(dir, part, dir, name) != 0 {
            let e = errno
            // Another committer renamed it first: the same file, now in place.
            if e == ENOENT && committed() { return already() }
            throw TransferError.system("cannot rename into '\(shown)'", errno: e)
        }
        for range in r.ranges { _ = unlinkat(dir, PartialNames.rangeJournal(name, range), 0) }
        return .committed
    }

    /// The ranges whose sentinel chunk (the last of the range whose recorded hash is not that of
    /// zeros) is not what their journal recorded. A range of zeros only has no sentinel: holes
    /// read as what it holds.
    private static func sentinels(_ fd: Int32, _ hashes: [ChunkHash], _ r: CommitRequest) throws -> [ChunkRange] {
        guard let buffer = calloc(1, r.chunkBytes) else { throw TransferError(.io, "out of memory") }
        defer { free(buffer) }
        func length(_ i: Int) -> Int { Int(min(UInt64(r.chunkBytes), r.size - UInt64(i) * UInt64(r.chunkBytes))) }
        var zeroHashes: [Int: ChunkHash] = [:]
        func zeros(_ n: Int) -> ChunkHash {
            if let h = zeroHashes[n] { return h }
            memset(buffer, 0, n)
            let h = ChunkHash.of(buffer, n)
            zeroHashes[n] = h
            return h
        }
        var bad: [ChunkRange] = []
        for range in r.ranges {
            guard let i = (range.first..<range.end).reversed().first(where: { hashes[$0] != zeros(length($0)) }) else { continue }
            let offset = off_t(UInt64(i) * UInt64(r.chunkBytes))
            let n = length(i)
            var got = 0
            while got < n {
                let k = pread(fd, buffer + got, n - got, offset + off_t(got))
                if k < 0 && errno == EINTR { continue }
                if k < 0 { throw TransferError.system("cannot read the partial copy", errno: errno, resumable: true) }
                if k == 0 { break }
                got += k
            }
            if got != n || ChunkHash.of(buffer, n) != hashes[i] { bad.append(range) }
        }
        return bad
    }
}
