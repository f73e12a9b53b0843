import CLiburing
import Glibc

/// A file's verdict for FILE_DONE: its id, nil when it is done or the code of its failure,
/// and the failure's message.
typealias FileVerdict = (UInt64, TransferError.Code?, String)

/// An open directory beneath the destination, shared by the files being written into it.
final class DirHandle {
    let fd: Int32
    /// Made by this session: none of Ferry's helper files (a journal of an earlier, larger
    /// version of a file) can be in it, so a one-chunk file need not look for one.
    let new: Bool
    init(fd: Int32, new: Bool = false) { self.fd = fd; self.new = new }
    deinit { if fd >= 0 { Glibc.close(fd) } }
}

/// A destination written in place and in order: a character device, a FIFO or standard output
/// named as the destination of a pull. Nothing is created, renamed or changed there (no
/// partial file, journal, mode or time); every chunk is still verified before it is written.
/// Chunks that arrive ahead of their turn (a resent one overtaken by the next) wait in memory,
/// at most `pendingChunksMax` of them. Guarded by the file's lock.
final class SinkTarget {
    let fd: Int32
    let display: String
    var nextIndex = 0
    var pending: [Int: [UInt8]] = [:]
    static let pendingChunksMax = 16

    /// `fd` is owned (closed with the sink).
    init(fd: Int32, display: String) {
        self.fd = fd
        self.display = display
    }
    deinit { Glibc.close(fd) }

    /// Writes all of `n` bytes (blocking: the reader sets the pace); the error (with the
    /// system's code) or nil.
    func writeAll(_ p: UnsafeRawPointer, _ n: Int) -> TransferError? {
        var done = 0
        while done < n {
            let r = Glibc.write(fd, p + done, n - done)
            if r < 0 && errno == EINTR { continue }
            if r < 0 && errno == EAGAIN {
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&pfd, 1, 1000)
                continue
            }
            if r < 0 {
                let e = errno
                if e == EPIPE { return TransferError(.io, "the reader of \(display) went away") }
                return TransferError(TransferError.Code(errno: e), "cannot write to \(display): \(String(cString: strerror(e))) (\(e))")
            }
            if r == 0 { return TransferError(.io, "cannot write to \(display): no progress") }
            done += r
        }
        return nil
    }
}

/// The partial copies a session holds open and their chunks' state: bounded
/// (`Receiver.openFilesMax`, `Receiver.openChunksMax`) so that one session, announcing files
/// and sending nothing, can take neither the process's descriptors nor its memory.
final class OpenBudget: @unchecked Sendable {
    private let lock = Lock()
    private var files = 0
    private var chunks = 0
    func hasRoom(chunks n: Int) -> Bool {
        lock.withLock { files < Receiver.openFilesMax && (chunks == 0 || chunks + n <= Receiver.openChunksMax) }
    }
    /// Taken when a partial is opened, after its plan asked `hasRoom`: streams planning at
    /// once may each pass that check before either takes, so the bound can be passed by one
    /// file per thread that plans (the data streams' and the control thread's: a few), never
    /// more.
    func take(chunks n: Int) { lock.withLock { files += 1; chunks += n } }
    func give(chunks n: Int) { lock.withLock { files -= 1; chunks -= n } }
}

/// One destination file between its plan and its commit. Guarded by its own `lock`, so
/// streams writing different files never wait for each other.
final class ReceiverFile {
    let lock = Lock()
    let entry: ManifestEntry
    /// Int.max for a stream until its FILE_DIGEST says its length.
    var chunkCount: Int
    let chunkBytes: Int
    /// A stream (standard input on the sending side): chunks arrive in order up to an end
    /// announced with the digest; no journal, no resume.
    let isStream: Bool
    let dir: DirHandle
    let name: String
    let display: String
    var partFd: Int32 = -1
    /// The partial opened again with O_DIRECT for whole aligned chunks (`DirectIO`); -1 when
    /// not used (small file, another filesystem, refused).
    var directFd: Int32 = -1
    var journal: ResumeJournal?
    var present: [Bool] = []
    var presentCount = 0
    var hashes: [ChunkHash] = []
    var pendingDurable: [(index: Int, hash: ChunkHash)] = []
    var pendingBytes = 0
    var lastSyncNs: UInt64 = 0
    var senderDigest: ChunkHash?
    /// Set when the destination is a stream written in place (`SinkTarget`).
    var sink: SinkTarget?
    var awaitingDecision = false
    var failed = false
    var done = false
    /// A range session's chunks (striping): only these are accepted, journaled in the range's
    /// own journal, and the file is never renamed here; nil: the whole file.
    var range: ChunkRange?
    var first: Int { range?.first ?? 0 }
    var end: Int { range?.end ?? chunkCount }
    /// The journal beside the partial: the range's, or the file's.
    var journalName: String { range.map { PartialNames.rangeJournal(name, $0) } ?? PartialNames.journal(name) }
    /// The partial copy: the file's own, or the one its version's ranges share.
    var partName: String {
        guard range != nil else { return PartialNames.part(name) }
        return PartialNames.rangePart(name, size: entry.size, mtimeSeconds: entry.mtimeSeconds, mtimeNanoseconds: entry.mtimeNanoseconds, chunkBytes: chunkBytes)
    }

    init(entry: ManifestEntry, chunkBytes: Int, dir: DirHandle, name: String, display: String) {
        self.entry = entry
        isStream = entry.size == ManifestEntry.streamSize
        self.chunkCount = isStream ? Int.max : ResumeJournal.chunkCount(size: entry.size, chunkBytes: chunkBytes)
        self.chunkBytes = chunkBytes
        self.dir = dir
        self.name = name
        self.display = display
    }

    var isSmall: Bool { !isStream && chunkCount <= 1 }

    /// Takes `fd` as the partial file, with a direct descriptor beside it where `DirectIO` says,
    /// counted in `budget` until `closePartial`.
    func usePartial(_ fd: Int32, budget: OpenBudget) {
        partFd = fd
        if directFd >= 0 { Glibc.close(directFd) }
        directFd = isStream ? -1 : DirectIO.open(partial: fd, size: entry.size)
        if counted == nil {
            let n = isStream ? 0 : chunkCount
            budget.take(chunks: n)
            counted = (budget, n)
        }
    }
    private var counted: (budget: OpenBudget, chunks: Int)?

    /// Closes the partial's descriptors (its bytes stay for a rerun or were renamed).
    func closePartial() {
        if directFd >= 0 { Glibc.close(directFd); directFd = -1 }
        if partFd >= 0 { Glibc.close(partFd); partFd = -1 }
        if let c = counted { c.budget.give(chunks: c.chunks); counted = nil }
    }

    /// Direct I/O refused by the filesystem: this file's writes go buffered from now on.
    func dropDirect() {
        if directFd >= 0 { Glibc.close(directFd); directFd = -1 }
    }
    var identity: SourceIdentity {
        SourceIdentity(size: entry.size, mtimeSeconds: entry.mtimeSeconds, mtimeNanoseconds: entry.mtimeNanoseconds, chunkBytes: 0)
    }
    var times: [timespec] {
        let t = timespec(tv_sec: Int(entry.mtimeSeconds), tv_nsec: Int(entry.mtimeNanoseconds))
        return [t, t]
    }
}

/// The receiving side of a session (the server in a push, the client in a pull).
///
/// The control thread turns manifest entries into plans (skip, full, resume from the journal,
/// compare digests) and creates directories and links; one worker per data stream receives,
/// verifies and writes chunks and small-file batches; whichever thread completes a file
/// commits it (durable, digest checked, metadata set, renamed into place).
/// `@unchecked Sendable`: shared state is guarded by `lock` and each file's own lock.
final class Receiver: @unchecked Sendable {
    let ctx: SessionContext
    private let baseFd: Int32
    private let targetComponents: [Substring]
    private let linkFree: Int
    private let treeLinkFree: Bool
    private let lock = Lock()
    private var files: [UInt64: ReceiverFile] = [:]
    /// Highest file id the manifest announced (ids are assigned in increasing order).
    private var highestID: UInt64 = 0
    private var anyAnnounced = false
    private var targetDir: DirHandle?
    private var targetFile: (dir: DirHandle, name: String)?
    /// By the path's bytes, not by `String`: Swift compares and hashes canonically equivalent
    /// spellings as equal, and "café" in NFC and in NFD are two directories on Linux.
    private var dirCache: [[UInt8]: DirHandle] = [:]
    /// The directory `directory` returned last, with its key: a manifest lists a directory's
    /// entries one after another, so most entries find theirs here without building a key.
    private var lastDirectory: (key: [UInt8], dir: DirHandle)?
    /// Directories this session made (relative to the target, by their bytes; at most
    /// `newDirectoriesMax`, beyond which one-chunk files in further new directories look for a
    /// stale journal too).
    private var newDirectories: Set<[UInt8]> = []
    static let newDirectoriesMax = 100_000
    private var dirFixups: [ManifestEntry] = []
    private let chunkBytes: Int
    /// A device, FIFO or standard output written in place (see `SinkTarget`); nil for files.
    private let sink: SinkTarget?
    /// Mode bits applied from manifest entries (see `init`).
    private let modeMask: UInt32
    /// Bytes written to a file between two fdatasyncs of its data and journal: small files get
    /// a fine-grained journal (a kill loses little), huge ones fewer syncs.
    private static func durableGroupBytes(size: UInt64, chunkBytes: Int) -> Int {
        max(chunkBytes, min(64 << 20, Int(size / 64)))
    }
    static let durableGroupNs: UInt64 = 1_000_000_000
    /// Files between plan and verdict, enforced here whatever the sender promises (its own
    /// bound is the same): each costs a `ReceiverFile`.
    static let filesInFlightMax = Sender.filesInFlightMax
    /// Chunks of one file: its state costs 17 bytes a chunk (a flag and a hash), so this caps a
    /// file's bookkeeping at 68 MiB (16 TiB at 4 MiB chunks; larger files take larger chunks).
    static let chunksPerFileMax = 1 << 22
    /// Partial copies open at once in a session, and their chunks (`OpenBudget`): twice what an
    /// honest sender lets be in flight (`Sender.multiChunkFilesInFlightMax`,
    /// `Sender.chunksInFlightMax`), so only a sender that ignores its bound meets them. About
    /// three descriptors a file (partial, journal, direct), 1,536 a session at most; 136 MiB of
    /// chunk state.
    static let openFilesMax = 2 * Sender.multiChunkFilesInFlightMax
    static let openChunksMax = 2 * Sender.chunksInFlightMax
    let budget = OpenBudget()

    /// Throws when the session already holds as many partial copies (or chunks) open as it may.
    private func requireRoom(chunks: Int) throws {
        guard budget.hasRoom(chunks: chunks) else {
            throw TransferError.protocolError("more than \(Receiver.openFilesMax) files of several chunks (or \(Receiver.openChunksMax) chunks) announced without a verdict")
        }
    }

    /// `baseFd`: a directory everything resolves beneath (owned); `target`: the path of the
    /// destination relative to it ("" components = `baseFd` itself).
    /// `modeMask`: the mode bits applied from the sender (setuid and setgid are dropped unless
    /// the export allows them: a pushed copy of a setuid binary must not become one here).
    /// `linkFree`: how many of `target`'s first components must not be symbolic links (down to
    /// the limit of the token's scope: `Paths.openStepwise`); `treeLinkFree`: a tree's
    /// destination directory is not reached through a link at its name (a server or a daemon
    /// working in directories others can write; a user's own client follows their links).
    init(ctx: SessionContext, baseFd: Int32, target: [Substring], modeMask: UInt32 = 0o1777, linkFree: Int = 0, treeLinkFree: Bool = false) {
        self.ctx = ctx
        self.baseFd = baseFd
        self.targetComponents = target
        self.linkFree = linkFree
        self.treeLinkFree = treeLinkFree
        self.chunkBytes = ctx.options.chunkBytes
        self.sink = nil
        self.modeMask = modeMask
    }

    /// A receiver that writes one file into `sink` in place, in order.
    init(ctx: SessionContext, sink: SinkTarget) {
        self.ctx = ctx
        self.baseFd = -1
        self.targetComponents = []
        self.chunkBytes = ctx.options.chunkBytes
        self.sink = sink
        self.modeMask = 0
        self.linkFree = 0
        self.treeLinkFree = false
    }

    /// One chunk of scratch memory for the control thread's re-reads (--checksum, resume).
    private var scratch: UnsafeMutableRawPointer?

    deinit {
        if baseFd >= 0 { Glibc.close(baseFd) }
        scratch.map { free($0) }
    }

    // MARK: control

    func runControl() throws {
        ctx.startHeartbeat()
        var controlRing: Ring?
        do {
            let ring = try Ring(entries: 8)
            controlRing = ring
            while true {
                let (type, payload) = try ctx.control.receive(ring: ring, timeoutNs: ctx.idleTimeoutNs)
                var r = ByteReader(payload)
                switch type {
                case .manifest:
                    let n = Int(try r.u32())
                    guard n <= Wire.manifestEntriesPerFrameMax else { throw TransferError.protocolError("manifest frame too long") }
                    var plan = ByteWriter(capacity: n * 12 + 4)
                    plan.u32(0)
                    var planned: UInt32 = 0
                    var refusals: [FileVerdict] = []
                    for _ in 0..<n {
                        let e = try ManifestEntry.decode(&r)
                        if let p = try handle(e, refusals: &refusals) {
                            p.encode(&plan)
                            planned += 1
                        }
                    }
                    try r.expectEnd()
                    plan.bytes.withUnsafeMutableBytes { $0.storeBytes(of: planned.littleEndian, toByteOffset: 0, as: UInt32.self) }
                    try ctx.control.send(.plan, plan.bytes, ring: ring)
                    if !refusals.isEmpty { try sendVerdicts(refusals, ring: ring) }
                case .manifestEnd:
                    try r.expectEnd()
                case .fileDigest:
                    let id = try r.u64()
                    let digest = try r.hash()
                    let streamSize: UInt64? = r.remaining == 8 ? try r.u64() : nil
                    try r.expectEnd()
                    guard let f = lock.withLock({ files[id] }) else { throw TransferError.protocolError("digest for unknown file") }
                    guard f.isStream == (streamSize != nil) else { throw TransferError.protocolError("a stream's length is said with its digest, and only a stream's") }
                    f.lock.lock()
                    if let size = streamSize {
                        guard size <= 1 << 56, f.senderDigest == nil else {
                            f.lock.unlock()
                            throw TransferError.protocolError("stream length out of range")
                        }
                        f.chunkCount = ResumeJournal.chunkCount(size: size, chunkBytes: chunkBytes)
                        ctx.progress.add(bytesTotal: size)
                        // The partial holds every chunk at its offset; its length is the stream's.
                        if f.partFd >= 0 && ftruncate(f.partFd, off_t(size)) != 0 {
                            let e = errno
                            _ = failFile(f, "cannot write '\(f.display)': \(String(cString: strerror(e)))", code: TransferError.Code(errno: e))
                        }
                    }
                    f.senderDigest = digest
                    let verdict = maybeCommit(f)
                    f.lock.unlock()
                    if let verdict { try sendVerdicts([verdict], ring: ring) }
                case .fileSkip:
                    let id = try r.u64()
                    try r.expectEnd()
                    guard let f = lock.withLock({ files[id] }) else { throw TransferError.protocolError("skip for unknown file") }
                    f.lock.lock()
                    // Only a file being compared (`--checksum`) can be skipped: one planned in
                    // full holds its partial open (and claimed) until its verdict.
                    guard f.awaitingDecision, f.partFd < 0 else {
                        f.lock.unlock()
                        throw TransferError.protocolError("skip for a file that is not being compared")
                    }
                    f.awaitingDecision = false
                    // Never through a link: the name compared may have been swapped for one
                    // since (a chmod that followed it changed whatever it pointed at, even
                    // outside the root). A file that is a link now was not the one compared.
                    if !Receiver.setMode(f.dir.fd, f.name, mode_t(f.entry.mode)) {
                        let verdict = failFile(f, "'\(f.display)' changed while it was compared (it is not that file now); run the copy again", code: .verify)
                        f.lock.unlock()
                        lock.withLock { files[id] = nil }
                        try sendVerdicts([verdict], ring: ring)
                        continue
                    }
                    f.done = true
                    var t = f.times
                    _ = utimensat(f.dir.fd, f.name, &t, AT_SYMLINK_NOFOLLOW)
                    f.lock.unlock()
                    ctx.progress.skipped(bytes: f.entry.size)
                    ctx.progress.fileDone(skipped: true, name: f.display)
                    lock.withLock { files[id] = nil }
                    try sendVerdicts([(id, nil, "")], ring: ring)
                case .sourceFailed:
                    for failure in try SourceFailure.decode(payload) { try sourceFailed(failure) }
                case .end:
                    try r.expectEnd()
                    failUnfinished()
                    try applyDirectoryMetadata()
                    try ctx.control.send(.endAck, ring: ring)
                    ctx.finish()
                    return
                case .ping:
                    continue
                default:
                    throw TransferError.protocolError("unexpected \(type) on the control stream")
                }
            }
        } catch {
            let e = asTransferError(error)
            ctx.fail(e)
            // The sender learns why before the slower cleanup below: once its data streams
            // break it waits only a moment for a verdict, and "no space left" explains more
            // than its broken pipe. (The connection sends one ERROR: the server's is dropped.)
            if var verdict = ctx.error, !verdict.fromPeer, let ring = controlRing {
                verdict.resumable = verdict.rerunResumes
                ctx.control.sendError(verdict, ring: ring)
            }
            flushAll()
            throw ctx.error ?? e
        }
    }

    /// The sender could not read a file, or it changed while being read: it fails here too.
    /// A changed source's partial copy is removed (a rerun starts that file over anyway).
    private func sourceFailed(_ failure: SourceFailure) throws {
        guard let f = file(failure.id) else {
            if wasAnnounced(failure.id) { return }  // already failed or finished here
            throw TransferError.protocolError("source failure for unknown file \(failure.id)")
        }
        f.lock.withLock {
            guard !f.done else { return }
            f.awaitingDecision = false
            // Removed while this session still holds the partial (its claim ends with the
            // close in failFile), and only when it does: a file refused as busy never had it.
            if failure.changed && f.sink == nil && f.partFd >= 0 && !f.failed {
                // A range's partial is shared with the file's other ranges: only its journal goes.
                if f.range == nil { _ = unlinkat(f.dir.fd, PartialNames.part(f.name), 0) }
                _ = unlinkat(f.dir.fd, f.journalName, 0)
            }
            _ = failFile(f, failure.message, code: failure.code ?? .remote, fromPeer: true)
        }
        forget(failure.id)
    }

    /// At END: a file that never got all its chunks (or its digest, or its `--checksum`
    /// verdict) was not copied, whatever the sender thinks: it is counted failed, never done.
    private func failUnfinished() {
        let open = lock.withLock { files.values.filter { !$0.failed && !$0.done } }
        for f in open {
            f.lock.withLock {
                guard !f.failed && !f.done else { return }
                _ = failFile(f, "'\(f.display)' was not received completely (\(f.presentCount) of \(f.end - f.first) chunks): the sender ended the session; rerun resumes", code: .io)
            }
        }
    }

    /// FILE_DONE: u32 count, then per file u64 id, u8 status (0: done; else bit 0 set, the
    /// failure's code in bits 1...7, `CodedFlags`), string message.
    func sendVerdicts(_ verdicts: [FileVerdict], ring: Ring) throws {
        var w = ByteWriter(capacity: verdicts.count * 12 + 4)
        w.u32(UInt32(verdicts.count))
        for (id, failure, message) in verdicts {
            w.u64(id)
            w.u8(failure.map { CodedFlags.pack(true, $0) } ?? 0)
            w.string(String(decoding: message.utf8.prefix(4000), as: UTF8.self))
        }
        try ctx.control.send(.fileDone, w.bytes, ring: ring)
    }

    /// The directory for the entry at `path` (its components `parts`) beneath the target
    /// (cached; resolved beneath it, never outside).
    private func directory(of path: String, _ parts: [Substring]) throws -> DirHandle {
        guard let top = targetDir else { throw TransferError.protocolError("entry before the root entry") }
        if parts.count < 2 { return top }
        // `path` is `parts` joined by "/" (`Paths.components` refused every other spelling), so
        // the parent's key is the path's bytes before its last "/".
        let bytes = path.utf8
        guard let slash = bytes.lastIndex(of: UInt8(ascii: "/")) else { throw TransferError.protocolError("entry path without its directory") }
        let parent = bytes[..<slash]
        if let last = lastDirectory, parent.elementsEqual(last.key) { return last.dir }
        let key = Array(parent)
        let d = try cachedDirectory(top, key, path: String(decoding: key, as: UTF8.self))
        lastDirectory = (key, d)
        return d
    }

    private func cachedDirectory(_ top: DirHandle, _ key: [UInt8], path: String) throws -> DirHandle {
        if let d = dirCache[key] { return d }
        if dirCache.count >= 256 { dirCache.removeAll(keepingCapacity: true) }
        let fd = try Paths.open(beneath: top.fd, path, flags: FERRY_O_PATH | O_DIRECTORY)
        // Made by this session, and still what it made (reopened by name: in a shared parent
        // someone could have put another directory there since): its own, and private.
        var new = false
        if newDirectories.contains(key) {
            var st = stat()
            new = fstat(fd, &st) == 0 && st.st_uid == ThreadIdentity.fsuid && st.st_mode & 0o077 == 0
        }
        let d = DirHandle(fd: fd, new: new)
        dirCache[key] = d
        return d
    }

    /// Resolves the destination when the root entry arrives: a directory (created) or a file.
    private func resolveTarget(_ e: ManifestEntry) throws {
        guard e.path.isEmpty, targetDir == nil, targetFile == nil else {
            throw TransferError.protocolError("the first manifest entry must be the root")
        }
        let shown = targetComponents.isEmpty ? "." : targetComponents.joined(separator: "/")
        if let sink {
            guard e.kind == .file else {
                throw TransferError(.usage, "\(sink.display) takes the bytes of one file, not a directory tree")
            }
            targetFile = (DirHandle(fd: -1), sink.display)
            return
        }
        if e.kind == .directory {
            // The directory made (or found) step by step, not reopened by its path.
            // Missing parents as `mkdir -p` makes them: 0755 less the umask the process was
            // started with (a daemon's unit's UMask, a user's shell's) and the export's mode
            // mask (they were 0700: a group could not reach a tree pushed to a new path); the
            // target itself private until its own mode is applied.
            let parents = mode_t(0o755 & modeMask) & ~startUmask
            // A tree lands in a directory, never through a link at its name (`treeLinkFree`).
            let (fd, new) = try Paths.makeDirectoriesTellingNew(beneath: baseFd, targetComponents, mode: parents, lastMode: 0o700, linkFree: linkFree, lastLinkFree: treeLinkFree)
            targetDir = DirHandle(fd: fd, new: new)
            dirFixups.append(e)
        } else {
            guard let last = targetComponents.last else {
                throw TransferError(.path, "destination '\(shown)' is a directory; give a file name or end the path with '/'")
            }
            let parentFd = try Paths.makeDirectories(beneath: baseFd, Array(targetComponents.dropLast()), linkFree: linkFree)
            targetFile = (DirHandle(fd: parentFd), String(last))
        }
    }

    /// Turns one manifest entry into a plan entry (files) or creates it (directories, links).
    private func handle(_ e: ManifestEntry, refusals: inout [FileVerdict]) throws -> PlanEntry? {
        var e = e
        if e.kind != .special { e.mode &= modeMask }
        lock.withLock {
            highestID = max(highestID, e.id)
            anyAnnounced = true
        }
        let parts = try Paths.components(of: e.path)
        if e.kind == .special {
            // Named so the summary can list it; nothing is created for it.
            guard !parts.isEmpty else { throw TransferError.protocolError("a special file as the root entry") }
            ctx.progress.specialSkipped(e.path, mode: e.mode)
            return nil
        }
        if parts.isEmpty { try resolveTarget(e) }
        let display = e.path.isEmpty ? (targetComponents.last.map(String.init) ?? ".") : e.path
        let dir: DirHandle
        let name: String
        if let t = targetFile {
            guard parts.isEmpty else { throw TransferError.protocolError("entries below a single-file transfer") }
            (dir, name) = (t.dir, t.name)
        } else {
            if parts.isEmpty {
                if e.kind == .directory { return nil }
                throw TransferError.protocolError("root entry kind mismatch")
            }
            dir = try directory(of: e.path, parts)
            name = String(parts.last!)
        }
        if PartialNames.isHelper(name) { throw TransferError(.path, "refusing to write Ferry's own helper name '\(e.path)'") }
        switch e.kind {
        case .directory:
            let made = mkdirat(dir.fd, name, 0o700) == 0
            if !made && errno != EEXIST {
                throw TransferError.system("cannot create directory '\(display)'", errno: errno)
            }
            if made && newDirectories.count < Receiver.newDirectoriesMax { newDirectories.insert(Array(e.path.utf8)) }
            var st = stat()
            if fstatat(dir.fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || (st.st_mode & S_IFMT) != S_IFDIR {
                // Named as what it is: a symbolic link is never followed here (it could lead
                // out of the destination), so it is in the way as a file would be.
                let what = (st.st_mode & S_IFMT) == S_IFLNK ? "a symbolic link" : "a file"
                throw TransferError(.path, "cannot create directory '\(display)': \(what) is in the way (remove it, or copy into another directory)")
            }
            dirFixups.append(e)
            return nil
        case .symlink:
            try refuseSpecial(dir.fd, name, display)
            let tmp = PartialNames.part(name)
            // Never another session's partial of a file of this name (`PartialNames` "Claims").
            if PartialNames.removeUnclaimed(dir: dir.fd, name: tmp) == -EBUSY {
                throw TransferError(.busy, PartialNames.busyMessage(display))
            }
            if symlinkat(e.linkTarget, dir.fd, tmp) != 0 || renameat(dir.fd, tmp, dir.fd, name) != 0 {
                let err = errno
                _ = unlinkat(dir.fd, tmp, 0)
                throw TransferError.system("cannot create link '\(display)'", errno: err)
            }
            let t = timespec(tv_sec: Int(e.mtimeSeconds), tv_nsec: Int(e.mtimeNanoseconds))
            var times = [t, t]
            _ = utimensat(dir.fd, name, &times, AT_SYMLINK_NOFOLLOW)
            return nil
        case .file:
            break
        case .special:
            return nil
        }
        // Bounded by what is real, not by what is declared (checked before any allocation).
        guard lock.withLock({ files.count }) < Receiver.filesInFlightMax else {
            throw TransferError.protocolError("more than \(Receiver.filesInFlightMax) files announced without a verdict")
        }
        if e.size == ManifestEntry.streamSize {
            // A stream is the one file of a push (`ferry cp - ...`).
            guard parts.isEmpty, targetFile != nil, sink == nil else { throw TransferError.protocolError("a stream that is not the single file of a push") }
            return try planStream(e, dir: dir, name: name, display: display, refusals: &refusals)
        }
        let chunks = ResumeJournal.chunkCount(size: e.size, chunkBytes: chunkBytes)
        if chunks > Receiver.chunksPerFileMax {
            let need = (e.size + UInt64(Receiver.chunksPerFileMax) - 1) / UInt64(Receiver.chunksPerFileMax)
            throw TransferError(.usage, "'\(display)' (\(byteText(e.size))) has more than \(Receiver.chunksPerFileMax) chunks of \(byteText(UInt64(chunkBytes))): use --chunk-size \(byteText(need)) or more")
        }
        let f = ReceiverFile(entry: e, chunkBytes: chunkBytes, dir: dir, name: name, display: display)
        var announced = e.size
        if let r = ctx.options.range {
            // A range session: the one file of the session, the version the range names.
            guard parts.isEmpty, targetFile != nil, sink == nil else { throw TransferError.protocolError("a range session's entry that is not its one file") }
            guard e.size == r.size, e.mtimeSeconds == r.mtimeSeconds, e.mtimeNanoseconds == r.mtimeNanoseconds else {
                throw TransferError.protocolError("a range session's file is not the version its HELLO named")
            }
            f.range = try r.chunks(chunkBytes: chunkBytes)
            announced = r.bytes(chunkBytes: chunkBytes)
        }
        ctx.progress.announce(bytes: announced)
        if let sink {
            f.sink = sink
            f.present = [Bool](repeating: false, count: f.chunkCount)
            f.hashes = [ChunkHash](repeating: .zero, count: f.chunkCount)
            lock.withLock { files[e.id] = f }
            return PlanEntry(id: e.id, action: .full)
        }
        var st = stat()
        // Nothing to compare with, or to find in the way, in a directory this session made (made
        // 0700 until the end, so only its own account or root could have put anything there
        // since; the rename that lands the file fails on a directory, and replaces what else it
        // finds, as it would after a look). Not looked for: a tree of small files pays one call
        // less per file.
        if !dir.new && fstatat(dir.fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 {
            let kind = st.st_mode & S_IFMT
            if kind == S_IFDIR {
                return refuse(f, .path, "cannot write '\(display)': a directory is in the way (to copy into it, end the destination with '/')", &refusals)
            }
            if kind != S_IFREG && kind != S_IFLNK {
                // A device, FIFO or socket is never replaced by the partial file's rename.
                return refuse(f, .path, "cannot write '\(display)': \(Paths.kindName(st.st_mode)) is in the way (Ferry never replaces one)", &refusals)
            }
            if kind == S_IFREG && UInt64(st.st_size) == e.size {
                if !ctx.options.checksum && Int64(st.st_mtim.tv_sec) == e.mtimeSeconds && UInt32(st.st_mtim.tv_nsec) == e.mtimeNanoseconds {
                    // Never through a link (one swapped in since the stat above). A mode that
                    // cannot be set (the file is another account's, in a shared directory) fails
                    // the file, as rsync does: "already there" would vouch for a file this
                    // account could neither have written nor can correct.
                    if UInt32(st.st_mode) & 0o7777 != e.mode && !Receiver.setMode(dir.fd, name, mode_t(e.mode), strict: true) {
                        let owner = st.st_uid != ThreadIdentity.fsuid ? " (it belongs to another account)" : ""
                        return refuse(f, .permission, "cannot set the mode of '\(display)'\(owner): it has the source's size and time but not its mode; nothing was sent", &refusals)
                    }
                    ctx.progress.skippedUnread(bytes: announced, name: display)
                    return PlanEntry(id: e.id, action: .skip)
                }
                if ctx.options.checksum, let digest = existingDigest(dir: dir.fd, name: name, size: e.size) {
                    f.awaitingDecision = true
                    lock.withLock { files[e.id] = f }
                    return PlanEntry(id: e.id, action: .compareDigest(digest))
                }
            }
        }
        lock.withLock { files[e.id] = f }
        if !f.isSmall { try requireRoom(chunks: f.chunkCount) }
        if f.isSmall {
            // A journal left by an earlier, larger version of this file (a copy interrupted,
            // then the source shrank to one chunk) would stay for good: no later copy of a
            // one-chunk file reads or removes it. Not looked for in a directory this session
            // made (a tree of small files pays no extra call per file).
            // Never the journal of a live session writing the larger version (its partial is
            // claimed): only when there is one, and its partial is not held.
            var jst = stat()
            if !dir.new && fstatat(dir.fd, f.journalName, &jst, AT_SYMLINK_NOFOLLOW) == 0
                && PartialNames.removeUnclaimed(dir: dir.fd, name: f.partName) == 0 {
                _ = unlinkat(dir.fd, f.journalName, 0)
            }
            return PlanEntry(id: e.id, action: .full)
        }
        // A partial copy of the same source version resumes; anything else starts over.
        var id = f.identity
        id.chunkBytes = UInt32(chunkBytes)
        if let (journal, have) = ResumeJournal.open(dir: dir.fd, name: f.journalName, identity: id, range: f.range) {
            // Only the user's own partial resumes (`PartialNames.isOwn`); another's is replaced
            // by `startPartial`, never written into.
            var fd = openat(dir.fd, f.partName, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
            var pst = stat()
            // A whole file's partial resumes under this session's claim only: one another
            // session is writing now fails the file as busy; one gone meanwhile starts over.
            var claim = PartialNames.Claim.claimed
            if fd >= 0 && f.range == nil && fstat(fd, &pst) == 0 && PartialNames.isOwn(pst) {
                claim = PartialNames.claim(fd, dir: dir.fd, name: f.partName, fresh: false)
            }
            if claim == .busy {
                Glibc.close(fd)
                return refuse(f, .busy, PartialNames.busyMessage(display), &refusals)
            }
            if claim == .moved {
                Glibc.close(fd)
                fd = -1
            }
            if fd >= 0 && fstat(fd, &pst) == 0 && PartialNames.isOwn(pst) && UInt64(pst.st_size) == e.size {
                f.usePartial(fd, budget: budget)
                f.journal = journal
                f.present = [Bool](repeating: false, count: f.chunkCount)
                f.hashes = [ChunkHash](repeating: .zero, count: f.chunkCount)
                var list: [(index: UInt32, hash: ChunkHash)] = []
                var haveBytes: UInt64 = 0
                var stale: [Int] = []
                for (i, h) in have.sorted(by: { $0.key < $1.key }) where i >= f.first && i < f.end {
                    // Claim only what the partial really holds: the journal says what was
                    // written, the bytes may have been damaged since. A chunk that no longer
                    // matches is left out of the claim, so the sender sends it again, and its
                    // record is cleared first: a session that dies before sending it must not
                    // leave the journal vouching for it (a striped commit reads back only one
                    // chunk of each range).
                    let offset = UInt64(i) * UInt64(chunkBytes)
                    let length = Int(min(UInt64(chunkBytes), e.size - offset))
                    guard hashOnDisk(fd, offset: offset, length: length) == h else { stale.append(i); continue }
                    f.present[i] = true
                    f.hashes[i] = h
                    f.presentCount += 1
                    list.append((UInt32(i), h))
                    haveBytes += UInt64(length)
                }
                if !stale.isEmpty {
                    do {
                        try journal.forget(stale)
                    } catch {
                        let t = asTransferError(error)
                        f.closePartial()
                        return refuse(f, t.code, "cannot write '\(display)': \(t.message)", &refusals)
                    }
                }
                // Counted as already there; a chunk the sender finds different (its source
                // changed within the same size and mtime) is sent and counted again as moved.
                ctx.progress.resumed(bytes: haveBytes)
                return PlanEntry(id: e.id, action: .resume(list))
            }
            if fd >= 0 { Glibc.close(fd) }
        }
        if let (err, code) = startPartial(f) { return refuse(f, code, err, &refusals) }
        return PlanEntry(id: e.id, action: .full)
    }

    /// A stream's plan: always sent in full, into a fresh partial file without journal (nothing
    /// of a stream can be resumed); what is in the way is refused as for any file.
    private func planStream(_ e: ManifestEntry, dir: DirHandle, name: String, display: String, refusals: inout [FileVerdict]) throws -> PlanEntry {
        let f = ReceiverFile(entry: e, chunkBytes: chunkBytes, dir: dir, name: name, display: display)
        ctx.progress.announce(bytes: 0)
        lock.withLock { files[e.id] = f }
        var st = stat()
        if fstatat(dir.fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_mode & S_IFMT != S_IFREG && st.st_mode & S_IFMT != S_IFLNK {
            return refuse(f, .path, "cannot write '\(display)': \(Paths.kindName(st.st_mode)) is in the way (Ferry never replaces one)", &refusals)
        }
        // A new file of this session's (O_EXCL), claimed, never one found under the name: in a
        // shared directory it could be another account's; one another session is writing now
        // fails this stream as busy (`PartialNames.createClaimed`).
        try requireRoom(chunks: 0)
        let part = PartialNames.part(name)
        let fd = PartialNames.createClaimed(dir: dir.fd, name: part, access: O_RDWR, mode: 0o600)
        var why = ""
        var code = TransferError.Code.path
        if fd == -EBUSY {
            why = PartialNames.busyMessage(display)
            code = .busy
        } else if fd == -EEXIST {
            (why, code) = PartialNames.existingMessage(dir: dir.fd, display, part)
        } else if fd < 0 {
            why = "cannot write '\(display)': \(String(cString: strerror(-fd))) (\(-fd))"
            code = TransferError.Code(errno: -fd)
        }
        if fd < 0 { return refuse(f, code, why, &refusals) }
        f.usePartial(fd, budget: budget)
        _ = unlinkat(dir.fd, PartialNames.journal(name), 0)  // an older journal of a file: not this
        return PlanEntry(id: e.id, action: .full)
    }

    /// Fails `f` at its plan, before anything of it is written: counted failed here, and its
    /// refusal goes to the sender with the plan (which still names it, in full).
    private func refuse(_ f: ReceiverFile, _ code: TransferError.Code, _ why: String, _ refusals: inout [FileVerdict]) -> PlanEntry {
        f.failed = true
        lock.withLock { files[f.entry.id] = f }
        refusals.append((f.entry.id, code, why))
        ctx.progress.fileFailed(why, code: code)
        return PlanEntry(id: f.entry.id, action: .full)
    }

    /// Throws when `name` exists in `dir` and is a device, FIFO or socket: never replaced.
    private func refuseSpecial(_ dir: Int32, _ name: String, _ display: String) throws {
        var st = stat()
        if fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 {
            let k = st.st_mode & S_IFMT
            if k != S_IFREG && k != S_IFLNK && k != S_IFDIR {
                throw TransferError(.path, "cannot create '\(display)': \(Paths.kindName(st.st_mode)) is in the way (Ferry never replaces one)")
            }
        }
    }

    /// Creates the partial file and its journal (file lock held or not yet shared).
    private func startPartial(_ f: ReceiverFile) -> (String, TransferError.Code)? {
        // A declared size never decides an allocation: a file larger than the free space is
        // refused before anything is written (a sparse partial would otherwise hide it).
        // A range needs room for its own bytes (the file's other ranges are other nodes' to check).
        let needed = ctx.options.range?.bytes(chunkBytes: chunkBytes) ?? f.entry.size
        var fs = statvfs()
        if fstatvfs(f.dir.fd, &fs) == 0 {
            let free = UInt64(fs.f_bavail) * UInt64(fs.f_frsize)
            if needed > free {
                return ("cannot write '\(f.display)': no space: \(byteText(needed)) needed, \(byteText(free)) free", .noSpace)
            }
        }
        let part = f.partName
        var id = f.identity
        id.chunkBytes = UInt32(chunkBytes)
        // A range writes into the partial its version's other ranges share (written by other
        // nodes at the same time, each into its own chunks): opened as it is, never truncated;
        // sized only when it is new. A range that makes it new removes the partial an older
        // version's ranges left, named by the version in this range's journal (an older
        // version's, when there is one; their commit could not succeed now: the source changed).
        // Created or opened in turn (a partial renamed or removed between the two: again).
        //
        // Only the user's own partial is ever written into (`PartialNames.isOwn`): one found under
        // the name that is not (another account's, planted in a shared directory; a hard link;
        // not a file) is removed and the create tried again, and when it cannot be removed (a
        // sticky directory) the file fails before anything of it is written.
        //
        // A whole file's partial is made afresh and claimed (`PartialNames.createClaimed`): one
        // another session is writing now fails this file as busy, never gets written into.
        var fd: Int32 = -1
        var fresh = false
        var e: Int32 = 0
        if f.range == nil {
            fd = PartialNames.createClaimed(dir: f.dir.fd, name: part, access: O_RDWR, mode: 0o600)
            if fd == -EBUSY { return (PartialNames.busyMessage(f.display), .busy) }
            if fd == -EEXIST { return PartialNames.existingMessage(dir: f.dir.fd, f.display, part) }
            if fd < 0 { e = -fd; fd = -1 } else { fresh = true }
        }
        for _ in 0..<(f.range == nil ? 0 : 3) {
            fd = openat(f.dir.fd, part, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            if fd >= 0 {
                fresh = true
                if f.range != nil, let old = ResumeJournal.storedIdentity(dir: f.dir.fd, name: f.journalName), old != id {
                    _ = unlinkat(f.dir.fd, PartialNames.rangePart(f.name, size: old.size, mtimeSeconds: old.mtimeSeconds,
                                                                  mtimeNanoseconds: old.mtimeNanoseconds, chunkBytes: Int(old.chunkBytes)), 0)
                }
                break
            }
            e = errno
            guard e == EEXIST else { break }
            fd = openat(f.dir.fd, part, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
            if fd >= 0 && PartialNames.isOwn(fd) { break }
            if fd >= 0 {
                Glibc.close(fd)
                fd = -1
            } else if errno == ENOENT {
                continue  // renamed or removed in between: create again
            }
            if unlinkat(f.dir.fd, part, 0) != 0 {
                e = errno
                if e == EPERM || e == EACCES { return (PartialNames.foreignMessage(f.display, part), .permission) }
                if e != ENOENT { break }
            }
            e = EEXIST
        }
        if fd < 0 {
            if e == EEXIST { return ("cannot write '\(f.display)': '\(part)' in its directory was replaced by someone else each time it was made", .path) }
            return ("cannot write '\(f.display)': \(String(cString: strerror(e))) (\(e))", TransferError.Code(errno: e))
        }
        var pst = stat()
        // A whole-file partial found (the user's own) starts over empty; a range's is shared.
        if f.range != nil && fstat(fd, &pst) == 0 && UInt64(pst.st_size) == f.entry.size {
            // Already sized by another range.
        } else if (f.range == nil && !fresh && ftruncate(fd, 0) != 0) || ftruncate(fd, off_t(f.entry.size)) != 0 {
            let e = errno
            Glibc.close(fd)
            return ("cannot write '\(f.display)': \(String(cString: strerror(e))) (\(e))", TransferError.Code(errno: e))
        }
        do {
            f.journal = try ResumeJournal.create(dir: f.dir.fd, name: f.journalName, identity: id, range: f.range)
        } catch {
            // Removed before the close: after it, the name could be another session's.
            if fresh && f.range == nil { _ = unlinkat(f.dir.fd, part, 0) }
            Glibc.close(fd)
            return ("cannot write '\(f.display)': \(asTransferError(error).message)", asTransferError(error).code)
        }
        f.usePartial(fd, budget: budget)
        f.present = [Bool](repeating: false, count: f.chunkCount)
        f.hashes = [ChunkHash](repeating: .zero, count: f.chunkCount)
        f.presentCount = 0
        f.lastSyncNs = monotonicNs()
        return nil
    }

    /// XXH3-128 of `length` bytes of `fd` at `offset`, read into the control thread's scratch;
    /// nil when they cannot be read.
    private func hashOnDisk(_ fd: Int32, offset: UInt64, length: Int) -> ChunkHash? {
        if scratch == nil { scratch = malloc(chunkBytes) }
        guard let buf = scratch else { return nil }
        var got = 0
        while got < length {
            let r = pread(fd, buf + got, length - got, off_t(offset) + off_t(got))
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { return nil }
            got += r
        }
        return ChunkHash.of(buf, length)
    }

    /// `--checksum`: digest of the file already at the destination (same definition as the
    /// engine's: XXH3-128 over per-chunk XXH3-128).
    private func existingDigest(dir: Int32, name: String, size: UInt64) -> ChunkHash? {
        let fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { Glibc.close(fd) }
        var opened = stat()
        guard fstat(fd, &opened) == 0, opened.st_mode & S_IFMT == S_IFREG else { return nil }
        var digest = FileDigest()
        var offset: UInt64 = 0
        while offset < size {
            let n = Int(min(UInt64(chunkBytes), size - offset))
            guard let h = hashOnDisk(fd, offset: offset, length: n) else {
                _ = digest.finish()
                return nil
            }
            digest.add(h)
            offset += UInt64(n)
        }
        return digest.finish()
    }

    private func applyDirectoryMetadata() throws {
        guard let top = targetDir else { return }
        for e in dirFixups.reversed() {
            let fd = e.path.isEmpty
                ? (try? Paths.open(beneath: top.fd, "", flags: O_RDONLY | O_DIRECTORY)) ?? -1
                : (try? Paths.open(beneath: top.fd, e.path, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW, noSymlinks: true)) ?? -1
            if fd < 0 { continue }
            _ = fchmod(fd, mode_t(e.mode))
            let t = timespec(tv_sec: Int(e.mtimeSeconds), tv_nsec: Int(e.mtimeNanoseconds))
            var times = [t, t]
            _ = futimens(fd, &times)
            Glibc.close(fd)
        }
        dirFixups.removeAll()
    }

    // MARK: durability and commit (file lock held)

    /// Makes written chunks durable: data first, then their journal records.
    func syncDurable(_ f: ReceiverFile) throws {
        guard !f.pendingDurable.isEmpty, f.partFd >= 0, let j = f.journal else { return }
        _ = try sys("cannot sync '\(f.display)'") { fdatasync(f.partFd) }
        try j.recordDurable(f.pendingDurable)
        f.pendingDurable.removeAll(keepingCapacity: true)
        f.pendingBytes = 0
        f.lastSyncNs = monotonicNs()
    }

    /// Records one verified, written chunk; commits the file when complete.
    func chunkWritten(_ f: ReceiverFile, index: Int, hash: ChunkHash, rawBytes: Int, wireBytes: Int) -> FileVerdict? {
        if f.isStream && index >= f.present.count {
            // A stream's bookkeeping grows with what arrived (bounded by chunksPerFileMax).
            f.present += [Bool](repeating: false, count: index + 1 - f.present.count)
            f.hashes += [ChunkHash](repeating: .zero, count: index + 1 - f.hashes.count)
        }
        if !f.present[index] {
            f.present[index] = true
            f.presentCount += 1
        }
        f.hashes[index] = hash
        ctx.progress.moved(raw: UInt64(rawBytes), wire: UInt64(wireBytes))
        if f.sink != nil || f.isStream { return maybeCommit(f) }
        f.pendingDurable.append((index, hash))
        f.pendingBytes += rawBytes
        if f.pendingBytes >= Receiver.durableGroupBytes(size: f.entry.size, chunkBytes: chunkBytes) || monotonicNs() - f.lastSyncNs >= Receiver.durableGroupNs {
            do { try syncDurable(f) } catch { return failFile(f, asTransferError(error).message + asTransferError(error).code.rerunHint, code: asTransferError(error).code) }
        }
        return maybeCommit(f)
    }

    /// Commits when every chunk is in and the sender's digest has arrived.
    func maybeCommit(_ f: ReceiverFile) -> FileVerdict? {
        guard !f.done, !f.failed, f.presentCount == f.end - f.first, let expected = f.senderDigest else { return nil }
        if let r = f.range { return rangeComplete(f, r, expected: expected) }
        let digest = FileDigest.of(f.hashes)
        if let sink = f.sink {
            guard digest == expected, sink.pending.isEmpty, sink.nextIndex == f.chunkCount else {
                return failFile(f, "\(sink.display): whole-file digest mismatch (\(digest) ≠ \(expected)); the bytes already written there are not the source's", code: .verify)
            }
            f.done = true
            ctx.progress.fileDone(name: f.display)
            lock.withLock { files[f.entry.id] = nil }
            return (f.entry.id, nil, "")
        }
        guard digest == expected else {
            _ = unlinkat(f.dir.fd, f.partName, 0)
            _ = unlinkat(f.dir.fd, f.journalName, 0)
            return failFile(f, "'\(f.display)': whole-file digest mismatch (\(digest) ≠ \(expected)); rerun starts it over", code: .verify)
        }
        if fdatasync(f.partFd) != 0 {
            let e = errno
            return failFile(f, "cannot sync '\(f.display)': \(String(cString: strerror(e)))\(TransferError.Code(errno: e).rerunHint)", code: TransferError.Code(errno: e))
        }
        // The mode the user asked for, or no rename: a partial left more open than that (its
        // mode could not be set) never lands as the file.
        if fchmod(f.partFd, mode_t(f.entry.mode)) != 0 {
            let e = errno
            var pst = stat()
            if fstat(f.partFd, &pst) != 0 || UInt32(pst.st_mode) & 0o7777 & ~f.entry.mode != 0 {
                return failFile(f, "cannot set the mode of '\(f.display)': \(String(cString: strerror(e)))\(TransferError.Code(errno: e).rerunHint)", code: TransferError.Code(errno: e))
            }
        }
        var t = f.times
        _ = futimens(f.partFd, &t)
        // The name must still give this session's file: in a shared directory that another
        // account may write, its session can remove a partial it cannot claim and make its own
        // under the name (see "Claims" in PartialNames); its bytes are never renamed into place.
        guard PartialNames.stillNamed(f.partFd, dir: f.dir.fd, name: PartialNames.part(f.name)) else {
            return failFile(f, PartialNames.replacedMessage(f.display), code: .path)
        }
        if renameat(f.dir.fd, PartialNames.part(f.name), f.dir.fd, f.name) != 0 {
            let e = errno
            return failFile(f, "cannot rename into '\(f.display)': \(String(cString: strerror(e)))", code: TransferError.Code(errno: e))
        }
        _ = unlinkat(f.dir.fd, PartialNames.journal(f.name), 0)
        f.closePartial()
        f.journal = nil
        f.done = true
        ctx.progress.fileDone(name: f.display)
        lock.withLock { files[f.entry.id] = nil }
        return (f.entry.id, nil, "")
    }

    /// A range session's end: the range's digest checked, its data and every record durable;
    /// the partial keeps its name (the commit renames it once all ranges are in) and the range
    /// journal stays, the record of what this range holds.
    private func rangeComplete(_ f: ReceiverFile, _ r: ChunkRange, expected: ChunkHash) -> FileVerdict? {
        let digest = FileDigest.of(Array(f.hashes[r.first..<r.end]))
        guard digest == expected else {
            _ = unlinkat(f.dir.fd, f.journalName, 0)
            return failFile(f, "'\(f.display)' chunks \(r.first)+\(r.count): range digest mismatch (\(digest) ≠ \(expected)); rerun sends the range again", code: .verify)
        }
        // Data, then its records (every record is written after its data's fdatasync).
        do { try syncDurable(f) } catch {
            return failFile(f, asTransferError(error).message + asTransferError(error).code.rerunHint, code: asTransferError(error).code)
        }
        f.closePartial()
        f.journal = nil
        f.done = true
        ctx.rangeHashes = Array(f.hashes[r.first..<r.end])
        ctx.progress.fileDone(name: f.display)
        lock.withLock { files[f.entry.id] = nil }
        return (f.entry.id, nil, "")
    }

    /// Writes chunk `index` of a sink file in its turn, with any chunks that waited for it;
    /// a chunk ahead of its turn waits in memory (bounded). File lock held. The error or nil.
    func sinkWrite(_ f: ReceiverFile, _ sink: SinkTarget, index: Int, data: UnsafeRawPointer, rawBytes: Int) -> TransferError? {
        // Already written (a resend); an empty file has no chunk at all.
        if index < sink.nextIndex || (index < f.present.count && f.present[index]) { return nil }
        if index > sink.nextIndex {
            guard sink.pending.count < SinkTarget.pendingChunksMax else {
                return TransferError(.io, "more than \(SinkTarget.pendingChunksMax) chunks arrived ahead of their turn for \(sink.display), which is written in order")
            }
            sink.pending[index] = Array(UnsafeRawBufferPointer(start: data, count: rawBytes))
            return nil
        }
        if let err = sink.writeAll(data, rawBytes) { return err }
        sink.nextIndex += 1
        while let next = sink.pending.removeValue(forKey: sink.nextIndex) {
            if let err = next.withUnsafeBytes({ sink.writeAll($0.baseAddress!, $0.count) }) { return err }
            sink.nextIndex += 1
        }
        return nil
    }

    /// Marks a file failed, keeping what is durable for a rerun. `code`: why (every caller
    /// says: the errno where a system call failed, never read back from its text);
    /// `fromPeer`: the sender said it (its source failed).
    func failFile(_ f: ReceiverFile, _ message: String, code: TransferError.Code, fromPeer: Bool = false) -> FileVerdict {
        if !f.failed {
            f.failed = true
            try? syncDurable(f)
            dropStreamPartial(f)
            f.closePartial()
            f.journal = nil
            ctx.progress.fileFailed(message, code: code, fromPeer: fromPeer)
        }
        return (f.entry.id, code, message)
    }

    /// A stream's partial copy is removed when the stream fails or its session breaks: nothing
    /// of a stream resumes (its writer's bytes cannot be read again), so what it left would only
    /// take space. Removed while still claimed, before its descriptor closes. File lock held.
    private func dropStreamPartial(_ f: ReceiverFile) {
        guard f.isStream, !f.done, f.partFd >= 0 else { return }
        _ = unlinkat(f.dir.fd, f.partName, 0)
    }

    /// On a broken session: make everything written so far durable, so the rerun resumes.
    private func flushAll() {
        let all = lock.withLock { Array(files.values) }
        for f in all {
            f.lock.withLock {
                try? syncDurable(f)
                dropStreamPartial(f)
                f.closePartial()
                f.journal = nil
                f.failed = true
            }
        }
    }

    func file(_ id: UInt64) -> ReceiverFile? { lock.withLock { files[id] } }

    /// Sets the mode of the regular file `name` in `dir` through a descriptor of it, never
    /// through a link (`openData` with O_NOFOLLOW refuses a link, a device or a FIFO before
    /// opening it; `fchmodat`'s AT_SYMLINK_NOFOLLOW needs /proc on older C libraries). False
    /// when the name is no longer a regular file: not the one compared.
    /// `strict`: false too when the mode could not be set (another account's file).
    static func setMode(_ dir: Int32, _ name: String, _ mode: mode_t, strict: Bool = false) -> Bool {
        // An O_PATH descriptor (nothing opened for reading: the account's own file of mode 0000
        // has its mode set too), never through a link; chmod through its /proc/self/fd name,
        // which names that inode and no path.
        guard let fd = try? Paths.open(beneath: dir, name, flags: FERRY_O_PATH | O_NOFOLLOW, noSymlinks: true) else { return false }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return false }
        return chmod("/proc/self/fd/\(fd)", mode) == 0 || !strict
    }

    /// A file that was waiting for a `--checksum` verdict gets data after all: start it afresh.
    func beginFullIfDeciding(_ f: ReceiverFile) -> FileVerdict? {
        guard f.awaitingDecision else { return nil }
        f.awaitingDecision = false
        if f.isSmall { return nil }
        // A compared file that turns out to need sending opens its partial now: within the
        // session's bound like any other (`requireRoom`), or it fails.
        guard budget.hasRoom(chunks: f.chunkCount) else {
            return failFile(f, "cannot write '\(f.display)': more than \(Receiver.openFilesMax) files of several chunks open in this session", code: .protocolViolation)
        }
        if let (err, code) = startPartial(f) { return failFile(f, err, code: code) }
        return nil
    }

    func forget(_ id: UInt64) { lock.withLock { files[id] = nil } }

    /// True for an id the manifest announced (the file may be finished and forgotten).
    func wasAnnounced(_ id: UInt64) -> Bool { lock.withLock { anyAnnounced && id <= highestID } }

    func runWorker(_ conn: Connection) {
        do {
            let w = try ReceiverWorker(receiver: self, conn: conn)
            try w.run()
        } catch {
            if !ctx.isFinished { ctx.fail(asTransferError(error)) }
        }
    }
}
