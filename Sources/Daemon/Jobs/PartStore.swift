import Foundation
import Storage
import Transfer

// The queue's side of striping (issue 19, docs/STRIPING.md step 7): one job split into parts
// that the daemons of a center sharing one PostgreSQL claim, run and finish, and the one
// commit per striped file that the last finisher of its ranges is elected to make.
//
// Parts take `JobState` values and move only through its table (queued → running →
// success / up_for_retry / up_for_reschedule / failed; cancel → failed; retry → queued).
// A part is claimed only while its job is unfinished and striped; a job's coordinator may be
// lost and reclaimed (its job back in the queue) without stopping its parts.
//
// Leases: a part's lease is its claimant's, renewed like a job's. A part whose lease ran out is
// taken back only after one more lease time (`lease_seconds`, kept per part): the claimant
// cancels its own transfer once it has not renewed for two thirds of its lease (self-fencing,
// JobRunner), so a node cut off from the database has stopped writing before another node
// resumes the same range from its journal.

/// A part of a striped job: one file's chunk range, or a group of whole files.
public struct JobPart: Sendable, Equatable {
    public enum Kind: String, Sendable { case range, files }
    public var id: Int64
    public var job: Int64
    public var seq: Int
    public var kind: Kind
    public var peer: String
    /// `job_files` row of a range part.
    public var file: Int64?
    public var range: ChunkRange?
    /// Paths relative to the job's source (files parts).
    public var selection: [String]
    public var bytesTotal: Int64
    public var filesTotal: Int64
    public var state: JobState
    public var attempts: Int
    public var leaseOwner: String?
    public var leaseExpires: Int64?
    /// The node of this center running it, and the peer's node of this attempt (nil: the
    /// peer's configured address).
    public var node: String?
    public var peerNode: String?
    public var bytes: Int64
    public var files: Int64
    public var error: String?
}

/// A file of a striped job that moves as ranges, and its commit.
public struct StripedFile: Sendable, Equatable {
    public enum CommitState: String, Sendable { case open, committing, committed, failed }
    public var id: Int64
    public var job: Int64
    /// Relative to the job's source (empty: the source is this file).
    public var path: String
    public var size: Int64
    public var mtimeSeconds: Int64
    public var mtimeNanoseconds: Int64
    public var mode: Int64
    public var chunkBytes: Int64
    public var rangesTotal: Int
    public var rangesDone: Int
    public var state: CommitState
    public var committer: String?
    /// Why its commit failed for good (state `failed`).
    public var error: String? = nil
}

/// How a job is cut: files that move as ranges and groups of whole files (`StripePlanner`).
public struct StripePlan: Sendable, Equatable {
    public struct File: Sendable, Equatable {
        public var path: String
        public var size: Int64
        public var mtimeSeconds: Int64
        public var mtimeNanoseconds: Int64
        public var mode: Int64
        public var chunkBytes: Int64
        public var ranges: [ChunkRange]
    }
    public struct Group: Sendable, Equatable {
        public var paths: [String]
        public var bytes: Int64
    }
    public var files: [File] = []
    public var groups: [Group] = []
    public var partCount: Int { files.reduce(0) { $0 + $1.ranges.count } + groups.count }
    public init() {}
}

/// Cuts a walked source into parts: a file of at least two range sizes becomes chunk-aligned
/// ranges of `rangeBytes` (the last one takes the rest), every other entry goes in walk order
/// into groups of at most `groupFiles` entries and about `groupBytes` bytes. Files' ranges come
/// first in the plan, then the groups.
///
/// Groups shrink toward the end of the plan (guided sizes): once what is left is less than
/// `slots` groups' worth of bytes (`slots`: the parts the center runs at once, nodes ×
/// per_node), a group takes at most 1/`slots` of the remaining bytes, down to
/// `groupBytesFloor`. Parts are claimed in plan order, so the last ones to run are small and
/// the slots end close together, instead of idling while the last full-size parts finish
/// (bench/RESULTS.md, 2026-12-05: a 6.45 GB tree of 30,000 files went from 19.35 s to 19.20 s,
/// 0.889 × to 0.896 × the links). Bytes only: shrinking groups of small files by their count too made a 1.03 GB tree
/// of 30,000 files slower (0.68 × → 0.60 ×): such a group's session and files cost more than
/// its bytes, and more parts cost more than the shorter tail saves. Ranges are guided the same
/// way when they end the plan (a job of big files): with six slots a 6 GiB file's last 1.5 GiB
/// goes in ranges of 1/6 of what is left instead of six more of 256 MiB, whose slots ended up to
/// 4 s apart (bench/RESULTS.md, 2026-12-06).
public enum StripePlanner {
    public struct Entry: Sendable {
        public var path: String
        public var size: Int64
        public var mtimeSeconds: Int64
        public var mtimeNanoseconds: Int64
        public var mode: Int64
        public var isFile: Bool
        public init(path: String, size: Int64, mtimeSeconds: Int64, mtimeNanoseconds: Int64, mode: Int64, isFile: Bool) {
            self.path = path; self.size = size; self.mtimeSeconds = mtimeSeconds
            self.mtimeNanoseconds = mtimeNanoseconds; self.mode = mode; self.isFile = isFile
        }
    }

    /// Bounds on what one job is cut from (a listing is held while it is planned) and into.
    public static let entriesMax = 2_000_000
    public static let pathBytesMax = 256 << 20
    public static let partsMax = 1_000_000
    /// A commit's bounds (`CommitRequest`): chunks of one file, and ranges of one file (a
    /// file that would need more ranges gets longer ones).
    static let fileChunksMax = 1 << 22
    static let fileRangesMax = 1 << 16

    public static let groupBytesFloor: Int64 = 16 << 20

    public static func plan(_ entries: [Entry], chunkBytes: Int64, rangeBytes: Int64, groupFiles: Int, groupBytes: Int64, slots: Int = 1) throws -> StripePlan {
        guard chunkBytes > 0, rangeBytes >= chunkBytes, rangeBytes % chunkBytes == 0 else {
            throw JobStoreError("stripe range \(rangeBytes) is not a multiple of the chunk size \(chunkBytes)")
        }
        guard groupFiles >= 1, groupBytes >= 1 else { throw JobStoreError("a files part needs room for one file") }
        var plan = StripePlan()
        /// The entries that go in groups, in walk order, with the bytes each counts for; and the
        /// files cut into ranges, with their chunk counts.
        var grouped: [(path: String, bytes: Int64)] = []
        var ranged: [(entry: Entry, chunks: Int)] = []
        for e in entries {
            guard ranged.count + grouped.count / groupFiles <= partsMax else { throw JobStoreError("more than \(partsMax) parts: too many to stripe in one job") }
            // A file too big for one commit's bounds moves whole, in a group.
            let chunks = e.size <= 0 ? 0 : Int(e.size / chunkBytes + (e.size % chunkBytes == 0 ? 0 : 1))
            if e.isFile && e.size / 2 >= rangeBytes && chunks <= fileChunksMax {
                ranged.append((e, chunks))
            } else {
                grouped.append((e.path, e.isFile ? max(0, min(e.size, Int64.max / 4)) : 0))
            }
        }
        // Totals saturate: an entry counts for at most Int64.max / 4 (`remainingBytes` is a guide).
        var remainingBytes = (ranged.map { min(Int64.max / 4, $0.entry.size) } + grouped.map(\.bytes)).reduce(Int64(0)) { min(Int64.max / 2, $0 + $1) }
        let slots = max(1, slots)
        let floorChunks = max(1, Int(groupBytesFloor / chunkBytes))
        var parts = 0
        for (e, chunks) in ranged {
            let per = max(Int(rangeBytes / chunkBytes), (chunks + fileRangesMax - 1) / fileRangesMax)
            // Guided like the groups (below): once less than `slots` ranges' worth of the plan is
            // left, a range takes 1/`slots` of it, down to the floor (never so small that the
            // file would need more than `fileRangesMax` ranges).
            let fewest = (chunks + fileRangesMax - 1) / fileRangesMax
            var ranges: [ChunkRange] = []
            var first = 0
            while first < chunks {
                let guided = Int(min(Int64(Int32.max), remainingBytes / Int64(slots) / chunkBytes))
                let size = slots > 1 ? max(fewest, min(per, max(floorChunks, guided))) : per
                // The last range takes a remainder shorter than half a range.
                let count = chunks - first < size + size / 2 ? chunks - first : size
                ranges.append(try ChunkRange(first: first, count: count, of: chunks))
                remainingBytes = max(0, remainingBytes - min(e.size - Int64(first) * chunkBytes, Int64(count) * chunkBytes))
                first += count
            }
            plan.files.append(.init(path: e.path, size: e.size, mtimeSeconds: e.mtimeSeconds, mtimeNanoseconds: e.mtimeNanoseconds,
                                    mode: e.mode, chunkBytes: chunkBytes, ranges: ranges))
            // Counted as they come (`partCount` walks every file: once per part would be quadratic).
            parts += ranges.count
            guard parts <= partsMax else { throw JobStoreError("more than \(partsMax) parts: too many to stripe in one job") }
        }
        var group = StripePlan.Group(paths: [], bytes: 0)
        var bytesCap = groupBytes
        func caps() { bytesCap = min(groupBytes, max(min(groupBytes, groupBytesFloor), remainingBytes / Int64(slots))) }
        caps()
        for e in grouped {
            if !group.paths.isEmpty && (group.paths.count >= groupFiles || group.bytes > bytesCap - e.bytes) {
                plan.groups.append(group)
                parts += 1
                guard parts <= partsMax else { throw JobStoreError("more than \(partsMax) parts: too many to stripe in one job") }
                group = .init(paths: [], bytes: 0)
                caps()
            }
            group.paths.append(e.path)
            group.bytes = min(Int64.max / 2, group.bytes + e.bytes)
            remainingBytes = max(0, remainingBytes - e.bytes)
        }
        if !group.paths.isEmpty { plan.groups.append(group) }
        guard plan.partCount <= partsMax else { throw JobStoreError("more than \(partsMax) parts: too many to stripe in one job") }
        return plan
    }
}

/// What `finishPart` did: the part's new state, and the file whose commit the caller now
/// holds (its last range succeeded here).
public struct PartFinish: Sendable, Equatable {
    public var state: JobState
    public var commit: StripedFile?
}

extension JobStore {
    /// Parts and striped files (created with the queue; `migrate` adds them to an older one).
    static func createPartTables(_ s: any SQLSession) throws {
        let pg = s.dialect == .postgres
        let id = pg ? "id BIGSERIAL PRIMARY KEY" : "id INTEGER PRIMARY KEY AUTOINCREMENT"
        let int = pg ? "BIGINT" : "INTEGER"
        try s.execute("""
            CREATE TABLE IF NOT EXISTS job_files (
                \(id),
                job \(int) NOT NULL REFERENCES jobs(id),
                path TEXT NOT NULL,
                size \(int) NOT NULL,
                mtime_s \(int) NOT NULL,
                mtime_ns \(int) NOT NULL,
                mode \(int) NOT NULL,
                chunk_bytes \(int) NOT NULL,
                ranges_total \(int) NOT NULL,
                ranges_done \(int) NOT NULL DEFAULT 0,
                state TEXT NOT NULL DEFAULT 'open',
                committer TEXT,
                commit_expires \(int),
                commit_lease \(int) NOT NULL DEFAULT 0,
                commit_after \(int) NOT NULL DEFAULT 0,
                commit_attempts \(int) NOT NULL DEFAULT 0,
                error TEXT,
                UNIQUE (job, path));
            CREATE TABLE IF NOT EXISTS job_parts (
                \(id),
                job \(int) NOT NULL REFERENCES jobs(id),
                seq \(int) NOT NULL,
                kind TEXT NOT NULL,
                peer TEXT NOT NULL DEFAULT '',
                file \(int) REFERENCES job_files(id),
                first_chunk \(int) NOT NULL DEFAULT 0,
                chunk_count \(int) NOT NULL DEFAULT 0,
                selection TEXT NOT NULL DEFAULT '[]',
                bytes_total \(int) NOT NULL DEFAULT 0,
                files_total \(int) NOT NULL DEFAULT 0,
                state TEXT NOT NULL,
                attempts \(int) NOT NULL DEFAULT 0,
                not_before \(int) NOT NULL DEFAULT 0,
                lease_owner TEXT,
                lease_expires \(int),
                lease_seconds \(int) NOT NULL DEFAULT 0,
                node TEXT,
                peer_node TEXT,
                hashes TEXT,
                bytes \(int) NOT NULL DEFAULT 0,
                files \(int) NOT NULL DEFAULT 0,
                error TEXT,
                error_code TEXT,
                updated \(int) NOT NULL DEFAULT 0,
                UNIQUE (job, seq));
            CREATE INDEX IF NOT EXISTS job_parts_runnable ON job_parts(state, job, seq);
            CREATE INDEX IF NOT EXISTS job_parts_file ON job_parts(file);
            CREATE TABLE IF NOT EXISTS peer_nodes (
                peer TEXT NOT NULL,
                address TEXT NOT NULL,
                down_until \(int) NOT NULL DEFAULT 0,
                PRIMARY KEY (peer, address));
            """)
    }

    /// Adds `striped` and `note` to an older queue's jobs.
    static func migrateStriping(_ s: any SQLSession) throws {
        for (column, type) in [("striped", s.dialect == .postgres ? "BIGINT NOT NULL DEFAULT 0" : "INTEGER NOT NULL DEFAULT 0"), ("note", "TEXT")] {
            if s.dialect == .postgres {
                try s.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS \(column) \(type)")
            } else if try s.one("SELECT COUNT(*) AS n FROM pragma_table_info('jobs') WHERE name = ?", column)?.int("n") ?? 0 == 0 {
                try s.execute("ALTER TABLE jobs ADD COLUMN \(column) \(type)")
            }
        }
    }

    // MARK: planning

    /// Records `plan` as the parts of job `id`, which `worker` must be running. Returns false
    /// (and writes nothing) when the job is already striped: another attempt planned it, and
    /// its parts stand. A plan of more than 1,000,000 parts is refused.
    @discardableResult
    public func plan(_ id: Int64, worker: String, plan: StripePlan, now: Int64) throws -> Bool {
        guard plan.partCount >= 1, plan.partCount <= 1_000_000 else { throw JobStoreError("a striped job of \(plan.partCount) parts") }
        return try write { s in
            guard let job = try s.one("SELECT id, peer, striped FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ?\(JobStore.forUpdate(s))", id, worker) else {
                throw JobStoreError("job \(id) is not running under \(worker)")
            }
            if job.int("striped") != 0 { return false }
            let peer = job.text("peer")
            var seq = 0
            for f in plan.files {
                guard let fileId = try s.query("""
                    INSERT INTO job_files (job, path, size, mtime_s, mtime_ns, mode, chunk_bytes, ranges_total)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id
                    """, id, f.path, f.size, f.mtimeSeconds, f.mtimeNanoseconds, f.mode, f.chunkBytes, f.ranges.count).first?.int("id") else {
                    throw JobStoreError("job \(id): no id for striped file \(f.path)")
                }
                for r in f.ranges {
                    seq += 1
                    let bytes = min(f.size, Int64(r.end) * f.chunkBytes) - Int64(r.first) * f.chunkBytes
                    try s.send("""
                        INSERT INTO job_parts (job, seq, kind, peer, file, first_chunk, chunk_count, bytes_total, files_total, state, updated)
                        VALUES (?, ?, 'range', ?, ?, ?, ?, ?, 0, 'queued', ?)
                        """, id, seq, peer, fileId, r.first, r.count, bytes, now)
                }
            }
            for g in plan.groups {
                seq += 1
                let selection = String(decoding: try JSONEncoder().encode(g.paths), as: UTF8.self)
                try s.send("""
                    INSERT INTO job_parts (job, seq, kind, peer, selection, bytes_total, files_total, state, updated)
                    VALUES (?, ?, 'files', ?, ?, ?, ?, 'queued', ?)
                    """, id, seq, peer, selection, g.bytes, g.paths.count, now)
            }
            try s.execute("UPDATE jobs SET striped = 1, updated = ? WHERE id = ?", now, id)
            return true
        }
    }

    /// A note on a job for its owner (why it was not striped, for one).
    public func setNote(_ id: Int64, _ note: String?, now: Int64) throws {
        try write { s in _ = try s.execute("UPDATE jobs SET note = ?, updated = ? WHERE id = ?", note, now, id) }
    }

    public func note(_ id: Int64) throws -> String? {
        try db.read { s in try s.one("SELECT note FROM jobs WHERE id = ?", id)?.optionalText("note") }
    }

    public func isStriped(_ id: Int64) throws -> Bool {
        try db.read { s in try s.one("SELECT striped FROM jobs WHERE id = ?", id)?.int("striped") ?? 0 != 0 }
    }

    // MARK: the peer's nodes

    /// The peer's transfer nodes, as configured or learnt (`address` is host:port). Nodes no
    /// longer named are removed; the down marks of the others stay.
    public func setPeerNodes(_ peer: String, _ addresses: [String]) throws {
        try write { s in
            let known = Set(try s.query("SELECT address FROM peer_nodes WHERE peer = ?", peer).map { $0.text("address") })
            for a in known where !addresses.contains(a) { try s.execute("DELETE FROM peer_nodes WHERE peer = ? AND address = ?", peer, a) }
            for a in Set(addresses) where !known.contains(a) { try s.execute("INSERT INTO peer_nodes (peer, address) VALUES (?, ?)", peer, a) }
        }
    }

    /// A peer's node that failed a part is not chosen again until `until`.
    public func markPeerNodeDown(_ peer: String, _ address: String, until: Int64) throws {
        try write { s in _ = try s.execute("UPDATE peer_nodes SET down_until = ? WHERE peer = ? AND address = ?", until, peer, address) }
    }

    // MARK: claiming and running parts

    /// Hands `worker` (on this center's node `node`) the next queued part of an unfinished
    /// striped job, or nil. Highest priority first, then oldest job, then the part's order.
    /// At most `perNodeMax` parts run on one node and `peerLimits[peer]` (else `perPeerMax`)
    /// parts and unstriped jobs toward one peer. The peer's node is chosen here: the one, not
    /// marked down, with the fewest running parts.
    public func claimPart(worker: String, node: String, now: Int64, leaseSeconds: Int64, perNodeMax: Int = .max,
                          perPeerMax: Int = .max, perUserMax: Int = .max, peerLimits: [String: Int] = [:]) throws -> JobPart? {
        try write { s in
            let pg = s.dialect == .postgres
            if perNodeMax < .max {
                if pg { try s.execute("SELECT pg_advisory_xact_lock(hashtext('ferry-node:' || ?)) AS locked", node) }
                if try s.one("SELECT COUNT(*) AS n FROM job_parts WHERE state = 'running' AND node = ?", node)?.int("n") ?? 0 >= Int64(perNodeMax) { return nil }
            }
            let candidates = try s.query("""
                SELECT p.id AS id, p.peer AS peer, j.owner AS owner FROM job_parts p JOIN jobs j ON j.id = p.job
                WHERE p.state = 'queued' AND p.not_before <= ? AND j.striped = 1 AND j.state IN ('running', 'queued', 'up_for_reschedule')
                ORDER BY j.priority DESC, p.job, p.seq LIMIT \(pg ? 16 : 64)\(pg ? " FOR UPDATE OF p SKIP LOCKED" : "")
                """, now)
            // The peers' locks in one order (sorted), after the node's: two claimants never wait
            // for each other's locks in opposite orders.
            var full: Set<String> = []
            for peer in Set(candidates.map { $0.text("peer") }).sorted() where !peer.isEmpty && (peerLimits[peer] ?? perPeerMax) < .max {
                if pg { try s.execute("SELECT pg_advisory_xact_lock(hashtext('ferry-peer:' || ?)) AS locked", peer) }
                if try JobStore.runningToward(s, peer: peer) >= peerLimits[peer] ?? perPeerMax { full.insert(peer) }
            }
            // The owners' after the peers' (the order `claim` takes them in): a user's running
            // parts and whole jobs together stay within `per_user`.
            var busy: Set<String> = []
            if perUserMax < .max {
                for owner in Set(candidates.map { $0.text("owner") }).sorted() {
                    if pg { try s.execute("SELECT pg_advisory_xact_lock(hashtext('ferry-user:' || ?)) AS locked", owner) }
                    if try JobStore.runningFor(s, owner: owner) >= perUserMax { busy.insert(owner) }
                }
            }
            for c in candidates {
                let peer = c.text("peer")
                if full.contains(peer) || busy.contains(c.text("owner")) { continue }
                let peerNode = try s.one("""
                    SELECT n.address AS address FROM peer_nodes n WHERE n.peer = ? AND n.down_until <= ?
                    ORDER BY (SELECT COUNT(*) FROM job_parts r WHERE r.state = 'running' AND r.peer = n.peer AND r.peer_node = n.address), n.address
                    LIMIT 1
                    """, peer, now)?.optionalText("address")
                let claimed = try JobState.sql(moving: [.queued], to: .running)
                let rows = try s.query("""
                    UPDATE job_parts SET \(claimed.set), attempts = attempts + 1, lease_owner = ?, lease_expires = ?, lease_seconds = ?,
                        node = ?, peer_node = ?, error = NULL, error_code = NULL, updated = ?
                    WHERE id = ? AND \(claimed.where) RETURNING *
                    """, worker, now + leaseSeconds, leaseSeconds, node, peerNode, now, c.int("id"))
                if let r = rows.first { return JobStore.part(r) }
            }
            return nil
        }
    }

    /// Running parts and unstriped running jobs toward `peer` (a striped job's own attempt is
    /// its coordinator, which moves no bytes: its parts count instead).
    static func runningToward(_ s: any SQLSession, peer: String) throws -> Int {
        let jobs = try s.one("SELECT COUNT(*) AS n FROM jobs WHERE state = 'running' AND peer = ? AND striped = 0", peer)?.int("n") ?? 0
        let parts = try s.one("SELECT COUNT(*) AS n FROM job_parts WHERE state = 'running' AND peer = ?", peer)?.int("n") ?? 0
        return Int(jobs + parts)
    }

    /// A user's transfers moving bytes: running unstriped jobs and running parts of their
    /// striped jobs (what `claimPart` limits: a striped job's own attempt only coordinates).
    static func runningFor(_ s: any SQLSession, owner: String) throws -> Int {
        try userCount(s, owner: owner, coordinators: false)
    }

    /// What `claim` limits: the same, and the user's running striped jobs themselves (each
    /// holds a worker until its job ends).
    static func startedFor(_ s: any SQLSession, owner: String) throws -> Int {
        try userCount(s, owner: owner, coordinators: true)
    }

    private static func userCount(_ s: any SQLSession, owner: String, coordinators: Bool) throws -> Int {
        let jobs = try s.one("SELECT COUNT(*) AS n FROM jobs WHERE state = 'running' AND owner = ?\(coordinators ? "" : " AND striped = 0")", owner)?.int("n") ?? 0
        let parts = try s.one("""
            SELECT COUNT(*) AS n FROM job_parts p JOIN jobs j ON j.id = p.job WHERE p.state = 'running' AND j.owner = ?
            """, owner)?.int("n") ?? 0
        return Int(jobs + parts)
    }

    /// Extends a running part's lease; false when `worker` no longer holds it or its job has
    /// ended (cancelled, failed): the runner must stop that part. `moved` goes to the job's
    /// link samples.
    public func renewPart(_ id: Int64, worker: String, now: Int64, bytes: Int64, files: Int64, moved: Int64 = 0) throws -> Bool {
        try write { s in
            guard let row = try s.one("""
                SELECT p.job AS job, p.lease_seconds AS lease FROM job_parts p JOIN jobs j ON j.id = p.job
                WHERE p.id = ? AND p.state = 'running' AND p.lease_owner = ? AND j.state IN ('running', 'queued', 'up_for_reschedule')
                """, id, worker) else { return false }
            let held = try s.execute("""
                UPDATE job_parts SET lease_expires = ?, bytes = ?, files = ?, updated = ? WHERE id = ? AND state = 'running' AND lease_owner = ?
                """, now + row.int("lease"), bytes, files, now, id, worker) == 1
            if held { try JobStore.sample(s, job: row.int("job"), now: now, moved: moved) }
            return held
        }
    }

    /// Records how a part's attempt ended; nil when `worker` no longer held it (the outcome
    /// is ignored). A range's success carries its chunk hashes (`hashes`, in chunk order,
    /// exactly the range's count); the finisher that completes a file's last range gets that
    /// file's commit (`PartFinish.commit`, held for `commitLease` seconds): exactly one does,
    /// since every finisher of the file's ranges counts under the file's row lock.
    /// A failed part is retried after the job's backoff while the job has attempts left per
    /// part (`maxAttempts` of the job); then it is `failed`, and so will the job be.
    @discardableResult
    public func finishPart(_ id: Int64, worker: String, outcome: AttemptOutcome, hashes: [ChunkHash] = [], now: Int64,
                           commitLease: Int64 = 60, moved: Int64 = 0, random: Double = Double.random(in: 0..<1)) throws -> PartFinish? {
        try write { s in
            guard let row = try s.one("SELECT * FROM job_parts WHERE id = ? AND state = 'running' AND lease_owner = ?\(JobStore.forUpdate(s))", id, worker) else {
                return nil
            }
            let part = JobStore.part(row)
            try JobStore.sample(s, job: part.job, now: now, moved: moved)
            // The job's deadline bounds its parts' retries as it bounds a whole job's: a part
            // that fails after it is not tried again, and the job fails with it.
            let job = try s.one("SELECT max_attempts, deadline FROM jobs WHERE id = ?", part.job)
            let maxAttempts = job?.int("max_attempts") ?? 1
            let pastDeadline = job?.optionalInt("deadline").map { now >= $0 } ?? false
            let e = ending(outcome, attempts: part.attempts, maxAttempts: Int(maxAttempts), pastDeadline: pastDeadline, skipped: .success,
                           now: now, notBefore: 0, bytes: part.bytes, files: part.files, random: random)
            let (state, error, code, notBefore, bytes, files) = (e.state, e.error, e.code, e.notBefore, e.bytes, e.files)
            var hashText: String? = nil
            if state == .success, let r = part.range {
                guard hashes.count == r.count else {
                    throw JobStoreError("part \(id): \(hashes.count) chunk hashes for a range of \(r.count) chunks")
                }
                hashText = JobStore.hex(hashes)
            }
            try part.state.checkMove(to: state)
            try s.execute("""
                UPDATE job_parts SET state = ?, bytes = ?, files = ?, error = ?, error_code = ?, not_before = ?, hashes = ?,
                    lease_owner = NULL, lease_expires = NULL, updated = ?
                WHERE id = ?
                """, state.rawValue, bytes, files, error, code?.name, notBefore, hashText, now, id)
            var commit: StripedFile? = nil
            if state == .success, let file = part.file {
                // The row lock of the file serialises its finishers: exactly one sees done == total.
                let done = try s.query("""
                    UPDATE job_files SET ranges_done = ranges_done + 1 WHERE id = ? AND state = 'open' RETURNING ranges_done, ranges_total
                    """, file)
                if let d = done.first, d.int("ranges_done") == d.int("ranges_total") {
                    let rows = try s.query("""
                        UPDATE job_files SET state = 'committing', committer = ?, commit_expires = ?, commit_lease = ? WHERE id = ? RETURNING *
                        """, worker, now + commitLease, commitLease, file)
                    commit = rows.first.map(JobStore.stripedFile)
                }
            }
            return PartFinish(state: state, commit: commit)
        }
    }

    /// A file whose ranges are all done and whose commit nobody holds (its committer's lease
    /// ran out, `promote` freed it): `worker` now holds it for `leaseSeconds`.
    public func claimCommit(worker: String, now: Int64, leaseSeconds: Int64) throws -> StripedFile? {
        try write { s in
            let pg = s.dialect == .postgres
            let c = try s.query("""
                SELECT f.id AS id FROM job_files f JOIN jobs j ON j.id = f.job
                WHERE f.state = 'committing' AND f.committer IS NULL AND f.commit_after <= ? AND j.state IN ('running', 'queued', 'up_for_reschedule')
                ORDER BY f.id LIMIT 1\(pg ? " FOR UPDATE OF f SKIP LOCKED" : "")
                """, now)
            guard let id = c.first?.int("id") else { return nil }
            return try s.query("""
                UPDATE job_files SET committer = ?, commit_expires = ?, commit_lease = ? WHERE id = ? AND committer IS NULL RETURNING *
                """, worker, now + leaseSeconds, leaseSeconds, id).first.map(JobStore.stripedFile)
        }
    }

    /// How a commit ended.
    public enum CommitOutcome: Sendable, Equatable {
        /// Renamed into place (or found already there).
        case committed
        /// These ranges (first chunks) were missing or not durable on the destination: their
        /// parts go back to the queue; the file waits for them again.
        case redo(firsts: [Int])
        /// The destination's digest did not match the ranges' hashes, or its partial copy is
        /// gone or does not hold what its ranges recorded: every range goes back (each resumes from its journal, so only what
        /// is missing moves again).
        case redoAll
        /// A refusal that a new attempt would meet again (permissions, a directory in the way):
        /// the file fails, and with it the job.
        case failed(String)
        /// The commit could not be made now (the peer's node unreachable, a timeout): free for
        /// another try after `seconds`; after `commitAttemptsMax` such tries the file fails.
        case release(seconds: Int64, why: String)
    }

    /// Tries of one file's commit that ended in `release` before the file fails.
    public static let commitAttemptsMax = 8

    /// Ends `worker`'s commit of file `id`; false when `worker` no longer held it.
    @discardableResult
    public func finishCommit(_ id: Int64, worker: String, outcome: CommitOutcome, now: Int64) throws -> Bool {
        try write { s in
            guard try s.one("SELECT id FROM job_files WHERE id = ? AND state = 'committing' AND committer = ?\(JobStore.forUpdate(s))", id, worker) != nil else {
                return false
            }
            var firsts: [Int]? = nil
            switch outcome {
            case .committed:
                try s.execute("UPDATE job_files SET state = 'committed', committer = NULL, commit_expires = NULL WHERE id = ?", id)
                return true
            case .redo(let f): firsts = f
            case .redoAll: break
            case .failed(let why):
                try s.execute("UPDATE job_files SET state = 'failed', error = ?, committer = NULL, commit_expires = NULL WHERE id = ?", why, id)
                return true
            case .release(let seconds, let why):
                let tries = (try s.one("SELECT commit_attempts FROM job_files WHERE id = ?", id)?.int("commit_attempts") ?? 0) + 1
                if tries >= JobStore.commitAttemptsMax {
                    try s.execute("UPDATE job_files SET state = 'failed', error = ?, committer = NULL, commit_expires = NULL, commit_attempts = ? WHERE id = ?",
                                  why + " (gave up after \(tries) tries of its commit)", tries, id)
                } else {
                    try s.execute("UPDATE job_files SET committer = NULL, commit_expires = NULL, commit_after = ?, commit_attempts = ? WHERE id = ?",
                                  now + seconds, tries, id)
                }
                return true
            }
            let again = try JobState.sql(movingParts: [.success], to: .queued)
            var redone = 0
            if let firsts {
                for first in Set(firsts) {
                    redone += try s.execute("UPDATE job_parts SET \(again.set), hashes = NULL, updated = ? WHERE file = ? AND first_chunk = ? AND \(again.where)",
                                            now, id, first)
                }
            } else {
                redone = try s.execute("UPDATE job_parts SET \(again.set), hashes = NULL, updated = ? WHERE file = ? AND \(again.where)", now, id)
            }
            // Nothing went back (ranges that are not this file's): the commit stays to be made.
            if redone == 0 {
                try s.execute("UPDATE job_files SET committer = NULL, commit_expires = NULL WHERE id = ?", id)
                return true
            }
            try s.execute("""
                UPDATE job_files SET state = 'open', ranges_done = ranges_done - ?, committer = NULL, commit_expires = NULL WHERE id = ?
                """, redone, id)
            return true
        }
    }

    /// The chunk hashes of a striped file's source, from its succeeded ranges in chunk order;
    /// nil unless every range has its hashes (the source's digest is `FileDigest.of` them).
    public func sourceHashes(file id: Int64) throws -> [ChunkHash]? {
        try db.read { s in
            guard let f = try s.one("SELECT ranges_total FROM job_files WHERE id = ?", id) else { return nil }
            let rows = try s.query("SELECT hashes FROM job_parts WHERE file = ? AND state = 'success' ORDER BY first_chunk", id)
            guard rows.count == Int(f.int("ranges_total")) else { return nil }
            var out: [ChunkHash] = []
            for r in rows {
                guard let h = r.optionalText("hashes"), let hs = JobStore.unhex(h) else { return nil }
                out += hs
            }
            return out
        }
    }

    // MARK: the job's side

    /// Moves parts whose wait is over: a lease gone for a further lease time → queued (via
    /// up_for_reschedule); backoff over → queued; a commit whose committer's lease is gone for
    /// a further lease time → free for `claimCommit`. Called by `promote`.
    static func promoteParts(_ s: any SQLSession, now: Int64) throws -> Int {
        var moved = 0
        let lost = try JobState.sql(moving: [.running], to: .upForReschedule)
        moved += try s.execute("""
            UPDATE job_parts SET \(lost.set), lease_owner = NULL, lease_expires = NULL, updated = ?,
                error = 'the daemon running it stopped or lost its lease', error_code = NULL
            WHERE \(lost.where) AND lease_expires + lease_seconds < ?
            """, now, now)
        let back = try JobState.sql(moving: [.upForReschedule], to: .queued)
        moved += try s.execute("UPDATE job_parts SET \(back.set), updated = ? WHERE \(back.where)", now)
        // A job past its deadline starts nothing more (as a waiting whole job fails, `promote`):
        // its parts still waiting fail, and the coordinator fails the job with them; running
        // parts go on, as a running whole job does.
        let late = try JobState.sql(moving: [.queued, .upForRetry, .upForReschedule], to: .failed)
        moved += try s.execute("""
            UPDATE job_parts SET \(late.set), error = 'deadline passed before the transfer finished', error_code = NULL, updated = ?
            WHERE \(late.where) AND job IN (SELECT id FROM jobs WHERE striped = 1 AND deadline IS NOT NULL AND deadline < ?
                                                                AND state IN ('running', 'queued', 'up_for_reschedule'))
            """, now, now)
        let waited = try JobState.sql(moving: [.upForRetry], to: .queued)
        moved += try s.execute("UPDATE job_parts SET \(waited.set), updated = ? WHERE \(waited.where) AND not_before <= ?", now, now)
        moved += try s.execute("""
            UPDATE job_files SET committer = NULL, commit_expires = NULL
            WHERE state = 'committing' AND committer IS NOT NULL AND commit_expires + commit_lease < ?
            """, now)
        return moved
    }

    /// Ends the unfinished parts of a cancelled job (their runners see it at their next renewal).
    static func cancelParts(_ s: any SQLSession, job: Int64, by user: String, now: Int64) throws {
        // A running part's runner learns of it at its next renewal: until two leases have
        // passed, a retry must not hand the part to another (`not_before`).
        let fence = try JobState.sql(moving: [.running], to: .failed)
        try s.execute("""
            UPDATE job_parts SET \(fence.set), error = ?, error_code = NULL, lease_owner = NULL, lease_expires = NULL,
                not_before = ? + 2 * lease_seconds, updated = ?
            WHERE job = ? AND \(fence.where)
            """, JobStore.cancelledPrefix + user, now, now, job)
        let cancel = try JobState.sql(moving: [.queued, .upForRetry, .upForReschedule], to: .failed)
        try s.execute("""
            UPDATE job_parts SET \(cancel.set), error = ?, error_code = NULL, lease_owner = NULL, lease_expires = NULL, updated = ?
            WHERE job = ? AND \(cancel.where)
            """, JobStore.cancelledPrefix + user, now, job)
        try s.execute("UPDATE job_files SET committer = NULL, commit_expires = NULL WHERE job = ? AND state = 'committing'", job)
    }

    /// A retried job's failed parts run again, their attempts counted from one.
    static func retryParts(_ s: any SQLSession, job: Int64, now: Int64) throws {
        try s.execute("UPDATE job_files SET state = 'committing', error = NULL, committer = NULL, commit_attempts = 0, commit_after = 0 WHERE job = ? AND state = 'failed'", job)
        let again = try JobState.sql(moving: [.failed], to: .queued)
        // not_before stays: a part cancelled while running waits out its fence.
        try s.execute("UPDATE job_parts SET \(again.set), attempts = 0, error = NULL, error_code = NULL, updated = ? WHERE job = ? AND \(again.where)",
                      now, job)
    }

    /// A striped job's parts, in order.
    public func parts(_ job: Int64) throws -> [JobPart] {
        try db.read { s in try s.query("SELECT * FROM job_parts WHERE job = ? ORDER BY seq", job).map(JobStore.part) }
    }

    public func stripedFile(_ id: Int64) throws -> StripedFile? {
        try db.read { s in try s.one("SELECT * FROM job_files WHERE id = ?", id).map(JobStore.stripedFile) }
    }

    /// A striped file's ranges, in chunk order.
    public func ranges(file id: Int64) throws -> [ChunkRange] {
        try db.read { s in
            try s.query("SELECT first_chunk, chunk_count FROM job_parts WHERE file = ? ORDER BY first_chunk", id).compactMap {
                let first = Int($0.int("first_chunk")), count = Int($0.int("chunk_count"))
                return try? ChunkRange(first: first, count: count, of: first + count)
            }
        }
    }

    public func stripedFiles(_ job: Int64) throws -> [StripedFile] {
        try db.read { s in try s.query("SELECT * FROM job_files WHERE job = ? ORDER BY id", job).map(JobStore.stripedFile) }
    }

    /// A striped job's progress: parts by state, and bytes and files moved and planned.
    public struct PartProgress: Sendable, Equatable {
        public var byState: [JobState: Int] = [:]
        public var bytes: Int64 = 0
        public var files: Int64 = 0
        public var bytesTotal: Int64 = 0
        public var filesTotal: Int64 = 0
        public var filesCommitted = 0
        public var filesStriped = 0
        /// Striped files whose commit failed for good.
        public var filesFailed = 0
        public var total: Int { byState.values.reduce(0, +) }
        /// Every part succeeded and every striped file is committed.
        public var complete: Bool { total > 0 && byState[.success, default: 0] == total && filesCommitted == filesStriped }
    }

    public func partProgress(_ job: Int64) throws -> PartProgress {
        try db.read { s in
            var p = PartProgress()
            for r in try s.query("""
                SELECT state, COUNT(*) AS n, CAST(SUM(bytes) AS BIGINT) AS b, CAST(SUM(files) AS BIGINT) AS f,
                    CAST(SUM(bytes_total) AS BIGINT) AS bt, CAST(SUM(files_total) AS BIGINT) AS ft
                FROM job_parts WHERE job = ? GROUP BY state
                """, job) {
                if let st = JobState(rawValue: r.text("state")) { p.byState[st, default: 0] += Int(r.int("n")) }
                p.bytes += r.int("b"); p.files += r.int("f"); p.bytesTotal += r.int("bt"); p.filesTotal += r.int("ft")
            }
            if let f = try s.one("SELECT COUNT(*) AS n, SUM(CASE WHEN state = 'committed' THEN 1 ELSE 0 END) AS c, "
                                   + "SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS x FROM job_files WHERE job = ?", job) {
                p.filesStriped = Int(f.int("n"))
                p.filesCommitted = Int(f.int("c"))
                p.filesFailed = Int(f.int("x"))
                // A committed file counts as one file moved (its ranges carry no file count).
                p.files += Int64(p.filesCommitted)
                p.filesTotal += Int64(p.filesStriped)
            }
            return p
        }
    }

    // MARK: rows

    static func part(_ r: SQLRow) -> JobPart {
        let kind = JobPart.Kind(rawValue: r.text("kind")) ?? .files
        let count = Int(r.int("chunk_count"))
        let first = Int(r.int("first_chunk"))
        let range: ChunkRange? = kind == .range ? try? ChunkRange(first: first, count: count, of: first + count) : nil
        let selection = (try? JSONDecoder().decode([String].self, from: Data(r.text("selection").utf8))) ?? []
        return JobPart(id: r.int("id"), job: r.int("job"), seq: Int(r.int("seq")), kind: kind, peer: r.text("peer"), file: r.optionalInt("file"),
                       range: range, selection: selection, bytesTotal: r.int("bytes_total"), filesTotal: r.int("files_total"),
                       state: JobState(rawValue: r.text("state")) ?? .noStatus, attempts: Int(r.int("attempts")),
                       leaseOwner: r.optionalText("lease_owner"), leaseExpires: r.optionalInt("lease_expires"), node: r.optionalText("node"),
                       peerNode: r.optionalText("peer_node"), bytes: r.int("bytes"), files: r.int("files"), error: r.optionalText("error"))
    }

    static func stripedFile(_ r: SQLRow) -> StripedFile {
        StripedFile(id: r.int("id"), job: r.int("job"), path: r.text("path"), size: r.int("size"), mtimeSeconds: r.int("mtime_s"),
                    mtimeNanoseconds: r.int("mtime_ns"), mode: r.int("mode"), chunkBytes: r.int("chunk_bytes"),
                    rangesTotal: Int(r.int("ranges_total")), rangesDone: Int(r.int("ranges_done")),
                    state: StripedFile.CommitState(rawValue: r.text("state")) ?? .open, committer: r.optionalText("committer"),
                    error: r.optionalText("error"))
    }

    /// 32 hex digits per hash (high word, then low).
    static func hex(_ hashes: [ChunkHash]) -> String {
        var out = ""
        out.reserveCapacity(hashes.count * 32)
        for h in hashes {
            for w in [h.high, h.low] {
                let s = String(w, radix: 16)
                out += String(repeating: "0", count: 16 - s.count) + s
            }
        }
        return out
    }

    static func unhex(_ text: String) -> [ChunkHash]? {
        let u = Array(text.utf8)
        guard u.count % 32 == 0 else { return nil }
        var out: [ChunkHash] = []
        out.reserveCapacity(u.count / 32)
        var i = 0
        while i < u.count {
            guard let hi = UInt64(String(decoding: u[i..<i + 16], as: UTF8.self), radix: 16),
                  let lo = UInt64(String(decoding: u[i + 16..<i + 32], as: UTF8.self), radix: 16) else { return nil }
            out.append(ChunkHash(low: lo, high: hi))
            i += 32
        }
        return out
    }
}
