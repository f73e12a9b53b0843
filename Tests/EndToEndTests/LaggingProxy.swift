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
/// - data connections: server-to-client bytes `dataDelay` seconds late (default none); after
///   `dataStallBytes` bytes from the client the proxy stops reading
///   them, so the client's next sends block; when the server ends the connection, the proxy
///   sends the client a FIN and then closes with the client's bytes unread: a reset, which a
///   client blocked in a send sees as a broken pipe (EPIPE, or ECONNRESET).
/// Every loop polls with a short timeout and ends on `stop()`.
final class LaggingProxy: @unchecked Sendable {  // mutable state guarded by `lock`
    let port: Int
    let targetPort: Int
    let controlDelay: Double
    let dataStallBytes: Int
    let dataDelay: Double

    private let listener: LoopbackListener
    private let lock = NSLock()
    private var resets = 0

    init(targetPort: Int, controlDelay: Double, dataStallBytes: Int, dataDelay: Double = 0) throws {
        self.targetPort = targetPort
        self.dataDelay = dataDelay
        self.controlDelay = controlDelay
        self.dataStallBytes = dataStallBytes
        // A small receive buffer (inherited by accepted sockets): a stalled data stream holds
        // little, so the client blocks in its send instead of finishing it into buffers.
        listener = try LoopbackListener(targetPort: targetPort, receiveBuffer: 64 * 1024)
        port = listener.port
        listener.start { [self] client, upstream in listener.startThread { [self] in serve(client: client, upstream: upstream) } }
    }

    /// Data connections the proxy closed with bytes from the client unread (a reset sent
    /// while the client was still sending).
    var dataResets: Int { lock.withLock { resets } }

    /// Stops accepting and ends all pumps (bounded wait for the threads).
    func stop() { listener.stop() }

    deinit { listener.stop() }

    private var isStopped: Bool { listener.isStopped }

    private func startThread(_ body: @escaping () -> Void) { listener.startThread(body) }

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
            down(from: upstream, to: client, delay: isData ? dataDelay : controlDelay)
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
        if isData && ioctl(client, UInt(FIONREAD), &unread) == 0 && unread > 0 { lock.withLock { resets += 1 } }
        close(client)
        close(upstream)
    }

    /// Server-to-client pump; every piece is sent `delay` seconds late, in order.
    private func down(from src: Int32, to dst: Int32, delay: Double) {
        var queue: [(due: Double, bytes: [UInt8])] = []
        var ended = false
        while !isStopped && (!ended || !queue.isEmpty) {
            if !ended {
                if let b = readSome(src, max: 256 * 1024) {
                    if !b.isEmpty { queue.append((monotonicSeconds() + delay, b)) }
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
