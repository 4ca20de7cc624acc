/*
 * registry.c - the adapter registry: the built-in adapters (the table the build
 * writes from the adapter files), adapters registered at run time (tests) and
 * plugins loaded with --plugin.
 *
 * The built-in table is checked and registered lazily, on the first registry
 * call; run-time registrations and plugins are appended after it. Every
 * adapter passes the same checks (ABI version, struct size, name, required
 * methods). An adapter built against an older, shorter struct is kept as a
 * zero-padded copy so the core can read every field of the current ABI.
 *
 * Process-wide state, used from the main thread before the loop runs and
 * from the loop thread after; not thread-safe.
 */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/registry.h"
#include "daemon/log.h"

#define bad kvcd_adapter_config_error
#define NAME_MAX_LEN 63

/* The first ABI version's struct ends with `close`; later fields are optional. */
#define V1_SIZE offsetof(kvcd_adapter_t, background)
#define HAS_FIELD(a, f) ((a)->struct_size >= offsetof(kvcd_adapter_t, f) + sizeof((a)->f))

typedef struct {
    const kvcd_adapter_t *a; /* what find_type returns: the original or `copy` */
    kvcd_adapter_t *copy;    /* zero-padded copy of a shorter struct, or NULL */
    void *dl;                /* plugin handle, or NULL */
} entry_t;

static entry_t *reg;
static size_t nreg, capreg;
static int builtins_done;

static const entry_t *find_entry(const char *name)
{
    size_t i;

    for (i = 0; i < nreg; i++)
        if (strcmp(reg[i].a->name, name) == 0)
            return &reg[i];
    return NULL;
}

static int check(const kvcd_adapter_t *a, char *err, size_t errlen)
{
    static const char *const required[] = {"init", "store", "lookup", "load", "remove"};
    const char *nm;
    void *methods[5];
    size_t i;

    if (!a)
        return bad(err, errlen, "no adapter (NULL)");
    if (a->abi_version != KVCD_ADAPTER_ABI_VERSION)
        return bad(err, errlen,
                   "adapter ABI version %u is not supported (this kvcd supports version %u)",
                   a->abi_version, KVCD_ADAPTER_ABI_VERSION);
    if (a->struct_size < V1_SIZE)
        return bad(err, errlen,
                   "adapter struct_size %u is too small (ABI version %u needs at least %zu)",
                   a->struct_size, KVCD_ADAPTER_ABI_VERSION, (size_t)V1_SIZE);
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
    if (find_entry(nm))
        return bad(err, errlen, "adapter '%s': an adapter with this name is already registered",
                   nm);
    return 0;
}

/* Check and append; `how` is for the log line ("built-in", "run-time", a path). */
static int add(const kvcd_adapter_t *a, void *dl, const char *how, char *err, size_t errlen)
{
    kvcd_adapter_t *copy = NULL;
    int rc = check(a, err, errlen);

    if (rc != 0)
        return rc;
    if (nreg == capreg) {
        size_t cap = capreg ? capreg * 2 : 16;
        entry_t *r = realloc(reg, cap * sizeof(*r));

        if (!r)
            return bad(err, errlen, "adapter '%s': out of memory", a->name);
        reg = r;
        capreg = cap;
    }
    if (a->struct_size < sizeof(kvcd_adapter_t)) {
        copy = calloc(1, sizeof(*copy));
        if (!copy)
            return bad(err, errlen, "adapter '%s': out of memory", a->name);
        memcpy(copy, a, a->struct_size);
    }
    reg[nreg].a = copy ? copy : a;
    reg[nreg].copy = copy;
    reg[nreg].dl = dl;
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
    char e2[256], local[4096];
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

int kvcd_l2_print_help(const char *type)
{
    const kvcd_adapter_t *a = kvcd_l2_find_type(type);
    const kvcd_adapter_field_t *f;

    if (!a)
        return -1;
    printf("%s - %s\n", a->name, a->doc ? a->doc : "(no description)");
    printf("  %s%s adapter\n", (a->flags & KVCD_ADAPTER_BLOCKING) ? "blocking" : "asynchronous",
           (a->flags & KVCD_ADAPTER_PERSISTENT) ? ", persistent" : "");
    printf("\n  fields:\n");
    printf("    %-20s %-8s %-12s \"%s\"\n", "type", "string", "(required)", a->name);
    for (f = a->fields; f && f->name; f++)
        printf("    %-20s %-8s %-12s %s\n", f->name, f->type ? f->type : "",
               f->dflt ? f->dflt : "(required)", f->doc ? f->doc : "");
    if (!a->fields || !a->fields->name)
        printf("    (no other fields documented)\n");
    return 0;
}

void kvcd_l2_registry_reset(void)
{
    size_t i;

    for (i = 0; i < nreg; i++) {
        free(reg[i].copy);
        if (reg[i].dl)
            dlclose(reg[i].dl);
    }
    free(reg);
    reg = NULL;
    nreg = capreg = 0;
    builtins_done = 0;
}
