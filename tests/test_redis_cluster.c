/*
 * test_redis_cluster.c - the redis adapter's cluster mode against a real
 * Redis Cluster: six redis-server processes on loopback (three masters,
 * three replicas, cluster-node-timeout 1000 ms) joined with
 * `redis-cli --cluster create`, one cluster per case.
 *
 * Pure: CRC16 and key slots (hash tags) against Redis's reference values,
 * MOVED/ASK parsing. Adapter level (an instance on a private loop): spec
 * errors; a server without cluster support; ASK and MOVED for one slot put in
 * migration by hand; a master killed (failover: loads
 * exact or failed, never wrong bytes; hits resume once the replica is
 * promoted; new stores succeed); slots resharded while loading and storing
 * (nothing but hits and misses, redirects counted); every node down and back
 * (unhealthy, then recovered). Daemon level (the real kvcd binary): 1,000
 * chunks stored through one daemon and loaded byte-exact through another
 * that reads from replicas, and the cluster view in STATUS.
 *
 * redis-server and redis-cli must be installed (scripts/install-deps.sh):
 * without them the cases fail, they do not skip. Every server a case starts
 * is killed by the fixture's teardown and, should the case die first, by
 * PR_SET_PDEATHSIG.
 */
#include <check.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "adapters/object/format.h"
#include "adapters/redis/cluster.h"
#include "daemon/l2.h"
#include "protocol/client.h"
#include "tests/l2_support.h"
#include "tests/redis_support.h"
#include "tests/support.h"

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* ---- pure ----------------------------------------------------------------------- */

START_TEST(slots_match_redis)
{
    /* the reference values of Redis's cluster specification */
    ck_assert_uint_eq(kvcd_cluster_crc16("123456789", 9), 0x31C3);
    ck_assert_uint_eq(kvcd_cluster_slot("123456789", 9), 12739);
    ck_assert_uint_eq(kvcd_cluster_slot("{user1000}.following", 20),
                      kvcd_cluster_slot("user1000", 8));
    ck_assert_uint_eq(kvcd_cluster_slot("{user1000}.followers", 20),
                      kvcd_cluster_slot("user1000", 8));
    /* empty tag: the whole key; first '{' and first '}' after it */
    ck_assert_uint_eq(kvcd_cluster_slot("foo{}{bar}", 10),
                      kvcd_cluster_crc16("foo{}{bar}", 10) & 16383);
    ck_assert_uint_eq(kvcd_cluster_slot("foo{{bar}}zap", 13), kvcd_cluster_slot("{bar", 4));
    ck_assert_uint_eq(kvcd_cluster_slot("foo{bar}{zap}", 13), kvcd_cluster_slot("bar", 3));
    ck_assert_uint_eq(kvcd_cluster_slot("foo{bar", 7), kvcd_cluster_crc16("foo{bar", 7) & 16383);
    ck_assert(kvcd_cluster_has_tag("{x}", 3));
    ck_assert(!kvcd_cluster_has_tag("{}x", 3));
    ck_assert(!kvcd_cluster_has_tag("kvcd:", 5));
}
END_TEST

START_TEST(redirect_parsing)
{
    char host[64];
    unsigned slot = 0;
    int port = 0;

    ck_assert_int_eq(kvcd_cluster_redirect("MOVED 3999 127.0.0.1:6381", 25, &slot, host,
                                           sizeof(host), &port),
                     KVCD_REDIR_MOVED);
    ck_assert_uint_eq(slot, 3999);
    ck_assert_str_eq(host, "127.0.0.1");
    ck_assert_int_eq(port, 6381);
    ck_assert_int_eq(kvcd_cluster_redirect("ASK 16383 ::1:7000", 18, &slot, host, sizeof(host),
                                           &port),
                     KVCD_REDIR_ASK);
    ck_assert_uint_eq(slot, 16383);
    ck_assert_str_eq(host, "::1");
    ck_assert_int_eq(port, 7000);
    ck_assert_int_eq(kvcd_cluster_redirect("ASK 1 [::1]:7001", 16, &slot, host, sizeof(host),
                                           &port),
                     KVCD_REDIR_ASK);
    ck_assert_str_eq(host, "::1");
    ck_assert_int_eq(kvcd_cluster_redirect("MOVED 5 :6380", 13, &slot, host, sizeof(host), &port),
                     KVCD_REDIR_MOVED);
    ck_assert_str_eq(host, "");
    ck_assert_int_eq(port, 6380);
    {
        static const char *const bad[] = {"MOVED 16384 a:1", "MOVED x a:1", "ERR MOVED 1 a:1",
                                          "MOVED 1 host",    "MOVED 1 a:",  "MOVED 1 a:70000",
                                          "MOVED1 a:1",      "ASK",         "CLUSTERDOWN x",
                                          "MOVED 1 a:1x",    NULL};
        int i;

        for (i = 0; bad[i]; i++)
            ck_assert_msg(kvcd_cluster_redirect(bad[i], strlen(bad[i]), &slot, host, sizeof(host),
                                                &port) == KVCD_REDIR_NONE,
                          "'%s' parsed as a redirect", bad[i]);
    }
    ck_assert_int_eq(kvcd_cluster_redirect("MOVED 1 aaaaaaaaaaaaaaaa:1", 26, &slot, host, 8, &port),
                     KVCD_REDIR_NONE); /* host too long for the buffer */
}
END_TEST

/* ---- fixture: a cluster, an instance on a private loop ---------------------------- */

static uv_loop_t loop;
static kvcd_l2_t *l2;
static kvcd_redis_cluster_t cl;
static kvcd_redis_t plain;
static char tdir[64];
static int cluster_up;

static void need_redis(void)
{
    ck_assert_msg(kvcd_redis_bin() != NULL,
                  "redis-server is not installed (scripts/install-deps.sh installs it)");
}

static void base_setup(void)
{
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    snprintf(tdir, sizeof(tdir), "/tmp/kvcd-rc-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tdir));
    l2 = NULL;
    memset(&cl, 0, sizeof(cl));
    memset(&plain, 0, sizeof(plain));
    cluster_up = 0;
}

static void start_cluster(void)
{
    uint64_t t0 = now_ms();

    need_redis();
    ck_assert_msg(kvcd_redis_cluster_start(&cl, tdir, 3, 1) == 0,
                  "the cluster did not come up (logs in %s)", tdir);
    cluster_up = 1;
    printf("cluster of %d nodes up in %llu ms\n", cl.n, (unsigned long long)(now_ms() - t0));
}

static int inflight_zero(void *arg)
{
    return kvcd_l2_inflight(arg) == 0;
}

static int never(void *arg)
{
    return 0;
}

static void run_for(uint64_t ms)
{
    kvcd_test_run_pred(&loop, never, NULL, ms);
}

static void base_teardown(void)
{
    char cmd[128];

    if (l2) {
        ck_assert_int_eq(kvcd_test_run_pred(&loop, inflight_zero, l2, KVCD_TEST_WALL_MS), 0);
        kvcd_l2_destroy(l2);
        l2 = NULL;
    }
    ck_assert_int_eq(kvcd_test_drain(&loop, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    kvcd_redis_cluster_cleanup(&cl);
    kvcd_redis_cleanup(&plain);
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

/* A cluster instance seeded with nodes[0] and nodes[1], plus `extra` fields. */
static void create_cluster_instance(const char *extra)
{
    char spec[1024], err[512];

    snprintf(spec, sizeof(spec),
             "{\"type\":\"redis\",\"cluster\":true,\"nodes\":[{\"host\":\"127.0.0.1\",\"port\":%d},"
             "{\"host\":\"127.0.0.1\",\"port\":%d}],\"connect_timeout_ms\":500,"
             "\"command_timeout_ms\":2000,\"reconnect_min_ms\":50,\"reconnect_max_ms\":300%s%s}",
             cl.node[0].port, cl.node[1].port, extra[0] ? "," : "", extra);
    ck_assert_msg(try_create(spec, err, sizeof(err)) == 0, "create %s: %s", spec, err);
}

static json_t *inst_status(void)
{
    return kvcd_l2_status(l2);
}

static json_int_t cstat(const char *name)
{
    json_t *st = inst_status();
    json_int_t v = json_integer_value(json_object_get(json_object_get(st, "cluster"), name));

    json_decref(st);
    return v;
}

static int healthy(void *arg)
{
    json_t *st = inst_status();
    int h = json_is_true(json_object_get(st, "healthy"));

    json_decref(st);
    return arg ? !h : h;
}

static void wait_health(int want, uint64_t limit_ms)
{
    ck_assert_msg(kvcd_test_run_pred(&loop, healthy, want ? NULL : (void *)1, limit_ms) == 0,
                  "adapter not %s after %llu ms", want ? "healthy" : "unhealthy",
                  (unsigned long long)limit_ms);
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
        o[i].len = len + i % 97;
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

/* What one pass of an op over objects found. */
typedef struct {
    size_t ok, miss, failed;
} tally_t;

/* Run op over o[0..n) in batches of 50. Loaded bytes are compared: a hit
 * with wrong bytes fails the test at once. `strict`: only hits and misses
 * are allowed; otherwise errors the core turns into misses (no connection,
 * unavailable, timed out) are counted as failed. */
static tally_t pass(kvcd_l2_op_t op, tobj_t *o, size_t n, int strict)
{
    tally_t t = {0, 0, 0};
    size_t at, i, m;

    for (at = 0; at < n; at += m) {
        kvcd_l2_item_t it[50];

        m = n - at < 50 ? n - at : 50;
        memset(it, 0, sizeof(it));
        for (i = 0; i < m; i++) {
            it[i].key = o[at + i].key.k;
            if (op == KVCD_L2_STORE) {
                it[i].buf = o[at + i].data;
                it[i].len = o[at + i].len;
            } else if (op == KVCD_L2_LOAD) {
                it[i].buf = kvcd_test_buf(o[at + i].len);
                it[i].len = o[at + i].len;
            }
        }
        ck_assert_msg(kvcd_test_call(&loop, l2, op, it, m, 0) == 0, "op %d did not complete",
                      (int)op);
        for (i = 0; i < m; i++) {
            int r = it[i].result;

            if (r == 0) {
                t.ok++;
                if (op == KVCD_L2_LOAD) {
                    ck_assert_uint_eq(it[i].size, o[at + i].len);
                    ck_assert_msg(memcmp(it[i].buf, o[at + i].data, o[at + i].len) == 0,
                                  "key %zu: wrong bytes", at + i);
                }
            } else if (r == KVCD_ENOTFOUND && op != KVCD_L2_STORE) {
                t.miss++;
            } else {
                ck_assert_msg(!strict, "op %d key %zu: %s", (int)op, at + i, kvcd_errname(r));
                ck_assert_msg(r == KVCD_ECONNECT || r == KVCD_EUNAVAIL || r == KVCD_ETIMEDOUT ||
                                  r == -EIO || r == -EROFS,
                              "op %d key %zu: unexpected %s", (int)op, at + i, kvcd_errname(r));
                t.failed++;
            }
            if (op == KVCD_L2_LOAD)
                free(it[i].buf);
        }
    }
    return t;
}

static void all(kvcd_l2_op_t op, tobj_t *o, size_t n)
{
    tally_t t = pass(op, o, n, 1);

    ck_assert_msg(t.ok == n, "op %d: %zu of %zu ok, %zu misses", (int)op, t.ok, n, t.miss);
}

/* ---- adapter level ------------------------------------------------------------------ */

START_TEST(cluster_spec_errors)
{
    static const struct {
        const char *spec, *want;
    } cases[] = {
        {"{\"type\":\"redis\",\"cluster\":\"yes\"}", "cluster: expected true or false"},
        {"{\"type\":\"redis\",\"read_from_replicas\":true}", "read_from_replicas: only with"},
        {"{\"type\":\"redis\",\"cluster_refresh_ms\":1000}", "cluster_refresh_ms: only with"},
        {"{\"type\":\"redis\",\"max_redirects\":3}", "max_redirects: only with"},
        {"{\"type\":\"redis\",\"cluster\":true,\"db\":2}", "db: a Redis Cluster has only"},
        {"{\"type\":\"redis\",\"cluster\":true,\"key_prefix\":\"{kvcd}:\"}", "key_prefix: holds"},
        {"{\"type\":\"redis\",\"cluster\":true,\"virtual_nodes\":8}", "virtual_nodes: not with"},
        {"{\"type\":\"redis\",\"cluster\":true,\"max_redirects\":0}", "max_redirects: must be in"},
        {"{\"type\":\"redis\",\"cluster\":true,\"cluster_refresh_ms\":5}",
         "cluster_refresh_ms: must be in"},
        {"{\"type\":\"redis\",\"cluster\":true,\"read_from_replicas\":1}",
         "read_from_replicas: expected true or false"},
        {NULL, NULL},
    };
    char err[512];
    int i;

    for (i = 0; cases[i].spec; i++) {
        ck_assert_int_eq(try_create(cases[i].spec, err, sizeof(err)), KVCD_ECONFIG);
        ck_assert_msg(strstr(err, cases[i].want), "%s: got '%s', want '%s'", cases[i].spec, err,
                      cases[i].want);
        ck_assert_ptr_null(l2);
    }
    /* braces that are no tag are fine */
    ck_assert_int_eq(try_create("{\"type\":\"redis\",\"cluster\":true,\"key_prefix\":\"kv{}:\"}",
                                err, sizeof(err)),
                     0);
}
END_TEST

/* A seed without cluster support: no map, keys fail fast, the reason shows. */
START_TEST(seed_without_cluster_support)
{
    char spec[512], err[512];
    tobj_t *o = objs_new(4, 1, 1000);
    tally_t t;
    json_t *st, *c;
    uint64_t t0;

    need_redis();
    ck_assert_int_eq(kvcd_redis_start(&plain, tdir, "plain", 1), 0);
    snprintf(spec, sizeof(spec),
             "{\"type\":\"redis\",\"cluster\":true,\"host\":\"127.0.0.1\",\"port\":%d}",
             plain.port);
    ck_assert_msg(try_create(spec, err, sizeof(err)) == 0, "%s", err);
    t0 = now_ms();
    t = pass(KVCD_L2_STORE, o, 4, 0);
    ck_assert_uint_eq(t.failed, 4);
    ck_assert_uint_lt(now_ms() - t0, 2000);
    st = inst_status();
    c = json_object_get(st, "cluster");
    ck_assert(json_is_false(json_object_get(st, "healthy")));
    ck_assert(json_is_false(json_object_get(c, "have_map")));
    ck_assert_int_ge(json_integer_value(json_object_get(c, "refresh_failures")), 1);
    ck_assert_msg(strstr(json_string_value(json_object_get(c, "last_error")), "cluster support"),
                  "last_error: %s", json_string_value(json_object_get(c, "last_error")));
    json_decref(st);
    objs_free(o, 4);
}
END_TEST

/* A master killed: loads exact or failed (never wrong bytes); after the
 * failover every key that had reached the replica hits again, new stores
 * succeed, and the dead node is out of the map. */
START_TEST(master_killed_failover)
{
    const size_t n = 400, m = 100;
    tobj_t *o = objs_new(n, 1000, 8192), *o2 = objs_new(m, 5000, 8192);
    int i, mi = -1, ri = -1, rounds = 0;
    size_t failed = 0, missed = 0;
    uint64_t t0, promoted_ms = 0, healthy_ms;
    json_t *st, *nodes;
    size_t k;

    start_cluster();
    create_cluster_instance("\"cluster_refresh_ms\":1000");
    wait_health(1, 5000);
    all(KVCD_L2_STORE, o, n);
    ck_assert_int_eq(kvcd_redis_cluster_wait_synced(&cl, 10000), 0);
    for (i = 0; i < cl.n && mi < 0; i++)
        if (kvcd_redis_cluster_is_master(&cl, i) == 1 && kvcd_redis_int(&cl.node[i], "DBSIZE") > 0)
            mi = i;
    ck_assert_int_ge(mi, 0);
    for (i = 0; i < cl.n; i++)
        if (kvcd_redis_cluster_master_of(&cl, i) == mi)
            ri = i;
    ck_assert_int_ge(ri, 0);

    t0 = now_ms();
    kvcd_redis_stop(&cl.node[mi], SIGKILL);
    wait_health(0, 3000);
    /* load everything over and over until the replica is promoted and the
     * adapter is healthy again */
    for (;;) {
        tally_t t = pass(KVCD_L2_LOAD, o, n, 0);

        rounds++;
        failed += t.failed;
        missed += t.miss;
        if (!promoted_ms && kvcd_redis_cluster_is_master(&cl, ri) == 1)
            promoted_ms = now_ms() - t0;
        if (promoted_ms && healthy(NULL))
            break;
        ck_assert_msg(now_ms() - t0 < 30000, "no failover within 30 s");
        run_for(50);
    }
    healthy_ms = now_ms() - t0;
    ck_assert_uint_gt(failed, 0); /* the dead master's keys did fail meanwhile */
    all(KVCD_L2_LOOKUP, o, n);
    all(KVCD_L2_LOAD, o, n);
    all(KVCD_L2_STORE, o2, m);
    all(KVCD_L2_LOAD, o2, m);
    printf("master killed: replica promoted after %llu ms, adapter healthy after %llu ms; "
           "%d load passes meanwhile: %zu failed keys, %zu misses, no wrong bytes\n",
           (unsigned long long)promoted_ms, (unsigned long long)healthy_ms, rounds, failed,
           missed);

    st = inst_status();
    nodes = json_object_get(st, "nodes");
    for (k = 0; k < json_array_size(nodes); k++) {
        json_t *nd = json_array_get(nodes, k);
        char addr[32];

        snprintf(addr, sizeof(addr), "127.0.0.1:%d", cl.node[mi].port);
        if (!strcmp(json_string_value(json_object_get(nd, "address")), addr)) {
            ck_assert_str_ne(json_string_value(json_object_get(nd, "state")), "ready");
            ck_assert_str_eq(json_string_value(json_object_get(nd, "role")), "none");
        }
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", cl.node[ri].port);
        if (!strcmp(json_string_value(json_object_get(nd, "address")), addr))
            ck_assert_str_eq(json_string_value(json_object_get(nd, "role")), "master");
    }
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(st, "cluster"), "masters")),
                     3);
    ck_assert_int_ge(json_integer_value(json_object_get(json_object_get(st, "cluster"), "refreshes")),
                     2);
    json_decref(st);
    objs_free(o, n);
    objs_free(o2, m);
}
END_TEST

static int cluster_id(int i, char *id, size_t len)
{
    return kvcd_redis_str(&cl.node[i], id, len, "CLUSTER MYID");
}

/* Slots moved from one master to another while keys are loaded and stored:
 * only hits and misses, every key there afterwards, redirects counted. */
START_TEST(reshard_while_loading)
{
    const size_t n = 600, m = 300;
    tobj_t *o = objs_new(n, 20000, 4096), *o2 = objs_new(m, 30000, 4096);
    char from[64], to[64], port[16];
    const char *argv[16];
    int i, src = -1, dst = -1, status = -1, passes = 0;
    size_t misses = 0, stored = 0;
    uint64_t t0;
    pid_t pid;

    start_cluster();
    /* no periodic refresh during the test: the map goes stale, as it would
     * between two refreshes */
    create_cluster_instance("\"cluster_refresh_ms\":600000");
    wait_health(1, 5000);
    all(KVCD_L2_STORE, o, n);
    for (i = 0; i < cl.n; i++)
        if (kvcd_redis_cluster_is_master(&cl, i) == 1) {
            if (src < 0)
                src = i;
            else if (dst < 0)
                dst = i;
        }
    ck_assert_int_ge(dst, 0);
    ck_assert_int_eq(cluster_id(src, from, sizeof(from)), 0);
    ck_assert_int_eq(cluster_id(dst, to, sizeof(to)), 0);
    snprintf(port, sizeof(port), "127.0.0.1:%d", cl.node[src].port);
    i = 0;
    argv[i++] = "redis-cli";
    argv[i++] = "--cluster";
    argv[i++] = "reshard";
    argv[i++] = port;
    argv[i++] = "--cluster-from";
    argv[i++] = from;
    argv[i++] = "--cluster-to";
    argv[i++] = to;
    argv[i++] = "--cluster-slots";
    argv[i++] = "3000";
    argv[i++] = "--cluster-yes";
    argv[i] = NULL;
    t0 = now_ms();
    pid = kvcd_redis_cli(tdir, "reshard.log", argv, 0, 0);
    ck_assert_int_gt(pid, 0);
    for (;;) {
        tally_t t = pass(KVCD_L2_LOAD, o, n, 1);
        size_t part = stored + 20 <= m ? 20 : m - stored;

        misses += t.miss;
        passes++;
        if (part) {
            all(KVCD_L2_STORE, o2 + stored, part);
            stored += part;
        }
        if (waitpid(pid, &status, WNOHANG) == pid)
            break;
        if (now_ms() - t0 > 60000) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            ck_abort_msg("reshard did not finish within 60 s");
        }
    }
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "redis-cli --cluster reshard failed, see %s/reshard.log", tdir);
    all(KVCD_L2_LOAD, o, n);
    if (stored < m)
        all(KVCD_L2_STORE, o2 + stored, m - stored);
    all(KVCD_L2_LOAD, o2, m);
    ck_assert_int_gt(cstat("moved"), 0);
    ck_assert_int_eq(cstat("redirect_failures"), 0);
    ck_assert_int_eq(cstat("slots_covered"), 16384);
    printf("reshard of 3000 slots: %llu ms, %d load passes of %zu keys meanwhile, %zu misses; "
           "%lld MOVED, %lld ASK followed, %lld map refreshes\n",
           (unsigned long long)(now_ms() - t0), passes, n, misses, (long long)cstat("moved"),
           (long long)cstat("ask"), (long long)cstat("refreshes"));
    objs_free(o, n);
    objs_free(o2, m);
}
END_TEST

/* The node index of the master serving slot, per CLUSTER SLOTS of node j. */
static int owner_on(int j, unsigned slot)
{
    redisContext *c = kvcd_redis_connect(&cl.node[j]);
    redisReply *rep;
    int port = -1, i;
    size_t k;

    ck_assert_ptr_nonnull(c);
    rep = redisCommand(c, "CLUSTER SLOTS");
    ck_assert(rep && rep->type == REDIS_REPLY_ARRAY);
    for (k = 0; k < rep->elements; k++) {
        redisReply *e = rep->element[k];

        if ((unsigned)e->element[0]->integer <= slot && slot <= (unsigned)e->element[1]->integer)
            port = (int)e->element[2]->element[1]->integer;
    }
    freeReplyObject(rep);
    redisFree(c);
    for (i = 0; i < cl.n; i++)
        if (cl.node[i].port == port)
            return i;
    return -1;
}

/* One slot put in migration by hand (no key moved): a new key's store, its
 * lookup, load and remove get ASK from the source and go to the target with
 * ASKING (the store through the adapter's own zero-copy write, ASKING in
 * front); the map is left alone. Once the slot is assigned to the target,
 * the source answers MOVED and the map follows. */
START_TEST(ask_and_moved_for_one_slot)
{
    tobj_t *o = objs_new(1, 777, 256 * 1024);
    char name[KVCD_OBJ_NAME_MAX], sid[64], did[64];
    uint8_t dig[16];
    unsigned slot;
    size_t kl;
    int src, dst = -1, i;

    start_cluster();
    create_cluster_instance("\"cluster_refresh_ms\":600000");
    wait_health(1, 5000);
    ck_assert_int_eq(kvcd_obj_name(0, &o[0].key.k, name, dig), 0);
    kl = strlen(name) - strlen(KVCD_OBJ_NAME_SUFFIX);
    slot = kvcd_cluster_slot(name, kl);
    src = owner_on(0, slot);
    ck_assert_int_ge(src, 0);
    for (i = 0; i < cl.n && dst < 0; i++)
        if (i != src && kvcd_redis_cluster_is_master(&cl, i) == 1)
            dst = i;
    ck_assert_int_ge(dst, 0);
    ck_assert_int_eq(cluster_id(src, sid, sizeof(sid)), 0);
    ck_assert_int_eq(cluster_id(dst, did, sizeof(did)), 0);
    ck_assert_int_eq(kvcd_redis_int(&cl.node[dst], "CLUSTER SETSLOT %u IMPORTING %s", slot, sid),
                     0);
    ck_assert_int_eq(kvcd_redis_int(&cl.node[src], "CLUSTER SETSLOT %u MIGRATING %s", slot, did),
                     0);

    all(KVCD_L2_STORE, o, 1);
    ck_assert_int_eq(cstat("ask"), 1);
    ck_assert_int_eq(kvcd_redis_int(&cl.node[dst], "CLUSTER COUNTKEYSINSLOT %u", slot), 1);
    ck_assert_int_eq(kvcd_redis_int(&cl.node[src], "CLUSTER COUNTKEYSINSLOT %u", slot), 0);
    all(KVCD_L2_LOOKUP, o, 1);
    all(KVCD_L2_LOAD, o, 1);
    ck_assert_int_eq(cstat("ask"), 3);
    ck_assert_int_eq(cstat("moved"), 0);

    /* the slot is the target's now, on every node (as redis-cli does it),
     * before the adapter hears of it */
    ck_assert_int_eq(kvcd_redis_int(&cl.node[dst], "CLUSTER SETSLOT %u NODE %s", slot, did), 0);
    for (i = 0; i < cl.n; i++)
        if (i != dst && kvcd_redis_cluster_is_master(&cl, i) == 1)
            ck_assert_int_eq(
                kvcd_redis_int(&cl.node[i], "CLUSTER SETSLOT %u NODE %s", slot, did), 0);
    for (i = 0; i < cl.n; i++) {
        uint64_t end = now_ms() + 10000;

        while (owner_on(i, slot) != dst) {
            ck_assert_msg(now_ms() < end, "node %d does not see the slot moved", i);
            usleep(20000);
        }
    }
    all(KVCD_L2_LOAD, o, 1);
    ck_assert_int_eq(cstat("moved"), 1);
    all(KVCD_L2_LOAD, o, 1); /* straight to the target: the map has the slot */
    ck_assert_int_eq(cstat("moved"), 1);
    all(KVCD_L2_REMOVE, o, 1);
    ck_assert_int_eq(kvcd_redis_int(&cl.node[dst], "CLUSTER COUNTKEYSINSLOT %u", slot), 0);
    ck_assert_int_eq(cstat("redirect_failures"), 0);
    objs_free(o, 1);
}
END_TEST

/* Every node down: unhealthy, keys fail (fast, not wrong); back (empty, no
 * persistence): healthy again, misses, then stores and loads work. */
START_TEST(all_nodes_down_and_back)
{
    const size_t n = 200;
    tobj_t *o = objs_new(n, 40000, 2048), *probe = objs_new(1, 90000, 2048);
    tally_t t;
    uint64_t t0;
    int i;

    start_cluster();
    create_cluster_instance("\"cluster_refresh_ms\":1000");
    wait_health(1, 5000);
    all(KVCD_L2_STORE, o, n);
    all(KVCD_L2_LOAD, o, n);
    for (i = 0; i < cl.n; i++)
        kvcd_redis_stop(&cl.node[i], SIGKILL);
    wait_health(0, 3000);
    run_for(500);
    t0 = now_ms();
    t = pass(KVCD_L2_LOAD, o, n, 0);
    ck_assert_uint_eq(t.failed, n);
    ck_assert_uint_lt(now_ms() - t0, 3000);
    t = pass(KVCD_L2_STORE, o, n, 0);
    ck_assert_uint_eq(t.failed, n);
    ck_assert(!healthy(NULL));

    for (i = 0; i < cl.n; i++)
        ck_assert_int_eq(kvcd_redis_restart(&cl.node[i]), 0);
    t0 = now_ms();
    ck_assert_int_eq(kvcd_redis_cluster_wait_ok(&cl, 30000), 0);
    /* the core marks an instance healthy again once each kind of call that
     * kept failing works again (a lookup cannot vouch for stores): a lookup
     * and a store now and then, as traffic would */
    for (;;) {
        pass(KVCD_L2_LOOKUP, o, 1, 0);
        pass(KVCD_L2_STORE, probe, 1, 0); /* not one of o: those must miss below */
        if (healthy(NULL))
            break;
        ck_assert_msg(now_ms() - t0 < 15000, "not healthy 15 s after the restart");
        run_for(100);
    }
    printf("all nodes down and back: adapter healthy %llu ms after the restart\n",
           (unsigned long long)(now_ms() - t0));
    /* the nodes come back empty; a store may still meet CLUSTERDOWN while a
     * node's view settles, so allow a few passes */
    t = pass(KVCD_L2_LOAD, o, n, 0);
    ck_assert_uint_eq(t.ok, 0);
    for (i = 0; i < 50; i++) {
        t = pass(KVCD_L2_STORE, o, n, 0);
        if (t.ok == n)
            break;
        run_for(100);
    }
    ck_assert_uint_eq(t.ok, n);
    all(KVCD_L2_LOAD, o, n);
    objs_free(o, n);
    objs_free(probe, 1);
}
END_TEST

/* ---- the real daemon ------------------------------------------------------------ */

#define NKEYS 1000

static kvcd_proc_t pa, pb;
static kvcd_client_t *ca, *cb;
static kvcd_key_t base;
static uint8_t hb[NKEYS][8];
static kvcd_bytes_t H[NKEYS];

static void d_setup(void)
{
    size_t i;
    int k;

    base_setup();
    memset(&pa, 0, sizeof(pa));
    memset(&pb, 0, sizeof(pb));
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
    d_stop(&pa, &ca);
    d_stop(&pb, &cb);
    base_teardown();
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
    return 16384 + i * 17;
}

static void *chunk(size_t i)
{
    void *p = malloc(chunk_len(i));

    kvcd_fill_random(p, chunk_len(i), 9000 + i);
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

static int d_healthy(kvcd_client_t *c)
{
    json_t *st = kvcd_test_status(c);
    int h = json_is_true(
        json_object_get(json_array_get(json_object_get(st, "l2"), 0), "healthy"));

    json_decref(st);
    return h;
}

static void d_wait_healthy(kvcd_client_t *c)
{
    uint64_t end = now_ms() + 5000;

    while (!d_healthy(c)) {
        ck_assert_msg(now_ms() < end, "the daemon's redis cluster adapter is not healthy");
        usleep(20000);
    }
}

/* Lookup and load one key through c; 1 when it loaded with the right bytes. */
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
    }
    free(buf);
    return res == 0;
}

/* 1,000 chunks through daemon A (skip_l1: straight to the cluster), loaded
 * byte-exact through daemon B, which reads from replicas too; the keys are
 * where CLUSTER KEYSLOT says; STATUS shows the cluster. */
START_TEST(two_daemons_share_the_cluster)
{
    char spec_a[512], spec_b[512], name[KVCD_OBJ_NAME_MAX];
    long long total = 0, on_master[KVCD_REDIS_CLUSTER_MAX] = {0};
    json_t *root, *st, *c, *nodes;
    json_int_t replica_routed = 0;
    kvcd_key_t k = base;
    uint8_t dig[16];
    size_t i, kl;
    int s, masters = 0;

    start_cluster();
    /* B's map must name the replicas, or it has none to read from */
    ck_assert_int_eq(kvcd_redis_cluster_wait_replicas(&cl, 20000), 0);
    snprintf(spec_a, sizeof(spec_a),
             "{\"type\":\"redis\",\"cluster\":true,\"host\":\"127.0.0.1\",\"port\":%d}",
             cl.node[0].port);
    snprintf(spec_b, sizeof(spec_b),
             "{\"type\":\"redis\",\"cluster\":true,\"read_from_replicas\":true,"
             "\"nodes\":[{\"host\":\"127.0.0.1\",\"port\":%d}]}",
             cl.node[cl.n - 1].port);
    d_start(&pa, &ca, spec_a, "skip_l1");
    d_start(&pb, &cb, spec_b, "default");
    d_wait_healthy(ca);
    d_wait_healthy(cb);
    store_range(ca, 0, NKEYS);
    settle(ca, 20000);
    ck_assert_int_eq(kvcd_test_stat(ca, "l1", "objects"), 0);
    for (s = 0; s < cl.n; s++)
        if (kvcd_redis_cluster_is_master(&cl, s) == 1) {
            on_master[s] = kvcd_redis_int(&cl.node[s], "DBSIZE");
            ck_assert_int_gt(on_master[s], NKEYS / 6);
            total += on_master[s];
            masters++;
        }
    ck_assert_int_eq(masters, 3);
    ck_assert_int_eq(total, NKEYS);
    /* the adapter's slot is the server's */
    for (i = 0; i < NKEYS; i += 97) {
        k.hash = hb[i];
        k.hash_len = 8;
        ck_assert_int_eq(kvcd_obj_name(0, &k, name, dig), 0);
        kl = strlen(name) - strlen(KVCD_OBJ_NAME_SUFFIX);
        ck_assert_int_eq(kvcd_redis_int(&cl.node[0], "CLUSTER KEYSLOT %b", name, kl),
                         (long long)kvcd_cluster_slot(name, kl));
    }
    ck_assert_int_eq(kvcd_redis_cluster_wait_synced(&cl, 10000), 0);
    for (i = 0; i < NKEYS; i++)
        ck_assert_msg(fetch_check(cb, i) == 1, "key %zu missing through B", i);
    ck_assert_int_eq(kvcd_test_stat(cb, "storage", "l2_hits"), NKEYS);

    st = json_array_get(json_object_get(root = kvcd_test_status(cb), "l2"), 0);
    c = json_object_get(st, "cluster");
    ck_assert(json_is_true(json_object_get(st, "healthy")));
    ck_assert_int_eq(json_integer_value(json_object_get(c, "slots_covered")), 16384);
    ck_assert_int_eq(json_integer_value(json_object_get(c, "masters")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(c, "replicas")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(c, "moved")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "loads")), NKEYS);
    nodes = json_object_get(st, "nodes");
    for (i = 0; i < json_array_size(nodes); i++) {
        json_t *nd = json_array_get(nodes, i);

        if (!strcmp(json_string_value(json_object_get(nd, "role")), "replica"))
            replica_routed += json_integer_value(json_object_get(nd, "keys_routed"));
    }
    ck_assert_int_gt(replica_routed, 0); /* read_from_replicas did read from them */
    json_decref(root);
    st = json_array_get(json_object_get(root = kvcd_test_status(ca), "l2"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "stores")), NKEYS);
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(st, "cluster"), "moved")), 0);
    json_decref(root);
}
END_TEST

static Suite *cluster_suite(void)
{
    Suite *s = suite_create("redis_cluster");
    TCase *pure = tcase_create("pure");
    TCase *inst = tcase_create("adapter");
    TCase *dmn = tcase_create("daemon");

    tcase_add_test(pure, slots_match_redis);
    tcase_add_test(pure, redirect_parsing);
    suite_add_tcase(s, pure);

    tcase_add_checked_fixture(inst, base_setup, base_teardown);
    tcase_set_timeout(inst, 120);
    tcase_add_test(inst, cluster_spec_errors);
    tcase_add_test(inst, seed_without_cluster_support);
    tcase_add_test(inst, master_killed_failover);
    tcase_add_test(inst, ask_and_moved_for_one_slot);
    tcase_add_test(inst, reshard_while_loading);
    tcase_add_test(inst, all_nodes_down_and_back);
    suite_add_tcase(s, inst);

    tcase_add_checked_fixture(dmn, d_setup, d_teardown);
    tcase_set_timeout(dmn, 120);
    tcase_add_test(dmn, two_daemons_share_the_cluster);
    suite_add_tcase(s, dmn);
    return s;
}

int main(void)
{
    return kvcd_test_run(cluster_suite());
}
