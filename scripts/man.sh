#!/usr/bin/env bash
# Man pages from the command definitions (swift-argument-parser's generate-manual plugin):
# one page per command, `ferry.1`, `ferry.cp.1`, ... in OUTDIR (default: ./man).
# The plugin builds `ferry` in release mode first (a minute or two on two cores, once).
# Read one with: man -l OUTDIR/ferry.cp.1
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-man}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
swift package --allow-writing-to-package-directory generate-manual --multi-page --output-directory "$out"
ls "$out"
