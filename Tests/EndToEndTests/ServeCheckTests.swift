// Operator messages (issue 16, item 6): `ferry serve --check` reports every problem of a
// configuration at once, each at its line, and the files it names; a good one passes.

import Foundation
import Testing

@Suite("ferry serve --check")
struct ServeCheckTests {
    /// The first four lines of each configuration here: center, certificate, key, CA.
    static let head = "center = \"hlrs\"\ncertificate = \"pki/hlrs.crt\"\nkey = \"pki/hlrs.key\"\nca = \"pki/ca.crt\"\n"

    @Test("a configuration with five mistakes (three in the file, one in [daemon], a missing export directory) reports all five with their lines; a good one says no problem; the server does not start either way")
    func check() throws {
        let sb = try Sandbox("serve-check")
        _ = try sb.dir("data")  // the good configuration's first export
        let bad = sb.file("bad.toml")
        try writeFile(bad, Array((ServeCheckTests.head + """
            listn = ["127.0.0.1:0"]

            [limits]
            connections = -3

            [daemon]
            workers = "many"

            [[export]]
            name = "data"
            path = "missing-data"
            access = "rw"

            [[export]]
            name = "gone"
            path = "no-such-dir"
            access = "write"
            """).utf8))
        let r = try sb.ferry(["serve", "--check", "--config", bad], timeout: 30)
        #expect(r.status == 1, "\(r)")
        let e = r.stderr
        #expect(e.contains("5 problems"), "\(r)")
        #expect(e.contains("line 5: unknown setting 'listn'"), "\(r)")
        #expect(e.contains("line 8: 'connections' must be a positive integer"), "\(r)")
        #expect(e.contains("line 11: 'daemon.workers' must be a positive integer"), "\(r)")
        #expect(e.contains("line 18:") && e.contains("\"ro\" or \"rw\""), "the second export's access, at its header: \(r)")
        #expect(e.contains("line 13: export 'data':") && e.contains("missing-data' is not a directory"), "\(r)")
        // In line order.
        let order = ["line 5:", "line 8:", "line 11:", "line 13:", "line 18:"].compactMap { e.range(of: $0)?.lowerBound }
        #expect(order.count == 5 && order == order.sorted(), "\(r)")
        // The same file without its mistakes: the named files are checked too.
        let good = sb.file("good.toml")
        try writeFile(good, Array((ServeCheckTests.head + """
            listen = ["127.0.0.1:0"]

            [[export]]
            name = "data"
            path = "data"
            access = "rw"

            [[export]]
            name = "gone"
            path = "no-such-dir"
            """).utf8))
        let g = try sb.ferry(["serve", "--check", "--config", good], timeout: 30)
        #expect(g.status == 1 && g.stderr.contains("line 12: export 'gone'") && g.stderr.contains("is not a directory"), "\(g)")
        _ = try sb.dir("no-such-dir")
        let ok = try sb.ferry(["serve", "--check", "--config", good], timeout: 30)
        #expect(ok.status == 0 && ok.stdout.contains("no problem (center hlrs, 2 exports, 0 peers)"), "\(ok)")
        // A certificate of another center is named.
        let other = sb.file("other.toml")
        try writeFile(other, Array(String(decoding: try Data(contentsOf: URL(fileURLWithPath: good)), as: UTF8.self).replacingOccurrences(of: "center = \"hlrs\"", with: "center = \"wuxi\"").utf8))
        let o = try sb.ferry(["serve", "--check", "--config", other], timeout: 30)
        #expect(o.status == 1 && o.stderr.contains("line 1: the certificate") && o.stderr.contains("is not for center 'wuxi'"), "\(o)")
    }

    /// A port in use: the error names the listener (the transfer server's `listen`, the daemon's
    /// `api_listen`) and the address; the usage text of a command's own refusal names that
    /// command.
    @Test("a port in use names its listener and address; a command's refusal is said under that command's name")
    func busyPorts() throws {
        let sb = try Sandbox("busy-ports")
        let root = try sb.dir("root")
        let first = try FerryServer(sb, root: root)
        defer { first.stop() }
        let again = try sb.ferry(["serve", "--root", root, "--listen", first.address, "--cert", sb.centerCert, "--key", sb.centerKey, "--ca", sb.ca], timeout: 30)
        #expect(again.status == 1 && again.stderr.contains("the transfer server (listen)") && again.stderr.contains(first.address)
                && again.stderr.contains("Address already in use"), "\(again)")
        let api = sb.file("api.toml")
        try writeFile(api, Array((ServeCheckTests.head + """
            listen = ["127.0.0.1:0"]
            [daemon]
            api_listen = "\(first.address)"
            [[export]]
            name = "root"
            path = "root"
            """).utf8))
        let daemon = try sb.ferry(["serve", "--config", api], timeout: 30)
        #expect(daemon.status == 1 && daemon.stderr.contains("the daemon's API (api_listen) cannot serve on \(first.address)"), "\(daemon)")
        // A command's own refusal: under its name, with its help, exit 64.
        let refused = try sb.ferry(["cp", "--ca", sb.ca, root + "/x", "ferry://127.0.0.1:1/x"], timeout: 30)
        #expect(refused.status == 64 && refused.stderr.contains("ferry cp: error: give a user token") && refused.stderr.contains("See 'ferry cp --help'."), "\(refused)")
        let nested = try sb.ferry(["stage", "cache", "--api", "http://127.0.0.1:1"], timeout: 30)
        #expect(nested.status == 64 && nested.stderr.contains("ferry stage cache: error: give your token"), "\(nested)")
    }
}
