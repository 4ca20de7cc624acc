/*
 * proto.c - msgpack encoding and decoding of kvcd headers (docs/PROTOCOL.md).
 *
 * Decoding is strict about what it knows (types, ranges, required fields, no
 * trailing bytes after the map) and lenient about what it does not (unknown keys
 * are skipped, so newer peers can add fields). Bulk bytes never pass through
 * here: they travel in their own ZeroMQ frames.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcd_err.h"
#include "proto.h"

const char *kvcd_op_name(uint32_t op)
{
    switch (op) {
#define OP_NAME(name, num) case num: return #name;
    KVCD_OP_MAP(OP_NAME)
#undef OP_NAME
    }
    return NULL;
}

int kvcd_op_has_keys(uint32_t op)
{
    return op == KVCD_OP_STORE || op == KVCD_OP_LOOKUP || op == KVCD_OP_LOAD ||
           op == KVCD_OP_REMOVE || op == KVCD_OP_STORE_SHM || op == KVCD_OP_LOAD_SHM ||
           kvcd_op_is_zero_copy(op);
}

int kvcd_op_is_zero_copy(uint32_t op)
{
    return op >= KVCD_OP_RESERVE && op <= KVCD_OP_LOOKUP_MAP;
}

int kvcd_op_uses_segment(uint32_t op)
{
    return op == KVCD_OP_UNREGISTER_SEGMENT || op == KVCD_OP_STORE_SHM ||
           op == KVCD_OP_LOAD_SHM;
}

#define fail kvcd_errf

static int key_is(const msgpack_object *k, const char *name)
{
    size_t n = strlen(name);

    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, name, n) == 0;
}

/* An unsigned integer field no larger than max. */
static int get_uint(const msgpack_object *v, uint64_t max, uint64_t *out)
{
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > max)
        return -1;
    *out = v->via.u64;
    return 0;
}

/*
 * msgpack-c reserves room for all of a container's elements as soon as it reads
 * the container's header, before it knows the bytes are there: the 5-byte frame
 * df ff ff ff ff makes it ask for 192 GiB. So walk the headers of the first
 * object first and refuse it when the frame ends before every element its
 * containers announce. Every element takes at least one byte, so a frame that
 * passes makes msgpack-c allocate a few dozen bytes per byte of frame at most.
 */
static int counts_fit(const uint8_t *p, size_t len)
{
    size_t off = 0, i;
    uint64_t pending = 1; /* objects announced and not read yet */

    while (pending > 0) {
        uint64_t skip = 0, elems = 0, n = 0;
        size_t nlen = 0; /* bytes of the big-endian length or count that follows */
        uint8_t t;

        if (off >= len)
            return 0;
        t = p[off++];
        pending--;
        if (t >= 0x80 && t <= 0x8f)
            elems = 2 * (uint64_t)(t & 0x0f); /* fixmap */
        else if (t >= 0x90 && t <= 0x9f)
            elems = t & 0x0f; /* fixarray */
        else if (t >= 0xa0 && t <= 0xbf)
            skip = t & 0x1f; /* fixstr */
        switch (t) {
        case 0xc4: case 0xd9: nlen = 1; break;           /* bin8, str8 */
        case 0xc5: case 0xda: nlen = 2; break;           /* bin16, str16 */
        case 0xc6: case 0xdb: nlen = 4; break;           /* bin32, str32 */
        case 0xc7: nlen = 1; skip = 1; break;            /* ext8: + type byte */
        case 0xc8: nlen = 2; skip = 1; break;
        case 0xc9: nlen = 4; skip = 1; break;
        case 0xcc: case 0xd0: skip = 1; break;           /* 8-bit ints */
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xca: case 0xce: case 0xd2: skip = 4; break;
        case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
        case 0xd4: skip = 2; break;                      /* fixext 1..16 + type */
        case 0xd5: skip = 3; break;
        case 0xd6: skip = 5; break;
        case 0xd7: skip = 9; break;
        case 0xd8: skip = 17; break;
        case 0xdc: case 0xde: nlen = 2; break;           /* array16, map16 */
        case 0xdd: case 0xdf: nlen = 4; break;           /* array32, map32 */
        }
        if (nlen > len - off)
            return 0;
        for (i = 0; i < nlen; i++)
            n = n << 8 | p[off++];
        if (t == 0xdc || t == 0xdd)
            elems = n;
        else if (t == 0xde || t == 0xdf)
            elems = 2 * n;
        else
            skip += n;
        if (skip > len - off)
            return 0;
        off += skip;
        pending += elems; /* < 2^33 per byte of frame: no overflow */
    }
    return 1;
}

/* One array of unsigned integers per key (offsets, lengths, capacities). */
static int get_u64_array(const msgpack_object *arr, const char *name, size_t n,
                         uint64_t min, uint64_t **out, char *msg, size_t msglen)
{
    uint64_t *a;
    size_t i;

    if (!arr)
        return fail(msg, msglen, KVCD_EMISSING, "%s: required field missing", name);
    if (arr->via.array.size != n)
        return fail(msg, msglen, KVCD_EBADFIELD, "%s: %" PRIu32 " entries for %zu hashes",
                    name, arr->via.array.size, n);
    a = malloc(n * sizeof(*a));
    if (!a)
        return fail(msg, msglen, -ENOMEM, "out of memory");
    for (i = 0; i < n; i++) {
        if (get_uint(&arr->via.array.ptr[i], UINT64_MAX, &a[i]) != 0 || a[i] < min) {
            free(a);
            return fail(msg, msglen, KVCD_EBADFIELD,
                        "%s[%zu]: expected an unsigned integer of at least %" PRIu64,
                        name, i, min);
        }
    }
    *out = a;
    return 0;
}

int kvcd_proto_decode_req(const void *buf, size_t len, size_t max_keys,
                          kvcd_req_t *req, char *msg, size_t msglen)
{
    msgpack_unpacked up;
    const msgpack_object *map, *hashes = NULL;
    const msgpack_object *offsets = NULL, *lengths = NULL, *capacities = NULL;
    uint64_t v, world = 1, worker = 0, rank = 0;
    int have_v = 0, have_id = 0, have_op = 0, have_rank = 0, have_model = 0;
    uint64_t big_v = 0, big_op = 0; /* v, op above 2^32-1: known to be unknown */
    int have_pid = 0, have_fd = 0, have_size = 0, have_segment = 0;
    size_t off = 0, i;
    int rc;

    memset(req, 0, sizeof(*req));
    if (len == 0)
        return fail(msg, msglen, KVCD_EMALFORMED, "empty header frame");
    if (len > KVCD_HEADER_MAX)
        return fail(msg, msglen, KVCD_ETOOLARGE,
                    "header frame of %zu bytes exceeds %u", len, KVCD_HEADER_MAX);

    msgpack_unpacked_init(&up);
    if (!counts_fit(buf, len) ||
        msgpack_unpack_next(&up, buf, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        rc = fail(msg, msglen, KVCD_EMALFORMED, "header is not valid msgpack");
        goto out;
    }
    map = &up.data;
    if (map->type != MSGPACK_OBJECT_MAP) {
        rc = fail(msg, msglen, KVCD_EMALFORMED, "header is not a msgpack map");
        goto out;
    }

    /* id and op first, so every later error can be echoed with them. */
    for (i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *val = &map->via.map.ptr[i].val;

        if (key_is(k, "id") && get_uint(val, UINT64_MAX, &req->id) == 0)
            have_id = 1;
        else if (key_is(k, "op") && get_uint(val, UINT32_MAX, &v) == 0) {
            req->op = (uint32_t)v;
            have_op = 1;
        } else if (key_is(k, "op") && val->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            big_op = val->via.u64; /* a number, just not one we know */
            have_op = 1;
        }
    }
    if (off != len) {
        rc = fail(msg, msglen, KVCD_EMALFORMED,
                  "%zu trailing bytes after the header map", len - off);
        goto out;
    }

    for (i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *val = &map->via.map.ptr[i].val;

        if (key_is(k, "v")) {
            if (val->type == MSGPACK_OBJECT_POSITIVE_INTEGER && val->via.u64 > UINT32_MAX) {
                big_v = val->via.u64; /* a version, only not one we speak */
                have_v = 1;
                continue;
            }
            if (get_uint(val, UINT32_MAX, &v) != 0) {
                rc = fail(msg, msglen, KVCD_EBADFIELD, "v: expected a positive integer");
                goto out;
            }
            req->version = (uint32_t)v;
            have_v = 1;
        } else if (key_is(k, "id")) {
            if (!have_id) {
                rc = fail(msg, msglen, KVCD_EBADFIELD, "id: expected an unsigned integer");
                goto out;
            }
        } else if (key_is(k, "op")) {
            if (!have_op) {
                rc = fail(msg, msglen, KVCD_EBADFIELD, "op: expected an unsigned integer");
                goto out;
            }
        } else if (key_is(k, "model")) {
            if (val->type != MSGPACK_OBJECT_STR) {
                rc = fail(msg, msglen, KVCD_EBADFIELD, "model: expected a string");
                goto out;
            }
            req->base.model = val->via.str.ptr;
            req->base.model_len = val->via.str.size;
            have_model = 1;
        } else if (key_is(k, "salt")) {
            if (val->type != MSGPACK_OBJECT_STR) {
                rc = fail(msg, msglen, KVCD_EBADFIELD, "salt: expected a string");
                goto out;
            }
            req->base.salt = val->via.str.size ? val->via.str.ptr : NULL;
            req->base.salt_len = val->via.str.size;
        } else if (key_is(k, "kv_rank")) {
            if (get_uint(val, UINT32_MAX, &rank) != 0) {
                rc = fail(msg, msglen, KVCD_EBADFIELD, "kv_rank: expected a uint32");
                goto out;
            }
            have_rank = 1;
        } else if (key_is(k, "world_size")) {
            if (get_uint(val, 255, &world) != 0 || world == 0) {
                rc = fail(msg, msglen, KVCD_EBADFIELD,
                          "world_size: expected an integer in 1..255");
                goto out;
            }
        } else if (key_is(k, "worker_id")) {
            if (get_uint(val, 254, &worker) != 0) {
                rc = fail(msg, msglen, KVCD_EBADFIELD,
                          "worker_id: expected an integer in 0..254");
                goto out;
            }
        } else if (key_is(k, "group")) {
            if (get_uint(val, UINT32_MAX, &v) != 0) {
                rc = fail(msg, msglen, KVCD_EBADFIELD, "group: expected a uint32");
                goto out;
            }
            req->base.group = (uint32_t)v;
        } else if (key_is(k, "hashes")) {
            if (val->type != MSGPACK_OBJECT_ARRAY) {
                rc = fail(msg, msglen, KVCD_EBADFIELD,
                          "hashes: expected an array of bin");
                goto out;
            }
            hashes = val;
        } else if (key_is(k, "pid") || key_is(k, "fd")) {
            int is_pid = key_is(k, "pid");

            if (get_uint(val, INT32_MAX, is_pid ? &req->seg_pid : &req->seg_fd) != 0) {
                rc = fail(msg, msglen, KVCD_EBADFIELD, "%s: expected an integer in 0..%d",
                          is_pid ? "pid" : "fd", INT32_MAX);
                goto out;
            }
            *(is_pid ? &have_pid : &have_fd) = 1;
        } else if (key_is(k, "size")) {
            if (get_uint(val, UINT64_MAX, &req->seg_size) != 0 || req->seg_size == 0) {
                rc = fail(msg, msglen, KVCD_EBADFIELD,
                          "size: expected a positive number of bytes");
                goto out;
            }
            have_size = 1;
        } else if (key_is(k, "segment")) {
            if (get_uint(val, UINT64_MAX, &req->segment) != 0) {
                rc = fail(msg, msglen, KVCD_EBADFIELD, "segment: expected an unsigned integer");
                goto out;
            }
            have_segment = 1;
        } else if (key_is(k, "offsets") || key_is(k, "lengths") || key_is(k, "capacities")) {
            if (val->type != MSGPACK_OBJECT_ARRAY) {
                rc = fail(msg, msglen, KVCD_EBADFIELD,
                          "%.*s: expected an array of unsigned integers",
                          (int)k->via.str.size, k->via.str.ptr);
                goto out;
            }
            if (key_is(k, "offsets"))
                offsets = val;
            else if (key_is(k, "lengths"))
                lengths = val;
            else
                capacities = val;
        }
    }

    if (!have_v) {
        rc = fail(msg, msglen, KVCD_EMISSING, "v: required field missing");
        goto out;
    }
    if (big_v || req->version != KVCD_PROTO_VERSION) {
        rc = fail(msg, msglen, KVCD_EVERSION,
                  "protocol version %" PRIu64 " not supported (server speaks %d)",
                  big_v ? big_v : (uint64_t)req->version, KVCD_PROTO_VERSION);
        goto out;
    }
    if (!have_id) {
        rc = fail(msg, msglen, KVCD_EMISSING, "id: required field missing");
        goto out;
    }
    if (!have_op) {
        rc = fail(msg, msglen, KVCD_EMISSING, "op: required field missing");
        goto out;
    }
    if (big_op) {
        rc = fail(msg, msglen, KVCD_EUNKNOWNOP, "unknown operation %" PRIu64, big_op);
        goto out;
    }
    if (kvcd_op_name(req->op) == NULL) {
        rc = fail(msg, msglen, KVCD_EUNKNOWNOP, "unknown operation %" PRIu32, req->op);
        goto out;
    }
    if (req->op == KVCD_OP_REGISTER_SEGMENT && (!have_pid || !have_fd || !have_size)) {
        rc = fail(msg, msglen, KVCD_EMISSING, "%s: required field missing",
                  !have_pid ? "pid" : !have_fd ? "fd" : "size");
        goto out;
    }
    if (kvcd_op_uses_segment(req->op) && !have_segment) {
        rc = fail(msg, msglen, KVCD_EMISSING, "segment: required field missing");
        goto out;
    }
    if (!kvcd_op_has_keys(req->op)) {
        rc = 0;
        goto out;
    }

    if (!have_model) {
        rc = fail(msg, msglen, KVCD_EMISSING, "model: required field missing");
        goto out;
    }
    if (!hashes) {
        rc = fail(msg, msglen, KVCD_EMISSING, "hashes: required field missing");
        goto out;
    }
    if (!have_rank && worker >= world) {
        rc = fail(msg, msglen, KVCD_EBADFIELD,
                  "worker_id: %" PRIu64 " is not below world_size %" PRIu64,
                  worker, world);
        goto out;
    }
    req->base.kv_rank = have_rank ? (uint32_t)rank
                                  : kvcd_kv_rank((uint32_t)world, (uint32_t)worker);
    req->nkeys = hashes->via.array.size;
    if (req->nkeys == 0) {
        rc = fail(msg, msglen, KVCD_EBADFIELD, "hashes: empty");
        goto out;
    }
    if (req->nkeys > max_keys) {
        rc = fail(msg, msglen, KVCD_ETOOMANYKEYS, "hashes: %zu keys, at most %zu",
                  req->nkeys, max_keys);
        goto out;
    }
    req->hashes = malloc(req->nkeys * sizeof(*req->hashes));
    if (!req->hashes) {
        rc = fail(msg, msglen, -ENOMEM, "out of memory");
        goto out;
    }
    for (i = 0; i < req->nkeys; i++) {
        const msgpack_object *h = &hashes->via.array.ptr[i];

        if (h->type != MSGPACK_OBJECT_BIN || h->via.bin.size == 0 ||
            h->via.bin.size > KVCD_HASH_MAX) {
            rc = fail(msg, msglen, KVCD_EBADFIELD,
                      "hashes[%zu]: expected bin of 1..%d bytes", i, KVCD_HASH_MAX);
            goto out;
        }
        req->hashes[i].ptr = (const uint8_t *)h->via.bin.ptr;
        req->hashes[i].len = h->via.bin.size;
    }
    {
        kvcd_key_t k;
        const char *field = NULL;

        kvcd_req_key(req, 0, &k);
        rc = kvcd_key_validate(&k, &field);
        if (rc != 0) {
            rc = fail(msg, msglen, rc, "%s: bad value (see PROTOCOL.md section 2)",
                      field);
            goto out;
        }
    }
    if (req->op == KVCD_OP_STORE_SHM || req->op == KVCD_OP_LOAD_SHM) {
        int store = req->op == KVCD_OP_STORE_SHM;

        rc = get_u64_array(offsets, "offsets", req->nkeys, 0, &req->offsets, msg, msglen);
        if (rc == 0)
            rc = get_u64_array(store ? lengths : capacities, store ? "lengths" : "capacities",
                               req->nkeys, store ? 1 : 0, &req->lengths, msg, msglen);
        if (rc != 0)
            goto out;
    }
    if (req->op == KVCD_OP_RESERVE) {
        rc = get_u64_array(lengths, "lengths", req->nkeys, 1, &req->lengths, msg, msglen);
        if (rc != 0)
            goto out;
    }
    rc = 0;

out:
    msgpack_unpacked_destroy(&up);
    if (rc != 0)
        kvcd_proto_req_free(req);
    return rc;
}

void kvcd_proto_req_free(kvcd_req_t *req)
{
    free(req->hashes);
    req->hashes = NULL;
    req->nkeys = 0;
    free(req->offsets);
    req->offsets = NULL;
    free(req->lengths);
    req->lengths = NULL;
}

/* ---- writing ---- */

void kvcd_wbuf_init(kvcd_wbuf_t *w)
{
    msgpack_sbuffer_init(&w->sb);
    msgpack_packer_init(&w->pk, &w->sb, msgpack_sbuffer_write);
}

void kvcd_wbuf_destroy(kvcd_wbuf_t *w)
{
    msgpack_sbuffer_destroy(&w->sb);
}

char *kvcd_wbuf_release(kvcd_wbuf_t *w, size_t *len)
{
    *len = w->sb.size;
    return msgpack_sbuffer_release(&w->sb);
}

void kvcd_pack_cstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);

    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void kvcd_pack_json(msgpack_packer *pk, const json_t *v)
{
    const char *k;
    json_t *e;
    size_t i;

    switch (json_typeof(v)) {
    case JSON_OBJECT:
        msgpack_pack_map(pk, json_object_size(v));
        json_object_foreach((json_t *)v, k, e) {
            kvcd_pack_cstr(pk, k);
            kvcd_pack_json(pk, e);
        }
        break;
    case JSON_ARRAY:
        msgpack_pack_array(pk, json_array_size(v));
        json_array_foreach(v, i, e)
            kvcd_pack_json(pk, e);
        break;
    case JSON_STRING:
        msgpack_pack_str(pk, json_string_length(v));
        msgpack_pack_str_body(pk, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        msgpack_pack_int64(pk, json_integer_value(v));
        break;
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(v));
        break;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        break;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        break;
    case JSON_NULL:
        msgpack_pack_nil(pk);
        break;
    }
}

json_t *kvcd_msgpack_to_json(const msgpack_object *o)
{
    json_t *j;
    uint32_t i;

    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return json_integer(o->via.u64 > INT64_MAX ? INT64_MAX : (json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer(o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return json_real(o->via.f64);
    case MSGPACK_OBJECT_STR:
        return json_stringn(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN: {
        static const char hex[] = "0123456789abcdef";
        char *s = malloc((size_t)o->via.bin.size * 2 + 1);

        if (!s)
            return NULL;
        for (i = 0; i < o->via.bin.size; i++) {
            s[2 * i] = hex[(uint8_t)o->via.bin.ptr[i] >> 4];
            s[2 * i + 1] = hex[(uint8_t)o->via.bin.ptr[i] & 15];
        }
        j = json_stringn(s, (size_t)o->via.bin.size * 2);
        free(s);
        return j;
    }
    case MSGPACK_OBJECT_ARRAY:
        j = json_array();
        for (i = 0; j && i < o->via.array.size; i++)
            json_array_append_new(j, kvcd_msgpack_to_json(&o->via.array.ptr[i]));
        return j;
    case MSGPACK_OBJECT_MAP:
        j = json_object();
        for (i = 0; j && i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            char name[256];

            if (k->type != MSGPACK_OBJECT_STR)
                continue;
            snprintf(name, sizeof(name), "%.*s", (int)k->via.str.size, k->via.str.ptr);
            json_object_set_new(j, name, kvcd_msgpack_to_json(&o->via.map.ptr[i].val));
        }
        return j;
    default:
        return json_null();
    }
}

void kvcd_proto_reply_begin(kvcd_wbuf_t *w, uint64_t id, uint32_t op, int err,
                            const char *msg, size_t extra)
{
    msgpack_packer *pk = &w->pk;

    msgpack_pack_map(pk, 4 + (err ? 2 : 0) + extra);
    kvcd_pack_cstr(pk, "v");
    msgpack_pack_uint32(pk, KVCD_PROTO_VERSION);
    kvcd_pack_cstr(pk, "id");
    msgpack_pack_uint64(pk, id);
    kvcd_pack_cstr(pk, "op");
    msgpack_pack_uint32(pk, op);
    kvcd_pack_cstr(pk, "err");
    msgpack_pack_uint32(pk, (uint32_t)-err);
    if (err) {
        kvcd_pack_cstr(pk, "ename");
        kvcd_pack_cstr(pk, kvcd_errname(err));
        kvcd_pack_cstr(pk, "msg");
        kvcd_pack_cstr(pk, msg ? msg : kvcd_strerror(err));
    }
}

void kvcd_proto_encode_error(kvcd_wbuf_t *w, uint64_t id, uint32_t op, int err,
                             const char *msg)
{
    kvcd_proto_reply_begin(w, id, op, err, msg, 0);
}

void kvcd_proto_encode_results(kvcd_wbuf_t *w, uint64_t id, uint32_t op,
                               const int *results, size_t n)
{
    size_t i;

    kvcd_proto_reply_begin(w, id, op, 0, NULL, 1);
    kvcd_pack_cstr(&w->pk, "results");
    msgpack_pack_array(&w->pk, n);
    for (i = 0; i < n; i++)
        msgpack_pack_uint32(&w->pk, (uint32_t)-results[i]);
}

void kvcd_proto_encode_lookup(kvcd_wbuf_t *w, uint64_t id, size_t prefix,
                              const uint8_t *present, size_t n)
{
    size_t i;

    kvcd_proto_reply_begin(w, id, KVCD_OP_LOOKUP, 0, NULL, 2);
    kvcd_pack_cstr(&w->pk, "prefix");
    msgpack_pack_uint64(&w->pk, prefix);
    kvcd_pack_cstr(&w->pk, "present");
    msgpack_pack_array(&w->pk, n);
    for (i = 0; i < n; i++) {
        if (present[i])
            msgpack_pack_true(&w->pk);
        else
            msgpack_pack_false(&w->pk);
    }
}

static void pack_kv_u64(msgpack_packer *pk, const char *k, uint64_t v)
{
    kvcd_pack_cstr(pk, k);
    msgpack_pack_uint64(pk, v);
}

void kvcd_proto_encode_ping(kvcd_wbuf_t *w, uint64_t id, const kvcd_ping_t *p)
{
    kvcd_proto_reply_begin(w, id, KVCD_OP_PING, 0, NULL, 9);
    kvcd_pack_cstr(&w->pk, "server");
    kvcd_pack_cstr(&w->pk, p->server);
    pack_kv_u64(&w->pk, "proto", p->proto);
    pack_kv_u64(&w->pk, "chunk_size", p->chunk_size);
    pack_kv_u64(&w->pk, "max_frame", p->max_frame);
    pack_kv_u64(&w->pk, "max_keys", p->max_keys);
    pack_kv_u64(&w->pk, "max_request", p->max_request);
    pack_kv_u64(&w->pk, "l1_capacity", p->l1_capacity);
    kvcd_pack_cstr(&w->pk, "l1_shm");
    kvcd_pack_cstr(&w->pk, p->l1_shm ? p->l1_shm : "");
    pack_kv_u64(&w->pk, "l1_size", p->l1_size);
}

void kvcd_proto_encode_segment(kvcd_wbuf_t *w, uint64_t id, uint64_t segment)
{
    kvcd_proto_reply_begin(w, id, KVCD_OP_REGISTER_SEGMENT, 0, NULL, 1);
    pack_kv_u64(&w->pk, "segment", segment);
}

void kvcd_proto_encode_load_shm(kvcd_wbuf_t *w, uint64_t id, const int *results,
                                const uint64_t *lengths, size_t n)
{
    size_t i;

    kvcd_proto_reply_begin(w, id, KVCD_OP_LOAD_SHM, 0, NULL, 2);
    kvcd_pack_cstr(&w->pk, "results");
    msgpack_pack_array(&w->pk, n);
    for (i = 0; i < n; i++)
        msgpack_pack_uint32(&w->pk, (uint32_t)-results[i]);
    kvcd_pack_cstr(&w->pk, "lengths");
    msgpack_pack_array(&w->pk, n);
    for (i = 0; i < n; i++)
        msgpack_pack_uint64(&w->pk, lengths[i]);
}

static void pack_u64_array(msgpack_packer *pk, const char *k, const uint64_t *a, size_t n)
{
    size_t i;

    kvcd_pack_cstr(pk, k);
    msgpack_pack_array(pk, n);
    for (i = 0; i < n; i++)
        msgpack_pack_uint64(pk, a[i]);
}

void kvcd_proto_encode_extents(kvcd_wbuf_t *w, uint64_t id, uint32_t op, const int *results,
                               const uint64_t *offsets, const uint64_t *lengths, size_t n)
{
    size_t i;

    kvcd_proto_reply_begin(w, id, op, 0, NULL, 3);
    kvcd_pack_cstr(&w->pk, "results");
    msgpack_pack_array(&w->pk, n);
    for (i = 0; i < n; i++)
        msgpack_pack_uint32(&w->pk, (uint32_t)-results[i]);
    pack_u64_array(&w->pk, "offsets", offsets, n);
    pack_u64_array(&w->pk, "lengths", lengths, n);
}

static void put_le64(uint8_t *p, uint64_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, &v, 8);
#else
    int i;

    for (i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
#endif
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(&v, p, 8);
#else
    int i;

    for (i = 7; i >= 0; i--)
        v = v << 8 | p[i];
#endif
    return v;
}

void kvcd_proto_encode_lookup_map(kvcd_wbuf_t *w, uint64_t id, size_t prefix,
                                  const uint64_t *offsets, const uint64_t *lengths)
{
    uint8_t tmp[4096];
    size_t i, j;

    /* One bin instead of 2 x prefix msgpack integers: the per-key cost of
     * encoding and decoding is then a 16-byte store/load. */
    kvcd_proto_reply_begin(w, id, KVCD_OP_LOOKUP_MAP, 0, NULL, 2);
    pack_kv_u64(&w->pk, "prefix", prefix);
    kvcd_pack_cstr(&w->pk, "extents");
    msgpack_pack_bin(&w->pk, prefix * 16);
    for (i = 0; i < prefix; i += j) {
        for (j = 0; j < sizeof(tmp) / 16 && i + j < prefix; j++) {
            put_le64(tmp + 16 * j, offsets[i + j]);
            put_le64(tmp + 16 * j + 8, lengths[i + j]);
        }
        msgpack_pack_bin_body(&w->pk, tmp, j * 16);
    }
}

/* The header map with `extra` more pairs that the caller packs after it. */
static void encode_req_extra(kvcd_wbuf_t *w, uint64_t id, uint32_t op,
                             const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                             size_t n, size_t extra)
{
    msgpack_packer *pk = &w->pk;
    size_t i;

    msgpack_pack_map(pk, 3 + (base ? 5 : 0) + extra);
    pack_kv_u64(pk, "v", KVCD_PROTO_VERSION);
    pack_kv_u64(pk, "id", id);
    pack_kv_u64(pk, "op", op);
    if (!base)
        return;
    kvcd_pack_cstr(pk, "model");
    msgpack_pack_str(pk, base->model_len);
    msgpack_pack_str_body(pk, base->model, base->model_len);
    pack_kv_u64(pk, "kv_rank", base->kv_rank);
    pack_kv_u64(pk, "group", base->group);
    kvcd_pack_cstr(pk, "salt");
    msgpack_pack_str(pk, base->salt_len);
    msgpack_pack_str_body(pk, base->salt_len ? base->salt : "", base->salt_len);
    kvcd_pack_cstr(pk, "hashes");
    msgpack_pack_array(pk, n);
    for (i = 0; i < n; i++) {
        msgpack_pack_bin(pk, hashes[i].len);
        msgpack_pack_bin_body(pk, hashes[i].ptr, hashes[i].len);
    }
}

void kvcd_proto_encode_req(kvcd_wbuf_t *w, uint64_t id, uint32_t op,
                           const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                           size_t n)
{
    encode_req_extra(w, id, op, base, hashes, n, 0);
}

void kvcd_proto_encode_req_shm(kvcd_wbuf_t *w, uint64_t id, uint32_t op,
                               const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                               size_t n, const kvcd_shm_args_t *shm)
{
    msgpack_packer *pk = &w->pk;

    switch (op) {
    case KVCD_OP_REGISTER_SEGMENT:
        encode_req_extra(w, id, op, NULL, NULL, 0, 3);
        pack_kv_u64(pk, "pid", shm->pid);
        pack_kv_u64(pk, "fd", shm->fd);
        pack_kv_u64(pk, "size", shm->size);
        break;
    case KVCD_OP_STORE_SHM:
    case KVCD_OP_LOAD_SHM:
        encode_req_extra(w, id, op, base, hashes, n, 3);
        pack_kv_u64(pk, "segment", shm->segment);
        pack_u64_array(pk, "offsets", shm->offsets, n);
        pack_u64_array(pk, op == KVCD_OP_STORE_SHM ? "lengths" : "capacities",
                       shm->lengths, n);
        break;
    case KVCD_OP_RESERVE:
        encode_req_extra(w, id, op, base, hashes, n, 1);
        pack_u64_array(pk, "lengths", shm->lengths, n);
        break;
    case KVCD_OP_COMMIT:
    case KVCD_OP_ABORT:
    case KVCD_OP_MAP:
    case KVCD_OP_RELEASE:
    case KVCD_OP_LOOKUP_MAP:
        encode_req_extra(w, id, op, base, hashes, n, 0);
        break;
    default:
        encode_req_extra(w, id, op, base, hashes, n, 1);
        pack_kv_u64(pk, "segment", shm->segment);
        break;
    }
}

/* ---- reply decoding (clients) ---- */

static void copy_str(char *dst, size_t cap, const msgpack_object *v)
{
    size_t n = v->via.str.size < cap - 1 ? v->via.str.size : cap - 1;

    memcpy(dst, v->via.str.ptr, n);
    dst[n] = '\0';
}

int kvcd_proto_decode_reply(const void *buf, size_t len, kvcd_reply_hdr_t *rep)
{
    msgpack_unpacked up;
    const msgpack_object *map;
    size_t off = 0, i, j;
    uint64_t v;
    int rc = KVCD_EMALFORMED;

    memset(rep, 0, sizeof(*rep));
    msgpack_unpacked_init(&up);
    if (!counts_fit(buf, len) ||
        msgpack_unpack_next(&up, buf, len, &off) != MSGPACK_UNPACK_SUCCESS ||
        off != len || up.data.type != MSGPACK_OBJECT_MAP)
        goto out;
    map = &up.data;
    for (i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *val = &map->via.map.ptr[i].val;

        if (key_is(k, "v") && get_uint(val, UINT32_MAX, &v) == 0)
            rep->version = (uint32_t)v;
        else if (key_is(k, "id") && get_uint(val, UINT64_MAX, &v) == 0)
            rep->id = v;
        else if (key_is(k, "op") && get_uint(val, UINT32_MAX, &v) == 0)
            rep->op = (uint32_t)v;
        else if (key_is(k, "err") && get_uint(val, INT32_MAX, &v) == 0)
            rep->err = -(int)v;
        else if (key_is(k, "ename") && val->type == MSGPACK_OBJECT_STR)
            copy_str(rep->ename, sizeof(rep->ename), val);
        else if (key_is(k, "msg") && val->type == MSGPACK_OBJECT_STR)
            copy_str(rep->msg, sizeof(rep->msg), val);
        else if (key_is(k, "server") && val->type == MSGPACK_OBJECT_STR) {
            copy_str(rep->server_buf, sizeof(rep->server_buf), val);
            rep->ping.server = rep->server_buf;
        } else if (key_is(k, "proto") && get_uint(val, UINT32_MAX, &v) == 0)
            rep->ping.proto = (uint32_t)v;
        else if (key_is(k, "chunk_size"))
            get_uint(val, UINT64_MAX, &rep->ping.chunk_size);
        else if (key_is(k, "max_frame"))
            get_uint(val, UINT64_MAX, &rep->ping.max_frame);
        else if (key_is(k, "max_keys"))
            get_uint(val, UINT64_MAX, &rep->ping.max_keys);
        else if (key_is(k, "max_request"))
            get_uint(val, UINT64_MAX, &rep->ping.max_request);
        else if (key_is(k, "l1_capacity"))
            get_uint(val, UINT64_MAX, &rep->ping.l1_capacity);
        else if (key_is(k, "l1_size"))
            get_uint(val, UINT64_MAX, &rep->ping.l1_size);
        else if (key_is(k, "l1_shm") && val->type == MSGPACK_OBJECT_STR) {
            copy_str(rep->shm_buf, sizeof(rep->shm_buf), val);
            rep->ping.l1_shm = rep->shm_buf;
        }
        else if (key_is(k, "prefix"))
            get_uint(val, UINT64_MAX, &rep->prefix);
        else if (key_is(k, "removed"))
            get_uint(val, UINT64_MAX, &rep->removed);
        else if (key_is(k, "segment"))
            get_uint(val, UINT64_MAX, &rep->segment);
        else if ((key_is(k, "lengths") || key_is(k, "offsets")) &&
                 val->type == MSGPACK_OBJECT_ARRAY) {
            uint64_t **a = key_is(k, "lengths") ? &rep->lengths : &rep->offsets;
            size_t n = val->via.array.size;

            if (rep->nresults && rep->nresults != n)
                goto out;
            rep->nresults = n;
            free(*a);
            *a = calloc(n ? n : 1, sizeof(uint64_t));
            if (!*a)
                goto nomem;
            for (j = 0; j < n; j++)
                if (get_uint(&val->via.array.ptr[j], UINT64_MAX, &(*a)[j]) != 0)
                    goto out;
        }
        else if (key_is(k, "extents") && val->type == MSGPACK_OBJECT_BIN) {
            const uint8_t *p = (const uint8_t *)val->via.bin.ptr;
            size_t n = val->via.bin.size / 16;

            if (val->via.bin.size % 16 != 0)
                goto out;
            free(rep->offsets);
            free(rep->lengths);
            rep->offsets = malloc((n ? n : 1) * sizeof(uint64_t));
            rep->lengths = malloc((n ? n : 1) * sizeof(uint64_t));
            if (!rep->offsets || !rep->lengths)
                goto nomem;
            for (j = 0; j < n; j++) {
                rep->offsets[j] = get_le64(p + 16 * j);
                rep->lengths[j] = get_le64(p + 16 * j + 8);
            }
            rep->nextents = n;
        }
        else if (key_is(k, "status")) {
            json_decref(rep->status);
            rep->status = kvcd_msgpack_to_json(val);
        } else if ((key_is(k, "results") || key_is(k, "present")) &&
                   val->type == MSGPACK_OBJECT_ARRAY) {
            int is_present = key_is(k, "present");
            size_t n = val->via.array.size;

            if (rep->nresults && rep->nresults != n)
                goto out;
            rep->nresults = n;
            if (is_present) {
                free(rep->present);
                rep->present = calloc(n ? n : 1, 1);
                if (!rep->present)
                    goto nomem;
            } else {
                free(rep->results);
                rep->results = calloc(n ? n : 1, sizeof(int));
                if (!rep->results)
                    goto nomem;
            }
            for (j = 0; j < n; j++) {
                const msgpack_object *e = &val->via.array.ptr[j];

                if (is_present)
                    rep->present[j] = e->type == MSGPACK_OBJECT_BOOLEAN && e->via.boolean;
                else if (get_uint(e, INT32_MAX, &v) == 0)
                    rep->results[j] = -(int)v;
                else
                    goto out;
            }
        }
    }
    rc = 0;
    goto out;
nomem:
    rc = -ENOMEM;
out:
    msgpack_unpacked_destroy(&up);
    if (rc != 0)
        kvcd_proto_reply_free(rep);
    return rc;
}

void kvcd_proto_reply_free(kvcd_reply_hdr_t *rep)
{
    free(rep->results);
    free(rep->present);
    free(rep->lengths);
    free(rep->offsets);
    json_decref(rep->status);
    rep->results = NULL;
    rep->present = NULL;
    rep->lengths = NULL;
    rep->offsets = NULL;
    rep->status = NULL;
    rep->nresults = 0;
    rep->nextents = 0;
}
