#!/usr/bin/env bash
# Striping across a center's transfer nodes (issue 19, docs/STRIPING.md step 10): two centers of
# N nodes each, every node in a network namespace of its own, linked through one bridge
# namespace by a veth pair shaped with tbf on both ends (RATE per node link). hlrs's nodes run
# `ferry serve --config` with a [daemon] on one PostgreSQL (its Unix socket: a pathname socket
# crosses namespaces) and share one export directory; wuxi's nodes are transfer servers over one
# directory. Each round pushes one big file and one tree through hlrs's daemon as a striped job
# and as a whole job (`--no-stripe`), in turn, and checks the copies byte for byte.
#
#   bench/striped.sh [--nodes 3] [--rate 1gbit] [--size-mib 6144] [--files 30000] [--file-kib 32]
#                    [--runs 3] [--range-mib 256] [--group-files 1000] [--protection private] [--ferry BIN] [--out TSV]
#                    [--kill source,dest] [--kill-runs 1] [--check] [--what file,tree] [--modes stripe,no-stripe]
#                    [--mtu 1500] [--timeline] [--logs DIR]
#
# Prints a TSV (round, what, mode, seconds, goodput Gbit/s, goodput / (nodes × rate)) and the
# medians. `--kill`: after those rounds, the big file is pushed striped again and, once half
# its bytes are in (the queue's count: parts done, and what running parts last reported), one
# node is killed with -9: a2 of hlrs (`source`) or b2 of wuxi (`dest`), while it runs a part.
# The copy must complete byte-identical with no helper file left; the bytes resent are what
# wuxi's links received beyond an undisturbed striped run's median, set against the killed
# node's unfinished parts (their bytes not yet done, as the queue last knew them). The node is
# started again before the next round. Every round checks the copy byte for byte and that no
# helper file is left. `--check` (scripts/test.sh runs a small version): no whole-job rounds,
# and the run fails unless the striped file's parts ran on every node of hlrs and every kill
# resent at most the killed node's unfinished parts; speed is not judged.
# `--what` and `--modes` pick the rounds' jobs; `--mtu` sets the node links' MTU (1500, the
# default, or 9000: the jumbo frames of a Science DMZ's DTNs); `--timeline` samples the queue
# every 20 ms during each striped job (one psql session) and prints, on stderr, when its parts
# started, when the last was claimed and done, and when the job ended, from the submit;
# `--logs DIR` keeps the nodes' output there.
# Needs root (namespaces), PostgreSQL (scripts/postgres-test.sh) and a release build.
# Only addresses inside the namespaces it creates are used; everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=3; rate=1gbit; size_mib=6144; files=30000; file_kib=32; runs=3; protection=private; range_mib=256; group_files=1000
ferry="$PWD/.build/release/ferry"; out=""; kills=""; kill_runs=1; check=""
whats="file,tree"; modes="stripe,no-stripe"; mtu=1500; timeline=""; logs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --size-mib) size_mib="$2"; shift 2 ;;
    --files) files="$2"; shift 2 ;;
    --file-kib) file_kib="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --range-mib) range_mib="$2"; shift 2 ;;
    --group-files) group_files="$2"; shift 2 ;;
    --protection) protection="$2"; shift 2 ;;
    --ferry) ferry="$2"; shift 2 ;;
    --out) case "$2" in /*) out="$2" ;; *) out="$OLDPWD/$2" ;; esac; shift 2 ;;
    --kill) kills="$2"; shift 2 ;;
    --kill-runs) kill_runs="$2"; shift 2 ;;
    --check) check=1; shift ;;
    --what) whats="$2"; shift 2 ;;
    --modes) modes="$2"; shift 2 ;;
    --mtu) mtu="$2"; shift 2 ;;
    --timeline) timeline=1; shift ;;
    --logs) case "$2" in /*) logs="$2" ;; *) logs="$OLDPWD/$2" ;; esac; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
[ -x "$ferry" ] || { echo "no ferry binary at $ferry (swift build -c release)" >&2; exit 1; }
[ "$nodes" -ge 2 ] && [ "$nodes" -le 9 ] || { echo "--nodes is 2 to 9" >&2; exit 64; }
case "$mtu" in 1500|9000) ;; *) echo "--mtu is 1500 or 9000" >&2; exit 64 ;; esac
for w in ${whats//,/ }; do case "$w" in file|tree) ;; *) echo "--what takes file and/or tree" >&2; exit 64 ;; esac; done
for m in ${modes//,/ }; do case "$m" in stripe|no-stripe) ;; *) echo "--modes takes stripe and/or no-stripe" >&2; exit 64 ;; esac; done
if [ -n "$kills" ]; then case ",$whats," in *,file,*) ;; *) echo "--kill needs the file rounds (--what file)" >&2; exit 64 ;; esac
  case ",$modes," in *,stripe,*) ;; *) echo "--kill needs the striped rounds (--modes stripe)" >&2; exit 64 ;; esac; fi
case "$rate" in *gbit) rate_gbps=${rate%gbit} ;; *mbit) rate_gbps=$(python3 -c "print(${rate%mbit}/1000)") ;; *) echo "--rate is Ngbit or Nmbit" >&2; exit 64 ;; esac
work=$(mktemp -d /dev/shm/ferry-striped.XXXXXX)
chmod 755 "$work"   # the PostgreSQL server (user postgres) keeps its data and socket in it
tag=$(( $$ % 100000 ))
R="fs$tag-r"
names=(); for i in $(seq 1 "$nodes"); do names+=("a$i"); done; for i in $(seq 1 "$nodes"); do names+=("b$i"); done
cleanup() {
  if [ -n "$logs" ]; then mkdir -p "$logs" && cp "$work"/*.out "$work"/*.err "$logs"/ 2>/dev/null || true; fi
  for n in "${names[@]}"; do
    ip netns pids "fs$tag-$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "fs$tag-$n" 2>/dev/null || true
  done
  ip netns del "$R" 2>/dev/null || true
  scripts/postgres-test.sh stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
addr() { echo "fd77:5717::$1"; }   # a1, b2, ... are hexadecimal digits

# The links: one bridge, one shaped veth pair per node.
ip netns add "$R"
ip -n "$R" link set lo up
ip -n "$R" link add br0 type bridge
ip -n "$R" link set br0 up
for n in "${names[@]}"; do
  ns="fs$tag-$n"
  ip netns add "$ns"
  ip link add "v$tag$n" type veth peer name "w$tag$n"
  ip link set "v$tag$n" netns "$ns"
  ip link set "w$tag$n" netns "$R"
  ip -n "$R" link set "w$tag$n" mtu "$mtu"
  ip -n "$R" link set "w$tag$n" master br0
  ip -n "$R" link set "w$tag$n" up
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "v$tag$n" mtu "$mtu"
  ip -n "$ns" addr add "$(addr "$n")/64" dev "v$tag$n" nodad
  ip -n "$ns" link set "v$tag$n" up
  ip netns exec "$ns" tc qdisc replace dev "v$tag$n" root tbf rate "$rate" burst 4mb latency 50ms
  ip netns exec "$R" tc qdisc replace dev "w$tag$n" root tbf rate "$rate" burst 4mb latency 50ms
done

# The queue: one PostgreSQL, reached by every hlrs node through its Unix socket.
tcp_url=$(scripts/postgres-test.sh start "$work/pg")
db_tcp=$(scripts/postgres-test.sh createdb "$tcp_url" striped)
port=$(echo "$db_tcp" | sed -E 's|.*:([0-9]+)/.*|\1|')
sockdir=$(psql "$db_tcp" -Atc "SHOW unix_socket_directories" | cut -d, -f1)
db_sock="postgres://ferry@:$port/striped?host=$sockdir"

# Certificates, a token, the configurations.
"$ferry" ca init --dir "$work/pki" > /dev/null
hosts_a=(); hosts_b=(); nodes_b=()
for i in $(seq 1 "$nodes"); do
  hosts_a+=(--host "$(addr "a$i")"); hosts_b+=(--host "$(addr "b$i")"); nodes_b+=("\"[$(addr "b$i")]:7700\"")
done
"$ferry" ca issue --dir "$work/pki" --center hlrs "${hosts_a[@]}" > /dev/null
"$ferry" ca issue --dir "$work/pki" --center wuxi "${hosts_b[@]}" > /dev/null
"$ferry" token issue --cert "$work/pki/hlrs.crt" --key "$work/pki/hlrs.key" --user bench --scope rw:/ > "$work/token"
mkdir -p "$work/A" "$work/B"
cat > "$work/wuxi.toml" <<EOF
center = "wuxi"
run_as = "root"
certificate = "pki/wuxi.crt"
key = "pki/wuxi.key"
ca = "pki/ca.crt"
[[export]]
name = "in"
path = "B"
access = "rw"
users = ["center:hlrs"]
EOF
for i in $(seq 1 "$nodes"); do
  cat > "$work/hlrs-a$i.toml" <<EOF
center = "hlrs"
run_as = "root"
certificate = "pki/hlrs.crt"
key = "pki/hlrs.key"
ca = "pki/ca.crt"
[daemon]
database = "$db_sock"
api_listen = "[::1]:7480"
workers = 3
per_peer = 32
lease_seconds = 20
node = "a$i"
nodes = $nodes
stripe_threshold = "1T"
stripe_range = "${range_mib}M"
stripe_files = $group_files
stripe_group = "${range_mib}M"
per_node = 2
[[peer]]
name = "wuxi"
address = "[$(addr b1)]:7700"
nodes = [$(IFS=,; echo "${nodes_b[*]}")]
[[export]]
name = "data"
path = "A"
access = "rw"
users = ["*"]
EOF
done
start_node() {  # NAME CONFIG
  : > "$work/$1.out"
  ip netns exec "fs$tag-$1" "$ferry" serve --config "$2" --listen "[$(addr "$1")]:7700" > "$work/$1.out" 2> "$work/$1.err" &
  for _ in $(seq 1 200); do grep -q "listening on" "$work/$1.out" && return 0; sleep 0.1; done
  echo "node $1 did not start: $(cat "$work/$1.err")" >&2; exit 1
}
for i in $(seq 1 "$nodes"); do start_node "b$i" "$work/wuxi.toml"; done
for i in $(seq 1 "$nodes"); do start_node "a$i" "$work/hlrs-a$i.toml"; done
for _ in $(seq 1 100); do grep -q "api listening" "$work/a1.out" && break; sleep 0.1; done

# The data: one big file and one tree, on hlrs's shared directory.
head -c $((size_mib << 20)) /dev/urandom > "$work/A/big.bin"
python3 - "$work/A/tree" "$files" "$file_kib" <<'PY'
import os, sys
root, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i % 300))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(os.urandom(max(1, (kib * 1024 * (i % 7 + 1)) // 4)))
PY
tree_bytes=$(du -sb --apparent-size "$work/A/tree" | cut -f1)
big_bytes=$((size_mib << 20))

# Bytes wuxi's node links received so far (their veth counters outlive a killed process).
rx_bytes() {
  local sum=0 i
  for i in $(seq 1 "$nodes"); do sum=$((sum + $(ip netns exec "fs$tag-b$i" cat "/sys/class/net/v${tag}b$i/statistics/rx_bytes"))); done
  echo "$sum"
}
api() { ip netns exec "fs$tag-a1" "$ferry" jobs "$@" --api "http://[::1]:7480" --token-file "$work/token" --ca "$work/pki/ca.crt"; }
results="$work/results.tsv"
printf 'round\twhat\tmode\tseconds\tgoodput_gbps\tof_nodes_x_link\n'
# The queue every 20 ms during a striped job (bounded: 90,000 samples, 30 minutes), from one
# psql session: prints when the parts started and ended, relative to T0.
timeline_start() {  # JOB
  python3 - "$1" <<'PY' | psql "$db_tcp" -Atq -F ' ' > "$work/timeline" 2>/dev/null &
import sys
job = sys.argv[1]
try:
  for _ in range(90000):
    print(f"SELECT extract(epoch FROM clock_timestamp()), (SELECT state FROM jobs WHERE id = {job}), "
          f"COUNT(*) FILTER (WHERE state = 'queued'), COUNT(*) FILTER (WHERE state = 'running'), "
          f"COUNT(*) FILTER (WHERE state = 'success'), COUNT(*) FROM job_parts WHERE job = {job};")
    print("SELECT pg_sleep(0.02);", flush=True)
except BrokenPipeError:
  pass
PY
  timeline_pid=$!
}
timeline_report() {  # T0 T1 SUBMITTED
  kill "$timeline_pid" 2>/dev/null || true; wait "$timeline_pid" 2>/dev/null || true
  python3 - "$work/timeline" "$1" "$2" "$3" <<'PY' >&2
import sys
t0, t1 = float(sys.argv[2]), float(sys.argv[3])
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 6]
def first(pred):
    for r in rows:
        if pred(r): return f"{float(r[0]) - t0:.2f}"
    return "-"
def last(pred):
    for r in reversed(rows):
        if pred(r): return f"{float(r[0]) - t0:.2f}"
    return "-"
n = max((int(r[5]) for r in rows), default=0)
import datetime
print(f"  timeline: t0 {datetime.datetime.fromtimestamp(t0, datetime.timezone.utc).strftime('%H:%M:%S.%f')[:-3]}, submitted {float(sys.argv[4]) - t0:.2f} s, planned {first(lambda r: int(r[5]) > 0)} s ({n} parts), first running {first(lambda r: int(r[3]) > 0)}, "
      f"last claimed {first(lambda r: int(r[5]) > 0 and int(r[2]) == 0)}, parts done {first(lambda r: int(r[5]) > 0 and int(r[4]) == int(r[5]))}, "
      f"job ended {first(lambda r: r[1] in ('success', 'failed'))}, wait returned {t1 - t0:.2f}")
PY
}
for round in $(seq 1 "$runs"); do
  for what in ${whats//,/ }; do
    for mode in ${modes//,/ }; do
      [ -n "$check" ] && [ "$mode" = no-stripe ] && continue
      find "$work/B" -mindepth 1 -delete
      if [ "$what" = file ]; then src=/data/big.bin; dst=ferry://wuxi/in/big.bin; flags=(); bytes=$big_bytes
      else src=/data/tree; dst=ferry://wuxi/in/tree; flags=(-r); bytes=$tree_bytes; fi
      rx0=$(rx_bytes)
      t0=$(date +%s.%N)
      id=$(api submit --json "--$mode" --protection "$protection" --compress off "${flags[@]}" "$src" "$dst" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().split("\n")[-1])["id"])')
      ts=$(date +%s.%N)
      [ -n "$timeline" ] && [ "$mode" = stripe ] && timeline_start "$id"
      api wait "$id" --timeout 3600 > /dev/null 2>&1 || { echo "job $id ($what, $mode) failed: $(api show "$id")" >&2; exit 1; }
      t1=$(date +%s.%N)
      [ -n "$timeline" ] && [ "$mode" = stripe ] && timeline_report "$t0" "$t1" "$ts"
      [ "$what" = file ] && [ "$mode" = stripe ] && echo $(( $(rx_bytes) - rx0 )) >> "$work/rx-stripe"
      if [ "$what" = file ]; then cmp -s "$work/A/big.bin" "$work/B/big.bin" || { echo "big.bin differs ($mode)" >&2; exit 1; }
      else diff -rq "$work/A/tree" "$work/B/tree" > /dev/null || { echo "tree differs ($mode)" >&2; exit 1; }; fi
      left=$(find "$work/B" -name '*.ferry-*' -print -quit)
      [ -z "$left" ] || { echo "helper files left ($what, $mode): $left" >&2; exit 1; }
      # Where the parts ran: this center's node, the peer's node, how many (on stderr).
      [ "$mode" = stripe ] && psql "$db_tcp" -Atc "SELECT node, peer_node, COUNT(*) FROM job_parts WHERE job = $id GROUP BY 1, 2 ORDER BY 1, 2" | tr '\n' ' ' | sed 's/^/  parts: /' >&2 && echo >&2
      if [ -n "$check" ] && [ "$mode" = stripe ] && [ "$what" = file ]; then
        ran_on=$(psql "$db_tcp" -Atc "SELECT COUNT(DISTINCT node) FROM job_parts WHERE job = $id")
        [ "$ran_on" -eq "$nodes" ] || { echo "check: the striped file's parts ran on $ran_on of hlrs's $nodes nodes" >&2; exit 1; }
      fi
      python3 - "$round" "$what" "$mode" "$t0" "$t1" "$bytes" "$nodes" "$rate_gbps" <<'PY' | tee -a "$results"
import sys
r, what, mode, t0, t1, b, n, g = sys.argv[1:]
s = float(t1) - float(t0)
gbps = int(b) * 8 / s / 1e9
print(f"{r}\t{what}\t{mode}\t{s:.2f}\t{gbps:.3f}\t{gbps / (int(n) * float(g)):.3f}")
PY
    done
  done
done
# Kills halfway: the big file, striped, one node killed with -9.
if [ -n "$kills" ]; then
  rx_base=$(python3 -c "import statistics,sys; print(int(statistics.median(int(l) for l in open(sys.argv[1]))))" "$work/rx-stripe")
  printf '\nkill\tround\tvictim\tseconds\tidentical\tresent_MiB\tunfinished_MiB\tvictim_parts\n'
  for victim_side in ${kills//,/ }; do
    case "$victim_side" in
      source) victim=a2; config="$work/hlrs-a2.toml"; where="node = 'a2'" ;;
      dest) victim=b2; config="$work/wuxi.toml"; where="peer_node = '[$(addr b2)]:7700'" ;;
      *) echo "--kill takes source and/or dest" >&2; exit 64 ;;
    esac
    for round in $(seq 1 "$kill_runs"); do
      find "$work/B" -mindepth 1 -delete
      rx0=$(rx_bytes)
      t0=$(date +%s.%N)
      id=$(api submit --json --stripe --protection "$protection" --compress off /data/big.bin ferry://wuxi/in/big.bin | python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().split("\n")[-1])["id"])')
      # Half the bytes in, and the victim running a part with bytes left (bounded: 3,000
      # readings, about 6 minutes).
      at_kill=""
      for _ in $(seq 1 3000); do
        at_kill=$(psql "$db_tcp" -Atc "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM job_parts WHERE job = $id AND state IN ('queued', 'running')) AND EXISTS (SELECT 1 FROM job_parts WHERE job = $id) THEN 'over'
                                               WHEN (SELECT 2 * SUM(CASE WHEN state = 'success' THEN bytes_total ELSE bytes END) >= SUM(bytes_total) FROM job_parts WHERE job = $id)
                                               THEN (SELECT COUNT(*) || ' ' || COALESCE(SUM(bytes_total - bytes), 0) FROM job_parts WHERE job = $id AND state = 'running' AND $where) END")
        case "$at_kill" in ""|*" 0") sleep 0.1 ;; *) break ;; esac
      done
      case "$at_kill" in ""|*" 0"|over) echo "job $id: never half done with $victim running a part ($at_kill)" >&2; exit 1 ;; esac
      ip netns pids "fs$tag-$victim" | xargs -r kill -9
      # A part the victim claimed between that reading and the kill is one of its unfinished
      # parts too: the larger of the two readings (a source's parts stay `running` until their
      # lease is taken back; a destination's go back to the queue as their senders notice).
      after=$(psql "$db_tcp" -Atc "SELECT COUNT(*) || ' ' || COALESCE(SUM(bytes_total - bytes), 0) FROM job_parts WHERE job = $id AND state = 'running' AND $where")
      [ "${after#* }" -gt "${at_kill#* }" ] && at_kill=$after
      api wait "$id" --timeout 3600 > /dev/null 2>&1 || { echo "job $id (kill $victim_side) failed: $(api show "$id")" >&2; exit 1; }
      t1=$(date +%s.%N)
      identical=yes; cmp -s "$work/A/big.bin" "$work/B/big.bin" || identical=NO
      rx=$(( $(rx_bytes) - rx0 ))
      python3 - "$victim_side" "$round" "$victim" "$t0" "$t1" "$identical" "$rx" "$rx_base" $at_kill <<'PY' | tee -a "$work/kills.tsv"
import sys
side, r, victim, t0, t1, ident, rx, base, parts, unfinished = sys.argv[1:]
print(f"{side}\t{r}\t{victim}\t{float(t1) - float(t0):.1f}\t{ident}\t{(int(rx) - int(base)) / 2**20:.1f}\t{int(unfinished) / 2**20:.1f}\t{parts}")
PY
      [ "$identical" = yes ] || { echo "big.bin differs after the kill of $victim" >&2; exit 1; }
      left=$(find "$work/B" -name '*.ferry-*' -print -quit)
      [ -z "$left" ] || { echo "helper files left after the kill of $victim: $left" >&2; exit 1; }
      if [ -n "$check" ]; then
        python3 - "$work/kills.tsv" <<'PY' || { echo "check: the kill of $victim resent more than its unfinished parts" >&2; exit 1; }
import sys
last = open(sys.argv[1]).read().strip().split("\n")[-1].split("\t")
sys.exit(0 if float(last[5]) <= float(last[6]) else 1)
PY
      fi
      start_node "$victim" "$config"
    done
  done
fi
[ -n "$out" ] && cp "$results" "$out"
python3 - "$results" "$nodes" "$rate" <<'PY'
import sys, statistics, collections
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
by = collections.defaultdict(list)
for r in rows: by[(r[1], r[2])].append((float(r[4]), float(r[5])))
print(f"\nmedians ({sys.argv[2]} nodes per center, {sys.argv[3]} per node link):")
for (what, mode), v in sorted(by.items()):
    print(f"  {what} {mode}: {statistics.median(x[0] for x in v):.2f} Gbit/s, {statistics.median(x[1] for x in v):.2f} x (nodes x link)")
PY
