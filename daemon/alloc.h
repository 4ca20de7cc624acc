/*
 * alloc.h - a block allocator over one contiguous range of bytes (the L1 arena).
 *
 * Two-level segregated fit (TLSF, Masmano et al.): free blocks sit in size-class
 * lists indexed by two bitmaps, so allocation and free are O(1); a free block
 * is coalesced with its free neighbours at once, so fragmentation stays low for
 * the mix kvcd sees (many chunk-sized objects of a few MiB plus odd sizes).
 * Every block starts at a multiple of `align` and spans a multiple of it.
 *
 * Block descriptors live outside the managed range (malloc), so the range holds
 * only payload and every payload is aligned for O_DIRECT and DMA.
 *
 * Not thread-safe: one owner (the loop thread).
 */
#ifndef KVCD_ALLOC_H
#define KVCD_ALLOC_H

#include <stddef.h>
#include <stdint.h>

typedef struct kvcd_alloc_s kvcd_alloc_t;

/* A block handed out by kvcd_alloc_get. `off` and `size` are read-only. */
typedef struct kvcd_blk_s kvcd_blk_t;
struct kvcd_blk_s {
    size_t off;     /* offset in the range, multiple of align */
    size_t size;    /* bytes, multiple of align, >= the requested size */
    /* ---- private to alloc.c ---- */
    kvcd_blk_t *phys_prev, *phys_next; /* address order neighbours */
    kvcd_blk_t *free_prev, *free_next; /* size-class list, when free */
    int free;
};

/* Manage [0, size). align is a power of two; size is rounded down to it.
 * 0 or -ENOMEM / -EINVAL. */
int kvcd_alloc_create(size_t size, size_t align, kvcd_alloc_t **out);
void kvcd_alloc_destroy(kvcd_alloc_t *a);

/* A block of at least `size` bytes (rounded up to align), or NULL when no free
 * block fits (or descriptor memory ran out). */
kvcd_blk_t *kvcd_alloc_get(kvcd_alloc_t *a, size_t size);

/* Return a block; it is merged with free neighbours. */
void kvcd_alloc_put(kvcd_alloc_t *a, kvcd_blk_t *b);

size_t kvcd_alloc_used(const kvcd_alloc_t *a);      /* bytes in handed-out blocks */
size_t kvcd_alloc_capacity(const kvcd_alloc_t *a);
/* Size of the largest request kvcd_alloc_get would satisfy right now. */
size_t kvcd_alloc_largest_free(const kvcd_alloc_t *a);

#endif
