import Foundation
import Testing
import TestSupport

/// The daemon API over HTTPS with the federation's PKI (issue 14): the CLI and the daemons
/// verify a daemon's certificate against the federation CA, for its address and (between
/// daemons) for its center; plain HTTP stays on loopback. The three-center federation test
/// (FederationE2ETests.threeCenters) runs wholly over HTTPS; these are the refusals.
@Suite("The API over HTTPS", .serialized)
struct HTTPSTests {
    /// hlrs with `api_tls = true` on loopback; its peer "wuxi" is followed at `peerAPI`.
    static func start(_ name: String, peerAPI: String, listen: String = "127.0.0.1:0", tls: Bool = true, daemonExtra: String = "") throws -> (sb: Sandbox, server: FerryServer, api: String) {
        let sb = try Sandbox(name)
        try sb.dir("hlrs/scratch")
        try writeFile(sb.file("hlrs.toml"), Array("""
            center = "hlrs"
            run_as = "root"
            certificate = "pki/hlrs.crt"
            key = "pki/hlrs.key"
            ca = "pki/ca.crt"
            [daemon]
            database = "hlrs.sqlite"
            api_listen = "\(listen)"
            api_tls = \(tls)
            sync_seconds = 1
            \(daemonExtra)
            [[peer]]
            name = "wuxi"
            address = "127.0.0.1:9"
            api = "\(peerAPI)"
            [[export]]
            name = "scratch"
            path = "hlrs/scratch"
            access = "rw"
            users = ["*"]

            """.utf8))
        let server = try FerryServer(sb, root: "", extra: ["--config", sb.file("hlrs.toml")])
        return (sb, server, try DaemonE2ETests.apiURL(server))
    }

    @Test("the CLI verifies the daemon: the federation CA and the address; another CA, another name and plain http elsewhere are refused")
    func cliVerifies() throws {
        let (sb, server, api) = try Self.start("https-cli", peerAPI: "https://127.0.0.1:9")
        defer { server.stop() }
        #expect(api.hasPrefix("https://127.0.0.1:"), "the daemon announced \(api)")
        let port = String(api.split(separator: ":").last ?? "")

        let ok = try sb.ferry(["jobs", "list", "--api", api, "--ca", sb.ca, "--token-file", sb.tokenFile])
        #expect(ok.succeeded, "\(ok)")
        // A CA of another federation: refused in the handshake, before the token is sent.
        try Sandbox.ferryTool(["ca", "init", "--dir", sb.file("other-pki")])
        let other = try sb.ferry(["jobs", "list", "--api", api, "--ca", sb.file("other-pki/ca.crt"), "--token-file", sb.tokenFile])
        #expect(!other.succeeded && other.stderr.contains("certificate verification failed: unable to get local issuer certificate"), "\(other)")
        // A name the certificate does not carry (it names hlrs and 127.0.0.1).
        let name = try sb.ferry(["jobs", "list", "--api", "https://localhost:\(port)", "--ca", sb.ca, "--token-file", sb.tokenFile])
        #expect(!name.succeeded && name.stderr.contains("certificate verification failed: hostname mismatch"), "\(name)")
        // https without a CA to check it with.
        let noCA = try sb.ferry(["jobs", "list", "--api", api, "--token-file", sb.tokenFile])
        #expect(!noCA.succeeded && noCA.stderr.contains("needs the federation CA"), "\(noCA)")
        // Plain http to another host: refused before any connection (no address outside
        // loopback is ever dialled: the check comes first).
        let plain = try sb.ferry(["jobs", "list", "--api", "http://192.0.2.1:7480", "--token-file", sb.tokenFile])
        #expect(!plain.succeeded && plain.stderr.contains("plain http only to this host"), "\(plain)")
        // Plain http to the https port: no answer that a client would take for one.
        let clear = try sb.ferry(["jobs", "list", "--api", "http://127.0.0.1:\(port)", "--token-file", sb.tokenFile], timeout: 60)
        #expect(!clear.succeeded, "\(clear)")
        #expect(server.isRunning)
    }

    @Test("a daemon follows a peer only if the peer shows its own certificate: a daemon of another center at that address is refused")
    func peerMustBeItself() throws {
        // "wuxi"'s API address is in fact hlrs's own API (a daemon of another center, with a
        // certificate the federation CA signed for that address).
        let port = try FederationE2ETests.freePort()
        let (sb, server, _) = try Self.start("https-peer", peerAPI: "https://127.0.0.1:\(port)", listen: "127.0.0.1:\(port)")
        defer { server.stop() }
        let again = server
        let sb2 = sb
        let refused = waitUntil(timeout: 30, interval: 0.5) { again.process.stderr.contains("not of center wuxi") }
        #expect(refused, "the follower took hlrs's certificate for wuxi's: \(again.process.stderr.suffix(800))")
        let centers = try sb2.ferry(["centers", "--api", "https://127.0.0.1:\(port)", "--ca", sb2.ca, "--token-file", sb2.tokenFile])
        #expect(centers.stdout.contains("wuxi\tDOWN"), "\(centers)")
    }

    @Test("plain http is refused on an api_listen that is not loopback, and an http peer API on another host; a [[peer]] follow mode that is not one, or without an api")
    func plainOnlyOnLoopback() throws {
        let sb = try Sandbox("https-config")
        try sb.dir("data")
        for (i, daemonLines, peerLines, expected) in [
            (0, "api_listen = \"192.0.2.1:7480\"\napi_tls = false", "", "plain http only on a loopback api_listen"),
            (1, "api_listen = \"127.0.0.1:0\"", "[[peer]]\nname = \"wuxi\"\naddress = \"127.0.0.1:9\"\napi = \"http://192.0.2.1:7480\"", "plain http to another host"),
            // The follow mode: one of two words, and only with an api.
            (2, "api_listen = \"127.0.0.1:0\"", "[[peer]]\nname = \"wuxi\"\naddress = \"127.0.0.1:9\"\napi = \"127.0.0.1:7480\"\nfollow = \"everything\"",
             "[[peer]] follow is \"entries\""),
            (3, "api_listen = \"127.0.0.1:0\"", "[[peer]]\nname = \"wuxi\"\naddress = \"127.0.0.1:9\"\nfollow = \"datasets\"", "follow needs the peer's api"),
        ] {
            try writeFile(sb.file("c\(i).toml"), Array("""
                center = "hlrs"
                run_as = "root"
                listen = ["127.0.0.1:0"]
                certificate = "pki/hlrs.crt"
                key = "pki/hlrs.key"
                ca = "pki/ca.crt"
                [daemon]
                database = "c\(i).sqlite"
                \(daemonLines)
                \(peerLines)
                [[export]]
                name = "data"
                path = "data"
                access = "rw"
                users = ["*"]

                """.utf8))
            let r = try sb.ferry(["serve", "--config", sb.file("c\(i).toml")], timeout: 30)
            #expect(!r.succeeded && r.stderr.contains(expected), "config \(i): \(r)")
        }
    }
}
