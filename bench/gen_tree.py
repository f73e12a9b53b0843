#!/usr/bin/env python3
"""Generate a nested tree of many small random files.

Layout: ROOT/dNN/dNN/fNNNNN.bin, at most --per-dir files per leaf directory, leaves spread
over a square-ish grid of first/second-level directories. Content is random (incompressible),
each file exactly --file-size bytes.

Usage: gen_tree.py --root DIR --files N [--file-size BYTES] [--per-dir N]
"""
import argparse
import math
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--files", required=True, type=int)
    ap.add_argument("--file-size", type=int, default=4096)
    ap.add_argument("--per-dir", type=int, default=50)
    a = ap.parse_args()

    leaves = max(1, math.ceil(a.files / a.per_dir))
    top = max(1, math.ceil(math.sqrt(leaves)))
    os.makedirs(a.root, exist_ok=False)
    made = 0
    # Random bytes in slabs of up to 4 MiB, cut into files.
    slab, off = b"", 0
    for leaf in range(leaves):
        d = os.path.join(a.root, "d%02d" % (leaf // top), "d%02d" % (leaf % top))
        os.makedirs(d)
        for _ in range(min(a.per_dir, a.files - made)):
            if off + a.file_size > len(slab):
                slab, off = os.urandom(max(a.file_size, 4 << 20)), 0
            with open(os.path.join(d, "f%06d.bin" % made), "wb") as f:
                f.write(slab[off:off + a.file_size])
            off += a.file_size
            made += 1
    print("gen_tree: %d files of %d bytes in %d directories under %s"
          % (made, a.file_size, leaves, a.root), file=sys.stderr)


if __name__ == "__main__":
    main()
