import ArgumentParser
import Foundation
import Transfer

extension Ferry {
    /// `ferry ca`: the federation CA and center certificates.
    struct CA: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ca",
            abstract: "Create the federation CA and issue center certificates (Ed25519).",
            subcommands: [Init.self, Issue.self, Renew.self]
        )

        struct Renew: ParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "renew",
                abstract: "Renew the CA certificate, or a center's (--center), before it expires; the previous file is kept as .prev.",
                discussion: """
                    Without --center: DIR/ca.crt is renewed with the same name and key, so every certificate it issued \
                    verifies against the new one (give the new ca.crt to the centers at leisure: no flag day). \
                    With --center NAME: DIR/NAME.crt is re-issued with the same names (CN and every host), and the same key \
                    unless --new-key (user tokens the key signed stay valid); then reload the server (systemctl reload ferry, \
                    SIGHUP): transfers running go on, the next handshakes present the new certificate. \
                    --within 30d renews only what expires within 30 days (for a timer; exit 0 either way).
                    """)

            @Option(help: "Directory holding ca.crt and ca.key (and NAME.crt, NAME.key with --center).")
            var dir: String

            @Option(help: "Renew this center's certificate (DIR/NAME.crt) instead of the CA's.")
            var center: String?

            @Option(help: "Validity in days from now (default: 365 for a center, 3650 for the CA).")
            var days: Int?

            @Flag(name: .customLong("new-key"), help: "A center's certificate with a new key (tokens signed with the old key stop verifying after the server's next restart).")
            var newKey = false

            @Option(help: "Renew only if it expires within this long (90s, 30m, 24h, 30d); otherwise say so and change nothing.")
            var within: String?

            @Option(name: .customLong("ca-dir"), help: "Directory of the CA, when not --dir.")
            var caDir: String?

            func validate() throws {
                if let days, !(1...36_500).contains(days) { throw ValidationError("--days must be 1...36500") }
                if newKey && center == nil { throw ValidationError("--new-key renews a center's key: give --center (the CA's key is what its certificates chain to)") }
                // The name becomes a file name (DIR/NAME.crt): a center's name, nothing else.
                if let center { do { try CenterName.validate(center) } catch { throw ValidationError("--center: \(asMessage(error))") } }
            }

            func run() throws {
                let ca = caDir ?? dir
                let target = center.map { "\(dir)/\($0).crt" } ?? ca + "/ca.crt"
                let info = try asUsageError { try CertificateInfo(path: target) }
                let now = Int64(Date().timeIntervalSince1970)
                if let within {
                    let window = try parseDuration(within)
                    if info.notAfter - now > window {
                        print("ferry ca: \(target) is valid until \(isoTime(info.notAfter)), not within \(within): not renewed")
                        return
                    }
                }
                if let center {
                    guard info.commonName == center else { throw ValidationError("\(target) is the certificate of '\(info.commonName)', not of '\(center)'") }
                    try asUsageError {
                        try CertificateAuthority.reissue(caCertificate: ca + "/ca.crt", caKey: ca + "/ca.key", certificate: target, key: "\(dir)/\(center).key",
                                                         days: days ?? 365, newKey: newKey)
                    }
                    let renewed = try asUsageError { try CertificateInfo(path: target) }
                    print("ferry ca: renewed \(target)\(newKey ? " with a new key" : "") until \(isoTime(renewed.notAfter)) (the previous one: \(target).prev); reload the server: systemctl reload ferry")
                } else {
                    try asUsageError { try CertificateAuthority.renew(caCertificate: target, caKey: ca + "/ca.key", days: days ?? 3650) }
                    let renewed = try asUsageError { try CertificateInfo(path: target) }
                    print("ferry ca: renewed \(target) until \(isoTime(renewed.notAfter)), same name and key (the previous one: \(target).prev); give it to every center, each reloads it on SIGHUP")
                }
            }
        }

        struct Init: ParsableCommand {
            static let configuration = CommandConfiguration(commandName: "init", abstract: "Create a CA: DIR/ca.crt and DIR/ca.key (keep the key offline).")

            @Option(help: "Directory for ca.crt and ca.key.")
            var dir: String

            @Option(help: "The CA's name.")
            var name = "Ferry federation CA"

            @Option(help: "Validity in days.")
            var days = 3650

            func run() throws {
                try makeDirectory(dir)
                let cert = dir + "/ca.crt", key = dir + "/ca.key"
                guard !FileManager.default.fileExists(atPath: key) else { throw ValidationError("\(key) exists; refusing to replace a CA key") }
                try asUsageError { try CertificateAuthority.initialize(name: name, days: days, certificate: cert, key: key) }
                print("ferry ca: created \(cert) and \(key)")
            }
        }

        struct Issue: ParsableCommand {
            static let configuration = CommandConfiguration(commandName: "issue", abstract: "Issue a center certificate: DIR/NAME.crt and DIR/NAME.key.")

            @Option(help: "Directory holding ca.crt and ca.key; the new files go there too.")
            var dir: String

            @Option(help: "The center's name (DNS label; it is the certificate's CN and DNS name).")
            var center: String

            @Option(help: "Another DNS name or IP address the center answers on (repeatable).")
            var host: [String] = []

            @Option(help: "Validity in days.")
            var days = 365

            @Option(name: .customLong("backdate-days"), help: "Start the validity this many days ago (for tests of expired certificates).")
            var backdateDays = 0

            @Option(name: .customLong("ca-dir"), help: "Directory of the CA, when not --dir.")
            var caDir: String?

            func run() throws {
                try makeDirectory(dir)
                let ca = caDir ?? dir
                try asUsageError {
                    try CertificateAuthority.issue(caCertificate: ca + "/ca.crt", caKey: ca + "/ca.key", center: center, hosts: host, days: days,
                                                   backdateSeconds: backdateDays * 86400, certificate: "\(dir)/\(center).crt", key: "\(dir)/\(center).key")
                }
                print("ferry ca: issued \(dir)/\(center).crt and \(dir)/\(center).key")
            }
        }
    }

    /// `ferry token`: user tokens signed by a center.
    struct Token: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "token",
            abstract: "Issue, inspect and revoke user tokens.",
            subcommands: [Issue.self, Show.self, Revoke.self]
        )

        struct Issue: ParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "issue",
                abstract: "Issue a scoped, expiring token signed with the center's key; prints it.",
                discussion: "Example: ferry token issue --cert hlrs.crt --key hlrs.key --user alice --scope read:/datasets --scope write:/scratch/alice --ttl 24h"
            )

            @Option(help: "The issuing center's certificate (its name becomes the token's issuer).")
            var cert: String

            @Option(help: "The issuing center's private key.")
            var key: String

            @Option(help: "The user the token stands for.")
            var user: String

            @Option(help: "read:/PATH, write:/PATH or rw:/PATH in the server's namespace (repeatable).")
            var scope: [String] = []

            @Option(help: "Lifetime: 90s, 30m, 24h, 7d.")
            var ttl = "24h"

            @Option(help: "Start the validity this long ago (for tests of expired tokens; -1h: in an hour, for tests of tokens not yet valid).")
            var backdate = "0s"

            @Option(help: "Write the token to this file (created with mode 0600, never through a symbolic link) instead of printing it.")
            var out: String?

            func run() throws {
                guard !scope.isEmpty else { throw ValidationError("give at least one --scope") }
                guard UserToken.isValidUser(user) else { throw ValidationError("bad user name '\(user)': 1-255 bytes, no control characters, no '@', not '*' or 'center:...'") }
                let back = backdate.hasPrefix("-") ? -(try parseDuration(String(backdate.dropFirst()))) : try parseDuration(backdate)
                let now = Int64(Date().timeIntervalSince1970) - back
                let lifetime = try parseDuration(ttl)
                let text = try asUsageError {
                    let scopes = try scope.map { try Scope(parsing: $0) }
                    let info = try CertificateInfo(path: cert)
                    let t = UserToken(issuer: info.commonName, user: user, scopes: scopes, issuedAt: now, expiresAt: now + lifetime)
                    return t.signed(privateKey: try loadPrivateKey(key))
                }
                if let out {
                    try writeSecret(text + "\n", to: out)
                    print("ferry token: wrote the token of '\(user)' to \(out) (mode 0600)")
                } else {
                    print(text)
                }
            }
        }

        struct Show: ParsableCommand {
            static let configuration = CommandConfiguration(commandName: "show", abstract: "Print a token's contents as JSON (not verified; with --cert, verified).")

            @Argument(help: "The token, or @FILE.")
            var token: String

            @Option(help: "Verify with this issuing center's certificate.")
            var cert: String?

            func run() throws {
                let text = try tokenArgument(token)
                // With --cert: the signature must be genuine; an expired or not yet valid token is
                // still shown, with its state (the point of asking).
                let t = try asUsageError { () throws -> UserToken in
                    guard let cert else { return try UserToken.decodeUnverified(text) }
                    let (token, error) = try TokenVerifier(issuerCertificates: [cert], revocationsPath: nil).check(text)
                    guard let token else { throw error ?? TransferError(.auth, "token refused") }
                    return token
                }
                let scopes = t.scopes.map { jsonString($0.description) }.joined(separator: ",")
                let (state, note) = tokenValidity(t)
                print("{\"id\":\"\(t.idHex)\",\"issuer\":\(jsonString(t.issuer)),\"user\":\(jsonString(t.user)),\"scopes\":[\(scopes)],\"issued_at\":\(t.issuedAt),\"expires_at\":\(t.expiresAt),\"state\":\"\(state)\",\"verified\":\(cert != nil)}")
                if let note { printError("ferry token: \(note)\n") }
            }
        }

        struct Revoke: ParsableCommand {
            static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Add a token (or its id) to a revocation list; servers pick it up at once.")

            @Argument(help: "The token, @FILE, or its 32-hex-digit id.")
            var token: String

            @Option(help: "The revocation list the servers read (--revocations).")
            var revocations: String

            @Option(help: "Why (recorded as a comment).")
            var reason = ""

            func run() throws {
                var id = token.lowercased()
                let isID = id.utf8.count == 32 && id.allSatisfy { $0.isHexDigit }
                if !isID {
                    let text = try tokenArgument(token)
                    id = try asUsageError { try UserToken.decodeUnverified(text).idHex }
                }
                try asUsageError { try Revocations.revoke(idHex: id, path: revocations, reason: reason) }
                print("ferry token: revoked \(id)")
            }
        }
    }
}

extension Ferry {
    /// `ferry ping`: is the server there, is it the center it claims, how long is a handshake.
    struct Ping: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ping",
            abstract: "Connect to a server, check its certificate, and time the TLS handshake.",
            discussion: "Exit 1 when the server cannot be reached or verified, and when the token a copy would use (--token-file, FERRY_TOKEN_FILE) is expired, not yet valid or unreadable.")

        @Argument(help: "ferry://HOST:PORT")
        var url: String

        @Option(help: "How many handshakes.")
        var count = 1

        @Flag(help: "One JSON object per handshake.")
        var json = false

        @OptionGroup var credentials: CredentialOptions

        func run() throws {
            guard (1...10_000).contains(count) else { throw ValidationError("--count must be 1...10000") }
            let (resolved, named) = try ClientConfig.get().resolve(url)
            let server: HostPort = try asUsageError {
                guard case .remote(let hp, _) = try Endpoint(parsing: resolved) else { throw TransferError(.usage, "give a ferry://HOST[:PORT] URL") }
                return hp
            }
            var creds = try credentials.load(needsIdentity: false)
            if creds.center == nil { creds.center = named }
            // The token a transfer would use (--token-file, FERRY_TOKEN_FILE): say when it is
            // expired or not yet valid. Ping does not send it, so only its dates are read here:
            // whether the server takes it (its signer, its scopes, a revocation) is not known.
            // A token that a copy would be refused with makes the ping fail too (exit 1, after
            // the server's answer): a script's pre-flight `ferry ping` must not pass with it.
            let configToken = try ClientConfig.get().tokenFile
            var tokenUnusable = false
            if let path = credentials.tokenFile ?? ProcessInfo.processInfo.environment["FERRY_TOKEN_FILE"] ?? configToken {
                let note: String
                do {
                    let t = try UserToken.decodeUnverified(try readToken(path))
                    let (state, why) = tokenValidity(t)
                    tokenUnusable = state != "valid"
                    note = why ?? "token of '\(t.user)' is within its dates, valid until \(isoTime(t.expiresAt)) (its signature and scopes are checked by a copy, not by ping)"
                } catch {
                    tokenUnusable = true
                    note = "the token in '\(path)' cannot be read: \(asMessage(error))"
                }
                printError("ferry ping: \(note)\n")
            }
            var times: [Double] = []
            for i in 0..<count {
                do {
                    let r = try TransferClient.ping(server, credentials: creds)
                    times.append(r.handshake)
                    if json {
                        print("{\"center\":\(jsonString(r.center)),\"handshake_ms\":\(String(format: "%.3f", r.handshake * 1000)),\"rtt_ms\":\(String(format: "%.3f", r.roundTrip * 1000))\(r.certificateNotAfter.map { ",\"certificate_not_after\":\($0)" } ?? "")}")
                    } else if count == 1 || i == count - 1 {
                        let sorted = times.sorted()
                        let median = sorted[sorted.count / 2]
                        let valid = r.certificateNotAfter.map { " (certificate valid until \(isoTime($0)))" } ?? ""
                        print("ferry ping: \(server) is center \(r.center)\(valid); TLS 1.3 handshake \(String(format: "%.2f", median * 1000)) ms (median of \(count)), round trip \(String(format: "%.3f", r.roundTrip * 1000)) ms")
                    }
                } catch {
                    let e = (error as? TransferError) ?? TransferError(.io, "\(error)")
                    printError("ferry ping: error: \(e.message)\n")
                    throw ExitCode(1)
                }
            }
            if tokenUnusable { throw ExitCode(1) }
        }
    }
}

/// A token's validity now: "valid", "expired" or "not_yet_valid", and a sentence when it is
/// not valid (the servers allow 300 s of clock skew before `issued_at`).
func tokenValidity(_ t: UserToken, now: Int64 = Int64(Date().timeIntervalSince1970)) -> (state: String, note: String?) {
    if now >= t.expiresAt {
        return ("expired", "token of '\(t.user)' expired at \(isoTime(t.expiresAt)) (\(now - t.expiresAt) s ago): ask for a new one")
    }
    if now + 300 < t.issuedAt {
        return ("not_yet_valid", "token of '\(t.user)' is not valid before \(isoTime(t.issuedAt)) (in \(t.issuedAt - now) s; check the clocks)")
    }
    return ("valid", nil)
}

/// Writes a secret (a token) to `path` readable by its owner only: the file is created with
/// O_EXCL and mode 0600, or, when it exists, opened without following a symbolic link, checked
/// to be a regular file of this user, set to 0600 and emptied before anything is written.
func writeSecret(_ text: String, to path: String) throws {
    var fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    if fd < 0 && errno == EEXIST {
        fd = open(path, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 && errno == ELOOP { throw ValidationError("'\(path)' is a symbolic link: not writing a token through it") }
        if fd >= 0 {
            var st = stat()
            guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_uid == geteuid(), st.st_nlink == 1 else {
                close(fd)
                throw ValidationError("'\(path)' is not a regular file of yours with one link: not writing a token there")
            }
            guard fchmod(fd, 0o600) == 0, ftruncate(fd, 0) == 0 else {
                let e = String(cString: strerror(errno))
                close(fd)
                throw ValidationError("cannot make '\(path)' private: \(e)")
            }
        }
    }
    if fd < 0 {
        if errno == ELOOP { throw ValidationError("'\(path)' is a symbolic link: not writing a token through it") }
        throw ValidationError("cannot create '\(path)': \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw ValidationError("cannot write '\(path)': \(String(cString: strerror(errno)))") }
        done += n
    }
    guard fsync(fd) == 0 else { throw ValidationError("cannot write '\(path)': \(String(cString: strerror(errno)))") }
}

/// "90s", "30m", "24h", "7d" → seconds.
func parseDuration(_ text: String) throws -> Int64 {
    let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
    guard let last = text.last, let unit = units[last], let n = Int64(text.dropLast()), n >= 0 else {
        throw ValidationError("'\(text)' is not a duration (use e.g. 90s, 30m, 24h, 7d)")
    }
    return n * unit
}

func makeDirectory(_ dir: String) throws {
    do {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    } catch {
        throw ValidationError("cannot create '\(dir)': \(error.localizedDescription)")
    }
}
