#!/usr/bin/env bash
# The whole test suite: installs what is needed, builds, runs unit and end-to-end tests
# (real sockets on loopback, real files, real io_uring; some tests mount a small tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build
swift build --build-tests
export FERRY_BIN="$PWD/.build/debug/ferry"
# A real PostgreSQL for the job-queue and daemon tests (they run on SQLite and on this):
# initdb in a temporary directory, listening on 127.0.0.1 only, removed on exit.
pgdir=$(mktemp -u /tmp/ferry-test-pg.XXXXXX)
trap './scripts/postgres-test.sh stop "$pgdir" >/dev/null 2>&1 || true' EXIT
FERRY_TEST_POSTGRES=$(./scripts/postgres-test.sh start "$pgdir")
export FERRY_TEST_POSTGRES
swift test --skip-build "$@"
./fuzz/run.sh 30
