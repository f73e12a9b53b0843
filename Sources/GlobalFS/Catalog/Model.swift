import Foundation

/// What a catalog entry is. Stored as one letter ('f', 'd', 'l') because the files table holds
/// tens of millions of rows and the kind is in every one of them.
public enum EntryKind: String, Sendable, Codable, CaseIterable {
    case file = "f", directory = "d", symlink = "l"
}

/// One file, directory or symlink of a dataset. `dir` is the parent path within the dataset
/// ("" at the top): listing a directory is then a range of the (dataset, dir, name) key, and a
/// page after a name is a seek, not an offset, whatever the directory's size.
public struct Entry: Sendable, Codable, Equatable {
    public var dataset: Int64
    public var dir: String
    public var name: String
    public var kind: EntryKind
    public var size: Int64
    public var mtimeNs: Int64
    /// Permission bits (`st_mode & 0o7777`).
    public var mode: Int64
    /// The engine's digest (XXH3-128 over the per-chunk XXH3-128 at `chunkSize`), 32 hex
    /// digits; nil until hashed, and again after the file changed.
    public var digest: String?
    public var chunkSize: Int64
    /// A symlink's target, as stored in the link (never followed).
    public var target: String?

    public init(dataset: Int64, dir: String, name: String, kind: EntryKind, size: Int64, mtimeNs: Int64, mode: Int64,
                digest: String? = nil, chunkSize: Int64 = 0, target: String? = nil) {
        self.dataset = dataset; self.dir = dir; self.name = name; self.kind = kind; self.size = size
        self.mtimeNs = mtimeNs; self.mode = mode; self.digest = digest; self.chunkSize = chunkSize; self.target = target
    }

    /// The path within the dataset.
    public var path: String { dir.isEmpty ? name : dir + "/" + name }
}

/// Where a `find` stopped: pass the last entry's key back as `after` for the next page.
public struct EntryKey: Sendable, Codable {
    public var dataset: Int64
    public var dir: String
    public var name: String
    public init(dataset: Int64, dir: String, name: String) { self.dataset = dataset; self.dir = dir; self.name = name }
    public init(_ e: Entry) { self.init(dataset: e.dataset, dir: e.dir, name: e.name) }
}

public struct Dataset: Sendable, Codable, Equatable {
    public var id: Int64
    public var center: String
    public var name: String
    public var version: String
    public var owner: String
    public var description: String
    public var license: String
    /// Who may see it besides its owner and operators: "*" (everyone), user names, or
    /// "center:NAME" (a peer daemon acting for its users). Empty: private to the owner.
    public var readers: [String]
    /// The local directory it was registered from (only at its own center).
    public var root: String?
    /// For a dataset learned from a peer center: its id there (the change feed names it so).
    public var remoteID: Int64?
    public var fileCount: Int64
    public var bytes: Int64
    public var created: Int64
    public var updated: Int64

    /// NAME or NAME@VERSION, as it appears in a `gfs://` path.
    public var qualifiedName: String { version.isEmpty ? name : name + "@" + version }
    public var isPublic: Bool { readers.contains("*") }
}

public enum ReplicaState: String, Sendable, Codable, CaseIterable {
    case complete, partial, staging
}

public struct Replica: Sendable, Codable, Equatable {
    public var dataset: Int64
    public var center: String
    public var state: ReplicaState
    public var path: String
    public var files: Int64
    public var bytes: Int64
    public var verifiedAt: Int64?
    /// The daemon job filling a `staging` replica (`ferry replicate`).
    public var job: Int64?

    public init(dataset: Int64, center: String, state: ReplicaState, path: String, files: Int64 = 0, bytes: Int64 = 0, verifiedAt: Int64? = nil, job: Int64? = nil) {
        self.dataset = dataset; self.center = center; self.state = state; self.path = path
        self.files = files; self.bytes = bytes; self.verifiedAt = verifiedAt; self.job = job
    }
}

/// One row of the change feed. A follower keeps the last `seq` it applied and asks for what
/// came after it; `kind` says what to refetch (the dataset, its replicas) or to drop.
public struct Change: Sendable, Codable, Equatable {
    public var seq: Int64
    public var center: String
    public var dataset: Int64
    public var kind: ChangeKind
    public var at: Int64
}

public enum ChangeKind: String, Sendable, Codable, CaseIterable {
    case datasetRegistered = "dataset.register"
    case datasetUpdated = "dataset.update"
    case datasetDeleted = "dataset.delete"
    case replicaUpdated = "replica.update"
    case replicaDeleted = "replica.delete"
}

public struct Center: Sendable, Codable, Equatable {
    public var name: String
    public var api: String
    /// The last change-feed seq applied from this center, and when (Unix seconds).
    public var lastSeq: Int64
    public var lastSync: Int64
    /// False after a failed sync: its entries are stale, not gone.
    public var reachable: Bool
}

/// What a registration did. Counts are of entries (files, directories and symlinks); a
/// directory whose contents changed usually counts as changed itself (its mtime moved).
public struct RegisterSummary: Sendable, Codable, Equatable {
    public var dataset: Int64 = 0
    public var added = 0
    public var changed = 0
    public var removed = 0
    public var unchanged = 0
    /// Files whose digest was computed in this run.
    public var hashed = 0
    /// Regular files and their bytes in the dataset afterwards.
    public var files: Int64 = 0
    public var bytes: Int64 = 0
    /// Devices, FIFOs, sockets and names that are not UTF-8: not recorded.
    public var skipped = 0
    /// Directories that could not be read: their old entries, if any, were kept.
    public var unreadable = 0
    public var firstError: String?
    public var seconds: Double = 0
    public var entriesPerSecond: Double { seconds > 0 ? Double(added + changed + unchanged) / seconds : 0 }
}

public struct DiskUsage: Sendable, Codable, Equatable {
    public var files: Int64
    public var bytes: Int64
    public var directories: Int64
}

/// Who is asking. Every query takes one, so that a private dataset is invisible (not
/// "forbidden": absent) to everyone but its owner, its readers and operators.
public struct Viewer: Sendable {
    public var user: String
    public var isOperator: Bool
    /// The center the viewer asks at, when known: a bare name (`alice`) is that center's user
    /// and matches the owner and readers of that center's datasets only (`Catalog.visible`).
    public var center: String?
    public init(user: String, isOperator: Bool = false, center: String? = nil) { self.user = user; self.isOperator = isOperator; self.center = center }
    /// The center itself (the daemon's own bookkeeping): sees everything.
    public static let `operator` = Viewer(user: "", isOperator: true)
}

public struct CatalogError: Error, CustomStringConvertible, Sendable, Equatable {
    /// `forbidden`: the dataset exists and is another user's (re-register, readers, removal).
    public enum Code: Sendable { case notFound, invalid, conflict, io, forbidden }
    public var code: Code
    public var description: String
    public init(_ code: Code, _ d: String) { self.code = code; description = d }
}
