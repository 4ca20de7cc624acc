/*
 * l1.c - the L1 memory tier: arena, object table, LRU, reference counts.
 *
 * The arena is one anonymous mapping carved by kvcd_alloc; object descriptors
 * (with their deep-copied key bytes in the same allocation) are malloc'd. The
 * table is a chained hash on the caller's kvcd_key_hash, power-of-two buckets,
 * doubled when objects outnumber buckets.
 *
 * Invariants:
 *   - an object is linked (in the table and the LRU list) or, if unlinked and
 *     still referenced, on the `zombies` list (through lru_prev/lru_next) so
 *     destroy can free it; an unlinked object with refs == 0 is freed at once;
 *   - the LRU list holds every linked object, least recently used at lru_head;
 *     objects enter at the MRU end on reserve and move there on publish/touch;
 *   - only READY objects with refs == 0 are evicted; an object's block stays
 *     allocated (and counted in used) until the object is freed.
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
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../protocol/kvcd_err.h"
#include "alloc.h"
#include "l1.h"
#include "log.h"

#define HIGH_DEFAULT 1.0 /* exact capacity: evict only what an allocation needs */
#define BUCKETS_MIN 256
#define HUGE_2MB ((size_t)2 << 20)

#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif

struct kvcd_l1_s {
    kvcd_evict_policy_t policy;
    void *base;
    size_t map_len; /* bytes mapped (>= capacity with hugepages) */
    int locked;
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

static int map_arena(kvcd_l1_t *l1, size_t capacity, int hugepages)
{
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    void *p = MAP_FAILED;
    size_t len;

    if (hugepages) {
        /* 2 MiB pages named explicitly, so the length we round to is the length
         * munmap needs whatever the system's default huge page size is. No
         * MAP_NORESERVE here: without a reservation the mapping succeeds even
         * when the pool is empty and the first touch dies with SIGBUS; with
         * one, a short pool fails now and we fall back to normal pages. */
        len = (capacity + HUGE_2MB - 1) & ~(HUGE_2MB - 1);
        p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (21 << MAP_HUGE_SHIFT), -1, 0);
        if (p != MAP_FAILED) {
            l1->base = p;
            l1->map_len = len;
            return 0;
        }
        KVCD_LOG(KVCD_LOG_WARNING, "l1",
                 "no %zu bytes of 2 MiB huge pages (%s); using normal pages", len, strerror(errno));
    }
    p = mmap(NULL, capacity, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    /* No reserved huge pages: transparent ones still cut TLB misses on the
     * multi-MiB copies. Advice only; failure changes nothing. */
    if (hugepages)
        (void)madvise(p, capacity, MADV_HUGEPAGE);
    l1->base = p;
    l1->map_len = capacity;
    return 0;
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
    if (cfg->capacity == 0 || cfg->capacity > SIZE_MAX - KVCD_L1_ALIGN - HUGE_2MB)
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

int kvcd_l1_reserve(kvcd_l1_t *l1, const kvcd_key_t *key, uint64_t keyhash, size_t size,
                    kvcd_obj_t **out)
{
    kvcd_obj_t *o;
    kvcd_blk_t *b;
    size_t need, b_idx;

    *out = NULL;
    if (size == 0)
        return -EINVAL;
    if (kvcd_l1_find(l1, key, keyhash))
        return KVCD_EBUSY;
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
