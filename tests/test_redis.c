/*
 * test_redis.c - the redis L2 adapter against real redis-server processes.
 *
 * Adapter level (an instance on a private loop, as the contract suite runs
 * it): the hash ring's spread and minimal movement, spec errors, the key and
 * value format, AUTH from an environment variable and SELECT, host names over
 * TCP, unreachable servers, connect and command timeouts, a pipeline depth of
 * one, a connection killed in the middle of a store batch.
 *
 * Daemon level (the real kvcd binary): two daemons sharing one Redis; three
 * servers in `nodes` (spread, every key loads back, one server stopped and
 * restarted); Redis killed and restarted during a store batch.
 *
 * redis-server must be installed (scripts/install-deps.sh): without it the
 * cases fail, they do not skip. Every server a case starts dies with it.
 */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "adapters/object/format.h"
#include "adapters/redis/ring.h"
#include "daemon/l2.h"
#include "protocol/client.h"
#include "tests/l2_support.h"
#include "tests/redis_support.h"
#include "tests/support.h"

#define MiB (1u << 20)

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static void need_redis(void)
{
    ck_assert_msg(kvcd_redis_bin() != NULL,
                  "redis-server is not installed (scripts/install-deps.sh installs it); the "
                  "redis adapter cannot be tested without it");
}

static void start_redis(kvcd_redis_t *r, const char *dir, const char *name, int tcp)
{
    need_redis();
    ck_assert_msg(kvcd_redis_start(r, dir, name, tcp) == 0, "redis-server did not start");
}

/* ---- the hash ring ------------------------------------------------------------ */

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

START_TEST(ring_spread_and_movement)
{
    const char *ids4[] = {"unix:/run/a.sock", "10.0.0.2:6379", "10.0.0.3:6379", "cache-d"};
    const char *ids3r[] = {"10.0.0.3:6379", "unix:/run/a.sock", "10.0.0.2:6379"};
    enum { N = 200000 };
    kvcd_ring_t r3, r3r, r4;
    size_t cnt[4] = {0}, moved = 0, i;

    ck_assert_int_eq(kvcd_ring_build(&r3, ids4, 3, 512), 0);
    ck_assert_int_eq(kvcd_ring_build(&r3r, ids3r, 3, 512), 0);
    ck_assert_int_eq(kvcd_ring_build(&r4, ids4, 4, 512), 0);
    for (i = 0; i < N; i++) {
        uint64_t h = mix(i);
        uint32_t a = kvcd_ring_pick(&r3, h), b = kvcd_ring_pick(&r4, h);

        cnt[a]++;
        /* the order of the list does not matter, only the ids */
        ck_assert_str_eq(ids4[a], ids3r[kvcd_ring_pick(&r3r, h)]);
        if (a != b) {
            /* adding a node moves keys only to the new node */
            ck_assert_uint_eq(b, 3);
            moved++;
        }
    }
    printf("ring: 3 nodes x 512 points, %d keys: %zu / %zu / %zu (%.1f%% / %.1f%% / %.1f%%); "
           "adding a 4th moved %.1f%%\n",
           N, cnt[0], cnt[1], cnt[2], 100.0 * cnt[0] / N, 100.0 * cnt[1] / N,
           100.0 * cnt[2] / N, 100.0 * moved / N);
    for (i = 0; i < 3; i++)
        ck_assert_msg(cnt[i] > N * 0.28 && cnt[i] < N * 0.39, "node %zu has %zu of %d", i,
                      cnt[i], N);
    ck_assert_msg(moved > N * 0.20 && moved < N * 0.30, "adding a node moved %zu of %d", moved,
                  N);
    kvcd_ring_free(&r3);
    kvcd_ring_free(&r3r);
    kvcd_ring_free(&r4);
}
END_TEST

/* ---- adapter instances on a private loop ---------------------------------------- */

static uv_loop_t loop;
static kvcd_l2_t *l2;
static kvcd_redis_t rs;
static char tdir[64];

static void inst_setup(void)
{
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    snprintf(tdir, sizeof(tdir), "/tmp/kvcd-rt-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tdir));
    l2 = NULL;
    memset(&rs, 0, sizeof(rs));
}

static int inflight_zero(void *arg)
{
    return kvcd_l2_inflight(arg) == 0;
}

static int never(void *arg)
{
    return 0;
}

/* Run the loop for about ms. */
static void run_for(uint64_t ms)
{
    kvcd_test_run_pred(&loop, never, NULL, ms);
}

static void destroy(void)
{
    if (!l2)
        return;
    ck_assert_int_eq(kvcd_test_run_pred(&loop, inflight_zero, l2, KVCD_TEST_WALL_MS), 0);
    kvcd_l2_destroy(l2);
    l2 = NULL;
}

static void inst_teardown(void)
{
    char cmd[128];

    destroy();
    /* every handle the adapter opened is closed */
    ck_assert_int_eq(kvcd_test_drain(&loop, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    kvcd_redis_cleanup(&rs);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tdir);
    ck_assert_int_eq(system(cmd), 0);
}

static int try_create(const char *spec_text, char *err, size_t errlen)
{
    kvcd_adapter_env_t env = {.arena_align = 4096, .max_workers = 4};
    json_error_t jerr;
    json_t *spec = json_loads(spec_text, 0, &jerr);
    int rc;

    ck_assert_msg(spec, "bad test spec %s: %s", spec_text, jerr.text);
    err[0] = '\0';
    rc = kvcd_l2_create(&loop, spec, 1, &env, 3000, &l2, err, errlen);
    json_decref(spec);
    return rc;
}

static void create(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void create(const char *fmt, ...)
{
    char spec[2048], err[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(spec, sizeof(spec), fmt, ap);
    va_end(ap);
    ck_assert_msg(try_create(spec, err, sizeof(err)) == 0, "create %s: %s", spec, err);
}

static json_t *inst_status(void)
{
    return kvcd_l2_status(l2);
}

static json_t *node_status(json_t *st, size_t i)
{
    return json_array_get(json_object_get(st, "nodes"), i);
}

static int adapter_ready(void *arg)
{
    json_t *st = inst_status();
    json_t *nodes = json_object_get(st, "nodes");
    size_t i;
    int ok = json_array_size(nodes) > 0;

    for (i = 0; i < json_array_size(nodes); i++)
        ok &= !strcmp(json_string_value(json_object_get(json_array_get(nodes, i), "state")),
                      "ready");
    json_decref(st);
    return ok;
}

typedef struct {
    kvcd_test_key_t key;
    void *data;
    size_t len;
} tobj_t;

static tobj_t *objs_new(size_t n, uint64_t first, size_t len)
{
    tobj_t *o = calloc(n, sizeof(*o));
    size_t i;

    for (i = 0; i < n; i++) {
        kvcd_test_key(&o[i].key, first + i);
        o[i].len = len + i;
        o[i].data = kvcd_test_buf(o[i].len);
        kvcd_fill_random(o[i].data, o[i].len, first + i);
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

/* Run op on n objects; items[i].result holds the results (load buffers are
 * allocated here and freed by the caller through items_free). */
static kvcd_l2_item_t *run_op(kvcd_l2_op_t op, tobj_t *o, size_t n, uint64_t timeout_ms)
{
    kvcd_l2_item_t *it = calloc(n, sizeof(*it));
    size_t i;

    for (i = 0; i < n; i++) {
        it[i].key = o[i].key.k;
        if (op == KVCD_L2_STORE) {
            it[i].buf = o[i].data;
            it[i].len = o[i].len;
        } else if (op == KVCD_L2_LOAD) {
            it[i].buf = kvcd_test_buf(o[i].len);
            it[i].len = o[i].len;
        }
    }
    ck_assert_msg(kvcd_test_call(&loop, l2, op, it, n, timeout_ms) == 0, "op %d did not complete",
                  (int)op);
    return it;
}

static void items_free(kvcd_l2_item_t *it, size_t n, kvcd_l2_op_t op)
{
    size_t i;

    if (op == KVCD_L2_LOAD)
        for (i = 0; i < n; i++)
            free(it[i].buf);
    free(it);
}

static void expect_all(kvcd_l2_op_t op, tobj_t *o, size_t n, int want)
{
    kvcd_l2_item_t *it = run_op(op, o, n, 0);
    size_t i;

    for (i = 0; i < n; i++) {
        ck_assert_msg(it[i].result == want, "op %d key %zu: %s, want %s", (int)op, i,
                      kvcd_errname(it[i].result), kvcd_errname(want));
        if (want == 0 && op == KVCD_L2_LOAD) {
            ck_assert_uint_eq(it[i].size, o[i].len);
            ck_assert_msg(memcmp(it[i].buf, o[i].data, o[i].len) == 0, "key %zu: bytes differ",
                          i);
        }
        if (want == 0 && op == KVCD_L2_LOOKUP)
            ck_assert_uint_eq(it[i].size, o[i].len);
    }
    items_free(it, n, op);
}

static void round_trip(tobj_t *o, size_t n)
{
    expect_all(KVCD_L2_STORE, o, n, 0);
    expect_all(KVCD_L2_LOOKUP, o, n, 0);
    expect_all(KVCD_L2_LOAD, o, n, 0);
}

/* The redis key of an object (no prefix). */
static size_t redis_key(const kvcd_key_t *k, char *name)
{
    uint8_t dig[16];

    ck_assert_int_eq(kvcd_obj_name(0, k, name, dig), 0);
    return strlen(name) - strlen(KVCD_OBJ_NAME_SUFFIX);
}

START_TEST(spec_errors)
{
    static const struct {
        const char *spec, *want;
    } cases[] = {
        {"{\"type\":\"redis\",\"hots\":\"x\"}", "hots: unknown field"},
        {"{\"type\":\"redis\",\"port\":0}", "port: must be in 1..65535"},
        {"{\"type\":\"redis\",\"port\":\"6379\"}", "port: expected an integer"},
        {"{\"type\":\"redis\",\"unix\":\"/a\",\"host\":\"b\"}", "unix or host/port"},
        {"{\"type\":\"redis\",\"nodes\":[]}", "nodes: expected a non-empty array"},
        {"{\"type\":\"redis\",\"nodes\":[{\"unix\":\"/a\"}],\"port\":1}",
         "nodes: cannot be combined"},
        {"{\"type\":\"redis\",\"nodes\":[{\"unix\":\"/a\"},{\"hots\":\"b\"}]}",
         "nodes[1].hots: unknown field"},
        {"{\"type\":\"redis\",\"nodes\":[{\"unix\":\"/a\"},{\"port\":7}]}",
         "nodes[1]: needs host or unix"},
        {"{\"type\":\"redis\",\"nodes\":[{\"unix\":\"/a\"},{\"unix\":\"/a\"}]}",
         "nodes[1]: the same server as nodes[0]"},
        {"{\"type\":\"redis\",\"password_env\":\"KVCD_TEST_NO_SUCH_VARIABLE\"}",
         "password_env: environment variable 'KVCD_TEST_NO_SUCH_VARIABLE' is not set"},
        {"{\"type\":\"redis\",\"password\":\"a\",\"password_env\":\"B\"}",
         "either password or password_env"},
        {"{\"type\":\"redis\",\"username\":\"u\"}", "username: needs password"},
        {"{\"type\":\"redis\",\"key_prefix\":7}", "key_prefix: expected a string"},
        {"{\"type\":\"redis\",\"pipeline_depth\":0}", "pipeline_depth: must be in"},
        {"{\"type\":\"redis\",\"pipeline_bytes\":0}", "pipeline_bytes: must be in"},
        {"{\"type\":\"redis\",\"ttl_seconds\":-1}", "ttl_seconds: must be in"},
        {"{\"type\":\"redis\",\"reconnect_min_ms\":500,\"reconnect_max_ms\":100}",
         "reconnect_max_ms: must be >="},
    };
    char err[512];
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ck_assert_int_eq(try_create(cases[i].spec, err, sizeof(err)), KVCD_ECONFIG);
        ck_assert_ptr_null(l2);
        ck_assert_msg(strstr(err, cases[i].want), "spec %s: error '%s' lacks '%s'",
                      cases[i].spec, err, cases[i].want);
        ck_assert_msg(strstr(err, "--l2-adapter #1 (redis): "), "error '%s' has no prefix", err);
    }
}
END_TEST

/* Key = prefix + the fs name without ".data"; value = payload + the fs trailer;
 * EX from ttl_seconds. */
START_TEST(key_and_value_format)
{
    tobj_t *o = objs_new(2, 10, 5000);
    char name[KVCD_OBJ_NAME_MAX], key[400];
    uint8_t dig[16], trl[KVCD_OBJ_TRL_SIZE];
    redisContext *c;
    redisReply *rep;
    size_t kl;

    start_redis(&rs, tdir, "r", 0);
    create("{\"type\":\"redis\",\"unix\":\"%s\",\"key_prefix\":\"kv:\",\"ttl_seconds\":100}",
           rs.sock);
    round_trip(o, 2);

    ck_assert_int_eq(kvcd_obj_name(0, &o[1].key.k, name, dig), 0);
    kl = strlen(name) - 5;
    snprintf(key, sizeof(key), "kv:%.*s", (int)kl, name);
    kvcd_obj_trl_build(trl, o[1].data, o[1].len, dig);
    c = kvcd_redis_connect(&rs);
    ck_assert_ptr_nonnull(c);
    rep = redisCommand(c, "GET %s", key);
    ck_assert_ptr_nonnull(rep);
    ck_assert_int_eq(rep->type, REDIS_REPLY_STRING);
    ck_assert_uint_eq(rep->len, o[1].len + KVCD_OBJ_TRL_SIZE);
    ck_assert(memcmp(rep->str, o[1].data, o[1].len) == 0);
    ck_assert(memcmp(rep->str + o[1].len, trl, KVCD_OBJ_TRL_SIZE) == 0);
    freeReplyObject(rep);
    redisFree(c);
    ck_assert_int_gt(kvcd_redis_int(&rs, "TTL %s", key), 0);
    ck_assert_int_le(kvcd_redis_int(&rs, "TTL %s", key), 100);
    ck_assert_int_eq(kvcd_redis_int(&rs, "DBSIZE"), 2);

    expect_all(KVCD_L2_REMOVE, o, 2, 0);
    expect_all(KVCD_L2_REMOVE, o, 1, KVCD_ENOTFOUND);
    expect_all(KVCD_L2_LOOKUP, o, 2, KVCD_ENOTFOUND);
    ck_assert_int_eq(kvcd_redis_int(&rs, "DBSIZE"), 0);
    objs_free(o, 2);
}
END_TEST

/* A value that is not ours (no trailer, wrong trailer) is a miss and goes away. */
START_TEST(foreign_values_are_misses)
{
    tobj_t *o = objs_new(3, 20, 3000);
    char name[KVCD_OBJ_NAME_MAX];
    kvcd_l2_item_t *it;
    json_t *st;
    size_t kl;

    start_redis(&rs, tdir, "r", 0);
    create("{\"type\":\"redis\",\"unix\":\"%s\"}", rs.sock);
    expect_all(KVCD_L2_STORE, o, 3, 0);
    kl = redis_key(&o[0].key.k, name);
    ck_assert_int_eq(kvcd_redis_int(&rs, "SET %b short", name, kl), 0);
    kl = redis_key(&o[1].key.k, name);
    ck_assert_int_eq(kvcd_redis_int(&rs, "SETRANGE %b 1500 zz", name, kl),
                     (long long)o[1].len + KVCD_OBJ_TRL_SIZE);

    it = run_op(KVCD_L2_LOOKUP, o, 3, 0);
    ck_assert_int_eq(it[0].result, KVCD_ENOTFOUND); /* too short: no trailer */
    ck_assert_int_eq(it[1].result, 0);              /* trailer intact: the load decides */
    ck_assert_int_eq(it[2].result, 0);
    items_free(it, 3, KVCD_L2_LOOKUP);
    it = run_op(KVCD_L2_LOAD, o, 3, 0);
    ck_assert_int_eq(it[0].result, KVCD_ENOTFOUND); /* deleted by the lookup */
    ck_assert_int_eq(it[1].result, KVCD_ECHECKSUM);
    ck_assert_int_eq(it[2].result, 0);
    items_free(it, 3, KVCD_L2_LOAD);
    ck_assert_int_eq(kvcd_redis_int(&rs, "DBSIZE"), 1);
    st = inst_status();
    ck_assert_int_eq(json_integer_value(json_object_get(st, "checksum_failures")), 2);
    json_decref(st);
    objs_free(o, 3);
}
END_TEST

/* A load buffer smaller than the object: EMSGSIZE with the size. */
START_TEST(load_into_small_buffer)
{
    tobj_t *o = objs_new(1, 30, 8192);
    kvcd_l2_item_t it = {0};

    start_redis(&rs, tdir, "r", 0);
    create("{\"type\":\"redis\",\"unix\":\"%s\"}", rs.sock);
    expect_all(KVCD_L2_STORE, o, 1, 0);
    it.key = o[0].key.k;
    it.buf = kvcd_test_buf(4096);
    it.len = 4096;
    ck_assert_int_eq(kvcd_test_call(&loop, l2, KVCD_L2_LOAD, &it, 1, 0), 0);
    ck_assert_int_eq(it.result, -EMSGSIZE);
    ck_assert_uint_eq(it.size, 8192);
    free(it.buf);
    objs_free(o, 1);
}
END_TEST

START_TEST(password_from_env_and_db)
{
    tobj_t *o = objs_new(3, 40, 2048);
    kvcd_l2_item_t *it;
    json_t *st;
    uint64_t t0;

    need_redis();
    ck_assert_int_eq(kvcd_redis_start_ex(&rs, tdir, "r", 0, "s3cret pass", NULL), 0);
    setenv("KVCD_TEST_REDIS_PASSWORD", "s3cret pass", 1);
    create("{\"type\":\"redis\",\"unix\":\"%s\",\"password_env\":\"KVCD_TEST_REDIS_PASSWORD\","
           "\"db\":3}",
           rs.sock);
    round_trip(o, 3);
    ck_assert_int_eq(kvcd_redis_int(&rs, "DBSIZE"), 0);
    {
        redisContext *c = kvcd_redis_connect(&rs);
        redisReply *rep;

        ck_assert_ptr_nonnull(c);
        freeReplyObject(redisCommand(c, "SELECT 3"));
        rep = redisCommand(c, "DBSIZE");
        ck_assert(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 3);
        freeReplyObject(rep);
        redisFree(c);
    }
    destroy();

    /* the same through the ACL form (AUTH default <password>) */
    create("{\"type\":\"redis\",\"unix\":\"%s\",\"username\":\"default\","
           "\"password\":\"s3cret pass\",\"db\":3}",
           rs.sock);
    expect_all(KVCD_L2_LOOKUP, o, 3, 0);
    destroy();

    /* a wrong password: keys fail within the connect timeout, never hang */
    create("{\"type\":\"redis\",\"unix\":\"%s\",\"password\":\"wrong\",\"connect_timeout_ms\":300}",
           rs.sock);
    t0 = now_ms();
    it = run_op(KVCD_L2_LOOKUP, o, 3, 0);
    ck_assert_uint_lt(now_ms() - t0, 1000);
    ck_assert_int_eq(it[0].result, KVCD_ECONNECT);
    items_free(it, 3, KVCD_L2_LOOKUP);
    st = inst_status();
    ck_assert(json_is_false(json_object_get(st, "healthy")));
    ck_assert_msg(strstr(json_string_value(json_object_get(node_status(st, 0), "last_error")),
                         "WRONGPASS"),
                  "last_error: %s",
                  json_string_value(json_object_get(node_status(st, 0), "last_error")));
    json_decref(st);
    objs_free(o, 3);
}
END_TEST

/* A host name over TCP is resolved off the loop (uv_getaddrinfo). */
START_TEST(host_name_over_tcp)
{
    tobj_t *o = objs_new(4, 50, 100000);
    json_t *st;

    start_redis(&rs, tdir, "r", 1);
    create("{\"type\":\"redis\",\"host\":\"localhost\",\"port\":%d}", rs.port);
    round_trip(o, 4);
    st = inst_status();
    ck_assert(json_is_true(json_object_get(st, "healthy")));
    ck_assert_str_eq(json_string_value(json_object_get(node_status(st, 0), "state")), "ready");
    json_decref(st);
    objs_free(o, 4);
}
END_TEST

/* Nothing listening: keys fail at once (no waiting for the deadline), status
 * says why, and the instance closes cleanly. */
START_TEST(unreachable_server)
{
    tobj_t *o = objs_new(2, 60, 100);
    kvcd_l2_item_t *it;
    json_t *st;
    uint64_t t0;
    char sock[128];

    snprintf(sock, sizeof(sock), "%s/none.sock", tdir);
    create("{\"type\":\"redis\",\"unix\":\"%s\"}", sock);
    t0 = now_ms();
    it = run_op(KVCD_L2_STORE, o, 2, 0);
    ck_assert_uint_lt(now_ms() - t0, 500);
    ck_assert_int_eq(it[0].result, KVCD_ECONNECT);
    ck_assert_int_eq(it[1].result, KVCD_ECONNECT);
    items_free(it, 2, KVCD_L2_STORE);
    st = inst_status();
    ck_assert(json_is_false(json_object_get(st, "healthy")));
    ck_assert_str_eq(json_string_value(json_object_get(node_status(st, 0), "state")), "down");
    ck_assert_msg(strstr(json_string_value(json_object_get(node_status(st, 0), "last_error")),
                         "No such file"),
                  "last_error: %s",
                  json_string_value(json_object_get(node_status(st, 0), "last_error")));
    json_decref(st);
    destroy();

    /* then the server comes: the adapter connects on its own */
    start_redis(&rs, tdir, "none", 0);
    create("{\"type\":\"redis\",\"unix\":\"%s\",\"reconnect_min_ms\":20}", sock);
    ck_assert_int_eq(kvcd_test_run_pred(&loop, adapter_ready, NULL, 3000), 0);
    round_trip(o, 2);
    objs_free(o, 2);
}
END_TEST

/* A server that accepts but never answers: the handshake times out, waiting
 * keys fail with ECONNECT, and closing mid-handshake leaves nothing behind. */
START_TEST(connect_timeout)
{
    tobj_t *o = objs_new(2, 70, 100);
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    kvcd_l2_item_t *it;
    uint64_t t0, dt;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(fd, 16), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    create("{\"type\":\"redis\",\"host\":\"127.0.0.1\",\"port\":%d,\"connect_timeout_ms\":200}",
           ntohs(sa.sin_port));
    t0 = now_ms();
    it = run_op(KVCD_L2_LOOKUP, o, 2, 2000);
    dt = now_ms() - t0;
    ck_assert_msg(dt >= 150 && dt < 1000, "lookup took %llu ms", (unsigned long long)dt);
    ck_assert_int_eq(it[0].result, KVCD_ECONNECT);
    items_free(it, 2, KVCD_L2_LOOKUP);
    destroy();
    /* close while the next attempt is in its handshake */
    create("{\"type\":\"redis\",\"host\":\"127.0.0.1\",\"port\":%d}", ntohs(sa.sin_port));
    run_for(50);
    destroy();
    close(fd);
    objs_free(o, 2);
}
END_TEST

/* A server that stops answering mid-connection: the command timeout drops the
 * connection and fails the keys; the adapter comes back by itself. */
START_TEST(command_timeout_and_recovery)
{
    tobj_t *o = objs_new(3, 80, 4096);
    kvcd_l2_item_t *it;
    json_t *st;
    uint64_t t0, dt;

    start_redis(&rs, tdir, "r", 0);
    create("{\"type\":\"redis\",\"unix\":\"%s\",\"command_timeout_ms\":200,"
           "\"connect_timeout_ms\":200,\"reconnect_min_ms\":20,\"reconnect_max_ms\":100}",
           rs.sock);
    expect_all(KVCD_L2_STORE, o, 3, 0);
    ck_assert_int_eq(kvcd_redis_int(&rs, "CLIENT PAUSE 1000 ALL"), 0);
    t0 = now_ms();
    it = run_op(KVCD_L2_LOAD, o, 3, 5000);
    dt = now_ms() - t0;
    ck_assert_msg(dt >= 180 && dt < 800, "load took %llu ms", (unsigned long long)dt);
    ck_assert_int_eq(it[0].result, KVCD_ETIMEDOUT);
    items_free(it, 3, KVCD_L2_LOAD);
    st = inst_status();
    ck_assert(json_is_false(json_object_get(st, "healthy")));
    ck_assert_int_eq(json_integer_value(json_object_get(node_status(st, 0), "command_timeouts")),
                     1);
    json_decref(st);
    ck_assert_int_eq(kvcd_test_run_pred(&loop, adapter_ready, NULL, 4000), 0);
    expect_all(KVCD_L2_LOAD, o, 3, 0);
    st = inst_status();
    ck_assert(json_is_true(json_object_get(st, "healthy")));
    json_decref(st);
    objs_free(o, 3);
}
END_TEST

/* One key in flight at a time still serves big batches in order. */
START_TEST(pipeline_depth_one)
{
    tobj_t *o = objs_new(200, 1000, 1024);

    start_redis(&rs, tdir, "r", 0);
    create("{\"type\":\"redis\",\"unix\":\"%s\",\"pipeline_depth\":1}", rs.sock);
    round_trip(o, 200);
    objs_free(o, 200);
}
END_TEST

/* Large values in a deep pipeline, several batches at once, and lookups
 * queued behind them on the same connection (they go into hiredis's buffer
 * while a value is written past it): Redis sees every store first. */
START_TEST(large_values_concurrent_batches)
{
    enum { B = 4, N = 6 };
    tobj_t *o[B];
    kvcd_l2_item_t it[B][N], lk[B * N];
    kvcd_test_call_t c[B], cl;
    size_t b, i;

    for (b = 0; b < B; b++)
        o[b] = objs_new(N, 2000 + 100 * b, 3 * MiB);
    start_redis(&rs, tdir, "r", 0);
    create("{\"type\":\"redis\",\"unix\":\"%s\"}", rs.sock);
    for (b = 0; b < B; b++) {
        for (i = 0; i < N; i++) {
            memset(&it[b][i], 0, sizeof(it[b][i]));
            it[b][i].key = o[b][i].key.k;
            it[b][i].buf = o[b][i].data;
            it[b][i].len = o[b][i].len;
        }
        kvcd_test_submit(&c[b], l2, KVCD_L2_STORE, it[b], N, 10000);
    }
    for (i = 0; i < B * N; i++) {
        memset(&lk[i], 0, sizeof(lk[i]));
        lk[i].key = o[i / N][i % N].key.k;
    }
    kvcd_test_submit(&cl, l2, KVCD_L2_LOOKUP, lk, B * N, 10000);
    for (b = 0; b < B; b++) {
        ck_assert_int_eq(kvcd_test_run_until(&loop, &c[b].released, 20000), 0);
        for (i = 0; i < N; i++)
            ck_assert_int_eq(it[b][i].result, 0);
    }
    ck_assert_int_eq(kvcd_test_run_until(&loop, &cl.released, 20000), 0);
    for (i = 0; i < B * N; i++) {
        ck_assert_int_eq(lk[i].result, 0);
        ck_assert_uint_eq(lk[i].size, o[i / N][i % N].len);
    }
    for (b = 0; b < B; b++) {
        expect_all(KVCD_L2_LOAD, o[b], N, 0);
        objs_free(o[b], N);
    }
}
END_TEST

/* The connection is killed while a batch of large stores is being written:
 * every key that is there afterwards has exactly its bytes. */
START_TEST(connection_killed_mid_store)
{
    enum { N = 16 };
    tobj_t *o = objs_new(N, 3000, 4 * MiB);
    kvcd_l2_item_t it[N], *ld;
    kvcd_test_call_t c;
    size_t i, ok = 0, present = 0, failed = 0;
    uint64_t t0;

    start_redis(&rs, tdir, "r", 0);
    create("{\"type\":\"redis\",\"unix\":\"%s\",\"reconnect_min_ms\":20}", rs.sock);
    ck_assert_int_eq(kvcd_test_run_pred(&loop, adapter_ready, NULL, 3000), 0);
    for (i = 0; i < N; i++) {
        memset(&it[i], 0, sizeof(it[i]));
        it[i].key = o[i].key.k;
        it[i].buf = o[i].data;
        it[i].len = o[i].len;
    }
    kvcd_test_submit(&c, l2, KVCD_L2_STORE, it, N, 10000);
    /* let a few values go in, then kill every normal client */
    t0 = now_ms();
    while (now_ms() - t0 < 5000) {
        json_t *st = inst_status();
        json_int_t stored = json_integer_value(json_object_get(st, "stores"));

        json_decref(st);
        if (stored >= 3)
            break;
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    ck_assert_int_ge(kvcd_redis_int(&rs, "CLIENT KILL TYPE normal"), 1);
    ck_assert_int_eq(kvcd_test_run_until(&loop, &c.released, 5000), 0);
    for (i = 0; i < N; i++) {
        ok += it[i].result == 0;
        failed += it[i].result == KVCD_ECONNECT;
    }
    ck_assert_uint_eq(ok + failed, N);
    ck_assert_int_eq(kvcd_test_run_pred(&loop, adapter_ready, NULL, 3000), 0);
    ld = run_op(KVCD_L2_LOAD, o, N, 0);
    for (i = 0; i < N; i++) {
        if (ld[i].result == KVCD_ENOTFOUND) {
            ck_assert_msg(it[i].result != 0, "key %zu was stored but is gone", i);
            continue;
        }
        ck_assert_int_eq(ld[i].result, 0);
        ck_assert(memcmp(ld[i].buf, o[i].data, o[i].len) == 0);
        present++;
    }
    printf("connection killed mid-store: %zu of %d stores acknowledged, %zu present, all exact\n",
           ok, N, present);
    ck_assert_int_eq(kvcd_redis_int(&rs, "DBSIZE"), (long long)present);
    items_free(ld, N, KVCD_L2_LOAD);
    objs_free(o, N);
}
END_TEST

/* ---- the real daemon ---------------------------------------------------------- */

#define NKEYS 320

static kvcd_proc_t pa, pb;
static kvcd_client_t *ca, *cb;
static kvcd_redis_t srv[3];
static char ddir[64];
static kvcd_key_t base;
static uint8_t hb[NKEYS][8];
static kvcd_bytes_t H[NKEYS];
static size_t chunk_base = 64 * 1024;

static void d_setup(void)
{
    size_t i;
    int k;

    snprintf(ddir, sizeof(ddir), "/tmp/kvcd-rd-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(ddir));
    memset(&pa, 0, sizeof(pa));
    memset(&pb, 0, sizeof(pb));
    memset(srv, 0, sizeof(srv));
    ca = cb = NULL;
    kvcd_keyset(&base, "org/model", 2, 1, 0, "");
    for (i = 0; i < NKEYS; i++) {
        for (k = 0; k < 8; k++)
            hb[i][k] = (uint8_t)((i + 1) >> (56 - 8 * k));
        H[i].ptr = hb[i];
        H[i].len = 8;
    }
}

static void d_stop(kvcd_proc_t *p, kvcd_client_t **c)
{
    if (*c)
        kvcd_client_close(*c);
    *c = NULL;
    if (p->pid > 0)
        ck_assert_int_eq(kvcd_proc_stop(p, SIGTERM, 20000), 0);
    ck_assert_msg(!kvcd_proc_log_has_sanitizer_report(p), "see %s", p->log);
    kvcd_proc_cleanup(p);
}

static void d_teardown(void)
{
    char cmd[128];
    int i;

    d_stop(&pa, &ca);
    d_stop(&pb, &cb);
    for (i = 0; i < 3; i++)
        kvcd_redis_cleanup(&srv[i]);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", ddir);
    ck_assert_int_eq(system(cmd), 0);
}

static void d_start(kvcd_proc_t *p, kvcd_client_t **c, const char *spec, const char *policy)
{
    const char *args[] = {"--l1-size-gb", "0.5", "--l2-timeout-ms", "3000",
                          "--l2-store-policy", policy, "--l2-adapter", spec, NULL};

    ck_assert_msg(kvcd_proc_start(p, args) == 0, "kvcd did not start, log: %s", p->log);
    ck_assert_int_eq(kvcd_client_connect(p->endpoint, 20000, c), 0);
}

static size_t chunk_len(size_t i)
{
    return chunk_base + i * 17;
}

static void *chunk(size_t i)
{
    void *p = malloc(chunk_len(i));

    kvcd_fill_random(p, chunk_len(i), 7000 + i);
    return p;
}

static void store_range(kvcd_client_t *c, size_t from, size_t to)
{
    const void *bufs[16];
    size_t lens[16], i, n;
    int res[16];

    for (; from < to; from += n) {
        n = to - from < 16 ? to - from : 16;
        for (i = 0; i < n; i++) {
            bufs[i] = chunk(from + i);
            lens[i] = chunk_len(from + i);
        }
        ck_assert_int_eq(kvcd_client_store(c, &base, H + from, n, bufs, lens, res), 0);
        for (i = 0; i < n; i++) {
            ck_assert_int_eq(res[i], 0);
            free((void *)bufs[i]);
        }
    }
}

/* The redis instance's status object (owned by *root, decref that). */
static json_t *d_l2(kvcd_client_t *c, json_t **root)
{
    *root = kvcd_test_status(c);
    return json_array_get(json_object_get(*root, "l2"), 0);
}

/* Wait until no L2 work is in flight; fails after limit_ms. */
static void settle(kvcd_client_t *c, uint64_t limit_ms)
{
    uint64_t end = now_ms() + limit_ms;

    while (now_ms() < end) {
        if (kvcd_test_stat(c, "storage", "l2_inflight") == 0)
            return;
        usleep(10000);
    }
    ck_abort_msg("L2 work still in flight after %llu ms", (unsigned long long)limit_ms);
}

/* Lookup one key; if present, load it and check every byte. 1 hit, 0 miss. */
static int fetch_check(kvcd_client_t *c, size_t i)
{
    size_t prefix, cap = chunk_len(i), len;
    void *buf;
    int res;

    ck_assert_int_eq(kvcd_client_lookup(c, &base, H + i, 1, &prefix, NULL), 0);
    if (prefix == 0)
        return 0;
    buf = malloc(cap);
    ck_assert_int_eq(kvcd_client_load(c, &base, H + i, 1, &buf, &cap, &len, &res), 0);
    if (res == 0) {
        void *want = chunk(i);

        ck_assert_uint_eq(len, chunk_len(i));
        ck_assert_msg(memcmp(buf, want, len) == 0, "key %zu: wrong bytes", i);
        free(want);
    } else {
        ck_assert_int_eq(res, KVCD_ENOTFOUND);
    }
    free(buf);
    return res == 0;
}

static size_t daemon_key(size_t i, char *name)
{
    kvcd_key_t k = base;

    k.hash = hb[i];
    k.hash_len = 8;
    return redis_key(&k, name);
}

/* Store through A, lookup and load byte-exact through B. */
START_TEST(two_daemons_share_one_redis)
{
    char spec[512];
    json_t *root, *st;
    size_t i, n = 24;

    start_redis(&srv[0], ddir, "r0", 0);
    snprintf(spec, sizeof(spec), "{\"type\":\"redis\",\"unix\":\"%s\"}", srv[0].sock);
    chunk_base = MiB;
    d_start(&pa, &ca, spec, "skip_l1");
    d_start(&pb, &cb, spec, "default");
    store_range(ca, 0, n);
    settle(ca, 10000);
    ck_assert_int_eq(kvcd_redis_int(&srv[0], "DBSIZE"), (long long)n);
    ck_assert_int_eq(kvcd_test_stat(cb, "l1", "objects"), 0);
    for (i = 0; i < n; i++)
        ck_assert_msg(fetch_check(cb, i) == 1, "key %zu missing through B", i);
    ck_assert_int_eq(kvcd_test_stat(cb, "storage", "l2_hits"), (json_int_t)n);
    st = d_l2(cb, &root);
    ck_assert_str_eq(json_string_value(json_object_get(st, "type")), "redis");
    ck_assert(json_is_true(json_object_get(st, "healthy")));
    ck_assert_int_eq(json_integer_value(json_object_get(st, "loads")), (json_int_t)n);
    json_decref(root);
}
END_TEST

static int node_of[NKEYS];

/* Three servers: spread, every key back, one stopped, then restarted. */
START_TEST(three_nodes)
{
    char spec[2048];
    long long cnt[3];
    size_t i, hits, on1 = 0;
    json_t *root, *st;
    uint64_t end;
    int s;

    for (s = 0; s < 3; s++) {
        char nm[8];

        snprintf(nm, sizeof(nm), "r%d", s);
        start_redis(&srv[s], ddir, nm, 0);
    }
    snprintf(spec, sizeof(spec),
             "{\"type\":\"redis\",\"nodes\":[{\"unix\":\"%s\",\"name\":\"cache-a\"},"
             "{\"unix\":\"%s\",\"name\":\"cache-b\"},{\"unix\":\"%s\",\"name\":\"cache-c\"}],"
             "\"connect_timeout_ms\":300,\"reconnect_min_ms\":50,\"reconnect_max_ms\":200}",
             srv[0].sock, srv[1].sock, srv[2].sock);
    chunk_base = 16 * 1024;
    d_start(&pa, &ca, spec, "skip_l1");
    store_range(ca, 0, NKEYS);
    settle(ca, 10000);

    for (s = 0; s < 3; s++)
        cnt[s] = kvcd_redis_int(&srv[s], "DBSIZE");
    printf("three nodes: %d keys spread %lld / %lld / %lld\n", NKEYS, cnt[0], cnt[1], cnt[2]);
    ck_assert_int_eq(cnt[0] + cnt[1] + cnt[2], NKEYS);
    for (s = 0; s < 3; s++)
        ck_assert_msg(cnt[s] > NKEYS / 3 * 0.6 && cnt[s] < NKEYS / 3 * 1.4,
                      "server %d holds %lld of %d keys", s, cnt[s], NKEYS);
    for (i = 0; i < NKEYS; i++) {
        char name[KVCD_OBJ_NAME_MAX];
        size_t kl = daemon_key(i, name);
        int where = -1;

        for (s = 0; s < 3; s++)
            if (kvcd_redis_int(&srv[s], "EXISTS %b", name, kl) == 1) {
                ck_assert_int_eq(where, -1);
                where = s;
            }
        ck_assert_int_ge(where, 0);
        node_of[i] = where;
        on1 += where == 1;
    }
    for (i = 0; i < NKEYS; i++)
        ck_assert_msg(fetch_check(ca, i) == 1, "key %zu does not load back", i);

    /* server 1 goes away: its keys miss, the others hit, the daemon serves */
    kvcd_redis_stop(&srv[1], SIGKILL);
    hits = 0;
    for (i = 0; i < NKEYS; i++) {
        int h = fetch_check(ca, i);

        ck_assert_msg(h == (node_of[i] != 1), "key %zu on server %d: %s", i, node_of[i],
                      h ? "hit" : "miss");
        hits += h;
    }
    ck_assert_uint_eq(hits, NKEYS - on1);
    ck_assert_int_eq(kvcd_client_ping(ca, NULL, NULL, 0), 0);
    st = d_l2(ca, &root);
    ck_assert(json_is_false(json_object_get(st, "healthy")));
    ck_assert_str_ne(json_string_value(json_object_get(
                         json_array_get(json_object_get(st, "nodes"), 1), "state")),
                     "ready");
    json_decref(root);

    /* back (empty: no persistence): the adapter reconnects and is healthy */
    ck_assert_int_eq(kvcd_redis_restart(&srv[1]), 0);
    end = now_ms() + 5000;
    for (;;) {
        int healthy;

        fetch_check(ca, 0);
        st = d_l2(ca, &root);
        healthy = json_is_true(json_object_get(st, "healthy"));
        json_decref(root);
        if (healthy)
            break;
        ck_assert_msg(now_ms() < end, "not healthy 5 s after the server came back");
        usleep(20000);
    }
    for (i = 0; i < NKEYS; i++)
        ck_assert_int_eq(fetch_check(ca, i), node_of[i] != 1);
    store_range(ca, 0, NKEYS);
    settle(ca, 10000);
    for (i = 0; i < NKEYS; i++)
        ck_assert_msg(fetch_check(ca, i) == 1, "key %zu not back after re-store", i);
    ck_assert_int_eq(kvcd_redis_int(&srv[1], "DBSIZE"), (long long)on1);
}
END_TEST

/* Redis killed and restarted (with its append-only file) while write-behind
 * of a batch of 4 MiB chunks is running: no key with wrong bytes, no L2 call
 * outlives its deadline, and the adapter is back afterwards. */
START_TEST(redis_killed_during_store_batch)
{
    static const char *const aof[] = {"--appendonly", "yes", "--appendfsync", "no", NULL};
    char spec[512];
    size_t i, n = 32, hits = 0, direct = 0;
    uint64_t t0, waited;
    json_t *root, *st;
    redisContext *c;

    need_redis();
    ck_assert_int_eq(kvcd_redis_start_ex(&srv[0], ddir, "r0", 0, NULL, aof), 0);
    snprintf(spec, sizeof(spec),
             "{\"type\":\"redis\",\"unix\":\"%s\",\"command_timeout_ms\":2000,"
             "\"connect_timeout_ms\":500,\"reconnect_min_ms\":20,\"reconnect_max_ms\":200}",
             srv[0].sock);
    chunk_base = 4 * MiB;
    d_start(&pa, &ca, spec, "default");
    store_range(ca, 0, n);
    /* write-behind of 128 MiB is under way: kill, restart at once */
    ck_assert_int_gt(kvcd_test_stat(ca, "storage", "l2_inflight"), 0);
    t0 = now_ms();
    kvcd_redis_stop(&srv[0], SIGKILL);
    ck_assert_int_eq(kvcd_redis_restart(&srv[0]), 0);
    settle(ca, 3000 + 2000); /* the L2 deadline, plus slack */
    waited = now_ms() - t0;

    /* what the server holds is exact (checked directly, trailer included) */
    c = kvcd_redis_connect(&srv[0]);
    ck_assert_ptr_nonnull(c);
    for (i = 0; i < n; i++) {
        char name[KVCD_OBJ_NAME_MAX];
        size_t kl = daemon_key(i, name);
        uint8_t dig[16];
        redisReply *rep = redisCommand(c, "GET %b", name, kl);
        kvcd_key_t k = base;

        ck_assert_ptr_nonnull(rep);
        if (rep->type == REDIS_REPLY_STRING) {
            void *want = chunk(i);

            k.hash = hb[i];
            k.hash_len = 8;
            kvcd_obj_name(0, &k, name, dig);
            ck_assert_uint_eq(rep->len, chunk_len(i) + KVCD_OBJ_TRL_SIZE);
            ck_assert_msg(memcmp(rep->str, want, chunk_len(i)) == 0, "key %zu: wrong bytes", i);
            ck_assert(kvcd_obj_trl_verify((const uint8_t *)rep->str + chunk_len(i), chunk_len(i),
                                          dig, rep->str));
            free(want);
            direct++;
        } else {
            ck_assert_int_eq(rep->type, REDIS_REPLY_NIL);
        }
        freeReplyObject(rep);
    }
    redisFree(c);

    /* and through a second daemon with an empty L1 */
    d_start(&pb, &cb, spec, "default");
    for (i = 0; i < n; i++)
        hits += (size_t)fetch_check(cb, i);
    ck_assert_uint_eq(hits, direct);
    printf("redis killed during a %zu x 4 MiB store batch: write-behind settled %llu ms after "
           "the kill (restart included); %zu keys survived (append-only file), all exact\n",
           n, (unsigned long long)waited, direct);

    /* A recovers: new stores reach the restarted server */
    st = d_l2(ca, &root);
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(st, "nodes"), 0), "state")),
                     "ready");
    json_decref(root);
    store_range(ca, n, n + 4);
    settle(ca, 5000);
    for (i = n; i < n + 4; i++)
        ck_assert_int_eq(fetch_check(cb, i), 1);
    ck_assert_int_eq(kvcd_client_ping(ca, NULL, NULL, 0), 0);
}
END_TEST

static Suite *redis_suite(void)
{
    Suite *s = suite_create("redis");
    TCase *pure = tcase_create("ring");
    TCase *inst = tcase_create("adapter");
    TCase *dmn = tcase_create("daemon");

    tcase_add_test(pure, ring_spread_and_movement);
    suite_add_tcase(s, pure);

    tcase_add_checked_fixture(inst, inst_setup, inst_teardown);
    tcase_set_timeout(inst, 60);
    tcase_add_test(inst, spec_errors);
    tcase_add_test(inst, key_and_value_format);
    tcase_add_test(inst, foreign_values_are_misses);
    tcase_add_test(inst, load_into_small_buffer);
    tcase_add_test(inst, password_from_env_and_db);
    tcase_add_test(inst, host_name_over_tcp);
    tcase_add_test(inst, unreachable_server);
    tcase_add_test(inst, connect_timeout);
    tcase_add_test(inst, command_timeout_and_recovery);
    tcase_add_test(inst, pipeline_depth_one);
    tcase_add_test(inst, large_values_concurrent_batches);
    tcase_add_test(inst, connection_killed_mid_store);
    suite_add_tcase(s, inst);

    tcase_add_checked_fixture(dmn, d_setup, d_teardown);
    tcase_set_timeout(dmn, 120);
    tcase_add_test(dmn, two_daemons_share_one_redis);
    tcase_add_test(dmn, three_nodes);
    tcase_add_test(dmn, redis_killed_during_store_batch);
    suite_add_tcase(s, dmn);
    return s;
}

int main(void)
{
    return kvcd_test_run(redis_suite());
}
