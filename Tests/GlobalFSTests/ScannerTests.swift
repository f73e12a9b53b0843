import Foundation
import Glibc
import Testing
@testable import GlobalFS

@Suite("Scanner")
struct ScannerTests {
    struct Stop: Error {}

    @Test("a wide tree (more directories than the shared stack holds) on 1 and 4 threads: every directory once, complete")
    func wide() throws {
        let t = try Tree()
        for i in 0..<1500 { try t.file("w/d\(i)/e/f\(i)", size: i % 7) }
        t.fifo("w/pipe")
        let expected = t.snapshot()
        for threads in [1, 4] {
            var seen: [String: Int] = [:]
            var entries: [Snap] = []
            let stats = try Scanner(root: t.root, threads: threads).scan { d in
                seen[d.dir, default: 0] += 1
                for e in d.entries {
                    let p = d.dir.isEmpty ? e.name : d.dir + "/" + e.name
                    entries.append(Snap(path: Array(p.utf8), kind: e.kind, size: e.kind == .directory ? 0 : e.size, target: e.target))
                }
            }
            #expect(seen.count == 1 + 1 + 1500 * 2 && seen.values.allSatisfy { $0 == 1 })
            #expect(stats.directories == seen.count && stats.entries == expected.count && stats.skipped == 1 && stats.unreadable == 0)
            #expect(entries.sorted { $0.path.lexicographicallyPrecedes($1.path) } == expected)
        }
    }

    @Test("the caller's error stops the walk and comes back; no thread is left waiting")
    func stops() throws {
        let t = try Tree()
        for i in 0..<300 { try t.file("d\(i)/x/y", size: 1) }
        var calls = 0
        #expect(throws: Stop.self) {
            try Scanner(root: t.root, threads: 3).scan { _ in
                calls += 1
                if calls == 5 { throw Stop() }
            }
        }
        #expect(calls == 5)
        #expect(throws: CatalogError.self) { try Scanner(root: t.full("nothing")) }
        #expect(throws: CatalogError.self) { try Scanner(root: t.full("d1/x/y")) }  // a file
    }
}
