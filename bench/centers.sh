# Sourced by bench/daemon.sh, bench/stall.sh, bench/catalog.sh and bench/api.sh: centers on
# loopback (hlrs with a daemon, wuxi a plain transfer server) in the work directory $w, run by
# $ferry; every server's pid goes to `pids`, killed on exit.

# bench_setup NAME DB: a work directory in tmpfs ($w), removed on exit with every server, every
# tmpfs mounted by bench_tmpfs and the throwaway PostgreSQL; $database is the daemon's queue
# (see bench_database; none with DB "").
bench_setup() {
  w=$(mktemp -d "/dev/shm/ferry-$1-bench.XXXXXX")
  bench_name=$1
  pids=()
  pg=""
  mounts=()
  bench_dbs=0
  trap bench_cleanup EXIT
  if [ -n "$2" ]; then bench_database "$2"; fi
}

# bench_database DB: sets $database to a new, empty queue: a SQLite file in $w, or with DB
# "postgres" a new database on a PostgreSQL started by scripts/postgres-test.sh (one server per
# run, started the first time it is needed).
bench_database() {
  bench_dbs=$((bench_dbs + 1))
  if [ "$1" = postgres ]; then
    if [ -z "$pg" ]; then
      pg="/tmp/ferry-$bench_name-bench-pg.$$"
      pg_base=$(scripts/postgres-test.sh start "$pg")
    fi
    database=$(scripts/postgres-test.sh createdb "$pg_base" "ferry_${bench_name}_$bench_dbs")
  else
    database="queue-$bench_dbs.sqlite"
  fi
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || true; done
  [ -n "$pg" ] && scripts/postgres-test.sh stop "$pg" >/dev/null 2>&1 || true
  rm -rf "$w"
}

# bench_tmpfs DIR: as root, DIR becomes a tmpfs of its own without an inode limit (/dev/shm
# allows ~3 M inodes here, and the kernel counts hard links against it), unmounted on exit.
bench_tmpfs() {
  mkdir -p "$1"
  if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=16G,nr_inodes=0,mode=0755 "ferry-$bench_name-bench" "$1"; then mounts+=("$1"); fi
}

# bench_wrk: wrk is installed (Debian's package) or the script stops.
bench_wrk() {
  command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq wrk >/dev/null
}

# A federation CA, certificates of hlrs and wuxi for 127.0.0.1, and an operator token of
# hlrs's in $w/token.
bench_pki() {
  "$ferry" ca init --dir "$w/pki" >/dev/null
  for c in hlrs wuxi; do "$ferry" ca issue --dir "$w/pki" --center $c --host 127.0.0.1 >/dev/null; done
  "$ferry" token issue --cert "$w/pki/hlrs.crt" --key "$w/pki/hlrs.key" --user bench --scope rw:/ > "$w/token"
}

# The lines every center's configuration starts with: its name, root's account, a free port
# on 127.0.0.1, its certificate.
bench_header() {
  printf 'center = "%s"\nrun_as = "root"\nlisten = ["127.0.0.1:0"]\ncertificate = "pki/%s.crt"\nkey = "pki/%s.key"\nca = "pki/ca.crt"\n' "$1" "$1" "$1"
}

# bench_serve NAME: `ferry serve --config $w/NAME.toml` in the background, waited for (20 s at
# most); sets bench_port (its transfer port), with a daemon bench_api (its API URL),
# bench_pid (the server's own pid, for /proc and perf) and bench_job (for bench_stop).
bench_serve() {
  timeout 7200 "$ferry" serve --config "$w/$1.toml" > "$w/$1.out" 2> "$w/$1.err" & pids+=($!)
  bench_job=$!
  local want="listening"
  grep -q '^\[daemon\]' "$w/$1.toml" && want="api listening"
  for _ in $(seq 1 200); do grep -q "$want" "$w/$1.out" && break; sleep 0.1; done
  bench_port=$(grep -o 'listening on [0-9.:]*' "$w/$1.out" | head -1 | grep -o '[0-9]*$')
  bench_api=$(sed -n 's/.*api listening on //p' "$w/$1.out")
  bench_pid=$(pgrep -P "$bench_job" || echo "$bench_job")
}

# bench_stop: stops the server bench_serve started last (timeout passes the signal on; the
# daemon stops within 9 s) and forgets its pid.
bench_stop() {
  kill "$bench_job" 2>/dev/null || true
  wait "$bench_job" 2>/dev/null || true
  local p rest=()
  for p in "${pids[@]}"; do [ "$p" = "$bench_job" ] || rest+=("$p"); done
  pids=("${rest[@]}")
}

# bench_register DATASET PATH: `ferry register` through the daemon at $bench_api, readable by
# everyone; prints "ENTRIES SECONDS" (the daemon's count of added, changed and unchanged entries
# and its own time).
bench_register() {
  FERRY_API="$bench_api" FERRY_TOKEN_FILE="$w/token" "$ferry" register --json --dataset "$1" --readers '*' "$2" |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["added"]+s["changed"]+s["unchanged"], s["seconds"])'
}
