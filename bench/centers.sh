# Sourced by bench/daemon.sh and bench/stall.sh: two centers on loopback (hlrs with a daemon,
# wuxi a plain transfer server) in the work directory $w, run by $ferry; every server's pid
# goes to `pids`, killed on exit.

# bench_setup NAME DB: a work directory in tmpfs ($w), removed on exit with every server and
# the throwaway PostgreSQL; $database is the daemon's queue (a SQLite file, or with DB
# "postgres" a new database on a PostgreSQL started by scripts/postgres-test.sh).
bench_setup() {
  w=$(mktemp -d "/dev/shm/ferry-$1-bench.XXXXXX")
  pids=()
  pg=""
  trap bench_cleanup EXIT
  database="jobs.sqlite"
  if [ "$2" = postgres ]; then
    pg="/tmp/ferry-$1-bench-pg.$$"
    local base
    base=$(scripts/postgres-test.sh start "$pg")
    database=$(scripts/postgres-test.sh createdb "$base" "ferry_$1")
  fi
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  [ -n "$pg" ] && scripts/postgres-test.sh stop "$pg" >/dev/null 2>&1 || true
  rm -rf "$w"
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

# bench_serve NAME: `ferry serve --config $w/NAME.toml` in the background, waited for (10 s at
# most); sets bench_port (its transfer port) and, with a daemon, bench_api (its API URL).
bench_serve() {
  timeout 3600 "$ferry" serve --config "$w/$1.toml" > "$w/$1.out" 2> "$w/$1.err" & pids+=($!)
  local want="listening"
  grep -q '^\[daemon\]' "$w/$1.toml" && want="api listening"
  for _ in $(seq 1 100); do grep -q "$want" "$w/$1.out" && break; sleep 0.1; done
  bench_port=$(grep -o 'listening on [0-9.:]*' "$w/$1.out" | head -1 | grep -o '[0-9]*$')
  bench_api=$(sed -n 's/.*api listening on //p' "$w/$1.out")
}
