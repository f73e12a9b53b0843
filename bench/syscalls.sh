#!/usr/bin/env bash
# bench/syscalls.sh — the system calls of one push of a tree, counted on each side with
# `strace -c -f` and divided by the tree's files: what each file costs the client and the
# server in calls (issue 18, small files). Ring operations (io_uring_enter) carry several
# opens, reads or closes each and are counted as one call.
#
# Usage: bench/syscalls.sh --src DIR --dst DIR [--ferry BIN] [--opts "CP OPTIONS"]
#   --src   the tree pushed with -r (e.g. one made by bench/gen_tree.py)
#   --dst   the server's root (emptied first, removed at the end)
#   --ferry the binary (default .build/release/ferry); --opts extra `ferry cp` options
# 127.0.0.1 only. strace slows both sides: read the counts, not the times.
set -euo pipefail
SRC=""; DST=""; FERRY=.build/release/ferry; OPTS=""
while [ $# -gt 0 ]; do
    case $1 in
        --src) SRC=$2; shift 2 ;; --dst) DST=$2; shift 2 ;;
        --ferry) FERRY=$2; shift 2 ;; --opts) OPTS=$2; shift 2 ;;
        *) echo "bench/syscalls.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
command -v strace >/dev/null || { echo "bench/syscalls.sh: needs strace (apt-get install -y strace)" >&2; exit 2; }
. "$(dirname "$0")/lib.sh"
bench_setup syscalls
[ -d "$SRC" ] || { echo "bench/syscalls.sh: --src must be a directory" >&2; exit 2; }
FILES=$(find "$SRC" -type f | wc -l)
bench_serve
timeout 600 strace -c -f -o "$P/server.txt" -p "$SERVER" 2>/dev/null &
TRACER=$!
sleep 0.5   # strace needs a moment to attach to every thread
# shellcheck disable=SC2086
timeout 600 strace -c -f -o "$P/client.txt" "$FERRY" cp -r $OPTS --ca "$P/ca.crt" --token-file "$P/token" "$SRC" "ferry://127.0.0.1:$PORT/tree" >/dev/null
sleep 0.3
kill -INT "$TRACER"; wait "$TRACER" 2>/dev/null || true
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
diff -rq "$SRC" "$DST/tree" >/dev/null || { echo "bench/syscalls.sh: the copy differs from its source" >&2; exit 1; }
rm -rf "$DST"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $FILES files, ferry cp -r $OPTS; calls per file (at least 0.05), each side"
python3 - "$FILES" "$P/client.txt" "$P/server.txt" <<'PY'
import sys
files = int(sys.argv[1])
def calls(path):
    out = {}
    for line in open(path):
        f = line.split()
        # "% time seconds usecs/call calls [errors] syscall"
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            out[f[-1]] = int(f[3])
    return out
sides = {"client": calls(sys.argv[2]), "server": calls(sys.argv[3])}
names = sorted(set(sides["client"]) | set(sides["server"]),
               key=lambda n: -(sides["client"].get(n, 0) + sides["server"].get(n, 0)))
print("| call | client | server |")
print("|---|---|---|")
for n in names:
    c, s = sides["client"].get(n, 0) / files, sides["server"].get(n, 0) / files
    if c >= 0.05 or s >= 0.05:
        print(f"| {n} | {c:.2f} | {s:.2f} |")
for side, d in sides.items():
    print(f"# {side}: {sum(d.values()) / files:.2f} calls per file in all")
PY
