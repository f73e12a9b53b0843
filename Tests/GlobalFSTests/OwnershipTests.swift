import Foundation
import Glibc
import Testing
import TestSupport
import Transfer
@testable import GlobalFS

/// Issue 13: dataset names have owners. Names are per center (UNIQUE center, name, version);
/// only a dataset's owner, or an operator, registers it again, changes its readers or removes
/// it; a peer's mirror never writes a dataset registered here.
@Suite("Global Files dataset ownership")
struct OwnershipTests {
    @Test("another user cannot take over a dataset name (re-register, readers, removal); an operator can; the owner keeps control", arguments: Backend.allCases)
    func takeOver(_ backend: Backend) throws {
        let mine = try Tree()
        try mine.file("private/secret.txt", size: 10)
        let theirs = try Tree()
        try theirs.file("planted.txt", size: 20)
        let cat = try Catalog(database: try backend.newDatabase())
        let reg = try cat.register(root: mine.root, dataset: "results", owner: "alice", center: "c1")
        let before = try cat.dataset(reg.dataset, as: .operator)

        // Bob registers his tree under alice's name, making it public: refused, nothing changes.
        do {
            try cat.register(root: theirs.root, dataset: "results", owner: "bob", center: "c1", readers: ["*"])
            Issue.record("bob took over alice's dataset")
        } catch let e as CatalogError {
            #expect(e.code == .forbidden, "\(e)")
        }
        let after = try cat.dataset(reg.dataset, as: .operator)
        #expect(after == before, "\(after) vs \(before)")
        #expect(try cat.datasets(visibleTo: Viewer(user: "bob")).isEmpty)
        #expect(try cat.stat(dataset: reg.dataset, path: "private/secret.txt", as: .operator) != nil)
        #expect(try cat.stat(dataset: reg.dataset, path: "planted.txt", as: .operator) == nil)

        // Readers and removal through the owner check: bob cannot see it, so it is missing for
        // him; once he is a reader, changing it is forbidden.
        #expect { try cat.updateDataset(reg.dataset, readers: ["*"], by: Viewer(user: "bob")) } throws: { ($0 as? CatalogError)?.code == .notFound }
        try cat.updateDataset(reg.dataset, readers: ["bob"], by: Viewer(user: "alice"))
        #expect { try cat.updateDataset(reg.dataset, readers: ["*"], by: Viewer(user: "bob")) } throws: { ($0 as? CatalogError)?.code == .forbidden }
        #expect { try cat.deleteDataset(reg.dataset, by: Viewer(user: "bob")) } throws: { ($0 as? CatalogError)?.code == .forbidden }
        #expect(try cat.dataset(reg.dataset, as: .operator).readers == ["bob"])

        // The owner registers again; an operator may too (the owner stays alice).
        try cat.register(root: mine.root, dataset: "results", owner: "alice", center: "c1", readers: [])
        try cat.register(root: mine.root, dataset: "results", owner: "ops", center: "c1", readers: ["carol"], administrator: true)
        let last = try cat.dataset(reg.dataset, as: .operator)
        #expect(last.owner == "alice" && last.readers == ["carol"], "\(last)")
        // Names are per center: bob's "results" at another center is his own dataset.
        let other = try cat.register(root: theirs.root, dataset: "results", owner: "bob", center: "c2")
        #expect(other.dataset != reg.dataset)
        #expect(try cat.dataset(other.dataset, as: .operator).owner == "bob")
        try cat.deleteDataset(reg.dataset, by: Viewer(user: "ops", isOperator: true))
        #expect(throws: CatalogError.self) { try cat.dataset(reg.dataset, as: .operator) }
    }

    @Test("a name has one owner across its versions, and no one registers inside or around another owner's name; the owner and an operator may", arguments: Backend.allCases)
    func nestedAndVersions(_ backend: Backend) throws {
        let mine = try Tree()
        try mine.file("sub/results.txt", size: 10)
        let theirs = try Tree()
        try theirs.file("planted.txt", size: 20)
        let cat = try Catalog(database: try backend.newDatabase())
        let reg = try cat.register(root: mine.root, dataset: "climate/era", owner: "alice", center: "c1")
        // Inside, as another version, unversioned beside a version, around: all refused.
        for (name, version) in [("climate/era/sub", ""), ("climate/era", "2025"), ("climate", ""), ("climate/era/sub/deeper", "v1")] {
            do {
                try cat.register(root: theirs.root, dataset: name, version: version, owner: "bob", center: "c1", readers: ["*"])
                Issue.record("bob registered \(name)@\(version) over alice's climate/era")
            } catch let e as CatalogError {
                #expect(e.code == .forbidden && e.description.contains("would take over paths of 'climate/era'"), "\(name): \(e)")
            }
        }
        // Beside it (a sibling, a name that only starts alike) is anyone's.
        #expect(throws: Never.self) { try cat.register(root: theirs.root, dataset: "climate/other", owner: "bob", center: "c1") }
        #expect(throws: Never.self) { try cat.register(root: theirs.root, dataset: "climate/era2", owner: "bob", center: "c1") }
        // The owner registers another version and a name inside her own; an operator may anything.
        #expect(throws: Never.self) { try cat.register(root: mine.root, dataset: "climate/era", version: "2025", owner: "alice", center: "c1") }
        #expect(throws: Never.self) { try cat.register(root: mine.root, dataset: "climate/era/sub", owner: "alice", center: "c1") }
        #expect(throws: Never.self) { try cat.register(root: theirs.root, dataset: "climate", owner: "ops", center: "c1", administrator: true) }
        #expect(try cat.dataset(reg.dataset, as: .operator).owner == "alice")
    }

    @Test("a peer's mirror never overwrites a dataset registered here, whatever center, name and owner it claims", arguments: Backend.allCases)
    func mirrorCannotTakeOver(_ backend: Backend) throws {
        let mine = try Tree()
        try mine.file("a.txt", size: 10)
        let cat = try Catalog(database: try backend.newDatabase())
        let reg = try cat.register(root: mine.root, dataset: "results", owner: "alice", center: "c1")
        let before = try cat.dataset(reg.dataset, as: .operator)
        // A "peer" sending a dataset of this center, of that name, owned by mallory, public.
        var forged = before
        forged.id = 4242
        forged.owner = "mallory"
        forged.readers = ["*"]
        forged.root = nil
        #expect { _ = try cat.mirrorDataset(forged) } throws: { ($0 as? CatalogError)?.code == .conflict }
        // Its own id, too (a peer guessing the local id).
        forged.id = reg.dataset
        #expect { _ = try cat.mirrorDataset(forged) } throws: { ($0 as? CatalogError)?.code == .conflict }
        #expect(try cat.dataset(reg.dataset, as: .operator) == before)
        #expect(try cat.datasets(visibleTo: Viewer(user: "mallory")).isEmpty)
        // Dropping "its" mirror removes nothing of this center's.
        try cat.dropMirror(center: "c1", remoteID: reg.dataset)
        #expect(try cat.dataset(reg.dataset, as: .operator) == before)
        // And the mirror's rows cannot be changed through the owner checks either.
        var peer = before
        peer.center = "c2"
        peer.id = 9
        peer.owner = "dave"
        let mirrored = try cat.mirrorDataset(peer)
        _ = try cat.mergeMirror(dataset: mirrored, after: ("", ""), page: [], last: true)  // its first pass ends: seen
        #expect { try cat.updateDataset(mirrored, readers: ["*"], by: Viewer(user: "dave")) } throws: { ($0 as? CatalogError)?.code == .forbidden }
    }
}
