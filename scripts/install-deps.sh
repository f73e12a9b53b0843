#!/usr/bin/env bash
# Installs the system packages Ferry builds against and its tests use (Debian 12, as root).
# Swift 6 itself is expected on PATH (/opt/swift on these machines).
set -euo pipefail
packages=(liburing-dev libssl-dev libzstd-dev libxxhash-dev pkg-config time util-linux iproute2 python3 python3-venv libsqlite3-dev postgresql munge slurmctld slurmd slurm-client slurm-wlm-basic-plugins)
# With --tests (scripts/test.sh): Chromium and its WebDriver, for the web console's browser test, and a
# font with Chinese glyphs for its screenshots of the Chinese pages (the console ships no font).
# And what the package test needs: dpkg-dev and lintian to build and check the .deb, man-db to
# read its man pages, systemd for systemd-analyze.
[ "${1:-}" = "--tests" ] && packages+=(chromium chromium-driver fonts-wqy-zenhei dpkg-dev lintian man-db systemd xz-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# With --tests: promtool (Debian's prometheus package) checks contrib/prometheus/ferry-rules.yml.
# Its server must not start here (it would listen on every interface): invoke-rc.d and
# deb-systemd-invoke obey a policy-rc.d that says no, put there for the install only.
if [ "${1:-}" = "--tests" ] && ! command -v promtool >/dev/null; then
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends prometheus
  [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
fi
command -v swift >/dev/null || { echo "swift not found: install a Swift 6 toolchain (e.g. /opt/swift/usr/bin on PATH)" >&2; exit 1; }
# With --tests (scripts/test.sh): schemathesis (PyPI) for the API contract test and selenium for
# the web console's browser test, in a virtual environment of their own (Debian's Python is
# externally managed).
# And prometheus_client, whose parser reads the daemon's /metrics as Prometheus would.
if [ "${1:-}" = "--tests" ] && { [ ! -x /opt/ferry-test-venv/bin/st ] || ! /opt/ferry-test-venv/bin/python -c "import selenium, prometheus_client" 2>/dev/null; }; then
  [ -x /opt/ferry-test-venv/bin/python ] || python3 -m venv /opt/ferry-test-venv
  /opt/ferry-test-venv/bin/pip install --quiet --disable-pip-version-check "schemathesis>=4,<5" "selenium>=4.10,<5" "prometheus_client>=0.17,<1"
fi
