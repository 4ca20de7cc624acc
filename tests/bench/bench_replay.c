/*
 * bench_replay.c - replay a prefix-caching trace through the real daemon and
 * compare its prefix hit ratio with a strict-LRU simulation of the same bytes.
 *
 * Trace: the public Mooncake format, JSON lines {"timestamp", "input_length",
 * "output_length", "hash_ids": [...]}, one hash id per 512-token block (equal
 * ids = equal prefixes). Without --trace a synthetic conversation-like trace
 * is generated (deterministic; --write-trace saves it), small enough for CI.
 * One block is one chunk of --block-kib KiB (default 64) whose bytes are a
 * function of its hash id.
 *
 * Each request, in trace order: LOOKUP all its blocks (prefix p), LOAD blocks
 * [0, p) and verify every byte, STORE blocks [p, n). The hit ratio is prefix
 * hit blocks / all blocks. Runs:
 *
 *  - "L1": kvcd without L2, L1 = --l1-frac of the working set (unique blocks x
 *    block bytes). The simulation is a strict LRU of the same number of blocks
 *    that sees the same uses in the same order (lookup touches the blocks
 *    present, load touches the prefix, store touches or inserts the rest). With
 *    the default exact-capacity eviction the two agree (--check: within 0.1
 *    point).
 *  - "L1+fs": plus an fs L2 holding --fs-frac of the working set. Simulated as
 *    two LRU tiers with kvcd's default policies: every store is written to fs
 *    as well (write-behind), the fs list moves on every use: the accesses L1
 *    does not serve (lookups of blocks missing from L1, prefetch loads,
 *    stores) and L1's hits, which kvcd reports to fs with the adapter's
 *    `touch` (a batch per lookup, sent before the lookup of the blocks L1
 *    lacks); a block prefetched from fs leaves L1 after its LOAD
 *    (--l2-prefetch-policy default). A hit is a block in either tier. Write-behind runs in the
 *    background, so the measured figure may differ from the model slightly.
 *    The line "model: disjoint L1/fs" is the hit ratio kvcd would get if L1
 *    and fs held disjoint sets (a block goes to fs when L1 evicts it, and back
 *    up on a hit): one LRU of both capacities. It is a simulation only.
 *  - "restart": the L1+fs run again, with a SIGTERM and a fresh start of the
 *    daemon (same fs directory) at --restart-at of the requests, once with the
 *    recency journal (default) and once with it off (recency_file "", file times
 *    as before); the hits after the restart are compared with those of the
 *    uninterrupted run over the same requests. A third restart adds
 *    --l2-save-l1-on-stop (L1's blocks written to fs once more at the stop, least
 *    recently used first; the model does the same to its fs list).
 *
 * Usage: bench_replay [--trace FILE] [--write-trace FILE] [--requests N]
 *                     [--block-kib K] [--l1-frac F] [--fs-frac F]
 *                     [--restart-at F] [--runs l1,fs,restart] [--seed S]
 *                     [--check] [--kvcd PATH] [--daemon-arg ARG]...
 *
 * --daemon-arg passes one more argument to every kvcd started (repeatable, at
 * most 8), e.g. --daemon-arg=--l1-high-watermark=0.95. --check exits 1 when
 * L1 alone is off the strict LRU by more than 0.1 point, a LOAD after a
 * LOOKUP hit missed, or the restart with the recency journal (default
 * settings) hit fewer blocks after the restart than the uninterrupted run.
 */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "protocol/kvcd_err.h"
#include "tests/bench/bench_util.h"

#define MODEL "bench/replay"
#define BATCH 64 /* keys per LOAD / STORE request */
#define TRL 64   /* fs trailer bytes per file */
#define WATCHDOG_S 900
#define START_MS 15000

/* ---- the trace -------------------------------------------------------------- */

typedef struct {
    uint32_t *blk;   /* dense block ids of all requests, back to back */
    size_t *off;     /* request i is blk[off[i] .. off[i+1]) */
    size_t nreq, nblk, cap_blk, cap_req;
    uint64_t *orig;  /* dense id -> trace hash id */
    size_t nuniq, cap_uniq;
    /* hash id -> dense id, open addressing */
    uint64_t *hkey;
    uint32_t *hval;
    size_t hmask;
} trace_t;

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);

    if (!q)
        bench_fail("out of memory");
    return q;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static void tr_rehash(trace_t *t)
{
    size_t n = t->hmask ? (t->hmask + 1) * 2 : 1024, i;
    uint64_t *k = calloc(n, sizeof(*k));
    uint32_t *v = malloc(n * sizeof(*v));

    if (!k || !v)
        bench_fail("out of memory");
    for (i = 0; i < n; i++)
        v[i] = UINT32_MAX;
    for (i = 0; t->hmask && i <= t->hmask; i++) {
        size_t s;

        if (t->hval[i] == UINT32_MAX)
            continue;
        for (s = mix64(t->hkey[i]) & (n - 1); v[s] != UINT32_MAX; s = (s + 1) & (n - 1))
            ;
        k[s] = t->hkey[i];
        v[s] = t->hval[i];
    }
    free(t->hkey);
    free(t->hval);
    t->hkey = k;
    t->hval = v;
    t->hmask = n - 1;
}

static uint32_t tr_dense(trace_t *t, uint64_t id)
{
    size_t s;

    if ((t->nuniq + 1) * 2 > t->hmask + 1)
        tr_rehash(t);
    for (s = mix64(id) & t->hmask; t->hval[s] != UINT32_MAX; s = (s + 1) & t->hmask)
        if (t->hkey[s] == id)
            return t->hval[s];
    if (t->nuniq == t->cap_uniq) {
        t->cap_uniq = t->cap_uniq ? t->cap_uniq * 2 : 4096;
        t->orig = xrealloc(t->orig, t->cap_uniq * sizeof(*t->orig));
    }
    t->hkey[s] = id;
    t->hval[s] = (uint32_t)t->nuniq;
    t->orig[t->nuniq] = id;
    return (uint32_t)t->nuniq++;
}

static void tr_add(trace_t *t, const uint64_t *ids, size_t n)
{
    size_t i;

    if (t->nreq + 2 > t->cap_req) {
        t->cap_req = t->cap_req ? t->cap_req * 2 : 1024;
        t->off = xrealloc(t->off, t->cap_req * sizeof(*t->off));
    }
    if (t->nblk + n > t->cap_blk) {
        while (t->nblk + n > t->cap_blk)
            t->cap_blk = t->cap_blk ? t->cap_blk * 2 : 65536;
        t->blk = xrealloc(t->blk, t->cap_blk * sizeof(*t->blk));
    }
    t->off[t->nreq] = t->nblk;
    for (i = 0; i < n; i++)
        t->blk[t->nblk++] = tr_dense(t, ids[i]);
    t->nreq++;
    t->off[t->nreq] = t->nblk;
}

/* Read a Mooncake trace (at most max requests; 0 = all). */
static void tr_read(trace_t *t, const char *path, size_t max)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    uint64_t *ids = NULL;
    size_t idcap = 0;

    if (!f)
        bench_fail("%s: %s", path, strerror(errno));
    while (getline(&line, &cap, f) > 0 && (!max || t->nreq < max)) {
        json_error_t je;
        json_t *j, *h;
        size_t i, n;

        lineno++;
        if (strspn(line, " \t\r\n") == strlen(line))
            continue;
        j = json_loads(line, 0, &je);
        if (!j)
            bench_fail("%s:%zu: %s", path, lineno, je.text);
        h = json_object_get(j, "hash_ids");
        if (!json_is_array(h))
            bench_fail("%s:%zu: no \"hash_ids\" array", path, lineno);
        n = json_array_size(h);
        if (n > idcap) {
            idcap = n * 2;
            ids = xrealloc(ids, idcap * sizeof(*ids));
        }
        for (i = 0; i < n; i++) {
            json_t *v = json_array_get(h, i);

            if (!json_is_integer(v) || json_integer_value(v) < 0)
                bench_fail("%s:%zu: hash_ids[%zu] is not an integer >= 0", path, lineno, i);
            ids[i] = (uint64_t)json_integer_value(v);
        }
        if (n)
            tr_add(t, ids, n);
        json_decref(j);
    }
    free(ids);
    free(line);
    fclose(f);
    if (!t->nreq)
        bench_fail("%s: no requests", path);
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t rng_below(uint64_t *s, size_t n)
{
    return (size_t)(rng_next(s) % n);
}

/* A conversation-like trace: sessions that share one of a few system prompts
 * and grow by a few blocks per turn; a turn continues a recent session more
 * often than an old one; some requests are one-off documents. Optionally
 * written out in the Mooncake format. */
#define GEN_SYS 6
#define GEN_SESS_MAX 64
static void tr_generate(trace_t *t, size_t nreq, uint64_t seed, const char *out)
{
    uint64_t sys[GEN_SYS][8], next_id = 1, rs = seed;
    size_t sys_len[GEN_SYS], nsess = 0, cap_sess = 0, i, j;
    struct sess {
        uint64_t ids[GEN_SESS_MAX];
        size_t n;
    } *sess = NULL;
    FILE *f = NULL;

    if (out && !(f = fopen(out, "w")))
        bench_fail("%s: %s", out, strerror(errno));
    for (i = 0; i < GEN_SYS; i++) {
        sys_len[i] = 2 + rng_below(&rs, 6);
        for (j = 0; j < sys_len[i]; j++)
            sys[i][j] = next_id++;
    }
    for (i = 0; i < nreq; i++) {
        size_t r = rng_below(&rs, 100), k, add;
        struct sess *s;

        if (nsess && r < 65) {
            /* continue: mostly one of the last 32 sessions, sometimes any */
            k = rng_below(&rs, 100) < 80 ? nsess - 1 - rng_below(&rs, nsess < 32 ? nsess : 32)
                                         : rng_below(&rs, nsess);
            s = &sess[k];
            add = 1 + rng_below(&rs, 3);
            if (s->n + add > GEN_SESS_MAX)
                add = 0;
        } else {
            if (nsess == cap_sess) {
                cap_sess = cap_sess ? cap_sess * 2 : 256;
                sess = xrealloc(sess, cap_sess * sizeof(*sess));
            }
            s = &sess[nsess++];
            k = rng_below(&rs, 100);
            k = k < 50 ? 0 : k < 75 ? 1 : k < 88 ? 2 : 3 + rng_below(&rs, GEN_SYS - 3);
            memcpy(s->ids, sys[k], sys_len[k] * sizeof(uint64_t));
            s->n = sys_len[k];
            add = r < 85 ? 1 + rng_below(&rs, 4) : 8 + rng_below(&rs, 16); /* a document */
        }
        for (j = 0; j < add; j++)
            s->ids[s->n++] = next_id++;
        tr_add(t, s->ids, s->n);
        if (f) {
            fprintf(f, "{\"timestamp\": %zu, \"input_length\": %zu, \"output_length\": %zu, "
                       "\"hash_ids\": [", i * 250, s->n * 512 - rng_below(&rs, 512),
                    32 + rng_below(&rs, 480));
            for (j = 0; j < s->n; j++)
                fprintf(f, "%s%" PRIu64, j ? ", " : "", s->ids[j]);
            fprintf(f, "]}\n");
        }
    }
    free(sess);
    if (f && fclose(f))
        bench_fail("%s: %s", out, strerror(errno));
}

/* ---- strict LRU over dense ids ------------------------------------------------ */

typedef struct {
    uint32_t *prev, *next;
    uint8_t *in;
    uint32_t head, tail; /* head = least recent; UINT32_MAX = none */
    size_t n, cap;
} lru_t;

#define NIL UINT32_MAX

static void lru_init(lru_t *l, size_t universe, size_t cap)
{
    l->prev = calloc(universe, sizeof(uint32_t));
    l->next = calloc(universe, sizeof(uint32_t));
    l->in = calloc(universe, 1);
    if (!l->prev || !l->next || !l->in)
        bench_fail("out of memory");
    l->head = l->tail = NIL;
    l->n = 0;
    l->cap = cap;
}

static void lru_free(lru_t *l)
{
    free(l->prev);
    free(l->next);
    free(l->in);
}

static void lru_unlink(lru_t *l, uint32_t x)
{
    if (l->prev[x] != NIL)
        l->next[l->prev[x]] = l->next[x];
    else
        l->head = l->next[x];
    if (l->next[x] != NIL)
        l->prev[l->next[x]] = l->prev[x];
    else
        l->tail = l->prev[x];
    l->in[x] = 0;
    l->n--;
}

static void lru_push(lru_t *l, uint32_t x)
{
    l->prev[x] = l->tail;
    l->next[x] = NIL;
    if (l->tail != NIL)
        l->next[l->tail] = x;
    else
        l->head = x;
    l->tail = x;
    l->in[x] = 1;
    l->n++;
}

/* Use x: move it to the MRU end, inserting (and evicting the LRU) if absent. */
static void lru_use(lru_t *l, uint32_t x)
{
    if (l->in[x]) {
        lru_unlink(l, x);
    } else {
        if (l->cap == 0)
            return;
        if (l->n >= l->cap)
            lru_unlink(l, l->head);
    }
    lru_push(l, x);
}

static void lru_touch(lru_t *l, uint32_t x)
{
    if (l->in[x]) {
        lru_unlink(l, x);
        lru_push(l, x);
    }
}

static void lru_drop(lru_t *l, uint32_t x)
{
    if (l->in[x])
        lru_unlink(l, x);
}

static void lru_clear(lru_t *l)
{
    while (l->head != NIL)
        lru_unlink(l, l->head);
}

/* One request through the model; returns its prefix hits. fs NULL: L1 only. */
static size_t sim_request(lru_t *l1, lru_t *fs, const uint32_t *b, size_t n)
{
    size_t i, p = 0;

    /* LOOKUP: L1 first; its hits reach fs as a touch batch, sent before the
     * lookup of the rest (the blocks L1 lacks) */
    for (i = 0; i < n; i++) {
        if (l1->in[b[i]]) {
            lru_touch(l1, b[i]);
            if (fs)
                lru_touch(fs, b[i]);
        }
    }
    for (i = 0; fs && i < n; i++)
        if (!l1->in[b[i]])
            lru_touch(fs, b[i]);
    while (p < n && (l1->in[b[p]] || (fs && fs->in[b[p]])))
        p++;
    for (i = 0; i < p; i++) { /* prefetch of the fs part of the prefix */
        if (!l1->in[b[i]]) {
            lru_use(l1, b[i]);
            lru_touch(fs, b[i]);
            l1->in[b[i]] = 2; /* prefetched: leaves L1 after its LOAD */
        }
    }
    for (i = 0; i < p; i++) { /* LOAD; an L1 hit touches fs too */
        if (l1->in[b[i]] == 2) {
            lru_drop(l1, b[i]);
        } else {
            lru_touch(l1, b[i]);
            if (fs)
                lru_touch(fs, b[i]);
        }
    }
    for (i = p; i < n; i++) { /* STORE, written behind to fs */
        if (l1->in[b[i]]) {
            lru_touch(l1, b[i]);
            continue;
        }
        lru_use(l1, b[i]);
        if (fs)
            lru_use(fs, b[i]);
    }
    return p;
}

/* ---- the daemon ------------------------------------------------------------- */

typedef struct {
    const trace_t *t;
    size_t block;      /* bytes per block */
    size_t l1_blocks;  /* capacity in blocks */
    size_t fs_files;   /* 0: no fs */
    const char *bin;
    int save_l1;          /* start kvcd with --l2-save-l1-on-stop */
    const char *extra[8]; /* --daemon-arg */
    size_t nextra;
    bench_daemon_t d;
    char fsdir[400];
    kvcd_client_t *c;
    kvcd_key_t base;
    uint8_t (*hash)[8];  /* one per key of a request */
    kvcd_bytes_t *hb;
    void **bufs;
    size_t *lens, *caps;
    int *res;
    uint8_t *present;
    uint8_t *expect;
    uint64_t verified, load_errors, store_errors;
} run_t;

static void key_of(run_t *r, size_t i, uint64_t id)
{
    int k;

    for (k = 0; k < 8; k++)
        r->hash[i][k] = (uint8_t)(id >> (8 * (7 - k)));
    r->hb[i].ptr = r->hash[i];
    r->hb[i].len = 8;
}

static void daemon_start(run_t *r, int journal)
{
    char l1gb[64], spec[768];
    const char *args[32];
    size_t n = 0, i;

    snprintf(l1gb, sizeof(l1gb), "%.17g",
             (double)(r->l1_blocks * r->block) / (double)(1ull << 30));
    args[n++] = "--l1-size-gb";
    args[n++] = l1gb;
    args[n++] = "--log-level";
    args[n++] = "warning";
    for (i = 0; i < r->nextra; i++)
        args[n++] = r->extra[i];
    if (r->save_l1)
        args[n++] = "--l2-save-l1-on-stop";
    if (r->fs_files) {
        snprintf(spec, sizeof(spec),
                 "{\"type\":\"fs\",\"base_path\":\"%s\",\"max_capacity_gb\":%.17g,"
                 "\"min_free_percent\":0%s}",
                 r->fsdir,
                 ((double)r->fs_files * (double)(r->block + TRL) + 512.0) / (double)(1ull << 30),
                 journal ? "" : ",\"recency_file\":\"\"");
        args[n++] = "--l2-adapter";
        args[n++] = spec;
    }
    args[n] = NULL;
    if (bench_daemon_start(&r->d, r->bin, args, START_MS))
        bench_fail("kvcd did not start");
    if (kvcd_client_connect(r->d.endpoint, 30000, &r->c))
        bench_fail("connect");
    kvcd_keyset(&r->base, MODEL, 1, 0, 0, NULL);
}

/* Find "scan": {"state": ...} anywhere in the status and return whether every
 * one says done. */
static int scans_done(json_t *j)
{
    const char *k;
    json_t *v;
    size_t i;

    if (json_is_object(j)) {
        json_t *sc = json_object_get(j, "scan"), *st;

        if (json_is_object(sc) && (st = json_object_get(sc, "state")) && json_is_string(st) &&
            strcmp(json_string_value(st), "done"))
            return 0;
        json_object_foreach(j, k, v)
            if (!scans_done(v))
                return 0;
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v)
            if (!scans_done(v))
                return 0;
    }
    return 1;
}

static long long find_int(json_t *j, const char *name)
{
    const char *k;
    json_t *v;
    size_t i;
    long long r;

    if (json_is_object(j)) {
        json_object_foreach(j, k, v) {
            if (!strcmp(k, name) && json_is_integer(v))
                return (long long)json_integer_value(v);
            if ((r = find_int(v, name)) >= 0)
                return r;
        }
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v)
            if ((r = find_int(v, name)) >= 0)
                return r;
    }
    return -1;
}

/* Wait for the fs start-up scan; returns the files the journal placed. */
static long long wait_scan(run_t *r)
{
    double deadline = bench_now() + 60;

    while (bench_now() < deadline) {
        char *s = NULL;
        json_t *j;
        long long restored;

        if (kvcd_client_status(r->c, &s))
            bench_fail("status");
        j = json_loads(s, 0, NULL);
        free(s);
        if (!j)
            bench_fail("status is not JSON");
        if (scans_done(j)) {
            restored = find_int(j, "recency_restored");
            json_decref(j);
            return restored;
        }
        json_decref(j);
        usleep(10000);
    }
    bench_fail("fs scan did not finish");
}

static void daemon_stop(run_t *r)
{
    int rc;

    kvcd_client_close(r->c);
    r->c = NULL;
    rc = bench_daemon_stop(&r->d, 30000);
    if (rc != 0)
        bench_fail("kvcd exited with %d on SIGTERM", rc);
}

static void fill_block(void *buf, size_t len, uint64_t id)
{
    bench_fill_random(buf, len, id * 0x9e3779b97f4a7c15ull + 1);
}

/* One request through the daemon; returns its prefix hits. */
static size_t run_request(run_t *r, const uint32_t *b, size_t n)
{
    size_t i, j, p = 0, m;
    int rc;

    for (i = 0; i < n; i++)
        key_of(r, i, r->t->orig[b[i]]);
    rc = kvcd_client_lookup(r->c, &r->base, r->hb, n, &p, r->present);
    if (rc)
        bench_fail("lookup: %s", kvcd_strerror(rc));
    for (i = 0; i < p; i += m) {
        m = p - i < BATCH ? p - i : BATCH;
        rc = kvcd_client_load(r->c, &r->base, r->hb + i, m, r->bufs, r->caps, r->lens, r->res);
        if (rc)
            bench_fail("load: %s", kvcd_strerror(rc));
        for (j = 0; j < m; j++) {
            if (r->res[j] != 0 || r->lens[j] != r->block) {
                r->load_errors++;
                continue;
            }
            fill_block(r->expect, r->block, r->t->orig[b[i + j]]);
            if (memcmp(r->expect, r->bufs[j], r->block))
                bench_fail("block %" PRIu64 ": loaded bytes differ from stored ones",
                           r->t->orig[b[i + j]]);
            r->verified++;
        }
    }
    for (i = p; i < n; i += m) {
        m = n - i < BATCH ? n - i : BATCH;
        for (j = 0; j < m; j++) {
            fill_block(r->bufs[j], r->block, r->t->orig[b[i + j]]);
            r->lens[j] = r->block;
        }
        rc = kvcd_client_store(r->c, &r->base, r->hb + i, m, (const void *const *)r->bufs,
                               r->lens, r->res);
        if (rc)
            bench_fail("store: %s", kvcd_strerror(rc));
        for (j = 0; j < m; j++)
            r->store_errors += r->res[j] != 0;
    }
    return p;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    return remove(p);
}

typedef struct {
    uint64_t blocks, hits, sim_hits;       /* whole run */
    uint64_t blocks2, hits2, sim_hits2;    /* requests from `from` on */
    uint64_t excl_hits;                    /* model of disjoint L1 / fs tiers */
    long long restored;
    double secs;
} result_t;

/* Replay the whole trace; restart_at (a request index, 0 = never) stops and
 * starts the daemon there, with or without the recency journal. */
static result_t replay(run_t *r, size_t from, size_t restart_at, int journal)
{
    const trace_t *t = r->t;
    result_t res = {0};
    lru_t l1, fs, ex;
    size_t i, maxn = 0;
    double t0;

    res.restored = -1;
    for (i = 0; i < t->nreq; i++)
        if (t->off[i + 1] - t->off[i] > maxn)
            maxn = t->off[i + 1] - t->off[i];
    r->hash = xrealloc(NULL, maxn * sizeof(*r->hash));
    r->hb = xrealloc(NULL, maxn * sizeof(*r->hb));
    r->present = xrealloc(NULL, maxn);
    r->bufs = xrealloc(NULL, BATCH * sizeof(void *));
    r->lens = xrealloc(NULL, BATCH * sizeof(size_t));
    r->caps = xrealloc(NULL, BATCH * sizeof(size_t));
    r->res = xrealloc(NULL, BATCH * sizeof(int));
    for (i = 0; i < BATCH; i++) {
        r->bufs[i] = xrealloc(NULL, r->block);
        r->caps[i] = r->block;
    }
    r->expect = xrealloc(NULL, r->block);
    r->verified = r->load_errors = r->store_errors = 0;

    if (bench_make_dir(&r->d))
        bench_fail("mkdtemp: %s", strerror(errno));
    snprintf(r->fsdir, sizeof(r->fsdir), "%s/fs", r->d.dir);
    lru_init(&l1, t->nuniq, r->l1_blocks);
    lru_init(&fs, t->nuniq, r->fs_files);
    /* Disjoint tiers (L1 evictions demoted to fs, fs hits promoted) hold the
     * blocks one LRU of both capacities holds. Model only. */
    lru_init(&ex, t->nuniq, r->l1_blocks + r->fs_files);
    daemon_start(r, journal);
    if (r->fs_files)
        wait_scan(r);
    t0 = bench_now();
    for (i = 0; i < t->nreq; i++) {
        const uint32_t *b = t->blk + t->off[i];
        size_t n = t->off[i + 1] - t->off[i], h, s;

        if (restart_at && i == restart_at) {
            daemon_stop(r);
            if (r->save_l1) /* L1's blocks go to fs once more, LRU first */
                for (uint32_t x = l1.head; x != NIL; x = l1.next[x])
                    lru_use(&fs, x);
            lru_clear(&l1); /* L1 is memory; the fs list survives as it was */
            daemon_start(r, journal);
            res.restored = wait_scan(r);
        }
        h = run_request(r, b, n);
        s = sim_request(&l1, r->fs_files ? &fs : NULL, b, n);
        res.excl_hits += sim_request(&ex, NULL, b, n);
        res.blocks += n;
        res.hits += h;
        res.sim_hits += s;
        if (i >= from) {
            res.blocks2 += n;
            res.hits2 += h;
            res.sim_hits2 += s;
        }
    }
    res.secs = bench_now() - t0;
    daemon_stop(r);
    if (r->load_errors || r->store_errors)
        fprintf(stderr, "bench: %" PRIu64 " load misses after a LOOKUP hit, %" PRIu64
                        " failed stores\n", r->load_errors, r->store_errors);
    nftw(r->fsdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    bench_cleanup_now();
    lru_free(&l1);
    lru_free(&fs);
    lru_free(&ex);
    for (i = 0; i < BATCH; i++)
        free(r->bufs[i]);
    free(r->bufs);
    free(r->lens);
    free(r->caps);
    free(r->res);
    free(r->hash);
    free(r->hb);
    free(r->present);
    free(r->expect);
    return res;
}

static double pct(uint64_t a, uint64_t b)
{
    return b ? 100.0 * (double)a / (double)b : 0.0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_replay [--trace FILE] [--write-trace FILE] [--requests N]\n"
            "                    [--block-kib K] [--l1-frac F] [--fs-frac F] [--restart-at F]\n"
            "                    [--runs l1,fs,restart] [--seed S] [--check] [--kvcd PATH]\n"
            "                    [--daemon-arg ARG]...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"trace", required_argument, NULL, 't'},   {"write-trace", required_argument, NULL, 'w'},
        {"requests", required_argument, NULL, 'n'}, {"block-kib", required_argument, NULL, 'b'},
        {"l1-frac", required_argument, NULL, 'l'}, {"fs-frac", required_argument, NULL, 'f'},
        {"restart-at", required_argument, NULL, 'r'}, {"runs", required_argument, NULL, 'R'},
        {"seed", required_argument, NULL, 's'},    {"check", no_argument, NULL, 'c'},
        {"kvcd", required_argument, NULL, 'k'},    {"daemon-arg", required_argument, NULL, 'a'},
        {NULL, 0, NULL, 0},
    };
    const char *trace = NULL, *write_trace = NULL, *runs = "l1,fs,restart";
    const char *bin = getenv("KVCD_BIN") ? getenv("KVCD_BIN") : "build/kvcd";
    double l1_frac = 0.1, fs_frac = 0.3, restart_frac = 0.5;
    size_t nreq = 0, block_kib = 64, from;
    uint64_t seed = 1;
    int check = 0, o, bad = 0;
    trace_t t = {0};
    run_t r;

    memset(&r, 0, sizeof(r));
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 't': trace = optarg; break;
        case 'w': write_trace = optarg; break;
        case 'n': nreq = strtoul(optarg, NULL, 10); break;
        case 'b': block_kib = strtoul(optarg, NULL, 10); break;
        case 'l': l1_frac = atof(optarg); break;
        case 'f': fs_frac = atof(optarg); break;
        case 'r': restart_frac = atof(optarg); break;
        case 'R': runs = optarg; break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'c': check = 1; break;
        case 'k': bin = optarg; break;
        case 'a':
            if (r.nextra == 8)
                usage();
            r.extra[r.nextra++] = optarg;
            break;
        default: usage();
        }
    }
    if (optind != argc || block_kib == 0 || block_kib % 4 || !(l1_frac > 0 && l1_frac <= 1) ||
        !(fs_frac >= 0 && fs_frac <= 1) || !(restart_frac > 0 && restart_frac < 1))
        usage();
    bench_install_cleanup(WATCHDOG_S);
    if (trace)
        tr_read(&t, trace, nreq);
    else
        tr_generate(&t, nreq ? nreq : 1500, seed, write_trace);

    r.t = &t;
    r.bin = bin;
    r.block = block_kib * 1024;
    r.l1_blocks = (size_t)(l1_frac * (double)t.nuniq);
    r.l1_blocks = r.l1_blocks ? r.l1_blocks : 1;
    from = (size_t)(restart_frac * (double)t.nreq);
    printf("trace: %s, %zu requests, %zu blocks, %zu unique (working set %.1f MiB at %zu KiB "
           "a block)\n",
           trace ? trace : "synthetic", t.nreq, t.nblk, t.nuniq,
           (double)t.nuniq * (double)r.block / BENCH_MIB, block_kib);
    printf("%-28s %10s %10s %10s %8s %7s\n", "run", "L1 blocks", "fs files", "measured",
           "LRU sim", "secs");

    if (strstr(runs, "l1")) {
        result_t x;

        r.fs_files = 0;
        x = replay(&r, from, 0, 1);
        printf("%-28s %10zu %10s %9.2f%% %7.2f%% %7.2f\n", "L1 alone", r.l1_blocks, "-",
               pct(x.hits, x.blocks), pct(x.sim_hits, x.blocks), x.secs);
        if (check && (pct(x.hits, x.blocks) - pct(x.sim_hits, x.blocks) > 0.1 ||
                      pct(x.sim_hits, x.blocks) - pct(x.hits, x.blocks) > 0.1)) {
            fprintf(stderr, "bench: L1 measured differs from strict LRU by more than 0.1 point\n");
            bad = 1;
        }
        bad |= check && (r.load_errors || r.store_errors);
    }
    if (strstr(runs, "fs") || strstr(runs, "restart")) {
        result_t a, b, c, d;

        r.fs_files = (size_t)(fs_frac * (double)t.nuniq);
        if (!r.fs_files)
            bench_fail("--fs-frac %.3f holds no file", fs_frac);
        a = replay(&r, from, 0, 1);
        printf("%-28s %10zu %10zu %9.2f%% %7.2f%% %7.2f\n", "L1+fs (L1 hits touch fs)",
               r.l1_blocks, r.fs_files,
               pct(a.hits, a.blocks), pct(a.sim_hits, a.blocks), a.secs);
        printf("%-28s %10s %10s %10s %7.2f%%\n", "  model: disjoint L1/fs", "", "", "",
               pct(a.excl_hits, a.blocks));
        bad |= check && (r.load_errors || r.store_errors);
        if (strstr(runs, "restart")) {
            printf("after request %zu (second part, %" PRIu64 " blocks):\n", from, a.blocks2);
            printf("%-28s %10s %10s %9.2f%% %7.2f%%\n", "  uninterrupted", "", "",
                   pct(a.hits2, a.blocks2), pct(a.sim_hits2, a.blocks2));
            b = replay(&r, from, from, 1);
            printf("%-28s %10s %10lld %9.2f%% %7.2f%% %7.2f\n", "  restart, recency journal", "",
                   b.restored, pct(b.hits2, b.blocks2), pct(b.sim_hits2, b.blocks2), b.secs);
            bad |= check && (r.load_errors || r.store_errors);
            r.save_l1 = 1;
            d = replay(&r, from, from, 1);
            r.save_l1 = 0;
            printf("%-28s %10s %10lld %9.2f%% %7.2f%% %7.2f\n", "  restart, journal + save L1", "",
                   d.restored, pct(d.hits2, d.blocks2), pct(d.sim_hits2, d.blocks2), d.secs);
            bad |= check && (r.load_errors || r.store_errors);
            c = replay(&r, from, from, 0);
            printf("%-28s %10s %10s %9.2f%% %7.2f%% %7.2f\n", "  restart, file times", "", "-",
                   pct(c.hits2, c.blocks2), pct(c.sim_hits2, c.blocks2), c.secs);
            printf("  hits lost by the restart: %+" PRId64 " blocks with the journal, %+" PRId64
                   " with the journal and --l2-save-l1-on-stop, %+" PRId64 " with file times\n",
                   (int64_t)a.hits2 - (int64_t)b.hits2, (int64_t)a.hits2 - (int64_t)d.hits2,
                   (int64_t)a.hits2 - (int64_t)c.hits2);
            if (check && b.hits2 < a.hits2) {
                fprintf(stderr, "bench: the restart with the recency journal lost %" PRId64
                                " hits against the uninterrupted run\n",
                        (int64_t)a.hits2 - (int64_t)b.hits2);
                bad = 1;
            }
        }
    }
    free(t.blk);
    free(t.off);
    free(t.orig);
    free(t.hkey);
    free(t.hval);
    return bad;
}
