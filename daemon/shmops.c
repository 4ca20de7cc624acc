/*
 * shmops.c - the shared-memory data plane: REGISTER_SEGMENT,
 * UNREGISTER_SEGMENT, STORE_SHM and LOAD_SHM (docs/PROTOCOL.md §10).
 *
 * Invariants kept here: every (offset, length) is checked against the
 * segment before any byte moves; a request holds a reference on its segment
 * until it is freed, so the mapping outlives every copy; objects are
 * referenced while copied out of.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/server_int.h"
#include "protocol/kvcd_err.h"

/* Registration completes off the loop (segment.c); the call waits for it. */
static void register_done(void *data, int status, uint64_t id, const char *msg)
{
    call_t *call = data;
    kvcd_wbuf_t w;

    call->busy--;
    if (call->answered)
        return kvcd_call_maybe_free(call);
    if (status != 0)
        return kvcd_call_error(call, status, msg);
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_segment(&w, call->req.id, id);
    kvcd_call_reply(call, &w, NULL, 0, NULL, NULL);
}

void kvcd_op_register_segment(call_t *call)
{
    char msg[256];
    size_t ilen;
    const void *ident = kvcd_conn_ident(call->conn, &ilen);
    kvcd_peer_t peer;
    int rc;

    kvcd_conn_peer(call->conn, &peer);
    call->busy++;
    rc = kvcd_segtab_register(call->srv->segs, &peer, ident, ilen, call->req.seg_pid,
                              call->req.seg_fd, call->req.seg_size, register_done, call, msg,
                              sizeof(msg));
    if (rc != 0) {
        call->busy--;
        kvcd_call_error(call, rc, msg);
    }
}

void kvcd_op_unregister_segment(call_t *call)
{
    char msg[256];
    size_t ilen;
    const void *ident = kvcd_conn_ident(call->conn, &ilen);
    kvcd_peer_t peer;
    kvcd_wbuf_t w;
    int rc;

    kvcd_conn_peer(call->conn, &peer);
    rc = kvcd_segtab_unregister(call->srv->segs, &peer, ident, ilen, call->req.segment, msg,
                                sizeof(msg));
    if (rc != 0)
        return kvcd_call_error(call, rc, msg);
    kvcd_wbuf_init(&w);
    kvcd_proto_reply_begin(&w, call->req.id, KVCD_OP_UNREGISTER_SEGMENT, 0, NULL, 0);
    kvcd_call_reply(call, &w, NULL, 0, NULL, NULL);
}

/* Take a reference on the request's segment and check every (offset, length)
 * against it and against max_frame. 0, or the request was answered. */
static int shm_acquire(call_t *call, const char *lname)
{
    kvcd_server_t *srv = call->srv;
    char msg[256];
    size_t ilen, i;
    const void *ident = kvcd_conn_ident(call->conn, &ilen);
    kvcd_peer_t peer;
    int rc;

    kvcd_conn_peer(call->conn, &peer);
    rc = kvcd_segtab_acquire(srv->segs, &peer, ident, ilen, call->req.segment, &call->seg, msg,
                             sizeof(msg));

    if (rc != 0) {
        kvcd_call_error(call, rc, msg);
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
            kvcd_call_error(call, KVCD_EBADFIELD, msg);
            return -1;
        }
        /* LOAD_SHM's capacities too: no object can be larger than max_frame,
         * and a bound the client can exceed is no bound. */
        if (len > srv->opt->max_frame) {
            snprintf(msg, sizeof(msg), "%s[%zu] is %" PRIu64 " bytes, max_frame is %" PRIu64,
                     lname, i, len, srv->opt->max_frame);
            kvcd_call_error(call, KVCD_ETOOLARGE, msg);
            return -1;
        }
    }
    return 0;
}

void kvcd_op_store_shm(call_t *call)
{
    size_t n = call->req.nkeys;

    if (shm_acquire(call, "lengths") != 0)
        return;
    call->results = calloc(n ? n : 1, sizeof(int));
    call->objs = calloc(n ? n : 1, sizeof(kvcd_obj_t *));
    if (!call->results || !call->objs)
        return kvcd_call_error(call, -ENOMEM, "out of memory");
    /* From here on exactly a STORE whose bytes come from the segment. */
    if (!kvcd_store_reserve(call, 0))
        kvcd_call_park(call, kvcd_store_reserve);
}

static void load_shm_release(call_t *call)
{
    size_t i;

    for (i = 0; i < call->req.nkeys; i++)
        if (call->objs[i]) {
            kvcd_l1_unref(call->srv->l1, call->objs[i]);
            call->objs[i] = NULL;
        }
}

static void load_shm_finish(call_t *call)
{
    kvcd_wbuf_t w;

    load_shm_release(call);
    if (call->answered)
        return kvcd_call_maybe_free(call);
    if (call->copy_failed)
        return kvcd_call_error(call, call->copy_failed, "the copy out of L1 could not run");
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_load_shm(&w, call->req.id, call->results, call->shm_lens,
                               call->req.nkeys);
    kvcd_call_reply(call, &w, NULL, 0, NULL, NULL);
}

/* Serve a LOAD_SHM: like a LOAD (waits for WRITING objects unless `force`),
 * but each hit is copied into the client's segment, on the copy executor when
 * large, with the object referenced until its copy is done. Returns 1 when the
 * call was answered or its copies started. */
static int load_shm_serve(call_t *call, int force)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i, total = 0, ntasks = 0, off;
    char *seg = call->seg->base;
    kvcd_obj_t **objs;
    int wait, rc;

    if (!call->seg->registered) {
        kvcd_call_error(call, KVCD_ESEGMENT, "segment was unregistered before the copy");
        return 1;
    }
    objs = kvcd_find_for_load(call, force, &wait);
    if (!objs) {
        if (wait)
            return 0;
        kvcd_call_error(call, -ENOMEM, "out of memory");
        return 1;
    }
    call->objs = objs;
    call->results = calloc(n ? n : 1, sizeof(int));
    call->shm_lens = calloc(n ? n : 1, sizeof(uint64_t));
    if (!call->results || !call->shm_lens) {
        for (i = 0; i < n; i++)
            objs[i] = NULL; /* no reference taken yet */
        kvcd_call_error(call, -ENOMEM, "out of memory");
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
        ntasks += (obj->size + KVCD_COPY_SLICE - 1) / KVCD_COPY_SLICE;
    }
    srv->c.loads++;
    if (total <= KVCD_INLINE_COPY) {
        for (i = 0; i < n; i++)
            if (objs[i])
                memcpy(seg + call->req.offsets[i], objs[i]->data, objs[i]->size);
        load_shm_finish(call);
        return 1;
    }
    call->tasks = calloc(ntasks, sizeof(copy_task_t));
    if (!call->tasks) {
        load_shm_release(call);
        kvcd_call_error(call, -ENOMEM, "out of memory");
        return 1;
    }
    ntasks = 0;
    for (i = 0; i < n; i++) {
        kvcd_obj_t *obj = objs[i];

        if (!obj)
            continue;
        for (off = 0; off < obj->size; off += KVCD_COPY_SLICE) {
            copy_task_t *t = &call->tasks[ntasks++];

            t->dst = seg + call->req.offsets[i] + off;
            t->src = (const char *)obj->data + off;
            t->len = obj->size - off < KVCD_COPY_SLICE ? obj->size - off : KVCD_COPY_SLICE;
        }
    }
    rc = kvcd_call_copy(call, ntasks, load_shm_finish);
    if (rc != 0) {
        load_shm_release(call);
        kvcd_call_error(call, rc, "the copy out of L1 could not be queued");
    }
    return 1;
}

void kvcd_op_load_shm(call_t *call)
{
    if (shm_acquire(call, "capacities") != 0)
        return;
    if (!load_shm_serve(call, 0))
        kvcd_call_park(call, load_shm_serve);
}
