import COpenSSL
import Glibc

/// What a token lets its holder do beneath one path of the server's namespace.
public struct Scope: Sendable, Equatable, CustomStringConvertible {
    public var read: Bool
    public var write: Bool
    /// Components of the path, beneath which the scope holds ("/" = everything).
    public var path: String

    /// Parses `read:/PATH`, `write:/PATH` or `rw:/PATH`.
    public init(parsing text: String) throws {
        guard let colon = text.firstIndex(of: ":") else { throw TransferError(.usage, "scope '\(text)' must look like read:/PATH or write:/PATH") }
        switch text[..<colon] {
        case "read": (read, write) = (true, false)
        case "write": (read, write) = (false, true)
        case "rw", "readwrite": (read, write) = (true, true)
        default: throw TransferError(.usage, "scope '\(text)': the access must be read, write or rw")
        }
        let p = String(text[text.index(after: colon)...])
        guard p.hasPrefix("/") else { throw TransferError(.usage, "scope '\(text)': the path must start with '/'") }
        var rel = Substring(p)
        while rel.hasPrefix("/") { rel = rel.dropFirst() }
        while rel.hasSuffix("/") { rel = rel.dropLast() }
        path = "/" + (try Paths.components(of: String(rel))).joined(separator: "/")
    }

    init(read: Bool, write: Bool, path: String) {
        self.read = read
        self.write = write
        self.path = path
    }


    /// True when `components` (a path in the server's namespace) lies at or beneath this scope.
    func covers(_ components: [Substring]) -> Bool {
        let mine = path.split(separator: "/", omittingEmptySubsequences: true)
        guard mine.count <= components.count else { return false }
        return zip(mine, components).allSatisfy { Array($0.utf8) == Array($1.utf8) }
    }

    public var description: String { (read && write ? "rw" : read ? "read" : "write") + ":" + path }
}

extension Array where Element == Scope {
    /// True when one of these scopes grants reading (or writing) at `components`, a path of
    /// the server's namespace. The one rule for transfers (exports) and jobs (the daemon's API).
    public func allow(_ components: [Substring], write: Bool) -> Bool {
        contains { (write ? $0.write : $0.read) && $0.covers(components) }
    }

    /// How many of `components` (a namespace path) lie at or above the limit of the deepest
    /// scope that allows the request: opened without following links, so that the scope
    /// checked by its text holds on disk (a link at its limit could lead beside it).
    public func linkFreeDepth(_ components: [Substring], write: Bool) -> Int {
        filter { (write ? $0.write : $0.read) && $0.covers(components) }
            .map { $0.path.split(separator: "/", omittingEmptySubsequences: true).count }.max() ?? 0
    }
}

/// A user's bearer token, issued and signed (Ed25519) by a center:
/// `ferry1.BASE64URL(payload).BASE64URL(signature)`. It is verified with the issuing center's
/// public key alone (no database), checked for expiry and against a revocation list of ids.
public struct UserToken: Sendable, Equatable {
    public var issuer: String
    public var user: String
    public var scopes: [Scope]
    public var issuedAt: Int64
    public var expiresAt: Int64
    /// 16 random bytes; revocation lists name tokens by this id (hex).
    public var id: [UInt8]

    static let prefix = "ferry1."
    static let domain = Array("ferry-token-v1\0".utf8)
    static let scopesMax = 64

    public init(issuer: String, user: String, scopes: [Scope], issuedAt: Int64, expiresAt: Int64, id: [UInt8] = randomBytes(16)) {
        self.issuer = issuer
        self.user = user
        self.scopes = scopes
        self.issuedAt = issuedAt
        self.expiresAt = expiresAt
        self.id = id
    }

    /// User names: not empty, no control characters, and not the forms reserved for centers
    /// ("center:NAME") and wildcards ("*"), which export user lists give a meaning.
    public static func isValidUser(_ u: String) -> Bool {
        let b = Array(u.utf8)
        return (1...255).contains(b.count) && !u.hasPrefix("center:") && u != "*" && !u.contains("@") && !b.contains { $0 < 0x20 || $0 == 0x7F }
    }

    public var idHex: String { id.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }

    func payload() -> [UInt8] {
        var w = ByteWriter()
        w.u8(1)
        w.string(issuer)
        w.string(user)
        w.i64(issuedAt)
        w.i64(expiresAt)
        w.raw(id)
        w.u16(UInt16(scopes.count))
        for s in scopes {
            w.u8((s.read ? 1 : 0) | (s.write ? 2 : 0))
            w.string(s.path)
        }
        return w.bytes
    }

    static func decodePayload(_ b: [UInt8]) throws -> UserToken {
        var r = ByteReader(b)
        guard try r.u8() == 1 else { throw TransferError(.auth, "token version not supported") }
        let issuer = try r.string(maxBytes: 255)
        let user = try r.string(maxBytes: 255)
        let iat = try r.i64()
        let exp = try r.i64()
        let id = try r.raw(16)
        let n = Int(try r.u16())
        guard n <= scopesMax else { throw TransferError(.auth, "token has too many scopes") }
        var scopes: [Scope] = []
        for _ in 0..<n {
            let access = try r.u8()
            guard (1...3).contains(access) else { throw TransferError(.auth, "bad scope in token") }
            scopes.append(Scope(read: access & 1 != 0, write: access & 2 != 0, path: try r.string(maxBytes: PathLimits.pathBytesMax)))
        }
        try r.expectEnd()
        return UserToken(issuer: issuer, user: user, scopes: scopes, issuedAt: iat, expiresAt: exp, id: id)
    }

    /// Signs with the center's Ed25519 key (raw 32 bytes).
    public func signed(privateKey: [UInt8]) -> String {
        let p = payload()
        var sig = [UInt8](repeating: 0, count: 64)
        let msg = UserToken.domain + p
        let ok = ferry_ed25519_sign(privateKey, msg, msg.count, &sig)
        precondition(ok == 1, "Ed25519 signing failed")
        return UserToken.prefix + Base64URL.encode(p) + "." + Base64URL.encode(sig)
    }

    /// Decodes a token without checking its signature (for display and revocation only).
    public static func decodeUnverified(_ text: String) throws -> UserToken { try unverified(text).0 }

    /// Splits and decodes a token without checking the signature (callers must verify).
    static func unverified(_ text: String) throws -> (UserToken, payload: [UInt8], signature: [UInt8]) {
        let t = text.hasSuffix("\n") ? String(text.dropLast()) : text
        guard t.utf8.count <= Wire.tokenBytesMax, t.hasPrefix(prefix) else { throw TransferError(.auth, "not a Ferry token") }
        let parts = t.dropFirst(prefix.count).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, let p = Base64URL.decode(String(parts[0])), let s = Base64URL.decode(String(parts[1])), s.count == 64 else {
            throw TransferError(.auth, "malformed token")
        }
        do {
            return (try decodePayload(p), p, s)
        } catch let e as TransferError where e.code == .protocolViolation {
            throw TransferError(.auth, "malformed token (\(e.message))")
        }
    }
}

/// Checks tokens: signature by a trusted issuer, validity window, revocation list.
/// `@unchecked Sendable`: the revocation cache is guarded by `lock`.
public final class TokenVerifier: @unchecked Sendable {
    /// Issuer center name → its Ed25519 public key. (Guarded by `lock`; `trust` adds the key
    /// of a renewed certificate beside the old one.)
    private var keys: [String: [[UInt8]]]
    /// The first key of each issuer (tests).
    var issuers: [String: [UInt8]] { lock.withLock { keys.compactMapValues(\.first) } }
    let revocationsPath: String?
    private let lock = Lock()
    private var revoked: Set<String> = []
    private var revocationsStamp: [Int64]?
    /// Seconds of clock difference tolerated between centers.
    let skewSeconds: Int64 = 300

    public init(issuers: [String: [UInt8]], revocationsPath: String?) {
        self.keys = issuers.mapValues { [$0] }
        self.revocationsPath = revocationsPath
    }

    /// Trusts the centers whose certificates are given (their CN names them).
    public convenience init(issuerCertificates: [String], revocationsPath: String?) throws {
        var map: [String: [UInt8]] = [:]
        for path in issuerCertificates {
            let info = try CertificateInfo(path: path)
            map[info.commonName] = info.publicKey
        }
        self.init(issuers: map, revocationsPath: revocationsPath)
    }

    /// Trusts the key of `certificate` for its center too (a renewed certificate): tokens
    /// signed with the center's earlier keys stay valid until they expire. At most eight keys
    /// per center are kept (the oldest goes).
    public func trust(_ certificate: CertificateInfo) {
        lock.withLock {
            var list = keys[certificate.commonName] ?? []
            guard !list.contains(certificate.publicKey) else { return }
            list.append(certificate.publicKey)
            if list.count > 8 { list.removeFirst() }
            keys[certificate.commonName] = list
        }
    }

    /// The verified token, or an `.auth` error saying why it is refused.
    public func verify(_ text: String, now: Int64 = Int64(time(nil))) throws -> UserToken {
        let (token, error) = check(text, now: now)
        if let error { throw error }
        return token!
    }

    /// Verifies a token once and says both what it is and why it is refused: `token` is set
    /// whenever the signature is genuine (also for an expired or revoked token, so that a
    /// refusal can name its user), `error` whenever it is refused.
    public func check(_ text: String, now: Int64 = Int64(time(nil))) -> (token: UserToken?, error: TransferError?) {
        let token: UserToken
        if let known = lock.withLock({ genuine[text] }) {
            token = known
        } else {
            let payload: [UInt8], sig: [UInt8]
            do { (token, payload, sig) = try UserToken.unverified(text) } catch { return (nil, asTransferError(error)) }
            guard let candidates = lock.withLock({ keys[token.issuer] }) else { return (nil, TransferError(.auth, "token issued by '\(token.issuer)', which this server does not trust")) }
            let msg = UserToken.domain + payload
            guard candidates.contains(where: { ferry_ed25519_verify($0, msg, msg.count, sig) == 1 }) else {
                return (nil, TransferError(.auth, "token signature is not valid (forged or altered)"))
            }
            remember(text, token, now: now)
        }
        func refuse(_ m: String) -> (UserToken?, TransferError?) { (token, TransferError(.auth, m)) }
        guard now < token.expiresAt else { return refuse("token of '\(token.user)' expired at \(isoTime(token.expiresAt))") }
        guard now + skewSeconds >= token.issuedAt else { return refuse("token of '\(token.user)' is not valid before \(isoTime(token.issuedAt))") }
        let (revoked, error) = revocationState(token.idHex)
        if let error { return refuse("token refused: \(error)") }
        guard !revoked else { return refuse("token \(token.idHex) of '\(token.user)' has been revoked") }
        guard UserToken.isValidUser(token.user) else { return (nil, TransferError(.auth, "token names an invalid user")) }
        return (token, nil)
    }

    /// Tokens whose signature was found genuine, by their exact text. A daemon's API checks the
    /// same few tokens thousands of times a second, and the Ed25519 check was a quarter of a job
    /// read's CPU (issue 14, `bench/api.sh`). Only the signature is remembered: expiry, start
    /// and revocation are checked on every use, so a revoked token is refused at its next
    /// request. The text is the key (a token altered by one byte is another key and is checked
    /// afresh); at most `genuineLimit` entries, emptied when full and of expired tokens as
    /// they are met.
    private var genuine: [String: UserToken] = [:]
    static let genuineLimit = 4096

    private func remember(_ text: String, _ token: UserToken, now: Int64) {
        guard now < token.expiresAt, text.utf8.count <= 8192 else { return }
        lock.withLock {
            if genuine.count >= Self.genuineLimit {
                genuine = genuine.filter { now < $0.value.expiresAt }
                if genuine.count >= Self.genuineLimit { genuine.removeAll(keepingCapacity: true) }
            }
            genuine[text] = token
        }
    }

    /// How many genuine signatures are remembered (tests).
    var rememberedCount: Int { lock.withLock { genuine.count } }

    /// Re-reads the revocation list when it changed (one stat per check; the file is small).
    /// A list that does not exist revokes nothing; one that exists but cannot be read refuses
    /// every token (fail closed) until it can be read again.
    func revocationState(_ idHex: String) -> (revoked: Bool, error: String?) {
        guard let path = revocationsPath else { return (false, nil) }
        return lock.withLock {
            var st = stat()
            if stat(path, &st) != 0 {
                if errno == ENOENT {
                    revoked = []
                    revocationsStamp = nil
                    return (false, nil)
                }
                revocationsStamp = nil
                return (true, "the revocation list '\(path)' cannot be read (\(String(cString: strerror(errno))))")
            }
            let stamp = [Int64(st.st_mtim.tv_sec), Int64(st.st_mtim.tv_nsec), Int64(st.st_ctim.tv_sec), Int64(st.st_ctim.tv_nsec), Int64(st.st_size), Int64(st.st_ino)]
            if stamp != revocationsStamp {
                guard let ids = Revocations.read(path) else {
                    revocationsStamp = nil
                    return (true, "the revocation list '\(path)' cannot be read")
                }
                revoked = Set(ids)
                revocationsStamp = stamp
            }
            return (revoked.contains(idHex), nil)
        }
    }

    func isRevoked(_ idHex: String) -> Bool { revocationState(idHex).revoked }
}

/// The revocation list: one token id (hex) per line; '#' starts a comment.
public enum Revocations {
    /// The ids of the list, or nil when it cannot be read.
    static func read(_ path: String) -> [String]? {
        guard let text = try? readSmallFile(path, maxBytes: 64 << 20) else { return nil }
        return text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).compactMap { line in
            let s = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map { $0.trimmingCharacters(in: " \t") } ?? ""
            return s.isEmpty ? nil : s.lowercased()
        }
    }

    /// Appends an id (durably) to the list.
    public static func revoke(idHex: String, path: String, reason: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        if fd < 0 { throw TransferError.system("cannot open '\(path)'", errno: errno) }
        defer { close(fd) }
        let line = Array((idHex.lowercased() + (reason.isEmpty ? "" : "  # " + reason.replacingNewlines()) + "\n").utf8)
        guard line.withUnsafeBytes({ write(fd, $0.baseAddress!, $0.count) }) == line.count, fdatasync(fd) == 0 else {
            throw TransferError.system("cannot write '\(path)'", errno: errno)
        }
    }
}

/// Public key, name and expiry of a PEM certificate.
public struct CertificateInfo {
    public var publicKey: [UInt8]
    public var commonName: String
    public var notAfter: Int64

    public init(path: String) throws {
        var pub = [UInt8](repeating: 0, count: 32)
        var cn = [CChar](repeating: 0, count: 256)
        var notAfter: Int64 = 0
        var err = [CChar](repeating: 0, count: 512)
        guard ferry_cert_info(path, &pub, &cn, cn.count, &notAfter, &err, err.count) == 1 else { throw TransferError(.usage, String(cString: err)) }
        publicKey = pub
        commonName = String(cString: cn)
        self.notAfter = notAfter
    }
}

/// The raw Ed25519 private key of a PEM key file (for signing tokens).
public func loadPrivateKey(_ path: String) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 32)
    var err = [CChar](repeating: 0, count: 512)
    guard ferry_key_raw_private(path, &out, &err, err.count) == 1 else { throw TransferError(.usage, String(cString: err)) }
    return out
}

/// base64url without padding (RFC 4648 §5).
enum Base64URL {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    static func encode(_ b: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity((b.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= b.count {
            let v = UInt32(b[i]) << 16 | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2])
            for s in [18, 12, 6, 0] { out.append(alphabet[Int((v >> UInt32(s)) & 63)]) }
            i += 3
        }
        let rest = b.count - i
        if rest > 0 {
            var v = UInt32(b[i]) << 16
            if rest == 2 { v |= UInt32(b[i + 1]) << 8 }
            out.append(alphabet[Int((v >> 18) & 63)])
            out.append(alphabet[Int((v >> 12) & 63)])
            if rest == 2 { out.append(alphabet[Int((v >> 6) & 63)]) }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ s: String) -> [UInt8]? {
        var table = [Int16](repeating: -1, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = Int16(i) }
        let b = Array(s.utf8)
        guard b.count % 4 != 1 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(b.count * 3 / 4)
        var acc: UInt32 = 0
        var bits = 0
        for c in b {
            let v = table[Int(c)]
            if v < 0 { return nil }
            acc = acc << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((acc >> UInt32(bits)) & 0xFF))
            }
        }
        // Non-canonical trailing bits would let two texts carry one token.
        if bits > 0 && acc & ((1 << UInt32(bits)) - 1) != 0 { return nil }
        return out
    }
}

/// Unix seconds as ISO 8601 UTC ("2026-11-26T04:54:28Z").
public func isoTime(_ t: Int64) -> String {
    var tm = tm()
    var tt = time_t(t)
    gmtime_r(&tt, &tm)
    func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))T\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec))Z"
}

/// Reads a small text file whole (configuration, revocation list, token).
public func readSmallFile(_ path: String, maxBytes: Int) throws -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { throw TransferError.system("cannot read '\(path)'", errno: errno) }
    defer { close(fd) }
    var out = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 65536)
    while out.count <= maxBytes {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n < 0 { throw TransferError.system("cannot read '\(path)'", errno: errno) }
        if n == 0 { return String(decoding: out, as: UTF8.self) }
        out.append(contentsOf: buf[0..<n])
    }
    throw TransferError(.usage, "'\(path)' is larger than \(maxBytes) bytes")
}

extension Substring {
    func trimmingCharacters(in set: String) -> String {
        let chars = Set(set)
        var s = self[...]
        while let f = s.first, chars.contains(f) { s = s.dropFirst() }
        while let l = s.last, chars.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

extension String {
    func replacingNewlines() -> String { String(map { $0 == "\n" || $0 == "\r" ? " " : $0 }) }
}

/// As `isoTime`, but "never" for 0 (a time not yet recorded).
public func isoTimeOrNever(_ t: Int64) -> String { t > 0 ? isoTime(t) : "never" }
