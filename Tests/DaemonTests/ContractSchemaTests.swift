import Foundation
import GlobalFS
import Testing
import Transfer
@testable import Daemon

/// The API's contract on its own (no daemon): the generated OpenAPI document is whole (every
/// reference resolves, every JSON answer has a schema), each contract type encodes to what its
/// schema says (a field added to a type without its schema fails here), and requests decode as
/// documented: snake_case, the first form's camelCase for one release, unknown keys refused.
/// The live daemon's answers are checked against the same document by `ContractTests`
/// (schemathesis, response_schema_conformance).
@Suite("API contract: the generated document and the types")
struct ContractSchemaTests {
    static func document() throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(APIContract.document.utf8)) as? [String: Any])
    }

    @Test("the document is OpenAPI 3.1 and every $ref resolves to a component")
    func referencesResolve() throws {
        let doc = try Self.document()
        #expect(doc["openapi"] as? String == "3.1.0")
        let components = try #require((doc["components"] as? [String: Any])?["schemas"] as? [String: Any])
        var refs: [String] = []
        func walk(_ v: Any) {
            if let o = v as? [String: Any] {
                if let r = o["$ref"] as? String { refs.append(r) }
                o.values.forEach(walk)
            } else if let a = v as? [Any] {
                a.forEach(walk)
            }
        }
        walk(doc)
        #expect(refs.count > 40)
        for r in Set(refs) {
            #expect(r.hasPrefix("#/components/schemas/"), "\(r)")
            #expect(components[String(r.dropFirst("#/components/schemas/".count))] != nil, "\(r) does not resolve")
        }
    }

    @Test("every operation is in the document, every JSON answer with a schema and a problem for errors")
    func operationsDocumented() throws {
        let doc = try Self.document()
        let paths = try #require(doc["paths"] as? [String: [String: Any]])
        #expect(Set(APIContract.operations.map(\.id)).count == APIContract.operations.count, "operation ids are unique")
        for op in APIContract.operations {
            let o = try #require(paths[op.path]?[op.method.lowercased()] as? [String: Any], "\(op.method) \(op.path) is missing")
            let responses = try #require(o["responses"] as? [String: Any])
            let ok = try #require(responses[String(op.status)] as? [String: Any])
            let content = try #require(ok["content"] as? [String: Any])
            if op.contentType == "application/json" {
                let schema = try #require((content["application/json"] as? [String: Any])?["schema"] as? [String: Any])
                #expect(!schema.isEmpty || op.id == "openapi", "\(op.id) answers JSON without a schema")
            }
            let problem = try #require(responses["default"] as? [String: Any])
            #expect((problem["content"] as? [String: Any])?["application/problem+json"] != nil)
            if op.auth == .token { #expect(responses["401"] != nil, "\(op.id)") }
        }
        // The router registers from this table (`DaemonAPI.route`): the paths the document
        // names are all there is (no route of the daemon is left out of it).
        let daemon = #filePath.replacingOccurrences(of: "Tests/DaemonTests/ContractSchemaTests.swift", with: "Sources/Daemon")
        // `metrics_listen` is a listener of its own, not the API: its two fixed routes
        // (/metrics, /health) are tested by MetricsTests.serverWithoutDaemon.
        let files = try FileManager.default.subpathsOfDirectory(atPath: daemon).filter { $0.hasSuffix(".swift") && $0 != "HTTP/MetricsEndpoint.swift" }
        #expect(files.contains("HTTP/API.swift"), "\(files)")
        var on = 0
        for f in files {
            let text = try String(contentsOfFile: daemon + "/" + f, encoding: .utf8)
            for verb in ["get", "post", "put", "delete", "patch", "head"] {
                #expect(!text.contains("router.\(verb)("), "\(f): a route registered outside the contract (router.\(verb))")
            }
            on += text.components(separatedBy: "router.on(").count - 1
        }
        #expect(on == 1, "router.on( appears \(on) times; only DaemonAPI.route registers routes")
    }

    // MARK: types against their schemas

    static func schema(of model: any APIModel.Type) throws -> [String: Any] {
        let doc = try document()
        let components = try #require((doc["components"] as? [String: Any])?["schemas"] as? [String: [String: Any]])
        return try #require(components[model.schemaName], "\(model.schemaName) is not among the components")
    }

    /// A small JSON Schema check (the parts the contract uses): type, enum, properties,
    /// required, additionalProperties, items, $ref, anyOf, oneOf. Returns what is wrong.
    static func violations(_ value: Any, _ schema: [String: Any], at path: String = "$") throws -> [String] {
        let components = try #require((try document()["components"] as? [String: Any])?["schemas"] as? [String: [String: Any]])
        func check(_ v: Any, _ s: [String: Any], _ p: String) -> [String] {
            if let r = s["$ref"] as? String { return check(v, components[String(r.split(separator: "/").last!)] ?? [:], p) }
            if let any = s["anyOf"] as? [[String: Any]] ?? s["oneOf"] as? [[String: Any]] {
                let fits = any.filter { check(v, $0, p).isEmpty }.count
                return (s["oneOf"] != nil ? fits == 1 : fits >= 1) ? [] : ["\(p): fits \(fits) of the alternatives"]
            }
            var out: [String] = []
            let types = (s["type"] as? [String]) ?? (s["type"] as? String).map { [$0] } ?? []
            // JSONSerialization gives booleans as NSNumber of type "c" (or Bool).
            let isBool = (v as? NSNumber).map { ["c", "B"].contains(String(cString: $0.objCType)) } ?? (v is Bool)
            func isType(_ t: String) -> Bool {
                switch t {
                case "null": return v is NSNull
                case "boolean": return isBool
                case "integer": return !isBool && ((v as? NSNumber).map { $0.doubleValue == $0.doubleValue.rounded() } ?? false)
                case "number": return !isBool && v is NSNumber
                case "string": return v is String
                case "array": return v is [Any]
                case "object": return v is [String: Any]
                default: return false
                }
            }
            if !types.isEmpty && !types.contains(where: isType) { return ["\(p): \(type(of: v)) is not \(types)"] }
            if let e = s["enum"] as? [Any], !e.contains(where: { ($0 as? String) == (v as? String) && v is String || ($0 is NSNull && v is NSNull) }) {
                out.append("\(p): '\(v)' is not one of \(e)")
            }
            if let o = v as? [String: Any] {
                let props = s["properties"] as? [String: [String: Any]] ?? [:]
                for k in s["required"] as? [String] ?? [] where o[k] == nil { out.append("\(p).\(k) is required") }
                for (k, x) in o {
                    if let ps = props[k] {
                        out += check(x, ps, p + "." + k)
                    } else if let extra = s["additionalProperties"] as? [String: Any] {
                        out += check(x, extra, p + "." + k)
                    } else if (s["additionalProperties"] as? Bool) == false {
                        out.append("\(p).\(k) is not in the schema")
                    }
                }
            }
            if let a = v as? [Any], let items = s["items"] as? [String: Any] {
                for (i, x) in a.enumerated() { out += check(x, items, "\(p)[\(i)]") }
            }
            return out
        }
        return check(value, schema, path)
    }

    static func expectConforms<T: APIModel>(_ value: T, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let json = try JSONSerialization.jsonObject(with: APIJSON.encode(value))
        let wrong = try violations(json, schema(of: T.self))
        #expect(wrong.isEmpty, "\(T.schemaName): \(wrong)", sourceLocation: sourceLocation)
        try expectSameJSON(value, sourceLocation: sourceLocation)
    }

    /// The server writes its answers with `AnswerEncoder`: the same JSON as `JSONEncoder`'s.
    static func expectSameJSON<T: Encodable>(_ value: T, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let fast = try AnswerEncoder.encode(value)
        // Compared as parsed JSON, written again with sorted keys (the escapes and key order of
        // the two may differ).
        func canonical(_ d: Data) throws -> String {
            String(decoding: try JSONSerialization.data(withJSONObject: try JSONSerialization.jsonObject(with: d, options: [.fragmentsAllowed]),
                                                        options: [.sortedKeys, .fragmentsAllowed]), as: UTF8.self)
        }
        let foundation = try APIJSON.encode(value)
        let (a, b) = (try canonical(Data(fast)), try canonical(foundation))
        #expect(a == b, "\(T.self): \(String(decoding: fast, as: UTF8.self)) against \(String(decoding: foundation, as: UTF8.self))",
                sourceLocation: sourceLocation)
    }

    static func decoded<T: Decodable>(_ json: String) throws -> T { try APIJSON.decode(T.self, from: Data(json.utf8)) }

    static func job(_ state: JobState, error: String? = nil) -> Job {
        var r = JobRequest(source: "/data/in", destination: "ferry://b:7400/x")
        r.dependsOn = [3]
        return Job(id: 7, owner: "alice", request: r, state: state, attempts: 1, maxAttempts: 5, notBefore: 0, leaseOwner: nil, leaseExpires: nil,
                   error: error, bytes: 10, files: 1, created: 1, updated: 2, peer: "b", lastWorker: "a-1/0")
    }

    @Test("every contract type, filled and sparse, encodes to what its schema says")
    func typesMatchSchemas() throws {
        var running = V1.Transfer(Self.job(.running))
        running.progress = try Self.decoded(#"{"bytes_done":5,"bytes_total":10,"files_done":0,"files_total":1,"wire_bytes":5,"seconds":0.5}"#)
        try Self.expectConforms(running)
        try Self.expectConforms(V1.Transfer(Self.job(.failed, error: JobStore.cancelledPrefix + " by alice")))
        // A striped job: its parts and a note.
        var striped = Self.job(.running)
        striped.striped = true
        striped.note = "a word"
        var pp = JobStore.PartProgress()
        pp.byState = [.queued: 2, .running: 1, .success: 4, .upForRetry: 1]
        pp.bytes = 10; pp.bytesTotal = 20; pp.files = 3; pp.filesTotal = 9
        let sv = V1.Transfer(striped, parts: pp)
        #expect(sv.parts?.queued == 3 && sv.parts?.total == 8 && sv.striped == true)
        try Self.expectConforms(sv)
        try Self.expectConforms(V1.TransferPage(transfers: [V1.Transfer(Self.job(.queued))], more: false, nextAfter: nil))
        try Self.expectConforms(V1.TransferPage(transfers: [], more: true, nextAfter: 9))
        try Self.expectConforms(V1.TransferBatch(transfers: [V1.Transfer(Self.job(.success))]))
        try Self.expectConforms(V1.Health(status: "ok", center: "a", peers: ["b": V1.PeerHealth(streams: 4, active: 1, rateBytesPerSecond: 5, errors: 0)],
                                          transfer: ["127.0.0.1:7400"], jobs: ["queued": 1]))
        try Self.expectConforms(V1.Problem(type: "about:blank", title: "Bad Request", status: 400, detail: "x", code: "invalid_request", error: "x"))
        let d: Dataset = try Self.decoded(#"{"id":1,"center":"a","name":"zinc","version":"","owner":"alice","description":"","license":"","readers":["*"],"root":"/d","file_count":2,"bytes":3,"created":1,"updated":1}"#)
        #expect(d.fileCount == 2 && d.root == "/d")
        let e = Entry(dataset: 1, dir: "", name: "f", kind: .file, size: 3, mtimeNs: 5, mode: 0o644, digest: "ab", chunkSize: 4)
        try Self.expectConforms(d)
        try Self.expectConforms(e)
        try Self.expectConforms(V1.DatasetList(datasets: [V1.DatasetView(dataset: d, stale: true)]))
        try Self.expectConforms(V1.StatAnswer(dataset: d, entry: e, replicas: [V1.RankedReplica(center: "a", state: "complete", path: "/d", files: 1, bytes: 1,
                                               verifiedAt: 3, address: "h:1", url: "ferry://h:1/d", reachable: true, lastSync: nil,
                                               rateBytesPerSecond: nil, rank: 1, reason: "at this center")], stale: false))
        try Self.expectConforms(V1.StatAnswer(dataset: d, entry: nil, replicas: [], stale: false))
        try Self.expectConforms(V1.FeedPage(changes: [try Self.decoded(#"{"seq":1,"center":"a","dataset":1,"kind":"dataset.register","at":1}"#)], lastSeq: 1))
        try Self.expectConforms(V1.EntryChanges(dataset: "lib@1", entrySeq: 9, floor: 2, resync: false, entries: [e],
                                                removed: [RemovedEntry(seq: 8, dir: "a", name: "b")], next: EntryCursor(seq: 8, dir: "a", name: "b")))
        try Self.expectConforms(V1.EntryChanges(dataset: "lib", entrySeq: 9, floor: 9, resync: true, entries: [], removed: [], next: nil))
        try Self.expectConforms(V1.HeldReplicas(replicas: [V1.HeldReplica(dataset: d, replica: Replica(dataset: 1, center: "a", state: .staging, path: "/r", job: 4))]))
        try Self.expectConforms(V1.CentersAnswer(center: "a", centers: []))
        try Self.expectConforms(V1.ConsoleSession(user: "alice", operator: false, expires: 9, csrf: "x", center: "hlrs"))
        try Self.expectConforms(V1.SignedOut(signedOut: true))
        try Self.expectConforms(V1.AttemptList(job: 7, attempts: [V1.Attempt(attempt: 1, worker: "hlrs-1/0", ended: 9, state: .upForRetry, error: "reset",
                                                                             errorCode: "io", bytes: 5),
                                                                  V1.Attempt(attempt: 2, worker: "hlrs-1/0", ended: 12, state: .success, error: nil, errorCode: nil, bytes: 10)]))
        try Self.expectConforms(V1.TransferStats(days: [V1.MovedBytes(start: 86_400, peer: "wuxi", bytes: 10, jobs: 1)], lastHour: [], spanSeconds: 300))
        try Self.expectConforms(try Self.decoded(#"{"title":"Ferry","state.running":"Running"}"#) as V1.ConsoleCatalogue)
        try Self.expectConforms(V1.ReplicateAnswer(state: "staging", center: "a", path: "/r", job: 3, from: "b", message: "m"))
        let summary: RegisterSummary = try Self.decoded(#"{"dataset":1,"added":1,"changed":0,"removed":0,"unchanged":0,"hashed":0,"files":1,"bytes":2,"skipped":0,"unreadable":1,"first_error":"one unreadable file","seconds":0.1}"#)
        #expect(summary.firstError != nil)
        try Self.expectConforms(summary)
        try Self.expectConforms(try Self.decoded(#"{"files":1,"bytes":2,"directories":3}"#) as DiskUsage)
        try Self.expectConforms(V1.TeardownAnswer(job: "1", unpinned: 0, linksRemoved: 0, transfersCancelled: 0))
        try Self.expectConforms(V1.SweepAnswer(pinsExpired: [], transfersCancelled: 0, strayDirectories: ["x"]))
        try Self.expectConforms(V1.StageItems(items: [V1.StageItem(line: 3, direction: "stage_in", source: "gfs://a/d", destination: "/s/x",
                                                                 optional: false, state: "staging", error: nil, job: 4, entry: 2)]))
    }

    @Test("answers written directly are JSONEncoder's JSON: hostile strings, limits, nulls, nested and flattened types; what it cannot write goes to JSONEncoder")
    func answerEncoder() throws {
        let hostile = "\"},{\"x\":1\\\n\t\u{0}\u{1F}é/日本🙂"
        var j = Self.job(.failed, error: hostile)
        j.request.source = "/data/" + hostile
        j.bytes = Int64.max
        j.files = Int64.min
        try Self.expectSameJSON(V1.Transfer(j))
        try Self.expectSameJSON(V1.TransferPage(transfers: [V1.Transfer(j), V1.Transfer(Self.job(.queued))], more: true, nextAfter: nil))
        try Self.expectSameJSON(V1.Health(status: "ok", center: "a", peers: ["B_Peer": V1.PeerHealth(streams: 4, active: 1, rateBytesPerSecond: 5, errors: 0),
                                                                          hostile: V1.PeerHealth(streams: 1, active: 0, rateBytesPerSecond: 0, errors: 3)],
                                          transfer: [], jobs: ["upForRetry": 1, "queued": 0]))
        try Self.expectSameJSON(["a": [1, 2], "camelKey": []] as [String: [Int]])
        try Self.expectSameJSON([Optional<Int>.none, 3])
        try Self.expectSameJSON(0.1 as Double)
        try Self.expectSameJSON(UInt64.max)
        // Flattened: a DatasetView adds `stale` to its dataset's own object.
        let d: Dataset = try Self.decoded(#"{"id":1,"center":"a","name":"zinc","version":"","owner":"alice","description":"","license":"","readers":["*"],"root":null,"remote_id":7,"file_count":2,"bytes":3,"created":1,"updated":1}"#)
        try Self.expectSameJSON(V1.DatasetList(datasets: [V1.DatasetView(dataset: d, stale: true), V1.DatasetView(dataset: d, stale: false)]))
        // What it does not write itself, JSONEncoder does (a date, nested containers).
        struct Odd: Encodable {
            enum K: String, CodingKey { case when, inner }
            func encode(to encoder: Encoder) throws {
                var c = encoder.container(keyedBy: K.self)
                try c.encode(Date(timeIntervalSince1970: 5), forKey: .when)
                var n = c.nestedContainer(keyedBy: K.self, forKey: .inner)
                try n.encode(1, forKey: .when)
            }
        }
        try Self.expectSameJSON(Odd())
        struct Nested: Encodable {
            enum K: String, CodingKey { case outerKey, innerKey }
            func encode(to encoder: Encoder) throws {
                var c = encoder.container(keyedBy: K.self)
                var n = c.nestedContainer(keyedBy: K.self, forKey: .outerKey)
                try n.encode("x", forKey: .innerKey)
                try c.encode(2, forKey: .innerKey)
            }
        }
        try Self.expectSameJSON(Nested())
        #expect(throws: (any Error).self) { try AnswerEncoder.encode(Double.nan) }
    }

    @Test("a field the schema does not name is caught")
    func driftIsCaught() throws {
        var o = try #require(JSONSerialization.jsonObject(with: APIJSON.encode(V1.Transfer(Self.job(.queued)))) as? [String: Any])
        o["surprise"] = 1
        #expect(try !Self.violations(o, Self.schema(of: V1.Transfer.self)).isEmpty)
        o["surprise"] = nil
        o["state"] = "done"
        #expect(try Self.violations(o, Self.schema(of: V1.Transfer.self)).contains { $0.contains("not one of") })
    }

    // MARK: requests

    @Test("a submission decodes snake_case and the first form's camelCase, and refuses unknown keys and both source and sources")
    func submissions() throws {
        let snake = try APIJSON.decode(V1.TransferSubmission.self, from: Data(#"{"source":"/a","destination":"/b","depends_on":[4],"max_attempts":3}"#.utf8))
        #expect(snake.request.dependsOn == [4] && snake.request.maxAttempts == 3 && snake.sources == nil)
        let camel = try APIJSON.decode(V1.TransferSubmission.self, from: Data(#"{"source":"/a","destination":"/b","dependsOn":[4],"maxAttempts":3}"#.utf8))
        #expect(camel.request == snake.request)
        let decode: (Data) throws -> Void = { _ = try APIJSON.decode(V1.TransferSubmission.self, from: $0) }
        let typo = Self.refusal(decode, #"{"source":"/a","destination":"/b","protecton":"clear"}"#) ?? "accepted"
        #expect(typo.contains("unknown key 'protecton'") && typo.contains("a transfer takes bwlimit, checksum") && typo.contains("source, sources, streams"), "\(typo)")
        let both = Self.refusal(decode, #"{"source":"/a","sources":["/c"],"destination":"/b"}"#)
        #expect(both == "give source or sources, not both", "\(both ?? "accepted")")
        let many = try APIJSON.decode(V1.TransferSubmission.self, from: Data(#"{"sources":["/x/a","/y/b"],"destination":"/d"}"#.utf8))
        #expect(try many.requests().map(\.destination) == ["/d/a", "/d/b"])
        let dots = try APIJSON.decode(V1.TransferSubmission.self, from: Data(#"{"sources":["/x/.."],"destination":"/d"}"#.utf8))
        #expect(throws: DecodingError.self) { try dots.requests() }
        // What the CLI sends (its encoding) is what the server reads back, snake_case.
        var r = JobRequest(source: "", destination: "/d")
        r.dependsOn = [1]
        let sent = try APIJSON.encode(V1.TransferSubmission(request: r, sources: ["/a", "/b"]))
        let text = String(decoding: sent, as: UTF8.self)
        #expect(text.contains("\"depends_on\"") && !text.contains("\"source\""), "\(text)")
        #expect(try APIJSON.decode(V1.TransferSubmission.self, from: sent).sources == ["/a", "/b"])
    }

    /// Each request body of the contract, as its smallest valid form.
    static let requestBodies: [(name: String, json: String, decode: @Sendable (Data) throws -> Void)] = [
        (V1.TransferSubmission.schemaName, #"{"source":"/a","destination":"/b"}"#, { _ = try APIJSON.decode(V1.TransferSubmission.self, from: $0) }),
        (V1.RegisterRequest.schemaName, #"{"path":"/d/zinc","dataset":"zinc"}"#, { _ = try APIJSON.decode(V1.RegisterRequest.self, from: $0) }),
        (V1.ReplicateRequest.schemaName, #"{"path":"gfs://a/zinc"}"#, { _ = try APIJSON.decode(V1.ReplicateRequest.self, from: $0) }),
        (V1.StageRequest.schemaName, #"{"job":"1","user":"alice","directives":[]}"#, { _ = try APIJSON.decode(V1.StageRequest.self, from: $0) }),
        (V1.TeardownRequest.schemaName, #"{"job":"1"}"#, { _ = try APIJSON.decode(V1.TeardownRequest.self, from: $0) }),
        (V1.SweepRequest.schemaName, #"{}"#, { _ = try APIJSON.decode(V1.SweepRequest.self, from: $0) }),
        (V1.ConsoleSignIn.schemaName, #"{"token":"ferry1.x"}"#, { _ = try APIJSON.decode(V1.ConsoleSignIn.self, from: $0) }),
    ]

    static func refusal(_ decode: (Data) throws -> Void, _ json: String) -> String? {
        do { try decode(Data(json.utf8)); return nil } catch let e as DecodingError { return DaemonAPI.explain(e) } catch { return "\(error)" }
    }

    static func decoder<T: APIRequest>(_ type: T.Type) -> @Sendable (Data) throws -> Void { { _ = try APIJSON.decode(T.self, from: $0) } }

    @Test("every operation's body is an APIRequest, so APIJSON.decode checks it against its schema before decoding")
    func everyBodyIsChecked() throws {
        var bodies: Set<String> = []
        for op in APIContract.operations {
            for model in op.body?.refs ?? [] {
                bodies.insert(model.schemaName)
                #expect(model is any APIRequest.Type, "\(op.id): \(model.schemaName) is not an APIRequest (its body would decode unchecked)")
            }
        }
        #expect(bodies.count == Self.requestBodies.count, "\(bodies)")
        // Answers are not checked (a newer server may add a field): only request types are.
        #expect(try APIJSON.decode(V1.CenterView.self, from: Data(#"{"name":"a","api":"x","last_seq":1,"last_sync":2,"reachable":true,"new":1}"#.utf8)).name == "a")
    }

    /// Bodies each request type's schema refuses, and what the refusal must say. Each is a
    /// `RequestRefusal` (a 400 whose detail is the message as it is), from the schema-driven
    /// check, before any decoding.
    static let refused: [(what: String, decode: @Sendable (Data) throws -> Void, json: String, says: [String])] = [
        // Transfers: types, ranges (the camelCase spelling of the first form too), enums, lengths.
        ("transfer: boolean as a string", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","recursive":"yes"}"#,
         ["recursive is true or false, not a string ('yes')"]),
        ("transfer: streams 65", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","streams":65}"#, ["streams is 1 to 64, not 65"]),
        ("transfer: streams 1.5", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","streams":1.5}"#, ["streams is an integer, not 1.5"]),
        ("transfer: negative bwlimit", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","bwlimit":-1}"#, ["bwlimit is 0 or more, not -1"]),
        ("transfer: bwlimit null", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","bwlimit":null}"#, ["bwlimit is an integer, not null"]),
        ("transfer: maxAttempts 101", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","maxAttempts":101}"#, ["maxAttempts is 1 to 100, not 101"]),
        ("transfer: max_attempts 0", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","max_attempts":0}"#, ["max_attempts is 1 to 100, not 0"]),
        ("transfer: a dependency 0", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","depends_on":[4,0]}"#, ["depends_on[1] is 1 or more, not 0"]),
        ("transfer: negative deadline", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","deadline":-5}"#, ["deadline is 0 or more, not -5"]),
        ("transfer: unknown protection", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","protection":"secret"}"#,
         ["unknown protection 'secret': one of clear, safe, private"]),
        ("transfer: compress level 20", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","compress":"20"}"#, ["unknown compress '20': one of auto, off"]),
        ("transfer: empty destination", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":""}"#, ["destination is at least 1 character long"]),
        ("transfer: both spellings", decoder(V1.TransferSubmission.self), #"{"source":"/a","destination":"/b","depends_on":[1],"dependsOn":[2]}"#,
         ["dependsOn and depends_on are the same key: give one"]),
        ("transfer: no source", decoder(V1.TransferSubmission.self), #"{"destination":"/b"}"#, ["give 'source' or 'sources'"]),
        ("transfer: no destination", decoder(V1.TransferSubmission.self), #"{"source":"/a"}"#, ["'destination' is missing"]),
        ("transfer: no sources", decoder(V1.TransferSubmission.self), #"{"sources":[],"destination":"/b"}"#, ["sources takes 1 to 10000 items, not 0"]),
        ("transfer: an empty source", decoder(V1.TransferSubmission.self), #"{"sources":["/a",""],"destination":"/b"}"#, ["sources[1] is at least 1 character long"]),
        ("transfer: an array body", decoder(V1.TransferSubmission.self), #"[{"source":"/a","destination":"/b"}]"#, ["the body is an object, not an array"]),
        // Register.
        ("register: hash as 1", decoder(V1.RegisterRequest.self), #"{"path":"/d","dataset":"z","hash":1}"#, ["hash is true or false, not 1"]),
        ("register: a reader that is a number", decoder(V1.RegisterRequest.self), #"{"path":"/d","dataset":"z","readers":["bob",7]}"#, ["readers[1] is a string, not 7"]),
        ("register: empty dataset", decoder(V1.RegisterRequest.self), #"{"path":"/d","dataset":""}"#, ["dataset is at least 1 character long"]),
        ("register: no dataset", decoder(V1.RegisterRequest.self), #"{"path":"/d"}"#, ["'dataset' is missing"]),
        // Replicate: a negative limit was read as none.
        ("replicate: negative bwlimit", decoder(V1.ReplicateRequest.self), #"{"path":"gfs://a/z","bwlimit":-5}"#, ["bwlimit is 0 or more, not -5"]),
        ("replicate: bwlimit as a string", decoder(V1.ReplicateRequest.self), #"{"path":"gfs://a/z","bwlimit":"8M"}"#, ["bwlimit is an integer, not a string ('8M')"]),
        ("replicate: path as a number", decoder(V1.ReplicateRequest.self), #"{"path":5}"#, ["path is a string, not 5"]),
        // Stage requests and their directives, named by place.
        ("stage: uid as a string", decoder(V1.StageRequest.self), #"{"job":"1","user":"u","uid":"5","directives":[]}"#, ["uid is an integer, not a string ('5')"]),
        ("stage: uid beyond 32 bits", decoder(V1.StageRequest.self), #"{"job":"1","user":"u","uid":4294967296,"directives":[]}"#, ["uid is 0 to 4294967295, not 4294967296"]),
        ("stage: negative gid", decoder(V1.StageRequest.self), #"{"job":"1","user":"u","gid":-1,"directives":[]}"#, ["gid is 0 to 4294967295, not -1"]),
        ("stage: empty job", decoder(V1.StageRequest.self), #"{"job":"","user":"u","directives":[]}"#, ["job is at least 1 character long"]),
        ("stage: directives an object", decoder(V1.StageRequest.self), #"{"job":"1","user":"u","directives":{}}"#, ["directives is an array, not an object"]),
        ("directive: unknown key", decoder(V1.StageRequest.self), #"{"job":"1","user":"u","directives":[\#(directive),{"direction":"stage_in","source":"s","destination":"d","optional":false,"checksum":false,"line":3,"hurry":1}]}"#,
         ["unknown key 'hurry' in directives[1] (a directive takes checksum, destination, direction, line, optional, source)"]),
        ("directive: unknown direction", decoder(V1.StageRequest.self), #"{"job":"1","user":"u","directives":[{"direction":"stage_up","source":"s","destination":"d","optional":false,"checksum":false,"line":3}]}"#,
         ["unknown directives[0].direction 'stage_up': one of stage_in, stage_out"]),
        ("directive: negative line", decoder(V1.StageRequest.self), #"{"job":"1","user":"u","directives":[{"direction":"stage_in","source":"s","destination":"d","optional":false,"checksum":false,"line":-1}]}"#,
         ["directives[0].line is 0 or more, not -1"]),
        ("directive: optional as a string", decoder(V1.StageRequest.self), #"{"job":"1","user":"u","directives":[{"direction":"stage_in","source":"s","destination":"d","optional":"no","checksum":false,"line":1}]}"#,
         ["directives[0].optional is true or false, not a string ('no')"]),
        ("directive: no line", decoder(V1.StageRequest.self), #"{"job":"1","user":"u","directives":[{"direction":"stage_in","source":"s","destination":"d","optional":false,"checksum":false}]}"#,
         ["'line' is missing in directives[0]"]),
        ("directive: not an object", decoder(V1.StageRequest.self), #"{"job":"1","user":"u","directives":["stage_in s d"]}"#, ["directives[0] is an object, not a string"]),
        // Teardown and sweep.
        ("teardown: hurry as a string", decoder(V1.TeardownRequest.self), #"{"job":"1","hurry":"yes"}"#, ["hurry is true or false, not a string ('yes')"]),
        ("teardown: empty job", decoder(V1.TeardownRequest.self), #"{"job":""}"#, ["job is at least 1 character long"]),
        ("sweep: max_pin_hours over the maximum", decoder(V1.SweepRequest.self), #"{"max_pin_hours":1000001}"#, ["max_pin_hours is 0 to 1000000, not 1000001"]),
        ("sweep: maxPinHours negative", decoder(V1.SweepRequest.self), #"{"maxPinHours":-1}"#, ["maxPinHours is 0 to 1000000, not -1"]),
        ("sweep: a kept job that is a number", decoder(V1.SweepRequest.self), #"{"keep_jobs":["7",8]}"#, ["keep_jobs[1] is a string, not 8"]),
        ("sweep: keep_jobs a string", decoder(V1.SweepRequest.self), #"{"keep_jobs":"7"}"#, ["keep_jobs is an array, not a string ('7')"]),
    ]

    static let directive = #"{"direction":"stage_in","source":"gfs://a/d","destination":"/s/x","optional":false,"checksum":false,"line":2}"#

    @Test("request bodies are checked against their schemas, nested directives too: types, integer ranges, enums, lengths, required keys; each refusal names the key and its place")
    func requestsCheckedBySchema() throws {
        for (what, decode, json, says) in Self.refused {
            do {
                try decode(Data(json.utf8))
                Issue.record("\(what): \(json) was accepted")
            } catch let r as RequestRefusal {
                for s in says { #expect(r.description.contains(s), "\(what): \(r.description)") }
            } catch {
                Issue.record("\(what): refused by the decoder, not the schema check: \(error)")
            }
        }
        // Large bodies: 10,000 directives is the most a stage request takes.
        let many = #"{"job":"1","user":"u","directives":["# + Array(repeating: Self.directive, count: 10_001).joined(separator: ",") + "]}"
        #expect(Self.refusal(Self.decoder(V1.StageRequest.self), many) == "directives takes at most 10000 items, not 10001")
        let most = #"{"job":"1","user":"u","directives":["# + Array(repeating: Self.directive, count: 10_000).joined(separator: ",") + "]}"
        #expect(try APIJSON.decode(V1.StageRequest.self, from: Data(most.utf8)).directives.count == 10_000)
    }

    @Test("valid bodies decode: every option, snake_case and the first form's camelCase, the edges of each range")
    func validRequestsDecode() throws {
        let snake = #"{"source":"/a","destination":"/b","recursive":true,"protection":"clear","compress":"19","checksum":true,"streams":64,"bwlimit":0,"priority":-3,"depends_on":[1,2],"deadline":0,"max_attempts":100}"#
        let s = try APIJSON.decode(V1.TransferSubmission.self, from: Data(snake.utf8)).request
        #expect(s.recursive && s.protection == "clear" && s.compress == "19" && s.checksum && s.streams == 64 && s.bwlimit == 0 && s.priority == -3)
        #expect(s.dependsOn == [1, 2] && s.deadline == 0 && s.maxAttempts == 100)
        let camel = snake.replacingOccurrences(of: "depends_on", with: "dependsOn").replacingOccurrences(of: "max_attempts", with: "maxAttempts")
        #expect(try APIJSON.decode(V1.TransferSubmission.self, from: Data(camel.utf8)).request == s)
        // "0" is off, as the engine reads it (the schema's enum says so too).
        #expect(try APIJSON.decode(V1.TransferSubmission.self, from: Data(#"{"source":"/a","destination":"/b","compress":"0","streams":1,"max_attempts":1}"#.utf8)).request.compress == "0")
        let stage = try APIJSON.decode(V1.StageRequest.self, from: Data(#"{"job":"1","uid":4294967295,"gid":0,"user":"u","directives":[\#(Self.directive)]}"#.utf8))
        #expect(stage.uid == UInt32.max && stage.gid == 0 && stage.directives.first?.line == 2 && stage.retry == nil)
        #expect(try APIJSON.decode(V1.SweepRequest.self, from: Data(#"{"max_pin_hours":1000000,"keep_jobs":[]}"#.utf8)).maxPinHours == 1_000_000)
        #expect(try APIJSON.decode(V1.ReplicateRequest.self, from: Data(#"{"path":"gfs://a/z","bwlimit":0}"#.utf8)).bwlimit == 0)
        let reg = try APIJSON.decode(V1.RegisterRequest.self, from: Data(#"{"path":"/d","dataset":"z@1","readers":[],"description":"","license":"cc-by","hash":false}"#.utf8))
        #expect(reg.dataset == "z@1" && reg.readers == [] && reg.license == "cc-by" && reg.hash == false)
    }

    @Test("every request body is closed: an unknown key is refused by name (nested directives too), the schemas say additionalProperties false, the first form's camelCase still reads")
    func requestBodiesClosed() throws {
        // The table above covers every operation that takes a body.
        var bodies: Set<String> = []
        for op in APIContract.operations {
            for model in op.body?.refs ?? [] { bodies.insert(model.schemaName) }
        }
        #expect(bodies == Set(Self.requestBodies.map(\.name)), "request bodies of the contract: \(bodies.sorted())")
        let components = try #require((try Self.document()["components"] as? [String: Any])?["schemas"] as? [String: [String: Any]])
        for (name, json, decode) in Self.requestBodies {
            #expect(Self.refusal(decode, json) == nil, "\(name): \(json) is refused: \(Self.refusal(decode, json) ?? "")")
            let typo = String(json.dropLast()) + (json == "{}" ? "" : ",") + #""bogus_key":1}"#
            let why = Self.refusal(decode, typo)
            #expect(why?.contains("unknown key 'bogus_key'") == true, "\(name): \(typo) -> \(why ?? "accepted")")
            // The document says so too: every object schema the body reaches is closed.
            var open: [String] = []
            func walk(_ s: [String: Any], _ at: String) {
                if let r = s["$ref"] as? String {
                    let n = String(r.split(separator: "/").last!)
                    if let c = components[n] { walk(c, n) }
                    return
                }
                for alt in (s["oneOf"] as? [[String: Any]] ?? []) + (s["anyOf"] as? [[String: Any]] ?? []) { walk(alt, at) }
                if s["type"] as? String == "object", s["properties"] != nil, s["additionalProperties"] as? Bool != false { open.append(at) }
                for (k, v) in s["properties"] as? [String: [String: Any]] ?? [:] { walk(v, at + "." + k) }
                if let items = s["items"] as? [String: Any] { walk(items, at + "[]") }
            }
            walk(try #require(components[name]), name)
            #expect(open.isEmpty, "open object schemas in a request body: \(open)")
        }
        // A directive of a stage request is checked too, and its place is named.
        let directive = #"{"job":"1","user":"alice","directives":[{"direction":"stage_in","source":"gfs://a/d","destination":"/s/x","optional":false,"checksum":false,"line":2,"optinal":true}]}"#
        let why = Self.refusal({ _ = try APIJSON.decode(V1.StageRequest.self, from: $0) }, directive)
        #expect(why?.contains("unknown key 'optinal'") == true && why?.contains("directives") == true, "\(why ?? "accepted")")
        // A snake_case typo is named as written; the answer lists what the body takes.
        let teardown = Self.refusal({ _ = try APIJSON.decode(V1.TeardownRequest.self, from: $0) }, #"{"job":"1","hury":true}"#) ?? ""
        #expect(teardown.contains("unknown key 'hury'") && teardown.contains("hurry, job"), "\(teardown)")
        let sweep = Self.refusal({ _ = try APIJSON.decode(V1.SweepRequest.self, from: $0) }, #"{"max_pin_hour":3}"#) ?? ""
        #expect(sweep.contains("unknown key 'max_pin_hour'"), "\(sweep)")
        // The first form's camelCase keys still read, as before.
        let camel = try APIJSON.decode(V1.SweepRequest.self, from: Data(#"{"keepJobs":["7"],"maxPinHours":3}"#.utf8))
        #expect(camel.keepJobs == ["7"] && camel.maxPinHours == 3)
        let snake = try APIJSON.decode(V1.SweepRequest.self, from: Data(#"{"keep_jobs":["7"],"max_pin_hours":3}"#.utf8))
        #expect(snake.keepJobs == ["7"] && snake.maxPinHours == 3)
        let stage = try APIJSON.decode(V1.StageRequest.self, from: Data(#"{"job":"1","uid":5,"user":"alice","retry":true,"directives":[{"direction":"stage_out","source":"/s/o","destination":"gfs://a/d","optional":true,"checksum":false,"line":4}]}"#.utf8))
        #expect(stage.uid == 5 && stage.retry == true && stage.directives.first?.direction == .stageOut && stage.directives.first?.optional == true)
        // What the CLI sends reads back.
        let sent = V1.StageRequest(job: "9", uid: 1, gid: 2, user: "bob", directives: [StageDirective(direction: .stageIn, source: "gfs://a/d", destination: "/s/d", line: 3)], retry: nil)
        #expect(try APIJSON.decode(V1.StageRequest.self, from: APIJSON.encode(sent)).directives == sent.directives)
        var register = V1.RegisterRequest(path: "/d/z", dataset: "z")
        register.hash = true
        register.readers = ["*"]
        let back = try APIJSON.decode(V1.RegisterRequest.self, from: APIJSON.encode(register))
        #expect(back.hash == true && back.readers == ["*"])
        #expect(try APIJSON.decode(V1.ReplicateRequest.self, from: APIJSON.encode(V1.ReplicateRequest(path: "gfs://a/z", bwlimit: 5))).bwlimit == 5)
    }

    @Test("a query is checked against the operation's parameters: required, integers and their ranges, every repetition")
    func queries() throws {
        let list = APIContract.operation("listTransfers")
        #expect(list.queryProblem([]) == nil)
        #expect(list.queryProblem([("limit", "1000"), ("after", "0")]) == nil)
        #expect(list.queryProblem([("limit", "1001")])?.contains("from 1 to 1000") == true)
        #expect(list.queryProblem([("limit", "null")])?.contains("'null'") == true)
        #expect(list.queryProblem([("after", "5"), ("after", "-1")]) != nil)
        let ls = APIContract.operation("ls")
        #expect(ls.queryProblem([("limit", "10")]) == "give ?path=")
        #expect(ls.queryProblem([("path", "gfs://a/b"), ("after", "x y")]) == nil)
    }

    @Test("a query is checked for every kind of parameter: enums (a job state filter), string lengths, booleans, patterns, comma-separated lists")
    func queryKinds() throws {
        let list = APIContract.operation("listTransfers")
        #expect(list.queryProblem([("state", "queued,failed")]) == nil)
        #expect(list.queryProblem([("state", "up_for_retry")]) == nil)
        let done = list.queryProblem([("state", "queued,done")])
        #expect(done?.contains("unknown state 'done': one of") == true && done?.contains("up_for_retry") == true, "\(done ?? "accepted")")
        #expect(list.queryProblem([("state", "failed"), ("state", "cancelled")]) != nil, "every repetition is checked")
        #expect(list.queryProblem([("state", "")])?.contains("unknown state ''") == true && list.queryProblem([("state", "queued,,failed")]) != nil)
        // The document says the list is one comma-separated value.
        let doc = try Self.document()
        let get = try #require(((doc["paths"] as? [String: Any])?["/api/v1/transfers"] as? [String: Any])?["get"] as? [String: Any])
        let state = try #require((get["parameters"] as? [[String: Any]])?.first { $0["name"] as? String == "state" })
        #expect(state["style"] as? String == "form" && state["explode"] as? Bool == false)
        #expect(((state["schema"] as? [String: Any])?["items"] as? [String: Any])?["enum"] as? [String] == V1.jobStates)
        // minLength: an empty required string is not one.
        #expect(APIContract.operation("stageStatus").queryProblem([("job", "")])?.contains("job is at least 1 character") == true)
        #expect(APIContract.operation("stat").queryProblem([("path", "")]) != nil)
        #expect(APIContract.operation("stageStatus").queryProblem([("job", "42")]) == nil)
        // The kinds the table may use next: booleans, patterns, lengths, numbers.
        let flag = APIOperation(id: "t", method: "GET", path: "/t", summary: "", parameters: [
            .query("deep", .boolean()), .query("name", .string(pattern: "^[a-z]+$", maxLength: 8)), .query("ratio", .number())],
            answer: nil, description: "")
        #expect(flag.queryProblem([("deep", "true"), ("deep", "false"), ("name", "abc"), ("ratio", "0.5")]) == nil)
        #expect(flag.queryProblem([("deep", "yes")]) == "deep is true or false, not 'yes'")
        #expect(flag.queryProblem([("name", "ab1")])?.contains("does not match") == true)
        #expect(flag.queryProblem([("name", "abcdefghi")])?.contains("at most 8") == true)
        #expect(flag.queryProblem([("ratio", "nan")]) != nil && flag.queryProblem([("ratio", "x")]) != nil)
    }

    @Test("a job stored with the first form's keys still reads (the store's own JSON)")
    func storedRequestsRead() throws {
        let old = #"{"source":"/a","destination":"/b","recursive":true,"protection":"clear","compress":"auto","checksum":false,"priority":2,"dependsOn":[9],"maxAttempts":4}"#
        let r = try JSONDecoder().decode(JobRequest.self, from: Data(old.utf8))
        #expect(r.dependsOn == [9] && r.maxAttempts == 4 && r.recursive)
        #expect(try JSONDecoder().decode(JobRequest.self, from: JSONEncoder().encode(r)) == r)
    }
}

/// `WaitPace`: how often a waiting client looks at its job.
@Suite struct WaitPaceTests {
    func job(_ state: JobState, progress: (Int64, Int64)? = nil, parts: (queued: Int, running: Int, total: Int)? = nil) throws -> V1.Transfer {
        var j = V1.Transfer(ContractSchemaTests.job(state))
        if let (done, total) = progress {
            j.progress = try ContractSchemaTests.decoded(#"{"bytes_done":\#(done),"bytes_total":\#(total),"files_done":0,"files_total":1,"wire_bytes":5,"seconds":0.5}"#)
        }
        if let p = parts {
            var pp = JobStore.PartProgress()
            pp.byState = [.queued: p.queued, .running: p.running, .success: p.total - p.queued - p.running]
            j.parts = V1.Parts(pp)
        }
        return j
    }

    @Test func soonAfterSubmitThenSteady() throws {
        var pace = WaitPace(steady: 0.3)
        let queued = try job(.queued)
        let pauses = (0..<7).map { _ in pace.next(after: queued) }
        #expect(pauses == [0.025, 0.05, 0.1, 0.2, 0.3, 0.3, 0.3])
        var watch = WaitPace(steady: 0.04)
        #expect(watch.next(after: queued) == 0.025 && watch.next(after: queued) == 0.04)
    }

    @Test func quickNearTheEnd() throws {
        var pace = WaitPace(steady: 0.3)
        for _ in 0..<6 { _ = pace.next(after: try job(.running, progress: (10, 100))) }
        #expect(pace.next(after: try job(.running, progress: (99, 100))) == 0.3)
        #expect(pace.next(after: try job(.running, progress: (100, 100))) == WaitPace.lastStepSeconds)
        // A striped job: parts still queued → steady; the last ones running → 100 ms; none left → 50 ms.
        #expect(pace.next(after: try job(.running, parts: (1, 5, 30))) == 0.3)
        #expect(pace.next(after: try job(.running, parts: (0, 2, 30))) == WaitPace.lastPartsSeconds)
        #expect(pace.next(after: try job(.running, parts: (0, 0, 30))) == WaitPace.lastStepSeconds)
        // Not running (a retry waits in the queue): steady, whatever its counters said.
        #expect(pace.next(after: try job(.upForRetry, parts: (0, 0, 30))) == 0.3)
    }

    @Test func quickLooksAreBounded() throws {
        var pace = WaitPace(steady: 0.3)
        for _ in 0..<4 { _ = pace.next(after: try job(.queued)) }
        let stuck = try job(.running, progress: (100, 100))
        let pauses = (0..<100).map { _ in pace.next(after: stuck) }
        let quick = pauses.prefix { $0 == WaitPace.lastStepSeconds }
        #expect(abs(Double(quick.count) * WaitPace.lastStepSeconds - WaitPace.lastStepBudget) < 1e-6)
        #expect(pauses.dropFirst(quick.count).allSatisfy { $0 == 0.3 })
        // The last parts' looks have a budget of their own, and spending it leaves the last step's.
        var striped = WaitPace(steady: 0.3)
        for _ in 0..<4 { _ = striped.next(after: try job(.queued)) }
        let lastParts = try job(.running, parts: (0, 3, 24))
        let partPauses = (0..<200).map { _ in striped.next(after: lastParts) }
        let partQuick = partPauses.prefix { $0 == WaitPace.lastPartsSeconds }
        #expect(abs(Double(partQuick.count) * WaitPace.lastPartsSeconds - WaitPace.lastPartsBudget) < 1e-6)
        #expect(partPauses.dropFirst(partQuick.count).allSatisfy { $0 == 0.3 })
        #expect(striped.next(after: try job(.running, parts: (0, 0, 24))) == WaitPace.lastStepSeconds)
    }
}
