/*
 * io.c - whole-object reads and writes for the fs adapter, and temp files.
 *
 * Every transfer loops over short counts and EINTR. With use_odirect the
 * 4 KiB-aligned body of an object moves straight between the caller's buffer
 * and the disk. A write then turns O_DIRECT off and writes the unaligned tail
 * and the trailer through the page cache in one call (no padding, no
 * ftruncate); a read takes body and tail in one direct preadv, the tail (and
 * trailer) into a small aligned bounce buffer.
 * Whenever O_DIRECT cannot be used (the filesystem refuses it, the buffer is
 * not aligned, a transfer fails with EINVAL) the object goes through the page
 * cache instead, and the fallback is counted per cause.
 *
 * Any worker thread; the caller owns the descriptors and buffers.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "adapters/fs/fs_int.h"

/* Transfer all of iov at off, looping over short transfers and EINTR.
 * 0, -errno, or 1 when a read meets end of file first. */
int kvcd_fs_io_full(int fd, const struct iovec *in, int cnt, off_t off, bool wr)
{
    struct iovec iov[3];
    int i = 0;

    memcpy(iov, in, (size_t)cnt * sizeof(*iov));
    for (;;) {
        ssize_t n;

        while (i < cnt && iov[i].iov_len == 0)
            i++;
        if (i == cnt)
            return 0;
        n = wr ? kvcd_fs_sys->pwritev(fd, iov + i, cnt - i, off)
               : kvcd_fs_sys->preadv(fd, iov + i, cnt - i, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return wr ? -EIO : 1;
        off += n;
        while (n > 0) {
            size_t k = (size_t)n < iov[i].iov_len ? (size_t)n : iov[i].iov_len;

            iov[i].iov_base = (char *)iov[i].iov_base + k;
            iov[i].iov_len -= k;
            n -= (ssize_t)k;
            if (iov[i].iov_len == 0)
                i++;
        }
    }
}

/* Read up to n bytes at off, stopping at end of file: bytes read or -errno. */
static ssize_t io_upto(int fd, void *buf, size_t n, off_t off)
{
    size_t got = 0;

    while (got < n) {
        struct iovec v = {(char *)buf + got, n - got};
        ssize_t r = kvcd_fs_sys->preadv(fd, &v, 1, off + (off_t)got);

        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Whether O_DIRECT can be used for an object of `len` payload bytes at buf:
 * -1 yes, else the fallback cause. Only the aligned body moves straight from or
 * to buf, so a buffer shorter than one block may sit anywhere. */
static int direct_cause(fs_t *fs, const void *buf, size_t len)
{
    if (!LD(fs->odirect_ok))
        return ODF_UNSUPPORTED;
    if (len >= DIO_ALIGN && ((uintptr_t)buf & (DIO_ALIGN - 1)))
        return ODF_UNALIGNED;
    return -1;
}

/* Turn O_DIRECT on for fd: 0 or the errno (and O_DIRECT disabled for good when
 * the filesystem refuses it). */
int kvcd_fs_direct_on(fs_t *fs, int fd)
{
    if (kvcd_fs_sys->fcntl(fd, F_SETFL, O_DIRECT) == 0)
        return 0;
    if (errno == EINVAL)
        atomic_store(&fs->odirect_ok, false);
    return errno;
}

/* The aligned body straight from buf; then, with O_DIRECT off, the unaligned
 * tail and the trailer through the page cache in one call. A separate direct
 * write of a padded block (and an ftruncate back to the exact length) costs an
 * extra device round trip per object; the buffered tail is written back with
 * the file (or by fdatasync when fsync is on). 0 or -errno. */
static int write_direct(int fd, const void *buf, size_t len, const uint8_t *trl, size_t tlen)
{
    size_t a = len & ~(size_t)(DIO_ALIGN - 1);
    struct iovec v[2] = {{(char *)buf + a, len - a}, {(void *)trl, tlen}};
    int r;

    if (a) {
        struct iovec d = {(void *)buf, a};

        if ((r = kvcd_fs_io_full(fd, &d, 1, 0, true)))
            return r;
    }
    if (len - a + tlen == 0)
        return 0;
    if (kvcd_fs_sys->fcntl(fd, F_SETFL, 0))
        return -errno;
    return kvcd_fs_io_full(fd, v, 2, (off_t)a, true);
}

/* Write payload and trailer to the fresh temp file fd. 0 or -errno. */
int kvcd_fs_write_obj(fs_t *fs, int fd, const void *buf, size_t len, const uint8_t *trl,
                      size_t tlen)
{
    struct iovec v[2] = {{(void *)buf, len}, {(void *)trl, tlen}};
    int cause, e, r;

    if (fs->odirect && len + tlen) {
        cause = direct_cause(fs, buf, len);
        e = 0;
        if (cause < 0 && (e = kvcd_fs_direct_on(fs, fd)))
            cause = ODF_UNSUPPORTED;
        if (cause < 0) {
            r = write_direct(fd, buf, len, trl, tlen);
            if (r != -EINVAL)
                return r;
            /* e.g. a short direct write left an unaligned offset */
            kvcd_fs_sys->fcntl(fd, F_SETFL, 0);
            kvcd_fs_odf_note(fs, ODF_IO, EINVAL);
            r = kvcd_fs_io_full(fd, v, 2, 0, true);
            if (!r && kvcd_fs_sys->ftruncate(fd, (off_t)(len + tlen)))
                r = -errno;
            return r;
        }
        kvcd_fs_odf_note(fs, cause, e);
    }
    return kvcd_fs_io_full(fd, v, 2, 0, true);
}

/* The aligned body into buf and the rest (tail and trailer) into an aligned
 * bounce buffer, in one preadv when it returns everything; otherwise (short,
 * interrupted, failed) body and rest again one after the other.
 * 0, -errno, or 1 if the file is shorter or longer than it should be. */
static int read_direct(int fd, void *buf, size_t plen, uint8_t *trl, size_t tlen)
{
    size_t a = plen & ~(size_t)(DIO_ALIGN - 1), rest = plen - a + tlen, rb;
    uint8_t *b;
    ssize_t got;
    int r;

    if (!rest) {
        struct iovec v = {buf, a};

        return kvcd_fs_io_full(fd, &v, 1, 0, false);
    }
    rb = rup(rest);
    if (!(b = aligned_alloc(DIO_ALIGN, rb)))
        return -ENOMEM;
    {
        struct iovec v[2] = {{buf, a}, {b, rb}};

        /* no empty first segment: its base need not be aligned */
        got = a ? kvcd_fs_sys->preadv(fd, v, 2, 0) : kvcd_fs_sys->preadv(fd, v + 1, 1, 0);
    }
    if (got < 0 || (size_t)got != a + rest) {
        if (a) {
            struct iovec v = {buf, a};

            if ((r = kvcd_fs_io_full(fd, &v, 1, 0, false))) {
                free(b);
                return r;
            }
        }
        got = io_upto(fd, b, rb, (off_t)a);
        if (got < 0 || (size_t)got != rest) {
            free(b);
            return got < 0 ? (int)got : 1; /* 1: the file changed size under us */
        }
    }
    if (plen > a)
        memcpy((char *)buf + a, b, plen - a);
    if (tlen)
        memcpy(trl, b + plen - a, tlen);
    free(b);
    return 0;
}

/* Read plen payload bytes into buf and tlen trailer bytes into trl.
 * 0, -errno, or 1 if the file is shorter than its size said. */
int kvcd_fs_read_obj(fs_t *fs, int fd, void *buf, size_t plen, uint8_t *trl, size_t tlen)
{
    size_t first;
    int cause, e, r;

    if (fs->odirect && plen + tlen) {
        cause = direct_cause(fs, buf, plen);
        e = 0;
        if (cause < 0 && (e = kvcd_fs_direct_on(fs, fd)))
            cause = ODF_UNSUPPORTED;
        if (cause < 0) {
            r = read_direct(fd, buf, plen, trl, tlen);
            if (r != -EINVAL)
                return r;
            kvcd_fs_sys->fcntl(fd, F_SETFL, 0);
            kvcd_fs_odf_note(fs, ODF_IO, EINVAL);
        } else {
            kvcd_fs_odf_note(fs, cause, e);
        }
    }
    /* A first read of read_ahead bytes starts the kernel's read-ahead on the
     * rest, which then arrives in one call together with the trailer. */
    first = plen > fs->read_ahead ? fs->read_ahead : 0;
    if (first) {
        struct iovec v = {buf, first};

        if ((r = kvcd_fs_io_full(fd, &v, 1, 0, false)))
            return r;
    }
    {
        struct iovec v[2] = {{(char *)buf + first, plen - first}, {trl, tlen}};

        return kvcd_fs_io_full(fd, v, 2, (off_t)first, false);
    }
}

/* Create a temp file with a name no other writer uses (fs->ident: host, boot,
 * pid namespace, pid, process nonce; then thread, counter). fd or -errno; the
 * name goes into tmp. */
int kvcd_fs_tmp_create(fs_t *fs, char *tmp, size_t tmplen)
{
    int fd, tries;

    for (tries = 0; tries < 8; tries++) {
        snprintf(tmp, tmplen, "%s.%d.%" PRIu64 ".tmp", fs->ident, (int)gettid(),
                 CNT(fs->tmp_seq, 1));
        /* O_EXCL: never an existing name (a FIFO planted there cannot block) */
        fd = kvcd_fs_sys->openat(fs->tmp_fd, tmp,
                                 O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                                 fs->file_mode);
        if (fd >= 0) {
            if (fs->chmod_files && kvcd_fs_sys->fchmod(fd, fs->file_mode)) {
                int e = errno;

                kvcd_fs_sys->close(fd);
                kvcd_fs_sys->unlinkat(fs->tmp_fd, tmp, 0);
                return -e;
            }
            return fd;
        }
        if (errno != EEXIST && errno != EINTR)
            return -errno;
    }
    return -EEXIST;
}
