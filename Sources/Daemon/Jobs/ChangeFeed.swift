import Foundation
import GlobalFS
import Storage

/// The job queue's change feed (issue 14, item 3: events pushed, not polled).
///
/// A counter (`generation`) that moves on whenever a job changed, and waiters that sleep until
/// it does (`wait(after:timeout:)`: a continuation, no thread, no timer while nothing moves).
/// Who moves it:
/// - this process: `JobStore.write`, after a transaction that changed a row (a claim that found
///   nothing, a `promote` that moved nothing, do not wake anyone);
/// - on PostgreSQL, other daemons sharing the queue: every changing transaction also sends
///   `NOTIFY ferry_jobs` (payload: the sender's `origin`, so a daemon ignores its own), and each
///   store LISTENs on a pooled connection of its own (`PostgreSQLDatabase.listen`). When that
///   connection is (re)established the feed moves on too, since notifications sent while it
///   was down are lost: watchers then look once more.
/// On SQLite one process owns the file, and the in-process broadcast is the whole feed.
///
/// The feed says "something changed", not what: a watcher reads its job again (one indexed
/// row) and compares. A payload with job ids would spare reads under heavy write load, at the
/// price of NOTIFY's 8,000-byte payload limit for bulk changes (promote, cancel chains).
public final class ChangeFeed: @unchecked Sendable {
    /// The PostgreSQL channel of the job queue.
    public static let channel = "ferry_jobs"
    /// This feed's name in its NOTIFYs.
    public let origin = "\(getpid())-\(UUID().uuidString)"

    private let lock = NSLock()
    private var value: UInt64 = 0
    private var waiters: [Int: (CheckedContinuation<UInt64, Never>, Task<Void, Never>?)] = [:]
    private var nextToken = 0
    private var listening = false
    private let listeningSignal = DispatchSemaphore(value: 0)

    public init() {}

    public var generation: UInt64 { lock.withLock { value } }

    /// Whether the LISTEN of a PostgreSQL store is established now (always false on SQLite).
    public var isListening: Bool { lock.withLock { listening } }

    /// Something changed: every waiter wakes with the new generation.
    public func bump() {
        let (woken, v) = lock.withLock { () -> ([(CheckedContinuation<UInt64, Never>, Task<Void, Never>?)], UInt64) in
            value &+= 1
            let w = Array(waiters.values)
            waiters.removeAll()
            return (w, value)
        }
        for (k, timer) in woken {
            timer?.cancel()
            k.resume(returning: v)
        }
        threads.lock()
        threads.broadcast()
        threads.unlock()
    }

    /// Threads waiting in `waitBlocking` (the job runner's workers).
    private let threads = NSCondition()

    /// `wait(after:timeout:)` for a thread of its own (the runner's workers): blocks until the
    /// generation differs from `after` or `timeout` seconds have passed; returns it.
    public func waitBlocking(after: UInt64, timeout: Double) -> UInt64 {
        let deadline = Date(timeIntervalSinceNow: timeout)
        threads.lock()
        defer { threads.unlock() }
        // `bump` moves the value before it broadcasts under `threads`: a bump between this
        // check and the wait finds the waiter already waiting.
        while generation == after && threads.wait(until: deadline) {}
        return generation
    }

    /// Returns the generation as soon as it differs from `after` (at once if it already does),
    /// or after `timeout`, or when the calling task is cancelled: compare with `after` to know
    /// which. Holds no thread while it waits.
    public func wait(after: UInt64, timeout: Duration) async -> UInt64 {
        let token = lock.withLock { () -> Int in nextToken += 1; return nextToken }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (k: CheckedContinuation<UInt64, Never>) in
                lock.lock()
                if value != after || Task.isCancelled {
                    let v = value
                    lock.unlock()
                    k.resume(returning: v)
                    return
                }
                // The timer exists only while someone waits, and goes with the wake-up.
                let timer = Task { [weak self] in
                    try? await Task.sleep(for: timeout)
                    if !Task.isCancelled { self?.resume(token) }
                }
                waiters[token] = (k, timer)
                lock.unlock()
            }
        } onCancel: {
            resume(token)
        }
    }

    private func resume(_ token: Int) {
        let (w, v) = lock.withLock { (waiters.removeValue(forKey: token), value) }
        if let (k, timer) = w {
            timer?.cancel()
            k.resume(returning: v)
        }
    }

    /// Starts following the other daemons' changes when `db` has notifications (PostgreSQL):
    /// the LISTEN task, ended by cancelling it. Waits (at most 10 s) for the first LISTEN, so
    /// a store is following from its first use; nil on SQLite.
    func listen(_ db: any SQLDatabase) -> Task<Void, Never>? {
        let origin = self.origin
        let task = db.listen(ChangeFeed.channel, listening: { [weak self] in
            guard let self else { return }
            let first = self.lock.withLock { () -> Bool in defer { self.listening = true }; return !self.listening }
            if first { self.listeningSignal.signal() } else { self.bump() }
        }, notify: { [weak self] payload in
            if payload != origin { self?.bump() }
        })
        if task != nil { _ = listeningSignal.wait(timeout: .now() + 10) }
        return task
    }
}

/// A session that notes whether a statement of the transaction changed a row (INSERT, UPDATE
/// or DELETE with a row count above 0, or rows returned by one with RETURNING): the store's
/// `write` moves the change feed only then.
final class ChangeCountingSession: SQLSession {
    let base: any SQLSession
    var changed = false
    init(base: any SQLSession) { self.base = base }
    var dialect: SQLDialect { base.dialect }

    static func changes(_ sql: String) -> Bool {
        let head = sql.drop { $0.isWhitespace }.prefix(6).uppercased()
        return head == "INSERT" || head == "UPDATE" || head == "DELETE"
    }

    func query(_ sql: String, _ args: [any SQLArgument]) throws -> [SQLRow] {
        let rows = try base.query(sql, args)
        if !rows.isEmpty && ChangeCountingSession.changes(sql) { changed = true }
        return rows
    }

    func execute(_ sql: String, _ args: [any SQLArgument]) throws -> Int {
        let n = try base.execute(sql, args)
        if n > 0 && ChangeCountingSession.changes(sql) { changed = true }
        return n
    }

    func send(_ sql: String, _ args: [any SQLArgument]) throws {
        // Its row count is not known: counted as a change when it is one.
        if ChangeCountingSession.changes(sql) { changed = true }
        try base.send(sql, args)
    }
}

extension JobStore {
    /// Waits until the queue changed after generation `after` (here or, on PostgreSQL, in
    /// another daemon) or `timeout` passed; returns the generation then. No thread, no query.
    public func waitForChange(after: UInt64, timeout: Duration) async -> UInt64 {
        await changes.wait(after: after, timeout: timeout)
    }

    /// `get`, awaited without holding a thread (`SQLDatabase.fetch`): for the API's reads.
    public func fetchJob(_ id: Int64) async throws -> Job? {
        try await db.fetch("SELECT * FROM jobs WHERE id = ?", [.int(id)]).first.map(JobStore.job)
    }
}
