#!/usr/bin/env bash
# Does the packaged binary (Swift runtime linked in, stripped: scripts/package.sh) move bytes as
# fast as the development release build (Swift runtime shared from the toolchain)? Both push
# the same 4 GiB random file over loopback (127.0.0.1) to a server of their own kind, ROUNDS
# times alternating, in tmpfs; prints each run's seconds and the medians. Also each binary's
# size and its start-up time (the median of 50 `ferry --version`).
#
#   bench/static.sh --static BIN --dynamic BIN [--rounds 5] [--size-mib 4096]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5; size=4096; static=""; dynamic=""
while [ $# -gt 0 ]; do
  case "$1" in
    --static) static=$2; shift 2 ;; --dynamic) dynamic=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;; --size-mib) size=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
[ -x "$static" ] && [ -x "$dynamic" ] || { echo "give --static BIN and --dynamic BIN" >&2; exit 64; }
w=$(mktemp -d /dev/shm/ferry-static-bench.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$w"' EXIT
"$dynamic" ca init --dir "$w/pki" >/dev/null
"$dynamic" ca issue --dir "$w/pki" --center bench --host 127.0.0.1 >/dev/null
"$dynamic" token issue --cert "$w/pki/bench.crt" --key "$w/pki/bench.key" --user bench --scope rw:/ --ttl 2h > "$w/token"
head -c "$((size << 20))" /dev/urandom > "$w/src.bin"
startup() {
  python3 - "$1" <<'PY'
import subprocess, sys, time
t = []
for _ in range(50):
    a = time.perf_counter(); subprocess.run([sys.argv[1], "--version"], stdout=subprocess.DEVNULL, check=True); t.append(time.perf_counter() - a)
t.sort(); print("%.1f" % (t[len(t) // 2] * 1000))
PY
}
run() {  # run KIND BIN: one push to a fresh server of that binary; prints seconds
  local kind=$1 bin=$2 root="$w/root-$1"
  rm -rf "$root"; mkdir -p "$root"
  timeout 300 "$bin" serve --root "$root" --listen 127.0.0.1:0 --run-as root --cert "$w/pki/bench.crt" --key "$w/pki/bench.key" --ca "$w/pki/ca.crt" > "$w/serve-$kind.out" 2>/dev/null &
  local pid=$!; pids+=("$pid")
  local addr=""
  for _ in $(seq 1 200); do addr=$(sed -n 's/.* listening on //p' "$w/serve-$kind.out" | head -1); [ -n "$addr" ] && break; sleep 0.05; done
  local t0 t1
  t0=$(date +%s.%N)
  FERRY_CONFIG="" timeout 300 "$bin" cp --ca "$w/pki/ca.crt" --token-file "$w/token" --compress off -q "$w/src.bin" "ferry://$addr/dst.bin"
  t1=$(date +%s.%N)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  cmp -s "$w/src.bin" "$root/dst.bin" || { echo "copy differs ($kind)" >&2; exit 1; }
  rm -f "$root/dst.bin"
  python3 -c "print('%.3f' % ($t1 - $t0))"
}
echo -e "binary\tsize_bytes\tstartup_ms"
echo -e "static\t$(stat -c %s "$static")\t$(startup "$static")"
echo -e "dynamic\t$(stat -c %s "$dynamic")\t$(startup "$dynamic")"
s=(); d=()
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) = 1 ]; then s+=("$(run static "$static")"); d+=("$(run dynamic "$dynamic")")
  else d+=("$(run dynamic "$dynamic")"); s+=("$(run static "$static")"); fi
  echo -e "round $r\tstatic ${s[-1]} s\tdynamic ${d[-1]} s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms=$(median "${s[@]}"); md=$(median "${d[@]}")
echo -e "median\tstatic $ms s ($(python3 -c "print(round($size / $ms))") MiB/s)\tdynamic $md s ($(python3 -c "print(round($size / $md))") MiB/s)"
