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
            #expect(filesIdentical(dir + "/." + name + ".ferry-part", source), "the partial of \(name) is not the source's bytes")
            let helpers = Set(ferryLeftovers(dir).map { ($0 as NSString).lastPathComponent })
            let expected = Set(["." + name + ".ferry-part"] + ranges.map { ".\(name).r\($0.0)+\($0.1).ferry-journal" })
            #expect(helpers == expected, "\(dir): \(helpers.sorted())")
            for r in ranges {
                // Every chunk of the range is recorded: the header and one record per chunk.
                #expect(RangeTests.size(dir + "/.\(name).r\(r.0)+\(r.1).ferry-journal") == 64 + 32 * r.1)
            }
        }
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
        #expect(RangeTests.size(journal) > 64, "no chunk journaled before the kill")
        let rerun = try sb.cp(local + "/big.bin", server.url("big.bin"), options: ["--range", "\(first):\(count)"])
        #expect(rerun.succeeded, "\(rerun)")
        let s = try #require(rerun.summary, "\(rerun)")
        #expect(s.bytes == rangeBytes && s.skippedBytes > 0, "\(s)")
        #expect(Double(s.wireBytes) <= 0.6 * Double(rangeBytes), "the rerun sent \(s.wireBytes) of the range's \(rangeBytes) bytes: \(s)")
        let part = root + "/.big.bin.ferry-part"
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
