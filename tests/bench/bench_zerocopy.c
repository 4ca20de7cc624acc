/*
 * bench_zerocopy.c - the zero-copy path (RESERVE/COMMIT, MAP/RELEASE on the
 * shared L1) next to the client's own memcpy, and the daemon's CPU per GB
 * next to the frame path (STORE/LOAD).
 *
 * One process, one kvcd (real binary, private ipc:// socket, --max-workers 1).
 * The client maps L1 and touches all of it once, so no run pays first-touch
 * page faults. For each chunk size (default 1, 4, 16, 32 MiB), each
 * repetition runs, for about --seconds each:
 *
 *  - memcpy in / memcpy out: the client's memcpy of the chunks between its
 *    private buffers and the mapping (the physical limit of a same-host
 *    cache);
 *  - zc store: batches of --batch fresh keys: RESERVE, memcpy into the
 *    offsets, COMMIT; the next batch's RESERVE is in flight during the copy
 *    and the commit's reply is collected one batch later (how an engine
 *    pipelines it); L1 evicts the oldest chunks as it fills;
 *  - zc load: MAP a batch of stored keys, memcpy out, RELEASE, pipelined the
 *    same way;
 *  - frame store / frame load: STORE and LOAD of the same batches.
 * Reported: GB/s (median of the repetitions), zc / memcpy, and the daemon's
 * CPU ms per GB moved (zc next to frames). Then LOOKUP_MAP (one request),
 * LOOKUP + MAP (two) and RELEASE of 1000 keys against PING, median latency,
 * interleaved in one loop so all see the same machine. Every loaded chunk's first and last
 * 8 bytes are checked; any error exits non-zero.
 *
 * Usage: bench_zerocopy [--sizes 1,4,16,32] [--batch 4] [--reps 5]
 *        [--seconds 0.5] [--l1-gb 2] [--quick] [--meta-only] [KVCD_BINARY]
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "protocol/client.h"
#include "tests/bench/bench_util.h"

#define MAX_SIZES 8
#define MAX_BATCH 64
#define POOL (256ull << 20)
#define TIMEOUT_MS 30000
#define NKEYS_META 1000

enum { J_MEMIN, J_ZCIN, J_FRIN, J_MEMOUT, J_ZCOUT, J_FROUT, NJOBS };
static const char *const job_name[NJOBS] = {"memcpy in", "zc store", "frame store",
                                            "memcpy out", "zc load", "frame load"};

static struct {
    size_t sizes[MAX_SIZES];
    size_t nsizes;
    int batch, reps;
    double secs, l1_gb;
    const char *bin;
} O = {{1u << 20, 4u << 20, 16u << 20, 32u << 20}, 4, 4, 5, 0.5, 2.0, NULL};

static bench_daemon_t D;
static kvcd_client_t *KC;
static kvcd_l1map_t *M;
static kvcd_key_t KB;
static uint8_t *SRC, *DST;
static size_t POOLSZ; /* bytes of SRC and DST: at least one batch of the largest size */
static uint64_t next_key = 1;
static uint8_t hbuf[1u << 20][8];

static kvcd_bytes_t key(uint64_t k)
{
    uint8_t *b = hbuf[k % (sizeof(hbuf) / 8)];
    int i;

    for (i = 0; i < 8; i++)
        b[i] = (uint8_t)(k >> (56 - 8 * i));
    return (kvcd_bytes_t){b, 8};
}

static void mark(uint8_t *p, size_t size, uint64_t k)
{
    memcpy(p, &k, 8);
    memcpy(p + size - 8, &k, 8);
}

static void check(const uint8_t *p, size_t size, uint64_t k)
{
    if (memcmp(p, &k, 8) != 0 || memcmp(p + size - 8, &k, 8) != 0)
        bench_fail("chunk of key %" PRIu64 " holds other bytes", k);
}

/* Send op for keys [k0, k0+n) (RESERVE with lengths). */
static uint64_t send_keys(uint32_t op, uint64_t k0, int n, size_t size)
{
    kvcd_bytes_t h[MAX_BATCH];
    uint64_t lens[MAX_BATCH], id;
    kvcd_shm_args_t shm;
    int i;

    for (i = 0; i < n; i++) {
        h[i] = key(k0 + (uint64_t)i);
        lens[i] = size;
    }
    memset(&shm, 0, sizeof(shm));
    shm.lengths = lens;
    if (kvcd_client_send_shm(KC, op, &KB, h, (size_t)n, &shm, &id) != 0)
        bench_fail("send %s", kvcd_op_name(op));
    return id;
}

static kvcd_reply_t *wait_ok(uint64_t id, int n)
{
    const kvcd_reply_hdr_t *h;
    kvcd_reply_t *r;
    int i;

    if (kvcd_client_wait(KC, id, 0, &r) != 0)
        bench_fail("no reply");
    h = kvcd_reply_hdr(r);
    if (h->err != 0 || h->nresults != (size_t)n)
        bench_fail("%s: %s %s", kvcd_op_name(h->op), h->ename, h->msg);
    for (i = 0; i < n; i++)
        if (h->results[i] != 0)
            bench_fail("%s key %d: %s", kvcd_op_name(h->op), i, kvcd_errname(h->results[i]));
    return r;
}

/* One timed job: returns bytes moved; *dcpu gets the daemon's CPU seconds. */
static uint64_t run_job(int job, size_t size, uint64_t *stored0, uint64_t nstored, double *secs,
                        double *dcpu)
{
    size_t nchunks = POOLSZ / size, c = 0;
    int b = O.batch, i;
    double t0, d0 = bench_proc_cpu(D.pid);
    uint64_t bytes = 0, rid = 0, cid = 0, k = 0, kload = 0;
    kvcd_reply_t *r;

    t0 = bench_now();
    if (job == J_ZCIN) {
        k = next_key;
        rid = send_keys(KVCD_OP_RESERVE, k, b, size);
    } else if (job == J_ZCOUT) {
        kload = *stored0;
        rid = send_keys(KVCD_OP_MAP, kload, b, size);
    }
    do {
        switch (job) {
        case J_MEMIN:
        case J_MEMOUT:
            for (i = 0; i < b; i++, c = (c + 1) % nchunks) {
                uint8_t *l1 = (uint8_t *)M->base + ((c * size) % (M->size - size));

                if (job == J_MEMIN)
                    memcpy(l1, SRC + c * size, size);
                else
                    memcpy(DST + c * size, l1, size);
            }
            break;
        case J_ZCIN:
        case J_ZCOUT: {
            const kvcd_reply_hdr_t *h;
            uint64_t nid, kk = job == J_ZCIN ? k : kload;

            r = wait_ok(rid, b);
            h = kvcd_reply_hdr(r);
            /* The next batch's request travels while this one is copied. */
            if (job == J_ZCIN) {
                nid = send_keys(KVCD_OP_RESERVE, k + (uint64_t)b, b, size);
            } else {
                kload = *stored0 + ((kload - *stored0 + (uint64_t)b) % nstored);
                nid = send_keys(KVCD_OP_MAP, kload, b, size);
            }
            for (i = 0; i < b; i++, c = (c + 1) % nchunks) {
                uint8_t *l1 = (uint8_t *)M->base + h->offsets[i];

                if (job == J_ZCIN) {
                    mark(SRC + c * size, size, kk + (uint64_t)i);
                    memcpy(l1, SRC + c * size, size);
                } else {
                    memcpy(DST + c * size, l1, size);
                    check(DST + c * size, size, kk + (uint64_t)i);
                }
            }
            kvcd_reply_free(r);
            if (cid)
                kvcd_reply_free(wait_ok(cid, b));
            cid = send_keys(job == J_ZCIN ? KVCD_OP_COMMIT : KVCD_OP_RELEASE, kk, b, size);
            rid = nid;
            if (job == J_ZCIN)
                k += (uint64_t)b;
            break;
        }
        case J_FRIN: {
            kvcd_bytes_t h[MAX_BATCH];
            const void *bufs[MAX_BATCH];
            size_t lens[MAX_BATCH];
            int res[MAX_BATCH];

            for (i = 0; i < b; i++, c = (c + 1) % nchunks) {
                h[i] = key(next_key + (uint64_t)i);
                bufs[i] = SRC + c * size;
                lens[i] = size;
            }
            if (kvcd_client_store(KC, &KB, h, (size_t)b, bufs, lens, res) != 0)
                bench_fail("STORE: %s", kvcd_client_errmsg(KC));
            for (i = 0; i < b; i++)
                if (res[i] != 0)
                    bench_fail("STORE key: %s", kvcd_errname(res[i]));
            next_key += (uint64_t)b;
            break;
        }
        case J_FROUT: {
            kvcd_bytes_t h[MAX_BATCH];
            void *bufs[MAX_BATCH];
            size_t caps[MAX_BATCH], lens[MAX_BATCH];
            int res[MAX_BATCH];

            for (i = 0; i < b; i++, c = (c + 1) % nchunks) {
                h[i] = key(kload + *stored0 + (uint64_t)i);
                bufs[i] = DST + c * size;
                caps[i] = size;
            }
            if (kvcd_client_load(KC, &KB, h, (size_t)b, bufs, caps, lens, res) != 0)
                bench_fail("LOAD: %s", kvcd_client_errmsg(KC));
            for (i = 0; i < b; i++) {
                if (res[i] != 0)
                    bench_fail("LOAD key: %s", kvcd_errname(res[i]));
                check(bufs[i], size, kload + *stored0 + (uint64_t)i);
            }
            kload = (kload + (uint64_t)b) % nstored;
            break;
        }
        }
        bytes += (uint64_t)b * size;
    } while (bench_now() - t0 < O.secs);
    if (job == J_ZCIN || job == J_ZCOUT) {
        /* Drain: the last commit/release, and give back the batch in flight. */
        kvcd_reply_free(wait_ok(cid, b));
        r = wait_ok(rid, b);
        kvcd_reply_free(r);
        if (job == J_ZCIN) {
            kvcd_reply_free(wait_ok(send_keys(KVCD_OP_ABORT, k, b, size), b));
            next_key = k + (uint64_t)b;
        } else {
            kvcd_reply_free(wait_ok(send_keys(KVCD_OP_RELEASE, kload, b, size), b));
        }
    }
    *secs = bench_now() - t0;
    *dcpu = bench_proc_cpu(D.pid) - d0;
    return bytes;
}

/* Store nstored chunks of `size` through the zero-copy path (marked). */
static uint64_t store_set(size_t size, uint64_t nstored)
{
    uint64_t k0 = next_key, i;

    for (i = 0; i < nstored; i += (uint64_t)O.batch) {
        kvcd_reply_t *r = wait_ok(send_keys(KVCD_OP_RESERVE, k0 + i, O.batch, size), O.batch);
        int j;

        for (j = 0; j < O.batch; j++) {
            uint8_t *p = (uint8_t *)M->base + kvcd_reply_hdr(r)->offsets[j];

            memset(p, (int)(i + (uint64_t)j), size);
            mark(p, size, k0 + i + (uint64_t)j);
        }
        kvcd_reply_free(r);
        kvcd_reply_free(wait_ok(send_keys(KVCD_OP_COMMIT, k0 + i, O.batch, size), O.batch));
    }
    next_key = k0 + nstored;
    return k0;
}

static void metadata_bench(void)
{
    enum { N = 2000 };
    kvcd_bytes_t *h = malloc(NKEYS_META * sizeof(*h));
    uint64_t *offs = malloc(NKEYS_META * 8), *lens = malloc(NKEYS_META * 8), k0;
    int *res = malloc(NKEYS_META * sizeof(int));
    double ping[N], lk[N], lm[N], lmc[N], rel[N], t;
    size_t prefix, i;
    int j;

    k0 = store_set(4096, NKEYS_META - NKEYS_META % (uint64_t)O.batch);
    for (i = 0; i < NKEYS_META - NKEYS_META % (size_t)O.batch; i++)
        h[i] = key(k0 + i);
    for (j = 0; j < N; j++) {
        t = bench_now();
        if (kvcd_client_ping(KC, NULL, NULL, 0) != 0)
            bench_fail("PING");
        ping[j] = bench_now() - t;
        t = bench_now();
        if (kvcd_client_lookup(KC, &KB, h, i, &prefix, NULL) != 0 || prefix != i)
            bench_fail("LOOKUP prefix %zu of %zu", prefix, i);
        if (kvcd_client_map(KC, &KB, h, i, offs, lens, res) != 0 || res[i - 1] != 0)
            bench_fail("MAP");
        lm[j] = bench_now() - t;
        if (kvcd_client_release(KC, &KB, h, i, res) != 0 || res[0] != 0)
            bench_fail("RELEASE");
        t = bench_now();
        if (kvcd_client_lookup(KC, &KB, h, i, &prefix, NULL) != 0 || prefix != i)
            bench_fail("LOOKUP prefix %zu of %zu", prefix, i);
        lk[j] = bench_now() - t;
        if (kvcd_client_map(KC, &KB, h, i, offs, lens, res) != 0 || res[i - 1] != 0)
            bench_fail("MAP");
        t = bench_now();
        if (kvcd_client_release(KC, &KB, h, i, res) != 0 || res[0] != 0)
            bench_fail("RELEASE");
        rel[j] = bench_now() - t;
        t = bench_now();
        if (kvcd_client_lookup_map(KC, &KB, h, i, &prefix, offs, lens) != 0 || prefix != i)
            bench_fail("LOOKUP_MAP prefix %zu of %zu: %s", prefix, i, kvcd_client_errmsg(KC));
        lmc[j] = bench_now() - t;
        check((const uint8_t *)M->base + offs[i - 1], (size_t)lens[i - 1], k0 + i - 1);
        if (kvcd_client_release(KC, &KB, h, i, res) != 0 || res[i - 1] != 0)
            bench_fail("RELEASE after LOOKUP_MAP");
    }
    printf("\nmetadata, %zu keys, median of %d: PING %.1f us, LOOKUP_MAP %.1f us (%.2fx PING), "
           "LOOKUP+MAP %.1f us (%.2fx PING), LOOKUP alone %.1f us, RELEASE %.1f us\n", i, N,
           bench_median(ping, N) * 1e6, bench_median(lmc, N) * 1e6,
           bench_median(lmc, N) / bench_median(ping, N), bench_median(lm, N) * 1e6,
           bench_median(lm, N) / bench_median(ping, N), bench_median(lk, N) * 1e6,
           bench_median(rel, N) * 1e6);
    free(h);
    free(offs);
    free(lens);
    free(res);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_zerocopy [--sizes MiB,..] [--batch N] [--reps N] "
                    "[--seconds S] [--l1-gb G] [--quick] [--meta-only] [KVCD_BINARY]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"sizes", required_argument, NULL, 's'}, {"batch", required_argument, NULL, 'b'},
        {"reps", required_argument, NULL, 'r'},  {"seconds", required_argument, NULL, 't'},
        {"l1-gb", required_argument, NULL, 'l'}, {"quick", no_argument, NULL, 'q'},
        {"meta-only", no_argument, NULL, 'm'},
        {NULL, 0, NULL, 0}};
    char l1arg[32];
    const char *args[] = {"--max-workers", "1", "--l1-size-gb", l1arg, NULL};
    size_t si;
    int opt, rep, j;

    while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (opt) {
        case 's':
            O.nsizes = bench_parse_sizes(optarg, O.sizes, MAX_SIZES);
            if (!O.nsizes)
                usage();
            break;
        case 'b':
            O.batch = atoi(optarg);
            break;
        case 'r':
            O.reps = atoi(optarg);
            break;
        case 't':
            O.secs = atof(optarg);
            break;
        case 'l':
            O.l1_gb = atof(optarg);
            break;
        case 'm':
            O.nsizes = 0; /* only the LOOKUP + MAP latency */
            break;
        case 'q':
            O.reps = 1;
            O.secs = 0.1;
            break;
        default:
            usage();
        }
    }
    if (O.batch < 1 || O.batch > MAX_BATCH || O.reps < 1 || O.reps > 64 || O.secs <= 0)
        usage();
    O.bin = optind < argc ? argv[optind] : getenv("KVCD_BIN") ? getenv("KVCD_BIN") : "build/kvcd";
    bench_install_cleanup(900);
    snprintf(l1arg, sizeof(l1arg), "%g", O.l1_gb);
    if (bench_make_dir(&D) != 0 || bench_daemon_start(&D, O.bin, args, 20000) != 0)
        bench_fail("cannot start %s", O.bin);
    if (kvcd_client_connect(D.endpoint, TIMEOUT_MS, &KC) != 0 || kvcd_client_map_l1(KC, &M) != 0)
        bench_fail("cannot map L1: %s", kvcd_client_errmsg(KC));
    kvcd_keyset(&KB, "bench/zc", 1, 0, 0, "");
    POOLSZ = POOL;
    for (si = 0; si < O.nsizes; si++)
        if ((size_t)O.batch * O.sizes[si] > POOLSZ)
            POOLSZ = (size_t)O.batch * O.sizes[si]; /* a batch never reuses a buffer */
    SRC = malloc(POOLSZ);
    DST = malloc(POOLSZ);
    if (!SRC || !DST)
        bench_fail("out of memory");
    bench_fill_random(SRC, POOLSZ, 1);
    memset(DST, 0, POOLSZ);
    memset(M->base, 0, M->size); /* first touch, out of the timed runs */

    printf("kvcd zero-copy vs memcpy: L1 %.1f GiB shared (%s), batch %d, %d reps of %.2f s, "
           "1 worker\n", O.l1_gb, M->name, O.batch, O.reps, O.secs);
    printf("%-6s %-12s %9s %9s %14s\n", "MiB", "job", "GB/s", "x memcpy", "kvcd CPU ms/GB");
    for (si = 0; si < O.nsizes; si++) {
        size_t size = O.sizes[si];
        uint64_t nstored = (uint64_t)((O.l1_gb * (double)(1ull << 30)) / 2 / (double)size);
        double gbps[NJOBS][64], cpu[NJOBS][64], med[NJOBS], mcpu[NJOBS];
        uint64_t k0;

        nstored -= nstored % (uint64_t)O.batch;
        if (nstored > 256)
            nstored = 256 - 256 % (uint64_t)O.batch;
        if (nstored < (uint64_t)O.batch)
            bench_fail("L1 too small for %zu MiB chunks", size >> 20);
        for (rep = 0; rep < O.reps; rep++) {
            /* Fresh stores fill L1; the load set is stored again each rep so
             * eviction by the stores cannot take it. */
            for (j = 0; j < NJOBS; j++) {
                double s, dc;
                uint64_t bytes;

                if (j == J_MEMOUT) {
                    uint64_t removed;

                    kvcd_client_clear(KC, &removed);
                    k0 = store_set(size, nstored);
                }
                bytes = run_job(j, size, &k0, nstored, &s, &dc);
                gbps[j][rep] = (double)bytes / s / 1e9;
                cpu[j][rep] = dc * 1000.0 / ((double)bytes / 1e9);
            }
        }
        for (j = 0; j < NJOBS; j++) {
            med[j] = bench_median(gbps[j], (size_t)O.reps);
            mcpu[j] = bench_median(cpu[j], (size_t)O.reps);
        }
        for (j = 0; j < NJOBS; j++) {
            int ref = j < J_MEMOUT ? J_MEMIN : J_MEMOUT;

            printf("%-6zu %-12s %9.2f %9.2f %14.2f\n", size >> 20, job_name[j], med[j],
                   med[j] / med[ref], mcpu[j]);
        }
        printf("%-6zu daemon CPU per GB, zc / frames: store %.2f%%, load %.2f%%\n", size >> 20,
               100.0 * mcpu[J_ZCIN] / mcpu[J_FRIN], 100.0 * mcpu[J_ZCOUT] / mcpu[J_FROUT]);
        fflush(stdout);
    }
    metadata_bench();
    kvcd_client_unmap_l1(M);
    kvcd_client_close(KC);
    free(SRC);
    free(DST);
    return bench_daemon_stop(&D, 10000) == 0 ? 0 : 1;
}
