// Single files: sizes around the chunk size, a several-GiB sparse file, IPv6, "into a directory".

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Single files")
struct SingleFileTests {
    static let chunk = E2E.MiB

    /// Push a file of `size` bytes (with `--chunk-size 1M`), then pull it back.
    @Test(
        "push and pull, sizes around the chunk size",
        arguments: [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 17])
    func pushPull(size: Int) throws {
        let sb = try Sandbox("size\(size)")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let src = local + "/data.bin"
        try writeRandomFile(src, size: size)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let push = try sb.cp(src, server.url("data.bin"), options: ["--chunk-size", "1M"])
        #expect(push.succeeded, "\(push)")
        #expect(filesIdentical(src, root + "/data.bin"), "pushed file differs, size \(size)")
        let ps = try #require(push.summary, "no summary line: \(push)")
        #expect(ps.files == 1, "\(ps)")
        #expect(ps.bytes == size, "\(ps)")
        #expect(ps.retransmittedChunks == 0, "\(ps)")
        #expect(ferryLeftovers(root).isEmpty, "helper files left: \(ferryLeftovers(root))")

        let back = local + "/back.bin"
        let pull = try sb.cp(server.url("data.bin"), back, options: ["--chunk-size", "1M"])
        #expect(pull.succeeded, "\(pull)")
        #expect(filesIdentical(src, back), "pulled file differs, size \(size)")
        let pl = try #require(pull.summary, "no summary line: \(pull)")
        #expect(pl.files == 1, "\(pl)")
        #expect(pl.bytes == size, "\(pl)")
        #expect(ferryLeftovers(local).isEmpty, "helper files left: \(ferryLeftovers(local))")
        #expect(server.isRunning)
    }

    /// A 3 GiB file with 4 MiB + 3 MiB of data at two places and holes elsewhere: the result is
    /// identical and stays sparse at both ends.
    @Test("several-GiB sparse file stays sparse, push and pull")
    func sparse() throws {
        let sb = try Sandbox("sparse")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let src = local + "/sparse.bin"
        let size = 3 * E2E.GiB
        let fd = open(src, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        #expect(fd >= 0)
        #expect(ftruncate(fd, off_t(size)) == 0)
        try writeRandom(fd: fd, offset: E2E.GiB + 12345, count: 4 * E2E.MiB, path: src)
        try writeRandom(fd: fd, offset: size - 3 * E2E.MiB, count: 3 * E2E.MiB, path: src)
        close(fd)
        let srcAllocated = try #require(allocatedBytes(src))
        #expect(srcAllocated < 16 * E2E.MiB, "test setup: source not sparse (\(srcAllocated))")

        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let push = try sb.cp(src, server.url("sparse.bin"), timeout: 240)
        #expect(push.succeeded, "\(push)")
        let dst = root + "/sparse.bin"
        #expect(fileSize(dst) == size)
        #expect(filesIdentical(src, dst), "pushed sparse file differs")
        let dstAllocated = allocatedBytes(dst) ?? -1
        #expect(
            dstAllocated >= 0 && dstAllocated < 64 * E2E.MiB,
            "pushed file not sparse: \(dstAllocated) bytes allocated for \(size)")
        if let s = push.summary { #expect(s.bytes == size, "\(s)") }

        let back = local + "/back.bin"
        let pull = try sb.cp(server.url("sparse.bin"), back, timeout: 240)
        #expect(pull.succeeded, "\(pull)")
        #expect(fileSize(back) == size)
        #expect(filesIdentical(src, back), "pulled sparse file differs")
        let backAllocated = allocatedBytes(back) ?? -1
        #expect(
            backAllocated >= 0 && backAllocated < 64 * E2E.MiB,
            "pulled file not sparse: \(backAllocated) bytes allocated for \(size)")
    }

    /// Over a long path every round trip counts: eight streams that joined one after another
    /// waited for each JOINED in turn (1.4 s more here than one stream). The proxy holds every
    /// server-to-client byte back by `lag`, on the control connection and on each data stream.
    @Test("eight data streams over a path with 0.2 s of latency join at once: the copy takes no longer than with one stream, give or take a round trip")
    func streamsJoinAtOnce() throws {
        let sb = try Sandbox("join-at-once")
        let root = try sb.dir("root")
        // Eight chunks: a file gets no more streams than it has chunks.
        let src = try sb.dir("local") + "/eight.bin"
        try writeRandomFile(src, size: 8 * E2E.MiB)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let lag = 0.2
        let proxy = try LaggingProxy(targetPort: server.port, controlDelay: lag, dataStallBytes: Int.max, dataDelay: lag)
        defer { proxy.stop() }
        var run = 0
        func seconds(streams: Int) throws -> Double {
            run += 1
            let name = "s\(streams)-\(run).bin"  // a new file each time: nothing is skipped
            let t0 = monotonicSeconds()
            let r = try sb.cp(src, "ferry://127.0.0.1:\(proxy.port)/" + name, options: ["--streams", "\(streams)", "--chunk-size", "1M"], timeout: 60)
            let t = monotonicSeconds() - t0
            #expect(r.succeeded, "\(r)")
            #expect(filesIdentical(src, root + "/" + name))
            return t
        }
        // The best of two each: a loaded machine can stall one run, not the lag of seven joins.
        let one = min(try seconds(streams: 1), try seconds(streams: 1))
        let eight = min(try seconds(streams: 8), try seconds(streams: 8))
        // One by one, the seven more streams cost a lag each for their JOINED: 1.4 s more.
        #expect(eight - one < 3 * lag, "eight streams took \(eight) s, one stream \(one) s: the streams joined one after another")
    }

    /// A server listening on ::1 and 127.0.0.1 at once; a push over IPv6 and a pull over IPv4.
    @Test("IPv6 and IPv4 listeners, ferry://[::1]:PORT/...")
    func ipv6() throws {
        let sb = try Sandbox("ipv6")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let src = local + "/v6.bin"
        try writeRandomFile(src, size: 5 * E2E.MiB + 3)
        let server = try FerryServer(sb, root: root, listen: ["[::1]:0", "127.0.0.1:0"])
        let v6 = try #require(server.addresses.first { $0.hasPrefix("[::1]:") }, "\(server.addresses)")
        let v4 = try #require(
            server.addresses.first { $0.hasPrefix("127.0.0.1:") }, "\(server.addresses)")

        let push = try sb.cp(src, server.url("v6.bin", address: v6))
        #expect(push.succeeded, "\(push)")
        #expect(filesIdentical(src, root + "/v6.bin"))

        let back = local + "/back.bin"
        let pull = try sb.cp(server.url("v6.bin", address: v4), back)
        #expect(pull.succeeded, "\(pull)")
        #expect(filesIdentical(src, back))

        let back6 = local + "/back6.bin"
        let pull6 = try sb.cp(server.url("v6.bin", address: v6), back6)
        #expect(pull6.succeeded, "\(pull6)")
        #expect(filesIdentical(src, back6))

        #expect(server.stop(), "ferry serve did not exit within 5 s of SIGTERM")
    }

    /// `--json` progress at least twice a second with sane numbers, the summary last; without
    /// `--json` (stderr not a terminal) a one-line summary and no progress bar.
    @Test("--json progress events at least twice a second; plain mode prints one summary line")
    func progressEvents() throws {
        let sb = try Sandbox("progress")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let src = local + "/p.bin"
        let size = 48 * E2E.MiB
        try writeRandomFile(src, size: size)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let t0 = monotonicSeconds()
        let r = try sb.cp(src, server.url("p.bin"), options: ["--bwlimit", "16M"])
        let seconds = monotonicSeconds() - t0
        #expect(r.succeeded, "\(r)")
        #expect(seconds >= 2, "--bwlimit 16M moved 48 MiB in \(seconds) s")
        // A file of one chunk is limited too (its one frame went at full speed: the turn of a
        // frame was only ever waited for by the next one).
        try writeRandomFile(local + "/one.bin", size: 2 * E2E.MiB)
        let t1 = monotonicSeconds()
        let one = try sb.cp(local + "/one.bin", server.url("one.bin"), options: ["--bwlimit", "1M", "--compress", "off"])
        let oneSeconds = monotonicSeconds() - t1
        #expect(one.succeeded && filesIdentical(local + "/one.bin", root + "/one.bin"), "\(one)")
        #expect(oneSeconds >= 1.8, "--bwlimit 1M moved a 2 MiB file in \(oneSeconds) s")
        let types = r.jsonLines.map { $0["type"] as? String ?? "?" }
        #expect(types.last == "summary", "last line must be the summary: \(types.suffix(3))")
        let progress = r.jsonLines.filter { ($0["type"] as? String) == "progress" }.map(Progress.init)
        #expect(
            Double(progress.count) >= 2 * (seconds - 1).rounded(.down),
            "\(progress.count) progress events in \(String(format: "%.1f", seconds)) s")
        var last = 0
        for p in progress {
            #expect(p.bytesTotal == size && p.filesTotal == 1, "bad progress totals: \(p)")
            #expect(p.bytesDone >= last && p.bytesDone <= size, "bytes_done went \(last) -> \(p.bytesDone)")
            last = p.bytesDone
        }
        for line in r.jsonLines where (line["type"] as? String) == "progress" {
            #expect(line["rate_bytes_per_second"] is NSNumber, "progress without rate: \(line)")
        }
        #expect(filesIdentical(src, root + "/p.bin"))

        try writeRandomFile(src, size: 2 * E2E.MiB)
        let plain = try sb.cp(src, server.url("p.bin"), json: false)
        #expect(plain.succeeded, "\(plain)")
        let lines = (plain.stdout + plain.stderr).split(separator: "\n").filter {
            !$0.trimmingCharacters(in: .whitespaces).isEmpty
        }
        #expect(lines.count == 1, "expected a one-line summary, got: \(lines)")
        #expect(filesIdentical(src, root + "/p.bin"))
    }

    /// A DST ending in "/" means "into this directory, same base name".
    @Test("destination ending in / copies into the directory")
    func intoDirectory() throws {
        let sb = try Sandbox("intodir")
        let root = try sb.dir("root")
        try sb.dir("root/incoming")
        let local = try sb.dir("local")
        let src = local + "/report.csv"
        try writeFile(src, Array(String(repeating: "a,b,c\n1,2,3\n", count: 1000).utf8))
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }

        let push = try sb.cp(src, server.url("incoming/"))
        #expect(push.succeeded, "\(push)")
        #expect(filesIdentical(src, root + "/incoming/report.csv"))

        let into = try sb.dir("local/into")
        let pull = try sb.cp(server.url("incoming/report.csv"), into + "/")
        #expect(pull.succeeded, "\(pull)")
        #expect(filesIdentical(src, into + "/report.csv"))
    }
}
