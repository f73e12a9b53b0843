import Foundation
import GlobalFS
import Transfer

/// The types of the daemon's REST API, version 1: what the server answers, what the CLI and the
/// federation follower read, and (through `schema`) what the OpenAPI document says. One home:
/// a field is added here, with its schema, and the server, both clients and the document follow.
///
/// Keys are snake_case on the wire (`APIJSON`). Requests (`APIRequest`) are checked against their
/// schemas before they are decoded (`RequestCheck`); the camelCase keys of the API's first form
/// (`dependsOn`, `maxAttempts`) are still accepted for one release; the document names only the
/// snake_case ones.
public enum V1 {}

// MARK: - enums

extension V1 {
    /// `protection`: how a job's data travels (docs/SECURITY.md).
    public static let protections = ["clear", "safe", "private"]
    /// `compress`: auto, off, or a zstd level (the words `CompressionMode` reads: "0" is off).
    public static let compressions = ["auto", "off", "none", "0"] + (1...19).map(String.init)
    public static let jobStates = JobState.allCases.map(\.rawValue)
    /// A staging item's state: ready (stage_in linked), done (stage_out delivered), staging,
    /// failed, skipped (an optional directive that failed).
    public static let stageItemStates = ["ready", "done", "staging", "failed", "skipped"]
}

// MARK: - errors

extension V1 {
    /// Every error answer: RFC 9457 problem details (`application/problem+json`).
    public struct Problem: APIModel {
        public var type: String
        public var title: String
        public var status: Int
        /// For people.
        public var detail: String
        /// For programs: the engine's error code when it has one (auth, permission, path,
        /// no_space, ...), else one per status (invalid_request, unauthenticated, forbidden,
        /// not_found, conflict, too_large, busy, internal).
        public var code: String
        /// The same as `detail` (what clients of the API's first form read).
        public var error: String


        public static var schema: Schema {
            .object(["type": .string("about:blank"), "title": .string("the status's name"), "status": .integer(minimum: 400, maximum: 599),
                     "detail": .string("the reason, for people"), "code": .string("the reason, for programs"),
                     "error": .string("the same as detail")],
                    required: ["type", "title", "status", "detail", "code", "error"], "RFC 9457 problem details", open: true)
        }
    }
}

// MARK: - transfers

extension V1 {
    /// What a job takes besides its source and destination (one schema for one source and for
    /// several).
    static let transferOptions: [(String, Schema)] = [
        ("destination", .string("a local path of this center (/EXPORT/PATH) or ferry://PEER/PATH; with sources: the directory they go into", minLength: 1)),
        ("recursive", .boolean("copy a directory tree")),
        ("protection", .string("how data travels (default private)", enum: protections)),
        ("compress", .string("auto (default), off, or a zstd level", enum: compressions)),
        ("checksum", .boolean("compare by content, not size and time")),
        ("streams", .integer("TCP streams (1 to 64); absent: the per-peer tuning decides", minimum: 1, maximum: 64)),
        ("bwlimit", .integer("bytes per second on the wire; 0 or absent: no limit", minimum: 0)),
        ("priority", .integer("higher first")),
        ("depends_on", .array(.integer(minimum: 1), "jobs of the caller that must end success or skipped first")),
        ("deadline", .integer("give up (failed) if not done by then, Unix seconds", minimum: 0)),
        ("max_attempts", .integer(minimum: 1, maximum: 100)),
        ("stripe", .boolean("split across the center's transfer nodes: true always (when the center can), false never; absent: above the daemon's stripe_threshold")),
    ]

    static func objectSchema(_ props: [(String, Schema)], required: [String], _ description: String) -> Schema {
        var json: [String: Any] = [:]
        var refs: [any APIModel.Type] = []
        for (k, v) in props { json[k] = v.json; refs += v.refs }
        return Schema(["type": "object", "properties": json, "required": required, "additionalProperties": false, "description": description], refs: refs)
    }

    /// POST /api/v1/transfers: one job (`source`), or one job per source into a directory
    /// (`sources`). The body is `JobRequest` (the store's type) or this batch.
    public struct TransferSubmission: APIRequest {
        /// The job's options, with `source` (empty when `sources` is given).
        public var request: JobRequest
        public var sources: [String]?

        public init(request: JobRequest, sources: [String]? = nil) { self.request = request; self.sources = sources }

        public static var noun: String { "a transfer" }

        /// The job's fields are `JobRequest`'s, beside `sources`. Keys, types, ranges and
        /// "source or sources, not both" are the schema's (`RequestCheck`, before this runs).
        public init(from decoder: Decoder) throws {
            sources = try decoder.container(keyedBy: AnyKey.self).decodeIfPresent([String].self, forKey: AnyKey(stringValue: "sources"))
            request = try JobRequest(from: decoder, requireSource: sources == nil)
        }

        public func encode(to encoder: Encoder) throws {
            try request.encode(to: encoder)
            if let sources {
                var c = encoder.container(keyedBy: AnyKey.self)
                try c.encode(sources, forKey: AnyKey(stringValue: "sources"))
            }
        }

        /// One request per job: with `sources`, each into the destination directory under its
        /// own last component (checked: no empty name, `.` or `..`).
        public func requests() throws -> [JobRequest] {
            guard let sources else { return [request] }
            guard (1...10_000).contains(sources.count) else {
                throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "'sources' takes 1 to 10,000 paths, not \(sources.count)"))
            }
            let dest = request.destination
            return try sources.map { src in
                let name = src.split(separator: "/").last.map(String.init) ?? ""
                guard !name.isEmpty, name != "..", name != "." else {
                    throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "source '\(src)' has no name to copy under"))
                }
                var one = request
                one.source = src
                one.destination = (dest.hasSuffix("/") ? dest : dest + "/") + name
                return one
            }
        }

        public static var schema: Schema {
            .oneOf([objectSchema([("source", .string("a local path of this center (/EXPORT/PATH) or ferry://PEER/PATH", minLength: 1))] + transferOptions,
                                 required: ["source", "destination"], "one job"),
                    objectSchema([("sources", .array(.string(minLength: 1), minItems: 1, maxItems: 10_000))] + transferOptions,
                                 required: ["sources", "destination"], "one job per source, each into the destination directory under its own name")])
        }
    }

    /// A running job's live counters (from the runner's memory).
    public struct Progress: APIModel {
        public var bytesDone: Int64
        public var bytesTotal: Int64
        public var filesDone: Int64
        public var filesTotal: Int64
        public var wireBytes: Int64
        public var seconds: Double

        public init(_ p: TransferProgress.Snapshot) {
            bytesDone = Int64(p.bytesDone); bytesTotal = Int64(p.bytesTotal); filesDone = Int64(p.filesDone)
            filesTotal = Int64(p.filesTotal); wireBytes = Int64(p.wireBytes); seconds = p.seconds
        }

        public static var schema: Schema {
            .object(["bytes_done": .integer(minimum: 0), "bytes_total": .integer(minimum: 0), "files_done": .integer(minimum: 0),
                     "files_total": .integer(minimum: 0), "wire_bytes": .integer(minimum: 0), "seconds": .number()],
                    required: ["bytes_done", "bytes_total", "files_done", "files_total", "wire_bytes", "seconds"])
        }
    }

    /// A job as the API shows it.
    public struct Transfer: APIModel {
        public var id: Int64
        public var owner: String
        public var state: JobState
        public var source: String
        public var destination: String
        public var attempts: Int
        public var maxAttempts: Int
        public var bytes: Int64
        public var files: Int64
        public var created: Int64
        public var updated: Int64
        public var priority: Int
        public var dependsOn: [Int64]
        public var peer: String
        public var error: String?
        /// The engine's code of that error (`no_space`, `permission`, ...; the peer's own when
        /// the peer said it): for programs, which should not parse `error`. Absent when the
        /// error is not a transfer's (cancelled, deadline, a failed dependency).
        public var errorCode: String?
        /// The platform's eleven states have no "cancelled": a cancelled job is `failed`,
        /// marked `cancelled: true` (its error says by whom), so neither a person nor a script
        /// takes it for a transfer that broke.
        public var cancelled: Bool?
        public var notBefore: Int64?
        public var worker: String?
        public var progress: Progress?
        /// Cut into parts run by the center's transfer nodes (issue 19), and how they stand.
        public var striped: Bool?
        public var parts: Parts?
        /// A word from the daemon (why a job that asked for striping was not striped).
        public var note: String?

        public init(_ j: Job, progress: TransferProgress.Snapshot? = nil, parts: JobStore.PartProgress? = nil) {
            striped = j.striped ? true : nil
            note = j.note
            self.parts = parts.map(Parts.init)
            id = j.id; owner = j.owner; state = j.state; source = j.request.source; destination = j.request.destination
            attempts = j.attempts; maxAttempts = j.maxAttempts; bytes = j.bytes; files = j.files; created = j.created; updated = j.updated
            priority = j.request.priority; dependsOn = j.request.dependsOn; peer = j.peer; error = j.error
            errorCode = j.error == nil ? nil : j.errorCode?.name
            if j.state == .failed, j.error?.hasPrefix(JobStore.cancelledPrefix) == true { cancelled = true }
            notBefore = j.notBefore > 0 ? j.notBefore : nil
            worker = j.lastWorker
            self.progress = j.state == .running ? progress.map(Progress.init) : nil
        }

        /// The state as people read it: `failed (cancelled)` for a cancelled job.
        public var stateText: String { state.rawValue + (cancelled == true ? " (cancelled)" : "") }

        public static var schema: Schema {
            .object(["id": .integer(minimum: 1), "owner": .string("who submitted it: NAME for a token of this center, NAME@CENTER for a token of another trusted center"), "state": .string("one of the platform's eleven states", enum: jobStates),
                     "source": .string(), "destination": .string(), "attempts": .integer(minimum: 0), "max_attempts": .integer(minimum: 1),
                     "bytes": .integer(minimum: 0), "files": .integer(minimum: 0), "created": .integer("Unix seconds"),
                     "updated": .integer("Unix seconds"), "priority": .integer(), "depends_on": .array(.integer()),
                     "peer": .string("the peer the job talks to (empty: local only)"), "error": .string(),
                     "error_code": .string("the engine's code of the error, for programs (the peer's own when it said it)",
                                           enum: TransferError.Code.all.map(\.name)),
                     "cancelled": .boolean("a cancelled job: state failed, cancelled true"), "not_before": .integer("Unix seconds"),
                     "worker": .string("the daemon worker of its latest attempt"), "progress": .ref(Progress.self),
                     "striped": .boolean("cut into parts that the center's transfer nodes run"), "parts": .ref(Parts.self),
                     "note": .string("a word from the daemon, such as why a job was not striped")],
                    required: ["id", "owner", "state", "source", "destination", "attempts", "max_attempts", "bytes", "files", "created", "updated",
                               "priority", "depends_on", "peer"])
        }
    }

    /// A striped job's parts: how many stand in each state, and the bytes and files they
    /// moved of those planned (a striped file counts once it is committed).
    public struct Parts: APIModel {
        public var queued: Int
        public var running: Int
        public var success: Int
        public var failed: Int
        public var total: Int
        public var bytesDone: Int64
        public var bytesTotal: Int64
        public var filesDone: Int64
        public var filesTotal: Int64

        public init(_ p: JobStore.PartProgress) {
            queued = p.byState[.queued, default: 0] + p.byState[.upForRetry, default: 0] + p.byState[.upForReschedule, default: 0]
            running = p.byState[.running, default: 0]
            success = p.byState[.success, default: 0]
            failed = p.byState[.failed, default: 0]
            total = p.total
            bytesDone = p.bytes; bytesTotal = p.bytesTotal; filesDone = p.files; filesTotal = p.filesTotal
        }

        public static var schema: Schema {
            .object(["queued": .integer("waiting, backing off or taken back", minimum: 0), "running": .integer(minimum: 0),
                     "success": .integer(minimum: 0), "failed": .integer(minimum: 0), "total": .integer(minimum: 0),
                     "bytes_done": .integer(minimum: 0), "bytes_total": .integer(minimum: 0), "files_done": .integer(minimum: 0),
                     "files_total": .integer(minimum: 0)],
                    required: ["queued", "running", "success", "failed", "total", "bytes_done", "bytes_total", "files_done", "files_total"])
        }
    }

    /// Several jobs made by one submission (`sources`).
    public struct TransferBatch: APIModel {
        public var transfers: [Transfer]
        public static var schema: Schema { .object(["transfers": .array(.ref(Transfer.self))], required: ["transfers"]) }
    }

    /// One page of the caller's jobs, by id.
    public struct TransferPage: APIModel {
        public var transfers: [Transfer]
        /// Whether another page follows; then `nextAfter` is its cursor (`?after=`).
        public var more: Bool
        public var nextAfter: Int64?

        public init(transfers: [Transfer], more: Bool, nextAfter: Int64?) {
            self.transfers = transfers; self.more = more; self.nextAfter = nextAfter
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(transfers, forKey: .transfers)
            try c.encode(more, forKey: .more)
            try c.encode(nextAfter, forKey: .nextAfter)  // null, not absent, on the last page
        }

        public static var schema: Schema {
            .object(["transfers": .array(.ref(Transfer.self)), "more": .boolean("whether another page follows"),
                     "next_after": Schema.integer("the next page's ?after=").nullable],
                    required: ["transfers", "more", "next_after"])
        }
    }
}

// MARK: - health

extension V1 {
    public struct PeerHealth: APIModel {
        public var streams: Int
        public var active: Int
        public var rateBytesPerSecond: Int64
        public var errors: Int
        public static var schema: Schema {
            .object(["streams": .integer(minimum: 0), "active": .integer(minimum: 0), "rate_bytes_per_second": .integer(minimum: 0),
                     "errors": .integer(minimum: 0)], required: ["streams", "active", "rate_bytes_per_second", "errors"])
        }
    }

    /// Unauthenticated liveness: only what the configuration names.
    public struct Health: APIModel {
        public var status: String
        public var center: String
        public var peers: [String: PeerHealth]
        /// The center's transfer server(s), HOST:PORT.
        public var transfer: [String]
        /// Jobs by state (states with none are absent).
        public var jobs: [String: Int]
        public static var schema: Schema {
            .object(["status": .string(enum: ["ok"]), "center": .string(), "peers": .map(.ref(PeerHealth.self)),
                     "transfer": .array(.string()), "jobs": .map(.integer(minimum: 0))],
                    required: ["status", "center", "peers", "transfer", "jobs"])
        }
    }
}

extension V1 {
    public struct ReadinessCheck: APIModel {
        /// "database", "export NAME" or "peer NAME".
        public var name: String
        public var ok: Bool
        public var detail: String
        public static var schema: Schema {
            .object(["name": .string(), "ok": .boolean(), "detail": .string()], required: ["name", "ok", "detail"])
        }
    }

    /// Readiness: every check, and "degraded" when only peers fail (this center still serves).
    public struct Readiness: APIModel {
        public var status: String
        public var checks: [ReadinessCheck]
        public static var schema: Schema {
            .object(["status": .string(enum: ["ready", "degraded"]), "checks": .array(.ref(ReadinessCheck.self))], required: ["status", "checks"])
        }
    }
}

// MARK: - Global Files

extension Entry: APIModel {
    public static var schemaName: String { "Entry" }
    public static var schema: Schema {
        .object(["dataset": .integer(), "dir": .string("the directory within the dataset ('' at its top)"), "name": .string(),
                 "kind": .string("f file, d directory, l symbolic link", enum: EntryKind.allCases.map(\.rawValue)),
                 "size": .integer(minimum: 0), "mtime_ns": .integer(), "mode": .integer(minimum: 0), "chunk_size": .integer(minimum: 0),
                 "digest": .string("XXH3-128 of the content, when registered with hash"), "target": .string("a link's target")],
                required: ["dataset", "dir", "name", "kind", "size", "mtime_ns", "mode", "chunk_size"])
    }
}

extension RemovedEntry: APIModel {
    public static var schemaName: String { "RemovedEntry" }
    public static var schema: Schema {
        .object(["seq": .integer(minimum: 1), "dir": .string(), "name": .string()], required: ["seq", "dir", "name"],
                "a tombstone: the entry, and for a directory everything below it, removed at seq")
    }
}

extension EntryCursor: APIModel {
    public static var schemaName: String { "EntryCursor" }
    public static var schema: Schema {
        .object(["seq": .integer(minimum: 0), "dir": .string(), "name": .string()], required: ["seq", "dir", "name"],
                "the next page's after_seq, after_dir and after_name")
    }
}

extension Dataset: APIModel {
    public static var schemaName: String { "Dataset" }
    static var properties: [(String, Schema)] {
        [("id", .integer()), ("center", .string()), ("name", .string()), ("version", .string()), ("owner", .string()),
         ("description", .string()), ("license", .string()), ("readers", .array(.string(), "user names, or * for everyone")),
         ("root", .string("/EXPORT/PATH at its center")), ("remote_id", .integer("its id at its own center (a mirror)")),
         ("file_count", .integer(minimum: 0)), ("bytes", .integer(minimum: 0)), ("created", .integer()), ("updated", .integer())]
    }
    static let requiredKeys = ["id", "center", "name", "version", "owner", "description", "license", "readers", "file_count", "bytes", "created", "updated"]
    public static var schema: Schema { V1.objectSchema(properties, required: requiredKeys, "a dataset") }
}

extension Replica: APIModel {
    public static var schemaName: String { "Replica" }
    public static var schema: Schema {
        .object(["dataset": .integer(), "center": .string(), "state": .string(enum: ReplicaState.allCases.map(\.rawValue)), "path": .string(),
                 "files": .integer(minimum: 0), "bytes": .integer(minimum: 0), "verified_at": .integer(), "job": .integer()],
                required: ["dataset", "center", "state", "path", "files", "bytes"])
    }
}

extension Change: APIModel {
    public static var schemaName: String { "Change" }
    public static var schema: Schema {
        .object(["seq": .integer(), "center": .string(), "dataset": .integer(), "kind": .string(enum: ChangeKind.allCases.map(\.rawValue)),
                 "at": .integer()], required: ["seq", "center", "dataset", "kind", "at"])
    }
}

extension RegisterSummary: APIModel {
    public static var schemaName: String { "RegisterSummary" }
    public static var schema: Schema {
        .object(["dataset": .integer(), "added": .integer(minimum: 0), "changed": .integer(minimum: 0), "removed": .integer(minimum: 0),
                 "unchanged": .integer(minimum: 0), "hashed": .integer(minimum: 0), "files": .integer(minimum: 0), "bytes": .integer(minimum: 0),
                 "skipped": .integer(minimum: 0), "unreadable": .integer(minimum: 0), "first_error": .string(), "seconds": .number()],
                required: ["dataset", "added", "changed", "removed", "unchanged", "hashed", "files", "bytes", "skipped", "unreadable", "seconds"])
    }
}

extension DiskUsage: APIModel {
    public static var schemaName: String { "DiskUsage" }
    public static var schema: Schema {
        .object(["files": .integer(minimum: 0), "bytes": .integer(minimum: 0), "directories": .integer(minimum: 0)],
                required: ["files", "bytes", "directories"])
    }
}

extension V1 {
    /// POST /api/v1/catalog/register.
    public struct RegisterRequest: APIRequest {
        public var path: String
        public var dataset: String
        public var readers: [String]?
        public var description: String?
        public var license: String?
        public var hash: Bool?

        public init(path: String, dataset: String) { self.path = path; self.dataset = dataset }

        public static var noun: String { "a registration" }

        public static var schema: Schema {
            .object(["path": .string("/EXPORT/PATH, a directory of this center", minLength: 1),
                     "dataset": .string("NAME[@VERSION]", minLength: 1), "readers": .array(.string(), "user names, * for everyone"),
                     "description": .string(), "license": .string(), "hash": .boolean("record each file's digest")],
                    required: ["path", "dataset"])
        }
    }

    /// A dataset with whether its center is down (its last known state is shown).
    public struct DatasetView: APIModel {
        public var dataset: Dataset
        public var stale: Bool

        public init(dataset: Dataset, stale: Bool) { self.dataset = dataset; self.stale = stale }

        enum Key: String, CodingKey { case stale }
        public init(from decoder: Decoder) throws {
            dataset = try Dataset(from: decoder)
            stale = try decoder.container(keyedBy: Key.self).decodeIfPresent(Bool.self, forKey: .stale) ?? false
        }
        public func encode(to encoder: Encoder) throws {
            try dataset.encode(to: encoder)
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(stale, forKey: .stale)
        }
        public static var schemaName: String { "DatasetView" }
        public static var schema: Schema {
            V1.objectSchema(Dataset.properties + [("stale", .boolean("its center is down: this is its last known state"))],
                            required: Dataset.requiredKeys + ["stale"], "a dataset as a user sees it")
        }
    }

    public struct DatasetList: APIModel {
        public var datasets: [DatasetView]
        public static var schema: Schema { .object(["datasets": .array(.ref(DatasetView.self))], required: ["datasets"]) }
    }

    /// A page of entries (ls, find; the federation's pages say no `more`: a follower reads
    /// until a short page). Written by `DaemonAPI.listPage` without JSONEncoder (speed); this
    /// type is what clients decode and what the document says.
    public struct EntryPage: APIModel {
        public var dataset: String
        public var stale: Bool?
        public var more: Bool?
        public var nextAfter: String?
        public var entries: [Entry]
        public static var schema: Schema {
            .object(["dataset": .string("NAME[@VERSION]"), "stale": .boolean(), "more": .boolean("whether another page follows"),
                     "next_after": Schema.string("the next page's ?after=").nullable, "entries": .array(.ref(Entry.self))],
                    required: ["dataset", "next_after", "entries"])
        }
    }

    /// A replica as `stat` shows it: where it is, whether a copy would use it, and why.
    public struct RankedReplica: APIModel {
        public var center: String
        public var state: String
        public var path: String
        public var files: Int64
        public var bytes: Int64
        public var verifiedAt: Int64?
        /// The center's transfer server (HOST:PORT), and the replica as a ferry:// URL there.
        public var address: String?
        public var url: String?
        public var reachable: Bool
        public var lastSync: Int64?
        public var rateBytesPerSecond: Int64?
        /// 1 = the one a copy reads from; nil = not usable.
        public var rank: Int?
        public var reason: String

        public static var schema: Schema {
            .object(["center": .string(), "state": .string(enum: ReplicaState.allCases.map(\.rawValue)), "path": .string(),
                     "files": .integer(minimum: 0), "bytes": .integer(minimum: 0), "verified_at": .integer(), "address": .string(),
                     "url": .string(), "reachable": .boolean(), "last_sync": .integer(), "rate_bytes_per_second": .integer(minimum: 0),
                     "rank": .integer("1: the replica a copy reads from; absent: not usable", minimum: 1), "reason": .string()],
                    required: ["center", "state", "path", "files", "bytes", "reachable", "reason"])
        }
    }

    public struct StatAnswer: APIModel {
        public var dataset: Dataset
        public var entry: Entry?
        /// In the order a copy tries them (`rankReplicas`), each with the reason.
        public var replicas: [RankedReplica]
        /// The dataset's center is down: this is its last known state.
        public var stale: Bool
        public static var schema: Schema {
            .object(["dataset": .ref(Dataset.self), "entry": .ref(Entry.self), "replicas": .array(.ref(RankedReplica.self)), "stale": .boolean()],
                    required: ["dataset", "replicas", "stale"])
        }
    }

    /// One attempt of a job: its number (from 1; again from 1 after a retry), the worker that
    /// ran it, when it ended (Unix seconds), the state it moved the job to, its error and code.
    public struct Attempt: APIModel {
        public var attempt: Int
        public var worker: String
        public var ended: Int64
        public var state: JobState
        public var error: String?
        public var errorCode: String?
        public var bytes: Int64
        public static var schema: Schema {
            .object(["attempt": .integer(minimum: 0), "worker": .string(), "ended": .integer("Unix seconds"),
                     "state": .string("the state the attempt moved the job to", enum: V1.jobStates),
                     "error": .string(), "error_code": .string(), "bytes": .integer(minimum: 0)],
                    required: ["attempt", "worker", "ended", "state", "bytes"])
        }
    }

    /// GET /api/v1/transfers/{id}/attempts.
    public struct AttemptList: APIModel {
        public var job: Int64
        public var attempts: [Attempt]
        public static var schema: Schema {
            .object(["job": .integer(), "attempts": .array(.ref(Attempt.self), "oldest first (the last 100)")], required: ["job", "attempts"])
        }
    }

    /// Bytes moved to or from one peer ("": local copies) within one span starting at `start`
    /// (Unix seconds): by day, the bytes of jobs that ended in success that day; in the last
    /// hour, the bytes the runner measured moving in each minute, while jobs ran.
    public struct MovedBytes: APIModel {
        public var start: Int64
        public var peer: String
        public var bytes: Int64
        public var jobs: Int64
        public static var schema: Schema {
            .object(["start": .integer("Unix seconds: the span's start"), "peer": .string("the peer; empty for copies within this center"),
                     "bytes": .integer(), "jobs": .integer()], required: ["start", "peer", "bytes", "jobs"])
        }
    }

    /// The staging cache's use as every user's overview shows it: totals only (the entries,
    /// their sources and pins are the operators' `GET /stage/cache`).
    public struct StagingUse: APIModel {
        public var readyBytes: Int64
        public var quota: Int64
        public var entries: Int64
        public var pinned: Int64
        /// Evictions in the last 24 hours.
        public var evictedDay: Int64
        public static var schema: Schema {
            .object(["ready_bytes": .integer(minimum: 0), "quota": .integer(minimum: 0), "entries": .integer("staged entries", minimum: 0),
                     "pinned": .integer("entries a scheduler job pins", minimum: 0), "evicted_day": .integer("evictions in the last 24 hours", minimum: 0)],
                    required: ["ready_bytes", "quota", "entries", "pinned", "evicted_day"])
        }
    }

    /// GET /api/v1/stats.
    public struct TransferStats: APIModel {
        public var days: [MovedBytes]
        public var lastHour: [MovedBytes]
        public var spanSeconds: Int64
        /// nil when this center does no prestaging.
        public var staging: StagingUse?
        public static var schema: Schema {
            .object(["days": .array(.ref(MovedBytes.self), "by day (UTC) of the jobs that ended in success, oldest first"),
                     "last_hour": .array(.ref(MovedBytes.self), "bytes the runner measured moving, by span, oldest first (jobs: how many moved bytes in it)"),
                     "span_seconds": .integer("the length of last_hour's spans (60)"),
                     "staging": .ref(StagingUse.self)], required: ["days", "last_hour", "span_seconds"])
        }
    }

    public struct CenterView: APIModel {
        public var name: String
        public var api: String
        public var lastSeq: Int64
        public var lastSync: Int64
        public var reachable: Bool
        public init(_ c: GlobalFS.Center) { name = c.name; api = c.api; lastSeq = c.lastSeq; lastSync = c.lastSync; reachable = c.reachable }
        public static var schema: Schema {
            .object(["name": .string(), "api": .string(), "last_seq": .integer(), "last_sync": .integer("Unix seconds of the last good sync"),
                     "reachable": .boolean()], required: ["name", "api", "last_seq", "last_sync", "reachable"])
        }
    }

    public struct CentersAnswer: APIModel {
        public var center: String
        public var centers: [CenterView]
        public static var schema: Schema {
            .object(["center": .string("this center"), "centers": .array(.ref(CenterView.self), "the peers it follows")], required: ["center", "centers"])
        }
    }

    /// POST /api/v1/catalog/replicate.
    public struct ReplicateRequest: APIRequest {
        public var path: String
        /// Bytes per second; 0 or nil: no limit. Unsigned, as the schema says (a negative
        /// limit is a 400, it was once read as none).
        public var bwlimit: UInt64?
        public init(path: String, bwlimit: UInt64? = nil) { self.path = path; self.bwlimit = bwlimit }
        public static var noun: String { "a replication" }
        public static var schema: Schema {
            .object(["path": .string("gfs://CENTER/DATASET[@VERSION]", minLength: 1), "bwlimit": .integer("bytes per second; 0 or absent: no limit", minimum: 0)],
                    required: ["path"])
        }
    }

    public struct ReplicateAnswer: APIModel {
        /// staging (a job copies it) or complete.
        public var state: String
        public var center: String
        public var path: String
        public var job: Int64?
        /// The center copied from.
        public var from: String?
        public var message: String
        public static var schema: Schema {
            .object(["state": .string(enum: ["staging", "complete"]), "center": .string(), "path": .string(), "job": .integer(),
                     "from": .string("the center copied from"), "message": .string()],
                    required: ["state", "center", "path", "message"])
        }
    }

    /// GET /api/v1/federation/changes.
    public struct FeedPage: APIModel {
        public var changes: [Change]
        public var lastSeq: Int64
        public static var schema: Schema {
            .object(["changes": .array(.ref(Change.self)), "last_seq": .integer("the feed's last sequence number")], required: ["changes", "last_seq"])
        }
    }

    /// GET /api/v1/federation/entry-changes: one page of what changed in a dataset after a
    /// follower's last applied sequence (GlobalFS `EntryFeed.swift`), or `resync`: read it whole.
    public struct EntryChanges: APIModel {
        public var dataset: String
        public var entrySeq: Int64
        public var floor: Int64
        public var resync: Bool
        public var entries: [Entry]
        public var removed: [RemovedEntry]
        public var next: EntryCursor?
        public static var schema: Schema {
            .object(["dataset": .string("NAME[@VERSION]"), "entry_seq": .integer("the dataset's entry sequence now: the follower's upto", minimum: 0),
                     "floor": .integer("tombstones at or below it were pruned: a follower behind it reads the dataset whole", minimum: 0),
                     "resync": .boolean("since is 0, below the floor or beyond entry_seq: read the dataset whole (federation/entries); nothing else is sent"),
                     "entries": .array(.ref(Entry.self)), "removed": .array(.ref(RemovedEntry.self)),
                     "next": Schema.ref(EntryCursor.self).nullable],  // absent: the last page
                    required: ["dataset", "entry_seq", "floor", "resync", "entries", "removed"])
        }
    }

    public struct HeldReplica: APIModel {
        public var dataset: Dataset
        public var replica: Replica
        public static var schema: Schema {
            .object(["dataset": .ref(Dataset.self), "replica": .ref(Replica.self)], required: ["dataset", "replica"])
        }
    }

    public struct HeldReplicas: APIModel {
        public var replicas: [HeldReplica]
        public static var schema: Schema { .object(["replicas": .array(.ref(HeldReplica.self))], required: ["replicas"]) }
    }
}

// MARK: - prestaging

extension StageDirective: APIModel {
    public static var schemaName: String { "StageDirective" }
    public static var noun: String { "a directive" }
    public static var schema: Schema {
        .object(["direction": .string(enum: ["stage_in", "stage_out"]), "source": .string(), "destination": .string(),
                 "optional": .boolean(), "checksum": .boolean(), "line": .integer("its line in the job script", minimum: 0)],
                required: ["direction", "source", "destination", "optional", "checksum", "line"])
    }
}

extension StagingCache.Entry: APIModel {
    public static var schemaName: String { "StagingEntry" }
    public static var schema: Schema {
        .object(["id": .integer(), "key": .string(), "source": .string(), "path": .string(), "state": .string(enum: ["staging", "ready", "failed"]),
                 "bytes": .integer(minimum: 0), "job": .integer(), "error": .string(), "created": .integer(), "last_used": .integer(),
                 "pins": .array(.string(), "scheduler jobs that use it")],
                required: ["id", "key", "source", "path", "state", "bytes", "created", "last_used", "pins"])
    }
}

extension StagingCache.Eviction: APIModel {
    public static var schemaName: String { "StagingEviction" }
    public static var schema: Schema {
        .object(["source": .string(), "bytes": .integer(minimum: 0), "last_used": .integer("Unix seconds"), "at": .integer("Unix seconds: when it was evicted"),
                 "reason": .string()], required: ["source", "bytes", "last_used", "at", "reason"])
    }
}

extension StagingCache.Outbound: APIModel {
    public static var schemaName: String { "StageOut" }
    public static var schema: Schema {
        .object(["scheduler_job": .string(), "index": .integer(minimum: 0), "source": .string(), "destination": .string(),
                 "optional": .boolean(), "job": .integer(), "error": .string()],
                required: ["scheduler_job", "index", "source", "destination", "optional"])
    }
}

extension V1 {
    /// POST /api/v1/stage/in and /stage/out (the scheduler's hook).
    public struct StageRequest: APIRequest {
        public var job: String
        public var uid: UInt32?
        public var gid: UInt32?
        public var user: String
        public var directives: [StageDirective]
        /// Start failed transfers again (absent: no, report them).
        public var retry: Bool?

        public init(job: String, uid: UInt32?, gid: UInt32?, user: String, directives: [StageDirective], retry: Bool?) {
            self.job = job; self.uid = uid; self.gid = gid; self.user = user; self.directives = directives; self.retry = retry
        }

        public static var noun: String { "a stage request" }

        public static var schema: Schema {
            .object(["job": .string("the scheduler's job id", minLength: 1), "uid": .integer(minimum: 0, maximum: 4_294_967_295),
                     "gid": .integer(minimum: 0, maximum: 4_294_967_295), "user": .string(minLength: 1),
                     "directives": .array(.ref(StageDirective.self), maxItems: 10_000),
                     "retry": .boolean("start failed transfers again (default false: report them)")],
                    required: ["job", "user", "directives"])
        }
    }

    public struct StageItem: APIModel {
        public var line: Int
        public var direction: String
        public var source: String
        public var destination: String
        public var optional: Bool
        public var state: String
        public var error: String?
        public var job: Int64?
        public var entry: Int64?
        public static var schema: Schema {
            .object(["line": .integer(), "direction": .string(enum: ["stage_in", "stage_out"]), "source": .string(), "destination": .string(),
                     "optional": .boolean(), "state": .string(enum: stageItemStates), "error": .string(), "job": .integer(),
                     "entry": .integer("the staging cache entry")],
                    required: ["line", "direction", "source", "destination", "optional", "state"])
        }
    }

    public struct StageItems: APIModel {
        public var items: [StageItem]
        public static var schema: Schema { .object(["items": .array(.ref(StageItem.self))], required: ["items"]) }
    }

    public struct TeardownRequest: APIRequest {
        public var job: String
        public var hurry: Bool?
        public init(job: String, hurry: Bool? = nil) { self.job = job; self.hurry = hurry }
        public static var noun: String { "a teardown" }
        public static var schema: Schema {
            .object(["job": .string(minLength: 1), "hurry": .boolean()], required: ["job"])
        }
    }

    public struct TeardownAnswer: APIModel {
        public var job: String
        public var unpinned: Int
        public var linksRemoved: Int
        public var transfersCancelled: Int
        public static var schema: Schema {
            .object(["job": .string(), "unpinned": .integer(minimum: 0), "links_removed": .integer(minimum: 0), "transfers_cancelled": .integer(minimum: 0)],
                    required: ["job", "unpinned", "links_removed", "transfers_cancelled"])
        }
    }

    public struct SweepRequest: APIRequest {
        public var keepJobs: [String]?
        public var maxPinHours: Int64?
        public init(keepJobs: [String]?, maxPinHours: Int64?) { self.keepJobs = keepJobs; self.maxPinHours = maxPinHours }
        public static var noun: String { "a sweep" }
        public static var schema: Schema {
            .object(["keep_jobs": .array(.string(), "the scheduler's jobs that still exist (absent: do not judge by it)"),
                     "max_pin_hours": .integer(minimum: 0, maximum: 1_000_000)])
        }
    }

    public struct SweepAnswer: APIModel {
        public var pinsExpired: [String]
        public var transfersCancelled: Int
        public var strayDirectories: [String]
        public static var schema: Schema {
            .object(["pins_expired": .array(.string()), "transfers_cancelled": .integer(minimum: 0), "stray_directories": .array(.string())],
                    required: ["pins_expired", "transfers_cancelled", "stray_directories"])
        }
    }

    public struct StageStatus: APIModel {
        public var job: String
        public var entries: [StagingCache.Entry]
        /// [link path, its target].
        public var links: [[String]]
        public var stageOut: [StagingCache.Outbound]
        public static var schema: Schema {
            .object(["job": .string(), "entries": .array(.ref(StagingCache.Entry.self)), "links": .array(.array(.string(), minItems: 2, maxItems: 2)),
                     "stage_out": .array(.ref(StagingCache.Outbound.self))], required: ["job", "entries", "links", "stage_out"])
        }
    }

    public struct CacheView: APIModel {
        public var root: String
        public var quota: Int64
        public var readyBytes: Int64
        public var entries: [StagingCache.Entry]
        /// The last evictions, newest first (at most 100).
        public var evictions: [StagingCache.Eviction]
        public static var schema: Schema {
            .object(["root": .string(), "quota": .integer(minimum: 0), "ready_bytes": .integer(minimum: 0), "entries": .array(.ref(StagingCache.Entry.self)),
                     "evictions": .array(.ref(StagingCache.Eviction.self), "the last evictions, newest first (at most 100)")],
                    required: ["root", "quota", "ready_bytes", "entries", "evictions"])
        }
    }
}
