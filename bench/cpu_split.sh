#!/usr/bin/env bash
# bench/cpu_split.sh — where a stall.sh run's cores go: the CPU of the API daemon (the "hlrs"
# center of bench/stall.sh), of every PostgreSQL process, and of the load generator
# (bench/stall.py), from /proc/PID/stat, between AFTER and AFTER+FOR seconds from now. Run it
# in the background beside bench/stall.sh (issue 14: the 1,000-hook bar's arithmetic):
#
#   bench/cpu_split.sh 15 20 > cpu.txt & bench/stall.sh --db postgres --hooks 1000 ... --seconds 40; wait; cat cpu.txt
#
# Prints "daemon_cores X postgres_cores Y loadgen_cores Z" (cores busy on average over the
# window). Processes that start or end inside the window are counted from their first or to
# their last sample only.
set -u
after=${1:?AFTER seconds}; for=${2:?FOR seconds}
sleep "$after"
tick=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
snap() {
    local d=0 p=0 g=0 pid
    for pid in $(pgrep -f "serve --config .*hlrs.toml"); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = ferry ] && d=$((d + $(ticks "$pid")))
    done
    for pid in $(pgrep -x postgres); do p=$((p + $(ticks "$pid"))); done
    for pid in $(pgrep -f "bench/stall.py"); do g=$((g + $(ticks "$pid"))); done
    echo "$d $p $g"
}
read -r d0 p0 g0 < <(snap)
sleep "$for"
read -r d1 p1 g1 < <(snap)
awk -v t="$tick" -v s="$for" -v d=$((d1 - d0)) -v p=$((p1 - p0)) -v g=$((g1 - g0)) \
    'BEGIN { printf "daemon_cores %.2f postgres_cores %.2f loadgen_cores %.2f\n", d / t / s, p / t / s, g / t / s }'
