/*
 * fs.c - the filesystem L2 adapter: one file per object under base_path.
 *
 * Files are named as LMCache's fs adapter names them, with an unambiguous
 * escape and a rule for names longer than NAME_MAX (object/format.c), optionally
 * spread over hash-prefix subdirectories (dir_levels). A file holds the payload
 * followed, unless checksum is "none", by a 64-byte trailer binding it to its
 * length, its XXH3-64 and the digest of its key. docs/ADAPTERS.md documents the
 * fields, the name rules and the trailer byte by byte.
 *
 * Invariants:
 *  - A name is published only by renaming a complete temp file from
 *    relative_tmp_dir, so it either does not exist or holds a whole object; a
 *    failed store unlinks its temp file.
 *  - Every load of a checksummed file verifies the trailer; a bad file is a
 *    counted miss and is unlinked, but only if the name still refers to the
 *    inode that was read (another daemon may have replaced it meanwhile).
 *  - Every path is relative to the base directory's descriptor and made of
 *    escaped key bytes: no "/" other than the hash-prefix levels, never "." or
 *    "..", no NUL, no component longer than NAME_MAX; symlinks are not followed.
 *  - A store reserves its bytes first, evicting least recently used files until
 *    both the capacity bound and the free-space floor hold (fs/index.c), or
 *    fails with -ENOSPC without writing.
 *  - The directory is the truth: lookup and load stat and open the file, so the
 *    files of other daemons sharing the directory are hits. The in-memory index
 *    only accounts usage and orders eviction; the background scan rebuilds it,
 *    in the order the last close saved (fs/recency.c).
 *    Nothing is pinned (fs/index.c says why).
 *  - No open can block: files are opened O_NONBLOCK and anything that fstat
 *    does not call a regular file is a miss, left alone (it is not ours).
 *  - A temp file is swept at once only when its name proves its writer dead
 *    (this host, boot and pid namespace, and its pid gone or reused by us);
 *    any other only once older than orphan_tmp_age_s (an hour by default).
 *  - A disk that is full (or read-only) at start-up is served read-only and
 *    reported unhealthy until a write succeeds; stores that fail for a cause
 *    that does not pass by itself keep the instance unhealthy until one works.
 *
 * Threading: store, lookup, load, remove, touch and background run on threadpool
 * workers, concurrently on one instance; the index is guarded by `mu`, counters
 * are atomics. init, status and close run on the loop thread; status makes no
 * system call. Nothing here uses libuv. Every system call goes through
 * kvcd_fs_sys (fs/sys.c, test hooks in fs.h) so that tests can inject faults.
 *
 * The helpers in the fs directory are compiled with the core (they are not
 * adapters); this file defines the adapter object.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "adapters/adapter.h"
#include "adapters/fs/fs_int.h"

static const char *const odf_name[ODF_N] = {"unsupported", "unaligned_buffer", "io_einval"};

/* ---- storing: temp file, hash-prefix directories, orphans ----------------- */

/* Create the hash-prefix directories of path ("ab/" or "ab/cd/"). */
static int mk_levels(fs_t *fs, const char *path)
{
    char d[8];
    int l;

    for (l = 0; l < fs->dir_levels; l++) {
        memcpy(d, path, (size_t)l * 3 + 2);
        d[l * 3 + 2] = '\0';
        if (kvcd_fs_sys->mkdirat(fs->base_fd, d, fs->dir_mode) != 0) {
            if (errno != EEXIST)
                return -errno;
        } else if (fs->chmod_dirs) {
            int fd = kvcd_fs_sys->openat(fs->base_fd, d, OPEN_DIR | O_NOFOLLOW, 0);

            if (fd >= 0) {
                kvcd_fs_sys->fchmod(fd, fs->dir_mode);
                kvcd_fs_sys->close(fd);
            }
        }
    }
    return 0;
}

/* fsync the directory holding path, so that the rename survives a crash. */
static int sync_dir(fs_t *fs, const char *path)
{
    char d[8];
    int fd, r = 0;

    if (fs->dir_levels == 0)
        return kvcd_fs_sys->fsync(fs->base_fd) ? -errno : 0;
    memcpy(d, path, (size_t)fs->dir_levels * 3 - 1);
    d[fs->dir_levels * 3 - 1] = '\0';
    if ((fd = kvcd_fs_sys->openat(fs->base_fd, d, OPEN_DIR | O_NOFOLLOW, 0)) < 0)
        return -errno;
    if (kvcd_fs_sys->fsync(fd))
        r = -errno;
    kvcd_fs_sys->close(fd);
    return r;
}

/* Whether the writer of temp file `name` is provably dead: the name is in this
 * daemon's format and says this host, this boot and this pid namespace (both
 * known), and its pid is ours with another nonce (an earlier process) or no
 * longer exists. *mine is set for our own files, which are in flight. A pid
 * from another namespace, boot or host means nothing here, so such a file
 * (like any name that does not parse) is left to the age rule. */
static bool writer_dead(fs_t *fs, const char *name, bool *mine)
{
    char host[64], boot[17];
    uint64_t ns = 0, nonce = 0;
    int pid = 0, n = 0;

    *mine = false;
    if (sscanf(name, "%63[A-Za-z0-9-].%16[0-9a-f].%" SCNu64 ".%d.%" SCNx64 ".%*d.%*u.tmp%n", host,
               boot, &ns, &pid, &nonce, &n) != 5 ||
        n <= 0 || name[n] != '\0' || strcmp(host, fs->host) || strcmp(boot, fs->boot) ||
        !fs->pidns || ns != fs->pidns || !strcmp(fs->boot, "0000000000000000"))
        return false;
    if (nonce == fs->nonce) {
        *mine = true;
        return false;
    }
    return pid == fs->pid || (pid > 0 && kvcd_fs_sys->kill(pid, 0) != 0 && errno == ESRCH);
}

/* Sweep temp files left by writers that died: at once when writer_dead proves
 * it, else once older than orphan_tmp_age_s (other hosts, namespaces or boots
 * sharing the directory, older name formats, unparsable names). The nonce is
 * per process, so instances of one process never sweep each other. */
static void sweep_tmp(fs_t *fs)
{
    struct dirent *de;
    struct timespec ts;
    DIR *d;
    int fd;
    uint64_t wall;

    if (fs->tmp_fd < 0)
        return; /* read-only since start: there is no temp dir yet */
    fd = kvcd_fs_sys->openat(fs->tmp_fd, ".", OPEN_DIR, 0);
    if (fd < 0) {
        kvcd_fs_err(fs, "sweep", fs->tmp_dir, errno);
        return;
    }
    if (!(d = kvcd_fs_sys->fdopendir(fd))) {
        kvcd_fs_err(fs, "sweep", fs->tmp_dir, errno);
        kvcd_fs_sys->close(fd);
        return;
    }
    kvcd_fs_sys->clock_gettime(CLOCK_REALTIME, &ts);
    wall = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    while ((de = kvcd_fs_sys->readdir(d))) {
        bool mine, gone;
        struct stat st;

        if (de->d_name[0] == '.' || de->d_type == DT_DIR)
            continue;
        gone = writer_dead(fs, de->d_name, &mine);
        if (mine)
            continue;
        if (!gone) {
            uint64_t mt;

            if (kvcd_fs_sys->fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW))
                continue;
            mt = (uint64_t)st.st_mtim.tv_sec * 1000 + (uint64_t)st.st_mtim.tv_nsec / 1000000;
            if (!S_ISREG(st.st_mode) || mt + fs->orphan_age_ms > wall)
                continue;
        }
        if (kvcd_fs_sys->unlinkat(dirfd(d), de->d_name, 0) == 0)
            CNT(fs->orphans_removed, 1);
    }
    kvcd_fs_sys->closedir(d);
}

static size_t tlen_of(const fs_t *fs)
{
    return fs->checksum ? TRL_SIZE : 0;
}

/* ---- the methods, one key at a time --------------------------------------- */

/* Write the object into a fresh temp file and rename it to path. 0 or -errno
 * (counted); a failed attempt leaves no temp file. */
static int publish(fs_t *fs, const kvcd_l2_item_t *it, const char *path, const uint8_t *trl)
{
    char tmp[192];
    int fd, r, c;

    if ((fd = kvcd_fs_tmp_create(fs, tmp, sizeof(tmp))) < 0)
        return kvcd_fs_err(fs, "store create", fs->tmp_dir, -fd);
    r = kvcd_fs_write_obj(fs, fd, it->buf, it->len, trl, tlen_of(fs));
    if (r)
        r = kvcd_fs_err(fs, "store write", tmp, -r);
    if (!r && fs->fsync_on && kvcd_fs_sys->fdatasync(fd))
        r = kvcd_fs_err(fs, "store fsync", tmp, errno);
    c = kvcd_fs_sys->close(fd);
    if (!r && c)
        r = kvcd_fs_err(fs, "store close", tmp, errno);
    if (!r && kvcd_fs_sys->renameat(fs->tmp_fd, tmp, fs->base_fd, path)) {
        int e = errno;

        if (e == ENOENT && fs->dir_levels && (e = -mk_levels(fs, path)) == 0 &&
            kvcd_fs_sys->renameat(fs->tmp_fd, tmp, fs->base_fd, path))
            e = errno;
        if (e)
            r = kvcd_fs_err(fs, "store rename", path, e);
    }
    if (r) {
        kvcd_fs_sys->unlinkat(fs->tmp_fd, tmp, 0);
        return r;
    }
    if (fs->fsync_on && (c = sync_dir(fs, path)))
        kvcd_fs_err(fs, "store fsync dir", path, -c); /* the file is there */
    return 0;
}

static int store_one(fs_t *fs, kvcd_l2_item_t *it)
{
    char path[REL_MAX];
    uint8_t dig[16], trl[TRL_SIZE];
    uint64_t fbytes = (uint64_t)it->len + tlen_of(fs), t;
    struct stat st;
    int r;

    if ((r = kvcd_obj_name(fs->dir_levels, &it->key, path, dig)))
        return r;
    if (fs->lmc_names && (r = kvcd_obj_name_lmcache(&it->key, false, path)))
        return r; /* a key LMCache cannot name (its '@' rules, NAME_MAX) */
    if (it->len && !it->buf)
        return KVCD_EBADFIELD;
    /* Published files are immutable and whole: the same name and length is the
     * same object (a damaged one is caught and removed by the next load). */
    if (fs->skip_existing &&
        kvcd_fs_sys->fstatat(fs->base_fd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISREG(st.st_mode) && (uint64_t)st.st_size == fbytes) {
        if (kvcd_fs_idx_touch(fs, path, fbytes))
            kvcd_fs_reserve(fs, 0);
        CNT(fs->store_skipped, 1);
        return 0;
    }
    t = kvcd_fs_now_ms();
    if (t >= LD(fs->next_sweep)) {
        uint64_t ns = LD(fs->next_sweep);

        if (atomic_compare_exchange_strong(&fs->next_sweep, &ns, t + fs->orphan_age_ms))
            sweep_tmp(fs);
    }
    if (fs->tmp_fd < 0 && kvcd_fs_recover(fs) && fs->tmp_fd < 0) {
        r = -(LD(fs->ro_errno) ? LD(fs->ro_errno) : ENOSPC); /* no temp dir: full disk */
        kvcd_fs_store_failed(fs, -r);
        return r;
    }
    if ((r = kvcd_fs_reserve(fs, fbytes)))
        return r;
    if (fs->checksum)
        kvcd_obj_trl_build(trl, it->buf, it->len, dig);
    r = publish(fs, it, path, trl);
    /* Full although the floor held (a quota, floor 0, another writer): make
     * room by evicting our least recently used files, and try once more. */
    if ((r == -ENOSPC || r == -EDQUOT) && kvcd_fs_evict(fs, fbytes))
        r = publish(fs, it, path, trl);
    kvcd_fs_unreserve(fs, fbytes);
    if (r) {
        kvcd_fs_store_failed(fs, -r);
        return r;
    }
    kvcd_fs_store_worked(fs);
    if (kvcd_fs_idx_touch(fs, path, fbytes))
        kvcd_fs_reserve(fs, 0); /* replaced a file another daemon had made longer */
    CNT(fs->stores, 1);
    CNT(fs->store_bytes, it->len);
    it->size = it->len;
    return 0;
}

/* A file proven damaged (it carries kvcd's trailer, which does not vouch for
 * it): count it, and unlink it if the name still refers to the inode we read.
 * Only files under kvcd's own name for the key come here: a file without a
 * kvcd trailer is never proven damaged. */
static int bad_file(fs_t *fs, const char *path, const struct stat *seen)
{
    struct stat st;

    CNT(fs->checksum_fail, 1);
    if (kvcd_fs_sys->fstatat(fs->base_fd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        st.st_ino == seen->st_ino && st.st_dev == seen->st_dev)
        kvcd_fs_sys->unlinkat(fs->base_fd, path, 0);
    kvcd_fs_idx_drop(fs, path);
    return KVCD_ECHECKSUM;
}

static bool is_miss(int e)
{
    return e == ENOENT || e == ENOTDIR || e == ELOOP;
}

/* Where a key's file is and what it holds. The names tried, in order: the one
 * stores write (kvcd's escaped name, or LMCache's with format "lmcache"),
 * kvcd's name if that is another, LMCache 0.5.6's own name, LMCache's older
 * 3-field name. own: found under kvcd's own name (the only place a damaged
 * file is removed from). */
typedef struct {
    char path[REL_MAX];
    uint8_t dig[16];
    struct stat st;
    int fd, kind;
    bool own;
    uint64_t plen;
} loc_t;

enum { L_LOOKUP, L_LOAD };

/* The names a key's file may have (see loc_t), duplicates dropped: how many,
 * or a negative code for a key that no name can hold. *own: the index of
 * kvcd's own name. */
static int names_of(fs_t *fs, const kvcd_key_t *k, char (*names)[REL_MAX], int *own,
                    uint8_t dig[16])
{
    int n, r, i, j, m = 0, own_in;

    if ((r = kvcd_obj_name(fs->dir_levels, k, names[1], dig)))
        return r;
    if (fs->lmc_names) {
        if ((r = kvcd_obj_name_lmcache(k, false, names[0])))
            return r;
        n = 2;
    } else {
        memcpy(names[0], names[1], REL_MAX);
        n = 1;
        if (kvcd_obj_name_lmcache(k, false, names[n]) == 0)
            n++;
    }
    if (kvcd_obj_name_lmcache(k, true, names[n]) == 0)
        n++;
    *own = fs->lmc_names ? 1 : 0;
    own_in = *own;
    for (i = 0; i < n; i++) {
        for (j = 0; j < m && strcmp(names[i], names[j]); j++)
            ;
        if (i == own_in)
            *own = j; /* its first copy, or where it goes now */
        if (j < m)
            continue;
        if (m != i)
            memcpy(names[m], names[i], REL_MAX);
        m++;
    }
    return m;
}

/* 0 with l->fd open, KVCD_ENOTFOUND, KVCD_ECHECKSUM (load: a damaged file of
 * ours, removed), KVCD_EBADFIELD (a key no name can hold) or -errno. */
static int locate(fs_t *fs, const kvcd_key_t *k, int mode, loc_t *l)
{
    char names[4][REL_MAX];
    uint8_t tail[KVCD_OBJ_TAIL];
    int n, i, r, own_i;

    if ((n = names_of(fs, k, names, &own_i, l->dig)) < 0)
        return n;
    for (i = 0; i < n; i++) {
        ssize_t got;
        size_t tl;

        l->fd = kvcd_fs_sys->openat(fs->base_fd, names[i], OPEN_FILE, 0);
        if (l->fd < 0) {
            if (!is_miss(errno))
                return kvcd_fs_err(fs, "open", names[i], errno);
            kvcd_fs_idx_drop(fs, names[i]);
            continue;
        }
        memcpy(l->path, names[i], REL_MAX);
        l->own = i == own_i;
        if (kvcd_fs_sys->fstat(l->fd, &l->st)) {
            r = kvcd_fs_err(fs, "stat", names[i], errno);
            kvcd_fs_sys->close(l->fd);
            return r;
        }
        if (!S_ISREG(l->st.st_mode)) { /* a FIFO, device or directory: not ours, kept */
            kvcd_fs_idx_drop(fs, names[i]);
            goto next;
        }
        tl = (uint64_t)l->st.st_size < KVCD_OBJ_TAIL ? (size_t)l->st.st_size : KVCD_OBJ_TAIL;
        do
            got = tl ? kvcd_fs_sys->pread(l->fd, tail, tl, l->st.st_size - (off_t)tl) : 0;
        while (got < 0 && errno == EINTR);
        if (got < 0) {
            r = kvcd_fs_err(fs, "read", names[i], errno);
            kvcd_fs_sys->close(l->fd);
            return r;
        }
        l->kind = kvcd_obj_classify(tail, (size_t)got, (uint64_t)got < tl ? (uint64_t)got
                                                                          : (uint64_t)l->st.st_size);
        if (l->kind == KVCD_OBJ_KVCD && memcmp(tail + got - TRL_SIZE + 32, l->dig, 16))
            l->kind = KVCD_OBJ_DAMAGED; /* a whole kvcd file of another key */
        if (l->kind == KVCD_OBJ_RAW) {
            if (!fs->read_raw)
                goto next; /* not served, and not ours to delete */
            l->plen = (uint64_t)l->st.st_size;
            return 0;
        }
        l->plen = (uint64_t)l->st.st_size >= TRL_SIZE ? (uint64_t)l->st.st_size - TRL_SIZE : 0;
        if (l->kind == KVCD_OBJ_KVCD)
            return 0;
        /* damaged: under our own name the load proves it and removes it */
        if (l->own) {
            if (mode == L_LOOKUP)
                return 0;
            r = bad_file(fs, l->path, &l->st);
            kvcd_fs_sys->close(l->fd);
            return r;
        }
    next:
        kvcd_fs_sys->close(l->fd);
    }
    return KVCD_ENOTFOUND;
}

static int lookup_one(fs_t *fs, kvcd_l2_item_t *it)
{
    loc_t l;
    int r;

    CNT(fs->lookups, 1);
    if ((r = locate(fs, &it->key, L_LOOKUP, &l)))
        return r;
    kvcd_fs_sys->close(l.fd);
    it->size = (size_t)l.plen;
    if (kvcd_fs_idx_touch(fs, l.path, (uint64_t)l.st.st_size))
        kvcd_fs_reserve(fs, 0);
    CNT(fs->hits, 1);
    return 0;
}

static int load_one(fs_t *fs, kvcd_l2_item_t *it)
{
    uint8_t trl[TRL_SIZE];
    loc_t l;
    bool kv;
    int r;

    if (it->len && !it->buf)
        return KVCD_EBADFIELD;
    if ((r = locate(fs, &it->key, L_LOAD, &l)))
        return r;
    kv = l.kind == KVCD_OBJ_KVCD;
    it->size = (size_t)l.plen;
    if (l.plen > it->len) {
        r = -EMSGSIZE; /* stored again with another size since lookup */
        goto out;
    }
    r = kvcd_fs_read_obj(fs, l.fd, it->buf, (size_t)l.plen, trl, kv ? TRL_SIZE : 0);
    if (r < 0) {
        r = kvcd_fs_err(fs, "load read", l.path, -r);
        goto out;
    }
    if (r == 1) { /* shorter than fstat said: changing under us, a miss */
        kvcd_fs_idx_drop(fs, l.path);
        r = KVCD_ENOTFOUND;
        goto out;
    }
    if (kv && (fs->verify ? !kvcd_obj_trl_verify(trl, l.plen, l.dig, it->buf)
                          : !kvcd_obj_trl_sane(trl, l.plen) || memcmp(trl + 32, l.dig, 16))) {
        r = l.own ? bad_file(fs, l.path, &l.st) : KVCD_ENOTFOUND;
        goto out;
    }
    CNT(fs->loads, 1);
    CNT(fs->load_bytes, it->size);
    if (kvcd_fs_idx_touch(fs, l.path, (uint64_t)l.st.st_size))
        kvcd_fs_reserve(fs, 0);
    r = 0;
out:
    kvcd_fs_sys->close(l.fd);
    return r;
}

/* Removing a key removes its file under every name it may have. */
static int remove_one(fs_t *fs, kvcd_l2_item_t *it)
{
    char names[4][REL_MAX];
    uint8_t dig[16];
    int n, i, own, r = KVCD_ENOTFOUND;

    if ((n = names_of(fs, &it->key, names, &own, dig)) < 0)
        return n;
    for (i = 0; i < n; i++) {
        if (kvcd_fs_sys->unlinkat(fs->base_fd, names[i], 0)) {
            if (!is_miss(errno) && errno != EISDIR)
                return kvcd_fs_err(fs, "remove", names[i], errno);
        } else {
            CNT(fs->removes, 1);
            r = 0;
        }
        kvcd_fs_idx_drop(fs, names[i]);
    }
    return r;
}

/* Keys run one after another within a batch: the core splits a request into
 * batches over the threadpool, which is where the parallelism is. */
static void run(fs_t *fs, kvcd_l2_batch_t *b, int (*one)(fs_t *, kvcd_l2_item_t *))
{
    size_t i;

    for (i = 0; i < b->n; i++) {
        kvcd_l2_item_t *it = &b->items[i];

        /* deadline_ms is uv_now() based: CLOCK_MONOTONIC milliseconds */
        if (b->deadline_ms && kvcd_fs_now_ms() > b->deadline_ms) {
            it->result = KVCD_ETIMEDOUT;
            CNT(fs->timeouts, 1);
            continue;
        }
        it->result = one(fs, it);
        if (it->result == 0 || it->result == KVCD_ENOTFOUND)
            atomic_store(&fs->err_streak, 0);
    }
}

static void fs_store(void *self, kvcd_l2_batch_t *b)
{
    run(self, b, store_one);
}

static void fs_lookup(void *self, kvcd_l2_batch_t *b)
{
    run(self, b, lookup_one);
}

static void fs_load(void *self, kvcd_l2_batch_t *b)
{
    run(self, b, load_one);
}

static void fs_remove(void *self, kvcd_l2_batch_t *b)
{
    run(self, b, remove_one);
}

/* The core's L1 hits: move the files to the most recent end of the LRU list,
 * in the batch's order (the last key is the most recent). An index update
 * only: no system call, no disk write; the recency journal saves the order at
 * close. A key the index does not know (never seen, evicted, another daemon's
 * file not looked up yet) is left alone. */
static void fs_touch(void *self, kvcd_l2_batch_t *b)
{
    fs_t *fs = self;
    char path[REL_MAX];
    uint8_t dig[16];
    size_t i;

    for (i = 0; i < b->n; i++) {
        if (kvcd_obj_name(fs->dir_levels, &b->items[i].key, path, dig))
            continue;
        CNT(fs->touches, 1);
        if (!kvcd_fs_idx_refresh(fs, path))
            CNT(fs->touches_unknown, 1);
    }
}

/* ---- start-up scan -------------------------------------------------------- */

typedef struct {
    ent_t **v;
    size_t n, cap;
} vec_t;

/* Collect every *.data file under dir (base, or a hash-prefix level). */
static void scan_dir(fs_t *fs, int pfd, const char *name, const char *rel, int depth, vec_t *out,
                     const fs_rec_t *rec)
{
    struct dirent *de;
    DIR *d;
    int fd = kvcd_fs_sys->openat(pfd, name, OPEN_DIR | O_NOFOLLOW, 0);

    if (fd < 0)
        return;
    if (!(d = kvcd_fs_sys->fdopendir(fd))) {
        kvcd_fs_sys->close(fd);
        return;
    }
    while ((de = kvcd_fs_sys->readdir(d))) {
        char sub[REL_MAX];
        struct stat st;
        uint64_t rank;
        ent_t *e;

        if (de->d_name[0] == '.' && (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2])))
            continue;
        if (depth == 0 && !strcmp(de->d_name, fs->tmp_top))
            continue;
        if (depth < 2 && kvcd_fs_is_hex2(de->d_name) &&
            (de->d_type == DT_DIR || de->d_type == DT_UNKNOWN)) {
            snprintf(sub, sizeof(sub), "%s%s/", rel, de->d_name);
            scan_dir(fs, dirfd(d), de->d_name, sub, depth + 1, out, rec);
            continue;
        }
        if (!kvcd_fs_is_data(de->d_name) || strlen(rel) + strlen(de->d_name) >= REL_MAX ||
            (de->d_type != DT_REG && de->d_type != DT_UNKNOWN))
            continue;
        if (kvcd_fs_sys->fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) ||
            !S_ISREG(st.st_mode))
            continue;
        snprintf(sub, sizeof(sub), "%s%s", rel, de->d_name);
        if (out->n == out->cap) {
            size_t nc = out->cap ? out->cap * 2 : 1024;
            ent_t **nv = realloc(out->v, nc * sizeof(*nv));

            if (!nv)
                continue;
            out->v = nv;
            out->cap = nc;
        }
        if (!(e = kvcd_fs_ent_new(sub, (uint64_t)st.st_size)))
            continue;
        /* recency: its place in the journal of the last run (above any file
         * time), else its last access or write */
        if ((rank = kvcd_fs_rec_rank(rec, e->hash)) != 0) {
            e->stamp = UINT64_MAX - rank;
            CNT(fs->rec_restored, 1);
        } else {
            uint64_t at = (uint64_t)st.st_atim.tv_sec * 1000 +
                          (uint64_t)st.st_atim.tv_nsec / 1000000,
                     mt = (uint64_t)st.st_mtim.tv_sec * 1000 +
                          (uint64_t)st.st_mtim.tv_nsec / 1000000;

            e->stamp = at > mt ? at : mt;
        }
        out->v[out->n++] = e;
        CNT(fs->scan_files, 1);
        CNT(fs->scan_bytes, (uint64_t)st.st_size);
    }
    kvcd_fs_sys->closedir(d);
}

/* Sweep orphans, rebuild usage and recency from the directory, then evict down
 * to the bounds; read-only since start, make room and probe again. Runs once on
 * a worker after init; stores, lookups and loads run meanwhile. */
static void fs_background(void *self)
{
    fs_t *fs = self;
    vec_t v = {NULL, 0, 0};
    fs_rec_t rec;

    atomic_store(&fs->scan_state, 1);
    atomic_store(&fs->next_sweep, kvcd_fs_now_ms() + fs->orphan_age_ms);
    sweep_tmp(fs);
    kvcd_fs_rec_load(fs, &rec);
    scan_dir(fs, fs->base_fd, ".", "", 0, &v, &rec);
    kvcd_fs_idx_add_scanned(fs, v.v, v.n);
    kvcd_fs_rec_done(fs, &rec);
    free(v.v);
    kvcd_fs_reserve(fs, 0);
    if (LD(fs->ro_errno))
        kvcd_fs_recover(fs);
    atomic_store(&fs->scan_state, 2);
}

/* ---- life cycle ----------------------------------------------------------- */

/* One nonce per process (not per instance): instances of one process must see
 * each other's temp files as live, a later process with the same pid must not. */
static uint64_t proc_nonce;
static pthread_once_t nonce_once = PTHREAD_ONCE_INIT;

static void nonce_init(void)
{
    struct timespec ts;

    if (getrandom(&proc_nonce, sizeof(proc_nonce), GRND_NONBLOCK) == sizeof(proc_nonce))
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    proc_nonce = XXH3_64bits_withSeed(&ts, sizeof(ts), (uint64_t)getpid());
}

/* The boot and pid namespace this process runs in: with the host they say
 * whether a temp file's pid means a process here. 0 / "0..0" when unknown. */
static void boot_and_pidns(fs_t *fs)
{
    char id[64] = "";
    struct stat st;
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
    uint64_t b = 0;

    if (f) {
        if (fgets(id, sizeof(id), f))
            b = XXH3_64bits(id, strlen(id));
        fclose(f);
    }
    snprintf(fs->boot, sizeof(fs->boot), "%016" PRIx64, b);
    fs->pidns = stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

static void fs_close(void *self);

static int fs_init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *err,
                   size_t errlen)
{
    fs_t *fs = self;
    struct statvfs sv;
    char host[64];
    size_t i;
    int r;

    /* self holds the spec's fields already (the core parser) */
    fs->svc = env->svc;
    fs->base_fd = -1;
    atomic_init(&fs->tmp_fd, -1);
    atomic_store(&fs->odirect_ok, true);
    /* until background has run, stores do not sweep (it sweeps first) */
    atomic_store(&fs->next_sweep, UINT64_MAX);
    pthread_mutex_init(&fs->mu, NULL);
    pthread_mutex_init(&fs->rmu, NULL);
    fs->inited = true;
    /* first: from here on fs_close frees the strings, so they must be ours */
    if ((r = kvcd_fs_parse_spec(fs, spec, err, errlen)))
        goto fail;
    if (kvcd_fs_idx_init(fs)) {
        r = kvcd_errf(err, errlen, KVCD_ECONFIG, "base_path: out of memory");
        goto fail;
    }

    /* identity of this instance's temp files */
    if (gethostname(host, sizeof(host)))
        strcpy(host, "host");
    host[sizeof(host) - 1] = '\0';
    for (i = 0; host[i]; i++)
        if (!isalnum((unsigned char)host[i]) && host[i] != '-')
            host[i] = '-';
    memcpy(fs->host, host, sizeof(host));
    fs->pid = getpid();
    boot_and_pidns(fs);
    pthread_once(&nonce_once, nonce_init);
    fs->nonce = proc_nonce;
    snprintf(fs->ident, sizeof(fs->ident), "%s.%s.%" PRIu64 ".%d.%016" PRIx64, fs->host, fs->boot,
             fs->pidns, (int)fs->pid, fs->nonce);

    if ((r = kvcd_fs_open_dirs(fs, err, errlen)))
        goto fail;
    if (LD(fs->ro_errno)) {
        KVCD_ALOG(fs->svc, KVCD_ALOG_WARNING, "fs",
                 "%s: %s; starting read-only: lookups and loads are served, stores fail until "
                 "a write works again (on a full disk own files are evicted to make room)",
                 env && env->instance ? env->instance : "fs", err);
        err[0] = '\0';
    }
    if (kvcd_fs_sys->fstatvfs(fs->base_fd, &sv) == 0) {
        atomic_store(&fs->fs_free, (uint64_t)sv.f_bavail * sv.f_frsize);
        atomic_store(&fs->fs_total, (uint64_t)sv.f_blocks * sv.f_frsize);
        atomic_store(&fs->fs_stat_at, kvcd_fs_now_ms());
    }
    return 0;
fail:
    fs_close(fs);
    return r;
}

static void fs_close(void *self)
{
    fs_t *fs = self;

    if (!fs->inited)
        return;
    kvcd_fs_rec_save(fs); /* logs its own failure; the files are what matters */
    kvcd_fs_idx_free(fs);
    if (fs->tmp_fd >= 0)
        kvcd_fs_sys->close(fs->tmp_fd);
    if (fs->base_fd >= 0)
        kvcd_fs_sys->close(fs->base_fd);
    free(fs->base_path);
    free(fs->tmp_dir);
    pthread_mutex_destroy(&fs->mu);
    pthread_mutex_destroy(&fs->rmu);
    memset(fs, 0, sizeof(*fs));
}

/* ---- status --------------------------------------------------------------- */

#define JSET(o, k, v) json_object_set_new((o), (k), (v))
#define JU(x) json_integer((json_int_t)(x))

static void fs_status(void *self, json_t *out)
{
    fs_t *fs = self;
    json_t *opt = json_object(), *errs = json_object(), *od = json_object(), *cnt = json_object(),
           *scan = json_object();
    uint64_t t = kvcd_fs_now_ms(), used, reserved, nent, streak = LD(fs->err_streak),
             total = LD(fs->fs_total), last_at;
    char last[sizeof(fs->last_err)], mode[8], reason[sizeof(last) + 96];
    bool recent = streak != 0 && t - LD(fs->err_at) < fs->health_window_ms;
    int i, ro = LD(fs->ro_errno), wfail = LD(fs->wfail);

    pthread_mutex_lock(&fs->mu);
    used = fs->used;
    reserved = fs->reserved;
    nent = fs->nent;
    memcpy(last, fs->last_err, sizeof(last));
    last_at = fs->last_err_at;
    pthread_mutex_unlock(&fs->mu);

    if (ro)
        snprintf(reason, sizeof(reason), "read-only: cannot write into base_path (%s)",
                 kvcd_errname(-ro));
    else if (wfail)
        snprintf(reason, sizeof(reason), "stores fail: %s (last error: %s)", kvcd_errname(-wfail),
                 last);
    else if (recent)
        snprintf(reason, sizeof(reason), "recent error: %s", last);
    JSET(out, "healthy", json_boolean(!ro && !wfail && !recent));
    JSET(out, "reason", ro || wfail || recent ? json_string(reason) : json_null());
    JSET(out, "read_only", json_boolean(ro != 0));
    JSET(out, "base_path", json_string(fs->base_path));
    JSET(opt, "relative_tmp_dir", json_string(fs->tmp_dir));
    JSET(opt, "read_ahead_size", JU(fs->read_ahead));
    JSET(opt, "use_odirect", json_boolean(fs->odirect));
    JSET(opt, "max_capacity_gb", json_real(fs->max_capacity_gb));
    JSET(opt, "min_free_gb", json_real(fs->min_free_gb));
    JSET(opt, "min_free_percent", json_real(fs->floor_pct));
    JSET(opt, "checksum", json_string(fs->verify ? "xxh3" : "none"));
    JSET(opt, "format", json_string(fs->lmc_names ? "lmcache" : "kvcd"));
    JSET(opt, "read_raw", json_boolean(fs->read_raw));
    JSET(opt, "fsync", json_boolean(fs->fsync_on));
    snprintf(mode, sizeof(mode), "%04o", (unsigned)fs->file_mode);
    JSET(opt, "file_mode", json_string(mode));
    snprintf(mode, sizeof(mode), "%04o", (unsigned)fs->dir_mode);
    JSET(opt, "dir_mode", json_string(mode));
    JSET(opt, "dir_levels", JU(fs->dir_levels));
    JSET(opt, "skip_existing", json_boolean(fs->skip_existing));
    JSET(opt, "orphan_tmp_age_s", JU(fs->orphan_age_ms / 1000));
    JSET(opt, "health_window_ms", JU(fs->health_window_ms));
    JSET(out, "options", opt);
    JSET(out, "used_bytes", JU(used));
    JSET(out, "reserved_bytes", JU(reserved));
    JSET(out, "capacity_bytes", JU(fs->capacity));
    JSET(out, "files", JU(nent));
    JSET(out, "fs_free_bytes", JU(LD(fs->fs_free)));
    JSET(out, "fs_total_bytes", JU(total));
    JSET(out, "free_floor_bytes", JU(kvcd_fs_floor_of(fs, total)));
    JSET(out, "fs_stat_age_ms", JU(t - LD(fs->fs_stat_at)));
    JSET(out, "tmp_name_prefix", json_string(fs->ident));

    for (i = 0; i < ERRNO_SLOTS; i++) {
        uint64_t n = LD(fs->errs[i]);
        char nm[24];
        const char *name = i ? kvcd_errname(-i) : "other";

        if (!n)
            continue;
        if (!strcmp(name, "ESYS")) {
            snprintf(nm, sizeof(nm), "errno_%d", i);
            name = nm;
        }
        JSET(errs, name, JU(n));
    }
    JSET(out, "errors", errs);
    if (last_at) {
        json_t *le = json_object();

        JSET(le, "what", json_string(last));
        JSET(le, "age_ms", JU(t - last_at));
        JSET(out, "last_error", le);
    } else {
        JSET(out, "last_error", json_null());
    }
    JSET(out, "checksum_failures", JU(LD(fs->checksum_fail)));

    JSET(od, "requested", json_boolean(fs->odirect));
    JSET(od, "supported", json_boolean(LD(fs->odirect_ok)));
    for (i = 0; i < ODF_N; i++) {
        json_t *c = json_object();
        int e = LD(fs->odf[i].first_errno);

        JSET(c, "count", JU(LD(fs->odf[i].count)));
        JSET(c, "errno", e ? json_string(kvcd_errname(-e)) : json_null());
        JSET(c, "logged", json_boolean(LD(fs->odf[i].logged)));
        JSET(od, odf_name[i], c);
    }
    JSET(out, "odirect_fallbacks", od);

    JSET(cnt, "stores", JU(LD(fs->stores)));
    JSET(cnt, "store_bytes", JU(LD(fs->store_bytes)));
    JSET(cnt, "stores_skipped_existing", JU(LD(fs->store_skipped)));
    JSET(cnt, "stores_rejected_no_space", JU(LD(fs->nospace)));
    JSET(cnt, "lookups", JU(LD(fs->lookups)));
    JSET(cnt, "lookup_hits", JU(LD(fs->hits)));
    JSET(cnt, "loads", JU(LD(fs->loads)));
    JSET(cnt, "load_bytes", JU(LD(fs->load_bytes)));
    JSET(cnt, "removes", JU(LD(fs->removes)));
    JSET(cnt, "evictions", JU(LD(fs->evictions)));
    JSET(cnt, "evicted_bytes", JU(LD(fs->evicted_bytes)));
    JSET(cnt, "eviction_errors", JU(LD(fs->evict_errors)));
    JSET(cnt, "timeouts", JU(LD(fs->timeouts)));
    JSET(cnt, "touches", JU(LD(fs->touches)));
    JSET(cnt, "touches_unknown", JU(LD(fs->touches_unknown)));
    JSET(out, "counters", cnt);

    i = LD(fs->scan_state);
    JSET(scan, "state", json_string(i == 0 ? "pending" : i == 1 ? "running" : "done"));
    JSET(scan, "files", JU(LD(fs->scan_files)));
    JSET(scan, "bytes", JU(LD(fs->scan_bytes)));
    JSET(scan, "orphans_removed", JU(LD(fs->orphans_removed)));
    JSET(scan, "recency_restored", JU(LD(fs->rec_restored)));
    i = LD(fs->rec_state);
    JSET(scan, "recency", json_string(i == 1 ? "applied" : i == 2 ? "invalid" : "none"));
    JSET(out, "scan", scan);
}

const kvcd_adapter_t kvcd_adapter_fs = {
    KVCD_ADAPTER_HEADER("fs", fs_t, KVCD_ADAPTER_BLOCKING | KVCD_ADAPTER_PERSISTENT),
    .doc = "files under a directory: persistent, shareable, bounded, checksummed",
    .fields = kvcd_fs_fields,
    .init = fs_init,
    .store = fs_store,
    .lookup = fs_lookup,
    .load = fs_load,
    .remove = fs_remove,
    .status = fs_status,
    .close = fs_close,
    .background = fs_background,
    .touch = fs_touch,
};
