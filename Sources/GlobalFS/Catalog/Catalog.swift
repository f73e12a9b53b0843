import Foundation
import Storage

/// A center's catalog: its datasets, their files, where replicas are, and a feed of changes
/// for the centers that follow it. Embedded SQLite or a shared PostgreSQL (`openDatabase`).
///
/// Files are keyed (dataset, dir, name): SQLite stores them in that key's order (WITHOUT
/// ROWID) and PostgreSQL compares those columns byte-wise (COLLATE "C"), so both list a
/// directory in the same order, page by a seek on the key, and find a subtree as one key
/// range (`dir` from "P/" up to "P0", '0' being the byte after '/').
///
/// Every query takes a `Viewer` and goes through `visible(_:to:isOperator:)`: a dataset a
/// user may not read does not exist for that user (not listed, not found, no "forbidden").
public final class Catalog: @unchecked Sendable {
    public let db: any SQLDatabase
    let pg: Bool
    /// `recentCentersList`'s memory (one key).
    let recentCenters = Recent<Int, [Center]>(capacity: 1)
    /// `resolve`'s memory: a center's datasets by their first name component (`family`),
    /// before the viewer's visibility is applied; nil: too many to keep.
    let recentDatasets = Recent<[String], [Dataset]?>(capacity: 4096)
    /// The most datasets `family` keeps for one first component (a variable for the tests).
    var familyMax = 1000
    /// How many rows an index range may name for `find` to take its candidates from it rather
    /// than read the dataset in key order: sorting this many costs milliseconds (a variable
    /// for the tests).
    var indexedCandidates: Int64 = 20_000
    let searchLock = NSLock()
    var searched: [String: Int] = [:]
    /// Tombstones kept per dataset at least (`EntryFeed.swift`; a variable for the tests).
    public var tombstonesKept = 100_000

    /// The indexes `find` may take its candidates from (`files_name` always; `files_size`
    /// and `files_mtime` when the operator asked for them), as found when the catalog opened.
    private(set) var searchIndexes: Set<String> = []

    public convenience init(database: String) throws {
        try self.init(db: try openDatabase(database))
    }

    /// `indexes`: the optional search indexes this catalog must have (`[daemon]
    /// catalog_indexes`); those not named are dropped. nil leaves them as they are (a tool
    /// that opens the catalog must not undo the operator's choice).
    public init(db: any SQLDatabase, indexes: Set<SearchIndex>? = nil) throws {
        self.db = db
        pg = db.dialect == .postgres
        let int = pg ? "BIGINT" : "INTEGER"
        let c = pg ? " COLLATE \"C\"" : ""
        try db.write { s in
            if pg { try s.execute("SELECT pg_advisory_xact_lock(7265727) AS locked") }
            try s.execute("""
                CREATE TABLE IF NOT EXISTS centers (
                    name TEXT PRIMARY KEY,
                    api TEXT NOT NULL DEFAULT '',
                    last_seq \(int) NOT NULL DEFAULT 0,
                    last_sync \(int) NOT NULL DEFAULT 0,
                    reachable \(int) NOT NULL DEFAULT 1);
                CREATE TABLE IF NOT EXISTS datasets (
                    \(pg ? "id BIGSERIAL PRIMARY KEY" : "id INTEGER PRIMARY KEY AUTOINCREMENT"),
                    center TEXT\(c) NOT NULL,
                    name TEXT\(c) NOT NULL,
                    version TEXT\(c) NOT NULL DEFAULT '',
                    owner TEXT NOT NULL,
                    description TEXT NOT NULL DEFAULT '',
                    license TEXT NOT NULL DEFAULT '',
                    readers TEXT NOT NULL DEFAULT '',
                    root TEXT,
                    remote_id \(int),
                    file_count \(int) NOT NULL DEFAULT 0,
                    bytes \(int) NOT NULL DEFAULT 0,
                    created \(int) NOT NULL,
                    updated \(int) NOT NULL,
                    UNIQUE (center, name, version));
                CREATE TABLE IF NOT EXISTS files (
                    dataset \(int) NOT NULL,
                    dir TEXT\(c) NOT NULL,
                    name TEXT\(c) NOT NULL,
                    size \(int) NOT NULL,
                    mtime_ns \(int) NOT NULL,
                    mode \(int) NOT NULL,
                    digest TEXT,
                    chunk_size \(int) NOT NULL DEFAULT 0,
                    kind TEXT NOT NULL,
                    target TEXT,
                    PRIMARY KEY (dataset, dir, name))\(pg ? "" : " WITHOUT ROWID");
                CREATE TABLE IF NOT EXISTS replicas (
                    dataset \(int) NOT NULL,
                    center TEXT NOT NULL,
                    state TEXT NOT NULL,
                    path TEXT NOT NULL DEFAULT '',
                    files \(int) NOT NULL DEFAULT 0,
                    bytes \(int) NOT NULL DEFAULT 0,
                    verified_at \(int),
                    job \(int),
                    PRIMARY KEY (dataset, center));
                CREATE TABLE IF NOT EXISTS changes (
                    \(pg ? "seq BIGSERIAL PRIMARY KEY" : "seq INTEGER PRIMARY KEY AUTOINCREMENT"),
                    center TEXT NOT NULL,
                    dataset \(int) NOT NULL,
                    kind TEXT NOT NULL,
                    at \(int) NOT NULL);
                """)
        }
        // A mirror's first pass (issue 6's follower, `Mirror.swift`): `syncing` is 1 from the
        // dataset's row until its last page of entries, and readers do not see it meanwhile (a
        // listing of a half-mirrored dataset was empty or partial, and said nothing). Added to
        // catalogs made before it, under the same lock on PostgreSQL.
        //
        // The entries' change sequence (issue 21, `EntryFeed.swift`): `files.seq` (indexed with
        // the dataset), `datasets.entry_seq` and `entry_floor`, and the `removed_files`
        // tombstones. Rows of a catalog made before them have seq 0: a follower reads such a
        // dataset whole once, as it did every time before.
        try db.write { s in
            if pg { try s.execute("SELECT pg_advisory_xact_lock(7265727) AS locked") }
            for (table, column) in [("datasets", "syncing"), ("datasets", "entry_seq"), ("datasets", "entry_floor"), ("files", "seq")] {
                if pg {
                    try s.execute("ALTER TABLE \(table) ADD COLUMN IF NOT EXISTS \(column) BIGINT NOT NULL DEFAULT 0")
                } else if try s.one("SELECT COUNT(*) AS n FROM pragma_table_info('\(table)') WHERE name = ?", column)?.int("n") ?? 0 == 0 {
                    try s.execute("ALTER TABLE \(table) ADD COLUMN \(column) INTEGER NOT NULL DEFAULT 0")
                }
            }
            try s.execute("""
                CREATE INDEX IF NOT EXISTS files_seq ON files (dataset, seq) WHERE seq > 0;
                CREATE INDEX IF NOT EXISTS files_name ON files (dataset, name);
                CREATE TABLE IF NOT EXISTS removed_files (
                    dataset \(int) NOT NULL,
                    seq \(int) NOT NULL,
                    dir TEXT\(c) NOT NULL,
                    name TEXT\(c) NOT NULL,
                    PRIMARY KEY (dataset, seq, dir, name))\(pg ? "" : " WITHOUT ROWID");
                """)
        }
        // Search (issue 21): names always have an index (an exact name or a literal start
        // is a lookup, not a scan; it costs registrations little, as names mostly arrive in
        // the order of their directory). Size and date indexes cost every registration a
        // random insert each (bench/RESULTS.md: on SQLite several times slower), so they
        // are the operator's choice.
        if let indexes {
            try db.write { s in
                if pg { try s.execute("SELECT pg_advisory_xact_lock(7265727) AS locked") }
                for i in SearchIndex.allCases {
                    try s.execute(indexes.contains(i) ? "CREATE INDEX IF NOT EXISTS \(i.indexName) ON files (dataset, \(i.column))"
                                                      : "DROP INDEX IF EXISTS \(i.indexName)")
                }
            }
        }
        let found = try db.read { s in
            let names = pg ? try s.query("SELECT indexname AS name FROM pg_indexes WHERE tablename = 'files' AND schemaname = current_schema()")
                           : try s.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'files'")
            return Set(names.map { $0.text("name") })
        }
        searchIndexes = found
        // A bigger page cache than SQLite's 2 MB default keeps a million-row registration's
        // B-tree pages in memory (per connection; SQLite only).
        if !pg { try db.write { s in _ = try s.execute("PRAGMA cache_size = -65536") } }
    }

    // MARK: visibility

    /// Whether `user` may see `d`: operators always, everyone when readers has "*", else its
    /// owner and the users (or "center:NAME") it names. Names compare byte for byte: two
    /// spellings of one name in different Unicode normal forms are different users.
    ///
    /// A user of another center asks as `NAME@CENTER` (a token of a peer's issuer: SECURITY.md
    /// §2); a dataset's owner and readers are names of its own center, so `NAME@CENTER` is
    /// `NAME` for the datasets of CENTER, and no one's for any other center's.
    ///
    /// `center`: where the viewer asks (nil: not known, every center's names match a bare name,
    /// as before); a bare name then matches the names of that center's datasets only, so a
    /// local "alice" is not another center's "alice". `center:NAME` (a peer daemon) matches
    /// wherever it is named.
    public static func visible(_ d: Dataset, to user: String, isOperator: Bool, center: String? = nil) -> Bool {
        if isOperator || d.readers.contains("*") { return true }
        if user.isEmpty { return false }
        let bareMatches = center == nil || sameBytes(d.center, center!) || user.hasPrefix("center:")
        if bareMatches && (sameBytes(d.owner, user) || d.readers.contains(where: { sameBytes($0, user) })) { return true }
        guard let at = user.utf8.lastIndex(of: UInt8(ascii: "@")) else { return false }
        let name = String(user[..<at]), center = String(user[user.utf8.index(after: at)...])
        guard !name.isEmpty, sameBytes(d.center, center) else { return false }
        return sameBytes(d.owner, name) || d.readers.contains { sameBytes($0, name) }
    }

    static func visible(_ d: Dataset, _ v: Viewer) -> Bool { visible(d, to: v.user, isOperator: v.isOperator, center: v.center) }

    // MARK: datasets

    static let datasetColumns = "id, center, name, version, owner, description, license, readers, root, remote_id, file_count, bytes, created, updated"

    static func dataset(_ r: SQLRow) -> Dataset {
        Dataset(id: r.int("id"), center: r.text("center"), name: r.text("name"), version: r.text("version"),
                owner: r.text("owner"), description: r.text("description"), license: r.text("license"),
                readers: r.text("readers").utf8.split(separator: UInt8(ascii: ",")).map { String(Substring($0)) }, root: r.optionalText("root"), remoteID: r.optionalInt("remote_id"),
                fileCount: r.int("file_count"), bytes: r.int("bytes"), created: r.int("created"), updated: r.int("updated"))
    }

    /// The datasets `viewer` may see, by center, name and version.
    public func datasets(visibleTo viewer: Viewer, center: String? = nil) throws -> [Dataset] {
        try db.read { s in
            let rows = center == nil
                ? try s.query("SELECT \(Catalog.datasetColumns) FROM datasets WHERE syncing = 0 ORDER BY center, name, version")
                : try s.query("SELECT \(Catalog.datasetColumns) FROM datasets WHERE center = ? AND syncing = 0 ORDER BY name, version", center!)
            return rows.map(Catalog.dataset).filter { Catalog.visible($0, viewer) }
        }
    }

    /// The catalog's size by center (this one's datasets and each peer's mirror): datasets,
    /// their files and bytes as registered. From the datasets' rows only (each carries its
    /// totals), so it costs the same at 100 M entries as at 100. For `/metrics`.
    public func sizes() throws -> [(center: String, datasets: Int64, files: Int64, bytes: Int64)] {
        try db.read { s in
            try s.query("""
                SELECT center, COUNT(*) AS n, CAST(COALESCE(SUM(file_count), 0) AS BIGINT) AS f, CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS b
                FROM datasets WHERE syncing = 0 GROUP BY center ORDER BY center
                """).map { (center: $0.text("center"), datasets: $0.int("n"), files: $0.int("f"), bytes: $0.int("b")) }
        }
    }

    /// One dataset by id; `notFound` when it does not exist or `viewer` may not see it.
    public func dataset(_ id: Int64, as viewer: Viewer) throws -> Dataset {
        try db.read { s in try dataset(s, id, viewer) }
    }

    func dataset(_ s: any SQLSession, _ id: Int64, _ viewer: Viewer) throws -> Dataset {
        guard let r = try s.one("SELECT \(Catalog.datasetColumns) FROM datasets WHERE id = ? AND syncing = 0", id),
              case let d = Catalog.dataset(r), Catalog.visible(d, viewer) else {
            throw CatalogError(.notFound, "no dataset \(id)")
        }
        return d
    }

    /// A dataset by name. Without a version: the unversioned one if there is one, else the
    /// most recently registered version.
    public func dataset(center: String, name: String, version: String? = nil, as viewer: Viewer) throws -> Dataset? {
        try db.read { s in
            try s.query("SELECT \(Catalog.datasetColumns) FROM datasets WHERE center = ? AND name = ? AND syncing = 0\(version == nil ? "" : " AND version = ?")",
                        (version == nil ? [center, name] : [center, name, version!]) as [any SQLArgument])
                .map(Catalog.dataset).filter { Catalog.visible($0, viewer) }
                .max { a, b in Catalog.preference(a) < Catalog.preference(b) }
        }
    }

    private static func preference(_ d: Dataset) -> (Int, Int64, Int64) { (d.version.isEmpty ? 1 : 0, d.created, d.id) }

    /// Which dataset a `gfs://` path names, and the path within it: the longest leading run
    /// of components that is a dataset name at that center that `viewer` may see (so a
    /// private "a/b" hides behind a public "a" rather than revealing itself). The last
    /// component of the dataset part may carry @VERSION.
    public func resolve(_ path: GFSPath, as viewer: Viewer) throws -> (dataset: Dataset, path: String)? {
        let comps = path.components
        let n = min(comps.count, GFSPath.datasetComponentsMax)
        guard n > 0 else { return nil }
        var candidates: [(k: Int, name: String, version: String?)] = []
        for k in 1...n {
            var last = comps[k - 1]
            var version: String?
            if let at = last.utf8.firstIndex(of: UInt8(ascii: "@")) {
                version = String(Substring(last.utf8[last.utf8.index(after: at)...]))
                last = String(Substring(last.utf8[..<at]))
            }
            candidates.append((k, (comps[0..<(k - 1)] + [last]).joined(separator: "/"), version))
        }
        let names = Array(Set(candidates.map(\.name)))
        let rows: [Dataset]
        if sameBytes(comps[0], candidates[0].name), let family = try family(center: path.center, first: comps[0]) {
            rows = family.filter { d in names.contains { sameBytes($0, d.name) } }
        } else {
            rows = try db.read { s in
                try s.query("SELECT \(Catalog.datasetColumns) FROM datasets WHERE center = ? AND syncing = 0 AND name IN (\(names.map { _ in "?" }.joined(separator: ",")))",
                            ([path.center] + names) as [any SQLArgument]).map(Catalog.dataset)
            }
        }
        let found = rows.filter { Catalog.visible($0, viewer) }
        for c in candidates.reversed() {
            let matching = found.filter { d in sameBytes(d.name, c.name) && (c.version.map { sameBytes(d.version, $0) } ?? true) }
            if let d = matching.max(by: { Catalog.preference($0) < Catalog.preference($1) }) {
                return (d, comps[c.k...].joined(separator: "/"))
            }
        }
        return nil
    }

    /// The datasets of `center` named `first` or `first/...`: every dataset a path whose first
    /// component is `first` can name, kept for a second (`recentDatasets`): each API request
    /// resolves its path, and the paths of one dataset share their first component (a key per
    /// path would never be asked twice: a file's name is in it). nil when there are more than
    /// `familyMax` (a top name with thousands of datasets below it): those paths are resolved
    /// by their own names, one query each, as before.
    private func family(center: String, first: String) throws -> [Dataset]? {
        let key = [center, first]
        if let kept = recentDatasets.fresh(key) { return kept }
        let stamp = recentDatasets.stamp()
        let rows = try db.read { s in
            try s.query("SELECT \(Catalog.datasetColumns) FROM datasets WHERE center = ? AND (name = ? OR (name >= ? AND name < ?)) AND syncing = 0 LIMIT ?",
                        center, first, first + "/", first + "0", familyMax + 1).map(Catalog.dataset)
        }
        let family: [Dataset]? = rows.count > familyMax ? nil : rows
        recentDatasets.keep(key, family, stamp: stamp)
        return family
    }

    /// Changes who may read a dataset and how it is described (nil: unchanged). `by`: the user
    /// asking (nil: the center itself); only the owner or an operator may, and only a dataset
    /// registered here (a mirror changes at its own center).
    public func updateDataset(_ id: Int64, readers: [String]? = nil, description: String? = nil, license: String? = nil,
                              by requester: Viewer? = nil, now: Int64 = Catalog.now()) throws {
        let readersText = try readers.map(Catalog.readersText)
        defer { recentDatasets.forget() }
        try db.write { s in
            guard let d = try s.one("SELECT center FROM datasets WHERE id = ?", id) else { throw CatalogError(.notFound, "no dataset \(id)") }
            try checkOwner(s, id, requester)
            try s.execute("""
                UPDATE datasets SET readers = COALESCE(?, readers), description = COALESCE(?, description),
                    license = COALESCE(?, license), updated = ? WHERE id = ?
                """, readersText, description, license, now, id)
            try appendChange(s, center: d.text("center"), dataset: id, kind: .datasetUpdated, at: now)
        }
    }

    /// Only a dataset's owner (or an operator) changes it, and only at its own center: a
    /// dataset the requester may not see is missing (`notFound`), one of another owner or a
    /// mirror of a peer's is `forbidden`. nil: the center itself (no check).
    func checkOwner(_ s: any SQLSession, _ id: Int64, _ requester: Viewer?) throws {
        guard let v = requester else { return }
        let d = try dataset(s, id, v)
        guard d.remoteID == nil else { throw CatalogError(.forbidden, "dataset '\(d.qualifiedName)' is a mirror of center \(d.center)'s catalog: change it there") }
        guard v.isOperator || sameBytes(d.owner, v.user) else {
            throw CatalogError(.forbidden, "dataset '\(d.qualifiedName)' at center \(d.center) belongs to another user: only its owner (or an operator) may change or remove it")
        }
    }

    /// Readers as stored: one comma-separated text, so each must be non-empty and comma-free.
    static func readersText(_ readers: [String]) throws -> String {
        if let bad = readers.first(where: { $0.isEmpty || $0.utf8.contains(UInt8(ascii: ",")) || $0.utf8.contains(0) }) {
            throw CatalogError(.invalid, "a reader is a user name, center:NAME or *, not '\(bad)'")
        }
        return readers.joined(separator: ",")
    }

    /// Removes a dataset, its files and replicas. `by`: as for `updateDataset`.
    public func deleteDataset(_ id: Int64, by requester: Viewer? = nil, now: Int64 = Catalog.now()) throws {
        defer { recentDatasets.forget() }
        try db.write { s in
            guard let d = try s.one("SELECT center FROM datasets WHERE id = ?", id) else {
                throw CatalogError(.notFound, "no dataset \(id)")
            }
            try checkOwner(s, id, requester)
            try s.execute("DELETE FROM files WHERE dataset = ?", id)
            try s.execute("DELETE FROM removed_files WHERE dataset = ?", id)
            try s.execute("DELETE FROM replicas WHERE dataset = ?", id)
            try s.execute("DELETE FROM datasets WHERE id = ?", id)
            try appendChange(s, center: d.text("center"), dataset: id, kind: .datasetDeleted, at: now)
        }
    }

    // MARK: files

    static let entryColumns = "dataset, dir, name, kind, size, mtime_ns, mode, digest, chunk_size, target"

    /// One page of a directory, by name (byte order), after `after`. An empty page at the
    /// start of a listing means the path is no directory: a file's page is the file itself,
    /// a missing path is `notFound`.
    public func list(dataset: Int64, dir: String = "", after: String? = nil, limit: Int = 1000, as viewer: Viewer) throws -> [Entry] {
        let dir = try CatalogPath.normalize(dir)
        return try db.read { s in
            _ = try self.dataset(s, dataset, viewer)
            let page = try FastSQL.entries(s, "SELECT \(Catalog.entryColumns) FROM files WHERE dataset = ? AND dir = ? AND name > ? ORDER BY name LIMIT ?",
                                           [.int(dataset), .text(dir), .text(after ?? ""), .int(Int64(max(1, min(limit, 100_000))))])
            if page.isEmpty && after == nil && !dir.isEmpty {
                guard let e = try entry(s, dataset, dir) else { throw CatalogError(.notFound, "no '\(dir)' in dataset \(dataset)") }
                return e.kind == .directory ? [] : [e]
            }
            return page
        }
    }

    /// One entry by its path within the dataset. The dataset's top ("") has no row of its
    /// own; it is described from the dataset.
    public func stat(dataset: Int64, path: String, as viewer: Viewer) throws -> Entry? {
        let path = try CatalogPath.normalize(path)
        return try db.read { s in
            let d = try self.dataset(s, dataset, viewer)
            if path.isEmpty {
                return Entry(dataset: d.id, dir: "", name: "", kind: .directory, size: 0, mtimeNs: d.updated * 1_000_000_000, mode: 0o755)
            }
            return try entry(s, dataset, path)
        }
    }

    /// What a listing of `path` shows, in one read, for a dataset `resolve` found for the
    /// viewer (so not looked up and checked again): the page of the directory's entries after
    /// `after` (by name), or, when `path` names a file or a link, that entry alone (`isFile`).
    /// The entry of `path` itself is read only when the page is empty (a directory with
    /// entries cannot be a file). A path that does not exist: not found (with no `after`; a
    /// cursor past the last entry of a directory removed since gives an empty page).
    public func listing(of d: Dataset, path: String, after: String?, limit: Int) throws -> (entries: [Entry], isFile: Bool) {
        let dir = try CatalogPath.normalize(path)
        return try db.read { s in
            let page = try FastSQL.entries(s, "SELECT \(Catalog.entryColumns) FROM files WHERE dataset = ? AND dir = ? AND name > ? ORDER BY name LIMIT ?",
                                           [.int(d.id), .text(dir), .text(after ?? ""), .int(Int64(max(1, min(limit, 100_000))))])
            if !page.isEmpty || dir.isEmpty { return (page, false) }
            guard let e = try entry(s, d.id, dir) else {
                if after == nil { throw CatalogError(.notFound, "no '\(dir)' in dataset \(d.id)") }
                return ([], false)
            }
            return e.kind == .directory ? ([], false) : ([e], true)
        }
    }

    /// One entry of a dataset `resolve` found for the viewer, and the dataset's replicas, in
    /// one read. The dataset's top ("") is described from the dataset (no row of its own).
    public func details(of d: Dataset, path: String) throws -> (entry: Entry?, replicas: [Replica]) {
        let path = try CatalogPath.normalize(path)
        return try db.read { s in
            // Both statements in one round trip on PostgreSQL.
            let replicas = try s.queryLater("SELECT * FROM replicas WHERE dataset = ? ORDER BY center", [d.id])
            if path.isEmpty {
                return (Entry(dataset: d.id, dir: "", name: "", kind: .directory, size: 0, mtimeNs: d.updated * 1_000_000_000, mode: 0o755),
                        try replicas().map(Catalog.replica))
            }
            let e = try entry(s, d.id, path)
            return (e, try replicas().map(Catalog.replica))
        }
    }

    func entry(_ s: any SQLSession, _ dataset: Int64, _ path: String) throws -> Entry? {
        let (dir, name) = CatalogPath.split(path)
        return try FastSQL.entries(s, "SELECT \(Catalog.entryColumns) FROM files WHERE dataset = ? AND dir = ? AND name = ?",
                                   [.int(dataset), .text(dir), .text(name)], single: true).first
    }

    /// Entries below `under` (in one dataset, or in every dataset `viewer` may see) whose name
    /// matches a shell glob (`*`, `?`, `[...]`, `[!...]`, `\` escapes; case-sensitive), by
    /// size (bytes, inclusive), modified after `newerThan` (Unix nanoseconds), of one kind.
    /// Ordered by (dataset, dir, name); pass the last result's key as `after` to continue.
    ///
    /// How each dataset is searched (issue 21, "search that scales"): a glob that starts with
    /// literal text (`H17P020.00012*`, an exact name), a size bound or a date bound can each
    /// be served by an index (`files_name`, `files_size`, `files_mtime`, each led by the
    /// dataset). Each such index is probed first for at most `indexedCandidates` rows; the
    /// narrowest one under that bound gives the candidates, which are then filtered and
    /// sorted into key order (a few thousand rows, milliseconds at any catalog size). When
    /// none is that narrow (`*.smi.gz`, a size bound that a fifth of the files meet), the
    /// rows are read in key order, filtered as they come, up to the page's limit: many
    /// matches fill a page early. What no index serves (a glob with no literal start that few
    /// names match) is a scan of the dataset's rows, linear in them: `find` reads on to the
    /// end or the limit; `findPage` reads at most `scanBudget` rows per dataset and says
    /// where it stopped.
    public func find(dataset: Int64? = nil, under: String = "", nameGlob: String? = nil, minSize: Int64? = nil, maxSize: Int64? = nil,
                     newerThan: Int64? = nil, kind: EntryKind? = nil, after: EntryKey? = nil, limit: Int = 1000,
                     as viewer: Viewer) throws -> [Entry] {
        let limit = max(1, min(limit, 100_000))
        var out: [Entry] = []
        var cursor = after
        while out.count < limit {
            let page = try findPage(dataset: dataset, under: under, nameGlob: nameGlob, minSize: minSize, maxSize: maxSize, newerThan: newerThan,
                                    kind: kind, after: cursor, limit: limit - out.count, as: viewer)
            out += page.entries
            guard let resume = page.resume else { break }
            cursor = resume
        }
        return out
    }

    /// A page of `find` whose work is bounded on SQLite: a dataset read in key order is read
    /// for at most `scanBudget` rows (about 0.3 s), and when that stops it before the page is
    /// full, `resume` is the last key read: the next page starts after it. A search of 100 M
    /// entries that few match is then a series of short requests that each hold a reader for
    /// a fraction of a second (a forwarded search, a CLI's page), not one of ten seconds.
    /// PostgreSQL reads to the page's end in one statement (parallel workers; see below).
    /// `resume` is nil when the search reached its end or `limit`.
    public func findPage(dataset: Int64? = nil, under: String = "", nameGlob: String? = nil, minSize: Int64? = nil, maxSize: Int64? = nil,
                         newerThan: Int64? = nil, kind: EntryKind? = nil, after: EntryKey? = nil, limit: Int = 1000,
                         as viewer: Viewer) throws -> FindPage {
        let under = try CatalogPath.normalize(under)
        // The subtree as a key range.
        var keyRange = ""
        var keyArgs: [SQLValue] = []
        if !under.isEmpty {
            keyRange += " AND (dir = ? OR (dir >= ? AND dir < ?))"
            keyArgs += [.text(under), .text(under + "/"), .text(under + "0")]
        }
        var filter = ""
        var args: [SQLValue] = []
        // The ranges an index can serve, each as (index, its condition, arguments).
        var ranges: [(index: String, sql: String, args: [SQLValue])] = []
        if let g = nameGlob, g != "*" {
            let (op, pattern) = pg ? Glob.postgres(g) : ("GLOB", Glob.sqlite(g))
            filter += " AND name \(op) ?"
            args.append(.text(pattern))
            let start = Glob.literalStart(g)
            if !start.isEmpty {
                if let end = Glob.successor(start) {
                    ranges.append(("files_name", "name >= ? AND name < ?", [.text(start), .text(end)]))
                } else {
                    ranges.append(("files_name", "name >= ?", [.text(start)]))
                }
            }
        }
        if let v = minSize { filter += " AND size >= ?"; args.append(.int(v)) }
        if let v = maxSize { filter += " AND size <= ?"; args.append(.int(v)) }
        if minSize != nil || maxSize != nil {
            ranges.append(("files_size", "size >= ? AND size <= ?", [.int(minSize ?? Int64.min), .int(maxSize ?? Int64.max)]))
        }
        if let v = newerThan {
            filter += " AND mtime_ns > ?"; args.append(.int(v))
            ranges.append(("files_mtime", "mtime_ns > ?", [.int(v)]))
        }
        if let k = kind { filter += " AND kind = ?"; args.append(.text(k.rawValue)) }
        let limit = max(1, min(limit, 100_000))
        return try db.read { s in
            let ids: [Int64]
            if let dataset {
                ids = [try self.dataset(s, dataset, viewer).id]
            } else {
                ids = try s.query("SELECT \(Catalog.datasetColumns) FROM datasets WHERE syncing = 0 ORDER BY id").map(Catalog.dataset)
                    .filter { Catalog.visible($0, viewer) }.map(\.id)
            }
            var out: [Entry] = []
            for id in ids where out.count < limit && id >= (after?.dataset ?? 0) {
                // The narrowest index range under the bound, if any.
                var best: (range: (index: String, sql: String, args: [SQLValue]), rows: Int64)?
                for r in ranges where self.searchIndexes.contains(r.index) {
                    let probe: [SQLValue] = [.int(id)] + r.args + [.int(self.indexedCandidates + 1)]
                    let n = try s.query("SELECT COUNT(*) AS n FROM (SELECT 1 FROM files\(pg ? "" : " INDEXED BY \(r.index)") WHERE dataset = ? AND \(r.sql) LIMIT ?) AS c",
                                        probe).first?.int("n") ?? 0
                    if n <= self.indexedCandidates, n < (best?.rows ?? .max) { best = (r, n) }
                }
                let how = best.map { String($0.range.index.dropFirst("files_".count)) } ?? "scan"
                self.searchLock.withLock { self.searched[how, default: 0] += 1 }
                var afterCond = ""
                var afterArgs: [SQLValue] = []
                if let after, after.dataset == id {
                    afterCond = " AND (dir > ? OR (dir = ? AND name > ?))"
                    afterArgs = [.text(after.dir), .text(after.dir), .text(after.name)]
                }
                if let best {
                    // Candidates by the index (materialized: the planner must not trade them
                    // for a key-order scan), then filtered and sorted.
                    let sql = "WITH c AS MATERIALIZED (SELECT * FROM files\(pg ? "" : " INDEXED BY \(best.range.index)") WHERE dataset = ? AND \(best.range.sql)) "
                        + "SELECT \(Catalog.entryColumns) FROM c WHERE 1 = 1" + keyRange + filter + afterCond + " ORDER BY dir, name LIMIT ?"
                    out += try FastSQL.entries(s, sql, [.int(id)] + best.range.args + keyArgs + args + afterArgs + [.int(Int64(limit - out.count))])
                    continue
                }
                if self.pg {
                    // PostgreSQL: one statement to the page's end. Its scan runs in parallel
                    // workers (0.5 s over 10 M rows, bench/RESULTS.md), and skipping rows to
                    // find a window's end costs as much as reading them (an index-only scan
                    // of 2 M rows took 0.9 s): a budget would double every search's cost.
                    out += try FastSQL.entries(s, "SELECT \(Catalog.entryColumns) FROM files WHERE dataset = ?" + keyRange + filter + afterCond + " ORDER BY dir, name LIMIT ?",
                                               [.int(id)] + keyArgs + args + afterArgs + [.int(Int64(limit - out.count))])
                    continue
                }
                // SQLite: in key order, in windows of rows: a first small one (a search that
                // many rows match fills its page there), then the rest of `scanBudget`. A
                // window's end is found by skipping its rows in the primary key (a third of the
                // cost of reading them); nil when the dataset ends first.
                var from = after.flatMap { $0.dataset == id ? PathKey($0.dir, $0.name) : nil }
                let firstWindow = min(self.scanBudget, 100_000)
                for window in [firstWindow, self.scanBudget - firstWindow] where window > 0 {
                    var bound = ""
                    var boundArgs: [SQLValue] = []
                    if let from { bound = " AND (dir, name) > (?, ?)"; boundArgs = [.text(from.dir), .text(from.name)] }
                    let end = try s.query("SELECT dir, name FROM files WHERE dataset = ?" + keyRange + bound + " ORDER BY dir, name LIMIT 1 OFFSET ?",
                                          [SQLValue.int(id)] + keyArgs + boundArgs + [.int(window - 1)]).first.map { PathKey($0.text("dir"), $0.text("name")) }
                    if let end { bound += " AND (dir, name) <= (?, ?)"; boundArgs += [.text(end.dir), .text(end.name)] }
                    out += try FastSQL.entries(s, "SELECT \(Catalog.entryColumns) FROM files WHERE dataset = ?" + keyRange + filter + bound + " ORDER BY dir, name LIMIT ?",
                                               [.int(id)] + keyArgs + args + boundArgs + [.int(Int64(limit - out.count))])
                    if out.count >= limit { return FindPage(entries: out, resume: nil) }
                    guard let end else { from = nil; break }
                    from = end
                }
                if let from {
                    // The budget ran out inside this dataset: the next page goes on from there.
                    return FindPage(entries: out, resume: EntryKey(dataset: id, dir: from.dir, name: from.name))
                }
            }
            return FindPage(entries: out, resume: nil)
        }
    }

    /// A page of `findPage`: its entries, and where the next page starts when the search
    /// stopped at its budget rather than at its end or limit.
    public struct FindPage: Sendable {
        public var entries: [Entry]
        public var resume: EntryKey?
    }

    /// Rows a dataset is read for in key order by one `findPage` on SQLite (`[daemon]
    /// catalog_scan_rows`; set before the catalog is shared): at the rates of
    /// bench/RESULTS.md, about 0.3 s.
    public var scanBudget: Int64 = 2_000_000

    /// An optional index for `find` (`[daemon] catalog_indexes`).
    public enum SearchIndex: String, CaseIterable, Sendable {
        case size, mtime
        var indexName: String { "files_" + rawValue }
        var column: String { self == .size ? "size" : "mtime_ns" }
    }

    /// Datasets `find` searched, by how: "name", "size", "mtime" (the candidates of that
    /// index) or "scan" (the rows in key order). For `/metrics` and the tests.
    public func searchCounts() -> [String: Int] { searchLock.withLock { searched } }

    /// Regular files, their bytes, and directories at or below `under`.
    public func du(dataset: Int64, under: String = "", as viewer: Viewer) throws -> DiskUsage {
        let under = try CatalogPath.normalize(under)
        return try db.read { s in
            _ = try self.dataset(s, dataset, viewer)
            var sql = """
                SELECT CAST(COALESCE(SUM(CASE WHEN kind = 'f' THEN 1 ELSE 0 END), 0) AS BIGINT) AS files,
                       CAST(COALESCE(SUM(CASE WHEN kind = 'f' THEN size ELSE 0 END), 0) AS BIGINT) AS bytes,
                       CAST(COALESCE(SUM(CASE WHEN kind = 'd' THEN 1 ELSE 0 END), 0) AS BIGINT) AS dirs
                FROM files WHERE dataset = ?
                """
            var args: [any SQLArgument] = [dataset]
            if !under.isEmpty {
                guard let e = try entry(s, dataset, under) else { throw CatalogError(.notFound, "no '\(under)' in dataset \(dataset)") }
                if e.kind != .directory { return DiskUsage(files: e.kind == .file ? 1 : 0, bytes: e.kind == .file ? e.size : 0, directories: 0) }
                sql += " AND (dir = ? OR (dir >= ? AND dir < ?))"
                args += [under, under + "/", under + "0"]
            }
            let r = try s.query(sql, args).first
            return DiskUsage(files: r?.int("files") ?? 0, bytes: r?.int("bytes") ?? 0, directories: r?.int("dirs") ?? 0)
        }
    }

    // MARK: replicas

    static func replica(_ r: SQLRow) -> Replica {
        Replica(dataset: r.int("dataset"), center: r.text("center"), state: ReplicaState(rawValue: r.text("state")) ?? .partial,
                path: r.text("path"), files: r.int("files"), bytes: r.int("bytes"), verifiedAt: r.optionalInt("verified_at"), job: r.optionalInt("job"))
    }

    public func replicas(dataset: Int64, as viewer: Viewer) throws -> [Replica] {
        try db.read { s in
            _ = try self.dataset(s, dataset, viewer)
            return try s.query("SELECT * FROM replicas WHERE dataset = ? ORDER BY center", dataset).map(Catalog.replica)
        }
    }

    /// Records (or updates) the replica of `dataset` at `center`, and a change.
    /// `feed`: false for what a center learned from a peer (only a center's own facts go into
    /// its feed, or two centers following each other would echo changes forever).
    public func setReplica(dataset: Int64, center: String, state: ReplicaState, path: String = "", files: Int64 = 0, bytes: Int64 = 0,
                           verifiedAt: Int64? = nil, job: Int64? = nil, feed: Bool = true, now: Int64 = Catalog.now()) throws {
        try GFSPath.validateCenter(center)
        try db.write { s in
            guard try s.one("SELECT id FROM datasets WHERE id = ?", dataset) != nil else { throw CatalogError(.notFound, "no dataset \(dataset)") }
            try setReplica(s, Replica(dataset: dataset, center: center, state: state, path: path, files: files, bytes: bytes, verifiedAt: verifiedAt, job: job),
                           feed: feed, now: now)
        }
    }

    func setReplica(_ s: any SQLSession, _ r: Replica, feed: Bool = true, now: Int64) throws {
        try s.execute("""
            INSERT INTO replicas (dataset, center, state, path, files, bytes, verified_at, job) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (dataset, center) DO UPDATE SET state = excluded.state, path = excluded.path, files = excluded.files,
                bytes = excluded.bytes, verified_at = excluded.verified_at, job = excluded.job
            """, r.dataset, r.center, r.state.rawValue, r.path, r.files, r.bytes, r.verifiedAt, r.job)
        if feed { try appendChange(s, center: r.center, dataset: r.dataset, kind: .replicaUpdated, at: now) }
    }

    public func removeReplica(dataset: Int64, center: String, feed: Bool = true, now: Int64 = Catalog.now()) throws {
        try db.write { s in
            if try s.execute("DELETE FROM replicas WHERE dataset = ? AND center = ?", dataset, center) > 0 && feed {
                try appendChange(s, center: center, dataset: dataset, kind: .replicaDeleted, at: now)
            }
        }
    }

    // MARK: change feed

    /// Appends to the feed inside the caller's transaction. On PostgreSQL a sequence hands out
    /// numbers at insert, not at commit, so two writers could commit 8 before 7 and a follower
    /// that already read 8 would never see 7; the transaction lock makes appends (and their
    /// commits) happen in seq order. SQLite has one writer anyway.
    func appendChange(_ s: any SQLSession, center: String, dataset: Int64, kind: ChangeKind, at: Int64) throws {
        if pg { try s.execute("SELECT pg_advisory_xact_lock(7265728) AS locked") }
        try s.execute("INSERT INTO changes (center, dataset, kind, at) VALUES (?, ?, ?, ?)", center, dataset, kind.rawValue, at)
    }

    /// The feed after `seq`, oldest first. It carries ids, not contents: a follower refetches
    /// what a change names (with its own rights), so it needs no filtering here.
    public func changes(after seq: Int64, limit: Int = 1000) throws -> [Change] {
        try db.read { s in
            try s.query("SELECT seq, center, dataset, kind, at FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", seq, max(1, min(limit, 100_000)))
                .compactMap { r in
                    ChangeKind(rawValue: r.text("kind")).map { Change(seq: r.int("seq"), center: r.text("center"), dataset: r.int("dataset"), kind: $0, at: r.int("at")) }
                }
        }
    }

    /// The feed's last sequence number (0 when empty): a follower that holds a larger one
    /// knows the feed was reset.
    public func lastChangeSeq() throws -> Int64 {
        try db.read { s in try s.one("SELECT COALESCE(MAX(seq), 0) AS m FROM changes")?.int("m") ?? 0 }
    }

    // MARK: centers

    public func centers() throws -> [Center] {
        let stamp = recentCenters.stamp()
        let found = try db.read { s in
            try s.query("SELECT * FROM centers ORDER BY name").map {
                Center(name: $0.text("name"), api: $0.text("api"), lastSeq: $0.int("last_seq"), lastSync: $0.int("last_sync"), reachable: $0.int("reachable") != 0)
            }
        }
        recentCenters.keep(0, found, stamp: stamp)
        return found
    }

    /// The centers as read at most `Recent.lifetime` ago (or now): for what every catalog
    /// read asks and a second's delay cannot harm (whether a path names a followed center,
    /// which centers are stale). A change made through this catalog is seen at once; one made
    /// by another daemon on the same database within the lifetime. Not for the follower's
    /// sequence numbers (`centers()`).
    public func recentCentersList() throws -> [Center] {
        if let kept = recentCenters.fresh(0) { return kept }
        return try centers()
    }

    /// Adds a center or changes its API address.
    public func setCenter(_ name: String, api: String) throws {
        try GFSPath.validateCenter(name)
        try db.write { s in
            _ = try s.execute("INSERT INTO centers (name, api) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET api = excluded.api", name, api)
        }
        recentCenters.forget()
    }

    /// What a sync with `center` achieved: the last seq applied, or that it was unreachable
    /// (its entries stay, marked stale by `reachable`).
    public func recordSync(center: String, lastSeq: Int64? = nil, reachable: Bool, at: Int64 = Catalog.now()) throws {
        try db.write { s in
            try s.execute("INSERT INTO centers (name) VALUES (?) ON CONFLICT (name) DO NOTHING", center)
            // An unreachable center keeps the time of its last good sync (how stale it is).
            if reachable {
                try s.execute("UPDATE centers SET last_seq = COALESCE(?, last_seq), last_sync = ?, reachable = 1 WHERE name = ?", lastSeq, at, center)
            } else {
                try s.execute("UPDATE centers SET reachable = 0 WHERE name = ?", center)
            }
        }
        recentCenters.forget()
    }

    public static func now() -> Int64 { Int64(Date().timeIntervalSince1970) }
}

/// Paths within a dataset: "a/b/c", no leading or trailing '/', no "." or "..".
extension Catalog {
    /// A path within a dataset as the catalog keys it ("/a//b/" and "./a" accepted; "..",
    /// NUL and over-long names refused).
    public static func normalizedPath(_ p: String) throws -> String { try CatalogPath.normalize(p) }
}

enum CatalogPath {
    /// Accepts what a user types ("/a//b/", "./a"); refuses "..", NUL and over-long names.
    /// Byte-wise: "/" followed by a combining mark is one Swift Character, not a separator.
    static func normalize(_ p: String) throws -> String {
        let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")
        if p.utf8.count > GFSPath.pathBytesMax { throw CatalogError(.invalid, "path longer than \(GFSPath.pathBytesMax) bytes") }
        if !p.utf8.contains(where: { $0 == slash || $0 == dot || $0 == 0 }) {
            if p.utf8.count > GFSPath.componentBytesMax { throw CatalogError(.invalid, "a name in '\(p)' is longer than \(GFSPath.componentBytesMax) bytes") }
            return p
        }
        var parts: [String] = []
        for c in p.utf8.split(separator: slash, omittingEmptySubsequences: true) where !c.elementsEqual([dot]) {
            if c.elementsEqual([dot, dot]) { throw CatalogError(.invalid, "'..' is not allowed in '\(p)'") }
            if c.contains(0) { throw CatalogError(.invalid, "NUL byte in a path") }
            if c.count > GFSPath.componentBytesMax { throw CatalogError(.invalid, "a name in '\(p)' is longer than \(GFSPath.componentBytesMax) bytes") }
            parts.append(String(Substring(c)))
        }
        return parts.joined(separator: "/")
    }

    /// ("a/b", "c") for "a/b/c"; ("", "c") for "c".
    static func split(_ path: String) -> (String, String) {
        guard let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return ("", path) }
        return (String(Substring(path.utf8[..<slash])), String(Substring(path.utf8[path.utf8.index(after: slash)...])))
    }
}

/// Shell globs as SQL patterns. SQLite's GLOB is a shell glob already (negation is `[^`);
/// PostgreSQL gets LIKE when the glob has no bracket class (it can use the name's byte
/// order), else an anchored regular expression.
enum Glob {
    /// A glob's parts: `\` escapes the next character (a last `\` is itself), and a `[`
    /// with no `]` after it is a literal `[`, as in the shell.
    enum Token {
        case literal(Unicode.Scalar)
        case anyRun  // *
        case anyOne  // ?
        case oneOf(negated: Bool, body: String)  // [...] or [!...]
    }

    static func tokens(_ g: String) -> [Token] {
        var out: [Token] = []
        var it = Array(g.unicodeScalars)[...]
        while let c = it.popFirst() {
            switch c {
            case "\\": out.append(.literal(it.popFirst() ?? "\\"))
            case "*": out.append(.anyRun)
            case "?": out.append(.anyOne)
            case "[":
                if let cls = bracket(&it) { out.append(.oneOf(negated: cls.negated, body: cls.body)) } else { out.append(.literal("[")) }
            default: out.append(.literal(c))
            }
        }
        return out
    }

    /// The literal text every name the glob matches starts with ("" when it starts with a
    /// wildcard or a class): `H17P\\*x*` gives `H17P*x`.
    static func literalStart(_ g: String) -> String {
        var out = String.UnicodeScalarView()
        for t in tokens(g) {
            guard case .literal(let c) = t else { break }
            out.append(c)
        }
        return String(out)
    }

    /// The least string above every string that starts with `s`, in byte (code point) order:
    /// its last scalar raised by one (past the surrogates; a last U+10FFFF is dropped and the
    /// one before raised). nil when there is none (`s` is all U+10FFFF, or empty).
    static func successor(_ s: String) -> String? {
        var scalars = Array(s.unicodeScalars)
        while let last = scalars.popLast() {
            let v = last.value == 0xD7FF ? 0xE000 : last.value + 1
            if let next = Unicode.Scalar(v) {
                var out = String.UnicodeScalarView()
                out.append(contentsOf: scalars)
                out.append(next)
                return String(out)
            }
        }
        return nil
    }

    /// SQLite's GLOB: the same syntax, a literal wildcard as a one-member class.
    static func sqlite(_ g: String) -> String {
        var out = ""
        for t in tokens(g) {
            switch t {
            case .literal(let c): out += "*?[".unicodeScalars.contains(c) ? "[\(c)]" : String(c)
            case .anyRun: out += "*"
            case .anyOne: out += "?"
            case .oneOf(let negated, let body): out += "[" + (negated ? "^" : "") + body + "]"
            }
        }
        return out
    }

    /// LIKE (its escapes), or an anchored regular expression when there is a class.
    static func postgres(_ g: String) -> (op: String, pattern: String) {
        var like = ""
        var regex = "^"
        var usesClass = false
        for t in tokens(g) {
            switch t {
            case .literal(let c):
                if "\\%_".unicodeScalars.contains(c) { like += "\\" }
                like.unicodeScalars.append(c)
                if "\\.^$|()+*?{}[]".unicodeScalars.contains(c) { regex += "\\" }
                regex.unicodeScalars.append(c)
            case .anyRun: like += "%"; regex += ".*"
            case .anyOne: like += "_"; regex += "."
            case .oneOf(let negated, let body):
                usesClass = true
                regex += "[" + (negated ? "^" : "") + body.replacingOccurrences(of: "\\", with: "\\\\") + "]"
            }
        }
        return usesClass ? ("~", regex + "$") : ("LIKE", like)
    }

    /// The class after a '[' up to its ']' (a ']' first is a member), or nil (and `it`
    /// untouched) when unterminated: then '[' is literal, as in the shell.
    private static func bracket(_ it: inout ArraySlice<Unicode.Scalar>) -> (negated: Bool, body: String)? {
        var j = it
        var negated = false
        if let f = j.first, f == "!" || f == "^" { negated = true; j = j.dropFirst() }
        var body = ""
        if j.first == "]" { body += "]"; j = j.dropFirst() }
        while let c = j.popFirst() {
            if c == "]" { it = j; return (negated, body) }
            body.unicodeScalars.append(c)
        }
        return nil
    }
}
