import Foundation
import Transfer

/// The API's answers as JSON, written straight into bytes as the value encodes itself:
/// the same JSON as `APIJSON.encoder()` (snake_case keys by Foundation's own rule, dictionary
/// keys as they are, optionals absent when `encodeIfPresent` skips them), about three times
/// faster. Foundation's `JSONEncoder` builds a tree of every value before it writes a byte:
/// under `bench/api.sh` it was a sixth of an entry's answer and of a job's.
///
/// Written for the shapes the contract's types use: keyed containers (also asked for twice by
/// one value that adds keys to its parent's, `V1.DatasetView`), unkeyed containers and single
/// values, each value's container closed when its `encode(to:)` returns. Anything else (nested
/// containers, super encoders, a value asking for two kinds of container, `Date`, `Data`,
/// `URL`, `Decimal`, a non-finite number) is handed back: `encode` then uses `JSONEncoder`.
/// `ContractSchemaTests` checks every contract type both ways.
enum AnswerEncoder {
    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let w = Writer()
        do {
            try w.value(value)
            return w.out
        } catch is Unsupported {
            return Array(try APIJSON.encode(value))
        }
    }

    struct Unsupported: Error {}

    /// snake_case forms of coding keys, computed once each by Foundation's own strategy (so
    /// they cannot differ from what `JSONEncoder` writes). Keys come from the code's types
    /// (dictionary keys are not converted), so the table stays small; it is bounded anyway.
    private static let lock = NSLock()
    nonisolated(unsafe) private static var snake: [String: [UInt8]] = [:]

    static func snakeKey(_ key: String) -> [UInt8] {
        if let k = lock.withLock({ snake[key] }) { return k }
        var k: [UInt8] = []
        JSONText.appendString(foundationSnake(key), to: &k)
        lock.withLock { if snake.count < 4096 { snake[key] = k } }
        return k
    }

    private struct OneKey: Encodable {
        let key: String
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: AnyKey.self)
            try c.encode(0, forKey: AnyKey(stringValue: key))
        }
    }

    static func foundationSnake(_ key: String) -> String {
        guard let data = try? APIJSON.encode(OneKey(key: key)),
              let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let k = o.keys.first else { return key }
        return k
    }

    /// What one value's encoder opened.
    final class Level {
        enum State { case none, object, array, single }
        var state = State.none
        var count = 0
    }

    final class Writer {
        var out: [UInt8] = []
        init() { out.reserveCapacity(1024) }

        func comma(_ level: Level) {
            if level.count > 0 { out.append(UInt8(ascii: ",")) }
            level.count += 1
        }

        func key(_ k: CodingKey, _ level: Level) {
            comma(level)
            out.append(contentsOf: AnswerEncoder.snakeKey(k.stringValue))
            out.append(UInt8(ascii: ":"))
        }

        func close(_ level: Level) {
            switch level.state {
            case .object: out.append(UInt8(ascii: "}"))
            case .array: out.append(UInt8(ascii: "]"))
            case .single: break
            case .none: JSONText.appendRaw("{}", to: &out)  // JSONEncoder's answer for a value that encoded nothing
            }
        }

        func double(_ d: Double) throws {
            guard d.isFinite else { throw Unsupported() }
            out += Array("\(d)".utf8)
        }

        /// One value: a primitive directly, a dictionary with its keys as they are, anything
        /// else through its own `encode(to:)` into a level of its own.
        func value<T: Encodable>(_ v: T) throws {
            switch v {
            case let s as String: JSONText.appendString(s, to: &out)
            case let b as Bool: b ? JSONText.appendRaw("true", to: &out) : JSONText.appendRaw("false", to: &out)
            case let i as Int: JSONText.appendInt(Int64(i), to: &out)
            case let i as Int64: JSONText.appendInt(i, to: &out)
            case let i as Int32: JSONText.appendInt(Int64(i), to: &out)
            case let i as UInt64: out += Array(String(i).utf8)
            case let i as UInt32: JSONText.appendInt(Int64(i), to: &out)
            case let i as UInt16: JSONText.appendInt(Int64(i), to: &out)
            case let i as UInt8: JSONText.appendInt(Int64(i), to: &out)
            case let i as Int16: JSONText.appendInt(Int64(i), to: &out)
            case let i as Int8: JSONText.appendInt(Int64(i), to: &out)
            case let i as UInt: out += Array(String(i).utf8)
            case let d as Double: try double(d)
            case let f as Float: try double(Double(f))
            case is Date, is Data, is URL, is Decimal: throw Unsupported()
            case let d as any StringKeyedEntries: try d.writeEntries(self)
            default:
                let level = Level()
                try v.encode(to: Enc(w: self, level: level))
                close(level)
            }
        }
    }

    struct Enc: Encoder {
        let w: Writer
        let level: Level
        var codingPath: [CodingKey] { [] }
        var userInfo: [CodingUserInfoKey: Any] { [:] }

        func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
            switch level.state {
            case .none:
                level.state = .object
                w.out.append(UInt8(ascii: "{"))
            case .object: break  // a second container of the same value: more keys of the same object
            case .array, .single: return KeyedEncodingContainer(Keyed<Key>(w: w, level: level, broken: true))
            }
            return KeyedEncodingContainer(Keyed<Key>(w: w, level: level, broken: false))
        }

        func unkeyedContainer() -> UnkeyedEncodingContainer {
            if level.state == .none {
                level.state = .array
                w.out.append(UInt8(ascii: "["))
                return Unkeyed(w: w, level: level, broken: false)
            }
            return Unkeyed(w: w, level: level, broken: true)
        }

        func singleValueContainer() -> SingleValueEncodingContainer { Single(w: w, level: level) }
    }

    struct Keyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let w: Writer
        let level: Level
        let broken: Bool
        var codingPath: [CodingKey] { [] }

        mutating func encodeNil(forKey key: Key) throws {
            if broken { throw Unsupported() }
            w.key(key, level)
            JSONText.appendRaw("null", to: &w.out)
        }

        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
            if broken { throw Unsupported() }
            w.key(key, level)
            try w.value(value)
        }

        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
            KeyedEncodingContainer(Keyed<NestedKey>(w: w, level: level, broken: true))
        }

        mutating func nestedUnkeyedContainer(forKey key: Key) -> UnkeyedEncodingContainer { Unkeyed(w: w, level: level, broken: true) }
        mutating func superEncoder() -> Encoder { Enc(w: w, level: Level.brokenLevel()) }
        mutating func superEncoder(forKey key: Key) -> Encoder { Enc(w: w, level: Level.brokenLevel()) }
    }

    struct Unkeyed: UnkeyedEncodingContainer {
        let w: Writer
        let level: Level
        let broken: Bool
        var codingPath: [CodingKey] { [] }
        var count: Int { level.count }

        mutating func encodeNil() throws {
            if broken { throw Unsupported() }
            w.comma(level)
            JSONText.appendRaw("null", to: &w.out)
        }

        mutating func encode<T: Encodable>(_ value: T) throws {
            if broken { throw Unsupported() }
            w.comma(level)
            try w.value(value)
        }

        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
            KeyedEncodingContainer(Keyed<NestedKey>(w: w, level: level, broken: true))
        }

        mutating func nestedUnkeyedContainer() -> UnkeyedEncodingContainer { Unkeyed(w: w, level: level, broken: true) }
        mutating func superEncoder() -> Encoder { Enc(w: w, level: Level.brokenLevel()) }
    }

    struct Single: SingleValueEncodingContainer {
        let w: Writer
        let level: Level
        var codingPath: [CodingKey] { [] }

        func claim() throws {
            guard level.state == .none else { throw Unsupported() }
            level.state = .single
        }

        mutating func encodeNil() throws {
            try claim()
            JSONText.appendRaw("null", to: &w.out)
        }

        mutating func encode<T: Encodable>(_ value: T) throws {
            try claim()
            try w.value(value)
        }
    }
}

extension AnswerEncoder.Level {
    /// A level whose every use is refused (a super encoder: its end cannot be known here).
    static func brokenLevel() -> AnswerEncoder.Level {
        let l = AnswerEncoder.Level()
        l.state = .array
        l.count = -1
        return l
    }
}

/// A dictionary with `String` keys: written as an object with its keys as they are (as
/// `JSONEncoder` does; the key strategy applies to coding keys only).
protocol StringKeyedEntries {
    func writeEntries(_ w: AnswerEncoder.Writer) throws
}

extension Dictionary: StringKeyedEntries where Key == String, Value: Encodable {
    func writeEntries(_ w: AnswerEncoder.Writer) throws {
        w.out.append(UInt8(ascii: "{"))
        var first = true
        for (k, v) in self {
            if !first { w.out.append(UInt8(ascii: ",")) }
            first = false
            JSONText.appendString(k, to: &w.out)
            w.out.append(UInt8(ascii: ":"))
            try w.value(v)
        }
        w.out.append(UInt8(ascii: "}"))
    }
}
