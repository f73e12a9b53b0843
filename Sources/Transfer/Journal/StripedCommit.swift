import Foundation
import Glibc

/// Renames a striped file into place once every range of it is in (issue 19; docs/STRIPING.md).
///
/// Range sessions each leave their chunks in the file's shared `.NAME.ferry-part` and a range
/// journal whose records are written only after the data is durable, each hash checked against
/// its chunk on receipt (and on disk again at a resume). The commit reads those journals: every
/// range of the request must have its journal for this version of the source with every chunk
/// recorded, and the hashes in chunk order must make the source's digest (the same definition
/// as a copy's: XXH3-128 over the chunk hashes). It then reads the partial once and hashes
/// every chunk against its record: the journals say what was written, not that nothing wrote
/// over it since (a whole-file session of the same name truncates the partial; a range of
/// another version resizes it). Then the partial is made durable, gets its mode and mtime and
/// is renamed to NAME, if NAME's partial is still the file it read, and the journals go.
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
        let part = PartialNames.part(name)
        let fd = openat(dir, part, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        if fd < 0 {
            let e = errno
            // Checked after the open: a committer that renamed it a moment ago is seen.
            if e == ENOENT && committed() { return already() }
            if e == ENOENT { throw TransferError(.notFound, "cannot commit '\(shown)': no partial copy of it (no range was moved, or it was committed as another version)") }
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
        // The data itself, once: what each journal recorded must still be there.
        let damaged = try rehash(fd, hashes, r)
        if !damaged.isEmpty {
            let list = damaged.prefix(8).map(\.description).joined(separator: ", ") + (damaged.count > 8 ? " and \(damaged.count - 8) more" : "")
            throw TransferError(.io, "cannot commit '\(shown)': its partial copy no longer holds what ranges \(list) recorded (written over since); run them again", resumable: true)
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

    /// The ranges whose chunks on disk differ from their journal's hashes. The ranges are
    /// independent: up to `min(8, cores)` threads read them (each range in order, one chunk
    /// buffer per thread), so that a commit of a large file costs the file's read at the
    /// disk's speed rather than one core's hashing. The threads are made here and end here
    /// (no pool thread keeps the caller's identity) and only `pread` an open descriptor.
    private static func rehash(_ fd: Int32, _ hashes: [ChunkHash], _ r: CommitRequest) throws -> [ChunkRange] {
        let workers = max(1, min(8, ProcessInfo.processInfo.activeProcessorCount, r.ranges.count))
        let state = RehashState(ranges: r.ranges)
        let done = DispatchGroup()
        for _ in 0..<workers {
            done.enter()
            let t = Thread {
                defer { done.leave() }
                guard let buffer = malloc(r.chunkBytes) else { state.fail(TransferError(.io, "out of memory")); return }
                defer { free(buffer) }
                while let range = state.next() {
                    for i in range.first..<range.end {
                        let offset = UInt64(i) * UInt64(r.chunkBytes)
                        let length = Int(min(UInt64(r.chunkBytes), r.size - offset))
                        var got = 0
                        while got < length {
                            let n = pread(fd, buffer + got, length - got, off_t(offset) + off_t(got))
                            if n < 0 && errno == EINTR { continue }
                            if n < 0 { state.fail(TransferError.system("cannot read the partial copy", errno: errno, resumable: true)); return }
                            if n == 0 { break }
                            got += n
                        }
                        if got != length || ChunkHash.of(buffer, length) != hashes[i] {
                            state.damaged(range)
                            break
                        }
                    }
                }
            }
            t.name = "ferry-commit-rehash"
            t.start()
        }
        done.wait()
        return try state.result()
    }
}

/// The ranges still to re-read, and what the readers found (`StripedCommit.rehash`).
private final class RehashState: @unchecked Sendable {
    private let lock = NSLock()
    private var ranges: [ChunkRange]
    private var cursor = 0
    private var bad: [ChunkRange] = []
    private var error: Error?

    init(ranges: [ChunkRange]) { self.ranges = ranges }

    func next() -> ChunkRange? {
        lock.withLock {
            guard error == nil, cursor < ranges.count else { return nil }
            defer { cursor += 1 }
            return ranges[cursor]
        }
    }

    func damaged(_ r: ChunkRange) { lock.withLock { bad.append(r) } }
    func fail(_ e: Error) { lock.withLock { if error == nil { error = e } } }

    func result() throws -> [ChunkRange] {
        try lock.withLock {
            if let error { throw error }
            return bad.sorted { $0.first < $1.first }
        }
    }
}
