import Glibc

/// A fixed set of page-aligned buffers, allocated once and registered with one ring for
/// READ_FIXED / WRITE_FIXED. Memory is bounded by `count * bytesPerBuffer` whatever the
/// file or tree size.
final class BufferPool {
    let count: Int
    let bytesPerBuffer: Int
    private let base: UnsafeMutableRawPointer
    private let iovecs: UnsafeMutablePointer<iovec>

    init(count: Int, bytesPerBuffer: Int) throws {
        precondition(count > 0 && bytesPerBuffer > 0)
        self.count = count
        let page = 4096
        self.bytesPerBuffer = (bytesPerBuffer + page - 1) / page * page
        let total = self.count * self.bytesPerBuffer
        guard let p = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            throw TransferError.system("cannot allocate \(total) bytes of buffers", errno: errno)
        }
        base = p
        iovecs = .allocate(capacity: count)
        for i in 0..<count {
            iovecs[i] = iovec(iov_base: base + i * self.bytesPerBuffer, iov_len: self.bytesPerBuffer)
        }
    }

    deinit {
        munmap(base, count * bytesPerBuffer)
        iovecs.deallocate()
    }

    /// Buffer `i` (its index is also its registration index).
    @inline(__always)
    func buffer(_ i: Int) -> UnsafeMutableRawPointer { base + i * bytesPerBuffer }

    /// Registers the buffers with `ring` now: zero-copy sends name them at once, and a
    /// receiver's are what the server's buffer budget grants (`ReceiverWorker`).
    func register(with ring: Ring) throws {
        try ring.register(buffers: iovecs, count: count)
    }

    /// Registers the buffers with `ring` at its first fixed read or write (`Ring.registerLater`).
    func registerLazily(with ring: Ring) {
        ring.registerLater(buffers: iovecs, count: count)
    }
}
