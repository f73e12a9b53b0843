// AES-256-GCM for the data streams, from the BoringSSL that swift-nio-ssl vendors (already in
// the binary: the daemon's HTTPS). Issue 18: Debian 12's OpenSSL 3.0 has no VAES code for GCM,
// BoringSSL's VAES/VPCLMULQDQ code seals and opens a chunk in less than half the time
// (bench/stages.sh, stages gcm-* against bssl-*; bench/RESULTS.md "Issue 18, late on
// 2026-12-06"). The TLS handshake and the key export stay with OpenSSL (COpenSSL); only the bulk
// cipher is here, with the same key, nonce, associated data and tag, so the frames on the wire
// are the same bytes (SecurityUnitTests checks the two libraries against each other).
// CNIOBoringSSL is swift-nio-ssl's internal module, not its API: Package.swift pins the minor
// version, and a change there shows up here as a build error or in those tests.
#include <CNIOBoringSSL_aead.h>
#include <CNIOBoringSSL_err.h>
#include "ferry_aead.h"

// A ferry_gcm is BoringSSL's context itself: the opaque type only keeps BoringSSL's headers out of
// the Swift side.
static EVP_AEAD_CTX *ctx(ferry_gcm *g) { return (EVP_AEAD_CTX *)g; }

ferry_gcm *ferry_gcm_new(const unsigned char key[32]) {
    return (ferry_gcm *)EVP_AEAD_CTX_new(EVP_aead_aes_256_gcm(), key, 32, 16);
}

void ferry_gcm_free(ferry_gcm *g) { EVP_AEAD_CTX_free(ctx(g)); }

int ferry_gcm_seal(ferry_gcm *g, const unsigned char iv[12], const unsigned char *aad, size_t aadlen, unsigned char *buf, size_t len, unsigned char tag[16]) {
    size_t taglen = 0;
    int ok = EVP_AEAD_CTX_seal_scatter(ctx(g), buf, tag, &taglen, 16, iv, 12, buf, len, NULL, 0, aad, aadlen);
    if (!ok) ERR_clear_error();
    return ok == 1 && taglen == 16;
}

int ferry_gcm_open(ferry_gcm *g, const unsigned char iv[12], const unsigned char *aad, size_t aadlen, unsigned char *buf, size_t len, const unsigned char tag[16]) {
    int ok = EVP_AEAD_CTX_open_gather(ctx(g), buf, iv, 12, buf, len, tag, 16, aad, aadlen);
    if (!ok) ERR_clear_error();
    return ok == 1;
}
