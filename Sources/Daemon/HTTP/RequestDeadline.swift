import Foundation
import NIOCore
import NIOHTTPTypes

/// Once a client starts sending a request (or opens its connection), the whole request must
/// arrive within `seconds` (`[daemon] api_request_seconds`); otherwise the connection is closed.
///
/// Why: the API holds at most `api_connections` connections. Hummingbird's idle timer counts
/// decoded request parts only, so a client that trickles a request head one byte at a time
/// (or opens a connection and sends nothing, or, after one quick request on a keep-alive
/// connection, trickles the next) held its connection for the whole `api_idle_seconds`
/// (60 s), and 1,024 such connections, renewed once a minute, kept everyone else out
/// ("slowloris"). Now such a connection lasts `api_request_seconds` (10 s) at most, wherever
/// in a request it stalls: in the TLS handshake, the head or the body.
///
/// Two handlers share one clock. `RequestDeadline` sits after the HTTP codec and sees whole
/// request parts: a request's `.end` stops the clock. `ByteWatch`, which it puts first in the
/// pipeline (before TLS, when the API speaks HTTPS), sees every byte as it arrives: the first
/// bytes after a complete request start the clock for the next one. A connection idle between
/// requests (no byte sent) is left to the idle timer, and an answer being written (an event
/// stream lasts as long as its job) is not a request: the client sends nothing meanwhile.
///
/// The bound on bodies follows: a 4 MiB submission (the largest body the API takes) needs
/// 3.4 Mbit/s at the default. Not done: a per-address share of the connections. A center's
/// scheduler hooks all come from one host, and 900 of them may wait at once in the listen
/// queue while the daemon is busy (`StallTests.listenQueue`); a cap per address would refuse
/// them.
final class RequestDeadline: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let limit: TimeAmount
    private var timer: Scheduled<Void>?
    /// Bytes of a request have arrived (or the connection is new) and its `.end` has not.
    private var running = false
    private let expired: ExpiredRequests

    init(seconds: Int, expired: ExpiredRequests) {
        limit = .seconds(Int64(seconds))
        self.expired = expired
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // A new connection: its first request (and the TLS handshake before it) is on the clock.
        try? context.pipeline.syncOperations.addHandler(ByteWatch(owner: self, context: context), position: .first)
        start(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    /// The first bytes after a complete request (or after the connection opened).
    fileprivate func bytesArrived(_ context: ChannelHandlerContext) {
        if !running { start(context) }
    }

    private func start(_ context: ChannelHandlerContext) {
        running = true
        timer?.cancel()
        let expired = self.expired
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: limit) { [weak self] in
            guard let self, self.running else { return }
            expired.add()
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .end = unwrapInboundIn(data) {
            running = false
            timer?.cancel()
            timer = nil
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        running = false
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }
}

/// First in the pipeline: tells `RequestDeadline` that bytes arrived. Passes everything on.
private final class ByteWatch: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private weak var owner: RequestDeadline?
    /// The deadline handler's own context: its timer closes the channel from there.
    private let ownerContext: ChannelHandlerContext

    init(owner: RequestDeadline, context: ChannelHandlerContext) {
        self.owner = owner
        ownerContext = context
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        owner?.bytesArrived(ownerContext)
        context.fireChannelRead(data)
    }
}

/// Connections closed because a request did not arrive in time, since the daemon started
/// (`ferry_api_requests_expired_total` in /metrics: a count that keeps rising is a client
/// stuck on a slow link, or someone holding connections).
final class ExpiredRequests: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.lock(); n += 1; lock.unlock() }
    var count: Int { lock.lock(); defer { lock.unlock() }; return n }
}
