import Foundation
import Storage

/// The entries' change sequence (issue 21): what makes a follower's work proportional to what
/// changed, not to the size of the dataset.
///
/// Each of this center's datasets counts its writes in `datasets.entry_seq`. Every write
/// transaction of a registration takes the next number (`nextEntrySeq`, in that transaction,
/// under the dataset row's lock) and stamps it on every row it writes (`files.seq`, indexed
/// with the dataset); what it removes leaves a tombstone with it in `removed_files` (one per
/// removed entry; a directory that went, or became a file, is one tombstone for its whole
/// subtree). A number is visible only once its transaction committed, and transactions of
/// one dataset take their numbers in commit order, so a reader that sees `entry_seq` = H
/// sees every row and tombstone up to H.
///
/// The first registration of a dataset (nothing registered yet) stamps its rows 0 and, in its
/// last transaction, takes one number and raises the floor to it: every follower reads a new
/// dataset whole anyway, and rows stamped 0 stay out of the index (`files_seq` holds only
/// rows with a number, `WHERE seq > 0`), so a first registration costs what it did before
/// sequences (on SQLite, whose secondary index would carry the whole key, about 30 % of it).
///
/// A follower keeps, on its mirror's row, the peer's `entry_seq` it last applied (`entry_seq`
/// of a mirror row means that) and asks for what lies after it up to the peer's current one:
/// tombstones first (each removes its key and whatever lies below it), then the rows (each
/// replaces its key). Both lists are read in (seq, dir, name) order, paged by that key. The
/// files table always holds each key's latest state, so applying every tombstone before every
/// row in a range gives that state: a key removed and then added again has both and ends
/// present, one added and then removed has only its tombstone.
///
/// Tombstones are kept while a dataset has at most `max(tombstonesKept, its entries)` of
/// them; beyond, the oldest half goes and `entry_floor` rises to the last number pruned. A
/// follower behind the floor (or at 0: a new mirror, or one made before sequences; or ahead
/// of the peer: its catalog was replaced) reads the dataset whole, as it always did, and
/// records the peer's `entry_seq` as it was before that read.
public struct RemovedEntry: Sendable, Codable, Equatable {
    public var seq: Int64
    public var dir: String
    public var name: String
    public init(seq: Int64, dir: String, name: String) { self.seq = seq; self.dir = dir; self.name = name }
    public var path: String { dir.isEmpty ? name : dir + "/" + name }
}

/// Where a page of the entry feed ended: the next page starts after (seq, dir, name).
public struct EntryCursor: Sendable, Codable, Equatable {
    public var seq: Int64
    public var dir: String
    public var name: String
    public init(seq: Int64, dir: String, name: String) { self.seq = seq; self.dir = dir; self.name = name }
}

extension Catalog {
    /// The dataset's next entry sequence number, taken in the write transaction `s`.
    static func nextEntrySeq(_ s: any SQLSession, dataset: Int64) throws -> Int64 {
        guard let r = try s.one("UPDATE datasets SET entry_seq = entry_seq + 1 WHERE id = ? RETURNING entry_seq", dataset) else {
            throw CatalogError(.notFound, "no dataset \(dataset)")
        }
        return r.int("entry_seq")
    }

    /// Bounds a dataset's tombstones (see the type's comment): the oldest half goes once there
    /// are more than `max(tombstonesKept, entries)`, and the floor rises past them.
    func pruneTombstones(_ s: any SQLSession, dataset: Int64, entries: Int64) throws {
        let cap = max(Int64(tombstonesKept), entries)
        let n = try s.one("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM removed_files WHERE dataset = ?", dataset)?.int("n") ?? 0
        guard n > cap else { return }
        guard let cut = try s.one("SELECT seq FROM removed_files WHERE dataset = ? ORDER BY seq DESC LIMIT 1 OFFSET ?", dataset, cap / 2)?.int("seq") else { return }
        try s.execute("DELETE FROM removed_files WHERE dataset = ? AND seq <= ?", dataset, cut)
        try s.execute("UPDATE datasets SET entry_floor = ? WHERE id = ? AND entry_floor < ?", cut, dataset, cut)
    }

    /// A dataset's entry sequence and floor (for one of this center's datasets; for a mirror,
    /// `seq` is the peer's sequence applied and the floor 0).
    public func entrySeq(dataset: Int64) throws -> (seq: Int64, floor: Int64) {
        try db.read { s in
            guard let r = try s.one("SELECT entry_seq, entry_floor FROM datasets WHERE id = ?", dataset) else {
                throw CatalogError(.notFound, "no dataset \(dataset)")
            }
            return (r.int("entry_seq"), r.int("entry_floor"))
        }
    }

    /// The rows of `dataset` written after sequence `since` up to `upto`, in (seq, dir, name)
    /// order after `after` (nil: from the start); `next` is where the following page starts,
    /// nil when this one was the last.
    public func changedEntries(dataset: Int64, since: Int64, upto: Int64, after: EntryCursor?, limit: Int) throws -> (entries: [Entry], next: EntryCursor?) {
        let limit = max(1, min(limit, 100_000))
        let (where_, args) = Catalog.feedRange(dataset: dataset, since: since, upto: upto, after: after)
        // The seq rides in the `dataset` column (the page's rows are all of one dataset).
        var page = try db.read { s in
            try FastSQL.entries(s, "SELECT seq AS dataset, dir, name, kind, size, mtime_ns, mode, digest, chunk_size, target FROM files WHERE "
                                + where_ + " ORDER BY seq, dir, name LIMIT ?", args + [.int(Int64(limit))])
        }
        let next = page.count == limit ? page.last.map { EntryCursor(seq: $0.dataset, dir: $0.dir, name: $0.name) } : nil
        for i in page.indices { page[i].dataset = dataset }
        return (page, next)
    }

    /// The tombstones of `dataset` after `since` up to `upto`, paged as `changedEntries`.
    public func removedEntries(dataset: Int64, since: Int64, upto: Int64, after: EntryCursor?, limit: Int) throws -> (removed: [RemovedEntry], next: EntryCursor?) {
        let limit = max(1, min(limit, 100_000))
        let (where_, args) = Catalog.feedRange(dataset: dataset, since: since, upto: upto, after: after)
        let page = try db.read { s in
            try s.query("SELECT seq, dir, name FROM removed_files WHERE " + where_ + " ORDER BY seq, dir, name LIMIT ?", args + [.int(Int64(limit))])
                .map { RemovedEntry(seq: $0.int("seq"), dir: $0.text("dir"), name: $0.text("name")) }
        }
        let next = page.count == limit ? page.last.map { EntryCursor(seq: $0.seq, dir: $0.dir, name: $0.name) } : nil
        return (page, next)
    }

    private static func feedRange(dataset: Int64, since: Int64, upto: Int64, after: EntryCursor?) -> (String, [SQLValue]) {
        // `seq > 0` as such: what lets the planner use the partial index (`files_seq`).
        var sql = "dataset = ? AND seq > 0 AND seq > ? AND seq <= ?"
        var args: [SQLValue] = [.int(dataset), .int(since), .int(upto)]
        if let a = after {
            // The row comparison, and its first column alone so that an index on seq serves it.
            sql += " AND seq >= ? AND (seq, dir, name) > (?, ?, ?)"
            args += [.int(a.seq), .int(a.seq), .text(a.dir), .text(a.name)]
        }
        return (sql, args)
    }

    // MARK: following

    /// Sets the peer's entry sequence applied to mirror `mirror`.
    public func setMirrorSeq(_ mirror: Int64, _ seq: Int64) throws {
        try db.write { s in _ = try s.execute("UPDATE datasets SET entry_seq = ? WHERE id = ? AND remote_id IS NOT NULL", seq, mirror) }
    }

    /// Forgets the sequences applied from `center` (its catalog was replaced: its numbers
    /// mean nothing any more); each of its datasets is read whole at its next sync.
    public func resetMirrorSeqs(center: String) throws {
        try db.write { s in _ = try s.execute("UPDATE datasets SET entry_seq = 0 WHERE center = ? AND remote_id IS NOT NULL", center) }
    }

    /// Applies a page of a peer's tombstones to mirror `mirror`: each removes its key and
    /// everything below it. The page is checked whole first (every key one a scan could
    /// make) and refused whole. Returns how many rows went.
    public func applyRemoved(mirror: Int64, _ removed: [RemovedEntry]) throws -> Int {
        for r in removed {
            try Entry(dataset: mirror, dir: r.dir, name: r.name, kind: .file, size: 0, mtimeNs: 0, mode: 0).checkMirrored()
        }
        if removed.isEmpty { return 0 }
        return try db.write { s in
            try Catalog.checkMirror(s, mirror)
            var n = try FastSQL.delete(s, dataset: mirror, removed.map { PathKey($0.dir, $0.name) }[...])
            for r in removed {
                let p = r.path
                n += try s.execute("DELETE FROM files WHERE dataset = ? AND (dir = ? OR (dir >= ? AND dir < ?))", mirror, p, p + "/", p + "0")
            }
            return n
        }
    }

    /// Applies a page of a peer's changed rows to mirror `mirror` (each replaces its key).
    /// Checked whole first, as `mergeMirror` checks its pages; a key twice is refused.
    /// Returns how many rows were written.
    public func applyChanged(mirror: Int64, _ entries: [Entry]) throws -> Int {
        var keys = Set<PathKey>()
        var rows = entries
        for i in rows.indices {
            try rows[i].checkMirrored()
            guard keys.insert(PathKey(rows[i].dir, rows[i].name)).inserted else {
                throw CatalogError(.invalid, "entry '\(rows[i].path.prefix(200))' appears twice in one page")
            }
            rows[i].dataset = mirror
        }
        if rows.isEmpty { return 0 }
        defer { recentDatasets.forget() }
        return try db.write { s in
            try Catalog.checkMirror(s, mirror)
            try FastSQL.upsert(s, rows[...])
            return rows.count
        }
    }

    /// Only a mirror's rows are written by what a peer sends.
    private static func checkMirror(_ s: any SQLSession, _ id: Int64) throws {
        guard try s.one("SELECT 1 AS one FROM datasets WHERE id = ? AND remote_id IS NOT NULL", id) != nil else {
            throw CatalogError(.forbidden, "dataset \(id) is not a mirror of a peer's")
        }
    }
}
