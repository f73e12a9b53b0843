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

    /// The serial number of the certificate the HTTPS API at `api` presents, verified against
    /// `ca` (Python's ssl: a second TLS stack).
    static func apiSerial(_ api: String, ca: String) -> String {
        let hostPort = api.replacingOccurrences(of: "https://", with: "")
        let r = runTool("/usr/bin/python3", ["-c", """
            import socket, ssl, sys
            host, port = sys.argv[1].rsplit(":", 1)
            ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.check_hostname = False
            with socket.create_connection((host, int(port)), timeout=20) as s:
                with ctx.wrap_socket(s) as t: print(t.getpeercert()["serialNumber"])
            """, hostPort, ca], timeout: 60)
        return r.status == 0 ? r.output.trimmingCharacters(in: .whitespacesAndNewlines) : "error: \(r.output)"
    }

    @Test("ferry ca renew: a center's certificate re-issued with its names and key (or a new key), the previous kept; the CA renewed under its name and key still verifies what it issued; --within; refusals")
    func caRenew() throws {
        let sb = try Sandbox("ca-renew")
        let pki = sb.pki
        let oldCert = try #require(readFile(sb.centerCert)), oldKey = try #require(readFile(sb.centerKey))
        // Not due: a 365-day certificate is not within 30 days.
        let notDue = try sb.ferry(["ca", "renew", "--dir", pki, "--center", "hlrs", "--within", "30d"])
        #expect(notDue.succeeded && notDue.stdout.contains("not renewed") && readFile(sb.centerCert) == oldCert, "\(notDue)")
        // Due: the same names and key, 40 days; the previous kept. A leftover `.new` name that
        // points elsewhere is replaced, not written through.
        let victim = sb.file("victim.txt")
        try writeFile(victim, Array("untouched\n".utf8))
        #expect(symlink(victim, sb.centerCert + ".new") == 0)
        let renewed = try sb.ferry(["ca", "renew", "--dir", pki, "--center", "hlrs", "--days", "40", "--within", "400d"])
        #expect(renewed.succeeded && renewed.stdout.contains("renewed \(sb.centerCert)"), "\(renewed)")
        #expect(readFile(sb.centerCert) != oldCert && readFile(sb.centerCert + ".prev") == oldCert && readFile(sb.centerKey) == oldKey)
        #expect(!FileManager.default.fileExists(atPath: sb.centerCert + ".new") && readFile(victim) == Array("untouched\n".utf8))
        // The renewed certificate serves: its names (127.0.0.1, ::1) and key are the old ones,
        // so the tokens it signed work.
        let root = try sb.dir("root")
        let src = try sb.dir("local") + "/f.bin"
        try writeRandomFile(src, size: 100_000)
        do {
            let server = try FerryServer(sb, root: root, listen: ["127.0.0.1:0", "[::1]:0"])
            defer { server.stop() }
            let ping = try sb.ferry(["ping", "--json", "--ca", sb.ca, server.url("")])
            let notAfter = ping.jsonLines.first?["certificate_not_after"] as? Int ?? 0
            #expect(ping.succeeded && abs(notAfter - Int(Date().timeIntervalSince1970) - 40 * 86_400) < 600, "\(ping)")
            for address in server.addresses {
                let cp = try sb.cp(src, server.url("via-\(address.hasPrefix("[") ? "v6" : "v4").bin", address: address))
                #expect(cp.succeeded, "\(cp)")
            }
        }
        // A new key: the key changes too (mode kept), the previous pair kept.
        let keyMode = { () -> mode_t in var st = stat(); stat(sb.centerKey, &st); return st.st_mode & 0o777 }
        let before = keyMode()
        let rekeyed = try sb.ferry(["ca", "renew", "--dir", pki, "--center", "hlrs", "--new-key"])
        #expect(rekeyed.succeeded && rekeyed.stdout.contains("with a new key"), "\(rekeyed)")
        #expect(readFile(sb.centerKey) != oldKey && readFile(sb.centerKey + ".prev") == oldKey && keyMode() == before)
        // The CA: same name and key, 20 days; the center certificate issued before verifies
        // against the renewed CA (a client given only the new ca.crt).
        let oldCA = try #require(readFile(sb.ca))
        let ca = try sb.ferry(["ca", "renew", "--dir", pki, "--days", "20"])
        #expect(ca.succeeded && readFile(sb.ca) != oldCA && readFile(sb.ca + ".prev") == oldCA, "\(ca)")
        do {
            let server = try FerryServer(sb, root: root)
            defer { server.stop() }
            // The key changed above and this server started after: the old key's tokens are no
            // longer trusted (as `--new-key`'s help says), a token of the new key is.
            let stale = try sb.cp(src, server.url("stale.bin"))
            #expect(!stale.succeeded && stale.stderr.contains("token signature is not valid"), "\(stale)")
            let cp = try sb.cp(src, server.url("after-ca.bin"), tokenFile: try sb.issueToken(name: "after.token"))
            #expect(cp.succeeded && filesIdentical(src, root + "/after-ca.bin"), "\(cp)")
        }
        // Refusals, each with its reason and nothing changed.
        let current = readFile(sb.centerCert)
        let missing = try sb.ferry(["ca", "renew", "--dir", pki, "--center", "wuxi"])
        #expect(!missing.succeeded && missing.stderr.contains("wuxi.crt"), "\(missing)")
        try Sandbox.ferryTool(["ca", "init", "--dir", sb.file("other")])
        try Sandbox.ferryTool(["ca", "issue", "--dir", sb.file("other"), "--center", "hlrs"])
        let foreign = try sb.ferry(["ca", "renew", "--dir", sb.file("other"), "--center", "hlrs", "--ca-dir", pki])
        #expect(!foreign.succeeded && foreign.stderr.contains("was not issued by the CA"), "\(foreign)")
        let escape = try sb.ferry(["ca", "renew", "--dir", pki, "--center", "../pki/hlrs"])
        #expect(!escape.succeeded && escape.stderr.contains("--center"), "\(escape)")
        let caKey = try sb.ferry(["ca", "renew", "--dir", pki, "--new-key"])
        #expect(!caKey.succeeded && caKey.stderr.contains("give --center"), "\(caKey)")
        #expect(readFile(sb.centerCert) == current && !FileManager.default.fileExists(atPath: sb.file("other/hlrs.crt.new")))
    }

    @Test("SIGHUP reloads the daemon's HTTPS certificate too: the next handshake presents the renewed one, the API keeps answering")
    func apiCertificateReload() throws {
        let (sb, server, api) = try HTTPSTests.start("renew-api", peerAPI: "https://127.0.0.1:9")
        defer { server.stop() }
        let before = Self.apiSerial(api, ca: sb.ca)
        #expect(!before.hasPrefix("error"), "\(before)")
        let renewed = try sb.ferry(["ca", "renew", "--dir", sb.pki, "--center", "hlrs", "--days", "30"])
        #expect(renewed.succeeded, "\(renewed)")
        let pid = try #require(Self.servePid(server))
        kill(pid, SIGHUP)
        #expect(waitUntil(timeout: 10) { server.process.stderr.contains("reloaded the certificate of center hlrs") }, "\(server.process.stderr)")
        let after = Self.apiSerial(api, ca: sb.ca)
        #expect(!after.hasPrefix("error") && after != before, "the API presents \(after), before \(before)")
        let list = try sb.ferry(["jobs", "list", "--api", api, "--ca", sb.ca, "--token-file", sb.tokenFile])
        #expect(list.succeeded, "\(list)")
        // The configuration as it started: no word about it.
        #expect(!server.process.stderr.contains("changed since the server started"), "\(server.process.stderr)")
        // An export made read-only in the file, then a reload (the operator's reflex): the
        // log says that only the certificates were read, and what a restart would apply.
        let config = sb.file("hlrs.toml")
        let text = try String(contentsOfFile: config, encoding: .utf8)
        #expect(text.contains("access = \"rw\""))
        try writeFile(config, Array(text.replacingOccurrences(of: "access = \"rw\"", with: "access = \"ro\"").utf8))
        kill(pid, SIGHUP)
        #expect(waitUntil(timeout: 10) { server.process.stderr.contains("hlrs.toml changed since the server started") && server.process.stderr.contains("until a restart") },
                "\(server.process.stderr)")
        // A broken key: refused, the API keeps presenting the renewed certificate.
        try writeFile(sb.centerKey, Array("not a key\n".utf8))
        kill(pid, SIGHUP)
        #expect(waitUntil(timeout: 10) { server.process.stderr.contains("were not reloaded") }, "\(server.process.stderr)")
        #expect(Self.apiSerial(api, ca: sb.ca) == after)
    }
}
