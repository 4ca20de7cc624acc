/*
 * test_lmcache_codec.c - the LMCache 0.5.6 protocol codec and chunk hasher
 * (protocol/lmcache.c), byte for byte.
 *
 * The vectors are what lmcache 0.5.6's own code writes (msgspec_encode and
 * encode_operation of lmcache.v1.multiprocess.transport.zmq_impl, its
 * TokenHasher), captured once; tests/python/test_lmcache_compat.py checks the
 * same codec against the installed package itself on every run. A seeded
 * mutation fuzzer feeds truncated and garbled frame sequences to the decoder,
 * which must never read outside them, crash or leak, and must keep its
 * postconditions on success and on failure.
 */
#include <check.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/kvcd_err.h"
#include "protocol/lmcache.h"
#include "tests/support.h"

/* ---- helpers ---------------------------------------------------------------- */

static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = 0;

    for (; h[0] && h[1]; h += 2) {
        unsigned v;

        ck_assert_int_eq(sscanf(h, "%2x", &v), 1);
        out[n++] = (uint8_t)v;
    }
    return n;
}

static void hexs(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
    out[2 * n] = '\0';
}

/* Frames from hex strings (NULL-terminated list). */
typedef struct {
    uint8_t buf[8][512];
    const void *f[8];
    size_t len[8];
    size_t n;
} frames_t;

static void frames(frames_t *fr, ...)
{
    va_list ap;
    const char *h;

    memset(fr, 0, sizeof(*fr));
    va_start(ap, fr);
    while ((h = va_arg(ap, const char *))) {
        fr->len[fr->n] = unhex(h, fr->buf[fr->n]);
        fr->f[fr->n] = fr->buf[fr->n];
        fr->n++;
    }
    va_end(ap);
}

static int dec(frames_t *fr, kvcd_lmc_req_t *r, char *msg)
{
    return kvcd_lmc_decode(fr->f, fr->len, fr->n, r, msg, 200);
}

static void enc_is(kvcd_wbuf_t *w, const char *want)
{
    char got[4096];

    ck_assert_uint_lt(w->sb.size * 2, sizeof(got));
    hexs((const uint8_t *)w->sb.data, w->sb.size, got);
    ck_assert_str_eq(got, want);
    kvcd_wbuf_destroy(w);
    kvcd_wbuf_init(w);
}

static int spaneq(kvcd_lmc_span_t s, const char *lit)
{
    return s.n == strlen(lit) && !memcmp(s.p, lit, s.n);
}

/* msgspec's encoding of IPCCacheServerKey(model_name="org/m", world_size=2,
 * worker_id=None, token_ids=(1,2,3,4,5), start=0, end=4, request_id="r1",
 * num_kv_readers=1), and of a RegisterEngineDrivenContextPayload. */
#define KEY_HEX                                                                                    \
    "8aaa6d6f64656c5f6e616d65a56f72672f6daa776f726c645f73697a6502a9776f726b65725f6964c0a9746f6b65" \
    "6e5f696473950102030405a5737461727400a3656e6404aa726571756573745f6964a27231aa63616368655f7361" \
    "6c74a0af726571756573745f636f6e66696773c0ae6e756d5f6b765f7265616465727301"
#define REG_HEX                                                                                    \
    "89ab696e7374616e63655f6964cd1092aa6d6f64656c5f6e616d65a56f72672f6daa776f726c645f73697a6501aa" \
    "626c6f636b5f73697a6510aa6e756d5f6c617965727302af68696464656e5f64696d5f73697a65cc80a964747970" \
    "655f737472a862666c6f61743136a77573655f6d6c61c2b26e756d5f706879736963616c5f736c6f7473c0"

/* ---- decoding ----------------------------------------------------------------- */

START_TEST(test_decode_lookup)
{
    frames_t fr;
    kvcd_lmc_req_t r;
    char msg[200];

    frames(&fr, "07", "08", KEY_HEX, "02", NULL);
    ck_assert_int_eq(dec(&fr, &r, msg), 0);
    ck_assert_uint_eq(r.uid, 7);
    ck_assert_int_eq(r.op, KVCD_LMC_OP_LOOKUP);
    ck_assert_int_eq(r.wire_id, 8);
    ck_assert(spaneq(r.op_name, "lookup"));
    ck_assert_uint_eq(r.nparams, 2);
    ck_assert(r.has_key);
    ck_assert(spaneq(r.key.model_name, "org/m"));
    ck_assert_int_eq(r.key.world_size, 2);
    ck_assert(!r.key.has_worker_id);
    ck_assert_uint_eq(r.key.ntokens, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_uint_eq(r.key.token_ids[i], (uint32_t)i + 1);
    ck_assert_int_eq(r.key.start, 0);
    ck_assert_int_eq(r.key.end, 4);
    ck_assert(spaneq(r.key.request_id, "r1"));
    ck_assert_uint_eq(r.key.cache_salt.n, 0);
    ck_assert_int_eq(r.key.num_kv_readers, 1);
    ck_assert_uint_eq(r.key.missing, 0);
    ck_assert_int_eq(r.tp_size, 2);
    /* the reply echoes uid and op frames as they came */
    ck_assert_ptr_eq(r.uid_frame.p, fr.f[0]);
    ck_assert_ptr_eq(r.op_frame.p, fr.f[1]);
    ck_assert_int_eq(kvcd_lmc_op_reply(r.op), KVCD_LMC_R_NONE);
    kvcd_lmc_req_free(&r);
}
END_TEST

START_TEST(test_decode_by_name_and_engine_driven)
{
    frames_t fr;
    kvcd_lmc_req_t r;
    char msg[200];

    /* an op sent by its name: cb_reorder_plan(key, keep_prefix, budget_ms) */
    frames(&fr, "cd0400", "af63625f72656f726465725f706c616e", KEY_HEX, "05", "cd03e8", NULL);
    ck_assert_int_eq(dec(&fr, &r, msg), 0);
    ck_assert_uint_eq(r.uid, 1024);
    ck_assert_int_eq(r.op, KVCD_LMC_OP_CB_REORDER_PLAN);
    ck_assert_int_eq(r.wire_id, -1);
    ck_assert_int_eq(r.params[2].i, 1000);
    kvcd_lmc_req_free(&r);

    frames(&fr, "00", "0e", REG_HEX, NULL);
    ck_assert_int_eq(dec(&fr, &r, msg), 0);
    ck_assert_int_eq(r.op, KVCD_LMC_OP_REGISTER_ED_CONTEXT);
    ck_assert_int_eq(r.reg.instance_id, 4242);
    ck_assert(spaneq(r.reg.model_name, "org/m"));
    ck_assert_int_eq(r.reg.world_size, 1);
    ck_assert_int_eq(r.reg.block_size, 16);
    ck_assert_int_eq(r.reg.num_layers, 2);
    ck_assert_int_eq(r.reg.hidden_dim_size, 128);
    ck_assert(spaneq(r.reg.dtype_str, "bfloat16"));
    ck_assert(!r.reg.use_mla);
    ck_assert(!r.reg.has_num_physical_slots);
    ck_assert_uint_eq(r.reg.missing, 0);
    kvcd_lmc_req_free(&r);

    /* commit_store(key, instance_id, b"") and wait_prefetch_status("r1", 1.5) */
    frames(&fr, "01", "11", KEY_HEX, "cd1092", "c400", NULL);
    ck_assert_int_eq(dec(&fr, &r, msg), 0);
    ck_assert(r.has_instance_id);
    ck_assert_int_eq(r.instance_id, 4242);
    ck_assert_uint_eq(r.data.n, 0);
    ck_assert_ptr_nonnull(r.data.p);
    kvcd_lmc_req_free(&r);
    frames(&fr, "02", "0a", "a27231", "cb3ff8000000000000", NULL);
    ck_assert_int_eq(dec(&fr, &r, msg), 0);
    ck_assert(spaneq(r.request_id, "r1"));
    ck_assert(r.timeout == 1.5);
    kvcd_lmc_req_free(&r);

    /* ping(None), ping(7), ping(True): LMCache coerces a bool to int */
    frames(&fr, "03", "16", "c0", NULL);
    ck_assert_int_eq(dec(&fr, &r, msg), 0);
    ck_assert(!r.has_instance_id);
    frames(&fr, "03", "16", "07", NULL);
    ck_assert_int_eq(dec(&fr, &r, msg), 0);
    ck_assert(r.has_instance_id && r.instance_id == 7);
    frames(&fr, "03", "16", "c3", NULL);
    ck_assert_int_eq(dec(&fr, &r, msg), 0);
    ck_assert_int_eq(r.instance_id, 1);
    /* no-parameter ops and the stream control message */
    frames(&fr, "04", "15", NULL);
    ck_assert_int_eq(dec(&fr, &r, msg), 0);
    ck_assert_int_eq(r.op, KVCD_LMC_OP_GET_CHUNK_SIZE);
    frames(&fr, "05", "", "61636b", NULL);
    ck_assert_int_eq(dec(&fr, &r, msg), 0);
    ck_assert(r.control && spaneq(r.action, "ack"));
}
END_TEST

START_TEST(test_decode_tolerant_key)
{
    frames_t fr;
    kvcd_lmc_req_t r;
    char msg[200];

    /* {"token_ids": [7], "future": [1, {"x": 2}], "worker_id": 1, "cache_salt": "s"}:
     * unknown fields skipped, missing ones defaulted and flagged */
    frames(&fr, "09", "08",
           "84a9746f6b656e5f69647391" "07" "a6667574757265" "9201" "81a178" "02"
           "a9776f726b65725f6964" "01" "aa63616368655f73616c74" "a173",
           "01", NULL);
    ck_assert_int_eq(dec(&fr, &r, msg), 0);
    ck_assert_uint_eq(r.key.ntokens, 1);
    ck_assert_uint_eq(r.key.token_ids[0], 7);
    ck_assert(r.key.has_worker_id && r.key.worker_id == 1);
    ck_assert(spaneq(r.key.cache_salt, "s"));
    ck_assert_int_eq(r.key.world_size, 1);
    ck_assert_int_eq(r.key.num_kv_readers, 0);
    ck_assert_uint_eq(r.key.missing, KVCD_LMC_KEY_NO_MODEL | KVCD_LMC_KEY_NO_WORLD |
                                         KVCD_LMC_KEY_NO_START | KVCD_LMC_KEY_NO_END |
                                         KVCD_LMC_KEY_NO_REQUEST);
    kvcd_lmc_req_free(&r);
}
END_TEST

START_TEST(test_decode_errors)
{
    static const struct {
        const char *f[6];
        int rc;
        const char *in_msg;
    } bad[] = {
        {{"a161", "08", NULL}, KVCD_EMALFORMED, "uid"},           /* uid not an int */
        {{"ff", "08", NULL}, KVCD_EMALFORMED, "uid"},             /* negative uid */
        {{"0102", "08", NULL}, KVCD_EMALFORMED, "uid"},           /* two values */
        {{"01", NULL}, KVCD_EMALFORMED, "operation"},             /* no op */
        {{"01", "0b", NULL}, KVCD_EUNKNOWNOP, "11"},              /* retired id 11 */
        {{"01", "a3666f6f", NULL}, KVCD_EUNKNOWNOP, "foo"},       /* unknown name */
        {{"01", "c0", NULL}, KVCD_EMALFORMED, "operation"},       /* op nil */
        {{"01", "08", KEY_HEX, NULL}, KVCD_EMALFORMED, "payload"}, /* lookup: 1 of 2 */
        {{"01", "15", "00", NULL}, KVCD_EMALFORMED, "payload"},   /* get_chunk_size(x) */
        {{"01", "08", "01", "02", NULL}, KVCD_EBADFIELD, "key"},   /* key not a map */
        {{"01", "08", "81a9746f6b656e5f69647391ff", "02", NULL}, KVCD_EBADFIELD,
         "token_ids[0]"},                                         /* token -1 */
        {{"01", "08", "81a9746f6b656e5f69647391cf0000000100000000", "02", NULL}, KVCD_EBADFIELD,
         "token_ids[0]"},                                         /* token 2^32 */
        {{"01", "08", "81aa776f726c645f73697a65a131", "02", NULL}, KVCD_EBADFIELD,
         "world_size"},                                           /* "1" */
        {{"01", "08", KEY_HEX, "a131", NULL}, KVCD_EBADFIELD, "tp_size"},
        {{"01", "14", "01", NULL}, KVCD_EBADFIELD, "force"},      /* clear(1) */
        {{"01", "11", KEY_HEX, "01", "a0", NULL}, KVCD_EBADFIELD, "bytes"},
        {{"01", "0e", "81ab696e7374616e63655f6964a0", NULL}, KVCD_EBADFIELD, "instance_id"},
        {{"01", "08", "81a9746f6b656e5f6964739301", "02", NULL}, KVCD_EMALFORMED, "truncated"},
        {{"01", "", "6e6f", NULL}, KVCD_EBADFIELD, "action"},      /* control "no" */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        frames_t fr;
        kvcd_lmc_req_t r;
        char msg[200];
        int rc;

        memset(&fr, 0, sizeof(fr));
        for (fr.n = 0; bad[i].f[fr.n]; fr.n++) {
            fr.len[fr.n] = unhex(bad[i].f[fr.n], fr.buf[fr.n]);
            fr.f[fr.n] = fr.buf[fr.n];
        }
        rc = dec(&fr, &r, msg);
        ck_assert_msg(rc == bad[i].rc, "case %zu: rc %d (%s), want %d", i, rc, msg, bad[i].rc);
        ck_assert_msg(strstr(msg, bad[i].in_msg), "case %zu: message \"%s\" lacks \"%s\"", i, msg,
                      bad[i].in_msg);
        ck_assert_ptr_null(r.key.token_ids);
        if (fr.n >= 2 && rc != KVCD_EMALFORMED)
            ck_assert_uint_eq(r.uid, 1); /* answerable: the uid is known */
    }
    ck_assert(kvcd_lmc_is_lmcache("\x07", 1));
    ck_assert(kvcd_lmc_is_lmcache("\xcd\x04\x00", 3));
    ck_assert(!kvcd_lmc_is_lmcache("\x81\xa1v\x01", 4)); /* kvcd's header: a map */
    ck_assert(!kvcd_lmc_is_lmcache("", 0));
    ck_assert(!kvcd_lmc_is_lmcache("\xcd\x04", 2));
}
END_TEST

START_TEST(test_op_table)
{
    /* the frozen legacy ids, and names */
    static const struct {
        const char *name;
        int id;
    } want[] = {{"register_kv_cache", 1},
                {"store", 6},
                {"retrieve", 7},
                {"lookup", 8},
                {"query_prefetch_status", 9},
                {"wait_prefetch_status", 10},
                {"free_lookup_locks", 12},
                {"end_session", 13},
                {"register_kv_cache_engine_driven_context", 14},
                {"unregister_kv_cache_engine_driven_context", 15},
                {"prepare_store", 16},
                {"commit_store", 17},
                {"prepare_retrieve", 18},
                {"commit_retrieve", 19},
                {"clear", 20},
                {"get_chunk_size", 21},
                {"ping", 22},
                {"report_block_allocation", 23},
                {"noop", 24},
                {"get_experimental", 32},
                {"cb_protocol_handshake", 33},
                {"subscribe_kv_events", -1}};

    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        kvcd_lmc_op_t op = kvcd_lmc_op_by_name(want[i].name, strlen(want[i].name));

        ck_assert_msg(op != KVCD_LMC_OP_UNKNOWN, "%s", want[i].name);
        ck_assert_int_eq(kvcd_lmc_op_wire_id(op), want[i].id);
        ck_assert_str_eq(kvcd_lmc_op_name(op), want[i].name);
        if (want[i].id > 0)
            ck_assert_int_eq(kvcd_lmc_op_by_id(want[i].id), op);
    }
    ck_assert_int_eq(kvcd_lmc_op_by_id(11), KVCD_LMC_OP_UNKNOWN);
    ck_assert_int_eq(kvcd_lmc_op_by_id(34), KVCD_LMC_OP_UNKNOWN);
    ck_assert_ptr_null(kvcd_lmc_op_name(KVCD_LMC_OP_UNKNOWN));
}
END_TEST

/* ---- encoding: msgspec's bytes ------------------------------------------------- */

START_TEST(test_encode_vectors)
{
    kvcd_wbuf_t w;
    const int64_t shape[] = {2, 2, 16, 64}, idx[] = {1};
    kvcd_lmc_slot_t slot = {4096, 8192, shape, 4, "bfloat16"};

    kvcd_wbuf_init(&w);
    kvcd_lmc_encode_register(&w, "/kvcd_l1", 1u << 30);
    enc_is(&w, "82a873686d5f6e616d65a82f6b7663645f6c31a9706f6f6c5f73697a65ce40000000");
    kvcd_lmc_encode_prepare_store(&w, &slot, idx, 1);
    enc_is(&w, "81a7636f6e7465787482a5736c6f74739184a66f6666736574cd1000a66c656e677468cd2000a5"
               "73686170659402021040a56474797065a862666c6f61743136ad6368756e6b5f696e6469636573"
               "9101");
    kvcd_lmc_encode_prepare_store(&w, NULL, NULL, 0);
    enc_is(&w, "81a7636f6e7465787480");
    kvcd_lmc_encode_prepare_retrieve(&w, false, NULL, 0, NULL, 0);
    enc_is(&w, "83a773756363657373c2a464617461c400a7636f6e7465787480");
    kvcd_lmc_encode_bool(&w, true);
    enc_is(&w, "c3");
    kvcd_lmc_encode_int(&w, 300);
    enc_is(&w, "cd012c");
    kvcd_lmc_encode_int(&w, -33);
    enc_is(&w, "d0df");
    kvcd_lmc_encode_bytes_bool(&w, NULL, 0, false);
    enc_is(&w, "92c400c2");
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* Every op has an answer of its declared type (or no frame where None is one). */
START_TEST(test_refusals_typed)
{
    kvcd_wbuf_t w;

    kvcd_wbuf_init(&w);
    for (int op = 1; op < KVCD_LMC_OP_COUNT; op++) {
        bool frame = kvcd_lmc_encode_refusal(&w, (kvcd_lmc_op_t)op);
        kvcd_lmc_reply_t rk = kvcd_lmc_op_reply((kvcd_lmc_op_t)op);
        const uint8_t *b = (const uint8_t *)w.sb.data;

        if (!frame) {
            ck_assert_uint_eq(w.sb.size, 0);
            ck_assert(rk == KVCD_LMC_R_NONE || rk == KVCD_LMC_R_OPTIONAL ||
                      rk == KVCD_LMC_R_STREAM || rk == KVCD_LMC_R_STRUCT);
            continue;
        }
        ck_assert_uint_gt(w.sb.size, 0);
        switch (rk) {
        case KVCD_LMC_R_BOOL:
            ck_assert_uint_eq(b[0], 0xc2);
            break;
        case KVCD_LMC_R_INT:
        case KVCD_LMC_R_INT_OR_NONE:
            ck_assert_uint_eq(b[0], 0x00);
            break;
        case KVCD_LMC_R_PREPARE_RETRIEVE:
        case KVCD_LMC_R_PREPARE_STORE:
        case KVCD_LMC_R_REGISTER:
            ck_assert_uint_eq(b[0] & 0xf0, 0x80);
            break;
        default:
            break;
        }
        kvcd_wbuf_destroy(&w);
        kvcd_wbuf_init(&w);
    }
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* ---- hashing ------------------------------------------------------------------- */

START_TEST(test_hash_vectors)
{
    uint8_t nh[32], out[4][32];
    uint32_t t10[10], t600[600];
    char h[65];
    char msg[256];
    kvcd_lmc_hash_t alg;

    kvcd_lmc_none_hash(nh);
    hexs(nh, 32, h);
    ck_assert_str_eq(h, "7e3eff9ef7613a50340eb12677ee03b83ac759fcba9bb32705f07248d56d473b");
    for (int i = 0; i < 10; i++)
        t10[i] = (uint32_t)i + 1;
    ck_assert_uint_eq(kvcd_lmc_chunk_hashes(t10, 10, 4, 0, -1, out, 4), 2); /* 9, 10 unhashed */
    hexs(out[0], 32, h);
    ck_assert_str_eq(h, "6309ed506b8721905753f5c73c070bb21c3aafbd9b474b1e231f41368b71123c");
    hexs(out[1], 32, h);
    ck_assert_str_eq(h, "98efc76eafb06cfe774c31ff151f300b61a614c27982a211bb8cdbd83a8c0e19");
    /* start: chunks before it are chained but not returned; end: hashing stops */
    ck_assert_uint_eq(kvcd_lmc_chunk_hashes(t10, 10, 4, 4, -1, out, 4), 1);
    hexs(out[0], 32, h);
    ck_assert_str_eq(h, "98efc76eafb06cfe774c31ff151f300b61a614c27982a211bb8cdbd83a8c0e19");
    ck_assert_uint_eq(kvcd_lmc_chunk_hashes(t10, 10, 4, 0, 7, out, 4), 1);
    ck_assert_uint_eq(kvcd_lmc_chunk_hashes(t10, 3, 4, 0, -1, out, 4), 0);
    ck_assert_uint_eq(kvcd_lmc_chunk_hashes(t10, 10, 4, 0, -1, out, 1), 2); /* count, 1 written */
    for (int i = 0; i < 600; i++)
        t600[i] = 1000 + (uint32_t)i;
    ck_assert_uint_eq(kvcd_lmc_chunk_hashes(t600, 600, 256, 0, -1, out, 4), 2);
    hexs(out[0], 32, h);
    ck_assert_str_eq(h, "d526d88f0c387e4049f866a4c572cbf658276fcae250b069051fd1fff3ad0579");
    hexs(out[1], 32, h);
    ck_assert_str_eq(h, "8be5f115945ff3c4eb943172f8edfdcdf3432274c3d3dbd2436fed9a9fe494f5");

    ck_assert_int_eq(kvcd_lmc_hash_select("blake3", &alg, msg, sizeof(msg)), 0);
    ck_assert_int_eq(alg, KVCD_LMC_HASH_BLAKE3);
    ck_assert_int_eq(kvcd_lmc_hash_select("sha256_cbor", &alg, msg, sizeof(msg)), KVCD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(msg, "--hash-algorithm"));
    ck_assert_ptr_nonnull(strstr(msg, "sha256_cbor"));
    ck_assert_ptr_nonnull(strstr(msg, "blake3"));
    ck_assert_int_eq(kvcd_lmc_hash_select("builtin", &alg, msg, sizeof(msg)), KVCD_ECONFIG);
    ck_assert_ptr_nonnull(strstr(msg, "Python"));
}
END_TEST

/* ---- fuzzing ------------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t rnd_below(size_t n)
{
    return n ? (size_t)(rnd() % n) : 0;
}

static void mutate(uint8_t *b, size_t *n, size_t cap)
{
    static const uint8_t interesting[] = {0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0,
                                          0xc1, 0xc2, 0xc3, 0xc4, 0xc6, 0xca, 0xcb, 0xcc, 0xcf,
                                          0xd0, 0xd3, 0xd4, 0xd8, 0xd9, 0xdb, 0xdc, 0xdd, 0xde,
                                          0xdf, 0xe0, 0xff, 0xc7, 0xc9};
    size_t edits = 1 + rnd_below(6);

    for (size_t e = 0; e < edits && *n > 0; e++) {
        size_t at = rnd_below(*n);

        switch (rnd_below(6)) {
        case 0:
            b[at] = (uint8_t)rnd();
            break;
        case 1:
            b[at] ^= (uint8_t)(1u << rnd_below(8));
            break;
        case 2:
        case 3:
            b[at] = interesting[rnd_below(sizeof(interesting))];
            break;
        case 4:
            *n = at;
            break;
        case 5:
            if (*n < cap)
                b[(*n)++] = (uint8_t)rnd();
            break;
        }
    }
}

static int inside(kvcd_lmc_span_t s, const uint8_t *const *f, const size_t *len, size_t n)
{
    if (!s.p || !s.n)
        return 1;
    for (size_t i = 0; i < n; i++)
        if ((const uint8_t *)s.p >= f[i] && (const uint8_t *)s.p + s.n <= f[i] + len[i])
            return 1;
    /* op names of the table are static strings */
    return 0;
}

START_TEST(test_fuzz_decode)
{
    enum { ITER = 40000 };
    static const char *const corpus[][6] = {
        {"07", "08", KEY_HEX, "02", NULL},
        {"01", "10", KEY_HEX, "cd1092", NULL},
        {"01", "11", KEY_HEX, "cd1092", "c403616263", NULL},
        {"00", "0e", REG_HEX, NULL},
        {"02", "0a", "a27231", "cb3ff8000000000000", NULL},
        {"03", "16", "c0", NULL},
        {"cd0400", "af63625f72656f726465725f706c616e", KEY_HEX, "05", "cd03e8", NULL},
        {"05", "", "61636b", NULL},
        {"06", "17", "01", "a16d", "9183a67265715f6964a172ad6e65775f626c6f636b5f69647391"
                                    "01ad6e65775f746f6b656e5f69647390", NULL},
    };
    size_t ok = 0, bad = 0, nc = sizeof(corpus) / sizeof(corpus[0]);

    rng_state = 0x6c6d6361; /* fixed: failures reproduce */
    for (size_t it = 0; it < ITER; it++) {
        const char *const *c = corpus[rnd_below(nc)];
        uint8_t *buf[8];
        const void *f[8];
        size_t len[8], n = 0, nf;
        kvcd_lmc_req_t r;
        char msg[128];
        int rc;

        for (n = 0; c[n]; n++) {
            uint8_t tmp[512];
            size_t l = unhex(c[n], tmp);

            buf[n] = malloc(l + 16);
            ck_assert_ptr_nonnull(buf[n]);
            memcpy(buf[n], tmp, l);
            len[n] = l;
        }
        nf = n;
        /* garble one or two frames; sometimes drop or duplicate a frame */
        for (int k = 0; k < 1 + (int)rnd_below(2); k++) {
            size_t w = rnd_below(nf);

            mutate(buf[w], &len[w], len[w] + 16);
        }
        if (rnd_below(10) == 0 && nf > 1)
            nf--;
        for (size_t i = 0; i < nf; i++) {
            /* exact-size copies so that ASan sees any read past a frame */
            uint8_t *e = malloc(len[i] ? len[i] : 1);

            ck_assert_ptr_nonnull(e);
            memcpy(e, buf[i], len[i]);
            free(buf[i]);
            buf[i] = e;
            f[i] = e;
        }
        memset(msg, 0x5a, sizeof(msg));
        rc = kvcd_lmc_decode(f, len, nf, &r, msg, sizeof(msg));
        if (rc == 0) {
            ok++;
            ck_assert(r.control || (r.op > KVCD_LMC_OP_UNKNOWN && r.op < KVCD_LMC_OP_COUNT));
            if (!r.control)
                ck_assert_uint_eq(r.nparams, kvcd_lmc_op_nparams(r.op));
            if (r.has_key) {
                ck_assert_uint_le(r.key.ntokens * 1, len[2]);
                ck_assert(inside(r.key.model_name, (const uint8_t *const *)f, len, nf));
                ck_assert(inside(r.key.request_id, (const uint8_t *const *)f, len, nf));
                ck_assert(inside(r.key.cache_salt, (const uint8_t *const *)f, len, nf));
                if (r.key.ntokens)
                    (void)r.key.token_ids[r.key.ntokens - 1];
            }
            ck_assert(inside(r.request_id, (const uint8_t *const *)f, len, nf));
            ck_assert(inside(r.data, (const uint8_t *const *)f, len, nf));
            ck_assert(inside(r.reg.dtype_str, (const uint8_t *const *)f, len, nf));
            kvcd_lmc_req_free(&r);
        } else {
            bad++;
            ck_assert_msg(rc == KVCD_EMALFORMED || rc == KVCD_EBADFIELD ||
                              rc == KVCD_EUNKNOWNOP || rc == -ENOMEM,
                          "iteration %zu: rc %d", it, rc);
            ck_assert_msg(memchr(msg, '\0', sizeof(msg)) && msg[0], "iteration %zu: message", it);
            ck_assert_ptr_null(r.key.token_ids);
        }
        for (size_t i = 0; i < nf; i++)
            free(buf[i]);
        for (size_t i = nf; i < n; i++)
            free(buf[i]);
    }
    ck_assert_uint_gt(ok, ITER / 50);
    ck_assert_uint_gt(bad, ITER / 3);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lmcache_codec");
    TCase *tc = tcase_create("codec");

    tcase_add_test(tc, test_decode_lookup);
    tcase_add_test(tc, test_decode_by_name_and_engine_driven);
    tcase_add_test(tc, test_decode_tolerant_key);
    tcase_add_test(tc, test_decode_errors);
    tcase_add_test(tc, test_op_table);
    tcase_add_test(tc, test_encode_vectors);
    tcase_add_test(tc, test_refusals_typed);
    tcase_add_test(tc, test_hash_vectors);
    suite_add_tcase(s, tc);
    tc = tcase_create("fuzz");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_fuzz_decode);
    suite_add_tcase(s, tc);
    return kvcd_test_run(s);
}
