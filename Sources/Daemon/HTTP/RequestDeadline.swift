import Foundation
import NIOCore
import NIOHTTPTypes

/// A connection waiting for a request must have it, whole, within `seconds`
/// (`[daemon] api_request_seconds`); otherwise it is closed. It waits from its opening (TLS
/// handshake included) and from the end of each answer, until the request's last part.
///
/// Why: the API holds at most `api_connections` connections. Hummingbird's idle timer counts
/// decoded request parts only, so a client that trickled a request head one byte at a time,
/// opened a connection and sent nothing, or, after one quick request on a keep-alive
/// connection, trickled the next (or sent it unfinished in the same packet as the first),
/// held its connection for the whole `api_idle_seconds` (60 s), and 1,024 such connections,
/// renewed once a minute, kept everyone else out ("slowloris"). Now such a connection lasts
/// `api_request_seconds` (10 s) at most, wherever in a request it stalls.
///
/// The clock stops while the daemon answers (an event stream lasts as long as its job: the
/// client sends nothing meanwhile) and starts again when the last answer owed ends: a
/// keep-alive connection idle between requests is closed after `api_request_seconds` too, as
/// Apache's `KeepAliveTimeout` does (clients open another; the daemon's own clients, the CLI
/// and the federation's, do). A request whose head arrives while an earlier one is being
/// answered has the clock from its head on.
///
/// The bound on bodies follows: a 4 MiB submission (the largest body the API takes) needs
/// 3.4 Mbit/s at the default, and a handler that is slow to read a large body (the daemon
/// under a stall) can let the clock run out: such a request fails and is sent again by its
/// client. Not done: a per-address share of the connections. A center's scheduler hooks all
/// come from one host, and 900 of them may wait at once in the listen queue while the daemon
/// is busy (`StallTests.listenQueue`); a cap per address would refuse them.
final class RequestDeadline: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let limit: TimeAmount
    private var timer: Scheduled<Void>?
    /// A request's head has arrived and its end has not.
    private var reading = false
    /// Requests whose head has arrived and whose answer has not ended (an answer may end
    /// before its request does: a 404 or 401 is sent from the head, and the rest of the body
    /// is read after it).
    private var owed = 0
    private let expired: ExpiredRequests

    init(seconds: Int, expired: ExpiredRequests) {
        limit = .seconds(Int64(seconds))
        self.expired = expired
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // A new connection: its first request (and the TLS handshake before it) is on the clock.
        start(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        stop()
    }

    private func start(_ context: ChannelHandlerContext) {
        timer?.cancel()
        let expired = self.expired
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: limit) { [weak self] in
            guard let self, self.timer != nil else { return }
            expired.add()
            context.close(promise: nil)
        }
    }

    private func stop() {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            reading = true
            owed += 1
            // Read while an earlier answer is still going: its own clock from here.
            if timer == nil { start(context) }
        case .end:
            reading = false
            // Its answer still to come: no clock while the daemon answers. Already sent (an
            // early answer): the connection waits for its next request from now.
            if owed > 0 { stop() } else { start(context) }
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            owed = max(0, owed - 1)
            // Every answer owed has ended and no request is arriving: the connection waits
            // for its next request. (Still arriving: its clock runs from its head.)
            if owed == 0 && !reading { start(context) }
        }
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        stop()
        context.fireChannelInactive()
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
