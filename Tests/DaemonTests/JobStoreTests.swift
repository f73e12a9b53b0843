import Foundation
import Testing
import GlobalFS
import Storage
import TestSupport
import Transfer
@testable import Daemon

/// The queue's rules, on both storage engines (SQLite; a real PostgreSQL server).
@Suite("Job queue")
struct JobStoreTests {

    @Test("the state graph: every platform state is reachable, final states stay final")
    func stateGraph() {
        #expect(JobState.allCases.count == 11)
        var seen: Set<JobState> = [.noStatus]
        var frontier: [JobState] = [.noStatus]
        while let s = frontier.popLast() {
            for n in JobState.allCases where s.canMove(to: n) && !seen.contains(n) {
                seen.insert(n)
                frontier.append(n)
            }
        }
        #expect(seen == Set(JobState.allCases))
        #expect(!JobState.success.canMove(to: .queued) && !JobState.skipped.canMove(to: .running))
        #expect(JobState.running.canMove(to: .upForRetry) && !JobState.queued.canMove(to: .success))
        // Parts have one more edge (a range redone after its commit), jobs never.
        #expect(JobState.success.canMovePart(to: .queued) && !JobState.skipped.canMovePart(to: .queued) && !JobState.failed.canMovePart(to: .running))
    }

    @Test("states move only through JobState's transition table: an illegal move is an error, not a write", arguments: Backend.allCases)
    func onlyLegalMoves(_ backend: Backend) throws {
        #expect(throws: JobStoreError.self) { try JobState.sql(moving: [.success], to: .queued) }
        #expect(throws: JobStoreError.self) { try JobState.sql(moving: [.queued, .success], to: .failed) }  // one bad source is enough
        #expect(throws: JobStoreError.self) { try JobState.failed.checkMove(to: .running) }
        #expect(try JobState.sql(moving: [.upForRetry, .deferred], to: .queued) == ("state = 'queued'", "state IN ('up_for_retry', 'deferred')"))
        let s = try JobStore(database: try backend.newDatabase())
        // A failed job with a dependency is retried into `scheduled` (an edge the table lacked).
        let dep = try s.submit(owner: "alice", request: JobRequest(source: "/a", destination: "ferry://b/a"), peer: "b", now: 100)
        var r = JobRequest(source: "/b", destination: "ferry://b/b")
        r.dependsOn = [dep]
        let child = try s.submit(owner: "alice", request: r, peer: "b", now: 100)
        let claimed = try #require(try s.claim(worker: "w", now: 101, leaseSeconds: 30))
        #expect(claimed.id == dep)
        #expect(try s.finish(dep, worker: "w", outcome: .success(bytes: 1, files: 1), now: 102) == .success)
        try s.promote(now: 103)
        #expect(try s.get(child)?.state == .queued)
        _ = try #require(try s.claim(worker: "w", now: 104, leaseSeconds: 30))
        #expect(try s.finish(child, worker: "w", outcome: .failure(message: "no", resumable: false), now: 105) == .failed)
        #expect(try s.retryJob(child, now: 106).state == .scheduled)
        // Moves the table refuses change nothing: a finished job is neither cancelled nor
        // retried, an outcome for a job not running is ignored.
        #expect(throws: JobStoreError.self) { try s.retryJob(dep, now: 107) }
        #expect(throws: JobStoreError.self) { try s.cancel(dep, by: "alice", now: 107) }
        #expect(try s.finish(dep, worker: "w", outcome: .failure(message: "late", resumable: true), now: 107) == nil)
        #expect(try s.get(dep)?.state == .success && s.get(dep)?.error == nil)
        // The store has no state write of its own: every `SET state` goes through the table.
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/Daemon/Jobs/JobStore.swift")
        let text = try String(contentsOf: source, encoding: .utf8)
        #expect(!text.contains("SET state = '"), "a literal state write in JobStore.swift")
        let parts = try String(contentsOf: source.deletingLastPathComponent().appendingPathComponent("PartStore.swift"), encoding: .utf8)
        #expect(!parts.contains("job_parts SET state = '"), "a literal part state write in PartStore.swift")
        #expect(parts.components(separatedBy: "SET state = ?").count - 1 == parts.components(separatedBy: ".checkMove(to:").count - 1)
        #expect(text.components(separatedBy: "SET state = ?").count - 1 == text.components(separatedBy: ".checkMove(to:").count - 1 - 1,
                "each `SET state = ?` follows a checkMove (submit checks one more, its INSERT)")
    }

    @Test("backoff: exponential, capped, jittered within bounds")
    func backoff() {
        var p = RetryPolicy()
        p.baseSeconds = 5
        p.capSeconds = 60
        p.jitter = 0.2
        #expect(p.delay(afterAttempt: 1, random: 0.5) == 5)
        #expect(p.delay(afterAttempt: 3, random: 0.5) == 20)
        #expect(p.delay(afterAttempt: 10, random: 0.5) == 60)
        #expect(p.delay(afterAttempt: 2, random: 0) == 8 && p.delay(afterAttempt: 2, random: 0.999_999) > 11.99)
        #expect(p.delay(afterAttempt: 200, random: 0.5) == 60)
    }

    @Test("bytes moved by day and by five minutes, per peer, the owner's or everyone's, successes only; lists by peer and by creation time", arguments: Backend.allCases)
    func moved(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        let day: Int64 = 86_400
        // Jobs ending at (day 10, 00:10), (day 10, 00:12), (day 11, 00:01) to peer b, one local
        // copy, one of bob's; one that failed moved nothing.
        func run(_ owner: String, _ peer: String, created: Int64, ends: Int64, _ outcome: AttemptOutcome) throws -> Int64 {
            let id = try s.submit(owner: owner, request: JobRequest(source: "/a", destination: peer.isEmpty ? "/b" : "ferry://\(peer)/a"), peer: peer, now: created)
            let job = try #require(try s.claim(worker: "w", now: ends - 1, leaseSeconds: 30))
            #expect(job.id == id)
            _ = try s.finish(id, worker: "w", outcome: outcome, now: ends)
            return id
        }
        let first = try run("alice", "b", created: 10 * day, ends: 10 * day + 600, .success(bytes: 100, files: 1))
        _ = try run("alice", "b", created: 10 * day + 700, ends: 10 * day + 720, .success(bytes: 50, files: 1))
        let late = try run("alice", "b", created: 11 * day, ends: 11 * day + 60, .success(bytes: 7, files: 1))
        _ = try run("alice", "", created: 11 * day, ends: 11 * day + 61, .success(bytes: 3, files: 1))
        _ = try run("bob", "b", created: 11 * day, ends: 11 * day + 62, .success(bytes: 1000, files: 1))
        _ = try run("alice", "b", created: 11 * day, ends: 11 * day + 63, .failure(message: "no", resumable: false, code: .permission))
        let byDay = try s.moved(owner: "alice", since: 10 * day, bucket: day)
        #expect(byDay.map { "\($0.start / day) \($0.peer) \($0.bytes) \($0.jobs)" } == ["10 b 150 2", "11  3 1", "11 b 7 1"])
        #expect(try s.moved(owner: nil, since: 11 * day, bucket: day).map(\.bytes) == [3, 1007])
        let byFive = try s.moved(owner: "alice", since: 10 * day, bucket: 300)
        #expect(byFive.map { "\($0.start - 10 * day) \($0.peer) \($0.bytes)" } == ["600 b 150", "\(day)  3", "\(day) b 7"])
        // Lists by peer ("" : local copies) and by creation time.
        #expect(try s.list(JobFilter(owner: "alice", limit: 100).with { $0.peer = "b"; $0.since = 11 * day }).map(\.id).first == late)
        #expect(try s.list(JobFilter(owner: "alice", limit: 100).with { $0.peer = "b" }).first?.id == first)
        #expect(try s.list(JobFilter(owner: "alice", limit: 100).with { $0.peer = "" }).count == 1)
    }

    @Test("measured throughput: bytes recorded at each renewal and at an attempt's end, by minute and peer, the owner's or everyone's, failed attempts too; a lost lease records nothing; samples older than two hours pruned", arguments: Backend.allCases)
    func measured(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        let t0: Int64 = 1_000_000 * 60
        let a = try s.submit(owner: "alice", request: JobRequest(source: "/a", destination: "ferry://b/a"), peer: "b", now: t0)
        let b = try s.submit(owner: "bob", request: JobRequest(source: "/a", destination: "ferry://c/a"), peer: "c", now: t0)
        #expect(try s.claim(worker: "w", now: t0, leaseSeconds: 30)?.id == a)
        #expect(try s.claim(worker: "w", now: t0, leaseSeconds: 30)?.id == b)
        // alice's job: 100 bytes in the first minute (two renewals), 50 in the second, 5 at its
        // (failed) end in the third; bob's: 1,000 in the second minute.
        #expect(try s.renew(a, worker: "w", now: t0 + 10, leaseSeconds: 30, bytes: 60, files: 0, moved: 60))
        #expect(try s.renew(a, worker: "w", now: t0 + 20, leaseSeconds: 30, bytes: 100, files: 0, moved: 40))
        #expect(try s.renew(a, worker: "w", now: t0 + 70, leaseSeconds: 30, bytes: 150, files: 0, moved: 50))
        #expect(try s.renew(b, worker: "w", now: t0 + 75, leaseSeconds: 30, bytes: 1000, files: 0, moved: 1000))
        #expect(try s.finish(a, worker: "w", outcome: .failure(message: "reset", resumable: true, code: .io), now: t0 + 130, moved: 5) == .upForRetry)
        // A worker that lost its lease records nothing.
        #expect(try !s.renew(a, worker: "w", now: t0 + 140, leaseSeconds: 30, bytes: 999, files: 0, moved: 999))
        let alice = try s.measured(owner: "alice", since: t0, bucket: 60)
        #expect(alice.map { "\($0.start - t0) \($0.peer) \($0.bytes) \($0.jobs)" } == ["0 b 100 1", "60 b 50 1", "120 b 5 1"])
        let all = try s.measured(owner: nil, since: t0 + 60, bucket: 60)
        #expect(all.map { "\($0.start - t0) \($0.peer) \($0.bytes)" } == ["60 b 50", "60 c 1000", "120 b 5"])
        // Two hours later, bob's job ends: the old samples go, its last one stays.
        #expect(try s.finish(b, worker: "w", outcome: .success(bytes: 1001, files: 1), now: t0 + 7_400, moved: 1) != nil)
        #expect(try s.measured(owner: nil, since: 0, bucket: 60).map(\.bytes) == [1])
    }

    @Test("a job's history: each attempt with the state it led to, its error and code; numbered again after a retry", arguments: Backend.allCases)
    func attemptHistory(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        var r = JobRequest(source: "/a", destination: "ferry://b/a")
        r.maxAttempts = 2
        let id = try s.submit(owner: "alice", request: r, peer: "b", now: 100)
        #expect(try s.attempts(id).isEmpty)
        _ = try #require(try s.claim(worker: "w1", now: 101, leaseSeconds: 30))
        #expect(try s.finish(id, worker: "w1", outcome: .failure(message: "reset by peer", resumable: true, code: .io), now: 102) == .upForRetry)
        try s.promote(now: 10_000)
        _ = try #require(try s.claim(worker: "w2", now: 10_000, leaseSeconds: 30))
        #expect(try s.finish(id, worker: "w2", outcome: .failure(message: "disk full", resumable: false, code: .noSpace), now: 10_001) == .failed)
        _ = try s.retryJob(id, now: 10_002)
        _ = try #require(try s.claim(worker: "w1", now: 10_003, leaseSeconds: 30))
        #expect(try s.finish(id, worker: "w1", outcome: .success(bytes: 42, files: 1), now: 10_004) == .success)
        let h = try s.attempts(id)
        #expect(h.map { "\($0.attempt) \($0.worker) \($0.state) \($0.code ?? "-") \($0.bytes)" } ==
                ["1 w1 up_for_retry io 0", "2 w2 failed no_space 0", "1 w1 success - 42"], "\(h)")
        #expect(h[0].error == "reset by peer" && h[1].error == "disk full" && h[2].error == nil && h.map(\.ended) == [102, 10_001, 10_004])
        // An outcome from a worker that no longer holds the job is not an attempt of it.
        #expect(try s.finish(id, worker: "w9", outcome: .success(bytes: 1, files: 1), now: 10_005) == nil)
        #expect(try s.attempts(id).count == 3)
    }

    @Test("claims: priority then age, never one job twice, per-peer and per-user limits", arguments: Backend.allCases)
    func claims(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        let a = try s.submit(owner: "alice", request: JobRequest(source: "/a", destination: "ferry://b/a"), peer: "b", now: 100)
        var r = JobRequest(source: "/b", destination: "ferry://b/b")
        r.priority = 5
        let b = try s.submit(owner: "alice", request: r, peer: "b", now: 101)
        let c = try s.submit(owner: "bob", request: JobRequest(source: "/c", destination: "ferry://c/c"), peer: "c", now: 102)
        let first = try #require(try s.claim(worker: "w1", now: 200, leaseSeconds: 30, perPeerMax: 1))
        #expect(first.id == b && first.state == .running && first.attempts == 1 && first.leaseOwner == "w1")
        // Peer b has one running: a waits, c (peer c) goes.
        let second = try #require(try s.claim(worker: "w2", now: 200, leaseSeconds: 30, perPeerMax: 1))
        #expect(second.id == c)
        #expect(try s.claim(worker: "w3", now: 200, leaseSeconds: 30, perPeerMax: 1) == nil)
        #expect(try s.claim(worker: "w3", now: 200, leaseSeconds: 30, perPeerMax: 9, perUserMax: 1) == nil)  // alice has one
        let third = try #require(try s.claim(worker: "w3", now: 200, leaseSeconds: 30))
        #expect(third.id == a)
        #expect(try s.claim(worker: "w4", now: 200, leaseSeconds: 30) == nil)
    }

    @Test("fair shares: the next worker goes to the user with fewer jobs running, before another user's older job or higher priority; within a user, priority then age", arguments: Backend.allCases)
    func fairClaims(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        func submit(_ owner: String, _ name: String, priority: Int = 0, at now: Int64) throws -> Int64 {
            var r = JobRequest(source: "/" + name, destination: "ferry://b/" + name)
            r.priority = priority
            return try s.submit(owner: owner, request: r, peer: "b", now: now)
        }
        let a1 = try submit("alice", "a1", at: 100)
        let a2 = try submit("alice", "a2", priority: 9, at: 101)
        let a3 = try submit("alice", "a3", priority: 9, at: 102)
        let c1 = try submit("carol", "c1", at: 103)
        // Nobody runs anything: priority, then age, across users.
        #expect(try s.claim(worker: "w1", now: 200, leaseSeconds: 30)?.id == a2)
        let b1 = try submit("bob", "b1", at: 201)
        // alice runs one: carol's older job, then bob's newer, before alice's priority 9.
        #expect(try s.claim(worker: "w2", now: 202, leaseSeconds: 30)?.id == c1)
        #expect(try s.claim(worker: "w3", now: 202, leaseSeconds: 30)?.id == b1)
        #expect(try s.claim(worker: "w4", now: 202, leaseSeconds: 30)?.id == a3)
        #expect(try s.claim(worker: "w5", now: 202, leaseSeconds: 30)?.id == a1)
    }

    @Test("a user at her share, or a peer at its limit, with 300 older queued jobs does not hide another user's or peer's newer job behind them (the claim's window)", arguments: Backend.allCases)
    func fullOwnersLeftOut(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        for i in 0..<300 {
            var r = JobRequest(source: "/a\(i)", destination: "ferry://b/a\(i)")
            r.priority = 9
            _ = try s.submit(owner: "alice", request: r, peer: "b", now: 100)
        }
        let bobs = try s.submit(owner: "bob", request: JobRequest(source: "/b", destination: "ferry://c/b"), peer: "c", now: 101)
        let first = try #require(try s.claim(worker: "w1", now: 200, leaseSeconds: 30, perUserMax: 1))
        #expect(first.owner == "alice")
        #expect(try s.claim(worker: "w2", now: 200, leaseSeconds: 30, perUserMax: 1)?.id == bobs, "bob's job waits behind alice's 299")
        #expect(try s.claim(worker: "w3", now: 200, leaseSeconds: 30, perUserMax: 1) == nil)
        // The same with a peer: b has one running (its limit), c's job comes after b's 298.
        let carols = try s.submit(owner: "carol", request: JobRequest(source: "/c", destination: "ferry://c/c"), peer: "c", now: 102)
        #expect(try s.claim(worker: "w4", now: 200, leaseSeconds: 30, perPeerMax: 1) == nil, "c has bob's job running")
        _ = try s.finish(bobs, worker: "w2", outcome: .success(bytes: 1, files: 1), now: 201)
        #expect(try s.claim(worker: "w4", now: 202, leaseSeconds: 30, perPeerMax: 1)?.id == carols)
    }

    @Test("two store handles on one database (two daemons), claiming from several threads: 200 jobs, each claimed once", arguments: Backend.allCases)
    func concurrentClaims(_ backend: Backend) throws {
        let path = try backend.newDatabase()
        let setup = try JobStore(database: path)
        for i in 0..<200 { try setup.submit(owner: "u", request: JobRequest(source: "/\(i)", destination: "/d/\(i)"), peer: "", now: 1) }
        let stores = [try JobStore(database: path), try JobStore(database: path)]
        let lock = NSLock()
        var claimed: [Int64] = []
        DispatchQueue.concurrentPerform(iterations: 4) { w in
            let st = stores[w % 2]
            for _ in 0..<300 {
                guard let j = try? st.claim(worker: "w\(w)", now: 2, leaseSeconds: 60) else { break }
                lock.lock(); claimed.append(j.id); lock.unlock()
                _ = try? st.finish(j.id, worker: "w\(w)", outcome: .success(bytes: 1, files: 1), now: 3)
            }
        }
        #expect(claimed.count == 200)
        #expect(Set(claimed).count == 200)
        #expect(try setup.countsByState()[.success] == 200)
    }

    @Test("per-peer and per-user limits hold while two store handles claim from six threads", arguments: Backend.allCases)
    func limitsUnderConcurrency(_ backend: Backend) throws {
        let path = try backend.newDatabase()
        let stores = [try JobStore(database: path), try JobStore(database: path)]
        for i in 0..<60 {
            try stores[0].submit(owner: i % 3 == 0 ? "bob" : "alice", request: JobRequest(source: "/\(i)", destination: "ferry://b/\(i)"), peer: i % 2 == 0 ? "b" : "c", now: 1)
        }
        let lock = NSLock()
        var done = 0
        var worst = (peer: 0, user: 0)
        DispatchQueue.concurrentPerform(iterations: 6) { w in
            let st = stores[w % 2]
            for _ in 0..<400 {
                guard let j = try? st.claim(worker: "w\(w)", now: 2, leaseSeconds: 60, perPeerMax: 2, perUserMax: 3) else {
                    if (lock.withLock { done }) == 60 { break }
                    usleep(2_000)
                    continue
                }
                // While this job runs: nobody may exceed the limits.
                let running = (try? st.list(JobFilter(states: [.running], limit: 1000))) ?? []
                let peerMax = Dictionary(grouping: running, by: \.peer).values.map(\.count).max() ?? 0
                let userMax = Dictionary(grouping: running, by: \.owner).values.map(\.count).max() ?? 0
                lock.withLock { worst = (max(worst.peer, peerMax), max(worst.user, userMax)) }
                usleep(1_000)
                _ = try? st.finish(j.id, worker: "w\(w)", outcome: .success(bytes: 1, files: 1), now: 3)
                lock.withLock { done += 1 }
            }
        }
        #expect(done == 60)
        #expect(worst.peer <= 2 && worst.user <= 3)
        #expect(try stores[1].countsByState()[.success] == 60)
    }

    @Test("failures: resumable ones retry after a backoff, then fail with the reason; others fail at once", arguments: Backend.allCases)
    func failures(_ backend: Backend) throws {
        var policy = RetryPolicy()
        policy.maxAttempts = 2
        policy.baseSeconds = 10
        policy.jitter = 0
        let s = try JobStore(database: try backend.newDatabase(), retry: policy)
        let id = try s.submit(owner: "u", request: JobRequest(source: "/x", destination: "ferry://b/x"), peer: "b", now: 0)
        _ = try s.claim(worker: "w", now: 0, leaseSeconds: 30)
        #expect(try s.finish(id, worker: "w", outcome: .failure(message: "disk full at b", resumable: true), now: 5) == .upForRetry)
        #expect(try s.get(id)?.notBefore == 15)
        #expect(try s.promote(now: 10) == 0)
        #expect(try s.claim(worker: "w", now: 10, leaseSeconds: 30) == nil)
        try s.promote(now: 15)
        #expect(try s.get(id)?.state == .queued)
        _ = try #require(try s.claim(worker: "w", now: 15, leaseSeconds: 30))
        #expect(try s.finish(id, worker: "w", outcome: .failure(message: "disk full at b", resumable: true), now: 16) == .failed)
        let j = try #require(try s.get(id))
        #expect(j.error?.contains("disk full at b") == true && j.error?.contains("2 attempts") == true)
        let other = try s.submit(owner: "u", request: JobRequest(source: "/y", destination: "ferry://b/y"), peer: "b", now: 20)
        _ = try s.claim(worker: "w", now: 20, leaseSeconds: 30)
        #expect(try s.finish(other, worker: "w", outcome: .failure(message: "permission denied", resumable: false), now: 21) == .failed)
        // An outcome from a worker that lost the job is ignored.
        #expect(try s.finish(other, worker: "w", outcome: .success(bytes: 1, files: 1), now: 22) == nil)
    }

    @Test("a failed attempt keeps the engine's error code beside its message (error_code in the API); retry and cancel clear it; a queue made before the column gets it", arguments: Backend.allCases)
    func errorCodes(_ backend: Backend) throws {
        // A queue as a daemon before error_code made it, with a failed job in it.
        let url = try backend.newDatabase()
        do {
            let old = try openDatabase(url)
            let id = old.dialect == .postgres ? "id BIGSERIAL PRIMARY KEY" : "id INTEGER PRIMARY KEY AUTOINCREMENT"
            try old.write { s in
                try s.execute("""
                    CREATE TABLE jobs (\(id), owner TEXT NOT NULL, request TEXT NOT NULL, state TEXT NOT NULL, priority BIGINT NOT NULL DEFAULT 0,
                        attempts BIGINT NOT NULL DEFAULT 0, max_attempts BIGINT NOT NULL, not_before BIGINT NOT NULL DEFAULT 0, deadline BIGINT,
                        lease_owner TEXT, lease_expires BIGINT, last_worker TEXT, error TEXT, bytes BIGINT NOT NULL DEFAULT 0,
                        files BIGINT NOT NULL DEFAULT 0, peer TEXT NOT NULL DEFAULT '', created BIGINT NOT NULL, updated BIGINT NOT NULL)
                    """)
                try s.execute("""
                    INSERT INTO jobs (owner, request, state, attempts, max_attempts, error, created, updated)
                    VALUES ('u', '{"source":"/o","destination":"/p"}', 'failed', 1, 5, 'remote error (no_space): full', 1, 1)
                    """)
            }
        }
        let s = try JobStore(database: url)
        let old = try #require(try s.get(1))
        #expect(old.state == .failed && old.error == "remote error (no_space): full" && old.errorCode == nil)
        #expect(try !s.isStriped(1) && s.note(1) == nil && s.parts(1).isEmpty, "striped and note added to an older queue")
        let oldJSON = try #require(try JSONSerialization.jsonObject(with: APIJSON.encode(V1.Transfer(old))) as? [String: Any])
        #expect(oldJSON["error_code"] == nil && oldJSON["error"] as? String == "remote error (no_space): full", "\(oldJSON)")
        // Opening it again changes nothing (the step is skipped).
        _ = try JobStore(database: url)

        let id = try s.submit(owner: "u", request: JobRequest(source: "/x", destination: "ferry://b/x"), peer: "b", now: 0)
        _ = try s.claim(worker: "w", now: 0, leaseSeconds: 30)
        #expect(try s.finish(id, worker: "w", outcome: .failure(message: "remote error (no_space): no space: 24.0 MiB needed", resumable: false, code: .noSpace), now: 1) == .failed)
        let failed = try #require(try s.get(id))
        #expect(failed.errorCode == .noSpace)
        let json = try #require(try JSONSerialization.jsonObject(with: APIJSON.encode(V1.Transfer(failed))) as? [String: Any])
        #expect(json["error_code"] as? String == "no_space" && (json["error"] as? String)?.contains("24.0 MiB") == true, "\(json)")
        try ContractSchemaTests.expectConforms(V1.Transfer(failed))
        // Retried: no error, no code; a resumable failure keeps its code while it waits.
        #expect(try s.retryJob(id, now: 2).errorCode == nil)
        _ = try s.claim(worker: "w", now: 3, leaseSeconds: 30)
        #expect(try s.finish(id, worker: "w", outcome: .failure(message: "connection lost", resumable: true, code: .timeout), now: 4) == .upForRetry)
        #expect(try s.get(id)?.errorCode == .timeout)
        // Cancelled: the error is the canceller's, with no engine code.
        let cancelled = try s.cancel(id, by: "u", now: 5)
        #expect(cancelled.error == "cancelled by u" && cancelled.errorCode == nil)
        // A failure the runner gave no code keeps none.
        let other = try s.submit(owner: "u", request: JobRequest(source: "/y", destination: "/z"), peer: "", now: 6)
        _ = try s.claim(worker: "w", now: 6, leaseSeconds: 30)
        try s.finish(other, worker: "w", outcome: .failure(message: "odd", resumable: false), now: 7)
        #expect(try s.get(other)?.errorCode == nil && (try s.get(other)?.error) == "odd")
    }

    @Test("dependencies: a dependent waits, runs after success, becomes upstream_failed after a failure; retry revives the chain", arguments: Backend.allCases)
    func dependencies(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        let a = try s.submit(owner: "u", request: JobRequest(source: "/a", destination: "/b"), peer: "", now: 0)
        var r = JobRequest(source: "/b", destination: "/c")
        r.dependsOn = [a]
        let b = try s.submit(owner: "u", request: r, peer: "", now: 0)
        r.dependsOn = [b]
        let c = try s.submit(owner: "u", request: r, peer: "", now: 0)
        #expect(try s.get(b)?.state == .scheduled)
        _ = try s.claim(worker: "w", now: 1, leaseSeconds: 10)
        #expect(try s.claim(worker: "w", now: 1, leaseSeconds: 10) == nil)  // b and c wait
        try s.finish(a, worker: "w", outcome: .failure(message: "source missing", resumable: false), now: 2)
        try s.promote(now: 3)
        #expect(try s.get(b)?.state == .upstreamFailed && (try s.get(c)?.state) == .upstreamFailed)
        #expect(try s.get(b)?.error?.contains("\(a)") == true)
        _ = try s.retryJob(a, now: 4)
        #expect(try s.get(b)?.state == .scheduled && (try s.get(c)?.state) == .scheduled)
        _ = try #require(try s.claim(worker: "w", now: 5, leaseSeconds: 10))
        try s.finish(a, worker: "w", outcome: .success(bytes: 10, files: 1), now: 6)
        try s.promote(now: 7)
        #expect(try s.get(b)?.state == .queued && (try s.get(c)?.state) == .scheduled)
        #expect(throws: JobStoreError.self) { try s.submit(owner: "u", request: { var x = r; x.dependsOn = [999]; return x }(), peer: "", now: 8) }
    }

    @Test("leases: a dead daemon's job is rescheduled and claimed again; cancel and deadline end jobs", arguments: Backend.allCases)
    func leases(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        let id = try s.submit(owner: "u", request: JobRequest(source: "/a", destination: "/b"), peer: "", now: 0)
        _ = try s.claim(worker: "dead", now: 0, leaseSeconds: 30)
        #expect(try s.renew(id, worker: "dead", now: 10, leaseSeconds: 30, bytes: 5, files: 0))
        try s.promote(now: 39)
        #expect(try s.get(id)?.state == .running)
        try s.promote(now: 41)
        #expect(try s.get(id)?.state == .queued)  // up_for_reschedule, then queued in the same pass
        let again = try #require(try s.claim(worker: "alive", now: 42, leaseSeconds: 30))
        #expect(again.attempts == 2 && again.bytes == 5)
        #expect(try !s.renew(id, worker: "dead", now: 43, leaseSeconds: 30, bytes: 6, files: 0))
        let cancelled = try s.cancel(id, by: "u", now: 44)
        #expect(cancelled.state == .failed && cancelled.error == "cancelled by u")
        #expect(try !s.renew(id, worker: "alive", now: 45, leaseSeconds: 30, bytes: 7, files: 0))
        var r = JobRequest(source: "/x", destination: "/y")
        r.deadline = 100
        let late = try s.submit(owner: "u", request: r, peer: "", now: 50)
        try s.promote(now: 101)
        #expect(try s.get(late)?.state == .failed && (try s.get(late)?.error?.contains("deadline")) == true)
        let page1 = try s.list(JobFilter(owner: "u", limit: 1))
        let page2 = try s.list(JobFilter(owner: "u", afterID: page1.last!.id, limit: 10))
        #expect(page1.count == 1 && page2.count == 1 && page2[0].id == late)
        #expect(try s.list(JobFilter(owner: "nobody")).isEmpty)
    }

    @Test("link tuning: more streams while throughput improves, fewer when it drops, half on errors, within limits")
    func tuning() {
        let t = LinkTuner(minStreams: 1, maxStreams: 6, initialStreams: 4, minBytes: 1)
        #expect(t.streams(for: "b") == 4)
        t.record(peer: "b", streams: 4, bytes: 100, seconds: 1, failed: false)   // first sample: try 5
        #expect(t.streams(for: "b") == 5)
        t.record(peer: "b", streams: 5, bytes: 120, seconds: 1, failed: false)   // better: 6
        t.record(peer: "b", streams: 6, bytes: 130, seconds: 1, failed: false)   // better, at the cap
        #expect(t.streams(for: "b") == 6)
        t.record(peer: "b", streams: 6, bytes: 100, seconds: 1, failed: false)   // worse: back one
        #expect(t.streams(for: "b") == 5)
        t.record(peer: "b", streams: 5, bytes: 0, seconds: 0, failed: true)      // error: halve
        #expect(t.streams(for: "b") == 2 && t.snapshot()["b"]?.errors == 1)
        t.record(peer: "b", streams: 9, bytes: 999, seconds: 1, failed: false)   // a job's own setting: ignored
        #expect(t.streams(for: "b") == 2)
        // The reported throughput is the last attempt's from 1 MiB on, whatever its streams
        // (it read 0 when jobs chose their own); a link error clears it.
        let u = LinkTuner(initialStreams: 4)
        u.record(peer: "p", streams: 4, bytes: 3 << 30, seconds: 2, failed: false)
        u.record(peer: "p", streams: 4, bytes: 2 << 30, seconds: 4, failed: false)   // tuned streams are 5 now: not the tuner's sample
        #expect(u.snapshot()["p"]?.throughput == Double(2 << 30) / 4)
        u.record(peer: "p", streams: 16, bytes: 1 << 30, seconds: 1, failed: false)
        #expect(u.snapshot()["p"]?.throughput == Double(1 << 30))
        u.record(peer: "p", streams: 16, bytes: 1000, seconds: 0.001, failed: false)  // too small to say anything
        #expect(u.snapshot()["p"]?.throughput == Double(1 << 30))
        u.record(peer: "p", streams: 16, bytes: 0, seconds: 0, failed: true)
        #expect(u.snapshot()["p"]?.throughput == 0)
        for _ in 0..<5 { t.record(peer: "c", streams: t.streams(for: "c"), bytes: 0, seconds: 0, failed: true) }
        #expect(t.streams(for: "c") == 1)
    }

    @Test("link tuning of transfers in flight: one more while the aggregate rate improves, one fewer when it drops, half on errors")
    func activeTuning() {
        final class Clock: @unchecked Sendable { var t = 1000.0 }
        let clock = Clock()
        let t = LinkTuner(maxActive: 6, windowSeconds: 5, clock: { clock.t })
        #expect(t.activeLimits().isEmpty)
        t.record(peer: "b", streams: 4, bytes: 0, seconds: 0, failed: true)
        #expect(t.activeLimits()["b"] == 3)
        func window(_ bytesPerSecond: Int64) {
            for _ in 0..<5 {
                clock.t += 1
                t.record(peer: "b", streams: 99, bytes: bytesPerSecond, seconds: 1, failed: false)
            }
        }
        window(100)   // first window: try one more
        #expect(t.activeLimits()["b"] == 4)
        window(200)   // better: one more
        #expect(t.activeLimits()["b"] == 5)
        window(100)   // worse: one fewer
        #expect(t.activeLimits()["b"] == 4)
        window(102)   // about the same: stay
        #expect(t.activeLimits()["b"] == 4)
        for _ in 0..<4 { window(Int64(1000 * (1 + t.activeLimits()["b"]!))) }
        #expect(t.activeLimits()["b"] == 6)  // capped
        clock.t += 1
        t.record(peer: "b", streams: 99, bytes: 5, seconds: 1, failed: false)  // a lone transfer: no window yet
        #expect(t.activeLimits()["b"] == 6)
    }

    @Test("a request with only source and destination decodes with the defaults")
    func minimalRequest() throws {
        let r = try JSONDecoder().decode(JobRequest.self, from: Data(#"{"source":"/a","destination":"ferry://b/a"}"#.utf8))
        #expect(r.protection == "private" && r.compress == "auto" && !r.recursive && r.dependsOn.isEmpty && r.priority == 0)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(JobRequest.self, from: Data(#"{"source":"/a"}"#.utf8)) }
    }
}

/// Which replica a copy reads (`ferry stat --replicas`, `ferry cp gfs://`), with the daemon's
/// own link figures and the federation's view of which centers are down.
@Suite("Replica selection")
struct ReplicaSelectionTests {
    @Test("local first; then reachable peers by measured throughput, unmeasured after; partial, down and unaddressed ones never", arguments: Backend.allCases)
    func ranking(_ backend: Backend) throws {
        let db = try backend.newDatabase()
        let store = try JobStore(database: db)
        let catalog = try Catalog(db: store.db)
        let dir = NSTemporaryDirectory() + "ferry-rank-\(getpid())-\(backend.rawValue)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try CertificateAuthority.initialize(name: "test CA", days: 1, certificate: dir + "/ca.crt", key: dir + "/ca.key")
        var settings = RunnerSettings(exports: [], tls: TLSIdentity(certificate: nil, key: nil, ca: dir + "/ca.crt"))
        for (i, p) in ["fast", "slow", "fresh", "down", "half"].enumerated() { settings.peers[p] = HostPort(host: "127.0.0.1", port: UInt16(7400 + i)) }
        let runner = try JobRunner(store: store, settings: settings, workerID: "t")
        let api = DaemonAPI(store: store, verifier: TokenVerifier(issuers: [:], revocationsPath: nil), center: "here", runner: runner, catalog: catalog,
                            transfer: ["127.0.0.1:7399"])
        // Measured links: fast 2 GB/s, slow 100 MB/s (one big transfer each).
        runner.tuner.record(peer: "fast", streams: runner.tuner.streams(for: "fast"), bytes: 4 << 30, seconds: 2.147, failed: false)
        runner.tuner.record(peer: "slow", streams: runner.tuner.streams(for: "slow"), bytes: 1 << 30, seconds: 10.7, failed: false)
        for c in ["fast", "slow", "fresh", "down", "half"] { try catalog.recordSync(center: c, reachable: true, at: 100) }
        try catalog.recordSync(center: "down", reachable: false, at: 200)
        func r(_ c: String, _ s: ReplicaState = .complete) -> Replica { Replica(dataset: 1, center: c, state: s, path: "/data/x") }
        let all = [r("slow"), r("fresh"), r("down"), r("half", .partial), r("fast"), r("nowhere"), r("here")]
        let ranked = api.rankReplicas(all)
        #expect(ranked.map(\.center) == ["here", "fast", "slow", "fresh", "down", "half", "nowhere"])
        #expect(ranked.map(\.rank) == [1, 2, 3, 4, nil, nil, nil])
        #expect(ranked[0].reason == "at this center" && ranked[0].url == "ferry://127.0.0.1:7399/data/x")
        #expect(ranked[1].reason.contains("measured 2.00 GB/s") && ranked[2].reason.contains("measured 100.3 MB/s"), "\(ranked[1].reason) \(ranked[2].reason)")
        #expect(ranked[3].reason == "peer, link not yet measured")
        #expect(ranked[4].reason.contains("center down is down") && !ranked[4].reachable)
        #expect(ranked[5].reason.contains("partial replica"))
        #expect(ranked[6].reason.contains("no transfer address"))
        // Without a local replica the fastest peer is first; a link error resets its figure.
        #expect(api.rankReplicas(Array(all.dropLast())).first?.center == "fast")
        runner.tuner.record(peer: "fast", streams: runner.tuner.streams(for: "fast"), bytes: 0, seconds: 0, failed: true)
        #expect(api.rankReplicas(Array(all.dropLast())).first?.center == "slow")
    }
}

extension JobFilter {
    func with(_ change: (inout JobFilter) -> Void) -> JobFilter { var f = self; change(&f); return f }
}
