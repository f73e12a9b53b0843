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
    /// this daemon's runner is running has live counters in memory, looked at every 0.5 s; and
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
            let text = render(j)
            if text != last {
                try await send("event: \(j.state.isFinal ? "end" : "progress")\ndata: \(text)\n\n")
                last = text
            }
            if j.state.isFinal || clock.now >= end || Task.isCancelled { break }
            let live = j.state == .running && runner?.liveProgress(id) != nil
            let g = await store.waitForChange(after: seen, timeout: live ? .milliseconds(500) : .seconds(30))
            if Task.isCancelled { break }
            if g != seen {
                let since = clock.now - readAt
                if since < .milliseconds(250) { try await Task.sleep(for: .milliseconds(250) - since) }
                seen = store.generation
                job = try await store.fetchJob(id)
                readAt = clock.now
            } else if !live {
                try await send(": idle\n\n")
            }
        }
    }
}
