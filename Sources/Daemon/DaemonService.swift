import Foundation
import GlobalFS
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import NIOSSL
import Logging
import ServiceLifecycle
import Transfer

/// The daemon part of `ferry serve --config` (a `[daemon]` table): the job queue, its runner
/// and the REST API, beside the transfer server.
public final class DaemonService: @unchecked Sendable {
    public let store: JobStore
    public let runner: JobRunner
    public private(set) var api: DaemonAPI
    public let apiListen: HostPort
    /// The API speaks HTTPS with the center's certificate (`[daemon] api_tls`).
    public let apiTLS: Bool
    /// Follows the peers' catalogs (nil without a center certificate).
    public let federation: Federation?

    /// `peerAPIs`: the peers whose catalogs this center follows (`[[peer]] api`; those in
    /// `peersForwarded` without their entries, `follow = "datasets"`); `replicas`:
    /// where `ferry replicate` puts replicas here.
    public init(database: String, retry: RetryPolicy = RetryPolicy(), apiListen: HostPort, apiTLS: Bool = false, apiConnections: Int = 1024, apiIdleSeconds: Int = 60, apiRequestSeconds: Int = 10,
                runner settings: RunnerSettings, verifier: TokenVerifier, center: String,
                transfer: [String] = [], peerAPIs: [String: String] = [:], peersForwarded: Set<String> = [], syncSeconds: Int = 5, replicas: String? = nil,
                staging: String? = nil, stagingQuota: Int64 = 100 << 30, stagingBandwidth: Int64? = nil,
                catalogIndexes: Set<Catalog.SearchIndex> = [], catalogScanRows: Int64? = nil) throws {
        try DaemonService.createPrivately(database)
        store = try JobStore(database: database, retry: retry)
        runner = try JobRunner(store: store, settings: settings, workerID: center + "-" + String(getpid()))
        let catalog = try Catalog(db: store.db, indexes: catalogIndexes)
        if let catalogScanRows { catalog.scanBudget = catalogScanRows }
        var centers: CenterVerifier?
        if let cert = settings.tls.certificate, let key = settings.tls.key {
            federation = try Federation(catalog: catalog, store: store, me: center, peers: peerAPIs, forwarded: peersForwarded, certificate: cert, key: key, ca: settings.tls.ca, intervalSeconds: syncSeconds)
            centers = CenterVerifier(ca: settings.tls.ca, me: center, peers: Set(settings.peers.keys))
        } else {
            federation = nil
        }
        var stagingSettings: StagingSettings?
        if let staging {
            guard case .local(let real) = try runner.endpoint(staging).0 else { throw TransferError(.usage, "daemon.staging '\(staging)' is not a local path") }
            try FileManager.default.createDirectory(atPath: real, withIntermediateDirectories: true)
            stagingSettings = StagingSettings(cache: try StagingCache(db: store.db), root: staging, rootReal: real, quota: stagingQuota)
            stagingSettings!.bandwidth = stagingBandwidth
        }
        api = DaemonAPI(store: store, verifier: verifier, center: center, runner: runner, catalog: catalog, transfer: transfer, centers: centers,
                        replicaRoot: replicas, staging: stagingSettings)
        api.secureCookies = apiTLS
        api.eventStreams = EventStreamLimit(connections: apiConnections)
        api.federation = federation
        self.apiListen = apiListen
        self.apiTLS = apiTLS
        self.apiConnections = apiConnections
        // Closed when idle (no request being read or answered; an event stream is an answer),
        // and when a request started does not arrive in time (`RequestDeadline`).
        let expired = api.expiredRequests
        let http1: HTTPServerBuilder = .http1(configuration: .init(additionalChannelHandlers: [RequestDeadline(seconds: apiRequestSeconds, expired: expired)],
                                                                   idleTimeout: .seconds(Int64(apiIdleSeconds))))
        if apiTLS {
            guard let cert = settings.tls.certificate, let key = settings.tls.key else {
                throw TransferError(.usage, "the API speaks https (api_tls) with the center's certificate: give certificate and key")
            }
            do {
                var tls = TLSConfiguration.makeServerConfiguration(certificateChain: try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) },
                                                                   privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
                tls.minimumTLSVersion = .tlsv13
                // Each handshake asks which certificate to present: the one loaded at start
                // until a SIGHUP reloads them (`reloadAPICertificate`).
                let current = apiCertificate
                tls.sslContextCallback = { _, promise in promise.succeed(current.override ?? .noChanges) }
                apiServer = try HTTPServerBuilder.tls(http1, tlsConfiguration: tls)
            } catch {
                throw TransferError(.auth, "the API's TLS: cannot load \(cert) and \(key): \(error)")
            }
        } else {
            apiServer = http1
        }
    }

    /// A SQLite database that does not exist yet is created empty, mode 0600, before SQLite
    /// opens it (attack review finding 8): SQLite creates a new file with the process's umask
    /// (0644 under the usual 022), and the queue and the catalog hold every user's jobs and
    /// private datasets, readable then by every local account that can reach its directory.
    /// SQLite gives its `-wal` and `-shm` files the database file's own mode. An existing file
    /// is left as it is (an operator may have opened it to a backup group on purpose); a
    /// `postgres://` URL and ":memory:" are not files.
    static func createPrivately(_ database: String) throws {
        guard !database.hasPrefix("postgres://"), !database.hasPrefix("postgresql://"), database != ":memory:", !database.hasPrefix("file:") else { return }
        let fd = open(database, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd >= 0 {
            // The umask cannot widen 0600, only narrow it; fchmod makes it exactly 0600.
            _ = fchmod(fd, 0o600)
            close(fd)
        } else if errno != EEXIST {
            // SQLite's own open says why (a missing directory, no rights) in its own words.
            return
        }
    }

    /// The API's certificate and key as last reloaded (nil: those it started with).
    let apiCertificate = APICertificate()

    /// SIGHUP: the API's next handshakes present the certificate and key now in the files the
    /// configuration names (the transfer server's are reloaded beside). Connections open keep
    /// theirs. Throws, and changes nothing, when the files do not load or do not match.
    public func reloadAPICertificate() throws {
        let identity = runner.settings.tls
        guard apiTLS, let cert = identity.certificate, let key = identity.key else { return }
        // A mismatched pair or a certificate outside the federation would fail every
        // handshake: OpenSSL checks them together first (as the transfer server's reload).
        _ = try TLSContext(server: true, identity: identity)
        let chain: [NIOSSLCertificate]
        let privateKey: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(cert)
            privateKey = try NIOSSLPrivateKey(file: key, format: .pem)
        } catch {
            throw TransferError(.auth, "the API's certificate: cannot load \(cert) and \(key): \(error)")
        }
        var o = NIOSSLContextConfigurationOverride()
        o.certificateChain = chain.map { .certificate($0) }
        o.privateKey = .privateKey(privateKey)
        apiCertificate.override = o
    }

    /// Open API connections at most (`[daemon] api_connections`).
    let apiConnections: Int

    /// HTTPS with the center's certificate (TLS 1.3), or plain HTTP on loopback.
    let apiServer: HTTPServerBuilder

    /// Writes the API's refusals and changes and the runner's jobs to `log` (the transfer
    /// server's audit log, so one file holds every access). Before `runCenter`.
    public func attachAudit(_ log: AuditLog?) {
        api.audit = log
        runner.audit = log
    }

    /// More of `/metrics`: the transfer server's counters, the build, the certificates.
    public func attachMetrics(_ more: @escaping @Sendable () -> String) {
        api.extraMetrics = more
    }

    /// The HTTP server; `onRunning` gets the address it bound (port 0 resolved).
    func application(onRunning: @escaping @Sendable (HostPort) -> Void) -> some ApplicationProtocol {
        let listen = apiListen
        // Hummingbird's own lines (info: "server started", one per request at debug) would
        // interleave with ferry's; warnings and errors still show.
        var logger = Logger(label: "ferry.api")
        logger.logLevel = .warning
        // The listen backlog: 4,096 (the kernel caps it at net.core.somaxconn), not
        // Hummingbird's 256. Scheduler hooks and scripts open a connection per call; when the
        // daemon is busy for a moment, connections wait in this queue, and one that finds it
        // full is dropped by the kernel without a word: the client's SYN is sent again after
        // one second, then three. Under `bench/stall.sh` (1,000 hooks) that was every answer
        // slower than a second (TcpExtListenOverflows counted the drops).
        return Application(router: api.router(), server: apiServer,
                           configuration: .init(address: .hostname(listen.host, port: Int(listen.port)), serverName: "ferry", backlog: 4096,
                                                availableConnectionsDelegate: MaximumAvailableConnections(apiConnections, logger: logger)),
                           onServerRunning: { channel in onRunning(HostPort(host: listen.host, port: UInt16(channel.localAddress?.port ?? Int(listen.port)))) },
                           logger: logger)
    }
}

/// The API's application as a service whose failure names the listener and its address (a
/// port in use said "Address already in use" and nothing else).
struct APIService<App: ApplicationProtocol>: Service {
    let app: App
    let listen: HostPort

    func run() async throws {
        do { try await app.run() } catch {
            throw TransferError(.io, "the daemon's API (api_listen) cannot serve on \(listen): \(error)")
        }
    }
}

/// The transfer server as a service: it already listens; a graceful shutdown stops it.
struct TransferServerService: Service {
    let server: TransferServer

    func run() async throws {
        try? await gracefulShutdown()
        // Sessions told why and waited for (off the concurrency pool), within the group's
        // shutdown budget.
        let (cut, ended) = await withCheckedContinuation { (done: CheckedContinuation<(cut: Int, ended: Int), Never>) in
            Thread.detachNewThread { done.resume(returning: server.stop(waitSeconds: 3)) }
        }
        if cut > 0 {
            Logger(label: "ferry.serve").notice("stopped: \(cut) transfer session\(cut == 1 ? "" : "s") cut (each told \"server stopping\"; a rerun resumes), \(ended) of them ended within 3 s")
        }
    }
}

/// The first service told to stop: the log says that a stop began (the others then stop in
/// reverse order, each taking its time).
struct StopNotice: Service {
    func run() async throws {
        try? await gracefulShutdown()
        Logger(label: "ferry.serve").notice("stopping (a signal, or a service that ended): the job runner checkpoints its jobs, the API closes, transfer sessions are told to rerun")
    }
}

/// The job runner as a service: a graceful shutdown stops claiming and checkpoints running
/// transfers (`up_for_reschedule`; their journals keep the progress).
struct JobRunnerService: Service {
    let runner: JobRunner

    func run() async throws {
        runner.start()
        try? await gracefulShutdown()
        // `stop` waits for the workers (bounded): off the concurrency pool.
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                self.runner.stop(seconds: 7)
                done.resume()
            }
        }
    }
}

/// Prestaging's settler as a service: once a second, staging-cache entries whose transfer
/// ended become ready (or failed) and the cache is evicted to its quota. This is the only
/// writer of those transitions besides the hooks' own POSTs, so `GET /stage/status` and
/// `/stage/cache` only read (no walks or deletions inside a GET).
struct StagingSettlerService: Service {
    let api: DaemonAPI
    let staging: StagingSettings

    func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                // At most a year of rounds: the loop ends with the daemon.
                for _ in 0..<(366 * 86_400) {
                    if Task.isCancelled { break }
                    let (api, staging) = (self.api, self.staging)
                    try? await onPool(.writes) { api.settle(staging) }
                    try await Task.sleep(nanoseconds: 1_000_000_000)
                }
            }
        } catch is CancellationError {
            // The daemon is stopping.
        }
    }
}

/// Federation (following the peers' catalogs, settling replicas) as a service.
struct FederationService: Service {
    let federation: Federation

    func run() async throws {
        federation.start()
        try? await gracefulShutdown()
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                self.federation.stop()
                done.resume()
            }
        }
    }
}

/// Runs `ferry serve` until SIGTERM or SIGINT (swift-service-lifecycle): the transfer server,
/// and with a `[daemon]` table the runner and the API. On the signal, the services stop in
/// reverse order: the runner stops taking work and checkpoints what runs, the API closes, the
/// transfer server stops; all within 9 s (then whatever remains is cancelled).
public func runCenter(server: TransferServer, daemon: DaemonService?, metrics: MetricsEndpoint? = nil,
                      onAPIRunning: @escaping @Sendable (HostPort) -> Void) async throws {
    var logger = Logger(label: "ferry.serve")
    logger.logLevel = .warning
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
        .init(service: TransferServerService(server: server), successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)
    ]
    if let daemon {
        // One audit log for the center: the transfer server's also takes the daemon's lines.
        daemon.attachAudit(server.configuration.audit)
        services.append(.init(service: APIService(app: daemon.application(onRunning: onAPIRunning), listen: daemon.apiListen),
                              successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup))
        services.append(.init(service: JobRunnerService(runner: daemon.runner), successTerminationBehavior: .gracefullyShutdownGroup,
                              failureTerminationBehavior: .gracefullyShutdownGroup))
        if let staging = daemon.api.staging {
            services.append(.init(service: StagingSettlerService(api: daemon.api, staging: staging), successTerminationBehavior: .gracefullyShutdownGroup,
                                  failureTerminationBehavior: .gracefullyShutdownGroup))
        }
        if let f = daemon.federation {
            services.append(.init(service: FederationService(federation: f), successTerminationBehavior: .gracefullyShutdownGroup,
                                  failureTerminationBehavior: .gracefullyShutdownGroup))
        }
    }
    if let metrics {
        let text: @Sendable () -> String
        if let api = daemon?.api { text = { api.metrics() } } else { text = metrics.text }
        services.append(.init(service: MetricsService(app: metrics.application(text: text), listen: metrics.listen),
                              successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup))
    }
    services.append(.init(service: StopNotice(), successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup))
    var config = ServiceGroupConfiguration(services: services, logger: logger)
    config.gracefulShutdownSignals = [.sigterm, .sigint]
    config.maximumGracefulShutdownDuration = .seconds(8)
    config.maximumCancellationDuration = .seconds(1)
    try await ServiceGroup(configuration: config).run()
}

/// The certificate the API presents after a reload (`DaemonService.reloadAPICertificate`).
final class APICertificate: @unchecked Sendable {
    private let lock = NSLock()
    private var value: NIOSSLContextConfigurationOverride?

    var override: NIOSSLContextConfigurationOverride? {
        get { lock.withLock { value } }
        set { lock.withLock { value = newValue } }
    }
}
