import Foundation
import Storage

/// Federation, the catalog's half: what a center serves its peers (its own datasets, their
/// entries in key order, the replicas it holds) and how a follower mirrors a peer's catalog
/// into its own tables, so that `ls`, `find` and `stat` of `gfs://PEER/...` are answered
/// locally. A mirrored dataset is a row with the peer's center name and `remote_id` = its id
/// there. Mirroring never writes the follower's own change feed: a center's feed carries only
/// the facts it owns (its datasets, the replicas at it), so centers that follow each other do
/// not echo changes back and forth. The daemon's `Federation` drives this over HTTP.
extension Catalog {
    // MARK: serving peers

    /// Entries of one of this center's datasets in key order after (dir, name): what a peer
    /// pages through to mirror it. `("", "")` starts at the beginning.
    public func exportEntries(dataset: Int64, afterDir: String, afterName: String, limit: Int) throws -> [Entry] {
        try db.read { s in
            try FastSQL.entries(s, "SELECT \(Catalog.entryColumns) FROM files WHERE dataset = ? AND (dir, name) > (?, ?) ORDER BY dir, name LIMIT ?",
                                [.int(dataset), .text(afterDir), .text(afterName), .int(Int64(max(1, min(limit, 100_000))))])
        }
    }

    /// The replicas held at `center`, with the identity of each one's dataset (center, name,
    /// version, and its id at that center when it is `center`'s own).
    public func replicas(at center: String) throws -> [(dataset: Dataset, replica: Replica)] {
        try db.read { s in
            let rows = try s.query("SELECT * FROM replicas WHERE center = ? ORDER BY dataset", center).map(Catalog.replica)
            return try rows.compactMap { r in
                try s.one("SELECT \(Catalog.datasetColumns) FROM datasets WHERE id = ?", r.dataset).map { (Catalog.dataset($0), r) }
            }
        }
    }

    // MARK: following peers

    /// The local id of the dataset mirrored from `center` whose id there is `remoteID`.
    public func mirroredDataset(center: String, remoteID: Int64) throws -> Int64? {
        try db.read { s in try s.one("SELECT id FROM datasets WHERE center = ? AND remote_id = ?", center, remoteID)?.int("id") }
    }

    /// Creates or updates the mirror of a peer's dataset (its metadata as the peer sent it,
    /// `d.id` being the peer's id); returns the local id. A dataset the peer deleted and
    /// registered again under the same name takes over the old mirror (the entries merge then
    /// corrects its files).
    ///
    /// A mirror only ever writes mirrored rows (`remote_id` set): a row registered here (no
    /// `remote_id`) is never taken over, whatever center, name or owner a peer claims, so a
    /// peer cannot change the owner, readers or entries of this center's datasets.
    public func mirrorDataset(_ d: Dataset, now: Int64 = Catalog.now()) throws -> Int64 {
        try GFSPath.validateCenter(d.center)
        let readers = try Catalog.readersText(d.readers)
        defer { recentDatasets.forget() }
        return try db.write { s in
            if let local = try s.one("SELECT id FROM datasets WHERE center = ? AND name = ? AND version = ? AND remote_id IS NULL", d.center, d.name, d.version) {
                throw CatalogError(.conflict, "center \(d.center)'s dataset '\(d.qualifiedName)' collides with dataset \(local.int("id")) registered at this center: not mirrored")
            }
            let existing = try s.one("SELECT id FROM datasets WHERE center = ? AND remote_id = ?", d.center, d.id)
                ?? s.one("SELECT id FROM datasets WHERE center = ? AND name = ? AND version = ? AND remote_id IS NOT NULL", d.center, d.name, d.version)
            if let id = existing?.int("id") {
                // Another dataset of the peer's taking over this mirror: the sequence applied
                // was the old one's (`EntryFeed.swift`), so the new one is read whole.
                try s.execute("""
                    UPDATE datasets SET name = ?, version = ?, owner = ?, description = ?, license = ?, readers = ?,
                        entry_seq = CASE WHEN remote_id = ? THEN entry_seq ELSE 0 END, remote_id = ?,
                        file_count = ?, bytes = ?, created = ?, updated = ? WHERE id = ?
                    """, d.name, d.version, d.owner, d.description, d.license, readers, d.id, d.id, d.fileCount, d.bytes, d.created, d.updated, id)
                return id
            }
            // New: hidden from readers (`syncing`) until `mergeMirror` takes its last page.
            try s.execute("""
                INSERT INTO datasets (center, name, version, owner, description, license, readers, remote_id, file_count, bytes, created, updated, syncing)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
                """, d.center, d.name, d.version, d.owner, d.description, d.license, readers, d.id, d.fileCount, d.bytes, d.created, d.updated)
            guard let id = try s.one("SELECT id FROM datasets WHERE center = ? AND remote_id = ?", d.center, d.id)?.int("id") else {
                throw CatalogError(.io, "the mirror of \(d.center)/\(d.qualifiedName) was not stored")
            }
            return id
        }
    }

    /// A mirror kept without its entries (its peer is followed with `follow = "datasets"`):
    /// whatever entries an earlier mode mirrored go, and the dataset is seen at once (its
    /// listings are the peer's to answer). Its entry sequence is forgotten: followed whole
    /// again, it is read whole.
    public func keepWithoutEntries(mirror id: Int64) throws {
        defer { recentDatasets.forget() }
        try db.write { s in
            guard try s.one("SELECT 1 AS one FROM datasets WHERE id = ? AND remote_id IS NOT NULL", id) != nil else { return }
            try s.execute("DELETE FROM files WHERE dataset = ?", id)
            try s.execute("UPDATE datasets SET syncing = 0, entry_seq = 0 WHERE id = ?", id)
        }
    }

    /// Removes the mirror of a dataset its center deleted (entries and replicas with it).
    public func dropMirror(center: String, remoteID: Int64) throws {
        defer { recentDatasets.forget() }
        try db.write { s in
            guard let id = try s.one("SELECT id FROM datasets WHERE center = ? AND remote_id = ?", center, remoteID)?.int("id") else { return }
            try s.execute("DELETE FROM files WHERE dataset = ?", id)
            try s.execute("DELETE FROM replicas WHERE dataset = ?", id)
            try s.execute("DELETE FROM datasets WHERE id = ?", id)
        }
    }

    /// Merges one page of a peer dataset's entries (in key order, after `after`; `last` when
    /// the peer has no more) into the mirror `dataset`: rows that differ are written, local
    /// rows in the page's key range that the peer no longer has are removed. Returns how many
    /// rows were written and removed: a re-sync of an unchanged dataset writes nothing.
    ///
    /// A peer's page is input like any other: it is refused whole (nothing written) unless
    /// every entry is one this catalog could have made itself (`Entry.checkMirrored`) and the
    /// keys rise strictly, byte-wise, after `after`, the order the peer's own paging uses. A
    /// page that repeats or goes backwards would otherwise keep a follower paging forever.
    public func mergeMirror(dataset: Int64, after: (dir: String, name: String), page: [Entry], last: Bool) throws -> (written: Int, removed: Int) {
        defer { if last { recentDatasets.forget() } }
        var previous = after
        for e in page {
            try e.checkMirrored()
            guard Entry.keyPrecedes(previous, (e.dir, e.name)) else {
                throw CatalogError(.invalid, "entry '\(e.path)' is out of key order (after '\(previous.dir.isEmpty ? previous.name : previous.dir + "/" + previous.name)')")
            }
            previous = (e.dir, e.name)
        }
        return try db.write { s in
            var sql = "SELECT \(Catalog.entryColumns) FROM files WHERE dataset = ? AND (dir, name) > (?, ?)"
            var args: [SQLValue] = [.int(dataset), .text(after.dir), .text(after.name)]
            if !last, let end = page.last {
                sql += " AND (dir, name) <= (?, ?)"
                args += [.text(end.dir), .text(end.name)]
            }
            var local: [PathKey: Entry] = [:]
            for e in try FastSQL.entries(s, sql + " ORDER BY dir, name", args) { local[PathKey(e.dir, e.name)] = e }
            var changed: [Entry] = []
            for var e in page {
                e.dataset = dataset
                if let mine = local.removeValue(forKey: PathKey(e.dir, e.name)), mine == e { continue }
                changed.append(e)
            }
            if !changed.isEmpty { try FastSQL.upsert(s, changed[...]) }
            let gone = Array(local.keys)
            if !gone.isEmpty { _ = try FastSQL.delete(s, dataset: dataset, gone[...]) }
            // The first pass is complete: readers see the dataset from this transaction on.
            if last { try s.execute("UPDATE datasets SET syncing = 0 WHERE id = ? AND syncing = 1", dataset) }
            return (changed.count, gone.count)
        }
    }

    /// Makes this catalog's record of the replicas at peer `center` what the peer says
    /// (`list`: each replica with its dataset's identity as the peer knows it). Returns the
    /// number of replicas whose dataset is not (yet) known here: the follower tries again at
    /// its next sync (the dataset's own center may not have been synced yet).
    public func mirrorReplicas(at center: String, _ list: [(dataset: Dataset, replica: Replica)]) throws -> Int {
        try db.write { s in
            var keep = Set<Int64>()
            var unknown = 0
            for (d, r) in list {
                let row: SQLRow?
                if d.center == center {
                    row = try s.one("SELECT id FROM datasets WHERE center = ? AND remote_id = ?", center, d.id)
                } else {
                    row = try s.one("SELECT id FROM datasets WHERE center = ? AND name = ? AND version = ?", d.center, d.name, d.version)
                }
                guard let id = row?.int("id") else { unknown += 1; continue }
                keep.insert(id)
                var mine = r
                mine.dataset = id
                mine.center = center
                mine.job = nil
                let current = try s.one("SELECT * FROM replicas WHERE dataset = ? AND center = ?", id, center).map(Catalog.replica)
                if current != mine { try setReplica(s, mine, feed: false, now: Catalog.now()) }
            }
            for r in try s.query("SELECT dataset FROM replicas WHERE center = ?", center) where !keep.contains(r.int("dataset")) {
                try s.execute("DELETE FROM replicas WHERE dataset = ? AND center = ?", r.int("dataset"), center)
            }
            return unknown
        }
    }

    /// Replicas at this center that `ferry replicate` is filling (state staging, with a job).
    public func stagingReplicas(at center: String) throws -> [Replica] {
        try db.read { s in
            try s.query("SELECT * FROM replicas WHERE center = ? AND state = 'staging' AND job IS NOT NULL", center).map(Catalog.replica)
        }
    }
}

extension Entry {
    /// The catalog's key order: (dir, name) compared byte-wise, as SQLite's BINARY and
    /// PostgreSQL's COLLATE "C" compare them.
    public static func keyPrecedes(_ a: (dir: String, name: String), _ b: (dir: String, name: String)) -> Bool {
        if a.dir != b.dir { return a.dir.utf8.lexicographicallyPrecedes(b.dir.utf8) }
        return a.name.utf8.lexicographicallyPrecedes(b.name.utf8)
    }

    /// Throws unless this entry is one a scan could have produced: its name one path
    /// component (not empty, "." or "..", without "/" or NUL), its dir "" or such components
    /// joined by "/", size and chunk size not negative (an mtime may be: before 1970), mode within 0o7777, a digest of
    /// 32 lowercase hex digits or none, a target only on a symlink. What a peer sends is
    /// checked against this before it is mirrored.
    public func checkMirrored() throws {
        func bad(_ why: String) -> CatalogError { CatalogError(.invalid, "entry '\(path.prefix(200))': \(why)") }
        func component(_ c: Substring) -> Bool {
            !c.isEmpty && c != "." && c != ".." && !c.contains("\0") && !c.contains("/") && c.utf8.count <= 255
        }
        guard component(Substring(name)) else { throw bad("the name is not one path component") }
        guard dir.isEmpty || dir.split(separator: "/", omittingEmptySubsequences: false).allSatisfy(component) else {
            throw bad("the parent is not a relative path of plain components")
        }
        guard dir.utf8.count + name.utf8.count < 4096 else { throw bad("the path is longer than PATH_MAX") }
        guard size >= 0, chunkSize >= 0 else { throw bad("a negative size or chunk size") }
        guard (0...0o7777).contains(mode) else { throw bad("mode \(mode) is not permission bits") }
        if let d = digest {
            guard d.utf8.count == 32, d.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
                throw bad("the digest is not 32 hex digits")
            }
        }
        guard target == nil || kind == .symlink else { throw bad("a target on a \(kind)") }
    }
}
