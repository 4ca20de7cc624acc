/*
 * zc.c - reservations and read leases in the shared L1 (see zc.h).
 *
 * Data structures:
 *   - holders: a list (a few per engine process), each with a chained hash of
 *     its entries keyed by the object's keyhash; an entry is one reservation
 *     (count 1) or the leases of one client on one object (count >= 1), and
 *     holds exactly one L1 reference whatever its count;
 *   - reserved: a zc-wide chained hash of the reservation entries, so that a
 *     key has at most one reservation across all holders.
 *
 * Invariants:
 *   - an entry's object stays allocated while the entry exists (its
 *     reference), so a reserved or leased region is never evicted or handed
 *     out again; a reservation's object is detached, so nothing but its
 *     holder can see it until commit attaches it;
 *   - every entry is freed exactly once: by commit/abort/release, or with its
 *     holder (connection closed, lease expired, shutdown); freed entries
 *     wait in zc->spare (no object, no table) until reused or stop.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/zc.h"
#include "protocol/kvcd_err.h"

#define IDENT_MAX 16
#define BUCKETS_MIN 64

typedef struct entry_s entry_t;
struct entry_s {
    kvcd_obj_t *obj;       /* one reference held */
    uint32_t count;        /* leases; 1 for a reservation */
    uint8_t reserved;
    entry_t *hnext;        /* holder's table */
    entry_t *rnext;        /* zc->reserved (reservations only) */
    kvcd_zc_holder_t *holder;
};

typedef struct {
    entry_t **b;
    size_t n;              /* buckets, power of two */
    size_t count;
} etab_t;

struct kvcd_zc_holder_s {
    uint8_t ident[IDENT_MAX];
    size_t ident_len;
    uint64_t last_ms;
    etab_t entries;
    kvcd_zc_holder_t *next;
};

struct kvcd_zc_s {
    uv_loop_t *loop;
    kvcd_l1_t *l1;
    kvcd_storage_t *st;
    uint64_t lease_ms;
    uv_timer_t timer;
    int stopped;
    void (*on_change)(void *);
    void *on_change_data;
    kvcd_zc_holder_t *holders;
    etab_t reserved;       /* chained through rnext */
    size_t nholders, nreserved, nleases, nleased;
    size_t reserved_bytes;
    entry_t *spare;        /* freed entries for reuse, chained through hnext */
    size_t nspare;
    uint64_t reserves, commits, aborts, leases, releases, expired, dropped;
};

/* ---- entries ----
 * An engine maps and releases a prompt's chunks (hundreds to thousands) per
 * request: entries are kept for reuse, up to SPARE_MAX, instead of a calloc
 * and a free per key. */

#define SPARE_MAX 65536

static entry_t *entry_new(kvcd_zc_t *zc)
{
    entry_t *e = zc->spare;

    if (!e)
        return calloc(1, sizeof(*e));
    zc->spare = e->hnext;
    zc->nspare--;
    memset(e, 0, sizeof(*e));
    return e;
}

static void entry_put(kvcd_zc_t *zc, entry_t *e)
{
    if (zc->nspare >= SPARE_MAX || zc->stopped) {
        free(e);
        return;
    }
    e->hnext = zc->spare;
    zc->spare = e;
    zc->nspare++;
}

static void spare_free(kvcd_zc_t *zc)
{
    entry_t *e;

    while ((e = zc->spare)) {
        zc->spare = e->hnext;
        free(e);
    }
    zc->nspare = 0;
}

/* ---- tables ---- */

static int etab_init(etab_t *t)
{
    t->n = BUCKETS_MIN;
    t->count = 0;
    t->b = calloc(t->n, sizeof(*t->b));
    return t->b ? 0 : -ENOMEM;
}

static entry_t **chain(etab_t *t, uint64_t h)
{
    return &t->b[(size_t)h & (t->n - 1)];
}

/* Double the buckets; failing only lengthens chains. `rchain` selects the
 * link the table uses. */
static void etab_grow(etab_t *t, int rchain)
{
    size_t n = t->n * 2, i;
    entry_t **nb = calloc(n, sizeof(*nb)), *e, *next;

    if (!nb)
        return;
    for (i = 0; i < t->n; i++)
        for (e = t->b[i]; e; e = next) {
            entry_t **slot = &nb[(size_t)e->obj->keyhash & (n - 1)];

            next = rchain ? e->rnext : e->hnext;
            if (rchain) {
                e->rnext = *slot;
            } else {
                e->hnext = *slot;
            }
            *slot = e;
        }
    free(t->b);
    t->b = nb;
    t->n = n;
}

/* Insert at the chain's tail, so a search finds older entries first. */
static void etab_add(etab_t *t, entry_t *e, int rchain)
{
    entry_t **pp;

    if (t->count >= t->n)
        etab_grow(t, rchain);
    pp = chain(t, e->obj->keyhash);
    while (*pp)
        pp = rchain ? &(*pp)->rnext : &(*pp)->hnext;
    *pp = e;
    if (rchain)
        e->rnext = NULL;
    else
        e->hnext = NULL;
    t->count++;
}

static void etab_del(etab_t *t, entry_t *e, int rchain)
{
    entry_t **pp = chain(t, e->obj->keyhash);

    while (*pp && *pp != e)
        pp = rchain ? &(*pp)->rnext : &(*pp)->hnext;
    if (!*pp)
        return;
    *pp = rchain ? e->rnext : e->hnext;
    t->count--;
}

/* The first entry of the kind for key (and obj, when given). */
static entry_t *holder_find(kvcd_zc_holder_t *h, const kvcd_key_t *key, uint64_t kh,
                            int reserved, const kvcd_obj_t *obj)
{
    entry_t *e;

    for (e = *chain(&h->entries, kh); e; e = e->hnext)
        if (e->reserved == reserved &&
            (obj ? e->obj == obj /* same object, same key */
                 : e->obj->keyhash == kh && kvcd_key_equal(&e->obj->key, key)))
            return e;
    return NULL;
}

static entry_t *reserved_find(kvcd_zc_t *zc, const kvcd_key_t *key, uint64_t kh)
{
    entry_t *e;

    for (e = *chain(&zc->reserved, kh); e; e = e->rnext)
        if (e->obj->keyhash == kh && kvcd_key_equal(&e->obj->key, key))
            return e;
    return NULL;
}

/* Take e out of every table and drop its reference (a detached object is
 * freed by it: the memory is back). */
static void entry_free(kvcd_zc_t *zc, entry_t *e)
{
    kvcd_zc_holder_t *h = e->holder;

    etab_del(&h->entries, e, 0);
    if (e->reserved) {
        etab_del(&zc->reserved, e, 1);
        zc->nreserved--;
        zc->reserved_bytes -= e->obj->size;
    } else {
        zc->nleased--;
        zc->nleases -= e->count;
    }
    kvcd_l1_unref(zc->l1, e->obj);
    entry_put(zc, e);
}

/* ---- holders ---- */

static kvcd_zc_holder_t **holder_slot(kvcd_zc_t *zc, const void *ident, size_t len)
{
    kvcd_zc_holder_t **pp;

    for (pp = &zc->holders; *pp; pp = &(*pp)->next)
        if ((*pp)->ident_len == len && memcmp((*pp)->ident, ident, len) == 0)
            return pp;
    return pp;
}

/* Release everything h holds and free it. Returns whether it held anything. */
static int holder_free(kvcd_zc_t *zc, kvcd_zc_holder_t *h)
{
    kvcd_zc_holder_t **pp;
    int any = h->entries.count > 0, changed = 0;
    size_t i;

    for (pp = &zc->holders; *pp && *pp != h; pp = &(*pp)->next)
        ;
    if (*pp)
        *pp = h->next;
    zc->nholders--;
    for (i = 0; i < h->entries.n; i++)
        while (h->entries.b[i]) {
            changed |= h->entries.b[i]->reserved;
            entry_free(zc, h->entries.b[i]);
        }
    free(h->entries.b);
    free(h);
    if (changed && zc->on_change)
        zc->on_change(zc->on_change_data);
    return any;
}

kvcd_zc_holder_t *kvcd_zc_holder(kvcd_zc_t *zc, const void *ident, size_t len, int create)
{
    kvcd_zc_holder_t **pp, *h;

    if (zc->stopped || len > IDENT_MAX)
        return NULL;
    pp = holder_slot(zc, ident, len);
    if (*pp) {
        (*pp)->last_ms = uv_now(zc->loop);
        return *pp;
    }
    if (!create)
        return NULL;
    h = calloc(1, sizeof(*h));
    if (!h || etab_init(&h->entries) != 0) {
        free(h);
        return NULL;
    }
    memcpy(h->ident, ident, len);
    h->ident_len = len;
    h->last_ms = uv_now(zc->loop);
    h->next = zc->holders;
    zc->holders = h;
    zc->nholders++;
    return h;
}

void kvcd_zc_touch(kvcd_zc_t *zc, const void *ident, size_t len)
{
    if (zc->holders)
        (void)kvcd_zc_holder(zc, ident, len, 0);
}

void kvcd_zc_drop(kvcd_zc_t *zc, const void *ident, size_t len)
{
    kvcd_zc_holder_t **pp;

    if (!zc || zc->stopped || len > IDENT_MAX)
        return;
    pp = holder_slot(zc, ident, len);
    if (*pp && holder_free(zc, *pp))
        zc->dropped++;
}

static void expire_cb(uv_timer_t *t)
{
    kvcd_zc_t *zc = t->data;
    uint64_t now = uv_now(zc->loop);
    kvcd_zc_holder_t *h, *next;

    for (h = zc->holders; h; h = next) {
        next = h->next;
        if (now - h->last_ms < zc->lease_ms)
            continue;
        if (h->entries.count)
            KVCD_LOG(KVCD_LOG_INFO, "zc",
                     "a client silent for %llu ms: its %zu reservations and leases expire",
                     (unsigned long long)(now - h->last_ms), h->entries.count);
        if (holder_free(zc, h))
            zc->expired++;
    }
}

/* ---- operations ---- */

int kvcd_zc_reserve(kvcd_zc_t *zc, kvcd_zc_holder_t *h, const kvcd_key_t *key, size_t size,
                    kvcd_obj_t **out)
{
    uint64_t kh = kvcd_key_hash(key);
    entry_t *e;
    int rc;

    *out = NULL;
    if (zc->stopped)
        return KVCD_ESHUTDOWN;
    if (reserved_find(zc, key, kh))
        return KVCD_EBUSY;
    e = entry_new(zc);
    if (!e)
        return -ENOMEM;
    rc = kvcd_l1_reserve_detached(zc->l1, key, kh, size, &e->obj);
    if (rc != 0) {
        entry_put(zc, e);
        return rc;
    }
    e->count = 1;
    e->reserved = 1;
    e->holder = h;
    etab_add(&h->entries, e, 0);
    etab_add(&zc->reserved, e, 1);
    zc->nreserved++;
    zc->reserved_bytes += size;
    zc->reserves++;
    *out = e->obj;
    return 0;
}

void kvcd_zc_commit(kvcd_zc_t *zc, kvcd_zc_holder_t *h, const kvcd_key_t *keys, size_t n,
                    int *results)
{
    kvcd_obj_t **objs = calloc(n ? n : 1, sizeof(*objs));
    size_t i;

    for (i = 0; i < n; i++) {
        entry_t *e = holder_find(h, &keys[i], kvcd_key_hash(&keys[i]), 1, NULL);
        kvcd_obj_t *obj;

        if (!e) {
            results[i] = KVCD_ENOTFOUND;
            continue;
        }
        if (!objs) {
            results[i] = -ENOMEM;
            continue;
        }
        obj = e->obj;
        results[i] = kvcd_l1_attach(zc->l1, obj);
        if (results[i] == 0) {
            kvcd_l1_ref(obj); /* the write-behind batch's, below */
            objs[i] = obj;
            zc->commits++;
        }
        entry_free(zc, e);
    }
    if (objs) {
        /* Write-behind (and its checksums) starts after the bytes are final
         * as far as kvcd can know: the client said so by committing. */
        kvcd_storage_write_behind(zc->st, objs, n);
        for (i = 0; i < n; i++)
            if (objs[i])
                kvcd_l1_unref(zc->l1, objs[i]);
        free(objs);
    }
    if (zc->on_change)
        zc->on_change(zc->on_change_data);
}

void kvcd_zc_abort(kvcd_zc_t *zc, kvcd_zc_holder_t *h, const kvcd_key_t *keys, size_t n,
                   int *results)
{
    size_t i;

    for (i = 0; i < n; i++) {
        entry_t *e = holder_find(h, &keys[i], kvcd_key_hash(&keys[i]), 1, NULL);

        results[i] = e ? 0 : KVCD_ENOTFOUND;
        if (e) {
            entry_free(zc, e);
            zc->aborts++;
        }
    }
    if (zc->on_change)
        zc->on_change(zc->on_change_data);
}

int kvcd_zc_lease(kvcd_zc_t *zc, kvcd_zc_holder_t *h, kvcd_obj_t *obj)
{
    entry_t *e;

    if (zc->stopped)
        return KVCD_ESHUTDOWN;
    e = holder_find(h, &obj->key, obj->keyhash, 0, obj);
    if (e) {
        if (e->count == UINT32_MAX)
            return KVCD_EBUSY;
        e->count++;
    } else {
        e = entry_new(zc);
        if (!e)
            return -ENOMEM;
        kvcd_l1_ref(obj);
        e->obj = obj;
        e->count = 1;
        e->holder = h;
        etab_add(&h->entries, e, 0);
        zc->nleased++;
    }
    zc->nleases++;
    zc->leases++;
    return 0;
}

void kvcd_zc_release(kvcd_zc_t *zc, kvcd_zc_holder_t *h, const kvcd_key_t *keys, size_t n,
                     int *results)
{
    size_t i;

    for (i = 0; i < n; i++) {
        entry_t *e = h ? holder_find(h, &keys[i], kvcd_key_hash(&keys[i]), 0, NULL) : NULL;

        results[i] = e ? 0 : KVCD_ENOTFOUND;
        if (!e)
            continue;
        zc->releases++;
        if (e->count > 1) {
            e->count--;
            zc->nleases--;
        } else {
            entry_free(zc, e);
        }
    }
}

/* ---- life ---- */

int kvcd_zc_create(uv_loop_t *loop, kvcd_l1_t *l1, kvcd_storage_t *st, uint64_t lease_ms,
                   kvcd_zc_t **out)
{
    kvcd_zc_t *zc = calloc(1, sizeof(*zc));
    uint64_t every;

    *out = NULL;
    if (!zc || etab_init(&zc->reserved) != 0) {
        free(zc);
        return -ENOMEM;
    }
    zc->loop = loop;
    zc->l1 = l1;
    zc->st = st;
    zc->lease_ms = lease_ms ? lease_ms : 1;
    uv_timer_init(loop, &zc->timer);
    zc->timer.data = zc;
    every = zc->lease_ms / 4 ? zc->lease_ms / 4 : 1;
    uv_timer_start(&zc->timer, expire_cb, every, every);
    uv_unref((uv_handle_t *)&zc->timer);
    *out = zc;
    return 0;
}

void kvcd_zc_on_change(kvcd_zc_t *zc, void (*cb)(void *), void *data)
{
    zc->on_change = cb;
    zc->on_change_data = data;
}

void kvcd_zc_stop(kvcd_zc_t *zc)
{
    if (!zc || zc->stopped)
        return;
    zc->on_change = NULL;
    while (zc->holders)
        holder_free(zc, zc->holders);
    zc->stopped = 1;
    spare_free(zc);
    uv_close((uv_handle_t *)&zc->timer, NULL);
}

void kvcd_zc_destroy(kvcd_zc_t *zc)
{
    if (!zc)
        return;
    while (zc->holders)
        holder_free(zc, zc->holders);
    spare_free(zc);
    free(zc->reserved.b);
    free(zc);
}

void kvcd_zc_status(const kvcd_zc_t *zc, json_t *status)
{
    json_t *c = json_object_get(status, "counters");

    json_object_set_new(status, "zero_copy",
                        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}",
                                  "holders", (json_int_t)zc->nholders,
                                  "reserved", (json_int_t)zc->nreserved,
                                  "reserved_bytes", (json_int_t)zc->reserved_bytes,
                                  "leases", (json_int_t)zc->nleases,
                                  "leased_objects", (json_int_t)zc->nleased,
                                  "lease_ms", (json_int_t)zc->lease_ms));
    if (!c)
        return;
    json_object_set_new(c, "zc_reserves", json_integer((json_int_t)zc->reserves));
    json_object_set_new(c, "zc_commits", json_integer((json_int_t)zc->commits));
    json_object_set_new(c, "zc_aborts", json_integer((json_int_t)zc->aborts));
    json_object_set_new(c, "zc_leases", json_integer((json_int_t)zc->leases));
    json_object_set_new(c, "zc_releases", json_integer((json_int_t)zc->releases));
    json_object_set_new(c, "zc_expired", json_integer((json_int_t)zc->expired));
    json_object_set_new(c, "zc_dropped", json_integer((json_int_t)zc->dropped));
}
