import CLiburing
import Glibc

/// One entry of a listing (`ferry ls`, `du`, `stat`, `check`, `cp --dry-run`).
public struct ListEntry: Sendable, Equatable {
    public enum Kind: String, Sendable { case file, directory, symlink, special }
    public var kind: Kind
    /// Relative to the listed root ("" is the root itself).
    public var path: String
    public var size: UInt64
    public var mtimeSeconds: Int64
    public var mtimeNanoseconds: UInt32
    /// Permission bits; a special file's type bits too.
    public var mode: UInt32
    public var linkTarget: String
    /// The whole-file digest (a listing with digests, regular files only).
    public var digest: ChunkHash?
    /// Why a file's digest could not be computed (unreadable), when asked for.
    public var problem: String?

    init(_ e: ManifestEntry) {
        switch e.kind {
        case .file: kind = .file
        case .directory: kind = .directory
        case .symlink: kind = .symlink
        case .special: kind = .special
        }
        path = e.path
        size = e.size
        mtimeSeconds = e.mtimeSeconds
        mtimeNanoseconds = e.mtimeNanoseconds
        mode = e.mode
        linkTarget = e.linkTarget
    }

    var manifest: ManifestEntry {
        let k: EntryKind = switch kind {
        case .file: .file
        case .directory: .directory
        case .symlink: .symlink
        case .special: .special
        }
        return ManifestEntry(id: 0, kind: k, path: path, size: size, mtimeSeconds: mtimeSeconds, mtimeNanoseconds: mtimeNanoseconds, mode: mode, linkTarget: linkTarget)
    }
}

/// What a listing asks for.
public struct ListRequest: Sendable {
    /// 0: the root alone (`stat`), 1: a directory's entries (`ls`), `.max`: the whole tree.
    public var depth: UInt32 = .max
    /// Each regular file's digest (reads every byte, with the user's rights).
    public var digests = false
    public var filters = FilterRules()

    public init(depth: UInt32 = .max, digests: Bool = false, filters: FilterRules = FilterRules()) {
        self.depth = depth
        self.digests = digests
        self.filters = filters
    }
}

/// Listings and deletions: the tree operations beside copies. A listing is streamed on the
/// control connection in frames of up to 4,096 entries (the server walks as the client reads:
/// a tree of any size costs one open directory per level on the server and nothing more);
/// a deletion is a list of relative paths the server removes beneath the destination.
enum Listing {
    /// The digest of a listing uses the default chunk size on both sides, so that a local
    /// and a remote listing of the same bytes agree.
    static let digestChunkBytes = Wire.chunkBytesDefault

    /// Walks `rootFd` (a regular file or a directory, opened O_RDONLY; owned) and hands each
    /// entry to `each`, with its digest when asked.
    static func walk(rootFd: Int32, request: ListRequest, each: (ListEntry) throws -> Void) throws -> Int {
        defer { Glibc.close(rootFd) }
        let walker = TreeWalker(rootFd: rootFd, recursive: true, filter: request.filters, depth: request.depth)
        var buffer: UnsafeMutableRawPointer?
        defer { buffer.map { free($0) } }
        var rootStat = stat()
        _ = fstat(rootFd, &rootStat)
        let rootIsFile = rootStat.st_mode & S_IFMT == S_IFREG
        while let m = try walker.next() {
            var e = ListEntry(m)
            if request.digests && e.kind == .file {
                if buffer == nil { buffer = malloc(digestChunkBytes) }
                do {
                    let fd = rootIsFile && e.path.isEmpty
                        ? dup(rootFd)
                        : try Paths.openData(beneath: rootFd, e.path, flags: O_RDONLY | O_NOFOLLOW, noSymlinks: true)
                    defer { Glibc.close(fd) }
                    e.digest = try digest(fd: fd, size: e.size, buffer: buffer!)
                } catch {
                    e.problem = asTransferError(error).message
                }
            }
            try each(e)
        }
        return walker.excluded
    }

    /// The whole-file digest of `size` bytes of `fd`, as a copy's receiver computes it.
    static func digest(fd: Int32, size: UInt64, buffer: UnsafeMutableRawPointer) throws -> ChunkHash {
        var d = FileDigest()
        var offset: UInt64 = 0
        repeat {
            let n = Int(min(UInt64(digestChunkBytes), size - offset))
            var got = 0
            while got < n {
                let r = pread(fd, buffer + got, n - got, off_t(offset) + off_t(got))
                if r < 0 && errno == EINTR { continue }
                if r < 0 {
                    let e = errno
                    _ = d.finish()
                    throw TransferError.system("cannot read", errno: e)
                }
                if r == 0 {
                    _ = d.finish()
                    throw TransferError(.io, "changed while being read (shorter than listed)")
                }
                got += r
            }
            d.add(ChunkHash.of(buffer, n))
            offset += UInt64(n)
        } while offset < size
        return d.finish()
    }

    // MARK: wire

    /// One listing frame: u32 count, then per entry a manifest entry and u8 digest state
    /// (0: none, 1: a digest follows, 2: a message says why there is none).
    static func encode(_ entries: [ListEntry]) -> [UInt8] {
        var w = ByteWriter(capacity: 64 * entries.count + 4)
        w.u32(UInt32(entries.count))
        for e in entries {
            e.manifest.encode(&w)
            if let d = e.digest {
                w.u8(1)
                w.hash(d)
            } else if let p = e.problem {
                w.u8(2)
                w.string(String(decoding: p.utf8.prefix(1000), as: UTF8.self))
            } else {
                w.u8(0)
            }
        }
        return w.bytes
    }

    static func decode(_ payload: [UInt8]) throws -> [ListEntry] {
        var r = ByteReader(payload)
        let n = Int(try r.u32())
        guard n <= Wire.manifestEntriesPerFrameMax else { throw TransferError.protocolError("listing frame too long") }
        var out: [ListEntry] = []
        out.reserveCapacity(n)
        for _ in 0..<n {
            let m = try ManifestEntry.decode(&r)
            guard m.size != ManifestEntry.streamSize else { throw TransferError.protocolError("a stream in a listing") }
            _ = try Paths.components(of: m.path)
            var e = ListEntry(m)
            switch try r.u8() {
            case 0: break
            case 1 where m.kind == .file: e.digest = try r.hash()
            case 2 where m.kind == .file: e.problem = try r.string(maxBytes: 1000)
            default: throw TransferError.protocolError("bad digest state in a listing")
            }
            out.append(e)
        }
        try r.expectEnd()
        return out
    }

    /// Serves a listing on `conn` (the session's identity already adopted): entry frames,
    /// then MANIFEST_END with u64 entries and u64 excluded.
    static func serve(conn: Connection, ring: Ring, rootFd: Int32, request: ListRequest) throws -> UInt64 {
        var batch: [ListEntry] = []
        var bytes = 0
        var count: UInt64 = 0
        func flush() throws {
            guard !batch.isEmpty else { return }
            try conn.send(.manifest, encode(batch), ring: ring)
            batch.removeAll(keepingCapacity: true)
            bytes = 0
        }
        let excluded = try walk(rootFd: rootFd, request: request) { e in
            batch.append(e)
            count += 1
            bytes += 64 + e.path.utf8.count + e.linkTarget.utf8.count
            if batch.count >= Wire.manifestEntriesPerFrameMax || bytes >= Sender.manifestFrameBytesTarget { try flush() }
        }
        try flush()
        var w = ByteWriter()
        w.u64(count)
        w.u64(UInt64(excluded))
        try conn.send(.manifestEnd, w.bytes, ring: ring)
        return count
    }

    // MARK: deletion

    /// Deletion frames: u32 count, then per path u8 (1: not a directory, 2: a directory, removed
    /// only when empty) and the path. The answer (FILE_DONE): u32 count of failures, then per
    /// failure the path and why.
    static let deletionsPerFrameMax = 4096

    static func encodeDeletions(_ items: ArraySlice<(path: String, isDirectory: Bool)>) -> [UInt8] {
        var w = ByteWriter()
        w.u32(UInt32(items.count))
        for i in items {
            w.u8(i.isDirectory ? 2 : 1)
            w.string(i.path)
        }
        return w.bytes
    }

    /// Removes one entry beneath `root`: its parent is resolved beneath the root without
    /// following any symlink (a link in the way is refused, never followed), the entry itself
    /// is unlinked by name (a symlink is removed, not its target). The root itself, and
    /// Ferry's partial and journal files, are never named. Returns why it failed, or nil.
    static func remove(beneath root: Int32, path: String, isDirectory: Bool) -> String? {
        do {
            let parts = try Paths.components(of: path)
            guard let last = parts.last else { return "refusing to delete the destination itself" }
            let name = String(last)
            if PartialNames.isHelper(name) { return "refusing to delete Ferry's own helper file" }
            let parent = try Paths.open(beneath: root, parts.dropLast().joined(separator: "/"), flags: FERRY_O_PATH | O_DIRECTORY, noSymlinks: true)
            defer { Glibc.close(parent) }
            var st = stat()
            if fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) != 0 {
                return errno == ENOENT ? nil : String(cString: strerror(errno))
            }
            let isDir = st.st_mode & S_IFMT == S_IFDIR
            guard isDir == isDirectory else { return "changed kind since it was listed (not deleted)" }
            if unlinkat(parent, name, isDir ? AT_REMOVEDIR : 0) != 0 && errno != ENOENT {
                return String(cString: strerror(errno)) + (errno == ENOTEMPTY || errno == EEXIST ? " (new entries appeared in it)" : "")
            }
            return nil
        } catch {
            return asTransferError(error).message
        }
    }

    /// Serves a deletion on `conn` (the session's identity adopted): frames of paths until END.
    static func serveDeletion(conn: Connection, ring: Ring, rootFd: Int32, idleTimeoutNs: Int64) throws -> (deleted: UInt64, failed: UInt64) {
        var deleted: UInt64 = 0
        var failed: UInt64 = 0
        for _ in 0..<Int.max {
            let (type, payload) = try conn.receive(ring: ring, timeoutNs: idleTimeoutNs)
            switch type {
            case .manifest:
                var r = ByteReader(payload)
                let n = Int(try r.u32())
                guard n <= deletionsPerFrameMax else { throw TransferError.protocolError("deletion frame too long") }
                var failures: [(String, String)] = []
                for _ in 0..<n {
                    let kind = try r.u8()
                    guard kind == 1 || kind == 2 else { throw TransferError.protocolError("bad deletion kind") }
                    let path = try r.string(maxBytes: PathLimits.pathBytesMax)
                    if let why = remove(beneath: rootFd, path: path, isDirectory: kind == 2) {
                        failures.append((path, why))
                        failed += 1
                    } else {
                        deleted += 1
                    }
                }
                try r.expectEnd()
                var w = ByteWriter()
                w.u32(UInt32(failures.count))
                for (p, why) in failures {
                    w.string(p)
                    w.string(String(decoding: why.utf8.prefix(1000), as: UTF8.self))
                }
                try conn.send(.fileDone, w.bytes, ring: ring)
            case .end:
                try conn.send(.endAck, ring: ring)
                return (deleted, failed)
            case .ping:
                continue
            default:
                throw TransferError.protocolError("unexpected \(type) in a deletion")
            }
        }
        return (deleted, failed)
    }
}
