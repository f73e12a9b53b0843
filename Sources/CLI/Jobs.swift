import ArgumentParser
import Daemon
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

    /// Calls the API; returns its answer as the contract's type `T` (`Daemon.V1`), or exits 1
    /// with the daemon's error.
    func call<T: Decodable>(_ method: String, _ path: String, body: (any Encodable)? = nil, as type: T.Type, timeout: Double = 30) throws -> T {
        do { return try request(method, path, body: body, as: type, timeout: timeout) } catch let f as APIFailure { fail(f.message) }
    }

    /// What went wrong with a call; `transient` when asking again may work (no answer, a
    /// timeout, a 5xx), not when the daemon refused (4xx).
    struct APIFailure: Error {
        var message: String
        var transient: Bool
    }

    /// Calls the API; returns its answer as `T`, or throws `APIFailure` (with the problem's
    /// detail when the daemon refused).
    func request<T: Decodable>(_ method: String, _ path: String, body: (any Encodable)? = nil, as type: T.Type, timeout: Double = 30) throws -> T {
        let env = ProcessInfo.processInfo.environment
        let config = try ClientConfig.get()
        guard let base = api ?? env["FERRY_API"] ?? config.api else {
            throw ValidationError("give the daemon's API: --api https://HOST:PORT, FERRY_API, or api = \"https://HOST:PORT\" in ~/.config/ferry/config.toml")
        }
        guard let tokenPath = tokenFile ?? env["FERRY_TOKEN_FILE"] ?? config.tokenFile else {
            throw ValidationError("give your token: --token-file FILE, FERRY_TOKEN_FILE, or token_file in ~/.config/ferry/config.toml")
        }
        var headers = [("Authorization", "Bearer " + (try readToken(tokenPath)))]
        var data: [UInt8]?
        if let body {
            headers.append(("Content-Type", "application/json"))
            data = Array(try APIJSON.encoder().encode(body))
        }
        let answer: HTTPClient.Response
        do {
            let client = try HTTPClient(base, ca: ca ?? env["FERRY_CA"] ?? config.ca, timeout: timeout)
            answer = try client.send(method, path, headers: headers, body: data)
        } catch let e as TransferError where e.code == .usage {
            throw ValidationError(e.message)
        } catch let e as TransferError {
            // A refused certificate is not worth asking again; no answer or a timeout is.
            throw APIFailure(message: e.code == .timeout ? "\(base) did not answer within \(Int(timeout)) s" : "cannot reach \(base): \(e.message)",
                             transient: e.code != .auth)
        }
        let status = answer.status
        if !(200..<300).contains(status) {
            let problem = try? APIJSON.decode(V1.Problem.self, from: Data(answer.body))
            throw APIFailure(message: problem?.detail ?? "HTTP \(status)", transient: status >= 500 || status == 0)
        }
        do { return try APIJSON.decode(T.self, from: Data(answer.body)) } catch let e as DecodingError {
            throw APIFailure(message: "\(base)\(path.prefix { $0 != "?" }) answered what this ferry cannot read (\(DaemonAPI.explain(e))): is it another version?",
                             transient: false)
        }
    }

    /// Every command that talks to the daemon ends here: the message names that command
    /// (`ferry stat: error: ...`), not always `ferry jobs`.
    func fail(_ message: String) -> Never {
        let command = CommandLine.arguments.dropFirst().first { !$0.hasPrefix("-") } ?? "jobs"
        FileHandle.standardError.write("ferry \(command): error: \(message)\n".data(using: .utf8)!)
        Ferry.leave(1)
    }

    /// An answer as --json prints it: the contract's encoding, keys sorted.
    func printJSON(_ value: some Encodable) {
        let e = APIJSON.encoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: (try? e.encode(value)) ?? Data(), as: UTF8.self))
    }

    func show(_ job: V1.Transfer) {
        if json { printJSON(job) } else { print(line(job)) }
    }

    func line(_ j: V1.Transfer) -> String {
        // A running job: its live progress (what `jobs watch` shows), not the last checkpoint.
        let bytes = UInt64(max(0, j.progress?.bytesDone ?? j.bytes))
        let amount = j.progress.map { "\(byteText(bytes)) of \(byteText(UInt64(max(0, $0.bytesTotal))))" } ?? byteText(bytes)
        var s = "\(j.id)\t\(j.stateText)\t\(j.source) -> \(j.destination)\t\(amount)\tattempts \(j.attempts)"
        if let p = j.parts {
            // A striped job: its parts' progress (the job's own counters are its coordinator's).
            s = "\(j.id)\t\(j.stateText)\t\(j.source) -> \(j.destination)\t\(byteText(UInt64(max(0, p.bytesDone)))) of \(byteText(UInt64(max(0, p.bytesTotal))))"
                + "\tparts \(p.success)/\(p.total) done, \(p.running) running\(p.failed > 0 ? ", \(p.failed) failed" : "")\tattempts \(j.attempts)"
        }
        if let e = j.error { s += "\t" + (j.errorCode.map { "[\($0)] " } ?? "") + e }
        if let n = j.note { s += "\t(" + n + ")" }
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
        @Flag(inversion: .prefixedNo, help: "Split the job across the center's transfer nodes (--stripe) or never (--no-stripe); by default the daemon stripes jobs above its stripe_threshold.") var stripe: Bool?
        @Flag(help: "Wait for the job to end; exit 0 only on success or skipped.") var wait = false
        @Argument(help: "SRC... DST: with several sources, one job each, into the directory DST.") var paths: [String]

        func validate() throws {
            guard paths.count >= 2 else { throw ValidationError("give SRC and DST (or several SRC and a DST directory)") }
        }

        func run() throws {
            let destination = paths.last!
            let sources = Array(paths.dropLast())
            var r = JobRequest(source: sources.count == 1 ? sources[0] : "", destination: destination)
            r.recursive = recursive
            r.protection = protection
            r.compress = compress
            r.checksum = checksum
            r.priority = priority
            r.dependsOn = after.map(Int64.init)
            if let d = deadline { r.deadline = Int64(Date().timeIntervalSince1970) + Int64(try parseDuration(d)) }
            if let b = bwlimit { r.bwlimit = try parseSize(b, what: "--bwlimit") }
            r.maxAttempts = maxAttempts
            r.stripe = stripe
            let submission = V1.TransferSubmission(request: r, sources: sources.count == 1 ? nil : sources)
            let jobs: [V1.Transfer] = sources.count == 1
                ? [try api.call("POST", "/api/v1/transfers", body: submission, as: V1.Transfer.self)]
                : try api.call("POST", "/api/v1/transfers", body: submission, as: V1.TransferBatch.self).transfers
            for j in jobs { api.show(j) }
            if wait {
                var failed = false
                for j in jobs {
                    do { try waitFor(Int(j.id), api: api) } catch { failed = true }
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
            let page = try api.call("GET", "/api/v1/transfers" + query(items), as: V1.TransferPage.self)
            if api.json { api.printJSON(page); return }
            for j in page.transfers { print(api.line(j)) }
            if page.more, let next = page.nextAfter {
                FileHandle.standardError.write("ferry: more jobs follow: --after \(next) for the next page\n".data(using: .utf8)!)
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one job, with the reason if it failed.")
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        func run() throws { api.show(try api.call("GET", "/api/v1/transfers/\(id)", as: V1.Transfer.self)) }
    }

    struct Cancel: ParsableCommand {
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        func run() throws { api.show(try api.call("POST", "/api/v1/transfers/\(id)/cancel", as: V1.Transfer.self)) }
    }

    struct Retry: ParsableCommand {
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        func run() throws { api.show(try api.call("POST", "/api/v1/transfers/\(id)/retry", as: V1.Transfer.self)) }
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

/// Polls a job until it ends (bounded; at `WaitPace`'s pace). `wait` reports state changes on stderr and the final job
/// on stdout; `watch` (`progress`) prints a line (or, with --json, the job) whenever its state
/// or byte count changes. Exit 0 on success or skipped.
/// `waitFor` gave up because `interrupted` said so (Ctrl-C): the job goes on at the daemon.
struct WaitInterrupted: Error {}

func waitFor(_ id: Int, api: APIOptions, seconds: Int = 86_400, progress: Bool = false, interrupted: () -> Bool = { false }) throws {
    let deadline = Date().addingTimeInterval(Double(seconds))
    var last = ""
    var pace = WaitPace(steady: progress ? 0.4 : 0.3)
    while Date() < deadline {
        if interrupted() { throw WaitInterrupted() }
        let j = try api.call("GET", "/api/v1/transfers/\(id)", as: V1.Transfer.self)
        let state = j.stateText
        var text = state
        if progress {
            let done = UInt64(max(0, j.progress?.bytesDone ?? j.bytes))
            let total = UInt64(max(0, j.progress?.bytesTotal ?? 0))
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
        if j.state.isFinal {
            if !progress { api.show(j) }
            if j.state.satisfiesDependents { return }
            throw ExitCode(1)
        }
        usleep(useconds_t(pace.next(after: j) * 1e6))
    }
    api.fail("job \(id) did not end within \(seconds) s (last: \(last))")
}
