/*
 * registry.c - the adapter registry: the built-in adapters (the table the build
 * writes from the adapter files), adapters registered at run time (tests) and
 * plugins loaded with --plugin; the one spec parser; --help-adapter; the
 * core-services table.
 *
 * The built-in table is checked and registered lazily, on the first registry
 * call; run-time registrations and plugins are appended after it. Every
 * adapter passes the same checks (ABI version, struct size, layout of the
 * shared structs, flag bits, name, required methods, field table). An adapter
 * built against an older, shorter struct of this ABI version is kept as a
 * zero-padded copy so the core can read every field of the current one. Each
 * entry keeps its fields' defaults parsed (JSON), so the strings a spec
 * borrows from them stay valid as long as the entry.
 *
 * Process-wide state, used from the main thread before the loop runs and
 * from the loop thread after; not thread-safe. The services are thread-safe
 * where adapter.h says "any thread".
 */
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "adapters/registry.h"
#include "daemon/l2.h"
#include "daemon/log.h"

#define bad(err, errlen, ...) kvcd_errf((err), (errlen), KVCD_ECONFIG, __VA_ARGS__)
#define NAME_MAX_LEN 63

/* The first struct of ABI version 2 ends with `close`; later fields are optional. */
#define MIN_SIZE offsetof(kvcd_adapter_t, background)
#define HAS_FIELD(a, f) ((a)->struct_size >= offsetof(kvcd_adapter_t, f) + sizeof((a)->f))

typedef struct {
    const kvcd_adapter_t *a; /* what find_type returns: the original or `copy` */
    kvcd_adapter_t *copy;    /* zero-padded copy of a shorter struct, or NULL */
    void *dl;                /* plugin handle, or NULL */
    json_t *defaults;        /* field name -> parsed default */
} entry_t;

static entry_t *reg;
static size_t nreg, capreg;
static int builtins_done;

/* The runner's fields, known to every blocking adapter's spec. */
static const kvcd_adapter_field_t runner_fields[] = {
    {KVCD_FIELD("workers", KVCD_FIELD_INT, kvcd_runner_fields_t, workers), .min = 1, .max = 256,
     .dflt_doc = "--max-workers",
     .doc = "threads of this instance's executor (capped by what the adapter allows)"},
    {KVCD_FIELD("max_queue", KVCD_FIELD_INT, kvcd_runner_fields_t, max_queue), .min = 1,
     .max = 1000000, .dflt_doc = "256",
     .doc = "slices queued for the executor; beyond it a call fails at once (EQUEUEFULL)"},
    {.name = NULL},
};

static const entry_t *find_entry(const char *name)
{
    size_t i;

    for (i = 0; i < nreg; i++)
        if (strcmp(reg[i].a->name, name) == 0)
            return &reg[i];
    return NULL;
}

static const entry_t *entry_of(const kvcd_adapter_t *a)
{
    size_t i;

    for (i = 0; i < nreg; i++)
        if (reg[i].a == a)
            return &reg[i];
    return a->name ? find_entry(a->name) : NULL; /* a struct kept as a copy */
}

/* ---- one field ------------------------------------------------------------- */

static size_t width(uint32_t type)
{
    switch (type) {
    case KVCD_FIELD_STRING:
    case KVCD_FIELD_OBJECT:
    case KVCD_FIELD_ARRAY:
        return sizeof(void *);
    case KVCD_FIELD_INT:
        return sizeof(int64_t);
    case KVCD_FIELD_INT32:
    case KVCD_FIELD_MODE:
        return sizeof(int32_t);
    case KVCD_FIELD_NUMBER:
        return sizeof(double);
    case KVCD_FIELD_BOOL:
        return sizeof(bool);
    case KVCD_FIELD_ENUM:
    case KVCD_FIELD_ERRNAME:
        return sizeof(int);
    }
    return 0;
}

static const char *type_name(uint32_t type)
{
    static const char *const names[] = {"?",       "string", "integer", "integer", "number",
                                        "boolean", "mode",   "enum",    "string",  "object",
                                        "array"};

    return type <= KVCD_FIELD_ARRAY ? names[type] : "?";
}

/* Integer bounds of f: [lo, hi]. */
static void int_bounds(const kvcd_adapter_field_t *f, long long *lo, long long *hi)
{
    *lo = (long long)f->min + ((f->flags & KVCD_FIELD_ABOVE_MIN) ? 1 : 0);
    *hi = f->max != 0 ? (long long)f->max
                      : f->type == KVCD_FIELD_INT32 ? INT32_MAX : INT64_MAX;
}

/* Check v against f and write it to dst (width(f->type) bytes). Messages name
 * the field as pfx + name ("nodes[1]." + "port"). */
static int apply(const kvcd_adapter_field_t *f, const char *pfx, const json_t *v, void *dst,
                 char *err, size_t errlen)
{
    const char *nm = f->name;

    switch (f->type) {
    case KVCD_FIELD_STRING: {
        const char *str = json_string_value(v);

        if (!str)
            return bad(err, errlen, "%s%s: expected a string", pfx, nm);
        if (strlen(str) != json_string_length(v))
            return bad(err, errlen, "%s%s: contains a NUL byte", pfx, nm);
        if ((f->flags & KVCD_FIELD_NONEMPTY) && !*str)
            return bad(err, errlen, "%s%s: must not be empty", pfx, nm);
        if (f->max > 0 && (double)json_string_length(v) > f->max)
            return bad(err, errlen, "%s%s: longer than %.0f bytes", pfx, nm, f->max);
        memcpy(dst, &str, sizeof(str));
        return 0;
    }
    case KVCD_FIELD_INT:
    case KVCD_FIELD_INT32: {
        long long x, lo, hi;

        if (!json_is_integer(v))
            return bad(err, errlen, "%s%s: expected an integer", pfx, nm);
        x = json_integer_value(v);
        int_bounds(f, &lo, &hi);
        if (x < lo || x > hi) {
            if (f->max != 0)
                return bad(err, errlen, "%s%s: must be in %lld..%lld (got %lld)", pfx, nm, lo, hi, x);
            return bad(err, errlen, "%s%s: must be >= %lld (got %lld)", pfx, nm, lo, x);
        }
        if (f->type == KVCD_FIELD_INT) {
            int64_t y = x;

            memcpy(dst, &y, sizeof(y));
        } else {
            int32_t y = (int32_t)x;

            memcpy(dst, &y, sizeof(y));
        }
        return 0;
    }
    case KVCD_FIELD_NUMBER: {
        double d;

        if (!json_is_number(v))
            return bad(err, errlen, "%s%s: expected a number", pfx, nm);
        d = json_number_value(v);
        if (!isfinite(d) || d < f->min || ((f->flags & KVCD_FIELD_ABOVE_MIN) && d <= f->min) ||
            (f->max != 0 && d > f->max)) {
            const char *op = (f->flags & KVCD_FIELD_ABOVE_MIN) ? ">" : ">=";

            if (f->max != 0)
                return bad(err, errlen, "%s%s: must be %s %.15g and <= %.15g (got %.15g)", pfx, nm, op,
                           f->min, f->max, d);
            return bad(err, errlen, "%s%s: must be %s %.15g (got %.15g)", pfx, nm, op, f->min, d);
        }
        memcpy(dst, &d, sizeof(d));
        return 0;
    }
    case KVCD_FIELD_BOOL: {
        bool b = json_is_true(v);

        if (!json_is_boolean(v))
            return bad(err, errlen, "%s%s: expected true or false", pfx, nm);
        memcpy(dst, &b, sizeof(b));
        return 0;
    }
    case KVCD_FIELD_MODE: {
        uint32_t need = (uint32_t)f->min, m32;
        long m = -1;

        if (json_is_integer(v)) {
            m = (long)json_integer_value(v);
        } else if (json_is_string(v)) {
            const char *str = json_string_value(v);

            if (*str && strspn(str, "01234567") == strlen(str) && strlen(str) <= 4)
                m = strtol(str, NULL, 8);
        }
        if (m < 0 || m > 0777 || ((uint32_t)m & need) != need)
            return bad(err, errlen,
                       "%s%s: must be an octal string such as \"0%o\" (at most 0777, with 0%o "
                       "set)", pfx, nm, need ? need : 0600, need);
        m32 = (uint32_t)m;
        memcpy(dst, &m32, sizeof(m32));
        return 0;
    }
    case KVCD_FIELD_ENUM: {
        const char *str = json_string_value(v);
        char list[256];
        size_t len = 0;
        int k;

        for (k = 0; str && f->choices[k]; k++)
            if (!strcmp(str, f->choices[k])) {
                memcpy(dst, &k, sizeof(k));
                return 0;
            }
        list[0] = '\0';
        for (k = 0; f->choices[k] && len < sizeof(list); k++)
            len += (size_t)snprintf(list + len, sizeof(list) - len, "%s\"%s\"", k ? " or " : "",
                                    f->choices[k]);
        return bad(err, errlen, "%s%s: must be %s", pfx, nm, list);
    }
    case KVCD_FIELD_ERRNAME: {
        const char *str = json_string_value(v);
        int code;

        if (!str)
            return bad(err, errlen, "%s%s: expected an error name such as \"EIO\"", pfx, nm);
        code = kvcd_errcode(str);
        if (code == 0)
            return bad(err, errlen, "%s%s: unknown error name '%s'", pfx, nm, str);
        memcpy(dst, &code, sizeof(code));
        return 0;
    }
    case KVCD_FIELD_OBJECT:
        if (!json_is_object(v))
            return bad(err, errlen, "%s%s: expected an object", pfx, nm);
        memcpy(dst, &v, sizeof(v));
        return 0;
    case KVCD_FIELD_ARRAY:
        if (!json_is_array(v) || ((f->flags & KVCD_FIELD_NONEMPTY) && !json_array_size(v)))
            return bad(err, errlen, "%s%s: expected a %sarray", pfx, nm,
                       (f->flags & KVCD_FIELD_NONEMPTY) ? "non-empty " : "");
        memcpy(dst, &v, sizeof(v));
        return 0;
    }
    return bad(err, errlen, "%s%s: field of unknown type %u", pfx, nm, f->type);
}

/* A field table is sound: checked once, at registration; defaults parsed. */
static int check_fields(const kvcd_adapter_t *a, json_t **defaults, char *err, size_t errlen)
{
    const kvcd_adapter_field_t *f, *g;
    int blocking = (a->flags & KVCD_ADAPTER_BLOCKING) != 0;
    json_t *d = json_object();

    if (!d)
        return bad(err, errlen, "adapter '%s': out of memory", a->name);
    for (f = a->fields; f && f->name; f++) {
        union {
            char bytes[16];
            double align;
        } scratch;
        char e2[256];
        json_t *v;

        if (!*f->name || !strcmp(f->name, "type") ||
            (blocking && (!strcmp(f->name, "workers") || !strcmp(f->name, "max_queue"))))
            goto badname;
        for (g = a->fields; g < f; g++)
            if (!strcmp(g->name, f->name))
                goto badname;
        if (f->type < KVCD_FIELD_STRING || f->type > KVCD_FIELD_ARRAY) {
            json_decref(d);
            return bad(err, errlen, "adapter '%s': field '%s' has unknown type %u", a->name,
                       f->name, f->type);
        }
        if (f->flags & ~KVCD_FIELD_KNOWN_FLAGS) {
            json_decref(d);
            return bad(err, errlen, "adapter '%s': field '%s' has unknown flag bits 0x%x",
                       a->name, f->name, f->flags & ~KVCD_FIELD_KNOWN_FLAGS);
        }
        if (!(f->flags & KVCD_FIELD_DEPRECATED) &&
            (f->offset > a->instance_size || a->instance_size - f->offset < width(f->type))) {
            json_decref(d);
            return bad(err, errlen,
                       "adapter '%s': field '%s' at offset %zu does not fit in instance_size %zu",
                       a->name, f->name, f->offset, a->instance_size);
        }
        if (f->type == KVCD_FIELD_ENUM && (!f->choices || !f->choices[0])) {
            json_decref(d);
            return bad(err, errlen, "adapter '%s': enum field '%s' has no choices", a->name,
                       f->name);
        }
        if (!f->dflt)
            continue;
        if (f->flags & KVCD_FIELD_REQUIRED) {
            json_decref(d);
            return bad(err, errlen, "adapter '%s': field '%s' is required and has a default",
                       a->name, f->name);
        }
        v = json_loads(f->dflt, JSON_DECODE_ANY, NULL);
        if (!v || apply(f, "", v, scratch.bytes, e2, sizeof(e2)) != 0) {
            json_decref(v);
            json_decref(d);
            return bad(err, errlen, "adapter '%s': default of field '%s' (%s) is invalid%s%s",
                       a->name, f->name, f->dflt, v ? ": " : " JSON", v ? e2 : "");
        }
        json_object_set_new(d, f->name, v);
    }
    *defaults = d;
    return 0;
badname:
    json_decref(d);
    return bad(err, errlen, "adapter '%s': field name '%s' is empty, reserved or repeated",
               a->name, f->name);
}

/* ---- registration ---------------------------------------------------------- */

/* The layout this kvcd was built with. */
static const kvcd_abi_layout_t core_layout = KVCD_ABI_LAYOUT;

static int check_layout(const kvcd_adapter_t *a, char *err, size_t errlen)
{
    static const struct {
        const char *what;
        size_t off;
        int exact;
    } parts[] = {
        {"kvcd_l2_item_t", offsetof(kvcd_abi_layout_t, item), 1},
        {"kvcd_l2_batch_t", offsetof(kvcd_abi_layout_t, batch), 1},
        {"kvcd_key_t", offsetof(kvcd_abi_layout_t, key), 1},
        {"kvcd_adapter_field_t", offsetof(kvcd_abi_layout_t, field), 1},
        {"kvcd_adapter_env_t", offsetof(kvcd_abi_layout_t, env), 0},
        {"kvcd_core_services_t", offsetof(kvcd_abi_layout_t, services), 0},
    };
    size_t i;

    for (i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        uint32_t mine, theirs;

        memcpy(&mine, (const char *)&core_layout + parts[i].off, sizeof(mine));
        memcpy(&theirs, (const char *)&a->layout + parts[i].off, sizeof(theirs));
        if (theirs == mine || (!parts[i].exact && theirs && theirs < mine))
            continue;
        return bad(err, errlen,
                   "adapter '%s' was built with a different %s (%u bytes; this kvcd's is %u, "
                   "%s): rebuild it against this kvcd's adapters/adapter.h",
                   a->name ? a->name : "?", parts[i].what, theirs, mine,
                   parts[i].exact ? "they must be equal"
                                  : "a plugin may be older than kvcd, not newer");
    }
    return 0;
}

static int check(const kvcd_adapter_t *a, char *err, size_t errlen)
{
    static const char *const required[] = {"init", "store", "lookup", "load", "remove"};
    const char *nm;
    void *methods[5];
    size_t i;
    int rc;

    if (!a)
        return bad(err, errlen, "no adapter (NULL)");
    if (a->abi_version != KVCD_ADAPTER_ABI_VERSION)
        return bad(err, errlen,
                   "adapter ABI version %u is not supported (this kvcd supports version %u%s)",
                   a->abi_version, KVCD_ADAPTER_ABI_VERSION,
                   a->abi_version < KVCD_ADAPTER_ABI_VERSION
                       ? "; version 2 moved completion into the services table and spec "
                         "parsing into the field table: rebuild against this kvcd's "
                         "adapters/adapter.h"
                       : "; the adapter is newer than this kvcd");
    if (a->struct_size < MIN_SIZE)
        return bad(err, errlen,
                   "adapter struct_size %u is too small (ABI version %u needs at least %zu)",
                   a->struct_size, KVCD_ADAPTER_ABI_VERSION, (size_t)MIN_SIZE);
    if ((rc = check_layout(a, err, errlen)) != 0)
        return rc;
    nm = a->name;
    if (!nm || !*nm)
        return bad(err, errlen, "adapter has no name");
    for (i = 0; nm[i]; i++) {
        char c = nm[i];

        if (i == NAME_MAX_LEN)
            return bad(err, errlen, "adapter name '%.*s...' is longer than %d bytes",
                       NAME_MAX_LEN, nm, NAME_MAX_LEN);
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return bad(err, errlen,
                       "adapter name '%s': only letters, digits, '_', '-' and '.' are allowed",
                       nm);
    }
    if (a->flags & ~KVCD_ADAPTER_KNOWN_FLAGS)
        return bad(err, errlen,
                   "adapter '%s': unknown flag bits 0x%x (this kvcd knows 0x%x: BLOCKING, "
                   "PERSISTENT)", nm, a->flags & ~KVCD_ADAPTER_KNOWN_FLAGS,
                   KVCD_ADAPTER_KNOWN_FLAGS);
    methods[0] = (void *)a->init;
    methods[1] = (void *)a->store;
    methods[2] = (void *)a->lookup;
    methods[3] = (void *)a->load;
    methods[4] = (void *)a->remove;
    for (i = 0; i < 5; i++)
        if (!methods[i])
            return bad(err, errlen, "adapter '%s': required method '%s' is NULL", nm,
                       required[i]);
    if (HAS_FIELD(a, background) && a->background && !(a->flags & KVCD_ADAPTER_BLOCKING))
        return bad(err, errlen, "adapter '%s': 'background' is only allowed for blocking adapters",
                   nm);
    if (a->max_concurrency && !(a->flags & KVCD_ADAPTER_BLOCKING))
        return bad(err, errlen, "adapter '%s': max_concurrency is only for blocking adapters",
                   nm);
    if (find_entry(nm))
        return bad(err, errlen, "adapter '%s': an adapter with this name is already registered",
                   nm);
    return 0;
}

/* Check and append; `how` is for the log line ("built-in", "run-time", a path). */
static int add(const kvcd_adapter_t *a, void *dl, const char *how, char *err, size_t errlen)
{
    kvcd_adapter_t *copy = NULL;
    json_t *defaults = NULL;
    int rc = check(a, err, errlen);

    if (rc == 0)
        rc = check_fields(a, &defaults, err, errlen);
    if (rc != 0)
        return rc;
    if (nreg == capreg) {
        size_t cap = capreg ? capreg * 2 : 16;
        entry_t *r = realloc(reg, cap * sizeof(*r));

        if (!r) {
            json_decref(defaults);
            return bad(err, errlen, "adapter '%s': out of memory", a->name);
        }
        reg = r;
        capreg = cap;
    }
    if (a->struct_size < sizeof(kvcd_adapter_t)) {
        copy = calloc(1, sizeof(*copy));
        if (!copy) {
            json_decref(defaults);
            return bad(err, errlen, "adapter '%s': out of memory", a->name);
        }
        memcpy(copy, a, a->struct_size);
    }
    reg[nreg].a = copy ? copy : a;
    reg[nreg].copy = copy;
    reg[nreg].dl = dl;
    reg[nreg].defaults = defaults;
    nreg++;
    KVCD_LOG(KVCD_LOG_INFO, "l2", "registered adapter '%s' (%s, %s%s)", a->name, how,
             (a->flags & KVCD_ADAPTER_BLOCKING) ? "blocking" : "async",
             (a->flags & KVCD_ADAPTER_PERSISTENT) ? ", persistent" : "");
    return 0;
}

static void ensure_builtins(void)
{
    char err[256];
    size_t i;

    if (builtins_done)
        return;
    builtins_done = 1;
    for (i = 0; kvcd_builtin_adapters[i]; i++)
        if (add(kvcd_builtin_adapters[i], NULL, "built-in", err, sizeof(err)) != 0)
            KVCD_LOG(KVCD_LOG_ERROR, "l2", "built-in adapter rejected: %s", err);
}

int kvcd_l2_register(const kvcd_adapter_t *a, char *err, size_t errlen)
{
    ensure_builtins();
    return add(a, NULL, "run-time", err, errlen);
}

int kvcd_l2_load_plugin(const char *path, char *err, size_t errlen)
{
    char e2[512], local[4096];
    kvcd_adapter_entry_fn entry;
    const kvcd_adapter_t *a;
    const char *msg;
    void *dl;
    int rc;

    ensure_builtins();
    /* dlopen searches the library path for a bare name; a plugin is a file. */
    if (!strchr(path, '/')) {
        snprintf(local, sizeof(local), "./%s", path);
        dl = dlopen(local, RTLD_NOW | RTLD_LOCAL);
    } else {
        dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    }
    if (!dl) {
        msg = dlerror();
        return bad(err, errlen, "plugin '%s': cannot load: %s", path, msg ? msg : "unknown error");
    }
    dlerror();
    *(void **)&entry = dlsym(dl, KVCD_ADAPTER_ENTRY_SYMBOL);
    if (!entry) {
        dlclose(dl);
        return bad(err, errlen, "plugin '%s': no symbol '%s' (not a kvcd adapter?)", path,
                   KVCD_ADAPTER_ENTRY_SYMBOL);
    }
    a = entry();
    if (!a) {
        dlclose(dl);
        return bad(err, errlen, "plugin '%s': %s() returned NULL", path,
                   KVCD_ADAPTER_ENTRY_SYMBOL);
    }
    rc = add(a, dl, path, e2, sizeof(e2));
    if (rc != 0) {
        dlclose(dl);
        return bad(err, errlen, "plugin '%s': %s", path, e2);
    }
    return 0;
}

const kvcd_adapter_t *kvcd_l2_find_type(const char *type)
{
    const entry_t *e;

    ensure_builtins();
    e = type ? find_entry(type) : NULL;
    return e ? e->a : NULL;
}

void kvcd_l2_type_list(char *buf, size_t buflen)
{
    size_t i, len = 0;

    ensure_builtins();
    if (!buflen)
        return;
    buf[0] = '\0';
    for (i = 0; i < nreg; i++) {
        int r = snprintf(buf + len, buflen - len, "%s%s", i ? ", " : "", reg[i].a->name);

        if (r < 0 || (size_t)r >= buflen - len) {
            /* truncated: end with "..." if there is room */
            if (buflen >= 4)
                memcpy(buf + buflen - 4, "...", 4);
            return;
        }
        len += (size_t)r;
    }
}

/* ---- the spec parser -------------------------------------------------------- */

static const kvcd_adapter_field_t *field_named(const kvcd_adapter_field_t *t, const char *k)
{
    for (; t && t->name; t++)
        if (!strcmp(t->name, k))
            return t;
    return NULL;
}

static int unknown_field(const kvcd_adapter_t *a, int runner, const char *k, char *err,
                         size_t errlen)
{
    const kvcd_adapter_field_t *f;
    char known[1024];
    size_t n = (size_t)snprintf(known, sizeof(known), "type");

    for (f = runner ? runner_fields : NULL; f && f->name && n < sizeof(known); f++)
        n += (size_t)snprintf(known + n, sizeof(known) - n, ", %s", f->name);
    for (f = a->fields; f && f->name && n < sizeof(known); f++)
        n += (size_t)snprintf(known + n, sizeof(known) - n, ", %s", f->name);
    return bad(err, errlen, "%s: unknown field (%s knows: %s)", k, a->name, known);
}

int kvcd_adapter_spec_parse(const kvcd_adapter_t *a, const json_t *spec, void *self,
                            kvcd_runner_fields_t *runner, char *err, size_t errlen)
{
    const entry_t *e;
    const kvcd_adapter_field_t *f;
    const char *k, *type;
    int use_runner = runner && (a->flags & KVCD_ADAPTER_BLOCKING);
    json_t *v;
    int rc;

    ensure_builtins();
    e = entry_of(a);
    if (!e)
        return bad(err, errlen, "adapter '%s' is not registered", a->name);
    if (runner)
        memset(runner, 0, sizeof(*runner));
    if (!json_is_object(spec))
        return bad(err, errlen, "spec: must be a JSON object");
    type = json_string_value(json_object_get(spec, "type"));
    if (!type || strcmp(type, a->name))
        return bad(err, errlen, "type: must be \"%s\"", a->name);
    json_object_foreach((json_t *)spec, k, v) {
        if (!strcmp(k, "type"))
            continue;
        if (use_runner && (f = field_named(runner_fields, k))) {
            if ((rc = apply(f, "", v, (char *)runner + f->offset, err, errlen)) != 0)
                return rc;
            continue;
        }
        if (!field_named(a->fields, k))
            return unknown_field(a, use_runner, k, err, errlen);
    }
    for (f = a->fields; f && f->name; f++) {
        v = json_object_get(spec, f->name);
        if (!v && (f->flags & KVCD_FIELD_REQUIRED))
            return bad(err, errlen, "%s: required%s%s%s", f->name, f->doc ? " (" : "",
                       f->doc ? f->doc : "", f->doc ? ")" : "");
        if (!v)
            v = json_object_get(e->defaults, f->name);
        if (!v)
            continue;
        if (f->flags & KVCD_FIELD_DEPRECATED) {
            union {
                char bytes[16];
                double align;
            } scratch;

            if ((rc = apply(f, "", v, scratch.bytes, err, errlen)) != 0)
                return rc;
            KVCD_LOG(KVCD_LOG_WARNING, "l2", "%s: field '%s' is deprecated: %s", a->name,
                     f->name, f->doc ? f->doc : "it has no effect");
            continue;
        }
        if ((rc = apply(f, "", v, (char *)self + f->offset, err, errlen)) != 0)
            return rc;
    }
    return 0;
}

int kvcd_adapter_fields_parse(const kvcd_adapter_field_t *table, const char *what,
                              const json_t *obj, void *dst, const char *pfx, char *err,
                              size_t errlen)
{
    const kvcd_adapter_field_t *f;
    const char *k;
    json_t *v;
    int rc;

    if (!json_is_object(obj))
        return bad(err, errlen, "%.*s: expected an object", (int)strcspn(pfx, ".") , pfx);
    json_object_foreach((json_t *)obj, k, v) {
        if (!field_named(table, k)) {
            char known[512];
            size_t n = 0;

            known[0] = '\0';
            for (f = table; f->name && n < sizeof(known); f++)
                n += (size_t)snprintf(known + n, sizeof(known) - n, "%s%s", n ? ", " : "",
                                      f->name);
            return bad(err, errlen, "%s%s: unknown field (%s knows: %s)", pfx, k, what, known);
        }
    }
    for (f = table; f->name; f++) {
        v = json_object_get(obj, f->name);
        if (!v && (f->flags & KVCD_FIELD_REQUIRED))
            return bad(err, errlen, "%s%s: required", pfx, f->name);
        if (v && (rc = apply(f, pfx, v, (char *)dst + f->offset, err, errlen)) != 0)
            return rc;
    }
    return 0;
}

static const kvcd_core_services_t services;

int kvcd_adapter_instance_init(const kvcd_adapter_t *a, void *self, const json_t *spec,
                               const kvcd_adapter_env_t *env, char *err, size_t errlen)
{
    kvcd_adapter_env_t e = {0};
    int rc;

    if (env)
        e = *env;
    if (!e.struct_size)
        e.struct_size = sizeof(e);
    if (!e.svc)
        e.svc = &services;
    if (!e.arena_align)
        e.arena_align = 4096;
    if (err && errlen)
        err[0] = '\0';
    rc = kvcd_adapter_spec_parse(a, spec, self, NULL, err, errlen);
    if (rc != 0)
        return rc;
    return a->init(self, spec, &e, err, errlen);
}

/* ---- --help-adapter ------------------------------------------------------- */

static void print_field(const kvcd_adapter_field_t *f)
{
    char range[96] = "", tname[24];
    const char *dflt = f->dflt_doc ? f->dflt_doc
                       : f->dflt   ? f->dflt
                       : (f->flags & KVCD_FIELD_REQUIRED) ? "(required)"
                                                           : "(none)";

    snprintf(tname, sizeof(tname), "%s", type_name(f->type));
    if (f->type == KVCD_FIELD_INT || f->type == KVCD_FIELD_INT32) {
        long long lo, hi;

        int_bounds(f, &lo, &hi);
        if (f->max != 0)
            snprintf(range, sizeof(range), " [%lld..%lld]", lo, hi);
        else
            snprintf(range, sizeof(range), " [>= %lld]", lo);
    } else if (f->type == KVCD_FIELD_NUMBER) {
        if (f->max != 0)
            snprintf(range, sizeof(range), " [%s %.15g, <= %.15g]",
                     (f->flags & KVCD_FIELD_ABOVE_MIN) ? ">" : ">=", f->min, f->max);
        else
            snprintf(range, sizeof(range), " [%s %.15g]",
                     (f->flags & KVCD_FIELD_ABOVE_MIN) ? ">" : ">=", f->min);
    } else if (f->type == KVCD_FIELD_STRING && f->max > 0) {
        snprintf(range, sizeof(range), " [at most %.0f bytes]", f->max);
    } else if (f->type == KVCD_FIELD_ENUM) {
        size_t n = (size_t)snprintf(range, sizeof(range), " [");
        int k;

        for (k = 0; f->choices[k] && n < sizeof(range); k++)
            n += (size_t)snprintf(range + n, sizeof(range) - n, "%s\"%s\"", k ? ", " : "",
                                  f->choices[k]);
        if (n < sizeof(range))
            snprintf(range + n, sizeof(range) - n, "]");
    }
    printf("    %-20s %-8s %-12s %s%s%s\n", f->name, tname, dflt,
           (f->flags & KVCD_FIELD_DEPRECATED) ? "(deprecated) " : "", f->doc ? f->doc : "",
           range);
}

int kvcd_l2_print_help(const char *type)
{
    const kvcd_adapter_t *a = kvcd_l2_find_type(type);
    const kvcd_adapter_field_t *f;

    if (!a)
        return -1;
    printf("%s - %s\n", a->name, a->doc ? a->doc : "(no description)");
    printf("  %s%s adapter", (a->flags & KVCD_ADAPTER_BLOCKING) ? "blocking" : "asynchronous",
           (a->flags & KVCD_ADAPTER_PERSISTENT) ? ", persistent" : "");
    if (a->max_concurrency)
        printf(", at most %u concurrent calls per instance", a->max_concurrency);
    printf("\n\n  fields:\n");
    printf("    %-20s %-8s %-12s \"%s\"\n", "type", "string", "(required)", a->name);
    for (f = a->fields; f && f->name; f++)
        print_field(f);
    if (!a->fields || !a->fields->name)
        printf("    (no other fields)\n");
    if (a->flags & KVCD_ADAPTER_BLOCKING) {
        printf("\n  runner fields (every blocking adapter):\n");
        for (f = runner_fields; f->name; f++)
            print_field(f);
    }
    return 0;
}

void kvcd_l2_registry_reset(void)
{
    size_t i;

    for (i = 0; i < nreg; i++) {
        free(reg[i].copy);
        json_decref(reg[i].defaults);
        if (reg[i].dl)
            dlclose(reg[i].dl);
    }
    free(reg);
    reg = NULL;
    nreg = capreg = 0;
    builtins_done = 0;
}

/* ---- the core-services table ---------------------------------------------- */

_Static_assert(KVCD_ALOG_DEBUG == KVCD_LOG_DEBUG && KVCD_ALOG_INFO == KVCD_LOG_INFO &&
                   KVCD_ALOG_WARNING == KVCD_LOG_WARNING && KVCD_ALOG_ERROR == KVCD_LOG_ERROR,
               "adapter log levels are the daemon's");
_Static_assert(sizeof(kvcd_alog_limit_t) == sizeof(kvcd_ratelimit_t),
               "kvcd_alog_limit_t is a kvcd_ratelimit_t");

static int svc_log_enabled(int level)
{
    return level >= kvcd_log_level;
}

static void svc_log(int level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void svc_log(int level, const char *module, const char *fmt, ...)
{
    char line[2048];
    va_list ap;

    if (level < kvcd_log_level)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    kvcd_log_write(level, module, "%s", line);
}

static int svc_ratelimit(kvcd_alog_limit_t *rl, uint64_t interval_ms, uint64_t *suppressed)
{
    return kvcd_ratelimit_pass((kvcd_ratelimit_t *)(void *)rl, interval_ms, suppressed);
}

static uint64_t svc_now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

struct kvcd_atimer_s {
    uv_timer_t t;
    kvcd_atimer_cb cb;
    void *data;
};

static void atimer_fire(uv_timer_t *t)
{
    kvcd_atimer_t *a = t->data;

    a->cb(a->data);
}

static void atimer_closed(uv_handle_t *h)
{
    free(h->data);
}

static kvcd_atimer_t *svc_timer_new(const kvcd_adapter_env_t *env, kvcd_atimer_cb cb, void *data)
{
    kvcd_atimer_t *a;

    if (!env || !env->loop || !cb || !(a = calloc(1, sizeof(*a))))
        return NULL;
    uv_timer_init(env->loop, &a->t);
    a->t.data = a;
    a->cb = cb;
    a->data = data;
    return a;
}

static void svc_timer_start(kvcd_atimer_t *a, uint64_t ms)
{
    uv_timer_start(&a->t, atimer_fire, ms, 0);
}

static void svc_timer_stop(kvcd_atimer_t *a)
{
    uv_timer_stop(&a->t);
}

static void svc_timer_free(kvcd_atimer_t *a)
{
    if (a)
        uv_close((uv_handle_t *)&a->t, atimer_closed);
}

static const kvcd_core_services_t services = {
    .struct_size = sizeof(kvcd_core_services_t),
    .batch_done = kvcd_l2_batch_done,
    .log_enabled = svc_log_enabled,
    .log = svc_log,
    .log_ratelimit = svc_ratelimit,
    .now_ms = svc_now_ms,
    .timer_new = svc_timer_new,
    .timer_start = svc_timer_start,
    .timer_stop = svc_timer_stop,
    .timer_free = svc_timer_free,
    .errf = kvcd_errf,
    .strerror = kvcd_strerror,
    .errcode = kvcd_errcode,
    .adapter_find = kvcd_l2_find_type,
    .adapter_list = kvcd_l2_type_list,
    .instance_init = kvcd_adapter_instance_init,
    .fields_parse = kvcd_adapter_fields_parse,
};

const kvcd_core_services_t *kvcd_l2_services(void)
{
    return &services;
}
