/*
 * client.c - the kvcd C client library (see client.h).
 *
 * Replies are matched by request id. Replies for ids other than the awaited
 * one are parked on a list until asked for; replies for ids given up on (a
 * timeout) are dropped when they arrive, so a slow server cannot grow the list.
 * The set of given-up ids has no fixed size: an id leaves it when its reply
 * arrives (the server answers every request once) or when the connection is
 * reset, after which no reply of the old connection can arrive.
 *
 * Bulk frames of a STORE are handed to ZeroMQ without a copy, each with a free
 * function that counts down a per-request hold record (zc_t). ZeroMQ calls it
 * from its I/O thread once it no longer reads the caller's buffer, so the
 * records are under a mutex; everything else is the calling thread's. A wait
 * never returns while ZeroMQ may still read that request's buffers: after the
 * reply the release is immediate (the server has every byte), and after a
 * timeout the client resets its connection, which makes ZeroMQ drop the
 * unsent frames (zmq_ctx_term returns only once every message is freed).
 */
#include <errno.h>
#include <fcntl.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "client.h"

struct kvcd_reply_s {
    kvcd_reply_t *next;
    kvcd_reply_hdr_t hdr;
    size_t nframes;
    zmq_msg_t *frames;
};

/* Frames of one request that ZeroMQ may still read. */
typedef struct zc_s zc_t;
struct zc_s {
    zc_t *next;
    kvcd_client_t *c;
    uint64_t id;
    size_t left;            /* frames not yet freed by ZeroMQ */
};

struct kvcd_client_s {
    void *ctx;
    void *sock;             /* NULL after a reset failed to reconnect */
    char *endpoint;
    int timeout_ms;
    uint64_t next_id;
    uint64_t first_id;      /* first id sent on the current connection */
    kvcd_reply_t *parked;
    uint64_t *abandoned;    /* ids given up on, whose replies are still due */
    size_t nabandoned, capabandoned;
    pthread_mutex_t mu;     /* guards held (ZeroMQ's I/O thread frees frames) */
    pthread_cond_t cv;
    zc_t *held;
    char errmsg[256];
};

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int open_socket(kvcd_client_t *c)
{
    int zero = 0;

    c->ctx = zmq_ctx_new();
    c->sock = c->ctx ? zmq_socket(c->ctx, ZMQ_DEALER) : NULL;
    if (!c->sock)
        goto fail;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(c->sock, ZMQ_SNDHWM, &zero, sizeof(zero));
    zmq_setsockopt(c->sock, ZMQ_RCVHWM, &zero, sizeof(zero));
    if (zmq_connect(c->sock, c->endpoint) != 0)
        goto fail;
    c->first_id = c->next_id;
    return 0;
fail:
    {
        int err = zmq_errno();

        if (c->sock)
            zmq_close(c->sock);
        if (c->ctx)
            zmq_ctx_term(c->ctx);
        c->sock = c->ctx = NULL;
        return err ? -err : KVCD_ECONNECT;
    }
}

/* Close the socket and its context: ZeroMQ frees every message it still holds
 * (LINGER 0) before zmq_ctx_term returns. */
static void close_socket(kvcd_client_t *c)
{
    if (c->sock)
        zmq_close(c->sock);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    c->sock = c->ctx = NULL;
}

int kvcd_client_connect(const char *endpoint, int timeout_ms, kvcd_client_t **out)
{
    kvcd_client_t *c = calloc(1, sizeof(*c));
    int rc;

    if (!c)
        return -ENOMEM;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
    c->next_id = 1;
    c->endpoint = strdup(endpoint);
    if (!c->endpoint) {
        free(c);
        return -ENOMEM;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    rc = open_socket(c);
    if (rc != 0) {
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        free(c->endpoint);
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void kvcd_client_close(kvcd_client_t *c)
{
    kvcd_reply_t *r, *next;

    if (!c)
        return;
    for (r = c->parked; r; r = next) {
        next = r->next;
        kvcd_reply_free(r);
    }
    close_socket(c); /* every zc_t is freed by now */
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c->abandoned);
    free(c->endpoint);
    free(c);
}

void kvcd_keyset(kvcd_key_t *base, const char *model, uint32_t world_size,
                 uint32_t worker_id, uint32_t group, const char *salt)
{
    memset(base, 0, sizeof(*base));
    base->model = model;
    base->model_len = (uint32_t)strlen(model);
    base->kv_rank = kvcd_kv_rank(world_size, worker_id);
    base->group = group;
    base->salt = salt && *salt ? salt : NULL;
    base->salt_len = salt ? (uint32_t)strlen(salt) : 0;
}

/* ZeroMQ is done with one frame of z's request (its I/O thread, or ours when
 * a send fails). */
static void zc_free(void *data, void *hint)
{
    zc_t *z = hint;
    kvcd_client_t *c = z->c;
    zc_t **pp;

    pthread_mutex_lock(&c->mu);
    if (--z->left == 0) {
        for (pp = &c->held; *pp != z; pp = &(*pp)->next)
            ;
        *pp = z->next;
        free(z);
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
}

/* Frames of request id that ZeroMQ may still read? */
static int is_held(kvcd_client_t *c, uint64_t id)
{
    zc_t *z;
    int held = 0;

    pthread_mutex_lock(&c->mu);
    for (z = c->held; z; z = z->next)
        if (z->id == id)
            held = 1;
    pthread_mutex_unlock(&c->mu);
    return held;
}

/* Wait until ZeroMQ let go of id's frames, at most until deadline (ms,
 * CLOCK_MONOTONIC as now_ms). 0, or -1 if it still holds them. */
static int wait_released(kvcd_client_t *c, uint64_t id, uint64_t deadline)
{
    struct timespec ts;
    zc_t *z;
    int held;

    pthread_mutex_lock(&c->mu);
    for (;;) {
        for (held = 0, z = c->held; z; z = z->next)
            if (z->id == id)
                held = 1;
        if (!held || now_ms() >= deadline)
            break;
        /* The condition variable uses CLOCK_REALTIME: wait in short steps. */
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
    pthread_mutex_unlock(&c->mu);
    return held ? -1 : 0;
}

/* Drop the connection and open a new one: ZeroMQ gives back every buffer it
 * held, requests still in flight lose their replies (their waits answer
 * KVCD_ECONNECT), and the server sees a new peer. */
static void reset_connection(kvcd_client_t *c)
{
    close_socket(c);
    c->nabandoned = 0; /* no reply of the old connection can arrive now */
    if (open_socket(c) != 0)
        c->first_id = c->next_id;
}

/* Send a header made by the caller, then one bulk frame per bufs entry,
 * zero-copy, held until ZeroMQ frees it (zc_t). */
static int send_frames(kvcd_client_t *c, uint64_t id, kvcd_wbuf_t *w, size_t n,
                       const void *const *bufs, const size_t *lens)
{
    zmq_msg_t m;
    size_t len, i, nbulk = bufs ? n : 0;
    zc_t *z = NULL;
    char *hdr;
    int rc = 0;

    hdr = kvcd_wbuf_release(w, &len);
    if (!hdr)
        return -ENOMEM;
    if (!c->sock) {
        free(hdr);
        return KVCD_ECONNECT;
    }
    if (nbulk) {
        z = calloc(1, sizeof(*z));
        if (!z) {
            free(hdr);
            return -ENOMEM;
        }
        z->c = c;
        z->id = id;
        z->left = nbulk + 1; /* + ours, dropped below: no early free */
        pthread_mutex_lock(&c->mu);
        z->next = c->held;
        c->held = z;
        pthread_mutex_unlock(&c->mu);
    }
    if (zmq_send(c->sock, hdr, len, nbulk ? ZMQ_SNDMORE : 0) < 0) {
        rc = -zmq_errno();
        i = 0;
        goto out;
    }
    for (i = 0; i < nbulk; i++) {
        if (zmq_msg_init_data(&m, (void *)bufs[i], lens[i], zc_free, z) != 0) {
            rc = -ENOMEM;
            break;
        }
        if (zmq_msg_send(&m, c->sock, i + 1 < n ? ZMQ_SNDMORE : 0) < 0) {
            rc = -zmq_errno();
            zmq_msg_close(&m); /* calls zc_free */
            i++;
            break;
        }
    }
out:
    free(hdr);
    if (z) {
        /* Frames never handed to ZeroMQ, and our own count. */
        pthread_mutex_lock(&c->mu);
        z->left -= nbulk - i;
        pthread_mutex_unlock(&c->mu);
        zc_free(NULL, z);
    }
    return rc;
}

int kvcd_client_send(kvcd_client_t *c, uint32_t op, const kvcd_key_t *base,
                     const kvcd_bytes_t *hashes, size_t n, const void *const *bufs,
                     const size_t *lens, uint64_t *id)
{
    kvcd_wbuf_t w;

    *id = c->next_id++;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req(&w, *id, op, base, hashes, n);
    return send_frames(c, *id, &w, n, bufs, lens);
}

int kvcd_client_send_shm(kvcd_client_t *c, uint32_t op, const kvcd_key_t *base,
                         const kvcd_bytes_t *hashes, size_t n, const kvcd_shm_args_t *shm,
                         uint64_t *id)
{
    kvcd_wbuf_t w;

    *id = c->next_id++;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req_shm(&w, *id, op, base, hashes, n, shm);
    return send_frames(c, *id, &w, 0, NULL, NULL);
}

static void abandon(kvcd_client_t *c, uint64_t id)
{
    if (c->nabandoned == c->capabandoned) {
        size_t cap = c->capabandoned ? c->capabandoned * 2 : 64;
        uint64_t *a = realloc(c->abandoned, cap * sizeof(*a));

        if (!a)
            return; /* its late reply will be parked instead: never mismatched */
        c->abandoned = a;
        c->capabandoned = cap;
    }
    c->abandoned[c->nabandoned++] = id;
}

/* If id was given up on, forget it (its one reply is here) and say so. */
static int take_abandoned(kvcd_client_t *c, uint64_t id)
{
    size_t i;

    for (i = 0; i < c->nabandoned; i++) {
        if (c->abandoned[i] == id) {
            c->abandoned[i] = c->abandoned[--c->nabandoned];
            return 1;
        }
    }
    return 0;
}

int kvcd_client_keep_memory(void)
{
#ifdef __GLIBC__
    /* One arena: ZeroMQ's I/O thread allocates the frames and the caller's
     * thread frees them; no mmap'd blocks (glibc caps M_MMAP_THRESHOLD at
     * 32 MiB, so a 32 MiB frame would still be mapped); no trimming. */
    if (mallopt(M_ARENA_MAX, 1) == 1 && mallopt(M_MMAP_MAX, 0) == 1 &&
        mallopt(M_TRIM_THRESHOLD, (int)(((unsigned)-1) >> 1)) == 1)
        return 0;
#endif
    return -ENOTSUP;
}

/* Receive one whole reply, waiting at most until deadline. */
static int recv_reply(kvcd_client_t *c, uint64_t deadline, kvcd_reply_t **out)
{
    zmq_pollitem_t pi = {.socket = c->sock, .events = ZMQ_POLLIN};
    kvcd_reply_t *r;

    if (!c->sock)
        return KVCD_ECONNECT;
    zmq_msg_t hdr, m;
    uint64_t now;
    size_t cap = 0;
    int rc, more;

    for (;;) {
        now = now_ms();
        if (now >= deadline)
            return KVCD_ETIMEDOUT;
        rc = zmq_poll(&pi, 1, (long)(deadline - now));
        if (rc < 0 && zmq_errno() != EINTR)
            return -zmq_errno();
        if (rc > 0)
            break;
    }
    r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    zmq_msg_init(&hdr);
    if (zmq_msg_recv(&hdr, c->sock, 0) < 0) {
        rc = -zmq_errno();
        zmq_msg_close(&hdr);
        free(r);
        return rc;
    }
    more = zmq_msg_more(&hdr);
    rc = kvcd_proto_decode_reply(zmq_msg_data(&hdr), zmq_msg_size(&hdr), &r->hdr);
    zmq_msg_close(&hdr);
    while (more) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->sock, 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        more = zmq_msg_more(&m);
        if (r->nframes == cap) {
            zmq_msg_t *f = realloc(r->frames, (cap ? cap * 2 : 8) * sizeof(zmq_msg_t));

            if (!f) {
                zmq_msg_close(&m);
                rc = -ENOMEM;
                continue;
            }
            r->frames = f;
            cap = cap ? cap * 2 : 8;
        }
        r->frames[r->nframes++] = m;
    }
    if (rc != 0) {
        kvcd_reply_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

/* The reply to id is in hand: make sure ZeroMQ no longer reads id's buffers
 * before handing it over. The server had every byte, so the release is
 * immediate; the bound is only there so a wait can never hang on it. */
static int deliver(kvcd_client_t *c, uint64_t id, uint64_t deadline, kvcd_reply_t *r,
                   kvcd_reply_t **out)
{
    uint64_t floor = now_ms() + 1000;

    if (wait_released(c, id, deadline > floor ? deadline : floor) != 0)
        reset_connection(c);
    *out = r;
    return 0;
}

int kvcd_client_wait(kvcd_client_t *c, uint64_t id, int timeout_ms,
                     kvcd_reply_t **out)
{
    uint64_t deadline = now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : c->timeout_ms);
    kvcd_reply_t **pp, *r = NULL;
    int rc;

    for (pp = &c->parked; *pp; pp = &(*pp)->next) {
        if ((*pp)->hdr.id == id) {
            r = *pp;
            *pp = r->next;
            r->next = NULL;
            return deliver(c, id, deadline, r, out);
        }
    }
    if (id < c->first_id) {
        snprintf(c->errmsg, sizeof(c->errmsg),
                 "request %llu was lost when the connection was reset after a timeout",
                 (unsigned long long)id);
        return KVCD_ECONNECT;
    }
    for (;;) {
        rc = recv_reply(c, deadline, &r);
        if (rc == KVCD_EMALFORMED)
            continue; /* not a reply we can read; keep waiting for ours */
        if (rc != 0) {
            if (rc == KVCD_ETIMEDOUT) {
                if (is_held(c, id))
                    reset_connection(c); /* takes back the caller's buffers */
                else
                    abandon(c, id);
            }
            return rc;
        }
        if (r->hdr.id == id)
            return deliver(c, id, deadline, r, out);
        if (take_abandoned(c, r->hdr.id)) {
            kvcd_reply_free(r);
            continue;
        }
        r->next = c->parked;
        c->parked = r;
    }
}

void kvcd_client_pending(const kvcd_client_t *c, size_t *parked, size_t *abandoned)
{
    const kvcd_reply_t *r;
    size_t n = 0;

    for (r = c->parked; r; r = r->next)
        n++;
    if (parked)
        *parked = n;
    if (abandoned)
        *abandoned = c->nabandoned;
}

const kvcd_reply_hdr_t *kvcd_reply_hdr(const kvcd_reply_t *r)
{
    return &r->hdr;
}

size_t kvcd_reply_nframes(const kvcd_reply_t *r)
{
    return r->nframes;
}

const void *kvcd_reply_frame(const kvcd_reply_t *r, size_t i, size_t *len)
{
    if (i >= r->nframes) {
        *len = 0;
        return NULL;
    }
    *len = zmq_msg_size(&r->frames[i]);
    return zmq_msg_data(&r->frames[i]);
}

void kvcd_reply_free(kvcd_reply_t *r)
{
    size_t i;

    if (!r)
        return;
    for (i = 0; i < r->nframes; i++)
        zmq_msg_close(&r->frames[i]);
    free(r->frames);
    kvcd_proto_reply_free(&r->hdr);
    free(r);
}

const char *kvcd_client_errmsg(const kvcd_client_t *c)
{
    return c->errmsg;
}

/* Send (frames, or the shm fields when shm is set), wait, and turn a
 * request-level error into the return value. */
static int call_any(kvcd_client_t *c, uint32_t op, const kvcd_key_t *base,
                    const kvcd_bytes_t *hashes, size_t n, const void *const *bufs,
                    const size_t *lens, const kvcd_shm_args_t *shm, kvcd_reply_t **out)
{
    uint64_t id, first = c->first_id;
    int rc;

    c->errmsg[0] = '\0';
    rc = shm ? kvcd_client_send_shm(c, op, base, hashes, n, shm, &id)
             : kvcd_client_send(c, op, base, hashes, n, bufs, lens, &id);
    if (rc == 0)
        rc = kvcd_client_wait(c, id, 0, out);
    if (rc == KVCD_ETIMEDOUT)
        snprintf(c->errmsg, sizeof(c->errmsg), "no reply within %d ms%s", c->timeout_ms,
                 c->first_id != first ? " (connection reset to take back the buffers)" : "");
    if (rc != 0)
        return rc;
    if ((*out)->hdr.err != 0) {
        snprintf(c->errmsg, sizeof(c->errmsg), "%s", (*out)->hdr.msg);
        rc = (*out)->hdr.err;
        kvcd_reply_free(*out);
        *out = NULL;
        return rc;
    }
    if (base && (*out)->hdr.nresults != n && op != KVCD_OP_LOOKUP &&
        op != KVCD_OP_LOOKUP_MAP) {
        kvcd_reply_free(*out);
        *out = NULL;
        return KVCD_EMALFORMED;
    }
    return 0;
}

static int call(kvcd_client_t *c, uint32_t op, const kvcd_key_t *base,
                const kvcd_bytes_t *hashes, size_t n, const void *const *bufs,
                const size_t *lens, kvcd_reply_t **out)
{
    return call_any(c, op, base, hashes, n, bufs, lens, NULL, out);
}

int kvcd_client_ping(kvcd_client_t *c, kvcd_ping_t *info, char *info_buf,
                     size_t buflen)
{
    kvcd_reply_t *r;
    int rc = call(c, KVCD_OP_PING, NULL, NULL, 0, NULL, NULL, &r);

    if (rc != 0)
        return rc;
    if (info) {
        *info = r->hdr.ping;
        info->l1_shm = NULL; /* r's buffer goes: kvcd_client_map_l1 reads it */
        if (info_buf && buflen) {
            snprintf(info_buf, buflen, "%s", r->hdr.server_buf);
            info->server = info_buf;
        } else {
            info->server = NULL;
        }
    }
    kvcd_reply_free(r);
    return 0;
}

static void copy_results(const kvcd_reply_t *r, int *results, size_t n)
{
    if (results)
        memcpy(results, r->hdr.results, n * sizeof(int));
}

int kvcd_client_store(kvcd_client_t *c, const kvcd_key_t *base,
                      const kvcd_bytes_t *hashes, size_t n, const void *const *bufs,
                      const size_t *lens, int *results)
{
    kvcd_reply_t *r;
    int rc = call(c, KVCD_OP_STORE, base, hashes, n, bufs, lens, &r);

    if (rc != 0)
        return rc;
    copy_results(r, results, n);
    kvcd_reply_free(r);
    return 0;
}

int kvcd_client_lookup(kvcd_client_t *c, const kvcd_key_t *base,
                       const kvcd_bytes_t *hashes, size_t n, size_t *prefix,
                       uint8_t *present)
{
    kvcd_reply_t *r;
    int rc = call(c, KVCD_OP_LOOKUP, base, hashes, n, NULL, NULL, &r);

    if (rc != 0)
        return rc;
    if (r->hdr.nresults != n || !r->hdr.present) {
        kvcd_reply_free(r);
        return KVCD_EMALFORMED;
    }
    *prefix = (size_t)r->hdr.prefix;
    if (present)
        memcpy(present, r->hdr.present, n);
    kvcd_reply_free(r);
    return 0;
}

int kvcd_client_load(kvcd_client_t *c, const kvcd_key_t *base,
                     const kvcd_bytes_t *hashes, size_t n, void *const *bufs,
                     const size_t *caps, size_t *lens, int *results)
{
    kvcd_reply_t *r;
    size_t i, len;
    const void *p;
    int rc = call(c, KVCD_OP_LOAD, base, hashes, n, NULL, NULL, &r);

    if (rc != 0)
        return rc;
    if (r->nframes != n) {
        kvcd_reply_free(r);
        return KVCD_EFRAMES;
    }
    for (i = 0; i < n; i++) {
        p = kvcd_reply_frame(r, i, &len);
        lens[i] = len;
        results[i] = r->hdr.results[i];
        if (results[i] != 0)
            continue;
        if (len > caps[i]) {
            results[i] = -EMSGSIZE;
            continue;
        }
        memcpy(bufs[i], p, len);
    }
    kvcd_reply_free(r);
    return 0;
}

int kvcd_client_remove(kvcd_client_t *c, const kvcd_key_t *base,
                       const kvcd_bytes_t *hashes, size_t n, int *results)
{
    kvcd_reply_t *r;
    int rc = call(c, KVCD_OP_REMOVE, base, hashes, n, NULL, NULL, &r);

    if (rc != 0)
        return rc;
    copy_results(r, results, n);
    kvcd_reply_free(r);
    return 0;
}

int kvcd_client_clear(kvcd_client_t *c, uint64_t *removed)
{
    kvcd_reply_t *r;
    int rc = call(c, KVCD_OP_CLEAR, NULL, NULL, 0, NULL, NULL, &r);

    if (rc != 0)
        return rc;
    if (removed)
        *removed = r->hdr.removed;
    kvcd_reply_free(r);
    return 0;
}

int kvcd_client_status(kvcd_client_t *c, char **json)
{
    kvcd_reply_t *r;
    int rc = call(c, KVCD_OP_STATUS, NULL, NULL, 0, NULL, NULL, &r);

    if (rc != 0)
        return rc;
    *json = r->hdr.status ? json_dumps(r->hdr.status, JSON_INDENT(2) | JSON_SORT_KEYS)
                          : NULL;
    kvcd_reply_free(r);
    return *json ? 0 : KVCD_EMALFORMED;
}

/* ---- shared memory ---- */

int kvcd_client_segment_create(kvcd_client_t *c, size_t size, kvcd_segment_t **out)
{
    kvcd_segment_t *seg = calloc(1, sizeof(*seg));
    kvcd_shm_args_t shm;
    kvcd_reply_t *r;
    int rc;

    if (!seg)
        return -ENOMEM;
    seg->fd = -1;
    seg->base = MAP_FAILED;
    if (size == 0) {
        rc = -EINVAL;
        goto fail;
    }
    /* The "kvcd-" prefix is what the server accepts; the seals guarantee the
     * server's mapping can never lose its pages (no SIGBUS), whatever happens
     * to this process. */
    seg->fd = memfd_create("kvcd-client", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (seg->fd < 0 || ftruncate(seg->fd, (off_t)size) != 0 ||
        fcntl(seg->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        rc = -errno;
        goto fail;
    }
    seg->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, seg->fd, 0);
    if (seg->base == MAP_FAILED) {
        rc = -errno;
        goto fail;
    }
    seg->size = size;
    memset(&shm, 0, sizeof(shm));
    shm.pid = (uint64_t)getpid();
    shm.fd = (uint64_t)seg->fd;
    shm.size = size;
    rc = call_any(c, KVCD_OP_REGISTER_SEGMENT, NULL, NULL, 0, NULL, NULL, &shm, &r);
    if (rc != 0)
        goto fail;
    seg->id = r->hdr.segment;
    kvcd_reply_free(r);
    *out = seg;
    return 0;
fail:
    if (seg->base != MAP_FAILED)
        munmap(seg->base, size);
    if (seg->fd >= 0)
        close(seg->fd);
    free(seg);
    return rc;
}

int kvcd_client_segment_destroy(kvcd_client_t *c, kvcd_segment_t *seg)
{
    kvcd_shm_args_t shm;
    kvcd_reply_t *r;
    int rc;

    if (!seg)
        return 0;
    memset(&shm, 0, sizeof(shm));
    shm.segment = seg->id;
    rc = call_any(c, KVCD_OP_UNREGISTER_SEGMENT, NULL, NULL, 0, NULL, NULL, &shm, &r);
    if (rc == 0)
        kvcd_reply_free(r);
    munmap(seg->base, seg->size);
    close(seg->fd);
    free(seg);
    return rc;
}

int kvcd_client_store_shm(kvcd_client_t *c, const kvcd_key_t *base,
                          const kvcd_bytes_t *hashes, size_t n, const kvcd_segment_t *seg,
                          const uint64_t *offsets, const uint64_t *lengths, int *results)
{
    kvcd_shm_args_t shm = {.segment = seg->id, .offsets = offsets, .lengths = lengths};
    kvcd_reply_t *r;
    int rc = call_any(c, KVCD_OP_STORE_SHM, base, hashes, n, NULL, NULL, &shm, &r);

    if (rc != 0)
        return rc;
    copy_results(r, results, n);
    kvcd_reply_free(r);
    return 0;
}

int kvcd_client_load_shm(kvcd_client_t *c, const kvcd_key_t *base,
                         const kvcd_bytes_t *hashes, size_t n, const kvcd_segment_t *seg,
                         const uint64_t *offsets, const uint64_t *caps, uint64_t *lens,
                         int *results)
{
    kvcd_shm_args_t shm = {.segment = seg->id, .offsets = offsets, .lengths = caps};
    kvcd_reply_t *r;
    int rc = call_any(c, KVCD_OP_LOAD_SHM, base, hashes, n, NULL, NULL, &shm, &r);

    if (rc != 0)
        return rc;
    if (!r->hdr.lengths) {
        kvcd_reply_free(r);
        return KVCD_EMALFORMED;
    }
    copy_results(r, results, n);
    if (lens)
        memcpy(lens, r->hdr.lengths, n * sizeof(uint64_t));
    kvcd_reply_free(r);
    return 0;
}

/* ---- zero-copy: the shared L1 ---- */

int kvcd_client_map_l1(kvcd_client_t *c, kvcd_l1map_t **out)
{
    kvcd_l1map_t *m;
    kvcd_reply_t *r;
    struct stat st;
    int rc, fd;

    *out = NULL;
    rc = call(c, KVCD_OP_PING, NULL, NULL, 0, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    m = calloc(1, sizeof(*m));
    if (!m) {
        kvcd_reply_free(r);
        return -ENOMEM;
    }
    snprintf(m->name, sizeof(m->name), "%s", r->hdr.shm_buf);
    m->size = (size_t)r->hdr.ping.l1_size;
    kvcd_reply_free(r);
    if (!m->name[0] || m->size == 0) {
        free(m);
        snprintf(c->errmsg, sizeof(c->errmsg), "the server reports no shared L1");
        return KVCD_EUNKNOWNOP;
    }
    fd = shm_open(m->name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        snprintf(c->errmsg, sizeof(c->errmsg), "shm_open(%s): %s (same host and user as "
                 "kvcd?)", m->name, strerror(errno));
        free(m);
        return rc;
    }
    /* The object must be as large as the server says, or touching the end of
     * the mapping would fault. */
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size < m->size) {
        close(fd);
        free(m);
        snprintf(c->errmsg, sizeof(c->errmsg), "%s is smaller than the server reports",
                 m->name);
        return -EINVAL;
    }
    m->base = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    rc = -errno;
    close(fd);
    if (m->base == MAP_FAILED) {
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void kvcd_client_unmap_l1(kvcd_l1map_t *m)
{
    if (!m)
        return;
    munmap(m->base, m->size);
    free(m);
}

/* A zero-copy call whose reply carries offsets and lengths (RESERVE, MAP). */
static int call_extents(kvcd_client_t *c, uint32_t op, const kvcd_key_t *base,
                        const kvcd_bytes_t *hashes, size_t n, const uint64_t *lengths_in,
                        uint64_t *offsets, uint64_t *lengths, int *results)
{
    kvcd_shm_args_t shm = {.lengths = lengths_in};
    kvcd_reply_t *r;
    int rc = call_any(c, op, base, hashes, n, NULL, NULL, &shm, &r);

    if (rc != 0)
        return rc;
    if (!r->hdr.offsets || !r->hdr.lengths || !r->hdr.results) {
        kvcd_reply_free(r);
        return KVCD_EMALFORMED;
    }
    copy_results(r, results, n);
    if (offsets)
        memcpy(offsets, r->hdr.offsets, n * sizeof(uint64_t));
    if (lengths)
        memcpy(lengths, r->hdr.lengths, n * sizeof(uint64_t));
    kvcd_reply_free(r);
    return 0;
}

int kvcd_client_reserve(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                        size_t n, const uint64_t *lengths, uint64_t *offsets, int *results)
{
    return call_extents(c, KVCD_OP_RESERVE, base, hashes, n, lengths, offsets, NULL, results);
}

int kvcd_client_map(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                    size_t n, uint64_t *offsets, uint64_t *lengths, int *results)
{
    return call_extents(c, KVCD_OP_MAP, base, hashes, n, NULL, offsets, lengths, results);
}

static int call_keys(kvcd_client_t *c, uint32_t op, const kvcd_key_t *base,
                     const kvcd_bytes_t *hashes, size_t n, int *results)
{
    kvcd_shm_args_t shm;
    kvcd_reply_t *r;
    int rc;

    memset(&shm, 0, sizeof(shm));
    rc = call_any(c, op, base, hashes, n, NULL, NULL, &shm, &r);
    if (rc != 0)
        return rc;
    copy_results(r, results, n);
    kvcd_reply_free(r);
    return 0;
}

int kvcd_client_commit(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                       size_t n, int *results)
{
    return call_keys(c, KVCD_OP_COMMIT, base, hashes, n, results);
}

int kvcd_client_abort(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                      size_t n, int *results)
{
    return call_keys(c, KVCD_OP_ABORT, base, hashes, n, results);
}

int kvcd_client_release(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                        size_t n, int *results)
{
    return call_keys(c, KVCD_OP_RELEASE, base, hashes, n, results);
}

int kvcd_client_lookup_map(kvcd_client_t *c, const kvcd_key_t *base,
                           const kvcd_bytes_t *hashes, size_t n, size_t *prefix,
                           uint64_t *offsets, uint64_t *lengths)
{
    kvcd_shm_args_t shm;
    kvcd_reply_t *r;
    int rc;

    memset(&shm, 0, sizeof(shm));
    *prefix = 0;
    rc = call_any(c, KVCD_OP_LOOKUP_MAP, base, hashes, n, NULL, NULL, &shm, &r);
    if (rc != 0)
        return rc;
    if (r->hdr.prefix > n || r->hdr.nextents != r->hdr.prefix ||
        (r->hdr.prefix && (!r->hdr.offsets || !r->hdr.lengths))) {
        kvcd_reply_free(r);
        snprintf(c->errmsg, sizeof(c->errmsg), "LOOKUP_MAP reply: extents do not match prefix");
        return KVCD_EMALFORMED;
    }
    *prefix = (size_t)r->hdr.prefix;
    if (offsets && *prefix)
        memcpy(offsets, r->hdr.offsets, *prefix * sizeof(uint64_t));
    if (lengths && *prefix)
        memcpy(lengths, r->hdr.lengths, *prefix * sizeof(uint64_t));
    kvcd_reply_free(r);
    return 0;
}
