import Foundation
import GlobalFS
import Transfer

/// The `[daemon]` table of `ferry serve --config FILE`, decoded by the daemon itself (issue 14
/// item 5): the engine's `ServerConfigFile` only keeps the table (`daemonTable`) and the file's
/// directory, so the transfer engine carries no job-queue, API or staging setting. The file's
/// format is unchanged; unknown keys are still errors at start-up, named `daemon.KEY`.
///
///     [daemon]
///     database = "jobs.sqlite"          # or postgres://USER@HOST:PORT/DB (shared by the center's daemons)
///     api_listen = "127.0.0.1:7480"
///     api_tls = true                    # default: on, except on a loopback api_listen
///     api_connections = 1024
///     api_idle_seconds = 60
///     api_request_seconds = 10
///     workers = 2
///     allow_hosts = ["dtn.example:7700"]
///     lease_seconds = 30
///     per_peer = 4
///     per_user = 1                      # default: workers × nodes − 1 (at least 1)
///     max_attempts = 5
///     retry_base_seconds = 5
///     sync_seconds = 5
///     replicas = "/EXPORT/DIR"
///     staging = "/EXPORT/DIR"
///     staging_quota = "100G"
///     staging_bwlimit = "200M"
///     catalog_indexes = ["size", "mtime"]
///     catalog_scan_rows = 2000000
///     node = "dtn1"                     # this transfer node's name (default: the host's name)
///     nodes = 3                         # transfer nodes of this center on one PostgreSQL and one shared filesystem
///     stripe_threshold = "4G"           # a job moving more is striped across them
///     stripe_range = "256M"             # a big file's part (a multiple of 4 MiB)
///     stripe_files = 1000               # at most this many files per part of a tree
///     stripe_group = "256M"             # and about this many bytes
///     per_node = 2                      # parts one node runs at once
public struct DaemonConfig: Sendable {
    /// The job queue: a SQLite file (relative: beside the configuration), or a
    /// `postgres://USER@HOST:PORT/DB` URL (or `postgres://USER@/DB?host=/SOCKET/DIR`, its Unix
    /// socket) that several daemons of the center share.
    public var database: String
    /// The SQLite database of a daemon configured under /etc when it names none.
    public static let systemDatabase = "/var/lib/ferry/jobs.sqlite"
    /// `allow_hosts`: HOST:PORT of transfer servers a job may name besides the peers
    /// (`ferry://HOST:PORT/...`); the daemon dials nothing else.
    public var allowHosts: [String] = []
    /// Where the REST API listens.
    public var apiListen = HostPort(host: "127.0.0.1", port: 7480)
    /// `api_tls`: the API speaks HTTPS with the center's certificate (TLS 1.3). Default:
    /// on, except on a loopback `api_listen`, where nothing crosses a network; off is
    /// refused on any other address (tokens and center assertions would travel in clear).
    public var apiTLS: Bool?
    public var workers = 2
    public var leaseSeconds = 30
    public var perPeer = 4
    /// `per_user` as configured; `userShare` is what applies.
    public var perUser: Int?
    /// A user's transfers at once across the center (whole jobs and striped parts): `per_user`,
    /// or by default one less than the center's workers (`workers` × `nodes`), at least one.
    /// The worker left over is another user's: one user's slow jobs (a low `bwlimit`, a big
    /// file) cannot hold every worker while the others' jobs wait, as the queue does not
    /// take a running job back. A `per_user` of the workers or more gives that up; the daemon
    /// warns at its start.
    public var userShare: Int { perUser ?? max(1, centerWorkers - 1) }
    /// The workers of the center's daemons together (`workers` × `nodes`).
    public var centerWorkers: Int { workers * max(1, nodes) }
    /// Attempts per job unless the request says otherwise, and the first retry's delay
    /// (it doubles per attempt, ±20 % jitter, at most 10 minutes).
    public var maxAttempts = 5
    public var retryBaseSeconds = 5
    /// Seconds between two syncs with each followed peer's catalog.
    public var syncSeconds = 5
    /// The API's connections: at most `apiConnections` open at once (beyond it the daemon
    /// stops accepting until one closes), and one idle (no request in progress) for
    /// `apiIdleSeconds` is closed: a flood of idle connections cannot take the daemon's
    /// descriptors.
    public var apiConnections = 1024
    public var apiIdleSeconds = 60
    /// A connection waiting for a request (from its opening, TLS handshake included, or from
    /// the end of its last answer) must have it whole within `apiRequestSeconds`, or it is
    /// closed: a client trickling bytes cannot hold a connection, and an idle keep-alive
    /// connection lasts that long (`RequestDeadline`).
    public var apiRequestSeconds = 10
    /// Where `ferry replicate` puts replicas of other centers' datasets: a local job path
    /// /EXPORT/DIR; a replica goes to /EXPORT/DIR/CENTER/NAME[@VERSION]. Unset: this center
    /// takes no replicas.
    public var replicas: String?
    /// Prestaging: the staging cache as a local job path /EXPORT/DIR (unset: none), and
    /// its quota in bytes (unpinned entries are evicted beyond it).
    public var staging: String?
    public var stagingQuota: Int64 = 100 << 30
    /// Bytes per second for each staging transfer (nil: unlimited), so that staging does
    /// not starve interactive transfers on a shared link.
    public var stagingBandwidth: Int64?
    /// `catalog_indexes`: Global Files' optional search indexes, "size" and "mtime" (names
    /// are always indexed). Each makes `ferry find --min-size/--max-size` or `--newer` a
    /// lookup when few entries match, and costs every registration a random index insert
    /// (bench/RESULTS.md, "Search that scales"). Those not listed are dropped at start-up:
    /// every daemon of a center should list the same.
    public var catalogIndexes: Set<Catalog.SearchIndex> = []
    /// `catalog_scan_rows`: on SQLite, the most rows one `find` request reads in key order
    /// (a search no index serves); the answer then says where to go on. Default 2,000,000
    /// (about 0.3 s); 100 to 1,000,000,000.
    public var catalogScanRows: Int64?
    /// Striping (issue 19, docs/STRIPING.md): this node's name, how many nodes the center runs
    /// (1: none to stripe across), and how jobs are cut.
    public var node: String = DaemonConfig.hostName()
    public var nodes = 1
    public var stripe = StripeSettings()

    static func hostName() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return "node" }
        let name = String(cString: buf)
        return StripeSettings.isNodeName(name) ? name : "node"
    }

    /// The daemon's settings of a configuration file; nil when it has no `[daemon]` table.
    /// Errors name the file, as the engine's own do.
    public init?(_ file: ServerConfigFile, path: String) throws {
        guard let table = file.daemonTable else { return nil }
        var problems: [ConfigProblem] = []
        self.init(table: table, relativeTo: file.directory, lines: file.lines, problems: &problems)
        if !problems.isEmpty { throw TransferError(.usage, "\(path): \(ConfigProblem.text(problems))") }
    }

    /// Decodes a `[daemon]` table; relative paths (a SQLite file) are resolved in `dir`.
    public init(table: [String: TOMLValue], relativeTo dir: String) throws {
        var problems: [ConfigProblem] = []
        self.init(table: table, relativeTo: dir, lines: [:], problems: &problems)
        if !problems.isEmpty { throw TransferError(.usage, ConfigProblem.text(problems)) }
    }

    /// Decodes a `[daemon]` table, adding each problem to `problems` at its line (`lines`: the
    /// file's, keys `daemon.KEY`) instead of stopping at the first.
    public init(table: [String: TOMLValue], relativeTo dir: String, lines: [String: Int], problems: inout [ConfigProblem]) {
        var found: [ConfigProblem] = []
        func attempt(_ key: String, _ body: () throws -> Void) {
            do { try body() } catch { found.append(ConfigProblem(line: lines["daemon.\(key)"], message: (error as? TransferError)?.message ?? "\(error)")) }
        }
        defer { problems += found }
        func resolve(_ p: String) -> String { p.hasPrefix("/") ? p : dir + "/" + p }
        func str(_ v: TOMLValue, _ k: String) throws -> String {
            guard case .string(let s) = v else { throw TransferError(.usage, "'daemon.\(k)' must be a string") }
            return s
        }
        func int(_ v: TOMLValue, _ k: String) throws -> Int {
            guard case .integer(let n) = v, n > 0, n < Int64(Int32.max) else { throw TransferError(.usage, "'daemon.\(k)' must be a positive integer") }
            return Int(n)
        }
        // Beside the configuration, except for a system installation's (a file under /etc):
        // its state goes where the FHS and the packaged unit put it (/var/lib/ferry, the unit's
        // StateDirectory; the unit makes /etc read-only, so a database there never opened).
        database = dir == "/etc" || dir.hasPrefix("/etc/") ? DaemonConfig.systemDatabase : resolve("jobs.sqlite")
        for (k, v) in table.sorted(by: { (lines["daemon.\($0.key)"] ?? 0) < (lines["daemon.\($1.key)"] ?? 0) }) {
            attempt(k) {
            switch k {
            case "database":
                // A postgres:// URL is kept as it is; anything else is a SQLite file.
                let db = try str(v, k)
                database = db.hasPrefix("postgres://") || db.hasPrefix("postgresql://") ? db : resolve(db)
            case "api_listen": apiListen = try HostPort(parsing: try str(v, k))
            case "api_tls":
                guard case .bool(let b) = v else { throw TransferError(.usage, "daemon.api_tls is true or false") }
                apiTLS = b
            case "workers": workers = try int(v, k)
            case "allow_hosts":
                guard case .array(let a) = v else { throw TransferError(.usage, "'daemon.allow_hosts' must be an array of strings") }
                allowHosts = try a.map { try str($0, k) }
                for h in allowHosts { _ = try HostPort(parsing: h) }
            case "lease_seconds": leaseSeconds = try int(v, k)
            case "per_peer": perPeer = try int(v, k)
            case "per_user": perUser = try int(v, k)
            case "max_attempts": maxAttempts = try int(v, k)
            case "retry_base_seconds": retryBaseSeconds = try int(v, k)
            case "sync_seconds": syncSeconds = try int(v, k)
            case "api_connections":
                apiConnections = try int(v, k)
                guard (1...1_000_000).contains(apiConnections) else { throw TransferError(.usage, "daemon.api_connections is 1 to 1,000,000") }
            case "api_idle_seconds":
                apiIdleSeconds = try int(v, k)
                guard (1...86_400).contains(apiIdleSeconds) else { throw TransferError(.usage, "daemon.api_idle_seconds is 1 to 86,400") }
            case "api_request_seconds":
                apiRequestSeconds = try int(v, k)
                guard (1...3_600).contains(apiRequestSeconds) else { throw TransferError(.usage, "daemon.api_request_seconds is 1 to 3,600") }
            case "staging":
                let r = try str(v, k)
                guard r.hasPrefix("/"), r.count > 1 else { throw TransferError(.usage, "daemon.staging is a local job path /EXPORT/DIR, not '\(r)'") }
                staging = r
            case "staging_bwlimit":
                let text = try str(v, k)
                guard let q = try? ByteSize.parse(text), q > 0 else { throw TransferError(.usage, "daemon.staging_bwlimit is bytes per second like \"200M\", not '\(text)'") }
                stagingBandwidth = Int64(q)
            case "staging_quota":
                let text = try str(v, k)
                guard let q = try? ByteSize.parse(text) else { throw TransferError(.usage, "daemon.staging_quota is a size like \"500G\", not '\(text)'") }
                stagingQuota = Int64(q)
            case "catalog_indexes":
                guard case .array(let a) = v else { throw TransferError(.usage, "'daemon.catalog_indexes' must be an array of strings") }
                catalogIndexes = Set(try a.map {
                    let name = try str($0, k)
                    guard let i = Catalog.SearchIndex(rawValue: name) else {
                        throw TransferError(.usage, "daemon.catalog_indexes takes \"size\" and \"mtime\", not '\(name)'")
                    }
                    return i
                })
            case "catalog_scan_rows":
                guard case .integer(let n) = v, (100...1_000_000_000).contains(n) else {
                    throw TransferError(.usage, "daemon.catalog_scan_rows is 100 to 1,000,000,000")
                }
                catalogScanRows = n
            case "replicas":
                let r = try str(v, k)
                guard r.hasPrefix("/"), r.count > 1 else { throw TransferError(.usage, "daemon.replicas is a local job path /EXPORT/DIR, not '\(r)'") }
                replicas = r
            case "node":
                let n = try str(v, k)
                guard StripeSettings.isNodeName(n) else { throw TransferError(.usage, "daemon.node is 1 to 64 letters, digits, '.', '-' or '_', not '\(n)'") }
                node = n
            case "nodes":
                nodes = try int(v, k)
                guard nodes <= 1024 else { throw TransferError(.usage, "daemon.nodes is 1 to 1,024") }
            case "per_node":
                stripe.perNode = try int(v, k)
                guard stripe.perNode <= 64 else { throw TransferError(.usage, "daemon.per_node is 1 to 64") }
            case "stripe_files":
                stripe.groupFiles = try int(v, k)
                guard stripe.groupFiles <= 65_536 else { throw TransferError(.usage, "daemon.stripe_files is 1 to 65,536 (a selection's bound)") }
            case "stripe_threshold", "stripe_range", "stripe_group":
                let text = try str(v, k)
                guard let q = try? ByteSize.parse(text), q > 0, q <= 1 << 50 else { throw TransferError(.usage, "daemon.\(k) is a size like \"4G\", not '\(text)'") }
                switch k {
                case "stripe_threshold": stripe.threshold = Int64(q)
                case "stripe_group": stripe.groupBytes = Int64(q)
                default:
                    guard q % UInt64(Wire.chunkBytesDefault) == 0 else {
                        throw TransferError(.usage, "daemon.stripe_range is a multiple of the 4 MiB chunk, not '\(text)'")
                    }
                    stripe.rangeBytes = Int64(q)
                }
            default: throw TransferError(.usage, "unknown setting 'daemon.\(k)'")
            }
            }
        }
    }
}
