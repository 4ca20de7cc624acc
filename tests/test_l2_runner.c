/*
 * test_l2_runner.c - the L2 runner's semantics, and the mock and fault
 * adapters' own behaviour.
 *
 * Runner: asynchronous adapters (completing later, inside the call, or only
 * when the test says so), empty requests, how blocking batches are split over
 * workers, preset results, health and status, callbacks that destroy the
 * instance, destroy with calls in flight, background start-up work.
 * mock: FIFO eviction, size limits, simulated bandwidth and latency.
 * fault: failing calls by index and keys by probability (reproducibly), failed
 * stores invisible, corruption, delays, status.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/l2.h"
#include "tests/l2_support.h"
#include "tests/support.h"

#define MS(ns) ((ns) / 1000000ull)

static uv_loop_t loop;
static kvcd_l2_t *l2;

static int inflight_zero(void *arg)
{
    return kvcd_l2_inflight(arg) == 0;
}

static void setup(void)
{
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    l2 = NULL;
}

static void teardown(void)
{
    if (l2) {
        ck_assert_int_eq(kvcd_test_run_pred(&loop, inflight_zero, l2, KVCD_TEST_WALL_MS), 0);
        kvcd_l2_destroy(l2);
        l2 = NULL;
    }
    ck_assert_int_eq(kvcd_test_drain(&loop, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}

/* Create l2 from JSON text with max_workers workers; wait for start-up work. */
static void create_w(const char *json, int workers)
{
    kvcd_adapter_env_t env = {.arena_align = 4096, .max_workers = workers};
    json_error_t jerr;
    json_t *spec = json_loads(json, 0, &jerr);
    char err[512];

    ck_assert_msg(spec, "bad JSON in test: %s", jerr.text);
    ck_assert_msg(kvcd_l2_create(&loop, spec, 1, &env, 2000, &l2, err, sizeof(err)) == 0, "%s",
                  err);
    json_decref(spec);
    ck_assert_int_eq(kvcd_test_run_pred(&loop, inflight_zero, l2, KVCD_TEST_WALL_MS), 0);
}

static void create(const char *json)
{
    create_w(json, 4);
}

static void call(kvcd_l2_op_t op, kvcd_l2_item_t *items, size_t n)
{
    ck_assert_int_eq(kvcd_test_call(&loop, l2, op, items, n, 0), 0);
}

static kvcd_test_key_t keys[256];

static void set_key(kvcd_l2_item_t *it, size_t id)
{
    memset(it, 0, sizeof(*it));
    kvcd_test_key(&keys[id], 1000 + id);
    it->key = keys[id].k;
}

static json_int_t st_int(json_t *st, const char *a, const char *b)
{
    json_t *v = json_object_get(st, a);

    if (b)
        v = json_object_get(v, b);
    ck_assert_msg(json_is_integer(v), "status has no integer %s%s%s", a, b ? "." : "",
                  b ? b : "");
    return json_integer_value(v);
}

/* ---- an asynchronous test adapter ----
 * {"type":"asynctest","mode":"later"|"sync"|"never"}: "later" completes every
 * batch from a timer on the loop, "sync" inside the method call, "never" only
 * when the test calls async_flush(). Lookups hit, with size 4096. */

typedef struct async_s {
    uv_timer_t *timer; /* malloc'd: it outlives the instance while closing */
    int mode;
    kvcd_l2_batch_t *held[64];
    size_t nheld;
} async_t;

static async_t *async_last;

static void complete_all(async_t *a)
{
    size_t i, j;

    for (i = 0; i < a->nheld; i++) {
        kvcd_l2_batch_t *b = a->held[i];

        for (j = 0; j < b->n; j++) {
            b->items[j].result = 0;
            b->items[j].size = 4096;
        }
        kvcd_l2_batch_done(b);
    }
    a->nheld = 0;
}

static void async_timer(uv_timer_t *t)
{
    complete_all(t->data);
}

static int async_init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *err,
                      size_t errlen)
{
    async_t *a = self; /* a->mode: from the spec (async_fields) */

    a->timer = malloc(sizeof(*a->timer));
    uv_timer_init(env->loop, a->timer);
    a->timer->data = a;
    async_last = a;
    return 0;
}

static void async_op(void *self, kvcd_l2_batch_t *b)
{
    async_t *a = self;

    a->held[a->nheld++] = b;
    if (a->mode == 0)
        uv_timer_start(a->timer, async_timer, 1, 0);
    else if (a->mode == 1)
        complete_all(a);
}

static void async_flush(void)
{
    complete_all(async_last);
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

static void async_close(void *self)
{
    async_t *a = self;

    uv_close((uv_handle_t *)a->timer, free_handle);
}

static const char *const async_modes[] = {"later", "sync", "never", NULL};

static const kvcd_adapter_field_t async_fields[] = {
    {KVCD_FIELD("mode", KVCD_FIELD_ENUM, async_t, mode), .choices = async_modes,
     .dflt = "\"later\"", .doc = "when batches complete"},
    {.name = NULL},
};

static const kvcd_adapter_t asynctest = {
    KVCD_ADAPTER_HEADER("asynctest", async_t, 0),
    .doc = "asynchronous test adapter",
    .fields = async_fields,
    .init = async_init,
    .store = async_op,
    .lookup = async_op,
    .load = async_op,
    .remove = async_op,
    .close = async_close,
};

/* ---- a blocking adapter that records how it was called ----
 * Every call sleeps 100 ms, records its size and its first key's index (the
 * key's group field carries the index), and leaves results alone ("preset"). */

static pthread_mutex_t rec_mu = PTHREAD_MUTEX_INITIALIZER;
static size_t rec_calls, rec_sizes[64], rec_first[64];
static int bg_ran;

static int rec_init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *err,
                    size_t errlen)
{
    return 0;
}

static void rec_op(void *self, kvcd_l2_batch_t *b)
{
    struct timespec ts = {0, 100 * 1000000L};

    nanosleep(&ts, NULL);
    pthread_mutex_lock(&rec_mu);
    if (rec_calls < 64) {
        rec_sizes[rec_calls] = b->n;
        rec_first[rec_calls] = b->items[0].key.group;
    }
    rec_calls++;
    pthread_mutex_unlock(&rec_mu);
}

static void rec_background(void *self)
{
    struct timespec ts = {0, 50 * 1000000L};

    nanosleep(&ts, NULL);
    __atomic_store_n(&bg_ran, 1, __ATOMIC_SEQ_CST);
}

static const kvcd_adapter_t rectest = {
    KVCD_ADAPTER_HEADER("rectest", int, KVCD_ADAPTER_BLOCKING),
    .doc = "records its calls",
    .init = rec_init,
    .store = rec_op,
    .lookup = rec_op,
    .load = rec_op,
    .remove = rec_op,
    .background = rec_background,
};

static void register_test_adapters(void)
{
    char err[256];

    ck_assert_msg(kvcd_l2_register(&asynctest, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(kvcd_l2_register(&rectest, err, sizeof(err)) == 0, "%s", err);
}

/* ---- a blocking adapter with touch ----
 * Calls wait until touch_open is set; touch records the keys' indices (the
 * group field) in order. */

static pthread_mutex_t tt_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tt_cv = PTHREAD_COND_INITIALIZER;
static int touch_open;
static size_t tt_calls, tt_n, tt_keys[64];

static void tt_op(void *self, kvcd_l2_batch_t *b)
{
    pthread_mutex_lock(&tt_mu);
    while (!touch_open)
        pthread_cond_wait(&tt_cv, &tt_mu);
    pthread_mutex_unlock(&tt_mu);
}

static void tt_touch(void *self, kvcd_l2_batch_t *b)
{
    size_t i;

    pthread_mutex_lock(&tt_mu);
    tt_calls++;
    for (i = 0; i < b->n && tt_n < 64; i++)
        tt_keys[tt_n++] = b->items[i].key.group;
    pthread_mutex_unlock(&tt_mu);
}

static void tt_gate(int open)
{
    pthread_mutex_lock(&tt_mu);
    touch_open = open;
    pthread_cond_broadcast(&tt_cv);
    pthread_mutex_unlock(&tt_mu);
}

static const kvcd_adapter_t touchtest = {
    KVCD_ADAPTER_HEADER("touchtest", int, KVCD_ADAPTER_BLOCKING),
    .doc = "calls wait for a gate; touch records keys",
    .init = rec_init,
    .store = tt_op,
    .lookup = tt_op,
    .load = tt_op,
    .remove = tt_op,
    .touch = tt_touch,
};

/* ---- runner: asynchronous adapters ---- */

START_TEST(async_completes_later)
{
    kvcd_l2_item_t it[3];
    kvcd_test_call_t c;
    size_t i;

    register_test_adapters();
    create("{\"type\":\"asynctest\",\"mode\":\"later\"}");
    for (i = 0; i < 3; i++)
        set_key(&it[i], i);
    kvcd_test_submit(&c, l2, KVCD_L2_LOOKUP, it, 3, 0);
    ck_assert_int_eq(c.done, 0);
    for (i = 0; i < 3; i++)
        ck_assert_int_eq(it[i].result, KVCD_EINTERNAL); /* preset */
    ck_assert_int_eq(kvcd_test_run_until(&loop, &c.released, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(c.done, 1);
    ck_assert_int_eq(c.req.timed_out, 0);
    for (i = 0; i < 3; i++) {
        ck_assert_int_eq(it[i].result, 0);
        ck_assert_uint_eq(it[i].size, 4096);
    }
}
END_TEST

START_TEST(async_completing_inside_the_call)
{
    kvcd_l2_item_t it;
    kvcd_test_call_t c;

    register_test_adapters();
    create("{\"type\":\"asynctest\",\"mode\":\"sync\"}");
    set_key(&it, 0);
    kvcd_test_submit(&c, l2, KVCD_L2_LOAD, &it, 1, 0);
    ck_assert_int_eq(c.done, 0); /* never inside submit */
    ck_assert_int_eq(kvcd_test_run_until(&loop, &c.released, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(c.cb_in_submit, 0);
    ck_assert_int_eq(c.done, 1);
    ck_assert_int_eq(it.result, 0);
}
END_TEST

START_TEST(async_timeout_discards_late_completion)
{
    kvcd_l2_item_t it[2];
    kvcd_test_call_t c;
    json_t *st;

    register_test_adapters();
    create("{\"type\":\"asynctest\",\"mode\":\"never\"}");
    set_key(&it[0], 0);
    set_key(&it[1], 1);
    kvcd_test_submit(&c, l2, KVCD_L2_LOOKUP, it, 2, 30);
    ck_assert_int_eq(kvcd_test_run_until(&loop, &c.done, KVCD_TEST_WALL_MS), 0);
    ck_assert(c.req.timed_out);
    ck_assert_int_eq(it[0].result, KVCD_ETIMEDOUT);
    ck_assert_int_eq(it[1].result, KVCD_ETIMEDOUT);
    ck_assert_int_eq(c.released, 0);
    ck_assert_uint_eq(kvcd_l2_inflight(l2), 1);

    async_flush(); /* the adapter answers, too late */
    ck_assert_int_eq(c.released, 1);
    ck_assert_int_eq(it[0].result, KVCD_ETIMEDOUT);
    ck_assert_int_eq(it[1].result, KVCD_ETIMEDOUT);
    ck_assert_uint_eq(kvcd_l2_inflight(l2), 0);
    st = kvcd_l2_status(l2);
    ck_assert_int_eq(st_int(st, "timeouts", NULL), 1);
    ck_assert_int_eq(st_int(st, "late_completions", NULL), 1);
    ck_assert_int_eq(st_int(st, "item_errors", "ETIMEDOUT"), 2);
    json_decref(st);
}
END_TEST

START_TEST(empty_request_completes_later)
{
    kvcd_test_call_t c;

    create("{\"type\":\"mock\"}");
    kvcd_test_submit(&c, l2, KVCD_L2_LOOKUP, NULL, 0, 0);
    ck_assert_int_eq(c.done, 0);
    ck_assert_int_eq(kvcd_test_run_until(&loop, &c.released, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(c.done, 1);
    ck_assert_int_eq(c.cb_in_submit, 0);
    ck_assert_uint_eq(kvcd_l2_inflight(l2), 0);
}
END_TEST

START_TEST(unknown_operation_is_an_error)
{
    kvcd_l2_item_t it;

    create("{\"type\":\"mock\"}");
    set_key(&it, 0);
    ck_assert_int_eq(kvcd_test_call(&loop, l2, (kvcd_l2_op_t)7, &it, 1, 0), 0);
    ck_assert_int_eq(it.result, KVCD_EUNKNOWNOP);
}
END_TEST

/* ---- runner: blocking adapters ---- */

static void rec_run(size_t n)
{
    kvcd_l2_item_t it[16];
    size_t i;

    pthread_mutex_lock(&rec_mu);
    rec_calls = 0;
    pthread_mutex_unlock(&rec_mu);
    for (i = 0; i < n; i++) {
        set_key(&it[i], i);
        keys[i].k.group = (uint32_t)i;
        it[i].key = keys[i].k;
    }
    call(KVCD_L2_LOOKUP, it, n);
    for (i = 0; i < n; i++)
        ck_assert_int_eq(it[i].result, KVCD_EINTERNAL); /* untouched by the adapter */
}

START_TEST(blocking_batch_split_over_workers)
{
    size_t i, j, total = 0, covered[16] = {0};
    uint64_t t0;

    register_test_adapters();
    create_w("{\"type\":\"rectest\"}", 4);
    t0 = kvcd_test_now_ns();
    rec_run(10);
    /* four slices at once on the threadpool: about one call's time */
    ck_assert_uint_lt(MS(kvcd_test_now_ns() - t0), 350);
    ck_assert_uint_eq(rec_calls, 4);
    for (i = 0; i < 4; i++) {
        ck_assert(rec_sizes[i] == 2 || rec_sizes[i] == 3);
        for (j = 0; j < rec_sizes[i]; j++)
            covered[rec_first[i] + j]++;
        total += rec_sizes[i];
    }
    ck_assert_uint_eq(total, 10);
    for (i = 0; i < 10; i++)
        ck_assert_uint_eq(covered[i], 1); /* contiguous, disjoint, complete */

    rec_run(3);
    ck_assert_uint_eq(rec_calls, 3);
}
END_TEST

START_TEST(one_worker_one_call)
{
    register_test_adapters();
    create_w("{\"type\":\"rectest\"}", 1);
    rec_run(10);
    ck_assert_uint_eq(rec_calls, 1);
    ck_assert_uint_eq(rec_sizes[0], 10);
}
END_TEST

static long long touch_stat(const char *name)
{
    json_t *st = kvcd_l2_status(l2);
    json_t *v = json_object_get(json_object_get(st, "touch"), name);
    long long r = json_is_integer(v) ? (long long)json_integer_value(v) : -1;

    json_decref(st);
    return r;
}

/* touch goes through the executor (copied keys, in order, no callback); a
 * queue half full drops the batch, counted; an adapter without it says so. */
START_TEST(touch_through_the_executor)
{
    kvcd_test_key_t tk[3];
    kvcd_key_t k[3];
    kvcd_l2_item_t it[3];
    kvcd_test_call_t calls[3];
    char err[256];
    size_t i;

    ck_assert_msg(kvcd_l2_register(&touchtest, err, sizeof(err)) == 0, "%s", err);
    register_test_adapters();
    create_w("{\"type\":\"touchtest\",\"max_queue\":4}", 1);
    ck_assert_int_eq(kvcd_l2_can_touch(l2), 1);
    for (i = 0; i < 3; i++) {
        kvcd_test_key(&tk[i], 10 + i);
        k[i] = tk[i].k;
        k[i].group = (uint32_t)(10 + i);
    }
    ck_assert_int_eq(kvcd_l2_touch(l2, k, 3), 0);
    memset(tk, 0, sizeof(tk)); /* the runner copied the keys */
    ck_assert_uint_eq(kvcd_l2_inflight(l2), 1);
    ck_assert_int_eq(kvcd_test_run_pred(&loop, inflight_zero, l2, KVCD_TEST_WALL_MS), 0);
    ck_assert_uint_eq(tt_calls, 1);
    ck_assert_uint_eq(tt_n, 3);
    for (i = 0; i < 3; i++)
        ck_assert_uint_eq(tt_keys[i], 10 + i);
    ck_assert_int_eq(touch_stat("batches"), 1);
    ck_assert_int_eq(touch_stat("keys"), 3);
    ck_assert_int_eq(touch_stat("dropped_batches"), 0);

    /* one call holds the only worker, two wait: the queue is half full */
    for (i = 0; i < 3; i++) {
        set_key(&it[i], i);
        kvcd_test_submit(&calls[i], l2, KVCD_L2_LOOKUP, &it[i], 1, 0);
    }
    ck_assert_int_eq(kvcd_l2_touch(l2, k, 2), KVCD_EQUEUEFULL);
    ck_assert_int_eq(touch_stat("dropped_batches"), 1);
    ck_assert_int_eq(touch_stat("dropped_keys"), 2);
    tt_gate(1);
    for (i = 0; i < 3; i++)
        ck_assert_int_eq(kvcd_test_run_until(&loop, &calls[i].released, KVCD_TEST_WALL_MS), 0);
    ck_assert_uint_eq(tt_calls, 1); /* the dropped batch never ran */
    ck_assert_int_eq(kvcd_l2_touch(l2, k, 0), 0);

    /* a touch in flight delays the close, nothing else */
    tt_gate(0);
    set_key(&it[0], 0);
    kvcd_test_submit(&calls[0], l2, KVCD_L2_LOOKUP, &it[0], 1, 0);
    ck_assert_int_eq(kvcd_l2_touch(l2, k, 1), 0);
    tt_gate(1);
    ck_assert_int_eq(kvcd_test_run_until(&loop, &calls[0].released, KVCD_TEST_WALL_MS), 0);
    kvcd_l2_destroy(l2);
    l2 = NULL;
    ck_assert_int_eq(kvcd_test_drain(&loop, KVCD_TEST_WALL_MS), 0);
    ck_assert_uint_eq(tt_calls, 2);

    create_w("{\"type\":\"rectest\"}", 1);
    ck_assert_int_eq(kvcd_l2_can_touch(l2), 0);
    ck_assert_int_eq(kvcd_l2_touch(l2, k, 1), KVCD_EUNKNOWNOP);
    ck_assert_int_eq(touch_stat("batches"), -1); /* no "touch" in its status */
}
END_TEST

START_TEST(background_counts_in_flight)
{
    kvcd_adapter_env_t env = {.arena_align = 4096, .max_workers = 2};
    json_t *spec = json_pack("{s:s}", "type", "rectest");
    char err[256];

    register_test_adapters();
    ck_assert_int_eq(kvcd_l2_create(&loop, spec, 1, &env, 1000, &l2, err, sizeof(err)), 0);
    json_decref(spec);
    ck_assert_uint_eq(kvcd_l2_inflight(l2), 1);
    ck_assert_int_eq(kvcd_test_run_pred(&loop, inflight_zero, l2, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(__atomic_load_n(&bg_ran, __ATOMIC_SEQ_CST), 1);
}
END_TEST

START_TEST(unanswered_items_count_as_failures)
{
    json_t *st;

    register_test_adapters();
    create_w("{\"type\":\"rectest\"}", 1);
    rec_run(2);
    st = kvcd_l2_status(l2);
    ck_assert_int_eq(st_int(st, "failures", NULL), 1);
    ck_assert_int_eq(st_int(st, "item_errors", "EINTERNAL"), 2);
    json_decref(st);
}
END_TEST

/* ---- health and status ---- */

START_TEST(health_after_consecutive_failures)
{
    kvcd_l2_item_t it;
    void *buf = kvcd_test_buf(4096);
    json_t *st;
    int i;

    create("{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},"
           "\"fail_calls\":{\"store\":[0,1,2]}}");
    for (i = 0; i < 3; i++) {
        ck_assert_int_eq(kvcd_l2_healthy(l2), 1);
        set_key(&it, (size_t)i);
        it.buf = buf;
        it.len = 4096;
        call(KVCD_L2_STORE, &it, 1);
        ck_assert_int_eq(it.result, -EIO);
    }
    ck_assert_int_eq(kvcd_l2_healthy(l2), 0);
    st = kvcd_l2_status(l2);
    ck_assert(json_is_false(json_object_get(st, "healthy")));
    ck_assert_int_eq(st_int(st, "consecutive_failures", NULL), 3);
    ck_assert_int_eq(st_int(st, "failures", NULL), 3);
    ck_assert_int_eq(st_int(st, "item_errors", "EIO"), 3);
    ck_assert_int_eq(st_int(st, "injected_failures", "store"), 3);
    json_decref(st);

    /* one successful store makes it healthy again */
    set_key(&it, 3);
    it.buf = buf;
    it.len = 4096;
    call(KVCD_L2_STORE, &it, 1);
    ck_assert_int_eq(it.result, 0);
    ck_assert_int_eq(kvcd_l2_healthy(l2), 1);
    st = kvcd_l2_status(l2);
    ck_assert(json_is_true(json_object_get(st, "healthy")));
    ck_assert_int_eq(st_int(st, "consecutive_failures", NULL), 0);
    json_decref(st);
    free(buf);
}
END_TEST

/* Item 16: a tier whose stores all fail (a read-only disk) still answers
 * lookups; those successes must not hide the failing stores. Fails on beac8c1,
 * where any successful call reset the streak. */
START_TEST(test_item16_lookups_do_not_hide_failing_stores)
{
    kvcd_l2_item_t it;
    void *buf = kvcd_test_buf(4096);
    json_t *st;
    int i;

    create("{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail\":{\"store\":1},"
           "\"error\":\"EROFS\"}");
    for (i = 0; i < 6; i++) {
        set_key(&it, (size_t)i);
        it.buf = buf;
        it.len = 4096;
        call(KVCD_L2_STORE, &it, 1);
        ck_assert_int_eq(it.result, -EROFS);
        set_key(&it, (size_t)i);
        call(KVCD_L2_LOOKUP, &it, 1);
        ck_assert_int_eq(it.result, KVCD_ENOTFOUND);
    }
    ck_assert_int_eq(kvcd_l2_healthy(l2), 0);
    st = kvcd_l2_status(l2);
    ck_assert(json_is_false(json_object_get(st, "healthy")));
    ck_assert_int_eq(st_int(st, "consecutive_failures", NULL), 6);
    json_decref(st);
    free(buf);
}
END_TEST

START_TEST(timeouts_make_unhealthy)
{
    kvcd_l2_item_t it;
    kvcd_test_call_t c;
    int i;

    create("{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"delay_ms\":{\"lookup\":150}}");
    for (i = 0; i < 3; i++) {
        set_key(&it, 0);
        kvcd_test_submit(&c, l2, KVCD_L2_LOOKUP, &it, 1, 20);
        ck_assert_int_eq(kvcd_test_run_until(&loop, &c.released, KVCD_TEST_WALL_MS), 0);
        ck_assert(c.req.timed_out);
        ck_assert_int_eq(it.result, KVCD_ETIMEDOUT);
    }
    ck_assert_int_eq(kvcd_l2_healthy(l2), 0);
}
END_TEST

START_TEST(misses_are_not_failures)
{
    kvcd_l2_item_t it[4];
    json_t *st;
    size_t i;
    int r;

    create("{\"type\":\"mock\"}");
    for (r = 0; r < 5; r++) {
        for (i = 0; i < 4; i++)
            set_key(&it[i], i);
        call(KVCD_L2_LOOKUP, it, 4);
    }
    st = kvcd_l2_status(l2);
    ck_assert(json_is_true(json_object_get(st, "healthy")));
    ck_assert_int_eq(st_int(st, "failures", NULL), 0);
    ck_assert_int_eq(st_int(st, "calls", NULL), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_object_get(json_object_get(st, "ops"), "lookup"), "keys")), 20);
    /* the adapter's own fields are merged in */
    ck_assert_int_eq(st_int(st, "objects", NULL), 0);
    ck_assert_int_eq(st_int(st, "capacity_bytes", NULL), 1 << 30);
    ck_assert_int_eq(st_int(st, "inflight", NULL), 0);
    ck_assert_str_eq(json_string_value(json_object_get(st, "name")), "#1 (mock)");
    ck_assert_str_eq(json_string_value(json_object_get(st, "type")), "mock");
    json_decref(st);
}
END_TEST

/* ---- destroying ---- */

static int destroyed_in_cb, released_after_destroy;

static void destroying_cb(kvcd_l2_req_t *req)
{
    ck_assert_uint_eq(kvcd_l2_inflight(req->l2), 0);
    kvcd_l2_destroy(req->l2);
    l2 = NULL;
    destroyed_in_cb = 1;
}

static void note_release(kvcd_l2_req_t *req)
{
    released_after_destroy = destroyed_in_cb;
}

START_TEST(callback_may_destroy_the_instance)
{
    kvcd_l2_item_t it;
    kvcd_l2_req_t req = {0};

    create("{\"type\":\"mock\"}");
    set_key(&it, 0);
    req.op = KVCD_L2_LOOKUP;
    req.items = &it;
    req.n = 1;
    req.cb = destroying_cb;
    req.release = note_release;
    kvcd_l2_submit(l2, &req);
    ck_assert_int_eq(kvcd_test_run_until(&loop, &released_after_destroy, KVCD_TEST_WALL_MS), 0);
    ck_assert_ptr_null(l2);
}
END_TEST

START_TEST(destroy_with_calls_in_flight_is_deferred)
{
    kvcd_l2_item_t st_it, lk_it;
    kvcd_test_call_t slow, late;
    void *buf = kvcd_test_buf(4096);
    kvcd_l2_t *inst;

    create("{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"delay_ms\":{\"store\":200}}");
    set_key(&st_it, 0);
    st_it.buf = buf;
    st_it.len = 4096;
    kvcd_test_submit(&slow, l2, KVCD_L2_STORE, &st_it, 1, 1000);
    inst = l2;
    l2 = NULL;
    kvcd_l2_destroy(inst); /* too early: deferred until the store returns */
    set_key(&lk_it, 0);
    kvcd_test_submit(&late, inst, KVCD_L2_LOOKUP, &lk_it, 1, 0);
    ck_assert_int_eq(kvcd_test_run_until(&loop, &slow.released, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(slow.done, 1);
    ck_assert_int_eq(st_it.result, 0);
    ck_assert_int_eq(late.released, 1);
    ck_assert_int_eq(lk_it.result, KVCD_ESHUTDOWN);
    free(buf);
}
END_TEST

/* ---- mock ---- */

START_TEST(mock_fifo_eviction)
{
    kvcd_l2_item_t it[3];
    void *buf = kvcd_test_buf(4096);
    json_t *st;
    size_t i;

    /* 10000 bytes: two 4096-byte objects fit, a third evicts the oldest */
    create("{\"type\":\"mock\",\"max_size_gb\":9.313225746154785e-06}");
    for (i = 0; i < 3; i++) {
        set_key(&it[0], i);
        it[0].buf = buf;
        it[0].len = 4096;
        call(KVCD_L2_STORE, it, 1);
        ck_assert_int_eq(it[0].result, 0);
    }
    for (i = 0; i < 3; i++)
        set_key(&it[i], i);
    call(KVCD_L2_LOOKUP, it, 3);
    ck_assert_int_eq(it[0].result, KVCD_ENOTFOUND);
    ck_assert_int_eq(it[1].result, 0);
    ck_assert_int_eq(it[2].result, 0);
    st = kvcd_l2_status(l2);
    ck_assert_int_eq(st_int(st, "capacity_bytes", NULL), 10000);
    ck_assert_int_eq(st_int(st, "used_bytes", NULL), 8192);
    ck_assert_int_eq(st_int(st, "objects", NULL), 2);
    ck_assert_int_eq(st_int(st, "evictions", NULL), 1);
    json_decref(st);

    /* too large for the whole capacity: refused, nothing evicted */
    it[0].buf = kvcd_test_buf(20000);
    it[0].len = 20000;
    call(KVCD_L2_STORE, it, 1);
    ck_assert_int_eq(it[0].result, -ENOSPC);
    free(it[0].buf);
    set_key(&it[0], 1);
    call(KVCD_L2_LOOKUP, it, 1);
    ck_assert_int_eq(it[0].result, 0);
    free(buf);
}
END_TEST

START_TEST(mock_short_buffer)
{
    kvcd_l2_item_t it;
    void *buf = kvcd_test_buf(8192);

    create("{\"type\":\"mock\"}");
    set_key(&it, 0);
    it.buf = buf;
    it.len = 8192;
    call(KVCD_L2_STORE, &it, 1);
    ck_assert_int_eq(it.result, 0);
    it.len = 4096;
    call(KVCD_L2_LOAD, &it, 1);
    ck_assert_int_eq(it.result, -EMSGSIZE);
    ck_assert_uint_eq(it.size, 8192);
    free(buf);
}
END_TEST

START_TEST(mock_bandwidth_and_latency)
{
    kvcd_l2_item_t it;
    void *buf = kvcd_test_buf(1 << 20);
    uint64_t t0;

    /* 0.01 GiB/s: 1 MiB takes about 98 ms each way */
    create("{\"type\":\"mock\",\"mock_bandwidth_gb\":0.01,\"latency_ms\":60}");
    set_key(&it, 0);
    it.buf = buf;
    it.len = 1 << 20;
    t0 = kvcd_test_now_ns();
    call(KVCD_L2_STORE, &it, 1);
    ck_assert_int_eq(it.result, 0);
    ck_assert_uint_ge(MS(kvcd_test_now_ns() - t0), 60 + 90);
    t0 = kvcd_test_now_ns();
    call(KVCD_L2_LOAD, &it, 1);
    ck_assert_int_eq(it.result, 0);
    ck_assert_uint_ge(MS(kvcd_test_now_ns() - t0), 60 + 90);
    t0 = kvcd_test_now_ns();
    call(KVCD_L2_LOOKUP, &it, 1);
    ck_assert_uint_ge(MS(kvcd_test_now_ns() - t0), 58);
    ck_assert_uint_lt(MS(kvcd_test_now_ns() - t0), 150);
    free(buf);
}
END_TEST

START_TEST(mock_many_keys_concurrently)
{
    enum { N = 64 };
    kvcd_l2_item_t it[N];
    void *data[N], *back[N];
    size_t i;

    create_w("{\"type\":\"mock\"}", 8);
    for (i = 0; i < N; i++) {
        data[i] = kvcd_test_buf(4096 * (1 + i % 4));
        back[i] = kvcd_test_buf(4096 * (1 + i % 4));
        kvcd_fill_random(data[i], 4096 * (1 + i % 4), i);
        set_key(&it[i], i);
        it[i].buf = data[i];
        it[i].len = 4096 * (1 + i % 4);
    }
    call(KVCD_L2_STORE, it, N);
    for (i = 0; i < N; i++) {
        ck_assert_int_eq(it[i].result, 0);
        it[i].buf = back[i];
    }
    call(KVCD_L2_LOAD, it, N);
    for (i = 0; i < N; i++) {
        ck_assert_int_eq(it[i].result, 0);
        ck_assert_int_eq(memcmp(data[i], back[i], it[i].len), 0);
        free(data[i]);
        free(back[i]);
    }
}
END_TEST

/* ---- fault ---- */

static void store_n(size_t first, size_t n, void *buf, kvcd_l2_item_t *it)
{
    size_t i;

    for (i = 0; i < n; i++) {
        set_key(&it[i], first + i);
        it[i].buf = buf;
        it[i].len = 4096;
    }
    call(KVCD_L2_STORE, it, n);
}

START_TEST(fault_fail_calls_by_index)
{
    kvcd_l2_item_t it[3];
    void *buf = kvcd_test_buf(4096);
    size_t i;

    /* one worker: one request is one adapter call */
    create_w("{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail_calls\":{\"store\":[1]},"
             "\"error\":\"ENOSPC\"}", 1);
    store_n(0, 3, buf, it);
    for (i = 0; i < 3; i++)
        ck_assert_int_eq(it[i].result, 0);
    store_n(3, 3, buf, it);
    for (i = 0; i < 3; i++)
        ck_assert_int_eq(it[i].result, -ENOSPC);
    store_n(6, 3, buf, it);
    for (i = 0; i < 3; i++)
        ck_assert_int_eq(it[i].result, 0);
    /* the failed store left nothing behind */
    for (i = 0; i < 3; i++)
        set_key(&it[i], 3 + i);
    call(KVCD_L2_LOOKUP, it, 3);
    for (i = 0; i < 3; i++)
        ck_assert_int_eq(it[i].result, KVCD_ENOTFOUND);
    free(buf);
}
END_TEST

static void pattern(const char *json, int *failed, size_t n)
{
    kvcd_l2_item_t it[200];
    void *buf = kvcd_test_buf(4096);
    size_t i;

    create_w(json, 1);
    store_n(0, n, buf, it);
    for (i = 0; i < n; i++) {
        ck_assert(it[i].result == 0 || it[i].result == -EIO);
        failed[i] = it[i].result != 0;
    }
    /* exactly the keys that did not fail are visible */
    for (i = 0; i < n; i++)
        set_key(&it[i], i);
    call(KVCD_L2_LOOKUP, it, n);
    for (i = 0; i < n; i++)
        ck_assert_int_eq(it[i].result, failed[i] ? KVCD_ENOTFOUND : 0);
    ck_assert_int_eq(kvcd_test_run_pred(&loop, inflight_zero, l2, KVCD_TEST_WALL_MS), 0);
    kvcd_l2_destroy(l2);
    l2 = NULL;
    free(buf);
}

START_TEST(fault_probability_is_reproducible)
{
    static int a[200], b[200], c[200];
    size_t i, na = 0, diff = 0;

    pattern("{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail\":{\"store\":0.5},"
            "\"seed\":42}", a, 200);
    pattern("{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail\":{\"store\":0.5},"
            "\"seed\":42}", b, 200);
    pattern("{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail\":{\"store\":0.5},"
            "\"seed\":43}", c, 200);
    for (i = 0; i < 200; i++) {
        na += (size_t)a[i];
        ck_assert_int_eq(a[i], b[i]);
        diff += a[i] != c[i];
    }
    ck_assert_uint_gt(na, 60);
    ck_assert_uint_lt(na, 140);
    ck_assert_uint_gt(diff, 0);
}
END_TEST

START_TEST(fault_corrupt_load)
{
    kvcd_l2_item_t it;
    void *data = kvcd_test_buf(4096), *back = kvcd_test_buf(4096);
    json_t *st;

    create("{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"corrupt\":{\"load\":1}}");
    kvcd_fill_random(data, 4096, 5);
    set_key(&it, 0);
    it.buf = data;
    it.len = 4096;
    call(KVCD_L2_STORE, &it, 1);
    ck_assert_int_eq(it.result, 0);
    it.buf = back;
    call(KVCD_L2_LOAD, &it, 1);
    ck_assert_int_eq(it.result, KVCD_ECHECKSUM);
    ck_assert_int_ne(memcmp(data, back, 4096), 0);
    /* lookups are not affected */
    call(KVCD_L2_LOOKUP, &it, 1);
    ck_assert_int_eq(it.result, 0);
    st = kvcd_l2_status(l2);
    ck_assert_int_eq(st_int(st, "injected_corruptions", NULL), 1);
    ck_assert_int_eq(st_int(st, "item_errors", "ECHECKSUM"), 1);
    json_decref(st);
    free(data);
    free(back);
}
END_TEST

START_TEST(fault_delay_and_status)
{
    kvcd_l2_item_t it;
    json_t *st, *inner;
    uint64_t t0;

    create("{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"delay_ms\":{\"lookup\":100}}");
    set_key(&it, 0);
    t0 = kvcd_test_now_ns();
    call(KVCD_L2_LOOKUP, &it, 1);
    ck_assert_uint_ge(MS(kvcd_test_now_ns() - t0), 99);
    ck_assert_int_eq(it.result, KVCD_ENOTFOUND);
    st = kvcd_l2_status(l2);
    ck_assert_int_eq(st_int(st, "delayed_calls", "lookup"), 1);
    ck_assert_int_eq(st_int(st, "delayed_calls", "store"), 0);
    ck_assert_int_eq(st_int(st, "injected_failures", "lookup"), 0);
    inner = json_object_get(st, "inner");
    ck_assert_int_eq(st_int(inner, "capacity_bytes", NULL), 1 << 30);
    ck_assert(json_is_true(json_object_get(st, "healthy")));
    json_decref(st);
}
END_TEST

static Suite *runner_suite(void)
{
    Suite *s = suite_create("l2_runner");
    TCase *r = tcase_create("runner"), *m = tcase_create("mock"), *f = tcase_create("fault");

    tcase_add_checked_fixture(r, setup, teardown);
    tcase_add_checked_fixture(m, setup, teardown);
    tcase_add_checked_fixture(f, setup, teardown);
    tcase_set_timeout(r, 20);
    tcase_set_timeout(m, 20);
    tcase_set_timeout(f, 20);

    tcase_add_test(r, async_completes_later);
    tcase_add_test(r, async_completing_inside_the_call);
    tcase_add_test(r, async_timeout_discards_late_completion);
    tcase_add_test(r, empty_request_completes_later);
    tcase_add_test(r, unknown_operation_is_an_error);
    tcase_add_test(r, blocking_batch_split_over_workers);
    tcase_add_test(r, one_worker_one_call);
    tcase_add_test(r, touch_through_the_executor);
    tcase_add_test(r, background_counts_in_flight);
    tcase_add_test(r, unanswered_items_count_as_failures);
    tcase_add_test(r, health_after_consecutive_failures);
    tcase_add_test(r, test_item16_lookups_do_not_hide_failing_stores);
    tcase_add_test(r, timeouts_make_unhealthy);
    tcase_add_test(r, misses_are_not_failures);
    tcase_add_test(r, callback_may_destroy_the_instance);
    tcase_add_test(r, destroy_with_calls_in_flight_is_deferred);
    suite_add_tcase(s, r);

    tcase_add_test(m, mock_fifo_eviction);
    tcase_add_test(m, mock_short_buffer);
    tcase_add_test(m, mock_bandwidth_and_latency);
    tcase_add_test(m, mock_many_keys_concurrently);
    suite_add_tcase(s, m);

    tcase_add_test(f, fault_fail_calls_by_index);
    tcase_add_test(f, fault_probability_is_reproducible);
    tcase_add_test(f, fault_corrupt_load);
    tcase_add_test(f, fault_delay_and_status);
    suite_add_tcase(s, f);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(runner_suite());
    int failed;

    setenv("UV_THREADPOOL_SIZE", "8", 0);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
