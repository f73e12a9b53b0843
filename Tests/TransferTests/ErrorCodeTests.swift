import Glibc
import Testing
@testable import Transfer

/// Error codes on the wire (issue 14 item 5): ERROR frames, FILE_DONE verdicts and
/// SOURCE_FAILED entries carry a `TransferError.Code` in a flags byte (`CodedFlags`).
@Suite("Error codes on the wire")
struct ErrorCodeTests {
    @Test("every code survives an ERROR frame with its message and resumable flag, marked fromPeer")
    func roundTrip() throws {
        for code in TransferError.Code.all {
            for resumable in [false, true] {
                let (flags, payload) = ErrorFrame.encode(TransferError(code, "cannot write 'a': No space left on device (28)", resumable: resumable))
                let e = try ErrorFrame.decode(flags: flags, payload: payload)
                #expect(e.code == code && e.resumable == resumable && e.fromPeer, "\(code) \(e)")
                #expect(e.message == "remote error (\(code.name)): cannot write 'a': No space left on device (28)", "\(e.message)")
            }
        }
        #expect(TransferError.Code.noSpace.name == "no_space" && TransferError.Code.protocolViolation.name == "protocol_violation")
        // Wire numbers are distinct, nonzero and fit the six bits; each maps back.
        let numbers = TransferError.Code.all.map(\.wire)
        #expect(Set(numbers).count == numbers.count && numbers.allSatisfy { (1...CodedFlags.codeMax).contains($0) })
        for c in TransferError.Code.all { #expect(TransferError.Code(wire: c.wire) == c) }
    }

    @Test("frames of peers from before codes (flags 0 or 1, plain text) still decode, as .remote")
    func oldPeers() throws {
        let e = try ErrorFrame.decode(flags: 1, payload: Array("refused: bad token".utf8))
        #expect(e.code == .remote && e.resumable && e.fromPeer && e.message == "remote error: refused: bad token")
        let f = try ErrorFrame.decode(flags: 0, payload: [])
        #expect(f.code == .remote && !f.resumable && f.message == "remote error: ")
        // And what this side sends means the same to them: bit 0 is still "resumable" and the
        // payload is only the text.
        let (flags, payload) = ErrorFrame.encode(TransferError(.permission, "no", resumable: true))
        #expect(flags & 1 == 1 && payload == Array("no".utf8))
    }

    @Test("garbage: code bits without the flag, the flag without a code, oversized text are protocol errors; unknown codes and bad bytes are kept")
    func garbage() throws {
        for flags: UInt8 in [0b100, 0b101, 0xFC, 0xFD] {
            #expect { try ErrorFrame.decode(flags: flags, payload: Array("x".utf8)) } throws: { ($0 as? TransferError)?.code == .protocolViolation }
        }
        for flags: UInt8 in [0b10, 0b11] {
            #expect { try ErrorFrame.decode(flags: flags, payload: []) } throws: { ($0 as? TransferError)?.code == .protocolViolation }
        }
        #expect { try ErrorFrame.decode(flags: 0, payload: [UInt8](repeating: 0x41, count: ErrorFrame.messageBytesMax + 1)) } throws: {
            ($0 as? TransferError)?.code == .protocolViolation
        }
        // A newer peer's code this side does not know: its word stands, as .remote.
        let unknown = try ErrorFrame.decode(flags: 0b10 | 63 << 2, payload: Array("later".utf8))
        #expect(unknown.code == .remote && unknown.fromPeer && unknown.message.hasSuffix("later"))
        // Invalid UTF-8, NUL, escape sequences and line breaks never reach a terminal or a job's message raw.
        let hostile = try ErrorFrame.decode(flags: CodedFlags.pack(false, .auth), payload: [0xFF, 0xFE, 0x00, 0x1B] + Array("[31mred\nline\u{85}".utf8))
        #expect(hostile.code == .auth)
        #expect(!hostile.message.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F || (0x80..<0xA0).contains($0.value) }, "\(hostile.message)")
        // Every flags byte either decodes or throws a protocol error; never anything else.
        for flags in UInt8.min...UInt8.max {
            do { _ = try ErrorFrame.decode(flags: flags, payload: Array("m".utf8)) } catch let e as TransferError {
                #expect(e.code == .protocolViolation)
            }
        }
    }

    @Test("a long message is cut at 4 KiB on a character boundary")
    func longMessage() throws {
        let text = String(repeating: "é", count: 3000)  // 6000 bytes
        let (flags, payload) = ErrorFrame.encode(TransferError(.io, text))
        #expect(payload.count <= ErrorFrame.messageBytesMax && payload.count == 4096)
        let e = try ErrorFrame.decode(flags: flags, payload: payload)
        #expect(!e.message.contains("\u{FFFD}"))
        let odd = "x" + text
        let (_, p2) = ErrorFrame.encode(TransferError(.io, odd))
        #expect(p2.count == 4095 && String(validating: p2, as: UTF8.self) != nil)
    }

    @Test("source failures carry their code; those of older peers (flags 0, 1) decode without one")
    func sourceFailures() throws {
        let list = [SourceFailure(id: 7, changed: false, message: "cannot read 'a': Permission denied (13)", code: .permission),
                    SourceFailure(id: 8, changed: true, message: "changed", code: .io),
                    SourceFailure(id: 9, changed: true, message: "old")]
        let back = try SourceFailure.decode(SourceFailure.encode(list[...]))
        #expect(back == list)
        var w = ByteWriter()
        w.u32(1); w.u64(1); w.u8(1); w.string("old peer")
        #expect(try SourceFailure.decode(w.bytes) == [SourceFailure(id: 1, changed: true, message: "old peer")])
        var bad = ByteWriter()
        bad.u32(1); bad.u64(1); bad.u8(0b100); bad.string("x")
        #expect(throws: TransferError.self) { try SourceFailure.decode(bad.bytes) }
    }

    @Test("system errors map to codes: no space, permission, not found")
    func errnoCodes() {
        #expect(TransferError.system("w", errno: ENOSPC).code == .noSpace)
        #expect(TransferError.system("w", errno: EDQUOT).code == .noSpace)
        #expect(TransferError.system("w", errno: EACCES).code == .permission)
        #expect(TransferError.system("w", errno: ENOENT).code == .notFound)
        #expect(TransferError.system("w", errno: EIO).code == .io)
        #expect(!TransferError(.notFound, "x").rerunResumes && TransferError(.busy, "x").rerunResumes)
    }
}
