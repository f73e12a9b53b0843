// The Debian package (issue 17): built by scripts/package.sh (scripts/test.sh builds it and
// names it in FERRY_TEST_DEB), lintian-clean, installed and removed on this machine; its
// binary runs with the Swift toolchain out of reach and the transfer server works under the
// unit's capability bounding set.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Debian package", .serialized, .enabled(if: ProcessInfo.processInfo.environment["FERRY_TEST_DEB"] != nil))
struct PackageTests {
    static var deb: String { ProcessInfo.processInfo.environment["FERRY_TEST_DEB"] ?? "" }

    /// The directory of the toolchain the development build links against (its RUNPATH).
    static func toolchainRoot() -> String? {
        let r = runTool("/usr/bin/readelf", ["-d", E2E.ferryBinary])
        guard let line = r.output.split(separator: "\n").first(where: { $0.contains("RUNPATH") }),
              let open = line.firstIndex(of: "["), let close = line.lastIndex(of: "]") else { return nil }
        let paths = line[line.index(after: open)..<close].split(separator: ":").map(String.init).filter { $0.hasPrefix("/") }
        // /opt/swift/usr/lib/swift/linux → /opt/swift
        guard let p = paths.first, let r = p.range(of: "/usr/lib/swift") else { return nil }
        return String(p[..<r.lowerBound])
    }

    @Test("the package: lintian reports no error or warning, dpkg installs it (binary, units that systemd-analyze accepts, man pages, completions, /etc/ferry), reinstalling keeps /etc/ferry and the database, remove keeps the configuration, purge removes it")
    func installAndRemove() throws {
        #expect(FileManager.default.fileExists(atPath: Self.deb), "no package at \(Self.deb)")
        // No error and no warning (the tags accepted, each for its reason, in lintian-suppress).
        let lint = runTool("/usr/bin/lintian", ["--fail-on", "error,warning", "--suppress-tags-from-file", E2E.packageRoot + "/packaging/deb/lintian-suppress", Self.deb],
                           timeout: 300)
        #expect(lint.status == 0 && !lint.output.split(separator: "\n").contains { $0.hasPrefix("E:") || $0.hasPrefix("W:") }, "\(lint.output)")
        _ = runTool("/usr/bin/dpkg", ["--purge", "ferry"], timeout: 120)
        defer { _ = runTool("/usr/bin/dpkg", ["--purge", "ferry"], timeout: 120) }

        let install = runTool("/usr/bin/dpkg", ["-i", Self.deb], timeout: 300)
        #expect(install.status == 0, "\(install.output)")
        let version = runTool("/usr/bin/ferry", ["--version"])
        #expect(version.status == 0 && version.output.contains("commit "), "\(version.output)")
        for f in ["/etc/ferry/ferry.toml", "/etc/ferry/stage.env", "/usr/share/man/man1/ferry.cp.1.gz", "/usr/share/bash-completion/completions/ferry",
                  "/usr/share/ferry/slurm/burst_buffer.lua", "/usr/share/ferry/pbs/prologue", "/usr/share/ferry/prometheus/ferry-rules.yml", "/usr/share/ferry/grafana/ferry.json", "/usr/share/doc/ferry/copyright"] {
            #expect(FileManager.default.fileExists(atPath: f), "\(f) not installed")
        }
        #expect(getpwnam("ferry") != nil, "the service account")
        let units = ["/lib/systemd/system/ferry.service", "/lib/systemd/system/ferry-sweep.service", "/lib/systemd/system/ferry-sweep.timer"]
        let verify = runTool("/usr/bin/systemd-analyze", ["verify", "--man=no"] + units, timeout: 60)
        #expect(verify.status == 0 && verify.output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(verify.output)")
        // The man page renders (man finds it by name).
        let man = runTool("/usr/bin/man", ["-P", "cat", "ferry.cp"], timeout: 60, env: ["MANWIDTH": "100"])
        #expect(man.status == 0 && man.output.contains("--dry-run") && man.output.contains("--delete"), "\(man.output.prefix(400))")

        // The example configuration is checked by the installed binary: it names files a
        // center must still create, and says so, each at its line.
        let check = runTool("/usr/bin/ferry", ["serve", "--check", "--config", "/etc/ferry/ferry.toml"])
        #expect(check.status != 0 && check.output.contains("ferry.toml:") && check.output.contains("example.crt"), "\(check.output)")

        // An operator's edits and the database survive a reinstall (an upgrade's path).
        let edited = "# edited by the operator\n" + ((try? String(contentsOfFile: "/etc/ferry/ferry.toml", encoding: .utf8)) ?? "")
        try edited.write(toFile: "/etc/ferry/ferry.toml", atomically: true, encoding: .utf8)
        try writeFile("/var/lib/ferry/jobs.sqlite", Array("database".utf8))
        let again = runTool("/usr/bin/dpkg", ["--force-confold", "-i", Self.deb], timeout: 300)
        #expect(again.status == 0, "\(again.output)")
        #expect((try? String(contentsOfFile: "/etc/ferry/ferry.toml", encoding: .utf8)) == edited)
        #expect(readFile("/var/lib/ferry/jobs.sqlite") == Array("database".utf8))

        let remove = runTool("/usr/bin/dpkg", ["-r", "ferry"], timeout: 120)
        #expect(remove.status == 0 && !FileManager.default.fileExists(atPath: "/usr/bin/ferry"), "\(remove.output)")
        #expect(FileManager.default.fileExists(atPath: "/etc/ferry/ferry.toml") && FileManager.default.fileExists(atPath: "/var/lib/ferry/jobs.sqlite"))
        let purge = runTool("/usr/bin/dpkg", ["--purge", "ferry"], timeout: 120)
        #expect(purge.status == 0 && !FileManager.default.fileExists(atPath: "/etc/ferry/ferry.toml") && !FileManager.default.fileExists(atPath: "/var/lib/ferry"), "\(purge.output)")
    }

    @Test("the packaged binary runs a transfer with the Swift toolchain hidden (where the development build does not even start), its server under the unit's capability bounding set, acting as a user's account")
    func staticBinaryBoundedCapabilities() throws {
        let work = FileManager.default.temporaryDirectory.path + "/ferry-pkg-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: work) }
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        // The binary out of the package, without installing it.
        let x = runTool("/usr/bin/dpkg-deb", ["-x", Self.deb, work + "/pkg"], timeout: 120)
        #expect(x.status == 0, "\(x.output)")
        let ferry = work + "/pkg/usr/bin/ferry"
        let toolchain = try #require(Self.toolchainRoot(), "cannot tell the toolchain's directory from the development build")
        // What the unit allows (contrib/systemd/ferry.service: CapabilityBoundingSet).
        let unit = try String(contentsOfFile: E2E.packageRoot + "/contrib/systemd/ferry.service", encoding: .utf8)
        let capLine = try #require(unit.split(separator: "\n").first { $0.hasPrefix("CapabilityBoundingSet=") })
        let caps = capLine.dropFirst("CapabilityBoundingSet=".count).split(separator: " ").map { "+" + $0.dropFirst(4).lowercased() }
        #expect(caps.contains("+setuid") && caps.contains("+setgid") && !caps.contains("+sys_admin"), "\(caps)")

        let sb = try Sandbox("package")
        chmod(sb.path, 0o755)
        let u1 = try IdentityTests.account("ferryu1")
        let root = try sb.dir("export")
        chmod(root, 0o755)
        let mine = try sb.dir("export/u1")
        chown(mine, u1.uid, u1.gid)
        let token = try sb.issueToken(user: "ferryu1", scopes: ["rw:/"], name: "u1.token")
        let src = try sb.dir("local") + "/data.bin"
        try writeRandomFile(src, size: 3 * E2E.MiB + 17)
        chmod(sb.path + "/local", 0o755)
        chmod(src, 0o644)
        let port = try freeLoopbackPort()
        // In a mount namespace of its own: the toolchain's directory covered by an empty tmpfs.
        let script = """
        set -u
        mount -t tmpfs -o size=1m,mode=0755 none '\(toolchain)' || { echo "cannot hide the toolchain"; exit 3; }
        if '\(E2E.ferryBinary)' --version >/dev/null 2>&1; then echo "the development build started without its toolchain"; exit 4; fi
        '\(ferry)' --version || exit 5
        setpriv --bounding-set=-all,\(caps.joined(separator: ",")) --inh-caps=-all \\
          '\(ferry)' serve --root '\(root)' --listen 127.0.0.1:\(port) --cert '\(sb.centerCert)' --key '\(sb.centerKey)' --ca '\(sb.ca)' > '\(work)/serve.out' 2> '\(work)/serve.err' &
        server=$!
        for i in $(seq 1 100); do grep -q 'listening on' '\(work)/serve.out' 2>/dev/null && break; sleep 0.1; done
        grep CapBnd /proc/$server/status
        '\(ferry)' cp --ca '\(sb.ca)' --token-file '\(token)' '\(src)' ferry://127.0.0.1:\(port)/u1/data.bin; rc=$?
        kill $server; wait $server
        echo "cp=$rc"
        """
        let r = runTool("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/bash", "-c", script], timeout: 120, env: ["FERRY_CONFIG": ""])
        #expect(r.status == 0 && r.output.contains("cp=0") && r.output.contains("commit "), "\(r.output)\nserver: \((try? String(contentsOfFile: work + "/serve.err", encoding: .utf8)) ?? "")")
        // The bounding set the server ran with is the unit's: setuid, setgid, chown, fowner,
        // dac_override, dac_read_search, ipc_lock = bits 7, 6, 0, 3, 1, 2, 14.
        #expect(r.output.contains("CapBnd:\t00000000000040cf"), "\(r.output)")
        #expect(filesIdentical(src, mine + "/data.bin"))
        #expect(IdentityTests.owner(mine + "/data.bin")?.uid == u1.uid, "the server acted as the user's account under the bounding set")
    }
}
