// An ordinary account's own `ferry cp`, not root's: held to the kernel's default memory-lock
// limit (8 MiB), which is less than a receiver's two registered buffers of a 4 MiB chunk. Its
// pulls must work all the same (plain ring reads and writes), not fail with ENOMEM.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("A user's own client")
struct UnprivilegedClientTests {
    @Test("an ordinary account pulls a file and a tree with the default memory-lock limit")
    func pullAsUser() throws {
        let u1 = try IdentityTests.account("ferryu1")
        let sb = try Sandbox("unpriv-pull")
        chmod(sb.path, 0o755)
        let root = try sb.dir("root")
        try writeRandomFile(root + "/big.bin", size: 18 * E2E.MiB + 5)
        _ = try sb.dir("root/t/sub")
        try writeRandomFile(root + "/t/sub/a.bin", size: 9 * E2E.MiB)
        try writeRandomFile(root + "/t/b.bin", size: 1000)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        let home = try sb.dir("u1home")
        chown(home, u1.uid, u1.gid)
        let token = home + "/token"
        try FileManager.default.copyItem(atPath: sb.tokenFile, toPath: token)
        chown(token, u1.uid, u1.gid)
        chmod(token, 0o600)

        // The limit the account really runs with (not root's CAP_IPC_LOCK): below two 4 MiB buffers.
        let limit = runTool("/usr/sbin/runuser", ["-u", "ferryu1", "--", "/bin/sh", "-c", "ulimit -l"])
        let kib = Int(limit.output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? Int.max
        #expect(kib < 8 * 1024 + 1, "the account's memory-lock limit is \(limit.output): the test would not test it")

        for (src, dst) in [("big.bin", "big.bin"), ("t", "t")] {
            var args = ["-u", "ferryu1", "--", E2E.ferryBinary, "cp", "--ca", sb.ca, "--token-file", token, "--chunk-size", "4M"]
            if src == "t" { args.append("-r") }
            args += [server.url(src), home + "/" + dst]
            let r = runTool("/usr/sbin/runuser", args, timeout: 120)
            #expect(r.status == 0, "pull of \(src) as ferryu1: \(r.output)")
        }
        #expect(filesIdentical(root + "/big.bin", home + "/big.bin"), "the pulled file differs")
        #expect(filesIdentical(root + "/t/sub/a.bin", home + "/t/sub/a.bin") && filesIdentical(root + "/t/b.bin", home + "/t/b.bin"), "the pulled tree differs")
        #expect(IdentityTests.owner(home + "/big.bin")?.uid == u1.uid, "the pulled file is not ferryu1's")
    }
}

@Suite("Another account's file at the destination")
struct ForeignDestinationTests {
    @Test("a file of another account with the source's size and time but not its mode is not 'already there': the push fails and says why")
    func plantedTwin() throws {
        let (sb, root, u1, u2) = try IdentityTests.setUp("foreign-twin")
        let shared = try sb.dir("export/scratch")
        chmod(shared, 0o1777)
        let token = try sb.issueToken(user: "ferryu1", scopes: ["rw:/"], name: "u1.token")
        let server = try FerryServer(sb, root: root, runAsRoot: false)
        defer { server.stop() }
        let src = try sb.dir("local") + "/res.dat"
        try writeRandomFile(src, size: 1000)
        chmod(src, 0o640)
        try setMtime(src, seconds: 1_764_583_200)
        // ferryu2's file under the name: same size and mtime, other bytes, mode 0666.
        let planted = shared + "/res.dat"
        try writeFile(planted, [UInt8](repeating: 0x58, count: 1000))
        chown(planted, u2.0, u2.1)
        chmod(planted, 0o666)
        try setMtime(planted, seconds: 1_764_583_200)

        let r = try sb.cp(src, server.url("scratch/res.dat"), tokenFile: token)
        #expect(r.status == 1, "\(r)")
        #expect(r.allMessages.contains("cannot set the mode of 'res.dat' (it belongs to another account)"), "\(r)")
        #expect(IdentityTests.owner(planted)?.uid == u2.0, "the planted file changed hands")
        _ = u1
    }
}
