/*
 * fault.c - a wrapper adapter that injects failures, delays and corruption.
 *
 * {"type":"fault","inner":{"type":"mock"},
 *  "fail":{"store":0.1}, "fail_calls":{"load":[0,3]}, "delay_ms":{"lookup":50},
 *  "corrupt":{"load":0.5}, "error":"EIO", "seed":1}
 *
 * It creates the inner adapter itself (through the registry) and forwards
 * every call to it, after deciding per call and per key what goes wrong:
 *  - delay_ms: the call sleeps first (so deadlines can pass);
 *  - fail_calls: every key of that call (0-based count of this operation's
 *    calls on this instance) fails; fail: each key fails with probability P.
 *    A failed key gets `error` and is NOT forwarded, so a failed store is
 *    never visible through the inner adapter afterwards;
 *  - corrupt (load only): the key is loaded, then a byte of the buffer is
 *    flipped and the result set to KVCD_ECHECKSUM, modelling an adapter that
 *    detected corruption on read.
 * The choices are a pure function of (seed, operation, call index, key index),
 * so runs are reproducible however the threadpool schedules the calls. Note
 * that the runner may split one request into several calls (one per worker).
 *
 * Blocking, like the inner adapter must be. Counters are atomics.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapters/adapter.h"

#define NOPS 4
#define MAX_FAIL_CALLS 4096

typedef struct {
    const kvcd_adapter_t *ia;
    void *inner;
    char instance[128]; /* the inner's name in its log lines */

    double fail_p[NOPS];
    uint64_t *fail_calls[NOPS];
    size_t nfail_calls[NOPS];
    uint64_t delay_ms[NOPS];
    double corrupt_p; /* load */
    int error;
    uint64_t seed;
    /* the spec's sub-objects, borrowed during init */
    const json_t *ispec, *fail_o, *fail_calls_o, *delay_o, *corrupt_o;
    const kvcd_core_services_t *svc;

    uint64_t calls[NOPS];    /* atomics from here on */
    uint64_t injected[NOPS]; /* keys failed */
    uint64_t delayed[NOPS];  /* calls delayed */
    uint64_t corrupted;      /* keys corrupted */
} fault_t;

static const char *const op_names[NOPS] = {"store", "lookup", "load", "remove"};

static const kvcd_adapter_field_t fields[] = {
    {KVCD_FIELD("inner", KVCD_FIELD_OBJECT, fault_t, ispec), .flags = KVCD_FIELD_REQUIRED,
     .doc = "the spec of the adapter to wrap; it must be a blocking adapter"},
    {KVCD_FIELD("fail", KVCD_FIELD_OBJECT, fault_t, fail_o), .dflt = "{}",
     .doc = "per operation (store, lookup, load, remove): probability 0..1 that each key fails"},
    {KVCD_FIELD("fail_calls", KVCD_FIELD_OBJECT, fault_t, fail_calls_o), .dflt = "{}",
     .doc = "per operation: array of 0-based call indices in which every key fails"},
    {KVCD_FIELD("delay_ms", KVCD_FIELD_OBJECT, fault_t, delay_o), .dflt = "{}",
     .doc = "per operation: milliseconds to sleep before each call"},
    {KVCD_FIELD("corrupt", KVCD_FIELD_OBJECT, fault_t, corrupt_o), .dflt = "{}",
     .doc = "{\"load\":P}: probability that a loaded key is scribbled and reported ECHECKSUM"},
    {KVCD_FIELD("error", KVCD_FIELD_ERRNAME, fault_t, error), .dflt = "\"EIO\"",
     .doc = "error name given to failed keys (EIO, ENOSPC, ENOTFOUND, ...)"},
    {KVCD_FIELD("seed", KVCD_FIELD_INT, fault_t, seed), .min = -9223372036854775808.0,
     .dflt = "1", .doc = "seed of the deterministic per-key choices"},
    {.name = NULL},
};

static int op_index(const char *name)
{
    int i;

    for (i = 0; i < NOPS; i++)
        if (strcmp(name, op_names[i]) == 0)
            return i;
    return -1;
}

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1), a function of its arguments only. */
static double draw(const fault_t *f, int op, uint64_t call, size_t key, int what)
{
    uint64_t h = mix(f->seed);

    h = mix(h ^ ((uint64_t)op << 8 | (uint64_t)what));
    h = mix(h ^ call);
    h = mix(h ^ key);
    return (double)(h >> 11) * 0x1.0p-53;
}

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* An object whose keys are operation names, each value checked by `one`. */
static int parse_ops(fault_t *f, const char *field, const json_t *obj,
                     int (*one)(fault_t *f, int op, const char *field, const json_t *v, char *err,
                                size_t errlen),
                     char *err, size_t errlen)
{
    const char *k;
    json_t *v;
    int op, rc;

    if (!json_is_object(obj))
        return f->svc->errf(err, errlen, KVCD_ECONFIG, "%s: expected an object keyed by operation "
                    "(store, lookup, load, remove)", field);
    json_object_foreach((json_t *)obj, k, v) {
        op = op_index(k);
        if (op < 0)
            return f->svc->errf(err, errlen, KVCD_ECONFIG, "%s.%s: unknown operation (store, lookup, load, remove)",
                        field, k);
        rc = one(f, op, field, v, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

static int one_calls(fault_t *f, int op, const char *field, const json_t *v, char *err,
                     size_t errlen)
{
    size_t i, n;

    if (!json_is_array(v))
        return f->svc->errf(err, errlen, KVCD_ECONFIG, "fail_calls.%s: expected an array of call indices",
                    op_names[op]);
    n = json_array_size(v);
    if (n > MAX_FAIL_CALLS)
        return f->svc->errf(err, errlen, KVCD_ECONFIG, "fail_calls.%s: at most %d indices", op_names[op],
                    MAX_FAIL_CALLS);
    free(f->fail_calls[op]);
    f->fail_calls[op] = calloc(n ? n : 1, sizeof(uint64_t));
    f->nfail_calls[op] = 0;
    if (!f->fail_calls[op])
        return -ENOMEM;
    for (i = 0; i < n; i++) {
        json_t *x = json_array_get(v, i);

        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return f->svc->errf(err, errlen, KVCD_ECONFIG, "fail_calls.%s[%zu]: expected a non-negative integer",
                        op_names[op], i);
        f->fail_calls[op][f->nfail_calls[op]++] = (uint64_t)json_integer_value(x);
    }
    return 0;
}

static void release_parsed(fault_t *f)
{
    int i;

    for (i = 0; i < NOPS; i++) {
        free(f->fail_calls[i]);
        f->fail_calls[i] = NULL;
    }
}

/* The per-operation sub-objects (the core parser checked they are objects). */
#define OPF(nm, ty, member) KVCD_FIELD(nm, ty, fault_t, member)

/* The per-operation objects are field tables of their own. */
static const kvcd_adapter_field_t fail_fields[] = {
    {OPF("store", KVCD_FIELD_NUMBER, fail_p[KVCD_L2_STORE]), .max = 1},
    {OPF("lookup", KVCD_FIELD_NUMBER, fail_p[KVCD_L2_LOOKUP]), .max = 1},
    {OPF("load", KVCD_FIELD_NUMBER, fail_p[KVCD_L2_LOAD]), .max = 1},
    {OPF("remove", KVCD_FIELD_NUMBER, fail_p[KVCD_L2_REMOVE]), .max = 1},
    {.name = NULL},
};

static const kvcd_adapter_field_t corrupt_fields[] = {
    {OPF("load", KVCD_FIELD_NUMBER, corrupt_p), .max = 1}, /* only loads can be corrupted */
    {.name = NULL},
};

static const kvcd_adapter_field_t delay_fields[] = {
    {OPF("store", KVCD_FIELD_INT, delay_ms[KVCD_L2_STORE]), .max = 3600000},
    {OPF("lookup", KVCD_FIELD_INT, delay_ms[KVCD_L2_LOOKUP]), .max = 3600000},
    {OPF("load", KVCD_FIELD_INT, delay_ms[KVCD_L2_LOAD]), .max = 3600000},
    {OPF("remove", KVCD_FIELD_INT, delay_ms[KVCD_L2_REMOVE]), .max = 3600000},
    {.name = NULL},
};

#undef OPF

/* The per-operation sub-objects (the core parser checked they are objects). */
static int parse(fault_t *f, char *err, size_t errlen)
{
    const kvcd_core_services_t *svc = f->svc;
    int rc = svc->fields_parse(fail_fields, "fail", f->fail_o, f, "fail.", err, errlen);

    if (rc == 0)
        rc = svc->fields_parse(corrupt_fields, "corrupt", f->corrupt_o, f, "corrupt.", err,
                               errlen);
    if (rc == 0)
        rc = svc->fields_parse(delay_fields, "delay_ms", f->delay_o, f, "delay_ms.", err, errlen);
    if (rc == 0)
        rc = parse_ops(f, "fail_calls", f->fail_calls_o, one_calls, err, errlen);
    return rc;
}

static int make_inner(fault_t *f, const kvcd_adapter_env_t *env, char *err, size_t errlen)
{
    const json_t *is = f->ispec;
    kvcd_adapter_env_t ienv = *env;
    char known[256], ierr[384];
    const char *type;
    int rc;

    type = json_string_value(json_object_get(is, "type"));
    if (!type)
        return f->svc->errf(err, errlen, KVCD_ECONFIG, "inner: type: expected a string");
    f->ia = f->svc->adapter_find(type);
    if (!f->ia) {
        f->svc->adapter_list(known, sizeof(known));
        return f->svc->errf(err, errlen, KVCD_ECONFIG, "inner: unknown type '%s' (known: %s)", type, known);
    }
    if (!(f->ia->flags & KVCD_ADAPTER_BLOCKING))
        return f->svc->errf(err, errlen, KVCD_ECONFIG,
                    "inner: adapter '%s' is not blocking (fault wraps blocking adapters only)",
                    type);
    f->inner = calloc(1, f->ia->instance_size ? f->ia->instance_size : 1);
    if (!f->inner)
        return -ENOMEM;
    snprintf(f->instance, sizeof(f->instance), "%s inner", env->instance ? env->instance : "");
    ienv.instance = f->instance;
    ierr[0] = '\0';
    rc = f->svc->instance_init(f->ia, f->inner, is, &ienv, ierr, sizeof(ierr));
    if (rc != 0) {
        free(f->inner);
        f->inner = NULL;
        f->svc->errf(err, errlen, KVCD_ECONFIG, "inner (%s): %s", type, ierr[0] ? ierr : f->svc->strerror(rc));
        return rc < 0 ? rc : KVCD_ECONFIG;
    }
    return 0;
}

static int init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *err,
                size_t errlen)
{
    fault_t *f = self;
    int rc;

    f->svc = env->svc;
    rc = parse(f, err, errlen);
    if (rc == 0)
        rc = make_inner(f, env, err, errlen);
    if (rc != 0)
        release_parsed(f);
    return rc;
}

static int in_list(const uint64_t *v, size_t n, uint64_t x)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (v[i] == x)
            return 1;
    return 0;
}

static void (*inner_method(const kvcd_adapter_t *a, int op))(void *, kvcd_l2_batch_t *)
{
    switch (op) {
    case KVCD_L2_STORE:
        return a->store;
    case KVCD_L2_LOOKUP:
        return a->lookup;
    case KVCD_L2_LOAD:
        return a->load;
    default:
        return a->remove;
    }
}

static void run(fault_t *f, kvcd_l2_batch_t *b)
{
    int op = (int)b->op;
    uint64_t call = __atomic_fetch_add(&f->calls[op], 1, __ATOMIC_RELAXED);
    int whole = in_list(f->fail_calls[op], f->nfail_calls[op], call);
    kvcd_l2_item_t *pass = NULL;
    kvcd_l2_batch_t ib = *b;
    size_t *idx = NULL, i, m = 0, nfail = 0;

    if (f->delay_ms[op]) {
        __atomic_add_fetch(&f->delayed[op], 1, __ATOMIC_RELAXED);
        sleep_ms(f->delay_ms[op]);
    }
    for (i = 0; i < b->n; i++)
        if (whole || (f->fail_p[op] > 0 && draw(f, op, call, i, 0) < f->fail_p[op]))
            nfail++;
    if (nfail) {
        /* forward only the keys that do not fail */
        if (nfail < b->n) {
            pass = malloc((b->n - nfail) * sizeof(*pass));
            idx = malloc((b->n - nfail) * sizeof(*idx));
            if (!pass || !idx) {
                for (i = 0; i < b->n; i++)
                    b->items[i].result = -ENOMEM;
                goto out;
            }
        }
        for (i = 0; i < b->n; i++) {
            if (whole || (f->fail_p[op] > 0 && draw(f, op, call, i, 0) < f->fail_p[op])) {
                b->items[i].result = f->error;
            } else {
                pass[m] = b->items[i];
                idx[m++] = i;
            }
        }
        __atomic_add_fetch(&f->injected[op], nfail, __ATOMIC_RELAXED);
        ib.items = pass;
        ib.n = m;
    }
    if (ib.n)
        inner_method(f->ia, op)(f->inner, &ib);
    for (i = 0; i < m; i++) {
        b->items[idx[i]].result = pass[i].result;
        b->items[idx[i]].size = pass[i].size;
    }
    if (op == KVCD_L2_LOAD && f->corrupt_p > 0) {
        for (i = 0; i < b->n; i++) {
            kvcd_l2_item_t *it = &b->items[i];

            if (it->result != 0 || draw(f, op, call, i, 1) >= f->corrupt_p)
                continue;
            if (it->size)
                ((unsigned char *)it->buf)[it->size / 2] ^= 0x5a;
            it->result = KVCD_ECHECKSUM;
            __atomic_add_fetch(&f->corrupted, 1, __ATOMIC_RELAXED);
        }
    }
out:
    free(pass);
    free(idx);
}

static void store(void *self, kvcd_l2_batch_t *b)
{
    run(self, b);
}

static void lookup(void *self, kvcd_l2_batch_t *b)
{
    run(self, b);
}

static void load(void *self, kvcd_l2_batch_t *b)
{
    run(self, b);
}

static void remove_(void *self, kvcd_l2_batch_t *b)
{
    run(self, b);
}

static void status(void *self, json_t *out)
{
    fault_t *f = self;
    json_t *in = json_object(), *inj = json_object(), *del = json_object(), *calls = json_object();
    json_t *h;
    int i;

    if (f->ia->status)
        f->ia->status(f->inner, in);
    for (i = 0; i < NOPS; i++) {
        json_object_set_new(inj, op_names[i], json_integer((json_int_t)__atomic_load_n(
                                                  &f->injected[i], __ATOMIC_RELAXED)));
        json_object_set_new(del, op_names[i], json_integer((json_int_t)__atomic_load_n(
                                                  &f->delayed[i], __ATOMIC_RELAXED)));
        json_object_set_new(calls, op_names[i], json_integer((json_int_t)__atomic_load_n(
                                                    &f->calls[i], __ATOMIC_RELAXED)));
    }
    h = json_object_get(in, "healthy");
    json_object_set_new(out, "healthy", json_boolean(!h || !json_is_false(h)));
    json_object_set_new(out, "adapter_calls", calls);
    json_object_set_new(out, "injected_failures", inj);
    json_object_set_new(out, "delayed_calls", del);
    json_object_set_new(out, "injected_corruptions",
                        json_integer((json_int_t)__atomic_load_n(&f->corrupted,
                                                                 __ATOMIC_RELAXED)));
    json_object_set_new(out, "inner", in);
}

static void close_(void *self)
{
    fault_t *f = self;

    if (f->ia->close)
        f->ia->close(f->inner);
    free(f->inner);
    release_parsed(f);
}

/* Forward the inner adapter's start-up task, if it has one. */
static void background(void *self)
{
    fault_t *f = self;

    if (f->ia->background)
        f->ia->background(f->inner);
}

const kvcd_adapter_t kvcd_adapter_fault = {
    KVCD_ADAPTER_HEADER("fault", fault_t, KVCD_ADAPTER_BLOCKING),
    .doc = "wraps a blocking adapter and injects failures, delays and corruption (tests)",
    .fields = fields,
    .init = init,
    .store = store,
    .lookup = lookup,
    .load = load,
    .remove = remove_,
    .status = status,
    .close = close_,
    .background = background,
};
