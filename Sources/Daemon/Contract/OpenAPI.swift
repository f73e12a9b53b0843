import Foundation
import GlobalFS
import Transfer

/// One operation of the REST API: its method and path, what it takes and what it answers. The
/// daemon registers its routes from these (`DaemonAPI.route`), so a route cannot exist without
/// its entry in the document, and the document (`APIContract.document`) is generated from them.
public struct APIOperation: Sendable {
    public enum Auth: Sendable {
        /// A user's bearer token.
        case token
        /// Nobody's: liveness, metrics, this document.
        case none
        /// A peer center's daemon (a `FerryCenter` assertion with its certificate).
        case center
        /// A web console session: the `ferry_session` cookie (a POST also carries the
        /// session's CSRF token in `X-Ferry-CSRF`; Daemon/HTTP/Console.swift).
        case session
    }

    public struct Parameter: Sendable {
        public var name: String
        public var inPath: Bool
        public var required: Bool
        public var schema: Schema
        public var description: String?
        /// An array in the query: one value, comma-separated (`style: form, explode: false`).
        public var isArray: Bool { schema.json["type"] as? String == "array" }

        public static func path(_ name: String, _ schema: Schema = .integer(minimum: 1)) -> Parameter {
            Parameter(name: name, inPath: true, required: true, schema: schema, description: nil)
        }
        public static func query(_ name: String, _ schema: Schema, required: Bool = false, _ description: String? = nil) -> Parameter {
            Parameter(name: name, inPath: false, required: required, schema: schema, description: description)
        }
    }

    public var id: String
    public var method: String
    /// As OpenAPI writes it: `/api/v1/transfers/{id}`.
    public var path: String
    public var summary: String
    public var auth: Auth = .token
    public var parameters: [Parameter] = []
    public var body: Schema? = nil
    /// The success answer: its status, description, and body (nil: `contentType` text).
    public var status = 200
    public var answer: Schema?
    public var description: String
    public var contentType = "application/json"
    /// The error statuses this operation answers with a `Problem` (every one also has a
    /// `default` problem for the unexpected).
    public var errors: [Int: String] = [:]

    /// The query as the document describes it, or why not: a required parameter missing, or a
    /// value its schema refuses (each occurrence, when repeated): an integer that is not one or
    /// out of its range, a boolean that is not `true` or `false`, a word not among its enum, a
    /// string too short, too long or not matching its pattern; an array (`style: form`,
    /// `explode: false`: `?state=queued,failed`) item by item. The router checks every request
    /// against this before its handler runs (`DaemonAPI.route`), so what the document calls
    /// invalid is a 400 with the reason, never a default silently used.
    public func queryProblem(_ items: [(String, String)]) -> String? {
        for p in parameters where !p.inPath {
            let values = items.filter { $0.0 == p.name }.map(\.1)
            if p.required && values.isEmpty { return "give ?\(p.name)=" }
            for v in values {
                if let why = APIOperation.refusal(of: v, p.schema.json, name: p.name) { return why }
            }
        }
        return nil
    }

    /// Why the value of query parameter `name` does not fit `schema` ("limit is an integer from
    /// 1 to 1000, not 'x'", "unknown state 'done': one of ..."), or nil.
    static func refusal(of v: String, _ schema: [String: Any], name: String) -> String? {
        let shown = "'\(v.prefix(40))'"
        switch schema["type"] as? String {
        case "integer":
            let lo = (schema["minimum"] as? Int64) ?? Int64.min
            let hi = (schema["maximum"] as? Int64) ?? Int64.max
            guard let n = Int64(v), (lo...hi).contains(n) else {
                let range = lo == Int64.min ? "an integer" : hi == Int64.max ? "an integer of \(lo) or more" : "an integer from \(lo) to \(hi)"
                return "\(name) is \(range), not \(shown)"
            }
        case "number":
            guard Double(v)?.isFinite == true else { return "\(name) is a number, not \(shown)" }
        case "boolean":
            guard v == "true" || v == "false" else { return "\(name) is true or false, not \(shown)" }
        case "array":
            let items = schema["items"] as? [String: Any] ?? [:]
            // Every item counts, an empty one too (`?state=` or `queued,,failed` is not a list
            // of states: refused, not read as "no filter").
            let parts = v.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            if let lo = schema["minItems"] as? Int, parts.count < lo { return "\(name) takes at least \(lo) comma-separated values, not \(parts.count)" }
            if let hi = schema["maxItems"] as? Int, parts.count > hi { return "\(name) takes at most \(hi) comma-separated values, not \(parts.count)" }
            for part in parts {
                if let why = refusal(of: part, items, name: name) { return why }
            }
        case "string":
            if let words = schema["enum"] as? [String], !words.contains(v) {
                return "unknown \(name) \(shown): one of \(words.joined(separator: ", "))"
            }
            if let lo = schema["minLength"] as? Int, v.count < lo { return "\(name) is at least \(lo) character\(lo == 1 ? "" : "s") long, not \(shown)" }
            if let hi = schema["maxLength"] as? Int, v.count > hi { return "\(name) is at most \(hi) characters long, not \(v.count)" }
            if let pattern = schema["pattern"] as? String {
                // JSON Schema's patterns are not anchored: a match anywhere will do.
                guard let re = try? Regex(pattern), v.firstMatch(of: re) != nil else { return "\(name) does not match \(pattern): \(shown)" }
            }
        default:
            break
        }
        return nil
    }

    /// The path as Hummingbird's router writes it (`/api/v1/transfers/:id`).
    public var routerPath: String {
        path.split(separator: "/", omittingEmptySubsequences: false).map { part in
            part.hasPrefix("{") && part.hasSuffix("}") ? ":" + part.dropFirst().dropLast() : part
        }.joined(separator: "/")
    }
}

/// The REST API's contract: every operation, and the OpenAPI 3.1 document made from them.
public enum APIContract {
    static let states = "comma-separated job states; an unknown one is a 400"
    static let gfsPath = APIOperation.Parameter.query("path", .string(minLength: 1), required: true, "gfs://CENTER/DATASET[/PATH], of this center or a peer it follows")
    static let operatorOnly = [403: "not an operator token (rw:/)", 409: "this center does no prestaging"]

    public static let operations: [APIOperation] = [
        APIOperation(id: "health", method: "GET", path: "/api/v1/health", summary: "Liveness, center name, peers and jobs by state", auth: .none,
                     answer: .ref(V1.Health.self), description: "the daemon is up"),
        APIOperation(id: "ready", method: "GET", path: "/api/v1/ready", summary: "Readiness: the database, each export and each peer answer", auth: .none,
                     answer: .ref(V1.Readiness.self), description: "the database and every export answer (status degraded: a peer does not)",
                     errors: [503: "not ready: the database or an export does not answer (the detail says which and why)"]),
        APIOperation(id: "openapi", method: "GET", path: "/api/v1/openapi.json", summary: "This document", auth: .none,
                     answer: .any, description: "the OpenAPI 3.1 document"),
        APIOperation(id: "metrics", method: "GET", path: "/metrics", summary: "Prometheus metrics (text exposition format)", auth: .none,
                     answer: nil, description: "metrics", contentType: "text/plain"),
        APIOperation(id: "console", method: "GET", path: "/", summary: "The web console's page", auth: .none,
                     answer: nil, description: "the page (its script and style below; no other asset)", contentType: "text/html"),
        APIOperation(id: "consoleScript", method: "GET", path: "/ui/console.js", summary: "The web console's script", auth: .none,
                     answer: nil, description: "the script", contentType: "text/javascript"),
        APIOperation(id: "consoleStyle", method: "GET", path: "/ui/console.css", summary: "The web console's style", auth: .none,
                     answer: nil, description: "the style sheet", contentType: "text/css"),
        APIOperation(id: "consoleCatalogue", method: "GET", path: "/ui/i18n/{lang}", summary: "The web console's words in one language",
                     auth: .none, parameters: [.path("lang", .string(enum: ["en", "zh-CN"]))],
                     answer: .ref(V1.ConsoleCatalogue.self), description: "key to text", errors: [404: "no such language"]),
        APIOperation(id: "consoleSession", method: "GET", path: "/ui/session", summary: "The console session of the request's cookie", auth: .session,
                     answer: .ref(V1.ConsoleSession.self), description: "who is signed in, until when, and the CSRF token for POSTs"),
        APIOperation(id: "consoleSignIn", method: "POST", path: "/ui/session",
                     summary: "Sign in to the web console with a user token: a session cookie (HttpOnly, SameSite=Strict; Secure over HTTPS)",
                     auth: .none, body: .ref(V1.ConsoleSignIn.self), answer: .ref(V1.ConsoleSession.self), description: "signed in (Set-Cookie)",
                     errors: [401: "the token is refused (bad, expired, revoked)", 503: "too many console sessions at once"]),
        APIOperation(id: "consoleSignOut", method: "POST", path: "/ui/session/end", summary: "End the console session (with X-Ferry-CSRF)", auth: .session,
                     answer: .ref(V1.SignedOut.self), description: "the session ended", errors: [403: "no or a wrong X-Ferry-CSRF header"]),
        APIOperation(id: "submitTransfer", method: "POST", path: "/api/v1/transfers",
                     summary: "Create a transfer job (source), or one job per source into a directory (sources); checked before any is queued",
                     body: .ref(V1.TransferSubmission.self), status: 201, answer: .oneOf([.ref(V1.Transfer.self), .ref(V1.TransferBatch.self)]),
                     description: "the job, or the jobs (sources)",
                     errors: [400: "a bad request: unknown protection or compression, a missing source, a peer the configuration does not name",
                              403: "a path outside the token's scopes, or a link leading out of its directory",
                              409: "a dependency that does not exist", 413: "the body is over 4 MiB"]),
        APIOperation(id: "listTransfers", method: "GET", path: "/api/v1/transfers", summary: "The caller's jobs (an operator's: all), by id",
                     parameters: [.query("state", .array(.string(enum: V1.jobStates)), states), .query("after", .integer(minimum: 0), "the previous page's next_after"),
                                  .query("limit", .integer(minimum: 1, maximum: 1000)), .query("owner", .string(), "an operator's filter"),
                                  .query("peer", .string(maxLength: 64), "jobs to or from this peer (empty: local copies)"),
                                  .query("since", .integer(minimum: 0), "jobs created at or after this Unix time")],
                     answer: .ref(V1.TransferPage.self), description: "a page", errors: [400: "an unknown state, a bad after or limit"]),
        APIOperation(id: "transferStats", method: "GET", path: "/api/v1/stats",
                     summary: "Bytes moved by the caller's jobs (an operator's: everyone's) that ended in success, per peer: by day (UTC) for the last days, and by five minutes for the last hour",
                     parameters: [.query("days", .integer(minimum: 1, maximum: 90), "how many days (default 14)")],
                     answer: .ref(V1.TransferStats.self), description: "bytes moved"),
        APIOperation(id: "getTransfer", method: "GET", path: "/api/v1/transfers/{id}", summary: "One job (a running one with its live progress)",
                     parameters: [.path("id")], answer: .ref(V1.Transfer.self), description: "the job", errors: [404: "no such job of the caller"]),
        APIOperation(id: "transferAttempts", method: "GET", path: "/api/v1/transfers/{id}/attempts", summary: "One job's attempts, oldest first, each with how it ended",
                     parameters: [.path("id")], answer: .ref(V1.AttemptList.self), description: "the attempts", errors: [404: "no such job of the caller"]),
        APIOperation(id: "transferEvents", method: "GET", path: "/api/v1/transfers/{id}/events",
                     summary: "Progress as server-sent events (event: progress, then end; data: the job as getTransfer answers it)",
                     parameters: [.path("id")], answer: nil, description: "the event stream, until the job ends; a stream beyond the caller's 64 (or beyond half of the daemon's api_connections) gets one `event: refused` with the reason and ends", contentType: "text/event-stream",
                     errors: [404: "no such job of the caller"]),
        APIOperation(id: "cancelTransfer", method: "POST", path: "/api/v1/transfers/{id}/cancel",
                     summary: "Cancel a job (it ends failed, with cancelled: true)", parameters: [.path("id")],
                     answer: .ref(V1.Transfer.self), description: "the job", errors: [404: "no such job of the caller", 409: "it already ended"]),
        APIOperation(id: "retryTransfer", method: "POST", path: "/api/v1/transfers/{id}/retry", summary: "Retry a failed job",
                     parameters: [.path("id")], answer: .ref(V1.Transfer.self), description: "the job",
                     errors: [404: "no such job of the caller", 409: "it is not failed"]),

        APIOperation(id: "register", method: "POST", path: "/api/v1/catalog/register",
                     summary: "Register (or re-register) a directory of this center as a dataset", body: .ref(V1.RegisterRequest.self),
                     answer: .ref(RegisterSummary.self), description: "what the scan found",
                     errors: [400: "a bad request", 403: "outside the token's scopes, or the dataset belongs to another user", 404: "no such directory"]),
        APIOperation(id: "datasets", method: "GET", path: "/api/v1/catalog/datasets", summary: "The datasets the caller may see, of every followed center",
                     answer: .ref(V1.DatasetList.self), description: "datasets"),
        APIOperation(id: "ls", method: "GET", path: "/api/v1/catalog/ls", summary: "One page of a directory, by name",
                     parameters: [gfsPath, .query("after", .string(), "the previous page's next_after"), .query("limit", .integer(minimum: 1, maximum: 10_000))],
                     answer: .ref(V1.EntryPage.self), description: "a page", errors: [400: "a bad path", 404: "no such dataset or path"]),
        APIOperation(id: "stat", method: "GET", path: "/api/v1/catalog/stat",
                     summary: "One entry, its dataset and its replicas (ranked: the order a copy uses them, each with the reason)",
                     parameters: [gfsPath], answer: .ref(V1.StatAnswer.self), description: "the entry",
                     errors: [400: "a bad path", 404: "no such dataset or path"]),
        APIOperation(id: "find", method: "GET", path: "/api/v1/catalog/find", summary: "Entries by name glob, size and age, in key order",
                     parameters: [gfsPath, .query("name", .string(), "a glob (* ? [...])"), .query("min_size", .integer(minimum: 0)),
                                  .query("max_size", .integer(minimum: 0)), .query("newer", .integer(), "Unix seconds"),
                                  .query("after", .string(), "the previous page's next_after (DIR/NAME)"),
                                  .query("limit", .integer(minimum: 1, maximum: 10_000))],
                     answer: .ref(V1.EntryPage.self),
                     description: "a page; it may hold fewer entries than the limit, or none, with more: true, when the search read its budget of rows (go on after next_after)",
                     errors: [400: "a bad path", 404: "no such dataset"]),
        APIOperation(id: "du", method: "GET", path: "/api/v1/catalog/du", summary: "Files, directories and bytes under a path",
                     parameters: [gfsPath], answer: .ref(DiskUsage.self), description: "usage", errors: [400: "a bad path", 404: "no such dataset or path"]),
        APIOperation(id: "centers", method: "GET", path: "/api/v1/catalog/centers",
                     summary: "This center and the peers whose catalogs it follows: API, last sequence applied, last good sync, reachable",
                     answer: .ref(V1.CentersAnswer.self), description: "centers"),
        APIOperation(id: "replicate", method: "POST", path: "/api/v1/catalog/replicate",
                     summary: "Make a replica of a dataset at this center (one job from the best other replica)", body: .ref(V1.ReplicateRequest.self),
                     answer: .ref(V1.ReplicateAnswer.self), description: "staging (with its job) or complete",
                     errors: [400: "a bad path", 403: "may not write the replica directory", 404: "no such dataset",
                              409: "this center takes no replicas, or no usable replica to copy from"]),

        APIOperation(id: "federationChanges", method: "GET", path: "/api/v1/federation/changes",
                     summary: "For peer centers: this center's change feed after a sequence number, and its last one", auth: .center,
                     parameters: [.query("after", .integer(minimum: 0)), .query("limit", .integer(minimum: 1, maximum: 10_000))],
                     answer: .ref(V1.FeedPage.self), description: "changes", errors: [403: "not a center"]),
        APIOperation(id: "federationDataset", method: "GET", path: "/api/v1/federation/datasets/{id}", summary: "For peer centers: one of this center's datasets",
                     auth: .center, parameters: [.path("id")], answer: .ref(Dataset.self), description: "the dataset",
                     errors: [403: "not a center", 404: "no such dataset of this center"]),
        APIOperation(id: "federationEntries", method: "GET", path: "/api/v1/federation/entries",
                     summary: "For peer centers: a dataset's entries in key order (pages end with a short one)", auth: .center,
                     parameters: [.query("dataset", .integer(), required: true), .query("after_dir", .string()), .query("after_name", .string()),
                                  .query("limit", .integer(minimum: 1, maximum: 100_000))],
                     answer: .ref(V1.EntryPage.self), description: "entries", errors: [403: "not a center", 404: "no such dataset of this center"]),
        APIOperation(id: "federationEntryChanges", method: "GET", path: "/api/v1/federation/entry-changes",
                     summary: "For peer centers: a dataset's tombstones (part=removed) or changed entries (part=entries) after sequence since, up to upto, in (seq, dir, name) order",
                     auth: .center,
                     parameters: [.query("dataset", .integer(), required: true), .query("since", .integer(minimum: 0), required: true),
                                  .query("upto", .integer(minimum: 0)), .query("part", .string(enum: ["removed", "entries"]), required: true),
                                  .query("after_seq", .integer(minimum: 0)), .query("after_dir", .string()), .query("after_name", .string()),
                                  .query("limit", .integer(minimum: 1, maximum: 100_000))],
                     answer: .ref(V1.EntryChanges.self), description: "a page of changes, or resync",
                     errors: [400: "after_dir or after_name without after_seq", 403: "not a center", 404: "no such dataset of this center"]),
        APIOperation(id: "federationLs", method: "GET", path: "/api/v1/federation/ls",
                     summary: "For peer centers that follow this one without its entries: one page of a directory of one of this center's datasets",
                     auth: .center, parameters: [.query("dataset", .integer(), required: true), .query("path", .string("within the dataset")),
                                                 .query("after", .string()), .query("limit", .integer(minimum: 1, maximum: 10_000))],
                     answer: .ref(V1.EntryPage.self), description: "a page", errors: [400: "a bad path", 403: "not a center", 404: "no such dataset of this center, or path"]),
        APIOperation(id: "federationStat", method: "GET", path: "/api/v1/federation/stat",
                     summary: "For peer centers that follow this one without its entries: one entry of one of this center's datasets",
                     auth: .center, parameters: [.query("dataset", .integer(), required: true), .query("path", .string("within the dataset"))],
                     answer: .ref(V1.StatAnswer.self), description: "the entry", errors: [400: "a bad path", 403: "not a center", 404: "no such dataset of this center, or path"]),
        APIOperation(id: "federationFind", method: "GET", path: "/api/v1/federation/find",
                     summary: "For peer centers that follow this one without its entries: find in one of this center's datasets",
                     auth: .center, parameters: [.query("dataset", .integer(), required: true), .query("path", .string("within the dataset")),
                                                 .query("name", .string(), "a glob (* ? [...])"), .query("min_size", .integer(minimum: 0)),
                                                 .query("max_size", .integer(minimum: 0)), .query("newer", .integer(), "Unix seconds"),
                                                 .query("after", .string()), .query("limit", .integer(minimum: 1, maximum: 10_000))],
                     answer: .ref(V1.EntryPage.self), description: "a page", errors: [400: "a bad path", 403: "not a center", 404: "no such dataset of this center"]),
        APIOperation(id: "federationDu", method: "GET", path: "/api/v1/federation/du",
                     summary: "For peer centers that follow this one without its entries: usage under a path of one of this center's datasets",
                     auth: .center, parameters: [.query("dataset", .integer(), required: true), .query("path", .string("within the dataset"))],
                     answer: .ref(DiskUsage.self), description: "usage", errors: [400: "a bad path", 403: "not a center", 404: "no such dataset of this center, or path"]),
        APIOperation(id: "federationReplicas", method: "GET", path: "/api/v1/federation/replicas",
                     summary: "For peer centers: the replicas this center holds, each with its dataset", auth: .center,
                     answer: .ref(V1.HeldReplicas.self), description: "replicas", errors: [403: "not a center"]),

        APIOperation(id: "stageIn", method: "POST", path: "/api/v1/stage/in",
                     summary: "Prestaging (the scheduler's hook): pin, start or reuse transfers into the staging cache, link what is ready; idempotent",
                     body: .ref(V1.StageRequest.self), answer: .ref(V1.StageItems.self), description: "each directive's state",
                     errors: operatorOnly.merging([400: "a bad request"]) { a, _ in a }),
        APIOperation(id: "stageOut", method: "POST", path: "/api/v1/stage/out", summary: "Prestaging: one daemon job per stage_out directive; idempotent",
                     body: .ref(V1.StageRequest.self), answer: .ref(V1.StageItems.self), description: "each directive's state",
                     errors: operatorOnly.merging([400: "a bad request"]) { a, _ in a }),
        APIOperation(id: "stageTeardown", method: "POST", path: "/api/v1/stage/teardown",
                     summary: "Prestaging: a job ended; unpin its entries, remove its links, cancel transfers nobody waits for",
                     body: .ref(V1.TeardownRequest.self), answer: .ref(V1.TeardownAnswer.self), description: "what was released",
                     errors: operatorOnly.merging([400: "a bad request"]) { a, _ in a }),
        APIOperation(id: "stageSweep", method: "POST", path: "/api/v1/stage/sweep",
                     summary: "Prestaging: drop pins of jobs the scheduler no longer lists or older than max_pin_hours, stray directories, orphan transfers",
                     body: .ref(V1.SweepRequest.self), answer: .ref(V1.SweepAnswer.self), description: "what was swept",
                     errors: operatorOnly.merging([400: "a bad request"]) { a, _ in a }),
        APIOperation(id: "stageStatus", method: "GET", path: "/api/v1/stage/status", summary: "Prestaging: a job's pinned entries, links and stage-outs",
                     parameters: [.query("job", .string(minLength: 1), required: true)], answer: .ref(V1.StageStatus.self),
                     description: "the job's staging", errors: operatorOnly.merging([400: "no job"]) { a, _ in a }),
        APIOperation(id: "stageCache", method: "GET", path: "/api/v1/stage/cache", summary: "Prestaging: the staging cache's entries, pins, ready bytes and quota",
                     answer: .ref(V1.CacheView.self), description: "the cache", errors: operatorOnly),
    ]

    public static func operation(_ id: String) -> APIOperation {
        guard let op = operations.first(where: { $0.id == id }) else { fatalError("no API operation '\(id)'") }
        return op
    }

    /// The OpenAPI 3.1 document, as served at /api/v1/openapi.json (keys sorted: the same bytes
    /// every time).
    public static let document: String = {
        var paths: [String: [String: Any]] = [:]
        var models: [String: any APIModel.Type] = [:]
        func collect(_ s: Schema?) {
            for m in s?.refs ?? [] where models[m.schemaName] == nil {
                models[m.schemaName] = m
                collect(m.schema)
            }
        }
        collect(.ref(V1.Problem.self))
        let problem: [String: Any] = ["application/problem+json": ["schema": Schema.ref(V1.Problem.self).json]]
        for op in operations {
            var o: [String: Any] = ["operationId": op.id, "summary": op.summary]
            var params: [[String: Any]] = op.parameters.map { p in
                var d: [String: Any] = ["name": p.name, "in": p.inPath ? "path" : "query", "required": p.required, "schema": p.schema.json]
                if p.isArray { d["style"] = "form"; d["explode"] = false }
                if let t = p.description { d["description"] = t }
                return d
            }
            if params.isEmpty { params = [] }
            if !params.isEmpty { o["parameters"] = params }
            if let body = op.body {
                collect(body)
                o["requestBody"] = ["required": true, "content": ["application/json": ["schema": body.json]]]
            }
            var success: [String: Any] = ["description": op.description]
            if let a = op.answer {
                collect(a)
                success["content"] = [op.contentType: ["schema": a.json]]
            } else {
                success["content"] = [op.contentType: ["schema": ["type": "string"]]]
            }
            var responses: [String: Any] = [String(op.status): success, "default": ["description": "an error (RFC 9457 problem details)", "content": problem]]
            var errors = op.errors
            switch op.auth {
            case .token: errors[401] = errors[401] ?? "no token, or a token refused (expired, revoked, not this federation's)"
            case .center: errors[401] = errors[401] ?? "no center assertion, or one refused"
            case .session: errors[401] = errors[401] ?? "no console session, or one that ended"
            case .none: break
            }
            if op.auth != .none || op.body != nil { errors[503] = "the database is busy: ask again" }
            if op.body != nil { errors[400] = errors[400] ?? "the body is not valid JSON of the right shape" }
            if op.parameters.contains(where: { !$0.inPath }) { errors[400] = errors[400] ?? "a query parameter missing, or a value its schema refuses" }
            for (status, text) in errors { responses[String(status)] = ["description": text, "content": problem] }
            o["responses"] = responses
            switch op.auth {
            case .none: o["security"] = [[String: Any]]()
            case .center: o["security"] = [["center": [String]()]]
            case .session: o["security"] = [["session": [String]()]]
            case .token: break
            }
            paths[op.path, default: [:]][op.method.lowercased()] = o
        }
        let doc: [String: Any] = [
            "openapi": "3.1.0",
            "info": ["title": "Ferry daemon API", "version": "1",
                     "description": "Generated from the daemon's contract types (Sources/Daemon/Contract). Keys are snake_case; errors are RFC 9457 problem details with a machine-readable code; pages say whether more follows (more, next_after)."],
            "components": [
                "securitySchemes": ["token": ["type": "http", "scheme": "bearer", "description": "a ferry user token"],
                                    "center": ["type": "apiKey", "in": "header", "name": "Authorization",
                                               "description": "FerryCenter ASSERTION, with the center's certificate in X-Ferry-Center-Certificate"],
                                    "session": ["type": "apiKey", "in": "cookie", "name": "ferry_session",
                                                "description": "the web console's session (POST /ui/session); every POST with it also sends X-Ferry-CSRF"]],
                "schemas": models.mapValues { $0.schema.json },
            ],
            "security": [["token": [String]()], ["session": [String]()]],
            "paths": paths,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }()
}
