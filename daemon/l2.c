/*
 * l2.c - the runner for configured L2 instances (the registry that finds the
 * adapters is adapters/registry.c).
 *
 * Runner. Each submitted request gets a `run_t`, owned by this file: the
 * deadline timer, one slice per batch handed to the adapter, and a private copy
 * of the request's items. Adapters (and workers that outlive the deadline)
 * write results only into that copy; results are copied to the caller's items
 * on the loop thread while the request is still being waited for. So once the
 * callback has run nothing writes into the caller's items any more; only the
 * keys and buffers stay in use, until `release`.
 *
 * Lifetimes (all on the loop thread):
 *  - a run counts in its instance's `inflight` from submit until its last slice
 *    has come back, which for a timed-out run is after the callback;
 *  - a run is freed when its timer has been closed and every slice is back;
 *  - after calling the caller's cb or release, the request is not touched again,
 *    and the instance is touched only if it was already being destroyed (its
 *    memory is kept until inflight drops to 0), so a callback may destroy the
 *    instance or free the request.
 *
 * Touches (kvcd_l2_touch) are not runs: fire-and-forget batches of keys for the
 * adapter's optional `touch` method, with no caller, deadline or result. Each
 * is one allocation (task, batch, items, key copies) owned here until its
 * completion; it counts in `inflight` (so close waits for it) and in
 * `touching`. It is dropped, counted, when the executor's queue is half full
 * or more (a touch never takes the slots stores and loads need) or the
 * instance is closing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/executor.h"
#include "daemon/l2.h"
#include "daemon/metrics.h"
#include "daemon/log.h"

#define DEFAULT_TIMEOUT_MS 10000 /* when neither the request nor the instance sets one */
#define UNHEALTHY_AFTER 3        /* consecutive failed calls of one operation */
#define HEALTH_WINDOW_MS 10000   /* a streak without a new failure this long ends */
#define LOG_INTERVAL_MS 5000

#define bad(err, errlen, ...) kvcd_errf((err), (errlen), KVCD_ECONFIG, __VA_ARGS__)

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))


/* ---- runner ------------------------------------------------------------------ */

typedef struct run_s run_t;

typedef struct {
    kvcd_l2_batch_t b; /* first, so an adapter's batch pointer is the slice */
    kvcd_task_t task;
    run_t *run;
    size_t off; /* index of b.items[0] in the request's items */
    int done;
} slice_t;

struct run_s {
    uv_timer_t timer;
    run_t *prev, *next;    /* the instance's runs still waiting for their cb */
    kvcd_l2_t *l2;
    kvcd_l2_req_t *req; /* NULL once the request has been released */
    kvcd_l2_release_cb release;
    slice_t *slices;       /* in the same allocation */
    kvcd_l2_item_t *items; /* private copies, in the same allocation */
    size_t nslices, pending;
    int submitting;   /* inside an async adapter's method call */
    int cb_called;
    int timer_closed;
    uint64_t t0;      /* uv_hrtime() at submit, for the latency histogram */
};

struct kvcd_l2_s {
    uv_loop_t *loop;
    const kvcd_adapter_t *a;
    void *self;
    kvcd_adapter_env_t env;
    char name[96];
    uint64_t timeout_ms;
    size_t inflight;
    int destroying; /* destroy was called with calls in flight */
    int bg_running;
    kvcd_task_t bg;
    kvcd_exec_t *exec;    /* blocking adapters: this instance's own threads */
    kvcd_exec_t *bg_exec; /* its background task's thread */
    int workers;
    size_t max_queue;
    kvcd_l2_req_t *failed; /* submits that could not start (out of memory) */
    run_t *waiting;        /* runs whose cb has not been called */
    int abandoned;
    int abandoning;        /* inside kvcd_l2_abandon: nothing finalizes */
    uv_timer_t fail_timer;
    size_t touching;       /* touch batches in flight (part of inflight) */
    uint64_t touch_batches, touch_keys, touch_dropped, touch_dropped_keys;

    int healthy;
    uint64_t calls[4], items[4], bytes[4];
    kvcd_hist_t latency[4]; /* submit to results, per operation */
    uint64_t failures, timeouts, late, consecutive, rejected;
    uint64_t streak[4];  /* consecutive failed calls, per operation */
    uint64_t last_fail_ms[4];
    json_t *item_errors; /* error name -> count of item results */
};

static const char *const op_names[] = {"store", "lookup", "load", "remove"};

typedef void (*op_fn)(void *self, kvcd_l2_batch_t *b);

static op_fn method(const kvcd_adapter_t *a, kvcd_l2_op_t op)
{
    switch (op) {
    case KVCD_L2_STORE:
        return a->store;
    case KVCD_L2_LOOKUP:
        return a->lookup;
    case KVCD_L2_LOAD:
        return a->load;
    case KVCD_L2_REMOVE:
        return a->remove;
    }
    return NULL;
}

static void l2_free_cb(uv_handle_t *h)
{
    kvcd_l2_t *l2 = h->data;

    json_decref(l2->item_errors);
    free(l2);
}

/* Nothing can call the adapter any more: close it, then its executors and
 * timer; the instance's memory goes with the timer's close callback. */
static void finalize(kvcd_l2_t *l2)
{
    KVCD_LOG(KVCD_LOG_INFO, "l2", "%s: closed", l2->name);
    if (l2->a->close)
        l2->a->close(l2->self);
    free(l2->self);
    l2->self = NULL;
    kvcd_exec_close(l2->exec);
    kvcd_exec_close(l2->bg_exec);
    l2->exec = l2->bg_exec = NULL;
    uv_close((uv_handle_t *)&l2->fail_timer, l2_free_cb);
}

static void count_item_error(kvcd_l2_t *l2, int result)
{
    const char *nm = kvcd_errname(result);
    json_t *v = json_object_get(l2->item_errors, nm);

    json_object_set_new(l2->item_errors, nm, json_integer(v ? json_integer_value(v) + 1 : 1));
}

/* The longest failure streak of an operation that failed within the health
 * window decides: unhealthy at UNHEALTHY_AFTER. A streak ends when that
 * operation works again, or when it has not failed for HEALTH_WINDOW_MS (an
 * operation nobody calls any more cannot keep a recovered tier unhealthy). */
static void update_health(kvcd_l2_t *l2)
{
    uint64_t now = uv_now(l2->loop);
    size_t i;

    l2->consecutive = 0;
    for (i = 0; i < 4; i++)
        if (l2->streak[i] > l2->consecutive && now - l2->last_fail_ms[i] < HEALTH_WINDOW_MS)
            l2->consecutive = l2->streak[i];
    if (l2->healthy && l2->consecutive >= UNHEALTHY_AFTER) {
        l2->healthy = 0;
        KVCD_LOG(KVCD_LOG_WARNING, "l2", "%s: unhealthy after %llu consecutive failed calls",
                 l2->name, (unsigned long long)l2->consecutive);
    } else if (!l2->healthy && l2->consecutive < UNHEALTHY_AFTER) {
        KVCD_LOG(KVCD_LOG_INFO, "l2", "%s: healthy again", l2->name);
        l2->healthy = 1;
    }
}

/* Health and counters for a call whose results are final (loop thread). */
static void account(kvcd_l2_t *l2, kvcd_l2_req_t *req, int timed_out, uint64_t t0)
{
    int failed = timed_out, first = 0;
    size_t i, nbad = 0;

    l2->calls[req->op]++;
    l2->items[req->op] += req->n;
    kvcd_hist_observe(&l2->latency[req->op], uv_hrtime() - t0);
    for (i = 0; i < req->n; i++) {
        int r = req->items[i].result;

        if (r == 0 && req->op == KVCD_L2_STORE)
            l2->bytes[req->op] += req->items[i].len;
        else if (r == 0 && req->op == KVCD_L2_LOAD)
            l2->bytes[req->op] += req->items[i].size;
        if (r == 0 || r == KVCD_ENOTFOUND)
            continue;
        if (!nbad++)
            first = r;
        count_item_error(l2, r);
        failed = 1;
    }
    if (timed_out) {
        l2->timeouts++;
        KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "l2", LOG_INTERVAL_MS,
                             "%s: %s of %zu keys timed out", l2->name, op_names[req->op],
                             req->n);
    } else if (nbad) {
        KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "l2", LOG_INTERVAL_MS,
                             "%s: %s failed for %zu of %zu keys (first: %s)", l2->name,
                             op_names[req->op], nbad, req->n, kvcd_errname(first));
    }
    /* Health is per operation: lookups that succeed say nothing about stores
     * that keep failing (a read-only disk answers lookups and loads). */
    if (failed) {
        l2->failures++;
        l2->streak[req->op]++;
        l2->last_fail_ms[req->op] = uv_now(l2->loop);
    } else {
        l2->streak[req->op] = 0;
    }
    update_health(l2);
}

static void timer_closed_cb(uv_handle_t *h)
{
    run_t *run = h->data;

    run->timer_closed = 1;
    if (run->pending == 0)
        free(run);
}

/* The request is answered: by its last slice, or by the deadline. */
static void finish(run_t *run, int timed_out)
{
    kvcd_l2_t *l2 = run->l2;
    kvcd_l2_req_t *req = run->req;
    kvcd_l2_release_cb release = req->release;
    int was_destroying;
    size_t i, j;

    if (timed_out) {
        for (i = 0; i < run->nslices; i++) {
            slice_t *s = &run->slices[i];

            if (s->done)
                continue;
            for (j = 0; j < s->b.n; j++)
                req->items[s->off + j].result = KVCD_ETIMEDOUT;
        }
        req->timed_out = 1;
    }
    if (run->nslices)
        account(l2, req, timed_out, run->t0);
    if (run->prev)
        run->prev->next = run->next;
    else
        l2->waiting = run->next;
    if (run->next)
        run->next->prev = run->prev;
    run->cb_called = 1;
    req->cb_done = 1;
    req->pending = run->pending;
    run->release = release;
    uv_timer_stop(&run->timer);
    uv_close((uv_handle_t *)&run->timer, timer_closed_cb);

    if (run->pending > 0) {
        /* Workers still hold the keys and buffers: release comes with the
         * last slice (retire). The run and the instance stay alive. */
        req->cb(req);
        return;
    }
    run->req = NULL;
    l2->inflight--;
    was_destroying = l2->destroying;
    req->cb(req);
    if (release)
        release(req);
    if (was_destroying && l2->inflight == 0 && !l2->abandoning)
        finalize(l2);
}

/* The last slice of an already answered (timed-out) request came back. */
static void retire(run_t *run)
{
    kvcd_l2_t *l2 = run->l2;
    kvcd_l2_req_t *req = run->req;
    kvcd_l2_release_cb release = run->release;
    int was_destroying;

    run->req = NULL;
    l2->late++;
    if (run->timer_closed)
        free(run); /* else timer_closed_cb frees it */
    l2->inflight--;
    was_destroying = l2->destroying;
    if (release)
        release(req);
    if (was_destroying && l2->inflight == 0 && !l2->abandoning)
        finalize(l2);
}

static void slice_back(slice_t *s)
{
    run_t *run = s->run;
    size_t i;

    s->done = 1;
    run->pending--;
    if (!run->cb_called) {
        kvcd_l2_item_t *dst = run->req->items + s->off;

        for (i = 0; i < s->b.n; i++) {
            dst[i].result = s->b.items[i].result;
            dst[i].size = s->b.items[i].size;
        }
        run->req->pending = run->pending;
    }
    if (run->pending > 0 || run->submitting)
        return;
    if (!run->cb_called)
        finish(run, 0);
    else
        retire(run);
}

static void timer_cb(uv_timer_t *t)
{
    run_t *run = t->data;

    finish(run, run->pending > 0);
}

/* svc->batch_done. Async adapters (loop thread); a blocking adapter's batch has
 * no core_ (they complete by returning), so a stray call from a worker touches
 * nothing. */
void kvcd_l2_batch_done(kvcd_l2_batch_t *b)
{
    slice_t *s = b ? b->core_ : NULL;

    if (!s)
        return;
    if (s->done) {
        KVCD_LOG(KVCD_LOG_ERROR, "l2", "%s: adapter completed a batch twice (ignored)",
                 s->run->l2->name);
        return;
    }
    slice_back(s);
}

static void work_cb(kvcd_task_t *t)
{
    slice_t *s = t->data;
    kvcd_l2_t *l2 = s->run->l2;
    size_t i;

    /* Queued past its deadline: the caller has its answer already. */
    if (uv_hrtime() / 1000000u > s->b.deadline_ms) {
        for (i = 0; i < s->b.n; i++)
            s->b.items[i].result = KVCD_ETIMEDOUT;
        return;
    }
    method(l2->a, s->b.op)(l2->self, &s->b);
}

static void after_work_cb(kvcd_task_t *t, int status)
{
    slice_t *s = t->data;
    size_t i;

    if (status != 0)
        for (i = 0; i < s->b.n; i++)
            s->b.items[i].result = status;
    slice_back(s);
}

static size_t round_up(size_t n, size_t a)
{
    return (n + a - 1) / a * a;
}

static run_t *run_alloc(size_t nslices, size_t n)
{
    size_t off_s = round_up(sizeof(run_t), _Alignof(slice_t));
    size_t off_i = round_up(off_s + nslices * sizeof(slice_t), _Alignof(kvcd_l2_item_t));
    char *p = calloc(1, off_i + n * sizeof(kvcd_l2_item_t));
    run_t *run = (run_t *)p;

    if (!p)
        return NULL;
    run->slices = (slice_t *)(p + off_s);
    run->items = (kvcd_l2_item_t *)(p + off_i);
    run->nslices = run->pending = nslices;
    return run;
}

/* Requests that could not even start (no memory for their run) complete on the
 * next loop turn with every item failed, like any other call: never inside
 * submit, never silently. */
static void fail_timer_cb(uv_timer_t *t)
{
    kvcd_l2_t *l2 = t->data;
    kvcd_l2_req_t *req;
    kvcd_l2_release_cb release;
    int was_destroying;

    while ((req = l2->failed)) {
        l2->failed = req->next_failed;
        release = req->release;
        req->cb_done = 1;
        req->pending = 0;
        l2->inflight--;
        was_destroying = l2->destroying;
        req->cb(req);
        if (release)
            release(req);
        if (was_destroying && l2->inflight == 0 && !l2->abandoning) {
            finalize(l2);
            return;
        }
    }
}

static void submit_failed(kvcd_l2_t *l2, kvcd_l2_req_t *req, int err)
{
    size_t i;

    KVCD_LOG_RATELIMITED(KVCD_LOG_ERROR, "l2", LOG_INTERVAL_MS,
                         "%s: cannot start a %s of %zu keys: %s", l2->name,
                         (unsigned)req->op <= KVCD_L2_REMOVE ? op_names[req->op] : "call",
                         req->n, kvcd_strerror(err));
    for (i = 0; i < req->n; i++)
        req->items[i].result = err;
    req->slices = NULL;
    req->nslices = 0;
    req->timer = NULL;
    req->next_failed = l2->failed;
    l2->failed = req;
    l2->inflight++;
    uv_timer_start(&l2->fail_timer, fail_timer_cb, 0, 0);
}

void kvcd_l2_submit(kvcd_l2_t *l2, kvcd_l2_req_t *req)
{
    size_t i, k = 0, n = req->n;
    uint64_t timeout = req->timeout_ms ? req->timeout_ms : l2->timeout_ms;
    int blocking = (l2->a->flags & KVCD_ADAPTER_BLOCKING) != 0;
    int bad_op = (unsigned)req->op > KVCD_L2_REMOVE;
    int preset = l2->destroying ? KVCD_ESHUTDOWN : bad_op ? KVCD_EUNKNOWNOP : KVCD_EINTERNAL;
    run_t *run;
    int rc;

    req->l2 = l2;
    req->timed_out = 0;
    req->cb_done = 0;
    for (i = 0; i < n; i++) {
        req->items[i].result = preset;
        if (req->op == KVCD_L2_LOOKUP || req->op == KVCD_L2_LOAD)
            req->items[i].size = 0;
    }
    if (bad_op)
        KVCD_LOG(KVCD_LOG_ERROR, "l2", "%s: submit with unknown operation %d", l2->name,
                 (int)req->op);
    if (n > 0 && !l2->destroying && !bad_op)
        k = blocking ? ((size_t)l2->workers < n ? (size_t)l2->workers : n) : 1;
    run = run_alloc(k, n);
    if (!run)
        return submit_failed(l2, req, -ENOMEM);
    run->l2 = l2;
    run->req = req;
    run->t0 = uv_hrtime();
    req->slices = k ? &run->slices[0].b : NULL;
    req->nslices = k;
    req->pending = k;
    req->timer = &run->timer;
    l2->inflight++;
    uv_timer_init(l2->loop, &run->timer);
    run->timer.data = run;
    run->next = l2->waiting;
    if (run->next)
        run->next->prev = run;
    l2->waiting = run;

    if (k)
        memcpy(run->items, req->items, n * sizeof(*run->items));
    for (i = 0; i < k; i++) {
        slice_t *s = &run->slices[i];
        size_t lo = i * n / k, hi = (i + 1) * n / k;

        s->run = run;
        s->off = lo;
        s->b.op = req->op;
        s->b.items = run->items + lo;
        s->b.n = hi - lo;
        s->b.deadline_ms = uv_now(l2->loop) + timeout;
        s->b.core_ = blocking ? NULL : s;
    }
    if (blocking) {
        /* A full queue is an immediate per-key result: the tier is saturated,
         * and waiting for it would only move the queue into kvcd's memory. */
        run->submitting = 1;
        for (i = 0; i < k; i++) {
            slice_t *s = &run->slices[i];
            size_t j;

            s->task.work = work_cb;
            s->task.done = after_work_cb;
            s->task.data = s;
            rc = kvcd_exec_submit(l2->exec, &s->task);
            if (rc == 0)
                continue;
            if (rc == KVCD_EQUEUEFULL)
                l2->rejected++;
            for (j = 0; j < s->b.n; j++)
                s->b.items[j].result = rc;
            slice_back(s);
        }
        run->submitting = 0;
    } else if (k) {
        run->submitting = 1;
        method(l2->a, req->op)(l2->self, &run->slices[0].b);
        run->submitting = 0;
    }
    /* Nothing to wait for (no keys, shutting down, or an async adapter that
     * completed inside the call): answer on the next loop turn, never inside
     * submit. */
    uv_timer_start(&run->timer, timer_cb, run->pending ? timeout : 0, 0);
}

/* ---- touch ------------------------------------------------------------------ */

typedef struct {
    kvcd_task_t task;
    kvcd_l2_batch_t b;
    kvcd_l2_t *l2;
    kvcd_l2_item_t items[]; /* then the keys' bytes */
} touch_t;

static void touch_work(kvcd_task_t *t)
{
    touch_t *tb = t->data;

    tb->l2->a->touch(tb->l2->self, &tb->b);
}

static void touch_after(kvcd_task_t *t, int status)
{
    touch_t *tb = t->data;
    kvcd_l2_t *l2 = tb->l2;

    if (status != 0) {
        l2->touch_dropped++;
        l2->touch_dropped_keys += tb->b.n;
    }
    free(tb);
    l2->touching--;
    l2->inflight--;
    if (l2->destroying && l2->inflight == 0 && !l2->abandoning)
        finalize(l2);
}

int kvcd_l2_can_touch(const kvcd_l2_t *l2)
{
    return l2->a->touch != NULL;
}

int kvcd_l2_touch(kvcd_l2_t *l2, const kvcd_key_t *keys, size_t n)
{
    size_t i, extra = 0, off;
    touch_t *tb;
    char *kb;
    int rc;

    if (!l2->a->touch)
        return KVCD_EUNKNOWNOP;
    if (n == 0)
        return 0;
    if (l2->destroying) {
        rc = KVCD_ESHUTDOWN;
        goto dropped;
    }
    if (l2->exec) {
        kvcd_exec_stats_t es;

        kvcd_exec_stats(l2->exec, &es);
        if (es.max_queue && es.queued * 2 >= es.max_queue) {
            rc = KVCD_EQUEUEFULL;
            goto dropped;
        }
    }
    for (i = 0; i < n; i++)
        extra += kvcd_key_extra(&keys[i]);
    tb = calloc(1, sizeof(*tb) + n * sizeof(kvcd_l2_item_t) + extra);
    if (!tb) {
        rc = -ENOMEM;
        goto dropped;
    }
    kb = (char *)&tb->items[n];
    for (i = 0, off = 0; i < n; i++) {
        kvcd_key_copy(&tb->items[i].key, &keys[i], kb + off);
        off += kvcd_key_extra(&keys[i]);
    }
    tb->l2 = l2;
    tb->b.op = KVCD_L2_TOUCH;
    tb->b.items = tb->items;
    tb->b.n = n;
    l2->touch_batches++;
    l2->touch_keys += n;
    if (!l2->exec) {
        /* async: on the loop thread, completes by returning */
        l2->a->touch(l2->self, &tb->b);
        free(tb);
        return 0;
    }
    tb->task.work = touch_work;
    tb->task.done = touch_after;
    tb->task.data = tb;
    rc = kvcd_exec_submit(l2->exec, &tb->task);
    if (rc != 0) {
        l2->touch_batches--;
        l2->touch_keys -= n;
        free(tb);
        goto dropped;
    }
    l2->touching++;
    l2->inflight++;
    return 0;

dropped:
    l2->touch_dropped++;
    l2->touch_dropped_keys += n;
    return rc;
}

/* ---- instances ------------------------------------------------------------- */

static void bg_work(kvcd_task_t *t)
{
    kvcd_l2_t *l2 = t->data;

    l2->a->background(l2->self);
}

static void bg_after(kvcd_task_t *t, int status)
{
    kvcd_l2_t *l2 = t->data;

    l2->bg_running = 0;
    KVCD_LOG(KVCD_LOG_DEBUG, "l2", "%s: background task %s", l2->name,
             status == KVCD_ECANCELED ? "canceled" : "finished");
    l2->inflight--;
    if (l2->destroying && l2->inflight == 0 && !l2->abandoning)
        finalize(l2);
}

/* The executor's size: "workers" (or the daemon's default), capped by what the
 * adapter declares it can take at once. */
static int size_executor(kvcd_l2_t *l2, const kvcd_runner_fields_t *rf, int index,
                         int dflt_workers, char *err, size_t errlen)
{
    uint32_t cap = l2->a->max_concurrency;

    l2->workers = rf->workers ? (int)rf->workers : dflt_workers > 0 ? dflt_workers : 1;
    l2->max_queue = rf->max_queue ? (size_t)rf->max_queue : KVCD_L2_DEFAULT_MAX_QUEUE;
    if (cap && (uint32_t)l2->workers > cap) {
        if (rf->workers)
            return bad(err, errlen, "--l2-adapter #%d (%s): workers: at most %u (the adapter "
                       "takes at most %u calls at once)", index, l2->a->name, cap, cap);
        l2->workers = (int)cap;
    }
    return 0;
}

int kvcd_l2_create(uv_loop_t *loop, const json_t *spec, int index, const kvcd_adapter_env_t *env,
                   uint64_t default_timeout_ms, kvcd_l2_t **out, char *err, size_t errlen)
{
    char aerr[512], known[512], ename[128];
    kvcd_runner_fields_t rf;
    const kvcd_adapter_t *a;
    const char *type;
    kvcd_l2_t *l2;
    int rc;

    *out = NULL;
    if (!json_is_object(spec))
        return bad(err, errlen, "--l2-adapter #%d: expected a JSON object", index);
    type = json_string_value(json_object_get(spec, "type"));
    if (!type)
        return bad(err, errlen, "--l2-adapter #%d: type: expected a string", index);
    a = kvcd_l2_find_type(type);
    if (!a) {
        kvcd_l2_type_list(known, sizeof(known));
        return bad(err, errlen, "--l2-adapter #%d: unknown type '%s' (known: %s)", index, type,
                   known);
    }
    l2 = calloc(1, sizeof(*l2));
    if (!l2)
        return bad(err, errlen, "--l2-adapter #%d (%s): out of memory", index, type);
    l2->self = calloc(1, a->instance_size ? a->instance_size : 1);
    l2->item_errors = json_object();
    if (!l2->self || !l2->item_errors) {
        rc = bad(err, errlen, "--l2-adapter #%d (%s): out of memory", index, type);
        goto fail;
    }
    l2->loop = loop;
    l2->a = a;
    snprintf(l2->name, sizeof(l2->name), "#%d (%s)", index, a->name);
    if (env)
        l2->env = *env;
    /* The one spec parser fills self (defaults applied) and the runner's fields;
     * strings in self borrow from spec, which outlives init. */
    rc = kvcd_adapter_spec_parse(a, spec, l2->self, &rf, aerr, sizeof(aerr));
    if (rc == 0)
        rc = size_executor(l2, &rf, index, l2->env.max_workers, err, errlen);
    else
        bad(err, errlen, "--l2-adapter #%d (%s): %s", index, a->name, aerr);
    if (rc != 0)
        goto fail;
    l2->env.struct_size = sizeof(l2->env);
    l2->env.svc = kvcd_l2_services();
    l2->env.loop = loop;
    l2->env.instance = l2->name;
    /* What the adapter is told is what its executor has. */
    l2->env.max_workers = (a->flags & KVCD_ADAPTER_BLOCKING) ? l2->workers : 1;
    if (!l2->env.arena_align)
        l2->env.arena_align = 4096;
    l2->timeout_ms = default_timeout_ms ? default_timeout_ms : DEFAULT_TIMEOUT_MS;
    l2->healthy = 1;
    if (a->flags & KVCD_ADAPTER_BLOCKING) {
        snprintf(ename, sizeof(ename), "l2 %s", l2->name);
        rc = kvcd_exec_create(loop, ename, l2->workers, l2->max_queue, &l2->exec);
        if (rc == 0 && a->background) {
            snprintf(ename, sizeof(ename), "l2 %s scan", l2->name);
            rc = kvcd_exec_create(loop, ename, 1, 1, &l2->bg_exec);
        }
        if (rc != 0) {
            rc = bad(err, errlen, "--l2-adapter #%d (%s): cannot start its threads: %s", index,
                     a->name, kvcd_strerror(rc));
            goto fail;
        }
    }

    aerr[0] = '\0';
    rc = a->init(l2->self, spec, &l2->env, aerr, sizeof(aerr));
    if (rc != 0) {
        /* init releases what it acquired before failing */
        bad(err, errlen, "--l2-adapter #%d (%s): %s", index, a->name,
            aerr[0] ? aerr : kvcd_strerror(rc));
        rc = rc < 0 ? rc : KVCD_ECONFIG;
        goto fail;
    }
    uv_timer_init(loop, &l2->fail_timer);
    l2->fail_timer.data = l2;
    KVCD_LOG(KVCD_LOG_INFO, "l2", "%s: ready (timeout %llu ms, %d workers, queue %zu)",
             l2->name, (unsigned long long)l2->timeout_ms, l2->env.max_workers,
             l2->max_queue);
    if (l2->bg_exec) {
        l2->bg.work = bg_work;
        l2->bg.done = bg_after;
        l2->bg.data = l2;
        if (kvcd_exec_submit(l2->bg_exec, &l2->bg) == 0) {
            l2->bg_running = 1;
            l2->inflight++;
        }
    }
    *out = l2;
    return 0;

fail:
    kvcd_exec_close(l2->exec);
    kvcd_exec_close(l2->bg_exec);
    json_decref(l2->item_errors);
    free(l2->self);
    free(l2);
    return rc;
}

size_t kvcd_l2_inflight(const kvcd_l2_t *l2)
{
    return l2->inflight;
}

const kvcd_adapter_t *kvcd_l2_adapter(const kvcd_l2_t *l2)
{
    return l2->a;
}

const char *kvcd_l2_name(const kvcd_l2_t *l2)
{
    return l2->name;
}

int kvcd_l2_healthy(kvcd_l2_t *l2)
{
    update_health(l2);
    return l2->healthy;
}

json_t *kvcd_l2_status(kvcd_l2_t *l2)
{
    json_t *o = json_object(), *ops = json_object();
    json_t *h;
    uint64_t calls = 0;
    int adapter_healthy = 1;
    size_t i;

    update_health(l2);
    if (l2->a->status)
        l2->a->status(l2->self, o);
    h = json_object_get(o, "healthy");
    if (h && json_is_false(h))
        adapter_healthy = 0;
    for (i = 0; i < 4; i++) {
        calls += l2->calls[i];
        json_object_set_new(ops, op_names[i],
                            json_pack("{s:I, s:I, s:I, s:o*}", "calls", (json_int_t)l2->calls[i],
                                      "keys", (json_int_t)l2->items[i], "bytes",
                                      (json_int_t)l2->bytes[i], "latency",
                                      l2->calls[i] ? kvcd_hist_json(&l2->latency[i]) : NULL));
    }
    json_object_set_new(o, "name", json_string(l2->name));
    json_object_set_new(o, "type", json_string(l2->a->name));
    json_object_set_new(o, "healthy", json_boolean(l2->healthy && adapter_healthy));
    json_object_set_new(o, "calls", json_integer((json_int_t)calls));
    json_object_set_new(o, "failures", json_integer((json_int_t)l2->failures));
    json_object_set_new(o, "timeouts", json_integer((json_int_t)l2->timeouts));
    json_object_set_new(o, "late_completions", json_integer((json_int_t)l2->late));
    if (l2->exec)
        json_object_set_new(o, "executor", kvcd_exec_json(l2->exec));
    json_object_set_new(o, "consecutive_failures", json_integer((json_int_t)l2->consecutive));
    json_object_set_new(o, "inflight", json_integer((json_int_t)l2->inflight));
    json_object_set_new(o, "ops", ops);
    json_object_set_new(o, "item_errors", json_deep_copy(l2->item_errors));
    if (l2->a->touch)
        json_object_set_new(o, "touch",
                            json_pack("{s:I, s:I, s:I, s:I}", "batches",
                                      (json_int_t)l2->touch_batches, "keys",
                                      (json_int_t)l2->touch_keys, "dropped_batches",
                                      (json_int_t)l2->touch_dropped, "dropped_keys",
                                      (json_int_t)l2->touch_dropped_keys));
    return o;
}

static int abandoned_count;

int kvcd_l2_abandoned(void)
{
    return abandoned_count;
}

void kvcd_l2_abandon(kvcd_l2_t *l2)
{
    if (!l2 || l2->abandoned)
        return;
    l2->abandoned = 1;
    l2->abandoning = 1;
    l2->destroying = 1; /* submits from here on complete with ESHUTDOWN */
    if (l2->bg_exec)
        kvcd_exec_quiesce(l2->bg_exec);
    /* Every caller gets its answer now, as if the deadline had passed. */
    while (l2->waiting)
        finish(l2->waiting, 1);
    l2->abandoning = 0;
    if (l2->inflight == 0) {
        finalize(l2);
        return;
    }
    KVCD_LOG(KVCD_LOG_WARNING, "l2", "%s: abandoned with %zu calls still running", l2->name,
             l2->inflight);
    abandoned_count++;
    if (!(l2->a->flags & KVCD_ADAPTER_BLOCKING))
        return; /* an async adapter completes on this loop, or the backstop ends it */
    /* Late completions of a blocking adapter are never delivered: the instance
     * stays allocated for the workers that may still be inside the adapter. */
    kvcd_exec_close(l2->exec);
    kvcd_exec_close(l2->bg_exec);
    l2->exec = l2->bg_exec = NULL;
}

void kvcd_l2_destroy(kvcd_l2_t *l2)
{
    if (!l2 || l2->destroying)
        return;
    if (l2->inflight > 0) {
        /* A caller bug, but not worth a crash: close once the calls return.
         * Touches are nobody's calls: they only delay the close. */
        if (l2->inflight > l2->touching)
            KVCD_LOG(KVCD_LOG_WARNING, "l2", "%s: destroyed with %zu calls in flight; closing "
                     "when they return", l2->name, l2->inflight - l2->touching);
        l2->destroying = 1;
        if (l2->bg_exec)
            kvcd_exec_quiesce(l2->bg_exec); /* a queued background task is canceled */
        return;
    }
    finalize(l2);
}
