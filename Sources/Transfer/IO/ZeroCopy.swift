import CLiburing
import Glibc

/// Zero-copy sends (issue 18): a raw chunk goes to the socket with io_uring `SEND_ZC` from the
/// buffer it was read into, so the kernel sends from those pages instead of copying them into
/// socket buffers (on the sender, the socket copy is the largest stage: docs/PERFORMANCE.md).
///
/// Off by default (`ferry cp --zero-copy`, `ferry serve --zero-copy`, `FERRY_ZERO_COPY=on`):
/// - **On loopback it cannot win.** A zero-copy buffer delivered to a local socket is copied
///   anyway (the kernel will not let a receiver hold the sender's pages), and the sender pays
///   the notifications on top; measured in bench/RESULTS.md ("Zero-copy sends").
/// - **On a NIC it removes the sender's socket copy** (0.22 s/GiB here; Linux's MSG_ZEROCOPY
///   measured up to 70 % fewer cycles in the sending process), at the price of memory: a
///   buffer is the kernel's until the peer has acknowledged its bytes, so each stream keeps
///   `slots` chunk buffers of its own (three: 12 MiB per stream at 4 MiB chunks), and on a long
///   link the streams' throughput is bounded by slots × chunk per round trip (raise the streams).
///
/// How (`SenderWorker`): the slots are registered with a second ring of the stream, used for
/// these sends only (the stream's own ring runs its synchronous operations, which must find
/// nothing in flight). A chunk is read into the next slot, waiting first for that slot's
/// earlier sends to be released (their notifications); compressed chunks and everything else
/// (batches, checks, streams) are sent by copy as before. A socket that refuses `SEND_ZC`
/// turns it off for the stream and the chunk goes by copy.
public enum ZeroCopy {
    public static var enabled: Bool {
        get { lock.withLock { on } }
        set { lock.withLock { on = newValue } }
    }
    private static let lock = Lock()
    private static var on = getenv("FERRY_ZERO_COPY").map { String(cString: $0) == "on" } ?? false

    /// Chunk buffers per stream for zero-copy sends.
    static let slots = 3
    /// How long a stream waits for a slot's buffer to be released before it fails.
    static let releaseWaitNs: Int64 = 120_000_000_000
    /// How long a finishing stream waits for the kernel to release its buffers.
    static let drainNs: Int64 = 2_000_000_000
}

extension Connection {
    /// `sendFramed` by zero-copy (`ZeroCopySender.send`), under the same lock; false when the
    /// socket refused it and nothing was sent.
    func sendFramedZeroCopy(_ ptr: UnsafeRawPointer, _ length: Int, _ zc: ZeroCopySender, slot: Int) throws -> Bool {
        try sendLock.withLock { () throws -> Bool in try zc.send(fd: fd, ptr, length, slot: slot, peer: peer) }
    }
}

/// One stream's zero-copy sending state: its ring, its slot buffers and how many notifications
/// each slot still waits for. Not thread-safe: one per `SenderWorker`.
final class ZeroCopySender {
    private let ring: Ring
    let pool: BufferPool
    /// Notifications outstanding per slot: the slot's buffer is the kernel's until they are 0.
    private var pending: [Int]
    private var next = 0
    /// False once the socket refused SEND_ZC: the caller sends by copy.
    private(set) var usable = true

    private static let tagBase: UInt64 = 0x5A_0000

    init(bytesPerBuffer: Int) throws {
        ring = try Ring(entries: 64)
        pool = try BufferPool(count: ZeroCopy.slots, bytesPerBuffer: bytesPerBuffer)
        try pool.register(with: ring)
        pending = [Int](repeating: 0, count: ZeroCopy.slots)
    }

    deinit { drain(timeoutNs: ZeroCopy.drainNs) }

    /// The next slot, once the kernel has released it: at most `releaseWaitNs` (a peer that no
    /// longer acknowledges keeps the pages; the session's idle timeout ends it anyway).
    func acquire() throws -> Int {
        let slot = next
        next = (next + 1) % pending.count
        let deadline = monotonicNs() + UInt64(ZeroCopy.releaseWaitNs)
        while pending[slot] > 0 {
            if monotonicNs() >= deadline {
                throw TransferError(.io, "zero-copy buffers were not released by the kernel within \(ZeroCopy.releaseWaitNs / 1_000_000_000) s", resumable: true)
            }
            try reap(waitNs: 1_000_000_000)
        }
        return slot
    }

    /// Sends `length` bytes at `ptr` (inside slot `slot`'s buffer) on `fd` with SEND_ZC.
    /// Returns false, having sent nothing, when the socket refuses zero-copy sends.
    func send(fd: Int32, _ ptr: UnsafeRawPointer, _ length: Int, slot: Int, peer: String) throws -> Bool {
        var done = 0
        var spins = 0
        let tag = Self.tagBase + UInt64(slot)
        while done < length {
            let s = try ring.sqe()
            io_uring_prep_send_zc_fixed(s, fd, ptr + done, length - done, Int32(MSG_NOSIGNAL), 0, UInt32(slot))
            io_uring_sqe_set_data64(s, tag)
            ring.countSubmitted()
            var result: Int32?
            while result == nil {
                try ring.submitAndWait(minimum: 1) { t, res, flags in
                    if flags & ferry_cqe_f_notif() != 0 {
                        pending[Int(t - Self.tagBase)] -= 1
                    } else if t == tag && result == nil {
                        result = res
                        if flags & ferry_cqe_f_more() != 0 { pending[slot] += 1 }
                    }
                }
            }
            let r = result!
            if done == 0 && (r == -EOPNOTSUPP || r == -EINVAL) {
                usable = false
                return false
            }
            if r < 0 { throw TransferError.system("send to \(peer)", errno: -r, resumable: true) }
            if r == 0 { spins += 1; if spins > 1000 { throw TransferError(.io, "send to \(peer) makes no progress", resumable: true) } }
            done += Int(r)
        }
        return true
    }

    /// Reaps notifications, waiting at most `waitNs` for the first.
    private func reap(waitNs: Int64) throws {
        try ring.submitAndWait(minimum: 1, timeoutNs: waitNs) { t, _, flags in
            if flags & ferry_cqe_f_notif() != 0 { pending[Int(t - Self.tagBase)] -= 1 }
        }
    }

    /// Waits (bounded) until the kernel has released every slot.
    private func drain(timeoutNs: Int64) {
        let deadline = monotonicNs() + UInt64(timeoutNs)
        while pending.contains(where: { $0 > 0 }) && monotonicNs() < deadline {
            if (try? reap(waitNs: 100_000_000)) == nil { break }
        }
    }
}
