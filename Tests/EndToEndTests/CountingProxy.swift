// A loopback TCP proxy in front of a daemon's API that counts the connections it carries and
// can cut the event streams (DaemonE2ETests.waitFollowsEvents).

import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Listens on 127.0.0.1:0 and forwards every connection to 127.0.0.1:`targetPort`, both ways,
/// byte for byte. `connections` counts them (the CLI opens one per request). With
/// `cutEventStreams`, a request for `.../events` is answered by closing the connection once its
/// request line is read, as a proxy that does not pass server-sent events would. Every loop
/// polls with a short timeout and ends on `stop()`.
final class CountingProxy: @unchecked Sendable {  // mutable state guarded by `lock`
    let port: Int
    private let listener: LoopbackListener
    private let lock = NSLock()
    private var count = 0
    private var eventRequests = 0

    init(targetPort: Int, cutEventStreams: Bool = false) throws {
        listener = try LoopbackListener(targetPort: targetPort)
        port = listener.port
        listener.start { [self] client, upstream in
            lock.withLock { count += 1 }
            listener.startThread { [self] in serve(client: client, upstream: upstream, cut: cutEventStreams) }
        }
    }

    var connections: Int { lock.withLock { count } }
    /// Requests for an event stream seen (cut or passed).
    var eventStreamRequests: Int { lock.withLock { eventRequests } }

    func stop() { listener.stop() }

    private func serve(client: Int32, upstream: Int32, cut: Bool) {
        defer { close(client); close(upstream) }
        var first = true
        var open = [true, true]  // client → upstream, upstream → client
        var buf = [UInt8](repeating: 0, count: 65536)
        for _ in 0..<2_000_000 where open[0] || open[1] {
            if listener.isStopped { return }
            var fds = [pollfd(fd: client, events: Int16(open[0] ? POLLIN : 0), revents: 0),
                       pollfd(fd: upstream, events: Int16(open[1] ? POLLIN : 0), revents: 0)]
            if poll(&fds, 2, 100) <= 0 { continue }
            for (i, (from, to)) in [(client, upstream), (upstream, client)].enumerated() where open[i] && fds[i].revents != 0 {
                let n = recv(from, &buf, buf.count, 0)
                if n <= 0 {
                    open[i] = false
                    shutdown(to, Int32(SHUT_WR))
                    continue
                }
                if i == 0 && first {
                    first = false
                    let head = String(decoding: buf[0..<min(n, 512)], as: UTF8.self)
                    if head.hasPrefix("GET ") && head.prefix { $0 != "\r" }.contains("/events") {
                        lock.withLock { eventRequests += 1 }
                        if cut { return }
                    }
                }
                var at = 0
                while at < n {
                    let w = buf[at..<n].withUnsafeBytes { send(to, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    if w <= 0 { return }
                    at += w
                }
            }
        }
    }
}
