#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/FuzzWire.swift into fuzz/corpus/ (committed).

Each seed is one selector byte (which decoder, see `Target` in FuzzWire.swift) followed by a
valid encoding of one message, written here independently of the Swift encoders from
docs/CONTRACT.md and Sources/Transfer/Wire/Messages.swift (little-endian throughout), so the
seeds also cross-check the format. Deterministic: rerunning rewrites the same files.

    python3 fuzz/make_seeds.py
"""
import os
import struct

FRAME_HEADER, HELLO, WELCOME, JOIN, MANIFEST, PLAN, CHUNK_FRAME, BYTE_READER, WIRE_PATH, CONTROL_STREAM, TOKEN, TOML, SEALED, ERROR_FRAME, LOCATION, COMMIT = range(16)

T_HELLO, T_WELCOME, T_JOIN, T_JOINED, T_MANIFEST, T_MANIFEST_END, T_PLAN = 1, 2, 3, 4, 5, 6, 7
T_FILE_DIGEST, T_FILE_SKIP, T_FILE_DONE, T_RESEND, T_END, T_END_ACK, T_PING, T_RESEND_FRAME = 8, 9, 10, 11, 12, 13, 14, 15
T_CHUNK, T_BATCH, T_READY, T_ERROR = 0x10, 0x11, 0x12, 0x7F


def u8(v): return struct.pack("<B", v)
def u16(v): return struct.pack("<H", v)
def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v)
def i64(v): return struct.pack("<q", v)
def string(s): b = s.encode(); return u16(len(b)) + b
def blob(b): return u16(len(b)) + b
def hash128(lo, hi): return u64(lo) + u64(hi)


def frame(ftype, payload=b"", flags=0):
    return u32(len(payload)) + u8(ftype) + u8(flags) + u16(0) + payload


def preamble(role):
    return b"FERRY\0\0\0" + u16(2) + u16(role) + u32(0)


def compression(mode):
    if mode == "off": return u8(0) + u8(0)
    if mode == "auto": return u8(1) + u8(0)
    return u8(2) + u8(mode)


def hello(token, direction, path, recursive=False, streams=0, comp="auto", checksum=False, bw=0, chunk=4 << 20, protection=2):
    return (blob(token) + u8(direction) + string(path) + u8(1 if recursive else 0) + u8(streams)
            + compression(comp) + u8(1 if checksum else 0) + u64(bw) + u32(chunk) + u8(protection))


def welcome(streams): return bytes(range(16)) + bytes(range(100, 132)) + u8(streams)
def join(index): return bytes(range(16)) + u8(index) + bytes(range(100, 132))


def entry(eid, kind, path, size=0, sec=1_700_000_000, nsec=0, mode=0o644, target=""):
    b = u64(eid) + u8(kind) + string(path) + u64(size) + i64(sec) + u32(nsec) + u32(mode)
    return b + (string(target) if kind == 3 else b"")


def manifest(entries): return u32(len(entries)) + b"".join(entries)


def plan_entry(pid, action, data=None):
    if action in (0, 1): return u64(pid) + u8(action)
    if action == 2: return u64(pid) + u8(2) + u32(len(data)) + b"".join(u32(i) + hash128(lo, hi) for i, lo, hi in data)
    return u64(pid) + u8(3) + hash128(*data)


def plan(entries): return u32(len(entries)) + b"".join(entries)


def chunk_subheader(fid, index, raw, codec, lo=0x1111, hi=0x2222):
    # The check field (bytes 20..<24) is XXH3-based; the fuzz target computes it itself.
    return u64(fid) + u32(index) + u32(raw) + u8(codec) + b"\0\0\0" + u32(0) + hash128(lo, hi)


def batch_subheader(codec, count, raw): return u8(codec) + b"\0\0\0" + u32(count) + u32(raw) + u32(0)


def script(ops, data):
    assert len(ops) <= 31
    return u8(len(ops)) + bytes(ops) + data


def seeds():
    s = {}
    # Frame headers: every type, some flags, an oversized length.
    for t in (T_HELLO, T_WELCOME, T_MANIFEST, T_PLAN, T_FILE_DONE, T_PING, T_CHUNK, T_BATCH, T_ERROR):
        s[f"frame-header-{t:02x}"] = (FRAME_HEADER, frame(t, b"\0" * 5)[:8])
    s["frame-header-error-resumable"] = (FRAME_HEADER, frame(T_ERROR, b"x", flags=1)[:8])
    s["frame-header-huge"] = (FRAME_HEADER, u32(0xFFFFFFFF) + u8(T_CHUNK) + u8(0) + u16(0))

    s["hello-push"] = (HELLO, hello(b"secret-token", 1, "dest/dir", recursive=True, streams=4))
    s["hello-pull-checksum"] = (HELLO, hello(b"t" * 64, 2, "src/file.bin", comp="off", checksum=True, bw=64 << 20, chunk=64 << 10))
    s["hello-level"] = (HELLO, hello(b"", 1, "", comp=19, streams=64, chunk=64 << 20))
    s["hello-unicode"] = (HELLO, hello(b"\x00\xff" * 8, 1, "é/ü/日本", comp=3))

    s["welcome"] = (WELCOME, welcome(4))
    s["welcome-max"] = (WELCOME, welcome(64))
    s["join-0"] = (JOIN, join(0))
    s["join-63"] = (JOIN, join(63))

    s["manifest-tree"] = (MANIFEST, manifest([
        entry(0, 2, "", mode=0o755),
        entry(1, 2, "sub", mode=0o700),
        entry(2, 1, "sub/a.txt", size=12345, nsec=999_999_999),
        entry(3, 1, "b.bin", size=1 << 56, sec=-1),
        entry(4, 3, "sub/link", target="../b.bin", mode=0o777),
    ]))
    s["manifest-single-file"] = (MANIFEST, manifest([entry(0, 1, "", size=4 << 20)]))
    s["manifest-empty"] = (MANIFEST, manifest([]))

    s["plan-all-actions"] = (PLAN, plan([
        plan_entry(1, 0),
        plan_entry(2, 1),
        plan_entry(3, 2, [(0, 1, 2), (7, 0xFFFFFFFFFFFFFFFF, 0)]),
        plan_entry(4, 3, (0xDEADBEEF, 0xCAFEBABE)),
    ]))
    s["plan-resume-empty"] = (PLAN, plan([plan_entry(9, 2, [])]))

    s["chunk-raw"] = (CHUNK_FRAME, frame(T_CHUNK, chunk_subheader(2, 0, 4, 0) + b"abcd"))
    s["chunk-zero"] = (CHUNK_FRAME, frame(T_CHUNK, chunk_subheader(3, 5, 1 << 20, 2)))
    s["chunk-zstd"] = (CHUNK_FRAME, frame(T_CHUNK, chunk_subheader(4, 1, 100, 1) + bytes.fromhex("28b52ffd2064650000")))
    table = u64(5) + u32(3) + u32(0) + hash128(1, 2) + u64(6) + u32(2) + u32(0) + hash128(3, 4)
    s["batch-raw"] = (CHUNK_FRAME, frame(T_BATCH, batch_subheader(0, 2, len(table) + 5) + table + b"xyzab"))

    # ByteReader scripts: op = kind | arg << 4 (0 u8, 1 u16, 2 u32, 3 u64, 4 i64, 5 hash,
    # 6 raw(arg-2), 7 string(arg*300), 8 blob(arg*300), 9 expectEnd).
    s["reader-file-done"] = (BYTE_READER, script([2, 3, 0, 0xE7, 3, 0, 0xE7, 9],
                                                 u32(2) + u64(7) + u8(0) + string("") + u64(8) + u8(1) + string("no space")))
    s["reader-resend"] = (BYTE_READER, script([3, 2, 9], u64(5) + u32(3)))
    s["reader-file-digest"] = (BYTE_READER, script([3, 5, 9], u64(5) + hash128(1, 2)))
    s["reader-all-ops"] = (BYTE_READER, script([0, 1, 2, 3, 4, 5, 0x46, 0x17, 0x18, 9],
                                               b"\x01" + u16(2) + u32(3) + u64(4) + i64(-5) + hash128(6, 7) + b"rawx"
                                               + string("é") + blob(b"\0\1") ))

    for name, p in [("plain", "a/b/c.txt"), ("unicode", "dir é/ü/日本語.txt"), ("single", "x"),
                    ("empty", ""), ("dots", "a/.hidden/..x/x.."), ("long", "d/" + "n" * 255)]:
        s[f"path-{name}"] = (WIRE_PATH, p.encode())

    s["stream-control-session"] = (CONTROL_STREAM, preamble(1)
        + frame(T_HELLO, hello(b"tok", 1, "dst", recursive=True))
        + frame(T_PING)
        + frame(T_MANIFEST, manifest([entry(0, 2, ""), entry(1, 1, "f", size=3)]))
        + frame(T_MANIFEST_END)
        + frame(T_FILE_DIGEST, u64(1) + hash128(1, 2))
        + frame(T_END))
    s["stream-ready-welcome"] = (CONTROL_STREAM, preamble(1) + frame(T_READY, b"hlrs") + frame(T_WELCOME, welcome(4)) + frame(T_RESEND_FRAME, u32(1) + u64(7)))
    s["hello-clear"] = (HELLO, hello(b"", 2, "x", protection=0))
    s["hello-safe"] = (HELLO, hello(b"ferry1.abc.def", 1, "x", protection=1))
    # A selection (extension 3): depth, no filters, the number of paths that follow in frames.
    s["hello-selection"] = (HELLO, hello(b"tok", 2, "tree", recursive=True) + u8(3) + u32(0xFFFFFFFF) + u16(0) + u32(3))
    # A striped file's commit: size, mtime, mode, chunk size, digest, ranges covering its chunks.
    s["commit-three-ranges"] = (COMMIT, u64((10 << 22) - 12345) + i64(1_700_000_000) + u32(5) + u32(0o644) + u32(4 << 20)
                                + u64(0x1111) + u64(0x2222) + u32(3) + u64(0) + u64(4) + u64(4) + u64(3) + u64(7) + u64(3))
    # A range session (striping): extension 2 = depth, no filters, first, count, size, mtime.
    s["hello-range"] = (HELLO, hello(b"tok", 1, "big.bin") + u8(2) + u32(0xFFFFFFFF) + u16(0)
                        + u64(4) + u64(3) + u64((10 << 22) - 12345) + i64(1_700_000_000) + u32(5))
    # Tokens: the payload layout of Token.swift (u8 1, issuer, user, iat, exp, 16-byte id,
    # u16 scopes, each u8 access + path), base64url without padding, then a 64-byte signature.
    import base64
    def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=")
    payload = (u8(1) + string("hlrs") + string("alice") + i64(1_790_000_000) + i64(1_790_086_400) + bytes(range(16))
               + u16(2) + u8(1) + string("/datasets") + u8(2) + string("/scratch/alice"))
    s["token-alice"] = (TOKEN, b"ferry1." + b64(payload) + b"." + b64(bytes(64)))
    s["token-noscopes"] = (TOKEN, b"ferry1." + b64(u8(1) + string("c") + string("u") + i64(0) + i64(1) + bytes(16) + u16(0)) + b"." + b64(bytes(range(64))))
    s["toml-server"] = (TOML, b'''center = "hlrs"
listen = ["[::1]:7400", "127.0.0.1:7400"]
certificate = "hlrs.crt"
key = 'hlrs.key'
ca = "ca.crt"
minimum_protection = "safe"

[limits]
connections = 256
idle_timeout = 120

[[export]]
name = "scratch"
path = "/scratch"
access = "rw"
users = ["*", "center:wuxi",
   "alice"]  # comment
''')
    s["toml-escapes"] = (TOML, b'a = "tab\\tq\\"\\u00e9"\nb = -12\nc = true\nd = []\n')
    s["sealed-chunk"] = (SEALED, u8(2) + bytes(range(40)) + b"payload bytes")
    s["sealed-batch-safe"] = (SEALED, u8(1) + bytes(16) + b"x" * 100)
    s["stream-data-join"] = (CONTROL_STREAM, preamble(2) + frame(T_JOIN, join(1)))
    # ERROR frames with a code (flags: bit 0 resumable, bit 1 coded, bits 2..7 the code's
    # number: 9 no_space, 10 permission; docs/CONTRACT.md), and SOURCE_FAILED payloads.
    s["error-frame-old"] = (ERROR_FRAME, u8(1) + b"refused: bad token")
    s["error-frame-no-space"] = (ERROR_FRAME, u8(0b10 | 9 << 2) + b"cannot write 'a': no space: 96.0 MiB needed")
    s["error-frame-permission"] = (ERROR_FRAME, u8(1 | 0b10 | 10 << 2) + b"Permission denied (13)")
    s["source-failed-coded"] = (ERROR_FRAME, u32(1) + u64(5) + u8(0b10 | 10 << 2) + string("cannot read 'x': Permission denied (13)"))
    s["stream-error-coded"] = (CONTROL_STREAM, preamble(1) + frame(T_WELCOME, welcome(2)) + frame(T_ERROR, b"no space", flags=0b10 | 9 << 2))
    # Locations, sizes and center names (Transfer/Location.swift).
    s["location-ferry-v6"] = (LOCATION, b"ferry://[2001:db8::10]:7700/datasets/era5/2024.nc")
    s["location-ferry-peer"] = (LOCATION, b"ferry://wuxi/incoming/run1")
    s["location-gfs"] = (LOCATION, b"gfs://wuxi/datasets/zinc22/H20/a b.smi")
    s["location-size"] = (LOCATION, b"1.5GiB")
    s["stream-error"] = (CONTROL_STREAM, preamble(1) + frame(T_WELCOME, welcome(2)) + frame(T_ERROR, b"refused: bad token", flags=0))
    return s


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    for name, (selector, body) in sorted(seeds().items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes([selector]) + body)
    print(f"wrote {len(seeds())} seeds to {out}")


if __name__ == "__main__":
    main()
