// xxHash compiled into the shim (header-only mode) so XXH3 is inlined here, with the long-input
// loop built twice, SSE2 (every x86-64) and AVX2, and chosen once per process from CPUID (issue
// 18: a plain build of this file targets baseline x86-64 and so ran SSE2 only; AVX2 takes about
// half the time, bench/RESULTS.md "Issue 18, late on 2026-12-06"; AVX-512 was no faster in a
// throwaway test on this machine's EPYC, so it is not built). The hash is the same function
// either way: the variants differ only in how many lanes they compute at once
// (ferry_xxh3_128_with lets the tests check them against each other and against known answers).
#if defined(__x86_64__)
#include <immintrin.h>
#include <cpuid.h>
#define XXH_X86DISPATCH
#define XXH_DISPATCH_AVX2 1
#define XXH_TARGET_AVX2 __attribute__((__target__("avx2")))
#endif
#define XXH_INLINE_ALL
#include <xxhash.h>
#include "ferry_xxhash.h"
#include <stdlib.h>
#include <string.h>

struct ferry_xxh3_state { XXH3_state_t s; };

#if defined(__x86_64__)
// The long loop's accumulator: xxHash 0.8.1 (Debian 12) passes the per-stripe function, 0.8.2 and
// later a function over many stripes with its own name. A build against the wrong one would not
// compile, and a wrong hash would fail the known answers in ChunkAndJournalTests.
#if XXH_VERSION_NUMBER >= 802
#define FERRY_ACC_SSE2 XXH3_accumulate_sse2
#define FERRY_ACC_AVX2 XXH3_accumulate_avx2
#else
#define FERRY_ACC_SSE2 XXH3_accumulate_512_sse2
#define FERRY_ACC_AVX2 XXH3_accumulate_512_avx2
#endif

// Inputs over 240 bytes (XXH3_MIDSIZE_MAX) take the long loop; shorter ones are scalar in every
// variant, so only the long loop is built per instruction set, as xxHash's own dispatcher does.
__attribute__((noinline)) static XXH128_hash_t long_sse2(const void *in, size_t len) {
    return XXH3_hashLong_128b_internal(in, len, XXH3_kSecret, sizeof(XXH3_kSecret),
                                       FERRY_ACC_SSE2, XXH3_scrambleAcc_sse2);
}
__attribute__((noinline, target("avx2"))) static XXH128_hash_t long_avx2(const void *in, size_t len) {
    return XXH3_hashLong_128b_internal(in, len, XXH3_kSecret, sizeof(XXH3_kSecret),
                                       FERRY_ACC_AVX2, XXH3_scrambleAcc_avx2);
}

// AVX2 needs the CPU's flag and the kernel saving the YMM state (OSXSAVE, then XCR0 bits 1-2).
static int cpu_has_avx2(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & bit_OSXSAVE) || !(c & bit_AVX)) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & bit_AVX2) != 0;
}

typedef XXH128_hash_t (*long_fn)(const void *, size_t);
static long_fn hash_long = long_sse2;
static int hash_kind = FERRY_XXH3_SSE2;

// Chosen before main: no thread hashes before, and the pointer never changes after.
__attribute__((constructor)) static void choose(void) {
    if (cpu_has_avx2()) { hash_long = long_avx2; hash_kind = FERRY_XXH3_AVX2; }
}

static inline XXH128_hash_t hash128(const void *data, size_t len, long_fn f) {
    if (len <= XXH3_MIDSIZE_MAX) return XXH3_128bits(data, len);
    return f(data, len);
}

int ferry_xxh3_kind(void) { return hash_kind; }

int ferry_xxh3_128_with(int kind, const void *data, size_t len, uint64_t *low, uint64_t *high) {
    long_fn f;
    if (kind == FERRY_XXH3_SSE2) f = long_sse2;
    else if (kind == FERRY_XXH3_AVX2 && hash_kind == FERRY_XXH3_AVX2) f = long_avx2;  // no CPUID per call: a VM exit
    else return -1;
    XXH128_hash_t h = hash128(data, len, f);
    *low = h.low64; *high = h.high64;
    return 0;
}

void ferry_xxh3_128(const void *data, size_t len, uint64_t *low, uint64_t *high) {
    XXH128_hash_t h = hash128(data, len, hash_long);
    *low = h.low64; *high = h.high64;
}
#else
int ferry_xxh3_kind(void) { return FERRY_XXH3_PORTABLE; }

int ferry_xxh3_128_with(int kind, const void *data, size_t len, uint64_t *low, uint64_t *high) {
    if (kind != FERRY_XXH3_PORTABLE) return -1;
    ferry_xxh3_128(data, len, low, high);
    return 0;
}

void ferry_xxh3_128(const void *data, size_t len, uint64_t *low, uint64_t *high) {
    XXH128_hash_t h = XXH3_128bits(data, len);
    *low = h.low64; *high = h.high64;
}
#endif

ferry_xxh3_state *ferry_xxh3_create(void) {
    ferry_xxh3_state *s = aligned_alloc(64, (sizeof(ferry_xxh3_state) + 63) / 64 * 64);
    if (s) XXH3_128bits_reset(&s->s);
    return s;
}
void ferry_xxh3_reset(ferry_xxh3_state *s) { XXH3_128bits_reset(&s->s); }
void ferry_xxh3_update(ferry_xxh3_state *s, const void *data, size_t len) { XXH3_128bits_update(&s->s, data, len); }
void ferry_xxh3_digest(ferry_xxh3_state *s, uint64_t *low, uint64_t *high) {
    XXH128_hash_t h = XXH3_128bits_digest(&s->s);
    *low = h.low64; *high = h.high64;
}
void ferry_xxh3_free(ferry_xxh3_state *s) { free(s); }
int ferry_all_zero(const void *data, size_t len) {
    const unsigned char *p = data;
    size_t i = 0;
    for (; i + 64 <= len; i += 64) {
        uint64_t acc = 0;
        for (int k = 0; k < 8; k++) { uint64_t w; memcpy(&w, p + i + k * 8, 8); acc |= w; }
        if (acc) return 0;
    }
    for (; i < len; i++) if (p[i]) return 0;
    return 1;
}
