import Glibc
import Testing
@testable import Transfer

@Suite("Wire codec")
struct WireTests {
    @Test("a manifest entry survives encode and decode")
    func manifestRoundTrip() throws {
        let e = ManifestEntry(id: 42, kind: .symlink, path: "a/b c/é", size: 0, mtimeSeconds: 1_700_000_000, mtimeNanoseconds: 123, mode: 0o755, linkTarget: "../x")
        var w = ByteWriter()
        e.encode(&w)
        var r = ByteReader(w.bytes)
        let d = try ManifestEntry.decode(&r)
        try r.expectEnd()
        #expect(d.id == 42 && d.kind == .symlink && d.path == "a/b c/é" && d.linkTarget == "../x")
        #expect(d.mtimeSeconds == 1_700_000_000 && d.mtimeNanoseconds == 123 && d.mode == 0o755)
    }

    @Test("every truncation of a message is refused with a protocol error, never a trap")
    func truncatedMessages() throws {
        let hello = Hello(token: Array("tok".utf8), direction: .push, path: "x/y", options: TransferOptions()).encode()
        #expect(try Hello.decode(hello).path == "x/y")
        for n in 0..<hello.count {
            #expect(throws: TransferError.self) { try Hello.decode(Array(hello[0..<n])) }
        }
        #expect(throws: TransferError.self) { try Hello.decode(hello + [0]) }
    }

    @Test("a plan claiming more resume entries than its frame holds is refused before allocating")
    func hostilePlanCount() {
        var w = ByteWriter()
        w.u64(1)
        w.u8(2)
        w.u32(UInt32.max)
        var r = ByteReader(w.bytes)
        #expect(throws: TransferError.self) { try PlanEntry.decode(&r) }
    }

    @Test("invalid UTF-8 and over-long strings are refused")
    func badStrings() {
        var w = ByteWriter()
        w.u16(2)
        w.raw([0xC3, 0x28])
        var r = ByteReader(w.bytes)
        #expect(throws: TransferError.self) { try r.string(maxBytes: 100) }
        var w2 = ByteWriter()
        w2.string(String(repeating: "a", count: 300))
        var r2 = ByteReader(w2.bytes)
        #expect(throws: TransferError.self) { try r2.string(maxBytes: 255) }
    }

    @Test("frame headers: unknown type and nonzero reserved bytes are refused")
    func frameHeaders() throws {
        let good: [UInt8] = [5, 0, 0, 0, FrameType.hello.rawValue, 0, 0, 0]
        #expect(try FrameHeader(good).length == 5)
        #expect(throws: TransferError.self) { try FrameHeader([5, 0, 0, 0, 0x55, 0, 0, 0]) }
        #expect(throws: TransferError.self) { try FrameHeader([5, 0, 0, 0, 1, 0, 1, 0]) }
        let huge: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, FrameType.chunk.rawValue, 0, 0, 0]
        #expect(try FrameHeader(huge).length == Int(UInt32.max))
    }

    @Test("addresses and URLs: IPv4, bracketed IPv6, ports, paths")
    func endpoints() throws {
        #expect(try HostPort(parsing: "[::1]:7700") == HostPort(host: "::1", port: 7700))
        #expect(try HostPort(parsing: "127.0.0.1:0").port == 0)
        #expect(throws: TransferError.self) { try HostPort(parsing: "::1:7700") }
        #expect(throws: TransferError.self) { try HostPort(parsing: "host:99999") }
        #expect(try Endpoint(parsing: "ferry://[2001:db8::1]:7700/data/x") == .remote(HostPort(host: "2001:db8::1", port: 7700), path: "/data/x"))
        #expect(try Endpoint(parsing: "ferry://h:1") == .remote(HostPort(host: "h", port: 1), path: "/"))
        #expect(try Endpoint(parsing: "./local") == .local("./local"))
    }

    @Test("compression modes parse like the CLI documents")
    func compressionModes() throws {
        #expect(try CompressionMode(parsing: "auto") == .auto)
        #expect(try CompressionMode(parsing: "off") == .off)
        #expect(try CompressionMode(parsing: "19") == .level(19))
        #expect(throws: TransferError.self) { try CompressionMode(parsing: "20") }
        #expect(throws: TransferError.self) { try CompressionMode(parsing: "fast") }
    }
}

@Suite("Paths")
struct PathTests {
    @Test("wire paths: '..', '.', empty components, absolute paths and NUL are refused")
    func components() throws {
        #expect(try Paths.components(of: "a/b/c").count == 3)
        #expect(try Paths.components(of: "").isEmpty)
        // "/\u{301}" is one Swift Character but starts with the byte '/': found by the fuzzer.
        for bad in ["../x", "a/../b", "/etc/passwd", "a//b", "a/./b", "a/", "a\u{0}b", String(repeating: "x", count: 256),
                    "/\u{301}x", "../\u{301}", "a/..\u{301}/../b", "a/\u{301}/../.."] {
            #expect(throws: TransferError.self, "\(bad)") { try Paths.components(of: bad) }
        }
    }

    @Test("user URL paths are normalised and '..' refused")
    func remoteRelative() throws {
        #expect(try Paths.remoteRelative("/a/./b/").path == "a/b")
        #expect(try Paths.remoteRelative("/a/./b/").trailingSlash)
        #expect(try Paths.remoteRelative("//").path == "")
        #expect(throws: TransferError.self) { try Paths.remoteRelative("//etc/passwd") }
        #expect(throws: TransferError.self) { try Paths.remoteRelative("/a/../../etc") }
    }

    @Test("openat2 beneath a root refuses a symlink leading out, follows one inside")
    func confinedOpen() throws {
        let dir = try TempDir()
        mkdir(dir.path + "/root", 0o755)
        mkdir(dir.path + "/root/in", 0o755)
        _ = "inside".withCString { p in
            let fd = open(dir.path + "/root/in/f", O_CREAT | O_WRONLY, 0o644)
            write(fd, p, 6)
            close(fd)
        }
        symlink("/etc", dir.path + "/root/out")
        symlink("in", dir.path + "/root/alias")
        let root = open(dir.path + "/root", O_RDONLY | O_DIRECTORY)
        defer { close(root) }
        #expect(throws: TransferError.self) { try Paths.open(beneath: root, "out/passwd", flags: O_RDONLY) }
        let fd = try Paths.open(beneath: root, "alias/f", flags: O_RDONLY)
        close(fd)
        #expect(throws: TransferError.self) { try Paths.open(beneath: root, "alias/f", flags: O_RDONLY, noSymlinks: true) }
    }

    @Test("helper names stay within NAME_MAX for the longest names")
    func helperNames() {
        let long = String(repeating: "n", count: 255)
        #expect(PartialNames.part(long).utf8.count <= 255)
        #expect(PartialNames.journal(long).utf8.count <= 255)
        #expect(PartialNames.isHelper(PartialNames.part("x")))
        #expect(!PartialNames.isHelper("x.ferry-part"))
        #expect(PartialNames.isHelper(PartialNames.part("\u{301}x")))
        #expect(PartialNames.isHelper(PartialNames.journal("x\u{600}")))
    }

    @Test("a striped file's ranges share a partial named after the source's version: another version, a whole-file copy and another name each have their own")
    func rangePartNames() {
        func part(_ name: String, size: UInt64 = 1 << 30, mtime: Int64 = 1_700_000_000, ns: UInt32 = 5, chunk: Int = 4 << 20) -> String {
            PartialNames.rangePart(name, size: size, mtimeSeconds: mtime, mtimeNanoseconds: ns, chunkBytes: chunk)
        }
        let mine = part("big.bin")
        #expect(mine == part("big.bin") && mine.hasPrefix(".big.bin.v") && mine.hasSuffix(".ferry-stripe") && PartialNames.isHelper(mine))
        let others = [part("big.bin", size: 1 << 31), part("big.bin", mtime: 1), part("big.bin", ns: 6), part("big.bin", chunk: 8 << 20), part("big.bin2")]
        #expect(Set(others + [mine]).count == 6, "versions share a partial: \(others)")
        // A whole-file partial never has a range partial's name, whatever the file is called.
        let version = String(mine.dropFirst(".big.bin.".count).dropLast(".ferry-stripe".count))
        #expect(PartialNames.part("big.bin") != mine && PartialNames.part("big.bin." + version) != mine)
        #expect(!PartialNames.isHelper("big.bin.ferry-stripe"))
        let long = String(repeating: "n", count: 255)
        #expect(part(long).utf8.count <= 255 && PartialNames.isHelper(part(long)) && part(long) != part(long, mtime: 2))
    }
}

/// A temporary directory removed at the end of the test.
final class TempDir {
    let path: String
    init() throws {
        var template = Array("/tmp/ferry-unit-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TransferError(.io, "mkdtemp failed") }
        path = String(cString: p)
    }
    /// An O_RDONLY descriptor of the directory, closed with it.
    lazy var fd: Int32 = open(path, O_RDONLY | O_DIRECTORY)

    deinit {
        if fd >= 0 { close(fd) }
        let cmd = "rm -rf '\(path)'"
        _ = system(cmd)
    }
}
