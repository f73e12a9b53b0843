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
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let port = server.address.split(separator: ":").last.map(String.init) ?? ""
        let cases: [(String, [String], String, String)] = [
            ("an unknown host", [local + "/x", "ferry://no-such-host.invalid:\(port)/x"], "cannot resolve no-such-host.invalid", "check the host name"),
            ("a file where a directory is needed", [local + "/x", server.url("plainfile/x")], "plainfile", "a file is where the path needs a directory"),
            ("a directory in the way", [local + "/x", server.url("dirx")], "a directory is in the way", "end the destination with '/'"),
            ("a file in the way of a directory", ["-r", local + "/t2/", server.url("")], "cannot create directory 'in-the-way'", "a file is in the way"),
        ]
        for (what, args, cause, advice) in cases {
            let r = try sb.ferry(["cp", "--ca", sb.ca, "--token-file", sb.tokenFile] + args)
            #expect(r.status == 1 && r.stderr.contains(cause) && r.stderr.contains(advice), "\(what): \(r)")
            #expect(!r.stderr.contains("run the same command again"), "\(what): a rerun would meet it again: \(r)")
            let j = try sb.ferry(["cp", "--json", "--ca", sb.ca, "--token-file", sb.tokenFile] + args)
            #expect(j.error?.resumable == false, "\(what): not resumable: \(j)")
        }
        // And the destination's files are as they were.
        #expect(try String(contentsOfFile: root + "/plainfile", encoding: .utf8) == "f\n")
        #expect(try String(contentsOfFile: root + "/in-the-way", encoding: .utf8) == "b\n")
        #expect(FileManager.default.fileExists(atPath: root + "/dirx/x"))
        #expect(server.isRunning)
    }

    /// Changes one byte of `path` in place and puts its access and modification times back.
    func flipByte(_ path: String, at offset: Int) throws {
        var st = stat()
        guard stat(path, &st) == 0 else { throw HarnessError("stat \(path)") }
        let fd = open(path, O_RDWR)
        guard fd >= 0 else { throw HarnessError("open \(path)") }
        defer { close(fd) }
        var b: UInt8 = 0
        guard pread(fd, &b, 1, off_t(offset)) == 1 else { throw HarnessError("read \(path)") }
        b ^= 0x5a
        guard pwrite(fd, &b, 1, off_t(offset)) == 1 else { throw HarnessError("write \(path)") }
        var times = [st.st_atim, st.st_mtim]
        guard futimens(fd, &times) == 0 else { throw HarnessError("futimens \(path)") }
    }
}
