import Foundation
import GlobalFS

extension DaemonAPI {
    /// The body of `GET /api/v1/transfers/{id}/events` (server-sent events): one `progress`
    /// event each time the job as `render` shows it changes, then `end` with its final state;
    /// at most a day.
    ///
    /// Pushed, not polled (issue 14, item 3): between events the watcher awaits the queue's
    /// change feed (`JobStore.waitForChange`: an in-process broadcast, and on PostgreSQL
    /// LISTEN/NOTIFY, so a change made by another daemon sharing the queue wakes it too) and
    /// reads its job (one row, `fetchJob`, no thread held) only after a change. A watcher of a
    /// job that nothing changes costs no query at all. Two exceptions, neither a query: a job
    /// this daemon's runner is running has live counters in memory, looked at every second (fifty
    /// consoles watching ten running jobs each cost the daemon 5.7 % of a core at twice a second,
    /// 4.2 % at once, `bench/console.sh`; a person reads a rate no faster); and
    /// after 30 s without a change a comment line (`: idle`, ignored by SSE clients) is sent,
    /// so that a client that went away ends the stream (the write fails) and proxies keep it.
    /// However fast the queue changes, a watcher reads its job at most four times a second.
    func streamEvents(of id: Int64, render: (Job) -> String, send: (String) async throws -> Void) async throws {
        let clock = ContinuousClock()
        let end = clock.now + .seconds(86_400)
        var last = ""
        var seen = store.generation  // taken before the read: a change during it is not missed
        var job = try await store.fetchJob(id)
        var readAt = clock.now
        for _ in 0..<1_000_000 {
            guard let j = job else { break }
            let text = events.rendered(j, render)
            if text != last {
                try await send("event: \(j.state.isFinal ? "end" : "progress")\ndata: \(text)\n\n")
                last = text
            }
            if j.state.isFinal || clock.now >= end || Task.isCancelled { break }
            let live = j.state == .running && runner?.liveProgress(id) != nil
            let g = await store.waitForChange(after: seen, timeout: live ? .seconds(1) : .seconds(30))
            if Task.isCancelled { break }
            if g != seen {
                let since = clock.now - readAt
                if since < .milliseconds(250) { try await Task.sleep(for: .milliseconds(250) - since) }
                seen = store.generation
                job = try await events.job(id, generation: seen) { try await store.fetchJob(id) }
                readAt = clock.now
            } else if !live {
                try await send(": idle\n\n")
            }
        }
    }
}

/// How many event streams may be open at once: per user, and for all users together. A stream
/// lasts as long as its job (up to a day) and holds one of the API's connections
/// (`api_connections`, 1,024 by default) all that time: without a limit, one token's 1,024
/// streams of its own running job left no connection for anyone else (the health check, the
/// Slurm hooks, other users). A stream beyond a limit gets one `event: refused` with the reason
/// and ends at once; `ferry jobs wait` then polls, a browser's EventSource tries again later.
final class EventStreamLimit: @unchecked Sendable {
    let perUser: Int
    let total: Int
    private let lock = NSLock()
    private var open: [String: Int] = [:]
    private var all = 0

    /// `connections`: the API's connection limit; event streams may take half of it.
    init(perUser: Int = 64, connections: Int = 1024) {
        self.perUser = perUser
        self.total = max(1, connections / 2)
    }

    /// Takes a place for one stream of `user`; nil when there is one, else the reason.
    func enter(_ user: String) -> String? {
        lock.lock(); defer { lock.unlock() }
        if all >= total { return "the daemon has \(all) event streams open, its limit; poll the job instead" }
        if open[user, default: 0] >= perUser { return "'\(user)' has \(perUser) event streams open, the limit per user; close some, or poll" }
        open[user, default: 0] += 1
        all += 1
        return nil
    }

    func leave(_ user: String) {
        lock.lock(); defer { lock.unlock() }
        all -= 1
        let n = open[user, default: 1] - 1
        open[user] = n > 0 ? n : nil
    }
}

/// What the event streams of one job share (many consoles watching the same jobs): the job as
/// read after a queue generation, and its rendering, made once for every stream that wants it.
/// A stream reads its job after each change of the queue (at most four times a second) and
/// renders it at least twice a second while it runs (its live counters); fifty consoles
/// watching ten running jobs made 500 reads per change and 1,000 renderings a second, 6.5 % of
/// a core on the daemon (`bench/console.sh`). Now a job is read once per generation for all
/// its streams, and rendered once per quarter second (a new state or update renders at once).
/// Bounded: at most 10,000 jobs remembered, then forgotten together.
final class EventShare: @unchecked Sendable {
    private let lock = NSLock()
    private var jobs: [Int64: (generation: UInt64, job: Job?)] = [:]
    private var texts: [Int64: (key: String, at: ContinuousClock.Instant, text: String)] = [:]
    static let maxJobs = 10_000
    static let renderAge: Duration = .milliseconds(250)

    /// Job `id` as read at `generation` or later: the read another stream made, or `fetch`.
    func job(_ id: Int64, generation: UInt64, fetch: () async throws -> Job?) async throws -> Job? {
        if let known = lock.withLock({ jobs[id] }), known.generation >= generation { return known.job }
        let job = try await fetch()
        lock.withLock {
            if jobs.count >= EventShare.maxJobs { jobs.removeAll() }
            if (jobs[id]?.generation ?? 0) < generation { jobs[id] = (generation, job) }
        }
        return job
    }

    /// `render(job)`, or the text another stream made of the same job (same state and update)
    /// less than a quarter second ago.
    func rendered(_ job: Job, _ render: (Job) -> String) -> String {
        let key = "\(job.state.rawValue) \(job.updated) \(job.attempts) \(job.bytes)"
        let now = ContinuousClock.now
        if let t = lock.withLock({ texts[job.id] }), t.key == key, now - t.at < EventShare.renderAge { return t.text }
        let text = render(job)
        lock.withLock {
            if texts.count >= EventShare.maxJobs { texts.removeAll() }
            texts[job.id] = (key, now, text)
        }
        return text
    }
}
