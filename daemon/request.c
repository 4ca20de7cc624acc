/*
 * request.c - one request's life: arrival, admission, dispatch, parking, the
 * single reply, and the forced answers of the shutdown deadline.
 *
 * Invariants kept here:
 *  - every message that reached the daemon gets exactly one reply, a result or
 *    a typed error (kvcd_call_reply is the only way out, and it ignores a
 *    second answer);
 *  - a call is freed only when it has been answered and nothing refers to it
 *    (`busy`: storage operations and copies still running for it), so a
 *    completion that comes after a forced answer finds the call and only
 *    cleans up;
 *  - admission is the bridge's (bridge.c): a request's frames count against
 *    the budget from the first byte received until the call is freed here;
 *  - parked calls (waiting for L1 to change) are kept in arrival order on one
 *    list and each is retried until it answers or its deadline forces it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/server_int.h"
#include "protocol/kvcd_err.h"

static void call_free(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t i;

    kvcd_frame_release(&call->hdr);
    for (i = 0; i < call->nframes; i++)
        kvcd_frame_release(&call->frames[i]);
    free(call->frames);
    if (call->decoded)
        kvcd_proto_req_free(&call->req);
    free(call->results);
    free(call->objs);
    free(call->tasks);
    if (call->seg)
        kvcd_seg_unref(call->seg);
    free(call->shm_lens);
    if (call->conn)
        kvcd_conn_unref(call->conn);
    free(call);
    kvcd_server_step(srv);
}

void kvcd_call_maybe_free(call_t *call)
{
    if (call->answered && call->busy == 0)
        call_free(call);
}

static void unpark(call_t *call);

void kvcd_call_reply(call_t *call, kvcd_wbuf_t *w, const kvcd_bulk_t *bulk, size_t nbulk,
                     void (*sent)(void *), void *arg)
{
    kvcd_server_t *srv = call->srv;
    size_t len;
    char *buf = kvcd_wbuf_release(w, &len);
    int rc;

    if (call->answered) {
        /* Answered already (the shutdown deadline): this result goes nowhere. */
        free(buf);
        if (sent)
            sent(arg);
        return;
    }
    call->answered = 1;
    if (call->parked)
        unpark(call);
    if (call->prev)
        call->prev->next = call->next;
    else
        srv->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    call->prev = call->next = NULL;
    srv->inflight--;
    kvcd_opstats_observe(&srv->ops, call->decoded ? call->req.op : 0, call->err,
                         uv_hrtime() - call->t_start_ns);
    rc = kvcd_bridge_send(srv->bridge, call->conn, buf, len, bulk, nbulk, sent, arg);
    if (rc != 0) {
        srv->c.dropped_replies++;
        KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "server", 10000,
                             "reply to request %" PRIu64 " dropped: %s", call->req.id,
                             kvcd_strerror(rc));
    }
    kvcd_call_maybe_free(call);
}

void kvcd_call_error(call_t *call, int err, const char *msg)
{
    kvcd_wbuf_t w;

    if (call->answered)
        return;
    call->srv->c.errors++;
    call->err = err;
    KVCD_LOG(KVCD_LOG_DEBUG, "server", "request %" PRIu64 " op %" PRIu32 ": %s: %s",
             call->req.id, call->req.op, kvcd_errname(err), msg ? msg : "");
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_error(&w, call->req.id, call->req.op, err, msg);
    kvcd_call_reply(call, &w, NULL, 0, NULL, NULL);
}

void kvcd_call_results(call_t *call)
{
    kvcd_wbuf_t w;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_results(&w, call->req.id, call->req.op, call->results, call->req.nkeys);
    kvcd_call_reply(call, &w, NULL, 0, NULL, NULL);
}

/* ---- copies ---- */

static void copy_work(kvcd_task_t *t)
{
    copy_task_t *ct = t->data;

    memcpy(ct->dst, ct->src, ct->len);
}

static void copy_done(kvcd_task_t *t, int status)
{
    copy_task_t *ct = t->data;
    call_t *call = ct->call;

    if (status != 0)
        call->copy_failed = status;
    if (--call->copies_pending > 0)
        return;
    call->busy--;
    call->copy_after(call);
}

int kvcd_call_copy(call_t *call, size_t ntasks, void (*after_fn)(call_t *))
{
    size_t i;
    int rc;

    call->copies_pending = ntasks;
    call->copy_after = after_fn;
    call->copy_failed = 0;
    call->busy++;
    for (i = 0; i < ntasks; i++) {
        copy_task_t *ct = &call->tasks[i];

        ct->call = call;
        ct->task.work = copy_work;
        ct->task.done = copy_done;
        ct->task.data = ct;
        rc = kvcd_exec_submit(call->srv->copy_exec, &ct->task);
        if (rc != 0) {
            if (i == 0) {
                call->copies_pending = 0;
                call->busy--;
                return rc;
            }
            /* Some are queued: the rest count as failed copies. */
            call->copy_failed = rc;
            call->copies_pending -= ntasks - i;
            return 0;
        }
    }
    return 0;
}

/* ---- parking ---- */

static void unpark(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    call_t **pp = &srv->parked, *prev = NULL;

    while (*pp && *pp != call) {
        prev = *pp;
        pp = &(*pp)->park_next;
    }
    if (*pp) {
        *pp = call->park_next;
        if (srv->parked_tail == call)
            srv->parked_tail = prev;
    }
    call->park_next = NULL;
    call->parked = 0;
}

static void park_timer_cb(uv_timer_t *h)
{
    kvcd_call_retry_parked(h->data, 0);
}

/* Wait for L1 to change: fn(call, force) is retried on every change and once
 * more, forced, when --l2-timeout-ms has passed. First come, first served. */
void kvcd_call_park(call_t *call, int (*fn)(call_t *, int))
{
    kvcd_server_t *srv = call->srv;

    call->park_fn = fn;
    call->park_deadline = uv_now(srv->loop) + (uint64_t)srv->opt->l2_timeout_ms;
    call->park_next = NULL;
    call->parked = 1;
    if (srv->parked_tail)
        srv->parked_tail->park_next = call;
    else
        srv->parked = call;
    srv->parked_tail = call;
    if (!uv_is_active((uv_handle_t *)&srv->park_timer) &&
        !uv_is_closing((uv_handle_t *)&srv->park_timer))
        uv_timer_start(&srv->park_timer, park_timer_cb, 20, 20);
}

/* Retry parked calls (L1 changed, or time passed). The list is taken whole and
 * walked in order; a call still waiting goes back in front of any call parked
 * meanwhile, so order is kept and no call is ever lost. Re-entrant calls (a
 * retried call changed L1) only ask for one more pass. */
void kvcd_call_retry_parked(kvcd_server_t *srv, int force_all)
{
    call_t *list, *call, *keep, *keep_tail;
    uint64_t now;

    if (srv->retrying) {
        srv->retry_again = 1;
        return;
    }
    srv->retrying = 1;
    do {
        srv->retry_again = 0;
        now = uv_now(srv->loop);
        list = srv->parked;
        srv->parked = srv->parked_tail = NULL;
        keep = keep_tail = NULL;
        while ((call = list)) {
            list = call->park_next;
            call->park_next = NULL;
            call->parked = 0;
            if (call->park_fn(call, force_all || now >= call->park_deadline))
                continue;
            call->parked = 1;
            if (keep_tail)
                keep_tail->park_next = call;
            else
                keep = call;
            keep_tail = call;
        }
        if (keep) {
            keep_tail->park_next = srv->parked;
            if (!srv->parked)
                srv->parked_tail = keep_tail;
            srv->parked = keep;
        }
    } while (srv->retry_again);
    srv->retrying = 0;
    if (!srv->parked && !uv_is_closing((uv_handle_t *)&srv->park_timer))
        uv_timer_stop(&srv->park_timer);
}

/* The shutdown deadline: every unanswered call gets ESHUTDOWN now. Work still
 * running for them (copies, storage operations) finishes later and only
 * cleans up. */
void kvcd_call_force_all(kvcd_server_t *srv)
{
    call_t *call;

    while ((call = srv->calls)) {
        srv->c.forced_answers++;
        if (call->parked) {
            unpark(call);
            kvcd_call_cleanup_store(call);
        }
        kvcd_call_error(call, KVCD_ESHUTDOWN, "shutdown deadline passed before the request "
                        "completed");
    }
}

/* ---- arrival and dispatch ---- */

static void dispatch(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t want, ilen;
    const void *ident = kvcd_conn_ident(call->conn, &ilen);
    char msg[256];
    int rc;

    kvcd_segtab_touch(srv->segs, ident, ilen);
    kvcd_zc_touch(srv->zc, ident, ilen);
    rc = kvcd_proto_decode_req(call->hdr.data, call->hdr.len, srv->opt->max_keys, &call->req,
                               msg, sizeof(msg));
    if (rc != 0)
        return kvcd_call_error(call, rc, msg);
    call->decoded = 1;
    if (srv->state != KVCD_STATE_RUNNING)
        return kvcd_call_error(call, KVCD_ESHUTDOWN, "server is shutting down");

    if (call->dropped)
        return kvcd_call_error(call, KVCD_ETOOLARGE, call->dropped);
    want = call->req.op == KVCD_OP_STORE ? call->req.nkeys : 0;
    if (call->nframes != want) {
        snprintf(msg, sizeof(msg), "%s expects %zu bulk frames, got %zu",
                 kvcd_op_name(call->req.op), want, call->nframes);
        return kvcd_call_error(call, KVCD_EFRAMES, msg);
    }

    switch (call->req.op) {
    case KVCD_OP_PING:
        return kvcd_op_ping(call);
    case KVCD_OP_STORE:
        return kvcd_op_store(call);
    case KVCD_OP_LOOKUP:
        return kvcd_op_lookup(call);
    case KVCD_OP_LOAD:
        return kvcd_op_load(call);
    case KVCD_OP_REMOVE:
        return kvcd_op_remove(call);
    case KVCD_OP_CLEAR:
        return kvcd_op_clear(call);
    case KVCD_OP_STATUS:
        return kvcd_op_status(call);
    case KVCD_OP_REGISTER_SEGMENT:
        return kvcd_op_register_segment(call);
    case KVCD_OP_UNREGISTER_SEGMENT:
        return kvcd_op_unregister_segment(call);
    case KVCD_OP_STORE_SHM:
        return kvcd_op_store_shm(call);
    case KVCD_OP_LOAD_SHM:
        return kvcd_op_load_shm(call);
    case KVCD_OP_RESERVE:
        return kvcd_op_reserve(call);
    case KVCD_OP_COMMIT:
        return kvcd_op_commit(call);
    case KVCD_OP_ABORT:
        return kvcd_op_abort(call);
    case KVCD_OP_MAP:
        return kvcd_op_map(call);
    case KVCD_OP_RELEASE:
        return kvcd_op_release(call);
    case KVCD_OP_LOOKUP_MAP:
        return kvcd_op_lookup_map(call);
    default:
        snprintf(msg, sizeof(msg), "operation %s is not supported by this server",
                 kvcd_op_name(call->req.op));
        return kvcd_call_error(call, KVCD_EUNKNOWNOP, msg);
    }
}

/* The bridge's message callback: frames[0] is the header. */
void kvcd_call_arrived(void *data, kvcd_conn_t *conn, kvcd_frame_t *frames, size_t n,
                       const char *dropped)
{
    kvcd_server_t *srv = data;
    call_t *call = calloc(1, sizeof(*call));
    size_t i;

    srv->last_recv_ms = uv_now(srv->loop);
    if (!call) {
        /* Nothing to answer with: the peer's timeout tells it. */
        KVCD_LOG_RATELIMITED(KVCD_LOG_ERROR, "server", 5000,
                             "out of memory for a request; dropped");
        srv->c.dropped_replies++;
        for (i = 0; i < n; i++)
            kvcd_frame_release(&frames[i]);
        free(frames);
        kvcd_conn_unref(conn);
        return;
    }
    call->srv = srv;
    call->conn = conn;
    call->hdr = frames[0];
    call->dropped = dropped;
    call->t_start_ns = uv_hrtime();
    if (n > 1) {
        /* The bulk frames, without the header, in the same array. */
        memmove(frames, frames + 1, (n - 1) * sizeof(*frames));
        call->frames = frames;
        call->nframes = n - 1;
    } else {
        free(frames);
    }
    srv->inflight++;
    srv->c.requests++;
    call->next = srv->calls;
    if (call->next)
        call->next->prev = call;
    srv->calls = call;
    dispatch(call);
}
