#ifndef FERRY_ZSTD_H
#define FERRY_ZSTD_H
#include <stddef.h>
#include <zstd.h>
/// 1 if `code` is a zstd error code (ZSTD_isError is a function, but keep one name per shim).
unsigned ferry_zstd_is_error(size_t code);
#endif
