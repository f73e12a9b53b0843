// The test harness's own parts that the other tests trust.
import Foundation
import Glibc
import Testing

@Suite("Harness")
struct HarnessTests {
    @Test("an exited child that nobody reaped yet is seen with its exit status or signal; a running one and a reaped one are not")
    func zombieStatus() throws {
        func spawn(_ script: String) throws -> pid_t {
            var pid: pid_t = 0
            let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup(script), nil]
            defer { argv.forEach { free($0) } }
            guard posix_spawn(&pid, "/bin/sh", nil, nil, argv, environ) == 0 else { throw POSIXError(.EIO) }
            return pid
        }
        let exited = try spawn("exit 3")
        let killed = try spawn("kill -9 $$")
        let running = try spawn("sleep 30")
        defer { kill(running, SIGKILL); var st: Int32 = 0; waitpid(running, &st, 0) }
        // Both short ones exit at once; give them up to 5 s on a loaded host.
        #expect(waitUntil(timeout: 5, interval: 0.02) { exitedChildStatus(exited) != nil && exitedChildStatus(killed) != nil })
        #expect(exitedChildStatus(exited) == 3)
        #expect(exitedChildStatus(killed) == SIGKILL)
        #expect(exitedChildStatus(running) == nil)
        var st: Int32 = 0
        #expect(waitpid(exited, &st, 0) == exited && waitpid(killed, &st, 0) == killed)
        #expect(exitedChildStatus(exited) == nil, "reaped: no /proc entry any more")
        // runTool still reports what the tool said and how it ended.
        let r = runTool("/bin/sh", ["-c", "echo said; exit 4"])
        #expect(r.status == 4 && r.output == "said\n", "\(r)")
    }
}
