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
        if path.isEmpty { return [] }
        if path.utf8.count > PathLimits.pathBytesMax {
            throw TransferError(.path, "path too long (\(path.utf8.count) bytes, at most \(PathLimits.pathBytesMax))")
        }
        if path.hasPrefix("/") { throw TransferError(.path, "absolute path refused: \(path)") }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        for p in parts {
            if p.isEmpty || p == "." || p == ".." {
                throw TransferError(.path, "path '\(path)' leaves its root or is not normalised (component '\(p)')")
            }
            if p.utf8.count > PathLimits.componentBytesMax { throw TransferError(.path, "name too long in '\(path)'") }
            if p.utf8.contains(0) { throw TransferError(.path, "NUL byte in path") }
        }
        return parts
    }

    /// Normalises a path typed by a user for a server (URL part): strips leading slashes,
    /// refuses `..`. Returns the relative path and whether it ended in '/'.
    static func remoteRelative(_ urlPath: String) throws -> (path: String, trailingSlash: Bool) {
        let trailing = urlPath.hasSuffix("/")
        // The URL's path starts with the one '/' that separates it from HOST:PORT; a second
        // one (ferry://h:p//etc/x) asks for an absolute path, which a server never serves.
        if urlPath.hasPrefix("//") && urlPath.count > 2 {
            throw TransferError(.path, "absolute path '\(urlPath.dropFirst())' refused: paths are relative to the server's root")
        }
        var parts: [Substring] = []
        for p in urlPath.split(separator: "/", omittingEmptySubsequences: true) {
            if p == "." { continue }
            if p == ".." { throw TransferError(.path, "path '\(urlPath)' leaves the server's root ('..' refused)") }
            parts.append(p)
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
        name.hasPrefix(".") && (name.hasSuffix(partSuffix) || name.hasSuffix(journalSuffix))
    }
}
