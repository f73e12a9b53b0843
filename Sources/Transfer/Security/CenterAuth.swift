import COpenSSL
import Glibc

/// How one center's daemon proves itself to a peer's daemon API (the federation's change feed):
/// a short-lived assertion signed with the center's Ed25519 key, sent with the center's
/// certificate. The peer checks that the certificate chains to the federation CA, that its
/// common name is the assertion's issuer and a configured peer, that the assertion is meant for
/// it (audience), is fresh (±5 minutes of clock skew, lifetime ≤ 10 minutes), and that the
/// signature is the certificate's key's. No shared secret and no extra configuration beyond
/// the CA every center already has; a stolen assertion works only against its audience, only
/// for minutes.
///
///     Authorization: FerryCenter ferryc1.BASE64URL(payload).BASE64URL(signature)
///     X-Ferry-Certificate: BASE64URL(the center's PEM certificate)
public struct CenterAssertion: Sendable, Equatable {
    public var issuer: String
    public var audience: String
    public var issuedAt: Int64
    public var expiresAt: Int64

    static let prefix = "ferryc1."
    static let domain = Array("ferry-center-v1\0".utf8)
    public static let scheme = "FerryCenter "
    public static let certificateHeader = "X-Ferry-Certificate"
    static let lifetimeMax: Int64 = 600
    static let skew: Int64 = 300

    public init(issuer: String, audience: String, issuedAt: Int64 = Int64(time(nil)), lifetime: Int64 = 300) {
        self.issuer = issuer
        self.audience = audience
        self.issuedAt = issuedAt
        expiresAt = issuedAt + min(lifetime, CenterAssertion.lifetimeMax)
    }

    func payload() -> [UInt8] {
        var w = ByteWriter()
        w.u8(1)
        w.string(issuer)
        w.string(audience)
        w.i64(issuedAt)
        w.i64(expiresAt)
        return w.bytes
    }

    public func signed(privateKey: [UInt8]) -> String {
        let p = payload()
        var sig = [UInt8](repeating: 0, count: 64)
        let msg = CenterAssertion.domain + p
        precondition(ferry_ed25519_sign(privateKey, msg, msg.count, &sig) == 1, "Ed25519 signing failed")
        return CenterAssertion.prefix + Base64URL.encode(p) + "." + Base64URL.encode(sig)
    }

    /// The PEM text of a certificate file, as the certificate header carries it.
    public static func certificateHeaderValue(certificatePath: String) throws -> String {
        guard let f = fopen(certificatePath, "r") else { throw TransferError(.usage, "cannot read '\(certificatePath)'") }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<64 {
            let n = fread(&buf, 1, buf.count, f)
            if n == 0 { break }
            bytes += buf[0..<n]
        }
        return Base64URL.encode(bytes)
    }
}

/// Checks center assertions for one daemon (`me`), trusting the centers in `peers` whose
/// certificates chain to the CA. Verified certificates are remembered (by their bytes) for ten
/// minutes. `@unchecked Sendable`: the cache is guarded by `lock`.
public final class CenterVerifier: @unchecked Sendable {
    let ca: String
    let me: String
    let peers: Set<String>
    private let lock = Lock()
    private var known: [String: (name: String, key: [UInt8], until: Int64)] = [:]

    public init(ca: String, me: String, peers: Set<String>) {
        self.ca = ca
        self.me = me
        self.peers = peers
    }

    /// The verified center's name, or an `.auth` error saying why it is refused.
    public func verify(assertion text: String, certificate: String, now: Int64 = Int64(time(nil))) throws -> String {
        guard text.utf8.count <= 2048, text.hasPrefix(CenterAssertion.prefix) else { throw TransferError(.auth, "not a center assertion") }
        let parts = text.dropFirst(CenterAssertion.prefix.count).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, let p = Base64URL.decode(String(parts[0])), let sig = Base64URL.decode(String(parts[1])), sig.count == 64 else {
            throw TransferError(.auth, "malformed center assertion")
        }
        var r = ByteReader(p)
        let a: CenterAssertion
        do {
            guard try r.u8() == 1 else { throw TransferError(.auth, "center assertion version not supported") }
            let issuer = try r.string(maxBytes: 255), audience = try r.string(maxBytes: 255)
            let iat = try r.i64(), exp = try r.i64()
            try r.expectEnd()
            a = CenterAssertion(issuer: issuer, audience: audience, issuedAt: iat, lifetime: 0)
            guard exp - iat <= CenterAssertion.lifetimeMax else { throw TransferError(.auth, "center assertion lives too long") }
            guard now < exp, now + CenterAssertion.skew >= iat else { throw TransferError(.auth, "center assertion of '\(issuer)' expired or not yet valid (check the clocks)") }
        } catch let e as TransferError where e.code == .protocolViolation {
            throw TransferError(.auth, "malformed center assertion (\(e.message))")
        }
        guard a.audience == me else { throw TransferError(.auth, "center assertion is for '\(a.audience)', not '\(me)'") }
        guard peers.contains(a.issuer) else { throw TransferError(.auth, "center '\(a.issuer)' is not a peer of '\(me)' ([[peer]] in its configuration)") }
        let (name, key) = try certificateKey(certificate, now: now)
        guard name == a.issuer else { throw TransferError(.auth, "the certificate is center '\(name)''s, the assertion says '\(a.issuer)'") }
        let msg = CenterAssertion.domain + p
        guard ferry_ed25519_verify(key, msg, msg.count, sig) == 1 else { throw TransferError(.auth, "center assertion signature is not valid") }
        return name
    }

    func certificateKey(_ header: String, now: Int64) throws -> (String, [UInt8]) {
        if let k = lock.withLock({ known[header] }), k.until > now { return (k.name, k.key) }
        guard header.utf8.count <= 16_384, let pem = Base64URL.decode(header) else { throw TransferError(.auth, "malformed certificate header") }
        var pub = [UInt8](repeating: 0, count: 32)
        var cn = [CChar](repeating: 0, count: 256)
        var err = [CChar](repeating: 0, count: 512)
        guard ferry_cert_verify_pem(pem, pem.count, ca, &pub, &cn, cn.count, &err, err.count) == 1 else {
            throw TransferError(.auth, String(cString: err))
        }
        let name = String(cString: cn)
        lock.withLock {
            if known.count > 256 { known.removeAll() }
            known[header] = (name, pub, now + 600)
        }
        return (name, pub)
    }
}
