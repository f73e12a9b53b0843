/// One home for the names users, jobs and peers write (issue 14 item 5): where data is
/// (`Location`, `FerryURL`), how big something is (`ByteSize`) and what a center may be called
/// (`CenterName`). Every other module parses these through here; none has a parser of its own.
///
/// All of them are checked byte-wise, as the kernel and the peer see them, and refuse rather
/// than repair: a NUL, a `..` component, a port out of range, an empty host or an over-long
/// name is an error naming the text (shown with control characters as `?`), never a guess.
/// Nothing is percent-decoded: `%` is an ordinary character of a path, so `a%2Fb` is one name
/// and `%2e%2e` is not `..` (a path with a space is written with the space, quoted in the shell).

/// Where data is, as a user or a job writes it.
public enum Location: Sendable, Equatable {
    /// `ferry://AUTHORITY/PATH`: a Ferry server (HOST:PORT) or, for a daemon's job, a peer by name.
    case ferry(FerryURL)
    /// `gfs://CENTER/PATH` in the global namespace (Global Files resolves the dataset in PATH).
    case gfs(center: String, components: [String])
    /// Anything else: a local path as written (a daemon's job path is `/EXPORT/PATH`, see
    /// `exportComponents`).
    case local(String)

    public static let gfsScheme = "gfs://"

    /// Parses any location. A text with neither scheme is a local path (non-empty, no NUL).
    public init(parsing text: String) throws {
        if text.utf8.starts(with: FerryURL.scheme.utf8) {
            self = .ferry(try FerryURL(parsing: text))
        } else if text.utf8.starts(with: Location.gfsScheme.utf8) {
            let (center, components) = try Location.gfsParts(Array(text.utf8))
            self = .gfs(center: center, components: components)
        } else {
            guard !text.isEmpty else { throw TransferError(.usage, "empty path") }
            guard !text.utf8.contains(0) else { throw TransferError(.path, "NUL byte in the path '\(Location.shown(text))'") }
            self = .local(text)
        }
    }

    /// `gfs://CENTER/PATH` from raw bytes: the center (`CenterName`) and PATH's components, with
    /// empty and `.` components dropped ("gfs://c/a//b/" is "gfs://c/a/b"). Refused: no UTF-8,
    /// NUL, `..`, a component over 255 bytes, a path over 4096.
    public static func gfsParts(_ bytes: [UInt8]) throws -> (center: String, components: [String]) {
        guard bytes.starts(with: gfsScheme.utf8) else { throw TransferError(.usage, "not a gfs:// path: '\(shown(String(decoding: bytes, as: UTF8.self)))'") }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw TransferError(.usage, "a gfs:// path must be UTF-8") }
        if bytes.contains(0) { throw TransferError(.usage, "NUL byte in '\(shown(text))'") }
        let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")
        let rest = bytes.dropFirst(gfsScheme.utf8.count)
        let centerBytes = rest.prefix { $0 != slash }
        let center = String(decoding: centerBytes, as: UTF8.self)
        guard CenterName.isValid(center) else { throw TransferError(.usage, "'\(shown(text))': \(CenterName.rule)") }
        let pathBytes = rest.dropFirst(centerBytes.count)
        if pathBytes.count > PathLimits.pathBytesMax { throw TransferError(.usage, "'\(shown(text))': path longer than \(PathLimits.pathBytesMax) bytes") }
        var components: [String] = []
        for c in pathBytes.split(separator: slash, omittingEmptySubsequences: true) where !c.elementsEqual([dot]) {
            if c.elementsEqual([dot, dot]) { throw TransferError(.usage, "'\(shown(text))': '..' is not allowed") }
            if c.count > PathLimits.componentBytesMax { throw TransferError(.usage, "'\(shown(text))': a name is longer than \(PathLimits.componentBytesMax) bytes") }
            components.append(String(decoding: c, as: UTF8.self))
        }
        return (center, components)
    }

    /// A daemon's local job path `/EXPORT/PATH` as components (the export's name first, unless
    /// the daemon has one unnamed export): absolute, no `.` or `..`, no NUL; empty components
    /// are dropped.
    public static func exportComponents(_ text: String) throws -> [String] {
        // Byte-wise, as the kernel splits (see `FerryURL`): components are whole UTF-8 sequences.
        let parts = text.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).map { String(decoding: $0, as: UTF8.self) }
        guard text.utf8.first == UInt8(ascii: "/"), !parts.isEmpty else { throw TransferError(.usage, "a local job path is /EXPORT/PATH, not '\(shown(text))'") }
        guard !text.utf8.contains(0) else { throw TransferError(.path, "NUL byte in the path '\(shown(text))'") }
        for p in parts where p == ".." || p == "." { throw TransferError(.path, "path '\(shown(text))' leaves its export") }
        return parts
    }

    /// Text for a message: control characters as `?`, at most 300 characters.
    static func shown(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.prefix(300).map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }))
    }
}

/// `ferry://AUTHORITY[/PATH]`. AUTHORITY is `HOST:PORT`, `[IPv6]:PORT`, or a host or peer name
/// without a port (a daemon's job names a configured peer so: `ferry://wuxi/incoming/x`).
/// HOST is letters, digits, `-`, `.` (not first: `-`, `.`), at most 253 bytes; an IPv6 address
/// is hexadecimal digits, `:` and `.` in brackets (no zone); PORT is 1 to 65535 in decimal
/// digits only. PATH is "/" when absent; it has no NUL and no `..` component and is at most
/// 4096 bytes. `user@`, `?query` and `#fragment` have no meaning here and are refused as
/// characters of the authority.
public struct FerryURL: Sendable, Equatable, CustomStringConvertible {
    public static let scheme = "ferry://"
    public static let hostBytesMax = 253

    /// As written (validated): the key a daemon's configuration names peers and hosts by.
    public let authority: String
    /// The host without brackets (`::1`, `dtn.example`, `wuxi`).
    public let host: String
    public let port: UInt16?
    /// Starts with "/".
    public let path: String

    /// The address to dial, when the URL has a port.
    public var address: HostPort? { port.map { HostPort(host: host, port: $0) } }
    /// The host as it goes back into a URL or an address (`[::1]` for IPv6).
    public var hostForURL: String { host.contains(":") ? "[\(host)]" : host }
    public var description: String { FerryURL.scheme + authority + path }

    public static func isFerry(_ text: String) -> Bool { text.utf8.starts(with: scheme.utf8) }

    public init(parsing text: String) throws {
        let s = Location.shown(text)
        guard FerryURL.isFerry(text) else { throw TransferError(.usage, "not a ferry:// URL: '\(s)'") }
        let rest = Substring(text).dropFirst(FerryURL.scheme.count)
        let authority: Substring
        let host: Substring
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw TransferError(.usage, "bad URL '\(s)': missing ']'") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            let end = after.firstIndex(of: "/") ?? after.endIndex
            let tail = after[..<end]
            if !tail.isEmpty {
                guard tail.hasPrefix(":") else { throw TransferError(.usage, "bad URL '\(s)': expected ]:PORT after an IPv6 address") }
                portText = tail.dropFirst()
            }
            authority = rest[..<end]
            guard !host.isEmpty, host.utf8.count <= 45, host.contains(":"),
                  host.utf8.allSatisfy({ FerryURL.isHexDigit($0) || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") }) else {
                throw TransferError(.usage, "bad URL '\(s)': '[\(Location.shown(String(host)))]' is not an IPv6 address")
            }
        } else {
            authority = rest.prefix { $0 != "/" }
            if let colon = authority.firstIndex(of: ":") {
                host = authority[..<colon]
                portText = authority[authority.index(after: colon)...]
                if portText!.contains(":") { throw TransferError(.usage, "bad URL '\(s)': put IPv6 addresses in brackets, ferry://[::1]:7700/PATH") }
            } else {
                host = authority
            }
            guard !host.isEmpty else { throw TransferError(.usage, "bad URL '\(s)': no host") }
            guard host.utf8.count <= FerryURL.hostBytesMax, FerryURL.isHostName(host.utf8) else {
                throw TransferError(.usage, "bad URL '\(s)': the host is letters, digits, '-' and '.' (at most \(FerryURL.hostBytesMax)), or an IPv6 address in brackets")
            }
        }
        var port: UInt16?
        if let p = portText {
            guard (1...5).contains(p.utf8.count), p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = Int(p), (1...65535).contains(n) else {
                throw TransferError(.usage, "bad URL '\(s)': the port is a number from 1 to 65535")
            }
            port = UInt16(n)
        }
        let pathText = String(rest[authority.endIndex...])
        let path = pathText.isEmpty ? "/" : pathText
        guard !path.utf8.contains(0) else { throw TransferError(.path, "bad URL '\(s)': NUL byte in the path") }
        guard path.utf8.count <= PathLimits.pathBytesMax else { throw TransferError(.path, "bad URL '\(s)': path longer than \(PathLimits.pathBytesMax) bytes") }
        // Byte-wise, as the kernel splits: "/" followed by a combining mark is one Swift
        // Character, but still a separator on disk.
        if path.utf8.split(separator: UInt8(ascii: "/")).contains(where: { $0.elementsEqual("..".utf8) }) {
            throw TransferError(.path, "path '\(Location.shown(path))' leaves the server's root ('..' refused)")
        }
        self.authority = String(authority)
        self.host = String(host)
        self.port = port
        self.path = path
    }

    static func isHexDigit(_ b: UInt8) -> Bool { (b >= 0x30 && b <= 0x39) || (b | 0x20 >= 0x61 && b | 0x20 <= 0x66) }

    static func isHostName<C: Collection>(_ b: C) -> Bool where C.Element == UInt8 {
        guard let first = b.first, first != UInt8(ascii: "-"), first != UInt8(ascii: ".") else { return false }
        return b.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2D || $0 == 0x2E }
    }
}

/// The one rule for a center's name, wherever one appears: certificates (`ferry ca issue`),
/// `[[peer]]` names, `gfs://CENTER/...`, the catalog. 1 to 63 bytes of ASCII letters, digits,
/// `-` and `.`, not starting with `-` or `.`: a host-like label, because a center's name is
/// put into its certificate and into URLs. (Global Files once also took `_`, which no
/// certificate could carry: such a center could never have existed.)
public enum CenterName {
    public static let bytesMax = 63
    public static let rule = "a center's name is letters, digits, '-' and '.' (not first), at most \(bytesMax) bytes"

    public static func isValid(_ name: String) -> Bool {
        (1...bytesMax).contains(name.utf8.count) && FerryURL.isHostName(name.utf8)
    }

    /// Throws a usage error naming the bad name and the rule.
    public static func validate(_ name: String) throws {
        guard isValid(name) else { throw TransferError(.usage, "bad center name '\(Location.shown(name))': \(rule)") }
    }
}

/// The one size parser: `4096`, `512K`, `64M`, `1.5G`, `2T`, `1P`, also written `4MiB`, `4MB`,
/// `4m` or `100B`. Every unit is a power of 1024 (a storage quota and a chunk size mean the
/// same by `M`). Decimal digits with at most one `.`: no sign, exponent, hexadecimal, `inf` or
/// `nan`; at most 2^63 - 1 bytes. Surrounding spaces are ignored.
public enum ByteSize {
    public static let maximum = UInt64(Int64.max)

    public static func parse(_ text: String) throws -> UInt64 {
        let bad = TransferError(.usage, "'\(Location.shown(text))' is not a size (use e.g. 512K, 64M, 1.5G)")
        var t = Array(text.utf8)
        while t.first == 0x20 { t.removeFirst() }
        while t.last == 0x20 { t.removeLast() }
        func power(_ c: UInt8) -> UInt64? { [UInt8(ascii: "k"): 1, UInt8(ascii: "m"): 2, UInt8(ascii: "g"): 3, UInt8(ascii: "t"): 4, UInt8(ascii: "p"): 5][c | 0x20] }
        if t.last == UInt8(ascii: "B") || t.last == UInt8(ascii: "b") { t.removeLast() }
        if t.count >= 2, t[t.count - 1] | 0x20 == UInt8(ascii: "i"), power(t[t.count - 2]) != nil { t.removeLast() }  // "MiB"
        var multiplier: UInt64 = 1
        if let last = t.last, let p = power(last) {
            multiplier = 1 << (10 * p)
            t.removeLast()
        }
        let dots = t.filter { $0 == UInt8(ascii: ".") }.count
        guard !t.isEmpty, dots <= 1, t.contains(where: { $0 != UInt8(ascii: ".") }),
              t.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: ".") }) else { throw bad }
        let number = String(decoding: t, as: UTF8.self)
        if dots == 0 {
            guard t.count <= 19, let n = UInt64(number), n <= maximum / multiplier else { throw bad }
            return n * multiplier
        }
        guard let v = Double(number), v.isFinite, v * Double(multiplier) < Double(maximum) else { throw bad }
        return UInt64(v * Double(multiplier))
    }
}
