/*
 * sys.c - the fs adapter's system call table, clock and error accounting.
 *
 * Every system call of the adapter goes through kvcd_fs_sys so that tests can
 * replace it (adapters/fs.h) and make a call fail. kvcd_fs_err is the one place
 * a failed call is counted by errno and turns the adapter unhealthy for
 * health_window_ms; kvcd_fs_store_failed keeps it unhealthy while stores fail
 * for a cause that does not pass by itself (a full or read-only disk, no
 * permission) until kvcd_fs_store_worked. Workers never log (the loop thread
 * reports what status shows).
 *
 * Any thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "adapters/fs/fs_int.h"

static int d_openat(int dfd, const char *p, int fl, mode_t m)
{
    return openat(dfd, p, fl, m);
}

static int d_fcntl(int fd, int cmd, int arg)
{
    return fcntl(fd, cmd, arg);
}

static const kvcd_fs_syscalls_t sys_libc = {
    .openat = d_openat,
    .close = close,
    .preadv = preadv,
    .pwritev = pwritev,
    .fsync = fsync,
    .fdatasync = fdatasync,
    .ftruncate = ftruncate,
    .fstat = fstat,
    .fstatat = fstatat,
    .fstatvfs = fstatvfs,
    .fchmod = fchmod,
    .fcntl = d_fcntl,
    .renameat = renameat,
    .unlinkat = unlinkat,
    .mkdirat = mkdirat,
    .fdopendir = fdopendir,
    .readdir = readdir,
    .closedir = closedir,
    .kill = kill,
    .clock_gettime = clock_gettime,
    .pread = pread,
};

const kvcd_fs_syscalls_t *kvcd_fs_sys = &sys_libc;

const kvcd_fs_syscalls_t *kvcd_fs_get_syscalls(void)
{
    return kvcd_fs_sys;
}

void kvcd_fs_set_syscalls(const kvcd_fs_syscalls_t *t)
{
    kvcd_fs_sys = t ? t : &sys_libc;
}

uint64_t kvcd_fs_now_ms(void)
{
    struct timespec ts = {0, 0};

    kvcd_fs_sys->clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int kvcd_fs_err(fs_t *fs, const char *op, const char *path, int e)
{
    uint64_t t = kvcd_fs_now_ms();

    CNT(fs->errs[e > 0 && e < ERRNO_SLOTS ? e : 0], 1);
    CNT(fs->err_streak, 1);
    atomic_store(&fs->err_at, t);
    pthread_mutex_lock(&fs->mu);
    snprintf(fs->last_err, sizeof(fs->last_err), "%s %s: %s", op, path, kvcd_errname(-e));
    fs->last_err_at = t;
    pthread_mutex_unlock(&fs->mu);
    return -e;
}

void kvcd_fs_odf_note(fs_t *fs, int cause, int e)
{
    CNT(fs->odf[cause].count, 1);
    if (!atomic_exchange(&fs->odf[cause].logged, true))
        atomic_store(&fs->odf[cause].first_errno, e);
}

void kvcd_fs_store_failed(fs_t *fs, int e)
{
    if (kvcd_fs_persistent(e))
        atomic_store(&fs->wfail, e);
}

void kvcd_fs_store_worked(fs_t *fs)
{
    if (LD(fs->wfail))
        atomic_store(&fs->wfail, 0);
    if (LD(fs->ro_errno))
        atomic_store(&fs->ro_errno, 0);
}
