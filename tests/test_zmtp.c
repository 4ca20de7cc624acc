/*
 * test_zmtp.c - the ZMTP 3.1 server transport (daemon/zmtp.c) against real
 * libzmq DEALER/REQ sockets, pyzmq, and hand-written raw ZMTP peers.
 *
 * The server runs on a libuv loop in a thread of the test; the test thread
 * drives it only through run_on_loop() (a job handed over with uv_async and
 * waited for), so all transport calls stay on the loop thread. The echo
 * server's allocator counts the bytes it handed out: every test ends with
 * that count at zero (no buffer leaked or freed twice) and with
 * uv_loop_close() == 0 (no handle left behind).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>
#include <zmq.h>

#include "daemon/zmtp.h"
#include "protocol/kvcd_err.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* ---- the server under test, on its own loop thread ------------------------ */

typedef struct harness_s harness_t;
typedef void (*job_fn)(harness_t *h, void *arg);

struct harness_s {
    uv_loop_t loop;
    uv_async_t async;
    pthread_t th;
    kvcd_zsrv_t *srv;
    char dir[64];
    char endpoint[200];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_fn job;
    void *job_arg;
    int job_done;

    /* loop-thread state the test reads with atomics */
    atomic_long live_bytes, peak_bytes;
    atomic_long messages, discards, connects, closes;
    atomic_long send_cbs, send_errors;
    size_t refuse_above; /* frame_alloc returns NULL for index >= 1 and len > this */
    long close_after;    /* on_message closes the connection after this many */
    int pause_each;      /* on_message pauses the connection after each */
    int stop_inside;     /* a "STOP" message closes the server from on_message */
    atomic_long pending_ok, pending_bad; /* kvcd_zconn_pending seen from frame_alloc */
    kvcd_zdiscard_t last_disc;
    kvcd_zcred_t last_cred;
    kvcd_zconn_t *last_conn; /* referenced */
    int closed;
};

static harness_t H;

/* A plain read of a counter, so failed assertions print readably. */
static long get(atomic_long *v)
{
    return atomic_load(v);
}

static void track(long delta)
{
    long now = atomic_fetch_add(&H.live_bytes, delta) + delta;
    long peak = get(&H.peak_bytes);

    while (now > peak && !atomic_compare_exchange_weak(&H.peak_bytes, &peak, now))
        ;
}

static void *h_alloc(kvcd_zconn_t *c, size_t index, size_t len, void **owner)
{
    void *p;

    if (H.refuse_above && index >= 1 && len > H.refuse_above)
        return NULL;
    if (c) {
        void *const *f, *const *o;
        const size_t *l;
        size_t n = kvcd_zconn_pending(c, &f, &l, &o);

        /* every earlier frame of the message is visible, complete */
        if (n == index && (index == 0 || l[0] == 0 || f[0] != NULL))
            atomic_fetch_add(&H.pending_ok, 1);
        else
            atomic_fetch_add(&H.pending_bad, 1);
    }
    p = malloc(len);
    if (p)
        track((long)len);
    *owner = (void *)(uintptr_t)len;
    return p;
}

static void h_free(kvcd_zconn_t *c, void *buf, size_t len, void *owner)
{
    ck_assert_uint_eq((uintptr_t)owner, len);
    track(-(long)len);
    free(buf);
}

typedef struct {
    size_t n;
    void *frames[];
} sent_t;

static void sent_done(void *data, int status)
{
    sent_t *s = data;

    for (size_t i = 0; i < s->n; i++)
        if (s->frames[i])
            h_free(NULL, s->frames[i], (size_t)0 + (uintptr_t)s->frames[s->n + i],
                   s->frames[s->n + i]);
    free(s);
    atomic_fetch_add(&H.send_cbs, 1);
    if (status < 0)
        atomic_fetch_add(&H.send_errors, 1);
}

/* Send frames the harness owns (allocated by h_alloc, owner = length). */
static void reply(kvcd_zconn_t *c, void **frames, const size_t *lens, size_t n)
{
    sent_t *s = malloc(sizeof(*s) + 2 * n * sizeof(void *));
    uv_buf_t *b = calloc(n, sizeof(*b));
    int rc;

    s->n = n;
    for (size_t i = 0; i < n; i++) {
        s->frames[i] = frames[i];
        s->frames[n + i] = (void *)(uintptr_t)lens[i];
        b[i] = uv_buf_init(frames[i], (unsigned)lens[i]);
    }
    rc = kvcd_zconn_send(c, b, n, sent_done, s);
    free(b);
    if (rc < 0) {
        atomic_fetch_add(&H.send_cbs, 1); /* counted as if failed later */
        atomic_fetch_add(&H.send_errors, 1);
        for (size_t i = 0; i < n; i++)
            if (frames[i])
                h_free(NULL, frames[i], lens[i], (void *)(uintptr_t)lens[i]);
        free(s);
    }
}

static void *dup_frame(const void *p, size_t len)
{
    void *owner, *b = len ? h_alloc(NULL, 0, len, &owner) : NULL;

    if (len)
        memcpy(b, p, len);
    return b;
}

static void closed_cb(kvcd_zsrv_t *srv, void *data);

static void h_message(kvcd_zconn_t *c, void **frames, const size_t *lens, void **owners, size_t n)
{
    long k = atomic_fetch_add(&H.messages, 1) + 1;

    int stop = n == 1 && lens[0] == 4 && memcmp(frames[0], "STOP", 4) == 0;

    reply(c, frames, lens, n); /* echo */
    if (stop && H.stop_inside) {
        kvcd_zsrv_close(H.srv, 500, closed_cb, NULL);
        uv_close((uv_handle_t *)&H.async, NULL);
    }
    if (H.close_after && k == H.close_after)
        kvcd_zconn_close(c);
    if (H.pause_each)
        kvcd_zconn_pause(c);
}

static void h_discard(kvcd_zconn_t *c, const kvcd_zdiscard_t *d, void **frames,
                      const size_t *lens, void **owners, size_t n)
{
    const char *name = kvcd_errname(d->reason);
    void *out[3];
    size_t ol[3];

    H.last_disc = *d;
    atomic_fetch_add(&H.discards, 1);
    out[0] = dup_frame("ERR", 3);
    ol[0] = 3;
    out[1] = dup_frame(name, strlen(name));
    ol[1] = strlen(name);
    if (n == 1) {
        out[2] = frames[0];
        ol[2] = lens[0];
    } else {
        ck_assert_uint_eq(n, 0);
        out[2] = dup_frame("none", 4);
        ol[2] = 4;
    }
    reply(c, out, ol, 3);
}

static void h_connect(kvcd_zconn_t *c)
{
    kvcd_zconn_peer(c, &H.last_cred);
    if (H.last_conn)
        kvcd_zconn_unref(H.last_conn);
    kvcd_zconn_ref(c);
    H.last_conn = c;
    atomic_fetch_add(&H.connects, 1);
}

static void h_close(kvcd_zconn_t *c)
{
    atomic_fetch_add(&H.closes, 1);
}

static void async_cb(uv_async_t *a)
{
    pthread_mutex_lock(&H.mu);
    if (H.job && !H.job_done) {
        H.job(&H, H.job_arg);
        H.job_done = 1;
        pthread_cond_broadcast(&H.cv);
    }
    pthread_mutex_unlock(&H.mu);
}

/* Run fn(arg) on the loop thread and wait for it. */
static void run_on_loop(job_fn fn, void *arg)
{
    pthread_mutex_lock(&H.mu);
    H.job = fn;
    H.job_arg = arg;
    H.job_done = 0;
    uv_async_send(&H.async);
    while (!H.job_done)
        pthread_cond_wait(&H.cv, &H.mu);
    H.job = NULL;
    pthread_mutex_unlock(&H.mu);
}

static void *loop_main(void *arg)
{
    uv_run(&H.loop, UV_RUN_DEFAULT);
    return NULL;
}

static const kvcd_zsrv_cbs_t CBS = {
    .frame_alloc = h_alloc,
    .frame_free = h_free,
    .on_connect = h_connect,
    .on_message = h_message,
    .on_discard = h_discard,
    .on_close = h_close,
};

/* kind: "ipc" or "tcp". */
static void h_start(const char *kind, const kvcd_zsrv_opts_t *opts)
{
    char ep[200], err[256];
    int rc;

    signal(SIGPIPE, SIG_IGN);
    memset(&H, 0, sizeof(H));
    pthread_mutex_init(&H.mu, NULL);
    pthread_cond_init(&H.cv, NULL);
    ck_assert_int_eq(uv_loop_init(&H.loop), 0);
    ck_assert_int_eq(uv_async_init(&H.loop, &H.async, async_cb), 0);
    snprintf(H.dir, sizeof(H.dir), "/tmp/kvcd-zmtp-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(H.dir));
    if (strcmp(kind, "ipc") == 0)
        snprintf(ep, sizeof(ep), "ipc://%s/z.sock", H.dir);
    else
        snprintf(ep, sizeof(ep), "%s", strcmp(kind, "tcp") == 0 ? "tcp://127.0.0.1:0" : kind);
    ck_assert_int_eq(kvcd_zsrv_create(&H.loop, opts, &CBS, &H.srv), 0);
    rc = kvcd_zsrv_bind(H.srv, ep, err, sizeof(err));
    ck_assert_msg(rc == 0, "bind %s: %d %s", ep, rc, err);
    snprintf(H.endpoint, sizeof(H.endpoint), "%s", kvcd_zsrv_endpoint(H.srv, 0));
    ck_assert_int_eq(pthread_create(&H.th, NULL, loop_main, NULL), 0);
}

static void closed_cb(kvcd_zsrv_t *srv, void *data)
{
    H.closed = 1;
}

static unsigned stop_linger = 100;

static void job_stop(harness_t *h, void *arg)
{
    kvcd_zsrv_close(h->srv, stop_linger, closed_cb, NULL);
    uv_close((uv_handle_t *)&h->async, NULL);
}

/* Close the server, join the loop, check nothing is left. */
static void h_stop(void)
{
    run_on_loop(job_stop, NULL);
    pthread_join(H.th, NULL);
    ck_assert_int_eq(H.closed, 1);
    if (H.last_conn) {
        ck_assert_int_eq(kvcd_zconn_is_open(H.last_conn), 0);
        ck_assert_ptr_null(kvcd_zconn_server(H.last_conn));
        kvcd_zconn_unref(H.last_conn);
        H.last_conn = NULL;
    }
    ck_assert_int_eq(uv_loop_close(&H.loop), 0);
    ck_assert_int_eq(get(&H.live_bytes), 0);
    ck_assert_int_eq(get(&H.pending_bad), 0);
    ck_assert_int_eq(get(&H.connects), get(&H.closes));
    if (strncmp(H.endpoint, "ipc://", 6) == 0)
        ck_assert_int_eq(access(H.endpoint + 6, F_OK), -1); /* socket file removed */
    rmdir(H.dir);
}

static void job_stats(harness_t *h, void *arg)
{
    kvcd_zsrv_stats(h->srv, arg);
}

static kvcd_zstats_t stats(void)
{
    kvcd_zstats_t st;

    run_on_loop(job_stats, &st);
    return st;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

/* Wait (up to 10 s) for an atomic counter to reach at least `want`. */
static void wait_count(atomic_long *v, long want)
{
    for (int i = 0; i < 1000 && get(v) < want; i++)
        sleep_ms(10);
    ck_assert_int_ge(get(v), want);
}

/* ---- libzmq clients ------------------------------------------------------- */

static void *zctx;

static void *dealer(int type)
{
    void *s;
    int tmo = 20000, zero = 0, one = 1;

    if (!zctx)
        zctx = zmq_ctx_new();
    s = zmq_socket(zctx, type);
    ck_assert_ptr_nonnull(s);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof(tmo));
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &tmo, sizeof(tmo));
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_IPV6, &one, sizeof(one));
    ck_assert_int_eq(zmq_connect(s, H.endpoint), 0);
    return s;
}

static void zclose(void *s)
{
    zmq_close(s);
}

static void zterm(void)
{
    if (zctx)
        zmq_ctx_term(zctx);
    zctx = NULL;
}

static void zsend(void *s, void *const *frames, const size_t *lens, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(zmq_send(s, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0),
                         (int)lens[i]);
}

/* Receive one message; frames malloc'ed into out (up to max). Returns n. */
static size_t zrecv(void *s, zmq_msg_t *out, size_t max)
{
    size_t n = 0;
    int more;

    do {
        ck_assert_uint_lt(n, max);
        zmq_msg_init(&out[n]);
        ck_assert_msg(zmq_msg_recv(&out[n], s, 0) >= 0, "recv: %s", zmq_strerror(errno));
        more = zmq_msg_more(&out[n]);
        n++;
    } while (more);
    return n;
}

static void zfree(zmq_msg_t *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&m[i]);
}

static void fill(unsigned char *p, size_t len, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 1;

    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char)x;
    }
}

/* Send n frames of the given lengths with known contents; check the echo. */
static void echo_check(void *s, const size_t *lens, size_t n, unsigned seed)
{
    void **f = calloc(n, sizeof(*f));
    zmq_msg_t *m = calloc(n + 1, sizeof(*m));
    size_t got;

    for (size_t i = 0; i < n; i++) {
        f[i] = malloc(lens[i] ? lens[i] : 1);
        fill(f[i], lens[i], seed + (unsigned)i);
    }
    zsend(s, f, lens, n);
    got = zrecv(s, m, n + 1);
    ck_assert_uint_eq(got, n);
    for (size_t i = 0; i < n; i++) {
        ck_assert_uint_eq(zmq_msg_size(&m[i]), lens[i]);
        ck_assert_msg(memcmp(zmq_msg_data(&m[i]), f[i], lens[i]) == 0, "frame %zu differs", i);
        free(f[i]);
    }
    zfree(m, got);
    free(f);
    free(m);
}

static void echo_small(void *s, const char *text)
{
    size_t l = strlen(text);

    echo_check(s, &l, 1, 7);
}

/* ---- raw ZMTP peers ------------------------------------------------------- */

static int raw_connect(void)
{
    int fd;

    if (strncmp(H.endpoint, "ipc://", 6) == 0) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};

        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%.100s", H.endpoint + 6);
        ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    } else {
        struct sockaddr_in sa = {.sin_family = AF_INET};

        fd = socket(AF_INET, SOCK_STREAM, 0);
        sa.sin_port = htons((uint16_t)kvcd_zsrv_port(H.srv, 0));
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    }
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

static void raw_write(int fd, const void *p, size_t len)
{
    const char *b = p;

    while (len) {
        ssize_t n = write(fd, b, len);

        ck_assert_int_gt(n, 0);
        b += n;
        len -= (size_t)n;
    }
}

/* Read exactly len bytes; 0, or -1 at EOF/reset. */
static int raw_read(int fd, void *p, size_t len)
{
    char *b = p;

    while (len) {
        ssize_t n = read(fd, b, len);

        if (n <= 0)
            return -1;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

/* 1 if the server closed the connection (EOF or reset) within 10 s. */
static int raw_closed_by_server(int fd)
{
    char buf[4096];

    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));

        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
        if (n < 0)
            return 0; /* timeout */
    }
}

static void greeting(unsigned char g[64], int major, int minor, const char *mech)
{
    memset(g, 0, 64);
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = (unsigned char)major;
    g[11] = (unsigned char)minor;
    memcpy(g + 12, mech, strlen(mech));
}

static size_t header(unsigned char *p, unsigned flags, uint64_t len)
{
    if (len <= 255) {
        p[0] = (unsigned char)flags;
        p[1] = (unsigned char)len;
        return 2;
    }
    p[0] = (unsigned char)(flags | 2);
    for (int i = 0; i < 8; i++)
        p[1 + i] = (unsigned char)(len >> (56 - 8 * i));
    return 9;
}

/* Read one frame: flags returned, body malloc'ed. -1 at EOF. */
static int raw_frame(int fd, unsigned char **body, uint64_t *len)
{
    unsigned char h[9];

    if (raw_read(fd, h, 2) < 0)
        return -1;
    if (h[0] & 2) {
        if (raw_read(fd, h + 2, 7) < 0)
            return -1;
        *len = 0;
        for (int i = 1; i < 9; i++)
            *len = *len << 8 | h[i];
    } else {
        *len = h[1];
    }
    *body = malloc(*len + 1);
    if (raw_read(fd, *body, *len) < 0) {
        free(*body);
        return -1;
    }
    return h[0];
}

static void raw_command(int fd, const void *body, size_t len)
{
    unsigned char h[9];

    raw_write(fd, h, header(h, 4, len));
    raw_write(fd, body, len);
}

static int raw_peer_v(int minor, const char *type);

/* A raw ZMTP 3.1 peer that completes the handshake as a DEALER. */
static int raw_peer(void)
{
    return raw_peer_v(1, "DEALER");
}

static int raw_peer_v(int minor, const char *type)
{
    unsigned char ready[64], g[64], mine[64], *body;
    size_t rl = strlen(type);
    uint64_t len;
    int fd = raw_connect(), flags;

    memcpy(ready, "\x05READY\x0bsocket-type\x00\x00\x00", 21); /* names: any case */
    ready[21] = (unsigned char)rl;
    memcpy(ready + 22, type, rl);
    greeting(mine, 3, minor, "NULL");
    raw_write(fd, mine, 64);
    ck_assert_int_eq(raw_read(fd, g, 64), 0);
    ck_assert_int_eq(g[0], 0xFF);
    ck_assert_int_eq(g[9], 0x7F);
    ck_assert_int_eq(g[10], 3);
    ck_assert_int_eq(g[11], 1);
    ck_assert_int_eq(memcmp(g + 12, "NULL\0", 5), 0);
    raw_command(fd, ready, 22 + rl);
    flags = raw_frame(fd, &body, &len);
    ck_assert_int_eq(flags, 4);
    ck_assert_uint_ge(len, 6);
    ck_assert_int_eq(memcmp(body, "\x05READY", 6), 0);
    ck_assert_ptr_nonnull(memmem(body, len, "\x0bSocket-Type\x00\x00\x00\x06ROUTER", 22));
    free(body);
    return fd;
}

/* ---- tests ---------------------------------------------------------------- */

static void frames_1_to_200(const char *kind)
{
    static const size_t counts[] = {1, 2, 3, 17, 200};
    void *s;

    h_start(kind, NULL);
    s = dealer(ZMQ_DEALER);
    for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
        size_t n = counts[k], lens[200];

        for (size_t i = 0; i < n; i++)
            lens[i] = (i * 37 + k) % 300; /* includes 0-byte frames and 255/256 */
        echo_check(s, lens, n, (unsigned)k);
    }
    {
        size_t zero[3] = {0, 0, 0};

        echo_check(s, zero, 3, 1); /* only empty frames */
    }
    zclose(s);
    zterm();
    h_stop();
    ck_assert_int_eq(get(&H.messages), 6);
    ck_assert_int_gt(get(&H.pending_ok), 200);
}

START_TEST(echo_frames_ipc)
{
    frames_1_to_200("ipc");
}
END_TEST

START_TEST(echo_frames_tcp)
{
    frames_1_to_200("tcp");
    ck_assert_int_gt(strlen(H.endpoint), strlen("tcp://127.0.0.1:"));
}
END_TEST

static void big_frames(const char *kind, size_t biggest)
{
    static const size_t sizes[] = {1,          255,         256,       65535, 65536,
                                   65536 + 17, MiB + 7,     4 * MiB,   16 * MiB,
                                   32 * MiB,   64 * MiB};
    void *s;

    h_start(kind, NULL);
    s = dealer(ZMQ_DEALER);
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]) && sizes[k] <= biggest; k++) {
        size_t lens[2] = {5, sizes[k]};

        echo_check(s, lens, 2, (unsigned)k + 100);
    }
    /* bulk frames bypass the staging buffer: the kernel copies into them */
    ck_assert_uint_ge(stats().bytes_direct, biggest - biggest / 8);
    zclose(s);
    zterm();
    h_stop();
}

START_TEST(echo_big_frames_ipc)
{
    big_frames("ipc", 64 * MiB);
}
END_TEST

START_TEST(echo_big_frames_tcp)
{
    big_frames("tcp", 16 * MiB);
}
END_TEST

/* 8 DEALERs pipeline 1,000 messages each; every reply reaches its sender. */
START_TEST(pipelined_8_dealers)
{
    enum { D = 8, N = 1000 };
    void *s[D];

    h_start("ipc", NULL);
    for (int d = 0; d < D; d++)
        s[d] = dealer(ZMQ_DEALER);
    for (int i = 0; i < N; i++)
        for (int d = 0; d < D; d++) {
            unsigned v[2] = {(unsigned)d, (unsigned)i};
            char pad[100];

            memset(pad, d, sizeof(pad));
            ck_assert_int_eq(zmq_send(s[d], v, sizeof(v), ZMQ_SNDMORE), sizeof(v));
            ck_assert_int_eq(zmq_send(s[d], pad, (size_t)(i % 100), 0), i % 100);
        }
    for (int d = 0; d < D; d++)
        for (int i = 0; i < N; i++) {
            zmq_msg_t m[3];
            unsigned v[2];

            ck_assert_uint_eq(zrecv(s[d], m, 3), 2);
            ck_assert_uint_eq(zmq_msg_size(&m[0]), sizeof(v));
            memcpy(v, zmq_msg_data(&m[0]), sizeof(v));
            ck_assert_uint_eq(v[0], (unsigned)d);
            ck_assert_uint_eq(v[1], (unsigned)i);
            ck_assert_uint_eq(zmq_msg_size(&m[1]), (size_t)(i % 100));
            zfree(m, 2);
        }
    ck_assert_int_eq(get(&H.connects), D);
    for (int d = 0; d < D; d++)
        zclose(s[d]);
    zterm();
    h_stop();
    ck_assert_int_eq(get(&H.messages), D * N);
}
END_TEST

/* A REQ peer: the empty delimiter frame travels like any frame. */
START_TEST(req_peer)
{
    void *s;
    zmq_msg_t m[2];

    h_start("ipc", NULL);
    s = dealer(ZMQ_REQ);
    ck_assert_int_eq(zmq_send(s, "hello", 5, 0), 5);
    ck_assert_uint_eq(zrecv(s, m, 2), 1);
    ck_assert_uint_eq(zmq_msg_size(&m[0]), 5);
    ck_assert_int_eq(memcmp(zmq_msg_data(&m[0]), "hello", 5), 0);
    zfree(m, 1);
    zclose(s);
    zterm();
    h_stop();
}
END_TEST

typedef struct {
    const char *name;
    unsigned char bytes[96];
    size_t len;
    int after_greeting; /* send a valid greeting first */
} bad_t;

/* Bad peers are closed and counted; a good DEALER next to them is unaffected. */
START_TEST(bad_peers_closed)
{
    bad_t bad[8];
    size_t nb = 0;
    void *s;

    memset(bad, 0, sizeof(bad));
    bad[nb].name = "http";
    bad[nb].len = 18;
    memcpy(bad[nb++].bytes, "GET / HTTP/1.1\r\n\r\n", 18);
    bad[nb].name = "zmtp1.0";
    bad[nb].len = 3;
    memcpy(bad[nb++].bytes, "\x02\x00X", 3);
    bad[nb].name = "zmtp2.0";
    greeting(bad[nb].bytes, 1, 0, "");
    bad[nb].bytes[11] = 5; /* ZMTP 2.0: revision 1, socket type DEALER */
    bad[nb++].len = 14;
    bad[nb].name = "curve";
    greeting(bad[nb].bytes, 3, 0, "CURVE");
    bad[nb++].len = 64;
    bad[nb].name = "bad signature";
    greeting(bad[nb].bytes, 3, 1, "NULL");
    bad[nb].bytes[9] = 0x7E;
    bad[nb++].len = 64;
    bad[nb].name = "ERROR";
    memcpy(bad[nb].bytes, "\x04\x0b\x05" "ERROR\x04nope", 13);
    bad[nb].len = 13;
    bad[nb++].after_greeting = 1;
    bad[nb].name = "PUB socket";
    memcpy(bad[nb].bytes, "\x04\x19\x05READY\x0bSocket-Type\x00\x00\x00\x03PUB", 27);
    bad[nb].len = 27;
    bad[nb++].after_greeting = 1;
    bad[nb].name = "message before READY";
    memcpy(bad[nb].bytes, "\x00\x03" "abc", 5);
    bad[nb].len = 5;
    bad[nb++].after_greeting = 1;

    for (int kind = 0; kind < 2; kind++) {
        h_start(kind ? "tcp" : "ipc", NULL);
        s = dealer(ZMQ_DEALER);
        echo_small(s, "before");
        for (size_t i = 0; i < nb; i++) {
            int fd = raw_connect();

            if (bad[i].after_greeting) {
                unsigned char g[64];

                greeting(g, 3, 1, "NULL");
                raw_write(fd, g, 64);
            }
            raw_write(fd, bad[i].bytes, bad[i].len);
            ck_assert_msg(raw_closed_by_server(fd), "%s peer not closed", bad[i].name);
            close(fd);
            echo_small(s, bad[i].name);
        }
        ck_assert_uint_eq(stats().rejected, nb);
        ck_assert_int_eq(get(&H.connects), 1);
        zclose(s);
        zterm();
        h_stop();
    }
}
END_TEST

/* A real libzmq CURVE client never gets through the handshake. */
START_TEST(curve_client_rejected)
{
    char pub[41], sec[41], spub[41], ssec[41];
    void *s, *good;

    if (!zmq_has("curve"))
        return;
    h_start("ipc", NULL);
    ck_assert_int_eq(zmq_curve_keypair(pub, sec), 0);
    ck_assert_int_eq(zmq_curve_keypair(spub, ssec), 0);
    if (!zctx)
        zctx = zmq_ctx_new();
    s = zmq_socket(zctx, ZMQ_DEALER);
    zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, spub, 40);
    zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub, 40);
    zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, 40);
    ck_assert_int_eq(zmq_connect(s, H.endpoint), 0);
    uint64_t rejected = 0;
    for (int i = 0; i < 500 && (rejected = stats().rejected) == 0; i++)
        sleep_ms(10);
    ck_assert_uint_ge(rejected, 1);
    good = dealer(ZMQ_DEALER);
    echo_small(good, "still fine");
    zclose(s);
    zclose(good);
    zterm();
    h_stop();
    ck_assert_int_eq(get(&H.connects), 1);
}
END_TEST

START_TEST(handshake_timeout)
{
    kvcd_zsrv_opts_t o = {.handshake_ms = 200};
    unsigned char g[64];
    int silent, half;

    h_start("ipc", &o);
    silent = raw_connect();
    half = raw_connect();
    greeting(g, 3, 1, "NULL");
    raw_write(half, g, 40);
    ck_assert(raw_closed_by_server(silent));
    ck_assert(raw_closed_by_server(half));
    close(silent);
    close(half);
    ck_assert_uint_eq(stats().rejected, 2);
    h_stop();
}
END_TEST

static void job_refuse(harness_t *h, void *arg)
{
    h->refuse_above = *(size_t *)arg;
}

/* Limits: a message over a limit is reported with its first frame, its other
 * bytes are never buffered, and the next message on the connection works. */
START_TEST(limits_discard_and_resync)
{
    kvcd_zsrv_opts_t o = {.max_frame = 512 * KiB, .max_frames = 8, .max_message = MiB};
    void *s;
    zmq_msg_t m[4];
    struct {
        size_t n, lens[20];
        kvcd_zlimit_t limit;
        const char *err, *frame0;
    } cases[] = {
        {2, {1, 600 * KiB}, KVCD_ZLIMIT_FRAME, "ETOOLARGE", "A"},
        {4, {1, 400 * KiB, 400 * KiB, 400 * KiB}, KVCD_ZLIMIT_MESSAGE, "ETOOLARGE", "A"},
        {20, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
         KVCD_ZLIMIT_FRAMES, "ETOOLARGE", "A"},
        {2, {600 * KiB, 1}, KVCD_ZLIMIT_FRAME, "ETOOLARGE", NULL},
        {3, {1, 100 * KiB, 300 * KiB}, KVCD_ZLIMIT_ALLOC, "ENOSPACE", "A"},
    };

    h_start("ipc", &o);
    s = dealer(ZMQ_DEALER);
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        size_t refuse = cases[k].limit == KVCD_ZLIMIT_ALLOC ? 200 * KiB : 0;
        void *f[20];

        run_on_loop(job_refuse, &refuse);

        for (size_t i = 0; i < cases[k].n; i++) {
            f[i] = calloc(1, cases[k].lens[i]);
            if (i == 0 && cases[k].lens[0] == 1)
                ((char *)f[0])[0] = 'A';
        }
        atomic_store(&H.peak_bytes, get(&H.live_bytes));
        zsend(s, f, cases[k].lens, cases[k].n);
        ck_assert_uint_eq(zrecv(s, m, 4), 3);
        ck_assert_int_eq(memcmp(zmq_msg_data(&m[0]), "ERR", 3), 0);
        ck_assert_uint_eq(zmq_msg_size(&m[1]), strlen(cases[k].err));
        ck_assert_int_eq(memcmp(zmq_msg_data(&m[1]), cases[k].err, strlen(cases[k].err)), 0);
        if (cases[k].frame0)
            ck_assert_int_eq(memcmp(zmq_msg_data(&m[2]), "A", 1), 0);
        else
            ck_assert_int_eq(memcmp(zmq_msg_data(&m[2]), "none", 4), 0);
        zfree(m, 3);
        ck_assert_int_eq(H.last_disc.limit, cases[k].limit);
        ck_assert_uint_eq(H.last_disc.frames, cases[k].n);
        /* the dropped bytes were never held: at most what fits the limit */
        ck_assert_int_le(get(&H.peak_bytes), (long)(MiB + 64));
        for (size_t i = 0; i < cases[k].n; i++)
            free(f[i]);
        echo_small(s, "next message works");
    }
    ck_assert_int_eq(get(&H.discards), 5);
    ck_assert_uint_eq(stats().discarded, 5);
    ck_assert_int_eq(get(&H.connects), 1);
    zclose(s);
    zterm();
    h_stop();
}
END_TEST

/* The case that libzmq cannot handle: a 3,000-frame, 3 GB STORE. The
 * transport holds at most max_message of it, then streams the rest through
 * the staging buffer and reports it. */
START_TEST(hostile_3000_frames)
{
    kvcd_zsrv_opts_t o = {.max_frames = 4096, .max_message = 64 * MiB};
    unsigned char *chunk = calloc(1, MiB);
    zmq_msg_t m[4];
    void *s;

    h_start("ipc", &o);
    s = dealer(ZMQ_DEALER);
    atomic_store(&H.peak_bytes, 0);
    ck_assert_int_eq(zmq_send(s, "H", 1, ZMQ_SNDMORE), 1);
    for (int i = 0; i < 3000; i++)
        ck_assert_int_eq(zmq_send_const(s, chunk, MiB, i + 1 < 3000 ? ZMQ_SNDMORE : 0), (int)MiB);
    ck_assert_uint_eq(zrecv(s, m, 4), 3);
    ck_assert_int_eq(memcmp(zmq_msg_data(&m[1]), "ETOOLARGE", 9), 0);
    ck_assert_int_eq(memcmp(zmq_msg_data(&m[2]), "H", 1), 0);
    zfree(m, 3);
    ck_assert_int_eq(H.last_disc.limit, KVCD_ZLIMIT_MESSAGE);
    ck_assert_uint_eq(H.last_disc.frames, 3001);
    ck_assert_uint_eq(H.last_disc.bytes, 3000 * (uint64_t)MiB + 1);
    ck_assert_int_le(get(&H.peak_bytes), (long)(64 * MiB + 64));
    echo_small(s, "the connection is in sync");
    zclose(s);
    zterm();
    h_stop();
    free(chunk);
}
END_TEST

/* The peer goes away in the middle of a frame: its buffers come back. */
START_TEST(disconnect_mid_message)
{
    unsigned char h[9], *junk = calloc(1, 100 * KiB);
    int fd;

    h_start("ipc", NULL);
    fd = raw_peer();
    raw_write(fd, h, header(h, 1, 3));
    raw_write(fd, "abc", 3);
    raw_write(fd, h, header(h, 0, MiB));
    raw_write(fd, junk, 100 * KiB);
    wait_count(&H.connects, 1);
    for (int i = 0; i < 500 && get(&H.live_bytes) < (long)(MiB + 3); i++)
        sleep_ms(10);
    ck_assert_int_eq(get(&H.live_bytes), (long)(MiB + 3));
    close(fd);
    wait_count(&H.closes, 1);
    ck_assert_int_eq(get(&H.live_bytes), 0);
    ck_assert_int_eq(get(&H.messages), 0);
    free(junk);
    h_stop();
}
END_TEST

/* A message dribbled one byte per write, with a PING in the middle. */
START_TEST(byte_by_byte)
{
    unsigned char buf[600], *body;
    size_t len = 0;
    uint64_t fl;
    int fd, flags;

    h_start("tcp", NULL);
    fd = raw_peer();
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    len += header(buf + len, 1, 2);
    memcpy(buf + len, "hi", 2);
    len += 2;
    len += header(buf + len, 4, 9);
    memcpy(buf + len, "\x04PING\x00\x00" "ab", 9);
    len += 9;
    len += header(buf + len, 0, 300);
    fill(buf + len, 300, 3);
    len += 300;
    for (size_t i = 0; i < len; i++)
        raw_write(fd, buf + i, 1);
    flags = raw_frame(fd, &body, &fl); /* the PONG comes first */
    ck_assert_int_eq(flags, 4);
    ck_assert_uint_eq(fl, 7);
    ck_assert_int_eq(memcmp(body, "\x04PONGab", 7), 0);
    free(body);
    flags = raw_frame(fd, &body, &fl);
    ck_assert_int_eq(flags, 1);
    ck_assert_uint_eq(fl, 2);
    free(body);
    flags = raw_frame(fd, &body, &fl);
    ck_assert_int_eq(flags, 2); /* 300 bytes: long frame, last */
    ck_assert_uint_eq(fl, 300);
    ck_assert_int_eq(memcmp(body, buf + len - 300, 300), 0);
    free(body);
    close(fd);
    wait_count(&H.closes, 1);
    h_stop();
}
END_TEST

/* A ZMTP 3.0 peer (libzmq 4.1) and a REQ peer speaking raw ZMTP. */
START_TEST(zmtp30_and_req_raw)
{
    unsigned char *body;
    uint64_t len;
    int fd;

    h_start("ipc", NULL);
    for (int k = 0; k < 2; k++) {
        fd = raw_peer_v(k ? 1 : 0, k ? "REQ" : "DEALER");
        raw_write(fd, "\x01\x00\x00\x02hi", 6); /* REQ style: empty delimiter, body */
        ck_assert_int_eq(raw_frame(fd, &body, &len), 1);
        ck_assert_uint_eq(len, 0);
        free(body);
        ck_assert_int_eq(raw_frame(fd, &body, &len), 0);
        ck_assert_uint_eq(len, 2);
        free(body);
        close(fd);
    }
    wait_count(&H.closes, 2);
    ck_assert_uint_eq(stats().handshakes, 2);
    h_stop();
}
END_TEST

/* ZMTP 3.1 heartbeats from libzmq keep an idle connection up. */
START_TEST(heartbeats_keep_alive)
{
    int ivl = 100, tmo = 300;
    void *s;

    h_start("tcp", NULL);
    if (!zctx)
        zctx = zmq_ctx_new();
    s = zmq_socket(zctx, ZMQ_DEALER);
    zmq_setsockopt(s, ZMQ_HEARTBEAT_IVL, &ivl, sizeof(ivl));
    zmq_setsockopt(s, ZMQ_HEARTBEAT_TIMEOUT, &tmo, sizeof(tmo));
    tmo = 10000;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof(tmo));
    ck_assert_int_eq(zmq_connect(s, H.endpoint), 0);
    echo_small(s, "one");
    sleep_ms(2000);
    echo_small(s, "two");
    ck_assert_uint_ge(stats().pings, 5);
    ck_assert_int_eq(get(&H.connects), 1); /* never reconnected */
    ck_assert_int_eq(get(&H.closes), 0);
    zclose(s);
    zterm();
    h_stop();
}
END_TEST

/* A PING's TTL: a peer silent for longer is closed. */
START_TEST(ping_ttl_expires)
{
    unsigned char *body;
    uint64_t fl;
    int fd;

    h_start("ipc", NULL);
    fd = raw_peer();
    raw_command(fd, "\x04PING\x00\x03", 7); /* TTL 300 ms, no context */
    ck_assert_int_eq(raw_frame(fd, &body, &fl), 4);
    ck_assert_uint_eq(fl, 5);
    free(body);
    ck_assert(raw_closed_by_server(fd));
    close(fd);
    ck_assert_uint_eq(stats().heartbeat_timeouts, 1);
    h_stop();
}
END_TEST

static void job_pause_all(harness_t *h, void *arg)
{
    if (arg)
        kvcd_zsrv_pause_all(h->srv);
    else
        kvcd_zsrv_resume_all(h->srv);
}

static void job_pause_conn(harness_t *h, void *arg)
{
    if (arg)
        kvcd_zconn_pause(h->last_conn);
    else
        kvcd_zconn_resume(h->last_conn);
}

static void job_send_hello(harness_t *h, void *arg)
{
    void *f = dup_frame("hello", 5);
    size_t l = 5;

    reply(h->last_conn, &f, &l, 1);
}

/* Paused: the client can still queue, nothing is delivered, the server can
 * still send; after resume everything arrives in order. */
START_TEST(pause_resume)
{
    enum { N = 40 };
    static unsigned char big[256 * 1024];
    void *s, *other;
    zmq_msg_t m[3];
    long before;

    for (int mode = 0; mode < 2; mode++) {
        h_start("ipc", NULL);
        other = dealer(ZMQ_DEALER);
        echo_small(other, "other");
        s = dealer(ZMQ_DEALER);
        echo_small(s, "first"); /* s is now last_conn */
        if (mode == 0)
            run_on_loop(job_pause_conn, (void *)1);
        else
            run_on_loop(job_pause_all, (void *)1);
        before = get(&H.messages);
        for (int i = 0; i < N; i++) {
            unsigned v = (unsigned)i;

            ck_assert_int_eq(zmq_send(s, &v, sizeof(v), ZMQ_SNDMORE | ZMQ_DONTWAIT), sizeof(v));
            ck_assert_int_eq(zmq_send(s, big, sizeof(big), ZMQ_DONTWAIT), (int)sizeof(big));
        }
        sleep_ms(300);
        ck_assert_int_eq(get(&H.messages), before); /* nothing read */
        run_on_loop(job_send_hello, NULL);
        ck_assert_uint_eq(zrecv(s, m, 3), 1); /* a paused connection still sends */
        ck_assert_int_eq(memcmp(zmq_msg_data(&m[0]), "hello", 5), 0);
        zfree(m, 1);
        if (mode == 0)
            echo_small(other, "not paused"); /* only s is paused */
        if (mode == 0)
            run_on_loop(job_pause_conn, NULL);
        else
            run_on_loop(job_pause_all, NULL);
        for (int i = 0; i < N; i++) {
            unsigned v;

            ck_assert_uint_eq(zrecv(s, m, 3), 2);
            memcpy(&v, zmq_msg_data(&m[0]), sizeof(v));
            ck_assert_uint_eq(v, (unsigned)i);
            ck_assert_uint_eq(zmq_msg_size(&m[1]), sizeof(big));
            zfree(m, 2);
        }
        if (mode == 1)
            echo_small(other, "resumed");
        zclose(s);
        zclose(other);
        zterm();
        h_stop();
    }
}
END_TEST

/* A paused connection still notices that its peer went away. */
START_TEST(paused_detects_close)
{
    void *s;

    h_start("ipc", NULL);
    s = dealer(ZMQ_DEALER);
    echo_small(s, "x");
    run_on_loop(job_pause_conn, (void *)1);
    zclose(s);
    zterm();
    wait_count(&H.closes, 1);
    h_stop();
}
END_TEST

/* SO_PEERCRED names the client process; tcp peers are unverified. */
START_TEST(peer_credentials)
{
    pid_t pid;
    int status;
    void *s;

    h_start("ipc", NULL);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        void *ctx = zmq_ctx_new(), *d = zmq_socket(ctx, ZMQ_DEALER);
        int tmo = 10000, ok;
        char buf[16];

        zmq_setsockopt(d, ZMQ_RCVTIMEO, &tmo, sizeof(tmo));
        zmq_connect(d, H.endpoint);
        zmq_send(d, "child", 5, 0);
        ok = zmq_recv(d, buf, sizeof(buf), 0) == 5;
        zmq_close(d);
        zmq_ctx_term(ctx);
        _exit(ok ? 0 : 1);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_int_eq(status, 0);
    wait_count(&H.connects, 1);
    ck_assert_int_eq(H.last_cred.verified, 1);
    ck_assert_int_eq(H.last_cred.pid, pid);
    ck_assert_int_eq(H.last_cred.uid, getuid());
    ck_assert_int_eq(H.last_cred.gid, getgid());
    wait_count(&H.closes, 1);
    h_stop();

    h_start("tcp", NULL);
    s = dealer(ZMQ_DEALER);
    echo_small(s, "x");
    ck_assert_int_eq(H.last_cred.verified, 0);
    ck_assert_int_eq(strncmp(H.last_cred.addr, "127.0.0.1:", 10), 0);
    zclose(s);
    zterm();
    h_stop();
}
END_TEST

static void job_flood(harness_t *h, void *arg)
{
    for (int i = 0; i < 8; i++) {
        void *owner, *f;
        size_t l = 8 * MiB;

        f = h_alloc(NULL, 0, l, &owner);
        memset(f, i, l);
        reply(h->last_conn, &f, &l, 1);
    }
    *(size_t *)arg = kvcd_zconn_unsent(h->last_conn);
}

/* Closing with sends the peer never reads: each callback runs exactly once. */
START_TEST(close_with_pending_sends)
{
    size_t unsent = 0;
    int fd, rc;

    h_start("ipc", NULL);
    fd = raw_peer();
    raw_write(fd, "\x00\x01x", 3);
    wait_count(&H.send_cbs, 1); /* the echo */
    run_on_loop(job_flood, &unsent);
    ck_assert_uint_gt(unsent, 0);
    ck_assert_uint_le(unsent, 64 * MiB);
    kvcd_zconn_ref(H.last_conn); /* keep it past the close */
    kvcd_zconn_t *c = H.last_conn;
    h_stop();
    ck_assert_int_eq(get(&H.send_cbs), 9);
    ck_assert_int_ge(get(&H.send_errors), 1);
    H.last_conn = c;
    /* after close: sends fail synchronously, no callback */
    rc = kvcd_zconn_send(c, &(uv_buf_t){.base = "x", .len = 1}, 1, NULL, NULL);
    ck_assert_int_eq(rc, -EPIPE);
    kvcd_zconn_unref(c);
    H.last_conn = NULL;
    close(fd);
}
END_TEST

START_TEST(endpoints)
{
    kvcd_zsrv_t *srv;
    uv_loop_t loop;
    char err[256], path[128], ep[160];
    static const char *bad[] = {"udp://127.0.0.1:5", "tcp://127.0.0.1", "tcp://127.0.0.1:99999",
                                "tcp://127.0.0.1:x", "tcp://example.invalid:5", "tcp://[::1:5",
                                "ipc://", "inproc://x"};
    int rc, fd;

    ck_assert_int_eq(uv_loop_init(&loop), 0);
    ck_assert_int_eq(kvcd_zsrv_create(&loop, NULL, &CBS, &srv), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rc = kvcd_zsrv_bind(srv, bad[i], err, sizeof(err));
        ck_assert_msg(rc < 0, "%s accepted", bad[i]);
        ck_assert_msg(strstr(err, bad[i]) != NULL, "error \"%s\" does not name %s", err, bad[i]);
    }
    ck_assert_int_eq(kvcd_zsrv_bind(srv, "udp://x", err, sizeof(err)), KVCD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err, "unknown transport"));

    snprintf(H.dir, sizeof(H.dir), "/tmp/kvcd-zmtp-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(H.dir));
    /* a regular file is not taken over */
    snprintf(path, sizeof(path), "%s/file", H.dir);
    close(open(path, O_CREAT | O_WRONLY, 0600));
    snprintf(ep, sizeof(ep), "ipc://%s", path);
    ck_assert_int_eq(kvcd_zsrv_bind(srv, ep, err, sizeof(err)), -EEXIST);
    unlink(path);
    /* a stale socket file is */
    snprintf(path, sizeof(path), "%s/stale.sock", H.dir);
    {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};

        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%.100s", path);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        close(fd);
    }
    snprintf(ep, sizeof(ep), "ipc://%s", path);
    ck_assert_int_eq(kvcd_zsrv_bind(srv, ep, err, sizeof(err)), 0);
    ck_assert_str_eq(kvcd_zsrv_endpoint(srv, 0), ep);
    /* a live one is not */
    ck_assert_int_eq(kvcd_zsrv_bind(srv, ep, err, sizeof(err)), -EADDRINUSE);
    ck_assert_int_eq(kvcd_zsrv_bind(srv, "tcp://*:0", err, sizeof(err)), 0);
    ck_assert_int_gt(kvcd_zsrv_port(srv, 1), 0);
    ck_assert_int_eq(strncmp(kvcd_zsrv_endpoint(srv, 1), "tcp://127.0.0.1:", 16), 0);
    rc = kvcd_zsrv_bind(srv, "tcp://[::1]:0", err, sizeof(err));
    ck_assert_msg(rc == 0 || rc == UV_EADDRNOTAVAIL || rc == UV_EAFNOSUPPORT, "[::1]: %s", err);
    if (rc == 0)
        ck_assert_int_eq(strncmp(kvcd_zsrv_endpoint(srv, 2), "tcp://[::1]:", 12), 0);
    kvcd_zsrv_close(srv, 0, NULL, NULL);
    ck_assert_int_eq(access(path, F_OK), -1);
    ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    rmdir(H.dir);
}
END_TEST

/* pyzmq (Debian's python3-zmq), if installed, as a DEALER with heartbeats. */
START_TEST(pyzmq_dealer)
{
    char cmd[2048];
    int rc;

    if (system("/usr/bin/python3 -c 'import zmq' 2>/dev/null") != 0)
        return;
    h_start("ipc", NULL);
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/python3 -c '\n"
             "import zmq, os\n"
             "c = zmq.Context()\n"
             "s = c.socket(zmq.DEALER)\n"
             "s.setsockopt(zmq.RCVTIMEO, 10000)\n"
             "s.setsockopt(zmq.HEARTBEAT_IVL, 100)\n"
             "s.connect(\"%s\")\n"
             "for n in (1, 3, 50):\n"
             "    msg = [os.urandom(i * 1000) for i in range(n)] + [b\"\", os.urandom(3 << 20)]\n"
             "    s.send_multipart(msg)\n"
             "    assert s.recv_multipart() == msg\n"
             "s.close(0)\n"
             "c.term()\n'",
             H.endpoint);
    rc = system(cmd);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(get(&H.messages), 3);
    wait_count(&H.closes, 1);
    h_stop();
}
END_TEST

static void job_set_close_after(harness_t *h, void *arg)
{
    h->close_after = *(long *)arg;
}

/* kvcd_zconn_close from inside on_message: the reply already queued is
 * flushed, the messages behind it in the same read are not delivered. */
START_TEST(close_inside_on_message)
{
    long three = 3;
    int fd;
    unsigned char burst[10 * 3], *body;
    uint64_t len;

    h_start("ipc", NULL);
    run_on_loop(job_set_close_after, &three);
    fd = raw_peer();
    for (int i = 0; i < 10; i++) {
        burst[3 * i] = 0;
        burst[3 * i + 1] = 1;
        burst[3 * i + 2] = (unsigned char)('0' + i);
    }
    raw_write(fd, burst, sizeof(burst)); /* one write: one read on the server */
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(raw_frame(fd, &body, &len), 0);
        ck_assert_uint_eq(len, 1);
        ck_assert_int_eq(body[0], '0' + i);
        free(body);
    }
    ck_assert(raw_closed_by_server(fd));
    close(fd);
    wait_count(&H.closes, 1);
    ck_assert_int_eq(get(&H.messages), 3);
    h_stop();
}
END_TEST

static void job_pause_each(harness_t *h, void *arg)
{
    h->pause_each = 1;
}

/* Pausing from inside on_message stops at that message; each resume
 * delivers the next one from the staging buffer. */
START_TEST(pause_inside_on_message)
{
    unsigned char burst[5 * 3], *body;
    uint64_t len;
    int fd;

    h_start("ipc", NULL);
    run_on_loop(job_pause_each, NULL);
    fd = raw_peer();
    for (int i = 0; i < 5; i++) {
        burst[3 * i] = 0;
        burst[3 * i + 1] = 1;
        burst[3 * i + 2] = (unsigned char)('a' + i);
    }
    raw_write(fd, burst, sizeof(burst));
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(raw_frame(fd, &body, &len), 0);
        ck_assert_int_eq(body[0], 'a' + i);
        free(body);
        sleep_ms(50);
        ck_assert_int_eq(get(&H.messages), i + 1); /* no more while paused */
        run_on_loop(job_pause_conn, NULL);                 /* resume */
    }
    close(fd);
    wait_count(&H.closes, 1);
    h_stop();
}
END_TEST

START_TEST(max_conns_refused)
{
    kvcd_zsrv_opts_t o = {.max_conns = 2};
    int a, b, c;

    h_start("ipc", &o);
    a = raw_peer();
    b = raw_peer();
    c = raw_connect();
    ck_assert(raw_closed_by_server(c));
    close(c);
    ck_assert_uint_eq(stats().refused, 1);
    raw_write(a, "\x00\x01x", 3);
    raw_write(b, "\x00\x01y", 3);
    wait_count(&H.messages, 2);
    close(a);
    close(b);
    wait_count(&H.closes, 2);
    h_stop();
}
END_TEST

/* Peers that finish the handshake and then send random bytes (some starting
 * with a plausible frame header): the server survives, gives every buffer back
 * and keeps serving a good client. */
START_TEST(fuzz_after_handshake)
{
    kvcd_zsrv_opts_t o = {.max_frame = MiB, .max_message = 4 * MiB};
    unsigned char buf[2048];
    uint32_t x = 12345;
    void *s;

    h_start("ipc", &o);
    s = dealer(ZMQ_DEALER);
    for (int i = 0; i < 300; i++) {
        int fd = raw_peer();
        size_t len;

        x = x * 1103515245u + 12345u;
        len = 1 + (x >> 8) % sizeof(buf);
        fill(buf, len, x);
        if (i % 3 == 0)
            buf[0] &= 0x07; /* a valid flags byte */
        raw_write(fd, buf, len);
        if (i % 2)
            close(fd); /* mid-whatever */
        else {
            shutdown(fd, SHUT_WR);
            raw_closed_by_server(fd); /* or it waits for more: we hang up */
            close(fd);
        }
        if (i % 50 == 0)
            echo_small(s, "still serving");
    }
    echo_small(s, "after fuzz");
    wait_count(&H.closes, 300);
    zclose(s);
    zterm();
    h_stop();
}
END_TEST

static void *no_calloc(size_t n, size_t size)
{
    return NULL;
}

static void job_calloc(harness_t *h, void *arg)
{
    kvcd_zmtp_calloc = arg ? no_calloc : calloc;
}

/* No memory for a new connection: it is hung up, and the listener keeps
 * accepting once memory is back (libuv would stop watching it otherwise). */
START_TEST(accept_without_memory)
{
    void *s;
    int fd;

    h_start("ipc", NULL);
    run_on_loop(job_calloc, (void *)1);
    for (int i = 0; i < 3; i++) {
        fd = raw_connect();
        ck_assert(raw_closed_by_server(fd));
        close(fd);
    }
    ck_assert_uint_eq(stats().refused, 3);
    run_on_loop(job_calloc, NULL);
    s = dealer(ZMQ_DEALER);
    echo_small(s, "memory is back");
    zclose(s);
    zterm();
    h_stop();
}
END_TEST

static void job_stop_inside(harness_t *h, void *arg)
{
    h->stop_inside = 1;
}

/* kvcd_zsrv_close from inside on_message: the reply already queued is
 * flushed, nothing more is delivered, the loop ends with no handle left. */
START_TEST(server_close_inside_on_message)
{
    unsigned char msgs[6 + 5 * 3], *body;
    uint64_t len;
    int fd;

    h_start("ipc", NULL);
    run_on_loop(job_stop_inside, NULL);
    fd = raw_peer();
    memcpy(msgs, "\x00\x04STOP", 6);
    for (int i = 0; i < 5; i++)
        memcpy(msgs + 6 + 3 * i, "\x00\x01z", 3);
    raw_write(fd, msgs, sizeof(msgs));
    ck_assert_int_eq(raw_frame(fd, &body, &len), 0);
    ck_assert_uint_eq(len, 4);
    ck_assert_int_eq(memcmp(body, "STOP", 4), 0);
    free(body);
    ck_assert(raw_closed_by_server(fd));
    close(fd);
    pthread_join(H.th, NULL);
    ck_assert_int_eq(H.closed, 1);
    ck_assert_int_eq(get(&H.messages), 1);
    kvcd_zconn_unref(H.last_conn);
    ck_assert_int_eq(uv_loop_close(&H.loop), 0);
    ck_assert_int_eq(get(&H.live_bytes), 0);
    ck_assert_int_eq(get(&H.closes), 1);
    ck_assert_int_eq(access(H.endpoint + 6, F_OK), -1);
    rmdir(H.dir);
}
END_TEST

/* "*" takes IPv4 clients (dual stack); an IPv6 literal works where the
 * machine has IPv6. */
START_TEST(tcp_wildcard_and_ipv6)
{
    int fd = socket(AF_INET6, SOCK_STREAM, 0), have6;
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    void *s;

    have6 = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0)
        close(fd);
    h_start("tcp://*:0", NULL);
    ck_assert_int_eq(strncmp(H.endpoint, "tcp://127.0.0.1:", 16), 0);
    s = dealer(ZMQ_DEALER);
    echo_small(s, "v4 via *");
    zclose(s);
    zterm();
    h_stop();
    if (!have6)
        return;
    h_start("tcp://[::1]:0", NULL);
    ck_assert_int_eq(strncmp(H.endpoint, "tcp://[::1]:", 12), 0);
    s = dealer(ZMQ_DEALER);
    echo_small(s, "v6");
    ck_assert_int_eq(strncmp(H.last_cred.addr, "[::1]:", 6), 0);
    zclose(s);
    zterm();
    h_stop();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("zmtp");
    TCase *tc = tcase_create("zmtp");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, echo_frames_ipc);
    tcase_add_test(tc, echo_frames_tcp);
    tcase_add_test(tc, echo_big_frames_ipc);
    tcase_add_test(tc, echo_big_frames_tcp);
    tcase_add_test(tc, pipelined_8_dealers);
    tcase_add_test(tc, req_peer);
    tcase_add_test(tc, bad_peers_closed);
    tcase_add_test(tc, curve_client_rejected);
    tcase_add_test(tc, handshake_timeout);
    tcase_add_test(tc, limits_discard_and_resync);
    tcase_add_test(tc, hostile_3000_frames);
    tcase_add_test(tc, disconnect_mid_message);
    tcase_add_test(tc, byte_by_byte);
    tcase_add_test(tc, zmtp30_and_req_raw);
    tcase_add_test(tc, heartbeats_keep_alive);
    tcase_add_test(tc, ping_ttl_expires);
    tcase_add_test(tc, pause_resume);
    tcase_add_test(tc, paused_detects_close);
    tcase_add_test(tc, peer_credentials);
    tcase_add_test(tc, close_with_pending_sends);
    tcase_add_test(tc, endpoints);
    tcase_add_test(tc, pyzmq_dealer);
    tcase_add_test(tc, close_inside_on_message);
    tcase_add_test(tc, pause_inside_on_message);
    tcase_add_test(tc, max_conns_refused);
    tcase_add_test(tc, tcp_wildcard_and_ipv6);
    tcase_add_test(tc, fuzz_after_handshake);
    tcase_add_test(tc, accept_without_memory);
    tcase_add_test(tc, server_close_inside_on_message);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
