import Glibc

// Admission of connections to `ferry serve`, so that a flood of connections that never
// authenticate cannot keep a legitimate user out, and so that refusing such a flood costs a
// few audit lines rather than one fdatasync'ed line per connection.
//
// Two budgets. A connection is *waiting* from accept until it has authenticated (a control
// stream whose token or center certificate was verified, a data stream that joined with a
// valid proof); only then does it count against the authenticated budget (`connectionsMax`,
// `connectionsPerAddressMax`). Waiting connections have their own, smaller budget
// (`unauthenticatedMax` in all, `unauthenticatedPerAddressMax` per address group), checked
// before a thread is spawned, and the handshake timeout bounds how long one may wait.
//
// When the waiting budget is full, a newcomer from an address group that holds fewer waiting
// connections than the heaviest group takes the place of that group's oldest waiting
// connection (which is shut down): a flood from several addresses settles at an equal share
// each, and a client from any other address still gets in. A session that has authenticated
// and was told how many data streams to open reserves that many places for its address, so
// its data streams get in even while the waiting budget is full.
//
// Address groups: an IPv4 address is its own group; an IPv6 address counts with its /64 (one
// host typically holds a whole /64).

/// One accepted connection's place in the budgets. Guarded by the owning budget's lock.
final class AdmissionTicket: @unchecked Sendable {
    let address: String
    let group: String
    let fd: Int32
    let serial: UInt64
    /// Admitted against a session's data-stream reservation rather than the waiting budget.
    let reserved: Bool
    fileprivate(set) var authenticated = false
    /// Shut down to make room for a connection from an address with fewer waiting.
    fileprivate(set) var evicted = false
    fileprivate(set) var ended = false

    init(address: String, group: String, fd: Int32, serial: UInt64, reserved: Bool) {
        self.address = address
        self.group = group
        self.fd = fd
        self.serial = serial
        self.reserved = reserved
    }
}

/// The accounting of both budgets (not thread-safe: the server holds its lock around it).
struct ConnectionBudget {
    var authenticatedMax: Int
    var authenticatedPerAddressMax: Int
    var unauthenticatedMax: Int
    var unauthenticatedPerAddressMax: Int

    /// Waiting connections per address group, oldest first (those admitted on a reservation
    /// are not here: they count against their session's reservation).
    private(set) var waiting: [String: [AdmissionTicket]] = [:]
    private(set) var waitingCount = 0
    private(set) var reservedWaiting = 0
    private(set) var authenticated = 0
    private(set) var authenticatedByAddress: [String: Int] = [:]
    /// Data-stream places reserved per address by sessions that authenticated.
    private(set) var reservations: [String: Int] = [:]
    private var serial: UInt64 = 0

    init(authenticatedMax: Int, authenticatedPerAddressMax: Int, unauthenticatedMax: Int, unauthenticatedPerAddressMax: Int) {
        self.authenticatedMax = authenticatedMax
        self.authenticatedPerAddressMax = authenticatedPerAddressMax
        self.unauthenticatedMax = unauthenticatedMax
        self.unauthenticatedPerAddressMax = unauthenticatedPerAddressMax
    }

    enum Decision {
        /// Serve it; when `evicting` is set, shut that connection down (it made room).
        case admitted(AdmissionTicket, evicting: AdmissionTicket?)
        case refused(String)
    }

    /// A new connection from `address`, before anything is read from it.
    mutating func admit(address: String, fd: Int32) -> Decision {
        serial += 1
        let group = ConnectionBudget.group(address)
        if let r = reservations[address], r > 0 {
            reservations[address] = r > 1 ? r - 1 : nil
            reservedWaiting += 1
            return .admitted(AdmissionTicket(address: address, group: group, fd: fd, serial: serial, reserved: true), evicting: nil)
        }
        let mine = waiting[group]?.count ?? 0
        if mine >= unauthenticatedPerAddressMax {
            return .refused("too many unauthenticated connections from \(group) (\(unauthenticatedPerAddressMax))")
        }
        var victim: AdmissionTicket?
        if waitingCount >= unauthenticatedMax {
            // The heaviest other group (ties: the one whose oldest waits longest).
            var heaviest: (group: String, count: Int, oldest: UInt64)?
            for (g, list) in waiting where g != group && !list.isEmpty {
                if let h = heaviest, list.count < h.count || (list.count == h.count && list[0].serial > h.oldest) { continue }
                heaviest = (g, list.count, list[0].serial)
            }
            // Only when that leaves the shares fairer than before (never the other way round).
            guard let h = heaviest, mine + 1 < h.count else {
                return .refused("too many unauthenticated connections (\(unauthenticatedMax))")
            }
            let v = waiting[h.group]!.removeFirst()
            if waiting[h.group]!.isEmpty { waiting[h.group] = nil }
            waitingCount -= 1
            v.evicted = true
            victim = v
        }
        let t = AdmissionTicket(address: address, group: group, fd: fd, serial: serial, reserved: false)
        waiting[group, default: []].append(t)
        waitingCount += 1
        return .admitted(t, evicting: victim)
    }

    /// The connection authenticated: it leaves the waiting budget for the authenticated one.
    /// Returns why it is refused when that budget is full (or it was evicted meanwhile).
    mutating func authenticate(_ t: AdmissionTicket) -> String? {
        if t.authenticated { return nil }
        if t.evicted || t.ended { return "evicted while authenticating" }
        leaveWaiting(t)
        t.ended = true  // in no budget until counted below
        if authenticated >= authenticatedMax { return "too many connections (\(authenticatedMax))" }
        if authenticatedByAddress[t.address, default: 0] >= authenticatedPerAddressMax {
            return "too many connections from \(t.address) (\(authenticatedPerAddressMax))"
        }
        t.ended = false
        t.authenticated = true
        authenticated += 1
        authenticatedByAddress[t.address, default: 0] += 1
        return nil
    }

    /// The connection is closing (call before its descriptor is closed: a waiting ticket's
    /// descriptor may be shut down by an eviction until then).
    mutating func end(_ t: AdmissionTicket) {
        if t.ended { return }
        if t.authenticated {
            authenticated -= 1
            let n = authenticatedByAddress[t.address, default: 1] - 1
            authenticatedByAddress[t.address] = n > 0 ? n : nil
        } else {
            leaveWaiting(t)
        }
        t.ended = true
    }

    /// A session from `address` expects `count` data streams: reserve their places.
    mutating func reserve(address: String, count: Int) {
        guard count > 0 else { return }
        reservations[address, default: 0] += count
    }

    /// Returns places reserved but not used (the session's streams joined or it gave up).
    mutating func release(address: String, count: Int) {
        guard count > 0, let r = reservations[address] else { return }
        reservations[address] = r > count ? r - count : nil
    }

    private mutating func leaveWaiting(_ t: AdmissionTicket) {
        if t.reserved {
            if !t.ended && !t.authenticated { reservedWaiting -= 1 }
            return
        }
        guard var list = waiting[t.group], let i = list.firstIndex(where: { $0 === t }) else { return }
        list.remove(at: i)
        waiting[t.group] = list.isEmpty ? nil : list
        waitingCount -= 1
    }

    /// The group an address's waiting connections count in: IPv4 addresses alone, IPv6 by /64
    /// (IPv4-mapped IPv6 as the IPv4 address).
    static func group(_ address: String) -> String {
        var a6 = in6_addr()
        guard address.contains(":"), inet_pton(AF_INET6, address, &a6) == 1 else { return address }
        let b = withUnsafeBytes(of: &a6) { Array($0) }
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xFF && b[11] == 0xFF {
            return "\(b[12]).\(b[13]).\(b[14]).\(b[15])"
        }
        var prefix = [UInt8](repeating: 0, count: 16)
        prefix[0..<8] = b[0..<8]
        var p6 = in6_addr()
        withUnsafeMutableBytes(of: &p6) { $0.copyBytes(from: prefix) }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &p6, &text, socklen_t(text.count)) != nil else { return address }
        return String(cString: text) + "/64"
    }
}

/// Refusals of connections that never authenticated, written as one line per address group
/// and kind per interval: the first at once, the rest counted and written as one line with
/// the count when the interval has passed (at the next such refusal, or by `flush`).
/// `@unchecked Sendable`: guarded by `lock`.
final class RefusalDigest: @unchecked Sendable {
    struct Line: Equatable {
        /// The connection's peer (first line) or the address group (summary).
        var peer: String
        var message: String
        /// How many refusals this line stands for.
        var count: Int
    }

    private struct Key: Hashable {
        var group: String
        var kind: String
    }

    private struct Window {
        var start: UInt64
        var more = 0
    }

    let intervalNs: UInt64
    /// Beyond this many address groups in one interval, further groups count together as "*".
    let groupsMax: Int
    private let lock = Lock()
    private var windows: [Key: Window] = [:]
    private let now: @Sendable () -> UInt64
    private let emit: @Sendable (Line) -> Void

    init(intervalSeconds: Int, groupsMax: Int = 4096, now: @escaping @Sendable () -> UInt64 = monotonicNs, emit: @escaping @Sendable (Line) -> Void) {
        intervalNs = UInt64(max(1, intervalSeconds)) * 1_000_000_000
        self.groupsMax = groupsMax
        self.now = now
        self.emit = emit
    }

    /// One refusal: `kind` is what makes refusals alike (the message without ports).
    func refused(group: String, kind: String, peer: String, message: String) {
        let t = now()
        var out: [Line] = []
        lock.withLock {
            var key = Key(group: group, kind: kind)
            if windows[key] == nil && windows.count >= groupsMax { key.group = "*" }
            if var w = windows[key], t &- w.start < intervalNs {
                w.more += 1
                windows[key] = w
                return
            }
            if let w = windows[key], w.more > 0 { out.append(summary(key, w, t)) }
            windows[key] = Window(start: t)
            out.append(Line(peer: peer, message: message, count: 1))
        }
        for l in out { emit(l) }
    }

    /// Writes the counts of intervals that have passed (all of them when `all`).
    func flush(all: Bool = false) {
        let t = now()
        var out: [Line] = []
        lock.withLock {
            for (k, w) in windows where all || t &- w.start >= intervalNs {
                if w.more > 0 { out.append(summary(k, w, t)) }
                windows[k] = nil
            }
        }
        for l in out { emit(l) }
    }

    private func summary(_ k: Key, _ w: Window, _ t: UInt64) -> Line {
        let seconds = max(1, Int((min(t &- w.start, intervalNs) + 999_999_999) / 1_000_000_000))
        let from = k.group == "*" ? "other addresses" : k.group
        return Line(peer: k.group, message: "\(k.kind): \(w.more) more from \(from) in \(seconds) s", count: w.more)
    }
}
