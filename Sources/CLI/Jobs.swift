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
        let (base, ca, token) = try target()
        var headers = [("Authorization", "Bearer " + token)]
        var data: [UInt8]?
        if let body {
            headers.append(("Content-Type", "application/json"))
            data = Array(try APIJSON.encoder().encode(body))
        }
        let answer: HTTPClient.Response
        do {
            let client = try HTTPClient(base, ca: ca, timeout: timeout)
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

    /// The daemon's API, the CA to verify it with, and the user's token.
    private func target() throws -> (base: String, ca: String?, token: String) {
        let env = ProcessInfo.processInfo.environment
        let config = try ClientConfig.get()
        guard let base = api ?? env["FERRY_API"] ?? config.api else {
            throw ValidationError("give the daemon's API: --api https://HOST:PORT, FERRY_API, or api = \"https://HOST:PORT\" in ~/.config/ferry/config.toml")
        }
        guard let tokenPath = tokenFile ?? env["FERRY_TOKEN_FILE"] ?? config.tokenFile else {
            throw ValidationError("give your token: --token-file FILE, FERRY_TOKEN_FILE, or token_file in ~/.config/ferry/config.toml")
        }
        return (base, ca ?? env["FERRY_CA"] ?? config.ca, try readToken(tokenPath))
    }

    /// `GET path` as a stream of server-sent events: `sink` gets the body as it arrives (false
    /// to stop). Returns the answer's status (the sink got nothing unless it is 200). An answer
    /// may last as long as bytes keep coming, at most `idle` seconds apart; `check` runs at
    /// least four times a second and may end it by throwing.
    func stream(_ path: String, idle: Double, check: @escaping () throws -> Void, _ sink: @escaping (ArraySlice<UInt8>) throws -> Bool) throws -> Int {
        let (base, ca, token) = try target()
        let client = try HTTPClient(base, ca: ca, timeout: idle)
        return try client.send("GET", path, headers: [("Authorization", "Bearer " + token), ("Accept", "text/event-stream")],
                               stream: sink, idle: idle, check: check).status
    }

    /// Every command that talks to the daemon ends here: the message names that command
    /// (`ferry stat: error: ...`), not always `ferry jobs`.
    func fail(_ message: String) -> Never {
        let command = CommandLine.arguments.dropFirst().first { !$0.hasPrefix("-") } ?? "jobs"
        printError("ferry \(command): error: \(message)\n")
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
            commandName: "submit",
            abstract: "Submit a transfer: SRC and DST are /EXPORT/PATH at the daemon's center or ferry://PEER/PATH.",
            discussion: "Example (center A pushes to center B, the laptop only watches): ferry jobs submit --api https://dtn-a:7480 -r /scratch/run1 ferry://b/incoming/run1")
        @OptionGroup var api: APIOptions
        @Flag(name: [.short, .customLong("recursive")]) var recursive = false
        @Option var protection = "private"
        @Option var compress = "auto"
        @Flag var checksum = false
        @Option var priority = 0
        @Option(help: "Bandwidth limit in bytes per second: 500K, 64M; a bare number is KiB/s; 0 or off: no limit.") var bwlimit: String?
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
            if let b = bwlimit { r.bwlimit = try parseRate(b) }
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
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List your jobs (a page; --after for the next).")
        @OptionGroup var api: APIOptions
        @Option(help: "Only these states, comma-separated.") var state: String?
        @Option var after = 0
        @Option var limit = 100
        func validate() throws {
            // Refused here as bad usage (exit 64), with the states to choose from; the daemon
            // refuses them too (a 400), which read as a failure to reach it (exit 1).
            guard let state else { return }
            if let bad = state.split(separator: ",", omittingEmptySubsequences: false).map(String.init).first(where: { !V1.jobStates.contains($0) }) {
                throw ValidationError("--state: '\(bad)' is not a job state (one of \(V1.jobStates.joined(separator: ", ")))")
            }
        }
        func run() throws {
            var items = [("after", String(after)), ("limit", String(limit))]
            if let s = state { items.append(("state", s)) }
            let page = try api.call("GET", "/api/v1/transfers" + query(items), as: V1.TransferPage.self)
            if api.json { api.printJSON(page); return }
            for j in page.transfers { print(api.line(j)) }
            if page.more, let next = page.nextAfter {
                printError("ferry: more jobs follow: --after \(next) for the next page\n")
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one job, with the reason if it failed.")
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        func run() throws { api.show(try api.call("GET", "/api/v1/transfers/\(id)", as: V1.Transfer.self)) }
    }

    struct Cancel: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Cancel a job: a running transfer stops and keeps what it moved (retry resumes it).")
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        func run() throws { api.show(try api.call("POST", "/api/v1/transfers/\(id)/cancel", as: V1.Transfer.self)) }
    }

    struct Retry: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "retry", abstract: "Queue a failed or cancelled job again; it resumes from what its earlier attempts moved.")
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        func run() throws { api.show(try api.call("POST", "/api/v1/transfers/\(id)/retry", as: V1.Transfer.self)) }
    }

    struct Wait: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "wait", abstract: "Wait until a job ends; exit 0 on success or skipped, 1 otherwise.")
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        @Option(help: "Give up waiting after this many seconds.") var timeout = 86_400
        func run() throws { try waitFor(id, api: api, seconds: timeout) }
    }
}

extension Ferry.Jobs {
    struct Watch: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "watch", abstract: "Follow a job's progress until it ends (a line per change; --json: the job as JSON lines).")
        @OptionGroup var api: APIOptions
        @Argument var id: Int
        @Option(help: "Give up after this many seconds.") var timeout = 86_400
        func run() throws { try waitFor(id, api: api, seconds: timeout, progress: true) }
    }
}

/// `waitFor` gave up because `interrupted` said so (Ctrl-C): the job goes on at the daemon.
struct WaitInterrupted: Error {}

/// Follows a job until it ends (bounded by `seconds`). `wait` reports state changes on stderr
/// and the final job on stdout; `watch` (`progress`) prints a line (or, with --json, the job)
/// whenever its state or byte count changes. Exit 0 on success or skipped.
///
/// Pushed, not polled: the job's event stream (`GET /api/v1/transfers/{id}/events`, which the
/// daemon feeds from its queue's change feed) says each change as it happens, on one
/// connection, and costs the daemon no query while nothing changes; a poll cost a request
/// and a read of the queue three times a second per waiting user. When the stream cannot be
/// used (a daemon restarting, a proxy that buffers, no answer for 75 s although the daemon
/// sends a comment every 30 s), the rest of the wait polls at `WaitPace`'s pace, as before.
func waitFor(_ id: Int, api: APIOptions, seconds: Int = 86_400, progress: Bool = false, interrupted: @escaping () -> Bool = { false }) throws {
    let deadline = Date().addingTimeInterval(Double(seconds))
    let shown = JobShown(id: id, api: api, progress: progress)
    let ended: V1.Transfer?
    do {
        ended = try followEvents(id, api: api, shown: shown) {
            if interrupted() { throw WaitInterrupted() }
            if Date() >= deadline { throw WaitExpired() }
        }
    } catch is WaitExpired {
        api.fail("job \(id) did not end within \(seconds) s (last: \(shown.last))")
    }
    if let ended { return try shown.finish(ended) }
    var pace = WaitPace(steady: progress ? 0.4 : 0.3)
    while Date() < deadline {
        if interrupted() { throw WaitInterrupted() }
        let j = try api.call("GET", "/api/v1/transfers/\(id)", as: V1.Transfer.self)
        shown.see(j)
        if j.state.isFinal { return try shown.finish(j) }
        usleep(useconds_t(pace.next(after: j) * 1e6))
    }
    api.fail("job \(id) did not end within \(seconds) s (last: \(shown.last))")
}

/// The wait's own deadline passed (`waitFor`'s `seconds`).
private struct WaitExpired: Error {}

/// What a wait or a watch has printed of a job: a line (or the job) per change.
final class JobShown {
    let id: Int
    let api: APIOptions
    let progress: Bool
    private(set) var last = ""

    init(id: Int, api: APIOptions, progress: Bool) {
        self.id = id; self.api = api; self.progress = progress
    }

    /// Prints `j` if it changed from what was printed last.
    func see(_ j: V1.Transfer) {
        let state = j.stateText
        var text = state
        if progress {
            let done = UInt64(max(0, j.progress?.bytesDone ?? j.bytes))
            let total = UInt64(max(0, j.progress?.bytesTotal ?? 0))
            text = "\(id) \(state) \(byteText(done))" + (total > 0 ? " of \(byteText(total))" : "")
        }
        guard text != last else { return }
        if progress {
            if api.json { api.show(j) } else { print(text) }
            fflush(stdout)
        } else if !api.json {
            printError("ferry jobs: \(id) \(state)\n")
        }
        last = text
    }

    /// The job ended: the final job (for `wait`; its line carries the reason of a failure),
    /// exit 0 when dependents may run. A watch's last line is its state and bytes only: the
    /// reason of a failure follows on stderr (a center-to-center `ferry cp` that failed said
    /// only "failed 0 B").
    func finish(_ j: V1.Transfer) throws {
        if !progress { api.show(j) }
        if j.state.satisfiesDependents { return }
        if progress && !api.json {
            let reason = j.error.map { ": " + (j.errorCode.map { "[\($0)] " } ?? "") + $0 } ?? ""
            printError("ferry: job \(id) \(j.stateText)\(reason) (ferry jobs show \(id))\n")
        }
        throw ExitCode(1)
    }
}

/// Follows the job's event stream until its `end` event: the job as it ended, or nil when the
/// stream could not be used or broke first (the caller polls). `check` runs at least four
/// times a second; what it throws ends the wait.
func followEvents(_ id: Int, api: APIOptions, shown: JobShown, check: @escaping () throws -> Void) throws -> V1.Transfer? {
    let parser = EventStreamParser()
    var ended: V1.Transfer?
    var unreadable = false
    do {
        let status = try api.stream("/api/v1/transfers/\(id)/events", idle: 75, check: check) { bytes in
            try parser.feed(bytes) { event, data in
                guard event == "progress" || event == "end" else { return true }
                guard let j = try? APIJSON.decode(V1.Transfer.self, from: Data(data)) else { unreadable = true; return false }
                shown.see(j)
                if j.state.isFinal { ended = j; return false }
                return true
            }
        }
        if status != 200 || unreadable { return nil }
    } catch is WaitInterrupted {
        throw WaitInterrupted()
    } catch is WaitExpired {
        throw WaitExpired()
    } catch {
        // The stream broke (a restart, a cut connection, a proxy): polling goes on from here.
        return ended
    }
    return ended
}

/// Server-sent events (the WHATWG form the daemon writes: `event:` and `data:` lines, a blank
/// line ends an event, lines starting with `:` are comments), bounded: a line or an event's
/// data over 1 MiB ends the stream as unreadable.
final class EventStreamParser {
    private var pending: [UInt8] = []
    private var event = ""
    private var data: [UInt8] = []
    static let maxBytes = 1 << 20

    struct TooLong: Error {}

    /// Feeds bytes; `deliver` gets each whole event (its name, "message" when it had none, and
    /// its data) and returns false to stop. Returns false once `deliver` did.
    func feed(_ bytes: ArraySlice<UInt8>, _ deliver: (String, [UInt8]) throws -> Bool) throws -> Bool {
        pending += bytes
        var start = 0
        defer { pending.removeFirst(start) }
        while let nl = pending[start...].firstIndex(of: 10) {
            var line = pending[start..<nl]
            start = nl + 1
            if line.last == 13 { line = line.dropLast() }
            if line.isEmpty {
                let (name, payload) = (event.isEmpty ? "message" : event, data)
                event = ""; data = []
                if !payload.isEmpty, try !deliver(name, payload) { return false }
                continue
            }
            if line.first == UInt8(ascii: ":") { continue }
            let colon = line.firstIndex(of: UInt8(ascii: ":")) ?? line.endIndex
            let field = String(decoding: line[..<colon], as: UTF8.self)
            var value = colon < line.endIndex ? line[(colon + 1)...] : line[line.endIndex...]
            if value.first == UInt8(ascii: " ") { value = value.dropFirst() }
            switch field {
            case "event": event = String(decoding: value, as: UTF8.self)
            case "data":
                if !data.isEmpty { data.append(10) }
                data += value
                if data.count > EventStreamParser.maxBytes { throw TooLong() }
            default: break
            }
        }
        if pending.count - start > EventStreamParser.maxBytes { throw TooLong() }
        return true
    }
}
