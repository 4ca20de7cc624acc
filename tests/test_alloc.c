/*
 * test_alloc.c - the TLSF block allocator (daemon/alloc.c).
 *
 * Besides the public results, the tests walk the block descriptors' physical
 * neighbour chain (white box, through the fields alloc.h marks private) to
 * check the allocator's invariants: blocks tile [0, capacity) exactly, no two
 * free blocks touch, used bytes and the largest free block match the walk.
 */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "daemon/alloc.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)
#define ALIGN ((size_t)4096)

/* Check writes a record for every passing ck_assert; the hot loops below
 * would spend their time in that, so they only call into Check on failure. */
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg("failed: %s", #cond);                                                     \
    } while (0)
#define REQUIRE_EQ(x, y)                                                                           \
    do {                                                                                           \
        size_t x_ = (x), y_ = (y);                                                                 \
        if (x_ != y_)                                                                              \
            ck_abort_msg("failed: %s == %s (%zu != %zu)", #x, #y, x_, y_);                         \
    } while (0)

static uint64_t rng_state;

/* splitmix64: deterministic, so a failure reproduces from the printed seed. */
static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t rnd_below(size_t n)
{
    return (size_t)(rnd() % n);
}

/* Walk the whole physical chain from any block and check every invariant that
 * can be seen from outside the size-class lists. */
static void check_chain(kvcd_alloc_t *a, const kvcd_blk_t *any)
{
    const kvcd_blk_t *b = any;
    size_t end = 0, used = 0, max_free = 0;
    int prev_free = 0;

    while (b->phys_prev)
        b = b->phys_prev;
    REQUIRE_EQ(b->off, 0);
    for (; b; b = b->phys_next) {
        REQUIRE_EQ(b->off, end);
        REQUIRE_EQ(b->off % ALIGN, 0);
        REQUIRE(b->size > 0);
        REQUIRE_EQ(b->size % ALIGN, 0);
        if (b->phys_next)
            REQUIRE(b->phys_next->phys_prev == b);
        if (b->free) {
            if (prev_free)
                ck_abort_msg("free blocks at %zu not merged", b->off);
            if (b->size > max_free)
                max_free = b->size;
        } else {
            used += b->size;
        }
        prev_free = b->free;
        end = b->off + b->size;
    }
    REQUIRE_EQ(end, kvcd_alloc_capacity(a));
    REQUIRE_EQ(used, kvcd_alloc_used(a));
    REQUIRE_EQ(max_free, kvcd_alloc_largest_free(a));
}

START_TEST(test_create_args)
{
    kvcd_alloc_t *a = (kvcd_alloc_t *)1;

    ck_assert_int_eq(kvcd_alloc_create(MiB, 3000, &a), -EINVAL);
    ck_assert_ptr_null(a);
    ck_assert_int_eq(kvcd_alloc_create(MiB, 0, &a), -EINVAL);
    ck_assert_int_eq(kvcd_alloc_create(ALIGN - 1, ALIGN, &a), -EINVAL);

    ck_assert_int_eq(kvcd_alloc_create(10 * ALIGN + 100, ALIGN, &a), 0);
    ck_assert_uint_eq(kvcd_alloc_capacity(a), 10 * ALIGN);
    ck_assert_uint_eq(kvcd_alloc_used(a), 0);
    ck_assert_uint_eq(kvcd_alloc_largest_free(a), 10 * ALIGN);
    kvcd_alloc_destroy(a);
    kvcd_alloc_destroy(NULL);
}
END_TEST

START_TEST(test_alignment)
{
    static const size_t req[] = {1,       ALIGN - 1,   ALIGN,    ALIGN + 1, 12345,
                                 MiB + 1, 3 * MiB - 7, 16 * MiB, 77777,     5};
    kvcd_blk_t *b[sizeof(req) / sizeof(req[0])];
    kvcd_alloc_t *a;
    size_t i, used = 0;

    ck_assert_int_eq(kvcd_alloc_create(64 * MiB, ALIGN, &a), 0);
    for (i = 0; i < sizeof(req) / sizeof(req[0]); i++) {
        b[i] = kvcd_alloc_get(a, req[i]);
        ck_assert_ptr_nonnull(b[i]);
        ck_assert_uint_eq(b[i]->off % ALIGN, 0);
        ck_assert_uint_eq(b[i]->size % ALIGN, 0);
        ck_assert_uint_ge(b[i]->size, req[i]);
        /* Rounded up to the next granule, not to a size class. */
        ck_assert_uint_lt(b[i]->size, req[i] + ALIGN);
        used += b[i]->size;
        ck_assert_uint_eq(kvcd_alloc_used(a), used);
    }
    check_chain(a, b[0]);
    for (i = 0; i < sizeof(req) / sizeof(req[0]); i++)
        kvcd_alloc_put(a, b[i]);
    ck_assert_uint_eq(kvcd_alloc_used(a), 0);
    kvcd_alloc_destroy(a);
}
END_TEST

START_TEST(test_zero_size)
{
    kvcd_alloc_t *a;
    kvcd_blk_t *x, *y;

    ck_assert_int_eq(kvcd_alloc_create(MiB, ALIGN, &a), 0);
    x = kvcd_alloc_get(a, 0);
    y = kvcd_alloc_get(a, 0);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(y);
    ck_assert_uint_eq(x->size, ALIGN);
    ck_assert_uint_ne(x->off, y->off);
    kvcd_alloc_put(a, x);
    kvcd_alloc_put(a, y);
    kvcd_alloc_put(a, NULL);
    ck_assert_uint_eq(kvcd_alloc_used(a), 0);
    kvcd_alloc_destroy(a);
}
END_TEST

START_TEST(test_reuse_after_free)
{
    kvcd_alloc_t *a;
    kvcd_blk_t *x, *y, *z;
    size_t off;

    ck_assert_int_eq(kvcd_alloc_create(8 * MiB, ALIGN, &a), 0);
    x = kvcd_alloc_get(a, 2 * MiB);
    y = kvcd_alloc_get(a, 2 * MiB);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(y);
    off = x->off;
    kvcd_alloc_put(a, x);
    ck_assert_uint_eq(kvcd_alloc_used(a), 2 * MiB);
    /* The hole left by x is an exact fit and is taken again. */
    z = kvcd_alloc_get(a, 2 * MiB);
    ck_assert_ptr_nonnull(z);
    ck_assert_uint_eq(z->off, off);
    ck_assert_uint_eq(kvcd_alloc_used(a), 4 * MiB);
    check_chain(a, z);
    kvcd_alloc_put(a, y);
    kvcd_alloc_put(a, z);
    ck_assert_uint_eq(kvcd_alloc_largest_free(a), 8 * MiB);
    kvcd_alloc_destroy(a);
}
END_TEST

/* Three blocks tile the range; free them in every order. After the middle one
 * and both neighbours are free there must be one block of the full size. */
START_TEST(test_coalesce)
{
    static const int order[6][3] = {{1, 0, 2}, {1, 2, 0}, {0, 2, 1},
                                    {2, 0, 1}, {0, 1, 2}, {2, 1, 0}};
    const size_t sz[3] = {3 * MiB, 1 * MiB + 5 * ALIGN, 2 * MiB};
    const size_t cap = sz[0] + sz[1] + sz[2];
    kvcd_alloc_t *a;
    kvcd_blk_t *b[3], *all;
    size_t freed;
    int i, k;

    ck_assert_int_eq(kvcd_alloc_create(cap, ALIGN, &a), 0);
    for (k = 0; k < 6; k++) {
        for (i = 0; i < 3; i++) {
            b[i] = kvcd_alloc_get(a, sz[i]);
            ck_assert_ptr_nonnull(b[i]);
        }
        ck_assert_uint_eq(b[0]->off, 0);
        ck_assert_uint_eq(b[1]->off, sz[0]);
        ck_assert_uint_eq(b[2]->off, sz[0] + sz[1]);
        ck_assert_uint_eq(kvcd_alloc_largest_free(a), 0);
        ck_assert_ptr_null(kvcd_alloc_get(a, 1));

        freed = 0;
        for (i = 0; i < 3; i++) {
            int j = order[k][i];

            kvcd_alloc_put(a, b[j]);
            freed += sz[j];
            ck_assert_uint_eq(kvcd_alloc_used(a), cap - freed);
            if (i < 2)
                check_chain(a, b[order[k][2]]);
        }
        ck_assert_uint_eq(kvcd_alloc_largest_free(a), cap);
        all = kvcd_alloc_get(a, cap);
        ck_assert_ptr_nonnull(all);
        ck_assert_uint_eq(all->off, 0);
        ck_assert_uint_eq(all->size, cap);
        ck_assert_ptr_null(all->phys_prev);
        ck_assert_ptr_null(all->phys_next);
        kvcd_alloc_put(a, all);
    }
    kvcd_alloc_destroy(a);
}
END_TEST

START_TEST(test_exhaustion)
{
    const size_t cap = 64 * MiB;
    kvcd_blk_t *b[64], *x;
    kvcd_alloc_t *a;
    size_t n = 0;

    ck_assert_int_eq(kvcd_alloc_create(cap, ALIGN, &a), 0);
    while ((x = kvcd_alloc_get(a, MiB)) != NULL) {
        ck_assert_uint_lt(n, 64);
        b[n++] = x;
    }
    ck_assert_uint_eq(n, 64);
    ck_assert_uint_eq(kvcd_alloc_used(a), cap);
    ck_assert_uint_eq(kvcd_alloc_largest_free(a), 0);
    ck_assert_ptr_null(kvcd_alloc_get(a, 1));
    check_chain(a, b[0]);

    kvcd_alloc_put(a, b[10]);
    ck_assert_uint_eq(kvcd_alloc_largest_free(a), MiB);
    ck_assert_ptr_null(kvcd_alloc_get(a, MiB + 1));
    b[10] = kvcd_alloc_get(a, MiB);
    ck_assert_ptr_nonnull(b[10]);
    ck_assert_uint_eq(b[10]->off, 10 * MiB);

    for (n = 0; n < 64; n++)
        kvcd_alloc_put(a, b[n]);
    ck_assert_ptr_null(kvcd_alloc_get(a, cap + 1));
    ck_assert_ptr_null(kvcd_alloc_get(a, SIZE_MAX));
    ck_assert_uint_eq(kvcd_alloc_used(a), 0);
    ck_assert_uint_eq(kvcd_alloc_largest_free(a), cap);
    kvcd_alloc_destroy(a);
}
END_TEST

/* A request that is not at a size-class boundary must still find a free block
 * of its own class that is big enough: 100 and 101 granules share a class. */
START_TEST(test_fit_within_class)
{
    kvcd_alloc_t *a;
    kvcd_blk_t *x, *s1, *y, *s2, *z;

    ck_assert_int_eq(kvcd_alloc_create((100 + 1 + 101 + 1) * ALIGN, ALIGN, &a), 0);
    x = kvcd_alloc_get(a, 100 * ALIGN);
    s1 = kvcd_alloc_get(a, ALIGN);
    y = kvcd_alloc_get(a, 101 * ALIGN);
    s2 = kvcd_alloc_get(a, ALIGN);
    ck_assert_ptr_nonnull(s2);
    ck_assert_uint_eq(kvcd_alloc_used(a), kvcd_alloc_capacity(a));
    kvcd_alloc_put(a, x);
    kvcd_alloc_put(a, y);
    ck_assert_uint_eq(kvcd_alloc_largest_free(a), 101 * ALIGN);
    ck_assert_ptr_null(kvcd_alloc_get(a, 102 * ALIGN));
    z = kvcd_alloc_get(a, 101 * ALIGN);
    ck_assert_ptr_nonnull(z);
    ck_assert_uint_eq(z->off, 101 * ALIGN);
    ck_assert_uint_eq(kvcd_alloc_largest_free(a), 100 * ALIGN);
    check_chain(a, z);
    kvcd_alloc_put(a, z);
    kvcd_alloc_put(a, s1);
    kvcd_alloc_put(a, s2);
    ck_assert_uint_eq(kvcd_alloc_largest_free(a), kvcd_alloc_capacity(a));
    kvcd_alloc_destroy(a);
}
END_TEST

/* A capacity that is not a class boundary can still be handed out whole. */
START_TEST(test_odd_capacity_whole)
{
    kvcd_alloc_t *a;
    kvcd_blk_t *x;

    ck_assert_int_eq(kvcd_alloc_create(1000003 * ALIGN, ALIGN, &a), 0);
    ck_assert_uint_eq(kvcd_alloc_largest_free(a), 1000003 * ALIGN);
    x = kvcd_alloc_get(a, 1000003 * ALIGN);
    ck_assert_ptr_nonnull(x);
    ck_assert_uint_eq(x->size, 1000003 * ALIGN);
    kvcd_alloc_put(a, x);
    kvcd_alloc_destroy(a);
}
END_TEST

typedef struct {
    kvcd_blk_t *b;
    size_t req;
} live_t;

static size_t random_size(void)
{
    switch (rnd_below(8)) {
    case 0:
    case 1:
        return MiB;
    case 2:
    case 3:
        return 4 * MiB;
    case 4:
        return 16 * MiB;
    case 5:
        return 1 + rnd_below(5 * MiB); /* odd, multi-granule */
    case 6:
        return 1 + rnd_below(64 * KiB); /* small */
    default:
        return 3 * MiB + rnd_below(2) * ALIGN; /* near a class edge */
    }
}

static void check_no_overlap(const live_t *live, size_t n, const kvcd_blk_t *b)
{
    size_t i;

    for (i = 0; i < n; i++) {
        const kvcd_blk_t *o = live[i].b;

        if (!(b->off + b->size <= o->off || o->off + o->size <= b->off))
            ck_abort_msg("[%zu,+%zu) overlaps [%zu,+%zu)", b->off, b->size, o->off, o->size);
    }
}

/* Thousands of gets and puts of a chunk-like mix, checked against a shadow
 * list of live blocks. Ends by freeing everything: the range must be one free
 * block again. */
START_TEST(test_random_mix)
{
    const size_t cap = 1 * GiB;
    const int ops = 20000;
    uint64_t seed = 0x6b766364ull + (uint64_t)_i;
    live_t *live;
    size_t n = 0, used = 0, fails = 0, L, i;
    kvcd_alloc_t *a;
    kvcd_blk_t *b;
    int op;

    rng_state = seed;
    fprintf(stderr, "test_random_mix: seed %llu\n", (unsigned long long)seed);
    live = calloc(cap / ALIGN, sizeof(*live));
    ck_assert_ptr_nonnull(live);
    ck_assert_int_eq(kvcd_alloc_create(cap, ALIGN, &a), 0);

    for (op = 0; op < ops; op++) {
        /* Lean towards allocation so the range stays mostly full and
         * fragmented, where failures and partial fits happen. */
        if (n == 0 || rnd_below(100) < 55) {
            size_t req = random_size();

            L = kvcd_alloc_largest_free(a);
            b = kvcd_alloc_get(a, req);
            if (!b) {
                /* Exact: a failure means no free block was big enough. */
                REQUIRE(L < req);
                fails++;
                continue;
            }
            REQUIRE(L >= req);
            REQUIRE_EQ(b->off % ALIGN, 0);
            REQUIRE(b->size >= req);
            REQUIRE(b->off + b->size <= cap);
            REQUIRE(!b->free);
            check_no_overlap(live, n, b);
            live[n].b = b;
            live[n].req = req;
            n++;
            used += b->size;
        } else {
            i = rnd_below(n);
            used -= live[i].b->size;
            kvcd_alloc_put(a, live[i].b);
            live[i] = live[--n];
        }
        REQUIRE_EQ(kvcd_alloc_used(a), used);
        if (n > 0 && op % 64 == 0)
            check_chain(a, live[0].b);
    }
    /* The mix must have hit both a full range and a fragmented one. */
    ck_assert_uint_gt(fails, 0);
    ck_assert_uint_gt(n, 0);
    check_chain(a, live[0].b);

    /* largest_free is what get would satisfy, to the granule. */
    L = kvcd_alloc_largest_free(a);
    if (L > 0) {
        b = kvcd_alloc_get(a, L);
        ck_assert_ptr_nonnull(b);
        kvcd_alloc_put(a, b);
    }
    ck_assert_ptr_null(kvcd_alloc_get(a, L + 1));

    while (n > 0) {
        i = rnd_below(n);
        used -= live[i].b->size;
        kvcd_alloc_put(a, live[i].b);
        live[i] = live[--n];
        REQUIRE_EQ(kvcd_alloc_used(a), used);
    }
    ck_assert_uint_eq(kvcd_alloc_used(a), 0);
    ck_assert_uint_eq(kvcd_alloc_largest_free(a), cap);
    b = kvcd_alloc_get(a, cap);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_null(b->phys_prev);
    ck_assert_ptr_null(b->phys_next);
    kvcd_alloc_put(a, b);
    kvcd_alloc_destroy(a);
    free(live);
}
END_TEST

/* Many equal chunks: after a fill/free-half/refill cycle, every hole is
 * reused, so the range fills completely again. */
START_TEST(test_equal_chunks_refill)
{
    const size_t cap = 256 * MiB, chunk = 2 * MiB;
    kvcd_blk_t *b[128];
    kvcd_alloc_t *a;
    size_t i;

    rng_state = 42;
    ck_assert_int_eq(kvcd_alloc_create(cap, ALIGN, &a), 0);
    for (i = 0; i < 128; i++)
        ck_assert_ptr_nonnull(b[i] = kvcd_alloc_get(a, chunk));
    ck_assert_ptr_null(kvcd_alloc_get(a, 1));
    for (i = 0; i < 128; i++)
        if (rnd() & 1) {
            kvcd_alloc_put(a, b[i]);
            b[i] = NULL;
        }
    for (i = 0; i < 128; i++)
        if (!b[i])
            ck_assert_ptr_nonnull(b[i] = kvcd_alloc_get(a, chunk));
    ck_assert_uint_eq(kvcd_alloc_used(a), cap);
    check_chain(a, b[0]);
    for (i = 0; i < 128; i++)
        kvcd_alloc_put(a, b[i]);
    ck_assert_uint_eq(kvcd_alloc_largest_free(a), cap);
    kvcd_alloc_destroy(a);
}
END_TEST

static Suite *alloc_suite(void)
{
    Suite *s = suite_create("alloc");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_create_args);
    tcase_add_test(tc, test_alignment);
    tcase_add_test(tc, test_zero_size);
    tcase_add_test(tc, test_reuse_after_free);
    tcase_add_test(tc, test_coalesce);
    tcase_add_test(tc, test_exhaustion);
    tcase_add_test(tc, test_fit_within_class);
    tcase_add_test(tc, test_odd_capacity_whole);
    tcase_add_test(tc, test_equal_chunks_refill);
    tcase_add_loop_test(tc, test_random_mix, 0, 3);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(alloc_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
