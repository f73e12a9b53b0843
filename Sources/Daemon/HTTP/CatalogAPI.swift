import Foundation
import GlobalFS
import Hummingbird
import HummingbirdCore
import Transfer

/// Global Files through the daemon's API: this center's catalog (`GlobalFS.Catalog`, in the same
/// database as the job queue).
///   POST /api/v1/catalog/register   {path: "/EXPORT/dir", dataset: "NAME[@VERSION]", readers?,
///                                    description?, license?, hash?} → the registration summary
///   GET  /api/v1/catalog/datasets   the datasets the caller may see
///   GET  /api/v1/catalog/ls?path=gfs://CENTER/DATASET/dir&after=NAME&limit=N   one page
///   GET  /api/v1/catalog/stat?path=...
///   GET  /api/v1/catalog/find?path=...&name=GLOB&min_size=&max_size=&newer=UNIX_SECONDS&after=DIR/NAME&limit=
/// Pages (ls, find) say `more` (whether another page follows) and `next_after` (its cursor).
///   GET  /api/v1/catalog/du?path=...
/// Paths name this center or a peer it follows (answered from the local mirror of the peer's
/// catalog, `Federation`; `stale: true` when that peer is down; a peer followed with
/// `follow = "datasets"` is asked, `forwardedAnswer`); a dataset the caller may not
/// see answers exactly as a missing one (404).

extension DaemonAPI {
    func addCatalogRoutes(_ router: Router<APIRequestContext>) {
        guard let catalog else { return }
        route(router, "register") { request, _ in
            try await handle(request) { user in
                let body = Data(buffer: try await request.body.collect(upTo: 1 << 20))
                let r = try APIJSON.decode(V1.RegisterRequest.self, from: body)
                let linkFree = try authorizeLocal(r.path, user, write: false)
                guard let runner, case (.confined(let root, let components, _), _, let export?) = try runner.jobEndpoint(r.path) else {
                    throw HTTPFailure(status: 400, message: "register takes a directory of this center: /EXPORT/PATH")
                }
                let dir = ([root] + components).joined(separator: "/")
                let account = try runner.settings.identities.resolve(user.user, export: export)
                let parts = r.dataset.split(separator: "@", maxSplits: 1).map(String.init)
                let center = self.center
                // A big tree takes a while (on the API's write pool, see BlockingPool; nothing in
                // this closure suspends, so the thread that adopts the account restores it). The
                // directory is opened beneath its export component by component, as the user's
                // account; the scan's threads act as that account too (the catalog's own writes
                // stay the daemon's).
                let summary: RegisterSummary = try {
                    if let account { try ThreadIdentity.adopt(account) }
                    let fd: Int32
                    do {
                        defer { if account != nil { ThreadIdentity.restore() } }
                        // No link followed down to the scope's limit, as at the check above.
                        fd = try openConfined(root: root, components: components, flags: O_RDONLY | O_DIRECTORY, linkFree: linkFree)
                    }
                    defer { close(fd) }
                    return try catalog.register(root: dir, dataset: parts[0], version: parts.count > 1 ? parts[1] : "", owner: user.user, center: center,
                                                readers: r.readers, description: r.description, license: r.license, hash: r.hash ?? false,
                                                replicaPath: r.path, administrator: user.isOperator, rootFd: fd, account: account)
                }()
                auditLine(user, action: "register", path: "\(r.path) -> gfs://\(center)/\(r.dataset)",
                          result: "ok: \(summary.added) added, \(summary.changed) changed, \(summary.removed) removed", files: summary.files, bytes: summary.bytes,
                          seconds: summary.seconds)
                return try codable(200, summary)
            }
        }
        route(router, "datasets") { request, _ in
            try await handle(request) { user in
                let stale = staleCenters()
                return try codable(200, V1.DatasetList(datasets: try catalog.datasets(visibleTo: viewer(user)).map { V1.DatasetView(dataset: $0, stale: stale.contains($0.center)) }))
            }
        }
        // ls, stat, find and du: of a dataset mirrored here, or of a peer's followed without its
        // entries (`follow = "datasets"`), asked of that peer (`forwardedAnswer`).
        for op in ["ls", "stat", "find", "du"] {
            route(router, op) { request, _ in
                try await handle(request) { user in
                    let (d, path) = try resolve(request, user)
                    if let answer = try await forwardedAnswer(op, d, path, request) { return answer }
                    return try catalogAnswer(op, d, path, request.uri.queryParameters, viewer(user), stale: staleCenters().contains(d.center))
                }
            }
        }
    }

    /// ls, stat, find or du of `path` within `d` as `viewer`: the answer of the user's route
    /// (`/api/v1/catalog/OP`) and of the federation's (`/api/v1/federation/OP`, for peers that
    /// forward their users' listings here).
    func catalogAnswer(_ op: String, _ d: Dataset, _ path: String, _ q: FlatDictionary<Substring, Substring>? = nil, _ viewer: Viewer, stale: Bool) throws -> Response {
        guard let catalog else { throw HTTPFailure(status: 503, message: "this daemon has no catalog") }
        let q = q ?? [:]
        func int(_ k: Substring) -> Int64? { q[k].flatMap { Int64(String($0)) } }
        switch op {
        case "ls":
            let limit = q["limit"].flatMap { Int(String($0)) } ?? 1000
            // One more than asked: whether more follows is known, not guessed from a full page.
            let want = max(1, min(limit, 10_000))
            var (entries, isFile) = try catalog.listing(of: d, path: path, after: q["after"].map(String.init), limit: want + 1)
            let more = !isFile && entries.count > want
            if more { entries.removeLast(entries.count - want) }
            return listPage(dataset: d.qualifiedName, entries: entries, nextAfter: more ? entries.last?.name : nil, stale: stale)
        case "stat":
            let (entry, found) = try catalog.details(of: d, path: path)
            let replicas = rankReplicas(found)
            if path.isEmpty { return try codable(200, V1.StatAnswer(dataset: d, entry: nil, replicas: replicas, stale: stale)) }
            guard let e = entry else {
                throw HTTPFailure(status: 404, message: "no such file or directory: \(path)")
            }
            return try codable(200, V1.StatAnswer(dataset: d, entry: e, replicas: replicas, stale: stale))
        case "find":
            // Keyset paging: `after` is the previous page's `next_after`, the last entry's
            // path within the dataset (DIR/NAME; a name holds no slash).
            var after: EntryKey?
            if let a = q["after"].map(String.init), !a.isEmpty {
                let slash = a.lastIndex(of: "/")
                after = EntryKey(dataset: d.id, dir: slash.map { String(a[..<$0]) } ?? "", name: slash.map { String(a[a.index(after: $0)...]) } ?? a)
            }
            let want = Int(max(1, min(int("limit") ?? 1000, 10_000)))
            // Seconds since the epoch, as nanoseconds: a value whose product would overflow is
            // refused (it stopped the daemon: Swift traps on overflow).
            var newerNs: Int64?
            if let newer = int("newer") {
                let (ns, over) = newer.multipliedReportingOverflow(by: 1_000_000_000)
                guard !over else { throw HTTPFailure(status: 400, message: "newer: \(newer) is out of range (seconds since 1970)") }
                newerNs = ns
            }
            // A page may come back short, even empty, with `more`: the search read its
            // budget of rows (`Catalog.findPage`) and goes on after `next_after`.
            let page = try catalog.findPage(dataset: d.id, under: path, nameGlob: q["name"].map(String.init), minSize: int("min_size"),
                                            maxSize: int("max_size"), newerThan: newerNs,
                                            after: after, limit: want + 1, as: viewer)
            var entries = page.entries
            func key(_ dir: String, _ name: String) -> String { dir.isEmpty ? name : dir + "/" + name }
            var next: String?
            if entries.count > want {
                entries.removeLast(entries.count - want)
                next = entries.last.map { key($0.dir, $0.name) }
            } else if let r = page.resume {
                next = key(r.dir, r.name)
            }
            return listPage(dataset: d.qualifiedName, entries: entries, nextAfter: next, stale: stale)
        default:
            return try codable(200, try catalog.du(dataset: d.id, under: path, as: viewer))
        }
    }

    /// For a dataset of a peer followed without its entries (`[[peer]] follow = "datasets"`):
    /// the same operation asked of that peer (`/api/v1/federation/OP`, as this center, on a
    /// thread of the `reads` pool: a slow peer must not hold the quick reads' few threads),
    /// its entries given this center's dataset id, the replicas ranked here. The user's rights
    /// were checked here, on the dataset's readers as mirrored. While the peer cannot be
    /// reached, the last answer to the same question is given, marked stale (`ls`, `find`,
    /// `stat`; a `du` never seen is an error). nil: not such a dataset.
    func forwardedAnswer(_ op: String, _ d: Dataset, _ path: String, _ request: Request) async throws -> Response? {
        guard let federation, let remote = d.remoteID, federation.forwarded.contains(d.center) else { return nil }
        if op == "stat" && path.isEmpty { return nil }  // the dataset itself is mirrored here
        var query = "dataset=\(remote)&path=" + queryEscape(path)
        for k in ["after", "limit", "name", "min_size", "max_size", "newer"] {
            if let v = request.uri.queryParameters[Substring(k)] { query += "&\(k)=" + queryEscape(String(v)) }
        }
        let route = "/api/v1/federation/\(op)?" + query
        let got: (status: Int, body: [UInt8], fresh: Bool)
        do {
            got = try await onPool(.reads) { try federation.forward(d.center, route, keep: op != "du") }
        } catch let e as FederationError {
            throw HTTPFailure(status: 503, message: e.description)
        }
        guard got.status == 200 else {
            let detail = (try? APIJSON.decode(V1.Problem.self, from: Data(got.body)))?.detail ?? "HTTP \(got.status)"
            if got.status == 404 || got.status == 400 { throw HTTPFailure(status: got.status, message: detail) }
            throw HTTPFailure(status: 502, message: "center \(d.center) answered: \(detail)")
        }
        let stale = !got.fresh || staleCenters().contains(d.center)
        // A fresh answer is kept for when the peer is down, once it passed the checks below.
        func kept(_ r: Response) -> Response {
            if got.fresh && op != "du" { federation.keepAnswer(d.center, route, got.body) }
            return r
        }
        do {
            switch op {
            case "ls", "find":
                let page = try APIJSON.decode(V1.EntryPage.self, from: Data(got.body))
                // Held to what a mirrored page is held to (`Entry.checkMirrored`).
                let entries = try page.entries.map { e -> Entry in try checkedForwarded(e, d); var e = e; e.dataset = d.id; return e }
                return kept(listPage(dataset: d.qualifiedName, entries: entries, nextAfter: page.nextAfter, stale: stale))
            case "stat":
                var entry = try APIJSON.decode(V1.StatAnswer.self, from: Data(got.body)).entry
                if let e = entry { try checkedForwarded(e, d) }
                entry?.dataset = d.id
                let replicas = try catalog?.details(of: d, path: "").replicas ?? []
                return kept(try codable(200, V1.StatAnswer(dataset: d, entry: entry, replicas: rankReplicas(replicas), stale: stale)))
            default:
                return try codable(200, try APIJSON.decode(DiskUsage.self, from: Data(got.body)))
            }
        } catch let e as DecodingError {
            throw HTTPFailure(status: 502, message: "center \(d.center) sent a malformed \(op) answer: \(DaemonAPI.explain(e))")
        }
    }

    /// A page of entries as JSON, written directly: Foundation's JSONEncoder took about half of
    /// a 1,000-entry page's 20 ms (bench/catalog.sh). Same fields and names as `codable` gives
    /// an `Entry` (snake case).
    /// `paged`: the answer says `more` (the federation's pages do not: the follower reads until
    /// a short page).
    func listPage(dataset: String, entries: [Entry], nextAfter: String?, stale: Bool = false, paged: Bool = true) -> Response {
        var out: [UInt8] = []
        out.reserveCapacity(96 + entries.count * 160)
        func str(_ v: String) { JSONText.appendString(v, to: &out) }
        func raw(_ v: StaticString) { JSONText.appendRaw(v, to: &out) }
        func int(_ v: Int64) { JSONText.appendInt(v, to: &out) }
        raw("{\"dataset\":"); str(dataset)
        if stale { raw(",\"stale\":true") }
        // `more`: whether another page follows (then `next_after` is its cursor).
        if paged { nextAfter != nil ? raw(",\"more\":true") : raw(",\"more\":false") }
        raw(",\"next_after\":")
        if let n = nextAfter { str(n) } else { raw("null") }
        raw(",\"entries\":[")
        for (i, e) in entries.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            raw("{\"dataset\":"); int(e.dataset)
            raw(",\"dir\":"); str(e.dir)
            raw(",\"name\":"); str(e.name)
            raw(",\"kind\":"); str(e.kind.rawValue)
            raw(",\"size\":"); int(e.size)
            raw(",\"mtime_ns\":"); int(e.mtimeNs)
            raw(",\"mode\":"); int(e.mode)
            raw(",\"chunk_size\":"); int(e.chunkSize)
            if let d = e.digest { raw(",\"digest\":"); str(d) }
            if let t = e.target { raw(",\"target\":"); str(t) }
            out.append(UInt8(ascii: "}"))
        }
        raw("]}")
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: out)))
    }

    /// Followed centers whose last sync failed (as known at most a second ago:
    /// `Catalog.recentCentersList`).
    func staleCenters() -> Set<String> {
        Set(((try? catalog?.recentCentersList()) ?? []).filter { !$0.reachable }.map(\.name))
    }

    func viewer(_ u: User) -> Viewer { Viewer(user: u.user, isOperator: u.isOperator, center: center) }

    /// The dataset and the path within it that `?path=gfs://...` names, at this center.
    func resolve(_ request: Request, _ user: User) throws -> (Dataset, String) {
        guard let text = request.uri.queryParameters["path"].map(String.init), let catalog else {
            throw HTTPFailure(status: 400, message: "give ?path=gfs://CENTER/DATASET[/PATH]")
        }
        let p: GFSPath
        do { p = try GFSPath(text) } catch { throw HTTPFailure(status: 400, message: "\(error)") }
        if p.center != center, try !catalog.recentCentersList().contains(where: { $0.name == p.center }) {
            throw HTTPFailure(status: 404, message: "center '\(p.center)' is neither this center ('\(center)') nor a peer it follows")
        }
        guard let (d, path) = try catalog.resolve(p, as: viewer(user)) else {
            throw HTTPFailure(status: 404, message: "no dataset at \(text)")
        }
        return (d, path)
    }
}

/// A forwarded entry must be one a scan could have made, as a mirrored one must: else 502.
func checkedForwarded(_ e: Entry, _ d: Dataset) throws {
    do { try e.checkMirrored() } catch {
        throw DaemonAPI.HTTPFailure(status: 502, message: "center \(d.center) sent an invalid entry: \(error)")
    }
}

/// A value for a URL's query, every byte but letters and digits percent-encoded (the
/// federation client's paths and the listings forwarded to peers).
func queryEscape(_ s: String) -> String {
    s.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
}

/// An answer of the contract, encoded as every answer is (`AnswerEncoder`: the JSON of
/// `APIJSON.encoder()`, snake_case, written directly).
func codable<T: Encodable>(_ status: Int, _ value: T) throws -> Response {
    let data = try AnswerEncoder.encode(value)
    return Response(status: .init(code: status), headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}
