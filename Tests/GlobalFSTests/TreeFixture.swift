import Foundation
import Glibc
import GlobalFS

/// A real directory tree the tests build, change and compare with the catalog.
final class Tree {
    let root: String

    /// Whether `root` is a tmpfs this tree mounted (unmounted when it goes).
    private var mounted = false

    init() throws {
        var t = Array("/tmp/ferry-gfs-XXXXXX".utf8CString)
        guard let p = mkdtemp(&t) else { throw CatalogError(.io, "mkdtemp failed") }
        root = String(cString: p)
    }

    /// A tree on a tmpfs of its own without an inode limit (a million entries in one
    /// directory: /tmp's ext4 takes minutes to create them, /dev/shm has ~3 M inodes for
    /// everything). Needs root, as the test command runs.
    convenience init(tmpfsMiB: Int) throws {
        try self.init()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/mount")
        p.arguments = ["-t", "tmpfs", "-o", "size=\(tmpfsMiB)m,nr_inodes=0,mode=0755", "ferry-gfs-test", root]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw CatalogError(.io, "mount -t tmpfs on \(root) failed") }
        mounted = true
    }

    deinit {
        if mounted {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/umount")
            p.arguments = [root]
            try? p.run()
            p.waitUntilExit()
            rmdir(root)
        } else {
            _ = try? FileManager.default.removeItem(atPath: root)
        }
    }

    func full(_ path: String) -> String { root + "/" + path }

    /// Creates a file of `size` bytes (content depends on `seed`), parents included.
    func file(_ path: String, size: Int, seed: UInt8 = 7, mtime: Int? = nil) throws {
        try mkdirs(parent(path))
        let fd = open(full(path), O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw CatalogError(.io, "create \(path): \(errno)") }
        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, size) }
        close(fd)
        if let mtime { setMtime(path, mtime) }
    }

    func bytes(_ path: String) -> [UInt8] { Array(FileManager.default.contents(atPath: full(path)) ?? Data()) }

    func dir(_ path: String) throws { try mkdirs(path) }

    func symlink(_ path: String, to target: String) throws {
        try mkdirs(parent(path))
        guard Glibc.symlink(target, full(path)) == 0 else { throw CatalogError(.io, "symlink \(path): \(errno)") }
    }

    func fifo(_ path: String) { _ = mkfifo(full(path), 0o644) }

    func remove(_ path: String) throws { try FileManager.default.removeItem(atPath: full(path)) }

    func setMtime(_ path: String, _ seconds: Int) {
        let t = timespec(tv_sec: seconds, tv_nsec: 0)
        var times = [t, t]
        _ = utimensat(AT_FDCWD, full(path), &times, AT_SYMLINK_NOFOLLOW)
    }

    private func parent(_ path: String) -> String {
        guard let i = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return "" }
        return String(Substring(path.utf8[..<i]))
    }

    private func mkdirs(_ path: String) throws {
        if path.isEmpty { return }
        var cur = root
        for c in path.utf8.split(separator: UInt8(ascii: "/")) {
            cur += "/" + String(Substring(c))
            if mkdir(cur, 0o755) != 0 && errno != EEXIST { throw CatalogError(.io, "mkdir \(cur): \(errno)") }
        }
    }

    /// Everything under the root as the catalog should hold it: (path bytes, kind, size,
    /// link target), sorted by path bytes. Devices, FIFOs and sockets left out.
    func snapshot() -> [Snap] {
        var out: [Snap] = []
        func walk(_ rel: String) {
            guard let d = opendir(rel.isEmpty ? root : full(rel)) else { return }
            defer { closedir(d) }
            while let e = readdir(d) {
                let name = withUnsafePointer(to: &e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
                if name == "." || name == ".." { continue }
                let p = rel.isEmpty ? name : rel + "/" + name
                var st = stat()
                lstat(full(p), &st)
                switch st.st_mode & S_IFMT {
                case S_IFREG: out.append(Snap(path: Array(p.utf8), kind: .file, size: Int64(st.st_size), target: nil))
                case S_IFDIR:
                    out.append(Snap(path: Array(p.utf8), kind: .directory, size: 0, target: nil))
                    walk(p)
                case S_IFLNK:
                    let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: full(p))) ?? "?"
                    out.append(Snap(path: Array(p.utf8), kind: .symlink, size: Int64(st.st_size), target: target))
                default: break
                }
            }
        }
        walk("")
        return out.sorted { $0.path.lexicographicallyPrecedes($1.path) }
    }
}

struct Snap: Equatable, CustomStringConvertible {
    var path: [UInt8]
    var kind: EntryKind
    var size: Int64
    var target: String?
    var description: String { "\(String(decoding: path, as: UTF8.self)) \(kind.rawValue) \(size)\(target.map { " -> " + $0 } ?? "")" }

    init(path: [UInt8], kind: EntryKind, size: Int64, target: String?) {
        self.path = path; self.kind = kind; self.size = size; self.target = target
    }

    init(_ e: Entry) { self.init(path: Array(e.path.utf8), kind: e.kind, size: e.size, target: e.target) }
}

/// Every entry of a dataset, by `find` in pages, as snapshots sorted by path bytes.
func catalogSnapshot(_ cat: Catalog, _ dataset: Int64) throws -> [Snap] {
    var all: [Entry] = []
    var after: EntryKey?
    for _ in 0..<10_000 {
        let page = try cat.find(dataset: dataset, after: after, limit: 5000, as: .operator)
        if page.isEmpty { break }
        all += page
        after = EntryKey(page.last!)
    }
    return all.map(Snap.init).sorted { $0.path.lexicographicallyPrecedes($1.path) }
}
