import CLiburing
import Glibc

/// One side of a copy: a local path or `ferry://HOST:PORT/PATH`.
public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
    case local(String)
    case remote(HostPort, path: String)
    /// A path beneath a directory (an export), opened component by component from it: a
    /// symbolic link can never lead above the directory it sits in, and nothing is resolved
    /// by name first and opened later. A daemon's job uses this for its local side.
    /// `linkFree`: how many of the first components are opened without following any link (a
    /// job's, down to the limit of the scope its owner's token had at submit, which the runner
    /// cannot ask again: `Paths.openStepwise`).
    /// No default: a caller that forgot it would follow links silently.
    case confined(root: String, components: [String], linkFree: Int)

    /// Parses `ferry://host:port/path`, `ferry://[v6]:port/path`, or a local path
    /// (`Location`, the one parser); the URL must name a port.
    public init(parsing text: String) throws {
        switch try Location(parsing: text) {
        case .local(let path): self = .local(path)
        case .ferry(let url):
            guard let address = url.address else { throw TransferError(.usage, "bad URL '\(url)': expected ferry://HOST:PORT/PATH") }
            self = .remote(address, path: url.path)
        case .gfs: throw TransferError(.usage, "'\(text)' is a Global Files path: copy from it with ferry cp (it resolves a replica), not as an endpoint")
        }
    }

    public var description: String {
        switch self {
        case .local(let p): p
        case .remote(let hp, let path): "ferry://\(hp)\(path)"
        case .confined(let root, let components, _): ([root] + components).joined(separator: "/")
        }
    }
}

/// How a client proves who it is and checks whom it talks to.
public struct ClientCredentials: Sendable {
    /// TLS context: the federation CA to verify servers with, and optionally this side's
    /// center certificate (daemons and center-to-center transfers present one).
    public var tls: TLSContext
    /// A user token (`ferry token issue`); nil when a center certificate alone authenticates.
    public var token: String?
    /// The center the server must prove to be (its certificate's name). nil: the URL's host
    /// must appear in the certificate (as a DNS name or an IP address).
    public var center: String?

    public init(tls: TLSContext, token: String?, center: String?) {
        self.tls = tls
        self.token = token
        self.center = center
    }
}

/// Runs copies between a local path and a Ferry server. This is the library entry point the
/// CLI, the daemon and the scheduler hook share.
public enum TransferClient {
    /// Copies `source` to `destination` (one of them remote). Progress is published to
    /// `progress` while it runs. Throws a `TransferError` naming the file and whether a rerun
    /// resumes when anything failed.
    public static func copy(from source: Endpoint, to destination: Endpoint, options: TransferOptions, credentials: ClientCredentials, progress: TransferProgress = TransferProgress()) throws -> TransferSummary {
        do {
            return try copyOnce(from: source, to: destination, options: options, credentials: credentials, progress: progress)
        } catch {
            var e = asTransferError(error)
            // Session-level causes (a lost connection, a timeout) get the transfer's name; a
            // per-file failure already names its file.
            if progress.snapshot().filesFailed == 0 && e.code != .usage {
                e.message = "copying '\(source)' to '\(destination)': " + e.message
            }
            throw e
        }
    }

    private static func copyOnce(from source: Endpoint, to destination: Endpoint, options: TransferOptions, credentials: ClientCredentials, progress: TransferProgress) throws -> TransferSummary {
        prepareProcess()
        guard (Wire.chunkBytesMin...Wire.chunkBytesMax).contains(options.chunkBytes) else {
            throw TransferError(.usage, "--chunk-size must be between 64K and 64M")
        }
        if let selection = options.selection {
            guard options.recursive, options.filters.isEmpty, options.range == nil else {
                throw TransferError(.usage, "a selection (--files-from) is of a directory tree: not with filters or --range")
            }
            guard (1...Selection.pathsMax).contains(selection.count) else {
                throw TransferError(.usage, "a selection (--files-from) of \(selection.count) paths: give 1 to \(Selection.pathsMax) (split a longer list)")
            }
            for p in selection {
                do { _ = try Selection.components(p) } catch { throw TransferError(.usage, "--files-from: " + asTransferError(error).message) }
            }
        }
        if let r = options.range {
            // Refused here with the reason, not by the server as a bad HELLO.
            guard !options.recursive, !options.checksum else { throw TransferError(.usage, "a range is of one file: not with --recursive or --checksum") }
            do { _ = try r.chunks(chunkBytes: options.chunkBytes) } catch { throw TransferError(.usage, asTransferError(error).message) }
        }
        switch (source, destination) {
        case (.local(let src), .remote(let server, let urlPath)):
            let (srcFd, isStream) = try openLocalSource(src, progress: progress)
            var st = stat()
            fstat(srcFd, &st)
            var (path, trailing) = try Paths.remoteRelative(urlPath)
            if trailing && isStream {
                Glibc.close(srcFd)
                throw TransferError(.usage, "name the destination file for \(src == "-" ? "standard input" : "'\(src)'") (the URL ends in '/')")
            }
            if trailing && (st.st_mode & S_IFMT) == S_IFREG {
                let base = src.split(separator: "/").last.map(String.init) ?? src
                path = path.isEmpty ? base : path + "/" + base
            }
            // One file of a few chunks cannot use more streams than it has chunks, and every
            // stream costs a connection, a thread and pinned buffers on both sides (a daemon
            // running thousands of small one-file jobs pays that per job).
            var options = options
            if isStream {
                options.streams = 1  // read in order by one data stream
            } else if (st.st_mode & S_IFMT) == S_IFREG {
                let chunks = options.range?.count ?? max(1, (Int(st.st_size) + options.chunkBytes - 1) / options.chunkBytes)
                options.streams = min(options.streams ?? TransferOptions.automaticStreams, chunks)
                // A range's chunks are the planner's: the chunk size is never fitted.
                if options.range == nil { options.chunkBytes = fittedChunkBytes(fileBytes: Int64(st.st_size), options.chunkBytes) }
            }
            return try run(server: server, direction: .push, path: path, options: options, credentials: credentials, progress: progress) { ctx throws in
                let sender = try Sender(ctx: ctx, rootFd: srcFd, name: src == "-" ? "standard input" : src, stream: isStream)
                return (sender.runControl, sender.runWorker)
            }
        case (.remote(let server, let urlPath), .local(let dst)):
            let (path, _) = try Paths.remoteRelative(urlPath)
            if let sink = try localSink(dst) {
                guard options.range == nil else { throw TransferError(.usage, "a range is written into a file's partial copy, not into \(sink.display)") }
                // Written in order: one data stream keeps the chunks in order (only a resent
                // chunk can be overtaken, and the sink holds a few such in memory).
                var options = options
                options.streams = 1
                return try run(server: server, direction: .pull, path: path, options: options, credentials: credentials, progress: progress) { ctx throws in
                    let receiver = Receiver(ctx: ctx, sink: sink)
                    return (receiver.runControl, receiver.runWorker)
                }
            }
            let (baseFd, target) = try localTarget(dst, remoteName: path.split(separator: "/").last.map(String.init), recursive: options.recursive)
            return try run(server: server, direction: .pull, path: path, options: options, credentials: credentials, progress: progress) { ctx throws in
                let receiver = Receiver(ctx: ctx, baseFd: baseFd, target: target)
                return (receiver.runControl, receiver.runWorker)
            }
        case (.confined(let root, let components, let linkFree), .remote(let server, let urlPath)):
            let rootFd = try openRoot(root)
            defer { Glibc.close(rootFd) }
            let srcFd = try Paths.openStepwise(beneath: rootFd, components.map { Substring($0) }, flags: O_RDONLY, linkFree: linkFree)
            var st = stat()
            fstat(srcFd, &st)
            var (path, trailing) = try Paths.remoteRelative(urlPath)
            if trailing && (st.st_mode & S_IFMT) == S_IFREG, let base = components.last {
                path = path.isEmpty ? base : path + "/" + base
            }
            var options = options
            if (st.st_mode & S_IFMT) == S_IFREG {
                let chunks = options.range?.count ?? max(1, (Int(st.st_size) + options.chunkBytes - 1) / options.chunkBytes)
                options.streams = min(options.streams ?? TransferOptions.automaticStreams, chunks)
                if options.range == nil { options.chunkBytes = fittedChunkBytes(fileBytes: Int64(st.st_size), options.chunkBytes) }
            }
            return try run(server: server, direction: .push, path: path, options: options, credentials: credentials, progress: progress) { ctx throws in
                let sender = try Sender(ctx: ctx, rootFd: srcFd, name: components.joined(separator: "/"))
                return (sender.runControl, sender.runWorker)
            }
        case (.remote(let server, let urlPath), .confined(let root, let components, let linkFree)):
            let (path, _) = try Paths.remoteRelative(urlPath)
            let rootFd = try openRoot(root)
            defer { Glibc.close(rootFd) }
            var target = components.map { Substring($0) }
            // An existing directory receives a single file under its remote name, as for a
            // local destination; it is opened the same confined way to find out.
            if !options.recursive, let name = path.split(separator: "/").last,
               let fd = try? Paths.openStepwise(beneath: rootFd, target, flags: O_RDONLY | O_DIRECTORY, linkFree: linkFree) {
                Glibc.close(fd)
                target.append(name)
            }
            guard let last = target.last else { throw TransferError(.usage, "name the destination beneath '\(root)'") }
            let parent = try Paths.makeDirectories(beneath: rootFd, Array(target.dropLast()), linkFree: min(linkFree, target.count - 1))
            return try run(server: server, direction: .pull, path: path, options: options, credentials: credentials, progress: progress) { ctx throws in
                // A daemon's job: the tree's destination is not reached through a link (as the server does).
                let receiver = Receiver(ctx: ctx, baseFd: parent, target: [last], treeLinkFree: true)
                return (receiver.runControl, receiver.runWorker)
            }
        case (.confined, _), (_, .confined):
            throw TransferError(.usage, "a confined path is copied to or from a ferry:// URL")
        case (.local, .local):
            throw TransferError(.usage, "one side must be a ferry:// URL (for a local copy use cp)")
        case (.remote, .remote):
            throw TransferError(.usage, "copies between two servers go through the source center's daemon (ferry cp with --api, or ferry jobs submit)")
        }
    }

    /// The chunk size for a push of one regular file of `fileBytes`: a file that fits in one
    /// chunk gets the smallest chunk (a power of two, at least `Wire.chunkBytesMin`) that holds
    /// it, never more than `chunkBytes`. Each data stream's buffers, on both sides, are sized
    /// from the chunk size and registered with io_uring (every page faulted in, zeroed and
    /// pinned, and unpinned at the end): two 4 MiB buffers per side for a 4 KiB file were most
    /// of a one-file job's CPU (issue 14, item 6; `perf` in bench/RESULTS.md). A file of one
    /// chunk has one chunk whatever its size, so nothing else changes; a larger file keeps the
    /// chunk size asked for (its journal, and so its resume, depends on it). The same file
    /// gets the same size on every attempt, so a rerun finds its journal.
    static func fittedChunkBytes(fileBytes: Int64, _ chunkBytes: Int) -> Int {
        guard fileBytes >= 0, fileBytes < Int64(chunkBytes) else { return chunkBytes }
        var fitted = Wire.chunkBytesMin
        while fitted < chunkBytes && Int64(fitted) < fileBytes { fitted *= 2 }
        return min(fitted, chunkBytes)
    }

    /// The directory a confined endpoint resolves beneath.
    private static func openRoot(_ root: String) throws -> Int32 {
        let fd = open(root, FERRY_O_PATH | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { throw TransferError.system("cannot open '\(root)'", errno: errno) }
        return fd
    }

    /// The local source of a push, opened for reading. A regular file or directory is opened
    /// without blocking; `-` (standard input), a FIFO or a character device is a stream: sent
    /// as it is read, in order, on one data stream, its length said at its end (nothing is
    /// buffered on disk; a chunk damaged in flight cannot be read again, so that copy fails
    /// and is rerun whole). Block devices and sockets are refused.
    private static func openLocalSource(_ src: String, progress: TransferProgress) throws -> (Int32, isStream: Bool) {
        if src == "-" {
            let fd = dup(0)
            if fd < 0 { throw TransferError.system("cannot read standard input", errno: errno) }
            return (fd, true)
        }
        var st = stat()
        guard stat(src, &st) == 0 else { throw TransferError.system("cannot read '\(src)'", errno: errno) }
        let kind = st.st_mode & S_IFMT
        if kind == S_IFIFO || kind == S_IFCHR {
            // The user named it: waiting for its writer is what they asked for.
            let fd = open(src, O_RDONLY | O_CLOEXEC)
            if fd < 0 { throw TransferError.system("cannot read '\(src)'", errno: errno) }
            return (fd, true)
        }
        guard Paths.isData(st.st_mode) else {
            throw TransferError(.usage, "'\(src)' is \(Paths.kindName(st.st_mode)): Ferry reads regular files, directories, FIFOs, character devices and - (standard input)")
        }
        let fd = open(src, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 { throw TransferError.system("cannot read '\(src)'", errno: errno) }
        do { try Paths.settle(fd, src) } catch {
            Glibc.close(fd)
            throw error
        }
        return (fd, false)
    }

    /// A pull's destination that is written in place: `-` (standard output), or an existing
    /// character device or FIFO. nil for anything else (a file or directory path). A block
    /// device is refused: writing one is never what a copy means.
    private static func localSink(_ dst: String) throws -> SinkTarget? {
        if dst == "-" {
            let fd = dup(1)
            if fd < 0 { throw TransferError.system("cannot use standard output", errno: errno) }
            return SinkTarget(fd: fd, display: "standard output")
        }
        var st = stat()
        guard stat(dst, &st) == 0 else { return nil }
        let kind = st.st_mode & S_IFMT
        if kind == S_IFBLK || kind == S_IFSOCK {
            throw TransferError(.usage, "'\(dst)' is \(Paths.kindName(st.st_mode)): Ferry does not write into one")
        }
        guard kind == S_IFCHR || kind == S_IFIFO else { return nil }
        // A FIFO's open waits for its reader, as cp's would: the user named it.
        let fd = open(dst, O_WRONLY | O_CLOEXEC)
        if fd < 0 { throw TransferError.system("cannot write '\(dst)'", errno: errno) }
        return SinkTarget(fd: fd, display: "'\(dst)' (\(Paths.kindName(st.st_mode)))")
    }

    /// The directory a local destination resolves beneath, and the target's name in it.
    /// An existing directory, or a path ending in '/', receives a single file under its
    /// remote name.
    private static func localTarget(_ dst: String, remoteName: String?, recursive: Bool) throws -> (Int32, [Substring]) {
        var path = dst
        var st = stat()
        let isDir = stat(dst, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
        if (dst.hasSuffix("/") || isDir) && !recursive {
            guard let name = remoteName else { throw TransferError(.usage, "name the destination file") }
            path = (dst.hasSuffix("/") ? dst : dst + "/") + name
        }
        var absolute = path.hasPrefix("/") ? path : {
            var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            return (getcwd(&buf, buf.count) != nil ? String(cString: buf) : ".") + "/" + path
        }()
        while absolute.count > 1 && absolute.hasSuffix("/") { absolute.removeLast() }
        if absolute.hasSuffix("/.") || absolute.hasSuffix("/..") || absolute == "/" {
            guard let real = realpath(absolute, nil) else { throw TransferError.system("cannot use '\(dst)'", errno: errno) }
            absolute = String(cString: real)
            free(real)
        }
        let parts = absolute.split(separator: "/")
        guard let name = parts.last else { throw TransferError(.usage, "cannot copy onto '/'") }
        let parent = "/" + parts.dropLast().joined(separator: "/")
        var made = parent
        if access(parent, F_OK) != 0 {
            // Create missing parents like `mkdir -p` (0755 less the user's umask: the
            // process runs with umask 0 so that copied modes are exact).
            made = ""
            for p in parts.dropLast() {
                made += "/" + p
                if mkdir(made, 0o755 & ~startUmask) != 0 && errno != EEXIST { throw TransferError.system("cannot create '\(made)'", errno: errno) }
            }
            made = parent
        }
        let fd = open(made, FERRY_O_PATH | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { throw TransferError.system("cannot open '\(parent)'", errno: errno) }
        return (fd, [name])
    }

    /// Connects, runs the TLS handshake (the server's certificate checked against the CA and
    /// the center name), waits for the server's READY and exchanges one PING. Returns the
    /// seconds to the end of the handshake (READY received) and the PING round trip.
    public static func ping(_ server: HostPort, credentials: ClientCredentials) throws -> (handshake: Double, roundTrip: Double, center: String, certificateNotAfter: Int64?) {
        prepareProcess()
        let ring = try Ring(entries: 8)
        let t0 = monotonicNs()
        let control = Connection(fd: try Socket.connect(server))
        defer { control.close() }
        try control.sendPreamble(role: .control, ring: ring)
        control.tls = try credentials.tls.handshake(fd: control.fd, expected: credentials.center ?? server.host, timeoutMs: 30_000)
        let (ready, name) = try control.receive(ring: ring, timeoutNs: 30_000_000_000, payloadBytesMax: 1024)
        guard ready == .ready else { throw TransferError.protocolError("expected READY, got \(ready)") }
        let t1 = monotonicNs()
        try control.send(.ping, ring: ring)
        let (pong, _) = try control.receive(ring: ring, timeoutNs: 30_000_000_000, payloadBytesMax: 0)
        guard pong == .ping else { throw TransferError.protocolError("expected PING, got \(pong)") }
        let t2 = monotonicNs()
        return (Double(t1 - t0) / 1e9, Double(t2 - t1) / 1e9, String(decoding: name, as: UTF8.self), control.tls?.peerNotAfter)
    }

    private typealias Roles = (control: () throws -> Void, worker: (Connection) -> Void)

    static let handshakeNs: Int64 = 30_000_000_000

    /// A control connection that has passed the TLS handshake and read the server's READY.
    private static func connectControl(_ server: HostPort, credentials: ClientCredentials, ring: Ring) throws -> Connection {
        let control = Connection(fd: try Socket.connect(server))
        do {
            try handshake(control, server: server, credentials: credentials, ring: ring)
        } catch {
            control.close()
            throw error
        }
        return control
    }

    private static func handshake(_ control: Connection, server: HostPort, credentials: ClientCredentials, ring: Ring) throws {
        try control.sendPreamble(role: .control, ring: ring)
        do {
            // Resumed when this context holds a ticket of the same peer at the same address (a
            // daemon running job after job to a peer): no certificates sent and verified again.
            let expected = credentials.center ?? server.host
            control.tls = try credentials.tls.handshake(fd: control.fd, expected: expected, sessionKey: TLSContext.sessionKey(expected: expected, server: server),
                                                        timeoutMs: Int(handshakeNs / 1_000_000))
        } catch {
            // The server may have said why (for example, too many connections) before TLS.
            var e = asTransferError(error)
            e.message = "\(server): " + e.message
            throw e
        }
        // The server speaks first after the handshake: in TLS 1.3 it checks a client
        // certificate only after the client's side of the handshake is done, and its verdict
        // (an alert) must be read, not lost under a write to a closed connection. The TLS
        // layer tells that verdict (`auth`: "... refused the session: ... alert unknown ca")
        // from a server that died or was cut off here (`io`, resumable: a striped part then
        // goes to another node).
        let (ready, _) = try control.receive(ring: ring, timeoutNs: handshakeNs, payloadBytesMax: 1024)
        guard ready == .ready else { throw TransferError.protocolError("expected READY, got \(ready)") }
    }

    private static func run(server: HostPort, direction: Direction, path: String, options: TransferOptions, credentials: ClientCredentials, progress: TransferProgress, makeRoles: (SessionContext) throws -> Roles) throws -> TransferSummary {
        let ring = try Ring(entries: 16)
        let control = try connectControl(server, credentials: credentials, ring: ring)
        defer { control.close() }
        try control.send(.hello, Hello(token: Array((credentials.token ?? "").utf8), direction: direction, path: path, options: options).encode(), ring: ring)
        if direction == .pull, let selection = options.selection {
            for frame in Selection.frames(selection) { try control.send(.selection, frame, ring: ring) }
        }
        let (type, payload) = try control.receive(ring: ring, timeoutNs: handshakeNs, payloadBytesMax: 4096)
        guard type == .welcome else { throw TransferError.protocolError("expected WELCOME, got \(type)") }
        let welcome = try Welcome.decode(payload)
        let ctx = SessionContext(control: control, options: options, progress: progress, idleTimeoutSeconds: 120, protection: options.protection, direction: direction)
        progress.whenCancelled { [weak ctx] reason in ctx?.fail(TransferError(.io, reason, resumable: true)) }
        var data: [Connection] = []
        defer { for d in data { d.close() } }
        // (A server refuses what it can before its WELCOME, a pulled directory without -r
        // included: a refusal after it, while these streams join, showed as a broken stream.)
        // All streams connect and ask to join at once, then their answers are read: two round
        // trips for the lot, where joining them one by one took two per stream (the server takes
        // JOINs in any order).
        for (i, fd) in try Socket.connect(alike: control.fd, count: welcome.streams).enumerated() {
            let c = Connection(fd: fd)
            c.streamIndex = i
            data.append(c)
        }
        for c in data {
            try c.sendPreamble(role: .data, ring: ring)
            try c.send(.join, Join(sessionID: welcome.sessionID, streamIndex: c.streamIndex, secret: welcome.secret).encode(), ring: ring)
        }
        for c in data {
            let (t, _) = try c.receive(ring: ring, timeoutNs: handshakeNs, payloadBytesMax: 0)
            guard t == .joined else { throw TransferError.protocolError("expected JOINED, got \(t)") }
            ctx.add(data: c)
        }
        let roles = try makeRoles(ctx)
        let workers = WaitGroup()
        for c in data {
            workers.add()
            let worker = roles.worker
            let conn = c
            spawnThread(name: "ferry-stream") {
                worker(conn)
                workers.done()
            }
        }
        var failure: TransferError?
        do { try roles.control() } catch { failure = asTransferError(error) }
        if failure != nil { ctx.fail(failure!) }
        _ = workers.wait(seconds: 30)
        if let failure {
            var e = failure
            if !e.fromPeer, let verdict = ctx.peerVerdict() { e = verdict }
            if !e.fromPeer { e.resumable = e.rerunResumes }  // remote errors carry the server's verdict
            throw e
        }
        let snap = progress.snapshot()
        if snap.filesFailed > 0 {
            let first = snap.failures.first ?? "unknown error"
            let more = snap.filesFailed > 1 ? " (and \(snap.filesFailed - 1) more failed files)" : ""
            // The first failure's code, the peer's when it said it (a daemon job keys on it).
            let code = snap.failureCode ?? .io
            var e = TransferError(code, (snap.failureFromPeer ? "remote error (\(code.name)): " : "") + first + more)
            // A rerun resumes only what it can mend: not a path in the way, a refused account, a
            // missing file (the first failure's code decides, as it does for the daemon's jobs).
            e.resumable = e.rerunResumes
            e.fromPeer = snap.failureFromPeer
            throw e
        }
        var summary = TransferSummary(snap)
        summary.rangeHashes = ctx.rangeHashes
        return summary
    }
}

extension TransferClient {
    /// Lists `endpoint` (a local path or a ferry:// URL; a server checks the same token scope
    /// as a copy from it): each entry is handed to `each` as it arrives, the tree is never held
    /// here. Returns the number of entries and of those the filters left out.
    @discardableResult
    public static func list(_ endpoint: Endpoint, request: ListRequest, credentials: ClientCredentials, each: (ListEntry) throws -> Void) throws -> (entries: UInt64, excluded: UInt64) {
        prepareProcess()
        /// A local tree (`fd` owned), walked here.
        func walk(_ fd: Int32) throws -> (entries: UInt64, excluded: UInt64) {
            var n: UInt64 = 0
            let excluded = try Listing.walk(rootFd: fd, request: request) { e in
                n += 1
                try each(e)
            }
            return (n, UInt64(excluded))
        }
        switch endpoint {
        case .local(let path):
            return try walk(try openLocalTree(path))
        case .confined(let root, let components, let linkFree):
            let rootFd = try openRoot(root)
            defer { Glibc.close(rootFd) }
            return try walk(try Paths.openStepwise(beneath: rootFd, components.map { Substring($0) }, flags: O_RDONLY, linkFree: linkFree))
        case .remote(let server, let urlPath):
            var options = TransferOptions()
            options.recursive = true
            options.checksum = request.digests
            options.filters = request.filters
            options.listDepth = request.depth
            let (control, ring) = try treeSession(server, urlPath, .list, options, credentials)
            defer { control.close() }
            var n: UInt64 = 0
            // A listing with digests reads whole files between frames: the wait is bounded
            // by the server's own idle timeout, not by a short one here.
            let waitNs: Int64 = request.digests ? 3_600_000_000_000 : 300_000_000_000
            for _ in 0..<Int.max {
                let (type, payload) = try control.receive(ring: ring, timeoutNs: waitNs, payloadBytesMax: 2 * Sender.manifestFrameBytesTarget + (1 << 20))
                switch type {
                case .manifest:
                    for e in try Listing.decode(payload) {
                        guard n > 0 || e.path.isEmpty else { throw TransferError.protocolError("a listing must start with its root") }
                        guard n == 0 || !e.path.isEmpty else { throw TransferError.protocolError("a listing names its root twice") }
                        n += 1
                        try each(e)
                    }
                case .manifestEnd:
                    var r = ByteReader(payload)
                    let count = try r.u64()
                    let excluded = try r.u64()
                    try r.expectEnd()
                    guard count == n else { throw TransferError.protocolError("the listing ended after \(n) of \(count) entries") }
                    return (n, excluded)
                case .ping:
                    continue
                default:
                    throw TransferError.protocolError("unexpected \(type) in a listing")
                }
            }
            throw TransferError.protocolError("listing without an end")
        }
    }

    /// Removes `items` (paths relative to `endpoint`, children before their directories)
    /// beneath the directory `endpoint`; returns what could not be removed and why.
    public static func delete(_ items: [(path: String, isDirectory: Bool)], beneath endpoint: Endpoint, credentials: ClientCredentials) throws -> [(path: String, why: String)] {
        prepareProcess()
        /// A local directory (`fd` owned), its entries removed here.
        func remove(_ fd: Int32) -> [(path: String, why: String)] {
            defer { Glibc.close(fd) }
            return items.compactMap { i in Listing.remove(beneath: fd, path: i.path, isDirectory: i.isDirectory).map { (i.path, $0) } }
        }
        switch endpoint {
        case .local(let path):
            let fd = open(path, FERRY_O_PATH | O_DIRECTORY | O_CLOEXEC)
            if fd < 0 { throw TransferError.system("cannot open '\(path)'", errno: errno) }
            return remove(fd)
        case .confined(let root, let components, let linkFree):
            let rootFd = try openRoot(root)
            defer { Glibc.close(rootFd) }
            // The directory a daemon's deletion works in is not reached through a link at its name.
            return remove(try Paths.openStepwise(beneath: rootFd, components.map { Substring($0) }, flags: O_RDONLY | O_DIRECTORY, linkFree: linkFree, lastLinkFree: true))
        case .remote(let server, let urlPath):
            let (control, ring) = try treeSession(server, urlPath, .delete, TransferOptions(), credentials)
            defer { control.close() }
            var failures: [(String, String)] = []
            var start = 0
            while start < items.count {
                let end = min(items.count, start + Listing.deletionsPerFrameMax)
                try control.send(.manifest, Listing.encodeDeletions(items[start..<end]), ring: ring)
                let (type, payload) = try control.receive(ring: ring, timeoutNs: 300_000_000_000)
                guard type == .fileDone else { throw TransferError.protocolError("expected FILE_DONE, got \(type)") }
                var r = ByteReader(payload)
                let n = Int(try r.u32())
                guard n <= end - start else { throw TransferError.protocolError("more failures than deletions") }
                for _ in 0..<n { failures.append((try r.string(maxBytes: PathLimits.pathBytesMax), try r.string(maxBytes: 1000))) }
                try r.expectEnd()
                start = end
            }
            try control.send(.end, ring: ring)
            let (type, _) = try control.receive(ring: ring, timeoutNs: 60_000_000_000)
            guard type == .endAck else { throw TransferError.protocolError("expected END_ACK, got \(type)") }
            return failures
        }
    }

    /// Renames a striped file into place once all its ranges are in (`StripedCommit`): at the
    /// server (`Direction.commit`, with the user's rights there) or here for a local or confined
    /// destination. The endpoint names the file.
    public static func commit(_ endpoint: Endpoint, _ request: CommitRequest, credentials: ClientCredentials) throws -> StripedCommit.Outcome {
        prepareProcess()
        try request.checkCover()  // said here, before a connection
        func local(_ parent: Int32, _ name: String, _ shown: String) throws -> StripedCommit.Outcome {
            defer { Glibc.close(parent) }
            return try StripedCommit.commit(dir: parent, name: name, request, display: shown)
        }
        switch endpoint {
        case .local(let path):
            let slash = path.lastIndex(of: "/")
            let parent = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
            let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
            let fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd < 0 { throw TransferError.system("cannot open the directory of '\(path)'", errno: errno) }
            return try local(fd, name, path)
        case .confined(let root, let components, let linkFree):
            guard let last = components.last else { throw TransferError(.usage, "a commit names a file beneath '\(root)'") }
            let rootFd = try openRoot(root)
            defer { Glibc.close(rootFd) }
            let parent = try Paths.openStepwise(beneath: rootFd, components.dropLast().map { Substring($0) }, flags: O_RDONLY | O_DIRECTORY, linkFree: min(linkFree, components.count - 1))
            return try local(parent, last, components.joined(separator: "/"))
        case .remote(let server, let urlPath):
            let (control, ring) = try treeSession(server, urlPath, .commit, TransferOptions(), credentials)
            defer { control.close() }
            try control.send(.manifest, request.encode(), ring: ring)
            // The server reads the ranges' journals, then the whole partial copy once (each chunk
            // against its record), and syncs it: the wait is 5 minutes plus the file at 50 MB/s.
            let waitNs = Int64(300 + min(request.size / 50_000_000, 1 << 20)) * 1_000_000_000
            let (type, payload) = try control.receive(ring: ring, timeoutNs: waitNs, payloadBytesMax: 4096)
            guard type == .fileDone, payload.count == 1, payload[0] <= 1 else { throw TransferError.protocolError("expected a commit's answer, got \(type)") }
            return payload[0] == 0 ? .committed : .alreadyCommitted
        }
    }

    /// A listing or deletion session: the control connection alone, its HELLO sent. Nothing but
    /// the control stream (TLS) is used, so the data-stream protection asked is `clear`.
    private static func treeSession(_ server: HostPort, _ urlPath: String, _ direction: Direction, _ options: TransferOptions,
                                    _ credentials: ClientCredentials) throws -> (Connection, Ring) {
        let (path, _) = try Paths.remoteRelative(urlPath)
        let ring = try Ring(entries: 8)
        let control = try connectControl(server, credentials: credentials, ring: ring)
        var options = options
        options.protection = .clear
        do {
            try control.send(.hello, Hello(token: Array((credentials.token ?? "").utf8), direction: direction, path: path, options: options).encode(), ring: ring)
        } catch {
            control.close()
            throw error
        }
        return (control, ring)
    }

    /// A local tree to list: a regular file or a directory, opened without blocking on (or
    /// opening) anything else.
    private static func openLocalTree(_ path: String) throws -> Int32 {
        var st = stat()
        guard stat(path, &st) == 0 else { throw TransferError.system("cannot read '\(path)'", errno: errno) }
        try Paths.requireData(st.st_mode, path)
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 { throw TransferError.system("cannot read '\(path)'", errno: errno) }
        do { try Paths.settle(fd, path, same: st) } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }
}
