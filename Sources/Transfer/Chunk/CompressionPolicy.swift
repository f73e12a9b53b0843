import Glibc

/// Decides, per worker, whether the next chunk travels compressed.
///
/// `auto` works in three steps.
/// 1. Per file (and again every `reprobeChunks` chunks) a 64 KiB sample is compressed at zstd's
///    fast level -1: data that does not shrink by `compressibleRatioMin` is sent raw, so
///    incompressible data costs one small probe per 64 MiB. Compressible samples are also
///    compressed at the other `levels`; each probe measures this core's speed and the ratio at
///    its level. A level's first probe runs twice and times the second: a cold first run
///    (allocations, page faults) measured 40 MB/s where warm runs do 350, and kept compression
///    "unpromising" for a second of a 1 Gbit/s link (bench/RESULTS.md, 2026-12-04).
/// 2. Compressible data starts raw. After each measured raw epoch (raw bytes delivered per
///    second), the policy predicts what compressing would deliver: compress, then send the
///    smaller payload at the measured wire rate, 1 / (1/speed + 1/(wireRate × ratio)). Only
///    when that promises at least `promiseMin` times the raw rate does it try compressing, so
///    a fast link (loopback, where the CPU is the limit) never pays for compression.
/// 3. Once both arms are measured it keeps the faster one, re-trying the other now and then,
///    less often each time it loses, and four times less often while one arm delivers twice
///    the other's rate (a re-try costs `settleBytes` and an epoch on the slower arm).
///
/// The compressed arm's level is the one that delivers most when compression and the wire run
/// side by side: min(speed × cores, wire rate × ratio), from the probes and the raw arm's
/// rate; a slower level only when it promises 10 % more. A fast link keeps -1 (the CPU is the
/// limit); a 1 Gbit/s link takes level 1 (SMILES: 3.7x against -1's 2.9x, at two thirds of
/// the speed), a slower one level 3.
///
/// One policy serves all the streams of a session (`SharedCompressionPolicy`): the streams
/// share the link and the cores, so they switch arms together and an epoch measures the
/// session's total. Per-stream policies were measured to settle on a mix on a 1 Gbit/s link
/// (1.76 Gbit/s goodput on SMILES against 2.14 with every chunk compressed): while the others
/// compressed, one raw stream had the link to itself and looked faster raw.
struct CompressionPolicy {
    static let sampleBytes = 64 << 10
    static let compressibleRatioMin = 1.15
    static let reprobeChunks = 16
    static let epochBytesMin: UInt64 = 8 << 20
    static let epochNsMin: UInt64 = 100_000_000
    /// The levels `auto` chooses from, fastest first; the first decides compressibility.
    static let levels: [Int32] = [-1, 1, 3]
    /// Predicted gain needed before compression is tried.
    static let promiseMin = 1.3
    /// Raw bytes not measured after a start or an arm switch: socket buffers and the link's
    /// queue fill or drain first, and an epoch measured across that transition misjudges the
    /// new arm (a raw epoch right after compressed ones ran into empty buffers and looked
    /// faster than the link).
    static let settleBytes: UInt64 = 16 << 20

    let mode: CompressionMode
    private var arm = 1  // 0 = compress, 1 = raw
    private var rate: [Double] = [0, 0]
    private var measured: [Bool] = [false, false]
    private var epochBytes: UInt64 = 0
    private var epochStartNs: UInt64 = 0
    private var epochsUntilExplore = 8
    private var exploreInterval = 8
    private var exploring = false
    private var settling = CompressionPolicy.settleBytes
    /// From the probes, per level of `levels`: compression speed of this core (bytes/s) and ratio.
    private var speeds = [Double](repeating: 0, count: CompressionPolicy.levels.count)
    private var ratios = [Double](repeating: 1, count: CompressionPolicy.levels.count)
    private var warmed = [Bool](repeating: false, count: CompressionPolicy.levels.count)
    /// The compressed arm's level, an index into `levels`.
    private var chosen = 0
    /// Cores the session's streams can compress on at once.
    var parallelism = 1

    init(mode: CompressionMode, parallelism: Int = 1) {
        self.mode = mode
        self.parallelism = max(1, parallelism)
    }

    var compressing: Bool { arm == 0 }

    /// The level to compress this chunk with, or nil for raw. `probe` compresses a sample at a
    /// level and returns its compressed size (nil if it did not shrink).
    mutating func level(compressible: inout Bool?, chunksSinceProbe: inout Int, sampleSize: Int, probe: (Int32) -> Int?, clock: () -> UInt64 = monotonicNs) -> Int32? {
        switch mode {
        case .off: return nil
        case .level(let n): return n
        case .auto:
            if compressible == nil || chunksSinceProbe >= CompressionPolicy.reprobeChunks {
                chunksSinceProbe = 0
                for (i, level) in CompressionPolicy.levels.enumerated() {
                    if !warmed[i] { _ = probe(level); warmed[i] = true }  // a cold first run, not timed
                    let start = clock()
                    let c = probe(level)
                    let ns = max(clock() - start, 1)
                    guard let c else {
                        if i == 0 { compressible = false }
                        break
                    }
                    let ratio = Double(sampleSize) / Double(max(c, 1))
                    if i == 0 {
                        compressible = ratio >= CompressionPolicy.compressibleRatioMin
                        if compressible == false { break }
                    }
                    // A probe can only be slowed down (page faults, another thread on the
                    // core), never sped up: keep a slowly decaying maximum.
                    speeds[i] = max(Double(sampleSize) / (Double(ns) / 1e9), 0.9 * speeds[i])
                    ratios[i] = ratio
                }
                choose()
            }
            chunksSinceProbe += 1
            guard compressible == true else { return nil }
            return arm == 0 ? CompressionPolicy.levels[chosen] : nil
        }
    }

    /// The compressed arm's level: the most raw bytes per second with compression and sending
    /// in parallel, min(speed × cores, wire × ratio); a slower level only for 10 % more.
    /// Before the wire is measured, the fastest.
    private mutating func choose() {
        guard rate[1] > 0 else { chosen = 0; return }
        var best = 0
        var bestRate = 0.0
        for i in CompressionPolicy.levels.indices where speeds[i] > 0 {
            let r = min(speeds[i] * Double(parallelism), rate[1] * ratios[i])
            if i == 0 || r > 1.1 * bestRate { best = i; bestRate = r }
        }
        chosen = best
    }

    /// Raw bytes per second that compressing at the chosen level would deliver, given the raw
    /// arm's rate, with compression and sending one after the other (the cautious estimate).
    private var predictedCompressedRate: Double {
        guard speeds[chosen] > 0, rate[1] > 0 else { return 0 }
        return 1 / (1 / (speeds[chosen] * Double(parallelism)) + 1 / (rate[1] * ratios[chosen]))
    }

    /// Re-tries of the other arm are four times rarer while one arm delivers twice the other.
    private var exploreEpochs: Int {
        let lo = min(rate[0], rate[1]), hi = max(rate[0], rate[1])
        return lo > 0 && hi >= 2 * lo ? 4 * exploreInterval : exploreInterval
    }

    private var compressionPromising: Bool {
        predictedCompressedRate >= CompressionPolicy.promiseMin * rate[1]
    }

    private mutating func switchArm(_ a: Int) {
        if a != arm {
            arm = a
            settling = CompressionPolicy.settleBytes
        }
    }

    /// Accounts raw bytes delivered by a compressible chunk under the current arm.
    mutating func delivered(rawBytes: Int, compressedArm: Bool, nowNs: UInt64 = monotonicNs()) {
        guard case .auto = mode else { return }
        // A chunk encoded before the arm switched belongs to the previous epoch.
        guard compressedArm == (arm == 0) else { return }
        let now = nowNs
        if settling > 0 {
            settling -= min(settling, UInt64(rawBytes))
            if settling == 0 { epochStartNs = now; epochBytes = 0 }
            return
        }
        if epochStartNs == 0 { epochStartNs = now }
        epochBytes += UInt64(rawBytes)
        let elapsed = now - epochStartNs
        guard epochBytes >= CompressionPolicy.epochBytesMin && elapsed >= CompressionPolicy.epochNsMin else { return }
        let r = Double(epochBytes) / (Double(elapsed) / 1e9)
        let a = compressedArm ? 0 : 1
        let first = !measured[a]
        rate[a] = measured[a] ? 0.5 * rate[a] + 0.5 * r : r
        measured[a] = true
        epochBytes = 0
        epochStartNs = now
        if a == 1 { choose() }  // the wire's rate changed: the level may too
        if !measured[0] {
            // Only raw measured so far: try compressing when the prediction promises a gain.
            if compressionPromising { switchArm(0) }
            return
        }
        if exploring {
            exploring = false
            let best = rate[0] >= rate[1] ? 0 : 1
            if best != arm { exploreInterval = min(exploreInterval * 2, 128) } else { exploreInterval = 8 }
            switchArm(best)
            epochsUntilExplore = exploreEpochs
            return
        }
        if first { epochsUntilExplore = exploreEpochs }  // both arms measured now: the gap is known
        switchArm(rate[0] >= rate[1] ? 0 : 1)
        epochsUntilExplore -= 1
        if epochsUntilExplore <= 0 {
            // Re-try the other arm; compression only while it still looks promising.
            if arm == 0 || compressionPromising {
                exploring = true
                switchArm(1 - arm)
            } else {
                epochsUntilExplore = exploreEpochs
            }
        }
    }
}

/// The session-wide policy: one `CompressionPolicy` behind a lock, shared by the sender's
/// stream workers. Calls are per chunk (or per batch), so the lock is cheap.
/// `@unchecked Sendable`: guarded by `lock`.
final class SharedCompressionPolicy: @unchecked Sendable {
    private let lock = Lock()
    private var policy: CompressionPolicy
    let mode: CompressionMode

    init(mode: CompressionMode, streams: Int) {
        self.mode = mode
        let cores = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        policy = CompressionPolicy(mode: mode, parallelism: min(max(1, streams), max(1, cores)))
    }

    func level(compressible: inout Bool?, chunksSinceProbe: inout Int, sampleSize: Int, probe: (Int32) -> Int?) -> Int32? {
        lock.withLock { policy.level(compressible: &compressible, chunksSinceProbe: &chunksSinceProbe, sampleSize: sampleSize, probe: probe) }
    }

    func delivered(rawBytes: Int, compressedArm: Bool) {
        lock.withLock { policy.delivered(rawBytes: rawBytes, compressedArm: compressedArm) }
    }
}
