#!/usr/bin/env bash
# bench/direct_reads.sh — one file read from a cold disk, buffered against O_DIRECT with 1, 2, 4
# and 8 reads of 4 MiB in flight (bench/direct_reads.c), alone and while a 4 GiB O_DIRECT write
# to the same disk runs (as a disk-to-disk copy's receiver writes). Issue 18: the measurement
# behind "direct reads on the sender, with reads kept in flight" (docs/PERFORMANCE.md).
#
# Usage: bench/direct_reads.sh [--dir DIR] [--size-mib N] [--runs R]
#   --dir       a directory on a disk filesystem (default /var/tmp); the files are removed after
#   --size-mib  the file's size (default 4096); --runs  rounds, modes alternated (default 2)
# Needs root (drop_caches), gcc and liburing-dev (scripts/install-deps.sh).
set -euo pipefail
DIR=/var/tmp; SIZE=4096; RUNS=2
while [ $# -gt 0 ]; do
    case $1 in
        --dir) DIR=$2; shift 2 ;; --size-mib) SIZE=$2; shift 2 ;; --runs) RUNS=$2; shift 2 ;;
        *) echo "bench/direct_reads.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/ferry-direct-reads.XXXXXX)
SRC="$DIR/ferry-direct-reads.$$.bin"; OTHER="$DIR/ferry-direct-reads.$$.w"
trap 'rm -rf "$WORK" "$SRC" "$OTHER"' EXIT
gcc -O2 -o "$WORK/direct_reads" "$HERE/direct_reads.c" -luring
head -c $((SIZE << 20)) /dev/urandom >"$WORK/data"
cp "$WORK/data" "$SRC"
sync
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), kernel $(uname -r), $SIZE MiB on $(df -T "$DIR" | awk 'NR==2 { print $2 }'), $RUNS rounds"
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
for r in $(seq 1 "$RUNS"); do
    for m in "buffered 1" "direct 1" "direct 2" "direct 4" "direct 8"; do
        cold
        # shellcheck disable=SC2086 # MODE DEPTH, split on purpose
        echo "alone          $(timeout 300 "$WORK/direct_reads" "$SRC" $m)"
    done
    for m in "buffered 1" "direct 1" "direct 2"; do
        cold
        timeout 300 dd if="$WORK/data" of="$OTHER" bs=4M oflag=direct status=none &
        W=$!
        sleep 0.2
        # shellcheck disable=SC2086
        echo "beside a write $(timeout 300 "$WORK/direct_reads" "$SRC" $m)"
        wait "$W"
        rm -f "$OTHER"
    done
done
