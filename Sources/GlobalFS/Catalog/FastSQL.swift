import Foundation
import GRDB
import GRDBSQLite
import PostgresNIO
import Storage

/// The catalog's bulk paths, below `SQLSession`: the generic interface turns every row into a
/// dictionary and every argument into an existential, a few microseconds a row, which alone
/// would cap registration well under 100,000 files/s and make a 1,000-entry page cost
/// milliseconds. Here SQLite statements are bound and stepped through the C API (GRDB's
/// cached statement, reused for every row of a transaction), and PostgreSQL gets a whole
/// batch as one array per column (`unnest`), one statement and one round trip per batch.
/// Any other `SQLSession` falls back to the generic calls.
enum FastSQL {
    /// Entries from a SELECT of `Catalog.entryColumns`, in that order.
    /// `single`: the statement finds at most one row (a key): on PostgreSQL it is then read
    /// as a binary row where it can be (`binaryRows`), not packed into text arrays.
    static func entries(_ s: any SQLSession, _ sql: String, _ args: [SQLValue], single: Bool = false) throws -> [Entry] {
        if let q = s as? SQLiteDatabase.Session {
            let st = try SQLiteStep(q.db, sql)
            defer { st.done() }
            for (i, a) in args.enumerated() { st.bind(Int32(i + 1), a) }
            var out: [Entry] = []
            while try st.step() {
                out.append(Entry(dataset: st.int(0), dir: st.text(1) ?? "", name: st.text(2) ?? "", kind: EntryKind(rawValue: st.text(3) ?? "f") ?? .file,
                                 size: st.int(4), mtimeNs: st.int(5), mode: st.int(6), digest: st.text(7), chunkSize: st.int(8), target: st.text(9)))
            }
            return out
        }
        if let q = s as? PostgreSQLDatabase.Session {
            // One entry on a thread's own connection (the API's stat): its row in binary, which
            // spares the server the arrays and this side their parsing (bench/RESULTS.md, "API
            // reads, fifth pass": entries +18 % requests/s). A page stays one row of ten text
            // arrays: read as 100 binary rows it cost the daemon a fifth more CPU (postgres-nio
            // decodes a message per row), for no more pages per second.
            if single, let rows = try q.binaryRows(sql, args) { return try binaryEntries(rows) }
            return try pgEntries(q.textRows(PGArray.packed(sql), args))
        }
        return try s.query(sql, args).map { r in
            Entry(dataset: r.int("dataset"), dir: r.text("dir"), name: r.text("name"), kind: EntryKind(rawValue: r.text("kind")) ?? .file,
                  size: r.int("size"), mtimeNs: r.int("mtime_ns"), mode: r.int("mode"), digest: r.optionalText("digest"),
                  chunkSize: r.int("chunk_size"), target: r.optionalText("target"))
        }
    }

    /// The catalog's entries of the directories `dirs` of a dataset, by (dir, name).
    static func existing(_ s: any SQLSession, dataset: Int64, dirs: [String]) throws -> [PathKey: Entry] {
        var out: [PathKey: Entry] = [:]
        if let q = s as? PostgreSQLDatabase.Session {
            var b = PostgresBindings(capacity: 2)
            b.append(dataset)
            b.append(PGArray.literal(dirs))
            for e in try pgEntries(q.raw(PGArray.packed("SELECT \(Catalog.entryColumns) FROM files WHERE dataset = $1 AND dir = ANY($2::text[])"), b).rows) {
                out[PathKey(e.dir, e.name)] = e
            }
            return out
        }
        for d in dirs {
            for e in try entries(s, "SELECT \(Catalog.entryColumns) FROM files WHERE dataset = ? AND dir = ?", [.int(dataset), .text(d)]) {
                out[PathKey(e.dir, e.name)] = e
            }
        }
        return out
    }

    /// Entries from binary rows of `Catalog.entryColumns`, in that order: integers by their
    /// width (BIGINT here; INTEGER in a hand-made table), text as its UTF-8 bytes.
    static func binaryEntries(_ rows: [PostgresRow]) throws -> [Entry] {
        var out: [Entry] = []
        out.reserveCapacity(rows.count)
        for row in rows {
            var it = row.makeIterator()
            guard let c0 = it.next(), let c1 = it.next(), let c2 = it.next(), let c3 = it.next(), let c4 = it.next(),
                  let c5 = it.next(), let c6 = it.next(), let c7 = it.next(), let c8 = it.next(), let c9 = it.next() else {
                throw SQLStoreError("a row of entries with fewer than ten columns")
            }
            out.append(Entry(dataset: try binaryInt(c0), dir: binaryText(c1) ?? "", name: binaryText(c2) ?? "",
                             kind: EntryKind(rawValue: binaryText(c3) ?? "f") ?? .file, size: try binaryInt(c4),
                             mtimeNs: try binaryInt(c5), mode: try binaryInt(c6), digest: binaryText(c7),
                             chunkSize: try binaryInt(c8), target: binaryText(c9)))
        }
        return out
    }

    /// An integer cell in binary (network order, 2, 4 or 8 bytes); NULL is 0.
    static func binaryInt(_ c: PostgresCell) throws -> Int64 {
        guard let b = c.bytes else { return 0 }
        switch b.readableBytes {
        case 8: return b.getInteger(at: b.readerIndex, as: Int64.self) ?? 0
        case 4: return Int64(b.getInteger(at: b.readerIndex, as: Int32.self) ?? 0)
        case 2: return Int64(b.getInteger(at: b.readerIndex, as: Int16.self) ?? 0)
        default: throw SQLStoreError("column \(c.columnName): \(b.readableBytes) bytes for an integer")
        }
    }

    /// A text cell in binary (its UTF-8 bytes); NULL is nil.
    static func binaryText(_ c: PostgresCell) -> String? {
        guard let b = c.bytes else { return nil }
        return String(buffer: b)
    }

    /// The one row of ten arrays that `PGArray.packed` makes of a result.
    private static func pgEntries(_ rows: [PostgresRow]) throws -> [Entry] {
        guard let row = rows.first else { return [] }
        let (c0, c1, c2, c3, c4, c5, c6, c7, c8, c9) = try row.decode((String?, String?, String?, String?, String?, String?, String?, String?, String?, String?).self)
        return try entriesOf(try [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9].map { try PGArray.parse($0 ?? "{}") })
    }

    /// Entries from the ten arrays of `PGArray.columns`.
    private static func entriesOf(_ cols: [[String?]]) throws -> [Entry] {
        let n = cols[0].count
        guard cols.allSatisfy({ $0.count == n }) else { throw SQLStoreError("misaligned arrays from the server") }
        var out: [Entry] = []
        out.reserveCapacity(n)
        for i in 0..<n {
            out.append(Entry(dataset: Int64(cols[0][i] ?? "") ?? 0, dir: cols[1][i] ?? "", name: cols[2][i] ?? "",
                             kind: EntryKind(rawValue: cols[3][i] ?? "f") ?? .file, size: Int64(cols[4][i] ?? "") ?? 0,
                             mtimeNs: Int64(cols[5][i] ?? "") ?? 0, mode: Int64(cols[6][i] ?? "") ?? 0, digest: cols[7][i],
                             chunkSize: Int64(cols[8][i] ?? "") ?? 0, target: cols[9][i]))
        }
        return out
    }

    static let upsertTail = """
        ON CONFLICT (dataset, dir, name) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, mode = excluded.mode,
            digest = excluded.digest, chunk_size = excluded.chunk_size, kind = excluded.kind, target = excluded.target, seq = excluded.seq
        """

    /// Inserts or replaces entries (all of one dataset), each stamped with `seq`: the
    /// dataset's entry sequence of this write (`Catalog.nextEntrySeq`; 0 in a mirror).
    static func upsert(_ s: any SQLSession, _ rows: ArraySlice<Entry>, seq: Int64 = 0) throws {
        guard let first = rows.first else { return }
        if let q = s as? SQLiteDatabase.Session {
            let st = try SQLiteStep(q.db, """
                INSERT INTO files (dataset, dir, name, size, mtime_ns, mode, digest, chunk_size, kind, target, seq)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """ + upsertTail)
            defer { st.done() }
            for e in rows {
                st.bind(1, e.dataset); st.bind(2, e.dir); st.bind(3, e.name); st.bind(4, e.size); st.bind(5, e.mtimeNs)
                st.bind(6, e.mode); st.bind(7, e.digest); st.bind(8, e.chunkSize); st.bind(9, e.kind.rawValue); st.bind(10, e.target)
                st.bind(11, seq)
                _ = try st.step()
                st.reset()
            }
            return
        }
        if let q = s as? PostgreSQLDatabase.Session {
            var b = PostgresBindings(capacity: 11)
            b.append(first.dataset)
            b.append(PGArray.literal(rows.map(\.dir)))
            b.append(PGArray.literal(rows.map(\.name)))
            b.append(PGArray.literal(rows.map(\.size)))
            b.append(PGArray.literal(rows.map(\.mtimeNs)))
            b.append(PGArray.literal(rows.map(\.mode)))
            b.append(PGArray.literal(rows.map(\.digest)))
            b.append(PGArray.literal(rows.map(\.chunkSize)))
            b.append(PGArray.literal(rows.map(\.kind.rawValue)))
            b.append(PGArray.literal(rows.map(\.target)))
            b.append(seq)
            _ = try q.raw("""
                INSERT INTO files (dataset, dir, name, size, mtime_ns, mode, digest, chunk_size, kind, target, seq)
                SELECT $1, d, n, s, m, md, dg, cs, k, t, $11
                FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::text[], $10::text[])
                    AS u(d, n, s, m, md, dg, cs, k, t)
                """ + upsertTail, b)
            return
        }
        for e in rows {
            try s.execute("INSERT INTO files (dataset, dir, name, size, mtime_ns, mode, digest, chunk_size, kind, target, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) " + upsertTail,
                          e.dataset, e.dir, e.name, e.size, e.mtimeNs, e.mode, e.digest, e.chunkSize, e.kind.rawValue, e.target, seq)
        }
    }

    /// Inserts entries of one dataset none of whose keys is in the catalog yet (a first
    /// registration: `Catalog.register` with nothing registered), stamped 0. PostgreSQL: one
    /// `COPY files FROM STDIN` of the batch in text form (no conflict check, no arrays to
    /// parse and unnest); elsewhere the upsert, already the fast path there. A key that is there
    /// after all (two first registrations of one dataset at once, which the callers serialise)
    /// fails the batch with the server's unique-key error.
    static func insertNew(_ s: any SQLSession, _ rows: ArraySlice<Entry>) throws {
        guard let q = s as? PostgreSQLDatabase.Session else { return try upsert(s, rows) }
        var out: [UInt8] = []
        out.reserveCapacity(rows.count * 112)
        for e in rows {
            CopyText.int(e.dataset, &out); out.append(0x09)
            CopyText.text(e.dir, &out); out.append(0x09)
            CopyText.text(e.name, &out); out.append(0x09)
            CopyText.int(e.size, &out); out.append(0x09)
            CopyText.int(e.mtimeNs, &out); out.append(0x09)
            CopyText.int(e.mode, &out); out.append(0x09)
            CopyText.text(e.digest, &out); out.append(0x09)
            CopyText.int(e.chunkSize, &out); out.append(0x09)
            CopyText.text(e.kind.rawValue, &out); out.append(0x09)
            CopyText.text(e.target, &out); out.append(0x0A)
        }
        try q.copy(into: "files", columns: ["dataset", "dir", "name", "size", "mtime_ns", "mode", "digest", "chunk_size", "kind", "target"], out)
    }

    /// Records tombstones (`removed_files`) for `keys`, all with `seq`; a key given twice is
    /// recorded once.
    static func tombstones(_ s: any SQLSession, dataset: Int64, seq: Int64, _ keys: [PathKey]) throws {
        if keys.isEmpty { return }
        let sql = "INSERT INTO removed_files (dataset, seq, dir, name) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
        if let q = s as? SQLiteDatabase.Session {
            let st = try SQLiteStep(q.db, sql)
            defer { st.done() }
            for k in keys {
                st.bind(1, dataset); st.bind(2, seq); st.bind(3, k.dir); st.bind(4, k.name)
                _ = try st.step()
                st.reset()
            }
            return
        }
        if let q = s as? PostgreSQLDatabase.Session {
            var i = 0
            while i < keys.count {
                let part = keys[i..<min(i + Catalog.batchRows, keys.count)]
                var b = PostgresBindings(capacity: 4)
                b.append(dataset)
                b.append(seq)
                b.append(PGArray.literal(part.map(\.dir)))
                b.append(PGArray.literal(part.map(\.name)))
                _ = try q.raw("""
                    INSERT INTO removed_files (dataset, seq, dir, name) SELECT $1, $2, d, n FROM unnest($3::text[], $4::text[]) AS u(d, n)
                    ON CONFLICT DO NOTHING
                    """, b)
                i += Catalog.batchRows
            }
            return
        }
        for k in keys { try s.execute(sql, dataset, seq, k.dir, k.name) }
    }

    /// Deletes entries by key; returns how many went.
    static func delete(_ s: any SQLSession, dataset: Int64, _ keys: ArraySlice<PathKey>) throws -> Int {
        if keys.isEmpty { return 0 }
        if let q = s as? SQLiteDatabase.Session {
            let st = try SQLiteStep(q.db, "DELETE FROM files WHERE dataset = ? AND dir = ? AND name = ?")
            defer { st.done() }
            var n = 0
            for k in keys {
                st.bind(1, dataset); st.bind(2, k.dir); st.bind(3, k.name)
                _ = try st.step()
                n += Int(sqlite3_changes(q.db.sqliteConnection))
                st.reset()
            }
            return n
        }
        if let q = s as? PostgreSQLDatabase.Session {
            var b = PostgresBindings(capacity: 3)
            b.append(dataset)
            b.append(PGArray.literal(keys.map(\.dir)))
            b.append(PGArray.literal(keys.map(\.name)))
            return try q.raw("DELETE FROM files WHERE dataset = $1 AND (dir, name) IN (SELECT * FROM unnest($2::text[], $3::text[]))", b).metadata.rows ?? 0
        }
        var n = 0
        for k in keys { n += try s.execute("DELETE FROM files WHERE dataset = ? AND dir = ? AND name = ?", dataset, k.dir, k.name) }
        return n
    }
}

/// PostgreSQL arrays in their text form, both ways. A batch travels as one text parameter
/// per column and a page comes back as one row of one array per column: a handful of
/// protocol fields instead of one per value. The driver's cost is per field (measured in a
/// debug build: a 1,000-row page took 85 ms to fetch as rows, 15 ms as arrays; registration
/// went from 12,000 to 33,000 rows/s); building and parsing the text is plain string work.
enum PGArray {
    static func literal(_ xs: [Int64]) -> String { "{" + xs.map(String.init).joined(separator: ",") + "}" }

    static func literal(_ xs: [String?]) -> String {
        var out = "{"
        out.reserveCapacity(xs.count * 16)
        for (i, x) in xs.enumerated() {
            if i > 0 { out += "," }
            guard let x else { out += "NULL"; continue }
            out += "\""
            if x.utf8.contains(where: { $0 == 0x22 || $0 == 0x5C }) {
                for ch in x.unicodeScalars {
                    if ch == "\"" || ch == "\\" { out += "\\" }
                    out.unicodeScalars.append(ch)
                }
            } else {
                out += x
            }
            out += "\""
        }
        return out + "}"
    }

    /// `sql` (a SELECT of `Catalog.entryColumns`) as one row of ten text arrays, in its order.
    /// `Catalog.entryColumns`, one by one.
    static let columns = ["dataset", "dir", "name", "kind", "size", "mtime_ns", "mode", "digest", "chunk_size", "target"]

    static func packed(_ sql: String) -> String {
        "SELECT " + columns.enumerated().map { "array_agg(q.\($1))::text AS c\($0)" }.joined(separator: ", ") + " FROM (\(sql)) q"
    }

    /// A one-dimensional array in PostgreSQL's output format: elements are bare, or quoted
    /// (with backslash escapes only before '"' and '\\'); a bare NULL is SQL NULL. Delimiters
    /// are found with memchr: a page is tens of kilobytes of text.
    static func parse(_ text: String) throws -> [String?] {
        var text = text
        return try text.withUTF8 { b -> [String?] in
            guard b.count >= 2, b[0] == 0x7B, b[b.count - 1] == 0x7D, let p = b.baseAddress else {
                throw SQLStoreError("not an array: \(String(decoding: b.prefix(40), as: UTF8.self))")
            }
            let end = b.count - 1
            var out: [String?] = []
            var i = 1
            // The first `byte` in [k, limit), or limit. Every search is bounded by the element
            // it is in: a search for a byte the rest of the array lacks (a backslash, in an
            // array without one) read the whole rest each time, quadratic in a big array (a
            // million names read back by a re-registration: 75 s of memchr).
            func find(_ byte: UInt8, from k: Int, to limit: Int) -> Int {
                guard k < limit, let m = memchr(p + k, Int32(byte), limit - k) else { return limit }
                return UnsafeRawPointer(m) - UnsafeRawPointer(p)
            }
            while i < end {
                if p[i] == 0x22 {
                    var j = find(0x22, from: i + 1, to: end)
                    if find(0x5C, from: i + 1, to: j) < j {  // escapes: byte by byte
                        var bytes: [UInt8] = []
                        j = i + 1
                        while j < end && p[j] != 0x22 {
                            if p[j] == 0x5C { j += 1 }
                            bytes.append(p[j])
                            j += 1
                        }
                        out.append(String(decoding: bytes, as: UTF8.self))
                    } else {
                        out.append(String(decoding: UnsafeBufferPointer(start: p + i + 1, count: j - i - 1), as: UTF8.self))
                    }
                    i = j + 2  // past the quote and the comma
                } else {
                    let j = find(0x2C, from: i, to: end)
                    let e = UnsafeBufferPointer(start: p + i, count: j - i)
                    out.append(e.count == 4 && e.elementsEqual("NULL".utf8) ? nil : String(decoding: e, as: UTF8.self))
                    i = j + 1
                }
            }
            return out
        }
    }
}

/// (dir, name) compared and hashed byte for byte. Swift's String equality is canonical
/// equivalence: "é" precomposed equals "e" + U+0301, yet on disk (and in the catalog's
/// byte-wise keys) those are two different files.
struct PathKey: Hashable {
    let dir: String
    let name: String
    init(_ dir: String, _ name: String) { self.dir = dir; self.name = name }
    /// The key of a path within a dataset ("a/b/c": dir "a/b", name "c").
    init(path: String) {
        if let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")) {
            dir = String(Substring(path.utf8[..<slash]))
            name = String(Substring(path.utf8[path.utf8.index(after: slash)...]))
        } else {
            dir = ""
            name = path
        }
    }

    static func == (a: PathKey, b: PathKey) -> Bool { sameBytes(a.name, b.name) && sameBytes(a.dir, b.dir) }

    func hash(into h: inout Hasher) {
        PathKey.bytes(dir, &h)
        h.combine(UInt8(0xFF))  // never in UTF-8
        PathKey.bytes(name, &h)
    }

    private static func bytes(_ s: String, _ h: inout Hasher) {
        if s.utf8.withContiguousStorageIfAvailable({ h.combine(bytes: UnsafeRawBufferPointer($0)) }) == nil {
            for b in s.utf8 { h.combine(b) }
        }
    }
}

/// Byte equality of two strings (not Swift's canonical equivalence; see `PathKey`), with
/// memcmp on their UTF-8 storage: a re-registration compares every name it finds.
@inline(__always)
func sameBytes(_ a: String, _ b: String) -> Bool {
    let r = a.utf8.withContiguousStorageIfAvailable { x in
        b.utf8.withContiguousStorageIfAvailable { y in
            x.count == y.count && (x.isEmpty || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0)
        }
    }
    return (r ?? nil) ?? a.utf8.elementsEqual(b.utf8)
}

/// One GRDB cached statement driven through the SQLite C API.
struct SQLiteStep {
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
    let db: GRDB.Database
    let st: OpaquePointer

    init(_ db: GRDB.Database, _ sql: String) throws {
        self.db = db
        st = try db.cachedStatement(sql: sql).sqliteStatement
        sqlite3_reset(st)
        sqlite3_clear_bindings(st)
    }

    func bind(_ i: Int32, _ v: Int64) { sqlite3_bind_int64(st, i, v) }
    func bind(_ i: Int32, _ v: String?) {
        guard var v else { sqlite3_bind_null(st, i); return }
        v.withUTF8 { b in
            // An empty buffer may have no address, and a NULL pointer would bind SQL NULL.
            _ = "".withCString { empty in
                sqlite3_bind_text(st, i, b.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self) } ?? empty,
                                  Int32(b.count), SQLiteStep.transient)
            }
        }
    }
    func bind(_ i: Int32, _ v: SQLValue) {
        switch v {
        case .int(let x): bind(i, x)
        case .text(let t): bind(i, t)
        case .real(let d): sqlite3_bind_double(st, i, d)
        case .null: sqlite3_bind_null(st, i)
        }
    }

    /// True when a row is ready; false when the statement is done.
    func step() throws -> Bool {
        switch sqlite3_step(st) {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default:
            let message = String(cString: sqlite3_errmsg(db.sqliteConnection))
            sqlite3_reset(st)
            throw SQLStoreError(message)
        }
    }

    func reset() { sqlite3_reset(st) }
    /// Leaves the statement reset and unbound for GRDB's next use of it.
    func done() { sqlite3_reset(st); sqlite3_clear_bindings(st) }

    func int(_ c: Int32) -> Int64 { sqlite3_column_int64(st, c) }
    func text(_ c: Int32) -> String? {
        guard let p = sqlite3_column_text(st, c) else { return nil }
        return String(decoding: UnsafeBufferPointer(start: p, count: Int(sqlite3_column_bytes(st, c))), as: UTF8.self)
    }
}

/// COPY's text format: columns split by tabs, rows by newlines, `\\N` for NULL, and a
/// backslash before what would be read as one of those (backslash, tab, newline, return).
enum CopyText {
    static func int(_ v: Int64, _ out: inout [UInt8]) {
        if v >= 0 && v < 10 { out.append(0x30 + UInt8(v)); return }
        out.append(contentsOf: String(v).utf8)
    }

    static func text(_ v: String?, _ out: inout [UInt8]) {
        guard let v else { out.append(0x5C); out.append(0x4E); return }
        for c in v.utf8 {
            switch c {
            case 0x5C: out.append(0x5C); out.append(0x5C)
            case 0x09: out.append(0x5C); out.append(0x74)
            case 0x0A: out.append(0x5C); out.append(0x6E)
            case 0x0D: out.append(0x5C); out.append(0x72)
            default: out.append(c)
            }
        }
    }
}

extension PostgreSQLDatabase.Session {
    /// A statement with `$n` placeholders and bindings built by the caller (arrays included).
    func raw(_ sql: String, _ binds: PostgresBindings) throws -> PostgresQueryResult {
        do {
            return try conn.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger).wait()
        } catch {
            throw SQLStoreError(PostgreSQLDatabase.reason(error))
        }
    }
}
