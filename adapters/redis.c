/*
 * redis.c - an asynchronous L2 adapter on Redis or Valkey (RESP, hiredis).
 *
 * {"type":"redis","unix":"/run/redis/redis.sock"}   or "host"/"port", or
 * {"type":"redis","nodes":[{"host":"10.0.0.1"},{"host":"10.0.0.2"}], ...}
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
#include "adapters/redis/ring.h"
#include "daemon/log.h"

#define PREFIX_MAX 128
#define KEY_MAX (PREFIX_MAX + KVCD_OBJ_NAME_MAX)
#define NODES_MAX 256
#define TRL KVCD_OBJ_TRL_SIZE
#define HEAD_MAX (64 + KEY_MAX) /* "*5\r\n$3\r\nSET\r\n$<n>\r\n<key>\r\n$<n>\r\n" */
#define TAIL_MAX (TRL + 64)     /* trailer "\r\n" [$2 EX $<n> <ttl>] */
#define LOG_INTERVAL_MS 5000

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

typedef enum { N_START, N_DOWN, N_RESOLVING, N_CONNECTING, N_HANDSHAKE, N_READY } nstate_t;

static const char *const state_names[] = {"starting", "down",      "resolving",
                                          "connecting", "handshake", "ready"};

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
};

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
    size_t nnodes;
    kvcd_ring_t ring;
    uv_timer_t *ticker; /* delivers finished batches; allocated apart */
    job_t *done_head, *done_tail;
    uint64_t stores, store_bytes, lookups, hits, loads, load_bytes, removes, checksum_failures,
        server_errors;
};

static const kvcd_adapter_field_t fields[] = {
    {"host", "string", "\"127.0.0.1\"", "server host name or address (one server; or use unix)"},
    {"port", "integer", "6379", "server TCP port"},
    {"unix", "string", "(none)", "server unix socket path, instead of host/port"},
    {"nodes", "array", "(none)",
     "several servers: [{\"host\":..,\"port\":..} or {\"unix\":..}, optional \"name\"]; "
     "keys are spread by consistent hashing"},
    {"password", "string", "(none)", "AUTH password"},
    {"password_env", "string", "(none)", "name of an environment variable holding the password"},
    {"username", "string", "(none)", "ACL user name for AUTH (Redis 6+)"},
    {"username_env", "string", "(none)", "name of an environment variable holding the user"},
    {"db", "integer", "0", "database number (SELECT)"},
    {"key_prefix", "string", "\"\"", "prepended to every key (at most 128 bytes)"},
    {"connect_timeout_ms", "integer", "1000", "bound on resolving, connecting and AUTH"},
    {"command_timeout_ms", "integer", "5000",
     "a command unanswered this long drops the connection and fails its keys"},
    {"pipeline_depth", "integer", "64", "keys in flight per server connection"},
    {"pipeline_bytes", "integer", "8388608",
     "value bytes in flight per server connection (one key always may be)"},
    {"ttl_seconds", "integer", "0", "expiry set on stored values; 0 = none"},
    {"virtual_nodes", "integer", "512", "points per server on the hash ring"},
    {"reconnect_min_ms", "integer", "100", "first reconnect delay"},
    {"reconnect_max_ms", "integer", "2000", "reconnect delay cap (the delay doubles)"},
    {NULL, NULL, NULL, NULL},
};

static void pump(node_t *n);
static void node_connect(node_t *n);

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
        kvcd_l2_batch_done(b);
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
        KVCD_LOG(KVCD_LOG_WARNING, "redis", "%s: lost %s: %s; reconnecting", rd->instance,
                 n->addr, n->last_error);
    } else {
        n->failed_connects++;
        if (n->failed_connects == 1 || n->ever_ready)
            KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "redis", LOG_INTERVAL_MS,
                                 "%s: cannot connect to %s: %s; retrying", rd->instance,
                                 n->addr, n->last_error);
    }
    fail_waiting(n, KVCD_ECONNECT);
    uv_timer_start(&n->retry, retry_cb, n->backoff_ms, 0);
    n->backoff_ms *= 2;
    if (n->backoff_ms > rd->reconnect_max_ms)
        n->backoff_ms = rd->reconnect_max_ms;
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
        KVCD_LOG(KVCD_LOG_INFO, "redis", "%s: reconnected to %s after %llu ms", rd->instance,
                 n->addr, (unsigned long long)(uv_now(n->loop) - n->down_since));
    else
        KVCD_LOG(KVCD_LOG_INFO, "redis", "%s: connected to %s", rd->instance, n->addr);
    n->ever_ready = 1;
    n->last_error[0] = '\0';
    pump(n);
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

/* ---- commands --------------------------------------------------------------- */

static int map_error(node_t *n, const redisReply *reply)
{
    const char *s = reply->str ? reply->str : "";

    n->errors++;
    n->rd->server_errors++;
    note(n, "%.*s", (int)reply->len, s);
    KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "redis", LOG_INTERVAL_MS, "%s: %s: %.*s",
                         n->rd->instance, n->addr, (int)reply->len, s);
    if (!strncmp(s, "OOM", 3))
        return -ENOSPC;
    if (!strncmp(s, "NOAUTH", 6) || !strncmp(s, "WRONGPASS", 9) || !strncmp(s, "NOPERM", 6))
        return -EACCES;
    if (!strncmp(s, "READONLY", 8))
        return -EROFS;
    if (!strncmp(s, "LOADING", 7) || !strncmp(s, "BUSY", 4) || !strncmp(s, "MASTERDOWN", 10))
        return KVCD_EUNAVAIL;
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
    KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "redis", LOG_INTERVAL_MS,
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
        if (!op->rc)
            op->rc = map_error(n, reply);
        return;
    }
    if (op->rc)
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
        if (!op->rc || op->rc == KVCD_ENOTFOUND)
            op->rc = n->drop_rc;
    } else {
        on_reply(op, reply);
    }
    if (--op->replies > 0)
        return;
    list_remove(&n->sent, op);
    n->sent_bytes -= op->bytes;
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
static int send_store(node_t *n, op_t *op)
{
    rd_t *rd = n->rd;
    const kvcd_l2_item_t *it = &op->job->b->items[op->idx];
    int hl, tl = 2;
    char ttl[24];

    hl = snprintf(n->rhead, sizeof(n->rhead), "*%d\r\n$3\r\nSET\r\n$%zu\r\n", rd->ttl ? 5 : 3,
                  op->keylen);
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
    if (redisAsyncFormattedCommand(n->ac, op_cb, op, n->rhead, (size_t)hl) != REDIS_OK)
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

/* Queue op's commands on the connection; returns how many replies will come,
 * or a negative code when nothing was queued. */
static int send_op(node_t *n, op_t *op)
{
    kvcd_l2_op_t kind = op->job->b->op;
    const char *argv[4];
    size_t len[4];
    int q = 0;

    argv[1] = op->key;
    len[1] = op->keylen;
    switch (kind) {
    case KVCD_L2_STORE:
        return send_store(n, op);
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
        if (q && redisAsyncCommandArgv(n->ac, op_cb, op, 4, argv, len) == REDIS_OK)
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
        kvcd_l2_batch_done(b);
        return;
    }
    job->rd = rd;
    job->b = b;
    job->pending = b->n + 1;
    job->next = NULL;
    for (i = 0; i < b->n; i++) {
        op_t *op = &job->ops[i];
        size_t nl;
        node_t *n;
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
        n = rd->nodes[rd->nnodes == 1 ? 0 : kvcd_ring_pick(&rd->ring, be64(op->dig))];
        op->node = n;
        n->routed++;
        if (n->state == N_DOWN) {
            op_done(op, KVCD_ECONNECT);
            continue;
        }
        list_push(&n->wait, op);
        pump(n);
    }
    if (--job->pending == 0)
        job_complete(job);
}

/* ---- spec ------------------------------------------------------------------- */

typedef struct {
    const char *host, *path, *name;
    int port;
} nspec_t;

static int get_int(const json_t *v, const char *field, long long lo, long long hi,
                   long long *out, char *err, size_t errlen)
{
    if (!json_is_integer(v))
        return kvcd_adapter_config_error(err, errlen, "%s: expected an integer", field);
    *out = json_integer_value(v);
    if (*out < lo || *out > hi)
        return kvcd_adapter_config_error(err, errlen, "%s: must be in %lld..%lld (got %lld)", field, lo, hi, *out);
    return 0;
}

static int get_str(const json_t *v, const char *field, size_t maxlen, int empty_ok,
                   const char **out, char *err, size_t errlen)
{
    if (!json_is_string(v))
        return kvcd_adapter_config_error(err, errlen, "%s: expected a string", field);
    if (!empty_ok && json_string_length(v) == 0)
        return kvcd_adapter_config_error(err, errlen, "%s: must not be empty", field);
    if (json_string_length(v) > maxlen)
        return kvcd_adapter_config_error(err, errlen, "%s: longer than %zu bytes", field, maxlen);
    if (strlen(json_string_value(v)) != json_string_length(v))
        return kvcd_adapter_config_error(err, errlen, "%s: contains a NUL byte", field);
    *out = json_string_value(v);
    return 0;
}

/* host/port/unix/name of one server, from the spec itself or a nodes[] entry. */
static int parse_addr(const json_t *o, const char *where, int top, nspec_t *ns, char *err,
                      size_t errlen)
{
    char f[64];
    const char *k;
    json_t *v;
    long long port = 6379;
    int have_port = 0;

    memset(ns, 0, sizeof(*ns));
    json_object_foreach((json_t *)o, k, v) {
        snprintf(f, sizeof(f), "%s%s", where, k);
        if (!strcmp(k, "host")) {
            if (get_str(v, f, 255, 0, &ns->host, err, errlen))
                return KVCD_ECONFIG;
        } else if (!strcmp(k, "port")) {
            if (get_int(v, f, 1, 65535, &port, err, errlen))
                return KVCD_ECONFIG;
            have_port = 1;
        } else if (!strcmp(k, "unix")) {
            if (get_str(v, f, 107, 0, &ns->path, err, errlen))
                return KVCD_ECONFIG;
        } else if (!top && !strcmp(k, "name")) {
            if (get_str(v, f, 255, 0, &ns->name, err, errlen))
                return KVCD_ECONFIG;
        } else if (!top) {
            return kvcd_adapter_config_error(err, errlen, "%s: unknown field (expected host, port, unix or name)", f);
        }
    }
    if (ns->path && (ns->host || have_port))
        return kvcd_adapter_config_error(err, errlen, "%s%s: give either unix or host/port, not both", where,
                    ns->host ? "host" : "port");
    if (!ns->path && !ns->host) {
        if (!top)
            return kvcd_adapter_config_error(err, errlen, "%.*s: needs host or unix", (int)strlen(where) - 1, where);
        ns->host = "127.0.0.1";
    }
    ns->port = (int)port;
    return 0;
}

static int env_or_value(const json_t *spec, const char *field, const char *envfield, char **out,
                        char *err, size_t errlen)
{
    const json_t *v = json_object_get(spec, field), *e = json_object_get(spec, envfield);
    const char *s = NULL;

    if (v && e)
        return kvcd_adapter_config_error(err, errlen, "%s: give either %s or %s, not both", envfield, field, envfield);
    if (v && get_str(v, field, 4096, 0, &s, err, errlen))
        return KVCD_ECONFIG;
    if (e) {
        const char *name;

        if (get_str(e, envfield, 255, 0, &name, err, errlen))
            return KVCD_ECONFIG;
        s = getenv(name);
        if (!s)
            return kvcd_adapter_config_error(err, errlen, "%s: environment variable '%s' is not set", envfield, name);
    }
    if (s && !(*out = strdup(s)))
        return kvcd_adapter_config_error(err, errlen, "%s: out of memory", field);
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
            KVCD_LOG(KVCD_LOG_ERROR, "redis", "%s: closed with %zu keys queued on %s",
                     rd->instance, n->wait.n + n->sent.n, n->addr);
        if (n->gai_busy)
            uv_cancel((uv_req_t *)&n->gai);
        uv_close((uv_handle_t *)&n->retry, handle_closed);
        uv_close((uv_handle_t *)&n->watch, handle_closed);
    }
    free(rd->nodes);
    rd->nodes = NULL;
    rd->nnodes = 0;
    kvcd_ring_free(&rd->ring);
    if (rd->ticker)
        uv_close((uv_handle_t *)rd->ticker, ticker_closed);
    rd->ticker = NULL;
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
    long long x;
    const char *k, *s;
    json_t *v;
    int rc = KVCD_ECONFIG, top_addr = 0;

    rd->loop = env->loop;
    snprintf(rd->instance, sizeof(rd->instance), "%s", env->instance ? env->instance : "redis");
    rd->connect_timeout_ms = 1000;
    rd->command_timeout_ms = 5000;
    rd->reconnect_min_ms = 100;
    rd->reconnect_max_ms = 2000;
    rd->depth = 64;
    rd->pipeline_bytes = (size_t)8 << 20;
    rd->vnodes = 512;

    json_object_foreach((json_t *)spec, k, v) {
        if (!strcmp(k, "type") || !strcmp(k, "password") || !strcmp(k, "password_env") ||
            !strcmp(k, "username") || !strcmp(k, "username_env"))
            continue;
        if (!strcmp(k, "host") || !strcmp(k, "port") || !strcmp(k, "unix")) {
            top_addr = 1;
        } else if (!strcmp(k, "nodes")) {
            if (!json_is_array(v) || json_array_size(v) == 0)
                return kvcd_adapter_config_error(err, errlen, "nodes: expected a non-empty array of objects");
            if (json_array_size(v) > NODES_MAX)
                return kvcd_adapter_config_error(err, errlen, "nodes: at most %d servers", NODES_MAX);
            nodes = v;
        } else if (!strcmp(k, "db")) {
            if (get_int(v, k, 0, 1 << 20, &x, err, errlen))
                return KVCD_ECONFIG;
            rd->db = (int)x;
        } else if (!strcmp(k, "key_prefix")) {
            if (get_str(v, k, PREFIX_MAX, 1, &s, err, errlen))
                return KVCD_ECONFIG;
            memcpy(rd->prefix, s, strlen(s));
            rd->prefix_len = strlen(s);
        } else if (!strcmp(k, "connect_timeout_ms")) {
            if (get_int(v, k, 1, 600000, &x, err, errlen))
                return KVCD_ECONFIG;
            rd->connect_timeout_ms = (uint64_t)x;
        } else if (!strcmp(k, "command_timeout_ms")) {
            if (get_int(v, k, 1, 3600000, &x, err, errlen))
                return KVCD_ECONFIG;
            rd->command_timeout_ms = (uint64_t)x;
        } else if (!strcmp(k, "pipeline_depth")) {
            if (get_int(v, k, 1, 65536, &x, err, errlen))
                return KVCD_ECONFIG;
            rd->depth = (unsigned)x;
        } else if (!strcmp(k, "pipeline_bytes")) {
            if (get_int(v, k, 1, 1ll << 40, &x, err, errlen))
                return KVCD_ECONFIG;
            rd->pipeline_bytes = (size_t)x;
        } else if (!strcmp(k, "ttl_seconds")) {
            if (get_int(v, k, 0, 1ll << 40, &x, err, errlen))
                return KVCD_ECONFIG;
            rd->ttl = x;
        } else if (!strcmp(k, "virtual_nodes")) {
            if (get_int(v, k, 1, 65536, &x, err, errlen))
                return KVCD_ECONFIG;
            rd->vnodes = (unsigned)x;
        } else if (!strcmp(k, "reconnect_min_ms")) {
            if (get_int(v, k, 1, 3600000, &x, err, errlen))
                return KVCD_ECONFIG;
            rd->reconnect_min_ms = (uint64_t)x;
        } else if (!strcmp(k, "reconnect_max_ms")) {
            if (get_int(v, k, 1, 3600000, &x, err, errlen))
                return KVCD_ECONFIG;
            rd->reconnect_max_ms = (uint64_t)x;
        } else {
            return kvcd_adapter_config_error(err, errlen,
                        "%s: unknown field (known: host, port, unix, nodes, password, "
                        "password_env, username, username_env, db, key_prefix, "
                        "connect_timeout_ms, command_timeout_ms, pipeline_depth, pipeline_bytes, "
                        "ttl_seconds, "
                        "virtual_nodes, reconnect_min_ms, reconnect_max_ms)",
                        k);
        }
    }
    if (nodes && top_addr)
        return kvcd_adapter_config_error(err, errlen, "nodes: cannot be combined with host, port or unix");
    if (rd->reconnect_max_ms < rd->reconnect_min_ms)
        return kvcd_adapter_config_error(err, errlen, "reconnect_max_ms: must be >= reconnect_min_ms (%llu)",
                    (unsigned long long)rd->reconnect_min_ms);

    nn = nodes ? json_array_size(nodes) : 1;
    ns = calloc(nn, sizeof(*ns));
    ids = calloc(nn, sizeof(*ids));
    rd->nodes = calloc(nn, sizeof(*rd->nodes));
    if (!ns || !ids || !rd->nodes) {
        rc = kvcd_adapter_config_error(err, errlen, "out of memory");
        goto out;
    }
    if (!nodes) {
        if (parse_addr(spec, "", 1, &ns[0], err, errlen))
            goto out;
    } else {
        for (i = 0; i < nn; i++) {
            json_t *o = json_array_get(nodes, i);
            char where[32];

            snprintf(where, sizeof(where), "nodes[%zu].", i);
            if (!json_is_object(o)) {
                rc = kvcd_adapter_config_error(err, errlen, "nodes[%zu]: expected an object", i);
                goto out;
            }
            if (parse_addr(o, where, 0, &ns[i], err, errlen))
                goto out;
        }
    }
    if (env_or_value(spec, "password", "password_env", &rd->password, err, errlen) ||
        env_or_value(spec, "username", "username_env", &rd->username, err, errlen))
        goto out;
    if (rd->username && !rd->password) {
        rc = kvcd_adapter_config_error(err, errlen, "username: needs password or password_env");
        goto out;
    }

    for (i = 0; i < nn; i++) {
        node_t *n = calloc(1, sizeof(*n));

        if (!n || (ns[i].host && !(n->host = strdup(ns[i].host))) ||
            (ns[i].path && !(n->path = strdup(ns[i].path)))) {
            if (n) {
                free(n->host);
                free(n);
            }
            rc = kvcd_adapter_config_error(err, errlen, "out of memory");
            goto out;
        }
        node_id(&ns[i], n->id, sizeof(n->id), n->addr, sizeof(n->addr));
        for (j = 0; j < i; j++)
            if (!strcmp(rd->nodes[j]->id, n->id)) {
                rc = kvcd_adapter_config_error(err, errlen, "nodes[%zu]: the same server as nodes[%zu] (%s)", i, j,
                          n->id);
                free(n->host);
                free(n->path);
                free(n);
                goto out;
            }
        n->rd = rd;
        n->loop = rd->loop;
        n->port = ns[i].port;
        n->backoff_ms = rd->reconnect_min_ms;
        uv_timer_init(rd->loop, &n->retry);
        uv_timer_init(rd->loop, &n->watch);
        n->retry.data = n->watch.data = n;
        n->refs = 2;
        rd->nodes[i] = n;
        rd->nnodes = i + 1;
        ids[i] = n->id;
    }
    if (kvcd_ring_build(&rd->ring, ids, nn, rd->vnodes) != 0) {
        rc = kvcd_adapter_config_error(err, errlen, "out of memory");
        goto out;
    }
    rd->ticker = malloc(sizeof(*rd->ticker));
    if (!rd->ticker) {
        rc = kvcd_adapter_config_error(err, errlen, "out of memory");
        goto out;
    }
    uv_timer_init(rd->loop, rd->ticker);
    rd->ticker->data = rd;
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

        healthy &= n->state == N_READY;
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}",
                           "id", n->id, "address", n->addr, "state", state_names[n->state],
                           "keys_routed", (json_int_t)n->routed, "connects",
                           (json_int_t)n->connects, "disconnects", (json_int_t)n->disconnects,
                           "failed_connects", (json_int_t)n->failed_connects,
                           "command_timeouts", (json_int_t)n->timeouts, "server_errors",
                           (json_int_t)n->errors, "in_flight", (json_int_t)n->sent.n,
                           "queued", (json_int_t)n->wait.n, "last_error", n->last_error));
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
    .doc = "Redis or Valkey servers (one, or several by consistent hashing), asynchronous",
    .fields = fields,
    .init = init,
    .store = submit,
    .lookup = submit,
    .load = submit,
    .remove = submit,
    .status = status,
    .close = close_,
};
