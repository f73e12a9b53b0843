import ArgumentParser
import CBuildInfo
import Daemon
import Foundation
import Logging
import Transfer

extension Ferry {
    /// `ferry serve`: the transfer server.
    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve",
            abstract: "Serve exports over TLS: clients push into them and pull from them.",
            discussion: """
            Settings come from --config FILE (TOML, see docs/SECURITY.md) and/or the options \
            below (options win). Clients authenticate with a user token signed by a trusted \
            center, or with a center certificate from the federation CA.
            """
        )

        @Option(name: .customLong("config"), help: "Configuration file (TOML): center, listen, certificate, exports, limits.")
        var configFile: String?

        @Option(help: "Serve one directory as the whole namespace (every path resolves beneath it).")
        var root: String?

        @Option(help: "Serve a directory under a name: NAME=DIR[:ro|:rw] (repeatable).")
        var export: [String] = []

        @Option(help: "Address to listen on, HOST:PORT or [V6]:PORT (repeatable; port 0 picks one; default [::]:7700 and 0.0.0.0:7700).")
        var listen: [String] = []

        @Option(help: "This center's certificate (PEM, from `ferry ca issue`).")
        var cert: String?

        @Option(help: "This center's private key (PEM).")
        var key: String?

        @Option(help: "The federation CA certificate that client certificates must chain to.")
        var ca: String?

        @Option(name: .customLong("token-issuer"), help: "Certificate of a center whose user tokens are accepted (repeatable; default: this center's own).")
        var tokenIssuer: [String] = []

        @Option(help: "Revocation list of token ids (one per line), re-read when it changes.")
        var revocations: String?

        @Option(name: .customLong("min-protection"), help: "Refuse transfers below this protection: clear, safe or private.")
        var minProtection: String?

        @Option(name: .customLong("handshake-timeout"), help: "Seconds a new connection has to identify itself (default 10).")
        var handshakeTimeout: Int?

        @Option(name: .customLong("idle-timeout"), help: "Seconds of silence after which a session is dropped (default 120).")
        var idleTimeout: Int?

        @Option(name: .customLong("max-connections"), help: "Connections served at once; more are refused (default 256).")
        var maxConnections: Int?

        @Option(name: .customLong("max-connections-per-address"), help: "Connections from one address at once; more are refused (default 64).")
        var maxConnectionsPerAddress: Int?

        @Option(name: .customLong("max-unauthenticated"), help: "Connections not yet authenticated, at once: a separate, smaller budget (default 64).")
        var maxUnauthenticated: Int?

        @Option(name: .customLong("max-unauthenticated-per-address"), help: "Connections not yet authenticated from one address (IPv6: one /64) at once (default 8).")
        var maxUnauthenticatedPerAddress: Int?

        @Option(name: .customLong("run-as"), help: "Running as root: the local account of every user not mapped otherwise (default: the account named like the token's user).")
        var runAs: String?

        @Option(name: .customLong("map"), help: "Running as root: USER=ACCOUNT, the local account a token's user (NAME, NAME@CENTER, center:NAME) acts as (repeatable).")
        var map: [String] = []

        @Option(name: .customLong("audit-log"), help: "Append one JSON line per session and per refused connection to this file.")
        var auditLog: String?

        @Option(name: .customLong("metrics-listen"), help: "Serve /metrics (Prometheus) and /health over plain HTTP on HOST:PORT, with or without a daemon.")
        var metricsListen: String?

        @Flag(name: .customLong("zero-copy"), help: "Sending (pulls from this server): raw chunks go with io_uring SEND_ZC from their buffers, not copied into the socket (for a NIC; no gain over loopback; env FERRY_ZERO_COPY=on).")
        var zeroCopy = false

        @Option(name: .customLong("direct-io"), help: "Large files on ext4, XFS, Lustre, GPFS and BeeGFS: written with O_DIRECT when receiving (pushes to this server), read with O_DIRECT when sending (pulls) and the page cache does not hold them (auto, the default; env FERRY_DIRECT_IO), or always through the page cache (off).")
        var directIO: String?

        @Flag(help: "Check --config FILE and the files it names, print every problem with its line, start nothing (exit 0: none, 1: some).")
        var check = false

        func validate() throws {
            for v in [handshakeTimeout, idleTimeout, maxConnections, maxConnectionsPerAddress, maxUnauthenticated, maxUnauthenticatedPerAddress] {
                if let v, v < 1 { throw ValidationError("timeouts and limits must be positive") }
            }
        }

        func run() async throws {
            if check { try checkConfiguration(); return }
            var config: ServerConfiguration
            var daemonSection: DaemonConfig?
            var peers: [String: HostPort] = [:]
            var peerAPIs: [String: String] = [:]
            var peersForwarded: Set<String> = []
            var peerNodes: [String: [HostPort]] = [:]
            var metricsAddress: HostPort?
            do {
                var file = try configFile.map { try ServerConfigFile(path: $0) }
                var exports = file?.exports ?? []
                if let root { exports = [Export(name: "", path: root, writable: true)] }
                for e in export { exports.append(try Export(parsing: e)) }
                guard !exports.isEmpty else { throw TransferError(.usage, "nothing to serve: give --root DIR, --export NAME=DIR or a --config with [[export]]") }
                file?.exports = exports
                var addresses = try listen.map { try HostPort(parsing: $0) }
                if addresses.isEmpty { addresses = file?.listen ?? [] }
                // Neither says: the registered port on every address, IPv6 and IPv4 (the
                // port clients dial when a ferry:// URL names none).
                if addresses.isEmpty {
                    addresses = [HostPort(host: "::", port: ClientConfig.transferPort), HostPort(host: "0.0.0.0", port: ClientConfig.transferPort)]
                }
                let identity = TLSIdentity(certificate: cert ?? file?.certificate, key: key ?? file?.key, ca: ca ?? file?.ca ?? "")
                guard !identity.ca.isEmpty else { throw TransferError(.usage, "give the federation CA certificate (--ca)") }
                config = ServerConfiguration(exports: exports, listen: addresses, tls: identity)
                if let f = file {
                    daemonSection = try DaemonConfig(f, path: configFile ?? "")
                    peers = f.peers
                    peerAPIs = f.peerAPIs
                    peersForwarded = f.peersForwarded
                    peerNodes = f.peerNodes
                    config.tokenIssuers = f.tokenIssuers
                    config.revocations = f.revocations
                    config.minimumProtection = f.minimumProtection
                    config.handshakeTimeoutSeconds = f.handshakeTimeoutSeconds
                    config.idleTimeoutSeconds = f.idleTimeoutSeconds
                    config.connectionsMax = f.connectionsMax
                    config.connectionsPerAddressMax = f.connectionsPerAddressMax
                    config.unauthenticatedMax = f.unauthenticatedMax
                    config.unauthenticatedPerAddressMax = f.unauthenticatedPerAddressMax
                    config.refusalAuditIntervalSeconds = f.refusalAuditIntervalSeconds
                    if let d = f.directIO { DirectIO.enabled = d }
                    if f.zeroCopy { ZeroCopy.enabled = true }
                    if let a = f.auditLog { config.audit = try AuditLog(path: a) }
                    if let name = f.center, let c = identity.certificate, try CertificateInfo(path: c).commonName != name {
                        throw TransferError(.usage, "the certificate '\(c)' is not for center '\(name)'")
                    }
                }
                metricsAddress = try metricsListen.map { try HostPort(parsing: $0) } ?? file?.metricsListen
                if !tokenIssuer.isEmpty { config.tokenIssuers = tokenIssuer }
                if let revocations { config.revocations = revocations }
                if let m = minProtection { config.minimumProtection = try ProtectionLevel(parsing: m) }
                if let directIO { DirectIO.enabled = try DirectIO.parse(directIO) }
                if zeroCopy { ZeroCopy.enabled = true }
                if let v = handshakeTimeout { config.handshakeTimeoutSeconds = v }
                if let v = idleTimeout { config.idleTimeoutSeconds = v }
                if let v = maxConnections { config.connectionsMax = v }
                if let v = maxConnectionsPerAddress { config.connectionsPerAddressMax = v }
                if let v = maxUnauthenticated { config.unauthenticatedMax = v }
                if let v = maxUnauthenticatedPerAddress { config.unauthenticatedPerAddressMax = v }
                if let auditLog { config.audit = try AuditLog(path: auditLog) }
                if let f = file { config.identities = f.identities }
                if let runAs { config.identities.runAs = runAs }
                for m in map {
                    guard let eq = m.firstIndex(of: "="), eq != m.startIndex, m.index(after: eq) != m.endIndex else {
                        throw TransferError(.usage, "--map takes USER=ACCOUNT, not '\(m)'")
                    }
                    config.identities.entries[String(m[..<eq])] = String(m[m.index(after: eq)...])
                }
                if IdentityMap.canSwitch {
                    // Checked now, not at the first session: a typo is a start-up error.
                    for a in Set(config.identities.entries.values).union(config.identities.runAs.map { [$0] } ?? []).union(exports.compactMap(\.account)) {
                        _ = try LocalAccount.lookup(a)
                    }
                }
            } catch {
                throw ValidationError(asMessage(error))
            }
            // From here on every line of the server (sessions, refusals, the daemon, the API's
            // warnings) has a time and a level, or journald's priority when journald reads it.
            FerryLogHandler.bootstrap()
            config.logThroughSwiftLog()
            let server: TransferServer
            let bound: [HostPort]
            do {
                server = try TransferServer(config)
                bound = try server.start()
            } catch {
                printError("ferry serve: error: the transfer server (listen): \(asMessage(error))\n")
                throw ExitCode(1)
            }
            for b in bound { print("ferry serve: center \(server.center) listening on \(b)") }
            // The build, the certificates' expiry and the transfer server's families: in the
            // daemon's /metrics, and on `metrics_listen` with or without a daemon.
            let tlsIdentity = config.tls
            let baseMetrics: @Sendable () -> String = { [server] in
                var o = "# HELP ferry_build_info The running build: version and commit.\n# TYPE ferry_build_info gauge\n"
                o += "ferry_build_info{version=\"\(Ferry.version)\",commit=\"\(String(cString: ferry_build_commit()))\"} 1\n"
                o += "# HELP ferry_certificate_expiry_timestamp_seconds When the center's certificate and the federation CA expire.\n# TYPE ferry_certificate_expiry_timestamp_seconds gauge\n"
                o += "ferry_certificate_expiry_timestamp_seconds{certificate=\"center\"} \(server.certificateNotAfter)\n"
                if let ca = try? CertificateInfo(path: tlsIdentity.ca) { o += "ferry_certificate_expiry_timestamp_seconds{certificate=\"ca\"} \(ca.notAfter)\n" }
                return o + server.metricsText()
            }
            var daemon: DaemonService?
            if let d = daemonSection {
                do {
                    var settings = RunnerSettings(exports: config.exports, tls: config.tls)
                    settings.peers = peers
                    settings.identities = config.identities
                    settings.allowHosts = d.allowHosts
                    settings.daemonAreas = [d.staging, d.replicas].compactMap { $0 }
                    settings.workers = d.workers
                    settings.leaseSeconds = Int64(d.leaseSeconds)
                    settings.perPeerMax = d.perPeer
                    settings.perUserMax = d.userShare
                    if d.userShare >= d.centerWorkers && d.centerWorkers > 1 {
                        Logger(label: "ferry.serve").warning("daemon.per_user = \(d.userShare) with \(d.centerWorkers) workers on the center: one user's jobs can hold every worker while other users' wait (the default, workers × nodes − 1, keeps one for them)")
                    }
                    settings.node = d.node
                    settings.nodes = d.nodes
                    settings.stripe = d.stripe
                    settings.peerNodes = peerNodes
                    let issuers = config.tokenIssuers.isEmpty ? [config.tls.certificate ?? ""] : config.tokenIssuers
                    let verifier = try TokenVerifier(issuerCertificates: issuers, revocationsPath: config.revocations)
                    var retry = RetryPolicy()
                    retry.maxAttempts = d.maxAttempts
                    retry.baseSeconds = Double(d.retryBaseSeconds)
                    let apiTLS = d.apiTLS ?? !HTTPClient.isLoopback(d.apiListen.host)
                    if !apiTLS && !HTTPClient.isLoopback(d.apiListen.host) {
                        throw TransferError(.usage, "daemon.api_tls = false on \(d.apiListen): plain http only on a loopback api_listen (tokens would cross the network in clear)")
                    }
                    let service = try DaemonService(database: d.database, retry: retry, apiListen: d.apiListen, apiTLS: apiTLS,
                                                    apiConnections: d.apiConnections, apiIdleSeconds: d.apiIdleSeconds, apiRequestSeconds: d.apiRequestSeconds, runner: settings, verifier: verifier, center: server.center,
                                                    transfer: bound.map(\.description), peerAPIs: peerAPIs, peersForwarded: peersForwarded, syncSeconds: d.syncSeconds, replicas: d.replicas,
                                                    staging: d.staging, stagingQuota: d.stagingQuota, stagingBandwidth: d.stagingBandwidth,
                                                    catalogIndexes: d.catalogIndexes, catalogScanRows: d.catalogScanRows)
                    service.attachMetrics(baseMetrics)
                    daemon = service
                } catch {
                    printError("ferry serve: error: \(asMessage(error))\n")
                    server.stop()
                    throw ExitCode(1)
                }
            }
            fflush(stdout)
            // SIGHUP (`systemctl reload ferry`): the certificate, key and CA files read again.
            let renewal = CertificateRenewal(server: server, identity: config.tls, daemon: daemon,
                                             configuration: configFile.map { ($0, try? readSmallFile($0, maxBytes: 1 << 20)) })
            renewal.start()
            defer { renewal.stop() }
            let center = server.center
            do {
                let scheme = daemon?.apiTLS == true ? "https" : "http"
                var metrics: MetricsEndpoint?
                if let m = metricsAddress {
                    metrics = MetricsEndpoint(listen: m, text: { baseMetrics() + processMetricsText() }, onRunning: { address in
                        print("ferry serve: center \(center) metrics on http://\(address)/metrics")
                        fflush(stdout)
                    })
                }
                try await runCenter(server: server, daemon: daemon, metrics: metrics) { address in
                    print("ferry serve: center \(center) api listening on \(scheme)://\(address)")
                    fflush(stdout)
                }
            } catch {
                printError("ferry serve: error: \(asMessage(error))\n")
                server.stop()
                throw ExitCode(1)
            }
            printError("ferry serve: stopped\n")
        }

        /// `--check`: every problem of the file (each key's value, at its line) and of the files
        /// it names (certificate, key and CA that load together and name the center; token
        /// issuers, revocations; export directories; the audit log's directory; local accounts),
        /// all at once. Listening addresses are not bound: the server being checked may run.
        func checkConfiguration() throws {
            guard let path = configFile else { throw ValidationError("--check checks a configuration: give --config FILE") }
            var problems: [ConfigProblem] = []
            var file: ServerConfigFile?
            do {
                let text = try readSmallFile(path, maxBytes: 1 << 20)
                let dir = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
                file = try ServerConfigFile(parsing: text, relativeTo: dir.isEmpty ? "/" : dir, problems: &problems)
            } catch {
                problems.append(ConfigProblem(line: nil, message: asMessage(error)))
            }
            var summary = ""
            if let f = file {
                func problem(_ key: String, _ message: String) { problems.append(ConfigProblem(line: f.lines[key], message: message)) }
                if let table = f.daemonTable {
                    let d = DaemonConfig(table: table, relativeTo: f.directory, lines: f.lines, problems: &problems)
                    // A SQLite database the daemon could not create or open fails only at start.
                    if !d.database.hasPrefix("postgres://") && !d.database.hasPrefix("postgresql://") {
                        let parent = (d.database as NSString).deletingLastPathComponent
                        let fm = FileManager.default
                        if fm.fileExists(atPath: d.database) ? !fm.isWritableFile(atPath: d.database) : !fm.isWritableFile(atPath: parent.isEmpty ? "." : parent) {
                            problem("daemon.database", "the daemon's database '\(d.database)' cannot be created or written there")
                        }
                    }
                }
                var exportNames: Set<String> = []
                for (i, e) in f.exports.enumerated() where !exportNames.insert(e.name).inserted {
                    problem("export[\(i)]", "export '\(e.name)' is defined twice")
                }
                func readable(_ p: String?, _ key: String, _ what: String) -> Bool {
                    guard let p else { return false }
                    if FileManager.default.isReadableFile(atPath: p) { return true }
                    problem(key, "\(what) '\(p)' cannot be read")
                    return false
                }
                let cert = cert ?? f.certificate, key = key ?? f.key, caFile = ca ?? f.ca
                if caFile == nil { problem("ca", "no federation CA: give ca = \"FILE\"") }
                let loadable = [readable(cert, "certificate", "the certificate"), readable(key, "key", "the key"), readable(caFile, "ca", "the CA certificate")]
                if loadable.allSatisfy({ $0 }) {
                    do {
                        _ = try TLSContext(server: true, identity: TLSIdentity(certificate: cert, key: key, ca: caFile ?? ""))
                        if let name = f.center, let c = cert, try CertificateInfo(path: c).commonName != name {
                            problem("center", "the certificate '\(c)' is not for center '\(name)'")
                        }
                    } catch {
                        problem("certificate", "the certificate, key and CA do not load together: \(asMessage(error))")
                    }
                } else if cert == nil || key == nil {
                    problem("certificate", "a server needs certificate = \"FILE\" and key = \"FILE\"")
                }
                for (i, issuer) in f.tokenIssuers.enumerated() where !FileManager.default.isReadableFile(atPath: issuer) {
                    problem("token_issuers", "token issuer \(i + 1), '\(issuer)', cannot be read")
                }
                _ = readable(f.revocations, "revocations", "the revocation list")
                if f.exports.isEmpty && root == nil && export.isEmpty && f.lines["export[0]"] == nil { problem("export", "nothing to serve: no [[export]]") }
                for (i, e) in f.exports.enumerated() {
                    var isDir: ObjCBool = false
                    if !FileManager.default.fileExists(atPath: e.path, isDirectory: &isDir) || !isDir.boolValue {
                        problem("export[\(i)]", "export '\(e.name)': '\(e.path)' is not a directory")
                    }
                }
                if let a = f.auditLog {
                    let parent = (a as NSString).deletingLastPathComponent
                    if !FileManager.default.isWritableFile(atPath: parent.isEmpty ? "." : parent) { problem("audit_log", "the audit log's directory '\(parent)' is not writable") }
                }
                if IdentityMap.canSwitch {
                    for a in Set(f.identities.entries.values).union(f.identities.runAs.map { [$0] } ?? []).union(f.exports.compactMap(\.account)).sorted() {
                        do { _ = try LocalAccount.lookup(a) } catch { problem("run_as", asMessage(error)) }
                    }
                }
                summary = " (center \(f.center ?? "?"), \(f.exports.count) export\(f.exports.count == 1 ? "" : "s"), \(f.peers.count) peer\(f.peers.count == 1 ? "" : "s")\(f.daemonTable == nil ? "" : ", a daemon"))"
            }
            if problems.isEmpty {
                print("ferry serve --check: \(path): no problem\(summary)")
                return
            }
            printError("ferry serve --check: \(path): \(ConfigProblem.text(problems))\n")
            throw ExitCode(1)
        }
    }
}

/// The certificate's lifecycle in a running `ferry serve`: SIGHUP reloads the center's
/// certificate, key and CA from the files the configuration names (replace them, then
/// `systemctl reload ferry`) for the transfer server's next handshakes and the job runner's;
/// transfers running go on. A certificate or CA that expires within 14 days is warned about in
/// the log at start, at each reload and twice a day.
///
/// The daemon's HTTPS API presents the reloaded certificate from its next handshake on too
/// (`DaemonService.reloadAPICertificate`); its open connections keep theirs. `ferry ca renew
/// --center NAME` writes the files (the previous ones kept as `.prev`).
final class CertificateRenewal: @unchecked Sendable {
    let server: TransferServer
    let identity: TLSIdentity
    let daemon: DaemonService?
    private let logger = Logger(label: "ferry.serve")
    private var sources: [any DispatchSourceProtocol] = []
    static let warnDays: Int64 = 14

    /// The configuration file and its text as the server started with it: read once, at start.
    let configuration: (path: String, text: String?)?

    init(server: TransferServer, identity: TLSIdentity, daemon: DaemonService?, configuration: (path: String, text: String?)? = nil) {
        self.server = server
        self.identity = identity
        self.daemon = daemon
        self.configuration = configuration
    }

    /// An operator who edits the configuration and reloads (the natural reflex after making an
    /// export read-only or removing a user) is told that only the certificates were read
    /// again: exports, users, identities, peers and [daemon] are read at start. Reading them
    /// again while sessions run is not done (a session keeps the rules it started with, and
    /// a half-valid edit would have to be refused as a whole); a restart applies them, and
    /// running transfers resume after it.
    func configurationChanged() -> Bool {
        guard let c = configuration else { return false }
        return (try? readSmallFile(c.path, maxBytes: 1 << 20)) != c.text
    }

    func start() {
        signal(SIGHUP, SIG_IGN)
        let hup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        hup.setEventHandler { [self] in reload() }
        hup.resume()
        let timer = DispatchSource.makeTimerSource(queue: .global())
        timer.schedule(deadline: .now() + .seconds(43_200), repeating: .seconds(43_200))
        timer.setEventHandler { [self] in warnIfExpiring() }
        timer.resume()
        sources = [hup, timer]
        warnIfExpiring()
    }

    func stop() {
        for s in sources { s.cancel() }
    }

    func reload() {
        do {
            let info = try server.reload(identity)
            try daemon?.runner.reloadTLS()
            try daemon?.reloadAPICertificate()
            logger.notice("SIGHUP: reloaded the certificate of center \(info.commonName) (valid until \(isoTime(info.notAfter))), its key and the CA; new sessions use them")
            warnIfExpiring()
        } catch {
            logger.error("SIGHUP: the certificate, key and CA were not reloaded, the previous ones stay in use: \(asMessage(error))")
        }
        if configurationChanged(), let path = configuration?.path {
            logger.warning("SIGHUP: \(path) changed since the server started, and a reload reads only the certificate, key and CA: exports, users, identities, peers and [daemon] settings stay as they were until a restart (systemctl restart ferry; running transfers resume after it)")
        }
    }

    func warnIfExpiring(now: Int64 = Int64(Date().timeIntervalSince1970)) {
        var what: [(String, Int64)] = [("the center's certificate", server.certificateNotAfter)]
        if let ca = try? CertificateInfo(path: identity.ca) { what.append(("the federation CA", ca.notAfter)) }
        for (name, notAfter) in what where notAfter - now < CertificateRenewal.warnDays * 86_400 {
            let days = (notAfter - now) / 86_400
            if notAfter <= now {
                logger.error("\(name) expired at \(isoTime(notAfter)): peers refuse this center; renew it (ferry ca renew) and send SIGHUP")
            } else {
                logger.warning("\(name) expires at \(isoTime(notAfter)) (in \(days) days): renew it (ferry ca renew) and send SIGHUP (systemctl reload ferry)")
            }
        }
    }
}
