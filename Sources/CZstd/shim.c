#include "ferry_zstd.h"
unsigned ferry_zstd_is_error(size_t code) { return ZSTD_isError(code); }
