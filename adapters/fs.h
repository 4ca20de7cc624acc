/*
 * fs.h - test hooks of the filesystem L2 adapter (adapters/fs.c).
 *
 * The adapter itself is the object `kvcd_adapter_fs`; nothing here is needed to
 * use it. Every system call the adapter makes goes through one table of
 * function pointers so that tests can make a call fail (ENOSPC, EIO, EINVAL for
 * O_DIRECT) or move the clock. Each member has exactly the semantics of the libc
 * function of the same name (-1 and errno on failure), except that openat and
 * fcntl take their optional argument explicitly. The table is process-wide.
 */
#ifndef KVCD_ADAPTER_FS_H
#define KVCD_ADAPTER_FS_H

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

typedef struct kvcd_fs_syscalls_s {
    int (*openat)(int dirfd, const char *path, int flags, mode_t mode);
    int (*close)(int fd);
    ssize_t (*preadv)(int fd, const struct iovec *iov, int iovcnt, off_t off);
    ssize_t (*pwritev)(int fd, const struct iovec *iov, int iovcnt, off_t off);
    int (*fsync)(int fd);
    int (*fdatasync)(int fd);
    int (*ftruncate)(int fd, off_t len);
    int (*fstat)(int fd, struct stat *st);
    int (*fstatat)(int dirfd, const char *path, struct stat *st, int flags);
    int (*fstatvfs)(int fd, struct statvfs *st);
    int (*fchmod)(int fd, mode_t mode);
    int (*fcntl)(int fd, int cmd, int arg);
    int (*renameat)(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);
    int (*unlinkat)(int dirfd, const char *path, int flags);
    int (*mkdirat)(int dirfd, const char *path, mode_t mode);
    DIR *(*fdopendir)(int fd);
    struct dirent *(*readdir)(DIR *d);
    int (*closedir)(DIR *d);
    int (*kill)(pid_t pid, int sig);
    int (*clock_gettime)(clockid_t clk, struct timespec *ts);
    /* the last bytes of a file, to tell kvcd's files from LMCache's raw ones */
    ssize_t (*pread)(int fd, void *buf, size_t n, off_t off);
} kvcd_fs_syscalls_t;

/* The table in use (the libc one unless a test replaced it). Any thread. */
const kvcd_fs_syscalls_t *kvcd_fs_get_syscalls(void);

/* Replace the table; NULL restores the libc one. The table must outlive its use.
 * Tests only: call it while no adapter method runs. */
void kvcd_fs_set_syscalls(const kvcd_fs_syscalls_t *table);

#endif
