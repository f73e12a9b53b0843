import Foundation

/// Per-peer tuning of the number of TCP streams, as FTS3's optimizer does: additive increase
/// while the measured throughput keeps improving, multiplicative decrease on errors or when
/// more streams made it slower, within configured limits. A job that names `streams` itself
/// is left alone; otherwise the runner asks `streams(for:)` and reports with `record`.
/// `@unchecked Sendable`: guarded by `lock`.
public final class LinkTuner: @unchecked Sendable {
    public struct State: Sendable, Equatable {
        public var streams: Int
        /// Throughput (bytes/s) measured at the previous setting, for the comparison.
        public var lastRate: Double = 0
        public var samples = 0
        public var errors = 0
    }

    public let minStreams: Int
    public let maxStreams: Int
    public let initialStreams: Int
    /// Transfers shorter than this say more about latency than about the link: not counted.
    public let minBytes: Int64
    private let lock = NSLock()
    private var peers: [String: State] = [:]

    public init(minStreams: Int = 1, maxStreams: Int = 16, initialStreams: Int = 4, minBytes: Int64 = 64 << 20) {
        self.minStreams = max(1, minStreams)
        self.maxStreams = max(self.minStreams, maxStreams)
        self.initialStreams = min(max(initialStreams, self.minStreams), self.maxStreams)
        self.minBytes = minBytes
    }

    public func streams(for peer: String) -> Int {
        lock.withLock { peers[peer]?.streams ?? initialStreams }
    }

    /// Reports a finished attempt to `peer` run with `streams` streams.
    public func record(peer: String, streams: Int, bytes: Int64, seconds: Double, failed: Bool) {
        lock.withLock {
            var s = peers[peer] ?? State(streams: initialStreams)
            guard streams == s.streams else { return }  // a job that chose its own streams
            if failed {
                s.errors += 1
                s.streams = max(minStreams, s.streams / 2)
                s.lastRate = 0
            } else if bytes >= minBytes && seconds > 0 {
                let rate = Double(bytes) / seconds
                s.samples += 1
                if s.lastRate == 0 || rate >= s.lastRate * 1.05 {
                    s.streams = min(maxStreams, s.streams + 1)  // better (or first): try one more
                } else if rate < s.lastRate * 0.9 {
                    s.streams = max(minStreams, s.streams - 1)  // the last step made it worse
                }
                s.lastRate = rate
            }
            peers[peer] = s
        }
    }

    public func snapshot() -> [String: State] { lock.withLock { peers } }
}
