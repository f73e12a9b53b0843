import Testing
@testable import Transfer

/// One parser per concept (issue 14 item 5): `Location` / `FerryURL`, `ByteSize`, `CenterName`,
/// fed what users, jobs and peers could write, hostile or not.
@Suite("Locations, sizes, center names")
struct LocationTests {
    func url(_ s: String) throws -> FerryURL {
        guard case .ferry(let u) = try Location(parsing: s) else { throw TransferError(.usage, "not ferry") }
        return u
    }

    @Test("ferry:// URLs: HOST:PORT, [IPv6]:PORT, a peer's name, paths")
    func ferryURLs() throws {
        let a = try url("ferry://dtn.hlrs.example:7700/scratch/alice/run1")
        #expect(a.host == "dtn.hlrs.example" && a.port == 7700 && a.path == "/scratch/alice/run1" && a.authority == "dtn.hlrs.example:7700")
        #expect(a.address == HostPort(host: "dtn.hlrs.example", port: 7700))
        let v6 = try url("ferry://[2001:db8::10]:7700/datasets/era5/2024.nc")
        #expect(v6.host == "2001:db8::10" && v6.port == 7700 && v6.hostForURL == "[2001:db8::10]" && v6.authority == "[2001:db8::10]:7700")
        let peer = try url("ferry://wuxi/incoming/run1")
        #expect(peer.authority == "wuxi" && peer.port == nil && peer.address == nil && peer.path == "/incoming/run1")
        #expect(try url("ferry://h:1").path == "/" && url("ferry://[::1]").port == nil)
        // Percent signs are characters of the name, never decoded.
        #expect(try url("ferry://h:1/a%2Fb/%2e%2e").path == "/a%2Fb/%2e%2e")
        #expect(try Endpoint(parsing: "ferry://[::1]:7700/x") == .remote(HostPort(host: "::1", port: 7700), path: "/x"))
        #expect(try Endpoint(parsing: "./local dir/ü") == .local("./local dir/ü"))
        #expect(try Location(parsing: "/scratch/a") == .local("/scratch/a"))
    }

    @Test("hostile ferry:// URLs are refused, naming the text without its control characters")
    func hostileURLs() throws {
        let bad = [
            "ferry://", "ferry:///x", "ferry://:7700/x", "ferry://h:/x", "ferry://h:0/x", "ferry://h:65536/x", "ferry://h:99999999999999999999/x",
            "ferry://h:-1/x", "ferry://h:+80/x", "ferry://h: 80/x", "ferry://h:0x50/x", "ferry://h:80:81/x", "ferry://::1:7700/x",
            "ferry://[::1/x", "ferry://[::1]x:7700/x", "ferry://[]:7700/x", "ferry://[::1%eth0]:7700/x", "ferry://[fe80::g]:1/x", "ferry://[dtn.example]:1/x",
            "ferry://user@h:1/x", "ferry://h?x=1:1/x", "ferry://h#f/x", "ferry://h%2e:1/x", "ferry://-h:1/x", "ferry://.h:1/x", "ferry://h\u{0}:1/x",
            "ferry://h\n:1/x", "ferry://h\u{1b}[31m/x", "ferry://hü:1/x", "ferry:// h:1/x",
            "ferry://h:1/a/../b", "ferry://h:1/..", "ferry://h:1/a/\u{0}b",
            "ferry://h:1/a/../\u{301}b", "ferry://h:1/\u{301}/../x",  // "/" + a combining mark: one Character, still a separator on disk
            "ferry://" + String(repeating: "h", count: 254) + ":1/x",
            "ferry://h:1/" + String(repeating: "p", count: 4100),
        ]
        for b in bad {
            #expect(throws: TransferError.self, "\(b.prefix(60).debugDescription)") { try Location(parsing: b) }
            do { _ = try Location(parsing: b) } catch let e as TransferError {
                #expect(!e.message.unicodeScalars.contains { $0.value < 0x20 }, "\(e.message.debugDescription)")
                #expect(e.message.utf8.count < 1000)
            }
        }
        // The longest host that is allowed, and a path just at the limit.
        #expect(try url("ferry://" + String(repeating: "h", count: 253) + ":1/x").host.utf8.count == 253)
        // Endpoint (ferry cp) needs a port; a job names a peer without one.
        #expect(throws: TransferError.self) { try Endpoint(parsing: "ferry://wuxi/x") }
        #expect(throws: TransferError.self) { try Endpoint(parsing: "") }
        #expect(throws: TransferError.self) { try Endpoint(parsing: "gfs://wuxi/x") }
        // Configured addresses (listen, [[peer]], allow_hosts): decimal ports only, 0 allowed to listen.
        #expect(try HostPort(parsing: "[::]:0").port == 0 && HostPort(parsing: "h:65535").port == 65535)
        for b in ["h:+80", "h:-1", "h: 80", "h:0x50", "h:65536", "h:", ":80", "h:000080", "[::1]80", "::1:80"] {
            #expect(throws: TransferError.self, "\(b)") { try HostPort(parsing: b) }
        }
    }

    @Test("gfs:// paths and /EXPORT/PATH job paths")
    func gfsAndExportPaths() throws {
        #expect(try Location(parsing: "gfs://wuxi/datasets/zinc22//./H20/") == .gfs(center: "wuxi", components: ["datasets", "zinc22", "H20"]))
        #expect(try Location(parsing: "gfs://wuxi/a%20b") == .gfs(center: "wuxi", components: ["a%20b"]))
        for b in ["gfs://", "gfs:///x", "gfs://c_d/x", "gfs://c:1/x", "gfs://c/../x", "gfs://c/a\u{0}", "gfs://" + String(repeating: "c", count: 64) + "/x",
                  "gfs://c/" + String(repeating: "n", count: 256), "gfs://[::1]/x"] {
            #expect(throws: TransferError.self, "\(b.prefix(40))") { try Location(parsing: b) }
        }
        #expect(throws: TransferError.self) { try Location.gfsParts(Array("gfs://c/".utf8) + [0xFF]) }
        #expect(try Location.exportComponents("/scratch//alice/run1/") == ["scratch", "alice", "run1"])
        #expect(try Location.exportComponents("/scratch/a/\u{301}b") == ["scratch", "a", "\u{301}b"])
        for b in ["", "/", "relative/x", "/scratch/../etc", "/scratch/./x", "/scratch/a\u{0}b", "/scratch/../\u{301}etc", "\u{301}/scratch"] {
            #expect(throws: TransferError.self, "\(b)") { try Location.exportComponents(b) }
        }
        #expect(throws: TransferError.self) { try Location(parsing: "") }
        #expect(throws: TransferError.self) { try Location(parsing: "a\u{0}b") }
    }

    @Test("one size parser: units, spellings, and what is not a size")
    func sizes() throws {
        let good: [(String, UInt64)] = [("4096", 4096), ("512K", 512 << 10), ("64M", 64 << 20), ("4MiB", 4 << 20), ("4MB", 4 << 20), ("4m", 4 << 20),
                                        ("1G", 1 << 30), ("1.5G", 3 << 29), ("2T", 2 << 40), ("1P", 1 << 50), ("100B", 100), (" 8k ", 8192), ("0", 0), (".5K", 512),
                                        ("8388607T", 8_388_607 << 40)]
        for (t, v) in good { #expect(try ByteSize.parse(t) == v, "\(t)") }
        let bad = ["", " ", "B", "K", "KiB", "-1", "+1", "1e3", "0x10", "0x1p3", "inf", "nan", "1..5", "1.5.1", "4i", "4iB", "4 M", "4MM", "1Q", "٣",
                   "8388608T", "9223372036854775808", "99999999999999999999", "8E", "1\u{0}", String(repeating: "9", count: 400)]
        for t in bad { #expect(throws: TransferError.self, "\(t.prefix(30))") { try ByteSize.parse(t) } }
    }

    @Test("one center-name rule")
    func centerNames() throws {
        for n in ["hlrs", "wuxi", "c-1", "a.b", "A9", String(repeating: "c", count: 63)] { #expect(CenterName.isValid(n), "\(n)") }
        for n in ["", "-c", ".c", "c_d", "c d", "c/d", "c:1", "ü", "c\u{0}", String(repeating: "c", count: 64)] {
            #expect(!CenterName.isValid(n), "\(n)")
            #expect(throws: TransferError.self) { try CenterName.validate(n) }
        }
    }
}
