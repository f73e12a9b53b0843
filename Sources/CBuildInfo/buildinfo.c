#include "buildinfo.h"
#if __has_include("commit.inc")
#include "commit.inc"
#endif
#ifndef FERRY_COMMIT
#define FERRY_COMMIT "unknown"
#endif
#ifndef FERRY_BUILD_DATE
#define FERRY_BUILD_DATE "unknown"
#endif
const char *ferry_build_commit(void) { return FERRY_COMMIT; }
const char *ferry_build_date(void) { return FERRY_BUILD_DATE; }
