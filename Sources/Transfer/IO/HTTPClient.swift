import Glibc

/// The one HTTP client of Ferry: the CLI's calls to a daemon, the scheduler hooks, and one
/// daemon following another's catalog all go through it (it replaced two clients built on
/// Foundation's URLSession, which cannot trust a private CA).
///
/// HTTP/1.1, one request per connection (`Connection: close`), blocking with deadlines, on
/// the engine's own sockets and TLS:
/// - `https://` is TLS 1.3 verified against the federation CA (`ca`), for the URL's host (a
///   certificate's subjectAltName, as `ferry ca issue --host` wrote it) and, when the caller
///   knows it (`center`), for that center: a daemon that shows a certificate of another
///   center, or one the CA did not sign, is refused before anything is sent.
/// - `http://` only to a loopback address (127.0.0.0/8, ::1, localhost): a token or a
///   center's assertion never crosses a network in clear.
/// - Answers are capped (`maxBody`); `Content-Length`, chunked and read-to-close bodies;
///   `stream` gets the body as it arrives (server-sent events) instead of a buffer, and with
///   `idle` the answer may go on for as long as its bytes keep coming.
public struct HTTPClient: Sendable {
    public struct Response: Sendable {
        public var status: Int
        /// Header names in lower case.
        public var headers: [String: String]
        public var body: [UInt8]
    }

    public struct Target: Sendable, Equatable {
        public var tls: Bool
        public var host: String
        public var port: UInt16
        /// Path prefix of the base URL, without a trailing slash ("" for none).
        public var prefix: String

        /// `https://HOST[:PORT][/PREFIX]` or `http://...`; bare `HOST:PORT` is https, except on
        /// loopback where it is http (as the daemon's own default, `api_tls`).
        public init(parsing url: String) throws {
            var rest = Substring(url)
            var scheme: String?
            let marker = Array("://")
            let chars = Array(rest)
            if let i = (0..<max(0, chars.count - 2)).first(where: { Array(chars[$0..<($0 + 3)]) == marker }) {
                scheme = String(chars[0..<i]).lowercased()
                rest = rest.dropFirst(i + 3)
            }
            guard scheme == nil || scheme == "http" || scheme == "https" else {
                throw TransferError(.usage, "'\(url)' is not an http:// or https:// URL")
            }
            let authority = rest.prefix { $0 != "/" }
            var path = String(rest.dropFirst(authority.count))
            while path.hasSuffix("/") { path.removeLast() }
            let hp: HostPort
            do {
                // No port: the scheme's (80, 443).
                let hasPort = authority.hasPrefix("[") ? authority.contains("]:") : authority.contains(":")
                hp = try HostPort(parsing: hasPort ? String(authority) : "\(authority):\(scheme == "http" ? 80 : 443)")
            } catch {
                throw TransferError(.usage, "'\(url)' has no HOST[:PORT]")
            }
            host = hp.host
            port = hp.port
            prefix = path
            tls = scheme.map { $0 == "https" } ?? !HTTPClient.isLoopback(hp.host)
        }

        public var url: String {
            let h = host.contains(":") ? "[\(host)]" : host
            return (tls ? "https://" : "http://") + h + ":\(port)" + prefix
        }
    }

    public let target: Target
    /// Federation CA (PEM) for https.
    public let ca: String?
    /// The center the server's certificate must name (nil: any center the CA signed).
    public let center: String?
    public var timeout: Double
    public var maxBody: Int
    /// The largest chunk of a streamed answer that goes on (`idle`): 1 MiB and a little.
    public static let streamChunkMax = (1 << 20) + 4096

    public init(_ url: String, ca: String?, center: String? = nil, timeout: Double = 30, maxBody: Int = 64 << 20) throws {
        target = try Target(parsing: url)
        self.ca = ca
        self.center = center
        self.timeout = timeout
        self.maxBody = maxBody
        if !target.tls && !HTTPClient.isLoopback(target.host) {
            throw TransferError(.usage, "\(url): plain http only to this host (127.0.0.1, ::1); a daemon elsewhere is https://HOST:PORT")
        }
        if target.tls && (ca ?? "").isEmpty {
            throw TransferError(.usage, "\(url): https needs the federation CA (--ca FILE or FERRY_CA)")
        }
    }

    static func trim(_ s: Substring) -> String {
        String(s.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }

    public static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" || host == "[::1]" { return true }
        let parts = host.split(separator: ".")
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    /// One request. `headers` are added as given; a body gets its Content-Length. With
    /// `stream`, a 2xx answer's body goes there chunk by chunk (return false to stop reading)
    /// and the response's `body` stays empty; another answer's body is collected as usual.
    ///
    /// `idle` (with `stream`: an event stream that lasts as long as the job it follows): the
    /// time limit covers the answer's head and then each wait for more bytes, at most `idle`
    /// seconds, not the whole answer; `maxBody` does not apply (the sink keeps what it keeps).
    /// `check` is called at least four times a second while the answer is awaited: what it
    /// throws ends the request (a user's Ctrl-C, the caller's own deadline).
    public func send(_ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil,
                     stream: ((ArraySlice<UInt8>) throws -> Bool)? = nil, idle: Double? = nil,
                     check: (() throws -> Void)? = nil) throws -> Response {
        // The request line is METHOD SP PATH: neither may carry a space or a line break (a
        // caller's unescaped text would end the line and start headers of its own).
        guard !method.isEmpty, !(method + path).contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" }), path.hasPrefix("/") else {
            throw TransferError(.usage, "not a request path: '\(path.prefix(80))' (spaces and line breaks must be percent-encoded)")
        }
        let deadline = Int64(monotonicNs()) + Int64(timeout * 1e9)
        let conn = try Conn(target: target, ca: ca, center: center, timeoutMs: Int32(clamping: Int(timeout * 1000)))
        defer { conn.close() }
        var head = "\(method) \(target.prefix)\(path) HTTP/1.1\r\nHost: \(target.host.contains(":") ? "[\(target.host)]" : target.host):\(target.port)\r\n"
        head += "Connection: close\r\nUser-Agent: ferry\r\nAccept: application/json\r\n"
        for (k, v) in headers {
            guard !k.contains(where: { $0 == "\r" || $0 == "\n" || $0 == ":" }), !v.contains(where: { $0 == "\r" || $0 == "\n" }) else {
                throw TransferError(.usage, "a header with a line break or colon in its name")
            }
            head += "\(k): \(v)\r\n"
        }
        if let body { head += "Content-Length: \(body.count)\r\n" }
        head += "\r\n"
        try conn.write(Array(head.utf8) + (body ?? []))

        var reader = Reader(conn: conn, deadline: deadline, what: target.url, check: check)
        let statusLine = try reader.line(max: 8192)
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            throw TransferError(.protocolViolation, "\(target.url) answered something other than HTTP: \(statusLine.prefix(80))")
        }
        var headers: [String: String] = [:]
        for _ in 0..<200 {
            let l = try reader.line(max: 65536)
            if l.isEmpty { break }
            guard let colon = l.firstIndex(of: ":") else { continue }
            headers[l[..<colon].lowercased()] = HTTPClient.trim(l[l.index(after: colon)...])
        }
        var collected: [UInt8] = []
        var total = 0
        // Returns false when the sink wants no more.
        // Only a 2xx answer streams; any other is collected (its problem details).
        let sink = (200..<300).contains(status) ? stream : nil
        func deliver(_ bytes: ArraySlice<UInt8>) throws -> Bool {
            total += bytes.count
            if sink != nil, let idle, idle > 0 {
                reader.deadline = Int64(monotonicNs()) + Int64(idle * 1e9)  // an answer that goes on
            } else if total > maxBody { throw TransferError(.protocolViolation, "\(target.url)\(path.prefix { $0 != "?" }): an answer larger than \(maxBody >> 20) MiB, cut off") }
            if let sink { return try sink(bytes) }
            collected += bytes
            return true
        }
        if method == "HEAD" || status == 204 || status == 304 || (100..<200).contains(status) {
            return Response(status: status, headers: headers, body: [])
        }
        if headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
            chunks: for _ in 0..<Int.max {
                let sizeLine = try reader.line(max: 1024)
                guard let size = Int(HTTPClient.trim(sizeLine.prefix { $0 != ";" }), radix: 16), size >= 0 else {
                    throw TransferError(.protocolViolation, "\(target.url): a bad chunk size '\(sizeLine.prefix(20))'")
                }
                if size == 0 { break }
                if size > maxBody { throw TransferError(.protocolViolation, "\(target.url): a chunk larger than \(maxBody >> 20) MiB") }
                // A streamed answer's sink bounds what it keeps (an event of at most 1 MiB):
                // a chunk is read whole before it is delivered, so it is bounded here too.
                if sink != nil && idle != nil && size > HTTPClient.streamChunkMax {
                    throw TransferError(.protocolViolation, "\(target.url): a chunk of \(size) bytes in an event stream (at most \(HTTPClient.streamChunkMax))")
                }
                let data = try reader.exactly(size)
                _ = try reader.line(max: 2)
                if try !deliver(data[...]) { break chunks }
            }
        } else if let lengthText = headers["content-length"] {
            guard let length = Int(lengthText), length >= 0 else { throw TransferError(.protocolViolation, "\(target.url): a bad Content-Length") }
            if length > maxBody { throw TransferError(.protocolViolation, "\(target.url)\(path.prefix { $0 != "?" }): an answer larger than \(maxBody >> 20) MiB, cut off") }
            var left = length
            while left > 0 {
                let part = try reader.some(max: min(left, 1 << 20))
                if part.isEmpty { throw TransferError(.io, "\(target.url) closed the connection in the middle of its answer", resumable: true) }
                left -= part.count
                if try !deliver(part[...]) { break }
            }
        } else {
            // Neither chunked nor a length: the answer runs to the connection's end. Over TLS
            // that end must be the server's close_notify, or a cut answer would pass for whole.
            for _ in 0..<Int.max {
                let part = try reader.some(max: 1 << 20)
                if part.isEmpty {
                    if let tls = conn.tls, !tls.closedCleanly {
                        throw TransferError(.io, "\(target.url) ended its answer without TLS close_notify: it may be cut short", resumable: true)
                    }
                    break
                }
                if try !deliver(part[...]) { break }
            }
        }
        return Response(status: status, headers: headers, body: collected)
    }

    /// A connection: plain or TLS, with deadlines.
    final class Conn {
        let fd: Int32
        let tls: TLSChannel?
        let timeoutMs: Int32
        let peer: String

        init(target: Target, ca: String?, center: String?, timeoutMs: Int32) throws {
            peer = target.url
            self.timeoutMs = timeoutMs
            fd = try Socket.connect(HostPort(host: target.host, port: target.port), timeoutMs: min(timeoutMs, 30_000))
            guard target.tls else { tls = nil; return }
            do {
                let ctx = try HTTPClient.context(ca: ca ?? "")
                let channel = try ctx.handshake(fd: fd, expected: target.host, timeoutMs: Int(min(timeoutMs, 30_000)))
                if let center, channel.peerCommonName != center {
                    throw TransferError(.auth, "\(target.url) presented the certificate of '\(channel.peerCommonName ?? "nobody")', not of center \(center)")
                }
                tls = channel
            } catch {
                Glibc.close(fd)
                throw error
            }
        }

        func write(_ bytes: [UInt8]) throws {
            if let tls {
                try bytes.withUnsafeBytes { try tls.write($0.baseAddress!, $0.count, peer: peer) }
                return
            }
            var at = 0
            while at < bytes.count {
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                guard poll(&pfd, 1, timeoutMs) == 1 else { throw TransferError(.timeout, "\(peer) accepts no data", resumable: true) }
                let n = bytes[at...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n < 0 {
                    if errno == EINTR || errno == EAGAIN { continue }
                    throw TransferError.system("send to \(peer)", errno: errno, resumable: true)
                }
                at += n
            }
        }

        /// Up to `max` bytes; empty at the end of the stream. With `check`, the wait is cut in
        /// quarter seconds and `check` runs between them.
        func read(max: Int, deadline: Int64, check: (() throws -> Void)? = nil) throws -> [UInt8] {
            // Before every read, not only after a quiet quarter second: a stream whose bytes
            // keep coming (a comment every 200 ms) must not outlast a Ctrl-C or a deadline.
            try check?()
            var buf = [UInt8](repeating: 0, count: max)
            // The wait for the next slice: the time left, at most a quarter second with `check`.
            func slice() -> Int64 {
                let left = Swift.max(1, (deadline - Int64(monotonicNs())) / 1_000_000)
                return check == nil ? left : Swift.min(left, 250)
            }
            if let tls {
                for _ in 0..<100_000_000 {
                    do {
                        let n = try buf.withUnsafeMutableBytes { try tls.read($0.baseAddress!, max, timeoutNs: slice() * 1_000_000, peer: peer) }
                        return Array(buf[0..<n])
                    } catch let e as TransferError where e.code == .timeout && check != nil && Int64(monotonicNs()) < deadline {
                        try check?()
                    }
                }
                throw TransferError(.timeout, "\(peer) did not answer in time", resumable: true)
            }
            for _ in 0..<100_000_000 {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let p = poll(&pfd, 1, Int32(clamping: slice()))
                if p == 0 {
                    if let check, Int64(monotonicNs()) < deadline { try check(); continue }
                    throw TransferError(.timeout, "\(peer) did not answer in time", resumable: true)
                }
                if p < 0 { if errno == EINTR { continue }; throw TransferError.system("receive from \(peer)", errno: errno, resumable: true) }
                let n = buf.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, max, 0) }
                if n < 0 { if errno == EINTR || errno == EAGAIN { continue }; throw TransferError.system("receive from \(peer)", errno: errno, resumable: true) }
                return Array(buf[0..<n])
            }
            throw TransferError(.timeout, "\(peer) did not answer in time", resumable: true)
        }

        func close() { Glibc.close(fd) }
    }

    /// Buffered reading of a response: lines, exact lengths, whatever arrives.
    struct Reader {
        let conn: Conn
        /// Until when the answer may take (moved on by an answer that goes on: `idle`).
        var deadline: Int64
        let what: String
        let check: (() throws -> Void)?
        var buffer: [UInt8] = []
        var at = 0

        init(conn: Conn, deadline: Int64, what: String, check: (() throws -> Void)? = nil) {
            self.conn = conn; self.deadline = deadline; self.what = what; self.check = check
        }

        mutating func fill() throws -> Bool {
            if Int64(monotonicNs()) > deadline { throw TransferError(.timeout, "\(what) did not answer in time", resumable: true) }
            let more = try conn.read(max: 65536, deadline: deadline, check: check)
            if more.isEmpty { return false }
            if at > 0 { buffer.removeFirst(at); at = 0 }
            buffer += more
            return true
        }

        /// One line without its CRLF.
        mutating func line(max: Int) throws -> String {
            for _ in 0..<100_000 {
                if let nl = buffer[at...].firstIndex(of: 10) {
                    var end = nl
                    if end > at && buffer[end - 1] == 13 { end -= 1 }
                    let s = String(decoding: buffer[at..<end], as: UTF8.self)
                    at = nl + 1
                    return s
                }
                if buffer.count - at > max { throw TransferError(.protocolViolation, "\(what): a header line longer than \(max) bytes") }
                guard try fill() else { throw TransferError(.io, "\(what) closed the connection in the middle of its answer", resumable: true) }
            }
            throw TransferError(.protocolViolation, "\(what): no end of line")
        }

        mutating func exactly(_ n: Int) throws -> [UInt8] {
            for _ in 0..<1_000_000 where buffer.count - at < n {
                guard try fill() else { throw TransferError(.io, "\(what) closed the connection in the middle of its answer", resumable: true) }
            }
            let out = Array(buffer[at..<(at + n)])
            at += n
            return out
        }

        mutating func some(max: Int) throws -> [UInt8] {
            if buffer.count == at { _ = try fill() }
            let n = min(max, buffer.count - at)
            let out = Array(buffer[at..<(at + n)])
            at += n
            return out
        }
    }

    private static let contextsLock = Lock()
    nonisolated(unsafe) private static var contexts: [String: TLSContext] = [:]

    /// One TLS client context per CA file (no client certificate: the API authenticates by
    /// token or by a center's signed assertion).
    static func context(ca: String) throws -> TLSContext {
        if let c = contextsLock.withLock({ contexts[ca] }) { return c }
        let c = try TLSContext(server: false, identity: TLSIdentity(certificate: nil, key: nil, ca: ca))
        contextsLock.withLock { contexts[ca] = c }
        return c
    }
}
