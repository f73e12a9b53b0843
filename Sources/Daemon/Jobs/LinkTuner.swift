import Foundation

/// Per-peer tuning, as FTS3's optimizer does: additive increase while the measured throughput
/// keeps improving, multiplicative decrease on errors or when the last step made it slower,
/// within configured limits. Two settings per peer:
/// - streams per transfer, judged on each transfer big enough to say something about the link
///   (`minBytes`); a job that names `streams` itself is left alone;
/// - transfers in flight to the peer (the files the link carries at once), judged on the
///   aggregate throughput of windows of at least `windowSeconds` and two finished transfers;
///   the queue's claims honour it (`activeLimits`).
/// The runner asks `streams(for:)` and reports every attempt with `record`.
/// `@unchecked Sendable`: guarded by `lock`.
public final class LinkTuner: @unchecked Sendable {
    public struct State: Sendable, Equatable {
        public var streams: Int
        /// Throughput (bytes/s) measured at the previous setting, for the comparison.
        public var lastRate: Double = 0
        public var samples = 0
        public var errors = 0
        /// Transfers in flight allowed to this peer.
        public var active: Int
        /// Bytes/s of the last finished attempt of at least `reportBytes` towards this peer,
        /// whatever its streams (`ferry_peer_throughput_bytes_per_second`, replica ranking); 0
        /// after a link error. `lastRate` is the tuner's own comparison, set only by attempts
        /// run at the tuned streams (it read 0 for a peer whose jobs chose their streams, or
        /// ran two at once); this one is what the link did last.
        public var throughput: Double = 0
        /// Aggregate throughput of the previous window (bytes/s).
        public var lastWindowRate: Double = 0
        var windowStart: Double = 0
        var windowBytes: Int64 = 0
        var windowTransfers = 0
    }

    public let minStreams: Int
    public let maxStreams: Int
    public let initialStreams: Int
    /// Transfers shorter than this say more about latency than about the link: not counted.
    public let minBytes: Int64
    /// Attempts from this size on are reported as the peer's throughput (`State.throughput`):
    /// smaller ones measure the round trips more than the link.
    public let reportBytes: Int64 = 1 << 20
    /// Transfers in flight per peer: from 1 up to this (the configured per-peer limit).
    public let maxActive: Int
    public let windowSeconds: Double
    private let lock = NSLock()
    private var peers: [String: State] = [:]
    private let clock: @Sendable () -> Double

    public init(minStreams: Int = 1, maxStreams: Int = 16, initialStreams: Int = 4, minBytes: Int64 = 64 << 20,
                maxActive: Int = 4, windowSeconds: Double = 5, clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) {
        self.minStreams = max(1, minStreams)
        self.maxStreams = max(self.minStreams, maxStreams)
        self.initialStreams = min(max(initialStreams, self.minStreams), self.maxStreams)
        self.minBytes = minBytes
        self.maxActive = max(1, maxActive)
        self.windowSeconds = windowSeconds
        self.clock = clock
    }

    private func fresh() -> State { State(streams: initialStreams, active: maxActive) }

    /// Transfers in flight allowed per peer, for the peers measured so far.
    public func activeLimits() -> [String: Int] {
        lock.withLock { peers.mapValues(\.active) }
    }

    public func streams(for peer: String) -> Int {
        lock.withLock { peers[peer]?.streams ?? initialStreams }
    }

    /// Reports a finished attempt to `peer` run with `streams` streams.
    public func record(peer: String, streams: Int, bytes: Int64, seconds: Double, failed: Bool) {
        lock.withLock {
            var s = peers[peer] ?? fresh()
            recordWindow(&s, bytes: bytes, failed: failed)
            defer { peers[peer] = s }
            if failed {
                s.throughput = 0
            } else if bytes >= reportBytes && seconds > 0 {
                s.throughput = Double(bytes) / seconds
            }
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
        }
    }

    /// Transfers in flight: halve on a link error; otherwise compare each window's aggregate
    /// rate with the previous one's: one more while it improves, one fewer when it dropped.
    private func recordWindow(_ s: inout State, bytes: Int64, failed: Bool) {
        let now = clock()
        if failed {
            s.active = max(1, s.active / 2)
            s.lastWindowRate = 0
            s.windowStart = now
            s.windowBytes = 0
            s.windowTransfers = 0
            return
        }
        if s.windowStart == 0 { s.windowStart = now }
        s.windowBytes += bytes
        s.windowTransfers += 1
        let elapsed = now - s.windowStart
        guard elapsed >= windowSeconds && s.windowTransfers >= 2 else { return }
        let rate = Double(s.windowBytes) / elapsed
        if s.lastWindowRate == 0 || rate >= s.lastWindowRate * 1.05 {
            s.active = min(maxActive, s.active + 1)
        } else if rate < s.lastWindowRate * 0.9 {
            s.active = max(1, s.active - 1)
        }
        s.lastWindowRate = rate
        s.windowStart = now
        s.windowBytes = 0
        s.windowTransfers = 0
    }

    public func snapshot() -> [String: State] { lock.withLock { peers } }
}
