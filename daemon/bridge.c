/*
 * bridge.c - the daemon's socket: kvcd's ZMTP transport (daemon/zmtp.h)
 * under the request layer (see bridge.h).
 *
 * The transport hands over whole messages whose frames were read straight
 * into buffers this file allocates, so every byte a peer makes the daemon
 * hold is counted here before it is read:
 *  - a message over the limits (a frame over max_frame, more than max_keys+1
 *    frames, more than max_request + a header's worth of bytes) is read and
 *    dropped by the transport without being buffered; its header, if it had
 *    arrived, still comes here so the request is answered ETOOLARGE;
 *  - `held` counts the bytes of frames allocated and not yet freed (requests
 *    being received and requests not finished); with the headers of unsent
 *    replies it is what the admission switch compares against the budget:
 *    above it every connection is paused, so the peers' kernels block them,
 *    as long as some of it drains without reading (a delivered request, an
 *    unsent reply); bytes of messages still arriving drain only by reading
 *    on, so they alone never pause: held stays under the budget plus the
 *    messages in progress (one per connection), and no pause can deadlock;
 *  - a connection whose unsent replies exceed --max-unsent-mb is paused by
 *    itself (a peer that does not read cannot make the daemon queue more),
 *    and resumed when its replies drain;
 *  - a bulk frame the placer (bridge.h) claims is read straight into the
 *    memory it names (an L1 object): the frame's record then holds the
 *    placer's token, and releasing the frame before kvcd_frame_take gives the
 *    token back through unplace, on every path (request refused, message
 *    dropped mid-way, connection closed with a message half-received).
 *
 * Invariants: `sent` runs exactly once per kvcd_bridge_send, on the loop
 * thread, never inside the call; a kvcd_conn_t lives while a request from it
 * is referenced and at least until the transport closed it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "daemon/bridge.h"
#include "daemon/log.h"
#include "daemon/zmtp.h"
#include "protocol/kvcd_err.h"

#define HEADER_MAX (4u << 20) /* a header frame may be this large whatever max_frame */

struct kvcd_conn_s {
    uint32_t refs;            /* requests + 1 while the transport has it open */
    kvcd_zconn_t *z;
    kvcd_bridge_t *b;
    uint64_t id;              /* big-endian in ident: segment ownership */
    uint8_t ident[8];
    kvcd_peer_t peer;
    size_t unsent;            /* bulk bytes of this peer's unsent replies */
    int self_paused;          /* paused for its own unsent replies */
    void *memo;               /* the placer's word for the message being received */
    int closed;               /* the transport closed it */
};

typedef struct {
    kvcd_bridge_t *b;
    kvcd_conn_t *conn;
    void *hdr;
    size_t hdr_len;
    size_t bytes;
    void (*sent)(void *arg);
    void *arg;
} rel_t;

struct kvcd_bridge_s {
    uv_loop_t *loop;
    kvcd_zsrv_t *z;
    uint64_t budget;          /* --max-pending-mb */
    size_t max_unsent;        /* --max-unsent-mb, per connection */
    uint64_t pauses;
    kvcd_bridge_msg_cb cb;
    void *cb_data;
    void (*close_cb)(void *data, kvcd_conn_t *conn);
    void *close_data;
    uv_timer_t later;        /* runs `sent` of replies that never reached the socket */
    rel_t **later_q;
    size_t nlater, caplater;
    int paused;
    int closed;
    size_t unsent;
    uint64_t held;            /* bytes of frames allocated and not freed */
    uint64_t receiving;       /* part of held: frames of messages not yet delivered */
    size_t unsent_hdr;        /* header bytes of unsent replies (malloc'd) */
    uint64_t discarded, unanswerable, self_pauses;
    kvcd_bridge_placer_t placer;
    uint64_t placed_frames, placed_bytes; /* bulk frames received in place */
    uint64_t unplaced_frames;           /* ... and given back unused */
    char why[160];            /* the last dropped message's reason */
};

/* ---- admission ---- */

/* Memory held for peers against the budget: the frames of requests being
 * received or not yet finished, and the headers of unsent replies. Above it
 * no connection is read. The bulk of a reply is L1 memory sent in place, not
 * extra memory: it is bounded per connection (max_unsent), so one peer that
 * does not read pins a bounded part of L1 and never stalls the others.
 * Called after every change. */
static void admit(kvcd_bridge_t *b)
{
    /* Pausing helps only while something held drains without reading: a
     * delivered request finishes, an unsent reply goes out. Frames of
     * messages still being received drain only by reading on, so when they
     * are all that is held a pause would stall those messages for good (a
     * budget of one max-size request, or two peers each halfway through
     * one): then keep reading until one of them is delivered. */
    int over = b->held + b->unsent_hdr > b->budget &&
               (b->held - b->receiving) + b->unsent_hdr > 0;

    if (b->closed || over == b->paused)
        return;
    b->paused = over;
    if (over) {
        b->pauses++;
        kvcd_zsrv_pause_all(b->z);
    } else {
        kvcd_zsrv_resume_all(b->z);
    }
}

/* ---- frames ---- */

/* A frame's record: the byte count rides in front so a release needs only the
 * frame. An ordinary frame's bytes follow it; a placed frame's bytes are the
 * placer's, and `placed` holds its token until taken. */
typedef struct {
    kvcd_bridge_t *b;
    size_t len;
    void *placed;
    int receiving;            /* its message has not been delivered yet */
    max_align_t data[];
} fbuf_t;

static void forget_memo(kvcd_bridge_t *b, kvcd_conn_t *c)
{
    if (c && c->memo) {
        b->placer.forget(b->placer.data, c->memo);
        c->memo = NULL;
    }
}

/* Frame `index` >= 1 straight into the placer's memory, or NULL. */
static void *frame_place(kvcd_bridge_t *b, kvcd_zconn_t *zc, size_t index, size_t len,
                         void **owner)
{
    kvcd_conn_t *c = kvcd_zconn_data(zc);
    void *const *pf, *const *po;
    const size_t *pl;
    void *dst, *token = NULL;
    fbuf_t *f;

    if (!c || kvcd_zconn_pending(zc, &pf, &pl, &po) < 1 || !pf[0])
        return NULL;
    dst = b->placer.place(b->placer.data, &c->memo, pf[0], pl[0], index, len, &token);
    if (!dst)
        return NULL;
    f = malloc(sizeof(*f));
    if (!f) {
        b->placer.unplace(b->placer.data, token);
        return NULL;
    }
    f->b = b;
    f->len = len;
    f->placed = token;
    b->placed_frames++;
    b->placed_bytes += len;
    *owner = f;
    return dst;
}

static void *frame_alloc(kvcd_zconn_t *zc, size_t index, size_t len, void **owner)
{
    kvcd_bridge_t *b = kvcd_zsrv_data(kvcd_zconn_server(zc));
    void *dst = NULL;
    fbuf_t *f;

    if (b->placer.place) {
        if (index == 0)
            forget_memo(b, kvcd_zconn_data(zc)); /* a new message */
        else
            dst = frame_place(b, zc, index, len, owner);
    }
    if (!dst) {
        f = malloc(sizeof(*f) + len);
        if (!f)
            return NULL; /* the transport drops the message and reports it */
        f->b = b;
        f->len = len;
        f->placed = NULL;
        *owner = f;
        dst = f->data;
    }
    ((fbuf_t *)*owner)->receiving = 1;
    b->held += len;
    b->receiving += len;
    admit(b);
    return dst;
}

static void fbuf_free(fbuf_t *f)
{
    kvcd_bridge_t *b = f->b;

    if (f->placed) {
        b->placer.unplace(b->placer.data, f->placed);
        b->unplaced_frames++;
    }
    b->held -= f->len;
    if (f->receiving)
        b->receiving -= f->len;
    free(f);
    admit(b);
}

static void frame_free(kvcd_zconn_t *zc, void *buf, size_t len, void *owner)
{
    if (owner)
        fbuf_free(owner);
}

void *kvcd_frame_take(kvcd_frame_t *f)
{
    fbuf_t *fb = f->owner;
    void *token;

    if (!fb || !fb->placed)
        return NULL;
    token = fb->placed;
    fb->placed = NULL;
    return token;
}

void kvcd_bridge_set_placer(kvcd_bridge_t *b, const kvcd_bridge_placer_t *p)
{
    if (p)
        b->placer = *p;
    else
        memset(&b->placer, 0, sizeof(b->placer));
}

void kvcd_frame_release(kvcd_frame_t *f)
{
    if (f->owner)
        fbuf_free(f->owner);
    f->owner = NULL;
    f->data = NULL;
    f->len = 0;
}

/* ---- connections ---- */

void kvcd_conn_ref(kvcd_conn_t *c)
{
    c->refs++;
}

void kvcd_conn_unref(kvcd_conn_t *c)
{
    if (--c->refs > 0)
        return;
    forget_memo(c->b, c);
    kvcd_zconn_unref(c->z);
    free(c);
}

const void *kvcd_conn_ident(const kvcd_conn_t *c, size_t *len)
{
    *len = sizeof(c->ident);
    return c->ident;
}

void kvcd_conn_peer(const kvcd_conn_t *c, kvcd_peer_t *out)
{
    *out = c->peer;
}

int kvcd_conn_closed(const kvcd_conn_t *c)
{
    return c->closed;
}

static void on_connect(kvcd_zconn_t *zc)
{
    kvcd_bridge_t *b = kvcd_zsrv_data(kvcd_zconn_server(zc));
    kvcd_conn_t *c = calloc(1, sizeof(*c));
    kvcd_zcred_t cred;
    size_t i;

    if (!c) {
        KVCD_LOG_RATELIMITED(KVCD_LOG_ERROR, "bridge", 5000,
                             "out of memory for a connection; closing it");
        kvcd_zconn_close(zc);
        return;
    }
    c->refs = 1;
    c->z = zc;
    c->b = b;
    c->id = kvcd_zconn_id(zc);
    for (i = 0; i < 8; i++)
        c->ident[i] = (uint8_t)(c->id >> (56 - 8 * i));
    memset(&c->peer, 0, sizeof(c->peer));
    if (kvcd_zconn_peer(zc, &cred) == 0 && cred.verified) {
        c->peer.verified = 1;
        c->peer.uid = cred.uid;
        c->peer.gid = cred.gid;
        c->peer.pid = cred.pid;
    }
    kvcd_zconn_ref(zc);
    kvcd_zconn_set_data(zc, c);
}

static void on_close(kvcd_zconn_t *zc)
{
    kvcd_conn_t *c = kvcd_zconn_data(zc);

    if (!c)
        return;
    forget_memo(c->b, c);
    kvcd_zconn_set_data(zc, NULL);
    c->closed = 1;
    if (c->b->close_cb)
        c->b->close_cb(c->b->close_data, c);
    kvcd_conn_unref(c);
}

/* Hand a message to the request layer: frames[0] is the header (empty when
 * the transport kept none), `overflow` marks a message the transport
 * dropped. */
static void deliver(kvcd_conn_t *c, void **frames, const size_t *lens, void **owners, size_t n,
                    const char *dropped)
{
    kvcd_bridge_t *b = c->b;
    kvcd_frame_t *f = calloc(n ? n : 1, sizeof(*f));
    size_t i;

    if (!f) {
        for (i = 0; i < n; i++)
            if (owners[i])
                fbuf_free(owners[i]);
        KVCD_LOG_RATELIMITED(KVCD_LOG_ERROR, "bridge", 5000, "out of memory for a request");
        return;
    }
    for (i = 0; i < n; i++) {
        fbuf_t *fb = owners[i];

        f[i].data = frames[i];
        f[i].len = lens[i];
        f[i].owner = owners[i];
        if (fb && fb->receiving) {
            fb->receiving = 0;
            b->receiving -= fb->len;
        }
    }
    admit(b); /* delivered bytes drain without reading: a pause may help now */
    kvcd_conn_ref(c);
    b->cb(b->cb_data, c, f, n ? n : 1, dropped);
}

static void on_message(kvcd_zconn_t *zc, void **frames, const size_t *lens, void **owners,
                       size_t n)
{
    kvcd_conn_t *c = kvcd_zconn_data(zc);
    size_t i;

    if (!c) {
        for (i = 0; i < n; i++)
            if (owners[i])
                fbuf_free(owners[i]);
        return;
    }
    forget_memo(c->b, c);
    deliver(c, frames, lens, owners, n, NULL);
}

static void on_discard(kvcd_zconn_t *zc, const kvcd_zdiscard_t *d, void **frames,
                       const size_t *lens, void **owners, size_t n)
{
    kvcd_conn_t *c = kvcd_zconn_data(zc);
    kvcd_bridge_t *b = kvcd_zsrv_data(kvcd_zconn_server(zc));
    size_t i;

    b->discarded++;
    forget_memo(b, c);
    snprintf(b->why, sizeof(b->why), "%s (frame %zu of %zu, %" PRIu64 " bytes); it was not read",
             d->limit == KVCD_ZLIMIT_FRAME    ? "a bulk frame exceeds max_frame"
             : d->limit == KVCD_ZLIMIT_FRAMES ? "more frames than max_keys"
             : d->limit == KVCD_ZLIMIT_MESSAGE ? "bulk bytes exceed max_request"
                                               : "no memory to receive it",
             d->frame + 1, d->frames, d->bytes);
    KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "bridge", 5000, "message dropped: %s", b->why);
    if (!c || n == 0) {
        /* Without its header the request cannot be named in a reply. */
        b->unanswerable++;
        for (i = 0; i < n; i++)
            if (owners[i])
                fbuf_free(owners[i]);
        return;
    }
    deliver(c, frames, lens, owners, 1, b->why);
}

/* ---- sending ---- */

static void rel_done(rel_t *r)
{
    kvcd_bridge_t *b = r->b;
    kvcd_conn_t *c = r->conn;

    free(r->hdr);
    b->unsent -= r->bytes;
    c->unsent -= r->bytes;
    b->unsent_hdr -= r->hdr_len;
    if (c->self_paused && c->unsent <= b->max_unsent) {
        c->self_paused = 0;
        kvcd_zconn_resume(c->z);
    }
    if (r->sent)
        r->sent(r->arg);
    kvcd_conn_unref(c);
    free(r);
    admit(b);
}

static void send_cb(void *data, int status)
{
    rel_done(data);
}

static void later_cb(uv_timer_t *t)
{
    kvcd_bridge_t *b = t->data;
    size_t i, n = b->nlater;
    rel_t **q = b->later_q;

    b->later_q = NULL;
    b->nlater = b->caplater = 0;
    for (i = 0; i < n; i++)
        rel_done(q[i]);
    free(q);
}

/* A reply that could not be queued: finish it on a later loop turn. */
static int release_later(kvcd_bridge_t *b, rel_t *r)
{
    if (b->nlater == b->caplater) {
        size_t cap = b->caplater ? 2 * b->caplater : 16;
        rel_t **q = realloc(b->later_q, cap * sizeof(*q));

        if (!q)
            return -1;
        b->later_q = q;
        b->caplater = cap;
    }
    b->later_q[b->nlater++] = r;
    if (!b->closed)
        uv_timer_start(&b->later, later_cb, 0, 0);
    return 0;
}

int kvcd_bridge_send(kvcd_bridge_t *b, kvcd_conn_t *conn, void *hdr, size_t hdr_len,
                     const kvcd_bulk_t *bulk, size_t nbulk, void (*sent)(void *arg),
                     void *arg)
{
    uv_buf_t stack[17], *bufs = stack;
    rel_t *r = calloc(1, sizeof(*r));
    size_t i, bytes = 0;
    int rc;

    for (i = 0; i < nbulk; i++)
        bytes += bulk[i].len;
    if (nbulk + 1 > sizeof(stack) / sizeof(stack[0]))
        bufs = malloc((nbulk + 1) * sizeof(*bufs));
    if (!r || !bufs) {
        if (bufs != stack)
            free(bufs);
        free(r);
        free(hdr);
        if (sent)
            sent(arg); /* documented exception: no memory to defer it */
        return -ENOMEM;
    }
    r->b = b;
    r->conn = conn;
    r->hdr = hdr;
    r->bytes = bytes;
    r->sent = sent;
    r->arg = arg;
    kvcd_conn_ref(conn);
    b->unsent += bytes;
    conn->unsent += bytes;
    r->hdr_len = hdr_len;
    b->unsent_hdr += hdr_len;
    bufs[0].base = hdr;
    bufs[0].len = hdr_len;
    for (i = 0; i < nbulk; i++) {
        bufs[i + 1].base = (char *)bulk[i].data;
        bufs[i + 1].len = bulk[i].len; /* size_t: frames may exceed 4 GiB */
    }
    rc = kvcd_zconn_send(conn->z, bufs, nbulk + 1, send_cb, r);
    if (bufs != stack)
        free(bufs);
    if (rc != 0) {
        if (release_later(b, r) != 0)
            rel_done(r);
        return rc;
    }
    if (!conn->self_paused && conn->unsent > b->max_unsent) {
        /* This peer does not read its replies: read no more requests from it. */
        conn->self_paused = 1;
        b->self_pauses++;
        kvcd_zconn_pause(conn->z);
    }
    admit(b);
    return 0;
}

/* ---- status ---- */

json_t *kvcd_bridge_status(const kvcd_bridge_t *b)
{
    kvcd_zstats_t zs;

    kvcd_zsrv_stats(b->z, &zs);
    return json_pack("{s:{s:I, s:I, s:I, s:I, s:I, s:b, s:I, s:I, s:I},"
                     " s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}}",
                     "admission", "budget_bytes", (json_int_t)b->budget, "used_bytes",
                     (json_int_t)(b->held + b->unsent), "request_bytes", (json_int_t)b->held,
                     "unsent_bytes", (json_int_t)b->unsent, "per_connection_unsent_bytes",
                     (json_int_t)b->max_unsent, "paused", b->paused, "pauses",
                     (json_int_t)b->pauses, "connection_pauses", (json_int_t)b->self_pauses,
                     "dropped_messages", (json_int_t)b->discarded,
                     "transport",
                     "connections", (json_int_t)zs.conns, "accepted", (json_int_t)zs.accepted,
                     "handshakes", (json_int_t)zs.handshakes, "rejected",
                     (json_int_t)zs.rejected, "protocol_errors", (json_int_t)zs.protocol_errors,
                     "refused", (json_int_t)zs.refused, "messages", (json_int_t)zs.messages,
                     "discarded", (json_int_t)zs.discarded, "unanswerable",
                     (json_int_t)b->unanswerable, "bytes_in", (json_int_t)zs.bytes_in,
                     "bytes_out", (json_int_t)zs.bytes_out, "bytes_direct",
                     (json_int_t)zs.bytes_direct, "placed_frames", (json_int_t)b->placed_frames,
                     "placed_bytes", (json_int_t)b->placed_bytes, "unplaced_frames",
                     (json_int_t)b->unplaced_frames);
}

/* ---- lifecycle ---- */

int kvcd_bridge_create(uv_loop_t *loop, const kvcd_options_t *opt, size_t max_frames,
                       kvcd_bridge_msg_cb cb, void *data, kvcd_bridge_t **out, char *err,
                       size_t errlen)
{
    kvcd_bridge_t *b = calloc(1, sizeof(*b));
    kvcd_zsrv_opts_t zo;
    kvcd_zsrv_cbs_t zc;
    char why[400];
    int rc;

    *out = NULL;
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    b->loop = loop;
    b->cb = cb;
    b->cb_data = data;
    b->budget = opt->max_pending;
    b->max_unsent = opt->max_unsent;
    memset(&zo, 0, sizeof(zo));
    /* Larger frames and messages are read and dropped, never buffered. */
    zo.max_frame = opt->max_frame > HEADER_MAX ? opt->max_frame : HEADER_MAX;
    zo.max_frames = max_frames;
    zo.max_message = opt->max_request + HEADER_MAX;
    memset(&zc, 0, sizeof(zc));
    zc.frame_alloc = frame_alloc;
    zc.frame_free = frame_free;
    zc.on_connect = on_connect;
    zc.on_message = on_message;
    zc.on_discard = on_discard;
    zc.on_close = on_close;
    zc.data = b;
    rc = kvcd_zsrv_create(loop, &zo, &zc, &b->z);
    if (rc != 0) {
        snprintf(err, errlen, "cannot create the transport: %s", kvcd_strerror(rc));
        free(b);
        return rc;
    }
    rc = kvcd_zsrv_bind(b->z, opt->endpoint, why, sizeof(why));
    if (rc != 0) {
        snprintf(err, errlen, "cannot bind %s", why);
        kvcd_zsrv_close(b->z, 0, NULL, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        free(b);
        return rc;
    }
    uv_timer_init(loop, &b->later);
    b->later.data = b;
    *out = b;
    return 0;
}

void kvcd_bridge_on_close(kvcd_bridge_t *b, void (*cb)(void *data, kvcd_conn_t *conn),
                          void *data)
{
    b->close_cb = cb;
    b->close_data = data;
}

void kvcd_bridge_close(kvcd_bridge_t *b, int linger_ms)
{
    if (b->closed)
        return;
    b->closed = 1;
    kvcd_zsrv_close(b->z, (unsigned)linger_ms, NULL, NULL);
    /* Releases still waiting run now rather than never. */
    later_cb(&b->later);
    uv_close((uv_handle_t *)&b->later, NULL);
}

void kvcd_bridge_destroy(kvcd_bridge_t *b)
{
    free(b->later_q);
    free(b);
}
