/*
 * alloc.c - two-level segregated fit allocator over offsets [0, capacity).
 *
 * Sizes are handled in granules of `align` bytes. A free block of g granules
 * lives in the list of class (fl, sl): below SL_COUNT granules the classes are
 * exact (fl 0, sl g); above, fl is the position of g's highest bit and sl the
 * next SL_LOG2 bits, so each power-of-two range is cut into SL_COUNT equal
 * classes. fl_map has bit fl set iff some sl list of fl is non-empty, and
 * sl_map[fl] has bit sl set iff heads[fl][sl] is non-empty.
 *
 * Invariants (kvcd_alloc_get/put keep them; the tests walk them):
 *   - the phys_prev/phys_next chain covers [0, capacity) in address order with
 *     no gap and no overlap;
 *   - no two free blocks are physical neighbours (they are merged at once);
 *   - a block is in exactly one size-class list iff it is free;
 *   - used == sum of the sizes of blocks not free.
 *
 * Descriptors come from malloc'd slabs and are recycled through a private
 * free list, so the steady state (split on get, merge on put) never calls
 * malloc; slabs are released only by kvcd_alloc_destroy.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"

#define SL_LOG2 5
#define SL_COUNT (1u << SL_LOG2)
#define FL_COUNT 64
#define SLAB_BLKS 256

typedef struct slab_s slab_t;
struct slab_s {
    slab_t *next;
    kvcd_blk_t blks[SLAB_BLKS];
};

struct kvcd_alloc_s {
    size_t capacity;
    size_t align;
    size_t used;
    unsigned shift; /* log2(align) */
    uint64_t fl_map;
    uint32_t sl_map[FL_COUNT];
    kvcd_blk_t *heads[FL_COUNT][SL_COUNT];
    kvcd_blk_t *spare; /* unused descriptors, via free_next */
    slab_t *slabs;
};

static unsigned fls64(uint64_t x)
{
    return 63u - (unsigned)__builtin_clzll(x);
}

/* The class a free block of g granules is filed under (g rounded down). */
static void mapping_insert(uint64_t g, unsigned *fl, unsigned *sl)
{
    unsigned f;

    if (g < SL_COUNT) {
        *fl = 0;
        *sl = (unsigned)g;
        return;
    }
    f = fls64(g);
    *fl = f - SL_LOG2 + 1;
    *sl = (unsigned)(g >> (f - SL_LOG2)) - SL_COUNT;
}

/* The first class whose every block holds g granules (g rounded up to the
 * next class boundary), so the head of any non-empty class at or above it fits
 * without looking at sizes. */
static void mapping_search(uint64_t g, unsigned *fl, unsigned *sl)
{
    if (g >= SL_COUNT)
        g += ((uint64_t)1 << (fls64(g) - SL_LOG2)) - 1;
    mapping_insert(g, fl, sl);
}

static void free_insert(kvcd_alloc_t *a, kvcd_blk_t *b)
{
    unsigned fl, sl;
    kvcd_blk_t **head;

    mapping_insert(b->size >> a->shift, &fl, &sl);
    head = &a->heads[fl][sl];
    b->free = 1;
    b->free_prev = NULL;
    b->free_next = *head;
    if (*head)
        (*head)->free_prev = b;
    *head = b;
    a->fl_map |= (uint64_t)1 << fl;
    a->sl_map[fl] |= 1u << sl;
}

static void free_remove(kvcd_alloc_t *a, kvcd_blk_t *b)
{
    unsigned fl, sl;

    mapping_insert(b->size >> a->shift, &fl, &sl);
    if (b->free_prev)
        b->free_prev->free_next = b->free_next;
    else
        a->heads[fl][sl] = b->free_next;
    if (b->free_next)
        b->free_next->free_prev = b->free_prev;
    if (!a->heads[fl][sl]) {
        a->sl_map[fl] &= ~(1u << sl);
        if (!a->sl_map[fl])
            a->fl_map &= ~((uint64_t)1 << fl);
    }
    b->free = 0;
    b->free_prev = b->free_next = NULL;
}

/* Head of the first non-empty class at or above (fl, sl), or NULL. */
static kvcd_blk_t *find_suitable(kvcd_alloc_t *a, unsigned fl, unsigned sl)
{
    uint32_t sl_bits = a->sl_map[fl] & (~0u << sl);
    uint64_t fl_bits;

    if (!sl_bits) {
        if (fl + 1 >= FL_COUNT)
            return NULL;
        fl_bits = a->fl_map & (~(uint64_t)0 << (fl + 1));
        if (!fl_bits)
            return NULL;
        fl = (unsigned)__builtin_ctzll(fl_bits);
        sl_bits = a->sl_map[fl];
    }
    sl = (unsigned)__builtin_ctz(sl_bits);
    return a->heads[fl][sl];
}

static kvcd_blk_t *find_fit(kvcd_alloc_t *a, size_t size)
{
    uint64_t g = size >> a->shift;
    unsigned fl, sl, fl0, sl0;
    kvcd_blk_t *b;

    mapping_search(g, &fl, &sl);
    b = find_suitable(a, fl, sl);
    if (b)
        return b;
    /* Rounding up skipped the request's own class, whose larger members would
     * fit. Looking there too keeps "no fit" exact: a request fails only when
     * no free block is big enough, which kvcd_alloc_largest_free promises. */
    mapping_insert(g, &fl0, &sl0);
    if (fl0 == fl && sl0 == sl)
        return NULL;
    for (b = a->heads[fl0][sl0]; b; b = b->free_next)
        if (b->size >= size)
            return b;
    return NULL;
}

static kvcd_blk_t *desc_get(kvcd_alloc_t *a)
{
    kvcd_blk_t *b;
    slab_t *s;
    size_t i;

    if (!a->spare) {
        s = malloc(sizeof(*s));
        if (!s)
            return NULL;
        s->next = a->slabs;
        a->slabs = s;
        for (i = 0; i < SLAB_BLKS; i++) {
            s->blks[i].free_next = a->spare;
            a->spare = &s->blks[i];
        }
    }
    b = a->spare;
    a->spare = b->free_next;
    memset(b, 0, sizeof(*b));
    return b;
}

static void desc_put(kvcd_alloc_t *a, kvcd_blk_t *b)
{
    b->free_next = a->spare;
    a->spare = b;
}

int kvcd_alloc_create(size_t size, size_t align, kvcd_alloc_t **out)
{
    kvcd_alloc_t *a;
    kvcd_blk_t *b;

    *out = NULL;
    if (align == 0 || (align & (align - 1)) != 0)
        return -EINVAL;
    size &= ~(align - 1);
    if (size == 0)
        return -EINVAL;
    a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->capacity = size;
    a->align = align;
    a->shift = (unsigned)__builtin_ctzll(align);
    b = desc_get(a);
    if (!b) {
        free(a);
        return -ENOMEM;
    }
    b->off = 0;
    b->size = size;
    free_insert(a, b);
    *out = a;
    return 0;
}

void kvcd_alloc_destroy(kvcd_alloc_t *a)
{
    slab_t *s, *next;

    if (!a)
        return;
    for (s = a->slabs; s; s = next) {
        next = s->next;
        free(s);
    }
    free(a);
}

kvcd_blk_t *kvcd_alloc_get(kvcd_alloc_t *a, size_t size)
{
    kvcd_blk_t *b, *rest;

    /* A zero-byte block would share its offset with a neighbour; give it one
     * granule so offsets stay unique. The capacity check comes before rounding
     * so a huge size cannot wrap. */
    if (size == 0)
        size = 1;
    if (size > a->capacity)
        return NULL;
    size = (size + a->align - 1) & ~(a->align - 1);

    b = find_fit(a, size);
    if (!b)
        return NULL;
    free_remove(a, b);
    if (b->size > size) {
        /* Without a descriptor for the remainder, handing out the whole block
         * is still correct (size >= requested); only the tail is wasted until
         * the block comes back. */
        rest = desc_get(a);
        if (rest) {
            rest->off = b->off + size;
            rest->size = b->size - size;
            rest->phys_prev = b;
            rest->phys_next = b->phys_next;
            if (b->phys_next)
                b->phys_next->phys_prev = rest;
            b->phys_next = rest;
            b->size = size;
            free_insert(a, rest);
        }
    }
    a->used += b->size;
    return b;
}

void kvcd_alloc_put(kvcd_alloc_t *a, kvcd_blk_t *b)
{
    kvcd_blk_t *n, *p;

    if (!b)
        return;
    assert(!b->free);
    a->used -= b->size;

    p = b->phys_prev;
    if (p && p->free) {
        free_remove(a, p);
        p->size += b->size;
        p->phys_next = b->phys_next;
        if (b->phys_next)
            b->phys_next->phys_prev = p;
        desc_put(a, b);
        b = p;
    }
    n = b->phys_next;
    if (n && n->free) {
        free_remove(a, n);
        b->size += n->size;
        b->phys_next = n->phys_next;
        if (n->phys_next)
            n->phys_next->phys_prev = b;
        desc_put(a, n);
    }
    free_insert(a, b);
}

size_t kvcd_alloc_used(const kvcd_alloc_t *a)
{
    return a->used;
}

size_t kvcd_alloc_capacity(const kvcd_alloc_t *a)
{
    return a->capacity;
}

size_t kvcd_alloc_largest_free(const kvcd_alloc_t *a)
{
    const kvcd_blk_t *b;
    unsigned fl, sl;
    size_t best = 0;

    /* Classes are ordered by size, so the largest block is in the highest
     * non-empty one; only that list needs a scan. */
    if (!a->fl_map)
        return 0;
    fl = fls64(a->fl_map);
    sl = 31u - (unsigned)__builtin_clz(a->sl_map[fl]);
    for (b = a->heads[fl][sl]; b; b = b->free_next)
        if (b->size > best)
            best = b->size;
    return best;
}
