/*
 * l1.c - the L1 memory tier: arena, object table, LRU, reference counts.
 *
 * The arena is one named POSIX shared-memory object ("/kvcd-<pid>-<n>", mode
 * 0600, so only kvcd's user can open it) mapped MAP_SHARED and carved by
 * kvcd_alloc; same-host clients of that user map the same object and read and
 * write objects in place (daemon/zc.h). The name is unlinked by destroy; a
 * create first removes objects left by a kvcd of this user that died (by name
 * prefix and owner pid). Object descriptors (with their deep-copied key bytes
 * in the same allocation) are malloc'd. The table is a chained hash on the
 * caller's kvcd_key_hash, power-of-two buckets, doubled when objects outnumber
 * buckets.
 *
 * Invariants:
 *   - an object is linked (in the table and the LRU list) or, if unlinked and
 *     still referenced, on the `zombies` list (through lru_prev/lru_next) so
 *     destroy can free it; an unlinked object with refs == 0 is freed at once;
 *   - the LRU list holds every linked object, least recently used at lru_head;
 *     objects enter at the MRU end on reserve and move there on publish/touch;
 *   - only READY objects with refs == 0 are evicted; an object's block stays
 *     allocated (and counted in used) until the object is freed;
 *   - a detached object (kvcd_l1_reserve_detached) is on the zombie list, out
 *     of the table, until kvcd_l1_attach links it or its last unref frees it.
 *
 * Watermarks bound eviction, not allocation: with LRU, a reserve that would
 * take used above high evicts until used <= low and used + size <= high (or
 * nothing evictable is left), then allocates if the allocator has room; so
 * pinned objects may use the space between high and capacity, and capacity is
 * the only hard limit. If the allocator has no fitting block (fragmentation),
 * LRU keeps evicting one object at a time until it does. A watermark of 0 in
 * the config means its default: high 1.0, low = high. So the default is
 * exact-capacity LRU: a reserve evicts least recently used objects only until
 * the new block fits, L1 stays as full as it can be and holds exactly the
 * objects a strict LRU cache of the same bytes holds (for equal-size objects;
 * docs/DECISIONS.md says why batches between watermarks are only an option).
 * A zeroed config with only a capacity is valid. Used and evicted bytes count whole blocks
 * (payload rounded up to KVCD_L1_ALIGN), the memory actually taken.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "../protocol/kvcd_err.h"
#include "alloc.h"
#include "l1.h"
#include "log.h"

#define HIGH_DEFAULT 1.0 /* exact capacity: evict only what an allocation needs */
#define BUCKETS_MIN 256
#define HUGE_2MB ((size_t)2 << 20)

struct kvcd_l1_s {
    kvcd_evict_policy_t policy;
    void *base;
    size_t map_len; /* bytes mapped: the shared object's size */
    int locked;
    char shm_name[64]; /* "/kvcd-<pid>-<n>"; "" once unlinked */
    kvcd_alloc_t *alloc;
    size_t high_bytes;
    size_t low_bytes;
    double high_wm, low_wm;

    kvcd_obj_t **buckets;
    size_t nbuckets; /* power of two */
    size_t objects;

    kvcd_obj_t *lru_head; /* least recently used */
    kvcd_obj_t *lru_tail; /* most recently used */
    kvcd_obj_t *zombies;  /* unlinked, still referenced */

    uint64_t evictions;
    uint64_t evicted_bytes;
};

/* ---- LRU list -------------------------------------------------------------- */

static void lru_remove(kvcd_l1_t *l1, kvcd_obj_t *o)
{
    if (o->lru_prev)
        o->lru_prev->lru_next = o->lru_next;
    else
        l1->lru_head = o->lru_next;
    if (o->lru_next)
        o->lru_next->lru_prev = o->lru_prev;
    else
        l1->lru_tail = o->lru_prev;
    o->lru_prev = o->lru_next = NULL;
}

static void lru_push_mru(kvcd_l1_t *l1, kvcd_obj_t *o)
{
    o->lru_next = NULL;
    o->lru_prev = l1->lru_tail;
    if (l1->lru_tail)
        l1->lru_tail->lru_next = o;
    else
        l1->lru_head = o;
    l1->lru_tail = o;
}

static void zombie_add(kvcd_l1_t *l1, kvcd_obj_t *o)
{
    o->lru_prev = NULL;
    o->lru_next = l1->zombies;
    if (l1->zombies)
        l1->zombies->lru_prev = o;
    l1->zombies = o;
}

static void zombie_remove(kvcd_l1_t *l1, kvcd_obj_t *o)
{
    if (o->lru_prev)
        o->lru_prev->lru_next = o->lru_next;
    else
        l1->zombies = o->lru_next;
    if (o->lru_next)
        o->lru_next->lru_prev = o->lru_prev;
    o->lru_prev = o->lru_next = NULL;
}

/* ---- hash table -------------------------------------------------------------- */

static size_t bucket_of(const kvcd_l1_t *l1, uint64_t keyhash)
{
    return (size_t)keyhash & (l1->nbuckets - 1);
}

/* Double the bucket array. Failure to grow only lengthens chains, so it is not
 * reported. */
static void table_grow(kvcd_l1_t *l1)
{
    size_t n = l1->nbuckets * 2, i, j;
    kvcd_obj_t **nb, *o, *next;

    if (n < l1->nbuckets)
        return;
    nb = calloc(n, sizeof(*nb));
    if (!nb)
        return;
    for (i = 0; i < l1->nbuckets; i++) {
        for (o = l1->buckets[i]; o; o = next) {
            next = o->hnext;
            j = (size_t)o->keyhash & (n - 1);
            o->hnext = nb[j];
            nb[j] = o;
        }
    }
    free(l1->buckets);
    l1->buckets = nb;
    l1->nbuckets = n;
}

static void table_remove(kvcd_l1_t *l1, kvcd_obj_t *o)
{
    kvcd_obj_t **pp = &l1->buckets[bucket_of(l1, o->keyhash)];

    while (*pp && *pp != o)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = o->hnext;
    o->hnext = NULL;
}

/* ---- objects ------------------------------------------------------------------ */

static void obj_free(kvcd_l1_t *l1, kvcd_obj_t *o)
{
    kvcd_alloc_put(l1->alloc, o->blk);
    free(o);
}

static size_t blk_size(const kvcd_obj_t *o)
{
    return o->blk->size;
}

static int evictable(const kvcd_obj_t *o)
{
    return o->refs == 0 && o->state == KVCD_OBJ_READY;
}

/* The least recently used evictable object at or after `from` (NULL starts
 * at the LRU end). Reserve keeps this cursor across evictions so one reserve
 * walks past each pinned object at most once. */
static kvcd_obj_t *next_victim(kvcd_l1_t *l1, kvcd_obj_t *from)
{
    kvcd_obj_t *o = from ? from : l1->lru_head;

    while (o && !evictable(o))
        o = o->lru_next;
    return o;
}

/* Unlink (and so free) victim; returns the cursor for the next search. */
static kvcd_obj_t *evict(kvcd_l1_t *l1, kvcd_obj_t *victim)
{
    kvcd_obj_t *next = victim->lru_next;

    l1->evictions++;
    l1->evicted_bytes += blk_size(victim);
    kvcd_l1_unlink(l1, victim);
    return next;
}

/* Allocate `need` bytes, evicting as the policy allows. NULL if it cannot fit. */
static kvcd_blk_t *make_room(kvcd_l1_t *l1, size_t need)
{
    kvcd_obj_t *cursor = NULL, *victim;
    kvcd_blk_t *b;
    size_t used;

    used = kvcd_alloc_used(l1->alloc);
    if (l1->policy == KVCD_EVICT_LRU && used + need > l1->high_bytes) {
        /* With low < high (an option), evicting to low leaves headroom so
         * the next reserves do not each pay for an eviction; with low ==
         * high (the default) only what this block needs goes. */
        while (used > l1->low_bytes || used + need > l1->high_bytes) {
            victim = next_victim(l1, cursor);
            if (!victim)
                break;
            cursor = evict(l1, victim);
            used = kvcd_alloc_used(l1->alloc);
        }
    }
    b = kvcd_alloc_get(l1->alloc, need);
    while (!b && l1->policy == KVCD_EVICT_LRU) {
        victim = next_victim(l1, cursor);
        if (!victim)
            return NULL;
        cursor = evict(l1, victim);
        b = kvcd_alloc_get(l1->alloc, need);
    }
    return b;
}

/* ---- public ------------------------------------------------------------------- */

/* Where shm_open puts its objects on Linux (glibc). */
#define SHM_DIR "/dev/shm"
#define SHM_PREFIX "kvcd-"

/* Remove shared objects "kvcd-<pid>-<n>" of this user whose pid is gone: what
 * a kvcd that was killed left behind. An object of a live pid (another kvcd,
 * or a pid reused since) is kept; a process in another PID namespace sharing
 * this /dev/shm would look dead, which is why the owner must be us too. */
size_t kvcd_l1_remove_stale(void)
{
    DIR *d = opendir(SHM_DIR);
    struct dirent *e;
    size_t removed = 0;

    if (!d)
        return 0;
    while ((e = readdir(d))) {
        char path[sizeof(SHM_DIR) + 256], name[260];
        struct stat stt;
        unsigned long pid;
        char *end;

        if (strncmp(e->d_name, SHM_PREFIX, strlen(SHM_PREFIX)) != 0)
            continue;
        pid = strtoul(e->d_name + strlen(SHM_PREFIX), &end, 10);
        if (pid == 0 || pid > INT32_MAX || *end != '-')
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        snprintf(path, sizeof(path), SHM_DIR "/%s", e->d_name);
        if (lstat(path, &stt) != 0 || !S_ISREG(stt.st_mode) || stt.st_uid != geteuid())
            continue;
        snprintf(name, sizeof(name), "/%s", e->d_name);
        if (shm_unlink(name) == 0) {
            removed++;
            KVCD_LOG(KVCD_LOG_INFO, "l1", "removed %s, left by kvcd pid %lu that is gone", name,
                     pid);
        }
    }
    closedir(d);
    return removed;
}

/* Create and map the shared object. Hugepages: tmpfs gives a shared object
 * transparent huge pages when asked with MADV_HUGEPAGE (and the system's
 * shmem_enabled allows it); explicit MAP_HUGETLB pages exist only for
 * anonymous and hugetlbfs mappings. The pages are not committed here: the
 * filesystem must have room for them, which is checked. */
static int map_arena(kvcd_l1_t *l1, size_t capacity, int hugepages)
{
    static unsigned seq;
    struct statvfs vfs;
    void *p;
    int fd, rc;

    snprintf(l1->shm_name, sizeof(l1->shm_name), "/" SHM_PREFIX "%ld-%u", (long)getpid(),
             __atomic_fetch_add(&seq, 1, __ATOMIC_RELAXED));
    fd = shm_open(l1->shm_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        KVCD_LOG(KVCD_LOG_ERROR, "l1", "shm_open(%s): %s", l1->shm_name, strerror(errno));
        l1->shm_name[0] = '\0';
        return rc;
    }
    /* A umask cannot widen 0600, but an inherited ACL default could. */
    (void)fchmod(fd, 0600);
    if (fstatvfs(fd, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < capacity) {
        KVCD_LOG(KVCD_LOG_ERROR, "l1", "%s has %llu bytes free, L1 needs %zu", SHM_DIR,
                 (unsigned long long)vfs.f_bavail * vfs.f_frsize, capacity);
        rc = KVCD_ENOSPACE;
        goto fail;
    }
    if (ftruncate(fd, (off_t)capacity) != 0) {
        rc = -errno;
        goto fail;
    }
    p = mmap(NULL, capacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        rc = -errno;
        goto fail;
    }
    close(fd);
    if (hugepages && madvise(p, capacity, MADV_HUGEPAGE) != 0)
        KVCD_LOG(KVCD_LOG_WARNING, "l1", "no transparent huge pages for %s (%s); using normal "
                 "pages", l1->shm_name, strerror(errno));
    l1->base = p;
    l1->map_len = capacity;
    return 0;

fail:
    close(fd);
    shm_unlink(l1->shm_name);
    l1->shm_name[0] = '\0';
    return rc;
}

int kvcd_l1_create(const kvcd_l1_config_t *cfg, kvcd_l1_t **out)
{
    kvcd_l1_t *l1 = NULL;
    double high = cfg->high_watermark, low = cfg->low_watermark;
    size_t capacity;
    int rc;

    *out = NULL;
    if (high == 0.0)
        high = HIGH_DEFAULT;
    if (low == 0.0)
        low = high;
    /* Written so NaN fails too. */
    if (!(high > 0.0 && high <= 1.0) || !(low > 0.0 && low <= high))
        return KVCD_ECONFIG;
    if (cfg->policy != KVCD_EVICT_LRU && cfg->policy != KVCD_EVICT_NOOP)
        return KVCD_ECONFIG;
    if (cfg->capacity == 0 || cfg->capacity > SIZE_MAX - KVCD_L1_ALIGN - HUGE_2MB ||
        cfg->capacity > (size_t)INT64_MAX / 2)
        return KVCD_ECONFIG;
    capacity = (cfg->capacity + KVCD_L1_ALIGN - 1) & ~(size_t)(KVCD_L1_ALIGN - 1);

    l1 = calloc(1, sizeof(*l1));
    if (!l1)
        return -ENOMEM;
    l1->policy = cfg->policy;
    l1->base = MAP_FAILED;
    l1->high_wm = high;
    l1->low_wm = low;
    l1->high_bytes = (size_t)(high * (double)capacity);
    l1->low_bytes = (size_t)(low * (double)capacity);
    l1->nbuckets = BUCKETS_MIN;
    l1->buckets = calloc(l1->nbuckets, sizeof(*l1->buckets));
    if (!l1->buckets) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = kvcd_alloc_create(capacity, KVCD_L1_ALIGN, &l1->alloc);
    if (rc < 0)
        goto fail;
    kvcd_l1_remove_stale();
    rc = map_arena(l1, capacity, cfg->hugepages);
    if (rc < 0)
        goto fail;
    if (cfg->lock_memory) {
        if (mlock(l1->base, l1->map_len) != 0) {
            rc = -errno;
            goto fail;
        }
        l1->locked = 1;
    }
    *out = l1;
    return 0;

fail:
    if (l1->base != MAP_FAILED)
        munmap(l1->base, l1->map_len);
    if (l1->shm_name[0])
        shm_unlink(l1->shm_name);
    kvcd_alloc_destroy(l1->alloc);
    free(l1->buckets);
    free(l1);
    return rc;
}

void kvcd_l1_destroy(kvcd_l1_t *l1)
{
    kvcd_obj_t *o, *next;

    if (!l1)
        return;
    /* Blocks go back with the allocator; only descriptors need freeing. */
    for (o = l1->lru_head; o; o = next) {
        next = o->lru_next;
        free(o);
    }
    for (o = l1->zombies; o; o = next) {
        next = o->lru_next;
        free(o);
    }
    if (l1->locked)
        munlock(l1->base, l1->map_len);
    munmap(l1->base, l1->map_len);
    kvcd_l1_unlink_shm(l1);
    kvcd_alloc_destroy(l1->alloc);
    free(l1->buckets);
    free(l1);
}

kvcd_obj_t *kvcd_l1_find(kvcd_l1_t *l1, const kvcd_key_t *key, uint64_t keyhash)
{
    kvcd_obj_t *o;

    for (o = l1->buckets[bucket_of(l1, keyhash)]; o; o = o->hnext)
        if (o->keyhash == keyhash && kvcd_key_equal(&o->key, key))
            return o;
    return NULL;
}

kvcd_obj_t *kvcd_l1_find_ready(kvcd_l1_t *l1, const kvcd_key_t *key, uint64_t keyhash)
{
    kvcd_obj_t *o = kvcd_l1_find(l1, key, keyhash);

    return o && o->state == KVCD_OBJ_READY ? o : NULL;
}

/* A WRITING object of `size` bytes for key, with its block, refs = 1, not yet
 * in the table or on a list. `present` is the result when key is linked. */
static int obj_new(kvcd_l1_t *l1, const kvcd_key_t *key, uint64_t keyhash, size_t size,
                   int present, kvcd_obj_t **out)
{
    kvcd_obj_t *o;
    kvcd_blk_t *b;
    size_t need;

    *out = NULL;
    if (size == 0)
        return -EINVAL;
    if (kvcd_l1_find(l1, key, keyhash))
        return present;
    /* An object that could never fit must not cost the cache its contents. */
    if (size > kvcd_alloc_capacity(l1->alloc))
        return KVCD_ENOSPACE;
    need = (size + KVCD_L1_ALIGN - 1) & ~(size_t)(KVCD_L1_ALIGN - 1);

    /* Descriptor first: running out of malloc memory must not evict anything. */
    o = malloc(sizeof(*o) + kvcd_key_extra(key));
    if (!o)
        return -ENOMEM;
    b = make_room(l1, need);
    if (!b) {
        free(o);
        return KVCD_ENOSPACE;
    }

    memset(o, 0, sizeof(*o));
    kvcd_key_copy(&o->key, key, o + 1);
    o->keyhash = keyhash;
    o->blk = b;
    o->data = (char *)l1->base + b->off;
    o->size = size;
    o->refs = 1;
    o->state = KVCD_OBJ_WRITING;
    *out = o;
    return 0;
}

int kvcd_l1_reserve(kvcd_l1_t *l1, const kvcd_key_t *key, uint64_t keyhash, size_t size,
                    kvcd_obj_t **out)
{
    kvcd_obj_t *o;
    size_t b_idx;
    int rc = obj_new(l1, key, keyhash, size, KVCD_EBUSY, &o);

    *out = NULL;
    if (rc != 0)
        return rc;
    o->linked = 1;
    if (l1->objects >= l1->nbuckets)
        table_grow(l1);
    b_idx = bucket_of(l1, keyhash);
    o->hnext = l1->buckets[b_idx];
    l1->buckets[b_idx] = o;
    l1->objects++;
    lru_push_mru(l1, o);
    *out = o;
    return 0;
}

void kvcd_l1_publish(kvcd_l1_t *l1, kvcd_obj_t *obj)
{
    obj->state = KVCD_OBJ_READY;
    kvcd_l1_touch(l1, obj);
}

void kvcd_l1_touch(kvcd_l1_t *l1, kvcd_obj_t *obj)
{
    if (!obj->linked || l1->lru_tail == obj)
        return;
    lru_remove(l1, obj);
    lru_push_mru(l1, obj);
}

void kvcd_l1_ref(kvcd_obj_t *obj)
{
    obj->refs++;
}

void kvcd_l1_unref(kvcd_l1_t *l1, kvcd_obj_t *obj)
{
    /* An unbalanced unref is a caller bug; ignoring it in release builds
     * keeps refs from wrapping into a permanent pin. */
    assert(obj->refs > 0);
    if (obj->refs == 0)
        return;
    if (--obj->refs > 0 || obj->linked)
        return;
    zombie_remove(l1, obj);
    obj_free(l1, obj);
}

void kvcd_l1_unlink(kvcd_l1_t *l1, kvcd_obj_t *obj)
{
    if (!obj->linked)
        return;
    table_remove(l1, obj);
    lru_remove(l1, obj);
    obj->linked = 0;
    l1->objects--;
    if (obj->refs == 0)
        obj_free(l1, obj);
    else
        zombie_add(l1, obj);
}

size_t kvcd_l1_clear(kvcd_l1_t *l1)
{
    size_t n = 0;

    while (l1->lru_head) {
        kvcd_l1_unlink(l1, l1->lru_head);
        n++;
    }
    return n;
}

void kvcd_l1_stats(const kvcd_l1_t *l1, kvcd_l1_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->capacity = kvcd_alloc_capacity(l1->alloc);
    out->used = kvcd_alloc_used(l1->alloc);
    out->objects = l1->objects;
    out->largest_free = kvcd_alloc_largest_free(l1->alloc);
    out->evictions = l1->evictions;
    out->evicted_bytes = l1->evicted_bytes;
    out->high_watermark = l1->high_wm;
    out->low_watermark = l1->low_wm;
}

void *kvcd_l1_base(const kvcd_l1_t *l1)
{
    return l1->base;
}

kvcd_obj_t *kvcd_l1_lru_next(const kvcd_l1_t *l1, kvcd_obj_t *prev)
{
    return prev ? prev->lru_next : l1->lru_head;
}

const char *kvcd_l1_shm_name(const kvcd_l1_t *l1)
{
    return l1->shm_name;
}

size_t kvcd_l1_map_size(const kvcd_l1_t *l1)
{
    return l1->map_len;
}

void kvcd_l1_unlink_shm(kvcd_l1_t *l1)
{
    if (l1->shm_name[0])
        shm_unlink(l1->shm_name);
    l1->shm_name[0] = '\0';
}

/* ---- detached objects (zero-copy reservations, daemon/zc.c) ---------------- */

int kvcd_l1_reserve_detached(kvcd_l1_t *l1, const kvcd_key_t *key, uint64_t keyhash,
                             size_t size, kvcd_obj_t **out)
{
    kvcd_obj_t *o;
    int rc = obj_new(l1, key, keyhash, size, KVCD_EDUPLICATE, &o);

    *out = NULL;
    if (rc != 0)
        return rc;
    zombie_add(l1, o);
    *out = o;
    return 0;
}

int kvcd_l1_attach(kvcd_l1_t *l1, kvcd_obj_t *obj)
{
    size_t b_idx;

    if (obj->linked || obj->state != KVCD_OBJ_WRITING)
        return -EINVAL;
    if (kvcd_l1_find(l1, &obj->key, obj->keyhash))
        return KVCD_EDUPLICATE;
    zombie_remove(l1, obj);
    if (l1->objects >= l1->nbuckets)
        table_grow(l1);
    b_idx = bucket_of(l1, obj->keyhash);
    obj->hnext = l1->buckets[b_idx];
    l1->buckets[b_idx] = obj;
    l1->objects++;
    obj->linked = 1;
    obj->state = KVCD_OBJ_READY;
    lru_push_mru(l1, obj);
    return 0;
}
