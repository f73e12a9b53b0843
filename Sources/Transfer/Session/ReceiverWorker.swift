import CLiburing
import Glibc

/// One data stream of a `Receiver`: receives frames into a registered buffer, decompresses
/// into a second one, verifies every chunk's hash and writes it at its offset (WRITE_FIXED).
/// Small-file batches are created, written and renamed with plain system calls (not `O_DIRECT`)
/// and closed with one ring submission. The buffers are registered (pinned) when the stream starts, not at its
/// first chunk as a sender's are (`Ring.registerLater`): on a server they are what the buffer
/// budget grants a session, and a granted stream holds them whether or not its client sends.
final class ReceiverWorker {
    private unowned let receiver: Receiver
    private let conn: Connection
    private let ring: Ring
    private let pool: BufferPool
    private let compressor = Compressor()
    private let chunkBytes: Int
    private let frameBytesMax: Int
    private let header = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    private let nameArena: UnsafeMutablePointer<CChar>
    private let nameSlotBytes = 2 * PathLimits.componentBytesMax + 32
    private var zeroHashes = ZeroHashes()
    private var fds: [Int32]
    private var results: [Int32]
    /// Opens sealed frames at the `safe` and `private` levels; nil at `clear`.
    private let opener: FrameOpener?
    /// Sealed frames rejected on this stream (tampered, replayed, reordered).
    private(set) var rejectedFrames = 0
    /// Counters of this stream already asked for again (each is asked once).
    private var requested = Set<UInt64>()

    init(receiver: Receiver, conn: Connection) throws {
        self.receiver = receiver
        self.conn = conn
        if let key = receiver.ctx.dataKey {
            opener = FrameOpener(key: key, level: receiver.ctx.protection, stream: conn.streamIndex)
        } else {
            opener = nil
        }
        chunkBytes = receiver.ctx.options.chunkBytes
        frameBytesMax = DataLayout.framePayloadBytesMax(chunkBytes: chunkBytes)
        ring = try Ring(entries: UInt32(Wire.batchFilesMax * 2))
        // Buffer 0 has a block of slack in front: a chunk's payload lands on a `DirectIO`
        // boundary (see `run`). Buffer 1 (decompressed chunks) is page-aligned as it is.
        pool = try BufferPool(count: 2, bytesPerBuffer: frameBytesMax + DataLayout.headroomBytes + DirectIO.alignment)
        // Registered at once (on a server they are what the buffer budget granted), but never
        // required: an unprivileged process (a user's pull, a personal server) is held to its
        // memory-lock limit (8 MiB by default, less than two buffers of a 4 MiB chunk), and then
        // every read and write stays a plain one: the same bytes, a little more CPU.
        _ = try? pool.register(with: ring)
        nameArena = .allocate(capacity: nameSlotBytes * Wire.batchFilesMax * 2)
        fds = [Int32](repeating: -1, count: Wire.batchFilesMax)
        results = [Int32](repeating: 0, count: Wire.batchFilesMax)
    }

    deinit {
        header.deallocate()
        nameArena.deallocate()
    }

    /// Receives exactly `n` bytes; false on a clean end of stream before the first byte.
    private func receive(_ p: UnsafeMutableRawPointer, _ n: Int, allowEOF: Bool) throws -> Bool {
        var done = 0
        while done < n {
            let r = try ring.runOne { () throws in
                try ring.recv(fd: conn.fd, buffer: p + done, length: n - done, tag: 2)
            }
            if r == 0 {
                if allowEOF && done == 0 { return false }
                throw TransferError(.io, "\(conn.peer) closed a data stream in the middle of a frame", resumable: true)
            }
            if r < 0 {
                if receiver.ctx.isFinished { return false }
                throw TransferError.system("receive from \(conn.peer)", errno: -r, resumable: true)
            }
            done += Int(r)
        }
        return true
    }

    func run() throws {
        // Sealed frames are received behind a copy of their header, so the header, counter,
        // subheader and payload are one contiguous authenticated region. The body is placed so
        // that a chunk's payload starts on a `DirectIO.alignment` boundary of buffer 0: a raw
        // chunk can then be written with O_DIRECT straight from where it was received.
        let sealed = opener != nil
        let overhead = sealed ? Sealing.overheadBytes : 0
        let payloadOffset = (sealed ? Sealing.counterBytes : 0) + DataLayout.chunkSubheaderBytes
        let body = pool.buffer(0) + DirectIO.alignment - payloadOffset
        let buf = body - (sealed ? Wire.frameHeaderBytes : 0)
        while true {
            guard try receive(header, Wire.frameHeaderBytes, allowEOF: true) else { return }
            let h = try FrameHeader(pointer: header)
            let subheaderBytes: Int
            switch h.type {
            case .chunk:
                guard h.length >= DataLayout.chunkSubheaderBytes + overhead, h.length <= DataLayout.chunkSubheaderBytes + Compressor.bound(chunkBytes) + overhead else {
                    throw TransferError.protocolError("chunk frame of \(h.length) bytes out of bounds")
                }
                subheaderBytes = DataLayout.chunkSubheaderBytes
            case .batch:
                guard h.length >= DataLayout.batchSubheaderBytes + overhead, h.length <= frameBytesMax else {
                    throw TransferError.protocolError("batch frame of \(h.length) bytes out of bounds")
                }
                subheaderBytes = DataLayout.batchSubheaderBytes
            default:
                throw TransferError.protocolError("unexpected \(h.type) frame on a data stream")
            }
            guard try receive(body, h.length, allowEOF: false) else { return }
            var p = body
            var length = h.length
            if let opener {
                buf.copyMemory(from: header, byteCount: Wire.frameHeaderBytes)
                let clear = h.type == .chunk ? Sealing.chunkClearSubheaderBytes : subheaderBytes
                switch opener.open(frame: buf, frameBytes: Wire.frameHeaderBytes + h.length, clearSubheaderBytes: clear) {
                case .accept(let missing):
                    if let missing {
                        // Frames skipped in the counter sequence were removed or reordered
                        // (at most FrameOpener.gapMax of them, checked by the opener).
                        for c in missing { try requestFrame(c) }
                    }
                case .replayed:
                    rejectedFrames += 1
                    receiver.ctx.progress.rejectedFrame()
                    continue
                case .tampered(let position):
                    // The genuine frame of this position was replaced, or a forged one was
                    // inserted before it: ask for it, but keep waiting for it too (a copy that
                    // arrives twice is ignored).
                    rejectedFrames += 1
                    receiver.ctx.progress.rejectedFrame()
                    try requestFrame(position)
                    continue
                case .invalid(let c):
                    throw TransferError.protocolError("sealed frame with an impossible counter \(c) on data stream \(conn.streamIndex)")
                }
                p = body + Sealing.counterBytes
                length = h.length - Sealing.overheadBytes
            }
            if h.type == .chunk { try chunk(p, length) } else { try batch(p, length) }
        }
    }

    /// Asks the sender (control stream) to send again what this stream's frame `counter` held.
    private func requestFrame(_ counter: UInt64) throws {
        guard requested.insert(counter).inserted else { return }
        if requested.count > 4 * Int(FrameOpener.gapMax) {
            throw TransferError(.verify, "more than \(requested.count) frames of data stream \(conn.streamIndex) were rejected; the rerun resumes", resumable: true)
        }
        var w = ByteWriter(capacity: 12)
        w.u32(UInt32(conn.streamIndex))
        w.u64(counter)
        receiver.ctx.progress.retransmitted()
        try receiver.ctx.control.send(.resendFrame, w.bytes, ring: ring)
    }

    private func requestResend(_ id: UInt64, _ index: Int) throws {
        var w = ByteWriter(capacity: 12)
        w.u64(id)
        w.u32(UInt32(index))
        receiver.ctx.progress.retransmitted()
        try receiver.ctx.control.send(.resend, w.bytes, ring: ring)
    }

    private func chunk(_ p: UnsafeMutableRawPointer, _ length: Int) throws {
        let id = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        let index = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        let rawBytes = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        let codecByte = p.load(fromByteOffset: 16, as: UInt8.self)
        let expected = ChunkHash(
            low: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: UInt64.self)),
            high: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: UInt64.self)))
        guard opener != nil || UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 20, as: UInt32.self)) == DataLayout.subheaderCheck(p) else {
            throw TransferError(.verify, "a chunk header from \(conn.peer) arrived damaged", resumable: true)
        }
        guard let codec = ChunkCodec(rawValue: codecByte) else { throw TransferError.protocolError("unknown chunk codec \(codecByte)") }
        guard let f = receiver.file(id) else {
            // A file already finished (a chunk sent again after a rejected frame) is no error.
            if receiver.wasAnnounced(id) { return }
            throw TransferError.protocolError("chunk for unknown file \(id)")
        }
        let payload = p + DataLayout.chunkSubheaderBytes
        let payloadBytes = length - DataLayout.chunkSubheaderBytes
        guard !f.isSmall, index < f.chunkCount, index < Receiver.chunksPerFileMax else { throw TransferError.protocolError("chunk \(index) out of range for file \(id)") }
        // A range session takes its range's chunks only: another node writes the others.
        if let r = f.range, !r.contains(index) { throw TransferError.protocolError("chunk \(index) is outside the session's range \(r.first)+\(r.count)") }
        let offset = UInt64(index) * UInt64(chunkBytes)
        // A stream's chunks are full but for its last; its length comes with its digest.
        guard f.isStream ? (1...chunkBytes).contains(rawBytes) : rawBytes == Int(min(UInt64(chunkBytes), f.entry.size - offset)) else {
            throw TransferError.protocolError("chunk \(index) of file \(id) has the wrong length")
        }
        var data = payload
        switch codec {
        case .raw:
            guard payloadBytes == rawBytes else { throw TransferError.protocolError("raw chunk length mismatch") }
        case .zero:
            guard payloadBytes == 0 else { throw TransferError.protocolError("zero chunk with payload") }
        case .zstd:
            data = pool.buffer(1)
            do {
                try compressor.decompress(payload, payloadBytes, into: data, expected: rawBytes)
            } catch {
                try requestResend(id, index)
                return
            }
        }
        let hash = codec == .zero ? zeroHashes.hash(rawBytes, scratch: pool.buffer(1)) : ChunkHash.of(data, rawBytes)
        if hash != expected {
            try requestResend(id, index)
            return
        }
        f.lock.lock()
        var verdict = receiver.beginFullIfDeciding(f)
        if verdict == nil && !f.failed && !f.done, let sink = f.sink {
            if codec == .zero { memset(data, 0, rawBytes) }
            if let err = receiver.sinkWrite(f, sink, index: index, data: data, rawBytes: rawBytes) {
                verdict = receiver.failFile(f, err.message, code: err.code)
            } else {
                verdict = receiver.chunkWritten(f, index: index, hash: hash, rawBytes: rawBytes, wireBytes: payloadBytes)
            }
        } else if verdict == nil && !f.failed && !f.done && f.partFd >= 0 {
            if let err = write(f, data: data, rawBytes: rawBytes, offset: offset, zero: codec == .zero) {
                let written = UInt64(f.presentCount) * UInt64(chunkBytes)
                // A stream (a FIFO's bytes) has no size to give (its placeholder is not one), and
                // what its writer sent cannot be read again: no promise of a resume.
                let done = f.isStream ? "\(byteText(written)) of the stream written" : "\(byteText(min(written, f.entry.size))) of \(byteText(f.entry.size)) written\(err.code.rerunResumes ? ", rerun resumes" : "")"
                verdict = receiver.failFile(f, "cannot write '\(f.display)': \(err.message); \(done)", code: err.code)
            } else {
                verdict = receiver.chunkWritten(f, index: index, hash: hash, rawBytes: rawBytes, wireBytes: payloadBytes)
            }
        }
        f.lock.unlock()
        if let verdict { try receiver.sendVerdicts([verdict], ring: ring) }
    }

    /// Writes one chunk at its offset through the ring (WRITE_FIXED); returns the error (with
    /// the system's code) or nil.
    ///
    /// Measured against plain pwrite(2) from each stream's thread (1 GiB, 4 streams, tmpfs):
    /// the ring took 2.3 s, pwrite 5-8 s. io_uring queues buffered writes to one inode on one
    /// kernel worker, in order, while four threads calling pwrite fight over the inode lock.
    /// The mapped-page-cache alternative (mmap + MADV_POPULATE_WRITE + recv into the mapping)
    /// also measured slower (server CPU 3.5 s vs 1.95 s for 2 GiB).
    private func write(_ f: ReceiverFile, data: UnsafeMutableRawPointer, rawBytes: Int, offset: UInt64, zero: Bool) -> TransferError? {
        if zero {
            // A hole: punch it (the partial may hold old bytes there after a resume).
            if ferry_punch_hole(f.partFd, Int64(offset), Int64(rawBytes)) == 0 { return nil }
            memset(data, 0, rawBytes)
        }
        let bufferIndex = data >= pool.buffer(1) ? 1 : 0
        var done = 0
        // Whole aligned blocks go direct (no page-cache copy); the rest, and everything once
        // the filesystem refused a direct write, through the ordinary descriptor.
        var direct = f.directFd >= 0 && !zero ? DirectIO.directBytes(buffer: data, offset: offset, length: rawBytes) : 0
        while done < rawBytes {
            let viaDirect = done < direct
            let fd = viaDirect ? f.directFd : f.partFd
            let length = (viaDirect ? direct : rawBytes) - done
            let r: Int32
            do {
                r = try ring.runOne { () throws in
                    try ring.write(fd: fd, buffer: data + done, length: length, offset: offset + UInt64(done), bufferIndex: bufferIndex, tag: 3)
                }
            } catch {
                return asTransferError(error)
            }
            if viaDirect && r == -EINVAL {
                f.dropDirect()
                direct = 0
                continue
            }
            if r < 0 { return TransferError(TransferError.Code(errno: -r), "\(String(cString: strerror(-r))) (\(-r))") }
            if r == 0 { return TransferError(.io, "write made no progress") }
            done += Int(r)
            if viaDirect { receiver.ctx.progress.wroteDirect(bytes: UInt64(r)) }
            // A short direct write leaves `done` unaligned: finish the chunk buffered.
            if viaDirect && done % DirectIO.alignment != 0 { direct = 0 }
        }
        return nil
    }

    private func batch(_ p: UnsafeMutableRawPointer, _ length: Int) throws {
        let codecByte = p.load(fromByteOffset: 0, as: UInt8.self)
        let count = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        let rawBytes = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        guard (1...Wire.batchFilesMax).contains(count) else { throw TransferError.protocolError("batch of \(count) files") }
        let tableBytes = count * DataLayout.batchEntryBytes
        guard rawBytes >= tableBytes, rawBytes - tableBytes <= chunkBytes else { throw TransferError.protocolError("batch length out of bounds") }
        let payload = p + DataLayout.batchSubheaderBytes
        let payloadBytes = length - DataLayout.batchSubheaderBytes
        var content = payload
        switch ChunkCodec(rawValue: codecByte) {
        case .raw:
            guard payloadBytes == rawBytes else { throw TransferError.protocolError("raw batch length mismatch") }
        case .zstd:
            content = pool.buffer(1)
            do {
                try compressor.decompress(payload, payloadBytes, into: content, expected: rawBytes)
            } catch {
                // Cannot read the table: ask for every file we can still identify? No: the
                // table itself is inside. End the stream; the rerun resumes.
                throw TransferError(.verify, "a compressed batch arrived corrupt", resumable: true)
            }
        default:
            throw TransferError.protocolError("bad batch codec")
        }
        // Parse and verify.
        var accepted: [(f: ReceiverFile, data: UnsafeMutableRawPointer, size: Int)] = []
        var verdicts: [FileVerdict] = []
        var at = tableBytes
        for k in 0..<count {
            let e = content + k * DataLayout.batchEntryBytes
            let id = UInt64(littleEndian: e.loadUnaligned(as: UInt64.self))
            let size = Int(UInt32(littleEndian: e.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            let h = ChunkHash(
                low: UInt64(littleEndian: e.loadUnaligned(fromByteOffset: 16, as: UInt64.self)),
                high: UInt64(littleEndian: e.loadUnaligned(fromByteOffset: 24, as: UInt64.self)))
            guard size <= rawBytes - at else { throw TransferError.protocolError("batch entries exceed the batch") }
            let data = content + at
            at += size
            guard let f = receiver.file(id) else {
                if receiver.wasAnnounced(id) { continue }
                throw TransferError.protocolError("batch entry for unknown file \(id)")
            }
            guard f.isSmall, UInt64(size) == f.entry.size else { throw TransferError.protocolError("batch entry for file \(id) has the wrong size") }
            if ChunkHash.of(data, size) != h {
                try requestResend(id, 0)
                continue
            }
            f.lock.lock()
            _ = receiver.beginFullIfDeciding(f)
            let skip = f.failed || f.done
            if !skip, let sink = f.sink {
                // A stream destination: written in place, no file to create.
                if let err = receiver.sinkWrite(f, sink, index: 0, data: data, rawBytes: size) {
                    verdicts.append(receiver.failFile(f, err.message, code: err.code))
                } else {
                    f.done = true
                    receiver.ctx.progress.moved(raw: UInt64(size), wire: UInt64(payloadBytes))
                    receiver.ctx.progress.fileDone(name: f.display)
                    verdicts.append((f.entry.id, nil, ""))
                }
                f.lock.unlock()
                if f.done { receiver.forget(f.entry.id) }
                continue
            }
            f.lock.unlock()
            if !skip { accepted.append((f, data, size)) }
        }
        guard at == rawBytes else { throw TransferError.protocolError("batch has \(rawBytes - at) unaccounted bytes") }
        if accepted.isEmpty {
            if !verdicts.isEmpty { try receiver.sendVerdicts(verdicts, ring: ring) }
            return
        }
        // Phase 1: create every temporary file.
        for (i, a) in accepted.enumerated() {
            let slot = nameArena + i * nameSlotBytes
            _ = PartialNames.part(a.f.name).withCString { strncpy(slot, $0, nameSlotBytes - 1) }
            slot[nameSlotBytes - 1] = 0
            fds[i] = -1
            results[i] = 0
            // O_EXCL: a fresh file gets the source's mode exactly (umask is 0), no fchmod needed;
            // claimed, so that no other session of the same name writes into it, and a leftover
            // of an interrupted run replaced (`PartialNames.createClaimed`).
            // A plain call, not a ring operation: io_uring cannot create a file without
            // blocking and hands every O_CREAT open to a kernel worker thread, which measured
            // slower (20,000 files: 0.65-0.87 s of server CPU through the ring).
            // Owner read and write while it is a partial (another session of this account must
            // be able to open it to test its claim: a 0444 partial it could not open it would
            // take for another account's and remove); the source's own mode before the rename.
            fds[i] = PartialNames.createClaimed(dir: a.f.dir.fd, name: slot, access: O_WRONLY, mode: mode_t(a.f.entry.mode) | 0o600)
        }
        // Phase 2: write each file and set its times.
        // The write is a plain `pwrite` too (not `O_DIRECT`): a ring write of a file on tmpfs (and of any file whose
        // filesystem cannot take a write without blocking) goes through a kernel worker, whose
        // hand-off cost more than the 4 KiB copy itself (bench/RESULTS.md, "Issue 18, the night
        // of 2026-12-06": 20,000 files, server CPU 20.0 -> 19.0 µs a file).
        for (i, a) in accepted.enumerated() where fds[i] >= 0 {
            var done = 0
            while done < a.size {
                let r = pwrite(fds[i], a.data + done, a.size - done, off_t(done))
                if r < 0 && errno == EINTR { continue }
                if r <= 0 { results[i] = r < 0 ? -errno : -EIO; break }
                done += r
            }
            if done == a.size { results[i] = Int32(a.size) }
            if a.f.entry.mode & 0o600 != 0o600 && fchmod(fds[i], mode_t(a.f.entry.mode)) != 0 && results[i] >= 0 { results[i] = -errno }
            var t = a.f.times
            _ = futimens(fds[i], &t)
        }
        // Phase 3: rename each into place, then close them all in the ring (one submission):
        // the rename comes first, under the claim the descriptor holds.
        var renamed = [Int32](repeating: 0, count: accepted.count)
        for (i, a) in accepted.enumerated() where fds[i] >= 0 && results[i] >= 0 {
            let to = nameArena + (Wire.batchFilesMax + i) * nameSlotBytes
            _ = a.f.name.withCString { strncpy(to, $0, nameSlotBytes - 1) }
            to[nameSlotBytes - 1] = 0
            // In a directory others may write (not one this session made, private until done),
            // the name must still give this file: another account that cannot claim a partial
            // may remove it and make its own under the name (`PartialNames` "Claims").
            if !a.f.dir.new && !PartialNames.stillNamed(fds[i], dir: a.f.dir.fd, name: nameArena + i * nameSlotBytes) {
                renamed[i] = -ESTALE
                continue
            }
            // A plain call, like the create: a ring rename always goes through a kernel worker.
            renamed[i] = renameat(a.f.dir.fd, nameArena + i * nameSlotBytes, a.f.dir.fd, to) == 0 ? 0 : -errno
        }
        for (i, a) in accepted.enumerated() where fds[i] >= 0 {
            // One that failed is removed while still claimed (after the close, the name could
            // already be another session's).
            if results[i] < 0 || (renamed[i] < 0 && renamed[i] != -ESTALE) { _ = unlinkat(a.f.dir.fd, nameArena + i * nameSlotBytes, 0) }
            do {
                try ring.close(fd: fds[i], tag: UInt64(Wire.batchFilesMax + i))
            } catch {
                Glibc.close(fds[i])  // never left open (and claimed) for the process's life
            }
        }
        try ring.drain { _, _ in }
        var rawDone = 0
        for (i, a) in accepted.enumerated() {
            var err: Int32 = 0
            if fds[i] < 0 { err = -fds[i] } else if results[i] < 0 { err = -results[i] } else if renamed[i] < 0 { err = -renamed[i] }
            a.f.lock.lock()
            if err != 0 {
                if err == EBUSY && fds[i] < 0 {
                    verdicts.append(receiver.failFile(a.f, PartialNames.busyMessage(a.f.display), code: .busy))
                } else if err == ESTALE {
                    verdicts.append(receiver.failFile(a.f, PartialNames.replacedMessage(a.f.display), code: .path))
                } else if err == EEXIST && fds[i] < 0 {
                    // Another account's file under the temporary name, which it could not remove.
                    let (why, code) = PartialNames.existingMessage(dir: a.f.dir.fd, a.f.display, PartialNames.part(a.f.name))
                    verdicts.append(receiver.failFile(a.f, why, code: code))
                } else {
                    let code = TransferError.Code(errno: err)
                    verdicts.append(receiver.failFile(a.f, "cannot write '\(a.f.display)': \(String(cString: strerror(err))) (\(err))\(code.rerunHint)", code: code))
                }
            } else {
                a.f.done = true
                rawDone += a.size
                receiver.ctx.progress.fileDone(name: a.f.display)
                verdicts.append((a.f.entry.id, nil, ""))
            }
            a.f.lock.unlock()
            if err == 0 { receiver.forget(a.f.entry.id) }
        }
        receiver.ctx.progress.moved(raw: UInt64(rawDone), wire: UInt64(payloadBytes))
        try receiver.sendVerdicts(verdicts, ring: ring)
    }

}

/// "1.2 GiB"-style sizes for messages.
public func byteText(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    if u == 0 { return "\(n) B" }
    let tenths = Int((v * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) \(units[u])"
}
