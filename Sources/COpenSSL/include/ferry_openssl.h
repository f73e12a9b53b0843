#ifndef FERRY_OPENSSL_H
#define FERRY_OPENSSL_H
#include <stddef.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
/// Constant-time comparison: 0 when equal.
int ferry_ct_memcmp(const void *a, const void *b, size_t len);
/// Cryptographically strong random bytes: 1 on success.
int ferry_random_bytes(unsigned char *buf, int len);
#endif
