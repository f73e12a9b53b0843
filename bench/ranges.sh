#!/usr/bin/env bash
# bench/ranges.sh — one big file pushed whole, against the same file pushed as N concurrent
# range sessions and committed (issue 19's striping engine, on one host): wall time, Gbit/s,
# the commit's own time and the server's CPU per GiB. On one host the ranges share its cores
# and its one server, so this measures what ranges and the commit cost, not what striping
# across transfer nodes gains (bench/striped.sh, with network namespaces, is the plan's step 10).
#
# Usage: bench/ranges.sh --src FILE --dst DIR [--ferry BIN] [--runs N] [--ranges N] [--opts "CP OPTIONS"]
#   --src    the file (a multiple of nothing: its last range takes the rest); --dst the
#            server's root (emptied before each run); --ranges  sessions (default 3)
# Each run starts a fresh `ferry serve` on 127.0.0.1 (port 0); each copy is compared with its
# source (cmp) after the run, not timed.
set -euo pipefail
FERRY=.build/release/ferry; RUNS=3; N=3; SRC=""; DST=""; OPTS=""
while [ $# -gt 0 ]; do
    case $1 in
        --src) SRC=$2; shift 2 ;; --dst) DST=$2; shift 2 ;; --ferry) FERRY=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;; --ranges) N=$2; shift 2 ;; --opts) OPTS=$2; shift 2 ;;
        *) echo "bench/ranges.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
. "$(dirname "$0")/lib.sh"
bench_setup ranges
SIZE=$(stat -c %s "$SRC")
CHUNKS=$(( (SIZE + 4194304 - 1) / 4194304 ))
[ "$CHUNKS" -ge "$N" ] || { echo "bench/ranges.sh: $CHUNKS chunks of 4 MiB cannot make $N ranges" >&2; exit 2; }
RANGES=(); first=0
for k in $(seq 1 "$N"); do
    count=$(( k == N ? CHUNKS - first : CHUNKS / N ))
    RANGES+=("$first:$count"); first=$((first + count))
done
LIST=$(IFS=,; echo "${RANGES[*]}")
cp_() { # shellcheck disable=SC2086
    timeout 600 "$FERRY" cp $OPTS --ca "$P/ca.crt" --token-file "$P/token" "$@"; }
run() {  # run whole|ranges
    local label=$1 s0 s1 t0 t1 tc=0 ok pids=()
    bench_serve
    s0=$(cpu "$SERVER"); t0=$EPOCHREALTIME
    if [ "$label" = whole ]; then
        cp_ "$SRC" "ferry://127.0.0.1:$PORT/f.bin" >"$P/cp.out" 2>&1 || { echo "cp failed: $(tail -c 300 "$P/cp.out")" >&2; exit 1; }
    else
        for r in "${RANGES[@]}"; do cp_ --range "$r" "$SRC" "ferry://127.0.0.1:$PORT/f.bin" >"$P/cp-$r.out" 2>&1 & pids+=($!); done
        for p in "${pids[@]}"; do wait "$p" || { echo "a range failed: $(tail -c 300 "$P"/cp-*.out)" >&2; exit 1; }; done
        local c0=$EPOCHREALTIME
        cp_ --commit "$LIST" "$SRC" "ferry://127.0.0.1:$PORT/f.bin" >"$P/commit.out" 2>&1 || { echo "commit failed: $(cat "$P/commit.out")" >&2; exit 1; }
        tc=$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$c0" "$EPOCHREALTIME")
    fi
    t1=$EPOCHREALTIME
    sleep 0.1
    s1=$(cpu "$SERVER")
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
    cmp -s "$SRC" "$DST/f.bin" && ok=ok || ok=DIFFERS
    python3 -c "import sys; t0,t1,tc,s0,s1,b=map(float,sys.argv[1:7]); g=b/2**30; e=t1-t0
print(f'{sys.argv[7]}\t{e:.2f}\t{b*8/e/1e9:.2f}\t{tc:.2f}\t{(s1-s0)/100/g:.3f}\t{sys.argv[8]}')" "$t0" "$t1" "$tc" "$s0" "$s1" "$SIZE" "$label" "$ok" | tee -a "$P/results"
}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC') $(basename "$SRC") ($SIZE bytes) -> $DST, $RUNS pairs; ranges: $LIST; cp $OPTS"
echo -e "how\tseconds\tGbit/s\tcommit s\tserver s/GiB\tcopy"
for r in $(seq 1 "$RUNS"); do
    if [ $((r % 2)) = 1 ]; then run whole; run ranges; else run ranges; run whole; fi
done
python3 - "$P/results" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
for label in ("whole", "ranges"):
    r = [x for x in rows if x[0] == label]
    med = lambda i: statistics.median(float(x[i]) for x in r)
    print(f"median {label}: {med(1):.2f} s, {med(2):.2f} Gbit/s, commit {med(3):.2f} s, server {med(4):.3f} s/GiB ({sum(x[5] == 'ok' for x in r)}/{len(r)} identical)")
PY
