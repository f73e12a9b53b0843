import CLiburing
import Glibc

/// One source file between its manifest entry and the receiver's verdict.
/// Fields are guarded by the owning `Sender`'s lock.
final class SenderFile {
    let id: UInt64
    let path: String
    /// Bytes; for a stream, those read so far (its entry said `ManifestEntry.streamSize`).
    var size: UInt64
    /// Read to its end while sent (standard input, a FIFO): chunks are read in order, their
    /// count is known at the end, and none can be read again.
    let isStream: Bool
    /// The manifest's mtime: a file whose size or mtime differs after its last read changed
    /// while being read.
    let mtimeSeconds: Int64
    let mtimeNanoseconds: UInt32
    /// Int.max for a stream until its end is read.
    var chunkCount: Int
    /// The source opened for reading (`Sender.descriptor`). Data streams read it outside the
    /// lock, so it is never closed under one of them: `fdUsers` counts the streams between
    /// `descriptor` and `release`, and a close asked for meanwhile (`Sender.retire`: the
    /// file's verdict, or its failure here) waits for the last of them. A number closed under
    /// a reader fails its read (EBADF), or worse, is reused at once by another file or socket,
    /// which the reader would then read.
    var fd: Int32 = -1
    var fdUsers = 0
    /// The same file opened with O_DIRECT for the streams' direct reads (`directDescriptor`);
    /// -1 when they do not apply. Closed with `fd`.
    var directFd: Int32 = -1
    var directChecked = false
    /// A direct read was refused (EINVAL): the file is read buffered from then on.
    var directRefused = false
    /// No more reads: the file has its verdict or failed here (`fd` is closed, or will be when
    /// its last user releases it; it is never opened again).
    var retired = false
    var cursor = 0
    var processed = 0
    var hashes: [ChunkHash]
    var claimed: [Int: ChunkHash] = [:]
    var expectedDigest: ChunkHash?
    var skipping = false
    var failed = false
    var sparse = false
    var compressible: Bool?
    var chunksSinceProbe = 0
    /// A range session's chunks of the file (HELLO's `range`); nil: all of them.
    var range: ChunkRange?
    /// The bytes this session moves of the file: its range's, or its size.
    var announcedBytes: UInt64 = 0
    /// The chunks this session sends: `range`'s, or the whole file's.
    var first: Int { range?.first ?? 0 }
    var end: Int { range?.end ?? chunkCount }

    init(entry: ManifestEntry, chunkBytes: Int) {
        id = entry.id
        path = entry.path
        isStream = entry.size == ManifestEntry.streamSize
        size = isStream ? 0 : entry.size
        mtimeSeconds = entry.mtimeSeconds
        mtimeNanoseconds = entry.mtimeNanoseconds
        chunkCount = isStream ? Int.max : ResumeJournal.chunkCount(size: entry.size, chunkBytes: chunkBytes)
        hashes = []
    }

    /// A file of at most one chunk travels inside a small-file batch.
    var isSmall: Bool { !isStream && chunkCount <= 1 }
}

/// The sending side of a session (the client in a push, the server in a pull).
///
/// Threads: the caller's thread streams the manifest and ends the session; one thread reads
/// the control stream (plans, verdicts, resend requests); one worker thread per data stream
/// reads, hashes, compresses and sends chunks through its own ring and buffers.
/// `@unchecked Sendable`: shared state is guarded by `lock`.
final class Sender: @unchecked Sendable {
    static let filesInFlightMax = 65_536
    /// Files of more than one chunk, and streams, between announcement and verdict: on the
    /// receiver each may hold its partial copy, a journal and a direct descriptor open, and
    /// its chunks' state in memory from its plan on. Without this bound a session announcing
    /// thousands of such files (and sending nothing) took a root server to its descriptor
    /// limit, failing every other user's sessions. A sender waits before announcing past it,
    /// as it does at `filesInFlightMax`; the receiver refuses a session that goes past twice
    /// this (`Receiver.openFilesMax`: the margin covers a file this side failed on its own,
    /// which the receiver closes only when the failure reaches it).
    static let multiChunkFilesInFlightMax = 256
    /// Chunks of those files together: the receiver keeps 17 bytes of state a chunk (a flag and
    /// a hash), so this holds a session's chunk state to 68 MiB however large the files it
    /// announces (100 files declared at 40 GB in 64 KiB chunks took 1 GB before). A file alone
    /// is always let through (`Receiver.chunksPerFileMax` bounds it by itself).
    static let chunksInFlightMax = 1 << 22
    static let manifestFrameBytesTarget = 1 << 20
    /// Files per small-file batch: big enough to amortise a frame, small enough that the
    /// receiver's stream has the next batch while it writes this one.
    static let batchFilesTarget = 256

    let ctx: SessionContext
    /// One compression policy for all streams of the session (see `SharedCompressionPolicy`).
    let compressionPolicy: SharedCompressionPolicy
    private let rootFd: Int32
    private let rootIsFile: Bool
    private let stream: Bool
    private var streamAnnounced = false
    /// How messages name a single-file source (the user's path, or the path asked for).
    private let rootName: String?
    private let walker: EntrySource
    private let limiter: RateLimiter?
    private let lock = Lock()
    private lazy var cond = Condition(lock)
    private var files: [UInt64: SenderFile] = [:]
    /// Files in flight of more than one chunk, and their chunks (`roomFor`). Under `lock`.
    private var multiChunkInFlight = 0
    private var chunksInFlight = 0
    private var bigQueue: [SenderFile] = []
    private var bigHead = 0
    private var smallQueue: [SenderFile] = []
    private var smallHead = 0
    private var checkQueue: [SenderFile] = []
    private var resendQueue: [(SenderFile, Int)] = []
    private var endAcknowledged = false
    /// Set when the control-reading thread has left `readControl`.
    private var readerDone = false
    /// Files failed on this side, not yet reported to the receiver (see `SourceFailure`).
    private var sourceFailures: [SourceFailure] = []
    /// Held while reporting: the END that follows the last verdict can never overtake a report.
    private let reportLock = Lock()
    /// Sealed sessions: what each recent frame of each stream carried (counter → file ids and
    /// chunk indexes), so a frame the receiver rejected can be sent again. Bounded per stream:
    /// the receiver asks as soon as it sees the damage, within a few frames.
    private var frameHistory: [Int: FrameHistory] = [:]
    static let frameHistoryMax = 512
    /// (file id, chunk) pairs waiting in `resendQueue`: each is queued once.
    private var resendPending = Set<ResendKey>()
    /// More pending resends than this ends the session: a peer asking for everything again and
    /// again is not a receiver with damaged frames.
    static let resendPendingMax = 1 << 16

    /// `rootFd`: the source, a directory or a regular file, opened O_RDONLY; owned by the Sender.
    /// `name`: how messages name the source when it is a single file.
    /// `stream`: `rootFd` is a stream (standard input, a FIFO, a character device) sent as one
    /// file read to its end while it is sent: one data stream reads it, in order.
    init(ctx: SessionContext, rootFd: Int32, name: String? = nil, stream: Bool = false) throws {
        self.ctx = ctx
        self.rootFd = rootFd
        self.stream = stream
        self.rootName = name.flatMap { $0.isEmpty ? nil : $0 }
        compressionPolicy = SharedCompressionPolicy(mode: ctx.options.compression, streams: ctx.options.streams ?? TransferOptions.automaticStreams)
        var st = stat()
        _ = try sys("cannot stat source") { fstat(rootFd, &st) }
        rootIsFile = stream || (st.st_mode & S_IFMT) == S_IFREG
        if let selection = ctx.options.selection {
            walker = try SelectionWalker(rootFd: rootFd, selection: selection)
        } else {
            walker = TreeWalker(rootFd: rootFd, recursive: ctx.options.recursive, filter: ctx.options.filters)
        }
        limiter = ctx.options.bandwidthLimitBytesPerSecond.map { RateLimiter(bytesPerSecond: $0) }
    }

    deinit {
        // A session that ended before every verdict: its files' descriptors go with it (no
        // data stream runs any more; each holds the Sender while it does).
        for f in files.values where f.fd >= 0 { closeDescriptors(f) }
        Glibc.close(rootFd)
    }

    // MARK: control

    /// Streams the manifest, waits for every file's verdict, ends the session.
    func runControl() throws {
        ctx.startHeartbeat()
        // Weakly held: the session's owner, not this thread, releases the Sender (and with it
        // the connection's TLS state), so that nothing is freed on a thread that outlives it
        // while the process exits (a CI run once aborted there after a successful copy).
        spawnThread(name: "ferry-sender-control") { [weak self] in self?.readControl() }
        do {
            try streamManifest()
            // Wait until every file has its verdict.
            try lock.withLock { () throws in
                while !files.isEmpty {
                    if let e = ctx.error { throw e }
                    cond.wait(seconds: 0.5)
                }
            }
            // --bwlimit: the last frame's turn, before the END (see RateLimiter).
            limiter?.drain { ctx.error != nil }
            if let e = ctx.error { throw e }  // cancelled while the last turn ran out
            let ring = try Ring(entries: 8)
            // Files failed here reach the receiver before the END: it fails them too.
            try reportSourceFailures(ring: ring)
            try ctx.control.send(.end, ring: ring)
            // Every file has its verdict: the data streams have nothing left to carry. The
            // receiver may acknowledge the END and close them while a stream is still sending
            // (a chunk of a file it already failed, say for a full disk): that stream's broken
            // pipe must not hide the END_ACK on its way, so a lost connection waits for it
            // (or for the peer's ERROR) as long as the control stream is still read for it.
            try lock.withLock { () throws in
                let deadline = monotonicNs() + UInt64(ctx.idleTimeoutNs)
                while !endAcknowledged {
                    if let e = ctx.error, !ctx.awaitingPeerWord { throw e }
                    cond.wait(seconds: ctx.error == nil ? 0.5 : 0.05)
                    if monotonicNs() >= deadline { throw TransferError(.timeout, "receiver did not confirm the end", resumable: true) }
                }
            }
            ctx.finish()
            // The reader returns right after END_ACK: wait for it (bounded) before the caller
            // closes the connection it was reading.
            lock.withLock {
                cond.broadcast()
                for _ in 0..<20 where !readerDone { cond.wait(seconds: 0.1) }
            }
        } catch {
            ctx.fail(asTransferError(error))
            lock.withLock { cond.broadcast() }
            throw ctx.error ?? error
        }
    }

    private func streamManifest() throws {
        let ring = try Ring(entries: 8)
        let chunkBytes = ctx.options.chunkBytes
        var w = ByteWriter(capacity: Sender.manifestFrameBytesTarget + 8192)
        w.u32(0)  // count, patched before sending
        var count: UInt32 = 0
        func flush() throws {
            if count == 0 { return }
            w.bytes.withUnsafeMutableBytes { $0.storeBytes(of: count.littleEndian, toByteOffset: 0, as: UInt32.self) }
            try ctx.control.send(.manifest, w.bytes, ring: ring)
            w = ByteWriter(capacity: Sender.manifestFrameBytesTarget + 8192)
            w.u32(0)
            count = 0
        }
        while let e = try nextEntry() {
            if let err = ctx.error { throw err }
            if e.kind == .file {
                // Bounded memory: at most filesInFlightMax files between manifest and verdict.
                // Entries still in the unsent frame must go out first: their verdicts are
                // what frees room.
                let f = SenderFile(entry: e, chunkBytes: chunkBytes)
                let weight = Sender.weight(f)
                if lock.withLock({ !roomFor(weight) }) {
                    try flush()
                    try lock.withLock { () throws in
                        while !roomFor(weight) {
                            if let err = ctx.error { throw err }
                            cond.wait(seconds: 0.5)
                        }
                    }
                }
                var announced = f.isStream ? 0 : e.size
                if let r = ctx.options.range {
                    f.range = try rangeOf(e, r)
                    announced = r.bytes(chunkBytes: chunkBytes)
                }
                f.announcedBytes = announced
                lock.withLock {
                    files[f.id] = f
                    multiChunkInFlight += weight.multi ? 1 : 0
                    chunksInFlight += weight.chunks
                }
                ctx.progress.announce(bytes: announced)
            } else if e.kind == .special {
                ctx.progress.specialSkipped(e.path, mode: e.mode)
            }
            e.encode(&w)
            count += 1
            if count >= UInt32(Wire.manifestEntriesPerFrameMax) || w.bytes.count >= Sender.manifestFrameBytesTarget { try flush() }
        }
        try flush()
        try ctx.control.send(.manifestEnd, ring: ring)
    }

    /// A range session's one file: the version the range was planned for, or the session
    /// fails (the planner plans that file again); its chunks.
    private func rangeOf(_ e: ManifestEntry, _ r: StripeRange) throws -> ChunkRange {
        guard e.path.isEmpty, rootIsFile, !stream else {
            throw TransferError(.usage, "a range is of one regular file, not of a directory or a stream")
        }
        guard e.size == r.size, e.mtimeSeconds == r.mtimeSeconds, e.mtimeNanoseconds == r.mtimeNanoseconds else {
            throw TransferError(.verify, "'\(rootName ?? "(source file)")' is not the version its range was planned for (\(byteText(r.size)) then, \(byteText(e.size)) now, or its mtime changed): plan the file again")
        }
        return try r.chunks(chunkBytes: ctx.options.chunkBytes)
    }

    /// The next manifest entry: the walker's, or for a stream its one entry.
    private func nextEntry() throws -> ManifestEntry? {
        guard stream else { return try walker.next() }
        if streamAnnounced { return nil }
        streamAnnounced = true
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return ManifestEntry(id: 1, kind: .file, path: "", size: ManifestEntry.streamSize, mtimeSeconds: Int64(ts.tv_sec),
                             mtimeNanoseconds: UInt32(ts.tv_nsec), mode: 0o644, linkTarget: "")
    }

    private func readControl() {
        defer { lock.withLock { readerDone = true; cond.broadcast() } }
        do {
            let ring = try Ring(entries: 8)
            // After a lost connection this side keeps reading a moment (`awaitingPeerWord`,
            // bounded by the verdict window, which also shuts the reading down): the peer's
            // ERROR frame, or the END_ACK, may come behind other frames (verdicts, pings).
            while !ctx.isFinished || ctx.awaitingPeerWord {
                let (type, payload) = try ctx.control.receive(ring: ring, timeoutNs: ctx.idleTimeoutNs)
                var r = ByteReader(payload)
                switch type {
                case .plan:
                    let n = Int(try r.u32())
                    guard n <= Wire.manifestEntriesPerFrameMax else { throw TransferError.protocolError("plan too long") }
                    for _ in 0..<n { try apply(try PlanEntry.decode(&r)) }
                    try r.expectEnd()
                case .fileDone:
                    let n = Int(try r.u32())
                    guard n <= Wire.batchFilesMax * 4 else { throw TransferError.protocolError("verdict list too long") }
                    for _ in 0..<n {
                        let id = try r.u64()
                        let (failed, code) = try CodedFlags.unpack(try r.u8(), "file verdict")
                        let message = try r.string(maxBytes: 4096)
                        verdict(id: id, ok: !failed, message: message, code: code)
                    }
                    try r.expectEnd()
                case .resend:
                    let id = try r.u64()
                    let index = Int(try r.u32())
                    try r.expectEnd()
                    try lock.withLock { () throws in try queueResend(id, index) }
                    ctx.progress.retransmitted()
                case .resendFrame:
                    let stream = Int(try r.u32())
                    let counter = try r.u64()
                    try r.expectEnd()
                    try lock.withLock { () throws in
                        guard let h = frameHistory[stream] else { return }
                        switch h.take(counter) {
                        case .found(let contents):
                            for (id, index) in contents { try queueResend(id, index) }
                        case .notYetSent, .alreadyAnswered:
                            return  // it will arrive / it is on its way again
                        case .forgotten:
                            throw TransferError(.verify, "the receiver asked again for frame \(counter) of data stream \(stream), older than this sender remembers; the rerun resumes", resumable: true)
                        }
                    }
                    ctx.progress.retransmitted()
                case .endAck:
                    lock.withLock { endAcknowledged = true; cond.broadcast() }
                    return
                case .ping:
                    continue
                default:
                    throw TransferError.protocolError("unexpected \(type) on the control stream")
                }
            }
        } catch {
            let e = asTransferError(error)
            if !ctx.isFinished || e.fromPeer { ctx.fail(e) }
            lock.withLock { cond.broadcast() }
        }
    }

    private func apply(_ p: PlanEntry) throws {
        try lock.withLock { () throws in
            guard let f = files[p.id] else { throw TransferError.protocolError("plan for unknown file \(p.id)") }
            switch p.action {
            case .skip:
                files[p.id] = nil
                unweigh(f)
                ctx.progress.skippedUnread(bytes: f.announcedBytes, name: f.path)
            case .full:
                enqueueFull(f)
            case .resume(let have):
                guard !f.isSmall else { throw TransferError.protocolError("resume plan for a one-chunk file") }
                for h in have where Int(h.index) >= f.first && Int(h.index) < f.end { f.claimed[Int(h.index)] = h.hash }
                enqueueFull(f)
            case .compareDigest(let d):
                f.expectedDigest = d
                checkQueue.append(f)
            }
            cond.broadcast()
        }
    }

    /// Lock held.
    private func enqueueFull(_ f: SenderFile) {
        f.hashes = f.isStream ? [] : [ChunkHash](repeating: .zero, count: f.chunkCount)
        f.cursor = f.first
        f.processed = 0
        if f.isSmall { smallQueue.append(f) } else { bigQueue.append(f) }
    }

    private func verdict(id: UInt64, ok: Bool, message: String, code: TransferError.Code?) {
        lock.withLock {
            guard let f = files.removeValue(forKey: id) else { return }
            retire(f)
            f.failed = !ok
            if ok {
                ctx.progress.fileDone(skipped: f.skipping, name: f.path)
            } else {
                ctx.progress.fileFailed(message, code: code ?? .remote, fromPeer: true)
            }
            cond.broadcast()
        }
    }

    /// Lock held: the sender itself could not read a file, or it changed while being read.
    /// Counted failed here and queued for the receiver (`reportSourceFailures`), which fails
    /// it too: both sides' counts, exit status and audit line agree.
    private func failLocally(_ f: SenderFile, _ message: String, changed: Bool = false, code: TransferError.Code = .io) {
        if files.removeValue(forKey: f.id) != nil {
            f.failed = true
            retire(f)
            ctx.progress.fileFailed(message, code: code)
            sourceFailures.append(SourceFailure(id: f.id, changed: changed, message: message, code: code))
            cond.broadcast()
        }
    }

    /// Sends the queued `SourceFailure`s to the receiver. Called by a data stream after each
    /// piece of work and by the control thread before END.
    func reportSourceFailures(ring: Ring) throws {
        try reportLock.withLock { () throws in
            let list = lock.withLock { () -> [SourceFailure] in
                defer { sourceFailures.removeAll() }
                return sourceFailures
            }
            var at = 0
            while at < list.count {
                let end = min(list.count, at + SourceFailure.perFrameMax)
                try ctx.control.send(.sourceFailed, SourceFailure.encode(list[at..<end]), ring: ring)
                at = end
            }
        }
    }

    /// True when there is something for `reportSourceFailures` (a cheap check for the streams).
    var hasSourceFailures: Bool { lock.withLock { !sourceFailures.isEmpty } }

    // MARK: data workers

    private enum Work {
        case chunk(SenderFile, Int, resend: Bool)
        case batch([SenderFile])
        case check(SenderFile)
    }

    /// The next piece of work for a data stream; nil when the session ends, or with `wait`
    /// false when there is none at this moment.
    private func takeWork(batchBytesMax: Int, wait: Bool = true) -> Work? {
        lock.withLock {
            while true {
                if ctx.isFinished { return nil }
                while let (f, i) = resendQueue.first {
                    resendQueue.removeFirst()
                    resendPending.remove(ResendKey(id: f.id, index: i))
                    if f.failed || files[f.id] == nil { continue }
                    return f.isSmall ? .batch([f]) : .chunk(f, i, resend: true)
                }
                if !checkQueue.isEmpty { return .check(checkQueue.removeFirst()) }
                if smallHead < smallQueue.count {
                    var batch: [SenderFile] = []
                    var bytes = 0
                    while smallHead < smallQueue.count && batch.count < Sender.batchFilesTarget {
                        let f = smallQueue[smallHead]
                        if f.failed { smallHead += 1; continue }
                        if !batch.isEmpty && bytes + Int(f.size) > batchBytesMax { break }
                        batch.append(f)
                        bytes += Int(f.size)
                        smallHead += 1
                    }
                    if smallHead == smallQueue.count { smallQueue.removeAll(keepingCapacity: true); smallHead = 0 }
                    if !batch.isEmpty { return .batch(batch) }
                }
                while bigHead < bigQueue.count {
                    let f = bigQueue[bigHead]
                    if f.failed || f.cursor >= f.end { bigHead += 1; continue }
                    let i = f.cursor
                    f.cursor += 1
                    if f.cursor >= f.end { bigHead += 1 }
                    if bigHead == bigQueue.count { bigQueue.removeAll(keepingCapacity: true); bigHead = 0 }
                    return .chunk(f, i, resend: false)
                }
                if !wait { return nil }
                cond.wait(seconds: 0.25)
            }
        }
    }

    /// Runs one data stream until the session ends. Called on the stream's own thread.
    func runWorker(_ conn: Connection) {
        do {
            let w = try SenderWorker(sender: self, conn: conn)
            let batchBytesMax = min(ctx.options.chunkBytes, 1 << 20)
            // Work taken ahead: a stream that reads its chunks direct takes its next piece of
            // work before it sends the current chunk, to have that chunk's read in flight
            // meanwhile (`SenderWorker.sendChunk`'s `next`).
            var queued: Work?
            let next = { () -> (SenderFile, Int)? in
                guard queued == nil, let work = self.takeWork(batchBytesMax: batchBytesMax, wait: false) else { return nil }
                queued = work
                if case .chunk(let f, let i, _) = work { return (f, i) }
                return nil
            }
            while let work = queued ?? takeWork(batchBytesMax: batchBytesMax) {
                queued = nil
                if ctx.isFinished { break }
                switch work {
                case .chunk(let f, let i, let resend): try w.sendChunk(f, i, resend: resend, next: next)
                case .batch(let files): try w.sendBatch(files)
                case .check(let f): try w.check(f)
                }
                if hasSourceFailures { try w.reportSourceFailures() }
            }
        } catch {
            ctx.fail(asTransferError(error))
            lock.withLock { cond.broadcast() }
        }
    }

    // MARK: worker callbacks (lock taken inside)

    /// Records what a sealed frame carried (see `frameHistory`).
    func remember(stream: Int, counter: UInt64, contents: [(UInt64, Int)]) {
        lock.withLock {
            let h = frameHistory[stream] ?? FrameHistory()
            frameHistory[stream] = h
            h.add(counter, contents)
        }
    }

    /// Queues one chunk to be sent again, once; lock held.
    private func queueResend(_ id: UInt64, _ index: Int) throws {
        guard let f = files[id], !f.failed, index < max(f.chunkCount, 1) else { return }
        // A range session sends its own chunks only, whatever is asked.
        if let r = f.range, !r.contains(index) { throw TransferError.protocolError("chunk \(index) asked again is outside the range \(r.first)+\(r.count)") }
        if f.isStream {
            // Nothing of a stream can be read again: the copy of it fails (rerun it).
            failLocally(f, "a chunk of \(displayPath(f)) arrived damaged and a stream cannot be read again; nothing was written at its name")
            return
        }
        guard resendPending.insert(ResendKey(id: id, index: index)).inserted else { return }
        if resendPending.count > Sender.resendPendingMax {
            throw TransferError.protocolError("the receiver asked for more than \(Sender.resendPendingMax) chunks again")
        }
        resendQueue.append((f, index))
        cond.broadcast()
    }

    /// Lock held: the file needs its descriptor no more. Closed now if no data stream is
    /// reading it, else by the last one's `release`.
    /// What announcing `f` adds to the bounds in flight (`multiChunkFilesInFlightMax`,
    /// `chunksInFlightMax`): a stream counts as a file with no chunks known yet.
    static func weight(_ f: SenderFile) -> (multi: Bool, chunks: Int) {
        (!f.isSmall, f.isStream || f.isSmall ? 0 : f.chunkCount)
    }

    /// Lock held: whether a file of `weight` can be announced now.
    private func roomFor(_ weight: (multi: Bool, chunks: Int)) -> Bool {
        guard files.count < Sender.filesInFlightMax else { return false }
        guard weight.multi else { return true }
        return multiChunkInFlight < Sender.multiChunkFilesInFlightMax
            && (chunksInFlight == 0 || chunksInFlight + weight.chunks <= Sender.chunksInFlightMax)
    }

    /// Lock held: `f` left the files in flight.
    private func unweigh(_ f: SenderFile) {
        let w = Sender.weight(f)
        multiChunkInFlight -= w.multi ? 1 : 0
        chunksInFlight -= w.chunks
    }

    private func retire(_ f: SenderFile) {
        unweigh(f)
        f.retired = true
        if f.fd >= 0 && f.fdUsers == 0 { closeDescriptors(f) }
    }

    /// Lock held, no stream reading the file.
    private func closeDescriptors(_ f: SenderFile) {
        Glibc.close(f.fd)
        f.fd = -1
        if f.directFd >= 0 { Glibc.close(f.directFd); f.directFd = -1 }
    }

    /// The file's O_DIRECT descriptor (`DirectIO.openForReading`), opened once by the first
    /// stream that asks; -1 when direct reads do not apply to it (a stream, a sparse file, a
    /// small one, another filesystem, or direct I/O off). Only between `descriptor` and
    /// `release`.
    func directDescriptor(_ f: SenderFile) -> Int32 {
        // Opened outside the lock (on a parallel filesystem an open is a round trip to its
        // metadata server, which the other streams need not wait for); the caller's use of
        // the file keeps `f.fd` open meanwhile. A stream that loses the race closes its own.
        // Once checked (every chunk but a file's first): one lock, and the answer.
        let (known, source): (Int32?, Int32) = lock.withLock {
            if f.directChecked { return (f.directRefused ? -1 : f.directFd, -1) }
            return (nil, !f.isStream && !f.sparse && f.fd >= 0 ? f.fd : -1)
        }
        if let known { return known }
        let opened = source >= 0 ? DirectIO.openForReading(source: source, size: f.size, chunkBytes: ctx.options.chunkBytes) : -1
        return lock.withLock {
            if f.directChecked {
                if opened >= 0 { Glibc.close(opened) }
            } else {
                f.directChecked = true
                f.directFd = opened
            }
            return f.directRefused ? -1 : f.directFd
        }
    }

    /// Direct reads in flight across the session's data streams (`SenderWorker`, "Direct
    /// reads"), at most `directReadsMax`. Measured (bench/RESULTS.md, "Direct reads"): a
    /// disk-to-disk copy on this machine's one virtual disk, where mq-deadline serves reads
    /// before writes, was 14 % slower with four streams' reads in flight than with buffered
    /// reads (the receiver's direct writes waited), and as fast with two. Two large direct
    /// reads keep a device busy (alone, one read of 4 MiB in flight read 1.44 GiB/s here).
    ///
    /// A stream's read ahead holds its place until the stream comes back for it, after sending
    /// its current chunk, which on a long path takes far longer than the read. So a place held
    /// by a read that has completed (its ring has the completion posted: `CompletionProbe`)
    /// does not make anyone wait. The kernel posts it when the holder's thread next runs
    /// (the rings defer their completion work to the submitter, `COOP_TASKRUN`): for a stream
    /// blocked in a send, at its send's next wake-up. Measured on a rate-bound path (RESULTS,
    /// `--bwlimit 300M`): direct reads as fast as buffered ones.
    private var directReads = 0
    private var directAhead: [CompletionProbe] = []
    static let directReadsMax = 2

    /// A place for one direct read: with `wait`, waits for one (false when the session ends
    /// meanwhile); without, false at once when none is free. `ahead`: the read stays in flight
    /// while the stream works (its ring's probe). Give it back with `endDirectRead`.
    func beginDirectRead(wait: Bool, ahead: CompletionProbe? = nil) -> Bool {
        lock.withLock {
            for _ in 0..<100_000 {
                var finished = 0
                for p in directAhead where p.posted { finished += 1 }
                if directReads - finished < Sender.directReadsMax {
                    directReads += 1
                    if let ahead { directAhead.append(ahead) }
                    return true
                }
                if !wait || ctx.isFinished { return false }
                cond.wait(seconds: 0.002)
            }
            return false
        }
    }

    func endDirectRead(ahead: CompletionProbe? = nil) {
        lock.withLock {
            directReads -= 1
            if let ahead, let i = directAhead.firstIndex(where: { $0 === ahead }) { directAhead.remove(at: i) }
            cond.broadcast()
        }
    }

    /// A direct read of `f` was refused: its other chunks are read buffered.
    func noDirectReads(_ f: SenderFile) {
        lock.withLock { f.directRefused = true }
    }

    /// Opens (once) the file's descriptor for reading, beneath the source root, and counts the
    /// caller as its user until `release`; nil (no user counted) for a file failed or done.
    func descriptor(_ f: SenderFile) throws -> Int32? {
        try lock.withLock { () throws -> Int32? in
            if f.failed || f.retired { return nil }
            if f.fd >= 0 { f.fdUsers += 1; return f.fd }
            do {
                let fd: Int32
                if f.path.isEmpty && rootIsFile {
                    fd = try sys("cannot open source") { dup(rootFd) }
                } else {
                    fd = try Paths.openData(beneath: rootFd, f.path, flags: O_RDONLY | O_NOFOLLOW, noSymlinks: true)
                }
                var st = stat()
                fstat(fd, &st)
                f.sparse = st.st_blocks * 512 < st.st_size
                f.fd = fd
                f.fdUsers += 1
                return fd
            } catch {
                let e = asTransferError(error)
                failLocally(f, "cannot read '\(displayPath(f))': \(e.message)", code: e.code)
                return nil
            }
        }
    }

    /// The caller of `descriptor` is done with the file's descriptor: closed if the file was
    /// retired meanwhile and no other stream still reads it.
    func release(_ f: SenderFile) {
        lock.withLock {
            f.fdUsers -= 1
            if f.retired && f.fdUsers == 0 && f.fd >= 0 { closeDescriptors(f) }
        }
    }

    /// True once the file failed or has its verdict: a stream still reading it may stop.
    func isRetired(_ f: SenderFile) -> Bool { lock.withLock { f.retired } }

    func displayPath(_ f: SenderFile) -> String { f.path.isEmpty ? (rootName ?? "(source file)") : f.path }

    /// The file changed between its manifest entry and its last read (a short read, or a size
    /// or mtime that differs): it fails on both sides, and its partial copy is discarded.
    /// `fd`: a descriptor of the file to describe the change with (-1: the sender's own).
    func sourceChanged(_ f: SenderFile, fd: Int32 = -1) {
        lock.withLock { failChanged(f, fd: fd) }
    }

    /// Lock held.
    private func failChanged(_ f: SenderFile, fd: Int32 = -1) {
        var how = ""
        var st = stat()
        let d = fd >= 0 ? fd : f.fd
        if d >= 0 && fstat(d, &st) == 0 {
            if UInt64(st.st_size) != f.size {
                how = " (\(byteText(f.size)) when listed, \(byteText(UInt64(max(0, st.st_size)))) now)"
            } else {
                how = " (modified: its mtime changed)"
            }
        }
        failLocally(f, "'\(displayPath(f))' changed while being read\(how); nothing was written at its name, rerun to copy the new version", changed: true)
    }

    /// True when `st` no longer matches the file's manifest entry (size or mtime).
    static func differs(_ f: SenderFile, _ st: stat) -> Bool {
        UInt64(st.st_size) != f.size || Int64(st.st_mtim.tv_sec) != f.mtimeSeconds || UInt32(st.st_mtim.tv_nsec) != f.mtimeNanoseconds
    }

    func openForBatch() -> (rootFd: Int32, rootIsFile: Bool) { (rootFd, rootIsFile) }

    /// A batch file that turned out to be something else than a regular file when opened.
    func batchNotData(_ f: SenderFile, _ error: TransferError) {
        lock.withLock { failLocally(f, "cannot read '\(displayPath(f))': \(error.message)", code: error.code) }
    }

    func batchOpenFailed(_ f: SenderFile, errno e: Int32) {
        let text = e == EXDEV || e == ELOOP ? "path leaves the source root" : String(cString: strerror(e))
        lock.withLock { failLocally(f, "cannot read '\(displayPath(f))': \(text) (\(e))", code: e == EXDEV || e == ELOOP ? .path : TransferError.Code(errno: e)) }
    }

    /// Records a chunk's hash; when the file's last chunk is in, sends its digest, unless the
    /// file changed since its manifest entry (grew, shrank, or was written to): then it fails.
    func record(_ f: SenderFile, index: Int, hash: ChunkHash, resend: Bool, ring: Ring) throws {
        let digest: ChunkHash? = lock.withLock {
            if resend || f.failed || f.isSmall { return nil }  // one-chunk files: verdict comes per file
            if f.isStream && index == f.hashes.count { f.hashes.append(hash) } else { f.hashes[index] = hash }
            f.processed += 1
            guard f.processed == f.end - f.first, !f.isSmall else { return nil }
            var st = stat()
            if !f.isStream && f.fd >= 0 && fstat(f.fd, &st) == 0 && Sender.differs(f, st) {
                failChanged(f)
                return nil
            }
            // A range's digest covers its own chunks (the receiver checks the same).
            if let r = f.range {
                let hashes = Array(f.hashes[r.first..<r.end])
                ctx.rangeHashes = hashes
                return FileDigest.of(hashes)
            }
            return FileDigest.of(f.hashes)
        }
        if let digest { try sendDigest(f, digest, ring: ring) }
    }

    /// FILE_DIGEST: the file's id and digest; for a stream also its length, known only now.
    private func sendDigest(_ f: SenderFile, _ digest: ChunkHash, ring: Ring) throws {
        var w = ByteWriter(capacity: 32)
        w.u64(f.id)
        w.hash(digest)
        if f.isStream { w.u64(f.size) }
        try ctx.control.send(.fileDigest, w.bytes, ring: ring)
    }

    /// A stream's end was read: it has `chunks` chunks and `size` bytes. Called by the one
    /// data stream that reads it, before it records the last chunk (if any); when every chunk
    /// is already recorded (the end fell on a chunk boundary), the digest goes now.
    func streamEnded(_ f: SenderFile, chunks: Int, size: UInt64, ring: Ring) throws {
        let digest: ChunkHash? = lock.withLock {
            f.chunkCount = chunks
            f.size = size
            guard !f.failed, f.processed == chunks else { return nil }
            return FileDigest.of(f.hashes)
        }
        ctx.progress.add(bytesTotal: size)
        if let digest { try sendDigest(f, digest, ring: ring) }
    }

    /// `--checksum` verdict: identical → FILE_SKIP; different → sent in full.
    func checked(_ f: SenderFile, digest: ChunkHash, ring: Ring) throws {
        let same = lock.withLock { () -> Bool in
            if digest == f.expectedDigest {
                f.skipping = true
                return true
            }
            enqueueFull(f)
            cond.broadcast()
            return false
        }
        if same {
            ctx.progress.skipped(bytes: f.size)
            var w = ByteWriter(capacity: 8)
            w.u64(f.id)
            try ctx.control.send(.fileSkip, w.bytes, ring: ring)
        }
    }

    var rateLimiter: RateLimiter? { limiter }
}

struct ResendKey: Hashable {
    var id: UInt64
    var index: Int
}

/// What the last `Sender.frameHistoryMax` sealed frames of one stream carried, in a ring.
/// Each entry answers one RESEND_FRAME; guarded by the Sender's lock.
final class FrameHistory {
    enum Lookup {
        case found([(UInt64, Int)])
        case notYetSent
        case alreadyAnswered
        case forgotten
    }

    private var ring: [(counter: UInt64, contents: [(UInt64, Int)]?)] = []
    private var head = 0
    /// One past the highest counter recorded.
    private var end: UInt64 = 0

    func add(_ counter: UInt64, _ contents: [(UInt64, Int)]) {
        if ring.count < Sender.frameHistoryMax {
            ring.append((counter, contents))
        } else {
            ring[head] = (counter, contents)
            head = (head + 1) % ring.count
        }
        end = max(end, counter + 1)
    }

    func take(_ counter: UInt64) -> Lookup {
        if counter >= end { return .notYetSent }
        for i in ring.indices where ring[i].counter == counter {
            guard let c = ring[i].contents else { return .alreadyAnswered }
            ring[i].contents = nil
            return .found(c)
        }
        return .forgotten
    }
}
