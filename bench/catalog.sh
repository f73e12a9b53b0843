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
# Builds two trees in tmpfs: "zinc", FILES files in tranches by heavy-atom count and logP
# (H04..H30 × P-100..P500, like ZINC's), sizes 1 KiB–64 MiB set with ftruncate (sparse: no
# data is written, the catalog only needs metadata); and "flat", one directory of FLAT entries.
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
w=$(mktemp -d /dev/shm/ferry-catalog-bench.XXXXXX)
pid=""; pg=""
mounted=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true
  [ -n "$mounted" ] && umount "$mounted" 2>/dev/null || true
  [ -n "$pg" ] && scripts/postgres-test.sh stop "$pg" >/dev/null 2>&1 || true
  rm -rf "$w"
}
trap cleanup EXIT
database="catalog.sqlite"
if [ "$db" = postgres ]; then
  pg="/tmp/ferry-catalog-bench-pg.$$"
  base=$(scripts/postgres-test.sh start "$pg")
  database=$(scripts/postgres-test.sh createdb "$base" ferry_catalog)
fi
echo -e "db\t$db"
# The trees live in a tmpfs of their own without an inode limit (/dev/shm allows ~3 M inodes
# here, and the kernel counts hard links against it).
mkdir -p "$w/data"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=16G,nr_inodes=0,mode=0755 ferry-catalog-bench "$w/data"; then mounted="$w/data"; fi
t0=$(date +%s.%N)
python3 - "$w/data" "$files" "$flat" "$pool" <<'PY'
import os, random, sys
root, n, flat, pool = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
random.seed(7)
sizes = (1 << 10, 1 << 16, 1 << 20, 1 << 22, 1 << 26)
base = []
if pool:
    os.makedirs(os.path.join(root, "pool"))
    for k in range(pool):
        p = os.path.join(root, "pool", "b%05d" % k)
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.ftruncate(fd, random.choice(sizes))
        os.close(fd)
        base.append(p)
tranches = ["H%02dP%03d" % (h, p) if p >= 0 else "H%02dM%03d" % (h, -p) for h in range(4, 31) for p in range(-100, 501, 60)]
per = max(1, n // len(tranches))
made = 0
for t in tranches:
    d = os.path.join(root, "zinc", t[:3], t)
    os.makedirs(d, exist_ok=True)
    for i in range(per if t != tranches[-1] else n - made):
        name = os.path.join(d, "%s.%07d.smi.gz" % (t, i))
        if pool:
            os.link(base[made % pool], name)
        else:
            fd = os.open(name, os.O_CREAT | os.O_WRONLY, 0o644)
            os.ftruncate(fd, random.choice(sizes))
            os.close(fd)
        made += 1
d = os.path.join(root, "flat", "all")
os.makedirs(d)
for i in range(flat):
    os.close(os.open(os.path.join(d, "m%08d.mol2" % i), os.O_CREAT | os.O_WRONLY, 0o644))
PY
echo -e "tree_build_s\t$(python3 -c "print('%.1f' % ($(date +%s.%N) - $t0))")"
"$ferry" ca init --dir "$w/pki" >/dev/null
"$ferry" ca issue --dir "$w/pki" --center bench --host 127.0.0.1 >/dev/null
"$ferry" token issue --cert "$w/pki/bench.crt" --key "$w/pki/bench.key" --user bench --scope rw:/ > "$w/token"
cat > "$w/bench.toml" <<T
center = "bench"
run_as = "root"
listen = ["127.0.0.1:0"]
certificate = "pki/bench.crt"
key = "pki/bench.key"
ca = "pki/ca.crt"
[daemon]
database = "$database"
api_listen = "127.0.0.1:0"
[[export]]
name = "data"
path = "data"
access = "rw"
users = ["*"]
T
timeout 7200 "$ferry" serve --config "$w/bench.toml" > "$w/serve.out" 2> "$w/serve.err" & pid=$!
for _ in $(seq 1 200); do grep -q "api listening" "$w/serve.out" && break; sleep 0.1; done
api=$(sed -n 's/.*api listening on //p' "$w/serve.out")
daemon_pid=$(pgrep -P "$pid" -x ferry || echo "$pid")
export FERRY_API="$api" FERRY_TOKEN_FILE="$w/token"
reg() {  # dataset path → "files seconds"
  "$ferry" register --json --dataset "$1" --readers '*' "$2" |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["added"]+s["changed"]+s["unchanged"], s["seconds"])'
}
read -r n s < <(reg zinc /data/zinc)
echo -e "register_zinc_entries\t$n"; echo -e "register_zinc_s\t$s"
echo -e "register_zinc_entries_per_s\t$(python3 -c "print('%.0f' % ($n / $s))")"
read -r n s < <(reg flat /data/flat)
echo -e "register_flat_entries\t$n"; echo -e "register_flat_entries_per_s\t$(python3 -c "print('%.0f' % ($n / $s))")"
read -r n s < <(reg zinc /data/zinc)
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
    dt, page = get("/api/v1/catalog/ls", path="gfs://bench/flat/all", after=after, limit=1000)
    assert len(page["entries"]) == 1000, len(page["entries"])
    lat.append(dt)
lat.sort()
print("page_1000_of_flat_p50_ms\t%.1f" % (lat[len(lat) // 2] * 1000))
print("page_1000_of_flat_p99_ms\t%.1f" % (lat[-1] * 1000))
dt, found = get("/api/v1/catalog/find", path="gfs://bench/zinc", name="*0001234*", limit=100000)
print("find_glob_s\t%.2f\nfind_glob_hits\t%d" % (dt, len(found["entries"])))
dt, found = get("/api/v1/catalog/find", path="gfs://bench/zinc", min_size=60000000, limit=100000)
print("find_size_s\t%.2f\nfind_size_hits\t%d" % (dt, len(found["entries"])))
dt, du = get("/api/v1/catalog/du", path="gfs://bench/zinc")
print("du_s\t%.2f\ndu_files\t%d" % (dt, du["files"]))
PY
echo -e "daemon_peak_rss_mib\t$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$daemon_pid/status)"
