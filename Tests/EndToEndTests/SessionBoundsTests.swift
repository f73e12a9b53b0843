// One session's hold on a root server is bounded however many files it announces and however
// large it says they are, sending no data: partial copies open at once (descriptors) and their
// chunks' state (memory) stop at `Receiver.openFilesMax` and `Receiver.openChunksMax`, past
// which the session ends with the reason; an honest sender waits below them
// (`Sender.multiChunkFilesInFlightMax`, `Sender.chunksInFlightMax`).

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The number of open descriptors of process `pid`.
private func openDescriptors(_ pid: pid_t) -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"))?.count ?? -1
}

/// Samples `body`'s worst case of `measure` every 20 ms while `body` runs (bounded by it).
private func peak(of measure: @escaping @Sendable () -> Int, during body: () throws -> String) rethrows -> (answer: String, peak: Int) {
    final class Box: @unchecked Sendable { var peak = 0; var done = false; let lock = NSLock() }
    let box = Box()
    let sampler = Thread {
        for _ in 0..<20_000 {
            let v = measure()
            box.lock.lock()
            box.peak = max(box.peak, v)
            let stop = box.done
            box.lock.unlock()
            if stop { return }
            usleep(20_000)
        }
    }
    sampler.start()
    let answer = try body()
    box.lock.lock(); box.done = true; let p = box.peak; box.lock.unlock()
    return (answer, p)
}

@Suite("A session's hold on the server", .serialized)
struct SessionBoundsTests {
    @Test("2,000 files of two chunks announced with no data: the server's descriptors stay bounded and the session ends with the reason")
    func descriptors() throws {
        let sb = try Sandbox("bounds-fds")
        let root = try sb.dir("root")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let pid = server.process.ferryPid
        // A first session: what the server keeps from then on (its rings' pool) is counted in.
        try writeRandomFile(sb.file("warm.bin"), size: 9 * E2E.MiB)
        let warm = try sb.cp(sb.file("warm.bin"), server.url("warm.bin"))
        #expect(warm.succeeded, "\(warm)")
        let before = openDescriptors(pid)
        let entries: [ManifestClient.Entry] = [.directory(path: "")] + (0..<2_000).map { .file(path: "f\($0)", size: 128 << 10) }
        let (answer, most) = try peak(of: { openDescriptors(pid) }) {
            try ManifestClient.pushManifest(sb, server: server, to: "t", entries: entries, chunkBytes: 64 << 10)
        }
        let said = waitUntil(timeout: 30, interval: 0.1) { server.process.stderr.contains("files of several chunks") }
        #expect(said, "answer: \(answer.prefix(300)); server: \(server.process.stderr.suffix(600))")
        // About three descriptors a partial (partial, journal, and on some filesystems a direct
        // one): 512 files at most, against 4,000 descriptors before the bound.
        #expect(most - before < 3 * Receiver_openFilesMax + 64, "the server went from \(before) to \(most) descriptors")
        #expect(waitUntil(timeout: 30) { openDescriptors(pid) <= before + 8 }, "descriptors left open: \(openDescriptors(pid)) against \(before)")
        #expect(server.isRunning)
    }

    @Test("400 files declared at 8 GiB in 64 KiB chunks: the server's memory stays bounded and the session ends with the reason")
    func chunkState() throws {
        let sb = try Sandbox("bounds-mem")
        let root = try sb.dir("root")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let pid = server.process.ferryPid
        let before = residentKiB(pid)
        let entries: [ManifestClient.Entry] = [.directory(path: "")] + (0..<400).map { .file(path: "f\($0)", size: 8 << 30) }
        let (answer, most) = try peak(of: { residentKiB(pid) }) {
            try ManifestClient.pushManifest(sb, server: server, to: "t", entries: entries, chunkBytes: 64 << 10)
        }
        let said = waitUntil(timeout: 30, interval: 0.1) { server.process.stderr.contains("files of several chunks") }
        #expect(said, "answer: \(answer.prefix(300)); server: \(server.process.stderr.suffix(600))")
        // 131,072 chunks a file, 17 bytes each: 2.2 MiB a file, 870 MiB for all 400 before the
        // bound; 8 M chunks (136 MiB) with it.
        #expect(most - before < 300 * 1024, "the server's resident memory grew by \((most - before) / 1024) MiB")
        #expect(server.isRunning)
    }
}

extension SessionBoundsTests {
    @Test("an honest push of 1,200 files of several chunks stays below the bound and lands whole")
    func honestManyMultiChunk() throws {
        let sb = try Sandbox("bounds-honest")
        let root = try sb.dir("root")
        let tree = try sb.dir("local/t")
        for d in 0..<4 {
            let dir = try sb.dir("local/t/d\(d)")
            for i in 0..<300 { try writeRandomFile(dir + "/f\(i)", size: 130_000 + i) }
        }
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let r = try sb.cp(tree, server.url("t"), options: ["-r", "--chunk-size", "64K"], timeout: 300)
        #expect(r.succeeded, "\(r)")
        #expect(r.summary?.files == 1_200, "\(r)")
        #expect(treeDifferences(tree, root + "/t").isEmpty, "\(treeDifferences(tree, root + "/t").prefix(5))")
        #expect(ferryLeftovers(root).isEmpty)
    }
}

/// `Receiver.openFilesMax` as the tests see it (the Transfer module is not imported here).
private let Receiver_openFilesMax = 512
