/*
 * ring.h - the consistent-hash ring of the redis adapter's `nodes`.
 *
 * Every node owns `vnodes` points on a 64-bit circle, at XXH3-64 of
 * "<node id>#<i>"; a key belongs to the node owning the first point at or
 * after the key's hash (wrapping round). A node's points depend only on its id
 * (its address), never on its position in the list, so adding a node moves to
 * it about 1/(n+1) of the keys and moves nothing between the other nodes;
 * removing one moves only its own keys.
 *
 * Pure; build on any thread, then read-only.
 */
#ifndef KVCD_ADAPTER_REDIS_RING_H
#define KVCD_ADAPTER_REDIS_RING_H

#include <stddef.h>
#include <stdint.h>

#define KVCD_RING_HIDDEN __attribute__((visibility("hidden")))

typedef struct {
    uint64_t *point; /* sorted */
    uint32_t *owner; /* node index of each point */
    size_t n;
} kvcd_ring_t;

/* Build the ring of nnodes nodes named ids[i] (distinct), vnodes points each.
 * 0 or -ENOMEM. r is zeroed on failure. */
KVCD_RING_HIDDEN int kvcd_ring_build(kvcd_ring_t *r, const char *const *ids, size_t nnodes,
                                     unsigned vnodes);

/* The node index that owns hash h. The ring must not be empty. */
KVCD_RING_HIDDEN uint32_t kvcd_ring_pick(const kvcd_ring_t *r, uint64_t h);

void kvcd_ring_free(kvcd_ring_t *r) KVCD_RING_HIDDEN;

#endif
