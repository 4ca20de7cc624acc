/*
 * test_e2e.c - end-to-end tests: the real kvcd binary on a private ipc://
 * socket, driven through the C client library, kvcdctl and a raw ZeroMQ socket.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <zmq.h>

#include "protocol/client.h"
#include "tests/support.h"

#define MiB (1u << 20)

static kvcd_proc_t proc;
static kvcd_client_t *cli;

static void start(const char *const *args)
{
    kvcd_test_start(&proc, &cli, args);
}

/* Every test ends with a clean shutdown: exit 0 and no sanitizer report. */
static void stop(void)
{
    kvcd_test_stop(&proc, &cli);
}

static json_t *status(void)
{
    return kvcd_test_status(cli);
}

static json_int_t counter(json_t *st, const char *group, const char *name)
{
    json_t *v = json_object_get(json_object_get(st, group), name);

    ck_assert_msg(json_is_integer(v), "status %s.%s missing", group, name);
    return json_integer_value(v);
}

/* ---- round trip ---- */

START_TEST(roundtrip_64_chunks)
{
    enum { N = 64, BATCH = 8 };
    static uint8_t hb[N][8];
    kvcd_bytes_t hashes[N];
    void *bufs[N], *out[N];
    size_t lens[N], caps[N], got[N], prefix, i, b;
    uint8_t present[N];
    int results[N];
    kvcd_key_t base;

    start(NULL);
    kvcd_keyset(&base, "meta-llama/Llama-3-8B", 2, 1, 0, "");
    for (i = 0; i < N; i++) {
        hashes[i] = kvcd_test_hash(hb[i], 1000 + i);
        bufs[i] = malloc(MiB);
        out[i] = malloc(MiB);
        kvcd_fill_random(bufs[i], MiB, i + 1);
        lens[i] = caps[i] = MiB;
    }
    for (b = 0; b < N; b += BATCH) {
        ck_assert_int_eq(kvcd_client_store(cli, &base, hashes + b, BATCH,
                                           (const void *const *)bufs + b, lens + b,
                                           results + b), 0);
        for (i = b; i < b + BATCH; i++)
            ck_assert_int_eq(results[i], 0);
    }
    ck_assert_int_eq(kvcd_client_lookup(cli, &base, hashes, N, &prefix, present), 0);
    ck_assert_uint_eq(prefix, N);
    for (b = 0; b < N; b += 16) {
        ck_assert_int_eq(kvcd_client_load(cli, &base, hashes + b, 16, out + b, caps + b,
                                          got + b, results + b), 0);
    }
    for (i = 0; i < N; i++) {
        ck_assert_int_eq(results[i], 0);
        ck_assert_uint_eq(got[i], MiB);
        ck_assert_msg(memcmp(bufs[i], out[i], MiB) == 0, "chunk %zu differs", i);
        free(bufs[i]);
        free(out[i]);
    }
    stop();
}
END_TEST

START_TEST(keys_are_distinct_per_field)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 7);
    kvcd_key_t a, b;
    const void *bufs[1];
    size_t len = 4096, prefix, cap = 4096, got;
    char data[4096], out[4096];
    int res;

    start(NULL);
    memset(data, 'x', sizeof(data));
    bufs[0] = data;
    kvcd_keyset(&a, "m", 2, 0, 0, "");
    ck_assert_int_eq(kvcd_client_store(cli, &a, &h, 1, bufs, &len, &res), 0);
    ck_assert_int_eq(res, 0);
    /* Same hash, other rank / group / salt / model: misses. */
    kvcd_keyset(&b, "m", 2, 1, 0, "");
    ck_assert_int_eq(kvcd_client_lookup(cli, &b, &h, 1, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, 0);
    kvcd_keyset(&b, "m", 2, 0, 1, "");
    ck_assert_int_eq(kvcd_client_lookup(cli, &b, &h, 1, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, 0);
    kvcd_keyset(&b, "m", 2, 0, 0, "salt");
    ck_assert_int_eq(kvcd_client_lookup(cli, &b, &h, 1, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, 0);
    kvcd_keyset(&b, "m2", 2, 0, 0, "");
    ck_assert_int_eq(kvcd_client_lookup(cli, &b, &h, 1, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, 0);
    {
        void *outs[1] = {out};

        ck_assert_int_eq(kvcd_client_load(cli, &a, &h, 1, outs, &cap, &got, &res), 0);
        ck_assert_int_eq(res, 0);
        ck_assert_mem_eq(out, data, sizeof(data));
    }
    stop();
}
END_TEST

START_TEST(lookup_prefix_and_remove)
{
    static uint8_t hb[5][8];
    kvcd_bytes_t h[5];
    const void *bufs[5];
    size_t lens[5], prefix, i;
    uint8_t present[5];
    int res[5];
    char data[100];
    kvcd_key_t base;
    kvcd_bytes_t stored[4];

    start(NULL);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    memset(data, 'y', sizeof(data));
    for (i = 0; i < 5; i++) {
        h[i] = kvcd_test_hash(hb[i], i);
        bufs[i] = data;
        lens[i] = sizeof(data);
    }
    /* keys 0, 1, 3, 4 present; 2 missing. */
    stored[0] = h[0];
    stored[1] = h[1];
    stored[2] = h[3];
    stored[3] = h[4];
    ck_assert_int_eq(kvcd_client_store(cli, &base, stored, 4, bufs, lens, res), 0);
    ck_assert_int_eq(kvcd_client_lookup(cli, &base, h, 5, &prefix, present), 0);
    ck_assert_uint_eq(prefix, 2);
    ck_assert(present[0] && present[1] && !present[2] && present[3] && present[4]);

    ck_assert_int_eq(kvcd_client_remove(cli, &base, h, 3, res), 0);
    ck_assert_int_eq(res[0], 0);
    ck_assert_int_eq(res[1], 0);
    ck_assert_int_eq(res[2], KVCD_ENOTFOUND);
    ck_assert_int_eq(kvcd_client_lookup(cli, &base, h, 5, &prefix, present), 0);
    ck_assert_uint_eq(prefix, 0);
    ck_assert(!present[0] && present[3]);
    {
        uint64_t removed;

        ck_assert_int_eq(kvcd_client_clear(cli, &removed), 0);
        ck_assert_uint_eq(removed, 2);
    }
    ck_assert_int_eq(kvcd_client_lookup(cli, &base, h + 3, 2, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, 0);
    stop();
}
END_TEST

START_TEST(load_miss_gives_empty_frame)
{
    uint8_t hb[2][8];
    kvcd_bytes_t h[2] = {kvcd_test_hash(hb[0], 1), kvcd_test_hash(hb[1], 2)};
    const void *bufs[1];
    size_t len = 10;
    kvcd_reply_t *r;
    kvcd_key_t base;
    uint64_t id;
    size_t flen;
    int res;

    start(NULL);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    bufs[0] = "0123456789";
    ck_assert_int_eq(kvcd_client_store(cli, &base, &h[1], 1, bufs, &len, &res), 0);
    ck_assert_int_eq(kvcd_client_send(cli, KVCD_OP_LOAD, &base, h, 2, NULL, NULL, &id), 0);
    ck_assert_int_eq(kvcd_client_wait(cli, id, 0, &r), 0);
    ck_assert_int_eq(kvcd_reply_hdr(r)->err, 0);
    ck_assert_uint_eq(kvcd_reply_nframes(r), 2);
    ck_assert_int_eq(kvcd_reply_hdr(r)->results[0], KVCD_ENOTFOUND);
    ck_assert_int_eq(kvcd_reply_hdr(r)->results[1], 0);
    kvcd_reply_frame(r, 0, &flen);
    ck_assert_uint_eq(flen, 0);
    ck_assert_mem_eq(kvcd_reply_frame(r, 1, &flen), "0123456789", 10);
    ck_assert_uint_eq(flen, 10);
    kvcd_reply_free(r);
    stop();
}
END_TEST

/* ---- L1 bounds ---- */

START_TEST(store_beyond_l1_evicts_lru)
{
    /* 64 MiB of L1; 100 chunks of 1 MiB, one per request. Key 0 is looked up
     * after every store, so it stays most recently used and survives. */
    const char *args[] = {"--l1-size-gb", "0.0625", NULL};
    static uint8_t hb[100][8];
    kvcd_bytes_t h[100];
    size_t len = MiB, prefix, i;
    void *buf = malloc(MiB);
    const void *bufs[1] = {buf};
    uint8_t present[100];
    int res;
    kvcd_key_t base;
    json_t *st;

    start(args);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    for (i = 0; i < 100; i++) {
        h[i] = kvcd_test_hash(hb[i], i);
        kvcd_fill_random(buf, MiB, i);
        ck_assert_int_eq(kvcd_client_store(cli, &base, &h[i], 1, bufs, &len, &res), 0);
        ck_assert_int_eq(res, 0);
        ck_assert_int_eq(kvcd_client_lookup(cli, &base, &h[0], 1, &prefix, NULL), 0);
        ck_assert_uint_eq(prefix, 1);
    }
    ck_assert_int_eq(kvcd_client_lookup(cli, &base, h, 100, &prefix, present), 0);
    ck_assert_uint_eq(prefix, 1);
    ck_assert(present[0]);
    ck_assert(!present[1]);   /* least recently used: evicted */
    ck_assert(present[99]);   /* most recent: kept */
    st = status();
    ck_assert_int_gt(counter(st, "counters", "evictions"), 30);
    ck_assert_int_le(counter(st, "l1", "used"), counter(st, "l1", "capacity"));
    json_decref(st);
    /* What survived is intact. */
    {
        void *out = malloc(MiB);
        void *outs[1] = {out};
        size_t cap = MiB, got;

        ck_assert_int_eq(kvcd_client_load(cli, &base, &h[99], 1, outs, &cap, &got, &res), 0);
        ck_assert_int_eq(res, 0);
        kvcd_fill_random(buf, MiB, 99);
        ck_assert(memcmp(buf, out, MiB) == 0);
        free(out);
    }
    free(buf);
    stop();
}
END_TEST

START_TEST(noop_policy_refuses_when_full)
{
    const char *args[] = {"--l1-size-gb", "0.03125", "--eviction-policy", "noop", NULL};
    static uint8_t hb[40][8];
    kvcd_bytes_t h[40];
    size_t len = MiB, prefix, i, stored = 0;
    void *buf = calloc(1, MiB);
    const void *bufs[1] = {buf};
    int res;
    kvcd_key_t base;

    start(args);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    for (i = 0; i < 40; i++) {
        h[i] = kvcd_test_hash(hb[i], i);
        ck_assert_int_eq(kvcd_client_store(cli, &base, &h[i], 1, bufs, &len, &res), 0);
        if (res == 0)
            stored++;
        else
            ck_assert_int_eq(res, KVCD_ENOSPACE);
    }
    ck_assert_uint_ge(stored, 25);
    ck_assert_uint_lt(stored, 33);
    /* noop never evicts: the first ones are all still there. */
    ck_assert_int_eq(kvcd_client_lookup(cli, &base, h, 40, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, stored);
    free(buf);
    stop();
}
END_TEST

/* ---- concurrency ---- */

typedef struct {
    const char *endpoint;
    int idx;
    int failures;
} worker_t;

static void *pipeline_worker(void *arg)
{
    enum { REQS = 100 };
    worker_t *w = arg;
    kvcd_client_t *c;
    uint64_t ids[REQS];
    static __thread uint8_t hb[REQS][8];
    kvcd_bytes_t h[REQS];
    char data[REQS][512];
    const void *bufs[1];
    size_t lens[1] = {512}, i;
    kvcd_key_t base;
    char model[32];

    if (kvcd_client_connect(w->endpoint, 20000, &c) != 0) {
        w->failures++;
        return NULL;
    }
    snprintf(model, sizeof(model), "model-%d", w->idx);
    kvcd_keyset(&base, model, 1, 0, 0, "");
    /* 50 stores, then 50 loads of the same keys, all sent before any wait. */
    for (i = 0; i < REQS; i++) {
        size_t k = i % (REQS / 2);

        h[i] = kvcd_test_hash(hb[i], k);
        if (i < REQS / 2) {
            memset(data[k], 'a' + (int)((k + (size_t)w->idx) % 26), 512);
            snprintf(data[k], 32, "w%d k%zu", w->idx, k);
            bufs[0] = data[k];
            if (kvcd_client_send(c, KVCD_OP_STORE, &base, &h[i], 1, bufs, lens, &ids[i]))
                w->failures++;
        } else if (kvcd_client_send(c, KVCD_OP_LOAD, &base, &h[i], 1, NULL, NULL, &ids[i])) {
            w->failures++;
        }
    }
    /* Wait in reverse order to exercise out-of-order matching. */
    for (i = REQS; i-- > 0;) {
        kvcd_reply_t *r;
        const kvcd_reply_hdr_t *hd;
        size_t flen;
        const void *p;

        if (kvcd_client_wait(c, ids[i], 0, &r) != 0) {
            w->failures++;
            continue;
        }
        hd = kvcd_reply_hdr(r);
        if (hd->err != 0 || hd->id != ids[i] || hd->nresults != 1 || hd->results[0] != 0)
            w->failures++;
        if (i >= REQS / 2) {
            p = kvcd_reply_frame(r, 0, &flen);
            if (flen != 512 || memcmp(p, data[i % (REQS / 2)], 512) != 0)
                w->failures++;
        }
        kvcd_reply_free(r);
    }
    kvcd_client_close(c);
    return NULL;
}

START_TEST(eight_clients_pipelining)
{
    pthread_t th[8];
    worker_t w[8];
    json_t *st;
    int i;

    start(NULL);
    for (i = 0; i < 8; i++) {
        w[i].endpoint = proc.endpoint;
        w[i].idx = i;
        w[i].failures = 0;
        pthread_create(&th[i], NULL, pipeline_worker, &w[i]);
    }
    for (i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(w[i].failures == 0, "worker %d: %d failures", i, w[i].failures);
    }
    st = status();
    ck_assert_int_eq(counter(st, "counters", "stores"), 8 * 50);
    ck_assert_int_eq(counter(st, "counters", "load_hits"), 8 * 50);
    json_decref(st);
    stop();
}
END_TEST

/* ---- bad input over a raw socket ---- */

typedef struct {
    void *ctx, *sock;
} raw_t;

static void raw_open(raw_t *r)
{
    int zero = 0, tmo = 5000;

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

/* Send frames (lens[i] bytes each) and return the reply header's err. */
static int raw_call(raw_t *r, const void *const *frames, const size_t *lens, size_t n,
                    char *ename, size_t enlen)
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
    if (ename)
        snprintf(ename, enlen, "%s", h.ename);
    kvcd_proto_reply_free(&h);
    return err;
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

static void assert_ping(void)
{
    ck_assert_int_eq(kvcd_client_ping(cli, NULL, NULL, 0), 0);
}

START_TEST(bad_input_gets_error_replies)
{
    const char *args[] = {"--max-frame-mb", "1", "--max-keys", "4", NULL};
    char hdr[512], ename[32];
    const void *frames[3];
    size_t lens[3];
    uint8_t hb[5][8];
    kvcd_bytes_t h[5];
    kvcd_key_t base;
    raw_t r;
    char *big;
    int i;

    start(args);
    raw_open(&r);
    for (i = 0; i < 5; i++)
        h[i] = kvcd_test_hash(hb[i], (uint64_t)i);
    kvcd_keyset(&base, "m", 1, 0, 0, "");

    /* Garbage bytes as the header. */
    frames[0] = "\xc1garbage";
    lens[0] = 8;
    ck_assert_int_eq(raw_call(&r, frames, lens, 1, ename, sizeof(ename)), KVCD_EMALFORMED);
    ck_assert_str_eq(ename, "EMALFORMED");
    assert_ping();

    /* An empty frame. */
    frames[0] = "";
    lens[0] = 0;
    ck_assert_int_eq(raw_call(&r, frames, lens, 1, NULL, 0), KVCD_EMALFORMED);
    assert_ping();

    /* A one-frame STORE: the header promises a key, no bulk frame follows. */
    lens[0] = encode(hdr, sizeof(hdr), KVCD_OP_STORE, &base, h, 1);
    frames[0] = hdr;
    ck_assert_int_eq(raw_call(&r, frames, lens, 1, NULL, 0), KVCD_EFRAMES);
    assert_ping();

    /* Bulk frames on an operation that takes none. */
    lens[0] = encode(hdr, sizeof(hdr), KVCD_OP_LOOKUP, &base, h, 1);
    frames[1] = "x";
    lens[1] = 1;
    ck_assert_int_eq(raw_call(&r, frames, lens, 2, NULL, 0), KVCD_EFRAMES);
    assert_ping();

    /* Wrong protocol version: {"v":2,"id":1,"op":1}. */
    frames[0] = "\x83\xa1v\x02\xa2id\x01\xa2op\x01";
    lens[0] = 12;
    ck_assert_int_eq(raw_call(&r, frames, lens, 1, ename, sizeof(ename)), KVCD_EVERSION);
    ck_assert_str_eq(ename, "EVERSION");
    assert_ping();

    /* Unknown operation 99. */
    frames[0] = "\x83\xa1v\x01\xa2id\x01\xa2op\x63";
    ck_assert_int_eq(raw_call(&r, frames, lens, 1, NULL, 0), KVCD_EUNKNOWNOP);
    assert_ping();

    /* Too many keys (server limit 4). */
    frames[0] = hdr;
    lens[0] = encode(hdr, sizeof(hdr), KVCD_OP_LOOKUP, &base, h, 5);
    ck_assert_int_eq(raw_call(&r, frames, lens, 1, NULL, 0), KVCD_ETOOMANYKEYS);
    assert_ping();

    /* A frame over max_frame (1 MiB). */
    big = calloc(1, 2 * MiB);
    frames[0] = hdr;
    lens[0] = encode(hdr, sizeof(hdr), KVCD_OP_STORE, &base, h, 1);
    frames[1] = big;
    lens[1] = 2 * MiB;
    ck_assert_int_eq(raw_call(&r, frames, lens, 2, NULL, 0), KVCD_ETOOLARGE);
    free(big);
    assert_ping();

    /* Nothing was stored by any of it. */
    {
        size_t prefix;

        ck_assert_int_eq(kvcd_client_lookup(cli, &base, h, 1, &prefix, NULL), 0);
        ck_assert_uint_eq(prefix, 0);
    }
    {
        json_t *st = status();

        ck_assert_int_eq(counter(st, "counters", "errors"), 8);
        json_decref(st);
    }
    raw_close(&r);
    stop();
}
END_TEST

/* ---- shutdown ---- */

START_TEST(sigterm_with_requests_in_flight)
{
    enum { N = 64 };
    static uint8_t hb[N][8];
    kvcd_bytes_t h[N];
    uint64_t ids[N / 4];
    size_t lens[4] = {MiB / 4, MiB / 4, MiB / 4, MiB / 4}, i, ok = 0, shut = 0;
    void *buf = malloc(MiB / 4);
    const void *bufs[4] = {buf, buf, buf, buf};
    kvcd_reply_t *r;
    kvcd_key_t base;

    start(NULL);
    kvcd_fill_random(buf, MiB / 4, 5);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    for (i = 0; i < N; i++)
        h[i] = kvcd_test_hash(hb[i], i);
    /* 16 stores of 4 x 256 KiB (copied on the threadpool), pipelined; SIGTERM
     * as soon as the first one is answered, so the rest are queued, being
     * copied or on the wire. */
    for (i = 0; i < N / 4; i++)
        ck_assert_int_eq(kvcd_client_send(cli, KVCD_OP_STORE, &base, h + 4 * i, 4, bufs, lens,
                                          &ids[i]), 0);
    ck_assert_int_eq(kvcd_client_wait(cli, ids[0], 10000, &r), 0);
    ck_assert_int_eq(kvcd_reply_hdr(r)->err, 0);
    kvcd_reply_free(r);
    kill(proc.pid, SIGTERM);
    for (i = 1; i < N / 4; i++) {
        int rc = kvcd_client_wait(cli, ids[i], 10000, &r);

        ck_assert_msg(rc == 0, "request %zu got no reply (%s)", i, kvcd_errname(rc));
        if (kvcd_reply_hdr(r)->err == 0)
            ok++;
        else {
            ck_assert_int_eq(kvcd_reply_hdr(r)->err, KVCD_ESHUTDOWN);
            shut++;
        }
        kvcd_reply_free(r);
    }
    ck_assert_uint_eq(ok + shut, N / 4 - 1);
    ck_assert_int_eq(kvcd_proc_stop(&proc, 0, 10000), 0);
    free(buf);
    stop();
}
END_TEST

START_TEST(sigint_idle_exits_zero)
{
    start(NULL);
    ck_assert_int_eq(kvcd_proc_stop(&proc, SIGINT, 5000), 0);
    stop();
}
END_TEST

/* Loads hold references: a CLEAR right behind pipelined loads must not change
 * the bytes that are being sent. */
START_TEST(clear_during_zero_copy_loads)
{
    enum { N = 8 };
    static uint8_t hb[N][8];
    kvcd_bytes_t h[N];
    void *bufs[N];
    size_t lens[N], i, j, flen;
    uint64_t ids[20], cid;
    int res[N];
    kvcd_key_t base;
    kvcd_reply_t *r;

    start(NULL);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    for (i = 0; i < N; i++) {
        h[i] = kvcd_test_hash(hb[i], i);
        bufs[i] = malloc(4 * MiB);
        lens[i] = 4 * MiB;
        kvcd_fill_random(bufs[i], 4 * MiB, 100 + i);
    }
    ck_assert_int_eq(kvcd_client_store(cli, &base, h, N, (const void *const *)bufs, lens,
                                       res), 0);
    for (j = 0; j < 20; j++)
        ck_assert_int_eq(kvcd_client_send(cli, KVCD_OP_LOAD, &base, h, N, NULL, NULL,
                                          &ids[j]), 0);
    ck_assert_int_eq(kvcd_client_send(cli, KVCD_OP_CLEAR, NULL, NULL, 0, NULL, NULL, &cid), 0);
    for (j = 0; j < 20; j++) {
        ck_assert_int_eq(kvcd_client_wait(cli, ids[j], 0, &r), 0);
        for (i = 0; i < N; i++) {
            const void *p = kvcd_reply_frame(r, i, &flen);

            if (kvcd_reply_hdr(r)->results[i] == 0) {
                ck_assert_uint_eq(flen, 4 * MiB);
                ck_assert_msg(memcmp(p, bufs[i], flen) == 0, "load %zu key %zu corrupted", j, i);
            }
        }
        kvcd_reply_free(r);
    }
    ck_assert_int_eq(kvcd_client_wait(cli, cid, 0, &r), 0);
    ck_assert_int_eq(kvcd_reply_hdr(r)->err, 0);
    kvcd_reply_free(r);
    {
        json_t *st = status();

        ck_assert_int_eq(counter(st, "l1", "used"), 0);
        ck_assert_int_eq(counter(st, "l1", "objects"), 0);
        json_decref(st);
    }
    for (i = 0; i < N; i++)
        free(bufs[i]);
    stop();
}
END_TEST

/* ---- command line ---- */

static void expect_bad_flag(const char *flag, const char *value, const char *needle)
{
    const char *argv[] = {kvcd_test_bin(), flag, value, NULL};
    char out[2048];

    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 5000), 2);
    ck_assert_msg(strstr(out, needle) != NULL, "'%s' not in: %s", needle, out);
    ck_assert_msg(strchr(out, '\n') == strrchr(out, '\n'), "more than one line: %s", out);
}

START_TEST(bad_flags_exit_2)
{
    const char *help[] = {kvcd_test_bin(), "--help", NULL};
    const char *version[] = {kvcd_test_bin(), "--version", NULL};
    const char *unknown[] = {kvcd_test_bin(), "--frobnicate", NULL};
    char out[8192];

    expect_bad_flag("--port", "abc", "--port");
    expect_bad_flag("--port", "70000", "--port");
    expect_bad_flag("--l1-size-gb", "-1", "--l1-size-gb");
    expect_bad_flag("--eviction-policy", "FIFO", "--eviction-policy");
    expect_bad_flag("--l2-adapter", "{bad json", "--l2-adapter #1");
    expect_bad_flag("--l2-adapter", "[1]", "--l2-adapter #1");
    expect_bad_flag("--log-level", "loud", "--log-level");
    expect_bad_flag("--endpoint", "nowhere", "--endpoint");
    ck_assert_int_eq(kvcd_run(unknown, out, sizeof(out), 5000), 2);
    ck_assert_ptr_nonnull(strstr(out, "--frobnicate"));
    ck_assert_int_eq(kvcd_run(help, out, sizeof(out), 5000), 0);
    ck_assert_ptr_nonnull(strstr(out, "--l1-size-gb"));
    ck_assert_ptr_nonnull(strstr(out, "default"));
    ck_assert_int_eq(kvcd_run(version, out, sizeof(out), 5000), 0);
    ck_assert_ptr_nonnull(strstr(out, "kvcd "));
}
END_TEST

START_TEST(bind_failure_exits_1)
{
    const char *argv[] = {kvcd_test_bin(), "--endpoint", "ipc:///nonexistent-dir/x/kvcd.sock",
                          NULL};
    char out[2048];

    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 5000), 1);
    ck_assert_ptr_nonnull(strstr(out, "cannot bind"));
}
END_TEST

/* ---- kvcdctl ---- */

START_TEST(kvcdctl_commands)
{
    char out[8192], in[400], got[400];
    const char *ctl = kvcd_test_ctl();
    FILE *f;
    void *data = malloc(300000), *back = malloc(300001);
    size_t n;

    start(NULL);
    snprintf(in, sizeof(in), "%s/in.bin", proc.dir);
    snprintf(got, sizeof(got), "%s/out.bin", proc.dir);
    kvcd_fill_random(data, 300000, 77);
    f = fopen(in, "wb");
    ck_assert_uint_eq(fwrite(data, 1, 300000, f), 300000);
    fclose(f);
    {
        const char *a[] = {ctl, "-e", proc.endpoint, "ping", NULL};

        ck_assert_int_eq(kvcd_run(a, out, sizeof(out), 5000), 0);
        ck_assert_ptr_nonnull(strstr(out, "protocol 1"));
    }
    {
        const char *a[] = {ctl, "-e", proc.endpoint, "put", "--model", "org/m", "--world-size",
                           "2", "--worker-id", "1", "--hash", "deadbeef", in, NULL};

        ck_assert_int_eq(kvcd_run(a, out, sizeof(out), 5000), 0);
    }
    {
        const char *a[] = {ctl, "-e", proc.endpoint, "lookup", "--model", "org/m",
                           "--world-size", "2", "--worker-id", "1", "deadbeef", "00", NULL};

        ck_assert_int_eq(kvcd_run(a, out, sizeof(out), 5000), 0);
        ck_assert_str_eq(out, "1\n");
    }
    {
        const char *a[] = {ctl, "-e", proc.endpoint, "get", "--model", "org/m", "--world-size",
                           "2", "--worker-id", "1", "--hash", "deadbeef", got, NULL};

        ck_assert_int_eq(kvcd_run(a, out, sizeof(out), 5000), 0);
        f = fopen(got, "rb");
        n = fread(back, 1, 300001, f);
        fclose(f);
        ck_assert_uint_eq(n, 300000);
        ck_assert(memcmp(back, data, n) == 0);
    }
    {
        /* Same hash, other worker: a miss, exit 1. */
        const char *a[] = {ctl, "-e", proc.endpoint, "get", "--model", "org/m", "--world-size",
                           "2", "--worker-id", "0", "--hash", "deadbeef", got, NULL};

        ck_assert_int_eq(kvcd_run(a, out, sizeof(out), 5000), 1);
    }
    {
        const char *a[] = {ctl, "-e", proc.endpoint, "status", NULL};
        json_error_t e;
        json_t *j;

        ck_assert_int_eq(kvcd_run(a, out, sizeof(out), 5000), 0);
        j = json_loads(out, 0, &e);
        ck_assert_msg(j != NULL, "status is not JSON: %s", out);
        ck_assert_int_eq(counter(j, "l1", "objects"), 1);
        json_decref(j);
    }
    {
        const char *a[] = {ctl, "-e", proc.endpoint, "clear", NULL};

        ck_assert_int_eq(kvcd_run(a, out, sizeof(out), 5000), 0);
        ck_assert_str_eq(out, "1\n");
    }
    {
        const char *a[] = {ctl, "-e", proc.endpoint, "lookup", "--model", "org/m", "zz", NULL};

        ck_assert_int_eq(kvcd_run(a, out, sizeof(out), 5000), 2);
    }
    free(data);
    free(back);
    stop();
}
END_TEST

START_TEST(kvcdctl_no_server_exits_3)
{
    const char *a[] = {kvcd_test_ctl(), "-e", "ipc:///tmp/kvcd-no-such-server.sock", "-t",
                       "300", "ping", NULL};
    char out[1024];

    ck_assert_int_eq(kvcd_run(a, out, sizeof(out), 5000), 3);
}
END_TEST

/* ---- launch script ---- */

START_TEST(launch_script)
{
    char script[512], pidfile[400], out[4096], ep[400], cmd[2048];
    kvcd_proc_t tmp;
    FILE *p;
    pid_t daemon_pid = 0, launcher;
    int status, i;

    memset(&tmp, 0, sizeof(tmp));
    snprintf(tmp.dir, sizeof(tmp.dir), "/tmp/kvcd-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp.dir));
    snprintf(script, sizeof(script), "%s/scripts/kvcd-launch.sh", kvcd_test_srcdir());
    snprintf(pidfile, sizeof(pidfile), "%s/kvcd.pid", tmp.dir);
    snprintf(ep, sizeof(ep), "ipc://%s/kvcd.sock", tmp.dir);
    snprintf(out, sizeof(out), "%s/launch.out", tmp.dir);

    launcher = fork();
    if (launcher == 0) {
        snprintf(cmd, sizeof(cmd), "%s/kvcd.log", tmp.dir);
        freopen(out, "w", stdout);
        freopen(cmd, "w", stderr);
        setenv("KVCD_BIN", kvcd_test_bin(), 1);
        setenv("KVCDCTL_BIN", kvcd_test_ctl(), 1);
        execl("/bin/sh", "sh", script, "--pid-file", pidfile, "--wait-timeout", "10", "--",
              "--endpoint", ep, "--l1-size-gb", "0.0625", (char *)NULL);
        _exit(127);
    }
    /* Wait for the pid file and the printed endpoint. */
    for (i = 0; i < 200 && daemon_pid == 0; i++) {
        usleep(50000);
        p = fopen(pidfile, "r");
        if (p) {
            if (fscanf(p, "%d", &daemon_pid) != 1)
                daemon_pid = 0;
            fclose(p);
        }
    }
    ck_assert_int_gt(daemon_pid, 0);
    ck_assert_int_eq(kill(daemon_pid, 0), 0);
    {
        const char *a[] = {kvcd_test_ctl(), "-e", ep, "ping", NULL};

        ck_assert_int_eq(kvcd_run(a, NULL, 0, 5000), 0);
    }
    for (i = 0; i < 100; i++) {
        char text[4096] = "";

        p = fopen(out, "r");
        if (p) {
            size_t n = fread(text, 1, sizeof(text) - 1, p);

            text[n] = '\0';
            fclose(p);
        }
        if (strstr(text, ep))
            break;
        usleep(50000);
    }
    ck_assert_int_lt(i, 100);
    /* SIGTERM to the launcher is forwarded; both exit 0. */
    kill(launcher, SIGTERM);
    ck_assert_int_eq(waitpid(launcher, &status, 0), launcher);
    ck_assert(WIFEXITED(status));
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    ck_assert_int_ne(kill(daemon_pid, 0), 0);
    ck_assert_int_ne(access(pidfile, F_OK), 0);
    kvcd_proc_cleanup(&tmp);
}
END_TEST

START_TEST(launch_script_fails_when_kvcd_fails)
{
    char script[512];
    const char *a[] = {"sh", script, "--wait-timeout", "5", "--", "--port", "bogus", NULL};
    char out[4096];

    snprintf(script, sizeof(script), "%s/scripts/kvcd-launch.sh", kvcd_test_srcdir());
    setenv("KVCD_BIN", kvcd_test_bin(), 1);
    setenv("KVCDCTL_BIN", kvcd_test_ctl(), 1);
    ck_assert_int_ne(kvcd_run(a, out, sizeof(out), 15000), 0);
    ck_assert_ptr_nonnull(strstr(out, "--port"));
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("e2e");
    TCase *tc = tcase_create("daemon");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, roundtrip_64_chunks);
    tcase_add_test(tc, keys_are_distinct_per_field);
    tcase_add_test(tc, lookup_prefix_and_remove);
    tcase_add_test(tc, load_miss_gives_empty_frame);
    tcase_add_test(tc, store_beyond_l1_evicts_lru);
    tcase_add_test(tc, noop_policy_refuses_when_full);
    tcase_add_test(tc, eight_clients_pipelining);
    tcase_add_test(tc, bad_input_gets_error_replies);
    tcase_add_test(tc, sigterm_with_requests_in_flight);
    tcase_add_test(tc, sigint_idle_exits_zero);
    tcase_add_test(tc, clear_during_zero_copy_loads);
    tcase_add_test(tc, bad_flags_exit_2);
    tcase_add_test(tc, bind_failure_exits_1);
    tcase_add_test(tc, kvcdctl_commands);
    tcase_add_test(tc, kvcdctl_no_server_exits_3);
    tcase_add_test(tc, launch_script);
    tcase_add_test(tc, launch_script_fails_when_kvcd_fails);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return kvcd_test_run(suite());
}
