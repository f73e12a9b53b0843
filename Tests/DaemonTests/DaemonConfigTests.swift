import Testing
import Transfer
@testable import Daemon

/// The daemon decodes its own `[daemon]` settings (issue 14 item 5); the engine keeps the table.
@Suite("Daemon configuration")
struct DaemonConfigTests {
    @Test("[daemon] is decoded by the daemon: same keys, defaults, relative paths and errors as before")
    func decode() throws {
        let text = """
            center = "hlrs"
            [daemon]
            database = "q/jobs.sqlite"
            api_listen = "127.0.0.1:0"
            workers = 3
            allow_hosts = ["dtn.example:7400"]
            staging = "/scratch/stage"
            staging_quota = "24M"
            staging_bwlimit = "16MiB"
            api_tls = false
            catalog_indexes = ["mtime", "size"]
            catalog_scan_rows = 5000
            """
        let file = try ServerConfigFile(parsing: text, relativeTo: "/etc/ferry")
        let d = try #require(try DaemonConfig(file, path: "/etc/ferry/hlrs.toml"))
        #expect(d.database == "/etc/ferry/q/jobs.sqlite" && d.workers == 3 && d.apiListen == HostPort(host: "127.0.0.1", port: 0))
        #expect(d.allowHosts == ["dtn.example:7400"] && d.staging == "/scratch/stage" && d.stagingQuota == 24 << 20 && d.stagingBandwidth == 16 << 20)
        #expect(d.apiTLS == false && d.leaseSeconds == 30 && d.maxAttempts == 5 && d.replicas == nil)
        #expect(d.catalogIndexes == [.size, .mtime] && d.catalogScanRows == 5000)
        #expect(try DaemonConfig(ServerConfigFile(parsing: "[daemon]", relativeTo: "/x"), path: "c")?.catalogIndexes == [])
        #expect(try DaemonConfig(ServerConfigFile(parsing: "[daemon]\ndatabase = \"postgres://f@db:5432/q\"", relativeTo: "/x"), path: "c")?.database == "postgres://f@db:5432/q")
        #expect(try DaemonConfig(ServerConfigFile(parsing: "[daemon]", relativeTo: "/x"), path: "c")?.database == "/x/jobs.sqlite")
        // A system installation's configuration (under /etc, which the packaged unit makes
        // read-only) keeps its database in /var/lib/ferry unless it names one.
        #expect(try DaemonConfig(ServerConfigFile(parsing: "[daemon]", relativeTo: "/etc/ferry"), path: "c")?.database == "/var/lib/ferry/jobs.sqlite")
        #expect(try DaemonConfig(ServerConfigFile(parsing: "[daemon]\ndatabase = \"/srv/j.sqlite\"", relativeTo: "/etc/ferry"), path: "c")?.database == "/srv/j.sqlite")
        #expect(try DaemonConfig(ServerConfigFile(parsing: "center = \"c\"", relativeTo: "/x"), path: "c") == nil)
        // A user's share of the workers: one less than the center's (workers × nodes), at
        // least one; a per_user that is set is what applies.
        func share(_ lines: String) throws -> (Int?, Int)? {
            try DaemonConfig(ServerConfigFile(parsing: "[daemon]\n" + lines, relativeTo: "/x"), path: "c").map { ($0.perUser, $0.userShare) }
        }
        #expect(d.perUser == nil && d.userShare == 2)
        #expect(try share("")! == (nil, 1))
        #expect(try share("workers = 1")! == (nil, 1))
        #expect(try share("workers = 4\nnodes = 3")! == (nil, 11))
        #expect(try share("workers = 2\nper_user = 8")! == (8, 8))
    }

    @Test("a bad [daemon] setting is an error naming the file and the key; the engine's parse keeps the table as it is")
    func errors() throws {
        for (bad, says) in [("workers = 0", "daemon.workers"), ("typo = 1", "daemon.typo"), ("staging_quota = \"1Q\"", "staging_quota"),
                            ("api_connections = 2000000", "api_connections"), ("api_request_seconds = 0", "api_request_seconds"), ("api_request_seconds = 7200", "api_request_seconds"), ("staging = \"rel\"", "daemon.staging"), ("api_tls = 1", "api_tls"),
                            ("catalog_indexes = [\"name\"]", "catalog_indexes"), ("catalog_indexes = \"size\"", "catalog_indexes"),
                            ("catalog_indexes = [\"size; DROP TABLE files\"]", "catalog_indexes"), ("catalog_scan_rows = 99", "catalog_scan_rows"),
                            ("catalog_scan_rows = \"2M\"", "catalog_scan_rows"), ("node = \"a b\"", "daemon.node"), ("node = \"\"", "daemon.node"),
                            ("node = \"../x\"", "daemon.node"), ("nodes = 0", "daemon.nodes"), ("nodes = 5000", "daemon.nodes"),
                            ("stripe_range = \"6M\"", "4 MiB"), ("stripe_range = \"0\"", "stripe_range"), ("stripe_threshold = \"lots\"", "stripe_threshold"),
                            ("stripe_files = 70000", "stripe_files"), ("per_node = 65", "per_node"), ("stripe_group = 5", "stripe_group")] {
            let file = try ServerConfigFile(parsing: "[daemon]\n" + bad, relativeTo: "/x")
            #expect(file.daemonTable != nil)
            do {
                _ = try DaemonConfig(file, path: "/x/c.toml")
                Issue.record("accepted \(bad)")
            } catch let e as TransferError {
                #expect(e.code == .usage && e.message.hasPrefix("/x/c.toml: ") && e.message.contains(says), "\(e.message)")
            }
        }
        #expect(throws: TransferError.self) { try ServerConfigFile(parsing: "daemon = 1", relativeTo: "/x") }
    }

    @Test("striping: this node and the center's count, how jobs are cut, and the peers' nodes; bad peer nodes refused")
    func striping() throws {
        let file = try ServerConfigFile(parsing: """
            [daemon]
            node = "dtn-2.hlrs"
            nodes = 3
            stripe_threshold = "1T"
            stripe_range = "64M"
            stripe_files = 500
            stripe_group = "32M"
            per_node = 3
            [[peer]]
            name = "wuxi"
            address = "[fd00::1]:7700"
            nodes = ["[fd00::1]:7700", "[fd00::2]:7700"]
            """, relativeTo: "/x")
        let d = try #require(try DaemonConfig(file, path: "c"))
        #expect(d.node == "dtn-2.hlrs" && d.nodes == 3 && d.stripe.threshold == 1 << 40 && d.stripe.rangeBytes == 64 << 20)
        #expect(d.stripe.groupFiles == 500 && d.stripe.groupBytes == 32 << 20 && d.stripe.perNode == 3)
        #expect(file.peerNodes["wuxi"] == [HostPort(host: "fd00::1", port: 7700), HostPort(host: "fd00::2", port: 7700)])
        let defaults = try #require(try DaemonConfig(ServerConfigFile(parsing: "[daemon]", relativeTo: "/x"), path: "c"))
        #expect(defaults.nodes == 1 && defaults.stripe == StripeSettings() && StripeSettings.isNodeName(defaults.node))
        for bad in ["nodes = []", "nodes = \"h:1\"", "nodes = [1]", "nodes = [\"no port\"]"] {
            #expect(throws: TransferError.self, "\(bad)") {
                try ServerConfigFile(parsing: "[[peer]]\nname = \"wuxi\"\naddress = \"h:1\"\n" + bad, relativeTo: "/x")
            }
        }
    }
}
