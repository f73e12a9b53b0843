// bench/stages.c — CPU seconds per GiB of each stage of Ferry's data path, one stage at a time,
// on one core (bench/stages.sh builds and runs it; docs/PERFORMANCE.md reads its output).
//
// Each stage processes BYTES (default 1 GiB) in chunks of 4 MiB, Ferry's default chunk, and
// reports the CPU time of the thread or process doing it (user + system), so that the figure
// is the cost of the stage, not of waiting for something else. Stages:
//   read-cache     pread(2) of a page-cached file into a buffer (the sender's read)
//   xxh3           XXH3-128 of a 4 MiB buffer in the cache (every chunk, both sides), with
//                  Ferry's own build of it (Sources/CXXHash: AVX2 where the CPU has it)
//   xxh3-sse2      the same with the SSE2 loop (any x86-64; Ferry before 2026-12-06 night)
//   gcm-seal       AES-256-GCM encryption in place (OpenSSL EVP; `private`, sender)
//   gcm-open       AES-256-GCM decryption in place with the tag check (`private`, receiver)
//   gmac           AES-256-GCM authentication only, the chunk as additional data (`safe`)
//   seal+xxh3      what the sender does with a chunk in `private`: XXH3-128 of the whole chunk,
//                  then AES-256-GCM over it (two passes), over 16 chunks in turn (64 MiB, more
//                  than the last-level cache, as a stream's buffers are not one chunk)
//   seal+xxh3-1pass  the same in one pass: hash and seal each 64 KiB while it is in the L1/L2
//                  cache (issue 18's "cryptography in one pass"). Both variants hash with
//                  libxxhash (SSE2), so that they compare like for like
//   send / recv    TCP over loopback: a child process sends, the parent receives; each side's
//                  own CPU (the kernel's copies into and out of the socket buffers)
//   read+xxh3      pread into a buffer and hash it (what the sender does with a chunk)
//   mmap+xxh3      the same chunk hashed where it lies in the page cache (mmap, MAP_POPULATE,
//                  munmap), the way a splice sender would have to hash it
//   send-splice    the sender's socket fed with splice(2) file -> pipe -> socket (no copy in
//                  user space); against `send` (from a buffer) plus `read-cache`
//   write-tmpfs    pwrite(2) into a new file in /dev/shm (page allocation and copy)
//   write-cache    pwrite(2) into a new file on DIR, then fdatasync; the CPU of this thread
//                  only (the kernel's write-back threads are not counted)
//   write-direct   pwrite(2) with O_DIRECT into a new file on DIR, then fdatasync
//
// Usage: stages DIR [BYTES]   (DIR: a directory on a disk filesystem, e.g. /var/tmp)
// Loopback only (127.0.0.1). Every loop is bounded by BYTES.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>
#include "ferry_xxhash.h"

#define CHUNK (4u << 20)

// A chunk's hash as Ferry computes it (ferry_xxh3_128, the loop chosen for this CPU).
static uint64_t chunk_hash(const void *p, size_t n) {
    uint64_t lo, hi;
    ferry_xxh3_128(p, n, &lo, &hi);
    return lo ^ hi;
}

static double thread_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double process_cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static void report(const char *stage, double cpu, uint64_t bytes) {
    printf("%s\t%.4f\n", stage, cpu / ((double)bytes / (1u << 30)));
    fflush(stdout);
}

static void die(const char *what) {
    fprintf(stderr, "stages: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fill(unsigned char *p, size_t n) {
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
}

static void write_file(const char *path, const unsigned char *buf, uint64_t bytes) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) die(path);
    for (uint64_t o = 0; o < bytes; o += CHUNK)
        if (pwrite(fd, buf, CHUNK, (off_t)o) != CHUNK) die("pwrite");
    close(fd);
}

static void gcm(const char *stage, unsigned char *buf, uint64_t bytes, int enc, int aad_only) {
    unsigned char key[32] = {1}, iv[12] = {2}, tag[16];
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int len;
    // The tag of each chunk as sealed, so that the open checks a genuine tag.
    unsigned char tags[16];
    if (!enc) {
        EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv);
        if (aad_only) EVP_EncryptUpdate(c, NULL, &len, buf, CHUNK); else EVP_EncryptUpdate(c, buf, &len, buf, CHUNK);
        EVP_EncryptFinal_ex(c, tags, &len);
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tags);
        // Decrypting in place turns the buffer back each time: open the sealed copy once per
        // round, seal it again outside the clock.
    }
    double t0 = thread_cpu(), spent = 0;
    for (uint64_t o = 0; o < bytes; o += CHUNK) {
        if (enc) {
            EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv);
            if (aad_only) EVP_EncryptUpdate(c, NULL, &len, buf, CHUNK); else EVP_EncryptUpdate(c, buf, &len, buf, CHUNK);
            EVP_EncryptFinal_ex(c, tag, &len);
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag);
        } else {
            double s0 = thread_cpu();
            EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv);
            if (aad_only) EVP_DecryptUpdate(c, NULL, &len, buf, CHUNK); else EVP_DecryptUpdate(c, buf, &len, buf, CHUNK);
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tags);
            if (EVP_DecryptFinal_ex(c, tag, &len) != 1) { fprintf(stderr, "stages: GCM tag mismatch\n"); exit(1); }
            spent += thread_cpu() - s0;
            if (!aad_only) {  // seal again (not timed) so the next open sees ciphertext
                EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv);
                EVP_EncryptUpdate(c, buf, &len, buf, CHUNK);
                EVP_EncryptFinal_ex(c, tag, &len);
            }
        }
    }
    report(stage, enc ? thread_cpu() - t0 : spent, bytes);
    EVP_CIPHER_CTX_free(c);
}

// seal+xxh3 and seal+xxh3-1pass (above). The ciphertext stays in the buffers: the content does
// not change what either costs.
static void onepass(uint64_t bytes) {
    enum { NBUF = 16, PIECE = 64 << 10 };
    unsigned char *bufs[NBUF];
    for (int i = 0; i < NBUF; i++) {
        bufs[i] = aligned_alloc(4096, CHUNK);
        if (!bufs[i]) die("aligned_alloc");
        fill(bufs[i], CHUNK);
    }
    unsigned char key[32] = {1}, iv[12] = {2}, tag[16];
    int len;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, NULL);
    XXH3_state_t *st = XXH3_createState();
    uint64_t acc = 0;
    for (int pass = 0; pass < 2; pass++) {
        double t0 = thread_cpu();
        uint64_t n = 0;
        for (uint64_t o = 0; o < bytes; o += CHUNK, n++) {
            unsigned char *b = bufs[n % NBUF];
            EVP_EncryptInit_ex(c, NULL, NULL, NULL, iv);
            if (pass == 0) {
                acc += XXH3_128bits(b, CHUNK).low64;  // libxxhash, as the one-pass variant below
                EVP_EncryptUpdate(c, b, &len, b, CHUNK);
            } else {
                XXH3_128bits_reset(st);
                for (size_t p = 0; p < CHUNK; p += PIECE) {
                    XXH3_128bits_update(st, b + p, PIECE);
                    EVP_EncryptUpdate(c, b + p, &len, b + p, PIECE);
                }
                acc += XXH3_128bits_digest(st).low64;
            }
            EVP_EncryptFinal_ex(c, tag, &len);
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag);
        }
        report(pass == 0 ? "seal+xxh3" : "seal+xxh3-1pass", thread_cpu() - t0, bytes);
    }
    if (acc == 42) printf("#\n");
    XXH3_freeState(st);
    EVP_CIPHER_CTX_free(c);
    for (int i = 0; i < NBUF; i++) free(bufs[i]);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: stages DIR [BYTES]\n"); return 2; }
    const char *dir = argv[1];
    uint64_t bytes = argc > 2 ? strtoull(argv[2], NULL, 10) : (1ull << 30);
    bytes = (bytes + CHUNK - 1) / CHUNK * CHUNK;
    unsigned char *buf = aligned_alloc(4096, CHUNK);
    if (!buf) die("aligned_alloc");
    fill(buf, CHUNK);
    char path[4096];

    // read-cache: the file is written first, so it is in the page cache.
    snprintf(path, sizeof path, "/dev/shm/ferry-stages-%d", getpid());
    write_file(path, buf, bytes);
    int fd = open(path, O_RDONLY);
    if (fd < 0) die(path);
    double t0 = thread_cpu();
    for (uint64_t o = 0; o < bytes; o += CHUNK)
        if (pread(fd, buf, CHUNK, (off_t)o) != CHUNK) die("pread");
    report("read-cache", thread_cpu() - t0, bytes);
    close(fd);
    unlink(path);

    t0 = thread_cpu();
    uint64_t acc = 0;
    for (uint64_t o = 0; o < bytes; o += CHUNK) acc += chunk_hash(buf, CHUNK);
    report("xxh3", thread_cpu() - t0, bytes);
    t0 = thread_cpu();
    for (uint64_t o = 0; o < bytes; o += CHUNK) {
        uint64_t lo, hi;
        if (ferry_xxh3_128_with(FERRY_XXH3_SSE2, buf, CHUNK, &lo, &hi) != 0) die("xxh3-sse2");
        acc += lo;
    }
    report("xxh3-sse2", thread_cpu() - t0, bytes);
    if (acc == 42) printf("#\n");

    gcm("gcm-seal", buf, bytes, 1, 0);
    gcm("gcm-open", buf, bytes, 0, 0);
    gcm("gmac", buf, bytes, 1, 1);
    onepass(bytes);

    // read+xxh3 and mmap+xxh3 over a page-cached file; the file stays for send-splice.
    snprintf(path, sizeof path, "/dev/shm/ferry-stages-s-%d", getpid());
    write_file(path, buf, bytes);
    fd = open(path, O_RDONLY);
    if (fd < 0) die(path);
    t0 = thread_cpu();
    for (uint64_t o = 0; o < bytes; o += CHUNK) {
        if (pread(fd, buf, CHUNK, (off_t)o) != CHUNK) die("pread");
        acc += chunk_hash(buf, CHUNK);
    }
    report("read+xxh3", thread_cpu() - t0, bytes);
    t0 = thread_cpu();
    for (uint64_t o = 0; o < bytes; o += CHUNK) {
        void *m = mmap(NULL, CHUNK, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, (off_t)o);
        if (m == MAP_FAILED) die("mmap");
        acc += chunk_hash(m, CHUNK);
        munmap(m, CHUNK);
    }
    report("mmap+xxh3", thread_cpu() - t0, bytes);
    if (acc == 42) printf("#\n");

    // send / recv over loopback TCP: from a buffer (mode 0), then spliced from the file (1).
    for (int mode = 0; mode < 2; mode++) {
        int ls = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t al = sizeof a;
        if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1) != 0 || getsockname(ls, (struct sockaddr *)&a, &al) != 0) die("listen");
        int p[2];
        if (pipe(p) != 0) die("pipe");
        pid_t child = fork();
        if (child == 0) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
            int pp[2];
            if (mode == 1) {
                if (pipe(pp) != 0) die("pipe");
                fcntl(pp[1], F_SETPIPE_SZ, 1 << 20);
            }
            double c0 = process_cpu();
            for (uint64_t o = 0; o < bytes; o += CHUNK) {
                if (mode == 0) {
                    size_t done = 0;
                    while (done < CHUNK) {
                        ssize_t w = send(s, buf + done, CHUNK - done, 0);
                        if (w <= 0) die("send");
                        done += (size_t)w;
                    }
                } else {
                    loff_t off = (loff_t)o;
                    size_t left = CHUNK;
                    while (left > 0) {
                        ssize_t n = splice(fd, &off, pp[1], NULL, left, SPLICE_F_MOVE | SPLICE_F_MORE);
                        if (n <= 0) die("splice from the file");
                        ssize_t w = n;
                        while (w > 0) {
                            ssize_t x = splice(pp[0], NULL, s, NULL, (size_t)w, SPLICE_F_MOVE | SPLICE_F_MORE);
                            if (x <= 0) die("splice to the socket");
                            w -= x;
                        }
                        left -= (size_t)n;
                    }
                }
            }
            double c = process_cpu() - c0;
            shutdown(s, SHUT_WR);
            if (write(p[1], &c, sizeof c) != sizeof c) die("pipe write");
            _exit(0);
        }
        int c = accept(ls, NULL, NULL);
        if (c < 0) die("accept");
        double r0 = process_cpu();
        uint64_t got = 0;
        for (;;) {
            ssize_t r = recv(c, buf, CHUNK, 0);
            if (r < 0) die("recv");
            if (r == 0) break;
            got += (uint64_t)r;
        }
        double rc = process_cpu() - r0, sc = 0;
        if (read(p[0], &sc, sizeof sc) != sizeof sc) die("pipe read");
        waitpid(child, NULL, 0);
        if (got != bytes) { fprintf(stderr, "stages: received %llu of %llu bytes\n", (unsigned long long)got, (unsigned long long)bytes); return 1; }
        report(mode == 0 ? "send" : "send-splice", sc, bytes);
        if (mode == 0) report("recv", rc, bytes);
        close(c); close(ls); close(p[0]); close(p[1]);
    }
    close(fd);
    unlink(path);
    fill(buf, CHUNK);

    // Writes: tmpfs, disk through the page cache, disk direct.
    const char *names[3] = {"write-tmpfs", "write-cache", "write-direct"};
    for (int k = 0; k < 3; k++) {
        if (k == 0) snprintf(path, sizeof path, "/dev/shm/ferry-stages-w-%d", getpid());
        else snprintf(path, sizeof path, "%s/ferry-stages-w-%d", dir, getpid());
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | (k == 2 ? O_DIRECT : 0), 0600);
        if (fd < 0) die(path);
        t0 = thread_cpu();
        for (uint64_t o = 0; o < bytes; o += CHUNK)
            if (pwrite(fd, buf, CHUNK, (off_t)o) != CHUNK) die("pwrite");
        if (k > 0 && fdatasync(fd) != 0) die("fdatasync");
        report(names[k], thread_cpu() - t0, bytes);
        close(fd);
        unlink(path);
    }
    free(buf);
    return 0;
}
