#ifndef FERRY_URING_H
#define FERRY_URING_H
// Glibc's module and liburing.h disagree about fd_set unless these come first.
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <signal.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <liburing.h>

/// Wait for at least `wait_nr` completions, with an optional timeout in nanoseconds (0 = none).
int ferry_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr, long long timeout_ns);
/// Copy up to `max` ready completions (user_data, res, flags) and mark them seen.
unsigned ferry_uring_reap(struct io_uring *ring, unsigned long long *user_data, int *res,
                          unsigned *flags, unsigned max);
/// The next free submission entry, or NULL when the queue is full.
struct io_uring_sqe *ferry_uring_get_sqe(struct io_uring *ring);
/// openat2(2) through syscall(2): glibc 2.36 has no wrapper.
int ferry_openat2(int dirfd, const char *path, int flags, unsigned mode, unsigned long long resolve);
/// Constants Glibc hides behind _GNU_SOURCE or that Swift cannot import as written.
#define FERRY_O_PATH 010000000
#define FERRY_IOSQE_IO_LINK 4u
/// fallocate(PUNCH_HOLE | KEEP_SIZE): 0 or -errno.
int ferry_punch_hole(int fd, long long offset, long long length);
/// An exclusive lock on the whole of `fd`'s file, held by its open file description
/// (F_OFD_SETLK: released when the last descriptor of that open is closed, by this process or
/// any other; it conflicts with another open's lock in the same process too), without
/// waiting: 0, or -errno (EAGAIN/EACCES: another open holds a lock on it).
int ferry_ofd_trylock(int fd);
/// The filesystem type (statfs f_type) of `fd`'s filesystem, or -errno.
long long ferry_fs_type(int fd);
/// `fd` opened again through /proc/self/fd with O_WRONLY | O_DIRECT | O_CLOEXEC: a descriptor
/// or -errno.
int ferry_reopen_direct(int fd);
/// The same for reading: O_RDONLY | O_DIRECT | O_CLOEXEC (the sender's direct reads).
int ferry_reopen_direct_read(int fd);
/// Whether a ring's completion queue holds a completion not yet reaped (its kernel tail past
/// its head), read with atomic loads: safe from a thread that does not own the ring.
int ferry_cq_posted(const unsigned *head, const unsigned *tail);
/// Names the calling thread (at most 15 bytes are kept).
void ferry_set_thread_name(const char *name);
/// Flags of IORING_CQE_F_MORE / IORING_CQE_F_NOTIF, which Swift sees as macros.
unsigned ferry_cqe_f_more(void);
unsigned ferry_cqe_f_notif(void);
/// The calling thread's supplementary groups, fsuid and fsgid (raw system calls: this thread
/// only). setgroups: 0 or -errno; setfsuid/setfsgid: the previous id (as the calls do).
int ferry_thread_setgroups(unsigned long count, const unsigned *groups);
unsigned ferry_thread_setfsuid(unsigned uid);
unsigned ferry_thread_setfsgid(unsigned gid);
int ferry_thread_getgroups(int size, unsigned *groups);
#endif
