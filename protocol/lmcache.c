/*
 * lmcache.c - LMCache 0.5.6 multiprocess protocol codec and chunk hashing
 * (protocol/lmcache.h; docs/LMCACHE.md is the wire description).
 *
 * Decoding reads msgpack with a bounds-checked cursor of its own rather than
 * msgpack-c's unpacker: every string and byte span then points into the
 * caller's frame, nothing is allocated but the token array, and the input may
 * be anything (truncated, garbage, hostile nesting) without reading outside
 * it: every read checks the bytes left first, nesting is bounded, and an
 * array's element count is checked against the bytes that could hold it
 * before anything is allocated for it.
 *
 * Types follow what LMCache's server accepts: ints where msgspec wants int
 * (plain int parameters are coerced like LMCache's msgspec_decode: a bool or a
 * float is taken as int), struct fields strictly typed, unknown map keys
 * skipped, missing fields defaulted (and flagged). Encoding uses msgpack-c's
 * packer, whose choices (smallest int form, str8, bin8, float64) are the ones
 * msgspec makes, so the payload frames are byte-identical to LMCache's.
 *
 * Pure functions, any thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/blake3.h"
#include "protocol/kvcd_err.h"
#include "protocol/lmcache.h"

#define MAX_DEPTH 32

/* ---- the op table ---------------------------------------------------------- */

/* Parameter roles: where a payload frame's value goes. */
enum {
    P_ANY,      /* any msgpack value, kept in params[] only */
    P_KEY,      /* IPCCacheServerKey */
    P_INST,     /* instance_id: int */
    P_INST_OPT, /* instance_id: int | None */
    P_TP,       /* tp_size: int */
    P_REQID,    /* request_id: str */
    P_TIMEOUT,  /* timeout: float */
    P_FORCE,    /* force: bool */
    P_DATA,     /* bytes */
    P_REG,      /* RegisterEngineDrivenContextPayload */
    P_MODEL,    /* model_name: str */
    P_WORLD,    /* world_size: int */
    P_SKIP,     /* skip_first_n_tokens: int */
    P_INT,      /* another int */
    P_BOOL,     /* another bool */
    P_STR,      /* another str */
    P_LIST      /* a list (array) */
};

typedef struct {
    const char *name;
    int64_t id;
    kvcd_lmc_reply_t reply;
    uint8_t n;
    uint8_t p[KVCD_LMC_MAX_PARAMS];
} op_info_t;

/* Parameters and replies of RequestClient (transport/base.py), in order. */
static const op_info_t ops[KVCD_LMC_OP_COUNT] = {
    [KVCD_LMC_OP_REGISTER_KV_CACHE] = {"register_kv_cache", 1, KVCD_LMC_R_NONE, 7,
                                       {P_INST, P_LIST, P_MODEL, P_WORLD, P_ANY, P_ANY, P_LIST}},
    [KVCD_LMC_OP_UNREGISTER_KV_CACHE] = {"unregister_kv_cache", 2, KVCD_LMC_R_NONE, 1, {P_INST}},
    [KVCD_LMC_OP_REGISTER_Q_CACHE] = {"register_q_cache", 3, KVCD_LMC_R_NONE, 7,
                                      {P_INST, P_LIST, P_MODEL, P_WORLD, P_ANY, P_ANY, P_LIST}},
    [KVCD_LMC_OP_UNREGISTER_Q_CACHE] = {"unregister_q_cache", 4, KVCD_LMC_R_NONE, 1, {P_INST}},
    [KVCD_LMC_OP_STORE_Q] = {"store_q", 5, KVCD_LMC_R_BYTES_BOOL, 4,
                             {P_KEY, P_INST, P_LIST, P_DATA}},
    [KVCD_LMC_OP_STORE] = {"store", 6, KVCD_LMC_R_BYTES_BOOL, 4, {P_KEY, P_INST, P_LIST, P_DATA}},
    [KVCD_LMC_OP_RETRIEVE] = {"retrieve", 7, KVCD_LMC_R_BYTES_BOOL, 5,
                              {P_KEY, P_INST, P_LIST, P_DATA, P_SKIP}},
    [KVCD_LMC_OP_LOOKUP] = {"lookup", 8, KVCD_LMC_R_NONE, 2, {P_KEY, P_TP}},
    [KVCD_LMC_OP_QUERY_PREFETCH_STATUS] = {"query_prefetch_status", 9, KVCD_LMC_R_INT_OR_NONE, 1,
                                           {P_REQID}},
    [KVCD_LMC_OP_WAIT_PREFETCH_STATUS] = {"wait_prefetch_status", 10, KVCD_LMC_R_INT_OR_NONE, 2,
                                          {P_REQID, P_TIMEOUT}},
    [KVCD_LMC_OP_FREE_LOOKUP_LOCKS] = {"free_lookup_locks", 12, KVCD_LMC_R_NONE, 2, {P_KEY, P_TP}},
    [KVCD_LMC_OP_END_SESSION] = {"end_session", 13, KVCD_LMC_R_NONE, 1, {P_REQID}},
    [KVCD_LMC_OP_REGISTER_ED_CONTEXT] = {"register_kv_cache_engine_driven_context", 14,
                                         KVCD_LMC_R_REGISTER, 1, {P_REG}},
    [KVCD_LMC_OP_UNREGISTER_ED_CONTEXT] = {"unregister_kv_cache_engine_driven_context", 15,
                                           KVCD_LMC_R_NONE, 1, {P_INST}},
    [KVCD_LMC_OP_PREPARE_STORE] = {"prepare_store", 16, KVCD_LMC_R_PREPARE_STORE, 2,
                                   {P_KEY, P_INST}},
    [KVCD_LMC_OP_COMMIT_STORE] = {"commit_store", 17, KVCD_LMC_R_BOOL, 3, {P_KEY, P_INST, P_DATA}},
    [KVCD_LMC_OP_PREPARE_RETRIEVE] = {"prepare_retrieve", 18, KVCD_LMC_R_PREPARE_RETRIEVE, 2,
                                      {P_KEY, P_INST}},
    [KVCD_LMC_OP_COMMIT_RETRIEVE] = {"commit_retrieve", 19, KVCD_LMC_R_BOOL, 2, {P_KEY, P_INST}},
    [KVCD_LMC_OP_CLEAR] = {"clear", 20, KVCD_LMC_R_NONE, 1, {P_FORCE}},
    [KVCD_LMC_OP_GET_CHUNK_SIZE] = {"get_chunk_size", 21, KVCD_LMC_R_INT, 0, {0}},
    [KVCD_LMC_OP_PING] = {"ping", 22, KVCD_LMC_R_BOOL, 1, {P_INST_OPT}},
    [KVCD_LMC_OP_REPORT_BLOCK_ALLOCATION] = {"report_block_allocation", 23, KVCD_LMC_R_NONE, 3,
                                             {P_INST, P_MODEL, P_LIST}},
    [KVCD_LMC_OP_NOOP] = {"noop", 24, KVCD_LMC_R_STR, 0, {0}},
    [KVCD_LMC_OP_CB_REGISTER_ROPE] = {"cb_register_rope", 25, KVCD_LMC_R_NONE, 8,
                                      {P_INST, P_LIST, P_INT, P_BOOL, P_LIST, P_LIST, P_LIST,
                                       P_STR}},
    [KVCD_LMC_OP_CB_UNREGISTER_ROPE] = {"cb_unregister_rope", 26, KVCD_LMC_R_NONE, 1, {P_INST}},
    [KVCD_LMC_OP_CB_RETRIEVE_PRE_COMPUTED] = {"cb_retrieve_pre_computed", 27,
                                              KVCD_LMC_R_BYTES_BOOL, 5,
                                              {P_KEY, P_LIST, P_LIST, P_INST, P_DATA}},
    [KVCD_LMC_OP_CB_UNIFIED_LOOKUP] = {"cb_unified_lookup", 28, KVCD_LMC_R_OPTIONAL, 2,
                                       {P_KEY, P_TP}},
    [KVCD_LMC_OP_P2P_LOOKUP_AND_LOCK] = {"p2p_lookup_and_lock", 29, KVCD_LMC_R_INT, 2,
                                         {P_LIST, P_ANY}},
    [KVCD_LMC_OP_P2P_QUERY_LOOKUP_RESULTS] = {"p2p_query_lookup_results", 30,
                                              KVCD_LMC_R_OPTIONAL, 1, {P_INT}},
    [KVCD_LMC_OP_P2P_UNLOCK_OBJECTS] = {"p2p_unlock_objects", 31, KVCD_LMC_R_NONE, 1, {P_LIST}},
    [KVCD_LMC_OP_GET_EXPERIMENTAL] = {"get_experimental", 32, KVCD_LMC_R_STR_LIST, 0, {0}},
    [KVCD_LMC_OP_CB_PROTOCOL_HANDSHAKE] = {"cb_protocol_handshake", 33, KVCD_LMC_R_INT_BOOL, 1,
                                           {P_INT}},
    [KVCD_LMC_OP_CB_REORDER_PLAN] = {"cb_reorder_plan", -1, KVCD_LMC_R_INT_LIST, 3,
                                     {P_KEY, P_INT, P_INT}},
    [KVCD_LMC_OP_SUBSCRIBE_KV_EVENTS] = {"subscribe_kv_events", -1, KVCD_LMC_R_STREAM, 4,
                                         {P_INST, P_MODEL, P_INT, P_INT}},
    [KVCD_LMC_OP_SERVER_MODULE_CALL] = {"server_module_call", -1, KVCD_LMC_R_STRUCT, 1, {P_ANY}},
};

static bool valid_op(kvcd_lmc_op_t op)
{
    return op > KVCD_LMC_OP_UNKNOWN && op < KVCD_LMC_OP_COUNT;
}

const char *kvcd_lmc_op_name(kvcd_lmc_op_t op)
{
    return valid_op(op) ? ops[op].name : NULL;
}

int64_t kvcd_lmc_op_wire_id(kvcd_lmc_op_t op)
{
    return valid_op(op) ? ops[op].id : -1;
}

size_t kvcd_lmc_op_nparams(kvcd_lmc_op_t op)
{
    return valid_op(op) ? ops[op].n : 0;
}

kvcd_lmc_reply_t kvcd_lmc_op_reply(kvcd_lmc_op_t op)
{
    return valid_op(op) ? ops[op].reply : KVCD_LMC_R_NONE;
}

kvcd_lmc_op_t kvcd_lmc_op_by_name(const char *name, size_t len)
{
    int i;

    for (i = 1; i < KVCD_LMC_OP_COUNT; i++)
        if (strlen(ops[i].name) == len && !memcmp(ops[i].name, name, len))
            return (kvcd_lmc_op_t)i;
    return KVCD_LMC_OP_UNKNOWN;
}

kvcd_lmc_op_t kvcd_lmc_op_by_id(int64_t id)
{
    int i;

    if (id < 0)
        return KVCD_LMC_OP_UNKNOWN;
    for (i = 1; i < KVCD_LMC_OP_COUNT; i++)
        if (ops[i].id == id)
            return (kvcd_lmc_op_t)i;
    return KVCD_LMC_OP_UNKNOWN;
}

/* ---- a bounds-checked msgpack cursor --------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
} cur_t;

static size_t left(const cur_t *c)
{
    return (size_t)(c->end - c->p);
}

static int take(cur_t *c, size_t n, const uint8_t **out)
{
    if (left(c) < n)
        return -1;
    *out = c->p;
    c->p += n;
    return 0;
}

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;

    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static int take_be(cur_t *c, int n, uint64_t *v)
{
    const uint8_t *p;

    if (take(c, (size_t)n, &p))
        return -1;
    *v = be(p, n);
    return 0;
}

/* Read one value's head: scalars completely, str/bin/ext with their bytes,
 * arrays/maps only their count (the elements follow). -1 if truncated or not
 * msgpack (0xc1). */
static int rd_head(cur_t *c, kvcd_lmc_val_t *v)
{
    const uint8_t *t, *d;
    uint64_t u;
    uint8_t b;

    memset(v, 0, sizeof(*v));
    if (take(c, 1, &t))
        return -1;
    b = *t;
    if (b <= 0x7f || b >= 0xe0) {
        v->type = KVCD_LMC_V_INT;
        v->i = b <= 0x7f ? b : (int8_t)b;
    } else if (b >= 0x80 && b <= 0x8f) {
        v->type = KVCD_LMC_V_MAP;
        v->count = b & 0x0f;
    } else if (b >= 0x90 && b <= 0x9f) {
        v->type = KVCD_LMC_V_ARRAY;
        v->count = b & 0x0f;
    } else if (b >= 0xa0 && b <= 0xbf) {
        v->type = KVCD_LMC_V_STR;
        u = b & 0x1f;
        goto bytes;
    } else {
        switch (b) {
        case 0xc0:
            v->type = KVCD_LMC_V_NIL;
            break;
        case 0xc2:
        case 0xc3:
            v->type = KVCD_LMC_V_BOOL;
            v->b = b == 0xc3;
            v->i = v->b;
            break;
        case 0xc4:
        case 0xc5:
        case 0xc6:
            v->type = KVCD_LMC_V_BIN;
            if (take_be(c, 1 << (b - 0xc4), &u))
                return -1;
            goto bytes;
        case 0xd9:
        case 0xda:
        case 0xdb:
            v->type = KVCD_LMC_V_STR;
            if (take_be(c, 1 << (b - 0xd9), &u))
                return -1;
            goto bytes;
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf:
            v->type = KVCD_LMC_V_INT;
            if (take_be(c, 1 << (b - 0xcc), &u))
                return -1;
            if (u > INT64_MAX)
                return -1; /* beyond any value kvcd takes: refuse */
            v->i = (int64_t)u;
            break;
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3: {
            int n = 1 << (b - 0xd0);

            v->type = KVCD_LMC_V_INT;
            if (take_be(c, n, &u))
                return -1;
            if (n < 8 && (u >> (8 * n - 1)) & 1)
                u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
            v->i = (int64_t)u;
            break;
        }
        case 0xca: {
            float f;
            uint32_t w;

            if (take_be(c, 4, &u))
                return -1;
            w = (uint32_t)u;
            memcpy(&f, &w, 4);
            v->type = KVCD_LMC_V_FLOAT;
            v->f = f;
            break;
        }
        case 0xcb: {
            double f;

            if (take_be(c, 8, &u))
                return -1;
            memcpy(&f, &u, 8);
            v->type = KVCD_LMC_V_FLOAT;
            v->f = f;
            break;
        }
        case 0xdc:
        case 0xdd:
            v->type = KVCD_LMC_V_ARRAY;
            if (take_be(c, b == 0xdc ? 2 : 4, &u))
                return -1;
            v->count = (size_t)u;
            break;
        case 0xde:
        case 0xdf:
            v->type = KVCD_LMC_V_MAP;
            if (take_be(c, b == 0xde ? 2 : 4, &u))
                return -1;
            v->count = (size_t)u;
            break;
        case 0xd4:
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
            v->type = KVCD_LMC_V_EXT;
            u = (uint64_t)1 << (b - 0xd4);
            if (take(c, 1, &d))
                return -1;
            v->i = (int8_t)*d;
            goto bytes;
        case 0xc7:
        case 0xc8:
        case 0xc9:
            v->type = KVCD_LMC_V_EXT;
            if (take_be(c, 1 << (b - 0xc7), &u) || take(c, 1, &d))
                return -1;
            v->i = (int8_t)*d;
            goto bytes;
        default: /* 0xc1: never used */
            return -1;
        }
    }
    /* Every element takes at least one byte (a pair two): a count beyond the
     * bytes left is a lie, refused before anyone sizes anything by it. */
    if (v->type == KVCD_LMC_V_ARRAY && v->count > left(c))
        return -1;
    if (v->type == KVCD_LMC_V_MAP && v->count > left(c) / 2)
        return -1;
    if (v->type == KVCD_LMC_V_INT || v->type == KVCD_LMC_V_BOOL)
        v->f = (double)v->i;
    return 0;
bytes:
    if (u > left(c))
        return -1;
    take(c, (size_t)u, &d);
    v->s.p = (const char *)d;
    v->s.n = (size_t)u;
    return 0;
}

/* Skip one whole value, nested ones included. */
static int skip(cur_t *c, int depth)
{
    kvcd_lmc_val_t v;
    size_t i, n;

    if (depth > MAX_DEPTH || rd_head(c, &v))
        return -1;
    if (v.type == KVCD_LMC_V_ARRAY || v.type == KVCD_LMC_V_MAP) {
        n = v.type == KVCD_LMC_V_MAP ? v.count * 2 : v.count;
        for (i = 0; i < n; i++)
            if (skip(c, depth + 1))
                return -1;
    }
    return 0;
}

/* Read one whole value into v (containers skipped over, count kept). */
static int rd_val(cur_t *c, kvcd_lmc_val_t *v)
{
    const uint8_t *start = c->p;
    size_t i, n;

    if (rd_head(c, v))
        return -1;
    if (v->type == KVCD_LMC_V_ARRAY || v->type == KVCD_LMC_V_MAP) {
        n = v->type == KVCD_LMC_V_MAP ? v->count * 2 : v->count;
        for (i = 0; i < n; i++)
            if (skip(c, 1))
                return -1;
    }
    v->raw.p = (const char *)start;
    v->raw.n = (size_t)(c->p - start);
    return 0;
}

static bool str_is(const kvcd_lmc_span_t *s, const char *lit)
{
    return s->n == strlen(lit) && !memcmp(s->p, lit, s->n);
}

/* ---- decoding -------------------------------------------------------------- */

#define FAIL(code, ...)                                                                            \
    do {                                                                                           \
        kvcd_errf(msg, msglen, (code), __VA_ARGS__);                                              \
        r = (code);                                                                                \
        goto fail;                                                                                 \
    } while (0)

/* A struct field of type int (strict: msgspec does not coerce inside structs). */
static int want_int(const kvcd_lmc_val_t *v, int64_t *out)
{
    if (v->type != KVCD_LMC_V_INT)
        return -1;
    *out = v->i;
    return 0;
}

static int want_str(const kvcd_lmc_val_t *v, kvcd_lmc_span_t *out)
{
    if (v->type != KVCD_LMC_V_STR)
        return -1;
    *out = v->s;
    return 0;
}

/* IPCCacheServerKey from the map at c. */
static int dec_key(cur_t *c, kvcd_lmc_key_t *k, char *msg, size_t msglen)
{
    kvcd_lmc_val_t m, f, v;
    size_t i, j;
    bool seen[7] = {0};
    int r;

    memset(k, 0, sizeof(*k));
    if (rd_head(c, &m))
        FAIL(KVCD_EMALFORMED, "key: not msgpack");
    if (m.type != KVCD_LMC_V_MAP)
        FAIL(KVCD_EBADFIELD, "key: not a map (IPCCacheServerKey)");
    k->world_size = 1;
    for (i = 0; i < m.count; i++) {
        if (rd_head(c, &f))
            FAIL(KVCD_EMALFORMED, "key: truncated");
        if (f.type != KVCD_LMC_V_STR)
            FAIL(KVCD_EBADFIELD, "key: a field name is not a string");
        if (str_is(&f.s, "token_ids")) {
            if (rd_head(c, &v))
                FAIL(KVCD_EMALFORMED, "key.token_ids: truncated");
            if (v.type != KVCD_LMC_V_ARRAY)
                FAIL(KVCD_EBADFIELD, "key.token_ids: not an array");
            free(k->token_ids);
            k->token_ids = NULL;
            k->ntokens = 0;
            if (v.count) {
                k->token_ids = malloc(v.count * sizeof(uint32_t));
                if (!k->token_ids)
                    FAIL(-ENOMEM, "key.token_ids: out of memory");
            }
            for (j = 0; j < v.count; j++) {
                kvcd_lmc_val_t t;

                if (rd_head(c, &t))
                    FAIL(KVCD_EMALFORMED, "key.token_ids: truncated");
                if (t.type != KVCD_LMC_V_INT || t.i < 0 || t.i > UINT32_MAX)
                    FAIL(KVCD_EBADFIELD, "key.token_ids[%zu]: not a uint32 token id", j);
                k->token_ids[j] = (uint32_t)t.i;
            }
            k->ntokens = v.count;
            seen[3] = true;
            continue;
        }
        if (rd_val(c, &v))
            FAIL(KVCD_EMALFORMED, "key: truncated");
        if (str_is(&f.s, "model_name")) {
            if (want_str(&v, &k->model_name))
                FAIL(KVCD_EBADFIELD, "key.model_name: not a string");
            seen[0] = true;
        } else if (str_is(&f.s, "world_size")) {
            if (want_int(&v, &k->world_size))
                FAIL(KVCD_EBADFIELD, "key.world_size: not an int");
            seen[1] = true;
        } else if (str_is(&f.s, "worker_id")) {
            k->has_worker_id = v.type != KVCD_LMC_V_NIL;
            if (k->has_worker_id && want_int(&v, &k->worker_id))
                FAIL(KVCD_EBADFIELD, "key.worker_id: not an int or None");
            seen[2] = true;
        } else if (str_is(&f.s, "start")) {
            if (want_int(&v, &k->start))
                FAIL(KVCD_EBADFIELD, "key.start: not an int");
            seen[4] = true;
        } else if (str_is(&f.s, "end")) {
            if (want_int(&v, &k->end))
                FAIL(KVCD_EBADFIELD, "key.end: not an int");
            seen[5] = true;
        } else if (str_is(&f.s, "request_id")) {
            if (want_str(&v, &k->request_id))
                FAIL(KVCD_EBADFIELD, "key.request_id: not a string");
            seen[6] = true;
        } else if (str_is(&f.s, "cache_salt")) {
            if (want_str(&v, &k->cache_salt))
                FAIL(KVCD_EBADFIELD, "key.cache_salt: not a string");
        } else if (str_is(&f.s, "num_kv_readers")) {
            if (want_int(&v, &k->num_kv_readers))
                FAIL(KVCD_EBADFIELD, "key.num_kv_readers: not an int");
        } else if (str_is(&f.s, "request_configs")) {
            if (v.type != KVCD_LMC_V_NIL && v.type != KVCD_LMC_V_MAP)
                FAIL(KVCD_EBADFIELD, "key.request_configs: not a dict or None");
            k->has_request_configs = v.type == KVCD_LMC_V_MAP;
        }
        /* any other field: ignored, as msgspec does */
    }
    for (i = 0; i < 7; i++)
        if (!seen[i])
            k->missing |= 1u << i;
    return 0;
fail:
    free(k->token_ids);
    k->token_ids = NULL;
    k->ntokens = 0;
    return r;
}

/* RegisterEngineDrivenContextPayload from the map at c. */
static int dec_reg(cur_t *c, kvcd_lmc_register_t *g, char *msg, size_t msglen)
{
    static const char *const names[] = {"instance_id", "model_name",      "world_size",
                                        "block_size",  "num_layers",      "hidden_dim_size",
                                        "dtype_str",   "use_mla",         "num_physical_slots"};
    kvcd_lmc_val_t m, f, v;
    size_t i;
    int r, which;

    memset(g, 0, sizeof(*g));
    if (rd_head(c, &m))
        FAIL(KVCD_EMALFORMED, "payload: not msgpack");
    if (m.type != KVCD_LMC_V_MAP)
        FAIL(KVCD_EBADFIELD, "payload: not a map (RegisterEngineDrivenContextPayload)");
    g->missing = (1u << 8) - 1; /* the 8 required fields */
    for (i = 0; i < m.count; i++) {
        if (rd_head(c, &f) || rd_val(c, &v))
            FAIL(KVCD_EMALFORMED, "payload: truncated");
        if (f.type != KVCD_LMC_V_STR)
            FAIL(KVCD_EBADFIELD, "payload: a field name is not a string");
        for (which = 0; which < 9; which++)
            if (str_is(&f.s, names[which]))
                break;
        switch (which) {
        case 0:
            r = want_int(&v, &g->instance_id);
            break;
        case 1:
            r = want_str(&v, &g->model_name);
            break;
        case 2:
            r = want_int(&v, &g->world_size);
            break;
        case 3:
            r = want_int(&v, &g->block_size);
            break;
        case 4:
            r = want_int(&v, &g->num_layers);
            break;
        case 5:
            r = want_int(&v, &g->hidden_dim_size);
            break;
        case 6:
            r = want_str(&v, &g->dtype_str);
            break;
        case 7:
            r = v.type == KVCD_LMC_V_BOOL ? 0 : -1;
            g->use_mla = v.b;
            break;
        case 8:
            g->has_num_physical_slots = v.type != KVCD_LMC_V_NIL;
            r = g->has_num_physical_slots ? want_int(&v, &g->num_physical_slots) : 0;
            break;
        default:
            continue; /* unknown field: ignored */
        }
        if (r)
            FAIL(KVCD_EBADFIELD, "payload.%s: wrong type", names[which]);
        if (which < 8)
            g->missing &= ~(1u << which);
    }
    return 0;
fail:
    return r;
}

/* A plain parameter of type int, coerced like LMCache's msgspec_decode. */
static int coerce_int(const kvcd_lmc_val_t *v, int64_t *out)
{
    if (v->type == KVCD_LMC_V_INT || v->type == KVCD_LMC_V_BOOL) {
        *out = v->i;
        return 0;
    }
    if (v->type == KVCD_LMC_V_FLOAT && v->f > -9.2e18 && v->f < 9.2e18) {
        *out = (int64_t)v->f;
        return 0;
    }
    return -1;
}

bool kvcd_lmc_is_lmcache(const void *frame0, size_t len)
{
    cur_t c = {frame0, (const uint8_t *)frame0 + len};
    kvcd_lmc_val_t v;

    return len && rd_head(&c, &v) == 0 && v.type == KVCD_LMC_V_INT && c.p == c.end;
}

int kvcd_lmc_decode(const void *const *frames, const size_t *lens, size_t nframes,
                    kvcd_lmc_req_t *req, char *msg, size_t msglen)
{
    const op_info_t *oi;
    kvcd_lmc_val_t v;
    cur_t c;
    size_t i;
    int r;

    memset(req, 0, sizeof(*req));
    req->wire_id = -1;
    if (msglen)
        msg[0] = '\0';
    if (nframes < 1)
        FAIL(KVCD_EMALFORMED, "no frames");
    c = (cur_t){frames[0], (const uint8_t *)frames[0] + lens[0]};
    if (!lens[0] || rd_head(&c, &v) || c.p != c.end || v.type != KVCD_LMC_V_INT || v.i < 0)
        FAIL(KVCD_EMALFORMED, "frame 0: not a request uid (a msgpack non-negative int)");
    req->uid = (uint64_t)v.i;
    req->uid_frame = (kvcd_lmc_span_t){frames[0], lens[0]};
    if (nframes < 2)
        FAIL(KVCD_EMALFORMED, "no operation frame");
    req->op_frame = (kvcd_lmc_span_t){frames[1], lens[1]};
    if (lens[1] == 0) { /* stream control: [uid, b"", b"ack" | b"cancel"] */
        req->control = true;
        if (nframes != 3)
            FAIL(KVCD_EMALFORMED, "stream control: %zu frames, want 3", nframes);
        req->action = (kvcd_lmc_span_t){frames[2], lens[2]};
        if (!str_is(&req->action, "ack") && !str_is(&req->action, "cancel"))
            FAIL(KVCD_EBADFIELD, "stream control: action is neither ack nor cancel");
        return 0;
    }
    c = (cur_t){frames[1], (const uint8_t *)frames[1] + lens[1]};
    if (rd_head(&c, &v) || c.p != c.end)
        FAIL(KVCD_EMALFORMED, "frame 1: operation is not one msgpack value");
    if (v.type == KVCD_LMC_V_INT) {
        req->wire_id = v.i;
        req->op = kvcd_lmc_op_by_id(v.i);
        if (!req->op)
            FAIL(KVCD_EUNKNOWNOP, "unknown legacy operation id %lld", (long long)v.i);
    } else if (v.type == KVCD_LMC_V_STR) {
        req->op_name = v.s;
        req->op = kvcd_lmc_op_by_name(v.s.p, v.s.n);
        if (!req->op)
            FAIL(KVCD_EUNKNOWNOP, "unknown operation \"%.*s\"", (int)(v.s.n > 64 ? 64 : v.s.n),
                 v.s.p);
    } else {
        FAIL(KVCD_EMALFORMED, "frame 1: operation is neither an int nor a string");
    }
    if (!req->op_name.p)
        req->op_name = (kvcd_lmc_span_t){ops[req->op].name, strlen(ops[req->op].name)};
    oi = &ops[req->op];
    if (nframes - 2 != oi->n)
        FAIL(KVCD_EMALFORMED, "%s: %zu payload frames, want %u", oi->name, nframes - 2,
             (unsigned)oi->n);
    req->nparams = oi->n;
    for (i = 0; i < oi->n; i++) {
        kvcd_lmc_val_t *pv = &req->params[i];
        const char *what = "a value";

        c = (cur_t){frames[i + 2], (const uint8_t *)frames[i + 2] + lens[i + 2]};
        if (oi->p[i] == P_KEY || oi->p[i] == P_REG) {
            cur_t c2 = c;

            if ((r = oi->p[i] == P_KEY ? dec_key(&c2, &req->key, msg, msglen)
                                       : dec_reg(&c2, &req->reg, msg, msglen)))
                goto fail;
            if (oi->p[i] == P_KEY)
                req->has_key = true;
            if (c2.p != c2.end)
                FAIL(KVCD_EMALFORMED, "%s: payload %zu: bytes after the value", oi->name, i);
        }
        if (rd_val(&c, pv) || c.p != c.end)
            FAIL(KVCD_EMALFORMED, "%s: payload %zu is not one msgpack value", oi->name, i);
        r = 0;
        switch (oi->p[i]) {
        case P_INST:
            req->has_instance_id = true;
            r = coerce_int(pv, &req->instance_id);
            what = "instance_id: an int";
            break;
        case P_INST_OPT:
            req->has_instance_id = pv->type != KVCD_LMC_V_NIL;
            r = req->has_instance_id ? coerce_int(pv, &req->instance_id) : 0;
            what = "instance_id: an int or None";
            break;
        case P_TP:
            r = coerce_int(pv, &req->tp_size);
            what = "tp_size: an int";
            break;
        case P_WORLD:
            r = coerce_int(pv, &req->world_size);
            what = "world_size: an int";
            break;
        case P_SKIP:
            r = coerce_int(pv, &req->skip_first_n_tokens);
            what = "skip_first_n_tokens: an int";
            break;
        case P_INT: {
            int64_t x;

            r = coerce_int(pv, &x);
            what = "an int";
            break;
        }
        case P_REQID:
            r = pv->type == KVCD_LMC_V_STR ? 0 : -1;
            req->request_id = pv->s;
            what = "request_id: a string";
            break;
        case P_MODEL:
            r = pv->type == KVCD_LMC_V_STR ? 0 : -1;
            req->model_name = pv->s;
            what = "model_name: a string";
            break;
        case P_STR:
            r = pv->type == KVCD_LMC_V_STR ? 0 : -1;
            what = "a string";
            break;
        case P_TIMEOUT:
            r = pv->type == KVCD_LMC_V_FLOAT || pv->type == KVCD_LMC_V_INT ? 0 : -1;
            req->timeout = pv->f;
            what = "timeout: a float";
            break;
        case P_FORCE:
            r = pv->type == KVCD_LMC_V_BOOL ? 0 : -1;
            req->force = pv->b;
            what = "force: a bool";
            break;
        case P_BOOL:
            r = pv->type == KVCD_LMC_V_BOOL ? 0 : -1;
            what = "a bool";
            break;
        case P_DATA:
            r = pv->type == KVCD_LMC_V_BIN ? 0 : -1;
            req->data = pv->s;
            what = "bytes";
            break;
        case P_LIST:
            r = pv->type == KVCD_LMC_V_ARRAY ? 0 : -1;
            what = "a list";
            break;
        default:
            break;
        }
        if (r)
            FAIL(KVCD_EBADFIELD, "%s: payload %zu: want %s", oi->name, i, what);
    }
    return 0;
fail:
    {
        uint64_t uid = req->uid;
        kvcd_lmc_span_t uf = req->uid_frame, of = req->op_frame;
        kvcd_lmc_op_t op = req->op;
        int64_t wid = req->wire_id;

        kvcd_lmc_req_free(req);
        memset(req, 0, sizeof(*req));
        req->uid = uid;
        req->uid_frame = uf;
        req->op_frame = of;
        req->op = op;
        req->wire_id = wid;
    }
    return r;
}

void kvcd_lmc_req_free(kvcd_lmc_req_t *req)
{
    if (!req)
        return;
    free(req->key.token_ids);
    req->key.token_ids = NULL;
    req->key.ntokens = 0;
}

/* ---- encoding -------------------------------------------------------------- */

static void pack_lit(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);

    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void kvcd_lmc_encode_int(kvcd_wbuf_t *w, int64_t v)
{
    msgpack_pack_int64(&w->pk, v);
}

void kvcd_lmc_encode_bool(kvcd_wbuf_t *w, bool v)
{
    if (v)
        msgpack_pack_true(&w->pk);
    else
        msgpack_pack_false(&w->pk);
}

void kvcd_lmc_encode_str(kvcd_wbuf_t *w, const char *s, size_t n)
{
    msgpack_pack_str(&w->pk, n);
    msgpack_pack_str_body(&w->pk, s, n);
}

void kvcd_lmc_encode_str_list(kvcd_wbuf_t *w, const char *const *v, size_t n)
{
    msgpack_pack_array(&w->pk, n);
    for (size_t i = 0; i < n; i++)
        pack_lit(&w->pk, v[i]);
}

void kvcd_lmc_encode_int_list(kvcd_wbuf_t *w, const int64_t *v, size_t n)
{
    msgpack_pack_array(&w->pk, n);
    for (size_t i = 0; i < n; i++)
        msgpack_pack_int64(&w->pk, v[i]);
}

void kvcd_lmc_encode_register(kvcd_wbuf_t *w, const char *shm_name, uint64_t pool_size)
{
    msgpack_pack_map(&w->pk, 2);
    pack_lit(&w->pk, "shm_name");
    pack_lit(&w->pk, shm_name ? shm_name : "");
    pack_lit(&w->pk, "pool_size");
    msgpack_pack_uint64(&w->pk, pool_size);
}

static void pack_slots(msgpack_packer *pk, const kvcd_lmc_slot_t *slots, size_t n)
{
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        msgpack_pack_map(pk, 4);
        pack_lit(pk, "offset");
        msgpack_pack_uint64(pk, slots[i].offset);
        pack_lit(pk, "length");
        msgpack_pack_uint64(pk, slots[i].length);
        pack_lit(pk, "shape");
        msgpack_pack_array(pk, slots[i].ndim);
        for (size_t d = 0; d < slots[i].ndim; d++)
            msgpack_pack_int64(pk, slots[i].shape[d]);
        pack_lit(pk, "dtype");
        pack_lit(pk, slots[i].dtype ? slots[i].dtype : "");
    }
}

void kvcd_lmc_encode_prepare_store(kvcd_wbuf_t *w, const kvcd_lmc_slot_t *slots,
                                   const int64_t *chunk_indices, size_t n)
{
    msgpack_pack_map(&w->pk, 1);
    pack_lit(&w->pk, "context");
    if (!slots) {
        msgpack_pack_map(&w->pk, 0);
        return;
    }
    msgpack_pack_map(&w->pk, 2);
    pack_lit(&w->pk, "slots");
    pack_slots(&w->pk, slots, n);
    pack_lit(&w->pk, "chunk_indices");
    kvcd_lmc_encode_int_list(w, chunk_indices, n);
}

void kvcd_lmc_encode_prepare_retrieve(kvcd_wbuf_t *w, bool success, const void *data,
                                      size_t dlen, const kvcd_lmc_slot_t *slots, size_t n)
{
    msgpack_pack_map(&w->pk, 3);
    pack_lit(&w->pk, "success");
    kvcd_lmc_encode_bool(w, success);
    pack_lit(&w->pk, "data");
    msgpack_pack_bin(&w->pk, dlen);
    msgpack_pack_bin_body(&w->pk, dlen ? data : "", dlen);
    pack_lit(&w->pk, "context");
    if (!slots) {
        msgpack_pack_map(&w->pk, 0);
        return;
    }
    msgpack_pack_map(&w->pk, 1);
    pack_lit(&w->pk, "slots");
    pack_slots(&w->pk, slots, n);
}

void kvcd_lmc_encode_bytes_bool(kvcd_wbuf_t *w, const void *b, size_t n, bool v)
{
    msgpack_pack_array(&w->pk, 2);
    msgpack_pack_bin(&w->pk, n);
    msgpack_pack_bin_body(&w->pk, n ? b : "", n);
    kvcd_lmc_encode_bool(w, v);
}

void kvcd_lmc_encode_int_bool(kvcd_wbuf_t *w, int64_t i, bool v)
{
    msgpack_pack_array(&w->pk, 2);
    msgpack_pack_int64(&w->pk, i);
    kvcd_lmc_encode_bool(w, v);
}

bool kvcd_lmc_encode_refusal(kvcd_wbuf_t *w, kvcd_lmc_op_t op)
{
    switch (kvcd_lmc_op_reply(op)) {
    case KVCD_LMC_R_INT:
    case KVCD_LMC_R_INT_OR_NONE:
        kvcd_lmc_encode_int(w, 0);
        return true;
    case KVCD_LMC_R_BOOL:
        kvcd_lmc_encode_bool(w, false);
        return true;
    case KVCD_LMC_R_STR:
        kvcd_lmc_encode_str(w, "", 0);
        return true;
    case KVCD_LMC_R_STR_LIST:
    case KVCD_LMC_R_INT_LIST:
        msgpack_pack_array(&w->pk, 0);
        return true;
    case KVCD_LMC_R_REGISTER:
        kvcd_lmc_encode_register(w, "", 0);
        return true;
    case KVCD_LMC_R_PREPARE_STORE:
        kvcd_lmc_encode_prepare_store(w, NULL, NULL, 0);
        return true;
    case KVCD_LMC_R_PREPARE_RETRIEVE:
        kvcd_lmc_encode_prepare_retrieve(w, false, NULL, 0, NULL, 0);
        return true;
    case KVCD_LMC_R_BYTES_BOOL:
        kvcd_lmc_encode_bytes_bool(w, NULL, 0, false);
        return true;
    case KVCD_LMC_R_INT_BOOL:
        kvcd_lmc_encode_int_bool(w, 0, false);
        return true;
    default: /* None, optional, stream end, module-defined struct */
        return false;
    }
}

/* ---- chunk hashing --------------------------------------------------------- */

int kvcd_lmc_hash_select(const char *name, kvcd_lmc_hash_t *alg, char *msg, size_t msglen)
{
    if (name && !strcmp(name, "blake3")) {
        *alg = KVCD_LMC_HASH_BLAKE3;
        return 0;
    }
    if (name && !strcmp(name, "builtin"))
        return kvcd_errf(msg, msglen, KVCD_ECONFIG,
                         "--hash-algorithm: \"builtin\" is Python's hash(), which only a "
                         "Python process can reproduce; kvcd implements \"blake3\" (LMCache's "
                         "default)");
    return kvcd_errf(msg, msglen, KVCD_ECONFIG,
                     "--hash-algorithm: \"%s\" is not implemented by kvcd (LMCache takes it "
                     "from vLLM); kvcd implements \"blake3\" (LMCache's default)",
                     name ? name : "");
}

void kvcd_lmc_none_hash(uint8_t out[KVCD_LMC_HASH_LEN])
{
    static const uint8_t zero[12];

    kvcd_blake3(zero, sizeof(zero), out);
}

void kvcd_lmc_hash_chunk(const uint8_t prefix[KVCD_LMC_HASH_LEN], const uint32_t *tokens,
                         size_t n, uint8_t out[KVCD_LMC_HASH_LEN])
{
    kvcd_blake3_t h;
    uint8_t b[256];
    size_t i, k = 0;

    kvcd_blake3_init(&h);
    kvcd_blake3_update(&h, prefix, KVCD_LMC_HASH_LEN);
    for (i = 0; i < n; i++) {
        b[k++] = (uint8_t)(tokens[i] >> 24);
        b[k++] = (uint8_t)(tokens[i] >> 16);
        b[k++] = (uint8_t)(tokens[i] >> 8);
        b[k++] = (uint8_t)tokens[i];
        if (k == sizeof(b)) {
            kvcd_blake3_update(&h, b, k);
            k = 0;
        }
    }
    kvcd_blake3_update(&h, b, k);
    kvcd_blake3_final(&h, out, KVCD_LMC_HASH_LEN);
}

size_t kvcd_lmc_chunk_hashes(const uint32_t *tokens, size_t n, size_t chunk_size, size_t start,
                             int64_t end, uint8_t (*out)[KVCD_LMC_HASH_LEN], size_t max)
{
    uint8_t prefix[KVCD_LMC_HASH_LEN];
    size_t eff = n, full, i, got = 0;

    if (chunk_size == 0)
        return 0;
    if (end >= 0 && (uint64_t)end < n)
        eff = (size_t)end;
    full = eff - eff % chunk_size;
    kvcd_lmc_none_hash(prefix);
    for (i = 0; i < full; i += chunk_size) {
        kvcd_lmc_hash_chunk(prefix, tokens + i, chunk_size, prefix);
        if (i >= start) {
            if (got < max)
                memcpy(out[got], prefix, KVCD_LMC_HASH_LEN);
            got++;
        }
    }
    return got;
}
