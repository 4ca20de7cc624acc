/*
 * redis.c - an asynchronous L2 adapter on Redis or Valkey (RESP, hiredis).
 *
 * {"type":"redis","unix":"/run/redis/redis.sock"}   or "host"/"port", or
 * {"type":"redis","nodes":[{"host":"10.0.0.1"},{"host":"10.0.0.2"}], ...}  or
 * {"type":"redis","cluster":true,"nodes":[{"host":"10.0.0.1","port":7000}]}
 *
 * Keys are key_prefix + the fs adapter's file name without ".data"; a value is
 * the payload followed by the fs adapter's 64-byte trailer (adapters/object/format.h),
 * verified on every load. With several `nodes` each key lives on one of them,
 * chosen on a consistent-hash ring (adapters/redis/ring.h) from the key digest.
 *
 * Everything runs on the daemon's loop thread: one hiredis async connection per
 * node, attached with hiredis's libuv adapter; host names are resolved with
 * uv_getaddrinfo, so nothing blocks the loop. Per node, at most
 * `pipeline_depth` keys and `pipeline_bytes` of values are in flight (one key
 * always may be); the rest wait in the node's queue and are sent as replies
 * come back (a key whose batch deadline has passed by then is failed instead
 * of sent). Large values want few in flight: Redis copies every GET reply
 * into a fresh buffer, so a deep pipeline of them costs it page faults.
 *
 *  - store: one SET key <payload><trailer> [EX ttl]. Redis applies a command
 *    only once it has received all of it, so a store cut off by a lost
 *    connection is never visible: there is no partial value, and no temp key.
 *    The payload goes from the caller's buffer to the socket with no copy
 *    (send_store: hiredis queues the reply callback, we write the command);
 *    hiredis's own path would copy it twice and then move the unsent rest of
 *    its buffer after every partial write (quadratic for 4 MiB values).
 *  - lookup: STRLEN + GETRANGE of the trailer, pipelined: a hit has a sane
 *    trailer for a payload of STRLEN - 64 bytes; anything else is a miss.
 *  - load: GET, trailer and checksum verified, payload copied from hiredis's
 *    reply into the item's buffer. A damaged value is KVCD_ECHECKSUM and is
 *    deleted.
 *  - remove: UNLINK.
 *
 * Connections. A node is STARTING (until the first loop turn), DOWN,
 * RESOLVING, CONNECTING, HANDSHAKE (AUTH, SELECT or PING sent) or READY. Keys
 * for a DOWN node fail at once (KVCD_ECONNECT); keys for a node that is coming
 * up wait for it (bounded by connect_timeout_ms). A lost connection fails its
 * in-flight keys (a store may or may not have been applied, but never
 * partially), then reconnects after a backoff that doubles from
 * reconnect_min_ms to reconnect_max_ms. A connection that owes a reply and
 * has sent none for command_timeout_ms is dropped the same way, so no batch
 * waits much longer than that. Status reports the adapter unhealthy while any
 * node is not READY.
 *
 * Cluster mode ("cluster": true; host/port or nodes are only seeds). The slot
 * map comes from CLUSTER SLOTS (adapters/redis/cluster.h computes a key's
 * slot, hash tags honoured; kvcd adds none, so a prompt's chunks spread over
 * all masters). Each key goes to its slot's master (lookups and loads, with
 * read_from_replicas, to the master or a connected replica in turn); nodes
 * named by the map or by redirects are added and connected as above, and
 * never freed before close. MOVED updates the slot in the map, asks for a
 * refresh and sends the key again; ASK sends it again after ASKING, map
 * untouched; a key redirected more than max_redirects times fails. The map
 * is refreshed every cluster_refresh_ms, and sooner (at most every
 * REFRESH_MIN_MS) after a MOVED, a CLUSTERDOWN, an uncovered slot or a lost
 * connection to a node of the map: that is how a failover is found. Keys
 * submitted before the first map wait for it (bounded: they fail when no
 * seed can be reached or the first refresh fails). Healthy means: a map
 * that covers all 16384 slots, and every master in it READY.
 *
 * Lifetimes. hiredis callbacks never complete a batch directly: finished
 * batches go on a list that a timer delivers on the next loop turn, so the
 * core (which may close the instance from a completion) never runs inside
 * hiredis. Connections are torn down only from timer callbacks or close(),
 * never from inside a hiredis callback. Nodes are allocated apart from `self`
 * and freed when their last handle has closed; close() frees each connection
 * synchronously (hiredis runs the pending callbacks, which see a closed node
 * and do nothing), so nothing calls back into freed memory.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <uv.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "adapters/adapter.h"
#include "adapters/object/format.h"
#include "adapters/redis/cluster.h"
#include "adapters/redis/ring.h"

#define PREFIX_MAX 128
#define KEY_MAX (PREFIX_MAX + KVCD_OBJ_NAME_MAX)
#define NODES_MAX 256
#define CLUSTER_NODES_MAX 1024 /* seeds plus discovered nodes */
#define REPLICAS_MAX 8
#define REFRESH_MIN_MS 100 /* between two map refreshes asked for by errors */
#define TRL KVCD_OBJ_TRL_SIZE
#define ASKING_CMD "*1\r\n$6\r\nASKING\r\n"
#define HEAD_MAX (80 + KEY_MAX) /* [ASKING] "*5\r\n$3\r\nSET\r\n$<n>\r\n<key>\r\n$<n>\r\n" */
#define TAIL_MAX (TRL + 64)     /* trailer "\r\n" [$2 EX $<n> <ttl>] */
#define LOG_INTERVAL_MS 5000

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

typedef enum { N_START, N_DOWN, N_RESOLVING, N_CONNECTING, N_HANDSHAKE, N_READY } nstate_t;

static const char *const state_names[] = {"starting", "down",      "resolving",
                                          "connecting", "handshake", "ready"};

/* cluster mode: what the last slot map says a node is */
typedef enum { R_NONE, R_MASTER, R_REPLICA } nrole_t;

static const char *const role_names[] = {"none", "master", "replica"};

typedef struct rd_s rd_t;
typedef struct node_s node_t;
typedef struct job_s job_t;
typedef struct op_s op_t;

/* One key of a batch. */
struct op_s {
    job_t *job;
    node_t *node;
    op_t *prev, *next; /* in the node's wait or sent list */
    uint64_t sent_ms;
    size_t idx;
    int replies;   /* replies still to come */
    int rc;        /* result so far */
    long long len; /* lookup: STRLEN */
    size_t bytes;  /* value bytes it moves: store, load */
    /* cluster mode */
    unsigned slot;
    uint8_t asking;     /* send ASKING first (once) */
    uint8_t redirects;  /* MOVED/ASK followed so far */
    uint8_t redir_kind; /* a MOVED or ASK reply came: where to go next */
    uint8_t lost;       /* a reply was lost with the connection */
    unsigned redir_slot;
    node_t *redir_node;
    uint8_t dig[16];
    size_t keylen;
    char key[KEY_MAX];
};

/* One batch. */
struct job_s {
    rd_t *rd;
    kvcd_l2_batch_t *b;
    size_t pending; /* ops not finished (+1 while submitting) */
    job_t *next;    /* in rd's done list */
    op_t ops[];
};

typedef struct {
    op_t *head, *tail;
    size_t n;
} oplist_t;

struct node_s {
    rd_t *rd; /* NULL once the instance is closed */
    uv_loop_t *loop;
    char id[320];   /* ring identity: "name", "host:port" or "unix:path" */
    char addr[320]; /* for messages */
    char *host;     /* TCP, or NULL */
    int port;
    char *path; /* unix socket, or NULL */
    char ip[64];
    redisAsyncContext *ac;
    nstate_t state;
    int freeing; /* inside our own redisAsyncFree */
    int drop_rc; /* result of commands lost with the connection */
    int hs_pending, hs_failed;
    uv_timer_t retry; /* connect timeout, handshake failure, backoff */
    uv_timer_t watch; /* command timeout */
    uv_getaddrinfo_t gai;
    int gai_busy;
    int refs; /* open handles + resolver; freed at 0 once closed */
    int ever_ready;
    uint64_t backoff_ms, down_since;
    uint64_t progress_ms; /* last reply */
    /* the store whose command we are writing to the socket ourselves */
    op_t *raw;
    struct iovec riov[3];
    int ri;     /* first iovec not fully written */
    int broken; /* a write failed: dropped on the next loop turn */
    char rhead[HEAD_MAX];
    uint8_t rtail[TAIL_MAX];
    oplist_t wait, sent;
    size_t sent_bytes; /* of the keys in `sent` */
    uint64_t routed, connects, disconnects, failed_connects, timeouts, errors;
    char last_error[256];
    /* cluster mode */
    nrole_t role;
    unsigned slots; /* slots it serves as master, per the map */
    int seed;       /* given in the spec */
};

/* cluster mode: one slot range of the map and who serves it */
typedef struct {
    node_t *master;
    node_t *rep[REPLICAS_MAX];
    unsigned nrep;
} shard_t;

struct rd_s {
    uv_loop_t *loop;
    char instance[96];
    char prefix[PREFIX_MAX + 1];
    size_t prefix_len;
    char *password, *username;
    int db;
    long long ttl;
    uint64_t connect_timeout_ms, command_timeout_ms, reconnect_min_ms, reconnect_max_ms;
    unsigned depth, vnodes;
    size_t pipeline_bytes;
    node_t **nodes;
    size_t nnodes, cap;
    kvcd_ring_t ring;
    uv_timer_t *ticker; /* delivers finished batches; allocated apart */
    job_t *done_head, *done_tail;
    uint64_t stores, store_bytes, lookups, hits, loads, load_bytes, removes, checksum_failures,
        server_errors;
    /* the spec (adapters/registry.c fills them; strings borrowed during init) */
    const char *s_host, *s_unix, *s_password, *s_password_env, *s_username, *s_username_env,
        *s_prefix;
    const json_t *s_nodes;
    int64_t s_port;
    /* cluster mode (see "cluster" below) */
    bool cluster, replica_reads;
    unsigned max_redirects;
    uint64_t refresh_ms;
    shard_t *shards;
    size_t nshards, shards_cap;
    int32_t *slot_shard; /* KVCD_CLUSTER_SLOTS entries: index in shards, or -1 */
    unsigned covered;    /* slots with an owner */
    int have_map;
    uv_timer_t *refresher; /* periodic and on-demand refresh; allocated apart */
    node_t *refresh_node;  /* CLUSTER SLOTS in flight on it, or NULL */
    int refresh_again;     /* asked for while one was in flight */
    int refresh_wanted;    /* waiting for a connected node */
    uint64_t refresh_started_ms, refreshed_ms;
    oplist_t unrouted; /* keys waiting for the first map */
    unsigned rr;       /* replica choice */
    uint64_t moved, asks, refreshes, refresh_failures, redirect_failures, cluster_down;
    char map_error[512];
};

#define F(nm, ty, member) KVCD_FIELD(nm, ty, rd_t, member)
#define STR(nm, member, len) F(nm, KVCD_FIELD_STRING, member), .flags = KVCD_FIELD_NONEMPTY, .max = len

static const kvcd_adapter_field_t fields[] = {
    {STR("host", s_host, 255), .dflt_doc = "\"127.0.0.1\"",
     .doc = "server host name or address (one server; or use unix)"},
    {F("port", KVCD_FIELD_INT, s_port), .min = 1, .max = 65535, .dflt_doc = "6379",
     .doc = "server TCP port"},
    {STR("unix", s_unix, 107), .doc = "server unix socket path, instead of host/port"},
    {F("nodes", KVCD_FIELD_ARRAY, s_nodes), .flags = KVCD_FIELD_NONEMPTY,
     .doc = "several servers: [{\"host\":..,\"port\":..} or {\"unix\":..}, optional \"name\"]; "
            "keys are spread by consistent hashing"},
    {STR("password", s_password, 4096), .doc = "AUTH password"},
    {STR("password_env", s_password_env, 255),
     .doc = "name of an environment variable holding the password"},
    {STR("username", s_username, 4096), .doc = "ACL user name for AUTH (Redis 6+)"},
    {STR("username_env", s_username_env, 255),
     .doc = "name of an environment variable holding the user"},
    {F("db", KVCD_FIELD_INT32, db), .min = 0, .max = 1 << 20, .dflt = "0",
     .doc = "database number (SELECT)"},
    {F("key_prefix", KVCD_FIELD_STRING, s_prefix), .max = PREFIX_MAX, .dflt = "\"\"",
     .doc = "prepended to every key"},
    {F("connect_timeout_ms", KVCD_FIELD_INT, connect_timeout_ms), .min = 1, .max = 600000,
     .dflt = "1000", .doc = "bound on resolving, connecting and AUTH"},
    {F("command_timeout_ms", KVCD_FIELD_INT, command_timeout_ms), .min = 1, .max = 3600000,
     .dflt = "5000", .doc = "a command unanswered this long drops the connection and fails its keys"},
    {F("pipeline_depth", KVCD_FIELD_INT32, depth), .min = 1, .max = 65536, .dflt = "64",
     .doc = "keys in flight per server connection"},
    {F("pipeline_bytes", KVCD_FIELD_INT, pipeline_bytes), .min = 1, .max = 1099511627776.0,
     .dflt = "8388608", .doc = "value bytes in flight per server connection (one key always may be)"},
    {F("ttl_seconds", KVCD_FIELD_INT, ttl), .min = 0, .max = 1099511627776.0, .dflt = "0",
     .doc = "expiry set on stored values; 0 = none"},
    {F("virtual_nodes", KVCD_FIELD_INT32, vnodes), .min = 1, .max = 65536, .dflt = "512",
     .doc = "points per server on the hash ring"},
    {F("reconnect_min_ms", KVCD_FIELD_INT, reconnect_min_ms), .min = 1, .max = 3600000,
     .dflt = "100", .doc = "first reconnect delay"},
    {F("reconnect_max_ms", KVCD_FIELD_INT, reconnect_max_ms), .min = 1, .max = 3600000,
     .dflt = "2000", .doc = "reconnect delay cap (the delay doubles)"},
    {F("cluster", KVCD_FIELD_BOOL, cluster), .dflt = "false",
     .doc = "Redis Cluster: host/port or nodes are seeds; keys go by slot, MOVED/ASK followed"},
    {F("read_from_replicas", KVCD_FIELD_BOOL, replica_reads), .dflt = "false",
     .doc = "cluster: lookups and loads also go to replicas"},
    {F("cluster_refresh_ms", KVCD_FIELD_INT, refresh_ms), .min = 100, .max = 3600000,
     .dflt = "10000", .doc = "cluster: slot map refresh period"},
    {F("max_redirects", KVCD_FIELD_INT32, max_redirects), .min = 1, .max = 16, .dflt = "5",
     .doc = "cluster: MOVED/ASK followed per key before it fails"},
    {.name = NULL},
};

#undef STR
#undef F

/* The core's functions: the same table for every instance (set by init). */
static const kvcd_core_services_t *svc;


static void pump(node_t *n);
static void node_connect(node_t *n);
static void refresh_soon(rd_t *rd);
static void refresh_start(rd_t *rd);
static void fail_unrouted(rd_t *rd, int rc);
static int any_alive(const rd_t *rd);

/* ---- small helpers ---------------------------------------------------------- */

static void note(node_t *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void note(node_t *n, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(n->last_error, sizeof(n->last_error), fmt, ap);
    va_end(ap);
}

static void list_push(oplist_t *l, op_t *op)
{
    op->next = NULL;
    op->prev = l->tail;
    if (l->tail)
        l->tail->next = op;
    else
        l->head = op;
    l->tail = op;
    l->n++;
}

static void list_remove(oplist_t *l, op_t *op)
{
    if (op->prev)
        op->prev->next = op->next;
    else
        l->head = op->next;
    if (op->next)
        op->next->prev = op->prev;
    else
        l->tail = op->prev;
    op->prev = op->next = NULL;
    l->n--;
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* ---- completion ------------------------------------------------------------- */

static void tick_cb(uv_timer_t *t)
{
    rd_t *rd = t->data;
    job_t *job;

    while ((job = rd->done_head)) {
        kvcd_l2_batch_t *b = job->b;
        int last;

        rd->done_head = job->next;
        if (!rd->done_head)
            rd->done_tail = NULL;
        last = rd->done_head == NULL;
        free(job);
        /* The core may close the instance from here once nothing else is in
         * flight, which is only possible for the last one: stop touching rd. */
        svc->batch_done(b);
        if (last)
            return;
    }
}

static void job_complete(job_t *job)
{
    rd_t *rd = job->rd;

    job->next = NULL;
    if (rd->done_tail)
        rd->done_tail->next = job;
    else
        rd->done_head = job;
    rd->done_tail = job;
    if (!uv_is_active((uv_handle_t *)rd->ticker))
        uv_timer_start(rd->ticker, tick_cb, 0, 0);
}

static void op_done(op_t *op, int rc)
{
    job_t *job = op->job;

    job->b->items[op->idx].result = rc;
    if (--job->pending == 0)
        job_complete(job);
}

/* ---- event glue --------------------------------------------------------------- */

/* hiredis 0.14's libuv glue (redisLibuvAttach) ignores a poll error, and libuv
 * reports POLLERR by stopping the handle with UV_EBADF: a server that dies
 * while we wait to write to it would go unnoticed until the command timeout.
 * These replace its four event hooks (keeping its handle and cleanup): an
 * error is handed to hiredis as the events it waits for, so its read or write
 * fails and it disconnects, as later hiredis releases do. */
static void raw_write(node_t *n);

static void ev_set(redisLibuvEvents *p, int add, int del);

static void poll_cb(uv_poll_t *h, int status, int events)
{
    redisLibuvEvents *p = h->data;
    int ev = status ? p->events : events;
    node_t *n;

    if (p->context && (ev & UV_READABLE))
        redisAsyncHandleRead(p->context);
    if (p->context && (ev & UV_WRITABLE)) {
        n = p->context->data;
        /* hiredis's output waits until our command is out */
        if (n->raw)
            raw_write(n);
        else
            redisAsyncHandleWrite(p->context);
    }
    if (status && p->context && p->events) /* libuv stopped it: still wanted */
        uv_poll_start(&p->handle, p->events, poll_cb);
    /* a store waits for an empty output buffer: it may have drained now */
    if (p->context) {
        n = p->context->data;
        if (n->rd && n->state == N_READY && !n->raw && n->wait.head)
            pump(n);
    }
}

static void ev_set(redisLibuvEvents *p, int add, int del)
{
    int events = (p->events | add) & ~del;

    if (events == p->events && (events == 0 || uv_is_active((uv_handle_t *)&p->handle)))
        return; /* hiredis asks for the same events after every read */
    p->events = events;
    if (p->events)
        uv_poll_start(&p->handle, p->events, poll_cb);
    else
        uv_poll_stop(&p->handle);
}

static void ev_add_read(void *d)
{
    ev_set(d, UV_READABLE, 0);
}

static void ev_del_read(void *d)
{
    ev_set(d, 0, UV_READABLE);
}

static void ev_add_write(void *d)
{
    ev_set(d, UV_WRITABLE, 0);
}

static void ev_del_write(void *d)
{
    ev_set(d, 0, UV_WRITABLE);
}

/* ---- connections ------------------------------------------------------------ */

static void node_unref(node_t *n)
{
    if (--n->refs > 0)
        return;
    free(n->host);
    free(n->path);
    free(n);
}

static void handle_closed(uv_handle_t *h)
{
    node_unref(h->data);
}

static void fail_waiting(node_t *n, int rc)
{
    op_t *op;

    while ((op = n->wait.head)) {
        list_remove(&n->wait, op);
        op_done(op, rc);
    }
}

static void retry_cb(uv_timer_t *t);

/* The connection (or the attempt) is gone; hiredis owns or has freed the
 * context. Fail what waits and schedule the next attempt. */
static void node_lost(node_t *n)
{
    rd_t *rd = n->rd;
    int was_ready = n->state == N_READY;

    n->ac = NULL;
    n->state = N_DOWN;
    n->hs_pending = 0;
    n->raw = NULL;
    n->broken = 0;
    uv_timer_stop(&n->watch);
    if (was_ready) {
        n->disconnects++;
        n->down_since = uv_now(n->loop);
        KVCD_ALOG(svc, KVCD_ALOG_WARNING, "redis", "%s: lost %s: %s; reconnecting", rd->instance,
                 n->addr, n->last_error);
    } else {
        n->failed_connects++;
        if (n->failed_connects == 1 || n->ever_ready)
            KVCD_ALOG_RATELIMITED(svc, KVCD_ALOG_WARNING, "redis", LOG_INTERVAL_MS,
                                 "%s: cannot connect to %s: %s; retrying", rd->instance,
                                 n->addr, n->last_error);
    }
    fail_waiting(n, KVCD_ECONNECT);
    uv_timer_start(&n->retry, retry_cb, n->backoff_ms, 0);
    n->backoff_ms *= 2;
    if (n->backoff_ms > rd->reconnect_max_ms)
        n->backoff_ms = rd->reconnect_max_ms;
    if (rd->cluster) {
        /* a master lost may be failing over; keys waiting for a first map
         * cannot wait for nodes that are all down */
        if (rd->refresh_wanted && !any_alive(rd))
            fail_unrouted(rd, KVCD_ECONNECT);
        if (was_ready || n->role != R_NONE)
            refresh_soon(rd);
    }
}

/* Tear the connection down: pending callbacks run with no reply (their keys
 * fail with rc). Only from timer callbacks, never inside hiredis. */
static void node_drop(node_t *n, int rc)
{
    redisAsyncContext *ac = n->ac;

    if (!ac)
        return;
    n->drop_rc = rc;
    n->freeing = 1;
    redisAsyncFree(ac);
    n->freeing = 0;
    node_lost(n);
}

static void node_ready(node_t *n)
{
    rd_t *rd = n->rd;

    n->state = N_READY;
    n->connects++;
    n->backoff_ms = rd->reconnect_min_ms;
    uv_timer_stop(&n->retry);
    if (n->ever_ready)
        KVCD_ALOG(svc, KVCD_ALOG_INFO, "redis", "%s: reconnected to %s after %llu ms", rd->instance,
                 n->addr, (unsigned long long)(uv_now(n->loop) - n->down_since));
    else
        KVCD_ALOG(svc, KVCD_ALOG_INFO, "redis", "%s: connected to %s", rd->instance, n->addr);
    n->ever_ready = 1;
    n->last_error[0] = '\0';
    pump(n);
    if (rd->cluster && rd->refresh_wanted && !rd->refresh_node)
        refresh_start(rd);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    node_t *n = ac->data;

    if (!n->rd || n->freeing)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this returns */
        note(n, "connect: %s", ac->c.errstr[0] ? ac->c.errstr : "failed");
        node_lost(n);
        return;
    }
    n->state = N_HANDSHAKE;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    node_t *n = ac->data;

    if (!n->rd || n->freeing)
        return;
    /* hiredis is freeing the context; pending callbacks have already run */
    if (status != REDIS_OK || !n->last_error[0])
        note(n, "%s", status != REDIS_OK && ac->c.errstr[0] ? ac->c.errstr : "connection closed");
    node_lost(n);
}

static void hs_cb(redisAsyncContext *ac, void *r, void *priv)
{
    node_t *n = priv;
    redisReply *reply = r;

    if (!n->rd || !reply)
        return; /* connection gone: node_lost does the rest */
    if (reply->type == REDIS_REPLY_ERROR) {
        if (!n->hs_failed)
            note(n, "handshake: %.*s", (int)reply->len, reply->str);
        n->hs_failed = 1;
    }
    if (--n->hs_pending > 0)
        return;
    if (n->hs_failed)
        uv_timer_start(&n->retry, retry_cb, 0, 0); /* drop it outside hiredis */
    else
        node_ready(n);
}

static int hs_send(node_t *n, int argc, const char **argv)
{
    size_t len[4];
    int i;

    for (i = 0; i < argc; i++)
        len[i] = strlen(argv[i]);
    if (redisAsyncCommandArgv(n->ac, hs_cb, n, argc, argv, len) != REDIS_OK)
        return -1;
    n->hs_pending++;
    return 0;
}

static void start_connect(node_t *n, const char *ip)
{
    rd_t *rd = n->rd;
    redisAsyncContext *ac;
    char dbs[16];
    int bad = 0;

    ac = n->path ? redisAsyncConnectUnix(n->path) : redisAsyncConnect(ip, n->port);
    if (!ac) {
        note(n, "connect: out of memory");
        node_lost(n);
        return;
    }
    if (ac->err) {
        note(n, "connect: %s", ac->errstr);
        redisAsyncFree(ac);
        node_lost(n);
        return;
    }
    if (redisLibuvAttach(ac, n->loop) != REDIS_OK) {
        note(n, "connect: cannot attach to the loop");
        redisAsyncFree(ac);
        node_lost(n);
        return;
    }
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    if (!n->path)
        redisEnableKeepAlive(&ac->c);
    ac->data = n;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    n->ac = ac;
    n->state = N_CONNECTING;
    n->drop_rc = KVCD_ECONNECT;
    n->hs_pending = n->hs_failed = 0;
    n->last_error[0] = '\0';
    /* Queued now, written first once connected. */
    if (rd->password) {
        const char *a3[] = {"AUTH", rd->username, rd->password};
        const char *a2[] = {"AUTH", rd->password};

        bad |= rd->username ? hs_send(n, 3, a3) : hs_send(n, 2, a2);
    }
    if (rd->db) {
        const char *a[] = {"SELECT", dbs};

        snprintf(dbs, sizeof(dbs), "%d", rd->db);
        bad |= hs_send(n, 2, a);
    }
    if (!rd->password && !rd->db) {
        const char *a[] = {"PING"};

        bad |= hs_send(n, 1, a);
    }
    if (rd->cluster && rd->replica_reads) {
        const char *a[] = {"READONLY"}; /* a replica serves reads of its slots */

        bad |= hs_send(n, 1, a);
    }
    if (bad) {
        note(n, "connect: cannot queue the handshake");
        uv_timer_start(&n->retry, retry_cb, 0, 0);
        return;
    }
    uv_timer_start(&n->retry, retry_cb, rd->connect_timeout_ms, 0);
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    node_t *n = container_of(req, node_t, gai);

    n->gai_busy = 0;
    if (!n->rd || n->state != N_RESOLVING) {
        /* closed, or the attempt timed out: nobody waits for this answer */
        uv_freeaddrinfo(res);
        node_unref(n);
        return;
    }
    n->refs--;
    if (status != 0 || !res) {
        note(n, "resolve %s: %s", n->host, uv_strerror(status ? status : UV_EAI_NONAME));
        uv_freeaddrinfo(res);
        uv_timer_stop(&n->retry);
        node_lost(n);
        return;
    }
    if (res->ai_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)res->ai_addr, n->ip, sizeof(n->ip));
    else
        uv_ip4_name((const struct sockaddr_in *)res->ai_addr, n->ip, sizeof(n->ip));
    uv_freeaddrinfo(res);
    start_connect(n, n->ip);
}

static int is_ip(const char *s)
{
    unsigned char buf[16];

    return uv_inet_pton(AF_INET, s, buf) == 0 || uv_inet_pton(AF_INET6, s, buf) == 0;
}

static void node_connect(node_t *n)
{
    rd_t *rd = n->rd;
    struct addrinfo hints;
    int r;

    if (n->path || is_ip(n->host)) {
        start_connect(n, n->host);
        return;
    }
    n->state = N_RESOLVING;
    if (!n->gai_busy) {
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        r = uv_getaddrinfo(n->loop, &n->gai, gai_cb, n->host, NULL, &hints);
        if (r != 0) {
            note(n, "resolve %s: %s", n->host, uv_strerror(r));
            node_lost(n);
            return;
        }
        n->gai_busy = 1;
        n->refs++;
    }
    uv_timer_start(&n->retry, retry_cb, rd->connect_timeout_ms, 0);
}

static void retry_cb(uv_timer_t *t)
{
    node_t *n = t->data;

    if (!n->rd)
        return;
    switch (n->state) {
    case N_START:
    case N_DOWN:
        node_connect(n);
        break;
    case N_RESOLVING:
        note(n, "resolve %s: no answer within %llu ms", n->host,
             (unsigned long long)n->rd->connect_timeout_ms);
        node_lost(n);
        break;
    case N_CONNECTING:
    case N_HANDSHAKE:
        if (!n->hs_failed)
            note(n, "connect: no answer within %llu ms",
                 (unsigned long long)n->rd->connect_timeout_ms);
        node_drop(n, KVCD_ECONNECT);
        break;
    case N_READY:
        if (n->broken)
            node_drop(n, KVCD_ECONNECT);
        break;
    }
}

/* When the connection has owed a reply for command_timeout_ms: since the
 * oldest unanswered command was sent, or since the last reply if that is
 * later (replies come in order, so one arriving is progress). */
static uint64_t watch_due(node_t *n)
{
    uint64_t since = n->sent.head->sent_ms;

    if (n->progress_ms > since)
        since = n->progress_ms;
    return since + n->rd->command_timeout_ms;
}

static void watch_cb(uv_timer_t *t)
{
    node_t *n = t->data;
    uint64_t now, due;

    if (!n->rd || n->state != N_READY || !n->sent.head)
        return;
    now = uv_now(n->loop);
    due = watch_due(n);
    if (now >= due) {
        /* libuv runs timers before polling: after a long loop turn, replies
         * may be waiting unread. Read them before judging the server. */
        redisAsyncHandleRead(n->ac);
        if (!n->rd || n->state != N_READY || !n->sent.head)
            return;
        due = watch_due(n);
    }
    if (now < due) {
        uv_timer_start(t, watch_cb, due - now, 0);
        return;
    }
    n->timeouts++;
    note(n, "no reply within %llu ms", (unsigned long long)n->rd->command_timeout_ms);
    node_drop(n, KVCD_ETIMEDOUT);
}

/* ---- nodes and routing ---------------------------------------------------------- */

/* A new node (connecting once its retry timer runs; the caller starts it), or
 * NULL when out of memory. */
static node_t *node_new(rd_t *rd, const char *host, int port, const char *path, const char *id,
                        const char *addr)
{
    node_t *n;

    if (rd->nnodes == rd->cap) {
        size_t cap = rd->cap ? rd->cap * 2 : 8;
        node_t **a = realloc(rd->nodes, cap * sizeof(*a));

        if (!a)
            return NULL;
        rd->nodes = a;
        rd->cap = cap;
    }
    n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    if ((host && !(n->host = strdup(host))) || (path && !(n->path = strdup(path)))) {
        free(n->host);
        free(n);
        return NULL;
    }
    snprintf(n->id, sizeof(n->id), "%s", id);
    snprintf(n->addr, sizeof(n->addr), "%s", addr);
    n->rd = rd;
    n->loop = rd->loop;
    n->port = port;
    n->backoff_ms = rd->reconnect_min_ms;
    uv_timer_init(rd->loop, &n->retry);
    uv_timer_init(rd->loop, &n->watch);
    n->retry.data = n->watch.data = n;
    n->refs = 2;
    rd->nodes[rd->nnodes++] = n;
    return n;
}

static void fmt_addr(char *addr, size_t len, const char *host, int port)
{
    if (strchr(host, ':'))
        snprintf(addr, len, "[%s]:%d", host, port);
    else
        snprintf(addr, len, "%s:%d", host, port);
}

/* Cluster mode: the node at host:port, created (and connecting) when new.
 * NULL when out of memory or past CLUSTER_NODES_MAX. */
static node_t *cluster_node(rd_t *rd, const char *host, int port)
{
    char addr[320];
    node_t *n;
    size_t i;

    for (i = 0; i < rd->nnodes; i++) {
        n = rd->nodes[i];
        if (n->host && n->port == port && !strcmp(n->host, host))
            return n;
    }
    if (rd->nnodes >= CLUSTER_NODES_MAX)
        return NULL;
    fmt_addr(addr, sizeof(addr), host, port);
    n = node_new(rd, host, port, NULL, addr, addr);
    if (!n)
        return NULL;
    KVCD_ALOG(svc, KVCD_ALOG_INFO, "redis", "%s: cluster node %s discovered", rd->instance, addr);
    uv_timer_start(&n->retry, retry_cb, 0, 0);
    return n;
}

static int is_read(kvcd_l2_op_t op)
{
    return op == KVCD_L2_LOOKUP || op == KVCD_L2_LOAD;
}

/* Who serves slot: its master, or for reads with read_from_replicas any of
 * its connected master and replicas in turn. NULL when the slot is not
 * covered. */
static node_t *slot_node(rd_t *rd, unsigned slot, int read)
{
    int32_t s = rd->slot_shard[slot];
    node_t *c[REPLICAS_MAX + 1];
    const shard_t *sh;
    unsigned k = 0, i;

    if (s < 0)
        return NULL;
    sh = &rd->shards[s];
    if (!read || !rd->replica_reads || sh->nrep == 0)
        return sh->master;
    if (sh->master->state == N_READY)
        c[k++] = sh->master;
    for (i = 0; i < sh->nrep; i++)
        if (sh->rep[i]->state == N_READY)
            c[k++] = sh->rep[i];
    return k ? c[rd->rr++ % k] : sh->master;
}

static void enqueue(node_t *n, op_t *op)
{
    op->node = n;
    n->routed++;
    if (n->state == N_DOWN) {
        op_done(op, KVCD_ECONNECT);
        return;
    }
    list_push(&n->wait, op);
    pump(n);
}

static void refresh_soon(rd_t *rd);

static void route(rd_t *rd, op_t *op)
{
    node_t *n;

    if (!rd->cluster) {
        enqueue(rd->nodes[rd->nnodes == 1 ? 0 : kvcd_ring_pick(&rd->ring, be64(op->dig))], op);
        return;
    }
    if (!rd->have_map) {
        op->node = NULL;
        list_push(&rd->unrouted, op);
        refresh_soon(rd);
        return;
    }
    n = slot_node(rd, op->slot, is_read(op->job->b->op));
    if (!n) {
        op_done(op, KVCD_EUNAVAIL); /* slot not covered (CLUSTERDOWN) */
        refresh_soon(rd);
        return;
    }
    enqueue(n, op);
}

/* ---- cluster: the slot map ---------------------------------------------------- */

/* Map refresh. One CLUSTER SLOTS at a time, on a connected node (taken in
 * turn, so one that answers badly is not asked again and again); periodic
 * every cluster_refresh_ms, sooner (but not more often than every
 * REFRESH_MIN_MS) after a MOVED, a CLUSTERDOWN, an uncovered slot or a lost
 * connection to a node of the map. A refresh without an answer within
 * command_timeout_ms is given up and another node asked. Keys submitted
 * before the first map wait in `unrouted`; they fail when no node can be
 * reached or the first refresh fails. */
static void refresh_cb(uv_timer_t *t);
static void slots_cb(redisAsyncContext *ac, void *r, void *priv);

static void refresh_at(rd_t *rd, uint64_t delay)
{
    if (uv_is_active((uv_handle_t *)rd->refresher) && uv_timer_get_due_in(rd->refresher) <= delay)
        return;
    uv_timer_start(rd->refresher, refresh_cb, delay, 0);
}

static void refresh_soon(rd_t *rd)
{
    uint64_t now, due;

    if (!rd->cluster)
        return;
    if (rd->refresh_node) {
        rd->refresh_again = 1;
        return;
    }
    now = uv_now(rd->loop);
    due = rd->refresh_started_ms + REFRESH_MIN_MS;
    refresh_at(rd, due > now ? due - now : 0);
}

static void fail_unrouted(rd_t *rd, int rc)
{
    op_t *op;

    while ((op = rd->unrouted.head)) {
        list_remove(&rd->unrouted, op);
        op_done(op, rc);
    }
}

static void route_unrouted(rd_t *rd)
{
    oplist_t l = rd->unrouted;
    op_t *op;

    memset(&rd->unrouted, 0, sizeof(rd->unrouted));
    while ((op = l.head)) {
        list_remove(&l, op);
        route(rd, op);
    }
}

static int any_alive(const rd_t *rd)
{
    size_t i;

    for (i = 0; i < rd->nnodes; i++)
        if (rd->nodes[i]->state != N_DOWN)
            return 1;
    return 0;
}

static void refresh_start(rd_t *rd)
{
    node_t *n = NULL;
    size_t k;

    for (k = 0; k < rd->nnodes && !n; k++) {
        node_t *c = rd->nodes[(rd->refreshes + rd->refresh_failures + k) % rd->nnodes];

        if (c->state == N_READY && !c->broken)
            n = c;
    }
    if (!n) {
        /* node_ready starts it; meanwhile keys without a map cannot wait
         * for nodes that are all down */
        rd->refresh_wanted = 1;
        if (!any_alive(rd)) {
            snprintf(rd->map_error, sizeof(rd->map_error), "no cluster node reachable");
            fail_unrouted(rd, KVCD_ECONNECT);
        }
        refresh_at(rd, rd->refresh_ms);
        return;
    }
    rd->refresh_wanted = 0;
    rd->refresh_again = 0;
    rd->refresh_started_ms = uv_now(rd->loop);
    if (redisAsyncCommand(n->ac, slots_cb, n, "CLUSTER SLOTS") != REDIS_OK) {
        rd->refresh_failures++;
        refresh_at(rd, REFRESH_MIN_MS);
        return;
    }
    rd->refresh_node = n;
    uv_timer_start(rd->refresher, refresh_cb, rd->command_timeout_ms, 0);
}

static void refresh_cb(uv_timer_t *t)
{
    rd_t *rd = t->data;

    if (rd->refresh_node) { /* no answer in time: a late one is ignored */
        rd->refresh_failures++;
        snprintf(rd->map_error, sizeof(rd->map_error), "CLUSTER SLOTS: no reply from %s within %llu ms",
                 rd->refresh_node->addr, (unsigned long long)rd->command_timeout_ms);
        rd->refresh_node = NULL;
    }
    refresh_start(rd);
}

/* MOVED: slot is served by `to` from now on (until the next refresh). */
static void map_moved(rd_t *rd, unsigned slot, node_t *to)
{
    int32_t old = rd->slot_shard[slot];
    size_t i;

    for (i = 0; i < rd->nshards; i++)
        if (rd->shards[i].master == to)
            break;
    if (i == rd->nshards) {
        if (rd->nshards == rd->shards_cap) {
            size_t cap = rd->shards_cap * 2 + 4;
            shard_t *a = realloc(rd->shards, cap * sizeof(*a));

            if (!a)
                return;
            rd->shards = a;
            rd->shards_cap = cap;
        }
        memset(&rd->shards[i], 0, sizeof(rd->shards[i]));
        rd->shards[i].master = to;
        rd->nshards++;
    }
    if (old < 0)
        rd->covered++;
    else if (rd->shards[old].master->slots > 0)
        rd->shards[old].master->slots--;
    rd->slot_shard[slot] = (int32_t)i;
    to->slots++;
    to->role = R_MASTER;
}

/* Replace the map with a CLUSTER SLOTS reply from `from`:
 * [[start, end, [ip, port, id, ...] (master), [ip, port, ...] (replicas)...], ...]
 * 0, or -1 with rd->map_error set. */
static int map_apply(rd_t *rd, node_t *from, const redisReply *r)
{
    shard_t *sh = NULL;
    int32_t *map = NULL;
    size_t nsh = 0, i, j;
    unsigned covered = 0, masters = 0;
    long long s;

    if (r->type != REDIS_REPLY_ARRAY) {
        snprintf(rd->map_error, sizeof(rd->map_error), "CLUSTER SLOTS on %s: not an array",
                 from->addr);
        return -1;
    }
    sh = calloc(r->elements + 1, sizeof(*sh));
    map = malloc(KVCD_CLUSTER_SLOTS * sizeof(*map));
    if (!sh || !map)
        goto nomem;
    for (s = 0; s < KVCD_CLUSTER_SLOTS; s++)
        map[s] = -1;
    for (i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        long long a, b;

        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER)
            goto bad;
        a = e->element[0]->integer;
        b = e->element[1]->integer;
        if (a < 0 || b < a || b >= KVCD_CLUSTER_SLOTS)
            goto bad;
        for (j = 2; j < e->elements; j++) {
            const redisReply *nd = e->element[j];
            char host[256];
            node_t *x;

            if (nd->type != REDIS_REPLY_ARRAY || nd->elements < 2 ||
                nd->element[0]->type != REDIS_REPLY_STRING ||
                nd->element[1]->type != REDIS_REPLY_INTEGER || nd->element[0]->len >= sizeof(host) ||
                nd->element[1]->integer < 1 || nd->element[1]->integer > 65535)
                goto bad;
            if (nd->element[0]->len == 0) { /* "the node you asked" */
                if (!from->host)
                    continue;
                snprintf(host, sizeof(host), "%s", from->host);
            } else {
                memcpy(host, nd->element[0]->str, nd->element[0]->len);
                host[nd->element[0]->len] = '\0';
            }
            if (!strcmp(host, "?"))
                continue; /* endpoint unknown to the cluster */
            x = cluster_node(rd, host, (int)nd->element[1]->integer);
            if (!x)
                goto nomem;
            if (j == 2)
                sh[nsh].master = x;
            else if (sh[nsh].master && sh[nsh].nrep < REPLICAS_MAX && x != sh[nsh].master)
                sh[nsh].rep[sh[nsh].nrep++] = x;
        }
        if (!sh[nsh].master)
            continue;
        for (s = a; s <= b; s++) {
            covered += map[s] < 0;
            map[s] = (int32_t)nsh;
        }
        nsh++;
    }
    for (i = 0; i < rd->nnodes; i++) {
        rd->nodes[i]->role = R_NONE;
        rd->nodes[i]->slots = 0;
    }
    for (i = 0; i < nsh; i++)
        for (j = 0; j < sh[i].nrep; j++)
            sh[i].rep[j]->role = R_REPLICA;
    for (s = 0; s < KVCD_CLUSTER_SLOTS; s++)
        if (map[s] >= 0)
            sh[map[s]].master->slots++;
    for (i = 0; i < nsh; i++) {
        masters += sh[i].master->role != R_MASTER;
        sh[i].master->role = R_MASTER;
    }
    if (!rd->have_map || covered != rd->covered)
        KVCD_ALOG(svc, covered == KVCD_CLUSTER_SLOTS ? KVCD_ALOG_INFO : KVCD_ALOG_WARNING, "redis",
                 "%s: cluster map from %s: %u masters, %u of %d slots covered", rd->instance,
                 from->addr, masters, covered, KVCD_CLUSTER_SLOTS);
    free(rd->shards);
    free(rd->slot_shard);
    rd->shards = sh;
    rd->nshards = nsh;
    rd->shards_cap = r->elements + 1;
    rd->slot_shard = map;
    rd->covered = covered;
    rd->have_map = 1;
    rd->map_error[0] = '\0';
    return 0;
bad:
    snprintf(rd->map_error, sizeof(rd->map_error), "CLUSTER SLOTS on %s: unexpected reply",
             from->addr);
    free(sh);
    free(map);
    return -1;
nomem:
    snprintf(rd->map_error, sizeof(rd->map_error), "CLUSTER SLOTS on %s: out of memory",
             from->addr);
    free(sh);
    free(map);
    return -1;
}

static void slots_cb(redisAsyncContext *ac, void *r, void *priv)
{
    node_t *n = priv;
    rd_t *rd = n->rd;
    redisReply *reply = r;
    int rc = -1;

    if (!rd || rd->refresh_node != n)
        return; /* closed, or given up on */
    rd->refresh_node = NULL;
    uv_timer_stop(rd->refresher);
    if (!reply)
        snprintf(rd->map_error, sizeof(rd->map_error), "CLUSTER SLOTS on %s: connection lost",
                 n->addr);
    else if (reply->type == REDIS_REPLY_ERROR)
        snprintf(rd->map_error, sizeof(rd->map_error), "CLUSTER SLOTS on %s: %.*s", n->addr,
                 (int)reply->len, reply->str);
    else
        rc = map_apply(rd, n, reply);
    if (rc != 0) {
        rd->refresh_failures++;
        KVCD_ALOG_RATELIMITED(svc, KVCD_ALOG_WARNING, "redis", LOG_INTERVAL_MS, "%s: %s", rd->instance,
                             rd->map_error);
        if (!rd->have_map)
            fail_unrouted(rd, KVCD_EUNAVAIL);
        refresh_at(rd, rd->refresh_again || !rd->have_map ? REFRESH_MIN_MS : rd->refresh_ms / 4 + 1);
        return;
    }
    rd->refreshes++;
    rd->refreshed_ms = uv_now(rd->loop);
    route_unrouted(rd);
    if (!rd->refresher)
        return; /* cannot happen: close waits for every key */
    refresh_at(rd, rd->refresh_again ? REFRESH_MIN_MS : rd->refresh_ms);
    rd->refresh_again = 0;
}

/* A MOVED or ASK reply for op: remember where to go (the first one counts:
 * a lookup sends two commands). 1 when it was one. */
static int redirect_reply(op_t *op, const redisReply *reply)
{
    node_t *n = op->node, *to;
    char host[256];
    unsigned slot;
    int port;
    kvcd_redir_t k = kvcd_cluster_redirect(reply->str, reply->len, &slot, host, sizeof(host), &port);

    if (k == KVCD_REDIR_NONE)
        return 0;
    if (op->redir_kind)
        return 1;
    if (!host[0]) {
        if (!n->host)
            return 0;
        snprintf(host, sizeof(host), "%s", n->host);
    }
    to = cluster_node(n->rd, host, port);
    if (!to)
        return 0;
    op->redir_kind = (uint8_t)k;
    op->redir_slot = slot;
    op->redir_node = to;
    return 1;
}

/* Follow op's redirect: MOVED updates the map (and asks for a refresh, as a
 * slot rarely moves alone), ASK does not; both send the key again, to the
 * node named, ASK with ASKING first. */
static void redirect(op_t *op)
{
    rd_t *rd = op->job->rd;
    node_t *to = op->redir_node;
    int kind = op->redir_kind;

    op->redir_kind = 0;
    op->redir_node = NULL;
    if (kind == KVCD_REDIR_MOVED) {
        rd->moved++;
        map_moved(rd, op->redir_slot, to);
        refresh_soon(rd);
    } else {
        rd->asks++;
    }
    if (++op->redirects > rd->max_redirects) {
        rd->redirect_failures++;
        KVCD_ALOG_RATELIMITED(svc, KVCD_ALOG_WARNING, "redis", LOG_INTERVAL_MS,
                             "%s: '%.*s' redirected %u times: given up", rd->instance,
                             (int)op->keylen, op->key, rd->max_redirects);
        op_done(op, KVCD_EUNAVAIL);
        return;
    }
    op->asking = kind == KVCD_REDIR_ASK;
    enqueue(to, op);
}

/* ---- commands --------------------------------------------------------------- */

static int map_error(node_t *n, const redisReply *reply)
{
    const char *s = reply->str ? reply->str : "";

    n->errors++;
    n->rd->server_errors++;
    note(n, "%.*s", (int)reply->len, s);
    KVCD_ALOG_RATELIMITED(svc, KVCD_ALOG_WARNING, "redis", LOG_INTERVAL_MS, "%s: %s: %.*s",
                         n->rd->instance, n->addr, (int)reply->len, s);
    if (!strncmp(s, "OOM", 3))
        return -ENOSPC;
    if (!strncmp(s, "NOAUTH", 6) || !strncmp(s, "WRONGPASS", 9) || !strncmp(s, "NOPERM", 6))
        return -EACCES;
    if (!strncmp(s, "READONLY", 8))
        return -EROFS;
    if (!strncmp(s, "LOADING", 7) || !strncmp(s, "BUSY", 4) || !strncmp(s, "MASTERDOWN", 10) ||
        !strncmp(s, "TRYAGAIN", 8))
        return KVCD_EUNAVAIL;
    if (!strncmp(s, "CLUSTERDOWN", 11)) { /* a slot without a master: failover under way */
        n->rd->cluster_down++;
        refresh_soon(n->rd);
        return KVCD_EUNAVAIL;
    }
    return -EIO;
}

/* A damaged or foreign value: count it and delete it (a later store writes a
 * good one; deleting a good value a concurrent writer just set costs a miss). */
static void bad_value(op_t *op)
{
    node_t *n = op->node;
    const char *argv[] = {"UNLINK", op->key};
    size_t len[] = {6, op->keylen};

    n->rd->checksum_failures++;
    KVCD_ALOG_RATELIMITED(svc, KVCD_ALOG_WARNING, "redis", LOG_INTERVAL_MS,
                         "%s: damaged value under '%.*s' on %s: deleted", n->rd->instance,
                         (int)op->keylen, op->key, n->addr);
    redisAsyncCommandArgv(n->ac, NULL, NULL, 2, argv, len);
}

static void on_reply(op_t *op, redisReply *reply)
{
    kvcd_l2_batch_t *b = op->job->b;
    kvcd_l2_item_t *it = &b->items[op->idx];
    node_t *n = op->node;

    if (reply->type == REDIS_REPLY_ERROR) {
        if (n->rd->cluster && redirect_reply(op, reply))
            return;
        if (!op->rc)
            op->rc = map_error(n, reply);
        return;
    }
    if (op->rc || op->redir_kind)
        return;
    switch (b->op) {
    case KVCD_L2_STORE:
        op->rc = reply->type == REDIS_REPLY_STATUS ? 0 : -EIO;
        if (!op->rc) {
            n->rd->stores++;
            n->rd->store_bytes += it->len;
        }
        break;
    case KVCD_L2_LOOKUP:
        if (op->replies == 2) { /* STRLEN */
            op->rc = reply->type == REDIS_REPLY_INTEGER ? 0 : -EIO;
            op->len = reply->integer;
            break;
        }
        /* GETRANGE key -64 -1 */
        if (reply->type != REDIS_REPLY_STRING) {
            op->rc = -EIO;
        } else if (op->len == 0) {
            op->rc = KVCD_ENOTFOUND;
        } else if (op->len < TRL || reply->len != TRL ||
                   !kvcd_obj_trl_sane((const uint8_t *)reply->str, (uint64_t)(op->len - TRL))) {
            bad_value(op);
            op->rc = KVCD_ENOTFOUND;
        } else {
            it->size = (size_t)(op->len - TRL);
            n->rd->hits++;
        }
        break;
    case KVCD_L2_LOAD:
        if (reply->type == REDIS_REPLY_NIL) {
            op->rc = KVCD_ENOTFOUND;
        } else if (reply->type != REDIS_REPLY_STRING) {
            op->rc = -EIO;
        } else if (reply->len < TRL ||
                   !kvcd_obj_trl_verify((const uint8_t *)reply->str + reply->len - TRL,
                                        reply->len - TRL, op->dig, reply->str)) {
            bad_value(op);
            op->rc = KVCD_ECHECKSUM;
        } else if (reply->len - TRL > it->len) {
            it->size = reply->len - TRL;
            op->rc = -EMSGSIZE;
        } else {
            it->size = reply->len - TRL;
            memcpy(it->buf, reply->str, it->size);
            n->rd->loads++;
            n->rd->load_bytes += it->size;
        }
        break;
    case KVCD_L2_REMOVE:
        if (reply->type != REDIS_REPLY_INTEGER) {
            op->rc = -EIO;
        } else {
            op->rc = reply->integer > 0 ? 0 : KVCD_ENOTFOUND;
            n->rd->removes += reply->integer > 0;
        }
        break;
    }
}

static void op_cb(redisAsyncContext *ac, void *r, void *priv)
{
    op_t *op = priv;
    node_t *n = op->node;
    redisReply *reply = r;

    if (!n->rd)
        return; /* closed (cannot happen with keys in flight) */
    if (reply)
        n->progress_ms = uv_now(n->loop);
    if (!reply) {
        op->lost = 1;
        if (!op->rc || op->rc == KVCD_ENOTFOUND)
            op->rc = n->drop_rc;
    } else {
        on_reply(op, reply);
    }
    if (--op->replies > 0)
        return;
    list_remove(&n->sent, op);
    n->sent_bytes -= op->bytes;
    if (op->redir_kind && !op->lost)
        redirect(op);
    else
        op_done(op, op->rc);
    if (reply && n->state == N_READY)
        pump(n);
}

/* Write what is left of the raw store's command; when it is all out, hand the
 * socket back to hiredis. Never inside hiredis's own write. */
static void raw_write(node_t *n)
{
    redisLibuvEvents *p = n->ac->ev.data;

    while (n->ri < 3) {
        struct msghdr m = {.msg_iov = n->riov + n->ri, .msg_iovlen = (size_t)(3 - n->ri)};
        ssize_t w = sendmsg(n->ac->c.fd, &m, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ev_set(p, UV_WRITABLE, 0);
                return;
            }
            /* the connection is gone: hiredis will see it too; drop it on
             * the next loop turn (this may run inside a hiredis callback) */
            note(n, "write: %s", strerror(errno));
            n->broken = 1;
            n->raw = NULL;
            ev_set(p, 0, UV_WRITABLE);
            uv_timer_start(&n->retry, retry_cb, 0, 0);
            return;
        }
        while (n->ri < 3 && (size_t)w >= n->riov[n->ri].iov_len) {
            w -= (ssize_t)n->riov[n->ri].iov_len;
            n->ri++;
        }
        if (n->ri < 3) {
            n->riov[n->ri].iov_base = (char *)n->riov[n->ri].iov_base + w;
            n->riov[n->ri].iov_len -= (size_t)w;
        }
    }
    n->raw = NULL;
    if (sdslen(n->ac->c.obuf) == 0)
        ev_set(p, 0, UV_WRITABLE);
    else
        ev_set(p, UV_WRITABLE, 0);
}

/* SET key <payload><trailer> [EX ttl] with no copy of the payload: hiredis
 * gets the head of the command only to queue our reply callback in order;
 * we take the head back out of its (until then empty) output buffer and write
 * head, payload (from the caller's buffer) and tail with sendmsg. Meanwhile
 * other commands queue behind it in hiredis's buffer, which poll_cb writes
 * once ours is out. Requires an empty output buffer (pump waits for it). */
static int send_store(node_t *n, op_t *op, int ask)
{
    rd_t *rd = n->rd;
    const kvcd_l2_item_t *it = &op->job->b->items[op->idx];
    int hl = 0, tl = 2, off = 0;
    char ttl[24];

    if (ask) { /* ASK redirect: "ASKING" goes out with the command */
        off = (int)strlen(ASKING_CMD);
        memcpy(n->rhead, ASKING_CMD, (size_t)off);
        hl = off;
    }
    hl += snprintf(n->rhead + hl, sizeof(n->rhead) - (size_t)hl, "*%d\r\n$3\r\nSET\r\n$%zu\r\n",
                   rd->ttl ? 5 : 3, op->keylen);
    memcpy(n->rhead + hl, op->key, op->keylen);
    hl += (int)op->keylen;
    hl += snprintf(n->rhead + hl, sizeof(n->rhead) - (size_t)hl, "\r\n$%zu\r\n", it->len + TRL);
    kvcd_obj_trl_build(n->rtail, it->buf, it->len, op->dig);
    memcpy(n->rtail + TRL, "\r\n", 2);
    if (rd->ttl) {
        int l = snprintf(ttl, sizeof(ttl), "%lld", rd->ttl);

        tl += snprintf((char *)n->rtail + TRL + 2, TAIL_MAX - TRL - 2, "$2\r\nEX\r\n$%d\r\n%s\r\n", l,
                       ttl);
    }
    if (ask && redisAsyncFormattedCommand(n->ac, NULL, NULL, n->rhead, (size_t)off) != REDIS_OK)
        return KVCD_ECONNECT;
    if (redisAsyncFormattedCommand(n->ac, op_cb, op, n->rhead + off, (size_t)(hl - off)) !=
        REDIS_OK)
        return KVCD_ECONNECT;
    sdsclear(n->ac->c.obuf);
    n->riov[0].iov_base = n->rhead;
    n->riov[0].iov_len = (size_t)hl;
    n->riov[1].iov_base = it->buf;
    n->riov[1].iov_len = it->len;
    n->riov[2].iov_base = n->rtail;
    n->riov[2].iov_len = TRL + (size_t)tl;
    n->ri = 0;
    n->raw = op;
    raw_write(n);
    return 1;
}

/* ASKING before the next command; its reply is dropped. */
static int asking(node_t *n)
{
    return redisAsyncFormattedCommand(n->ac, NULL, NULL, ASKING_CMD, strlen(ASKING_CMD)) ==
           REDIS_OK;
}

/* Queue op's commands on the connection; returns how many replies will come,
 * or a negative code when nothing was queued. */
static int send_op(node_t *n, op_t *op)
{
    kvcd_l2_op_t kind = op->job->b->op;
    const char *argv[4];
    size_t len[4];
    int q = 0, ask = op->asking;

    op->asking = 0; /* ASKING holds for one command */
    argv[1] = op->key;
    len[1] = op->keylen;
    if (ask && kind != KVCD_L2_STORE && !asking(n))
        return KVCD_ECONNECT;
    switch (kind) {
    case KVCD_L2_STORE:
        return send_store(n, op, ask);
    case KVCD_L2_LOOKUP:
        n->rd->lookups++;
        argv[0] = "STRLEN";
        len[0] = 6;
        q += redisAsyncCommandArgv(n->ac, op_cb, op, 2, argv, len) == REDIS_OK;
        argv[0] = "GETRANGE";
        len[0] = 8;
        argv[2] = "-64";
        len[2] = 3;
        argv[3] = "-1";
        len[3] = 2;
        if (q && (!ask || asking(n)) &&
            redisAsyncCommandArgv(n->ac, op_cb, op, 4, argv, len) == REDIS_OK)
            q++;
        else if (q)
            op->rc = KVCD_ECONNECT; /* one reply (STRLEN) still comes */
        break;
    case KVCD_L2_LOAD:
        argv[0] = "GET";
        len[0] = 3;
        q += redisAsyncCommandArgv(n->ac, op_cb, op, 2, argv, len) == REDIS_OK;
        break;
    case KVCD_L2_REMOVE:
        argv[0] = "UNLINK";
        len[0] = 6;
        q += redisAsyncCommandArgv(n->ac, op_cb, op, 2, argv, len) == REDIS_OK;
        break;
    }
    return q ? q : KVCD_ECONNECT;
}

static void pump(node_t *n)
{
    rd_t *rd = n->rd;
    uint64_t now = uv_now(n->loop);
    op_t *op;

    while (n->state == N_READY && !n->broken && (op = n->wait.head) && n->sent.n < rd->depth) {
        int q;

        if (op->job->b->op == KVCD_L2_STORE && (n->raw || sdslen(n->ac->c.obuf) > 0))
            break; /* resumed by poll_cb once the output is out */
        if (n->sent.n > 0 && n->sent_bytes + op->bytes > rd->pipeline_bytes)
            break; /* resumed by the next reply */
        list_remove(&n->wait, op);
        if (now >= op->job->b->deadline_ms) {
            op_done(op, KVCD_ETIMEDOUT); /* the core stopped waiting */
            continue;
        }
        op->rc = 0;
        op->len = 0;
        op->lost = 0;
        op->redir_kind = 0;
        q = send_op(n, op);
        if (q < 0) {
            op_done(op, q);
            continue;
        }
        op->replies = q;
        op->sent_ms = now;
        list_push(&n->sent, op);
        n->sent_bytes += op->bytes;
        if (!uv_is_active((uv_handle_t *)&n->watch))
            uv_timer_start(&n->watch, watch_cb, rd->command_timeout_ms, 0);
    }
}

/* ---- methods ---------------------------------------------------------------- */

static void submit(void *self, kvcd_l2_batch_t *b)
{
    rd_t *rd = self;
    char name[KVCD_OBJ_NAME_MAX];
    job_t *job = malloc(sizeof(*job) + b->n * sizeof(op_t));
    size_t i;

    if (!job) {
        for (i = 0; i < b->n; i++)
            b->items[i].result = -ENOMEM;
        svc->batch_done(b);
        return;
    }
    job->rd = rd;
    job->b = b;
    job->pending = b->n + 1;
    job->next = NULL;
    for (i = 0; i < b->n; i++) {
        op_t *op = &job->ops[i];
        size_t nl;
        int r;

        memset(op, 0, offsetof(op_t, key));
        op->job = job;
        op->idx = i;
        r = kvcd_obj_name(0, &b->items[i].key, name, op->dig);
        if (r != 0) {
            op_done(op, r);
            continue;
        }
        nl = strlen(name) - (sizeof(KVCD_OBJ_NAME_SUFFIX) - 1);
        memcpy(op->key, rd->prefix, rd->prefix_len);
        memcpy(op->key + rd->prefix_len, name, nl);
        op->keylen = rd->prefix_len + nl;
        if (b->op == KVCD_L2_STORE || b->op == KVCD_L2_LOAD)
            op->bytes = b->items[i].len + TRL;
        if (rd->cluster)
            op->slot = kvcd_cluster_slot(op->key, op->keylen);
        route(rd, op);
    }
    if (--job->pending == 0)
        job_complete(job);
}

/* ---- spec ------------------------------------------------------------------- */

typedef struct {
    const char *host, *path, *name;
    int port;
} nspec_t;

#define NF(nm, ty, member) KVCD_FIELD(nm, ty, nspec_t, member)

/* One nodes[] entry. */
static const kvcd_adapter_field_t node_fields[] = {
    {NF("host", KVCD_FIELD_STRING, host), .flags = KVCD_FIELD_NONEMPTY, .max = 255},
    {NF("port", KVCD_FIELD_INT32, port), .min = 1, .max = 65535},
    {NF("unix", KVCD_FIELD_STRING, path), .flags = KVCD_FIELD_NONEMPTY, .max = 107},
    {NF("name", KVCD_FIELD_STRING, name), .flags = KVCD_FIELD_NONEMPTY, .max = 255},
    {.name = NULL},
};

#undef NF

/* host/port/unix/name of one nodes[] entry (the top-level ones are fields). */
static int parse_addr(const json_t *o, const char *where, nspec_t *ns, char *err, size_t errlen)
{
    int rc;

    memset(ns, 0, sizeof(*ns));
    if ((rc = svc->fields_parse(node_fields, "a nodes[] entry", o, ns, where, err, errlen)))
        return rc;
    if (ns->path && (ns->host || ns->port))
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "%s%s: give either unix or host/port, not both", where,
                    ns->host ? "host" : "port");
    if (!ns->path && !ns->host)
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "%.*s: needs host or unix", (int)strlen(where) - 1, where);
    if (!ns->port)
        ns->port = 6379;
    return 0;
}

/* A secret given as a value or as the name of an environment variable. */
static int env_or_value(const char *val, const char *envname, const char *field,
                        const char *envfield, char **out, char *err, size_t errlen)
{
    const char *v = val;

    if (val && envname)
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "%s: give either %s or %s, not both", envfield, field, envfield);
    if (envname) {
        v = getenv(envname);
        if (!v)
            return kvcd_errf(err, errlen, KVCD_ECONFIG, "%s: environment variable '%s' is not set", envfield, envname);
    }
    if (v && !(*out = strdup(v)))
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "%s: out of memory", field);
    return 0;
}

static void node_id(const nspec_t *ns, char *id, size_t idlen, char *addr, size_t addrlen)
{
    if (ns->path)
        snprintf(addr, addrlen, "unix:%s", ns->path);
    else if (strchr(ns->host, ':'))
        snprintf(addr, addrlen, "[%s]:%d", ns->host, ns->port);
    else
        snprintf(addr, addrlen, "%s:%d", ns->host, ns->port);
    snprintf(id, idlen, "%s", ns->name ? ns->name : addr);
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static void ticker_closed(uv_handle_t *h)
{
    free(h);
}

/* Release everything (close, or a failed init). */
static void teardown(rd_t *rd)
{
    size_t i;

    for (i = 0; i < rd->nnodes; i++) {
        node_t *n = rd->nodes[i];

        if (!n)
            continue;
        /* hiredis runs the pending callbacks now: they see a closed node */
        n->rd = NULL;
        if (n->ac) {
            redisAsyncContext *ac = n->ac;

            n->freeing = 1;
            n->ac = NULL;
            redisAsyncFree(ac);
        }
        if (n->wait.n || n->sent.n)
            KVCD_ALOG(svc, KVCD_ALOG_ERROR, "redis", "%s: closed with %zu keys queued on %s",
                     rd->instance, n->wait.n + n->sent.n, n->addr);
        if (n->gai_busy)
            uv_cancel((uv_req_t *)&n->gai);
        uv_close((uv_handle_t *)&n->retry, handle_closed);
        uv_close((uv_handle_t *)&n->watch, handle_closed);
    }
    free(rd->nodes);
    rd->nodes = NULL;
    rd->nnodes = rd->cap = 0;
    kvcd_ring_free(&rd->ring);
    if (rd->ticker)
        uv_close((uv_handle_t *)rd->ticker, ticker_closed);
    rd->ticker = NULL;
    if (rd->refresher)
        uv_close((uv_handle_t *)rd->refresher, ticker_closed);
    rd->refresher = NULL;
    free(rd->shards);
    free(rd->slot_shard);
    rd->shards = NULL;
    rd->slot_shard = NULL;
    rd->nshards = 0;
    free_secret(rd->password);
    free_secret(rd->username);
    rd->password = rd->username = NULL;
}

static int init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *err,
                size_t errlen)
{
    rd_t *rd = self;
    nspec_t *ns = NULL;
    const char **ids = NULL;
    size_t nn = 0, i, j;
    const json_t *nodes = NULL;
    int rc = KVCD_ECONFIG, top_addr = 0;

    svc = env->svc;
    rd->loop = env->loop;
    snprintf(rd->instance, sizeof(rd->instance), "%s", env->instance ? env->instance : "redis");
    /* The fields are parsed (defaults applied); what is left spans fields. */
    rd->prefix_len = strlen(rd->s_prefix);
    memcpy(rd->prefix, rd->s_prefix, rd->prefix_len);
    nodes = rd->s_nodes;
    top_addr = rd->s_host || rd->s_unix || rd->s_port;
    if (nodes && json_array_size(nodes) > NODES_MAX)
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "nodes: at most %d servers", NODES_MAX);
    if (nodes && top_addr)
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "nodes: cannot be combined with host, port or unix");
    if (rd->s_unix && top_addr && (rd->s_host || rd->s_port))
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "%s: give either unix or host/port, not both",
                         rd->s_host ? "host" : "port");
    if (!rd->cluster) {
        static const char *const only[] = {"read_from_replicas", "cluster_refresh_ms",
                                           "max_redirects"};

        for (i = 0; i < 3; i++)
            if (json_object_get(spec, only[i]))
                return kvcd_errf(err, errlen, KVCD_ECONFIG, "%s: only with \"cluster\": true",
                                 only[i]);
    } else {
        if (rd->db)
            return kvcd_errf(err, errlen, KVCD_ECONFIG, "db: a Redis Cluster has only database 0");
        if (json_object_get(spec, "virtual_nodes"))
            return kvcd_errf(
                err, errlen, KVCD_ECONFIG,
                "virtual_nodes: not with \"cluster\": true (the cluster's slots place keys)");
        if (kvcd_cluster_has_tag(rd->prefix, rd->prefix_len))
            return kvcd_errf(
                err, errlen, KVCD_ECONFIG,
                "key_prefix: holds a {hash tag}, which would put every key in one cluster slot");
    }
    if (rd->reconnect_max_ms < rd->reconnect_min_ms)
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "reconnect_max_ms: must be >= reconnect_min_ms (%llu)",
                    (unsigned long long)rd->reconnect_min_ms);

    nn = nodes ? json_array_size(nodes) : 1;
    ns = calloc(nn, sizeof(*ns));
    ids = calloc(nn, sizeof(*ids));
    if (!ns || !ids) {
        rc = kvcd_errf(err, errlen, KVCD_ECONFIG, "out of memory");
        goto out;
    }
    if (!nodes) {
        ns[0].host = rd->s_unix ? NULL : rd->s_host ? rd->s_host : "127.0.0.1";
        ns[0].path = rd->s_unix;
        ns[0].port = rd->s_port ? (int)rd->s_port : 6379;
    } else {
        for (i = 0; i < nn; i++) {
            json_t *o = json_array_get(nodes, i);
            char where[32];

            snprintf(where, sizeof(where), "nodes[%zu].", i);
            if (!json_is_object(o)) {
                rc = kvcd_errf(err, errlen, KVCD_ECONFIG, "nodes[%zu]: expected an object", i);
                goto out;
            }
            if (parse_addr(o, where, &ns[i], err, errlen))
                goto out;
        }
    }
    if (env_or_value(rd->s_password, rd->s_password_env, "password", "password_env",
                     &rd->password, err, errlen) ||
        env_or_value(rd->s_username, rd->s_username_env, "username", "username_env",
                     &rd->username, err, errlen))
        goto out;
    if (rd->username && !rd->password) {
        rc = kvcd_errf(err, errlen, KVCD_ECONFIG, "username: needs password or password_env");
        goto out;
    }

    for (i = 0; i < nn; i++) {
        char id[320], addr[320];
        node_t *n;

        node_id(&ns[i], id, sizeof(id), addr, sizeof(addr));
        for (j = 0; j < i; j++)
            if (!strcmp(rd->nodes[j]->id, id)) {
                rc = kvcd_errf(err, errlen, KVCD_ECONFIG, "nodes[%zu]: the same server as nodes[%zu] (%s)", i, j,
                          id);
                goto out;
            }
        n = node_new(rd, ns[i].host, ns[i].port, ns[i].path, id, addr);
        if (!n) {
            rc = kvcd_errf(err, errlen, KVCD_ECONFIG, "out of memory");
            goto out;
        }
        n->seed = 1;
        ids[i] = n->id;
    }
    if (!rd->cluster && kvcd_ring_build(&rd->ring, ids, nn, rd->vnodes) != 0) {
        rc = kvcd_errf(err, errlen, KVCD_ECONFIG, "out of memory");
        goto out;
    }
    rd->ticker = malloc(sizeof(*rd->ticker));
    if (!rd->ticker) {
        rc = kvcd_errf(err, errlen, KVCD_ECONFIG, "out of memory");
        goto out;
    }
    uv_timer_init(rd->loop, rd->ticker);
    rd->ticker->data = rd;
    if (rd->cluster) {
        rd->slot_shard = malloc(KVCD_CLUSTER_SLOTS * sizeof(*rd->slot_shard));
        rd->refresher = malloc(sizeof(*rd->refresher));
        if (!rd->slot_shard || !rd->refresher) {
            free(rd->refresher);
            rd->refresher = NULL;
            rc = kvcd_errf(err, errlen, KVCD_ECONFIG, "out of memory");
            goto out;
        }
        for (i = 0; i < KVCD_CLUSTER_SLOTS; i++)
            rd->slot_shard[i] = -1;
        uv_timer_init(rd->loop, rd->refresher);
        rd->refresher->data = rd;
        uv_timer_start(rd->refresher, refresh_cb, 0, 0); /* the first map, once connected */
    }
    rc = 0;
    /* Connect on the first loop turn, not now: the owner may do other work
     * before it runs the loop (the daemon maps L1), and the connect timeout
     * must not run out before the loop has had a chance to connect. Keys
     * submitted meanwhile wait. */
    for (i = 0; i < nn; i++)
        uv_timer_start(&rd->nodes[i]->retry, retry_cb, 0, 0);
out:
    free(ns);
    free(ids);
    if (rc != 0)
        teardown(rd);
    return rc;
}

static void status(void *self, json_t *out)
{
    rd_t *rd = self;
    json_t *arr = json_array();
    int healthy = 1;
    size_t i;

    for (i = 0; i < rd->nnodes; i++) {
        node_t *n = rd->nodes[i];
        json_t *o;

        /* cluster: the masters of the map must be up; other nodes are extra */
        if (!rd->cluster || n->role == R_MASTER)
            healthy &= n->state == N_READY;
        o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}",
                           "id", n->id, "address", n->addr, "state", state_names[n->state],
                           "keys_routed", (json_int_t)n->routed, "connects",
                           (json_int_t)n->connects, "disconnects", (json_int_t)n->disconnects,
                           "failed_connects", (json_int_t)n->failed_connects,
                           "command_timeouts", (json_int_t)n->timeouts, "server_errors",
                           (json_int_t)n->errors, "in_flight", (json_int_t)n->sent.n,
                           "queued", (json_int_t)n->wait.n, "last_error", n->last_error);
        if (rd->cluster) {
            json_object_set_new(o, "role", json_string(role_names[n->role]));
            json_object_set_new(o, "slots", json_integer(n->slots));
            json_object_set_new(o, "seed", json_boolean(n->seed));
        }
        json_array_append_new(arr, o);
    }
    if (rd->cluster) {
        uint64_t now = uv_now(rd->loop);
        json_t *c;
        unsigned masters = 0, replicas = 0;

        for (i = 0; i < rd->nnodes; i++) {
            masters += rd->nodes[i]->role == R_MASTER;
            replicas += rd->nodes[i]->role == R_REPLICA;
        }
        healthy &= rd->have_map && rd->covered == KVCD_CLUSTER_SLOTS;
        c = json_pack("{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}", "have_map",
                      rd->have_map, "slots_covered", (json_int_t)rd->covered, "masters",
                      (json_int_t)masters, "replicas", (json_int_t)replicas, "refreshes",
                      (json_int_t)rd->refreshes, "refresh_failures",
                      (json_int_t)rd->refresh_failures, "moved", (json_int_t)rd->moved, "ask",
                      (json_int_t)rd->asks, "redirect_failures", (json_int_t)rd->redirect_failures,
                      "cluster_down_errors", (json_int_t)rd->cluster_down, "map_age_ms",
                      (json_int_t)(rd->have_map ? (json_int_t)(now - rd->refreshed_ms) : -1),
                      "last_error", rd->map_error);
        json_object_set_new(c, "read_from_replicas", json_boolean(rd->replica_reads));
        json_object_set_new(out, "cluster", c);
    }
    json_object_set_new(out, "healthy", json_boolean(healthy));
    json_object_set_new(out, "nodes", arr);
    json_object_set_new(out, "stores", json_integer((json_int_t)rd->stores));
    json_object_set_new(out, "store_bytes", json_integer((json_int_t)rd->store_bytes));
    json_object_set_new(out, "lookups", json_integer((json_int_t)rd->lookups));
    json_object_set_new(out, "hits", json_integer((json_int_t)rd->hits));
    json_object_set_new(out, "loads", json_integer((json_int_t)rd->loads));
    json_object_set_new(out, "load_bytes", json_integer((json_int_t)rd->load_bytes));
    json_object_set_new(out, "removes", json_integer((json_int_t)rd->removes));
    json_object_set_new(out, "checksum_failures", json_integer((json_int_t)rd->checksum_failures));
    json_object_set_new(out, "server_errors", json_integer((json_int_t)rd->server_errors));
}

static void close_(void *self)
{
    teardown(self);
}

const kvcd_adapter_t kvcd_adapter_redis = {
    KVCD_ADAPTER_HEADER("redis", rd_t, KVCD_ADAPTER_PERSISTENT),
    .doc = "Redis or Valkey servers (one, several by consistent hashing, or a Redis Cluster), "
           "asynchronous",
    .fields = fields,
    .init = init,
    .store = submit,
    .lookup = submit,
    .load = submit,
    .remove = submit,
    .status = status,
    .close = close_,
};
