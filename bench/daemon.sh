#!/usr/bin/env bash
# The daemon's throughput (issue 4): N one-file jobs through one daemon, end to end (submitted
# over the API, each a TLS session to a peer center, all verified), and the API's latency with
# C concurrent clients. Two centers on loopback (127.0.0.1 only), made in a temp dir in tmpfs;
# everything is removed on exit. Release build expected at .build/release/ferry.
#
#   bench/daemon.sh [--jobs 10000] [--clients 100] [--seconds 15] [--workers 4] [--per-user N] [--db sqlite|postgres] [--ferry BIN]
#
# --per-user: the daemon's per_user (default: the workers, so that one submitting user uses
# them all; --per-user default leaves the daemon's own default, workers - 1).
#
# The API latency is measured with wrk (GET of one job, C connections, --latency); the job
# figures with a Python client (8 threads submitting). --db postgres starts a throwaway
# PostgreSQL with scripts/postgres-test.sh. Prints "key<TAB>value" lines.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=10000; clients=100; seconds=15; workers=4; per_user=""; db=sqlite; ferry="$PWD/.build/release/ferry"
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs=$2; shift 2 ;; --clients) clients=$2; shift 2 ;; --seconds) seconds=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;; --db) db=$2; shift 2 ;; --ferry) ferry=$2; shift 2 ;;
    --per-user) per_user=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
[ -x "$ferry" ] || { echo "no ferry binary at $ferry (swift build -c release)" >&2; exit 1; }
. bench/centers.sh
bench_wrk
bench_setup daemon "$db"
bench_pki
mkdir -p "$w/scratch/in" "$w/incoming"
python3 - "$w/scratch/in" "$jobs" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, "f%05d" % i), "wb") as f: f.write(os.urandom(4096))
PY
{ bench_header wuxi; cat <<T
[limits]
connections = 1024
connections_per_address = 1024
[[export]]
name = "incoming"
path = "incoming"
access = "rw"
users = ["center:hlrs"]
T
} > "$w/wuxi.toml"
bench_serve wuxi
bport=$bench_port
{ bench_header hlrs; cat <<T
[daemon]
database = "$database"
api_listen = "127.0.0.1:0"
workers = $workers
per_peer = $workers
$(case "${per_user:-$workers}" in default) ;; *) echo "per_user = ${per_user:-$workers}" ;; esac)
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
echo "daemon bench: $jobs one-file jobs (4 KiB) hlrs -> wuxi, $workers workers, queue on $db; API at $api" >&2
echo -e "db\t$db"
python3 - "$api" "$w/token" "$jobs" "$w/scratch/in" "$w/incoming" <<'PY'
import json, os, sys, threading, time, urllib.request, statistics, filecmp
api, tokfile, n, src, dst = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
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
# TLS handshakes of the jobs towards wuxi: full ones and ones resumed from a ticket (issue 14).
metrics = urllib.request.urlopen(api + "/metrics", timeout=60).read().decode()
for kind in ("full", "resumed"):
    line = [l for l in metrics.splitlines() if l.startswith('ferry_peer_tls_handshakes_total{peer="wuxi",kind="%s"}' % kind)]
    print("tls_%s\t%s" % (kind, line[0].split()[-1] if line else "-"))
# One job at a time on an idle daemon: from the submission's answer to the job's success (read
# every 5 ms), 50 jobs: what a user waiting for one third-party copy sees.
solo = []
for i in range(min(50, n)):
    time.sleep(0.3)  # idle between jobs, as a user's jobs come
    t = time.time()
    j = call("POST", "/api/v1/transfers", {"source": "/scratch/in/f%05d" % i, "destination": "ferry://wuxi/incoming/solo/f%05d" % i})
    while call("GET", "/api/v1/transfers/%d" % j["id"])["state"] not in ("success", "failed", "skipped"):
        time.sleep(0.005)
    solo.append(time.time() - t)
solo.sort()
print("solo_job_p50_ms\t%.0f\nsolo_job_p90_ms\t%.0f" % (1000 * solo[len(solo) // 2], 1000 * solo[int(len(solo) * 0.9)]))
PY
# The same kind of work without the daemon, as a user's script would do it: one `ferry cp`
# per file, 4 at a time (xargs -P 4), for 1,000 of the files (all of them when --jobs is less),
# with the center's certificate.
mkdir -p "$w/incoming/baseline"
nloop=$(( jobs < 1000 ? jobs : 1000 ))
b0=$(date +%s.%N)
seq -f "%05g" 0 $((nloop - 1)) | xargs -P 4 -I{} "$ferry" cp --ca "$w/pki/ca.crt" --cert "$w/pki/hlrs.crt" --key "$w/pki/hlrs.key" --center wuxi \
  "$w/scratch/in/f{}" "ferry://127.0.0.1:$bport/incoming/baseline/f{}" >/dev/null
b1=$(date +%s.%N)
echo -e "cp_loop_files\t$nloop"
echo -e "cp_loop_files_per_s\t$(python3 -c "print('%.1f' % ($nloop / ($b1 - $b0)))")"
# API latency: wrk, C connections on 2 threads, each request one job's JSON (a token check and
# a database read), for the given seconds.
out=$(wrk -t2 -c"$clients" -d"${seconds}s" --latency -H "Authorization: Bearer $(cat "$w/token")" "$api/api/v1/transfers/1")
echo "$out" >&2
echo -e "api_clients\t$clients"
echo -e "api_rps\t$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
echo -e "api_p50\t$(echo "$out" | awk '$1 == "50%" {print $2}')"
echo -e "api_p99\t$(echo "$out" | awk '$1 == "99%" {print $2}')"
echo -e "api_non2xx\t$(echo "$out" | awk '/Non-2xx/ {print $NF}')"
