/*
 * test_shared_l1.c - L1 as one shared-memory object and the zero-copy
 * operations (RESERVE, COMMIT, ABORT, MAP, RELEASE, LOOKUP_MAP) end to end: the real kvcd
 * binary on a private ipc:// socket, clients that map L1 and write and read
 * objects in place.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "protocol/client.h"
#include "tests/support.h"

#define MiB (1u << 20)

static kvcd_proc_t proc;
static kvcd_client_t *cli;
static kvcd_key_t base;

static void start(const char *const *args)
{
    kvcd_test_start(&proc, &cli, args);
    kvcd_keyset(&base, "model-a", 1, 0, 0, "");
}

static void stop(void)
{
    kvcd_test_stop(&proc, &cli);
}

static long long stat_of(const char *group, const char *name)
{
    return kvcd_test_stat(cli, group, name);
}

/* Wait up to 5 s (asking on `c`) for status[group][name] == want. */
static long long wait_stat(kvcd_client_t *c, const char *group, const char *name,
                           long long want)
{
    long long v = -1;
    int i;

    for (i = 0; i < 100; i++) {
        v = kvcd_test_stat(c, group, name);
        if (v == want)
            break;
        usleep(50000);
    }
    return v;
}

static void fill(void *p, size_t len, uint64_t seed)
{
    kvcd_fill_random(p, len, seed);
}

static int same(const void *p, size_t len, uint64_t seed)
{
    char *want = malloc(len);
    int eq;

    ck_assert_ptr_nonnull(want);
    kvcd_fill_random(want, len, seed);
    eq = memcmp(p, want, len) == 0;
    free(want);
    return eq;
}

/* Reserve key i of `len` bytes through c, write pattern `seed`, commit. */
static uint64_t put_zc(kvcd_client_t *c, kvcd_l1map_t *m, uint64_t i, size_t len,
                       uint64_t seed)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, i);
    uint64_t off = 0, l = len;
    int res = -1;

    ck_assert_int_eq(kvcd_client_reserve(c, &base, &h, 1, &l, &off, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_uint_eq(off % 4096, 0);
    ck_assert_uint_le(off + len, m->size);
    fill((char *)m->base + off, len, seed);
    ck_assert_int_eq(kvcd_client_commit(c, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, 0);
    return off;
}

static int lookup1(kvcd_client_t *c, uint64_t i)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, i);
    size_t prefix = 9;

    ck_assert_int_eq(kvcd_client_lookup(c, &base, &h, 1, &prefix, NULL), 0);
    return (int)prefix;
}

/* LOAD key i through frames; returns the result and checks pattern seed. */
static int load1(kvcd_client_t *c, uint64_t i, size_t len, uint64_t seed)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, i);
    void *buf = malloc(len);
    size_t got = 0;
    int res = -1;

    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(kvcd_client_load(c, &base, &h, 1, &buf, &len, &got, &res), 0);
    if (res == 0) {
        ck_assert_uint_eq(got, len);
        ck_assert_msg(same(buf, len, seed), "LOAD returned other bytes");
    }
    free(buf);
    return res;
}

static int map1(kvcd_client_t *c, uint64_t i, uint64_t *off, uint64_t *len)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, i);
    int res = -1;

    ck_assert_int_eq(kvcd_client_map(c, &base, &h, 1, off, len, &res), 0);
    return res;
}

static int release1(kvcd_client_t *c, uint64_t i)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, i);
    int res = -1;

    ck_assert_int_eq(kvcd_client_release(c, &base, &h, 1, &res), 0);
    return res;
}

/* ---- the shared object ---- */

START_TEST(shared_object_named_0600_and_reported)
{
    kvcd_l1map_t *m;
    char path[128];
    struct stat st;
    json_t *s;

    start(NULL);
    ck_assert_int_eq(kvcd_client_map_l1(cli, &m), 0);
    ck_assert_msg(strncmp(m->name, "/kvcd-", 6) == 0, "%s", m->name);
    snprintf(path, sizeof(path), "/dev/shm%s", m->name);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    ck_assert_uint_eq(st.st_uid, geteuid());
    ck_assert_uint_eq((uint64_t)st.st_size, m->size);
    s = kvcd_test_status(cli);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(s, "l1"), "shm_name")),
                     m->name);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(s, "l1"), "shm_size")),
                     (json_int_t)m->size);
    json_decref(s);
    kvcd_client_unmap_l1(m);
    stop();
    /* Unlinked at exit. */
    ck_assert_int_eq(stat(path, &st), -1);
    ck_assert_int_eq(errno, ENOENT);
}
END_TEST

START_TEST(restart_removes_dead_kvcds_object)
{
    kvcd_l1map_t *m;
    char path[128];
    struct stat st;

    start(NULL);
    ck_assert_int_eq(kvcd_client_map_l1(cli, &m), 0);
    snprintf(path, sizeof(path), "/dev/shm%s", m->name);
    kvcd_client_unmap_l1(m);
    kvcd_client_close(cli);
    cli = NULL;
    /* A kvcd that dies cannot unlink its object. */
    ck_assert_int_eq(kvcd_proc_stop(&proc, SIGKILL, 10000), 128 + SIGKILL);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(kvcd_proc_restart(&proc, NULL), 0);
    ck_assert_int_eq(stat(path, &st), -1);
    ck_assert_int_eq(errno, ENOENT);
    ck_assert_int_eq(kvcd_client_connect(proc.endpoint, 20000, &cli), 0);
    stop();
}
END_TEST

START_TEST(stuck_worker_exit_still_unlinks)
{
    /* A write-behind stuck in an adapter makes kvcd exit without freeing L1
     * (a worker may still touch it); the object's name goes all the same. */
    const char *args[] = {"--shutdown-timeout-ms", "500", "--l2-adapter",
                          "{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},"
                          "\"delay_ms\":{\"store\":3600000}}",
                          NULL};
    kvcd_l1map_t *m;
    char path[128];
    struct stat st;

    start(args);
    ck_assert_int_eq(kvcd_client_map_l1(cli, &m), 0);
    snprintf(path, sizeof(path), "/dev/shm%s", m->name);
    put_zc(cli, m, 1, 4096, 1); /* its write-behind now sleeps */
    ck_assert_int_eq(stat(path, &st), 0);
    kvcd_client_unmap_l1(m);
    kvcd_client_close(cli);
    cli = NULL;
    ck_assert_int_eq(kvcd_proc_stop(&proc, SIGTERM, 10000), 0);
    ck_assert_int_eq(stat(path, &st), -1);
    ck_assert_int_eq(errno, ENOENT);
    stop();
}
END_TEST

/* ---- reserve, commit, map ---- */

START_TEST(reserve_commit_map_roundtrip)
{
    size_t len = 3 * MiB + 123;
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 7);
    uint64_t off = 0, l = len, moff = 0, mlen = 0;
    kvcd_l1map_t *m;
    int res = -1;

    start(NULL);
    ck_assert_int_eq(kvcd_client_map_l1(cli, &m), 0);
    ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h, 1, &l, &off, &res), 0);
    ck_assert_int_eq(res, 0);
    fill((char *)m->base + off, len, 42);
    /* Nothing is visible before commit. */
    ck_assert_int_eq(lookup1(cli, 7), 0);
    ck_assert_int_eq(load1(cli, 7, len, 42), KVCD_ENOTFOUND);
    ck_assert_int_eq(map1(cli, 7, &moff, &mlen), KVCD_ENOTFOUND);
    ck_assert_int_eq(stat_of("zero_copy", "reserved"), 1);
    ck_assert_int_eq(stat_of("zero_copy", "reserved_bytes"), (long long)len);
    ck_assert_int_eq(kvcd_client_commit(cli, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(stat_of("zero_copy", "reserved"), 0);
    /* Visible atomically, through every path. */
    ck_assert_int_eq(lookup1(cli, 7), 1);
    ck_assert_int_eq(load1(cli, 7, len, 42), 0);
    ck_assert_int_eq(map1(cli, 7, &moff, &mlen), 0);
    ck_assert_uint_eq(moff, off);
    ck_assert_uint_eq(mlen, len);
    ck_assert(same((char *)m->base + moff, len, 42));
    ck_assert_int_eq(stat_of("zero_copy", "leases"), 1);
    /* A second map of the same key is a second lease. */
    ck_assert_int_eq(map1(cli, 7, &moff, &mlen), 0);
    ck_assert_int_eq(stat_of("zero_copy", "leases"), 2);
    ck_assert_int_eq(stat_of("zero_copy", "leased_objects"), 1);
    ck_assert_int_eq(release1(cli, 7), 0);
    ck_assert_int_eq(release1(cli, 7), 0);
    ck_assert_int_eq(release1(cli, 7), KVCD_ENOTFOUND);
    ck_assert_int_eq(stat_of("zero_copy", "leases"), 0);
    {
        json_t *s = kvcd_test_status(cli), *ops = json_object_get(s, "ops");
        const char *names[] = {"RESERVE", "COMMIT", "MAP", "RELEASE"};
        size_t i;

        /* Every new op has its own row in the per-op statistics. */
        for (i = 0; i < 4; i++)
            ck_assert_msg(json_integer_value(json_object_get(json_object_get(ops, names[i]),
                                                             "requests")) >= 1,
                          "%s", names[i]);
        json_decref(s);
    }
    /* Commit twice, abort of nothing. */
    ck_assert_int_eq(kvcd_client_commit(cli, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, KVCD_ENOTFOUND);
    ck_assert_int_eq(kvcd_client_abort(cli, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, KVCD_ENOTFOUND);
    /* The key is stored: a reservation is refused as a duplicate. */
    ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h, 1, &l, &off, &res), 0);
    ck_assert_int_eq(res, KVCD_EDUPLICATE);
    kvcd_client_unmap_l1(m);
    stop();
}
END_TEST

/* LOOKUP_MAP of keys [k0, k0+n): the prefix, with offsets/lengths. */
static size_t lookup_map(kvcd_client_t *c, uint64_t k0, size_t n, uint64_t *offs,
                         uint64_t *lens)
{
    uint8_t hb[16][8];
    kvcd_bytes_t h[16];
    size_t i, prefix = 99;

    ck_assert_uint_le(n, 16);
    for (i = 0; i < n; i++)
        h[i] = kvcd_test_hash(hb[i], k0 + i);
    ck_assert_int_eq(kvcd_client_lookup_map(c, &base, h, n, &prefix, offs, lens), 0);
    return prefix;
}

START_TEST(lookup_map_leases_the_prefix)
{
    uint64_t offs[16], lens[16], want[6] = {0}, off, len, removed;
    uint8_t hb[8];
    kvcd_bytes_t h;
    kvcd_l1map_t *m;
    int res;
    size_t i;

    start(NULL);
    ck_assert_int_eq(kvcd_client_map_l1(cli, &m), 0);
    for (i = 1; i <= 5; i++)
        if (i != 4) /* a gap */
            want[i] = put_zc(cli, m, i, 100000 + i, 700 + i);
    /* The prefix is 1..3: each leased, at the offset it was written. */
    ck_assert_uint_eq(lookup_map(cli, 1, 5, offs, lens), 3);
    for (i = 0; i < 3; i++) {
        ck_assert_uint_eq(offs[i], want[i + 1]);
        ck_assert_uint_eq(lens[i], 100000 + i + 1);
        ck_assert(same((char *)m->base + offs[i], lens[i], 700 + i + 1));
    }
    ck_assert_int_eq(stat_of("zero_copy", "leases"), 3);
    ck_assert_int_eq(stat_of("zero_copy", "leased_objects"), 3);
    /* The lookup's pins were taken by the leases, not left to expire. */
    ck_assert_int_eq(stat_of("storage", "pinned_objects"), 0);
    ck_assert_int_eq(stat_of("storage", "pins_used"), 3);
    ck_assert_int_eq(stat_of("counters", "lookups"), 1);
    ck_assert_int_eq(stat_of("counters", "load_hits"), 3);
    /* Leased: CLEAR takes the keys away, not the bytes. */
    ck_assert_int_eq(kvcd_client_clear(cli, &removed), 0);
    ck_assert_int_eq(removed, 4);
    ck_assert(same((char *)m->base + offs[1], lens[1], 702));
    ck_assert_uint_eq(lookup_map(cli, 1, 3, NULL, NULL), 0);
    for (i = 1; i <= 3; i++)
        ck_assert_int_eq(release1(cli, i), 0);
    ck_assert_int_eq(release1(cli, 1), KVCD_ENOTFOUND);
    ck_assert_int_eq(stat_of("zero_copy", "leases"), 0);
    ck_assert_int_eq(stat_of("l1", "used"), 0);

    /* A reservation is invisible: it ends the prefix. */
    put_zc(cli, m, 1, 4096, 1);
    h = kvcd_test_hash(hb, 2);
    len = 4096;
    ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h, 1, &len, &off, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_uint_eq(lookup_map(cli, 1, 2, offs, lens), 1);
    /* Mapped twice, released twice; a miss at the front is prefix 0. */
    ck_assert_uint_eq(lookup_map(cli, 1, 1, offs, lens), 1);
    ck_assert_int_eq(stat_of("zero_copy", "leases"), 2);
    ck_assert_uint_eq(lookup_map(cli, 9, 3, offs, lens), 0);
    ck_assert_int_eq(release1(cli, 1), 0);
    ck_assert_int_eq(release1(cli, 1), 0);
    {
        json_t *s = kvcd_test_status(cli), *ops = json_object_get(s, "ops");

        ck_assert_int_ge(json_integer_value(json_object_get(json_object_get(ops, "LOOKUP_MAP"),
                                                            "requests")), 4);
        json_decref(s);
    }
    kvcd_client_unmap_l1(m);
    stop();
}
END_TEST

/* A client that closes its connection with LOOKUP_MAP leases holds nothing
 * any more: the objects can be evicted and their regions reused. */
START_TEST(lookup_map_leases_drop_with_the_client)
{
    uint64_t offs[16], lens[16];
    kvcd_client_t *c;
    kvcd_l1map_t *m;
    uint64_t i;

    start(NULL);
    ck_assert_int_eq(kvcd_client_map_l1(cli, &m), 0);
    for (i = 0; i < 8; i++)
        put_zc(cli, m, i, 65536, 900 + i);
    ck_assert_int_eq(kvcd_client_connect(proc.endpoint, 20000, &c), 0);
    ck_assert_uint_eq(lookup_map(c, 0, 8, offs, lens), 8);
    ck_assert_int_eq(stat_of("zero_copy", "leases"), 8);
    kvcd_client_close(c);
    ck_assert_int_eq(wait_stat(cli, "zero_copy", "leases", 0), 0);
    ck_assert_int_eq(stat_of("counters", "zc_dropped"), 1);
    kvcd_client_unmap_l1(m);
    stop();
}
END_TEST

START_TEST(abort_returns_memory)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 1);
    uint64_t off, l = 8 * MiB;
    int res;

    start(NULL);
    ck_assert_int_eq(stat_of("l1", "used"), 0);
    ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h, 1, &l, &off, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(stat_of("l1", "used"), (long long)l);
    ck_assert_int_eq(kvcd_client_abort(cli, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(stat_of("l1", "used"), 0);
    ck_assert_int_eq(lookup1(cli, 1), 0);
    stop();
}
END_TEST

START_TEST(bad_requests_are_typed)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 1);
    kvcd_shm_args_t shm;
    uint64_t id, l = 0, off;
    kvcd_reply_t *r;
    int res;

    start(NULL);
    /* RESERVE without lengths. */
    memset(&shm, 0, sizeof(shm));
    ck_assert_int_eq(kvcd_client_send(cli, KVCD_OP_RESERVE, &base, &h, 1, NULL, NULL, &id), 0);
    ck_assert_int_eq(kvcd_client_wait(cli, id, 0, &r), 0);
    ck_assert_int_eq(kvcd_reply_hdr(r)->err, KVCD_EMISSING);
    ck_assert_msg(strstr(kvcd_reply_hdr(r)->msg, "lengths"), "%s", kvcd_reply_hdr(r)->msg);
    kvcd_reply_free(r);
    /* A zero length. */
    ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h, 1, &l, &off, &res), KVCD_EBADFIELD);
    /* Larger than max_frame. */
    l = (uint64_t)4 << 30;
    ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h, 1, &l, &off, &res), KVCD_ETOOLARGE);
    ck_assert_int_eq(stat_of("l1", "used"), 0);
    stop();
}
END_TEST

START_TEST(two_clients_reserve_same_key)
{
    kvcd_client_t *c2;
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 5);
    uint64_t off1, off2, l = MiB;
    kvcd_l1map_t *m;
    int res;

    start(NULL);
    ck_assert_int_eq(kvcd_client_connect(proc.endpoint, 20000, &c2), 0);
    ck_assert_int_eq(kvcd_client_map_l1(cli, &m), 0);
    ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h, 1, &l, &off1, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(kvcd_client_reserve(c2, &base, &h, 1, &l, &off2, &res), 0);
    ck_assert_int_eq(res, KVCD_EBUSY);
    /* c2 cannot commit or abort what c1 reserved. */
    ck_assert_int_eq(kvcd_client_commit(c2, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, KVCD_ENOTFOUND);
    ck_assert_int_eq(kvcd_client_abort(c2, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, KVCD_ENOTFOUND);
    /* After c1 aborts, c2 may reserve; after c2 commits, it is a duplicate. */
    ck_assert_int_eq(kvcd_client_abort(cli, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(kvcd_client_reserve(c2, &base, &h, 1, &l, &off2, &res), 0);
    ck_assert_int_eq(res, 0);
    fill((char *)m->base + off2, l, 9);
    ck_assert_int_eq(kvcd_client_commit(c2, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h, 1, &l, &off1, &res), 0);
    ck_assert_int_eq(res, KVCD_EDUPLICATE);
    ck_assert_int_eq(load1(cli, 5, l, 9), 0);
    kvcd_client_close(c2);
    kvcd_client_unmap_l1(m);
    stop();
}
END_TEST

START_TEST(store_during_reservation_wins_commit_is_eexist)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 3);
    uint64_t off, l = 64 * 1024;
    const void *bufs[1];
    size_t lens[1] = {l};
    void *data = malloc(l);
    int res;

    start(NULL);
    fill(data, l, 1);
    bufs[0] = data;
    ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h, 1, &l, &off, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(kvcd_client_store(cli, &base, &h, 1, bufs, lens, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(kvcd_client_commit(cli, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, KVCD_EDUPLICATE);
    ck_assert_int_eq(load1(cli, 3, l, 1), 0);
    ck_assert_int_eq(stat_of("l1", "used"), (long long)l);
    free(data);
    stop();
}
END_TEST

/* ---- lifetimes ---- */

START_TEST(client_crash_reservation_returns)
{
    int fds[2], status;
    ssize_t got;
    char c;
    pid_t child;

    start(NULL);
    ck_assert_int_eq(pipe(fds), 0);
    child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        kvcd_client_t *cc;
        kvcd_l1map_t *m;
        uint8_t hb[8];
        kvcd_bytes_t h[4];
        uint64_t l[4], off[4], k;
        int res[4];

        close(fds[0]);
        if (kvcd_client_connect(proc.endpoint, 20000, &cc) != 0 ||
            kvcd_client_map_l1(cc, &m) != 0)
            _exit(2);
        for (k = 0; k < 4; k++) {
            h[k] = kvcd_test_hash(malloc(8), 100 + k);
            l[k] = 16 * MiB;
        }
        (void)hb;
        if (kvcd_client_reserve(cc, &base, h, 4, l, off, res) != 0 || res[0] != 0 || res[3] != 0)
            _exit(3);
        memset((char *)m->base + off[0], 0xab, MiB); /* half-written */
        if (write(fds[1], "r", 1) != 1)
            _exit(4);
        _exit(0); /* dies with its reservations: no commit, no abort */
    }
    close(fds[1]);
    got = read(fds[0], &c, 1);
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    /* 2: connect or map failed, 3: reserve failed, else a signal. */
    ck_assert_msg(got == 1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "the child read %zd, exited %d (signal %d)", got,
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                  WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    close(fds[0]);
    ck_assert_int_eq(wait_stat(cli, "zero_copy", "reserved", 0), 0);
    ck_assert_int_eq(stat_of("zero_copy", "reserved_bytes"), 0);
    ck_assert_int_eq(stat_of("l1", "used"), 0);
    ck_assert_int_eq(stat_of("counters", "zc_dropped"), 1);
    ck_assert_int_eq(lookup1(cli, 100), 0);
    stop();
}
END_TEST

START_TEST(silent_client_leases_and_reservations_expire)
{
    const char *args[] = {"--segment-lease-ms", "300", NULL};
    kvcd_client_t *c2;
    kvcd_l1map_t *m;
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 50);
    uint64_t off, len, l = MiB;
    int res;

    start(args);
    /* c2 leases one object and reserves another, then keeps its connection
     * but says nothing. */
    ck_assert_int_eq(kvcd_client_connect(proc.endpoint, 20000, &c2), 0);
    ck_assert_int_eq(kvcd_client_map_l1(c2, &m), 0);
    put_zc(c2, m, 1, MiB, 11);
    ck_assert_int_eq(map1(c2, 1, &off, &len), 0);
    ck_assert_int_eq(kvcd_client_reserve(c2, &base, &h, 1, &l, &off, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(stat_of("zero_copy", "leases"), 1);
    ck_assert_int_eq(stat_of("zero_copy", "reserved"), 1);
    /* Asked through cli, whose requests renew only its own lease. */
    ck_assert_int_eq(wait_stat(cli, "zero_copy", "leases", 0), 0);
    ck_assert_int_eq(wait_stat(cli, "zero_copy", "reserved", 0), 0);
    ck_assert_int_eq(stat_of("counters", "zc_expired"), 1);
    ck_assert_int_eq(stat_of("l1", "used"), (long long)MiB); /* the committed one */
    /* The expired reservation is gone for c2 too. */
    ck_assert_int_eq(kvcd_client_commit(c2, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, KVCD_ENOTFOUND);
    ck_assert_int_eq(release1(c2, 1), KVCD_ENOTFOUND);
    kvcd_client_unmap_l1(m);
    kvcd_client_close(c2);
    stop();
}
END_TEST

START_TEST(eviction_spares_leased_and_reserved)
{
    /* 32 MiB of L1, LRU: storing 40 MiB more through frames must evict, but
     * neither the leased object nor the reservation. */
    const char *args[] = {"--l1-size-gb", "0.03125", NULL};
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 2);
    uint64_t off_a, len_a, off_b, l = 4 * MiB;
    void *buf = malloc(2 * MiB);
    size_t lens[1] = {2 * MiB};
    const void *bufs[1] = {buf};
    kvcd_l1map_t *m;
    uint64_t i;
    int res;

    start(args);
    ck_assert_int_eq(kvcd_client_map_l1(cli, &m), 0);
    put_zc(cli, m, 1, 4 * MiB, 21);
    ck_assert_int_eq(map1(cli, 1, &off_a, &len_a), 0);
    ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h, 1, &l, &off_b, &res), 0);
    ck_assert_int_eq(res, 0);
    fill((char *)m->base + off_b, l, 22);
    for (i = 0; i < 20; i++) {
        uint8_t hb2[8];
        kvcd_bytes_t h2 = kvcd_test_hash(hb2, 1000 + i);

        fill(buf, 2 * MiB, 1000 + i);
        ck_assert_int_eq(kvcd_client_store(cli, &base, &h2, 1, bufs, lens, &res), 0);
        ck_assert_int_eq(res, 0);
    }
    ck_assert_int_gt(stat_of("counters", "evictions"), 0);
    /* Neither region was reused: the bytes are as the client wrote them. */
    ck_assert(same((char *)m->base + off_a, len_a, 21));
    ck_assert(same((char *)m->base + off_b, l, 22));
    ck_assert_int_eq(lookup1(cli, 1), 1);
    ck_assert_int_eq(kvcd_client_commit(cli, &base, &h, 1, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(load1(cli, 2, l, 22), 0);
    ck_assert_int_eq(release1(cli, 1), 0);
    free(buf);
    kvcd_client_unmap_l1(m);
    stop();
}
END_TEST

START_TEST(region_reused_after_release_holds_new_bytes)
{
    /* NOOP eviction and an L1 that holds exactly 2 objects of 8 MiB: the
     * third reservation fits only once a region is free. */
    const char *args[] = {"--l1-size-gb", "0.015625", "--eviction-policy", "noop", NULL};
    uint8_t hb[8];
    kvcd_bytes_t h1 = kvcd_test_hash(hb, 1);
    uint64_t off_a, len_a, off, len, l = 8 * MiB;
    kvcd_l1map_t *m;
    int res;

    start(args);
    ck_assert_int_eq(kvcd_client_map_l1(cli, &m), 0);
    off_a = put_zc(cli, m, 1, l, 31);
    ck_assert_int_eq(map1(cli, 1, &off, &len_a), 0);
    ck_assert_uint_eq(off, off_a);
    /* REMOVE while leased: the key is gone, the region is not handed out. */
    ck_assert_int_eq(kvcd_client_remove(cli, &base, &h1, 1, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(lookup1(cli, 1), 0);
    put_zc(cli, m, 2, l, 32);
    {
        uint8_t hb3[8];
        kvcd_bytes_t h3 = kvcd_test_hash(hb3, 3);

        ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h3, 1, &l, &off, &res), 0);
        ck_assert_int_eq(res, KVCD_ENOSPACE);
    }
    ck_assert(same((char *)m->base + off_a, l, 31));
    /* Released: the region comes back and the next object there holds its
     * own bytes only. */
    ck_assert_int_eq(release1(cli, 1), 0);
    ck_assert_uint_eq(put_zc(cli, m, 3, l, 33), off_a);
    ck_assert_int_eq(map1(cli, 3, &off, &len), 0);
    ck_assert_uint_eq(off, off_a);
    ck_assert(same((char *)m->base + off, len, 33));
    ck_assert_int_eq(load1(cli, 3, l, 33), 0);
    ck_assert_int_eq(release1(cli, 3), 0);
    kvcd_client_unmap_l1(m);
    stop();
}
END_TEST

START_TEST(many_clients_come_and_go)
{
    kvcd_l1map_t *m;
    uint64_t i, off, len;
    int res;

    start(NULL);
    ck_assert_int_eq(kvcd_client_map_l1(cli, &m), 0);
    for (i = 0; i < 60; i++) {
        kvcd_client_t *c;
        kvcd_l1map_t *cm;

        ck_assert_int_eq(kvcd_client_connect(proc.endpoint, 20000, &c), 0);
        ck_assert_int_eq(kvcd_client_map_l1(c, &cm), 0);
        ck_assert_str_eq(cm->name, m->name);
        put_zc(c, cm, i, 64 * 1024 + i, 500 + i);
        ck_assert_int_eq(map1(c, i, &off, &len), 0); /* left leased on purpose */
        if (i % 2) {
            uint8_t hb[8];
            kvcd_bytes_t h = kvcd_test_hash(hb, 10000 + i);
            uint64_t l = 4096;

            ck_assert_int_eq(kvcd_client_reserve(c, &base, &h, 1, &l, &off, &res), 0);
        }
        kvcd_client_unmap_l1(cm);
        kvcd_client_close(c);
    }
    ck_assert_int_eq(wait_stat(cli, "zero_copy", "leases", 0), 0);
    ck_assert_int_eq(wait_stat(cli, "zero_copy", "reserved", 0), 0);
    ck_assert_int_eq(wait_stat(cli, "zero_copy", "holders", 0), 0);
    for (i = 0; i < 60; i++) {
        ck_assert_int_eq(map1(cli, i, &off, &len), 0);
        ck_assert_uint_eq(len, 64 * 1024 + i);
        ck_assert(same((char *)m->base + off, len, 500 + i));
        ck_assert_int_eq(release1(cli, i), 0);
    }
    kvcd_client_unmap_l1(m);
    stop();
}
END_TEST

START_TEST(write_behind_after_commit)
{
    char spec[400], dir[] = "/tmp/kvcd-zc-fs-XXXXXX";
    const char *args[] = {"--l2-adapter", spec, NULL};
    kvcd_l1map_t *m;
    uint64_t removed;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(spec, sizeof(spec), "{\"type\":\"fs\",\"base_path\":\"%s\"}", dir);
    start(args);
    ck_assert_int_eq(kvcd_client_map_l1(cli, &m), 0);
    put_zc(cli, m, 1, 2 * MiB, 61);
    /* Once written behind, the object survives CLEAR in the fs tier. */
    ck_assert_int_eq(wait_stat(cli, "storage", "write_behind_keys", 1), 1);
    ck_assert_int_eq(wait_stat(cli, "storage", "l2_inflight", 0), 0);
    ck_assert_int_eq(kvcd_client_clear(cli, &removed), 0);
    ck_assert_int_eq(removed, 1);
    ck_assert_int_eq(lookup1(cli, 1), 1);
    ck_assert_int_eq(load1(cli, 1, 2 * MiB, 61), 0);
    /* LOOKUP_MAP brings a key only L2 has up into L1 and leases it. */
    put_zc(cli, m, 2, 3 * MiB, 62);
    ck_assert_int_eq(wait_stat(cli, "storage", "write_behind_keys", 2), 2);
    ck_assert_int_eq(wait_stat(cli, "storage", "l2_inflight", 0), 0);
    ck_assert_int_eq(kvcd_client_clear(cli, &removed), 0);
    {
        uint64_t offs[2], lens[2];

        ck_assert_uint_eq(lookup_map(cli, 1, 2, offs, lens), 2);
        ck_assert_uint_eq(lens[0], 2 * MiB);
        ck_assert_uint_eq(lens[1], 3 * MiB);
        ck_assert(same((char *)m->base + offs[0], lens[0], 61));
        ck_assert(same((char *)m->base + offs[1], lens[1], 62));
        ck_assert_int_ge(stat_of("storage", "prefetch_keys"), 2);
        ck_assert_int_eq(stat_of("zero_copy", "leases"), 2);
        ck_assert_int_eq(release1(cli, 1), 0);
        ck_assert_int_eq(release1(cli, 2), 0);
        /* The prefetched copies were temporary: released, nothing holds L1. */
        ck_assert_int_eq(stat_of("storage", "pinned_objects"), 0);
        ck_assert_int_eq(wait_stat(cli, "l1", "used", 0), 0);
    }
    kvcd_client_unmap_l1(m);
    stop();
    {
        char cmd[300];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        ck_assert_int_eq(system(cmd), 0);
    }
}
END_TEST

START_TEST(kvcdctl_put_get_zero_copy)
{
    char in[] = "/tmp/kvcd-zc-in-XXXXXX", out[64], cmp[200], buf[4096];
    const char *put[] = {kvcd_test_ctl(), "-e", proc.endpoint, "put", "--zero-copy",
                         "--model", "model-a", "--hash", "00000000000000aa", in, NULL};
    const char *get[] = {kvcd_test_ctl(), "-e", proc.endpoint, "get", "--zero-copy",
                         "--model", "model-a", "--hash", "00000000000000aa", out, NULL};
    void *data = malloc(300001);
    int fd;

    start(NULL);
    put[2] = get[2] = proc.endpoint;
    fd = mkstemp(in);
    ck_assert_int_ge(fd, 0);
    fill(data, 300001, 5);
    ck_assert_int_eq(write(fd, data, 300001), 300001);
    close(fd);
    snprintf(out, sizeof(out), "%s.out", in);
    ck_assert_int_eq(kvcd_run(put, buf, sizeof(buf), 20000), 0);
    ck_assert_int_eq(stat_of("counters", "zc_commits"), 1);
    ck_assert_int_eq(kvcd_run(get, buf, sizeof(buf), 20000), 0);
    ck_assert_int_eq(stat_of("counters", "zc_leases"), 1);
    ck_assert_int_eq(stat_of("zero_copy", "leases"), 0);
    snprintf(cmp, sizeof(cmp), "cmp -s '%s' '%s'", in, out);
    ck_assert_int_eq(system(cmp), 0);
    /* Through frames too, and a miss is exit 1. */
    ck_assert_int_eq(load1(cli, 0xaa, 300001, 5), 0);
    get[8] = "00000000000000ab";
    ck_assert_int_eq(kvcd_run(get, buf, sizeof(buf), 20000), 1);
    unlink(in);
    unlink(out);
    free(data);
    stop();
}
END_TEST

/* ---- trust boundary ---- */

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

    ck_assert_int_ge(s, 0);
    ck_assert_int_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(getsockname(s, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(s);
    return port;
}

START_TEST(tcp_peer_refused)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 1);
    uint64_t off, len, l = 4096;
    char tmpl[] = "/tmp/kvcd-test-XXXXXX";
    int res, i;

    memset(&proc, 0, sizeof(proc));
    kvcd_keyset(&base, "model-a", 1, 0, 0, "");
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    snprintf(proc.dir, sizeof(proc.dir), "%s", tmpl);
    snprintf(proc.log, sizeof(proc.log), "%s/kvcd.log", proc.dir);
    for (i = 0; i < 5; i++) {
        snprintf(proc.endpoint, sizeof(proc.endpoint), "tcp://127.0.0.1:%d", free_port());
        if (kvcd_proc_restart(&proc, NULL) == 0)
            break;
    }
    ck_assert_msg(i < 5, "kvcd did not start on tcp (log in %s)", proc.log);
    ck_assert_int_eq(kvcd_client_connect(proc.endpoint, 10000, &cli), 0);
    ck_assert_int_eq(kvcd_client_reserve(cli, &base, &h, 1, &l, &off, &res),
                     KVCD_EPEERUNVERIFIED);
    ck_assert_msg(strstr(kvcd_client_errmsg(cli), "ipc://"), "%s", kvcd_client_errmsg(cli));
    ck_assert_int_eq(kvcd_client_commit(cli, &base, &h, 1, &res), KVCD_EPEERUNVERIFIED);
    ck_assert_int_eq(kvcd_client_abort(cli, &base, &h, 1, &res), KVCD_EPEERUNVERIFIED);
    ck_assert_int_eq(kvcd_client_map(cli, &base, &h, 1, &off, &len, &res),
                     KVCD_EPEERUNVERIFIED);
    ck_assert_int_eq(kvcd_client_release(cli, &base, &h, 1, &res), KVCD_EPEERUNVERIFIED);
    {
        size_t prefix = 7;

        ck_assert_int_eq(kvcd_client_lookup_map(cli, &base, &h, 1, &prefix, &off, &len),
                         KVCD_EPEERUNVERIFIED);
        ck_assert_uint_eq(prefix, 0);
    }
    ck_assert_int_eq(stat_of("zero_copy", "holders"), 0);
    ck_assert_int_eq(stat_of("l1", "used"), 0);
    stop();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("shared_l1");
    TCase *tc = tcase_create("shared_l1");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, shared_object_named_0600_and_reported);
    tcase_add_test(tc, restart_removes_dead_kvcds_object);
    tcase_add_test(tc, stuck_worker_exit_still_unlinks);
    tcase_add_test(tc, reserve_commit_map_roundtrip);
    tcase_add_test(tc, lookup_map_leases_the_prefix);
    tcase_add_test(tc, lookup_map_leases_drop_with_the_client);
    tcase_add_test(tc, abort_returns_memory);
    tcase_add_test(tc, bad_requests_are_typed);
    tcase_add_test(tc, two_clients_reserve_same_key);
    tcase_add_test(tc, store_during_reservation_wins_commit_is_eexist);
    tcase_add_test(tc, client_crash_reservation_returns);
    tcase_add_test(tc, silent_client_leases_and_reservations_expire);
    tcase_add_test(tc, eviction_spares_leased_and_reserved);
    tcase_add_test(tc, region_reused_after_release_holds_new_bytes);
    tcase_add_test(tc, many_clients_come_and_go);
    tcase_add_test(tc, write_behind_after_commit);
    tcase_add_test(tc, kvcdctl_put_get_zero_copy);
    tcase_add_test(tc, tcp_peer_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return kvcd_test_run(suite());
}
