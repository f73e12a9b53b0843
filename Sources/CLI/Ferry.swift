import ArgumentParser
import CBuildInfo
import Foundation
import Transfer
#if canImport(Glibc)
import Glibc
#endif

/// The `ferry` command: argument parsing and presentation only; the work is in `Transfer`.
///
/// Every command names itself (`commandName`): without it, ArgumentParser derives the name from
/// the type with `String(describing:)`, whose dynamic casts each scan every protocol
/// conformance of the binary the first time, for every command of the tree, at every start:
/// 22 % of a `ferry cp --help`'s samples (bench/RESULTS.md, "Issue 18, the night of 2026-12-06").
@main
struct Ferry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Move datasets between supercomputing centers: fast, verified, resumable.",
        version: Ferry.versionText,
        subcommands: [Copy.self, Serve.self, Jobs.self, Register.self, Datasets.self, Ls.self, Stat.self, Find.self, Du.self, Check.self, Replicate.self, Centers.self, StageIn.self, StageOut.self, Stage.self,
                      CA.self, Token.self, Ping.self]
    )

    /// ArgumentParser's own `main`, except for a command's `run` that refuses its input (a
    /// `ValidationError`: "give the federation CA ..."): said under that command's name with
    /// its help, not under the root's usage (which named no command at all), exit 64.
    static func main() async {
        let command: ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            exit(withError: error)  // a parse error: ArgumentParser knows the command and its usage
        }
        do {
            if var a = command as? AsyncParsableCommand { try await a.run() } else { var c = command; try c.run() }
        } catch let v as ValidationError {
            let name = commandPath(type(of: command)) ?? "ferry"
            printError("\(name): error: \(v.message)\nSee '\(name) --help'.\n")
            leave(64)
        } catch {
            // As `exit(withError:)` says it (a clean exit's text on stdout, the rest on stderr),
            // but leaving as below.
            let code = exitCode(for: error).rawValue
            let text = fullMessage(for: error)
            if !text.isEmpty {
                if code == 0 { print(text) } else { printError(text + "\n") }
            }
            leave(code)
        }
        leave(0)
    }

    /// Ends the process once a command has run: standard output and error flushed, then
    /// `_exit`, without `exit`'s atexit handlers. A transfer's threads are detached
    /// (`spawnThread`): one that has reported its end may still be releasing its TLS session or
    /// ring when `run` returns, and `exit` would run OpenSSL's cleanup (which frees the
    /// library's global tables) beside it. A CI run saw a push client die with SIGSEGV in such a
    /// thread after it had printed its summary: a copy that succeeded, reported as a crash.
    /// Nothing of Ferry's needs an atexit handler: files are written and closed by the code that
    /// writes them, databases commit before answering.
    static func leave(_ code: Int32) -> Never {
        fflush(stdout)
        fflush(stderr)
        _exit(code)
    }

    /// "ferry stage cache" for `Stage.Cache`: the words that reach `type` from the root.
    static func commandPath(_ type: ParsableCommand.Type, from root: ParsableCommand.Type = Ferry.self, prefix: [String] = []) -> String? {
        let here = prefix + [root.configuration.commandName ?? root._commandName]
        if ObjectIdentifier(root) == ObjectIdentifier(type) { return here.joined(separator: " ") }
        for sub in root.configuration.subcommands {
            if let p = commandPath(type, from: sub, prefix: here) { return p }
        }
        return nil
    }
}

extension Ferry {
    /// The release: Ferry's version, and the commit and date of a packaged build.
    static let version = "0.3.0"
    static var versionText: String {
        let commit = String(cString: ferry_build_commit())
        let date = String(cString: ferry_build_date())
        return commit == "unknown" ? "\(version) (a development build)" : "\(version) (commit \(commit), built \(date))"
    }
}

/// A size option (`--bwlimit 500M`, `--chunk-size 4MiB`): `ByteSize`, the one size parser.
func parseSize(_ text: String, what: String) throws -> UInt64 {
    do { return try ByteSize.parse(text) } catch let e as TransferError { throw ValidationError("\(what): \(e.message)") }
}

/// `--bwlimit RATE` as rsync and rclone read it: bytes per second with a K/M/G/T suffix
/// (powers of 1024); a bare number is KiB/s (rsync's and rclone's unit, so that `--bwlimit
/// 50000` means the same 50 MB/s to their users); 0 or "off" is no limit (nil). A trailing
/// lowercase "b" after a unit ("500Mb") is refused: in network speak it is bits, eight times
/// less than the bytes it would be read as.
func parseRate(_ text: String) throws -> UInt64? {
    let t = text.trimmingCharacters(in: .whitespaces)
    if t.lowercased() == "off" { return nil }
    if t.count >= 2, t.hasSuffix("b"), let unit = t.dropLast().last, "kKmMgGtT".contains(unit) {
        throw ValidationError("--bwlimit: '\(t)' looks like bits per second; give bytes per second (500 Mbit/s is 62.5M, a bare number is KiB/s)")
    }
    let digitsOnly = !t.isEmpty && t.allSatisfy { $0.isASCII && ($0.isNumber || $0 == ".") }
    let bytes = try parseSize(digitsOnly ? t + "K" : t, what: "--bwlimit")
    return bytes == 0 ? nil : bytes
}

func readToken(_ path: String) throws -> String {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw ValidationError("cannot read token file '\(path)'")
    }
    let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    guard !text.isEmpty else { throw ValidationError("token file '\(path)' is empty") }
    return text
}

func asMessage(_ e: Error) -> String { (e as? TransferError)?.message ?? "\(e)" }

/// How `ferry cp` (and later the jobs commands) authenticate: options, else environment.
struct CredentialOptions: ParsableArguments {
    @Option(help: "Federation CA certificate to verify the server with (env FERRY_CA).")
    var ca: String?

    @Option(name: .customLong("token-file"), help: "File holding your user token (env FERRY_TOKEN_FILE).")
    var tokenFile: String?

    @Option(help: "This center's certificate, for center-to-center transfers (env FERRY_CERT).")
    var cert: String?

    @Option(help: "The key of --cert (env FERRY_KEY).")
    var key: String?

    @Option(help: "The center the server must prove to be (default: the URL's host).")
    var center: String?

    /// The client's credentials. `needsIdentity`: a token or a certificate is required
    /// (`ferry ping` needs neither: it only checks the server).
    func load(needsIdentity: Bool = true) throws -> ClientCredentials {
        let env = ProcessInfo.processInfo.environment
        let config = try ClientConfig.get()
        guard let ca = ca ?? env["FERRY_CA"] ?? config.ca else {
            throw ValidationError("give the federation CA certificate: --ca FILE, FERRY_CA, or ca = \"FILE\" in ~/.config/ferry/config.toml")
        }
        let tokenPath = needsIdentity ? tokenFile ?? env["FERRY_TOKEN_FILE"] ?? config.tokenFile : nil
        let certPath = cert ?? env["FERRY_CERT"]
        let keyPath = key ?? env["FERRY_KEY"]
        guard tokenPath != nil || certPath != nil || !needsIdentity else {
            throw ValidationError("give a user token (--token-file, FERRY_TOKEN_FILE, or token_file in ~/.config/ferry/config.toml) or a center certificate (--cert and --key)")
        }
        guard (certPath == nil) == (keyPath == nil) else { throw ValidationError("--cert and --key go together") }
        return try asUsageError {
            let tls = try TLSContext(server: false, identity: TLSIdentity(certificate: certPath, key: keyPath, ca: ca))
            return ClientCredentials(tls: tls, token: try tokenPath.map(readToken), center: center)
        }
    }
}

/// Runs `body`, turning a TransferError into a usage error (exit 64) with its message.
func asUsageError<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let e as TransferError {
        throw ValidationError(e.message)
    }
}

/// A token given on the command line: the text itself, or @FILE.
func tokenArgument(_ arg: String) throws -> String {
    arg.hasPrefix("@") ? try readToken(String(arg.dropFirst())) : arg
}

/// Exit status for a failed transfer (1) or a usage error (64, as argument errors).
func transferExitCode(for e: TransferError) -> ExitCode {
    e.code == .usage ? ExitCode(64) : ExitCode(1)
}

/// SIGINT (Ctrl-C) and SIGTERM during a command that must end cleanly: the first one runs
/// `onFirst` (the command stops its transfer and says what is kept) and the command then exits
/// 130; another one half a second or more later ends the process at once (the default
/// action). Within that half second a repeat is the same interrupt delivered twice, not a
/// second Ctrl-C: `timeout` (and other wrappers) pass a signal on to their child and then to
/// their whole process group, the child included.
final class Interrupts: @unchecked Sendable {
    private let lock = NSLock()
    private var received: Int32 = 0
    private var firstAt = Date.distantFuture
    private var sources: [DispatchSourceSignal] = []

    /// The signal received first, or 0.
    var signal: Int32 { lock.withLock { received } }

    /// The first signal any `Interrupts` of this process received, or 0: a command that runs
    /// several transfers (`ferry cp` of several sources) stops after one that was interrupted,
    /// even when that one had just finished.
    static var seen: Int32 { seenLock.withLock { seenSignal } }
    private static let seenLock = NSLock()
    nonisolated(unsafe) private static var seenSignal: Int32 = 0

    init(onFirst: @escaping @Sendable (Int32) -> Void) {
        for sig in [SIGINT, SIGTERM] {
            Glibc.signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { [weak self] in
                guard let self else { return }
                let (first, again) = self.lock.withLock { () -> (Bool, Bool) in
                    guard self.received == 0 else { return (false, Date().timeIntervalSince(self.firstAt) >= 0.5) }
                    self.received = sig
                    self.firstAt = Date()
                    Interrupts.seenLock.withLock { if Interrupts.seenSignal == 0 { Interrupts.seenSignal = sig } }
                    return (true, false)
                }
                if first { onFirst(sig) }
                if again {
                    Glibc.signal(sig, SIG_DFL)
                    Glibc.raise(sig)
                }
            }
            s.resume()
            sources.append(s)
        }
    }

    deinit {
        for s in sources { s.cancel() }
        // Nothing handles them any more: a signal between two transfers (`ferry cp` of several
        // sources) ends the command as it would any program, not ignored.
        for sig in [SIGINT, SIGTERM] { Glibc.signal(sig, SIG_DFL) }
    }
}

/// Whether `code` is `interruptedExitCode`'s (SIGINT or SIGTERM).
func isInterruptedExitCode(_ code: ExitCode) -> Bool { code.rawValue == 128 + SIGINT || code.rawValue == 128 + SIGTERM }

/// The exit status of a command ended by SIGINT or SIGTERM (128 + the signal, as shells count).
func interruptedExitCode(_ sig: Int32) -> ExitCode { ExitCode(128 + sig) }
