import Foundation
import HTTPTypes
import Hummingbird
import Transfer

/// The web console (issue 15): a static page served by the daemon on the API's own port, with
/// the same HTTPS, calling the same JSON API as the CLI. Decided so (not server-side templates):
/// the API already holds every rule (rights, paging, job states, validation), and a page that
/// only calls it cannot grow a second implementation of any of them; the page, its script, its
/// style and its two catalogues (English, Simplified Chinese) are files of this target
/// (`Console/`), embedded in the binary at build time, so the console needs nothing from the
/// internet. The page builds every element with `textContent` (never HTML from data), and
/// the Content-Security-Policy allows scripts and styles from the daemon only, none inline: a
/// file named `<img src=x onerror=...>` is text, and an injected script would not run.
///
/// Signing in: the user pastes their token (the one `ferry token issue` made) once; the daemon
/// checks it and keeps it in a session (`ConsoleSessions`), and the browser gets only the
/// session's id, in an `HttpOnly; SameSite=Strict` cookie (`Secure` when the API speaks HTTPS:
/// a plain-HTTP API listens on loopback only). The API accepts that cookie instead of a bearer
/// token; a state-changing request (POST) must also carry the session's CSRF token in
/// `X-Ferry-CSRF`, which the page reads from `GET /ui/session` (same origin only: another
/// site can make the browser send a request, not read its answer). Every request through a
/// session checks the token again (expiry, revocation), so the console sees exactly what the
/// token may see. Sessions live in the daemon's memory: a restart signs everyone out.
public final class ConsoleSessions: @unchecked Sendable {
    struct Session {
        let token: String
        let user: String
        let csrf: String
        let expires: Int64
        let isOperator: Bool
        /// The order sessions were made in (a user's oldest is ended first; many end in the
        /// same second, so not their expiry).
        var serial: UInt64 = 0
    }

    /// At most this many sessions at once (expired ones are dropped first); a sign-in beyond
    /// it is refused (503), it never evicts another user's live session.
    static let maxSessions = 10_000
    /// At most this many per user: a user's sign-in beyond it ends that user's oldest session
    /// (one token signing in in a loop cannot fill the daemon and lock everyone else out).
    static let maxPerUser = 20
    /// A session ends after this long, or when its token expires, whichever comes first.
    static let maxSeconds: Int64 = 12 * 3600
    static let cookie = "ferry_session"
    static let csrfHeader = "X-Ferry-CSRF"

    private let lock = NSLock()
    private var sessions: [String: Session] = [:]
    private var made: UInt64 = 0

    public init() {}

    /// 32 random bytes (OpenSSL's generator, as the engine's secrets), base64url without padding.
    static func secret() -> String {
        Data(randomBytes(32)).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// Whether a request's CSRF header is the session's (compared in constant time).
    static func csrfMatches(_ header: String?, _ s: Session) -> Bool {
        guard let header else { return false }
        return constantTimeEqual(Array(header.utf8), Array(s.csrf.utf8))
    }

    /// `user`: the token's principal as the API names it (`DaemonAPI.principal`: NAME@CENTER
    /// for a peer's token), which the session shows and counts by.
    func create(token: String, _ t: UserToken, user: String, isOperator: Bool, now: Int64) -> (id: String, session: Session)? {
        var s = Session(token: token, user: user, csrf: ConsoleSessions.secret(), expires: min(t.expiresAt, now + ConsoleSessions.maxSeconds), isOperator: isOperator)
        let id = ConsoleSessions.secret()
        return lock.withLock {
            made += 1
            s.serial = made
            let own = sessions.filter { $0.value.user == user }
            if own.count >= ConsoleSessions.maxPerUser, let oldest = own.min(by: { $0.value.serial < $1.value.serial }) { sessions[oldest.key] = nil }
            if sessions.count >= ConsoleSessions.maxSessions { sessions = sessions.filter { $0.value.expires > now } }
            guard sessions.count < ConsoleSessions.maxSessions else { return nil }
            sessions[id] = s
            return (id, s)
        }
    }

    func get(_ id: String, now: Int64) -> Session? {
        lock.withLock {
            guard let s = sessions[id] else { return nil }
            if s.expires <= now { sessions[id] = nil; return nil }
            return s
        }
    }

    func end(_ id: String) { lock.withLock { sessions[id] = nil } }

    var count: Int { lock.withLock { sessions.count } }
}

extension V1 {
    /// `GET /ui/session` and a sign-in's answer: who is signed in, until when, and the CSRF
    /// token the page sends with every POST.
    public struct ConsoleSession: APIModel {
        public var user: String
        public var `operator`: Bool
        public var expires: Int64
        public var csrf: String
        public var center: String
        public static var schema: Schema {
            .object(["user": .string("the token's principal: NAME, or NAME@CENTER for a token of another center"),
                     "operator": .boolean("the token is an operator's (this center's own token with rw:/)"), "expires": .integer("Unix seconds"),
                     "csrf": .string("send it as X-Ferry-CSRF with every POST"), "center": .string("this daemon's center")],
                    required: ["user", "operator", "expires", "csrf", "center"])
        }
    }

    /// `POST /ui/session`: the user's token, as `ferry token issue` wrote it.
    public struct ConsoleSignIn: APIRequest {
        public var token: String
        public static var noun: String { "a sign-in" }
        public static var schema: Schema { .object(["token": .string(minLength: 1, maxLength: 8192)], required: ["token"]) }
    }

    /// `POST /ui/session/end`.
    public struct SignedOut: APIModel {
        public var signedOut: Bool
        public static var schema: Schema { .object(["signed_out": .boolean()], required: ["signed_out"]) }
    }

    /// The console's words in one language: key to text (`Console/i18n/LANG.json`).
    public struct ConsoleCatalogue: APIModel {
        public var words: [String: String]
        public init(from decoder: any Decoder) throws { words = try decoder.singleValueContainer().decode([String: String].self) }
        public func encode(to encoder: any Encoder) throws { var c = encoder.singleValueContainer(); try c.encode(words) }
        public static var schema: Schema { .map(.string()) }
    }
}

/// The console's files, embedded at build time (Package.swift: `.embedInCode`).
enum ConsoleAssets {
    static let page = PackageResources.index_html
    static let script = PackageResources.console_js
    static let style = PackageResources.console_css
    static let catalogues = ["en": PackageResources.en_json, "zh-CN": PackageResources.zh_CN_json]

    /// Scripts, styles, images and connections from this daemon only; nothing inline, no
    /// frames (clickjacking), no forms posted elsewhere.
    static let policy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        + "font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
}

extension DaemonAPI {
    /// The console's routes, operations of the contract like the API's (`APIContract`).
    func addConsoleRoutes(_ router: Router<APIRequestContext>) {
        for (id, bytes, type) in [("console", ConsoleAssets.page, "text/html; charset=utf-8"), ("consoleScript", ConsoleAssets.script, "text/javascript; charset=utf-8"),
                                  ("consoleStyle", ConsoleAssets.style, "text/css; charset=utf-8")] {
            route(router, id) { _, _ in asset(bytes, type) }
        }
        route(router, "consoleCatalogue") { _, context in
            guard let lang = context.parameters.get("lang"), let bytes = ConsoleAssets.catalogues[lang] else {
                return consoleAnswer(problem(404, "no such language: en or zh-CN"))
            }
            return asset(bytes, "application/json")
        }
        route(router, "consoleSession") { request, _ in
            guard let (_, s) = consoleSession(request) else { return consoleAnswer(problem(401, "not signed in")) }
            return consoleAnswer(try codable(200, V1.ConsoleSession(user: s.user, operator: s.isOperator, expires: s.expires, csrf: s.csrf, center: center)))
        }
        route(router, "consoleSignIn") { request, _ in
            let form: V1.ConsoleSignIn
            do {
                form = try APIJSON.decode(V1.ConsoleSignIn.self, from: Data(buffer: try await request.body.collect(upTo: 16 << 10)))
            } catch let e as RequestRefusal {
                return consoleAnswer(problem(400, e.description))
            } catch {
                return consoleAnswer(problem(400, "send {\"token\": \"ferry1....\"}"))
            }
            let token = form.token.trimmingCharacters(in: .whitespacesAndNewlines)
            let (checked, refusal) = verifier.check(token)
            guard let t = checked, refusal == nil else {
                let result = RefusalAudit.shown("refused: " + (refusal?.message ?? "token refused"), max: RefusalAudit.resultBytesMax)
                if let g = checked {
                    auditLine(User(user: "refused:" + principal(g), scopes: []), action: "console.sign-in", path: "", result: result)
                } else if let audit {
                    // Not a genuine token: nobody to name, so at the bounded rate of the API's
                    // unauthenticated refusals (`RefusalAudit`), with the client's address.
                    refusals.refusedUnidentified(AuditLog.Record(user: "", peer: DaemonAPI.client, action: "console.sign-in", path: "", result: result),
                                                 client: DaemonAPI.client, to: audit)
                }
                return consoleAnswer(problem(401, refusal?.message ?? "token refused"))
            }
            // The same principal, and the same operator rule, as every API request (`tokenUser`):
            // a peer's token signs in as NAME@CENTER and is never the operator.
            let user = tokenUser(t)
            guard let (id, s) = sessions.create(token: token, t, user: user.user, isOperator: user.isOperator, now: now()) else {
                return consoleAnswer(problem(503, "too many console sessions; try again later"))
            }
            auditLine(user, action: "console.sign-in", path: "", result: "ok")
            var response = consoleAnswer(try codable(200, V1.ConsoleSession(user: s.user, operator: s.isOperator, expires: s.expires, csrf: s.csrf, center: center)))
            response.headers[values: .setCookie].append(sessionCookie(id, maxAge: max(0, s.expires - now())))
            return response
        }
        route(router, "consoleSignOut") { request, _ in
            guard let (id, s) = consoleSession(request) else { return consoleAnswer(problem(401, "not signed in")) }
            guard ConsoleSessions.csrfMatches(request.headers[HTTPField.Name(ConsoleSessions.csrfHeader)!], s) else {
                return consoleAnswer(problem(403, "missing or wrong \(ConsoleSessions.csrfHeader) header"))
            }
            sessions.end(id)
            auditLine(User(user: s.user, scopes: []), action: "console.sign-out", path: "", result: "ok")
            var response = consoleAnswer(try codable(200, V1.SignedOut(signedOut: true)))
            response.headers[values: .setCookie].append(sessionCookie("", maxAge: 0))
            return response
        }
    }

    func asset(_ bytes: [UInt8], _ type: String) -> Response {
        var headers = DaemonAPI.consoleHeaders
        headers[.contentType] = type
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    static let consoleHeaders: HTTPFields = [
        .contentSecurityPolicy: ConsoleAssets.policy,
        HTTPField.Name("X-Content-Type-Options")!: "nosniff",
        HTTPField.Name("Referrer-Policy")!: "no-referrer",
        HTTPField.Name("X-Frame-Options")!: "DENY",
        .cacheControl: "no-store",
    ]

    func consoleAnswer(_ r: Response) -> Response {
        var r = r
        for f in DaemonAPI.consoleHeaders where r.headers[f.name] == nil { r.headers.append(f) }
        return r
    }

    func sessionCookie(_ id: String, maxAge: Int64) -> String {
        "\(ConsoleSessions.cookie)=\(id); Path=/; Max-Age=\(maxAge); HttpOnly; SameSite=Strict" + (secureCookies ? "; Secure" : "")
    }

    /// The request's console session (its cookie), if it has a live one.
    func consoleSession(_ request: Request) -> (id: String, session: ConsoleSessions.Session)? {
        guard let id = request.cookies[ConsoleSessions.cookie]?.value, !id.isEmpty, id.count <= 64,
              let s = sessions.get(id, now: now()) else { return nil }
        return (id, s)
    }

    /// The bearer token a console session stands for, for `authenticated`: nil when the request
    /// has no session cookie; a refusal when it has one that is gone, or when a state-changing
    /// request lacks the session's CSRF token.
    func consoleToken(_ request: Request) throws -> String? {
        guard request.cookies[ConsoleSessions.cookie] != nil else { return nil }
        guard let (_, s) = consoleSession(request) else { throw HTTPFailure(status: 401, message: "the console session has ended; sign in again") }
        if request.method != .get && request.method != .head && !ConsoleSessions.csrfMatches(request.headers[HTTPField.Name(ConsoleSessions.csrfHeader)!], s) {
            throw HTTPFailure(status: 403, message: "missing or wrong \(ConsoleSessions.csrfHeader) header (a request from another site?)")
        }
        return s.token
    }
}
