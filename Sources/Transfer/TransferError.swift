import Glibc

/// The one error type of the Transfer module. `code` is stable (scripts and the daemon match
/// on it); `message` names the file and the cause; `resumable` says whether re-running the same
/// transfer continues from the journal instead of starting over.
public struct TransferError: Error, CustomStringConvertible, Sendable {
    /// Stable error codes. A struct over a private enum so codes can be added later.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String { case io, protocolViolation, auth, path, usage, remote, verify, timeout, noSpace, permission }
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
        public var description: String { value.rawValue }
    }

    public var code: Code
    public var message: String
    public var resumable: Bool

    public init(_ code: Code, _ message: String, resumable: Bool = false) {
        self.code = code
        self.message = message
        self.resumable = resumable
    }

    public var description: String { message }

    /// Whether running the same transfer again continues it: not for refusals (authentication,
    /// paths, usage), which a rerun would meet again.
    public var rerunResumes: Bool { code != .auth && code != .path && code != .usage && code != .permission }

    /// An error from a system call or io_uring completion (`-errno` or errno), with context.
    static func system(_ what: String, errno e: Int32, resumable: Bool = false) -> TransferError {
        let text = String(cString: strerror(e))
        let code: Code = (e == ENOSPC || e == EDQUOT) ? .noSpace : (e == ETIMEDOUT || e == ETIME ? .timeout : (e == EACCES || e == EPERM ? .permission : .io))
        return TransferError(code, "\(what): \(text) (\(e))", resumable: resumable)
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
