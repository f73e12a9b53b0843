import Foundation
import Testing
import TestSupport

/// The API against its own OpenAPI document, fuzzed by schemathesis (issue 14, "Tests"): every
/// operation called with generated valid and invalid input, as the operator's token, against a
/// real daemon with a real peer. The check: no answer is a server error (5xx), the daemon
/// stays up. The event stream is left out (it lasts until its job ends).
@Suite("The API contract, fuzzed", .serialized)
struct ContractTests {
    static let st = "/opt/ferry-test-venv/bin/st"
    /// No answer is a server error; every answer's status is one the document lists, with the
    /// content type it says and a body that matches its schema (the generated document,
    /// `APIContract`); a request the document calls invalid is refused, not accepted.
    static let checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection"

    @Test("schemathesis over every operation of /api/v1/openapi.json: no 5xx, the daemon stays up")
    func noServerErrors() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.st) else {
            Issue.record("schemathesis is missing at \(Self.st): scripts/install-deps.sh installs it")
            return
        }
        let c = try DaemonE2ETests.start("contract")
        defer { c.a.stop(); c.b.stop() }
        try writeRandomFile(c.scratch + "/in.bin", size: 1000)
        let token = try String(contentsOfFile: c.sb.tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let r = runTool(Self.st, ["run", c.api + "/api/v1/openapi.json", "--url", c.api, "-H", "Authorization: Bearer \(token)",
                                  "--checks", Self.checks, "--max-examples", "25", "--seed", "14", "--workers", "2",
                                  "--request-timeout", "20", "--max-time", "150", "--exclude-path-regex", ".*/events$",
                                  "--report", "junit", "--report-dir", c.sb.file("schemathesis")], timeout: 240)
        #expect(r.status == 0, "schemathesis: \(r.output.suffix(4000))")
        #expect(r.output.contains("passed"), "\(r.output.suffix(1000))")
        #expect(c.a.isRunning)
    }
}
