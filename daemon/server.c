/*
 * server.c - socket bridge, dispatch and the L1 operations.
 *
 * The ROUTER socket is bridged into libuv through ZMQ_FD, which is edge
 * triggered: it signals only when ZMQ_EVENTS changes. So we drain while
 * ZMQ_EVENTS says POLLIN (a bounded batch per loop turn, continued from an idle
 * handle so one busy client cannot starve timers and completions), and re-check
 * after every send, because a send can consume the edge without us seeing it.
 *
 * Invariants kept here:
 *  - every request gets exactly one reply (send_reply frees the call);
 *  - an object is visible only once its bytes are complete (reserve -> copy ->
 *    publish), and is referenced while a worker copies into it or ZeroMQ sends
 *    it (zero-copy frames release their reference through the wake queue);
 *  - a request that breaks a limit changes nothing and gets a typed error.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "daemon/l1.h"
#include "daemon/log.h"
#include "daemon/peer.h"
#include "daemon/segment.h"
#include "daemon/server.h"
#include "daemon/storage.h"
#include "protocol/kvcd_err.h"
#include "protocol/proto.h"

#define DRAIN_BUDGET 128            /* messages per loop turn */
#define INLINE_COPY (256u << 10)    /* smaller stores are copied on the loop */
#define COPY_SLICE (4u << 20)       /* a worker copies at most this per task */
#define SHUTDOWN_QUIET_MS 300       /* stop once nothing arrived for this long */

typedef struct {
    uint64_t requests, errors;
    uint64_t stores, store_bytes, store_dups, store_nospace;
    uint64_t lookups, lookup_keys, lookup_hits;
    uint64_t loads, load_hits, load_misses, load_bytes;
    uint64_t removes, clears, dropped_replies;
    uint64_t shm_stores, shm_loads;
} counters_t;

/* The references held by one reply's zero-copy frames. ZeroMQ's I/O thread
 * frees the frames one by one; the last one queues the whole set for the loop,
 * so a reply costs one wake-up however many frames it has. */
typedef struct rel_s {
    struct rel_s *next;
    kvcd_server_t *srv;
    size_t frames_left;         /* atomic */
    size_t nobjs;
    kvcd_obj_t *objs[];
} rel_t;

typedef struct call_s call_t;

typedef struct {
    uv_work_t work;
    call_t *call;
    void *dst;
    const void *src;
    size_t len;
} copy_task_t;

struct call_s {
    kvcd_server_t *srv;
    zmq_msg_t ident;
    zmq_msg_t hdr;
    zmq_msg_t *frames;          /* bulk frames received */
    size_t nframes, frames_cap;
    int frames_overflow;
    kvcd_req_t req;
    int decoded;
    int *results;
    kvcd_obj_t **objs;          /* STORE: objects being written */
    copy_task_t *tasks;
    size_t pending;
    call_t *park_next;          /* waiting for L1 to change (see park) */
    int (*park_fn)(call_t *call, int force);
    uint64_t park_deadline;
    size_t store_next;          /* STORE: next key to reserve */
    kvcd_seg_t *seg;        /* STORE_SHM, LOAD_SHM: referenced until freed */
    uint64_t *shm_lens;         /* LOAD_SHM: object sizes for the reply */
};

struct kvcd_server_s {
    uv_loop_t *loop;
    const kvcd_options_t *opt;
    kvcd_l1_t *l1;
    kvcd_storage_t *storage;
    kvcd_segtab_t *segs;
    call_t *parked;
    uv_timer_t park_timer;
    void *zctx;
    void *sock;
    uv_poll_t poll;
    uv_idle_t idle;
    uv_async_t wake;
    uv_signal_t sigterm, sigint;
    uv_timer_t stop_timer;
    uv_timer_t quiet_timer;
    pthread_mutex_t rel_lock;
    rel_t *rel_head;
    int wake_live;
    int stopping;
    int closed;
    uint64_t start_ms;
    uint64_t last_recv_ms;
    uint64_t inflight;
    counters_t c;
};

static void drain(kvcd_server_t *srv);
static void idle_cb(uv_idle_t *h);
static void finish_stop(kvcd_server_t *srv);

/* ---- zero-copy frame release ---- */

/* ZeroMQ's I/O thread (or ours, on a failed send): queue, wake the loop. */
static void frame_free_cb(void *data, void *hint)
{
    rel_t *r = hint;
    kvcd_server_t *srv = r->srv;

    if (__atomic_sub_fetch(&r->frames_left, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    pthread_mutex_lock(&srv->rel_lock);
    r->next = srv->rel_head;
    srv->rel_head = r;
    if (srv->wake_live)
        uv_async_send(&srv->wake);
    pthread_mutex_unlock(&srv->rel_lock);
}

static void release_queued(kvcd_server_t *srv)
{
    rel_t *r, *next;

    pthread_mutex_lock(&srv->rel_lock);
    r = srv->rel_head;
    srv->rel_head = NULL;
    pthread_mutex_unlock(&srv->rel_lock);
    for (; r; r = next) {
        size_t i;

        next = r->next;
        for (i = 0; i < r->nobjs; i++)
            kvcd_l1_unref(srv->l1, r->objs[i]);
        free(r);
    }
}

static void wake_cb(uv_async_t *h)
{
    release_queued(h->data);
}

/* ---- calls and replies ---- */

static void call_free(call_t *call)
{
    size_t i;

    for (i = 0; i < call->nframes; i++)
        zmq_msg_close(&call->frames[i]);
    free(call->frames);
    zmq_msg_close(&call->hdr);
    zmq_msg_close(&call->ident);
    if (call->decoded)
        kvcd_proto_req_free(&call->req);
    free(call->results);
    free(call->objs);
    free(call->tasks);
    if (call->seg)
        kvcd_seg_unref(call->seg);
    free(call->shm_lens);
    free(call);
}

static void free_buf_cb(void *data, void *hint)
{
    free(data);
}

/* Send [identity, header, bulk...] and free the call. bulk messages are
 * consumed (sent or closed) in every case. */
static void send_reply(call_t *call, kvcd_wbuf_t *w, zmq_msg_t *bulk, size_t nbulk)
{
    kvcd_server_t *srv = call->srv;
    zmq_msg_t h;
    size_t len, i = 0;
    char *buf = kvcd_wbuf_release(w, &len);
    int ok = 0;

    if (zmq_msg_init_data(&h, buf, len, free_buf_cb, NULL) != 0) {
        free(buf);
        zmq_msg_init(&h);
    }
    if (srv->sock && zmq_msg_send(&call->ident, srv->sock, ZMQ_SNDMORE) >= 0 &&
        zmq_msg_send(&h, srv->sock, nbulk ? ZMQ_SNDMORE : 0) >= 0) {
        for (i = 0; i < nbulk; i++)
            if (zmq_msg_send(&bulk[i], srv->sock, i + 1 < nbulk ? ZMQ_SNDMORE : 0) < 0)
                break;
        ok = i == nbulk;
    }
    if (!ok) {
        /* The peer went away (ROUTER_MANDATORY) or we are closed. */
        srv->c.dropped_replies++;
        KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "server", 10000,
                             "reply to request %" PRIu64 " dropped: %s",
                             call->req.id, srv->sock ? zmq_strerror(zmq_errno()) : "closed");
        zmq_msg_close(&h);
        for (; i < nbulk; i++)
            zmq_msg_close(&bulk[i]);
    }
    call_free(call);
    srv->inflight--;
    if (srv->sock)
        uv_idle_start(&srv->idle, idle_cb);
}

static void reply_error(call_t *call, int err, const char *msg)
{
    kvcd_wbuf_t w;

    call->srv->c.errors++;
    KVCD_LOG(KVCD_LOG_DEBUG, "server", "request %" PRIu64 " op %" PRIu32 ": %s: %s",
             call->req.id, call->req.op, kvcd_errname(err), msg ? msg : "");
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_error(&w, call->req.id, call->req.op, err, msg);
    send_reply(call, &w, NULL, 0);
}

static void reply_results(call_t *call)
{
    kvcd_wbuf_t w;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_results(&w, call->req.id, call->req.op, call->results,
                              call->req.nkeys);
    send_reply(call, &w, NULL, 0);
}

/* ---- operations ---- */

static void op_ping(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    kvcd_l1_stats_t st;
    kvcd_ping_t p;
    kvcd_wbuf_t w;

    kvcd_l1_stats(srv->l1, &st);
    p.server = "kvcd " KVCD_VERSION;
    p.proto = KVCD_PROTO_VERSION;
    p.chunk_size = srv->opt->chunk_size;
    p.max_frame = srv->opt->max_frame;
    p.max_keys = srv->opt->max_keys;
    p.max_request = srv->opt->max_request;
    p.l1_capacity = st.capacity;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_ping(&w, call->req.id, &p);
    send_reply(call, &w, NULL, 0);
}

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
        if (call->objs[i])
            kvcd_l1_unref(srv->l1, call->objs[i]);
    reply_results(call);
}

/* Where key i's bytes come from: its bulk frame (STORE) or its range of the
 * segment (STORE_SHM). */
static const char *store_src(call_t *call, size_t i)
{
    if (call->seg)
        return (const char *)call->seg->base + call->req.offsets[i];
    return zmq_msg_data(&call->frames[i]);
}

static size_t store_len(call_t *call, size_t i)
{
    return call->seg ? (size_t)call->req.lengths[i] : zmq_msg_size(&call->frames[i]);
}

/* Forget the objects reserved for a store that cannot complete. */
static void store_drop(call_t *call)
{
    size_t i;

    for (i = 0; i < call->req.nkeys; i++)
        if (call->objs[i]) {
            kvcd_l1_unlink(call->srv->l1, call->objs[i]);
            kvcd_l1_unref(call->srv->l1, call->objs[i]);
            call->objs[i] = NULL;
        }
}

static void load_shm_finish(call_t *call);

static void copy_work(uv_work_t *w)
{
    copy_task_t *t = w->data;

    memcpy(t->dst, t->src, t->len);
}

static void copy_after(uv_work_t *w, int status)
{
    copy_task_t *t = w->data;
    call_t *call = t->call;

    if (--call->pending == 0) {
        if (call->req.op == KVCD_OP_LOAD_SHM)
            load_shm_finish(call);
        else
            store_finish(call);
    }
}

/* Copy the frames into the reserved objects: small stores inline, big ones on
 * the threadpool, sliced so that one request's copies run on every worker at
 * once and the loop never stalls on them. */
static void store_copy(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i, total = 0, ntasks = 0, off;
    kvcd_obj_t *obj;

    if (call->seg && !call->seg->registered) {
        /* Unregistered (or expired) while this store waited for L1 space. */
        store_drop(call);
        return reply_error(call, KVCD_ESEGMENT, "segment was unregistered before the copy");
    }
    for (i = 0; i < n; i++) {
        if (!call->objs[i])
            continue;
        total += call->objs[i]->size;
        ntasks += (call->objs[i]->size + COPY_SLICE - 1) / COPY_SLICE;
    }
    if (total <= INLINE_COPY) {
        for (i = 0; i < n; i++)
            if (call->objs[i])
                memcpy(call->objs[i]->data, store_src(call, i), call->objs[i]->size);
        return store_finish(call);
    }
    call->tasks = calloc(ntasks, sizeof(copy_task_t));
    if (!call->tasks) {
        store_drop(call);
        return reply_error(call, -ENOMEM, "out of memory");
    }
    call->pending = ntasks;
    ntasks = 0;
    for (i = 0; i < n; i++) {
        obj = call->objs[i];
        if (!obj)
            continue;
        for (off = 0; off < obj->size; off += COPY_SLICE) {
            copy_task_t *t = &call->tasks[ntasks++];

            t->call = call;
            t->dst = (char *)obj->data + off;
            t->src = store_src(call, i) + off;
            t->len = obj->size - off < COPY_SLICE ? obj->size - off : COPY_SLICE;
            t->work.data = t;
            uv_queue_work(srv->loop, &t->work, copy_work, copy_after);
        }
    }
}

/* Reserve L1 objects for the keys from call->store_next on. When L1 is full of
 * objects that write-behind still holds, wait for it (up to --l2-timeout-ms)
 * rather than fail: that is back-pressure from a slower L2, not a full cache.
 * Returns 0 when the call must wait, 1 when it moved on. */
static int store_reserve(call_t *call, int force)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i;
    kvcd_obj_t *obj;
    kvcd_key_t k;
    uint64_t h;
    int rc;

    for (i = call->store_next; i < n; i++) {
        size_t len = store_len(call, i);

        kvcd_req_key(&call->req, i, &k);
        h = kvcd_key_hash(&k);
        obj = kvcd_l1_find(srv->l1, &k, h);
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

static void park(call_t *call, int (*fn)(call_t *, int));

static void op_store(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i, total = 0;

    for (i = 0; i < n; i++) {
        size_t len = zmq_msg_size(&call->frames[i]);

        if (len == 0)
            return reply_error(call, KVCD_EFRAMES, "a bulk frame is empty");
        if (len > srv->opt->max_frame) {
            char msg[128];

            snprintf(msg, sizeof(msg), "frame %zu has %zu bytes, max_frame is %" PRIu64,
                     i + 1, len, srv->opt->max_frame);
            return reply_error(call, KVCD_ETOOLARGE, msg);
        }
        total += len;
    }
    if (total > srv->opt->max_request)
        return reply_error(call, KVCD_ETOOLARGE, "bulk bytes exceed max_request");

    call->results = calloc(n, sizeof(int));
    call->objs = calloc(n, sizeof(kvcd_obj_t *));
    if (!call->results || !call->objs)
        return reply_error(call, -ENOMEM, "out of memory");
    if (!store_reserve(call, 0))
        park(call, store_reserve);
}

static void lookup_done(void *data, size_t prefix, const uint8_t *present)
{
    call_t *call = data;
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i;
    kvcd_wbuf_t w;

    if (!present)
        return reply_error(call, -ENOMEM, "out of memory");
    srv->c.lookups++;
    srv->c.lookup_keys += n;
    for (i = 0; i < n; i++)
        srv->c.lookup_hits += present[i];
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_lookup(&w, call->req.id, prefix, present, n);
    send_reply(call, &w, NULL, 0);
}

static void op_lookup(call_t *call)
{
    kvcd_storage_lookup(call->srv->storage, &call->req, lookup_done, call);
}

/* The READY objects for the call's keys, NULL for a miss, in a new array.
 * NULL with *wait set when a key is still being written (a prefetch or a store
 * in progress) and !force; NULL with *wait clear when out of memory. */
static kvcd_obj_t **find_for_load(call_t *call, int force, int *wait)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i;
    kvcd_obj_t **objs = calloc(n, sizeof(*objs));
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

/* Serve a LOAD from L1. Objects still WRITING (a prefetch or a store in
 * progress) make the call wait, up to --l2-timeout-ms, unless `force`. Returns 1
 * when the call was answered. */
static int load_serve(call_t *call, int force)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i, hits;
    kvcd_obj_t **objs;
    zmq_msg_t *bulk;
    kvcd_wbuf_t w;
    rel_t *r;
    int wait;

    objs = find_for_load(call, force, &wait);
    if (!objs) {
        if (wait)
            return 0;
        reply_error(call, -ENOMEM, "out of memory");
        return 1;
    }
    for (i = 0, hits = 0; i < n; i++)
        hits += objs[i] != NULL;
    call->results = calloc(n, sizeof(int));
    bulk = calloc(n, sizeof(zmq_msg_t));
    r = hits ? malloc(sizeof(*r) + hits * sizeof(kvcd_obj_t *)) : NULL;
    if (!call->results || !bulk || (hits && !r)) {
        free(r);
        free(bulk);
        free(objs);
        reply_error(call, -ENOMEM, "out of memory");
        return 1;
    }
    if (r) {
        r->srv = srv;
        r->nobjs = 0;
        r->frames_left = hits;
    }
    for (i = 0; i < n; i++) {
        kvcd_obj_t *obj = objs[i];

        if (!obj) {
            call->results[i] = KVCD_ENOTFOUND;
            srv->c.load_misses++;
            zmq_msg_init(&bulk[i]);
            continue;
        }
        /* Zero copy: the frame points into L1 and holds a reference until
         * ZeroMQ has sent it. */
        kvcd_l1_ref(obj);
        kvcd_l1_touch(srv->l1, obj);
        kvcd_storage_served(srv->storage, obj);
        r->objs[r->nobjs++] = obj;
        zmq_msg_init_data(&bulk[i], obj->data, obj->size, frame_free_cb, r);
        srv->c.load_hits++;
        srv->c.load_bytes += obj->size;
    }
    free(objs);
    srv->c.loads++;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_results(&w, call->req.id, KVCD_OP_LOAD, call->results, n);
    send_reply(call, &w, bulk, n);
    free(bulk);
    return 1;
}

/* Retry parked calls (L1 changed, or time passed). */
static void retry_parked(kvcd_server_t *srv, int force_all)
{
    uint64_t now = uv_now(srv->loop);
    call_t **pp = &srv->parked, *call;

    while ((call = *pp)) {
        *pp = call->park_next;
        if (call->park_fn(call, force_all || now >= call->park_deadline))
            continue;
        call->park_next = NULL;
        *pp = call;
        pp = &call->park_next;
    }
    if (!srv->parked && !uv_is_closing((uv_handle_t *)&srv->park_timer))
        uv_timer_stop(&srv->park_timer);
}

static void storage_changed(void *data)
{
    retry_parked(data, 0);
}

static void park_timer_cb(uv_timer_t *h)
{
    retry_parked(h->data, 0);
}

/* Wait for L1 to change: fn(call, force) is retried on every change and once
 * more, forced, when --l2-timeout-ms has passed. */
static void park(call_t *call, int (*fn)(call_t *, int))
{
    kvcd_server_t *srv = call->srv;
    call_t **pp = &srv->parked;

    call->park_fn = fn;
    call->park_deadline = uv_now(srv->loop) + (uint64_t)srv->opt->l2_timeout_ms;
    while (*pp)
        pp = &(*pp)->park_next; /* first come, first served */
    call->park_next = NULL;
    *pp = call;
    if (!uv_is_active((uv_handle_t *)&srv->park_timer))
        uv_timer_start(&srv->park_timer, park_timer_cb, 20, 20);
}

static void op_load(call_t *call)
{
    if (!load_serve(call, 0))
        park(call, load_serve);
}

static void remove_done(void *data, const int *results)
{
    call_t *call = data;
    size_t i;

    if (!results)
        return reply_error(call, -ENOMEM, "out of memory");
    call->results = malloc(call->req.nkeys * sizeof(int));
    if (!call->results)
        return reply_error(call, -ENOMEM, "out of memory");
    memcpy(call->results, results, call->req.nkeys * sizeof(int));
    for (i = 0; i < call->req.nkeys; i++)
        call->srv->c.removes += results[i] == 0;
    reply_results(call);
}

static void op_remove(call_t *call)
{
    kvcd_storage_remove(call->srv->storage, &call->req, remove_done, call);
}

static void op_clear(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t removed = kvcd_l1_clear(srv->l1);
    kvcd_wbuf_t w;

    srv->c.clears++;
    KVCD_LOG(KVCD_LOG_INFO, "server", "CLEAR removed %zu objects from L1", removed);
    kvcd_wbuf_init(&w);
    kvcd_proto_reply_begin(&w, call->req.id, KVCD_OP_CLEAR, 0, NULL, 1);
    kvcd_pack_cstr(&w.pk, "removed");
    msgpack_pack_uint64(&w.pk, removed);
    send_reply(call, &w, NULL, 0);
}

static json_t *status_json(kvcd_server_t *srv)
{
    const counters_t *c = &srv->c;
    kvcd_l1_stats_t st;

    kvcd_l1_stats(srv->l1, &st);
    return json_pack(
        "{s:s, s:f, s:I, s:{s:I, s:I, s:I, s:s, s:f, s:f, s:I},"
        " s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I,"
        " s:I, s:I, s:I, s:I, s:I}}",
        "server", "kvcd " KVCD_VERSION,
        "uptime_s", (double)(uv_now(srv->loop) - srv->start_ms) / 1000.0,
        "inflight", (json_int_t)srv->inflight,
        "l1",
        "capacity", (json_int_t)st.capacity,
        "used", (json_int_t)st.used,
        "objects", (json_int_t)st.objects,
        "eviction_policy", kvcd_options_evict_name(srv->opt->eviction_policy),
        "high_watermark", srv->opt->high_watermark,
        "low_watermark", srv->opt->low_watermark,
        "largest_free", (json_int_t)st.largest_free,
        "counters",
        "requests", (json_int_t)c->requests,
        "errors", (json_int_t)c->errors,
        "stores", (json_int_t)c->stores,
        "store_bytes", (json_int_t)c->store_bytes,
        "store_dups", (json_int_t)c->store_dups,
        "store_nospace", (json_int_t)c->store_nospace,
        "lookups", (json_int_t)c->lookups,
        "lookup_keys", (json_int_t)c->lookup_keys,
        "lookup_hits", (json_int_t)c->lookup_hits,
        "loads", (json_int_t)c->loads,
        "load_hits", (json_int_t)c->load_hits,
        "load_misses", (json_int_t)c->load_misses,
        "load_bytes", (json_int_t)c->load_bytes,
        "removes", (json_int_t)c->removes,
        "evictions", (json_int_t)st.evictions,
        "evicted_bytes", (json_int_t)st.evicted_bytes,
        "clears", (json_int_t)c->clears,
        "dropped_replies", (json_int_t)c->dropped_replies);
}

static void op_status(call_t *call)
{
    json_t *st = status_json(call->srv);
    kvcd_wbuf_t w;

    if (!st)
        return reply_error(call, KVCD_EINTERNAL, "cannot build status");
    kvcd_storage_status(call->srv->storage, st);
    kvcd_segtab_status(call->srv->segs, st);
    json_object_set_new(json_object_get(st, "counters"), "shm_stores",
                        json_integer((json_int_t)call->srv->c.shm_stores));
    json_object_set_new(json_object_get(st, "counters"), "shm_loads",
                        json_integer((json_int_t)call->srv->c.shm_loads));
    kvcd_wbuf_init(&w);
    kvcd_proto_reply_begin(&w, call->req.id, KVCD_OP_STATUS, 0, NULL, 1);
    kvcd_pack_cstr(&w.pk, "status");
    kvcd_pack_json(&w.pk, st);
    json_decref(st);
    send_reply(call, &w, NULL, 0);
}

/* ---- shared-memory data plane (docs/PROTOCOL.md) ---- */

static const void *ident_of(call_t *call, size_t *len)
{
    *len = zmq_msg_size(&call->ident);
    return zmq_msg_data(&call->ident);
}

/* The kernel's word on who sent the call (peer.h): only a verified peer of
 * kvcd's own user may share memory. */
static void peer_of(call_t *call, kvcd_peer_t *peer)
{
    kvcd_peer_from_msg(&call->hdr, call->srv->opt->endpoint, peer);
}

/* Registration completes off the loop (segment.c); the call waits for it. */
static void register_done(void *data, int status, uint64_t id, const char *msg)
{
    call_t *call = data;
    kvcd_wbuf_t w;

    if (status != 0)
        return reply_error(call, status, msg);
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_segment(&w, call->req.id, id);
    send_reply(call, &w, NULL, 0);
}

static void op_register_segment(call_t *call)
{
    char msg[256];
    size_t ilen;
    const void *ident = ident_of(call, &ilen);
    kvcd_peer_t peer;
    int rc;

    peer_of(call, &peer);
    rc = kvcd_segtab_register(call->srv->segs, &peer, ident, ilen, call->req.seg_pid,
                              call->req.seg_fd, call->req.seg_size, register_done, call,
                              msg, sizeof(msg));
    if (rc != 0)
        reply_error(call, rc, msg);
}

static void op_unregister_segment(call_t *call)
{
    char msg[256];
    size_t ilen;
    const void *ident = ident_of(call, &ilen);
    kvcd_peer_t peer;
    kvcd_wbuf_t w;
    int rc;

    peer_of(call, &peer);
    rc = kvcd_segtab_unregister(call->srv->segs, &peer, ident, ilen, call->req.segment, msg,
                                sizeof(msg));
    if (rc != 0)
        return reply_error(call, rc, msg);
    kvcd_wbuf_init(&w);
    kvcd_proto_reply_begin(&w, call->req.id, KVCD_OP_UNREGISTER_SEGMENT, 0, NULL, 0);
    send_reply(call, &w, NULL, 0);
}

/* Take a reference on the request's segment and check every (offset, length)
 * against it. 0, or the request was answered with an error. */
static int shm_acquire(call_t *call, const char *lname)
{
    kvcd_server_t *srv = call->srv;
    char msg[256];
    size_t ilen, i;
    const void *ident = ident_of(call, &ilen);
    kvcd_peer_t peer;
    int rc;

    peer_of(call, &peer);
    rc = kvcd_segtab_acquire(srv->segs, &peer, ident, ilen, call->req.segment, &call->seg,
                             msg, sizeof(msg));

    if (rc != 0) {
        reply_error(call, rc, msg);
        return -1;
    }
    for (i = 0; i < call->req.nkeys; i++) {
        uint64_t off = call->req.offsets[i], len = call->req.lengths[i];

        /* Written so that off + len cannot overflow. */
        if (off > call->seg->size || len > call->seg->size - off) {
            snprintf(msg, sizeof(msg),
                     "offsets[%zu], %s[%zu]: %" PRIu64 " bytes at %" PRIu64
                     " do not fit in segment %" PRIu64 " of %zu bytes",
                     i, lname, i, len, off, call->seg->id, call->seg->size);
            reply_error(call, KVCD_EBADFIELD, msg);
            return -1;
        }
    }
    return 0;
}

static void op_store_shm(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i;

    if (shm_acquire(call, "lengths") != 0)
        return;
    for (i = 0; i < n; i++) {
        if (call->req.lengths[i] > srv->opt->max_frame) {
            char msg[128];

            snprintf(msg, sizeof(msg), "lengths[%zu] is %" PRIu64 " bytes, max_frame is %" PRIu64,
                     i, call->req.lengths[i], srv->opt->max_frame);
            return reply_error(call, KVCD_ETOOLARGE, msg);
        }
    }
    call->results = calloc(n, sizeof(int));
    call->objs = calloc(n, sizeof(kvcd_obj_t *));
    if (!call->results || !call->objs)
        return reply_error(call, -ENOMEM, "out of memory");
    /* From here on exactly a STORE whose bytes come from the segment. */
    if (!store_reserve(call, 0))
        park(call, store_reserve);
}

static void load_shm_finish(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t i;
    kvcd_wbuf_t w;

    for (i = 0; i < call->req.nkeys; i++)
        if (call->objs[i])
            kvcd_l1_unref(srv->l1, call->objs[i]);
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_load_shm(&w, call->req.id, call->results, call->shm_lens,
                               call->req.nkeys);
    send_reply(call, &w, NULL, 0);
}

/* Serve a LOAD_SHM: like load_serve (waits for WRITING objects unless `force`),
 * but each hit is copied into the client's segment, on the threadpool when
 * large, with the object referenced until its copy is done. Returns 1 when the
 * call was answered or its copies started. */
static int load_shm_serve(call_t *call, int force)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i, total = 0, ntasks = 0, off;
    char *seg = call->seg->base;
    kvcd_obj_t **objs;
    int wait;

    if (!call->seg->registered) {
        reply_error(call, KVCD_ESEGMENT, "segment was unregistered before the copy");
        return 1;
    }
    objs = find_for_load(call, force, &wait);
    if (!objs) {
        if (wait)
            return 0;
        reply_error(call, -ENOMEM, "out of memory");
        return 1;
    }
    call->objs = objs;
    call->results = calloc(n, sizeof(int));
    call->shm_lens = calloc(n, sizeof(uint64_t));
    if (!call->results || !call->shm_lens) {
        reply_error(call, -ENOMEM, "out of memory");
        return 1;
    }
    for (i = 0; i < n; i++) {
        kvcd_obj_t *obj = objs[i];

        if (!obj) {
            call->results[i] = KVCD_ENOTFOUND;
            srv->c.load_misses++;
            continue;
        }
        call->shm_lens[i] = obj->size;
        if (obj->size > call->req.lengths[i]) {
            call->results[i] = -EMSGSIZE;
            objs[i] = NULL;
            srv->c.load_misses++;
            continue;
        }
        kvcd_l1_ref(obj);
        kvcd_l1_touch(srv->l1, obj);
        kvcd_storage_served(srv->storage, obj);
        srv->c.load_hits++;
        srv->c.shm_loads++;
        srv->c.load_bytes += obj->size;
        total += obj->size;
        ntasks += (obj->size + COPY_SLICE - 1) / COPY_SLICE;
    }
    srv->c.loads++;
    if (total <= INLINE_COPY) {
        for (i = 0; i < n; i++)
            if (objs[i])
                memcpy(seg + call->req.offsets[i], objs[i]->data, objs[i]->size);
        load_shm_finish(call);
        return 1;
    }
    call->tasks = calloc(ntasks, sizeof(copy_task_t));
    if (!call->tasks) {
        for (i = 0; i < n; i++)
            if (objs[i]) {
                kvcd_l1_unref(srv->l1, objs[i]);
                objs[i] = NULL;
            }
        reply_error(call, -ENOMEM, "out of memory");
        return 1;
    }
    call->pending = ntasks;
    ntasks = 0;
    for (i = 0; i < n; i++) {
        kvcd_obj_t *obj = objs[i];

        if (!obj)
            continue;
        for (off = 0; off < obj->size; off += COPY_SLICE) {
            copy_task_t *t = &call->tasks[ntasks++];

            t->call = call;
            t->dst = seg + call->req.offsets[i] + off;
            t->src = (const char *)obj->data + off;
            t->len = obj->size - off < COPY_SLICE ? obj->size - off : COPY_SLICE;
            t->work.data = t;
            uv_queue_work(srv->loop, &t->work, copy_work, copy_after);
        }
    }
    return 1;
}

static void op_load_shm(call_t *call)
{
    if (shm_acquire(call, "capacities") != 0)
        return;
    if (!load_shm_serve(call, 0))
        park(call, load_shm_serve);
}

static void dispatch(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t want;
    char msg[256];
    int rc;

    srv->inflight++;
    srv->c.requests++;
    kvcd_segtab_touch(srv->segs, zmq_msg_data(&call->ident), zmq_msg_size(&call->ident));
    rc = kvcd_proto_decode_req(zmq_msg_data(&call->hdr), zmq_msg_size(&call->hdr),
                               srv->opt->max_keys, &call->req, msg, sizeof(msg));
    if (rc != 0)
        return reply_error(call, rc, msg);
    call->decoded = 1;
    if (srv->stopping)
        return reply_error(call, KVCD_ESHUTDOWN, "server is shutting down");

    want = call->req.op == KVCD_OP_STORE ? call->req.nkeys : 0;
    if (call->frames_overflow || call->nframes != want) {
        snprintf(msg, sizeof(msg), "%s expects %zu bulk frames, got %s%zu",
                 kvcd_op_name(call->req.op), want,
                 call->frames_overflow ? "more than " : "", call->nframes);
        return reply_error(call, KVCD_EFRAMES, msg);
    }

    switch (call->req.op) {
    case KVCD_OP_PING:
        return op_ping(call);
    case KVCD_OP_STORE:
        return op_store(call);
    case KVCD_OP_LOOKUP:
        return op_lookup(call);
    case KVCD_OP_LOAD:
        return op_load(call);
    case KVCD_OP_REMOVE:
        return op_remove(call);
    case KVCD_OP_CLEAR:
        return op_clear(call);
    case KVCD_OP_STATUS:
        return op_status(call);
    case KVCD_OP_REGISTER_SEGMENT:
        return op_register_segment(call);
    case KVCD_OP_UNREGISTER_SEGMENT:
        return op_unregister_segment(call);
    case KVCD_OP_STORE_SHM:
        return op_store_shm(call);
    case KVCD_OP_LOAD_SHM:
        return op_load_shm(call);
    default:
        snprintf(msg, sizeof(msg), "operation %s is not supported by this server",
                 kvcd_op_name(call->req.op));
        return reply_error(call, KVCD_EUNKNOWNOP, msg);
    }
}

/* Receive one whole multipart message; 0 when one was handled, -1 when the
 * socket had nothing. */
static int recv_one(kvcd_server_t *srv)
{
    call_t *call = calloc(1, sizeof(*call));
    zmq_msg_t m;
    int more;

    if (!call)
        return -1;
    call->srv = srv;
    srv->last_recv_ms = uv_now(srv->loop);
    zmq_msg_init(&call->ident);
    zmq_msg_init(&call->hdr);
    if (zmq_msg_recv(&call->ident, srv->sock, ZMQ_DONTWAIT) < 0) {
        call_free(call);
        return -1;
    }
    /* The rest of a multipart message is already here (ZeroMQ delivers whole
     * messages), so these receives do not block. */
    more = zmq_msg_more(&call->ident);
    if (more && zmq_msg_recv(&call->hdr, srv->sock, 0) >= 0)
        more = zmq_msg_more(&call->hdr);
    while (more) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, srv->sock, 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        more = zmq_msg_more(&m);
        if (call->nframes == call->frames_cap) {
            size_t cap = call->frames_cap ? call->frames_cap * 2 : 8;
            zmq_msg_t *f;

            if (call->frames_cap > srv->opt->max_keys ||
                !(f = realloc(call->frames, cap * sizeof(zmq_msg_t)))) {
                call->frames_overflow = 1;
                zmq_msg_close(&m);
                continue;
            }
            call->frames = f;
            call->frames_cap = cap;
        }
        call->frames[call->nframes++] = m;
    }
    dispatch(call);
    return 0;
}

/* Read what the socket holds, at most `budget` messages (< 0: everything). */
static void drain_n(kvcd_server_t *srv, int budget)
{
    uint32_t events;
    size_t sz;

    for (; srv->sock; budget--) {
        sz = sizeof(events);
        if (zmq_getsockopt(srv->sock, ZMQ_EVENTS, &events, &sz) != 0 ||
            !(events & ZMQ_POLLIN))
            break;
        if (budget == 0) {
            uv_idle_start(&srv->idle, idle_cb);
            return;
        }
        if (recv_one(srv) != 0)
            break;
    }
    if (!uv_is_closing((uv_handle_t *)&srv->idle))
        uv_idle_stop(&srv->idle);
}

static void drain(kvcd_server_t *srv)
{
    drain_n(srv, DRAIN_BUDGET);
}

static void idle_cb(uv_idle_t *h)
{
    drain(h->data);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    if (status < 0)
        KVCD_LOG(KVCD_LOG_ERROR, "server", "poll on the ZeroMQ fd: %s", uv_strerror(status));
    drain(h->data);
}

/* ---- lifecycle ---- */

static void signal_cb(uv_signal_t *h, int signum)
{
    kvcd_server_t *srv = h->data;

    KVCD_LOG(KVCD_LOG_INFO, "server", "%s received, shutting down",
             signum == SIGTERM ? "SIGTERM" : "SIGINT");
    kvcd_server_stop(srv);
}

static void stop_timer_cb(uv_timer_t *h)
{
    kvcd_server_t *srv = h->data;

    KVCD_LOG(KVCD_LOG_WARNING, "server",
             "shutdown timeout: %" PRIu64 " requests and %zu L2 operations still in flight",
             srv->inflight, kvcd_storage_inflight(srv->storage));
    finish_stop(srv);
}

/* Nothing in flight (or the timeout passed): close the socket and every handle
 * so that uv_run returns. */
static void finish_stop(kvcd_server_t *srv)
{
    int linger = 2000;

    if (srv->closed)
        return;
    srv->closed = 1;
    /* Answer everything already queued in the socket with ESHUTDOWN, and the
     * LOADs still waiting for objects with what there is. */
    drain_n(srv, -1);
    retry_parked(srv, 1);
    kvcd_storage_stop(srv->storage);
    kvcd_segtab_stop(srv->segs);
    uv_close((uv_handle_t *)&srv->park_timer, NULL);
    zmq_setsockopt(srv->sock, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_close(srv->sock);
    srv->sock = NULL;
    uv_close((uv_handle_t *)&srv->poll, NULL);
    uv_close((uv_handle_t *)&srv->idle, NULL);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->stop_timer, NULL);
    uv_close((uv_handle_t *)&srv->quiet_timer, NULL);
    pthread_mutex_lock(&srv->rel_lock);
    srv->wake_live = 0;
    pthread_mutex_unlock(&srv->rel_lock);
    uv_close((uv_handle_t *)&srv->wake, NULL);
    KVCD_LOG(KVCD_LOG_INFO, "server", "socket closed");
}

/* While stopping, requests that were on the wire when the signal came still
 * arrive (a 16 MiB frame takes a while); they get ESHUTDOWN. The socket closes
 * once nothing is in flight and nothing arrived for SHUTDOWN_QUIET_MS, so no
 * client is left waiting for a reply that will never come. */
static void quiet_timer_cb(uv_timer_t *h)
{
    kvcd_server_t *srv = h->data;

    drain(srv);
    /* Write-behind to the adapters is flushed before the socket closes. */
    if (srv->inflight == 0 && kvcd_storage_inflight(srv->storage) == 0 &&
        uv_now(srv->loop) - srv->last_recv_ms >= SHUTDOWN_QUIET_MS)
        finish_stop(srv);
}

void kvcd_server_stop(kvcd_server_t *srv)
{
    if (srv->stopping)
        return;
    srv->stopping = 1;
    if (srv->inflight)
        KVCD_LOG(KVCD_LOG_INFO, "server", "waiting for %" PRIu64 " requests in flight",
                 srv->inflight);
    uv_timer_start(&srv->stop_timer, stop_timer_cb,
                   (uint64_t)srv->opt->shutdown_timeout_ms, 0);
    uv_timer_start(&srv->quiet_timer, quiet_timer_cb, SHUTDOWN_QUIET_MS / 4,
                   SHUTDOWN_QUIET_MS / 4);
}

int kvcd_server_create(uv_loop_t *loop, const kvcd_options_t *opt,
                       kvcd_server_t **out, char *err, size_t errlen)
{
    kvcd_server_t *srv = calloc(1, sizeof(*srv));
    kvcd_l1_config_t l1cfg;
    int one = 1, zero = 0, fd, rc;
    int64_t maxmsg;
    size_t sz;

    if (!srv) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    srv->loop = loop;
    srv->opt = opt;
    pthread_mutex_init(&srv->rel_lock, NULL);

    memset(&l1cfg, 0, sizeof(l1cfg));
    l1cfg.capacity = (size_t)(opt->l1_size_gb * (double)(1ull << 30));
    l1cfg.policy = opt->eviction_policy == KVCD_OPT_EVICT_NOOP ? KVCD_EVICT_NOOP : KVCD_EVICT_LRU;
    l1cfg.high_watermark = opt->high_watermark;
    l1cfg.low_watermark = opt->low_watermark;
    l1cfg.hugepages = opt->hugepages;
    l1cfg.lock_memory = opt->mlock;
    rc = kvcd_l1_create(&l1cfg, &srv->l1);
    if (rc != 0) {
        snprintf(err, errlen, "--l1-size-gb: cannot reserve %.3f GiB: %s",
                 opt->l1_size_gb, kvcd_strerror(rc));
        goto fail;
    }

    rc = kvcd_storage_create(loop, opt, srv->l1, &srv->storage, err, errlen);
    if (rc != 0)
        goto fail;
    kvcd_storage_on_change(srv->storage, storage_changed, srv);
    uv_timer_init(loop, &srv->park_timer);
    srv->park_timer.data = srv;

    srv->zctx = zmq_ctx_new();
    srv->sock = srv->zctx ? zmq_socket(srv->zctx, ZMQ_ROUTER) : NULL;
    if (!srv->sock) {
        rc = -zmq_errno();
        snprintf(err, errlen, "cannot create the ZeroMQ socket: %s", zmq_strerror(-rc));
        goto fail;
    }
    /* Unlimited send queue: replies are zero-copy references into L1, and a
     * ROUTER would otherwise drop them silently at the high-water mark. */
    maxmsg = (int64_t)(2 * opt->max_frame + (1u << 20));
    zmq_setsockopt(srv->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    zmq_setsockopt(srv->sock, ZMQ_SNDHWM, &zero, sizeof(zero));
    zmq_setsockopt(srv->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    zmq_setsockopt(srv->sock, ZMQ_LINGER, &zero, sizeof(zero));
    if (zmq_bind(srv->sock, opt->endpoint) != 0) {
        rc = -zmq_errno();
        snprintf(err, errlen, "cannot bind %s: %s", opt->endpoint, zmq_strerror(-rc));
        goto fail;
    }
    sz = sizeof(fd);
    zmq_getsockopt(srv->sock, ZMQ_FD, &fd, &sz);
    rc = kvcd_segtab_create(loop, opt, &srv->segs);
    if (rc != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }

    uv_poll_init(loop, &srv->poll, fd);
    uv_idle_init(loop, &srv->idle);
    uv_async_init(loop, &srv->wake, wake_cb);
    uv_signal_init(loop, &srv->sigterm);
    uv_signal_init(loop, &srv->sigint);
    uv_timer_init(loop, &srv->stop_timer);
    uv_timer_init(loop, &srv->quiet_timer);
    srv->poll.data = srv->idle.data = srv->wake.data = srv;
    srv->sigterm.data = srv->sigint.data = srv->stop_timer.data = srv;
    srv->quiet_timer.data = srv;
    srv->wake_live = 1;
    uv_poll_start(&srv->poll, UV_READABLE, poll_cb);
    uv_signal_start(&srv->sigterm, signal_cb, SIGTERM);
    uv_signal_start(&srv->sigint, signal_cb, SIGINT);
    uv_unref((uv_handle_t *)&srv->stop_timer);
    srv->start_ms = uv_now(loop);
    /* Messages may already be queued before the first edge. */
    uv_idle_start(&srv->idle, idle_cb);

    KVCD_LOG(KVCD_LOG_INFO, "server",
             "kvcd %s listening on %s (L1 %.3f GiB %s, chunk size %" PRIu64 ", %d workers)",
             KVCD_VERSION, opt->endpoint, opt->l1_size_gb,
             kvcd_options_evict_name(opt->eviction_policy), opt->chunk_size,
             opt->max_workers);
    *out = srv;
    return 0;

fail:
    if (srv->sock)
        zmq_close(srv->sock);
    if (srv->zctx)
        zmq_ctx_term(srv->zctx);
    if (srv->storage) {
        kvcd_storage_stop(srv->storage);
        uv_close((uv_handle_t *)&srv->park_timer, NULL);
        uv_run(loop, UV_RUN_DEFAULT); /* let the close callbacks run */
        kvcd_storage_destroy(srv->storage);
    }
    if (srv->l1)
        kvcd_l1_destroy(srv->l1);
    pthread_mutex_destroy(&srv->rel_lock);
    free(srv);
    return rc ? rc : KVCD_EINTERNAL;
}

void kvcd_server_destroy(kvcd_server_t *srv)
{
    /* Waits until queued replies are out (bounded by the linger set at close);
     * every zero-copy frame's free callback has run when it returns. */
    zmq_ctx_term(srv->zctx);
    release_queued(srv);
    kvcd_segtab_destroy(srv->segs);
    kvcd_storage_destroy(srv->storage);
    kvcd_l1_destroy(srv->l1);
    pthread_mutex_destroy(&srv->rel_lock);
    free(srv);
}
