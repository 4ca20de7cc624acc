/*
 * bench_frames.c - kvcd over ZeroMQ frames next to raw ZeroMQ and memcpy.
 *
 * One run starts the real kvcd on a private ipc:// socket and measures, for each
 * chunk size (default 1, 4 and 16 MiB), in batches of 16 chunks per request and
 * in single-chunk requests:
 *
 *  - single-thread memcpy bandwidth over a working set larger than the caches
 *    (the physical reference);
 *  - raw ZeroMQ throughput on the same transport: a DEALER in this thread, a
 *    ROUTER in another thread with its own context (so its own I/O thread, as a
 *    separate process would have), with the daemon's and the client's socket
 *    options. "store": the DEALER sends a small header and one zero-copy frame per
 *    chunk; the ROUTER receives and holds every frame of the request (as kvcd
 *    holds them until they are copied to L1), drops them and acks once. "load":
 *    the DEALER sends a small header; the ROUTER answers with an ack and one
 *    zero-copy frame per chunk (zmq_msg_init_data from a preallocated pool, with a
 *    free callback, as kvcd sends from L1);
 *  - kvcd STORE and LOAD through the C client's pipelined calls, with the same
 *    batch, requests in flight and source buffers as the raw runs;
 *  - latency: PING, LOOKUP of 1, 100 and 1000 present keys, and a raw ZeroMQ
 *    round trip, interleaved so that all five see the same noise.
 *
 * Raw and kvcd repetitions alternate (raw, kvcd, raw, kvcd, ...) and the median
 * repetition is reported, with the CPU time and minor page faults per byte of
 * both sides, which explain most of the differences on a small machine. Before
 * timing, L1 (locked with --l1-mlock) is written once by stores, since even
 * resident memory can be slow on its first write on a virtual machine.
 *
 * Every LOAD reply is checked (status, frame count, sizes) and one chunk in 17 is
 * checksummed against the source bytes; after each STORE repetition two of the
 * stored keys are loaded back and checksummed. Any error, wrong byte, timeout or
 * daemon failure exits non-zero. The daemon and its temp dir are removed on every
 * exit path.
 *
 * Usage: bench_frames [options] [KVCD_BINARY]   (binary also from $KVCD_BIN;
 * default build/kvcd). See usage() for the options.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <jansson.h>
#include <xxhash.h>
#include <zmq.h>

#include "protocol/client.h"
#include "tests/bench/bench_util.h"

#define MAX_SIZES 8
#define MAX_DEPTH 16
#define MAX_BATCH 256
#define LOADSET 16              /* distinct chunks loaded per size */
#define VERIFY_EVERY 17         /* checksum one chunk in 17 (coprime to 16) */
#define POOL_MIN (256ull << 20) /* memcpy working set, beyond the caches */
#define LOOKUP_KEYS 1000
#define LOOKUP_VALUE 4096
#define MODEL "bench/frames"
#define TIMEOUT_MS 30000
#define MALLOC_KEEP                                                                                \
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=33554432:"                               \
    "glibc.malloc.trim_threshold=68719476736"

/* ---- options ---- */

typedef struct {
    size_t sizes[MAX_SIZES];
    size_t nsizes;
    int batch;
    int depth;
    int reps;
    double rep_s;    /* minimum seconds per timed rep (batched requests) */
    double single_s; /* the same for single-chunk requests */
    int single;      /* also measure single-chunk requests */
    int lat_iters;
    double l1_gb;
    int workers;
    int quick;
    int csv;
    int verbose;
    int mlock;
    int malloc_keep;
    int client_keep; /* kvcd_client_keep_memory() in this process */
    unsigned only; /* bit per job_kind_t, and ONLY_LATENCY */
    const char *bin;
} opts_t;

static opts_t O;

/* ---- shared buffers ---- */

static uint8_t *src_pool; /* client side: STORE source, one chunk per frame */
static uint8_t *srv_pool; /* raw ROUTER side: LOAD source */
static size_t pool_len;
static uint64_t src_hash[LOADSET], srv_hash[LOADSET]; /* per current size */

static void *map_pool(size_t len)
{
    void *p =
        mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

    if (p == MAP_FAILED)
        bench_fail("cannot map %zu bytes: %s", len, strerror(errno));
    return p;
}

static void hash_chunks(size_t size)
{
    size_t j;

    for (j = 0; j < LOADSET; j++) {
        src_hash[j] = XXH3_64bits(src_pool + j * size, size);
        srv_hash[j] = XXH3_64bits(srv_pool + j * size, size);
    }
}

/* ---- raw ZeroMQ: a ROUTER in a thread, a DEALER here ---- */

enum { RAW_PING = 1, RAW_STORE = 2, RAW_LOAD = 4, RAW_QUIT = 99 };

typedef struct {
    uint32_t op, n;
    uint64_t id;
    uint64_t size;
    uint64_t first; /* LOAD: first chunk index in the pool */
} raw_req_t;

typedef struct {
    uint64_t id;
    uint32_t n;
    uint32_t status; /* 0 ok, else a bad request */
} raw_ack_t;

typedef struct {
    void *ctx, *sock;
    pthread_t thread;
    char endpoint[320];
    uint64_t frames_sent;     /* zero-copy frames handed to ZeroMQ */
    uint64_t frames_released; /* their free callbacks, atomically */
    int err;
} raw_server_t;

typedef struct {
    void *ctx, *sock;
} raw_client_t;

static raw_server_t RS;
static raw_client_t RC;

static void raw_free_cb(void *data, void *hint)
{
    raw_server_t *s = hint;

    __atomic_fetch_add(&s->frames_released, 1, __ATOMIC_RELAXED);
}

static void *raw_server_main(void *arg)
{
    raw_server_t *s = arg;
    zmq_msg_t ident, hdr, m, *held = calloc(MAX_BATCH, sizeof(zmq_msg_t));
    raw_req_t rq;
    raw_ack_t ack;
    uint32_t i, nf;
    int more, bad;

    if (!held) {
        s->err = ENOMEM;
        return NULL;
    }
    for (;;) {
        zmq_msg_init(&ident);
        if (zmq_msg_recv(&ident, s->sock, 0) < 0) {
            zmq_msg_close(&ident);
            if (zmq_errno() == EINTR)
                continue;
            s->err = zmq_errno();
            break;
        }
        zmq_msg_init(&hdr);
        bad = !zmq_msg_more(&ident) || zmq_msg_recv(&hdr, s->sock, 0) < 0 ||
              zmq_msg_size(&hdr) != sizeof(rq);
        memset(&rq, 0, sizeof(rq));
        if (!bad)
            memcpy(&rq, zmq_msg_data(&hdr), sizeof(rq));
        more = zmq_msg_more(&hdr);
        zmq_msg_close(&hdr);
        /* Receive the bulk frames and hold them until the whole request is in,
         * as kvcd holds a STORE's frames until their bytes are copied to L1;
         * then drop them and ack (the store "work" of a bare socket). */
        for (nf = 0; more; nf++) {
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, s->sock, 0) < 0) {
                zmq_msg_close(&m);
                bad = 1;
                break;
            }
            more = zmq_msg_more(&m);
            if (zmq_msg_size(&m) != rq.size)
                bad = 1;
            if (nf < MAX_BATCH)
                held[nf] = m;
            else
                zmq_msg_close(&m);
        }
        for (i = 0; i < nf && i < MAX_BATCH; i++)
            zmq_msg_close(&held[i]);
        if (rq.op == RAW_STORE && nf != rq.n)
            bad = 1;
        if (rq.op == RAW_LOAD && (rq.size == 0 || rq.size * LOADSET > pool_len))
            bad = 1;
        ack.id = rq.id;
        ack.n = nf;
        ack.status = (uint32_t)bad;
        zmq_msg_send(&ident, s->sock, ZMQ_SNDMORE);
        if (rq.op == RAW_LOAD && !bad && rq.n) {
            zmq_send(s->sock, &ack, sizeof(ack), ZMQ_SNDMORE);
            for (i = 0; i < rq.n; i++) {
                size_t j = (size_t)((rq.first + i) % LOADSET);

                zmq_msg_init_data(&m, srv_pool + j * rq.size, rq.size, raw_free_cb, s);
                s->frames_sent++;
                if (zmq_msg_send(&m, s->sock, i + 1 < rq.n ? ZMQ_SNDMORE : 0) < 0) {
                    zmq_msg_close(&m);
                    s->err = zmq_errno();
                }
            }
        } else {
            zmq_send(s->sock, &ack, sizeof(ack), 0);
        }
        if (rq.op == RAW_QUIT)
            break;
    }
    free(held);
    return NULL;
}

static void raw_start(const char *dir)
{
    int zero = 0, one = 1, timeout = TIMEOUT_MS;
    int64_t maxmsg = (int64_t)(2 * 1024 * BENCH_MIB);

    snprintf(RS.endpoint, sizeof(RS.endpoint), "ipc://%s/raw.sock", dir);
    bench_track_file(RS.endpoint + strlen("ipc://"));
    /* The ROUTER gets the daemon's socket options; the DEALER the client's. */
    RS.ctx = zmq_ctx_new();
    RS.sock = zmq_socket(RS.ctx, ZMQ_ROUTER);
    zmq_setsockopt(RS.sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    zmq_setsockopt(RS.sock, ZMQ_SNDHWM, &zero, sizeof(zero));
    zmq_setsockopt(RS.sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    zmq_setsockopt(RS.sock, ZMQ_LINGER, &zero, sizeof(zero));
    if (zmq_bind(RS.sock, RS.endpoint) != 0)
        bench_fail("raw ROUTER: cannot bind %s: %s", RS.endpoint, zmq_strerror(zmq_errno()));
    if (pthread_create(&RS.thread, NULL, raw_server_main, &RS) != 0)
        bench_fail("cannot start the raw ROUTER thread");

    RC.ctx = zmq_ctx_new();
    RC.sock = zmq_socket(RC.ctx, ZMQ_DEALER);
    zmq_setsockopt(RC.sock, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(RC.sock, ZMQ_SNDHWM, &zero, sizeof(zero));
    zmq_setsockopt(RC.sock, ZMQ_RCVHWM, &zero, sizeof(zero));
    zmq_setsockopt(RC.sock, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
    if (zmq_connect(RC.sock, RS.endpoint) != 0)
        bench_fail("raw DEALER: cannot connect: %s", zmq_strerror(zmq_errno()));
}

static void raw_send(uint32_t op, uint64_t id, uint32_t n, size_t size, uint64_t first,
                     int with_frames)
{
    raw_req_t rq = {.op = op, .n = n, .id = id, .size = size, .first = first};
    zmq_msg_t m;
    uint32_t i;

    if (zmq_send(RC.sock, &rq, sizeof(rq), with_frames ? ZMQ_SNDMORE : 0) < 0)
        bench_fail("raw send: %s", zmq_strerror(zmq_errno()));
    for (i = 0; with_frames && i < n; i++) {
        /* Zero copy with no free function, exactly as the kvcd client sends. */
        zmq_msg_init_data(&m, src_pool + (size_t)i * size, size, NULL, NULL);
        if (zmq_msg_send(&m, RC.sock, i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
            bench_fail("raw send: %s", zmq_strerror(zmq_errno()));
    }
}

/* Receive one reply: the ack, then for a LOAD n frames, each checked for size
 * and a sample checksummed (chunk index first + i). */
static void raw_recv(uint64_t id, uint32_t op, uint32_t n, size_t size, uint64_t first)
{
    zmq_msg_t m;
    raw_ack_t ack;
    uint32_t nf = 0;
    int more;

    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, RC.sock, 0) < 0)
        bench_fail("raw recv: %s", zmq_strerror(zmq_errno()));
    if (zmq_msg_size(&m) != sizeof(ack))
        bench_fail("raw recv: ack of %zu bytes", zmq_msg_size(&m));
    memcpy(&ack, zmq_msg_data(&m), sizeof(ack));
    more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    if (ack.id != id || ack.status != 0)
        bench_fail("raw reply: id %" PRIu64 " (want %" PRIu64 "), status %u", ack.id, id,
                   ack.status);
    if (op == RAW_STORE && ack.n != n)
        bench_fail("raw store: the ROUTER received %u frames, sent %u", ack.n, n);
    while (more) {
        uint64_t c = first + nf;

        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, RC.sock, 0) < 0)
            bench_fail("raw recv frame: %s", zmq_strerror(zmq_errno()));
        more = zmq_msg_more(&m);
        if (zmq_msg_size(&m) != size)
            bench_fail("raw load: frame of %zu bytes, want %zu", zmq_msg_size(&m), size);
        if (c % VERIFY_EVERY == 0 && XXH3_64bits(zmq_msg_data(&m), size) != srv_hash[c % LOADSET])
            bench_fail("raw load: wrong bytes in chunk %" PRIu64, c % LOADSET);
        zmq_msg_close(&m);
        nf++;
    }
    if (nf != (op == RAW_LOAD ? n : 0))
        bench_fail("raw reply with %u frames, want %u", nf, op == RAW_LOAD ? n : 0);
}

static void raw_stop(void)
{
    raw_send(RAW_QUIT, 0, 0, 0, 0, 0);
    raw_recv(0, RAW_QUIT, 0, 0, 0);
    pthread_join(RS.thread, NULL);
    zmq_close(RC.sock);
    zmq_ctx_term(RC.ctx);
    zmq_close(RS.sock);
    zmq_ctx_term(RS.ctx); /* returns once every zero-copy frame is released */
    if (RS.err)
        bench_fail("raw ROUTER: %s", zmq_strerror(RS.err));
    if (RS.frames_released != RS.frames_sent)
        bench_fail("raw ROUTER: %" PRIu64 " zero-copy frames sent, %" PRIu64 " released",
                   RS.frames_sent, RS.frames_released);
}

/* ---- kvcd through the C client ---- */

static bench_daemon_t D;
static kvcd_client_t *KC;
static kvcd_key_t kbase;
static uint64_t next_key = 1; /* STORE keys are never reused: no duplicate stores */
static double first_pass_gbps;
static double t_start; /* for the elapsed times of -v */

#define LOADSET_KEY(size) (0x8000000000000000ull | (uint64_t)((size) >> 20) << 16)
#define LOOKUP_KEY 0x4000000000000000ull

typedef struct {
    uint8_t b[8];
} hash8_t;

/* Hashes of keys first, first + step, first + 2 * step, ... (8 bytes, big endian). */
static void make_hashes(uint64_t first, uint64_t step, size_t n, hash8_t *hb, kvcd_bytes_t *h)
{
    size_t i, k;

    for (i = 0; i < n; i++) {
        uint64_t v = first + i * step;

        for (k = 0; k < 8; k++)
            hb[i].b[k] = (uint8_t)(v >> (56 - 8 * k));
        h[i].ptr = hb[i].b;
        h[i].len = 8;
    }
}

static kvcd_reply_t *kvcd_wait_ok(uint64_t id, const char *what)
{
    kvcd_reply_t *r;
    int rc = kvcd_client_wait(KC, id, 0, &r);

    if (rc != 0)
        bench_fail("%s: no reply: %s%s", what, kvcd_strerror(rc),
                   bench_daemon_alive(&D) ? "" : " (kvcd is gone)");
    if (kvcd_reply_hdr(r)->err != 0)
        bench_fail("%s: %s: %s", what, kvcd_reply_hdr(r)->ename, kvcd_reply_hdr(r)->msg);
    return r;
}

/* STORE keys key0.. with chunk i of src_pool in frame i. Returns the id. */
static uint64_t kvcd_send_store(uint64_t key0, size_t n, size_t size)
{
    static hash8_t hb[MAX_BATCH > LOOKUP_KEYS ? MAX_BATCH : LOOKUP_KEYS];
    static kvcd_bytes_t h[MAX_BATCH > LOOKUP_KEYS ? MAX_BATCH : LOOKUP_KEYS];
    static const void *bufs[MAX_BATCH > LOOKUP_KEYS ? MAX_BATCH : LOOKUP_KEYS];
    static size_t lens[MAX_BATCH > LOOKUP_KEYS ? MAX_BATCH : LOOKUP_KEYS];
    uint64_t id;
    size_t i;
    int rc;

    make_hashes(key0, 1, n, hb, h);
    for (i = 0; i < n; i++) {
        bufs[i] = src_pool + (i % LOADSET) * size;
        lens[i] = size;
    }
    rc = kvcd_client_send(KC, KVCD_OP_STORE, &kbase, h, n, bufs, lens, &id);
    if (rc != 0)
        bench_fail("STORE send: %s", kvcd_strerror(rc));
    return id;
}

static void kvcd_check_store(uint64_t id, size_t n)
{
    kvcd_reply_t *r = kvcd_wait_ok(id, "STORE");
    const kvcd_reply_hdr_t *h = kvcd_reply_hdr(r);
    size_t i;

    if (h->nresults != n)
        bench_fail("STORE: %zu results for %zu keys", h->nresults, n);
    for (i = 0; i < n; i++)
        if (h->results[i] != 0)
            bench_fail("STORE: key %zu of %zu: %s", i, n, kvcd_errname(h->results[i]));
    kvcd_reply_free(r);
}

/* LOAD n keys of the rotating load set starting at chunk index first. */
static uint64_t kvcd_send_load(size_t size, uint64_t first, size_t n)
{
    static hash8_t hb[MAX_BATCH];
    static kvcd_bytes_t h[MAX_BATCH];
    uint64_t id;
    size_t i, k;
    int rc;

    for (i = 0; i < n; i++) {
        uint64_t v = LOADSET_KEY(size) + (first + i) % LOADSET;

        for (k = 0; k < 8; k++)
            hb[i].b[k] = (uint8_t)(v >> (56 - 8 * k));
        h[i].ptr = hb[i].b;
        h[i].len = 8;
    }
    rc = kvcd_client_send(KC, KVCD_OP_LOAD, &kbase, h, n, NULL, NULL, &id);
    if (rc != 0)
        bench_fail("LOAD send: %s", kvcd_strerror(rc));
    return id;
}

/* Check a LOAD reply of the load set; chunk c = first + i holds src chunk
 * c % LOADSET; one chunk in VERIFY_EVERY is checksummed. */
static void kvcd_check_load(uint64_t id, size_t size, uint64_t first, size_t n)
{
    kvcd_reply_t *r = kvcd_wait_ok(id, "LOAD");
    const kvcd_reply_hdr_t *h = kvcd_reply_hdr(r);
    size_t i, len;
    const void *p;

    if (h->nresults != n || kvcd_reply_nframes(r) != n)
        bench_fail("LOAD: %zu results and %zu frames for %zu keys", h->nresults,
                   kvcd_reply_nframes(r), n);
    for (i = 0; i < n; i++) {
        uint64_t c = first + i;

        if (h->results[i] != 0)
            bench_fail("LOAD: key %zu of %zu: %s", i, n, kvcd_errname(h->results[i]));
        p = kvcd_reply_frame(r, i, &len);
        if (len != size)
            bench_fail("LOAD: frame %zu has %zu bytes, want %zu", i, len, size);
        if (c % VERIFY_EVERY == 0 && XXH3_64bits(p, len) != src_hash[c % LOADSET])
            bench_fail("LOAD: wrong bytes in chunk %zu of a %zu-key reply (load set "
                       "chunk %" PRIu64 ", %zu bytes)",
                       i, n, c % LOADSET, size);
    }
    kvcd_reply_free(r);
}

/* Check the reply to the LOAD of keys 0 and n - 1 of a STORE of n keys (one key
 * when n is 1): chunk i of a STORE holds src chunk i % LOADSET. */
static void kvcd_check_load_sample(uint64_t id, size_t size, size_t n)
{
    kvcd_reply_t *r = kvcd_wait_ok(id, "LOAD");
    const kvcd_reply_hdr_t *h = kvcd_reply_hdr(r);
    size_t m = n > 1 ? 2 : 1, i, len;
    const void *p;

    if (h->nresults != m || kvcd_reply_nframes(r) != m)
        bench_fail("LOAD: %zu results and %zu frames for %zu keys", h->nresults,
                   kvcd_reply_nframes(r), m);
    for (i = 0; i < m; i++) {
        size_t chunk = i ? (n - 1) % LOADSET : 0;

        if (h->results[i] != 0)
            bench_fail("LOAD of a stored key: %s", kvcd_errname(h->results[i]));
        p = kvcd_reply_frame(r, i, &len);
        if (len != size || XXH3_64bits(p, len) != src_hash[chunk])
            bench_fail("LOAD of a just-stored key: %zu bytes (want %zu), checksum %s", len, size,
                       len == size ? "WRONG" : "not computed");
    }
    kvcd_reply_free(r);
}

/* Make sure the LOADSET chunks of this size are in L1 (stores evict them). */
static void kvcd_ensure_loadset(size_t size)
{
    hash8_t hb[LOADSET];
    kvcd_bytes_t h[LOADSET];
    uint8_t present[LOADSET];
    size_t prefix;
    int rc;

    make_hashes(LOADSET_KEY(size), 1, LOADSET, hb, h);
    rc = kvcd_client_lookup(KC, &kbase, h, LOADSET, &prefix, present);
    if (rc != 0)
        bench_fail("LOOKUP: %s", kvcd_strerror(rc));
    if (prefix == LOADSET)
        return;
    kvcd_check_store(kvcd_send_store(LOADSET_KEY(size), LOADSET, size), LOADSET);
}

/* ---- pipelined throughput runs ---- */

typedef enum { J_RAW_STORE, J_KVCD_STORE, J_RAW_LOAD, J_KVCD_LOAD, J_COUNT } job_kind_t;

static const char *const job_name[J_COUNT] = {"raw store", "kvcd store", "raw load", "kvcd load"};

typedef struct {
    double gbps;      /* bytes / wall time */
    double cpu_ms_gb; /* client + server CPU ms per GB moved */
    double srv_ms_gb; /* server-side share (kvcd: the daemon; raw: n/a) */
    double faults_mb; /* minor page faults per MB moved, client + server */
    double srv_faults_mb; /* ... of them the daemon's (kvcd only) */
    uint64_t requests;
} run_t;

/* Issue request seq (returns a tag for completion). */
static uint64_t job_issue(job_kind_t k, size_t size, size_t n, uint64_t seq, uint64_t key0)
{
    switch (k) {
    case J_RAW_STORE:
        raw_send(RAW_STORE, seq, (uint32_t)n, size, 0, 1);
        return seq;
    case J_RAW_LOAD:
        raw_send(RAW_LOAD, seq, (uint32_t)n, size, seq * n, 0);
        return seq;
    case J_KVCD_STORE:
        return kvcd_send_store(key0 + seq * n, n, size);
    case J_KVCD_LOAD:
        return kvcd_send_load(size, seq * n, n);
    default:
        return 0;
    }
}

static void job_complete(job_kind_t k, size_t size, size_t n, uint64_t seq, uint64_t tag)
{
    switch (k) {
    case J_RAW_STORE:
        raw_recv(tag, RAW_STORE, (uint32_t)n, size, 0);
        break;
    case J_RAW_LOAD:
        raw_recv(tag, RAW_LOAD, (uint32_t)n, size, seq * n);
        break;
    case J_KVCD_STORE:
        kvcd_check_store(tag, n);
        break;
    case J_KVCD_LOAD:
        kvcd_check_load(tag, size, seq * n, n);
        break;
    default:
        break;
    }
}

/* Keep `depth` requests in flight until min_s seconds and min_reqs requests
 * have passed; time from the first send to the last reply. */
static run_t run_job(job_kind_t k, size_t size, size_t n, int depth, double min_s,
                     uint64_t min_reqs)
{
    uint64_t tags[MAX_DEPTH], issued = 0, done = 0, key0 = next_key;
    int is_kvcd = k == J_KVCD_STORE || k == J_KVCD_LOAD;
    double t0, t1, c0, c1, d0 = 0, d1 = 0, f0, f1, df0, df1;
    run_t r;

    /* Untimed: bring the load set in (stores evict it), or for a STORE run
     * touch it (LOOKUP marks hits recently used) so this run evicts older
     * objects instead of it. */
    if (k == J_KVCD_LOAD || k == J_KVCD_STORE)
        kvcd_ensure_loadset(size);
    c0 = bench_self_cpu();
    df0 = is_kvcd ? bench_proc_faults(D.pid) : 0;
    f0 = bench_proc_faults(getpid()) + df0;
    if (is_kvcd)
        d0 = bench_proc_cpu(D.pid);
    t0 = bench_now();
    for (; issued < (uint64_t)depth; issued++)
        tags[issued % MAX_DEPTH] = job_issue(k, size, n, issued, key0);
    while (done < issued) {
        job_complete(k, size, n, done, tags[done % MAX_DEPTH]);
        done++;
        if (issued < min_reqs || bench_now() - t0 < min_s) {
            tags[issued % MAX_DEPTH] = job_issue(k, size, n, issued, key0);
            issued++;
        }
    }
    t1 = bench_now();
    c1 = bench_self_cpu();
    df1 = is_kvcd ? bench_proc_faults(D.pid) : 0;
    f1 = bench_proc_faults(getpid()) + df1;
    if (is_kvcd)
        d1 = bench_proc_cpu(D.pid);

    if (k == J_KVCD_STORE) {
        /* Load back a sample, the first and the last key of the last request
         * (chunks 0 and n - 1), and checksum them whole. */
        uint64_t first = key0 + (issued - 1) * n, id;
        hash8_t hb[2];
        kvcd_bytes_t h[2];
        size_t m = n > 1 ? 2 : 1;
        int rc;

        next_key += issued * n;
        make_hashes(first, n - 1, m, hb, h);
        rc = kvcd_client_send(KC, KVCD_OP_LOAD, &kbase, h, m, NULL, NULL, &id);
        if (rc != 0)
            bench_fail("LOAD send: %s", kvcd_strerror(rc));
        kvcd_check_load_sample(id, size, n);
    }

    r.requests = issued;
    {
        double gb = (double)issued * (double)n * (double)size / BENCH_GB;

        r.gbps = gb / (t1 - t0);
        r.cpu_ms_gb = ((c1 - c0) + (d1 - d0)) * 1000.0 / gb;
        r.srv_ms_gb = is_kvcd ? (d1 - d0) * 1000.0 / gb : 0.0;
        r.faults_mb = (f1 - f0) / (gb * 1000.0);
        r.srv_faults_mb = (df1 - df0) / (gb * 1000.0);
    }
    if (O.verbose)
        fprintf(stderr,
                "  %-10s %5zu MiB x%-3zu %4" PRIu64 " req %7.3f s  %6.2f GB/s  "
                "cpu %6.0f ms/GB  %5.0f faults/MB  [at %.1f s]\n",
                job_name[k], size >> 20, n, issued, t1 - t0, r.gbps, r.cpu_ms_gb, r.faults_mb,
                bench_now() - t_start);
    return r;
}

/* ---- memcpy reference ---- */

static double bench_memcpy(size_t size, double min_s)
{
    size_t nchunks = pool_len / size, k = 0;
    double t0 = bench_now(), t;
    uint64_t bytes = 0;

    do {
        memcpy(srv_pool + k * size, src_pool + k * size, size);
        bytes += size;
        k = (k + 1) % nchunks;
        t = bench_now();
    } while (t - t0 < min_s || bytes < pool_len);
    return (double)bytes / BENCH_GB / (t - t0);
}

/* ---- result table ---- */

typedef struct {
    size_t size;
    size_t batch;
    double memcpy_gbps;
    run_t med[J_COUNT];
} row_t;

typedef struct {
    const char *name;
    double med_us, p99_us;
} lat_t;

static double median_of(run_t *runs, int reps, int field)
{
    double v[64];
    int i;

    for (i = 0; i < reps; i++)
        v[i] = field == 0   ? runs[i].gbps
               : field == 1 ? runs[i].cpu_ms_gb
               : field == 2 ? runs[i].srv_ms_gb
               : field == 3 ? runs[i].faults_mb
                            : runs[i].srv_faults_mb;
    return bench_median(v, (size_t)reps);
}

static void measure_row(row_t *row)
{
    run_t runs[J_COUNT][64];
    double min_s = row->batch > 1 ? O.rep_s : O.single_s;
    uint64_t req_bytes = (uint64_t)row->size * row->batch;
    /* depth + 1 requests at least, so that the pipeline is measured full; but no
     * more than 512 MiB per rep (or depth requests), to bound the run time. */
    uint64_t min_reqs = (uint64_t)O.depth + 1;
    int rep, k;

    if (min_reqs * req_bytes > (512ull << 20))
        min_reqs = (512ull << 20) / req_bytes;
    if (min_reqs < (uint64_t)O.depth)
        min_reqs = (uint64_t)O.depth;
    memset(runs, 0, sizeof(runs));
    for (rep = 0; rep < O.reps; rep++)
        for (k = 0; k < J_COUNT; k++) {
            if (!(O.only & (1u << k)))
                continue;
            runs[k][rep] = run_job((job_kind_t)k, row->size, row->batch, O.depth, min_s, min_reqs);
            if (!bench_daemon_alive(&D))
                bench_fail("kvcd died during %s of %zu MiB chunks", job_name[k], row->size >> 20);
        }
    for (k = 0; k < J_COUNT; k++) {
        row->med[k].gbps = median_of(runs[k], O.reps, 0);
        row->med[k].cpu_ms_gb = median_of(runs[k], O.reps, 1);
        row->med[k].srv_ms_gb = median_of(runs[k], O.reps, 2);
        row->med[k].faults_mb = median_of(runs[k], O.reps, 3);
        row->med[k].srv_faults_mb = median_of(runs[k], O.reps, 4);
    }
}

/* v with `decimals` decimals, or "-" when v was not measured. */
static const char *num(char *buf, size_t len, int decimals, double v)
{
    if (!(v > 0) || v > 1e12)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%.*f", decimals, v);
    return buf;
}

static int lat_measured(const lat_t *lat)
{
    return lat[1].med_us > 0;
}

static void print_table(const row_t *rows, size_t nrows, const lat_t *lat, size_t nlat)
{
    static const char *const ops[2] = {"store", "load"};
    double ping = lat[1].med_us;
    char b[10][32];
    size_t i;
    int op;

    if (O.csv) {
        printf("section,op,chunk_mib,batch,raw_gbps,kvcd_gbps,kvcd_over_raw,memcpy_gbps,"
               "kvcd_over_memcpy,raw_cpu_ms_per_gb,kvcd_cpu_ms_per_gb,"
               "kvcd_daemon_cpu_ms_per_gb,raw_faults_per_mb,kvcd_faults_per_mb,"
               "kvcd_daemon_faults_per_mb\n");
        for (i = 0; i < nrows; i++)
            for (op = 0; op < 2; op++) {
                const run_t *raw = &rows[i].med[op ? J_RAW_LOAD : J_RAW_STORE];
                const run_t *kv = &rows[i].med[op ? J_KVCD_LOAD : J_KVCD_STORE];

                printf("throughput,%s,%zu,%zu,%.3f,%.3f,%.3f,%.3f,%.3f,%.0f,%.0f,%.0f,%.1f,"
                       "%.1f,%.2f\n",
                       ops[op], rows[i].size >> 20, rows[i].batch, raw->gbps, kv->gbps,
                       raw->gbps > 0 ? kv->gbps / raw->gbps : 0, rows[i].memcpy_gbps,
                       kv->gbps / rows[i].memcpy_gbps, raw->cpu_ms_gb, kv->cpu_ms_gb, kv->srv_ms_gb,
                       raw->faults_mb, kv->faults_mb, kv->srv_faults_mb);
            }
        if (lat_measured(lat)) {
            printf("section,name,median_us,p99_us,median_over_ping\n");
            for (i = 0; i < nlat; i++)
                printf("latency,%s,%.1f,%.1f,%.2f\n", lat[i].name, lat[i].med_us, lat[i].p99_us,
                       lat[i].med_us / ping);
        }
        return;
    }

    printf("\nkvcd frames over ipc://: %.3g GiB L1 (%s), %d workers, %d request%s in "
           "flight, median of %d rep%s\n",
           O.l1_gb, O.mlock ? "--l1-mlock: pre-faulted" : "not pre-faulted", O.workers, O.depth,
           O.depth > 1 ? "s" : "", O.reps, O.reps > 1 ? "s" : "");
    if (O.malloc_keep)
        printf("glibc malloc tuned in both processes: GLIBC_TUNABLES=%s\n", MALLOC_KEEP);
    if (O.client_keep)
        printf("client: kvcd_client_keep_memory() (received frames reuse memory)\n");
    printf("GB/s = 1e9 bytes/s; cpu = CPU ms per GB moved, client + server (kvcd: daemon "
           "share in brackets);\nflt = minor page faults per MB moved, client + server "
           "(256 = every byte landed on a fresh 4 KiB page)\n\n");
    printf("%-5s %5s %5s | %8s %8s %6s | %7s %7s | %7s %12s | %5s %5s\n", "op", "chunk", "batch",
           "raw GB/s", "kvcd", "k/raw", "memcpy", "k/mcpy", "raw cpu", "kvcd cpu", "r flt",
           "k flt");
    printf("%.*s\n", 98,
           "------------------------------------------------------------"
           "------------------------------------------------------------");
    for (i = 0; i < nrows; i++)
        for (op = 0; op < 2; op++) {
            const run_t *raw = &rows[i].med[op ? J_RAW_LOAD : J_RAW_STORE];
            const run_t *kv = &rows[i].med[op ? J_KVCD_LOAD : J_KVCD_STORE];
            char chunk[32], kcpu[48];

            snprintf(chunk, sizeof(chunk), "%zuM", rows[i].size >> 20);
            if (kv->gbps > 0)
                snprintf(kcpu, sizeof(kcpu), "%.0f (%.0f)", kv->cpu_ms_gb, kv->srv_ms_gb);
            else
                snprintf(kcpu, sizeof(kcpu), "-");
            printf("%-5s %5s %5zu | %8s %8s %5sx | %7s %6sx | %7s %12s | %5s %5s\n", ops[op], chunk,
                   rows[i].batch, num(b[0], 32, 2, raw->gbps), num(b[1], 32, 2, kv->gbps),
                   num(b[2], 32, 2, raw->gbps > 0 ? kv->gbps / raw->gbps : 0),
                   num(b[3], 32, 2, rows[i].memcpy_gbps),
                   num(b[4], 32, 2, kv->gbps / rows[i].memcpy_gbps),
                   num(b[5], 32, 0, raw->cpu_ms_gb), kcpu,
                   raw->gbps > 0 ? num(b[6], 32, 0, raw->faults_mb + 0.5) : "-",
                   kv->gbps > 0 ? num(b[7], 32, 0, kv->faults_mb + 0.5) : "-");
        }

    if (first_pass_gbps > 0)
        printf("(untimed warm-up, the first STORE pass over all of L1: %.2f GB/s)\n",
               first_pass_gbps);

    if (lat_measured(lat)) {
        printf("\n%-20s %10s %10s %12s   (%d iterations, interleaved)\n", "latency", "median us",
               "p99 us", "median/PING", O.lat_iters);
        printf("%.*s\n", 55, "-------------------------------------------------------");
        for (i = 0; i < nlat; i++)
            printf("%-20s %10.1f %10.1f %11.2fx\n", lat[i].name, lat[i].med_us, lat[i].p99_us,
                   lat[i].med_us / ping);
    }

    printf("\ntargets: frame store/load >= 0.80x raw ZeroMQ; LOOKUP of 1000 keys <= 2x PING\n");
    for (i = 0; i < nrows; i++)
        for (op = 0; op < 2; op++) {
            double raw = rows[i].med[op ? J_RAW_LOAD : J_RAW_STORE].gbps;
            double kv = rows[i].med[op ? J_KVCD_LOAD : J_KVCD_STORE].gbps;

            if (raw > 0 && kv > 0)
                printf("  %-5s %2zu MiB x%-3zu %.2fx %s\n", ops[op], rows[i].size >> 20,
                       rows[i].batch, kv / raw, kv / raw >= 0.8 ? "met" : "MISSED");
        }
    if (lat_measured(lat))
        printf("  LOOKUP 1000 keys %.2fx PING %s\n", lat[4].med_us / ping,
               lat[4].med_us / ping <= 2.0 ? "met" : "MISSED");
}

/* ---- latency ---- */

static void measure_latency(lat_t *lat)
{
    int iters = O.lat_iters, warm = iters / 10 + 10, it, k;
    double *s[5], t;
    hash8_t *hb = calloc(LOOKUP_KEYS, sizeof(hash8_t));
    kvcd_bytes_t *h = calloc(LOOKUP_KEYS, sizeof(kvcd_bytes_t));
    uint8_t *present = calloc(LOOKUP_KEYS, 1);
    size_t prefix;
    int rc;

    for (k = 0; k < 5; k++)
        s[k] = calloc((size_t)iters, sizeof(double));
    if (!hb || !h || !present || !s[0] || !s[1] || !s[2] || !s[3] || !s[4])
        bench_fail("out of memory");
    lat[0].name = "raw zmq round trip";
    lat[1].name = "PING";
    lat[2].name = "LOOKUP 1 key";
    lat[3].name = "LOOKUP 100 keys";
    lat[4].name = "LOOKUP 1000 keys";

    /* 1000 present keys of 4 KiB each (one STORE) */
    kvcd_check_store(kvcd_send_store(LOOKUP_KEY, LOOKUP_KEYS, LOOKUP_VALUE), LOOKUP_KEYS);
    make_hashes(LOOKUP_KEY, 1, LOOKUP_KEYS, hb, h);

    for (it = -warm; it < iters; it++) {
        double d[5];

        t = bench_now();
        raw_send(RAW_PING, (uint64_t)(it + warm), 0, 0, 0, 0);
        raw_recv((uint64_t)(it + warm), RAW_PING, 0, 0, 0);
        d[0] = bench_now() - t;

        t = bench_now();
        rc = kvcd_client_ping(KC, NULL, NULL, 0);
        d[1] = bench_now() - t;
        if (rc != 0)
            bench_fail("PING: %s", kvcd_strerror(rc));

        t = bench_now();
        rc = kvcd_client_lookup(KC, &kbase, h, 1, &prefix, present);
        d[2] = bench_now() - t;
        if (rc != 0 || prefix != 1)
            bench_fail("LOOKUP 1: %s, prefix %zu", kvcd_strerror(rc), prefix);

        t = bench_now();
        rc = kvcd_client_lookup(KC, &kbase, h, 100, &prefix, present);
        d[3] = bench_now() - t;
        if (rc != 0 || prefix != 100)
            bench_fail("LOOKUP 100: %s, prefix %zu", kvcd_strerror(rc), prefix);

        t = bench_now();
        rc = kvcd_client_lookup(KC, &kbase, h, LOOKUP_KEYS, &prefix, present);
        d[4] = bench_now() - t;
        if (rc != 0 || prefix != LOOKUP_KEYS)
            bench_fail("LOOKUP %d: %s, prefix %zu", LOOKUP_KEYS, kvcd_strerror(rc), prefix);

        if (it >= 0)
            for (k = 0; k < 5; k++)
                s[k][it] = d[k] * 1e6;
    }
    for (k = 0; k < 5; k++) {
        lat[k].med_us = bench_median(s[k], (size_t)iters);
        lat[k].p99_us = bench_percentile(s[k], (size_t)iters, 99.0);
        free(s[k]);
    }
    free(hb);
    free(h);
    free(present);
}

/* ---- checks at the end ---- */

static uint64_t status_counter(json_t *st, const char *name)
{
    json_t *v = json_object_get(json_object_get(st, "counters"), name);

    if (!json_is_integer(v))
        bench_fail("STATUS: no counter %s", name);
    return (uint64_t)json_integer_value(v);
}

static void check_status(void)
{
    static const char *const zero[] = {"errors", "store_nospace", "load_misses", "dropped_replies"};
    json_error_t je;
    char *text;
    json_t *st;
    size_t i;
    int rc = kvcd_client_status(KC, &text);

    if (rc != 0)
        bench_fail("STATUS: %s", kvcd_strerror(rc));
    st = json_loads(text, 0, &je);
    free(text);
    if (!st)
        bench_fail("STATUS: not JSON: %s", je.text);
    for (i = 0; i < sizeof(zero) / sizeof(zero[0]); i++) {
        json_t *v = json_object_get(json_object_get(st, "counters"), zero[i]);

        if (v && json_integer_value(v) != 0)
            bench_fail("STATUS: counter %s is %" JSON_INTEGER_FORMAT ", want 0", zero[i],
                       json_integer_value(v));
    }
    if (O.verbose)
        fprintf(stderr,
                "kvcd: %" PRIu64 " requests, %" PRIu64 " stores, %" PRIu64 " evictions, %" PRIu64
                " GB loaded\n",
                status_counter(st, "requests"), status_counter(st, "stores"),
                status_counter(st, "evictions"),
                (uint64_t)(status_counter(st, "load_bytes") / 1000000000u));
    json_decref(st);
}

/* ---- main ---- */

static void usage(FILE *f)
{
    fprintf(f, "Usage: bench_frames [OPTIONS] [KVCD_BINARY]\n"
               "Start kvcd on a private ipc:// socket and compare its frame STORE/LOAD throughput\n"
               "with raw ZeroMQ and memcpy, and LOOKUP latency with PING. The binary comes from\n"
               "the argument, else $KVCD_BIN, else build/kvcd.\n"
               "\n"
               "  --sizes LIST     chunk sizes in MiB, comma separated (default 1,4,16)\n"
               "  --batch N        chunks per STORE/LOAD request (default 16)\n"
               "  --no-single      skip the single-chunk (batch 1) rows\n"
               "  --depth N        requests in flight (default 2)\n"
               "  --reps N         timed repetitions per figure, median reported (default 3)\n"
               "  --time S         minimum seconds per repetition (default 0.25; single-chunk\n"
               "                   rows 0.6 of it)\n"
               "  --latency N      latency iterations (default 2000)\n"
               "  --l1-gb G        kvcd --l1-size-gb (default 1: holds what is in flight\n"
               "                   and the load set of 16 x 16 MiB; written once before timing)\n"
               "  --workers N      kvcd --max-workers (default 2)\n"
               "  --no-mlock       do not pass --l1-mlock (L1 then starts unfaulted)\n"
               "  --malloc-keep    run this program and kvcd with glibc malloc tuned to keep\n"
               "                   freed memory (one arena, no trimming, no mmap below 32 MiB),\n"
               "                   so that received frames reuse warm pages instead of faulting\n"
               "                   in fresh ones; an experiment, not kvcd's default\n"
               "  --client-keep    call kvcd_client_keep_memory() in this program (the C\n"
               "                   client's opt-in: received LOAD frames reuse memory)\n"
               "  --only LIST      run only these parts (for profiling): raw-store, kvcd-store,\n"
               "                   raw-load, kvcd-load, latency, comma separated\n"
               "  --quick          smoke run: 1 rep, short runs, 200 latency iterations, L1\n"
               "                   not written before timing\n"
               "  --csv            print CSV instead of the table\n"
               "  -v, --verbose    print every run on stderr\n");
}

#define ONLY_LATENCY (1u << J_COUNT)

static unsigned parse_only(const char *arg)
{
    static const char *const names[J_COUNT + 1] = {"raw-store", "kvcd-store", "raw-load",
                                                   "kvcd-load", "latency"};
    unsigned mask = 0;
    const char *p = arg;
    size_t len, k;

    while (*p) {
        len = strcspn(p, ",");
        for (k = 0; k <= J_COUNT; k++)
            if (strlen(names[k]) == len && strncmp(p, names[k], len) == 0)
                break;
        if (k > J_COUNT) {
            fprintf(stderr, "bench_frames: --only: unknown part in '%s'\n", arg);
            exit(2);
        }
        mask |= 1u << k;
        p += len;
        if (*p)
            p++;
    }
    return mask;
}

static void parse_args(int argc, char **argv)
{
    static const struct option lo[] = {
        {"sizes", required_argument, NULL, 's'},
        {"batch", required_argument, NULL, 'b'},
        {"no-single", no_argument, NULL, 'S'},
        {"depth", required_argument, NULL, 'd'},
        {"reps", required_argument, NULL, 'r'},
        {"time", required_argument, NULL, 't'},
        {"latency", required_argument, NULL, 'L'},
        {"l1-gb", required_argument, NULL, 'g'},
        {"workers", required_argument, NULL, 'w'},
        {"quick", no_argument, NULL, 'q'},
        {"csv", no_argument, NULL, 'c'},
        {"verbose", no_argument, NULL, 'v'},
        {"no-mlock", no_argument, NULL, 'M'},
        {"only", required_argument, NULL, 'o'},
        {"malloc-keep", no_argument, NULL, 'K'},
        {"client-keep", no_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *env = getenv("KVCD_BIN");
    int c, reps = 0, lat = 0;
    double t = 0, l1 = 0;

    O.nsizes = bench_parse_sizes("1,4,16", O.sizes, MAX_SIZES);
    O.batch = 16;
    O.depth = 2;
    O.single = 1;
    O.workers = 2;
    O.mlock = 1;
    O.only = ~0u;
    O.bin = env && *env ? env : "build/kvcd";
    while ((c = getopt_long(argc, argv, "vh", lo, NULL)) != -1) {
        switch (c) {
        case 's':
            O.nsizes = bench_parse_sizes(optarg, O.sizes, MAX_SIZES);
            if (!O.nsizes) {
                fprintf(stderr, "bench_frames: --sizes: expected MiB like 1,4,16, got '%s'\n",
                        optarg);
                exit(2);
            }
            break;
        case 'b':
            O.batch = atoi(optarg);
            break;
        case 'S':
            O.single = 0;
            break;
        case 'd':
            O.depth = atoi(optarg);
            break;
        case 'r':
            reps = atoi(optarg);
            break;
        case 't':
            t = atof(optarg);
            break;
        case 'L':
            lat = atoi(optarg);
            break;
        case 'g':
            l1 = atof(optarg);
            break;
        case 'w':
            O.workers = atoi(optarg);
            break;
        case 'q':
            O.quick = 1;
            break;
        case 'M':
            O.mlock = 0;
            break;
        case 'C':
            O.client_keep = 1;
            break;
        case 'K':
            O.malloc_keep = 1;
            break;
        case 'o':
            O.only = parse_only(optarg);
            break;
        case 'c':
            O.csv = 1;
            break;
        case 'v':
            O.verbose = 1;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind < argc)
        O.bin = argv[optind++];
    if (optind < argc) {
        usage(stderr);
        exit(2);
    }
    O.reps = reps > 0 ? reps : O.quick ? 1 : 3;
    O.rep_s = t > 0 ? t : O.quick ? 0.05 : 0.25;
    O.single_s = O.rep_s * 0.6;
    O.lat_iters = lat > 0 ? lat : O.quick ? 200 : 2000;
    O.l1_gb = l1 > 0 ? l1 : 1.0;
    if (O.batch < 1 || O.batch > MAX_BATCH || O.depth < 1 || O.depth > MAX_DEPTH || O.reps > 64 ||
        O.workers < 1 || O.lat_iters > 1000000) {
        fprintf(stderr,
                "bench_frames: --batch 1..%d, --depth 1..%d, --reps 1..64, "
                "--workers >= 1, --latency <= 1000000\n",
                MAX_BATCH, MAX_DEPTH);
        exit(2);
    }
    if (O.batch == 1)
        O.single = 0;
}

/* glibc reads its tunables at start: set them and run this program again (the
 * daemon inherits the environment). */
static void malloc_keep_reexec(char **argv)
{
    const char *cur = getenv("GLIBC_TUNABLES");

    if (cur && strcmp(cur, MALLOC_KEEP) == 0)
        return;
    setenv("GLIBC_TUNABLES", MALLOC_KEEP, 1);
    execv("/proc/self/exe", argv);
    bench_fail("cannot re-execute with GLIBC_TUNABLES: %s", strerror(errno));
}

int main(int argc, char **argv)
{
    row_t rows[2 * MAX_SIZES];
    lat_t lat[5];
    char l1arg[32], wkarg[16], reqarg[32], framearg[32];
    size_t i, nrows = 0, maxsize = 0;
    int rc;

    t_start = bench_now();
    parse_args(argc, argv);
    if (O.malloc_keep)
        malloc_keep_reexec(argv);
    if (O.client_keep && kvcd_client_keep_memory() != 0)
        bench_fail("kvcd_client_keep_memory: not supported by this C library");
    for (i = 0; i < O.nsizes; i++)
        if (O.sizes[i] > maxsize)
            maxsize = O.sizes[i];
    /* L1 holds the load set and the stores in flight, below the high watermark */
    if ((double)maxsize * (LOADSET + O.batch * O.depth) > O.l1_gb * (double)(1ull << 30) * 0.9)
        bench_fail("L1 of %.3g GiB is too small for %d + %d x %d chunks of %zu MiB; raise --l1-gb",
                   O.l1_gb, LOADSET, O.batch, O.depth, maxsize >> 20);
    bench_install_cleanup(O.quick ? 120 : 600);

    /* Pools first, so memcpy runs on an idle machine. */
    pool_len = (size_t)O.batch * maxsize;
    if (pool_len < LOADSET * maxsize)
        pool_len = LOADSET * maxsize;
    if (pool_len < POOL_MIN)
        pool_len = POOL_MIN;
    src_pool = map_pool(pool_len);
    srv_pool = map_pool(pool_len);
    bench_fill_random(src_pool, pool_len, 1);
    memset(srv_pool, 0, pool_len);
    for (i = 0; i < O.nsizes; i++) {
        rows[nrows].size = O.sizes[i];
        rows[nrows].batch = (size_t)O.batch;
        nrows++;
        if (O.single) {
            rows[nrows].size = O.sizes[i];
            rows[nrows].batch = 1;
            nrows++;
        }
    }
    for (i = 0; i < nrows; i++) {
        double v[64];
        int r;

        if (i > 0 && rows[i].size == rows[i - 1].size) {
            rows[i].memcpy_gbps = rows[i - 1].memcpy_gbps;
            continue;
        }
        for (r = 0; r < O.reps; r++)
            v[r] = bench_memcpy(rows[i].size, O.quick ? 0.03 : 0.1);
        rows[i].memcpy_gbps = bench_median(v, (size_t)O.reps);
        if (O.verbose)
            fprintf(stderr, "  memcpy     %5zu MiB      %6.2f GB/s\n", rows[i].size >> 20,
                    rows[i].memcpy_gbps);
    }
    bench_fill_random(srv_pool, pool_len, 2);

    /* The daemon, then the raw pair in the same temp dir. */
    if (access(O.bin, X_OK) != 0)
        bench_fail("%s: %s (build it with `make`, or pass the path)", O.bin, strerror(errno));
    if (bench_make_dir(&D) != 0)
        bench_fail("cannot create a temp dir: %s", strerror(errno));
    snprintf(l1arg, sizeof(l1arg), "%g", O.l1_gb);
    snprintf(wkarg, sizeof(wkarg), "%d", O.workers);
    {
        /* a batch, the load set (one STORE of LOADSET chunks) or the lookup keys */
        size_t req = (size_t)(O.batch > LOADSET ? O.batch : LOADSET) * maxsize;

        if (req < (size_t)LOOKUP_KEYS * LOOKUP_VALUE)
            req = (size_t)LOOKUP_KEYS * LOOKUP_VALUE;
        snprintf(reqarg, sizeof(reqarg), "%zu", (size_t)(req / BENCH_MIB + 1));
        snprintf(framearg, sizeof(framearg), "%zu", (size_t)(maxsize / BENCH_MIB));
    }
    {
        /* --l1-mlock faults the arena in at start, which is the state of a daemon
         * that has been running for a while; without it the first pass over L1
         * measures the kernel's page faults, not kvcd. */
        const char *args[] = {"--l1-size-gb",
                              l1arg,
                              "--max-workers",
                              wkarg,
                              "--max-frame-mb",
                              framearg,
                              "--max-request-mb",
                              reqarg,
                              "--log-level",
                              "warning",
                              O.mlock ? "--l1-mlock" : NULL,
                              NULL};

        if (bench_daemon_start(&D, O.bin, args, 20000) != 0) {
            if (!O.mlock)
                bench_fail("kvcd did not start (%s)", O.bin);
            fprintf(stderr, "bench: kvcd did not start with --l1-mlock (RLIMIT_MEMLOCK?); "
                            "retrying without it\n");
            O.mlock = 0;
            args[10] = NULL;
            if (bench_daemon_start(&D, O.bin, args, 20000) != 0)
                bench_fail("kvcd did not start (%s)", O.bin);
        }
    }
    if (O.verbose)
        fprintf(stderr, "  kvcd pid %d on %s%s\n", (int)D.pid, D.endpoint,
                O.mlock ? " (--l1-mlock)" : "");
    rc = kvcd_client_connect(D.endpoint, TIMEOUT_MS, &KC);
    if (rc != 0)
        bench_fail("connect %s: %s", D.endpoint, kvcd_strerror(rc));
    kvcd_keyset(&kbase, MODEL, 1, 0, 0, NULL);
    raw_start(D.dir);

    /* Write all of L1 once before timing (stores of the largest size until it
     * evicts). Even pre-faulted memory is slow on its first write from user space
     * on some virtual machines; a long-running daemon has long paid that. */
    if (!O.quick && (O.only & ((1u << J_KVCD_STORE) | (1u << J_KVCD_LOAD)))) {
        uint64_t ids[MAX_DEPTH], issued = 0, done = 0, total;
        double t0 = bench_now();

        total = (uint64_t)(O.l1_gb * (double)(1ull << 30) / ((double)maxsize * O.batch)) + 1;
        for (; done < total; done++) {
            for (; issued < total && issued < done + (uint64_t)O.depth; issued++)
                ids[issued % MAX_DEPTH] =
                    kvcd_send_store(next_key + issued * O.batch, (size_t)O.batch, maxsize);
            kvcd_check_store(ids[done % MAX_DEPTH], (size_t)O.batch);
        }
        next_key += total * (uint64_t)O.batch;
        first_pass_gbps = (double)total * O.batch * (double)maxsize / BENCH_GB / (bench_now() - t0);
        if (O.verbose)
            fprintf(stderr, "  first pass over L1: %.2f GB/s  [at %.1f s]\n", first_pass_gbps,
                    bench_now() - t_start);
    }
    /* With malloc tuned to keep memory, grow every receiving heap to its high-water
     * mark once, so that no timed run pays for growing it while another does not.
     * (With glibc's defaults memory goes back to the kernel anyway.) */
    if (O.malloc_keep) {
        int k;

        hash_chunks(maxsize);
        for (k = 0; k < J_COUNT; k++)
            if (O.only & (1u << k))
                run_job((job_kind_t)k, maxsize, (size_t)O.batch, O.depth, 0, O.depth + 1);
    }

    for (i = 0; i < nrows; i++) {
        hash_chunks(rows[i].size);
        measure_row(&rows[i]);
    }
    memset(lat, 0, sizeof(lat));
    if (O.only & ONLY_LATENCY)
        measure_latency(lat);
    check_status();

    raw_stop();
    kvcd_client_close(KC);
    KC = NULL;
    rc = bench_daemon_stop(&D, 10000);
    if (rc != 0)
        bench_fail("kvcd did not exit cleanly on SIGTERM (status %d)", rc);
    bench_cleanup_now();

    print_table(rows, nrows, lat, 5);
    if (!O.csv)
        printf("\nwhole run %.1f s; every LOAD reply checked, a sample of chunks "
               "checksummed, daemon exited 0\n",
               bench_now() - t_start);
    munmap(src_pool, pool_len);
    munmap(srv_pool, pool_len);
    return 0;
}
