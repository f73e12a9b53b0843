// The client's configuration file (issue 16, "Client configuration"): a copy by center name
// with no environment; the name pins the center the server must prove to be; options beat the
// file; every mistake of a file reported at once; the registered port when a URL has none.

import Foundation
import Testing

@Suite("Client configuration")
struct ClientConfigTests {
    @Test("ferry cp to ferry://NAME/PATH with only a config file (found by FERRY_CONFIG or in ~/.config/ferry): the CA and token from it, NAME's address, the server must be center NAME; an option beats the file")
    func copyByName() throws {
        let sb = try Sandbox("client-config")
        let root = try sb.dir("root")
        let src = try sb.dir("local") + "/x.bin"
        try writeRandomFile(src, size: 300_000)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        // Relative paths are relative to the file's own directory.
        let dir = try sb.dir("home/.config/ferry")
        try FileManager.default.copyItem(atPath: sb.ca, toPath: dir + "/ca.crt")
        try FileManager.default.copyItem(atPath: sb.tokenFile, toPath: dir + "/me.token")
        let config = dir + "/config.toml"
        try writeFile(config, Array("""
            # a user's configuration
            ca = "ca.crt"
            token_file = "me.token"

            [[center]]
            name = "hlrs"
            address = "\(server.address)"

            [[center]]
            name = "wuxi"            # a wrong name for that server: it is hlrs, not wuxi
            address = "\(server.address)"
            """.utf8))
        let none: [String: String?] = ["FERRY_CA": nil, "FERRY_TOKEN_FILE": nil, "FERRY_API": nil]
        func run(_ args: [String], _ env: [String: String?]) throws -> CpResult {
            sb.finish(try FerryProcess(args, logDir: sb.path + "/logs", environment: none.merging(env) { _, b in b }), timeout: 60)
        }
        let byName = try run(["cp", src, "ferry://hlrs/copy.bin"], ["FERRY_CONFIG": config])
        #expect(byName.status == 0 && filesIdentical(src, root + "/copy.bin"), "\(byName)")
        // Without FERRY_CONFIG: $HOME/.config/ferry/config.toml.
        let viaHome = try run(["cp", src, "ferry://hlrs/home.bin"], ["FERRY_CONFIG": nil, "XDG_CONFIG_HOME": nil, "HOME": sb.file("home")])
        #expect(viaHome.status == 0 && filesIdentical(src, root + "/home.bin"), "\(viaHome)")
        // The name is the center the server must prove to be.
        let wrong = try run(["cp", src, "ferry://wuxi/other.bin"], ["FERRY_CONFIG": config])
        #expect(wrong.status != 0 && wrong.stderr.contains("wuxi"), "the server is hlrs, not the wuxi the file names: \(wrong)")
        #expect(!FileManager.default.fileExists(atPath: root + "/other.bin"))
        // An option beats the file: a token file that does not exist is refused by its name.
        let option = try run(["cp", "--token-file", sb.file("none.token"), src, "ferry://hlrs/c2.bin"], ["FERRY_CONFIG": config])
        #expect(option.status != 0 && option.stderr.contains("none.token"), "\(option)")
        // No file, no environment: the message says all three ways.
        let nothing = try run(["cp", src, "ferry://hlrs/c3.bin"], ["FERRY_CONFIG": ""])
        #expect(nothing.status == 64 && nothing.stderr.contains("--ca FILE, FERRY_CA, or ca = "), "\(nothing)")
        #expect(server.isRunning)
    }

    @Test("a configuration with three mistakes reports all three with the file's name; a TOML error has its line; an unknown key is a mistake")
    func mistakes() throws {
        let sb = try Sandbox("client-config-bad")
        let src = try sb.dir("local") + "/x"
        try writeFile(src, Array("x\n".utf8))
        let bad = sb.file("bad.toml")
        try writeFile(bad, Array("""
            ca = "ca.crt"
            tokenfile = "me.token"
            api = "dtn:7480"
            [[center]]
            name = "Not A Name!"
            address = "x:1"
            """.utf8))
        let r = sb.finish(try FerryProcess(["cp", src, "ferry://hlrs/x"], logDir: sb.path + "/logs", environment: ["FERRY_CONFIG": bad]), timeout: 30)
        #expect(r.status == 64 && r.stderr.contains(bad) && r.stderr.contains("3 mistakes") && r.stderr.contains("unknown key 'tokenfile'")
                && r.stderr.contains("'api' is the daemon's API") && r.stderr.contains("[[center]] #1: 'name'"), "\(r)")
        let syntax = sb.file("syntax.toml")
        try writeFile(syntax, Array("ca = \"a\"\n\ntoken_file = oops\n".utf8))
        let s = sb.finish(try FerryProcess(["cp", src, "ferry://hlrs/x"], logDir: sb.path + "/logs", environment: ["FERRY_CONFIG": syntax]), timeout: 30)
        #expect(s.status == 64 && s.stderr.contains(syntax) && s.stderr.contains("line 3"), "\(s)")
        let missing = sb.finish(try FerryProcess(["cp", src, "ferry://hlrs/x"], logDir: sb.path + "/logs", environment: ["FERRY_CONFIG": sb.file("nope.toml")]), timeout: 30)
        #expect(missing.status == 64 && missing.stderr.contains("cannot read the configuration"), "\(missing)")
    }

    @Test("a ferry:// URL without a port dials the registered transfer port, 7700")
    func defaultPort() throws {
        let sb = try Sandbox("default-port")
        let r = try sb.ferry(["ping", "--ca", sb.ca, "ferry://127.0.0.1/"], timeout: 30)
        #expect(r.status != 0 && r.stderr.contains("127.0.0.1:7700"), "\(r)")
    }
}
