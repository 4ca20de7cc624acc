/*
 * test_inplace.c - STORE bulk frames received straight into L1 objects
 * (daemon/bridge.c's placer, kvcd_store_place in daemon/keyops.c), end to end
 * against the real daemon: the bytes that come back are the bytes stored, and
 * every path that abandons a frame received in place (request refused, message
 * dropped at a limit, connection closed mid-frame) leaves nothing visible and
 * gives the L1 memory back.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <zmq.h>

#include "protocol/client.h"
#include "tests/support.h"

#define MiB (1u << 20)

static kvcd_proc_t proc;
static kvcd_client_t *cli;

static long long stat_of(const char *group, const char *name)
{
    return kvcd_test_stat(cli, group, name);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

/* Wait (up to 10 s) until status[group][name] == want. */
static void wait_stat(const char *group, const char *name, long long want)
{
    long long v = -1;
    int i;

    for (i = 0; i < 1000; i++) {
        v = stat_of(group, name);
        if (v == want)
            return;
        sleep_ms(10);
    }
    ck_abort_msg("status %s.%s is %lld, expected %lld", group, name, v, want);
}

static size_t encode(char *out, size_t cap, uint32_t op, const kvcd_key_t *base,
                     const kvcd_bytes_t *h, size_t n)
{
    kvcd_wbuf_t w;
    size_t len;
    char *b;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req(&w, 42, op, base, h, n);
    b = kvcd_wbuf_release(&w, &len);
    ck_assert_uint_le(len, cap);
    memcpy(out, b, len);
    free(b);
    return len;
}

/* The key is absent, and a STORE + LOAD of it now works (no half-written
 * object left behind to make it a duplicate or EBUSY). */
static void assert_absent_then_storable(const kvcd_key_t *base, kvcd_bytes_t h, size_t len,
                                        uint64_t seed)
{
    char *buf = malloc(len), *out = malloc(len);
    const void *bufs[1] = {buf};
    void *outs[1] = {out};
    size_t lens[1] = {len}, caps[1] = {len}, got[1], prefix;
    int res[1];

    ck_assert_int_eq(kvcd_client_lookup(cli, base, &h, 1, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, 0);
    kvcd_fill_random(buf, len, seed);
    ck_assert_int_eq(kvcd_client_store(cli, base, &h, 1, bufs, lens, res), 0);
    ck_assert_int_eq(res[0], 0);
    ck_assert_int_eq(kvcd_client_load(cli, base, &h, 1, outs, caps, got, res), 0);
    ck_assert_int_eq(res[0], 0);
    ck_assert_uint_eq(got[0], len);
    ck_assert(memcmp(buf, out, len) == 0);
    free(buf);
    free(out);
}

/* ---- the bytes received in place are the bytes loaded ---- */

START_TEST(store_in_place_round_trip)
{
    enum { N = 5 };
    const char *args[] = {"--l1-size-gb", "0.25", NULL};
    static uint8_t hb[N][8];
    kvcd_bytes_t h[N];
    /* key 2 repeats key 0 in the same message; key 3 is stored beforehand;
     * key 4 is small (copied, not placed). */
    size_t lens[N] = {3 * MiB + 17, 1 * MiB, 2 * MiB, 1 * MiB, 4096};
    uint64_t ids[N] = {0, 1, 0, 3, 4};
    void *bufs[N], *out[N];
    size_t caps[N], got[N], i;
    int res[N];
    kvcd_key_t base;

    kvcd_test_start(&proc, &cli, args);
    kvcd_keyset(&base, "inplace", 1, 0, 0, "");
    for (i = 0; i < N; i++) {
        h[i] = kvcd_test_hash(hb[i], ids[i]);
        bufs[i] = malloc(lens[i]);
        out[i] = malloc(4 * MiB);
        caps[i] = 4 * MiB;
        kvcd_fill_random(bufs[i], lens[i], 100 + i);
    }
    ck_assert_int_eq(kvcd_client_store(cli, &base, &h[3], 1, (const void *const *)&bufs[3],
                                       &lens[3], res), 0);
    ck_assert_int_eq(res[0], 0);
    ck_assert_int_eq(stat_of("transport", "placed_frames"), 1);

    ck_assert_int_eq(kvcd_client_store(cli, &base, h, N, (const void *const *)bufs, lens, res),
                     0);
    for (i = 0; i < N; i++)
        ck_assert_int_eq(res[i], 0);
    /* Keys 0 and 1 were received in place; 2 (a repeat of 0), 3 (present)
     * and 4 (small) were not. */
    ck_assert_int_eq(stat_of("transport", "placed_frames"), 3);
    ck_assert_int_eq(stat_of("transport", "placed_bytes"), 1 * MiB + 3 * MiB + 17 + 1 * MiB);
    ck_assert_int_eq(stat_of("transport", "unplaced_frames"), 0);
    ck_assert_int_eq(stat_of("counters", "store_dups"), 2);
    ck_assert_int_eq(stat_of("l1", "objects"), 4);

    ck_assert_int_eq(kvcd_client_load(cli, &base, h, N, out, caps, got, res), 0);
    for (i = 0; i < N; i++) {
        size_t want = i == 2 ? lens[0] : lens[i]; /* key 2 is key 0 */
        const void *src = i == 2 ? bufs[0] : bufs[i];

        ck_assert_int_eq(res[i], 0);
        ck_assert_uint_eq(got[i], want);
        ck_assert_msg(memcmp(out[i], src, want) == 0, "key %zu differs", i);
    }
    ck_assert_int_lt(stat_of("admission", "request_bytes"), 4096); /* STATUS itself */
    for (i = 0; i < N; i++) {
        free(bufs[i]);
        free(out[i]);
    }
    kvcd_test_stop(&proc, &cli);
}
END_TEST

/* ---- --store-copy keeps the old path: own buffers, then a copy ---- */

START_TEST(store_copy_flag_copies)
{
    const char *args[] = {"--store-copy", NULL};
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 9);
    kvcd_key_t base;

    kvcd_test_start(&proc, &cli, args);
    kvcd_keyset(&base, "inplace", 1, 0, 0, "");
    assert_absent_then_storable(&base, h, 2 * MiB + 1, 5);
    ck_assert_int_eq(stat_of("transport", "placed_frames"), 0);
    ck_assert_int_eq(stat_of("counters", "stores"), 1);
    kvcd_test_stop(&proc, &cli);
}
END_TEST

/* ---- refused and dropped requests give their objects back ---- */

typedef struct {
    void *ctx, *sock;
} raw_t;

static void raw_open(raw_t *r)
{
    int zero = 0, tmo = 10000;

    r->ctx = zmq_ctx_new();
    r->sock = zmq_socket(r->ctx, ZMQ_DEALER);
    zmq_setsockopt(r->sock, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(r->sock, ZMQ_RCVTIMEO, &tmo, sizeof(tmo));
    ck_assert_int_eq(zmq_connect(r->sock, proc.endpoint), 0);
}

static void raw_close(raw_t *r)
{
    zmq_close(r->sock);
    zmq_ctx_term(r->ctx);
}

/* Send frames, return the reply's err. */
static int raw_call(raw_t *r, const void *const *frames, const size_t *lens, size_t n)
{
    kvcd_reply_hdr_t h;
    zmq_msg_t m;
    size_t i;
    int err, more;

    for (i = 0; i < n; i++)
        ck_assert_int_ge(zmq_send(r->sock, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0), 0);
    zmq_msg_init(&m);
    ck_assert_msg(zmq_msg_recv(&m, r->sock, 0) >= 0, "no reply: %s", zmq_strerror(zmq_errno()));
    more = zmq_msg_more(&m);
    ck_assert_int_eq(kvcd_proto_decode_reply(zmq_msg_data(&m), zmq_msg_size(&m), &h), 0);
    zmq_msg_close(&m);
    while (more) {
        zmq_msg_init(&m);
        zmq_msg_recv(&m, r->sock, 0);
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    err = h.err;
    kvcd_proto_reply_free(&h);
    return err;
}

START_TEST(refused_store_gives_objects_back)
{
    const char *args[] = {"--l1-size-gb", "0.25", "--max-request-mb", "4", "--max-frame-mb", "4",
                          "--max-pending-mb", "64", NULL};
    uint8_t hb[3][8];
    kvcd_bytes_t h[3];
    kvcd_key_t base;
    const void *frames[4];
    size_t lens[4];
    char hdr[512], *big = calloc(1, 4 * MiB);
    raw_t r;
    int i;

    kvcd_test_start(&proc, &cli, args);
    raw_open(&r);
    kvcd_keyset(&base, "inplace", 1, 0, 0, "");
    for (i = 0; i < 3; i++)
        h[i] = kvcd_test_hash(hb[i], 50 + (uint64_t)i);

    /* One key in the header, two bulk frames: the first is received into
     * L1, then the request is refused. */
    lens[0] = encode(hdr, sizeof(hdr), KVCD_OP_STORE, &base, h, 1);
    frames[0] = hdr;
    frames[1] = frames[2] = big;
    lens[1] = lens[2] = 1 * MiB;
    ck_assert_int_eq(raw_call(&r, frames, lens, 3), KVCD_EFRAMES);
    ck_assert_int_eq(stat_of("transport", "placed_frames"), 1);
    ck_assert_int_eq(stat_of("transport", "unplaced_frames"), 1);
    ck_assert_int_eq(stat_of("l1", "objects"), 0);
    ck_assert_int_eq(stat_of("l1", "used"), 0);
    assert_absent_then_storable(&base, h[0], 1 * MiB, 7);

    /* Two keys of 4 MiB: the second frame breaks max_request + a header's
     * worth, the transport drops the message after the first was received
     * into L1. */
    lens[0] = encode(hdr, sizeof(hdr), KVCD_OP_STORE, &base, &h[1], 2);
    lens[1] = lens[2] = 4 * MiB;
    lens[3] = 4 * MiB;
    frames[3] = big;
    ck_assert_int_eq(raw_call(&r, frames, lens, 3), KVCD_ETOOLARGE);
    ck_assert_int_eq(stat_of("transport", "placed_frames"), 3);
    ck_assert_int_eq(stat_of("transport", "unplaced_frames"), 2);
    ck_assert_int_eq(stat_of("admission", "dropped_messages"), 1);
    ck_assert_int_eq(stat_of("l1", "objects"), 1);
    assert_absent_then_storable(&base, h[1], 2 * MiB, 8);
    assert_absent_then_storable(&base, h[2], 2 * MiB, 9);
    ck_assert_int_lt(stat_of("admission", "request_bytes"), 4096);

    raw_close(&r);
    free(big);
    kvcd_test_stop(&proc, &cli);
}
END_TEST

/* ---- a connection closed in the middle of a frame received in place ---- */

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

static void raw_read(int fd, void *p, size_t len)
{
    char *b = p;

    while (len) {
        ssize_t n = read(fd, b, len);

        ck_assert_int_gt(n, 0);
        b += n;
        len -= (size_t)n;
    }
}

/* A ZMTP 3.1 DEALER by hand, so that a message can stop half-way. */
static int zmtp_peer(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    unsigned char g[64], h[9];
    static const unsigned char ready[] = "\x04\x1c\x05READY\x0bSocket-Type\x00\x00\x00\x06"
                                         "DEALER";
    struct timeval tv = {10, 0};
    uint64_t len = 0;
    char *body;
    int fd, i;

    ck_assert(strncmp(proc.endpoint, "ipc://", 6) == 0);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%.100s", proc.endpoint + 6);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    memset(g, 0, sizeof(g));
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 1;
    memcpy(g + 12, "NULL", 4);
    raw_write(fd, g, 64);
    raw_read(fd, g, 64);
    ck_assert_int_eq(g[0], 0xFF);
    raw_write(fd, ready, sizeof(ready) - 1);
    raw_read(fd, h, 2); /* the server's READY */
    ck_assert_int_eq(h[0] & 4, 4);
    if (h[0] & 2) {
        raw_read(fd, h + 2, 7);
        for (i = 1; i < 9; i++)
            len = len << 8 | h[i];
    } else {
        len = h[1];
    }
    body = malloc(len);
    raw_read(fd, body, len);
    free(body);
    return fd;
}

START_TEST(closed_mid_frame_gives_object_back)
{
    const char *args[] = {"--l1-size-gb", "0.25", NULL};
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 77);
    kvcd_key_t base;
    char hdr[512], *half = calloc(1, 1 * MiB);
    unsigned char fh[9];
    uint64_t flen = 2 * MiB;
    size_t len;
    int fd, i;

    kvcd_test_start(&proc, &cli, args);
    kvcd_keyset(&base, "inplace", 1, 0, 0, "");
    fd = zmtp_peer();
    len = encode(hdr, sizeof(hdr), KVCD_OP_STORE, &base, &h, 1);
    ck_assert_uint_le(len, 255);
    fh[0] = 1; /* MORE */
    fh[1] = (unsigned char)len;
    raw_write(fd, fh, 2);
    raw_write(fd, hdr, len);
    fh[0] = 2; /* LONG, last frame */
    for (i = 0; i < 8; i++)
        fh[1 + i] = (unsigned char)(flen >> (56 - 8 * i));
    raw_write(fd, fh, 9);
    raw_write(fd, half, 1 * MiB);
    /* The frame is being received into a reserved object, which a LOAD
     * cannot see yet: it waits for the store to finish or fail. */
    wait_stat("transport", "placed_frames", 1);
    ck_assert_int_eq(stat_of("l1", "objects"), 1);
    {
        void *out[1] = {half};
        size_t caps[1] = {1 * MiB}, got[1];
        int res[1];

        close(fd); /* the LOAD below may come before or after the close */
        ck_assert_int_eq(kvcd_client_load(cli, &base, &h, 1, out, caps, got, res), 0);
        ck_assert_int_eq(res[0], KVCD_ENOTFOUND);
    }
    wait_stat("transport", "unplaced_frames", 1);
    ck_assert_int_eq(stat_of("l1", "objects"), 0);
    ck_assert_int_eq(stat_of("l1", "used"), 0);
    ck_assert_int_lt(stat_of("admission", "request_bytes"), 4096);
    assert_absent_then_storable(&base, h, 2 * MiB, 11);
    free(half);
    kvcd_test_stop(&proc, &cli);
}
END_TEST

/* A LOAD that comes while its key's frame is being received in place waits
 * for the STORE and gets its bytes. */
START_TEST(load_waits_for_frame_in_flight)
{
    const char *args[] = {"--l1-size-gb", "0.25", NULL};
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 78);
    kvcd_key_t base;
    char hdr[512], *data = malloc(2 * MiB);
    unsigned char fh[9];
    uint64_t flen = 2 * MiB, id;
    kvcd_reply_t *r = NULL;
    const void *p;
    size_t len;
    int fd, i;

    kvcd_test_start(&proc, &cli, args);
    kvcd_keyset(&base, "inplace", 1, 0, 0, "");
    kvcd_fill_random(data, 2 * MiB, 21);
    fd = zmtp_peer();
    len = encode(hdr, sizeof(hdr), KVCD_OP_STORE, &base, &h, 1);
    fh[0] = 1;
    fh[1] = (unsigned char)len;
    raw_write(fd, fh, 2);
    raw_write(fd, hdr, len);
    fh[0] = 2;
    for (i = 0; i < 8; i++)
        fh[1 + i] = (unsigned char)(flen >> (56 - 8 * i));
    raw_write(fd, fh, 9);
    raw_write(fd, data, 1 * MiB);
    wait_stat("transport", "placed_frames", 1);
    ck_assert_int_eq(kvcd_client_send(cli, KVCD_OP_LOAD, &base, &h, 1, NULL, NULL, &id), 0);
    raw_write(fd, data + 1 * MiB, 1 * MiB);
    ck_assert_int_eq(kvcd_client_wait(cli, id, 20000, &r), 0);
    ck_assert_int_eq(kvcd_reply_hdr(r)->err, 0);
    ck_assert_int_eq(kvcd_reply_hdr(r)->results[0], 0);
    p = kvcd_reply_frame(r, 0, &len);
    ck_assert_uint_eq(len, 2 * MiB);
    ck_assert(memcmp(p, data, len) == 0);
    kvcd_reply_free(r);
    ck_assert_int_eq(stat_of("transport", "unplaced_frames"), 0);
    ck_assert_int_eq(stat_of("counters", "stores"), 1);
    close(fd);
    free(data);
    kvcd_test_stop(&proc, &cli);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("inplace");
    TCase *tc = tcase_create("daemon");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, store_in_place_round_trip);
    tcase_add_test(tc, store_copy_flag_copies);
    tcase_add_test(tc, refused_store_gives_objects_back);
    tcase_add_test(tc, closed_mid_frame_gives_object_back);
    tcase_add_test(tc, load_waits_for_frame_in_flight);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return kvcd_test_run(suite());
}
