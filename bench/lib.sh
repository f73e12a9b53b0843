# Shared by bench/ab.sh, bench/ranges.sh and bench/syscalls.sh (sourced): one file pushed to a fresh local
# `ferry serve` per run. Expects SRC, DST and FERRY set; `bench_setup NAME` checks them, makes
# the work directory P (removed on exit, with any server still running), a CA, the center
# "bench" on 127.0.0.1 and a token; `bench_serve [SERVE OPTIONS]` empties DST, starts a server
# on it (SERVER: its pid, PORT: its port) and waits for it to listen; `cpu PID` is the
# process's user + system CPU in clock ticks, its children's included.

bench_setup() {
    local name=$1
    [ -n "$DST" ] && DST=$(realpath -m "$DST")  # "/dev/shm/" and "//" are the directories they name
    [ -e "$SRC" ] && [ -n "$DST" ] || { echo "bench/$name.sh: --src FILE|DIR and --dst DIR are required" >&2; exit 2; }
    case $DST in /|/tmp|/var|/var/tmp|/dev/shm|/home|/root|"$HOME") echo "bench/$name.sh: --dst must be a directory of its own" >&2; exit 2 ;; esac
    FERRY=$(readlink -f "$FERRY")
    P=$(mktemp -d "/tmp/ferry-$name.XXXXXX")
    SERVER=""
    trap 'if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null; fi; rm -rf "$P"' EXIT
    "$FERRY" ca init --dir "$P" >/dev/null
    "$FERRY" ca issue --dir "$P" --center bench --host 127.0.0.1 >/dev/null
    "$FERRY" token issue --cert "$P/bench.crt" --key "$P/bench.key" --user alice --scope rw:/ --ttl 24h >"$P/token"
}

bench_serve() {
    rm -rf "$DST"; mkdir -p "$DST"
    # Removed first: the shell truncates it in the background child, possibly after the wait
    # below has read the previous server's port from it.
    rm -f "$P/serve.out" "$P/serve.err"
    "$FERRY" serve --root "$DST" --run-as root "$@" --listen 127.0.0.1:0 --cert "$P/bench.crt" --key "$P/bench.key" --ca "$P/ca.crt" >"$P/serve.out" 2>"$P/serve.err" &
    SERVER=$!
    PORT=""
    local i
    for i in $(seq 1 100); do
        PORT=$(grep -m1 -oE 'listening on 127\.0\.0\.1:[0-9]+' "$P/serve.out" 2>/dev/null | sed 's/.*://' || true)
        [ -n "$PORT" ] && break
        sleep 0.1
    done
    [ -n "$PORT" ] || { echo "ferry serve did not start: $(tail -c 300 "$P/serve.err")" >&2; exit 1; }
}

cpu() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat"; }
