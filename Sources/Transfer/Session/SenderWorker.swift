import CLiburing
import Glibc

/// One data stream of a `Sender`: its ring, its two buffers (read, compress: registered at the
/// first chunk read, never for batches of small files, `Ring.registerLater`) and its
/// zstd context. Everything is allocated when the stream starts; the per-chunk path allocates
/// nothing.
final class SenderWorker {
    private unowned let sender: Sender
    private let conn: Connection
    private let ring: Ring
    private let pool: BufferPool
    private let compressor = Compressor()
    private let policy: SharedCompressionPolicy
    private let chunkBytes: Int
    private let headroom = DataLayout.headroomBytes
    /// Batch scratch: NUL-terminated paths and open_how structs for OPENAT2 submissions.
    private let pathArena: UnsafeMutablePointer<CChar>
    private let pathSlotBytes = PathLimits.pathBytesMax + 1
    private let hows: UnsafeMutablePointer<open_how>
    private var fds: [Int32]
    private var results: [Int32]
    /// Per file of the batch being read: read with a plain `pread` from this thread, not through
    /// the ring, because its filesystem keeps it in memory (`inMemory`). Not a direct read:
    /// those bypass the page cache (`O_DIRECT`, "Direct reads" below).
    private var readInline: [Bool]
    /// Devices seen in batches: whether each is a tmpfs (or ramfs). A ring read of a file there
    /// goes through a kernel worker thread (io_uring cannot read it without blocking, as far as
    /// it knows), and that hand-off costs more than the 4 KiB copy; nothing there waits for a
    /// device, so a batch reads such files with plain `pread` calls. Other filesystems keep the ring's
    /// parallel reads, which a cold disk needs. At most 64 devices remembered.
    private var memoryDevices: [UInt64: Bool] = [:]
    private var zeroHashes = ZeroHashes()
    /// Seals every frame at the `safe` and `private` levels; nil at `clear`.
    private let sealer: FrameSealer?
    /// Zero-copy sends of raw chunks (`ZeroCopy`); nil when off.
    private let zeroCopy: ZeroCopySender?

    // Direct reads (issue 18). A chunk of a large file on a block filesystem (`DirectIO`) that
    // the page cache does not hold is read with O_DIRECT: the device writes it into one of two
    // aligned buffers, with no copy through the page cache (on this machine a cold buffered
    // read cost 1 s of CPU per GiB, a direct one 0.05: bench/direct_reads.sh). A direct read
    // has no read-ahead of the kernel's behind it, so the stream keeps its own: before it
    // hashes and sends a chunk, it takes its next piece of work and, when that is such a
    // chunk, starts its read into the other buffer (on a ring of its own, so that the sends on
    // the stream's ring never reap it). One stream alone read 1.44 GiB/s direct, and beside a
    // writer on the same disk two reads in flight made 1.18-1.31 GiB/s where buffered reads
    // made 0.58-0.62. Anything else (streams, sparse files, small files, chunks the cache
    // holds, zero-copy sends) is read as before.

    /// The two direct buffers (allocated at the first direct read; not registered: pinned only
    /// while the device writes into them) and the ring their reads go through.
    private var directPool: BufferPool?
    private var readRing: Ring?
    /// `readRing`'s completion queue, for the session's count of reads in flight.
    private var readProbe: CompletionProbe?
    /// Where a chunk starts in a direct buffer: aligned, with room before it for the frame's
    /// headers (`headroom`).
    private static let directOffset = DirectIO.alignment
    /// The next chunk's direct read, in flight: its file (counted as a user of its
    /// descriptor until consumed), index and buffer.
    private var ahead: (f: SenderFile, index: Int, buffer: Int)?
    /// The direct buffer the current chunk is in (the next read goes into the other).
    private var directCurrent = 1
    private var mincoreScratch: [UInt8] = []
    /// A read could be neither submitted nor run out: this stream reads buffered from then on
    /// (its read ring is never waited on again).
    private var directBroken = false

    init(sender: Sender, conn: Connection) throws {
        self.sender = sender
        self.conn = conn
        if let key = sender.ctx.dataKey {
            sealer = FrameSealer(key: key, level: sender.ctx.protection, stream: conn.streamIndex)
        } else {
            sealer = nil
        }
        chunkBytes = sender.ctx.options.chunkBytes
        ring = try Ring(entries: UInt32(min(4096, Wire.batchFilesMax * 2)))
        let bufferBytes = headroom + DataLayout.framePayloadBytesMax(chunkBytes: chunkBytes)
        pool = try BufferPool(count: 2, bytesPerBuffer: bufferBytes)
        pool.registerLazily(with: ring)
        zeroCopy = ZeroCopy.enabled ? try ZeroCopySender(bytesPerBuffer: bufferBytes) : nil
        policy = sender.compressionPolicy
        pathArena = .allocate(capacity: pathSlotBytes * Wire.batchFilesMax)
        hows = .allocate(capacity: Wire.batchFilesMax)
        fds = [Int32](repeating: -1, count: Wire.batchFilesMax)
        results = [Int32](repeating: 0, count: Wire.batchFilesMax)
        readInline = [Bool](repeating: false, count: Wire.batchFilesMax)
    }

    deinit {
        // A read in flight when the stream ends (the session failed or finished): its buffer
        // must outlive it, and its file's descriptor is released.
        if let a = ahead {
            _ = try? readRing?.drain { _, _ in }
            sender.endDirectRead(ahead: readProbe)
            sender.release(a.f)
        }
        pathArena.deallocate()
        hows.deallocate()
    }

    /// One direct buffer: the chunk rounded up to whole blocks, the headers before it, the
    /// sealing tag after (counted in the server's buffer budget, `streamBufferBytes`).
    static func directBufferBytes(chunkBytes: Int) -> Int {
        (directOffset + chunkBytes + DirectIO.alignment + Sealing.tagBytes + 4095) & ~4095
    }

    /// Allocates the direct buffers and their ring, at the first direct read.
    private func directBuffers() throws {
        if directPool == nil {
            directPool = try BufferPool(count: 2, bytesPerBuffer: SenderWorker.directBufferBytes(chunkBytes: chunkBytes))
            readRing = try Ring(entries: 4)
            readProbe = readRing!.completionProbe()
        }
    }

    /// Starts a direct read of chunk `index` of `f` (`fd`: its direct descriptor) into direct
    /// buffer `buffer`, rounded up to whole blocks (the last chunk's tail).
    private func startDirectRead(fd: Int32, _ f: SenderFile, _ index: Int, buffer: Int) throws {
        try directBuffers()
        let offset = UInt64(index) * UInt64(chunkBytes)
        let length = Int(min(UInt64(chunkBytes), f.size - offset))
        let asked = (length + DirectIO.alignment - 1) & ~(DirectIO.alignment - 1)
        try readRing!.read(fd: fd, buffer: directPool!.buffer(buffer) + SenderWorker.directOffset, length: asked, offset: offset, bufferIndex: nil, tag: 1)
        do { try readRing!.submit() } catch {
            // Not submitted: the read stays queued; run it out now, so that no later wait
            // takes its completion for another's, and no late read lands in a buffer in use.
            // If even that fails, this stream's direct reads end here.
            if (try? readRing!.drain { _, _ in }) == nil { directBroken = true }
            throw error
        }
    }

    /// Waits for the direct read in flight (and gives its place back); its result (bytes, or
    /// -errno). `ahead`: it was read ahead.
    private func finishDirectRead(ahead: Bool) throws -> Int32 {
        defer { sender.endDirectRead(ahead: ahead ? readProbe : nil) }
        var result: Int32 = 0
        try readRing!.drain { _, r in result = r }
        return result
    }

    /// Tells the receiver about files failed on this side (see `Sender.reportSourceFailures`).
    func reportSourceFailures() throws { try sender.reportSourceFailures(ring: ring) }

    /// Reads `length` bytes at `offset` into `dst` through the ring (READ_FIXED); returns the
    /// bytes read (fewer only at end of file).
    /// `registered`: `dst` lies in this ring's buffer 0 (READ_FIXED); else a plain READ.
    private func readFully(fd: Int32, into dst: UnsafeMutableRawPointer, length: Int, offset: UInt64, registered: Bool = true) throws -> Int {
        var done = 0
        while done < length {
            let r = try ring.runOne { () throws in
                try ring.read(fd: fd, buffer: dst + done, length: length - done, offset: offset + UInt64(done), bufferIndex: registered ? 0 : nil, tag: 1)
            }
            if r < 0 { throw TransferError.system("read", errno: -r) }
            if r == 0 { break }
            done += Int(r)
        }
        return done
    }


    /// Reads up to one chunk of a stream (a pipe, a FIFO, a terminal): fewer bytes only at
    /// its end. Waits for a writer that is slow; a read error fails the session. Nil when the
    /// file failed meanwhile (the receiver's verdict, say a full disk): nothing more to send.
    private func readStream(_ fd: Int32, into dst: UnsafeMutableRawPointer, _ f: SenderFile) throws -> Int? {
        var got = 0
        while got < chunkBytes {
            if sender.ctx.isFinished { throw sender.ctx.error ?? TransferError(.io, "stopped", resumable: false) }
            if sender.isRetired(f) { return nil }
            let n = Glibc.read(fd, dst + got, chunkBytes - got)
            if n > 0 { got += n; continue }
            if n == 0 { break }
            if errno == EINTR { continue }
            if errno == EAGAIN {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&pfd, 1, 1000)
                continue
            }
            throw TransferError.system("cannot read \(sender.displayPath(f))", errno: errno)
        }
        return got
    }

    /// True when [offset, offset+length) is a hole (no data) in a sparse file.
    private func isHole(fd: Int32, offset: UInt64, length: Int) -> Bool {
        let next = lseek(fd, off_t(offset), SEEK_DATA)
        if next < 0 { return errno == ENXIO }
        return UInt64(next) >= offset + UInt64(length)
    }

    /// Compresses `n` bytes at `src` into the compression buffer's payload area if the policy
    /// says so; returns the payload pointer, its length and the codec.
    private func encode(_ src: UnsafeMutableRawPointer, _ n: Int, compressible: inout Bool?, sinceProbe: inout Int) -> (UnsafeMutableRawPointer, Int, ChunkCodec) {
        let cbuf = pool.buffer(1) + headroom
        let capacity = pool.bytesPerBuffer - headroom
        let sample = min(n, CompressionPolicy.sampleBytes)
        let level = policy.level(compressible: &compressible, chunksSinceProbe: &sinceProbe, sampleSize: sample, probe: { level in
            compressor.compress(src, sample, into: cbuf, capacity: capacity, level: level)
        })
        if let level, let c = compressor.compress(src, n, into: cbuf, capacity: capacity, level: level) {
            return (cbuf, c, .zstd)
        }
        return (src, n, .raw)
    }

    /// Frames (and at `safe`/`private` seals) the subheader at `sub` and the payload after it,
    /// then sends it in one call. `contents`: what the frame carries (file id, chunk index),
    /// remembered so that the receiver can ask for a rejected frame again.
    /// `zeroCopySlot`: the frame lies in that zero-copy slot's buffer and goes by SEND_ZC.
    private func emit(_ type: FrameType, sub: UnsafeMutableRawPointer, subheaderBytes: Int, clearSubheaderBytes: Int, payloadBytes: Int, zeroCopySlot: Int? = nil, contents: () -> [(UInt64, Int)]) throws {
        let start: UnsafeMutableRawPointer
        let total: Int
        if let sealer {
            start = sub - Sealing.counterBytes - Wire.frameHeaderBytes
            let length = Sealing.counterBytes + subheaderBytes + payloadBytes + Sealing.tagBytes
            FrameHeader.write(to: start, length: length, type: type)
            let counter = sealer.seal(frame: start, subheaderBytes: subheaderBytes, clearSubheaderBytes: clearSubheaderBytes, payloadBytes: payloadBytes)
            sender.remember(stream: conn.streamIndex, counter: counter, contents: contents())
            total = Wire.frameHeaderBytes + length
        } else {
            start = sub - Wire.frameHeaderBytes
            FrameHeader.write(to: start, length: subheaderBytes + payloadBytes, type: type)
            total = Wire.frameHeaderBytes + subheaderBytes + payloadBytes
        }
        sender.rateLimiter?.acquire(total)
        if let slot = zeroCopySlot, let zc = zeroCopy, zc.usable {
            if try conn.sendFramedZeroCopy(start, total, zc, slot: slot) {
                sender.ctx.progress.sentZeroCopy(bytes: UInt64(total))
                return
            }
        }
        try conn.sendFramed(start, total, ring: ring)
    }

    /// `next`: takes this stream's next piece of work now (see "Direct reads"); the chunk it
    /// names, if it is one.
    func sendChunk(_ f: SenderFile, _ index: Int, resend: Bool, next: () -> (SenderFile, Int)? = { nil }) throws {
        // This chunk's direct read, started while the stream sent the one before.
        var preread: (buffer: Int, result: Int32)?
        if let a = ahead {
            ahead = nil
            defer { sender.release(a.f) }
            let r = try finishDirectRead(ahead: true)
            if a.f === f && a.index == index { preread = (a.buffer, r) }
        }
        guard let fd = try sender.descriptor(f) else { return }
        defer { sender.release(f) }
        let offset = UInt64(index) * UInt64(chunkBytes)
        var length = f.isStream ? chunkBytes : Int(min(UInt64(chunkBytes), f.size - offset))
        // A file's chunk is read into the next zero-copy slot when those sends are on.
        let slot = f.isStream ? nil : try zeroCopy.flatMap { $0.usable ? try $0.acquire() : nil }
        let directFd = f.isStream || zeroCopy != nil || directBroken ? -1 : sender.directDescriptor(f)
        var direct = false
        if directFd >= 0 && preread == nil && DirectIO.mostlyUncached(fd: fd, offset: offset, length: length, scratch: &mincoreScratch)
            && sender.beginDirectRead(wait: true) {
            // Not read ahead (the first chunk of a run, or no place was free then): read it
            // direct now.
            directCurrent ^= 1
            do { try startDirectRead(fd: directFd, f, index, buffer: directCurrent) } catch { sender.endDirectRead(); throw error }
            preread = (directCurrent, try finishDirectRead(ahead: false))
        }
        if let p = preread {
            if p.result < 0 {
                // Refused (a filesystem that takes the open but not the read): buffered from now on.
                if p.result == -EINVAL { sender.noDirectReads(f) } else { throw TransferError.system("read", errno: -p.result) }
            } else {
                direct = true
                directCurrent = p.buffer
            }
        }
        let data = direct ? directPool!.buffer(directCurrent) + SenderWorker.directOffset
            : (slot.map { zeroCopy!.pool.buffer($0) } ?? pool.buffer(0)) + headroom
        var codec = ChunkCodec.raw
        let hash: ChunkHash
        if f.isStream {
            // In order, from the one stream that reads it: up to a chunk, fewer only at its end.
            guard let got = try readStream(fd, into: data, f) else { return }
            length = got
            if length < chunkBytes {
                try sender.streamEnded(f, chunks: length == 0 ? index : index + 1, size: offset + UInt64(length), ring: ring)
                if length == 0 { return }
            }
            hash = ChunkHash.of(data, length)
        } else if f.sparse && isHole(fd: fd, offset: offset, length: length) {
            codec = .zero
            hash = zeroHashes.hash(length, scratch: pool.buffer(1))
        } else {
            // Direct: the whole blocks asked for came (more than `length` when the file grew
            // since it was listed, which the check after the last read reports).
            var got = direct ? min(length, Int(preread!.result)) : try readFully(fd: fd, into: data, length: length, offset: offset, registered: slot == nil)
            let gotDirect = direct ? got : 0
            if direct && got < length && got > 0 {
                // Short, but not at the end (a filesystem may return less): the rest buffered.
                got += try readFully(fd: fd, into: data + got, length: length - got, offset: offset + UInt64(got), registered: false)
            }
            if got != length { sender.sourceChanged(f); return }
            if direct {
                sender.ctx.progress.readDirect(bytes: UInt64(gotDirect))
                lookAhead(next(), busy: directCurrent)
            }
            hash = ChunkHash.of(data, length)
            if f.sparse && isAllZero(data, length) { codec = .zero }
        }
        if !resend, let claimed = f.claimed[index], claimed == hash {
            // Resume: the receiver already holds this chunk, durable and verified.
            sender.ctx.progress.resumed(bytes: UInt64(length))
            try sender.record(f, index: index, hash: hash, resend: false, ring: ring)
            return
        }
        var payload = data
        var payloadBytes = length
        if codec == .zero {
            payloadBytes = 0
        } else {
            (payload, payloadBytes, codec) = encode(data, length, compressible: &f.compressible, sinceProbe: &f.chunksSinceProbe)
        }
        let sub = payload - DataLayout.chunkSubheaderBytes
        sub.storeBytes(of: f.id.littleEndian, toByteOffset: 0, as: UInt64.self)
        sub.storeBytes(of: UInt32(index).littleEndian, toByteOffset: 8, as: UInt32.self)
        sub.storeBytes(of: UInt32(length).littleEndian, toByteOffset: 12, as: UInt32.self)
        sub.storeBytes(of: UInt64(codec.rawValue).littleEndian, toByteOffset: 16, as: UInt64.self)  // codec + pad + reserved
        sub.storeBytes(of: hash.low.littleEndian, toByteOffset: 24, as: UInt64.self)
        sub.storeBytes(of: hash.high.littleEndian, toByteOffset: 32, as: UInt64.self)
        // The header check guards clear frames; sealed frames are authenticated whole (and in
        // `private` a check over the hash would leak a function of the plaintext).
        let check = sealer == nil ? DataLayout.subheaderCheck(sub) : 0
        sub.storeBytes(of: check.littleEndian, toByteOffset: 20, as: UInt32.self)
        try emit(.chunk, sub: sub, subheaderBytes: DataLayout.chunkSubheaderBytes, clearSubheaderBytes: Sealing.chunkClearSubheaderBytes, payloadBytes: payloadBytes,
                 zeroCopySlot: payload == data && payloadBytes > 0 ? slot : nil) { [(f.id, index)] }
        if f.compressible == true && codec != .zero { policy.delivered(rawBytes: length, compressedArm: codec == .zstd) }
        sender.ctx.progress.moved(raw: resend ? 0 : UInt64(length), wire: UInt64(payloadBytes))
        try sender.record(f, index: index, hash: hash, resend: resend, ring: ring)
    }

    /// Starts the direct read of the chunk this stream sends next, when it is one that goes
    /// direct, into the direct buffer that is not `busy`.
    private func lookAhead(_ work: (SenderFile, Int)?, busy: Int) {
        guard let (f, index) = work, let fd = try? sender.descriptor(f) else { return }
        let offset = UInt64(index) * UInt64(chunkBytes)
        let directFd = f.isStream || directBroken ? -1 : sender.directDescriptor(f)
        guard directFd >= 0, offset < f.size,
              DirectIO.mostlyUncached(fd: fd, offset: offset, length: Int(min(UInt64(chunkBytes), f.size - offset)), scratch: &mincoreScratch),
              (try? directBuffers()) != nil, sender.beginDirectRead(wait: false, ahead: readProbe) else {
            sender.release(f)
            return
        }
        guard (try? startDirectRead(fd: directFd, f, index, buffer: busy ^ 1)) != nil else {
            sender.endDirectRead(ahead: readProbe)
            sender.release(f)
            return
        }
        ahead = (f, index, busy ^ 1)  // released when consumed (or at the stream's end)
    }

    /// Whether the file open at `fd` (on `device`) lives on a tmpfs or ramfs (`memoryDevices`).
    private func inMemory(_ fd: Int32, device: UInt64) -> Bool {
        if let known = memoryDevices[device] { return known }
        let memory = DirectIO.memoryFilesystems.contains(Int(ferry_fs_type(fd)))
        if memoryDevices.count >= 64 { memoryDevices.removeAll() }
        memoryDevices[device] = memory
        return memory
    }

    /// How `sendBatch` opens each file (O_NONBLOCK: see there).
    static let batchOpenFlags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC

    /// Sends many one-chunk files in one frame: opens, reads and closes them with batched ring
    /// submissions (one system call per phase, not per file).
    func sendBatch(_ files: [SenderFile]) throws {
        let n = files.count
        let (rootFd, rootIsFile) = sender.openForBatch()
        // Phase 1: open every file beneath the source root (OPENAT2, RESOLVE_BENEATH).
        for (i, f) in files.enumerated() {
            results[i] = 0
            fds[i] = -1
            if f.path.isEmpty && rootIsFile {
                fds[i] = dup(rootFd)
                continue
            }
            let slot = pathArena + i * pathSlotBytes
            _ = f.path.withCString { strncpy(slot, $0, pathSlotBytes - 1) }
            slot[pathSlotBytes - 1] = 0
            // O_NONBLOCK: the walk saw a regular file, but a FIFO put in its place since must
            // not block a kernel worker (and this stream) for ever; checked and cleared below.
            hows[i] = open_how(flags: UInt64(SenderWorker.batchOpenFlags), mode: 0, resolve: Paths.resolveBeneath | Paths.resolveNoSymlinks | Paths.resolveNoMagicLinks)
            try ring.openat2(dir: rootFd, path: slot, how: hows + i, tag: UInt64(i))
        }
        try ring.drain { tag, res in self.fds[Int(tag)] = res }
        for (i, f) in files.enumerated() where fds[i] >= 0 {
            do {
                let st = try Paths.settle(fds[i], f.path, openFlags: SenderWorker.batchOpenFlags)
                if (st.st_mode & S_IFMT) != S_IFREG {
                    throw TransferError(.path, "'\(f.path)' is \(Paths.kindName(st.st_mode)), not a file")
                }
                readInline[i] = inMemory(fds[i], device: UInt64(st.st_dev))
            } catch {
                Glibc.close(fds[i])
                fds[i] = Int32.min  // failed and reported
                sender.batchNotData(f, asTransferError(error))
            }
        }
        // Phase 2: read each file into its place in the batch.
        let content = pool.buffer(0) + headroom + DataLayout.batchSubheaderBytes
        let table = content
        let dataStart = content + n * DataLayout.batchEntryBytes
        var offsets = [Int](repeating: 0, count: n)
        var at = 0
        for (i, f) in files.enumerated() {
            offsets[i] = at
            if fds[i] < 0 { continue }
            if f.size > 0 && readInline[i] {
                // A short read is finished below, as a ring read's is.
                var r = pread(fds[i], dataStart + at, Int(f.size), 0)
                while r < 0 && errno == EINTR { r = pread(fds[i], dataStart + at, Int(f.size), 0) }
                results[i] = r < 0 ? -errno : Int32(r)
            } else if f.size > 0 {
                // A plain read: a session of small files never registers its buffers (`Ring.registerLater`).
                try ring.read(fd: fds[i], buffer: dataStart + at, length: Int(f.size), offset: 0, bufferIndex: nil, tag: UInt64(i))
            }
            at += Int(f.size)
        }
        try ring.drain { tag, res in self.results[Int(tag)] = res }
        // Phase 3: close them all; build the table.
        var sent: [Int] = []
        var total = 0
        var packed = 0
        for (i, f) in files.enumerated() where fds[i] >= 0 && f.size > 0 && results[i] >= 0 && results[i] < Int32(f.size) {
            // Short read: finish it (synchronously, nothing else is in flight), or the file shrank.
            let got = Int(results[i])
            let more = try readFully(fd: fds[i], into: dataStart + offsets[i] + got, length: Int(f.size) - got, offset: UInt64(got), registered: false)
            results[i] += Int32(more)
        }
        for (i, f) in files.enumerated() {
            if fds[i] < 0 {
                if fds[i] != Int32.min { sender.batchOpenFailed(f, errno: -fds[i]) }
                continue
            }
            // Read whole, but grown or written to since it was listed: not the listed version.
            var st = stat()
            let changed = fstat(fds[i], &st) == 0 && Sender.differs(f, st)
            if changed && results[i] >= 0 { sender.sourceChanged(f, fd: fds[i]) }
            try ring.close(fd: fds[i], tag: UInt64(i))
            if changed && results[i] >= 0 { continue }
            if f.size > 0 && results[i] != Int32(f.size) {
                if results[i] < 0 { sender.batchOpenFailed(f, errno: -results[i]) } else { sender.sourceChanged(f) }
                continue
            }
            // Compact: the file's bytes move down if an earlier file dropped out.
            if packed != offsets[i] && f.size > 0 { memmove(dataStart + packed, dataStart + offsets[i], Int(f.size)) }
            offsets[i] = packed
            packed += Int(f.size)
            sent.append(i)
            total += Int(f.size)
        }
        try ring.drain { _, _ in }
        if sent.isEmpty { return }
        // The table sits before the data; if files dropped out, shift the data down to it.
        let tableBytes = sent.count * DataLayout.batchEntryBytes
        if sent.count != n { memmove(table + tableBytes, dataStart, total) }
        var hashes: [ChunkHash] = []
        hashes.reserveCapacity(sent.count)
        for (k, i) in sent.enumerated() {
            let f = files[i]
            let h = ChunkHash.of(table + tableBytes + offsets[i], Int(f.size))
            hashes.append(h)
            let e = table + k * DataLayout.batchEntryBytes
            e.storeBytes(of: f.id.littleEndian, toByteOffset: 0, as: UInt64.self)
            e.storeBytes(of: UInt64(f.size).littleEndian, toByteOffset: 8, as: UInt64.self)  // u32 length + u32 reserved
            e.storeBytes(of: h.low.littleEndian, toByteOffset: 16, as: UInt64.self)
            e.storeBytes(of: h.high.littleEndian, toByteOffset: 24, as: UInt64.self)
        }
        let rawBytes = tableBytes + total
        var compressible: Bool? = nil
        var since = 0
        if case .auto = policy.mode, total < CompressionPolicy.sampleBytes / 4 { compressible = false }  // tiny: not worth it
        let (payload, payloadBytes, codec) = encode(table, rawBytes, compressible: &compressible, sinceProbe: &since)
        let sub = payload - DataLayout.batchSubheaderBytes
        sub.storeBytes(of: UInt32(codec.rawValue).littleEndian, toByteOffset: 0, as: UInt32.self)
        sub.storeBytes(of: UInt32(sent.count).littleEndian, toByteOffset: 4, as: UInt32.self)
        sub.storeBytes(of: UInt32(rawBytes).littleEndian, toByteOffset: 8, as: UInt32.self)
        sub.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)
        try emit(.batch, sub: sub, subheaderBytes: DataLayout.batchSubheaderBytes, clearSubheaderBytes: DataLayout.batchSubheaderBytes, payloadBytes: payloadBytes) {
            sent.map { (files[$0].id, 0) }
        }
        if compressible == true { policy.delivered(rawBytes: rawBytes, compressedArm: codec == .zstd) }
        sender.ctx.progress.moved(raw: UInt64(total), wire: UInt64(payloadBytes))
        for (k, i) in sent.enumerated() {
            try sender.record(files[i], index: 0, hash: hashes[k], resend: false, ring: ring)
        }
    }

    /// Waits for every operation in flight, passing each completion to `handle`.

    /// `--checksum`: hashes the whole file to compare its digest with the receiver's.
    func check(_ f: SenderFile) throws {
        guard let fd = try sender.descriptor(f) else { return }
        defer { sender.release(f) }
        var digest = FileDigest()
        let data = pool.buffer(0) + headroom
        var offset: UInt64 = 0
        while offset < f.size {
            let length = Int(min(UInt64(chunkBytes), f.size - offset))
            let got = try readFully(fd: fd, into: data, length: length, offset: offset)
            if got != length { sender.sourceChanged(f); return }
            digest.add(ChunkHash.of(data, length))
            offset += UInt64(length)
        }
        var st = stat()
        if fstat(fd, &st) == 0 && Sender.differs(f, st) { sender.sourceChanged(f); return }
        try sender.checked(f, digest: digest.finish(), ring: ring)
    }
}
