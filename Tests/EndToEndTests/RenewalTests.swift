// Certificate lifecycle (issue 17, item 6): a renewed certificate is picked up on SIGHUP by a
// running server without dropping the transfer in flight; tokens of the old key stay valid;
// a certificate that expires soon is warned about; a bad renewal changes nothing.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Certificate renewal", .serialized)
struct RenewalTests {
    /// The `ferry serve` process under the harness's `timeout` wrapper (a signal to the
    /// wrapper would start its kill timer).
    static func servePid(_ server: FerryServer) -> pid_t? {
        let r = runTool("/usr/bin/pgrep", ["-P", String(server.process.pid)])
        return r.output.split(separator: "\n").first.flatMap { pid_t($0.trimmingCharacters(in: .whitespaces)) }
    }

    @Test("SIGHUP with a renewed certificate: the transfer in flight completes, the next handshake presents the new certificate, old and new tokens work, the near expiry is warned about; a broken renewal keeps the certificate in use")
    func reloadOnSIGHUP() throws {
        let sb = try Sandbox("renewal")
        let root = try sb.dir("root")
        let src = try sb.dir("local") + "/big.bin"
        try writeRandomFile(src, size: 24 * E2E.MiB)
        let server = try FerryServer(sb, root: root)
        defer { server.stop() }
        func ping() throws -> Int? {
            let r = try sb.ferry(["ping", "--json", "--ca", sb.ca, server.url("")])
            return r.jsonLines.first?["certificate_not_after"] as? Int
        }
        let before = try #require(try ping(), "ping names the certificate's expiry")
        #expect(before > Int(Date().timeIntervalSince1970) + 30 * 86_400)

        // A transfer that takes a few seconds (8 MiB/s), running while the certificate changes.
        let cp = try sb.startCp(src, server.url("big.bin"), options: ["--bwlimit", "8M", "--compress", "off"])
        #expect(waitUntil(timeout: 20) { (cp.lastProgress?.bytesDone ?? 0) > 2 * E2E.MiB }, "the transfer did not start")
        // Renewed: a new key and a certificate valid for five days, at the same paths.
        try Sandbox.ferryTool(["ca", "issue", "--dir", sb.pki, "--center", "hlrs", "--host", "127.0.0.1", "--host", "::1", "--days", "5"])
        let pid = try #require(Self.servePid(server))
        kill(pid, SIGHUP)
        #expect(waitUntil(timeout: 10) { server.process.stderr.contains("reloaded the certificate of center hlrs") }, "\(server.process.stderr)")
        let done = sb.finish(cp, timeout: 60)
        #expect(done.succeeded && filesIdentical(src, root + "/big.bin"), "\(done)")
        let after = try #require(try ping())
        #expect(after < Int(Date().timeIntervalSince1970) + 6 * 86_400 && after != before, "the new certificate is presented: \(after) vs \(before)")
        // Five days from its issue: 4 or 5 whole days left, by the second it is read.
        #expect(server.process.stderr.contains("the center's certificate expires at")
                && (server.process.stderr.contains("(in 4 days)") || server.process.stderr.contains("(in 5 days)")), "\(server.process.stderr)")

        // The token signed with the old key still works; one signed with the new key too.
        let old = try sb.cp(src, server.url("old-token.bin"))
        #expect(old.succeeded, "\(old)")
        let fresh = try sb.issueToken(name: "fresh.token")
        let new = try sb.cp(src, server.url("new-token.bin"), tokenFile: fresh)
        #expect(new.succeeded, "\(new)")

        // A broken renewal (a certificate that does not load): refused, the one in use stays.
        try writeFile(sb.centerCert, Array("not a certificate\n".utf8))
        kill(pid, SIGHUP)
        #expect(waitUntil(timeout: 10) { server.process.stderr.contains("were not reloaded, the previous ones stay in use") }, "\(server.process.stderr)")
        #expect(try ping() == after)
        #expect(server.isRunning)
    }
}
