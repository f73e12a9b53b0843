#!/usr/bin/env bash
# bench/ab.sh — two option sets of one push, alternated: wall time, Gbit/s and each side's CPU
# per GiB (issue 18's A/B measurements: --zero-copy, --direct-io, protections).
#
# Usage: bench/ab.sh --src FILE|DIR --dst DIR [--ferry BIN] [--runs N] [--cold]
#                    --a "CP OPTIONS" [--a-serve "SERVE OPTIONS"] --b "CP OPTIONS" [--b-serve "..."]
#   --src    the file pushed, or a directory pushed with -r (then each line also gives files/s);
#            --dst  the server's root (emptied before each run)
#   --a-ferry / --b-ferry  a binary of each set's own (both sides), to compare two builds
#   --ferry  the binary (default .build/release/ferry); --runs  pairs (default 3)
#   --cold   drop the page cache before each run (the source is read from its disk) and stop
#            each run's clock when `sync` returns
# Each run starts a fresh `ferry serve` on 127.0.0.1 (port 0) with a PKI made once in a
# temporary directory; the copy is compared with its source (cmp) after the run, not timed.
# Prints one line per run and, per option set, the medians.
set -euo pipefail
FERRY=.build/release/ferry; RUNS=3; COLD=0; SRC=""; DST=""; A=""; B=""; AS=""; BS=""; AF=""; BF=""
while [ $# -gt 0 ]; do
    case $1 in
        --src) SRC=$2; shift 2 ;; --dst) DST=$2; shift 2 ;; --ferry) FERRY=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;; --cold) COLD=1; shift ;;
        --a) A=$2; shift 2 ;; --b) B=$2; shift 2 ;; --a-ferry) AF=$2; shift 2 ;; --b-ferry) BF=$2; shift 2 ;; --a-serve) AS=$2; shift 2 ;; --b-serve) BS=$2; shift 2 ;;
        *) echo "bench/ab.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
. "$(dirname "$0")/lib.sh"
bench_setup ab
BASE=$FERRY
[ -z "$AF" ] || AF=$(readlink -f "$AF"); [ -z "$BF" ] || BF=$(readlink -f "$BF")
if [ -d "$SRC" ]; then
    TREE=(-r); SIZE=$(find "$SRC" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'); FILES=$(find "$SRC" -type f | wc -l)
else
    TREE=(); SIZE=$(stat -c %s "$SRC"); FILES=1
fi

run() {  # run LABEL "CP OPTIONS" "SERVE OPTIONS"
    local label=$1 opts=$2 sopts=$3 s0 s1 t0 t1 e u s ok
    FERRY=$BASE
    if [ "$label" = A ] && [ -n "$AF" ]; then FERRY=$AF; fi
    if [ "$label" = B ] && [ -n "$BF" ]; then FERRY=$BF; fi
    # shellcheck disable=SC2086 # option strings, split on purpose
    bench_serve $sopts
    if [ "$COLD" = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
    s0=$(cpu "$SERVER"); t0=$EPOCHREALTIME
    # shellcheck disable=SC2086
    /usr/bin/time -f "%U %S" -o "$P/time" timeout 600 "$FERRY" cp "${TREE[@]}" $opts --ca "$P/ca.crt" --token-file "$P/token" "$SRC" "ferry://127.0.0.1:$PORT/ab.bin" >"$P/cp.out" 2>&1 \
        || { echo "ferry cp failed: $(tail -c 300 "$P/cp.out")" >&2; exit 1; }
    [ "$COLD" = 1 ] && sync
    t1=$EPOCHREALTIME
    sleep 0.1
    s1=$(cpu "$SERVER")
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
    read -r u s <"$P/time"
    if [ -d "$SRC" ]; then diff -r -q "$SRC" "$DST/ab.bin" >/dev/null && ok=ok || ok=DIFFERS
    else cmp -s "$SRC" "$DST/ab.bin" && ok=ok || ok=DIFFERS; fi
    python3 -c "import sys; t0,t1,u,s,s0,s1,b=map(float,sys.argv[1:8]); g=b/2**30; e=t1-t0
n=int(sys.argv[10]); extra=f'\t{n/e:.0f}\t{(u+s)/n*1e6:.1f}\t{(s1-s0)/100/n*1e6:.1f}' if n > 1 else ''
print(f'{sys.argv[8]}\t{e:.3f}\t{b*8/e/1e9:.2f}\t{(u+s)/g:.3f}\t{(s1-s0)/100/g:.3f}\t{sys.argv[9]}{extra}')" "$t0" "$t1" "$u" "$s" "$s0" "$s1" "$SIZE" "$label" "$ok" "$FILES" | tee -a "$P/results"
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC') $(basename "$SRC") ($SIZE bytes) -> $DST, $RUNS pairs$( [ "$COLD" = 1 ] && echo ', cold cache, timed until sync'); A: ${AF:+$AF }cp $A ${AS:+/ serve $AS}; B: ${BF:+$BF }cp $B ${BS:+/ serve $BS}"
echo -e "set\tseconds\tGbit/s\tclient s/GiB\tserver s/GiB\tcopy$( [ "$FILES" -gt 1 ] && printf '\tfiles/s\tclient µs/file\tserver µs/file')"
for r in $(seq 1 "$RUNS"); do
    if [ $((r % 2)) = 1 ]; then run A "$A" "$AS"; run B "$B" "$BS"; else run B "$B" "$BS"; run A "$A" "$AS"; fi
done
python3 - "$P/results" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
for label in ("A", "B"):
    r = [x for x in rows if x[0] == label]
    med = lambda i: statistics.median(float(x[i]) for x in r)
    per = f", {med(6):.0f} files/s, client {med(7):.1f} µs/file, server {med(8):.1f} µs/file" if len(r[0]) > 6 else ""
    print(f"median {label}: {med(1):.3f} s, {med(2):.2f} Gbit/s, client {med(3):.3f} s/GiB, server {med(4):.3f} s/GiB ({sum(x[5] == 'ok' for x in r)}/{len(r)} identical){per}")
PY
