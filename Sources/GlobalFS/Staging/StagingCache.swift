import Foundation
import Storage

/// A center's staging cache (prestaging for the batch scheduler): data staged in for jobs,
/// keyed by what was asked for (a dataset path at a given registration, a ferry:// URL), so
/// that ten jobs asking for the same thing share one transfer. Each entry is a directory
/// under the cache root; jobs pin the entries they use while they are pending or running
/// (`stage_pins`); unpinned ready entries are evicted least recently used when the cache is
/// over its quota; a pinned entry is never evicted. Stage-out transfers and the links made
/// in jobs' directories are recorded per job, so that stage-in, stage-out and teardown can run
/// twice (the scheduler may) and end in the same state.
///
/// The daemon drives it (`Daemon/Staging/Staging.swift`); this is the bookkeeping, in the daemon's
/// database (SQLite or PostgreSQL).
public final class StagingCache: @unchecked Sendable {
    public let db: any SQLDatabase

    public enum State: String, Sendable, Codable { case staging, ready, failed }

    /// Seconds: an ask records an entry's use only when the last recorded one is older.
    public static let useResolution: Int64 = 60

    public struct Entry: Sendable, Codable, Equatable {
        public var id: Int64
        public var key: String
        public var source: String
        /// The entry's directory (real path) and, inside it, what was staged.
        public var path: String
        public var state: State
        public var bytes: Int64
        /// The daemon job filling it.
        public var job: Int64?
        public var error: String?
        public var created: Int64
        public var lastUsed: Int64
        public var pins: [String]
    }

    public struct Outbound: Sendable, Codable, Equatable {
        public var schedulerJob: String
        public var index: Int
        public var source: String
        public var destination: String
        public var optional: Bool
        public var job: Int64?
        public var error: String?

        public init(schedulerJob: String, index: Int, source: String, destination: String, optional: Bool, job: Int64?, error: String?) {
            self.schedulerJob = schedulerJob; self.index = index; self.source = source; self.destination = destination
            self.optional = optional; self.job = job; self.error = error
        }
    }

    public init(db: any SQLDatabase) throws {
        self.db = db
        let pg = db.dialect == .postgres
        let int = pg ? "BIGINT" : "INTEGER"
        try db.write { s in
            if pg { try s.execute("SELECT pg_advisory_xact_lock(7265729) AS locked") }
            try s.execute("""
                CREATE TABLE IF NOT EXISTS stage_entries (
                    \(pg ? "id BIGSERIAL PRIMARY KEY" : "id INTEGER PRIMARY KEY AUTOINCREMENT"),
                    key TEXT NOT NULL UNIQUE,
                    source TEXT NOT NULL,
                    path TEXT NOT NULL DEFAULT '',
                    state TEXT NOT NULL,
                    bytes \(int) NOT NULL DEFAULT 0,
                    job \(int),
                    error TEXT,
                    created \(int) NOT NULL,
                    last_used \(int) NOT NULL);
                CREATE TABLE IF NOT EXISTS stage_pins (
                    entry \(int) NOT NULL,
                    sjob TEXT NOT NULL,
                    created \(int) NOT NULL,
                    PRIMARY KEY (entry, sjob));
                CREATE INDEX IF NOT EXISTS stage_pins_sjob ON stage_pins(sjob);
                CREATE INDEX IF NOT EXISTS stage_entries_state ON stage_entries(state);
                CREATE TABLE IF NOT EXISTS stage_links (
                    sjob TEXT NOT NULL,
                    path TEXT NOT NULL,
                    target TEXT NOT NULL,
                    PRIMARY KEY (sjob, path));
                CREATE TABLE IF NOT EXISTS stage_out (
                    sjob TEXT NOT NULL,
                    idx \(int) NOT NULL,
                    source TEXT NOT NULL,
                    destination TEXT NOT NULL,
                    optional \(int) NOT NULL DEFAULT 0,
                    job \(int),
                    error TEXT,
                    PRIMARY KEY (sjob, idx));
                CREATE TABLE IF NOT EXISTS stage_evictions (
                    \(pg ? "id BIGSERIAL PRIMARY KEY" : "id INTEGER PRIMARY KEY AUTOINCREMENT"),
                    source TEXT NOT NULL,
                    bytes \(int) NOT NULL,
                    last_used \(int) NOT NULL,
                    at \(int) NOT NULL,
                    reason TEXT NOT NULL);
                """)
        }
    }

    /// An entry the cache removed to stay within its quota: what it held, when it was last
    /// used, when it went and why (the operators' Staging view lists the last ones).
    public struct Eviction: Sendable, Codable, Equatable {
        public var source: String
        public var bytes: Int64
        public var lastUsed: Int64
        public var at: Int64
        public var reason: String
    }

    /// Evictions kept: the table is a recent log, not an archive.
    public static let evictionsKept: Int64 = 1_000

    static func entry(_ r: SQLRow, pins: [String]) -> Entry {
        Entry(id: r.int("id"), key: r.text("key"), source: r.text("source"), path: r.text("path"), state: State(rawValue: r.text("state")) ?? .failed,
              bytes: r.int("bytes"), job: r.optionalInt("job"), error: r.optionalText("error"), created: r.int("created"), lastUsed: r.int("last_used"), pins: pins)
    }

    func pins(_ s: any SQLSession, _ entry: Int64) throws -> [String] {
        try s.query("SELECT sjob FROM stage_pins WHERE entry = ? ORDER BY sjob", entry).map { $0.text("sjob") }
    }

    /// Every entry with its pins: two statements, not one per entry (the settler reads this
    /// every second, `stage status` and teardowns too; on PostgreSQL under load each statement
    /// is a round trip of milliseconds: 64 entries made `GET /stage/status` take 0.8 s).
    public func entries() throws -> [Entry] {
        try db.read { s in
            var pins: [Int64: [String]] = [:]
            for r in try s.query("SELECT entry, sjob FROM stage_pins ORDER BY entry, sjob") { pins[r.int("entry"), default: []].append(r.text("sjob")) }
            return try s.query("SELECT * FROM stage_entries ORDER BY id").map { StagingCache.entry($0, pins: pins[$0.int("id")] ?? []) }
        }
    }

    /// The entries `schedulerJob` pins, each with all its pins (a hook's status: not every
    /// entry of the cache, as `entries()` is).
    func entries(_ s: any SQLSession, pinnedBy schedulerJob: String) throws -> [Entry] {
        try s.query("SELECT e.* FROM stage_entries e JOIN stage_pins p ON p.entry = e.id WHERE p.sjob = ? ORDER BY e.id", schedulerJob)
            .map { StagingCache.entry($0, pins: try pins(s, $0.int("id"))) }
    }

    /// The entries in `state` (the settler's: those still staging), each with its pins.
    public func entries(in state: State) throws -> [Entry] {
        try db.read { s in
            try s.query("SELECT * FROM stage_entries WHERE state = ? ORDER BY id", state.rawValue).map { StagingCache.entry($0, pins: try pins(s, $0.int("id"))) }
        }
    }

    public func entry(key: String) throws -> Entry? {
        try db.read { s in try s.one("SELECT * FROM stage_entries WHERE key = ?", key).map { StagingCache.entry($0, pins: try pins(s, $0.int("id"))) } }
    }

    public func entry(id: Int64) throws -> Entry? {
        try db.read { s in try s.one("SELECT * FROM stage_entries WHERE id = ?", id).map { StagingCache.entry($0, pins: try pins(s, $0.int("id"))) } }
    }

    /// The entry for `key`, pinned by `schedulerJob`: an existing one (a failed one, with
    /// `retryFailed`, is reset to staging, `created` true, so the caller starts a new transfer;
    /// without, it is returned failed), or a new one in state staging (`created` true). One
    /// transaction: two jobs asking at once get one entry. `links` are the links recorded for
    /// `schedulerJob` (read in the same transaction: the hook's ask needs them next, and each
    /// transaction of its own was a turn on SQLite's one writer or a PostgreSQL round trip).
    ///
    /// The common ask (the entry exists) is two round trips on PostgreSQL: the entry's row, then
    /// the pin, the pins and the links sent together and answered with the COMMIT (their rows
    /// are read after it). Every hook asks once a second: with a wait per statement an ask was
    /// six round trips, and 1,000 hooks queued behind each other (`bench/stall.sh`).
    ///
    /// `linkIfReady`: a link the caller will make when the entry is ready (its path, and its
    /// target from the entry's directory). It is recorded in the same transaction, so a hook's
    /// ask of a ready entry is one transaction, not two (the record was a transaction of its
    /// own, two more round trips per job on PostgreSQL). `links` are read before that record is
    /// written: they say what the job had recorded before this ask (whether a link at that path
    /// is Ferry's), and `linkRecorded` whether this ask recorded one. The caller undoes the
    /// record with `restoreLink` when it then fails to make the link.
    public func pin(key: String, source: String, schedulerJob: String, retryFailed: Bool = true, now: Int64,
                    linkIfReady: (path: String, target: (String) -> String)? = nil,
                    path: (Int64) -> String) throws -> (entry: Entry, created: Bool, links: [(path: String, target: String)], linkRecorded: Bool) {
        let (entry, created, pinsLater, linksLater, linkRecorded) = try db.write { s in
            var created = false
            var row: SQLRow
            if let r = try s.one("SELECT * FROM stage_entries WHERE key = ?", key) {
                if r.text("state") == State.failed.rawValue && retryFailed {
                    try s.execute("UPDATE stage_entries SET state = 'staging', error = NULL, job = NULL, last_used = ? WHERE id = ?", now, r.int("id"))
                    created = true
                    row = try s.one("SELECT * FROM stage_entries WHERE id = ?", r.int("id"))!
                } else {
                    // The common ask (an entry staging or ready): the row read is the answer.
                    // Its time of use is written at most once a minute (eviction is least
                    // recently used; a minute is fine-grained enough): every hook polling an
                    // entry once a second updated its row, and on PostgreSQL an update holds
                    // the row's lock until the commit, so hooks sharing an entry queued on it.
                    // The condition is in the WHERE too: of two asks that both read an old
                    // time, the second's update changes (and locks) nothing.
                    if r.int("last_used") < now - StagingCache.useResolution {
                        try s.send("UPDATE stage_entries SET last_used = ? WHERE id = ? AND last_used < ?", now, r.int("id"), now - StagingCache.useResolution)
                    }
                    row = r
                }
            } else {
                // Two jobs asking at once (PostgreSQL, several daemons): one insert wins.
                created = try s.execute("INSERT INTO stage_entries (key, source, state, created, last_used) VALUES (?, ?, 'staging', ?, ?) ON CONFLICT (key) DO NOTHING",
                                        key, source, now, now) > 0
                guard let r = try s.one("SELECT * FROM stage_entries WHERE key = ?", key) else { throw CatalogError(.io, "staging entry not stored") }
                row = r
            }
            let id = row.int("id")
            var entry = StagingCache.entry(row, pins: [])
            if entry.lastUsed < now - StagingCache.useResolution { entry.lastUsed = now }
            if entry.path.isEmpty {
                entry.path = path(id)
                try s.send("UPDATE stage_entries SET path = ? WHERE id = ?", entry.path, id)
            }
            try s.send("INSERT INTO stage_pins (entry, sjob, created) VALUES (?, ?, ?) ON CONFLICT (entry, sjob) DO NOTHING", id, schedulerJob, now)
            let pins = try s.queryLater("SELECT sjob FROM stage_pins WHERE entry = ? ORDER BY sjob", id)
            let links = try s.queryLater("SELECT path, target FROM stage_links WHERE sjob = ? ORDER BY path", schedulerJob)
            var recorded = false
            if entry.state == .ready, let l = linkIfReady {
                try s.send(StagingCache.recordLinkSQL, schedulerJob, l.path, l.target(entry.path))
                recorded = true
            }
            return (entry, created, pins, links, recorded)
        }
        var pinned = entry
        pinned.pins = try pinsLater().map { $0.text("sjob") }
        return (pinned, created, try linksLater().map { ($0.text("path"), $0.text("target")) }, linkRecorded)
    }

    /// What `stage status` shows of `schedulerJob`, in one read: the entries it pins (each with
    /// all its pins), its links, its stage-outs.
    public func status(schedulerJob: String) throws -> (entries: [Entry], links: [(path: String, target: String)], outbound: [Outbound]) {
        try db.read { s in (try entries(s, pinnedBy: schedulerJob), try links(s, schedulerJob), try outbound(s, schedulerJob)) }
    }

    /// A teardown's bookkeeping in one transaction: `schedulerJob`'s links and pins are
    /// forgotten, and the entries it pinned that no job pins any more and that are not ready
    /// (a transfer nobody waits for, a failed one) lose their rows. `unlink` is called, inside
    /// the transaction, with each link recorded for the job (true: it was removed); a
    /// transaction that then fails leaves the records, and a teardown run again finds the
    /// links gone. Returns the entries it had pinned, those orphans (the caller cancels their
    /// transfers and removes their directories: a crash in between leaves a directory no entry
    /// owns, which a sweep removes), the bytes of ready entries (whether eviction has anything
    /// to do) and how many links `unlink` removed.
    ///
    /// Two round trips on PostgreSQL: the links', the orphans' and the pins' deletions (each
    /// returning what it deleted) sent together, then the ready bytes with the COMMIT. It was a wait per statement, eight for a hook's teardown.
    public func release(schedulerJob: String, unlink: ((path: String, target: String)) -> Bool = { _ in false })
        throws -> (unpinned: [Int64], orphans: [Entry], readyBytes: Int64, linksRemoved: Int) {
        let (ids, removed, orphansLater, readyLater) = try db.write { s in
            let links = try s.queryLater("DELETE FROM stage_links WHERE sjob = ? RETURNING path, target", schedulerJob)
            // Of the entries it pins, those no other job pins and not ready: one statement
            // whatever their number (a request's directives are many at most, never a list of
            // parameters that could pass the engine's limit).
            let orphans = try s.queryLater("""
                DELETE FROM stage_entries WHERE state <> 'ready'
                    AND id IN (SELECT entry FROM stage_pins WHERE sjob = ?)
                    AND NOT EXISTS (SELECT 1 FROM stage_pins p WHERE p.entry = stage_entries.id AND p.sjob <> ?) RETURNING *
                """, schedulerJob, schedulerJob)
            let ids = try s.query("DELETE FROM stage_pins WHERE sjob = ? RETURNING entry", schedulerJob).map { $0.int("entry") }.sorted()
            let removed = try links().map { ($0.text("path"), $0.text("target")) }.sorted { $0.0 < $1.0 }.filter(unlink).count
            let ready = try s.queryLater("SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS total FROM stage_entries WHERE state = 'ready'")
            return (ids, removed, orphans, ready)
        }
        let orphans = try orphansLater().map { StagingCache.entry($0, pins: []) }.sorted { $0.id < $1.id }
        return (ids, orphans, try readyLater().first?.int("total") ?? 0, removed)
    }

    public func setJob(_ entry: Int64, job: Int64) throws {
        try db.write { s in _ = try s.execute("UPDATE stage_entries SET job = ? WHERE id = ?", job, entry) }
    }

    public func finish(_ entry: Int64, state: State, bytes: Int64 = 0, error: String? = nil, now: Int64) throws {
        try db.write { s in
            _ = try s.execute("UPDATE stage_entries SET state = ?, bytes = ?, error = ?, last_used = ? WHERE id = ?", state.rawValue, bytes, error, now, entry)
        }
    }

    /// Removes pins of jobs not in `keep`, and pins older than `before` (Unix seconds).
    public func expirePins(keep: Set<String>?, before: Int64) throws -> [String] {
        try db.write { s in
            var gone: [String] = []
            for r in try s.query("SELECT DISTINCT sjob, created FROM stage_pins") {
                let j = r.text("sjob")
                if (keep.map { !$0.contains(j) } ?? false) || r.int("created") < before { gone.append(j) }
            }
            for j in Set(gone) { try s.execute("DELETE FROM stage_pins WHERE sjob = ?", j) }
            return Array(Set(gone)).sorted()
        }
    }

    /// Deletes an entry's row (and pins): the caller removes its directory.
    public func remove(_ entry: Int64) throws {
        try db.write { s in
            try s.execute("DELETE FROM stage_pins WHERE entry = ?", entry)
            try s.execute("DELETE FROM stage_entries WHERE id = ?", entry)
        }
    }

    /// Deletes an evicted entry's row and records the eviction, in one transaction, keeping the
    /// last `evictionsKept`; the caller removes its directory.
    public func evicted(_ entry: Entry, reason: String, now: Int64) throws {
        try db.write { s in
            try s.execute("DELETE FROM stage_pins WHERE entry = ?", entry.id)
            try s.execute("DELETE FROM stage_entries WHERE id = ?", entry.id)
            try s.send("INSERT INTO stage_evictions (source, bytes, last_used, at, reason) VALUES (?, ?, ?, ?, ?)",
                       entry.source, entry.bytes, entry.lastUsed, now, reason)
            try s.execute("DELETE FROM stage_evictions WHERE id <= (SELECT MAX(id) FROM stage_evictions) - ?", StagingCache.evictionsKept)
        }
    }

    /// Totals for an overview: ready bytes, entries, pinned entries, evictions since `since`.
    public func use(evictedSince since: Int64) throws -> (readyBytes: Int64, entries: Int64, pinned: Int64, evicted: Int64) {
        try db.read { s in
            let e = try s.one("SELECT CAST(COALESCE(SUM(CASE WHEN state = 'ready' THEN bytes ELSE 0 END), 0) AS BIGINT) AS ready, COUNT(*) AS n FROM stage_entries")
            let p = try s.one("SELECT COUNT(DISTINCT entry) AS n FROM stage_pins")?.int("n") ?? 0
            let v = try s.one("SELECT COUNT(*) AS n FROM stage_evictions WHERE at >= ?", since)?.int("n") ?? 0
            return (e?.int("ready") ?? 0, e?.int("n") ?? 0, p, v)
        }
    }

    /// The last `limit` evictions, newest first.
    public func evictions(limit: Int = 100) throws -> [Eviction] {
        try db.read { s in
            try s.query("SELECT * FROM stage_evictions ORDER BY id DESC LIMIT ?", limit).map {
                Eviction(source: $0.text("source"), bytes: $0.int("bytes"), lastUsed: $0.int("last_used"), at: $0.int("at"), reason: $0.text("reason"))
            }
        }
    }

    /// Ready, unpinned entries to evict, least recently used first, until the ready bytes fit
    /// in `quota`. Pinned entries are never chosen (the cache may then stay over quota).
    public func evictionCandidates(quota: Int64) throws -> [Entry] { try evictionPlan(quota: quota).candidates }

    /// `evictionCandidates`, with the ready bytes they were chosen against (an eviction's
    /// recorded reason says them).
    public func evictionPlan(quota: Int64) throws -> (ready: Int64, candidates: [Entry]) {
        // Under the quota (the common case, asked after every teardown): one sum, no entries.
        let ready = try db.read { s in try s.one("SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS total FROM stage_entries WHERE state = 'ready'")?.int("total") ?? 0 }
        if ready <= quota { return (ready, []) }
        let all = try entries().filter { $0.state == .ready }
        var total = all.reduce(0) { $0 + $1.bytes }
        let start = total
        var out: [Entry] = []
        for e in all.filter({ $0.pins.isEmpty }).sorted(by: { ($0.lastUsed, $0.id) < ($1.lastUsed, $1.id) }) where total > quota {
            out.append(e)
            total -= e.bytes
        }
        return (start, out)
    }

    // MARK: links and stage-out

    static let recordLinkSQL = "INSERT INTO stage_links (sjob, path, target) VALUES (?, ?, ?) ON CONFLICT (sjob, path) DO UPDATE SET target = excluded.target"

    public func recordLink(schedulerJob: String, path: String, target: String) throws {
        try db.write { s in try s.send(StagingCache.recordLinkSQL, schedulerJob, path, target) }
    }

    /// Puts `schedulerJob`'s record of the link at `path` back as it was before a `pin` recorded
    /// one there (`before`: its target then, nil when there was none): the link could not be
    /// made, and a record of a link that is not there would later let the job replace whatever
    /// sits at that path as if Ferry had made it.
    public func restoreLink(schedulerJob: String, path: String, before: String?) throws {
        try db.write { s in
            if let before {
                try s.send(StagingCache.recordLinkSQL, schedulerJob, path, before)
            } else {
                try s.send("DELETE FROM stage_links WHERE sjob = ? AND path = ?", schedulerJob, path)
            }
        }
    }

    public func links(schedulerJob: String) throws -> [(path: String, target: String)] {
        try db.read { s in try links(s, schedulerJob) }
    }

    func links(_ s: any SQLSession, _ schedulerJob: String) throws -> [(path: String, target: String)] {
        try s.query("SELECT path, target FROM stage_links WHERE sjob = ? ORDER BY path", schedulerJob).map { ($0.text("path"), $0.text("target")) }
    }

    public func forgetLinks(schedulerJob: String) throws {
        try db.write { s in _ = try s.execute("DELETE FROM stage_links WHERE sjob = ?", schedulerJob) }
    }

    public func outbound(schedulerJob: String) throws -> [Outbound] {
        try db.read { s in try outbound(s, schedulerJob) }
    }

    func outbound(_ s: any SQLSession, _ schedulerJob: String) throws -> [Outbound] {
        try s.query("SELECT * FROM stage_out WHERE sjob = ? ORDER BY idx", schedulerJob).map {
            Outbound(schedulerJob: $0.text("sjob"), index: Int($0.int("idx")), source: $0.text("source"), destination: $0.text("destination"),
                     optional: $0.int("optional") != 0, job: $0.optionalInt("job"), error: $0.optionalText("error"))
        }
    }

    public func recordOutbound(_ o: Outbound) throws {
        try db.write { s in
            _ = try s.execute("""
                INSERT INTO stage_out (sjob, idx, source, destination, optional, job, error) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (sjob, idx) DO UPDATE SET source = excluded.source, destination = excluded.destination,
                    optional = excluded.optional, job = excluded.job, error = excluded.error
                """, o.schedulerJob, Int64(o.index), o.source, o.destination, o.optional, o.job, o.error)
        }
    }
}
