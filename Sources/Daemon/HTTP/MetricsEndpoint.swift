import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import ServiceLifecycle
import Transfer

/// `metrics_listen` (`ferry serve --metrics-listen`): `/metrics` and `/health` on an address of
/// their own, over plain HTTP, for a transfer server without a daemon (a data transfer node
/// that only serves) as for one with. With a daemon it serves the daemon's whole `/metrics`
/// (the same text as the API's); without, the transfer server's families, the build, the
/// certificates and the process.
///
/// Plain HTTP and no token, as Prometheus' exporters are: the text holds counters, the
/// configured peers' names and the build, nothing a user sent. The address is the
/// operator's choice (loopback, or the site's management network); anything but those two
/// GET routes answers 404, a connection idle for 30 s is closed, and at most 64 are served at
/// once (more wait in the listen backlog).
public struct MetricsEndpoint: Sendable {
    public var listen: HostPort
    /// The exposition text without a daemon (with one, the daemon's is served).
    public var text: @Sendable () -> String
    /// Told the address bound (port 0 resolved).
    public var onRunning: @Sendable (HostPort) -> Void

    public init(listen: HostPort, text: @escaping @Sendable () -> String, onRunning: @escaping @Sendable (HostPort) -> Void) {
        self.listen = listen
        self.text = text
        self.onRunning = onRunning
    }

    func application(text: @escaping @Sendable () -> String) -> some ApplicationProtocol {
        let router = Router()
        router.get("/metrics") { _, _ in
            // With a daemon the text reads the queue and may wait up to 3 s for a silent peer's
            // handshake (`ferry_peer_up`): on the pool the API's own /metrics uses.
            try await onPool(.reads) {
                Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: .init(byteBuffer: ByteBuffer(string: text())))
            }
        }
        router.get("/health") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "ok\n")))
        }
        var logger = Logger(label: "ferry.metrics")
        logger.logLevel = .warning
        let listen = self.listen, told = onRunning
        return Application(router: router, server: .http1(configuration: .init(idleTimeout: .seconds(30))),
                           configuration: .init(address: .hostname(listen.host, port: Int(listen.port)), serverName: "ferry", backlog: 256,
                                                availableConnectionsDelegate: MaximumAvailableConnections(64, logger: logger)),
                           onServerRunning: { channel in told(HostPort(host: listen.host, port: UInt16(channel.localAddress?.port ?? Int(listen.port)))) },
                           logger: logger)
    }
}

/// The metrics endpoint as a service of the center's group.
struct MetricsService<App: ApplicationProtocol>: Service {
    let app: App
    let listen: HostPort

    func run() async throws {
        do { try await app.run() } catch {
            throw TransferError(.io, "the metrics endpoint (metrics_listen) cannot serve on \(listen): \(error)")
        }
    }
}
