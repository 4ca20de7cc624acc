/*
 * l2.h - the runner for configured L2 instances (the registry of adapter types
 * is adapters/registry.h, included here for its users).
 *
 * An instance (kvcd_l2_t) is one configured --l2-adapter. kvcd_l2_submit runs
 * a batch on it and calls back exactly once on the loop thread:
 *  - blocking adapters: the batch is split into up to `workers` slices that
 *    run on the instance's own executor (daemon/executor.h: its threads and a
 *    bounded queue, spec fields "workers" and "max_queue"); a full queue fails
 *    the slice at once with KVCD_EQUEUEFULL, so a slow tier never holds up
 *    anything but its own calls;
 *  - async adapters: the method is called on the loop thread and completes
 *    through env->svc->batch_done (kvcd_l2_batch_done).
 * Each submit has a deadline. When it passes, the callback fires at once with
 * every unfinished item's result set to KVCD_ETIMEDOUT; the late completion,
 * when it comes, is discarded, and only then is the batch's memory released
 * (the caller's items and buffers must stay valid until kvcd_l2_batch_t's
 * `release` callback, see below). Consecutive timeouts and failures feed the
 * instance's health, reported by kvcd_l2_status.
 *
 * Loop thread only.
 */
#ifndef KVCD_L2_H
#define KVCD_L2_H

#include <uv.h>

#include "adapters/adapter.h"
#include "adapters/registry.h"

typedef struct kvcd_l2_s kvcd_l2_t;
typedef struct kvcd_l2_req_s kvcd_l2_req_t;

/* Called once when the batch completed or timed out (items hold results). */
typedef void (*kvcd_l2_cb)(kvcd_l2_req_t *req);
/* Called once when nothing touches the items or their buffers any more (at or
 * after kvcd_l2_cb; later when a timed-out call was still running). Results
 * are final at kvcd_l2_cb: a late completion never changes them. A request may
 * be submitted again (or freed) once released, or after kvcd_l2_cb when it has
 * no release callback. */
typedef void (*kvcd_l2_release_cb)(kvcd_l2_req_t *req);

struct kvcd_l2_req_s {
    kvcd_l2_op_t op;
    kvcd_l2_item_t *items;      /* caller's; results preset by submit */
    size_t n;
    uint64_t timeout_ms;        /* 0: the instance's default */
    kvcd_l2_cb cb;
    kvcd_l2_release_cb release; /* may be NULL */
    void *data;
    int timed_out;              /* set when cb was called by the deadline */
    /* ---- private to l2.c ---- */
    kvcd_l2_t *l2;
    kvcd_l2_batch_t *slices;
    size_t nslices, pending;
    uv_timer_t *timer;
    int cb_done;
    kvcd_l2_req_t *next_failed;
};

/* Slices a blocking adapter's executor queues before submits fail fast with
 * KVCD_EQUEUEFULL (spec field "max_queue"). */
#define KVCD_L2_DEFAULT_MAX_QUEUE 256

/* ---- instances ---- */

/* Create instance number `index` (1-based, for messages) from spec. Errors name
 * the index, the type and the field: "--l2-adapter #2 (fs): base_path: ...". */
int kvcd_l2_create(uv_loop_t *loop, const json_t *spec, int index,
                   const kvcd_adapter_env_t *env, uint64_t default_timeout_ms,
                   kvcd_l2_t **out, char *err, size_t errlen);

/* An async adapter's batch is complete (the services table's batch_done).
 * Loop thread; ignored for a blocking adapter's batch. */
void kvcd_l2_batch_done(kvcd_l2_batch_t *b);

/* Run req on l2 (see above). Always calls req->cb exactly once, later. */
void kvcd_l2_submit(kvcd_l2_t *l2, kvcd_l2_req_t *req);

/* Fire-and-forget: tell the adapter these keys were used, oldest first (its
 * optional `touch` method; recency only). keys are borrowed for the call and
 * copied. Never calls back. 0 when handed on; KVCD_EUNKNOWNOP when the
 * adapter has no touch; the batch is dropped, and counted in status, with
 * KVCD_EQUEUEFULL (the executor's queue is half full or more: touches never
 * take the slots stores and loads need), KVCD_ESHUTDOWN (closing) or
 * -ENOMEM. A touch in flight counts in kvcd_l2_inflight and delays a close. */
int kvcd_l2_touch(kvcd_l2_t *l2, const kvcd_key_t *keys, size_t n);
int kvcd_l2_can_touch(const kvcd_l2_t *l2);

/* Calls in flight on this instance (including timed-out ones still running). */
size_t kvcd_l2_inflight(const kvcd_l2_t *l2);

const kvcd_adapter_t *kvcd_l2_adapter(const kvcd_l2_t *l2);
const char *kvcd_l2_name(const kvcd_l2_t *l2);   /* e.g. "#1 (fs)" */
int kvcd_l2_healthy(kvcd_l2_t *l2);

/* A new JSON object: the adapter's own status plus the runner's counters
 * (calls, failures, timeouts, consecutive_failures, healthy, inflight; "touch"
 * {batches, keys, dropped_batches, dropped_keys} for adapters with touch). */
json_t *kvcd_l2_status(kvcd_l2_t *l2);

/* Close the adapter and free the instance. Only when kvcd_l2_inflight == 0;
 * if calls are still in flight the close is deferred until the last one has
 * returned (callbacks are still delivered; the loop must keep running) and a
 * warning is logged. Later submits complete with KVCD_ESHUTDOWN. */
void kvcd_l2_destroy(kvcd_l2_t *l2);

/* The shutdown deadline passed: call back every request still waiting as
 * timed out, stop delivering completions and close the instance's loop
 * handles (an async adapter is closed). Calls still inside a blocking
 * adapter's threads keep the instance allocated: it is never freed, and the
 * process exits. Use nothing of l2 afterwards. */
void kvcd_l2_abandon(kvcd_l2_t *l2);

/* Instances abandoned with calls still running (process-wide). */
int kvcd_l2_abandoned(void);

#endif
