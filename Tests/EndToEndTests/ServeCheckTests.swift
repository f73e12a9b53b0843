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
        #expect(e.contains("line 21: export access must be \"ro\" or \"rw\""), "the second export's access, at its own line: \(r)")
        #expect(e.contains("line 13: export 'data':") && e.contains("missing-data' is not a directory"), "\(r)")
        // In line order.
        let order = ["line 5:", "line 8:", "line 11:", "line 13:", "line 21:"].compactMap { e.range(of: $0)?.lowerBound }
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
    @Test("--check finds what would fail only at start: a daemon database that cannot be made, an export named twice")
    func startFailures() throws {
        let sb = try Sandbox("serve-check-start")
        _ = try sb.dir("data")
        let conf = sb.file("start.toml")
        try writeFile(conf, Array((ServeCheckTests.head + """
            listen = ["127.0.0.1:0"]

            [daemon]
            database = "/nonexistent-ferry-dir/jobs.sqlite"

            [[export]]
            name = "data"
            path = "data"

            [[export]]
            name = "data"
            path = "data"
            """).utf8))
        let r = try sb.ferry(["serve", "--check", "--config", conf], timeout: 30)
        #expect(r.status == 1, "\(r)")
        #expect(r.stderr.contains("database '/nonexistent-ferry-dir/jobs.sqlite' cannot be created"), "\(r)")
        #expect(r.stderr.contains("export 'data' is defined twice"), "\(r)")
    }

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

    /// The unit a center installs (contrib/systemd/ferry.service): systemd finds nothing wrong
    /// in it (not even a warning), and its commands are ferry's own: its `--check` passes on a
    /// good configuration and fails on a bad one, as `ExecStartPre` needs.
    @Test("contrib/systemd/ferry.service: systemd-analyze verify says nothing; its ExecStartPre check passes a good configuration and stops a bad one")
    func systemdUnit() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else {
            Issue.record("systemd-analyze is missing (Debian's systemd package)")
            return
        }
        let sb = try Sandbox("systemd-unit")
        let text = try String(contentsOfFile: E2E.packageRoot + "/contrib/systemd/ferry.service", encoding: .utf8)
        // As installed, with the built binary where the package puts /usr/bin/ferry (systemd
        // checks that each command exists).
        let unit = sb.file("ferry.service")
        try writeFile(unit, Array(text.replacingOccurrences(of: "/usr/bin/ferry", with: E2E.ferryBinary).utf8))
        let verify = runTool("/usr/bin/systemd-analyze", ["verify", "--man=no", unit], timeout: 60)
        #expect(verify.status == 0 && verify.output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(verify.output)")
        // ExecStartPre and ExecStart: `serve --check --config F` and `serve --config F`.
        let commands = text.split(separator: "\n").filter { $0.hasPrefix("ExecStart") }.map { String($0.split(separator: "=", maxSplits: 1)[1]) }
        #expect(commands == ["/usr/bin/ferry serve --check --config /etc/ferry/ferry.toml", "/usr/bin/ferry serve --config /etc/ferry/ferry.toml"], "\(commands)")
        _ = try sb.dir("data")
        let good = sb.file("ferry.toml")
        try writeFile(good, Array((ServeCheckTests.head + "[[export]]\nname = \"data\"\npath = \"data\"\n").utf8))
        let args = commands[0].split(separator: " ").dropFirst().map { $0 == "/etc/ferry/ferry.toml" ? good : String($0) }
        let pass = try sb.ferry(args, timeout: 30)
        #expect(pass.status == 0 && pass.stdout.contains("no problem"), "\(pass)")
        try writeFile(good, Array((ServeCheckTests.head + "[[export]]\nname = \"data\"\npath = \"data\"\nacces = \"rw\"\n").utf8))
        let stop = try sb.ferry(args, timeout: 30)
        #expect(stop.status == 1 && stop.stderr.contains("line 8:") && stop.stderr.contains("acces"), "\(stop)")
    }

    @Test("server log lines: a time and a level, one line per session with user, account, peer, path, bytes, rate and result; journald's priority prefix when JOURNAL_STREAM names stderr")
    func logLines() throws {
        let sb = try Sandbox("serve-log")
        let root = try sb.dir("root")
        let src = try sb.dir("local") + "/f.bin"
        try writeRandomFile(src, size: 300_000)
        for journald in [false, true] {
            let server = try FerryServer(sb, root: root, journalStream: journald)
            defer { server.stop() }
            let ok = try sb.cp(src, server.url("f\(journald).bin"))
            #expect(ok.succeeded, "\(ok)")
            let refused = try sb.cp(src, server.url("g.bin"), tokenFile: try sb.wrongTokenFile())
            #expect(!refused.succeeded)
            var lines: [String] = []
            _ = waitUntil(timeout: 5) {
                lines = server.process.stderr.split(separator: "\n").map(String.init)
                return lines.contains { $0.contains("push to 'f\(journald).bin'") } && lines.contains { $0.contains("refused") }
            }
            let session = lines.first { $0.contains("push to 'f\(journald).bin'") } ?? ""
            let refusal = lines.first { $0.contains("refused") } ?? ""
            if journald {
                #expect(session.hasPrefix("<6>ferry.serve: push to 'f\(journald).bin' by alice as root from 127.0.0.1:"), "\(lines)")
                #expect(refusal.hasPrefix("<4>ferry.serve: "), "\(lines)")
            } else {
                let stamp = #/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info ferry\.serve: push to 'f(false|true)\.bin' by alice as root from 127\.0\.0\.1:\d+: ok, 1 files, 293\.0 KiB in [0-9.]+ s( \([0-9.]+ [KMG]?i?B/s\))?, .* on the wire, private$/#
                #expect(session.wholeMatch(of: stamp) != nil, "\(session)")
                #expect(refusal.contains(" warning ferry.serve: ") && refusal.contains("refused"), "\(refusal)")
            }
        }
    }
}
