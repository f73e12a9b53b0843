#!/usr/bin/env bash
# Ferry's main job, end to end on one machine: create a federation CA, a center certificate and
# a user token (`ferry ca`, `ferry token`), start a real server (`ferry serve --config`) on
# loopback with one export, push a sample tree to it with `ferry cp -r` (TLS 1.3 control,
# AES-256-GCM data: the default `--protection private`), verify the copy byte for byte, pull it
# back, show that a rerun transfers nothing, then let the center's daemon push the dataset to a
# second center (third-party transfer: this shell only watches), register it in Global Files,
# list it from the other center (federation), replicate it there and read it back through
# gfs:// from the new replica, and print the audit log. Everything lives in a temporary
# directory.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build -c release
ferry="$PWD/.build/release/ferry"

work=$(mktemp -d /tmp/ferry-quickstart.XXXXXX)
server_pid=""
peer_pid=""
cleanup() {
  for p in $server_pid $peer_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/center-b" "$work/center-w" "$work/sample/genomes/run 1" "$work/sample/smiles" "$work/sample/empty"
head -c 64M /dev/urandom > "$work/sample/genomes/run 1/reads.bin"
for i in $(seq 1 500); do echo "CC(=O)Oc1ccccc1C(=O)O ZINC$(printf %012d $i)" ; done > "$work/sample/smiles/library.smi"
for i in $(seq 1 200); do echo "result $i" > "$work/sample/smiles/dock_$i.txt"; done
ln -s smiles/library.smi "$work/sample/latest.smi"

echo "== a federation CA, the certificate of center 'hlrs', a token for user 'alice'"
"$ferry" ca init --dir "$work/pki"
"$ferry" ca issue --dir "$work/pki" --center hlrs --host 127.0.0.1 --host ::1
"$ferry" ca issue --dir "$work/pki" --center wuxi --host 127.0.0.1 >/dev/null
"$ferry" token issue --cert "$work/pki/hlrs.crt" --key "$work/pki/hlrs.key" \
    --user alice --scope rw:/datasets/sample --scope rw:/incoming/replicas --ttl 1h > "$work/alice.token"
# Four free loopback ports: each center's transfer server and daemon API (the two centers
# name each other in [[peer]], so the ports are chosen before either starts).
read -r wport wapi hport hapi < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
# A second center, wuxi, with its daemon: its export "incoming" admits center hlrs (hlrs's
# daemon pushes there); it follows hlrs's catalog and takes replicas under /incoming/replicas.
cat > "$work/wuxi.toml" <<TOML
center = "wuxi"
# One machine, one demo user: the transfer server acts as root here. A center maps each
# token user to its own local account instead (docs/SECURITY.md, "Identity").
run_as = "root"
listen = ["127.0.0.1:$wport"]
certificate = "pki/wuxi.crt"
key = "pki/wuxi.key"
ca = "pki/ca.crt"
token_issuers = ["pki/hlrs.crt"]

[daemon]
database = "wuxi.sqlite"
api_listen = "127.0.0.1:$wapi"
sync_seconds = 1
replicas = "/incoming/replicas"

[[peer]]
name = "hlrs"
address = "127.0.0.1:$hport"
api = "127.0.0.1:$hapi"

[[export]]
name = "incoming"
path = "center-w"
access = "rw"
users = ["center:hlrs", "*"]
TOML
"$ferry" serve --config "$work/wuxi.toml" > "$work/wuxi.out" 2> "$work/wuxi.log" &
peer_pid=$!
for _ in $(seq 1 100); do grep -q "api listening" "$work/wuxi.out" && break; sleep 0.1; done

cat > "$work/hlrs.toml" <<TOML
center = "hlrs"
# One machine, one demo user: the transfer server acts as root here. A center maps each
# token user to its own local account instead (docs/SECURITY.md, "Identity").
run_as = "root"
listen = ["127.0.0.1:$hport"]
certificate = "pki/hlrs.crt"
key = "pki/hlrs.key"
ca = "pki/ca.crt"
audit_log = "audit.jsonl"

[daemon]
database = "jobs.sqlite"
api_listen = "127.0.0.1:$hapi"
sync_seconds = 1

[[peer]]
name = "wuxi"
address = "127.0.0.1:$wport"
api = "127.0.0.1:$wapi"

[[export]]
name = "datasets"
path = "center-b"
access = "rw"
users = ["*", "center:wuxi"]
TOML

"$ferry" serve --config "$work/hlrs.toml" > "$work/serve.out" 2> "$work/serve.log" &
server_pid=$!
for _ in $(seq 1 100); do grep -q "api listening" "$work/serve.out" && break; sleep 0.1; done
port=$(grep -v api "$work/serve.out" | grep -o '[0-9]*$' | head -1)
api=$(sed -n 's/.*api listening on //p' "$work/serve.out")
echo "== server: $(cat "$work/serve.out")"
export FERRY_CA="$work/pki/ca.crt" FERRY_TOKEN_FILE="$work/alice.token"
"$ferry" ping "ferry://127.0.0.1:$port" --count 5

echo "== push a tree (a 64 MiB file, 201 small files, a link, an empty directory)"
"$ferry" cp -r "$work/sample" "ferry://127.0.0.1:$port/datasets/sample"
diff -r --no-dereference "$work/sample" "$work/center-b/sample"
echo "== verified: the server's copy is byte-identical"

echo "== pull it back"
"$ferry" cp -r "ferry://127.0.0.1:$port/datasets/sample" "$work/pulled"
diff -r --no-dereference "$work/sample" "$work/pulled"
echo "== verified: the pulled copy is byte-identical"

echo "== push again: every file is there with its size and mtime, so none is read or sent"
"$ferry" cp -r "$work/sample" "ferry://127.0.0.1:$port/datasets/sample"
echo "== and with --checksum: compared by content, identical, none sent"
"$ferry" cp -r --checksum "$work/sample" "ferry://127.0.0.1:$port/datasets/sample"

echo "== outside the token's scope: refused"
if "$ferry" cp "$work/sample/smiles/dock_1.txt" "ferry://127.0.0.1:$port/datasets/other/x.txt"; then echo "not refused?"; exit 1; fi
echo "== third-party: hlrs's daemon pushes the dataset to center wuxi; this shell only watches"
FERRY_API="$api" "$ferry" cp -r "ferry://127.0.0.1:$port/datasets/sample" "ferry://wuxi/incoming/sample"
diff -r --no-dereference "$work/sample" "$work/center-w/sample"
echo "== verified: wuxi's copy is byte-identical"

echo "== Global Files: register the dataset at hlrs, list it"
export FERRY_API="$api"
"$ferry" register /datasets/sample --dataset sample@v1 --readers '*'
"$ferry" datasets
"$ferry" ls -l gfs://hlrs/sample@v1
"$ferry" du gfs://hlrs/sample@v1

echo "== federation: wuxi's daemon follows hlrs's catalog; asked at wuxi, the listing is answered there"
wuxi_api="http://127.0.0.1:$wapi"
for _ in $(seq 1 60); do FERRY_API="$wuxi_api" "$ferry" ls gfs://hlrs/sample@v1 >/dev/null 2>&1 && break; sleep 0.5; done
FERRY_API="$wuxi_api" "$ferry" datasets
FERRY_API="$wuxi_api" "$ferry" stat --replicas gfs://hlrs/sample@v1
echo "== replicate it to wuxi (asked at hlrs: the request goes to wuxi's daemon, which pulls it)"
"$ferry" replicate gfs://hlrs/sample@v1 --to wuxi --wait
diff -r --no-dereference "$work/sample" "$work/center-w/replicas/hlrs/sample@v1"
echo "== verified: the replica is byte-identical; at wuxi it is now the first choice"
for _ in $(seq 1 20); do FERRY_API="$wuxi_api" "$ferry" stat --replicas gfs://hlrs/sample@v1 | grep -q "^replica #1.wuxi" && break; sleep 0.5; done
FERRY_API="$wuxi_api" "$ferry" stat --replicas gfs://hlrs/sample@v1
FERRY_API="$wuxi_api" "$ferry" cp -r gfs://hlrs/sample@v1/smiles "$work/from-gfs"
diff -r "$work/sample/smiles" "$work/from-gfs"
echo "== verified: read through gfs:// from wuxi's replica"

echo "== server log:"
cat "$work/serve.log"
echo "== audit log ($work/audit.jsonl):"
cat "$work/audit.jsonl"
