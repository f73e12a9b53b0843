import Foundation
import Testing
import Storage
import TestSupport
import Transfer
@testable import Daemon

/// The queue's parts of striped jobs (issue 19, docs/STRIPING.md step 7), on both engines.
@Suite("Striped parts")
struct PartStoreTests {
    static let chunk: Int64 = 4 << 20

    /// A running job of `peer` held by `worker`, striped into `plan`.
    static func stripedJob(_ s: JobStore, plan: StripePlan, peer: String = "b", worker: String = "coord", now: Int64 = 10,
                           owner: String = "alice", deadline: Int64? = nil, perUserMax: Int = .max) throws -> Int64 {
        var request = JobRequest(source: "/data/big", destination: "ferry://\(peer)/in/big")
        request.deadline = deadline
        let id = try s.submit(owner: owner, request: request, peer: peer, now: now)
        let j = try #require(try s.claim(worker: worker, now: now, leaseSeconds: 600, perUserMax: perUserMax))
        #expect(j.id == id)
        #expect(try s.plan(id, worker: worker, plan: plan, now: now))
        return id
    }

    static func filePlan(chunks: Int, per: Int, path: String = "big") throws -> StripePlan {
        // Built by hand (the planner's own rules are `planner`'s): ranges of `per` chunks.
        var plan = StripePlan()
        let ranges = try stride(from: 0, to: chunks, by: per).map { try ChunkRange(first: $0, count: min(per, chunks - $0), of: chunks) }
        plan.files = [.init(path: path, size: Int64(chunks) * chunk - 123, mtimeSeconds: 1_700_000_000, mtimeNanoseconds: 5, mode: 0o640,
                            chunkBytes: chunk, ranges: ranges)]
        return plan
    }

    /// A store whose retries wait `base` seconds, then twice that, ..., with no jitter.
    static func store(_ backend: Backend, attempts: Int, base: Double) throws -> JobStore {
        var policy = RetryPolicy()
        policy.maxAttempts = attempts
        policy.baseSeconds = base
        policy.jitter = 0
        return try JobStore(database: try backend.newDatabase(), retry: policy)
    }

    /// A plan of `n` one-path groups (g0, g1, ...).
    static func groups(_ n: Int) -> StripePlan {
        var plan = StripePlan()
        plan.groups = (0..<n).map { .init(paths: ["g\($0)"], bytes: 1) }
        return plan
    }

    static func hashes(_ r: ChunkRange) -> [ChunkHash] { (r.first..<r.end).map { ChunkHash(low: UInt64($0), high: 0xfe77_0000 + UInt64($0)) } }

    @Test("the planner: big files as chunk-aligned ranges that cover them exactly, the rest in groups bounded in count and bytes; bad sizes refused")
    func planner() throws {
        let c = Self.chunk
        let entries: [StripePlanner.Entry] = [
            .init(path: "d", size: 0, mtimeSeconds: 1, mtimeNanoseconds: 0, mode: 0o755, isFile: false),
            .init(path: "d/huge", size: 10 * 64 * c + 5, mtimeSeconds: 2, mtimeNanoseconds: 7, mode: 0o600, isFile: true),
            .init(path: "d/just-below", size: 2 * 64 * c - 1, mtimeSeconds: 3, mtimeNanoseconds: 0, mode: 0o644, isFile: true),
        ] + (0..<25).map { .init(path: "d/s\($0)", size: 1000, mtimeSeconds: 4, mtimeNanoseconds: 0, mode: 0o644, isFile: true) }
        let p = try StripePlanner.plan(entries, chunkBytes: c, rangeBytes: 64 * c, groupFiles: 10, groupBytes: 64 * c)
        #expect(p.files.count == 1)
        let f = try #require(p.files.first)
        #expect(f.path == "d/huge" && f.mode == 0o600 && f.mtimeNanoseconds == 7)
        // 641 chunks: nine ranges of 64 and a last one of 65 (a remainder shorter than half a range joins it).
        #expect(f.ranges.map(\.count) == Array(repeating: 64, count: 9) + [65])
        var next = 0
        for r in f.ranges { #expect(r.first == next); next = r.end }
        #expect(next == 641)
        // The directory, the file just below two ranges (more than a group's bytes: alone) and
        // 25 small ones in groups of ≤ 10 files.
        #expect(p.groups.map(\.paths.count) == [1, 1, 10, 10, 5])
        #expect(p.groups.flatMap(\.paths) == ["d", "d/just-below"] + (0..<25).map { "d/s\($0)" })
        // The second entry is alone in bytes (2 ranges less one byte > groupBytes): the next one starts a new group.
        let byBytes = try StripePlanner.plan(Array(entries[2...]), chunkBytes: c, rangeBytes: 64 * c, groupFiles: 1000, groupBytes: 64 * c)
        #expect(byBytes.groups.map(\.paths.count) == [1, 25])
        #expect(p.partCount == 15)
        #expect(throws: JobStoreError.self) { try StripePlanner.plan(entries, chunkBytes: c, rangeBytes: c + 1, groupFiles: 10, groupBytes: 1) }
        #expect(throws: JobStoreError.self) { try StripePlanner.plan(entries, chunkBytes: c, rangeBytes: c / 2, groupFiles: 10, groupBytes: 1) }
        #expect(throws: JobStoreError.self) { try StripePlanner.plan(entries, chunkBytes: c, rangeBytes: c, groupFiles: 0, groupBytes: 1) }
        #expect(try StripePlanner.plan([], chunkBytes: c, rangeBytes: c, groupFiles: 1, groupBytes: 1).partCount == 0)
    }

    @Test("groups shrink toward the end of a plan (guided sizes) so that the center's slots end together: full groups first, then 1/slots of the bytes left, down to the floor; slots 1 keeps full groups")
    func guidedGroups() throws {
        let mib: Int64 = 1 << 20
        let entries: [StripePlanner.Entry] = (0..<600).map { .init(path: "f\($0)", size: mib, mtimeSeconds: 1, mtimeNanoseconds: 0, mode: 0o644, isFile: true) }
        let one = try StripePlanner.plan(entries, chunkBytes: 4 * mib, rangeBytes: 1024 * mib, groupFiles: 1000, groupBytes: 64 * mib)
        #expect(one.groups.map(\.paths.count) == Array(repeating: 64, count: 9) + [24])
        let six = try StripePlanner.plan(entries, chunkBytes: 4 * mib, rangeBytes: 1024 * mib, groupFiles: 1000, groupBytes: 64 * mib, slots: 6)
        let sizes = six.groups.map(\.paths.count)
        #expect(six.groups.flatMap(\.paths) == entries.map(\.path), "the walk order is kept")
        // 600 MiB: full 64 MiB groups while more than six of them are left (4), then a sixth of
        // the rest (344 MiB → 57), shrinking to the 16 MiB floor; the last takes the remainder.
        #expect(Array(sizes.prefix(5)) == [64, 64, 64, 64, 57], "\(sizes)")
        #expect(zip(sizes, sizes.dropFirst()).allSatisfy { $0 >= $1 }, "\(sizes)")
        #expect(sizes.dropLast().allSatisfy { $0 >= 16 } && sizes.last! <= 16 && sizes.suffix(3).dropLast().allSatisfy { $0 == 16 }, "\(sizes)")
        #expect(sizes.count > one.groups.count && sizes.count <= 2 * one.groups.count + 6, "\(sizes)")
        // By bytes only: 3,000 empty files stay in groups of 1,000 entries (a group of small
        // files costs its session and its files more than its bytes).
        let empty: [StripePlanner.Entry] = (0..<3000).map { .init(path: "e\($0)", size: 0, mtimeSeconds: 1, mtimeNanoseconds: 0, mode: 0o644, isFile: true) }
        let byFiles = try StripePlanner.plan(empty, chunkBytes: 4 * mib, rangeBytes: 1024 * mib, groupFiles: 1000, groupBytes: 64 * mib, slots: 6).groups.map(\.paths.count)
        #expect(byFiles == [1000, 1000, 1000], "\(byFiles)")
    }

    @Test("a big file's last ranges shrink too when they end the plan: full ranges first, then 1/slots of what is left, down to the floor; they cover the file exactly, and slots 1 keeps full ranges")
    func guidedRanges() throws {
        let mib: Int64 = 1 << 20
        let file = StripePlanner.Entry(path: "big", size: 6144 * mib - 7, mtimeSeconds: 1, mtimeNanoseconds: 0, mode: 0o644, isFile: true)
        let one = try StripePlanner.plan([file], chunkBytes: 4 * mib, rangeBytes: 256 * mib, groupFiles: 1000, groupBytes: 256 * mib)
        #expect(one.files.first?.ranges.map(\.count) == Array(repeating: 64, count: 24))
        let six = try #require(try StripePlanner.plan([file], chunkBytes: 4 * mib, rangeBytes: 256 * mib, groupFiles: 1000, groupBytes: 256 * mib, slots: 6).files.first)
        let sizes = six.ranges.map(\.count)
        var next = 0
        for r in six.ranges { #expect(r.first == next); next = r.end }
        #expect(next == 1536, "the ranges cover the file's 1,536 chunks exactly")
        // 6 GiB less 7 bytes: full ranges while at least six are left (18 of them), then a sixth
        // of the rest (383.99 chunks → 63), down to the 16 MiB floor (4 chunks); the last takes
        // the remainder.
        #expect(Array(sizes.prefix(18)) == Array(repeating: 64, count: 18), "\(sizes)")
        #expect(sizes[18] == 63 && sizes[19] == 53, "\(sizes)")
        #expect(zip(sizes, sizes.dropFirst()).allSatisfy { $0 >= $1 }, "\(sizes)")
        #expect(sizes.dropLast().allSatisfy { $0 >= 4 } && sizes.suffix(2).first == 4, "\(sizes)")
        #expect(sizes.count > 24 && sizes.count <= 48, "\(sizes)")
        // Ranges before a tree's groups keep their size while the groups are left to shrink.
        let small: [StripePlanner.Entry] = (0..<600).map { .init(path: "f\($0)", size: 4 * mib, mtimeSeconds: 1, mtimeNanoseconds: 0, mode: 0o644, isFile: true) }
        let mixed = try StripePlanner.plan([file] + small, chunkBytes: 4 * mib, rangeBytes: 256 * mib, groupFiles: 1000, groupBytes: 256 * mib, slots: 6)
        #expect(mixed.files.first?.ranges.map(\.count) == Array(repeating: 64, count: 24))
        #expect(mixed.groups.flatMap(\.paths).count == 600)
    }

    @Test("a plan is written once, by the job's holder: a second attempt keeps the parts; nobody else may plan", arguments: Backend.allCases)
    func planOnce(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        let plan = try Self.filePlan(chunks: 20, per: 4)
        let id = try Self.stripedJob(s, plan: plan)
        #expect(try s.isStriped(id))
        #expect(try s.parts(id).map(\.range) == plan.files[0].ranges.map(Optional.some))
        #expect(try s.parts(id).allSatisfy { $0.state == .queued && $0.peer == "b" && $0.kind == .range })
        #expect(try s.plan(id, worker: "coord", plan: try Self.filePlan(chunks: 40, per: 4), now: 11) == false)
        #expect(try s.parts(id).count == 5)
        #expect(throws: JobStoreError.self) { try s.plan(id, worker: "someone-else", plan: plan, now: 11) }
        let files = try s.stripedFiles(id)
        #expect(files.count == 1 && files[0].rangesTotal == 5 && files[0].size == 20 * Self.chunk - 123 && files[0].state == .open)
        #expect(try s.parts(id).map(\.bytesTotal).reduce(0, +) == 20 * Self.chunk - 123)
        try s.setNote(id, "not striped: test", now: 12)
        #expect(try s.note(id) == "not striped: test")
    }

    @Test("two store handles × six threads on two nodes claim 300 parts: each exactly once, never more than two at once on a node", arguments: Backend.allCases)
    func partsClaimedOnce(_ backend: Backend) throws {
        let path = try backend.newDatabase()
        let setup = try JobStore(database: path)
        var plan = StripePlan()
        plan.groups = (0..<300).map { .init(paths: ["f\($0)"], bytes: 10) }
        let id = try Self.stripedJob(setup, plan: plan)
        let stores = [try JobStore(database: path), try JobStore(database: path)]
        let lock = NSLock()
        var claimed: [Int64] = []
        var worst = 0
        let deadline = Date().addingTimeInterval(120)
        // Six threads of their own (concurrentPerform would run as many as there are cores),
        // three per node, against a limit of two per node.
        let group = DispatchGroup()
        for w in 0..<6 { group.enter(); Thread.detachNewThread {
            defer { group.leave() }
            let st = stores[w % 2]
            let node = "n\(w % 2)"
            for _ in 0..<2_000 where Date() < deadline {
                guard let p = try? st.claimPart(worker: "w\(w)", node: node, now: 20, leaseSeconds: 60, perNodeMax: 2) else {
                    if (lock.withLock { claimed.count }) == 300 { break }
                    usleep(1_000)
                    continue
                }
                // While this part runs: the queue's own count of the node's running parts.
                let n = (try? st.db.read { s in try s.one("SELECT COUNT(*) AS n FROM job_parts WHERE state = 'running' AND node = ?", node)?.int("n") }) ?? nil
                lock.withLock {
                    claimed.append(p.id)
                    worst = max(worst, Int(n ?? 99))
                }
                usleep(2_000)
                #expect((try? st.finishPart(p.id, worker: "w\(w)", outcome: .success(bytes: 10, files: 1), now: 21))??.state == .success)
            }
        } }
        group.wait()
        #expect(claimed.count == 300)
        #expect(Set(claimed).count == 300)
        #expect(worst == 2, "the limit is two per node, and three threads per node reach it")
        let progress = try setup.partProgress(id)
        #expect(progress.byState == [.success: 300] && progress.bytes == 3000 && progress.files == 300 && progress.complete)
        #expect(try setup.claimPart(worker: "late", node: "n0", now: 22, leaseSeconds: 60) == nil)
    }

    @Test("32 finishers of a file's 32 ranges at once: exactly one gets the commit; the source's hashes come back in chunk order", arguments: Backend.allCases)
    func oneCommitter(_ backend: Backend) throws {
        let path = try backend.newDatabase()
        let s = try JobStore(database: path)
        let id = try Self.stripedJob(s, plan: try Self.filePlan(chunks: 64, per: 2))
        let stores = [s, try JobStore(database: path)]
        var parts: [JobPart] = []
        for w in 0..<32 { parts.append(try #require(try stores[w % 2].claimPart(worker: "w\(w)", node: "n\(w % 3)", now: 20, leaseSeconds: 60))) }
        #expect(Set(parts.map(\.id)).count == 32)
        #expect(try stores[0].sourceHashes(file: try #require(parts[0].file)) == nil, "no hashes before every range is done")
        let lock = NSLock()
        var commits: [(Int, StripedFile)] = []
        var states: [JobState] = []
        DispatchQueue.concurrentPerform(iterations: 32) { w in
            let p = parts[w]
            let r = try? stores[w % 2].finishPart(p.id, worker: "w\(w)", outcome: .success(bytes: 2 * Self.chunk, files: 0),
                                                  hashes: Self.hashes(p.range!), now: 30, commitLease: 60)
            lock.withLock {
                if let r { states.append(r.state) }
                if let c = r?.commit { commits.append((w, c)) }
            }
        }
        #expect(states.count == 32 && states.allSatisfy { $0 == .success })
        #expect(commits.count == 1)
        let (winner, file) = try #require(commits.first)
        #expect(file.state == .committing && file.committer == "w\(winner)" && file.rangesDone == 32)
        #expect(try s.sourceHashes(file: file.id) == Self.hashes(try ChunkRange(first: 0, count: 64, of: 64)))
        #expect(try !s.partProgress(id).complete, "the file is not committed yet")
        // Only the committer ends the commit.
        #expect(try s.finishCommit(file.id, worker: "w\((winner + 1) % 32)", outcome: .committed, now: 31) == false)
        #expect(try s.finishCommit(file.id, worker: "w\(winner)", outcome: .committed, now: 31))
        #expect(try s.stripedFiles(id).first?.state == .committed)
        let pr = try s.partProgress(id)
        #expect(pr.complete && pr.files == 1 && pr.filesTotal == 1 && pr.bytes == 32 * 2 * Self.chunk)
        // A range's success without its hashes (or with a wrong count) is refused and changes nothing.
        let id2 = try Self.stripedJob(s, plan: try Self.filePlan(chunks: 4, per: 2, path: "other"), worker: "coord2", now: 40)
        let p = try #require(try s.claimPart(worker: "x", node: "n0", now: 41, leaseSeconds: 60))
        #expect(p.job == id2)
        #expect(throws: JobStoreError.self) { try s.finishPart(p.id, worker: "x", outcome: .success(bytes: 1, files: 0), hashes: [], now: 42) }
        #expect(try s.parts(id2).first { $0.id == p.id }?.state == .running)
    }

    @Test("leases: a lost part is taken back only a lease after its expiry, its old holder's renewal and outcome are refused; a lost commit is claimed by another", arguments: Backend.allCases)
    func leases(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        let id = try Self.stripedJob(s, plan: try Self.filePlan(chunks: 4, per: 2))
        let a = try #require(try s.claimPart(worker: "a", node: "n1", now: 100, leaseSeconds: 10))
        #expect(try s.renewPart(a.id, worker: "a", now: 105, bytes: 5, files: 0, moved: 5))
        // Expires at 115; self-fencing gives the holder until 125 to have stopped.
        try s.promote(now: 120)
        #expect(try s.parts(id).first { $0.id == a.id }?.state == .running)
        try s.promote(now: 126)
        #expect(try s.parts(id).first { $0.id == a.id }?.state == .queued)
        #expect(try s.renewPart(a.id, worker: "a", now: 127, bytes: 6, files: 0) == false)
        let b = try #require(try s.claimPart(worker: "b", node: "n2", now: 127, leaseSeconds: 10))
        #expect(b.id == a.id && b.attempts == 2 && b.node == "n2")
        #expect(try s.finishPart(a.id, worker: "a", outcome: .success(bytes: 1, files: 0), hashes: Self.hashes(a.range!), now: 128) == nil)
        #expect(try s.finishPart(b.id, worker: "b", outcome: .success(bytes: 1, files: 0), hashes: Self.hashes(b.range!), now: 128)?.commit == nil)
        let c = try #require(try s.claimPart(worker: "c", node: "n3", now: 129, leaseSeconds: 10))
        let f = try #require(try s.finishPart(c.id, worker: "c", outcome: .success(bytes: 1, files: 0), hashes: Self.hashes(c.range!), now: 130, commitLease: 10)?.commit)
        #expect(f.committer == "c")
        #expect(try s.claimCommit(worker: "d", now: 131, leaseSeconds: 10) == nil, "a held commit is not claimed")
        try s.promote(now: 145)   // expired at 140, within its grace
        #expect(try s.claimCommit(worker: "d", now: 145, leaseSeconds: 10) == nil)
        try s.promote(now: 151)
        let g = try #require(try s.claimCommit(worker: "d", now: 151, leaseSeconds: 10))
        #expect(g.id == f.id && g.committer == "d")
        #expect(try s.finishCommit(f.id, worker: "c", outcome: .committed, now: 152) == false)
        // The committer found one range missing on the destination: that range runs again, then the file commits.
        #expect(try s.finishCommit(f.id, worker: "d", outcome: .redo(firsts: [2]), now: 152))
        let file = try #require(try s.stripedFiles(id).first)
        #expect(file.state == .open && file.rangesDone == 1)
        let again = try #require(try s.claimPart(worker: "e", node: "n1", now: 153, leaseSeconds: 10))
        #expect(again.range?.first == 2)
        #expect(try s.sourceHashes(file: f.id) == nil)
        let h = try #require(try s.finishPart(again.id, worker: "e", outcome: .success(bytes: 1, files: 0), hashes: Self.hashes(again.range!), now: 154)?.commit)
        #expect(h.committer == "e")
        // A digest mismatch: every range again.
        #expect(try s.finishCommit(h.id, worker: "e", outcome: .redoAll, now: 155))
        #expect(try s.parts(id).allSatisfy { $0.state == .queued })
        #expect(try s.stripedFiles(id).first?.rangesDone == 0)
    }

    @Test("failures, cancel and retry reach the parts: a resumable failure backs off, a cancelled job's parts stop, a retried job's run again", arguments: Backend.allCases)
    func cancelAndRetry(_ backend: Backend) throws {
        let s = try Self.store(backend, attempts: 2, base: 10)
        let plan = Self.groups(3)
        let id = try Self.stripedJob(s, plan: plan)
        let p = try #require(try s.claimPart(worker: "a", node: "n1", now: 20, leaseSeconds: 60))
        #expect(try s.finishPart(p.id, worker: "a", outcome: .failure(message: "reset", resumable: true), now: 21)?.state == .upForRetry)
        try s.promote(now: 25)
        #expect(try s.parts(id).first { $0.id == p.id }?.state == .upForRetry)
        try s.promote(now: 31)
        #expect(try s.parts(id).first { $0.id == p.id }?.state == .queued)
        let p2 = try #require(try s.claimPart(worker: "a", node: "n1", now: 31, leaseSeconds: 60))
        #expect(p2.id == p.id)
        let st = try s.finishPart(p2.id, worker: "a", outcome: .failure(message: "reset", resumable: true), now: 32)
        #expect(st?.state == .failed)
        #expect(try s.parts(id).first { $0.id == p.id }?.error?.contains("gave up after 2 attempts") == true)
        let running = try #require(try s.claimPart(worker: "b", node: "n2", now: 33, leaseSeconds: 60))
        _ = try s.cancel(id, by: "alice", now: 34)
        #expect(try s.renewPart(running.id, worker: "b", now: 35, bytes: 0, files: 0) == false)
        #expect(try s.claimPart(worker: "c", node: "n3", now: 35, leaseSeconds: 60) == nil)
        #expect(try s.parts(id).allSatisfy { $0.state == .failed })
        #expect(try s.finishPart(running.id, worker: "b", outcome: .success(bytes: 1, files: 1), now: 36) == nil)
        _ = try s.retryJob(id, now: 40)
        #expect(try s.parts(id).allSatisfy { $0.state == .queued && $0.attempts == 0 })
        // The parts run while the job waits for a coordinator again (as when one was lost),
        // except the one that was running at the cancel: its runner may still be writing until
        // it next renews, so it waits two leases (its fence, 34 + 2 × 60).
        #expect(try s.get(id)?.state == .queued)
        var again: [Int64] = []
        for _ in 0..<3 { if let q = try s.claimPart(worker: "c", node: "n3", now: 41, leaseSeconds: 60) { again.append(q.id); #expect(q.attempts == 1) } }
        #expect(again.count == 2 && !again.contains(running.id), "\(again)")
        #expect(try s.claimPart(worker: "c", node: "n3", now: 153, leaseSeconds: 60) == nil)
        #expect(try s.claimPart(worker: "c", node: "n3", now: 154, leaseSeconds: 60)?.id == running.id)
    }

    @Test("limits: running parts count toward their peer (a striped job's own attempt does not), the peer's nodes are spread and a down node is skipped", arguments: Backend.allCases)
    func peerLimitsAndNodes(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        try s.setPeerNodes("b", ["[fd00::b1]:7700", "[fd00::b2]:7700", "[fd00::b3]:7700"])
        _ = try Self.stripedJob(s, plan: Self.groups(8))
        let whole = try s.submit(owner: "bob", request: JobRequest(source: "/x", destination: "ferry://b/x"), peer: "b", now: 11)
        var chosen: [String?] = []
        for w in 0..<3 { chosen.append(try #require(try s.claimPart(worker: "w\(w)", node: "n", now: 20, leaseSeconds: 60, peerLimits: ["b": 4])).peerNode) }
        #expect(Set(chosen.compactMap { $0 }) == ["[fd00::b1]:7700", "[fd00::b2]:7700", "[fd00::b3]:7700"])
        // Three parts running toward b and a limit of 4: one whole job may still start (the
        // coordinator's running attempt does not count), then neither a job nor a part.
        let j = try #require(try s.claim(worker: "x", now: 21, leaseSeconds: 60, peerLimits: ["b": 4]))
        #expect(j.id == whole)
        #expect(try s.claimPart(worker: "w9", node: "n", now: 22, leaseSeconds: 60, peerLimits: ["b": 4]) == nil)
        #expect(try s.claimPart(worker: "w9", node: "n", now: 22, leaseSeconds: 60, peerLimits: ["b": 5]) != nil)
        // b2 down: the next parts go to b1 and b3 only; nodes no longer named are forgotten.
        try s.markPeerNodeDown("b", "[fd00::b2]:7700", until: 100)
        for w in 10..<12 {
            let p = try #require(try s.claimPart(worker: "w\(w)", node: "n", now: 23, leaseSeconds: 60))
            #expect(p.peerNode != "[fd00::b2]:7700")
        }
        try s.setPeerNodes("b", ["[fd00::b1]:7700"])
        #expect(try s.claimPart(worker: "w20", node: "n", now: 24, leaseSeconds: 60)?.peerNode == "[fd00::b1]:7700")
        try s.setPeerNodes("b", [])
        let none = try #require(try s.claimPart(worker: "w21", node: "n", now: 25, leaseSeconds: 60))
        #expect(none.peerNode == nil, "no node known: the peer's configured address")
    }

    @Test("per user: a user's running parts and whole jobs stay within per_user (a coordinator counts when a job starts, not when a part does), another user's go on; past a job's deadline its waiting parts fail and a failing part is not tried again", arguments: Backend.allCases)
    func perUserAndDeadline(_ backend: Backend) throws {
        let s = try Self.store(backend, attempts: 5, base: 20)
        let plan = Self.groups(6)
        let alices = try Self.stripedJob(s, plan: plan, worker: "coord-a", perUserMax: 3)
        var running: [JobPart] = []
        for w in 0..<3 { running.append(try #require(try s.claimPart(worker: "w\(w)", node: "n\(w)", now: 20, leaseSeconds: 60, perUserMax: 3))) }
        #expect(running.allSatisfy { $0.job == alices })
        #expect(try s.claimPart(worker: "w3", node: "n0", now: 20, leaseSeconds: 60, perUserMax: 3) == nil, "alice has three parts running")
        // Bob's striped job: its coordinator and its parts start although alice is at her limit.
        let bobs = try Self.stripedJob(s, plan: plan, worker: "coord-b", now: 21, owner: "bob", perUserMax: 3)
        #expect(try s.claimPart(worker: "w4", node: "n1", now: 22, leaseSeconds: 60, perUserMax: 3)?.job == bobs)
        // A job of alice's waits while her coordinator and parts fill her three; two parts end,
        // it starts; then one more part of hers (a part counts whole jobs and parts), then bob's.
        let whole = try s.submit(owner: "alice", request: JobRequest(source: "/x", destination: "ferry://b/x"), peer: "b", now: 23)
        #expect(try s.claim(worker: "x", now: 24, leaseSeconds: 60, perUserMax: 3) == nil)
        for p in running.prefix(2) { #expect(try s.finishPart(p.id, worker: p.leaseOwner ?? "", outcome: .success(bytes: 1, files: 1), now: 25)?.state == .success) }
        #expect(try s.claim(worker: "x", now: 26, leaseSeconds: 60, perUserMax: 3)?.id == whole)
        #expect(try s.claimPart(worker: "w5", node: "n2", now: 27, leaseSeconds: 60, perUserMax: 3)?.job == alices)
        #expect(try s.claimPart(worker: "w6", node: "n2", now: 27, leaseSeconds: 60, perUserMax: 3)?.job == bobs, "alice is at three again")

        // per_user 1: a striped job still runs, one part at a time.
        let d = try Self.store(backend, attempts: 5, base: 20)
        let late = try Self.stripedJob(d, plan: plan, worker: "coord-c", now: 30, owner: "carol", deadline: 50, perUserMax: 1)
        let first = try #require(try d.claimPart(worker: "c1", node: "n0", now: 31, leaseSeconds: 60, perUserMax: 1))
        #expect(try d.claimPart(worker: "c2", node: "n1", now: 31, leaseSeconds: 60, perUserMax: 1) == nil)
        // Deadline 50: a failure at 40 backs off until 60; another part starts at 41.
        #expect(try d.finishPart(first.id, worker: "c1", outcome: .failure(message: "reset", resumable: true), now: 40)?.state == .upForRetry)
        let second = try #require(try d.claimPart(worker: "c2", node: "n1", now: 41, leaseSeconds: 60, perUserMax: 1))
        #expect(second.id != first.id)
        // Past the deadline the waiting parts fail (the backing-off one and the four never
        // started); the running one goes on, and fails for good when it fails.
        try d.promote(now: 51)
        let parts = try d.parts(late)
        #expect(parts.filter { $0.state == .failed }.count == 5)
        #expect(parts.first { $0.id == first.id }?.error == "deadline passed before the transfer finished")
        #expect(parts.first { $0.id == second.id }?.state == .running)
        #expect(try d.claimPart(worker: "c3", node: "n2", now: 52, leaseSeconds: 60) == nil)
        #expect(try d.finishPart(second.id, worker: "c2", outcome: .failure(message: "reset", resumable: true), now: 53)?.state == .failed)
        #expect(try d.parts(late).first { $0.id == second.id }?.error?.contains("deadline passed") == true)
    }

    @Test("a commit that cannot be made now (the peer unreachable) is released for a while, then claimed again; after eight such tries the file fails, and a retry of the job reopens it", arguments: Backend.allCases)
    func commitReleased(_ backend: Backend) throws {
        let s = try JobStore(database: try backend.newDatabase())
        let id = try Self.stripedJob(s, plan: try Self.filePlan(chunks: 2, per: 1))
        var file: StripedFile?
        for w in 0..<2 {
            let p = try #require(try s.claimPart(worker: "w\(w)", node: "n", now: 20, leaseSeconds: 60))
            file = try s.finishPart(p.id, worker: "w\(w)", outcome: .success(bytes: 1, files: 0), hashes: Self.hashes(p.range!), now: 21)?.commit ?? file
        }
        let f = try #require(file)
        var now: Int64 = 22
        for attempt in 1...JobStore.commitAttemptsMax {
            let holder = attempt == 1 ? try #require(f.committer) : "c\(attempt)"
            if attempt > 1 {
                #expect(try s.claimCommit(worker: holder, now: now + 14, leaseSeconds: 60) == nil, "released for 15 s")
                now += 15
                #expect(try s.claimCommit(worker: holder, now: now, leaseSeconds: 60)?.id == f.id)
            }
            #expect(try s.finishCommit(f.id, worker: holder, outcome: .release(seconds: 15, why: "no answer"), now: now))
        }
        let failed = try #require(try s.stripedFile(f.id))
        #expect(failed.state == .failed && failed.error?.contains("gave up after 8 tries") == true, "\(failed)")
        #expect(try s.partProgress(id).filesFailed == 1)
        _ = try s.finish(id, worker: "coord", outcome: .failure(message: "commit", resumable: false), now: now + 1)
        _ = try s.retryJob(id, now: now + 2)
        #expect(try s.stripedFile(f.id)?.state == .committing)
        #expect(try s.claimCommit(worker: "r", now: now + 3, leaseSeconds: 60)?.id == f.id)
    }

    @Test("chunk hashes round-trip through their text; malformed text is refused")
    func hashText() {
        let h = [ChunkHash(low: 0, high: .max), ChunkHash(low: 0x0123_4567_89ab_cdef, high: 1)]
        #expect(JobStore.unhex(JobStore.hex(h)) == h)
        #expect(JobStore.hex(h).count == 64)
        #expect(JobStore.unhex("abc") == nil)
        #expect(JobStore.unhex(String(repeating: "g", count: 32)) == nil)
        #expect(JobStore.unhex("") == [])
    }
}
