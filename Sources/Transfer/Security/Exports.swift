import CLiburing
import Glibc

/// A directory a server makes available under a name, to whom, and how.
public struct Export: Sendable {
    /// First component of paths in the server's namespace ("/NAME/..."). The empty name is the
    /// single-root mode of `ferry serve --root DIR`: the whole namespace is that directory.
    public var name: String
    public var path: String
    public var readable = true
    public var writable: Bool
    /// Who may use it: user names (from tokens; users of another center's tokens are
    /// NAME@CENTER), "*" for any user with a valid token, "center:NAME" for a peer center
    /// authenticated by its certificate ("center:*": any). Compared byte by byte.
    public var users: [String]
    /// The local account everyone using this export acts as (a project's service account);
    /// nil: each principal's own mapping (`IdentityMap`).
    public var account: String?
    /// Whether setuid and setgid bits sent by a client are applied to files written here.
    /// Off by default: only the permission bits and the sticky bit (0o1777) arrive.
    public var preserveSetid = false

    /// The mode bits a receiver may apply to what it writes into this export.
    public var modeMask: UInt32 { preserveSetid ? 0o7777 : 0o1777 }

    public init(name: String, path: String, writable: Bool, users: [String] = ["*"]) {
        self.name = name
        self.path = path
        self.writable = writable
        self.users = users
    }

    /// Parses `NAME=DIR[:ro|:rw]` (command line).
    public init(parsing text: String) throws {
        guard let eq = text.firstIndex(of: "=") else { throw TransferError(.usage, "--export takes NAME=DIR[:ro|:rw], not '\(text)'") }
        name = String(text[..<eq])
        var dir = String(text[text.index(after: eq)...])
        writable = true
        if dir.hasSuffix(":ro") { writable = false; dir.removeLast(3) } else if dir.hasSuffix(":rw") { dir.removeLast(3) }
        path = dir
        users = ["*"]
        try validate()
    }

    func validate() throws {
        if !name.isEmpty {
            guard (try? Paths.components(of: name))?.count == 1, !name.contains("/") else {
                throw TransferError(.usage, "bad export name '\(name)'")
            }
        }
        guard !path.isEmpty else { throw TransferError(.usage, "export '\(name)' has no directory") }
        if let a = account, a.isEmpty { throw TransferError(.usage, "export '\(name)' has an empty account") }
    }
}

extension Export {
    /// Whether `user` may use this export for reading or (`write`) writing: its access (`ro`,
    /// write-only) and its user list. A user of a token (`byToken`) is admitted by name or by
    /// "*"; a center authenticated by its certificate alone by its name or "center:*". The
    /// transfer server and the daemon (a job's local side, a registration) ask the same
    /// question; a token's scopes are checked beside it, not instead.
    public func admit(_ user: String, byToken: Bool, write: Bool) throws {
        let label = name.isEmpty ? "this server" : "export '\(name)'"
        if write && !writable { throw TransferError(.auth, "\(label) is read-only") }
        if !write && !readable { throw TransferError(.auth, "\(label) is write-only") }
        let allowed = users.contains { u in
            if Array(u.utf8) == Array(user.utf8) { return true }
            if byToken { return u == "*" }
            return u == "center:*" && user.hasPrefix("center:")
        }
        guard allowed else { throw TransferError(.auth, "'\(user)' may not use \(label)") }
    }
}

/// Who is asking: a user (bearer token), a peer center (certificate), or both.
public struct Principal: Sendable {
    /// The token's user, or "center:NAME" for a center without a token.
    public var user: String
    /// The client certificate's center name, if it sent one.
    public var center: String?
    /// The token's scopes; nil for a center authenticated by certificate alone (then the
    /// exports' user lists decide).
    public var scopes: [Scope]?
}

/// The exports of a server, opened once. Resolves a namespace path to an export's directory fd
/// and the components beneath it, after checking the export's users and the token's scopes.
final class ExportTable: @unchecked Sendable {
    struct Opened {
        var export: Export
        var fd: Int32
    }
    let exports: [Opened]

    init(_ list: [Export]) throws {
        guard !list.isEmpty else { throw TransferError(.usage, "the server has no exports") }
        if list.contains(where: { $0.name.isEmpty }) && list.count > 1 {
            throw TransferError(.usage, "a root export (--root) cannot be combined with named exports")
        }
        var seen = Set<String>()
        var opened: [Opened] = []
        for e in list {
            try e.validate()
            guard seen.insert(e.name).inserted else { throw TransferError(.usage, "export '\(e.name)' is defined twice") }
            let fd = open(e.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd < 0 { throw TransferError.system("cannot serve '\(e.path)'", errno: errno) }
            opened.append(Opened(export: e, fd: fd))
        }
        exports = opened
    }

    deinit { for e in exports { close(e.fd) } }

    /// Checks the request and returns the export's directory fd, the path beneath it, and the
    /// export. Every refusal is an `.auth` or `.path` error naming the reason.
    /// `linkFree`: how many components of `beneath` lie at or above the limit of the deepest
    /// scope that allows the request (opened without following links: `Paths.openStepwise`).
    func authorize(_ who: Principal, path: String, write: Bool) throws -> (fd: Int32, beneath: [Substring], export: Export, linkFree: Int) {
        let parts = try Paths.components(of: path)
        let (opened, beneath): (Opened, [Substring])
        if exports.count == 1 && exports[0].export.name.isEmpty {
            (opened, beneath) = (exports[0], parts)
        } else {
            guard let first = parts.first else { throw TransferError(.path, "name an export: /EXPORT/PATH (this server has \(exports.map { $0.export.name }.joined(separator: ", ")))") }
            guard let e = exports.first(where: { Array($0.export.name.utf8) == Array(first.utf8) }) else {
                throw TransferError(.path, "no export named '\(first)'")
            }
            (opened, beneath) = (e, Array(parts.dropFirst()))
        }
        let e = opened.export
        try e.admit(who.user, byToken: who.scopes != nil, write: write)
        var linkFree = 0
        if let scopes = who.scopes {
            guard scopes.allow(parts, write: write) else {
                throw TransferError(.auth, "the token of '\(who.user)' does not allow \(write ? "writing" : "reading") '/\(parts.joined(separator: "/"))' (scopes: \(scopes.map(\.description).joined(separator: " ")))")
            }
            let depth = scopes.linkFreeDepth(parts, write: write)
            linkFree = min(beneath.count, max(0, depth - (parts.count - beneath.count)))
        }
        return (opened.fd, beneath, e, linkFree)
    }
}
