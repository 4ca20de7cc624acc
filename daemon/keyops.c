/*
 * keyops.c - STORE, LOOKUP, LOAD, REMOVE and CLEAR over L1 and storage.
 *
 * Invariants kept here:
 *  - an object is visible only once its bytes are complete (reserve -> copy ->
 *    publish); a store that cannot complete unlinks what it reserved;
 *  - an object is referenced while a copy runs into or out of it and while a
 *    zero-copy reply frame points into it (the bridge's `sent` drops it);
 *  - a request that breaks a limit changes nothing and gets a typed error;
 *  - a STORE bulk frame may be received in place (kvcd_store_place, the
 *    bridge's placer): its L1 object is reserved (WRITING: a store in
 *    progress, as during a copy; LOADs wait for it) before the bytes are read, the STORE takes it over (kvcd_frame_take) and
 *    publishes it without a copy; every other path gives it back through
 *    kvcd_store_unplace, which unlinks it, so a partial store stays invisible.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/server_int.h"
#include "protocol/kvcd_err.h"

/* ---- STORE (and the store half of STORE_SHM) ---- */

static void store_finish(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t i;

    for (i = 0; i < call->req.nkeys; i++) {
        kvcd_obj_t *obj = call->objs[i];

        if (!obj)
            continue;
        kvcd_l1_publish(srv->l1, obj);
        srv->c.stores++;
        srv->c.shm_stores += call->seg != NULL;
        srv->c.store_bytes += obj->size;
    }
    /* Write-behind takes its own references; then the writer's go. */
    kvcd_storage_write_behind(srv->storage, call->objs, call->req.nkeys);
    for (i = 0; i < call->req.nkeys; i++)
        if (call->objs[i]) {
            kvcd_l1_unref(srv->l1, call->objs[i]);
            call->objs[i] = NULL;
        }
    kvcd_call_results(call);
}

/* Where key i's bytes come from: its bulk frame (STORE) or its range of the
 * segment (STORE_SHM). */
static const char *store_src(call_t *call, size_t i)
{
    if (call->seg)
        return (const char *)call->seg->base + call->req.offsets[i];
    return call->frames[i].data;
}

static size_t store_len(call_t *call, size_t i)
{
    return call->seg ? (size_t)call->req.lengths[i] : call->frames[i].len;
}

/* Forget the objects reserved for a store that cannot complete. */
void kvcd_store_drop(call_t *call)
{
    size_t i;

    if (!call->objs)
        return;
    for (i = 0; i < call->req.nkeys; i++)
        if (call->objs[i]) {
            kvcd_l1_unlink(call->srv->l1, call->objs[i]);
            kvcd_l1_unref(call->srv->l1, call->objs[i]);
            call->objs[i] = NULL;
        }
}

void kvcd_call_cleanup_store(call_t *call)
{
    if (call->decoded &&
        (call->req.op == KVCD_OP_STORE || call->req.op == KVCD_OP_STORE_SHM) &&
        call->copies_pending == 0)
        kvcd_store_drop(call);
}

static void store_copied(call_t *call)
{
    if (call->answered) {
        /* Answered at the shutdown deadline while the copies ran. */
        kvcd_store_drop(call);
        kvcd_call_maybe_free(call);
        return;
    }
    if (call->copy_failed) {
        kvcd_store_drop(call);
        kvcd_call_error(call, call->copy_failed, "the copy into L1 could not run");
        return;
    }
    store_finish(call);
}

/* A frame received in place already is its object's bytes. */
static int store_in_place(call_t *call, size_t i)
{
    return !call->seg && call->frames[i].data == call->objs[i]->data;
}

/* Copy the frames into the reserved objects: small stores inline, big ones on
 * the copy executor, sliced so that one request's copies run on every copy
 * thread at once and the loop never stalls on them. */
static void store_copy(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i, total = 0, ntasks = 0, off;
    kvcd_obj_t *obj;
    int rc;

    if (call->seg && !call->seg->registered) {
        /* Unregistered (or expired) while this store waited for L1 space. */
        kvcd_store_drop(call);
        return kvcd_call_error(call, KVCD_ESEGMENT, "segment was unregistered before the copy");
    }
    for (i = 0; i < n; i++) {
        if (!call->objs[i] || store_in_place(call, i))
            continue;
        total += call->objs[i]->size;
        ntasks += (call->objs[i]->size + KVCD_COPY_SLICE - 1) / KVCD_COPY_SLICE;
    }
    if (total <= KVCD_INLINE_COPY) {
        for (i = 0; i < n; i++)
            if (call->objs[i] && !store_in_place(call, i))
                memcpy(call->objs[i]->data, store_src(call, i), call->objs[i]->size);
        return store_finish(call);
    }
    call->tasks = calloc(ntasks, sizeof(copy_task_t));
    if (!call->tasks) {
        kvcd_store_drop(call);
        return kvcd_call_error(call, -ENOMEM, "out of memory");
    }
    ntasks = 0;
    for (i = 0; i < n; i++) {
        obj = call->objs[i];
        if (!obj || store_in_place(call, i))
            continue;
        for (off = 0; off < obj->size; off += KVCD_COPY_SLICE) {
            copy_task_t *t = &call->tasks[ntasks++];

            t->dst = (char *)obj->data + off;
            t->src = store_src(call, i) + off;
            t->len = obj->size - off < KVCD_COPY_SLICE ? obj->size - off : KVCD_COPY_SLICE;
        }
    }
    rc = kvcd_call_copy(call, ntasks, store_copied);
    if (rc != 0) {
        kvcd_store_drop(call);
        kvcd_call_error(call, rc, "the copy into L1 could not be queued");
    }
    (void)srv;
}

/* Reserve L1 objects for the keys from call->store_next on. When L1 is full of
 * objects that write-behind still holds, wait for it (up to --l2-timeout-ms)
 * rather than fail: that is back-pressure from a slower L2, not a full cache.
 * Returns 0 when the call must wait, 1 when it moved on. */
int kvcd_store_reserve(call_t *call, int force)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i;
    kvcd_obj_t *obj;
    kvcd_key_t k;
    uint64_t h;
    int rc;

    for (i = call->store_next; i < n; i++) {
        size_t len = store_len(call, i);

        if (!call->seg && (obj = kvcd_frame_take(&call->frames[i]))) {
            /* Received in place: reserved for this key when its frame came. */
            call->objs[i] = obj;
            continue;
        }
        kvcd_req_key(&call->req, i, &k);
        h = kvcd_key_hash(&k);
        obj = kvcd_l1_find(srv->l1, &k, h);
        if (obj && obj->state != KVCD_OBJ_READY && obj->prefetched && !force) {
            /* A LOOKUP's prefetch is still reading it from L2 (storage.c marks
             * only those WRITING objects) and may fail: wait for it rather
             * than answer for bytes that may never land. */
            call->store_next = i;
            return 0;
        }
        if (obj) {
            /* The key names the content: keep what is there. */
            if (obj->state == KVCD_OBJ_READY)
                kvcd_l1_touch(srv->l1, obj);
            srv->c.store_dups++;
            continue;
        }
        rc = kvcd_l1_reserve(srv->l1, &k, h, len, &obj);
        if (rc == KVCD_ENOSPACE && !force && kvcd_storage_inflight(srv->storage) > 0) {
            call->store_next = i;
            return 0;
        }
        if (rc != 0) {
            call->results[i] = rc;
            if (rc == KVCD_ENOSPACE)
                srv->c.store_nospace++;
            continue;
        }
        call->objs[i] = obj;
    }
    call->store_next = n;
    store_copy(call);
    return 1;
}

void kvcd_op_store(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i, total = 0;

    for (i = 0; i < n; i++) {
        size_t len = call->frames[i].len;

        if (len == 0) {
            char msg[96];

            snprintf(msg, sizeof(msg), "bulk frame %zu (key %zu) is empty", i + 1, i);
            return kvcd_call_error(call, KVCD_EFRAMES, msg);
        }
        if (len > srv->opt->max_frame) {
            char msg[128];

            snprintf(msg, sizeof(msg), "frame %zu has %zu bytes, max_frame is %" PRIu64,
                     i + 1, len, srv->opt->max_frame);
            return kvcd_call_error(call, KVCD_ETOOLARGE, msg);
        }
        total += len;
    }
    if (total > srv->opt->max_request)
        return kvcd_call_error(call, KVCD_ETOOLARGE, "bulk bytes exceed max_request");

    call->results = calloc(n, sizeof(int));
    call->objs = calloc(n, sizeof(kvcd_obj_t *));
    if (!call->results || !call->objs)
        return kvcd_call_error(call, -ENOMEM, "out of memory");
    if (!kvcd_store_reserve(call, 0))
        kvcd_call_park(call, kvcd_store_reserve);
}

/* ---- STORE frames received in place (the bridge's placer, bridge.h) ---- */

/* One message's decoded header, kept while its frames arrive. */
typedef struct {
    int decoded; /* req holds a decoded header (to free) */
    int store;   /* ... of a STORE, while the server runs */
    kvcd_req_t req;
} place_memo_t;

void *kvcd_store_place(void *data, void **memo, const void *hdr, size_t hdr_len, size_t index,
                       size_t len, void **token)
{
    kvcd_server_t *srv = data;
    place_memo_t *m = *memo;
    kvcd_obj_t *obj;
    kvcd_key_t k;
    uint64_t h;
    char msg[8];

    /* Small frames: the copy costs less than decoding the header early. */
    if (len < KVCD_PLACE_MIN || len > srv->opt->max_frame || srv->state != KVCD_STATE_RUNNING)
        return NULL;
    if (!m) {
        m = calloc(1, sizeof(*m));
        if (!m)
            return NULL;
        *memo = m;
        m->decoded = kvcd_proto_decode_req(hdr, hdr_len, srv->opt->max_keys, &m->req, msg,
                                           sizeof(msg)) == 0;
        m->store = m->decoded && m->req.op == KVCD_OP_STORE;
    }
    if (!m->store || index > m->req.nkeys)
        return NULL; /* dispatch answers what is wrong with it */
    kvcd_req_key(&m->req, index - 1, &k);
    h = kvcd_key_hash(&k);
    /* Present or being written (also by this message): the ordinary path
     * counts it as a duplicate. No space without waiting: the ordinary path
     * waits for write-behind, with the frame in its own buffer. */
    if (kvcd_l1_find(srv->l1, &k, h) || kvcd_l1_reserve(srv->l1, &k, h, len, &obj) != 0)
        return NULL;
    *token = obj;
    return obj->data;
}

void kvcd_store_unplace(void *data, void *token)
{
    kvcd_server_t *srv = data;

    kvcd_l1_unlink(srv->l1, token);
    kvcd_l1_unref(srv->l1, token);
}

void kvcd_store_forget(void *data, void *memo)
{
    place_memo_t *m = memo;

    if (m->decoded)
        kvcd_proto_req_free(&m->req);
    free(m);
}

/* ---- LOOKUP ---- */

static void lookup_done(void *data, size_t prefix, const uint8_t *present,
                        kvcd_obj_t *const *objs)
{
    call_t *call = data;
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i;
    kvcd_wbuf_t w;

    call->busy--;
    if (call->answered) {
        kvcd_call_maybe_free(call);
        return;
    }
    if (!present)
        return kvcd_call_error(call, -ENOMEM, "out of memory");
    srv->c.lookups++;
    srv->c.lookup_keys += n;
    for (i = 0; i < n; i++)
        srv->c.lookup_hits += present[i];
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_lookup(&w, call->req.id, prefix, present, n);
    kvcd_call_reply(call, &w, NULL, 0, NULL, NULL);
}

void kvcd_op_lookup(call_t *call)
{
    call->busy++;
    kvcd_storage_lookup(call->srv->storage, &call->req, lookup_done, call);
}

/* ---- LOAD ---- */

/* The READY objects for the call's keys, NULL for a miss, in a new array.
 * NULL with *wait set when a key is still being written (a prefetch or a store
 * in progress) and !force; NULL with *wait clear when out of memory. */
kvcd_obj_t **kvcd_find_for_load(call_t *call, int force, int *wait)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i;
    kvcd_obj_t **objs = calloc(n ? n : 1, sizeof(*objs));
    kvcd_key_t k;

    *wait = 0;
    if (!objs)
        return NULL;
    for (i = 0; i < n; i++) {
        kvcd_req_key(&call->req, i, &k);
        objs[i] = kvcd_l1_find(srv->l1, &k, kvcd_key_hash(&k));
        if (objs[i] && objs[i]->state != KVCD_OBJ_READY) {
            if (!force) {
                free(objs);
                *wait = 1;
                return NULL;
            }
            objs[i] = NULL;
        }
    }
    return objs;
}

/* The objects one LOAD reply's frames point into, released when sent. */
typedef struct {
    kvcd_server_t *srv;
    size_t n;
    kvcd_obj_t *objs[];
} load_rel_t;

static void load_sent(void *arg)
{
    load_rel_t *r = arg;
    size_t i;

    for (i = 0; i < r->n; i++)
        kvcd_l1_unref(r->srv->l1, r->objs[i]);
    free(r);
}

/* Serve a LOAD from L1. Objects still WRITING (a prefetch or a store in
 * progress) make the call wait, up to --l2-timeout-ms, unless `force`. Returns 1
 * when the call was answered. */
static int load_serve(call_t *call, int force)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i, hits;
    kvcd_obj_t **objs;
    kvcd_bulk_t *bulk;
    load_rel_t *r;
    kvcd_wbuf_t w;
    int wait;

    objs = kvcd_find_for_load(call, force, &wait);
    if (!objs) {
        if (wait)
            return 0;
        kvcd_call_error(call, -ENOMEM, "out of memory");
        return 1;
    }
    for (i = 0, hits = 0; i < n; i++)
        hits += objs[i] != NULL;
    call->results = calloc(n ? n : 1, sizeof(int));
    bulk = calloc(n ? n : 1, sizeof(*bulk));
    r = malloc(sizeof(*r) + hits * sizeof(kvcd_obj_t *));
    if (!call->results || !bulk || !r) {
        free(r);
        free(bulk);
        free(objs);
        kvcd_call_error(call, -ENOMEM, "out of memory");
        return 1;
    }
    r->srv = srv;
    r->n = 0;
    for (i = 0; i < n; i++) {
        kvcd_obj_t *obj = objs[i];

        if (!obj) {
            call->results[i] = KVCD_ENOTFOUND;
            srv->c.load_misses++;
            continue;
        }
        /* Zero copy: the frame points into L1 and holds a reference until it
         * has been sent. */
        kvcd_l1_ref(obj);
        kvcd_l1_touch(srv->l1, obj);
        kvcd_storage_served(srv->storage, obj);
        r->objs[r->n++] = obj;
        bulk[i].data = obj->data;
        bulk[i].len = obj->size;
        srv->c.load_hits++;
        srv->c.load_bytes += obj->size;
    }
    free(objs);
    srv->c.loads++;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_results(&w, call->req.id, KVCD_OP_LOAD, call->results, n);
    kvcd_call_reply(call, &w, bulk, n, load_sent, r);
    free(bulk);
    return 1;
}

void kvcd_op_load(call_t *call)
{
    if (!load_serve(call, 0))
        kvcd_call_park(call, load_serve);
}

/* ---- REMOVE, CLEAR ---- */

static void remove_done(void *data, const int *results)
{
    call_t *call = data;
    size_t i;

    call->busy--;
    if (call->answered) {
        kvcd_call_maybe_free(call);
        return;
    }
    if (!results)
        return kvcd_call_error(call, -ENOMEM, "out of memory");
    call->results = malloc(call->req.nkeys * sizeof(int));
    if (!call->results)
        return kvcd_call_error(call, -ENOMEM, "out of memory");
    memcpy(call->results, results, call->req.nkeys * sizeof(int));
    for (i = 0; i < call->req.nkeys; i++)
        call->srv->c.removes += results[i] == 0;
    kvcd_call_results(call);
}

void kvcd_op_remove(call_t *call)
{
    call->busy++;
    kvcd_storage_remove(call->srv->storage, &call->req, remove_done, call);
}

void kvcd_op_clear(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t removed = kvcd_storage_clear_l1(srv->storage);
    kvcd_wbuf_t w;

    srv->c.clear_requests++;
    srv->c.clears += removed;
    KVCD_LOG(KVCD_LOG_INFO, "server", "CLEAR removed %zu objects from L1", removed);
    kvcd_wbuf_init(&w);
    kvcd_proto_reply_begin(&w, call->req.id, KVCD_OP_CLEAR, 0, NULL, 1);
    kvcd_pack_cstr(&w.pk, "removed");
    msgpack_pack_uint64(&w.pk, removed);
    kvcd_call_reply(call, &w, NULL, 0, NULL, NULL);
}
