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
///
/// Frame mode (`frameAction`): on data connections (preamble role 2) from the client, the proxy
/// reads whole frames, and exactly once over its lifetime either sends data frame number
/// `frameIndex` twice (replay) or holds it back until the next frame has gone (reorder).
final class FlipProxy: @unchecked Sendable {  // mutable state guarded by `lock`
    enum Direction { case clientToServer, serverToClient }
    enum FrameAction { case replay, reorder }

    var frameAction: FrameAction?
    /// Which data frame (0 = the first after JOIN) to replay or reorder.
    var frameIndex = 1
    private var didFrameAction = false

    let port: Int
    let targetPort: Int
    let flipOffset: Int
    let direction: Direction

    private let listener: LoopbackListener
    private let lock = NSLock()
    private var didFlip = false
    private var flippedConnection = -1
    private var connectionCount = 0
    private var bytesForwarded: [Int: (up: Int, down: Int)] = [:]

    init(targetPort: Int, flipOffset: Int, direction: Direction) throws {
        self.targetPort = targetPort
        self.flipOffset = flipOffset
        self.direction = direction
        listener = try LoopbackListener(targetPort: targetPort)
        port = listener.port
        listener.start { [self] client, upstream in accepted(client: client, upstream: upstream) }
    }

    var flipped: Bool { lock.withLock { didFlip } }
    var frameActionDone: Bool { lock.withLock { didFrameAction } }
    var connections: Int { lock.withLock { connectionCount } }
    /// Bytes forwarded per connection (in accept order): client→server, server→client.
    var traffic: [(up: Int, down: Int)] {
        lock.withLock { bytesForwarded.keys.sorted().map { bytesForwarded[$0]! } }
    }

    /// Stops accepting and ends all pumps (bounded wait for the threads).
    func stop() { listener.stop() }

    deinit { listener.stop() }

    private var isStopped: Bool { listener.isStopped }

    private func startThread(_ body: @escaping () -> Void) { listener.startThread(body) }

    private func accepted(client: Int32, upstream: Int32) {
        let id = lock.withLock { () -> Int in
            connectionCount += 1
            bytesForwarded[connectionCount] = (0, 0)
            return connectionCount
        }
        let pair = SocketPair(client: client, upstream: upstream)
        if frameAction != nil {
            startThread { [self] in framePump(from: client, to: upstream, pair: pair) }
        } else {
            startThread { [self] in pump(id: id, from: client, to: upstream, up: true, pair: pair) }
        }
        startThread { [self] in pump(id: id, from: upstream, to: client, up: false, pair: pair) }
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
                let doIt = lock.withLock { () -> Bool in
                    if didFlip { return false }
                    didFlip = true
                    flippedConnection = id
                    return true
                }
                if doIt { buf[flipOffset - total] ^= 0xFF }
            }
            total += n
            lock.withLock {
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

extension FlipProxy {
    /// Reads exactly `n` bytes (nil on end of stream, error or stop).
    fileprivate func readExact(_ fd: Int32, _ n: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: n)
        var done = 0
        while done < n {
            if isStopped { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let pr = poll(&pfd, 1, 100)
            if pr <= 0 { continue }
            let r = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, n - done, 0) }
            if r < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if r <= 0 { return nil }
            done += r
        }
        return out
    }

    /// Client-to-server pump of frame mode.
    fileprivate func framePump(from src: Int32, to dst: Int32, pair: SocketPair) {
        defer { pair.release() }
        func finish() { shutdown(dst, Int32(SHUT_WR)) }
        guard let pre = readExact(src, 16), sendAll(dst, pre, 16) else { return finish() }
        let isData = pre[10] == 2 && pre[11] == 0
        if !isData {
            // Control connection: forward untouched (TLS).
            var buf = [UInt8](repeating: 0, count: 64 * 1024)
            while !isStopped {
                var pfd = pollfd(fd: src, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, 100) <= 0 { continue }
                let n = buf.withUnsafeMutableBytes { recv(src, $0.baseAddress!, $0.count, 0) }
                if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                if n <= 0 || !sendAll(dst, buf, n) { break }
            }
            return finish()
        }
        var index = -1  // the JOIN frame
        var held: [UInt8]?
        while let h = readExact(src, 8) {
            let len = Int(h[0]) | Int(h[1]) << 8 | Int(h[2]) << 16 | Int(h[3]) << 24
            guard len <= 128 << 20, let body = readExact(src, len) else { break }
            let frame = h + body
            if index == frameIndex, let action = frameAction, lock.withLock({ () -> Bool in
                if didFrameAction { return false }
                didFrameAction = true
                return true
            }) {
                index += 1
                switch action {
                case .replay:
                    guard sendAll(dst, frame, frame.count), sendAll(dst, frame, frame.count) else { return finish() }
                case .reorder:
                    held = frame
                }
                continue
            }
            index += 1
            guard sendAll(dst, frame, frame.count) else { return finish() }
            if let f = held {
                held = nil
                guard sendAll(dst, f, f.count) else { return finish() }
            }
        }
        if let f = held { _ = sendAll(dst, f, f.count) }
        finish()
    }
}

/// Both sockets of one proxied connection; closed when both pumps are done.
fileprivate final class SocketPair: @unchecked Sendable {  // guarded by lock
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
