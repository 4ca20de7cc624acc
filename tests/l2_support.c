/*
 * l2_support.c - loop and L2 call helpers for the tests (see l2_support.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/l2_support.h"

uint64_t kvcd_test_now_ns(void)
{
    return uv_hrtime();
}

static void wake_cb(uv_timer_t *t)
{
}

static int flag_set(void *arg)
{
    return *(const int *)arg != 0;
}

int kvcd_test_run_pred(uv_loop_t *loop, int (*pred)(void *arg), void *arg, uint64_t limit_ms)
{
    uint64_t end = uv_hrtime() + limit_ms * 1000000ull;
    uv_timer_t guard;
    int ok;

    /* The guard only wakes uv_run up; unreferenced, it keeps nothing alive. */
    uv_timer_init(loop, &guard);
    uv_timer_start(&guard, wake_cb, limit_ms, 0);
    uv_unref((uv_handle_t *)&guard);
    while (!pred(arg) && uv_hrtime() < end)
        if (!uv_run(loop, UV_RUN_ONCE) && !pred(arg))
            break; /* nothing is left that could change anything */
    ok = pred(arg);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok ? 0 : -1;
}

int kvcd_test_run_until(uv_loop_t *loop, const int *flag, uint64_t limit_ms)
{
    return kvcd_test_run_pred(loop, flag_set, (void *)flag, limit_ms);
}

static int loop_idle(void *arg)
{
    return !uv_loop_alive(arg);
}

int kvcd_test_drain(uv_loop_t *loop, uint64_t limit_ms)
{
    return kvcd_test_run_pred(loop, loop_idle, loop, limit_ms);
}

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void kvcd_test_key(kvcd_test_key_t *t, uint64_t id)
{
    uint64_t h = mix(id);
    size_t i;

    memset(t, 0, sizeof(*t));
    for (i = 0; i < sizeof(t->hash); i++) {
        if (i % 8 == 0)
            h = mix(h);
        t->hash[i] = (uint8_t)(h >> (8 * (i % 8)));
    }
    snprintf(t->model, sizeof(t->model), "org/test-model");
    t->k.model = t->model;
    t->k.model_len = (uint32_t)strlen(t->model);
    t->k.hash = t->hash;
    t->k.hash_len = sizeof(t->hash);
    t->k.kv_rank = kvcd_kv_rank(2, 1);
    if (id & 1) {
        snprintf(t->salt, sizeof(t->salt), "salt%u", (unsigned)(id % 100));
        t->k.salt = t->salt;
        t->k.salt_len = (uint32_t)strlen(t->salt);
        t->k.group = 1;
    }
}

static void call_cb(kvcd_l2_req_t *req)
{
    kvcd_test_call_t *c = req->data;

    if (c->inside_submit)
        c->cb_in_submit = 1;
    c->done++;
    c->done_ns = uv_hrtime();
}

static void call_release(kvcd_l2_req_t *req)
{
    kvcd_test_call_t *c = req->data;

    c->released++;
    c->released_ns = uv_hrtime();
}

void kvcd_test_submit(kvcd_test_call_t *c, kvcd_l2_t *l2, kvcd_l2_op_t op, kvcd_l2_item_t *items,
                      size_t n, uint64_t timeout_ms)
{
    memset(c, 0, sizeof(*c));
    c->req.op = op;
    c->req.items = items;
    c->req.n = n;
    c->req.timeout_ms = timeout_ms;
    c->req.cb = call_cb;
    c->req.release = call_release;
    c->req.data = c;
    c->submit_ns = uv_hrtime();
    c->inside_submit = 1;
    kvcd_l2_submit(l2, &c->req);
    c->inside_submit = 0;
}

int kvcd_test_call(uv_loop_t *loop, kvcd_l2_t *l2, kvcd_l2_op_t op, kvcd_l2_item_t *items,
                   size_t n, uint64_t timeout_ms)
{
    kvcd_test_call_t c;

    kvcd_test_submit(&c, l2, op, items, n, timeout_ms);
    if (kvcd_test_run_until(loop, &c.released, KVCD_TEST_WALL_MS) != 0)
        return -1;
    return c.done == 1 && c.released == 1 && !c.cb_in_submit ? 0 : -1;
}

void *kvcd_test_buf(size_t len)
{
    size_t n = (len + 4095) / 4096 * 4096;
    void *p = aligned_alloc(4096, n ? n : 4096);

    if (p)
        memset(p, 0, n ? n : 4096);
    return p;
}
