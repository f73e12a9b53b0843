import Foundation
import Storage

/// The threads on which the API does its blocking work: database transactions (GRDB's queue,
/// PostgreSQL round trips), token checks, audit lines (synced writes), directory walks of the
/// staging cache, registration scans.
///
/// Why (issue 14, `bench/stall.sh`): the route handlers are async, and Swift runs them on its
/// cooperative pool, which has one thread per core: two on a two-core node. Handlers that
/// block there (a read waiting behind a registration's write transaction, a synced audit line
/// on a loaded disk) take those threads from everything else that is async in the process:
/// Hummingbird's loop that takes new connections from NIO, the request bodies, the event
/// streams. Requests then wait before they reach a handler, and with enough of them a
/// client's timeout ends them first: the API "stops answering" although nothing in it is busy.
///
/// Every handler therefore runs with one of two such executors as its task executor
/// (`DaemonAPI.handle`, `onPool`): the cooperative pool only moves bytes and never waits on a
/// lock, a disk or a database. Each pool has a fixed number of threads (16; `quickReads` fewer): it bounds how much
/// blocking work runs at once, and a request beyond it waits in the queue (in order), instead
/// of an OS thread being made per request as the daemon's `offLoop` used to.
public typealias BlockingPool = ThreadPoolExecutor

extension ThreadPoolExecutor {
    /// Requests that only read (GET, HEAD): job and catalog reads, event streams (a watcher
    /// holds a thread only while it reads, not while it sleeps between reads).
    public static let reads = BlockingPool(threads: 16, name: "ferry-api-r", stackSize: 1 << 20)
    /// Reads whose work is bounded by one key or one page (`DaemonAPI.quickOperations`): a
    /// job, a page of a listing, an entry, a hook's staging status. Two threads per core: the
    /// work is CPU (SQLite's pages are in memory) or one round trip (PostgreSQL), and with as
    /// many threads as `reads` has they were time-sliced against each other on two cores, every
    /// request finishing late instead of most finishing early (`bench/api.sh`, job reads, 100
    /// clients: 16 threads 7,137 requests/s, p99 40.5 ms; 4 threads 11,798/s, p99 22.4 ms).
    public static let quickReads = BlockingPool(threads: max(4, 2 * ProcessInfo.processInfo.activeProcessorCount), name: "ferry-api-q", stackSize: 1 << 20)
    /// Requests that change something and may take long: a registration (a tree's walk), a
    /// sweep of the staging cache, a replication. Apart from reads so that writes waiting for
    /// the database's lock never keep a read from running.
    public static let writes = BlockingPool(threads: 16, name: "ferry-api-w", stackSize: 1 << 20)
    /// Writes bounded by their request (`DaemonAPI.quickOperations`: a submission, a cancel or
    /// retry, a hook's stage-in, stage-out and teardown). Two threads per core, as
    /// `quickReads`: on SQLite they queue for one writer anyway and their work is CPU
    /// (parsing, links, the audit line), and with threads of their own a registration walking
    /// a tree for minutes, or sixteen of them, cannot hold the threads a hook's stage-in needs.
    /// (Measured under `bench/stall.sh`, 1,000 hooks: on SQLite four threads or sixteen made
    /// no measurable difference, the hooks' slow answers were the listen backlog,
    /// `DaemonService`; on PostgreSQL sixteen gave the same 219 stage-ins/s as four, and the
    /// status reads beside them went from 9.5 ms to 413 ms at the median.)
    public static let quickWrites = BlockingPool(threads: max(4, 2 * ProcessInfo.processInfo.activeProcessorCount), name: "ferry-api-qw", stackSize: 1 << 20)
}

/// Runs `body` (async, but free to block) on one of the daemon's blocking pools.
func onPool<T>(_ pool: BlockingPool = .reads, _ body: () async throws -> T) async throws -> T {
    try await withTaskExecutorPreference(pool) { try await body() }
}
