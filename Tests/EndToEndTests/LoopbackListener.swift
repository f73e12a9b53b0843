// The plumbing the test proxies share (FlipProxy, LaggingProxy).

import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Listens on 127.0.0.1:0; once started, each accepted connection is paired with a new connection to
/// 127.0.0.1:`targetPort` and handed to `serve` (on the accepting thread: start threads with
/// `startThread`). Threads are counted so that `stop()` waits for them (bounded); every loop
/// polls with a short timeout and ends once `isStopped`.
final class LoopbackListener: @unchecked Sendable {  // mutable state guarded by `lock`
    let port: Int
    let targetPort: Int
    private let listenFd: Int32
    private let lock = NSLock()
    private var stopped = false
    private var liveThreads = 0

    /// `receiveBuffer`: SO_RCVBUF of the listener, inherited by the accepted sockets.
    init(targetPort: Int, receiveBuffer: Int32? = nil) throws {
        self.targetPort = targetPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("proxy socket: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
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
    }

    /// Starts accepting: `serve` gets each connection and its upstream.
    func start(_ serve: @escaping (_ client: Int32, _ upstream: Int32) -> Void) {
        startThread { [self] in acceptLoop(serve) }
    }

    var isStopped: Bool { locked { stopped } }

    /// Stops accepting and waits (at most 5 s) for every thread started here to end.
    func stop() {
        if locked({ () -> Bool in defer { stopped = true }; return stopped }) { return }
        _ = waitUntil(timeout: 5) { locked { liveThreads == 0 } }
        close(listenFd)
    }

    func startThread(_ body: @escaping () -> Void) {
        locked { liveThreads += 1 }
        let t = Thread { [self] in
            body()
            locked { liveThreads -= 1 }
        }
        t.start()
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    private func acceptLoop(_ serve: (Int32, Int32) -> Void) {
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
            serve(client, upstream)
        }
    }
}
