#!/usr/bin/env bash
# The daemon's throughput (issue 4): N one-file jobs through one daemon, end to end (submitted
# over the API, each a TLS session to a peer center, all verified), and the API's latency with
# C concurrent clients. Two centers on loopback (127.0.0.1 only), made in a temp dir in tmpfs;
# everything is removed on exit. Release build expected at .build/release/ferry.
#
#   bench/daemon.sh [--jobs 10000] [--clients 100] [--requests 20] [--workers 4] [--ferry BIN]
#
# Status (2026-11-25): first version. Its first run (2,000 jobs) found that the API refused a
# request with only source and destination (fixed the same evening); it has not yet been run to
# completion, so bench/RESULTS.md has no daemon figures yet.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=10000; clients=100; requests=20; workers=4; ferry="$PWD/.build/release/ferry"
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs=$2; shift 2 ;; --clients) clients=$2; shift 2 ;; --requests) requests=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;; --ferry) ferry=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
[ -x "$ferry" ] || { echo "no ferry binary at $ferry (swift build -c release)" >&2; exit 1; }
w=$(mktemp -d /dev/shm/ferry-daemon-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$w"; }
trap cleanup EXIT
"$ferry" ca init --dir "$w/pki" >/dev/null
for c in hlrs wuxi; do "$ferry" ca issue --dir "$w/pki" --center $c --host 127.0.0.1 >/dev/null; done
"$ferry" token issue --cert "$w/pki/hlrs.crt" --key "$w/pki/hlrs.key" --user bench --scope rw:/ > "$w/token"
mkdir -p "$w/scratch/in" "$w/incoming"
python3 - "$w/scratch/in" "$jobs" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, "f%05d" % i), "wb") as f: f.write(os.urandom(4096))
PY
cat > "$w/wuxi.toml" <<T
center = "wuxi"
listen = ["127.0.0.1:0"]
certificate = "pki/wuxi.crt"
key = "pki/wuxi.key"
ca = "pki/ca.crt"
[limits]
connections = 1024
connections_per_address = 1024
[[export]]
name = "incoming"
path = "incoming"
access = "rw"
users = ["center:hlrs"]
T
timeout 3600 "$ferry" serve --config "$w/wuxi.toml" > "$w/wuxi.out" 2> "$w/wuxi.err" & pids+=($!)
for _ in $(seq 1 100); do grep -q listening "$w/wuxi.out" && break; sleep 0.1; done
bport=$(grep -o '[0-9]*$' "$w/wuxi.out" | head -1)
cat > "$w/hlrs.toml" <<T
center = "hlrs"
listen = ["127.0.0.1:0"]
certificate = "pki/hlrs.crt"
key = "pki/hlrs.key"
ca = "pki/ca.crt"
[daemon]
database = "jobs.sqlite"
api_listen = "127.0.0.1:0"
workers = $workers
per_peer = $workers
per_user = $workers
[[peer]]
name = "wuxi"
address = "127.0.0.1:$bport"
[[export]]
name = "scratch"
path = "scratch"
access = "rw"
users = ["*"]
T
timeout 3600 "$ferry" serve --config "$w/hlrs.toml" > "$w/hlrs.out" 2> "$w/hlrs.err" & pids+=($!)
for _ in $(seq 1 100); do grep -q "api listening" "$w/hlrs.out" && break; sleep 0.1; done
api=$(sed -n 's/.*api listening on //p' "$w/hlrs.out")
echo "daemon bench: $jobs one-file jobs (4 KiB) hlrs -> wuxi, $workers workers; API at $api" >&2
python3 - "$api" "$w/token" "$jobs" "$clients" "$requests" "$w/scratch/in" "$w/incoming" <<'PY'
import json, os, sys, threading, time, urllib.request, statistics, filecmp
api, tokfile, n, clients, requests, src, dst = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
tok = open(tokfile).read().strip()
def call(method, path, body=None):
    req = urllib.request.Request(api + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r: return json.loads(r.read())
t0 = time.time()
lock = threading.Lock(); ids = []; errors = []
def submit(part):
    try:
        for i in part:
            j = call("POST", "/api/v1/transfers", {"source": "/scratch/in/f%05d" % i, "destination": "ferry://wuxi/incoming/f%05d" % i})
            with lock: ids.append(j["id"])
    except Exception as e:
        with lock: errors.append(repr(e))
parts = [range(k, n, 8) for k in range(8)]
ts = [threading.Thread(target=submit, args=(p,)) for p in parts]
[t.start() for t in ts]; [t.join() for t in ts]
t_submit = time.time() - t0
if errors:
    sys.exit("submitting failed: %s" % errors[0])
deadline = time.time() + 3600
while time.time() < deadline:
    h = call("GET", "/api/v1/health")["jobs"]
    if h.get("success", 0) + h.get("failed", 0) + h.get("skipped", 0) + h.get("upstream_failed", 0) >= n: break
    time.sleep(0.5)
t_all = time.time() - t0
ok = sum(1 for i in range(n) if filecmp.cmp(os.path.join(src, "f%05d" % i), os.path.join(dst, "f%05d" % i), shallow=False))
print("jobs\t%d\nsubmitted_in_s\t%.1f\nall_done_in_s\t%.1f\njobs_per_s\t%.1f\nsuccess\t%d\nfailed\t%d\nverified_identical\t%d" %
      (n, t_submit, t_all, n / t_all, h.get("success", 0), h.get("failed", 0), ok))
# API latency: C clients, each R requests of GET /api/v1/transfers/{id}.
lat = []; lk = threading.Lock()
def client(k):
    mine = []
    for r in range(requests):
        a = time.time(); call("GET", "/api/v1/transfers/%d" % ids[(k * requests + r) % len(ids)]); mine.append(time.time() - a)
    with lk: lat.extend(mine)
ts = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
a = time.time(); [t.start() for t in ts]; [t.join() for t in ts]; el = time.time() - a
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
print("api_clients\t%d\napi_requests\t%d\napi_rps\t%.0f\napi_p50_ms\t%.1f\napi_p99_ms\t%.1f\napi_max_ms\t%.1f" % (clients, len(lat), len(lat) / el, p(0.5), p(0.99), lat[-1] * 1000))
PY
