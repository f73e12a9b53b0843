import CLiburing
import Glibc

/// Streams the entries of a source, depth first, parents before children, without holding the
/// tree in memory: one open directory per level. Symlinks are reported as links and never
/// followed; Ferry's own partial and journal files are skipped; devices, FIFOs and sockets are
/// reported as `.special` entries (never opened: the receiver lists them as skipped).
/// What a Sender streams its manifest from: a whole tree, or a selection of it.
protocol EntrySource: AnyObject {
    func next() throws -> ManifestEntry?
}

final class TreeWalker: EntrySource {
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
        return ManifestEntry(id: nextID, path: path, stat: st, kind: kind, target: target)
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

/// The entries of a selection (striping's files parts, docs/STRIPING.md): the root directory,
/// then for each selected path its ancestor directories (each once, parents first) and the path
/// itself, in the order given. Every directory is opened component by component beneath the
/// root without following a symbolic link, and each selected entry is stat'ed beneath its
/// directory without following one either: a selection can name nothing outside the root.
/// Every path must exist when the session starts (checked before the first entry; a list that
/// names what is not there is refused whole, naming the first few, as a copy that would
/// silently leave them out is not what was asked); one that vanishes while the session walks
/// is left out. A directory is reported, not entered; Ferry's own helper names are refused.
final class SelectionWalker: EntrySource {
    private let rootFd: Int32
    private let paths: [[Substring]]
    private var at = 0
    private var startedRoot = false
    /// Directories already reported, by their bytes (Swift's String equality would take an
    /// NFC and an NFD spelling, two names on disk, for one).
    private var emitted = Set<[UInt8]>()
    private var pending: [ManifestEntry] = []
    private var nextID: UInt64 = 1

    /// `rootFd`: the source directory, opened O_RDONLY. Every path is checked here (relative,
    /// normalised, no `.` or `..`), before anything is read.
    init(rootFd: Int32, selection: [String]) throws {
        guard selection.count <= Selection.pathsMax else {
            throw TransferError(.usage, "a selection of \(selection.count) paths: at most \(Selection.pathsMax)")
        }
        self.rootFd = rootFd
        var seen = Set<[UInt8]>()
        var list: [[Substring]] = []
        for p in selection {
            let parts = try Selection.components(p)
            if seen.insert(Array(p.utf8)).inserted { list.append(parts) }
        }
        paths = list
        var missing: [String] = []
        for parts in list where !SelectionWalker.exists(rootFd, parts) {
            missing.append(parts.joined(separator: "/"))
        }
        if !missing.isEmpty {
            let shown = missing.prefix(5).map { "'\($0)'" }.joined(separator: ", ") + (missing.count > 5 ? " and \(missing.count - 5) more" : "")
            throw TransferError(.notFound, "\(missing.count) listed path\(missing.count == 1 ? " does" : "s do") not exist beneath the source: \(shown); nothing was copied")
        }
    }

    /// True when `parts` names an entry beneath `root`, reached through directories only.
    private static func exists(_ root: Int32, _ parts: [Substring]) -> Bool {
        var dir = dup(root)
        guard dir >= 0 else { return false }
        defer { Glibc.close(dir) }
        for (i, p) in parts.enumerated() {
            if i == parts.count - 1 {
                var st = stat()
                return fstatat(dir, String(p), &st, AT_SYMLINK_NOFOLLOW) == 0
            }
            let next = openat(dir, String(p), FERRY_O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if next < 0 { return false }
            Glibc.close(dir)
            dir = next
        }
        return false
    }

    /// An entry without its id: ids are given in the order entries leave `next`.
    private func entry(_ path: String, _ st: stat, _ kind: EntryKind, target: String = "") -> ManifestEntry {
        ManifestEntry(id: 0, path: path, stat: st, kind: kind, target: target)
    }

    func next() throws -> ManifestEntry? {
        if !startedRoot {
            startedRoot = true
            var st = stat()
            _ = try sys("cannot stat source") { fstat(rootFd, &st) }
            guard st.st_mode & S_IFMT == S_IFDIR else { throw TransferError(.usage, "a selection is of a directory's entries; the source is not a directory") }
            return numbered(entry("", st, .directory))
        }
        while pending.isEmpty && at < paths.count {
            let parts = paths[at]
            at += 1
            try expand(parts)
        }
        return pending.isEmpty ? nil : numbered(pending.removeFirst())
    }

    private func numbered(_ e: ManifestEntry) -> ManifestEntry {
        var e = e
        e.id = nextID
        nextID += 1
        return e
    }

    /// Queues the entries of one selected path: missing ancestors, then the path; nothing of
    /// it when it vanished.
    private func expand(_ parts: [Substring]) throws {
        var dir = try sys("cannot open source directory") { dup(rootFd) }
        defer { Glibc.close(dir) }
        var mine: [ManifestEntry] = []
        var newDirs: [[UInt8]] = []
        defer {
            pending += mine
            emitted.formUnion(newDirs)
        }
        for i in 0..<parts.count {
            let name = String(parts[i])
            let path = parts[0...i].joined(separator: "/")
            var st = stat()
            if fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0 {
                if errno == ENOENT || errno == ENOTDIR { mine = []; newDirs = []; return }  // gone since it was planned
                throw TransferError.system("cannot stat '\(path)'", errno: errno)
            }
            let last = i == parts.count - 1
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                if !emitted.contains(Array(path.utf8)) && !newDirs.contains(Array(path.utf8)) {
                    newDirs.append(Array(path.utf8))
                    mine.append(entry(path, st, .directory))
                }
                if last { return }
                let sub = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if sub < 0 { throw TransferError.system("cannot open directory '\(path)'", errno: errno) }
                Glibc.close(dir)
                dir = sub
            case S_IFREG where last:
                mine.append(entry(path, st, .file))
            case S_IFLNK where last:
                var buf = [CChar](repeating: 0, count: PathLimits.symlinkTargetBytesMax + 1)
                let n = readlinkat(dir, name, &buf, buf.count - 1)
                if n < 0 { throw TransferError.system("cannot read link '\(path)'", errno: errno) }
                mine.append(entry(path, st, .symlink, target: String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)))
            case S_IFREG, S_IFLNK:
                // A file or a link where the selection needs a directory: the tree changed.
                throw TransferError(.path, "'\(path)' is \(Paths.kindName(st.st_mode)), not a directory: the selection does not match the source")
            default:
                if last { mine.append(entry(path, st, .special)) } else {
                    throw TransferError(.path, "'\(path)' is \(Paths.kindName(st.st_mode)), not a directory")
                }
            }
        }
    }
}

extension ManifestEntry {
    /// An entry as a walker reports it from its `stat`: a file's size (others 0), the
    /// modification time, the permission bits (a special file's type bits too).
    init(id: UInt64, path: String, stat st: stat, kind: EntryKind, target: String = "") {
        self.init(id: id, kind: kind, path: path, size: kind == .file ? UInt64(st.st_size) : 0,
                  mtimeSeconds: Int64(st.st_mtim.tv_sec), mtimeNanoseconds: UInt32(st.st_mtim.tv_nsec),
                  mode: kind == .special ? UInt32(st.st_mode) : UInt32(st.st_mode) & 0o7777, linkTarget: target)
    }
}
