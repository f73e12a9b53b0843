import ArgumentParser
import Daemon
import Foundation
import GlobalFS
import Transfer

/// Global Files commands: ask a center's daemon (its API, as `ferry jobs` does) about its
/// catalog. Presentation only; the work is in GlobalFS, served by the daemon.
extension Ferry {
    struct Register: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "register",
            abstract: "Register a directory of the daemon's center as a dataset (again: only what changed is updated).",
            discussion: "Example: ferry register /datasets/zinc22 --dataset zinc22@2024 --readers '*'")
        @OptionGroup var api: APIOptions
        @Option(help: "NAME or NAME@VERSION.") var dataset: String
        @Option(help: "Who may see it: '*' (everyone), user names, center:NAME (comma-separated; default: only you).") var readers: String?
        @Option var description: String?
        @Option var license: String?
        @Flag(help: "Also compute every file's digest (reads every byte; resumes where a stopped run left off).") var hash = false
        @Argument(help: "The directory, as /EXPORT/PATH at the daemon's center.") var path: String

        func run() throws {
            var body = V1.RegisterRequest(path: path, dataset: dataset)
            body.hash = hash
            body.readers = readers.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
            body.description = description
            body.license = license
            let s = try api.call("POST", "/api/v1/catalog/register", body: body, as: RegisterSummary.self, timeout: 86_400)
            if api.json { api.printJSON(s); return }
            print("ferry: \(dataset): \(s.files) files, \(byteText(UInt64(max(0, s.bytes)))); \(s.added) added, \(s.changed) changed, \(s.removed) removed, \(s.unchanged) unchanged, \(s.hashed) hashed in \(String(format: "%.2f", s.seconds)) s")
            if let e = s.firstError { printError("ferry: warning: \(e)\n") }
        }
    }

    struct Datasets: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "datasets", abstract: "The datasets of the daemon's center that you may see.")
        @OptionGroup var api: APIOptions

        func run() throws {
            let r = try api.call("GET", "/api/v1/catalog/datasets", as: V1.DatasetList.self)
            if api.json { api.printJSON(r); return }
            for v in r.datasets {
                let d = v.dataset
                let stale = v.stale ? "\t(stale: its center is down)" : ""
                print("gfs://\(d.center)/\(d.qualifiedName)\t\(d.fileCount) files\t\(byteText(UInt64(max(0, d.bytes))))\t\(d.owner)\(stale)")
            }
        }
    }

    struct Ls: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ls",
            abstract: "List a directory: gfs://CENTER/DATASET[/PATH] from the catalog, or ferry://HOST/PATH through its transfer server.",
            discussion: """
            gfs://: the daemon's catalog (--api), a page at a time (--limit, --after, --all).

            ferry://HOST[:PORT]/PATH (or a local path): the server lists the directory as it is \
            now, with the rights of your token (the scope that lets you copy from PATH), every \
            entry streamed (-R: the whole tree, with paths relative to PATH).
            """
        )
        @OptionGroup var api: APIOptions
        @Flag(name: .short, help: "Long format: kind, mode, size, mtime, name.") var long = false
        @Flag(name: .customShort("R"), help: "ferry:// and local paths: the whole tree.") var recursive = false
        @Option(help: "gfs://: entries per page (at most 10,000).") var limit = 1000
        @Option(help: "gfs://: start after this name (the previous page's next_after).") var after: String?
        @Flag(help: "gfs://: follow every page to the end.") var all = false
        @OptionGroup var filters: FilterOptions
        @Argument var path: String

        func run() throws {
            if !path.hasPrefix("gfs://") {
                try TreeCommands.ls(path, api: api, long: long, recursive: recursive, filters: try filters.rules())
                return
            }
            var cursor = after
            for _ in 0..<1_000_000 {
                var q = [("path", path), ("limit", String(limit))]
                if let c = cursor { q.append(("after", c)) }
                let page = try api.call("GET", "/api/v1/catalog/ls" + query(q), as: V1.EntryPage.self)
                if page.stale == true && cursor == after { warnStale(path) }
                if api.json { api.printJSON(page) } else {
                    for e in page.entries { print(entryLine(e, long: long)) }
                }
                guard let next = page.nextAfter else { return }
                guard all else {
                    // Never a silent cut: say how to get the rest.
                    printError("ferry: more entries follow: --after '\(next)' for the next page, --all for every page\n")
                    return
                }
                cursor = next
            }
        }
    }

    struct Stat: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "stat", abstract: "One entry of a dataset, its dataset and the centers holding replicas.")
        @OptionGroup var api: APIOptions
        @Flag(help: "Explain which replica a copy would read: every replica, its rank and the reason.") var replicas = false
        @Argument(help: "gfs://CENTER/DATASET/PATH (the catalog), or ferry://HOST/PATH or a local path (as it is now).") var path: String

        func run() throws {
            if !path.hasPrefix("gfs://") {
                try TreeCommands.stat(path, api: api)
                return
            }
            let r = try api.call("GET", "/api/v1/catalog/stat" + query([("path", path)]), as: V1.StatAnswer.self)
            if r.stale { warnStale(path) }
            if api.json { api.printJSON(r); return }
            if let e = r.entry { print(entryLine(e, long: true)) }
            let d = r.dataset
            print("dataset: gfs://\(d.center)/\(d.qualifiedName) owner \(d.owner) \(d.fileCount) files \(byteText(UInt64(max(0, d.bytes))))")
            for rep in r.replicas {
                let rank = rep.rank.map { "#\($0)" } ?? "--"
                let verified = rep.verifiedAt.map { "verified " + isoTimeOrNever($0) } ?? "not verified"
                if replicas {
                    print("replica \(rank)\t\(rep.center)\t\(rep.state)\t\(verified)\t\(rep.url ?? "-")\t\(rep.reason)")
                } else {
                    print("replica: \(rep.center) \(rep.state) \(verified)")
                }
            }
        }
    }

    struct Replicate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "replicate",
            abstract: "Make a replica of a dataset at a center: gfs://CENTER/DATASET --to CENTER.",
            discussion: """
            The destination center's daemon copies the dataset (one job) from the best other \
            replica into its replica directory ([daemon] replicas) and records the replica \
            when the job succeeded; a failed one stays partial and a second replicate resumes \
            it. The request goes to the daemon of --to (its API address is known to your \
            daemon, FERRY_API, through federation).
            """)
        @OptionGroup var api: APIOptions
        @Option(help: "The center that is to hold the replica (default: your daemon's).") var to: String?
        @Flag(help: "Wait until the replica is complete (or the job failed).") var wait = false
        @Option(help: "Bandwidth limit for the copy, bytes per second: 500K, 64M; a bare number is KiB/s; 0 or off: no limit.") var bwlimit: String?
        @Argument var path: String

        func run() throws {
            var target = api
            let centers = try api.call("GET", "/api/v1/catalog/centers", as: V1.CentersAnswer.self)
            let here = centers.center
            if let to, to != here {
                guard let c = centers.centers.first(where: { $0.name == to }), case let address = c.api, !address.isEmpty else {
                    throw ValidationError("center '\(to)' is not a peer your daemon (\(here)) follows: ask its daemon with --api")
                }
                target.api = address
            }
            let body = V1.ReplicateRequest(path: path, bwlimit: try bwlimit.flatMap { try parseRate($0) })
            let r = try target.call("POST", "/api/v1/catalog/replicate", body: body, as: V1.ReplicateAnswer.self)
            if api.json && !wait { api.printJSON(r); return }
            if !api.json { print("ferry: \(r.message)") }
            guard wait, let job = r.job else { return }
            // A day at most, one look per second.
            for _ in 0..<86_400 {
                let j = try target.call("GET", "/api/v1/transfers/\(job)", as: V1.Transfer.self)
                let state = j.stateText
                if j.state.satisfiesDependents {
                    if api.json { api.printJSON(j) } else { print("ferry: replica of \(path) at \(r.center) complete (job \(job) \(state))") }
                    return
                }
                if j.state.isFinal {
                    printError("ferry: error: job \(job) \(state): \(j.error ?? ""); the replica stays partial, replicate again to resume\n")
                    throw ExitCode(1)
                }
                Thread.sleep(forTimeInterval: 1)
            }
        }
    }

    struct Centers: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "centers", abstract: "The centers whose catalogs your daemon follows, and whether they are up.")
        @OptionGroup var api: APIOptions

        func run() throws {
            let r = try api.call("GET", "/api/v1/catalog/centers", as: V1.CentersAnswer.self)
            if api.json { api.printJSON(r); return }
            print("\(r.center)\t(this center)")
            for c in r.centers {
                print("\(c.name)\t\(c.reachable ? "up" : "DOWN (stale)")\tsynced \(isoTimeOrNever(c.lastSync))\tseq \(c.lastSeq)\t\(c.api)")
            }
        }
    }

    struct Find: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "find", abstract: "Find entries of a dataset by name, size and age.")
        @OptionGroup var api: APIOptions
        @Option(help: "A glob on the name (* ? [..]).") var name: String?
        @Option(help: "+SIZE (at least) or -SIZE (at most), K/M/G/T suffixes.") var size: String?
        @Option(help: "Modified after this: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or Unix seconds.") var newer: String?
        @Option(help: "At most this many results (default: every match, read a page of 1,000 at a time).") var limit: Int?
        @Option(help: "Start after this entry (DIR/NAME, as a previous run printed it).") var after: String?
        @Argument var path: String

        func run() throws {
            var base = [("path", path)]
            if let n = name { base.append(("name", n)) }
            if let s = size {
                guard let sign = s.first, sign == "+" || sign == "-" else { throw ValidationError("--size takes +SIZE or -SIZE") }
                base.append((sign == "+" ? "min_size" : "max_size", String(try parseSize(String(s.dropFirst()), what: "--size"))))
            }
            if let t = newer { base.append(("newer", String(try parseTime(t)))) }
            if let l = limit, l < 1 { throw ValidationError("--limit is at least 1") }
            var cursor = after
            var printed = 0
            // Every page until the last (or --limit); with --json, one object per page.
            for _ in 0..<10_000_000 {
                let want = min(1000, (limit ?? Int.max) - printed)
                var q = base + [("limit", String(want))]
                if let c = cursor { q.append(("after", c)) }
                let r = try api.call("GET", "/api/v1/catalog/find" + query(q), as: V1.EntryPage.self)
                let entries = r.entries
                // A page cut short by the daemon's search budget may be empty: nothing to print.
                if api.json { if !entries.isEmpty || r.nextAfter == nil { api.printJSON(r) } } else {
                    for e in entries { print(entryLine(e, long: false, full: true)) }
                }
                printed += entries.count
                guard let next = r.nextAfter else { return }
                if let limit, printed >= limit {
                    printError("ferry: more matches follow: --after '\(next)' for the next ones, or leave out --limit\n")
                    return
                }
                cursor = next
            }
        }
    }

    struct Du: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "du", abstract: "Files, directories and bytes under a path: gfs:// (the catalog), ferry:// or local (walked now).")
        @OptionGroup var api: APIOptions
        @OptionGroup var filters: FilterOptions
        @Argument var path: String

        func run() throws {
            if !path.hasPrefix("gfs://") {
                try TreeCommands.du(path, api: api, filters: try filters.rules())
                return
            }
            let r = try api.call("GET", "/api/v1/catalog/du" + query([("path", path)]), as: DiskUsage.self)
            if api.json { api.printJSON(r); return }
            print("\(byteText(UInt64(max(0, r.bytes))))\t\(r.files) files\t\(r.directories) directories\t\(path)")
        }
    }
}

func warnStale(_ path: String) {
    printError("ferry: warning: the center of \(path) is down; this is its last known state (stale)\n")
}


func query(_ items: [(String, String)]) -> String {
    var c = URLComponents()
    c.queryItems = items.map { URLQueryItem(name: $0.0, value: $0.1) }
    // '+' is a space to many servers: encode it too.
    return "?" + (c.percentEncodedQuery ?? "").replacingOccurrences(of: "+", with: "%2B")
}

func entryLine(_ e: Entry, long: Bool, full: Bool = false) -> String {
    let kind = e.kind.rawValue
    let name = full ? e.path : e.name
    let shown = name + (e.kind == .directory ? "/" : "") + (e.kind == .symlink ? " -> " + (e.target ?? "") : "")
    guard long else { return shown }
    let mode = String(format: "%04o", e.mode & 0o7777)
    let mtime = Date(timeIntervalSince1970: Double(e.mtimeNs) / 1e9)
    let f = ISO8601DateFormatter()
    return "\(kind) \(mode) \(String(e.size).leftPad(14)) \(f.string(from: mtime)) \(shown)"
}

/// YYYY-MM-DD, an ISO 8601 time, or Unix seconds → Unix seconds.
func parseTime(_ t: String) throws -> Int64 {
    if let s = Int64(t) { return s }
    let f = ISO8601DateFormatter()
    if let d = f.date(from: t) { return Int64(d.timeIntervalSince1970) }
    f.formatOptions = [.withFullDate]
    if let d = f.date(from: t) { return Int64(d.timeIntervalSince1970) }
    throw ValidationError("'\(t)' is not a date (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or Unix seconds)")
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
