/*
 * test_l1.c - the L1 memory tier (daemon/l1.c): object life cycle, lookups,
 * LRU order, exact-capacity (default), watermark and fragmentation eviction,
 * reference counts, the NOOP policy and the arena mapping options.
 *
 * Sizes are multiples of KVCD_L1_ALIGN so the used-byte arithmetic in the
 * assertions is exact; the allocator hands blocks out in address order from an
 * empty arena, which the fragmentation test relies on.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/l1.h"
#include "protocol/kvcd_err.h"

#define MiB ((size_t)1 << 20)

/* A key whose chunk hash encodes n; storage lives in the struct so keys can be
 * built on the stack and compared after the source is changed. */
typedef struct {
    kvcd_key_t k;
    uint8_t hash[16];
    char model[32];
    char salt[16];
} tkey_t;

static void tkey(tkey_t *t, unsigned n)
{
    memset(t, 0, sizeof(*t));
    memcpy(t->model, "org/model-7b", 12);
    memset(t->hash, 0xa5, sizeof(t->hash));
    memcpy(t->hash, &n, sizeof(n));
    t->k.model = t->model;
    t->k.model_len = 12;
    t->k.hash = t->hash;
    t->k.hash_len = sizeof(t->hash);
    t->k.kv_rank = kvcd_kv_rank(2, 1);
    t->k.group = 0;
    t->k.salt = NULL;
    t->k.salt_len = 0;
}

static kvcd_l1_t *mk(size_t capacity, kvcd_evict_policy_t policy, double high, double low)
{
    kvcd_l1_config_t cfg = {
        .capacity = capacity,
        .policy = policy,
        .high_watermark = high,
        .low_watermark = low,
    };
    kvcd_l1_t *l1 = NULL;

    ck_assert_int_eq(kvcd_l1_create(&cfg, &l1), 0);
    ck_assert_ptr_nonnull(l1);
    return l1;
}

static size_t used(const kvcd_l1_t *l1)
{
    kvcd_l1_stats_t st;

    kvcd_l1_stats(l1, &st);
    return st.used;
}

static kvcd_l1_stats_t stats(const kvcd_l1_t *l1)
{
    kvcd_l1_stats_t st;

    kvcd_l1_stats(l1, &st);
    return st;
}

/* Reserve, fill, publish and drop the writer's reference: a READY, evictable
 * object. */
static kvcd_obj_t *put(kvcd_l1_t *l1, unsigned n, size_t size)
{
    kvcd_obj_t *o = NULL;
    tkey_t t;

    tkey(&t, n);
    ck_assert_int_eq(kvcd_l1_reserve(l1, &t.k, kvcd_key_hash(&t.k), size, &o), 0);
    memset(o->data, (int)(n & 0xff), size);
    kvcd_l1_publish(l1, o);
    kvcd_l1_unref(l1, o);
    return o;
}

static kvcd_obj_t *get(kvcd_l1_t *l1, unsigned n)
{
    tkey_t t;

    tkey(&t, n);
    return kvcd_l1_find_ready(l1, &t.k, kvcd_key_hash(&t.k));
}

static int reserve(kvcd_l1_t *l1, unsigned n, size_t size, kvcd_obj_t **o)
{
    tkey_t t;

    tkey(&t, n);
    return kvcd_l1_reserve(l1, &t.k, kvcd_key_hash(&t.k), size, o);
}

START_TEST(test_config)
{
    kvcd_l1_config_t cfg = {.capacity = MiB};
    kvcd_l1_t *l1 = (kvcd_l1_t *)1;
    kvcd_l1_stats_t st;

    cfg.high_watermark = 1.5;
    ck_assert_int_eq(kvcd_l1_create(&cfg, &l1), KVCD_ECONFIG);
    ck_assert_ptr_null(l1);
    cfg.high_watermark = -0.1;
    ck_assert_int_eq(kvcd_l1_create(&cfg, &l1), KVCD_ECONFIG);
    cfg.high_watermark = 0.5;
    cfg.low_watermark = 0.6;
    ck_assert_int_eq(kvcd_l1_create(&cfg, &l1), KVCD_ECONFIG);
    cfg.low_watermark = NAN;
    ck_assert_int_eq(kvcd_l1_create(&cfg, &l1), KVCD_ECONFIG);
    cfg.low_watermark = 0.5;
    cfg.capacity = 0;
    ck_assert_int_eq(kvcd_l1_create(&cfg, &l1), KVCD_ECONFIG);
    cfg.capacity = MiB;
    cfg.policy = (kvcd_evict_policy_t)7;
    ck_assert_int_eq(kvcd_l1_create(&cfg, &l1), KVCD_ECONFIG);

    /* Zero watermarks mean the defaults; capacity rounds up to the alignment. */
    memset(&cfg, 0, sizeof(cfg));
    cfg.capacity = MiB + 1;
    ck_assert_int_eq(kvcd_l1_create(&cfg, &l1), 0);
    kvcd_l1_stats(l1, &st);
    ck_assert_uint_eq(st.capacity, MiB + KVCD_L1_ALIGN);
    ck_assert_uint_eq(st.used, 0);
    ck_assert_uint_eq(st.objects, 0);
    ck_assert_uint_eq(st.largest_free, MiB + KVCD_L1_ALIGN);
    ck_assert_uint_eq((uintptr_t)kvcd_l1_base(l1) % KVCD_L1_ALIGN, 0);
    kvcd_l1_destroy(l1);
    kvcd_l1_destroy(NULL);
}
END_TEST

/* No huge pages are needed: without them create falls back to normal pages. */
START_TEST(test_hugepages_fallback)
{
    kvcd_l1_config_t cfg = {.capacity = 3 * MiB, .hugepages = 1};
    kvcd_l1_t *l1;
    kvcd_obj_t *o;

    ck_assert_int_eq(kvcd_l1_create(&cfg, &l1), 0);
    o = put(l1, 1, 3 * MiB);
    ck_assert_ptr_eq(get(l1, 1), o);
    ck_assert_uint_eq(((unsigned char *)o->data)[3 * MiB - 1], 1);
    kvcd_l1_destroy(l1);
}
END_TEST

/* mlock may be refused by RLIMIT_MEMLOCK; then create must fail cleanly with
 * the errno, never succeed silently unlocked. */
START_TEST(test_lock_memory)
{
    kvcd_l1_config_t cfg = {.capacity = 256 * 1024, .lock_memory = 1};
    kvcd_l1_t *l1 = NULL;
    int rc = kvcd_l1_create(&cfg, &l1);

    if (rc == 0) {
        ck_assert_ptr_nonnull(l1);
        put(l1, 1, 4096);
        kvcd_l1_destroy(l1);
    } else {
        ck_assert_msg(rc == -EPERM || rc == -ENOMEM || rc == -EAGAIN, "rc %d", rc);
        ck_assert_ptr_null(l1);
    }
}
END_TEST

START_TEST(test_reserve_publish_find)
{
    kvcd_l1_t *l1 = mk(16 * MiB, KVCD_EVICT_LRU, 0, 0);
    char *base = kvcd_l1_base(l1);
    kvcd_obj_t *o, *o2;
    tkey_t t;
    uint64_t h;

    tkey(&t, 7);
    h = kvcd_key_hash(&t.k);
    ck_assert_ptr_null(kvcd_l1_find(l1, &t.k, h));
    ck_assert_int_eq(kvcd_l1_reserve(l1, &t.k, h, 5000, &o), 0);
    ck_assert_ptr_nonnull(o);
    ck_assert_uint_eq(o->refs, 1);
    ck_assert_uint_eq(o->state, KVCD_OBJ_WRITING);
    ck_assert_uint_eq(o->linked, 1);
    ck_assert_uint_eq(o->size, 5000);
    ck_assert_uint_eq(o->keyhash, h);
    ck_assert_uint_eq((uintptr_t)o->data % KVCD_L1_ALIGN, 0);
    ck_assert((char *)o->data >= base && (char *)o->data + 5000 <= base + 16 * MiB);
    /* The block is rounded to the alignment and counted as used. */
    ck_assert_uint_eq(used(l1), 8192);
    ck_assert_uint_eq(stats(l1).objects, 1);
    memset(o->data, 0x5a, 5000);

    /* WRITING: found by find, invisible to find_ready. */
    ck_assert_ptr_eq(kvcd_l1_find(l1, &t.k, h), o);
    ck_assert_ptr_null(kvcd_l1_find_ready(l1, &t.k, h));

    kvcd_l1_publish(l1, o);
    ck_assert_uint_eq(o->state, KVCD_OBJ_READY);
    ck_assert_uint_eq(o->refs, 1);
    ck_assert_ptr_eq(kvcd_l1_find_ready(l1, &t.k, h), o);
    ck_assert_ptr_eq(kvcd_l1_find(l1, &t.k, h), o);

    /* A second object does not share bytes with the first. */
    o2 = put(l1, 8, 4096);
    ck_assert((char *)o2->data >= (char *)o->data + 8192 ||
              (char *)o2->data + 4096 <= (char *)o->data);
    ck_assert_uint_eq(((unsigned char *)o->data)[4999], 0x5a);

    kvcd_l1_unref(l1, o);
    ck_assert_ptr_eq(kvcd_l1_find_ready(l1, &t.k, h), o);
    ck_assert_uint_eq(stats(l1).objects, 2);
    kvcd_l1_destroy(l1);
}
END_TEST

START_TEST(test_reserve_bad_size)
{
    kvcd_l1_t *l1 = mk(MiB, KVCD_EVICT_LRU, 0, 0);
    kvcd_obj_t *o = (kvcd_obj_t *)1;

    ck_assert_int_eq(reserve(l1, 1, 0, &o), -EINVAL);
    ck_assert_ptr_null(o);
    ck_assert_uint_eq(stats(l1).objects, 0);
    kvcd_l1_destroy(l1);
}
END_TEST

START_TEST(test_duplicate_reserve_busy)
{
    kvcd_l1_t *l1 = mk(16 * MiB, KVCD_EVICT_LRU, 0, 0);
    kvcd_obj_t *o, *o2 = (kvcd_obj_t *)1;

    ck_assert_int_eq(reserve(l1, 1, MiB, &o), 0);
    ck_assert_int_eq(reserve(l1, 1, MiB, &o2), KVCD_EBUSY);
    ck_assert_ptr_null(o2);
    ck_assert_uint_eq(used(l1), MiB);
    kvcd_l1_publish(l1, o);
    kvcd_l1_unref(l1, o);
    /* READY is linked too: a store of an existing key is still busy. */
    ck_assert_int_eq(reserve(l1, 1, 2 * MiB, &o2), KVCD_EBUSY);
    ck_assert_uint_eq(stats(l1).objects, 1);
    ck_assert_uint_eq(used(l1), MiB);

    /* Once unlinked, the key can be stored again. */
    kvcd_l1_unlink(l1, o);
    ck_assert_uint_eq(used(l1), 0);
    ck_assert_int_eq(reserve(l1, 1, MiB, &o2), 0);
    kvcd_l1_unref(l1, o2);
    kvcd_l1_destroy(l1);
}
END_TEST

/* Each variant differs from the base key in exactly one field. */
START_TEST(test_keys_one_field_apart)
{
    kvcd_l1_t *l1 = mk(16 * MiB, KVCD_EVICT_LRU, 0, 0);
    tkey_t t[7];
    kvcd_obj_t *o[7];
    int i, j;

    for (i = 0; i < 7; i++)
        tkey(&t[i], 1);
    t[1].model[11] = 'c';                /* model byte */
    t[2].k.model_len = 11;               /* model length (a prefix) */
    t[3].k.kv_rank = kvcd_kv_rank(2, 0); /* rank */
    t[4].hash[15] ^= 1;                  /* last hash byte */
    t[5].k.group = 1;                    /* group */
    memcpy(t[6].salt, "s", 1);           /* salt present vs absent */
    t[6].k.salt = t[6].salt;
    t[6].k.salt_len = 1;

    for (i = 0; i < 7; i++) {
        uint64_t h = kvcd_key_hash(&t[i].k);

        ck_assert_int_eq(kvcd_l1_reserve(l1, &t[i].k, h, 4096, &o[i]), 0);
        *(int *)o[i]->data = i;
        kvcd_l1_publish(l1, o[i]);
    }
    ck_assert_uint_eq(stats(l1).objects, 7);
    for (i = 0; i < 7; i++) {
        kvcd_obj_t *f = kvcd_l1_find_ready(l1, &t[i].k, kvcd_key_hash(&t[i].k));

        ck_assert_ptr_eq(f, o[i]);
        ck_assert_int_eq(*(int *)f->data, i);
        for (j = 0; j < 7; j++)
            if (j != i)
                ck_assert_ptr_ne(f, o[j]);
        kvcd_l1_unref(l1, o[i]);
    }
    kvcd_l1_destroy(l1);
}
END_TEST

/* The table compares whole keys, not hashes: with every key forced into one
 * chain under one hash value, each is still found as itself. */
START_TEST(test_hash_collisions)
{
    kvcd_l1_t *l1 = mk(16 * MiB, KVCD_EVICT_LRU, 0, 0);
    const uint64_t h = 12345;
    kvcd_obj_t *o[50], *x;
    tkey_t t;
    unsigned i;

    for (i = 0; i < 50; i++) {
        tkey(&t, i);
        ck_assert_int_eq(kvcd_l1_reserve(l1, &t.k, h, 4096, &o[i]), 0);
        kvcd_l1_publish(l1, o[i]);
        kvcd_l1_unref(l1, o[i]);
    }
    for (i = 0; i < 50; i++) {
        tkey(&t, i);
        ck_assert_ptr_eq(kvcd_l1_find_ready(l1, &t.k, h), o[i]);
    }
    /* Unlinking from the middle of the chain keeps the rest reachable. */
    kvcd_l1_unlink(l1, o[25]);
    kvcd_l1_unlink(l1, o[0]);
    kvcd_l1_unlink(l1, o[49]);
    for (i = 0; i < 50; i++) {
        tkey(&t, i);
        x = kvcd_l1_find(l1, &t.k, h);
        if (i == 0 || i == 25 || i == 49)
            ck_assert_ptr_null(x);
        else
            ck_assert_ptr_eq(x, o[i]);
    }
    kvcd_l1_destroy(l1);
}
END_TEST

/* The object owns its key: changing or freeing the caller's bytes after
 * reserve does not change what is stored. */
START_TEST(test_key_deep_copy)
{
    kvcd_l1_t *l1 = mk(MiB, KVCD_EVICT_LRU, 0, 0);
    tkey_t *t = malloc(sizeof(*t)), ref;
    kvcd_obj_t *o;
    uint64_t h;

    ck_assert_ptr_nonnull(t);
    tkey(t, 3);
    memcpy(t->salt, "tenant1", 7);
    t->k.salt = t->salt;
    t->k.salt_len = 7;
    h = kvcd_key_hash(&t->k);
    ck_assert_int_eq(kvcd_l1_reserve(l1, &t->k, h, 4096, &o), 0);
    kvcd_l1_publish(l1, o);
    ck_assert_ptr_ne(o->key.model, t->model);
    ck_assert_ptr_ne(o->key.hash, t->hash);
    ck_assert_ptr_ne(o->key.salt, t->salt);
    memset(t, 0xee, sizeof(*t));
    free(t);

    tkey(&ref, 3);
    memcpy(ref.salt, "tenant1", 7);
    ref.k.salt = ref.salt;
    ref.k.salt_len = 7;
    ck_assert_uint_eq(kvcd_key_hash(&ref.k), h);
    ck_assert_ptr_eq(kvcd_l1_find_ready(l1, &ref.k, h), o);
    ck_assert(kvcd_key_equal(&o->key, &ref.k));
    kvcd_l1_unref(l1, o);
    kvcd_l1_destroy(l1);
}
END_TEST

/* Thousands of objects: the table grows and every key stays reachable. */
START_TEST(test_table_growth)
{
    const unsigned n = 5000;
    kvcd_l1_t *l1 = mk(n * 4096, KVCD_EVICT_NOOP, 0, 0);
    unsigned i;

    for (i = 0; i < n; i++)
        put(l1, i, 4096);
    ck_assert_uint_eq(stats(l1).objects, n);
    ck_assert_uint_eq(used(l1), (size_t)n * 4096);
    for (i = 0; i < n; i++) {
        kvcd_obj_t *o = get(l1, i);

        if (!o || *(unsigned char *)o->data != (i & 0xff))
            ck_abort_msg("object %u lost after growth", i);
    }
    for (i = 0; i < n; i += 2)
        kvcd_l1_unlink(l1, get(l1, i));
    for (i = 0; i < n; i++)
        if ((get(l1, i) != NULL) != (i % 2 == 1))
            ck_abort_msg("object %u wrong after removals", i);
    ck_assert_uint_eq(stats(l1).objects, n / 2);
    kvcd_l1_destroy(l1);
}
END_TEST

/* Returns the hash-encoded number of an object (see tkey). */
static unsigned num(const kvcd_obj_t *o)
{
    unsigned n;

    memcpy(&n, o->key.hash, sizeof(n));
    return n;
}

static void expect_lru(kvcd_l1_t *l1, const unsigned *want, size_t n)
{
    kvcd_obj_t *o = NULL;
    size_t i;

    for (i = 0; i < n; i++) {
        o = kvcd_l1_lru_next(l1, o);
        ck_assert_ptr_nonnull(o);
        ck_assert_uint_eq(num(o), want[i]);
    }
    ck_assert_ptr_null(kvcd_l1_lru_next(l1, o));
}

START_TEST(test_lru_order_and_touch)
{
    /* 4 objects fill the watermark exactly; the 5th must evict one. */
    kvcd_l1_t *l1 = mk(8 * MiB, KVCD_EVICT_LRU, 0.5, 0.5);
    const unsigned order0[] = {0, 1, 2, 3};
    const unsigned order1[] = {1, 3, 2, 0};
    const unsigned order2[] = {3, 2, 0, 4};
    kvcd_l1_stats_t st;
    kvcd_obj_t *o;
    unsigned i;

    for (i = 0; i < 4; i++)
        put(l1, i, MiB);
    expect_lru(l1, order0, 4);

    kvcd_l1_touch(l1, get(l1, 2));
    kvcd_l1_touch(l1, get(l1, 0));
    expect_lru(l1, order1, 4);
    /* find_ready does not count as a use. */
    ck_assert_ptr_nonnull(get(l1, 1));
    expect_lru(l1, order1, 4);

    ck_assert_uint_eq(stats(l1).evictions, 0);
    o = put(l1, 4, MiB);
    ck_assert_ptr_nonnull(o);
    /* 1 was least recently used, not 0 (the oldest). */
    ck_assert_ptr_null(get(l1, 1));
    ck_assert_ptr_nonnull(get(l1, 0));
    expect_lru(l1, order2, 4);
    st = stats(l1);
    ck_assert_uint_eq(st.evictions, 1);
    ck_assert_uint_eq(st.evicted_bytes, MiB);
    ck_assert_uint_eq(st.used, 4 * MiB);
    kvcd_l1_destroy(l1);
}
END_TEST

/* Writing, publishing and touching all move an object to the MRU end. */
START_TEST(test_publish_is_use)
{
    kvcd_l1_t *l1 = mk(8 * MiB, KVCD_EVICT_LRU, 0, 0);
    const unsigned want[] = {1, 0};
    kvcd_obj_t *a, *b;

    ck_assert_int_eq(reserve(l1, 0, MiB, &a), 0);
    ck_assert_int_eq(reserve(l1, 1, MiB, &b), 0);
    kvcd_l1_publish(l1, b);
    kvcd_l1_publish(l1, a);
    expect_lru(l1, want, 2);
    kvcd_l1_unref(l1, a);
    kvcd_l1_unref(l1, b);
    kvcd_l1_destroy(l1);
}
END_TEST

START_TEST(test_watermarks)
{
    /* 10 MiB, high 8 MiB, low 5 MiB, 1 MiB objects. */
    kvcd_l1_t *l1 = mk(10 * MiB, KVCD_EVICT_LRU, 0.8, 0.5);
    kvcd_l1_stats_t st;
    unsigned i;

    for (i = 0; i < 8; i++)
        put(l1, i, MiB);
    /* Up to the high watermark nothing is evicted. */
    st = stats(l1);
    ck_assert_uint_eq(st.used, 8 * MiB);
    ck_assert_uint_eq(st.evictions, 0);
    ck_assert_uint_eq(st.objects, 8);

    /* Crossing it evicts the 3 LRU objects (8 -> 5 MiB = low), then stores. */
    put(l1, 8, MiB);
    st = stats(l1);
    ck_assert_uint_eq(st.evictions, 3);
    ck_assert_uint_eq(st.evicted_bytes, 3 * MiB);
    ck_assert_uint_le(st.used - MiB, 5 * MiB);
    ck_assert_uint_eq(st.used, 6 * MiB);
    ck_assert_uint_eq(st.objects, 6);
    for (i = 0; i < 3; i++)
        ck_assert_ptr_null(get(l1, i));
    for (i = 3; i < 9; i++)
        ck_assert_ptr_nonnull(get(l1, i));

    /* Below high again: the next two stores evict nothing. */
    put(l1, 9, MiB);
    put(l1, 10, MiB);
    ck_assert_uint_eq(stats(l1).evictions, 3);
    ck_assert_uint_eq(stats(l1).used, 8 * MiB);
    kvcd_l1_destroy(l1);
}
END_TEST

/* The default (zeroed watermarks) is exact-capacity LRU: L1 fills to the last
 * byte, and a reserve evicts only what it needs, least recently used first. */
START_TEST(test_default_exact_capacity)
{
    kvcd_l1_t *l1 = mk(8 * MiB, KVCD_EVICT_LRU, 0, 0);
    kvcd_l1_stats_t st;
    unsigned i;

    st = stats(l1);
    ck_assert(st.high_watermark == 1.0);
    ck_assert(st.low_watermark == 1.0);
    for (i = 0; i < 8; i++)
        put(l1, i, MiB);
    st = stats(l1);
    ck_assert_uint_eq(st.used, 8 * MiB);
    ck_assert_uint_eq(st.objects, 8);
    ck_assert_uint_eq(st.evictions, 0);

    /* One object in, exactly one out: the least recently used. */
    put(l1, 8, MiB);
    st = stats(l1);
    ck_assert_uint_eq(st.evictions, 1);
    ck_assert_uint_eq(st.objects, 8);
    ck_assert_uint_eq(st.used, 8 * MiB);
    ck_assert_ptr_null(get(l1, 0));
    kvcd_l1_touch(l1, get(l1, 1));
    put(l1, 9, MiB);
    ck_assert_ptr_nonnull(get(l1, 1));
    ck_assert_ptr_null(get(l1, 2));
    /* A 3 MiB object takes exactly the 3 LRU ones (3, 4, 5). */
    put(l1, 10, 3 * MiB);
    st = stats(l1);
    ck_assert_uint_eq(st.evictions, 5);
    ck_assert_uint_eq(st.used, 8 * MiB);
    for (i = 3; i < 6; i++)
        ck_assert_ptr_null(get(l1, i));
    ck_assert_ptr_nonnull(get(l1, 6));
    kvcd_l1_destroy(l1);
}
END_TEST

/* With equal-size objects the default holds exactly what a strict LRU cache of
 * the same bytes holds: the same hits on a skewed random access sequence as a
 * reference model (an array ordered by recency). Batch eviction between
 * watermarks loses hits on the same sequence. */
static unsigned replay_hits(kvcd_l1_t *l1, unsigned cap_objs, unsigned *model_hits)
{
    unsigned model[64], nm = 0, hits = 0, i, j, step;
    uint64_t x = 12345;

    *model_hits = 0;
    ck_assert_uint_le(cap_objs, 64);
    for (step = 0; step < 20000; step++) {
        unsigned k;
        kvcd_obj_t *o;

        x = x * 6364136223846793005ull + 1442695040888963407ull;
        /* skewed: small keys far more often than large ones */
        k = (unsigned)((x >> 33) % 200);
        k = k * k / 200;
        o = get(l1, k);
        if (o) {
            hits++;
            kvcd_l1_touch(l1, o);
        } else {
            put(l1, k, 64 * 1024);
        }
        for (i = 0; i < nm && model[i] != k; i++)
            ;
        if (i < nm) {
            (*model_hits)++;
        } else if (nm == cap_objs) {
            i = 0; /* model[0] is the LRU one */
        } else {
            i = nm++;
            model[i] = k;
        }
        for (j = i; j + 1 < nm; j++)
            model[j] = model[j + 1];
        model[nm - 1] = k;
    }
    return hits;
}

START_TEST(test_default_equals_strict_lru)
{
    kvcd_l1_t *l1 = mk(48 * 64 * 1024, KVCD_EVICT_LRU, 0, 0);
    unsigned hits, model;

    hits = replay_hits(l1, 48, &model);
    ck_assert_uint_gt(model, 0);
    ck_assert_uint_eq(hits, model);
    ck_assert_uint_eq(stats(l1).objects, 48);
    kvcd_l1_destroy(l1);

    l1 = mk(48 * 64 * 1024, KVCD_EVICT_LRU, 0.95, 0.85);
    hits = replay_hits(l1, 48, &model);
    ck_assert_uint_lt(hits, model);
    kvcd_l1_destroy(l1);
}
END_TEST

/* An object bigger than high - low: eviction continues past low until the new
 * object fits under high. */
START_TEST(test_watermark_large_object)
{
    kvcd_l1_t *l1 = mk(10 * MiB, KVCD_EVICT_LRU, 0.8, 0.5);
    kvcd_l1_stats_t st;
    unsigned i;

    for (i = 0; i < 8; i++)
        put(l1, i, MiB);
    put(l1, 100, 4 * MiB);
    st = stats(l1);
    /* 8 -> 4 MiB so that 4 + 4 <= 8. */
    ck_assert_uint_eq(st.evictions, 4);
    ck_assert_uint_eq(st.used, 8 * MiB);
    ck_assert_uint_le(st.used, 8 * MiB);
    kvcd_l1_destroy(l1);
}
END_TEST

START_TEST(test_refs_protect_from_eviction)
{
    kvcd_l1_t *l1 = mk(4 * MiB, KVCD_EVICT_LRU, 1.0, 1.0);
    kvcd_obj_t *pinned, *writing;
    kvcd_l1_stats_t st;

    /* 0 is the LRU object but is referenced (say, being sent). */
    pinned = put(l1, 0, MiB);
    kvcd_l1_ref(pinned);
    put(l1, 1, MiB);
    /* 2 is still being written, never published. */
    ck_assert_int_eq(reserve(l1, 2, MiB, &writing), 0);
    put(l1, 3, MiB);

    /* Full: storing 4 must evict 1, skipping the pinned and the writing one. */
    put(l1, 4, MiB);
    ck_assert_ptr_eq(get(l1, 0), pinned);
    ck_assert_ptr_null(get(l1, 1));
    ck_assert_ptr_nonnull(get(l1, 3));
    ck_assert_ptr_nonnull(get(l1, 4));
    ck_assert_uint_eq(stats(l1).evictions, 1);

    put(l1, 5, MiB); /* evicts 3 */
    put(l1, 6, MiB); /* evicts 4 */
    ck_assert_ptr_null(get(l1, 3));
    ck_assert_ptr_null(get(l1, 4));
    st = stats(l1);
    ck_assert_uint_eq(st.evictions, 3);
    ck_assert_uint_eq(st.used, 4 * MiB);

    /* Everything else evictable is gone after one more; then no space. */
    put(l1, 7, MiB); /* evicts 5 */
    kvcd_l1_ref(get(l1, 6));
    kvcd_l1_ref(get(l1, 7));
    ck_assert_int_eq(reserve(l1, 8, MiB, &writing), KVCD_ENOSPACE);
    ck_assert_ptr_eq(get(l1, 0), pinned);
    ck_assert_ptr_nonnull(get(l1, 6));
    ck_assert_ptr_nonnull(get(l1, 7));
    st = stats(l1);
    ck_assert_uint_eq(st.used, 4 * MiB);
    ck_assert_uint_eq(st.objects, 4);
    kvcd_l1_destroy(l1); /* frees referenced objects too */
}
END_TEST

/* Unlinking a referenced object hides it at once but keeps its memory until
 * the last reference goes. */
START_TEST(test_unlink_referenced)
{
    kvcd_l1_t *l1 = mk(8 * MiB, KVCD_EVICT_LRU, 0, 0);
    kvcd_obj_t *o, *o2;

    o = put(l1, 1, 2 * MiB);
    kvcd_l1_ref(o);
    kvcd_l1_ref(o);
    kvcd_l1_unlink(l1, o);
    ck_assert_uint_eq(o->linked, 0);
    ck_assert_ptr_null(get(l1, 1));
    ck_assert_uint_eq(stats(l1).objects, 0);
    ck_assert_uint_eq(used(l1), 2 * MiB);
    ck_assert_ptr_null(kvcd_l1_lru_next(l1, NULL));
    kvcd_l1_unlink(l1, o); /* again: no-op */
    ck_assert_uint_eq(used(l1), 2 * MiB);

    /* The key is free for a new object while the old bytes are still in use. */
    ck_assert_int_eq(reserve(l1, 1, MiB, &o2), 0);
    ck_assert_ptr_ne(o2->data, o->data);
    ck_assert_uint_eq(used(l1), 3 * MiB);

    kvcd_l1_unref(l1, o);
    ck_assert_uint_eq(used(l1), 3 * MiB);
    /* touch/publish of an unlinked object must not put it back in the LRU. */
    kvcd_l1_touch(l1, o);
    ck_assert_ptr_eq(kvcd_l1_lru_next(l1, NULL), o2);
    ck_assert_ptr_null(kvcd_l1_lru_next(l1, o2));
    kvcd_l1_unref(l1, o);
    ck_assert_uint_eq(used(l1), MiB);
    ck_assert_uint_eq(stats(l1).evictions, 0);

    /* An aborted write: unlink the WRITING object, drop the writer's ref. */
    kvcd_l1_unlink(l1, o2);
    ck_assert_uint_eq(used(l1), MiB);
    kvcd_l1_unref(l1, o2);
    ck_assert_uint_eq(used(l1), 0);
    kvcd_l1_destroy(l1);
}
END_TEST

START_TEST(test_noop_policy)
{
    kvcd_l1_t *l1 = mk(4 * MiB, KVCD_EVICT_NOOP, 0.5, 0.25);
    kvcd_obj_t *o;
    kvcd_l1_stats_t st;
    unsigned i;

    /* Watermarks do not apply: it fills to capacity. */
    for (i = 0; i < 4; i++)
        put(l1, i, MiB);
    ck_assert_int_eq(reserve(l1, 4, MiB, &o), KVCD_ENOSPACE);
    ck_assert_ptr_null(o);
    ck_assert_int_eq(reserve(l1, 5, 4096, &o), KVCD_ENOSPACE);
    st = stats(l1);
    ck_assert_uint_eq(st.evictions, 0);
    ck_assert_uint_eq(st.objects, 4);
    ck_assert_uint_eq(st.used, 4 * MiB);
    ck_assert_uint_eq(st.largest_free, 0);
    for (i = 0; i < 4; i++)
        ck_assert_ptr_nonnull(get(l1, i));

    kvcd_l1_unlink(l1, get(l1, 2));
    ck_assert_int_eq(reserve(l1, 4, MiB, &o), 0);
    kvcd_l1_unref(l1, o);
    kvcd_l1_destroy(l1);
}
END_TEST

START_TEST(test_larger_than_capacity)
{
    kvcd_l1_t *l1 = mk(4 * MiB, KVCD_EVICT_LRU, 0, 0);
    kvcd_obj_t *o;
    kvcd_l1_stats_t st;

    put(l1, 1, MiB);
    put(l1, 2, MiB);
    ck_assert_int_eq(reserve(l1, 3, 4 * MiB + 1, &o), KVCD_ENOSPACE);
    ck_assert_int_eq(reserve(l1, 3, SIZE_MAX, &o), KVCD_ENOSPACE);
    ck_assert_ptr_null(o);
    /* Hopeless requests evict nothing. */
    st = stats(l1);
    ck_assert_uint_eq(st.evictions, 0);
    ck_assert_uint_eq(st.objects, 2);
    ck_assert_uint_eq(st.used, 2 * MiB);

    /* Exactly the capacity fits, by evicting everything. */
    ck_assert_int_eq(reserve(l1, 3, 4 * MiB, &o), 0);
    st = stats(l1);
    ck_assert_uint_eq(st.evictions, 2);
    ck_assert_uint_eq(st.objects, 1);
    ck_assert_uint_eq(st.used, 4 * MiB);
    kvcd_l1_unref(l1, o);
    kvcd_l1_destroy(l1);
}
END_TEST

/* Usage below the watermark but no hole big enough: LRU objects are evicted
 * one by one until two free neighbours merge into a fitting block. */
START_TEST(test_fragmentation_eviction)
{
    kvcd_l1_t *l1 = mk(8 * MiB, KVCD_EVICT_LRU, 1.0, 1.0);
    const unsigned touch[] = {0, 2, 4, 6};
    kvcd_l1_stats_t st;
    kvcd_obj_t *o;
    unsigned i;

    /* Objects 0..7 sit at offsets 0..7 MiB; LRU order becomes 1 3 5 7 0 2 4 6. */
    for (i = 0; i < 8; i++) {
        o = put(l1, i, MiB);
        ck_assert_ptr_eq(o->data, (char *)kvcd_l1_base(l1) + i * MiB);
    }
    for (i = 0; i < 4; i++)
        kvcd_l1_touch(l1, get(l1, touch[i]));
    /* Make the holes first: unlink 1 and 3, leaving 6 MiB used, two 1 MiB holes. */
    kvcd_l1_unlink(l1, get(l1, 1));
    kvcd_l1_unlink(l1, get(l1, 3));
    st = stats(l1);
    ck_assert_uint_eq(st.used, 6 * MiB);
    ck_assert_uint_eq(st.largest_free, MiB);

    /* 6 + 2 <= 8 = high: no watermark eviction, but no 2 MiB hole. Evicting 5
     * (at 5 MiB) and 7 does not help; 0 merges with the hole at 1. */
    ck_assert_int_eq(reserve(l1, 100, 2 * MiB, &o), 0);
    ck_assert_ptr_eq(o->data, kvcd_l1_base(l1));
    ck_assert_ptr_null(get(l1, 5));
    ck_assert_ptr_null(get(l1, 7));
    ck_assert_ptr_null(get(l1, 0));
    ck_assert_ptr_nonnull(get(l1, 2));
    ck_assert_ptr_nonnull(get(l1, 4));
    ck_assert_ptr_nonnull(get(l1, 6));
    st = stats(l1);
    ck_assert_uint_eq(st.evictions, 3);
    ck_assert_uint_eq(st.used, 5 * MiB);
    kvcd_l1_unref(l1, o);

    /* Nothing evictable and no hole: ENOSPACE, not a crash or a hang. */
    kvcd_l1_ref(get(l1, 2));
    kvcd_l1_ref(get(l1, 4));
    kvcd_l1_ref(get(l1, 6));
    kvcd_l1_ref(o);
    ck_assert_int_eq(reserve(l1, 101, 2 * MiB, &o), KVCD_ENOSPACE);
    kvcd_l1_destroy(l1);
}
END_TEST

START_TEST(test_clear)
{
    kvcd_l1_t *l1 = mk(16 * MiB, KVCD_EVICT_LRU, 0, 0);
    kvcd_obj_t *held, *writing;
    kvcd_l1_stats_t st;
    unsigned i;

    for (i = 0; i < 5; i++)
        put(l1, i, MiB);
    held = get(l1, 2);
    kvcd_l1_ref(held);
    ck_assert_int_eq(reserve(l1, 9, MiB, &writing), 0);

    ck_assert_uint_eq(kvcd_l1_clear(l1), 6);
    st = stats(l1);
    ck_assert_uint_eq(st.objects, 0);
    /* The held object and the one being written keep their memory. */
    ck_assert_uint_eq(st.used, 2 * MiB);
    ck_assert_uint_eq(st.evictions, 0);
    for (i = 0; i < 5; i++)
        ck_assert_ptr_null(get(l1, i));
    ck_assert_ptr_null(kvcd_l1_lru_next(l1, NULL));
    ck_assert_uint_eq(kvcd_l1_clear(l1), 0);

    kvcd_l1_unref(l1, held);
    kvcd_l1_unref(l1, writing);
    st = stats(l1);
    ck_assert_uint_eq(st.used, 0);
    ck_assert_uint_eq(st.largest_free, 16 * MiB);
    kvcd_l1_destroy(l1);
}
END_TEST

/* Destroy with referenced objects both linked and unlinked frees them all
 * (the sanitizer build checks for leaks). */
START_TEST(test_destroy_with_refs)
{
    kvcd_l1_t *l1 = mk(8 * MiB, KVCD_EVICT_LRU, 0, 0);
    kvcd_obj_t *a, *b;

    a = put(l1, 1, MiB);
    kvcd_l1_ref(a);
    b = put(l1, 2, MiB);
    kvcd_l1_ref(b);
    kvcd_l1_unlink(l1, b);
    ck_assert_int_eq(reserve(l1, 3, MiB, &a), 0);
    ck_assert_uint_eq(used(l1), 3 * MiB);
    kvcd_l1_destroy(l1);
}
END_TEST

/* Churn through many more bytes than the capacity with a mix of sizes and
 * some pinned objects: the accounting stays exact and capacity is never
 * exceeded. */
START_TEST(test_churn)
{
    const size_t cap = 64 * MiB;
    kvcd_l1_t *l1 = mk(cap, KVCD_EVICT_LRU, 0.9, 0.7);
    static const size_t sizes[] = {MiB, 2 * MiB, 4 * MiB, 12345, 3 * MiB + 4096};
    kvcd_obj_t *pins[8] = {0};
    kvcd_l1_stats_t st;
    uint64_t stored = 0;
    unsigned i;
    int rc;

    for (i = 0; i < 3000; i++) {
        size_t sz = sizes[(i * 7) % 5];
        kvcd_obj_t *o;

        rc = reserve(l1, i, sz, &o);
        if (rc != 0)
            ck_abort_msg("reserve %u: %s", i, kvcd_strerror(rc));
        stored += sz;
        kvcd_l1_publish(l1, o);
        /* Keep a few pinned at any time, rotating. */
        if (pins[i % 8])
            kvcd_l1_unref(l1, pins[i % 8]);
        pins[i % 8] = o;
        kvcd_l1_stats(l1, &st);
        if (st.used > cap || st.objects == 0)
            ck_abort_msg("used %zu objects %zu", st.used, st.objects);
    }
    ck_assert_uint_gt(stored, 10 * cap);
    st = stats(l1);
    ck_assert_uint_gt(st.evictions, 0);
    for (i = 0; i < 8; i++) {
        ck_assert_uint_eq(pins[i]->linked, 1);
        kvcd_l1_unref(l1, pins[i]);
    }
    ck_assert_uint_eq(kvcd_l1_clear(l1), st.objects);
    ck_assert_uint_eq(used(l1), 0);
    ck_assert_uint_eq(stats(l1).largest_free, cap);
    kvcd_l1_destroy(l1);
}
END_TEST

static Suite *l1_suite(void)
{
    Suite *s = suite_create("l1");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_hugepages_fallback);
    tcase_add_test(tc, test_lock_memory);
    tcase_add_test(tc, test_reserve_publish_find);
    tcase_add_test(tc, test_reserve_bad_size);
    tcase_add_test(tc, test_duplicate_reserve_busy);
    tcase_add_test(tc, test_keys_one_field_apart);
    tcase_add_test(tc, test_hash_collisions);
    tcase_add_test(tc, test_key_deep_copy);
    tcase_add_test(tc, test_table_growth);
    tcase_add_test(tc, test_lru_order_and_touch);
    tcase_add_test(tc, test_publish_is_use);
    tcase_add_test(tc, test_watermarks);
    tcase_add_test(tc, test_watermark_large_object);
    tcase_add_test(tc, test_default_exact_capacity);
    tcase_add_test(tc, test_default_equals_strict_lru);
    tcase_add_test(tc, test_refs_protect_from_eviction);
    tcase_add_test(tc, test_unlink_referenced);
    tcase_add_test(tc, test_noop_policy);
    tcase_add_test(tc, test_larger_than_capacity);
    tcase_add_test(tc, test_fragmentation_eviction);
    tcase_add_test(tc, test_clear);
    tcase_add_test(tc, test_destroy_with_refs);
    tcase_add_test(tc, test_churn);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(l1_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
