import Foundation
import Testing
@testable import Daemon

/// Issue 13: what the daemon's unauthenticated answers may carry.
@Suite("Daemon trust (unit)")
struct TrustUnitTests {
    @Test("torn-down jobs: remembered until a new run clears them, and never more than 10,000 (the oldest half goes, the newest stays)")
    func tornDownJobsBounded() {
        let t = TornDownJobs()
        #expect(!t.contains("7"))
        t.mark("7")
        #expect(t.contains("7") && !t.contains("70"))
        t.clear("7")
        #expect(!t.contains("7"))
        for i in 0..<TornDownJobs.limit { t.mark("job-\(i)") }
        #expect(t.count == TornDownJobs.limit && t.contains("job-0") && t.contains("job-9999"))
        // One more within the hour: no entry has expired, so the oldest half is dropped.
        t.mark("newest")
        #expect(t.count <= TornDownJobs.limit / 2 + 1, "\(t.count)")
        #expect(t.contains("newest") && t.contains("job-9999") && !t.contains("job-0"))
        // Marking the same job again does not grow it.
        let n = t.count
        t.mark("newest")
        #expect(t.count == n)
    }

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
