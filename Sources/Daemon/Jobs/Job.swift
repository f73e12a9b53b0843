import Foundation
import Transfer

/// What a user asked for: copy `source` to `destination` (local paths of this center's
/// exports, or ferry://CENTER-ADDRESS/PATH of a peer), with transfer options.
public struct JobRequest: Sendable, Codable, Equatable {
    public var source: String
    public var destination: String
    public var recursive = false
    public var protection = "private"
    public var compress = "auto"
    public var checksum = false
    /// nil: the daemon's per-peer tuning decides.
    public var streams: Int?
    /// Bytes per second on the wire for this job; nil = unlimited.
    public var bwlimit: UInt64?
    public var priority = 0
    /// Jobs that must end `success` (or `skipped`) first.
    public var dependsOn: [Int64] = []
    /// Give up (state `failed`) if not done by then (Unix seconds).
    public var deadline: Int64?
    public var maxAttempts: Int?
    /// Striping across the center's transfer nodes (issue 19): nil, by the daemon's
    /// `stripe_threshold`; true, whenever the center can; false, never.
    public var stripe: Bool?

    public init(source: String, destination: String) {
        self.source = source
        self.destination = destination
    }

    enum CodingKeys: String, CodingKey {
        case source, destination, recursive, protection, compress, checksum, streams, bwlimit, priority, dependsOn, deadline, maxAttempts, stripe
    }

    /// Only `source` and `destination` are required (as the OpenAPI document says); every other
    /// field keeps its default when absent.
    public init(from decoder: Decoder) throws { try self.init(from: decoder, requireSource: true) }

    /// Every field, `source` only when set (a submission of several `sources` has none).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        if !source.isEmpty { try c.encode(source, forKey: .source) }
        try c.encode(destination, forKey: .destination)
        try c.encode(recursive, forKey: .recursive)
        try c.encode(protection, forKey: .protection)
        try c.encode(compress, forKey: .compress)
        try c.encode(checksum, forKey: .checksum)
        try c.encodeIfPresent(streams, forKey: .streams)
        try c.encodeIfPresent(bwlimit, forKey: .bwlimit)
        try c.encode(priority, forKey: .priority)
        try c.encode(dependsOn, forKey: .dependsOn)
        try c.encodeIfPresent(deadline, forKey: .deadline)
        try c.encodeIfPresent(maxAttempts, forKey: .maxAttempts)
        try c.encodeIfPresent(stripe, forKey: .stripe)
    }

    /// `requireSource: false`: a submission of several `sources` (the source is set per job).
    /// Through the API's decoder (`APIJSON`, snake_case) both `depends_on` and the first form's
    /// `dependsOn` arrive here as `dependsOn`; the store writes and reads its own rows with plain
    /// JSONEncoder/JSONDecoder, so rows written before keep reading.
    public init(from decoder: Decoder, requireSource: Bool) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        source = requireSource ? try c.decode(String.self, forKey: .source) : try c.decodeIfPresent(String.self, forKey: .source) ?? ""
        destination = try c.decode(String.self, forKey: .destination)
        recursive = try c.decodeIfPresent(Bool.self, forKey: .recursive) ?? false
        protection = try c.decodeIfPresent(String.self, forKey: .protection) ?? "private"
        compress = try c.decodeIfPresent(String.self, forKey: .compress) ?? "auto"
        checksum = try c.decodeIfPresent(Bool.self, forKey: .checksum) ?? false
        streams = try c.decodeIfPresent(Int.self, forKey: .streams)
        bwlimit = try c.decodeIfPresent(UInt64.self, forKey: .bwlimit)
        priority = try c.decodeIfPresent(Int.self, forKey: .priority) ?? 0
        dependsOn = try c.decodeIfPresent([Int64].self, forKey: .dependsOn) ?? []
        deadline = try c.decodeIfPresent(Int64.self, forKey: .deadline)
        maxAttempts = try c.decodeIfPresent(Int.self, forKey: .maxAttempts)
        stripe = try c.decodeIfPresent(Bool.self, forKey: .stripe)
    }
}

/// A job as the store keeps it.
public struct Job: Sendable, Equatable {
    public var id: Int64
    public var owner: String
    public var request: JobRequest
    public var state: JobState
    public var attempts: Int
    public var maxAttempts: Int
    /// Not to be started before (Unix seconds): backoff after a failure.
    public var notBefore: Int64
    public var leaseOwner: String?
    public var leaseExpires: Int64?
    public var error: String?
    public var bytes: Int64
    public var files: Int64
    public var created: Int64
    public var updated: Int64
    /// The peer the job talks to ("" for local-only jobs): concurrency limits and tuning.
    public var peer: String
    /// The daemon worker that ran its latest attempt (`CENTER-PID/N`).
    public var lastWorker: String? = nil
    /// The engine's code of the failure `error` tells of (`no_space`, `permission`, ...; a
    /// peer's own code when the peer said it), nil when `error` is none or not a transfer's
    /// (cancelled, deadline, a dependency that failed, a lost lease).
    public var errorCode: TransferError.Code? = nil
    /// Cut into parts that the center's nodes run (issue 19, PartStore.swift).
    public var striped = false
    /// A word to its owner (why it was not striped, for one).
    public var note: String? = nil
    /// How many components of its local path, beneath the export, are opened without following
    /// a symbolic link when it runs: down to the limit of the scope its owner's token had at
    /// submit (the runner has no token to ask again). 0 for jobs of older daemons.
    public var linkFree = 0
    /// Made by the daemon itself, not submitted by a user: a replication (`ferry replicate`
    /// into `[daemon] replicas`) or a stage-in's fetch into `[daemon] staging`. Only such a job
    /// may run without its owner's local account (`JobRunner.localAccount`), and only while its
    /// local side lies in those areas. Set where the daemon makes them (`JobStore.submit`'s
    /// `daemonMade`), never from a request: a user's job runs as its owner's mapped account
    /// whatever its path (before, any job whose path lay under those areas ran as root, so a
    /// user with a scope there read and overwrote other users' and root's files through one).
    /// false for jobs of older daemons: they run as their owners.
    public var daemonMade = false
}

/// Which jobs to list.
public struct JobFilter: Sendable {
    public var owner: String?
    public var states: [JobState] = []
    public var afterID: Int64 = 0
    public var limit = 100
    /// Only jobs to or from this peer ("" : local copies).
    public var peer: String?
    /// Only jobs created at or after this Unix time.
    public var since: Int64?

    public init(owner: String? = nil, states: [JobState] = [], afterID: Int64 = 0, limit: Int = 100) {
        self.owner = owner
        self.states = states
        self.afterID = afterID
        self.limit = limit
    }
}

/// How a finished attempt ended, as the runner reports it.
public enum AttemptOutcome: Sendable, Equatable {
    case success(bytes: Int64, files: Int64)
    /// Nothing to do: the destination was already in sync.
    case skipped(files: Int64)
    /// `resumable`: a later attempt continues from the journal (lost connection, timeout).
    /// `code`: the engine's code of the error (the store keeps it beside the message).
    case failure(message: String, resumable: Bool, code: TransferError.Code? = nil)
    /// The daemon is stopping or lost its lease: the job goes back to the queue as is.
    case interrupted
}

public struct JobStoreError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ d: String) { description = d }
}
