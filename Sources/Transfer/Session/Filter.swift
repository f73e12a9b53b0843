/// Include and exclude rules: a documented subset of rsync's filter rules, applied where a
/// tree is walked (the sending side of a copy, and both sides of a listing), so that an
/// excluded file is never opened and an excluded directory never entered.
///
/// The subset (docs/CLI.md, "Filters"):
/// - Rules are tried in the order given; the first that matches decides; no match includes.
/// - `--exclude P` is `- P`, `--include P` is `+ P`; `--filter-from FILE` reads one rule a
///   line: `- P`, `+ P`, `exclude P` or `include P`; blank lines and lines starting with `#`
///   or `;` are comments.
/// - A pattern ending in `/` matches directories only.
/// - A pattern starting with `/` is anchored at the transfer's root.
/// - A pattern that contains `/` (other than a trailing one) or `**` is matched against the
///   path relative to the root (unanchored: against any tail of it that starts at a
///   component); any other pattern against the entry's name alone.
/// - `*` matches any run of characters but `/`, `**` any run including `/`, `?` one character
///   but `/`, `[abc]`, `[a-z]`, `[!a-z]` one character of (or not of) a set.
/// - An excluded directory is skipped with everything in it: `--include '*/' --exclude '*'`
///   style rules need the directories included first, as in rsync. The root is never
///   excluded.
/// - Not supported (refused with a message): rsync's merge files, modifiers and `!`.
public struct FilterRules: Sendable, Equatable {
    public struct Rule: Sendable, Equatable {
        public var include: Bool
        public var pattern: String
        // Parsed form.
        var directoryOnly: Bool
        var anchored: Bool
        var wholePath: Bool
        var glob: [UInt8]

        public init(include: Bool, pattern: String) throws {
            guard !pattern.isEmpty else { throw TransferError(.usage, "an empty filter pattern") }
            guard pattern.utf8.count <= FilterRules.patternBytesMax else {
                throw TransferError(.usage, "a filter pattern longer than \(FilterRules.patternBytesMax) bytes")
            }
            guard !pattern.utf8.contains(0) else { throw TransferError(.usage, "a filter pattern with a NUL byte") }
            self.include = include
            self.pattern = pattern
            var p = Array(pattern.utf8)
            directoryOnly = p.last == UInt8(ascii: "/")
            while p.count > 1 && p.last == UInt8(ascii: "/") { p.removeLast() }
            anchored = p.first == UInt8(ascii: "/")
            if anchored { p.removeFirst() }
            guard !p.isEmpty else { throw TransferError(.usage, "filter pattern '\(pattern)' matches only the root, which is never filtered") }
            wholePath = anchored || p.contains(UInt8(ascii: "/")) || Glob.hasDoubleStar(p)
            glob = p
        }

        /// Whether this rule matches the entry at `path` (relative to the root, components
        /// separated by '/').
        func matches(_ path: [UInt8], isDirectory: Bool) -> Bool {
            if directoryOnly && !isDirectory { return false }
            if !wholePath {
                let name = path.lastIndex(of: UInt8(ascii: "/")).map { Array(path[($0 + 1)...]) } ?? path
                return Glob.match(glob[...], name[...])
            }
            if anchored { return Glob.match(glob[...], path[...]) }
            // Unanchored: the whole path, or any tail that starts after a '/'.
            if Glob.match(glob[...], path[...]) { return true }
            for (i, b) in path.enumerated() where b == UInt8(ascii: "/") {
                if Glob.match(glob[...], path[(i + 1)...]) { return true }
            }
            return false
        }
    }

    public static let rulesMax = 1000
    public static let patternBytesMax = 1024
    public static let patternBytesTotalMax = 16 << 10

    public private(set) var rules: [Rule] = []

    public init() {}

    public init(_ rules: [Rule]) throws {
        guard rules.count <= FilterRules.rulesMax else { throw TransferError(.usage, "more than \(FilterRules.rulesMax) filter rules") }
        // Bounds the matching work per entry (pattern bytes × path bytes) that a peer's
        // rules can ask of a server walking a tree for it.
        guard rules.reduce(0, { $0 + $1.pattern.utf8.count }) <= FilterRules.patternBytesTotalMax else {
            throw TransferError(.usage, "filter rules longer than \(FilterRules.patternBytesTotalMax) bytes in all")
        }
        self.rules = rules
    }

    public var isEmpty: Bool { rules.isEmpty }

    /// One line of a filter file: a rule, or nil for a blank line or comment.
    public static func rule(line: String) throws -> Rule? {
        let t = line.trimmingSpaces()
        if t.isEmpty || t.hasPrefix("#") || t.hasPrefix(";") { return nil }
        for (prefix, include) in [("- ", false), ("+ ", true), ("exclude ", false), ("include ", true)] where t.hasPrefix(prefix) {
            return try Rule(include: include, pattern: String(t.dropFirst(prefix.count)))
        }
        throw TransferError(.usage, "'\(t)' is not a rule this subset knows: '- PATTERN' (exclude) or '+ PATTERN' (include)")
    }

    /// A filter file's rules; every bad line is named with its number.
    public static func parse(file text: String, name: String) throws -> [Rule] {
        var out: [Rule] = []
        var problems: [String] = []
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            do {
                if let r = try rule(line: String(line)) { out.append(r) }
            } catch {
                problems.append("\(name):\(i + 1): \(asTransferError(error).message)")
            }
        }
        if !problems.isEmpty { throw TransferError(.usage, problems.joined(separator: "\n")) }
        return out
    }

    /// True when the entry at `path` (relative to the root; "" is the root) is excluded.
    public func excludes(_ path: String, isDirectory: Bool) -> Bool {
        if rules.isEmpty || path.isEmpty { return false }
        let bytes = Array(path.utf8)
        for r in rules where r.matches(bytes, isDirectory: isDirectory) { return !r.include }
        return false
    }

    func encode(_ w: inout ByteWriter) {
        w.u16(UInt16(rules.count))
        for r in rules {
            w.u8(r.include ? 1 : 0)
            w.string(r.pattern)
        }
    }

    static func decode(_ r: inout ByteReader) throws -> FilterRules {
        let n = Int(try r.u16())
        guard n <= rulesMax else { throw TransferError.protocolError("more than \(rulesMax) filter rules") }
        var rules: [Rule] = []
        for _ in 0..<n {
            let include = try r.u8()
            guard include <= 1 else { throw TransferError.protocolError("bad filter rule kind") }
            let pattern = try r.string(maxBytes: patternBytesMax)
            do { rules.append(try Rule(include: include == 1, pattern: pattern)) } catch {
                throw TransferError.protocolError("bad filter rule: \(asTransferError(error).message)")
            }
        }
        return try FilterRules(rules)
    }
}

/// The glob matcher of filter rules (and nothing else): `*`, `**`, `?`, `[...]`. Iterative
/// with one backtracking point per star kind, so a hostile pattern costs at most
/// pattern × path steps.
enum Glob {
    static func hasDoubleStar(_ p: [UInt8]) -> Bool {
        for i in p.indices.dropLast() where p[i] == UInt8(ascii: "*") && p[i + 1] == UInt8(ascii: "*") { return true }
        return false
    }

    static func match(_ pattern: ArraySlice<UInt8>, _ text: ArraySlice<UInt8>) -> Bool {
        let p = Array(pattern)
        let t = Array(text)
        var pi = 0
        var ti = 0
        // Where to resume after a mismatch: the star's position and the text position it
        // last consumed up to; `any` says whether that star may cross '/'.
        var starP = -1
        var starT = 0
        var starAny = false
        let slash = UInt8(ascii: "/")
        while ti < t.count {
            if pi < p.count && p[pi] == UInt8(ascii: "*") {
                var any = false
                var j = pi
                while j < p.count && p[j] == UInt8(ascii: "*") { j += 1 }
                if j - pi >= 2 { any = true }
                starP = j
                starT = ti
                starAny = any
                pi = j
                continue
            }
            if pi < p.count, let (ok, width) = single(p, pi, t[ti]), ok {
                pi += width
                ti += 1
                continue
            }
            // Backtrack: the last star takes one more character (a single star never a '/').
            if starP >= 0 && (starAny || t[starT] != slash) {
                starT += 1
                ti = starT
                pi = starP
                continue
            }
            return false
        }
        while pi < p.count && p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }

    /// Whether `c` matches the pattern element at `i` (not a star), and the element's width.
    private static func single(_ p: [UInt8], _ i: Int, _ c: UInt8) -> (Bool, Int)? {
        switch p[i] {
        case UInt8(ascii: "?"):
            return (c != UInt8(ascii: "/"), 1)
        case UInt8(ascii: "["):
            var j = i + 1
            var negate = false
            if j < p.count && (p[j] == UInt8(ascii: "!") || p[j] == UInt8(ascii: "^")) { negate = true; j += 1 }
            var found = false
            var first = true
            while j < p.count && (first || p[j] != UInt8(ascii: "]")) {
                first = false
                if j + 2 < p.count && p[j + 1] == UInt8(ascii: "-") && p[j + 2] != UInt8(ascii: "]") {
                    if p[j] <= c && c <= p[j + 2] { found = true }
                    j += 3
                } else {
                    if p[j] == c { found = true }
                    j += 1
                }
            }
            // No closing ']': the '[' is a plain character.
            guard j < p.count else { return (c == UInt8(ascii: "["), 1) }
            return (found != negate && c != UInt8(ascii: "/"), j + 1 - i)
        case UInt8(ascii: "\\") where i + 1 < p.count:
            return (c == p[i + 1], 2)
        default:
            return (c == p[i], 1)
        }
    }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
