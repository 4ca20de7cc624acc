/*
 * l2_support.h - helpers for tests that drive L2 instances on a libuv loop:
 * run the loop until something happened (with a hard wall-clock limit, so a
 * bug fails the test instead of hanging it), make test keys, submit a call and
 * wait for it.
 */
#ifndef KVCD_TEST_L2_SUPPORT_H
#define KVCD_TEST_L2_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "daemon/l2.h"

#define KVCD_TEST_WALL_MS 5000 /* default limit for one wait */

/* Run loop until *flag != 0 or limit_ms of wall-clock time passed (or nothing
 * is left that could set it). 0 when the flag is set, -1 otherwise. */
int kvcd_test_run_until(uv_loop_t *loop, const int *flag, uint64_t limit_ms);

/* The same with a predicate. */
int kvcd_test_run_pred(uv_loop_t *loop, int (*pred)(void *arg), void *arg, uint64_t limit_ms);

/* Run until no handle or request is left. 0, or -1 after limit_ms. */
int kvcd_test_drain(uv_loop_t *loop, uint64_t limit_ms);

/* A key that borrows from this struct (do not move it after kvcd_test_key). */
typedef struct {
    kvcd_key_t k;
    uint8_t hash[32];
    char model[32];
    char salt[16];
} kvcd_test_key_t;

/* Key number `id`; odd ids get a cache salt and group 1, to vary the fields. */
void kvcd_test_key(kvcd_test_key_t *t, uint64_t id);

/* One submitted call and what happened to it. */
typedef struct {
    kvcd_l2_req_t req;
    int done, released;
    int inside_submit; /* set while kvcd_l2_submit runs: cb must not fire then */
    int cb_in_submit;  /* the cb fired inside kvcd_l2_submit (a bug) */
    uint64_t submit_ns, done_ns, released_ns;
} kvcd_test_call_t;

/* Fill c and submit it (the callbacks set the flags and times). */
void kvcd_test_submit(kvcd_test_call_t *c, kvcd_l2_t *l2, kvcd_l2_op_t op, kvcd_l2_item_t *items,
                      size_t n, uint64_t timeout_ms);

/* Submit and run the loop until the call is released. 0, or -1 on the limit. */
int kvcd_test_call(uv_loop_t *loop, kvcd_l2_t *l2, kvcd_l2_op_t op, kvcd_l2_item_t *items,
                   size_t n, uint64_t timeout_ms);

/* A zeroed buffer of at least len bytes, 4096-aligned (free with free()). */
void *kvcd_test_buf(size_t len);

/* Nanoseconds since an arbitrary point (monotonic). */
uint64_t kvcd_test_now_ns(void);

#endif
