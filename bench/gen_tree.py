#!/usr/bin/env python3
"""Generate a nested tree of many small random files, optionally with a few large ones.

Layout: ROOT/dNN/dNN/fNNNNNN.bin, at most --per-dir files per leaf directory, leaves spread
over a square-ish grid of first/second-level directories. Content is random (incompressible).
Each small file is exactly --file-size bytes, or, with --max-size, a size drawn uniformly from
[--file-size, --max-size] by a generator seeded with --seed (the same tree every time).
--large-files N adds ROOT/large/bigN.bin, N files of --large-size random bytes each.

Usage: gen_tree.py --root DIR --files N [--file-size BYTES] [--max-size BYTES] [--per-dir N]
                   [--large-files N --large-size BYTES] [--seed N]
Examples:
    gen_tree.py --root small --files 20000 --file-size 4096          # bench "smallfiles"
    gen_tree.py --root mixed --files 10000 --file-size 4096 --max-size 65536 \
                --large-files 4 --large-size 268435456                 # bench "mixed"
"""
import argparse
import math
import os
import random
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--files", required=True, type=int)
    ap.add_argument("--file-size", type=int, default=4096, help="size of each small file (the minimum with --max-size)")
    ap.add_argument("--max-size", type=int, default=0, help="draw each small file's size from [file-size, max-size]")
    ap.add_argument("--per-dir", type=int, default=50)
    ap.add_argument("--large-files", type=int, default=0)
    ap.add_argument("--large-size", type=int, default=0)
    ap.add_argument("--seed", type=int, default=42, help="seeds the sizes (the content is always random)")
    a = ap.parse_args()
    if a.max_size and a.max_size < a.file_size:
        ap.error("--max-size must be at least --file-size")
    if a.large_files and a.large_size <= 0:
        ap.error("--large-files needs --large-size")

    sizes = random.Random(a.seed)
    leaves = max(1, math.ceil(a.files / a.per_dir))
    top = max(1, math.ceil(math.sqrt(leaves)))
    os.makedirs(a.root, exist_ok=False)
    made = total = 0
    # Random bytes in slabs of up to 4 MiB, cut into files.
    slab, off = b"", 0
    for leaf in range(leaves):
        d = os.path.join(a.root, "d%02d" % (leaf // top), "d%02d" % (leaf % top))
        os.makedirs(d)
        for _ in range(min(a.per_dir, a.files - made)):
            size = sizes.randint(a.file_size, a.max_size) if a.max_size else a.file_size
            if off + size > len(slab):
                slab, off = os.urandom(max(size, 4 << 20)), 0
            with open(os.path.join(d, "f%06d.bin" % made), "wb") as f:
                f.write(slab[off:off + size])
            off += size
            made += 1
            total += size
    if a.large_files:
        d = os.path.join(a.root, "large")
        os.makedirs(d)
        for i in range(a.large_files):
            with open(os.path.join(d, "big%d.bin" % i), "wb") as f:
                left = a.large_size
                while left > 0:   # bounded: left shrinks by at least 1 byte per round
                    n = min(left, 4 << 20)
                    f.write(os.urandom(n))
                    left -= n
            total += a.large_size
    print("gen_tree: %d small files (%s bytes) in %d directories%s under %s, %d bytes in all"
          % (made, a.file_size if not a.max_size else "%d..%d" % (a.file_size, a.max_size), leaves,
             ", %d files of %d bytes" % (a.large_files, a.large_size) if a.large_files else "", a.root, total),
          file=sys.stderr)


if __name__ == "__main__":
    main()
