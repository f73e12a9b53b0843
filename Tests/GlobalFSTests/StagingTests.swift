import Foundation
import Testing
import TestSupport
@testable import GlobalFS
import Storage

/// The #FERRY directive rules (the same as contrib/slurm/burst_buffer.lua's) and the staging
/// cache's bookkeeping on both engines.
@Suite("Prestaging units")
struct StagingTests {
    @Test("directives: the leading block only, %j and %%, options, and every refusal names its line")
    func directives() throws {
        let good = """
            #!/bin/bash
            #SBATCH -N 1

            #FERRY stage_in --checksum gfs://wuxi/zinc22@2024/H20 /scratch/%j/in
            #FERRY stage_in --optional ferry://hlrs/data/x.nc /scratch/%j/x.nc
            #FERRY stage_out /scratch/%j/out ferry://wuxi/results/100%%-%j
            srun ./dock
            # a comment after the command is fine
            """
        let d = try Directives.parse(good, jobID: "4711")
        #expect(d.count == 3)
        #expect(d[0] == StageDirective(direction: .stageIn, source: "gfs://wuxi/zinc22@2024/H20", destination: "/scratch/4711/in", checksum: true, line: 4))
        #expect(d[1].optional && !d[1].checksum && d[1].line == 5)
        #expect(d[2].direction == .stageOut && d[2].destination == "ferry://wuxi/results/100%-4711")
        // A copy Slurm already substituted is taken as it is.
        #expect(try Directives.parse("#!/bin/sh\n#FERRY stage_in gfs://a/b /s/77\n", jobID: nil)[0].destination == "/s/77")
        #expect(try Directives.parse("#!/bin/sh\necho no directives\n", jobID: "1").isEmpty)

        func refusal(_ script: String) -> String {
            do { _ = try Directives.parse(script, jobID: "1"); return "accepted" } catch { return "\(error)" }
        }
        #expect(refusal("#!/bin/sh\nhostname\n#FERRY stage_in gfs://a/b /x\n") == "line 3: #FERRY directive after the first command would be ignored by Slurm; move it above")
        #expect(refusal("#!/bin/sh\n   \n#FERRY stage_in gfs://a/b /x\n").contains("line 3: #FERRY directive after line 2, which holds only blanks"))
        #expect(refusal("#!/bin/sh\nhostname\n   #FERRY stage_out /a ferry://b/c\n").hasPrefix("line 3: #FERRY directive after the first command"))
        #expect(refusal("#FERRY stage_in gfs://a/b\n") == "line 1: stage_in needs SRC and DST, got 1 argument")
        #expect(refusal("#FERRY stage_in gfs://a/b relative/dst\n") == "line 1: DST 'relative/dst' is not gfs://..., ferry://... or an absolute path")
        #expect(refusal("#FERRY stage_in http://a/b /x\n").contains("SRC 'http://a/b' is not gfs://"))
        #expect(refusal("#FERRY stage_out --checksum /a ferry://b/c\n") == "line 1: unknown option '--checksum' for stage_out")
        #expect(refusal("#FERRY stage_in --fast gfs://a/b /x\n") == "line 1: unknown option '--fast' for stage_in")
        #expect(refusal("#FERRY copy gfs://a/b /x\n").contains("unknown #FERRY verb 'copy'"))
        #expect(refusal("#FERRYX stage_in gfs://a/b /x\n").contains("unknown directive '#FERRYX'"))
        #expect(refusal("#FERRY stage_in gfs://a/b /x/%u\n").contains("contains '%u'; only %j (job id) and %% are allowed"))
        #expect(refusal("#FERRY stage_in gfs://a/b /x\r\n").contains("carriage return"))
        #expect(refusal("#FERRY stage_in gfs://a/b \\\n/x\n").contains("line continuation"))
        #expect(refusal("#FERRY\n").contains("needs stage_in or stage_out"))
        // Not a directive: other #-lines, and #FERRY inside a word after the block.
        #expect(refusal("#!/bin/sh\n#SBATCH -J x\nhostname\necho '#FERRYX'\n# FERRY stage_in a b\n") == "accepted")
    }

    @Test("staging cache: one entry for concurrent askers, pins, LRU eviction of unpinned ready entries only, expiry of dead jobs' pins", arguments: Backend.allCases)
    func cache(_ backend: Backend) throws {
        let c = try StagingCache(db: try openDatabase(try backend.newDatabase()))
        // Ten jobs ask for one source at once: one entry, created once, ten pins.
        let created = Counter()
        DispatchQueue.concurrentPerform(iterations: 10) { k in
            if let r = try? c.pin(key: "gfs://wuxi/genome/#1", source: "gfs://wuxi/genome", schedulerJob: "j\(k)", now: 100, path: { "/cache/\($0)" }), r.created {
                created.add()
            }
        }
        #expect(created.value == 1)
        let all = try c.entries()
        #expect(all.count == 1 && all[0].pins.count == 10 && all[0].state == .staging && all[0].path == "/cache/\(all[0].id)")
        let genome = all[0].id
        try c.finish(genome, state: .ready, bytes: 10, now: 110)
        // Two more entries; quota 25 with 10 + 10 + 10 ready.
        let a = try c.pin(key: "a", source: "a", schedulerJob: "ja", now: 120) { "/cache/\($0)" }.entry.id
        let b = try c.pin(key: "b", source: "b", schedulerJob: "jb", now: 130) { "/cache/\($0)" }.entry.id
        try c.finish(a, state: .ready, bytes: 10, now: 120)
        try c.finish(b, state: .ready, bytes: 10, now: 130)
        #expect(try c.evictionCandidates(quota: 25).isEmpty)  // everything pinned
        for k in 0..<10 { _ = try c.release(schedulerJob: "j\(k)") }
        _ = try c.release(schedulerJob: "ja")
        // Unpinned: genome (used at 110) and a (120); one must go, the least recently used.
        #expect(try c.evictionCandidates(quota: 25).map(\.id) == [genome])
        #expect(try c.evictionCandidates(quota: 5).map(\.id) == [genome, a])  // b stays pinned even over quota
        // Evicted: the row goes, the eviction is recorded (newest first), counted in the use.
        let genomeEntry = try #require(try c.entry(id: genome))
        try c.evicted(genomeEntry, reason: "over quota", now: 135)
        #expect(try c.entry(id: genome) == nil)
        #expect(try c.evictions().map { "\($0.source) \($0.bytes) \($0.lastUsed) \($0.at) \($0.reason)" } == ["gfs://wuxi/genome 10 110 135 over quota"])
        let use = try c.use(evictedSince: 130)
        #expect(use.readyBytes == 20 && use.entries == 2 && use.pinned == 1 && use.evicted == 1, "\(use)")
        #expect(try c.use(evictedSince: 136).evicted == 0)
        // A failed entry polled for stays failed, with its reason (a waiting hook must see it);
        // asked for again with retry, it is reset to staging (a new transfer).
        try c.finish(a, state: .failed, error: "peer down", now: 140)
        let polled = try c.pin(key: "a", source: "a", schedulerJob: "jc", retryFailed: false, now: 145) { "/cache/\($0)" }
        #expect(!polled.created && polled.entry.state == .failed && polled.entry.error == "peer down")
        let again = try c.pin(key: "a", source: "a", schedulerJob: "jc", retryFailed: true, now: 150) { "/cache/\($0)" }
        #expect(again.created && again.entry.state == .staging && again.entry.error == nil && again.entry.id == a)
        // Dead jobs' pins: not in the scheduler's list, or older than the limit.
        #expect(try c.expirePins(keep: ["jc"], before: 0) == ["jb"])
        #expect(try c.expirePins(keep: nil, before: 151) == ["jc"])
        #expect(try c.entries().allSatisfy { $0.pins.isEmpty })
        // Links and stage-outs are remembered per job, for idempotent repeats and teardown.
        try c.recordLink(schedulerJob: "j1", path: "/s/1/in", target: "/cache/1/data")
        try c.recordLink(schedulerJob: "j1", path: "/s/1/in", target: "/cache/1/data")
        #expect(try c.links(schedulerJob: "j1").map(\.path) == ["/s/1/in"])
        try c.recordOutbound(.init(schedulerJob: "j1", index: 0, source: "/s/1/out", destination: "ferry://w/r", optional: false, job: 7, error: nil))
        #expect(try c.outbound(schedulerJob: "j1").first?.job == 7)
        // A pin returns the asking job's recorded links (its ask needs them next).
        #expect(try c.pin(key: "k", source: "k", schedulerJob: "j1", now: 160) { "/cache/\($0)" }.links.map(\.target) == ["/cache/1/data"])
        let status = try c.status(schedulerJob: "j1")
        #expect(status.entries.map(\.key) == ["k"] && status.links.map(\.path) == ["/s/1/in"] && status.outbound.map(\.index) == [0])
    }

    @Test("an ask records an entry's use at most once a minute (hooks polling a shared entry do not all write its row)", arguments: Backend.allCases)
    func useResolution(_ backend: Backend) throws {
        let c = try StagingCache(db: try openDatabase(try backend.newDatabase()))
        let path: (Int64) -> String = { "/cache/\($0)" }
        let id = try c.pin(key: "k", source: "k", schedulerJob: "a", now: 1_000, path: path).entry.id
        #expect(try c.pin(key: "k", source: "k", schedulerJob: "b", now: 1_030, path: path).entry.lastUsed == 1_000)
        #expect(try c.entry(id: id)?.lastUsed == 1_000)
        #expect(try c.pin(key: "k", source: "k", schedulerJob: "c", now: 1_000 + StagingCache.useResolution + 1, path: path).entry.lastUsed == 1_061)
        #expect(try c.entry(id: id)?.lastUsed == 1_061)
        #expect(try c.entry(id: id)?.pins == ["a", "b", "c"])
    }

    @Test("an ask of a ready entry records the job's link in its own transaction; the links it returns are those from before; a link not made is put back", arguments: Backend.allCases)
    func pinRecordsLink(_ backend: Backend) throws {
        let c = try StagingCache(db: try openDatabase(try backend.newDatabase()))
        let path: (Int64) -> String = { "/cache/\($0)" }
        let link: (path: String, target: (String) -> String) = ("/j/a/in", { $0 + "/data" })
        // Staging: nothing recorded (the link is made when the entry is ready).
        let first = try c.pin(key: "k", source: "k", schedulerJob: "a", now: 1, linkIfReady: link, path: path)
        #expect(first.entry.state == .staging && !first.linkRecorded && first.links.isEmpty)
        #expect(try c.links(schedulerJob: "a").isEmpty)
        try c.finish(first.entry.id, state: .ready, bytes: 1, now: 2)
        // Ready: recorded with the entry's target; the answer still lists the links from before.
        let ready = try c.pin(key: "k", source: "k", schedulerJob: "a", now: 3, linkIfReady: link, path: path)
        let target = "/cache/\(first.entry.id)/data"
        #expect(ready.linkRecorded && ready.links.isEmpty)
        #expect(try c.links(schedulerJob: "a").map { $0.path + " -> " + $0.target } == ["/j/a/in -> " + target])
        // The next ask sees it among the job's links.
        #expect(try c.pin(key: "k", source: "k", schedulerJob: "a", now: 4, linkIfReady: link, path: path).links.map(\.target) == [target])
        // The link could not be made: the record goes (none before) or gets its old target back.
        try c.restoreLink(schedulerJob: "a", path: "/j/a/in", before: nil)
        #expect(try c.links(schedulerJob: "a").isEmpty)
        try c.recordLink(schedulerJob: "b", path: "/j/b/in", target: "/elsewhere")
        _ = try c.pin(key: "k", source: "k", schedulerJob: "b", now: 5, linkIfReady: ("/j/b/in", { $0 + "/data" }), path: path)
        #expect(try c.links(schedulerJob: "b").map(\.target) == [target])
        try c.restoreLink(schedulerJob: "b", path: "/j/b/in", before: "/elsewhere")
        #expect(try c.links(schedulerJob: "b").map(\.target) == ["/elsewhere"])
    }

    @Test("teardown's release: links and pins forgotten, only unpinned entries that are not ready lose their rows, ready bytes counted", arguments: Backend.allCases)
    func release(_ backend: Backend) throws {
        let c = try StagingCache(db: try openDatabase(try backend.newDatabase()))
        let path: (Int64) -> String = { "/cache/\($0)" }
        let staging = try c.pin(key: "s", source: "s", schedulerJob: "t1", now: 1, path: path).entry.id   // only t1: orphaned
        let shared = try c.pin(key: "x", source: "x", schedulerJob: "t1", now: 1, path: path).entry.id    // t2 too: kept
        _ = try c.pin(key: "x", source: "x", schedulerJob: "t2", now: 1, path: path)
        let ready = try c.pin(key: "r", source: "r", schedulerJob: "t1", now: 1, path: path).entry.id     // ready: kept
        try c.finish(ready, state: .ready, bytes: 42, now: 2)
        try c.setJob(staging, job: 99)
        try c.recordLink(schedulerJob: "t1", path: "/j/t1/in", target: "/cache/1/data")
        try c.recordLink(schedulerJob: "t1", path: "/j/t1/gone", target: "/cache/2/data")
        try c.recordLink(schedulerJob: "t2", path: "/j/t2/in", target: "/cache/2/data")
        // Each of t1's links is offered to the caller, inside the transaction, and counted when
        // the caller removed it (one was gone already); t2's stays.
        var offered: [String] = []
        let r = try c.release(schedulerJob: "t1") { l in offered.append(l.path + " -> " + l.target); return l.path.hasSuffix("/in") }
        #expect(offered == ["/j/t1/gone -> /cache/2/data", "/j/t1/in -> /cache/1/data"] && r.linksRemoved == 1)
        #expect(try c.links(schedulerJob: "t2").map(\.path) == ["/j/t2/in"])
        #expect(r.unpinned == [staging, shared, ready])
        #expect(r.orphans.map(\.id) == [staging] && r.orphans.first?.job == 99 && r.orphans.first?.path == "/cache/\(staging)")
        #expect(r.readyBytes == 42)
        #expect(try c.links(schedulerJob: "t1").isEmpty && c.status(schedulerJob: "t1").entries.isEmpty)
        #expect(try c.entries().map(\.id) == [shared, ready])
        #expect(try c.entry(id: shared)?.pins == ["t2"])
        // Twice (a scheduler may run the hook again): nothing more to do.
        let again = try c.release(schedulerJob: "t1") { _ in Issue.record("no link is left to offer"); return true }
        #expect(again.unpinned.isEmpty && again.orphans.isEmpty && again.readyBytes == 42 && again.linksRemoved == 0)
        // The last pin of an entry still staging goes with its job: the entry is an orphan.
        _ = try c.pin(key: "x", source: "x", schedulerJob: "t3", now: 3, path: path)
        #expect(try c.release(schedulerJob: "t2").orphans.isEmpty)
        let last = try c.release(schedulerJob: "t3")
        #expect(last.unpinned == [shared] && last.orphans.map(\.id) == [shared] && last.orphans.first?.pins == [])
        #expect(try c.entries().map(\.id) == [ready])
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.withLock { n += 1 } }
    var value: Int { lock.withLock { n } }
}
