#ifndef FERRY_AEAD_H
#define FERRY_AEAD_H
#include <stddef.h>
// AES-256-GCM for the data streams (docs/SECURITY.md, "Data protection"), from BoringSSL.
typedef struct ferry_gcm ferry_gcm;
/// A context for one key, for sealing and opening alike; NULL if the key cannot be set up.
ferry_gcm *ferry_gcm_new(const unsigned char key[32]);
void ferry_gcm_free(ferry_gcm *g);
/// Encrypts `len` bytes at `buf` in place, authenticating `aadlen` bytes at `aad` too, and
/// writes the 16-byte tag. 1 on success.
int ferry_gcm_seal(ferry_gcm *g, const unsigned char iv[12], const unsigned char *aad, size_t aadlen, unsigned char *buf, size_t len, unsigned char tag[16]);
/// Checks `tag` over `aad` and the ciphertext and decrypts in place. 1 when authentic; 0
/// otherwise, and then the `len` bytes at `buf` are not the plaintext (BoringSSL zeroes them).
int ferry_gcm_open(ferry_gcm *g, const unsigned char iv[12], const unsigned char *aad, size_t aadlen, unsigned char *buf, size_t len, const unsigned char tag[16]);
#endif
