// Readiness for orchestration (issue 17, item 5): /api/v1/ready checks the database, each
// export and each configured peer, with the reason when one does not answer.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Readiness", .serialized)
struct ReadinessTests {
    /// GET URL: the status and the body, whatever the status.
    static func get(_ url: String) -> (status: Int, body: [String: Any]) {
        let r = runTool("/usr/bin/python3", ["-c", """
            import sys, urllib.request, urllib.error
            try:
                r = urllib.request.urlopen(sys.argv[1], timeout=20); print(r.status); print(r.read().decode())
            except urllib.error.HTTPError as e:
                print(e.code); print(e.read().decode())
            """, url], timeout: 30)
        let lines = r.output.split(separator: "\n", maxSplits: 1).map(String.init)
        let body = lines.count > 1 ? (try? JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any]) ?? [:] : [:]
        return (Int(lines.first ?? "") ?? -1, body)
    }

    static func checks(_ body: [String: Any]) -> [String: (Bool, String)] {
        var out: [String: (Bool, String)] = [:]
        for c in body["checks"] as? [[String: Any]] ?? [] { out[c["name"] as? String ?? ""] = ((c["ok"] as? Bool) ?? false, (c["detail"] as? String) ?? "") }
        return out
    }

    @Test("ready with every check named; degraded (still 200) when a peer is down, with its reason; 503 naming the export when an export's directory is gone")
    func readiness() throws {
        let c = try DaemonE2ETests.start("ready")
        defer { c.a.stop(); c.b.stop() }
        let ok = Self.get(c.api + "/api/v1/ready")
        let all = Self.checks(ok.body)
        #expect(ok.status == 200 && ok.body["status"] as? String == "ready", "\(ok)")
        #expect(all["database"]?.0 == true && all["export scratch"]?.0 == true && all["peer wuxi"]?.0 == true, "\(all)")
        #expect(all["peer wuxi"]?.1.contains("center wuxi") == true, "\(all)")

        // The peer stops: this center still serves, degraded, and says why.
        c.b.stop()
        sleepSeconds(10.5)  // past the probe's reuse window
        let degraded = Self.get(c.api + "/api/v1/ready")
        let d = Self.checks(degraded.body)
        #expect(degraded.status == 200 && degraded.body["status"] as? String == "degraded" && d["peer wuxi"]?.0 == false, "\(degraded)")
        #expect(d["peer wuxi"]?.1.contains("127.0.0.1") == true, "\(d)")

        // An export's directory gone (an unmounted file system): not ready, and which.
        try FileManager.default.moveItem(atPath: c.scratch, toPath: c.scratch + ".away")
        defer { try? FileManager.default.moveItem(atPath: c.scratch + ".away", toPath: c.scratch) }
        let down = Self.get(c.api + "/api/v1/ready")
        #expect(down.status == 503 && (down.body["detail"] as? String)?.contains("export scratch") == true, "\(down)")
        // Liveness is another question: the daemon is up.
        #expect(DaemonE2ETests.httpGet(c.api + "/api/v1/health").contains("\"status\":\"ok\""))
    }
}
