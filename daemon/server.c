/*
 * server.c - the kvcd process core: the components it owns and the one
 * lifecycle they follow.
 *
 * Drain order (DESIGN.md §2.6, §2.7), one state machine:
 *
 *   running   --SIGTERM/SIGINT-->  draining
 *   draining  requests that arrive get ESHUTDOWN; those in flight finish;
 *             --no request in flight-->  flushing
 *   flushing  (with --l2-save-l1-on-stop, L1's objects are written behind once
 *             more, least recently used first) write-behind drains to the L2
 *             adapters; arrivals still get ESHUTDOWN; --nothing written behind
 *             and SHUTDOWN_QUIET_MS without an arrival-->  closing
 *   closing   the socket closes (queued replies get LINGER_MS; a message
 *             still being received then is lost with its connection, which
 *             the quiet window makes rare), storage closes the
 *             adapters once nothing can call them, the copy executor closes
 *             once idle; then no handle is left and uv_run returns.
 *
 * The hard deadline (--shutdown-timeout-ms after the signal) cuts this short
 * in any state before closing: every unanswered request is answered
 * ESHUTDOWN, adapters still busy are abandoned (their callers answered as
 * timed out, late completions never delivered), and closing begins. If
 * closing itself does not end within BACKSTOP_MS the loop is stopped; main
 * then exits without freeing what stuck workers may still touch. So the
 * process always exits within the timeout plus about a second, having
 * answered every request it read.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/l2.h"
#include "daemon/log.h"
#include "daemon/server_int.h"
#include "protocol/kvcd_err.h"

#define SHUTDOWN_QUIET_MS 300 /* close once nothing arrived for this long */
#define STEP_MS 25            /* how often the drain order is re-checked */
#define LINGER_MS 1000        /* queued replies get this long at close */
#define BACKSTOP_MS 1500      /* closing longer than this: stop the loop */

static void begin_closing(kvcd_server_t *srv);

static void storage_changed(void *data)
{
    kvcd_call_retry_parked(data, 0);
}

/* A connection closed: its zero-copy reservations and leases go back. */
static void conn_closed(void *data, kvcd_conn_t *conn)
{
    kvcd_server_t *srv = data;
    size_t ilen;
    const void *ident = kvcd_conn_ident(conn, &ilen);

    kvcd_zc_drop(srv->zc, ident, ilen);
}

static void close_handles(kvcd_server_t *srv)
{
    uv_close((uv_handle_t *)&srv->park_timer, NULL);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->stop_timer, NULL);
    uv_close((uv_handle_t *)&srv->step_timer, NULL);
}

/* Re-evaluate the drain order; called on every state-relevant change and
 * every STEP_MS while stopping. */
void kvcd_server_step(kvcd_server_t *srv)
{
    uint64_t now = uv_now(srv->loop);

    switch (srv->state) {
    case KVCD_STATE_RUNNING:
        return;
    case KVCD_STATE_DRAINING:
        if (srv->inflight > 0)
            return;
        srv->state = KVCD_STATE_FLUSHING;
        if (srv->opt->l2_save_l1_on_stop)
            kvcd_storage_save_l1(srv->storage);
        KVCD_LOG(KVCD_LOG_INFO, "server", "no request in flight; flushing %zu L2 operations",
                 kvcd_storage_inflight(srv->storage));
        /* fall through */
    case KVCD_STATE_FLUSHING:
        if (srv->inflight > 0 || kvcd_storage_inflight(srv->storage) > 0 ||
            now - srv->last_recv_ms < SHUTDOWN_QUIET_MS)
            return;
        begin_closing(srv);
        return;
    case KVCD_STATE_CLOSING:
        if (srv->copy_exec && kvcd_exec_busy(srv->copy_exec) == 0) {
            kvcd_exec_close(srv->copy_exec);
            srv->copy_exec = NULL;
        }
        if (!srv->copy_exec && !srv->handles_closed) {
            srv->handles_closed = 1;
            close_handles(srv);
            uv_close((uv_handle_t *)&srv->backstop_timer, NULL);
        }
        return;
    }
}

static void step_timer_cb(uv_timer_t *h)
{
    kvcd_server_t *srv = h->data;

    kvcd_server_step(srv);
}

static void backstop_cb(uv_timer_t *h)
{
    kvcd_server_t *srv = h->data;

    KVCD_LOG(KVCD_LOG_WARNING, "server", "closing did not finish in %d ms; stopping the loop",
             BACKSTOP_MS);
    srv->loop_stopped = 1;
    uv_stop(srv->loop);
}

static void begin_closing(kvcd_server_t *srv)
{
    if (srv->state == KVCD_STATE_CLOSING)
        return;
    srv->state = KVCD_STATE_CLOSING;
    kvcd_call_retry_parked(srv, 1);
    kvcd_zc_stop(srv->zc);
    kvcd_storage_stop(srv->storage);
    kvcd_segtab_stop(srv->segs);
    kvcd_bridge_close(srv->bridge, LINGER_MS);
    uv_timer_start(&srv->backstop_timer, backstop_cb, BACKSTOP_MS, 0);
    uv_unref((uv_handle_t *)&srv->backstop_timer);
    KVCD_LOG(KVCD_LOG_INFO, "server", "socket closed");
    kvcd_server_step(srv);
}

static void stop_timer_cb(uv_timer_t *h)
{
    kvcd_server_t *srv = h->data;

    if (srv->state == KVCD_STATE_CLOSING)
        return;
    srv->forced = 1;
    KVCD_LOG(KVCD_LOG_WARNING, "server",
             "shutdown timeout: answering %" PRIu64 " requests in flight with ESHUTDOWN; "
             "abandoning %zu L2 operations",
             srv->inflight, kvcd_storage_inflight(srv->storage));
    kvcd_call_force_all(srv);
    kvcd_storage_abandon(srv->storage);
    begin_closing(srv);
}

static void signal_cb(uv_signal_t *h, int signum)
{
    kvcd_server_t *srv = h->data;

    KVCD_LOG(KVCD_LOG_INFO, "server", "%s received, shutting down",
             signum == SIGTERM ? "SIGTERM" : "SIGINT");
    kvcd_server_stop(srv);
}

void kvcd_server_stop(kvcd_server_t *srv)
{
    if (srv->state != KVCD_STATE_RUNNING)
        return;
    srv->state = KVCD_STATE_DRAINING;
    if (srv->inflight)
        KVCD_LOG(KVCD_LOG_INFO, "server", "waiting for %" PRIu64 " requests in flight",
                 srv->inflight);
    uv_timer_start(&srv->stop_timer, stop_timer_cb, (uint64_t)srv->opt->shutdown_timeout_ms,
                   0);
    uv_timer_start(&srv->step_timer, step_timer_cb, STEP_MS, STEP_MS);
    kvcd_server_step(srv);
}

int kvcd_server_create(uv_loop_t *loop, const kvcd_options_t *opt, kvcd_server_t **out,
                       char *err, size_t errlen)
{
    kvcd_server_t *srv = calloc(1, sizeof(*srv));
    kvcd_l1_config_t l1cfg;
    int rc;

    if (!srv) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    srv->loop = loop;
    srv->opt = opt;
    kvcd_opstats_init(&srv->ops);

    memset(&l1cfg, 0, sizeof(l1cfg));
    l1cfg.capacity = (size_t)(opt->l1_size_gb * (double)(1ull << 30));
    l1cfg.policy = opt->eviction_policy == KVCD_OPT_EVICT_NOOP ? KVCD_EVICT_NOOP : KVCD_EVICT_LRU;
    l1cfg.high_watermark = opt->high_watermark;
    l1cfg.low_watermark = opt->low_watermark;
    l1cfg.hugepages = opt->hugepages;
    l1cfg.lock_memory = opt->mlock;
    rc = kvcd_l1_create(&l1cfg, &srv->l1);
    if (rc != 0) {
        snprintf(err, errlen, "--l1-size-gb: cannot reserve %.3f GiB: %s", opt->l1_size_gb,
                 kvcd_strerror(rc));
        goto fail;
    }
    /* Copies only: nothing that can block in the kernel runs here, so a copy
     * never waits behind L2 I/O. Its queue is bounded by admission: every
     * task moves at most KVCD_COPY_SLICE bytes of an admitted request. */
    rc = kvcd_exec_create(loop, "copy", opt->max_workers, 0, &srv->copy_exec);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the copy threads: %s", kvcd_strerror(rc));
        goto fail;
    }
    rc = kvcd_storage_create(loop, opt, srv->l1, &srv->storage, err, errlen);
    if (rc != 0)
        goto fail;
    kvcd_storage_on_change(srv->storage, storage_changed, srv);
    rc = kvcd_segtab_create(loop, opt, &srv->segs);
    if (rc != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    rc = kvcd_zc_create(loop, srv->l1, srv->storage, (uint64_t)opt->segment_lease_ms, &srv->zc);
    if (rc != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    kvcd_zc_on_change(srv->zc, storage_changed, srv);
    rc = kvcd_bridge_create(loop, opt, opt->max_keys + 1, kvcd_call_arrived, srv, &srv->bridge,
                            err, errlen);
    if (rc != 0)
        goto fail;
    if (!opt->store_copy)
        kvcd_bridge_set_placer(srv->bridge, &(kvcd_bridge_placer_t){kvcd_store_place,
                                                                     kvcd_store_unplace,
                                                                     kvcd_store_forget, srv});
    kvcd_bridge_on_close(srv->bridge, conn_closed, srv);

    uv_timer_init(loop, &srv->park_timer);
    uv_signal_init(loop, &srv->sigterm);
    uv_signal_init(loop, &srv->sigint);
    uv_timer_init(loop, &srv->stop_timer);
    uv_timer_init(loop, &srv->step_timer);
    uv_timer_init(loop, &srv->backstop_timer);
    srv->park_timer.data = srv->sigterm.data = srv->sigint.data = srv;
    srv->stop_timer.data = srv->step_timer.data = srv->backstop_timer.data = srv;
    uv_signal_start(&srv->sigterm, signal_cb, SIGTERM);
    uv_signal_start(&srv->sigint, signal_cb, SIGINT);
    srv->start_ms = uv_now(loop);

    KVCD_LOG(KVCD_LOG_INFO, "server",
             "kvcd %s listening on %s (L1 %.3f GiB %s, chunk size %" PRIu64 ", %d workers)",
             KVCD_VERSION, opt->endpoint, opt->l1_size_gb,
             kvcd_options_evict_name(opt->eviction_policy), opt->chunk_size,
             opt->max_workers);
    *out = srv;
    return 0;

fail:
    if (srv->zc) {
        kvcd_zc_stop(srv->zc);
        uv_run(loop, UV_RUN_NOWAIT);
        kvcd_zc_destroy(srv->zc);
    }
    if (srv->segs) {
        kvcd_segtab_stop(srv->segs);
        uv_run(loop, UV_RUN_NOWAIT);
        kvcd_segtab_destroy(srv->segs);
    }
    if (srv->storage) {
        kvcd_storage_stop(srv->storage);
        uv_run(loop, UV_RUN_DEFAULT); /* let the close callbacks run */
        kvcd_storage_destroy(srv->storage);
    }
    if (srv->copy_exec) {
        kvcd_exec_close(srv->copy_exec);
        uv_run(loop, UV_RUN_DEFAULT);
    }
    if (srv->l1)
        kvcd_l1_destroy(srv->l1);
    kvcd_opstats_close(&srv->ops);
    free(srv);
    return rc ? rc : KVCD_EINTERNAL;
}

int kvcd_server_destroy(kvcd_server_t *srv)
{
    int clean = !srv->loop_stopped && kvcd_exec_abandoned() == 0 && kvcd_l2_abandoned() == 0;

    if (!clean) {
        /* Workers may still be inside an adapter or a copy and touch L1, the
         * adapters and their tasks: free nothing. */
        KVCD_LOG(KVCD_LOG_WARNING, "server",
                 "exiting with work still running in worker threads (not freed)");
        kvcd_l1_unlink_shm(srv->l1); /* the name at least goes */
        return -1;
    }
    /* Waits until queued replies are out (bounded by the linger set at close);
     * every zero-copy frame's release has run when it returns. */
    kvcd_bridge_destroy(srv->bridge);
    kvcd_zc_destroy(srv->zc);
    kvcd_segtab_destroy(srv->segs);
    kvcd_storage_destroy(srv->storage);
    kvcd_l1_destroy(srv->l1);
    kvcd_opstats_close(&srv->ops);
    free(srv);
    return 0;
}
