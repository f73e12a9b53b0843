import Glibc
import Testing
@testable import Transfer

/// A sender's source descriptor is never closed under a data stream that still reads it.
/// Real sockets (socketpairs) and a real pipe; the test plays the receiver on the wire.
@Suite("Sender descriptors")
struct SenderDescriptorTests {
    final class Flag: @unchecked Sendable {
        private let lock = Lock()
        private var value: Error?? = nil
        func set(_ e: Error?) { lock.withLock { value = .some(e) } }
        var result: Error?? { lock.withLock { value } }
    }

    final class Counter: @unchecked Sendable {
        private let lock = Lock()
        private var n = 0
        func add(_ k: Int) { lock.withLock { n += k } }
        var value: Int { lock.withLock { n } }
    }

    static func socketPair() throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else { throw TransferError.system("socketpair", errno: errno) }
        return (fds[0], fds[1])
    }

    /// The next frame that is not a PING, within 10 s.
    static func next(_ c: Connection, _ ring: Ring) throws -> (FrameType, [UInt8]) {
        for _ in 0..<100 {
            let (t, p) = try c.receive(ring: ring, timeoutNs: 10_000_000_000)
            if t != .ping { return (t, p) }
        }
        throw TransferError(.protocolViolation, "only pings")
    }

    static func waitUntil(seconds: Double, _ done: () -> Bool) -> Bool {
        for _ in 0..<Int(seconds * 100) {
            if done() { return true }
            usleep(10_000)
        }
        return done()
    }

    /// The receiver fails a stream (no space) while its one data stream waits in a read of the
    /// next chunk. The verdict used to close the stream's descriptor there and then: the
    /// stream's next read, once the writer wrote more, failed the session with EBADF (or read
    /// whatever file or socket had taken the number meanwhile). Now the descriptor stays open
    /// until the stream is done with it, and the stream stops reading a file that has failed.
    @Test("a verdict that arrives while a data stream reads the file does not close the descriptor under it")
    func verdictDuringRead() throws {
        let chunk = Wire.chunkBytesMin
        let (controlSide, peerControlFd) = try Self.socketPair()
        let (dataSide, peerDataFd) = try Self.socketPair()
        var pipeFds: [Int32] = [-1, -1]
        guard pipe(&pipeFds) == 0 else { throw TransferError.system("pipe", errno: errno) }
        let pipeWrite = pipeFds[1]
        defer { if pipeFds[1] >= 0 { close(pipeFds[1]) } }

        var options = TransferOptions()
        options.chunkBytes = chunk
        options.streams = 1
        let control = Connection(fd: controlSide)
        let data = Connection(fd: dataSide)
        let peer = Connection(fd: peerControlFd)
        let ctx = SessionContext(control: control, options: options, progress: TransferProgress(), idleTimeoutSeconds: 30, protection: .clear, direction: .push)
        ctx.add(data: data)
        let sender = try Sender(ctx: ctx, rootFd: pipeFds[0], name: "pipe", stream: true)

        // The receiver's data side: read and drop what the stream sends.
        let received = Counter()
        spawnThread(name: "test-data-drain") {
            var buf = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = buf.withUnsafeMutableBytes { read(peerDataFd, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                received.add(n)
            }
            close(peerDataFd)
        }
        let controlDone = Flag()
        let workerDone = Flag()
        spawnThread(name: "test-sender-control") {
            do { try sender.runControl(); controlDone.set(nil) } catch { controlDone.set(error) }
        }
        spawnThread(name: "test-sender-worker") {
            sender.runWorker(data)
            workerDone.set(nil)
        }

        let ring = try Ring(entries: 8)
        // Manifest in, plan out: the one file (id 1), in full.
        var (t, _) = try Self.next(peer, ring)
        #expect(t == .manifest)
        (t, _) = try Self.next(peer, ring)
        #expect(t == .manifestEnd)
        var plan = ByteWriter()
        plan.u32(1)
        PlanEntry(id: 1, action: .full).encode(&plan)
        try peer.send(.plan, plan.bytes, ring: ring)

        // One chunk and a little: the stream sends chunk 0, then waits in a read of chunk 1.
        let first = [UInt8](repeating: 7, count: chunk + 100)
        #expect(first.withUnsafeBytes { write(pipeWrite, $0.baseAddress, $0.count) } == first.count)
        #expect(Self.waitUntil(seconds: 10) { received.value >= chunk }, "chunk 0 did not arrive")
        usleep(100_000)

        // The verdict: the file failed on this side. The sender has every verdict: END.
        var verdict = ByteWriter()
        verdict.u32(1)
        verdict.u64(1)
        verdict.u8(CodedFlags.pack(true, .noSpace))
        verdict.string("cannot write 'x': no space")
        try peer.send(.fileDone, verdict.bytes, ring: ring)
        (t, _) = try Self.next(peer, ring)
        #expect(t == .end)

        // More bytes: the waiting read returns and the stream goes on with the file.
        let more = [UInt8](repeating: 8, count: 100)
        #expect(more.withUnsafeBytes { write(pipeWrite, $0.baseAddress, $0.count) } == more.count)
        usleep(300_000)
        #expect(ctx.error == nil, "the session failed under the stream: \(ctx.error.map { $0.message } ?? "")")

        try peer.send(.endAck, ring: ring)
        #expect(Self.waitUntil(seconds: 10) { controlDone.result != nil && workerDone.result != nil }, "the sender did not end")
        if case .some(.some(let e)) = controlDone.result { Issue.record("runControl: \(e)") }
        let snap = ctx.progress.snapshot()
        #expect(snap.filesFailed == 1 && snap.failureCode == .noSpace, "\(snap.failures)")
        peer.close()
        data.close()
    }
}
