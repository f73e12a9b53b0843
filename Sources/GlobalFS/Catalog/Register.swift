import Foundation
import Glibc
import Storage
import Transfer

extension Catalog {
    /// Rows per write transaction. Registration is not one transaction: on SQLite that would
    /// hold the only write lock (which the job queue may share) for the whole scan, and on
    /// PostgreSQL it would keep millions of row versions pending. A registration that stops
    /// half way leaves some directories updated and the replica as it was; running it again
    /// finishes the job (the diff is against whatever the catalog holds).
    static let batchRows = 10_000

    /// Scans `root` into dataset `name`@`version` at `center` and records a complete replica
    /// there. The first registration inserts everything; a later one compares each entry's
    /// kind, size, mtime, mode (and link target) with the catalog, writes only what differs,
    /// deletes what is gone (a vanished directory with everything below it), and keeps the
    /// digests of unchanged files.
    ///
    /// `hash`: compute the engine's digest (`chunkSize` chunks) of every file that has none
    /// (new, changed, or left unhashed by an earlier run: hashing resumes where a stopped run
    /// left off). Off by default, since it reads every byte.
    /// `readers`, `description`, `license`: nil keeps the dataset's current value (a new
    /// dataset is private to `owner` unless `readers` says otherwise). An existing dataset
    /// keeps its owner, and only its owner may register it again (new root, readers,
    /// description): anyone else gets `forbidden` and nothing changes, unless `administrator`
    /// (an operator's token: the center's own administration). Names are per center: the same
    /// name at two centers is two datasets, each with its owner.
    ///
    /// `replicaPath`: the replica's path as the center's transfer server names it
    /// (`/EXPORT/PATH`, what a `ferry://` URL takes); default: the absolute directory.
    ///
    /// One registration of a dataset at a time (the CLI or daemon serialises them): two at
    /// once would each diff against rows the other is rewriting.
    @discardableResult
    public func register(root: String, dataset name: String, version: String = "", owner: String, center: String,
                         readers: [String]? = nil, description: String? = nil, license: String? = nil,
                         hash: Bool = false, chunkSize: Int = Wire.chunkBytesDefault, threads: Int? = nil,
                         replicaPath: String? = nil, administrator: Bool = false, rootFd: Int32? = nil, account: LocalAccount? = nil,
                         now: Int64 = Catalog.now()) throws -> RegisterSummary {
        let started = DispatchTime.now().uptimeNanoseconds
        try GFSPath.validateDataset(name: name, version: version)
        try GFSPath.validateCenter(center)
        let readersText = try readers.map(Catalog.readersText)
        guard chunkSize > 0 && chunkSize <= 1 << 30 else { throw CatalogError(.invalid, "chunk size \(chunkSize) out of range") }
        let scanner = try Scanner(root: root, rootFd: rootFd, account: account, threads: threads ?? Scanner.defaultThreads)
        let absRoot = realpath(root, nil).map { p in defer { free(p) }; return String(cString: p) } ?? root

        // The dataset row first (so its id exists), then the files, then counts and replica.
        // Each write of the row forgets the datasets `resolve` keeps (after its transaction).
        defer { recentDatasets.forget() }
        let (id, isNew, fresh) = try db.write { s -> (Int64, Bool, Bool) in
            try s.execute("INSERT INTO centers (name) VALUES (?) ON CONFLICT (name) DO NOTHING", center)
            if let r = try s.one("SELECT id, owner, remote_id FROM datasets WHERE center = ? AND name = ? AND version = ?", center, name, version) {
                let id = r.int("id")
                let shown = "\(name)\(version.isEmpty ? "" : "@" + version)"
                guard r.optionalInt("remote_id") == nil else {
                    throw CatalogError(.conflict, "dataset '\(shown)' of center \(center) is a mirror of that center's catalog, not registered here")
                }
                guard sameBytes(r.text("owner"), owner) || administrator else {
                    throw CatalogError(.forbidden, "the dataset name '\(shown)' at center \(center) belongs to another user: only its owner (or an operator) may register it again")
                }
                try s.execute("""
                    UPDATE datasets SET readers = COALESCE(?, readers), description = COALESCE(?, description),
                        license = COALESCE(?, license), root = ? WHERE id = ?
                    """, readersText, description, license, absRoot, id)
                let empty = try s.one("SELECT 1 AS one FROM files WHERE dataset = ? LIMIT 1", id) == nil
                return (id, false, empty)
            }
            // A name has one owner across its versions, and no one registers a name inside, or
            // around, another owner's: `resolve` prefers the longest name, then the unversioned
            // one, then the newest version, so `climate/sub` (or `climate@2025`, or `climate`)
            // registered by another user would answer for paths of the owner's `climate`.
            if !administrator {
                var ancestors: [String] = []
                var prefix = ""
                for part in name.split(separator: "/").dropLast() {
                    prefix += (prefix.isEmpty ? "" : "/") + part
                    ancestors.append(prefix)
                }
                // The name itself and the names below it as a key range (as `family` reads them:
                // "/" sorts just before "0"), its ancestors by name: one query, no integer
                // parameter (PostgreSQL has no substr(text, int, bigint)).
                let placeholders = ancestors.isEmpty ? "" : " OR name IN (" + ancestors.map { _ in "?" }.joined(separator: ", ") + ")"
                let others = try s.query("SELECT name, version, owner FROM datasets WHERE center = ? AND (name = ? OR (name >= ? AND name < ?)\(placeholders))",
                                         ([center, name, name + "/", name + "0"] + ancestors).map { $0 as any SQLArgument })
                if let o = others.first(where: { !sameBytes($0.text("owner"), owner) }) {
                    let theirs = o.text("name") + (o.text("version").isEmpty ? "" : "@" + o.text("version"))
                    throw CatalogError(.forbidden, "the dataset name '\(name)' at center \(center) would take over paths of '\(theirs)', which belongs to another user: choose another name (an operator may register it)")
                }
            }
            guard let r = try s.one("""
                INSERT INTO datasets (center, name, version, owner, description, license, readers, root, created, updated)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id
                """, center, name, version, owner, description ?? "", license ?? "", readersText ?? "",
                absRoot, now, now) else { throw CatalogError(.io, "the database returned no id for the new dataset") }
            return (r.int("id"), true, true)
        }
        recentCenters.forget()
        recentDatasets.forget()

        var sum = RegisterSummary()
        sum.dataset = id
        var batch: [ScannedDirectory] = []
        var batchEntries = 0
        let hashThreads = max(1, threads ?? scanner.threads)
        let flush = { [self] in
            try self.apply(batch, dataset: id, scanner: scanner, fresh: fresh, hash: hash, chunkSize: chunkSize, threads: hashThreads, into: &sum)
            batch.removeAll(keepingCapacity: true)
            batchEntries = 0
        }
        let stats = try scanner.scan { d in
            batch.append(d)
            batchEntries += d.entries.count + 1
            if batchEntries >= Catalog.batchRows { try flush() }
        }
        try flush()
        sum.skipped = stats.skipped
        sum.unreadable = stats.unreadable
        sum.firstError = stats.firstError

        try db.write { s in
            let r = try s.one("""
                SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS b FROM files WHERE dataset = ? AND kind = 'f'
                """, id)
            sum.files = r?.int("n") ?? 0
            sum.bytes = r?.int("b") ?? 0
            try s.execute("UPDATE datasets SET file_count = ?, bytes = ?, updated = ? WHERE id = ?", sum.files, sum.bytes, now, id)
            try pruneTombstones(s, dataset: id, entries: sum.files)
            if fresh {
                // A follower that read any of it before now reads it whole again.
                let seq = try Catalog.nextEntrySeq(s, dataset: id)
                try s.execute("UPDATE datasets SET entry_floor = ? WHERE id = ?", seq, id)
            }
            try appendChange(s, center: center, dataset: id, kind: isNew ? .datasetRegistered : .datasetUpdated, at: now)
            try setReplica(s, Replica(dataset: id, center: center, state: .complete, path: replicaPath ?? absRoot, files: sum.files, bytes: sum.bytes, verifiedAt: now), now: now)
        }
        sum.seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        return sum
    }

    /// Diffs a batch of complete directory listings against the catalog and writes the
    /// difference. `fresh` (nothing registered yet): everything is new, nothing is read.
    private func apply(_ batch: [ScannedDirectory], dataset id: Int64, scanner: Scanner, fresh: Bool, hash: Bool, chunkSize: Int,
                       threads: Int, into sum: inout RegisterSummary) throws {
        if batch.isEmpty { return }
        var old: [PathKey: Entry] = fresh ? [:] : try db.read { s in try FastSQL.existing(s, dataset: id, dirs: batch.map(\.dir)) }
        var upserts: [Entry] = []
        var toHash: [Int] = []
        var deletes: [PathKey] = []
        var subtrees: [String] = []
        upserts.reserveCapacity(fresh ? batch.reduce(0) { $0 + $1.entries.count } : 0)
        for d in batch {
            for e in d.entries {
                var row = Entry(dataset: id, dir: d.dir, name: e.name, kind: e.kind, size: e.size, mtimeNs: e.mtimeNs, mode: e.mode, target: e.target)
                if let o = fresh ? nil : old.removeValue(forKey: PathKey(d.dir, e.name)) {
                    let same = o.kind == e.kind && o.size == e.size && o.mtimeNs == e.mtimeNs && o.mode == e.mode
                        && sameBytes(o.target ?? "", e.target ?? "")
                    if o.kind == .directory && e.kind != .directory { subtrees.append(row.path) }
                    if same {
                        sum.unchanged += 1
                        guard hash && e.kind == .file && o.digest == nil else { continue }
                    } else {
                        sum.changed += 1
                    }
                } else {
                    sum.added += 1
                }
                if hash && e.kind == .file {
                    row.chunkSize = Int64(chunkSize)
                    toHash.append(upserts.count)
                }
                upserts.append(row)
            }
        }
        for (k, o) in old {
            deletes.append(k)
            if o.kind == .directory { subtrees.append(o.path) }
        }

        if !toHash.isEmpty {
            let n = min(threads, toHash.count)
            /// The digests the threads found, guarded by its lock.
            final class Results: @unchecked Sendable {
                let lock = NSLock()
                var list: [(Int, String?)] = []
            }
            let found = Results()
            // Threads of their own, not a shared pool's: each acts as the scan's account, and
            // opens files beneath the scanned directory without following links.
            let rows = upserts
            let hashList = toHash
            let done = DispatchGroup()
            for t in 0..<n {
                done.enter()
                let thread = Thread {
                    defer { done.leave() }
                    if let account = scanner.account {
                        guard (try? ThreadIdentity.adopt(account)) != nil else { return }
                    }
                    defer { if scanner.account != nil { ThreadIdentity.restore() } }
                    let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunkSize, alignment: 4096)
                    defer { buffer.deallocate() }
                    var mine: [(Int, String?)] = []
                    for j in stride(from: t, to: hashList.count, by: n) {
                        let e = rows[hashList[j]]
                        let h = engineDigest(path: e.path, size: e.size, mtimeNs: e.mtimeNs, chunkSize: chunkSize, buffer: buffer, beneath: scanner.rootFd)
                        mine.append((hashList[j], h?.description))
                    }
                    found.lock.withLock { found.list += mine }
                }
                thread.stackSize = 1 << 20
                thread.start()
            }
            done.wait()
            for (i, d) in found.list {
                upserts[i].digest = d
                if d == nil { upserts[i].chunkSize = 0 } else { sum.hashed += 1 }
            }
        }

        // Every write takes the dataset's next entry sequence (`EntryFeed.swift`): the rows it
        // writes carry it, and what it removes leaves a tombstone with it (a gone directory,
        // or one that became a file, is one tombstone for its whole subtree), so a follower
        // asks for what changed after the last sequence it applied.
        if !deletes.isEmpty || !subtrees.isEmpty {
            try db.write { s in
                let seq = try Catalog.nextEntrySeq(s, dataset: id)
                var i = 0
                while i < deletes.count {
                    sum.removed += try FastSQL.delete(s, dataset: id, deletes[i..<min(i + Catalog.batchRows, deletes.count)])
                    i += Catalog.batchRows
                }
                for p in subtrees {
                    sum.removed += try s.execute("DELETE FROM files WHERE dataset = ? AND (dir = ? OR (dir >= ? AND dir < ?))", id, p, p + "/", p + "0")
                }
                try FastSQL.tombstones(s, dataset: id, seq: seq, deletes + subtrees.map(PathKey.init(path:)))
            }
        }
        var i = 0
        while i < upserts.count {
            let slice = upserts[i..<min(i + Catalog.batchRows, upserts.count)]
            // A first registration's rows are new and stamped 0 (`EntryFeed.swift`: followers read
            // it whole): on PostgreSQL they are copied in (`COPY`), not upserted.
            if fresh {
                try db.write { s in try FastSQL.insertNew(s, slice) }
            } else {
                try db.write { s in try FastSQL.upsert(s, slice, seq: try Catalog.nextEntrySeq(s, dataset: id)) }
            }
            i += Catalog.batchRows
        }
    }
}
