import Foundation
import Hummingbird
import NIOCore
import Transfer
import Logging

/// The API's request context: Hummingbird's basic one plus the client's address (the TCP
/// peer of the connection, before any proxy), which the audit lines of the API carry in
/// `peer` as the transfer server's do (ops review finding 2: refusals of the API named no
/// address, so an operator could not tell where a flood of bad tokens came from).
public struct APIRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }

    /// `HOST:PORT` (`[HOST]:PORT` for IPv6), as the transfer server writes a peer; "" when the
    /// channel has none (a Unix socket, a test).
    var client: String {
        guard let a = remoteAddress, let ip = a.ipAddress else { return "" }
        let port = a.port.map { ":\($0)" } ?? ""
        return ip.contains(":") ? "[\(ip)]\(port)" : ip + port
    }
}

/// What the audit log takes from the API's refusals, and how fast (ops review finding 2).
///
/// Before, every refused request was one audit line with the whole request path and one
/// `fdatasync`, for anyone who could reach the port: 3,000 unauthenticated requests with
/// 2,000-byte paths wrote 6.7 MB in 2 s, and one 60,000-byte path 61 kB. Now:
/// - every refusal line names the client's address (`peer`);
/// - a path is written up to its first `pathBytesMax` (256) bytes, then `... (N bytes)`, and a
///   reason up to `resultBytesMax` (1,024: a reason may quote a path from a 4 MiB body);
/// - refusals of requests that identified nobody (no token, a token that is not genuine, a
///   center assertion that does not verify, an ended console session) are written at most
///   `linesPerWindow` (10) per second, all addresses together; the rest of each second is
///   counted by address and written as one line when the second is over (`action` `api`,
///   `result` `refused: N more unauthenticated requests in 1 s (ADDRESS: COUNT, ...)`, up to
///   `addressesShown` addresses by count; more than `addressesMax` distinct addresses in one
///   second count together as `*`). So an unauthenticated flood costs the audit log at most
///   eleven lines of about 600 bytes a second, however many requests, paths or addresses.
///   Refusals that name someone (a genuine token, even an expired or revoked one, a verified
///   center) are each written as before: their author is known and answerable.
/// The same digest takes the console's refused sign-ins (`console.sign-in`) whose token is
/// not genuine.
final class RefusalAudit: @unchecked Sendable {
    static let pathBytesMax = 256
    static let resultBytesMax = 1024
    static let linesPerWindow = 10
    static let windowNs: UInt64 = 1_000_000_000
    static let addressesMax = 64
    static let addressesShown = 8

    private let lock = NSLock()
    private var windowStart: UInt64 = 0
    private var written = 0
    /// Refusals of the current window not written, by address (without its port).
    private var suppressed: [String: Int] = [:]
    private var suppressedTotal = 0
    private var flushPending = false
    /// Lines written individually and refusals counted in summaries, since the start (tests).
    private(set) var individually = 0
    private(set) var summarized = 0

    /// A request path as an audit line shows it: whole up to `pathBytesMax` bytes, else its
    /// first bytes (cut at a character's start) and its length.
    static func shown(_ text: String, max: Int = pathBytesMax) -> String {
        let bytes = Array(text.utf8)
        guard bytes.count > max else { return text }
        var cut = max
        while cut > 0 && bytes[cut] & 0xC0 == 0x80 { cut -= 1 }
        return String(decoding: bytes[..<cut], as: UTF8.self) + "... (\(bytes.count) bytes)"
    }

    /// The address without its port: what a summary counts by.
    static func host(_ client: String) -> String {
        if client.hasPrefix("["), let end = client.firstIndex(of: "]") { return String(client[...end]) }
        if let colon = client.lastIndex(of: ":"), client.firstIndex(of: ":") == colon { return String(client[..<colon]) }
        return client.isEmpty ? "unknown" : client
    }

    /// One refusal of a request that identified nobody: `record` is written now when this
    /// second's allowance is not used up, else counted for the second's summary.
    func refusedUnidentified(_ record: AuditLog.Record, client: String, to audit: AuditLog) {
        let t = monotonicNs()
        var lines: [AuditLog.Record] = []
        var scheduleIn: UInt64?
        lock.withLock {
            if t &- windowStart >= RefusalAudit.windowNs {
                if let s = takeSummary() { lines.append(s) }
                windowStart = t
                written = 0
            }
            if written < RefusalAudit.linesPerWindow {
                written += 1
                individually += 1
                lines.append(record)
                return
            }
            var key = RefusalAudit.host(client)
            if suppressed[key] == nil && suppressed.count >= RefusalAudit.addressesMax { key = "*" }
            suppressed[key, default: 0] += 1
            suppressedTotal += 1
            summarized += 1
            if !flushPending {
                flushPending = true
                scheduleIn = RefusalAudit.windowNs - min(RefusalAudit.windowNs, t &- windowStart)
            }
        }
        for l in lines { audit.write(l) }
        if let ns = scheduleIn { schedule(ns, audit) }
    }

    /// Writes the summary of a window that has ended and nothing followed (a flood that
    /// stopped): at most one pending timer at a time, and only while counts wait.
    private func schedule(_ ns: UInt64, _ audit: AuditLog) {
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(ns) + 5_000_000)) { [weak self, audit] in
            guard let self else { return }
            let t = monotonicNs()
            var line: AuditLog.Record?
            var again: UInt64?
            self.lock.withLock {
                guard self.suppressedTotal > 0 else { self.flushPending = false; return }
                let age = t &- self.windowStart
                if age >= RefusalAudit.windowNs {
                    line = self.takeSummary()
                    self.flushPending = false
                } else {
                    again = RefusalAudit.windowNs - age
                }
            }
            if let line { audit.write(line) }
            if let again { self.schedule(again, audit) }
        }
    }

    /// The window's summary line (under `lock`), and its counts cleared; nil when none.
    private func takeSummary() -> AuditLog.Record? {
        guard suppressedTotal > 0 else { return nil }
        let top = suppressed.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
        var list = top.prefix(RefusalAudit.addressesShown).map { "\($0.key): \($0.value)" }.joined(separator: ", ")
        if top.count > RefusalAudit.addressesShown { list += ", and \(top.count - RefusalAudit.addressesShown) more addresses" }
        let peer = top.count == 1 ? top[0].key : "several"
        let r = AuditLog.Record(user: "", peer: peer, action: "api", path: "",
                                result: "refused: \(suppressedTotal) more unauthenticated requests in 1 s (\(list))")
        suppressed = [:]
        suppressedTotal = 0
        return r
    }

    static func monotonicNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    private func monotonicNs() -> UInt64 { RefusalAudit.monotonicNs() }
}

/// The API's refusals of who a client is (401, 403) and its own failures (5xx) in the log, for
/// on-call staff reading `journalctl -u ferry` (ops review of 2026-12-06, finding 7: they
/// reached only the audit file): at most `linesPerWindow` lines a second; what a flood makes
/// beyond is counted in the next line written ("and N more since"). Other refusals (a bad
/// body, a job not found) are the client's business and stay in the audit file.
final class RefusalLog: @unchecked Sendable {
    static let linesPerWindow = 5
    private let lock = NSLock()
    private var windowStart: UInt64 = 0
    private var written = 0
    private var skipped = 0
    private let logger = Logger(label: "ferry.daemon")

    static func logs(_ status: Int) -> Bool { status == 401 || status == 403 || status >= 500 }

    /// `line` is written when this second's allowance is not used up, else counted.
    func note(_ status: Int, _ line: String) {
        guard RefusalLog.logs(status) else { return }
        let t = RefusalAudit.monotonicNs()
        let more = lock.withLock { () -> Int? in
            if t &- windowStart >= RefusalAudit.windowNs {
                windowStart = t
                written = 0
            }
            guard written < RefusalLog.linesPerWindow else {
                skipped += 1
                return nil
            }
            written += 1
            defer { skipped = 0 }
            return skipped
        }
        guard let more else { return }
        let tail = more > 0 ? " (and \(more) more API refusals not logged since the last line)" : ""
        if status >= 500 { logger.error("\(line)\(tail)") } else { logger.warning("\(line)\(tail)") }
    }
}
