#!/usr/bin/env bash
# Ferry's main job, end to end on one machine: start a real server (`ferry serve`) on loopback,
# push a sample tree to it with `ferry cp -r`, verify the copy byte for byte, pull it back,
# and show that a rerun transfers nothing. Everything lives in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build -c release
ferry="$PWD/.build/release/ferry"

work=$(mktemp -d /tmp/ferry-quickstart.XXXXXX)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/center-b" "$work/sample/genomes/run 1" "$work/sample/smiles" "$work/sample/empty"
head -c 64M /dev/urandom > "$work/sample/genomes/run 1/reads.bin"
for i in $(seq 1 500); do echo "CC(=O)Oc1ccccc1C(=O)O ZINC$(printf %012d $i)" ; done > "$work/sample/smiles/library.smi"
for i in $(seq 1 200); do echo "result $i" > "$work/sample/smiles/dock_$i.txt"; done
ln -s smiles/library.smi "$work/sample/latest.smi"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/token"

"$ferry" serve --root "$work/center-b" --listen 127.0.0.1:0 --token-file "$work/token" > "$work/serve.out" 2> "$work/serve.log" &
server_pid=$!
for _ in $(seq 1 100); do grep -q listening "$work/serve.out" && break; sleep 0.1; done
port=$(grep -o '[0-9]*$' "$work/serve.out" | head -1)
echo "== server: $(cat "$work/serve.out")"

echo "== push a tree (a 64 MiB file, 201 small files, a link, an empty directory)"
"$ferry" cp -r --token-file "$work/token" "$work/sample" "ferry://127.0.0.1:$port/datasets/sample"
diff -r --no-dereference "$work/sample" "$work/center-b/datasets/sample"
echo "== verified: the server's copy is byte-identical"

echo "== pull it back"
"$ferry" cp -r --token-file "$work/token" "ferry://127.0.0.1:$port/datasets/sample" "$work/pulled"
diff -r --no-dereference "$work/sample" "$work/pulled"
echo "== verified: the pulled copy is byte-identical"

echo "== push again: everything is already there"
"$ferry" cp -r --json --token-file "$work/token" "$work/sample" "ferry://127.0.0.1:$port/datasets/sample" | tail -1
echo "== server log:"
cat "$work/serve.log"
