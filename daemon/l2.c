/*
 * l2.c - the adapter registry and the runner for configured L2 instances.
 *
 * Registry. The built-in table is checked and registered lazily, on the first
 * registry call; run-time registrations and plugins are appended after it.
 * Every adapter passes the same checks (ABI version, struct size, name,
 * required methods). An adapter built against an older, shorter struct is kept
 * as a zero-padded copy so the core can read every field of the current ABI.
 *
 * Runner. Each submitted request gets a `run_t`, owned by this file: the
 * deadline timer, one slice per batch handed to the adapter, and a private copy
 * of the request's items. Adapters (and workers that outlive the deadline)
 * write results only into that copy; results are copied to the caller's items
 * on the loop thread while the request is still being waited for. So once the
 * callback has run nothing writes into the caller's items any more; only the
 * keys and buffers stay in use, until `release`.
 *
 * Lifetimes (all on the loop thread):
 *  - a run counts in its instance's `inflight` from submit until its last slice
 *    has come back, which for a timed-out run is after the callback;
 *  - a run is freed when its timer has been closed and every slice is back;
 *  - after calling the caller's cb or release, the request is not touched again,
 *    and the instance is touched only if it was already being destroyed (its
 *    memory is kept until inflight drops to 0), so a callback may destroy the
 *    instance or free the request.
 */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/l2.h"
#include "daemon/metrics.h"
#include "daemon/log.h"

#define DEFAULT_TIMEOUT_MS 10000 /* when neither the request nor the instance sets one */
#define UNHEALTHY_AFTER 3        /* consecutive failed calls */
#define NAME_MAX_LEN 63
#define LOG_INTERVAL_MS 5000

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

/* The first ABI version's struct ends with `close`; later fields are optional. */
#define V1_SIZE offsetof(kvcd_adapter_t, background)
#define HAS_FIELD(a, f) ((a)->struct_size >= offsetof(kvcd_adapter_t, f) + sizeof((a)->f))

/* ---- registry --------------------------------------------------------------- */

typedef struct {
    const kvcd_adapter_t *a; /* what find_type returns: the original or `copy` */
    kvcd_adapter_t *copy;    /* zero-padded copy of a shorter struct, or NULL */
    void *dl;                /* plugin handle, or NULL */
} entry_t;

static entry_t *reg;
static size_t nreg, capreg;
static int builtins_done;

static int bad(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int bad(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return KVCD_ECONFIG;
}

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

/* ---- runner ------------------------------------------------------------------ */

typedef struct run_s run_t;

typedef struct {
    kvcd_l2_batch_t b; /* first, so an adapter's batch pointer is the slice */
    uv_work_t work;
    run_t *run;
    size_t off; /* index of b.items[0] in the request's items */
    int done;
} slice_t;

struct run_s {
    uv_timer_t timer;
    kvcd_l2_t *l2;
    kvcd_l2_req_t *req; /* NULL once the request has been released */
    kvcd_l2_release_cb release;
    slice_t *slices;       /* in the same allocation */
    kvcd_l2_item_t *items; /* private copies, in the same allocation */
    size_t nslices, pending;
    int submitting;   /* inside an async adapter's method call */
    int cb_called;
    int timer_closed;
    uint64_t t0;      /* uv_hrtime() at submit, for the latency histogram */
};

struct kvcd_l2_s {
    uv_loop_t *loop;
    const kvcd_adapter_t *a;
    void *self;
    kvcd_adapter_env_t env;
    char name[96];
    uint64_t timeout_ms;
    size_t inflight;
    int destroying; /* destroy was called with calls in flight */
    int bg_running;
    uv_work_t bg;

    int healthy;
    uint64_t calls[4], items[4], bytes[4];
    kvcd_hist_t latency[4];          /* submit to results, per operation */
    uint64_t failures, timeouts, late, consecutive;
    json_t *item_errors; /* error name -> count of item results */
};

static const char *const op_names[] = {"store", "lookup", "load", "remove"};

typedef void (*op_fn)(void *self, kvcd_l2_batch_t *b);

static op_fn method(const kvcd_adapter_t *a, kvcd_l2_op_t op)
{
    switch (op) {
    case KVCD_L2_STORE:
        return a->store;
    case KVCD_L2_LOOKUP:
        return a->lookup;
    case KVCD_L2_LOAD:
        return a->load;
    case KVCD_L2_REMOVE:
        return a->remove;
    }
    return NULL;
}

static void finalize(kvcd_l2_t *l2)
{
    KVCD_LOG(KVCD_LOG_INFO, "l2", "%s: closed", l2->name);
    if (l2->a->close)
        l2->a->close(l2->self);
    free(l2->self);
    json_decref(l2->item_errors);
    free(l2);
}

static void count_item_error(kvcd_l2_t *l2, int result)
{
    const char *nm = kvcd_errname(result);
    json_t *v = json_object_get(l2->item_errors, nm);

    json_object_set_new(l2->item_errors, nm, json_integer(v ? json_integer_value(v) + 1 : 1));
}

/* Health and counters for a call whose results are final (loop thread). */
static void account(kvcd_l2_t *l2, kvcd_l2_req_t *req, int timed_out, uint64_t t0)
{
    int failed = timed_out, first = 0;
    size_t i, nbad = 0;

    l2->calls[req->op]++;
    l2->items[req->op] += req->n;
    kvcd_hist_observe(&l2->latency[req->op], uv_hrtime() - t0);
    for (i = 0; i < req->n; i++) {
        int r = req->items[i].result;

        if (r == 0 && req->op == KVCD_L2_STORE)
            l2->bytes[req->op] += req->items[i].len;
        else if (r == 0 && req->op == KVCD_L2_LOAD)
            l2->bytes[req->op] += req->items[i].size;
        if (r == 0 || r == KVCD_ENOTFOUND)
            continue;
        if (!nbad++)
            first = r;
        count_item_error(l2, r);
        failed = 1;
    }
    if (timed_out) {
        l2->timeouts++;
        KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "l2", LOG_INTERVAL_MS,
                             "%s: %s of %zu keys timed out", l2->name, op_names[req->op],
                             req->n);
    } else if (nbad) {
        KVCD_LOG_RATELIMITED(KVCD_LOG_WARNING, "l2", LOG_INTERVAL_MS,
                             "%s: %s failed for %zu of %zu keys (first: %s)", l2->name,
                             op_names[req->op], nbad, req->n, kvcd_errname(first));
    }
    if (failed) {
        l2->failures++;
        l2->consecutive++;
        if (l2->healthy && l2->consecutive >= UNHEALTHY_AFTER) {
            l2->healthy = 0;
            KVCD_LOG(KVCD_LOG_WARNING, "l2", "%s: unhealthy after %llu consecutive failed calls",
                     l2->name, (unsigned long long)l2->consecutive);
        }
    } else {
        if (!l2->healthy)
            KVCD_LOG(KVCD_LOG_INFO, "l2", "%s: healthy again", l2->name);
        l2->healthy = 1;
        l2->consecutive = 0;
    }
}

static void timer_closed_cb(uv_handle_t *h)
{
    run_t *run = h->data;

    run->timer_closed = 1;
    if (run->pending == 0)
        free(run);
}

/* The request is answered: by its last slice, or by the deadline. */
static void finish(run_t *run, int timed_out)
{
    kvcd_l2_t *l2 = run->l2;
    kvcd_l2_req_t *req = run->req;
    kvcd_l2_release_cb release = req->release;
    int was_destroying;
    size_t i, j;

    if (timed_out) {
        for (i = 0; i < run->nslices; i++) {
            slice_t *s = &run->slices[i];

            if (s->done)
                continue;
            for (j = 0; j < s->b.n; j++)
                req->items[s->off + j].result = KVCD_ETIMEDOUT;
        }
        req->timed_out = 1;
    }
    if (run->nslices)
        account(l2, req, timed_out, run->t0);
    run->cb_called = 1;
    req->cb_done = 1;
    req->pending = run->pending;
    run->release = release;
    uv_timer_stop(&run->timer);
    uv_close((uv_handle_t *)&run->timer, timer_closed_cb);

    if (run->pending > 0) {
        /* Workers still hold the keys and buffers: release comes with the
         * last slice (retire). The run and the instance stay alive. */
        req->cb(req);
        return;
    }
    run->req = NULL;
    l2->inflight--;
    was_destroying = l2->destroying;
    req->cb(req);
    if (release)
        release(req);
    if (was_destroying && l2->inflight == 0)
        finalize(l2);
}

/* The last slice of an already answered (timed-out) request came back. */
static void retire(run_t *run)
{
    kvcd_l2_t *l2 = run->l2;
    kvcd_l2_req_t *req = run->req;
    kvcd_l2_release_cb release = run->release;
    int was_destroying;

    run->req = NULL;
    l2->late++;
    if (run->timer_closed)
        free(run); /* else timer_closed_cb frees it */
    l2->inflight--;
    was_destroying = l2->destroying;
    if (release)
        release(req);
    if (was_destroying && l2->inflight == 0)
        finalize(l2);
}

static void slice_back(slice_t *s)
{
    run_t *run = s->run;
    size_t i;

    s->done = 1;
    run->pending--;
    if (!run->cb_called) {
        kvcd_l2_item_t *dst = run->req->items + s->off;

        for (i = 0; i < s->b.n; i++) {
            dst[i].result = s->b.items[i].result;
            dst[i].size = s->b.items[i].size;
        }
        run->req->pending = run->pending;
    }
    if (run->pending > 0 || run->submitting)
        return;
    if (!run->cb_called)
        finish(run, 0);
    else
        retire(run);
}

static void timer_cb(uv_timer_t *t)
{
    run_t *run = t->data;

    finish(run, run->pending > 0);
}

/* Async adapters: kvcd_l2_batch_done (loop thread). */
static void async_done(kvcd_l2_batch_t *b)
{
    slice_t *s = b->data;

    if (s->done) {
        KVCD_LOG(KVCD_LOG_ERROR, "l2", "%s: adapter completed a batch twice (ignored)",
                 s->run->l2->name);
        return;
    }
    slice_back(s);
}

/* Blocking adapters complete by returning; a stray kvcd_l2_batch_done from a
 * worker must not touch loop-thread state. */
static void blocking_done(kvcd_l2_batch_t *b)
{
}

static void work_cb(uv_work_t *w)
{
    slice_t *s = container_of(w, slice_t, work);
    kvcd_l2_t *l2 = s->run->l2;

    method(l2->a, s->b.op)(l2->self, &s->b);
}

static void after_work_cb(uv_work_t *w, int status)
{
    slice_t *s = container_of(w, slice_t, work);
    size_t i;

    if (status == UV_ECANCELED)
        for (i = 0; i < s->b.n; i++)
            s->b.items[i].result = KVCD_ECANCELED;
    slice_back(s);
}

static size_t round_up(size_t n, size_t a)
{
    return (n + a - 1) / a * a;
}

static run_t *run_alloc(size_t nslices, size_t n)
{
    size_t off_s = round_up(sizeof(run_t), _Alignof(slice_t));
    size_t off_i = round_up(off_s + nslices * sizeof(slice_t), _Alignof(kvcd_l2_item_t));
    char *p = calloc(1, off_i + n * sizeof(kvcd_l2_item_t));
    run_t *run = (run_t *)p;

    if (!p) {
        KVCD_LOG(KVCD_LOG_ERROR, "l2", "out of memory for an L2 request of %zu keys", n);
        abort();
    }
    run->slices = (slice_t *)(p + off_s);
    run->items = (kvcd_l2_item_t *)(p + off_i);
    run->nslices = run->pending = nslices;
    return run;
}

void kvcd_l2_submit(kvcd_l2_t *l2, kvcd_l2_req_t *req)
{
    size_t i, k = 0, n = req->n;
    uint64_t timeout = req->timeout_ms ? req->timeout_ms : l2->timeout_ms;
    int blocking = (l2->a->flags & KVCD_ADAPTER_BLOCKING) != 0;
    int bad_op = (unsigned)req->op > KVCD_L2_REMOVE;
    int preset = l2->destroying ? KVCD_ESHUTDOWN : bad_op ? KVCD_EUNKNOWNOP : KVCD_EINTERNAL;
    run_t *run;

    req->l2 = l2;
    req->timed_out = 0;
    req->cb_done = 0;
    for (i = 0; i < n; i++) {
        req->items[i].result = preset;
        if (req->op == KVCD_L2_LOOKUP || req->op == KVCD_L2_LOAD)
            req->items[i].size = 0;
    }
    if (bad_op)
        KVCD_LOG(KVCD_LOG_ERROR, "l2", "%s: submit with unknown operation %d", l2->name,
                 (int)req->op);
    if (n > 0 && !l2->destroying && !bad_op)
        k = blocking ? ((size_t)l2->env.max_workers < n ? (size_t)l2->env.max_workers : n) : 1;
    run = run_alloc(k, n);
    run->l2 = l2;
    run->req = req;
    run->t0 = uv_hrtime();
    req->slices = k ? &run->slices[0].b : NULL;
    req->nslices = k;
    req->pending = k;
    req->timer = &run->timer;
    l2->inflight++;
    uv_timer_init(l2->loop, &run->timer);
    run->timer.data = run;

    if (k)
        memcpy(run->items, req->items, n * sizeof(*run->items));
    for (i = 0; i < k; i++) {
        slice_t *s = &run->slices[i];
        size_t lo = i * n / k, hi = (i + 1) * n / k;

        s->run = run;
        s->off = lo;
        s->b.op = req->op;
        s->b.items = run->items + lo;
        s->b.n = hi - lo;
        s->b.deadline_ms = uv_now(l2->loop) + timeout;
        s->b.done_cb = blocking ? blocking_done : async_done;
        s->b.data = s;
    }
    if (blocking) {
        for (i = 0; i < k; i++)
            uv_queue_work(l2->loop, &run->slices[i].work, work_cb, after_work_cb);
    } else if (k) {
        run->submitting = 1;
        method(l2->a, req->op)(l2->self, &run->slices[0].b);
        run->submitting = 0;
    }
    /* Nothing to wait for (no keys, shutting down, or an async adapter that
     * completed inside the call): answer on the next loop turn, never inside
     * submit. */
    uv_timer_start(&run->timer, timer_cb, run->pending ? timeout : 0, 0);
}

/* ---- instances ------------------------------------------------------------- */

static void bg_work(uv_work_t *w)
{
    kvcd_l2_t *l2 = container_of(w, kvcd_l2_t, bg);

    l2->a->background(l2->self);
}

static void bg_after(uv_work_t *w, int status)
{
    kvcd_l2_t *l2 = container_of(w, kvcd_l2_t, bg);

    l2->bg_running = 0;
    KVCD_LOG(KVCD_LOG_DEBUG, "l2", "%s: background task %s", l2->name,
             status == UV_ECANCELED ? "canceled" : "finished");
    l2->inflight--;
    if (l2->destroying && l2->inflight == 0)
        finalize(l2);
}

int kvcd_l2_create(uv_loop_t *loop, const json_t *spec, int index, const kvcd_adapter_env_t *env,
                   uint64_t default_timeout_ms, kvcd_l2_t **out, char *err, size_t errlen)
{
    char aerr[512], known[512];
    const kvcd_adapter_t *a;
    const char *type;
    kvcd_l2_t *l2;
    int rc;

    *out = NULL;
    if (!json_is_object(spec))
        return bad(err, errlen, "--l2-adapter #%d: expected a JSON object", index);
    type = json_string_value(json_object_get(spec, "type"));
    if (!type)
        return bad(err, errlen, "--l2-adapter #%d: type: expected a string", index);
    a = kvcd_l2_find_type(type);
    if (!a) {
        kvcd_l2_type_list(known, sizeof(known));
        return bad(err, errlen, "--l2-adapter #%d: unknown type '%s' (known: %s)", index, type,
                   known);
    }
    l2 = calloc(1, sizeof(*l2));
    if (!l2)
        return bad(err, errlen, "--l2-adapter #%d (%s): out of memory", index, type);
    l2->self = calloc(1, a->instance_size ? a->instance_size : 1);
    l2->item_errors = json_object();
    if (!l2->self || !l2->item_errors) {
        rc = bad(err, errlen, "--l2-adapter #%d (%s): out of memory", index, type);
        goto fail;
    }
    l2->loop = loop;
    l2->a = a;
    snprintf(l2->name, sizeof(l2->name), "#%d (%s)", index, a->name);
    if (env)
        l2->env = *env;
    l2->env.loop = loop;
    l2->env.instance = l2->name;
    if (l2->env.max_workers <= 0)
        l2->env.max_workers = 1;
    if (!l2->env.arena_align)
        l2->env.arena_align = 4096;
    l2->timeout_ms = default_timeout_ms ? default_timeout_ms : DEFAULT_TIMEOUT_MS;
    l2->healthy = 1;

    aerr[0] = '\0';
    rc = a->init(l2->self, spec, &l2->env, aerr, sizeof(aerr));
    if (rc != 0) {
        /* init releases what it acquired before failing */
        bad(err, errlen, "--l2-adapter #%d (%s): %s", index, a->name,
            aerr[0] ? aerr : kvcd_strerror(rc));
        rc = rc < 0 ? rc : KVCD_ECONFIG;
        goto fail;
    }
    KVCD_LOG(KVCD_LOG_INFO, "l2", "%s: ready (timeout %llu ms, %d workers)", l2->name,
             (unsigned long long)l2->timeout_ms, l2->env.max_workers);
    if ((a->flags & KVCD_ADAPTER_BLOCKING) && a->background) {
        l2->bg_running = 1;
        l2->inflight++;
        uv_queue_work(loop, &l2->bg, bg_work, bg_after);
    }
    *out = l2;
    return 0;

fail:
    json_decref(l2->item_errors);
    free(l2->self);
    free(l2);
    return rc;
}

size_t kvcd_l2_inflight(const kvcd_l2_t *l2)
{
    return l2->inflight;
}

const kvcd_adapter_t *kvcd_l2_adapter(const kvcd_l2_t *l2)
{
    return l2->a;
}

const char *kvcd_l2_name(const kvcd_l2_t *l2)
{
    return l2->name;
}

int kvcd_l2_healthy(const kvcd_l2_t *l2)
{
    return l2->healthy;
}

json_t *kvcd_l2_status(kvcd_l2_t *l2)
{
    json_t *o = json_object(), *ops = json_object();
    json_t *h;
    uint64_t calls = 0;
    int adapter_healthy = 1;
    size_t i;

    if (l2->a->status)
        l2->a->status(l2->self, o);
    h = json_object_get(o, "healthy");
    if (h && json_is_false(h))
        adapter_healthy = 0;
    for (i = 0; i < 4; i++) {
        calls += l2->calls[i];
        json_object_set_new(ops, op_names[i],
                            json_pack("{s:I, s:I, s:I, s:o*}", "calls", (json_int_t)l2->calls[i],
                                      "keys", (json_int_t)l2->items[i], "bytes",
                                      (json_int_t)l2->bytes[i], "latency",
                                      l2->calls[i] ? kvcd_hist_json(&l2->latency[i]) : NULL));
    }
    json_object_set_new(o, "name", json_string(l2->name));
    json_object_set_new(o, "type", json_string(l2->a->name));
    json_object_set_new(o, "healthy", json_boolean(l2->healthy && adapter_healthy));
    json_object_set_new(o, "calls", json_integer((json_int_t)calls));
    json_object_set_new(o, "failures", json_integer((json_int_t)l2->failures));
    json_object_set_new(o, "timeouts", json_integer((json_int_t)l2->timeouts));
    json_object_set_new(o, "late_completions", json_integer((json_int_t)l2->late));
    json_object_set_new(o, "consecutive_failures", json_integer((json_int_t)l2->consecutive));
    json_object_set_new(o, "inflight", json_integer((json_int_t)l2->inflight));
    json_object_set_new(o, "ops", ops);
    json_object_set_new(o, "item_errors", json_deep_copy(l2->item_errors));
    return o;
}

void kvcd_l2_destroy(kvcd_l2_t *l2)
{
    if (!l2 || l2->destroying)
        return;
    if (l2->inflight > 0) {
        /* A caller bug, but not worth a crash: close once the calls return. */
        KVCD_LOG(KVCD_LOG_WARNING, "l2", "%s: destroyed with %zu calls in flight; closing when "
                 "they return", l2->name, l2->inflight);
        l2->destroying = 1;
        if (l2->bg_running)
            uv_cancel((uv_req_t *)&l2->bg);
        return;
    }
    finalize(l2);
}
