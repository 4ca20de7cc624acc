/*
 * test_l2_contract.c - the L2 adapter contract suite.
 *
 * Every adapter config in configs[] runs the same cases through the real
 * runner (kvcd_l2_create + kvcd_l2_submit on a libuv loop): round trip, miss,
 * batch with partial hits, duplicate store, remove, corrupt object -> miss,
 * deadline, close with work in flight. Covering a new adapter means adding one
 * line to configs[]; a config whose adapter type is not built is skipped.
 *
 * The deadline and close cases (and corruption, for adapters without a hook
 * that damages the bytes at rest) wrap the config in the fault adapter, so
 * they apply to every blocking adapter without adapter-specific code. The
 * fault adapter wraps blocking adapters only: a config of an asynchronous
 * adapter gives a `stall` hook (make its server unresponsive for a while)
 * that those cases use instead. A config whose adapter talks to a server
 * starts a private one per case (`start`/`stop`).
 */
#include <check.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapters/object/format.h"
#include "daemon/l2.h"
#include "tests/l2_support.h"
#include "tests/redis_support.h"
#include "tests/support.h"

#define TIMEOUT_DEFAULT_MS 3000

typedef struct {
    const char *name;
    const char *spec;      /* the adapter's JSON spec */
    const char *dir_field; /* field set to a fresh private directory, or NULL */
    /* Damage the stored bytes of key k at rest (0 when exactly one object was
     * damaged). NULL: the corruption case wraps the config in fault's
     * "corrupt" instead. */
    int (*corrupt)(const char *dir, const kvcd_key_t *k);
    /* Start a private server in dir and put its address into spec (0 or -1);
     * stop it after the case. NULL: no server. */
    int (*start)(const char *dir, json_t *spec);
    void (*stop)(const char *dir);
    /* Make the server leave every command unanswered for ms (0 or -1). NULL:
     * the deadline and close cases use fault's delay_ms instead. */
    int (*stall)(const char *dir, int ms);
} config_t;

static int fs_corrupt(const char *dir, const kvcd_key_t *k);
static int redis_corrupt(const char *dir, const kvcd_key_t *k);
static int redis_start(const char *dir, json_t *spec);
static void redis_stop(const char *dir);
static int redis_stall(const char *dir, int ms);

/* The one table: every adapter config the contract runs against. */
static const config_t configs[] = {
    {"mock", "{\"type\":\"mock\"}", NULL, NULL, NULL, NULL, NULL},
    {"fault(mock)", "{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"}}", NULL, NULL, NULL,
     NULL, NULL},
    {"fs", "{\"type\":\"fs\"}", "base_path", fs_corrupt, NULL, NULL, NULL},
    {"redis", "{\"type\":\"redis\"}", NULL, redis_corrupt, redis_start, redis_stop, redis_stall},
};

#define NCONFIGS (sizeof(configs) / sizeof(configs[0]))

static const config_t *active[NCONFIGS];
static size_t nactive;

/* ---- fixture ---- */

static uv_loop_t loop;
static kvcd_l2_t *l2;
static const config_t *cfg;
static char dir[256];

#define REQ(cond, ...)                                                                             \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg("[%s] %s: %s", cfg ? cfg->name : "?", #cond, tmsg(__VA_ARGS__));         \
    } while (0)

static const char *tmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static const char *tmsg(const char *fmt, ...)
{
    static char buf[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return buf;
}

static void setup(void)
{
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    snprintf(dir, sizeof(dir), "/tmp/kvcd-l2c-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    l2 = NULL;
    cfg = NULL;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int inflight_zero(void *arg)
{
    return kvcd_l2_inflight(arg) == 0;
}

static void close_instance(void)
{
    if (!l2)
        return;
    REQ(kvcd_test_run_pred(&loop, inflight_zero, l2, KVCD_TEST_WALL_MS) == 0,
        "calls still in flight");
    kvcd_l2_destroy(l2);
    l2 = NULL;
}

static void teardown(void)
{
    close_instance();
    ck_assert_int_eq(kvcd_test_drain(&loop, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    if (cfg && cfg->stop)
        cfg->stop(dir);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static json_t *config_spec(const config_t *c)
{
    json_error_t jerr;
    json_t *spec = json_loads(c->spec, 0, &jerr);

    ck_assert_msg(spec, "bad spec in configs[]: %s", jerr.text);
    if (c->dir_field)
        json_object_set_new(spec, c->dir_field, json_string(dir));
    if (c->start)
        REQ(c->start(dir, spec) == 0, "could not start the server (see stderr)");
    return spec;
}

/* Create the instance and let its start-up work (adapter `background`) finish,
 * so the cases see only their own calls in flight. */
static void create(json_t *spec)
{
    kvcd_adapter_env_t env = {.arena_align = 4096, .max_workers = 4};
    char err[512] = "";
    int rc = kvcd_l2_create(&loop, spec, 1, &env, TIMEOUT_DEFAULT_MS, &l2, err, sizeof(err));

    json_decref(spec);
    REQ(rc == 0, "create: %s", err);
    REQ(kvcd_test_run_pred(&loop, inflight_zero, l2, KVCD_TEST_WALL_MS) == 0,
        "start-up work did not finish");
}

static void open_config(int i)
{
    cfg = active[i];
    create(config_spec(cfg));
}

/* The config wrapped in fault with the given extra fields (reference stolen). */
static void open_wrapped(int i, json_t *extra)
{
    json_t *w;

    cfg = active[i];
    w = json_pack("{s:s, s:o}", "type", "fault", "inner", config_spec(cfg));
    json_object_update(w, extra);
    json_decref(extra);
    create(w);
}

/* ---- objects ---- */

typedef struct {
    kvcd_test_key_t key;
    void *data;
    size_t len;
} tobj_t;

static tobj_t *objs_new(size_t n, uint64_t first_id, const size_t *sizes)
{
    tobj_t *o = calloc(n, sizeof(*o));
    size_t i;

    for (i = 0; i < n; i++) {
        kvcd_test_key(&o[i].key, first_id + i);
        o[i].len = sizes ? sizes[i] : 4096;
        o[i].data = kvcd_test_buf(o[i].len);
        kvcd_fill_random(o[i].data, o[i].len, first_id + i);
    }
    return o;
}

static void objs_free(tobj_t *o, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        free(o[i].data);
    free(o);
}

static void item_key(kvcd_l2_item_t *it, const tobj_t *o)
{
    memset(it, 0, sizeof(*it));
    it->key = o->key.k;
}

static void item_store(kvcd_l2_item_t *it, const tobj_t *o)
{
    item_key(it, o);
    it->buf = o->data;
    it->len = o->len;
}

static void item_load(kvcd_l2_item_t *it, const tobj_t *o, size_t cap)
{
    item_key(it, o);
    it->buf = kvcd_test_buf(cap);
    it->len = cap;
}

static void items_free_bufs(kvcd_l2_item_t *it, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        free(it[i].buf);
}

static void call(kvcd_l2_op_t op, kvcd_l2_item_t *items, size_t n)
{
    REQ(kvcd_test_call(&loop, l2, op, items, n, 0) == 0, "op %d on %zu keys did not complete",
        (int)op, n);
}

static void store_all(tobj_t *o, size_t n)
{
    kvcd_l2_item_t *it = calloc(n, sizeof(*it));
    size_t i;

    for (i = 0; i < n; i++)
        item_store(&it[i], &o[i]);
    call(KVCD_L2_STORE, it, n);
    for (i = 0; i < n; i++)
        REQ(it[i].result == 0, "store key %zu: %s", i, kvcd_errname(it[i].result));
    free(it);
}

/* ---- cases ---- */

START_TEST(round_trip)
{
    static const size_t sizes[] = {4096,  8192, 1u << 20, 12345, 3 * 4096, 100,
                                   (1u << 20) + 4096, 1};
    size_t n = sizeof(sizes) / sizeof(sizes[0]), i;
    tobj_t *o = objs_new(n, 100, sizes);
    kvcd_l2_item_t it[8];
    json_t *st;

    open_config(_i);
    store_all(o, n);

    for (i = 0; i < n; i++)
        item_key(&it[i], &o[i]);
    call(KVCD_L2_LOOKUP, it, n);
    for (i = 0; i < n; i++) {
        REQ(it[i].result == 0, "lookup key %zu: %s", i, kvcd_errname(it[i].result));
        REQ(it[i].size == sizes[i], "lookup key %zu: size %zu", i, it[i].size);
    }

    for (i = 0; i < n; i++)
        item_load(&it[i], &o[i], sizes[i]);
    call(KVCD_L2_LOAD, it, n);
    for (i = 0; i < n; i++) {
        REQ(it[i].result == 0, "load key %zu: %s", i, kvcd_errname(it[i].result));
        REQ(it[i].size == sizes[i], "load key %zu: size %zu", i, it[i].size);
        REQ(memcmp(it[i].buf, o[i].data, sizes[i]) == 0, "load key %zu: bytes differ", i);
    }
    items_free_bufs(it, n);

    st = kvcd_l2_status(l2);
    REQ(json_is_true(json_object_get(st, "healthy")), "status not healthy");
    REQ(json_integer_value(json_object_get(st, "calls")) == 3, "status calls");
    REQ(json_integer_value(json_object_get(st, "failures")) == 0, "status failures");
    json_decref(st);
    objs_free(o, n);
}
END_TEST

START_TEST(miss)
{
    tobj_t *stored = objs_new(1, 200, NULL), *o = objs_new(3, 210, NULL);
    kvcd_l2_item_t it[3];
    size_t i;

    open_config(_i);
    /* an empty adapter, then one holding other keys */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            store_all(stored, 1);
        for (i = 0; i < 3; i++)
            item_key(&it[i], &o[i]);
        call(KVCD_L2_LOOKUP, it, 3);
        for (i = 0; i < 3; i++)
            REQ(it[i].result == KVCD_ENOTFOUND, "lookup %zu: %s", i,
                kvcd_errname(it[i].result));
        for (i = 0; i < 3; i++)
            item_load(&it[i], &o[i], 4096);
        call(KVCD_L2_LOAD, it, 3);
        for (i = 0; i < 3; i++)
            REQ(it[i].result == KVCD_ENOTFOUND, "load %zu: %s", i, kvcd_errname(it[i].result));
        items_free_bufs(it, 3);
    }
    REQ(kvcd_l2_healthy(l2), "misses made the instance unhealthy");
    objs_free(stored, 1);
    objs_free(o, 3);
}
END_TEST

START_TEST(batch_partial_hits)
{
    static const size_t sizes[] = {4096, 8192, 4096, 65536, 4096, 12288, 4096, 8192, 4096, 4096};
    size_t n = 10, i, ne = 0;
    tobj_t *o = objs_new(n, 300, sizes), even[5];
    kvcd_l2_item_t it[10];

    open_config(_i);
    for (i = 0; i < n; i += 2)
        even[ne++] = o[i];
    store_all(even, ne);

    for (i = 0; i < n; i++)
        item_key(&it[i], &o[i]);
    call(KVCD_L2_LOOKUP, it, n);
    for (i = 0; i < n; i++) {
        if (i % 2 == 0) {
            REQ(it[i].result == 0, "lookup %zu: %s", i, kvcd_errname(it[i].result));
            REQ(it[i].size == sizes[i], "lookup %zu: size %zu", i, it[i].size);
        } else {
            REQ(it[i].result == KVCD_ENOTFOUND, "lookup %zu: %s", i,
                kvcd_errname(it[i].result));
        }
    }
    for (i = 0; i < n; i++)
        item_load(&it[i], &o[i], sizes[i]);
    call(KVCD_L2_LOAD, it, n);
    for (i = 0; i < n; i++) {
        if (i % 2 == 0) {
            REQ(it[i].result == 0, "load %zu: %s", i, kvcd_errname(it[i].result));
            REQ(memcmp(it[i].buf, o[i].data, sizes[i]) == 0, "load %zu: bytes differ", i);
        } else {
            REQ(it[i].result == KVCD_ENOTFOUND, "load %zu: %s", i, kvcd_errname(it[i].result));
        }
    }
    items_free_bufs(it, n);
    objs_free(o, n);
}
END_TEST

START_TEST(duplicate_store)
{
    static const size_t sizes[] = {65536, 4096};
    tobj_t *o = objs_new(2, 400, sizes);
    kvcd_l2_item_t it[3];
    size_t i;

    open_config(_i);
    /* the same key twice in one batch (possibly on two workers at once) */
    item_store(&it[0], &o[0]);
    item_store(&it[1], &o[0]);
    item_store(&it[2], &o[1]);
    call(KVCD_L2_STORE, it, 3);
    for (i = 0; i < 3; i++)
        REQ(it[i].result == 0, "store %zu: %s", i, kvcd_errname(it[i].result));
    /* and again in a later batch */
    item_store(&it[0], &o[0]);
    call(KVCD_L2_STORE, it, 1);
    REQ(it[0].result == 0, "second store: %s", kvcd_errname(it[0].result));

    item_key(&it[0], &o[0]);
    item_key(&it[1], &o[1]);
    call(KVCD_L2_LOOKUP, it, 2);
    for (i = 0; i < 2; i++) {
        REQ(it[i].result == 0, "lookup %zu: %s", i, kvcd_errname(it[i].result));
        REQ(it[i].size == sizes[i], "lookup %zu: size %zu", i, it[i].size);
    }
    item_load(&it[0], &o[0], sizes[0]);
    item_load(&it[1], &o[1], sizes[1]);
    call(KVCD_L2_LOAD, it, 2);
    for (i = 0; i < 2; i++) {
        REQ(it[i].result == 0, "load %zu: %s", i, kvcd_errname(it[i].result));
        REQ(memcmp(it[i].buf, o[i].data, sizes[i]) == 0, "load %zu: bytes differ", i);
    }
    items_free_bufs(it, 2);
    objs_free(o, 2);
}
END_TEST

START_TEST(remove_then_miss)
{
    tobj_t *o = objs_new(3, 500, NULL);
    kvcd_l2_item_t it[2];

    open_config(_i);
    store_all(o, 2);
    item_key(&it[0], &o[0]);
    call(KVCD_L2_REMOVE, it, 1);
    REQ(it[0].result == 0, "remove: %s", kvcd_errname(it[0].result));

    item_key(&it[0], &o[0]);
    item_key(&it[1], &o[1]);
    call(KVCD_L2_LOOKUP, it, 2);
    REQ(it[0].result == KVCD_ENOTFOUND, "lookup removed: %s", kvcd_errname(it[0].result));
    REQ(it[1].result == 0, "lookup kept: %s", kvcd_errname(it[1].result));
    item_load(&it[0], &o[0], 4096);
    call(KVCD_L2_LOAD, it, 1);
    REQ(it[0].result == KVCD_ENOTFOUND, "load removed: %s", kvcd_errname(it[0].result));
    items_free_bufs(it, 1);

    /* removing what is not there: done or a miss, never a failure */
    item_key(&it[0], &o[0]);
    item_key(&it[1], &o[2]);
    call(KVCD_L2_REMOVE, it, 2);
    REQ(it[0].result == 0 || it[0].result == KVCD_ENOTFOUND, "remove again: %s",
        kvcd_errname(it[0].result));
    REQ(it[1].result == 0 || it[1].result == KVCD_ENOTFOUND, "remove unknown: %s",
        kvcd_errname(it[1].result));
    objs_free(o, 3);
}
END_TEST

/* A load of a damaged object is a miss (ENOTFOUND, or ECHECKSUM which the
 * daemon counts as a miss), never a success with the wrong bytes. */
static void require_bad_load(const tobj_t *o, const char *when)
{
    kvcd_l2_item_t it;

    item_load(&it, o, o->len);
    call(KVCD_L2_LOAD, &it, 1);
    REQ(it.result == KVCD_ENOTFOUND || it.result == KVCD_ECHECKSUM, "%s: load gave %s", when,
        kvcd_errname(it.result));
    free(it.buf);
}

START_TEST(corrupt_object_is_a_miss)
{
    tobj_t *o = objs_new(1, 600, NULL);
    kvcd_l2_item_t it;

    if (active[_i]->corrupt) {
        open_config(_i);
        store_all(o, 1);
        REQ(cfg->corrupt(dir, &o[0].key.k) == 0, "could not damage the stored object");
        require_bad_load(&o[0], "first load");
        require_bad_load(&o[0], "second load");
        /* a damaged object must not block storing the key again */
        store_all(o, 1);
        item_load(&it, &o[0], o[0].len);
        call(KVCD_L2_LOAD, &it, 1);
        REQ(it.result == 0, "load after re-store: %s", kvcd_errname(it.result));
        REQ(memcmp(it.buf, o[0].data, o[0].len) == 0, "bytes after re-store differ");
        free(it.buf);
    } else {
        open_wrapped(_i, json_pack("{s:{s:f}}", "corrupt", "load", 1.0));
        store_all(o, 1);
        require_bad_load(&o[0], "load");
    }
    objs_free(o, 1);
}
END_TEST

START_TEST(deadline)
{
    tobj_t *o = objs_new(2, 700, NULL);
    kvcd_l2_item_t it[2];
    kvcd_test_call_t c;
    json_t *st;
    size_t i;

    if (active[_i]->stall)
        open_config(_i);
    else
        open_wrapped(_i, json_pack("{s:{s:i}}", "delay_ms", "load", 400));
    store_all(o, 2);
    if (cfg->stall)
        REQ(cfg->stall(dir, 400) == 0, "could not stall the server");
    for (i = 0; i < 2; i++)
        item_load(&it[i], &o[i], 4096);
    kvcd_test_submit(&c, l2, KVCD_L2_LOAD, it, 2, 50);
    REQ(!c.done && !c.cb_in_submit, "callback inside submit");
    REQ(kvcd_l2_inflight(l2) == 1, "inflight %zu", kvcd_l2_inflight(l2));

    REQ(kvcd_test_run_until(&loop, &c.done, KVCD_TEST_WALL_MS) == 0, "no callback");
    REQ(c.req.timed_out, "timed_out not set");
    for (i = 0; i < 2; i++)
        REQ(it[i].result == KVCD_ETIMEDOUT, "key %zu: %s", i, kvcd_errname(it[i].result));
    REQ((c.done_ns - c.submit_ns) / 1000000 >= 45, "callback after %llu ms",
        (unsigned long long)((c.done_ns - c.submit_ns) / 1000000));
    REQ((c.done_ns - c.submit_ns) / 1000000 < 350, "callback only after %llu ms",
        (unsigned long long)((c.done_ns - c.submit_ns) / 1000000));
    REQ(!c.released, "released while the worker still holds the buffers");
    REQ(kvcd_l2_inflight(l2) == 1, "timed-out call not counted in flight");

    REQ(kvcd_test_run_until(&loop, &c.released, KVCD_TEST_WALL_MS) == 0, "never released");
    REQ((c.released_ns - c.submit_ns) / 1000000 >= 390, "released after %llu ms",
        (unsigned long long)((c.released_ns - c.submit_ns) / 1000000));
    REQ(c.done == 1 && c.released == 1, "cb %d release %d", c.done, c.released);
    for (i = 0; i < 2; i++)
        REQ(it[i].result == KVCD_ETIMEDOUT, "late result not discarded: key %zu: %s", i,
            kvcd_errname(it[i].result));
    REQ(kvcd_l2_inflight(l2) == 0, "inflight %zu", kvcd_l2_inflight(l2));
    items_free_bufs(it, 2);

    st = kvcd_l2_status(l2);
    REQ(json_integer_value(json_object_get(st, "timeouts")) == 1, "status timeouts");
    REQ(json_integer_value(json_object_get(st, "late_completions")) == 1, "status late");
    json_decref(st);
    objs_free(o, 2);
}
END_TEST

START_TEST(close_with_work_in_flight)
{
    tobj_t *o = objs_new(4, 800, NULL);
    kvcd_l2_item_t st_it[4], lk_it[4];
    kvcd_test_call_t slow, fast;
    size_t i;

    if (active[_i]->stall) {
        open_config(_i);
        REQ(cfg->stall(dir, 300) == 0, "could not stall the server");
    } else {
        open_wrapped(_i, json_pack("{s:{s:i}}", "delay_ms", "store", 300));
    }
    for (i = 0; i < 4; i++) {
        item_store(&st_it[i], &o[i]);
        item_key(&lk_it[i], &o[i]);
    }
    kvcd_test_submit(&slow, l2, KVCD_L2_STORE, st_it, 4, 50);
    kvcd_test_submit(&fast, l2, KVCD_L2_LOOKUP, lk_it, 4, 0);
    REQ(kvcd_l2_inflight(l2) == 2, "inflight %zu after two submits", kvcd_l2_inflight(l2));

    REQ(kvcd_test_run_until(&loop, &slow.done, KVCD_TEST_WALL_MS) == 0, "no callback");
    REQ(slow.req.timed_out, "slow store did not time out");
    REQ(!slow.released, "released while the store still runs");
    REQ(kvcd_l2_inflight(l2) >= 1, "timed-out work not counted in flight");

    /* the owner waits for inflight == 0 before destroying */
    REQ(kvcd_test_run_pred(&loop, inflight_zero, l2, KVCD_TEST_WALL_MS) == 0, "inflight stuck");
    REQ(slow.released == 1, "slow store not released");
    REQ(fast.done == 1 && fast.released == 1, "lookup cb %d release %d", fast.done,
        fast.released);
    kvcd_l2_destroy(l2);
    l2 = NULL;
    objs_free(o, 4);
}
END_TEST

/* ---- fs: damage the object file on disk ---- */

static char hash_hex[2 * KVCD_HASH_MAX + 1];
static int damaged;

static int damage_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    unsigned char b;
    off_t at;
    int fd;

    if (flag != FTW_F || !strstr(path + ftw->base, hash_hex) || st->st_size == 0)
        return 0;
    fd = open(path, O_RDWR);
    if (fd < 0)
        return 0;
    at = st->st_size / 2;
    if (pread(fd, &b, 1, at) == 1) {
        b ^= 0xff;
        if (pwrite(fd, &b, 1, at) == 1)
            damaged++;
    }
    close(fd);
    return 0;
}

static int fs_corrupt(const char *base, const kvcd_key_t *k)
{
    uint32_t i;

    for (i = 0; i < k->hash_len; i++)
        snprintf(hash_hex + 2 * i, 3, "%02x", k->hash[i]);
    damaged = 0;
    nftw(base, damage_one, 16, FTW_PHYS);
    return damaged == 1 ? 0 : -1;
}

/* ---- redis: a private server per case, on a unix socket in dir ---- */

static kvcd_redis_t redis;

static int redis_start(const char *d, json_t *spec)
{
    if (kvcd_redis_start(&redis, d, "redis", 0) != 0)
        return -1;
    json_object_set_new(spec, "unix", json_string(redis.sock));
    return 0;
}

static void redis_stop(const char *d)
{
    kvcd_redis_cleanup(&redis);
}

/* CLIENT PAUSE holds every client's commands (ours included) for ms. */
static int redis_stall(const char *d, int ms)
{
    return kvcd_redis_int(&redis, "CLIENT PAUSE %d ALL", ms) == 0 ? 0 : -1;
}

/* Flip one payload byte of the value in place (SETRANGE). */
static int redis_corrupt(const char *d, const kvcd_key_t *k)
{
    char name[KVCD_OBJ_NAME_MAX], byte;
    uint8_t dig[16];
    redisContext *c;
    redisReply *rep;
    size_t kl;
    long long len;
    int ok = 0;

    if (kvcd_obj_name(0, k, name, dig) != 0)
        return -1;
    kl = strlen(name) - strlen(KVCD_OBJ_NAME_SUFFIX);
    len = kvcd_redis_int(&redis, "STRLEN %b", name, kl);
    if (len <= KVCD_OBJ_TRL_SIZE || !(c = kvcd_redis_connect(&redis)))
        return -1;
    rep = redisCommand(c, "GETRANGE %b %lld %lld", name, kl, len / 2, len / 2);
    if (rep && rep->type == REDIS_REPLY_STRING && rep->len == 1) {
        byte = (char)(rep->str[0] ^ 0xff);
        freeReplyObject(rep);
        rep = redisCommand(c, "SETRANGE %b %lld %b", name, kl, len / 2, &byte, (size_t)1);
        ok = rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == len;
    }
    freeReplyObject(rep);
    redisFree(c);
    return ok ? 0 : -1;
}

static Suite *contract_suite(void)
{
    Suite *s = suite_create("l2_contract");
    TCase *tc = tcase_create("contract");
    int n = (int)nactive;

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, round_trip, 0, n);
    tcase_add_loop_test(tc, miss, 0, n);
    tcase_add_loop_test(tc, batch_partial_hits, 0, n);
    tcase_add_loop_test(tc, duplicate_store, 0, n);
    tcase_add_loop_test(tc, remove_then_miss, 0, n);
    tcase_add_loop_test(tc, corrupt_object_is_a_miss, 0, n);
    tcase_add_loop_test(tc, deadline, 0, n);
    tcase_add_loop_test(tc, close_with_work_in_flight, 0, n);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr;
    json_error_t jerr;
    size_t i;
    int failed;

    /* enough threads that a delayed call does not starve the next one */
    setenv("UV_THREADPOOL_SIZE", "8", 0);
    for (i = 0; i < NCONFIGS; i++) {
        json_t *spec = json_loads(configs[i].spec, 0, &jerr);
        const char *type = json_string_value(json_object_get(spec, "type"));

        if (type && kvcd_l2_find_type(type)) {
            active[nactive++] = &configs[i];
            printf("contract config %zu: %s\n", nactive - 1, configs[i].name);
        } else {
            printf("contract config %s: adapter type not built, skipped\n", configs[i].name);
        }
        json_decref(spec);
    }
    sr = srunner_create(contract_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
