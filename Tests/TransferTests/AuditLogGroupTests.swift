import Foundation
import Testing
@testable import Transfer

@Suite("Audit log, grouped syncs")
struct AuditLogGroupTests {
    @Test("16 threads writing at once: every line whole and present, fewer syncs than lines")
    func groupedSyncs() throws {
        // On the disk (/var/tmp), not in tmpfs: there a sync returns at once and writers never
        // meet (the test command's TMPDIR may be a tmpfs: a clean-clone run saw 640 syncs for
        // 640 lines there).
        let dir = "/var/tmp/ferry-audit-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try AuditLog(path: dir + "/audit.jsonl")
        let threads = 16, each = 40
        // Sixteen threads of their own (concurrentPerform would use one per core: two here,
        // and on a loaded machine they rarely meet), released together.
        let start = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
        for t in 0..<threads {
            done.enter()
            Thread {
                start.wait()
                for i in 0..<each {
                    log.write(AuditLog.Record(user: "u\(t)", peer: "", action: "api", path: "line \(i) of thread \(t) " + String(repeating: "x", count: 200), result: "ok"))
                }
                done.leave()
            }.start()
        }
        for _ in 0..<threads { start.signal() }
        #expect(done.wait(timeout: .now() + 120) == .success, "the writers did not finish in 2 minutes")
        let text = try String(contentsOfFile: dir + "/audit.jsonl", encoding: .utf8)
        let lines = text.split(separator: "\n")
        #expect(lines.count == threads * each)
        var seen = Set<String>()
        for l in lines {
            let o = try #require(try JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any], "a torn line: \(l.prefix(80))")
            seen.insert("\(o["user"] ?? "")/\(o["path"] ?? "")")
        }
        #expect(seen.count == threads * each, "every line once")
        #expect(log.syncs >= 1)
        #expect(log.syncs < UInt64(threads * each), "each line synced alone: \(log.syncs) syncs for \(threads * each) lines")
    }
}
