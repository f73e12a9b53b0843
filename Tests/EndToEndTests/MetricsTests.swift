// /metrics as Prometheus reads it (issue 17, item 3): parsed by prometheus_client's text
// parser, with the transfer server's families after a `ferry cp`, the daemon's after a job,
// the build, the process and the certificates' expiry.

import Foundation
import Testing

@Suite("Metrics", .serialized)
struct MetricsTests {
    /// Every sample of `url` as NAME{LABELS} VALUE (labels sorted, values unquoted), and each
    /// family's type, through prometheus_client's parser (it refuses what Prometheus would
    /// refuse: a bad line, a histogram without +Inf, ...).
    static func scrape(_ url: String) -> (families: [String: String], samples: [String: Double]) {
        let script = """
            import sys, urllib.request
            from prometheus_client.parser import text_string_to_metric_families
            text = urllib.request.urlopen(sys.argv[1], timeout=20).read().decode()
            for fam in text_string_to_metric_families(text):
                print("FAMILY", fam.name, fam.type)
                for s in fam.samples:
                    print(s.name + "{" + ",".join("%s=%s" % kv for kv in sorted(s.labels.items())) + "}", s.value)
            """
        let r = runTool("/opt/ferry-test-venv/bin/python", ["-c", script, url], timeout: 60)
        #expect(r.status == 0, "\(r.output)")
        var samples: [String: Double] = [:]
        var families: [String: String] = [:]
        for line in r.output.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.first == "FAMILY", parts.count == 3 { families[String(parts[1])] = String(parts[2]); continue }
            if parts.count == 2, let v = Double(parts[1]) { samples[String(parts[0])] = v }
        }
        return (families, samples)
    }

    @Test("metrics_listen: a transfer server without a daemon serves /metrics and /health on an address of its own; nothing else there; a port in use is a clear start-up error")
    func serverWithoutDaemon() throws {
        let sb = try Sandbox("metrics-plain")
        let root = try sb.dir("root")
        let server = try FerryServer(sb, root: root, extra: ["--metrics-listen", "127.0.0.1:0"])
        defer { server.stop() }
        var metricsURL = ""
        #expect(waitUntil(timeout: 20) {
            guard let line = server.process.stdout.split(separator: "\n").first(where: { $0.contains(" metrics on http://") }) else { return false }
            metricsURL = String(line[line.range(of: "http://")!.lowerBound...])
            return true
        }, "\(server.process.stdout)")
        let src = try sb.dir("local") + "/m.bin"
        try writeRandomFile(src, size: 2 * E2E.MiB)
        let push = try sb.cp(src, server.url("m.bin"))
        #expect(push.succeeded, "\(push)")
        let (families, samples) = Self.scrape(metricsURL)
        for (name, type) in [("ferry_server_sessions", "counter"), ("ferry_server_bytes", "counter"), ("ferry_server_tls_handshake_seconds", "histogram"),
                             ("ferry_build_info", "gauge"), ("ferry_certificate_expiry_timestamp_seconds", "gauge"), ("process_resident_memory_bytes", "gauge")] {
            #expect(families[name] == type, "\(name): \(families[name] ?? "missing") in \(families.keys.sorted())")
        }
        #expect(families["ferry_jobs"] == nil, "no daemon, no queue")
        #expect(samples["ferry_server_sessions_total{direction=push,protection=private,result=ok}"] == 1, "\(samples.filter { $0.key.hasPrefix("ferry_server_sessions") })")
        #expect(samples["ferry_server_bytes_total{direction=push,protection=private}"] == Double(2 * E2E.MiB))
        let base = String(metricsURL.dropLast("/metrics".count))
        #expect(DaemonE2ETests.httpGet(base + "/health") == "ok\n")
        let other = runTool("/usr/bin/python3", ["-c", """
            import sys, urllib.request, urllib.error
            try: urllib.request.urlopen(sys.argv[1], timeout=20); print(200)
            except urllib.error.HTTPError as e: print(e.code)
            """, base + "/api/v1/transfers"], timeout: 30)
        #expect(other.output.trimmingCharacters(in: .whitespacesAndNewlines) == "404", "\(other.output)")
        // The same port again: the second server says which listener failed, and stops.
        let port = String(base.split(separator: ":").last ?? "")
        let second = try FerryProcess(["serve", "--root", root, "--listen", "127.0.0.1:0", "--cert", sb.centerCert, "--key", sb.centerKey, "--ca", sb.ca,
                                       "--run-as", "root", "--metrics-listen", "127.0.0.1:" + port], logDir: sb.path + "/logs")
        #expect(waitUntil(timeout: 20) { !second.isRunning }, "a second server on the metrics port kept running")
        #expect(second.stderr.contains("metrics endpoint (metrics_listen) cannot serve on 127.0.0.1:\(port)"), "\(second.stderr)")
        let bad = try sb.ferry(["serve", "--root", root, "--cert", sb.centerCert, "--key", sb.centerKey, "--ca", sb.ca, "--metrics-listen", "nowhere"])
        #expect(bad.status != 0 && bad.stderr.contains("nowhere"), "\(bad)")
    }

    @Test("/metrics parses with Prometheus' text parser and counts a ferry cp push, a refused connection, a daemon job, the build, the process and the certificates")
    func exposition() throws {
        let c = try DaemonE2ETests.start("metrics")
        defer { c.a.stop(); c.b.stop() }
        // Before any job, the configured peer has its series already (not only after a job).
        let fresh = DaemonE2ETests.httpGet(c.api + "/metrics")
        #expect(fresh.contains("ferry_peer_streams{peer=\"wuxi\"}") && fresh.contains("ferry_peer_throughput_bytes_per_second{peer=\"wuxi\"} 0"), "\(fresh)")
        let src = try c.sb.dir("local") + "/m.bin"
        try writeRandomFile(src, size: 3 * E2E.MiB + 5)
        let push = try c.sb.cp(src, c.a.url("scratch/m.bin"))
        #expect(push.succeeded, "\(push)")
        let refused = try c.sb.cp(src, c.a.url("scratch/x.bin"), tokenFile: try c.sb.wrongTokenFile())
        #expect(!refused.succeeded)
        let job = try DaemonE2ETests.jobs(c, ["submit", "--wait", "/scratch/m.bin", "ferry://wuxi/incoming/m.bin"])
        #expect(job.status == 0, "\(job)")
        // A registered dataset: the catalog's sizes by center.
        let alice = try c.sb.issueToken(user: "alice", scopes: ["rw:/scratch"], name: "alice.token")
        try writeRandomFile(try c.sb.dir("hlrs/scratch/ds") + "/a.bin", size: 1000)
        try writeRandomFile(try c.sb.dir("hlrs/scratch/ds/sub") + "/b.bin", size: 2345)
        let reg = try c.sb.ferry(["register", "--api", c.api, "--token-file", alice, "--dataset", "ds", "/scratch/ds"], timeout: 60)
        #expect(reg.status == 0, "\(reg)")

        let (families, samples) = Self.scrape(c.api + "/metrics")
        for (name, type) in [("ferry_server_sessions", "counter"), ("ferry_server_bytes", "counter"), ("ferry_server_refusals", "counter"),
                             ("ferry_server_tls_handshake_seconds", "histogram"), ("ferry_jobs", "gauge"), ("ferry_build_info", "gauge"),
                             ("ferry_certificate_expiry_timestamp_seconds", "gauge"), ("process_resident_memory_bytes", "gauge"),
                             ("process_cpu_seconds", "counter"), ("process_open_fds", "gauge"), ("ferry_peer_throughput_bytes_per_second", "gauge"),
                             ("ferry_job_duration_seconds", "histogram"), ("ferry_job_queue_wait_seconds", "histogram"), ("ferry_catalog_datasets", "gauge"),
                             ("ferry_catalog_files", "gauge"), ("ferry_catalog_bytes", "gauge")] {
            #expect(families[name] == type, "\(name): \(families[name] ?? "missing") in \(families.keys.sorted())")
        }
        #expect((samples["ferry_server_sessions_total{direction=push,protection=private,result=ok}"] ?? 0) >= 1, "\(samples.filter { $0.key.hasPrefix("ferry_server_sessions") })")
        #expect((samples["ferry_server_bytes_total{direction=push,protection=private}"] ?? 0) >= Double(3 * E2E.MiB + 5))
        #expect((samples["ferry_server_refusals_total{reason=auth}"] ?? 0) >= 1, "\(samples.filter { $0.key.hasPrefix("ferry_server_refusals") })")
        #expect((samples["ferry_server_tls_handshake_seconds_count{}"] ?? 0) >= 2)
        #expect(samples["ferry_jobs{state=success}"] == 1, "\(samples.filter { $0.key.hasPrefix("ferry_jobs") })")
        #expect((samples["process_resident_memory_bytes{}"] ?? 0) > 1_000_000 && (samples["process_open_fds{}"] ?? 0) > 3)
        #expect((samples["ferry_certificate_expiry_timestamp_seconds{certificate=center}"] ?? 0) > Date().timeIntervalSince1970)
        #expect(samples.keys.contains { $0.hasPrefix("ferry_build_info{commit=") }, "\(samples.keys.filter { $0.hasPrefix("ferry_build") })")
        #expect(samples["ferry_peer_up{peer=wuxi}"] == 1, "\(samples.filter { $0.key.hasPrefix("ferry_peer_up") })")
        // The job: one successful attempt, timed; its wait in the queue; the link's figure (it
        // read 0 after jobs before: only the tuner's own samples set it).
        #expect(samples["ferry_job_duration_seconds_count{outcome=success}"] == 1 && samples["ferry_job_duration_seconds_count{outcome=failed}"] == 0,
                "\(samples.filter { $0.key.hasPrefix("ferry_job_duration_seconds_count") })")
        #expect(samples["ferry_job_duration_seconds_bucket{le=+Inf,outcome=success}"] == 1)
        #expect(samples["ferry_job_queue_wait_seconds_count{}"] == 1)
        #expect((samples["ferry_peer_throughput_bytes_per_second{peer=wuxi}"] ?? 0) > 0, "\(samples.filter { $0.key.hasPrefix("ferry_peer_throughput") })")
        #expect(samples["ferry_catalog_datasets{center=hlrs}"] == 1 && samples["ferry_catalog_files{center=hlrs}"] == 2 && samples["ferry_catalog_bytes{center=hlrs}"] == 3345,
                "\(samples.filter { $0.key.hasPrefix("ferry_catalog") })")

        // The alert rules and the dashboard name only metrics the daemon exposes (the staging
        // cache's when it has one: this daemon has none), and promtool accepts the rules.
        let names = Set(samples.keys.map { String($0.prefix { $0 != "{" }) })
        for file in ["contrib/prometheus/ferry-rules.yml", "contrib/grafana/ferry.json"] {
            let text = try String(contentsOfFile: E2E.packageRoot + "/" + file, encoding: .utf8)
            let used = Set(text.matches(of: #/\b(?:ferry|process)_[a-z_]+/#).map { String($0.output) })
            #expect(!used.isEmpty)
            for n in used where !n.hasPrefix("ferry_staging_") {
                #expect(names.contains(n), "\(file) uses \(n), which /metrics does not have")
            }
        }
        let promtool = runTool("/usr/bin/promtool", ["check", "rules", E2E.packageRoot + "/contrib/prometheus/ferry-rules.yml"], timeout: 60)
        #expect(promtool.status == 0 && promtool.output.contains("SUCCESS"), "\(promtool.output)")
        let dashboard = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: E2E.packageRoot + "/contrib/grafana/ferry.json"))) as? [String: Any]
        #expect(((dashboard?["panels"] as? [Any])?.count ?? 0) >= 10)
    }
}
