#!/usr/bin/env bash
# A rate-limited link between two network namespaces that this script creates (veth + tbf),
# IPv6 unique-local addresses that exist only inside those namespaces. Measures Ferry's
# goodput on compressible SMILES text with --compress off and auto, at each RATE.
#
#   bench/shaped.sh [--rates "1gbit 5gbit"] [--runs 3] [--data FILE] [--ferry BIN] [--out TSV]
#
# Data: SMILES text from bench/gen_smiles.py, 2 GiB (SMILES_MIB=N to change), or --data FILE.
# Prints a TSV (rate, mode, run, seconds, goodput Gbit/s, wire bytes) and a summary of
# medians to stdout. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
rates="1gbit 5gbit"; runs=3; data=""; ferry="$PWD/.build/release/ferry"; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) rates="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --ferry) ferry="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
[ -x "$ferry" ] || { echo "no ferry binary at $ferry (swift build -c release)" >&2; exit 1; }
work=$(mktemp -d /dev/shm/ferry-shaped.XXXXXX)
A=ferrybenchA$$; B=ferrybenchB$$
cleanup() {
  ip netns pids "$B" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns pids "$A" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "$data" ]; then
  data="$work/smiles.smi"
  python3 bench/gen_smiles.py --size $((${SMILES_MIB:-2048} << 20)) --out "$data" >/dev/null
fi
size=$(stat -c %s "$data")
ip netns add "$A"; ip netns add "$B"
ip link add "va$$" type veth peer name "vb$$"
ip link set "va$$" netns "$A"; ip link set "vb$$" netns "$B"
ip -n "$A" addr add fd77:feee::1/64 dev "va$$" nodad
ip -n "$B" addr add fd77:feee::2/64 dev "vb$$" nodad
ip -n "$A" link set lo up; ip -n "$B" link set lo up
ip -n "$A" link set "va$$" up; ip -n "$B" link set "vb$$" up
"$ferry" ca init --dir "$work/pki" > /dev/null
"$ferry" ca issue --dir "$work/pki" --center b --host fd77:feee::2 > /dev/null
"$ferry" token issue --cert "$work/pki/b.crt" --key "$work/pki/b.key" --user bench --scope rw:/ > "$work/token"
mkdir -p "$work/dst"
ip netns exec "$B" "$ferry" serve --root "$work/dst" --run-as root --listen "[fd77:feee::2]:7700" --cert "$work/pki/b.crt" --key "$work/pki/b.key" --ca "$work/pki/ca.crt" > "$work/serve.out" 2> "$work/serve.err" &
for _ in $(seq 1 100); do grep -q listening "$work/serve.out" && break; sleep 0.1; done
grep -q listening "$work/serve.out" || { echo "server did not start: $(cat "$work/serve.err")" >&2; exit 1; }
printf 'rate\tmode\trun\tseconds\tgoodput_gbps\twire_bytes\n'
results="$work/results.tsv"
for rate in $rates; do
  ip netns exec "$A" tc qdisc replace dev "va$$" root tbf rate "$rate" burst 4mb latency 50ms
  for run in $(seq 1 "$runs"); do
    for mode in ${MODES:-off auto}; do
      rm -f "$work/dst/s.smi"
      line=$(ip netns exec "$A" env ${FERRY_DEBUG_POLICY:+FERRY_DEBUG_POLICY=1} timeout 600 "$ferry" cp --json --compress "$mode" ${PROTECTION:+--protection "$PROTECTION"} --ca "$work/pki/ca.crt" --token-file "$work/token" "$data" "ferry://[fd77:feee::2]:7700/s.smi" | tail -1)
      cmp -s "$data" "$work/dst/s.smi" || { echo "copy differs ($rate $mode)" >&2; exit 1; }
      secs=$(echo "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
      wire=$(echo "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["wire_bytes"])')
      gbps=$(python3 -c "print(round($size*8/$secs/1e9, 3))")
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rate" "$mode" "$run" "$secs" "$gbps" "$wire" | tee -a "$results"
    done
  done
done
[ -n "$out" ] && cp "$results" "$out"
python3 - "$results" <<'PY'
import sys, statistics, collections
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
by = collections.defaultdict(list)
for r in rows: by[(r[0], r[1])].append(float(r[4]))
print("\nmedians (goodput Gbit/s):")
for rate in dict.fromkeys(r[0] for r in rows):
    meds = {m: statistics.median(v) for (r, m), v in by.items() if r == rate}
    line = ", ".join(f"{m} {v:.2f}" for m, v in meds.items())
    if 'off' in meds and 'auto' in meds:
        line += f", auto/off {meds['auto']/meds['off']:.2f}x"
    link = float(rate.rstrip('gbit') or 1) if rate.endswith('gbit') else None
    if link and 'auto' in meds:
        line += f", auto/link {meds['auto']/link:.2f}x"
    print(f"  {rate}: {line}")
PY
