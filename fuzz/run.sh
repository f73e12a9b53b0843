#!/usr/bin/env bash
# Builds the libFuzzer target for Ferry's wire decoders (fuzz/FuzzWire.swift) and fuzzes it for
# SECONDS (default 30). Exits non-zero when libFuzzer finds a crash, a trap, an ASan report, a
# timeout or an allocation over the limit; the input that did it is kept in .build-fuzz/crashes/.
#
#   ./fuzz/run.sh [SECONDS]
#   .build-fuzz/fuzz-wire .build-fuzz/crashes/crash-...   # replay one input (prints the stack)
#
# Does not take the build lock itself (a caller holding /tmp/ferry-build.lock around
# scripts/test.sh would deadlock): wrap it, `flock /tmp/ferry-build.lock ./fuzz/run.sh 60`.
# Environment: FUZZ_JOBS=N runs N fuzzing processes in parallel (default 1);
# FUZZ_SKIP=wirePath,... turns targets off (names of `Target` in fuzz/FuzzWire.swift).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
seconds="${1:-30}"
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "usage: fuzz/run.sh [SECONDS]" >&2; exit 64; }

out=.build-fuzz
bin="$out/fuzz-wire"
swiftc="${SWIFTC:-$(command -v swiftc || echo /opt/swift/usr/bin/swiftc)}"
clang="${CLANG:-$(dirname "$swiftc")/clang}"

# The pure wire code and what it needs to compile. Frame.swift (Connection) and
# SessionContext.swift (SessionContext) share their files with socket and io_uring code, so
# Ring, Socket, Sync and Progress come along: they are compiled, and only the control-stream
# target uses them (over a socketpair).
src=Sources/Transfer
sources=(
  "$src/TransferError.swift"
  "$src/Location.swift"
  "$src/Wire/Bytes.swift"
  "$src/Wire/Frame.swift"
  "$src/Wire/Messages.swift"
  "$src/Wire/JSONText.swift"
  "$src/Session/SessionContext.swift"
  "$src/Session/Filter.swift"
  "$src/Chunk/ChunkCodec.swift"
  "$src/IO/Paths.swift"
  "$src/IO/Ring.swift"
  "$src/IO/Socket.swift"
  "$src/IO/DirectIO.swift"
  "$src/IO/HTTPClient.swift"
  "$src/Sync.swift"
  "$src/Session/Progress.swift"
  "$src/Security/TLS.swift"
  "$src/Security/Token.swift"
  "$src/Security/DataProtection.swift"
  "$src/Security/Exports.swift"
  "$src/Security/Identity.swift"
  "$src/Config/TOML.swift"
  "$src/Config/ServerConfigFile.swift"
  "$src/Session/AuditLog.swift"
  fuzz/FuzzWire.swift
)
cmodules=(CXXHash CZstd CLiburing COpenSSL)
# CAEAD (the streams' AES-256-GCM) is BoringSSL's, from swift-nio-ssl's checkout: its headers from
# there and its objects from SwiftPM's build of it (`swift build` made them before the tests;
# built here if not), not instrumented: the fuzzer exercises the frames around the cipher.
bssl_inc=.build/checkouts/swift-nio-ssl/Sources/CNIOBoringSSL/include
bssl_obj=.build/debug/CNIOBoringSSL.build

mkdir -p "$out/modules" "$out/obj" "$out/corpus" "$out/crashes"

stale=0
[ -x "$bin" ] || stale=1
for f in "${sources[@]}" fuzz/run.sh Sources/C{XXHash,Zstd,Liburing,OpenSSL,AEAD}/shim.c Sources/C{XXHash,Zstd,Liburing,OpenSSL,AEAD}/include/*.h; do
  [ "$f" -nt "$bin" ] && stale=1
done

if [ "$stale" = 1 ]; then
  echo "fuzz: building $bin" >&2
  # Module maps for the C shims (SwiftPM generates these for `swift build`).
  {
    echo "module CXXHash { header \"$root/Sources/CXXHash/include/ferry_xxhash.h\" export * }"
    echo "module CZstd { header \"$root/Sources/CZstd/include/ferry_zstd.h\" link \"zstd\" export * }"
    echo "module CLiburing { header \"$root/Sources/CLiburing/include/ferry_uring.h\" link \"uring\" export * }"
    echo "module COpenSSL { header \"$root/Sources/COpenSSL/include/ferry_openssl.h\" link \"ssl\" link \"crypto\" export * }"
    echo "module CAEAD { header \"$root/Sources/CAEAD/include/ferry_aead.h\" export * }"
  } > "$out/modules/module.modulemap"
  objs=()
  for m in "${cmodules[@]}"; do
    "$clang" -c -g -O1 -fsanitize=address -fno-omit-frame-pointer -I "Sources/$m/include" \
      "Sources/$m/shim.c" -o "$out/obj/$m.o"
    objs+=("$out/obj/$m.o")
  done
  if [ ! -d "$bssl_obj" ] || [ ! -d "$bssl_inc" ]; then
    swift build --target CNIOBoringSSL > "$out/build.log" 2>&1 \
      || { cat "$out/build.log" >&2; echo "fuzz: build failed (BoringSSL)" >&2; exit 2; }
  fi
  "$clang" -c -g -O1 -fsanitize=address -fno-omit-frame-pointer -I Sources/CAEAD/include -I "$bssl_inc" \
    Sources/CAEAD/shim.c -o "$out/obj/CAEAD.o"
  rm -f "$out/obj/libbssl.a"
  find "$bssl_obj/" -name '*.o' -print0 | xargs -0 ar rcs "$out/obj/libbssl.a"
  objs+=("$out/obj/CAEAD.o" "$out/obj/libbssl.a" -lstdc++)
  "$swiftc" -sanitize=fuzzer,address -parse-as-library -swift-version 5 -module-name Transfer \
    -O -g -I "$out/modules" "${sources[@]}" "${objs[@]}" -luring -lzstd -lssl -lcrypto -o "$bin.tmp" \
    > "$out/build.log" 2>&1 || { cat "$out/build.log" >&2; echo "fuzz: build failed" >&2; exit 2; }
  mv -f "$bin.tmp" "$bin"
fi

# Corpora: .build-fuzz/corpus (first, writable: libFuzzer adds what it finds there), the
# committed seeds, and the committed regression inputs (every one must pass).
dirs=("$out/corpus" fuzz/corpus)
[ -d fuzz/regressions ] && dirs+=(fuzz/regressions)
jobs="${FUZZ_JOBS:-1}"
extra=()
[ "$jobs" -gt 1 ] && extra=(-jobs="$jobs" -workers="$jobs")
log="$out/fuzz.log"
echo "fuzz: running $bin for ${seconds}s (log: $log)" >&2
set +e
# The Swift runtime's own crash backtracer reads memory ASan forbids: leave traps to libFuzzer.
export SWIFT_BACKTRACE=enable=no
export ASAN_SYMBOLIZER_PATH="${ASAN_SYMBOLIZER_PATH:-$(dirname "$swiftc")/llvm-symbolizer}"
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:quarantine_size_mb=64:allocator_may_return_null=0}" \
  "$bin" "${dirs[@]}" \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 \
    -rss_limit_mb=512 -malloc_limit_mb=64 \
    -dict=fuzz/wire.dict -artifact_prefix="$out/crashes/" \
    -print_final_stats=1 "${extra[@]}" > "$log" 2>&1
rc=$?
set -e
if [ "$jobs" -gt 1 ]; then cat fuzz-*.log >> "$log" 2>/dev/null || true; rm -f fuzz-*.log; fi
if [ "$rc" -ne 0 ]; then
  demangle="$(dirname "$swiftc")/swift-demangle"
  [ -x "$demangle" ] || demangle=cat
  { grep -m1 -A60 -E "==ERROR|Fatal error|FuzzWire finding|deadly signal|out-of-memory|malloc\(|timeout" "$log" \
      || tail -n 60 "$log"; } | "$demangle" >&2
  echo "fuzz: FAILED (exit $rc); inputs kept in $out/crashes/:" >&2
  ls -t "$out/crashes/" | head -n 5 >&2 || true
  exit "$rc"
fi
grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)|Done [0-9]+ runs" "$log" >&2 || true
echo "fuzz: no crash in ${seconds}s" >&2
