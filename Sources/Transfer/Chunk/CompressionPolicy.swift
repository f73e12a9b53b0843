/// Decides, per worker, whether the next chunk travels compressed.
///
/// `auto` works in two steps. Per file (and again every `reprobeChunks` chunks) a 64 KiB sample
/// is compressed at zstd level -1 (fast mode, also used for the data): data that does not shrink by `compressibleRatioMin` is sent raw,
/// so incompressible data costs one small probe per 64 MiB. For compressible data the policy
/// measures what matters, raw bytes delivered per second, alternately with and without
/// compression ("epochs"), and keeps the faster arm. The other arm is re-tried now and then,
/// less often each time it loses, so a fast link (where compression only costs CPU) stays
/// within a few percent of `off`, and a slow link with text moves several times its rate.
struct CompressionPolicy {
    static let sampleBytes = 64 << 10
    static let compressibleRatioMin = 1.15
    static let reprobeChunks = 16
    static let epochBytesMin: UInt64 = 16 << 20
    static let epochNsMin: UInt64 = 200_000_000
    static let autoLevel: Int32 = -1

    let mode: CompressionMode
    private var arm = 0  // 0 = compress, 1 = raw
    private var rate: [Double] = [0, 0]
    private var measured: [Bool] = [false, false]
    private var epochBytes: UInt64 = 0
    private var epochStartNs: UInt64 = 0
    private var epochsUntilExplore = 8
    private var exploreInterval = 8
    private var exploring = false

    init(mode: CompressionMode) { self.mode = mode }

    /// The level to compress this chunk with, or nil for raw. `probe` compresses a sample and
    /// returns its compressed size (nil if it did not shrink).
    mutating func level(compressible: inout Bool?, chunksSinceProbe: inout Int, sampleSize: Int, probe: () -> Int?) -> Int32? {
        switch mode {
        case .off: return nil
        case .level(let n): return n
        case .auto:
            if compressible == nil || chunksSinceProbe >= CompressionPolicy.reprobeChunks {
                chunksSinceProbe = 0
                if let c = probe() {
                    compressible = Double(sampleSize) / Double(max(c, 1)) >= CompressionPolicy.compressibleRatioMin
                } else {
                    compressible = false
                }
            }
            chunksSinceProbe += 1
            guard compressible == true else { return nil }
            return arm == 0 ? CompressionPolicy.autoLevel : nil
        }
    }

    /// Accounts raw bytes delivered by a compressible chunk under the current arm.
    mutating func delivered(rawBytes: Int, compressedArm: Bool, nowNs: UInt64 = monotonicNs()) {
        guard case .auto = mode else { return }
        let now = nowNs
        if epochStartNs == 0 { epochStartNs = now }
        epochBytes += UInt64(rawBytes)
        let elapsed = now - epochStartNs
        guard epochBytes >= CompressionPolicy.epochBytesMin && elapsed >= CompressionPolicy.epochNsMin else { return }
        let r = Double(epochBytes) / (Double(elapsed) / 1e9)
        let a = compressedArm ? 0 : 1
        rate[a] = measured[a] ? 0.5 * rate[a] + 0.5 * r : r
        measured[a] = true
        epochBytes = 0
        epochStartNs = now
        if !measured[1 - a] {
            arm = 1 - a  // measure the other arm once
            return
        }
        if exploring {
            exploring = false
            let best = rate[0] >= rate[1] ? 0 : 1
            if best != arm { exploreInterval = min(exploreInterval * 2, 128) } else { exploreInterval = 8 }
            arm = best
            epochsUntilExplore = exploreInterval
            return
        }
        arm = rate[0] >= rate[1] ? 0 : 1
        epochsUntilExplore -= 1
        if epochsUntilExplore <= 0 {
            exploring = true
            arm = 1 - arm
        }
    }
}
