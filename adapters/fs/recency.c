/*
 * recency.c - the fs adapter's recency journal: the order of the index's LRU
 * list, saved on close and restored by the next start-up scan.
 *
 * Without it a restart orders files by the later of atime and mtime, and under
 * relatime (the usual mount) atime moves only on the first read after a write
 * while lookups never move it: a much-read file ranks by its first read. With
 * it, the LRU list after the scan is the list before the stop: files used since
 * the start first (they are in the index already), then the journal's files in
 * its order, then files the journal does not name (written by another daemon
 * sharing the directory, or left by a crash) by file time, as before.
 *
 * Cost: nothing per hit. close writes one file of 8 bytes per indexed file
 * (the XXH3-64 of its path, most recent first) to a temp file and renames it
 * to <base_path>/<recency_file>; the scan reads it once, and removes it once
 * it has been applied, so a later crash can never apply a stale order (the
 * start after a crash falls back to file times).
 *
 * Format (docs/ADAPTERS.md): "KVCDRCY1", u64 count, count x u64 path hash,
 * u64 XXH3-64 of all bytes before it; integers little-endian. A file that does
 * not match is ignored (and removed); status scan.recency says which happened.
 *
 * Threading: kvcd_fs_rec_save on the loop thread in close (no worker runs; it
 * logs one line); load, rank and done on the background worker, which does not
 * log. The index is read under mu.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <xxhash.h>

#include "adapters/fs/fs_int.h"

#define REC_MAGIC "KVCDRCY1"
#define REC_HDR 16 /* magic + count */
#define REC_MAX_ENTRIES ((uint64_t)1 << 32)

static void put64(uint8_t *p, uint64_t v)
{
    int i;

    for (i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    int i;

    for (i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

int kvcd_fs_rec_save(fs_t *fs)
{
    uint64_t t0 = kvcd_fs_now_ms(), n, i = 0;
    char tmp[192];
    uint8_t *buf;
    size_t len;
    ent_t *e;
    int fd, r, c;

    if (!fs->rec_name[0] || fs->base_fd < 0 || fs->tmp_fd < 0 || LD(fs->scan_state) != 2)
        return 0; /* off, read-only, or the index does not know the directory yet */
    pthread_mutex_lock(&fs->mu);
    n = fs->nent;
    len = REC_HDR + (size_t)n * 8 + 8;
    buf = malloc(len);
    if (buf) {
        for (e = fs->lru.next; e != &fs->lru && i < n; e = e->next)
            put64(buf + REC_HDR + 8 * i++, e->hash);
    }
    pthread_mutex_unlock(&fs->mu);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, REC_MAGIC, 8);
    put64(buf + 8, i);
    len = REC_HDR + (size_t)i * 8;
    put64(buf + len, XXH3_64bits(buf, len));
    len += 8;

    if ((fd = kvcd_fs_tmp_create(fs, tmp, sizeof(tmp))) < 0) {
        free(buf);
        return kvcd_fs_err(fs, "recency create", fs->tmp_dir, -fd);
    }
    {
        struct iovec v = {buf, len};

        r = kvcd_fs_io_full(fd, &v, 1, 0, true);
    }
    free(buf);
    if (r)
        r = kvcd_fs_err(fs, "recency write", tmp, -r);
    if (!r && fs->fsync_on && kvcd_fs_sys->fdatasync(fd))
        r = kvcd_fs_err(fs, "recency fsync", tmp, errno);
    c = kvcd_fs_sys->close(fd);
    if (!r && c)
        r = kvcd_fs_err(fs, "recency close", tmp, errno);
    if (!r && kvcd_fs_sys->renameat(fs->tmp_fd, tmp, fs->base_fd, fs->rec_name))
        r = kvcd_fs_err(fs, "recency rename", fs->rec_name, errno);
    if (r) {
        kvcd_fs_sys->unlinkat(fs->tmp_fd, tmp, 0);
        return r;
    }
    if (fs->svc)
        KVCD_ALOG(fs->svc, KVCD_ALOG_INFO, "fs",
                  "%s: saved the recency of %" PRIu64 " files (%zu bytes) in %" PRIu64 " ms",
                  fs->base_path, i, len, kvcd_fs_now_ms() - t0);
    return 0;
}

/* Read and check the journal into rec (empty when there is none or it does
 * not match). Never fails the scan: a bad journal only loses the order. */
void kvcd_fs_rec_load(fs_t *fs, fs_rec_t *rec)
{
    struct stat st;
    uint8_t *buf = NULL;
    uint64_t n, i, cap = 16;
    int fd;

    memset(rec, 0, sizeof(*rec));
    if (!fs->rec_name[0])
        return;
    fd = kvcd_fs_sys->openat(fs->base_fd, fs->rec_name, OPEN_FILE, 0);
    if (fd < 0) {
        if (errno != ENOENT)
            kvcd_fs_err(fs, "recency open", fs->rec_name, errno);
        return;
    }
    rec->found = true;
    if (kvcd_fs_sys->fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size < REC_HDR + 8 ||
        (st.st_size - REC_HDR - 8) % 8 || !(buf = malloc((size_t)st.st_size)))
        goto out;
    {
        struct iovec v = {buf, (size_t)st.st_size};

        if (kvcd_fs_io_full(fd, &v, 1, 0, false))
            goto out;
    }
    n = get64(buf + 8);
    if (memcmp(buf, REC_MAGIC, 8) || n != (uint64_t)(st.st_size - REC_HDR - 8) / 8 ||
        n > REC_MAX_ENTRIES ||
        get64(buf + st.st_size - 8) != XXH3_64bits(buf, (size_t)st.st_size - 8))
        goto out;
    while (cap < 2 * n)
        cap *= 2;
    if (!(rec->slot = calloc(cap, sizeof(*rec->slot))))
        goto out;
    rec->mask = cap - 1;
    for (i = 0; i < n; i++) {
        uint64_t h = get64(buf + REC_HDR + 8 * i), s = h & rec->mask;

        while (rec->slot[s].rank1 && rec->slot[s].hash != h)
            s = (s + 1) & rec->mask;
        if (!rec->slot[s].rank1) { /* a repeated hash keeps its first (newest) rank */
            rec->slot[s].hash = h;
            rec->slot[s].rank1 = i + 1;
        }
    }
    rec->n = n;
    rec->valid = true;
out:
    /* a worker does not log: status says it (scan.recency) */
    atomic_store(&fs->rec_state, rec->valid ? 1 : 2);
    free(buf);
    kvcd_fs_sys->close(fd);
}

/* 1 + the position of hash in the journal (1 = most recent), 0 if absent. */
uint64_t kvcd_fs_rec_rank(const fs_rec_t *rec, uint64_t hash)
{
    uint64_t s;

    if (!rec->valid)
        return 0;
    for (s = hash & rec->mask; rec->slot[s].rank1; s = (s + 1) & rec->mask)
        if (rec->slot[s].hash == hash)
            return rec->slot[s].rank1;
    return 0;
}

/* The journal has been applied (or was bad): remove it and free rec. */
void kvcd_fs_rec_done(fs_t *fs, fs_rec_t *rec)
{
    if (rec->found && kvcd_fs_sys->unlinkat(fs->base_fd, fs->rec_name, 0) && errno != ENOENT)
        kvcd_fs_err(fs, "recency unlink", fs->rec_name, errno);
    free(rec->slot);
    memset(rec, 0, sizeof(*rec));
}
