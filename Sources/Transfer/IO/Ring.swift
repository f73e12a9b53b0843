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
    /// Buffers handed to `registerLater` and not yet registered (see there).
    private var pendingBuffers: (iovecs: UnsafeMutablePointer<iovec>, count: Int)?
    /// The kernel reads a linked timeout's timespec at submission: it must outlive the call.
    private let timeoutSpec = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)

    /// Tag reserved for timeouts armed by `runOne(timeoutNs:)`.
    static let timeoutTag: UInt64 = .max - 1

    /// The size this ring was made with (rounded as `RingPool` keys it), and the thread
    /// identity (fsuid) it was made under.
    private let poolEntries: UInt32
    private let poolOwner: UInt32

    init(entries: UInt32 = 256) throws {
        let size = RingPool.size(entries)
        let owner = ThreadIdentity.fsuid
        if let kept = RingPool.shared.take(entries: size, owner: owner) {
            ring = kept
        } else {
            var params = io_uring_params()
            params.flags = UInt32(IORING_SETUP_SUBMIT_ALL) | UInt32(IORING_SETUP_COOP_TASKRUN)
            var r = io_uring_queue_init_params(size, &ring, &params)
            if r == -EINVAL {  // older kernels: plain setup
                params = io_uring_params()
                r = io_uring_queue_init_params(size, &ring, &params)
            }
            // Thrown before the other properties exist: no deinit runs for this instance.
            if r < 0 { throw TransferError.system("io_uring_queue_init", errno: -r) }
        }
        poolEntries = size
        poolOwner = owner
        tags = .allocate(capacity: reapCapacity)
        results = .allocate(capacity: reapCapacity)
        flags = .allocate(capacity: reapCapacity)
    }

    deinit {
        // A ring with nothing in flight (every submission completed and reaped) and no
        // registered buffers goes back to the pool for the next session's thread; anything
        // else is closed.
        var reusable = inFlight == 0
        if reusable && registeredBuffers { reusable = io_uring_unregister_buffers(&ring) == 0 }
        if !reusable || !RingPool.shared.put(ring, entries: poolEntries, owner: poolOwner) {
            io_uring_queue_exit(&ring)
        }
        tags.deallocate()
        results.deallocate()
        flags.deallocate()
        timeoutSpec.deallocate()
    }

    /// The ring's descriptor (tests: which kernel ring this is).
    var descriptor: Int32 { ring.ring_fd }

    /// Registers `count` buffers for fixed operations (index = position) now.
    func register(buffers: UnsafeMutablePointer<iovec>, count: Int) throws {
        let r = io_uring_register_buffers(&ring, buffers, UInt32(count))
        if r < 0 { throw TransferError.system("io_uring_register_buffers", errno: -r) }
        registeredBuffers = true
    }

    /// Buffers for READ_FIXED/WRITE_FIXED (index = position), registered at the first `read`
    /// or `write` that names one. Registering pins every page of every buffer, faulting in and
    /// zeroing them: two buffers of a chunk per data stream, paid when the stream starts. A
    /// sender's batches of small files use plain reads and name no buffer, so a session of
    /// small files only never pays it (an empty tree's push took 43 ms with the sender's
    /// buffers registered at once, 32 without: bench/RESULTS.md, "Issue 18, the night of
    /// 2026-12-06"). A receiver registers at once (`ReceiverWorker`). If registering fails
    /// (a memory-lock limit), every operation stays plain: slower, the same bytes.
    /// `iovecs` must stay valid for the ring's life.
    func registerLater(buffers: UnsafeMutablePointer<iovec>, count: Int) {
        pendingBuffers = (buffers, count)
    }

    /// Whether buffers are registered with the ring now (tests).
    var buffersRegistered: Bool { registeredBuffers }

    /// `index` if the buffers are (or can now be) registered, else nil: the operation is then
    /// prepared as a plain one. Registration waits until nothing is in flight (older kernels
    /// quiesce the ring to register buffers); a plain read or write moves the same bytes.
    private func fixed(_ index: Int?) -> Int? {
        guard let index else { return nil }
        if registeredBuffers { return index }
        guard let pending = pendingBuffers, inFlight == 0 else { return nil }
        pendingBuffers = nil
        guard io_uring_register_buffers(&ring, pending.iovecs, UInt32(pending.count)) == 0 else { return nil }
        registeredBuffers = true
        return index
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
        let index = fixed(bufferIndex)
        let s = try sqe()
        if let bufferIndex = index {
            io_uring_prep_read_fixed(s, fd, buffer, UInt32(length), offset, Int32(bufferIndex))
        } else {
            io_uring_prep_read(s, fd, buffer, UInt32(length), offset)
        }
        finish(s, tag)
    }

    func write(fd: Int32, buffer: UnsafeRawPointer, length: Int, offset: UInt64, bufferIndex: Int?, tag: UInt64) throws {
        let index = fixed(bufferIndex)
        let s = try sqe()
        if let bufferIndex = index {
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

    /// Counts an operation prepared by hand (`io_uring_prep_*` on an `sqe()`, tag set).
    func countSubmitted() { inFlight += 1 }

    @inline(__always)
    private func finish(_ s: UnsafeMutablePointer<io_uring_sqe>, _ tag: UInt64) {
        io_uring_sqe_set_data64(s, tag)
        inFlight += 1
    }

    // MARK: completing

    /// A view of this ring's completion queue that another thread may read: whether a
    /// completion waits to be reaped. Valid while the ring lives.
    func completionProbe() -> CompletionProbe { CompletionProbe(head: ring.cq.khead, tail: ring.cq.ktail) }

    /// Submits what is queued without waiting and without reaping: the completions stay for
    /// `drain` (a read left in flight while the caller does other work).
    func submit() throws {
        var r: Int32 = 0
        for _ in 0..<1000 {
            r = io_uring_submit(&ring)
            if r != -EINTR { break }
        }
        if r < 0 { throw TransferError.system("io_uring_submit", errno: -r) }
    }

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

/// io_uring instances kept between sessions. A one-file job made and closed about ten rings
/// on each side (control, manifest, heartbeat, data stream, ...): each a kernel context, two
/// mappings and an asynchronous teardown, a visible share of a small job's CPU (issue 14,
/// item 6). A ring returns here only idle (nothing in flight, every completion reaped, no
/// registered buffers: `Ring.deinit`), and is handed out again only for the same size and to a
/// thread of the same identity (fsuid) as the one that made it; the kernel takes every
/// operation's credentials from the thread that submits it in any case. Bounded: `max` rings
/// at most, each closed after `idleNs` unused (checked at every take and put).
/// `@unchecked Sendable`: guarded by `lock`.
final class RingPool: @unchecked Sendable {
    static let shared = RingPool()
    static let max = 48
    static let idleNs: UInt64 = 30_000_000_000

    private struct Idle {
        var ring: io_uring
        var entries: UInt32
        var owner: UInt32
        var sinceNs: UInt64
    }
    private let lock = Lock()
    private var idle: [Idle] = []

    /// The size a request for `entries` is made with: small rings (control streams, 8 or 16)
    /// share one size so that they can stand in for each other.
    static func size(_ entries: UInt32) -> UInt32 { entries <= 16 ? 16 : entries }

    func take(entries: UInt32, owner: UInt32) -> io_uring? {
        let (found, stale) = lock.withLock { () -> (io_uring?, [io_uring]) in
            let stale = expire()
            guard let i = idle.lastIndex(where: { $0.entries == entries && $0.owner == owner }) else { return (nil, stale) }
            return (idle.remove(at: i).ring, stale)
        }
        close(stale)
        return found
    }

    /// Keeps `ring`; false when the pool is full (the caller closes it).
    func put(_ ring: io_uring, entries: UInt32, owner: UInt32) -> Bool {
        let (kept, stale) = lock.withLock { () -> (Bool, [io_uring]) in
            let stale = expire()
            guard idle.count < RingPool.max else { return (false, stale) }
            idle.append(Idle(ring: ring, entries: entries, owner: owner, sinceNs: monotonicNs()))
            return (true, stale)
        }
        close(stale)
        return kept
    }

    /// Rings idle for longer than `idleNs`, taken out of the pool. Called with `lock` held.
    private func expire() -> [io_uring] {
        let now = monotonicNs()
        guard let first = idle.first, now - first.sinceNs > RingPool.idleNs else { return [] }
        let old = idle.filter { now - $0.sinceNs > RingPool.idleNs }.map(\.ring)
        idle.removeAll { now - $0.sinceNs > RingPool.idleNs }
        return old
    }

    private func close(_ rings: [io_uring]) {
        for var r in rings { io_uring_queue_exit(&r) }
    }

    /// Rings of `entries` kept now (tests).
    func count(entries: UInt32) -> Int { lock.withLock { idle.filter { $0.entries == entries }.count } }
}

/// Whether a ring's completion is posted, read from another thread (`Ring.completionProbe`).
/// `@unchecked Sendable`: two pointers into the ring's shared memory, read with atomic loads.
final class CompletionProbe: @unchecked Sendable {
    private let head: UnsafeMutablePointer<UInt32>
    private let tail: UnsafeMutablePointer<UInt32>
    init(head: UnsafeMutablePointer<UInt32>, tail: UnsafeMutablePointer<UInt32>) {
        self.head = head
        self.tail = tail
    }
    var posted: Bool { ferry_cq_posted(head, tail) != 0 }
}
