import Foundation

/// What the command line writes to a terminal, made harmless.
///
/// Much of what `ferry` prints was written by someone else: file names in a listing, a `-v`
/// line or a dry run (on a shared project directory, any member can name a file), the reason a
/// server or a daemon gives for a refusal or a failed job, the paths of a catalog. A name that
/// holds an escape sequence would otherwise reach the user's terminal as a command: retitle the
/// window, move the cursor and overwrite earlier lines ("copy complete"), or, on some
/// terminals, write to the clipboard. GNU `ls` shows such names with `?` or quotes them.
///
/// Ferry shows every control character (C0 but for the line feed and the tab, DEL, C1) and
/// every bidirectional override or isolate (which reorder what is shown: "Trojan source") as a
/// JSON escape, `\u001b`. The escape is the same in human output and in `--json` lines, so a
/// JSON line stays valid JSON with the same meaning. Names are exact only in `--json` output
/// (there `jsonString` escapes C0 already); a script that needs the raw bytes of odd names
/// reads that. Everything printed goes through `print` below (which shadows the standard
/// library's in this module) or `printError`; the progress bar, whose own escape sequence is
/// the one Ferry means, writes raw.
enum Terminal {
    /// `s` with every control character and bidirectional control escaped; line feeds and tabs
    /// kept when `keepLines` (a message of several lines), escaped too otherwise (a name).
    static func visible(_ s: String, keepLines: Bool = true) -> String {
        guard s.unicodeScalars.contains(where: { unsafe($0, keepLines: keepLines) }) else { return s }
        var out = String.UnicodeScalarView()
        for u in s.unicodeScalars {
            guard unsafe(u, keepLines: keepLines) else { out.append(u); continue }
            let hex = String(u.value, radix: 16)
            out.append(contentsOf: ("\\u" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex).unicodeScalars)
        }
        return String(out)
    }

    /// A name (a path, a file name): nothing of it may start a line of its own.
    static func name(_ s: String) -> String { visible(s, keepLines: false) }

    private static func unsafe(_ u: Unicode.Scalar, keepLines: Bool) -> Bool {
        switch u.value {
        case 0x0A, 0x09: return !keepLines
        case 0x00...0x1F, 0x7F...0x9F: return true
        case 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069: return true
        default: return false
        }
    }
}

/// The standard `print` for this module, with `Terminal.visible` applied: the one way the
/// command line writes a line to standard output.
func print(_ line: String) {
    Swift.print(Terminal.visible(line))
}

/// A line (or lines: `text` ends with its own line feed) to standard error, made visible.
func printError(_ text: String) {
    FileHandle.standardError.write(Data(Terminal.visible(text).utf8))
}
