// Range sessions (issue 19, striping; docs/STRIPING.md): several transfers each move one chunk
// range of one file into that file's one partial copy at the same time, each with its own
// range journal; none renames anything (the commit does, once every range is in). Driven
// through `ferry cp --range FIRST:COUNT`, the operators' and tests' handle on them.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Range sessions (striping)")
struct RangeTests {
    static let chunk = 4 * E2E.MiB

    /// Bytes [offset, offset+count) of a file.
    static func slice(_ path: String, _ offset: Int, _ count: Int) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var b = [UInt8](repeating: 0, count: count)
        let n = b.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        return n == count ? b : []
    }

    /// The partial copy the ranges of NAME share in `dir` (`.NAME.v<version>.ferry-stripe`), when
    /// there is exactly one.
    static func partial(_ dir: String, _ name: String) -> String? {
        let found = (listDirectory(dir) ?? []).filter { $0.hasPrefix("." + name + ".v") && $0.hasSuffix(".ferry-stripe") }
        return found.count == 1 ? dir + "/" + found[0] : nil
    }

    static func size(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : -1
    }

    @Test("three ranges of one file pushed at once, and three pulled at once, fill one partial: no final name, one journal per range holding all its chunks, the partial byte-identical to the source")
    func threeRanges() throws {
        let sb = try Sandbox("ranges")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let size = 10 * RangeTests.chunk - 12_345  // ten chunks, the last one short
        try writeRandomFile(local + "/big.bin", size: size)
        try writeRandomFile(root + "/src.bin", size: size)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let ranges = [(0, 4), (4, 3), (7, 3)]
        func bytes(_ r: (Int, Int)) -> Int { min(size, (r.0 + r.1) * RangeTests.chunk) - r.0 * RangeTests.chunk }
        let pushes = try ranges.map { try sb.startCp(local + "/big.bin", server.url("big.bin"), options: ["--range", "\($0.0):\($0.1)"]) }
        let pulls = try ranges.map { try sb.startCp(server.url("src.bin"), local + "/got.bin", options: ["--range", "\($0.0):\($0.1)"]) }
        for (p, r) in zip(pushes + pulls, ranges + ranges) {
            let done = sb.finish(p, timeout: 120)
            #expect(done.succeeded, "\(done)")
            // Each says what it moved: its range's bytes, not the file's.
            #expect(done.summary?.bytes == bytes(r), "\(r): \(String(describing: done.summary))")
        }
        for (dir, name, source) in [(root, "big.bin", local + "/big.bin"), (local, "got.bin", root + "/src.bin")] {
            #expect(!FileManager.default.fileExists(atPath: dir + "/" + name), "\(name) was renamed into place by a range session")
            let part = RangeTests.partial(dir, name)
            #expect(part.map { filesIdentical($0, source) } == true, "the partial of \(name) is not the source's bytes: \(walkTree(dir))")
            let helpers = Set(ferryLeftovers(dir).map { ($0 as NSString).lastPathComponent })
            let expected = Set([(part.map { ($0 as NSString).lastPathComponent } ?? "?")] + ranges.map { ".\(name).r\($0.0)+\($0.1).ferry-journal" })
            #expect(helpers == expected, "\(dir): \(helpers.sorted())")
            for r in ranges {
                // Every chunk of the range is recorded: the header and one record per chunk.
                #expect(RangeTests.size(dir + "/.\(name).r\(r.0)+\(r.1).ferry-journal") == 64 + 32 * r.1)
            }
        }
        // The commit: at the server for the pushed file, here for the pulled one. The file is
        // in place, the source's bytes, mode and mtime; no helper file is left; a second
        // commit (a coordinator that retries) is "already committed".
        try setMtime(local + "/big.bin", seconds: 1_700_000_123, nanoseconds: 456)
        chmod(local + "/big.bin", 0o640)
        // (The source's mtime changed after the ranges: they are another version's now.)
        let stale = try sb.ferry(["cp", "--commit", "0:4,4:3,7:3", "--ca", sb.ca, "--token-file", sb.tokenFile, local + "/big.bin", server.url("big.bin")])
        #expect(stale.status == 1 && stale.stderr.contains("no partial copy of this version"), "\(stale)")
        try setMtime(local + "/big.bin", seconds: 1_700_000_000)
        let again = try ranges.map { try sb.startCp(local + "/big.bin", server.url("big.bin"), options: ["--range", "\($0.0):\($0.1)"]) }
        for p in again { let r = sb.finish(p, timeout: 120); #expect(r.succeeded, "\(r)") }
        for (src, dst, dir, name) in [(local + "/big.bin", server.url("big.bin"), root, "big.bin"), (server.url("src.bin"), local + "/got.bin", local, "got.bin")] {
            // Two coordinators commit at once: one renames, the other finds it done.
            let args = ["cp", "--commit", "0:4,4:3,7:3", "--ca", sb.ca, "--token-file", sb.tokenFile, src, dst]
            let both = try [FerryProcess(args, logDir: sb.path + "/logs"), FerryProcess(args, logDir: sb.path + "/logs")].map { sb.finish($0, timeout: 60) }
            #expect(both.allSatisfy { $0.status == 0 }, "\(both)")
            #expect(both.filter { $0.stdout.contains("committed (3 ranges)") }.count == 1 && both.filter { $0.stdout.contains("already committed") }.count == 1, "\(both)")
            let source = name == "big.bin" ? local + "/big.bin" : root + "/src.bin"
            #expect(filesIdentical(dir + "/" + name, source))
            var a = stat(), b = stat()
            #expect(stat(dir + "/" + name, &a) == 0 && stat(source, &b) == 0 && a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec
                    && a.st_mode & 0o7777 == b.st_mode & 0o7777, "mode or mtime not the source's")
            #expect(ferryLeftovers(dir).isEmpty, "\(ferryLeftovers(dir))")
            let twice = try sb.ferry(["cp", "--commit", "0:4,4:3,7:3", "--ca", sb.ca, "--token-file", sb.tokenFile, src, dst])
            #expect(twice.status == 0 && twice.stdout.contains("already committed"), "\(twice)")
        }
    }

    @Test("a commit refuses what is not whole: a range missing, ranges that do not cover the file, a digest that is not the source's (the partial is then removed), a path out of the export, a token without write rights, a partial removed and made again (a chunk of each range read back); a whole-file copy of the same name meanwhile does not disturb the ranges")
    func commitRefusals() throws {
        let sb = try Sandbox("range-commit")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let size = 10 * RangeTests.chunk
        try writeRandomFile(local + "/big.bin", size: size)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        func commit(_ ranges: String, _ dst: String = "big.bin", token: String? = nil) throws -> CpResult {
            try sb.ferry(["cp", "--commit", ranges, "--ca", sb.ca, "--token-file", token ?? sb.tokenFile, local + "/big.bin", server.url(dst)])
        }
        for r in [(0, 4), (4, 3)] {
            let done = try sb.cp(local + "/big.bin", server.url("big.bin"), options: ["--range", "\(r.0):\(r.1)"])
            #expect(done.succeeded, "\(done)")
        }
        let missing = try commit("0:4,4:3,7:3")
        #expect(missing.status == 1 && missing.stderr.contains("7+3 (no journal"), "\(missing)")
        let short = try commit("0:4,4:3")
        #expect(short.status == 64 && short.stderr.contains("cover 7 of the file's 10 chunks"), "\(short)")
        let gap = try commit("0:4,5:5")
        #expect(gap.status == 64 && gap.stderr.contains("do not cover"), "\(gap)")
        let outside = try commit("0:4,4:3,7:3", "../outside.bin")
        #expect(outside.status != 0 && outside.stderr.contains("leaves the server's root"), "\(outside)")
        let reader = try sb.issueToken(scopes: ["read:/"], name: "reader.tok")
        let readOnly = try commit("0:4,4:3,7:3", token: reader)
        #expect(readOnly.status == 1 && readOnly.stderr.contains("does not allow writing"), "\(readOnly)")
        #expect(!FileManager.default.fileExists(atPath: root + "/big.bin") && RangeTests.partial(root, "big.bin") != nil, "\(walkTree(root))")
        let last = try sb.cp(local + "/big.bin", server.url("big.bin"), options: ["--range", "7:3"])
        #expect(last.succeeded, "\(last)")
        // The partial removed (by hand, or by a newer version's range) and made again by one
        // range run once more: the other ranges' journals are complete, but what they recorded
        // went into the removed file. The commit reads a chunk of each range and names them.
        let first = try #require(RangeTests.partial(root, "big.bin"), "\(walkTree(root))")
        #expect(unlink(first) == 0)
        let remade = try sb.cp(local + "/big.bin", server.url("big.bin"), options: ["--range", "7:3"])
        #expect(remade.succeeded, "\(remade)")
        let replaced = try commit("0:4,4:3,7:3")
        #expect(replaced.status == 1 && replaced.stderr.contains("no longer holds what ranges 0+4, 4+3 recorded"), "\(replaced)")
        #expect(!FileManager.default.fileExists(atPath: root + "/big.bin"))
        for (r, count) in [("0:4", 4), ("4:3", 3)] {
            let done = try sb.cp(local + "/big.bin", server.url("big.bin"), options: ["--range", r])
            #expect(done.succeeded && (done.summary?.wireBytes ?? 0) >= count * RangeTests.chunk, "a rerun range did not send its chunks again: \(done)")
        }
        let healed = try commit("0:4,4:3,7:3")
        #expect(healed.status == 0 && healed.stdout.contains("committed (3 ranges)") && filesIdentical(root + "/big.bin", local + "/big.bin"), "\(healed)")
        #expect(unlink(root + "/big.bin") == 0)
        for r in ["0:4", "4:3", "7:3"] {
            let done = try sb.cp(local + "/big.bin", server.url("big.bin"), options: ["--range", r])
            #expect(done.succeeded, "\(done)")
        }
        // The source now differs in one byte, with its size and mtime put back: the ranges are
        // of the same version by size and mtime, but their digest is not the source's.
        try flipByte(local + "/big.bin", at: 5 * RangeTests.chunk + 17)
        let wrong = try commit("0:4,4:3,7:3")
        #expect(wrong.status == 1 && wrong.stderr.contains("is not the source's"), "\(wrong)")
        #expect(!FileManager.default.fileExists(atPath: root + "/big.bin") && ferryLeftovers(root).isEmpty, "\(walkTree(root))")
        // The byte put back, the ranges moved again; meanwhile a whole-file copy of other bytes
        // to the same name (which once truncated the ranges' partial, shared then): it writes a
        // partial of its own, so the ranges' journals still vouch for theirs, and the commit
        // (reading one chunk of each range back) puts the source's bytes in place.
        try flipByte(local + "/big.bin", at: 5 * RangeTests.chunk + 17)
        for r in ["0:4", "4:3", "7:3"] {
            let done = try sb.cp(local + "/big.bin", server.url("big.bin"), options: ["--range", r])
            #expect(done.succeeded, "\(done)")
        }
        try writeRandomFile(local + "/other.bin", size: size)
        let whole = try sb.cp(local + "/other.bin", server.url("big.bin"))
        #expect(whole.succeeded && filesIdentical(root + "/big.bin", local + "/other.bin"), "\(whole)")
        let good = try commit("0:4,4:3,7:3")
        #expect(good.status == 0 && good.stdout.contains("committed (3 ranges)"), "\(good)")
        #expect(filesIdentical(root + "/big.bin", local + "/big.bin") && ferryLeftovers(root).isEmpty, "\(walkTree(root))")
    }

    @Test("a range session killed with -9 resumes its own range: the rerun sends only what is missing, and nothing outside the range is written")
    func killedRangeResumes() throws {
        let sb = try Sandbox("range-kill")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let size = 16 * RangeTests.chunk
        try writeRandomFile(local + "/big.bin", size: size)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let (first, count) = (4, 8)
        let rangeBytes = count * RangeTests.chunk
        let run1 = try sb.startCp(local + "/big.bin", server.url("big.bin"), options: ["--range", "\(first):\(count)", "--bwlimit", "16M"])
        guard let seen = waitForProgress(run1, fraction: 0.5) else {
            Issue.record("never saw progress ≥ 50 % before the range ended: \(sb.finish(run1, timeout: 5))")
            return
        }
        #expect(seen.bytesTotal == rangeBytes)
        run1.kill9()
        _ = run1.waitExit(timeout: 10)
        let journal = root + "/.big.bin.r\(first)+\(count).ferry-journal"
        // The client's progress counts bytes it sent; the chunks still in the sockets when it
        // died may reach the server's journal a moment later, or never. What the rerun may skip
        // is what the journal holds once the server is done with the dead session: wait until
        // its contents stop changing, then count the chunks it vouches for. Each chunk has its
        // own 32-byte slot after the 64-byte header, written in whatever order the chunks
        // landed (several streams): a slot not yet written is zeros, so the file's size says
        // only the highest chunk written.
        var journalBytes: [UInt8]? = nil  // not read yet: the first look never counts as settled
        waitUntil(timeout: 10, interval: 0.5) {
            let now = (try? Data(contentsOf: URL(fileURLWithPath: journal))).map { [UInt8]($0) }
            defer { journalBytes = now }
            return now != nil && now == journalBytes
        }
        let bytes = journalBytes ?? []
        let journaled = stride(from: 64, to: max(64, bytes.count - 31), by: 32).filter { at in bytes[at..<at + 32].contains { $0 != 0 } }.count
        #expect(journaled > 0 && journaled < count, "the journal vouched for \(journaled) chunks after the kill (\(journalBytes?.count ?? -1) bytes)")
        let rerun = try sb.cp(local + "/big.bin", server.url("big.bin"), options: ["--range", "\(first):\(count)"])
        #expect(rerun.succeeded, "\(rerun)")
        let s = try #require(rerun.summary, "\(rerun)")
        #expect(s.bytes == rangeBytes && s.skippedBytes >= journaled * RangeTests.chunk, "\(journaled) chunks were journaled: \(s)")
        // Only what is missing, and any chunk sent again (a retransmission) on top.
        let resent = (s.raw["retransmitted_chunks"] as? Int ?? 0) * RangeTests.chunk
        #expect(s.wireBytes + s.skippedBytes <= rangeBytes + resent, "the rerun sent \(s.wireBytes) of the range's \(rangeBytes) bytes, \(journaled) chunks journaled: \(s)")
        let part = RangeTests.partial(root, "big.bin") ?? "?"
        let start = first * RangeTests.chunk
        #expect(RangeTests.slice(part, start, rangeBytes) == RangeTests.slice(local + "/big.bin", start, rangeBytes), "the range's bytes differ")
        // The chunks of other ranges were never written: still holes (zeros).
        let zeros = [UInt8](repeating: 0, count: RangeTests.chunk)
        #expect(RangeTests.slice(part, 0, RangeTests.chunk) == zeros && RangeTests.slice(part, size - RangeTests.chunk, RangeTests.chunk) == zeros)
        #expect(RangeTests.size(journal) == 64 + 32 * count)
        #expect(!FileManager.default.fileExists(atPath: root + "/big.bin"))
    }

    @Test("a range that is not within the file, of no chunk, or with -r is a usage error, and nothing is written")
    func badRanges() throws {
        let sb = try Sandbox("range-bad")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        try writeRandomFile(local + "/big.bin", size: 3 * RangeTests.chunk)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        for (range, extra, says) in [("2:2", [String](), "not within the file's 3 chunks"), ("0:0", [], "FIRST:COUNT"), ("x", [], "FIRST:COUNT"),
                                     ("0:1", ["-r"], "not with -r")] {
            let r = try sb.cp(local + "/big.bin", server.url("big.bin"), options: ["--range", range] + extra)
            #expect(r.status == 64 && r.allMessages.contains(says), "\(range): \(r)")
        }
        #expect(ferryLeftovers(root).isEmpty && (listDirectory(root) ?? ["?"]).isEmpty, "\(walkTree(root))")
    }
}
