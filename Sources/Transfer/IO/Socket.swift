import Glibc

/// A parsed `HOST:PORT` (`[v6]:port` for IPv6).
public struct HostPort: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`, `[v6addr]:port`. Throws a usage error naming the text.
    public init(parsing text: String) throws {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                throw TransferError(.usage, "bad address '\(text)': missing ']'")
            }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw TransferError(.usage, "bad address '\(text)': expected ]:PORT") }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw TransferError(.usage, "bad address '\(text)': expected HOST:PORT")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { throw TransferError(.usage, "bad address '\(text)': put IPv6 addresses in brackets, [::1]:7700") }
        }
        // Decimal digits only (UInt16("+80") would take a sign), at most five of them.
        guard !host.isEmpty, (1...5).contains(portText.utf8.count), portText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let port = UInt16(portText) else {
            throw TransferError(.usage, "bad address '\(text)': expected HOST:PORT with a port 0-65535")
        }
        self.host = String(host)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Socket set-up (not the data path: connect, listen and accept are plain system calls; all
/// reads and writes of a connection go through its thread's ring).
public enum Socket {
    /// Resolves `address` to socket addresses, IPv6 first (the backbone is IPv6-native).
    static func resolve(_ address: HostPort, passive: Bool) throws -> [(family: Int32, storage: sockaddr_storage, length: socklen_t)] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = passive ? AI_PASSIVE : AI_ADDRCONFIG
        var list: UnsafeMutablePointer<addrinfo>?
        let r = getaddrinfo(address.host, String(address.port), &hints, &list)
        guard r == 0, let first = list else {
            // A name that does not exist (or has no address) stays so on a rerun; a resolver
            // that could not answer now (EAI_AGAIN, a failed system call) may answer later.
            let text = "cannot resolve \(address.host): \(String(cString: gai_strerror(r)))"
            if r == EAI_NONAME || r == -5 /* EAI_NODATA, a GNU extension */ || r == EAI_FAIL || r == EAI_SERVICE {
                throw TransferError(.notFound, text + " (check the host name)")
            }
            throw TransferError(.io, text, resumable: true)
        }
        defer { freeaddrinfo(list) }
        var out: [(Int32, sockaddr_storage, socklen_t)] = []
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let a = p {
            var storage = sockaddr_storage()
            withUnsafeMutableBytes(of: &storage) { dst in
                dst.copyMemory(from: UnsafeRawBufferPointer(start: a.pointee.ai_addr, count: Int(a.pointee.ai_addrlen)))
            }
            out.append((a.pointee.ai_family, storage, a.pointee.ai_addrlen))
            p = a.pointee.ai_next
        }
        out.sort { ($0.0 == AF_INET6 ? 0 : 1) < ($1.0 == AF_INET6 ? 0 : 1) }
        return out.map { (family: $0.0, storage: $0.1, length: $0.2) }
    }

    /// Connects to `address`, trying each resolved address (IPv6 first) until one answers.
    static func connect(_ address: HostPort, timeoutMs: Int32 = 10_000) throws -> Int32 {
        var lastError = TransferError(.io, "cannot connect to \(address)", resumable: true)
        for candidate in try resolve(address, passive: false) {
            let fd = Glibc.socket(candidate.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            if fd < 0 { continue }
            var storage = candidate.storage
            let r = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, candidate.length) }
            }
            var ok = r == 0
            if !ok && errno == EINPROGRESS {
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if poll(&pfd, 1, timeoutMs) == 1 {
                    var err: Int32 = 0
                    var len = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
                    if err == 0 { ok = true } else { lastError = .system("cannot connect to \(address)", errno: err, resumable: true) }
                } else {
                    lastError = TransferError(.timeout, "cannot connect to \(address): timed out", resumable: true)
                }
            } else if !ok {
                lastError = .system("cannot connect to \(address)", errno: errno, resumable: true)
            }
            if ok {
                // Back to blocking mode: io_uring handles readiness itself.
                let fl = fcntl(fd, F_GETFL)
                _ = fcntl(fd, F_SETFL, fl & ~O_NONBLOCK)
                tune(fd)
                return fd
            }
            Glibc.close(fd)
        }
        throw lastError
    }

    /// Connects `count` sockets to the address `like` is connected to, all at once: a session's
    /// data streams cost one round trip for all of them, not one each (16 streams over a 30 ms
    /// path spent half a second joining one after another). The peer's address is the one the
    /// control connection reached, so a name with several addresses cannot send the streams
    /// elsewhere. On any failure every socket made here is closed.
    static func connect(alike like: Int32, count: Int, timeoutMs: Int32 = 10_000) throws -> [Int32] {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let got = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(like, $0, &length) }
        }
        guard got == 0 else { throw TransferError.system("cannot name the server's address", errno: errno, resumable: true) }
        var fds: [Int32] = []
        var ok = false
        defer { if !ok { for fd in fds { Glibc.close(fd) } } }
        var pending: [pollfd] = []
        for _ in 0..<count {
            let fd = Glibc.socket(Int32(storage.ss_family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { throw TransferError.system("cannot make a socket", errno: errno, resumable: true) }
            fds.append(fd)
            let r = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) }
            }
            if r != 0 {
                guard errno == EINPROGRESS else { throw TransferError.system("cannot connect a data stream", errno: errno, resumable: true) }
                pending.append(pollfd(fd: fd, events: Int16(POLLOUT), revents: 0))
            }
        }
        let deadline = monotonicNs() + UInt64(timeoutMs) * 1_000_000
        while !pending.isEmpty {
            let now = monotonicNs()
            guard now < deadline else { throw TransferError(.timeout, "cannot connect a data stream: timed out", resumable: true) }
            let n = poll(&pending, nfds_t(pending.count), Int32(min(UInt64(Int32.max), (deadline - now) / 1_000_000 + 1)))
            if n < 0 && errno != EINTR { throw TransferError.system("cannot connect a data stream", errno: errno, resumable: true) }
            var still: [pollfd] = []
            for p in pending {
                guard p.revents != 0 else { still.append(pollfd(fd: p.fd, events: p.events, revents: 0)); continue }
                var err: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &len)
                if err != 0 { throw TransferError.system("cannot connect a data stream", errno: err, resumable: true) }
            }
            pending = still
        }
        for fd in fds {
            // Back to blocking mode: io_uring handles readiness itself.
            let fl = fcntl(fd, F_GETFL)
            _ = fcntl(fd, F_SETFL, fl & ~O_NONBLOCK)
            tune(fd)
        }
        ok = true
        return fds
    }

    /// Options every Ferry connection gets: no Nagle delay for control messages, keepalive.
    /// Socket buffers are left to the kernel's autotuning, which grows them to
    /// net.ipv4.tcp_{r,w}mem's maximum; a fixed SO_SNDBUF would switch autotuning off and cap
    /// a long fat link (README: raise those sysctls for 10–100 Gbit/s WAN paths).
    static func tune(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// A listening socket on `address`; returns the fd and the bound address (port 0 resolved).
    static func listen(_ address: HostPort, backlog: Int32 = 512) throws -> (fd: Int32, bound: HostPort) {
        guard let candidate = try resolve(address, passive: true).first else {
            throw TransferError(.usage, "cannot listen on \(address): no address")
        }
        let fd = try sys("socket") { Glibc.socket(candidate.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if candidate.family == AF_INET6 {
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        var storage = candidate.storage
        let r = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, candidate.length) }
        }
        if r != 0 {
            let e = errno
            Glibc.close(fd)
            throw TransferError.system("cannot listen on \(address)", errno: e)
        }
        if Glibc.listen(fd, backlog) != 0 {
            let e = errno
            Glibc.close(fd)
            throw TransferError.system("cannot listen on \(address)", errno: e)
        }
        var bound = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        let port = withUnsafePointer(to: &bound) { p -> UInt16 in
            if candidate.family == AF_INET6 {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
        return (fd, HostPort(host: address.host, port: port))
    }

    /// "1.2.3.4" of "1.2.3.4:5678", "::1" of "[::1]:5678".
    static func hostPart(_ peer: String) -> String {
        if peer.hasPrefix("["), let close = peer.firstIndex(of: "]") { return String(peer[peer.index(after: peer.startIndex)..<close]) }
        if let colon = peer.lastIndex(of: ":") { return String(peer[..<colon]) }
        return peer
    }

    /// The peer's address as text, for logs and limits.
    static func peerName(_ fd: Int32) -> String {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        if r != 0 { return "?" }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var serv = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let g = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, len, &host, socklen_t(host.count), &serv, socklen_t(serv.count), NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        if g != 0 { return "?" }
        let h = String(cString: host)
        return h.contains(":") ? "[\(h)]:\(String(cString: serv))" : "\(h):\(String(cString: serv))"
    }
}

extension Socket {
    /// Binds `address` (port 0: any free port) and returns the listening fd and the address.
    public static func listenForPort(_ address: HostPort) throws -> (Int32, HostPort) { try listen(address) }

    /// True when a TCP connection to `address` succeeds (closed at once).
    public static func canConnect(_ address: HostPort) -> Bool {
        guard let fd = try? connect(address) else { return false }
        Glibc.close(fd)
        return true
    }
}
