import Foundation
import Logging
import Transfer
#if canImport(Glibc)
import Glibc
#endif

/// How `ferry serve` writes its log (swift-log): one line per event on standard error,
/// `2026-12-04T19:30:00.123Z info ferry.serve: MESSAGE`. When journald reads standard error
/// (systemd sets JOURNAL_STREAM to that stream's device:inode) the line is plain, with the
/// kernel-style priority prefix journald turns into the entry's level (`<6>ferry.serve: ...`):
/// journald adds its own time.
struct FerryLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// True when standard error is the stream JOURNAL_STREAM names.
    static let journald: Bool = {
        guard let v = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] else { return false }
        let parts = v.split(separator: ":")
        var st = stat()
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]), fstat(2, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }()

    private static let lock = NSLock()

    /// syslog priorities (sd-daemon(3) prefixes).
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tm = tm()
        var t = ts.tv_sec
        gmtime_r(&t, &tm)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1_000_000)
    }

    func log(level: Logger.Level, message: Logger.Message, metadata extra: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
        var all = metadata
        if let extra { all.merge(extra) { $1 } }
        let tail = all.isEmpty ? "" : " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        // One line, whatever the message holds: a newline would split an entry in two, and a
        // user's path may hold escape sequences meant for the operator's terminal.
        let text = Terminal.name("\(message)\(tail)")
        let out = FerryLogHandler.journald
            ? "<\(FerryLogHandler.priority(level))>\(label): \(text)\n"
            : "\(FerryLogHandler.timestamp()) \(level) \(label): \(text)\n"
        FerryLogHandler.lock.withLock {
            fputs(out, stderr)
            fflush(stderr)
        }
    }

    /// Installs the handler for every logger of the process (once; `ferry serve` only).
    static func bootstrap() {
        LoggingSystem.bootstrap { label in FerryLogHandler(label: label) }
    }
}

extension ServerConfiguration {
    /// The transfer server's lines through swift-log (`ferry.serve`).
    mutating func logThroughSwiftLog() {
        let logger = Logger(label: "ferry.serve")
        log = { level, line in
            switch level {
            case .info: logger.info("\(line)")
            case .warning: logger.warning("\(line)")
            }
        }
    }
}
