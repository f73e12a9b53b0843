import Foundation

/// Answers of catalog reads kept for a second (`lifetime`), for what every API request asks
/// again and a second's delay cannot harm: the centers table (`Catalog.recentCentersList`)
/// and the datasets a `gfs://` path may name (`Catalog.resolve`). Each was a query of its own
/// in every request: half of a page's queries, a third of an entry's.
///
/// - A change made through the same catalog is seen at once: every write that can change
///   what is kept calls `forget()` after its transaction.
/// - One made by another daemon on the same database is seen within `lifetime`.
/// - A read that began before a `forget()` does not keep its (perhaps older) answer: `keep`
///   takes the generation `stamp()` gave before the read, and a forget since moves it on.
/// - At most `capacity` answers; when full, all are dropped (a second's worth is cheap to read
///   again, and a bounded map needs no eviction order).
final class Recent<Key: Hashable, Value>: @unchecked Sendable {
    static var lifetime: UInt64 { 1_000_000_000 }
    let capacity: Int
    private let lock = NSLock()
    private var kept: [Key: (value: Value, at: UInt64)] = [:]
    private var generation: UInt64 = 0

    init(capacity: Int) { self.capacity = capacity }

    /// The answer kept for `key`, if it was read less than `lifetime` ago.
    func fresh(_ key: Key) -> Value? {
        let now = DispatchTime.now().uptimeNanoseconds
        return lock.withLock {
            guard let k = kept[key], now &- k.at < Recent.lifetime else { return nil }
            return k.value
        }
    }

    /// To take before a read whose answer will be kept.
    func stamp() -> UInt64 { lock.withLock { generation } }

    /// Keeps `value` for `key`, unless something was forgotten since `stamp`.
    func keep(_ key: Key, _ value: Value, stamp: UInt64) {
        let now = DispatchTime.now().uptimeNanoseconds
        lock.withLock {
            guard stamp == generation else { return }
            if kept.count >= capacity && kept[key] == nil { kept.removeAll(keepingCapacity: true) }
            kept[key] = (value, now)
        }
    }

    func forget() {
        lock.withLock {
            generation &+= 1
            kept.removeAll(keepingCapacity: true)
        }
    }

    var count: Int { lock.withLock { kept.count } }
}
