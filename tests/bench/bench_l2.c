/*
 * bench_l2.c - an L2 adapter's store, lookup, load and remove, next to plain
 * sequential file I/O of the same bytes in the same directory.
 *
 * The adapter runs exactly as in the daemon: created through the registry and
 * runner (kvcd_l2_create) and driven by kvcd_l2_submit on a libuv loop, so a
 * batch of keys is split across `--workers` threadpool workers. N chunks of
 * the chunk size live in 4096-aligned buffers (the L1 arena's alignment, so
 * O_DIRECT can be used); they are stored in batches, looked up, loaded back
 * into other buffers, compared byte for byte (every chunk), and removed.
 *
 * The baseline, measured in the same run and from the same buffers, is what
 * `dd` would do: one file per chunk in a fresh directory under --baseline-dir
 * (default: the spec's base_path), written with write() and read back with
 * read() by one thread. It copies the adapter's settings that change the I/O:
 * fsync true adds fdatasync per file, use_odirect true opens with O_DIRECT.
 *
 * Fairness. Adapter and baseline take turns every batch (--sequential: every
 * phase), and who goes first alternates at every turn, so both see the same
 * page cache, dirty pages, memory and device state: on a shared or virtual
 * machine these drift by several times within seconds, and a baseline taken
 * minutes apart would say little. Before each write phase both directories
 * are synced (syncfs), so neither starts behind the other's dirty pages. With
 * --reads cold (the default) every file of both directories is synced and
 * dropped from the page cache with POSIX_FADV_DONTNEED before each read phase
 * (no root needed); --reads warm reads what the writes left cached.
 * Remove is timed against unlink() of the baseline files in the same way.
 *
 * Checksum share: XXH3-64, the function the fs adapter uses (libxxhash's CPU
 * dispatch when available), timed in this process over each batch of chunks
 * just after the adapter loaded it (as the adapter hashes a chunk just after
 * reading it), on as many threads as the adapter has workers; its sum is
 * divided by the adapter's load time (and store time: a store hashes too).
 *
 * Everything it wrote is removed on every exit path but a second signal; an
 * error, a failed key or a wrong byte exits 1, a watchdog stop exits 3.
 *
 * Usage: bench_l2 --spec '<adapter JSON>' [options]; see usage().
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>
#include <xxhash.h>
/* Time the payload checksum the fs adapter computes (adapters/object/format.c). */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(KVCD_NO_XXH_DISPATCH) &&                \
    defined(__has_include)
#if __has_include(<xxh_x86dispatch.h>)
#define XXH_DISPATCH_DISABLE_REPLACE
#include <xxh_x86dispatch.h>
#define payload_hash XXH3_64bits_dispatch
#define PAYLOAD_HASH_NAME "XXH3_64bits_dispatch"
#endif
#endif
#ifndef payload_hash
#define payload_hash XXH3_64bits
#define PAYLOAD_HASH_NAME "XXH3_64bits"
#endif

#include "adapters/adapter.h"
#include "daemon/l2.h"
#include "daemon/log.h"
#include "protocol/kvcd_err.h"

#define MIB (1ull << 20)
#define GB 1e9 /* throughput in decimal GB/s */
#define ALIGN 4096
#define MAX_REPS 9
#define MODEL "bench/l2"
#define DEFAULT_BYTES (512ull * MIB) /* per rep, when --count is not given */
#define QUICK_BYTES (128ull * MIB)

/* ---- options ---- */

typedef struct {
    const char *spec_text;
    double chunk_mb;
    size_t count; /* 0: DEFAULT_BYTES / chunk */
    size_t batch;
    int workers;
    int reps;
    int cold;
    int baseline;
    int sequential;
    size_t granule;       /* keys per turn of adapter and baseline */
    int baseline_odirect; /* -1: as the spec's use_odirect */
    int baseline_fsync;   /* -1: as the spec's fsync */
    const char *baseline_dir;
    uint64_t timeout_ms;
    unsigned max_seconds;
    int quick;
    int status;
    int verbose;
} opts_t;

static opts_t O = {
    .chunk_mb = 4,
    .batch = 16,
    .workers = 2,
    .reps = 1,
    .cold = 1,
    .baseline = 1,
    .baseline_odirect = -1,
    .baseline_fsync = -1,
    .timeout_ms = 120000,
    .max_seconds = 300,
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_l2 --spec '<adapter JSON>' [options]\n"
            "  --spec JSON          the adapter instance, as for --l2-adapter (required)\n"
            "  --chunk-mb X         chunk size in MiB (default 4; fractions allowed)\n"
            "  --count N            chunks per rep (default: 512 MiB worth, 128 MiB with "
            "--quick)\n"
            "  --batch N            keys per request (default 16)\n"
            "  --workers N          threadpool workers a request is split across (default 2)\n"
            "  --reps N             repetitions, medians reported (default 1, max %d)\n"
            "  --reads cold|warm    cold: sync and drop both directories' pages before each\n"
            "                       read phase (default); warm: read what is cached\n"
            "  --sequential         adapter and baseline take turns per phase, not per batch\n"
            "  --baseline-dir DIR   where the plain-file baseline writes (default: the spec's\n"
            "                       base_path; none: no baseline)\n"
            "  --baseline-odirect 0|1  override: O_DIRECT for the baseline (default: the\n"
            "                       spec's use_odirect)\n"
            "  --baseline-fsync 0|1 override: fdatasync per baseline file (default: the\n"
            "                       spec's fsync)\n"
            "  --timeout-ms N       deadline of each request (default 120000)\n"
            "  --max-seconds N      watchdog: stop, clean up and exit 3 (default 300)\n"
            "  --quick              a short run (128 MiB)\n"
            "  --status             print the instance's status JSON at the end\n"
            "  --verbose            adapter and runner log lines, per-rep results\n",
            MAX_REPS);
}

/* ---- clocks and small helpers ---- */

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
    double s[MAX_REPS];

    memcpy(s, v, (size_t)n * sizeof(*s));
    qsort(s, (size_t)n, sizeof(*s), cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* Deterministic pseudo-random bytes (splitmix64). */
static void fill_random(void *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed, z;
    uint8_t *p = buf;
    size_t i;

    for (i = 0; i + 8 <= len; i += 8) {
        z = (x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        memcpy(p + i, &z, 8);
    }
    for (; i < len; i++)
        p[i] = (uint8_t)(seed + i);
}

static int fail_flag;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "bench_l2: FAIL: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    fail_flag = 1;
}

/* ---- stopping: a signal or the watchdog ends the run at the next batch ---- */

static volatile sig_atomic_t stop_sig;

static void on_signal(int sig)
{
    static const char msg[] = "bench_l2: second signal: exiting without cleanup\n";
    ssize_t w;

    if (stop_sig) {
        w = write(2, msg, sizeof(msg) - 1);
        (void)w;
        _exit(128 + sig);
    }
    stop_sig = sig;
}

static void install_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGALRM, &sa, NULL);
    if (O.max_seconds)
        alarm(O.max_seconds);
}

static int stopped(void)
{
    if (stop_sig && !fail_flag)
        fail("%s; cleaning up",
             stop_sig == SIGALRM ? "watchdog: --max-seconds passed" : "interrupted");
    return stop_sig != 0;
}

/* ---- the adapter, through the runner ---- */

static uv_loop_t loop;
static kvcd_l2_t *l2;

typedef struct {
    kvcd_l2_req_t req;
    int answered, released;
} call_t;

static void call_cb(kvcd_l2_req_t *r)
{
    ((call_t *)r->data)->answered = 1;
}

static void call_release(kvcd_l2_req_t *r)
{
    ((call_t *)r->data)->released = 1;
}

static int inflight_zero(void)
{
    return kvcd_l2_inflight(l2) == 0;
}

/* Submit one request and run the loop until nothing touches its items. */
static int call(kvcd_l2_op_t op, kvcd_l2_item_t *items, size_t n)
{
    call_t c;

    memset(&c, 0, sizeof(c));
    c.req.op = op;
    c.req.items = items;
    c.req.n = n;
    c.req.timeout_ms = O.timeout_ms;
    c.req.cb = call_cb;
    c.req.release = call_release;
    c.req.data = &c;
    kvcd_l2_submit(l2, &c.req);
    while (!c.released)
        uv_run(&loop, UV_RUN_ONCE);
    return c.req.timed_out ? KVCD_ETIMEDOUT : 0;
}

static const char *const op_name[] = {"store", "lookup", "load", "remove"};

/* The keys and chunks of one rep. Keys differ from rep to rep and from run to
 * run (a nonce in the hash), so an adapter that skips existing objects never
 * skips ours. */
typedef struct {
    size_t n, chunk;
    uint8_t (*hash)[16];
    kvcd_l2_item_t *items;
    uint8_t **src, **dst;
} set_t;

static void set_keys(set_t *s, uint64_t nonce)
{
    size_t i;

    for (i = 0; i < s->n; i++) {
        kvcd_key_t *k = &s->items[i].key;
        uint64_t idx = i;

        memcpy(s->hash[i], &nonce, 8);
        memcpy(s->hash[i] + 8, &idx, 8);
        memset(k, 0, sizeof(*k));
        k->model = MODEL;
        k->model_len = (uint32_t)strlen(MODEL);
        k->hash = s->hash[i];
        k->hash_len = 16;
        k->kv_rank = kvcd_kv_rank(1, 0);
    }
}

/* Run op over keys [lo, hi), `batch` keys per request, one request at a
 * time. Checks each result (and the size for lookup and load). 0, or -1 after
 * fail(). `tolerate_miss`: for the clean-up remove. */
static int adapter_range(set_t *s, kvcd_l2_op_t op, size_t lo, size_t hi, int tolerate_miss)
{
    size_t i, b;

    for (i = lo; i < hi; i++) {
        kvcd_l2_item_t *it = &s->items[i];

        it->buf = op == KVCD_L2_STORE ? s->src[i] : op == KVCD_L2_LOAD ? s->dst[i] : NULL;
        it->len = op == KVCD_L2_STORE || op == KVCD_L2_LOAD ? s->chunk : 0;
        it->size = 0;
    }
    for (b = lo; b < hi; b += O.batch) {
        size_t n = hi - b < O.batch ? hi - b : O.batch;

        if (!tolerate_miss && stopped())
            return -1;
        if (call(op, s->items + b, n)) {
            fail("%s of keys %zu..%zu timed out (--timeout-ms %" PRIu64 ")", op_name[op], b,
                 b + n - 1, O.timeout_ms);
            return -1;
        }
        for (i = b; i < b + n; i++) {
            kvcd_l2_item_t *it = &s->items[i];

            if (tolerate_miss && it->result == KVCD_ENOTFOUND)
                continue;
            if (it->result != 0) {
                fail("%s of key %zu: %s (%s)", op_name[op], i, kvcd_errname(it->result),
                     kvcd_strerror(it->result));
                return -1;
            }
            if ((op == KVCD_L2_LOOKUP || op == KVCD_L2_LOAD) && it->size != s->chunk) {
                fail("%s of key %zu: size %zu, stored %zu", op_name[op], i, it->size, s->chunk);
                return -1;
            }
        }
    }
    return 0;
}

/* Every key must miss now (after remove). */
static int check_gone(set_t *s)
{
    size_t i, n = s->n < O.batch ? s->n : O.batch;

    for (i = 0; i < n; i++) {
        s->items[i].buf = NULL;
        s->items[i].len = 0;
    }
    if (call(KVCD_L2_LOOKUP, s->items, n)) {
        fail("lookup after remove timed out");
        return -1;
    }
    for (i = 0; i < n; i++)
        if (s->items[i].result != KVCD_ENOTFOUND) {
            fail("lookup of key %zu after remove: %s, expected ENOTFOUND", i,
                 kvcd_errname(s->items[i].result));
            return -1;
        }
    return 0;
}

/* Compare loaded chunks [lo, hi) with what was stored, then zero them for the
 * next reader. */
static int verify(set_t *s, size_t lo, size_t hi, const char *what)
{
    size_t i, j;

    for (i = lo; i < hi; i++) {
        if (memcmp(s->src[i], s->dst[i], s->chunk) != 0) {
            for (j = 0; j < s->chunk && s->src[i][j] == s->dst[i][j]; j++)
                ;
            fail("%s: chunk %zu differs from what was stored, first at byte %zu", what, i, j);
            return -1;
        }
        memset(s->dst[i], 0, s->chunk);
    }
    return 0;
}

/* ---- page cache: sync, and drop a directory tree's pages ---- */

static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int r;

    if (fd < 0)
        return -errno;
    r = syncfs(fd) ? -errno : 0;
    close(fd);
    return r;
}

static int drop_errno;

static int drop_one(const char *path, const struct stat *st, int type, struct FTW *f)
{
    int fd, e;

    if (type != FTW_F || !S_ISREG(st->st_mode))
        return 0;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return 0; /* removed meanwhile */
    if (fdatasync(fd))
        drop_errno = errno;
    else if ((e = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)) != 0)
        drop_errno = e; /* returned, not in errno */
    close(fd);
    return 0;
}

/* Write back and evict the cached pages of every file under dir. */
static int drop_dir(const char *dir)
{
    int r = sync_dir(dir);

    if (r)
        return r;
    drop_errno = 0;
    if (nftw(dir, drop_one, 32, FTW_PHYS | FTW_MOUNT))
        return -errno;
    return -drop_errno;
}

/* ---- the baseline: one file per chunk, write() and read() ---- */

typedef struct {
    char dir[4096];
    int dfd;
    int odirect, fsync_on;
} base_t;

static int full_io(int fd, uint8_t *p, size_t len, int wr)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = wr ? write(fd, p + done, len - done) : read(fd, p + done, len - done);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO; /* short file */
        done += (size_t)n;
    }
    return 0;
}

static void base_name(char *nm, size_t i)
{
    snprintf(nm, 32, "chunk-%06zu", i);
}

static int base_write(base_t *b, set_t *s, size_t lo, size_t hi)
{
    char nm[32];
    size_t i;
    int fd, r;

    for (i = lo; i < hi; i++) {
        base_name(nm, i);
        fd = openat(b->dfd, nm,
                    O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (b->odirect ? O_DIRECT : 0), 0600);
        if (fd < 0) {
            fail("baseline: create %s/%s: %s", b->dir, nm, strerror(errno));
            return -1;
        }
        r = full_io(fd, s->src[i], s->chunk, 1);
        if (!r && b->fsync_on && fdatasync(fd))
            r = -errno;
        if (close(fd) && !r)
            r = -errno;
        if (r) {
            fail("baseline: write %s/%s: %s", b->dir, nm, strerror(-r));
            return -1;
        }
    }
    return 0;
}

static int base_read(base_t *b, set_t *s, size_t lo, size_t hi)
{
    char nm[32];
    size_t i;
    int fd, r;

    for (i = lo; i < hi; i++) {
        base_name(nm, i);
        fd = openat(b->dfd, nm, O_RDONLY | O_CLOEXEC | (b->odirect ? O_DIRECT : 0));
        if (fd < 0) {
            fail("baseline: open %s/%s: %s", b->dir, nm, strerror(errno));
            return -1;
        }
        r = full_io(fd, s->dst[i], s->chunk, 0);
        close(fd);
        if (r) {
            fail("baseline: read %s/%s: %s", b->dir, nm, strerror(-r));
            return -1;
        }
    }
    return 0;
}

static int base_unlink(base_t *b, size_t lo, size_t hi, int quiet)
{
    char nm[32];
    size_t i;

    for (i = lo; i < hi; i++) {
        base_name(nm, i);
        if (unlinkat(b->dfd, nm, 0) && !quiet) {
            fail("baseline: unlink %s/%s: %s", b->dir, nm, strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* ---- the checksum, on as many threads as the adapter has workers ----
 *
 * A small pool: the calling thread hashes one share of a range of chunks and
 * `workers - 1` threads, started once, hash the others, as the adapter's
 * workers would each hash their own keys. */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    pthread_t tid[64];
    int nthreads, started;
    uint64_t gen; /* bumped for each range */
    int pending;  /* threads still hashing the current range */
    int quit;
    const set_t *s;
    size_t lo, hi;
    uint64_t acc;
} hp = {.mu = PTHREAD_MUTEX_INITIALIZER,
        .go = PTHREAD_COND_INITIALIZER,
        .done = PTHREAD_COND_INITIALIZER};

/* Share k of nthreads + 1 of the current range. */
static uint64_t hash_share(int k)
{
    size_t n = hp.hi - hp.lo, parts = (size_t)hp.nthreads + 1, i;
    size_t lo = hp.lo + (size_t)k * n / parts, hi = hp.lo + (size_t)(k + 1) * n / parts;
    uint64_t acc = 0;

    for (i = lo; i < hi; i++)
        acc ^= payload_hash(hp.s->dst[i], hp.s->chunk);
    return acc;
}

static void *hash_thread(void *arg)
{
    int k = (int)(intptr_t)arg;
    uint64_t seen = 0, acc;

    pthread_mutex_lock(&hp.mu);
    for (;;) {
        while (!hp.quit && hp.gen == seen)
            pthread_cond_wait(&hp.go, &hp.mu);
        if (hp.quit)
            break;
        seen = hp.gen;
        pthread_mutex_unlock(&hp.mu);
        acc = hash_share(k);
        pthread_mutex_lock(&hp.mu);
        hp.acc ^= acc;
        if (--hp.pending == 0)
            pthread_cond_signal(&hp.done);
    }
    pthread_mutex_unlock(&hp.mu);
    return NULL;
}

static void hash_pool_start(int workers)
{
    int i;

    hp.nthreads = workers - 1 < 64 ? workers - 1 : 64;
    for (i = 0; i < hp.nthreads; i++)
        if (pthread_create(&hp.tid[i], NULL, hash_thread, (void *)(intptr_t)(i + 1)))
            break;
    hp.nthreads = hp.started = i;
}

static void hash_pool_stop(void)
{
    int i;

    pthread_mutex_lock(&hp.mu);
    hp.quit = 1;
    pthread_cond_broadcast(&hp.go);
    pthread_mutex_unlock(&hp.mu);
    for (i = 0; i < hp.started; i++)
        pthread_join(hp.tid[i], NULL);
    hp.started = 0;
}

/* Seconds to checksum loaded chunks [lo, hi) on the pool. */
static double time_checksum(const set_t *s, size_t lo, size_t hi)
{
    double t0 = now_s();
    uint64_t acc;

    pthread_mutex_lock(&hp.mu);
    hp.s = s;
    hp.lo = lo;
    hp.hi = hi;
    hp.pending = hp.nthreads;
    hp.gen++;
    pthread_cond_broadcast(&hp.go);
    pthread_mutex_unlock(&hp.mu);
    acc = hash_share(0);
    pthread_mutex_lock(&hp.mu);
    while (hp.pending > 0)
        pthread_cond_wait(&hp.done, &hp.mu);
    hp.acc ^= acc;
    pthread_mutex_unlock(&hp.mu);
    return now_s() - t0;
}

/* ---- one rep ---- */

enum { P_STORE, P_LOOKUP, P_LOAD, P_REMOVE, P_BWRITE, P_BREAD, P_BUNLINK, P_HASH, P_N };
static const char *const p_label[P_N] = {"store",           "lookup",         "load",
                                         "remove",          "baseline write", "baseline read",
                                         "baseline unlink", "checksum (xxh3)"};

typedef struct {
    double t[P_N], cpu[P_N];
} rep_t;

static const char *adapter_dir; /* the spec's base_path, or NULL */
static base_t *base;

/* Flush both directories so that a write phase starts with no dirty pages. */
static int quiesce(void)
{
    int r = 0;

    if (adapter_dir)
        r = sync_dir(adapter_dir);
    if (!r && base)
        r = sync_dir(base->dir);
    if (r)
        fail("syncfs: %s", strerror(-r));
    return r;
}

static int drop_all(void)
{
    int r = 0;

    if (!O.cold)
        return 0;
    if (adapter_dir && (r = drop_dir(adapter_dir)))
        fail("dropping the page cache of %s: %s", adapter_dir, strerror(-r));
    if (!r && base && (r = drop_dir(base->dir)))
        fail("dropping the page cache of the baseline: %s", strerror(-r));
    return r;
}

/* Run the adapter's op and the baseline's matching I/O over the same keys,
 * taking turns every `O.granule` keys (a batch by default; all keys with
 * --sequential) and swapping who goes first at every turn, so that both see
 * the same page cache, dirty-page and memory state. Each side's wall and CPU
 * time is summed into pa / pb. `prep` runs before each side's turn in
 * sequential mode and once before the whole phase otherwise. */
static int duo(set_t *s, kvcd_l2_op_t op, int pa, int pb, int (*prep)(void), rep_t *r, int first)
{
    size_t lo, hi;
    int turn, side;

    if (!O.sequential && prep && prep())
        return -1;
    for (lo = 0; lo < s->n; lo = hi, first ^= 1) {
        hi = s->n - lo < O.granule ? s->n : lo + O.granule;
        for (turn = 0; turn < 2; turn++) {
            double t0, c0;
            int rc;

            side = turn ^ first; /* 0: adapter, 1: baseline */
            if (side && !base)
                continue;
            if (O.sequential && prep && prep())
                return -1;
            t0 = now_s();
            c0 = cpu_s();
            if (!side)
                rc = adapter_range(s, op, lo, hi, 0);
            else if (op == KVCD_L2_STORE)
                rc = base_write(base, s, lo, hi);
            else if (op == KVCD_L2_LOAD)
                rc = base_read(base, s, lo, hi);
            else
                rc = base_unlink(base, lo, hi, 0);
            r->t[side ? pb : pa] += now_s() - t0;
            r->cpu[side ? pb : pa] += cpu_s() - c0;
            if (rc)
                return -1;
            if (op == KVCD_L2_LOAD && !side)
                r->t[P_HASH] += time_checksum(s, lo, hi);
            if (op == KVCD_L2_LOAD && verify(s, lo, hi, side ? "baseline read" : "adapter load"))
                return -1;
        }
    }
    return 0;
}

static int stored; /* keys of the current rep may be in the adapter */

static int timed_adapter(set_t *s, kvcd_l2_op_t op, int p, rep_t *r)
{
    double t0 = now_s(), c0 = cpu_s();
    int rc = adapter_range(s, op, 0, s->n, 0);

    r->t[p] = now_s() - t0;
    r->cpu[p] = cpu_s() - c0;
    return rc;
}

static int run_rep(set_t *s, int k, uint64_t nonce, rep_t *r)
{
    memset(r, 0, sizeof(*r));
    set_keys(s, nonce + (uint64_t)k);
    stored = 1;
    if (duo(s, KVCD_L2_STORE, P_STORE, P_BWRITE, quiesce, r, k & 1))
        return -1;
    if (timed_adapter(s, KVCD_L2_LOOKUP, P_LOOKUP, r))
        return -1;
    if (duo(s, KVCD_L2_LOAD, P_LOAD, P_BREAD, drop_all, r, k & 1))
        return -1;
    if (duo(s, KVCD_L2_REMOVE, P_REMOVE, P_BUNLINK, NULL, r, k & 1))
        return -1;
    stored = 0;
    return check_gone(s);
}

/* ---- report ---- */

/* Median over reps of t[num] / t[den]. */
static double ratio(const rep_t *reps, int nrep, int num, int den)
{
    double v[MAX_REPS];
    int k;

    for (k = 0; k < nrep; k++)
        v[k] = reps[k].t[num] / reps[k].t[den];
    return median(v, nrep);
}

/* "ratio what: median (reps: r1 r2 ...)": the table's columns are medians of
 * their own, so the ratio of two of them need not be the median ratio. */
static void print_ratio(const char *what, const rep_t *reps, int nrep, int num, int den, double med)
{
    int k;

    printf("ratio %s %.2f", what, med);
    if (nrep > 1) {
        printf(" (reps:");
        for (k = 0; k < nrep; k++)
            printf(" %.2f", reps[k].t[num] / reps[k].t[den]);
        printf(")");
    }
    printf("\n");
}

static void report(const set_t *s, const rep_t *reps, int nrep, const char *type)
{
    double v[MAX_REPS], t[P_N], cpu[P_N], bytes = (double)s->n * (double)s->chunk;
    double sr = 0, lr = 0, share_load, share_store;
    char label[64];
    int p, k;

    for (p = 0; p < P_N; p++) {
        for (k = 0; k < nrep; k++)
            v[k] = reps[k].t[p];
        t[p] = median(v, nrep);
        for (k = 0; k < nrep; k++)
            v[k] = reps[k].cpu[p];
        cpu[p] = median(v, nrep);
    }
    printf("\n%-22s %9s %9s %10s %8s\n", "phase", "seconds", "GB/s", "ops/s", "cpu s");
    for (p = 0; p < P_N; p++) {
        int has_bytes = p != P_LOOKUP && p != P_REMOVE && p != P_BUNLINK;

        if ((p == P_BWRITE || p == P_BREAD || p == P_BUNLINK) && !base)
            continue;
        snprintf(label, sizeof(label), "%s%s%s", p < P_BWRITE ? type : "", p < P_BWRITE ? " " : "",
                 p_label[p]);
        printf("%-22s %9.3f ", label, t[p]);
        if (has_bytes)
            printf("%9.2f ", bytes / t[p] / GB);
        else
            printf("%9s ", "-");
        printf("%10.0f ", (double)s->n / t[p]);
        if (p == P_HASH)
            printf("%8s\n", "-");
        else
            printf("%8.3f\n", cpu[p]);
    }
    printf("(cpu s: CPU time of this process, all threads, during the phase)\n\n");
    if (base) {
        /* throughput ratio adapter / baseline = time ratio baseline / adapter */
        sr = ratio(reps, nrep, P_BWRITE, P_STORE);
        lr = ratio(reps, nrep, P_BREAD, P_LOAD);
        print_ratio("store / baseline write:  ", reps, nrep, P_BWRITE, P_STORE, sr);
        print_ratio("load / baseline read:    ", reps, nrep, P_BREAD, P_LOAD, lr);
        print_ratio("remove / baseline unlink:", reps, nrep, P_BUNLINK, P_REMOVE,
                    ratio(reps, nrep, P_BUNLINK, P_REMOVE));
    }
    share_load = ratio(reps, nrep, P_HASH, P_LOAD);
    share_store = ratio(reps, nrep, P_HASH, P_STORE);
    printf("checksum: %s over each batch right after its load, on %d thread%s: %.2f GB/s, "
           "%.1f%% of the load time (%.1f%% of the store time)\n",
           PAYLOAD_HASH_NAME, O.workers, O.workers == 1 ? "" : "s", bytes / t[P_HASH] / GB,
           100 * share_load, 100 * share_store);
    printf("result: chunk_bytes=%zu count=%zu reps=%d reads=%s store_gbps=%.3f "
           "lookup_ops=%.0f load_gbps=%.3f remove_ops=%.0f",
           s->chunk, s->n, nrep, O.cold ? "cold" : "warm", bytes / t[P_STORE] / GB,
           (double)s->n / t[P_LOOKUP], bytes / t[P_LOAD] / GB, (double)s->n / t[P_REMOVE]);
    if (base)
        printf(" base_write_gbps=%.3f base_read_gbps=%.3f store_ratio=%.3f load_ratio=%.3f",
               bytes / t[P_BWRITE] / GB, bytes / t[P_BREAD] / GB, sr, lr);
    printf(" checksum_gbps=%.3f checksum_share_load=%.3f checksum_share_store=%.3f\n",
           bytes / t[P_HASH] / GB, share_load, share_store);
}

static void report_rep(const set_t *s, const rep_t *r, int k)
{
    double bytes = (double)s->n * (double)s->chunk;

    printf("rep %d: store %.2f GB/s, lookup %.0f/s, load %.2f GB/s, remove %.0f/s", k + 1,
           bytes / r->t[P_STORE] / GB, (double)s->n / r->t[P_LOOKUP], bytes / r->t[P_LOAD] / GB,
           (double)s->n / r->t[P_REMOVE]);
    if (base)
        printf("; baseline write %.2f GB/s, read %.2f GB/s", bytes / r->t[P_BWRITE] / GB,
               bytes / r->t[P_BREAD] / GB);
    printf("\n");
}

/* ---- set-up and clean-up ---- */

static int parse_bool(const char *opt, const char *v)
{
    if (!strcmp(v, "1") || !strcmp(v, "true"))
        return 1;
    if (!strcmp(v, "0") || !strcmp(v, "false"))
        return 0;
    fprintf(stderr, "bench_l2: %s: expected 0 or 1\n", opt);
    exit(2);
}

static unsigned long parse_ulong(const char *opt, const char *v, unsigned long lo, unsigned long hi)
{
    char *end;
    unsigned long x;

    errno = 0;
    x = strtoul(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "bench_l2: %s: expected an integer in [%lu, %lu]\n", opt, lo, hi);
        exit(2);
    }
    return x;
}

static void parse_args(int argc, char **argv)
{
    enum {
        O_SPEC = 256,
        O_CHUNK,
        O_COUNT,
        O_BATCH,
        O_WORKERS,
        O_REPS,
        O_READS,
        O_SEQ,
        O_BDIR,
        O_BODIRECT,
        O_BFSYNC,
        O_TIMEOUT,
        O_MAXS,
        O_QUICK,
        O_STATUS,
        O_VERBOSE,
        O_HELP
    };
    static const struct option lo[] = {
        {"spec", required_argument, NULL, O_SPEC},
        {"chunk-mb", required_argument, NULL, O_CHUNK},
        {"count", required_argument, NULL, O_COUNT},
        {"batch", required_argument, NULL, O_BATCH},
        {"workers", required_argument, NULL, O_WORKERS},
        {"reps", required_argument, NULL, O_REPS},
        {"reads", required_argument, NULL, O_READS},
        {"sequential", no_argument, NULL, O_SEQ},
        {"baseline-dir", required_argument, NULL, O_BDIR},
        {"baseline-odirect", required_argument, NULL, O_BODIRECT},
        {"baseline-fsync", required_argument, NULL, O_BFSYNC},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"max-seconds", required_argument, NULL, O_MAXS},
        {"quick", no_argument, NULL, O_QUICK},
        {"status", no_argument, NULL, O_STATUS},
        {"verbose", no_argument, NULL, O_VERBOSE},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    char *end;
    int c;

    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_SPEC:
            O.spec_text = optarg;
            break;
        case O_CHUNK:
            O.chunk_mb = strtod(optarg, &end);
            if (end == optarg || *end || !(O.chunk_mb > 0) || O.chunk_mb > 1024) {
                fprintf(stderr, "bench_l2: --chunk-mb: expected a number in (0, 1024]\n");
                exit(2);
            }
            break;
        case O_COUNT:
            O.count = parse_ulong("--count", optarg, 1, 1000000);
            break;
        case O_BATCH:
            O.batch = parse_ulong("--batch", optarg, 1, 100000);
            break;
        case O_WORKERS:
            O.workers = (int)parse_ulong("--workers", optarg, 1, 64);
            break;
        case O_REPS:
            O.reps = (int)parse_ulong("--reps", optarg, 1, MAX_REPS);
            break;
        case O_READS:
            if (strcmp(optarg, "cold") && strcmp(optarg, "warm")) {
                fprintf(stderr, "bench_l2: --reads: expected cold or warm\n");
                exit(2);
            }
            O.cold = !strcmp(optarg, "cold");
            break;
        case O_SEQ:
            O.sequential = 1;
            break;
        case O_BDIR:
            O.baseline_dir = optarg;
            O.baseline = strcmp(optarg, "none") != 0;
            break;
        case O_BODIRECT:
            O.baseline_odirect = parse_bool("--baseline-odirect", optarg);
            break;
        case O_BFSYNC:
            O.baseline_fsync = parse_bool("--baseline-fsync", optarg);
            break;
        case O_TIMEOUT:
            O.timeout_ms = parse_ulong("--timeout-ms", optarg, 1, 86400000);
            break;
        case O_MAXS:
            O.max_seconds = (unsigned)parse_ulong("--max-seconds", optarg, 0, 86400);
            break;
        case O_QUICK:
            O.quick = 1;
            break;
        case O_STATUS:
            O.status = 1;
            break;
        case O_VERBOSE:
            O.verbose = 1;
            break;
        case O_HELP:
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind < argc || !O.spec_text) {
        usage(stderr);
        exit(2);
    }
}

/* The directory an adapter keeps its files in: base_path, or that of the
 * adapter it wraps ("inner", as fault does). */
static const char *spec_dir(const json_t *spec)
{
    while (json_is_object(spec)) {
        const char *d = json_string_value(json_object_get(spec, "base_path"));

        if (d)
            return d;
        spec = json_object_get(spec, "inner");
    }
    return NULL;
}

static int spec_flag(const json_t *spec, const char *name)
{
    while (json_is_object(spec)) {
        json_t *v = json_object_get(spec, name);

        if (v)
            return json_is_true(v);
        spec = json_object_get(spec, "inner");
    }
    return 0;
}

static const char *spec_tmp_dir(const json_t *spec)
{
    while (json_is_object(spec)) {
        const char *d = json_string_value(json_object_get(spec, "relative_tmp_dir"));

        if (json_object_get(spec, "base_path"))
            return d ? d : ".tmp";
        spec = json_object_get(spec, "inner");
    }
    return NULL;
}

/* Length of the shortest prefix of dir (at a '/') that does not exist, or 0
 * if dir exists: the first directory the adapter will create. */
static size_t missing_prefix(const char *dir)
{
    char p[4096];
    struct stat st;
    size_t i, n = strlen(dir);

    if (n >= sizeof(p) || stat(dir, &st) == 0)
        return 0;
    memcpy(p, dir, n + 1);
    for (i = 1; i <= n; i++) {
        if (i < n && p[i] != '/')
            continue;
        p[i] = '\0';
        if (stat(p, &st) != 0)
            return i;
        p[i] = dir[i];
    }
    return n;
}

/* Remove the directories the adapter created: its temp dir, base_path and
 * the parents that did not exist before the run (rmdir only: a directory
 * that is not empty stays). */
static void remove_created_dirs(const char *dir, const char *tmp, size_t keep)
{
    char p[8192];
    char *slash;
    size_t n = strlen(dir);

    if (tmp && *tmp) {
        snprintf(p, sizeof(p), "%s/%s", dir, tmp);
        while (rmdir(p) == 0 && (slash = strrchr(p, '/')) && (size_t)(slash - p) > n)
            *slash = '\0';
    }
    snprintf(p, sizeof(p), "%s", dir);
    while (strlen(p) >= keep && rmdir(p) == 0 && (slash = strrchr(p, '/')) && slash > p)
        *slash = '\0';
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int main(int argc, char **argv)
{
    kvcd_adapter_env_t env = {.arena_align = ALIGN};
    static base_t base_store;
    json_error_t jerr;
    json_t *spec = NULL;
    set_t s;
    rep_t reps[MAX_REPS];
    char err[1024], nthreads[16];
    const char *tmp_dir = NULL, *type;
    size_t i, alloc_len;
    uint64_t nonce;
    struct timespec ts = {0, 0};
    size_t created_from = 0;
    int k, nrep = 0, rc = 1;
    double t_start = now_s();

    parse_args(argc, argv);
    kvcd_log_level = O.verbose ? KVCD_LOG_INFO : KVCD_LOG_WARNING;
    memset(&s, 0, sizeof(s));
    spec = json_loads(O.spec_text, 0, &jerr);
    if (!json_is_object(spec)) {
        fprintf(stderr, "bench_l2: --spec: %s (line %d, column %d)\n",
                spec ? "expected a JSON object" : jerr.text, jerr.line, jerr.column);
        return 2;
    }
    type = json_string_value(json_object_get(spec, "type"));
    adapter_dir = spec_dir(spec);
    tmp_dir = spec_tmp_dir(spec);
    if (adapter_dir)
        created_from = missing_prefix(adapter_dir);

    s.chunk = (size_t)(O.chunk_mb * (double)MIB + 0.5);
    if (s.chunk == 0)
        s.chunk = 1;
    s.n = O.count ? O.count : (O.quick ? QUICK_BYTES : DEFAULT_BYTES) / s.chunk;
    if (s.n == 0)
        s.n = 1;
    alloc_len = (s.chunk + ALIGN - 1) / ALIGN * ALIGN;
    O.granule = O.sequential ? s.n : O.batch;

    /* The runner splits a request into `workers` slices: give the threadpool
     * exactly that many threads, as the daemon does with --max-workers. */
    snprintf(nthreads, sizeof(nthreads), "%d", O.workers);
    setenv("UV_THREADPOOL_SIZE", nthreads, 1);
    if (uv_loop_init(&loop)) {
        fprintf(stderr, "bench_l2: uv_loop_init failed\n");
        return 1;
    }
    install_signals();
    hash_pool_start(O.workers);

    env.max_workers = O.workers;
    if (kvcd_l2_create(&loop, spec, 1, &env, O.timeout_ms, &l2, err, sizeof(err))) {
        fprintf(stderr, "bench_l2: %s\n", err);
        goto done;
    }
    /* Let start-up work (the fs scan) finish before anything is timed. */
    while (!inflight_zero())
        uv_run(&loop, UV_RUN_ONCE);

    if (O.baseline && (O.baseline_dir || adapter_dir)) {
        const char *bd = O.baseline_dir ? O.baseline_dir : adapter_dir;

        base = &base_store;
        base->dfd = -1;
        snprintf(base->dir, sizeof(base->dir), "%s/bench-l2-baseline.XXXXXX", bd);
        if (!mkdtemp(base->dir)) {
            fprintf(stderr, "bench_l2: baseline: cannot create a directory in %s: %s\n", bd,
                    strerror(errno));
            base = NULL;
            goto done;
        }
        base->dfd = open(base->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (base->dfd < 0) {
            fprintf(stderr, "bench_l2: baseline: open %s: %s\n", base->dir, strerror(errno));
            goto done;
        }
        base->odirect =
            O.baseline_odirect >= 0 ? O.baseline_odirect : spec_flag(spec, "use_odirect");
        base->fsync_on = O.baseline_fsync >= 0 ? O.baseline_fsync : spec_flag(spec, "fsync");
        if (base->odirect && s.chunk % ALIGN) {
            fprintf(stderr,
                    "bench_l2: baseline: the chunk size is not a multiple of %d: "
                    "buffered I/O instead of O_DIRECT\n",
                    ALIGN);
            base->odirect = 0;
        }
    }

    s.hash = calloc(s.n, sizeof(*s.hash));
    s.items = calloc(s.n, sizeof(*s.items));
    s.src = calloc(s.n, sizeof(*s.src));
    s.dst = calloc(s.n, sizeof(*s.dst));
    if (!s.hash || !s.items || !s.src || !s.dst) {
        fail("out of memory");
        goto done;
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    nonce = XXH3_64bits(&ts, sizeof(ts)) ^ (uint64_t)getpid();
    for (i = 0; i < s.n; i++) {
        if (stopped())
            goto done;
        s.src[i] = aligned_alloc(ALIGN, alloc_len);
        s.dst[i] = aligned_alloc(ALIGN, alloc_len);
        if (!s.src[i] || !s.dst[i]) {
            fail("out of memory for %zu chunks of %zu bytes (twice)", s.n, s.chunk);
            goto done;
        }
        fill_random(s.src[i], s.chunk, nonce + i);
        memset(s.dst[i], 0, alloc_len);
    }

    printf("bench_l2: spec %s\n", O.spec_text);
    printf("bench_l2: %zu chunks of %zu bytes (%.3f GB) per rep, %d rep%s, batch %zu, "
           "%d worker%s\n",
           s.n, s.chunk, (double)s.n * (double)s.chunk / GB, O.reps, O.reps == 1 ? "" : "s",
           O.batch, O.workers, O.workers == 1 ? "" : "s");
    if (!adapter_dir && !base)
        printf("bench_l2: no directory: nothing to sync or drop\n");
    else if (O.cold)
        printf("bench_l2: reads cold: syncfs, then fdatasync and POSIX_FADV_DONTNEED on every "
               "file of %s before each read phase\n",
               adapter_dir && base ? "both directories"
               : adapter_dir       ? "the adapter's directory"
                                   : "the baseline directory");
    else
        printf("bench_l2: reads warm: what the write phases left in the page cache\n");
    printf("bench_l2: adapter and baseline take turns every %zu keys, alternating who goes "
           "first; syncfs before each write phase\n",
           O.granule);
    if (base)
        printf("bench_l2: baseline in %s: one file per chunk, write()%s, read(); %s; 1 thread\n",
               base->dir, base->fsync_on ? " + fdatasync" : "",
               base->odirect ? "O_DIRECT" : "buffered");
    else
        printf("bench_l2: no baseline (no base_path in the spec and no --baseline-dir)\n");
    fflush(stdout);

    for (k = 0; k < O.reps; k++) {
        if (run_rep(&s, k, nonce, &reps[k]))
            goto done;
        nrep++;
        if (O.verbose || O.reps > 1)
            report_rep(&s, &reps[k], k);
    }
    report(&s, reps, nrep, type ? type : "adapter");
    if (O.status) {
        json_t *o = kvcd_l2_status(l2);
        char *txt = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);

        printf("status: %s\n", txt ? txt : "?");
        free(txt);
        json_decref(o);
    }
    rc = 0;

done:
    if (l2) {
        if (stored && adapter_range(&s, KVCD_L2_REMOVE, 0, s.n, 1))
            fprintf(stderr, "bench_l2: clean-up remove failed: objects may be left\n");
        while (!inflight_zero())
            uv_run(&loop, UV_RUN_ONCE);
        kvcd_l2_destroy(l2);
        l2 = NULL;
    }
    if (base) {
        base_unlink(base, 0, s.n, 1);
        if (base->dfd >= 0)
            close(base->dfd);
        if (rmdir(base->dir))
            fprintf(stderr, "bench_l2: baseline: rmdir %s: %s\n", base->dir, strerror(errno));
    }
    if (adapter_dir && created_from)
        remove_created_dirs(adapter_dir, tmp_dir, created_from);
    hash_pool_stop();
    uv_walk(&loop, close_walk, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop))
        fprintf(stderr, "bench_l2: the loop still has handles at exit\n");
    for (i = 0; s.src && i < s.n; i++) {
        free(s.src[i]);
        free(s.dst[i]);
    }
    free(s.src);
    free(s.dst);
    free(s.items);
    free(s.hash);
    json_decref(spec);
    if (fail_flag)
        rc = stop_sig == SIGALRM ? 3 : 1;
    fflush(stdout);
    fprintf(stderr, "bench_l2: %s in %.1f s\n", rc ? "failed" : "done", now_s() - t_start);
    return rc;
}
