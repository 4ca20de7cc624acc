/*
 * storage.c - L1/L2 orchestration: write-behind, lookup with prefetch and
 * pins, remove (see storage.h).
 *
 * Every L2 call is an op_t: the runner's request, its items, and a link back
 * to the job that issued it. A job (a write-behind group, a lookup, a remove)
 * lives until its last op is *released* by the runner, not merely completed:
 * a call that missed its deadline may still be writing into L1 buffers, so the
 * objects behind it keep their references until then, and the keys it reads
 * are owned by the job rather than borrowed from the client's frame.
 *
 * Touches: L1 hits (READY objects a LOOKUP finds in L1, objects a LOAD serves
 * from L1 other than prefetched copies) never reach an adapter, so they are
 * collected here and sent to the adapters that implement `touch` (recency
 * only, fire-and-forget, kvcd_l2_touch), so that an L2 tier's eviction order
 * follows every use, not only L1's misses. The buffer is bounded (TOUCH_KEYS
 * keys, TOUCH_BYTES bytes of key copies) and deduplicated (a key used again
 * moves to the end); it is flushed when full, every pin-timer tick (100 ms),
 * at stop, and before any other call is submitted to an adapter, so each
 * adapter sees uses in the order they happened (a hit, then the store that
 * may evict). Never one call per hit.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/l2.h"
#include "daemon/log.h"
#include "daemon/storage.h"
#include "protocol/kvcd_err.h"

typedef struct op_s op_t;
typedef void (*op_fn)(op_t *op);

struct op_s {
    kvcd_l2_req_t req;          /* first: the runner hands this back */
    kvcd_storage_t *st;
    size_t l2idx;
    void *job;
    op_fn done, release;
    size_t *map;                /* item -> job key index */
    kvcd_l2_item_t items[];
};

typedef struct lookup_s lookup_t;

#define TOUCH_KEYS 256            /* keys per touch batch */
#define TOUCH_BYTES (64 * 1024)   /* bytes of key copies per batch */
#define TOUCH_SLOTS 512           /* dedup table: a power of two > TOUCH_KEYS */

typedef struct {
    kvcd_key_t keys[TOUCH_KEYS]; /* borrow from bytes */
    uint64_t kh[TOUCH_KEYS];
    uint8_t dead[TOUCH_KEYS];    /* used again later in the batch */
    uint16_t slot[TOUCH_SLOTS];  /* 1 + index into keys, 0 empty */
    size_t n, used;
    char bytes[TOUCH_BYTES];
} touchbuf_t;

struct kvcd_storage_s {
    uv_loop_t *loop;
    const kvcd_options_t *opt;
    kvcd_l1_t *l1;
    kvcd_l2_t *l2[16];
    size_t nl2;
    uv_timer_t pin_timer;
    int stopped;
    int l2_closed;              /* the adapters were closed at stop */
    kvcd_obj_t *pin_head, *pin_tail;
    size_t npinned;
    size_t inflight;            /* ops not yet released */
    size_t prefetching;         /* lookups in their prefetch phase */
    lookup_t *wait_head, *wait_tail;
    struct remove_s *rm_wait;   /* removes waiting for write-behind of their keys */
    void (*change_cb)(void *);
    void *change_data;
    touchbuf_t *touch;          /* NULL when no adapter implements touch */
    struct {
        uint64_t touch_keys, touch_dups, touch_batches;
        uint64_t wb_keys, wb_failed, skip_l1_dropped;
        uint64_t l1_hits, l2_lookup_keys, l2_hits;
        uint64_t prefetch_keys, prefetch_bytes, prefetch_failed, prefetch_trimmed;
        uint64_t pins, pins_used, pins_expired, pins_dropped;
        uint64_t l2_removed, removes_waited, lookups_expired;
    } c;
};

/* ---- ops ---- */

static void op_cb(kvcd_l2_req_t *req)
{
    op_t *op = (op_t *)req;

    op->done(op);
}

static void close_adapters(kvcd_storage_t *st);

static void op_release_cb(kvcd_l2_req_t *req)
{
    op_t *op = (op_t *)req;
    kvcd_storage_t *st = op->st;

    st->inflight--;
    if (op->release)
        op->release(op);
    free(op->map);
    free(op);
    if (st->stopped && st->inflight == 0)
        close_adapters(st); /* the last call after a shutdown timeout */
}

static op_t *op_new(kvcd_storage_t *st, size_t l2idx, kvcd_l2_op_t kind, size_t n,
                    void *job, op_fn done, op_fn release)
{
    op_t *op = calloc(1, sizeof(*op) + n * sizeof(kvcd_l2_item_t));

    if (!op)
        return NULL;
    op->map = calloc(n ? n : 1, sizeof(size_t));
    if (!op->map) {
        free(op);
        return NULL;
    }
    op->st = st;
    op->l2idx = l2idx;
    op->job = job;
    op->done = done;
    op->release = release;
    op->req.op = kind;
    op->req.items = op->items;
    op->req.n = n;
    op->req.cb = op_cb;
    op->req.release = op_release_cb;
    op->req.data = op;
    return op;
}

/* ---- touches (see the top of the file) ---- */

static void touch_flush(kvcd_storage_t *st)
{
    touchbuf_t *tb = st->touch;
    size_t i, m = 0, a;

    if (!tb || tb->n == 0)
        return;
    for (i = 0; i < tb->n; i++)
        if (!tb->dead[i])
            tb->keys[m++] = tb->keys[i]; /* compact; bytes stay where they are */
    for (a = 0; a < st->nl2; a++)
        if (st->l2[a] && kvcd_l2_can_touch(st->l2[a]))
            kvcd_l2_touch(st->l2[a], tb->keys, m); /* copies; a drop is counted there */
    st->c.touch_batches++;
    tb->n = tb->used = 0;
    memset(tb->dead, 0, sizeof(tb->dead));
    memset(tb->slot, 0, sizeof(tb->slot));
}

/* obj was used in L1: queue its key for the adapters' touch. */
static void touch_add(kvcd_storage_t *st, const kvcd_obj_t *obj, uint64_t kh)
{
    touchbuf_t *tb = st->touch;
    size_t extra, s, idx;

    if (!tb || st->stopped)
        return;
    extra = kvcd_key_extra(&obj->key);
    if (extra > TOUCH_BYTES)
        return; /* cannot happen with the protocol's key limits */
    if (tb->n == TOUCH_KEYS || tb->used + extra > TOUCH_BYTES)
        touch_flush(st);
    st->c.touch_keys++;
    for (s = kh & (TOUCH_SLOTS - 1); tb->slot[s]; s = (s + 1) & (TOUCH_SLOTS - 1)) {
        idx = tb->slot[s] - 1u;
        if (tb->kh[idx] == kh && kvcd_key_equal(&tb->keys[idx], &obj->key)) {
            tb->dead[idx] = 1; /* its later use is the one that counts */
            st->c.touch_dups++;
            break;
        }
    }
    idx = tb->n++;
    kvcd_key_copy(&tb->keys[idx], &obj->key, tb->bytes + tb->used);
    tb->used += extra;
    tb->kh[idx] = kh;
    tb->slot[s] = (uint16_t)(idx + 1);
}

static void op_submit(op_t *op)
{
    touch_flush(op->st); /* uses before this call reach the adapter first */
    op->st->inflight++;
    kvcd_l2_submit(op->st->l2[op->l2idx], &op->req);
}

static void changed(kvcd_storage_t *st)
{
    if (st->change_cb)
        st->change_cb(st->change_data);
}

/* ---- pins ----
 *
 * A pinned object sits on one list ordered by expiry (one timeout for all, so
 * re-pinning moves it to the tail) and holds a single reference for all its
 * pins. A LOAD consumes one pin; the timer drops all pins of an object whose
 * last pin is older than --pin-timeout-ms. */

static void pin_list_remove(kvcd_storage_t *st, kvcd_obj_t *obj)
{
    if (obj->pin_prev)
        obj->pin_prev->pin_next = obj->pin_next;
    else
        st->pin_head = obj->pin_next;
    if (obj->pin_next)
        obj->pin_next->pin_prev = obj->pin_prev;
    else
        st->pin_tail = obj->pin_prev;
    obj->pin_prev = obj->pin_next = NULL;
    st->npinned--;
}

static void pin(kvcd_storage_t *st, kvcd_obj_t *obj)
{
    if (obj->pins == 0)
        kvcd_l1_ref(obj);
    else
        pin_list_remove(st, obj);
    obj->pins++;
    obj->pin_expire_ms = uv_now(st->loop) + (uint64_t)st->opt->pin_timeout_ms;
    obj->pin_prev = st->pin_tail;
    obj->pin_next = NULL;
    if (st->pin_tail)
        st->pin_tail->pin_next = obj;
    else
        st->pin_head = obj;
    st->pin_tail = obj;
    st->npinned++;
    st->c.pins++;
}

/* Drop `count` pins of obj. A temporary prefetched copy leaves L1 once no pin
 * waits for it any more. */
static void unpin(kvcd_storage_t *st, kvcd_obj_t *obj, uint32_t count)
{
    obj->pins -= count;
    if (obj->pins > 0)
        return;
    pin_list_remove(st, obj);
    if (obj->prefetched)
        kvcd_l1_unlink(st->l1, obj);
    kvcd_l1_unref(st->l1, obj);
}

/* obj leaves L1 (REMOVE, CLEAR): its pins go with it, so its memory is free
 * as soon as nothing else uses it, not when the pins would have expired. */
static void forget(kvcd_storage_t *st, kvcd_obj_t *obj)
{
    /* Dropping the last pin of a prefetched copy unlinks and may free it:
     * hold it until both are done. */
    kvcd_l1_ref(obj);
    if (obj->pins > 0) {
        st->c.pins_dropped += obj->pins;
        unpin(st, obj, obj->pins);
    }
    if (obj->linked)
        kvcd_l1_unlink(st->l1, obj);
    kvcd_l1_unref(st->l1, obj);
}

static void expire_waiting_lookups(kvcd_storage_t *st);
static void check_removes(kvcd_storage_t *st);

static void pin_timer_cb(uv_timer_t *h)
{
    kvcd_storage_t *st = h->data;
    uint64_t now = uv_now(st->loop);
    kvcd_obj_t *obj;

    while ((obj = st->pin_head) && (obj->pin_expire_ms <= now || st->stopped)) {
        if (!st->stopped)
            st->c.pins_expired += obj->pins;
        unpin(st, obj, obj->pins);
    }
    expire_waiting_lookups(st);
    check_removes(st);
    touch_flush(st);
}

void kvcd_storage_served(kvcd_storage_t *st, kvcd_obj_t *obj)
{
    /* A prefetched copy's use is the adapter's own load, which it has seen. */
    if (st->touch && !obj->prefetched)
        touch_add(st, obj, obj->keyhash);
    if (obj->pins > 0) {
        st->c.pins_used++;
        unpin(st, obj, 1);
    } else if (obj->prefetched) {
        kvcd_l1_unlink(st->l1, obj);
    }
}

/* ---- write-behind ---- */

typedef struct {
    size_t n;
    kvcd_obj_t **objs;
    uint8_t *ok;            /* every adapter stored it */
    size_t cbs_left, releases_left;
} wb_t;

static void wb_done(op_t *op)
{
    kvcd_storage_t *st = op->st;
    wb_t *wb = op->job;
    size_t j;

    for (j = 0; j < op->req.n; j++) {
        int r = op->items[j].result;

        if (r == 0)
            continue;
        wb->ok[op->map[j]] = 0;
        st->c.wb_failed++;
        KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "storage", 5000,
                             "write-behind to %s failed: %s", kvcd_l2_name(st->l2[op->l2idx]),
                             kvcd_strerror(r));
    }
    if (--wb->cbs_left > 0 || st->opt->l2_store_policy != KVCD_STORE_SKIP_L1)
        return;
    for (j = 0; j < wb->n; j++) {
        kvcd_obj_t *obj = wb->objs[j];

        if (wb->ok[j] && obj->linked && obj->state == KVCD_OBJ_READY && obj->pins == 0) {
            kvcd_l1_unlink(st->l1, obj);
            st->c.skip_l1_dropped++;
        }
    }
}

static void wb_release(op_t *op)
{
    kvcd_storage_t *st = op->st;
    wb_t *wb = op->job;
    size_t j;

    if (--wb->releases_left > 0)
        return;
    for (j = 0; j < wb->n; j++) {
        wb->objs[j]->wb_inflight--;
        kvcd_l1_unref(st->l1, wb->objs[j]);
    }
    free(wb->objs);
    free(wb->ok);
    free(wb);
    check_removes(st); /* removes of these keys may go on */
    changed(st);       /* stores waiting for room may go on */
}

void kvcd_storage_write_behind(kvcd_storage_t *st, kvcd_obj_t *const *objs, size_t n)
{
    size_t i, m = 0, a;
    wb_t *wb;

    /* Once stopped nothing new is written behind: the adapters are closing. */
    if (st->nl2 == 0 || st->stopped)
        return;
    for (i = 0; i < n; i++)
        m += objs[i] != NULL;
    if (m == 0)
        return;
    wb = calloc(1, sizeof(*wb));
    if (wb) {
        wb->objs = calloc(m, sizeof(*wb->objs));
        wb->ok = malloc(m);
    }
    if (!wb || !wb->objs || !wb->ok) {
        KVCD_LOG_RATELIMITED(KVCD_LOG_ERROR, "storage", 5000, "write-behind: out of memory");
        if (wb) {
            free(wb->objs);
            free(wb->ok);
        }
        free(wb);
        return;
    }
    for (i = 0; i < n; i++) {
        if (!objs[i])
            continue;
        kvcd_l1_ref(objs[i]);
        objs[i]->wb_inflight++;
        wb->ok[wb->n] = 1;
        wb->objs[wb->n++] = objs[i];
    }
    wb->cbs_left = wb->releases_left = st->nl2;
    st->c.wb_keys += m;
    for (a = 0; a < st->nl2; a++) {
        op_t *op = op_new(st, a, KVCD_L2_STORE, m, wb, wb_done, wb_release);

        if (!op) {
            /* Account as a failed write so the group still completes. */
            memset(wb->ok, 0, m);
            wb->releases_left--;
            if (--wb->cbs_left == 0 && wb->releases_left == 0) {
                for (i = 0; i < m; i++) {
                    wb->objs[i]->wb_inflight--;
                    kvcd_l1_unref(st->l1, wb->objs[i]);
                }
                free(wb->objs);
                free(wb->ok);
                free(wb);
                return;
            }
            continue;
        }
        for (i = 0; i < m; i++) {
            op->items[i].key = wb->objs[i]->key;
            op->items[i].buf = wb->objs[i]->data;
            op->items[i].len = wb->objs[i]->size;
            op->map[i] = i;
        }
        op_submit(op);
    }
}

void kvcd_storage_save_l1(kvcd_storage_t *st)
{
    kvcd_obj_t *o, **v;
    size_t n = 0;

    if (st->nl2 == 0 || st->stopped)
        return;
    for (o = kvcd_l1_lru_next(st->l1, NULL); o; o = kvcd_l1_lru_next(st->l1, o))
        n += o->state == KVCD_OBJ_READY;
    if (n == 0)
        return;
    v = malloc(n * sizeof(*v));
    if (!v) {
        KVCD_LOG(KVCD_LOG_ERROR, "storage", "saving L1 at stop: out of memory");
        return;
    }
    n = 0;
    for (o = kvcd_l1_lru_next(st->l1, NULL); o; o = kvcd_l1_lru_next(st->l1, o))
        if (o->state == KVCD_OBJ_READY)
            v[n++] = o;
    KVCD_LOG(KVCD_LOG_INFO, "storage", "saving %zu L1 objects to the L2 adapters", n);
    kvcd_storage_write_behind(st, v, n);
    free(v);
}

/* ---- lookup ---- */

enum { K_NONE, K_L1, K_L2, K_LOADED, K_FAILED, K_BUSY };

/* obj->prefetched: 1 a temporary copy a LOOKUP brought up; PF_LOADING while
 * the prefetch that reserved it is still reading it from L2. */
#define PF_LOADING 2

struct lookup_s {
    kvcd_storage_t *st;
    lookup_t *next;
    kvcd_storage_lookup_cb cb;
    void *data;
    size_t n;
    kvcd_key_t *keys;           /* deep copies in keybuf */
    char *keybuf;
    uint64_t *kh;               /* kvcd_key_hash of each key, computed once */
    uint8_t *state;             /* K_* */
    int *src;                   /* adapter index that has the key, -1 none */
    size_t *size;
    kvcd_obj_t **objs;          /* prefetch targets */
    uint8_t *present;
    size_t pending;             /* ops whose done has not run */
    size_t refs;                /* unreleased ops + 1 while the job runs */
    uint64_t deadline_ms;       /* arrival + --l2-timeout-ms: the answer is due */
    int queued;                 /* on the prefetch wait list */
};

/* What is left of the lookup's time, for its next L2 call (at least 1 ms). */
static uint64_t remaining_ms(const lookup_t *lk)
{
    uint64_t now = uv_now(lk->st->loop);

    return lk->deadline_ms > now + 1 ? lk->deadline_ms - now : 1;
}

static void lookup_unref(lookup_t *lk)
{
    if (--lk->refs > 0)
        return;
    free(lk->keys);
    free(lk->keybuf);
    free(lk->kh);
    free(lk->state);
    free(lk->src);
    free(lk->size);
    free(lk->objs);
    free(lk->present);
    free(lk);
}

static void start_prefetch(lookup_t *lk);

/* Pin the prefix and answer. A key is present when it is in L1 now or an
 * adapter reported it, whether or not it was brought up (L1 full, a
 * concurrent LOAD took the prefetched copy); the prefix is what the next LOAD
 * finds in L1, pinned for it. */
static void lookup_finish(lookup_t *lk)
{
    kvcd_storage_t *st = lk->st;
    size_t i, prefix = 0;
    kvcd_obj_t *obj, **po = malloc(lk->n * sizeof(*po));

    for (i = 0; po && i < lk->n; i++) {
        obj = kvcd_l1_find(st->l1, &lk->keys[i], lk->kh[i]);
        lk->present[i] = obj != NULL || lk->src[i] >= 0;
        if (prefix == i && obj && lk->state[i] != K_FAILED) {
            pin(st, obj);
            po[prefix++] = obj;
        }
    }
    /* Out of memory: answered as such, nothing pinned. */
    lk->cb(lk->data, prefix, po ? lk->present : NULL, po);
    free(po);
    lookup_unref(lk);
}

static void wait_remove(kvcd_storage_t *st, lookup_t *lk)
{
    lookup_t **pp = &st->wait_head, *prev = NULL;

    while (*pp && *pp != lk) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = lk->next;
    if (st->wait_tail == lk)
        st->wait_tail = prev;
    lk->next = NULL;
    lk->queued = 0;
}

/* Lookups whose answer is due while they still wait for a prefetch slot are
 * answered with what L1 holds (item: a LOOKUP never waits past its deadline). */
static void expire_waiting_lookups(kvcd_storage_t *st)
{
    uint64_t now = uv_now(st->loop);
    lookup_t *lk = st->wait_head, *next;

    for (; lk; lk = next) {
        next = lk->next;
        if (lk->deadline_ms > now && !st->stopped)
            continue;
        wait_remove(st, lk);
        st->c.lookups_expired++;
        lookup_finish(lk);
    }
}

static void prefetch_done(op_t *op)
{
    kvcd_storage_t *st = op->st;
    lookup_t *lk = op->job;
    size_t j;

    for (j = 0; j < op->req.n; j++) {
        size_t k = op->map[j];
        kvcd_obj_t *obj = lk->objs[k];

        if (op->items[j].result == 0 && op->items[j].size == obj->size) {
            obj->prefetched = st->opt->l2_prefetch_policy == KVCD_PREFETCH_DEFAULT;
            kvcd_l1_publish(st->l1, obj);
            lk->state[k] = K_LOADED;
            st->c.prefetch_keys++;
            st->c.prefetch_bytes += obj->size;
        } else {
            /* Invisible at once; the memory waits for the release. */
            kvcd_l1_unlink(st->l1, obj);
            lk->state[k] = K_FAILED;
            st->c.prefetch_failed++;
            KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "storage", 5000,
                                 "prefetch from %s failed: %s",
                                 kvcd_l2_name(st->l2[op->l2idx]),
                                 kvcd_strerror(op->items[j].result ? op->items[j].result
                                                                   : KVCD_ECHECKSUM));
        }
    }
    changed(st);
    if (--lk->pending > 0)
        return;
    st->prefetching--;
    if (st->wait_head) {
        lookup_t *next = st->wait_head;

        wait_remove(st, next);
        start_prefetch(next);
    }
    lookup_finish(lk);
}

static void prefetch_release(op_t *op)
{
    lookup_t *lk = op->job;
    size_t j;

    for (j = 0; j < op->req.n; j++)
        kvcd_l1_unref(op->st->l1, lk->objs[op->map[j]]); /* the writer's reference */
    lookup_unref(lk);
}

/* Bring the L2 part of the prefix up into L1: reserve (trimming the prefix to
 * what fits), then one load batch per adapter. */
static void start_prefetch(lookup_t *lk)
{
    kvcd_storage_t *st = lk->st;
    size_t count[16] = {0}, fill[16] = {0}, i, prefix = 0, a;
    op_t *ops[16] = {0};
    int rc;

    while (prefix < lk->n && lk->state[prefix] != K_NONE)
        prefix++;
    for (i = 0; i < prefix; i++) {
        if (lk->state[i] != K_L2)
            continue;
        rc = kvcd_l1_reserve(st->l1, &lk->keys[i], lk->kh[i], lk->size[i], &lk->objs[i]);
        if (rc == 0)
            lk->objs[i]->prefetched = PF_LOADING; /* a REMOVE now unlinks it */
        if (rc == KVCD_EBUSY) {
            lk->state[i] = K_BUSY; /* another request is bringing it in */
            continue;
        }
        if (rc != 0) {
            /* No room: the prefix ends here. */
            for (; i < lk->n; i++)
                if (lk->state[i] == K_L2)
                    lk->state[i] = K_NONE;
            st->c.prefetch_trimmed++;
            break;
        }
        count[lk->src[i]]++;
    }
    for (a = 0; a < st->nl2; a++) {
        if (count[a] == 0)
            continue;
        ops[a] = op_new(st, a, KVCD_L2_LOAD, count[a], lk, prefetch_done, prefetch_release);
        if (!ops[a])
            count[a] = 0;
    }
    for (i = 0; i < lk->n; i++) {
        op_t *op;

        if (!lk->objs[i] || lk->state[i] != K_L2)
            continue;
        a = (size_t)lk->src[i];
        op = ops[a];
        if (!op) {
            /* Out of memory for the batch: give the object back. */
            kvcd_l1_unlink(st->l1, lk->objs[i]);
            kvcd_l1_unref(st->l1, lk->objs[i]);
            lk->objs[i] = NULL;
            lk->state[i] = K_FAILED;
            continue;
        }
        op->req.timeout_ms = remaining_ms(lk);
        op->items[fill[a]].key = lk->keys[i];
        op->items[fill[a]].buf = lk->objs[i]->data;
        op->items[fill[a]].len = lk->size[i];
        op->map[fill[a]++] = i;
    }
    st->prefetching++;
    lk->pending = 0;
    for (a = 0; a < st->nl2; a++)
        if (ops[a])
            lk->pending++;
    if (lk->pending == 0) {
        st->prefetching--;
        lookup_finish(lk);
        return;
    }
    for (a = 0; a < st->nl2; a++) {
        if (!ops[a])
            continue;
        lk->refs++;
        op_submit(ops[a]);
    }
}

static void l2_lookup_done(op_t *op)
{
    kvcd_storage_t *st = op->st;
    lookup_t *lk = op->job;
    size_t j, prefix;

    for (j = 0; j < op->req.n; j++) {
        size_t k = op->map[j];

        if (op->items[j].result != 0 || op->items[j].size == 0)
            continue;
        /* Priority: the lowest adapter index that has the key wins. */
        if (lk->src[k] < 0 || (size_t)lk->src[k] > op->l2idx) {
            lk->src[k] = (int)op->l2idx;
            lk->size[k] = op->items[j].size;
        }
    }
    if (--lk->pending > 0)
        return;
    for (j = 0; j < lk->n; j++) {
        if (lk->state[j] == K_NONE && lk->src[j] >= 0) {
            lk->state[j] = K_L2;
            st->c.l2_hits++;
        }
    }
    for (prefix = 0; prefix < lk->n && lk->state[prefix] != K_NONE; prefix++)
        ;
    for (j = 0; j < prefix && lk->state[j] != K_L2; j++)
        ;
    if (j == prefix || st->stopped || uv_now(st->loop) >= lk->deadline_ms) {
        lookup_finish(lk); /* nothing to bring up, or no time left for it */
        return;
    }
    if (st->prefetching >= (size_t)st->opt->l2_prefetch_max_inflight) {
        lk->next = NULL;
        lk->queued = 1;
        if (st->wait_tail)
            st->wait_tail->next = lk;
        else
            st->wait_head = lk;
        st->wait_tail = lk;
        return;
    }
    start_prefetch(lk);
}

static void l2_lookup_release(op_t *op)
{
    lookup_unref(op->job);
}

/* Deep-copy the request's keys into the job: an adapter call may outlive the
 * client's frame (deadline passed, reply sent). */
static int copy_keys(const kvcd_req_t *req, kvcd_key_t **keys, char **buf)
{
    size_t i, total = 0, off = 0;
    kvcd_key_t k;

    for (i = 0; i < req->nkeys; i++) {
        kvcd_req_key(req, i, &k);
        total += kvcd_key_extra(&k);
    }
    *keys = calloc(req->nkeys, sizeof(kvcd_key_t));
    *buf = malloc(total ? total : 1);
    if (!*keys || !*buf) {
        free(*keys);
        free(*buf);
        *keys = NULL; /* the caller frees what the job holds: not these again */
        *buf = NULL;
        return -ENOMEM;
    }
    for (i = 0; i < req->nkeys; i++) {
        kvcd_req_key(req, i, &k);
        kvcd_key_copy(&(*keys)[i], &k, *buf + off);
        off += kvcd_key_extra(&k);
    }
    return 0;
}

/* No L2: answer from L1 at once, without copying keys into a job. */
static void lookup_l1_only(kvcd_storage_t *st, const kvcd_req_t *req,
                           kvcd_storage_lookup_cb cb, void *data)
{
    uint8_t *present = calloc(req->nkeys, 1);
    kvcd_obj_t *obj, **po = malloc(req->nkeys * sizeof(*po));
    size_t i, prefix = 0;
    kvcd_key_t k;

    if (!present || !po) {
        free(present);
        free(po);
        cb(data, 0, NULL, NULL);
        return;
    }
    for (i = 0; i < req->nkeys; i++) {
        kvcd_req_key(req, i, &k);
        obj = kvcd_l1_find(st->l1, &k, kvcd_key_hash(&k));
        if (!obj)
            continue;
        present[i] = 1;
        if (obj->state == KVCD_OBJ_READY) {
            kvcd_l1_touch(st->l1, obj);
            st->c.l1_hits++;
        }
        if (prefix == i) {
            pin(st, obj);
            po[prefix++] = obj;
        }
    }
    cb(data, prefix, present, po);
    free(present);
    free(po);
}

void kvcd_storage_lookup(kvcd_storage_t *st, const kvcd_req_t *req,
                         kvcd_storage_lookup_cb cb, void *data)
{
    size_t n = req->nkeys, i, missing = 0, a, j;
    lookup_t *lk;
    kvcd_obj_t *obj;

    if (st->nl2 == 0 || st->stopped) {
        lookup_l1_only(st, req, cb, data);
        return;
    }
    lk = calloc(1, sizeof(*lk));
    if (!lk || copy_keys(req, &lk->keys, &lk->keybuf) != 0) {
        free(lk);
        cb(data, 0, NULL, NULL);
        return;
    }
    lk->st = st;
    lk->cb = cb;
    lk->data = data;
    lk->n = n;
    lk->refs = 1;
    lk->deadline_ms = uv_now(st->loop) + (uint64_t)st->opt->l2_timeout_ms;
    lk->kh = malloc(n * sizeof(uint64_t));
    lk->state = calloc(n, 1);
    lk->src = malloc(n * sizeof(int));
    lk->size = calloc(n, sizeof(size_t));
    lk->objs = calloc(n, sizeof(kvcd_obj_t *));
    lk->present = calloc(n, 1);
    if (!lk->kh || !lk->state || !lk->src || !lk->size || !lk->objs || !lk->present) {
        lookup_unref(lk);
        cb(data, 0, NULL, NULL);
        return;
    }
    for (i = 0; i < n; i++) {
        lk->src[i] = -1;
        lk->kh[i] = kvcd_key_hash(&lk->keys[i]);
        obj = kvcd_l1_find(st->l1, &lk->keys[i], lk->kh[i]);
        if (obj && obj->state == KVCD_OBJ_READY) {
            lk->state[i] = K_L1;
            kvcd_l1_touch(st->l1, obj);
            touch_add(st, obj, lk->kh[i]);
            st->c.l1_hits++;
        } else if (obj) {
            lk->state[i] = K_BUSY; /* being stored or brought up right now */
        } else {
            missing++;
        }
    }
    if (missing == 0 || st->nl2 == 0) {
        lookup_finish(lk);
        return;
    }
    st->c.l2_lookup_keys += missing;
    lk->pending = st->nl2;
    for (a = 0; a < st->nl2; a++) {
        op_t *op = op_new(st, a, KVCD_L2_LOOKUP, missing, lk, l2_lookup_done,
                          l2_lookup_release);

        if (!op) {
            if (--lk->pending == 0)
                lookup_finish(lk);
            continue;
        }
        op->req.timeout_ms = remaining_ms(lk);
        for (i = 0, j = 0; i < n; i++) {
            if (lk->state[i] != K_NONE)
                continue;
            op->items[j].key = lk->keys[i];
            op->map[j++] = i;
        }
        lk->refs++;
        op_submit(op);
    }
}

/* ---- remove ---- */

typedef struct remove_s {
    kvcd_storage_t *st;
    struct remove_s *next_wait;
    kvcd_storage_remove_cb cb;
    void *data;
    size_t n;
    kvcd_key_t *keys;
    char *keybuf;
    int *results;
    size_t pending, refs;
    kvcd_obj_t **held;          /* removed objects whose write-behind still runs */
    size_t nheld;
    uint64_t deadline_ms;       /* stop waiting for them then */
} remove_t;

static void remove_unref(remove_t *rm)
{
    if (--rm->refs > 0)
        return;
    free(rm->keys);
    free(rm->keybuf);
    free(rm->results);
    free(rm->held);
    free(rm);
}

static void remove_done(op_t *op)
{
    remove_t *rm = op->job;
    size_t j;

    for (j = 0; j < op->req.n; j++) {
        if (op->items[j].result == 0) {
            rm->results[op->map[j]] = 0;
            op->st->c.l2_removed++;
        }
    }
    if (--rm->pending == 0) {
        rm->cb(rm->data, rm->results);
        remove_unref(rm);
    }
}

static void remove_release(op_t *op)
{
    remove_unref(op->job);
}

/* Remove the keys from every adapter, then answer. */
static void remove_submit(kvcd_storage_t *st, remove_t *rm)
{
    size_t i, a, nl2 = st->stopped ? 0 : st->nl2;

    rm->pending = nl2 + 1;
    for (a = 0; a < nl2; a++) {
        op_t *op = op_new(st, a, KVCD_L2_REMOVE, rm->n, rm, remove_done, remove_release);

        if (!op) {
            rm->pending--;
            continue;
        }
        for (i = 0; i < rm->n; i++) {
            op->items[i].key = rm->keys[i];
            op->map[i] = i;
        }
        rm->refs++;
        op_submit(op);
    }
    if (--rm->pending == 0) {
        rm->cb(rm->data, rm->results);
        remove_unref(rm);
    }
}

/* Removes whose keys were still being written behind go on once those writes
 * are released (a write that lands after the remove would bring the key back),
 * or at their deadline, or at stop. */
static void check_removes(kvcd_storage_t *st)
{
    uint64_t now = uv_now(st->loop);
    remove_t **pp = &st->rm_wait, *rm;
    size_t i;

    while ((rm = *pp)) {
        int busy = 0;

        for (i = 0; i < rm->nheld; i++)
            busy |= rm->held[i]->wb_inflight > 0;
        if (busy && now < rm->deadline_ms && !st->stopped) {
            pp = &rm->next_wait;
            continue;
        }
        *pp = rm->next_wait;
        for (i = 0; i < rm->nheld; i++)
            kvcd_l1_unref(st->l1, rm->held[i]);
        rm->nheld = 0;
        remove_submit(st, rm);
    }
}

void kvcd_storage_remove(kvcd_storage_t *st, const kvcd_req_t *req,
                         kvcd_storage_remove_cb cb, void *data)
{
    size_t n = req->nkeys, i;
    remove_t *rm = calloc(1, sizeof(*rm));
    kvcd_obj_t *obj;

    if (!rm || copy_keys(req, &rm->keys, &rm->keybuf) != 0 ||
        !(rm->results = malloc((n ? n : 1) * sizeof(int))) ||
        !(rm->held = calloc(n ? n : 1, sizeof(kvcd_obj_t *)))) {
        if (rm) {
            free(rm->keys);
            free(rm->keybuf);
            free(rm->results);
        }
        free(rm);
        cb(data, NULL);
        return;
    }
    rm->st = st;
    rm->cb = cb;
    rm->data = data;
    rm->n = n;
    rm->refs = 1;
    for (i = 0; i < n; i++) {
        obj = kvcd_l1_find(st->l1, &rm->keys[i], kvcd_key_hash(&rm->keys[i]));
        if (obj && obj->state != KVCD_OBJ_READY) {
            /* A prefetch still reading the key from L2 would publish it after
             * this REMOVE is answered: its copy lands nowhere now. (A STORE
             * in progress is left alone: it arrived first.) */
            if (obj->prefetched == PF_LOADING)
                forget(st, obj); /* and the pins of LOOKUPs that wait for it */
            obj = NULL;
        }
        rm->results[i] = obj ? 0 : KVCD_ENOTFOUND;
        if (!obj)
            continue;
        if (obj->wb_inflight > 0) {
            kvcd_l1_ref(obj);
            rm->held[rm->nheld++] = obj;
        }
        forget(st, obj);
    }
    if (rm->nheld > 0 && !st->stopped) {
        st->c.removes_waited++;
        rm->deadline_ms = uv_now(st->loop) + (uint64_t)st->opt->l2_timeout_ms;
        rm->next_wait = st->rm_wait;
        st->rm_wait = rm;
        return;
    }
    for (i = 0; i < rm->nheld; i++)
        kvcd_l1_unref(st->l1, rm->held[i]);
    rm->nheld = 0;
    remove_submit(st, rm);
}

size_t kvcd_storage_clear_l1(kvcd_storage_t *st)
{
    kvcd_obj_t *obj;

    /* Pins go first: a cleared object's memory must come back now. */
    while ((obj = st->pin_head)) {
        st->c.pins_dropped += obj->pins;
        unpin(st, obj, obj->pins);
    }
    return kvcd_l1_clear(st->l1);
}

/* ---- lifecycle ---- */

int kvcd_storage_create(uv_loop_t *loop, const kvcd_options_t *opt, kvcd_l1_t *l1,
                        kvcd_storage_t **out, char *err, size_t errlen)
{
    kvcd_storage_t *st = calloc(1, sizeof(*st));
    kvcd_adapter_env_t env;
    kvcd_l1_stats_t ls;
    char name[64];
    size_t i;
    int rc;

    if (!st) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    st->loop = loop;
    st->opt = opt;
    st->l1 = l1;
    kvcd_l1_stats(l1, &ls);
    for (i = 0; i < opt->n_l2; i++) {
        memset(&env, 0, sizeof(env));
        env.loop = loop;
        env.arena_base = kvcd_l1_base(l1);
        env.arena_size = ls.capacity;
        env.arena_align = KVCD_L1_ALIGN;
        env.max_workers = opt->max_workers;
        snprintf(name, sizeof(name), "#%zu (%s)", i + 1,
                 json_string_value(json_object_get(opt->l2_specs[i], "type")));
        env.instance = name;
        rc = kvcd_l2_create(loop, opt->l2_specs[i], (int)i + 1, &env,
                            (uint64_t)opt->l2_timeout_ms, &st->l2[i], err, errlen);
        if (rc != 0) {
            while (i-- > 0)
                kvcd_l2_destroy(st->l2[i]);
            free(st->touch);
            free(st);
            return rc;
        }
        st->nl2++;
        if (kvcd_l2_can_touch(st->l2[i]) && !st->touch &&
            !(st->touch = calloc(1, sizeof(*st->touch)))) {
            snprintf(err, errlen, "out of memory");
            while (i-- > 0)
                kvcd_l2_destroy(st->l2[i]);
            kvcd_l2_destroy(st->l2[st->nl2 - 1]);
            free(st);
            return -ENOMEM;
        }
    }
    uv_timer_init(loop, &st->pin_timer);
    st->pin_timer.data = st;
    uv_timer_start(&st->pin_timer, pin_timer_cb, 100, 100);
    uv_unref((uv_handle_t *)&st->pin_timer);
    *out = st;
    return 0;
}

void kvcd_storage_on_change(kvcd_storage_t *st, void (*cb)(void *), void *data)
{
    st->change_cb = cb;
    st->change_data = data;
}

size_t kvcd_storage_inflight(const kvcd_storage_t *st)
{
    return st->inflight;
}

void kvcd_storage_status(kvcd_storage_t *st, json_t *status)
{
    json_t *l2 = json_array(), *c;
    size_t i, queued = 0;
    lookup_t *w;

    for (w = st->wait_head; w; w = w->next)
        queued++;

    for (i = 0; i < st->nl2; i++)
        if (st->l2[i])
            json_array_append_new(l2, kvcd_l2_status(st->l2[i]));
    json_object_set_new(status, "l2", l2);
    c = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I,"
                  " s:I, s:I, s:I, s:I, s:I, s:s, s:s}",
                  "l1_hits", (json_int_t)st->c.l1_hits,
                  "write_behind_keys", (json_int_t)st->c.wb_keys,
                  "write_behind_failed", (json_int_t)st->c.wb_failed,
                  "skip_l1_dropped", (json_int_t)st->c.skip_l1_dropped,
                  "l2_lookup_keys", (json_int_t)st->c.l2_lookup_keys,
                  "l2_hits", (json_int_t)st->c.l2_hits,
                  "prefetch_keys", (json_int_t)st->c.prefetch_keys,
                  "prefetch_bytes", (json_int_t)st->c.prefetch_bytes,
                  "prefetch_failed", (json_int_t)st->c.prefetch_failed,
                  "prefetch_trimmed", (json_int_t)st->c.prefetch_trimmed,
                  "pins", (json_int_t)st->c.pins,
                  "pins_used", (json_int_t)st->c.pins_used,
                  "pins_expired", (json_int_t)st->c.pins_expired,
                  "pins_dropped", (json_int_t)st->c.pins_dropped,
                  "removes_waited", (json_int_t)st->c.removes_waited,
                  "lookups_expired", (json_int_t)st->c.lookups_expired,
                  "pinned_objects", (json_int_t)st->npinned,
                  "l2_removed", (json_int_t)st->c.l2_removed,
                  "l2_inflight", (json_int_t)st->inflight,
                  "store_policy",
                  st->opt->l2_store_policy == KVCD_STORE_SKIP_L1 ? "skip_l1" : "default",
                  "prefetch_policy",
                  st->opt->l2_prefetch_policy == KVCD_PREFETCH_RETAIN ? "retain" : "default");
    json_object_set_new(c, "prefetch_inflight", json_integer((json_int_t)st->prefetching));
    json_object_set_new(c, "prefetch_queued", json_integer((json_int_t)queued));
    if (st->touch) {
        json_object_set_new(c, "touch_keys", json_integer((json_int_t)st->c.touch_keys));
        json_object_set_new(c, "touch_deduplicated", json_integer((json_int_t)st->c.touch_dups));
        json_object_set_new(c, "touch_batches", json_integer((json_int_t)st->c.touch_batches));
    }
    json_object_set_new(status, "storage", c);
}

/* Close the adapters while the loop still runs: an asynchronous adapter's
 * connections and timers keep the loop alive until they are closed, and their
 * close callbacks need the loop. Only once nothing is in flight, so no
 * completion can submit to a closed instance. */
static void close_adapters(kvcd_storage_t *st)
{
    size_t i;

    if (st->l2_closed)
        return;
    st->l2_closed = 1;
    for (i = 0; i < st->nl2; i++)
        kvcd_l2_destroy(st->l2[i]);
}

void kvcd_storage_stop(kvcd_storage_t *st)
{
    if (st->stopped)
        return;
    touch_flush(st); /* the last uses reach the adapters before they close */
    st->stopped = 1;
    pin_timer_cb(&st->pin_timer); /* releases every pin, answers waiting jobs */
    uv_close((uv_handle_t *)&st->pin_timer, NULL);
    if (st->inflight == 0)
        close_adapters(st);
}

void kvcd_storage_abandon(kvcd_storage_t *st)
{
    size_t i;

    kvcd_storage_stop(st);
    if (st->l2_closed)
        return;
    /* Nothing may close the instances behind abandon's back. */
    st->l2_closed = 1;
    for (i = 0; i < st->nl2; i++) {
        kvcd_l2_abandon(st->l2[i]);
        st->l2[i] = NULL;
    }
}

void kvcd_storage_destroy(kvcd_storage_t *st)
{
    size_t i;

    if (!st->stopped)
        KVCD_LOG(KVCD_LOG_ERROR, "storage", "destroyed without stop");
    for (i = 0; i < st->nl2 && !st->l2_closed && st->l2[i]; i++) {
        if (kvcd_l2_inflight(st->l2[i]) == 0)
            kvcd_l2_destroy(st->l2[i]);
        else
            KVCD_LOG(KVCD_LOG_WARNING, "storage", "%s still busy at exit; not closed",
                     kvcd_l2_name(st->l2[i]));
    }
    free(st->touch);
    free(st);
}
