// xxHash compiled into the shim (header-only mode) so XXH3 is inlined and vectorised here.
#define XXH_INLINE_ALL
#include <xxhash.h>
#include "ferry_xxhash.h"
#include <stdlib.h>
#include <string.h>

struct ferry_xxh3_state { XXH3_state_t s; };

void ferry_xxh3_128(const void *data, size_t len, uint64_t *low, uint64_t *high) {
    XXH128_hash_t h = XXH3_128bits(data, len);
    *low = h.low64; *high = h.high64;
}
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
