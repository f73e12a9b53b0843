// The server's audit log: one JSON line per session and per refusal, durable once written.
import Foundation
import Testing

@Suite("Audit log")
struct AuditLogTests {
    @Test("a push, a pull and a wrong token each leave one audit line with who, what, bytes and result")
    func auditLines() throws {
        let sb = try Sandbox("audit")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let audit = sb.file("audit.jsonl")
        try writeRandomFile(local + "/f.bin", size: 3 << 20)
        let server = try FerryServer(sb, root: root, extra: ["--audit-log", audit])
        defer { _ = server.stop() }

        let push = try sb.cp(local + "/f.bin", server.url("in/f.bin"))
        #expect(push.succeeded, "\(push)")
        let pull = try sb.cp(server.url("in/f.bin"), local + "/back.bin")
        #expect(pull.succeeded, "\(pull)")
        let refused = try sb.cp(local + "/f.bin", server.url("x.bin"), tokenFile: try sb.wrongTokenFile(), timeout: 30)
        #expect(refused.status == 1, "\(refused)")

        var lines: [[String: Any]] = []
        _ = waitUntil(timeout: 10) {
            let text = (try? String(contentsOfFile: audit, encoding: .utf8)) ?? ""
            lines = text.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
            return lines.count >= 3
        }
        #expect(lines.count == 3, "audit lines: \(lines)")
        guard lines.count == 3 else { return }
        let refusals = lines.filter { ($0["result"] as? String ?? "").hasPrefix("refused") }
        let byAction = Dictionary(grouping: lines.filter { $0["result"] as? String == "ok" }) { $0["action"] as? String ?? "?" }
        let p = try #require(byAction["push"]?.first)
        #expect(p["user"] as? String == "alice" && p["protection"] as? String == "private" && p["duration_ms"] is Int && p["center"] is String)
        #expect(p["path"] as? String == "in/f.bin")
        #expect(p["result"] as? String == "ok")
        #expect((p["bytes"] as? Int) == 3 << 20)
        #expect((p["files"] as? Int) == 1)
        #expect((p["peer"] as? String)?.hasPrefix("127.0.0.1:") == true)
        #expect((p["time"] as? String)?.hasSuffix("Z") == true)
        let q = try #require(byAction["pull"]?.first)
        #expect(q["result"] as? String == "ok" && (q["bytes"] as? Int) == 3 << 20)
        // The forged token: refused, with what was asked and why.
        let r = try #require(refusals.first)
        #expect(refusals.count == 1)
        #expect(r["action"] as? String == "push" && r["path"] as? String == "x.bin", "\(r)")
        #expect((r["result"] as? String)?.contains("signature is not valid") == true, "\(r)")
    }
}
