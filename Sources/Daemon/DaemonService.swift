import Foundation
import Hummingbird
import Transfer

/// The daemon part of `ferry serve --config` (a `[daemon]` table): the job queue, its runner
/// and the REST API, beside the transfer server.
public final class DaemonService: @unchecked Sendable {
    public let store: SQLiteJobStore
    public let runner: JobRunner
    public let api: DaemonAPI
    public let apiAddress: HostPort
    private var task: Task<Void, Error>?

    public init(databasePath: String, apiListen: HostPort, runner settings: RunnerSettings, verifier: TokenVerifier, center: String) throws {
        store = try SQLiteJobStore(path: databasePath)
        runner = try JobRunner(store: store, settings: settings, workerID: center + "-" + String(getpid()))
        api = DaemonAPI(store: store, verifier: verifier, center: center, runner: runner)
        // Port 0: take a free one now so that it can be printed (the HTTP server binds it next).
        var address = apiListen
        if address.port == 0 {
            let (fd, actual) = try Socket.listenForPort(address)
            close(fd)
            address = actual
        }
        apiAddress = address
    }

    /// Starts the runner and the API; returns once the API answers.
    public func start() throws {
        runner.start()
        let app = Application(router: api.router(), configuration: .init(address: .hostname(apiAddress.host, port: Int(apiAddress.port)), serverName: "ferry"))
        task = Task.detached { try await app.run() }
        for _ in 0..<200 {
            if Socket.canConnect(apiAddress) { return }
            usleep(25_000)
        }
        throw TransferError(.io, "the API did not start on \(apiAddress)")
    }

    public func stop() {
        runner.stop()
        task?.cancel()
    }
}
