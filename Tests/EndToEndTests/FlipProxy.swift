// A loopback TCP proxy that flips one byte in flight.

import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Listens on 127.0.0.1:0 and forwards every connection to 127.0.0.1:`targetPort`.
/// Exactly once over its lifetime, on the first connection whose byte count in `direction`
/// passes `flipOffset`, it XORs the byte at that offset of the connection with 0xFF.
/// One thread accepts, two threads pump each connection; all loops poll with a short timeout
/// and end on `stop()`.
final class FlipProxy: @unchecked Sendable {  // mutable state guarded by `lock`
    enum Direction { case clientToServer, serverToClient }

    let port: Int
    let targetPort: Int
    let flipOffset: Int
    let direction: Direction

    private let listenFd: Int32
    private let lock = NSLock()
    private var stopped = false
    private var didFlip = false
    private var flippedConnection = -1
    private var connectionCount = 0
    private var bytesForwarded: [Int: (up: Int, down: Int)] = [:]
    private var liveThreads = 0

    init(targetPort: Int, flipOffset: Int, direction: Direction) throws {
        self.targetPort = targetPort
        self.flipOffset = flipOffset
        self.direction = direction
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("proxy socket: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = loopbackAddress(port: 0)
        let b = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard b == 0, listen(fd, 64) == 0 else {
            close(fd)
            throw HarnessError("proxy bind/listen: errno \(errno)")
        }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        listenFd = fd
        port = Int(UInt16(bigEndian: bound.sin_port))
        startThread { [self] in acceptLoop() }
    }

    var flipped: Bool { locked { didFlip } }
    var connections: Int { locked { connectionCount } }
    /// Bytes forwarded per connection (in accept order): client→server, server→client.
    var traffic: [(up: Int, down: Int)] {
        locked { bytesForwarded.keys.sorted().map { bytesForwarded[$0]! } }
    }

    /// Stops accepting and ends all pumps (bounded wait for the threads).
    func stop() {
        locked { stopped = true }
        waitUntil(timeout: 5) { locked { liveThreads == 0 } }
        close(listenFd)
    }

    deinit {
        if !locked({ stopped }) { stop() }
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    private var isStopped: Bool { locked { stopped } }

    private func startThread(_ body: @escaping () -> Void) {
        locked { liveThreads += 1 }
        let t = Thread { [self] in
            body()
            locked { liveThreads -= 1 }
        }
        t.start()
    }

    private func acceptLoop() {
        while !isStopped {
            var pfd = pollfd(fd: listenFd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 100) <= 0 { continue }
            let client = accept(listenFd, nil, nil)
            if client < 0 { continue }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = loopbackAddress(port: targetPort)
            let r = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            if r != 0 {
                close(client)
                close(upstream)
                continue
            }
            let id = locked { () -> Int in
                connectionCount += 1
                bytesForwarded[connectionCount] = (0, 0)
                return connectionCount
            }
            let pair = SocketPair(client: client, upstream: upstream)
            startThread { [self] in pump(id: id, from: client, to: upstream, up: true, pair: pair) }
            startThread { [self] in pump(id: id, from: upstream, to: client, up: false, pair: pair) }
        }
    }

    private func pump(id: Int, from src: Int32, to dst: Int32, up: Bool, pair: SocketPair) {
        defer { pair.release() }
        let flipsHere = (direction == .clientToServer) == up
        var buf = [UInt8](repeating: 0, count: 256 * 1024)
        var total = 0
        while !isStopped {
            var pfd = pollfd(fd: src, events: Int16(POLLIN), revents: 0)
            let pr = poll(&pfd, 1, 100)
            if pr < 0 && errno == EINTR { continue }
            if pr <= 0 { continue }
            let n = buf.withUnsafeMutableBytes { recv(src, $0.baseAddress!, $0.count, 0) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if n <= 0 {
                if n == 0 {
                    shutdown(dst, Int32(SHUT_WR))
                } else {
                    shutdown(dst, Int32(SHUT_RDWR))
                    shutdown(src, Int32(SHUT_RDWR))
                }
                return
            }
            if flipsHere && total <= flipOffset && flipOffset < total + n {
                let doIt = locked { () -> Bool in
                    if didFlip { return false }
                    didFlip = true
                    flippedConnection = id
                    return true
                }
                if doIt { buf[flipOffset - total] ^= 0xFF }
            }
            total += n
            locked {
                var t = bytesForwarded[id] ?? (0, 0)
                if up { t.up += n } else { t.down += n }
                bytesForwarded[id] = t
            }
            if !sendAll(dst, buf, n) {
                shutdown(src, Int32(SHUT_RDWR))
                shutdown(dst, Int32(SHUT_RDWR))
                return
            }
        }
    }
}

/// Both sockets of one proxied connection; closed when both pumps are done.
private final class SocketPair: @unchecked Sendable {  // guarded by lock
    let client: Int32
    let upstream: Int32
    private let lock = NSLock()
    private var users = 2

    init(client: Int32, upstream: Int32) {
        self.client = client
        self.upstream = upstream
    }

    func release() {
        lock.lock()
        users -= 1
        let last = users == 0
        lock.unlock()
        if last {
            close(client)
            close(upstream)
        }
    }
}
