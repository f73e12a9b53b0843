import Foundation

/// How long a client waiting for a job (`ferry jobs wait`, `watch`, `submit --wait`, `cp --via`)
/// sleeps before its next look at it.
///
/// A fixed 0.3 s made every wait end on average 0.15 s after its job, and up to 0.3 s: most of a
/// small job's whole time (a one-file job ends within tens of milliseconds of its submit), and
/// a good part of the fixed costs that keep a striped tree from its links' rate (issue 19). The
/// first looks therefore come soon and spread out (25, 50, 100, 200 ms, then `steady`); near the
/// end they come quicker: every 100 ms once a striped job has no part left to claim (its last
/// parts run), every 50 ms once its bytes are all in (its live progress says so, or a striped job
/// has no part left to run: what is left is its last step, a commit, a tree's directories, the
/// queue's write). Each kind of quick look has a budget (`lastPartsBudget`, 10 s: the last
/// ranges of a big file run for a range's time, 4-5 s at 256 MiB on a 1 Gbit/s link;
/// `lastStepBudget`, 3 s), then the steady pace again. A look is one GET of one row: a waiter
/// costs the daemon at most 20 a second, only at the start and the end of its job. (The job's event stream pushes changes, but reads a job at
/// most four times a second however fast the queue moves, so it would not see the end sooner.)
public struct WaitPace: Sendable {
    public let steady: Double
    private var looks = 0
    private var lastStepSpent = 0.0
    private var lastPartsSpent = 0.0
    public static let lastStepSeconds = 0.05
    public static let lastPartsSeconds = 0.1
    public static let lastStepBudget = 3.0
    public static let lastPartsBudget = 10.0
    static let start: [Double] = [0.025, 0.05, 0.1, 0.2]

    public init(steady: Double) { self.steady = steady }

    /// The kinds of quick look near a job's end, each with its pause and its budget.
    enum NearEnd: Equatable {
        /// Its bytes are all in, or a striped job has no part left to run.
        case lastStep
        /// A striped job has no part left to claim: its last parts run.
        case lastParts
        var seconds: Double { self == .lastStep ? WaitPace.lastStepSeconds : WaitPace.lastPartsSeconds }
        var budget: Double { self == .lastStep ? WaitPace.lastStepBudget : WaitPace.lastPartsBudget }
    }

    /// The pause after a look that found `job` not yet ended.
    public mutating func next(after job: V1.Transfer) -> Double {
        looks += 1
        let early = looks <= WaitPace.start.count ? min(steady, WaitPace.start[looks - 1]) : steady
        guard job.state == .running, let near = WaitPace.nearEnd(job), near.seconds < early else { return early }
        let spent = near == .lastStep ? lastStepSpent : lastPartsSpent
        guard spent + near.seconds <= near.budget + 1e-9 else { return early }
        if near == .lastStep { lastStepSpent += near.seconds } else { lastPartsSpent += near.seconds }
        return near.seconds
    }

    /// Which quick look a running job near its end gets, or nil: its bytes all in (its live
    /// counters), or, striped, no part left to run → `lastStep`; striped with none left to
    /// claim → `lastParts`.
    static func nearEnd(_ job: V1.Transfer) -> NearEnd? {
        if let p = job.progress, p.bytesTotal > 0, p.bytesDone >= p.bytesTotal { return .lastStep }
        if let p = job.parts, p.total > 0, p.queued == 0 { return p.running == 0 ? .lastStep : .lastParts }
        return nil
    }
}
