/*
 * test_fs.c - the filesystem L2 adapter (adapters/fs.c), driven directly.
 *
 * Each test allocates instances of kvcd_adapter_fs itself, initialises them with
 * JSON specs and calls the blocking methods synchronously, as a threadpool
 * worker would. Faults (ENOSPC, EIO, short transfers, O_DIRECT refusal, a full
 * filesystem, time passing) are injected through the adapter's syscall table;
 * Check's fork mode keeps each test's table to itself. Every test works in its
 * own temp directory and removes it.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <xxhash.h>

#include "adapters/adapter.h"
#include "adapters/fs.h"
#include "adapters/registry.h"

extern const kvcd_adapter_t kvcd_adapter_fs;

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define TRL 64

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg("%s:%d: failed: %s", __FILE__, __LINE__, #cond);                          \
    } while (0)
#define REQUIRE_EQ(x, y)                                                                           \
    do {                                                                                           \
        long long x_ = (long long)(x), y_ = (long long)(y);                                        \
        if (x_ != y_)                                                                              \
            ck_abort_msg("%s:%d: failed: %s == %s (%lld != %lld)", __FILE__, __LINE__, #x, #y, x_, \
                         y_);                                                                      \
    } while (0)

/* ---- scaffolding ---------------------------------------------------------- */

static char master[64]; /* made by the parent, removed by it after all tests */
static char top[256];   /* this test's temp directory, inside master */
static char base[300];  /* top/base: the adapter's base_path */

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    return remove(p);
}

/* Unchecked fixtures run in Check's parent process, so the temp tree goes away
 * even when a forked test fails (the child then exits without its teardown). */
static void master_setup(void)
{
    strcpy(master, "/tmp/kvcd-test-fs-XXXXXX");
    REQUIRE(mkdtemp(master) != NULL);
}

static void master_teardown(void)
{
    nftw(master, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void setup(void)
{
    snprintf(top, sizeof(top), "%s/t-XXXXXX", master);
    REQUIRE(mkdtemp(top) != NULL);
    snprintf(base, sizeof(base), "%s/base", top);
    umask(022);
}

static void faults_off(void);

static void teardown(void)
{
    faults_off();
    nftw(top, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static int try_init(void **out, char *err, size_t errlen, const char *fmt, ...)
{
    char spec[2048];
    json_error_t je;
    json_t *j;
    va_list ap;
    void *self;
    int r;

    va_start(ap, fmt);
    vsnprintf(spec, sizeof(spec), fmt, ap);
    va_end(ap);
    j = json_loads(spec, 0, &je);
    if (!j)
        ck_abort_msg("bad test JSON %s: %s", spec, je.text);
    self = calloc(1, kvcd_adapter_fs.instance_size);
    REQUIRE(self);
    kvcd_adapter_env_t env = {.arena_align = 4096, .max_workers = 4, .instance = "#1 (fs)"};
    err[0] = '\0';
    r = kvcd_adapter_instance_init(&kvcd_adapter_fs, self, j, &env, err, errlen);
    json_decref(j);
    if (r) {
        free(self);
        self = NULL;
    }
    *out = self;
    return r;
}

/* Init with base_path = base plus extra fields ("" or ", \"k\": v ..."). */
static void *open_fs(const char *extra)
{
    char err[512];
    void *self;
    int r =
        try_init(&self, err, sizeof(err), "{\"type\":\"fs\",\"base_path\":\"%s\"%s}", base, extra);

    if (r)
        ck_abort_msg("init failed (%d): %s", r, err);
    return self;
}

static void close_fs(void *self)
{
    kvcd_adapter_fs.close(self);
    free(self);
}

/* A key: model, salt (NUL-terminated in the test), hash from an integer. */
typedef struct {
    const char *model;
    size_t model_len;
    const char *salt;
    uint8_t hash[8];
    uint32_t rank, group;
} tkey_t;

static kvcd_key_t mk(const tkey_t *t)
{
    kvcd_key_t k = {
        .model = t->model,
        .model_len = (uint32_t)(t->model_len ? t->model_len : strlen(t->model)),
        .salt = t->salt,
        .salt_len = t->salt ? (uint32_t)strlen(t->salt) : 0,
        .hash = t->hash,
        .hash_len = 8,
        .kv_rank = t->rank,
        .group = t->group,
    };
    return k;
}

static tkey_t key_n(const char *model, uint64_t n)
{
    tkey_t t = {.model = model, .rank = 0x01000100};

    for (int i = 0; i < 8; i++)
        t.hash[i] = (uint8_t)(n >> (8 * (7 - i)));
    return t;
}

/* One-key batch: returns the item's result; *size gets its size. */
static int op1(void *self, kvcd_l2_op_t op, const tkey_t *t, void *buf, size_t len, size_t *size)
{
    kvcd_l2_item_t it = {.key = mk(t), .buf = buf, .len = len, .result = KVCD_EINTERNAL};
    kvcd_l2_batch_t b = {.op = op, .items = &it, .n = 1};

    switch (op) {
    case KVCD_L2_STORE:
        kvcd_adapter_fs.store(self, &b);
        break;
    case KVCD_L2_LOOKUP:
        kvcd_adapter_fs.lookup(self, &b);
        break;
    case KVCD_L2_LOAD:
        kvcd_adapter_fs.load(self, &b);
        break;
    case KVCD_L2_REMOVE:
        kvcd_adapter_fs.remove(self, &b);
        break;
    }
    if (size)
        *size = it.size;
    return it.result;
}

static void *abuf(size_t n)
{
    void *p = aligned_alloc(4096, (n + 4095) / 4096 * 4096 + 4096);

    REQUIRE(p);
    return p;
}

/* Deterministic content of object (seed, size). */
static void fill(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + n;

    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

static void store_ok(void *fs, const tkey_t *t, size_t n, uint64_t seed)
{
    uint8_t *b = abuf(n);
    int r;

    fill(b, n, seed);
    r = op1(fs, KVCD_L2_STORE, t, b, n, NULL);
    free(b);
    if (r)
        ck_abort_msg("store of %zu bytes: %s", n, kvcd_errname(r));
}

/* Lookup + load the key and compare with (n, seed). */
static void load_ok(void *fs, const tkey_t *t, size_t n, uint64_t seed)
{
    size_t sz = 12345;
    uint8_t *want = abuf(n), *got;
    int r = op1(fs, KVCD_L2_LOOKUP, t, NULL, 0, &sz);

    if (r)
        ck_abort_msg("lookup: %s", kvcd_errname(r));
    REQUIRE_EQ(sz, n);
    got = abuf(n);
    memset(got, 0xEE, n);
    r = op1(fs, KVCD_L2_LOAD, t, got, n, &sz);
    if (r)
        ck_abort_msg("load of %zu bytes: %s", n, kvcd_errname(r));
    REQUIRE_EQ(sz, n);
    fill(want, n, seed);
    REQUIRE(memcmp(want, got, n) == 0);
    free(want);
    free(got);
}

static int lookup_r(void *fs, const tkey_t *t)
{
    return op1(fs, KVCD_L2_LOOKUP, t, NULL, 0, NULL);
}

static json_t *status(void *fs)
{
    json_t *o = json_object();

    kvcd_adapter_fs.status(fs, o);
    return o;
}

/* Integer at a dotted path of the status object (-1 if absent). */
static long long st_int(void *fs, const char *path)
{
    json_t *o = status(fs), *v = o;
    char buf[128], *save = NULL, *c;
    long long r = -1;

    snprintf(buf, sizeof(buf), "%s", path);
    for (c = strtok_r(buf, ".", &save); c && v; c = strtok_r(NULL, ".", &save))
        v = json_object_get(v, c);
    if (json_is_integer(v))
        r = json_integer_value(v);
    else if (json_is_boolean(v))
        r = json_is_true(v);
    json_decref(o);
    return r;
}

/* ---- directory walks ------------------------------------------------------ */

typedef struct {
    size_t data_files, data_bytes, tmp_files, other, bad_names;
    int max_depth;
} walk_t;

static walk_t w_acc;
static size_t base_len;

static int walk_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    const char *rel = p + base_len, *name = p + f->base;

    if (f->level == 0)
        return 0;
    if (f->level > w_acc.max_depth && flag == FTW_F)
        w_acc.max_depth = f->level;
    if (flag != FTW_F)
        return 0;
    if (!strncmp(rel, "/.tmp/", 6)) {
        w_acc.tmp_files++;
    } else if (strlen(name) > 5 && !strcmp(name + strlen(name) - 5, ".data")) {
        w_acc.data_files++;
        w_acc.data_bytes += (size_t)st->st_size;
        if (strlen(name) > 255 || !strchr(name, '@'))
            w_acc.bad_names++;
    } else {
        w_acc.other++;
    }
    return 0;
}

static walk_t walk(void)
{
    memset(&w_acc, 0, sizeof(w_acc));
    base_len = strlen(base);
    REQUIRE(nftw(base, walk_cb, 16, FTW_PHYS) == 0);
    return w_acc;
}

/* Nothing but base_path was created in top. */
static void only_base_in_top(void)
{
    DIR *d = opendir(top);
    struct dirent *de;
    int n = 0;

    REQUIRE(d);
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            if (strcmp(de->d_name, "base"))
                ck_abort_msg("unexpected entry outside base_path: %s", de->d_name);
            n++;
        }
    closedir(d);
    REQUIRE_EQ(n, 1);
}

static void data_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", base, name);
}

/* The single .data file in base (flat layout). */
static void the_file(char *out, size_t n)
{
    DIR *d = opendir(base);
    struct dirent *de;
    int found = 0;

    REQUIRE(d);
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".data")) {
            data_path(out, n, de->d_name);
            found++;
        }
    closedir(d);
    REQUIRE_EQ(found, 1);
}

/* ---- fault injection ------------------------------------------------------ */

static kvcd_fs_syscalls_t fake;
static const kvcd_fs_syscalls_t *real;
static int fail_write, fail_read, fail_sync, fail_rename, fail_create, fail_unlink;
static int fail_odirect;
static size_t io_limit; /* max bytes per preadv/pwritev, 0 = no limit */
static long long clock_skew_ms;
static long long fake_avail = -1; /* bytes free reported by fstatvfs, -1 = real */
/* A full disk: every write fails with ENOSPC until a .data file is deleted. */
static int full_until_unlink;
/* Calls counted since the test last zeroed them; the nth one (1-based) of each
 * kind fails once with *_fail_err when *_fail_at is n. */
static int n_pwritev, n_preadv, w_fail_at, w_fail_err, r_fail_at, r_fail_err;
typedef struct {
    off_t off;
    size_t len;
    int direct; /* O_DIRECT was on for the descriptor */
} wcall_t;
static wcall_t wlog[16]; /* the first pwritev calls */

static int trim(const struct iovec *in, int cnt, struct iovec *out)
{
    size_t left = io_limit;
    int n = 0;

    for (int i = 0; i < cnt && left; i++, n++) {
        out[i] = in[i];
        if (out[i].iov_len > left)
            out[i].iov_len = left;
        left -= out[i].iov_len;
    }
    return n;
}

static ssize_t f_pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    struct iovec t[8];
    int n = ++n_pwritev;

    if (n <= 16) {
        wlog[n - 1] = (wcall_t){.off = off, .direct = (fcntl(fd, F_GETFL) & O_DIRECT) != 0};
        for (int i = 0; i < cnt; i++)
            wlog[n - 1].len += iov[i].iov_len;
    }
    if (n == w_fail_at) {
        errno = w_fail_err;
        return -1;
    }
    if (fail_write || full_until_unlink) {
        errno = fail_write ? fail_write : ENOSPC;
        return -1;
    }
    if (io_limit && cnt <= 8)
        return real->pwritev(fd, t, trim(iov, cnt, t), off);
    return real->pwritev(fd, iov, cnt, off);
}

static ssize_t f_preadv(int fd, const struct iovec *iov, int cnt, off_t off)
{
    struct iovec t[8];

    if (++n_preadv == r_fail_at) {
        errno = r_fail_err;
        return -1;
    }
    if (fail_read) {
        errno = fail_read;
        return -1;
    }
    if (io_limit && cnt <= 8)
        return real->preadv(fd, t, trim(iov, cnt, t), off);
    return real->preadv(fd, iov, cnt, off);
}

static int f_fdatasync(int fd)
{
    if (fail_sync) {
        errno = fail_sync;
        return -1;
    }
    return real->fdatasync(fd);
}

static int f_renameat(int a, const char *p, int b, const char *q)
{
    if (fail_rename) {
        errno = fail_rename;
        return -1;
    }
    return real->renameat(a, p, b, q);
}

static int f_openat(int d, const char *p, int fl, mode_t m)
{
    if (fail_create && (fl & O_CREAT)) {
        errno = fail_create;
        return -1;
    }
    return real->openat(d, p, fl, m);
}

static int f_unlinkat(int d, const char *p, int fl)
{
    int r;

    if (fail_unlink && strstr(p, ".data")) {
        errno = fail_unlink;
        return -1;
    }
    r = real->unlinkat(d, p, fl);
    if (r == 0 && strstr(p, ".data"))
        full_until_unlink = 0;
    return r;
}

static int f_fcntl(int fd, int cmd, int arg)
{
    if (fail_odirect && cmd == F_SETFL && (arg & O_DIRECT)) {
        errno = EINVAL;
        return -1;
    }
    return real->fcntl(fd, cmd, arg);
}

static int f_fstatvfs(int fd, struct statvfs *sv)
{
    int r = real->fstatvfs(fd, sv);

    if (r == 0 && fake_avail >= 0) {
        sv->f_frsize = 4096;
        sv->f_blocks = 1000000; /* 4 GB: the 5% default floor is 204.8 MB */
        sv->f_bavail = sv->f_bfree = (fsblkcnt_t)(fake_avail / 4096);
    }
    return r;
}

static int f_clock_gettime(clockid_t c, struct timespec *ts)
{
    int r = real->clock_gettime(c, ts);
    long long ns;

    if (c == CLOCK_MONOTONIC && clock_skew_ms) {
        ns = (long long)ts->tv_nsec + (clock_skew_ms % 1000) * 1000000;
        ts->tv_sec += clock_skew_ms / 1000 + ns / 1000000000;
        ts->tv_nsec = ns % 1000000000;
    }
    return r;
}

static void faults_off(void)
{
    kvcd_fs_set_syscalls(NULL);
    fail_write = fail_read = fail_sync = fail_rename = fail_create = fail_unlink = 0;
    fail_odirect = full_until_unlink = 0;
    n_pwritev = n_preadv = w_fail_at = w_fail_err = r_fail_at = r_fail_err = 0;
    io_limit = 0;
    clock_skew_ms = 0;
    fake_avail = -1;
}

static void faults_on(void)
{
    real = kvcd_fs_get_syscalls();
    fake = *real;
    fake.pwritev = f_pwritev;
    fake.preadv = f_preadv;
    fake.fdatasync = f_fdatasync;
    fake.renameat = f_renameat;
    fake.openat = f_openat;
    fake.unlinkat = f_unlinkat;
    fake.fcntl = f_fcntl;
    fake.fstatvfs = f_fstatvfs;
    fake.clock_gettime = f_clock_gettime;
    kvcd_fs_set_syscalls(&fake);
}

/* ---- tests: round trips --------------------------------------------------- */

static const size_t sizes[] = {0,     1,     100,   4095,   4096,          4097,
                               65535, 65536, 65537, 200003, 3 * 65536 + 5, MiB};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

/* Store every size in one batch, then look all up and load all in batches. */
static void roundtrip_matrix(const char *extra)
{
    void *fs = open_fs(extra);
    kvcd_l2_item_t it[NSIZES];
    kvcd_l2_batch_t b = {.items = it, .n = NSIZES};
    tkey_t k[NSIZES];
    uint8_t *src[NSIZES], *dst[NSIZES];
    size_t i;

    for (i = 0; i < NSIZES; i++) {
        k[i] = key_n("org/model", i + 1);
        src[i] = abuf(sizes[i]);
        dst[i] = abuf(sizes[i]);
        fill(src[i], sizes[i], i);
        it[i] = (kvcd_l2_item_t){
            .key = mk(&k[i]), .buf = src[i], .len = sizes[i], .result = KVCD_EINTERNAL};
    }
    b.op = KVCD_L2_STORE;
    kvcd_adapter_fs.store(fs, &b);
    for (i = 0; i < NSIZES; i++)
        REQUIRE_EQ(it[i].result, 0);

    b.op = KVCD_L2_LOOKUP;
    for (i = 0; i < NSIZES; i++)
        it[i] = (kvcd_l2_item_t){.key = mk(&k[i]), .result = KVCD_EINTERNAL};
    kvcd_adapter_fs.lookup(fs, &b);
    for (i = 0; i < NSIZES; i++) {
        REQUIRE_EQ(it[i].result, 0);
        REQUIRE_EQ(it[i].size, sizes[i]);
    }
    b.op = KVCD_L2_LOAD;
    for (i = 0; i < NSIZES; i++) {
        memset(dst[i], 0xEE, sizes[i]);
        it[i] = (kvcd_l2_item_t){
            .key = mk(&k[i]), .buf = dst[i], .len = sizes[i], .result = KVCD_EINTERNAL};
    }
    kvcd_adapter_fs.load(fs, &b);
    for (i = 0; i < NSIZES; i++) {
        if (it[i].result)
            ck_abort_msg("load size %zu (%s): %s", sizes[i], extra, kvcd_errname(it[i].result));
        REQUIRE_EQ(it[i].size, sizes[i]);
        REQUIRE(memcmp(src[i], dst[i], sizes[i]) == 0);
        free(src[i]);
        free(dst[i]);
    }
    REQUIRE_EQ(st_int(fs, "checksum_failures"), 0);
    REQUIRE_EQ(st_int(fs, "healthy"), 1);
    close_fs(fs);
    /* nothing left in the temp dir */
    REQUIRE_EQ(walk().tmp_files, 0);
}

START_TEST(test_roundtrip_buffered)
{
    roundtrip_matrix("");
    roundtrip_matrix(", \"read_ahead_size\": 4096");
    roundtrip_matrix(", \"read_ahead_size\": 1");
    roundtrip_matrix(", \"read_ahead_size\": 1048576, \"fsync\": true");
    roundtrip_matrix(", \"checksum\": \"none\", \"read_ahead_size\": 4096");
}
END_TEST

START_TEST(test_roundtrip_odirect)
{
    void *fs;

    roundtrip_matrix(", \"use_odirect\": true");
    roundtrip_matrix(", \"use_odirect\": true, \"checksum\": \"none\", \"fsync\": true");
    roundtrip_matrix(", \"use_odirect\": true, \"dir_levels\": 2");
    fs = open_fs(", \"use_odirect\": true");
    /* /tmp supports O_DIRECT here; if not, the fallback is visible, never silent */
    if (st_int(fs, "odirect_fallbacks.unsupported.count") == 0) {
        REQUIRE_EQ(st_int(fs, "odirect_fallbacks.unaligned_buffer.count"), 0);
        REQUIRE_EQ(st_int(fs, "odirect_fallbacks.io_einval.count"), 0);
        REQUIRE_EQ(st_int(fs, "odirect_fallbacks.unsupported.logged"), 0);
    } else {
        REQUIRE_EQ(st_int(fs, "odirect_fallbacks.unsupported.logged"), 1);
    }
    close_fs(fs);
}
END_TEST

START_TEST(test_odirect_unaligned_buffer)
{
    void *fs = open_fs(", \"use_odirect\": true");
    tkey_t k = key_n("m", 1);
    size_t n = 3 * 4096 + 17, sz;
    uint8_t *raw = abuf(n + 1), *src = raw + 1, *dst = abuf(n + 1);

    if (st_int(fs, "odirect_fallbacks.unsupported.count") != 0) {
        close_fs(fs);
        free(raw);
        free(dst);
        return; /* no O_DIRECT here: covered by test_odirect_unsupported */
    }
    fill(src, n, 7);
    REQUIRE_EQ(op1(fs, KVCD_L2_STORE, &k, src, n, NULL), 0);
    REQUIRE_EQ(st_int(fs, "odirect_fallbacks.unaligned_buffer.count"), 1);
    REQUIRE_EQ(st_int(fs, "odirect_fallbacks.unaligned_buffer.logged"), 1);
    REQUIRE_EQ(op1(fs, KVCD_L2_LOAD, &k, dst + 1, n, &sz), 0);
    REQUIRE_EQ(st_int(fs, "odirect_fallbacks.unaligned_buffer.count"), 2);
    REQUIRE(memcmp(src, dst + 1, n) == 0);
    load_ok(fs, &k, n, 7); /* aligned again: no new fallback */
    REQUIRE_EQ(st_int(fs, "odirect_fallbacks.unaligned_buffer.count"), 2);
    free(raw);
    free(dst);
    close_fs(fs);
}
END_TEST

START_TEST(test_odirect_unsupported)
{
    void *fs;
    tkey_t k = key_n("m", 1);

    faults_on();
    fail_odirect = 1;
    fs = open_fs(", \"use_odirect\": true");
    REQUIRE_EQ(st_int(fs, "odirect_fallbacks.supported"), 0);
    REQUIRE_EQ(st_int(fs, "odirect_fallbacks.unsupported.logged"), 1);
    store_ok(fs, &k, 70000, 3);
    load_ok(fs, &k, 70000, 3);
    REQUIRE(st_int(fs, "odirect_fallbacks.unsupported.count") >= 3);
    close_fs(fs);
}
END_TEST

/* On disk: exactly payload + trailer bytes, the payload as stored, and a trailer
 * that states the payload length. */
static void check_on_disk(size_t n, uint64_t seed, size_t tlen)
{
    char p[1200];
    struct stat st;
    uint8_t *want = abuf(n), *got = malloc(n + TRL + 1);
    int fd;
    ssize_t r;

    REQUIRE(got);
    the_file(p, sizeof(p));
    REQUIRE(stat(p, &st) == 0);
    REQUIRE_EQ(st.st_size, n + tlen);
    fd = open(p, O_RDONLY);
    REQUIRE(fd >= 0);
    r = pread(fd, got, n + TRL + 1, 0);
    close(fd);
    REQUIRE_EQ(r, n + tlen);
    fill(want, n, seed);
    REQUIRE(memcmp(want, got, n) == 0);
    if (tlen) {
        uint64_t plen;

        REQUIRE(memcmp(got + n, "KVCDTRLR", 8) == 0);
        memcpy(&plen, got + n + 16, 8);
        REQUIRE_EQ(plen, n);
    }
    free(want);
    free(got);
}

/* The O_DIRECT tail: the aligned body goes out as one direct write, the tail and
 * trailer as one buffered write right after it (no padding, no ftruncate), and a
 * load reads everything in one preadv. Whatever the size, the file holds exactly
 * payload + trailer and a verified load returns the payload. */
START_TEST(test_odirect_tail)
{
    static const size_t tsz[] = {0,    1,    100,  4095,          4096,      4097,
                                 8191, 8192, 8193, 3 * 65536 - 1, 3 * 65536, 3 * 65536 + 1};
    static const char *const cfg[] = {", \"use_odirect\": true, \"skip_existing\": false",
                                      ", \"use_odirect\": true, \"skip_existing\": false, "
                                      "\"checksum\": \"none\", \"fsync\": true",
                                      ", \"use_odirect\": true, \"skip_existing\": false, "
                                      "\"fsync\": true"};
    tkey_t k = key_n("org/tail", 1);

    faults_on();
    for (size_t c = 0; c < sizeof(cfg) / sizeof(cfg[0]); c++) {
        void *fs = open_fs(cfg[c]);
        size_t tlen = strstr(cfg[c], "none") ? 0 : TRL;
        int direct = st_int(fs, "odirect_fallbacks.unsupported.count") == 0;

        for (size_t i = 0; i < sizeof(tsz) / sizeof(tsz[0]); i++) {
            size_t n = tsz[i], a = n / 4096 * 4096, rest = n - a + tlen;

            if (n + tlen == 0)
                continue; /* an empty file: no transfer at all */
            n_pwritev = n_preadv = 0;
            store_ok(fs, &k, n, i + c);
            check_on_disk(n, i + c, tlen);
            if (direct) {
                int w = 0;

                if (a) {
                    REQUIRE_EQ(wlog[w].off, 0);
                    REQUIRE_EQ(wlog[w].len, a);
                    REQUIRE_EQ(wlog[w].direct, 1);
                    w++;
                }
                if (rest) {
                    REQUIRE_EQ(wlog[w].off, a);
                    REQUIRE_EQ(wlog[w].len, rest);
                    REQUIRE_EQ(wlog[w].direct, 0);
                    w++;
                }
                REQUIRE_EQ(n_pwritev, w);
            }
            n_preadv = 0;
            load_ok(fs, &k, n, i + c);
            if (direct)
                REQUIRE_EQ(n_preadv, 1);
        }
        REQUIRE_EQ(st_int(fs, "checksum_failures"), 0);
        REQUIRE_EQ(st_int(fs, "odirect_fallbacks.io_einval.count"), 0);
        REQUIRE_EQ(st_int(fs, "odirect_fallbacks.unaligned_buffer.count"), 0);
        REQUIRE_EQ(walk().tmp_files, 0);
        close_fs(fs);
    }
}
END_TEST

/* Faults around the O_DIRECT tail: a failed tail write publishes nothing and
 * leaves no temp file; EINVAL there falls back to a buffered rewrite; a failed
 * or short combined read falls back to reading body and tail one by one. */
START_TEST(test_odirect_tail_faults)
{
    const size_t n = 3 * 4096 + 5, a = 3 * 4096;
    tkey_t k = key_n("org/tail", 1);
    uint8_t *b = abuf(n);
    void *fs;
    walk_t w;

    faults_on();
    fs = open_fs(", \"use_odirect\": true, \"skip_existing\": false");
    if (st_int(fs, "odirect_fallbacks.unsupported.count") != 0) {
        close_fs(fs);
        free(b);
        return; /* no O_DIRECT here: covered by test_odirect_unsupported */
    }
    fill(b, n, 1);
    for (int e = 0; e < 2; e++) {
        int err = e ? ENOSPC : EIO;

        n_pwritev = 0;
        w_fail_at = 2; /* the second write: the tail */
        w_fail_err = err;
        REQUIRE_EQ(op1(fs, KVCD_L2_STORE, &k, b, n, NULL), -err);
        REQUIRE_EQ(n_pwritev, 2);
        REQUIRE_EQ(wlog[1].off, a);
        REQUIRE_EQ(wlog[1].len, n - a + TRL);
        REQUIRE_EQ(wlog[1].direct, 0);
        w = walk();
        REQUIRE_EQ(w.data_files, 0);
        REQUIRE_EQ(w.tmp_files, 0);
        REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
        REQUIRE_EQ(st_int(fs, "reserved_bytes"), 0);
        REQUIRE_EQ(st_int(fs, "used_bytes"), 0);
    }
    REQUIRE_EQ(st_int(fs, "errors.EIO"), 1);
    REQUIRE_EQ(st_int(fs, "errors.ENOSPC"), 1);
    w_fail_at = 0;

    /* EINVAL from the tail write: the whole object again through the page cache */
    n_pwritev = 0;
    w_fail_at = 2;
    w_fail_err = EINVAL;
    store_ok(fs, &k, n, 2);
    w_fail_at = 0;
    check_on_disk(n, 2, TRL);
    load_ok(fs, &k, n, 2);
    REQUIRE_EQ(st_int(fs, "odirect_fallbacks.io_einval.count"), 1);

    /* the combined read fails once, or comes back short: the loads still work */
    store_ok(fs, &k, n, 3);
    n_preadv = 0;
    r_fail_at = 1;
    r_fail_err = EINTR;
    load_ok(fs, &k, n, 3);
    REQUIRE(n_preadv >= 3);
    r_fail_at = 0;
    io_limit = 4096;
    n_preadv = 0;
    load_ok(fs, &k, n, 3);
    REQUIRE(n_preadv >= 3);
    io_limit = 0;
    REQUIRE_EQ(st_int(fs, "checksum_failures"), 0);
    REQUIRE_EQ(walk().tmp_files, 0);
    REQUIRE_EQ(walk().data_files, 1);
    free(b);
    close_fs(fs);
}
END_TEST

START_TEST(test_short_io)
{
    tkey_t k = key_n("m", 1);
    void *fs;

    faults_on();
    io_limit = 1000; /* every transfer short: the loops must finish the job */
    fs = open_fs(", \"read_ahead_size\": 4096");
    store_ok(fs, &k, 100000, 1);
    load_ok(fs, &k, 100000, 1);
    close_fs(fs);

    io_limit = 8192; /* short but aligned direct transfers */
    fs = open_fs(", \"use_odirect\": true, \"skip_existing\": false");
    store_ok(fs, &k, 100003, 2);
    load_ok(fs, &k, 100003, 2);
    close_fs(fs);

    io_limit = 1000; /* a short direct transfer leaves an unaligned offset */
    fs = open_fs(", \"use_odirect\": true, \"skip_existing\": false");
    store_ok(fs, &k, 100005, 3);
    load_ok(fs, &k, 100005, 3);
    if (st_int(fs, "odirect_fallbacks.unsupported.count") == 0)
        REQUIRE(st_int(fs, "odirect_fallbacks.io_einval.count") >= 1);
    close_fs(fs);
    REQUIRE_EQ(walk().tmp_files, 0);
}
END_TEST

START_TEST(test_miss_and_remove)
{
    void *fs = open_fs("");
    tkey_t k = key_n("m", 42);
    uint8_t *b = abuf(10);

    REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
    REQUIRE_EQ(op1(fs, KVCD_L2_LOAD, &k, b, 10, NULL), KVCD_ENOTFOUND);
    REQUIRE_EQ(op1(fs, KVCD_L2_REMOVE, &k, NULL, 0, NULL), KVCD_ENOTFOUND);
    store_ok(fs, &k, 10, 1);
    REQUIRE_EQ(op1(fs, KVCD_L2_REMOVE, &k, NULL, 0, NULL), 0);
    REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
    REQUIRE_EQ(op1(fs, KVCD_L2_REMOVE, &k, NULL, 0, NULL), KVCD_ENOTFOUND);
    REQUIRE_EQ(st_int(fs, "files"), 0);
    REQUIRE_EQ(st_int(fs, "used_bytes"), 0);
    REQUIRE_EQ(st_int(fs, "healthy"), 1);
    free(b);
    close_fs(fs);
}
END_TEST

START_TEST(test_load_buffer_too_small)
{
    void *fs = open_fs("");
    tkey_t k = key_n("m", 1);
    uint8_t *b = abuf(5000);
    size_t sz = 0;

    store_ok(fs, &k, 5000, 1);
    REQUIRE_EQ(op1(fs, KVCD_L2_LOAD, &k, b, 4999, &sz), -EMSGSIZE);
    REQUIRE_EQ(sz, 5000);
    load_ok(fs, &k, 5000, 1);                               /* the file is untouched */
    REQUIRE_EQ(op1(fs, KVCD_L2_LOAD, &k, b, 8000, &sz), 0); /* bigger is fine */
    REQUIRE_EQ(sz, 5000);
    free(b);
    close_fs(fs);
}
END_TEST

START_TEST(test_duplicate_store)
{
    void *fs = open_fs("");
    tkey_t k = key_n("m", 1);
    size_t sz;

    store_ok(fs, &k, 5000, 1);
    store_ok(fs, &k, 5000, 1);
    REQUIRE_EQ(st_int(fs, "counters.stores_skipped_existing"), 1);
    store_ok(fs, &k, 6000, 2); /* another length: rewritten */
    REQUIRE_EQ(lookup_r(fs, &k), 0);
    REQUIRE_EQ(op1(fs, KVCD_L2_LOOKUP, &k, NULL, 0, &sz), 0);
    REQUIRE_EQ(sz, 6000);
    load_ok(fs, &k, 6000, 2);
    REQUIRE_EQ(st_int(fs, "files"), 1);
    REQUIRE_EQ(st_int(fs, "used_bytes"), 6000 + TRL);
    close_fs(fs);

    fs = open_fs(", \"skip_existing\": false");
    store_ok(fs, &k, 6000, 3);
    load_ok(fs, &k, 6000, 3);
    close_fs(fs);
    REQUIRE_EQ(walk().data_files, 1);
}
END_TEST

START_TEST(test_deadline)
{
    void *fs = open_fs("");
    tkey_t k1 = key_n("m", 1), k2 = key_n("m", 2);
    uint8_t *b = abuf(100);
    kvcd_l2_item_t it[2] = {
        {.key = mk(&k1), .buf = b, .len = 100, .result = KVCD_EINTERNAL},
        {.key = mk(&k2), .buf = b, .len = 100, .result = KVCD_EINTERNAL},
    };
    kvcd_l2_batch_t bt = {.op = KVCD_L2_STORE, .items = it, .n = 2, .deadline_ms = 1};

    kvcd_adapter_fs.store(fs, &bt);
    REQUIRE_EQ(it[0].result, KVCD_ETIMEDOUT);
    REQUIRE_EQ(it[1].result, KVCD_ETIMEDOUT);
    REQUIRE_EQ(st_int(fs, "counters.timeouts"), 2);
    REQUIRE_EQ(walk().data_files, 0);
    free(b);
    close_fs(fs);
}
END_TEST

START_TEST(test_bad_keys)
{
    void *fs = open_fs("");
    tkey_t k = key_n("m", 1);
    uint8_t *b = abuf(10);
    kvcd_l2_item_t it = {.key = mk(&k), .buf = b, .len = 10};
    kvcd_l2_batch_t bt = {.op = KVCD_L2_STORE, .items = &it, .n = 1};
    static char big[1100];

    it.key.model = "a\0b";
    it.key.model_len = 3;
    kvcd_adapter_fs.store(fs, &bt);
    REQUIRE_EQ(it.result, KVCD_EBADFIELD);
    it.key = mk(&k);
    it.key.salt = "x\0y";
    it.key.salt_len = 3;
    kvcd_adapter_fs.store(fs, &bt);
    REQUIRE_EQ(it.result, KVCD_EBADFIELD);
    it.key = mk(&k);
    it.key.hash_len = 0;
    kvcd_adapter_fs.store(fs, &bt);
    REQUIRE_EQ(it.result, KVCD_EBADFIELD);
    memset(big, 'a', sizeof(big));
    it.key = mk(&k);
    it.key.model = big;
    it.key.model_len = KVCD_MODEL_MAX + 1;
    kvcd_adapter_fs.lookup(fs, &bt);
    REQUIRE_EQ(it.result, KVCD_EBADFIELD);
    it.key = mk(&k);
    it.buf = NULL;
    kvcd_adapter_fs.store(fs, &bt);
    REQUIRE_EQ(it.result, KVCD_EBADFIELD);
    REQUIRE_EQ(walk().data_files, 0);
    free(b);
    close_fs(fs);
}
END_TEST

/* ---- tests: persistence and sharing --------------------------------------- */

START_TEST(test_persistence)
{
    void *a = open_fs(""), *b;
    tkey_t k[20];
    int i;

    for (i = 0; i < 20; i++) {
        k[i] = key_n("org/persist", (uint64_t)i);
        store_ok(a, &k[i], 1000 + (size_t)i * 4096, (uint64_t)i);
    }
    close_fs(a);

    b = open_fs("");
    REQUIRE_EQ(st_int(b, "files"), 0);     /* not scanned yet ... */
    load_ok(b, &k[3], 1000 + 3 * 4096, 3); /* ... but the directory answers */
    kvcd_adapter_fs.background(b);
    REQUIRE_EQ(st_int(b, "files"), 20);
    {
        long long want = 0;

        for (i = 0; i < 20; i++)
            want += 1000 + i * 4096 + TRL;
        REQUIRE_EQ(st_int(b, "used_bytes"), want);
        REQUIRE_EQ(st_int(b, "scan.files"), 20);
    }
    for (i = 0; i < 20; i++)
        load_ok(b, &k[i], 1000 + (size_t)i * 4096, (uint64_t)i);
    close_fs(b);
}
END_TEST

START_TEST(test_shared_directory)
{
    void *a = open_fs(""), *b = open_fs("");
    tkey_t k = key_n("org/shared", 9);
    uint8_t *buf = abuf(50000);

    kvcd_adapter_fs.background(a);
    kvcd_adapter_fs.background(b);
    store_ok(a, &k, 50000, 9);
    load_ok(b, &k, 50000, 9);
    REQUIRE_EQ(op1(b, KVCD_L2_REMOVE, &k, NULL, 0, NULL), 0);
    REQUIRE_EQ(lookup_r(a, &k), KVCD_ENOTFOUND);
    REQUIRE_EQ(op1(a, KVCD_L2_LOAD, &k, buf, 50000, NULL), KVCD_ENOTFOUND);
    REQUIRE_EQ(st_int(a, "files"), 0); /* A's index forgot it on the miss */
    /* both write the same key: last rename wins, both whole */
    store_ok(a, &k, 50000, 9);
    store_ok(b, &k, 50000, 9);
    load_ok(a, &k, 50000, 9);
    REQUIRE_EQ(walk().tmp_files, 0);
    free(buf);
    close_fs(a);
    close_fs(b);
}
END_TEST

/* ---- tests: corruption ---------------------------------------------------- */

enum { C_FLIP, C_FLIP_TRAILER, C_TRUNC, C_APPEND, C_KEYDIGEST, C_FOREIGN, C_TINY };

static void corrupt_case(int how)
{
    void *fs = open_fs("");
    tkey_t k = key_n("org/c", 1), other = key_n("org/c", 2);
    size_t n = 20000, sz;
    char path[1200], opath[1200];
    uint8_t *b = abuf(n + 64);
    int fd;
    struct stat st;

    store_ok(fs, &k, n, 1);
    the_file(path, sizeof(path));
    fd = open(path, O_RDWR);
    REQUIRE(fd >= 0);
    switch (how) {
    case C_FLIP: {
        uint8_t c;
        REQUIRE(pread(fd, &c, 1, 1234) == 1);
        c ^= 0x01;
        REQUIRE(pwrite(fd, &c, 1, 1234) == 1);
        break;
    }
    case C_FLIP_TRAILER: {
        uint8_t c;
        REQUIRE(pread(fd, &c, 1, (off_t)n + 3) == 1);
        c ^= 0x80;
        REQUIRE(pwrite(fd, &c, 1, (off_t)n + 3) == 1);
        break;
    }
    case C_TRUNC:
        REQUIRE(ftruncate(fd, (off_t)(n + TRL - 1)) == 0);
        break;
    case C_APPEND:
        REQUIRE(pwrite(fd, "x", 1, (off_t)(n + TRL)) == 1);
        break;
    case C_KEYDIGEST: {
        /* another key's digest, with the trailer's own check fixed up: only the
         * key comparison can catch it */
        uint8_t t[TRL];
        uint64_t h;
        REQUIRE(pread(fd, t, TRL, (off_t)n) == TRL);
        t[40] ^= 0xFF;
        h = XXH3_64bits(t, 56);
        for (int i = 0; i < 8; i++)
            t[56 + i] = (uint8_t)(h >> (8 * i));
        REQUIRE(pwrite(fd, t, TRL, (off_t)n) == TRL);
        break;
    }
    case C_FOREIGN:
        /* a whole, valid file of another key (same bytes) under this key's name */
        close(fd);
        fd = -1;
        store_ok(fs, &other, n, 1);
        break;
    case C_TINY:
        REQUIRE(ftruncate(fd, 10) == 0);
        break;
    }
    if (fd >= 0)
        close(fd);
    if (how == C_FOREIGN) {
        /* find other's file, move it over k's name */
        DIR *d = opendir(base);
        struct dirent *de;

        REQUIRE(d);
        opath[0] = '\0';
        while ((de = readdir(d)))
            if (strstr(de->d_name, ".data") && !strstr(path, de->d_name))
                data_path(opath, sizeof(opath), de->d_name);
        closedir(d);
        REQUIRE(strcmp(opath, path) != 0);
        REQUIRE(rename(opath, path) == 0);
    }
    if (how == C_TINY) {
        /* no trailer left: nothing proves it damaged (it could be a raw LMCache
         * file of 10 bytes), so it is served whole and kept */
        REQUIRE_EQ(op1(fs, KVCD_L2_LOOKUP, &k, NULL, 0, &sz), 0);
        REQUIRE_EQ(sz, 10);
        REQUIRE_EQ(op1(fs, KVCD_L2_LOAD, &k, b, n + 64, &sz), 0);
        REQUIRE_EQ(sz, 10);
        REQUIRE(stat(path, &st) == 0 && st.st_size == 10);
        REQUIRE_EQ(st_int(fs, "checksum_failures"), 0);
        free(b);
        close_fs(fs);
        return;
    }
    REQUIRE_EQ(op1(fs, KVCD_L2_LOOKUP, &k, NULL, 0, &sz), 0);
    REQUIRE_EQ(op1(fs, KVCD_L2_LOAD, &k, b, n + 64, NULL), KVCD_ECHECKSUM);
    REQUIRE(stat(path, &st) != 0 && errno == ENOENT);
    REQUIRE_EQ(st_int(fs, "checksum_failures"), 1);
    REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
    REQUIRE_EQ(st_int(fs, "healthy"), 1);
    store_ok(fs, &k, n, 1); /* the key can be stored again */
    load_ok(fs, &k, n, 1);
    free(b);
    close_fs(fs);
}

START_TEST(test_corrupt_flip)
{
    corrupt_case(C_FLIP);
}
END_TEST
START_TEST(test_corrupt_flip_trailer)
{
    corrupt_case(C_FLIP_TRAILER);
}
END_TEST
START_TEST(test_corrupt_truncate)
{
    corrupt_case(C_TRUNC);
}
END_TEST
START_TEST(test_corrupt_append)
{
    corrupt_case(C_APPEND);
}
END_TEST
START_TEST(test_corrupt_key_digest)
{
    corrupt_case(C_KEYDIGEST);
}
END_TEST
START_TEST(test_corrupt_foreign_file)
{
    corrupt_case(C_FOREIGN);
}
END_TEST
START_TEST(test_corrupt_tiny)
{
    corrupt_case(C_TINY);
}
END_TEST

START_TEST(test_checksum_none)
{
    void *plain = open_fs(", \"checksum\": \"none\"");
    void *sum;
    tkey_t k = key_n("org/plain", 1), k2 = key_n("org/plain", 2);
    char path[1200];
    struct stat st;
    size_t sz;
    uint8_t *b = abuf(9000);

    store_ok(plain, &k, 8000, 1);
    the_file(path, sizeof(path));
    REQUIRE(stat(path, &st) == 0);
    REQUIRE_EQ(st.st_size, 8000); /* plain LMCache layout: payload only */
    {
        /* the bytes are exactly the payload */
        uint8_t *want = abuf(8000), *got = abuf(8000);
        int fd = open(path, O_RDONLY);

        fill(want, 8000, 1);
        REQUIRE(read(fd, got, 8000) == 8000);
        close(fd);
        REQUIRE(memcmp(want, got, 8000) == 0);
        free(want);
        free(got);
    }
    load_ok(plain, &k, 8000, 1);

    /* a checksummed file read with checksum "none": the trailer is stripped */
    sum = open_fs("");
    store_ok(sum, &k2, 7000, 2);
    REQUIRE_EQ(op1(plain, KVCD_L2_LOOKUP, &k2, NULL, 0, &sz), 0);
    REQUIRE_EQ(sz, 7000); /* the trailer is recognised at lookup already */
    REQUIRE_EQ(op1(plain, KVCD_L2_LOAD, &k2, b, 7000 + TRL, &sz), 0);
    REQUIRE_EQ(sz, 7000);
    /* a plain file cannot be verified, but nothing proves it damaged: a
     * checksumming reader serves it whole (read_raw) and keeps it */
    REQUIRE_EQ(op1(sum, KVCD_L2_LOOKUP, &k, NULL, 0, &sz), 0);
    REQUIRE_EQ(sz, 8000);
    REQUIRE_EQ(op1(sum, KVCD_L2_LOAD, &k, b, 8000, &sz), 0);
    REQUIRE_EQ(sz, 8000);
    REQUIRE(stat(path, &st) == 0 && st.st_size == 8000);
    REQUIRE_EQ(st_int(sum, "checksum_failures"), 0);
    REQUIRE_EQ(lookup_r(plain, &k), 0);
    free(b);
    close_fs(plain);
    close_fs(sum);
}
END_TEST

/* ---- tests: temp files ---------------------------------------------------- */

static void touch(const char *name, time_t age_s)
{
    char p[4096];
    int fd;

    snprintf(p, sizeof(p), "%s/.tmp/%s", base, name);
    fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, "orphan", 6) == 6);
    if (age_s) {
        struct timespec ts[2];

        clock_gettime(CLOCK_REALTIME, &ts[0]);
        ts[0].tv_sec -= age_s;
        ts[1] = ts[0];
        REQUIRE(futimens(fd, ts) == 0);
    }
    close(fd);
}

static int tmp_exists(const char *name)
{
    char p[4096];
    struct stat st;

    snprintf(p, sizeof(p), "%s/.tmp/%s", base, name);
    return stat(p, &st) == 0;
}

START_TEST(test_orphan_sweep_periodic)
{
    void *fs;
    tkey_t k = key_n("m", 1);

    faults_on();
    fs = open_fs(", \"orphan_tmp_age_s\": 60");
    kvcd_adapter_fs.background(fs);
    touch("otherhost.77.abc.1.2.tmp", 120);
    store_ok(fs, &k, 10, 1); /* too early for a sweep */
    REQUIRE(tmp_exists("otherhost.77.abc.1.2.tmp"));
    clock_skew_ms = 61 * 1000;
    k = key_n("m", 2);
    store_ok(fs, &k, 10, 1);
    REQUIRE(!tmp_exists("otherhost.77.abc.1.2.tmp"));
    close_fs(fs);
}
END_TEST

/* ---- tests: capacity ------------------------------------------------------ */

#define CAP_SPEC ", \"max_capacity_gb\": 0.0009765625" /* 1 MiB */
#define OBJ (64 * KiB - TRL)                           /* 64 KiB files */

/* Store keys [from, from + n) of model, OBJ bytes each, seeded by number. */
static void store_many(void *fs, const char *model, int from, int n)
{
    for (int i = from; i < from + n; i++) {
        tkey_t k = key_n(model, (uint64_t)i);

        store_ok(fs, &k, OBJ, (uint64_t)i);
    }
}

START_TEST(test_capacity_bound)
{
    void *fs = open_fs(CAP_SPEC);
    tkey_t k;
    int i;

    kvcd_adapter_fs.background(fs);
    for (i = 0; i < 48; i++) { /* 3x the capacity */
        walk_t w;

        k = key_n("org/cap", (uint64_t)i);
        store_ok(fs, &k, OBJ, (uint64_t)i);
        w = walk();
        REQUIRE(w.data_bytes <= MiB);
        REQUIRE(st_int(fs, "used_bytes") <= (long long)MiB);
    }
    for (i = 0; i < 48; i++) {
        k = key_n("org/cap", (uint64_t)i);
        if (i < 32)
            REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
        else
            load_ok(fs, &k, OBJ, (uint64_t)i);
    }
    REQUIRE_EQ(st_int(fs, "counters.evictions"), 32);
    REQUIRE_EQ(st_int(fs, "capacity_bytes"), MiB);
    REQUIRE_EQ(walk().data_bytes, MiB);
    /* an object that can never fit is refused without emptying the cache */
    {
        uint8_t *b = abuf(2 * MiB);

        k = key_n("org/cap", 1000);
        REQUIRE_EQ(op1(fs, KVCD_L2_STORE, &k, b, 2 * MiB, NULL), -ENOSPC);
        REQUIRE_EQ(walk().data_files, 16);
        REQUIRE_EQ(st_int(fs, "counters.stores_rejected_no_space"), 1);
        REQUIRE_EQ(st_int(fs, "healthy"), 1);
        free(b);
    }
    close_fs(fs);
}
END_TEST

START_TEST(test_capacity_lru_order)
{
    void *fs = open_fs(CAP_SPEC ", \"lookup_pin_ms\": 0");
    tkey_t k;
    int i;

    for (i = 0; i < 16; i++) {
        k = key_n("org/lru", (uint64_t)i);
        store_ok(fs, &k, OBJ, (uint64_t)i);
    }
    k = key_n("org/lru", 0);
    load_ok(fs, &k, OBJ, 0); /* 0 is now the most recent */
    k = key_n("org/lru", 100);
    store_ok(fs, &k, OBJ, 100);
    k = key_n("org/lru", 0);
    REQUIRE_EQ(lookup_r(fs, &k), 0);
    k = key_n("org/lru", 1);
    REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
    close_fs(fs);
}
END_TEST

/* The core's touch (L1 hits): keys in batch order, the last most recent. */
static void touch_keys(void *fs, const char *model, const uint64_t *ids, size_t n)
{
    tkey_t t[16];
    kvcd_l2_item_t it[16];
    kvcd_l2_batch_t b = {.op = KVCD_L2_TOUCH, .items = it, .n = n};
    size_t i;

    REQUIRE(n <= 16);
    memset(it, 0, sizeof(it));
    for (i = 0; i < n; i++) {
        t[i] = key_n(model, ids[i]);
        it[i].key = mk(&t[i]);
    }
    REQUIRE(kvcd_adapter_fs.touch != NULL);
    kvcd_adapter_fs.touch(fs, &b);
}

/* touch moves known files to the most recent end, in the batch's order, so
 * evictions follow it; an unknown key is not inserted (no file, no usage). */
START_TEST(test_touch_reorders_lru)
{
    void *fs = open_fs(CAP_SPEC ", \"lookup_pin_ms\": 0");
    const uint64_t hot[] = {1, 999, 0}; /* 999 was never stored */
    tkey_t k;
    int i;

    for (i = 0; i < 16; i++) {
        k = key_n("org/touch", (uint64_t)i);
        store_ok(fs, &k, OBJ, (uint64_t)i);
    }
    touch_keys(fs, "org/touch", hot, 3);
    REQUIRE_EQ(st_int(fs, "counters.touches"), 3);
    REQUIRE_EQ(st_int(fs, "counters.touches_unknown"), 1);
    REQUIRE_EQ(walk().data_files, 16);
    /* 0 and 1 are now the most recent: two new files evict 2 and 3 */
    for (i = 0; i < 2; i++) {
        k = key_n("org/touch", 100 + (uint64_t)i);
        store_ok(fs, &k, OBJ, 100 + (uint64_t)i);
    }
    REQUIRE_EQ(walk().data_files, 16);
    /* (a miss does not touch the index; a hit would) */
    for (i = 2; i < 4; i++) {
        k = key_n("org/touch", (uint64_t)i);
        REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
    }
    k = key_n("org/touch", 999);
    REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
    /* 13 more evict 4..15, then 1: it was touched before 0 */
    for (i = 0; i < 13; i++) {
        k = key_n("org/touch", 200 + (uint64_t)i);
        store_ok(fs, &k, OBJ, 200 + (uint64_t)i);
    }
    k = key_n("org/touch", 1);
    REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
    k = key_n("org/touch", 0);
    REQUIRE_EQ(lookup_r(fs, &k), 0);
    close_fs(fs);
}
END_TEST

START_TEST(test_capacity_after_restart)
{
    void *a = open_fs(""), *b;
    tkey_t k;
    int i;

    store_many(a, "org/rs", 0, 24);
    close_fs(a);
    /* recency comes back from file times: key i was used i seconds after 0 */
    for (i = 0; i < 24; i++) {
        char p[1200];
        struct timespec ts[2];

        snprintf(p, sizeof(p), "%s/org-SEP-rs@0x01000100@0@%016x.data", base, i);
        clock_gettime(CLOCK_REALTIME, &ts[0]);
        ts[0].tv_sec -= 100 - i;
        ts[1] = ts[0];
        REQUIRE(utimensat(AT_FDCWD, p, ts, 0) == 0);
    }
    b = open_fs(CAP_SPEC);
    kvcd_adapter_fs.background(b); /* scan finds 1.5 MiB: evicts to 1 MiB */
    REQUIRE(walk().data_bytes <= MiB);
    REQUIRE_EQ(st_int(b, "files"), 16);
    REQUIRE_EQ(st_int(b, "used_bytes"), MiB);
    for (i = 0; i < 24; i++) {
        k = key_n("org/rs", (uint64_t)i);
        REQUIRE_EQ(lookup_r(b, &k), i < 8 ? KVCD_ENOTFOUND : 0);
    }
    close_fs(b);
}
END_TEST

START_TEST(test_capacity_shared_discovery)
{
    void *a = open_fs(""), *b = open_fs(CAP_SPEC);
    tkey_t k;
    int i;

    for (i = 0; i < 24; i++) { /* another daemon fills the directory */
        k = key_n("org/disc", (uint64_t)i);
        store_ok(a, &k, OBJ, (uint64_t)i);
    }
    for (i = 0; i < 24; i++) { /* B finds them and keeps within its bound */
        k = key_n("org/disc", (uint64_t)i);
        load_ok(b, &k, OBJ, (uint64_t)i);
        REQUIRE(st_int(b, "used_bytes") <= (long long)MiB);
    }
    REQUIRE(walk().data_bytes <= MiB);
    close_fs(a);
    close_fs(b);
}
END_TEST

START_TEST(test_free_floor)
{
    void *fs;
    tkey_t k;
    const long long floor = 204800000; /* 5% of the fake 4 GB filesystem */
    int i;

    faults_on();
    fake_avail = floor + 10 * (long long)MiB;
    fs = open_fs("");
    REQUIRE_EQ(st_int(fs, "free_floor_bytes"), floor);
    for (i = 0; i < 4; i++) {
        k = key_n("org/floor", (uint64_t)i);
        store_ok(fs, &k, OBJ, (uint64_t)i);
    }
    REQUIRE_EQ(st_int(fs, "counters.evictions"), 0);
    fake_avail = floor + 10 * (long long)KiB; /* one more file must go first */
    k = key_n("org/floor", 10);
    store_ok(fs, &k, OBJ, 10);
    REQUIRE_EQ(st_int(fs, "counters.evictions"), 1);
    k = key_n("org/floor", 0);
    REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
    fake_avail = floor - 100 * (long long)MiB; /* hopeless: refuse, keep all */
    {
        uint8_t *b = abuf(OBJ);

        k = key_n("org/floor", 11);
        REQUIRE_EQ(op1(fs, KVCD_L2_STORE, &k, b, OBJ, NULL), -ENOSPC);
        free(b);
    }
    REQUIRE_EQ(st_int(fs, "counters.evictions"), 1);
    REQUIRE_EQ(walk().data_files, 4);
    close_fs(fs);

    /* explicit floors: the larger one applies */
    fs = open_fs(", \"min_free_gb\": 1, \"min_free_percent\": 1");
    REQUIRE_EQ(st_int(fs, "free_floor_bytes"), 1073741824LL);
    close_fs(fs);
    fs = open_fs(", \"min_free_gb\": 0.1");
    REQUIRE_EQ(st_int(fs, "free_floor_bytes"), 107374182LL);
    close_fs(fs);
}
END_TEST

/* ---- tests: faults -------------------------------------------------------- */

static void fault_case(int *knob, int err, const char *extra)
{
    void *fs;
    tkey_t k = key_n("org/fault", 1);
    uint8_t *b = abuf(30000);
    char name[32];
    walk_t w;
    json_t *s, *e;

    faults_on();
    fs = open_fs(extra);
    kvcd_adapter_fs.background(fs);
    fill(b, 30000, 1);
    *knob = err;
    REQUIRE_EQ(op1(fs, KVCD_L2_STORE, &k, b, 30000, NULL), -err);
    w = walk();
    REQUIRE_EQ(w.data_files, 0);
    REQUIRE_EQ(w.tmp_files, 0);
    REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
    /* the miss above proves the directory still answers, but the store failed */
    *knob = err;
    REQUIRE_EQ(op1(fs, KVCD_L2_STORE, &k, b, 30000, NULL), -err);
    s = status(fs);
    REQUIRE(json_is_false(json_object_get(s, "healthy")));
    snprintf(name, sizeof(name), "%s", kvcd_errname(-err));
    e = json_object_get(json_object_get(s, "errors"), name);
    REQUIRE(json_is_integer(e) && json_integer_value(e) == 2);
    REQUIRE(json_is_object(json_object_get(s, "last_error")));
    REQUIRE_EQ(json_integer_value(json_object_get(s, "reserved_bytes")), 0);
    json_decref(s);

    *knob = 0; /* the fault stops */
    store_ok(fs, &k, 30000, 1);
    REQUIRE_EQ(st_int(fs, "healthy"), 1);
    load_ok(fs, &k, 30000, 1);
    REQUIRE_EQ(walk().tmp_files, 0);
    REQUIRE_EQ(walk().data_files, 1);

    /* a transient error passes by itself when no operation follows; a full or
     * read-only disk or missing permission lasts until a store succeeds */
    *knob = err;
    k = key_n("org/fault", 2);
    REQUIRE_EQ(op1(fs, KVCD_L2_STORE, &k, b, 30000, NULL), -err);
    *knob = 0;
    REQUIRE_EQ(st_int(fs, "healthy"), 0);
    clock_skew_ms = 6000;
    if (err == EIO) {
        REQUIRE_EQ(st_int(fs, "healthy"), 1);
    } else {
        REQUIRE_EQ(st_int(fs, "healthy"), 0);
        store_ok(fs, &k, 30000, 2);
        REQUIRE_EQ(st_int(fs, "healthy"), 1);
    }
    free(b);
    close_fs(fs);
}

START_TEST(test_fault_enospc)
{
    fault_case(&fail_write, ENOSPC, "");
}
END_TEST
START_TEST(test_fault_eio_write)
{
    fault_case(&fail_write, EIO, ", \"use_odirect\": true");
}
END_TEST
START_TEST(test_fault_eio_fsync)
{
    fault_case(&fail_sync, EIO, ", \"fsync\": true");
}
END_TEST
START_TEST(test_fault_eio_rename)
{
    fault_case(&fail_rename, EIO, ", \"dir_levels\": 1");
}
END_TEST
START_TEST(test_fault_erofs_create)
{
    fault_case(&fail_create, EROFS, "");
}
END_TEST
START_TEST(test_fault_eacces_create)
{
    fault_case(&fail_create, EACCES, "");
}
END_TEST

START_TEST(test_fault_eio_read)
{
    void *fs;
    tkey_t k = key_n("org/fault", 1);
    uint8_t *b = abuf(30000);

    faults_on();
    fs = open_fs("");
    store_ok(fs, &k, 30000, 1);
    fail_read = EIO;
    REQUIRE_EQ(op1(fs, KVCD_L2_LOAD, &k, b, 30000, NULL), -EIO);
    REQUIRE_EQ(st_int(fs, "errors.EIO"), 1);
    REQUIRE_EQ(st_int(fs, "checksum_failures"), 0);
    REQUIRE_EQ(st_int(fs, "healthy"), 0);
    fail_read = 0;
    REQUIRE_EQ(walk().data_files, 1); /* an I/O error is not corruption */
    load_ok(fs, &k, 30000, 1);
    REQUIRE_EQ(st_int(fs, "healthy"), 1);
    free(b);
    close_fs(fs);
}
END_TEST

START_TEST(test_fault_undeletable_file)
{
    void *fs;
    tkey_t k;
    int i;

    faults_on();
    fs = open_fs(CAP_SPEC ", \"lookup_pin_ms\": 0");
    for (i = 0; i < 16; i++) {
        k = key_n("org/undel", (uint64_t)i);
        store_ok(fs, &k, OBJ, (uint64_t)i);
    }
    fail_unlink = EACCES; /* one file cannot be deleted: eviction goes on */
    k = key_n("org/undel", 100);
    store_ok(fs, &k, OBJ, 100);
    fail_unlink = 0;
    REQUIRE_EQ(st_int(fs, "counters.eviction_errors"), 1);
    k = key_n("org/undel", 101);
    store_ok(fs, &k, OBJ, 101);
    REQUIRE(st_int(fs, "used_bytes") <= (long long)MiB);
    close_fs(fs);
}
END_TEST

/* ---- tests: names --------------------------------------------------------- */

/* Write n bytes of (seed) raw, as LMCache's fs adapter does, under name. */
static void write_raw(const char *name, size_t n, uint64_t seed)
{
    char p[1200];
    uint8_t *b = abuf(n);
    int fd;

    fill(b, n, seed);
    data_path(p, sizeof(p), name);
    fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, b, n) == (ssize_t)n);
    close(fd);
    free(b);
}

static off_t file_size(const char *name)
{
    char p[1200];
    struct stat st;

    data_path(p, sizeof(p), name);
    return stat(p, &st) == 0 ? st.st_size : -1;
}

/* LMCache 0.5.6's files (raw bytes, its own names, its older 3-field names)
 * are served whole and never deleted; format "lmcache" writes them. */
START_TEST(test_lmcache_raw_files)
{
    void *fs = open_fs(""), *strict, *lmc;
    tkey_t cur = key_n("org/m:1", 1), old = key_n("org/m", 2), salted = key_n("org/m", 3);
    tkey_t mine = key_n("org/m", 4);
    uint8_t *b = abuf(70000);
    char err[512];
    void *bad;

    salted.salt = "u1";
    salted.group = 2;
    /* ':' is escaped in kvcd's names, not in LMCache's: found under LMCache's */
    write_raw("org-SEP-m:1@0x01000100@0@0000000000000001.data", 5000, 11);
    write_raw("org-SEP-m@0x01000100@0000000000000002.data", 64, 12); /* 3-field, 64 bytes */
    write_raw("org-SEP-m@0x01000100@2@0000000000000003@u1.data", 70000, 13);
    load_ok(fs, &cur, 5000, 11);
    load_ok(fs, &old, 64, 12);
    load_ok(fs, &salted, 70000, 13);
    REQUIRE_EQ(st_int(fs, "checksum_failures"), 0);
    REQUIRE_EQ(file_size("org-SEP-m:1@0x01000100@0@0000000000000001.data"), 5000);
    REQUIRE_EQ(file_size("org-SEP-m@0x01000100@0000000000000002.data"), 64);
    REQUIRE_EQ(file_size("org-SEP-m@0x01000100@2@0000000000000003@u1.data"), 70000);

    /* read_raw false: misses, still kept */
    strict = open_fs(", \"read_raw\": false");
    REQUIRE_EQ(lookup_r(strict, &cur), KVCD_ENOTFOUND);
    REQUIRE_EQ(op1(strict, KVCD_L2_LOAD, &old, b, 64, NULL), KVCD_ENOTFOUND);
    REQUIRE_EQ(file_size("org-SEP-m@0x01000100@0000000000000002.data"), 64);
    REQUIRE_EQ(file_size("org-SEP-m:1@0x01000100@0@0000000000000001.data"), 5000);
    REQUIRE_EQ(st_int(strict, "checksum_failures"), 0);
    close_fs(strict);

    /* format "lmcache": raw payload under LMCache's name, read back by both */
    lmc = open_fs(", \"format\": \"lmcache\"");
    store_ok(lmc, &mine, 3000, 14);
    REQUIRE_EQ(file_size("org-SEP-m@0x01000100@0@0000000000000004.data"), 3000);
    load_ok(lmc, &mine, 3000, 14);
    load_ok(fs, &mine, 3000, 14);
    store_ok(lmc, &cur, 5000, 15); /* same name and length: skipped, file untouched */
    load_ok(fs, &cur, 5000, 11);
    /* a kvcd file (trailer) is still verified and served by an lmcache reader */
    {
        tkey_t k5 = key_n("org/m", 5);

        store_ok(fs, &k5, 4000, 16);
        REQUIRE_EQ(file_size("org-SEP-m@0x01000100@0@0000000000000005.data"), 4000 + TRL);
        load_ok(lmc, &k5, 4000, 16);
    }
    /* remove takes the key's file under whichever name it has */
    REQUIRE_EQ(op1(fs, KVCD_L2_REMOVE, &old, NULL, 0, NULL), 0);
    REQUIRE_EQ(file_size("org-SEP-m@0x01000100@0000000000000002.data"), -1);
    /* a key LMCache cannot name ('@' in the model) cannot be stored its way */
    {
        tkey_t at = key_n("a@b", 6);

        REQUIRE_EQ(op1(lmc, KVCD_L2_STORE, &at, b, 10, NULL), KVCD_EBADFIELD);
        store_ok(fs, &at, 10, 17); /* kvcd's own names escape it */
        load_ok(fs, &at, 10, 17);
    }
    close_fs(lmc);

    /* spec errors name the field */
    REQUIRE(try_init(&bad, err, sizeof(err),
                     "{\"type\":\"fs\",\"base_path\":\"%s\",\"format\":\"lmcache\","
                     "\"checksum\":\"xxh3\"}", base) != 0);
    REQUIRE(strstr(err, "checksum") != NULL);
    REQUIRE(try_init(&bad, err, sizeof(err),
                     "{\"type\":\"fs\",\"base_path\":\"%s\",\"format\":\"lmcache\","
                     "\"dir_levels\":1}", base) != 0);
    REQUIRE(strstr(err, "dir_levels") != NULL);
    REQUIRE(try_init(&bad, err, sizeof(err),
                     "{\"type\":\"fs\",\"base_path\":\"%s\",\"format\":\"lmc\"}", base) != 0);
    REQUIRE(strstr(err, "format") != NULL);
    free(b);
    close_fs(fs);
}
END_TEST

START_TEST(test_lmcache_names)
{
    void *fs = open_fs("");
    tkey_t k = key_n("meta-llama/Llama-3.1-8B", 0);
    char p[1200];
    struct stat st;

    k.rank = 0x02010201;
    k.hash[0] = 0xab;
    k.hash[1] = 0xcd;
    store_ok(fs, &k, 100, 1);
    data_path(p, sizeof(p), "meta-llama-SEP-Llama-3.1-8B@0x02010201@0@abcd000000000000.data");
    REQUIRE(stat(p, &st) == 0);
    k.group = 0x1f;
    k.salt = "s1";
    store_ok(fs, &k, 100, 1);
    data_path(p, sizeof(p), "meta-llama-SEP-Llama-3.1-8B@0x02010201@1f@abcd000000000000@s1.data");
    REQUIRE(stat(p, &st) == 0);
    /* escapes: "-SEP" literal, '%', '@', '~', space */
    k = key_n("x-SEP-y/z%@~ q", 1);
    store_ok(fs, &k, 100, 1);
    data_path(p, sizeof(p), "x%2DSEP-y-SEP-z%25%40%7E%20q@0x01000100@0@0000000000000001.data");
    REQUIRE(stat(p, &st) == 0);
    close_fs(fs);
}
END_TEST

static const char *const hostile_models[] = {
    "../x",  "a/b",       "a-SEP-b",      "/",    "..", ".",  "-SEP/", "%2F", "a@b", "~",
    "a%2Db", "-SEP-SEP-", "\n\t\x01\xff", ".tmp", "ab", NULL, /* + long ones below */
};
static const char *const hostile_salts[] = {NULL, "../x", "a/b", "@", "-SEP-", "~", "%40"};

static void hostile_run(const char *extra, int levels)
{
    void *fs = open_fs(extra);
    static char longm[3][1001];
    const char *models[32];
    size_t nm = 0, ns = sizeof(hostile_salts) / sizeof(hostile_salts[0]), i, j;
    uint64_t seed = 0;
    walk_t w;

    for (i = 0; hostile_models[i]; i++)
        models[nm++] = hostile_models[i];
    memset(longm[0], '/', 1000);
    memset(longm[1], 'x', 1000);
    for (i = 0; i < 1000; i++)
        longm[2][i] = "../"[i % 3];
    longm[1][999] = 'y';
    for (i = 0; i < 3; i++)
        models[nm++] = longm[i];

    for (i = 0; i < nm; i++)
        for (j = 0; j < ns; j++) {
            tkey_t k = key_n(models[i], 7);

            k.salt = hostile_salts[j];
            store_ok(fs, &k, 100 + seed, seed);
            seed++;
        }
    seed = 0;
    for (i = 0; i < nm; i++)
        for (j = 0; j < ns; j++) {
            tkey_t k = key_n(models[i], 7);

            k.salt = hostile_salts[j];
            load_ok(fs, &k, 100 + seed, seed);
            seed++;
        }
    w = walk();
    REQUIRE_EQ(w.data_files, nm * ns); /* all names distinct */
    REQUIRE_EQ(w.bad_names, 0);
    REQUIRE_EQ(w.max_depth, levels + 1);
    REQUIRE_EQ(w.other, 0);
    REQUIRE_EQ(w.tmp_files, 0);
    only_base_in_top();
    close_fs(fs);
}

START_TEST(test_hostile_names)
{
    hostile_run("", 0);
}
END_TEST

START_TEST(test_hostile_names_levels)
{
    hostile_run(", \"dir_levels\": 2", 2);
}
END_TEST

START_TEST(test_long_name_rule)
{
    void *fs = open_fs("");
    static char m[1001];
    tkey_t k;
    DIR *d;
    struct dirent *de;
    int n = 0;

    memset(m, 'x', 1000);
    k = key_n(m, 1);
    store_ok(fs, &k, 10, 1);
    d = opendir(base);
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".data")) {
            const char *t = strstr(de->d_name, "@~");

            REQUIRE_EQ(strlen(de->d_name), 255);
            REQUIRE(t != NULL);
            REQUIRE_EQ(t - de->d_name, 216);
            REQUIRE_EQ(strlen(t), 2 + 32 + 5);
            n++;
        }
    closedir(d);
    REQUIRE_EQ(n, 1);
    close_fs(fs);
}
END_TEST

START_TEST(test_symlink_not_followed)
{
    void *fs = open_fs(", \"checksum\": \"none\"");
    tkey_t k = key_n("m", 1);
    char p[1200], outside[1200];
    uint8_t *b = abuf(100);
    int fd;

    snprintf(outside, sizeof(outside), "%s/secret", top);
    fd = open(outside, O_WRONLY | O_CREAT, 0600);
    REQUIRE(write(fd, "secret", 6) == 6);
    close(fd);
    data_path(p, sizeof(p), "m@0x01000100@0@0000000000000001.data");
    REQUIRE(symlink(outside, p) == 0);
    REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
    REQUIRE_EQ(op1(fs, KVCD_L2_LOAD, &k, b, 100, NULL), KVCD_ENOTFOUND);
    free(b);
    close_fs(fs);
}
END_TEST

/* ---- tests: modes and specs ----------------------------------------------- */

static unsigned mode_of(const char *p)
{
    struct stat st;

    REQUIRE(lstat(p, &st) == 0);
    return st.st_mode & 07777;
}

START_TEST(test_modes)
{
    void *fs;
    tkey_t k = key_n("m", 1);
    char p[1200];
    DIR *d;
    struct dirent *de;

    snprintf(base, sizeof(base), "%s/deep/er/base", top); /* created, mkdir -p */
    fs = open_fs("");
    store_ok(fs, &k, 10, 1);
    REQUIRE_EQ(mode_of(base), 0700);
    snprintf(p, sizeof(p), "%s/deep", top);
    REQUIRE_EQ(mode_of(p), 0700);
    snprintf(p, sizeof(p), "%s/.tmp", base);
    REQUIRE_EQ(mode_of(p), 0700);
    the_file(p, sizeof(p));
    REQUIRE_EQ(mode_of(p), 0600);
    close_fs(fs);

    /* explicit modes are exact, whatever the umask */
    umask(077);
    snprintf(base, sizeof(base), "%s/b2", top);
    fs = open_fs(", \"file_mode\": \"0640\", \"dir_mode\": \"0750\", \"dir_levels\": 1");
    store_ok(fs, &k, 10, 1);
    REQUIRE_EQ(mode_of(base), 0750);
    d = opendir(base);
    while ((de = readdir(d)))
        if (strlen(de->d_name) == 2 && de->d_name[0] != '.') {
            DIR *s;
            struct dirent *f;

            snprintf(p, sizeof(p), "%s/%s", base, de->d_name);
            REQUIRE_EQ(mode_of(p), 0750);
            s = opendir(p);
            while ((f = readdir(s)))
                if (strstr(f->d_name, ".data")) {
                    snprintf(p, sizeof(p), "%s/%s/%s", base, de->d_name, f->d_name);
                    REQUIRE_EQ(mode_of(p), 0640);
                }
            closedir(s);
        }
    closedir(d);
    close_fs(fs);
    fs = open_fs(", \"file_mode\": 384"); /* the number 0600 */
    close_fs(fs);
}
END_TEST

static void bad_spec(const char *field, const char *fmt, ...)
{
    char spec[1024], err[512];
    va_list ap;
    void *self;
    int r;

    va_start(ap, fmt);
    vsnprintf(spec, sizeof(spec), fmt, ap);
    va_end(ap);
    r = try_init(&self, err, sizeof(err), "%s", spec);
    if (r != KVCD_ECONFIG)
        ck_abort_msg("spec %s: init returned %d, want ECONFIG", spec, r);
    if (strncmp(err, field, strlen(field)) || err[strlen(field)] != ':')
        ck_abort_msg("spec %s: error \"%s\" does not name %s", spec, err, field);
}

#define SPEC(extra) "{\"type\":\"fs\",\"base_path\":\"%s\"" extra "}", base

START_TEST(test_bad_specs)
{
    char file[1200], link_to[1200];
    int fd;

    bad_spec("bogus", SPEC(",\"bogus\":1"));
    bad_spec("base_path", "{\"type\":\"fs\",\"base_path\":5}");
    bad_spec("base_path", "{\"type\":\"fs\"}");
    bad_spec("base_path", "{\"type\":\"fs\",\"base_path\":\"\"}");
    bad_spec("type", "{\"type\":\"s3\",\"base_path\":\"/x\"}");
    bad_spec("spec", "[1]");
    bad_spec("relative_tmp_dir", SPEC(",\"relative_tmp_dir\":\"/abs\""));
    bad_spec("relative_tmp_dir", SPEC(",\"relative_tmp_dir\":\"../x\""));
    bad_spec("relative_tmp_dir", SPEC(",\"relative_tmp_dir\":\"a/../b\""));
    bad_spec("relative_tmp_dir", SPEC(",\"relative_tmp_dir\":\"\""));
    bad_spec("relative_tmp_dir", SPEC(",\"relative_tmp_dir\":\".\""));
    bad_spec("relative_tmp_dir", SPEC(",\"relative_tmp_dir\":\"ab\""));
    bad_spec("relative_tmp_dir", SPEC(",\"relative_tmp_dir\":\"x.data\""));
    bad_spec("relative_tmp_dir", SPEC(",\"relative_tmp_dir\":7"));
    bad_spec("read_ahead_size", SPEC(",\"read_ahead_size\":-1"));
    bad_spec("read_ahead_size", SPEC(",\"read_ahead_size\":0"));
    bad_spec("read_ahead_size", SPEC(",\"read_ahead_size\":\"64k\""));
    bad_spec("read_ahead_size", SPEC(",\"read_ahead_size\":1.5"));
    bad_spec("use_odirect", SPEC(",\"use_odirect\":\"yes\""));
    bad_spec("fsync", SPEC(",\"fsync\":1"));
    bad_spec("checksum", SPEC(",\"checksum\":\"crc32\""));
    bad_spec("file_mode", SPEC(",\"file_mode\":600"));
    bad_spec("file_mode", SPEC(",\"file_mode\":\"0400\""));
    bad_spec("file_mode", SPEC(",\"file_mode\":\"9\""));
    bad_spec("dir_mode", SPEC(",\"dir_mode\":\"0600\""));
    bad_spec("max_capacity_gb", SPEC(",\"max_capacity_gb\":-1"));
    bad_spec("max_capacity_gb", SPEC(",\"max_capacity_gb\":\"1\""));
    bad_spec("min_free_gb", SPEC(",\"min_free_gb\":-0.5"));
    bad_spec("min_free_percent", SPEC(",\"min_free_percent\":150"));
    bad_spec("dir_levels", SPEC(",\"dir_levels\":3"));
    bad_spec("lookup_pin_ms", SPEC(",\"lookup_pin_ms\":-1"));
    bad_spec("orphan_tmp_age_s", SPEC(",\"orphan_tmp_age_s\":0"));
    bad_spec("health_window_ms", SPEC(",\"health_window_ms\":true"));

    /* base_path below a regular file: cannot be created (works as root too) */
    snprintf(file, sizeof(file), "%s/plainfile", top);
    fd = open(file, O_WRONLY | O_CREAT, 0600);
    close(fd);
    bad_spec("base_path", "{\"type\":\"fs\",\"base_path\":\"%s/sub\"}", file);
    bad_spec("base_path", "{\"type\":\"fs\",\"base_path\":\"%s\"}", file);
    /* read-only filesystem (procfs; refuses root as well) */
    bad_spec("base_path", "{\"type\":\"fs\",\"base_path\":\"/proc/kvcd-test\"}");

    /* relative_tmp_dir a symlink leading out of base_path */
    snprintf(link_to, sizeof(link_to), "%s/elsewhere", top);
    REQUIRE(mkdir(link_to, 0700) == 0);
    REQUIRE(mkdir(base, 0700) == 0 || errno == EEXIST);
    snprintf(file, sizeof(file), "%s/.tmp", base);
    REQUIRE(symlink(link_to, file) == 0);
    bad_spec("relative_tmp_dir", SPEC(""));
}
END_TEST

START_TEST(test_status_fields)
{
    void *fs = open_fs(", \"max_capacity_gb\": 2");
    json_t *s = status(fs);
    const char *keys[] = {"healthy",          "base_path", "options",           "used_bytes",
                          "capacity_bytes",   "files",     "fs_free_bytes",     "fs_total_bytes",
                          "free_floor_bytes", "errors",    "checksum_failures", "odirect_fallbacks",
                          "counters",         "scan",      "last_error",        NULL};

    for (int i = 0; keys[i]; i++)
        if (!json_object_get(s, keys[i]))
            ck_abort_msg("status lacks %s", keys[i]);
    REQUIRE(!strcmp(json_string_value(json_object_get(s, "base_path")), base));
    REQUIRE_EQ(json_integer_value(json_object_get(s, "capacity_bytes")), 2LL << 30);
    REQUIRE(json_integer_value(json_object_get(s, "fs_free_bytes")) > 0);
    REQUIRE(!strcmp(json_string_value(json_object_get(json_object_get(s, "options"), "checksum")),
                    "xxh3"));
    REQUIRE(!strcmp(json_string_value(json_object_get(json_object_get(s, "scan"), "state")),
                    "pending"));
    json_decref(s);
    kvcd_adapter_fs.background(fs);
    REQUIRE_EQ(st_int(fs, "files"), 0);
    close_fs(fs);
    REQUIRE(kvcd_adapter_fs.fields != NULL);
    REQUIRE(kvcd_adapter_fs.flags == (KVCD_ADAPTER_BLOCKING | KVCD_ADAPTER_PERSISTENT));
}
END_TEST

/* ---- tests: concurrency --------------------------------------------------- */

typedef struct {
    void *fs;
    int id;
    int bad;
    char what[96]; /* the first bad result */
} worker_t;

static void worker_bad(worker_t *w, const char *op, int r, size_t sz)
{
    if (!w->bad++)
        snprintf(w->what, sizeof(w->what), "%s: %s size %zu", op, kvcd_errname(r), sz);
}

static void *worker(void *arg)
{
    worker_t *w = arg;
    uint8_t *b = abuf(OBJ), *want = abuf(OBJ);
    uint64_t x = (uint64_t)w->id * 7919 + 1;

    for (int i = 0; i < 300; i++) {
        uint64_t n;
        tkey_t k;
        size_t sz;
        int r;

        x = x * 6364136223846793005ull + 1442695040888963407ull;
        n = (x >> 33) % 48;
        k = key_n("org/conc", n);
        switch ((x >> 20) % 3) {
        case 0:
            fill(b, OBJ, n);
            r = op1(w->fs, KVCD_L2_STORE, &k, b, OBJ, NULL);
            if (r != 0 && r != -ENOSPC)
                worker_bad(w, "store", r, 0);
            break;
        case 1:
            r = op1(w->fs, KVCD_L2_LOOKUP, &k, NULL, 0, &sz);
            if (r != 0 && r != KVCD_ENOTFOUND)
                worker_bad(w, "lookup", r, sz);
            break;
        default:
            r = op1(w->fs, KVCD_L2_LOAD, &k, b, OBJ, &sz);
            if (r == 0) {
                fill(want, OBJ, n);
                if (sz != OBJ || memcmp(b, want, OBJ) != 0)
                    worker_bad(w, "load bytes", r, sz);
            } else if (r != KVCD_ENOTFOUND) {
                worker_bad(w, "load", r, sz);
            }
        }
    }
    free(b);
    free(want);
    return NULL;
}

START_TEST(test_concurrent)
{
    void *a = open_fs(CAP_SPEC), *b2 = open_fs(CAP_SPEC);
    pthread_t t[8];
    worker_t w[8];
    int i;

    for (i = 0; i < 8; i++) {
        w[i] = (worker_t){.fs = i % 2 ? a : b2, .id = i};
        REQUIRE(pthread_create(&t[i], NULL, worker, &w[i]) == 0);
    }
    kvcd_adapter_fs.background(a); /* the scan runs while they work */
    for (i = 0; i < 8; i++) {
        REQUIRE(pthread_join(t[i], NULL) == 0);
        if (w[i].bad)
            ck_abort_msg("worker %d: %d bad results, first %s", i, w[i].bad, w[i].what);
    }
    REQUIRE(st_int(b2, "used_bytes") <= (long long)MiB);
    REQUIRE_EQ(st_int(a, "reserved_bytes"), 0);
    REQUIRE_EQ(st_int(a, "checksum_failures") + st_int(b2, "checksum_failures"), 0);
    REQUIRE_EQ(walk().tmp_files, 0);
    close_fs(a);
    close_fs(b2);
}
END_TEST

/* ---- tests: regressions of issue 9, one per item ---------------------------- */

/* Run a one-key load or lookup in a child process: its result, or a test
 * failure when it has not returned after 10 s (it blocked). */
static int op1_bounded(void *fs, kvcd_l2_op_t op, const tkey_t *t, size_t len)
{
    static const int codes[] = {0, KVCD_ENOTFOUND, KVCD_ECHECKSUM, KVCD_EINTERNAL};
    pid_t c = fork();
    int stw, i;

    REQUIRE(c >= 0);
    if (c == 0) {
        int r = op1(fs, op, t, len ? abuf(len) : NULL, len, NULL);

        for (i = 0; i < 3 && codes[i] != r; i++)
            ;
        _exit(i);
    }
    for (i = 0; i < 1000; i++) {
        if (waitpid(c, &stw, WNOHANG) == c) {
            REQUIRE(WIFEXITED(stw) && WEXITSTATUS(stw) < 4);
            return codes[WEXITSTATUS(stw)];
        }
        usleep(10000);
    }
    kill(c, SIGKILL);
    waitpid(c, &stw, 0);
    ck_abort_msg("the %s did not return within 10 s: it blocked",
                 op == KVCD_L2_LOAD ? "load" : "lookup");
    return 0;
}

/* Item 3: a FIFO (or any non-regular file) where an object file should be is a
 * miss that never blocks the worker, and is left alone. */
START_TEST(test_item03_fifo_object_never_blocks)
{
    void *fs = open_fs("");
    tkey_t k = key_n("org/fifo", 1);
    char p[1200], q[1300];
    struct stat st;

    store_ok(fs, &k, 30000, 1);
    the_file(p, sizeof(p));
    REQUIRE(unlink(p) == 0);
    REQUIRE(mkfifo(p, 0600) == 0); /* swapped in for the object file */
    REQUIRE_EQ(op1_bounded(fs, KVCD_L2_LOOKUP, &k, 0), KVCD_ENOTFOUND);
    REQUIRE_EQ(op1_bounded(fs, KVCD_L2_LOAD, &k, 30000), KVCD_ENOTFOUND);
    REQUIRE(stat(p, &st) == 0 && S_ISFIFO(st.st_mode)); /* not provably ours: kept */
    REQUIRE_EQ(st_int(fs, "checksum_failures"), 0);
    REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND); /* here, not in a child: */
    REQUIRE_EQ(st_int(fs, "files"), 0);           /* no longer accounted */

    /* the start-up scan and the temp sweep pass FIFOs by */
    snprintf(q, sizeof(q), "%s/.tmp/otherhost.1.2.3.4.tmp", base);
    REQUIRE(mkfifo(q, 0600) == 0);
    kvcd_adapter_fs.background(fs);
    REQUIRE_EQ(st_int(fs, "files"), 0);
    REQUIRE(stat(q, &st) == 0 && S_ISFIFO(st.st_mode));

    /* a store of the key publishes a regular file over it */
    store_ok(fs, &k, 30000, 1);
    load_ok(fs, &k, 30000, 1);
    close_fs(fs);
}
END_TEST

/* Item 9: keys looked up again and again (here: past a gap in the prefix, as
 * kvcd's LOOKUP asks about them) and never loaded stay evictable, and the
 * capacity bound holds; a file evicted between lookup and load is a miss. */
START_TEST(test_item09_lookups_do_not_pin)
{
    kvcd_l2_item_t it[17];
    kvcd_l2_batch_t b = {.op = KVCD_L2_LOOKUP, .items = it, .n = 17};
    tkey_t t[17], k;
    void *fs;
    int i, round;

    faults_on();
    fs = open_fs(CAP_SPEC);
    t[0] = key_n("org/pin", 999); /* never stored: the gap */
    for (i = 1; i < 17; i++) {
        t[i] = key_n("org/pin", (uint64_t)i);
        store_ok(fs, &t[i], OBJ, (uint64_t)i); /* 16 x 64 KiB: full */
    }
    for (round = 0; round < 4; round++) {
        memset(it, 0, sizeof(it));
        for (i = 0; i < 17; i++) {
            it[i].key = mk(&t[i]);
            it[i].result = KVCD_EINTERNAL;
        }
        kvcd_adapter_fs.lookup(fs, &b);
        REQUIRE_EQ(it[0].result, KVCD_ENOTFOUND);
        for (i = 1; i < 17; i++)
            REQUIRE_EQ(it[i].result, 0);
        clock_skew_ms += 5000; /* looked up again well within 10 s */
    }
    for (i = 0; i < 16; i++) {
        k = key_n("org/new", (uint64_t)i);
        store_ok(fs, &k, OBJ, (uint64_t)i);
        REQUIRE(walk().data_bytes <= MiB);
        REQUIRE(st_int(fs, "used_bytes") <= (long long)MiB);
    }
    for (i = 1; i < 17; i++)
        REQUIRE_EQ(lookup_r(fs, &t[i]), KVCD_ENOTFOUND);
    REQUIRE_EQ(st_int(fs, "counters.evictions"), 16);

    /* evicted after its lookup, before its load: a miss */
    k = key_n("org/new", 15);
    REQUIRE_EQ(lookup_r(fs, &k), 0);
    store_many(fs, "org/newer", 0, 16);
    {
        uint8_t *buf = abuf(OBJ);

        REQUIRE_EQ(op1(fs, KVCD_L2_LOAD, &k, buf, OBJ, NULL), KVCD_ENOTFOUND);
        free(buf);
    }
    REQUIRE(walk().data_bytes <= MiB);
    close_fs(fs);
}
END_TEST

/* String at a key of the status object ("" if absent or not a string). */
static void st_str(void *fs, const char *key, char *out, size_t n)
{
    json_t *o = status(fs), *v = json_object_get(o, key);

    snprintf(out, n, "%s", json_is_string(v) ? json_string_value(v) : "");
    json_decref(o);
}

/* Unhealthy, and the reason names errno e. */
static void unhealthy_for(void *fs, int e)
{
    char reason[400];

    REQUIRE_EQ(st_int(fs, "healthy"), 0);
    st_str(fs, "reason", reason, sizeof(reason));
    if (!strstr(reason, kvcd_errname(-e)))
        ck_abort_msg("reason \"%s\" does not name %s", reason, kvcd_errname(-e));
}

static void healthy_again(void *fs)
{
    json_t *o = status(fs);

    REQUIRE(json_is_true(json_object_get(o, "healthy")));
    REQUIRE(json_is_false(json_object_get(o, "read_only")));
    REQUIRE(json_is_null(json_object_get(o, "reason")));
    json_decref(o);
}

/* Item 16a: a full disk at start-up: start read-only, serve reads, evict our
 * own files to make room, writable again once a write succeeds. */
START_TEST(test_item16_full_disk_starts_and_evicts)
{
    void *fs = open_fs(", \"use_odirect\": true");
    long long direct = st_int(fs, "odirect_fallbacks.supported");
    tkey_t k;

    store_many(fs, "org/full", 0, 4);
    close_fs(fs);

    faults_on();
    full_until_unlink = 1; /* no write succeeds until one of our files goes */
    fs = open_fs(", \"use_odirect\": true");
    REQUIRE_EQ(st_int(fs, "read_only"), 1);
    unhealthy_for(fs, ENOSPC);
    k = key_n("org/full", 3);
    load_ok(fs, &k, OBJ, 3); /* lookups and loads are served */
    REQUIRE_EQ(st_int(fs, "counters.evictions"), 0);

    kvcd_adapter_fs.background(fs); /* scan, then evict to make room */
    REQUIRE_EQ(st_int(fs, "counters.evictions"), 1);
    healthy_again(fs);
    REQUIRE_EQ(st_int(fs, "odirect_fallbacks.supported"), direct); /* not the disk's fault */
    k = key_n("org/full", 10);
    store_ok(fs, &k, OBJ, 10);
    load_ok(fs, &k, OBJ, 10);
    REQUIRE_EQ(walk().data_files, 4);
    REQUIRE_EQ(walk().tmp_files, 0);
    close_fs(fs);
}
END_TEST

/* Item 16a: full with nothing of ours to evict: read-only-degraded until a
 * write succeeds; permissions are still a start-up error naming base_path. */
START_TEST(test_item16_full_disk_nothing_to_evict)
{
    char err[512];
    void *fs;
    tkey_t k = key_n("org/full", 1);
    uint8_t *b = abuf(OBJ);

    faults_on();
    fail_create = EACCES;
    REQUIRE_EQ(try_init(&fs, err, sizeof(err), SPEC("")), KVCD_ECONFIG);
    if (strncmp(err, "base_path:", 10))
        ck_abort_msg("EACCES at start: \"%s\" does not name base_path", err);
    fail_create = 0;

    full_until_unlink = 1;
    fs = open_fs("");
    REQUIRE_EQ(st_int(fs, "read_only"), 1);
    kvcd_adapter_fs.background(fs);
    REQUIRE_EQ(st_int(fs, "read_only"), 1);
    unhealthy_for(fs, ENOSPC);
    REQUIRE_EQ(op1(fs, KVCD_L2_STORE, &k, b, OBJ, NULL), -ENOSPC);
    REQUIRE_EQ(lookup_r(fs, &k), KVCD_ENOTFOUND);
    unhealthy_for(fs, ENOSPC);
    REQUIRE_EQ(walk().tmp_files, 0);
    full_until_unlink = 0; /* space came back */
    store_ok(fs, &k, OBJ, 1);
    healthy_again(fs);
    load_ok(fs, &k, OBJ, 1);
    free(b);
    close_fs(fs);

    fail_create = EROFS; /* a read-only mount is served read-only */
    fs = open_fs("");
    REQUIRE_EQ(st_int(fs, "read_only"), 1);
    unhealthy_for(fs, EROFS);
    load_ok(fs, &k, OBJ, 1);
    close_fs(fs);
}
END_TEST

/* Item 16b: stores failing for a persistent cause keep the adapter unhealthy
 * (with a reason) whatever lookups do and however long it takes, until a store
 * succeeds. */
START_TEST(test_item16_failing_stores_are_unhealthy)
{
    static const int causes[] = {EROFS, EACCES, EDQUOT, ENOSPC};
    const long long floor = 204800000; /* 5% of the fake 4 GB filesystem */
    void *fs;
    tkey_t k0 = key_n("org/ill", 0), k1 = key_n("org/ill", 1), k2;
    uint8_t *b = abuf(OBJ);
    size_t i;

    faults_on();
    fs = open_fs("");
    kvcd_adapter_fs.background(fs);
    for (i = 0; i < sizeof(causes) / sizeof(causes[0]); i++) {
        k2 = key_n("org/ill", 10 + i);
        store_ok(fs, &k0, OBJ, 0); /* the one a full disk's store evicts first */
        store_ok(fs, &k1, OBJ, 1);
        if (causes[i] == ENOSPC)
            fake_avail = floor - 100 * (long long)MiB; /* eviction cannot help */
        else if (causes[i] == EDQUOT)
            fail_write = EDQUOT; /* evicts k0, fails again */
        else
            fail_create = causes[i];
        REQUIRE_EQ(op1(fs, KVCD_L2_STORE, &k2, b, OBJ, NULL), -causes[i]);
        REQUIRE_EQ(lookup_r(fs, &k1), 0); /* reads still work... */
        unhealthy_for(fs, causes[i]);     /* ...but the adapter is not healthy */
        clock_skew_ms += 60000;
        unhealthy_for(fs, causes[i]);
        fail_create = fail_write = 0;
        fake_avail = -1;
        store_ok(fs, &k2, OBJ, 2);
        healthy_again(fs);
    }
    free(b);
    close_fs(fs);
}
END_TEST

/* The temp-name host part, as the adapter writes it. */
static void my_host(char *h, size_t n)
{
    REQUIRE(gethostname(h, n) == 0);
    h[n - 1] = '\0';
    for (size_t i = 0; h[i]; i++)
        if (!((h[i] >= 'a' && h[i] <= 'z') || (h[i] >= 'A' && h[i] <= 'Z') ||
              (h[i] >= '0' && h[i] <= '9') || h[i] == '-'))
            h[i] = '-';
}

/* Item 17: temp files are swept at once only when they provably belong to a
 * dead daemon of this host, boot and pid namespace; a young file of any other
 * owner (another namespace, another boot, an old-style name) is kept until it
 * is an hour old. */
START_TEST(test_item17_tmp_sweep_spares_other_namespaces)
{
    void *fs;
    char host[64], prefix[200], h2[80], boot[20], n[12][300];
    unsigned long long ns, nonce;
    pid_t dead = fork(), me = getpid();
    int pid, stw, i;
    tkey_t k = key_n("m", 1);

    if (dead == 0)
        _exit(0);
    REQUIRE(waitpid(dead, &stw, 0) == dead);
    my_host(host, sizeof(host));
    faults_on();
    fs = open_fs("");

    /* first sweep: names that carry no namespace (older daemons, or a daemon
     * in another pid namespace on this hostname) and files of unknown owners */
    snprintf(n[0], sizeof(n[0]), "%s.%d.%llx.5.1.tmp", host, (int)dead, 0x1234ull);
    touch(n[0], 0); /* pid unknown here: may be alive elsewhere */
    snprintf(n[1], sizeof(n[1]), "%s.%d.%llx.5.1.tmp", host, (int)me, 0x1234ull);
    touch(n[1], 0);                           /* "our" pid, in some namespace */
    touch("otherhost.77.abc.1.1.tmp", 0);     /* other host, fresh: kept */
    touch("otherhost.77.abc.1.2.tmp", 7200);  /* other host, old: swept */
    touch("junk", 7200);                      /* unknown, old: swept */
    touch("junk2", 0);                        /* unknown, fresh: kept */
    touch("junk3", 1800);                     /* unknown, half an hour: kept */
    kvcd_adapter_fs.background(fs);
    REQUIRE(tmp_exists(n[0]));
    REQUIRE(tmp_exists(n[1]));
    REQUIRE(tmp_exists("otherhost.77.abc.1.1.tmp"));
    REQUIRE(!tmp_exists("otherhost.77.abc.1.2.tmp"));
    REQUIRE(!tmp_exists("junk"));
    REQUIRE(tmp_exists("junk2"));
    REQUIRE(tmp_exists("junk3"));
    REQUIRE_EQ(st_int(fs, "scan.orphans_removed"), 2);
    REQUIRE_EQ(st_int(fs, "options.orphan_tmp_age_s"), 3600);

    /* second sweep (periodic, from a store): names of this daemon's format */
    st_str(fs, "tmp_name_prefix", prefix, sizeof(prefix));
    if (sscanf(prefix, "%79[^.].%16[0-9a-f].%llu.%d.%llx", h2, boot, &ns, &pid, &nonce) != 5)
        ck_abort_msg("tmp_name_prefix \"%s\" is not host.boot.pidns.pid.nonce", prefix);
    REQUIRE(!strcmp(h2, host));
    REQUIRE_EQ(pid, me);
    REQUIRE(ns > 0);
#define TMPN(i, b, s, p, c)                                                                        \
    snprintf(n[i], sizeof(n[i]), "%s.%s.%llu.%d.%llx.5.1.tmp", host, b, s, p, c)
    TMPN(2, boot, ns, (int)dead, nonce + 1);      /* this namespace, writer gone: swept */
    TMPN(3, boot, ns, (int)me, nonce + 1);        /* our pid, earlier life: swept */
    TMPN(4, boot, ns, (int)me, nonce);            /* ours, in flight: kept */
    TMPN(5, boot, ns, 1, nonce + 2);              /* pid 1 lives: kept */
    TMPN(6, boot, ns + 1, (int)dead, nonce + 1);  /* another namespace: kept */
    TMPN(7, boot, ns + 1, (int)me, nonce + 1);    /* another namespace, our pid: kept */
    TMPN(8, "00000000deadbeef", ns, (int)dead, nonce + 1); /* another boot (or host): kept */
#undef TMPN
    for (i = 2; i <= 8; i++)
        touch(n[i], 0);
    clock_skew_ms = 3601 * 1000; /* the next store sweeps */
    store_ok(fs, &k, 10, 1);
    for (i = 0; i <= 8; i++)
        if (tmp_exists(n[i]) != (i != 2 && i != 3))
            ck_abort_msg("%s was %s", n[i], tmp_exists(n[i]) ? "kept" : "swept");
    REQUIRE_EQ(st_int(fs, "scan.orphans_removed"), 4);
    close_fs(fs);
}
END_TEST

/* ---- recency across a restart -------------------------------------------- */

#define REC_N 8
#define REC_OBJ 4096 /* payload; a file is REC_OBJ + TRL bytes */

/* A capacity bound that holds exactly REC_N files. */
static void rec_spec(char *out, size_t n, const char *extra)
{
    snprintf(out, n, ", \"max_capacity_gb\": %.12f%s",
             ((double)REC_N * (REC_OBJ + TRL) + 100) / 1073741824.0, extra);
}

/* Store REC_N files, then use them in the order `use` (lookups), close. The
 * LRU list is then use[0] (least recent) ... use[REC_N-1]. */
static void rec_first_run(const char *extra, const unsigned *use)
{
    char spec[256];
    void *a;
    tkey_t k;
    unsigned i;

    rec_spec(spec, sizeof(spec), extra);
    a = open_fs(spec);
    kvcd_adapter_fs.background(a);
    for (i = 0; i < REC_N; i++) {
        k = key_n("org/recency", i);
        store_ok(a, &k, REC_OBJ, i);
    }
    for (i = 0; i < REC_N; i++) {
        k = key_n("org/recency", use[i]);
        REQUIRE_EQ(lookup_r(a, &k), 0);
    }
    close_fs(a);
}

/* After the restart, each new store evicts one file: how many of them went in
 * the order `use` says (REC_N when the order survived exactly). A lookup miss
 * does not touch the index, so checking the victim changes nothing. */
static unsigned rec_second_run(void *b, const unsigned *use)
{
    unsigned i, in_order = 0;
    tkey_t k;

    for (i = 0; i < REC_N; i++) {
        k = key_n("org/recency-new", i);
        store_ok(b, &k, REC_OBJ, 100 + i);
        k = key_n("org/recency", use[i]);
        if (lookup_r(b, &k) != KVCD_ENOTFOUND)
            break;
        in_order++;
    }
    return in_order;
}

static const unsigned rec_use[REC_N] = {5, 2, 7, 0, 3, 6, 1, 4};

/* The order of the LRU list before the stop is the order after the start,
 * whatever the file times say (lookups move neither atime nor mtime). */
START_TEST(test_recency_survives_restart)
{
    char spec[256], p[400];
    struct stat st;
    void *b;

    rec_first_run("", rec_use);
    data_path(p, sizeof(p), ".kvcd-recency");
    REQUIRE(stat(p, &st) == 0);
    REQUIRE_EQ(st.st_size, 16 + REC_N * 8 + 8);
    REQUIRE_EQ(st.st_mode & 0777, 0600);

    rec_spec(spec, sizeof(spec), "");
    b = open_fs(spec);
    kvcd_adapter_fs.background(b);
    REQUIRE_EQ(st_int(b, "scan.files"), REC_N);
    REQUIRE_EQ(st_int(b, "scan.recency_restored"), REC_N);
    {
        json_t *js = status(b);

        REQUIRE(!strcmp(json_string_value(json_object_get(json_object_get(js, "scan"),
                                                           "recency")), "applied"));
        json_decref(js);
    }
    /* applied once: a crash later must not apply it again */
    REQUIRE(stat(p, &st) != 0 && errno == ENOENT);
    REQUIRE_EQ(rec_second_run(b, rec_use), REC_N);
    close_fs(b);
}
END_TEST

/* The journal saves the order touches made (no lookup, no load). */
START_TEST(test_recency_follows_touch)
{
    char spec[256];
    void *a, *b;
    tkey_t k;
    unsigned i;

    rec_spec(spec, sizeof(spec), "");
    a = open_fs(spec);
    kvcd_adapter_fs.background(a);
    for (i = 0; i < REC_N; i++) {
        k = key_n("org/recency", i);
        store_ok(a, &k, REC_OBJ, i);
    }
    for (i = 0; i < REC_N; i++) {
        uint64_t id = rec_use[i];

        touch_keys(a, "org/recency", &id, 1);
    }
    close_fs(a);
    b = open_fs(spec);
    kvcd_adapter_fs.background(b);
    REQUIRE_EQ(st_int(b, "scan.recency_restored"), REC_N);
    REQUIRE_EQ(rec_second_run(b, rec_use), REC_N);
    close_fs(b);
}
END_TEST

/* Files used after the start but before the scan finished stay more recent
 * than everything the journal names. */
START_TEST(test_recency_use_before_scan)
{
    const unsigned want[REC_N] = {2, 7, 0, 3, 6, 1, 4, 5};
    char spec[256];
    tkey_t k = key_n("org/recency", 5);
    void *b;

    rec_first_run("", rec_use);
    rec_spec(spec, sizeof(spec), "");
    b = open_fs(spec);
    REQUIRE_EQ(lookup_r(b, &k), 0); /* 5, the least recent, is used first */
    kvcd_adapter_fs.background(b);
    REQUIRE_EQ(rec_second_run(b, want), REC_N);
    close_fs(b);
}
END_TEST

/* A damaged journal only loses the order: the scan still finds every file,
 * falls back to file times and removes the bad journal. */
START_TEST(test_recency_bad_journal)
{
    char spec[256], p[400];
    struct stat st;
    FILE *f;
    void *b;

    rec_first_run("", rec_use);
    data_path(p, sizeof(p), ".kvcd-recency");
    f = fopen(p, "r+");
    REQUIRE(f);
    REQUIRE(fseek(f, 20, SEEK_SET) == 0);
    REQUIRE(fputc(0x5a, f) != EOF);
    fclose(f);
    rec_spec(spec, sizeof(spec), "");
    b = open_fs(spec);
    kvcd_adapter_fs.background(b);
    REQUIRE_EQ(st_int(b, "scan.files"), REC_N);
    REQUIRE_EQ(st_int(b, "scan.recency_restored"), 0);
    {
        json_t *js = status(b);

        REQUIRE(!strcmp(json_string_value(json_object_get(json_object_get(js, "scan"),
                                                           "recency")), "invalid"));
        json_decref(js);
    }
    REQUIRE(stat(p, &st) != 0 && errno == ENOENT);
    for (unsigned i = 0; i < REC_N; i++) {
        tkey_t k = key_n("org/recency", i);

        load_ok(b, &k, REC_OBJ, i);
    }
    close_fs(b);
}
END_TEST

/* recency_file "" turns it off (nothing written); a bad name is a config
 * error naming the field. */
START_TEST(test_recency_off_and_bad_name)
{
    char spec[256], p[400], err[512];
    struct stat st;
    void *b;

    rec_first_run(", \"recency_file\": \"\"", rec_use);
    data_path(p, sizeof(p), ".kvcd-recency");
    REQUIRE(stat(p, &st) != 0 && errno == ENOENT);
    rec_spec(spec, sizeof(spec), ", \"recency_file\": \"order\"");
    b = open_fs(spec);
    kvcd_adapter_fs.background(b);
    REQUIRE_EQ(st_int(b, "scan.recency_restored"), 0);
    close_fs(b);
    data_path(p, sizeof(p), "order");
    REQUIRE(stat(p, &st) == 0);

    REQUIRE(try_init(&b, err, sizeof(err), "{\"type\":\"fs\",\"base_path\":\"%s\","
                                           "\"recency_file\":\"a/b\"}", base) != 0);
    REQUIRE(strstr(err, "recency_file") != NULL);
    REQUIRE(try_init(&b, err, sizeof(err), "{\"type\":\"fs\",\"base_path\":\"%s\","
                                           "\"recency_file\":\"x.data\"}", base) != 0);
    REQUIRE(try_init(&b, err, sizeof(err), "{\"type\":\"fs\",\"base_path\":\"%s\","
                                           "\"recency_file\":7}", base) != 0);
    REQUIRE(try_init(&b, err, sizeof(err), "{\"type\":\"fs\",\"base_path\":\"%s\","
                                           "\"recency_file\":\"t\",\"relative_tmp_dir\":\"t/x\"}",
                     base) != 0);
    REQUIRE(strstr(err, "recency_file") != NULL);
}
END_TEST

static Suite *fs_suite(void)
{
    Suite *s = suite_create("fs");
    TCase *tc = tcase_create("fs");

    tcase_add_unchecked_fixture(tc, master_setup, master_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_roundtrip_buffered);
    tcase_add_test(tc, test_roundtrip_odirect);
    tcase_add_test(tc, test_odirect_unaligned_buffer);
    tcase_add_test(tc, test_odirect_unsupported);
    tcase_add_test(tc, test_odirect_tail);
    tcase_add_test(tc, test_odirect_tail_faults);
    tcase_add_test(tc, test_short_io);
    tcase_add_test(tc, test_miss_and_remove);
    tcase_add_test(tc, test_load_buffer_too_small);
    tcase_add_test(tc, test_duplicate_store);
    tcase_add_test(tc, test_deadline);
    tcase_add_test(tc, test_bad_keys);
    tcase_add_test(tc, test_persistence);
    tcase_add_test(tc, test_shared_directory);
    tcase_add_test(tc, test_corrupt_flip);
    tcase_add_test(tc, test_corrupt_flip_trailer);
    tcase_add_test(tc, test_corrupt_truncate);
    tcase_add_test(tc, test_lmcache_raw_files);
    tcase_add_test(tc, test_corrupt_append);
    tcase_add_test(tc, test_corrupt_key_digest);
    tcase_add_test(tc, test_corrupt_foreign_file);
    tcase_add_test(tc, test_corrupt_tiny);
    tcase_add_test(tc, test_checksum_none);
    tcase_add_test(tc, test_orphan_sweep_periodic);
    tcase_add_test(tc, test_capacity_bound);
    tcase_add_test(tc, test_capacity_lru_order);
    tcase_add_test(tc, test_touch_reorders_lru);
    tcase_add_test(tc, test_capacity_after_restart);
    tcase_add_test(tc, test_capacity_shared_discovery);
    tcase_add_test(tc, test_free_floor);
    tcase_add_test(tc, test_fault_enospc);
    tcase_add_test(tc, test_fault_eio_write);
    tcase_add_test(tc, test_fault_eio_fsync);
    tcase_add_test(tc, test_fault_eio_rename);
    tcase_add_test(tc, test_fault_erofs_create);
    tcase_add_test(tc, test_fault_eacces_create);
    tcase_add_test(tc, test_fault_eio_read);
    tcase_add_test(tc, test_fault_undeletable_file);
    tcase_add_test(tc, test_lmcache_names);
    tcase_add_test(tc, test_hostile_names);
    tcase_add_test(tc, test_hostile_names_levels);
    tcase_add_test(tc, test_long_name_rule);
    tcase_add_test(tc, test_symlink_not_followed);
    tcase_add_test(tc, test_modes);
    tcase_add_test(tc, test_bad_specs);
    tcase_add_test(tc, test_status_fields);
    tcase_add_test(tc, test_concurrent);
    tcase_add_test(tc, test_item03_fifo_object_never_blocks);
    tcase_add_test(tc, test_item09_lookups_do_not_pin);
    tcase_add_test(tc, test_item16_full_disk_starts_and_evicts);
    tcase_add_test(tc, test_item16_full_disk_nothing_to_evict);
    tcase_add_test(tc, test_item16_failing_stores_are_unhealthy);
    tcase_add_test(tc, test_item17_tmp_sweep_spares_other_namespaces);
    tcase_add_test(tc, test_recency_survives_restart);
    tcase_add_test(tc, test_recency_follows_touch);
    tcase_add_test(tc, test_recency_use_before_scan);
    tcase_add_test(tc, test_recency_bad_journal);
    tcase_add_test(tc, test_recency_off_and_bad_name);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(fs_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
