import Glibc

/// The one error type of the Transfer module. `code` is stable (scripts and the daemon match
/// on it); `message` names the file and the cause; `resumable` says whether re-running the same
/// transfer continues from the journal instead of starting over.
public struct TransferError: Error, CustomStringConvertible, Sendable {
    /// Stable error codes. A struct over a private enum so codes can be added later.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String { case io, protocolViolation, auth, path, usage, remote, verify, timeout, noSpace, permission, notFound, busy }
        private let value: Value
        private init(_ v: Value) { value = v }
        public static let io = Code(.io)
        public static let protocolViolation = Code(.protocolViolation)
        public static let auth = Code(.auth)
        public static let path = Code(.path)
        public static let usage = Code(.usage)
        public static let remote = Code(.remote)
        public static let verify = Code(.verify)
        public static let timeout = Code(.timeout)
        public static let noSpace = Code(.noSpace)
        /// The filesystem refused the account the work runs as (EACCES, EPERM): a rerun meets it again.
        public static let permission = Code(.permission)
        /// The named file or directory does not exist (ENOENT, ENOTDIR): a rerun meets it again.
        public static let notFound = Code(.notFound)
        /// The peer refused for now (its connection limits): a later attempt may be admitted.
        public static let busy = Code(.busy)
        public var description: String { value.rawValue }

        /// The name scripts and the daemon's API show: snake case (`no_space`, `protocol_violation`).
        public var name: String {
            var out = ""
            for c in value.rawValue {
                if c.isUppercase { out += "_" + c.lowercased() } else { out.append(c) }
            }
            return out
        }

        /// The code's number on the wire (ERROR frames, FILE_DONE verdicts; docs/CONTRACT.md).
        /// Stable: a number is never reused or renumbered; new codes take the next one. 0 is
        /// "no code" (what peers before codes sent), 63 the largest (six bits of a flags byte).
        public var wire: UInt8 {
            switch value {
            case .io: 1
            case .protocolViolation: 2
            case .auth: 3
            case .path: 4
            case .usage: 5
            case .remote: 6
            case .verify: 7
            case .timeout: 8
            case .noSpace: 9
            case .permission: 10
            case .notFound: 11
            case .busy: 12
            }
        }

        /// The code a wire number names; nil for 0 and for numbers this side does not know (a
        /// newer peer's code: the caller keeps the peer's message and uses `.remote`).
        public init?(wire: UInt8) {
            guard let c = Code.all.first(where: { $0.wire == wire }) else { return nil }
            self = c
        }

        /// The code of a failed system call's errno.
        public init(errno e: Int32) {
            self = switch e {
            case ENOSPC, EDQUOT: .noSpace
            case ETIMEDOUT, ETIME: .timeout
            case EACCES, EPERM: .permission
            case ENOENT, ENOTDIR: .notFound
            default: .io
            }
        }

        /// The code `name` gives (`no_space`), or nil for a name this side does not know.
        public init?(name: String) {
            guard let c = Code.all.first(where: { $0.name == name }) else { return nil }
            self = c
        }

        /// "; rerun resumes" for a failure a rerun can mend, "" for one it meets again
        /// (permissions, a missing directory, a path or usage refusal): appended to a file's message.
        public var rerunHint: String { rerunResumes ? "; rerun resumes" : "" }

        /// Whether running the same transfer again can get past a failure with this code: not
        /// for refusals (authentication, paths, usage, permissions, a missing file), which a
        /// rerun would meet again.
        public var rerunResumes: Bool { self != .auth && self != .path && self != .usage && self != .permission && self != .notFound }

        public static let all: [Code] = [.io, .protocolViolation, .auth, .path, .usage, .remote, .verify, .timeout, .noSpace, .permission, .notFound, .busy]
    }

    public var code: Code
    public var message: String
    public var resumable: Bool
    /// Said by the peer (its ERROR frame or a file's verdict), not found on this side: `code`
    /// is then the peer's own (`.remote` when the peer sent none), and this side neither
    /// sends it back nor lets its own later errors (a broken pipe) replace it.
    public var fromPeer = false

    public init(_ code: Code, _ message: String, resumable: Bool = false) {
        self.code = code
        self.message = message
        self.resumable = resumable
    }

    public var description: String { message }

    /// Whether running the same transfer again continues it: not for refusals (authentication,
    /// paths, usage), which a rerun would meet again.
    public var rerunResumes: Bool { code.rerunResumes }

    /// An error from a system call or io_uring completion (`-errno` or errno), with context.
    static func system(_ what: String, errno e: Int32, resumable: Bool = false) -> TransferError {
        let text = String(cString: strerror(e))
        return TransferError(Code(errno: e), "\(what): \(text) (\(e))", resumable: resumable)
    }

    static func protocolError(_ message: String) -> TransferError {
        TransferError(.protocolViolation, "protocol error: \(message)")
    }
}

/// Retries a system call on EINTR and turns -1 into a typed error naming the call.
@inline(__always)
func sys(_ what: @autoclosure () -> String, _ call: () -> Int32) throws -> Int32 {
    for _ in 0..<1000 {
        let r = call()
        if r >= 0 { return r }
        let e = errno
        if e == EINTR { continue }
        throw TransferError.system(what(), errno: e)
    }
    throw TransferError(.io, "\(what()): interrupted too often")
}
