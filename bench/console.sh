#!/usr/bin/env bash
# The web console's speed (issue 15, "Speed"): a real headless Chromium (Tests/console/browser.py)
# against one daemon (center hlrs, release build, SQLite) whose catalog holds ENTRIES files
# (bench/gen_catalog.py: "zinc", hard links to POOL sparse files) and one directory of
# DIR_ENTRIES ("flat"), plus WATCHERS simulated browsers watching live jobs. On 127.0.0.1 only;
# everything in a tmpfs, removed on exit.
#
#   bench/console.sh [--entries 10000000] [--pool 1000] [--dir-entries 1000000] [--watchers 50]
#                    [--seconds 30] [--ferry BIN]
#
# Measures (bench/console.py prints "key<TAB>value" lines):
#   - first paint of each view loaded afresh (overview, files, jobs; signed in): the browser's
#     first-contentful-paint, and the time until the view's table is filled ("ready");
#   - a directory page of 1,000 entries of the flat directory: click on "Next page" to the new
#     rows painted (in the page: performance.now() at the click, a frame after the rows changed),
#     40 pages from the middle of the directory (and, apart, the same request fetched and parsed in
#     the page: the answer's share);
#   - the daemon's CPU with WATCHERS watchers: each, as an open jobs view does, holds one
#     server-sent-events stream per running job shown (10 jobs to wuxi, slowed to run for the
#     whole measure) and reads the job list every 5 s; SECONDS without watchers, then SECONDS
#     with them (the difference is the watchers' cost, in % of one core).
set -euo pipefail
cd "$(dirname "$0")/.."
entries=10000000; pool=1000; dir_entries=1000000; watchers=50; seconds=30; ferry="$PWD/.build/release/ferry"
while [ $# -gt 0 ]; do
  case "$1" in
    --entries) entries=$2; shift 2 ;; --pool) pool=$2; shift 2 ;; --dir-entries) dir_entries=$2; shift 2 ;;
    --watchers) watchers=$2; shift 2 ;; --seconds) seconds=$2; shift 2 ;; --ferry) ferry=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
[ -x "$ferry" ] || { echo "no ferry binary at $ferry (swift build -c release)" >&2; exit 1; }
[ -x /opt/ferry-test-venv/bin/python ] && /opt/ferry-test-venv/bin/python -c "import selenium" 2>/dev/null \
  || { echo "selenium, chromium and chromium-driver are needed: scripts/install-deps.sh --tests" >&2; exit 1; }
. bench/centers.sh
bench_setup console sqlite
cp "$ferry" "$w/ferry"; ferry="$w/ferry"
bench_tmpfs "$w/data"
t0=$(date +%s.%N)
python3 bench/gen_catalog.py "$w/data" "$entries" "$dir_entries" "$pool"
head -c $((64 << 20)) /dev/urandom > "$w/data/big.bin"
echo -e "tree_build_s\t$(python3 -c "print('%.1f' % ($(date +%s.%N) - $t0))")"
bench_pki
mkdir -p "$w/incoming"
{ bench_header wuxi; cat <<T
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
workers = 10
[[peer]]
name = "wuxi"
address = "127.0.0.1:$bport"
[[export]]
name = "data"
path = "data"
access = "rw"
users = ["*"]
T
} > "$w/hlrs.toml"
bench_serve hlrs
[ -n "$bench_api" ] || { echo "the daemon did not start:" >&2; cat "$w/hlrs.err" >&2; exit 1; }
echo -e "entries\t$entries\ndir_entries\t$dir_entries"
read -r n s < <(bench_register zinc /data/zinc)
echo -e "zinc_entries\t$n\nzinc_register_s\t$s"
read -r n s < <(bench_register flat /data/flat)
echo -e "flat_entries\t$n\nflat_register_s\t$s"
echo -e "loadavg_at_start\t$(cut -d' ' -f1-3 /proc/loadavg)"
/opt/ferry-test-venv/bin/python bench/console.py "$bench_api" "$w/token" "$bench_pid" "$watchers" "$seconds" "$dir_entries"
