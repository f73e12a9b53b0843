#!/usr/bin/env bash
# The daemon API under load (issue 14, "find the stall"): K scheduler hooks staging inputs in
# from a peer job after job (ask, poll every second until ready, status, teardown, one second
# before the next job), P clients
# polling the API the way scripts do (a new connection per request, 30 s timeout), W progress
# watchers (server-sent events), jobs submitted to a peer and running, a catalog registration
# of F files repeated the whole time (long write transactions; none with --files 0), and H CPU hogs beside it on
# the two cores. Two centers on loopback (127.0.0.1 only), in a temp dir in tmpfs, removed on
# exit. Prints "key<TAB>value" lines: requests, errors, latency percentiles, the longest
# request and the longest time with no request answered.
#
#   bench/stall.sh [--clients 200] [--hooks 100] [--watchers 20] [--seconds 60] [--files 200000] [--hogs 2]
#                  [--db sqlite|postgres] [--ferry BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
clients=200; hooks=100; watchers=20; seconds=60; files=200000; hogs=2; db=sqlite; ferry="$PWD/.build/release/ferry"
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift 2 ;; --hooks) hooks=$2; shift 2 ;; --watchers) watchers=$2; shift 2 ;; --seconds) seconds=$2; shift 2 ;;
    --files) files=$2; shift 2 ;; --hogs) hogs=$2; shift 2 ;; --db) db=$2; shift 2 ;; --ferry) ferry=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
[ -x "$ferry" ] || { echo "no ferry binary at $ferry (swift build -c release)" >&2; exit 1; }
. bench/centers.sh
bench_setup stall "$db"
bench_pki
mkdir -p "$w/scratch/in" "$w/scratch/tree" "$w/scratch/jobs" "$w/scratch/stage" "$w/incoming" "$w/archive"
python3 - "$w/scratch" "$files" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(64):
    data = os.urandom(256 << 10)
    for where in ("in", "../archive"):
        with open(os.path.join(d, where, "f%02d" % i), "wb") as f: f.write(data)
per = 5000
for i in range(n):
    sub = os.path.join(d, "tree", "d%04d" % (i // per))
    if i % per == 0: os.makedirs(sub, exist_ok=True)
    open(os.path.join(sub, "f%07d" % i), "wb").close()
PY
{ bench_header wuxi; cat <<T
[[export]]
name = "incoming"
path = "incoming"
access = "rw"
users = ["center:hlrs"]
[[export]]
name = "archive"
path = "archive"
access = "ro"
users = ["center:hlrs"]
T
} > "$w/wuxi.toml"
bench_serve wuxi
bport=$bench_port
{ bench_header hlrs; cat <<T
[daemon]
database = "$database"
api_listen = "127.0.0.1:0"
workers = 4
staging = "/scratch/stage"
[[peer]]
name = "wuxi"
address = "127.0.0.1:$bport"
[[export]]
name = "scratch"
path = "scratch"
access = "rw"
users = ["*"]
T
} > "$w/hlrs.toml"
bench_serve hlrs
api=$bench_api
for _ in $(seq 1 "$hogs"); do timeout "$((seconds + 120))" sh -c 'while :; do :; done' & pids+=($!); done
echo "stall bench: $hooks stage-in hooks, $clients pollers, $watchers watchers, jobs to wuxi, registration of $files files, $hogs CPU hogs, ${seconds}s, queue on $db; API at $api" >&2
echo -e "db\t$db"
# The hooks' event loop on uvloop (PyPI) when it can be installed: with CPython's own loop the
# load generator lagged 200-300 ms behind its own timers at 1,300 requests a second, and that
# lag was in every latency it measured (stall.py reports it as client_lag_*).
venv=/opt/ferry-bench-venv
if [ ! -x "$venv/bin/python3" ] || ! "$venv/bin/python3" -c "import uvloop" 2>/dev/null; then
  { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check "uvloop>=0.19"; } >&2 || echo "stall: no uvloop (CPython's event loop: the client's lag is reported)" >&2
fi
py=python3; [ -x "$venv/bin/python3" ] && py="$venv/bin/python3"
"$py" bench/stall.py "$api" "$w/token" "$clients" "$watchers" "$seconds" "$hooks" "$w/scratch" "$files"
grep -i "error\|fatal" "$w/hlrs.err" | head -5 >&2 || true
