#!/usr/bin/env bash
# bench/small_files.sh — runs bench/small_files.c's five ways of writing 20,000 files of 4 KiB,
# alternated, ROUNDS times each, in a directory of its own under DIR (default /dev/shm; give a
# disk's directory to measure that filesystem). Issue 18: the kernel's floor under a receiver.
# Usage: bench/small_files.sh [--dir DIR] [--rounds N]
set -euo pipefail
DIR=/dev/shm; ROUNDS=2
while [ $# -gt 0 ]; do
    case $1 in
        --dir) DIR=$2; shift 2 ;; --rounds) ROUNDS=$2; shift 2 ;;
        *) echo "bench/small_files.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
W=$(mktemp -d "$DIR/ferry-small-files.XXXXXX")
trap 'rm -rf "$W"' EXIT
gcc -O2 -Wall -o "$W/small_files" "$(dirname "$0")/small_files.c"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC') $(uname -r), $(stat -f -c %T "$W"), $ROUNDS rounds"
MODES=(rename final tmpfile procfs notimes)
for r in $(seq 1 "$ROUNDS"); do
    # Each round starts one mode later, so that no mode always runs first.
    for k in 0 1 2 3 4; do
        m=${MODES[$(( (k + r - 1) % 5 ))]}
        "$W/small_files" "$m" "$W/t" || echo "$m: failed"
        rm -rf "$W/t"
    done
done
