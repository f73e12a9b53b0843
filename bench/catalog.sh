#!/usr/bin/env bash
# Global Files at scale (issue 6): a synthetic catalog shaped like a compound library, through
# a real daemon (`ferry serve` with its API) on 127.0.0.1, on SQLite or PostgreSQL.
#
#   bench/catalog.sh [--files 1000000] [--flat 1000000] [--pool N] [--db sqlite|postgres] [--ferry BIN]
#
# --pool N: the zinc files are hard links to N sparse files of the same size classes (a tree of
# 10 million entries then costs dentries only: about 2.5 GB of tmpfs metadata instead of 10 GB
# of inodes). The catalog sees the same thing: every entry is stat'ed and recorded.
#
# Builds two trees (bench/gen_catalog.py) in a tmpfs of its own: "zinc", FILES files in tranches
# by heavy-atom count and logP (H04..H30 × P-100..P500, like ZINC's), sizes 1 KiB–64 MiB set with
# ftruncate (sparse: no data is written, the catalog only needs metadata); and "flat", one
# directory of FLAT entries.
# Measures: registration (files/s, `ferry register`), one page of 1,000 entries in the middle
# of the flat directory (median and p99 of 50 API calls), `find` by glob and by size over the
# whole zinc tree (API), a second registration with nothing changed, and the daemon's peak
# memory (VmHWM). Prints "key<TAB>value" lines; everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
files=1000000; flat=1000000; pool=0; db=sqlite; ferry="$PWD/.build/release/ferry"
while [ $# -gt 0 ]; do
  case "$1" in
    --files) files=$2; shift 2 ;; --flat) flat=$2; shift 2 ;; --pool) pool=$2; shift 2 ;; --db) db=$2; shift 2 ;; --ferry) ferry=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
[ -x "$ferry" ] || { echo "no ferry binary at $ferry (swift build -c release)" >&2; exit 1; }
. bench/centers.sh
bench_setup catalog "$db"
echo -e "db\t$db"
bench_tmpfs "$w/data"
t0=$(date +%s.%N)
python3 bench/gen_catalog.py "$w/data" "$files" "$flat" "$pool"
echo -e "tree_build_s\t$(python3 -c "print('%.1f' % ($(date +%s.%N) - $t0))")"
bench_pki
{ bench_header hlrs; cat <<T
[daemon]
database = "$database"
api_listen = "127.0.0.1:0"
[[export]]
name = "data"
path = "data"
access = "rw"
users = ["*"]
T
} > "$w/hlrs.toml"
bench_serve hlrs
api=$bench_api
daemon_pid=$bench_pid
read -r n s < <(bench_register zinc /data/zinc)
echo -e "register_zinc_entries\t$n"; echo -e "register_zinc_s\t$s"
echo -e "register_zinc_entries_per_s\t$(python3 -c "print('%.0f' % ($n / $s))")"
read -r n s < <(bench_register flat /data/flat)
echo -e "register_flat_entries\t$n"; echo -e "register_flat_entries_per_s\t$(python3 -c "print('%.0f' % ($n / $s))")"
read -r n s < <(bench_register zinc /data/zinc)
echo -e "reregister_unchanged_entries_per_s\t$(python3 -c "print('%.0f' % ($n / $s))")"
python3 - "$api" "$w/token" "$flat" <<'PY'
import json, sys, time, urllib.parse, urllib.request
api, tok, flat = sys.argv[1], open(sys.argv[2]).read().strip(), int(sys.argv[3])
def get(route, **q):
    url = api + route + "?" + urllib.parse.urlencode(q)
    r = urllib.request.Request(url, headers={"Authorization": "Bearer " + tok})
    a = time.perf_counter()
    with urllib.request.urlopen(r, timeout=600) as resp:
        body = json.loads(resp.read())
    return time.perf_counter() - a, body
lat = []
for k in range(50):
    after = "m%08d.mol2" % ((flat // 2) + k * 997 % (flat // 3))
    dt, page = get("/api/v1/catalog/ls", path="gfs://hlrs/flat/all", after=after, limit=1000)
    assert len(page["entries"]) == 1000, len(page["entries"])
    lat.append(dt)
lat.sort()
print("page_1000_of_flat_p50_ms\t%.1f" % (lat[len(lat) // 2] * 1000))
print("page_1000_of_flat_p99_ms\t%.1f" % (lat[-1] * 1000))
def find(want=100000, **q):
    # Pages of at most 10,000 (the contract's limit), following next_after, up to `want` hits.
    total, hits, after = 0.0, 0, None
    for _ in range(want // 10000 + 1):
        extra = {"after": after} if after else {}
        dt, page = get("/api/v1/catalog/find", path="gfs://hlrs/zinc", limit=min(10000, want - hits), **q, **extra)
        total += dt
        hits += len(page["entries"])
        after = page.get("next_after")
        if not page.get("more") or hits >= want:
            break
    return total, hits
dt, n = find(name="*0001234*")
print("find_glob_s\t%.2f\nfind_glob_hits\t%d" % (dt, n))
dt, n = find(min_size=60000000)
print("find_size_s\t%.2f\nfind_size_hits\t%d" % (dt, n))
dt, du = get("/api/v1/catalog/du", path="gfs://hlrs/zinc")
print("du_s\t%.2f\ndu_files\t%d" % (dt, du["files"]))
PY
echo -e "daemon_peak_rss_mib\t$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$daemon_pid/status)"
