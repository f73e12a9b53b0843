import CLiburing
import Glibc

/// A pthread mutex. Threads, not tasks, own rings here, so blocking locks are the right tool.
/// `@unchecked Sendable`: the mutex itself is the synchronisation.
final class Lock: @unchecked Sendable {
    fileprivate let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init() { pthread_mutex_init(mutex, nil) }
    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
}

/// A condition variable bound to one `Lock`. `@unchecked Sendable`: pthread-synchronised.
final class Condition: @unchecked Sendable {
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    let lock: Lock

    init(_ lock: Lock) {
        self.lock = lock
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        cond.deallocate()
    }

    /// Waits (lock held) at most `seconds`; returns false on timeout.
    @discardableResult
    func wait(seconds: Double) -> Bool {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let ns = Int(seconds * 1e9) + ts.tv_nsec
        ts.tv_sec += ns / 1_000_000_000
        ts.tv_nsec = ns % 1_000_000_000
        return pthread_cond_timedwait(cond, lock.mutex, &ts) == 0
    }

    func signal() { pthread_cond_signal(cond) }
    func broadcast() { pthread_cond_broadcast(cond) }
}

/// Starts a detached OS thread (each worker owns one io_uring; threads are the unit here).
func spawnThread(name: String, _ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ b: @escaping @Sendable () -> Void) { body = b }
    }
    // Named threads make profiles readable (perf's per-thread view, `top -H`).
    let named: @Sendable () -> Void = {
        ferry_set_thread_name(name)
        body()
    }
    let box = Unmanaged.passRetained(Box(named)).toOpaque()
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    pthread_attr_setstacksize(&attr, 4 << 20)
    pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
    var tid = pthread_t()
    let r = pthread_create(&tid, &attr, { arg in
        let b = Unmanaged<AnyObject>.fromOpaque(arg!).takeRetainedValue() as! Box
        b.body()
        return nil
    }, box)
    pthread_attr_destroy(&attr)
    precondition(r == 0, "pthread_create failed: \(r)")
}

/// Monotonic clock in nanoseconds.
@inline(__always)
func monotonicNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// A latch that threads wait on until `count` parties have arrived.
final class WaitGroup: @unchecked Sendable {
    private let lock = Lock()
    private lazy var cond = Condition(lock)
    private var pending = 0

    func add(_ n: Int = 1) { lock.withLock { pending += n } }
    func done() {
        lock.withLock {
            pending -= 1
            if pending == 0 { cond.broadcast() }
        }
    }
    /// Waits at most `seconds`; returns false on timeout.
    func wait(seconds: Double) -> Bool {
        let deadline = monotonicNs() + UInt64(seconds * 1e9)
        return lock.withLock {
            while pending > 0 {
                let now = monotonicNs()
                if now >= deadline { return false }
                cond.wait(seconds: Double(deadline - now) / 1e9)
            }
            return true
        }
    }
}
