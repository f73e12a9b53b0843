// Global Files federation: three centers on loopback (hlrs, wuxi, csc), each a `ferry serve`
// with a daemon that follows the other two's catalogs. A dataset registered at hlrs is listed
// and found through wuxi's daemon, copied through gfs:// from the best replica, replicated to
// wuxi (asked of csc's daemon, which forwards to wuxi's), and survives hlrs going down (stale,
// its replica skipped, the copy served from wuxi) and coming back (caught up with a
// re-registration made meanwhile). A user without rights sees nothing of a private dataset at
// any center.

import Foundation
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Global Files federation")
struct FederationE2ETests {
    static let names = ["hlrs", "wuxi", "csc"]

    /// A free TCP port on 127.0.0.1 (bound and released: the daemons need their peers' ports
    /// before they start, and a restarted center must come back on the same ones).
    ///
    /// Chosen at random below the kernel's ephemeral range (32768-60999 here), never twice in one
    /// test process: a port from `bind(0)` comes from the range that outgoing connections use,
    /// and under the parallel suite another test's connection took one between its release here
    /// and the daemon's bind ("Address already in use", once in CI).
    static func freePort() throws -> Int {
        for _ in 0..<500 {
            let port = Int.random(in: 20_000..<32_768)
            guard handedOut.withLock({ $0.insert(port).inserted }) else { continue }
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_addr.s_addr = inet_addr("127.0.0.1")
            a.sin_port = UInt16(port).bigEndian
            let ok = withUnsafePointer(to: &a) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            if ok { return port }
        }
        throw HarnessError("no free port below 32768 in 500 tries")
    }
    private static let handedOut = Mutex<Set<Int>>([])

    final class Federation {
        let sb: Sandbox
        var servers: [String: FerryServer] = [:]
        var transferPort: [String: Int] = [:]
        var apiPort: [String: Int] = [:]
        let bobToken: String
        /// The daemons' APIs speak HTTPS (`api_tls = true`), also to each other.
        let tls: Bool
        init(sb: Sandbox, bobToken: String, tls: Bool) { self.sb = sb; self.bobToken = bobToken; self.tls = tls }

        func api(_ c: String) -> String { (tls ? "https" : "http") + "://127.0.0.1:\(apiPort[c]!)" }

        func start(_ c: String) throws {
            servers[c] = try FerryServer(sb, root: "", listen: [], extra: ["--config", sb.file("\(c).toml"), "--cert", sb.pki + "/\(c).crt", "--key", sb.pki + "/\(c).key"])
            // The API answers once its line is printed.
            _ = try DaemonE2ETests.apiURL(servers[c]!)
        }

        func stopAll() { for s in servers.values { s.stop() } }

        /// `ferry_federation_entries_total{peer=PEER}` of center `c`'s /metrics, by `how`.
        func federationEntries(_ c: String, peer: String) -> [String: Int] {
            let text = runTool("/usr/bin/python3", ["-c", """
                import ssl, sys, urllib.request
                ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.check_hostname = False
                sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=20, context=ctx if sys.argv[1].startswith("https") else None).read().decode())
                """, api(c) + "/metrics", sb.ca]).output
            var out: [String: Int] = [:]
            for line in text.split(separator: "\n") where line.hasPrefix("ferry_federation_entries_total{peer=\"\(peer)\",how=\"") {
                let how = line.split(separator: "\"")[3]
                out[String(how)] = Int(line.split(separator: " ").last ?? "")
            }
            return out
        }

        /// Scheduler job `job`'s stage-in hook for `gfs://wuxi/small` (one 64 KiB file, made and
        /// registered at wuxi, and seen by hlrs, on the first call) into `dst` at hlrs.
        func stageSmall(job: String, into dst: String) throws -> CpResult {
            if !FileManager.default.fileExists(atPath: sb.file("wuxi/data/small/a.bin")) {
                try writeRandomFile(try sb.dir("wuxi/data/small") + "/a.bin", size: 64 * 1024)
                #expect(try ferry("wuxi", ["register", "/data/small", "--dataset", "small", "--readers", "*"]).status == 0)
                _ = try FederationE2ETests.eventually(30, { try self.ferry("hlrs", ["ls", "gfs://wuxi/small"]) }) { $0.status == 0 }
            }
            let script = sb.file("job\(job).sh")
            try writeFile(script, Array("#!/bin/sh\n#FERRY stage_in gfs://wuxi/small \(dst)\n".utf8))
            return try sb.ferry(["stage-in", "--api", api("hlrs"), "--ca", sb.ca, "--token-file", sb.tokenFile, "--job", job, "--script", script, "--uid", "0"], timeout: 150)
        }

        /// `ferry SUBCOMMAND --api (center c) --token-file ... ARGS`.
        func ferry(_ c: String, _ args: [String], token: String? = nil, timeout: Double = 60) throws -> CpResult {
            try sb.ferry([args[0], "--api", api(c), "--ca", sb.ca, "--token-file", token ?? sb.tokenFile] + args.dropFirst(), timeout: timeout)
        }
    }

    /// Three centers, hlrs's database on `backend`. Every export admits users and the other
    /// centers; every center takes replicas under /replicas/store.
    /// With `stagingMiB`, hlrs also has a staging cache (`/replicas/stage`) on a tmpfs of that
    /// size (and `stagingQuota`, when given: its `staging_quota`). With `tls`, every API speaks
    /// HTTPS and the centers follow each other over it.
    /// With `datasetsOnly`, csc follows hlrs with `follow = "datasets"` (wuxi still mirrors it whole).
    static func start(_ backend: Backend, stagingMiB: Int? = nil, stagingQuota: String? = nil, tls: Bool = false, datasetsOnly: Bool = false) throws -> Federation {
        let sb = try Sandbox("fed-" + backend.rawValue)
        if let mib = stagingMiB { try sb.mountTmpfs(at: sb.file("hlrs/replicas/stage"), sizeMiB: mib) }
        for c in names where c != "hlrs" { try Sandbox.ferryTool(["ca", "issue", "--dir", sb.pki, "--center", c, "--host", "127.0.0.1"]) }
        let bob = try sb.issueToken(user: "bob", scopes: ["read:/data"], name: "bob.tok")
        let f = Federation(sb: sb, bobToken: bob, tls: tls)
        for c in names {
            f.transferPort[c] = try freePort()
            f.apiPort[c] = try freePort()
        }
        for c in names {
            try sb.dir("\(c)/data")
            try sb.dir("\(c)/replicas")
            let database = c == "hlrs" && backend == .postgres ? try backend.newDatabase() : "\(c)-catalog.sqlite"
            var peers = ""
            for p in names where p != c {
                peers += """
                    [[peer]]
                    name = "\(p)"
                    address = "127.0.0.1:\(f.transferPort[p]!)"
                    api = "\(tls ? "https://" : "")127.0.0.1:\(f.apiPort[p]!)"
                    \(datasetsOnly && c == "csc" && p == "hlrs" ? "follow = \"datasets\"" : "")

                    """
            }
            try writeFile(sb.file("\(c).toml"), Array("""
                center = "\(c)"
                run_as = "root"
                listen = ["127.0.0.1:\(f.transferPort[c]!)"]
                certificate = "pki/\(c).crt"
                key = "pki/\(c).key"
                ca = "pki/ca.crt"
                token_issuers = ["pki/hlrs.crt"]
                [daemon]
                database = "\(database)"
                api_listen = "127.0.0.1:\(f.apiPort[c]!)"
                api_tls = \(tls)
                workers = 2
                retry_base_seconds = 1
                max_attempts = 2
                sync_seconds = 1
                replicas = "/replicas/store"
                \(c == "hlrs" && stagingMiB != nil ? "staging = \"/replicas/stage\"\n" : "")\(c == "hlrs" && stagingQuota != nil ? "staging_quota = \"\(stagingQuota!)\"\n" : "")\(peers)
                [[export]]
                name = "data"
                path = "\(c)/data"
                access = "rw"
                users = ["*", "center:hlrs", "center:wuxi", "center:csc"]
                [[export]]
                name = "replicas"
                path = "\(c)/replicas"
                access = "rw"
                users = ["*", "center:hlrs", "center:wuxi", "center:csc"]

                """.utf8))
        }
        for c in names { try f.start(c) }
        return f
    }

    /// Polls `probe` (at most `seconds`, twice a second) until `ok` holds for its result.
    func eventually(_ seconds: Double, _ probe: () throws -> CpResult, _ ok: (CpResult) -> Bool) throws -> CpResult {
        try FederationE2ETests.eventually(seconds, probe, ok)
    }

    static func eventually(_ seconds: Double, _ probe: () throws -> CpResult, _ ok: (CpResult) -> Bool) throws -> CpResult {
        var last = try probe()
        for _ in 0..<Int(seconds * 2) where !ok(last) {
            usleep(500_000)
            last = try probe()
        }
        return last
    }

    /// Tranche directories under `dir` in the sandbox, each with "part 0.smi" to "part 2.smi"
    /// holding `text(i)`.
    static func tranches(_ sb: Sandbox, _ dir: String, _ names: [String], _ text: (Int) -> String) throws {
        for t in names {
            try sb.dir(dir + "/" + t)
            for i in 0..<3 { try writeFile(sb.file(dir + "/\(t)/part \(i).smi"), Array(text(i).utf8)) }
        }
    }

    @Test("three centers: list and find a peer's dataset locally, copy from the best replica, replicate, a peer down is stale and skipped, back it catches up",
          arguments: Backend.allCases)
    func threeCenters(_ backend: Backend) throws {
        // Over HTTPS: the CLI verifies each daemon against the federation CA, and the daemons
        // each other (the other tests of this suite speak plain HTTP on loopback).
        let f = try FederationE2ETests.start(backend, tls: true)
        defer { f.stopAll() }
        let sb = f.sb
        // A dataset at hlrs: UTF-8 and spaces in names, a tree 40 levels deep.
        let root = sb.file("hlrs/data/zinc")
        let deep = (1...40).map { "level \($0)" }.joined(separator: "/")
        try FederationE2ETests.tranches(sb, "hlrs/data/zinc", ["H20 P100", "H21 P200", "H22 Müller ü"]) { i in
            String(repeating: "CCO\tZINC\(i)\n", count: 200 * (i + 1))
        }
        try sb.dir("hlrs/data/zinc/" + deep)
        try writeFile(root + "/" + deep + "/leaf 日本.txt", Array("deep\n".utf8))
        try writeFile(root + "/big.bin", (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) })
        let reg = try f.ferry("hlrs", ["register", "/data/zinc", "--dataset", "zinc22@2024", "--readers", "*"])
        #expect(reg.status == 0 && reg.stdout.contains("11 files"), "\(reg)")
        // A private dataset of alice's.
        try sb.dir("hlrs/data/mine")
        try writeFile(sb.file("hlrs/data/mine/secret.txt"), Array("x\n".utf8))
        #expect(try f.ferry("hlrs", ["register", "/data/mine", "--dataset", "alice/private"]).status == 0)

        // Listed, found and stat'ed through wuxi's daemon (its mirror of hlrs's catalog).
        // (A dataset mirrored for the first time is seen only once its last page is in: the
        // first listing that works is the whole one. It once answered an empty page.)
        let ls = try eventually(30, { try f.ferry("wuxi", ["ls", "gfs://hlrs/zinc22@2024"]) }) { $0.status == 0 }
        #expect(ls.stdout.split(separator: "\n") == ["H20 P100/", "H21 P200/", "H22 Müller ü/", "big.bin", "level 1/"], "\(ls)")
        let deepLs = try f.ferry("wuxi", ["ls", "gfs://hlrs/zinc22@2024/" + deep])
        #expect(deepLs.stdout.contains("leaf 日本.txt"), "\(deepLs)")
        // csc follows hlrs on its own clock (the `ls` above waited for wuxi only): a CI run once
        // asked csc before its first round had mirrored the dataset ("no dataset at ...").
        let find = try eventually(30, { try f.ferry("csc", ["find", "--name", "part 2*", "gfs://hlrs/zinc22@2024"]) }) { $0.status == 0 }
        #expect(find.stdout.split(separator: "\n").sorted() == ["H20 P100/part 2.smi", "H21 P200/part 2.smi", "H22 Müller ü/part 2.smi"], "\(find)")
        // csc follows hlrs on its own clock: the private dataset may reach it a round later.
        let ds = try eventually(30, { try f.ferry("csc", ["datasets"]) }) { $0.stdout.contains("gfs://hlrs/alice/private") }
        #expect(ds.stdout.contains("gfs://hlrs/zinc22@2024") && ds.stdout.contains("gfs://hlrs/alice/private"), "\(ds)")
        // A user without rights: the private dataset does not exist for bob, at any center.
        for c in FederationE2ETests.names {
            let bobSees = try f.ferry(c, ["datasets"], token: f.bobToken)
            #expect(bobSees.stdout.contains("zinc22") && !bobSees.stdout.contains("private"), "\(c): \(bobSees)")
            let bobLs = try f.ferry(c, ["ls", "gfs://hlrs/alice/private"], token: f.bobToken)
            #expect(bobLs.status == 1 && bobLs.stderr.contains("no dataset"), "\(c): \(bobLs)")
            let bobFind = try f.ferry(c, ["find", "--name", "secret*", "gfs://hlrs/alice/private"], token: f.bobToken)
            #expect(bobFind.status == 1 && !bobFind.stdout.contains("secret"), "\(c): \(bobFind)")
        }
        // wuxi, too, follows hlrs on its own clock (a CI run asked it before its round).
        let wuxiLs = try eventually(30, { try f.ferry("wuxi", ["ls", "gfs://hlrs/alice/private"]) }) { $0.stdout.contains("secret.txt") }
        #expect(wuxiLs.stdout.contains("secret.txt"), "\(wuxiLs)")

        // Copy through gfs:// asking wuxi's daemon: the only replica is hlrs's.
        let st = try f.ferry("wuxi", ["stat", "--replicas", "gfs://hlrs/zinc22@2024"])
        #expect(st.stdout.contains("replica #1\thlrs\tcomplete") && st.stdout.contains("peer, link not yet measured"), "\(st)")
        let laptop = try sb.dir("laptop")
        let get1 = try sb.ferry(["cp", "-r", "--api", f.api("wuxi"), "--ca", sb.ca, "--token-file", sb.tokenFile,
                                 "gfs://hlrs/zinc22@2024/H22 Müller ü", laptop + "/one"], timeout: 60)
        #expect(get1.status == 0 && get1.stderr.contains("the replica at hlrs"), "\(get1)")
        #expect(treeDifferences(root + "/H22 Müller ü", laptop + "/one").isEmpty)

        // Replicate to wuxi, asking csc's daemon (it forwards to wuxi's API).
        let rep = try f.ferry("csc", ["replicate", "gfs://hlrs/zinc22@2024", "--to", "wuxi", "--wait"], timeout: 120)
        #expect(rep.status == 0 && rep.stdout.contains("complete"), "\(rep)")
        #expect(treeDifferences(root, sb.file("wuxi/replicas/store/hlrs/zinc22@2024")).isEmpty)
        let again = try f.ferry("wuxi", ["replicate", "gfs://hlrs/zinc22@2024"])
        #expect(again.status == 0 && again.stdout.contains("already complete"), "\(again)")
        // csc learns of wuxi's replica from wuxi's feed; hlrs records it for its own dataset.
        for c in ["csc", "hlrs"] {
            let seen = try eventually(30, { try f.ferry(c, ["stat", "--replicas", "gfs://hlrs/zinc22@2024"]) }) { $0.stdout.contains("\twuxi\tcomplete") }
            #expect(seen.stdout.contains("\twuxi\tcomplete") && seen.stdout.contains("\thlrs\tcomplete"), "\(c): \(seen)")
        }
        // At wuxi, its own replica comes first.
        let local = try f.ferry("wuxi", ["stat", "--replicas", "gfs://hlrs/zinc22@2024"])
        #expect(local.stdout.contains("replica #1\twuxi\tcomplete") && local.stdout.contains("at this center"), "\(local)")

        // hlrs goes down: its entries stay (stale), its replica is skipped, copies come from wuxi.
        f.servers["hlrs"]!.stop()
        let down = try eventually(30, { try f.ferry("csc", ["centers"]) }) { $0.stdout.contains("hlrs\tDOWN") }
        #expect(down.stdout.contains("hlrs\tDOWN (stale)") && down.stdout.contains("wuxi\tup"), "\(down)")
        let stale = try f.ferry("csc", ["ls", "gfs://hlrs/zinc22@2024"])
        #expect(stale.status == 0 && stale.stdout.contains("big.bin") && stale.stderr.contains("stale"), "\(stale)")
        let skip = try f.ferry("csc", ["stat", "--replicas", "gfs://hlrs/zinc22@2024"])
        #expect(skip.stdout.contains("replica #1\twuxi\tcomplete") && skip.stdout.contains("center hlrs is down"), "\(skip)")
        let get2 = try sb.ferry(["cp", "-r", "--api", f.api("csc"), "--ca", sb.ca, "--token-file", sb.tokenFile,
                                 "gfs://hlrs/zinc22@2024", laptop + "/two"], timeout: 60)
        #expect(get2.status == 0 && get2.stderr.contains("the replica at wuxi"), "\(get2)")
        #expect(treeDifferences(root, laptop + "/two").isEmpty)

        // hlrs comes back; a re-registration there (one file changed, one added, one removed)
        // reaches the others.
        try f.start("hlrs")
        try writeFile(root + "/H20 P100/part 0.smi", Array("changed\n".utf8))
        try writeFile(root + "/H20 P100/new one.smi", Array("C\n".utf8))
        unlink(root + "/H21 P200/part 1.smi")
        let rereg = try f.ferry("hlrs", ["register", "/data/zinc", "--dataset", "zinc22@2024"])
        #expect(rereg.status == 0 && rereg.stdout.contains("1 added, 3 changed, 1 removed"), "\(rereg)")
        let caught = try eventually(30, { try f.ferry("csc", ["ls", "-l", "gfs://hlrs/zinc22@2024/H20 P100"]) }) { $0.stdout.contains("new one.smi") }
        #expect(caught.stdout.contains("new one.smi") && !caught.stderr.contains("stale"), "\(caught)")
        let gone = try f.ferry("csc", ["ls", "gfs://hlrs/zinc22@2024/H21 P200"])
        #expect(gone.stdout.split(separator: "\n") == ["part 0.smi", "part 2.smi"], "\(gone)")
        let changed = try eventually(30, { try f.ferry("wuxi", ["stat", "--json", "gfs://hlrs/zinc22@2024/H20 P100/part 0.smi"]) }) { $0.stdout.contains("\"size\":8,") || $0.stdout.contains("\"size\":8}") }
        #expect((changed.stdout.contains("\"size\":8,") || changed.stdout.contains("\"size\":8}")) && !changed.stdout.contains("\"stale\":true"), "\(changed)")
        let up = try f.ferry("csc", ["centers"])
        #expect(up.stdout.contains("hlrs\tup"), "\(up)")
        // csc read hlrs's datasets whole once, and the re-registration through the entry feed:
        // the four rows it wrote and the one tombstone, not the dataset again.
        var counted: [String: Int] = [:]
        for _ in 0..<30 {
            counted = f.federationEntries("csc", peer: "hlrs")
            if counted["changed"] == 4 && counted["removed"] == 1 { break }
            Thread.sleep(forTimeInterval: 1)
        }
        #expect(counted["changed"] == 4 && counted["removed"] == 1 && (counted["whole"] ?? 0) >= 12, "\(counted)")
    }

    @Test("follow = \"datasets\": csc mirrors hlrs's datasets without their entries and asks hlrs for listings (ls, stat, find, du), with its readers applied here; hlrs down: the last answers, marked stale, or a clear error",
          arguments: Backend.allCases)
    func datasetsOnly(_ backend: Backend) throws {
        let f = try FederationE2ETests.start(backend, datasetsOnly: true)
        defer { f.stopAll() }
        let sb = f.sb
        try FederationE2ETests.tranches(sb, "hlrs/data/lib", ["H20 P100", "H21 Müller"]) { i in String(repeating: "CCO\n", count: 100 * (i + 1)) }
        #expect(try f.ferry("hlrs", ["register", "/data/lib", "--dataset", "lib", "--readers", "*"]).status == 0)
        try sb.dir("hlrs/data/mine")
        try writeFile(sb.file("hlrs/data/mine/secret.txt"), Array("x\n".utf8))
        #expect(try f.ferry("hlrs", ["register", "/data/mine", "--dataset", "alice/private"]).status == 0)

        // csc lists the datasets (mirrored), and their entries through hlrs.
        let ds = try eventually(30, { try f.ferry("csc", ["datasets"]) }) { $0.stdout.contains("gfs://hlrs/lib") && $0.stdout.contains("gfs://hlrs/alice/private") }
        #expect(ds.stdout.contains("gfs://hlrs/lib"), "\(ds)")
        let ls = try f.ferry("csc", ["ls", "gfs://hlrs/lib/H21 Müller"])
        #expect(ls.status == 0 && ls.stdout.split(separator: "\n") == ["part 0.smi", "part 1.smi", "part 2.smi"] && !ls.stderr.contains("stale"), "\(ls)")
        let paged = try f.ferry("csc", ["ls", "--limit", "2", "gfs://hlrs/lib/H20 P100"])
        #expect(paged.stdout.split(separator: "\n") == ["part 0.smi", "part 1.smi"] && paged.stderr.contains("--after"), "\(paged)")
        let st = try f.ferry("csc", ["stat", "--json", "gfs://hlrs/lib/H20 P100/part 2.smi"])
        #expect(st.status == 0 && st.stdout.contains("\"size\":1200"), "\(st)")
        let find = try f.ferry("csc", ["find", "--name", "part 1*", "gfs://hlrs/lib"])
        #expect(find.stdout.split(separator: "\n").sorted() == ["H20 P100/part 1.smi", "H21 Müller/part 1.smi"], "\(find)")
        let du = try f.ferry("csc", ["du", "gfs://hlrs/lib"])
        #expect(du.status == 0 && du.stdout.contains("6 files"), "\(du)")
        #expect(try f.ferry("csc", ["ls", "gfs://hlrs/lib/nowhere"]).status != 0)
        // The readers are applied at csc: bob does not see alice's dataset, alice's operator does.
        let bob = try f.ferry("csc", ["ls", "gfs://hlrs/alice/private"], token: f.bobToken)
        #expect(bob.status == 1 && bob.stderr.contains("no dataset"), "\(bob)")
        #expect(try f.ferry("csc", ["ls", "gfs://hlrs/alice/private"]).stdout.contains("secret.txt"))
        // No entry of hlrs's is mirrored at csc; wuxi (follow = "entries") read them whole.
        let cscCount = f.federationEntries("csc", peer: "hlrs")
        #expect(cscCount.values.reduce(0, +) == 0, "\(cscCount)")
        _ = try eventually(30, { try f.ferry("wuxi", ["ls", "gfs://hlrs/lib"]) }) { $0.status == 0 }
        #expect((f.federationEntries("wuxi", peer: "hlrs")["whole"] ?? 0) > 0)

        // hlrs down: what was asked before is answered again, marked stale; what was not, a clear error.
        f.servers["hlrs"]!.stop()
        let stale = try f.ferry("csc", ["ls", "gfs://hlrs/lib/H21 Müller"])
        #expect(stale.status == 0 && stale.stdout.split(separator: "\n").count == 3 && stale.stderr.contains("stale"), "\(stale)")
        let staleStat = try f.ferry("csc", ["stat", "--json", "gfs://hlrs/lib/H20 P100/part 2.smi"])
        #expect(staleStat.status == 0 && staleStat.stdout.contains("\"stale\":true"), "\(staleStat)")
        let unseen = try f.ferry("csc", ["ls", "gfs://hlrs/lib/H20 P100", "--limit", "1"])
        #expect(unseen.status != 0 && unseen.stderr.contains("cannot be reached") && unseen.stderr.contains("follow = \"datasets\""), "\(unseen)")

        // hlrs's API port then answered by a peer that forges entries: csc passes none of them
        // on (502, naming the center), for a listing, a search and a stat alike.
        let forger = try FederationE2ETests.fakePeer(sb, FederationE2ETests.forgingPeer, port: f.apiPort["hlrs"]!)
        defer { kill(-forger.processIdentifier, SIGKILL) }
        for args in [["ls", "gfs://hlrs/lib/H21 Müller"], ["find", "gfs://hlrs/lib"], ["stat", "gfs://hlrs/lib/H20 P100/part 2.smi"]] {
            let forged = try eventually(20, { try f.ferry("csc", args) }) { $0.stderr.contains("center hlrs sent an invalid entry") }
            #expect(forged.status != 0 && forged.stderr.hasPrefix("ferry \(args[0]): error: ") && forged.stderr.contains("center hlrs sent an invalid entry")
                    && !forged.stdout.contains("passwd")
                    && !forged.stdout.contains("shadow") && !forged.stdout.contains("a/b"), "\(args): \(forged)")
        }
        // Down again: the answers kept are the good ones from before, not the forged ones.
        kill(-forger.processIdentifier, SIGKILL)
        kill(forger.processIdentifier, SIGKILL)
        let keptGood = try eventually(20, { try f.ferry("csc", ["ls", "gfs://hlrs/lib/H21 Müller"]) }) { $0.status == 0 }
        #expect(keptGood.stdout.split(separator: "\n") == ["part 0.smi", "part 1.smi", "part 2.smi"] && keptGood.stderr.contains("stale"), "\(keptGood)")
        let keptStat = try f.ferry("csc", ["stat", "--json", "gfs://hlrs/lib/H20 P100/part 2.smi"])
        #expect(keptStat.status == 0 && keptStat.stdout.contains("\"size\":1200") && !keptStat.stdout.contains("shadow"), "\(keptStat)")
    }

    @Test("a replication cut by the source's crash leaves a partial replica, never read from; replicating again completes it")
    func partialReplica() throws {
        let f = try FederationE2ETests.start(.sqlite)
        defer { f.stopAll() }
        let sb = f.sb
        let root = try sb.dir("hlrs/data/ensemble")
        try writeFile(root + "/member 01.grib", (0..<(40 << 20)).map { UInt8(truncatingIfNeeded: ($0 &* 40503) >> 7) })
        for i in 0..<20 { try writeFile(root + "/small \(i).txt", Array("member \(i)\n".utf8)) }
        #expect(try f.ferry("hlrs", ["register", "/data/ensemble", "--dataset", "icon-eu", "--readers", "*"]).status == 0)
        _ = try eventually(30, { try f.ferry("wuxi", ["ls", "gfs://hlrs/icon-eu"]) }) { $0.status == 0 }
        // A negative limit is a 400 naming it, and makes nothing (it was once read as no limit:
        // a job, and a staging replica).
        let negative = TrustTests.http("POST", f.api("wuxi") + "/api/v1/catalog/replicate", token: sb.tokenFile, body: #"{"path":"gfs://hlrs/icon-eu","bwlimit":-1}"#)
        #expect(negative.status == 400 && (TrustTests.object(negative.body)["detail"] as? String ?? "").hasPrefix("bwlimit is 0 or more, not -1"), "\(negative)")
        let noJobs = TrustTests.object(TrustTests.http("GET", f.api("wuxi") + "/api/v1/transfers", token: sb.tokenFile).body)
        #expect((noJobs["transfers"] as? [[String: Any]])?.isEmpty == true, "a refused replication queued a job: \(noJobs)")
        let noReplica = try f.ferry("wuxi", ["stat", "--replicas", "gfs://hlrs/icon-eu"])
        #expect(noReplica.status == 0 && !noReplica.stdout.contains("\twuxi\t"), "a refused replication recorded a replica: \(noReplica)")
        // 8 MiB/s: the copy takes about 5 s; hlrs dies after 1.5 s.
        let rep = try f.ferry("wuxi", ["replicate", "--json", "--bwlimit", "8M", "gfs://hlrs/icon-eu"])
        #expect(rep.status == 0 && rep.stdout.contains("\"state\":\"staging\""), "\(rep)")
        usleep(1_500_000)
        f.servers["hlrs"]!.kill9()
        let partial = try eventually(40, { try f.ferry("wuxi", ["stat", "--replicas", "gfs://hlrs/icon-eu"]) }) { $0.stdout.contains("\twuxi\tpartial") }
        #expect(partial.stdout.contains("replica --\twuxi\tpartial") && partial.stdout.contains("partial replica: not read from"), "\(partial)")
        // Nothing usable while hlrs is down: a copy says why instead of reading the partial one.
        let none = try sb.ferry(["cp", "-r", "--api", f.api("wuxi"), "--ca", sb.ca, "--token-file", sb.tokenFile, "gfs://hlrs/icon-eu", sb.file("laptop")], timeout: 60)
        #expect(none.status != 0 && none.stderr.contains("no usable replica"), "\(none)")
        // hlrs back: replicate again, the partial replica is completed.
        try f.start("hlrs")
        _ = try eventually(30, { try f.ferry("wuxi", ["centers"]) }) { $0.stdout.contains("hlrs\tup") }
        let again = try f.ferry("wuxi", ["replicate", "--wait", "gfs://hlrs/icon-eu"], timeout: 120)
        #expect(again.status == 0 && again.stdout.contains("complete"), "\(again)")
        #expect(treeDifferences(root, sb.file("wuxi/replicas/store/hlrs/icon-eu")).isEmpty)
        let done = try eventually(10, { try f.ferry("wuxi", ["stat", "--replicas", "gfs://hlrs/icon-eu"]) }) { $0.stdout.contains("replica #1\twuxi\tcomplete") }
        #expect(done.stdout.contains("replica #1\twuxi\tcomplete"), "\(done)")
    }

    @Test("the federation routes refuse users, forged and misdirected center assertions")
    func federationAuth() throws {
        let f = try FederationE2ETests.start(.sqlite)
        defer { f.stopAll() }
        // A user's token is not a center's, on every federation route.
        for route in ["/api/v1/federation/changes", "/api/v1/federation/entry-changes?dataset=1&since=1&part=entries",
                      "/api/v1/federation/ls?dataset=1", "/api/v1/federation/stat?dataset=1&path=a", "/api/v1/federation/find?dataset=1",
                      "/api/v1/federation/du?dataset=1",
                      "/api/v1/federation/entries?dataset=1", "/api/v1/federation/replicas"] {
            let user = runTool("/usr/bin/python3", ["-c", """
                import sys, urllib.request, urllib.error
                r = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + open(sys.argv[2]).read().strip()})
                try:
                    urllib.request.urlopen(r, timeout=10); print('200')
                except urllib.error.HTTPError as e:
                    print(e.code, e.read().decode())
                """, f.api("hlrs") + route, f.bobToken])
            #expect(user.output.hasPrefix("403") && user.output.contains("peer centers"), "\(route): \(user.output)")
        }
        // Garbage in place of an assertion and a certificate.
        let garbage = runTool("/usr/bin/python3", ["-c", """
            import sys, urllib.request, urllib.error
            r = urllib.request.Request(sys.argv[1] + '/api/v1/federation/changes', headers={'Authorization': 'FerryCenter ferryc1.AAAA.BBBB', 'X-Ferry-Certificate': 'not-a-cert'})
            try:
                urllib.request.urlopen(r, timeout=10); print('200')
            except urllib.error.HTTPError as e:
                print(e.code, e.read().decode())
            """, f.api("hlrs")])
        #expect(garbage.output.hasPrefix("401") && garbage.output.contains("malformed"), "\(garbage.output)")
        // Every center reports the others as up (its assertions are accepted).
        let centers = try eventually(20, { try f.ferry("wuxi", ["centers"]) }) { $0.stdout.contains("hlrs\tup") && $0.stdout.contains("csc\tup") }
        #expect(centers.stdout.contains("hlrs\tup") && centers.stdout.contains("csc\tup"), "\(centers)")
    }

    /// A peer that answers the federation API with garbage (wuxi's API port taken over by a
    /// Python server once wuxi's daemon is stopped), one kind of garbage at a time.
    static let hostilePeer = #"""
        modefile = sys.argv[2]
        MODES = ["garbage", "shape", "escape", "loop", "huge", "good", "nonadvance", "badtomb"]
        FEED = ("nonadvance", "badtomb")  # a dataset read whole once, then a hostile entry feed
        class H(Peer):
            def do_GET(self):
                mode = open(modefile).read().strip()
                k = MODES.index(mode) + 1  # this mode's change seq and dataset id
                u = urllib.parse.urlparse(self.path)
                q = urllib.parse.parse_qs(u.query)
                if mode == "garbage":
                    return self.send(200, b"\x00\xffthis is not JSON")
                if u.path == "/api/v1/federation/changes":
                    if mode == "shape":
                        return self.send(200, json.dumps({"changes": "all of them", "last_seq": "many"}).encode())
                    after = int(q.get("after", ["0"])[0])
                    if mode in FEED:  # a change of dataset k at every round
                        changes = [{"seq": after + 1, "center": "wuxi", "dataset": k, "kind": "dataset.update", "at": 0}]
                        return self.send(200, json.dumps({"changes": changes, "last_seq": after + 1}).encode())
                    changes = [{"seq": k, "center": "wuxi", "dataset": k, "kind": "dataset.register", "at": 0}] if after < k else []
                    return self.send(200, json.dumps({"changes": changes, "last_seq": k}).encode())
                if u.path == "/api/v1/federation/entry-changes" and mode in FEED:
                    since = int(q["since"][0])
                    page = {"dataset": mode, "entry_seq": 5, "floor": 0, "resync": since == 0, "entries": [], "removed": [], "next": None}
                    if since > 0 and mode == "nonadvance":  # a cursor that stays where it was asked from
                        page["next"] = {"seq": since, "dir": "", "name": ""}
                    elif since > 0:
                        page["removed"] = [{"seq": 5, "dir": "../..", "name": "etc"}]
                    return self.send(200, json.dumps(page).encode())
                if u.path == "/api/v1/federation/datasets/%d" % k:
                    return self.send(200, json.dumps({"id": k, "center": "wuxi", "name": mode, "version": "", "owner": "alice",
                        "description": "", "license": "", "readers": ["*"], "file_count": 2, "bytes": 3,
                        "created": 0, "updated": 0}).encode())
                if u.path == "/api/v1/federation/entries":
                    limit = int(q["limit"][0])
                    if mode == "escape":
                        es = [entry(k, "", "a"), entry(k, "sub/../../..", "passwd")]
                    elif mode == "loop":  # a full page, the same one whatever is asked: paging never ends
                        es = [entry(k, "", "f%06d" % i) for i in range(limit)]
                    elif mode == "huge":  # no length, and more than any page: streamed until cut off
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Connection", "close")
                        self.end_headers()
                        try:
                            self.wfile.write(b'{"entries": [')
                            for _ in range(160):
                                self.wfile.write(b" " * (1 << 20))
                        except OSError:
                            pass
                        self.close_connection = True
                        return
                    else:
                        es = [entry(k, "", "README"), entry(k, "", "data", "d"), entry(k, "data", "x.bin")]
                    return self.send(200, json.dumps({"dataset": mode, "next_after": None, "entries": es}).encode())
                if u.path == "/api/v1/federation/replicas":
                    return self.send(200, b'{"replicas": []}')
                self.send(404, b'{"error": "no such route"}')
        """#

    /// What every fake peer's script has: `port`, `entry(...)`, a handler base with `send`,
    /// and (after the script's `H`) the server on 127.0.0.1:`port`.
    static let fakePeerPrelude = #"""
        import sys, json, http.server, urllib.parse
        port = int(sys.argv[1])
        def entry(ds, d, n, kind="f"):
            return {"dataset": ds, "dir": d, "name": n, "kind": kind, "size": 0 if kind == "d" else 3,
                    "mtime_ns": 1700000000000000000, "mode": 0o644, "digest": None, "chunk_size": 0, "target": None}
        class Peer(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *a): pass
            def send(self, code, body):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        """#
    static let fakePeerServe = #"""

        class S(http.server.ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True
        S(("127.0.0.1", port), H).serve_forever()
        """#

    /// A Python HTTP server (`source`: a handler `H` on `fakePeerPrelude`, given the port and
    /// `args`) in place of a peer's API, for at most 300 s.
    static func fakePeer(_ sb: Sandbox, _ source: String, port: Int, _ args: String...) throws -> Process {
        let script = sb.file("fake-peer-\(port).py")
        try writeFile(script, Array((fakePeerPrelude + source + fakePeerServe).utf8))
        let fake = Process()
        fake.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        fake.arguments = ["-k", "5", "300", "/usr/bin/python3", script, String(port)] + args
        fake.standardOutput = FileHandle.nullDevice
        fake.standardError = FileHandle.nullDevice
        fake.standardInput = FileHandle.nullDevice
        try withSignalsUnblocked { try fake.run() }
        return fake
    }

    /// A peer followed with `follow = "datasets"` whose forwarded listings and entries name
    /// paths no scan makes (a parent that climbs out, a name with a slash).
    static let forgingPeer = #"""
        class H(Peer):
            def do_GET(self):
                u = urllib.parse.urlparse(self.path)
                if u.path in ("/api/v1/federation/ls", "/api/v1/federation/find"):
                    page = {"dataset": "lib", "entries": [entry(1, "../../etc", "passwd"), entry(1, "", "a/b")], "more": False, "next_after": None}
                    return self.send(200, json.dumps(page).encode())
                if u.path == "/api/v1/federation/stat":
                    ds = {"id": 1, "center": "hlrs", "name": "lib", "version": "", "owner": "alice", "description": "", "license": "",
                          "readers": ["*"], "file_count": 6, "bytes": 3, "created": 0, "updated": 0}
                    return self.send(200, json.dumps({"dataset": ds, "entry": entry(1, "..", "shadow"), "replicas": [], "stale": False}).encode())
                self.send(404, b'{"error": "no such route"}')
        """#

    @Test("a peer answering garbage, wrong shapes, escaping paths, endless pages or an endless body is refused and marked down; nothing of it is mirrored; a good answer then is")
    func hostilePeer() throws {
        let f = try FederationE2ETests.start(.sqlite)
        defer { f.stopAll() }
        let sb = f.sb
        _ = try eventually(20, { try f.ferry("hlrs", ["centers"]) }) { $0.stdout.contains("wuxi\tup") }
        f.servers["wuxi"]!.stop()
        let modeFile = sb.file("mode")
        try writeFile(modeFile, Array("garbage".utf8))
        let fake = try FederationE2ETests.fakePeer(sb, FederationE2ETests.hostilePeer, port: f.apiPort["wuxi"]!, modeFile)
        defer { kill(-fake.processIdentifier, SIGKILL) }
        let log = f.servers["hlrs"]!.process
        // Each kind of garbage: hlrs logs why it refused it, reports wuxi down, keeps serving.
        let cases: [(mode: String, reason: String)] = [
            ("garbage", "sent a malformed change feed: The given data was not valid JSON"),
            ("shape", "sent a malformed change feed: expected Array"),
            ("escape", "sent an invalid page of escape, refused: entry 'sub/../../../passwd': the parent is not a relative path of plain components"),
            ("loop", "sent an invalid page of loop, refused: entry 'f000000' is out of key order"),
            ("huge", "an answer larger than 64 MiB, cut off"),
        ]
        for c in cases {
            try writeFile(modeFile, Array(c.mode.utf8))
            let logged = waitUntil(timeout: 30, interval: 0.2) { log.stderr.contains(c.reason) }
            #expect(logged, "\(c.mode): \(log.stderr.suffix(2000))")
            let centers = try f.ferry("hlrs", ["centers"])
            #expect(centers.status == 0 && centers.stdout.contains("wuxi\tDOWN"), "\(c.mode): \(centers)")
        }
        // Nothing of a refused page is in the catalog: no escaping path, no endless listing.
        let escape = try f.ferry("hlrs", ["find", "gfs://wuxi/escape"])
        #expect(!escape.stdout.contains("passwd") && !escape.stdout.contains("a\n"), "\(escape)")
        // The endless pager's first page was a good one, but the repeat refused the rest: its
        // first pass never ended, so no reader sees a dataset that is not whole.
        let loop = try f.ferry("hlrs", ["find", "--limit", "100000", "gfs://wuxi/loop"], timeout: 120)
        #expect(loop.status != 0 && loop.stdout.isEmpty, "\(loop)")
        // The same peer answering well is followed again: the control that shows the garbage
        // above, not the test's fake, was what hlrs refused.
        try writeFile(modeFile, Array("good".utf8))
        let good = try eventually(30, { try f.ferry("hlrs", ["find", "gfs://wuxi/good"]) }) { $0.stdout.contains("x.bin") }
        #expect(good.status == 0 && good.stdout.contains("README") && good.stdout.contains("data/x.bin"), "\(good)")
        let up = try eventually(10, { try f.ferry("hlrs", ["centers"]) }) { $0.stdout.contains("wuxi\tup") }
        #expect(up.stdout.contains("wuxi\tup"), "\(up)")
        // The entry feed of a dataset read whole once: a cursor that does not move and a
        // tombstone that escapes are refused; the mirror keeps what the whole read gave.
        for c in [(mode: "nonadvance", reason: "sent a page of changes that does not advance"),
                  (mode: "badtomb", reason: "sent an invalid page of changes of badtomb, refused: entry '../../etc': the parent is not a relative path of plain components")] {
            try writeFile(modeFile, Array(c.mode.utf8))
            let logged = waitUntil(timeout: 30, interval: 0.2) { log.stderr.contains(c.reason) }
            #expect(logged, "\(c.mode): \(log.stderr.suffix(2000))")
            let kept = try f.ferry("hlrs", ["find", "gfs://wuxi/" + c.mode])
            #expect(kept.status == 0 && kept.stdout.contains("README") && kept.stdout.contains("data/x.bin"), "\(c.mode): \(kept)")
        }
        // hlrs's own data was served throughout.
        #expect(try f.ferry("hlrs", ["datasets"]).status == 0)
    }

    @Test("a teardown removes the job's own link only: a parent swapped for a symbolic link does not lead the daemon's unlink into another directory",
          .enabled(if: E2E.isRoot, "mounting a tmpfs needs root"))
    func teardownConfined() throws {
        let f = try FederationE2ETests.start(.sqlite, stagingMiB: 64)
        defer { f.stopAll() }
        let sb = f.sb
        let job8 = sb.file("hlrs/data/job8")
        let staged = try f.stageSmall(job: "8", into: job8 + "/in")
        #expect(staged.status == 0, "\(staged)")
        let target = try FileManager.default.destinationOfSymbolicLink(atPath: job8 + "/in")
        // Another directory holds a link to the same data; the job's directory is then moved
        // away and a symbolic link to that other directory put in its place.
        let victim = try sb.dir("hlrs/data/victim")
        try FileManager.default.createSymbolicLink(atPath: victim + "/in", withDestinationPath: target)
        try FileManager.default.moveItem(atPath: job8, toPath: job8 + ".moved")
        try FileManager.default.createSymbolicLink(atPath: job8, withDestinationPath: "victim")
        let down = try sb.ferry(["stage", "teardown", "--api", f.api("hlrs"), "--ca", sb.ca, "--token-file", sb.tokenFile, "--job", "8"])
        #expect(down.status == 0, "\(down)")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: victim + "/in")) == target, "the other directory's link stays")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: job8 + ".moved/in")) == target, "not where it was recorded: left alone")
        // Put back, a second teardown finds no records left: nothing is removed.
        try FileManager.default.removeItem(atPath: job8)
        try FileManager.default.moveItem(atPath: job8 + ".moved", toPath: job8)
        #expect(try sb.ferry(["stage", "teardown", "--api", f.api("hlrs"), "--ca", sb.ca, "--token-file", sb.tokenFile, "--job", "8"]).status == 0)
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: job8 + "/in")) == target)
    }

    @Test("a destination holding a link Ferry did not make is refused on every ask, and never replaced: the refused ask leaves no record that would make it Ferry's",
          .enabled(if: E2E.isRoot, "mounting a tmpfs needs root"))
    func occupiedDestination() throws {
        let f = try FederationE2ETests.start(.sqlite, stagingMiB: 64)
        defer { f.stopAll() }
        let sb = f.sb
        // Job 8 stages the dataset: its entry is ready, so job 9's first ask links at once
        // (and records the link in the same transaction as its pin).
        #expect(try f.stageSmall(job: "8", into: sb.file("hlrs/data/job8/in")).status == 0)
        let job9 = try sb.dir("hlrs/data/job9")
        try FileManager.default.createSymbolicLink(atPath: job9 + "/in", withDestinationPath: "/etc")
        for attempt in 1...2 {
            let refused = try f.stageSmall(job: "9", into: job9 + "/in")
            #expect(refused.status == 1 && refused.stderr.contains("Ferry did not make"), "ask \(attempt): \(refused)")
            #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: job9 + "/in")) == "/etc", "ask \(attempt)")
        }
        let status = try sb.ferry(["stage", "status", "--api", f.api("hlrs"), "--ca", sb.ca, "--token-file", sb.tokenFile, "--job", "9", "--json"])
        #expect(status.status == 0 && !status.stdout.contains(job9 + "/in"), "no link recorded for job 9: \(status)")
        #expect(try sb.ferry(["stage", "teardown", "--api", f.api("hlrs"), "--ca", sb.ca, "--token-file", sb.tokenFile, "--job", "9"]).status == 0)
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: job9 + "/in")) == "/etc")
    }

    @Test("a full staging cache: the stage-in fails with the reason and links nothing; with room again, asked again, it completes identical",
          .enabled(if: E2E.isRoot, "mounting a tmpfs needs root"))
    func stagingDiskFull() throws {
        let f = try FederationE2ETests.start(.sqlite, stagingMiB: 8)
        defer { f.stopAll() }
        let sb = f.sb
        let ds = try sb.dir("wuxi/data/big")
        try writeRandomFile(ds + "/big.bin", size: 24 * E2E.MiB)
        #expect(try f.ferry("wuxi", ["register", "/data/big", "--dataset", "big", "--readers", "*"]).status == 0)
        _ = try eventually(30, { try f.ferry("hlrs", ["ls", "gfs://wuxi/big"]) }) { $0.status == 0 }
        let dst = sb.file("hlrs/data/job7/in")
        let script = sb.file("job7.sh")
        try writeFile(script, Array("#!/bin/sh\n#FERRY stage_in gfs://wuxi/big \(dst)\n".utf8))
        func stageIn() throws -> CpResult {
            try sb.ferry(["stage-in", "--api", f.api("hlrs"), "--ca", sb.ca, "--token-file", sb.tokenFile, "--job", "7", "--script", script, "--uid", "0"], timeout: 150)
        }
        // 24 MiB into 8: the transfer fails on the full disk (after its retry); the hook's last
        // line says which source and why; no link is made; the daemon carries on.
        let full = try stageIn()
        let reason = full.stderr.split(separator: "\n").last.map(String.init) ?? ""
        #expect(full.status == 1 && reason.contains("gfs://wuxi/big") && reason.lowercased().contains("space"), "\(full)")
        #expect(!FileManager.default.fileExists(atPath: dst))
        #expect(f.servers["hlrs"]!.process.isRunning)
        // The operator makes room; the scheduler asks again (a requeue): staged, identical.
        try sb.remountTmpfs(at: sb.file("hlrs/replicas/stage"), sizeMiB: 64)
        let again = try stageIn()
        #expect(again.status == 0 && again.stdout.contains("done"), "\(again)")
        #expect(filesIdentical(dst + "/big.bin", ds + "/big.bin"))
    }
}
