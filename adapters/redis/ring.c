/*
 * ring.c - the consistent-hash ring of the redis adapter (see ring.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "adapters/redis/ring.h"

typedef struct {
    uint64_t point;
    uint32_t owner;
    const char *id;
} vpoint_t;

static int cmp_vpoint(const void *a, const void *b)
{
    const vpoint_t *x = a, *y = b;

    if (x->point != y->point)
        return x->point < y->point ? -1 : 1;
    /* a 64-bit collision: order by id, so the result does not depend on
     * the order of the nodes in the list */
    return strcmp(x->id, y->id);
}

int kvcd_ring_build(kvcd_ring_t *r, const char *const *ids, size_t nnodes, unsigned vnodes)
{
    size_t n = nnodes * vnodes, i, k = 0;
    vpoint_t *v = calloc(n ? n : 1, sizeof(*v));
    char buf[600];

    memset(r, 0, sizeof(*r));
    r->point = malloc((n ? n : 1) * sizeof(*r->point));
    r->owner = malloc((n ? n : 1) * sizeof(*r->owner));
    if (!v || !r->point || !r->owner) {
        free(v);
        kvcd_ring_free(r);
        return -ENOMEM;
    }
    for (i = 0; i < nnodes; i++) {
        unsigned j;

        for (j = 0; j < vnodes; j++) {
            int len = snprintf(buf, sizeof(buf), "%s#%u", ids[i], j);

            if (len < 0 || (size_t)len >= sizeof(buf))
                len = (int)sizeof(buf) - 1;
            v[k].point = XXH3_64bits(buf, (size_t)len);
            v[k].owner = (uint32_t)i;
            v[k].id = ids[i];
            k++;
        }
    }
    qsort(v, n, sizeof(*v), cmp_vpoint);
    for (i = 0; i < n; i++) {
        r->point[i] = v[i].point;
        r->owner[i] = v[i].owner;
    }
    r->n = n;
    free(v);
    return 0;
}

uint32_t kvcd_ring_pick(const kvcd_ring_t *r, uint64_t h)
{
    size_t lo = 0, hi = r->n;

    /* first point >= h */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (r->point[mid] < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    return r->owner[lo == r->n ? 0 : lo];
}

void kvcd_ring_free(kvcd_ring_t *r)
{
    free(r->point);
    free(r->owner);
    memset(r, 0, sizeof(*r));
}
