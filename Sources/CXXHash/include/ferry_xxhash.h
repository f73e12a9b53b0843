#ifndef FERRY_XXHASH_H
#define FERRY_XXHASH_H
#include <stddef.h>
#include <stdint.h>
/// XXH3-128 of `len` bytes; the two halves little end first. Inputs over 240 bytes use the
/// widest vector unit the CPU and kernel support (ferry_xxh3_kind); the result is the same.
void ferry_xxh3_128(const void *data, size_t len, uint64_t *low, uint64_t *high);
/// Which long-input loop ferry_xxh3_128 uses in this process.
enum { FERRY_XXH3_PORTABLE = 0, FERRY_XXH3_SSE2 = 1, FERRY_XXH3_AVX2 = 2 };
int ferry_xxh3_kind(void);
/// XXH3-128 with one named loop (tests compare them); -1 when this CPU cannot run it.
int ferry_xxh3_128_with(int kind, const void *data, size_t len, uint64_t *low, uint64_t *high);
/// Streaming state for a digest over many chunk hashes.
typedef struct ferry_xxh3_state ferry_xxh3_state;
ferry_xxh3_state *ferry_xxh3_create(void);
void ferry_xxh3_reset(ferry_xxh3_state *s);
void ferry_xxh3_update(ferry_xxh3_state *s, const void *data, size_t len);
void ferry_xxh3_digest(ferry_xxh3_state *s, uint64_t *low, uint64_t *high);
void ferry_xxh3_free(ferry_xxh3_state *s);
/// 1 when all `len` bytes are zero (vectorised by the compiler).
int ferry_all_zero(const void *data, size_t len);
#endif
