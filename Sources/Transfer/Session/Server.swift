import COpenSSL
import Glibc

/// Settings of `ferry serve`.
public struct ServerConfiguration: Sendable {
    public var root: String
    public var listen: [HostPort]
    /// Shared bearer token (test-grade authentication until center certificates and user tokens
    /// arrive with the security work; compared in constant time).
    public var token: [UInt8]
    public var handshakeTimeoutSeconds = 10
    public var idleTimeoutSeconds = 120
    public var connectionsMax = 256
    /// Connections from one address at once (a flood from one host cannot starve the others).
    public var connectionsPerAddressMax = 64
    /// Every session and every refusal is recorded here when set.
    public var audit: AuditLog?
    /// Who the shared token stands for in the audit log (user tokens replace this later).
    public var tokenUser = "token"
    /// Where one line per session and per refused connection goes.
    public var log: @Sendable (String) -> Void = { line in
        fputs(line + "\n", stderr)
    }

    public init(root: String, listen: [HostPort], token: [UInt8]) {
        self.root = root
        self.listen = listen
        self.token = token
    }
}

/// One session on the server: the control connection's role object and its data streams.
/// `@unchecked Sendable`: guarded by `lock`.
final class ServerSession: @unchecked Sendable {
    let id: [UInt8]
    let secret: [UInt8]
    let streams: Int
    let ctx: SessionContext
    var sender: Sender?
    var receiver: Receiver?
    let lock = Lock()
    lazy var cond = Condition(lock)
    var joined = 0

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
    private let rootFd: Int32
    private let lock = Lock()
    private var sessions: [[UInt8]: ServerSession] = [:]
    private var listeners: [Int32] = []
    private var connections = 0
    private var connectionsByAddress: [String: Int] = [:]
    private var stopped = false

    public init(_ configuration: ServerConfiguration) throws {
        self.configuration = configuration
        prepareProcess()
        let fd = open(configuration.root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { throw TransferError.system("cannot serve '\(configuration.root)'", errno: errno) }
        rootFd = fd
    }

    deinit { Glibc.close(rootFd) }

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
        let (fds, all) = lock.withLock { () -> ([Int32], [ServerSession]) in
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
        do {
            let role = try conn.recvPreamble(ring: ring, timeoutNs: handshakeNs)
            switch role {
            case .control: try serveControl(conn, ring: ring, handshakeNs: handshakeNs)
            case .data: try serveData(conn, ring: ring, handshakeNs: handshakeNs)
            }
        } catch {
            // Refused before a session started: a rerun would not help.
            var e = asTransferError(error)
            e.resumable = false
            configuration.log("ferry serve: \(conn.peer): \(e.message)")
            configuration.audit?.write(.init(user: "", peer: conn.peer, action: "connect", path: "", result: "refused: " + e.message))
            conn.sendError(e, ring: ring)
        }
        conn.close()
    }

    private func serveControl(_ conn: Connection, ring: Ring, handshakeNs: Int64) throws {
        let (type, payload) = try conn.receive(ring: ring, timeoutNs: handshakeNs, payloadBytesMax: 64 << 10)
        guard type == .hello else { throw TransferError.protocolError("expected HELLO, got \(type)") }
        let hello = try Hello.decode(payload)
        guard constantTimeEqual(hello.token, configuration.token) else {
            throw TransferError(.auth, "authentication failed: wrong token")
        }
        let parts = try Paths.components(of: hello.path)
        let streams = min(hello.options.streams ?? TransferOptions.automaticStreams, Wire.streamsMax)
        let progress = TransferProgress()
        let ctx = SessionContext(control: conn, options: hello.options, progress: progress, idleTimeoutSeconds: configuration.idleTimeoutSeconds)
        let session = ServerSession(id: randomBytes(16), secret: randomBytes(32), streams: streams, ctx: ctx)
        switch hello.direction {
        case .push:
            let base = try sys("cannot open root") { dup(rootFd) }
            session.receiver = Receiver(ctx: ctx, baseFd: base, target: parts)
        case .pull:
            let fd = try Paths.open(beneath: rootFd, hello.path, flags: O_RDONLY)
            session.sender = try Sender(ctx: ctx, rootFd: fd)
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
        var record = AuditLog.Record(user: configuration.tokenUser, peer: conn.peer, action: hello.direction == .push ? "push" : "pull", path: hello.path, result: "ok")
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
            configuration.log("ferry serve: \(conn.peer): \(what): ok, \(p.filesTotal) files, \(byteText(p.bytesTotal)), \(byteText(p.wireBytes)) on the wire, \(p.filesFailed) failed")
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
        guard let session = lock.withLock({ sessions[join.sessionID] }), constantTimeEqual(join.secret, session.secret) else {
            throw TransferError(.auth, "data stream for an unknown session or with a wrong secret")
        }
        try session.lock.withLock { () throws in
            guard session.joined < session.streams else { throw TransferError.protocolError("more data streams than agreed") }
            session.joined += 1
            session.cond.broadcast()
        }
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

func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count, !a.isEmpty else { return false }
    return a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in ferry_ct_memcmp(pa.baseAddress, pb.baseAddress, a.count) == 0 } }
}

func randomBytes(_ n: Int) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: n)
    let ok = b.withUnsafeMutableBytes { ferry_random_bytes($0.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(n)) }
    precondition(ok == 1, "RAND_bytes failed")
    return b
}
