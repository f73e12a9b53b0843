// What `ferry cp` says at the end (issue 16, "Truthful summaries"): sent and verified, found
// identical by content, skipped by size and mtime without being read: never one for another.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Truthful summaries")
struct SummaryTests {
    /// One byte of the destination changed in place, its size and mtime kept: a plain rerun
    /// skips the file by size and mtime and says so (not "verified", the file still differs);
    /// `--checksum` finds and mends it; a second `--checksum` run finds it identical by content.
    @Test("a byte changed in place: a plain rerun says 'skipped by size and mtime, not read', --checksum mends it and then says 'identical by content'; push and pull")
    func changedInPlace() throws {
        let sb = try Sandbox("summary")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        let src = local + "/data.bin"
        try writeRandomFile(src, size: 6 * E2E.MiB + 123)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let chunk = ["--chunk-size", "1M"]

        // Push, then a byte of the server's copy changed, size and times kept.
        let first = try sb.cp(src, server.url("data.bin"), options: chunk, json: false)
        #expect(first.succeeded && first.stdout.contains("1 copied") && first.stdout.contains("verified by chunk and file hashes"), "\(first)")
        for (direction, target, source, dest) in [("push", root + "/data.bin", src, server.url("data.bin")),
                                                  ("pull", local + "/pulled.bin", server.url("data.bin"), local + "/pulled.bin")] {
            if direction == "pull" {
                let pulled = try sb.cp(source, dest, options: chunk, json: false)
                #expect(pulled.succeeded, "\(pulled)")
            }
            try flipByte(target, at: 3 * E2E.MiB + 7)
            #expect(!filesIdentical(src, target))

            let plain = try sb.cp(source, dest, options: chunk, json: false)
            #expect(plain.succeeded, "\(plain)")
            #expect(plain.stdout.contains("1 file skipped by size and mtime") && plain.stdout.contains("not read: --checksum compares their content"),
                    "\(direction): \(plain)")
            #expect(!plain.stdout.contains("verified") && !plain.stdout.contains("copied"), "\(direction): nothing was read, nothing is called verified: \(plain)")
            #expect(!filesIdentical(src, target), "\(direction): a plain rerun does not read the file, so the change stays")
            let plainJSON = try sb.cp(source, dest, options: chunk)
            let pj = try #require(plainJSON.summary, "\(plainJSON)")
            #expect(pj.raw["files_unread"] as? Int == 1 && pj.raw["bytes_unread"] as? Int == 6 * E2E.MiB + 123 && pj.raw["bytes_sent"] as? Int == 0
                    && pj.raw["files_identical"] as? Int == 0, "\(direction): \(pj)")

            // --checksum compares the content: the file differs, so it is sent again (whole or
            // the chunks that differ) and verified.
            let fixed = try sb.cp(source, dest, options: chunk + ["--checksum"], json: false)
            #expect(fixed.succeeded && fixed.stdout.contains("1 copied") && fixed.stdout.contains("verified by chunk and file hashes")
                    && !fixed.stdout.contains("skipped by size and mtime"), "\(direction): \(fixed)")
            #expect(filesIdentical(src, target), "\(direction): --checksum mends the changed byte")

            // Now the same by content: compared, not sent, not called skipped by mtime.
            let same = try sb.cp(source, dest, options: chunk + ["--checksum"], json: false)
            #expect(same.succeeded && same.stdout.contains("1 file identical by content") && !same.stdout.contains("copied")
                    && !same.stdout.contains("skipped by size and mtime"), "\(direction): \(same)")
            let sameJSON = try sb.cp(source, dest, options: chunk + ["--checksum"])
            let sj = try #require(sameJSON.summary, "\(sameJSON)")
            #expect(sj.raw["files_identical"] as? Int == 1 && sj.raw["bytes_identical"] as? Int == 6 * E2E.MiB + 123 && sj.raw["files_unread"] as? Int == 0
                    && sj.raw["bytes_sent"] as? Int == 0, "\(direction): \(sj)")
        }
        #expect(server.isRunning)
    }

    /// "run the same command again to resume" only where a rerun helps; a destination that
    /// cannot work says what to do instead.
    @Test("resume advice only for errors a rerun can mend: an unknown host, a file where a directory is needed, a directory in the way, a file in the way of a directory say what to do and are not resumable")
    func advice() throws {
        let sb = try Sandbox("advice")
        let root = try sb.dir("root")
        let local = try sb.dir("local")
        try writeFile(local + "/x", Array("hi\n".utf8))
        try writeFile(root + "/plainfile", Array("f\n".utf8))
        _ = try sb.dir("root/dirx/x")
        try writeFile(root + "/in-the-way", Array("b\n".utf8))
        try writeFile(try sb.dir("local/t2/in-the-way") + "/z", Array("z\n".utf8))
        try writeFile(try sb.dir("local/t3/linked") + "/z", Array("z\n".utf8))
        _ = try sb.dir("root/sub3")
        let elsewhere = try sb.dir("elsewhere")
        symlink(elsewhere, root + "/sub3/linked")
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let port = server.address.split(separator: ":").last.map(String.init) ?? ""
        let cases: [(String, [String], String, String)] = [
            ("an unknown host", [local + "/x", "ferry://no-such-host.invalid:\(port)/x"], "cannot resolve no-such-host.invalid", "check the host name"),
            ("a file where a directory is needed", [local + "/x", server.url("plainfile/x")], "plainfile", "a file is where the path needs a directory"),
            ("a directory in the way", [local + "/x", server.url("dirx")], "a directory is in the way", "end the destination with '/'"),
            ("a file in the way of a directory", ["-r", local + "/t2/", server.url("")], "cannot create directory 'in-the-way'", "a file is in the way"),
            ("a symbolic link in the way of a directory", ["-r", local + "/t3/", server.url("sub3")], "cannot create directory 'linked'", "a symbolic link is in the way"),
        ]
        for (what, args, cause, advice) in cases {
            let r = try sb.ferry(["cp", "--ca", sb.ca, "--token-file", sb.tokenFile] + args)
            #expect(r.status == 1 && r.stderr.contains(cause) && r.stderr.contains(advice), "\(what): \(r)")
            #expect(!r.stderr.contains("run the same command again"), "\(what): a rerun would meet it again: \(r)")
            let j = try sb.ferry(["cp", "--json", "--ca", sb.ca, "--token-file", sb.tokenFile] + args)
            #expect(j.error?.resumable == false, "\(what): not resumable: \(j)")
        }
        // The link was not followed: nothing was written where it points.
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: elsewhere)) ?? ["?"]).isEmpty)
        // And the destination's files are as they were.
        #expect(try String(contentsOfFile: root + "/plainfile", encoding: .utf8) == "f\n")
        #expect(try String(contentsOfFile: root + "/in-the-way", encoding: .utf8) == "b\n")
        #expect(FileManager.default.fileExists(atPath: root + "/dirx/x"))
        #expect(server.isRunning)
    }

    /// Off a terminal (a batch job's log) a line every `--stats` seconds; none with 0.
    @Test("off a terminal: a progress line every --stats seconds, before the summary; --stats 0 prints none")
    func statsLines() throws {
        let (sb, root, src, server) = try SummaryTests.serverAndFile("stats", "slow.bin", size: 12 * E2E.MiB)
        defer { server.stop() }
        let r = try sb.cp(src, server.url("a.bin"), options: ["--bwlimit", "2M", "--stats", "1", "--compress", "off"], json: false)
        #expect(r.succeeded, "\(r)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        let progress = lines.filter { $0.hasPrefix("ferry: ") && $0.contains(" of 12.0 MiB (") && $0.hasSuffix(" left") }
        #expect(progress.count >= 2, "a line a second for about 4 s: \(r.stdout)")
        #expect(lines.last?.contains("1 copied") == true, "the summary comes last: \(r.stdout)")
        let quiet = try sb.cp(src, server.url("b.bin"), options: ["--bwlimit", "4M", "--stats", "0", "--compress", "off"], json: false)
        #expect(quiet.succeeded && quiet.stdout.split(separator: "\n").count == 1, "only the summary: \(quiet.stdout)")
        #expect(try sb.ferry(["cp", "--stats", "-1", src, server.url("c.bin")]).status == 64)
    }

    /// Ctrl-C typed on a terminal (a pseudo-terminal 60 columns wide): the bar fits the width,
    /// the message starts on a line of its own, says what is kept, exit 130; the same command
    /// again resumes from what was kept.
    @Test("Ctrl-C on a terminal: the bar fits its width, a clean line says what is kept, exit 130, a rerun resumes")
    func interruptOnTerminal() throws {
        let (sb, root, src, server) = try SummaryTests.serverAndFile("ctrl-c", "big.bin", size: 16 * E2E.MiB)
        defer { server.stop() }
        let driver = """
            import fcntl, os, pty, select, struct, sys, termios, time
            pid, fd = pty.fork()
            if pid == 0:
                os.execv(sys.argv[1], sys.argv[1:])
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
            out, start, sent = b"", time.monotonic(), False
            while time.monotonic() - start < 60:
                if not sent and time.monotonic() - start > 3:
                    os.write(fd, b"\\x03")  # Ctrl-C, as typed: the terminal sends SIGINT
                    sent = True
                r, _, _ = select.select([fd], [], [], 0.2)
                if r:
                    try:
                        data = os.read(fd, 65536)
                    except OSError:
                        break
                    if not data:
                        break
                    out += data
            _, status = os.waitpid(pid, 0)
            sys.stdout.write(out.decode(errors="replace"))
            print("\\nEXIT", os.waitstatus_to_exitcode(status))
            """
        let bin = ProcessInfo.processInfo.environment["FERRY_BIN"] ?? ""
        let r = runTool("/usr/bin/python3", ["-c", driver, bin, "cp", "--ca", sb.ca, "--token-file", sb.tokenFile, "--bwlimit", "2M", "--compress", "off",
                                             "--chunk-size", "1M", src, server.url("big.bin")], timeout: 90)
        let out = r.output
        #expect(out.contains("EXIT 130"), "exit 130 after Ctrl-C: \(out.suffix(1500))")
        #expect(out.contains("\nferry: interrupted: ") && out.contains("of 16.0 MiB done and kept; run the same command to resume"), "\(out.suffix(1500))")
        // Every state of the bar fits in 60 columns (each drawn after a carriage return).
        // (A terminal ends lines with CR LF: those are line ends, not redraws.)
        let bars = out.replacingOccurrences(of: "\r\n", with: "\n").components(separatedBy: "\r").map { String($0.replacingOccurrences(of: "\u{1B}[K", with: "").split(separator: "\n").first ?? "") }
            .filter { $0.contains("%") && $0.contains("ETA") }
        #expect(bars.count >= 3 && bars.allSatisfy { $0.count <= 59 }, "bars: \(bars.map(\.count)) \(bars.filter { $0.count > 59 })")
        #expect(!FileManager.default.fileExists(atPath: root + "/big.bin"), "nothing at the final name yet")
        // The same command again: it resumes from what was kept.
        let rerun = try sb.cp(src, server.url("big.bin"), options: ["--chunk-size", "1M"])
        #expect(rerun.succeeded && filesIdentical(src, root + "/big.bin"), "\(rerun)")
        #expect((rerun.summary?.raw["bytes_resumed"] as? Int ?? 0) >= 2 * E2E.MiB, "the rerun resumed: \(rerun)")
    }

    /// Ctrl-C on a center-to-center copy: the job runs at the daemon, so by default it goes on
    /// (the message says its id and how to follow or stop it); with --cancel-on-interrupt it is
    /// cancelled.
    @Test("Ctrl-C on a third-party copy: the job goes on at the daemon and the message says so; with --cancel-on-interrupt it is cancelled")
    func interruptThirdParty() throws {
        let c = try DaemonE2ETests.start("ctrl-c-3p")
        defer { c.a.stop(); c.b.stop() }
        try writeRandomFile(c.scratch + "/slow.bin", size: 8 * E2E.MiB)
        let hlrs = "ferry://127.0.0.1:\(c.a.port)/scratch/slow.bin"
        for (n, cancel) in [(1, false), (2, true)] {
            let p = try FerryProcess(["cp", "--api", c.api, "--token-file", c.sb.tokenFile, "--bwlimit", "256K"] + (cancel ? ["--cancel-on-interrupt"] : [])
                                     + [hlrs, "ferry://wuxi/incoming/slow\(n).bin"], logDir: c.sb.path + "/logs")
            // Interrupted once the job runs (its first progress line).
            for _ in 0..<100 where !p.stdout.contains("running") { usleep(100_000) }
            // To ferry itself, as a terminal's Ctrl-C reaches it (the harness's `timeout` would
            // pass it on twice: to its child, then to its process group).
            let child = (try? String(contentsOfFile: "/proc/\(p.process.processIdentifier)/task/\(p.process.processIdentifier)/children", encoding: .utf8))
                .flatMap { Int32($0.split(separator: " ").first ?? "") } ?? p.process.processIdentifier
            kill(child, SIGINT)
            let r = c.sb.finish(p, timeout: 30)
            #expect(r.status == 130, "\(r)")
            let id = r.stderr.split(separator: " ").dropFirst(2).first.map(String.init) ?? ""
            let show = try c.sb.ferry(["jobs", "show", "--json", "--api", c.api, "--token-file", c.sb.tokenFile, id], timeout: 30)
            let state = DaemonE2ETests.lastJSON(show)["state"] as? String ?? ""
            if cancel {
                #expect(r.stderr.contains("ferry: interrupted: job \(id) cancelled"), "\(r)")
                #expect(state == "failed" && DaemonE2ETests.lastJSON(show)["cancelled"] as? Bool == true, "\(show)")
            } else {
                #expect(r.stderr.contains("ferry: interrupted: job \(id) goes on at") && r.stderr.contains("ferry jobs cancel \(id)"), "\(r)")
                #expect(state == "running" || state == "success", "the job goes on: \(show)")
                _ = try c.sb.ferry(["jobs", "cancel", "--api", c.api, "--token-file", c.sb.tokenFile, id], timeout: 30)
            }
        }
    }

    /// `-v`: a line per file, saying how it ended; `-q`: nothing but errors.
    @Test("-v names each file: sent, then skipped by size and mtime, then identical by content; -q prints nothing on success and the error on failure")
    func verboseQuiet() throws {
        let sb = try Sandbox("verbose")
        let root = try sb.dir("root")
        let tree = try sb.dir("local/tree/sub")
        for (name, size) in [("a.bin", 5000), ("sub/b.bin", 2 * E2E.MiB), ("c.txt", 10)] {
            try writeRandomFile(sb.file("local/tree/" + name), size: size)
        }
        _ = tree
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        func lines(_ r: CpResult, _ word: String) -> [String] {
            r.stdout.split(separator: "\n").filter { $0.hasPrefix(word) }.map { String($0.dropFirst(11).prefix { $0 != " " }) }.sorted()
        }
        let all = ["a.bin", "c.txt", "sub/b.bin"]
        let sent = try sb.ferry(["cp", "-r", "-v", "--ca", sb.ca, "--token-file", sb.tokenFile, sb.file("local/tree"), server.url("tree")])
        #expect(sent.status == 0 && lines(sent, "sent ") == all, "\(sent)")
        let again = try sb.ferry(["cp", "-r", "-v", "--ca", sb.ca, "--token-file", sb.tokenFile, sb.file("local/tree"), server.url("tree")])
        #expect(again.status == 0 && lines(again, "skipped ") == all && lines(again, "sent ").isEmpty, "\(again)")
        let same = try sb.ferry(["cp", "-r", "-v", "--checksum", "--ca", sb.ca, "--token-file", sb.tokenFile, sb.file("local/tree"), server.url("tree")])
        #expect(same.status == 0 && lines(same, "identical ") == all, "\(same)")
        // Pulled back, -v names what the receiving side wrote, as received.
        let pulled = try sb.ferry(["cp", "-r", "-v", "--ca", sb.ca, "--token-file", sb.tokenFile, server.url("tree"), sb.file("back")])
        #expect(pulled.status == 0 && lines(pulled, "received ") == all && lines(pulled, "sent ").isEmpty, "\(pulled)")
        let quiet = try sb.ferry(["cp", "-r", "-q", "--ca", sb.ca, "--token-file", sb.tokenFile, sb.file("local/tree"), server.url("tree2")])
        #expect(quiet.status == 0 && quiet.stdout.isEmpty && quiet.stderr.isEmpty && filesIdentical(sb.file("local/tree/a.bin"), root + "/tree2/a.bin"), "\(quiet)")
        let quietFail = try sb.ferry(["cp", "-q", "--ca", sb.ca, "--token-file", sb.tokenFile, sb.file("local/nothing"), server.url("x")])
        #expect(quietFail.status != 0 && quietFail.stderr.contains("nothing"), "\(quietFail)")
        #expect(try sb.ferry(["cp", "-v", "-q", sb.file("local/tree"), server.url("x")]).status == 64)
    }

    /// A sandbox, a server of its `root`, and a random file of `size` bytes at local/NAME.
    static func serverAndFile(_ name: String, _ file: String, size: Int) throws -> (Sandbox, String, String, FerryServer) {
        let sb = try Sandbox(name)
        let root = try sb.dir("root")
        let src = try sb.dir("local") + "/" + file
        try writeRandomFile(src, size: size)
        return (sb, root, src, try FerryServer(sb, root: root))
    }
}
