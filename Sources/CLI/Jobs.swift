import ArgumentParser
import Foundation
import Transfer

extension Ferry {
    /// `ferry jobs`: transfers run by a center's daemon (third-party transfers included).
    struct Jobs: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "jobs",
            abstract: "Submit and follow transfer jobs on a Ferry daemon.",
            subcommands: [Submit.self, List.self, Show.self, Cancel.self, Retry.self, Wait.self, Watch.self]
        )
    }
}

/// The daemon's API address and the user's token.
struct APIOptions: ParsableArguments {
    @Option(help: "The daemon's API, https://HOST:PORT (http only on loopback) (env FERRY_API).")
    var api: String?

    @Option(help: "Federation CA certificate to verify an https API with (env FERRY_CA).")
    var ca: String?

    @Option(name: .customLong("token-file"), help: "Your user token (env FERRY_TOKEN_FILE).")
    var tokenFile: String?

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    /// Calls the API; returns the decoded JSON object, or exits 1 with the daemon's error.
    func call(_ method: String, _ path: String, body: [String: Any]? = nil, timeout: Double = 30) throws -> [String: Any] {
        do { return try request(method, path, body: body, timeout: timeout) } catch let f as APIFailure { fail(f.message) }
    }

    /// What went wrong with a call; `transient` when asking again may work (no answer, a
    /// timeout, a 5xx), not when the daemon refused (4xx).
    struct APIFailure: Error {
        var message: String
        var transient: Bool
    }

    /// Calls the API; returns the decoded JSON object or throws `APIFailure`.
    func request(_ method: String, _ path: String, body: [String: Any]? = nil, timeout: Double = 30) throws -> [String: Any] {
        let env = ProcessInfo.processInfo.environment
        guard let base = api ?? env["FERRY_API"] else { throw ValidationError("give the daemon's API: --api https://HOST:PORT or FERRY_API") }
        guard let tokenPath = tokenFile ?? env["FERRY_TOKEN_FILE"] else { throw ValidationError("give your token: --token-file FILE or FERRY_TOKEN_FILE") }
        var headers = [("Authorization", "Bearer " + (try readToken(tokenPath)))]
        var data: [UInt8]?
        if let body {
            headers.append(("Content-Type", "application/json"))
            data = Array(try JSONSerialization.data(withJSONObject: body))
        }
        let answer: HTTPClient.Response
        do {
            let client = try HTTPClient(base, ca: ca ?? env["FERRY_CA"], timeout: timeout)
            answer = try client.send(method, path, headers: headers, body: data)
        } catch let e as TransferError where e.code == .usage {
            throw ValidationError(e.message)
        } catch let e as TransferError {
            // A refused certificate is not worth asking again; no answer or a timeout is.
            throw APIFailure(message: e.code == .timeout ? "\(base) did not answer within \(Int(timeout)) s" : "cannot reach \(base): \(e.message)",
                             transient: e.code != .auth)
        }
        let status = answer.status
        let obj = ((try? JSONSerialization.jsonObject(with: Data(answer.body))) as? [String: Any]) ?? [:]
        if !(200..<300).contains(status) { throw APIFailure(message: "\(obj["error"] as? String ?? "HTTP \(status)")", transient: status >= 500 || status == 0) }
        return obj
    }

    func fail(_ message: String) -> Never {
        FileHandle.standardError.write("ferry jobs: error: \(message)\n".data(using: .utf8)!)
        Foundation.exit(1)
    }

    func show(_ obj: [String: Any]) {
        if json {
            let d = (try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])) ?? Data()
            print(String(decoding: d, as: UTF8.self))
        } else {
            print(line(obj))
        }
    }

    func line(_ j: [String: Any]) -> String {
        let id = j["id"] as? Int ?? 0
        let state = (j["state"] as? String ?? "?") + (j["cancelled"] as? Bool == true ? " (cancelled)" : "")
        // A running job: its live progress (what `jobs watch` shows), not the last checkpoint.
        let progress = j["progress"] as? [String: Any]
        let bytes = UInt64(progress?["bytes_done"] as? Int ?? j["bytes"] as? Int ?? 0)
        let amount = progress.map { "\(byteText(bytes)) of \(byteText(UInt64($0["bytes_total"] as? Int ?? 0)))" } ?? byteText(bytes)
        var s = "\(id)\t\(state)\t\(j["source"] as? String ?? "") -> \(j["destination"] as? String ?? "")\t\(amount)\tattempts \(j["attempts"] as? Int ?? 0)"
        if let e = j["error"] as? String { s += "\t\(e)" }
        return s
    }
}

extension Ferry.Jobs {
    struct Submit: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Submit a transfer: SRC and DST are /EXPORT/PATH at the daemon's center or ferry://PEER/PATH.",
            discussion: "Example (center A pushes to center B, the laptop only watches): ferry jobs submit --api https://dtn-a:7480 -r /scratch/run1 ferry://b/incoming/run1")
        @OptionGroup var api: APIOptions
        @Flag(name: [.short, .customLong("recursive")]) var recursive = false
        @Option var protection = "private"
        @Option var compress = "auto"
        @Flag var checksum = false
        @Option var priority = 0
        @Option(help: "Bandwidth limit in bytes per second (K/M/G suffixes).") var bwlimit: String?
        @Option(name: .customLong("after"), help: "Run only after these jobs succeeded (repeatable).") var after: [Int] = []
        @Option(help: "Give up unless done within this duration (90s, 30m, 24h).") var deadline: String?
        @Option(name: .customLong("max-attempts"), help: "Attempts before the job fails (default: the daemon's).") var maxAttempts: Int?
        @Flag(help: "Wait for the job to end; exit 0 only on success or skipped.") var wait = false
        @Argument(help: "SRC... DST: with several sources, one job each, into the directory DST.") var paths: [String]

        func validate() throws {
            guard paths.count >= 2 else { throw ValidationError("give SRC and DST (or several SRC and a DST directory)") }
        }

        func run() throws {
            let destination = paths.last!
            let sources = Array(paths.dropLast())
            var body: [String: Any] = ["destination": destination, "recursive": recursive, "protection": protection,
                                       "compress": compress, "checksum": checksum, "priority": priority, "dependsOn": after]
            if sources.count == 1 { body["source"] = sources[0] } else { body["sources"] = sources }
            if let d = deadline { body["deadline"] = Int(Date().timeIntervalSince1970) + Int(try parseDuration(d)) }
            if let b = bwlimit { body["bwlimit"] = Int(try parseSize(b, what: "--bwlimit")) }
            if let m = maxAttempts { body["maxAttempts"] = m }
            let answer = try api.call("POST", "/api/v1/transfers", body: body)
            let jobs = (answer["transfers"] as? [[String: Any]]) ?? [answer]
            for j in jobs { api.show(j) }
            if wait {
                var failed = false
                for j in jobs {
                    do { try waitFor(j["id"] as? Int ?? 0, api: api) } catch { failed = true }
                }
                if failed { throw ExitCode(1) }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List your jobs (a page; --after for the next).")
        @OptionGroup var api: APIOptions
        @Option(help: "Only these states, comma-separated.") var state: String?
        @Option var after = 0
        @Option var limit = 100
        func run() throws {
            var items = [("after", String(after)), ("limit", String(limit))]
            if let s = state { items.append(("state", s)) }
            let page = try api.call("GET", "/api/v1/transfers" + query(items))
            if api.json { api.show(page); return }
            for j in page["transfers"] as? [[String: Any]] ?? [] { print(api.line(j)) }
            if let next = page["next_after"] as? Int {
                FileHandle.standardError.write("ferry: more jobs follow: --after \(next) for the next page\n".data(using: .utf8)!)
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one job, with the reason if it failed.")
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        func run() throws { api.show(try api.call("GET", "/api/v1/transfers/\(id)")) }
    }

    struct Cancel: ParsableCommand {
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        func run() throws { api.show(try api.call("POST", "/api/v1/transfers/\(id)/cancel")) }
    }

    struct Retry: ParsableCommand {
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        func run() throws { api.show(try api.call("POST", "/api/v1/transfers/\(id)/retry")) }
    }

    struct Wait: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Wait until a job ends; exit 0 on success or skipped, 1 otherwise.")
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        @Option(help: "Give up waiting after this many seconds.") var timeout = 86_400
        func run() throws { try waitFor(id, api: api, seconds: timeout) }
    }
}

extension Ferry.Jobs {
    struct Watch: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Follow a job's progress until it ends (a line per change; --json: the job as JSON lines).")
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        @Option(help: "Give up after this many seconds.") var timeout = 86_400
        func run() throws { try waitFor(id, api: api, seconds: timeout, progress: true) }
    }
}

/// Polls a job until it ends (bounded). `wait` reports state changes on stderr and the final job
/// on stdout; `watch` (`progress`) prints a line (or, with --json, the job) whenever its state
/// or byte count changes. Exit 0 on success or skipped.
func waitFor(_ id: Int, api: APIOptions, seconds: Int = 86_400, progress: Bool = false) throws {
    let deadline = Date().addingTimeInterval(Double(seconds))
    var last = ""
    let final: Set<String> = ["success", "failed", "upstream_failed", "skipped"]
    while Date() < deadline {
        let j = try api.call("GET", "/api/v1/transfers/\(id)")
        let state = (j["state"] as? String ?? "?") + (j["cancelled"] as? Bool == true ? " (cancelled)" : "")
        var text = state
        if progress {
            let p = j["progress"] as? [String: Any]
            let done = UInt64(p?["bytes_done"] as? Int ?? j["bytes"] as? Int ?? 0)
            let total = UInt64(p?["bytes_total"] as? Int ?? 0)
            text = "\(id) \(state) \(byteText(done))" + (total > 0 ? " of \(byteText(total))" : "")
        }
        if text != last {
            if progress {
                if api.json { api.show(j) } else { print(text) }
                fflush(stdout)
            } else if !api.json {
                FileHandle.standardError.write("ferry jobs: \(id) \(state)\n".data(using: .utf8)!)
            }
            last = text
        }
        if final.contains(state) {
            if !progress { api.show(j) }
            if state == "success" || state == "skipped" { return }
            throw ExitCode(1)
        }
        usleep(progress ? 400_000 : 300_000)
    }
    api.fail("job \(id) did not end within \(seconds) s (last: \(last))")
}
