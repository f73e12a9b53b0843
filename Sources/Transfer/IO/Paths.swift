import CLiburing
import Glibc

/// Limits on names from the wire, checked before any use.
public enum PathLimits {
    public static let pathBytesMax = 4096
    public static let componentBytesMax = 255
    public static let symlinkTargetBytesMax = 4096
}

/// Confined path resolution: every remote path resolves beneath a root directory with
/// openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS), so `..`, absolute paths and symlinks that
/// lead out are refused by the kernel, not by string checks alone.
enum Paths {
    static let resolveBeneath: UInt64 = 0x08  // RESOLVE_BENEATH
    static let resolveNoMagicLinks: UInt64 = 0x02  // RESOLVE_NO_MAGICLINKS
    static let resolveNoSymlinks: UInt64 = 0x04  // RESOLVE_NO_SYMLINKS

    /// Splits and validates a relative path from the wire ("" is the transfer root itself).
    /// Refuses empty components, ".", "..", NUL bytes and over-long names.
    static func components(of path: String) throws -> [Substring] {
        // Byte-wise, as the kernel sees the path: Swift compares Characters, and "/" followed
        // by a combining mark is one Character, which would slip past `split` and `== ".."`.
        let bytes = Array(path.utf8)
        if bytes.isEmpty { return [] }
        if bytes.count > PathLimits.pathBytesMax {
            throw TransferError(.path, "path too long (\(bytes.count) bytes, at most \(PathLimits.pathBytesMax))")
        }
        let slash = UInt8(ascii: "/")
        let dot = UInt8(ascii: ".")
        if bytes[0] == slash { throw TransferError(.path, "absolute path refused: \(path)") }
        var parts: [Substring] = []
        for p in bytes.split(separator: slash, omittingEmptySubsequences: false) {
            if p.isEmpty || p.elementsEqual([dot]) || p.elementsEqual([dot, dot]) {
                throw TransferError(.path, "path '\(path)' leaves its root or is not normalised")
            }
            if p.count > PathLimits.componentBytesMax { throw TransferError(.path, "name too long in '\(path)'") }
            if p.contains(0) { throw TransferError(.path, "NUL byte in path") }
            parts.append(Substring(String(decoding: p, as: UTF8.self)))
        }
        return parts
    }

    /// Normalises a path typed by a user for a server (URL part): strips leading slashes,
    /// refuses `..`. Returns the relative path and whether it ended in '/'.
    static func remoteRelative(_ urlPath: String) throws -> (path: String, trailingSlash: Bool) {
        let slash = UInt8(ascii: "/")
        let dot = UInt8(ascii: ".")
        let bytes = Array(urlPath.utf8)
        let trailing = bytes.last == slash
        // The URL's path starts with the one '/' that separates it from HOST:PORT; a second
        // one (ferry://h:p//etc/x) asks for an absolute path, which a server never serves.
        if bytes.count > 2 && bytes[0] == slash && bytes[1] == slash {
            throw TransferError(.path, "absolute path '\(urlPath.dropFirst())' refused: paths are relative to the server's root")
        }
        var parts: [String] = []
        for p in bytes.split(separator: slash, omittingEmptySubsequences: true) {
            if p.elementsEqual([dot]) { continue }
            if p.elementsEqual([dot, dot]) { throw TransferError(.path, "path '\(urlPath)' leaves the server's root ('..' refused)") }
            parts.append(String(decoding: p, as: UTF8.self))
        }
        let joined = parts.joined(separator: "/")
        _ = try components(of: joined)
        return (joined, trailing)
    }

    /// Opens `path` beneath `root` with the kernel confining the resolution.
    static func open(beneath root: Int32, _ path: String, flags: Int32, mode: mode_t = 0, noSymlinks: Bool = false) throws -> Int32 {
        let resolve = resolveBeneath | resolveNoMagicLinks | (noSymlinks ? resolveNoSymlinks : 0)
        let p = path.isEmpty ? "." : path
        for _ in 0..<100 {
            let fd = ferry_openat2(root, p, flags | O_CLOEXEC, UInt32(mode), resolve)
            if fd >= 0 { return fd }
            if fd == -EINTR || fd == -EAGAIN { continue }
            if fd == -ELOOP && noSymlinks {
                throw TransferError(.path, "'\(path)' is a symbolic link where Ferry follows none (at or above the limit of the token's scope, or a tree's destination): name the directory itself")
            }
            if fd == -EXDEV || fd == -ELOOP {
                throw TransferError(.path, "path '\(path)' resolves outside the root (refused)")
            }
            var e = TransferError.system("cannot open '\(path.isEmpty ? "." : path)'", errno: -fd)
            if fd == -ENOTDIR { e.message += ": a file is where the path needs a directory" }
            throw e
        }
        throw TransferError(.io, "cannot open '\(path)': interrupted too often")
    }

    /// A file type in a user's words, for messages ("a FIFO", "a character device").
    static func kindName(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: "a regular file"
        case S_IFDIR: "a directory"
        case S_IFLNK: "a symbolic link"
        case S_IFIFO: "a FIFO"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        default: "a special file"
        }
    }

    /// True for what Ferry moves as data: regular files and directories.
    static func isData(_ mode: mode_t) -> Bool {
        let k = mode & S_IFMT
        return k == S_IFREG || k == S_IFDIR
    }

    /// Opens a regular file or a directory beneath `root` without ever blocking on, or even
    /// opening, anything else. A FIFO's open(2) waits for a writer for ever and a device's open
    /// can have side effects (a tape rewinds), so the path is first opened with O_PATH (which
    /// opens neither) and its type checked; the real open then adds O_NONBLOCK (a FIFO swapped
    /// in meanwhile cannot block it), checks that it is the same inode, and clears O_NONBLOCK
    /// again (io_uring would otherwise hand back EAGAIN for reads that miss the page cache).
    static func openData(beneath root: Int32, _ path: String, flags: Int32, noSymlinks: Bool = false) throws -> Int32 {
        let probe = try open(beneath: root, path, flags: FERRY_O_PATH | (flags & O_NOFOLLOW), noSymlinks: noSymlinks)
        var before = stat()
        let r = fstat(probe, &before)
        let e = errno
        Glibc.close(probe)
        if r != 0 { throw TransferError.system("cannot stat '\(path)'", errno: e) }
        try requireData(before.st_mode, path)
        let fd = try open(beneath: root, path, flags: flags | O_NONBLOCK, noSymlinks: noSymlinks)
        do {
            try settle(fd, path, same: before)
        } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    /// Refuses anything but a regular file or a directory, naming what it is.
    static func requireData(_ mode: mode_t, _ path: String) throws {
        guard isData(mode) else {
            throw TransferError(.path, "'\(path.isEmpty ? "." : path)' is \(kindName(mode)): only regular files and directories are transferred")
        }
    }

    /// After an O_NONBLOCK open: checks the descriptor is a regular file or a directory (and
    /// the inode `same` names, when given), then clears O_NONBLOCK. The caller closes on error.
    /// Returns what fstat said. `openFlags`: the flags the descriptor was opened with, when the
    /// caller knows them (saves reading them back: a tree of small files pays one call less per
    /// file).
    @discardableResult
    static func settle(_ fd: Int32, _ path: String, same: stat? = nil, openFlags: Int32? = nil) throws -> stat {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw TransferError.system("cannot stat '\(path)'", errno: errno) }
        try requireData(st.st_mode, path)
        if let same, same.st_dev != st.st_dev || same.st_ino != st.st_ino {
            throw TransferError(.path, "'\(path)' was replaced while being opened")
        }
        let fl = openFlags ?? fcntl(fd, F_GETFL)
        if fl >= 0 && fl & O_NONBLOCK != 0 { _ = fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) }
        return st
    }

    /// Opens `components` one at a time, each beneath the directory opened before it, so that a
    /// symlink on the way can never lead above the component it sits in: a path checked
    /// against a scope by its text stays within that scope on disk. (One openat2 of the whole
    /// path only keeps it beneath `root`.)
    ///
    /// `linkFree`: how many of the first components are opened without following any symbolic
    /// link (those down to the limit of the token's scope: a link there, even one that stays
    /// beneath its own directory, would carry the session out of the scope its path was checked
    /// against; beneath the limit a link is followed within its directory, as before).
    /// `lastLinkFree`: the last component is not followed either (a tree's destination that a
    /// deletion or a tree push works in: a link swapped in there by someone who can write its
    /// parent would turn the user's own `--delete` on another of their directories).
    static func openStepwise(beneath root: Int32, _ components: [Substring], flags: Int32, linkFree: Int = 0, lastLinkFree: Bool = false) throws -> Int32 {
        var current = try open(beneath: root, "", flags: O_DIRECTORY | FERRY_O_PATH)
        for (i, c) in components.enumerated() {
            let last = i == components.count - 1
            do {
                let next = last
                    ? try openData(beneath: current, String(c), flags: flags, noSymlinks: i < linkFree || lastLinkFree)
                    : try open(beneath: current, String(c), flags: O_DIRECTORY | FERRY_O_PATH, noSymlinks: i < linkFree)
                Glibc.close(current)
                current = next
            } catch {
                Glibc.close(current)
                throw error
            }
        }
        if components.isEmpty {
            let fd = try openData(beneath: root, "", flags: flags)
            Glibc.close(current)
            return fd
        }
        return current
    }

    /// Creates each missing directory of `components` beneath `root` and returns an fd of the last.
    /// Missing parents get `mode` (by default 0755 less the umask the process started with:
    /// `prepareProcess` sets 0), as `mkdir -p` makes them; the last one
    /// `lastMode` when given (a transfer's target, kept private until its own mode is applied).
    static func makeDirectories(beneath root: Int32, _ components: [Substring], mode: mode_t = 0o755 & ~startUmask, lastMode: mode_t? = nil, linkFree: Int = 0) throws -> Int32 {
        try makeDirectoriesTellingNew(beneath: root, components, mode: mode, lastMode: lastMode, linkFree: linkFree).fd
    }

    /// `makeDirectories`, and whether the last directory was made now (`new`: nothing was in it
    /// before this call).
    static func makeDirectoriesTellingNew(beneath root: Int32, _ components: [Substring], mode: mode_t = 0o755 & ~startUmask,
                                          lastMode: mode_t? = nil, linkFree: Int = 0, lastLinkFree: Bool = false) throws -> (fd: Int32, new: Bool) {
        var current = try open(beneath: root, "", flags: O_DIRECTORY | FERRY_O_PATH)
        var made = false
        for (i, c) in components.enumerated() {
            let name = String(c)
            let r = mkdirat(current, name, i == components.count - 1 ? lastMode ?? mode : mode)
            made = r == 0
            if r != 0 && errno != EEXIST {
                let e = errno
                Glibc.close(current)
                throw TransferError.system("cannot create directory '\(components.joined(separator: "/"))'", errno: e)
            }
            do {
                let next = try open(beneath: current, name, flags: O_DIRECTORY | FERRY_O_PATH,
                                    noSymlinks: i < linkFree || (lastLinkFree && i == components.count - 1))
                Glibc.close(current)
                current = next
            } catch {
                Glibc.close(current)
                throw error
            }
        }
        return (current, made && !components.isEmpty)
    }
}

/// The umask the process was started with, before `prepareProcess` set it to 0: what the
/// directories Ferry makes on its own (the missing parents of a destination) are masked with,
/// as `mkdir -p` would be. (Here, beside its users, not in Server.swift: the fuzz target
/// builds this file without that one.)
nonisolated(unsafe) var startUmask: mode_t = 0o022
/// Keeps the umask in `startUmask` and sets 0, once: `prepareProcess` touches it first thing.
let savedStartUmask: Void = { startUmask = umask(0) }()

/// The journal and partial-file names that sit beside a destination file.
enum PartialNames {
    static let partSuffix = ".ferry-part"
    static let journalSuffix = ".ferry-journal"

    /// Whether `fd`, an existing partial file or journal just opened, is the calling thread's
    /// own: a regular file owned by its fsuid (the account a server acts as for the user), with
    /// one link. Anything else is never written into, resumed from or renamed into place: in a
    /// shared directory another account can plant the helper name first (and keep writing into
    /// its own file, or read what lands there), or hard-link someone's file to it.
    static func isOwn(_ fd: Int32) -> Bool {
        var st = stat()
        return fstat(fd, &st) == 0 && isOwn(st)
    }

    /// `isOwn` of a file whose `fstat` the caller already has.
    static func isOwn(_ st: stat) -> Bool {
        st.st_mode & S_IFMT == S_IFREG && st.st_uid == ThreadIdentity.fsuid && st.st_nlink == 1
    }

    /// Why a file is refused when its helper `helperName` is another account's and cannot be
    /// removed (a sticky directory): nothing of the file is written.
    static func foreignMessage(_ display: String, _ helperName: String) -> String {
        "cannot write '\(display)': '\(helperName)' in its directory belongs to another account (remove it, or ask its owner to)"
    }
    static func part(_ name: String) -> String { helper(name, partSuffix) }
    static func journal(_ name: String) -> String { helper(name, journalSuffix) }
    /// The journal of one range of a striped file (`.NAME.r<first>+<count>.ferry-journal`):
    /// one per range beside the one shared partial, each written by the node that moves it.
    /// It ends in the journal suffix, so a walk skips it as it skips the others.
    static func rangeJournal(_ name: String, _ range: ChunkRange) -> String {
        helper(name, ".r\(range.first)+\(range.count)" + journalSuffix)
    }
    static let stripePartSuffix = ".ferry-stripe"
    /// The partial copy a striped file's ranges share (`.NAME.v<version>.ferry-stripe`): named
    /// after the source's version (size, mtime, chunk size), so that nothing but ranges of that
    /// version writes into it: a whole-file session of NAME has `.NAME.ferry-part` of its own,
    /// ranges of another version another partial. A suffix of its own: no whole-file partial
    /// (of a file named `NAME.v0123456789abcdef`, say) is ever taken for one.
    static func rangePart(_ name: String, size: UInt64, mtimeSeconds: Int64, mtimeNanoseconds: UInt32, chunkBytes: Int) -> String {
        let version = String(ChunkHash.of(Array("\(size):\(mtimeSeconds):\(mtimeNanoseconds):\(chunkBytes)".utf8)).description.prefix(16))
        return helper(name, ".v" + version + stripePartSuffix)
    }
    /// Long names would overflow NAME_MAX with the suffix: they get a hashed helper name.
    private static func helper(_ name: String, _ suffix: String) -> String {
        if name.utf8.count + 1 + suffix.utf8.count <= PathLimits.componentBytesMax { return "." + name + suffix }
        return "." + ChunkHash.of(Array(name.utf8)).description + suffix
    }
    // MARK: Claims: one session at a time writes a partial
    //
    // Every whole-file session of NAME writes `.NAME.ferry-part` (a fixed name, so that a rerun
    // finds what an interrupted one left). Two sessions of NAME at once (a command started
    // twice, two jobs staging the same file) must not both write into it: their chunks would
    // interleave and the first to finish would rename a mixture into place, verified by the
    // hashes of what it sent. So a session **claims** the partial before writing a byte: an
    // exclusive lock of its open file description (`ferry_ofd_trylock`, F_OFD_SETLK), which the
    // kernel drops when the session closes it, dies or is killed, and which conflicts between
    // two sessions of one process (the daemon's) as between two processes. The protocol:
    // - a session writes only into a partial it holds the claim on, and renames it into place or
    //   closes it only after it is done with the name (the rename comes before the close);
    // - a partial found under the name is either resumed (its journal matches) or removed, and
    //   either only under the claim: one another session holds is never touched (`busy`);
    // - after the lock, the claimer checks the file is still the one under the name: a file it
    //   created itself can only have been removed meanwhile (its link count is 0), by a session
    //   that took it for a leftover in the moment between its create and its lock; a file it
    //   found must still be the one the name gives.
    // Where the filesystem keeps no such locks (the lock fails with ENOLCK, EINVAL or
    // EOPNOTSUPP: some network filesystems without a lock service), a partial is written
    // unclaimed, as before the claims. Ranges of a striped file share their partial on purpose
    // (each its own chunks, docs/STRIPING.md) and take no claim. Another account's partial in a
    // shared directory cannot be opened to be claimed: it is removed as before where the
    // directory lets it be (`foreignMessage` where it does not), and the whole-file commit
    // checks, just before its rename, that the name still gives its own file.

    /// What claiming a partial came to.
    enum Claim { case claimed, busy, moved }

    /// Claims `fd`, open for writing on the partial `name` in `dir` (see "Claims" above).
    /// `fresh`: this session created it just now with O_EXCL.
    static func claim(_ fd: Int32, dir: Int32, name: UnsafePointer<CChar>, fresh: Bool) -> Claim {
        let r = ferry_ofd_trylock(fd)
        if r == -EAGAIN || r == -EACCES { return .busy }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_nlink > 0 else { return .moved }
        if fresh { return .claimed }
        var at = stat()
        guard fstatat(dir, name, &at, AT_SYMLINK_NOFOLLOW) == 0, at.st_dev == st.st_dev, at.st_ino == st.st_ino else { return .moved }
        return .claimed
    }

    static func claim(_ fd: Int32, dir: Int32, name: String, fresh: Bool) -> Claim {
        name.withCString { claim(fd, dir: dir, name: $0, fresh: fresh) }
    }

    /// Creates the partial `name` in `dir` afresh (O_CREAT | O_EXCL, `access` and `mode`) and
    /// claims it. A partial left under the name by a session that ended (the account's own) is
    /// claimed and removed first; another account's (or a hard link, or not a file) is removed
    /// as before the claims. Returns the descriptor, or -errno: -EBUSY when another session
    /// holds the partial now (`busyMessage`), -EEXIST when one is there that cannot be removed
    /// or kept coming back (`existingMessage`), the create's own error otherwise.
    static func createClaimed(dir: Int32, name: UnsafePointer<CChar>, access: Int32, mode: mode_t) -> Int32 {
        for _ in 0..<3 {
            let fd = openat(dir, name, access | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
            if fd >= 0 {
                switch claim(fd, dir: dir, name: name, fresh: true) {
                case .claimed: return fd
                case .busy: Glibc.close(fd); return -EBUSY
                case .moved: Glibc.close(fd); continue
                }
            }
            let e = errno
            guard e == EEXIST else { return -e }
            // O_NONBLOCK: a FIFO planted under the name fails at once (ENXIO), never blocks.
            let old = openat(dir, name, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            if old >= 0 {
                var st = stat()
                if fstat(old, &st) == 0 && isOwn(st) {
                    let c = claim(old, dir: dir, name: name, fresh: false)
                    if c == .claimed && unlinkat(dir, name, 0) != 0 && errno != ENOENT {
                        let e = errno
                        Glibc.close(old)
                        return -e
                    }
                    Glibc.close(old)
                    if c == .busy { return -EBUSY }
                    continue  // removed under the claim (a leftover), or gone meanwhile: create again
                }
                Glibc.close(old)
            } else if errno == ENOENT {
                continue
            }
            // Not the account's own (or not openable by it): removed where the directory allows;
            // where it does not (a sticky directory), -EEXIST (`existingMessage`).
            if unlinkat(dir, name, 0) != 0 && errno != ENOENT { return errno == EPERM || errno == EACCES ? -EEXIST : -errno }
        }
        return -EEXIST
    }

    static func createClaimed(dir: Int32, name: String, access: Int32, mode: mode_t) -> Int32 {
        name.withCString { createClaimed(dir: dir, name: $0, access: access, mode: mode) }
    }

    /// Removes the helper `name` in `dir` unless a live session holds it: 0 when it is gone (or
    /// was never there), -EBUSY when another session's claim holds it (left alone). The
    /// account's own is removed under a claim; another account's as the directory allows.
    static func removeUnclaimed(dir: Int32, name: String) -> Int32 {
        let old = openat(dir, name, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if old >= 0 {
            defer { Glibc.close(old) }
            var st = stat()
            if fstat(old, &st) == 0 && isOwn(st) {
                let c = claim(old, dir: dir, name: name, fresh: false)
                if c == .busy { return -EBUSY }
                if c == .moved { return 0 }
            }
        } else if errno == ENOENT {
            return 0
        }
        return unlinkat(dir, name, 0) == 0 || errno == ENOENT ? 0 : -errno
    }

    /// Whether `fd` is still the file `name` gives in `dir` (just before a rename by name).
    static func stillNamed(_ fd: Int32, dir: Int32, name: UnsafePointer<CChar>) -> Bool {
        var mine = stat(), there = stat()
        return fstat(fd, &mine) == 0 && fstatat(dir, name, &there, AT_SYMLINK_NOFOLLOW) == 0
            && there.st_dev == mine.st_dev && there.st_ino == mine.st_ino
    }

    /// Why a file is refused when its partial no longer has its name at the commit
    /// (`stillNamed` false): nothing of it is put in place.
    static func replacedMessage(_ display: String) -> String {
        "cannot rename into '\(display)': its partial copy was removed or replaced by someone else while it was written; nothing was put in place"
    }

    /// Why a file is refused when `createClaimed` said -EEXIST: another account's helper that
    /// the directory does not let this account remove, or one that kept coming back.
    static func existingMessage(dir: Int32, _ display: String, _ helperName: String) -> (String, TransferError.Code) {
        var st = stat()
        if fstatat(dir, helperName, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_uid != ThreadIdentity.fsuid {
            return (foreignMessage(display, helperName), .permission)
        }
        return ("cannot write '\(display)': '\(helperName)' in its directory was replaced by someone else each time it was made", .path)
    }

    /// Why a file is refused when another session is writing the same destination now.
    static func busyMessage(_ display: String) -> String {
        "cannot write '\(display)': another transfer is writing it now (its partial copy is in use); run again when that one has ended"
    }

    /// True for Ferry's own helper files, which a tree walk skips.
    static func isHelper(_ name: String) -> Bool {
        // Bytes, not Characters: a combining mark must not hide the leading "." or the suffix.
        let b = Array(name.utf8)
        guard b.first == UInt8(ascii: ".") else { return false }
        return b.count > 1 && [partSuffix, journalSuffix, stripePartSuffix].contains { b.reversed().starts(with: $0.utf8.reversed()) }
    }
}

/// Validated components of a relative path in a server's namespace (the daemon's scope checks):
/// no empty, ".", ".." or over-long components, no NUL, checked byte by byte.
public func namespaceComponents(_ path: String) throws -> [Substring] { try Paths.components(of: path) }

/// Whether `components` beneath `root` name an existing directory, opened one component at a
/// time without following a link (O_PATH: nothing read). False when anything on the way is
/// missing, a link or not a directory.
public func isConfinedDirectory(root: String, components: [String]) -> Bool {
    let rootFd = open(root, FERRY_O_PATH | O_DIRECTORY | O_CLOEXEC)
    guard rootFd >= 0 else { return false }
    defer { close(rootFd) }
    guard let fd = try? Paths.openStepwise(beneath: rootFd, components.map { Substring($0) }, flags: FERRY_O_PATH) else { return false }
    defer { close(fd) }
    var st = stat()
    return fstat(fd, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
}

/// Opens the deepest existing part of `components` beneath `root` one component at a time
/// (O_PATH: nothing is read or blocked on), as a transfer would: throws `.path` when a
/// symbolic link on the way leads above the directory it sits in. A missing part ends the
/// walk quietly (it will be created). For checks made before work is queued, such as a
/// daemon's job submit.
///
/// `linkFree`: the first components that must not be symbolic links at all (down to the limit
/// of the token's scope, as the transfer server opens them: `Paths.openStepwise`).
public func probeConfined(root: String, components: [String], linkFree: Int = 0) throws {
    var current = open(root, FERRY_O_PATH | O_DIRECTORY | O_CLOEXEC)
    if current < 0 { throw TransferError.system("cannot open '\(root)'", errno: errno) }
    defer { close(current) }
    for (i, c) in components.enumerated() {
        let next: Int32
        do {
            next = try Paths.open(beneath: current, c, flags: FERRY_O_PATH, noSymlinks: i < linkFree)
        } catch let e as TransferError where e.code == .path {
            throw TransferError(.path, i < linkFree
                ? "'\(c)' is a symbolic link at or above the limit of the token's scope: not followed"
                : "'\(c)' leads outside the directory it is in (a symbolic link)")
        } catch {
            return
        }
        close(current)
        current = next
    }
}

/// Opens `components` beneath the directory `root` one component at a time (a symbolic link
/// never leads above the directory it sits in); the last must be a regular file or a
/// directory and is opened with `flags`, never blocking. The caller closes the descriptor.
/// `linkFree`: as `probeConfined`'s.
public func openConfined(root: String, components: [String], flags: Int32, linkFree: Int = 0) throws -> Int32 {
    let rootFd = open(root, FERRY_O_PATH | O_DIRECTORY | O_CLOEXEC)
    if rootFd < 0 { throw TransferError.system("cannot open '\(root)'", errno: errno) }
    defer { close(rootFd) }
    return try Paths.openStepwise(beneath: rootFd, components.map { Substring($0) }, flags: flags, linkFree: min(linkFree, components.count))
}

/// Opens the regular file or directory `path` beneath `dirFd` without following any symbolic
/// link and without blocking (`Paths.openData`). The caller closes the descriptor.
public func openBeneath(_ dirFd: Int32, _ path: String, flags: Int32) throws -> Int32 {
    try Paths.openData(beneath: dirFd, path, flags: flags | O_NOFOLLOW, noSymlinks: true)
}

/// Runs `body` with the directory that holds the last of `components` beneath `root` (made,
/// with its missing parents, component by component: no link leads above the directory it
/// sits in) and that last name, for work on a name in place (a link to make, one to
/// replace). The directory descriptor is closed afterwards.
public func withConfinedParent<T>(root: String, components: [String], _ body: (_ dirFd: Int32, _ name: String) throws -> T) throws -> T {
    guard let name = components.last else { throw TransferError(.usage, "no name beneath '\(root)'") }
    _ = try Paths.components(of: components.joined(separator: "/"))
    let rootFd = open(root, FERRY_O_PATH | O_DIRECTORY | O_CLOEXEC)
    if rootFd < 0 { throw TransferError.system("cannot open '\(root)'", errno: errno) }
    defer { close(rootFd) }
    let parent = try Paths.makeDirectories(beneath: rootFd, components.dropLast().map { Substring($0) })
    defer { close(parent) }
    return try body(parent, name)
}
