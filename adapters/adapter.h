/*
 * adapter.h - the L2 adapter ABI.
 *
 * An adapter is one `const kvcd_adapter_t` object, modelled on sqlite3_vfs and
 * ngx_module_t: it starts with an ABI version and its own size, and fields are only
 * ever added at the end. The core allocates `instance_size` bytes per configured
 * instance (zeroed) and hands them to every method as `self`.
 *
 * Built-in adapters are files adapters/<name>.c defining
 *     const kvcd_adapter_t kvcd_adapter_<name> = { KVCD_ADAPTER_HEADER(...), ... };
 * and nothing else exported; the build writes the table of them. Out-of-tree
 * adapters are shared objects exporting `kvcd_adapter_entry` (a function returning
 * the adapter) loaded by `--plugin`.
 *
 * Calls are batched: one call handles many keys and completes once, with a
 * per-key result in each item.
 *
 * Blocking adapters (KVCD_ADAPTER_BLOCKING): store/lookup/load/remove run on a
 * libuv threadpool worker, may block, and complete by returning. The core may split
 * one request's keys into several batches running on several workers at once, so
 * these methods must be safe to call concurrently on one instance. They never see
 * libuv and never touch daemon state.
 *
 * Asynchronous adapters (no BLOCKING flag): the methods are called on the loop
 * thread, must not block, and complete by calling kvcd_l2_batch_done(b) exactly
 * once, later, on the loop thread (env->loop is the daemon's uv_loop_t).
 *
 * init, status and close always run on the loop thread; close is called only when no
 * call is in flight. A batch's keys and buffers stay valid until it completes, even
 * when the core has stopped waiting for it (deadline passed): a late completion is
 * discarded by the core, never written into memory that was reused.
 */
#ifndef KVCD_ADAPTER_H
#define KVCD_ADAPTER_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "protocol/key.h"
#include "protocol/kvcd_err.h"

#define KVCD_ADAPTER_ABI_VERSION 1

/* flags */
#define KVCD_ADAPTER_BLOCKING 0x1u   /* run methods on the threadpool */
#define KVCD_ADAPTER_PERSISTENT 0x2u /* survives restarts: flush write-behind to it */

typedef struct kvcd_adapter_s kvcd_adapter_t;
typedef struct kvcd_l2_batch_s kvcd_l2_batch_t;

/* What the core tells an instance at init. */
typedef struct {
    void *loop;             /* uv_loop_t * of the daemon (async adapters) */
    void *arena_base;       /* the L1 arena, for registering memory with a transport */
    size_t arena_size;
    size_t arena_align;     /* every L1 buffer is aligned to this (4096) */
    int max_workers;        /* threadpool size */
    const char *instance;   /* e.g. "#1 (fs)", for log lines */
} kvcd_adapter_env_t;

/* One key of a batch. */
typedef struct {
    kvcd_key_t key;     /* borrowed; valid until the batch completes */
    void *buf;          /* store: bytes to write; load: destination */
    size_t len;         /* store: bytes in buf; load: capacity of buf (= size
                           from lookup); lookup: 0 on input */
    size_t size;        /* lookup and load out: the object's payload size */
    int result;         /* out: 0 ok/hit, KVCD_ENOTFOUND miss, KVCD_ECHECKSUM,
                           -errno, ...; the core presets KVCD_EINTERNAL */
} kvcd_l2_item_t;

typedef enum {
    KVCD_L2_STORE = 0,
    KVCD_L2_LOOKUP = 1,
    KVCD_L2_LOAD = 2,
    KVCD_L2_REMOVE = 3,
} kvcd_l2_op_t;

struct kvcd_l2_batch_s {
    kvcd_l2_op_t op;
    kvcd_l2_item_t *items;
    size_t n;
    uint64_t deadline_ms;   /* uv_now() based; adapters may use it to give up */
    /* ---- private to the core ---- */
    void (*done_cb)(kvcd_l2_batch_t *b);
    void *data;
};

/* Async adapters: signal completion (loop thread). */
static inline void kvcd_l2_batch_done(kvcd_l2_batch_t *b) { b->done_cb(b); }

/* One documented configuration field, for `kvcd --help-adapter TYPE`. */
typedef struct {
    const char *name;
    const char *type;     /* "string", "integer", "number", "boolean", "object", ... */
    const char *dflt;     /* default as text, or NULL when required */
    const char *doc;
} kvcd_adapter_field_t;

struct kvcd_adapter_s {
    uint32_t abi_version;           /* KVCD_ADAPTER_ABI_VERSION */
    uint32_t struct_size;           /* sizeof(kvcd_adapter_t) when built */
    const char *name;               /* the JSON "type" */
    size_t instance_size;           /* bytes of `self` */
    uint32_t flags;                 /* KVCD_ADAPTER_* */
    const char *doc;                /* one line */
    const kvcd_adapter_field_t *fields; /* NULL-name-terminated */

    /* Parse and validate spec (the whole JSON object, "type" included); reject
     * unknown fields. On error return KVCD_ECONFIG (or -errno) and write
     * "field: what is wrong" into err. self is zeroed. Loop thread. */
    int (*init)(void *self, const json_t *spec, const kvcd_adapter_env_t *env,
                char *err, size_t errlen);
    void (*store)(void *self, kvcd_l2_batch_t *b);
    void (*lookup)(void *self, kvcd_l2_batch_t *b);
    void (*load)(void *self, kvcd_l2_batch_t *b);
    void (*remove)(void *self, kvcd_l2_batch_t *b);
    /* Fill `out` (a JSON object) with health and usage: at least "healthy"
     * (boolean). Loop thread, concurrently with blocking calls. May be NULL. */
    void (*status)(void *self, json_t *out);
    /* Release everything. No call in flight. May be NULL. */
    void (*close)(void *self);
    /* Optional: run once on a worker after init (a start-up scan that must not
     * delay readiness). Blocking adapters only. May be NULL. */
    void (*background)(void *self);
};

#define KVCD_ADAPTER_HEADER(nm, type_, flags_)                                  \
    .abi_version = KVCD_ADAPTER_ABI_VERSION, .struct_size = sizeof(kvcd_adapter_t), \
    .name = (nm), .instance_size = sizeof(type_), .flags = (flags_)

/* For init: write "field: what is wrong" into err and return KVCD_ECONFIG. */
static inline int kvcd_adapter_config_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline int kvcd_adapter_config_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return KVCD_ECONFIG;
}

/* Out-of-tree adapters export this symbol. */
typedef const kvcd_adapter_t *(*kvcd_adapter_entry_fn)(void);
#define KVCD_ADAPTER_ENTRY_SYMBOL "kvcd_adapter_entry"

/* The built-in table, written by the build. NULL-terminated. */
extern const kvcd_adapter_t *const kvcd_builtin_adapters[];

#endif
