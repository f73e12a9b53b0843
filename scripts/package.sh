#!/usr/bin/env bash
# The Debian package of Ferry, from this checkout, in one command (Debian 12, as root):
#   scripts/package.sh [--out DIR] [--no-build]
# Builds `ferry` in release mode with the Swift runtime linked in (--static-swift-stdlib; the
# remaining shared libraries are Debian's and become the package's Depends), strips it, stamps
# it with the commit and date (ferry --version), generates the man pages and shell
# completions from the command definitions, assembles the tree (binary, man pages,
# completions, /etc/ferry examples, systemd units, the Slurm/PBS/LSF scripts, docs), builds
# DIR/ferry_VERSION_ARCH.deb with dpkg-deb and checks it with lintian (no error or warning allowed).
# Prints the package's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
out=dist; build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;; --no-build) build=0; shift ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
for p in dpkg-dev lintian; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq --no-install-recommends "$p"; }
done
mkdir -p "$out"; out=$(cd "$out" && pwd)
version=$(sed -n 's/.*static let version = "\(.*\)".*/\1/p' Sources/CLI/Ferry.swift)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
date=$(date -u +%Y-%m-%d)
arch=$(dpkg --print-architecture)
maintainer=${FERRY_MAINTAINER:-"Ferry developers <ferry@example.org>"}

if [ "$build" = 1 ]; then
  printf '#define FERRY_COMMIT "%s"\n#define FERRY_BUILD_DATE "%s"\n' "$commit" "$date" > Sources/CBuildInfo/commit.inc
  touch Sources/CBuildInfo/buildinfo.c
  swift build -c release --product ferry --static-swift-stdlib
fi
bin=.build/release/ferry
[ -x "$bin" ] || { echo "no release build at $bin" >&2; exit 1; }

root=$(mktemp -d /tmp/ferry-pkg.XXXXXX)
trap 'rm -rf "$root"' EXIT
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/man/man1" "$root/usr/share/doc/ferry" \
  "$root/lib/systemd/system" "$root/etc/ferry" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" \
  "$root/usr/share/ferry/slurm" "$root/usr/share/ferry/pbs" "$root/usr/share/ferry/lsf" \
  "$root/usr/share/ferry/prometheus" "$root/usr/share/ferry/grafana"
install -m 0755 "$bin" "$root/usr/bin/ferry"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/ferry"

# Man pages: swift-argument-parser's generate-manual tool reads the binary's own description
# of its commands (--experimental-dump-help): one page per command.
swift build --product generate-manual >/dev/null
tool=$(find .build -path '*debug/generate-manual' -type f | head -1)
man=$(mktemp -d /tmp/ferry-man.XXXXXX)
"$tool" "$root/usr/bin/ferry" --multi-page --date "$date" --authors "the Ferry developers" --output-directory "$man" >/dev/null
# A blank line in a command's discussion is a paragraph break: mdoc's .Pp (groff warns about
# an empty input line, and lintian reports that warning).
for f in "$man"/*.1; do sed 's/^$/.Pp/' "$f" | gzip -9n > "$root/usr/share/man/man1/$(basename "$f").gz"; done
rm -rf "$man"
chmod 0644 "$root"/usr/share/man/man1/*

# (bash-completion sources the file: no #! line.)
"$root/usr/bin/ferry" --generate-completion-script bash | sed '1{/^#!/d}' > "$root/usr/share/bash-completion/completions/ferry"
"$root/usr/bin/ferry" --generate-completion-script zsh > "$root/usr/share/zsh/vendor-completions/_ferry"
"$root/usr/bin/ferry" --generate-completion-script fish > "$root/usr/share/fish/vendor_completions.d/ferry.fish"

install -m 0644 packaging/deb/etc/ferry.toml packaging/deb/etc/stage.env "$root/etc/ferry/"
install -m 0644 contrib/systemd/ferry.service contrib/systemd/ferry-sweep.service contrib/systemd/ferry-sweep.timer "$root/lib/systemd/system/"
install -m 0644 contrib/slurm/*.lua "$root/usr/share/ferry/slurm/"
install -m 0755 contrib/pbs/prologue contrib/pbs/epilogue "$root/usr/share/ferry/pbs/"
install -m 0755 contrib/lsf/ferry-pre-exec contrib/lsf/ferry-post-exec "$root/usr/share/ferry/lsf/"
install -m 0644 contrib/prometheus/ferry-rules.yml "$root/usr/share/ferry/prometheus/"
install -m 0644 contrib/grafana/ferry.json "$root/usr/share/ferry/grafana/"
install -m 0644 packaging/deb/copyright "$root/usr/share/doc/ferry/copyright"
install -m 0644 README.md docs/SECURITY.md docs/CLI.md docs/CONTRACT.md "$root/usr/share/doc/ferry/"
gzip -9n "$root/usr/share/doc/ferry/README.md" "$root/usr/share/doc/ferry/SECURITY.md" "$root/usr/share/doc/ferry/CONTRACT.md"
{
  echo "ferry ($version) unstable; urgency=medium"
  echo
  echo "  * Built from commit $commit."
  echo
  echo " -- $maintainer  $(date -u -R)"
} | gzip -9n > "$root/usr/share/doc/ferry/changelog.gz"

install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
printf '/etc/ferry/ferry.toml\n/etc/ferry/stage.env\n' > "$root/DEBIAN/conffiles"
# Depends: the shared libraries the binary still needs, as Debian names their packages.
depends=$(for lib in $(readelf -d "$root/usr/bin/ferry" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
  path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64|aarch64/ {print $NF; exit}')
  [ -n "$path" ] || continue
  real=$(readlink -f "$path")
  pkg=$(dpkg -S "$real" 2>/dev/null | head -1 | cut -d: -f1) || true
  [ -n "$pkg" ] || pkg=$(dpkg -S "$path" 2>/dev/null | head -1 | cut -d: -f1) || true
  [ -n "$pkg" ] && echo "$pkg"
done | sort -u | paste -sd, | sed 's/,/, /g')
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@DEPENDS@/$depends/" -e "s/@MAINTAINER@/$maintainer/" \
  packaging/deb/control.in > "$root/DEBIAN/control"
(cd "$root" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
deb="$out/ferry_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
# lintian: errors and warnings fail the build (a tag accepted for a reason is in
# packaging/deb/lintian-suppress, with the reason).
lintian --fail-on error,warning --suppress-tags-from-file packaging/deb/lintian-suppress "$deb" || { echo "lintian found errors or warnings in $deb" >&2; exit 1; }
echo "$deb"
