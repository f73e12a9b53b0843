import ArgumentParser
import Daemon
import Foundation
import Transfer

extension Ferry {
    /// `ferry cp`: copy a file or tree to or from a Ferry server.
    struct Copy: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cp",
            abstract: "Copy a file or a tree to or from a Ferry server.",
            discussion: """
            SRC and DST: a local path and ferry://HOST:PORT/PATH (IPv6: ferry://[::1]:7700/PATH). \
            The content of SRC ends up exactly at DST (like rsync -a SRC/ DST); a single file \
            sent to a DST ending in '/' keeps its name. Re-running an interrupted copy resumes it.

            Several sources (`ferry cp -r a.nc b.nc runs/ ferry://dtn/proj/`): DST ends in '/' \
            and each lands in it under its own name, one transfer after another; a failed one \
            does not stop the others, and the exit status is the first failure's.

            Both ferry:// (third-party transfer): the source center's daemon pushes straight to \
            the destination (a job, see `ferry jobs`); this command only submits and watches. \
            DST may then name a peer of the source center (ferry://wuxi/incoming/run1). The \
            daemon's API is --api, FERRY_API, or https://SOURCE-HOST:7480.

            SRC may be gfs://CENTER/DATASET[/PATH] (Global Files): the daemon named by --api or \
            FERRY_API says where the dataset's replica is, and the copy reads from it.
            """
        )

        @Flag(name: [.short, .customLong("recursive")], help: "Copy a directory tree.")
        var recursive = false

        @Option(help: "Parallel TCP streams (default: automatic).")
        var streams: Int?

        @Option(help: "Compression: auto, off, or a zstd level 1..19.")
        var compress = "auto"

        @Flag(help: "Compare content (digests), not size and mtime, to find files already in sync.")
        var checksum = false

        @Option(help: "Bandwidth limit in bytes per second: 500K, 64M, 1.5G; a bare number is KiB/s (as in rsync and rclone); 0 or off: no limit.")
        var bwlimit: String?

        @Option(name: .customLong("chunk-size"), help: "Chunk size (64K..64M, default 4M).")
        var chunkSize = "4M"

        @Flag(help: "One JSON object per line: progress events and a final summary.")
        var json = false

        @Option(help: ArgumentHelp("Off a terminal (batch jobs, cron, logs): a progress line every SECONDS (0: none).", valueName: "SECONDS"))
        var stats: Int = 30

        @Flag(help: "Third-party copies: on Ctrl-C, cancel the daemon's job (by default it goes on at the daemon).")
        var cancelOnInterrupt = false

        @Flag(inversion: .prefixedNo, help: "Third-party copies: split the job across the source center's transfer nodes (--stripe) or never (--no-stripe); by default the daemon stripes jobs above its stripe_threshold.")
        var stripe: Bool?

        @Flag(name: [.short, .customLong("verbose")], help: "One line per file: sent (received, in a pull), identical (--checksum), skipped by size and mtime, or failed.")
        var verbose = false

        @Flag(name: [.short, .customLong("quiet")], help: "No progress and no summary: only errors (and the exit status).")
        var quiet = false

        @Flag(name: [.customShort("n"), .customLong("dry-run")], help: "Say what would be sent, skipped and deleted, file by file as -v says it of a real run (-q: the totals only); write nothing anywhere.")
        var dryRun = false

        @Flag(help: "With -r: delete destination entries the source does not have (after a copy without failures; never an excluded one; refused for an empty source).")
        var delete = false

        @OptionGroup var filters: FilterOptions

        @Option(name: .customLong("files-from"), help: ArgumentHelp("Copy only the paths listed in FILE (one per line, relative to SRC, a directory), with their parent directories; a listed directory is made, not entered. Implies -r; at most 65,536 paths.", valueName: "FILE"))
        var filesFrom: String?

        @Option(help: "Data-stream protection: clear (checksums), safe (authenticated) or private (AES-256-GCM).")
        var protection = "private"

        @Flag(name: .customLong("zero-copy"), help: "Sending from here (a push): raw chunks go with io_uring SEND_ZC from their buffers, not copied into the socket (for a NIC; no gain over loopback; env FERRY_ZERO_COPY=on).")
        var zeroCopy = false

        @Option(name: .customLong("direct-io"), help: "Large files on ext4, XFS, Lustre, GPFS and BeeGFS: written with O_DIRECT when receiving here (a pull), read with O_DIRECT when sending from here (a push) and the page cache does not hold them (auto, the default; env FERRY_DIRECT_IO), or always through the page cache (off).")
        var directIO: String?

        @OptionGroup var credentials: CredentialOptions

        @Option(name: .customLong("range"), help: ArgumentHelp("Striping, for operators and tests: move only chunks FIRST..FIRST+COUNT-1 of one file into its partial copy beside the destination (its own range journal), renaming nothing; the file is the version seen now.", valueName: "FIRST:COUNT", visibility: .hidden))
        var range: String?

        @Option(name: .customLong("commit"), help: ArgumentHelp("Striping, for operators and tests: once the ranges FIRST:COUNT,... of SRC are all at DST (--range), check their journals against SRC's digest and rename DST's partial copy into place (4 MiB chunks).", valueName: "RANGES", visibility: .hidden))
        var commitRanges: String?

        @Option(help: "Third-party copies: the source center's daemon API, https://HOST:PORT (env FERRY_API).")
        var api: String?

        @Argument(help: ArgumentHelp("Sources, then the destination: local paths or ferry://HOST:PORT/PATH URLs (SRC may be gfs://...).", valueName: "SRC... DST"))
        var paths: [String] = []

        /// The first source (the only one, but for `run`'s loop over several).
        var source: String { paths.first ?? "" }
        var destination: String { paths.last ?? "" }

        func validate() throws {
            guard paths.count >= 2 else { throw ValidationError("give a source and a destination (ferry cp SRC... DST)") }
            if paths.count > 2 {
                // Each source is one transfer into DST/NAME: nothing that is one transfer's alone.
                if paths.contains("-") { throw ValidationError("standard input or output is one transfer's: not with several sources") }
                if delete { throw ValidationError("--delete with several sources would delete each one's files with the next: mirror one source at a time") }
                if filesFrom != nil || range != nil || commitRanges != nil { throw ValidationError("--files-from, --range and --commit take one source") }
                guard destination.hasSuffix("/") else {
                    throw ValidationError("with several sources, DST is the directory they land in: end it with '/' ('\(destination)/')")
                }
                // What runOne would refuse for any one source, refused before the first moves.
                let remote = { (t: String) in FerryURL.isFerry(t) || t.hasPrefix(Location.gfsScheme) }
                for s in paths.dropLast() {
                    guard remote(s) || remote(destination) else { throw ValidationError("'\(s)' and '\(destination)': one side must be a ferry:// URL (for a local copy use cp)") }
                    if stripe != nil && !(FerryURL.isFerry(s) && FerryURL.isFerry(destination)) {
                        throw ValidationError("--stripe and --no-stripe are for center-to-center copies; '\(s)' to '\(destination)' runs here")
                    }
                }
                var seen: [String: String] = [:]
                // A source ending in '/' lands its content in DST, as rsync has it (no name of its own).
                for s in paths.dropLast() where !Self.mergesIntoDestination(s) {
                    let name = Self.lastName(s)
                    guard !name.isEmpty, name != ".", name != ".." else { throw ValidationError("'\(s)' has no name to land under in '\(destination)': give it alone, with the destination named") }
                    if let other = seen[name] { throw ValidationError("'\(other)' and '\(s)' would both land at '\(destination)\(name)'") }
                    seen[name] = s
                }
            }
            if let s = streams, !(1...64).contains(s) { throw ValidationError("--streams must be 1...64") }
            if stats < 0 { throw ValidationError("--stats is a number of seconds, 0 or more") }
            if verbose && quiet { throw ValidationError("-v and -q do not go together") }
            if delete && !recursive { throw ValidationError("--delete needs -r (it deletes inside a destination directory)") }
            if (delete || dryRun || !filters.isEmpty) && (source == "-" || destination == "-") {
                throw ValidationError("--delete, --dry-run and filters work on trees, not on standard input or output")
            }
        }

        /// With several sources, one whose path ends in '/' (a directory's, `runs/`) puts its
        /// content in DST itself, as `rsync a b runs/ dst/` does; the others land in DST under
        /// their names.
        static func mergesIntoDestination(_ source: String) -> Bool { source.count > 1 && source.hasSuffix("/") && lastName(source) != "" }

        /// Where one of several sources lands: DST itself (`mergesIntoDestination`) or DST/NAME.
        func landing(of source: String) -> String {
            Self.mergesIntoDestination(source) ? destination : destination + Self.lastName(source)
        }

        /// The name a source lands under in a directory: its path's last component.
        static func lastName(_ text: String) -> String {
            var path = Substring(text)
            for scheme in [FerryURL.scheme, Location.gfsScheme] where text.hasPrefix(scheme) {
                let rest = text.dropFirst(scheme.count)
                path = rest.firstIndex(of: "/").map { rest[$0...] } ?? ""
            }
            return path.split(separator: "/").last.map(String.init) ?? ""
        }

        func run() throws {
            if paths.count == 2 { return try runOne() }
            // One transfer per source, into DST/NAME, as `cp a b dir/` does: every source is
            // tried; the first failure's exit status is the command's.
            var firstFailure: Int32 = 0
            var failed = 0
            let sources = paths.dropLast()
            if !recursive {
                // A gfs:// directory without -r is a usage error like the ones `validate` finds:
                // refused before the first source moves (one catalog stat each). A stat that
                // fails otherwise (the daemon down) is that source's failure, at its turn.
                for s in sources where s.hasPrefix(Location.gfsScheme) {
                    var one = self
                    one.paths = [s, landing(of: s)]
                    if let refusal = one.gfsDirectoryRefusal() { throw refusal }
                }
            }
            for s in sources {
                var one = self
                one.paths = [s, landing(of: s)]
                do {
                    try one.runOne()
                } catch let e as ExitCode {
                    // Ctrl-C or SIGTERM stops the whole command, not just this source.
                    if isInterruptedExitCode(e) { throw e }
                    failed += 1
                    if firstFailure == 0 { firstFailure = e.rawValue }
                } catch let e as ValidationError {
                    failed += 1
                    if firstFailure == 0 { firstFailure = ExitCode.validationFailure.rawValue }
                    printError("ferry: error: \(s): \(e.message)\n")
                } catch {
                    failed += 1
                    if firstFailure == 0 { firstFailure = 1 }
                    printError("ferry: error: \(s): \(error)\n")
                }
                // Interrupted while this one finished anyway: the rest are not started.
                if Interrupts.seen != 0 { throw interruptedExitCode(Interrupts.seen) }
            }
            if failed > 0 {
                printError("ferry: \(failed) of \(sources.count) sources failed (said above)\n")
                throw ExitCode(firstFailure)
            }
        }

        func runOne() throws {
            var options = TransferOptions()
            options.recursive = recursive
            options.streams = streams
            options.checksum = checksum
            do {
                options.compression = try CompressionMode(parsing: compress)
            } catch {
                throw ValidationError("\(error)")
            }
            if let b = bwlimit, let rate = try parseRate(b) { options.bandwidthLimitBytesPerSecond = max(1, rate) }
            options.chunkBytes = Int(try parseSize(chunkSize, what: "--chunk-size"))
            do {
                options.protection = try ProtectionLevel(parsing: protection)
                if let directIO { DirectIO.enabled = try DirectIO.parse(directIO) }
                if zeroCopy { ZeroCopy.enabled = true }
            } catch {
                throw ValidationError("\(error)")
            }
            if destination.hasPrefix("gfs://") {
                throw ValidationError("a gfs:// path is read from; to place data at a center, copy to its ferry:// URL and register it (or use ferry replicate)")
            }
            options.filters = try filters.rules()
            if let filesFrom {
                guard filters.isEmpty, !delete, !dryRun, range == nil, commitRanges == nil, source != "-", destination != "-" else {
                    throw ValidationError("--files-from names what to copy: not with filters, --delete, --dry-run, --range, --commit or standard input/output")
                }
                guard let text = try? String(contentsOfFile: filesFrom, encoding: .utf8) else { throw ValidationError("--files-from: cannot read '\(filesFrom)' (UTF-8 text, one path per line)") }
                // rsync's form: blank lines and lines starting with # or ; are skipped; a
                // leading ./ and a trailing / are allowed.
                var paths: [String] = []
                // \.isNewline: "\r\n" is one Character in Swift, which "\n" alone would not split.
                for raw in text.split(whereSeparator: \.isNewline) {
                    var line = String(raw)
                    if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
                    while line.hasPrefix("./") { line.removeFirst(2) }
                    while line.count > 1 && line.hasSuffix("/") { line.removeLast() }
                    paths.append(line)
                }
                guard !paths.isEmpty else { throw ValidationError("--files-from: '\(filesFrom)' lists no path") }
                options.selection = paths
                options.recursive = true
            }
            // rsync copies `SRC` into `DST/` as DST/SRC-NAME; Ferry makes DST hold SRC's content
            // (docs/CLI.md). With --delete that difference deletes what else DST/ held, so a
            // trailing '/' on a tree's destination is refused: the user says which was meant.
            if delete && destinationPathEndsInSlash(destination) {
                throw ValidationError("with --delete, DST is made to hold exactly SRC's content, and everything else in it is deleted; '\(destination)' ends in '/', as rsync's 'copy into' does: give it without the '/' to mirror into it, or as DST/NAME to copy SRC beside what it holds")
            }
            if stripe != nil && !(source.hasPrefix("ferry://") && destination.hasPrefix("ferry://")) {
                throw ValidationError("--stripe and --no-stripe are for a center-to-center copy (ferry://A/... ferry://B/...), which a daemon runs across its center's nodes; a copy from or to this machine runs here, as one transfer")
            }
            if source.hasPrefix("ferry://") && destination.hasPrefix("ferry://") {
                if delete || dryRun || !filters.isEmpty || filesFrom != nil {
                    throw ValidationError("--delete, --dry-run, filters and --files-from are not supported yet on a center-to-center copy (the daemon's job has no such fields): copy through this machine, or without them")
                }
                try thirdParty(options: options)
                return
            }
            // Said before any credential is asked for: a user who typed two local paths needs
            // this, not a request for a CA and a token that would not help.
            let remote = { (s: String) in FerryURL.isFerry(s) || s.hasPrefix(Location.gfsScheme) }
            guard remote(source) || remote(destination) else {
                throw ValidationError("one side must be a ferry:// URL (for a local copy use cp)")
            }
            var creds = try credentials.load()
            // ferry://NAME/... of a center in the configuration, or a host without a port.
            let config = try ClientConfig.get()
            let (sourceText0, sourceCenter) = config.resolve(source)
            let (destinationText, destinationCenter) = config.resolve(destination)
            if creds.center == nil { creds.center = sourceCenter ?? destinationCenter }
            var sourceText = sourceText0
            if source.hasPrefix("gfs://") {
                let (url, center) = try gfsSource()
                sourceText = url
                if creds.center == nil { creds.center = center }
            }
            let src: Endpoint
            let dst: Endpoint
            do {
                src = try Endpoint(parsing: sourceText)
                dst = try Endpoint(parsing: destinationText)
            } catch {
                throw ValidationError("\(error)")
            }

            if let commitRanges {
                try commit(commitRanges, src, dst, credentials: creds)
                return
            }
            if let range {
                guard !recursive, !checksum, !delete, !dryRun, source != "-", destination != "-" else {
                    throw ValidationError("--range moves chunks of one file: not with -r, --checksum, --delete, --dry-run or standard input/output")
                }
                options.range = try stripeRange(range, src, chunkBytes: options.chunkBytes, credentials: creds)
            }
            if dryRun {
                // Exit 1 when the run would fail for some file, as the run itself would: a
                // script that checks with -n first learns it then, not after.
                if try dryRun(src, dst, options: options, credentials: creds) > 0 { throw ExitCode(1) }
                return
            }
            var landingPoint = dst
            if delete {
                landingPoint = landing(src, dst, sourceIsFile: false)
                try checkDeleteSource(src, landingPoint, credentials: creds)
            }
            let progress = TransferProgress()
            let done = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var result: Result<TransferSummary, TransferError> = .failure(TransferError(.io, "not run"))
            let opts = options
            let credentials = creds
            Thread.detachNewThread {
                do {
                    result = .success(try TransferClient.copy(from: src, to: dst, options: opts, credentials: credentials, progress: progress))
                } catch {
                    result = .failure(error as! TransferError)
                }
                done.signal()
            }
            // Ctrl-C or SIGTERM: the transfer stops as a daemon's cancel stops it (the receiver
            // keeps its partial files and journals), then the command says what is kept.
            let interrupts = Interrupts { sig in progress.cancel(sig == SIGINT ? "interrupted (Ctrl-C)" : "interrupted (SIGTERM)") }
            // With `-` as DST standard output carries the data: every message goes to stderr.
            let display = ProgressDisplay(json: json, messagesToStderr: destination == "-", statsSeconds: stats, quiet: quiet)
            if case .remote = src { display.copiedVerb = "received" }
            // A single file's entry has no path of its own (it is the transfer's root): its line
            // names it as it lands, as the dry run does (it said ".").
            let rootName = baseName(landing(src, dst, sourceIsFile: true))
            if verbose && !json { progress.observeFiles { name, outcome, message in display.file(name.isEmpty ? rootName : name, outcome, message) } }
            while done.wait(timeout: .now() + .milliseconds(400)) == .timedOut {
                display.show(progress.snapshot())
            }
            switch result {
            case .success(let s):
                display.finish(progress.snapshot(), summary: s)
                if delete {
                    let n = try deleteExtraneous(src, landingPoint, options: opts, credentials: credentials)
                    if json {
                        print("{\"type\":\"deleted\",\"entries\":\(n)}")
                    } else if !quiet {
                        print("ferry: deleted \(n) extraneous entr\(n == 1 ? "y" : "ies") at the destination")
                    }
                }
            case .failure(let e):
                if interrupts.signal != 0 {
                    display.interrupted(progress.snapshot(), stream: source == "-" || destination == "-")
                    throw interruptedExitCode(interrupts.signal)
                }
                display.fail(e, progress.snapshot())
                throw transferExitCode(for: e)
            }
        }
    }
}

extension Ferry.Copy {
    /// `--commit RANGES`: SRC's version, mode and digest (a listing with digests, here or at
    /// its server, at the listing's 4 MiB chunks), then the commit at DST.
    func commit(_ text: String, _ src: Endpoint, _ dst: Endpoint, credentials: ClientCredentials) throws {
        guard !recursive, !delete, !dryRun, range == nil else { throw ValidationError("--commit renames one striped file: not with -r, --delete, --dry-run or --range") }
        guard Int(try parseSize(chunkSize, what: "--chunk-size")) == Wire.chunkBytesDefault else {
            throw ValidationError("--commit checks the source's digest at 4 MiB chunks: its ranges must have been moved with them")
        }
        var ranges: [(Int, Int)] = []
        for item in text.split(separator: ",") {
            let p = item.split(separator: ":", omittingEmptySubsequences: false)
            guard p.count == 2, let f = Int(p[0]), let c = Int(p[1]) else { throw ValidationError("--commit is FIRST:COUNT,FIRST:COUNT,... (the ranges moved with --range)") }
            ranges.append((f, c))
        }
        do {
            var seen: ListEntry?
            _ = try TransferClient.list(src, request: ListRequest(depth: 0, digests: true), credentials: credentials) { seen = seen ?? $0 }
            guard let e = seen, e.kind == .file, let digest = e.digest else { throw ValidationError("--commit: \(source) is not a readable regular file") }
            let chunks = e.size == 0 ? 0 : Int((e.size + UInt64(Wire.chunkBytesDefault) - 1) / UInt64(Wire.chunkBytesDefault))
            let list: [ChunkRange]
            do { list = try ranges.map { try ChunkRange(first: $0.0, count: $0.1, of: chunks) } } catch { throw ValidationError("--commit \(text): \((error as? TransferError)?.message ?? "\(error)")") }
            let request = CommitRequest(size: e.size, mtimeSeconds: e.mtimeSeconds, mtimeNanoseconds: e.mtimeNanoseconds, mode: e.mode & 0o7777,
                                        chunkBytes: Wire.chunkBytesDefault, digest: digest, ranges: list)
            let outcome = try TransferClient.commit(dst, request, credentials: credentials)
            if !quiet { print("ferry: \(destination): \(outcome == .committed ? "committed (\(list.count) ranges)" : "already committed")") }
        } catch let e as TransferError {
            printError("ferry: \(e.message)\n")
            throw transferExitCode(for: e)
        }
    }

    /// `--range FIRST:COUNT` with the source file's identity as it is now (a local stat, or a
    /// listing of the remote file): the version a range session moves.
    func stripeRange(_ text: String, _ src: Endpoint, chunkBytes: Int, credentials: ClientCredentials) throws -> StripeRange {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let first = Int(parts[0]), let count = Int(parts[1]), first >= 0, count >= 1 else {
            throw ValidationError("--range is FIRST:COUNT (chunk numbers, from 0)")
        }
        var r: StripeRange
        switch src {
        case .local(let path):
            var st = stat()
            guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { throw ValidationError("--range: '\(path)' is not a regular file") }
            r = StripeRange(first: first, count: count, size: UInt64(st.st_size), mtimeSeconds: Int64(st.st_mtim.tv_sec), mtimeNanoseconds: UInt32(st.st_mtim.tv_nsec))
        case .remote:
            var seen: ListEntry?
            _ = try TransferClient.list(src, request: ListRequest(depth: 0), credentials: credentials) { seen = seen ?? $0 }
            guard let e = seen, e.kind == .file else { throw ValidationError("--range: \(source) is not a regular file") }
            r = StripeRange(first: first, count: count, size: e.size, mtimeSeconds: e.mtimeSeconds, mtimeNanoseconds: e.mtimeNanoseconds)
        case .confined:
            throw ValidationError("--range takes a local path or a ferry:// URL")
        }
        do { try r.check(chunkBytes: chunkBytes) } catch { throw ValidationError("--range \(text): \((error as? TransferError)?.message ?? "\(error)")") }
        return r
    }

    /// The daemon client of --api / FERRY_API (or `fallback`), with this command's token file.
    /// `preferFallback`: the fallback is the configuration's API of the very center named (it
    /// wins over FERRY_API and the configuration's default `api`, not over --api).
    func apiClient(fallback: String?, json: Bool = false, preferFallback: Bool = false) throws -> (APIOptions, String) {
        let env = ProcessInfo.processInfo.environment["FERRY_API"]
        let config = try ClientConfig.get().api
        guard let base = api ?? (preferFallback ? fallback : nil) ?? env ?? config ?? fallback else {
            throw ValidationError("a gfs:// path needs the daemon's API: --api https://HOST:PORT, FERRY_API, or api in ~/.config/ferry/config.toml")
        }
        var args = ["--api", base]
        if let t = credentials.tokenFile { args += ["--token-file", t] }
        if let c = credentials.ca { args += ["--ca", c] }
        if json { args.append("--json") }
        return (try APIOptions.parse(args), base)
    }

    /// The usage error of a gfs:// source that is a directory when -r is not given, or nil (a
    /// file, or the catalog could not say).
    func gfsDirectoryRefusal() -> ValidationError? {
        guard let (client, _) = try? apiClient(fallback: nil),
              let st = try? client.request("GET", "/api/v1/catalog/stat" + query([("path", source)]), as: V1.StatAnswer.self),
              (st.entry?.kind ?? .directory) == .directory else { return nil }
        return ValidationError("\(source) is a directory: give -r")
    }

    /// gfs://CENTER/DATASET/PATH → the ferry:// URL of its replica, and the center to expect.
    /// Asks the daemon (--api / FERRY_API) for the entry and its replicas in the order a copy
    /// should use them (local first, then the best measured peer, skipping centers that are
    /// down; `ferry stat --replicas` shows the same) and reads from the first.
    func gfsSource() throws -> (String, String) {
        let (client, base) = try apiClient(fallback: nil)
        let st: V1.StatAnswer
        do {
            st = try client.request("GET", "/api/v1/catalog/stat" + query([("path", source)]), as: V1.StatAnswer.self)
        } catch let f as APIOptions.APIFailure {
            // This source's failure (with several sources, the others are still tried).
            printError("ferry cp: error: \(source): \(f.message)\n")
            throw ExitCode(1)
        }
        let entry = st.entry
        if (entry?.kind ?? .directory) == .directory && !recursive { throw ValidationError("\(source) is a directory: give -r") }
        guard let replica = st.replicas.first(where: { $0.rank == 1 }), let url = replica.url else {
            let why = st.replicas.map { "\($0.center): \($0.reason)" }.joined(separator: "; ")
            throw ValidationError("no usable replica of \(source) (asked \(base)): \(why.isEmpty ? "none recorded" : why)")
        }
        let center = replica.center
        let within = entry?.path ?? ""
        let full = within.isEmpty ? url : url + "/" + within
        if !json { printError("ferry: \(source): the replica at \(center), \(replica.reason) (\(full))\n") }
        return (full, center)
    }

    /// Whether a destination's path ends in '/' below its root (`dir/`, `ferry://h:7700/x/`; not
    /// `/` or `ferry://h:7700/` alone).
    func destinationPathEndsInSlash(_ text: String) -> Bool {
        var path = Substring(text)
        if FerryURL.isFerry(text) {
            let rest = text.dropFirst(FerryURL.scheme.count)
            path = rest.firstIndex(of: "/").map { rest[$0...] } ?? ""
        }
        return path.count > 1 && path.hasSuffix("/")
    }

    /// ferry://A/x → ferry://B/y: a job at A's daemon (A pushes to B), watched to its end.
    func thirdParty(options: TransferOptions) throws {
        guard let url = try? FerryURL(parsing: source), url.path != "/" else { throw ValidationError("the source must be ferry://HOST:PORT/EXPORT/PATH, not '\(source)'") }
        let path = url.path
        // The source center's daemon: --api, FERRY_API, the configuration's center of that
        // name (its api), or the source host's registered API port.
        let named = try ClientConfig.get().centers[url.host]
        // (A bare HOST:PORT is https, plain http on loopback only, as the daemon's default.)
        let fallback = named?.api ?? HostPort(host: named?.address.host ?? url.host, port: ClientConfig.apiPort).description
        let (client, base) = try apiClient(fallback: fallback, json: json, preferFallback: named?.api != nil)
        var body = JobRequest(source: path, destination: destination)
        body.recursive = options.recursive
        body.protection = protection
        body.compress = compress
        body.checksum = options.checksum
        body.streams = options.streams
        body.bwlimit = options.bandwidthLimitBytesPerSecond
        body.stripe = stripe
        let job = try client.call("POST", "/api/v1/transfers", body: V1.TransferSubmission(request: body), as: V1.Transfer.self)
        let id = Int(job.id)
        if !json { printError("ferry: job \(id) at \(base): \(path) -> \(destination)\n") }
        // Ctrl-C stops the watching, not the job (it runs at the daemon, which resumes and
        // retries it), unless --cancel-on-interrupt.
        let interrupts = Interrupts { _ in }
        do {
            try waitFor(id, api: client, progress: true, interrupted: { interrupts.signal != 0 })
        } catch is WaitInterrupted {
            if cancelOnInterrupt {
                _ = try? client.call("POST", "/api/v1/transfers/\(id)/cancel", as: V1.Transfer.self)
                let now = try? client.call("GET", "/api/v1/transfers/\(id)", as: V1.Transfer.self)
                printError("ferry: interrupted: job \(id) cancelled at \(base)\(now.map { " (\($0.stateText))" } ?? "")\n")
            } else {
                printError("ferry: interrupted: job \(id) goes on at \(base) (ferry jobs show \(id) to follow it, "
                           + "ferry jobs cancel \(id) to stop it)\n")
            }
            throw interruptedExitCode(interrupts.signal)
        }
    }
}

/// Progress on a terminal (a bar on stderr) or as JSON lines on stdout.
final class ProgressDisplay {
    let json: Bool
    /// Where JSON lines and the summary go: stdout, or stderr when stdout carries data.
    let out: UnsafeMutablePointer<FILE>
    let tty = isatty(2) != 0
    var lastBytes: UInt64 = 0
    var lastTime = Date()
    var rate: Double = 0

    /// Off a terminal: a line every this many seconds (0: none).
    let statsSeconds: Int
    var lastStats = Date()
    /// Whether the terminal's line holds a bar (to be ended before any message).
    var barShown = false

    /// `-q`: nothing but errors.
    let quiet: Bool
    /// `-v`: one line per file, queued by the transfer's threads and written by the one that
    /// draws the bar (so a line never lands inside the bar).
    private let filesLock = NSLock()
    private var fileLines: [String] = []

    init(json: Bool, messagesToStderr: Bool = false, statsSeconds: Int = 30, quiet: Bool = false) {
        self.json = json
        out = messagesToStderr ? stderr : stdout
        self.statsSeconds = statsSeconds
        self.quiet = quiet
    }

    /// What `-v` says of a file that moved: "sent" in a push, "received" in a pull (set
    /// before the transfer starts).
    var copiedVerb = "sent"

    /// A file's end, for `-v` (any thread). The name is the sender's (in a pull, the server's:
    /// anyone who can write there chose it), shown as `Terminal.name` makes it.
    func file(_ name: String, _ outcome: TransferProgress.FileOutcome, _ message: String?) {
        let shown = Terminal.name(name.isEmpty ? "." : name)
        let line: String
        switch outcome {
        case .copied: line = copiedVerb.padding(toLength: 11, withPad: " ", startingAt: 0) + shown
        case .identical: line = "identical  " + shown + " (compared by content)"
        case .unread: line = "skipped    " + shown + " (same size and mtime, not read)"
        case .failed: line = "failed     " + (message.map { Terminal.name($0) } ?? shown)  // one line: it quotes a name
        }
        filesLock.withLock { fileLines.append(line) }
    }

    /// Writes the queued `-v` lines (the bar's line ended first).
    private func drainFiles() {
        let lines = filesLock.withLock { () -> [String] in
            defer { fileLines.removeAll() }
            return fileLines
        }
        guard !lines.isEmpty else { return }
        endBar()
        for l in lines { fputs(l + "\n", out) }
        fflush(out)
    }

    /// The terminal's width in columns (stderr's), 80 when it says none.
    static func terminalWidth() -> Int {
        var w = winsize()
        if ioctl(2, UInt(TIOCGWINSZ), &w) == 0 && w.ws_col > 0 { return Int(w.ws_col) }
        return 80
    }

    /// The percentage done and the time left ("--:--" before a rate is known).
    func figures(_ s: TransferProgress.Snapshot) -> (pct: Int, eta: String) {
        let pct = s.bytesTotal > 0 ? Int(100 * Double(s.bytesDone) / Double(s.bytesTotal)) : 0
        let remaining = s.bytesTotal > s.bytesDone ? Double(s.bytesTotal - s.bytesDone) : 0
        // A rate barely above zero (a stalled or throttled start) makes the quotient infinite,
        // and Int(infinity) stops the process: no estimate then, or beyond a year.
        let seconds = rate > 0 ? remaining / rate : -1
        let eta = seconds.isFinite && seconds >= 0 && seconds < 31_536_000 ? Int(seconds) : -1
        let etaText = eta < 0 ? "--:--" : eta >= 3600 ? String(format: "%d:%02d:%02d", eta / 3600, eta / 60 % 60, eta % 60) : String(format: "%d:%02d", eta / 60, eta % 60)
        return (pct, etaText)
    }

    /// A log line: "1.2 GiB of 2.0 GiB (60 %), 3 of 10 files, 97.7 MiB/s, 0:08 left".
    func logLine(_ s: TransferProgress.Snapshot) -> String {
        let (pct, eta) = figures(s)
        return "\(byteText(s.bytesDone)) of \(byteText(s.bytesTotal)) (\(pct) %), \(s.filesDone) of \(s.filesTotal) files, \(byteText(rateShown))/s, \(eta) left"
    }

    private func emit(_ line: String) {
        fputs(Terminal.visible(line) + "\n", out)
        fflush(out)
    }

    /// The rate as a whole number of bytes a second, whatever the Double holds.
    private var rateShown: UInt64 { rate.isFinite && rate > 0 ? UInt64(min(rate, 1e18)) : 0 }

    private func updateRate(_ s: TransferProgress.Snapshot) {
        let now = Date()
        let dt = now.timeIntervalSince(lastTime)
        if dt > 0.2 {
            let r = s.bytesDone >= lastBytes ? Double(s.bytesDone - lastBytes) / dt : 0
            rate = rate == 0 ? r : 0.6 * r + 0.4 * rate
            lastBytes = s.bytesDone
            lastTime = now
        }
    }

    func show(_ s: TransferProgress.Snapshot) {
        updateRate(s)
        drainFiles()
        if quiet { return }
        if json {
            emit("{\"type\":\"progress\",\"bytes_done\":\(s.bytesDone),\"bytes_total\":\(s.bytesTotal),\"files_done\":\(s.filesDone),\"files_total\":\(s.filesTotal),\"rate_bytes_per_second\":\(rateShown)}")
        } else if tty {
            // A bar as wide as the terminal leaves room for after the figures; on a narrow one
            // the figures alone, cut to fit. Written over itself, the rest of the line erased.
            let (pct, eta) = figures(s)
            let columns = ProgressDisplay.terminalWidth() - 1
            let tail = String(format: " %3d%% ", pct) + "\(byteText(s.bytesDone)) / \(byteText(s.bytesTotal))  \(byteText(rateShown))/s  ETA \(eta)  files \(s.filesDone)/\(s.filesTotal)"
            var line: String
            if columns - tail.count >= 12 {
                let width = min(40, columns - tail.count - 2)
                let filled = min(width, pct * width / 100)
                line = "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "]" + tail
            } else {
                line = String(tail.dropFirst().prefix(max(10, columns)))
            }
            FileHandle.standardError.write(("\r" + line + "\u{1B}[K").data(using: .utf8)!)
            barShown = true
        } else if statsSeconds > 0 && Date().timeIntervalSince(lastStats) >= Double(statsSeconds) {
            // Off a terminal (a batch job's log, cron, CI): a line at each interval.
            lastStats = Date()
            emit("ferry: " + logLine(s))
        }
    }

    /// Ends a bar's line: what follows starts on a line of its own.
    func endBar() {
        if barShown { printError("\n"); barShown = false }
    }

    /// Ctrl-C or SIGTERM stopped the transfer: what the destination keeps, and how to go on.
    func interrupted(_ s: TransferProgress.Snapshot, stream: Bool) {
        drainFiles()
        endBar()
        let kept = stream ? "a stream is not kept (it cannot be resumed)"
            : "\(byteText(s.bytesDone)) of \(byteText(s.bytesTotal)) done and kept; run the same command to resume"
        if json {
            emit("{\"type\":\"interrupted\",\"bytes_done\":\(s.bytesDone),\"bytes_total\":\(s.bytesTotal),\"files_done\":\(s.filesDone),\"files_total\":\(s.filesTotal),\"resumable\":\(!stream)}")
        }
        printError("ferry: interrupted: \(kept)\n")
    }

    func finish(_ s: TransferProgress.Snapshot, summary: TransferSummary) {
        if json {
            let special = summary.specialNames.map(jsonString).joined(separator: ",")
            emit("{\"type\":\"summary\",\"files\":\(summary.files),\"bytes\":\(summary.bytes),\"bytes_sent\":\(summary.bytes - min(summary.bytes, summary.skippedBytes)),\"wire_bytes\":\(summary.wireBytes),\"skipped_bytes\":\(summary.skippedBytes),\"files_skipped\":\(summary.filesSkipped),\"files_unread\":\(summary.unreadFiles),\"bytes_unread\":\(summary.unreadBytes),\"files_identical\":\(summary.matchedFiles),\"bytes_identical\":\(summary.matchedBytes - min(summary.matchedBytes, summary.resumedBytes)),\"bytes_resumed\":\(summary.resumedBytes),\"files_copied\":\(summary.filesCopied),\"files_failed\":\(summary.filesFailed),\"retransmitted_chunks\":\(summary.retransmittedChunks),\"rejected_frames\":\(summary.rejectedFrames),\"direct_bytes\":\(summary.directBytes),\"direct_read_bytes\":\(summary.directReadBytes),\"zero_copy_bytes\":\(summary.zeroCopyBytes),\"special_files_skipped\":\(summary.specialFiles),\"special_files\":[\(special)],\"seconds\":\(String(format: "%.3f", summary.seconds))}")
            return
        }
        drainFiles()
        endBar()
        if quiet { return }
        emit(ProgressDisplay.summaryLine(summary, verb: copiedVerb))
        if summary.specialFiles > 0 {
            let more = summary.specialFiles > UInt64(summary.specialNames.count) ? ", …" : ""
            emit("ferry: skipped \(summary.specialFiles) special file\(summary.specialFiles == 1 ? "" : "s") (devices, FIFOs and sockets are never transferred): \(summary.specialNames.joined(separator: ", "))\(more)")
        }
    }

    /// The end of a run in one line that says no more than the run knows: what was sent (and
    /// verified: each chunk's hash and the whole file's digest, checked by the receiver), what
    /// was found identical by content, and what was skipped by size and modification time
    /// without being read (never called verified: a byte changed in place keeps both).
    /// `verb`: what the bytes moved were on this side ("sent" in a push, "received" in a pull);
    /// the rate is theirs, beside them, not the whole set's.
    static func summaryLine(_ s: TransferSummary, verb: String = "sent") -> String {
        let sent = s.bytes - min(s.bytes, s.skippedBytes)
        let rate = s.seconds > 0 && sent > 0 ? " at " + byteText(UInt64(Double(sent) / s.seconds)) + "/s" : ""
        func files(_ n: UInt64) -> String { "\(n) file\(n == 1 ? "" : "s")" }
        var parts: [String] = []
        if s.filesCopied > 0 || sent > 0 {
            parts.append("\(s.filesCopied) copied, \(byteText(sent)) \(verb)\(rate) (\(byteText(s.wireBytes)) on the wire), verified by chunk and file hashes"
                         + (s.retransmittedChunks > 0 ? ", \(s.retransmittedChunks) chunks resent" : ""))
        }
        if s.resumedBytes > 0 { parts.append("\(byteText(s.resumedBytes)) already there from an interrupted run, checked by chunk hash") }
        let identical = s.matchedBytes - min(s.matchedBytes, s.resumedBytes)
        if s.matchedFiles > 0 { parts.append("\(files(s.matchedFiles)) identical by content (\(byteText(identical)) compared, not sent)") }
        if s.unreadFiles > 0 {
            parts.append("\(files(s.unreadFiles)) skipped by size and mtime (\(byteText(s.unreadBytes)), not read: --checksum compares their content)")
        }
        if s.filesFailed > 0 { parts.append("\(files(s.filesFailed)) failed") }
        if parts.isEmpty { parts.append("nothing to send") }
        return "ferry: \(files(s.files)), \(byteText(s.bytes)) in \(String(format: "%.2f", s.seconds)) s: " + parts.joined(separator: "; ")
    }

    func fail(_ e: TransferError, _ s: TransferProgress.Snapshot) {
        if json {
            // What this run settled, so that no failed file is ever taken for copied.
            emit("{\"type\":\"error\",\"message\":\(jsonString(e.message)),\"resumable\":\(e.resumable),\"files\":\(s.filesTotal),\"files_copied\":\(s.filesCopied),\"files_skipped\":\(s.filesSkipped),\"files_failed\":\(s.filesFailed)}")
        }
        drainFiles()
        endBar()
        // A run that moved nothing (no server there, a refused connection) has nothing to resume.
        let started = s.bytesDone > 0 || s.wireBytes > 0 || s.filesDone > 0 || s.filesSkipped > 0
        let hint = !e.resumable ? "" : started ? " (run the same command again to resume)" : " (nothing was copied; run the same command again to retry)"
        printError("ferry: error: \(e.message)\(hint)\n")
    }
}
