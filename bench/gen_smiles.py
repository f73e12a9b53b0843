#!/usr/bin/env python3
"""Generate a realistic-looking compound library as SMILES text, one molecule per line.

Each line is `SMILES<TAB>ID<TAB>MW` like a vendor .smi export, for example

    COc1ccc(cc1)C(=O)N[C@@H](C)c1ccc2[nH]ccc2c1	FRY0000012345	322.41

Molecules are assembled from drug-like fragments: 1-4 ring systems (benzene, pyridine,
indole, piperidine, morpholine, ...) joined by linkers (amide, sulfonamide, ether,
urea, ...), with substituents (F, Cl, OMe, CF3, ...), stereo centres, charges and the
occasional salt. Ring-closure digits are reused only after they close, so the SMILES are
syntactically valid; they are not sanitised chemistry, but their byte statistics are
those of a real library: zstd -1 compresses them 3-8x (checked by the caller), not 1000x.

Generation runs in worker processes (one per core) on blocks of a fixed number of lines,
so the output is deterministic for a given --seed and IDs stay sequential.

Usage: gen_smiles.py --out FILE [--size BYTES] [--seed N] [--jobs N]   (--size default: 2 GiB)
"""
import argparse
import multiprocessing
import os
import random
import sys

LINES_PER_BLOCK = 50_000

# Ring systems. "{}" marks a substituent slot (filled with "(X)" or nothing). The first atom
# bonds to whatever precedes the ring, the last atom to whatever follows it.
RINGS = [
    ("c1ccc{}cc1", 76.1), ("c1cc{}ccc1", 76.1), ("c1ccccc1{}", 76.1), ("c1ccc{}c{}c1", 76.1),
    ("c1ccncc1", 77.1), ("c1ccc{}nc1", 77.1), ("c1cnc{}nc1", 78.1), ("c1cncnc1", 78.1),
    ("c1ccc2[nH]ccc2c1", 115.1), ("c1ccc2c{}cccc2c1", 126.2), ("c1ccc2ncccc2c1", 127.1),
    ("c1ccc2OCOc2c1", 120.1), ("c1ccc2occc2c1", 116.1), ("c1ccc2sc{}nc2c1", 133.2),
    ("c1ccsc1", 82.1), ("c1ccoc1", 66.1), ("c1cnc[nH]1", 66.1), ("c1cn{}nc1", 66.1),
    ("c1nnc{}o1", 68.1), ("c1ncc{}s1", 83.1), ("c1cc{}no1", 67.1), ("n1ccc{}cc1", 77.1),
    ("C1CCC{}CC1", 82.1), ("C1CCN{}CC1", 83.1), ("C1CCOCC1", 84.1), ("C1CC1", 40.1),
    ("C1CCCC1", 68.1), ("C1CN{}CCN1", 84.1), ("[C@@H]1CCCN1{}", 69.1), ("[C@H]1CC[C@@H]{}CC1", 82.1),
    ("C1COc2ccccc2O1", 134.1), ("c1cc2ccccc2[nH]1", 115.1), ("C1CC2CCC1C2", 92.2),
]
# Substituents for the slots, weighted by how often they appear in med-chem libraries.
SUBS = [("F", 19.0), ("Cl", 35.5), ("C", 15.0), ("OC", 31.0), ("Br", 79.9), ("C(F)(F)F", 69.0),
        ("O", 17.0), ("N", 16.0), ("C#N", 26.0), ("CC", 29.1), ("OC(F)(F)F", 85.0),
        ("S(C)(=O)=O", 79.1), ("C(C)C", 43.1), ("N(C)C", 44.1), ("[N+](=O)[O-]", 46.0),
        ("C(=O)OC", 59.0), ("C(N)=O", 44.0), ("I", 126.9)]
SUB_WEIGHTS = [14, 12, 14, 10, 4, 6, 5, 4, 4, 4, 2, 2, 2, 2, 1, 2, 2, 1]
LINKERS = [("C(=O)N", 43.0), ("NC(=O)", 43.0), ("C", 14.0), ("CC", 28.1), ("O", 16.0),
           ("N", 15.0), ("S(=O)(=O)N", 79.1), ("NS(=O)(=O)", 79.1), ("NC(=O)N", 58.0),
           ("C(=O)", 28.0), ("OC", 30.0), ("CN", 29.0), ("[C@@H](C)N", 43.1),
           ("[C@H](O)", 30.0), ("/C=C/", 26.0), ("C#C", 24.0), ("", 0.0), ("CCN", 43.1),
           ("CO", 30.0), ("C(=O)NC", 57.1), ("N(C)C(=O)", 57.1), ("[C@H](N)C(=O)N", 72.1),
           ("OCC", 44.1), ("CCC(=O)N", 71.1), ("SC", 46.1)]
LINKER_WEIGHTS = [12, 8, 9, 4, 5, 6, 4, 3, 3, 4, 3, 3, 2, 2, 1, 1, 8, 2, 2, 2, 2, 1, 1, 2, 1]
PREFIXES = [("", 0.0), ("C", 15.0), ("CC", 29.1), ("CO", 31.0), ("N#C", 26.0),
            ("FC(F)(F)", 69.0), ("CN(C)", 44.1), ("OC(=O)", 45.0), ("CS(=O)(=O)", 79.1),
            ("CC(C)(C)OC(=O)N", 116.1), ("CC(=O)N", 58.1), ("COC(=O)", 59.0), ("Cl", 35.5),
            ("CC(C)", 43.1), ("O=C(O)CC", 73.1), ("NC(=O)", 44.0), ("C[C@H](N)", 44.1)]
PREFIX_WEIGHTS = [25, 8, 4, 8, 2, 2, 3, 2, 2, 2, 3, 2, 2, 3, 1, 1, 1]
SUFFIXES = [("", 0.0), ("C", 15.0), ("F", 19.0), ("Cl", 35.5), ("OC", 31.0), ("C(=O)O", 45.0),
            ("C(N)=O", 44.0), ("N1CCOCC1", 86.1), ("N1CCN(C)CC1", 99.2), ("C#N", 26.0),
            ("C(F)(F)F", 69.0), ("O", 17.0), ("N1CCCC1", 70.1), ("C(C)(C)C", 57.1),
            ("[O-].[Na+]", 39.0), ("N", 16.0), ("CO", 31.0)]
SUFFIX_WEIGHTS = [25, 8, 6, 5, 6, 3, 2, 3, 3, 2, 2, 2, 2, 2, 1, 2, 2]
SALTS = ["", ".Cl", ".O=C(O)C(F)(F)F", ".Br", ".O=C(O)/C=C\\C(=O)O"]
SALT_WEIGHTS = [90, 6, 2, 1, 1]
SALT_MASS = [0.0, 36.5, 114.0, 80.9, 116.1]


def _table(items, weights=None):
    """Expand (value, mass) items by integer weight so a pick is one index."""
    weights = weights or [1] * len(items)
    out = []
    for item, w in zip(items, weights):
        out.extend([item] * w)
    return out


# Rings pre-split at their substituent slots: (segments, mass).
_RINGS = _table([(r.split("{}"), m) for r, m in RINGS])
_SUBS = _table([("(" + s + ")", m) for s, m in SUBS], SUB_WEIGHTS)
_LINKERS = _table(LINKERS, LINKER_WEIGHTS)
_PREFIXES = _table(PREFIXES, PREFIX_WEIGHTS)
_SUFFIXES = _table(SUFFIXES, SUFFIX_WEIGHTS)
_SALTS = _table(list(zip(SALTS, SALT_MASS)), SALT_WEIGHTS)
_NRINGS = _table([1, 2, 3, 4], [20, 45, 28, 7])


def molecule(rnd):
    """One SMILES string and its (approximate) molecular weight; rnd() is uniform in [0, 1)."""
    p, mass = _PREFIXES[int(rnd() * len(_PREFIXES))]
    parts = [p]
    for i in range(_NRINGS[int(rnd() * len(_NRINGS))]):
        if i:
            l, m = _LINKERS[int(rnd() * len(_LINKERS))]
            parts.append(l)
            mass += m
        segs, m = _RINGS[int(rnd() * len(_RINGS))]
        mass += m
        parts.append(segs[0])
        for seg in segs[1:]:
            if rnd() < 0.45:
                s, sm = _SUBS[int(rnd() * len(_SUBS))]
                parts.append(s)
                mass += sm
            parts.append(seg)
    s, m = _SUFFIXES[int(rnd() * len(_SUFFIXES))]
    parts.append(s)
    mass += m
    s, m = _SALTS[int(rnd() * len(_SALTS))]
    parts.append(s)
    return "".join(parts), mass + m


def block(args):
    """Lines [index*LINES_PER_BLOCK, (index+1)*LINES_PER_BLOCK) as bytes."""
    seed, index = args
    rnd = random.Random(seed * 1_000_003 + index).random
    first = index * LINES_PER_BLOCK
    out = []
    for n in range(first + 1, first + LINES_PER_BLOCK + 1):
        smi, mass = molecule(rnd)
        # Real exports carry a little noise in the property column.
        out.append("%s\tFRY%010d\t%.2f\n" % (smi, n, mass + rnd() * 3))
    return "".join(out).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=2 << 30,
                    help="target size in bytes (whole lines, at least this; default 2 GiB)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()

    written = 0
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f, multiprocessing.Pool(a.jobs) as pool:
        # Blocks are independent; imap keeps them in order. Upper bound on the count so the
        # loop is bounded even if lines were unexpectedly short.
        max_blocks = a.size // (LINES_PER_BLOCK * 20) + 2
        for data in pool.imap(block, ((a.seed, i) for i in range(max_blocks)), chunksize=1):
            if written + len(data) >= a.size:
                # Cut at the first line end past the target size.
                need = a.size - written
                cut = data.index(b"\n", max(need - 1, 0)) + 1 if need > 0 else 0
                f.write(data[:cut])
                written += cut
                pool.terminate()
                break
            f.write(data)
            written += len(data)
    os.replace(tmp, a.out)
    print("gen_smiles: wrote %d bytes to %s" % (written, a.out), file=sys.stderr)


if __name__ == "__main__":
    main()
