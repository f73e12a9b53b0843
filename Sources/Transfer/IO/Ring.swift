import CLiburing
import Glibc

/// One io_uring instance, owned by one thread (never shared: not Sendable).
///
/// This file and `BufferPool` are the only places that know liburing. Operations carry a
/// caller-chosen 64-bit tag in `user_data`; completions are reaped into arrays allocated once,
/// so the steady state allocates nothing.
final class Ring {
    private var ring = io_uring()
    private let reapCapacity = 256
    private let tags: UnsafeMutablePointer<UInt64>
    private let results: UnsafeMutablePointer<Int32>
    private let flags: UnsafeMutablePointer<UInt32>
    /// Submitted but not yet completed operations (for the synchronous helpers' bookkeeping).
    private(set) var inFlight = 0
    private var registeredBuffers = false
    /// The kernel reads a linked timeout's timespec at submission: it must outlive the call.
    private let timeoutSpec = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)

    /// Tag reserved for timeouts armed by `runOne(timeoutNs:)`.
    static let timeoutTag: UInt64 = .max - 1

    init(entries: UInt32 = 256) throws {
        var params = io_uring_params()
        params.flags = UInt32(IORING_SETUP_SUBMIT_ALL) | UInt32(IORING_SETUP_COOP_TASKRUN)
        var r = io_uring_queue_init_params(entries, &ring, &params)
        if r == -EINVAL {  // older kernels: plain setup
            params = io_uring_params()
            r = io_uring_queue_init_params(entries, &ring, &params)
        }
        if r < 0 { throw TransferError.system("io_uring_queue_init", errno: -r) }
        tags = .allocate(capacity: reapCapacity)
        results = .allocate(capacity: reapCapacity)
        flags = .allocate(capacity: reapCapacity)
    }

    deinit {
        io_uring_queue_exit(&ring)
        tags.deallocate()
        results.deallocate()
        flags.deallocate()
        timeoutSpec.deallocate()
    }

    /// Registers `count` buffers for READ_FIXED/WRITE_FIXED (index = position).
    func register(buffers: UnsafeMutablePointer<iovec>, count: Int) throws {
        let r = io_uring_register_buffers(&ring, buffers, UInt32(count))
        if r < 0 { throw TransferError.system("io_uring_register_buffers", errno: -r) }
        registeredBuffers = true
    }

    /// A free submission entry; submits what is queued when the queue is full.
    func sqe() throws -> UnsafeMutablePointer<io_uring_sqe> {
        for _ in 0..<64 {
            if let s = ferry_uring_get_sqe(&ring) { return s }
            let r = io_uring_submit(&ring)
            if r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY {
                throw TransferError.system("io_uring_submit", errno: -r)
            }
        }
        throw TransferError(.io, "io_uring submission queue stays full")
    }

    // MARK: preparing operations (each sets the tag and counts one in-flight op)

    func read(fd: Int32, buffer: UnsafeMutableRawPointer, length: Int, offset: UInt64, bufferIndex: Int?, tag: UInt64) throws {
        let s = try sqe()
        if let bufferIndex, registeredBuffers {
            io_uring_prep_read_fixed(s, fd, buffer, UInt32(length), offset, Int32(bufferIndex))
        } else {
            io_uring_prep_read(s, fd, buffer, UInt32(length), offset)
        }
        finish(s, tag)
    }

    func write(fd: Int32, buffer: UnsafeRawPointer, length: Int, offset: UInt64, bufferIndex: Int?, tag: UInt64) throws {
        let s = try sqe()
        if let bufferIndex, registeredBuffers {
            io_uring_prep_write_fixed(s, fd, buffer, UInt32(length), offset, Int32(bufferIndex))
        } else {
            io_uring_prep_write(s, fd, buffer, UInt32(length), offset)
        }
        finish(s, tag)
    }

    func send(fd: Int32, buffer: UnsafeRawPointer, length: Int, tag: UInt64, more: Bool = false) throws {
        let s = try sqe()
        io_uring_prep_send(s, fd, buffer, length, more ? Int32(MSG_MORE) | Int32(MSG_NOSIGNAL) : Int32(MSG_NOSIGNAL))
        finish(s, tag)
    }

    func recv(fd: Int32, buffer: UnsafeMutableRawPointer, length: Int, tag: UInt64) throws {
        let s = try sqe()
        io_uring_prep_recv(s, fd, buffer, length, 0)
        finish(s, tag)
    }

    /// openat2 through the ring; `how` and `path` must stay valid until the completion.
    func openat2(dir: Int32, path: UnsafePointer<CChar>, how: UnsafeMutablePointer<open_how>, tag: UInt64) throws {
        let s = try sqe()
        io_uring_prep_openat2(s, dir, path, how)
        finish(s, tag)
    }

    func close(fd: Int32, tag: UInt64) throws {
        let s = try sqe()
        io_uring_prep_close(s, fd)
        finish(s, tag)
    }

    @inline(__always)
    private func finish(_ s: UnsafeMutablePointer<io_uring_sqe>, _ tag: UInt64) {
        io_uring_sqe_set_data64(s, tag)
        inFlight += 1
    }

    // MARK: completing

    /// Submits everything queued and waits for at least `minimum` completions, then calls
    /// `handle(tag, result, flags)` for each completion reaped (outside the reaping pass).
    /// Returns false when the timeout expired with nothing reaped.
    @discardableResult
    func submitAndWait(minimum: Int = 1, timeoutNs: Int64 = 0, _ handle: (UInt64, Int32, UInt32) throws -> Void) throws -> Bool {
        let want = UInt32(max(0, min(minimum, inFlight)))
        var r: Int32 = 0
        for _ in 0..<1000 {
            r = ferry_uring_submit_and_wait(&ring, want, timeoutNs)
            if r == -EINTR { continue }
            break
        }
        if r < 0 && r != -ETIME && r != -EAGAIN && r != -EBUSY {
            throw TransferError.system("io_uring_submit_and_wait", errno: -r)
        }
        var any = false
        while true {
            let n = Int(ferry_uring_reap(&ring, tags, results, flags, UInt32(reapCapacity)))
            if n == 0 { break }
            any = true
            for i in 0..<n {
                // A zero-copy send completes twice: the result (F_MORE set) and a notification
                // (F_NOTIF). Only the final completion retires the operation.
                if flags[i] & ferry_cqe_f_more() == 0 { inFlight -= 1 }
                try handle(tags[i], results[i], flags[i])
            }
            if n < reapCapacity { break }
        }
        return any
    }

    /// Runs one operation synchronously (everything else in flight must be finished first).
    /// With `timeoutNs`, the operation is cancelled when it takes longer (result -ECANCELED,
    /// reported as ETIMEDOUT).
    func runOne(timeoutNs: Int64 = 0, _ prepare: () throws -> Void) throws -> Int32 {
        precondition(inFlight == 0, "runOne with operations in flight")
        try prepare()
        if timeoutNs > 0 {
            // Link a timeout to the operation just prepared.
            let lastIndex = (ring.sq.sqe_tail &- 1) & ring.sq.ring_mask
            let last = ring.sq.sqes.advanced(by: Int(lastIndex))
            last.pointee.flags |= UInt8(FERRY_IOSQE_IO_LINK)
            timeoutSpec.pointee = __kernel_timespec(tv_sec: timeoutNs / 1_000_000_000, tv_nsec: timeoutNs % 1_000_000_000)
            let t = try sqe()
            io_uring_prep_link_timeout(t, timeoutSpec, 0)
            io_uring_sqe_set_data64(t, Ring.timeoutTag)
            inFlight += 1
            var result: Int32 = 0
            while inFlight > 0 {
                do {
                    try submitAndWait(minimum: inFlight) { tag, res, _ in
                        if tag != Ring.timeoutTag { result = res }
                    }
                } catch let e as TransferError { throw e } catch { throw TransferError(.io, "\(error)") }
            }
            return result == -ECANCELED ? -ETIMEDOUT : result
        }
        var result: Int32 = 0
        do {
            while inFlight > 0 {
                try submitAndWait(minimum: 1) { _, res, _ in result = res }
            }
        } catch let e as TransferError { throw e } catch { throw TransferError(.io, "\(error)") }
        return result
    }

    /// Waits for every operation in flight, passing each completion to `handle`.
    func drain(_ handle: (UInt64, Int32) -> Void) throws {
        var rounds = 0
        while inFlight > 0 {
            rounds += 1
            if rounds > 1_000_000 { throw TransferError(.io, "io_uring completions never arrived") }
            try submitAndWait(minimum: inFlight) { tag, res, _ in handle(tag, res) }
        }
    }
}
