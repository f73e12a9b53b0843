/// A TOML subset for configuration files: `key = value` with strings ("..." with escapes,
/// '...' literal), integers, booleans and arrays of those (over several lines too), `[table]`
/// and `[[array of tables]]`, comments. Enough for `ferry serve --config`; anything else is a
/// clear error with its line number, never silently ignored.
public enum TOMLValue: Equatable, Sendable {
    case string(String)
    case integer(Int64)
    case bool(Bool)
    case array([TOMLValue])
    case table([String: TOMLValue])
    case tables([[String: TOMLValue]])
}

public enum TOML {
    public static func parse(_ text: String) throws -> [String: TOMLValue] {
        var lines: [String: Int] = [:]
        return try parse(text, lines: &lines)
    }

    /// Parses `text` and records where each key and table is (1-based lines), so that a check
    /// of the values can name the line of each problem: `key` at the top level, `table.key`,
    /// and for arrays of tables `table[i].key` and the header's `table[i]` (i from 0).
    public static func parse(_ text: String, lines keyLines: inout [String: Int]) throws -> [String: TOMLValue] {
        var root: [String: TOMLValue] = [:]
        var path: [String] = []  // current table ("" = root); arrays of tables append
        var isArrayTable = false
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { Array($0.utf8) }
        var i = 0
        func fail(_ msg: String) -> TransferError { TransferError(.usage, "line \(i + 1): \(msg)") }
        func set(_ key: String, _ v: TOMLValue, line: Int) throws {
            if path.isEmpty {
                keyLines[key] = line
            } else if isArrayTable, case .tables(let list)? = root[path[0]] {
                keyLines["\(path[0])[\(list.count - 1)].\(key)"] = line
            } else {
                keyLines["\(path[0]).\(key)"] = line
            }
            if path.isEmpty {
                guard root[key] == nil else { throw fail("'\(key)' is set twice") }
                root[key] = v
                return
            }
            let name = path[0]
            if isArrayTable {
                guard case .tables(var list)? = root[name], !list.isEmpty else { throw fail("internal: no table") }
                guard list[list.count - 1][key] == nil else { throw fail("'\(key)' is set twice") }
                list[list.count - 1][key] = v
                root[name] = .tables(list)
            } else {
                guard case .table(var t)? = root[name] else { throw fail("internal: no table") }
                guard t[key] == nil else { throw fail("'\(key)' is set twice") }
                t[key] = v
                root[name] = .table(t)
            }
        }
        while i < lines.count {
            var p = Parser(bytes: lines[i], line: i + 1)
            p.skipSpace()
            if p.atEndOrComment { i += 1; continue }
            if p.peek == UInt8(ascii: "[") {
                let array = p.peekAt(1) == UInt8(ascii: "[")
                p.pos += array ? 2 : 1
                p.skipSpace()
                let name = try p.key()
                p.skipSpace()
                guard p.eat("]"), !array || p.eat("]") else { throw fail("bad table header") }
                p.skipSpace()
                guard p.atEndOrComment else { throw fail("unexpected text after the table header") }
                path = [name]
                isArrayTable = array
                if array {
                    if root[name] == nil { root[name] = .tables([]) }
                    guard case .tables(var list)? = root[name] else { throw fail("'\(name)' is not an array of tables") }
                    list.append([:])
                    keyLines["\(name)[\(list.count - 1)]"] = i + 1
                    root[name] = .tables(list)
                } else {
                    guard root[name] == nil else { throw fail("table '\(name)' is defined twice") }
                    keyLines[name] = i + 1
                    root[name] = .table([:])
                }
                i += 1
                continue
            }
            let key = try p.key()
            let keyLine = i + 1  // an array may go on over the next lines: the key's own line
            p.skipSpace()
            guard p.eat("=") else { throw fail("expected '=' after '\(key)'") }
            p.skipSpace()
            // Arrays may continue over the following lines.
            var value: TOMLValue?
            var joined = lines[i]
            var start = p.pos
            for _ in 0..<10_000 {
                var q = Parser(bytes: joined, line: i + 1)
                q.pos = start
                do {
                    value = try q.value()
                    q.skipSpace()
                    guard q.atEndOrComment else { throw fail("unexpected text after the value of '\(key)'") }
                    break
                } catch let e as TOMLIncomplete {
                    _ = e
                    i += 1
                    guard i < lines.count else { throw fail("unterminated array for '\(key)'") }
                    joined += [UInt8(ascii: "\n")] + lines[i]
                    start = p.pos
                }
            }
            guard let value else { throw fail("array for '\(key)' too long") }
            try set(key, value, line: keyLine)
            i += 1
        }
        return root
    }
}

struct TOMLIncomplete: Error {}

private struct Parser {
    let bytes: [UInt8]
    let line: Int
    var pos = 0

    init(bytes: [UInt8], line: Int) {
        self.bytes = bytes
        self.line = line
    }

    var peek: UInt8? { pos < bytes.count ? bytes[pos] : nil }
    func peekAt(_ k: Int) -> UInt8? { pos + k < bytes.count ? bytes[pos + k] : nil }
    var atEndOrComment: Bool { peek == nil || peek == UInt8(ascii: "#") || peek == UInt8(ascii: "\r") }

    func fail(_ msg: String) -> TransferError { TransferError(.usage, "line \(line): \(msg)") }

    mutating func skipSpace() {
        while let c = peek, c == 0x20 || c == 0x09 { pos += 1 }
    }

    /// Spaces, newlines and comments (inside arrays).
    mutating func skipBlank() {
        while let c = peek {
            if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { pos += 1; continue }
            if c == UInt8(ascii: "#") { while let d = peek, d != 0x0A { _ = d; pos += 1 }; continue }
            break
        }
    }

    mutating func eat(_ s: Character) -> Bool {
        if peek == s.asciiValue { pos += 1; return true }
        return false
    }

    mutating func key() throws -> String {
        if peek == UInt8(ascii: "\"") { return try basicString() }
        let start = pos
        while let c = peek, (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || (c >= 0x30 && c <= 0x39) || c == 0x5F || c == 0x2D { pos += 1 }
        guard pos > start else { throw fail("expected a key") }
        if peek == UInt8(ascii: ".") { throw fail("dotted keys are not supported; use a [table]") }
        return String(decoding: bytes[start..<pos], as: UTF8.self)
    }

    var depth = 0

    mutating func value() throws -> TOMLValue {
        guard let c = peek else { throw TOMLIncomplete() }
        depth += 1
        defer { depth -= 1 }
        guard depth <= 16 else { throw fail("arrays nested deeper than 16") }
        switch c {
        case UInt8(ascii: "\""): return .string(try basicString())
        case UInt8(ascii: "'"):
            pos += 1
            let start = pos
            while let d = peek, d != UInt8(ascii: "'") { if d == 0x0A { throw fail("unterminated string") }; pos += 1 }
            guard peek != nil else { throw fail("unterminated string") }
            let s = String(decoding: bytes[start..<pos], as: UTF8.self)
            pos += 1
            return .string(s)
        case UInt8(ascii: "["):
            pos += 1
            var items: [TOMLValue] = []
            while true {
                skipBlank()
                guard let d = peek else { throw TOMLIncomplete() }
                if d == UInt8(ascii: "]") { pos += 1; return .array(items) }
                items.append(try value())
                skipBlank()
                guard let e = peek else { throw TOMLIncomplete() }
                if e == UInt8(ascii: ",") { pos += 1; continue }
                if e == UInt8(ascii: "]") { pos += 1; return .array(items) }
                throw fail("expected ',' or ']' in an array")
            }
        case UInt8(ascii: "t"), UInt8(ascii: "f"):
            if bytes[pos...].starts(with: Array("true".utf8)) { pos += 4; return .bool(true) }
            if bytes[pos...].starts(with: Array("false".utf8)) { pos += 5; return .bool(false) }
            throw fail("expected a value")
        default:
            let start = pos
            if c == UInt8(ascii: "-") || c == UInt8(ascii: "+") { pos += 1 }
            while let d = peek, (d >= 0x30 && d <= 0x39) || d == UInt8(ascii: "_") { pos += 1 }
            let text = String(decoding: bytes[start..<pos].filter { $0 != UInt8(ascii: "_") }, as: UTF8.self)
            guard let n = Int64(text) else { throw fail("expected a value (string, integer, boolean or array)") }
            return .integer(n)
        }
    }

    mutating func basicString() throws -> String {
        pos += 1
        var out = [UInt8]()
        while true {
            guard let c = peek, c != 0x0A else { throw fail("unterminated string") }
            pos += 1
            if c == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
            if c != UInt8(ascii: "\\") { out.append(c); continue }
            guard let e = peek else { throw fail("unterminated string") }
            pos += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "u"):
                guard pos + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[pos..<pos + 4], as: UTF8.self), radix: 16), let u = Unicode.Scalar(v) else {
                    throw fail("bad \\u escape")
                }
                pos += 4
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default: throw fail("unknown escape \\\(Character(Unicode.Scalar(e)))")
            }
        }
    }
}
