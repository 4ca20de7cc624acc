/*
 * bench_shm.c - kvcd's shared-memory data plane next to memcpy.
 *
 * One run measures single-thread memcpy bandwidth over a working set larger
 * than the caches (the physical reference), then, for each threadpool size
 * asked for (--workers, default 1 and 2), starts the real kvcd on a private
 * ipc:// socket, registers one segment and measures for each chunk size
 * (default 1, 4 and 16 MiB), in batches of 16 chunks per request:
 *
 *  - STORE_SHM: every request stores `batch` chunks from the segment under
 *    fresh keys (a duplicate would not be copied), so L1 keeps evicting, as a
 *    store-heavy engine makes it;
 *  - LOAD_SHM: every request loads a set of `batch` stored chunks into its own
 *    area of the segment.
 *
 * Requests are pipelined (--depth in flight), each in-flight slot with its own
 * area of the segment. Repetitions alternate store and load; the median is
 * reported. Every rep is checked: per-key results, lengths, and a checksum of
 * a sample of chunks (loaded chunks against their source; stored chunks loaded
 * back). Any error exits non-zero; the daemon and its temp dir are removed on
 * every exit path.
 *
 * Usage: bench_shm [options] [KVCD_BINARY]   (binary also from $KVCD_BIN;
 * default build/kvcd). See usage().
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <xxhash.h>

#include "protocol/client.h"
#include "tests/bench/bench_util.h"

#define MAX_SIZES 8
#define MAX_WORKERS 8
#define MAX_DEPTH 8
#define MAX_BATCH 256
#define POOL_MIN (256ull << 20)
#define MODEL "bench/shm"
#define TIMEOUT_MS 30000

typedef struct {
    size_t sizes[MAX_SIZES];
    size_t nsizes;
    int workers[MAX_WORKERS];
    size_t nworkers;
    int batch;
    int depth;
    int reps;
    double rep_s;
    double l1_gb;
    int mlock;
    int csv;
    int quick;
    int verbose;
    const char *bin;
} opts_t;

static opts_t O;
static bench_daemon_t D;
static kvcd_client_t *KC;
static kvcd_segment_t *SEG;
static kvcd_key_t KBASE;
static uint64_t next_key = 1;

/* ---- memcpy reference (as bench_frames measures it) ---- */

static double bench_memcpy(uint8_t *src, uint8_t *dst, size_t pool, size_t size, double min_s)
{
    size_t nchunks = pool / size, k = 0;
    double t0 = bench_now(), t;
    uint64_t bytes = 0;

    do {
        memcpy(dst + k * size, src + k * size, size);
        bytes += size;
        k = (k + 1) % nchunks;
        t = bench_now();
    } while (t - t0 < min_s || bytes < pool);
    return (double)bytes / BENCH_GB / (t - t0);
}

/* ---- segment layout ----
 *
 * Two windows of W bytes, W = max(256 MiB, depth * batch * largest chunk), so
 * that neither side of a copy sits in the caches (the memcpy reference does
 * not either): [0, W) holds store sources, [W, 2W) receives loads. Request k
 * of a run uses area k mod (W / (batch * size)) of its window, so requests in
 * flight never share an area. Likewise the load set is 256 MiB of objects (at
 * least one batch), loaded a batch at a time in turn.
 */

static size_t W;

static uint8_t *seg_at(size_t off)
{
    return (uint8_t *)SEG->base + off;
}

static void hashes_for(uint64_t first, size_t n, uint8_t (*hb)[8], kvcd_bytes_t *h)
{
    size_t i;
    int k;

    for (i = 0; i < n; i++) {
        uint64_t v = first + i;

        for (k = 0; k < 8; k++)
            hb[i][k] = (uint8_t)(v >> (56 - 8 * k));
        h[i].ptr = hb[i];
        h[i].len = 8;
    }
}

typedef struct {
    uint64_t id;
    uint64_t first;      /* first key */
    size_t src;          /* STORE_SHM: offset of the source area */
    size_t dst;          /* LOAD_SHM: offset of the destination area */
    uint8_t hb[MAX_BATCH][8];
    kvcd_bytes_t h[MAX_BATCH];
    uint64_t off[MAX_BATCH], len[MAX_BATCH];
} req_t;

static req_t REQ[MAX_DEPTH];

/* Area k of a window for batches of n chunks of size bytes. */
static size_t area(size_t window, uint64_t k, size_t n, size_t size)
{
    size_t per = n * size;

    return window + (size_t)(k % (W / per)) * per;
}

static void send_req(uint32_t op, req_t *r, uint64_t first, size_t at, size_t n, size_t size)
{
    kvcd_shm_args_t shm;
    size_t j;
    int rc;

    r->first = first;
    r->src = op == KVCD_OP_STORE_SHM ? at : 0;
    r->dst = op == KVCD_OP_LOAD_SHM ? at : 0;
    hashes_for(first, n, r->hb, r->h);
    for (j = 0; j < n; j++) {
        r->off[j] = at + j * size;
        r->len[j] = size;
    }
    memset(&shm, 0, sizeof(shm));
    shm.segment = SEG->id;
    shm.offsets = r->off;
    shm.lengths = r->len;
    rc = kvcd_client_send_shm(KC, op, &KBASE, r->h, n, &shm, &r->id);
    if (rc != 0)
        bench_fail("send %s: %s", kvcd_op_name(op), kvcd_strerror(rc));
}

static void check_reply(uint32_t op, req_t *r, size_t n, size_t size)
{
    const kvcd_reply_hdr_t *h;
    kvcd_reply_t *rep;
    size_t j;
    int rc = kvcd_client_wait(KC, r->id, TIMEOUT_MS, &rep);

    if (rc != 0)
        bench_fail("%s: no reply: %s", kvcd_op_name(op), kvcd_strerror(rc));
    h = kvcd_reply_hdr(rep);
    if (h->err != 0)
        bench_fail("%s: %s: %s", kvcd_op_name(op), h->ename, h->msg);
    if (h->nresults != n)
        bench_fail("%s: %zu results for %zu keys", kvcd_op_name(op), h->nresults, n);
    for (j = 0; j < n; j++) {
        if (h->results[j] != 0)
            bench_fail("%s: key %zu: %s", kvcd_op_name(op), j, kvcd_errname(h->results[j]));
        if (op == KVCD_OP_LOAD_SHM && (!h->lengths || h->lengths[j] != size))
            bench_fail("LOAD_SHM: key %zu: wrong length", j);
    }
    kvcd_reply_free(rep);
}

typedef struct {
    double gbps;
    uint64_t requests;
    double faults_mb;   /* the daemon's minor page faults per MB moved */
    double cpu_ms_gb;   /* the daemon's CPU time (all threads) per GB moved */
} run_t;

/* The load set: nsets batches of keys from load_first on; batch s was stored
 * from source area s. */
static uint64_t load_first;
static size_t nsets;

/* Pipelined STORE_SHM (fresh keys from next_key) or LOAD_SHM (the load set,
 * a batch at a time) for at least min_s, or `count` requests when min_s is 0. */
static run_t run(uint32_t op, size_t size, size_t n, double min_s, uint64_t count)
{
    uint64_t issued = 0, done = 0;
    double f0 = bench_proc_faults(D.pid), c0 = bench_proc_cpu(D.pid);
    double t0 = bench_now(), t = t0;
    run_t r;

    for (;;) {
        while (issued < done + (uint64_t)O.depth &&
               (min_s > 0 ? t - t0 < min_s || issued == 0 : issued < count)) {
            req_t *q = &REQ[issued % (uint64_t)O.depth];

            if (op == KVCD_OP_STORE_SHM) {
                send_req(op, q, next_key, area(0, issued, n, size), n, size);
                next_key += n;
            } else {
                send_req(op, q, load_first + (issued % nsets) * n, area(W, issued, n, size), n,
                         size);
            }
            issued++;
        }
        if (done == issued)
            break;
        check_reply(op, &REQ[done % (uint64_t)O.depth], n, size);
        done++;
        t = bench_now();
    }
    r.requests = done;
    r.gbps = (double)done * (double)n * (double)size / BENCH_GB / (t - t0);
    r.faults_mb = (bench_proc_faults(D.pid) - f0) / ((double)done * (double)n * (double)size / 1e6);
    r.cpu_ms_gb = (bench_proc_cpu(D.pid) - c0) * 1e3 /
                  ((double)done * (double)n * (double)size / BENCH_GB);
    return r;
}

/* (Re)store the load set: a duplicate where it survived, a copy where the
 * stores in between evicted it. Untimed. */
static void store_load_set(size_t size, size_t n)
{
    uint64_t saved = next_key, s;

    for (s = 0; s < nsets; s++) {
        next_key = load_first + s * n;
        send_req(KVCD_OP_STORE_SHM, &REQ[0], next_key, area(0, s, n, size), n, size);
        check_reply(KVCD_OP_STORE_SHM, &REQ[0], n, size);
    }
    next_key = saved;
}

static void same_bytes(const char *what, size_t a, size_t b, size_t size, size_t n)
{
    if (XXH3_64bits(seg_at(a), size) != XXH3_64bits(seg_at(b), size) ||
        XXH3_64bits(seg_at(a + (n - 1) * size), size) !=
            XXH3_64bits(seg_at(b + (n - 1) * size), size))
        bench_fail("%s: bytes differ (%zu MiB chunks)", what, size >> 20);
}

/* Every slot's last load holds its batch's source bytes. */
static void verify_loads(size_t size, size_t n)
{
    size_t s;

    for (s = 0; s < (size_t)O.depth; s++) {
        req_t *q = &REQ[s];
        uint64_t set = (q->first - load_first) / n;

        if (q->dst < W)
            continue; /* the slot was not used */
        same_bytes("LOAD_SHM", q->dst, area(0, set, n, size), size, n);
    }
}

/* Load the last stored batch back and compare it with its source. */
static void verify_stores(size_t size, size_t n, uint64_t stores)
{
    req_t *last = &REQ[(stores - 1) % (uint64_t)O.depth];
    size_t src = last->src, dst = area(W, 0, n, size);

    send_req(KVCD_OP_LOAD_SHM, &REQ[0], next_key - n, dst, n, size);
    check_reply(KVCD_OP_LOAD_SHM, &REQ[0], n, size);
    same_bytes("STORE_SHM", dst, src, size, n);
}

typedef struct {
    size_t size;
    int workers;
    double store_gbps, load_gbps;     /* medians */
    double memcpy_gbps;               /* median of the interleaved memcpy runs */
    double store_ratio, load_ratio;   /* medians of the per-repetition ratios */
    double store_cpu, load_cpu;       /* daemon CPU ms per GB, medians */
} row_t;

/* The memcpy reference pools, kept for the whole run so that memcpy can be
 * measured next to every repetition: on a shared machine the memory bandwidth
 * available moves by 2x within seconds, and a ratio of figures taken a minute
 * apart would measure that instead of kvcd. */
static uint8_t *mc_src, *mc_dst;
static size_t mc_pool;

static void usage(FILE *f)
{
    fprintf(f, "Usage: bench_shm [OPTIONS] [KVCD_BINARY]\n"
               "Start kvcd on a private ipc:// socket and measure STORE_SHM / LOAD_SHM through\n"
               "a registered shared-memory segment next to single-thread memcpy. The binary\n"
               "comes from the argument, else $KVCD_BIN, else build/kvcd.\n"
               "\n"
               "  --sizes LIST     chunk sizes in MiB, comma separated (default 1,4,16)\n"
               "  --batch N        chunks per request (default 16)\n"
               "  --depth N        requests in flight (default 2)\n"
               "  --workers LIST   kvcd --max-workers values, one daemon each (default 1,2)\n"
               "  --reps N         timed repetitions per figure, median reported (default 3)\n"
               "  --time S         minimum seconds per repetition (default 0.25)\n"
               "  --l1-gb G        kvcd --l1-size-gb (default 1)\n"
               "  --no-mlock       do not pass --l1-mlock\n"
               "  --quick          smoke run: 1 rep, short runs\n"
               "  --csv            print CSV instead of the table\n"
               "  -v, --verbose    print every run on stderr\n");
}

static void parse_args(int argc, char **argv)
{
    static const struct option lo[] = {
        {"sizes", required_argument, NULL, 's'},  {"batch", required_argument, NULL, 'b'},
        {"depth", required_argument, NULL, 'd'},  {"workers", required_argument, NULL, 'w'},
        {"reps", required_argument, NULL, 'r'},   {"time", required_argument, NULL, 't'},
        {"l1-gb", required_argument, NULL, 'l'},  {"no-mlock", no_argument, NULL, 'M'},
        {"quick", no_argument, NULL, 'q'},        {"csv", no_argument, NULL, 'c'},
        {"verbose", no_argument, NULL, 'v'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *env = getenv("KVCD_BIN");
    char *end;
    int c;

    O.nsizes = bench_parse_sizes("1,4,16", O.sizes, MAX_SIZES);
    O.workers[0] = 1;
    O.workers[1] = 2;
    O.nworkers = 2;
    O.batch = 16;
    O.depth = 2;
    O.reps = 3;
    O.rep_s = 0.25;
    O.l1_gb = 1.0;
    O.mlock = 1;
    O.bin = env && *env ? env : "build/kvcd";
    while ((c = getopt_long(argc, argv, "vh", lo, NULL)) != -1) {
        switch (c) {
        case 's':
            O.nsizes = bench_parse_sizes(optarg, O.sizes, MAX_SIZES);
            if (!O.nsizes) {
                fprintf(stderr, "bench_shm: --sizes: expected MiB like 1,4,16, got '%s'\n", optarg);
                exit(2);
            }
            break;
        case 'w': {
            const char *p = optarg;

            O.nworkers = 0;
            while (*p && O.nworkers < MAX_WORKERS) {
                long v = strtol(p, &end, 10);

                if (end == p || v < 1 || v > 64 || (*end && *end != ',')) {
                    fprintf(stderr, "bench_shm: --workers: expected a list like 1,2,4\n");
                    exit(2);
                }
                O.workers[O.nworkers++] = (int)v;
                p = *end ? end + 1 : end;
            }
            break;
        }
        case 'b':
            O.batch = atoi(optarg);
            break;
        case 'd':
            O.depth = atoi(optarg);
            break;
        case 'r':
            O.reps = atoi(optarg);
            break;
        case 't':
            O.rep_s = atof(optarg);
            break;
        case 'l':
            O.l1_gb = atof(optarg);
            break;
        case 'M':
            O.mlock = 0;
            break;
        case 'q':
            O.quick = 1;
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
        O.bin = argv[optind];
    if (O.batch < 1 || O.batch > MAX_BATCH || O.depth < 1 || O.depth > MAX_DEPTH ||
        O.reps < 1 || O.reps > 64 || O.rep_s <= 0 || O.l1_gb <= 0) {
        fprintf(stderr, "bench_shm: a numeric option is out of range\n");
        exit(2);
    }
    if (O.quick) {
        O.reps = 1;
        O.rep_s = 0.05;
    }
}

static void start_daemon(int workers, size_t maxsize)
{
    char l1arg[32], wkarg[16], framearg[32], segarg[32];
    const char *args[] = {"--l1-size-gb", l1arg,     "--max-workers", wkarg,
                          "--max-frame-mb", framearg, "--max-segment-gb", segarg,
                          "--log-level", "warning",   O.mlock ? "--l1-mlock" : NULL,
                          NULL};
    size_t segsize;
    int rc;

    W = (size_t)O.depth * (size_t)O.batch * maxsize;
    if (W < POOL_MIN)
        W = POOL_MIN;
    segsize = 2 * W;

    snprintf(l1arg, sizeof(l1arg), "%g", O.l1_gb);
    snprintf(wkarg, sizeof(wkarg), "%d", workers);
    snprintf(framearg, sizeof(framearg), "%zu", (size_t)(maxsize / BENCH_MIB));
    snprintf(segarg, sizeof(segarg), "%g", (double)segsize / (double)(1ull << 30) + 1);
    if (bench_make_dir(&D) != 0)
        bench_fail("cannot create a temp dir: %s", strerror(errno));
    if (bench_daemon_start(&D, O.bin, args, 20000) != 0) {
        if (!O.mlock)
            bench_fail("kvcd did not start (%s)", O.bin);
        fprintf(stderr, "bench_shm: kvcd did not start with --l1-mlock (RLIMIT_MEMLOCK?); "
                        "retrying without it\n");
        O.mlock = 0;
        args[10] = NULL;
        if (bench_daemon_start(&D, O.bin, args, 20000) != 0)
            bench_fail("kvcd did not start (%s)", O.bin);
    }
    rc = kvcd_client_connect(D.endpoint, TIMEOUT_MS, &KC);
    if (rc != 0)
        bench_fail("connect %s: %s", D.endpoint, kvcd_strerror(rc));
    rc = kvcd_client_segment_create(KC, segsize, &SEG);
    if (rc != 0)
        bench_fail("REGISTER_SEGMENT of %zu bytes: %s: %s", segsize, kvcd_strerror(rc),
                   kvcd_client_errmsg(KC));
    /* Fault the whole segment in on our side (an engine's segment is in use). */
    bench_fill_random(SEG->base, segsize, 11);
}

static void stop_daemon(void)
{
    int rc;

    rc = kvcd_client_segment_destroy(KC, SEG);
    SEG = NULL;
    if (rc != 0)
        bench_fail("UNREGISTER_SEGMENT: %s", kvcd_strerror(rc));
    kvcd_client_close(KC);
    KC = NULL;
    rc = bench_daemon_stop(&D, 10000);
    if (rc != 0)
        bench_fail("kvcd did not exit cleanly on SIGTERM (status %d)", rc);
    bench_cleanup_now();
}

static void measure(row_t *row)
{
    size_t size = row->size, n = (size_t)O.batch;
    double st[64], ld[64], mc[64], sr[64], lr[64], sc[64], lc[64];
    int r;

    /* Fresh source bytes for this size; the load set comes from them. */
    bench_fill_random(seg_at(0), W, 100 + size);
    nsets = (size_t)(POOL_MIN / (n * size));
    if (nsets < 1)
        nsets = 1;
    load_first = next_key;
    next_key += nsets * n;
    store_load_set(size, n);
    /* Untimed warm-up of both paths. */
    run(KVCD_OP_STORE_SHM, size, n, O.rep_s / 4, 0);
    store_load_set(size, n);
    run(KVCD_OP_LOAD_SHM, size, n, O.rep_s / 4, 0);
    for (r = 0; r < O.reps; r++) {
        double m1 = bench_memcpy(mc_src, mc_dst, mc_pool, size, O.quick ? 0.03 : 0.1);
        run_t s = run(KVCD_OP_STORE_SHM, size, n, O.rep_s, 0);
        run_t l;
        double m2;

        verify_stores(size, n, s.requests);
        store_load_set(size, n);
        l = run(KVCD_OP_LOAD_SHM, size, n, O.rep_s, 0);
        verify_loads(size, n);
        m2 = bench_memcpy(mc_src, mc_dst, mc_pool, size, O.quick ? 0.03 : 0.1);
        st[r] = s.gbps;
        ld[r] = l.gbps;
        mc[r] = (m1 + m2) / 2;
        sr[r] = s.gbps / m1;
        lr[r] = l.gbps / m2;
        sc[r] = s.cpu_ms_gb;
        lc[r] = l.cpu_ms_gb;
        if (O.verbose)
            fprintf(stderr, "  %2d workers %5zu MiB x%-3zu store %6.2f GB/s (%" PRIu64
                            " req, %.1f faults/MB)  load %6.2f GB/s (%" PRIu64
                            " req, %.1f faults/MB)  memcpy %.2f / %.2f GB/s  daemon cpu "
                            "%.0f / %.0f ms/GB\n",
                    row->workers, size >> 20, n, s.gbps, s.requests, s.faults_mb, l.gbps,
                    l.requests, l.faults_mb, m1, m2, s.cpu_ms_gb, l.cpu_ms_gb);
    }
    row->store_gbps = bench_median(st, (size_t)O.reps);
    row->load_gbps = bench_median(ld, (size_t)O.reps);
    row->memcpy_gbps = bench_median(mc, (size_t)O.reps);
    row->store_ratio = bench_median(sr, (size_t)O.reps);
    row->load_ratio = bench_median(lr, (size_t)O.reps);
    row->store_cpu = bench_median(sc, (size_t)O.reps);
    row->load_cpu = bench_median(lc, (size_t)O.reps);
}

int main(int argc, char **argv)
{
    row_t rows[MAX_SIZES * MAX_WORKERS];
    double memcpy_gbps[MAX_SIZES];
    size_t i, w, nrows = 0, maxsize = 0, pool;
    uint8_t *src, *dst;
    double t_start = bench_now();

    parse_args(argc, argv);
    bench_install_cleanup(O.quick ? 180 : 900);
    for (i = 0; i < O.nsizes; i++)
        if (O.sizes[i] > maxsize)
            maxsize = O.sizes[i];

    /* memcpy first, on an idle machine, over pools beyond the caches. */
    pool = (size_t)O.batch * maxsize;
    if (pool < POOL_MIN)
        pool = POOL_MIN;
    src = mmap(NULL, pool, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
               -1, 0);
    dst = mmap(NULL, pool, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
               -1, 0);
    if (src == MAP_FAILED || dst == MAP_FAILED)
        bench_fail("cannot map the memcpy pools: %s", strerror(errno));
    bench_fill_random(src, pool, 1);
    memset(dst, 0, pool);
    for (i = 0; i < O.nsizes; i++) {
        double v[64];
        int r;

        for (r = 0; r < O.reps; r++)
            v[r] = bench_memcpy(src, dst, pool, O.sizes[i], O.quick ? 0.03 : 0.1);
        memcpy_gbps[i] = bench_median(v, (size_t)O.reps);
        if (O.verbose)
            fprintf(stderr, "  memcpy     %5zu MiB      %6.2f GB/s\n", O.sizes[i] >> 20,
                    memcpy_gbps[i]);
    }
    mc_src = src;
    mc_dst = dst;
    mc_pool = pool;

    kvcd_keyset(&KBASE, MODEL, 1, 0, 0, NULL);
    for (w = 0; w < O.nworkers; w++) {
        start_daemon(O.workers[w], maxsize);
        if (O.verbose)
            fprintf(stderr, "  kvcd pid %d, %d workers, segment %" PRIu64 " of %zu MiB%s\n",
                    (int)D.pid, O.workers[w], SEG->id, SEG->size >> 20,
                    O.mlock ? " (--l1-mlock)" : "");
        /* Untimed, before any figure: write all of L1 once, as bench_frames does,
         * and have the daemon read and write every page of the segment once. An
         * engine registers its segment once and uses it for hours; the first
         * touch of a page through a new mapping costs a page fault (very slow
         * on some virtual machines), which kvcd pre-faults in the background
         * at registration, but cannot be sure it has finished here. */
        {
            size_t per = (size_t)O.batch * maxsize;
            uint64_t total = (uint64_t)(O.l1_gb * (double)(1ull << 30) / (double)per) + 1;
            double t0 = bench_now();

            if (total < W / per)
                total = W / per;
            bench_fill_random(seg_at(0), W, 7);
            run(KVCD_OP_STORE_SHM, maxsize, (size_t)O.batch, 0, total);
            load_first = next_key - (uint64_t)O.batch;
            nsets = 1;
            run(KVCD_OP_LOAD_SHM, maxsize, (size_t)O.batch, 0, W / per);
            if (O.verbose)
                fprintf(stderr, "  first pass over L1 and the segment: %.1f s\n",
                        bench_now() - t0);
        }
        for (i = 0; i < O.nsizes; i++) {
            rows[nrows].size = O.sizes[i];
            rows[nrows].workers = O.workers[w];
            measure(&rows[nrows]);
            nrows++;
        }
        stop_daemon();
    }

    if (O.csv) {
        printf("section,op,chunk_mib,batch,workers,shm_gbps,memcpy_gbps,shm_over_memcpy\n");
        for (i = 0; i < nrows; i++) {
            printf("shm,store,%zu,%d,%d,%.3f,%.3f,%.3f\n", rows[i].size >> 20, O.batch,
                   rows[i].workers, rows[i].store_gbps, rows[i].memcpy_gbps,
                   rows[i].store_ratio);
            printf("shm,load,%zu,%d,%d,%.3f,%.3f,%.3f\n", rows[i].size >> 20, O.batch,
                   rows[i].workers, rows[i].load_gbps, rows[i].memcpy_gbps, rows[i].load_ratio);
        }
        return 0;
    }
    printf("\nkvcd shared memory (STORE_SHM / LOAD_SHM): %.3g GiB L1%s, %d requests in "
           "flight, batches of %d, median of %d reps\n",
           O.l1_gb, O.mlock ? " (mlock)" : "", O.depth, O.batch, O.reps);
    printf("GB/s = 1e9 bytes/s; memcpy = one thread, same chunk size, beyond the caches,\n"
           "measured next to every repetition; shm/mcp = median of the per-repetition ratios;\n"
           "cpu = the daemon's CPU ms per GB moved (memcpy alone: 1000 / its GB/s)\n\n");
    printf("%-5s %5s %7s | %8s %8s %8s | %8s %8s\n", "op", "chunk", "workers", "shm GB/s",
           "memcpy", "shm/mcp", "cpu", "mcp cpu");
    printf("------------------------------------------------------------------\n");
    for (i = 0; i < nrows; i++) {
        int op;

        for (op = 0; op < 2; op++)
            printf("%-5s %4zuM %7d | %8.2f %8.2f %7.2fx | %8.0f %8.0f\n",
                   op ? "load" : "store", rows[i].size >> 20, rows[i].workers,
                   op ? rows[i].load_gbps : rows[i].store_gbps, rows[i].memcpy_gbps,
                   op ? rows[i].load_ratio : rows[i].store_ratio,
                   op ? rows[i].load_cpu : rows[i].store_cpu, 1000.0 / rows[i].memcpy_gbps);
    }
    printf("\ntarget: 4 MiB shared-memory store and load >= 0.70x single-thread memcpy\n");
    printf("whole run %.1f s; every reply checked, a sample of chunks checksummed\n",
           bench_now() - t_start);
    return 0;
}
