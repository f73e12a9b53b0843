#!/usr/bin/env python3
"""A synthetic compound-library catalog tree (bench/catalog.sh, bench/api.sh).

    gen_catalog.py ROOT FILES FLAT POOL

ROOT/zinc: FILES files in tranches by heavy-atom count and logP (H04..H30 x P-100..P500, like
ZINC's), sizes 1 KiB-64 MiB set with ftruncate (sparse: no data is written, a catalog only needs
metadata). ROOT/flat/all: one directory of FLAT empty entries (m00000000.mol2, ...).
POOL > 0: the zinc files are hard links to POOL sparse files in ROOT/pool of the same size
classes (10 million entries then cost dentries only, not 10 million inodes).
"""
import os, random, sys

root, n, flat, pool = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
random.seed(7)
sizes = (1 << 10, 1 << 16, 1 << 20, 1 << 22, 1 << 26)
base = []
if pool:
    os.makedirs(os.path.join(root, "pool"))
    for k in range(pool):
        p = os.path.join(root, "pool", "b%05d" % k)
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.ftruncate(fd, random.choice(sizes))
        os.close(fd)
        base.append(p)
tranches = ["H%02dP%03d" % (h, p) if p >= 0 else "H%02dM%03d" % (h, -p) for h in range(4, 31) for p in range(-100, 501, 60)]
per = max(1, n // len(tranches))
made = 0
for t in tranches:
    d = os.path.join(root, "zinc", t[:3], t)
    os.makedirs(d, exist_ok=True)
    for i in range(per if t != tranches[-1] else n - made):
        name = os.path.join(d, "%s.%07d.smi.gz" % (t, i))
        if pool:
            os.link(base[made % pool], name)
        else:
            fd = os.open(name, os.O_CREAT | os.O_WRONLY, 0o644)
            os.ftruncate(fd, random.choice(sizes))
            os.close(fd)
        made += 1
d = os.path.join(root, "flat", "all")
os.makedirs(d)
for i in range(flat):
    os.close(os.open(os.path.join(d, "m%08d.mol2" % i), os.O_CREAT | os.O_WRONLY, 0o644))
