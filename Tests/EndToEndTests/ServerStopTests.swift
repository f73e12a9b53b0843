// `systemctl stop ferry` (SIGTERM) in the middle of a push (ops review of 2026-12-06, finding
// 6): before, the process was gone within 0.1 s, the client saw a bare end of the connection
// and neither the log nor the audit kept a word of the cut session.

import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Stopping the server")
struct ServerStopTests {
    @Test("SIGTERM during a push or a pull: the log says the stop began and how many sessions it cut, the session's own line and audit record say 'server stopping', the client is told so (resumable, exit 1), and a rerun on a new server resumes",
          arguments: ["push", "pull"])
    func sigtermMidTransfer(_ direction: String) throws {
        let sb = try Sandbox("sigterm-" + direction)
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let (src, dst) = direction == "push" ? (local + "/big.bin", root + "/big.bin") : (root + "/big.bin", local + "/big.bin")
        try writeRandomFile(src, size: 48 * E2E.MiB)
        let audit = sb.file("audit.jsonl")
        var server = try FerryServer(sb, root: root, extra: ["--audit-log", audit])
        func endpoints() -> (String, String) { direction == "push" ? (src, server.url("big.bin")) : (server.url("big.bin"), dst) }
        let (from, to) = endpoints()
        let cp = try sb.startCp(from, to, options: ["--bwlimit", "8M", "--compress", "off"])
        #expect(waitUntil(timeout: 20) { (cp.lastProgress?.bytesDone ?? 0) > 8 * E2E.MiB }, "the push did not start")
        let pid = try #require(RenewalTests.servePid(server))
        kill(pid, SIGTERM)
        #expect(waitUntil(timeout: 15) { !server.isRunning }, "the server did not stop")
        let log = server.process.stderr
        #expect(log.contains("stopping (a signal"), "\(log)")
        #expect(log.contains((direction == "push" ? "push to" : "pull from") + " 'big.bin' by alice") && log.contains("failed: server stopping"), "\(log)")
        #expect(log.contains("stopped: 1 transfer session cut") && log.contains("1 of them ended within 3 s"), "\(log)")
        let records = ((try? String(contentsOfFile: audit, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        #expect(records.contains { $0["action"] as? String == direction && $0["result"] as? String == "failed: server stopping" }, "\(records)")
        let r = sb.finish(cp, timeout: 30)
        #expect(r.status == 1 && r.error?.resumable == true && (r.error?.message ?? "").contains("server stopping"), "\(r)")

        server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let (again, into) = endpoints()
        let rerun = try sb.cp(again, into)
        #expect(rerun.succeeded && filesIdentical(src, dst) && (rerun.summary?.skippedBytes ?? 0) > 0, "\(rerun)")
    }
}
