// What the daemon's API refuses, asked over HTTP as a script would (Python's urllib, not the
// `ferry` CLI, which checks some of these itself): request bodies are closed (an unknown key
// is a 400 that names it), `streams` outside 1 to 64 is a 400 (not a job quietly run with 64),
// a query value its schema refuses is a 400 with the reason, and every refusal is RFC 9457
// problem details.

import Foundation
import Testing
import TestSupport

@Suite("API requests refused by the contract")
struct APIRequestTests {
    static func post(_ c: DaemonE2ETests.Centers, _ path: String, _ body: String) -> (status: Int, body: String) {
        TrustTests.http("POST", c.api + path, token: c.sb.tokenFile, body: body)
    }

    static func detail(_ text: String) -> String { TrustTests.object(text)["detail"] as? String ?? "" }

    @Test("out-of-range streams, unknown body keys and bad query values are 400s with the reason; nothing is queued; camelCase keys still work")
    func refusals() throws {
        let c = try DaemonE2ETests.start("api-requests")
        defer { c.a.stop(); c.b.stop() }
        try writeFile(c.scratch + "/a.txt", Array("a\n".utf8))
        let job = #"{"source":"/scratch/a.txt","destination":"ferry://wuxi/incoming/a.txt""#
        for n in [0, 65, 1000] {
            let r = Self.post(c, "/api/v1/transfers", job + #","streams":\#(n)}"#)
            #expect(r.status == 400 && Self.detail(r.body).contains("streams is 1 to 64, not \(n)"), "streams \(n): \(r)")
        }
        // Several sources: one bad request refuses all of them.
        let batch = Self.post(c, "/api/v1/transfers", #"{"sources":["/scratch/a.txt"],"destination":"ferry://wuxi/incoming/","streams":99}"#)
        #expect(batch.status == 400 && Self.detail(batch.body).contains("streams is 1 to 64"), "\(batch)")
        // Problem details (RFC 9457) with the code for programs, keys sorted: the same refusal
        // reads the same every time.
        #expect(batch.body.hasPrefix(#"{"code":"invalid_request","detail":"streams is 1 to 64"#) && batch.body.hasSuffix(#""status":400,"title":"Bad Request","type":"about:blank"}"#), "\(batch.body)")
        #expect(TrustTests.object(batch.body)["code"] as? String == "invalid_request" && TrustTests.object(batch.body)["error"] as? String == Self.detail(batch.body))

        // Unknown keys, named, for each body the daemon takes here (the staging routes are
        // checked in ContractSchemaTests: this center does no prestaging).
        let typos: [(String, String, String)] = [
            ("/api/v1/transfers", job + #","max_atempts":2}"#, "max_atempts"),
            ("/api/v1/catalog/register", #"{"path":"/scratch","dataset":"d","hashh":true}"#, "hashh"),
            ("/api/v1/catalog/replicate", #"{"path":"gfs://hlrs/d","bw_limit":5}"#, "bw_limit"),
        ]
        for (path, body, key) in typos {
            let r = Self.post(c, path, body)
            #expect(r.status == 400 && Self.detail(r.body).contains("unknown key '\(key)'"), "\(path): \(r)")
        }
        // Values the schema refuses are 400s that name the key, checked before anything is
        // looked up: a negative bwlimit on a replication was read as no limit (this center
        // takes no replicas: without the check the answer is its 409).
        let values: [(String, String, String)] = [
            ("/api/v1/catalog/replicate", #"{"path":"gfs://hlrs/d","bwlimit":-1}"#, "bwlimit is 0 or more, not -1"),
            ("/api/v1/catalog/replicate", #"{"path":"gfs://hlrs/d","bwlimit":"8M"}"#, "bwlimit is an integer, not a string"),
            ("/api/v1/transfers", job + #","bwlimit":-1}"#, "bwlimit is 0 or more, not -1"),
            ("/api/v1/transfers", job + #","protection":"secret"}"#, "unknown protection 'secret': one of clear, safe, private"),
            ("/api/v1/transfers", job + #","dependsOn":[0]}"#, "dependsOn[0] is 1 or more, not 0"),
            ("/api/v1/catalog/register", #"{"path":"/scratch","dataset":"d","readers":"*"}"#, "readers is an array, not a string"),
        ]
        for (path, body, says) in values {
            let r = Self.post(c, path, body)
            #expect(r.status == 400 && Self.detail(r.body).hasPrefix(says), "\(path) \(body): \(r)")
        }
        let audit = (try? String(contentsOfFile: c.sb.file("hlrs-audit.jsonl"), encoding: .utf8)) ?? ""
        #expect(!audit.contains(#""action":"replicate""#) && !audit.contains(#""action":"register""#), "a refused request made a change: \(audit)")
        let list = TrustTests.object(TrustTests.http("GET", c.api + "/api/v1/transfers", token: c.sb.tokenFile).body)
        #expect((list["transfers"] as? [[String: Any]])?.isEmpty == true, "a refused request queued a job: \(list)")

        // The edges of the range and the first form's camelCase keys are accepted.
        let ok = Self.post(c, "/api/v1/transfers", job + #","streams":64,"maxAttempts":2}"#)
        #expect(ok.status == 201 && TrustTests.object(ok.body)["max_attempts"] as? Int == 2, "\(ok)")
        let one = Self.post(c, "/api/v1/transfers", #"{"source":"/scratch/a.txt","destination":"ferry://wuxi/incoming/b.txt","streams":1}"#)
        #expect(one.status == 201, "\(one)")

        // A state filter that is no state: 400 with the states it could be.
        let bad = TrustTests.http("GET", c.api + "/api/v1/transfers?state=queued,done", token: c.sb.tokenFile)
        #expect(bad.status == 400 && Self.detail(bad.body).contains("unknown state 'done'") && Self.detail(bad.body).contains("up_for_retry"), "\(bad)")
        let good = TrustTests.http("GET", c.api + "/api/v1/transfers?state=queued,running,success,up_for_retry", token: c.sb.tokenFile)
        #expect(good.status == 200, "\(good)")
        let empty = TrustTests.http("GET", c.api + "/api/v1/catalog/stat?path=", token: c.sb.tokenFile)
        #expect(empty.status == 400 && Self.detail(empty.body).contains("path is at least 1 character"), "\(empty)")
    }
}
