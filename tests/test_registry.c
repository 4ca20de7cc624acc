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

START_TEST(print_help_lists_fields)
{
    char path[] = "/tmp/kvcd-help-XXXXXX", out[8192];
    int fd = mkstemp(path), saved = dup(1), rc;
    ssize_t n;

    ck_assert_int_ge(fd, 0);
    fflush(stdout);
    dup2(fd, 1);
    rc = kvcd_l2_print_help("mock");
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    ck_assert_int_eq(rc, 0);
    n = pread(fd, out, sizeof(out) - 1, 0);
    close(fd);
    unlink(path);
    ck_assert_int_gt(n, 0);
    out[n] = '\0';
    HAS(out, "mock - ");
    HAS(out, "max_size_gb");
    HAS(out, "mock_bandwidth_gb");
    HAS(out, "latency_ms");
    HAS(out, "number");
    HAS(out, "FIFO");
    ck_assert_int_eq(kvcd_l2_print_help("nope"), -1);
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
    HAS(err, "ABI version 2 is not supported");
    HAS(err, "supports version 1");
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
        {"{\"type\":\"fault\",\"inner\":3}", "inner: expected an adapter spec object"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"nope\"}}", "inner: unknown type 'nope' (known: "},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\",\"max_size_gb\":\"x\"}}",
         "--l2-adapter #1 (fault): inner (mock): max_size_gb"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"testasync\"}}",
         "inner: adapter 'testasync' is not blocking"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail\":{\"store\":2}}",
         "fail.store: must be a probability"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail\":{\"write\":0.5}}",
         "fail.write: unknown operation"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail\":[]}", "fail: expected an object"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail_calls\":{\"load\":[-1]}}",
         "fail_calls.load[0]: expected a non-negative integer"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"fail_calls\":{\"load\":1}}",
         "fail_calls.load: expected an array"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"delay_ms\":{\"load\":\"x\"}}",
         "delay_ms.load: expected an integer"},
        {"{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},\"corrupt\":{\"store\":1}}",
         "corrupt.store: only load can be corrupted"},
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
    HAS(err, "--l2-adapter #2 (example): max_objects: expected a positive integer");

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
    HAS(err, "ABI version 42 is not supported (this kvcd supports version 1)");
    ck_assert_ptr_null(kvcd_l2_find_type("bad_abi"));
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
    "    {\"zz_knob\", \"integer\", \"7\", \"a field only zzdemo has\"},\n"
    "    {NULL, NULL, NULL, NULL},\n"
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
