import Foundation
import Logging
import GlobalFS
import Transfer

/// Global Files federation, the follower's side: every `sync_seconds` the daemon asks each
/// peer that has an `api` in its `[[peer]]` table for the changes after the last one it
/// applied (`/api/v1/federation/changes?after=SEQ`), authenticated as this center
/// (`CenterAssertion`), and mirrors what they name into its own catalog: a dataset's metadata,
/// then its entries page by page in key order (only differing rows are written), and the
/// replicas the peer holds. Listings of `gfs://PEER/...` are then answered locally.
///
/// A peer that does not answer keeps its last known state, marked stale (`centers.reachable`
/// false, with the time of the last good sync); replica selection skips it; the next good sync
/// catches up from the last applied sequence number. A peer whose feed went backwards (its
/// database was replaced) is re-read from the start.
///
/// The same loop settles `ferry replicate`'s replicas: a `staging` replica becomes `complete`
/// when its job succeeded and `partial` when it failed (a later replicate resumes it).
/// `@unchecked Sendable`: the state is guarded by `lock`; the loop is one thread.
public final class Federation: @unchecked Sendable {
    let catalog: Catalog
    let store: JobStore
    public let me: String
    /// Peer name → its API base URL (https://HOST:PORT; http only on loopback).
    public let peers: [String: String]
    /// Peers followed without their entries (`[[peer]] follow = "datasets"`): their datasets
    /// and replicas are mirrored, and the API forwards listings of their entries to them
    /// (`forward`), keeping the last answers to give, marked stale, while the peer is down.
    public let forwarded: Set<String>
    /// The federation CA: a peer's API must present a certificate it signed, for that peer.
    let ca: String
    let certificateHeader: String
    let key: [UInt8]
    let interval: Double
    private let lock = NSLock()
    private var stopping = false
    private var thread: Thread?
    private let wake = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    /// Peers whose replica list could not be applied in full (a dataset not yet known here),
    /// or not yet read since start: read again at the next sync.
    private var replicasPending: Set<String>
    /// Peers seen down, with the reason last logged (a transition or a new reason is logged,
    /// not every attempt).
    private var down: [String: String] = [:]
    /// Entries per page when mirroring a dataset.
    public var pageSize = 20_000

    public init(catalog: Catalog, store: JobStore, me: String, peers: [String: String], forwarded: Set<String> = [], certificate: String, key: String, ca: String, intervalSeconds: Int) throws {
        self.catalog = catalog
        self.store = store
        self.me = me
        self.peers = peers
        self.forwarded = forwarded
        self.ca = ca
        certificateHeader = try CenterAssertion.certificateHeaderValue(certificatePath: certificate)
        self.key = try loadPrivateKey(key)
        interval = Double(max(1, intervalSeconds))
        replicasPending = Set(peers.keys)
        for (name, api) in self.peers { try catalog.setCenter(name, api: api) }
    }

    public func start() {
        let t = Thread { [self] in
            // At most a year of rounds: the loop ends with the daemon.
            for _ in 0..<(366 * 86_400) {
                if lock.withLock({ stopping }) { break }
                round()
                _ = wake.wait(timeout: .now() + interval)
            }
            finished.signal()
        }
        t.name = "ferry-federation"
        thread = t
        t.start()
    }

    public func stop() {
        let running = lock.withLock { () -> Bool in
            stopping = true
            return thread != nil
        }
        guard running else { return }
        wake.signal()
        _ = finished.wait(timeout: .now() + 12)
    }

    /// One round: every peer, then the replicas this center is filling. Public for tests.
    public func round() {
        for name in peers.keys.sorted() {
            if lock.withLock({ stopping }) { return }
            do {
                try sync(name)
                if lock.withLock({ down.removeValue(forKey: name) }) != nil { log("center \(name) is reachable again; caught up") }
            } catch {
                try? catalog.recordSync(center: name, reachable: false, at: Catalog.now())
                // Keep the time of the last good sync: record only reachability.
                let reason = "\(error)"
                if lock.withLock({ down.updateValue(reason, forKey: name) != reason }) {
                    log("center \(name): \(reason); its catalog entries are kept, marked stale")
                }
            }
        }
        settleReplicas()
    }

    func log(_ m: String) {
        Logger(label: "ferry.federation").warning("\(m)")
    }

    // MARK: syncing one peer

    func sync(_ peer: String) throws {
        // A peer named as this center would mirror over this center's own datasets.
        guard peer != me else { throw FederationError("a [[peer]] is named '\(peer)', this center's own name: not followed") }
        let known = try catalog.centers().first { $0.name == peer }
        var last = known?.lastSeq ?? 0
        var replicas = lock.withLock { replicasPending.contains(peer) }
        // At most 1,000 pages of 1,000 changes per round; the rest next round.
        for _ in 0..<1000 {
            let page = try fetch(V1.FeedPage.self, peer, "/api/v1/federation/changes?after=\(last)&limit=1000", "change feed")!
            let list = page.changes
            let head = page.lastSeq
            if head < last {
                log("center \(peer)'s change feed restarted (at \(head), we had \(last)): reading it again from the start")
                try catalog.resetMirrorSeqs(center: peer)
                last = 0
                replicas = true
                continue
            }
            if list.isEmpty {
                try catalog.recordSync(center: peer, lastSeq: last, reachable: true)
                break
            }
            var datasets: [Int64] = []
            var seen = Set<Int64>()
            for c in list.reversed() {
                if c.kind == .replicaUpdated || c.kind == .replicaDeleted { replicas = true; continue }
                if seen.insert(c.dataset).inserted { datasets.append(c.dataset) }
            }
            for id in datasets.reversed() { try syncDataset(peer, remoteID: id) }
            last = list.map(\.seq).max() ?? last
            try catalog.recordSync(center: peer, lastSeq: last, reachable: true)
            if list.count < 1000 { break }
        }
        if replicas {
            let items = try fetch(V1.HeldReplicas.self, peer, "/api/v1/federation/replicas", "replica list")!.replicas
            let unknown = try catalog.mirrorReplicas(at: peer, items.map { ($0.dataset, $0.replica) })
            lock.withLock {
                if unknown > 0 { replicasPending.insert(peer) } else { replicasPending.remove(peer) }
            }
        }
    }


    /// Mirrors one of the peer's datasets: its metadata, then what changed in its entries
    /// since the peer's entry sequence this mirror last applied (GlobalFS `EntryFeed.swift`):
    /// the tombstones, then the changed rows, each paged in (seq, dir, name) order up to the
    /// sequence the peer had at the first page. A new mirror, one the peer cannot continue
    /// (`resync`), or a peer without the route (404) is read whole in key order instead.
    func syncDataset(_ peer: String, remoteID: Int64) throws {
        guard var d = try fetch(Dataset.self, peer, "/api/v1/federation/datasets/\(remoteID)", "dataset \(remoteID)", allowMissing: true) else {
            try catalog.dropMirror(center: peer, remoteID: remoteID)
            return
        }
        guard d.center == peer else { throw FederationError("center \(peer) sent a dataset of center '\(d.center)'") }
        d.root = nil
        let id = try catalog.mirrorDataset(d)
        if forwarded.contains(peer) {
            try catalog.keepWithoutEntries(mirror: id)
            return
        }
        let since = try catalog.entrySeq(dataset: id).seq
        let base = "/api/v1/federation/entry-changes?dataset=\(remoteID)&since=\(since)&limit=\(pageSize)"
        guard let first = try fetch(V1.EntryChanges.self, peer, base + "&part=removed", "changes of its dataset \(remoteID)", allowMissing: true) else {
            try readWhole(peer, remoteID: remoteID, mirror: id, name: d.qualifiedName)
            return
        }
        let upto = first.entrySeq
        if first.resync {
            guard try readWhole(peer, remoteID: remoteID, mirror: id, name: d.qualifiedName) else { return }
            try catalog.setMirrorSeq(id, upto)
            return
        }
        var removed = 0, changed = 0
        for part in ["removed", "entries"] {
            var page: V1.EntryChanges? = part == "removed" ? first : nil
            var after: EntryCursor?
            // Bounded: 100,000 pages of each part (2 billion rows at the default size).
            for _ in 0..<100_000 {
                if page == nil {
                    var path = base + "&part=\(part)&upto=\(upto)"
                    if let a = after { path += "&after_seq=\(a.seq)&after_dir=\(queryEscape(a.dir))&after_name=\(queryEscape(a.name))" }
                    guard let p = try fetch(V1.EntryChanges.self, peer, path, "changes of its dataset \(remoteID)", allowMissing: true) else {
                        try catalog.dropMirror(center: peer, remoteID: remoteID)
                        return
                    }
                    // A peer that cannot continue mid-way (tombstones pruned meanwhile, or its
                    // catalog replaced): the dataset is read whole now.
                    guard !p.resync else {
                        try catalog.setMirrorSeq(id, 0)
                        guard try readWhole(peer, remoteID: remoteID, mirror: id, name: d.qualifiedName) else { return }
                        try catalog.setMirrorSeq(id, p.entrySeq)
                        return
                    }
                    page = p
                }
                guard let p = page else { break }
                do {
                    if part == "removed" {
                        removed += p.removed.count
                        _ = try catalog.applyRemoved(mirror: id, p.removed)
                    } else {
                        changed += p.entries.count
                        _ = try catalog.applyChanged(mirror: id, p.entries)
                    }
                } catch let e as CatalogError where e.code == .invalid {
                    throw FederationError("center \(peer) sent an invalid page of changes of \(d.qualifiedName), refused: \(e.description)")
                }
                // The cursor must move forward, or a peer could keep this loop on one page.
                guard let next = p.next else { break }
                let previous = after ?? EntryCursor(seq: since, dir: "", name: "")
                guard next.seq > previous.seq || (next.seq == previous.seq && Entry.keyPrecedes((previous.dir, previous.name), (next.dir, next.name))) else {
                    throw FederationError("center \(peer) sent a page of changes that does not advance")
                }
                after = next
                page = nil
            }
        }
        try catalog.setMirrorSeq(id, upto)
        count(peer, changed: changed, removed: removed)
    }

    /// Reads one of the peer's datasets whole, in key order, into mirror `mirror` (only the
    /// rows that differ are written). False when the peer no longer has it (the mirror went).
    @discardableResult
    func readWhole(_ peer: String, remoteID: Int64, mirror id: Int64, name: String) throws -> Bool {
        var after = (dir: "", name: "")
        var rows = 0
        // Bounded: a dataset of up to 100,000 pages (2 billion entries at the default size).
        for _ in 0..<100_000 {
            let path = "/api/v1/federation/entries?dataset=\(remoteID)&limit=\(pageSize)&after_dir=\(queryEscape(after.dir))&after_name=\(queryEscape(after.name))"
            guard let page = try fetch(V1.EntryPage.self, peer, path, "entries of its dataset \(remoteID)", allowMissing: true) else {
                try catalog.dropMirror(center: peer, remoteID: remoteID)
                return false
            }
            let entries = page.entries
            let last = entries.count < pageSize
            rows += entries.count
            do {
                _ = try catalog.mergeMirror(dataset: id, after: after, page: entries, last: last)
            } catch let e as CatalogError where e.code == .invalid {
                throw FederationError("center \(peer) sent an invalid page of \(name), refused: \(e.description)")
            }
            if last {
                count(peer, whole: rows)
                return true
            }
            after = (entries.last!.dir, entries.last!.name)
        }
        return true
    }

    /// Entries read from each peer, by how (`/metrics`: `ferry_federation_entries_total`).
    private var counted: [String: (whole: Int, changed: Int, removed: Int)] = [:]

    private func count(_ peer: String, whole: Int = 0, changed: Int = 0, removed: Int = 0) {
        lock.withLock {
            var c = counted[peer] ?? (0, 0, 0)
            c.whole += whole
            c.changed += changed
            c.removed += removed
            counted[peer] = c
        }
    }

    /// The follower's lines of `/metrics`: entries read from each peer, by how (whole
    /// datasets read in key order; changed rows and tombstones from the entry feed).
    public func metricsText() -> String {
        let c = lock.withLock { counted }
        var out = "# HELP ferry_federation_entries_total Catalog entries read from each peer: whole (a dataset read in full), changed and removed (its entry feed).\n"
        out += "# TYPE ferry_federation_entries_total counter\n"
        for p in peers.keys.sorted() {
            let x = c[p] ?? (0, 0, 0)
            for (how, n) in [("whole", x.whole), ("changed", x.changed), ("removed", x.removed)] {
                out += "ferry_federation_entries_total{peer=\(promLabel(p)),how=\"\(how)\"} \(n)\n"
            }
        }
        return out
    }

    /// A GET of the peer's API as this center; nil for a 404 when `allowMissing`. Over
    /// https the peer must show its own certificate (signed by the federation CA, for its
    /// address and its center name); the answer is capped at `maxAnswerBytes`.
    func fetch<T: Decodable>(_ type: T.Type, _ peer: String, _ path: String, _ what: String, allowMissing: Bool = false) throws -> T? {
        guard let base = peers[peer] else { throw FederationError("center \(peer) has no API address") }
        let answer: HTTPClient.Response
        do {
            let client = try HTTPClient(base, ca: ca, center: peer, timeout: 30, maxBody: Federation.maxAnswerBytes)
            answer = try client.send("GET", path, headers: [
                ("Authorization", CenterAssertion.scheme + CenterAssertion(issuer: me, audience: peer).signed(privateKey: key)),
                (CenterAssertion.certificateHeader, certificateHeader),
            ])
        } catch let e as TransferError {
            throw FederationError("cannot reach \(base): \(e.message)")
        }
        let status = answer.status
        if status == 404 && allowMissing { return nil }
        guard (200..<300).contains(status) else {
            let problem = try? APIJSON.decode(V1.Problem.self, from: Data(answer.body))
            throw FederationError("\(base)\(path.prefix { $0 != "?" }): \(problem?.detail ?? "HTTP \(status)")")
        }
        // The contract's type, or a clear error naming the peer and what it sent.
        do { return try APIJSON.decode(T.self, from: Data(answer.body)) } catch let e as DecodingError {
            throw FederationError("center \(peer) sent a malformed \(what): \(DaemonAPI.explain(e))")
        }
    }

    // MARK: forwarding listings

    /// The last answers of peers followed without their entries, by peer and question
    /// (at most `keptMax`, and `keptBytesMax` bytes; the oldest go first).
    private var kept: [String: [UInt8]] = [:]
    private var keptOrder: [String] = []
    private var keptBytes = 0
    static let keptMax = 1024
    static let keptBytesMax = 64 << 20

    /// Asks peer `peer` for `path` (one of its federation routes) as this center, within 10 s.
    /// `keep`: while the peer cannot be reached, the last answer to the same question that
    /// the caller kept (`keepAnswer`, once it passed the caller's checks) is given instead
    /// (`fresh` false). Throws when the peer cannot be reached and nothing is kept.
    public func forward(_ peer: String, _ path: String, keep: Bool) throws -> (status: Int, body: [UInt8], fresh: Bool) {
        guard let base = peers[peer] else { throw FederationError("center \(peer) has no API address") }
        let question = peer + " " + path
        do {
            let client = try HTTPClient(base, ca: ca, center: peer, timeout: 10, maxBody: Federation.maxAnswerBytes)
            let answer = try client.send("GET", path, headers: [
                ("Authorization", CenterAssertion.scheme + CenterAssertion(issuer: me, audience: peer).signed(privateKey: self.key)),
                (CenterAssertion.certificateHeader, certificateHeader),
            ])
            return (answer.status, Array(answer.body), true)
        } catch let e as TransferError {
            if keep, let body = lock.withLock({ kept[question] }) { return (200, body, false) }
            throw FederationError("center \(peer) cannot be reached (\(e.message)), and its entries are not mirrored here (follow = \"datasets\"): try again when it is up")
        }
    }

    /// Keeps `body` as the answer of `peer` to `path` (`forward`), for when that peer cannot
    /// be reached: only an answer that passed the caller's checks, so that a forged one
    /// never displaces a good one.
    public func keepAnswer(_ peer: String, _ path: String, _ body: [UInt8]) { remember(peer + " " + path, body) }

    private func remember(_ key: String, _ body: [UInt8]) {
        guard body.count <= Federation.keptBytesMax / 16 else { return }
        lock.withLock {
            if let old = kept.updateValue(body, forKey: key) {
                keptBytes -= old.count
                keptOrder.removeAll { $0 == key }
            }
            keptBytes += body.count
            keptOrder.append(key)
            while keptOrder.count > Federation.keptMax || keptBytes > Federation.keptBytesMax, let first = keptOrder.first {
                keptOrder.removeFirst()
                keptBytes -= kept.removeValue(forKey: first)?.count ?? 0
            }
        }
    }

    /// The largest answer a peer may send (a page of 20,000 entries is a few MiB); beyond it
    /// the transfer is cut off rather than buffered, so a peer streaming without end cannot
    /// exhaust this daemon's memory.
    public static let maxAnswerBytes = 64 << 20

    // MARK: replicas being filled here

    /// Staging replicas whose job ended: `complete` (verified now) or `partial`.
    func settleReplicas() {
        guard let staging = try? catalog.stagingReplicas(at: me) else { return }
        for r in staging {
            guard let id = r.job, let job = try? store.get(id), job.state.isFinal else { continue }
            var done = r
            if job.state.satisfiesDependents {
                guard let d = try? catalog.dataset(r.dataset, as: .operator) else { continue }
                done.state = .complete
                done.files = d.fileCount
                done.bytes = d.bytes
                done.verifiedAt = Catalog.now()
            } else {
                done.state = .partial
            }
            try? catalog.setReplica(dataset: done.dataset, center: me, state: done.state, path: done.path, files: done.files, bytes: done.bytes,
                                    verifiedAt: done.verifiedAt, job: id)
        }
    }
}

struct FederationError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
