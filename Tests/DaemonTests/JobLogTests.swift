// What on-call staff read in `journalctl -u ferry`: a line per job attempt's end, at info
// when it went well and at warning when it did not (ops review of 2026-12-06, finding 7: the
// job lifecycle reached only the audit file). A real daemon, a real peer, its standard error.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("The daemon's log of jobs")
struct JobLogTests {
    @Test("a job that succeeds is one info line (job, owner, peer, attempt, files and bytes); one refused by the peer is a warning with its state, code and reason, control characters escaped")
    func jobEnds() throws {
        let c = try LiveCenters("job-log", hlrsTables: """
            [[identity]]
            user = "alice"
            account = "daemon"
            """)
        defer { c.stop() }
        let alice = try c.sb.token("alice", ["rw:/scratch"])
        try c.sb.write("hlrs/scratch/ok.txt", "twelve bytes")
        func submit(_ body: String) throws -> Int {
            let r = try LiveHTTP.once(c.api, "POST", "/api/v1/transfers", token: alice, body: body)
            #expect(r.status == 201, "\(r)")
            return LiveHTTP.object(r.body)["id"] as? Int ?? -1
        }
        let good = try submit(#"{"source": "/scratch/ok.txt", "destination": "ferry://wuxi/incoming/ok.txt"}"#)
        // wuxi's outgoing is read-only: the peer refuses, and with max_attempts = 1 it fails.
        let bad = try submit(#"{"source": "/scratch/ok.txt", "destination": "ferry://wuxi/outgoing/a\u001b[31mred.txt"}"#)
        #expect(try c.waitJob(good, token: alice)["state"] as? String == "success")
        #expect(try c.waitJob(bad, token: alice)["state"] as? String == "failed")
        var log = ""
        Live.wait(5) {
            log = (try? String(contentsOfFile: c.hlrs.err, encoding: .utf8)) ?? ""
            return log.contains("job \(bad) of alice")
        }
        let lines = log.split(separator: "\n").map(String.init)
        let ok = lines.filter { $0.contains("job \(good) of alice with wuxi, attempt 1: ok, 1 file, 12 B in ") }
        #expect(ok.count == 1 && ok[0].contains(" info ferry.daemon: "), "\(log)")
        let failed = lines.filter { $0.contains("job \(bad) of alice with wuxi, attempt 1: failed after ") }
        #expect(failed.count == 1 && failed[0].contains(" warning ferry.daemon: ") && failed[0].contains("read-only"), "\(log)")
        #expect(!log.contains("\u{1b}"), "an escape character reached the log: \(log)")
    }

    @Test("refused tokens reach the log as warnings with the address, at most five lines a second, the rest counted in the next line; a job not found (the client's business) does not")
    func refusalsLogged() throws {
        let c = try LiveCenters("refusal-log")
        defer { c.stop() }
        let alice = try c.sb.token("alice", ["rw:/scratch"])
        let started = Live.seconds()
        for _ in 0..<40 {
            let r = try LiveHTTP.once(c.api, "GET", "/api/v1/transfers", token: "not-a-token")
            #expect(r.status == 401, "\(r)")
        }
        let missing = try LiveHTTP.once(c.api, "GET", "/api/v1/transfers/999", token: alice)
        #expect(missing.status == 404, "\(missing)")
        usleep(1_100_000)
        let seconds = Live.seconds() - started
        _ = try LiveHTTP.once(c.api, "GET", "/api/v1/transfers", token: "still-not-a-token")
        var log = ""
        Live.wait(5) {
            log = (try? String(contentsOfFile: c.hlrs.err, encoding: .utf8)) ?? ""
            return log.contains("more API refusals not logged")
        }
        let lines = log.split(separator: "\n").filter { $0.contains("API refused GET /api/v1/transfers from 127.0.0.1") }
        #expect(lines.allSatisfy { $0.contains(" warning ferry.daemon: ") && $0.contains(": 401 ") }, "\(lines)")
        #expect(lines.count >= 2 && Double(lines.count) <= 5 * (seconds + 2), "\(lines.count) lines for 41 refusals in \(seconds) s: \(log)")
        #expect(lines.last?.contains("more API refusals not logged since the last line") == true, "\(log)")
        #expect(!log.contains("/api/v1/transfers/999"), "a 404 was logged: \(log)")
    }
}
