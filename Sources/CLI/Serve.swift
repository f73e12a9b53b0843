import ArgumentParser
import Foundation
import Transfer

extension Ferry {
    /// `ferry serve`: the transfer server.
    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve",
            abstract: "Serve a directory: clients push into it and pull from it."
        )

        @Option(help: "Directory to serve; every path resolves beneath it.")
        var root: String

        @Option(help: "Address to listen on, HOST:PORT or [V6]:PORT (repeatable; port 0 picks one).")
        var listen: [String] = []

        @Option(name: .customLong("token-file"), help: "File holding the access token clients must present.")
        var tokenFile: String

        @Option(name: .customLong("handshake-timeout"), help: "Seconds a new connection has to identify itself.")
        var handshakeTimeout = 10

        @Option(name: .customLong("idle-timeout"), help: "Seconds of silence after which a session is dropped.")
        var idleTimeout = 120

        @Option(name: .customLong("max-connections"), help: "Connections served at once; more are refused.")
        var maxConnections = 256

        @Option(name: .customLong("max-connections-per-address"), help: "Connections from one address at once; more are refused.")
        var maxConnectionsPerAddress = 64

        @Option(name: .customLong("audit-log"), help: "Append one JSON line per session and per refused connection to this file.")
        var auditLog: String?

        func validate() throws {
            if listen.isEmpty { throw ValidationError("give at least one --listen HOST:PORT") }
            if handshakeTimeout < 1 || idleTimeout < 1 || maxConnections < 1 || maxConnectionsPerAddress < 1 { throw ValidationError("timeouts and limits must be positive") }
        }

        func run() throws {
            var addresses: [HostPort] = []
            for l in listen {
                do { addresses.append(try HostPort(parsing: l)) } catch { throw ValidationError("\(error)") }
            }
            var config = ServerConfiguration(root: root, listen: addresses, token: try readToken(tokenFile))
            config.handshakeTimeoutSeconds = handshakeTimeout
            config.idleTimeoutSeconds = idleTimeout
            config.connectionsMax = maxConnections
            config.connectionsPerAddressMax = maxConnectionsPerAddress
            if let auditLog {
                do { config.audit = try AuditLog(path: auditLog) } catch { throw ValidationError("\(error)") }
            }
            // Block the stop signals before any thread starts, then wait for them here.
            var signals = sigset_t()
            sigemptyset(&signals)
            sigaddset(&signals, SIGTERM)
            sigaddset(&signals, SIGINT)
            pthread_sigmask(SIG_BLOCK, &signals, nil)
            let server: TransferServer
            let bound: [HostPort]
            do {
                server = try TransferServer(config)
                bound = try server.start()
            } catch {
                FileHandle.standardError.write("ferry serve: error: \(error)\n".data(using: .utf8)!)
                throw ExitCode(1)
            }
            for b in bound { print("ferry serve: listening on \(b)") }
            fflush(stdout)
            var received: Int32 = 0
            sigwait(&signals, &received)
            server.stop()
            FileHandle.standardError.write("ferry serve: stopping (signal \(received))\n".data(using: .utf8)!)
        }
    }
}
