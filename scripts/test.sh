#!/usr/bin/env bash
# The whole test suite: installs what is needed, builds, runs unit and end-to-end tests
# (real sockets on loopback, real files, real io_uring; some tests mount a small tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build
swift build --build-tests
export FERRY_BIN="$PWD/.build/debug/ferry"
swift test --skip-build "$@"
./fuzz/run.sh 30
