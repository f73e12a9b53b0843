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
            if fd == -EXDEV || fd == -ELOOP {
                throw TransferError(.path, "path '\(path)' resolves outside the root (refused)")
            }
            throw TransferError.system("cannot open '\(path)'", errno: -fd)
        }
        throw TransferError(.io, "cannot open '\(path)': interrupted too often")
    }

    /// Opens `components` one at a time, each beneath the directory opened before it, so that a
    /// symlink on the way can never lead above the component it sits in: a path checked
    /// against a scope by its text stays within that scope on disk. (One openat2 of the whole
    /// path only keeps it beneath `root`.)
    static func openStepwise(beneath root: Int32, _ components: [Substring], flags: Int32) throws -> Int32 {
        var current = try open(beneath: root, "", flags: O_DIRECTORY | FERRY_O_PATH)
        for (i, c) in components.enumerated() {
            let last = i == components.count - 1
            do {
                let next = try open(beneath: current, String(c), flags: last ? flags : O_DIRECTORY | FERRY_O_PATH)
                Glibc.close(current)
                current = next
            } catch {
                Glibc.close(current)
                throw error
            }
        }
        if components.isEmpty {
            let fd = try open(beneath: root, "", flags: flags)
            Glibc.close(current)
            return fd
        }
        return current
    }

    /// Creates each missing directory of `components` beneath `root` and returns an fd of the last.
    static func makeDirectories(beneath root: Int32, _ components: [Substring], mode: mode_t = 0o755) throws -> Int32 {
        var current = try open(beneath: root, "", flags: O_DIRECTORY | FERRY_O_PATH)
        for c in components {
            let name = String(c)
            let r = mkdirat(current, name, mode)
            if r != 0 && errno != EEXIST {
                let e = errno
                Glibc.close(current)
                throw TransferError.system("cannot create directory '\(components.joined(separator: "/"))'", errno: e)
            }
            do {
                let next = try open(beneath: current, name, flags: O_DIRECTORY | FERRY_O_PATH)
                Glibc.close(current)
                current = next
            } catch {
                Glibc.close(current)
                throw error
            }
        }
        return current
    }
}

/// The journal and partial-file names that sit beside a destination file.
enum PartialNames {
    static let partSuffix = ".ferry-part"
    static let journalSuffix = ".ferry-journal"
    static func part(_ name: String) -> String { helper(name, partSuffix) }
    static func journal(_ name: String) -> String { helper(name, journalSuffix) }
    /// Long names would overflow NAME_MAX with the suffix: they get a hashed helper name.
    private static func helper(_ name: String, _ suffix: String) -> String {
        if name.utf8.count + 1 + suffix.utf8.count <= PathLimits.componentBytesMax { return "." + name + suffix }
        return "." + ChunkHash.of(Array(name.utf8)).description + suffix
    }
    /// True for Ferry's own helper files, which a tree walk skips.
    static func isHelper(_ name: String) -> Bool {
        // Bytes, not Characters: a combining mark must not hide the leading "." or the suffix.
        let b = Array(name.utf8)
        guard b.first == UInt8(ascii: ".") else { return false }
        return b.count > 1 && (b.reversed().starts(with: partSuffix.utf8.reversed()) || b.reversed().starts(with: journalSuffix.utf8.reversed()))
    }
}

/// Validated components of a relative path in a server's namespace (the daemon's scope checks):
/// no empty, ".", ".." or over-long components, no NUL, checked byte by byte.
public func namespaceComponents(_ path: String) throws -> [Substring] { try Paths.components(of: path) }
