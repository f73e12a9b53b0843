import ArgumentParser
import Foundation
import Transfer
#if canImport(Glibc)
import Glibc
#endif

/// `--exclude`, `--include`, `--filter-from`: rsync's meaning for the subset FilterRules
/// documents. Their order matters (the first matching rule decides), and the argument parser
/// keeps each option's values apart, so the rules are read again from the command line in the
/// order they were typed (checked against what the parser saw).
struct FilterOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Leave out what PATTERN matches (rsync's rules: * ? [..] **, a leading / anchors, a trailing / means directories; repeatable).", valueName: "PATTERN"))
    var exclude: [String] = []

    @Option(help: ArgumentHelp("Keep what PATTERN matches even if a later --exclude matches it (the first matching rule decides).", valueName: "PATTERN"))
    var include: [String] = []

    @Option(name: .customLong("filter-from"), help: ArgumentHelp("Rules from FILE, one a line: '- PATTERN' or '+ PATTERN' (# comments).", valueName: "FILE"))
    var filterFrom: [String] = []

    var isEmpty: Bool { exclude.isEmpty && include.isEmpty && filterFrom.isEmpty }

    func rules(arguments: [String] = CommandLine.arguments) throws -> FilterRules {
        if isEmpty { return FilterRules() }
        var ordered: [(String, String)] = []
        var i = 1
        let names = ["--exclude", "--include", "--filter-from"]
        while i < arguments.count {
            let a = arguments[i]
            if a == "--" { break }
            if let n = names.first(where: { a == $0 }), i + 1 < arguments.count {
                ordered.append((n, arguments[i + 1]))
                i += 2
                continue
            }
            if let n = names.first(where: { a.hasPrefix($0 + "=") }) { ordered.append((n, String(a.dropFirst(n.count + 1)))) }
            i += 1
        }
        // What the parser saw, in the typed order when the two agree.
        let seen = ordered.filter { $0.0 == "--exclude" }.map(\.1) == exclude
            && ordered.filter { $0.0 == "--include" }.map(\.1) == include
            && ordered.filter { $0.0 == "--filter-from" }.map(\.1) == filterFrom
        if !seen { ordered = include.map { ("--include", $0) } + exclude.map { ("--exclude", $0) } + filterFrom.map { ("--filter-from", $0) } }
        var rules: [FilterRules.Rule] = []
        do {
            for (name, value) in ordered {
                switch name {
                case "--exclude": rules.append(try .init(include: false, pattern: value))
                case "--include": rules.append(try .init(include: true, pattern: value))
                default:
                    guard let text = try? String(contentsOfFile: value, encoding: .utf8) else { throw ValidationError("cannot read the filter file '\(value)'") }
                    rules += try FilterRules.parse(file: text, name: value)
                }
            }
            return try FilterRules(rules)
        } catch let e as TransferError {
            throw ValidationError(e.message)
        }
    }
}

/// A local path or a ferry:// URL (a configured center's name, a default port), with the
/// credentials to reach it.
func treeEndpoint(_ text: String, credentials: inout ClientCredentials) throws -> Endpoint {
    let (resolved, center) = try ClientConfig.get().resolve(text)
    if credentials.center == nil { credentials.center = center }
    do { return try Endpoint(parsing: resolved) } catch { throw ValidationError("\(error)") }
}

/// One line of a tree listing: `ls -l`'s columns, or the name alone.
func listLine(_ e: ListEntry, name: String, long: Bool) -> String {
    // Names come from whoever wrote the tree: shown as `Terminal.name` makes them.
    let shown = Terminal.name(name) + (e.kind == .directory ? "/" : "") + (e.kind == .symlink ? " -> " + Terminal.name(e.linkTarget) : "")
    guard long else { return shown }
    let mtime = Date(timeIntervalSince1970: Double(e.mtimeSeconds) + Double(e.mtimeNanoseconds) / 1e9)
    // Padded to the longest kind ("directory"), so that the columns line up.
    let kind = (e.kind == .special ? "special" : e.kind.rawValue).padding(toLength: 9, withPad: " ", startingAt: 0)
    return "\(kind) \(String(format: "%04o", e.mode & 0o7777)) \(String(e.size).leftPad(14)) \(ISO8601DateFormatter().string(from: mtime)) \(shown)"
}

func listJSON(_ e: ListEntry) -> String {
    var s = "{\"kind\":\"\(e.kind.rawValue)\",\"path\":\(jsonString(e.path)),\"size\":\(e.size),\"mtime\":\(e.mtimeSeconds),\"mtime_ns\":\(e.mtimeNanoseconds),\"mode\":\(e.mode & 0o7777)"
    if e.kind == .symlink { s += ",\"target\":\(jsonString(e.linkTarget))" }
    if let d = e.digest { s += ",\"digest\":\"\(d)\"" }
    if let p = e.problem { s += ",\"error\":\(jsonString(p))" }
    return s + "}"
}

/// `ferry ls`, `stat`, `du` of a ferry:// URL or a local path: through the transfer server,
/// with a copy's token scopes, the tree streamed (never a catalog).
enum TreeCommands {
    static func credentials(_ api: APIOptions) throws -> CredentialOptions {
        var args: [String] = []
        if let c = api.ca { args += ["--ca", c] }
        if let t = api.tokenFile { args += ["--token-file", t] }
        return try CredentialOptions.parse(args)
    }

    /// How many entries `ls` holds to print them sorted; a longer listing is printed as it
    /// comes (said on stderr), so that memory stays bounded on a directory of millions.
    static let sortedEntriesMax = 200_000

    static func ls(_ path: String, api: APIOptions, long: Bool, recursive: Bool, filters: FilterRules) throws {
        var creds = try credentials(api).load()
        let endpoint = try treeEndpoint(path, credentials: &creds)
        var rootIsFile = false
        // Sorted by name, bytewise (names are bytes), as `ls` (LC_ALL=C) prints them; with -R
        // by path component by component ('/' as the lowest byte, so that a directory's entries
        // follow it before `sub-a` or `sub.txt`). --json streams in the server's order. What was
        // held is printed even when the listing fails half way.
        var held: [(key: [UInt8], line: String)] = []
        var streaming = api.json
        defer {
            for h in held.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) { print(h.line) }
            fflush(stdout)
        }
        try run {
            try TransferClient.list(endpoint, request: ListRequest(depth: recursive ? .max : 1, filters: filters), credentials: creds) { e in
                if e.path.isEmpty {
                    rootIsFile = e.kind != .directory
                    guard rootIsFile else { return }
                }
                if api.json { print(listJSON(e)); return }
                let name = e.path.isEmpty ? (path.split(separator: "/").last.map(String.init) ?? path) : e.path
                let line = listLine(e, name: name, long: long)
                if streaming { print(line); return }
                held.append((name.utf8.map { $0 == UInt8(ascii: "/") ? 0 : $0 }, line))
                if held.count > sortedEntriesMax {
                    printError("ferry: more than \(sortedEntriesMax) entries: printed as they come, not sorted\n")
                    for h in held { print(h.line) }
                    held = []
                    streaming = true
                }
            }
        }
    }

    static func stat(_ path: String, api: APIOptions) throws {
        var creds = try credentials(api).load()
        let endpoint = try treeEndpoint(path, credentials: &creds)
        try run {
            try TransferClient.list(endpoint, request: ListRequest(depth: 0), credentials: creds) { e in
                print(api.json ? listJSON(e) : listLine(e, name: path, long: true))
            }
        }
    }

    static func du(_ path: String, api: APIOptions, filters: FilterRules) throws {
        var creds = try credentials(api).load()
        let endpoint = try treeEndpoint(path, credentials: &creds)
        var files: UInt64 = 0, dirs: UInt64 = 0, links: UInt64 = 0, bytes: UInt64 = 0
        try run {
            try TransferClient.list(endpoint, request: ListRequest(filters: filters), credentials: creds) { e in
                switch e.kind {
                case .file: files += 1; bytes += e.size
                case .directory: dirs += 1
                case .symlink, .special: links += 1
                }
            }
        }
        if api.json {
            print("{\"bytes\":\(bytes),\"files\":\(files),\"directories\":\(dirs),\"other\":\(links)}")
        } else {
            print("\(byteText(bytes))\t\(files) files\t\(dirs) directories\t\(path)")
        }
    }

    /// Runs a listing; its failure is the command's (exit 1, or 64 for a usage error).
    /// `troubleExit`: the status of a failure that is not a usage error (1 unless given).
    static func run(troubleExit: Int32 = 1, _ body: () throws -> Void) throws {
        do { try body() } catch let e as TransferError {
            printError("ferry: error: \(e.message)\n")
            throw e.code == .usage ? transferExitCode(for: e) : ExitCode(troubleExit)
        }
    }
}

extension Ferry {
    /// `ferry check SRC DST`: compares two trees by content, like `rclone check`.
    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check",
            abstract: "Compare two trees by content and name every file that differs, is missing or is extra.",
            discussion: """
            SRC and DST: local paths or ferry:// URLs. Each side is listed where it is, its \
            files' digests computed there, with your rights. One line per difference: \
            "differs PATH", "missing PATH" (in SRC, not in DST), "extra PATH" (in DST, not in \
            SRC), "error PATH: WHY" (unreadable). Exit status as diff's and cmp's: 0 when the \
            trees are the same, 1 when anything differs, 2 when the check could not be made \
            (a side unreachable or refused, a file unreadable).
            """
        )
        @OptionGroup var credentials: CredentialOptions
        @OptionGroup var filters: FilterOptions
        @Flag(name: [.short, .customLong("verbose")], help: "Also name each identical file ('same PATH').") var verbose = false
        @Flag(help: "One JSON object per line.") var json = false
        @Argument(help: "The tree as it should be.") var source: String
        @Argument(help: "The tree to check against it.") var destination: String

        func run() throws {
            var creds = try credentials.load()
            let src = try treeEndpoint(source, credentials: &creds)
            let dst = try treeEndpoint(destination, credentials: &creds)
            let rules = try filters.rules()
            let request = ListRequest(digests: true, filters: rules)
            var there: [String: ListEntry] = [:]
            var differs = 0, missing = 0, extra = 0, same = 0, errors = 0
            func say(_ what: String, _ path: String, _ why: String? = nil) {
                let shown = path.isEmpty ? "." : path
                // (JSON escapes the path itself; the line below shows it as `Terminal.name` does.)
                if json {
                    print("{\"type\":\(jsonString(what)),\"path\":\(jsonString(shown))\(why.map { ",\"why\":" + jsonString($0) } ?? "")}")
                } else {
                    print(what.padding(toLength: 8, withPad: " ", startingAt: 0) + Terminal.name(shown) + (why.map { ": " + $0 } ?? ""))
                }
            }
            // Trouble is 2, not 1: a nightly check must tell "the copy diverged" from "the check
            // did not run" (diff and cmp do the same).
            try TreeCommands.run(troubleExit: 2) {
                try TransferClient.list(dst, request: request, credentials: creds) { e in there[e.path] = e }
                try TransferClient.list(src, request: request, credentials: creds) { e in
                    guard let d = there.removeValue(forKey: e.path) else {
                        missing += 1
                        say("missing", e.path)
                        return
                    }
                    if let p = e.problem ?? d.problem {
                        errors += 1
                        say("error", e.path, p)
                        return
                    }
                    let equal: Bool = switch (e.kind, d.kind) {
                    case (.file, .file): e.size == d.size && e.digest == d.digest
                    case (.directory, .directory): true
                    case (.symlink, .symlink): e.linkTarget == d.linkTarget
                    case (.special, .special): true
                    default: false
                    }
                    if !equal {
                        differs += 1
                        say("differs", e.path, e.kind != d.kind ? "\(e.kind.rawValue) here, \(d.kind.rawValue) there" : nil)
                    } else if e.kind == .file {
                        same += 1
                        if verbose { say("same", e.path) }
                    }
                }
            }
            for path in there.keys.sorted() {
                extra += 1
                say("extra", path)
            }
            let summary = "ferry check: \(same) identical, \(differs) differ, \(missing) missing, \(extra) extra\(errors > 0 ? ", \(errors) unreadable" : "")"
            if json {
                print("{\"type\":\"summary\",\"identical\":\(same),\"differ\":\(differs),\"missing\":\(missing),\"extra\":\(extra),\"errors\":\(errors)}")
            } else {
                printError(summary + "\n")
            }
            if errors > 0 { throw ExitCode(2) }
            if differs + missing + extra > 0 { throw ExitCode(1) }
        }
    }
}

extension Ferry.Copy {
    /// Where a copy of `src` lands: `dst`, or DST/NAME when one file goes into a directory
    /// (a URL ending in '/', or an existing local directory), as the copy itself decides.
    /// The last component of an endpoint's path (a single file's name in `-v` lines).
    func baseName(_ e: Endpoint) -> String {
        switch e {
        case .local(let p): p.split(separator: "/").last.map(String.init) ?? p
        case .remote(_, let p): p.split(separator: "/").last.map(String.init) ?? p
        case .confined(_, let c, _): c.last ?? ""
        }
    }

    func landing(_ src: Endpoint, _ dst: Endpoint, sourceIsFile: Bool) -> Endpoint {
        let base = baseName
        switch dst {
        case .remote(let server, let path) where sourceIsFile && path.hasSuffix("/"):
            return .remote(server, path: path + base(src))
        case .local(let path) where !recursive:
            var dir: ObjCBool = false
            let isDir = FileManager.default.fileExists(atPath: path, isDirectory: &dir) && dir.boolValue
            if path.hasSuffix("/") || isDir { return .local((path.hasSuffix("/") ? path : path + "/") + base(src)) }
            return dst
        default:
            return dst
        }
    }

    /// The destination's entries (none when it does not exist yet), in walk order.
    func destinationEntries(_ dst: Endpoint, request: ListRequest, credentials: ClientCredentials) throws -> [ListEntry] {
        var out: [ListEntry] = []
        do {
            try TransferClient.list(dst, request: request, credentials: credentials) { out.append($0) }
        } catch let e as TransferError where e.code == .notFound && out.isEmpty {
            return []
        }
        return out
    }

    /// `--dry-run`: what the copy would send, skip, refuse and (with --delete) delete, from a
    /// listing of both sides (digests too with --checksum); nothing is written anywhere. The
    /// per-file lines are those `-v` prints for the real run, so the two can be compared.
    /// Returns how many files would fail.
    func dryRun(_ src: Endpoint, _ dst: Endpoint, options: TransferOptions, credentials: ClientCredentials) throws -> Int {
        let request = ListRequest(digests: options.checksum, filters: options.filters)
        var send = 0, sendBytes: UInt64 = 0, unread = 0, unreadBytes: UInt64 = 0, same = 0, failed = 0, special = 0, files = 0
        var lines: [String] = []
        var sourcePaths = Set<String>()
        var target = dst
        var there: [String: ListEntry] = [:]
        var thereOrder: [ListEntry] = []
        var rootName = "."
        // As `-v` says it: "sent" in a push, "received" in a pull.
        var copiedVerb = "sent       "
        if case .remote = src { copiedVerb = "received   " }
        try TreeCommands.run {
            try TransferClient.list(src, request: request, credentials: credentials) { e in
                if e.path.isEmpty {
                    if e.kind == .directory && !recursive { throw TransferError(.usage, "source is a directory (use -r)") }
                    target = landing(src, dst, sourceIsFile: e.kind == .file)
                    thereOrder = try destinationEntries(target, request: request, credentials: credentials)
                    for t in thereOrder { there[t.path] = t }
                    if e.kind == .file { rootName = baseName(target) }  // the file's name where it lands, as -v says it
                }
                sourcePaths.insert(e.path)
                let name = Terminal.name(e.path.isEmpty ? rootName : e.path)
                let d = there[e.path]
                switch e.kind {
                case .directory:
                    if let d, d.kind != .directory {
                        failed += 1
                        lines.append("failed     cannot create directory '\(name)': a file is in the way")
                    }
                case .special:
                    special += 1
                case .symlink:
                    break
                case .file:
                    files += 1
                    if let d, d.kind == .directory || d.kind == .special {
                        failed += 1
                        lines.append("failed     cannot write '\(name)': \(d.kind == .directory ? "a directory" : "a special file") is in the way")
                    } else if let d, d.kind == .file, d.size == e.size, !options.checksum,
                              d.mtimeSeconds == e.mtimeSeconds, d.mtimeNanoseconds == e.mtimeNanoseconds {
                        unread += 1
                        unreadBytes += e.size
                        lines.append("skipped    " + name + " (same size and mtime, not read)")
                    } else if let d, d.kind == .file, d.size == e.size, options.checksum, d.digest != nil, d.digest == e.digest {
                        same += 1
                        lines.append("identical  " + name + " (compared by content)")
                    } else {
                        send += 1
                        sendBytes += e.size
                        lines.append(copiedVerb + name)
                    }
                }
            }
        }
        var deletions: [ListEntry] = []
        if delete { deletions = thereOrder.reversed().filter { !$0.path.isEmpty && !sourcePaths.contains($0.path) } }
        if json {
            print("{\"type\":\"dry_run\",\"files\":\(files),\"files_to_send\":\(send),\"bytes_to_send\":\(sendBytes),\"files_unread\":\(unread),\"bytes_unread\":\(unreadBytes),\"files_identical\":\(same),\"files_failing\":\(failed),\"entries_to_delete\":\(deletions.count),\"special_files_skipped\":\(special),\"delete\":[\(deletions.map { jsonString($0.path) }.joined(separator: ","))]}")
            return failed
        }
        if !quiet {
            for l in lines { print(l) }
            for d in deletions { print("deleted    " + Terminal.name(d.path)) }
        }
        var parts = ["\(send) to send (\(byteText(sendBytes)))"]
        if unread > 0 { parts.append("\(unread) skipped by size and mtime (\(byteText(unreadBytes)), not read: --checksum compares their content)") }
        if same > 0 { parts.append("\(same) identical by content") }
        if failed > 0 { parts.append("\(failed) would fail") }
        if delete { parts.append("\(deletions.count) to delete") }
        if special > 0 { parts.append("\(special) special files skipped") }
        printError("ferry: dry run, nothing written: \(files) file\(files == 1 ? "" : "s"): \(parts.joined(separator: "; "))\n")
        return failed
    }

    /// `--delete`, before the copy: refused unless the source is a directory with something
    /// in it (an empty or unreadable source would otherwise empty the destination).
    func checkDeleteSource(_ src: Endpoint, _ dst: Endpoint, credentials: ClientCredentials) throws {
        var entries = 0
        var rootIsDirectory = false
        try TreeCommands.run {
            try TransferClient.list(src, request: ListRequest(depth: 1), credentials: credentials) { e in
                if e.path.isEmpty { rootIsDirectory = e.kind == .directory }
                entries += 1
            }
        }
        guard rootIsDirectory else { throw ValidationError("--delete needs a directory as the source") }
        // An empty source would delete everything at the destination (a source unmounted, a
        // wrong path): refused, unless there is nothing there to delete (a mirror of a
        // directory that is sometimes empty, run from cron, must not fail then).
        guard entries > 1 || holdsNothing(dst, credentials: credentials) else {
            throw ValidationError("--delete refused: the source \(source) is empty (the copy would delete everything at \(destination)); nothing was changed")
        }
    }

    /// Whether `e` is missing or an empty directory (false for a file, or when it cannot be
    /// listed). The listing stops at the first entry inside.
    func holdsNothing(_ e: Endpoint, credentials: ClientCredentials) -> Bool {
        struct Something: Error {}
        var directory = false
        do {
            try TransferClient.list(e, request: ListRequest(depth: 1), credentials: credentials) { entry in
                if !entry.path.isEmpty { throw Something() }
                directory = entry.kind == .directory
            }
        } catch let t as TransferError where t.code == .notFound {
            return true
        } catch {
            return false
        }
        return directory
    }

    /// `--delete`, after a copy without failures: removes from the destination what the
    /// source (listed again now, with the same filters) does not hold. Excluded destination
    /// entries are never listed, so never deleted (rsync's default). Children go before their
    /// directories; nothing outside the destination can be named (paths are relative, resolved
    /// beneath it without following symlinks, by the server with your rights for a push).
    func deleteExtraneous(_ src: Endpoint, _ dst: Endpoint, options: TransferOptions, credentials: ClientCredentials) throws -> Int {
        let request = ListRequest(filters: options.filters)
        var sourcePaths = Set<String>()
        var extras: [(path: String, isDirectory: Bool)] = []
        try TreeCommands.run {
            try TransferClient.list(src, request: request, credentials: credentials) { sourcePaths.insert($0.path) }
            try TransferClient.list(dst, request: request, credentials: credentials) { e in
                if !e.path.isEmpty && !sourcePaths.contains(e.path) { extras.append((e.path, e.kind == .directory)) }
            }
            guard sourcePaths.count > 1 || extras.isEmpty else { throw TransferError(.usage, "--delete refused: the source became empty during the copy; nothing was deleted") }
        }
        guard !extras.isEmpty else { return 0 }
        extras.reverse()
        var failures: [(path: String, why: String)] = []
        try TreeCommands.run { failures = try TransferClient.delete(extras, beneath: dst, credentials: credentials) }
        let failed = Set(failures.map(\.path))
        for e in extras where !failed.contains(e.path) {
            if verbose { print("deleted    " + Terminal.name(e.path)) }
        }
        for f in failures { printError("ferry: not deleted: \(Terminal.name(f.path)): \(f.why)\n") }
        if !failures.isEmpty {
            printError("ferry: error: \(failures.count) of \(extras.count) extraneous entries could not be deleted\n")
            throw ExitCode(1)
        }
        return extras.count
    }
}
