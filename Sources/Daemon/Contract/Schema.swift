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
    /// How a refusal of a request body names one of these ("unknown key 'hury' (a teardown
    /// takes hurry, job)").
    static var noun: String { get }
}

extension APIModel {
    public static var schemaName: String { String(describing: Self.self) }
    public static var noun: String { "a " + schemaName }
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
    /// A request body of the contract (`APIRequest`) is checked against its schema first
    /// (`RequestCheck`: `RequestRefusal`, a 400 with the reason); any other type is decoded as
    /// it comes (answers: a newer server may add a field).
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        if let request = T.self as? any APIRequest.Type { try RequestCheck.check(data, as: request) }
        return try decoder().decode(type, from: data)
    }
}

// MARK: - keys

/// A JSON object's key, whatever its name (to see every key a body holds).
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}
