#!/usr/bin/env bash
# The daemon's API under 100 concurrent clients (issue 14, "Benchmarks": p99 ≤ 25 ms for job and
# catalog reads, with a 10 M-entry catalog registration running at the same time). One daemon
# on 127.0.0.1 (its center hlrs, work directory and trees in tmpfs, removed on exit):
#
#   bench/api.sh [--entries 10000000] [--pool 1000] [--dir-entries 1000000] [--jobs 3000]
#                [--clients 100] [--seconds 30] [--round 10] [--busy-max 3600] [--db sqlite|postgres|sqlite,postgres]
#                [--perf DIR] [--ferry BIN]
#
# The trees (bench/gen_catalog.py, in a tmpfs of their own, built once for every engine named by
# --db): "zinc", ENTRIES files in 297 tranche directories, hard links to POOL sparse files
# (bench/catalog.sh --pool), and "flat/all", one directory of DIR_ENTRIES empty files. Then,
# per engine, a new daemon and queue (SQLite file; PostgreSQL: a throwaway server started by
# scripts/postgres-test.sh, one database per engine):
#   - JOBS jobs in its queue: job 1 to a peer whose address nobody listens on (127.0.0.1:1; it
#     fails its first attempt and waits for a retry, 8-12 minutes away), the other JOBS-1
#     depending on it (state scheduled: rows in the queue the scheduler looks at every second);
#   - the flat directory registered as dataset "flat";
#   - (a) "idle": wrk, CLIENTS connections on 2 threads, SECONDS each, nothing else running, over
#     three kinds of read, one wrk run each (bench/api.lua): a job (GET /api/v1/transfers/ID,
#     ID random among all jobs), a page of 100 of the flat directory
#     (GET /api/v1/catalog/ls?path=gfs://hlrs/flat/all&after=NAME&limit=100, NAME random), and
#     one entry (GET /api/v1/catalog/stat?path=gfs://hlrs/flat/all/NAME);
#   - (b) "busy": `ferry register` of the zinc tree (every entry new) in the background and,
#     for as long as it runs, wrk runs of ROUND seconds cycling through the three kinds. Only the
#     rounds that ended before the registration did are counted; the one it ended in is not.
#     After BUSY_MAX seconds no new round starts and the registration is abandoned (the daemon
#     is stopped; register_completed 0 says so).
# Per phase and kind: p50, p99 and max latency (wrk's histogram of every round merged), requests
# per second, answers other than 2xx and socket errors (wrk's timeout is 30 s, so slow answers
# are counted, not dropped), and the CPU used by the daemon and by the whole machine, in cores.
# wrk keeps every connection busy (the next request leaves when the answer has come), so the
# median is about CLIENTS / requests per second, and a stall delays the requests not sent.
# --perf DIR: `perf record -g` of the daemon for 10 s in one extra idle round of each kind and
# in the first busy round (job reads; all left out of the figures); reports, made at the end, in
# DIR: ENGINE-PHASE-KIND.dso.txt (by thread and library), .self.txt (by symbol), .children.txt
# (by symbol, callees included).
# Prints "key<TAB>value" lines ("db<TAB>ENGINE" first for each engine); progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
entries=10000000; pool=1000; dir_entries=1000000; jobs=3000; clients=100; seconds=30; round=10; busy_max=3600
dbs=sqlite; perf_dir=""; ferry="$PWD/.build/release/ferry"
while [ $# -gt 0 ]; do
  case "$1" in
    --entries) entries=$2; shift 2 ;; --pool) pool=$2; shift 2 ;; --dir-entries) dir_entries=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;; --clients) clients=$2; shift 2 ;; --seconds) seconds=$2; shift 2 ;;
    --round) round=$2; shift 2 ;; --busy-max) busy_max=$2; shift 2 ;; --db) dbs=$2; shift 2 ;; --perf) perf_dir=$2; shift 2 ;; --ferry) ferry=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
[ -x "$ferry" ] || { echo "no ferry binary at $ferry (swift build -c release)" >&2; exit 1; }
[ "$jobs" -ge 2 ] && [ "$dir_entries" -ge 200 ] || { echo "--jobs 2 and --dir-entries 200 at least" >&2; exit 64; }
. bench/centers.sh
bench_wrk
bench_setup api ""
# A copy of the binary: a build in the same tree during the run must not change it.
cp "$ferry" "$w/ferry"; ferry="$w/ferry"
if [ -n "$perf_dir" ]; then mkdir -p "$perf_dir"; fi
mkdir -p "$w/wrk"
echo "api bench: trees of $entries + $dir_entries entries (pool $pool) in $w/data" >&2
bench_tmpfs "$w/data"
t0=$(date +%s.%N)
python3 bench/gen_catalog.py "$w/data" "$entries" "$dir_entries" "$pool"
python3 -c 'import os, sys; [open(os.path.join(sys.argv[1], "f%05d" % i), "w").close() for i in range(int(sys.argv[2]))]' \
  "$(mkdir -p "$w/data/jobs" && echo "$w/data/jobs")" "$jobs"
tree_build_s=$(python3 -c "print('%.1f' % ($(date +%s.%N) - $t0))")
bench_pki
dir_path=$(python3 -c 'import urllib.parse; print(urllib.parse.quote("gfs://hlrs/flat/all", safe=""))')

# usage_start; ...; usage_end KEY: prints KEY_daemon_cores (the daemon's CPU time over the wall
# time between the two) and KEY_machine_cores (CPU time used by everything on the machine, out of
# its nproc cores), from /proc.
usage_now() { echo "$(awk '{print $14 + $15}' "/proc/$bench_pid/stat") $(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat) $(date +%s.%N)"; }
usage_start() { usage0=$(usage_now); }
usage_end() {
  # shellcheck disable=SC2086
  python3 - "$1" "$(getconf CLK_TCK)" "$(nproc)" $usage0 $(usage_now) <<'PY'
import sys
key, hz, ncpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d0, all0, idle0, t0, d1, all1, idle1, t1 = map(float, sys.argv[4:12])
print("%s_daemon_cores\t%.2f" % (key, (d1 - d0) / hz / (t1 - t0)))
print("%s_machine_cores\t%.2f" % (key, ncpu * (1 - (idle1 - idle0) / max(1, all1 - all0))))
PY
}

# wrk_round NAME KIND SECONDS: one wrk run, its figures in $w/wrk/NAME.
wrk_round() {
  API_KIND=$2 API_JOBS=$jobs API_DIR=$dir_path API_ENTRIES=$dir_entries API_TOKEN=$(cat "$w/token") API_OUT="$w/wrk/$1" \
    timeout $(($3 + 60)) wrk -t2 -c"$clients" -d"$3s" --timeout 30s -s bench/api.lua "$bench_api" > "$w/wrk/$1.txt"
}

# profile NAME: perf record of the daemon for 10 s, in the background (bounded); the reports are
# made at the end (report_profiles), when nothing is measured any more.
profile() {
  [ -n "$perf_dir" ] || return 0
  timeout 60 perf record -q -F 499 -g -p "$bench_pid" -o "$w/$1.perf" -- sleep 10 >/dev/null 2>&1 &
}
report_profiles() {
  local f n
  for f in "$w"/*.perf; do
    [ -e "$f" ] || continue
    n=$(basename "$f" .perf)
    timeout 300 perf report -i "$f" --stdio --sort comm,dso -g none 2>/dev/null > "$perf_dir/$n.dso.txt" || true
    timeout 300 perf report -i "$f" --stdio --no-children --sort dso,symbol -g none --percent-limit 0.3 2>/dev/null > "$perf_dir/$n.self.txt" || true
    timeout 300 perf report -i "$f" --stdio --children --sort symbol -g none --percent-limit 2 2>/dev/null > "$perf_dir/$n.children.txt" || true
  done
}

engine() {
  local db=$1
  bench_database "$db"
  { bench_header hlrs; cat <<T
[daemon]
database = "$database"
api_listen = "127.0.0.1:0"
retry_base_seconds = 600
[[peer]]
name = "wuxi"
address = "127.0.0.1:1"
[[export]]
name = "data"
path = "data"
access = "rw"
users = ["*"]
T
  } > "$w/hlrs.toml"
  bench_serve hlrs
  [ -n "$bench_api" ] || { echo "the daemon did not start:" >&2; cat "$w/hlrs.err" >&2; exit 1; }
  echo -e "db\t$db"
  echo -e "tree_build_s\t$tree_build_s"
  echo -e "loadavg_at_start\t$(cut -d' ' -f1-3 /proc/loadavg)"
  python3 - "$bench_api" "$w/token" "$jobs" <<'PY'
import json, sys, time, urllib.request
api, tok, n = sys.argv[1], open(sys.argv[2]).read().strip(), int(sys.argv[3])
def call(method, path, body=None):
    r = urllib.request.Request(api + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                               headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
    with urllib.request.urlopen(r, timeout=300) as resp: return json.loads(resp.read())
first = call("POST", "/api/v1/transfers", {"source": "/data/jobs/f00000", "destination": "ferry://wuxi/in/f00000", "max_attempts": 100})
assert first["id"] == 1, first
for k in range(1, n, 1000):
    call("POST", "/api/v1/transfers", {"sources": ["/data/jobs/f%05d" % i for i in range(k, min(n, k + 1000))],
                                       "destination": "ferry://wuxi/in/", "depends_on": [1]})
time.sleep(2)
states = call("GET", "/api/v1/health")["jobs"]
print("jobs_in_queue\t%d" % sum(states.values()))
print("jobs_by_state\t%s" % ",".join("%s=%d" % kv for kv in sorted(states.items())))
PY
  read -r n s < <(bench_register flat /data/flat)
  echo -e "dir_entries\t$n"; echo -e "register_dir_s\t$s"
  local kind k=0 regpid
  # (a) idle
  for kind in jobs ls stat; do
    echo "  $db idle: $kind, ${seconds}s" >&2
    usage_start
    wrk_round "$db.idle.$kind" $kind "$seconds"
    usage_end "idle_$kind"
  done
  if [ -n "$perf_dir" ]; then
    for kind in jobs ls stat; do profile "$db-idle-$kind"; wrk_round "$db.prof.$kind" $kind 12; done
  fi
  # (b) busy: the registration of the zinc tree, and rounds of reads for as long as it runs.
  echo "  $db busy: registering $entries entries, rounds of ${round}s" >&2
  ( bench_register zinc /data/zinc > "$w/register.out" 2> "$w/register.err" ) & regpid=$!
  usage_start
  local kinds=(jobs ls stat) name
  local busy_end=$(($(date +%s) + busy_max))
  while kill -0 "$regpid" 2>/dev/null && [ "$(date +%s)" -lt $busy_end ]; do
    kind=${kinds[k % 3]}
    name="$db.busy.$kind.$k"
    if [ $k = 0 ] && [ -n "$perf_dir" ]; then profile "$db-busy-jobs"; name="$db.prof.busy.$k"; fi
    wrk_round "$name" "$kind" "$round"
    kill -0 "$regpid" 2>/dev/null || mv "$w/wrk/$name" "$w/wrk/$db.tail.$kind.$k"
    k=$((k + 1))
  done
  usage_end busy
  echo -e "busy_rounds\t$k"
  if kill -0 "$regpid" 2>/dev/null; then
    # --busy-max passed: the registration is abandoned (the daemon is stopped below).
    echo -e "register_completed\t0"
    echo -e "register_abandoned_after_s\t$busy_max"
  elif wait "$regpid" && read -r n s < "$w/register.out"; then
    echo -e "register_completed\t1"
    echo -e "register_entries\t$n"; echo -e "register_s\t$s"
    echo -e "register_entries_per_s\t$(python3 -c "print('%.0f' % ($n / $s))")"
  else
    echo -e "register_completed\t0"
    echo "the registration failed:" >&2; cat "$w/register.err" >&2
  fi
  python3 - "$w/wrk" "$db" <<'PY'
import glob, os, sys
d, db = sys.argv[1], sys.argv[2]
for phase in ("idle", "busy"):
    for kind in ("jobs", "ls", "stat"):
        files = sorted(glob.glob(os.path.join(d, "%s.%s.%s" % (db, phase, kind))) + glob.glob(os.path.join(d, "%s.%s.%s.*[0-9]" % (db, phase, kind))))
        hist, tot = {}, {"requests": 0, "duration_us": 0, "non2xx": 0, "socket_errors": 0}
        for f in files:
            for line in open(f):
                p = line.split("\t")
                if p[0] == "h": hist[int(p[1])] = hist.get(int(p[1]), 0) + int(p[2])
                else: tot[p[0]] += int(p[1])
        key = "%s_%s_" % (phase, kind)
        n = sum(hist.values())
        if not n:
            print(key + "requests\t0"); continue
        def pct(q):
            want, seen = q / 100 * n, 0
            for v in sorted(hist):
                seen += hist[v]
                if seen >= want: return v / 1000
        secs = tot["duration_us"] / 1e6
        print(key + "seconds\t%.0f" % secs)
        print(key + "requests\t%d" % tot["requests"])
        print(key + "rps\t%.0f" % (tot["requests"] / secs))
        print(key + "p50_ms\t%.1f" % pct(50))
        print(key + "p99_ms\t%.1f" % pct(99))
        print(key + "max_ms\t%.1f" % (max(hist) / 1000))
        print(key + "non2xx\t%d" % tot["non2xx"])
        print(key + "socket_errors\t%d" % tot["socket_errors"])
PY
  echo -e "daemon_peak_rss_mib\t$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$bench_pid/status")"
  grep -i "error\|fatal" "$w/hlrs.err" | head -5 >&2 || true
  bench_stop
}

for db in ${dbs//,/ }; do engine "$db"; done
wait
if [ -n "$perf_dir" ]; then report_profiles; fi
