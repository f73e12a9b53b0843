import Foundation
import Glibc
import Transfer

/// One entry as the scanner saw it (lstat, never following a link).
public struct ScannedEntry: Sendable {
    public var name: String
    public var kind: EntryKind
    public var size: Int64
    public var mtimeNs: Int64
    public var mode: Int64
    public var target: String?
}

/// A whole directory's listing. The scanner hands over complete directories only, never a
/// part of one: registration diffs a directory against the catalog and deletes what is gone,
/// which is only right when the listing is complete (an unreadable directory is reported and
/// its old entries are kept).
public struct ScannedDirectory: Sendable {
    /// The directory's path within the root ("" for the root itself).
    public var dir: String
    public var entries: [ScannedEntry]
}

public struct ScanStats: Sendable {
    public var directories = 0
    public var entries = 0
    /// Devices, FIFOs, sockets, names or link targets that are not UTF-8.
    public var skipped = 0
    public var unreadable = 0
    public var firstError: String?
}

/// Walks a local tree with several threads: lstat is a system call per entry, and on a
/// parallel file system each one is a round trip, so one thread cannot keep up with a
/// million-file tree. Directories to visit sit in a bounded shared stack (depth first, so it
/// stays small); a thread that finds it full keeps the surplus on its own stack. Listings go
/// to the caller's thread through a bounded queue, so the walk runs ahead of the database
/// writer by a bounded amount of memory.
///
/// A subdirectory is opened by its path from the root without following a symlink at the
/// end, and then checked to be the very directory (device, inode) its parent's lstat saw: a
/// directory swapped for a link during the walk is reported, not followed.
public final class Scanner: @unchecked Sendable {
    public let root: String
    public let threads: Int
    /// The scanned directory, opened once; everything beneath is opened relative to it.
    let rootFd: Int32
    /// The account the scan's threads act as (a daemon registering for a user); nil: the
    /// caller's own rights.
    let account: LocalAccount?
    private let rootID: (UInt64, UInt64)

    /// Two threads at least (one waits on lstat while the other lists), at most eight.
    public static var defaultThreads: Int { max(2, min(8, ProcessInfo.processInfo.activeProcessorCount)) }
    static let stackCapacity = 1024
    static let queuedEntriesMax = 64 * 1024

    /// Opens `root` (a directory; a symlink naming one is followed, only there).
    /// `rootFd`: the directory already opened by the caller (confined, as the user): used
    /// instead of opening `root`, which is then only its name in messages. Not taken over.
    public init(root: String, rootFd: Int32? = nil, account: LocalAccount? = nil, threads: Int = Scanner.defaultThreads) throws {
        self.root = root
        self.threads = max(1, threads)
        self.account = account
        self.rootFd = rootFd.map { dup($0) } ?? open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if self.rootFd < 0 { throw CatalogError(.io, "cannot open the directory '\(root)': \(String(cString: strerror(errno)))") }
        var st = stat()
        fstat(self.rootFd, &st)
        rootID = (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    deinit { close(rootFd) }

    private struct Work { var path: String; var dev: UInt64; var ino: UInt64 }

    private final class State: @unchecked Sendable {
        let work = NSCondition()
        var stack: [Work] = []
        var active = 0
        let out = NSCondition()
        var identityError: String?
        var queue: [ScannedDirectory] = []
        var head = 0
        var queuedEntries = 0
        var liveWorkers = 0
        var cancelled = false
        var stats = ScanStats()
    }

    /// Walks the tree, calling `body` on the caller's thread with each directory (any order;
    /// a parent's listing is not guaranteed before its children's). If `body` throws, the walk
    /// stops and the error is rethrown.
    @discardableResult
    public func scan(_ body: (ScannedDirectory) throws -> Void) throws -> ScanStats {
        let st = State()
        st.stack = [Work(path: "", dev: rootID.0, ino: rootID.1)]
        st.liveWorkers = threads
        for i in 0..<threads {
            let t = Thread { [self] in
                // A thread of its own (never a shared pool's): it can act as the account.
                var adopted = true
                if let account = self.account {
                    do { try ThreadIdentity.adopt(account) } catch {
                        adopted = false
                        st.out.withLock { st.identityError = "\(error)" }
                        self.cancel(st)
                    }
                }
                defer { if self.account != nil { ThreadIdentity.restore() } }
                if adopted { self.worker(st) }
                st.out.lock()
                st.liveWorkers -= 1
                st.out.broadcast()
                st.out.unlock()
            }
            t.name = "ferry-scan-\(i)"
            t.stackSize = 1 << 20
            t.start()
        }
        var failure: Error?
        while true {
            st.out.lock()
            while st.head == st.queue.count && st.liveWorkers > 0 { st.out.wait() }
            if st.head == st.queue.count {
                st.out.unlock()
                break
            }
            let d = st.queue[st.head]
            st.queue[st.head] = ScannedDirectory(dir: "", entries: [])
            st.head += 1
            if st.head > 256 && st.head * 2 > st.queue.count {
                st.queue.removeFirst(st.head)
                st.head = 0
            }
            st.queuedEntries -= d.entries.count
            st.out.broadcast()
            st.out.unlock()
            if failure != nil { continue }  // draining, so that the workers can finish
            do { try body(d) } catch {
                failure = error
                cancel(st)
            }
        }
        if let failure { throw failure }
        if let e = st.out.withLock({ st.identityError }) { throw CatalogError(.io, "cannot scan '\(root)' as \(account?.name ?? "?"): \(e)") }
        return st.out.withLock { st.stats }
    }

    private func cancel(_ st: State) {
        st.work.withLock { st.cancelled = true; st.work.broadcast() }
        st.out.withLock { st.cancelled = true; st.out.broadcast() }
    }

    private func worker(_ st: State) {
        var local: [Work] = []
        while true {
            st.work.lock()
            while st.stack.isEmpty && st.active > 0 && !st.cancelled { st.work.wait() }
            if st.cancelled || st.stack.isEmpty {
                st.work.broadcast()
                st.work.unlock()
                return
            }
            local.append(st.stack.removeLast())
            st.active += 1
            st.work.unlock()
            while let w = local.popLast() {
                visit(w, st, &local)
                // Share the surplus with idle threads while there is room.
                if local.count > 1 {
                    st.work.lock()
                    let n = min(Scanner.stackCapacity - st.stack.count, local.count - 1)
                    if n > 0 {
                        st.stack.append(contentsOf: local[0..<n])
                        local.removeFirst(n)
                        st.work.broadcast()
                    }
                    let stop = st.cancelled
                    st.work.unlock()
                    if stop { local.removeAll() }
                }
            }
            st.work.lock()
            st.active -= 1
            if st.active == 0 { st.work.broadcast() }
            st.work.unlock()
        }
    }

    private func visit(_ w: Work, _ st: State, _ local: inout [Work]) {
        func failed(_ what: String, _ e: Int32) {
            st.out.withLock {
                st.stats.unreadable += 1
                if st.stats.firstError == nil {
                    st.stats.firstError = "\(what) '\(w.path.isEmpty ? "." : w.path)': \(String(cString: strerror(e)))"
                }
            }
        }
        let fd = w.path.isEmpty ? dup(rootFd) : openat(rootFd, w.path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 { return failed("cannot open", errno) }
        var dst = stat()
        if fstat(fd, &dst) != 0 || UInt64(dst.st_dev) != w.dev || UInt64(dst.st_ino) != w.ino {
            close(fd)
            return failed("changed during the scan:", ESTALE)
        }
        guard let dirp = fdopendir(fd) else {
            close(fd)
            return failed("cannot read", errno)
        }
        defer { closedir(dirp) }
        if w.path.isEmpty { rewinddir(dirp) }  // a dup shares the offset with rootFd
        var entries: [ScannedEntry] = []
        var skipped = 0
        var linkBuf = [CChar](repeating: 0, count: PathLimits.symlinkTargetBytesMax + 1)
        let prefix = w.path.isEmpty ? "" : w.path + "/"
        while true {
            errno = 0
            guard let ent = readdir(dirp) else {
                if errno != 0 { return failed("cannot read", errno) }  // a partial listing is no listing
                break
            }
            let name: String? = withUnsafePointer(to: &ent.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { p in
                    if p[0] == 0x2E && (p[1] == 0 || (p[1] == 0x2E && p[2] == 0)) { return "" }
                    return String(validatingCString: p)
                }
            }
            guard let name else { skipped += 1; continue }
            if name.isEmpty { continue }  // . and ..
            var s = stat()
            if fstatat(fd, name, &s, AT_SYMLINK_NOFOLLOW) != 0 {
                if errno != ENOENT { skipped += 1 }  // gone meanwhile: as if never there
                continue
            }
            let mtime = nanoseconds(s.st_mtim)
            let mode = Int64(s.st_mode & 0o7777)
            switch s.st_mode & S_IFMT {
            case S_IFREG:
                entries.append(ScannedEntry(name: name, kind: .file, size: Int64(s.st_size), mtimeNs: mtime, mode: mode))
            case S_IFDIR:
                entries.append(ScannedEntry(name: name, kind: .directory, size: 0, mtimeNs: mtime, mode: mode))
                local.append(Work(path: prefix + name, dev: UInt64(s.st_dev), ino: UInt64(s.st_ino)))
            case S_IFLNK:
                let n = readlinkat(fd, name, &linkBuf, PathLimits.symlinkTargetBytesMax)
                guard n > 0 else { skipped += 1; continue }
                linkBuf[n] = 0
                guard let target = String(validatingCString: linkBuf) else { skipped += 1; continue }
                entries.append(ScannedEntry(name: name, kind: .symlink, size: Int64(s.st_size), mtimeNs: mtime, mode: mode, target: target))
            default:
                skipped += 1
            }
        }
        st.out.lock()
        while st.queuedEntries > 0 && st.queuedEntries + entries.count > Scanner.queuedEntriesMax && !st.cancelled { st.out.wait() }
        st.stats.directories += 1
        st.stats.entries += entries.count
        st.stats.skipped += skipped
        if !st.cancelled {
            st.queuedEntries += entries.count
            st.queue.append(ScannedDirectory(dir: w.path, entries: entries))
            st.out.broadcast()
        }
        st.out.unlock()
    }
}

/// A file's time in nanoseconds since the epoch, saturated at Int64's ends: a file's owner sets
/// its mtime (tmpfs takes 2^62 seconds), and a product that overflowed would stop the daemon
/// (Swift traps). Times past 2262 all read as the largest value.
func nanoseconds(_ t: timespec) -> Int64 {
    let (ns, over) = Int64(t.tv_sec).multipliedReportingOverflow(by: 1_000_000_000)
    if over { return t.tv_sec < 0 ? .min : .max }
    let (sum, over2) = ns.addingReportingOverflow(Int64(t.tv_nsec))
    return over2 ? .max : sum
}

/// The engine's digest of a regular file: XXH3-128 over the XXH3-128 of each `chunkSize`
/// chunk (`FileDigest` over `ChunkHash`), so a catalog digest can be compared with what a
/// transfer verified. Returns nil when the file is not the one expected (size or mtime moved
/// while it was read): a digest is only recorded for the version it describes.
func engineDigest(path: String, size: Int64, mtimeNs: Int64, chunkSize: Int, buffer: UnsafeMutableRawPointer, beneath dirFd: Int32? = nil) -> ChunkHash? {
    // O_NONBLOCK: a FIFO put where the scan saw a file must not block the scan for ever.
    // Beneath the scanned directory, no link followed: a link swapped in is not read.
    let fd = dirFd.map { (try? openBeneath($0, path, flags: O_RDONLY)) ?? -1 } ?? open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
    if fd < 0 { return nil }
    defer { close(fd) }
    var opened = stat()
    guard fstat(fd, &opened) == 0, opened.st_mode & S_IFMT == S_IFREG else { return nil }
    _ = posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
    var digest = FileDigest()
    var offset: Int64 = 0
    while offset < size {
        let n = Int(min(Int64(chunkSize), size - offset))
        var got = 0
        while got < n {
            let r = pread(fd, buffer + got, n - got, off_t(offset) + off_t(got))
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { _ = digest.finish(); return nil }
            got += r
        }
        digest.add(ChunkHash.of(buffer, n))
        offset += Int64(n)
    }
    let h = digest.finish()
    var st = stat()
    guard fstat(fd, &st) == 0, Int64(st.st_size) == size,
          nanoseconds(st.st_mtim) == mtimeNs else { return nil }
    return h
}

/// The engine's digest of the file at `path` (see `engineDigest`), as the catalog stores it:
/// 32 hex digits.
public func fileDigest(path: String, chunkSize: Int = Wire.chunkBytesDefault) throws -> String {
    var st = stat()
    guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
        throw CatalogError(.io, "'\(path)' is not a readable regular file")
    }
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(1, chunkSize), alignment: 4096)
    defer { buffer.deallocate() }
    guard let h = engineDigest(path: path, size: Int64(st.st_size),
                               mtimeNs: nanoseconds(st.st_mtim),
                               chunkSize: chunkSize, buffer: buffer) else {
        throw CatalogError(.io, "cannot read '\(path)', or it changed while read")
    }
    return h.description
}
