import Glibc

/// `ferry serve --config FILE`: the center's server settings in TOML.
///
///     center = "hlrs"                       # must match the certificate's name
///     listen = ["[::]:7700", "0.0.0.0:7700"]
///     certificate = "hlrs.crt"              # relative paths: beside this file
///     key = "hlrs.key"
///     ca = "ca.crt"
///     token_issuers = ["hlrs.crt", "peers/wuxi.crt"]   # whose user tokens are accepted
///     revocations = "revoked.txt"
///     audit_log = "/var/log/ferry/audit.jsonl"
///     minimum_protection = "safe"
///     metrics_listen = "127.0.0.1:9464"     # /metrics and /health over plain HTTP (optional)
///     direct_io = "auto"                    # or "off": large files written with O_DIRECT (DirectIO)
///     zero_copy = false                     # true: raw chunks sent with SEND_ZC (ZeroCopy)
///
///     [limits]
///     connections = 256                     # authenticated connections at once
///     connections_per_address = 64
///     unauthenticated = 64                  # connections not yet authenticated, at once
///     unauthenticated_per_address = 8       # per address (IPv6: per /64)
///     refusal_audit_interval = 10           # seconds: refusals of unauthenticated
///                                           # connections, one audit line per address
///                                           # per interval with a count
///     handshake_timeout = 10
///     idle_timeout = 120
///
///     [[peer]]
///     name = "wuxi"
///     address = "wuxi.example.org:7700"     # its transfer server
///     api = "https://wuxi.example.org:7480" # its daemon: follow its catalog (optional)
///
///     [[export]]
///     name = "scratch"
///     path = "/scratch"
///     access = "rw"                         # "ro" or "rw"
///     users = ["*", "center:wuxi"]          # "*": any user with a valid token
///     account = "projsvc"                   # optional: everyone here acts as this account
///     setid = false                         # apply setuid/setgid bits from clients (default no)
///
///     run_as = "ferry"                      # (top level) the account of anyone not mapped below
///     [[identity]]                          # who acts as which local account (server as root)
///     user = "bob@wuxi"                     # a token's user, NAME@CENTER or center:NAME
///     account = "bob"
///
/// Without `[[identity]]`, `run_as` or an export's `account`, a token's user acts as the local
/// account of the same name (see `IdentityMap`).
/// Unknown keys are errors, so a typo never silently weakens a setting.
public struct ServerConfigFile {
    public var center: String?
    public var listen: [HostPort] = []
    public var certificate: String?
    public var key: String?
    public var ca: String?
    public var tokenIssuers: [String] = []
    public var revocations: String?
    public var auditLog: String?
    /// Where `/metrics` and `/health` are served over plain HTTP, with or without a daemon.
    public var metricsListen: HostPort?
    public var minimumProtection: ProtectionLevel = .clear
    /// `direct_io`: nil when the file does not say (the process's default stands).
    public var directIO: Bool?
    /// `zero_copy`.
    public var zeroCopy = false
    public var handshakeTimeoutSeconds = 10
    public var idleTimeoutSeconds = 120
    public var connectionsMax = 256
    public var connectionsPerAddressMax = 64
    public var unauthenticatedMax = 64
    public var unauthenticatedPerAddressMax = 8
    public var refusalAuditIntervalSeconds = 10
    public var exports: [Export] = []
    /// `run_as` and `[[identity]]`: which local account each principal acts as.
    public var identities = IdentityMap()
    /// `[daemon]`: present when this server also runs the job queue and its API. Kept as the
    /// table it is: the daemon decodes (and checks) its own settings (`Daemon.DaemonConfig`),
    /// the engine only says that it is a table. Relative paths in it are relative to
    /// `directory`.
    public var daemonTable: [String: TOMLValue]?
    /// The directory of the configuration file: relative paths are resolved beside it.
    public var directory = "."
    /// `[[peer]]`: other centers by name (jobs say `ferry://NAME/path`).
    public var peers: [String: HostPort] = [:]
    /// `[[peer]] nodes`: a peer's transfer nodes (striping spreads a job's parts over them;
    /// `address` stays what everything else dials).
    public var peerNodes: [String: [HostPort]] = [:]
    /// `[[peer]] api = "https://HOST:PORT"`: the peer daemon's API (its base URL), whose
    /// catalog this center's daemon follows (Global Files federation). Peers without one are
    /// not followed. A bare HOST:PORT is https, or http on loopback (`HTTPClient.Target`);
    /// plain http to another host is refused.
    public var peerAPIs: [String: String] = [:]
    /// `[[peer]] follow = "datasets"`: peers whose datasets and replicas are mirrored but not
    /// their entries; listings of their datasets are forwarded to them (issue 21). The default,
    /// `follow = "entries"`, mirrors everything.
    public var peersForwarded: Set<String> = []
    /// Where each key is in the file (`TOML.parse(_:lines:)`): for the daemon's own check.
    public var lines: [String: Int] = [:]

    public init(path: String) throws {
        let text = try readSmallFile(path, maxBytes: 1 << 20)
        let dir = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        do {
            try self.init(parsing: text, relativeTo: dir.isEmpty ? "/" : dir)
        } catch {
            let e = asTransferError(error)
            throw TransferError(.usage, "\(path): \(e.message)")
        }
    }

    public init(parsing text: String, relativeTo dir: String) throws {
        var problems: [ConfigProblem] = []
        try self.init(parsing: text, relativeTo: dir, problems: &problems)
        if !problems.isEmpty { throw TransferError(.usage, ConfigProblem.text(problems)) }
    }

    /// Decodes `text`, adding every problem to `problems` with its line instead of stopping at
    /// the first (`ferry serve --check` prints them all); throws only when the text is not
    /// TOML at all. `lines` holds where each key is, for the daemon's own check.
    public init(parsing text: String, relativeTo dir: String, problems: inout [ConfigProblem]) throws {
        directory = dir
        var keyLines: [String: Int] = [:]
        let t = try TOML.parse(text, lines: &keyLines)
        lines = keyLines
        var found: [ConfigProblem] = []
        /// Runs `body`; an error becomes a problem at the line of `key`.
        func attempt(_ key: String, _ body: () throws -> Void) {
            do { try body() } catch { found.append(ConfigProblem(line: keyLines[key], message: asTransferError(error).message)) }
        }
        func resolve(_ p: String) -> String { p.hasPrefix("/") ? p : dir + "/" + p }
        func str(_ v: TOMLValue, _ k: String) throws -> String {
            guard case .string(let s) = v else { throw TransferError(.usage, "'\(k)' must be a string") }
            return s
        }
        func strings(_ v: TOMLValue, _ k: String) throws -> [String] {
            guard case .array(let a) = v else { throw TransferError(.usage, "'\(k)' must be an array of strings") }
            return try a.map { try str($0, k) }
        }
        func int(_ v: TOMLValue, _ k: String) throws -> Int {
            guard case .integer(let n) = v, n > 0, n < Int64(Int32.max) else { throw TransferError(.usage, "'\(k)' must be a positive integer") }
            return Int(n)
        }
        for (k, v) in t.sorted(by: { (keyLines[$0.key] ?? 0) < (keyLines[$1.key] ?? 0) }) {
            attempt(k) {
            switch k {
            case "center": center = try str(v, k)
            case "listen": listen = try strings(v, k).map { try HostPort(parsing: $0) }
            case "certificate": certificate = resolve(try str(v, k))
            case "key": key = resolve(try str(v, k))
            case "ca": ca = resolve(try str(v, k))
            case "token_issuers": tokenIssuers = try strings(v, k).map(resolve)
            case "revocations": revocations = resolve(try str(v, k))
            case "audit_log": auditLog = resolve(try str(v, k))
            case "metrics_listen": metricsListen = try HostPort(parsing: try str(v, k))
            case "minimum_protection": minimumProtection = try ProtectionLevel(parsing: try str(v, k))
            case "direct_io": directIO = try DirectIO.parse(try str(v, k), what: "direct_io")
            case "zero_copy":
                guard case .bool(let b) = v else { throw TransferError(.usage, "'zero_copy' is true or false") }
                zeroCopy = b
            case "run_as": identities.runAs = try str(v, k)
            case "identity":
                guard case .tables(let list) = v else { throw TransferError(.usage, "identities are written [[identity]]") }
                for (i, it) in list.enumerated() { attempt("identity[\(i)]") {
                    guard case .string(let user)? = it["user"], case .string(let account)? = it["account"], it.count == 2, !user.isEmpty, !account.isEmpty else {
                        throw TransferError(.usage, "every [[identity]] has a user (NAME, NAME@CENTER or center:NAME) and an account (a local account name)")
                    }
                    guard identities.entries[user] == nil else { throw TransferError(.usage, "[[identity]] for '\(user)' is given twice") }
                    identities.entries[user] = account
                } }
            case "limits":
                guard case .table(let lt) = v else { throw TransferError(.usage, "'limits' must be a table") }
                for (lk, lv) in lt { attempt("limits.\(lk)") {
                    switch lk {
                    case "connections": connectionsMax = try int(lv, lk)
                    case "connections_per_address": connectionsPerAddressMax = try int(lv, lk)
                    case "unauthenticated": unauthenticatedMax = try int(lv, lk)
                    case "unauthenticated_per_address": unauthenticatedPerAddressMax = try int(lv, lk)
                    case "refusal_audit_interval": refusalAuditIntervalSeconds = try int(lv, lk)
                    case "handshake_timeout": handshakeTimeoutSeconds = try int(lv, lk)
                    case "idle_timeout": idleTimeoutSeconds = try int(lv, lk)
                    default: throw TransferError(.usage, "unknown setting 'limits.\(lk)'")
                    }
                } }
            case "daemon":
                guard case .table(let dt) = v else { throw TransferError(.usage, "'daemon' must be a table") }
                daemonTable = dt
            case "peer":
                guard case .tables(let list) = v else { throw TransferError(.usage, "peers are written [[peer]]") }
                for (i, pt) in list.enumerated() { attempt("peer[\(i)]") {
                    var api: String?
                    if let a = pt["api"] {
                        guard case .string(let text) = a else { throw TransferError(.usage, "[[peer]] api is \"https://HOST:PORT\"") }
                        api = text
                    }
                    var follow: String?
                    if let f = pt["follow"] {
                        guard case .string(let text) = f, text == "entries" || text == "datasets" else {
                            throw TransferError(.usage, "[[peer]] follow is \"entries\" (mirror its catalog whole, the default) or \"datasets\" (its datasets and replicas; listings of their entries are forwarded to it)")
                        }
                        follow = text
                    }
                    var nodes: [HostPort]?
                    if let n = pt["nodes"] {
                        guard case .array(let list) = n, !list.isEmpty, list.count <= 1024 else {
                            throw TransferError(.usage, "[[peer]] nodes is a list of 1 to 1,024 \"HOST:PORT\" (the peer's transfer nodes)")
                        }
                        nodes = try list.map {
                            guard case .string(let text) = $0 else { throw TransferError(.usage, "[[peer]] nodes is a list of \"HOST:PORT\"") }
                            return try HostPort(parsing: text)
                        }
                    }
                    guard case .string(let name)? = pt["name"], case .string(let address)? = pt["address"],
                          pt.count == 2 + (api == nil ? 0 : 1) + (follow == nil ? 0 : 1) + (nodes == nil ? 0 : 1), CenterName.isValid(name) else {
                        throw TransferError(.usage, "every [[peer]] has a name (a center name), an address (HOST:PORT) and optionally api (https://HOST:PORT of its daemon), follow (\"entries\" or \"datasets\") and nodes ([\"HOST:PORT\", ...], its transfer nodes)")
                    }
                    if let nodes { peerNodes[name] = nodes }
                    if follow != nil && api == nil { throw TransferError(.usage, "[[peer]] \(name): follow needs the peer's api") }
                    if follow == "datasets" { peersForwarded.insert(name) }
                    peers[name] = try HostPort(parsing: address)
                    if let api {
                        let target = try HTTPClient.Target(parsing: api)
                        guard target.tls || HTTPClient.isLoopback(target.host) else {
                            throw TransferError(.usage, "[[peer]] \(name): api '\(api)' is plain http to another host; give https://HOST:PORT")
                        }
                        peerAPIs[name] = target.url
                    }
                } }
            case "export":
                guard case .tables(let list) = v else { throw TransferError(.usage, "exports are written [[export]]") }
                for (i, et) in list.enumerated() {
                    var name: String?
                    var path: String?
                    var writable = false
                    var users = ["*"]
                    var account: String?
                    var setid = false
                    // Each key at its own line; the export is made only when all of them hold.
                    let before = found.count
                    for (ek, ev) in et { attempt("export[\(i)].\(ek)") {
                        switch ek {
                        case "name": name = try str(ev, ek)
                        case "path": path = resolve(try str(ev, ek))
                        case "access":
                            switch try str(ev, ek) {
                            case "ro": writable = false
                            case "rw": writable = true
                            default: throw TransferError(.usage, "export access must be \"ro\" or \"rw\"")
                            }
                        case "users": users = try strings(ev, ek)
                        case "account": account = try str(ev, ek)
                        case "setid":
                            guard case .bool(let b) = ev else { throw TransferError(.usage, "export setid is true or false") }
                            setid = b
                        default: throw TransferError(.usage, "unknown export setting '\(ek)'")
                        }
                    } }
                    if found.count > before { continue }
                    attempt("export[\(i)]") {
                    guard let name, let path, !name.isEmpty else { throw TransferError(.usage, "every [[export]] needs a name and a path") }
                    var e = Export(name: name, path: path, writable: writable, users: users)
                    e.account = account
                    e.preserveSetid = setid
                    try e.validate()
                    exports.append(e)
                } }
            default:
                throw TransferError(.usage, "unknown setting '\(k)'")
            }
            }
        }
        problems += found
    }
}

/// One problem of a configuration file, at its line when known.
public struct ConfigProblem: Sendable, Equatable, CustomStringConvertible {
    public var line: Int?
    public var message: String
    public init(line: Int?, message: String) { self.line = line; self.message = message }
    public var description: String { line.map { "line \($0): \(message)" } ?? message }

    /// "line 3: ..." for one; "3 problems:" and one per line, in line order, for several.
    public static func text(_ list: [ConfigProblem]) -> String {
        let sorted = list.sorted { ($0.line ?? Int.max) < ($1.line ?? Int.max) }
        if sorted.count == 1 { return sorted[0].description }
        return "\(sorted.count) problems:\n  " + sorted.map(\.description).joined(separator: "\n  ")
    }
}
