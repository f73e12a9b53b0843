import Glibc

/// Live counters of one transfer, shared by its threads. The CLI polls `snapshot()`.
/// `@unchecked Sendable`: every field is guarded by `lock`.
public final class TransferProgress: @unchecked Sendable {
    private let lock = Lock()
    private var s = Snapshot()
    private let startNs = monotonicNs()
    private var cancelled: String?
    private var onCancel: ((String) -> Void)?
    private var onFile: (@Sendable (String, FileOutcome, String?) -> Void)?

    /// How one file of a transfer ended, as `observeFiles` reports it.
    public enum FileOutcome: Sendable, Equatable {
        /// Sent (or received) and verified, renamed into place.
        case copied
        /// Compared by content (`--checksum`) and found identical: not sent.
        case identical
        /// Skipped because size and modification time matched: not read.
        case unread
        case failed
    }

    /// Calls `observer` with each file's name (as the tree names it), how it ended and, for a
    /// failure, the message; from the transfer's threads, before the transfer ends. Set it
    /// before the transfer starts (`ferry cp -v`).
    public func observeFiles(_ observer: @escaping @Sendable (String, FileOutcome, String?) -> Void) {
        lock.withLock { onFile = observer }
    }

    private func told(_ name: String?, _ outcome: FileOutcome, _ message: String? = nil) {
        guard let observer = lock.withLock({ onFile }) else { return }
        observer(name ?? "", outcome, message)
    }

    public init() {}

    /// Stops the transfer this progress belongs to (a daemon cancelling a job, or stopping):
    /// the session ends with a resumable error carrying `reason`; the journal keeps what is
    /// done. Safe from any thread, before or during the transfer.
    public func cancel(_ reason: String) {
        let handler = lock.withLock { () -> ((String) -> Void)? in
            if cancelled == nil { cancelled = reason }
            return onCancel
        }
        handler?(reason)
    }

    /// Whether `cancel` was called (the transfer's end is then not the link's fault).
    public var isCancelled: Bool { lock.withLock { cancelled != nil } }

    /// Called by the client once its session exists; runs `handler` at once if already cancelled.
    func whenCancelled(_ handler: @escaping (String) -> Void) {
        let already = lock.withLock { () -> String? in
            onCancel = handler
            return cancelled
        }
        if let already { handler(already) }
    }

    /// A consistent copy of the counters.
    public struct Snapshot: Sendable {
        /// Regular files and their bytes announced so far (grows while the manifest streams).
        public var filesTotal: UInt64 = 0
        public var bytesTotal: UInt64 = 0
        public var filesDone: UInt64 = 0
        /// Bytes accounted for: sent, received, or skipped as already there.
        public var bytesDone: UInt64 = 0
        /// Payload bytes on data streams this run (after compression).
        public var wireBytes: UInt64 = 0
        /// Bytes not sent because the destination held them: `unreadBytes` + `matchedBytes`.
        public var skippedBytes: UInt64 = 0
        /// Files not sent: `unreadFiles` + `matchedFiles`.
        public var filesSkipped: UInt64 = 0
        /// Files skipped because the destination's size and modification time matched (without
        /// `--checksum`): neither side read them, so nothing says their content is the same.
        public var unreadFiles: UInt64 = 0
        public var unreadBytes: UInt64 = 0
        /// Files skipped after their content compared equal (`--checksum`: whole-file digests).
        public var matchedFiles: UInt64 = 0
        /// Bytes found already there by content: those files, and the chunks of a resumed
        /// partial file whose hashes matched the source's.
        public var matchedBytes: UInt64 = 0
        /// Of `matchedBytes`: chunks of resumed partial files (an interrupted earlier run).
        public var resumedBytes: UInt64 = 0
        public var retransmittedChunks: UInt64 = 0
        /// Sealed data frames this side rejected (tampered, replayed or reordered).
        public var rejectedFrames: UInt64 = 0
        /// Received bytes this side wrote with direct I/O (`DirectIO`), past the page cache.
        public var directBytes: UInt64 = 0
        /// Bytes this side read from its source with direct I/O (`SenderWorker`, "Direct reads"):
        /// chunks sent, sent again, or read to compare with a resumed partial.
        public var directReadBytes: UInt64 = 0
        /// Bytes this side sent with zero-copy sends (`ZeroCopy`).
        public var zeroCopyBytes: UInt64 = 0
        public var filesFailed: UInt64 = 0
        /// Files written in full at their final name this run (renamed into place, or, on the
        /// sending side, confirmed so by the receiver); not skipped, not failed.
        public var filesCopied: UInt64 = 0
        public var seconds: Double = 0
        /// The first few per-file failures, for the final message.
        public var failures: [String] = []
        /// The code of the first failure (the one `failures` names first), and whether the
        /// peer said it (a receiver's verdict on a file, a sender's unreadable source).
        public var failureCode: TransferError.Code? = nil
        public var failureFromPeer = false
        /// Devices, FIFOs and sockets met in a tree and left out; the first few by name.
        public var specialFiles: UInt64 = 0
        public var specialNames: [String] = []
    }

    public func snapshot() -> Snapshot {
        var copy = lock.withLock { s }
        copy.seconds = Double(monotonicNs() - startNs) / 1e9
        return copy
    }

    func announce(bytes: UInt64) { lock.withLock { s.filesTotal += 1; s.bytesTotal += bytes } }
    /// A stream's length, known at its end.
    func add(bytesTotal: UInt64) { lock.withLock { s.bytesTotal += bytesTotal } }
    func moved(raw: UInt64, wire: UInt64) { lock.withLock { s.bytesDone += raw; s.wireBytes += wire } }
    func wroteDirect(bytes: UInt64) { lock.withLock { s.directBytes += bytes } }
    func readDirect(bytes: UInt64) { lock.withLock { s.directReadBytes += bytes } }
    func sentZeroCopy(bytes: UInt64) { lock.withLock { s.zeroCopyBytes += bytes } }
    /// Bytes already there by content (a digest or chunk hash compared equal).
    func skipped(bytes: UInt64) { lock.withLock { s.bytesDone += bytes; s.skippedBytes += bytes; s.matchedBytes += bytes } }
    /// Chunks of a resumed partial file found already there (their hashes matched).
    func resumed(bytes: UInt64) {
        lock.withLock { s.bytesDone += bytes; s.skippedBytes += bytes; s.matchedBytes += bytes; s.resumedBytes += bytes }
    }
    /// A file done: copied, or (`skipped`) found identical by content.
    func fileDone(skipped: Bool = false, name: String? = nil) {
        lock.withLock {
            s.filesDone += 1
            if skipped { s.filesSkipped += 1; s.matchedFiles += 1 } else { s.filesCopied += 1 }
        }
        told(name, skipped ? .identical : .copied)
    }
    /// A file skipped by size and modification time: done, not read.
    func skippedUnread(bytes: UInt64, name: String? = nil) {
        lock.withLock {
            s.bytesDone += bytes; s.skippedBytes += bytes; s.unreadBytes += bytes
            s.filesDone += 1; s.filesSkipped += 1; s.unreadFiles += 1
        }
        told(name, .unread)
    }
    func specialSkipped(_ path: String, mode: UInt32) {
        lock.withLock {
            s.specialFiles += 1
            if s.specialNames.count < 20 { s.specialNames.append("\(path) (\(Paths.kindName(mode_t(mode))))") }
        }
    }
    func retransmitted() { lock.withLock { s.retransmittedChunks += 1 } }
    func rejectedFrame() { lock.withLock { s.rejectedFrames += 1 } }
    func fileFailed(_ message: String, code: TransferError.Code = .io, fromPeer: Bool = false, name: String? = nil) {
        lock.withLock {
            if s.filesFailed == 0 { s.failureCode = code; s.failureFromPeer = fromPeer }
            s.filesFailed += 1
            s.filesDone += 1
            if s.failures.count < 20 { s.failures.append(message) }
        }
        told(name, .failed, message)
    }

}

/// The result of a finished transfer.
public struct TransferSummary: Sendable {
    public var files: UInt64
    public var bytes: UInt64
    public var wireBytes: UInt64
    public var skippedBytes: UInt64
    public var filesSkipped: UInt64
    /// See `TransferProgress.Snapshot`: skipped by size and mtime (not read), and by content.
    public var unreadFiles: UInt64
    public var unreadBytes: UInt64
    public var matchedFiles: UInt64
    public var matchedBytes: UInt64
    public var resumedBytes: UInt64
    /// Files copied (at their final name) and failed; a successful transfer has none failed.
    public var filesCopied: UInt64
    public var filesFailed: UInt64
    public var retransmittedChunks: UInt64
    public var rejectedFrames: UInt64
    /// See `TransferProgress.Snapshot.directBytes`, `directReadBytes` and `zeroCopyBytes`.
    public var directBytes: UInt64
    public var directReadBytes: UInt64
    public var zeroCopyBytes: UInt64
    public var seconds: Double
    /// Devices, FIFOs and sockets left out of a tree, and the first few of them by name.
    public var specialFiles: UInt64
    public var specialNames: [String]
    /// A range session (`TransferOptions.range`): the range's chunk hashes in order, as sent
    /// (push) or as received and verified (pull); a striped file's digest is made of all its
    /// ranges' hashes. Empty for other transfers.
    public var rangeHashes: [ChunkHash] = []

    public init(_ s: TransferProgress.Snapshot) {
        files = s.filesTotal
        bytes = s.bytesTotal
        wireBytes = s.wireBytes
        skippedBytes = s.skippedBytes
        filesSkipped = s.filesSkipped
        unreadFiles = s.unreadFiles
        unreadBytes = s.unreadBytes
        matchedFiles = s.matchedFiles
        matchedBytes = s.matchedBytes
        resumedBytes = s.resumedBytes
        filesCopied = s.filesCopied
        filesFailed = s.filesFailed
        retransmittedChunks = s.retransmittedChunks
        rejectedFrames = s.rejectedFrames
        directBytes = s.directBytes
        directReadBytes = s.directReadBytes
        zeroCopyBytes = s.zeroCopyBytes
        seconds = s.seconds
        specialFiles = s.specialFiles
        specialNames = s.specialNames
    }
}

/// A shared token bucket on wire bytes (`--bwlimit`): each frame waits for its turn on a
/// virtual clock, so the long-run rate never exceeds the limit and bursts stay one frame long.
/// A frame goes at the start of its turn and the next waits for its end; the session's last
/// turn is waited for by `drain` before the sender ends the session (without it, a file of one
/// chunk, up to 4 MiB by default, went at full speed whatever the limit).
final class RateLimiter: @unchecked Sendable {
    private let lock = Lock()
    private let bytesPerSecond: Double
    private var nextFreeNs: UInt64 = 0

    init(bytesPerSecond: UInt64) { self.bytesPerSecond = Double(bytesPerSecond) }

    func acquire(_ bytes: Int) {
        let wait: UInt64 = lock.withLock {
            let now = monotonicNs()
            let start = max(now, nextFreeNs)
            nextFreeNs = start + UInt64(Double(bytes) / bytesPerSecond * 1e9)
            return start > now ? start - now : 0
        }
        if wait > 0 {
            var ts = timespec(tv_sec: Int(wait / 1_000_000_000), tv_nsec: Int(wait % 1_000_000_000))
            var rest = timespec()
            while nanosleep(&ts, &rest) != 0 && errno == EINTR { ts = rest }
        }
    }

    /// Waits until the last frame's turn has ended, in tenths of a second, giving up as soon
    /// as `stop` says so (a cancelled or failed session).
    func drain(stop: () -> Bool) {
        for _ in 0..<1_000_000 {
            let left = lock.withLock { nextFreeNs > monotonicNs() ? nextFreeNs - monotonicNs() : 0 }
            if left == 0 || stop() { return }
            usleep(useconds_t(min(left / 1000, 100_000)))
        }
    }
}
