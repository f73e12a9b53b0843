import ArgumentParser
import Daemon
import Foundation
import GlobalFS
import Transfer

#if canImport(Glibc)
import Glibc
#endif

/// Prestaging commands for the batch scheduler's hooks (contrib/slurm/burst_buffer.lua; PBS
/// and LSF prologs call `ferry stage-in --wait`). They read the job script's `#FERRY` lines
/// and ask this center's daemon (FERRY_API, with the scheduler's operator token) to do the
/// work. Exit 0: done; 1: failed, and the last line printed is the one-line reason the
/// scheduler shows; 75 (EX_TEMPFAIL): still staging (with --no-wait). Every command can run
/// twice with the same effect.
struct StageOptions: ParsableArguments {
    @OptionGroup var api: APIOptions
    @Option(help: "The scheduler's job id (replaces %j in the directives).") var job: String
    @Option(help: "The job script holding the #FERRY lines.") var script: String
    @Option(help: "The job's user id (its links and directories are made its own).") var uid: UInt32?
    @Flag(inversion: .prefixedNo, help: "Wait until everything is staged or something failed (the default).") var wait = true
    @Option(help: "Give up after this many seconds (default: a day).") var timeout: Int = 86_400

    /// The script's directives; a copy Slurm already substituted (/proc/PID/fd/N) keeps its text.
    func directives() throws -> [StageDirective] {
        guard let data = FileManager.default.contents(atPath: script) else { fail("cannot read the job script \(script)") }
        do {
            return try Directives.parse(String(decoding: data, as: UTF8.self), jobID: script.hasPrefix("/proc/") ? nil : job)
        } catch {
            fail("\(error)")
        }
    }

    func user() -> (name: String, uid: UInt32?, gid: UInt32?) {
        guard let uid else { return (ProcessInfo.processInfo.environment["USER"] ?? "root", nil, nil) }
        guard let pw = getpwuid(uid) else { fail("uid \(uid) has no user on this host") }
        return (String(cString: pw.pointee.pw_name), uid, pw.pointee.pw_gid)
    }

    func fail(_ message: String) -> Never {
        printError("ferry: \(message)\n")
        Ferry.leave(1)
    }

    /// Posts the request every second (it is idempotent) until nothing is staging, or once
    /// without --wait; prints one line per item and ends with the verdict.
    func run(_ route: String, verb: String) throws {
        let list = try directives()
        let mine = list.filter { $0.direction == (verb == "stage-in" ? .stageIn : .stageOut) }
        if mine.isEmpty {
            print("ferry: job \(job): nothing to \(verb == "stage-in" ? "stage in" : "stage out")")
            return
        }
        let who = user()
        var body = V1.StageRequest(job: job, uid: who.uid, gid: who.gid, user: who.name, directives: mine, retry: nil)
        let start = Date()
        var items: [V1.StageItem] = []
        var answered = false
        var lastFailure = ""
        for _ in 0..<max(1, timeout) {
            // The first answered request of this run starts failed transfers again (a requeue,
            // an operator who made room); the polls after it only watch.
            body.retry = !answered
            do {
                // The daemon answers at once (transfers run in its queue, not in the request):
                // an answer that takes 30 s is lost, and asking again costs less than waiting.
                items = try api.request("POST", route, body: body, as: V1.StageItems.self, timeout: 30).items
                answered = true
            } catch let f as APIOptions.APIFailure {
                // A daemon that is restarting or overloaded: ask again (the request is
                // idempotent) until the deadline; a refusal ends it at once.
                guard f.transient, wait, Date().timeIntervalSince(start) < Double(timeout) else { fail(f.message) }
                if f.message != lastFailure { printError("ferry: \(f.message); asking again\n") }
                lastFailure = f.message
                Thread.sleep(forTimeInterval: 2)
                continue
            }
            let staging = items.contains { $0.state == "staging" }
            if !staging || !wait { break }
            if Date().timeIntervalSince(start) > Double(timeout) { break }
            Thread.sleep(forTimeInterval: 1)
        }
        if !answered { fail(lastFailure.isEmpty ? "no answer from the daemon" : lastFailure) }
        struct Run: Encodable { var job: String; var items: [V1.StageItem] }
        if api.json { api.printJSON(Run(job: job, items: items)) }
        var failed: String?
        var pending = false
        for it in items {
            let state = it.state
            let line = "line \(it.line): \(it.source) -> \(it.destination): \(state)"
            if !api.json { print("ferry: " + line + (it.error.map { " (\($0))" } ?? "")) }
            if state == "failed" && failed == nil { failed = it.error ?? line }
            if state == "staging" { pending = true }
            if state == "skipped" { printError("ferry: warning: optional \(it.source) skipped: \(it.error ?? "")\n") }
        }
        if let failed {
            // The last line: the scheduler shows it as the job's reason.
            printError("ferry: \(verb) of job \(job) failed: \(failed)\n")
            throw ExitCode(1)
        }
        if pending {
            printError("ferry: \(verb) of job \(job): still staging\(wait ? " after \(timeout) s" : "")\n")
            throw ExitCode(wait ? 1 : 75)
        }
        print("ferry: \(verb) of job \(job): done")
    }
}

extension Ferry {
    struct StageIn: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "stage-in",
            abstract: "Stage a job's inputs (its #FERRY stage_in lines) in before it starts.",
            discussion: """
            For each directive the daemon links DST to the data: a replica at this center \
            directly, anything else through the center's staging cache (one transfer however \
            many jobs ask; the entry is pinned for this job until `ferry stage teardown`). \
            Waits until everything is local and verified, or one non-optional directive failed.
            """)
        @OptionGroup var options: StageOptions
        func run() throws { try options.run("/api/v1/stage/in", verb: "stage-in") }
    }

    struct StageOut: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "stage-out",
            abstract: "Deliver a job's results (its #FERRY stage_out lines) after it ended.")
        @OptionGroup var options: StageOptions
        func run() throws { try options.run("/api/v1/stage/out", verb: "stage-out") }
    }

    struct Stage: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "stage",
            abstract: "Prestaging: a job's state, teardown, the staging cache.",
            subcommands: [Status.self, Teardown.self, Sweep.self, Cache.self])

        struct Status: ParsableCommand {
            static let configuration = CommandConfiguration(commandName: "status", abstract: "What is staged for a job: pinned cache entries, links, stage-outs.")
            @OptionGroup var api: APIOptions
            @Option var job: String
            func run() throws {
                let r = try api.call("GET", "/api/v1/stage/status" + query([("job", job)]), as: V1.StageStatus.self)
                if api.json { api.printJSON(r); return }
                for e in r.entries {
                    print("entry \(e.id)\t\(e.state.rawValue)\t\(byteText(UInt64(max(0, e.bytes))))\t\(e.source)\(e.error.map { "\t\($0)" } ?? "")")
                }
                for l in r.links where l.count == 2 { print("link\t\(l[0]) -> \(l[1])") }
                for o in r.stageOut {
                    print("stage_out\t\(o.source) -> \(o.destination)\tjob \(o.job ?? 0)")
                }
            }
        }

        struct Teardown: ParsableCommand {
            static let configuration = CommandConfiguration(commandName: "teardown", abstract: "A job ended (or was cancelled): unpin its data, remove its links, stop transfers nobody waits for.")
            @OptionGroup var api: APIOptions
            @Option var job: String
            @Flag(help: "The scheduler is in a hurry (cancel or failure): same work, nothing is waited for.") var hurry = false
            func run() throws {
                let r = try api.call("POST", "/api/v1/stage/teardown", body: V1.TeardownRequest(job: job, hurry: hurry), as: V1.TeardownAnswer.self)
                if api.json { api.printJSON(r); return }
                print("ferry: job \(job): \(r.unpinned) unpinned, \(r.linksRemoved) links removed, \(r.transfersCancelled) transfers cancelled")
            }
        }

        struct Sweep: ParsableCommand {
            static let configuration = CommandConfiguration(commandName: "sweep", abstract: "Clear what crashed jobs left: pins of jobs that are gone, stray directories, orphan transfers.")
            @OptionGroup var api: APIOptions
            @Option(help: "The scheduler's live job ids (comma-separated, e.g. from `squeue -h -o %i`): every other job's pins go.") var keepJobs: String?
            @Option(help: "Pins older than this many hours go (default 168).") var maxPinHours: Int?
            func run() throws {
                let body = V1.SweepRequest(keepJobs: keepJobs.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } },
                                           maxPinHours: maxPinHours.map(Int64.init))
                let r = try api.call("POST", "/api/v1/stage/sweep", body: body, as: V1.SweepAnswer.self)
                if api.json { api.printJSON(r); return }
                print("ferry: swept: pins of \(r.pinsExpired.count) jobs, \(r.transfersCancelled) transfers cancelled, \(r.strayDirectories.count) stray directories")
            }
        }

        struct Cache: ParsableCommand {
            static let configuration = CommandConfiguration(commandName: "cache", abstract: "The staging cache: entries, their pins, the quota, the last evictions.")
            @OptionGroup var api: APIOptions
            func run() throws {
                let r = try api.call("GET", "/api/v1/stage/cache", as: V1.CacheView.self)
                if api.json { api.printJSON(r); return }
                print("ferry: staging cache \(r.root): \(byteText(UInt64(max(0, r.readyBytes)))) of \(byteText(UInt64(max(0, r.quota))))")
                for e in r.entries {
                    print("\(e.id)\t\(e.state.rawValue)\t\(byteText(UInt64(max(0, e.bytes))))\tpins \(e.pins.isEmpty ? "-" : e.pins.joined(separator: ","))\t\(e.source)")
                }
                if !r.evictions.isEmpty { print("ferry: the last \(r.evictions.count) evictions, newest first:") }
                for v in r.evictions {
                    let at = Date(timeIntervalSince1970: TimeInterval(v.at)).ISO8601Format()
                    print("evicted\t\(at)\t\(byteText(UInt64(max(0, v.bytes))))\t\(v.source)\t\(v.reason)")
                }
            }
        }
    }
}
