import CLiburing
import Glibc

/// Direct I/O for the receiver's writes (issue 18): whole, aligned chunks of a large file are
/// written with `O_DIRECT` from the stream's registered buffer, so the bytes go from the buffer
/// to the device without a copy into the page cache. And for the sender's reads of a large
/// file that the page cache does not hold (`SenderWorker`, "Direct reads").
///
/// Measured on this machine (bench/RESULTS.md, "Direct I/O", and docs/PERFORMANCE.md):
/// writing 4 GiB to ext4 with `dd bs=4M` cost 3.70 s of CPU buffered and 0.49 s with
/// `oflag=direct` (which includes dd's own read from tmpfs). The page-cache copy, the page
/// allocation and the write-back are the receiver's largest cost on a real filesystem.
///
/// Decided:
/// - **Which filesystems.** Only those whose direct I/O is real and wanted for streaming writes:
///   ext4, XFS, Lustre, GPFS (Spectrum Scale), BeeGFS. tmpfs accepts `O_DIRECT` since Linux
///   6.6 but copies into its pages anyway (no gain); NFS turns every direct write into a
///   synchronous RPC; btrfs, ZFS and others stay buffered until measured.
/// - **Which files.** Regular files of at least `minimumFileBytes` (two default chunks) that
///   are written to a partial file (not a stream, not a sink); small files travel in batches.
/// - **Which bytes.** A chunk's prefix that is a whole number of `alignment` blocks at an
///   aligned offset from an aligned buffer; the tail of the file's last chunk, holes and
///   every resend that does not qualify go through the ordinary descriptor. Both write the same
///   inode, so the kernel keeps them coherent.
/// - **How it is opened.** A second descriptor of the partial file, opened through
///   `/proc/self/fd/N` (the same inode as the confined descriptor: no path is resolved again,
///   so nothing can be swapped in between) with the acting user's rights.
/// - **Refusals.** A filesystem that refuses the open or a write (`EINVAL`) turns direct I/O
///   off for that file, and the chunk is written buffered: nothing fails because of it.
/// - **Durability** is unchanged: chunks are journaled after `fdatasync` of the partial, which
///   also flushes the device's cache for the direct writes.
/// - **Reads** (the sender, `SenderWorker`): the same filesystems and sizes, chunks of a size
///   that is a multiple of `alignment`, not sparse files, and only chunks the page cache does
///   not hold (`mostlyUncached`). A refused read (EINVAL) turns them off for that file.
public enum DirectIO {
    /// Buffer address, file offset and length granularity of a direct write. 4 KiB satisfies
    /// every logical block size in use (512 B and 4 KiB sectors) and the page size.
    public static let alignment = 4096
    /// Smaller files are written buffered (their cost is per file, not per byte).
    public static let minimumFileBytes: UInt64 = 8 << 20

    /// Off for the whole process (`--direct-io off`, `FERRY_DIRECT_IO=off`): every read and
    /// write buffered.
    public static var enabled: Bool {
        get { lock.withLock { on } }
        set { lock.withLock { on = newValue } }
    }
    private static let lock = Lock()
    private static var on = getenv("FERRY_DIRECT_IO").map { String(cString: $0) != "off" } ?? true

    /// Filesystem magic numbers (statfs f_type) where direct writes are used.
    static let filesystems: Set<Int> = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // XFS
        0x0BD0_0BD0, // Lustre
        0x4750_4653, // GPFS
        0x1983_0326, // BeeGFS
    ]

    /// Filesystems that hold their files in memory (tmpfs, ramfs): a read there never waits
    /// for a device.
    static let memoryFilesystems: Set<Int> = [0x0102_1994, 0x8584_58F6]

    /// Parses the setting's value (`auto` or `off`); `what`: its name in the error.
    public static func parse(_ text: String, what: String = "--direct-io") throws -> Bool {
        switch text {
        case "auto": return true
        case "off": return false
        default: throw TransferError(.usage, "\(what) takes auto or off, not '\(text)'")
        }
    }

    /// A direct descriptor for the partial file `fd` of `size` bytes, or -1 when direct I/O is
    /// off, the file too small, the filesystem not one of `filesystems` or the open refused.
    static func open(partial fd: Int32, size: UInt64) -> Int32 {
        guard enabled, size >= minimumFileBytes else { return -1 }
        guard filesystems.contains(Int(ferry_fs_type(fd))) else { return -1 }
        return max(-1, ferry_reopen_direct(fd))
    }

    /// A direct descriptor for reading the source file `fd` of `size` bytes (the sender's
    /// side), or -1 when direct I/O is off, the file too small, its chunks not aligned or its
    /// filesystem not one of `filesystems`, or the open refused. Opened through /proc/self/fd
    /// as the partial's is: the same inode, with the acting user's rights.
    static func openForReading(source fd: Int32, size: UInt64, chunkBytes: Int) -> Int32 {
        guard enabled, size >= minimumFileBytes, chunkBytes % alignment == 0 else { return -1 }
        guard filesystems.contains(Int(ferry_fs_type(fd))) else { return -1 }
        return max(-1, ferry_reopen_direct_read(fd))
    }

    /// True when most of [offset, offset+length) of `fd` is not in the page cache, so that a
    /// direct read saves the cache's copy and costs no extra trip to the device: fewer than a
    /// quarter of its pages resident (`mincore` of a mapping that is never touched). A chunk
    /// the page cache holds (a file just written, or read again) is read buffered: a direct
    /// read would go to the device for it, after writing back what is dirty.
    static func mostlyUncached(fd: Int32, offset: UInt64, length: Int, scratch: inout [UInt8]) -> Bool {
        let page = max(4096, sysconf(Int32(_SC_PAGESIZE)))
        let pages = (length + page - 1) / page
        guard pages > 0, let p = mmap(nil, length, PROT_READ, MAP_SHARED, fd, off_t(offset)), p != MAP_FAILED else { return false }
        defer { munmap(p, length) }
        if scratch.count < pages { scratch = [UInt8](repeating: 0, count: pages) }
        let ok = scratch.withUnsafeMutableBufferPointer { mincore(p, length, $0.baseAddress) == 0 }
        guard ok else { return false }
        var resident = 0
        for i in 0..<pages { resident += Int(scratch[i] & 1) }
        return resident * 4 < pages
    }

    /// Bytes of a write of `length` at `offset` from `buffer` that can go direct (a multiple of
    /// `alignment`; 0 when the offset or the buffer is not aligned).
    @inline(__always)
    static func directBytes(buffer: UnsafeRawPointer, offset: UInt64, length: Int) -> Int {
        guard offset % UInt64(alignment) == 0, Int(bitPattern: buffer) % alignment == 0 else { return 0 }
        return length & ~(alignment - 1)
    }
}
