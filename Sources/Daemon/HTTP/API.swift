import Foundation
import GlobalFS
import Hummingbird
import NIOCore
import Transfer
import Storage

/// The daemon's REST API (Hummingbird 2), JSON, versioned paths:
///   GET  /api/v1/health                      liveness, center name, jobs by state
///   GET  /api/v1/openapi.json                this API's OpenAPI 3 document
///   POST /api/v1/transfers                   create (body: a JobRequest) → 201 and the job
///   GET  /api/v1/transfers?state=&peer=&since=&after=&limit=   list (keyset paging: `next_after`)
///   GET  /api/v1/transfers/{id}              one job
///   GET  /api/v1/transfers/{id}/attempts     its attempts, each with how it ended
///   GET  /api/v1/stats?days=                 bytes moved per day and per minute of the last hour, per peer; staging use
///   POST /api/v1/transfers/{id}/cancel       cancel
///   POST /api/v1/transfers/{id}/retry        retry a failed job
///   GET  /api/v1/transfers/{id}/events       progress as server-sent events until the job ends
///   GET  /metrics                            Prometheus text format
///   GET  /, /ui/...; POST /ui/session[/end]  the web console and its sessions (Console.swift)
/// (and the catalog's, federation's and staging's routes; the whole list: `APIContract`).
/// Requests carry `Authorization: Bearer <user token>` (the same tokens as transfers). A user
/// sees and changes only their own jobs; a token of this center's own issuer with scope `rw:/`
/// is an operator's and sees all.
///
/// Who a token speaks for is decided as the transfer server decides it (`principal`): a token
/// this center issued is its user, NAME; a token of another trusted center (`token_issuers`) is
/// NAME@CENTER, a different principal from this center's NAME. So a peer's administrator, who
/// can issue tokens for any name, can never act as a local user here: not in the jobs a user
/// owns (listing, cancelling, retrying, dependencies), not in the account a job runs as (only
/// an `[[identity]]` or `--map` entry for NAME@CENTER, `run_as`, or an export's `account` gives
/// it one; otherwise its submission is refused), not in dataset ownership or readers, and never
/// as the operator (ops review finding 1: a peer-issued `rw:/` token was this center's operator,
/// and a peer-issued "alice" was the local alice, whose jobs it listed and cancelled and whose
/// account its jobs ran as). Audit lines name the qualified principal.
/// A job's local paths must lie within the token's scopes (read for the source, write for the
/// destination); the peer side is checked by the peer, against this center's certificate.
public struct DaemonAPI: Sendable {
    public let store: JobStore
    public let verifier: TokenVerifier
    public let center: String
    public let runner: JobRunner?
    /// This center's Global Files catalog (routes under /api/v1/catalog, see CatalogAPI.swift).
    public let catalog: Catalog?
    /// The center's transfer server (HOST:PORT): where clients read a replica of this center.
    public let transfer: [String]
    /// Checks peer centers calling the federation routes (nil: no federation).
    public let centers: CenterVerifier?
    /// `[daemon] replicas`: where `ferry replicate` puts replicas here (/EXPORT/DIR).
    public let replicaRoot: String?
    /// Prestaging (`[daemon] staging`), nil when this center does none.
    public let staging: StagingSettings?
    /// The center's audit log (the transfer server's, `audit_log`): every refusal of the API,
    /// every change it makes (jobs submitted, cancelled, retried; registrations, replications,
    /// staging), one JSON line each in the engine's format. nil: none.
    public var audit: AuditLog?
    /// The web console's sessions (Console.swift).
    public let sessions = ConsoleSessions()
    /// How refusals reach the audit log: bounded paths, and unauthenticated ones at a bounded
    /// rate (APIRefusals.swift).
    let refusals = RefusalAudit()
    let refusalLog = RefusalLog()
    /// What the event streams of one job share (Events.swift).
    let events = EventShare()
    /// Open event streams, per user and in all (Events.swift); `DaemonService` sizes it to
    /// its `api_connections`.
    var eventStreams = EventStreamLimit()
    /// API connections closed for a request that did not arrive within `api_request_seconds`.
    let expiredRequests = ExpiredRequests()
    /// Whether the console's cookie says `Secure` (the API speaks HTTPS).
    public var secureCookies = false
    /// More lines of `/metrics` (`DaemonService.attachMetrics`).
    public var extraMetrics: (@Sendable () -> String)?
    /// The federation follower, for its lines of `/metrics` (nil: this center follows nobody).
    public var federation: Federation?

    public init(store: JobStore, verifier: TokenVerifier, center: String, runner: JobRunner?, catalog: Catalog? = nil, transfer: [String] = [],
                centers: CenterVerifier? = nil, replicaRoot: String? = nil, staging: StagingSettings? = nil) {
        self.staging = staging
        self.transfer = transfer
        self.centers = centers
        self.replicaRoot = replicaRoot
        self.store = store
        self.verifier = verifier
        self.center = center
        self.runner = runner
        self.catalog = catalog
    }

    /// The client's address (`APIRequestContext.client`) while a route's handler runs: the
    /// `peer` of its audit lines.
    @TaskLocal static var client = ""

    public func router() -> Router<APIRequestContext> {
        let router = Router(context: APIRequestContext.self)
        route(router, "health") { _, _ in try await onPool(.quickReads) {
            // Unauthenticated: only what the configuration names (peers, allowed hosts).
            let peers = (runner?.tuner.snapshot() ?? [:]).filter { runner?.isConfiguredKey($0.key) ?? false }.mapValues {
                V1.PeerHealth(streams: $0.streams, active: $0.active, rateBytesPerSecond: Int64($0.throughput), errors: $0.errors)
            }
            let jobs = (try? store.countsByState())?.reduce(into: [String: Int]()) { $0[$1.key.rawValue] = $1.value } ?? [:]
            return try codable(200, V1.Health(status: "ok", center: center, peers: peers, transfer: transfer, jobs: jobs))
        } }
        route(router, "ready") { _, _ in try await onPool {
            // Unauthenticated, like health: names only what the configuration names. A peer's
            // outage makes the center "degraded", not unready: it still serves its own users,
            // and a load balancer must not take it out for another center's sake.
            var checks: [V1.ReadinessCheck] = []
            do {
                _ = try store.countsByState()
                checks.append(.init(name: "database", ok: true, detail: "answers"))
            } catch {
                checks.append(.init(name: "database", ok: false, detail: "\(error)"))
            }
            for e in runner?.settings.exports ?? [] {
                var st = stat()
                let found = stat(e.path, &st) == 0
                let err = errno
                let ok = found && st.st_mode & S_IFMT == S_IFDIR
                let why = ok ? "a directory" : found ? "not a directory" : String(cString: strerror(err))
                // The export's name, not its path: this answer is for anyone who asks.
                checks.append(.init(name: "export " + (e.name.isEmpty ? "/" : e.name), ok: ok, detail: why))
            }
            for (peer, answer) in (runner?.probePeers() ?? [:]).sorted(by: { $0.key < $1.key }) {
                checks.append(.init(name: "peer " + peer, ok: answer.ok, detail: answer.detail))
            }
            let local = checks.filter { !$0.ok && !$0.name.hasPrefix("peer ") }
            if !local.isEmpty {
                return problem(503, "not ready: " + local.map { "\($0.name): \($0.detail)" }.joined(separator: "; "), code: "not_ready")
            }
            return try codable(200, V1.Readiness(status: checks.allSatisfy(\.ok) ? "ready" : "degraded", checks: checks))
        } }
        route(router, "openapi") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: APIContract.document)))
        }
        route(router, "metrics") { _, _ in
            try await onPool { Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: .init(byteBuffer: ByteBuffer(string: metrics()))) }
        }
        route(router, "submitTransfer") { request, _ in
            try await handle(request) { user in
                let body = Data(buffer: try await request.body.collect(upTo: 4 << 20))
                // One source, or several into one destination directory: one job (task) per
                // source, all checked before any is queued.
                let submission = try APIJSON.decode(V1.TransferSubmission.self, from: body)
                var requests = try submission.requests()
                let multi = submission.sources != nil
                var linkFree: [Int] = []
                for i in requests.indices {
                    // 0 is no limit, as on the wire and for a replication (the schema says so);
                    // the engine's rate limiter takes only a positive rate.
                    if requests[i].bwlimit == 0 { requests[i].bwlimit = nil }
                    linkFree.append(try authorizePaths(requests[i], user))
                    try validate(requests[i], user)
                }
                var peers: [String] = []
                for req in requests {
                    peers.append(try remoteKey(req.source) ?? remoteKey(req.destination) ?? "")
                    try authorizeDependencies(req.dependsOn, user)
                }
                var jobs: [V1.Transfer] = []
                // One audit line per request (a request of 10,000 sources is not 10,000 synced
                // writes): also when it stops half way, for the jobs it made.
                var ids: [Int64] = []
                defer {
                    if let first = ids.first {
                        let path = "\(requests[0].source) -> \(requests[0].destination)" + (ids.count > 1 ? " and \(ids.count - 1) more of \(requests.count)" : "")
                        auditLine(user, action: "job.submit", path: path, result: ids.count == 1 ? "ok: job \(first)" : "ok: \(ids.count) jobs, \(first) to \(ids.last!)")
                    }
                }
                for (i, (req, peer)) in zip(requests, peers).enumerated() {
                    let id = try store.submit(owner: user.user, request: req, peer: peer, now: now(), linkFree: linkFree[i])
                    ids.append(id)
                    jobs.append(V1.Transfer(try store.get(id)!))
                }
                return multi ? try codable(201, V1.TransferBatch(transfers: jobs)) : try codable(201, jobs[0])
            }
        }
        route(router, "listTransfers") { request, _ in
            try await handle(request) { user in
                let q = request.uri.queryParameters
                var f = JobFilter(owner: user.isOperator ? q["owner"].map(String.init) : user.user)
                // An unknown state is an error, not a filter that matches everything.
                for name in (q["state"].map(String.init) ?? "").split(separator: ",") {
                    guard let st = JobState(rawValue: String(name)) else {
                        throw HTTPFailure(status: 400, message: "unknown state '\(name)': one of \(JobState.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    f.states.append(st)
                }
                guard let after = Int64(q["after"].map(String.init) ?? "0"), after >= 0, let limit = Int(q["limit"].map(String.init) ?? "100"), (1...1000).contains(limit) else {
                    throw HTTPFailure(status: 400, message: "after is a job id (0 or more), limit 1 to 1000")
                }
                f.afterID = after
                f.peer = q["peer"].map(String.init)
                f.since = q["since"].flatMap { Int64(String($0)) }
                // One more than asked: `more` says whether another page follows.
                f.limit = limit + 1
                var jobs = try store.list(f)
                let more = jobs.count > limit
                if more { jobs.removeLast(jobs.count - limit) }
                return try codable(200, V1.TransferPage(transfers: jobs.map { V1.Transfer($0) }, more: more, nextAfter: more ? jobs.last?.id : nil))
            }
        }
        route(router, "transferStats") { request, _ in
            try await handle(request) { user in
                let days = Int64(request.uri.queryParameters["days"].map(String.init) ?? "14") ?? 14
                let owner = user.isOperator ? nil : user.user
                let t = now()
                // Whole days (UTC), today's included, from the jobs that ended; the last hour by
                // minute from the runner's measurements while jobs ran (`link_samples`).
                let byDay = try store.moved(owner: owner, since: (t / 86_400 - (days - 1)) * 86_400, bucket: 86_400)
                let byMinute = try store.measured(owner: owner, since: (t - 3_600) / 60 * 60, bucket: 60)
                func view(_ rows: [(start: Int64, peer: String, bytes: Int64, jobs: Int64)]) -> [V1.MovedBytes] {
                    rows.map { V1.MovedBytes(start: $0.start, peer: $0.peer, bytes: $0.bytes, jobs: $0.jobs) }
                }
                var stats = V1.TransferStats(days: view(byDay), lastHour: view(byMinute), spanSeconds: 60)
                if let st = staging {
                    let u = try st.cache.use(evictedSince: t - 86_400)
                    stats.staging = V1.StagingUse(readyBytes: u.readyBytes, quota: st.quota, entries: u.entries, pinned: u.pinned, evictedDay: u.evicted)
                }
                return try codable(200, stats)
            }
        }
        route(router, "getTransfer") { request, context in
            try await handle(request) { user in try codable(200, live(try ownJob(context, user))) }
        }
        route(router, "transferAttempts") { request, context in
            try await handle(request) { user in
                let job = try ownJob(context, user)
                let list = try store.attempts(job.id).map {
                    V1.Attempt(attempt: $0.attempt, worker: $0.worker, ended: $0.ended, state: JobState(rawValue: $0.state) ?? .noStatus, error: $0.error,
                               errorCode: $0.code, bytes: $0.bytes)
                }
                return try codable(200, V1.AttemptList(job: job.id, attempts: list))
            }
        }
        route(router, "transferEvents") { request, context in
            try await handle(request) { user in
                let id = try ownJob(context, user).id
                let api = self
                // Pushed by the queue's change feed, not polled: see streamEvents (Events.swift).
                let who = user.user
                let body = ResponseBody { writer in try await onPool {
                    // Counted while the stream runs (a place taken before the answer starts
                    // could be lost with a connection that closes first).
                    if let refused = api.eventStreams.enter(who) {
                        try await writer.write(ByteBuffer(string: "event: refused\ndata: \(jsonString(refused))\n\n"))
                        try await writer.finish(nil)
                        return
                    }
                    defer { api.eventStreams.leave(who) }
                    try await api.streamEvents(of: id, render: { job in String(decoding: (try? AnswerEncoder.encode(api.live(job))) ?? [], as: UTF8.self) }) { text in
                        try await writer.write(ByteBuffer(string: text))
                    }
                    try await writer.finish(nil)
                } }
                return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
            }
        }
        route(router, "cancelTransfer") { request, context in
            try await handle(request) { user in
                let job = try ownJob(context, user)
                let answer = V1.Transfer(try store.cancel(job.id, by: user.user, now: now()))
                auditLine(user, action: "job.cancel", path: "\(job.request.source) -> \(job.request.destination)", result: "ok: job \(job.id)")
                return try codable(200, answer)
            }
        }
        route(router, "retryTransfer") { request, context in
            try await handle(request) { user in
                let job = try ownJob(context, user)
                let answer = V1.Transfer(try store.retryJob(job.id, now: now()))
                auditLine(user, action: "job.retry", path: "\(job.request.source) -> \(job.request.destination)", result: "ok: job \(job.id)")
                return try codable(200, answer)
            }
        }
        addCatalogRoutes(router)
        addFederationRoutes(router)
        addStagingRoutes(router)
        addConsoleRoutes(router)
        return router
    }

    /// Registers the handler of one operation of the contract (`APIContract.operations`): the
    /// router holds no route the document does not describe.
    func route(_ router: Router<APIRequestContext>, _ id: String,
               _ handler: @escaping @Sendable (Request, APIRequestContext) async throws -> Response) {
        let op = APIContract.operation(id)
        router.on(RouterPath(op.routerPath), method: op.method == "POST" ? .post : .get) { request, context in
            if let why = op.queryProblem(request.uri.queryParameters.map { (String($0.key), String($0.value)) }) {
                return problem(400, why)
            }
            return try await DaemonAPI.$client.withValue(context.client) {
                try await DaemonAPI.$quick.withValue(DaemonAPI.quickOperations.contains(id)) { try await handler(request, context) }
            }
        }
    }

    /// Operations whose work is bounded by one key, one page or the request's own size: reads
    /// (a job, a page of a listing, an entry, a hook's staging status) and writes (a
    /// submission, a cancel, a retry, a hook's stage-in, stage-out and teardown). They run on
    /// `BlockingPool.quickReads` and `quickWrites`, a few threads each that take them in
    /// order; the others (a find that scans, event streams, federation pages of 20,000, du,
    /// metrics; a registration that walks a tree, a sweep, a replication) on `reads` and
    /// `writes`, so that those can never hold the threads the quick ones need.
    static let quickOperations: Set<String> = ["health", "listTransfers", "getTransfer", "transferAttempts", "datasets", "ls", "stat", "centers",
                                               "stageStatus", "federationDataset",
                                               "submitTransfer", "cancelTransfer", "retryTransfer", "stageIn", "stageOut", "stageTeardown"]
    /// Set by `route` while its handler runs: whether its operation is one of `quickOperations`.
    @TaskLocal static var quick = false

    struct User {
        /// The principal: NAME for a token of this center, NAME@CENTER for a token of another
        /// trusted center, "center:NAME" for a peer's daemon (`principal`).
        var user: String
        var scopes: [Scope]
        /// Set when a peer center's daemon calls (user is then "center:NAME", without scopes).
        var center: String? = nil
        /// The token was issued by this center itself (its own key), not by a peer.
        var ownIssuer = false
        /// An operator: a token of this center's own issuer with `rw:/`. A peer's token never
        /// is, whatever its scopes: a peer's administrator can issue `rw:/` to anyone.
        var isOperator: Bool { ownIssuer && center == nil && scopes.contains { $0.read && $0.write && $0.path == "/" } }
    }

    /// Who a verified token speaks for, exactly as the transfer server names it
    /// (`TransferServer.qualified`): its user when this center issued it, USER@ISSUER when
    /// another trusted center did.
    func principal(_ t: UserToken) -> String { t.issuer == center ? t.user : t.user + "@" + t.issuer }

    /// The API's user for a verified token (`principal`, and whether this center issued it).
    func tokenUser(_ t: UserToken) -> User { User(user: principal(t), scopes: t.scopes, ownIssuer: t.issuer == center) }

    struct HTTPFailure: Error {
        var status: Int
        var message: String
    }

    /// Authenticates the request and runs `body` for its user. Every refusal (4xx: a bad or
    /// missing token, a path outside the scopes, another user's job or dataset answered as
    /// missing, a host that is no peer) and every failure is answered as JSON and written to the
    /// audit log (`api`, `METHOD /path`, `refused: STATUS reason`), with the user when known.
    ///
    /// The whole of it, and `body`, runs on the daemon's blocking pool (`BlockingPool`).
    func handle(_ request: Request, _ body: (User) async throws -> Response) async throws -> Response {
        let reading = request.method == .get || request.method == .head
        let pool: BlockingPool = reading ? (DaemonAPI.quick ? .quickReads : .reads) : (DaemonAPI.quick ? .quickWrites : .writes)
        // A quick read's reads share one database connection (PostgreSQL; see sharingReads), and
        // so do a quick write's transactions (prepared statements, no lease: a hook's ask and
        // teardown, `bench/stall.sh`).
        if pool === BlockingPool.quickReads { return try await onPool(pool) { try await store.db.sharingReads { try await authenticated(request, body) } } }
        if pool === BlockingPool.quickWrites { return try await onPool(pool) { try await store.db.sharingConnection { try await authenticated(request, body) } } }
        return try await onPool(pool) { try await authenticated(request, body) }
    }

    private func authenticated(_ request: Request, _ body: (User) async throws -> Response) async throws -> Response {
        var who = ""
        var whoCenter = ""
        func refuse(_ status: Int, _ message: String, code: String? = nil) -> Response {
            if RefusalLog.logs(status) {
                let from = DaemonAPI.client
                refusalLog.note(status, "API \(status < 500 ? "refused" : "failed") \(request.method.rawValue) \(RefusalAudit.shown(request.uri.path)) from \(from.isEmpty ? "?" : from)\(who.isEmpty ? "" : " (" + who + ")"): \(status) \(RefusalAudit.shown(message, max: RefusalAudit.resultBytesMax))")
            }
            if let audit {
                // The client's address, a bounded path and reason; a request that identified
                // nobody at a bounded rate (`RefusalAudit`).
                let client = DaemonAPI.client
                var r = AuditLog.Record(user: who, peer: client, action: "api", path: request.method.rawValue + " " + RefusalAudit.shown(request.uri.path),
                                        result: RefusalAudit.shown((status < 500 ? "refused: " : "failed: ") + "\(status) \(message)", max: RefusalAudit.resultBytesMax))
                r.center = whoCenter
                if who.isEmpty && whoCenter.isEmpty {
                    refusals.refusedUnidentified(r, client: client, to: audit)
                } else {
                    audit.write(r)
                }
            }
            return problem(status, message, code: code)
        }
        do {
            if let auth = request.headers[.authorization], auth.hasPrefix(CenterAssertion.scheme) {
                guard let centers, let cert = request.headers.first(where: { $0.name.canonicalName == CenterAssertion.certificateHeader.lowercased() })?.value else {
                    throw HTTPFailure(status: 401, message: "this center does not federate with others, or the certificate header is missing")
                }
                let name: String
                do { name = try centers.verify(assertion: String(auth.dropFirst(CenterAssertion.scheme.count)), certificate: cert) } catch let e as TransferError {
                    throw HTTPFailure(status: 401, message: e.message)
                }
                who = "center:" + name
                whoCenter = name
                return try await body(User(user: "center:" + name, scopes: [], center: name))
            }
            // A bearer token, or the web console's session cookie standing for one (with the
            // session's CSRF token on a POST; Console.swift).
            let bearer: String
            if let auth = request.headers[.authorization] {
                guard auth.hasPrefix("Bearer ") else { throw HTTPFailure(status: 401, message: "send Authorization: Bearer <your ferry token>") }
                bearer = String(auth.dropFirst(7))
            } else if let token = try consoleToken(request) {
                bearer = token
            } else {
                throw HTTPFailure(status: 401, message: "send Authorization: Bearer <your ferry token>")
            }
            // `check`: the user of a genuine but refused token (expired, revoked) is known; the
            // audit names it `refused:NAME`, as the transfer server does.
            let (checked, refusal) = verifier.check(bearer)
            if let refusal {
                who = checked.map { "refused:" + principal($0) } ?? ""
                throw HTTPFailure(status: 401, message: refusal.message)
            }
            guard let token = checked else { throw HTTPFailure(status: 401, message: "token refused") }
            let user = tokenUser(token)
            who = user.user
            return try await body(user)
        } catch let f as HTTPFailure {
            return refuse(f.status, f.message)
        } catch let e as JobStoreError {
            return refuse(409, e.description)
        } catch let e as CatalogError {
            return refuse(e.code == .notFound ? 404 : e.code == .conflict ? 409 : e.code == .invalid ? 400 : e.code == .forbidden ? 403 : 500, e.description)
        } catch let e as TransferError {
            return refuse(e.code == .auth || e.code == .permission ? 403 : 400, e.message, code: e.code.description)
        } catch let e as RequestRefusal {
            // A body its schema refuses (`RequestCheck`): the reason as it is, naming the key.
            return refuse(400, e.description)
        } catch let e as DecodingError {
            return refuse(400, "the body does not match the API's schema: " + DaemonAPI.explain(e))
        } catch let e as SQLStoreError {
            // A busy database: 503, ask again (scheduler hooks do); anything else is ours (500),
            // with its reason in the answer and the audit log rather than an empty 500.
            return refuse(e.busy ? 503 : 500, e.description)
        } catch let e as HTTPError {
            // Hummingbird's own (a body over its limit: 413).
            return refuse(Int(e.status.code), e.body ?? e.status.reasonPhrase)
        } catch let e as NIOTooManyBytesError {
            // A body over what the route collects (`collect(upTo:)`: 4 MiB for a submission):
            // the client's request is too large (413), not the daemon's failure (500).
            return refuse(413, "the request body is larger than \(e.maxBytes.map { "\($0) bytes" } ?? "this route takes")")
        } catch {
            return refuse(500, "internal error: \(error)")
        }
    }

    /// What a job would only find out when it runs, answered at submit (400 with the reason):
    /// the protection and compression words, counts (streams, attempts) and times that cannot
    /// be, and a local source that does not exist (a job would fail on it later, after its
    /// retries).
    func validate(_ r: JobRequest, _ user: User) throws {
        do {
            _ = try ProtectionLevel(parsing: r.protection)
            _ = try CompressionMode(parsing: r.compress)
        } catch let e as TransferError {
            throw HTTPFailure(status: 400, message: e.message)
        }
        if let m = r.maxAttempts, !(1...100).contains(m) { throw HTTPFailure(status: 400, message: "max_attempts is 1 to 100, not \(m)") }
        // Refused, not clamped: a job asked for 200 streams would otherwise run with 64 and
        // nobody would know (the contract says 1 to 64).
        if let n = r.streams, !(1...64).contains(n) { throw HTTPFailure(status: 400, message: "streams is 1 to 64, not \(n)") }
        if let d = r.deadline, d < 0 { throw HTTPFailure(status: 400, message: "deadline is a Unix time in seconds") }
        // A job moves data between this center and a peer: one side local, one ferry://. Both
        // local or both remote could only fail when it runs (the engine refuses either).
        if r.source.hasPrefix("ferry://") == r.destination.hasPrefix("ferry://") {
            throw HTTPFailure(status: 400, message: r.source.hasPrefix("ferry://")
                ? "a job copies between this center and a peer: between two peers, submit it at the source center's daemon"
                : "a job copies between this center and a peer: one side is ferry://PEER/PATH (a copy within the center is cp's)")
        }
        if !r.source.hasPrefix("ferry://"), let runner, case (.confined(let root, let components, _), _, let export?) = try runner.jobEndpoint(r.source) {
            // Looked up as the owner's account (as the job will read it), so the answer tells
            // the user nothing their own rights do not: after the scope check, on this thread
            // only, which nothing here suspends.
            let account = try runner.settings.identities.resolve(user.user, export: export)
            if let account { try ThreadIdentity.adopt(account) }
            defer { if account != nil { ThreadIdentity.restore() } }
            var st = stat()
            if lstat(([root] + components).joined(separator: "/"), &st) != 0 && errno == ENOENT {
                throw HTTPFailure(status: 400, message: "'\(r.source)' does not exist")
            }
        }
    }

    /// One audit line for a change the API made for `user`.
    func auditLine(_ user: User, action: String, path: String, result: String, files: Int64 = 0, bytes: Int64 = 0, seconds: Double = 0) {
        guard let audit else { return }
        var r = AuditLog.Record(user: user.user, peer: DaemonAPI.client, action: action, path: path, result: result)
        r.center = user.center ?? ""
        r.files = UInt64(max(0, files))
        r.bytes = UInt64(max(0, bytes))
        r.seconds = seconds
        audit.write(r)
    }

    private func ownJob(_ context: APIRequestContext, _ user: User) throws -> Job {
        guard let id = context.parameters.get("id").flatMap({ Int64($0) }), let job = try store.get(id), job.owner == user.user || user.isOperator else {
            throw HTTPFailure(status: 404, message: "no such transfer")
        }
        return job
    }

    /// Returns the job's `linkFree` (`Job.linkFree`): that of its local side, 0 without one.
    private func authorizePaths(_ r: JobRequest, _ user: User) throws -> Int {
        var linkFree = 0
        for (path, write) in [(r.source, false), (r.destination, true)] where !path.hasPrefix("ferry://") {
            linkFree = max(linkFree, try authorizeLocal(path, user, write: write))
        }
        return linkFree
    }

    /// A local path of this center (/EXPORT/PATH) within the token's scopes. Returns how many
    /// of its components beneath the export no link may be followed in, down to the limit of
    /// the scope that allows it: checked now, and kept with a job for when it runs.
    @discardableResult
    func authorizeLocal(_ path: String, _ user: User, write: Bool) throws -> Int {
        var rel = Substring(path)
        while rel.hasPrefix("/") { rel = rel.dropFirst() }
        let parts = try namespaceComponents(String(rel))
        guard user.scopes.allow(parts, write: write) else {
            throw TransferError(.auth, "your token does not allow \(write ? "writing" : "reading") '\(path)'")
        }
        // The export's own rules, as the transfer server applies them to a direct copy: its
        // access (`ro`) and its user list (a token's scopes alone let a user submit a job into a
        // read-only export, or out of one whose `users` does not name them).
        guard let runner else { return 0 }
        let (endpoint, _, export) = try runner.jobEndpoint(path)
        if let export { try export.admit(user.user, byToken: user.center == nil, write: write) }
        // Checked on disk too, as the job will open it: a link that leads out of the directory
        // it sits in is refused now (403), and again at run time if one is swapped in later.
        if case .confined(let root, let components, _) = endpoint {
            // Down to the limit of the token's scope no link is followed, as the transfer server
            // opens a session's path (checked at submit; the runner has no token to ask later).
            let linkFree = min(components.count, max(0, user.scopes.linkFreeDepth(parts, write: write) - (parts.count - components.count)))
            do { try probeConfined(root: root, components: components, linkFree: linkFree) } catch let e as TransferError where e.code == .path {
                throw TransferError(.auth, "'\(path)': \(e.message)")
            }
            return linkFree
        }
        return 0
    }

    /// The job, with the runner's live counters while it runs.
    func live(_ job: Job) -> V1.Transfer {
        V1.Transfer(job, progress: job.state == .running ? runner?.liveProgress(job.id) : nil,
                    parts: job.striped ? try? store.partProgress(job.id) : nil)
    }

    /// A decoding error as one line a person can act on: which key, and what was wrong.
    public static func explain(_ e: DecodingError) -> String {
        func path(_ c: DecodingError.Context) -> String {
            let p = c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
            return p.isEmpty ? "" : " at '\(p)'"
        }
        switch e {
        case .keyNotFound(let k, let c): return "'\(k.stringValue)' is missing" + path(c)
        case .typeMismatch(let t, let c): return "expected \(t)" + path(c)
        case .valueNotFound(let t, let c): return "expected \(t), got null" + path(c)
        case .dataCorrupted(let c): return c.debugDescription + path(c)
        @unknown default: return "\(e)"
        }
    }

    /// The remote side of a job path (`ferry://AUTHORITY/...`) as the configuration names it
    /// (a peer, or an entry of `allow_hosts`): the job's key for limits, tuning and metrics.
    /// nil for a local path; 400 for anything the configuration does not name (nothing is
    /// dialled, no peer entry is made).
    func remoteKey(_ path: String) throws -> String? {
        guard path.hasPrefix("ferry://") else { return nil }
        guard let runner else { throw HTTPFailure(status: 400, message: "this daemon runs no jobs") }
        do {
            return try runner.remote(try FerryURL(parsing: path).authority).key
        } catch let e as TransferError {
            throw HTTPFailure(status: 400, message: e.message)
        }
    }

    /// `dependsOn` names only the caller's own jobs (an operator's: any): another user's job
    /// answers exactly as a missing one.
    func authorizeDependencies(_ ids: [Int64], _ user: User) throws {
        for d in ids {
            guard let j = try store.get(d), j.owner == user.user || user.isOperator else {
                throw JobStoreError("job \(d) (a dependency) does not exist")
            }
        }
    }

    func metrics() -> String {
        var out = "# HELP ferry_jobs Transfer jobs by state.\n# TYPE ferry_jobs gauge\n"
        let counts = (try? store.countsByState()) ?? [:]
        for s in JobState.allCases { out += "ferry_jobs{state=\(promLabel(s.rawValue))} \(counts[s] ?? 0)\n" }
        if let t = try? store.totals() {
            out += "# HELP ferry_bytes_total Bytes delivered by finished jobs.\n# TYPE ferry_bytes_total counter\nferry_bytes_total \(t.bytes)\n"
            out += "# HELP ferry_files_total Files delivered by finished jobs.\n# TYPE ferry_files_total counter\nferry_files_total \(t.files)\n"
            out += "# HELP ferry_retries_total Attempts beyond each job's first.\n# TYPE ferry_retries_total counter\nferry_retries_total \(t.retries)\n"
        }
        if let runner {
            let tuner = runner.tuner
            // Every configured peer has its series from the start (a restart does not make
            // them vanish until the first job): the tuner's starting point until measured.
            var snapshot = tuner.snapshot()
            for p in runner.settings.peers.keys where snapshot[p] == nil {
                snapshot[p] = LinkTuner.State(streams: tuner.initialStreams, active: tuner.maxActive)
            }
            let peers = snapshot.sorted { $0.key < $1.key }.map { (promLabel($0.key), $0.value) }
            out += "# HELP ferry_peer_streams TCP streams the daemon uses towards each peer (self-tuned).\n# TYPE ferry_peer_streams gauge\n"
            for (p, s) in peers { out += "ferry_peer_streams{peer=\(p)} \(s.streams)\n" }
            out += "# HELP ferry_peer_active Transfers the daemon runs at once towards each peer (self-tuned).\n# TYPE ferry_peer_active gauge\n"
            for (p, s) in peers { out += "ferry_peer_active{peer=\(p)} \(s.active)\n" }
            out += "# HELP ferry_peer_throughput_bytes_per_second Throughput of the last transfer of 1 MiB or more towards each peer (0: none yet).\n# TYPE ferry_peer_throughput_bytes_per_second gauge\n"
            for (p, s) in peers { out += "ferry_peer_throughput_bytes_per_second{peer=\(p)} \(Int(s.throughput))\n" }
            out += "# HELP ferry_peer_errors_total Failed attempts towards each peer.\n# TYPE ferry_peer_errors_total counter\n"
            for (p, s) in peers { out += "ferry_peer_errors_total{peer=\(p)} \(s.errors)\n" }
        }
        if let runner { out += runner.jobMetricsText() }
        if let sizes = try? catalog?.sizes() {
            // By center: this one's datasets and each followed peer's (peers from the config).
            out += "# HELP ferry_catalog_datasets Datasets in the Global Files catalog, by center.\n# TYPE ferry_catalog_datasets gauge\n"
            for z in sizes { out += "ferry_catalog_datasets{center=\(promLabel(z.center))} \(z.datasets)\n" }
            out += "# HELP ferry_catalog_files Files the catalog's datasets hold, by center.\n# TYPE ferry_catalog_files gauge\n"
            for z in sizes { out += "ferry_catalog_files{center=\(promLabel(z.center))} \(z.files)\n" }
            out += "# HELP ferry_catalog_bytes Bytes the catalog's datasets hold, by center.\n# TYPE ferry_catalog_bytes gauge\n"
            for z in sizes { out += "ferry_catalog_bytes{center=\(promLabel(z.center))} \(z.bytes)\n" }
        }
        if let catalog {
            let n = catalog.searchCounts()
            out += "# HELP ferry_catalog_searches_total Datasets searched by find: from the candidates of an index (name, size, mtime) or by reading their rows in key order (scan).\n# TYPE ferry_catalog_searches_total counter\n"
            for by in ["name", "size", "mtime", "scan"] { out += "ferry_catalog_searches_total{by=\"\(by)\"} \(n[by] ?? 0)\n" }
        }
        if let federation { out += federation.metricsText() }
        if let handshakes = runner?.tlsHandshakes(), !handshakes.isEmpty {
            out += "# HELP ferry_peer_tls_handshakes_total TLS handshakes of jobs towards each peer: full, or resumed from an earlier session's ticket.\n# TYPE ferry_peer_tls_handshakes_total counter\n"
            for (p, h) in handshakes.sorted(by: { $0.key < $1.key }) {
                out += "ferry_peer_tls_handshakes_total{peer=\(promLabel(p)),kind=\"full\"} \(h.full)\n"
                out += "ferry_peer_tls_handshakes_total{peer=\(promLabel(p)),kind=\"resumed\"} \(h.resumed)\n"
            }
        }
        if let runner, !runner.settings.peers.isEmpty {
            // A handshake with each configured peer (answers of the last 10 s reused; at most
            // 3 s of waiting when one does not answer).
            out += "# HELP ferry_peer_up Whether each configured peer's transfer server answered a handshake (1) or not (0).\n# TYPE ferry_peer_up gauge\n"
            for (p, a) in runner.probePeers().sorted(by: { $0.key < $1.key }) { out += "ferry_peer_up{peer=\(promLabel(p))} \(a.ok ? 1 : 0)\n" }
        }
        if let st = staging, let u = try? st.cache.use(evictedSince: now() - 86_400) {
            out += "# HELP ferry_staging_bytes Bytes of ready entries in the staging cache.\n# TYPE ferry_staging_bytes gauge\nferry_staging_bytes \(u.readyBytes)\n"
            out += "# HELP ferry_staging_quota_bytes The staging cache's quota.\n# TYPE ferry_staging_quota_bytes gauge\nferry_staging_quota_bytes \(st.quota)\n"
            out += "# HELP ferry_staging_entries Entries of the staging cache.\n# TYPE ferry_staging_entries gauge\nferry_staging_entries \(u.entries)\n"
            out += "# HELP ferry_staging_pinned_entries Entries pinned by running or waiting jobs.\n# TYPE ferry_staging_pinned_entries gauge\nferry_staging_pinned_entries \(u.pinned)\n"
        }
        out += "# HELP ferry_api_requests_expired_total API connections closed because the request they waited for (after their opening or an answer) was not in whole within api_request_seconds.\n# TYPE ferry_api_requests_expired_total counter\nferry_api_requests_expired_total \(expiredRequests.count)\n"
        out += processMetricsText()
        if let more = extraMetrics { out += more() }
        return out
    }

}

func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

/// A Prometheus label value, quoted and escaped as the text exposition format says: backslash,
/// double quote and line feed escaped (`\\`, `\"`, `\n`); nothing a value holds can end the
/// label, the line, or start another sample.
func promLabel(_ v: String) -> String {
    var out = "\""
    for u in v.unicodeScalars {
        switch u {
        case "\\": out += "\\\\"
        case "\"": out += "\\\""
        case "\n": out += "\\n"
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}


/// An error answer as RFC 9457 problem details (`application/problem+json`): `V1.Problem`,
/// encoded as every answer is (`APIJSON`): `status`, `title` (the status's name), `detail`
/// (the reason, for people), `code` (for programs: the engine's error code when it has one:
/// auth, permission, path, usage, no_space, ...; else one per status: invalid_request,
/// unauthenticated, forbidden, not_found, conflict, too_large, busy, internal), and `error`
/// (the same as `detail`, which clients of the first API read).
func problem(_ status: Int, _ detail: String, code: String? = nil) -> Response {
    let byStatus: [Int: String] = [400: "invalid_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 409: "conflict",
                                   413: "too_large", 503: "busy", 500: "internal"]
    // The engine's codes are camel case (noSpace): snake case here, as every key of the API.
    let snake = code.map { c in c.reduce(into: "") { out, ch in out += ch.isUppercase ? "_" + ch.lowercased() : String(ch) } }
    let code = snake ?? byStatus[status] ?? (status >= 500 ? "internal" : "invalid_request")
    let titles: [Int: String] = [400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
                                 413: "Content Too Large", 500: "Internal Server Error", 503: "Service Unavailable"]
    let answer = V1.Problem(type: "about:blank", title: titles[status] ?? "HTTP \(status)", status: status, detail: detail, code: code, error: detail)
    // Sorted keys: the same problem reads the same whichever request it answers (JSONEncoder's
    // own order is a dictionary's). Six strings and an integer cannot fail to encode; the
    // fallback keeps the status.
    let encoder = APIJSON.encoder()
    encoder.outputFormatting = [.sortedKeys]
    let data = (try? encoder.encode(answer)) ?? Data("{\"status\":\(status)}".utf8)
    return Response(status: .init(code: status), headers: [.contentType: "application/problem+json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

extension Data {
    init(buffer: ByteBuffer) {
        var b = buffer
        self = b.readBytes(length: b.readableBytes).map { Data($0) } ?? Data()
    }
}
