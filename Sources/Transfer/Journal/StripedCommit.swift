import Foundation
import Glibc

/// Renames a striped file into place once every range of it is in (issue 19; docs/STRIPING.md).
///
/// Range sessions each leave their chunks in the partial copy their version shares
/// (`.NAME.v<version>.ferry-part`) and a range journal whose records are written only after the
/// data is durable, each hash checked against its chunk on receipt (and on disk again at a
/// resume). The commit reads those journals: every range of the request must have its journal
/// for this version of the source with every chunk recorded, and the hashes in chunk order
/// must make the source's digest (the same definition as a copy's: XXH3-128 over the chunk
/// hashes). Then the partial is made durable, gets its mode and mtime and is renamed to NAME,
/// if the version's partial is still the file it opened, and the journals go.
///
/// The data is not read again: the journals vouch for it as a whole-file copy's received
/// hashes vouch for its bytes before its rename. What could write over the partial since is
/// kept out by its name: a whole-file session of NAME writes `.NAME.ferry-part`, ranges of
/// another version their own partial; what is left is the owner's own writes into a hidden
/// helper file, which no copy tool guards against (`ferry cp --checksum` compares afterwards).
/// Re-reading was measured at 0.8 s of a 6 GiB striped file's 19.6 s (docs/STRIPING.md).
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
}
