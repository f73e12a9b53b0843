// bench/aead.c — CPU seconds per GiB of the data streams' AES-256-GCM as Ferry runs it since
// issue 18 (Sources/CAEAD: BoringSSL, vendored by swift-nio-ssl), in bench/stages.c's format, so
// that bench/stages.sh prints it beside OpenSSL's (stages gcm-seal, gcm-open, gmac).
//   bssl-gcm-seal   AES-256-GCM encryption in place of 4 MiB chunks (`private`, sender)
//   bssl-gcm-open   decryption in place with the tag check (`private`, receiver)
//   bssl-gmac       authentication only, the chunk as associated data (`safe`)
// Usage: aead [BYTES]. Built by bench/stages.sh against the release build's BoringSSL objects.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ferry_aead.h"

#define CHUNK (4u << 20)

static double thread_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void report(const char *stage, double cpu, uint64_t bytes) {
    printf("%s\t%.4f\n", stage, cpu / ((double)bytes / (1u << 30)));
    fflush(stdout);
}

int main(int argc, char **argv) {
    uint64_t bytes = argc > 1 ? strtoull(argv[1], NULL, 10) : (1ull << 30);
    unsigned char *buf = aligned_alloc(4096, CHUNK), *copy = aligned_alloc(4096, CHUNK);
    if (!buf || !copy) return 1;
    for (size_t i = 0; i < CHUNK; i++) buf[i] = (unsigned char)(i * 131 + 7);
    unsigned char key[32] = {1}, iv[12] = {2}, aad[40] = {3}, tag[16], sealedTag[16];
    ferry_gcm *s = ferry_gcm_new(key), *o = ferry_gcm_new(key);
    if (!s || !o) { fprintf(stderr, "aead: no context\n"); return 1; }

    double t0 = thread_cpu();
    for (uint64_t n = 0; n < bytes; n += CHUNK)
        if (!ferry_gcm_seal(s, iv, aad, sizeof aad, buf, CHUNK, tag)) { fprintf(stderr, "aead: seal\n"); return 1; }
    report("bssl-gcm-seal", thread_cpu() - t0, bytes);

    // Open a genuine frame each time: the sealed chunk is copied back outside the clock.
    if (!ferry_gcm_seal(s, iv, aad, sizeof aad, buf, CHUNK, sealedTag)) return 1;
    memcpy(copy, buf, CHUNK);
    double spent = 0;
    for (uint64_t n = 0; n < bytes; n += CHUNK) {
        double c0 = thread_cpu();
        if (!ferry_gcm_open(o, iv, aad, sizeof aad, buf, CHUNK, sealedTag)) { fprintf(stderr, "aead: tag mismatch\n"); return 1; }
        spent += thread_cpu() - c0;
        memcpy(buf, copy, CHUNK);
    }
    report("bssl-gcm-open", spent, bytes);

    t0 = thread_cpu();
    for (uint64_t n = 0; n < bytes; n += CHUNK)
        if (!ferry_gcm_seal(s, iv, buf, CHUNK, NULL, 0, tag)) { fprintf(stderr, "aead: gmac\n"); return 1; }
    report("bssl-gmac", thread_cpu() - t0, bytes);
    ferry_gcm_free(s);
    ferry_gcm_free(o);
    return 0;
}
