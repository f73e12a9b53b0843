import Glibc

/// Append-only audit trail: one JSON object per line for every session and every refused
/// connection (who, from where, what, which path, bytes, result, duration). Each line is
/// written with one O_APPEND write and made durable before the call returns, so a crash loses
/// no line of a finished action.
///
/// Durability is committed in groups: a writer appends its line under the lock, then waits
/// until an `fdatasync` that began after its append has finished. One writer at a time runs
/// the sync (outside the lock); lines appended meanwhile are covered by the next one, which
/// their writers share. On a disk where one sync takes 2 ms, a thousand API calls a second
/// wrote a thousand serial syncs (two seconds of waiting per second: every stage-in hook's
/// answer queued behind the others' syncs); now each sync covers every line written while
/// the previous one ran. `@unchecked Sendable`: state is guarded by `lock`.
public final class AuditLog: @unchecked Sendable {
    private let fd: Int32
    private let lock: Lock
    private let synced: Condition
    /// Lines appended so far, and the count the last finished sync covered (guarded by `lock`).
    private var appended: UInt64 = 0
    private var durable: UInt64 = 0
    private var syncing = false
    private var syncCount: UInt64 = 0
    /// Syncs run so far (grouped lines need fewer syncs than lines).
    public var syncs: UInt64 { lock.withLock { syncCount } }

    public init(path: String) throws {
        let l = Lock()
        lock = l
        synced = Condition(l)
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        if fd < 0 { throw TransferError.system("cannot open audit log '\(path)'", errno: errno) }
    }

    deinit { close(fd) }

    /// One audit record.
    public struct Record {
        public var user: String
        /// The peer center's name when it presented a certificate.
        public var center = ""
        public var peer: String
        public var action: String
        public var path: String
        public var files: UInt64 = 0
        public var bytes: UInt64 = 0
        public var result: String
        public var seconds: Double = 0
        /// Data-stream protection of a transfer ("" for refusals before it was known).
        public var protection = ""
        /// The local account the work ran as ("" when no identity switch happened).
        public var account = ""

        public init(user: String, peer: String, action: String, path: String, result: String) {
            self.user = user
            self.peer = peer
            self.action = action
            self.path = path
            self.result = result
        }
    }

    public func write(_ r: Record) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tm = tm()
        var t = ts.tv_sec
        gmtime_r(&t, &tm)
        let time = String(Int(tm.tm_year) + 1900) + "-" + two(Int(tm.tm_mon) + 1) + "-" + two(Int(tm.tm_mday)) + "T"
            + two(Int(tm.tm_hour)) + ":" + two(Int(tm.tm_min)) + ":" + two(Int(tm.tm_sec)) + "." + three(ts.tv_nsec / 1_000_000) + "Z"
        let ms = Int((r.seconds * 1000).rounded())
        let line = "{\"time\":\"\(time)\",\"user\":\(jsonString(r.user)),\"center\":\(jsonString(r.center)),\"peer\":\(jsonString(r.peer)),\"action\":\(jsonString(r.action)),\"path\":\(jsonString(r.path)),\"files\":\(r.files),\"bytes\":\(r.bytes),\"result\":\(jsonString(r.result)),\"protection\":\(jsonString(r.protection)),\(r.account.isEmpty ? "" : "\"account\":\(jsonString(r.account)),")\"duration_ms\":\(ms)}\n"
        let bytes = Array(line.utf8)
        lock.lock()
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            done += n
        }
        appended += 1
        let mine = appended
        // Wait for a sync that covers this line, or run one (bounded: a sync that never
        // returns would hold the daemon's audit anyway; waiters re-check every second).
        while durable < mine {
            if syncing {
                synced.wait(seconds: 1)
                continue
            }
            syncing = true
            let covers = appended
            lock.unlock()
            _ = fdatasync(fd)
            lock.lock()
            syncing = false
            syncCount += 1
            if covers > durable { durable = covers }
            synced.broadcast()
        }
        lock.unlock()
    }

    private func two(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }
    private func three(_ v: Int) -> String { v < 10 ? "00\(v)" : (v < 100 ? "0\(v)" : "\(v)") }
}

/// A JSON string literal (quotes and escapes).
public func jsonString(_ s: String) -> String {
    var out: [UInt8] = []
    out.reserveCapacity(s.utf8.count + 2)
    JSONText.appendString(s, to: &out)
    return String(decoding: out, as: UTF8.self)
}
