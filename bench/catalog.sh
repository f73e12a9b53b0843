#!/usr/bin/env bash
# Global Files at scale (issue 6): a synthetic catalog shaped like a compound library, through
# a real daemon (`ferry serve` with its API) on 127.0.0.1, on SQLite or PostgreSQL.
#
#   bench/catalog.sh [--files 1000000] [--flat 1000000] [--pool N] [--db sqlite|postgres] [--follow]
#                    [--indexes size,mtime] [--ferry BIN]
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
# whole zinc tree (API: every page, each request's longest time too), a second registration with nothing changed, the daemon's peak
# memory (VmHWM) and the database's size on disk. Prints "key<TAB>value" lines; everything is removed on exit.
# --follow (issue 21, federation): then a second center, wuxi (its own database on the same
# engine), follows hlrs: the time until its mirror lists both datasets (read whole, entries/s);
# then ten files are added to the last zinc tranche (in key order, so that a follower that
# reads the dataset whole in key order sees them only at its end), hlrs registers zinc again, and the time from
# the end of that registration until wuxi's catalog has the tenth new file (the follower's
# sync of a ten-file change in the big dataset); wuxi's ferry_federation_entries_total (rows
# read whole, changed rows and tombstones from the entry feed; a binary from before the feed
# has none) and its peak memory. Both daemons sync every second.
# Search (issue 21 item 4): an exact name and a literal start (100 hits) that the name index
# serves; an infix glob (one hit per tranche) that no index serves; a size bound a fifth of the
# files meet; --newer matching the files of one pool inode (touched a day ahead before the
# registration: FILES/POOL entries). --indexes adds `catalog_indexes` (size, mtime) to the
# daemon (a binary from before them refuses it).
set -euo pipefail
cd "$(dirname "$0")/.."
files=1000000; flat=1000000; pool=0; db=sqlite; follow=0; indexes=""; ferry="$PWD/.build/release/ferry"
while [ $# -gt 0 ]; do
  case "$1" in
    --files) files=$2; shift 2 ;; --flat) flat=$2; shift 2 ;; --pool) pool=$2; shift 2 ;; --db) db=$2; shift 2 ;; --ferry) ferry=$2; shift 2 ;;
    --follow) follow=1; shift ;;
    --indexes) indexes=$2; shift 2 ;;
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
[ "$pool" -gt 0 ] && touch -d "+1 day" "$w/data/pool/b00007"
echo -e "tree_build_s\t$(python3 -c "print('%.1f' % ($(date +%s.%N) - $t0))")"
bench_pki
# --follow: fixed ports, each center the other's [[peer]] (their APIs follow each other).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
hlrs_port=0; hlrs_api_port=0; peer_wuxi=""
if [ "$follow" = 1 ]; then
  hlrs_port=$(free_port); hlrs_api_port=$(free_port); wuxi_port=$(free_port); wuxi_api_port=$(free_port)
  peer_wuxi=$(printf 'sync_seconds = 1\n[[peer]]\nname = "wuxi"\naddress = "127.0.0.1:%s"\napi = "127.0.0.1:%s"' "$wuxi_port" "$wuxi_api_port")
fi
{ bench_header hlrs | sed "s/127.0.0.1:0/127.0.0.1:$hlrs_port/"; cat <<T
[daemon]
database = "$database"
api_listen = "127.0.0.1:$hlrs_api_port"
$([ -n "$indexes" ] && echo "catalog_indexes = [\"${indexes//,/\", \"}\"]")
$peer_wuxi
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
    # A page may be short or empty (the daemon's search budget): every page is followed.
    total, hits, after, longest, requests = 0.0, 0, None, 0.0, 0
    for _ in range(100000):
        extra = {"after": after} if after else {}
        dt, page = get("/api/v1/catalog/find", path="gfs://hlrs/zinc", limit=min(10000, want - hits), **q, **extra)
        total += dt; requests += 1; longest = max(longest, dt)
        hits += len(page["entries"])
        after = page.get("next_after")
        if not page.get("more") or hits >= want:
            break
    return total, hits, longest, requests
def report(key, r):
    dt, n, longest, requests = r
    print("%s_s\t%.3f\n%s_hits\t%d\n%s_requests\t%d\n%s_longest_request_s\t%.3f" % (key, dt, key, n, key, requests, key, longest))
report("find_exact", find(name="H17P020.0001234.smi.gz"))
report("find_prefix", find(name="H17P020.00012*"))
report("find_glob", find(name="*0001234*"))
report("find_size", find(min_size=60000000))
report("find_newer", find(newer=int(time.time()) + 3600))
dt, du = get("/api/v1/catalog/du", path="gfs://hlrs/zinc")
print("du_s\t%.2f\ndu_files\t%d" % (dt, du["files"]))
PY
echo -e "daemon_peak_rss_mib\t$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$daemon_pid/status)"
# The database's size on disk after the registrations: the SQLite file with its WAL, or
# PostgreSQL's pg_database_size (tables, indexes, TOAST).
if [ "$db" = postgres ]; then
  echo -e "database_mib\t$(psql "$database" -Atc 'SELECT pg_database_size(current_database()) / 1048576')"
else
  echo -e "database_mib\t$(cat "$w/$database"* | wc -c | awk '{printf "%.0f", $1 / 1048576}')"
fi
[ "$follow" = 1 ] || exit 0

bench_database "$db"
{ bench_header wuxi | sed "s/127.0.0.1:0/127.0.0.1:$wuxi_port/"; cat <<T
token_issuers = ["pki/hlrs.crt"]
[daemon]
database = "$database"
api_listen = "127.0.0.1:$wuxi_api_port"
sync_seconds = 1
[[peer]]
name = "hlrs"
address = "127.0.0.1:$hlrs_port"
api = "127.0.0.1:$hlrs_api_port"
[[export]]
name = "data"
path = "wuxi-data"
access = "rw"
users = ["*"]
T
} > "$w/wuxi.toml"
mkdir -p "$w/wuxi-data"
t0=$(date +%s.%N)
bench_serve wuxi
wuxi_api=$bench_api; wuxi_pid=$bench_pid
bench_api=$api
# wuxi_wait PATH...: seconds until wuxi's API answers a stat of every gfs:// PATH (polled every
# 0.1 s, one hour at most), counted from $t0.
wuxi_wait() {
  python3 - "$wuxi_api" "$w/token" "$t0" "$@" <<'PY'
import sys, time, urllib.parse, urllib.request, urllib.error
api, tok, t0, paths = sys.argv[1], open(sys.argv[2]).read().strip(), float(sys.argv[3]), sys.argv[4:]
for _ in range(36000):
    try:
        for p in paths:
            r = urllib.request.Request(api + "/api/v1/catalog/stat?" + urllib.parse.urlencode({"path": p}), headers={"Authorization": "Bearer " + tok})
            urllib.request.urlopen(r, timeout=60).read()
        print("%.2f" % (time.time() - t0)); sys.exit(0)
    except urllib.error.HTTPError:
        time.sleep(0.1)
sys.exit("wuxi never saw " + " ".join(paths))
PY
}
first=$(wuxi_wait "gfs://hlrs/zinc" "gfs://hlrs/flat/all/m00000000.mol2")
echo -e "follow_first_s\t$first"
echo -e "follow_first_entries_per_s\t$(python3 -c "print('%.0f' % (($files + $flat) / $first))")"
tranche=$(find "$w/data/zinc" -mindepth 2 -maxdepth 2 -type d | LC_ALL=C sort | tail -1)
for i in $(seq 0 9); do : > "$tranche/new-$i.smi"; done
read -r n s < <(bench_register zinc /data/zinc)
echo -e "reregister_ten_added_s\t$s"
t0=$(date +%s.%N)
change=$(wuxi_wait "gfs://hlrs/zinc/${tranche#"$w/data/zinc/"}/new-9.smi")
echo -e "follow_change_s\t$change"
python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1] + "/metrics", timeout=60).read().decode())' "$wuxi_api" | sed -n 's/^ferry_federation_entries_total{peer="hlrs",how="\([a-z]*\)"} \(.*\)/follow_entries_\1\t\2/p'
echo -e "follower_peak_rss_mib\t$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$wuxi_pid/status)"
