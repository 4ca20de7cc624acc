/*
 * bridge.c - the ZeroMQ ROUTER socket bridged into libuv (see bridge.h).
 *
 * ZMQ_FD is edge triggered: it signals only when ZMQ_EVENTS changes. So we
 * drain while ZMQ_EVENTS says POLLIN (a bounded batch per loop turn, continued
 * from an idle handle so one busy client cannot starve timers and completions),
 * and re-check after every send, because a send can consume the edge without
 * us seeing it.
 *
 * Zero-copy reply frames: ZeroMQ's I/O thread frees the frames one by one; the
 * last one of a reply queues its release record for the loop (one wake-up per
 * reply however many frames it has), where `sent` runs.
 *
 * Invariants: `sent` runs exactly once per kvcd_bridge_send, on the loop
 * thread; `unsent` counts the bulk bytes whose `sent` has not run; while
 * paused, nothing is read from the socket.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "daemon/bridge.h"
#include "daemon/log.h"
#include "protocol/kvcd_err.h"

#define DRAIN_BUDGET 128 /* messages per loop turn */

struct kvcd_conn_s {
    uint32_t refs;
    zmq_msg_t ident;
    kvcd_peer_t peer;
};

typedef struct rel_s {
    struct rel_s *next;
    kvcd_bridge_t *b;
    size_t frames_left; /* atomic */
    size_t bytes;
    void (*sent)(void *arg);
    void *arg;
} rel_t;

struct kvcd_bridge_s {
    uv_loop_t *loop;
    const char *endpoint;
    void *zctx;
    void *sock;
    size_t max_frames;
    kvcd_bridge_msg_cb cb;
    void *cb_data;
    uv_poll_t poll;
    uv_idle_t idle;
    uv_async_t wake;
    uv_timer_t later;       /* runs `sent` of replies that never reached ZeroMQ */
    pthread_mutex_t rel_lock;
    rel_t *rel_head;        /* from ZeroMQ's I/O thread */
    rel_t *local_head;      /* loop thread */
    int wake_live;
    int paused;
    int closed;
    size_t unsent;
};

static void idle_cb(uv_idle_t *h);

void kvcd_frame_release(kvcd_frame_t *f)
{
    if (f->owner) {
        zmq_msg_close(f->owner);
        free(f->owner);
    }
    f->owner = NULL;
    f->data = NULL;
    f->len = 0;
}

void kvcd_conn_ref(kvcd_conn_t *c)
{
    c->refs++;
}

void kvcd_conn_unref(kvcd_conn_t *c)
{
    if (--c->refs > 0)
        return;
    zmq_msg_close(&c->ident);
    free(c);
}

void kvcd_conn_peer(const kvcd_conn_t *c, kvcd_peer_t *out)
{
    *out = c->peer;
}

const void *kvcd_conn_ident(const kvcd_conn_t *c, size_t *len)
{
    zmq_msg_t *m = (zmq_msg_t *)&c->ident;

    *len = zmq_msg_size(m);
    return zmq_msg_data(m);
}

/* ---- releases ---- */

static void frame_free_cb(void *data, void *hint)
{
    rel_t *r = hint;
    kvcd_bridge_t *b = r->b;

    if (__atomic_sub_fetch(&r->frames_left, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    pthread_mutex_lock(&b->rel_lock);
    r->next = b->rel_head;
    b->rel_head = r;
    if (b->wake_live)
        uv_async_send(&b->wake);
    pthread_mutex_unlock(&b->rel_lock);
}

static void run_releases(kvcd_bridge_t *b, rel_t *r)
{
    rel_t *next;

    for (; r; r = next) {
        next = r->next;
        b->unsent -= r->bytes;
        if (r->sent)
            r->sent(r->arg);
        free(r);
    }
}

static void release_queued(kvcd_bridge_t *b)
{
    rel_t *r;

    pthread_mutex_lock(&b->rel_lock);
    r = b->rel_head;
    b->rel_head = NULL;
    pthread_mutex_unlock(&b->rel_lock);
    run_releases(b, r);
    r = b->local_head;
    b->local_head = NULL;
    run_releases(b, r);
}

static void wake_cb(uv_async_t *h)
{
    release_queued(h->data);
}

static void later_cb(uv_timer_t *t)
{
    kvcd_bridge_t *b = t->data;
    rel_t *r = b->local_head;

    b->local_head = NULL;
    run_releases(b, r);
}

/* A release whose frames never reached ZeroMQ: run it on a later loop turn. */
static void release_later(kvcd_bridge_t *b, rel_t *r)
{
    r->next = b->local_head;
    b->local_head = r;
    if (!b->closed)
        uv_timer_start(&b->later, later_cb, 0, 0);
    /* else kvcd_bridge_destroy runs it */
}

static void free_buf_cb(void *data, void *hint)
{
    free(data);
}

int kvcd_bridge_send(kvcd_bridge_t *b, kvcd_conn_t *conn, void *hdr, size_t hdr_len,
                     const kvcd_bulk_t *bulk, size_t nbulk, void (*sent)(void *arg),
                     void *arg)
{
    zmq_msg_t h, id, m;
    size_t i = 0, bytes = 0;
    rel_t *r = calloc(1, sizeof(*r));
    int ok = 0, err = 0;

    for (i = 0; i < nbulk; i++)
        bytes += bulk[i].len;
    if (!r) {
        /* Without a release record nothing can be sent zero-copy. */
        free(hdr);
        if (sent)
            sent(arg); /* documented exception: no memory to defer it */
        return -ENOMEM;
    }
    r->b = b;
    r->sent = sent;
    r->arg = arg;
    r->bytes = bytes;
    b->unsent += bytes;
    /* One count per bulk frame plus one held by us until the end. */
    r->frames_left = nbulk + 1;
    if (!b->sock) {
        err = KVCD_ESHUTDOWN;
        free(hdr);
        goto done;
    }
    if (zmq_msg_init_data(&h, hdr, hdr_len, free_buf_cb, NULL) != 0) {
        err = -zmq_errno();
        free(hdr);
        goto done;
    }
    zmq_msg_init(&id);
    zmq_msg_copy(&id, &conn->ident);
    if (zmq_msg_send(&id, b->sock, ZMQ_SNDMORE) < 0) {
        err = -zmq_errno();
        zmq_msg_close(&id);
        zmq_msg_close(&h);
        goto done;
    }
    if (zmq_msg_send(&h, b->sock, nbulk ? ZMQ_SNDMORE : 0) < 0) {
        err = -zmq_errno();
        zmq_msg_close(&h);
        goto done;
    }
    for (i = 0; i < nbulk; i++) {
        if (bulk[i].len == 0)
            zmq_msg_init(&m);
        else if (zmq_msg_init_data(&m, (void *)bulk[i].data, bulk[i].len, frame_free_cb, r) != 0)
            break;
        if (bulk[i].len == 0)
            __atomic_sub_fetch(&r->frames_left, 1, __ATOMIC_ACQ_REL);
        if (zmq_msg_send(&m, b->sock, i + 1 < nbulk ? ZMQ_SNDMORE : 0) < 0) {
            err = -zmq_errno();
            zmq_msg_close(&m); /* runs frame_free_cb for this frame */
            i++;
            break;
        }
    }
    ok = i == nbulk && err == 0;
    if (!ok && err == 0)
        err = -ENOMEM;
    /* Frames never created count as released. */
    for (; i < nbulk; i++)
        __atomic_sub_fetch(&r->frames_left, 1, __ATOMIC_ACQ_REL);
done:
    if (__atomic_sub_fetch(&r->frames_left, 1, __ATOMIC_ACQ_REL) == 0) {
        /* Nothing is left with ZeroMQ (no bulk frames, or all of them were
         * already freed): run `sent` on a later turn, never inside send. */
        release_later(b, r);
    }
    if (b->sock)
        uv_idle_start(&b->idle, idle_cb);
    return ok ? 0 : err;
}

/* ---- receiving ---- */

static kvcd_frame_t take(zmq_msg_t *m)
{
    kvcd_frame_t f = {NULL, 0, NULL};
    zmq_msg_t *o = malloc(sizeof(*o));

    if (!o) {
        zmq_msg_close(m);
        return f;
    }
    *o = *m; /* a zmq_msg_t may be moved while it is not in use */
    f.owner = o;
    f.data = zmq_msg_data(o);
    f.len = zmq_msg_size(o);
    return f;
}

/* Receive one whole multipart message; 0 when one was handled, -1 when the
 * socket had nothing. */
static int recv_one(kvcd_bridge_t *b)
{
    kvcd_conn_t *conn = calloc(1, sizeof(*conn));
    kvcd_frame_t *frames = NULL;
    size_t n = 0, cap = 0;
    int more, overflow = 0;
    zmq_msg_t m;

    if (!conn)
        return -1;
    conn->refs = 1;
    zmq_msg_init(&conn->ident);
    if (zmq_msg_recv(&conn->ident, b->sock, ZMQ_DONTWAIT) < 0) {
        kvcd_conn_unref(conn);
        return -1;
    }

    /* The rest of a multipart message is already here (ZeroMQ delivers whole
     * messages), so these receives do not block. */
    more = zmq_msg_more(&conn->ident);
    while (more) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, b->sock, 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        more = zmq_msg_more(&m);
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            kvcd_frame_t *f;

            if (cap > b->max_frames || !(f = realloc(frames, ncap * sizeof(*f)))) {
                overflow = 1;
                zmq_msg_close(&m);
                continue;
            }
            frames = f;
            cap = ncap;
        }
        frames[n] = take(&m);
        if (!frames[n].owner)
            overflow = 1;
        else
            n++;
    }
    /* The kernel's credentials ride on every frame ZeroMQ received (peer.h). */
    if (n > 0 && frames[0].owner)
        kvcd_peer_from_msg(frames[0].owner, b->endpoint, &conn->peer);
    if (n == 0) {
        /* A message without a header still gets an answer (EMALFORMED). */
        free(frames);
        frames = calloc(1, sizeof(*frames));
        if (!frames) {
            kvcd_conn_unref(conn);
            return 0;
        }
        n = 1;
    }
    b->cb(b->cb_data, conn, frames, n, overflow);
    return 0;
}

static void drain_n(kvcd_bridge_t *b, int budget)
{
    uint32_t events;
    size_t sz;

    for (; b->sock && (!b->paused || budget < 0); budget--) {
        sz = sizeof(events);
        if (zmq_getsockopt(b->sock, ZMQ_EVENTS, &events, &sz) != 0 ||
            !(events & ZMQ_POLLIN))
            break;
        if (budget == 0) {
            uv_idle_start(&b->idle, idle_cb);
            return;
        }
        if (recv_one(b) != 0)
            break;
    }
    if (!uv_is_closing((uv_handle_t *)&b->idle))
        uv_idle_stop(&b->idle);
}

static void idle_cb(uv_idle_t *h)
{
    drain_n(h->data, DRAIN_BUDGET);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    if (status < 0)
        KVCD_LOG(KVCD_LOG_ERROR, "bridge", "poll on the ZeroMQ fd: %s", uv_strerror(status));
    drain_n(h->data, DRAIN_BUDGET);
}

void kvcd_bridge_drain_all(kvcd_bridge_t *b)
{
    drain_n(b, -1);
}

void kvcd_bridge_pause(kvcd_bridge_t *b)
{
    if (b->paused || b->closed)
        return;
    b->paused = 1;
    uv_poll_stop(&b->poll);
    uv_idle_stop(&b->idle);
}

void kvcd_bridge_resume(kvcd_bridge_t *b)
{
    if (!b->paused || b->closed)
        return;
    b->paused = 0;
    uv_poll_start(&b->poll, UV_READABLE, poll_cb);
    uv_idle_start(&b->idle, idle_cb); /* the edge may have passed while paused */
}

int kvcd_bridge_paused(const kvcd_bridge_t *b)
{
    return b->paused;
}

size_t kvcd_bridge_unsent(const kvcd_bridge_t *b)
{
    return b->unsent;
}

/* ---- lifecycle ---- */

int kvcd_bridge_create(uv_loop_t *loop, const kvcd_options_t *opt, size_t max_frames,
                       kvcd_bridge_msg_cb cb, void *data, kvcd_bridge_t **out, char *err,
                       size_t errlen)
{
    kvcd_bridge_t *b = calloc(1, sizeof(*b));
    int one = 1, zero = 0, fd, rc;
    int64_t maxmsg;
    size_t sz;

    *out = NULL;
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    b->loop = loop;
    b->endpoint = opt->endpoint;
    b->max_frames = max_frames;
    b->cb = cb;
    b->cb_data = data;
    pthread_mutex_init(&b->rel_lock, NULL);
    b->zctx = zmq_ctx_new();
    b->sock = b->zctx ? zmq_socket(b->zctx, ZMQ_ROUTER) : NULL;
    if (!b->sock) {
        rc = -zmq_errno();
        snprintf(err, errlen, "cannot create the ZeroMQ socket: %s", zmq_strerror(-rc));
        goto fail;
    }
    /* Unlimited send queue: replies are zero-copy references into L1, and a
     * ROUTER would otherwise drop them silently at the high-water mark. */
    /* No frame larger than a bulk frame may be (or a header, whichever is
     * larger) plus framing slack: ZeroMQ closes a peer that sends one. */
    maxmsg = (int64_t)((opt->max_frame > (4u << 20) ? opt->max_frame : (4u << 20)) +
                       (64u << 10));
    zmq_setsockopt(b->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    zmq_setsockopt(b->sock, ZMQ_SNDHWM, &zero, sizeof(zero));
    zmq_setsockopt(b->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    zmq_setsockopt(b->sock, ZMQ_LINGER, &zero, sizeof(zero));
    if (zmq_bind(b->sock, opt->endpoint) != 0) {
        rc = -zmq_errno();
        snprintf(err, errlen, "cannot bind %s: %s", opt->endpoint, zmq_strerror(-rc));
        goto fail;
    }
    sz = sizeof(fd);
    zmq_getsockopt(b->sock, ZMQ_FD, &fd, &sz);
    uv_poll_init(loop, &b->poll, fd);
    uv_idle_init(loop, &b->idle);
    uv_async_init(loop, &b->wake, wake_cb);
    uv_timer_init(loop, &b->later);
    b->poll.data = b->idle.data = b->wake.data = b->later.data = b;
    b->wake_live = 1;
    uv_poll_start(&b->poll, UV_READABLE, poll_cb);
    /* Messages may already be queued before the first edge. */
    uv_idle_start(&b->idle, idle_cb);
    *out = b;
    return 0;

fail:
    if (b->sock)
        zmq_close(b->sock);
    if (b->zctx)
        zmq_ctx_term(b->zctx);
    pthread_mutex_destroy(&b->rel_lock);
    free(b);
    return rc ? rc : KVCD_EINTERNAL;
}

void kvcd_bridge_close(kvcd_bridge_t *b, int linger_ms)
{
    if (b->closed)
        return;
    b->closed = 1;
    zmq_setsockopt(b->sock, ZMQ_LINGER, &linger_ms, sizeof(linger_ms));
    zmq_close(b->sock);
    b->sock = NULL;
    uv_close((uv_handle_t *)&b->poll, NULL);
    uv_close((uv_handle_t *)&b->idle, NULL);
    uv_close((uv_handle_t *)&b->later, NULL);
    pthread_mutex_lock(&b->rel_lock);
    b->wake_live = 0;
    pthread_mutex_unlock(&b->rel_lock);
    uv_close((uv_handle_t *)&b->wake, NULL);
}

void kvcd_bridge_destroy(kvcd_bridge_t *b)
{
    /* Waits until queued replies are out (bounded by the linger set at close);
     * every zero-copy frame's free callback has run when it returns. */
    zmq_ctx_term(b->zctx);
    release_queued(b);
    pthread_mutex_destroy(&b->rel_lock);
    free(b);
}
