import Foundation
import Testing
@testable import Transfer

@Suite("JSON text written by hand")
struct JSONTextTests {
    /// What a JSON parser reads back from `JSONText.appendString`.
    func parsed(_ s: String) throws -> String {
        var out: [UInt8] = []
        JSONText.appendString(s, to: &out)
        let v = try JSONSerialization.jsonObject(with: Data(out), options: [.fragmentsAllowed])
        return try #require(v as? String)
    }

    @Test("hostile names come back from a JSON parser exactly: quotes, backslashes, every control character, non-ASCII")
    func strings() throws {
        let controls = String((0..<0x20).map { Character(Unicode.Scalar(UInt8($0))) })
        let cases = ["", "plain", "a\"b", "\\", "\\\"", "\"},{\"name\":\"evil\"", controls, "é/日本/🙂", "tab\there\nline\r", "\u{7F}\u{2028}\u{2029}",
                     String(repeating: "x\"", count: 5000)]
        for c in cases {
            #expect(try parsed(c) == c)
        }
        // The same as the audit log's jsonString, which now writes through it.
        #expect(jsonString("a\"\n\u{01}") == "\"a\\\"\\n\\u0001\"")
    }

    @Test("integers at their limits are written as JSON numbers")
    func integers() throws {
        for v: Int64 in [0, 1, -1, 9, 10, 1234567890, -987654321, Int64.max, Int64.min, 1 << 53] {
            var out: [UInt8] = []
            JSONText.appendInt(v, to: &out)
            #expect(String(decoding: out, as: UTF8.self) == String(v))
        }
    }
}
