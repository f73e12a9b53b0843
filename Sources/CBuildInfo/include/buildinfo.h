#ifndef FERRY_BUILDINFO_H
#define FERRY_BUILDINFO_H
/* The commit and date a release was built from (scripts/package.sh writes commit.inc beside
   buildinfo.c; a plain `swift build` has neither and says "unknown"). */
const char *ferry_build_commit(void);
const char *ferry_build_date(void);
#endif
