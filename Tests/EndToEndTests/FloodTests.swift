// Floods do not lock users out (issue 13, item 7). Connections that have not authenticated
// have their own, smaller budget; a flood of them from ten loopback addresses (preamble-only,
// a valid preamble and then nothing, half a TLS handshake, a data preamble without JOIN) is
// held open while a legitimate `ferry cp` completes byte-identical; the refusals are audited
// as a few lines per address with counts, not one line per connection.

import Foundation
import Testing
@testable import Transfer

#if canImport(Glibc)
import Glibc
#endif

@Suite("Floods of unauthenticated connections", .serialized)
struct FloodTests {
    // MARK: - the accounting, without sockets

    @Test("budget: per-address cap, fair eviction when full, reservations, authenticated budget")
    func budgetAccounting() {
        var b = ConnectionBudget(authenticatedMax: 3, authenticatedPerAddressMax: 2, unauthenticatedMax: 64, unauthenticatedPerAddressMax: 8)
        var fd: Int32 = 100
        func admit(_ a: String) -> (AdmissionTicket?, AdmissionTicket?, String?) {
            fd += 1
            switch b.admit(address: a, fd: fd) {
            case .admitted(let t, let v): return (t, v, nil)
            case .refused(let r): return (nil, nil, r)
            }
        }
        // A flood from ten addresses, twelve tries each, round-robin until the budget settles.
        var held: [String: [AdmissionTicket]] = [:]
        var refusals = 0
        for _ in 0..<12 {
            for i in 2...11 {
                let a = "127.0.0.\(i)"
                let (t, v, r) = admit(a)
                if let t { held[a, default: []].append(t) }
                if let v { held[v.address]!.removeAll { $0 === v }; #expect(v.evicted) }
                if r != nil { refusals += 1 }
            }
        }
        #expect(b.waitingCount == 64)
        #expect(held.values.map(\.count).reduce(0, +) == 64)
        let counts = held.values.map(\.count)
        #expect(counts.allSatisfy { $0 <= 8 }, "per-address cap: \(counts)")
        #expect((counts.max() ?? 0) - (counts.min() ?? 0) <= 1, "shares settle equal: \(counts)")
        #expect(refusals > 0)
        // One more from a flooding address that holds the least is refused (no unfairness created).
        let least = held.min { $0.value.count < $1.value.count }!.key
        let (_, _, r1) = admit(least)
        #expect(r1 != nil && r1!.contains("too many unauthenticated connections"), "\(String(describing: r1))")
        // A newcomer from another address gets in, taking the oldest place of a heaviest address.
        let (legit, victim, r2) = admit("127.0.0.1")
        #expect(legit != nil && victim != nil && r2 == nil)
        #expect(victim.map { held[$0.address]!.count == (counts.max() ?? 0) } ?? false)
        if let victim { b.end(victim) }  // its thread leaves the budget
        #expect(b.waitingCount == 64)
        // It authenticates: out of the waiting budget, into the authenticated one.
        #expect(b.authenticate(legit!) == nil)
        #expect(b.waitingCount == 63 && b.authenticated == 1)
        // Its session reserves four data streams: they get in although the budget is full again.
        _ = admit("127.0.0.12")
        #expect(b.waitingCount == 64)
        b.reserve(address: "127.0.0.1", count: 4)
        var streams: [AdmissionTicket] = []
        for _ in 0..<4 {
            let (t, v, r) = admit("127.0.0.1")
            #expect(t?.reserved == true && v == nil && r == nil)
            if let t { streams.append(t) }
        }
        #expect(b.reservations["127.0.0.1"] == nil && b.reservedWaiting == 4)
        // The authenticated budget: two per address, three in all.
        #expect(b.authenticate(streams[0]) == nil)
        #expect(b.authenticate(streams[1])?.contains("too many connections from 127.0.0.1") == true)
        b.end(streams[1])
        #expect(b.reservedWaiting == 2)
        // Everything ends: both budgets return to zero.
        for t in streams + [legit!] { b.end(t) }
        for list in held.values { for t in list { b.end(t) } }
        b.release(address: "127.0.0.1", count: 9)
        #expect(b.authenticated == 0 && b.authenticatedByAddress.isEmpty && b.reservedWaiting == 0)
        #expect(b.waitingCount == 1)  // the one from 127.0.0.12
        // Address groups: IPv6 by /64, IPv4-mapped as IPv4.
        #expect(ConnectionBudget.group("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64")
        #expect(ConnectionBudget.group("2001:db8:1:2:bbbb::7") == "2001:db8:1:2::/64")
        #expect(ConnectionBudget.group("::ffff:10.1.2.3") == "10.1.2.3")
        #expect(ConnectionBudget.group("10.1.2.3") == "10.1.2.3")
    }

    final class FakeClock: @unchecked Sendable {
        var ns: UInt64 = 1_000_000_000
    }

    final class Lines: @unchecked Sendable {
        let lock = NSLock()
        var lines: [RefusalDigest.Line] = []
        func add(_ l: RefusalDigest.Line) { lock.lock(); lines.append(l); lock.unlock() }
    }

    @Test("refusal digest: the first refusal at once, the rest as one line with a count per interval")
    func refusalDigest() {
        let clock = FakeClock()
        let out = Lines()
        let d = RefusalDigest(intervalSeconds: 10, groupsMax: 3, now: { clock.ns }, emit: out.add)
        for i in 0..<10_000 { d.refused(group: "127.0.0.2", kind: "too many", peer: "127.0.0.2:\(1000 + i % 50_000)", message: "too many") }
        #expect(out.lines.count == 1 && out.lines[0].count == 1 && out.lines[0].peer.hasPrefix("127.0.0.2:"))
        d.flush()
        #expect(out.lines.count == 1, "nothing more before the interval has passed")
        clock.ns += 10_000_000_000
        d.flush()
        #expect(out.lines.count == 2 && out.lines[1].count == 9_999 && out.lines[1].peer == "127.0.0.2")
        #expect(out.lines[1].message.contains("9999 more from 127.0.0.2 in 10 s"), "\(out.lines[1].message)")
        // The next refusal after an interval writes the pending count and itself.
        d.refused(group: "127.0.0.3", kind: "k", peer: "127.0.0.3:1", message: "k")
        d.refused(group: "127.0.0.3", kind: "k", peer: "127.0.0.3:2", message: "k")
        clock.ns += 11_000_000_000
        d.refused(group: "127.0.0.3", kind: "k", peer: "127.0.0.3:3", message: "k")
        #expect(out.lines.count == 5 && out.lines[3].count == 1 && out.lines[4].count == 1)
        // Kinds count apart; beyond groupsMax groups, the rest count together as "*".
        for g in 4...20 { d.refused(group: "10.0.0.\(g)", kind: "k", peer: "10.0.0.\(g):1", message: "k") }
        let before = out.lines.count
        #expect(before < 5 + 17, "groups beyond the cap are not written one by one")
        clock.ns += 20_000_000_000
        d.flush(all: true)
        #expect(out.lines.contains { $0.peer == "*" && $0.count > 0 })
    }

    // MARK: - a real flood against a real server

    /// Floods from 127.0.0.2 ... 127.0.0.11 (several kinds of connections that never
    /// authenticate), reconnecting whatever the server closes, for at most `seconds` or until
    /// the stop file exists; writes what it holds to the report file twice a second.
    static let attacker = #"""
import json, os, select, socket, ssl, struct, sys, time
host, port, report, stop, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
addrs = ["127.0.0.%d" % i for i in range(2, 12)]
preamble = lambda role: b"FERRY\0\0\0" + struct.pack("<HHI", 2, role, 0)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def hello_bytes():
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="x")
    try: obj.do_handshake()
    except ssl.SSLWantReadError: pass
    return out.read()
payloads = [preamble(1)[:6], preamble(1), preamble(1) + hello_bytes(), preamble(2)]
held = {a: [] for a in addrs}   # (socket, opened at)
attempts = closed = connect_errors = 0
kinds = [0, 0, 0, 0]
start = time.time()
last = 0
while time.time() - start < seconds and not os.path.exists(stop):
    for a in addrs:
        while len(held[a]) < 10:
            k = attempts % 4
            attempts += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((a, 0))
                s.settimeout(2)
                s.connect((host, port))
                s.sendall(payloads[k])
                s.setblocking(False)
            except OSError:
                connect_errors += 1
                s.close()
                break
            kinds[k] += 1
            held[a].append((s, time.time()))
    time.sleep(0.05)
    socks = [s for a in addrs for (s, _) in held[a]]
    r, _, _ = select.select(socks, [], [], 0)
    gone = set()
    for s in r:
        try:
            d = s.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            d = b""
        if not d:
            gone.add(s)
    for a in addrs:
        keep = []
        for (s, t) in held[a]:
            if s in gone:
                closed += 1
                s.close()
            else:
                keep.append((s, t))
        held[a] = keep
    now = time.time()
    if now - last > 0.5:
        last = now
        stable = {a: sum(1 for (_, t) in held[a] if now - t > 1.0) for a in addrs}
        tmp = report + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"stable": stable, "attempts": attempts, "closed": closed, "connect_errors": connect_errors, "kinds": kinds, "elapsed": now - start}, f)
        os.rename(tmp, report)
"""#

    static func report(_ path: String) -> [String: Any]? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    }

    @Test("a flood from ten addresses is held open while a legitimate cp completes; refusals audited per address with counts")
    func floodFromTenAddresses() throws {
        let sb = try Sandbox("flood")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let audit = sb.file("audit.jsonl")
        // A long handshake timeout: the flood's places do not free themselves during the test.
        let server = try FerryServer(sb, root: root, extra: ["--audit-log", audit, "--handshake-timeout", "60"])
        defer { server.stop() }
        let size = 6 * E2E.MiB
        try writeRandomFile(local + "/data.bin", size: size)

        let reportPath = sb.file("flood.json")
        let stopPath = sb.file("flood.stop")
        let attacker = Process()
        attacker.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        attacker.arguments = ["-c", FloodTests.attacker, "127.0.0.1", String(server.port), reportPath, stopPath, "90"]
        attacker.standardOutput = FileHandle.nullDevice
        let errPipe = Pipe()
        attacker.standardError = errPipe
        try attacker.run()
        defer {
            FileManager.default.createFile(atPath: stopPath, contents: Data())
            if !waitUntil(timeout: 10, { !attacker.isRunning }) { kill(attacker.processIdentifier, SIGKILL) }
            attacker.waitUntilExit()
        }

        // The flood fills the unauthenticated budget (64) and keeps it full.
        var rep: [String: Any] = [:]
        let filled = waitUntil(timeout: 30, interval: 0.25) {
            rep = FloodTests.report(reportPath) ?? [:]
            let stable = (rep["stable"] as? [String: Int]) ?? [:]
            return stable.values.reduce(0, +) >= 56 && (rep["closed"] as? Int ?? 0) > 100 && (rep["elapsed"] as? Double ?? 0) > 3
        }
        #expect(filled, "the flood did not fill the budget: \(rep); attacker stderr: \(attacker.isRunning ? "" : String(decoding: errPipe.fileHandleForReading.availableData, as: UTF8.self))")
        let stable = (rep["stable"] as? [String: Int]) ?? [:]
        #expect(stable.values.allSatisfy { $0 <= 8 }, "per-address cap (8) exceeded: \(stable)")
        #expect(stable.values.reduce(0, +) <= 64, "unauthenticated budget (64) exceeded: \(stable)")
        #expect(stable.count == 10 && stable.values.allSatisfy { $0 >= 3 }, "every flooding address holds a share: \(stable)")
        let closedBefore = rep["closed"] as? Int ?? 0

        // While the flood goes on, a legitimate transfer gets in and completes.
        let t0 = monotonicSeconds()
        let r = try sb.cp(local + "/data.bin", server.url("data.bin"), timeout: 30)
        let took = monotonicSeconds() - t0
        #expect(r.succeeded, "the legitimate cp failed during the flood: \(r)")
        #expect(filesIdentical(local + "/data.bin", root + "/data.bin"))
        #expect(took < 20, "the legitimate cp took \(took) s")
        // ... and a pull too (data streams the other way).
        let back = try sb.cp(server.url("data.bin"), local + "/back.bin", timeout: 30)
        #expect(back.succeeded, "the legitimate pull failed during the flood: \(back)")
        #expect(filesIdentical(local + "/data.bin", local + "/back.bin"))

        // The flood went on meanwhile (a report written after the transfers says so); it
        // keeps going for a few seconds more.
        let elapsedAfter = (FloodTests.report(reportPath)?["elapsed"] as? Double ?? 0) + 0.6
        waitUntil(timeout: 60, interval: 0.25) {
            rep = FloodTests.report(reportPath) ?? rep
            return (rep["elapsed"] as? Double ?? 0) > max(elapsedAfter, 8)
        }
        #expect(attacker.isRunning, "the flood stopped early: \(rep)")
        #expect((rep["closed"] as? Int ?? 0) > closedBefore, "the server kept refusing during the transfer: \(rep)")
        #expect(server.isRunning)

        // Stop the flood; within an interval (10 s) the counts are written.
        FileManager.default.createFile(atPath: stopPath, contents: Data())
        #expect(waitUntil(timeout: 10) { !attacker.isRunning })
        rep = FloodTests.report(reportPath) ?? rep
        let attempts = rep["attempts"] as? Int ?? 0
        let closed = rep["closed"] as? Int ?? 0
        let floodPeers = Set((2...11).map { "127.0.0.\($0)" })
        func host(_ peer: String) -> String { Socket.hostPart(peer) }
        var lines: [[String: Any]] = []
        var counted = 0
        waitUntil(timeout: 25, interval: 0.5) {
            lines = SecurityTests.auditLines(audit).filter {
                floodPeers.contains(host($0["peer"] as? String ?? "")) && ($0["result"] as? String ?? "").hasPrefix("refused")
            }
            counted = lines.reduce(0) { n, l in
                let text = l["result"] as? String ?? ""
                if let m = text.range(of: #": (\d+) more from "#, options: .regularExpression) {
                    let digits = text[m].filter(\.isNumber)
                    return n + (Int(digits) ?? 0)
                }
                return n + 1
            }
            // Every closed connection (refused, evicted, or closed by the attacker at the end)
            // is accounted for by a line or a count.
            return counted >= closed
        }
        let byPeer = Dictionary(grouping: lines) { host($0["peer"] as? String ?? "") }
        let elapsed = (FloodTests.report(reportPath)?["elapsed"] as? Double) ?? 60
        let intervals = Int(elapsed / 10) + 2
        let perAddressMax = 4 * 2 * intervals  // four kinds, first line and count, per interval
        #expect(byPeer.count == 10, "refusals of every flooding address are audited: \(byPeer.keys.sorted())")
        #expect(byPeer.values.allSatisfy { $0.count <= perAddressMax }, "too many refusal lines per address: \(byPeer.mapValues(\.count)) (at most \(perAddressMax))")
        #expect(lines.count * 10 < attempts, "\(lines.count) refusal lines for \(attempts) connections: not aggregated")
        #expect(counted >= closed, "the counts (\(counted)) cover the \(closed) connections the server closed")
        #expect(lines.contains { ($0["result"] as? String ?? "").contains(" more from 127.0.0.") }, "no line with a count")
        #expect(SecurityTests.auditLines(audit).contains { ($0["action"] as? String) == "push" && ($0["result"] as? String) == "ok" })
    }

    @Test("one user's streams and chunk size cannot pin the server's memory: 64 streams of 16 MiB chunks get what fits in a session's budget")
    func pinnedBuffersBounded() throws {
        let sb = try Sandbox("pinned")
        let root = try sb.dir("root")
        let src = try Self.writtenZeros(sb.file("zeros.bin"))
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        // Slowed, so that the streams are open while the server's memory is read.
        let p = try sb.startCp(src, server.url("zeros.bin"), options: ["--streams", "64", "--chunk-size", "16M", "--bwlimit", "16M", "--compress", "off"])
        var pinnedKiB = 0
        let deadline = Date().addingTimeInterval(6)
        while Date() < deadline && p.isRunning {
            pinnedKiB = max(pinnedKiB, Self.pinnedKiB(server))
            usleep(100_000)
        }
        p.kill9()
        _ = p.waitExit(timeout: 10)
        // A session's budget is 1 GiB (TransferServer.sessionBufferBytes); before, 64 streams
        // pinned 64 x 2 x 16 MiB = 2 GiB.
        #expect(pinnedKiB > 100_000 && pinnedKiB <= 1_100_000, "VmPin peaked at \(pinnedKiB) KiB")
        #expect(server.isRunning)
        // A copy of the defaults still gets its streams and lands whole.
        try writeRandomFile(sb.file("small.bin"), size: 9 * E2E.MiB)
        let ok = try sb.cp(sb.file("small.bin"), server.url("small.bin"))
        #expect(ok.succeeded && filesIdentical(sb.file("small.bin"), root + "/small.bin"), "\(ok)")
    }

    /// 1 GiB of written zeros at `path` (not sparse: every chunk travels, raw with --compress
    /// off), so that 64 chunks of 16 MiB can keep 64 streams busy; returns `path`.
    static func writtenZeros(_ path: String) throws -> String {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw HarnessError("cannot create \(path)") }
        defer { close(fd) }
        let block = [UInt8](repeating: 0, count: 16 << 20)
        for i in 0..<64 { _ = block.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(i) << 24) } }
        return path
    }

    /// The server's `VmPin` in KiB (its own process, under the harness's `timeout` wrapper
    /// when there is one).
    static func pinnedKiB(_ server: FerryServer) -> Int {
        var pid = server.process.pid
        if let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8), !comm.hasPrefix("ferry"),
           let kids = try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8),
           let kid = kids.split(separator: " ").first.flatMap({ pid_t(String($0)) }) {
            pid = kid
        }
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmPin:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
        }
        return 0
    }

    /// Five sessions of one user, each as large as a session may be (64 MiB chunks: 7 streams,
    /// 896 MiB; few connections, under the per-address limit), took 3.9 GiB of the server's
    /// 4 GiB budget and left another user's copy with chunks as large refused as busy. A user's
    /// sessions together get half of it (`TransferServer.userBufferBytes`).
    @Test("one user's sessions cannot take the whole buffer budget: past half of it their next session is refused as busy and says why, and another user's session still gets its streams")
    func bufferSharePerUser() throws {
        let sb = try Sandbox("pinned-share")
        let root = try sb.dir("root")
        // 16 chunks of 64 MiB, more than a session's streams.
        let src = try Self.writtenZeros(sb.file("zeros.bin"))
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let hog = try sb.issueToken(user: "hog", name: "hog.tok")
        let other = try sb.issueToken(user: "other", name: "other.tok")
        let big = ["--streams", "64", "--chunk-size", "64M", "--bwlimit", "16M", "--compress", "off"]
        var running: [FerryProcess] = []
        var refused: [CpResult] = []
        defer { for p in running { p.kill9(); _ = p.waitExit(timeout: 10) } }
        for i in 0..<5 {
            let p = try sb.startCp(src, server.url("hog\(i).bin"), options: big, tokenFile: hog)
            // Until it moves bytes (its streams granted and joined), or has ended (refused).
            _ = waitUntil(timeout: 15, interval: 0.05) {
                !p.isRunning || ((try? String(contentsOfFile: p.stdoutPath, encoding: .utf8)) ?? "").range(of: #""bytes_done":[1-9]"#, options: .regularExpression) != nil
            }
            if p.isRunning { running.append(p) } else { refused.append(sb.finish(p, timeout: 10)) }
        }
        let peak = Self.pinnedKiB(server)
        #expect(running.count == 3 && refused.count == 2, "\(running.count) sessions of one user running, \(refused.count) refused")
        for r in refused {
            #expect(r.status != 0 && r.allMessages.contains("the share one user may have"), "\(r)")
        }
        // At most half of 4 GiB (896 + 896 + 128 MiB): before, five sessions pinned 3.9 GiB.
        #expect(peak > 1_800_000 && peak <= 2_200_000, "VmPin at \(peak) KiB with one user's sessions running")
        // Another user, with chunks as large, still gets streams, and the copy lands whole.
        try writeRandomFile(sb.file("other.bin"), size: 64 * E2E.MiB)
        let ok = try sb.cp(sb.file("other.bin"), server.url("other.bin"), options: ["--chunk-size", "64M"], tokenFile: other)
        #expect(ok.succeeded && filesIdentical(sb.file("other.bin"), root + "/other.bin"), "\(ok)")
        #expect(server.isRunning)
    }

    /// Two users, each at their half of the budget (16 MiB chunks pack it to within 64 MiB),
    /// left a third user's copy with 64 MiB chunks refused as busy: 3.97 GiB of 4 held. A user
    /// who already holds buffers cannot take the last eighth
    /// (`TransferServer.newcomerReserveBytes`), so a user with nothing running gets streams.
    @Test("two users at their share of the buffer budget still leave a third user's copy its streams: the last eighth is kept for users with nothing running, and the refusal says so")
    func bufferReserveForNewcomers() throws {
        let sb = try Sandbox("pinned-reserve")
        let root = try sb.dir("root")
        let src = try Self.writtenZeros(sb.file("zeros.bin"))
        // 31 + 31 + 1 + 31 + 17 streams come from one address: above the default 64.
        let server = try FerryServer(sb, root: root, extra: ["--max-connections-per-address", "256"])
        defer { server.stop() }
        let big = ["--streams", "64", "--chunk-size", "16M", "--bwlimit", "16M", "--compress", "off"]
        var running: [FerryProcess] = []
        var refused: [CpResult] = []
        defer { for p in running { p.kill9(); _ = p.waitExit(timeout: 10) } }
        for user in ["hog1", "hog2"] {
            let token = try sb.issueToken(user: user, name: "\(user).tok")
            for i in 0..<4 {
                let p = try sb.startCp(src, server.url("\(user)-\(i).bin"), options: big, tokenFile: token)
                _ = waitUntil(timeout: 15, interval: 0.05) {
                    !p.isRunning || ((try? String(contentsOfFile: p.stdoutPath, encoding: .utf8)) ?? "").range(of: #""bytes_done":[1-9]"#, options: .regularExpression) != nil
                }
                if p.isRunning { running.append(p) } else { refused.append(sb.finish(p, timeout: 10)) }
            }
        }
        // Streams of about 32 MiB. hog1: 31 + 31 + 1 (its half), the fourth refused; hog2: 31,
        // then 17 (down to the reserve), the third and fourth refused.
        #expect(running.count == 5 && refused.count == 3, "\(running.count) sessions running, \(refused.count) refused")
        #expect(refused.contains { $0.allMessages.contains("kept for users with no transfer running") }, "\(refused.map(\.allMessages))")
        #expect(refused.allSatisfy { $0.status != 0 })
        let pinned = Self.pinnedKiB(server)
        #expect(pinned > 3_000_000 && pinned <= 3_700_000, "VmPin at \(pinned) KiB: the reserve was taken")
        // A third user, chunks as large, gets streams and the copy lands whole.
        let third = try sb.issueToken(user: "third", name: "third.tok")
        try writeRandomFile(sb.file("third.bin"), size: 64 * E2E.MiB)
        let ok = try sb.cp(sb.file("third.bin"), server.url("third.bin"), options: ["--chunk-size", "64M"], tokenFile: third)
        #expect(ok.succeeded && filesIdentical(sb.file("third.bin"), root + "/third.bin"), "\(ok)")
        #expect(server.isRunning)
    }
}
