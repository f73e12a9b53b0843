import Glibc

/// The transfer server's counters, in Prometheus' text exposition format (the daemon's
/// `/metrics` includes them). Label values come from small fixed sets (direction, protection,
/// result, an error code's name), never from a peer's words, so the series stay few.
final class ServerMetrics: @unchecked Sendable {
    private let lock = Lock()
    private struct Key: Hashable {
        var direction: String
        var protection: String
        var result: String
    }
    private var sessions: [Key: UInt64] = [:]
    private var bytes: [Key: UInt64] = [:]
    private var files: [String: UInt64] = [:]
    private var chunksResent: UInt64 = 0
    private var framesRejected: UInt64 = 0
    private var directBytes: UInt64 = 0
    private var directReadBytes: UInt64 = 0
    private var refusals: [String: UInt64] = [:]
    /// TLS handshake seconds of control connections.
    private var handshakes = PromHistogram(buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5])

    func session(direction: String, protection: String, ok: Bool, snapshot p: TransferProgress.Snapshot) {
        let key = Key(direction: direction, protection: protection, result: ok ? "ok" : "failed")
        lock.withLock {
            sessions[key, default: 0] += 1
            bytes[Key(direction: direction, protection: protection, result: ""), default: 0] += p.bytesDone
            files[direction, default: 0] += p.filesTotal
            chunksResent += p.retransmittedChunks
            framesRejected += p.rejectedFrames
            directBytes += p.directBytes
            directReadBytes += p.directReadBytes
        }
    }

    /// A connection refused before its session: `reason` is an error code's name or "flood".
    func refused(_ reason: String) {
        lock.withLock { refusals[reason, default: 0] += 1 }
    }

    func handshake(seconds: Double) {
        lock.withLock { handshakes.observe(seconds) }
    }

    func text() -> String {
        lock.withLock {
            var o = "# HELP ferry_server_sessions_total Sessions of the transfer server, by direction, protection and result.\n# TYPE ferry_server_sessions_total counter\n"
            for d in ["push", "pull", "list", "delete"] {
                for p in ["clear", "safe", "private"] {
                    for r in ["ok", "failed"] {
                        o += "ferry_server_sessions_total{direction=\"\(d)\",protection=\"\(p)\",result=\"\(r)\"} \(sessions[Key(direction: d, protection: p, result: r)] ?? 0)\n"
                    }
                }
            }
            o += "# HELP ferry_server_bytes_total Bytes the transfer server's sessions moved, by direction and protection.\n# TYPE ferry_server_bytes_total counter\n"
            for d in ["push", "pull"] {
                for p in ["clear", "safe", "private"] {
                    o += "ferry_server_bytes_total{direction=\"\(d)\",protection=\"\(p)\"} \(bytes[Key(direction: d, protection: p, result: "")] ?? 0)\n"
                }
            }
            o += "# HELP ferry_server_files_total Files of the transfer server's sessions, by direction.\n# TYPE ferry_server_files_total counter\n"
            for d in ["push", "pull"] { o += "ferry_server_files_total{direction=\"\(d)\"} \(files[d] ?? 0)\n" }
            o += "# HELP ferry_server_chunks_resent_total Chunks sent again after a damaged frame.\n# TYPE ferry_server_chunks_resent_total counter\nferry_server_chunks_resent_total \(chunksResent)\n"
            o += "# HELP ferry_server_frames_rejected_total Data frames that failed their checks.\n# TYPE ferry_server_frames_rejected_total counter\nferry_server_frames_rejected_total \(framesRejected)\n"
            o += "# HELP ferry_server_direct_write_bytes_total Received bytes written with direct I/O (O_DIRECT), past the page cache.\n# TYPE ferry_server_direct_write_bytes_total counter\nferry_server_direct_write_bytes_total \(directBytes)\n"
            o += "# HELP ferry_server_direct_read_bytes_total Sent bytes read from their files with direct I/O (O_DIRECT), past the page cache.\n# TYPE ferry_server_direct_read_bytes_total counter\nferry_server_direct_read_bytes_total \(directReadBytes)\n"
            o += "# HELP ferry_server_refusals_total Connections refused before a session, by reason.\n# TYPE ferry_server_refusals_total counter\n"
            for r in (Set(["auth", "busy", "flood", "protocol", "timeout"]).union(refusals.keys)).sorted() {
                o += "ferry_server_refusals_total{reason=\"\(r)\"} \(refusals[r] ?? 0)\n"
            }
            o += "# HELP ferry_server_tls_handshake_seconds TLS handshakes of control connections.\n# TYPE ferry_server_tls_handshake_seconds histogram\n"
            o += handshakes.samples("ferry_server_tls_handshake_seconds")
            return o
        }
    }
}

/// One histogram's series in Prometheus' text format: cumulative buckets, `+Inf`, sum and
/// count. Not locked: its owner's lock guards it.
public struct PromHistogram: Sendable {
    public let buckets: [Double]
    private var counts: [UInt64]
    private var sum: Double = 0
    private var count: UInt64 = 0

    public init(buckets: [Double]) {
        self.buckets = buckets
        counts = [UInt64](repeating: 0, count: buckets.count)
    }

    public mutating func observe(_ value: Double) {
        for (i, b) in buckets.enumerated() where value <= b { counts[i] += 1 }
        sum += value
        count += 1
    }

    /// The sample lines of `name` (no HELP or TYPE); `labels` such as `outcome="ok"` go before
    /// `le` in each bucket and on the sum and count.
    public func samples(_ name: String, labels: String = "") -> String {
        let pre = labels.isEmpty ? "" : labels + ","
        let own = labels.isEmpty ? "" : "{\(labels)}"
        var o = ""
        for (i, b) in buckets.enumerated() { o += "\(name)_bucket{\(pre)le=\"\(b)\"} \(counts[i])\n" }
        o += "\(name)_bucket{\(pre)le=\"+Inf\"} \(count)\n\(name)_sum\(own) \(sum)\n\(name)_count\(own) \(count)\n"
        return o
    }
}

/// The process' own figures, with the names Prometheus' client libraries use: CPU seconds,
/// resident memory, open descriptors, their limit, the start time.
public func processMetricsText() -> String {
    var o = ""
    var ru = rusage()
    if getrusage(RUSAGE_SELF.rawValue, &ru) == 0 {
        let cpu = Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6 + Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6
        o += "# HELP process_cpu_seconds_total User and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total \(cpu)\n"
    }
    // /proc/self/statm: resident pages are the second field.
    if let statm = readProcFile("/proc/self/statm"), let pages = statm.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) {
        o += "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes \(pages * Int(sysconf(Int32(_SC_PAGESIZE))))\n"
    }
    var fds = 0
    if let d = opendir("/proc/self/fd") {
        while let e = readdir(d) { if e.pointee.d_name.0 != 46 { fds += 1 } }  // not "." or ".."
        closedir(d)
        o += "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds \(max(0, fds - 1))\n"
    }
    var lim = rlimit()
    if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 {
        o += "# HELP process_max_fds Maximum number of open file descriptors.\n# TYPE process_max_fds gauge\nprocess_max_fds \(lim.rlim_cur)\n"
    }
    o += "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds \(processStartSeconds)\n"
    return o
}

/// When the process started (set when the transfer server is made: `noteProcessStart`).
private let processStartSeconds: Int64 = Int64(time(nil))

func noteProcessStart() { _ = processStartSeconds }

private func readProcFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return nil }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 4096)
    let n = read(fd, &buf, buf.count)
    return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : nil
}
