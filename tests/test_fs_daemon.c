/*
 * test_fs_daemon.c - the fs adapter behind the real daemon: persistence across
 * restarts, two daemons sharing one directory, files and modes on disk,
 * eviction of files that LOOKUP asked about but never loaded, and a chunk kept
 * hot in L1 surviving in fs (the daemon's touches) past a restart.
 */
#include <check.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "protocol/client.h"
#include "tests/support.h"

#define MiB (1u << 20)
#define N 12

static uint8_t hb[N][8];
static kvcd_bytes_t H[N];
static kvcd_key_t base;

static void keys(void)
{
    size_t i;

    kvcd_keyset(&base, "meta-llama/Llama-3.1-8B", 4, 3, 0, "tenant-a");
    for (i = 0; i < N; i++) {
        memset(hb[i], 0, 8);
        hb[i][0] = 0xab;
        hb[i][7] = (uint8_t)i;
        H[i].ptr = hb[i];
        H[i].len = 8;
    }
}

static size_t chunk_len(size_t i)
{
    return MiB + 4096 * i + 123; /* not a multiple of 4 KiB */
}

static void *chunk(size_t i)
{
    void *p = malloc(chunk_len(i));

    kvcd_fill_random(p, chunk_len(i), 77 + i);
    return p;
}

static void start_fs(kvcd_proc_t *p, const char *dir, const char *endpoint_dir,
                     const char *extra_policy)
{
    char spec[600];
    const char *args[] = {"--l2-adapter", spec, "--l1-size-gb", "0.0625",
                          extra_policy ? "--l2-store-policy" : NULL, extra_policy, NULL};

    snprintf(spec, sizeof(spec), "{\"type\":\"fs\",\"base_path\":\"%s\"}", dir);
    if (endpoint_dir) {
        char edir[sizeof(p->dir)];

        /* endpoint_dir may be p->dir itself: copy it before p is cleared. */
        snprintf(edir, sizeof(edir), "%s", endpoint_dir);
        memset(p, 0, sizeof(*p));
        snprintf(p->dir, sizeof(p->dir), "%s", edir);
        snprintf(p->endpoint, sizeof(p->endpoint), "ipc://%s/kvcd.sock", p->dir);
        snprintf(p->log, sizeof(p->log), "%s/kvcd.log", p->dir);
        ck_assert_msg(kvcd_proc_restart(p, args) == 0, "kvcd did not start: %s", p->log);
    } else {
        ck_assert_msg(kvcd_proc_start(p, args) == 0, "kvcd did not start: %s", p->log);
    }
}

static kvcd_client_t *connect_to(const kvcd_proc_t *p)
{
    kvcd_client_t *c;

    ck_assert_int_eq(kvcd_client_connect(p->endpoint, 20000, &c), 0);
    return c;
}

static void store_all(kvcd_client_t *c)
{
    const void *bufs[N];
    size_t lens[N], i;
    int res[N];

    for (i = 0; i < N; i++) {
        bufs[i] = chunk(i);
        lens[i] = chunk_len(i);
    }
    ck_assert_int_eq(kvcd_client_store(c, &base, H, N, bufs, lens, res), 0);
    for (i = 0; i < N; i++) {
        ck_assert_int_eq(res[i], 0);
        free((void *)bufs[i]);
    }
}

static json_int_t stat_of(kvcd_client_t *c, const char *group, const char *name)
{
    return kvcd_test_stat(c, group, name);
}

static void settle(kvcd_client_t *c)
{
    int i;

    for (i = 0; i < 1000 && stat_of(c, "storage", "l2_inflight") > 0; i++)
        usleep(10000);
    ck_assert_int_eq(stat_of(c, "storage", "l2_inflight"), 0);
}

/* Look up and load all keys through c; every byte must match. */
static void expect_all(kvcd_client_t *c)
{
    void *bufs[N];
    size_t caps[N], lens[N], prefix, i;
    int res[N];

    ck_assert_int_eq(kvcd_client_lookup(c, &base, H, N, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, N);
    for (i = 0; i < N; i++) {
        caps[i] = chunk_len(i);
        bufs[i] = malloc(caps[i]);
    }
    ck_assert_int_eq(kvcd_client_load(c, &base, H, N, bufs, caps, lens, res), 0);
    for (i = 0; i < N; i++) {
        void *want = chunk(i);

        ck_assert_int_eq(res[i], 0);
        ck_assert_uint_eq(lens[i], chunk_len(i));
        ck_assert_msg(memcmp(bufs[i], want, lens[i]) == 0, "key %zu differs", i);
        free(want);
        free(bufs[i]);
    }
}

static size_t count_files(const char *dir, const char *pattern, int want_mode)
{
    char cmd[800], out[256];
    const char *argv[] = {"sh", "-c", cmd, NULL};

    if (want_mode)
        snprintf(cmd, sizeof(cmd), "find '%s' -name '%s' -type f ! -perm %o | wc -l", dir,
                 pattern, want_mode);
    else
        snprintf(cmd, sizeof(cmd), "find '%s' -name '%s' -type f | wc -l", dir, pattern);
    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 10000), 0);
    return (size_t)strtoul(out, NULL, 10);
}

START_TEST(restart_keeps_chunks)
{
    kvcd_proc_t a;
    kvcd_client_t *c;
    char dir[400], sockdir[300];

    keys();
    /* A plain daemon gives us a private temp dir; then restart it on fs. */
    ck_assert_int_eq(kvcd_proc_start(&a, NULL), 0);
    ck_assert_int_eq(kvcd_proc_stop(&a, SIGTERM, 10000), 0);
    snprintf(sockdir, sizeof(sockdir), "%s", a.dir);
    snprintf(dir, sizeof(dir), "%s/l2", a.dir);
    start_fs(&a, dir, sockdir, NULL);
    c = connect_to(&a);
    store_all(c);
    settle(c);
    kvcd_client_close(c);
    ck_assert_int_eq(kvcd_proc_stop(&a, SIGTERM, 10000), 0);
    ck_assert_uint_eq(count_files(dir, "*.data", 0), N);
    ck_assert_uint_eq(count_files(dir, "*.data", 0600), 0); /* all files 0600 */

    /* A new daemon on the same base_path: empty L1, every chunk from disk. */
    start_fs(&a, dir, sockdir, NULL);
    c = connect_to(&a);
    ck_assert_int_eq(stat_of(c, "l1", "objects"), 0);
    expect_all(c);
    ck_assert_int_eq(stat_of(c, "storage", "l2_hits"), N);
    kvcd_client_close(c);
    ck_assert_int_eq(kvcd_proc_stop(&a, SIGTERM, 10000), 0);
    ck_assert(!kvcd_proc_log_has_sanitizer_report(&a));
    kvcd_proc_cleanup(&a);
}
END_TEST

START_TEST(two_daemons_share_a_directory)
{
    kvcd_proc_t a, b;
    kvcd_client_t *ca, *cb;
    char dir[400];
    size_t prefix;
    int res[N];
    struct stat st;

    keys();
    ck_assert_int_eq(kvcd_proc_start(&a, NULL), 0);
    ck_assert_int_eq(kvcd_proc_stop(&a, SIGTERM, 10000), 0);
    snprintf(dir, sizeof(dir), "%s/shared", a.dir);
    /* Both with skip_l1, so every lookup goes to the directory. */
    start_fs(&a, dir, a.dir, "skip_l1");
    ck_assert_int_eq(kvcd_proc_start(&b, (const char *const[]){"--l1-size-gb", "0.0625", NULL}),
                     0);
    ck_assert_int_eq(kvcd_proc_stop(&b, SIGTERM, 10000), 0);
    start_fs(&b, dir, b.dir, "skip_l1");
    ca = connect_to(&a);
    cb = connect_to(&b);

    store_all(ca);
    settle(ca);
    ck_assert_int_eq(stat(dir, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0700);
    expect_all(cb); /* written by A, read by B */

    ck_assert_int_eq(kvcd_client_remove(cb, &base, H, N, res), 0);
    ck_assert_int_eq(res[0], 0);
    ck_assert_int_eq(kvcd_client_lookup(ca, &base, H, N, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, 0); /* removed through B, a miss through A */
    ck_assert_uint_eq(count_files(dir, "*.data", 0), 0);

    kvcd_client_close(ca);
    kvcd_client_close(cb);
    ck_assert_int_eq(kvcd_proc_stop(&a, SIGTERM, 10000), 0);
    ck_assert_int_eq(kvcd_proc_stop(&b, SIGTERM, 10000), 0);
    ck_assert(!kvcd_proc_log_has_sanitizer_report(&a));
    ck_assert(!kvcd_proc_log_has_sanitizer_report(&b));
    kvcd_proc_cleanup(&a);
    kvcd_proc_cleanup(&b);
}
END_TEST

START_TEST(unwritable_base_path_is_a_clear_error)
{
    char spec[300];
    const char *argv[] = {kvcd_test_bin(), "--l2-adapter", spec, NULL};
    char out[2048];

    /* A path below a regular file can never be created, even by root. */
    snprintf(spec, sizeof(spec), "{\"type\":\"fs\",\"base_path\":\"/etc/hostname/kvcd\"}");
    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 5000), 2);
    ck_assert_msg(strstr(out, "--l2-adapter #1 (fs): base_path") != NULL, "%s", out);
    snprintf(spec, sizeof(spec), "{\"type\":\"fs\",\"base_path\":42}");
    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 5000), 2);
    ck_assert_msg(strstr(out, "--l2-adapter #1 (fs): base_path") != NULL, "%s", out);
}
END_TEST

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    return remove(p);
}

/* Item 9 (issue 9): LOOKUP asks L2 about every key after its first miss and
 * loads only the prefix; the files of those keys must stay evictable, so that
 * stores past the capacity bound still reach the directory, within the bound. */
START_TEST(item09_lookups_past_a_gap_leave_files_evictable)
{
    enum { M = 16 };
    char dir[64] = "/tmp/kvcd-test-fsd-XXXXXX", spec[400];
    const char *args[] = {"--l2-adapter", spec, "--l1-size-gb", "0.0625",
                          "--l2-store-policy", "skip_l1", NULL};
    const size_t len = MiB - 64; /* files of exactly 1 MiB: 16 fill the bound */
    uint8_t hh[2 * M + 1][8];
    kvcd_bytes_t K[2 * M + 1];
    const void *bufs[M];
    size_t lens[M], prefix, i;
    int res[M], round;
    void *payload = chunk(0);
    kvcd_proc_t a;
    kvcd_client_t *c;

    keys();
    ck_assert(mkdtemp(dir) != NULL);
    snprintf(spec, sizeof(spec),
             "{\"type\":\"fs\",\"base_path\":\"%s/l2\",\"max_capacity_gb\":0.015625}", dir);
    for (i = 0; i < 2 * M + 1; i++)
        K[i] = kvcd_test_hash(hh[i], 0x900 + i);
    for (i = 0; i < M; i++) {
        bufs[i] = payload;
        lens[i] = len;
    }
    kvcd_test_start(&a, &c, args);
    ck_assert_int_eq(kvcd_client_store(c, &base, K + 1, M, bufs, lens, res), 0);
    settle(c);
    ck_assert_uint_eq(count_files(dir, "*.data", 0), M);
    for (round = 0; round < 5; round++) { /* K[0] was never stored: the gap */
        ck_assert_int_eq(kvcd_client_lookup(c, &base, K, M + 1, &prefix, NULL), 0);
        ck_assert_uint_eq(prefix, 0);
    }
    ck_assert_int_eq(kvcd_client_store(c, &base, K + M + 1, M, bufs, lens, res), 0);
    for (i = 0; i < M; i++)
        ck_assert_int_eq(res[i], 0);
    settle(c);
    /* the new keys reached the directory, evicting the looked-up files */
    ck_assert_int_eq(stat_of(c, "storage", "write_behind_failed"), 0);
    ck_assert_int_eq(stat_of(c, "storage", "skip_l1_dropped"), 2 * M);
    ck_assert_int_eq(kvcd_client_lookup(c, &base, K + M + 1, M, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, M);
    ck_assert_uint_eq(count_files(dir, "*.data", 0), M);
    ck_assert_int_eq(kvcd_client_lookup(c, &base, K + 1, M, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, 0);
    kvcd_test_stop(&a, &c);
    free(payload);
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}
END_TEST

/* Integer `name` under a "scan" object anywhere in the status, -1 if none. */
static long long scan_field(json_t *j, const char *name)
{
    const char *k;
    json_t *v;
    size_t i;
    long long r;

    if (json_is_object(j)) {
        json_t *sc = json_object_get(j, "scan");

        if (json_is_object(sc) && json_is_integer(json_object_get(sc, name)))
            return (long long)json_integer_value(json_object_get(sc, name));
        json_object_foreach(j, k, v)
            if ((r = scan_field(v, name)) >= 0)
                return r;
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v)
            if ((r = scan_field(v, name)) >= 0)
                return r;
    }
    return -1;
}

/* 1 when every "scan" object in the status says "done". */
static int scans_done(json_t *j)
{
    const char *k;
    json_t *v, *sc;
    size_t i;

    if (json_is_object(j)) {
        sc = json_object_get(j, "scan");
        if (json_is_object(sc) && json_is_string(json_object_get(sc, "state")) &&
            strcmp(json_string_value(json_object_get(sc, "state")), "done"))
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

/* Wait for the fs start-up scan; returns scan.recency_restored. */
static long long scan_done(kvcd_client_t *c)
{
    int i;

    for (i = 0; i < 1000; i++) {
        json_t *st = kvcd_test_status(c);
        long long r = scans_done(st) ? scan_field(st, "recency_restored") : -2;

        json_decref(st);
        if (r != -2)
            return r;
        usleep(10000);
    }
    ck_abort_msg("fs scan did not finish");
    return -1;
}

/* The fs adapter's counters.touches (L1 hits the daemon reported to it). */
static long long fs_touches(kvcd_client_t *c)
{
    json_t *st = kvcd_test_status(c);
    json_t *fs = json_array_get(json_object_get(st, "l2"), 0);
    json_t *v = json_object_get(json_object_get(fs, "counters"), "touches");
    long long r = json_is_integer(v) ? (long long)json_integer_value(v) : -1;

    json_decref(st);
    return r;
}

/* A is kept hot in L1 (LOOKUP + LOAD hit L1, so fs sees them only as the
 * daemon's touches) while four more chunks go through fs, bounded to 4 files.
 * The touches keep A among fs's most recent files, so fs evicts the other
 * chunks and A survives a restart that empties L1 (before touches, fs evicted A
 * and only --l2-save-l1-on-stop brought it back). `save` adds that flag, which
 * changes nothing here. The fs order is the journal's (recency_restored).
 * Returns whether A was a hit after the restart. */
static int hot_chunk_survives(int save)
{
    char dir[64] = "/tmp/kvcd-test-fsd-XXXXXX", spec[400];
    const char *args[] = {"--l2-adapter", spec, "--l1-size-gb", "0.001953125",
                          save ? "--l2-save-l1-on-stop" : NULL, NULL};
    const size_t len = MiB - 64; /* files of exactly 1 MiB: 4 fill the bound */
    uint8_t hh[5][8];
    kvcd_bytes_t K[5];
    void *payload = malloc(len), *got = malloc(len);
    const void *bufs[1] = {payload};
    size_t lens[1] = {len}, caps[1] = {len}, prefix, i;
    int res[1], hit;
    kvcd_proc_t a;
    kvcd_client_t *c;

    keys();
    ck_assert(mkdtemp(dir) != NULL);
    snprintf(spec, sizeof(spec),
             "{\"type\":\"fs\",\"base_path\":\"%s/l2\",\"max_capacity_gb\":0.00390625}", dir);
    kvcd_fill_random(payload, len, 4242);
    for (i = 0; i < 5; i++)
        K[i] = kvcd_test_hash(hh[i], 0xa00 + i);
    kvcd_test_start(&a, &c, args);
    scan_done(c);
    for (i = 0; i < 5; i++) {
        ck_assert_int_eq(kvcd_client_store(c, &base, &K[i], 1, bufs, lens, res), 0);
        ck_assert_int_eq(res[0], 0);
        settle(c);
        ck_assert_int_eq(kvcd_client_lookup(c, &base, &K[0], 1, &prefix, NULL), 0);
        ck_assert_uint_eq(prefix, 1);
        ck_assert_int_eq(kvcd_client_load(c, &base, &K[0], 1, &got, caps, lens, res), 0);
        ck_assert_int_eq(res[0], 0);
        lens[0] = len;
        /* the touch reaches fs within the daemon's 100 ms flush; waiting for
         * it keeps it ahead of the next store's eviction on any worker */
        for (int w = 0; w < 500 && fs_touches(c) < (long long)i + 1; w++)
            usleep(10000);
        ck_assert_int_ge(fs_touches(c), (long long)i + 1);
    }
    ck_assert_int_eq(stat_of(c, "l1", "objects"), 2);
    kvcd_client_close(c);
    ck_assert_int_eq(kvcd_proc_stop(&a, SIGTERM, 20000), 0);
    ck_assert_uint_eq(count_files(dir, "*.data", 0), 4);

    ck_assert_msg(kvcd_proc_restart(&a, args) == 0, "kvcd did not restart: %s", a.log);
    c = connect_to(&a);
    ck_assert_int_eq(scan_done(c), 4);
    ck_assert_int_eq(kvcd_client_lookup(c, &base, &K[0], 1, &prefix, NULL), 0);
    hit = prefix == 1;
    if (hit) {
        memset(got, 0, len);
        ck_assert_int_eq(kvcd_client_load(c, &base, &K[0], 1, &got, caps, lens, res), 0);
        ck_assert_int_eq(res[0], 0);
        ck_assert(memcmp(got, payload, len) == 0);
    }
    /* the newest chunk made it in both cases */
    ck_assert_int_eq(kvcd_client_lookup(c, &base, &K[4], 1, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, 1);
    kvcd_test_stop(&a, &c);
    free(payload);
    free(got);
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return hit;
}

START_TEST(hot_l1_chunk_survives_restart)
{
    ck_assert_int_eq(hot_chunk_survives(0), 1);
    ck_assert_int_eq(hot_chunk_survives(1), 1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fs_daemon");
    TCase *tc = tcase_create("fs");

    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, restart_keeps_chunks);
    tcase_add_test(tc, two_daemons_share_a_directory);
    tcase_add_test(tc, unwritable_base_path_is_a_clear_error);
    tcase_add_test(tc, item09_lookups_past_a_gap_leave_files_evictable);
    tcase_add_test(tc, hot_l1_chunk_survives_restart);
    suite_add_tcase(s, tc);
    return kvcd_test_run(s);
}
