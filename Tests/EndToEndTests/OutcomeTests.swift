// Outcomes that never lie (issue 13, item 6): a source that changes while being read fails
// that file on both sides, and the client's exit status, its JSON and the server's audit
// line agree; nothing is left at the destination's name (or beside it) holding wrong content.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct ChangeCase: Sendable, CustomTestStringConvertible {
    enum Direction: String, Sendable { case push, pull }
    enum Change: String, Sendable { case shrink, grow }
    let direction: Direction
    let change: Change

    var testDescription: String { "\(direction.rawValue), the source \(change == .shrink ? "shrinks" : "grows") while being read" }

    static let all: [ChangeCase] = [
        ChangeCase(direction: .push, change: .shrink),
        ChangeCase(direction: .push, change: .grow),
        ChangeCase(direction: .pull, change: .shrink),
        ChangeCase(direction: .pull, change: .grow),
    ]
}

/// The server's audit lines so far (JSON objects).
private func auditLines(_ path: String) -> [[String: Any]] {
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    return text.split(separator: "\n").compactMap {
        try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
    }
}

@Suite("Outcomes that never lie")
struct OutcomeTests {
    @Test("a source changed while being read fails on both sides", arguments: ChangeCase.all)
    func sourceChanged(_ c: ChangeCase) throws {
        let sb = try Sandbox("outcome-\(c.direction)-\(c.change)")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let audit = sb.file("audit.jsonl")
        let size = 128 * E2E.MiB
        let (srcPath, dstPath, dstDir) =
            c.direction == .push
            ? (local + "/big.bin", root + "/big.bin", root)
            : (root + "/big.bin", local + "/big.bin", local)
        try writeRandomFile(srcPath, size: size)
        let server = try FerryServer(sb, root: root, extra: ["--audit-log", audit])
        defer { server.stop() }
        let (from, to) = c.direction == .push ? (srcPath, server.url("big.bin")) : (server.url("big.bin"), dstPath)

        let cp = try sb.startCp(from, to, options: ["--bwlimit", "32M"])
        // The first progress event with some bytes moved: the copy is under way.
        guard let seen = waitForProgress(cp, fraction: 0.02, timeout: 60), seen.bytesDone < seen.bytesTotal else {
            let r = sb.finish(cp, timeout: 5)
            Issue.record("never saw the copy under way: \(r)")
            return
        }
        switch c.change {
        case .shrink:
            #expect(truncate(srcPath, off_t(size / 2)) == 0, "truncate: errno \(errno)")
        case .grow:
            let fd = open(srcPath, O_WRONLY | O_APPEND)
            #expect(fd >= 0)
            if fd >= 0 {
                try writeRandom(fd: fd, offset: size, count: 4 * E2E.MiB, path: srcPath)
                close(fd)
            }
        }
        let r = sb.finish(cp, timeout: 120)

        // The client: exit 1, the file named, "changed while being read".
        #expect(!r.timedOut, "\(r)")
        #expect(r.status == 1, "exit status: \(r)")
        #expect(r.allMessages.contains("big.bin") && r.allMessages.contains("changed while being read"), "\(r)")
        // Its JSON: no summary claiming the copy; the error line counts the file failed.
        #expect(r.summary == nil, "a summary after a failed copy: \(r)")
        if let e = r.jsonLines.last(where: { ($0["type"] as? String) == "error" }) {
            #expect((e["files_copied"] as? Int) == 0 && (e["files_failed"] as? Int) == 1, "error event: \(e)")
        } else {
            Issue.record("no {\"type\":\"error\"} line: \(r)")
        }

        // The server's audit line says the same.
        var lines: [[String: Any]] = []
        waitUntil(timeout: 15) {
            lines = auditLines(audit).filter { ($0["action"] as? String) == c.direction.rawValue }
            return !lines.isEmpty
        }
        #expect(lines.count == 1, "audit lines: \(auditLines(audit))")
        if let line = lines.first {
            let result = line["result"] as? String ?? ""
            #expect(result.hasPrefix("failed") && result.contains("changed while being read"), "audit: \(line)")
        }

        // Nothing at the destination's name, and no partial or journal of a version gone.
        #expect(!exists(dstPath), "a file at the destination's name after a failed copy: \(walkTree(dstDir))")
        #expect(ferryLeftovers(dstDir).isEmpty, "helper files left: \(ferryLeftovers(dstDir))")

        // The source as it is now copies whole on a rerun.
        let rerun = try sb.cp(from, to)
        #expect(rerun.succeeded, "\(rerun)")
        #expect(filesIdentical(srcPath, dstPath), "the rerun's result differs from the source")
        if let s = rerun.summary {
            #expect(s.raw["files_copied"] as? Int == 1 && s.raw["files_failed"] as? Int == 0, "\(s)")
        }
        #expect(ferryLeftovers(dstDir).isEmpty, "helper files left: \(ferryLeftovers(dstDir))")
    }

    /// Small files travel in batches, each read whole in one go: those written to after the
    /// listing (here: a new mtime, same size) fail, on both sides, while the rest arrive.
    @Test("small files changed after the listing fail; the rest of the tree arrives", arguments: [ChangeCase.Direction.push, .pull])
    func smallFilesChanged(_ direction: ChangeCase.Direction) throws {
        let sb = try Sandbox("outcome-small-\(direction)")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let audit = sb.file("audit.jsonl")
        let srcDir = direction == .push ? try sb.dir("local/tree") : try sb.dir("root/tree")
        let dstDir = direction == .push ? root + "/tree" : local + "/tree"
        let count = 1500
        for i in 0..<count { try writeRandomFile(srcDir + "/f\(i).txt", size: 8192) }
        let server = try FerryServer(sb, root: root, extra: ["--audit-log", audit])
        defer { server.stop() }
        let (from, to) = direction == .push ? (srcDir, server.url("tree")) : (server.url("tree"), dstDir)

        let cp = try sb.startCp(from, to, options: ["-r", "--bwlimit", "4M"])
        guard waitForProgress(cp, fraction: 0.02, timeout: 60) != nil else {
            let r = sb.finish(cp, timeout: 5)
            Issue.record("never saw the copy under way: \(r)")
            return
        }
        // Every file gets a new mtime (its bytes stay): those not yet read are not the
        // version that was listed.
        for i in 0..<count { try setMtime(srcDir + "/f\(i).txt", seconds: 1_000_000_000 + i) }
        let r = sb.finish(cp, timeout: 120)
        #expect(!r.timedOut, "\(r)")
        #expect(r.status == 1, "\(r)")
        #expect(r.allMessages.contains("changed while being read"), "\(r)")
        #expect(r.summary == nil, "a summary after a failed copy: \(r)")
        let e = r.jsonLines.last(where: { ($0["type"] as? String) == "error" }) ?? [:]
        let copied = e["files_copied"] as? Int ?? -1
        let failed = e["files_failed"] as? Int ?? -1
        #expect(failed >= 1 && copied >= 0 && copied + failed == count, "error event: \(e)")
        var lines: [[String: Any]] = []
        waitUntil(timeout: 15) {
            lines = auditLines(audit).filter { ($0["action"] as? String) == direction.rawValue }
            return !lines.isEmpty
        }
        let result = lines.first?["result"] as? String ?? ""
        #expect(result.hasPrefix("failed") && result.contains("changed while being read"), "audit: \(lines)")
        // What arrived is whole and right; what failed is not there at all.
        let arrived = (0..<count).filter { exists(dstDir + "/f\($0).txt") }
        #expect(arrived.count == copied, "\(arrived.count) files at the destination, \(copied) counted copied")
        for i in arrived where !filesIdentical(srcDir + "/f\(i).txt", dstDir + "/f\(i).txt") {
            Issue.record("f\(i).txt differs from its source")
        }
        #expect(ferryLeftovers(dstDir).isEmpty, "helper files left: \(ferryLeftovers(dstDir))")
    }
}
