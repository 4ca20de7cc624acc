/*
 * test_orchestration.c - L1/L2 orchestration through the real daemon: write-
 * behind, prefix lookups across tiers, prefetch and pins, failures and
 * timeouts of L2 loads, skip_l1, shutdown flushing writes, example configs.
 *
 * L2 is the `mock` adapter (in memory) wrapped in `fault` where a test needs
 * an adapter to fail in a chosen call; --max-workers 1 makes one request one
 * adapter call, so "call index" in a fault spec means "request number".
 */
#include <check.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "protocol/client.h"
#include "tests/support.h"

#define MiB (1u << 20)
#define NKEYS 256

static kvcd_proc_t proc;
static kvcd_client_t *cli;
static kvcd_key_t base;
static uint8_t hb[NKEYS][8];
static kvcd_bytes_t H[NKEYS];

static void start(const char *const *args)
{
    size_t i;

    kvcd_test_start(&proc, &cli, args);
    kvcd_keyset(&base, "org/model", 2, 1, 0, "");
    for (i = 0; i < NKEYS; i++) {
        int k;

        for (k = 0; k < 8; k++)
            hb[i][k] = (uint8_t)((i + 1) >> (56 - 8 * k));
        H[i].ptr = hb[i];
        H[i].len = 8;
    }
}

static void stop(void)
{
    kvcd_test_stop(&proc, &cli);
}

/* Chunk i: 1 MiB (+ i bytes, so sizes differ) of bytes derived from i. */
static size_t chunk_len(size_t i)
{
    return MiB + i * 17;
}

static void *chunk(size_t i)
{
    void *p = malloc(chunk_len(i));

    kvcd_fill_random(p, chunk_len(i), 1000 + i);
    return p;
}

static void store_keys(const size_t *idx, size_t n)
{
    const void *bufs[16] = {0};
    size_t lens[16] = {0}, i;
    kvcd_bytes_t h[16] = {{0}};
    int res[16];

    ck_assert_uint_le(n, 16);
    for (i = 0; i < n; i++) {
        bufs[i] = chunk(idx[i]);
        lens[i] = chunk_len(idx[i]);
        h[i] = H[idx[i]];
    }
    ck_assert_int_eq(kvcd_client_store(cli, &base, h, n, bufs, lens, res), 0);
    for (i = 0; i < n; i++) {
        ck_assert_int_eq(res[i], 0);
        free((void *)bufs[i]);
    }
}

static void store_range(size_t from, size_t to)
{
    size_t idx[16], i, n = 0;

    for (i = from; i < to; i++) {
        idx[n++] = i;
        if (n == 16) {
            store_keys(idx, n);
            n = 0;
        }
    }
    if (n)
        store_keys(idx, n);
}

static json_t *status(void)
{
    return kvcd_test_status(cli);
}

static json_int_t stat_of(const char *group, const char *name)
{
    return kvcd_test_stat(cli, group, name);
}

/* Wait (bounded) until no L2 work is in flight. */
static void settle(void)
{
    int i;

    for (i = 0; i < 1000; i++) {
        if (stat_of("storage", "l2_inflight") == 0)
            return;
        usleep(10000);
    }
    ck_abort_msg("L2 work still in flight after 10 s");
}

static size_t lookup(size_t from, size_t n, uint8_t *present)
{
    size_t prefix;

    ck_assert_int_eq(kvcd_client_lookup(cli, &base, H + from, n, &prefix, present), 0);
    return prefix;
}

/* Load keys [from, from+n) and check every hit byte for byte; returns hits. */
static size_t load_check(size_t from, size_t n)
{
    void *bufs[16];
    size_t caps[16], lens[16], i, hits = 0;
    int res[16];

    ck_assert_uint_le(n, 16);
    for (i = 0; i < n; i++) {
        bufs[i] = malloc(chunk_len(from + i));
        caps[i] = chunk_len(from + i);
    }
    ck_assert_int_eq(kvcd_client_load(cli, &base, H + from, n, bufs, caps, lens, res), 0);
    for (i = 0; i < n; i++) {
        if (res[i] == 0) {
            void *want = chunk(from + i);

            ck_assert_uint_eq(lens[i], chunk_len(from + i));
            ck_assert_msg(memcmp(bufs[i], want, lens[i]) == 0, "key %zu: wrong bytes", from + i);
            free(want);
            hits++;
        } else {
            ck_assert_int_eq(res[i], KVCD_ENOTFOUND);
        }
        free(bufs[i]);
    }
    return hits;
}

/* The end-to-end case: 32 MiB of L1 in front of a mock L2; 200 chunks
 * of 1 MiB stored, then all looked up and loaded back byte-exact. */
START_TEST(tiny_l1_200_chunks_through_l2)
{
    const char *args[] = {"--l1-size-gb", "0.03125", "--l2-adapter",
                          "{\"type\":\"mock\",\"max_size_gb\":1}", NULL};
    size_t i;

    start(args);
    store_range(0, 200);
    settle();
    ck_assert_int_le(stat_of("l1", "objects"), 32);
    for (i = 0; i < 200; i += 10) {
        ck_assert_uint_eq(lookup(i, 10, NULL), 10);
        ck_assert_uint_eq(load_check(i, 10), 10);
    }
    ck_assert_int_gt(stat_of("storage", "l2_hits"), 100);
    ck_assert_int_gt(stat_of("storage", "l1_hits"), 0);
    ck_assert_int_eq(stat_of("storage", "prefetch_failed"), 0);
    ck_assert_int_eq(stat_of("storage", "pinned_objects"), 0);
    ck_assert_int_eq(stat_of("counters", "load_hits"), 200);
    stop();
}
END_TEST

/* Keys only in L2 (skip_l1): 0,1,3,4 present -> prefix 2; keys after the gap
 * are reported but not brought up or pinned. */
START_TEST(gap_gives_prefix_two)
{
    const char *args[] = {"--l2-store-policy", "skip_l1", "--l2-adapter",
                          "{\"type\":\"mock\"}", NULL};
    size_t idx[4] = {0, 1, 3, 4};
    uint8_t present[5];

    start(args);
    store_keys(idx, 4);
    settle();
    ck_assert_int_eq(stat_of("l1", "objects"), 0);
    ck_assert_int_eq(stat_of("storage", "skip_l1_dropped"), 4);
    ck_assert_uint_eq(lookup(0, 5, present), 2);
    ck_assert(present[0] && present[1] && !present[2] && present[3] && present[4]);
    ck_assert_int_eq(stat_of("storage", "pinned_objects"), 2);
    ck_assert_int_eq(stat_of("l1", "objects"), 2);
    ck_assert_uint_eq(load_check(0, 2), 2);
    /* Loaded: pins consumed, temporary copies gone (prefetch policy default). */
    ck_assert_int_eq(stat_of("storage", "pinned_objects"), 0);
    ck_assert_int_eq(stat_of("storage", "pins_used"), 2);
    ck_assert_int_eq(stat_of("l1", "objects"), 0);
    /* First key missing: prefix 0, nothing pinned. */
    ck_assert_uint_eq(lookup(2, 3, present), 0);
    ck_assert_int_eq(stat_of("storage", "pinned_objects"), 0);
    stop();
}
END_TEST

START_TEST(retain_policy_keeps_prefetched)
{
    const char *args[] = {"--l2-store-policy", "skip_l1", "--l2-prefetch-policy", "retain",
                          "--l2-adapter", "{\"type\":\"mock\"}", NULL};

    start(args);
    store_range(0, 4);
    settle();
    ck_assert_int_eq(stat_of("l1", "objects"), 0);
    ck_assert_uint_eq(lookup(0, 4, NULL), 4);
    ck_assert_uint_eq(load_check(0, 4), 4);
    ck_assert_int_eq(stat_of("l1", "objects"), 4);
    stop();
}
END_TEST

/* Two adapters, each holding one half (the other's write failed): the prefix
 * spans both. */
START_TEST(two_adapters_disjoint_halves)
{
    const char *args[] = {
        "--max-workers", "1", "--l2-adapter",
        "{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail_calls\":{\"store\":[1]}}",
        "--l2-adapter",
        "{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail_calls\":{\"store\":[0]}}",
        NULL};
    uint64_t removed;

    start(args);
    store_range(0, 4); /* store call 0: only adapter #1 keeps it */
    settle();
    store_range(4, 8); /* store call 1: only adapter #2 keeps it */
    settle();
    ck_assert_int_eq(stat_of("storage", "write_behind_failed"), 8);
    ck_assert_int_eq(kvcd_client_clear(cli, &removed), 0);
    ck_assert_uint_eq(removed, 8);
    ck_assert_uint_eq(lookup(0, 8, NULL), 8);
    ck_assert_uint_eq(load_check(0, 8), 8);
    stop();
}
END_TEST

/* A failed prefetch load is a shorter prefix, then a retry works; nothing leaks. */
START_TEST(failed_l2_load_shortens_prefix)
{
    const char *args[] = {
        "--max-workers", "1", "--l2-store-policy", "skip_l1", "--l2-adapter",
        "{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail_calls\":{\"load\":[0]}}",
        NULL};

    start(args);
    store_range(0, 4);
    settle();
    ck_assert_uint_eq(lookup(0, 4, NULL), 0);
    ck_assert_uint_eq(load_check(0, 4), 0);
    ck_assert_int_eq(stat_of("storage", "prefetch_failed"), 4);
    ck_assert_int_eq(stat_of("storage", "pinned_objects"), 0);
    ck_assert_int_eq(stat_of("l1", "objects"), 0);
    ck_assert_int_eq(stat_of("l1", "used"), 0);
    /* The next load call succeeds. */
    ck_assert_uint_eq(lookup(0, 4, NULL), 4);
    ck_assert_uint_eq(load_check(0, 4), 4);
    stop();
}
END_TEST

/* An adapter that reports damage on read (checksum) is a miss, never bytes. */
START_TEST(corrupt_l2_load_is_a_miss)
{
    const char *args[] = {
        "--l2-store-policy", "skip_l1", "--l2-adapter",
        "{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"corrupt\":{\"load\":1.0}}", NULL};

    start(args);
    store_range(0, 3);
    settle();
    ck_assert_uint_eq(lookup(0, 3, NULL), 0);
    ck_assert_uint_eq(load_check(0, 3), 0);
    ck_assert_int_eq(stat_of("storage", "prefetch_failed"), 3);
    ck_assert_int_eq(stat_of("l1", "used"), 0);
    stop();
}
END_TEST

/* A load slower than --l2-timeout-ms: the lookup answers in time with a
 * shorter prefix; the late completion is discarded and its memory freed. */
START_TEST(timed_out_l2_load)
{
    const char *args[] = {
        "--l2-timeout-ms", "300", "--l2-store-policy", "skip_l1", "--l2-adapter",
        "{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"delay_ms\":{\"load\":1500}}", NULL};
    struct timespec t0, t1;
    double secs;
    int i;
    json_t *st, *l2;

    start(args);
    store_range(0, 2);
    settle();
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_uint_eq(lookup(0, 2, NULL), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    ck_assert_msg(secs < 1.4, "lookup waited %.2f s for a timed-out load", secs);
    ck_assert_uint_eq(load_check(0, 2), 0);
    st = status();
    l2 = json_array_get(json_object_get(st, "l2"), 0);
    ck_assert_int_ge(json_integer_value(json_object_get(l2, "timeouts")), 1);
    json_decref(st);
    for (i = 0; i < 300 && stat_of("storage", "l2_inflight") > 0; i++)
        usleep(10000);
    ck_assert_int_eq(stat_of("storage", "l2_inflight"), 0);
    ck_assert_int_eq(stat_of("l1", "used"), 0);
    ck_assert_int_eq(stat_of("storage", "pinned_objects"), 0);
    stop();
}
END_TEST

/* Pins nobody loads expire. */
START_TEST(unloaded_pins_expire)
{
    const char *args[] = {"--pin-timeout-ms", "200", NULL};

    start(args);
    store_range(0, 3);
    ck_assert_uint_eq(lookup(0, 3, NULL), 3);
    ck_assert_int_eq(stat_of("storage", "pinned_objects"), 3);
    usleep(800000);
    ck_assert_int_eq(stat_of("storage", "pinned_objects"), 0);
    ck_assert_int_eq(stat_of("storage", "pins_expired"), 3);
    stop();
}
END_TEST

START_TEST(remove_reaches_l2)
{
    const char *args[] = {"--l2-adapter", "{\"type\":\"mock\"}", NULL};
    int res[2];

    start(args);
    store_range(0, 2);
    settle();
    ck_assert_int_eq(kvcd_client_remove(cli, &base, H, 2, res), 0);
    ck_assert_int_eq(res[0], 0);
    ck_assert_int_eq(res[1], 0);
    ck_assert_uint_eq(lookup(0, 2, NULL), 0);
    ck_assert_int_eq(stat_of("storage", "l2_removed"), 2);
    stop();
}
END_TEST

static size_t count_data_files(const char *dir)
{
    char cmd[600], out[64];
    const char *argv[] = {"sh", "-c", cmd, NULL};

    snprintf(cmd, sizeof(cmd), "find '%s' -name '*.data' -type f | wc -l", dir);
    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 10000), 0);
    return (size_t)strtoul(out, NULL, 10);
}

/* SIGTERM while slow writes to a persistent adapter are in flight: they
 * complete before kvcd exits 0, and the files are there. */
START_TEST(shutdown_flushes_write_behind)
{
    char spec[700], dir[400];
    const char *args[] = {"--l2-adapter", spec, NULL};
    kvcd_proc_t keep;

    memset(&keep, 0, sizeof(keep));
    snprintf(keep.dir, sizeof(keep.dir), "/tmp/kvcd-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(keep.dir));
    snprintf(dir, sizeof(dir), "%s/l2", keep.dir);
    snprintf(spec, sizeof(spec),
             "{\"type\":\"fault\",\"inner\":{\"type\":\"fs\",\"base_path\":\"%s\"},"
             "\"delay_ms\":{\"store\":700}}", dir);
    start(args);
    store_range(0, 8);
    ck_assert_int_gt(stat_of("storage", "l2_inflight"), 0);
    ck_assert_int_eq(kvcd_proc_stop(&proc, SIGTERM, 20000), 0);
    ck_assert_uint_eq(count_data_files(dir), 8);
    stop();
    kvcd_proc_cleanup(&keep);
}
END_TEST

/* Every example config loads: base paths are pointed at a temp dir and the
 * endpoint at a private socket; kvcd must start and show its adapters. */
START_TEST(example_configs_load)
{
    char dir[512], path[1024], cfg[1024];
    struct dirent *de;
    DIR *d;
    int loaded = 0;

    snprintf(dir, sizeof(dir), "%s/conf/examples", kvcd_test_srcdir());
    d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    while ((de = readdir(d))) {
        json_error_t e;
        json_t *root, *ads, *a;
        size_t i, nads;
        const char *args[] = {"--config", cfg, "--endpoint", NULL, "--l1-size-gb", "0.0625",
                              NULL};
        kvcd_proc_t p;

        if (!strstr(de->d_name, ".json"))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        root = json_load_file(path, 0, &e);
        ck_assert_msg(root != NULL, "%s: %s", path, e.text);
        memset(&p, 0, sizeof(p));
        snprintf(p.dir, sizeof(p.dir), "/tmp/kvcd-test-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(p.dir));
        snprintf(p.endpoint, sizeof(p.endpoint), "ipc://%s/kvcd.sock", p.dir);
        snprintf(p.log, sizeof(p.log), "%s/kvcd.log", p.dir);
        ads = json_object_get(root, "l2_adapters");
        json_array_foreach(ads, i, a) {
            char bp[600];

            if (json_object_get(a, "base_path")) {
                snprintf(bp, sizeof(bp), "%s/l2-%zu", p.dir, i);
                json_object_set_new(a, "base_path", json_string(bp));
                json_object_set_new(a, "max_capacity_gb", json_real(0.01));
                json_object_del(a, "min_free_gb");
            }
        }
        nads = json_array_size(ads);
        json_object_del(root, "l1_size_gb");
        json_object_del(root, "l1_hugepages");
        snprintf(cfg, sizeof(cfg), "%s/config.json", p.dir);
        ck_assert_int_eq(json_dump_file(root, cfg, JSON_INDENT(2)), 0);
        json_decref(root);
        args[3] = p.endpoint;
        ck_assert_msg(kvcd_proc_restart(&p, args) == 0, "%s did not start, log %s", path, p.log);
        ck_assert_int_eq(kvcd_client_connect(p.endpoint, 10000, &cli), 0);
        {
            char *text;
            json_t *st;

            ck_assert_int_eq(kvcd_client_status(cli, &text), 0);
            st = json_loads(text, 0, &e);
            free(text);
            ck_assert_uint_eq(json_array_size(json_object_get(st, "l2")), nads);
            json_decref(st);
        }
        kvcd_client_close(cli);
        cli = NULL;
        ck_assert_int_eq(kvcd_proc_stop(&p, SIGTERM, 10000), 0);
        kvcd_proc_cleanup(&p);
        loaded++;
    }
    closedir(d);
    ck_assert_int_ge(loaded, 3);
}
END_TEST

START_TEST(config_errors_name_the_setting)
{
    char path[] = "/tmp/kvcd-test-cfg-XXXXXX";
    const char *argv[] = {kvcd_test_bin(), "--config", path, NULL};
    char out[2048];
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");

    fputs("{\"l1_size_gb\": 1, \"bogus_setting\": 3}", f);
    fclose(f);
    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 5000), 2);
    ck_assert_ptr_nonnull(strstr(out, "bogus_setting"));

    f = fopen(path, "w");
    fputs("{\"port\": \"x\"}", f);
    fclose(f);
    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 5000), 2);
    ck_assert_ptr_nonnull(strstr(out, "--port"));

    f = fopen(path, "w");
    fputs("{\"l2_adapters\": [{\"type\":\"mock\"}, {\"type\":\"mock\",\"max_size_gb\":\"big\"}]}", f);
    fclose(f);
    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 5000), 2);
    ck_assert_msg(strstr(out, "--l2-adapter #2 (mock): max_size_gb") != NULL, "%s", out);

    f = fopen(path, "w");
    fputs("{\"port\": 1", f);
    fclose(f);
    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 5000), 2);
    ck_assert_ptr_nonnull(strstr(out, "line 1"));
    unlink(path);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("orchestration");
    TCase *tc = tcase_create("l2");

    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, tiny_l1_200_chunks_through_l2);
    tcase_add_test(tc, gap_gives_prefix_two);
    tcase_add_test(tc, retain_policy_keeps_prefetched);
    tcase_add_test(tc, two_adapters_disjoint_halves);
    tcase_add_test(tc, failed_l2_load_shortens_prefix);
    tcase_add_test(tc, corrupt_l2_load_is_a_miss);
    tcase_add_test(tc, timed_out_l2_load);
    tcase_add_test(tc, unloaded_pins_expire);
    tcase_add_test(tc, remove_reaches_l2);
    tcase_add_test(tc, shutdown_flushes_write_behind);
    tcase_add_test(tc, example_configs_load);
    tcase_add_test(tc, config_errors_name_the_setting);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return kvcd_test_run(suite());
}
