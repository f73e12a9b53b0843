// One user's jobs cannot hold every worker of a center's daemon (the attack: two slow jobs on
// a two-worker daemon, and every other user's job waited for them). A real `ferry serve` with
// a [daemon], its default share, two users' jobs pushing to a real peer.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Fair shares of the daemon's workers")
struct FairShareTests {
    static let identities = """
        [[identity]]
        user = "alice"
        account = "daemon"
        [[identity]]
        user = "bob"
        account = "daemon"
        """

    static func state(_ c: LiveCenters, _ id: Int, _ token: String) -> String {
        let r = try? LiveHTTP.once(c.api, "GET", "/api/v1/transfers/\(id)", token: token)
        return LiveHTTP.object(r?.body ?? "")["state"] as? String ?? "?"
    }

    @Test("two slow jobs of alice on a daemon of two workers (the default share): one runs, the other waits, and bob's job submitted later runs at once and ends while alice's still runs; per_user at the workers is warned about")
    func slowJobsLeaveAWorker() throws {
        let c = try LiveCenters("fair-share", hlrsTables: Self.identities)
        defer { c.stop() }
        let alice = try c.sb.token("alice", ["rw:/scratch"])
        let bob = try c.sb.token("bob", ["rw:/scratch"])
        // 48 MiB that do not compress, at 4 MiB/s on the wire: twelve seconds a job.
        let random = try #require(FileHandle(forReadingAtPath: "/dev/urandom"))
        let big = try #require(try random.read(upToCount: 48 << 20))
        try random.close()
        #expect(big.count == 48 << 20 && FileManager.default.createFile(atPath: c.scratch + "/big.bin", contents: big))
        try c.sb.write("hlrs/scratch/small.txt", "bob's five\n")

        var slow: [Int] = []
        for name in ["a1", "a2"] {
            let r = try LiveHTTP.once(c.api, "POST", "/api/v1/transfers", token: alice,
                                      body: #"{"source": "/scratch/big.bin", "destination": "ferry://wuxi/incoming/\#(name).bin", "bwlimit": 4194304}"#)
            #expect(r.status == 201, "\(r)")
            slow.append(LiveHTTP.object(r.body)["id"] as? Int ?? -1)
        }
        defer {
            for id in slow { _ = try? LiveHTTP.once(c.api, "POST", "/api/v1/transfers/\(id)/cancel", token: alice) }
        }
        #expect(Live.wait(10, interval: 0.1) { slow.contains { Self.state(c, $0, alice) == "running" } }, "neither of alice's jobs started")
        // Both workers idle before, yet the second waits: alice's share is one.
        usleep(1_500_000)
        let states = slow.map { Self.state(c, $0, alice) }
        #expect(states.sorted() == ["queued", "running"], "alice's two jobs: \(states)")
        let runningOne = slow[states.firstIndex(of: "running") ?? 0]

        let r = try LiveHTTP.once(c.api, "POST", "/api/v1/transfers", token: bob,
                                  body: #"{"source": "/scratch/small.txt", "destination": "ferry://wuxi/incoming/b.txt"}"#)
        #expect(r.status == 201, "\(r)")
        let bobs = LiveHTTP.object(r.body)["id"] as? Int ?? -1
        let done = try c.waitJob(bobs, token: bob, timeout: 8)
        #expect(done["state"] as? String == "success", "bob's job waited for alice's: \(done)")
        #expect(Self.state(c, runningOne, alice) == "running", "alice's running job ended before bob's was tested")
        #expect((try? String(contentsOfFile: c.incoming + "/b.txt", encoding: .utf8)) == "bob's five\n")

        // An operator who sets per_user to the workers is told what that gives up.
        let wide = try LiveCenters("fair-share-wide", hlrsDaemon: "per_user = 2")
        defer { wide.stop() }
        let logs = ((try? String(contentsOfFile: wide.hlrs.out, encoding: .utf8)) ?? "") + ((try? String(contentsOfFile: wide.hlrs.err, encoding: .utf8)) ?? "")
        #expect(logs.contains("daemon.per_user = 2 with 2 workers") && logs.contains("can hold every worker"), "\(logs)")
        let quiet = ((try? String(contentsOfFile: c.hlrs.out, encoding: .utf8)) ?? "") + ((try? String(contentsOfFile: c.hlrs.err, encoding: .utf8)) ?? "")
        #expect(!quiet.contains("per_user"), "\(quiet)")
    }
}
