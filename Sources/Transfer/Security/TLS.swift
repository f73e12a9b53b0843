import COpenSSL
import Glibc

/// Where a side's TLS identity lives: its certificate and key (PEM, Ed25519, issued by the
/// federation CA with `ferry ca issue`) and the CA certificate it trusts.
public struct TLSIdentity: Sendable {
    public var certificate: String?
    public var key: String?
    public var ca: String

    public init(certificate: String?, key: String?, ca: String) {
        self.certificate = certificate
        self.key = key
        self.ca = ca
    }
}

/// A TLS 1.3 context (OpenSSL `SSL_CTX`), made once per process side and shared by every
/// connection. `@unchecked Sendable`: SSL_CTX is thread-safe once configured.
public final class TLSContext: @unchecked Sendable {
    let raw: OpaquePointer
    let isServer: Bool

    public init(server: Bool, identity: TLSIdentity) throws {
        var err = [CChar](repeating: 0, count: 512)
        guard let c = ferry_tls_ctx_new(server ? 1 : 0, identity.certificate, identity.key, identity.ca, &err, err.count) else {
            throw TransferError(.auth, String(cString: err))
        }
        raw = c
        isServer = server
    }

    deinit { ferry_tls_ctx_free(raw) }

    /// Runs the handshake on `fd`. A client names the center (or address) the server's
    /// certificate must carry.
    ///
    /// `sessionKey` (a client's, nil: none) turns on TLS 1.3 resumption for this connection:
    /// a ticket kept under that key from an earlier session with this context is offered, and
    /// the tickets the server sends are kept under it (`shim.c` has the cache: per context, so
    /// per set of credentials; bounded; each ticket offered once; five minutes at most). The
    /// key must name the peer exactly (`sessionKey(expected:server:)`): the expected center
    /// and the address dialled. A resumed session's certificate (the one verified when the
    /// session began, carried in the ticket) is checked again against `expected` and its
    /// dates. A server that restarted no longer knows its old tickets and answers with a full
    /// handshake: nothing fails.
    func handshake(fd: Int32, expected: String?, sessionKey: String? = nil, timeoutMs: Int) throws -> TLSChannel {
        var err = [CChar](repeating: 0, count: 512)
        guard let t = ferry_tls_handshake(raw, fd, isServer ? 1 : 0, expected, sessionKey, Int32(clamping: timeoutMs), &err, err.count) else {
            var message = String(cString: err)
            // Say whom the certificate failed to name: the center (or host) this side expected.
            if let expected, message.hasSuffix("hostname mismatch") || message.hasSuffix("IP address mismatch") {
                message += ": the certificate does not name '\(expected)' (the center or host this connection must reach)"
            }
            // A connection that ended or stalled before the handshake did (a node killed or
            // restarting, a network cut) is the link's trouble, worth another try; a refusal
            // (a certificate, an alert) is not.
            if message.hasSuffix(": the peer closed the connection") || message.hasPrefix("TLS handshake timed out") || message.hasPrefix("TLS handshake: ") {
                throw TransferError(.io, message, resumable: true)
            }
            throw TransferError(.auth, message)
        }
        return TLSChannel(raw: t)
    }

    /// The resumption key of a client's connection to `server` that must prove to be `expected`.
    static func sessionKey(expected: String, server: HostPort) -> String { "\(expected)@\(server)" }

    /// Handshakes this context completed so far: full ones (certificates sent and verified)
    /// and resumed ones (a ticket of an earlier session).
    public var handshakes: (full: Int, resumed: Int) {
        var full: Int64 = 0, resumed: Int64 = 0
        ferry_tls_ctx_counts(raw, &full, &resumed)
        return (Int(full), Int(resumed))
    }

    /// Drops every ticket this (client) context keeps: the next connection to each peer runs
    /// a full handshake.
    public func forgetSessions() { ferry_tls_ctx_forget(raw) }
}

/// One TLS session over a control connection. Reads and writes may run on different threads
/// at once (the C side serialises the OpenSSL calls and waits for the socket outside its lock).
/// `@unchecked Sendable`: every call goes through the C side's mutex.
final class TLSChannel: @unchecked Sendable {
    private let raw: OpaquePointer

    init(raw: OpaquePointer) { self.raw = raw }
    deinit { ferry_tls_free(raw) }

    /// Reads up to `length` bytes; 0 = the peer closed (with or without close_notify); throws
    /// on error or timeout: `auth` when the peer sent an alert about certificates or access
    /// (its verdict on who we are, not a broken link), `io` (resumable) otherwise.
    func read(_ p: UnsafeMutableRawPointer, _ length: Int, timeoutNs: Int64, peer: String) throws -> Int {
        var err = [CChar](repeating: 0, count: 256)
        let ms = Int32(clamping: timeoutNs / 1_000_000)
        let n = ferry_tls_read(raw, p, length, ms, &err, err.count)
        if n == -2 { throw TransferError(.timeout, "\(peer) sent nothing for \(timeoutNs / 1_000_000_000) s", resumable: true) }
        if n == -3 { throw TransferError(.auth, "\(peer) refused the session: \(String(cString: err))") }
        if n < 0 { throw TransferError(.io, "receive from \(peer): \(String(cString: err))", resumable: true) }
        return n
    }

    func write(_ p: UnsafeRawPointer, _ length: Int, peer: String) throws {
        var err = [CChar](repeating: 0, count: 256)
        let r = ferry_tls_write(raw, p, length, 120_000, &err, err.count)
        if r == -2 { throw TransferError(.timeout, "\(peer) accepts no data for 120 s", resumable: true) }
        if r < 0 { throw TransferError(.io, "send to \(peer): \(String(cString: err))", resumable: true) }
    }

    /// Whether a read met the peer's close_notify: the stream ended cleanly, not cut. A read
    /// returns 0 for both (Ferry's frames say themselves whether a message is whole).
    var closedCleanly: Bool { ferry_tls_closed_cleanly(raw) == 1 }

    /// Sends close_notify (waits up to a second for room on the socket). SIGPIPE must be
    /// ignored, as every Ferry process does.
    @discardableResult func shutdown() -> Bool { ferry_tls_shutdown(raw, 1000) == 1 }

    /// RFC 8446 exported keying material, unique to this TLS session.
    func export(label: String, bytes: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: bytes)
        let ok = ferry_tls_export(raw, label, &out, bytes)
        precondition(ok == 1, "SSL_export_keying_material failed")
        return out
    }

    /// Whether the handshake resumed an earlier session (a ticket) instead of a full one.
    var resumed: Bool { ferry_tls_resumed(raw) == 1 }

    /// When the peer's verified certificate expires (Unix seconds), nil when it sent none.
    var peerNotAfter: Int64? {
        var t: Int64 = 0
        return ferry_tls_peer_not_after(raw, &t) == 1 ? t : nil
    }

    /// The common name of the peer's verified certificate, nil when it sent none.
    var peerCommonName: String? {
        var buf = [CChar](repeating: 0, count: 256)
        return ferry_tls_peer_cn(raw, &buf, buf.count) == 1 ? String(cString: buf) : nil
    }
}

/// The federation CA: `ferry ca init` and `ferry ca issue`.
public enum CertificateAuthority {
    public static func initialize(name: String, days: Int, certificate: String, key: String) throws {
        var err = [CChar](repeating: 0, count: 512)
        guard ferry_ca_init(name, Int32(days), certificate, key, &err, err.count) == 1 else { throw TransferError(.io, String(cString: err)) }
    }

    /// Issues a center certificate (server and client use). `backdateSeconds` moves the
    /// validity window into the past (operators: 0; tests: an expired certificate).
    public static func issue(caCertificate: String, caKey: String, center: String, hosts: [String], days: Int, backdateSeconds: Int = 0, certificate: String, key: String) throws {
        try CenterName.validate(center)
        var err = [CChar](repeating: 0, count: 512)
        guard ferry_ca_issue(caCertificate, caKey, center, hosts.joined(separator: ","), Int32(days), backdateSeconds, certificate, key, &err, err.count) == 1 else {
            throw TransferError(.io, String(cString: err))
        }
    }

    /// Renews the CA certificate in place: same name and key, valid from now for `days`. The
    /// certificates it issued verify against the renewed one; the previous file is kept as
    /// `CERT.prev`. Written beside it and renamed, so a reader never sees half a file.
    public static func renew(caCertificate: String, caKey: String, days: Int) throws {
        var err = [CChar](repeating: 0, count: 512)
        let next = caCertificate + ".new"
        unlink(next)  // written anew, never through whatever a leftover name points to
        guard ferry_ca_renew(caCertificate, caKey, Int32(days), next, &err, err.count) == 1 else {
            unlink(next)
            throw TransferError(.io, String(cString: err))
        }
        try replaceKeepingPrevious([(next, caCertificate)])
    }

    /// Re-issues the center certificate at `certificate` with its names (CN and every
    /// subjectAltName), valid from now for `days`; with `newKey` a new key replaces `key`,
    /// else the key stays (user tokens it signed stay valid). The previous files are kept as
    /// `.prev`; the new ones are written beside and renamed into place (the certificate last),
    /// so a server reloading on SIGHUP never reads half a file or a key without its
    /// certificate.
    public static func reissue(caCertificate: String, caKey: String, certificate: String, key: String, days: Int, newKey: Bool) throws {
        var err = [CChar](repeating: 0, count: 512)
        let nextCert = certificate + ".new", nextKey = key + ".new"
        unlink(nextCert)  // written anew, never through whatever a leftover name points to
        unlink(nextKey)
        let ok = ferry_ca_reissue(caCertificate, caKey, certificate, newKey ? nil : key, Int32(days), nextCert, nextKey, &err, err.count) == 1
        guard ok else {
            unlink(nextCert)
            unlink(nextKey)
            throw TransferError(.io, String(cString: err))
        }
        try replaceKeepingPrevious(newKey ? [(nextKey, key), (nextCert, certificate)] : [(nextCert, certificate)])
    }

    /// Each (new, path): `new` takes `path`'s owner, group and mode (a key readable by the
    /// service's group stays so), `path` becomes `path.prev` (a hard link: the old file stays
    /// where it was until the rename), then `new` is renamed onto `path`.
    private static func replaceKeepingPrevious(_ moves: [(String, String)]) throws {
        for (next, path) in moves {
            var st = stat()
            guard stat(path, &st) == 0 else { throw TransferError(.io, "cannot read '\(path)': \(String(cString: strerror(errno)))") }
            guard chown(next, st.st_uid, st.st_gid) == 0 || geteuid() != 0, chmod(next, st.st_mode & 0o7777) == 0 else {
                throw TransferError(.io, "cannot give '\(next)' the owner and mode of '\(path)': \(String(cString: strerror(errno)))")
            }
            unlink(path + ".prev")
            guard link(path, path + ".prev") == 0 else { throw TransferError(.io, "cannot keep '\(path)' as '\(path).prev': \(String(cString: strerror(errno)))") }
        }
        for (next, path) in moves {
            guard rename(next, path) == 0 else { throw TransferError(.io, "cannot rename '\(next)' to '\(path)': \(String(cString: strerror(errno)))") }
        }
    }
}


/// Small crypto helpers over OpenSSL.
enum Crypto {
    static func hmacSHA256(key: [UInt8], _ message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        let ok = ferry_hmac_sha256(key, key.count, message, message.count, &out)
        precondition(ok == 1, "HMAC failed")
        return out
    }

    static func sha256(_ message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        _ = ferry_sha256(message, message.count, &out)
        return out
    }
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ (secrets:
/// join proofs, the web console's CSRF tokens). Empty is never equal.
public func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count, !a.isEmpty else { return false }
    return a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in ferry_ct_memcmp(pa.baseAddress, pb.baseAddress, a.count) == 0 } }
}

/// Cryptographically strong random bytes (OpenSSL RAND_bytes).
public func randomBytes(_ n: Int) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: n)
    let ok = b.withUnsafeMutableBytes { ferry_random_bytes($0.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(n)) }
    precondition(ok == 1, "RAND_bytes failed")
    return b
}
