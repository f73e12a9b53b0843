import ArgumentParser
import Foundation
import Transfer

/// The client's configuration file: what every user would otherwise export in every shell
/// (`FERRY_CA`, `FERRY_TOKEN_FILE`, `FERRY_API`) and the centers they copy to by name, so that
/// `ferry cp ./x ferry://hlrs/scratch/alice/x` works with no environment at all.
///
///     # ~/.config/ferry/config.toml (or the file FERRY_CONFIG names; FERRY_CONFIG="" reads none)
///     ca = "~/.ferry/ca.crt"                   # the federation CA
///     token_file = "~/.ferry/alice.token"      # your user token
///     api = "https://dtn.hlrs.example:7480"    # the daemon `ferry jobs`, `ls gfs://`... ask
///
///     [[center]]
///     name = "hlrs"                            # ferry://hlrs/PATH
///     address = "dtn.hlrs.example"             # its transfer server (port 7700 when left out)
///     api = "https://dtn.hlrs.example:7480"    # its daemon (third-party copies from hlrs)
///
/// A command-line option wins over the environment, which wins over the file. Paths starting
/// with `~/` are in the home directory; other relative paths are relative to the file's own
/// directory. `ferry://NAME/PATH` with NAME a center of the file dials its address and requires
/// the server to prove it is center NAME (its certificate), as `--center NAME` would; any
/// other `ferry://HOST/PATH` without a port dials port 7700. Every mistake in the file is
/// reported at once, with the file's name; an unknown key is a mistake, never ignored.
struct ClientConfig: Sendable {
    /// The transfer server's registered port (`ferry serve`'s default listener).
    static let transferPort: UInt16 = 7700
    /// The daemon's API port (`[daemon] api_listen`'s default).
    static let apiPort: UInt16 = 7480

    struct Center: Sendable {
        var name: String
        var address: HostPort
        var api: String?
    }

    var path: String?
    var ca: String?
    var tokenFile: String?
    var api: String?
    var centers: [String: Center] = [:]

    /// The file this run reads: FERRY_CONFIG (empty: none), else ~/.config/ferry/config.toml
    /// ($XDG_CONFIG_HOME when set) if it exists.
    static func location(_ env: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        if let named = env["FERRY_CONFIG"] { return named.isEmpty ? nil : named }
        let base = env["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? ((env["HOME"] ?? NSHomeDirectory()) + "/.config")
        let p = base + "/ferry/config.toml"
        return FileManager.default.fileExists(atPath: p) ? p : nil
    }

    /// This run's configuration, read once (an empty one when there is no file).
    static let current: Result<ClientConfig, ValidationError> = {
        guard let p = location() else { return .success(ClientConfig()) }
        do { return .success(try load(p)) } catch let e as ValidationError { return .failure(e) } catch { return .failure(ValidationError("\(p): \(error)")) }
    }()

    static func get() throws -> ClientConfig { try current.get() }

    static func load(_ path: String) throws -> ClientConfig {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw ValidationError("cannot read the configuration \(path) (FERRY_CONFIG names it; FERRY_CONFIG=\"\" reads none)")
        }
        let table: [String: TOMLValue]
        do { table = try TOML.parse(text) } catch let e as TransferError { throw ValidationError("\(path): \(e.message)") }
        var c = ClientConfig()
        c.path = path
        var problems: [String] = []
        let dir = (path as NSString).deletingLastPathComponent
        func file(_ v: TOMLValue?, _ key: String) -> String? {
            guard let v else { return nil }
            guard case .string(let s) = v, !s.isEmpty else { problems.append("'\(key)' is a path in quotes"); return nil }
            if s.hasPrefix("~/") { return (ProcessInfo.processInfo.environment["HOME"] ?? NSHomeDirectory()) + String(s.dropFirst(1)) }
            return s.hasPrefix("/") ? s : dir + "/" + s
        }
        func url(_ v: TOMLValue?, _ key: String) -> String? {
            guard let v else { return nil }
            guard case .string(let s) = v, s.hasPrefix("https://") || s.hasPrefix("http://") else {
                problems.append("'\(key)' is the daemon's API, \"https://HOST:PORT\""); return nil
            }
            return s
        }
        for key in table.keys.sorted() where !["ca", "token_file", "api", "center"].contains(key) {
            problems.append("unknown key '\(key)' (known: ca, token_file, api, [[center]])")
        }
        c.ca = file(table["ca"], "ca")
        c.tokenFile = file(table["token_file"], "token_file")
        c.api = url(table["api"], "api")
        if let centers = table["center"] {
            guard case .tables(let list) = centers else { throw ValidationError("\(path): 'center' is a list of [[center]] tables") }
            for (i, t) in list.enumerated() {
                let which = "[[center]] #\(i + 1)"
                for key in t.keys.sorted() where !["name", "address", "api"].contains(key) {
                    problems.append("\(which): unknown key '\(key)' (known: name, address, api)")
                }
                guard case .string(let name)? = t["name"], CenterName.isValid(name) else {
                    problems.append("\(which): 'name' is the center's name: \(CenterName.rule)"); continue
                }
                if c.centers[name] != nil { problems.append("\(which): center '\(name)' is named twice") }
                guard case .string(let text)? = t["address"] else { problems.append("\(which) '\(name)': 'address' is its transfer server, \"HOST[:PORT]\""); continue }
                do {
                    let hp = try HostPort(parsing: text.contains("]:") || (!text.hasPrefix("[") && text.contains(":")) ? text : text + ":\(transferPort)")
                    c.centers[name] = Center(name: name, address: hp, api: url(t["api"], "\(which) '\(name)': api"))
                } catch let e as TransferError {
                    problems.append("\(which) '\(name)': address: \(e.message)")
                }
            }
        }
        if !problems.isEmpty {
            throw ValidationError("\(path): \(problems.count == 1 ? "1 mistake" : "\(problems.count) mistakes"):\n  " + problems.joined(separator: "\n  "))
        }
        return c
    }

    /// A `ferry://` text as this client dials it: a center of the file by name (its address;
    /// the center it must prove to be), or a host without a port on the registered port.
    /// Anything else unchanged.
    func resolve(_ text: String) -> (text: String, center: String?) {
        guard FerryURL.isFerry(text), let url = try? FerryURL(parsing: text), url.port == nil else { return (text, nil) }
        if let c = centers[url.host] { return ("ferry://\(c.address)\(url.path)", c.name) }
        return ("ferry://\(url.hostForURL):\(ClientConfig.transferPort)\(url.path)", nil)
    }
}
