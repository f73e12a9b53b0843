// bench/direct_reads.c — reading one file from a cold disk: the page cache (buffered) against
// O_DIRECT, with 1..N reads of 4 MiB in flight through io_uring, each buffer touched once per
// page after it arrives (as a sender hashes it). Issue 18: what a sender with direct reads and
// reads kept in flight would gain, before it is built (bench/direct_reads.sh drops the cache).
//
// Usage: direct_reads FILE buffered|direct DEPTH
// Prints: MODE depth=N: SECONDS s, GiB/s, cpu S s/GiB (the process's user + system time,
// io_uring's kernel workers included: they are threads of the process).
#define _GNU_SOURCE
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: direct_reads FILE buffered|direct DEPTH\n"); return 2; }
    int direct = strcmp(argv[2], "direct") == 0;
    int depth = atoi(argv[3]);
    if (depth < 1 || depth > 32) { fprintf(stderr, "DEPTH is 1..32\n"); return 2; }
    const size_t chunk = 4 << 20;
    int fd = open(argv[1], O_RDONLY | (direct ? O_DIRECT : 0));
    if (fd < 0) { perror("open"); return 1; }
    off_t size = lseek(fd, 0, SEEK_END);
    struct io_uring ring;
    if (io_uring_queue_init(64, &ring, 0) != 0) { fprintf(stderr, "io_uring_queue_init failed\n"); return 1; }
    char *buf[32];
    for (int i = 0; i < depth; i++)
        if (posix_memalign((void **)&buf[i], 4096, chunk) != 0) return 1;
    double t0 = now(), c0 = cpu();
    off_t next = 0;
    int inflight = 0;
    long long got = 0;
    volatile unsigned long long sink = 0;
    for (int i = 0; i < depth && next < size; i++, next += chunk, inflight++) {
        struct io_uring_sqe *s = io_uring_get_sqe(&ring);
        io_uring_prep_read(s, fd, buf[i], chunk, next);
        s->user_data = i;
    }
    io_uring_submit(&ring);
    while (inflight > 0) {
        struct io_uring_cqe *c;
        if (io_uring_wait_cqe(&ring, &c) != 0) return 1;
        int i = (int)c->user_data, res = c->res;
        io_uring_cqe_seen(&ring, c);
        inflight--;
        if (res < 0) { fprintf(stderr, "read: %s\n", strerror(-res)); return 1; }
        got += res;
        for (int k = 0; k < res; k += 4096) sink += (unsigned char)buf[i][k];
        if (next < size) {
            struct io_uring_sqe *s = io_uring_get_sqe(&ring);
            io_uring_prep_read(s, fd, buf[i], chunk, next);
            s->user_data = i;
            next += chunk;
            inflight++;
            io_uring_submit(&ring);
        }
    }
    double t = now() - t0, c = cpu() - c0, g = got / 1073741824.0;
    printf("%s depth=%d: %.2f s, %.2f GiB/s, cpu %.3f s/GiB\n", direct ? "direct" : "buffered", depth, t, g / t, c / g);
    return 0;
}
