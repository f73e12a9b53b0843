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
    /// Authenticated connections at once (a connection counts here once its token or center
    /// certificate was verified, or its data stream joined with a valid proof).
    public var connectionsMax = 256
    /// Authenticated connections from one address at once (one host cannot starve the others).
    public var connectionsPerAddressMax = 64
    /// Connections that have not authenticated yet, at once: a separate, smaller budget,
    /// checked before a thread is spawned; when it is full, a newcomer from an address holding
    /// fewer of them takes the place of the oldest from the address holding most (see
    /// `ConnectionBudget`), so a flood from several addresses cannot keep anyone else out.
    public var unauthenticatedMax = 64
    /// Unauthenticated connections from one address (an IPv6 address counts with its /64).
    public var unauthenticatedPerAddressMax = 8
    /// Refusals of connections that never authenticated are audited and logged once per
    /// address and kind per this many seconds, with a count of the rest.
    public var refusalAuditIntervalSeconds = 10
    /// Which local account each user acts as (the server runs as root; see `IdentityMap`).
    public var identities = IdentityMap()
    /// Every session and every refusal is recorded here when set.
    public var audit: AuditLog?
    /// Where one line per session and per refused connection goes (`ferry serve` hands them
    /// to swift-log: a time and a level, or journald's priority prefix).
    public var log: @Sendable (ServerLogLevel, String) -> Void = { _, line in
        fputs(line + "\n", stderr)
    }

    public init(exports: [Export], listen: [HostPort], tls: TLSIdentity) {
        self.exports = exports
        self.listen = listen
        self.tls = tls
    }
}

/// The level of a server log line.
public enum ServerLogLevel: Sendable {
    /// A session that ended as asked.
    case info
    /// A refusal or a failure.
    case warning
}

/// What the audit line of a connection will say, filled in as the server learns it.
final class AuditNote {
    var user = ""
    var center = ""
    var action = "connect"
    var path = ""
    var account = ""
    /// The connection's place in the server's budgets.
    var ticket: AdmissionTicket?
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
    /// The center's certificate, key and CA for new handshakes (guarded by `lock`): `reload`
    /// replaces it; a session keeps the context it was made with (OpenSSL holds it).
    private var tlsContext: TLSContext
    /// When the certificate in use expires (Unix seconds; guarded by `lock`).
    private var certificateExpiry: Int64
    private let verifier: TokenVerifier
    /// This center's name (its certificate's CN).
    public let center: String
    private let lock = Lock()
    private var sessions: [[UInt8]: ServerSession] = [:]
    private var listeners: [Int32] = []
    /// Both connection budgets (unauthenticated, authenticated); guarded by `lock`.
    private var budget: ConnectionBudget
    /// Refusals of unauthenticated connections, one line per address and interval.
    private let refusals: RefusalDigest
    private var stopped = false
    /// Bytes of data-stream buffers granted to the sessions running now (guarded by `lock`).
    private var bufferBytesGranted = 0
    /// The same, per user (the token's user, or `center:NAME` for a peer center's daemon).
    private var bufferBytesByUser: [String: Int] = [:]

    /// Buffer memory for data streams, the whole server and one session. Each data stream
    /// holds two frame buffers of the session's chunk size (registered with its ring, so
    /// pinned: a receiving stream's at once, a sending stream's at its first chunk), and both the stream count (up to 64) and the chunk size (up to 64 MiB) are the
    /// client's to choose: one session could pin 8 GiB. A session gets the streams it asks for
    /// while they fit in a quarter of the budget and in what other sessions left; a session
    /// that cannot have one stream is refused as busy (retryable). With the default 4 MiB
    /// chunks a stream costs about 8.1 MiB: 64 streams (about 520 MiB) fit in a session, and
    /// seven such sessions at once; 64 MiB chunks get 7 streams a session. A pull's streams
    /// (this server sends) also count the two direct-read buffers: about 16.1 MiB a stream,
    /// 63 streams a session; 3 at 64 MiB chunks. One user's sessions
    /// together get at most half the budget (`userBufferBytes`): a user running many copies
    /// at once (or a script that opens sessions in a loop) cannot leave the others none; past
    /// their share their next session is refused as busy, retryable, and says why. And a user
    /// who already holds some of it cannot take its last eighth (`newcomerReserveBytes`: 512
    /// MiB, 62 streams of a push with 4 MiB chunks or three with 64 MiB): two users at their share would
    /// otherwise leave a third none, however briefly that third one's copy would have run.
    static let bufferBudgetBytes = 4 << 30
    static let sessionBufferBytes = bufferBudgetBytes / 4
    static let userBufferBytes = bufferBudgetBytes / 2
    static let newcomerReserveBytes = bufferBudgetBytes / 8

    /// What one data stream of a session with `chunkBytes` chunks holds (both directions:
    /// two frame buffers and their headroom; zero-copy slots come on top when enabled, and when
    /// this side sends, the two buffers of direct reads, `SenderWorker.directBufferBytes`).
    static func streamBufferBytes(chunkBytes: Int, sending: Bool) -> Int {
        2 * (DataLayout.framePayloadBytesMax(chunkBytes: chunkBytes) + DataLayout.headroomBytes + DirectIO.alignment)
            + (ZeroCopy.enabled ? ZeroCopy.slots * (DataLayout.framePayloadBytesMax(chunkBytes: chunkBytes) + DataLayout.headroomBytes) : 0)
            + (sending && DirectIO.enabled && !ZeroCopy.enabled ? 2 * SenderWorker.directBufferBytes(chunkBytes: chunkBytes) : 0)
    }

    /// Sessions, bytes, refusals and handshakes, for the daemon's `/metrics`.
    let metrics = ServerMetrics()

    /// The server's counters in Prometheus' text format.
    public func metricsText() -> String { metrics.text() }

    public init(_ configuration: ServerConfiguration) throws {
        self.configuration = configuration
        prepareProcess()
        noteProcessStart()
        guard let cert = configuration.tls.certificate, configuration.tls.key != nil else {
            throw TransferError(.usage, "the server needs its center certificate and key (--cert, --key; see `ferry ca issue`)")
        }
        exports = try ExportTable(configuration.exports)
        tlsContext = try TLSContext(server: true, identity: configuration.tls)
        let info = try CertificateInfo(path: cert)
        center = info.commonName
        certificateExpiry = info.notAfter
        verifier = try TokenVerifier(issuerCertificates: configuration.tokenIssuers.isEmpty ? [cert] : configuration.tokenIssuers, revocationsPath: configuration.revocations)
        budget = ConnectionBudget(authenticatedMax: configuration.connectionsMax, authenticatedPerAddressMax: configuration.connectionsPerAddressMax,
                                  unauthenticatedMax: configuration.unauthenticatedMax, unauthenticatedPerAddressMax: configuration.unauthenticatedPerAddressMax)
        refusals = RefusalDigest(intervalSeconds: configuration.refusalAuditIntervalSeconds) { [configuration] line in
            configuration.log(.warning, "refused \(line.peer): \(line.message)")
            configuration.audit?.write(.init(user: "", peer: line.peer, action: "connect", path: "", result: "refused: " + line.message))
        }
    }

    /// Reads the center's certificate, key and CA again (SIGHUP after a renewal): handshakes
    /// from now on present the new certificate and check peers against the new CA; sessions
    /// already running keep theirs and go on. The new certificate must name this same center.
    /// Tokens signed with the center's previous key stay valid until they expire (when the
    /// center's own certificate is the token issuer): renewal overlaps, nobody is logged out.
    /// Throws, changing nothing, when the files do not load together.
    @discardableResult
    public func reload(_ identity: TLSIdentity) throws -> CertificateInfo {
        guard let cert = identity.certificate, identity.key != nil else {
            throw TransferError(.usage, "the server needs its center certificate and key")
        }
        let info = try CertificateInfo(path: cert)
        guard info.commonName == center else {
            throw TransferError(.usage, "the certificate \(cert) names center '\(info.commonName)', not '\(center)' (a running server keeps its name: restart it to change)")
        }
        let context = try TLSContext(server: true, identity: identity)
        if configuration.tokenIssuers.isEmpty { verifier.trust(info) }
        lock.withLock {
            tlsContext = context
            certificateExpiry = info.notAfter
        }
        return info
    }

    /// When the certificate in use expires (Unix seconds).
    public var certificateNotAfter: Int64 { lock.withLock { certificateExpiry } }

    /// Binds every listen address and starts accepting; returns the bound addresses.
    public func start() throws -> [HostPort] {
        var bound: [HostPort] = []
        for address in configuration.listen {
            let (fd, actual) = try Socket.listen(address)
            lock.withLock { listeners.append(fd) }
            bound.append(actual)
            spawnThread(name: "ferry-accept") { [self] in acceptLoop(fd) }
        }
        // Counts of aggregated refusals are written when their interval has passed.
        spawnThread(name: "ferry-refusals") { [self] in
            while !lock.withLock({ stopped }) {
                usleep(500_000)
                refusals.flush()
            }
        }
        return bound
    }

    /// Stops accepting; running sessions are cut, each told "server stopping" (resumable), and
    /// waited for at most `waitSeconds` in all so that each can say so to its client, log its
    /// line and write its audit record before the process ends (`ferry serve` on SIGTERM:
    /// before, the process was gone first, the client saw a bare end of the stream and no
    /// record of the cut session remained). Returns how many sessions were cut and how many
    /// of them ended within the wait.
    @discardableResult
    public func stop(waitSeconds: Double = 0) -> (cut: Int, ended: Int) {
        // Idempotent: a second call must not close descriptor numbers reused since.
        let (fds, all) = lock.withLock { () -> ([Int32], [ServerSession]) in
            if stopped { return ([], []) }
            stopped = true
            return (listeners, Array(sessions.values))
        }
        for fd in fds { shutdown(fd, Int32(SHUT_RDWR)); Glibc.close(fd) }
        let wait = max(0, waitSeconds)
        let deadline = monotonicNs() + UInt64(wait * 1e9)
        let stopping = TransferError(.io, Self.stoppingMessage, resumable: true)
        // The reason is each session's own before anything closes: a client that hangs up once
        // told (or meets a closed stream) does not become the reason in the log and the audit.
        let cut = all.filter { $0.ctx.failLater(stopping, ownDecision: true) }
        // Sessions whose word is being written by a helper that has not finished (none without
        // a wait: each session then says it itself, as it unwinds).
        var untold: Set<[UInt8]> = []
        if wait > 0 && !cut.isEmpty {
            untold = Set(cut.map(\.id))
            // Each client is told first, on its control connection, while its data streams
            // still stand: a client that met a closed data stream first reported a broken
            // pipe. One thread per session, so a client that does not read cannot hold the
            // others' word; at most a second (or the wait) for them all.
            final class Told: @unchecked Sendable {
                let lock = Lock()
                var ids: Set<[UInt8]> = []
            }
            let told = Told()
            for s in cut {
                spawnThread(name: "ferry-stop") {
                    if let ring = try? Ring(entries: 4) { s.ctx.control.sendError(stopping, ring: ring) }
                    told.lock.withLock { _ = told.ids.insert(s.id) }
                }
            }
            let toldBy = monotonicNs() + UInt64(min(1, wait) * 1e9)
            for _ in 0..<Int(min(1, wait) * 50) + 1 {
                untold = untold.subtracting(told.lock.withLock { told.ids })
                if untold.isEmpty || monotonicNs() >= toldBy { break }
                usleep(20_000)
            }
        }
        for s in cut {
            // A client that does not read its control stream holds its word's write (and the
            // connection's send lock): its connection is shut both ways, so that the session
            // ends, logs and audits within the wait all the same.
            if untold.contains(s.id) { s.ctx.control.shutdownBoth() }
            s.ctx.wake(lostLink: false)
        }
        if !fds.isEmpty { refusals.flush(all: true) }
        // Every session running at the stop is waited for (one that had failed on its own is
        // still writing its line); those cut are counted.
        let ids = Set(all.map(\.id))
        let cutIDs = Set(cut.map(\.id))
        var leftCut = cutIDs.count
        for _ in 0..<Int(wait * 50) + 1 {
            let left = lock.withLock { sessions.keys.filter { ids.contains($0) } }
            leftCut = left.filter { cutIDs.contains($0) }.count
            if left.isEmpty || monotonicNs() >= deadline { break }
            usleep(20_000)
        }
        return (cut.count, cut.count - leftCut)
    }

    static let stoppingMessage = "server stopping"

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
            // Decided before a thread exists: a flood costs an accept and a close each.
            let decision = lock.withLock { () -> ConnectionBudget.Decision in
                let d = budget.admit(address: address, fd: fd)
                // The evicted connection's descriptor stays open until its thread has left
                // the budget (`serve`), so this cannot hit a reused descriptor.
                if case .admitted(_, let victim?) = d { shutdown(victim.fd, Int32(SHUT_RDWR)) }
                return d
            }
            guard case .admitted(let ticket, _) = decision else {
                if case .refused(let refusal) = decision {
                    refusals.refused(group: ConnectionBudget.group(address), kind: refusal, peer: peer, message: refusal)
                }
                Glibc.close(fd)
                continue
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            Socket.tune(fd)
            let conn = Connection(fd: fd)
            spawnThread(name: "ferry-conn") { [self] in
                serve(conn, ticket: ticket)
            }
        }
    }

    private func serve(_ conn: Connection, ticket: AdmissionTicket) {
        // Every path leaves the budget before the descriptor is closed (an eviction shuts a
        // waiting connection's descriptor down until then).
        let ring: Ring
        do { ring = try Ring(entries: 16) } catch {
            lock.withLock { budget.end(ticket) }
            conn.close()
            return
        }
        let handshakeNs = Int64(configuration.handshakeTimeoutSeconds) * 1_000_000_000
        let note = AuditNote()
        note.ticket = ticket
        do {
            let role = try conn.recvPreamble(ring: ring, timeoutNs: handshakeNs)
            switch role {
            case .control:
                // TLS 1.3 right after the preamble; the whole handshake within the timeout.
                let context = lock.withLock { tlsContext }
                let started = monotonicNs()
                conn.tls = try context.handshake(fd: conn.fd, expected: nil, timeoutMs: Int(handshakeNs / 1_000_000))
                metrics.handshake(seconds: Double(monotonicNs() - started) / 1e9)
                note.center = conn.tls?.peerCommonName ?? ""
                try conn.send(.ready, Array(center.utf8), ring: ring)
                try serveControl(conn, ring: ring, handshakeNs: handshakeNs, note: note)
            case .data:
                note.action = "join"
                try serveData(conn, ring: ring, handshakeNs: handshakeNs, ticket: ticket)
            }
        } catch {
            // Refused before a session started: a rerun would not help, unless what refused it
            // is this server stopping (a session that came, or was still joining, during a stop).
            var e = asTransferError(error)
            if !(e.message == Self.stoppingMessage && lock.withLock({ stopped })) { e.resumable = false }
            // A flood's connections (evicted, silent, or gone before a word) that never
            // authenticated: one line per address and kind per interval, with a count.
            if note.user.isEmpty, let kind = lock.withLock({ floodKind(ticket, e) }) {
                metrics.refused("flood")
                let message = ticket.evicted ? kind : e.message
                refusals.refused(group: ticket.group, kind: kind, peer: conn.peer, message: message)
                lock.withLock { budget.end(ticket) }
                conn.close()
                return
            }
            metrics.refused(e.code.name)
            configuration.log(.warning, "\(note.action) from \(conn.peer)\(note.user.isEmpty ? "" : " (" + note.user + ")"): refused: \(e.message)")
            var r = AuditLog.Record(user: note.user, peer: conn.peer, action: note.action, path: note.path, result: "refused: " + e.message)
            r.center = note.center
            configuration.audit?.write(r)
            // After a failed TLS handshake there is no channel to explain on (the TLS alert did).
            if !(note.action == "connect" && conn.tls == nil && (e.code == .auth || e.message.hasPrefix("TLS handshake"))) { conn.sendError(e, ring: ring) }
        }
        lock.withLock { budget.end(ticket) }
        conn.close()
    }

    /// What kind of flood refusal this failure of a connection is, or nil to audit it alone.
    /// Called with `lock` held.
    private func floodKind(_ t: AdmissionTicket, _ e: TransferError) -> String? {
        if t.authenticated { return nil }
        if t.evicted { return "evicted: the unauthenticated budget (\(configuration.unauthenticatedMax)) was full and \(t.group) held the most waiting connections" }
        if e.code == .timeout || e.message.contains("handshake timed out") { return "no handshake within \(configuration.handshakeTimeoutSeconds) s" }
        if e.message.contains("closed the connection") || e.message.contains("unexpected eof") || e.message.contains("reset by peer") {
            return "closed before authenticating"
        }
        return nil
    }

    /// The connection has authenticated: it moves from the unauthenticated budget to the
    /// authenticated one, or is refused when that is full.
    private func authenticated(_ ticket: AdmissionTicket?) throws {
        guard let ticket, let refusal = lock.withLock({ budget.authenticate(ticket) }) else { return }
        throw TransferError(.busy, refusal, resumable: true)
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
        var hello = try Hello.decode(payload)
        note.action = switch hello.direction {
        case .push: "push"
        case .pull: "pull"
        case .list: "list"
        case .delete: "delete"
        case .commit: "commit"
        }
        note.path = hello.path
        let who = try authenticate(hello, conn: conn, note: note)
        try authenticated(note.ticket)
        // A listing or a deletion uses the control stream alone (TLS 1.3): no data streams to protect.
        let controlOnly = hello.direction == .list || hello.direction == .delete || hello.direction == .commit
        guard hello.options.protection >= configuration.minimumProtection || controlOnly else {
            throw TransferError(.auth, "this server requires --protection \(configuration.minimumProtection) or stronger")
        }
        let (exportFd, beneath, export, linkFree) = try exports.authorize(who, path: hello.path, write: hello.direction == .push || hello.direction == .delete || hello.direction == .commit)
        // From here on this thread (and every thread it starts) acts as the user's account:
        // the kernel checks each open, create and rename as it would for the user's shell.
        let account = try configuration.identities.resolve(who.user, export: export)
        if let account {
            try ThreadIdentity.adopt(account)
            note.account = account.name
        }
        defer { if account != nil { ThreadIdentity.restore() } }
        if controlOnly {
            try serveTree(hello, conn: conn, ring: ring, exportFd: exportFd, beneath: beneath, linkFree: linkFree, modeMask: export.modeMask, who: who, note: note)
            return
        }
        if let announced = hello.options.selection?.count {
            if hello.direction == .pull {
                // The selection's paths follow the HELLO (the client's Sender walks a push's).
                // One deadline for all of it, and a bound on its bytes.
                var paths: [String] = []
                var bytes = 0
                let deadline = monotonicNs() + UInt64(handshakeNs)
                for _ in 0..<announced where paths.count < announced {
                    let now = monotonicNs()
                    guard now < deadline else { throw TransferError(.timeout, "the selection's paths did not arrive in time") }
                    let (type, payload) = try conn.receive(ring: ring, timeoutNs: Int64(deadline - now))
                    guard type == .selection else { throw TransferError.protocolError("expected SELECTION, got \(type)") }
                    bytes += payload.count
                    guard bytes <= Selection.bytesMax else { throw TransferError.protocolError("a selection of more than \(Selection.bytesMax) bytes") }
                    paths += try Selection.decode(payload, room: announced - paths.count)
                }
                hello.options.selection = paths
            } else {
                hello.options.selection = nil
            }
        }
        let perStream = TransferServer.streamBufferBytes(chunkBytes: hello.options.chunkBytes, sending: hello.direction == .pull)
        let streams = try lock.withLock { () throws -> Int in
            let mine = bufferBytesByUser[who.user, default: 0]
            let userLeft = TransferServer.userBufferBytes - mine
            let reserve = mine > 0 ? TransferServer.newcomerReserveBytes : 0
            let left = min(TransferServer.sessionBufferBytes, TransferServer.bufferBudgetBytes - bufferBytesGranted - reserve, userLeft)
            let granted = min(hello.options.streams ?? TransferOptions.automaticStreams, Wire.streamsMax, max(0, left) / perStream)
            guard granted >= 1 else {
                if userLeft < perStream {
                    throw TransferError(.busy, "your transfers running on this server already hold \(byteText(UInt64(mine))) of buffer memory, the share one user may have (\(byteText(UInt64(TransferServer.userBufferBytes)))); try again when one of them ends", resumable: true)
                }
                let kept = reserve > 0 ? "; the last \(byteText(UInt64(reserve))) are kept for users with no transfer running here" : ""
                throw TransferError(.busy, "the server's buffer memory is taken by other transfers (\(byteText(UInt64(bufferBytesGranted))) of \(byteText(UInt64(TransferServer.bufferBudgetBytes)))\(kept)); try again later", resumable: true)
            }
            bufferBytesGranted += granted * perStream
            bufferBytesByUser[who.user, default: 0] += granted * perStream
            return granted
        }
        defer {
            lock.withLock {
                bufferBytesGranted -= streams * perStream
                bufferBytesByUser[who.user, default: 0] -= streams * perStream
                if bufferBytesByUser[who.user] == 0 { bufferBytesByUser[who.user] = nil }
            }
        }
        let progress = TransferProgress()
        let ctx = SessionContext(control: conn, options: hello.options, progress: progress, idleTimeoutSeconds: configuration.idleTimeoutSeconds, protection: hello.options.protection, direction: hello.direction)
        let session = ServerSession(id: randomBytes(16), secret: randomBytes(32), streams: streams, ctx: ctx)
        session.account = account
        switch hello.direction {
        case .push:
            let base = try sys("cannot open the export") { dup(exportFd) }
            session.receiver = Receiver(ctx: ctx, baseFd: base, target: beneath, modeMask: export.modeMask, linkFree: linkFree, treeLinkFree: true)
        case .list, .delete, .commit:
            throw TransferError.protocolError("not a transfer")
        case .pull:
            // Component by component: a symlink inside the scope cannot lead out of it.
            let fd = try Paths.openStepwise(beneath: exportFd, beneath, flags: O_RDONLY, linkFree: linkFree)
            // Said now, in place of the WELCOME, not by the walk once the data streams join:
            // a session torn down while they joined let the client see a broken stream first.
            var st = stat()
            if !hello.options.recursive && fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR {
                Glibc.close(fd)
                throw TransferError(.usage, "source is a directory (use -r)")
            }
            session.sender = try Sender(ctx: ctx, rootFd: fd, name: hello.path)
        }
        // A session that comes while the server stops is not one `stop` could tell or wait for.
        guard lock.withLock({ () -> Bool in
            if stopped { return false }
            sessions[session.id] = session
            return true
        }) else { throw TransferError(.io, Self.stoppingMessage, resumable: true) }
        defer { lock.withLock { sessions[session.id] = nil } }
        // This session's data streams get in even while the unauthenticated budget is full.
        let reservedFor = note.ticket?.address
        if let a = reservedFor { lock.withLock { budget.reserve(address: a, count: streams) } }
        try conn.send(.welcome, Welcome(sessionID: session.id, secret: session.secret, streams: streams).encode(), ring: ring)
        // Every data stream must join within the handshake timeout.
        let deadline = monotonicNs() + UInt64(handshakeNs)
        let allJoined = Result { () throws in
            try session.lock.withLock { () throws in
                while session.joined < streams {
                    if let e = ctx.error { throw e }  // cut while its streams joined (a stop)
                    if monotonicNs() >= deadline { throw TransferError(.timeout, "only \(session.joined) of \(streams) data streams joined") }
                    session.cond.wait(seconds: 0.1)
                }
            }
        }
        if let a = reservedFor {
            let unused = streams - session.lock.withLock { session.joined }
            lock.withLock { budget.release(address: a, count: unused) }
        }
        try allJoined.get()
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
            let rate = p.seconds > 0 ? " (\(byteText(UInt64(Double(p.bytesDone) / p.seconds)))/s)" : ""
            let account = note.account.isEmpty ? "" : " as " + note.account
            let outcome = p.filesFailed > 0 ? "failed (\(p.filesFailed) files: \(p.failures.first ?? ""))" : "ok"
            let seconds = "\(Double(Int(p.seconds * 100)) / 100)"
            let rejected = (p.rejectedFrames > 0 ? ", \(p.rejectedFrames) frames rejected" : "") + (p.directBytes > 0 ? ", \(byteText(p.directBytes)) written direct" : "") + (p.directReadBytes > 0 ? ", \(byteText(p.directReadBytes)) read direct" : "") + (p.zeroCopyBytes > 0 ? ", \(byteText(p.zeroCopyBytes)) sent zero-copy" : "")
            let line: String = "\(what) by \(who.user)\(account) from \(conn.peer): \(outcome), \(p.filesTotal) files, \(byteText(p.bytesDone)) in \(seconds) s\(rate), \(byteText(p.wireBytes)) on the wire, \(hello.options.protection)\(rejected)"
            configuration.log(p.filesFailed > 0 ? .warning : .info, line)
            metrics.session(direction: note.action, protection: hello.options.protection.description, ok: p.filesFailed == 0, snapshot: p)
        } catch {
            var e = asTransferError(error)
            e.resumable = e.rerunResumes
            configuration.log(.warning, "\(what) by \(who.user) from \(conn.peer): failed: \(e.message)")
            metrics.session(direction: note.action, protection: hello.options.protection.description, ok: false, snapshot: progress.snapshot())
            record.result = "failed: " + e.message
            // The peer learns why, unless it is the one that went away.
            if !e.fromPeer { conn.sendError(e, ring: ring) }
        }
    }

    /// A listing or a deletion beneath the authorized path, as the user's account: one audit
    /// record, one log line.
    private func serveTree(_ hello: Hello, conn: Connection, ring: Ring, exportFd: Int32, beneath: [Substring], linkFree: Int, modeMask: UInt32, who: Principal, note: AuditNote) throws {
        let start = monotonicNs()
        var record = AuditLog.Record(user: who.user, peer: conn.peer, action: note.action, path: hello.path, result: "ok")
        record.center = who.center ?? ""
        record.account = note.account
        defer {
            record.seconds = Double(monotonicNs() - start) / 1e9
            configuration.audit?.write(record)
            metrics.session(direction: note.action, protection: "clear", ok: record.result == "ok", snapshot: TransferProgress.Snapshot())
        }
        let shown = hello.path.isEmpty ? "." : hello.path
        do {
            if hello.direction == .list {
                let fd = try Paths.openStepwise(beneath: exportFd, beneath, flags: O_RDONLY, linkFree: linkFree)
                let request = ListRequest(depth: hello.options.listDepth, digests: hello.options.checksum, filters: hello.options.filters)
                record.files = try Listing.serve(conn: conn, ring: ring, rootFd: fd, request: request)
                configuration.log(.info, "list '\(shown)' by \(who.user) from \(conn.peer): ok, \(record.files) entries\(request.digests ? " with digests" : "")")
            } else if hello.direction == .commit {
                // One request, one answer: the striped file's ranges checked and it renamed.
                guard let name = beneath.last else { throw TransferError(.path, "a commit names a file, not the export's root") }
                let dir = try Paths.openStepwise(beneath: exportFd, Array(beneath.dropLast()), flags: O_RDONLY | O_DIRECTORY, linkFree: linkFree)
                defer { Glibc.close(dir) }
                let (type, payload) = try conn.receive(ring: ring, timeoutNs: Int64(configuration.idleTimeoutSeconds) * 1_000_000_000, payloadBytesMax: 16 + 48 + CommitRequest.rangesMax * 16)
                guard type == .manifest else { throw TransferError.protocolError("expected a COMMIT request, got \(type)") }
                let request = try CommitRequest.decode(payload)
                let outcome = try StripedCommit.commit(dir: dir, name: String(name), request, modeMask: modeMask, display: shown)
                record.files = 1
                record.bytes = request.size
                try conn.send(.fileDone, [outcome == .committed ? 0 : 1], ring: ring)
                configuration.log(.info, "commit '\(shown)' (\(request.ranges.count) ranges) by \(who.user) from \(conn.peer): \(outcome == .committed ? "renamed into place" : "already committed")")
            } else {
                // The directory a deletion works in is never reached through a link at its name.
                let fd = try Paths.openStepwise(beneath: exportFd, beneath, flags: O_RDONLY | O_DIRECTORY, linkFree: linkFree, lastLinkFree: true)
                defer { Glibc.close(fd) }
                let (deleted, failed) = try Listing.serveDeletion(conn: conn, ring: ring, rootFd: fd, idleTimeoutNs: Int64(configuration.idleTimeoutSeconds) * 1_000_000_000)
                record.files = deleted
                if failed > 0 { record.result = "failed: \(failed) not deleted" }
                configuration.log(failed > 0 ? .warning : .info, "delete in '\(shown)' by \(who.user) from \(conn.peer): \(deleted) deleted, \(failed) failed")
            }
        } catch {
            var e = asTransferError(error)
            e.resumable = false
            record.result = "failed: " + e.message
            configuration.log(.warning, "\(note.action) '\(shown)' by \(who.user) from \(conn.peer): failed: \(e.message)")
            if !e.fromPeer { conn.sendError(e, ring: ring) }
        }
    }

    private func serveData(_ conn: Connection, ring: Ring, handshakeNs: Int64, ticket: AdmissionTicket) throws {
        let (type, payload) = try conn.receive(ring: ring, timeoutNs: handshakeNs, payloadBytesMax: 1024)
        guard type == .join else { throw TransferError.protocolError("expected JOIN, got \(type)") }
        let join = try Join.decode(payload)
        guard let session = lock.withLock({ sessions[join.sessionID] }),
              constantTimeEqual(join.proof, Join.proof(secret: session.secret, sessionID: session.id, streamIndex: join.streamIndex)) else {
            throw TransferError(.auth, "data stream for an unknown session or with a wrong proof")
        }
        try authenticated(ticket)
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
    _ = savedStartUmask  // the first call keeps the umask the process had
    umask(0)
    var lim = rlimit()
    if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 && lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = min(lim.rlim_max, 1 << 16)
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
    }
    signal(SIGPIPE, SIG_IGN)
}
