/*
 * test_registry.c - the adapter registry, spec errors and plugins.
 *
 * Built-in types are present; the ABI checks (version, struct size, name,
 * methods) refuse bad adapters with a message that says why; run-time
 * registration works; instance errors name the --l2-adapter index, the type and
 * the field; plugins load from the build directory ($KVCD_BUILD, set by make
 * test), and bad plugins fail clearly. The last case copies the source tree,
 * adds one file adapters/zzdemo.c, builds kvcd there and finds the new type in
 * its --help: adding an adapter edits no existing file.
 */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/l2.h"
#include "tests/l2_support.h"
#include "tests/support.h"

/* ---- adapters defined by the test ---- */

static int t_init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *err,
                  size_t errlen)
{
    return 0;
}

static void t_miss(void *self, kvcd_l2_batch_t *b)
{
    size_t i;

    for (i = 0; i < b->n; i++)
        b->items[i].result = KVCD_ENOTFOUND;
}

static void t_background(void *self)
{
}

#define T_ADAPTER(nm, flags_)                                                                      \
    {                                                                                              \
        KVCD_ADAPTER_HEADER(nm, int, flags_), .doc = "test adapter", .init = t_init,               \
        .store = t_miss, .lookup = t_miss, .load = t_miss, .remove = t_miss,                       \
    }

static const kvcd_adapter_t t_good = T_ADAPTER("testgood", KVCD_ADAPTER_BLOCKING);
static const kvcd_adapter_t t_async = T_ADAPTER("testasync", 0);

static char err[1024];

static const char *plugin_path(const char *name);

#define HAS(s, sub) ck_assert_msg(strstr((s), (sub)) != NULL, "'%s' not in '%s'", (sub), (s))

/* Register a modified copy of t_good; returns the code, message in err. */
static int reg_variant(kvcd_adapter_t *a)
{
    err[0] = '\0';
    return kvcd_l2_register(a, err, sizeof(err));
}

/* ---- built-ins, help ---- */

START_TEST(builtins_present)
{
    char list[512];

    ck_assert_ptr_nonnull(kvcd_l2_find_type("mock"));
    ck_assert_ptr_nonnull(kvcd_l2_find_type("fault"));
    ck_assert_ptr_null(kvcd_l2_find_type("nope"));
    ck_assert(kvcd_l2_find_type("mock")->flags & KVCD_ADAPTER_BLOCKING);
    kvcd_l2_type_list(list, sizeof(list));
    HAS(list, "mock");
    HAS(list, "fault");
    HAS(list, ", ");
}
END_TEST

/* kvcd_l2_print_help(type) into out. */
static int help_of(const char *type, char *out, size_t outlen)
{
    char path[] = "/tmp/kvcd-help-XXXXXX";
    int fd = mkstemp(path), saved = dup(1), rc;
    ssize_t n;

    ck_assert_int_ge(fd, 0);
    fflush(stdout);
    dup2(fd, 1);
    rc = kvcd_l2_print_help(type);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    n = pread(fd, out, outlen - 1, 0);
    close(fd);
    unlink(path);
    out[n > 0 ? n : 0] = '\0';
    return rc;
}

START_TEST(print_help_lists_fields)
{
    char out[8192];

    ck_assert_int_eq(help_of("mock", out, sizeof(out)), 0);
    HAS(out, "mock - ");
    HAS(out, "latency_ms           integer  0            simulated latency added once to every "
             "call [0..3600000]");
    HAS(out, "runner fields (every blocking adapter):");
    HAS(out, "workers              integer  --max-workers");
    HAS(out, "max_queue            integer  256");
    HAS(out, "max_size_gb");
    HAS(out, "mock_bandwidth_gb");
    HAS(out, "latency_ms");
    HAS(out, "number");
    HAS(out, "FIFO");
    ck_assert_int_eq(kvcd_l2_print_help("nope"), -1);
}
END_TEST

/* --help-adapter prints each adapter's own table: every field, the runner's
 * fields exactly for the blocking ones. */
START_TEST(help_per_adapter)
{
    static const char *const types[] = {"mock", "fault", "fs", "redis", "example"};
    char out[16384];
    size_t i;

    ck_assert_msg(kvcd_l2_load_plugin(plugin_path("example"), err, sizeof(err)) == 0, "%s", err);
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        const kvcd_adapter_t *a = kvcd_l2_find_type(types[i]);
        const kvcd_adapter_field_t *f;
        char head[128];

        ck_assert_ptr_nonnull(a);
        ck_assert_int_eq(help_of(types[i], out, sizeof(out)), 0);
        snprintf(head, sizeof(head), "%s - %s\n", a->name, a->doc);
        ck_assert_msg(!strncmp(out, head, strlen(head)), "%s", out);
        ck_assert_ptr_nonnull(a->fields);
        for (f = a->fields; f->name; f++) {
            char line[128];

            snprintf(line, sizeof(line), "\n    %-20s ", f->name);
            ck_assert_msg(strstr(out, line), "%s: no line for %s in\n%s", types[i], f->name, out);
        }
        if (a->flags & KVCD_ADAPTER_BLOCKING)
            HAS(out, "\n    workers ");
        else
            ck_assert_msg(!strstr(out, "workers"), "%s", out);
    }
    ck_assert_int_eq(help_of("fs", out, sizeof(out)), 0);
    HAS(out, "checksum             enum     \"xxh3\"");
    HAS(out, "[\"xxh3\", \"none\"]");
    HAS(out, "lookup_pin_ms        integer  (none)       (deprecated) no effect");
    HAS(out, "base_path            string   (required)");
    HAS(out, "min_free_percent     number   5 if min_free_gb is unset");
    ck_assert_int_eq(help_of("redis", out, sizeof(out)), 0);
    HAS(out, "asynchronous, persistent adapter");
    HAS(out, "port                 integer  6379");
    kvcd_l2_registry_reset();
}
END_TEST

/* ---- registration checks ---- */

START_TEST(duplicate_name_rejected)
{
    kvcd_adapter_t a = *kvcd_l2_find_type("mock");

    ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
    HAS(err, "'mock'");
    HAS(err, "already registered");
    ck_assert_int_eq(kvcd_l2_register(&t_good, err, sizeof(err)), 0);
    ck_assert_int_eq(kvcd_l2_register(&t_good, err, sizeof(err)), KVCD_ECONFIG);
    HAS(err, "already registered");
}
END_TEST

START_TEST(wrong_abi_version_rejected)
{
    kvcd_adapter_t a = t_good;

    a.name = "testabi";
    a.abi_version = KVCD_ADAPTER_ABI_VERSION + 1;
    ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
    HAS(err, "ABI version 3 is not supported");
    HAS(err, "supports version 2");
    HAS(err, "newer than this kvcd");
    /* an adapter of the first ABI is told to rebuild */
    a.abi_version = 1;
    ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
    HAS(err, "ABI version 1 is not supported (this kvcd supports version 2");
    HAS(err, "rebuild against this kvcd's adapters/adapter.h");
    ck_assert_ptr_null(kvcd_l2_find_type("testabi"));
    ck_assert_int_eq(kvcd_l2_register(NULL, err, sizeof(err)), KVCD_ECONFIG);
    HAS(err, "NULL");
}
END_TEST

START_TEST(struct_size_checked)
{
    static struct {
        kvcd_adapter_t a;
        uint64_t future[4]; /* fields a newer ABI might add */
    } bigger;
    kvcd_adapter_t small = t_good, v1 = t_good;
    const kvcd_adapter_t *got;

    small.name = "testsmall";
    small.struct_size = 16;
    ck_assert_int_eq(reg_variant(&small), KVCD_ECONFIG);
    HAS(err, "struct_size 16 is too small");
    ck_assert_ptr_null(kvcd_l2_find_type("testsmall"));

    /* a struct of the first version (ending at close) is accepted, and the
     * fields it does not have read as NULL whatever lies beyond it */
    v1.name = "testv1";
    v1.background = t_background;
    v1.struct_size = (uint32_t)offsetof(kvcd_adapter_t, background);
    ck_assert_int_eq(reg_variant(&v1), 0);
    got = kvcd_l2_find_type("testv1");
    ck_assert_ptr_nonnull(got);
    ck_assert_ptr_null(got->background);
    ck_assert_ptr_eq(got->load, t_miss);

    /* a plugin built before `touch` was appended has none, whatever lies
     * beyond its struct */
    {
        static kvcd_adapter_t pre;

        pre = t_good;
        pre.name = "testpretouch";
        pre.touch = t_miss;
        pre.struct_size = (uint32_t)offsetof(kvcd_adapter_t, touch);
        ck_assert_int_eq(reg_variant(&pre), 0);
        got = kvcd_l2_find_type("testpretouch");
        ck_assert_ptr_nonnull(got);
        ck_assert_ptr_ne(got, &pre);
        ck_assert_ptr_null(got->touch);
        ck_assert_ptr_eq(got->load, t_miss);
    }

    bigger.a = t_good;
    bigger.a.name = "testbig";
    bigger.a.struct_size = sizeof(bigger);
    ck_assert_int_eq(reg_variant(&bigger.a), 0);
    ck_assert_ptr_eq(kvcd_l2_find_type("testbig"), &bigger.a);
}
END_TEST

START_TEST(missing_method_rejected)
{
    static const char *const names[] = {"init", "store", "lookup", "load", "remove"};
    int m;

    for (m = 0; m < 5; m++) {
        kvcd_adapter_t a = t_good;
        char want[64];

        a.name = "testmissing";
        switch (m) {
        case 0: a.init = NULL; break;
        case 1: a.store = NULL; break;
        case 2: a.lookup = NULL; break;
        case 3: a.load = NULL; break;
        default: a.remove = NULL; break;
        }
        ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
        snprintf(want, sizeof(want), "required method '%s' is NULL", names[m]);
        HAS(err, want);
        HAS(err, "'testmissing'");
    }
    ck_assert_ptr_null(kvcd_l2_find_type("testmissing"));
}
END_TEST

START_TEST(bad_names_rejected)
{
    kvcd_adapter_t a = t_good;

    a.name = "";
    ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
    HAS(err, "no name");
    a.name = NULL;
    ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
    HAS(err, "no name");
    a.name = "two words";
    ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
    HAS(err, "only letters");
    a.name = "x1234567890123456789012345678901234567890123456789012345678901234567890";
    ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
    HAS(err, "longer than");
}
END_TEST

START_TEST(background_needs_blocking)
{
    kvcd_adapter_t a = t_async;

    a.name = "testasyncbg";
    a.background = t_background;
    ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
    HAS(err, "only allowed for blocking adapters");
}
END_TEST

/* ---- run-time registration and instance errors ---- */

static int inflight_zero(void *arg)
{
    return kvcd_l2_inflight(arg) == 0;
}

/* Create instance #index from json on a private loop, then close it again.
 * Returns kvcd_l2_create's code; the message is in err. */
static int try_create(const char *json, int index)
{
    kvcd_adapter_env_t env = {.arena_align = 4096, .max_workers = 2};
    json_error_t jerr;
    json_t *spec = json_loads(json, JSON_DECODE_ANY, &jerr);
    kvcd_l2_t *l2 = NULL;
    uv_loop_t loop;
    int rc;

    ck_assert_msg(spec, "bad JSON in test: %s", jerr.text);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    err[0] = '\0';
    rc = kvcd_l2_create(&loop, spec, index, &env, 1000, &l2, err, sizeof(err));
    json_decref(spec);
    if (rc == 0) {
        ck_assert_ptr_nonnull(l2);
        ck_assert_int_eq(kvcd_test_run_pred(&loop, inflight_zero, l2, KVCD_TEST_WALL_MS), 0);
        kvcd_l2_destroy(l2);
    } else {
        ck_assert_ptr_null(l2);
    }
    ck_assert_int_eq(kvcd_test_drain(&loop, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    return rc;
}

START_TEST(runtime_registration_works)
{
    kvcd_adapter_env_t env = {.arena_align = 4096, .max_workers = 2};
    json_t *spec = json_pack("{s:s}", "type", "testgood");
    kvcd_test_key_t k;
    kvcd_l2_item_t it = {0};
    kvcd_l2_t *l2;
    uv_loop_t loop;
    char list[512];

    ck_assert_int_eq(kvcd_l2_register(&t_good, err, sizeof(err)), 0);
    ck_assert_ptr_eq(kvcd_l2_find_type("testgood"), &t_good);
    kvcd_l2_type_list(list, sizeof(list));
    HAS(list, "testgood");

    ck_assert_int_eq(uv_loop_init(&loop), 0);
    ck_assert_int_eq(kvcd_l2_create(&loop, spec, 4, &env, 1000, &l2, err, sizeof(err)), 0);
    json_decref(spec);
    ck_assert_str_eq(kvcd_l2_name(l2), "#4 (testgood)");
    ck_assert_ptr_eq(kvcd_l2_adapter(l2), &t_good);
    kvcd_test_key(&k, 1);
    it.key = k.k;
    ck_assert_int_eq(kvcd_test_call(&loop, l2, KVCD_L2_LOOKUP, &it, 1, 0), 0);
    ck_assert_int_eq(it.result, KVCD_ENOTFOUND);
    kvcd_l2_destroy(l2);
    ck_assert_int_eq(kvcd_test_drain(&loop, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

START_TEST(unknown_type_lists_known)
{
    ck_assert_int_eq(try_create("{\"type\":\"nope\"}", 3), KVCD_ECONFIG);
    ck_assert_msg(strncmp(err, "--l2-adapter #3: unknown type 'nope' (known: ", 45) == 0, "%s",
                  err);
    HAS(err, "mock");
    HAS(err, "fault");
    ck_assert_int_eq(try_create("{\"type\":3}", 1), KVCD_ECONFIG);
    ck_assert_str_eq(err, "--l2-adapter #1: type: expected a string");
    ck_assert_int_eq(try_create("[1]", 2), KVCD_ECONFIG);
    ck_assert_str_eq(err, "--l2-adapter #2: expected a JSON object");
}
END_TEST

START_TEST(bad_spec_names_index_type_field)
{
    ck_assert_int_eq(try_create("{\"type\":\"mock\",\"max_size_gb\":\"x\"}", 2), KVCD_ECONFIG);
    HAS(err, "--l2-adapter #2 (mock): max_size_gb");
    ck_assert_int_eq(try_create("{\"type\":\"mock\",\"max_size_gb\":0}", 1), KVCD_ECONFIG);
    HAS(err, "--l2-adapter #1 (mock): max_size_gb: must be > 0");
    ck_assert_int_eq(try_create("{\"type\":\"mock\",\"mock_bandwidth_gb\":-1}", 1), KVCD_ECONFIG);
    HAS(err, "mock_bandwidth_gb: must be >= 0");
    ck_assert_int_eq(try_create("{\"type\":\"mock\",\"latency_ms\":1.5}", 1), KVCD_ECONFIG);
    HAS(err, "latency_ms: expected an integer");
    ck_assert_int_eq(
        try_create("{\"type\":\"mock\",\"max_size_gb\":0.5,\"mock_bandwidth_gb\":2,"
                   "\"latency_ms\":0}", 1), 0);
}
END_TEST

START_TEST(unknown_field_rejected)
{
    ck_assert_int_eq(try_create("{\"type\":\"mock\",\"max_size_GB\":1}", 5), KVCD_ECONFIG);
    HAS(err, "--l2-adapter #5 (mock): max_size_GB: unknown field");
    ck_assert_int_eq(try_create("{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"x\":1}", 1),
                     KVCD_ECONFIG);
    HAS(err, "--l2-adapter #1 (fault): x: unknown field");
}
END_TEST

START_TEST(fault_spec_errors)
{
    static const struct {
        const char *json, *want;
    } cases[] = {
        {"{\"type\":\"fault\"}", "--l2-adapter #1 (fault): inner: required"},
        {"{\"type\":\"fault\",\"inner\":3}", "inner: expected an object"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"nope\"}}", "inner: unknown type 'nope' (known: "},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\",\"max_size_gb\":\"x\"}}",
         "--l2-adapter #1 (fault): inner (mock): max_size_gb"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"testasync\"}}",
         "inner: adapter 'testasync' is not blocking"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail\":{\"store\":2}}",
         "fail.store: must be >= 0 and <= 1 (got 2)"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail\":{\"write\":0.5}}",
         "fail.write: unknown field (fail knows: store, lookup, load, remove)"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail\":[]}", "fail: expected an object"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail_calls\":{\"load\":[-1]}}",
         "fail_calls.load[0]: expected a non-negative integer"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail_calls\":{\"load\":1}}",
         "fail_calls.load: expected an array"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"delay_ms\":{\"load\":\"x\"}}",
         "delay_ms.load: expected an integer"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"corrupt\":{\"store\":1}}",
         "corrupt.store: unknown field (corrupt knows: load)"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"error\":\"EBOGUS\"}",
         "error: unknown error name 'EBOGUS'"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"seed\":\"x\"}",
         "seed: expected an integer"},
    };
    size_t i;

    ck_assert_int_eq(kvcd_l2_register(&t_async, err, sizeof(err)), 0);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ck_assert_msg(try_create(cases[i].json, 1) != 0, "accepted: %s", cases[i].json);
        ck_assert_msg(strstr(err, cases[i].want), "%s\n  gave: %s\n  want: %s", cases[i].json,
                      err, cases[i].want);
    }
    ck_assert_int_eq(try_create("{\"type\":\"fault\",\"inner\":{\"type\":\"fault\",\"inner\":"
                                "{\"type\":\"mock\"}},\"fail\":{\"load\":0.5},\"fail_calls\":"
                                "{\"store\":[0,2]},\"delay_ms\":{\"lookup\":1},\"corrupt\":"
                                "{\"load\":0.1},\"error\":\"ENOSPC\",\"seed\":7}", 1), 0);
}
END_TEST


/* ---- ABI v2: layout, flags, field tables, the parser, services ---- */

START_TEST(layout_checked)
{
    static const struct {
        size_t off;
        int delta;
        const char *want; /* NULL: accepted */
    } cases[] = {
        {offsetof(kvcd_abi_layout_t, item), 8, "different kvcd_l2_item_t"},
        {offsetof(kvcd_abi_layout_t, item), -8, "different kvcd_l2_item_t"},
        {offsetof(kvcd_abi_layout_t, batch), 8, "different kvcd_l2_batch_t"},
        {offsetof(kvcd_abi_layout_t, key), -4, "different kvcd_key_t"},
        {offsetof(kvcd_abi_layout_t, field), 8, "different kvcd_adapter_field_t"},
        {offsetof(kvcd_abi_layout_t, env), 8, "older than kvcd, not newer"},
        {offsetof(kvcd_abi_layout_t, services), 16, "older than kvcd, not newer"},
        /* an older, shorter env or services table: a prefix of ours */
        {offsetof(kvcd_abi_layout_t, env), -8, NULL},
        {offsetof(kvcd_abi_layout_t, services), -16, NULL},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        static char names[16][32]; /* registered adapters must stay */
        static kvcd_adapter_t as[16];
        kvcd_adapter_t *ap = &as[i];
        char *name = names[i];
        uint32_t v;

        *ap = t_good;

        snprintf(name, sizeof(names[i]), "testlayout%zu", i);
        ap->name = name;
        memcpy(&v, (char *)&ap->layout + cases[i].off, sizeof(v));
        v = (uint32_t)((int)v + cases[i].delta);
        memcpy((char *)&ap->layout + cases[i].off, &v, sizeof(v));
        if (!cases[i].want) {
            ck_assert_msg(reg_variant(ap) == 0, "case %zu: %s", i, err);
            continue;
        }
        ck_assert_int_eq(reg_variant(ap), KVCD_ECONFIG);
        HAS(err, cases[i].want);
        HAS(err, "rebuild it against this kvcd's adapters/adapter.h");
        ck_assert_ptr_null(kvcd_l2_find_type(name));
    }
}
END_TEST

START_TEST(unknown_flags_rejected)
{
    kvcd_adapter_t a = t_good;

    a.name = "testflags";
    a.flags |= 0x80;
    ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
    HAS(err, "'testflags': unknown flag bits 0x80");
    a = t_async;
    a.name = "testconc";
    a.max_concurrency = 2;
    ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
    HAS(err, "max_concurrency is only for blocking adapters");
}
END_TEST

/* An instance with one field of every type. */
typedef struct {
    const char *s;
    int64_t i;
    int32_t i32;
    double d;
    bool b;
    uint32_t mode;
    int e;
    int code;
    const json_t *obj, *arr;
    const char *req;
} every_t;

static const char *const colours[] = {"red", "green", NULL};

#define EF(nm, ty, m) KVCD_FIELD(nm, ty, every_t, m)
static const kvcd_adapter_field_t every_fields[] = {
    {EF("s", KVCD_FIELD_STRING, s), .flags = KVCD_FIELD_NONEMPTY, .max = 5, .dflt = "\"dflt\"",
     .doc = "a string"},
    {EF("i", KVCD_FIELD_INT, i), .min = -3, .max = 3, .dflt = "2", .doc = "an integer"},
    {EF("i32", KVCD_FIELD_INT32, i32), .min = 0, .dflt = "7", .doc = "an int32"},
    {EF("d", KVCD_FIELD_NUMBER, d), .flags = KVCD_FIELD_ABOVE_MIN, .min = 0, .max = 10,
     .dflt = "0.5", .doc = "a number"},
    {EF("b", KVCD_FIELD_BOOL, b), .dflt = "true", .doc = "a boolean"},
    {EF("mode", KVCD_FIELD_MODE, mode), .min = 0600, .dflt = "\"0640\"", .doc = "a mode"},
    {EF("e", KVCD_FIELD_ENUM, e), .choices = colours, .dflt = "\"green\"", .doc = "an enum"},
    {EF("code", KVCD_FIELD_ERRNAME, code), .dflt = "\"EIO\"", .doc = "an error name"},
    {EF("obj", KVCD_FIELD_OBJECT, obj), .doc = "an object"},
    {EF("arr", KVCD_FIELD_ARRAY, arr), .flags = KVCD_FIELD_NONEMPTY, .doc = "an array"},
    {EF("req", KVCD_FIELD_STRING, req), .flags = KVCD_FIELD_REQUIRED, .doc = "must be given"},
    {.name = "old", .type = KVCD_FIELD_INT, .flags = KVCD_FIELD_DEPRECATED, .doc = "gone"},
    {.name = NULL},
};

static every_t every_seen; /* what init saw */

static int every_init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *e,
                      size_t elen)
{
    every_seen = *(every_t *)self;
    every_seen.s = NULL; /* borrowed: only valid during init */
    every_seen.obj = every_seen.arr = NULL;
    every_seen.req = NULL;
    ck_assert_ptr_nonnull(env->svc);
    ck_assert_uint_eq(env->struct_size, sizeof(kvcd_adapter_env_t));
    ck_assert_uint_eq(env->svc->struct_size, sizeof(kvcd_core_services_t));
    if (!strcmp(((every_t *)self)->req, "bad"))
        return env->svc->errf(e, elen, KVCD_ECONFIG, "req: %s across fields", "checked");
    return 0;
}

static const kvcd_adapter_t t_every = {
    KVCD_ADAPTER_HEADER("testevery", every_t, KVCD_ADAPTER_BLOCKING),
    .max_concurrency = 2,
    .doc = "every field type",
    .fields = every_fields,
    .init = every_init,
    .store = t_miss,
    .lookup = t_miss,
    .load = t_miss,
    .remove = t_miss,
};

START_TEST(field_table_checked)
{
    static const struct {
        kvcd_adapter_field_t f;
        const char *want;
    } cases[] = {
        {{EF("x", KVCD_FIELD_INT, i), .min = 0, .max = 3, .dflt = "9"},
         "default of field 'x' (9) is invalid: x: must be in 0..3"},
        {{EF("x", KVCD_FIELD_INT, i), .dflt = "{oops"}, "default of field 'x' ({oops) is invalid JSON"},
        {{.name = "x", .type = KVCD_FIELD_INT, .offset = sizeof(every_t) - 4},
         "field 'x' at offset"},
        {{EF("x", 99, i)}, "field 'x' has unknown type 99"},
        {{EF("x", KVCD_FIELD_INT, i), .flags = 0x100}, "field 'x' has unknown flag bits 0x100"},
        {{EF("workers", KVCD_FIELD_INT, i)}, "field name 'workers' is empty, reserved or repeated"},
        {{EF("type", KVCD_FIELD_STRING, s)}, "field name 'type' is empty, reserved or repeated"},
        {{EF("s", KVCD_FIELD_STRING, s)}, "field name 's' is empty, reserved or repeated"},
        {{EF("x", KVCD_FIELD_ENUM, e)}, "enum field 'x' has no choices"},
        {{EF("x", KVCD_FIELD_INT, i), .flags = KVCD_FIELD_REQUIRED, .dflt = "1"},
         "field 'x' is required and has a default"},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kvcd_adapter_field_t t[3] = {{EF("s", KVCD_FIELD_STRING, s)}, cases[i].f, {.name = NULL}};
        kvcd_adapter_t a = t_every;

        a.name = "testfields";
        a.fields = t;
        ck_assert_int_eq(reg_variant(&a), KVCD_ECONFIG);
        ck_assert_msg(strstr(err, cases[i].want), "case %zu: '%s' lacks '%s'", i, err,
                      cases[i].want);
        HAS(err, "adapter 'testfields'");
    }
    ck_assert_ptr_null(kvcd_l2_find_type("testfields"));
}
END_TEST

START_TEST(parser_applies_every_type)
{
    static const struct {
        const char *json, *want;
    } bad_cases[] = {
        {"{\"type\":\"testevery\"}", "req: required (must be given)"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"zz\":1}",
         "zz: unknown field (testevery knows: type, workers, max_queue, s, i, i32, d, b, mode, e, "
         "code, obj, arr, req, old)"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"s\":\"\"}", "s: must not be empty"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"s\":\"toolong\"}", "s: longer than 5 bytes"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"s\":1}", "s: expected a string"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"i\":4}", "i: must be in -3..3 (got 4)"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"i\":1.0}", "i: expected an integer"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"i32\":-1}", "i32: must be >= 0 (got -1)"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"d\":0}", "d: must be > 0 and <= 10 (got 0)"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"d\":\"1\"}", "d: expected a number"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"b\":1}", "b: expected true or false"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"mode\":\"0400\"}", "mode: must be an octal string"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"mode\":\"rw\"}", "mode: must be an octal string"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"e\":\"blue\"}", "e: must be \"red\" or \"green\""},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"code\":\"EBOGUS\"}",
         "code: unknown error name 'EBOGUS'"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"code\":5}", "code: expected an error name"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"obj\":[]}", "obj: expected an object"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"arr\":[]}", "arr: expected a non-empty array"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"old\":\"x\"}", "old: expected an integer"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"workers\":0}", "workers: must be in 1..256 (got 0)"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"max_queue\":true}", "max_queue: expected an integer"},
        {"{\"type\":\"testevery\",\"req\":\"r\",\"workers\":3}",
         "workers: at most 2 (the adapter takes at most 2 calls at once)"},
        {"{\"type\":\"testevery\",\"req\":\"bad\"}", "--l2-adapter #3 (testevery): req: checked across fields"},
    };
    size_t i;

    ck_assert_int_eq(kvcd_l2_register(&t_every, err, sizeof(err)), 0);
    for (i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        ck_assert_msg(try_create(bad_cases[i].json, 3) == KVCD_ECONFIG, "accepted: %s",
                      bad_cases[i].json);
        ck_assert_msg(strstr(err, bad_cases[i].want), "%s\n  gave: %s\n  want: %s",
                      bad_cases[i].json, err, bad_cases[i].want);
        ck_assert_msg(!strncmp(err, "--l2-adapter #3 (testevery): ", 29), "%s", err);
    }

    /* defaults */
    memset(&every_seen, 0xff, sizeof(every_seen));
    ck_assert_msg(try_create("{\"type\":\"testevery\",\"req\":\"r\"}", 1) == 0, "%s", err);
    ck_assert_int_eq(every_seen.i, 2);
    ck_assert_int_eq(every_seen.i32, 7);
    ck_assert(every_seen.d == 0.5);
    ck_assert(every_seen.b);
    ck_assert_uint_eq(every_seen.mode, 0640);
    ck_assert_int_eq(every_seen.e, 1);
    ck_assert_int_eq(every_seen.code, -EIO);

    /* given values (and a deprecated field accepted, not stored) */
    ck_assert_msg(try_create("{\"type\":\"testevery\",\"req\":\"r\",\"s\":\"abc\",\"i\":-3,"
                             "\"i32\":2147483647,\"d\":10,\"b\":false,\"mode\":416,\"e\":\"red\","
                             "\"code\":\"ENOSPACE\",\"obj\":{},\"arr\":[1],\"old\":5,"
                             "\"workers\":2,\"max_queue\":9}", 1) == 0, "%s", err);
    ck_assert_int_eq(every_seen.i, -3);
    ck_assert_int_eq(every_seen.i32, 2147483647);
    ck_assert(every_seen.d == 10);
    ck_assert(!every_seen.b);
    ck_assert_uint_eq(every_seen.mode, 0640);
    ck_assert_int_eq(every_seen.e, 0);
    ck_assert_int_eq(every_seen.code, KVCD_ENOSPACE);
}
END_TEST

START_TEST(runner_fields_size_the_executor)
{
    kvcd_adapter_env_t env = {.arena_align = 4096, .max_workers = 8};
    json_t *spec, *st, *ex;
    kvcd_l2_t *l2;
    uv_loop_t loop;

    /* async adapters have no executor: the runner's fields are unknown there */
    ck_assert_int_eq(kvcd_l2_register(&t_async, err, sizeof(err)), 0);
    ck_assert_int_eq(try_create("{\"type\":\"testasync\",\"workers\":2}", 1), KVCD_ECONFIG);
    HAS(err, "workers: unknown field (testasync knows: type)");

    /* the adapter's max_concurrency caps the daemon's default of 8 */
    ck_assert_int_eq(kvcd_l2_register(&t_every, err, sizeof(err)), 0);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    spec = json_pack("{s:s, s:s, s:i}", "type", "testevery", "req", "r", "max_queue", 9);
    ck_assert_msg(kvcd_l2_create(&loop, spec, 1, &env, 1000, &l2, err, sizeof(err)) == 0, "%s",
                  err);
    json_decref(spec);
    st = kvcd_l2_status(l2);
    ex = json_object_get(st, "executor");
    ck_assert_int_eq(json_integer_value(json_object_get(ex, "threads")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(ex, "max_queue")), 9);
    json_decref(st);
    kvcd_l2_destroy(l2);
    ck_assert_int_eq(kvcd_test_drain(&loop, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* An async adapter that completes every batch from a core timer, through the
 * services table only. */
typedef struct {
    const kvcd_core_services_t *svc;
    kvcd_atimer_t *timer;
    kvcd_l2_batch_t *pending;
    int fired;
} svc_t;

static void svc_fire(void *data)
{
    svc_t *x = data;
    kvcd_l2_batch_t *b = x->pending;
    size_t i;

    x->fired++;
    x->pending = NULL;
    for (i = 0; i < b->n; i++)
        b->items[i].result = KVCD_ENOTFOUND;
    x->svc->batch_done(b);
}

static int svc_init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *e,
                    size_t elen)
{
    svc_t *x = self;

    x->svc = env->svc;
    x->timer = env->svc->timer_new(env, svc_fire, x);
    return x->timer ? 0 : -ENOMEM;
}

static void svc_op(void *self, kvcd_l2_batch_t *b)
{
    svc_t *x = self;

    ck_assert_ptr_null(x->pending);
    ck_assert_uint_le(x->svc->now_ms(), b->deadline_ms);
    x->pending = b;
    x->svc->timer_start(x->timer, 1);
}

static void svc_status(void *self, json_t *out)
{
    json_object_set_new(out, "fired", json_integer(((svc_t *)self)->fired));
}

static void svc_close(void *self)
{
    svc_t *x = self;

    x->svc->timer_free(x->timer);
}

static const kvcd_adapter_t t_svc = {
    KVCD_ADAPTER_HEADER("testsvc", svc_t, 0), .doc = "completes through the services",
    .init = svc_init, .store = svc_op, .lookup = svc_op, .load = svc_op, .remove = svc_op,
    .status = svc_status, .close = svc_close,
};

START_TEST(async_adapter_completes_through_services)
{
    kvcd_adapter_env_t env = {.arena_align = 4096, .max_workers = 2};
    json_t *spec = json_pack("{s:s}", "type", "testsvc"), *st;
    kvcd_test_key_t k;
    kvcd_l2_item_t it[2];
    kvcd_l2_t *l2;
    uv_loop_t loop;

    ck_assert_int_eq(kvcd_l2_register(&t_svc, err, sizeof(err)), 0);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    ck_assert_msg(kvcd_l2_create(&loop, spec, 1, &env, 1000, &l2, err, sizeof(err)) == 0, "%s",
                  err);
    json_decref(spec);
    memset(it, 0, sizeof(it));
    kvcd_test_key(&k, 1);
    it[0].key = it[1].key = k.k;
    ck_assert_int_eq(kvcd_test_call(&loop, l2, KVCD_L2_LOOKUP, it, 2, 0), 0);
    ck_assert_int_eq(it[0].result, KVCD_ENOTFOUND);
    ck_assert_int_eq(it[1].result, KVCD_ENOTFOUND);
    ck_assert_int_eq(kvcd_test_call(&loop, l2, KVCD_L2_LOOKUP, it, 1, 0), 0);
    st = kvcd_l2_status(l2);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "fired")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "failures")), 0);
    json_decref(st);
    kvcd_l2_destroy(l2);
    ck_assert_int_eq(kvcd_test_drain(&loop, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* Every built-in adapter's spec goes through the one parser: its errors read
 * alike, and name the adapter's known fields. */
START_TEST(builtin_spec_errors)
{
    static const struct {
        const char *json, *want;
    } cases[] = {
        {"{\"type\":\"mock\",\"size\":1}",
         "(mock): size: unknown field (mock knows: type, workers, max_queue, max_size_gb, "
         "mock_bandwidth_gb, latency_ms)"},
        {"{\"type\":\"mock\",\"workers\":300}", "(mock): workers: must be in 1..256 (got 300)"},
        {"{\"type\":\"mock\",\"max_queue\":0}", "(mock): max_queue: must be in 1..1000000"},
        {"{\"type\":\"mock\",\"latency_ms\":3600001}", "latency_ms: must be in 0..3600000"},
        {"{\"type\":\"fs\"}", "(fs): base_path: required"},
        {"{\"type\":\"fs\",\"base_path\":\"\"}", "(fs): base_path: must not be empty"},
        {"{\"type\":\"fs\",\"base_path\":\"/x\",\"checksum\":\"crc\"}",
         "(fs): checksum: must be \"xxh3\" or \"none\""},
        {"{\"type\":\"fs\",\"base_path\":\"/x\",\"dir_levels\":3}", "(fs): dir_levels: must be in 0..2"},
        {"{\"type\":\"fs\",\"base_path\":\"/x\",\"file_mode\":\"0400\"}",
         "(fs): file_mode: must be an octal string such as \"0600\""},
        {"{\"type\":\"fs\",\"base_path\":\"/x\",\"lookup_pin_ms\":-1}",
         "(fs): lookup_pin_ms: must be >= 0"},
        {"{\"type\":\"fs\",\"base_path\":\"/x\",\"bogus\":1}",
         "(fs): bogus: unknown field (fs knows: type, workers, max_queue, base_path, "
         "relative_tmp_dir, read_ahead_size, use_odirect, max_capacity_gb, min_free_gb, "
         "min_free_percent, checksum, format, read_raw, fsync, file_mode, dir_mode, dir_levels, "
         "skip_existing, lookup_pin_ms, orphan_tmp_age_s, health_window_ms, recency_file)"},
        {"{\"type\":\"redis\",\"workers\":2}", "(redis): workers: unknown field (redis knows: type, host,"},
        {"{\"type\":\"redis\",\"port\":70000}", "(redis): port: must be in 1..65535 (got 70000)"},
        {"{\"type\":\"redis\",\"cluster\":1}", "(redis): cluster: expected true or false"},
        {"{\"type\":\"redis\",\"unix\":\"/a\",\"port\":1}",
         "(redis): port: give either unix or host/port, not both"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\",\"workers\":2}}",
         "(fault): inner (mock): workers: unknown field (mock knows: type, max_size_gb,"},
        {"{\"type\":\"redis\",\"nodes\":[{\"host\":\"a\",\"port\":0}]}",
         "(redis): nodes[0].port: must be in 1..65535 (got 0)"},
        {"{\"type\":\"redis\",\"nodes\":[{\"host\":\"a\"},{\"host\":\"b\",\"nme\":\"x\"}]}",
         "(redis): nodes[1].nme: unknown field (a nodes[] entry knows: host, port, unix, name)"},
        {"{\"type\":\"redis\",\"nodes\":[{\"host\":\"\"}]}", "(redis): nodes[0].host: must not be empty"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"delay_ms\":{\"store\":-1}}",
         "(fault): delay_ms.store: must be in 0..3600000 (got -1)"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"corrupt\":{\"load\":\"x\"}}",
         "(fault): corrupt.load: expected a number"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"error\":5}",
         "(fault): error: expected an error name such as \"EIO\""},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ck_assert_msg(try_create(cases[i].json, 1) == KVCD_ECONFIG, "accepted: %s",
                      cases[i].json);
        ck_assert_msg(strstr(err, cases[i].want), "%s\n  gave: %s\n  want: %s", cases[i].json,
                      err, cases[i].want);
    }
}
END_TEST

/* ---- plugins ---- */

static const char *plugin_path(const char *name)
{
    static char path[1024];
    const char *b = getenv("KVCD_BUILD");

    snprintf(path, sizeof(path), "%s/tests/plugins/%s.so", b && *b ? b : "build", name);
    return path;
}

START_TEST(plugin_example_loads_and_runs)
{
    kvcd_adapter_env_t env = {.arena_align = 4096, .max_workers = 2};
    const char *path = plugin_path("example");
    json_t *spec, *st;
    kvcd_test_key_t k;
    kvcd_l2_item_t it = {0};
    kvcd_l2_t *l2;
    uv_loop_t loop;
    char list[512];
    void *data = kvcd_test_buf(8192), *back = kvcd_test_buf(8192);

    ck_assert_msg(kvcd_l2_load_plugin(path, err, sizeof(err)) == 0, "%s", err);
    ck_assert_ptr_nonnull(kvcd_l2_find_type("example"));
    kvcd_l2_type_list(list, sizeof(list));
    HAS(list, "example");
    HAS(list, "mock");

    /* a bad spec for the plugin's type is reported like any other */
    ck_assert_int_eq(try_create("{\"type\":\"example\",\"max_objects\":\"x\"}", 2), KVCD_ECONFIG);
    HAS(err, "--l2-adapter #2 (example): max_objects: expected an integer");
    ck_assert_int_eq(try_create("{\"type\":\"example\",\"max_objects\":0}", 2), KVCD_ECONFIG);
    HAS(err, "--l2-adapter #2 (example): max_objects: must be in 1..1073741824 (got 0)");
    ck_assert_int_eq(try_create("{\"type\":\"example\",\"max_object\":3}", 2), KVCD_ECONFIG);
    HAS(err, "max_object: unknown field (example knows: type, workers, max_queue, max_objects)");

    spec = json_pack("{s:s, s:i}", "type", "example", "max_objects", 4);
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    ck_assert_msg(kvcd_l2_create(&loop, spec, 1, &env, 1000, &l2, err, sizeof(err)) == 0, "%s",
                  err);
    json_decref(spec);
    kvcd_test_key(&k, 9);
    kvcd_fill_random(data, 8192, 9);
    it.key = k.k;
    it.buf = data;
    it.len = 8192;
    ck_assert_int_eq(kvcd_test_call(&loop, l2, KVCD_L2_STORE, &it, 1, 0), 0);
    ck_assert_int_eq(it.result, 0);
    it.buf = back;
    ck_assert_int_eq(kvcd_test_call(&loop, l2, KVCD_L2_LOAD, &it, 1, 0), 0);
    ck_assert_int_eq(it.result, 0);
    ck_assert_uint_eq(it.size, 8192);
    ck_assert_int_eq(memcmp(data, back, 8192), 0);
    st = kvcd_l2_status(l2);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "objects")), 1);
    ck_assert(json_is_true(json_object_get(st, "healthy")));
    json_decref(st);
    kvcd_l2_destroy(l2);
    ck_assert_int_eq(kvcd_test_drain(&loop, KVCD_TEST_WALL_MS), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    free(data);
    free(back);

    /* the same plugin twice: its name is taken */
    ck_assert_int_eq(kvcd_l2_load_plugin(path, err, sizeof(err)), KVCD_ECONFIG);
    HAS(err, path);
    HAS(err, "already registered");

    /* reset forgets plugins, keeps built-ins; the plugin loads again */
    kvcd_l2_registry_reset();
    ck_assert_ptr_null(kvcd_l2_find_type("example"));
    ck_assert_ptr_nonnull(kvcd_l2_find_type("mock"));
    ck_assert_msg(kvcd_l2_load_plugin(path, err, sizeof(err)) == 0, "%s", err);
    kvcd_l2_registry_reset();
}
END_TEST

START_TEST(plugin_bad_abi_rejected)
{
    const char *path = plugin_path("bad_abi");

    ck_assert_int_eq(kvcd_l2_load_plugin(path, err, sizeof(err)), KVCD_ECONFIG);
    HAS(err, path);
    HAS(err, "ABI version 42 is not supported (this kvcd supports version 2");
    ck_assert_ptr_null(kvcd_l2_find_type("bad_abi"));
}
END_TEST

/* Plugins built against another ABI: refused at load, with the reason. */
START_TEST(plugin_other_abi_rejected)
{
    static const struct {
        const char *name, *want;
    } cases[] = {
        {"abi_v1", "ABI version 1 is not supported (this kvcd supports version 2; version 2 "
                   "moved completion into the services table"},
        {"bad_layout", "adapter 'bad_layout' was built with a different kvcd_l2_item_t"},
        {"new_services", "adapter 'new_services' was built with a different kvcd_core_services_t"},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *path = plugin_path(cases[i].name);

        ck_assert_int_eq(kvcd_l2_load_plugin(path, err, sizeof(err)), KVCD_ECONFIG);
        HAS(err, path);
        HAS(err, cases[i].want);
        HAS(err, "rebuild");
        ck_assert_ptr_null(kvcd_l2_find_type(cases[i].name));
    }
    HAS(err, "a plugin may be older than kvcd, not newer");
}
END_TEST

START_TEST(plugin_without_entry_rejected)
{
    const char *path = plugin_path("no_entry");

    ck_assert_int_eq(kvcd_l2_load_plugin(path, err, sizeof(err)), KVCD_ECONFIG);
    HAS(err, path);
    HAS(err, "no symbol 'kvcd_adapter_entry'");
}
END_TEST

START_TEST(plugin_missing_file_rejected)
{
    ck_assert_int_eq(kvcd_l2_load_plugin("/nonexistent/dir/adapter.so", err, sizeof(err)),
                     KVCD_ECONFIG);
    HAS(err, "plugin '/nonexistent/dir/adapter.so': cannot load: ");
    HAS(err, "No such file");
    ck_assert_int_eq(kvcd_l2_load_plugin("not-here.so", err, sizeof(err)), KVCD_ECONFIG);
    HAS(err, "plugin 'not-here.so': cannot load: ");
}
END_TEST

/* ---- adding an adapter is adding one file ---- */

static const char zzdemo_c[] =
    "/* zzdemo.c - written by test_registry: a new adapter is one new file. */\n"
    "#include \"adapters/adapter.h\"\n"
    "typedef struct { int unused; } zz_t;\n"
    "static const kvcd_adapter_field_t fields[] = {\n"
    "    {KVCD_FIELD(\"zz_knob\", KVCD_FIELD_INT32, zz_t, unused), .dflt = \"7\",\n"
    "     .doc = \"a field only zzdemo has\"},\n"
    "    {.name = NULL},\n"
    "};\n"
    "static int init(void *self, const json_t *spec, const kvcd_adapter_env_t *env,\n"
    "                char *err, size_t errlen)\n"
    "{\n"
    "    return 0;\n"
    "}\n"
    "static void miss(void *self, kvcd_l2_batch_t *b)\n"
    "{\n"
    "    size_t i;\n"
    "    for (i = 0; i < b->n; i++)\n"
    "        b->items[i].result = KVCD_ENOTFOUND;\n"
    "}\n"
    "const kvcd_adapter_t kvcd_adapter_zzdemo = {\n"
    "    KVCD_ADAPTER_HEADER(\"zzdemo\", zz_t, KVCD_ADAPTER_BLOCKING),\n"
    "    .doc = \"demo adapter added as a single file\",\n"
    "    .fields = fields,\n"
    "    .init = init, .store = miss, .lookup = miss, .load = miss, .remove = miss,\n"
    "};\n";

START_TEST(new_adapter_is_one_file)
{
    static const char *const parts[] = {"adapters", "protocol", "daemon", "conf", "scripts",
                                        "Makefile"};
    const char *src = kvcd_test_srcdir();
    char dir[] = "/tmp/kvcd-onefile-XXXXXX", path[1200], bin[1200], out[65536];
    const char *argv[16];
    size_t i, n = 0;
    FILE *f;
    int rc;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    argv[n++] = "cp";
    argv[n++] = "-r";
    for (i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        static char paths[6][1100];

        snprintf(paths[i], sizeof(paths[i]), "%s/%s", src, parts[i]);
        argv[n++] = paths[i];
    }
    argv[n++] = dir;
    argv[n] = NULL;
    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 60000), 0);

    snprintf(path, sizeof(path), "%s/adapters/zzdemo.c", dir);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(zzdemo_c, f);
    fclose(f);

    {
        const char *mk[] = {"make", "-s", "-C", dir, "-j2", "BUILD=build", "SANITIZE=",
                            "build/kvcd", NULL};

        /* Under `make test` the outer make's command-line variables (BUILD=...)
         * reach us through MAKEFLAGS; the copy must not build into that tree. */
        unsetenv("MAKEFLAGS");
        unsetenv("MFLAGS");
        unsetenv("MAKELEVEL");
        unsetenv("MAKEOVERRIDES");

        rc = kvcd_run(mk, out, sizeof(out), 280000);
        ck_assert_msg(rc == 0, "build with the new file failed (%d):\n%s", rc, out);
    }
    snprintf(bin, sizeof(bin), "%s/build/kvcd", dir);
    {
        const char *help[] = {bin, "--help", NULL};

        rc = kvcd_run(help, out, sizeof(out), 10000);
        ck_assert_msg(rc == 0, "kvcd --help exited %d:\n%s", rc, out);
        HAS(out, "zzdemo");
        HAS(out, "mock");
    }
    {
        const char *help[] = {bin, "--help-adapter", "zzdemo", NULL};

        rc = kvcd_run(help, out, sizeof(out), 10000);
        ck_assert_msg(rc == 0, "kvcd --help-adapter zzdemo exited %d:\n%s", rc, out);
        HAS(out, "demo adapter added as a single file");
        HAS(out, "zz_knob");
    }
    {
        const char *rm[] = {"rm", "-rf", dir, NULL};

        kvcd_run(rm, NULL, 0, 60000);
    }
}
END_TEST

static Suite *registry_suite(void)
{
    Suite *s = suite_create("registry");
    TCase *tc = tcase_create("registry");
    TCase *build = tcase_create("one_file");

    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, builtins_present);
    tcase_add_test(tc, print_help_lists_fields);
    tcase_add_test(tc, duplicate_name_rejected);
    tcase_add_test(tc, wrong_abi_version_rejected);
    tcase_add_test(tc, struct_size_checked);
    tcase_add_test(tc, missing_method_rejected);
    tcase_add_test(tc, bad_names_rejected);
    tcase_add_test(tc, background_needs_blocking);
    tcase_add_test(tc, runtime_registration_works);
    tcase_add_test(tc, unknown_type_lists_known);
    tcase_add_test(tc, bad_spec_names_index_type_field);
    tcase_add_test(tc, unknown_field_rejected);
    tcase_add_test(tc, fault_spec_errors);
    tcase_add_test(tc, plugin_example_loads_and_runs);
    tcase_add_test(tc, plugin_bad_abi_rejected);
    tcase_add_test(tc, plugin_without_entry_rejected);
    tcase_add_test(tc, plugin_other_abi_rejected);
    tcase_add_test(tc, help_per_adapter);
    tcase_add_test(tc, layout_checked);
    tcase_add_test(tc, unknown_flags_rejected);
    tcase_add_test(tc, field_table_checked);
    tcase_add_test(tc, parser_applies_every_type);
    tcase_add_test(tc, runner_fields_size_the_executor);
    tcase_add_test(tc, async_adapter_completes_through_services);
    tcase_add_test(tc, builtin_spec_errors);
    tcase_add_test(tc, plugin_missing_file_rejected);
    suite_add_tcase(s, tc);

    /* a real build of the whole daemon: minutes on a small machine */
    tcase_set_timeout(build, 300);
    tcase_add_test(build, new_adapter_is_one_file);
    suite_add_tcase(s, build);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(registry_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
