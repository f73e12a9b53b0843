// A loopback TCP proxy that makes a data stream break while the client is still sending, with
// the server's last control frames still on their way (DiskFullTests).

import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Listens on 127.0.0.1:0 and forwards every connection to 127.0.0.1:`targetPort`, telling the
/// roles apart by the Ferry preamble (16 bytes, role at offset 10):
/// - control connections: server-to-client bytes are delivered `controlDelay` seconds late, in
///   order (client-to-server bytes go at once);
/// - data connections: after `dataStallBytes` bytes from the client the proxy stops reading
///   them, so the client's next sends block; when the server ends the connection, the proxy
///   sends the client a FIN and then closes with the client's bytes unread: a reset, which a
///   client blocked in a send sees as a broken pipe (EPIPE, or ECONNRESET).
/// Every loop polls with a short timeout and ends on `stop()`.
final class LaggingProxy: @unchecked Sendable {  // mutable state guarded by `lock`
    let port: Int
    let targetPort: Int
    let controlDelay: Double
    let dataStallBytes: Int

    private let listenFd: Int32
    private let lock = NSLock()
    private var stopped = false
    private var liveThreads = 0
    private var resets = 0

    init(targetPort: Int, controlDelay: Double, dataStallBytes: Int) throws {
        self.targetPort = targetPort
        self.controlDelay = controlDelay
        self.dataStallBytes = dataStallBytes
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("proxy socket: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        // A small receive buffer (inherited by accepted sockets): a stalled data stream holds
        // little, so the client blocks in its send instead of finishing it into buffers.
        var small: Int32 = 64 * 1024
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
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

    /// Data connections the proxy closed with bytes from the client unread (a reset sent
    /// while the client was still sending).
    var dataResets: Int { locked { resets } }

    /// Stops accepting and ends all pumps (bounded wait for the threads).
    func stop() {
        locked { stopped = true }
        _ = waitUntil(timeout: 5) { locked { liveThreads == 0 } }
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
            startThread { [self] in serve(client: client, upstream: upstream) }
        }
    }

    /// Reads up to `max` bytes with a short poll; nil on end of stream or error, [] on nothing yet.
    private func readSome(_ fd: Int32, max: Int) -> [UInt8]? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let pr = poll(&pfd, 1, 20)
        if pr <= 0 { return pr < 0 && errno != EINTR ? nil : [] }
        var buf = [UInt8](repeating: 0, count: max)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, max, 0) }
        if n < 0 && (errno == EINTR || errno == EAGAIN) { return [] }
        if n <= 0 { return nil }
        return Array(buf[0..<n])
    }

    /// One proxied connection: the client-to-server pump on this thread, the other on its own;
    /// both sockets closed here once the server's side has ended (bounded by `stop()`).
    private func serve(client: Int32, upstream: Int32) {
        var preamble: [UInt8] = []
        while preamble.count < 16 && !isStopped {
            guard let b = readSome(client, max: 16 - preamble.count) else { break }
            preamble += b
        }
        guard preamble.count == 16, sendAll(upstream, preamble, 16) else {
            close(client)
            close(upstream)
            return
        }
        let isData = preamble[10] == 2 && preamble[11] == 0
        let downDone = Flag()
        startThread { [self] in
            down(from: upstream, to: client, delayed: !isData)
            shutdown(client, Int32(SHUT_WR))
            downDone.set()
        }
        var forwarded = 16
        while !isStopped && !downDone.isSet {
            if isData && forwarded >= dataStallBytes {
                usleep(5_000)  // stalled: the client's bytes stay unread
                continue
            }
            let want = isData ? min(256 * 1024, dataStallBytes - forwarded) : 256 * 1024
            guard let b = readSome(client, max: want) else {
                shutdown(upstream, Int32(SHUT_WR))
                break
            }
            if b.isEmpty { continue }
            if !sendAll(upstream, b, b.count) { break }
            forwarded += b.count
        }
        _ = waitUntil(timeout: 10, interval: 0.005) { downDone.isSet || isStopped }
        var unread: Int32 = 0
        if isData && ioctl(client, UInt(FIONREAD), &unread) == 0 && unread > 0 { locked { resets += 1 } }
        close(client)
        close(upstream)
    }

    /// Server-to-client pump; on control connections every piece is sent `controlDelay` late.
    private func down(from src: Int32, to dst: Int32, delayed: Bool) {
        var queue: [(due: Double, bytes: [UInt8])] = []
        var ended = false
        while !isStopped && (!ended || !queue.isEmpty) {
            if !ended {
                if let b = readSome(src, max: 256 * 1024) {
                    if !b.isEmpty { queue.append((monotonicSeconds() + (delayed ? controlDelay : 0), b)) }
                } else {
                    ended = true
                }
            } else {
                usleep(5_000)
            }
            while let first = queue.first, first.due <= monotonicSeconds() {
                queue.removeFirst()
                if !sendAll(dst, first.bytes, first.bytes.count) { return }
            }
        }
    }
}

/// A one-way flag shared by two threads.
private final class Flag: @unchecked Sendable {  // guarded by lock
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}
