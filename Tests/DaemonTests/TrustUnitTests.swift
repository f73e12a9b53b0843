import Foundation
import Testing
@testable import Daemon

/// Issue 13: what the daemon's unauthenticated answers may carry.
@Suite("Daemon trust (unit)")
struct TrustUnitTests {
    @Test("Prometheus label values are escaped as the exposition format says: backslash, double quote, line feed")
    func promLabels() {
        #expect(promLabel("wuxi") == "\"wuxi\"")
        #expect(promLabel("a\"b") == "\"a\\\"b\"")
        #expect(promLabel("a\\b") == "\"a\\\\b\"")
        #expect(promLabel("x\"} 1\nferry_injected{a=\"b") == "\"x\\\"} 1\\nferry_injected{a=\\\"b\"")
        // No raw line feed or unescaped quote can survive.
        let hostile = "\"\n\\\"\n"
        let out = promLabel(hostile)
        #expect(!out.contains("\n"))
        #expect(out.dropFirst().dropLast().replacingOccurrences(of: "\\\\", with: "").replacingOccurrences(of: "\\\"", with: "").contains("\"") == false)
    }
}
