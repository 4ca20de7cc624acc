/*
 * zmtp.c - ZMTP 3.0/3.1 server (NULL mechanism) on libuv streams.
 *
 * Wire (RFC 23 and 37): both sides send a 64-byte greeting (signature
 * FF 00*8 7F, version 3.1, mechanism "NULL", as-server, filler); then each
 * sends a READY command with its properties; then frames: a flags byte (MORE=1,
 * LONG=2, COMMAND=4) and a 1- or 8-byte big-endian size. Commands after the
 * handshake are PING (answered with PONG carrying the same context), PONG
 * and unknown names (ignored), ERROR and READY (close). A PING's TTL makes us
 * close the connection when nothing arrives from it for that long.
 *
 * Invariants:
 *  - bytes are parsed incrementally from one staging buffer per connection;
 *    a frame body that does not fit in what has been staged is read by the
 *    kernel straight into the user's buffer (the read alloc callback hands out
 *    the unfilled rest of the frame), so a bulk frame is copied once;
 *  - memory held per connection = the staging buffer, the frame arrays
 *    (bounded by max_frames) and the buffers frame_alloc handed out; a dropped
 *    message is read into the staging buffer and forgotten, only its frame 0
 *    is kept for on_discard;
 *  - every buffer frame_alloc returned goes back exactly once: to on_message,
 *    to on_discard, or to frame_free;
 *  - every accepted send's callback runs exactly once; libuv runs pending
 *    write callbacks (ECANCELED) before the stream's close callback, so
 *    on_close runs after all of them;
 *  - a connection is freed only when both its handles are closed and its
 *    reference count is zero; the server is freed only when every handle it
 *    owns is closed, so after the close callback the loop holds none;
 *  - a connection is read while: not closing, and either still in the
 *    handshake or neither it nor the server is paused.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/log.h"
#include "daemon/zmtp.h"
#include "protocol/kvcd_err.h"

#define F_MORE 0x01
#define F_LONG 0x02
#define F_COMMAND 0x04

#define GREETING_LEN 64
#define MAX_LISTENERS 4
#define PAUSE_CHECK_MS 200
#define CLOSE_LINGER_MS 1000
#define MAX_PONGS_PENDING 16
#define PING_CONTEXT_MAX 16

#define DEF_MAX_FRAME ((size_t)1 << 30)
#define DEF_MAX_FRAMES 4096
#define DEF_MAX_MESSAGE ((uint64_t)4 << 30)
#define DEF_STAGE (64u << 10)
#define MIN_STAGE 1024u
#define DEF_HANDSHAKE_MS 10000
#define DEF_BACKLOG 128

typedef enum {
    ST_GREETING,
    ST_HEADER,
    ST_BODY,    /* a message frame's body */
    ST_COMMAND, /* a command frame's body, gathered in the stage */
} pstate_t;

typedef struct {
    union {
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    kvcd_zsrv_t *srv;
    int is_ipc;
    int port;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char endpoint[160];
    int bound; /* the ipc socket file is ours */
} listener_t;

struct kvcd_zsrv_s {
    uv_loop_t *loop;
    kvcd_zsrv_opts_t o;
    kvcd_zsrv_cbs_t cb;
    listener_t *lst[MAX_LISTENERS];
    size_t nlst;
    uv_timer_t pause_timer; /* polls paused connections for a gone peer */
    uv_idle_t kick;         /* parses staged bytes of resumed connections, and runs the
                             * callbacks of messages written whole (srv->written) */
    kvcd_zconn_t *conns;    /* every connection with open handles */
    kvcd_zconn_t *kick_head; /* resumed with staged bytes; each holds a ref */
    struct wreq_s *written; /* sent whole by uv_try_write, callback due (kick) */
    uint64_t next_id;
    int paused_all;
    int closing;
    unsigned linger_ms;
    size_t handles; /* open handles owned by the server (not connections) */
    void (*close_cb)(kvcd_zsrv_t *, void *);
    void *close_data;
    kvcd_zstats_t st;
};

struct kvcd_zconn_s {
    union {
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t timer; /* handshake deadline, PING TTL, linger */
    kvcd_zsrv_t *srv; /* NULL once closed */
    kvcd_zconn_t *prev, *next;
    uint64_t id;
    unsigned refs;
    int handles; /* open libuv handles: 2 until closing completes */
    void *data;

    unsigned ready : 1;     /* handshake done, on_connect ran */
    unsigned reading : 1;   /* uv_read_start in effect */
    unsigned paused : 1;    /* kvcd_zconn_pause */
    unsigned closing : 1;   /* uv_close called */
    unsigned lingering : 1; /* waiting for writes before uv_close */
    unsigned closed : 1;    /* on_close ran (or would have) */
    unsigned kicked : 1;    /* on srv->kick's list */
    unsigned is_ipc : 1;

    kvcd_zcred_t cred;
    const char *socket_type;
    unsigned char identity[255];
    size_t identity_len;

    /* send side */
    size_t unsent;     /* user payload bytes not yet confirmed */
    size_t nwrites;    /* write requests in flight (user + internal) */
    unsigned npongs;   /* internal PONG writes in flight */
    uint64_t ttl_ms;   /* from the last PING; 0 = none */
    uint64_t last_rx;  /* uv_now of the last read */

    /* parser */
    pstate_t ps;
    unsigned char greet[GREETING_LEN];
    size_t greet_len;
    uint64_t body_size, body_left;
    unsigned char *body_dst; /* NULL: discarding */
    int more;

    /* the message being received */
    void **frames;
    size_t *lens;
    void **owners;
    size_t nframes, cap; /* kept frames (all of them, unless discarding) */
    size_t seen;         /* frames of this message seen so far */
    uint64_t msg_bytes;  /* payload bytes seen so far */
    int discarding;
    kvcd_zdiscard_t disc;

    kvcd_zconn_t *kick_next;
    size_t stage_size, rd, wr;
    unsigned char stage[];
};

typedef struct wreq_s {
    uv_write_t req;
    kvcd_zconn_t *c;
    kvcd_zsend_cb cb;
    void *data;
    size_t bytes;
    int internal; /* 1 greeting/READY, 2 PONG */
    struct wreq_s *next_written; /* on srv->written, holding a ref on c */
    unsigned char hdr[];
} wreq_t;

void *(*kvcd_zmtp_calloc)(size_t n, size_t size) = calloc;

static void conn_close(kvcd_zconn_t *c);
static void update_reading(kvcd_zconn_t *c);
static void kick_cb(uv_idle_t *idle);
static void srv_maybe_done(kvcd_zsrv_t *srv);

/* ---- helpers ------------------------------------------------------------ */

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t be64(const unsigned char *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Write a frame header for `len` bytes; returns its length (2 or 9). */
static size_t put_header(unsigned char *p, unsigned flags, uint64_t len)
{
    if (len <= 255) {
        p[0] = (unsigned char)flags;
        p[1] = (unsigned char)len;
        return 2;
    }
    p[0] = (unsigned char)(flags | F_LONG);
    for (int i = 0; i < 8; i++)
        p[1 + i] = (unsigned char)(len >> (56 - 8 * i));
    return 9;
}

/* Closing, or waiting for its writes before closing: read nothing more. */
static int dead(const kvcd_zconn_t *c)
{
    return c->closing || c->lingering;
}

static int effective_paused(const kvcd_zconn_t *c)
{
    return c->ready && (c->paused || (c->srv && c->srv->paused_all));
}

/* ---- sending ------------------------------------------------------------ */

static void write_finish(wreq_t *w, int status)
{
    kvcd_zconn_t *c = w->c;

    c->nwrites--;
    if (w->internal == 2)
        c->npongs--;
    if (!w->internal) {
        c->unsent -= w->bytes;
        if (status == 0 && c->srv)
            c->srv->st.bytes_out += w->bytes;
        if (w->cb)
            w->cb(w->data, status);
    }
    free(w);
    if (status < 0 && !c->closing)
        conn_close(c); /* the connection died under us */
    else if (c->lingering && !c->closing && c->nwrites == 0)
        conn_close(c);
}

static void write_done(uv_write_t *req, int status)
{
    write_finish((wreq_t *)req, status);
}

/* Callbacks of messages uv_try_write sent whole (kick_cb, server close). */
static void run_written(kvcd_zsrv_t *srv)
{
    wreq_t *w;

    while ((w = srv->written)) {
        kvcd_zconn_t *c = w->c;

        srv->written = w->next_written;
        write_finish(w, 0);
        kvcd_zconn_unref(c);
    }
}

/* Write bufs at once when nothing is queued ahead: a reply that fits the
 * socket buffer then costs one writev and no write request in libuv, whose
 * completion would re-arm the epoll watcher (an epoll_ctl per reply). The
 * callback runs from the kick idle, on the next loop turn. Returns 1 when
 * all was written (w queued), 0 to go on with uv_write (bufs/nb advanced
 * past what was written). */
static int try_write_now(kvcd_zconn_t *c, wreq_t *w, uv_buf_t *bufs, size_t *nb)
{
    size_t total = 0, i, k;
    int n;

    if (uv_stream_get_write_queue_size(&c->h.stream) != 0 || c->srv->closing)
        return 0;
    for (i = 0; i < *nb; i++)
        total += bufs[i].len;
    n = uv_try_write(&c->h.stream, bufs, (unsigned)*nb);
    if (n <= 0)
        return 0; /* EAGAIN, or an error uv_write reports through its callback */
    if ((size_t)n == total) {
        kvcd_zconn_ref(c);
        w->next_written = c->srv->written;
        c->srv->written = w;
        uv_idle_start(&c->srv->kick, kick_cb);
        return 1;
    }
    for (i = 0, k = (size_t)n; k >= bufs[i].len; i++)
        k -= bufs[i].len;
    bufs[i].base += k;
    bufs[i].len -= k;
    memmove(bufs, bufs + i, (*nb - i) * sizeof(*bufs));
    *nb -= i;
    return 0;
}

/* Queue an internal command frame (greeting if raw) copied into the request. */
static int send_internal(kvcd_zconn_t *c, const void *body, size_t len, int raw, int kind)
{
    wreq_t *w = malloc(sizeof(*w) + 9 + len);
    uv_buf_t b;
    size_t h = 0;
    int rc;

    if (!w)
        return -ENOMEM;
    memset(w, 0, sizeof(*w));
    w->c = c;
    w->internal = kind;
    if (!raw)
        h = put_header(w->hdr, F_COMMAND, len);
    memcpy(w->hdr + h, body, len);
    b = uv_buf_init((char *)w->hdr, (unsigned)(h + len));
    rc = uv_write(&w->req, &c->h.stream, &b, 1, write_done);
    if (rc < 0) {
        free(w);
        return rc;
    }
    c->nwrites++;
    if (kind == 2)
        c->npongs++;
    return 0;
}

int kvcd_zconn_send(kvcd_zconn_t *c, const uv_buf_t *frames, size_t n, kvcd_zsend_cb cb,
                    void *data)
{
    uv_buf_t small[32], *bufs = small;
    size_t nb = 0, bytes = 0, off = 0;
    wreq_t *w;
    int rc;

    if (!c->ready || c->closing || c->lingering || c->closed || !c->srv)
        return -EPIPE;
    if (n == 0)
        return -EINVAL;
    if (n > SIZE_MAX / 20)
        return -ENOMEM;
    w = malloc(sizeof(*w) + 9 * n);
    if (!w)
        return -ENOMEM;
    if (2 * n > sizeof(small) / sizeof(small[0])) {
        bufs = malloc(2 * n * sizeof(*bufs));
        if (!bufs) {
            free(w);
            return -ENOMEM;
        }
    }
    memset(w, 0, sizeof(*w));
    for (size_t i = 0; i < n; i++) {
        size_t h = put_header(w->hdr + off, i + 1 < n ? F_MORE : 0, frames[i].len);

        bufs[nb++] = uv_buf_init((char *)w->hdr + off, (unsigned)h);
        off += h;
        if (frames[i].len)
            bufs[nb++] = frames[i];
        bytes += frames[i].len;
    }
    w->c = c;
    w->cb = cb;
    w->data = data;
    w->bytes = bytes;
    if (try_write_now(c, w, bufs, &nb)) {
        if (bufs != small)
            free(bufs);
        c->nwrites++;
        c->unsent += bytes;
        return 0;
    }
    rc = uv_write(&w->req, &c->h.stream, bufs, (unsigned)nb, write_done);
    if (bufs != small)
        free(bufs); /* libuv copied the array */
    if (rc < 0) {
        free(w);
        return rc;
    }
    c->nwrites++;
    c->unsent += bytes;
    return 0;
}

size_t kvcd_zconn_unsent(const kvcd_zconn_t *c)
{
    return c->unsent;
}

/* ---- the message being received ---------------------------------------- */

static int push_frame(kvcd_zconn_t *c, void *buf, size_t len, void *owner)
{
    if (c->nframes == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        void **f = realloc(c->frames, cap * sizeof(*f));

        if (!f)
            return -ENOMEM;
        c->frames = f;
        size_t *l = realloc(c->lens, cap * sizeof(*l));
        if (!l)
            return -ENOMEM;
        c->lens = l;
        void **o = realloc(c->owners, cap * sizeof(*o));
        if (!o)
            return -ENOMEM;
        c->owners = o;
        c->cap = cap;
    }
    c->frames[c->nframes] = buf;
    c->lens[c->nframes] = len;
    c->owners[c->nframes] = owner;
    c->nframes++;
    return 0;
}

/* Give back kept frames from index `from` on. */
static void free_frames(kvcd_zconn_t *c, size_t from)
{
    kvcd_zsrv_t *srv = c->srv;

    while (c->nframes > from) {
        size_t i = --c->nframes;

        if (c->frames[i] && srv)
            srv->cb.frame_free(c, c->frames[i], c->lens[i], c->owners[i]);
    }
}

static void reset_message(kvcd_zconn_t *c)
{
    c->nframes = 0;
    c->seen = 0;
    c->msg_bytes = 0;
    c->discarding = 0;
}

/* Drop the message from here on: keep frame 0 if it is complete. The frame
 * currently being started (index c->seen - 1) has not been pushed yet. */
static void start_discard(kvcd_zconn_t *c, kvcd_zlimit_t limit, size_t index)
{
    c->discarding = 1;
    c->disc.reason = limit == KVCD_ZLIMIT_ALLOC ? KVCD_ENOSPACE : KVCD_ETOOLARGE;
    c->disc.limit = limit;
    c->disc.frame = index;
    free_frames(c, 1);
}

static void message_done(kvcd_zconn_t *c)
{
    kvcd_zsrv_t *srv = c->srv;
    size_t n = c->nframes;

    if (!c->discarding) {
        srv->st.messages++;
        srv->st.bytes_in += c->msg_bytes;
        reset_message(c);
        srv->cb.on_message(c, c->frames, c->lens, c->owners, n);
        return;
    }
    c->disc.frames = c->seen;
    c->disc.bytes = c->msg_bytes;
    srv->st.discarded++;
    KVCD_LOG(KVCD_LOG_DEBUG, "zmtp",
             "conn %llu: message of %zu frames, %llu bytes dropped (%s, frame %zu)",
             (unsigned long long)c->id, c->disc.frames, (unsigned long long)c->disc.bytes,
             kvcd_errname(c->disc.reason), c->disc.frame);
    reset_message(c);
    if (srv->cb.on_discard) {
        kvcd_zdiscard_t d = c->disc;

        srv->cb.on_discard(c, &d, c->frames, c->lens, c->owners, n);
    } else {
        c->nframes = n;
        free_frames(c, 0);
    }
}

static void frame_done(kvcd_zconn_t *c)
{
    c->ps = ST_HEADER;
    c->body_dst = NULL;
    if (!c->more)
        message_done(c);
}

/* ---- handshake and commands -------------------------------------------- */

static void reject(kvcd_zconn_t *c, const char *why)
{
    kvcd_zsrv_t *srv = c->srv;

    if (c->ready) {
        srv->st.protocol_errors++;
        KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "zmtp", 1000, "conn %llu (%s): %s, closing",
                             (unsigned long long)c->id, c->cred.addr, why);
    } else {
        srv->st.rejected++;
        KVCD_LOG_RATELIMITED(KVCD_LOG_INFO, "zmtp", 1000, "peer %s: %s, closing", c->cred.addr,
                             why);
    }
    conn_close(c);
}

/* Validate the bytes of the peer's greeting seen so far; 0 or -1 (closed). */
static int check_greeting(kvcd_zconn_t *c)
{
    static const char null_mech[20] = "NULL";
    size_t n = c->greet_len;

    if (n >= 1 && c->greet[0] != 0xFF)
        return reject(c, "not a ZMTP 3 greeting (ZMTP 1.0 or garbage)"), -1;
    if (n >= 10 && !(c->greet[9] & 1))
        return reject(c, "bad greeting signature"), -1;
    if (n >= 11 && c->greet[10] < 3)
        return reject(c, "ZMTP version below 3"), -1;
    if (n >= 32 && memcmp(c->greet + 12, null_mech, 20) != 0)
        return reject(c, "security mechanism is not NULL"), -1;
    return 0;
}

static int send_ready(kvcd_zconn_t *c)
{
    static const unsigned char ready[] = {
        5,   'R', 'E', 'A', 'D', 'Y', 11, 'S', 'o', 'c', 'k', 'e', 't', '-', 'T', 'y', 'p', 'e',
        0,   0,   0,   6,   'R', 'O', 'U', 'T', 'E', 'R', 8,   'I', 'd', 'e', 'n', 't', 'i',
        't', 'y', 0,   0,   0,   0,
    };
    return send_internal(c, ready, sizeof(ready), 0, 1);
}

static void ttl_timer_cb(uv_timer_t *t);
static void arm_pause_check(kvcd_zsrv_t *srv);

/* The peer's READY: properties name(1+n) value(4+n). 0 or -1 (closed). */
static int handle_ready(kvcd_zconn_t *c, const unsigned char *p, size_t len)
{
    const char *type = NULL;
    size_t off = 0;

    while (off < len) {
        size_t nl = p[off], vl;
        const unsigned char *name, *val;

        if (nl == 0 || off + 1 + nl + 4 > len)
            return reject(c, "malformed READY"), -1;
        name = p + off + 1;
        vl = be32(p + off + 1 + nl);
        if (vl > len - (off + 1 + nl + 4))
            return reject(c, "malformed READY"), -1;
        val = name + nl + 4;
        if (nl == 11 && strncasecmp((const char *)name, "Socket-Type", 11) == 0) {
            if (vl == 6 && memcmp(val, "DEALER", 6) == 0)
                type = "DEALER";
            else if (vl == 3 && memcmp(val, "REQ", 3) == 0)
                type = "REQ";
            else
                return reject(c, "peer socket type is not DEALER or REQ"), -1;
        } else if (nl == 8 && strncasecmp((const char *)name, "Identity", 8) == 0) {
            if (vl > sizeof(c->identity))
                return reject(c, "Identity longer than 255 bytes"), -1;
            memcpy(c->identity, val, vl);
            c->identity_len = vl;
        }
        off += 1 + nl + 4 + vl;
    }
    if (!type)
        return reject(c, "READY without Socket-Type"), -1;
    c->socket_type = type;
    c->ready = 1;
    uv_timer_stop(&c->timer);
    c->srv->st.handshakes++;
    if (c->srv->cb.on_connect)
        c->srv->cb.on_connect(c);
    if (dead(c))
        return -1;
    update_reading(c);
    if (effective_paused(c))
        arm_pause_check(c->srv);
    return 0;
}

static void handle_ping(kvcd_zconn_t *c, const unsigned char *p, size_t len)
{
    unsigned char pong[1 + 4 + PING_CONTEXT_MAX];
    size_t ctx;
    unsigned ttl;

    if (len < 2) {
        reject(c, "malformed PING");
        return;
    }
    ttl = (unsigned)p[0] << 8 | p[1];
    ctx = len - 2;
    if (ctx > PING_CONTEXT_MAX)
        ctx = PING_CONTEXT_MAX;
    c->srv->st.pings++;
    if (ttl) {
        int armed = c->ttl_ms != 0;

        c->ttl_ms = (uint64_t)ttl * 100;
        if (!armed)
            uv_timer_start(&c->timer, ttl_timer_cb, c->ttl_ms, 0);
    }
    if (c->npongs >= MAX_PONGS_PENDING)
        return; /* the peer does not read: do not queue without bound */
    memcpy(pong, "\x04PONG", 5);
    memcpy(pong + 5, p + 2, ctx);
    if (send_internal(c, pong, 5 + ctx, 0, 2) < 0)
        conn_close(c);
}

/* A complete command frame; 0 or -1 (closed). */
static int handle_command(kvcd_zconn_t *c, const unsigned char *p, size_t len)
{
    size_t nl;
    const unsigned char *name, *body;
    size_t blen;

    if (len < 1 || (nl = p[0]) == 0 || nl > len - 1)
        return reject(c, "malformed command"), -1;
    name = p + 1;
    body = p + 1 + nl;
    blen = len - 1 - nl;
    if (!c->ready) {
        if (nl == 5 && memcmp(name, "READY", 5) == 0)
            return handle_ready(c, body, blen);
        if (nl == 5 && memcmp(name, "ERROR", 5) == 0)
            return reject(c, "peer sent ERROR"), -1;
        return reject(c, "expected READY"), -1;
    }
    if (nl == 4 && memcmp(name, "PING", 4) == 0) {
        handle_ping(c, body, blen);
        return dead(c) ? -1 : 0;
    }
    if (nl == 5 && (memcmp(name, "READY", 5) == 0 || memcmp(name, "ERROR", 5) == 0))
        return reject(c, "READY or ERROR after the handshake"), -1;
    return 0; /* PONG, SUBSCRIBE, unknown: ignored */
}

/* ---- the parser --------------------------------------------------------- */

/* A frame header has been read: decide where its body goes. */
static void begin_frame(kvcd_zconn_t *c, uint64_t size)
{
    kvcd_zsrv_t *srv = c->srv;
    size_t index = c->seen++;

    c->body_size = c->body_left = size;
    c->body_dst = NULL;
    c->ps = ST_BODY;
    c->msg_bytes += size;
    if (c->discarding)
        return;
    if (c->seen > srv->o.max_frames) {
        start_discard(c, KVCD_ZLIMIT_FRAMES, index);
    } else if (size > srv->o.max_frame) {
        start_discard(c, KVCD_ZLIMIT_FRAME, index);
    } else if (c->msg_bytes > srv->o.max_message) {
        start_discard(c, KVCD_ZLIMIT_MESSAGE, index);
    } else if (size == 0) {
        if (push_frame(c, NULL, 0, NULL) < 0)
            start_discard(c, KVCD_ZLIMIT_ALLOC, index);
    } else {
        void *owner = NULL;
        void *buf = srv->cb.frame_alloc(c, index, (size_t)size, &owner);

        if (!buf) {
            if (!dead(c))
                start_discard(c, KVCD_ZLIMIT_ALLOC, index);
            return;
        }
        if (dead(c) || push_frame(c, buf, (size_t)size, owner) < 0) {
            srv->cb.frame_free(c, buf, (size_t)size, owner);
            if (!dead(c))
                start_discard(c, KVCD_ZLIMIT_ALLOC, index);
            return;
        }
        c->body_dst = buf;
    }
}

/* Parse what is staged; stops when it needs more bytes, when the connection
 * is paused (after the handshake) or closing. */
static void parse(kvcd_zconn_t *c)
{
    while (!dead(c) && c->rd < c->wr) {
        unsigned char *p = c->stage + c->rd;
        size_t avail = c->wr - c->rd;

        if (c->ps == ST_GREETING) {
            size_t n = GREETING_LEN - c->greet_len;

            if (n > avail)
                n = avail;
            memcpy(c->greet + c->greet_len, p, n);
            c->greet_len += n;
            c->rd += n;
            if (check_greeting(c) < 0)
                return;
            if (c->greet_len == GREETING_LEN) {
                if (send_ready(c) < 0) {
                    conn_close(c);
                    return;
                }
                c->ps = ST_HEADER;
            }
        } else if (c->ps == ST_HEADER) {
            unsigned flags;
            uint64_t size;
            size_t hl;

            if (effective_paused(c))
                break;
            flags = p[0];
            hl = flags & F_LONG ? 9 : 2;
            if (avail < hl)
                break;
            size = hl == 9 ? be64(p + 1) : p[1];
            c->rd += hl;
            if (flags & F_COMMAND) {
                if (flags & F_MORE) {
                    reject(c, "command frame with MORE");
                    return;
                }
                if (size > c->stage_size - 9) {
                    reject(c, "command frame larger than the staging buffer");
                    return;
                }
                c->body_size = size;
                c->ps = ST_COMMAND;
            } else {
                if (!c->ready) {
                    reject(c, "message frame before READY");
                    return;
                }
                if (size > INT64_MAX) {
                    reject(c, "frame size out of range");
                    return;
                }
                c->more = flags & F_MORE;
                begin_frame(c, size);
                if (dead(c))
                    return;
                if (size == 0)
                    frame_done(c);
            }
        } else if (c->ps == ST_COMMAND) {
            if (avail < c->body_size)
                break;
            c->rd += c->body_size;
            c->ps = ST_HEADER;
            if (handle_command(c, p, c->body_size) < 0)
                return;
        } else { /* ST_BODY */
            size_t n = avail < c->body_left ? avail : (size_t)c->body_left;

            if (c->body_dst)
                memcpy(c->body_dst + (c->body_size - c->body_left), p, n);
            c->body_left -= n;
            c->rd += n;
            if (c->body_left == 0)
                frame_done(c);
        }
    }
    if (c->rd == c->wr)
        c->rd = c->wr = 0; /* else alloc_cb compacts before the next read */
}

/* ---- reading ------------------------------------------------------------ */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    kvcd_zconn_t *c = h->data;

    /* A frame body bigger than a quarter of the stage goes straight into the
     * user's buffer once nothing of it is waiting in the stage. */
    if (c->ps == ST_BODY && c->body_dst && c->rd == c->wr && c->body_left >= c->stage_size / 4) {
        size_t n = c->body_left > (1u << 30) ? (1u << 30) : (size_t)c->body_left;

        *buf = uv_buf_init((char *)c->body_dst + (c->body_size - c->body_left), (unsigned)n);
        return;
    }
    if (c->rd == c->wr) {
        c->rd = c->wr = 0;
    } else if (c->rd > 0) {
        memmove(c->stage, c->stage + c->rd, c->wr - c->rd);
        c->wr -= c->rd;
        c->rd = 0;
    }
    *buf = uv_buf_init((char *)c->stage + c->wr, (unsigned)(c->stage_size - c->wr));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    kvcd_zconn_t *c = s->data;

    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread != UV_EOF && nread != UV_ECONNRESET)
            KVCD_LOG(KVCD_LOG_DEBUG, "zmtp", "conn %llu: read: %s", (unsigned long long)c->id,
                     uv_strerror((int)nread));
        if (!c->ready)
            c->srv->st.rejected++; /* gave up during the handshake (libzmq does
                                      that when it dislikes our greeting) */
        conn_close(c);
        return;
    }
    c->last_rx = uv_now(s->loop);
    if ((unsigned char *)buf->base != c->stage + c->wr) {
        /* straight into the frame's buffer */
        c->srv->st.bytes_direct += (uint64_t)nread;
        c->body_left -= (size_t)nread;
        if (c->body_left == 0)
            frame_done(c);
    } else {
        c->wr += (size_t)nread;
    }
    parse(c);
}

static void kick_cb(uv_idle_t *idle)
{
    kvcd_zsrv_t *srv = idle->data;
    kvcd_zconn_t *list = srv->kick_head;

    srv->kick_head = NULL;
    uv_idle_stop(idle);
    run_written(srv);
    while (list) {
        kvcd_zconn_t *c = list;

        list = c->kick_next;
        c->kicked = 0;
        if (dead(c) || effective_paused(c)) {
            kvcd_zconn_unref(c);
            continue;
        }
        parse(c);
        update_reading(c);
        kvcd_zconn_unref(c);
    }
}

static void update_reading(kvcd_zconn_t *c)
{
    int want = !c->closing && !c->lingering && !effective_paused(c);

    if (want && !c->reading) {
        if (c->rd < c->wr && c->ready) {
            /* staged bytes first, from the loop, not inside this call */
            if (!c->kicked && c->srv && !c->srv->closing) {
                c->kicked = 1;
                kvcd_zconn_ref(c);
                c->kick_next = c->srv->kick_head;
                c->srv->kick_head = c;
                uv_idle_start(&c->srv->kick, kick_cb);
            }
            if (c->kicked)
                return;
        }
        if (uv_read_start(&c->h.stream, alloc_cb, read_cb) == 0) {
            c->reading = 1;
            c->last_rx = uv_now(c->h.stream.loop); /* a pause is not silence */
        } else
            conn_close(c);
    } else if (!want && c->reading) {
        uv_read_stop(&c->h.stream);
        c->reading = 0;
    }
}

static void pause_timer_cb(uv_timer_t *t);

static void arm_pause_check(kvcd_zsrv_t *srv)
{
    if (!srv->closing && !uv_is_active((uv_handle_t *)&srv->pause_timer))
        uv_timer_start(&srv->pause_timer, pause_timer_cb, PAUSE_CHECK_MS, PAUSE_CHECK_MS);
}

void kvcd_zconn_pause(kvcd_zconn_t *c)
{
    if (c->closed)
        return;
    c->paused = 1;
    update_reading(c);
    if (c->srv && effective_paused(c))
        arm_pause_check(c->srv);
}

void kvcd_zconn_resume(kvcd_zconn_t *c)
{
    if (c->closed)
        return;
    c->paused = 0;
    update_reading(c);
}

/* A paused connection is not read, so EOF would go unseen: ask poll(2). */
static void pause_timer_cb(uv_timer_t *t)
{
    kvcd_zsrv_t *srv = t->data;
    int any = 0;

    for (kvcd_zconn_t *c = srv->conns, *next; c; c = next) {
        struct pollfd pfd = {.events = POLLRDHUP};
        uv_os_fd_t fd;

        next = c->next;
        if (dead(c) || !effective_paused(c))
            continue;
        any = 1;
        if (uv_fileno((uv_handle_t *)&c->h.stream, &fd) < 0)
            continue;
        pfd.fd = fd;
        if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)))
            conn_close(c);
    }
    if (!any && !srv->paused_all)
        uv_timer_stop(t);
}

void kvcd_zsrv_pause_all(kvcd_zsrv_t *srv)
{
    srv->paused_all = 1;
    for (kvcd_zconn_t *c = srv->conns; c; c = c->next)
        update_reading(c);
    arm_pause_check(srv);
}

void kvcd_zsrv_resume_all(kvcd_zsrv_t *srv)
{
    srv->paused_all = 0;
    for (kvcd_zconn_t *c = srv->conns; c; c = c->next)
        update_reading(c);
}

/* ---- connection lifecycle ---------------------------------------------- */

static void conn_free(kvcd_zconn_t *c)
{
    free(c->frames);
    free(c->lens);
    free(c->owners);
    free(c);
}

static void conn_handle_closed(uv_handle_t *h)
{
    kvcd_zconn_t *c = h->data;
    kvcd_zsrv_t *srv = c->srv;

    if (--c->handles > 0)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->st.conns--;
    c->closed = 1;
    if (c->ready && srv->cb.on_close)
        srv->cb.on_close(c);
    c->srv = NULL;
    kvcd_zconn_unref(c);
    srv_maybe_done(srv);
}

/* Close now: pending writes complete with UV_ECANCELED before the close
 * callbacks, which run on a later loop iteration. */
static void conn_close(kvcd_zconn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->lingering = 0;
    if (c->reading) {
        uv_read_stop(&c->h.stream);
        c->reading = 0;
    }
    free_frames(c, 0);
    reset_message(c);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->h.stream, conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
}

static void linger_cb(uv_timer_t *t)
{
    conn_close(t->data);
}

static void ttl_timer_cb(uv_timer_t *t)
{
    kvcd_zconn_t *c = t->data;
    uint64_t now = uv_now(t->loop), idle = now - c->last_rx;

    if (c->lingering || c->closing)
        return;
    if (effective_paused(c) || idle < c->ttl_ms) {
        /* a paused connection's traffic waits in the kernel: not its fault */
        uv_timer_start(t, ttl_timer_cb, effective_paused(c) ? c->ttl_ms : c->ttl_ms - idle, 0);
        return;
    }
    c->srv->st.heartbeat_timeouts++;
    KVCD_LOG(KVCD_LOG_INFO, "zmtp", "conn %llu (%s): heartbeat TTL expired, closing",
             (unsigned long long)c->id, c->cred.addr);
    conn_close(c);
}

static void handshake_timeout_cb(uv_timer_t *t)
{
    reject(t->data, "handshake timed out");
}

/* Stop reading and close once the writes are out, or after linger_ms. */
static void conn_linger(kvcd_zconn_t *c, unsigned linger_ms)
{
    if (c->closing)
        return;
    if (c->lingering) {
        /* already lingering (kvcd_zconn_close): a shorter deadline wins */
        if (linger_ms == 0)
            conn_close(c);
        else if (linger_ms < uv_timer_get_due_in(&c->timer))
            uv_timer_start(&c->timer, linger_cb, linger_ms, 0);
        return;
    }
    if (!c->ready || c->nwrites == 0 || linger_ms == 0) {
        conn_close(c);
        return;
    }
    c->lingering = 1;
    free_frames(c, 0);
    reset_message(c);
    update_reading(c);
    uv_timer_stop(&c->timer);
    uv_timer_start(&c->timer, linger_cb, linger_ms, 0);
}

void kvcd_zconn_close(kvcd_zconn_t *c)
{
    if (!c->closed)
        conn_linger(c, CLOSE_LINGER_MS);
}

static void dropped_closed(uv_handle_t *h)
{
    kvcd_zsrv_t *srv = h->data;

    free(h);
    srv->handles--;
    srv_maybe_done(srv);
}

/* No memory for a connection: accept it into a bare handle and hang up, since
 * libuv stops watching a listener whose pending connection is not accepted. */
static void drop_pending(listener_t *l)
{
    kvcd_zsrv_t *srv = l->srv;
    uv_handle_t *h = malloc(l->is_ipc ? sizeof(uv_pipe_t) : sizeof(uv_tcp_t));
    int rc;

    srv->st.refused++;
    KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "zmtp", 1000, "%s: no memory for a connection",
                         l->endpoint);
    if (!h)
        return;
    rc = l->is_ipc ? uv_pipe_init(srv->loop, (uv_pipe_t *)h, 0)
                   : uv_tcp_init(srv->loop, (uv_tcp_t *)h);
    if (rc < 0) {
        free(h);
        return;
    }
    h->data = srv;
    srv->handles++;
    uv_accept(&l->h.stream, (uv_stream_t *)h);
    uv_close(h, dropped_closed);
}

static void on_accept(uv_stream_t *ls, int status)
{
    listener_t *l = ls->data;
    kvcd_zsrv_t *srv = l->srv;
    kvcd_zconn_t *c;
    int rc;

    static const unsigned char greeting[GREETING_LEN] = {
        0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 1, 'N', 'U', 'L', 'L',
    };

    if (status < 0) {
        KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "zmtp", 1000, "accept on %s: %s", l->endpoint,
                             uv_strerror(status));
        return;
    }
    c = kvcd_zmtp_calloc(1, sizeof(*c) + srv->o.stage_size);
    if (!c) {
        drop_pending(l);
        return;
    }
    c->stage_size = srv->o.stage_size;
    c->srv = srv;
    c->refs = 1;
    c->is_ipc = l->is_ipc;
    c->socket_type = "";
    rc = l->is_ipc ? uv_pipe_init(srv->loop, &c->h.pipe, 0) : uv_tcp_init(srv->loop, &c->h.tcp);
    if (rc < 0) {
        free(c);
        drop_pending(l);
        return;
    }
    uv_timer_init(srv->loop, &c->timer);
    c->h.stream.data = c;
    c->timer.data = c;
    c->handles = 2;
    c->id = ++srv->next_id;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->st.conns++;
    srv->st.accepted++;
    c->last_rx = uv_now(srv->loop);
    rc = uv_accept(ls, &c->h.stream);
    if (rc < 0) {
        srv->st.rejected++;
        conn_close(c);
        return;
    }
    if (srv->o.max_conns && srv->st.conns > srv->o.max_conns) {
        srv->st.refused++;
        KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "zmtp", 1000,
                             "%s: %u connections open, refusing another", l->endpoint,
                             srv->o.max_conns);
        conn_close(c);
        return;
    }
    if (l->is_ipc) {
        uv_os_fd_t fd;
        struct ucred uc;
        socklen_t ul = sizeof(uc);

        snprintf(c->cred.addr, sizeof(c->cred.addr), "%s", l->path);
        if (uv_fileno((uv_handle_t *)&c->h.stream, &fd) == 0 &&
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) == 0) {
            c->cred.verified = 1;
            c->cred.uid = uc.uid;
            c->cred.gid = uc.gid;
            c->cred.pid = uc.pid;
        }
    } else {
        struct sockaddr_storage ss;
        int sl = sizeof(ss);
        char ip[INET6_ADDRSTRLEN] = "?";

        uv_tcp_nodelay(&c->h.tcp, 1);
        if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &sl) == 0) {
            if (ss.ss_family == AF_INET6) {
                struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

                uv_ip6_name(a, ip, sizeof(ip));
                snprintf(c->cred.addr, sizeof(c->cred.addr), "[%s]:%u", ip,
                         (unsigned)ntohs(a->sin6_port));
            } else {
                struct sockaddr_in *a = (struct sockaddr_in *)&ss;

                uv_ip4_name(a, ip, sizeof(ip));
                snprintf(c->cred.addr, sizeof(c->cred.addr), "%s:%u", ip,
                         (unsigned)ntohs(a->sin_port));
            }
        }
    }
    if (send_internal(c, greeting, sizeof(greeting), 1, 1) < 0) {
        srv->st.rejected++;
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, handshake_timeout_cb, srv->o.handshake_ms, 0);
    update_reading(c);
}

/* ---- server ------------------------------------------------------------- */

int kvcd_zsrv_create(uv_loop_t *loop, const kvcd_zsrv_opts_t *opts, const kvcd_zsrv_cbs_t *cbs,
                     kvcd_zsrv_t **out)
{
    kvcd_zsrv_t *srv;

    *out = NULL;
    if (!cbs || !cbs->frame_alloc || !cbs->frame_free || !cbs->on_message)
        return -EINVAL;
    srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    srv->loop = loop;
    srv->cb = *cbs;
    if (opts)
        srv->o = *opts;
    if (!srv->o.max_frame)
        srv->o.max_frame = DEF_MAX_FRAME;
    if (!srv->o.max_frames)
        srv->o.max_frames = DEF_MAX_FRAMES;
    if (!srv->o.max_message)
        srv->o.max_message = DEF_MAX_MESSAGE;
    if (!srv->o.stage_size)
        srv->o.stage_size = DEF_STAGE;
    if (srv->o.stage_size < MIN_STAGE)
        srv->o.stage_size = MIN_STAGE;
    if (srv->o.stage_size > (1u << 30))
        srv->o.stage_size = 1u << 30;
    if (!srv->o.handshake_ms)
        srv->o.handshake_ms = DEF_HANDSHAKE_MS;
    if (srv->o.backlog <= 0)
        srv->o.backlog = DEF_BACKLOG;
    uv_timer_init(loop, &srv->pause_timer);
    srv->pause_timer.data = srv;
    uv_idle_init(loop, &srv->kick);
    srv->kick.data = srv;
    srv->handles = 2;
    *out = srv;
    return 0;
}

void *kvcd_zsrv_data(const kvcd_zsrv_t *srv)
{
    return srv->cb.data;
}

void kvcd_zsrv_stats(const kvcd_zsrv_t *srv, kvcd_zstats_t *out)
{
    *out = srv->st;
}

/* "tcp://host:port" -> sockaddr. 0 or KVCD_ECONFIG with err set. */
static int parse_tcp(const char *ep, const char *rest, struct sockaddr_storage *ss, int *any,
                     char *err, size_t errlen)
{
    char host[128];
    const char *colon, *hs = rest, *he;
    char *end;
    long port;

    *any = 0;
    if (rest[0] == '[') {
        he = strchr(rest, ']');
        if (!he || he[1] != ':') {
            seterr(err, errlen, "endpoint %s: expected tcp://[ipv6]:port", ep);
            return KVCD_ECONFIG;
        }
        hs = rest + 1;
        colon = he + 1;
    } else {
        colon = strrchr(rest, ':');
        if (!colon) {
            seterr(err, errlen, "endpoint %s: expected tcp://host:port", ep);
            return KVCD_ECONFIG;
        }
        he = colon;
    }
    if ((size_t)(he - hs) >= sizeof(host) || he == hs) {
        seterr(err, errlen, "endpoint %s: bad host", ep);
        return KVCD_ECONFIG;
    }
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = 0;
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (colon[1] == 0 || *end || port < 0 || port > 65535 || errno) {
        seterr(err, errlen, "endpoint %s: bad port \"%s\"", ep, colon + 1);
        return KVCD_ECONFIG;
    }
    if (strcmp(host, "*") == 0) {
        *any = 1;
        return uv_ip6_addr("::", (int)port, (struct sockaddr_in6 *)ss) == 0 ? 0 : KVCD_ECONFIG;
    }
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    if (rest[0] == '[') {
        if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
            return 0;
    } else if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) {
        return 0;
    }
    seterr(err, errlen,
           "endpoint %s: host \"%s\" is not an IPv4 literal, [IPv6 literal], localhost or *", ep,
           host);
    return KVCD_ECONFIG;
}

static void listener_closed(uv_handle_t *h)
{
    listener_t *l = h->data;
    kvcd_zsrv_t *srv = l->srv;

    free(l);
    srv->handles--;
    srv_maybe_done(srv);
}

/* A socket file nobody accepts on is stale; one that accepts is another
 * server's, and taking it over would cut that server off. */
static int socket_is_live(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), live;

    if (fd < 0)
        return 0;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    live = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 || errno == EAGAIN;
    close(fd);
    return live;
}

static int bind_ipc(listener_t *l, const char *endpoint, char *err, size_t errlen)
{
    const char *path = endpoint + 6;
    struct stat sb;
    int rc;

    if (!*path || path[0] == '@') {
        seterr(err, errlen, "endpoint %s: ipc needs a file path (no abstract names)", endpoint);
        return KVCD_ECONFIG;
    }
    if (strlen(path) >= sizeof(l->path)) {
        seterr(err, errlen, "endpoint %s: ipc path longer than 107 bytes", endpoint);
        return -ENAMETOOLONG;
    }
    snprintf(l->path, sizeof(l->path), "%s", path);
    if (lstat(path, &sb) == 0) {
        if (!S_ISSOCK(sb.st_mode)) {
            seterr(err, errlen, "endpoint %s: %s exists and is not a socket", endpoint, path);
            return -EEXIST;
        }
        if (socket_is_live(path)) {
            seterr(err, errlen, "endpoint %s: %s", endpoint, "another server listens there");
            return -EADDRINUSE;
        }
        unlink(path); /* stale, like libzmq */
    }
    rc = uv_pipe_init(l->srv->loop, &l->h.pipe, 0);
    if (rc < 0)
        return rc;
    l->is_ipc = 1;
    l->h.stream.data = l;
    l->srv->handles++;
    rc = uv_pipe_bind(&l->h.pipe, path);
    if (rc == 0)
        l->bound = 1;
    snprintf(l->endpoint, sizeof(l->endpoint), "ipc://%s", path);
    return rc;
}

static int bind_tcp(listener_t *l, const char *endpoint, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    int any, sl = sizeof(ss), rc;
    char ip[INET6_ADDRSTRLEN];

    memset(&ss, 0, sizeof(ss));
    rc = parse_tcp(endpoint, endpoint + 6, &ss, &any, err, errlen);
    if (rc < 0)
        return rc;
    /* "*": one IPv6 socket that also takes IPv4 (IPV6_V6ONLY off whatever the
     * system default), or IPv4 only where there is no IPv6 */
    rc = any ? uv_tcp_init_ex(l->srv->loop, &l->h.tcp, AF_INET6) : UV_EAFNOSUPPORT;
    if (rc == 0) {
        uv_os_fd_t fd;
        int off = 0;

        if (uv_fileno((uv_handle_t *)&l->h.tcp, &fd) == 0)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
    } else if (any) {
        int port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);

        memset(&ss, 0, sizeof(ss));
        uv_ip4_addr("0.0.0.0", port, (struct sockaddr_in *)&ss);
        rc = uv_tcp_init(l->srv->loop, &l->h.tcp);
    } else {
        rc = uv_tcp_init(l->srv->loop, &l->h.tcp);
    }
    if (rc < 0)
        return rc;
    l->h.stream.data = l;
    l->srv->handles++;
    rc = uv_tcp_bind(&l->h.tcp, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_tcp_getsockname(&l->h.tcp, (struct sockaddr *)&ss, &sl);
    if (rc < 0)
        return rc;
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

        l->port = ntohs(a->sin6_port);
        uv_ip6_name(a, ip, sizeof(ip));
        if (any) /* connectable by a client without ZMQ_IPV6, unlike "::" */
            snprintf(l->endpoint, sizeof(l->endpoint), "tcp://127.0.0.1:%d", l->port);
        else
            snprintf(l->endpoint, sizeof(l->endpoint), "tcp://[%s]:%d", ip, l->port);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;

        l->port = ntohs(a->sin_port);
        uv_ip4_name(a, ip, sizeof(ip));
        if (any)
            snprintf(ip, sizeof(ip), "127.0.0.1");
        snprintf(l->endpoint, sizeof(l->endpoint), "tcp://%s:%d", ip, l->port);
    }
    return 0;
}

int kvcd_zsrv_bind(kvcd_zsrv_t *srv, const char *endpoint, char *err, size_t errlen)
{
    listener_t *l;
    int rc;

    if (err && errlen)
        err[0] = 0;
    if (srv->closing)
        return -EPIPE;
    if (srv->nlst == MAX_LISTENERS) {
        seterr(err, errlen, "endpoint %s: at most 4 endpoints per server", endpoint);
        return -ENOSPC;
    }
    l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->srv = srv;
    if (strncmp(endpoint, "ipc://", 6) == 0) {
        rc = bind_ipc(l, endpoint, err, errlen);
    } else if (strncmp(endpoint, "tcp://", 6) == 0) {
        rc = bind_tcp(l, endpoint, err, errlen);
    } else {
        seterr(err, errlen, "endpoint %s: unknown transport (kvcd listens on ipc:// or tcp://)",
               endpoint);
        rc = KVCD_ECONFIG;
    }
    if (rc == 0)
        rc = uv_listen(&l->h.stream, srv->o.backlog, on_accept);
    if (rc < 0) {
        if (err && errlen && !err[0])
            seterr(err, errlen, "endpoint %s: %s", endpoint, uv_strerror(rc));
        if (l->bound)
            unlink(l->path);
        if (l->h.stream.data)
            uv_close((uv_handle_t *)&l->h.stream, listener_closed);
        else
            free(l);
        return rc;
    }
    srv->lst[srv->nlst++] = l;
    return 0;
}

const char *kvcd_zsrv_endpoint(const kvcd_zsrv_t *srv, size_t i)
{
    return i < srv->nlst ? srv->lst[i]->endpoint : NULL;
}

int kvcd_zsrv_port(const kvcd_zsrv_t *srv, size_t i)
{
    return i < srv->nlst ? srv->lst[i]->port : 0;
}

static void srv_handle_closed(uv_handle_t *h)
{
    kvcd_zsrv_t *srv = h->data;

    srv->handles--;
    srv_maybe_done(srv);
}

static void srv_maybe_done(kvcd_zsrv_t *srv)
{
    void (*cb)(kvcd_zsrv_t *, void *);

    if (!srv->closing || srv->handles || srv->conns)
        return;
    cb = srv->close_cb;
    if (cb)
        cb(srv, srv->close_data);
    free(srv);
}

void kvcd_zsrv_close(kvcd_zsrv_t *srv, unsigned linger_ms, void (*cb)(kvcd_zsrv_t *, void *),
                     void *data)
{
    if (srv->closing)
        return;
    srv->closing = 1;
    srv->close_cb = cb;
    srv->close_data = data;
    srv->linger_ms = linger_ms;
    for (size_t i = 0; i < srv->nlst; i++) {
        listener_t *l = srv->lst[i];

        if (l->bound)
            unlink(l->path);
        uv_close((uv_handle_t *)&l->h.stream, listener_closed);
    }
    srv->nlst = 0;
    run_written(srv); /* before the lingers count writes in flight */
    while (srv->kick_head) {
        kvcd_zconn_t *c = srv->kick_head;

        srv->kick_head = c->kick_next;
        c->kicked = 0;
        kvcd_zconn_unref(c);
    }
    for (kvcd_zconn_t *c = srv->conns, *next; c; c = next) {
        next = c->next;
        conn_linger(c, linger_ms);
    }
    uv_close((uv_handle_t *)&srv->pause_timer, srv_handle_closed);
    uv_close((uv_handle_t *)&srv->kick, srv_handle_closed);
}

/* ---- connection accessors ---------------------------------------------- */

uint64_t kvcd_zconn_id(const kvcd_zconn_t *c)
{
    return c->id;
}

kvcd_zsrv_t *kvcd_zconn_server(const kvcd_zconn_t *c)
{
    return c->srv;
}

void kvcd_zconn_ref(kvcd_zconn_t *c)
{
    c->refs++;
}

void kvcd_zconn_unref(kvcd_zconn_t *c)
{
    if (--c->refs == 0)
        conn_free(c);
}

int kvcd_zconn_is_open(const kvcd_zconn_t *c)
{
    return c->ready && !c->closing && !c->lingering && !c->closed;
}

void kvcd_zconn_set_data(kvcd_zconn_t *c, void *data)
{
    c->data = data;
}

void *kvcd_zconn_data(const kvcd_zconn_t *c)
{
    return c->data;
}

int kvcd_zconn_peer(const kvcd_zconn_t *c, kvcd_zcred_t *out)
{
    if (c->closed)
        return -EPIPE;
    *out = c->cred;
    return 0;
}

const void *kvcd_zconn_identity(const kvcd_zconn_t *c, size_t *len)
{
    *len = c->identity_len;
    return c->identity_len ? c->identity : NULL;
}

size_t kvcd_zconn_pending(const kvcd_zconn_t *c, void *const **frames, const size_t **lens,
                          void *const **owners)
{
    *frames = c->frames;
    *lens = c->lens;
    *owners = c->owners;
    return c->discarding ? 0 : c->nframes;
}

const char *kvcd_zconn_socket_type(const kvcd_zconn_t *c)
{
    return c->socket_type;
}
