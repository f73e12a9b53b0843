import Foundation
import GlobalFS
import Hummingbird
import HummingbirdCore
import Transfer

/// The federation's routes (for peer centers, authenticated by `CenterAssertion`), replica
/// selection, and `ferry replicate`:
///   GET  /api/v1/federation/changes?after=SEQ&limit=N  this center's change feed, and its last seq
///   GET  /api/v1/federation/datasets/{id}              one of this center's datasets
///   GET  /api/v1/federation/entries?dataset=ID&after_dir=&after_name=&limit=   its entries in key order
///   GET  /api/v1/federation/entry-changes?dataset=ID&since=SEQ&part=removed|entries&upto=&after_seq=&...
///        what changed in it after a follower's last sequence (GlobalFS `EntryFeed.swift`)
///   GET  /api/v1/federation/{ls,stat,find,du}?dataset=ID&path=P&...   for peers that forward listings here
///   GET  /api/v1/federation/replicas                   the replicas this center holds
///   GET  /api/v1/catalog/centers                       the centers this one follows, and their state
///   POST /api/v1/catalog/replicate {path: gfs://CENTER/DATASET, bwlimit?}   a replica here (a job)
///
/// A peer center sees the metadata of every dataset of this center, private ones included:
/// it must, to show each of them to the users their readers name. Centers of one federation
/// are trusted with each other's catalogs (docs/SECURITY.md §8); users are not.
extension DaemonAPI {
    func addFederationRoutes(_ router: Router<APIRequestContext>) {
        guard let catalog else { return }
        route(router, "federationChanges") { request, _ in
            try await handle(request) { user in
                try requireCenter(user)
                let q = request.uri.queryParameters
                let after = q["after"].flatMap { Int64(String($0)) } ?? 0
                let limit = q["limit"].flatMap { Int(String($0)) } ?? 1000
                let changes = try catalog.changes(after: after, limit: limit)
                let head = try catalog.lastChangeSeq()
                return try codable(200, V1.FeedPage(changes: changes, lastSeq: head))
            }
        }
        route(router, "federationDataset") { request, context in
            try await handle(request) { user in
                try requireCenter(user)
                guard let id = context.parameters.get("id").flatMap({ Int64($0) }), let d = try? catalog.dataset(id, as: .operator), d.center == center else {
                    throw HTTPFailure(status: 404, message: "no such dataset of center \(center)")
                }
                return try codable(200, d)
            }
        }
        route(router, "federationEntries") { request, _ in
            try await handle(request) { user in
                try requireCenter(user)
                let q = request.uri.queryParameters
                let d = try ownDataset(q)
                let limit = q["limit"].flatMap { Int(String($0)) } ?? 20_000
                let entries = try catalog.exportEntries(dataset: d.id, afterDir: q["after_dir"].map(String.init) ?? "",
                                                        afterName: q["after_name"].map(String.init) ?? "", limit: limit)
                return listPage(dataset: d.qualifiedName, entries: entries, nextAfter: nil, paged: false)
            }
        }
        route(router, "federationEntryChanges") { request, _ in
            try await handle(request) { user in
                try requireCenter(user)
                let q = request.uri.queryParameters
                let d = try ownDataset(q)
                let id = d.id
                let since = q["since"].flatMap { Int64(String($0)) } ?? 0
                let (now, floor) = try catalog.entrySeq(dataset: id)
                let upto = min(q["upto"].flatMap { Int64(String($0)) } ?? now, now)
                var after: EntryCursor?
                if let s = q["after_seq"].flatMap({ Int64(String($0)) }) {
                    after = EntryCursor(seq: s, dir: q["after_dir"].map(String.init) ?? "", name: q["after_name"].map(String.init) ?? "")
                } else if q["after_dir"] != nil || q["after_name"] != nil {
                    throw HTTPFailure(status: 400, message: "after_dir and after_name go with after_seq")
                }
                var answer = V1.EntryChanges(dataset: d.qualifiedName, entrySeq: now, floor: floor, resync: false, entries: [], removed: [], next: nil)
                // Numbers a follower cannot continue from: it reads the dataset whole.
                if since == 0 || since < floor || since > now {
                    answer.resync = true
                    return try codable(200, answer)
                }
                let limit = q["limit"].flatMap { Int(String($0)) } ?? 20_000
                if q["part"] == "removed" {
                    (answer.removed, answer.next) = try catalog.removedEntries(dataset: id, since: since, upto: upto, after: after, limit: limit)
                } else {
                    (answer.entries, answer.next) = try catalog.changedEntries(dataset: id, since: since, upto: upto, after: after, limit: limit)
                }
                return try codable(200, answer)
            }
        }
        // A dataset's entries for a peer that follows this center without them (`follow =
        // "datasets"`) and forwards its users' listings here: as the user's route answers, with
        // an operator's view (the peer checked its user against the dataset's readers).
        for op in ["ls", "stat", "find", "du"] {
            route(router, "federation" + op.prefix(1).uppercased() + op.dropFirst()) { request, _ in
                try await handle(request) { user in
                    try requireCenter(user)
                    let q = request.uri.queryParameters
                    let d = try ownDataset(q)
                    let path: String
                    do { path = try Catalog.normalizedPath(q["path"].map(String.init) ?? "") } catch { throw HTTPFailure(status: 400, message: "\(error)") }
                    return try catalogAnswer(op, d, path, q, Viewer.operator, stale: false)
                }
            }
        }
        route(router, "federationReplicas") { request, _ in
            try await handle(request) { user in
                try requireCenter(user)
                let held = try catalog.replicas(at: center).map { V1.HeldReplica(dataset: $0.dataset, replica: $0.replica) }
                return try codable(200, V1.HeldReplicas(replicas: held))
            }
        }
        route(router, "centers") { request, _ in
            try await handle(request) { _ in
                try codable(200, V1.CentersAnswer(center: center, centers: try catalog.centers().map { V1.CenterView($0) }))
            }
        }
        route(router, "replicate") { request, _ in
            try await handle(request) { user in
                let body = Data(buffer: try await request.body.collect(upTo: 1 << 16))
                let r = try APIJSON.decode(V1.ReplicateRequest.self, from: body)
                let path = r.path
                // Checked against the schema before it decoded (a negative limit is a 400, not
                // none); 0 is no limit.
                let answer = try replicate(path, user: user, bwlimit: r.bwlimit.flatMap { $0 > 0 ? $0 : nil })
                auditLine(user, action: "replicate", path: "\(path) -> \(center):\(answer.path)",
                          result: "ok: \(answer.state)" + (answer.job.map { ", job \($0)" } ?? ""))
                return try codable(200, answer)
            }
        }
    }

    /// The dataset of this center that `?dataset=ID` names (its id here), for a peer: 404 for
    /// any other id, a mirror included.
    func ownDataset(_ q: FlatDictionary<Substring, Substring>) throws -> Dataset {
        guard let id = q["dataset"].flatMap({ Int64(String($0)) }), let d = try? catalog?.dataset(id, as: .operator), d.center == center,
              d.remoteID == nil else {
            throw HTTPFailure(status: 404, message: "no such dataset of center \(center)")
        }
        return d
    }

    func requireCenter(_ user: User) throws {
        guard user.center != nil || user.isOperator else {
            throw HTTPFailure(status: 403, message: "the federation routes are for peer centers (a center assertion)")
        }
    }

    // MARK: replica selection

    /// The replicas of a dataset in the order a copy should try them: a complete replica at
    /// this center first; then complete replicas at reachable peers, the best measured
    /// throughput first (this daemon's per-link figures, `LinkTuner`), unmeasured links after
    /// measured ones (by name); never a partial or staging replica, a peer whose catalog sync
    /// failed (down), or a center without a transfer address. The centers as read within the
    /// last second (`Catalog.recentCentersList`): every `stat` ranks its replicas.
    func rankReplicas(_ replicas: [Replica]) -> [V1.RankedReplica] {
        let centers = Dictionary(((try? catalog?.recentCentersList()) ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let rates = runner?.tuner.snapshot() ?? [:]
        var out: [V1.RankedReplica] = []
        var order: [(key: (Int, Double, String), index: Int)] = []
        for r in replicas {
            let local = r.center == center
            let address = local ? transfer.first : runner?.settings.peers[r.center]?.description
            let c = centers[r.center]
            let reachable = local || (c?.reachable ?? true)
            let rate = local ? nil : rates[r.center].map { Int64($0.throughput) }.flatMap { $0 > 0 ? $0 : nil }
            var x = V1.RankedReplica(center: r.center, state: r.state.rawValue, path: r.path, files: r.files, bytes: r.bytes, verifiedAt: r.verifiedAt,
                                  address: address, url: address.map { "ferry://\($0)" + r.path }, reachable: reachable,
                                  lastSync: local ? nil : c?.lastSync, rateBytesPerSecond: rate, rank: nil, reason: "")
            if r.state != .complete {
                x.reason = "\(r.state.rawValue) replica: not read from"
            } else if address == nil {
                x.reason = "no transfer address for center \(r.center) ([[peer]] in this center's configuration)"
            } else if !reachable {
                x.reason = "center \(r.center) is down (no catalog sync since \(isoTimeOrNever(c?.lastSync ?? 0))): skipped"
            } else if local {
                x.reason = "at this center"
                order.append(((0, 0, r.center), out.count))
            } else if let rate {
                x.reason = "peer, measured \(byteRate(rate))"
                order.append(((1, -Double(rate), r.center), out.count))
            } else {
                x.reason = "peer, link not yet measured"
                order.append(((2, 0, r.center), out.count))
            }
            out.append(x)
        }
        order.sort { a, b in a.key.0 != b.key.0 ? a.key.0 < b.key.0 : a.key.1 != b.key.1 ? a.key.1 < b.key.1 : a.key.2 < b.key.2 }
        for (k, o) in order.enumerated() { out[o.index].rank = k + 1 }
        return out.sorted { ($0.rank ?? Int.max, $0.center) < ($1.rank ?? Int.max, $1.center) }
    }

    func byteRate(_ r: Int64) -> String {
        let v = Double(r)
        return v >= 1e9 ? String(format: "%.2f GB/s", v / 1e9) : v >= 1e6 ? String(format: "%.1f MB/s", v / 1e6) : String(format: "%.0f kB/s", v / 1e3)
    }

    // MARK: replicate

    /// `ferry replicate`: a replica of a dataset at this center, pulled by one recursive job
    /// from the best other replica. The replica is recorded `staging` with the job; the
    /// federation loop marks it `complete` or `partial` when the job ends. A complete replica
    /// here answers at once; a partial one is resumed (the engine skips what is already there
    /// and verified). The caller must see the dataset and may write the replica directory.
    func replicate(_ text: String, user: User, bwlimit: UInt64? = nil) throws -> V1.ReplicateAnswer {
        guard let catalog, runner != nil else { throw HTTPFailure(status: 503, message: "this daemon has no catalog") }
        guard let root = replicaRoot else {
            throw HTTPFailure(status: 409, message: "center \(center) takes no replicas (no [daemon] replicas = \"/EXPORT/DIR\" in its configuration)")
        }
        let p: GFSPath
        do { p = try GFSPath(text) } catch { throw HTTPFailure(status: 400, message: "\(error)") }
        guard let (d, within) = try catalog.resolve(p, as: viewer(user)) else { throw HTTPFailure(status: 404, message: "no dataset at \(text)") }
        guard within.isEmpty else { throw HTTPFailure(status: 400, message: "replicate takes a whole dataset, gfs://\(d.center)/\(d.qualifiedName)") }
        let target = root + "/" + d.center + "/" + d.qualifiedName
        let linkFree = try authorizeLocal(target, user, write: true)
        let replicas = try catalog.replicas(dataset: d.id, as: .operator)
        if let here = replicas.first(where: { $0.center == center }) {
            if here.state == .complete { return V1.ReplicateAnswer(state: "complete", center: center, path: here.path, message: "already complete at \(center)") }
            if here.state == .staging, let j = here.job, let job = try store.get(j) {
                if !job.state.isFinal {
                    return V1.ReplicateAnswer(state: "staging", center: center, path: here.path, job: j, message: "already being replicated by job \(j)")
                }
                if job.state.satisfiesDependents {
                    return V1.ReplicateAnswer(state: "complete", center: center, path: here.path, message: "already complete at \(center) (job \(j))")
                }
            }
        }
        guard let source = rankReplicas(replicas.filter { $0.center != center }).first(where: { $0.rank != nil }), source.address != nil else {
            throw HTTPFailure(status: 409, message: "no usable replica of gfs://\(d.center)/\(d.qualifiedName) to copy from (\(replicas.map { "\($0.center): \($0.state.rawValue)" }.joined(separator: ", ")))")
        }
        // The replica's parent directories (CENTER/) are the daemon's to make: beneath the
        // export, component by component (no link leads elsewhere).
        if case (.confined(let root, let components, _), _, _) = try runner!.jobEndpoint(target) {
            try withConfinedParent(root: root, components: components) { _, _ in }
        }
        var req = JobRequest(source: "ferry://\(source.center)" + source.path, destination: target)
        req.recursive = true
        req.bwlimit = bwlimit
        // The daemon's own job (`Job.daemonMade`): it writes the shared replica area with the
        // daemon's rights, after the checks above (the caller sees the dataset, may write there).
        let id = try store.submit(owner: user.user, request: req, peer: source.center, now: now(), linkFree: linkFree, daemonMade: true)
        try catalog.setReplica(dataset: d.id, center: center, state: .staging, path: target, job: id)
        return V1.ReplicateAnswer(state: "staging", center: center, path: target, job: id, from: source.center,
                                  message: "job \(id) copies gfs://\(d.center)/\(d.qualifiedName) from \(source.center) to \(center):\(target)")
    }
}

