// bench/small_files.c — what a receiver's per-file calls cost in the kernel, without Ferry:
// 20,000 files of 4 KiB written into a fresh tree of 400 directories (50 files each), one
// of five ways. Issue 18: the floor under Ferry's small-file path, and what its contract (a
// file appears under its final name only whole) costs against `cp -r`.
//
// Usage: small_files MODE DIR      (DIR must not exist; it is left behind for the caller)
//   rename    O_EXCL create of a temporary name, write, futimens, close, rename (Ferry)
//   final     O_EXCL create of the final name, write, futimens, close (cp -r, cp -a)
//   tmpfile   O_TMPFILE, write, futimens, linkat(AT_EMPTY_PATH) (root, or a kernel that lets
//             a file's opener link it), close
//   procfs    O_TMPFILE, write, futimens, linkat through /proc/self/fd, close
//   notimes   as rename, without futimens
// Prints: MODE: SECONDS s, MICROSECONDS us/file (wall time; the loop is one thread).
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void fail(const char *what, const char *name) {
    perror(what);
    fprintf(stderr, "small_files: %s failed on %s\n", what, name);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: small_files rename|final|tmpfile|procfs|notimes DIR\n"); return 2; }
    const char *mode = argv[1], *root = argv[2];
    int m = !strcmp(mode, "rename") ? 0 : !strcmp(mode, "final") ? 1 : !strcmp(mode, "tmpfile") ? 2
          : !strcmp(mode, "procfs") ? 3 : !strcmp(mode, "notimes") ? 4 : -1;
    if (m < 0) { fprintf(stderr, "small_files: unknown mode %s\n", mode); return 2; }
    enum { files = 20000, perDir = 50 };
    char data[4096];
    memset(data, 'x', sizeof data);
    struct timespec times[2] = {{1000000000, 0}, {1000000000, 0}};
    if (mkdir(root, 0755) != 0) fail("mkdir", root);
    double t0 = now();
    int dir = -1;
    for (int i = 0; i < files; i++) {
        char name[64], tmp[64];
        if (i % perDir == 0) {
            if (dir >= 0) close(dir);
            char d[4096];
            snprintf(d, sizeof d, "%s/d%d", root, i / perDir);
            if (mkdir(d, 0755) != 0) fail("mkdir", d);
            dir = open(d, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
            if (dir < 0) fail("open", d);
        }
        snprintf(name, sizeof name, "file-%06d.dat", i);
        snprintf(tmp, sizeof tmp, ".file-%06d.dat.part", i);
        int fd;
        if (m == 0 || m == 1 || m == 4) {
            fd = openat(dir, m == 1 ? name : tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        } else {
            fd = openat(dir, ".", O_WRONLY | O_TMPFILE | O_CLOEXEC, 0644);
        }
        if (fd < 0) fail("open", name);
        if (write(fd, data, sizeof data) != (ssize_t)sizeof data) fail("write", name);
        if (m != 4 && futimens(fd, times) != 0) fail("futimens", name);
        if (m == 2 && linkat(fd, "", dir, name, AT_EMPTY_PATH) != 0) fail("linkat", name);
        if (m == 3) {
            char p[64];
            snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
            if (linkat(AT_FDCWD, p, dir, name, AT_SYMLINK_FOLLOW) != 0) fail("linkat", name);
        }
        close(fd);
        if ((m == 0 || m == 4) && renameat(dir, tmp, dir, name) != 0) fail("renameat", name);
    }
    double t1 = now();
    if (dir >= 0) close(dir);
    printf("%s: %.3f s, %.2f us/file\n", mode, t1 - t0, (t1 - t0) / files * 1e6);
    return 0;
}
