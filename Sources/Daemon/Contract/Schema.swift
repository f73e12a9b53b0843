import Foundation

/// A JSON Schema (the dialect of OpenAPI 3.1), built in Swift next to the Codable type it
/// describes. The API's document (`APIContract.document`) is generated from these and from the
/// operation table; nothing of it is written by hand twice.
///
/// Object schemas are closed (`additionalProperties: false`) unless `open` is set: an answer
/// that carries a field its schema does not name fails the contract test, so a field added to
/// a type without its schema is caught (`ContractTests`, `ContractSchemaTests`).
public struct Schema: @unchecked Sendable {
    /// The schema as a JSON object (Foundation types, ready for `JSONSerialization`).
    public let json: [String: Any]
    /// The models this schema names by `$ref`: the document's components are gathered from them.
    public let refs: [any APIModel.Type]

    init(_ json: [String: Any], refs: [any APIModel.Type] = []) {
        self.json = json
        self.refs = refs
    }

    public static func string(_ description: String? = nil, enum values: [String]? = nil, pattern: String? = nil,
                              minLength: Int? = nil, maxLength: Int? = nil) -> Schema {
        var o: [String: Any] = ["type": "string"]
        if let values { o["enum"] = values }
        if let pattern { o["pattern"] = pattern }
        if let minLength { o["minLength"] = minLength }
        if let maxLength { o["maxLength"] = maxLength }
        return Schema(o).described(description)
    }

    public static func integer(_ description: String? = nil, minimum: Int64? = nil, maximum: Int64? = nil) -> Schema {
        var o: [String: Any] = ["type": "integer"]
        if let minimum { o["minimum"] = minimum }
        if let maximum { o["maximum"] = maximum }
        return Schema(o).described(description)
    }

    public static func number(_ description: String? = nil) -> Schema { Schema(["type": "number"]).described(description) }
    public static func boolean(_ description: String? = nil) -> Schema { Schema(["type": "boolean"]).described(description) }

    public static func array(_ items: Schema, _ description: String? = nil, minItems: Int? = nil, maxItems: Int? = nil) -> Schema {
        var o: [String: Any] = ["type": "array", "items": items.json]
        if let minItems { o["minItems"] = minItems }
        if let maxItems { o["maxItems"] = maxItems }
        return Schema(o, refs: items.refs).described(description)
    }

    /// An object with these properties (in this order in the document), `required` of them
    /// always present.
    public static func object(_ properties: KeyValuePairs<String, Schema>, required: [String] = [], _ description: String? = nil,
                              open: Bool = false) -> Schema {
        var props: [String: Any] = [:]
        var refs: [any APIModel.Type] = []
        for (k, v) in properties {
            props[k] = v.json
            refs += v.refs
        }
        var o: [String: Any] = ["type": "object", "properties": props, "additionalProperties": open]
        if !required.isEmpty { o["required"] = required }
        return Schema(o, refs: refs).described(description)
    }

    /// An object whose keys are free (names) and whose values all follow `values`.
    public static func map(_ values: Schema, _ description: String? = nil) -> Schema {
        Schema(["type": "object", "additionalProperties": values.json], refs: values.refs).described(description)
    }

    /// One of several shapes (a submission of one source or of several).
    public static func oneOf(_ options: [Schema], _ description: String? = nil) -> Schema {
        Schema(["oneOf": options.map(\.json)], refs: options.flatMap(\.refs)).described(description)
    }

    /// The named model, by reference to the document's components.
    public static func ref(_ model: any APIModel.Type) -> Schema {
        Schema(["$ref": "#/components/schemas/" + model.schemaName], refs: [model])
    }

    /// Any JSON value (the OpenAPI document itself).
    public static let any = Schema([:])

    /// The same, or null (OpenAPI 3.1: a type list, or anyOf for a reference).
    public var nullable: Schema {
        if let t = json["type"] as? String {
            var o = json
            o["type"] = [t, "null"]
            if var values = o["enum"] as? [String] {
                values.append("null")
                o["enum"] = values.map { $0 == "null" ? NSNull() as Any : $0 as Any }
            }
            return Schema(o, refs: refs)
        }
        return Schema(["anyOf": [json, ["type": "null"]]], refs: refs)
    }

    public func described(_ description: String?) -> Schema {
        guard let description else { return self }
        var o = json
        o["description"] = description
        return Schema(o, refs: refs)
    }
}

/// A type of the API's contract: Codable (snake_case keys on the wire, `APIJSON`), with its
/// schema beside it.
public protocol APIModel: Codable, Sendable {
    static var schema: Schema { get }
    /// Its name among the document's components.
    static var schemaName: String { get }
}

extension APIModel {
    public static var schemaName: String { String(describing: Self.self) }
}

/// The one JSON convention of the API: keys in snake_case both ways (`depends_on`,
/// `next_after`), dates as Unix seconds (integers), no key sorting on the hot path.
public enum APIJSON {
    public static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        return e
    }

    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }

    public static func encode<T: Encodable>(_ value: T) throws -> Data { try encoder().encode(value) }
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T { try decoder().decode(type, from: data) }
}

// MARK: - request keys

/// A JSON object's key, whatever its name (to see every key a body holds).
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension Schema {
    /// The property names of this object schema (of every branch of a `oneOf`) as the API's
    /// decoder hands keys to a type: snake_case becomes camelCase (`depends_on` → `dependsOn`),
    /// as `APIJSON.decoder()` converts them. A camelCase key of the first form (`dependsOn`)
    /// passes the decoder unchanged, so it matches too.
    var decodedKeys: Set<String> {
        let branches = (json["oneOf"] as? [[String: Any]]) ?? [json]
        var out: Set<String> = []
        for b in branches {
            for name in (b["properties"] as? [String: Any])?.keys ?? [String: Any]().keys {
                let words = name.split(separator: "_")
                out.insert(words.isEmpty ? name : String(words[0]) + words.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined())
            }
        }
        return out
    }
}

/// Request bodies are closed, as their schemas say (`additionalProperties: false`): a key the
/// contract does not name is refused (400 with its name), not ignored, so a typo such as
/// `max_atempts` or `hury` is not a request that silently takes the default.
enum RequestKeys {
    /// Throws for the first key of the object being decoded that is not in `known` (keys as the
    /// decoder presents them: `Schema.decodedKeys`). The key is named as the contract spells
    /// keys, snake_case; `takes` lists what the body may hold.
    static func refuseUnknown(_ decoder: Decoder, known: Set<String>, takes: String) throws {
        let keys = try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue)
        guard let unknown = keys.first(where: { !known.contains($0) }) else { return }
        throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown key '\(snakeCase(unknown))' (\(takes))"))
    }

    /// `protectonLevel` → `protecton_level`: how the API spells keys (the decoder turned the
    /// body's snake_case into camelCase before the check saw it).
    static func snakeCase(_ key: String) -> String {
        var out = ""
        for (i, ch) in key.enumerated() {
            if ch.isUppercase && i > 0 { out += "_" + ch.lowercased() } else { out.append(ch) }
        }
        return out
    }

    /// "a NAME takes a, b, c": the schema's properties, sorted.
    static func takes(_ what: String, _ schema: Schema) -> String {
        let names = ((schema.json["properties"] as? [String: Any])?.keys).map { Array($0).sorted() } ?? []
        return "\(what) takes " + names.joined(separator: ", ")
    }
}
