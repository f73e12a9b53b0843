import Foundation
import Transfer

/// One `#FERRY stage_in|stage_out [--optional] [--checksum] SRC DST` line of a job script.
/// SRC and DST are `gfs://...`, `ferry://...` or absolute local paths; `%j` is the job id and
/// `%%` a percent sign. The same rules as `contrib/slurm/burst_buffer.lua` (which checks them
/// inside slurmctld at submission): the two must agree, and the tests hold both to one set of
/// scripts.
public struct StageDirective: Sendable, Codable, Equatable {
    public enum Direction: String, Sendable, Codable { case stageIn = "stage_in", stageOut = "stage_out" }
    public var direction: Direction
    public var source: String
    public var destination: String
    public var optional: Bool
    public var checksum: Bool
    /// 1-based line in the script.
    public var line: Int

    public init(direction: Direction, source: String, destination: String, optional: Bool = false, checksum: Bool = false, line: Int = 0) {
        self.direction = direction; self.source = source; self.destination = destination
        self.optional = optional; self.checksum = checksum; self.line = line
    }
}

public struct DirectiveError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ d: String) { description = d }
}

public enum Directives {
    static let prefix = "#FERRY"

    /// The directives of a job script, in order. Only the leading comment block counts, as
    /// Slurm scans it: empty lines are skipped, and the first line that does not start with
    /// '#' ends it (a line of only blanks does too); a `#FERRY` line after that would be
    /// ignored by the scheduler and is an error here. `jobID` replaces `%j` (nil: left as is,
    /// for a copy Slurm already substituted).
    public static func parse(_ script: String, jobID: String?) throws -> [StageDirective] {
        var out: [StageDirective] = []
        var inBlock = true
        var blankEnd: Int?
        let lines = script.split(separator: "\n", omittingEmptySubsequences: false)
        for (i, sub) in lines.enumerated() {
            let n = i + 1
            let line = String(sub)
            if inBlock {
                if line.isEmpty { continue }
                if line.hasPrefix("#") {
                    if line.hasPrefix(prefix) { out.append(try directive(line, n, jobID: jobID)) }
                    continue
                }
                inBlock = false
                if line.allSatisfy({ $0 == " " || $0 == "\t" }) { blankEnd = n }
            }
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if trimmed.hasPrefix(prefix), trimmed.dropFirst(prefix.count).first.map({ $0 == " " || $0 == "\t" }) ?? true {
                if let b = blankEnd {
                    throw DirectiveError("line \(n): #FERRY directive after line \(b), which holds only blanks and so ends Slurm's directive block, would be ignored by Slurm; empty line \(b) or move the directive above")
                }
                throw DirectiveError("line \(n): #FERRY directive after the first command would be ignored by Slurm; move it above")
            }
        }
        return out
    }

    static func directive(_ line: String, _ n: Int, jobID: String?) throws -> StageDirective {
        let rest = line.dropFirst(prefix.count)
        if let c = rest.first, c != " " && c != "\t" {
            throw DirectiveError("line \(n): unknown directive '#FERRY\(rest.prefix { $0 != " " && $0 != "\t" })' (expected '#FERRY stage_in' or '#FERRY stage_out')")
        }
        if line.contains("\r") { throw DirectiveError("line \(n): carriage return in a #FERRY line (DOS line endings)") }
        if line.hasSuffix("\\") { throw DirectiveError("line \(n): line continuation ('\\' at the end) is not supported in #FERRY lines") }
        if line.contains("\\\\") { throw DirectiveError("line \(n): '\\\\' is not allowed in #FERRY lines") }
        let words = rest.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let verb = words.first else { throw DirectiveError("line \(n): #FERRY needs stage_in or stage_out") }
        guard let direction = StageDirective.Direction(rawValue: verb) else {
            throw DirectiveError("line \(n): unknown #FERRY verb '\(verb)' (expected stage_in or stage_out)")
        }
        var d = StageDirective(direction: direction, source: "", destination: "", line: n)
        var positional: [String] = []
        for w in words.dropFirst() {
            if w.hasPrefix("-") {
                switch (w, direction) {
                case ("--optional", _): d.optional = true
                case ("--checksum", .stageIn): d.checksum = true
                default: throw DirectiveError("line \(n): unknown option '\(w)' for \(verb)")
                }
            } else {
                positional.append(w)
            }
        }
        guard positional.count == 2 else {
            throw DirectiveError("line \(n): \(verb) needs SRC and DST, got \(positional.count) argument\(positional.count == 1 ? "" : "s")")
        }
        for (k, what) in ["SRC", "DST"].enumerated() {
            let p = positional[k]
            if let bad = badPercent(p) {
                throw DirectiveError("line \(n): \(what) '\(p)' contains '\(bad)'; only %j (job id) and %% are allowed")
            }
            guard validLocation(p) else { throw DirectiveError("line \(n): \(what) '\(p)' is not gfs://..., ferry://... or an absolute path") }
            positional[k] = jobID.map { substitute(p, jobID: $0) } ?? p
        }
        d.source = positional[0]
        d.destination = positional[1]
        return d
    }

    /// gfs://..., ferry://... (as `Location` parses them) or an absolute local path.
    static func validLocation(_ s: String) -> Bool {
        switch try? Location(parsing: s) {
        case .ferry?, .gfs?: return true
        case .local(let p)?: return p.hasPrefix("/")
        case nil: return false
        }
    }

    static func badPercent(_ s: String) -> String? {
        var it = s.makeIterator()
        while let c = it.next() {
            guard c == "%" else { continue }
            let next = it.next()
            if next != "j" && next != "%" { return "%" + (next.map(String.init) ?? "") }
        }
        return nil
    }

    static func substitute(_ s: String, jobID: String) -> String {
        var out = ""
        var it = s.makeIterator()
        while let c = it.next() {
            if c == "%" {
                let next = it.next()
                out += next == "j" ? jobID : "%"
            } else {
                out.append(c)
            }
        }
        return out
    }
}
