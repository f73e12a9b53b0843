import Glibc

/// Streams the entries of a source, depth first, parents before children, without holding the
/// tree in memory: one open directory per level. Symlinks are reported as links and never
/// followed; Ferry's own partial and journal files are skipped; devices, FIFOs and sockets are
/// reported as `.special` entries (never opened: the receiver lists them as skipped).
final class TreeWalker {
    private struct Level {
        let dir: OpaquePointer  // DIR*
        let fd: Int32
        let path: String
    }

    static let depthMax = 4096

    private let rootFd: Int32
    private let recursive: Bool
    private var stack: [Level] = []
    private var startedRoot = false
    private var nextID: UInt64 = 1
    private(set) var skippedSpecial = 0
    /// Entries left out by the filter rules (an excluded directory counts once).
    private(set) var excluded = 0
    private let filter: FilterRules
    /// Directories this deep below the root are reported, not entered (a listing's depth).
    private let depthMax: Int

    /// `rootFd`: the source (file or directory), opened with O_RDONLY. `filter`: entries it
    /// excludes are never reported, opened or entered. `depth`: nil for a copy (a directory
    /// root needs `recursive`); a listing's depth (0: the root alone) otherwise.
    init(rootFd: Int32, recursive: Bool, filter: FilterRules = FilterRules(), depth: UInt32? = nil) {
        self.rootFd = rootFd
        self.recursive = recursive || depth != nil
        self.filter = filter
        self.depthMax = depth.map { Int(min($0, UInt32(TreeWalker.depthMax + 1))) } ?? TreeWalker.depthMax + 1
    }

    deinit {
        for level in stack { closedir(level.dir) }
    }

    private func entry(path: String, st: stat, kind: EntryKind, target: String = "") -> ManifestEntry {
        defer { nextID += 1 }
        return ManifestEntry(
            id: nextID, kind: kind, path: path, size: kind == .file ? UInt64(st.st_size) : 0,
            mtimeSeconds: Int64(st.st_mtim.tv_sec), mtimeNanoseconds: UInt32(st.st_mtim.tv_nsec),
            mode: kind == .special ? UInt32(st.st_mode) : UInt32(st.st_mode) & 0o7777, linkTarget: target)
    }

    /// The next entry, or nil at the end.
    func next() throws -> ManifestEntry? {
        if !startedRoot {
            startedRoot = true
            var st = stat()
            _ = try sys("cannot stat source") { fstat(rootFd, &st) }
            switch st.st_mode & S_IFMT {
            case S_IFREG:
                return entry(path: "", st: st, kind: .file)
            case S_IFDIR:
                guard recursive else { throw TransferError(.usage, "source is a directory (use -r)") }
                if depthMax == 0 { return entry(path: "", st: st, kind: .directory) }
                try push(fd: try sys("cannot open source directory") { dup(rootFd) }, path: "")
                return entry(path: "", st: st, kind: .directory)
            default:
                throw TransferError(.usage, "source is not a regular file or directory")
            }
        }
        while let top = stack.last {
            errno = 0
            guard let d = readdir(top.dir) else {
                if errno != 0 { throw TransferError.system("cannot list '\(top.path)'", errno: errno) }
                closedir(top.dir)
                stack.removeLast()
                continue
            }
            let name = withUnsafeBytes(of: d.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name == "." || name == ".." || PartialNames.isHelper(name) { continue }
            let path = top.path.isEmpty ? name : top.path + "/" + name
            var st = stat()
            if fstatat(top.fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 {
                if errno == ENOENT { continue }  // vanished while walking
                throw TransferError.system("cannot stat '\(path)'", errno: errno)
            }
            let isDirectory = st.st_mode & S_IFMT == S_IFDIR
            if filter.excludes(path, isDirectory: isDirectory) {
                excluded += 1
                continue
            }
            switch st.st_mode & S_IFMT {
            case S_IFREG:
                return entry(path: path, st: st, kind: .file)
            case S_IFDIR:
                if stack.count >= depthMax { return entry(path: path, st: st, kind: .directory) }
                guard stack.count < TreeWalker.depthMax else {
                    throw TransferError(.path, "'\(path)' is nested deeper than \(TreeWalker.depthMax) levels")
                }
                let fd = openat(top.fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if fd < 0 { throw TransferError.system("cannot open directory '\(path)'", errno: errno) }
                let e = entry(path: path, st: st, kind: .directory)
                try push(fd: fd, path: path)
                return e
            case S_IFLNK:
                var buf = [CChar](repeating: 0, count: PathLimits.symlinkTargetBytesMax + 1)
                let n = readlinkat(top.fd, name, &buf, buf.count - 1)
                if n < 0 { throw TransferError.system("cannot read link '\(path)'", errno: errno) }
                let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                return entry(path: path, st: st, kind: .symlink, target: target)
            default:
                skippedSpecial += 1
                return entry(path: path, st: st, kind: .special)
            }
        }
        return nil
    }

    private func push(fd: Int32, path: String) throws {
        guard let dir = fdopendir(fd) else {
            let e = errno
            Glibc.close(fd)
            throw TransferError.system("cannot list '\(path)'", errno: e)
        }
        stack.append(Level(dir: dir, fd: fd, path: path))
    }
}
