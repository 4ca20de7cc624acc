/*
 * adapter.h - the L2 adapter ABI, version 2.
 *
 * An adapter is one `const kvcd_adapter_t` object, modelled on sqlite3_vfs and
 * ngx_module_t: it starts with an ABI version, its own size and the layout of
 * every other struct that crosses the ABI as the adapter saw them when it was
 * built (kvcd_abi_layout_t, nginx's NGX_MODULE_SIGNATURE); fields are only
 * ever added at the end. The registry refuses, with a message that says why,
 * an adapter whose ABI version, struct sizes or flag bits this kvcd does not
 * know, so a plugin built against another kvcd either works or is refused
 * cleanly at --plugin, never half-works.
 *
 * Built-in adapters are files adapters/<name>.c defining
 *     const kvcd_adapter_t kvcd_adapter_<name> = { KVCD_ADAPTER_HEADER(...), ... };
 * and nothing else exported; the build writes the table of them. Out-of-tree
 * adapters are shared objects exporting `kvcd_adapter_entry` (a function returning
 * the adapter) loaded by `--plugin`. A plugin needs this header and nothing
 * else of kvcd: it calls the core only through the services table that init
 * receives (env->svc, SQLite's sqlite3_api_routines), never through code of
 * the core compiled into it.
 *
 * Spec fields are declarative (nginx's ngx_command_t): `fields` lists each
 * field's name, type, where its value goes in the instance (`self`), bounds,
 * default and help. One core parser validates every spec against it before
 * init runs: it rejects unknown fields (naming them and the known ones),
 * checks types and bounds, applies the defaults and writes the values into
 * `self`; `kvcd --help-adapter` prints the same table. init keeps only checks
 * across fields. Blocking adapters also accept the runner's fields "workers"
 * and "max_queue" (their executor); the adapter never sees them.
 *
 * Calls are batched: one call handles many keys and completes once, with a
 * per-key result in each item.
 *
 * Blocking adapters (KVCD_ADAPTER_BLOCKING): store/lookup/load/remove run on
 * the instance's own executor threads, may block, and complete by returning.
 * The core may split one request's keys into several batches running at once
 * (up to "workers", capped by `max_concurrency`), so these methods must be
 * safe to call concurrently on one instance unless max_concurrency is 1. They
 * never see libuv and never touch daemon state.
 *
 * Asynchronous adapters (no BLOCKING flag): the methods are called on the loop
 * thread, must not block, and complete by calling env->svc->batch_done(b)
 * exactly once, later, on the loop thread (env->loop is the daemon's uv_loop_t).
 *
 * init, status and close always run on the loop thread; close is called only when no
 * call is in flight. A batch's keys and buffers stay valid until it completes, even
 * when the core has stopped waiting for it (deadline passed): a late completion is
 * discarded by the core, never written into memory that was reused.
 */
#ifndef KVCD_ADAPTER_H
#define KVCD_ADAPTER_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "protocol/key.h"
#include "protocol/kvcd_err.h"

/* 2: declarative fields, the services table, the layout signature. */
#define KVCD_ADAPTER_ABI_VERSION 2

/* flags */
#define KVCD_ADAPTER_BLOCKING 0x1u   /* run methods on the instance's executor */
#define KVCD_ADAPTER_PERSISTENT 0x2u /* survives restarts: flush write-behind to it */
#define KVCD_ADAPTER_KNOWN_FLAGS (KVCD_ADAPTER_BLOCKING | KVCD_ADAPTER_PERSISTENT)

typedef struct kvcd_adapter_s kvcd_adapter_t;
typedef struct kvcd_l2_batch_s kvcd_l2_batch_t;
typedef struct kvcd_core_services_s kvcd_core_services_t;

/* One key of a batch. Passed as an array: its size is part of the layout. */
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

/* The op of a batch handed to the optional `touch` method. Outside the enum so
 * that switches over the four calls above stay exhaustive. */
#define KVCD_L2_TOUCH ((kvcd_l2_op_t)4)

struct kvcd_l2_batch_s {
    kvcd_l2_op_t op;
    kvcd_l2_item_t *items;
    size_t n;
    uint64_t deadline_ms;   /* svc->now_ms() based; adapters may use it to give up */
    void *core_;            /* private to the core */
};

/* ---- declarative spec fields ---- */

typedef enum {
    KVCD_FIELD_STRING = 1, /* const char *: borrowed from the spec, valid during init
                              only (copy what you keep); max = longest length (0: any) */
    KVCD_FIELD_INT,        /* int64_t (or uint64_t when min >= 0) in [min, max] */
    KVCD_FIELD_INT32,      /* int32_t in [min, max] */
    KVCD_FIELD_NUMBER,     /* double in [min, max] (finite) */
    KVCD_FIELD_BOOL,       /* bool */
    KVCD_FIELD_MODE,       /* uint32_t: a file mode, octal string ("0600") or integer,
                              <= 0777; min = bits that must be set */
    KVCD_FIELD_ENUM,       /* int: index in `choices` of the string given */
    KVCD_FIELD_ERRNAME,    /* int: the code of a kvcd error name ("EIO") */
    KVCD_FIELD_OBJECT,     /* const json_t *: borrowed, valid during init only */
    KVCD_FIELD_ARRAY,      /* const json_t *: borrowed, valid during init only */
} kvcd_field_type_t;

/* field flags */
#define KVCD_FIELD_REQUIRED 0x1u   /* no default: a spec without it is refused */
#define KVCD_FIELD_NONEMPTY 0x2u   /* STRING, ARRAY: at least one byte / element */
#define KVCD_FIELD_ABOVE_MIN 0x4u  /* INT, NUMBER: strictly greater than min */
#define KVCD_FIELD_DEPRECATED 0x8u /* accepted, warned about (doc says why), not stored */
#define KVCD_FIELD_KNOWN_FLAGS 0xfu

/* One spec field. A table of them ends with a NULL name; its stride is part of
 * the layout. The core checks the table when the adapter is registered (types,
 * offsets inside instance_size, defaults that pass their own checks). */
typedef struct {
    const char *name;
    uint32_t type;        /* kvcd_field_type_t */
    uint32_t flags;       /* KVCD_FIELD_* */
    size_t offset;        /* where the value goes in `self` (offsetof) */
    double min, max;      /* bounds, see the types; max 0 = none for INT/STRING */
    const char *dflt;     /* default as JSON text ("65536", "\".tmp\"", "true"), or
                             NULL: the field stays zero (or is REQUIRED) */
    const char *doc;      /* one line for --help-adapter */
    const char *const *choices; /* ENUM: the allowed strings, NULL-terminated */
    const char *dflt_doc; /* the default as --help-adapter says it, when dflt is
                             NULL or says too little ("5 if min_free_gb is unset") */
} kvcd_adapter_field_t;

#define KVCD_FIELD(nm, ty, type_, member) \
    .name = (nm), .type = (ty), .offset = offsetof(type_, member)

/* ---- what the core gives an instance ---- */

typedef struct kvcd_adapter_env_s kvcd_adapter_env_t;

/* Log levels of svc->log (the daemon's own). */
#define KVCD_ALOG_DEBUG 0
#define KVCD_ALOG_INFO 1
#define KVCD_ALOG_WARNING 2
#define KVCD_ALOG_ERROR 3

/* State of one rate-limited log call site (static, zeroed). */
typedef struct {
    uint64_t next_ms;
    uint64_t suppressed;
} kvcd_alog_limit_t;

typedef struct kvcd_atimer_s kvcd_atimer_t; /* a core timer (loop thread) */
typedef void (*kvcd_atimer_cb)(void *data);

/* The core's functions for adapters. Versioned by its size: fields are only
 * added at the end, and a plugin built against a larger table is refused. */
struct kvcd_core_services_s {
    uint32_t struct_size;
    /* Async adapters: b is complete (loop thread, exactly once). For a blocking
     * adapter it is ignored: those complete by returning. */
    void (*batch_done)(kvcd_l2_batch_t *b);
    /* One line "time level module: message"; any thread. */
    int (*log_enabled)(int level);
    void (*log)(int level, const char *module, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
    /* 1 when this call site may log now (at most one line per interval_ms);
     * *suppressed: lines dropped since the last one. Any thread. */
    int (*log_ratelimit)(kvcd_alog_limit_t *rl, uint64_t interval_ms, uint64_t *suppressed);
    /* Milliseconds, CLOCK_MONOTONIC: the clock of deadline_ms. Any thread. */
    uint64_t (*now_ms)(void);
    /* One-shot timers on the daemon's loop (loop thread only). timer_new
     * returns NULL without memory; timer_free may be called from the callback
     * and stops the timer. */
    kvcd_atimer_t *(*timer_new)(const kvcd_adapter_env_t *env, kvcd_atimer_cb cb, void *data);
    void (*timer_start)(kvcd_atimer_t *t, uint64_t ms);
    void (*timer_stop)(kvcd_atimer_t *t);
    void (*timer_free)(kvcd_atimer_t *t);
    /* "field: what is wrong" into err (vsnprintf); returns code. Any thread. */
    int (*errf)(char *err, size_t errlen, int code, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
    const char *(*strerror)(int code);
    int (*errcode)(const char *name); /* a kvcd error name to its code; 0 unknown */
    /* Wrapping adapters (fault): find an adapter type, list the known ones,
     * create an instance of one from a spec (parsed like any spec, without the
     * runner's fields, then the adapter's init) and close it again (its close,
     * nothing else: `self` is the caller's). Loop thread. */
    const kvcd_adapter_t *(*adapter_find)(const char *type);
    void (*adapter_list)(char *buf, size_t buflen);
    int (*instance_init)(const kvcd_adapter_t *a, void *self, const json_t *spec,
                         const kvcd_adapter_env_t *env, char *err, size_t errlen);
    /* Parse one object inside a spec (an array element such as redis's
     * nodes[i]) against a field table, with the parser's checks and wording;
     * messages name fields as pfx + name ("nodes[1].port"), `what` says what
     * the object is in the unknown-field message. Defaults are not applied.
     * 0 or KVCD_ECONFIG. Loop thread. */
    int (*fields_parse)(const kvcd_adapter_field_t *table, const char *what, const json_t *obj,
                        void *dst, const char *pfx, char *err, size_t errlen);
};

/* What the core tells an instance at init. Filled by the core: a plugin built
 * against a larger one is refused. */
struct kvcd_adapter_env_s {
    uint32_t struct_size;
    const kvcd_core_services_t *svc; /* never NULL */
    void *loop;             /* uv_loop_t * of the daemon (async adapters) */
    void *arena_base;       /* the L1 arena, for registering memory with a transport */
    size_t arena_size;
    size_t arena_align;     /* every L1 buffer is aligned to this (4096) */
    int max_workers;        /* threads of this instance's executor (1 for async) */
    const char *instance;   /* e.g. "#1 (fs)", for log lines */
};

/* Log through the services table; the level is checked before formatting. */
#define KVCD_ALOG(svc, level, module, ...)                                       \
    do {                                                                         \
        if ((svc)->log_enabled(level))                                           \
            (svc)->log((level), (module), __VA_ARGS__);                          \
    } while (0)

/* At most one line per interval_ms per call site. */
#define KVCD_ALOG_RATELIMITED(svc, level, module, interval_ms, fmt, ...)         \
    do {                                                                         \
        static kvcd_alog_limit_t rl_;                                            \
        uint64_t sup_;                                                           \
        if ((svc)->log_enabled(level) &&                                         \
            (svc)->log_ratelimit(&rl_, (interval_ms), &sup_))                    \
            (svc)->log((level), (module), fmt " (%llu similar suppressed)",      \
                       ##__VA_ARGS__, (unsigned long long)sup_);                 \
    } while (0)

/* The sizes of the structs that cross the ABI, as the adapter was built. The
 * core compares them with its own: items, batches, keys and field tables must
 * match exactly (arrays, or memory the core writes); env and services may be
 * smaller than the core's (an older plugin reads a prefix), never larger. */
typedef struct {
    uint32_t item, batch, key, field, env, services;
} kvcd_abi_layout_t;

#define KVCD_ABI_LAYOUT                                                          \
    {                                                                            \
        .item = sizeof(kvcd_l2_item_t), .batch = sizeof(kvcd_l2_batch_t),        \
        .key = sizeof(kvcd_key_t), .field = sizeof(kvcd_adapter_field_t),        \
        .env = sizeof(kvcd_adapter_env_t), .services = sizeof(kvcd_core_services_t) \
    }

struct kvcd_adapter_s {
    uint32_t abi_version;           /* KVCD_ADAPTER_ABI_VERSION */
    uint32_t struct_size;           /* sizeof(kvcd_adapter_t) when built */
    kvcd_abi_layout_t layout;       /* KVCD_ABI_LAYOUT when built */
    const char *name;               /* the JSON "type" */
    size_t instance_size;           /* bytes of `self` */
    uint32_t flags;                 /* KVCD_ADAPTER_*; unknown bits are refused */
    uint32_t max_concurrency;       /* blocking: calls one instance can take at
                                       once (caps "workers"); 0 = no limit */
    const char *doc;                /* one line */
    const kvcd_adapter_field_t *fields; /* NULL-name-terminated, may be NULL */

    /* self is zeroed, then filled from the spec by `fields` (defaults
     * applied). spec is the whole JSON object, "type" included, for checks
     * across fields (json_object_get tells what was given). On error return
     * KVCD_ECONFIG (or -errno), write "field: what is wrong" into err, and
     * release what init acquired. Loop thread. */
    int (*init)(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *err,
                size_t errlen);
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
    /* Optional: "these keys were used", oldest first (the last is the most
     * recent). Recency only: the core calls it with the keys of L1 hits (LOOKUP
     * and LOAD served from L1, which never reach the adapter otherwise), in
     * batches, so an adapter's eviction order can follow global recency. It is
     * fire-and-forget: no result is read (items' result, buf, len and size are
     * unused), no caller waits, a batch may be dropped (queue full, shutdown)
     * and a key may be absent (make it a no-op then, never an insert). It must
     * be cheap and should do no I/O. Blocking adapters: on the executor, like
     * the other methods (concurrently with them). Async adapters: on the loop
     * thread, must not block, complete by returning (no batch_done); keys are
     * valid only during the call. May be NULL; read only when struct_size
     * covers it (a plugin built before it has none). */
    void (*touch)(void *self, kvcd_l2_batch_t *b);
};

#define KVCD_ADAPTER_HEADER(nm, type_, flags_)                                   \
    .abi_version = KVCD_ADAPTER_ABI_VERSION, .struct_size = sizeof(kvcd_adapter_t), \
    .layout = KVCD_ABI_LAYOUT, .name = (nm), .instance_size = sizeof(type_),      \
    .flags = (flags_)

/* Out-of-tree adapters export this symbol. */
typedef const kvcd_adapter_t *(*kvcd_adapter_entry_fn)(void);
#define KVCD_ADAPTER_ENTRY_SYMBOL "kvcd_adapter_entry"

/* The built-in table, written by the build. NULL-terminated. */
extern const kvcd_adapter_t *const kvcd_builtin_adapters[];

#endif
