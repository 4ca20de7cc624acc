/*
 * test_oom.c - out of memory in the storage layer and the L2 runner (issue 9,
 * item 15): every allocation a REMOVE, a LOOKUP or an L2 submit makes is made
 * to fail in turn; each must still call back exactly once, with no double
 * free, no leak (the sanitizer build checks) and no abort.
 *
 * This binary is linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc
 * (see the Makefile), so the core's own allocations go through the wrappers
 * below; libc's and the libraries' do not. Only the test's thread is armed.
 * On beac8c1 the REMOVE case double-freed (copy_keys freed the job's keys,
 * the caller freed them again) and the runner called abort().
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "conf/options.h"
#include "daemon/l1.h"
#include "daemon/l2.h"
#include "daemon/storage.h"
#include "protocol/client.h"
#include "protocol/kvcd_err.h"
#include "protocol/proto.h"
#include "tests/support.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);

static __thread long countdown = -1; /* allocations left before one fails */
static __thread long failed;

static int fail_now(void)
{
    if (countdown < 0)
        return 0;
    if (countdown-- == 0) {
        failed++;
        return 1;
    }
    return 0;
}

void *__wrap_malloc(size_t n)
{
    return fail_now() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t m)
{
    return fail_now() ? NULL : __real_calloc(n, m);
}

void *__wrap_realloc(void *p, size_t n)
{
    return fail_now() ? NULL : __real_realloc(p, n);
}

static uv_loop_t loop;
static kvcd_options_t opt;
static kvcd_l1_t *l1;
static kvcd_storage_t *st;
static kvcd_req_t req;
static char *hdr;
static int calls;

static void setup(void)
{
    char err[256];
    const char *argv[] = {"kvcd", "--l2-adapter", "{\"type\":\"mock\"}", "--l2-adapter",
                          "{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"}}", NULL};
    kvcd_l1_config_t cfg;
    kvcd_wbuf_t w;
    kvcd_key_t base;
    kvcd_bytes_t h[4];
    uint8_t hb[4][8];
    size_t len, i;

    ck_assert_int_eq(uv_loop_init(&loop), 0);
    ck_assert_int_eq(kvcd_options_parse(5, (char **)argv, &opt, err, sizeof(err)), 0);
    memset(&cfg, 0, sizeof(cfg));
    cfg.capacity = 16u << 20;
    cfg.policy = KVCD_EVICT_LRU;
    ck_assert_int_eq(kvcd_l1_create(&cfg, &l1), 0);
    ck_assert_int_eq(kvcd_storage_create(&loop, &opt, l1, &st, err, sizeof(err)), 0);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    for (i = 0; i < 4; i++)
        h[i] = kvcd_test_hash(hb[i], i + 1);
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req(&w, 1, KVCD_OP_REMOVE, &base, h, 4);
    hdr = kvcd_wbuf_release(&w, &len);
    ck_assert_int_eq(kvcd_proto_decode_req(hdr, len, 4096, &req, err, sizeof(err)), 0);
}

static void teardown(void)
{
    kvcd_proto_req_free(&req);
    free(hdr);
    kvcd_storage_stop(st);
    uv_run(&loop, UV_RUN_DEFAULT);
    kvcd_storage_destroy(st);
    kvcd_l1_destroy(l1);
    kvcd_options_free(&opt);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    kvcd_l2_registry_reset();
}

static void remove_cb(void *data, const int *results)
{
    calls++;
}

static void lookup_cb(void *data, size_t prefix, const uint8_t *present,
                      kvcd_obj_t *const *objs)
{
    calls++;
}

static void do_remove(void)
{
    kvcd_storage_remove(st, &req, remove_cb, NULL);
}

static void do_lookup(void)
{
    kvcd_storage_lookup(st, &req, lookup_cb, NULL);
}

/* Fail allocation k (k = 0, 1, ...) of one operation, until an operation
 * makes no allocation that fails: each must call back exactly once. */
static void fail_each_allocation(void (*op)(void))
{
    long k;

    for (k = 0; k < 200; k++) {
        calls = 0;
        failed = 0;
        countdown = k;
        op();
        countdown = -1;
        uv_run(&loop, UV_RUN_DEFAULT);
        ck_assert_msg(calls == 1, "allocation %ld failed: %d callbacks", k, calls);
        if (!failed)
            break; /* every allocation of the operation has been failed once */
    }
    ck_assert_int_lt(k, 200);
    ck_assert_int_gt(k, 2);
}

START_TEST(test_item15_remove_out_of_memory)
{
    fail_each_allocation(do_remove);
}
END_TEST

START_TEST(test_item15_lookup_out_of_memory)
{
    fail_each_allocation(do_lookup);
}
END_TEST

/* The runner: a submit whose run cannot be allocated completes with -ENOMEM
 * on a later loop turn (beac8c1: abort()). */
static int l2_calls;

static void l2_cb(kvcd_l2_req_t *r)
{
    l2_calls++;
}

START_TEST(test_item15_runner_out_of_memory)
{
    kvcd_adapter_env_t env;
    kvcd_l2_item_t items[2];
    kvcd_l2_req_t r;
    kvcd_l2_t *l2;
    json_t *spec = json_pack("{s:s}", "type", "mock");
    char err[256];
    kvcd_key_t k;
    size_t i;

    memset(&env, 0, sizeof(env));
    env.max_workers = 2;
    ck_assert_int_eq(kvcd_l2_create(&loop, spec, 1, &env, 1000, &l2, err, sizeof(err)), 0);
    json_decref(spec);
    memset(items, 0, sizeof(items));
    for (i = 0; i < 2; i++) {
        kvcd_req_key(&req, i, &k);
        items[i].key = k;
    }
    memset(&r, 0, sizeof(r));
    r.op = KVCD_L2_LOOKUP;
    r.items = items;
    r.n = 2;
    r.cb = l2_cb;
    countdown = 0; /* the run's allocation */
    kvcd_l2_submit(l2, &r);
    countdown = -1;
    ck_assert_int_eq(l2_calls, 0); /* never inside submit */
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(l2_calls, 1);
    for (i = 0; i < 2; i++)
        ck_assert_int_eq(items[i].result, -ENOMEM);
    kvcd_l2_destroy(l2);
    uv_run(&loop, UV_RUN_DEFAULT);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("oom");
    TCase *t = tcase_create("storage");

    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, test_item15_remove_out_of_memory);
    tcase_add_test(t, test_item15_lookup_out_of_memory);
    tcase_add_test(t, test_item15_runner_out_of_memory);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    return kvcd_test_run(suite());
}
