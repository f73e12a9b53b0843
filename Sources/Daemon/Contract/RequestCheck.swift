import Foundation

/// A request body of the contract. `APIJSON.decode` checks every one against its schema before
/// it decodes it (`RequestCheck`), so the schema is the one statement of what a body may hold
/// and the type's `Decodable` is the synthesized one (or close to it): no type refuses keys or
/// ranges by hand.
public protocol APIRequest: APIModel {}

/// A request body its schema refuses, as one line a person can act on: a 400 whose detail is
/// `description` ("bwlimit is 0 or more, not -5", "unknown key 'hury' (a teardown takes hurry,
/// job)", "directives[2].direction: unknown value 'stage_up': one of stage_in, stage_out").
public struct RequestRefusal: Error, CustomStringConvertible, Sendable {
    public var description: String
    /// Set when the refusal is a required key that is absent (a body of several shapes,
    /// `oneOf`, then says which keys would do).
    var missing: String? = nil

    init(_ description: String, missing: String? = nil) {
        self.description = description
        self.missing = missing
    }
}

/// The check of a request body against its type's schema, before the body is decoded: the
/// parts of JSON Schema the contract's request bodies use, recursively (nested objects, arrays
/// of objects such as stage directives, `$ref` to other models): closed objects (an unknown key
/// is named, with what the object takes), required keys, JSON types (null only where the
/// schema allows it), integer minimum and maximum, string enum, minLength, maxLength and
/// pattern, array minItems and maxItems, `oneOf` of objects (a transfer's `source` or
/// `sources`).
///
/// Keys: a property is read as the contract spells it (`depends_on`) or in the camelCase of the
/// API's first form (`dependsOn`), for one release, as `APIJSON.decoder()` has always read them
/// (its snake_case conversion leaves a camelCase key as it is); the two spellings of one key in
/// one body are refused rather than one of them silently winning.
///
/// The body is walked with `JSONDecoder` itself (containers, `superDecoder`), so the check and
/// the decode that follows read the same JSON the same way (what is an integer, what fits).
///
/// `@unchecked Sendable`: the schemas are Foundation dictionaries, built once for a check and
/// only read; a check is used by one decode on one thread.
final class RequestCheck: @unchecked Sendable {
    let root: [String: Any]
    let noun: String
    /// The models the body reaches by `$ref`, by component name: their schemas and nouns.
    let components: [String: (schema: [String: Any], noun: String)]

    init(_ model: any APIRequest.Type) {
        root = model.schema.json
        noun = model.noun
        var found: [String: (schema: [String: Any], noun: String)] = [:]
        var next = model.schema.refs
        while let m = next.popLast() {
            guard found[m.schemaName] == nil else { continue }
            let s = m.schema
            found[m.schemaName] = (s.json, m.noun)
            next += s.refs
        }
        components = found
    }

    static let userInfoKey = CodingUserInfoKey(rawValue: "ferry.requestCheck")!

    /// Throws `RequestRefusal` for the first thing in `data` that `model`'s schema refuses;
    /// a body that is not JSON is the decoder's `DecodingError`, as before.
    static func check(_ data: Data, as model: any APIRequest.Type) throws {
        let decoder = JSONDecoder()
        decoder.userInfo[userInfoKey] = RequestCheck(model)
        _ = try decoder.decode(Walk.self, from: data)
    }

    /// What `JSONDecoder` starts the walk with: the check rides in `userInfo`.
    private struct Walk: Decodable {
        init(from decoder: Decoder) throws {
            guard let check = decoder.userInfo[RequestCheck.userInfoKey] as? RequestCheck else { return }
            try check.value(decoder, check.root, at: "", noun: check.noun)
        }
    }

    // MARK: values

    func value(_ d: Decoder, _ s: [String: Any], at place: String, noun: String?) throws {
        if let ref = s["$ref"] as? String {
            let name = String(ref.split(separator: "/").last ?? "")
            guard let c = components[name] else { return }
            return try value(d, c.schema, at: place, noun: c.noun)
        }
        if let branches = s["oneOf"] as? [[String: Any]] { return try oneOf(d, branches, at: place, noun: noun) }
        if let branches = s["anyOf"] as? [[String: Any]] {
            var first: Error?
            for b in branches {
                do { return try value(d, b, at: place, noun: noun) } catch { first = first ?? error }
            }
            if let first { throw first }
            return
        }
        let types = (s["type"] as? [String]) ?? (s["type"] as? String).map { [$0] } ?? []
        if types.isEmpty { return }  // any JSON value
        if isNull(d) {
            if types.contains("null") { return }
            throw RequestRefusal("\(named(place)) is \(Self.article(types[0])), not null")
        }
        switch types.first(where: { $0 != "null" }) ?? "null" {
        case "object":
            guard let c = try? d.container(keyedBy: AnyKey.self) else { throw wrongType("object", d, place) }
            try object(c, s, at: place, noun: noun)
        case "array":
            guard var u = try? d.unkeyedContainer() else { throw wrongType("array", d, place) }
            let n = u.count ?? 0
            let lo = Self.int(s["minItems"]), hi = Self.int(s["maxItems"])
            if (lo.map { n < $0 } ?? false) || (hi.map { n > $0 } ?? false) {
                let range = lo != nil && hi != nil ? "\(lo!) to \(hi!)" : lo != nil ? "at least \(lo!)" : "at most \(hi!)"
                throw RequestRefusal("\(named(place)) takes \(range) item\(hi == 1 ? "" : "s"), not \(n)")
            }
            guard let items = s["items"] as? [String: Any] else { return }
            var i = 0
            while !u.isAtEnd {
                try value(try u.superDecoder(), items, at: "\(place)[\(i)]", noun: nil)
                i += 1
            }
        case "string":
            guard let v = try? d.singleValueContainer().decode(String.self) else { throw wrongType("string", d, place) }
            // Enum, lengths and pattern as a query's value is checked, in the same words.
            var plain = s
            plain["type"] = "string"
            if let why = APIOperation.refusal(of: v, plain, name: named(place)) { throw RequestRefusal(why) }
        case "integer":
            try integer(d, s, at: place)
        case "number":
            guard (try? d.singleValueContainer().decode(Double.self)) != nil else { throw wrongType("number", d, place) }
        case "boolean":
            guard (try? d.singleValueContainer().decode(Bool.self)) != nil else { throw wrongType("boolean", d, place) }
        default:
            break
        }
    }

    /// "streams is 1 to 64, not 0": refused, never clamped to the nearest edge.
    func integer(_ d: Decoder, _ s: [String: Any], at place: String) throws {
        let lo = Self.int64(s["minimum"]), hi = Self.int64(s["maximum"])
        let range = lo != nil && hi != nil ? "\(lo!) to \(hi!)" : lo != nil ? "\(lo!) or more" : hi != nil ? "at most \(hi!)" : "a 64-bit integer"
        guard let c = try? d.singleValueContainer() else { throw wrongType("integer", d, place) }
        if let v = try? c.decode(Int64.self) {
            if let lo, v < lo { throw RequestRefusal("\(named(place)) is \(range), not \(v)") }
            if let hi, v > hi { throw RequestRefusal("\(named(place)) is \(range), not \(v)") }
            return
        }
        // Not an Int64: a fraction, or a whole number beyond 64 bits.
        if let x = try? c.decode(Double.self) {
            let shown = x == x.rounded(.towardZero) && abs(x) < 1e21 ? String(format: "%.0f", x) : "\(x)"
            throw RequestRefusal(x == x.rounded(.towardZero) ? "\(named(place)) is \(range), not \(shown)" : "\(named(place)) is an integer, not \(shown)")
        }
        throw wrongType("integer", d, place)
    }

    // MARK: objects

    /// The contract's snake_case key in the first form's camelCase: `depends_on` → `dependsOn`.
    static func camelCase(_ key: String) -> String {
        let words = key.split(separator: "_")
        guard let first = words.first else { return key }
        return String(first) + words.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
    }

    /// Each accepted spelling of a key → the property it names.
    static func spellings(_ properties: [String: Any]) -> [String: String] {
        var out: [String: String] = [:]
        for p in properties.keys {
            out[p] = p
            let camel = camelCase(p)
            if out[camel] == nil { out[camel] = p }
        }
        return out
    }

    func object(_ c: KeyedDecodingContainer<AnyKey>, _ s: [String: Any], at place: String, noun: String?) throws {
        let properties = s["properties"] as? [String: Any] ?? [:]
        let spelled = Self.spellings(properties)
        let extra = s["additionalProperties"]
        let keys = c.allKeys.map(\.stringValue).sorted()
        // Unknown keys first: a misspelt key also explains a "missing" one.
        var given: [String: String] = [:]
        for k in keys {
            if let p = spelled[k] {
                if let other = given[p] { throw RequestRefusal("\(named(join(place, other))) and \(named(join(place, k))) are the same key: give one") }
                given[p] = k
            } else if (extra as? Bool) == false {
                throw unknownKey(k, properties.keys, at: place, noun: noun)
            }
        }
        for r in (s["required"] as? [String] ?? []) where given[r] == nil {
            throw RequestRefusal("'\(r)' is missing" + (place.isEmpty ? "" : " in \(place)"), missing: r)
        }
        for k in keys {
            let at = join(place, k)
            if let p = spelled[k], let ps = properties[p] as? [String: Any] {
                try value(try c.superDecoder(forKey: AnyKey(stringValue: k)), ps, at: at, noun: nil)
            } else if let es = extra as? [String: Any] {
                try value(try c.superDecoder(forKey: AnyKey(stringValue: k)), es, at: at, noun: nil)
            }
        }
    }

    /// A body of several shapes (objects): its keys are checked against all of them (an
    /// unknown key is named with every key the body may hold), keys of two shapes together are
    /// refused by name ("give source or sources, not both"), and the body must fit one shape
    /// whose keys it uses.
    func oneOf(_ d: Decoder, _ branches: [[String: Any]], at place: String, noun: String?) throws {
        guard branches.allSatisfy({ $0["type"] as? String == "object" }), let c = try? d.container(keyedBy: AnyKey.self) else {
            // Not the objects-only form: the first shape that fits will do.
            var first: Error?
            for b in branches {
                do { return try value(d, b, at: place, noun: noun) } catch { first = first ?? error }
            }
            if let first { throw first }
            return
        }
        let each = branches.map { Self.spellings($0["properties"] as? [String: Any] ?? [:]) }
        let all = branches.reduce(into: Set<String>()) { $0.formUnion(($1["properties"] as? [String: Any] ?? [:]).keys) }
        let keys = c.allKeys.map(\.stringValue).sorted()
        if branches.allSatisfy({ ($0["additionalProperties"] as? Bool) == false }) {
            for k in keys where !each.contains(where: { $0[k] != nil }) { throw unknownKey(k, all, at: place, noun: noun) }
        }
        let fitting = branches.indices.filter { i in keys.allSatisfy { each[i][$0] != nil } }
        if fitting.isEmpty {
            for (i, a) in keys.enumerated() {
                for b in keys[(i + 1)...] where !each.contains(where: { $0[a] != nil && $0[b] != nil }) {
                    throw RequestRefusal("give \(named(join(place, a))) or \(named(join(place, b))), not both")
                }
            }
        }
        var refusals: [RequestRefusal] = []
        for i in fitting {
            do { return try value(d, branches[i], at: place, noun: noun) } catch let r as RequestRefusal { refusals.append(r) }
        }
        if Set(refusals.compactMap(\.missing)).count > 1, refusals.allSatisfy({ $0.missing != nil }) {
            throw RequestRefusal("give " + refusals.compactMap(\.missing).map { "'\($0)'" }.joined(separator: " or ") + (place.isEmpty ? "" : " in \(place)"))
        }
        if let r = refusals.first(where: { $0.missing == nil }) ?? refusals.first { throw r }
        throw RequestRefusal("\(named(place)) fits none of its \(branches.count) forms")
    }

    func unknownKey(_ key: String, _ properties: some Collection<String>, at place: String, noun: String?) -> RequestRefusal {
        RequestRefusal("unknown key '\(key)'" + (place.isEmpty ? "" : " in \(place)") + " (\(noun ?? "it") takes \(properties.sorted().joined(separator: ", ")))")
    }

    // MARK: words

    func join(_ place: String, _ key: String) -> String { place.isEmpty ? key : place + "." + key }
    func named(_ place: String) -> String { place.isEmpty ? "the body" : place }

    static func article(_ type: String) -> String {
        switch type {
        case "integer": "an integer"
        case "array": "an array"
        case "object": "an object"
        case "boolean": "true or false"
        default: "a " + type
        }
    }

    func wrongType(_ expected: String, _ d: Decoder, _ place: String) -> RequestRefusal {
        RequestRefusal("\(named(place)) is \(Self.article(expected)), not \(kind(d))")
    }

    /// What the value is, in words, for a refusal (only on that path: the check itself tries
    /// the one type the schema names).
    func kind(_ d: Decoder) -> String {
        if let c = try? d.singleValueContainer() {
            if c.decodeNil() { return "null" }
            if let b = try? c.decode(Bool.self) { return "\(b)" }
            if let x = try? c.decode(Double.self) { return x == x.rounded(.towardZero) && abs(x) < 1e21 ? String(format: "%.0f", x) : "\(x)" }
            if let s = try? c.decode(String.self) { return "a string ('\(s.prefix(40))')" }
        }
        if (try? d.unkeyedContainer()) != nil { return "an array" }
        if (try? d.container(keyedBy: AnyKey.self)) != nil { return "an object" }
        return "that"
    }

    func isNull(_ d: Decoder) -> Bool { (try? d.singleValueContainer())?.decodeNil() ?? false }

    static func int(_ v: Any?) -> Int? { int64(v).map { Int(clamping: $0) } }

    /// The schema's numbers are Swift integers (`Schema.integer`), of whichever width.
    static func int64(_ v: Any?) -> Int64? {
        switch v {
        case let x as Int64: x
        case let x as Int: Int64(x)
        case let x as NSNumber: x.int64Value
        default: nil
        }
    }
}
