#define _GNU_SOURCE
#include "ferry_uring.h"
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <string.h>
#include <linux/falloc.h>
#include <sys/vfs.h>
#include <stdio.h>

int ferry_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr, long long timeout_ns) {
    if (timeout_ns <= 0) {
        return io_uring_submit_and_wait(ring, wait_nr);
    }
    struct __kernel_timespec ts = { .tv_sec = timeout_ns / 1000000000LL, .tv_nsec = timeout_ns % 1000000000LL };
    struct io_uring_cqe *cqe = NULL;
    int r = io_uring_submit(ring);
    if (r < 0) return r;
    r = io_uring_wait_cqes(ring, &cqe, wait_nr, &ts, NULL);
    return r;
}

unsigned ferry_uring_reap(struct io_uring *ring, unsigned long long *user_data, int *res,
                          unsigned *flags, unsigned max) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
        if (n == max) break;
        user_data[n] = cqe->user_data;
        res[n] = cqe->res;
        flags[n] = cqe->flags;
        n++;
    }
    io_uring_cq_advance(ring, n);
    return n;
}

struct io_uring_sqe *ferry_uring_get_sqe(struct io_uring *ring) { return io_uring_get_sqe(ring); }

int ferry_openat2(int dirfd, const char *path, int flags, unsigned mode, unsigned long long resolve) {
    struct open_how how = { .flags = (unsigned long long)flags, .mode = mode, .resolve = resolve };
    int r = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
    return r < 0 ? -errno : r;
}

unsigned ferry_cqe_f_more(void) { return IORING_CQE_F_MORE; }
unsigned ferry_cqe_f_notif(void) { return IORING_CQE_F_NOTIF; }

int ferry_punch_hole(int fd, long long offset, long long length) {
    int r = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    return r < 0 ? -errno : 0;
}

int ferry_ofd_trylock(int fd) {
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0, .l_pid = 0 };
    return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : -errno;
}

long long ferry_fs_type(int fd) {
    struct statfs fs;
    if (fstatfs(fd, &fs) != 0) return -errno;
    return (long long)(unsigned long)fs.f_type;
}

int ferry_reopen_direct(int fd) {
    char path[40];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    int r = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
    return r < 0 ? -errno : r;
}

int ferry_cq_posted(const unsigned *head, const unsigned *tail) {
    return __atomic_load_n(tail, __ATOMIC_ACQUIRE) != __atomic_load_n(head, __ATOMIC_ACQUIRE);
}

int ferry_reopen_direct_read(int fd) {
    char path[40];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    int r = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    return r < 0 ? -errno : r;
}

void ferry_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof(buf) - 1);
    buf[sizeof(buf) - 1] = 0;
    pthread_setname_np(pthread_self(), buf);
}

/* Per-thread credentials. glibc's setgroups(2) wrapper changes every thread of the process
   (it broadcasts the change); the raw system calls change only the calling thread, which is
   what a server acting for several users at once needs. */
int ferry_thread_setgroups(unsigned long count, const unsigned *groups) {
    long r = syscall(SYS_setgroups, count, groups);
    return r < 0 ? -errno : 0;
}

unsigned ferry_thread_setfsuid(unsigned uid) { return (unsigned)syscall(SYS_setfsuid, uid); }

unsigned ferry_thread_setfsgid(unsigned gid) { return (unsigned)syscall(SYS_setfsgid, gid); }

int ferry_thread_getgroups(int size, unsigned *groups) {
    long r = syscall(SYS_getgroups, size, groups);
    return r < 0 ? -errno : (int)r;
}
