import COpenSSL
import Glibc

/// Settings of `ferry serve`.
public struct ServerConfiguration: Sendable {
    /// What the server serves: named exports, or one root export (`--root`).
    public var exports: [Export]
    public var listen: [HostPort]
    /// The center's certificate and key, and the federation CA that client certificates must
    /// chain to.
    public var tls: TLSIdentity
    /// Certificates of the centers whose user tokens this server accepts (their CN names the
    /// issuer). Empty: this center's own certificate (tokens it issued itself).
    public var tokenIssuers: [String] = []
    /// Revocation list (token ids, one per line), re-read whenever it changes.
    public var revocations: String?
    /// Transfers asking for less protection than this are refused.
    public var minimumProtection: ProtectionLevel = .clear
    public var handshakeTimeoutSeconds = 10
    public var idleTimeoutSeconds = 120
    public var connectionsMax = 256
    /// Connections from one address at once (a flood from one host cannot starve the others).
    public var connectionsPerAddressMax = 64
    /// Which local account each user acts as (the server runs as root; see `IdentityMap`).
    public var identities = IdentityMap()
    /// Every session and every refusal is recorded here when set.
    public var audit: AuditLog?
    /// Where one line per session and per refused connection goes.
    public var log: @Sendable (String) -> Void = { line in
        fputs(line + "\n", stderr)
    }

    public init(exports: [Export], listen: [HostPort], tls: TLSIdentity) {
        self.exports = exports
        self.listen = listen
        self.tls = tls
    }
}

/// What the audit line of a connection will say, filled in as the server learns it.
final class AuditNote {
    var user = ""
    var center = ""
    var action = "connect"
    var path = ""
    var account = ""
}

/// One session on the server: the control connection's role object and its data streams.
/// `@unchecked Sendable`: guarded by `lock`.
final class ServerSession: @unchecked Sendable {
    let id: [UInt8]
    let secret: [UInt8]
    let streams: Int
    let ctx: SessionContext
    /// The account every thread of this session acts as; nil when the server cannot switch.
    var account: LocalAccount?
    var sender: Sender?
    var receiver: Receiver?
    let lock = Lock()
    lazy var cond = Condition(lock)
    var joined = 0
    var joinedIndexes = Set<Int>()

    init(id: [UInt8], secret: [UInt8], streams: Int, ctx: SessionContext) {
        self.id = id
        self.secret = secret
        self.streams = streams
        self.ctx = ctx
    }
}

/// The transfer server: accepts control and data connections on every listen address, serves
/// push and pull sessions beneath its root. A bad connection ends that connection only.
/// `@unchecked Sendable`: shared state is guarded by `lock`.
public final class TransferServer: @unchecked Sendable {
    public let configuration: ServerConfiguration
    private let exports: ExportTable
    private let tlsContext: TLSContext
    private let verifier: TokenVerifier
    /// This center's name (its certificate's CN).
    public let center: String
    private let lock = Lock()
    private var sessions: [[UInt8]: ServerSession] = [:]
    private var listeners: [Int32] = []
    private var connections = 0
    private var connectionsByAddress: [String: Int] = [:]
    private var stopped = false

    public init(_ configuration: ServerConfiguration) throws {
        self.configuration = configuration
        prepareProcess()
        guard let cert = configuration.tls.certificate, configuration.tls.key != nil else {
            throw TransferError(.usage, "the server needs its center certificate and key (--cert, --key; see `ferry ca issue`)")
        }
        exports = try ExportTable(configuration.exports)
        tlsContext = try TLSContext(server: true, identity: configuration.tls)
        center = try CertificateInfo(path: cert).commonName
        verifier = try TokenVerifier(issuerCertificates: configuration.tokenIssuers.isEmpty ? [cert] : configuration.tokenIssuers, revocationsPath: configuration.revocations)
    }

    /// Binds every listen address and starts accepting; returns the bound addresses.
    public func start() throws -> [HostPort] {
        var bound: [HostPort] = []
        for address in configuration.listen {
            let (fd, actual) = try Socket.listen(address)
            lock.withLock { listeners.append(fd) }
            bound.append(actual)
            spawnThread(name: "ferry-accept") { [self] in acceptLoop(fd) }
        }
        return bound
    }

    /// Stops accepting; running sessions are cut.
    public func stop() {
        // Idempotent: a second call must not close descriptor numbers reused since.
        let (fds, all) = lock.withLock { () -> ([Int32], [ServerSession]) in
            if stopped { return ([], []) }
            stopped = true
            return (listeners, Array(sessions.values))
        }
        for fd in fds { shutdown(fd, Int32(SHUT_RDWR)); Glibc.close(fd) }
        for s in all { s.ctx.fail(TransferError(.io, "server stopping", resumable: true)) }
    }

    private func acceptLoop(_ listenFd: Int32) {
        while !lock.withLock({ stopped }) {
            let fd = accept(listenFd, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM {
                    if errno != EINTR && errno != ECONNABORTED { usleep(50_000) }
                    continue
                }
                return
            }
            let peer = Socket.peerName(fd)
            let address = Socket.hostPart(peer)
            let refusal = lock.withLock { () -> String? in
                if connections >= configuration.connectionsMax { return "too many connections (\(configuration.connectionsMax))" }
                if connectionsByAddress[address, default: 0] >= configuration.connectionsPerAddressMax {
                    return "too many connections from \(address) (\(configuration.connectionsPerAddressMax))"
                }
                connections += 1
                connectionsByAddress[address, default: 0] += 1
                return nil
            }
            if let refusal {
                configuration.log("ferry serve: refused \(peer): \(refusal)")
                configuration.audit?.write(.init(user: "", peer: peer, action: "connect", path: "", result: "refused: " + refusal))
                Glibc.close(fd)
                continue
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            Socket.tune(fd)
            let conn = Connection(fd: fd)
            spawnThread(name: "ferry-conn") { [self] in
                serve(conn)
                lock.withLock {
                    connections -= 1
                    connectionsByAddress[address, default: 1] -= 1
                    if connectionsByAddress[address] == 0 { connectionsByAddress[address] = nil }
                }
            }
        }
    }

    private func serve(_ conn: Connection) {
        let ring: Ring
        do { ring = try Ring(entries: 16) } catch {
            conn.close()
            return
        }
        let handshakeNs = Int64(configuration.handshakeTimeoutSeconds) * 1_000_000_000
        let note = AuditNote()
        do {
            let role = try conn.recvPreamble(ring: ring, timeoutNs: handshakeNs)
            switch role {
            case .control:
                // TLS 1.3 right after the preamble; the whole handshake within the timeout.
                conn.tls = try tlsContext.handshake(fd: conn.fd, expected: nil, timeoutMs: Int(handshakeNs / 1_000_000))
                note.center = conn.tls?.peerCommonName ?? ""
                try conn.send(.ready, Array(center.utf8), ring: ring)
                try serveControl(conn, ring: ring, handshakeNs: handshakeNs, note: note)
            case .data:
                note.action = "join"
                try serveData(conn, ring: ring, handshakeNs: handshakeNs)
            }
        } catch {
            // Refused before a session started: a rerun would not help.
            var e = asTransferError(error)
            e.resumable = false
            configuration.log("ferry serve: \(conn.peer): refused: \(e.message)")
            var r = AuditLog.Record(user: note.user, peer: conn.peer, action: note.action, path: note.path, result: "refused: " + e.message)
            r.center = note.center
            configuration.audit?.write(r)
            // After a failed TLS handshake there is no channel to explain on (the TLS alert did).
            if !(note.action == "connect" && conn.tls == nil && e.code == .auth) { conn.sendError(e, ring: ring) }
        }
        conn.close()
    }

    /// Who is asking: a verified user token, or a peer center's verified certificate.
    private func authenticate(_ hello: Hello, conn: Connection, note: AuditNote) throws -> Principal {
        let center = conn.tls?.peerCommonName
        if !hello.token.isEmpty {
            let text = String(decoding: hello.token, as: UTF8.self)
            // One signature check; a refusal names the user only when the signature is genuine.
            let (checked, refusal) = verifier.check(text)
            if let refusal {
                if let g = checked { note.user = "refused:" + qualified(g) }
                throw refusal
            }
            let token = checked!
            note.user = qualified(token)
            return Principal(user: note.user, center: center, scopes: token.scopes)
        }
        if let center {
            note.user = "center:" + center
            return Principal(user: "center:" + center, center: center, scopes: nil)
        }
        throw TransferError(.auth, "no credentials: send a user token (--token-file) or a center certificate (--cert/--key)")
    }

    /// Users of this center's tokens keep their name; users of other trusted centers' tokens
    /// are NAME@CENTER, so that another issuer can never speak for a local user.
    private func qualified(_ t: UserToken) -> String { t.issuer == center ? t.user : t.user + "@" + t.issuer }

    private func serveControl(_ conn: Connection, ring: Ring, handshakeNs: Int64, note: AuditNote) throws {
        let (type, payload) = try conn.receive(ring: ring, timeoutNs: handshakeNs, payloadBytesMax: 64 << 10)
        if type == .ping {
            // `ferry ping`: the TLS handshake alone (certificates checked both ways), no session.
            note.action = "ping"
            try conn.send(.ping, ring: ring)
            var r = AuditLog.Record(user: note.center.isEmpty ? "" : "center:" + note.center, peer: conn.peer, action: "ping", path: "", result: "ok")
            r.center = note.center
            configuration.audit?.write(r)
            return
        }
        guard type == .hello else { throw TransferError.protocolError("expected HELLO, got \(type)") }
        let hello = try Hello.decode(payload)
        note.action = hello.direction == .push ? "push" : "pull"
        note.path = hello.path
        let who = try authenticate(hello, conn: conn, note: note)
        guard hello.options.protection >= configuration.minimumProtection else {
            throw TransferError(.auth, "this server requires --protection \(configuration.minimumProtection) or stronger")
        }
        let (exportFd, beneath, export) = try exports.authorize(who, path: hello.path, write: hello.direction == .push)
        // From here on this thread (and every thread it starts) acts as the user's account:
        // the kernel checks each open, create and rename as it would for the user's shell.
        let account = try configuration.identities.resolve(who.user, export: export)
        if let account {
            try ThreadIdentity.adopt(account)
            note.account = account.name
        }
        defer { if account != nil { ThreadIdentity.restore() } }
        let streams = min(hello.options.streams ?? TransferOptions.automaticStreams, Wire.streamsMax)
        let progress = TransferProgress()
        let ctx = SessionContext(control: conn, options: hello.options, progress: progress, idleTimeoutSeconds: configuration.idleTimeoutSeconds, protection: hello.options.protection, direction: hello.direction)
        let session = ServerSession(id: randomBytes(16), secret: randomBytes(32), streams: streams, ctx: ctx)
        session.account = account
        switch hello.direction {
        case .push:
            let base = try sys("cannot open the export") { dup(exportFd) }
            session.receiver = Receiver(ctx: ctx, baseFd: base, target: beneath, modeMask: export.modeMask)
        case .pull:
            // Component by component: a symlink inside the scope cannot lead out of it.
            let fd = try Paths.openStepwise(beneath: exportFd, beneath, flags: O_RDONLY)
            session.sender = try Sender(ctx: ctx, rootFd: fd, name: hello.path)
        }
        lock.withLock { sessions[session.id] = session }
        defer { lock.withLock { sessions[session.id] = nil } }
        try conn.send(.welcome, Welcome(sessionID: session.id, secret: session.secret, streams: streams).encode(), ring: ring)
        // Every data stream must join within the handshake timeout.
        let deadline = monotonicNs() + UInt64(handshakeNs)
        try session.lock.withLock { () throws in
            while session.joined < streams {
                if monotonicNs() >= deadline { throw TransferError(.timeout, "only \(session.joined) of \(streams) data streams joined") }
                session.cond.wait(seconds: 0.1)
            }
        }
        let what = "\(hello.direction == .push ? "push to" : "pull from") '\(hello.path.isEmpty ? "." : hello.path)'"
        var record = AuditLog.Record(user: who.user, peer: conn.peer, action: note.action, path: hello.path, result: "ok")
        record.center = who.center ?? ""
        record.account = note.account
        record.protection = hello.options.protection.description
        defer {
            let p = progress.snapshot()
            record.files = p.filesTotal
            record.bytes = p.bytesDone
            record.seconds = p.seconds
            configuration.audit?.write(record)
        }
        do {
            if let s = session.sender { try s.runControl() }
            if let r = session.receiver { try r.runControl() }
            let p = progress.snapshot()
            if p.filesFailed > 0 { record.result = "failed: " + (p.failures.first ?? "") }
            configuration.log("ferry serve: \(conn.peer) (\(who.user)): \(what): \(p.filesFailed > 0 ? "failed" : "ok"), \(p.filesTotal) files, \(byteText(p.bytesTotal)), \(byteText(p.wireBytes)) on the wire, \(p.filesFailed) failed, \(hello.options.protection), \(p.rejectedFrames) frames rejected")
        } catch {
            var e = asTransferError(error)
            e.resumable = e.rerunResumes
            configuration.log("ferry serve: \(conn.peer): \(what): \(e.message)")
            record.result = "failed: " + e.message
            // The peer learns why, unless it is the one that went away.
            if e.code != .remote { conn.sendError(e, ring: ring) }
        }
    }

    private func serveData(_ conn: Connection, ring: Ring, handshakeNs: Int64) throws {
        let (type, payload) = try conn.receive(ring: ring, timeoutNs: handshakeNs, payloadBytesMax: 1024)
        guard type == .join else { throw TransferError.protocolError("expected JOIN, got \(type)") }
        let join = try Join.decode(payload)
        guard let session = lock.withLock({ sessions[join.sessionID] }),
              constantTimeEqual(join.proof, Join.proof(secret: session.secret, sessionID: session.id, streamIndex: join.streamIndex)) else {
            throw TransferError(.auth, "data stream for an unknown session or with a wrong proof")
        }
        try session.lock.withLock { () throws in
            guard session.joined < session.streams, join.streamIndex < session.streams else { throw TransferError.protocolError("more data streams than agreed") }
            // An index joins once: it is part of every sealed frame's nonce.
            guard session.joinedIndexes.insert(join.streamIndex).inserted else { throw TransferError.protocolError("data stream \(join.streamIndex) joined twice") }
            session.joined += 1
            session.cond.broadcast()
        }
        conn.streamIndex = join.streamIndex
        // The data streams write and read for the same user as the control stream.
        if let account = session.account { try ThreadIdentity.adopt(account) }
        defer { if session.account != nil { ThreadIdentity.restore() } }
        session.ctx.add(data: conn)
        try conn.send(.joined, ring: ring)
        if let s = session.sender { s.runWorker(conn) }
        if let r = session.receiver { r.runWorker(conn) }
    }
}

/// Process-wide settings both ends need: exact modes (umask 0, as the modes come from the
/// source), enough descriptors for deep trees, no SIGPIPE.
func prepareProcess() {
    umask(0)
    var lim = rlimit()
    if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 && lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = min(lim.rlim_max, 1 << 16)
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
    }
    signal(SIGPIPE, SIG_IGN)
}
