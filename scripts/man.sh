#!/usr/bin/env bash
# Man pages from the command definitions: swift-argument-parser's generate-manual tool reads
# the binary's own description of its commands; one page per command (`ferry.1`,
# `ferry.cp.1`, ...) in OUTDIR (default: ./man). The Debian package installs the same pages
# (scripts/package.sh). Read one with: man -l OUTDIR/ferry.cp.1
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-man}"
mkdir -p "$out"
swift build --product ferry >/dev/null
swift build --product generate-manual >/dev/null
tool=$(find .build -path '*debug/generate-manual' -type f | head -1)
"$tool" .build/debug/ferry --multi-page --authors "the Ferry developers" --output-directory "$out"
# A blank line in a command's discussion is a paragraph break (mdoc's .Pp), as in the package.
sed -i 's/^$/.Pp/' "$out"/*.1
ls "$out"
