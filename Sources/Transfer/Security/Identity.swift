import CLiburing
import Glibc

/// A local account the server acts as when it works for a user: its uid, primary gid and
/// supplementary groups, as the user's own shell would have them.
public struct LocalAccount: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    public var uid: uid_t
    public var gid: gid_t
    public var groups: [gid_t]

    public var description: String { "\(name) (uid \(uid))" }

    /// The account `name` from the system's user database (getpwnam_r, getgrouplist).
    public static func lookup(_ name: String) throws -> LocalAccount {
        guard !name.isEmpty, name.utf8.count <= 255, !name.utf8.contains(0) else {
            throw TransferError(.auth, "'\(name)' is not an account name")
        }
        var pw = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buf = [CChar](repeating: 0, count: 16 << 10)
        let r = getpwnam_r(name, &pw, &buf, buf.count, &result)
        guard r == 0, result != nil else {
            throw TransferError(.auth, "no local account '\(name)' on this server")
        }
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        for _ in 0..<4 {
            if getgrouplist(name, pw.pw_gid, &groups, &count) >= 0 { break }
            groups = [gid_t](repeating: 0, count: Int(count) + 16)
            count = Int32(groups.count)
        }
        guard Int(count) <= groups.count else { throw TransferError(.auth, "cannot read the groups of '\(name)'") }
        return LocalAccount(name: name, uid: pw.pw_uid, gid: pw.pw_gid, groups: Array(groups.prefix(Int(count))))
    }
}

/// How a server maps who is asking (a token's user, `NAME@CENTER`, `center:NAME`) to the local
/// account whose rights every filesystem call made for them uses, as GridFTP's grid-mapfile and
/// Globus Connect Server's identity mapping do.
///
/// Rules, first match wins:
/// 1. an export's `account`: everyone using that export acts as that account;
/// 2. an explicit entry for the principal (`[[identity]] user = "bob@wuxi" account = "bob"`,
///    `--map bob@wuxi=bob`);
/// 3. the server's `run_as` / `--run-as`: one account for everyone else;
/// 4. a plain user name (no `@`, not `center:`) maps to the local account of the same name;
/// anything else is refused with a reason. Only rules 1–3, which an operator writes, may
/// name root (uid 0); a user called "root" never becomes root by rule 4.
///
/// A server that does not run as root cannot switch identities and acts with its own rights:
/// `resolve` answers nil (no switch) there.
public struct IdentityMap: Sendable {
    public var entries: [String: String] = [:]
    public var runAs: String?

    public init(entries: [String: String] = [:], runAs: String? = nil) {
        self.entries = entries
        self.runAs = runAs
    }

    /// Whether this process can act as other accounts at all (it runs as root).
    public static var canSwitch: Bool { geteuid() == 0 }

    /// The account to act as for `principal` using `export`; nil when no switch is possible
    /// (the server runs as an ordinary user). Throws `.auth` when the principal is unmapped.
    public func resolve(_ principal: String, export: Export) throws -> LocalAccount? {
        guard IdentityMap.canSwitch else { return nil }
        if let a = export.account { return try LocalAccount.lookup(a) }
        if let a = entries[principal] { return try LocalAccount.lookup(a) }
        if let a = runAs { return try LocalAccount.lookup(a) }
        guard !principal.contains("@"), !principal.hasPrefix("center:") else {
            throw TransferError(.auth, "'\(principal)' has no local account at this center (its operators map one with an [[identity]] entry)")
        }
        let a: LocalAccount
        do { a = try LocalAccount.lookup(principal) } catch {
            throw TransferError(.auth, "'\(principal)' has no local account at this center (its operators map one with an [[identity]] entry)")
        }
        guard a.uid != 0 else { throw TransferError(.auth, "'\(principal)' would act as root: refused (map it explicitly if that is meant)") }
        return a
    }
}

/// The credentials of the calling thread (Linux keeps them per thread): fsuid and fsgid decide
/// every permission check of the filesystem calls it makes, and of the io_uring operations it
/// submits (the kernel takes the submitter's credentials for work it finishes later). Moving
/// fsuid away from 0 also drops the thread's filesystem capabilities (CAP_DAC_OVERRIDE,
/// CAP_CHOWN, CAP_FOWNER, ...), so the kernel's own checks apply exactly as for the user's
/// shell; CAP_SETUID and CAP_SETGID stay, which is what lets `restore` switch back.
/// Threads spawned afterwards inherit these credentials.
public enum ThreadIdentity {
    /// Acts as `account` on this thread: supplementary groups, then fsgid, then fsuid.
    public static func adopt(_ account: LocalAccount) throws {
        let r = account.groups.withUnsafeBufferPointer { ferry_thread_setgroups(UInt($0.count), $0.baseAddress) }
        guard r == 0 else { throw TransferError.system("cannot take the groups of \(account)", errno: -r) }
        _ = ferry_thread_setfsgid(account.gid)
        _ = ferry_thread_setfsuid(account.uid)
        // The calls answer with the previous id; asking with an impossible id reads the current.
        guard ferry_thread_setfsuid(UInt32.max) == account.uid, ferry_thread_setfsgid(UInt32.max) == account.gid else {
            restore()
            throw TransferError(.auth, "cannot act as \(account): the server lacks CAP_SETUID/CAP_SETGID")
        }
    }

    /// Back to the process's own credentials (root's, with no supplementary groups).
    public static func restore() {
        _ = ferry_thread_setfsuid(geteuid())
        _ = ferry_thread_setfsgid(getegid())
        _ = ferry_thread_setgroups(0, nil)
    }

    /// The calling thread's fsuid (for tests and the audit log).
    public static var fsuid: uid_t { ferry_thread_setfsuid(UInt32.max) }
}
