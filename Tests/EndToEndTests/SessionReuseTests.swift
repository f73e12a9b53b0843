// Jobs at their bytes' cost (issue 14, item 6): a daemon running job after job to one peer
// resumes its TLS session from a ticket of an earlier job instead of a full handshake, and a
// peer that restarted (its tickets gone) costs one full handshake, not a failed job.

import Foundation
import Testing
import TestSupport

@Suite("Session reuse")
struct SessionReuseTests {
    /// `ferry_peer_tls_handshakes_total{peer="wuxi",kind=KIND}` of a /metrics page (-1: absent).
    static func handshakes(_ metrics: String, _ kind: String) -> Int {
        let prefix = "ferry_peer_tls_handshakes_total{peer=\"wuxi\",kind=\"\(kind)\"} "
        guard let line = metrics.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return -1 }
        return Int(line.dropFirst(prefix.count)) ?? -1
    }

    /// wuxi's audit lines of pushes from hlrs that ended ok.
    static func auditedPushes(_ c: DaemonE2ETests.Centers) -> Int {
        let text = (try? String(contentsOfFile: c.sb.file("wuxi-audit.jsonl"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").filter { $0.contains("\"action\":\"push\"") && $0.contains("\"result\":\"ok\"") }.count
    }

    @Test("one-file jobs to a peer resume its TLS session (far fewer full handshakes than jobs); a restarted peer costs a full handshake, not a failed job")
    func resumedAcrossJobs() throws {
        let c = try DaemonE2ETests.start("session-reuse")
        defer { c.a.stop(); c.b.stop() }
        let n = 16
        try FileManager.default.createDirectory(atPath: c.scratch + "/many", withIntermediateDirectories: true)
        for i in 0..<n { try writeRandomFile(c.scratch + "/many/f\(i).bin", size: 4096 + i) }
        // One job per file (several sources, one destination directory), run by 2 workers.
        let r = try DaemonE2ETests.jobs(c, ["submit", "--wait"] + (0..<n).map { "/scratch/many/f\($0).bin" } + ["ferry://wuxi/incoming/many/"], timeout: 180)
        #expect(r.status == 0, "\(r)")
        let (ended, jobs) = DaemonE2ETests.waitAllEnded(c, count: n, timeout: 60)
        #expect(ended && jobs.allSatisfy { $0["state"] as? String == "success" && $0["attempts"] as? Int == 1 }, "\(jobs)")
        for i in 0..<n { #expect(filesIdentical(c.scratch + "/many/f\(i).bin", c.incoming + "/many/f\(i).bin")) }
        let metrics = DaemonE2ETests.httpGet(c.api + "/metrics")
        let full = SessionReuseTests.handshakes(metrics, "full"), resumed = SessionReuseTests.handshakes(metrics, "resumed")
        // One handshake per job; a full one only while no ticket was kept yet (one per worker
        // at most: both may start before the first ticket arrives).
        #expect(full + resumed == n, "\(metrics)")
        #expect(full >= 1 && full <= 2 && resumed >= n - 2, "full \(full), resumed \(resumed): \(metrics)")
        // The peer counted every session once.
        #expect(SessionReuseTests.auditedPushes(c) == n)

        // wuxi restarts on its address: the tickets hlrs keeps are now unknown to it (a new
        // ticket key). The next job offers one, gets a full handshake and succeeds at once.
        let port = c.b.port
        c.b.stop()
        let b2 = try FerryServer(c.sb, root: "", listen: ["127.0.0.1:\(port)"], extra: ["--config", c.sb.file("wuxi.toml"), "--cert", c.sb.pki + "/wuxi.crt", "--key", c.sb.pki + "/wuxi.key"])
        defer { b2.stop() }
        try writeRandomFile(c.scratch + "/after.bin", size: 5000)
        let after = try DaemonE2ETests.jobs(c, ["submit", "--wait", "/scratch/after.bin", "ferry://wuxi/incoming/after.bin"], timeout: 120)
        #expect(after.status == 0 && DaemonE2ETests.lastJSON(after)["state"] as? String == "success", "\(after)")
        #expect(DaemonE2ETests.lastJSON(after)["attempts"] as? Int == 1, "no failed attempt on the stale ticket: \(after.stdout)")
        #expect(filesIdentical(c.scratch + "/after.bin", c.incoming + "/after.bin"))
        let metrics2 = DaemonE2ETests.httpGet(c.api + "/metrics")
        #expect(SessionReuseTests.handshakes(metrics2, "full") == full + 1, "\(metrics2)")
        #expect(SessionReuseTests.handshakes(metrics2, "resumed") == resumed, "\(metrics2)")
        // And the one after that resumes the new session.
        try writeRandomFile(c.scratch + "/after2.bin", size: 6000)
        let again = try DaemonE2ETests.jobs(c, ["submit", "--wait", "/scratch/after2.bin", "ferry://wuxi/incoming/after2.bin"], timeout: 120)
        #expect(again.status == 0 && DaemonE2ETests.lastJSON(again)["state"] as? String == "success", "\(again)")
        let metrics3 = DaemonE2ETests.httpGet(c.api + "/metrics")
        #expect(SessionReuseTests.handshakes(metrics3, "resumed") == resumed + 1, "\(metrics3)")
        #expect(filesIdentical(c.scratch + "/after2.bin", c.incoming + "/after2.bin"))
        // Every session counted once by the peer, across its restart: nothing lost or doubled.
        #expect(SessionReuseTests.auditedPushes(c) == n + 2)
    }
}
