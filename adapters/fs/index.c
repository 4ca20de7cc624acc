/*
 * index.c - the fs adapter's in-memory index: usage accounting, LRU, pins and
 * eviction.
 *
 * The directory is the truth; the index only knows which files exist (as far
 * as this instance has seen: its own stores, lookups and loads that found a
 * file, the start-up scan), how long they are, and in which order they were
 * used. A store reserves its bytes here before writing, evicting least recently
 * used files until the capacity bound and the free-space floor both hold.
 *
 * Nothing is pinned: every file in the index is evictable. A lookup hit only
 * refreshes recency, and so does the core's `touch` (its L1 hits), which only
 * moves a known entry and never inserts one. Pinning lookup hits until their load (the ABI has no
 * "release") leaked: kvcd's LOOKUP asks L2 about every key after the first
 * miss and loads only the prefix, so keys past a gap were pinned again and
 * again and never loaded, and a directory of them could not be evicted. No pin
 * is needed for correctness either: kvcd loads the L2 hits of a prefix into L1
 * before it answers LOOKUP, and the L1 pin covers the client's LOAD; a file
 * evicted between this adapter's lookup and load is an ENOTFOUND miss, never
 * wrong bytes (the load opens the name and verifies the trailer).
 *
 * Threading: everything under fs->mu; unlink() of a victim runs outside it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include <xxhash.h>

#include "adapters/fs/fs_int.h"

#define SCAN_BATCH 4096 /* scanned entries inserted per hold of the lock */

static void lru_unlink(ent_t *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
}

static void lru_head(fs_t *fs, ent_t *e)
{
    e->next = fs->lru.next;
    e->prev = &fs->lru;
    fs->lru.next->prev = e;
    fs->lru.next = e;
}

static void lru_tail(fs_t *fs, ent_t *e)
{
    e->prev = fs->lru.prev;
    e->next = &fs->lru;
    fs->lru.prev->next = e;
    fs->lru.prev = e;
}

static ent_t *idx_find(fs_t *fs, const char *path, uint64_t h)
{
    ent_t *e;

    for (e = fs->tab[h & fs->tab_mask]; e; e = e->hnext)
        if (e->hash == h && !strcmp(e->path, path))
            return e;
    return NULL;
}

/* Link e into the table (caller has checked it is absent) and account it. */
static void idx_link(fs_t *fs, ent_t *e)
{
    size_t b;

    if (fs->nent >= fs->tab_mask + 1) {
        size_t nb = (fs->tab_mask + 1) * 2, i;
        ent_t **nt = calloc(nb, sizeof(*nt));

        if (nt) { /* out of memory: keep the old table, chains get longer */
            for (i = 0; i <= fs->tab_mask; i++) {
                ent_t *x = fs->tab[i], *nx;

                for (; x; x = nx) {
                    nx = x->hnext;
                    x->hnext = nt[x->hash & (nb - 1)];
                    nt[x->hash & (nb - 1)] = x;
                }
            }
            free(fs->tab);
            fs->tab = nt;
            fs->tab_mask = nb - 1;
        }
    }
    b = e->hash & fs->tab_mask;
    e->hnext = fs->tab[b];
    fs->tab[b] = e;
    fs->nent++;
    fs->used += e->bytes;
}

/* Unlink e from table and LRU, unaccount it; the caller frees it. */
static void idx_unlink(fs_t *fs, ent_t *e)
{
    ent_t **pp = &fs->tab[e->hash & fs->tab_mask];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(e);
    fs->nent--;
    fs->used -= e->bytes;
}

ent_t *kvcd_fs_ent_new(const char *path, uint64_t bytes)
{
    size_t n = strlen(path);
    ent_t *e = malloc(sizeof(*e) + n + 1);

    if (!e)
        return NULL;
    memset(e, 0, sizeof(*e));
    memcpy(e->path, path, n + 1);
    e->hash = XXH3_64bits(path, n);
    e->bytes = bytes;
    return e;
}

/* path is in use now, `bytes` long: insert or refresh, most recent.
 * Returns true when that put usage over the capacity bound (a file another
 * daemon wrote, found by a lookup): the caller enforces the bound. */
bool kvcd_fs_idx_touch(fs_t *fs, const char *path, uint64_t bytes)
{
    uint64_t h = XXH3_64bits(path, strlen(path));
    ent_t *e, *ne = NULL;
    bool over;

    pthread_mutex_lock(&fs->mu);
    e = idx_find(fs, path, h);
    if (!e) {
        pthread_mutex_unlock(&fs->mu);
        ne = kvcd_fs_ent_new(path, bytes); /* allocate outside the lock */
        if (!ne)
            return false;
        pthread_mutex_lock(&fs->mu);
        e = idx_find(fs, path, h);
        if (!e) {
            e = ne;
            ne = NULL;
            idx_link(fs, e);
            lru_head(fs, e);
        }
    }
    if (e) {
        if (e->bytes != bytes) {
            fs->used = fs->used - e->bytes + bytes;
            e->bytes = bytes;
        }
        if (fs->lru.next != e) {
            lru_unlink(e);
            lru_head(fs, e);
        }
    }
    over = fs->capacity && fs->used + fs->reserved > fs->capacity;
    pthread_mutex_unlock(&fs->mu);
    free(ne);
    return over;
}

/* path was used (an L1 hit the core reports): most recent if the index knows
 * it, else nothing (no insert, no system call). true when it was known. */
bool kvcd_fs_idx_refresh(fs_t *fs, const char *path)
{
    uint64_t h = XXH3_64bits(path, strlen(path));
    ent_t *e;

    pthread_mutex_lock(&fs->mu);
    e = idx_find(fs, path, h);
    if (e && fs->lru.next != e) {
        lru_unlink(e);
        lru_head(fs, e);
    }
    pthread_mutex_unlock(&fs->mu);
    return e != NULL;
}

void kvcd_fs_idx_drop(fs_t *fs, const char *path)
{
    uint64_t h = XXH3_64bits(path, strlen(path));
    ent_t *e;

    pthread_mutex_lock(&fs->mu);
    e = idx_find(fs, path, h);
    if (e)
        idx_unlink(fs, e);
    pthread_mutex_unlock(&fs->mu);
    free(e);
}

/* Evict the least recently used file: false if the index is empty. Called and
 * returns with mu held; the unlink runs outside it. *freed grows by its bytes. */
static bool evict_lru(fs_t *fs, uint64_t *freed)
{
    ent_t *v = fs->lru.prev;

    if (v == &fs->lru)
        return false;
    idx_unlink(fs, v);
    *freed += v->bytes;
    pthread_mutex_unlock(&fs->mu);
    if (kvcd_fs_sys->unlinkat(fs->base_fd, v->path, 0) == 0) {
        CNT(fs->evictions, 1);
        CNT(fs->evicted_bytes, v->bytes);
    } else if (errno != ENOENT) {
        /* dropped from the index anyway, so one undeletable file cannot
         * stop eviction; its bytes are no longer accounted */
        CNT(fs->evict_errors, 1);
        kvcd_fs_err(fs, "evict", v->path, errno);
    }
    free(v);
    pthread_mutex_lock(&fs->mu);
    return true;
}

uint64_t kvcd_fs_evict(fs_t *fs, uint64_t bytes)
{
    uint64_t freed = 0;

    pthread_mutex_lock(&fs->mu);
    while (freed < bytes && evict_lru(fs, &freed))
        ;
    pthread_mutex_unlock(&fs->mu);
    return freed;
}

/* The free-space floor for a filesystem of `total` bytes. */
uint64_t kvcd_fs_floor_of(const fs_t *fs, uint64_t total)
{
    uint64_t p = (uint64_t)(fs->floor_pct / 100.0 * (double)total);

    return p > fs->floor_abs ? p : fs->floor_abs;
}

/* Reserve `need` bytes for a store, evicting least recently used files until
 * the capacity bound and the free-space floor both hold. need 0 just enforces
 * the bounds. 0 or -ENOSPC (nothing evicted when the bound cannot be met even
 * by evicting all we know of). A store refused for the floor is a full disk
 * (unhealthy, kvcd_fs_store_failed); one larger than the capacity bound is a
 * refusal of that object only. */
int kvcd_fs_reserve(fs_t *fs, uint64_t need)
{
    struct statvfs sv;
    uint64_t avail = 0, fl = 0, freed = 0, t = kvcd_fs_now_ms();
    bool floor_on = fs->floor_abs > 0 || fs->floor_pct > 0, floor_ok = true;

    if (fs->capacity && need > fs->capacity)
        goto nospace;
    if (floor_on) {
        if (kvcd_fs_sys->fstatvfs(fs->base_fd, &sv) == 0) {
            avail = (uint64_t)sv.f_bavail * sv.f_frsize;
            atomic_store(&fs->fs_free, avail);
            atomic_store(&fs->fs_total, (uint64_t)sv.f_blocks * sv.f_frsize);
            atomic_store(&fs->fs_stat_at, t);
            fl = kvcd_fs_floor_of(fs, (uint64_t)sv.f_blocks * sv.f_frsize);
        } else {
            kvcd_fs_err(fs, "statvfs", fs->base_path, errno);
            floor_on = false;
        }
    }
    pthread_mutex_lock(&fs->mu);
    for (;;) {
        bool cap_ok = !fs->capacity || fs->used + fs->reserved + need <= fs->capacity;
        /* in-flight reservations have not all reached the disk yet: count them */
        uint64_t want = fl + need + fs->reserved, have = avail + freed;

        floor_ok = !floor_on || have >= want;
        if (cap_ok && floor_ok) {
            fs->reserved += need;
            pthread_mutex_unlock(&fs->mu);
            return 0;
        }
        if (!floor_ok && want - have > fs->used)
            break; /* evicting everything we know of would not be enough */
        if (!evict_lru(fs, &freed))
            break;
    }
    pthread_mutex_unlock(&fs->mu);
    if (need && !floor_ok)
        kvcd_fs_store_failed(fs, ENOSPC);
nospace:
    if (need)
        CNT(fs->nospace, 1);
    return -ENOSPC;
}

void kvcd_fs_unreserve(fs_t *fs, uint64_t n)
{
    pthread_mutex_lock(&fs->mu);
    fs->reserved -= n;
    pthread_mutex_unlock(&fs->mu);
}

static int by_recency_desc(const void *a, const void *b)
{
    uint64_t x = (*(ent_t *const *)a)->stamp, y = (*(ent_t *const *)b)->stamp;

    return x < y ? 1 : x > y ? -1 : 0;
}

/* Add the files of the start-up scan (v[0..n), owned by the index from now on)
 * at the cold end of the LRU, newest first: files used since start are already
 * in the index and more recent than anything found on disk. */
void kvcd_fs_idx_add_scanned(fs_t *fs, ent_t **v, size_t n)
{
    size_t i;

    if (n)
        qsort(v, n, sizeof(*v), by_recency_desc);
    pthread_mutex_lock(&fs->mu);
    for (i = 0; i < n; i++) {
        ent_t *e = v[i];

        e->stamp = 0;
        if (idx_find(fs, e->path, e->hash)) {
            free(e);
        } else {
            idx_link(fs, e);
            lru_tail(fs, e);
        }
        if (i % SCAN_BATCH == SCAN_BATCH - 1) { /* let stores in */
            pthread_mutex_unlock(&fs->mu);
            pthread_mutex_lock(&fs->mu);
        }
    }
    pthread_mutex_unlock(&fs->mu);
}

int kvcd_fs_idx_init(fs_t *fs)
{
    fs->lru.next = fs->lru.prev = &fs->lru;
    if (!(fs->tab = calloc(1024, sizeof(*fs->tab))))
        return -ENOMEM;
    fs->tab_mask = 1023;
    return 0;
}

void kvcd_fs_idx_free(fs_t *fs)
{
    ent_t *e, *n;

    for (e = fs->lru.next; e && e != &fs->lru; e = n) {
        n = e->next;
        free(e);
    }
    free(fs->tab);
    fs->tab = NULL;
}
