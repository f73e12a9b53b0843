#include "ferry_openssl.h"
int ferry_ct_memcmp(const void *a, const void *b, size_t len) { return CRYPTO_memcmp(a, b, len); }
int ferry_random_bytes(unsigned char *buf, int len) { return RAND_bytes(buf, len); }
