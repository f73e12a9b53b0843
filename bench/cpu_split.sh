#!/usr/bin/env bash
# bench/cpu_split.sh — where a stall.sh run's cores go: the CPU of the API daemon (the "hlrs"
# center of bench/stall.sh), of every PostgreSQL process, and of the load generator
# (bench/stall.py), from /proc/PID/stat, between AFTER and AFTER+FOR seconds from now. Run it
# in the background beside bench/stall.sh (issue 14: the 1,000-hook bar's arithmetic):
#
#   bench/cpu_split.sh 15 20 > cpu.txt & bench/stall.sh --db postgres --hooks 1000 ... --seconds 40; wait; cat cpu.txt
#
# Prints "daemon_cores X postgres_cores Y loadgen_cores Z" (cores busy on average over the
# window). Only processes alive at both samples count, each by its own difference.
set -u
after=${1:?AFTER seconds}; for=${2:?FOR seconds}
sleep "$after"
tick=$(getconf CLK_TCK)
snap() {  # "GROUP PID TICKS" per process
    local pid
    for pid in $(pgrep -f "serve --config .*hlrs.toml"); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = ferry ] && awk -v p="$pid" '{print "daemon", p, $14 + $15}' "/proc/$pid/stat" 2>/dev/null
    done
    for pid in $(pgrep -x postgres); do awk -v p="$pid" '{print "postgres", p, $14 + $15}' "/proc/$pid/stat" 2>/dev/null; done
    for pid in $(pgrep -f "bench/stall.py"); do awk -v p="$pid" '{print "loadgen", p, $14 + $15}' "/proc/$pid/stat" 2>/dev/null; done
}
first=$(snap)
sleep "$for"
second=$(snap)
awk -v t="$tick" -v s="$for" '
    NR == FNR { before[$1 " " $2] = $3; next }
    ($1 " " $2) in before { used[$1] += $3 - before[$1 " " $2] }
    END { printf "daemon_cores %.2f postgres_cores %.2f loadgen_cores %.2f\n", used["daemon"] / t / s, used["postgres"] / t / s, used["loadgen"] / t / s }
' <(echo "$first") <(echo "$second")
