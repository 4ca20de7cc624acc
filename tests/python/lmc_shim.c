/*
 * lmc_shim.c - kvcd's LMCache codec and chunk hasher (protocol/lmcache.c) as
 * a ctypes-loadable shared object, for tests/python/test_lmcache_compat.py,
 * which checks them against the installed lmcache 0.5.6 package itself.
 *
 * Why a shared object: the codec is pure functions, so Python can call them
 * directly with the exact frames LMCache's own client put on a socket and
 * with LMCache's own token hasher beside them, and compare value by value,
 * with no daemon or second process in between. Only plain C types cross the
 * boundary: decode writes its result as JSON; encode takes a JSON reply spec.
 * Built without sanitizers even in a SANITIZE build (Python is not
 * instrumented); the Check suites run the same code under ASan/UBSan.
 *
 * Buffers belong to the caller. Any thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "protocol/kvcd_err.h"
#include "protocol/lmcache.h"

int kvcd_shim_decode(const uint8_t *buf, const size_t *lens, size_t n, char *out, size_t outlen);
long kvcd_shim_encode(const char *spec, uint8_t *out, size_t outlen);
size_t kvcd_shim_chunk_hashes(const uint32_t *t, size_t n, size_t chunk, size_t start, int64_t end,
                              uint8_t *out, size_t max);
void kvcd_shim_none_hash(uint8_t *out);
int kvcd_shim_hash_select(const char *name, char *msg, size_t msglen);
int kvcd_shim_op_info(const char *name, int64_t *wire_id, size_t *nparams);
const char *kvcd_shim_op_name(int op);

static json_t *span(kvcd_lmc_span_t s)
{
    return s.p ? json_stringn(s.p, s.n) : json_null();
}

static json_t *key_json(const kvcd_lmc_key_t *k)
{
    json_t *o = json_object(), *t = json_array();

    for (size_t i = 0; i < k->ntokens; i++)
        json_array_append_new(t, json_integer(k->token_ids[i]));
    json_object_set_new(o, "model_name", span(k->model_name));
    json_object_set_new(o, "world_size", json_integer(k->world_size));
    json_object_set_new(o, "worker_id", k->has_worker_id ? json_integer(k->worker_id) : json_null());
    json_object_set_new(o, "token_ids", t);
    json_object_set_new(o, "start", json_integer(k->start));
    json_object_set_new(o, "end", json_integer(k->end));
    json_object_set_new(o, "request_id", span(k->request_id));
    json_object_set_new(o, "cache_salt", span(k->cache_salt));
    json_object_set_new(o, "num_kv_readers", json_integer(k->num_kv_readers));
    json_object_set_new(o, "has_request_configs", json_boolean(k->has_request_configs));
    json_object_set_new(o, "missing", json_integer(k->missing));
    return o;
}

int kvcd_shim_decode(const uint8_t *buf, const size_t *lens, size_t n, char *out, size_t outlen)
{
    const void *f[16];
    kvcd_lmc_req_t r;
    char msg[256];
    json_t *o;
    char *s;
    size_t off = 0;
    int rc;

    if (n > 16)
        return -1;
    for (size_t i = 0; i < n; i++) {
        f[i] = buf + off;
        off += lens[i];
    }
    rc = kvcd_lmc_decode(f, lens, n, &r, msg, sizeof(msg));
    o = json_object();
    json_object_set_new(o, "rc", json_integer(rc));
    json_object_set_new(o, "msg", json_string(msg));
    json_object_set_new(o, "uid", json_integer((json_int_t)r.uid));
    if (rc == 0) {
        json_t *p = json_array();

        json_object_set_new(o, "op", r.control ? json_null() : json_string(kvcd_lmc_op_name(r.op)));
        json_object_set_new(o, "wire_id", json_integer(r.wire_id));
        json_object_set_new(o, "control", json_boolean(r.control));
        json_object_set_new(o, "action", span(r.action));
        json_object_set_new(o, "nparams", json_integer((json_int_t)r.nparams));
        if (r.has_key)
            json_object_set_new(o, "key", key_json(&r.key));
        json_object_set_new(o, "instance_id",
                            r.has_instance_id ? json_integer(r.instance_id) : json_null());
        json_object_set_new(o, "tp_size", json_integer(r.tp_size));
        json_object_set_new(o, "request_id", span(r.request_id));
        json_object_set_new(o, "timeout", json_real(r.timeout));
        json_object_set_new(o, "force", json_boolean(r.force));
        json_object_set_new(o, "data_len", r.data.p ? json_integer((json_int_t)r.data.n)
                                                    : json_null());
        json_object_set_new(o, "model_name", span(r.model_name));
        json_object_set_new(o, "world_size", json_integer(r.world_size));
        json_object_set_new(o, "skip_first_n_tokens", json_integer(r.skip_first_n_tokens));
        if (r.op == KVCD_LMC_OP_REGISTER_ED_CONTEXT) {
            json_t *g = json_object();

            json_object_set_new(g, "instance_id", json_integer(r.reg.instance_id));
            json_object_set_new(g, "model_name", span(r.reg.model_name));
            json_object_set_new(g, "world_size", json_integer(r.reg.world_size));
            json_object_set_new(g, "block_size", json_integer(r.reg.block_size));
            json_object_set_new(g, "num_layers", json_integer(r.reg.num_layers));
            json_object_set_new(g, "hidden_dim_size", json_integer(r.reg.hidden_dim_size));
            json_object_set_new(g, "dtype_str", span(r.reg.dtype_str));
            json_object_set_new(g, "use_mla", json_boolean(r.reg.use_mla));
            json_object_set_new(g, "num_physical_slots",
                                r.reg.has_num_physical_slots
                                    ? json_integer(r.reg.num_physical_slots)
                                    : json_null());
            json_object_set_new(g, "missing", json_integer(r.reg.missing));
            json_object_set_new(o, "reg", g);
        }
        for (size_t i = 0; i < r.nparams; i++)
            json_array_append_new(p, json_integer(r.params[i].type));
        json_object_set_new(o, "param_types", p);
        kvcd_lmc_req_free(&r);
    }
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s)
        return -1;
    if (strlen(s) + 1 > outlen) {
        free(s);
        return -2;
    }
    memcpy(out, s, strlen(s) + 1);
    free(s);
    return rc;
}

static size_t slots_of(json_t *a, kvcd_lmc_slot_t *sl, int64_t (*shape)[8], size_t max)
{
    size_t n = json_array_size(a);

    if (n > max)
        n = max;
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(a, i), *sh = json_object_get(s, "shape");

        sl[i].offset = (uint64_t)json_integer_value(json_object_get(s, "offset"));
        sl[i].length = (uint64_t)json_integer_value(json_object_get(s, "length"));
        sl[i].ndim = json_array_size(sh) > 8 ? 8 : json_array_size(sh);
        for (size_t d = 0; d < sl[i].ndim; d++)
            shape[i][d] = json_integer_value(json_array_get(sh, d));
        sl[i].shape = shape[i];
        sl[i].dtype = json_string_value(json_object_get(s, "dtype"));
    }
    return n;
}

static size_t unhex(const char *h, uint8_t *out, size_t max)
{
    size_t n = 0;
    unsigned v;

    while (h && h[0] && h[1] && n < max && sscanf(h, "%2x", &v) == 1) {
        out[n++] = (uint8_t)v;
        h += 2;
    }
    return n;
}

/* The payload frame for a reply spec: its length, -2 for "no frame" (None),
 * -1 for a bad spec or a too small out. */
long kvcd_shim_encode(const char *spec, uint8_t *out, size_t outlen)
{
    json_t *j = json_loads(spec, 0, NULL), *v;
    const char *kind;
    kvcd_wbuf_t w;
    kvcd_lmc_slot_t sl[16];
    int64_t shape[16][8], ints[64];
    uint8_t data[4096];
    size_t n, dl;
    long r = -1;
    bool frame = true;

    if (!j)
        return -1;
    kvcd_wbuf_init(&w);
    kind = json_string_value(json_object_get(j, "kind"));
    v = json_object_get(j, "v");
    if (!kind) {
        goto out;
    } else if (!strcmp(kind, "int")) {
        kvcd_lmc_encode_int(&w, json_integer_value(v));
    } else if (!strcmp(kind, "bool")) {
        kvcd_lmc_encode_bool(&w, json_is_true(v));
    } else if (!strcmp(kind, "str")) {
        kvcd_lmc_encode_str(&w, json_string_value(v), json_string_length(v));
    } else if (!strcmp(kind, "str_list")) {
        const char *sv[64];

        n = json_array_size(v) > 64 ? 64 : json_array_size(v);
        for (size_t i = 0; i < n; i++)
            sv[i] = json_string_value(json_array_get(v, i));
        kvcd_lmc_encode_str_list(&w, sv, n);
    } else if (!strcmp(kind, "int_list")) {
        n = json_array_size(v) > 64 ? 64 : json_array_size(v);
        for (size_t i = 0; i < n; i++)
            ints[i] = json_integer_value(json_array_get(v, i));
        kvcd_lmc_encode_int_list(&w, ints, n);
    } else if (!strcmp(kind, "register")) {
        kvcd_lmc_encode_register(&w, json_string_value(json_object_get(j, "shm_name")),
                                 (uint64_t)json_integer_value(json_object_get(j, "pool_size")));
    } else if (!strcmp(kind, "prepare_store")) {
        json_t *s = json_object_get(j, "slots"), *ci = json_object_get(j, "chunk_indices");

        n = json_is_array(s) ? slots_of(s, sl, shape, 16) : 0;
        for (size_t i = 0; i < n; i++)
            ints[i] = json_integer_value(json_array_get(ci, i));
        kvcd_lmc_encode_prepare_store(&w, json_is_array(s) ? sl : NULL, ints, n);
    } else if (!strcmp(kind, "prepare_retrieve")) {
        json_t *s = json_object_get(j, "slots");

        n = json_is_array(s) ? slots_of(s, sl, shape, 16) : 0;
        dl = unhex(json_string_value(json_object_get(j, "data")), data, sizeof(data));
        kvcd_lmc_encode_prepare_retrieve(&w, json_is_true(json_object_get(j, "success")), data, dl,
                                         json_is_array(s) ? sl : NULL, n);
    } else if (!strcmp(kind, "bytes_bool")) {
        dl = unhex(json_string_value(json_object_get(j, "data")), data, sizeof(data));
        kvcd_lmc_encode_bytes_bool(&w, data, dl, json_is_true(v));
    } else if (!strcmp(kind, "int_bool")) {
        kvcd_lmc_encode_int_bool(&w, json_integer_value(json_object_get(j, "i")), json_is_true(v));
    } else if (!strcmp(kind, "refusal")) {
        const char *op = json_string_value(json_object_get(j, "op"));

        frame = kvcd_lmc_encode_refusal(&w, kvcd_lmc_op_by_name(op ? op : "", op ? strlen(op) : 0));
    } else if (!strcmp(kind, "none")) {
        frame = false;
    } else {
        goto out;
    }
    if (!frame) {
        r = -2;
    } else if (w.sb.size <= outlen) {
        memcpy(out, w.sb.data, w.sb.size);
        r = (long)w.sb.size;
    }
out:
    kvcd_wbuf_destroy(&w);
    json_decref(j);
    return r;
}

size_t kvcd_shim_chunk_hashes(const uint32_t *t, size_t n, size_t chunk, size_t start, int64_t end,
                              uint8_t *out, size_t max)
{
    return kvcd_lmc_chunk_hashes(t, n, chunk, start, end, (uint8_t(*)[KVCD_LMC_HASH_LEN])out, max);
}

void kvcd_shim_none_hash(uint8_t *out)
{
    kvcd_lmc_none_hash(out);
}

int kvcd_shim_hash_select(const char *name, char *msg, size_t msglen)
{
    kvcd_lmc_hash_t alg;

    if (msglen)
        msg[0] = '\0';
    return kvcd_lmc_hash_select(name, &alg, msg, msglen);
}

/* 0 and the op's wire id and parameter count, or -1 for a name kvcd does not know. */
int kvcd_shim_op_info(const char *name, int64_t *wire_id, size_t *nparams)
{
    kvcd_lmc_op_t op = kvcd_lmc_op_by_name(name, strlen(name));

    if (!op)
        return -1;
    *wire_id = kvcd_lmc_op_wire_id(op);
    *nparams = kvcd_lmc_op_nparams(op);
    return 0;
}

/* The name of op number op (1 .. count-1), NULL past the end. */
const char *kvcd_shim_op_name(int op)
{
    return op > 0 && op < KVCD_LMC_OP_COUNT ? kvcd_lmc_op_name((kvcd_lmc_op_t)op) : NULL;
}
