#!/usr/bin/env bash
# bench/stages.sh — CPU seconds per GiB of each stage of the data path (bench/stages.c), on this
# machine, for docs/PERFORMANCE.md (issue 18, "the 100 Gbit/s budget on paper").
#
# Usage: bench/stages.sh [--dir DIR] [--bytes N] [--runs R]
#   --dir    a directory on a disk filesystem for the write stages (default /var/tmp)
#   --bytes  bytes per stage (default 1073741824)
#   --runs   runs; the table gives each stage's median (default 3)
# Needs gcc, libxxhash-dev and libssl-dev (installed by scripts/install-deps.sh), and for the
# bssl-* stages a release build (.build/release). Talks to
# 127.0.0.1 only. Prints one line per stage: name, median s/GiB, cycles/byte at the CPU's
# nominal clock (this VM has no performance counters), and the cores each stage needs at
# 10, 40 and 100 Gbit/s.
set -euo pipefail
DIR=/var/tmp; BYTES=$((1 << 30)); RUNS=3
while [ $# -gt 0 ]; do
    case $1 in
        --dir) DIR=$2; shift 2 ;;
        --bytes) BYTES=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        *) echo "bench/stages.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/ferry-stages.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# -O3: with -O2, gcc leaves XXH3's SSE2 loop four times slower than clang builds it for Ferry
# (xxh3-sse2 0.160 s/GiB in a run of this script built with -O2 on 2026-12-06, 0.037 with -O3).
gcc -O3 -I "$HERE/../Sources/CXXHash/include" -o "$WORK/stages" "$HERE/stages.c" "$HERE/../Sources/CXXHash/shim.c" -lxxhash -lcrypto
# The streams' AES-256-GCM since issue 18 is BoringSSL's (Sources/CAEAD), measured by bench/aead.c
# against the objects of the release build (bench/run builds it; or swift build -c release).
BSSL=$HERE/../.build/release/CNIOBoringSSL.build
AEAD=""
if [ -d "$BSSL" ]; then
    # Every object: the generated assembly of other systems and CPUs assembles to nothing here.
    find "$BSSL" -name '*.o' -print0 | xargs -0 ar rcs "$WORK/libbssl.a"
    if gcc -O2 -I "$HERE/../Sources/CAEAD/include" -I "$HERE/../.build/checkouts/swift-nio-ssl/Sources/CNIOBoringSSL/include" \
        -o "$WORK/aead" "$HERE/aead.c" "$HERE/../Sources/CAEAD/shim.c" -L "$WORK" -lbssl -lstdc++ -lpthread; then
        AEAD=$WORK/aead
    else
        echo "bench/stages.sh: bench/aead.c did not build against $BSSL: the bssl-* stages are left out" >&2
    fi
else
    echo "bench/stages.sh: no release build ($BSSL): the bssl-* stages are left out" >&2
fi
for r in $(seq 1 "$RUNS"); do
    timeout 600 "$WORK/stages" "$DIR" "$BYTES" >"$WORK/run$r.tsv"
    if [ -n "$AEAD" ]; then timeout 600 "$AEAD" "$BYTES" >>"$WORK/run$r.tsv"; fi
done
MHZ=$(awk -F: '/^cpu MHz/ { printf "%d", $2; exit }' /proc/cpuinfo)
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(lscpu | sed -n 's/^Model name: *//p' | head -1), ${MHZ} MHz nominal, kernel $(uname -r), $RUNS runs of $((BYTES >> 20)) MiB, $DIR on $(df -T "$DIR" | awk 'NR==2 { print $2 }')"
python3 - "$MHZ" "$WORK"/run*.tsv <<'PY'
import statistics, sys
mhz = float(sys.argv[1])
runs = {}
for f in sys.argv[2:]:
    for line in open(f):
        name, v = line.split()
        runs.setdefault(name, []).append(float(v))
print("| stage | s/GiB (median) | all runs | cycles/byte | cores at 10 Gbit/s | 40 Gbit/s | 100 Gbit/s |")
print("|---|---|---|---|---|---|---|")
for name, vs in runs.items():
    m = statistics.median(vs)
    cpb = m * mhz * 1e6 / 2**30
    cores = [m * g * 1e9 / 8 / 2**30 for g in (10, 40, 100)]
    print(f"| {name} | {m:.3f} | {', '.join(f'{v:.3f}' for v in vs)} | {cpb:.2f} | {cores[0]:.2f} | {cores[1]:.2f} | {cores[2]:.2f} |")
PY
