/// The states of a transfer job, exactly as the platform shows them, and the transitions
/// between them. A job moves only along these edges; the store refuses any other move.
///
///     no_status ──submit──▶ scheduled ──dependencies done──▶ queued ──claimed──▶ running
///         │                    │  └──a dependency failed──▶ upstream_failed
///         │                    └──not before / concurrency limit──▶ deferred ──time──▶ queued
///     running ──ok──▶ success          running ──nothing to do──▶ skipped
///     running ──resumable error, attempts left──▶ up_for_retry ──backoff over──▶ queued
///     running ──error, no attempts left / not resumable / deadline passed──▶ failed
///     running ──daemon stopped or lease lost──▶ up_for_reschedule ──▶ queued
///     failed / upstream_failed ──retry (user)──▶ queued, or scheduled while it has dependencies
///     deferred ──a dependency failed──▶ upstream_failed           any unfinished ──cancel──▶ failed
///
/// `JobStore` writes a state only through `sql(moving:to:)` (bulk moves: every source state is
/// checked) or `checkMove(to:)` (one job): a move the table lacks is a `JobStoreError`, never
/// a silent write.
public enum JobState: String, CaseIterable, Sendable, Codable {
    case noStatus = "no_status"
    case scheduled
    case queued
    case running
    case success
    case failed
    case upForRetry = "up_for_retry"
    case upForReschedule = "up_for_reschedule"
    case upstreamFailed = "upstream_failed"
    case skipped
    case deferred

    /// Finished: nothing more happens unless a user retries.
    public var isFinal: Bool {
        switch self {
        case .success, .failed, .upstreamFailed, .skipped: true
        default: false
        }
    }

    /// A dependency in this state lets its dependents run.
    public var satisfiesDependents: Bool { self == .success || self == .skipped }

    static let edges: [JobState: Set<JobState>] = [
        .noStatus: [.scheduled, .queued, .failed],
        .scheduled: [.queued, .deferred, .upstreamFailed, .failed],
        .deferred: [.queued, .failed, .upstreamFailed],
        .queued: [.running, .deferred, .failed, .upstreamFailed],
        .running: [.success, .skipped, .upForRetry, .failed, .upForReschedule],
        .upForRetry: [.queued, .failed],
        .upForReschedule: [.queued, .failed],
        .failed: [.queued, .scheduled],
        .upstreamFailed: [.queued, .scheduled],
        .success: [],
        .skipped: [],
    ]

    public func canMove(to next: JobState) -> Bool { JobState.edges[self]?.contains(next) ?? false }

    /// A striped job's parts (PartStore.swift) move along the same edges and one more: a
    /// range that succeeded goes back to `queued` when its file's commit finds it missing on
    /// the destination or the file's digest wrong. A job's success stays final.
    static let partEdges: [JobState: Set<JobState>] = [.success: [.queued]]

    public func canMovePart(to next: JobState) -> Bool { canMove(to: next) || (JobState.partEdges[self]?.contains(next) ?? false) }

    /// `sql(moving:to:)` for parts: checked against the table and `partEdges`.
    public static func sql(movingParts from: [JobState], to: JobState) throws -> (set: String, where: String) {
        precondition(!from.isEmpty)
        for f in from where !f.canMovePart(to: to) {
            throw JobStoreError("illegal part state change \(f.rawValue) → \(to.rawValue) (not in JobState's transition table)")
        }
        return ("state = '\(to.rawValue)'", "state IN (" + from.map { "'\($0.rawValue)'" }.joined(separator: ", ") + ")")
    }

    /// Throws unless the table has the edge from this state to `next`.
    public func checkMove(to next: JobState) throws {
        guard canMove(to: next) else {
            throw JobStoreError("illegal job state change \(rawValue) → \(next.rawValue) (not in JobState's transition table)")
        }
    }

    /// SQL of a bulk move that the table allows from every state of `from`: `set` is
    /// `state = 'TO'`, `where` is `state IN ('FROM', ...)` (raw values of this enum, never
    /// user text). Throws for a move the table lacks.
    public static func sql(moving from: [JobState], to: JobState) throws -> (set: String, where: String) {
        precondition(!from.isEmpty)
        for f in from { try f.checkMove(to: to) }
        return ("state = '\(to.rawValue)'", "state IN (" + from.map { "'\($0.rawValue)'" }.joined(separator: ", ") + ")")
    }
}

/// When a failed attempt is tried again: exponential backoff with jitter, so that many jobs
/// failing together (a peer restarting) do not all come back at the same second.
public struct RetryPolicy: Sendable {
    public var maxAttempts = 5
    public var baseSeconds = 5.0
    public var capSeconds = 600.0
    /// ± this fraction of the delay, uniformly.
    public var jitter = 0.2

    public init() {}

    /// Seconds to wait after failed attempt number `attempt` (1-based).
    public func delay(afterAttempt attempt: Int, random: Double = Double.random(in: 0..<1)) -> Double {
        let exp = min(capSeconds, baseSeconds * pow2(max(0, attempt - 1)))
        return max(0, exp * (1 + jitter * (2 * random - 1)))
    }

    private func pow2(_ n: Int) -> Double { n >= 62 ? Double.greatestFiniteMagnitude : Double(1 << n) }
}
