/*
 * test_proto.c - the wire codec (protocol/proto.c), keys (key.c), error table (err.c).
 *
 * The codec is pure, so everything here is byte for byte: hand-derived msgpack
 * strings from the spec compared with encoder output, hand-built headers fed to
 * the decoder, one table of malformed headers (each must fail with the right
 * code and a message naming the field), and a seeded mutation fuzzer that must
 * never crash and must only ever succeed or fail with a code the protocol knows.
 * Decoders are always fed exact-size heap copies so that ASan sees over-reads,
 * and the malloc watcher below checks that no frame, however hostile, makes the
 * decoder ask for memory out of proportion to its size.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "protocol/client.h"
#include "protocol/key.h"
#include "protocol/kvcd_err.h"
#include "protocol/proto.h"
#include "tests/support.h"

#define MAXKEYS 1024

#if defined(__has_feature)
#if __has_feature(address_sanitizer) && !defined(__SANITIZE_ADDRESS__)
#define __SANITIZE_ADDRESS__ 1 /* clang spells it this way */
#endif
#endif

#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
/*
 * Record the largest single request made to malloc. PROTOCOL.md section 6
 * promises that a peer cannot make the server allocate unbounded memory, yet a
 * decoder that lets msgpack-c ask for 100 GiB still returns EMALFORMED when
 * malloc says no: the outcome alone cannot tell. These forward to glibc's own
 * allocator, so pointers from either side may be freed by the other. (Under
 * ASan the sanitizer plays this role: it aborts on such a request.)
 */
#define WATCH_MALLOC 1
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);
static size_t largest_alloc;

void *malloc(size_t n)
{
    if (n > largest_alloc)
        largest_alloc = n;
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    if (size && n <= SIZE_MAX / size && n * size > largest_alloc)
        largest_alloc = n * size;
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    if (n > largest_alloc)
        largest_alloc = n;
    return __libc_realloc(p, n);
}

void free(void *p)
{
    __libc_free(p);
}
#endif

/* Start watching; then alloc_bounded(limit) checks nothing larger was asked. */
static void alloc_watch(void)
{
#ifdef WATCH_MALLOC
    largest_alloc = 0;
#endif
}

static void alloc_bounded(size_t limit, const char *what, size_t i)
{
#ifdef WATCH_MALLOC
    ck_assert_msg(largest_alloc <= limit, "%s %zu: asked malloc for %zu bytes", what, i,
                  largest_alloc);
#else
    (void)limit, (void)what, (void)i;
#endif
}

/* ---- helpers ---- */

static uint64_t rng_state;

/* splitmix64: deterministic, so a failure reproduces. */
static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t rnd_below(size_t n)
{
    return (size_t)(rnd() % n);
}

/* An exact-size heap copy: any read past len is an ASan error. */
static uint8_t *dup_exact(const void *p, size_t len)
{
    uint8_t *d = malloc(len ? len : 1);

    ck_assert_ptr_nonnull(d);
    if (len)
        memcpy(d, p, len);
    return d;
}

/* [p, p + n) lies inside [base, base + len): decoded bytes borrow from the frame. */
#define assert_inside(p, n, base, len)                                          \
    ck_assert_msg((uintptr_t)(p) >= (uintptr_t)(base) &&                       \
                      (uintptr_t)(p) + (n) <= (uintptr_t)(base) + (len),       \
                  "%s (%zu bytes) outside the frame", #p, (size_t)(n))

static void dump(const char *what, const uint8_t *p, size_t n)
{
    size_t i;

    fprintf(stderr, "%s (%zu bytes):", what, n);
    for (i = 0; i < n; i++)
        fprintf(stderr, " %02x", p[i]);
    fprintf(stderr, "\n");
}

/* Compare encoder output with an expected byte string, printing both on failure. */
static void expect_bytes(const kvcd_wbuf_t *w, const char *exp, size_t n)
{
    const uint8_t *got = (const uint8_t *)w->sb.data;
    size_t i;

    if (w->sb.size != n || memcmp(got, exp, n) != 0) {
        dump("expected", (const uint8_t *)exp, n);
        dump("got     ", got, w->sb.size);
    }
    ck_assert_uint_eq(w->sb.size, n);
    for (i = 0; i < n; i++)
        ck_assert_msg(got[i] == (uint8_t)exp[i], "byte %zu: got 0x%02x, expected 0x%02x",
                      i, got[i], (uint8_t)exp[i]);
}

/* Decode from an exact-size copy. msg is checked to be NUL-terminated. */
static int decode(const void *p, size_t len, size_t max_keys, kvcd_req_t *req,
                  char *msg, size_t msglen, uint8_t **copy)
{
    uint8_t *b = dup_exact(p, len);
    int rc;

    memset(msg, 0x5a, msglen);
    rc = kvcd_proto_decode_req(b, len, max_keys, req, msg, msglen);
    if (rc != 0) {
        ck_assert_ptr_nonnull(memchr(msg, '\0', msglen));
        ck_assert_msg(msg[0] != '\0', "error %d without a message", rc);
        ck_assert_ptr_null(req->hashes);
        ck_assert_uint_eq(req->nkeys, 0);
        ck_assert_ptr_null(req->offsets);
        ck_assert_ptr_null(req->lengths);
    }
    *copy = b; /* decoded pointers borrow from it */
    return rc;
}

static int decode_wbuf(const kvcd_wbuf_t *w, size_t max_keys, kvcd_req_t *req,
                       char *msg, size_t msglen, uint8_t **copy)
{
    return decode(w->sb.data, w->sb.size, max_keys, req, msg, msglen, copy);
}

static int decode_reply_wbuf(const kvcd_wbuf_t *w, kvcd_reply_hdr_t *rep)
{
    uint8_t *b = dup_exact(w->sb.data, w->sb.size);
    int rc = kvcd_proto_decode_reply(b, w->sb.size, rep);

    free(b); /* nothing in a decoded reply borrows from the frame */
    return rc;
}

static void fill_hash(uint8_t *h, size_t len, size_t i)
{
    size_t j;

    for (j = 0; j < len; j++)
        h[j] = (uint8_t)(i * 31 + j * 7 + 1);
}

/* ---- hand-built headers ---- */

typedef enum {
    F_UINT,
    F_INT,
    F_STR,    /* s, len bytes (len 0: strlen) */
    F_FILL,   /* len bytes of 'x' */
    F_BIN,    /* s, len bytes */
    F_NIL,
    F_TRUE,
    F_FLOAT,
    F_MAP0,
    F_HASHES, /* array of count bins of len bytes */
    F_HASHES_STR, /* [bin(8), str "abc"] */
    F_HASHES_NIL, /* [bin(8), bin(8), nil] */
    F_U64S,       /* array of count uints, all u */
    F_U64S_NEG,   /* [u, -1, u] */
    F_U64S_STR,   /* [u, "x", u] */
} ftype_t;

typedef struct {
    const char *key;
    ftype_t t;
    uint64_t u;
    int64_t i;
    const char *s;
    size_t len;
    size_t count;
} field_t;

#define FU(k, v) {.key = k, .t = F_UINT, .u = (v)}
#define FI(k, v) {.key = k, .t = F_INT, .i = (v)}
#define FS(k, v) {.key = k, .t = F_STR, .s = (v)}
#define FSN(k, v, n) {.key = k, .t = F_STR, .s = (v), .len = (n)}
#define FFILL(k, n) {.key = k, .t = F_FILL, .len = (n)}
#define FBIN(k, v, n) {.key = k, .t = F_BIN, .s = (v), .len = (n)}
#define FNIL(k) {.key = k, .t = F_NIL}
#define FTRUE(k) {.key = k, .t = F_TRUE}
#define FFLOAT(k) {.key = k, .t = F_FLOAT}
#define FMAP0(k) {.key = k, .t = F_MAP0}
#define FHASHES(k, n, l) {.key = k, .t = F_HASHES, .count = (n), .len = (l)}
#define FU64S(k, n, v) {.key = k, .t = F_U64S, .count = (n), .u = (v)}

/* A valid STORE header: world 2 worker 1, group 3, salt "s1", three 16-byte hashes. */
#define BASE_ID 42
#define BASE_NKEYS 3
#define BASE_HLEN 16
static const field_t base_fields[] = {
    FU("v", 1),
    FU("id", BASE_ID),
    FU("op", KVCD_OP_STORE),
    FS("model", "meta/llama"),
    FU("world_size", 2),
    FU("worker_id", 1),
    FU("group", 3),
    FS("salt", "s1"),
    FHASHES("hashes", BASE_NKEYS, BASE_HLEN),
};
#define NBASE (sizeof(base_fields) / sizeof(base_fields[0]))

/* STORE_SHM: the same key set, bytes in segment 9 instead of bulk frames. */
static const field_t shm_fields[] = {
    FU("v", 1),
    FU("id", BASE_ID),
    FU("op", KVCD_OP_STORE_SHM),
    FS("model", "meta/llama"),
    FU("world_size", 2),
    FU("worker_id", 1),
    FU("group", 3),
    FS("salt", "s1"),
    FHASHES("hashes", BASE_NKEYS, BASE_HLEN),
    FU("segment", 9),
    FU64S("offsets", BASE_NKEYS, 4096),
    FU64S("lengths", BASE_NKEYS, 100),
};

static const field_t reg_fields[] = {
    FU("v", 1), FU("id", BASE_ID), FU("op", KVCD_OP_REGISTER_SEGMENT),
    FU("pid", 1234), FU("fd", 7), FU("size", 1u << 30),
};

static const field_t unreg_fields[] = {
    FU("v", 1), FU("id", BASE_ID), FU("op", KVCD_OP_UNREGISTER_SEGMENT), FU("segment", 9),
};

enum { B_STORE, B_SHM, B_REG, B_UNREG };
static const struct {
    const field_t *f;
    size_t n;
    uint32_t op;
} bases[] = {
    [B_STORE] = {base_fields, NBASE, KVCD_OP_STORE},
    [B_SHM] = {shm_fields, sizeof(shm_fields) / sizeof(shm_fields[0]), KVCD_OP_STORE_SHM},
    [B_REG] = {reg_fields, sizeof(reg_fields) / sizeof(reg_fields[0]),
               KVCD_OP_REGISTER_SEGMENT},
    [B_UNREG] = {unreg_fields, sizeof(unreg_fields) / sizeof(unreg_fields[0]),
                 KVCD_OP_UNREGISTER_SEGMENT},
};

static void pack_value(msgpack_packer *pk, const field_t *f)
{
    static const char xs[2048] = {[0 ... 2047] = 'x'};
    uint8_t h[128];
    size_t i, n;

    switch (f->t) {
    case F_UINT:
        msgpack_pack_uint64(pk, f->u);
        break;
    case F_INT:
        msgpack_pack_int64(pk, f->i);
        break;
    case F_STR:
        n = f->len ? f->len : strlen(f->s);
        msgpack_pack_str(pk, n);
        msgpack_pack_str_body(pk, f->s, n);
        break;
    case F_FILL:
        ck_assert_uint_le(f->len, sizeof(xs));
        msgpack_pack_str(pk, f->len);
        msgpack_pack_str_body(pk, xs, f->len);
        break;
    case F_BIN:
        msgpack_pack_bin(pk, f->len);
        msgpack_pack_bin_body(pk, f->s, f->len);
        break;
    case F_NIL:
        msgpack_pack_nil(pk);
        break;
    case F_TRUE:
        msgpack_pack_true(pk);
        break;
    case F_FLOAT:
        msgpack_pack_double(pk, 1.0);
        break;
    case F_MAP0:
        msgpack_pack_map(pk, 0);
        break;
    case F_HASHES:
        ck_assert_uint_le(f->len, sizeof(h));
        msgpack_pack_array(pk, f->count);
        for (i = 0; i < f->count; i++) {
            fill_hash(h, f->len, i);
            msgpack_pack_bin(pk, f->len);
            msgpack_pack_bin_body(pk, h, f->len);
        }
        break;
    case F_HASHES_STR:
        fill_hash(h, 8, 0);
        msgpack_pack_array(pk, 2);
        msgpack_pack_bin(pk, 8);
        msgpack_pack_bin_body(pk, h, 8);
        msgpack_pack_str(pk, 3);
        msgpack_pack_str_body(pk, "abc", 3);
        break;
    case F_U64S:
        msgpack_pack_array(pk, f->count);
        for (i = 0; i < f->count; i++)
            msgpack_pack_uint64(pk, f->u);
        break;
    case F_U64S_NEG:
    case F_U64S_STR:
        msgpack_pack_array(pk, 3);
        msgpack_pack_uint64(pk, f->u);
        if (f->t == F_U64S_NEG)
            msgpack_pack_int(pk, -1);
        else
            kvcd_pack_cstr(pk, "x");
        msgpack_pack_uint64(pk, f->u);
        break;
    case F_HASHES_NIL:
        fill_hash(h, 8, 0);
        msgpack_pack_array(pk, 3);
        for (i = 0; i < 2; i++) {
            msgpack_pack_bin(pk, 8);
            msgpack_pack_bin_body(pk, h, 8);
        }
        msgpack_pack_nil(pk);
        break;
    }
}

/* A base header without `drop`, with `set` replacing the field of the same key
 * (or appended when there is none). */
static void build_on(kvcd_wbuf_t *w, int base, const char *drop, const field_t *set)
{
    const field_t *fields = bases[base].f;
    size_t i, n = 0, nf = bases[base].n;
    int replaced = 0;

    for (i = 0; i < nf; i++) {
        if (drop && strcmp(fields[i].key, drop) == 0)
            continue;
        if (set && set->key && strcmp(fields[i].key, set->key) == 0)
            replaced = 1;
        n++;
    }
    if (set && set->key && !replaced)
        n++;
    msgpack_pack_map(&w->pk, n);
    for (i = 0; i < nf; i++) {
        const field_t *f = &fields[i];

        if (drop && strcmp(f->key, drop) == 0)
            continue;
        if (set && set->key && strcmp(f->key, set->key) == 0)
            f = set;
        kvcd_pack_cstr(&w->pk, f->key);
        pack_value(&w->pk, f);
    }
    if (set && set->key && !replaced) {
        kvcd_pack_cstr(&w->pk, set->key);
        pack_value(&w->pk, set);
    }
}

static void build(kvcd_wbuf_t *w, const char *drop, const field_t *set)
{
    build_on(w, B_STORE, drop, set);
}

/* Pack value i of a list that covers every msgpack format at every width
 * (fixstr/str8/16/32, bin8/16/32, fixext1..16, ext8/16/32, fixarray/array16/32,
 * fixmap/map16/32, every int width, floats, nil, bools). 0 past the end. */
#define NFORMATS 50
static int pack_format(msgpack_packer *pk, size_t i)
{
    static char big[70000];
    static const size_t strlens[] = {0, 31, 32, 255, 256, 65535, 65536};
    static const size_t extlens[] = {1, 2, 4, 8, 16, 0, 3, 255, 256, 65536};
    static const size_t arrlens[] = {0, 15, 16, 65535, 65536};
    size_t j, n;

    if (!big[0])
        memset(big, 'q', sizeof(big));
    if (i < 14) {
        n = strlens[i / 2];
        if (i % 2) {
            msgpack_pack_bin(pk, n);
            msgpack_pack_bin_body(pk, big, n);
        } else {
            msgpack_pack_str(pk, n);
            msgpack_pack_str_body(pk, big, n);
        }
        return 1;
    }
    i -= 14;
    if (i < 10) {
        msgpack_pack_ext(pk, extlens[i], 42);
        msgpack_pack_ext_body(pk, big, extlens[i]);
        return 1;
    }
    i -= 10;
    if (i < 10) {
        n = arrlens[i / 2];
        if (i % 2) {
            msgpack_pack_map(pk, n);
            for (j = 0; j < n; j++) {
                msgpack_pack_uint64(pk, j);
                msgpack_pack_true(pk);
            }
        } else {
            msgpack_pack_array(pk, n);
            for (j = 0; j < n; j++)
                msgpack_pack_nil(pk);
        }
        return 1;
    }
    i -= 10;
    switch (i) {
    case 0: msgpack_pack_uint8(pk, 200); break;
    case 1: msgpack_pack_uint16(pk, 60000); break;
    case 2: msgpack_pack_uint32(pk, 4000000000u); break;
    case 3: msgpack_pack_uint64(pk, UINT64_MAX); break;
    case 4: msgpack_pack_int8(pk, -100); break;
    case 5: msgpack_pack_int16(pk, -30000); break;
    case 6: msgpack_pack_int32(pk, -2000000000); break;
    case 7: msgpack_pack_int64(pk, INT64_MIN); break;
    case 8: msgpack_pack_fix_int8(pk, -1); break;   /* always int8 */
    case 9: msgpack_pack_fix_uint16(pk, 1); break;  /* always uint16 */
    case 10: msgpack_pack_fix_int64(pk, 1); break;
    case 11: msgpack_pack_float(pk, 1.5f); break;
    case 12: msgpack_pack_double(pk, -2.5); break;
    case 13: msgpack_pack_nil(pk); break;
    case 14: msgpack_pack_false(pk); break;
    case 15: msgpack_pack_int(pk, -7); break;        /* negative fixint */
    default: return 0;
    }
    return 1;
}

static void check_base_decoded(const kvcd_req_t *req)
{
    uint8_t h[BASE_HLEN];
    size_t i;

    ck_assert_uint_eq(req->version, 1);
    ck_assert_uint_eq(req->id, BASE_ID);
    ck_assert_uint_eq(req->op, KVCD_OP_STORE);
    ck_assert_uint_eq(req->base.model_len, 10);
    ck_assert_mem_eq(req->base.model, "meta/llama", 10);
    ck_assert_uint_eq(req->base.salt_len, 2);
    ck_assert_mem_eq(req->base.salt, "s1", 2);
    ck_assert_uint_eq(req->base.kv_rank, 0x02010201u);
    ck_assert_uint_eq(req->base.group, 3);
    ck_assert_uint_eq(req->nkeys, BASE_NKEYS);
    for (i = 0; i < BASE_NKEYS; i++) {
        fill_hash(h, BASE_HLEN, i);
        ck_assert_uint_eq(req->hashes[i].len, BASE_HLEN);
        ck_assert_mem_eq(req->hashes[i].ptr, h, BASE_HLEN);
    }
}

/* ---- request round trips ---- */

START_TEST(test_base_header_decodes)
{
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    kvcd_wbuf_init(&w);
    build(&w, NULL, NULL);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
    check_base_decoded(&req);
    /* Decoded bytes borrow from the frame. */
    assert_inside(req.base.model, req.base.model_len, b, w.sb.size);
    assert_inside(req.base.salt, req.base.salt_len, b, w.sb.size);
    assert_inside(req.hashes[2].ptr, BASE_HLEN, b, w.sb.size);
    kvcd_proto_req_free(&req);
    ck_assert_ptr_null(req.hashes);
    ck_assert_uint_eq(req.nkeys, 0);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_req_roundtrip_with_rank)
{
    enum { N = 1000 };
    static uint8_t hb[N][KVCD_HASH_MAX];
    kvcd_bytes_t hashes[N];
    kvcd_key_t base = {.model = "org/model-7b", .model_len = 12, .salt = "tenant-9",
                       .salt_len = 8, .kv_rank = 0xdeadbeef, .group = 0xfffffffe};
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;
    size_t i;

    for (i = 0; i < N; i++) {
        hashes[i].len = (uint32_t)(1 + i % KVCD_HASH_MAX);
        fill_hash(hb[i], hashes[i].len, i);
        hashes[i].ptr = hb[i];
    }
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req(&w, UINT64_MAX, KVCD_OP_LOAD, &base, hashes, N);
    ck_assert_int_eq(decode_wbuf(&w, N, &req, msg, sizeof(msg), &b), 0);
    ck_assert_uint_eq(req.version, KVCD_PROTO_VERSION);
    ck_assert_uint_eq(req.id, UINT64_MAX);
    ck_assert_uint_eq(req.op, KVCD_OP_LOAD);
    ck_assert_uint_eq(req.nkeys, N);
    for (i = 0; i < N; i++) {
        kvcd_key_t want = base, got;

        want.hash = hashes[i].ptr;
        want.hash_len = hashes[i].len;
        kvcd_req_key(&req, i, &got);
        ck_assert_msg(kvcd_key_equal(&want, &got), "key %zu differs", i);
        ck_assert_uint_eq(kvcd_key_hash(&want), kvcd_key_hash(&got));
    }
    kvcd_proto_req_free(&req);
    free(b);

    /* One key more than allowed. */
    ck_assert_int_eq(decode_wbuf(&w, N - 1, &req, msg, sizeof(msg), &b), KVCD_ETOOMANYKEYS);
    ck_assert_ptr_nonnull(strstr(msg, "hashes"));
    ck_assert_uint_eq(req.id, UINT64_MAX);
    ck_assert_uint_eq(req.op, KVCD_OP_LOAD);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_req_roundtrip_empty_salt)
{
    static const uint8_t h[] = {0x01};
    kvcd_bytes_t hash = {h, 1};
    /* A client may pass "" or NULL for no salt; both mean the same key. */
    kvcd_key_t base = {.model = "m", .model_len = 1, .salt = "", .salt_len = 0,
                       .kv_rank = 0, .group = 0};
    kvcd_wbuf_t w;
    kvcd_req_t req;
    kvcd_key_t k;
    char msg[256];
    uint8_t *b;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req(&w, 0, KVCD_OP_REMOVE, &base, &hash, 1);
    ck_assert_int_eq(decode_wbuf(&w, 1, &req, msg, sizeof(msg), &b), 0);
    ck_assert_uint_eq(req.id, 0);
    ck_assert_uint_eq(req.op, KVCD_OP_REMOVE);
    ck_assert_uint_eq(req.base.salt_len, 0);
    ck_assert_uint_eq(req.base.kv_rank, 0); /* explicit 0, not the 0x01000100 default */
    kvcd_req_key(&req, 0, &k);
    base.hash = h;
    base.hash_len = 1;
    ck_assert(kvcd_key_equal(&base, &k));
    ck_assert_uint_eq(kvcd_key_hash(&base), kvcd_key_hash(&k));
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* The encoder always sends kv_rank; these headers leave it out. */
START_TEST(test_req_rank_from_world)
{
    static const struct {
        int world, worker; /* -1: absent */
        uint32_t rank;
    } cases[] = {
        {2, 1, 0x02010201u},  {-1, -1, 0x01000100u}, {4, -1, 0x04000400u},
        {1, 0, 0x01000100u},  {255, 254, 0xfffefffeu}, {8, 7, 0x08070807u},
    };
    size_t c;

    for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        kvcd_wbuf_t w;
        kvcd_req_t req;
        char msg[256];
        uint8_t *b, h[4] = {1, 2, 3, 4};
        size_t n = 5 + (cases[c].world >= 0) + (cases[c].worker >= 0);

        kvcd_wbuf_init(&w);
        msgpack_pack_map(&w.pk, n);
        kvcd_pack_cstr(&w.pk, "v");
        msgpack_pack_uint8(&w.pk, 1);
        kvcd_pack_cstr(&w.pk, "id");
        msgpack_pack_uint8(&w.pk, 9);
        kvcd_pack_cstr(&w.pk, "op");
        msgpack_pack_uint8(&w.pk, KVCD_OP_LOOKUP);
        if (cases[c].worker >= 0) { /* before world_size: order must not matter */
            kvcd_pack_cstr(&w.pk, "worker_id");
            msgpack_pack_int(&w.pk, cases[c].worker);
        }
        kvcd_pack_cstr(&w.pk, "model");
        kvcd_pack_cstr(&w.pk, "m");
        if (cases[c].world >= 0) {
            kvcd_pack_cstr(&w.pk, "world_size");
            msgpack_pack_int(&w.pk, cases[c].world);
        }
        kvcd_pack_cstr(&w.pk, "hashes");
        msgpack_pack_array(&w.pk, 1);
        msgpack_pack_bin(&w.pk, 4);
        msgpack_pack_bin_body(&w.pk, h, 4);
        ck_assert_int_eq(decode_wbuf(&w, 1, &req, msg, sizeof(msg), &b), 0);
        ck_assert_msg(req.base.kv_rank == cases[c].rank, "case %zu: rank 0x%08x, want 0x%08x",
                      c, req.base.kv_rank, cases[c].rank);
        ck_assert_uint_eq(req.base.group, 0);
        ck_assert_uint_eq(req.base.salt_len, 0);
        kvcd_proto_req_free(&req);
        free(b);
        kvcd_wbuf_destroy(&w);
    }
    ck_assert_uint_eq(kvcd_kv_rank(2, 1), 0x02010201u);
}
END_TEST

/* An explicit kv_rank wins: world_size/worker_id are then only type-checked. */
START_TEST(test_req_explicit_rank_wins)
{
    static const field_t set = FU("kv_rank", 0x04030201u);
    field_t worker = FU("worker_id", 5); /* >= world_size 2, fine with kv_rank */
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    kvcd_wbuf_init(&w);
    msgpack_pack_map(&w.pk, NBASE + 1);
    for (size_t i = 0; i < NBASE; i++) {
        const field_t *f = strcmp(base_fields[i].key, "worker_id") ? &base_fields[i] : &worker;

        kvcd_pack_cstr(&w.pk, f->key);
        pack_value(&w.pk, f);
    }
    kvcd_pack_cstr(&w.pk, set.key);
    pack_value(&w.pk, &set);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
    ck_assert_uint_eq(req.base.kv_rank, 0x04030201u);
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* Operations without a key set need none, and ignore one that is present. */
START_TEST(test_req_no_keys_ops)
{
    static const uint32_t ops[] = {KVCD_OP_PING, KVCD_OP_CLEAR, KVCD_OP_STATUS};
    size_t i;

    for (i = 0; i < 3; i++) {
        kvcd_wbuf_t w;
        kvcd_req_t req;
        char msg[256];
        uint8_t *b;
        field_t op = FU("op", ops[i]);

        kvcd_wbuf_init(&w);
        kvcd_proto_encode_req(&w, 1000 + i, ops[i], NULL, NULL, 0);
        ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
        ck_assert_uint_eq(req.id, 1000 + i);
        ck_assert_uint_eq(req.op, ops[i]);
        ck_assert_uint_eq(req.nkeys, 0);
        ck_assert_ptr_null(req.hashes);
        kvcd_proto_req_free(&req);
        free(b);
        kvcd_wbuf_destroy(&w);

        kvcd_wbuf_init(&w);
        build(&w, NULL, &op);
        ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
        ck_assert_uint_eq(req.op, ops[i]);
        ck_assert_uint_eq(req.nkeys, 0);
        kvcd_proto_req_free(&req);
        free(b);
        kvcd_wbuf_destroy(&w);
    }
}
END_TEST

/* Values at the edges of every range are accepted. */
static const field_t good_cases[] = {
    FFILL("model", KVCD_MODEL_MAX),
    FFILL("model", 1),
    FFILL("salt", KVCD_SALT_MAX),
    FFILL("salt", 0),
    FS("salt", "a.b-c_d:e|f"),
    FHASHES("hashes", 1, KVCD_HASH_MAX),
    FHASHES("hashes", 1, 1),
    FHASHES("hashes", MAXKEYS, 8),
    FU("world_size", 255),
    FU("worker_id", 0),
    FU("kv_rank", 0),
    FU("kv_rank", UINT32_MAX),
    FU("group", 0),
    FU("group", UINT32_MAX),
    FU("id", 0),
    FU("id", UINT64_MAX),
    FI("id", 7),       /* a signed encoding of a non-negative value is fine */
    FI("group", 0),
};

START_TEST(test_req_good_boundaries)
{
    const field_t *f = &good_cases[_i];
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    kvcd_wbuf_init(&w);
    build(&w, NULL, f);
    ck_assert_msg(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b) == 0,
                  "case %d (%s): %s", _i, f->key, msg);
    if (strcmp(f->key, "model") == 0 || strcmp(f->key, "salt") == 0) {
        const char *p = f->key[0] == 'm' ? req.base.model : req.base.salt;
        uint32_t n = f->key[0] == 'm' ? req.base.model_len : req.base.salt_len;
        size_t want = f->t == F_FILL ? f->len : strlen(f->s);

        ck_assert_uint_eq(n, want);
        if (f->t == F_FILL)
            for (size_t j = 0; j < n; j++)
                ck_assert_int_eq(p[j], 'x');
        else
            ck_assert_mem_eq(p, f->s, n);
    } else if (strcmp(f->key, "hashes") == 0) {
        ck_assert_uint_eq(req.nkeys, f->count);
        ck_assert_uint_eq(req.hashes[f->count - 1].len, f->len);
    } else if (strcmp(f->key, "world_size") == 0) {
        ck_assert_uint_eq(req.base.kv_rank, kvcd_kv_rank((uint32_t)f->u, 1));
    } else if (strcmp(f->key, "worker_id") == 0) {
        ck_assert_uint_eq(req.base.kv_rank, 0x02000200u);
    } else if (strcmp(f->key, "kv_rank") == 0) {
        ck_assert_uint_eq(req.base.kv_rank, f->u);
    } else if (strcmp(f->key, "group") == 0) {
        ck_assert_uint_eq(req.base.group, f->t == F_UINT ? f->u : (uint64_t)f->i);
    } else if (strcmp(f->key, "id") == 0) {
        ck_assert_uint_eq(req.id, f->t == F_UINT ? f->u : (uint64_t)f->i);
    }
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* ---- exact bytes ---- */

/* {"v":1,"id":7,"op":1}: fixmap 3, fixstr keys, positive fixints. */
static const char ping_req[] = "\x83"
                               "\xa1" "v" "\x01"
                               "\xa2" "id" "\x07"
                               "\xa2" "op" "\x01";

START_TEST(test_bytes_ping_request)
{
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req(&w, 7, KVCD_OP_PING, NULL, NULL, 0);
    expect_bytes(&w, ping_req, sizeof(ping_req) - 1);
    kvcd_wbuf_destroy(&w);

    ck_assert_int_eq(decode(ping_req, sizeof(ping_req) - 1, MAXKEYS, &req, msg,
                            sizeof(msg), &b), 0);
    ck_assert_uint_eq(req.version, 1);
    ck_assert_uint_eq(req.id, 7);
    ck_assert_uint_eq(req.op, KVCD_OP_PING);
    ck_assert_uint_eq(req.nkeys, 0);
    kvcd_proto_req_free(&req);
    free(b);
}
END_TEST

START_TEST(test_bytes_keyset_request)
{
    static const char exp[] = "\x88"
                              "\xa1" "v" "\x01"
                              "\xa2" "id" "\xcd\x12\x34"           /* uint16 */
                              "\xa2" "op" "\x03"
                              "\xa5" "model" "\xa1" "m"
                              "\xa7" "kv_rank" "\xce\x02\x01\x02\x01" /* uint32 */
                              "\xa5" "group" "\xce\x00\x01\x00\x00"
                              "\xa4" "salt" "\xa1" "s"
                              "\xa6" "hashes" "\x92" "\xc4\x02\xab\xcd" "\xc4\x01\xef";
    static const uint8_t h0[] = {0xab, 0xcd}, h1[] = {0xef};
    kvcd_bytes_t hashes[] = {{h0, 2}, {h1, 1}};
    kvcd_key_t base = {.model = "m", .model_len = 1, .salt = "s", .salt_len = 1,
                       .kv_rank = kvcd_kv_rank(2, 1), .group = 0x10000};
    kvcd_wbuf_t w;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req(&w, 0x1234, KVCD_OP_LOOKUP, &base, hashes, 2);
    expect_bytes(&w, exp, sizeof(exp) - 1);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* The example of PROTOCOL.md section 7, built by hand. */
START_TEST(test_bytes_decode_doc_example)
{
    static const char hdr[] = "\x87"
                              "\xa1" "v" "\x01"
                              "\xa2" "id" "\x07"
                              "\xa2" "op" "\x02"
                              "\xa5" "model" "\xaa" "meta/llama"
                              "\xaa" "world_size" "\x02"
                              "\xa9" "worker_id" "\x01"
                              "\xa6" "hashes" "\x92"
                              "\xc4\x08" "\x00\x01\x02\x03\x04\x05\x06\x07"
                              "\xc4\x08" "\xf0\xf1\xf2\xf3\xf4\xf5\xf6\xf7";
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    ck_assert_int_eq(decode(hdr, sizeof(hdr) - 1, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
    ck_assert_uint_eq(req.version, 1);
    ck_assert_uint_eq(req.id, 7);
    ck_assert_uint_eq(req.op, KVCD_OP_STORE);
    ck_assert_uint_eq(req.base.model_len, 10);
    ck_assert_ptr_eq(req.base.model, (const char *)b + 19); /* borrowed, not copied */
    ck_assert_mem_eq(req.base.model, "meta/llama", 10);
    ck_assert_uint_eq(req.base.kv_rank, 0x02010201u);
    ck_assert_uint_eq(req.base.group, 0);
    ck_assert_uint_eq(req.base.salt_len, 0);
    ck_assert_uint_eq(req.nkeys, 2);
    ck_assert_uint_eq(req.hashes[0].len, 8);
    ck_assert_mem_eq(req.hashes[0].ptr, "\x00\x01\x02\x03\x04\x05\x06\x07", 8);
    ck_assert_uint_eq(req.hashes[1].len, 8);
    ck_assert_mem_eq(req.hashes[1].ptr, "\xf0\xf1\xf2\xf3\xf4\xf5\xf6\xf7", 8);
    kvcd_proto_req_free(&req);
    free(b);
}
END_TEST

/* msgpack allows wider encodings than necessary; other clients use them. */
START_TEST(test_bytes_decode_wide_encodings)
{
    static const char hdr[] = "\x86"
                              "\xa1" "v" "\xcf\x00\x00\x00\x00\x00\x00\x00\x01" /* uint64 */
                              "\xa2" "id" "\xd3\x00\x00\x00\x00\x00\x00\x00\x07" /* int64 */
                              "\xa2" "op" "\xcd\x00\x03"                         /* uint16 */
                              "\xd9\x05" "model" "\xda\x00\x03" "abc" /* str8 key, str16 */
                              "\xa4" "salt" "\xdb\x00\x00\x00\x00"    /* str32, empty */
                              "\xa6" "hashes" "\xdc\x00\x01"          /* array16 */
                              "\xc6\x00\x00\x00\x02" "\x11\x22";      /* bin32 */
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    ck_assert_int_eq(decode(hdr, sizeof(hdr) - 1, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
    ck_assert_uint_eq(req.version, 1);
    ck_assert_uint_eq(req.id, 7);
    ck_assert_uint_eq(req.op, KVCD_OP_LOOKUP);
    ck_assert_uint_eq(req.base.model_len, 3);
    ck_assert_mem_eq(req.base.model, "abc", 3);
    ck_assert_uint_eq(req.base.salt_len, 0);
    ck_assert_uint_eq(req.base.kv_rank, 0x01000100u);
    ck_assert_uint_eq(req.nkeys, 1);
    ck_assert_uint_eq(req.hashes[0].len, 2);
    ck_assert_mem_eq(req.hashes[0].ptr, "\x11\x22", 2);
    kvcd_proto_req_free(&req);
    free(b);
}
END_TEST

static const kvcd_ping_t ping_fields = {
    .server = "kvcd 0.1.0",
    .l1_shm = "/kvcd-1-0",
    .l1_size = 200,
    .proto = 1,
    .chunk_size = 256,
    .max_frame = 64u << 20,
    .max_keys = 4096,
    .max_request = 1ull << 32,
    .l1_capacity = 100,
};

START_TEST(test_bytes_ping_reply)
{
    static const char exp[] = "\x8d"
                              "\xa1" "v" "\x01"
                              "\xa2" "id" "\x07"
                              "\xa2" "op" "\x01"
                              "\xa3" "err" "\x00"
                              "\xa6" "server" "\xaa" "kvcd 0.1.0"
                              "\xa5" "proto" "\x01"
                              "\xaa" "chunk_size" "\xcd\x01\x00"
                              "\xa9" "max_frame" "\xce\x04\x00\x00\x00"
                              "\xa8" "max_keys" "\xcd\x10\x00"
                              "\xab" "max_request" "\xcf\x00\x00\x00\x01\x00\x00\x00\x00"
                              "\xab" "l1_capacity" "\x64"
                              "\xa6" "l1_shm" "\xa9" "/kvcd-1-0"
                              "\xa7" "l1_size" "\xcc\xc8";
    kvcd_wbuf_t w;
    kvcd_reply_hdr_t rep;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_ping(&w, 7, &ping_fields);
    expect_bytes(&w, exp, sizeof(exp) - 1);

    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.version, 1);
    ck_assert_uint_eq(rep.id, 7);
    ck_assert_uint_eq(rep.op, KVCD_OP_PING);
    ck_assert_int_eq(rep.err, 0);
    ck_assert_str_eq(rep.ename, "");
    ck_assert_ptr_eq(rep.ping.server, rep.server_buf);
    ck_assert_str_eq(rep.ping.server, "kvcd 0.1.0");
    ck_assert_uint_eq(rep.ping.proto, 1);
    ck_assert_uint_eq(rep.ping.chunk_size, 256);
    ck_assert_uint_eq(rep.ping.max_frame, 64u << 20);
    ck_assert_uint_eq(rep.ping.max_keys, 4096);
    ck_assert_uint_eq(rep.ping.max_request, 1ull << 32);
    ck_assert_uint_eq(rep.ping.l1_capacity, 100);
    ck_assert_str_eq(rep.ping.l1_shm, "/kvcd-1-0");
    ck_assert_uint_eq(rep.ping.l1_size, 200);
    kvcd_proto_reply_free(&rep);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_bytes_error_reply)
{
    static const char exp[] = "\x86"
                              "\xa1" "v" "\x01"
                              "\xa2" "id" "\x07"
                              "\xa2" "op" "\x02"
                              "\xa3" "err" "\xcd\x03\xea" /* 1002 */
                              "\xa5" "ename" "\xa8" "EVERSION"
                              "\xa3" "msg" "\xa2" "v2";
    static const char exp_eio[] = "\x86"
                                  "\xa1" "v" "\x01"
                                  "\xa2" "id" "\x00"
                                  "\xa2" "op" "\x00"
                                  "\xa3" "err" "\x05"
                                  "\xa5" "ename" "\xa3" "EIO"
                                  "\xa3" "msg" "\xa1" "x";
    kvcd_wbuf_t w;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_error(&w, 7, KVCD_OP_STORE, KVCD_EVERSION, "v2");
    expect_bytes(&w, exp, sizeof(exp) - 1);
    kvcd_wbuf_destroy(&w);

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_error(&w, 0, 0, -EIO, "x");
    expect_bytes(&w, exp_eio, sizeof(exp_eio) - 1);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_bytes_results_and_lookup)
{
    static const char exp_res[] = "\x85"
                                  "\xa1" "v" "\x01"
                                  "\xa2" "id" "\x07"
                                  "\xa2" "op" "\x02"
                                  "\xa3" "err" "\x00"
                                  "\xa7" "results" "\x94"
                                  "\x00" "\xcd\x03\xf2" "\xcd\x03\xf1" "\x05";
    static const char exp_look[] = "\x86"
                                   "\xa1" "v" "\x01"
                                   "\xa2" "id" "\x07"
                                   "\xa2" "op" "\x03"
                                   "\xa3" "err" "\x00"
                                   "\xa6" "prefix" "\x02"
                                   "\xa7" "present" "\x93\xc3\xc3\xc2";
    static const int res[] = {0, KVCD_ENOTFOUND, KVCD_ENOSPACE, -EIO};
    static const uint8_t present[] = {1, 7, 0};
    kvcd_wbuf_t w;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_results(&w, 7, KVCD_OP_STORE, res, 4);
    expect_bytes(&w, exp_res, sizeof(exp_res) - 1);
    kvcd_wbuf_destroy(&w);

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_lookup(&w, 7, 2, present, 3);
    expect_bytes(&w, exp_look, sizeof(exp_look) - 1);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* ---- shared-memory operations ---- */

START_TEST(test_shm_register_roundtrip)
{
    static const char exp[] = "\x86"
                              "\xa1" "v" "\x01"
                              "\xa2" "id" "\x07"
                              "\xa2" "op" "\x08"
                              "\xa3" "pid" "\xcd\x04\xd2"
                              "\xa2" "fd" "\x07"
                              "\xa4" "size" "\xce\x40\x00\x00\x00";
    kvcd_shm_args_t a = {.pid = 1234, .fd = 7, .size = 1u << 30};
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req_shm(&w, 7, KVCD_OP_REGISTER_SEGMENT, NULL, NULL, 0, &a);
    expect_bytes(&w, exp, sizeof(exp) - 1);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
    ck_assert_uint_eq(req.op, KVCD_OP_REGISTER_SEGMENT);
    ck_assert_uint_eq(req.id, 7);
    ck_assert_uint_eq(req.seg_pid, 1234);
    ck_assert_uint_eq(req.seg_fd, 7);
    ck_assert_uint_eq(req.seg_size, 1u << 30);
    ck_assert_uint_eq(req.nkeys, 0);
    ck_assert_ptr_null(req.offsets);
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);

    /* pid and fd at their largest. */
    a.pid = INT32_MAX;
    a.fd = INT32_MAX;
    a.size = UINT64_MAX;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req_shm(&w, 8, KVCD_OP_REGISTER_SEGMENT, NULL, NULL, 0, &a);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
    ck_assert_uint_eq(req.seg_pid, INT32_MAX);
    ck_assert_uint_eq(req.seg_size, UINT64_MAX);
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);

    a.segment = 1ull << 40;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req_shm(&w, 9, KVCD_OP_UNREGISTER_SEGMENT, NULL, NULL, 0, &a);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
    ck_assert_uint_eq(req.op, KVCD_OP_UNREGISTER_SEGMENT);
    ck_assert_uint_eq(req.segment, 1ull << 40);
    ck_assert_uint_eq(req.nkeys, 0);
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_shm_store_load_roundtrip)
{
    enum { N = 5 };
    static const uint8_t hb[N][4] = {{1}, {2}, {3}, {4}, {5}};
    static const uint64_t offs[N] = {0, 4096, 1ull << 40, UINT64_MAX, 12};
    static const uint64_t lens[N] = {1, 4096, 1ull << 33, 7, UINT64_MAX};
    static const uint64_t caps[N] = {0, 0, 65536, 1, 2};
    kvcd_bytes_t hashes[N];
    kvcd_key_t base = {.model = "m", .model_len = 1, .kv_rank = 0x01000100, .group = 2};
    kvcd_shm_args_t a = {.segment = 3, .offsets = offs, .lengths = lens};
    int pass;
    size_t i;

    for (i = 0; i < N; i++) {
        hashes[i].ptr = hb[i];
        hashes[i].len = 4;
    }
    for (pass = 0; pass < 2; pass++) {
        uint32_t op = pass ? KVCD_OP_LOAD_SHM : KVCD_OP_STORE_SHM;
        const uint64_t *want = pass ? caps : lens;
        kvcd_wbuf_t w;
        kvcd_req_t req;
        char msg[256];
        uint8_t *b;

        a.lengths = want;
        kvcd_wbuf_init(&w);
        kvcd_proto_encode_req_shm(&w, 40 + pass, op, &base, hashes, N, &a);
        ck_assert_msg(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b) == 0, "%s", msg);
        ck_assert_uint_eq(req.op, op);
        ck_assert_uint_eq(req.segment, 3);
        ck_assert_uint_eq(req.nkeys, N);
        ck_assert_ptr_nonnull(req.offsets);
        ck_assert_ptr_nonnull(req.lengths);
        for (i = 0; i < N; i++) {
            kvcd_key_t k, e = base;

            ck_assert_uint_eq(req.offsets[i], offs[i]);
            ck_assert_uint_eq(req.lengths[i], want[i]);
            kvcd_req_key(&req, i, &k);
            e.hash = hb[i];
            e.hash_len = 4;
            ck_assert(kvcd_key_equal(&k, &e));
        }
        kvcd_proto_req_free(&req);
        ck_assert_ptr_null(req.offsets);
        ck_assert_ptr_null(req.lengths);
        free(b);

        /* Too many keys: nothing allocated is left behind. */
        ck_assert_int_eq(decode_wbuf(&w, N - 1, &req, msg, sizeof(msg), &b),
                         KVCD_ETOOMANYKEYS);
        free(b);
        kvcd_wbuf_destroy(&w);
    }
}
END_TEST

/* STORE_SHM sends lengths (>= 1), LOAD_SHM capacities (>= 0); each needs its own. */
START_TEST(test_shm_load_needs_capacities)
{
    static const field_t load = FU("op", KVCD_OP_LOAD_SHM);
    static const field_t caps0 = FU64S("capacities", BASE_NKEYS, 0);
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;
    size_t i;

    /* The STORE_SHM base with op LOAD_SHM has lengths, not capacities. */
    kvcd_wbuf_init(&w);
    build_on(&w, B_SHM, NULL, &load);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EMISSING);
    ck_assert_ptr_nonnull(strstr(msg, "capacities:"));
    ck_assert_uint_eq(req.op, KVCD_OP_LOAD_SHM);
    free(b);
    kvcd_wbuf_destroy(&w);

    /* And STORE_SHM ignores capacities. */
    kvcd_wbuf_init(&w);
    build_on(&w, B_SHM, "lengths", &caps0);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EMISSING);
    ck_assert_ptr_nonnull(strstr(msg, "lengths:"));
    free(b);
    kvcd_wbuf_destroy(&w);

    /* LOAD_SHM with zero capacities is fine. */
    kvcd_wbuf_init(&w);
    msgpack_pack_map(&w.pk, bases[B_SHM].n);
    for (i = 0; i < bases[B_SHM].n; i++) {
        const field_t *f = &shm_fields[i];

        if (strcmp(f->key, "op") == 0)
            f = &load;
        else if (strcmp(f->key, "lengths") == 0)
            f = &caps0;
        kvcd_pack_cstr(&w.pk, f->key);
        pack_value(&w.pk, f);
    }
    ck_assert_msg(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b) == 0, "%s", msg);
    ck_assert_uint_eq(req.nkeys, BASE_NKEYS);
    for (i = 0; i < BASE_NKEYS; i++) {
        ck_assert_uint_eq(req.offsets[i], 4096);
        ck_assert_uint_eq(req.lengths[i], 0);
    }
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_shm_replies)
{
    static const char exp_seg[] = "\x85"
                                  "\xa1" "v" "\x01"
                                  "\xa2" "id" "\x07"
                                  "\xa2" "op" "\x08"
                                  "\xa3" "err" "\x00"
                                  "\xa7" "segment" "\x05";
    static const char exp_load[] = "\x86"
                                   "\xa1" "v" "\x01"
                                   "\xa2" "id" "\x07"
                                   "\xa2" "op" "\x0b"
                                   "\xa3" "err" "\x00"
                                   "\xa7" "results" "\x92" "\x00" "\xcd\x03\xf2"
                                   "\xa7" "lengths" "\x92" "\xcd\x10\x00" "\x00";
    static const int res[] = {0, KVCD_ENOTFOUND};
    static const uint64_t lens[] = {4096, 0};
    kvcd_wbuf_t w;
    kvcd_reply_hdr_t rep;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_segment(&w, 7, 5);
    expect_bytes(&w, exp_seg, sizeof(exp_seg) - 1);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.op, KVCD_OP_REGISTER_SEGMENT);
    ck_assert_uint_eq(rep.segment, 5);
    kvcd_proto_reply_free(&rep);
    kvcd_wbuf_destroy(&w);

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_load_shm(&w, 7, res, lens, 2);
    expect_bytes(&w, exp_load, sizeof(exp_load) - 1);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.op, KVCD_OP_LOAD_SHM);
    ck_assert_uint_eq(rep.nresults, 2);
    ck_assert_int_eq(rep.results[0], 0);
    ck_assert_int_eq(rep.results[1], KVCD_ENOTFOUND);
    ck_assert_ptr_nonnull(rep.lengths);
    ck_assert_uint_eq(rep.lengths[0], 4096);
    ck_assert_uint_eq(rep.lengths[1], 0);
    kvcd_proto_reply_free(&rep);
    ck_assert_ptr_null(rep.lengths);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* ---- malformed frames ---- */

START_TEST(test_bad_empty)
{
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    ck_assert_int_eq(decode("", 0, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EMALFORMED);
    ck_assert_ptr_nonnull(strstr(msg, "empty"));
    ck_assert_uint_eq(req.id, 0);
    ck_assert_uint_eq(req.op, 0);
    free(b);
}
END_TEST

/* Every proper prefix of a valid header is an incomplete map. */
START_TEST(test_bad_every_prefix)
{
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;
    size_t len;

    kvcd_wbuf_init(&w);
    build(&w, NULL, NULL);
    for (len = 0; len < w.sb.size; len++) {
        int rc = decode(w.sb.data, len, MAXKEYS, &req, msg, sizeof(msg), &b);

        ck_assert_msg(rc == KVCD_EMALFORMED, "prefix of %zu/%zu bytes: rc %d (%s)", len,
                      w.sb.size, rc, msg);
        free(b);
    }
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);

    /* The same for the shortest header there is. */
    for (len = 0; len < sizeof(ping_req) - 1; len++) {
        ck_assert_int_eq(decode(ping_req, len, MAXKEYS, &req, msg, sizeof(msg), &b),
                         KVCD_EMALFORMED);
        free(b);
    }
}
END_TEST

START_TEST(test_bad_not_a_map)
{
#define C(lit) {lit, sizeof(lit) - 1}
    static const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        C("\x92\x01\x02"),               /* array */
        C("\x90"),                       /* empty array */
        C("\x05"),                       /* positive fixint */
        C("\xff"),                       /* negative fixint */
        C("\xa1" "v"),                   /* string */
        C("\xc0"),                       /* nil */
        C("\xc3"),                       /* true */
        C("\xc4\x01\x00"),               /* bin */
        C("\xcb\x3f\xf0\0\0\0\0\0\0"),   /* float64 */
        C("\x91\x81\xa1" "v" "\x01"),      /* a map inside an array */
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kvcd_req_t req;
        char msg[256];
        uint8_t *b;

        ck_assert_msg(decode(cases[i].bytes, cases[i].len, MAXKEYS, &req, msg, sizeof(msg),
                             &b) == KVCD_EMALFORMED,
                      "case %zu", i);
        ck_assert_msg(strstr(msg, "map") != NULL, "case %zu: %s", i, msg);
        free(b);
    }
#undef C
}
END_TEST

START_TEST(test_bad_not_msgpack)
{
    /* 0xc1 is the one byte msgpack never uses. */
    static const char never[] = "\xc1";
    static const char inner[] = "\x81\xa1v\xc1";
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    ck_assert_int_eq(decode(never, 1, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EMALFORMED);
    free(b);
    ck_assert_int_eq(decode(inner, 4, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EMALFORMED);
    free(b);
}
END_TEST

/* Container and string headers claiming far more than the frame holds. msgpack-c
 * would reserve count * sizeof(object) bytes for them up front (192 GiB for the
 * first); the decoder must refuse them before that (see WATCH_MALLOC). */
START_TEST(test_bad_huge_counts)
{
    static const char *const cases[] = {
        "\xdf\xff\xff\xff\xff", /* map32 */
        "\xdd\xff\xff\xff\xff", /* array32 */
        "\xdb\xff\xff\xff\xff", /* str32 */
        "\xc6\xff\xff\xff\xff", /* bin32 */
        "\x81\xa1x\xdf\xff\xff\xff\xff",  /* nested under an unknown key */
    };
    static const size_t lens[] = {5, 5, 5, 5, 8};
    size_t i;

    for (i = 0; i < 5; i++) {
        kvcd_req_t req;
        kvcd_reply_hdr_t rep;
        char msg[256];
        uint8_t *b;
        int rc;

        b = dup_exact(cases[i], lens[i]);
        alloc_watch();
        rc = kvcd_proto_decode_req(b, lens[i], MAXKEYS, &req, msg, sizeof(msg));
        alloc_bounded(64 << 10, "case", i);
        ck_assert_msg(rc == KVCD_EMALFORMED, "case %zu: %d %s", i, rc, msg);
        alloc_watch();
        rc = kvcd_proto_decode_reply(b, lens[i], &rep);
        alloc_bounded(64 << 10, "reply case", i);
        ck_assert_int_eq(rc, KVCD_EMALFORMED);
        free(b);
    }
}
END_TEST

/* A huge claim after a value of every format: whatever precedes it, the claim
 * is refused before msgpack-c reserves memory for it. */
START_TEST(test_bad_claim_after_every_format)
{
    static const char *const claims[] = {"\xdd\xff\xff\xff\xff", "\xdf\xff\xff\xff\xff",
                                         "\xdb\xff\xff\xff\xff", "\xc6\xff\xff\xff\xff",
                                         "\xc9\xff\xff\xff\xff"};
    size_t i, c, shape;

    for (i = 0; i < NFORMATS; i++) {
        for (c = 0; c < 10; c++) {
            kvcd_wbuf_t w;
            kvcd_req_t req;
            kvcd_reply_hdr_t rep;
            char msg[256];
            uint8_t *b;
            int rc;

            /* {"a": value, "b": claim} and [value, claim] */
            shape = c / 5;
            kvcd_wbuf_init(&w);
            if (shape == 0) {
                msgpack_pack_map(&w.pk, 2);
                kvcd_pack_cstr(&w.pk, "a");
            } else {
                msgpack_pack_array(&w.pk, 2);
            }
            pack_format(&w.pk, i);
            if (shape == 0)
                kvcd_pack_cstr(&w.pk, "b");
            msgpack_sbuffer_write(&w.sb, claims[c % 5], 5);
            b = dup_exact(w.sb.data, w.sb.size);
            alloc_watch();
            rc = kvcd_proto_decode_req(b, w.sb.size, MAXKEYS, &req, msg, sizeof(msg));
            alloc_bounded(64 * w.sb.size + (64 << 10), "format", i);
            ck_assert_msg(rc == KVCD_EMALFORMED, "format %zu case %zu: %d %s", i, c, rc, msg);
            alloc_watch();
            rc = kvcd_proto_decode_reply(b, w.sb.size, &rep);
            alloc_bounded(64 * w.sb.size + (64 << 10), "reply format", i);
            ck_assert_int_eq(rc, KVCD_EMALFORMED);
            free(b);
            kvcd_wbuf_destroy(&w);
        }
    }
}
END_TEST

START_TEST(test_bad_trailing_bytes)
{
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    kvcd_wbuf_init(&w);
    build(&w, NULL, NULL);
    msgpack_pack_nil(&w.pk);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EMALFORMED);
    ck_assert_ptr_nonnull(strstr(msg, "trailing"));
    /* id and op could be read, so they are echoed. */
    ck_assert_uint_eq(req.id, BASE_ID);
    ck_assert_uint_eq(req.op, KVCD_OP_STORE);
    free(b);
    kvcd_wbuf_destroy(&w);

    /* Two complete headers in one frame. */
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req(&w, 1, KVCD_OP_PING, NULL, NULL, 0);
    kvcd_proto_encode_req(&w, 2, KVCD_OP_PING, NULL, NULL, 0);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EMALFORMED);
    ck_assert_ptr_nonnull(strstr(msg, "12 trailing"));
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* Pad a valid header with an unknown bin field to exactly `total` bytes. */
static void build_padded(kvcd_wbuf_t *w, size_t total)
{
    static const field_t pad0 = {.key = "pad", .t = F_BIN, .len = 0};
    kvcd_wbuf_t probe;
    size_t fixed;
    char *pad;
    field_t pad1 = pad0;

    /* The size with a bin32 value of 70000 bytes, minus those bytes. */
    kvcd_wbuf_init(&probe);
    pad = calloc(1, total);
    ck_assert_ptr_nonnull(pad);
    pad1.s = pad;
    pad1.len = 70000;
    build(&probe, NULL, &pad1);
    fixed = probe.sb.size - 70000;
    kvcd_wbuf_destroy(&probe);
    pad1.len = total - fixed;
    build(w, NULL, &pad1);
    free(pad);
    ck_assert_uint_eq(w->sb.size, total);
}

START_TEST(test_bad_header_too_large)
{
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    kvcd_wbuf_init(&w);
    build_padded(&w, KVCD_HEADER_MAX);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
    check_base_decoded(&req);
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);

    kvcd_wbuf_init(&w);
    build_padded(&w, KVCD_HEADER_MAX + 1);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_ETOOLARGE);
    ck_assert_ptr_nonnull(strstr(msg, "4194305"));
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

typedef struct {
    const char *drop; /* field removed from the base header */
    int base;         /* which base header (B_STORE unless said) */
    field_t set;      /* field replaced or added */
    int err;
    const char *what; /* the message must contain this */
} bad_t;

static const bad_t bad_cases[] = {
    /* v */
    {NULL, B_STORE, FS("v", "1"), KVCD_EBADFIELD, "v:"},
    {NULL, B_STORE, FI("v", -1), KVCD_EBADFIELD, "v:"},
    {NULL, B_STORE, FU("v", 1ull << 32), KVCD_EVERSION, "version 4294967296"},
    {NULL, B_STORE, FNIL("v"), KVCD_EBADFIELD, "v:"},
    {NULL, B_STORE, FFLOAT("v"), KVCD_EBADFIELD, "v:"},
    {NULL, B_STORE, FU("v", 2), KVCD_EVERSION, "version 2"},
    {NULL, B_STORE, FU("v", 0), KVCD_EVERSION, "version 0"},
    {"v", B_STORE, {0}, KVCD_EMISSING, "v:"},
    /* id */
    {NULL, B_STORE, FI("id", -1), KVCD_EBADFIELD, "id:"},
    {NULL, B_STORE, FS("id", "7"), KVCD_EBADFIELD, "id:"},
    {NULL, B_STORE, FNIL("id"), KVCD_EBADFIELD, "id:"},
    {NULL, B_STORE, FFLOAT("id"), KVCD_EBADFIELD, "id:"},
    {"id", B_STORE, {0}, KVCD_EMISSING, "id:"},
    /* op */
    {NULL, B_STORE, FS("op", "STORE"), KVCD_EBADFIELD, "op:"},
    {NULL, B_STORE, FI("op", -2), KVCD_EBADFIELD, "op:"},
    {NULL, B_STORE, FU("op", 1ull << 32), KVCD_EUNKNOWNOP, "unknown operation 4294967296"},
    {NULL, B_STORE, FTRUE("op"), KVCD_EBADFIELD, "op:"},
    {"op", B_STORE, {0}, KVCD_EMISSING, "op:"},
    {NULL, B_STORE, FU("op", 99), KVCD_EUNKNOWNOP, "99"},
    {NULL, B_STORE, FU("op", 0), KVCD_EUNKNOWNOP, "operation 0"},
    {NULL, B_STORE, FU("op", 18), KVCD_EUNKNOWNOP, "18"},
    /* model */
    {NULL, B_STORE, FBIN("model", "meta", 4), KVCD_EBADFIELD, "model:"},
    {NULL, B_STORE, FU("model", 1), KVCD_EBADFIELD, "model:"},
    {NULL, B_STORE, FNIL("model"), KVCD_EBADFIELD, "model:"},
    {NULL, B_STORE, FMAP0("model"), KVCD_EBADFIELD, "model:"},
    {NULL, B_STORE, FFILL("model", 0), KVCD_EBADFIELD, "model:"},
    {NULL, B_STORE, FFILL("model", KVCD_MODEL_MAX + 1), KVCD_EBADFIELD, "model:"},
    {NULL, B_STORE, FSN("model", "me\0ta", 5), KVCD_EBADFIELD, "model:"},
    {NULL, B_STORE, FSN("model", "meta\0", 5), KVCD_EBADFIELD, "model:"},
    {"model", B_STORE, {0}, KVCD_EMISSING, "model:"},
    /* salt */
    {NULL, B_STORE, FU("salt", 0), KVCD_EBADFIELD, "salt:"},
    {NULL, B_STORE, FBIN("salt", "s", 1), KVCD_EBADFIELD, "salt:"},
    {NULL, B_STORE, FNIL("salt"), KVCD_EBADFIELD, "salt:"},
    {NULL, B_STORE, FS("salt", "a@b"), KVCD_EBADFIELD, "salt:"},
    {NULL, B_STORE, FS("salt", "a/b"), KVCD_EBADFIELD, "salt:"},
    {NULL, B_STORE, FS("salt", "a\\b"), KVCD_EBADFIELD, "salt:"},
    {NULL, B_STORE, FS("salt", "@"), KVCD_EBADFIELD, "salt:"},
    {NULL, B_STORE, FSN("salt", "ab\0", 3), KVCD_EBADFIELD, "salt:"},
    {NULL, B_STORE, FSN("salt", "\0", 1), KVCD_EBADFIELD, "salt:"},
    {NULL, B_STORE, FFILL("salt", KVCD_SALT_MAX + 1), KVCD_EBADFIELD, "salt:"},
    /* hashes */
    {NULL, B_STORE, FBIN("hashes", "abcd", 4), KVCD_EBADFIELD, "hashes:"},
    {NULL, B_STORE, FS("hashes", "abcd"), KVCD_EBADFIELD, "hashes:"},
    {NULL, B_STORE, FMAP0("hashes"), KVCD_EBADFIELD, "hashes:"},
    {NULL, B_STORE, FNIL("hashes"), KVCD_EBADFIELD, "hashes:"},
    {NULL, B_STORE, FHASHES("hashes", 0, 8), KVCD_EBADFIELD, "hashes:"},
    {NULL, B_STORE, {.key = "hashes", .t = F_HASHES_STR}, KVCD_EBADFIELD, "hashes[1]"},
    {NULL, B_STORE, {.key = "hashes", .t = F_HASHES_NIL}, KVCD_EBADFIELD, "hashes[2]"},
    {NULL, B_STORE, FHASHES("hashes", 2, 0), KVCD_EBADFIELD, "hashes[0]"},
    {NULL, B_STORE, FHASHES("hashes", 2, KVCD_HASH_MAX + 1), KVCD_EBADFIELD, "hashes[0]"},
    {"hashes", B_STORE, {0}, KVCD_EMISSING, "hashes:"},
    /* rank */
    {NULL, B_STORE, FU("world_size", 0), KVCD_EBADFIELD, "world_size:"},
    {NULL, B_STORE, FU("world_size", 256), KVCD_EBADFIELD, "world_size:"},
    {NULL, B_STORE, FI("world_size", -1), KVCD_EBADFIELD, "world_size:"},
    {NULL, B_STORE, FS("world_size", "2"), KVCD_EBADFIELD, "world_size:"},
    {NULL, B_STORE, FU("worker_id", 2), KVCD_EBADFIELD, "worker_id:"}, /* == world_size */
    {NULL, B_STORE, FU("worker_id", 200), KVCD_EBADFIELD, "worker_id:"},
    {NULL, B_STORE, FU("worker_id", 255), KVCD_EBADFIELD, "worker_id:"},
    {NULL, B_STORE, FI("worker_id", -1), KVCD_EBADFIELD, "worker_id:"},
    {"world_size", B_STORE, {0}, KVCD_EBADFIELD, "worker_id:"}, /* worker 1 >= default 1 */
    {NULL, B_STORE, FU("kv_rank", 1ull << 32), KVCD_EBADFIELD, "kv_rank:"},
    {NULL, B_STORE, FI("kv_rank", -1), KVCD_EBADFIELD, "kv_rank:"},
    {NULL, B_STORE, FS("kv_rank", "0x02010201"), KVCD_EBADFIELD, "kv_rank:"},
    /* group */
    {NULL, B_STORE, FI("group", -3), KVCD_EBADFIELD, "group:"},
    {NULL, B_STORE, FU("group", 1ull << 32), KVCD_EBADFIELD, "group:"},
    {NULL, B_STORE, FS("group", "3"), KVCD_EBADFIELD, "group:"},
    /* REGISTER_SEGMENT */
    {"pid", B_REG, {0}, KVCD_EMISSING, "pid:"},
    {"fd", B_REG, {0}, KVCD_EMISSING, "fd:"},
    {"size", B_REG, {0}, KVCD_EMISSING, "size:"},
    {NULL, B_REG, FU("pid", 1ull << 31), KVCD_EBADFIELD, "pid:"},
    {NULL, B_REG, FI("pid", -1), KVCD_EBADFIELD, "pid:"},
    {NULL, B_REG, FI("fd", -1), KVCD_EBADFIELD, "fd:"},
    {NULL, B_REG, FS("fd", "3"), KVCD_EBADFIELD, "fd:"},
    {NULL, B_REG, FU("size", 0), KVCD_EBADFIELD, "size:"},
    {NULL, B_REG, FS("size", "1G"), KVCD_EBADFIELD, "size:"},
    /* UNREGISTER_SEGMENT */
    {"segment", B_UNREG, {0}, KVCD_EMISSING, "segment:"},
    {NULL, B_UNREG, FI("segment", -1), KVCD_EBADFIELD, "segment:"},
    /* STORE_SHM */
    {"segment", B_SHM, {0}, KVCD_EMISSING, "segment:"},
    {NULL, B_SHM, FS("segment", "9"), KVCD_EBADFIELD, "segment:"},
    {"offsets", B_SHM, {0}, KVCD_EMISSING, "offsets:"},
    {"lengths", B_SHM, {0}, KVCD_EMISSING, "lengths:"},
    {NULL, B_SHM, FBIN("offsets", "\0\0", 2), KVCD_EBADFIELD, "offsets:"},
    {NULL, B_SHM, FU("lengths", 100), KVCD_EBADFIELD, "lengths:"},
    {NULL, B_SHM, FU64S("offsets", BASE_NKEYS - 1, 0), KVCD_EBADFIELD, "offsets: 2 entries"},
    {NULL, B_SHM, FU64S("offsets", BASE_NKEYS + 1, 0), KVCD_EBADFIELD, "offsets: 4 entries"},
    {NULL, B_SHM, FU64S("lengths", BASE_NKEYS - 1, 1), KVCD_EBADFIELD, "lengths: 2 entries"},
    {NULL, B_SHM, FU64S("lengths", BASE_NKEYS, 0), KVCD_EBADFIELD, "lengths[0]"},
    {NULL, B_SHM, {.key = "offsets", .t = F_U64S_NEG}, KVCD_EBADFIELD, "offsets[1]"},
    {NULL, B_SHM, {.key = "lengths", .t = F_U64S_STR, .u = 5}, KVCD_EBADFIELD, "lengths[1]"},
    {NULL, B_SHM, FHASHES("hashes", 0, 8), KVCD_EBADFIELD, "hashes:"},
    {NULL, B_SHM, FFILL("model", 0), KVCD_EBADFIELD, "model:"},
};

START_TEST(test_bad_field)
{
    const bad_t *c = &bad_cases[_i];
    const char *touched = c->drop ? c->drop : c->set.key;
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;
    int rc;

    kvcd_wbuf_init(&w);
    build_on(&w, c->base, c->drop, c->drop ? NULL : &c->set);
    rc = decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b);
    ck_assert_msg(rc == c->err, "case %d (%s): rc %d (%s), want %d (%s)", _i, touched, rc,
                  kvcd_errname(rc), c->err, kvcd_errname(c->err));
    ck_assert_msg(strstr(msg, c->what) != NULL, "case %d: message \"%s\" lacks \"%s\"", _i,
                  msg, c->what);
    /* Whatever is wrong, a readable id and op are echoed. */
    ck_assert_uint_eq(req.id, strcmp(touched, "id") == 0 ? 0 : BASE_ID);
    if (strcmp(touched, "op") != 0)
        ck_assert_uint_eq(req.op, bases[c->base].op);
    else if (c->err == KVCD_EUNKNOWNOP) /* echoed when it fits the reply's op */
        ck_assert_uint_eq(req.op, c->set.u > UINT32_MAX ? 0 : c->set.u);
    else
        ck_assert_uint_eq(req.op, 0);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_bad_messages)
{
    static const field_t v2 = FU("v", 2), op99 = FU("op", 99);
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256], small[8];
    uint8_t *b;

    /* The exact text of the PROTOCOL.md example. */
    kvcd_wbuf_init(&w);
    build(&w, NULL, &v2);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EVERSION);
    ck_assert_str_eq(msg, "protocol version 2 not supported (server speaks 1)");
    ck_assert_uint_eq(req.id, BASE_ID);
    free(b);

    /* A short message buffer truncates, still terminated. */
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, small, sizeof(small), &b), KVCD_EVERSION);
    ck_assert_str_eq(small, "protoco");
    free(b);
    /* No message buffer at all. */
    b = dup_exact(w.sb.data, w.sb.size);
    ck_assert_int_eq(kvcd_proto_decode_req(b, w.sb.size, MAXKEYS, &req, NULL, 0),
                     KVCD_EVERSION);
    free(b);
    kvcd_wbuf_destroy(&w);

    kvcd_wbuf_init(&w);
    build(&w, NULL, &op99);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EUNKNOWNOP);
    ck_assert_str_eq(msg, "unknown operation 99");
    ck_assert_uint_eq(req.id, BASE_ID);
    ck_assert_uint_eq(req.op, 99);
    ck_assert_uint_eq(req.version, 1);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_too_many_keys)
{
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    kvcd_wbuf_init(&w);
    build(&w, NULL, NULL);
    ck_assert_int_eq(decode_wbuf(&w, BASE_NKEYS - 1, &req, msg, sizeof(msg), &b),
                     KVCD_ETOOMANYKEYS);
    ck_assert_str_eq(msg, "hashes: 3 keys, at most 2");
    ck_assert_uint_eq(req.id, BASE_ID);
    ck_assert_uint_eq(req.op, KVCD_OP_STORE);
    free(b);
    ck_assert_int_eq(decode_wbuf(&w, 0, &req, msg, sizeof(msg), &b), KVCD_ETOOMANYKEYS);
    free(b);
    ck_assert_int_eq(decode_wbuf(&w, BASE_NKEYS, &req, msg, sizeof(msg), &b), 0);
    check_base_decoded(&req);
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* Known keys with the wrong type are errors even where the op ignores them. */
START_TEST(test_bad_field_on_ping)
{
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    kvcd_wbuf_init(&w);
    msgpack_pack_map(&w.pk, 4);
    kvcd_pack_cstr(&w.pk, "v");
    msgpack_pack_uint8(&w.pk, 1);
    kvcd_pack_cstr(&w.pk, "id");
    msgpack_pack_uint8(&w.pk, 5);
    kvcd_pack_cstr(&w.pk, "op");
    msgpack_pack_uint8(&w.pk, KVCD_OP_PING);
    kvcd_pack_cstr(&w.pk, "hashes");
    msgpack_pack_uint8(&w.pk, 1);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EBADFIELD);
    ck_assert_ptr_nonnull(strstr(msg, "hashes:"));
    ck_assert_uint_eq(req.id, 5);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* ---- forward compatibility ---- */

START_TEST(test_unknown_keys_ignored)
{
    static const char ext[] = "\xd6\x05" "abcd"; /* fixext4 */
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;
    uint8_t h[BASE_HLEN];
    size_t i;

    kvcd_wbuf_init(&w);
    msgpack_pack_map(&w.pk, NBASE + 12);
    /* Unknown keys before, between and after the known ones; some look like
     * known keys but are not byte-equal to them. */
    kvcd_pack_cstr(&w.pk, "trace");
    msgpack_pack_map(&w.pk, 2);
    kvcd_pack_cstr(&w.pk, "span");
    msgpack_pack_uint64(&w.pk, 1ull << 40);
    kvcd_pack_cstr(&w.pk, "tags");
    msgpack_pack_array(&w.pk, 2);
    msgpack_pack_nil(&w.pk);
    msgpack_pack_double(&w.pk, 2.5);
    kvcd_pack_cstr(&w.pk, "V");
    kvcd_pack_cstr(&w.pk, "not the version");
    kvcd_pack_cstr(&w.pk, "ids");
    msgpack_pack_int(&w.pk, -1);
    for (i = 0; i < NBASE; i++) {
        kvcd_pack_cstr(&w.pk, base_fields[i].key);
        pack_value(&w.pk, &base_fields[i]);
        if (i == 4) {
            kvcd_pack_cstr(&w.pk, "priority");
            msgpack_pack_float(&w.pk, 0.5f);
            msgpack_pack_str(&w.pk, 2);
            msgpack_pack_str_body(&w.pk, "v\0", 2);
            kvcd_pack_cstr(&w.pk, "x");
        }
    }
    kvcd_pack_cstr(&w.pk, "hashes_v2");
    msgpack_pack_array(&w.pk, 1);
    kvcd_pack_cstr(&w.pk, "not a bin");
    kvcd_pack_cstr(&w.pk, "model2");
    msgpack_pack_nil(&w.pk);
    kvcd_pack_cstr(&w.pk, "opaque");
    msgpack_pack_bin(&w.pk, 3);
    msgpack_pack_bin_body(&w.pk, "\x00\x01\x02", 3);
    kvcd_pack_cstr(&w.pk, "flag");
    msgpack_pack_false(&w.pk);
    kvcd_pack_cstr(&w.pk, "ext");
    msgpack_sbuffer_write(&w.sb, ext, sizeof(ext) - 1);
    kvcd_pack_cstr(&w.pk, "");
    msgpack_pack_int64(&w.pk, INT64_MIN);
    kvcd_pack_cstr(&w.pk, "salt ");
    kvcd_pack_cstr(&w.pk, "a/b@c");
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
    check_base_decoded(&req);
    for (i = 0; i < BASE_NKEYS; i++) {
        fill_hash(h, BASE_HLEN, i);
        ck_assert_mem_eq(req.hashes[i].ptr, h, BASE_HLEN);
    }
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* Every format as the value of an unknown key: all are skipped. */
START_TEST(test_unknown_keys_every_format)
{
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256], key[32];
    uint8_t *b;
    size_t i;

    kvcd_wbuf_init(&w);
    msgpack_pack_map(&w.pk, NBASE + NFORMATS);
    for (i = 0; i < NFORMATS; i++) {
        snprintf(key, sizeof(key), "x%zu", i);
        kvcd_pack_cstr(&w.pk, key);
        ck_assert(pack_format(&w.pk, i));
    }
    ck_assert(!pack_format(&w.pk, NFORMATS));
    for (i = 0; i < NBASE; i++) {
        kvcd_pack_cstr(&w.pk, base_fields[i].key);
        pack_value(&w.pk, &base_fields[i]);
    }
    ck_assert_msg(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b) == 0, "%s", msg);
    check_base_decoded(&req);
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* ---- replies ---- */

START_TEST(test_reply_error_roundtrip)
{
    kvcd_wbuf_t w;
    kvcd_reply_hdr_t rep;
    char longmsg[400];

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_error(&w, 77, KVCD_OP_LOAD, KVCD_EFRAMES, "3 frames for 2 keys");
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.version, 1);
    ck_assert_uint_eq(rep.id, 77);
    ck_assert_uint_eq(rep.op, KVCD_OP_LOAD);
    ck_assert_int_eq(rep.err, KVCD_EFRAMES);
    ck_assert_str_eq(rep.ename, "EFRAMES");
    ck_assert_str_eq(rep.msg, "3 frames for 2 keys");
    ck_assert_uint_eq(rep.nresults, 0);
    ck_assert_ptr_null(rep.results);
    kvcd_proto_reply_free(&rep);
    kvcd_wbuf_destroy(&w);

    /* No message: the table's. A system error keeps its errno. */
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_error(&w, UINT64_MAX, 0, -ENOMEM, NULL);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.id, UINT64_MAX);
    ck_assert_int_eq(rep.err, -ENOMEM);
    ck_assert_str_eq(rep.ename, "ENOMEM");
    ck_assert_str_eq(rep.msg, strerror(ENOMEM));
    kvcd_proto_reply_free(&rep);
    kvcd_wbuf_destroy(&w);

    /* Overlong messages are cut to the buffer, still terminated. */
    memset(longmsg, 'm', sizeof(longmsg) - 1);
    longmsg[sizeof(longmsg) - 1] = '\0';
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_error(&w, 1, KVCD_OP_STORE, KVCD_EINTERNAL, longmsg);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_int_eq(rep.err, KVCD_EINTERNAL);
    ck_assert_uint_eq(strlen(rep.msg), sizeof(rep.msg) - 1);
    kvcd_proto_reply_free(&rep);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_reply_results_roundtrip)
{
    static const int res[] = {0, KVCD_ENOTFOUND, KVCD_ENOSPACE, -EIO, KVCD_EBUSY, 0};
    enum { N = sizeof(res) / sizeof(res[0]) };
    static const uint64_t wire[N] = {0, 1010, 1009, 5, 1012, 0};
    kvcd_wbuf_t w;
    kvcd_reply_hdr_t rep;
    msgpack_unpacked up;
    const msgpack_object *arr = NULL;
    size_t i;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_results(&w, 3, KVCD_OP_REMOVE, res, N);

    /* On the wire: positive codes. */
    msgpack_unpacked_init(&up);
    ck_assert_int_eq(msgpack_unpack_next(&up, w.sb.data, w.sb.size, NULL),
                     MSGPACK_UNPACK_SUCCESS);
    for (i = 0; i < up.data.via.map.size; i++)
        if (up.data.via.map.ptr[i].key.via.str.size == 7 &&
            memcmp(up.data.via.map.ptr[i].key.via.str.ptr, "results", 7) == 0)
            arr = &up.data.via.map.ptr[i].val;
    ck_assert_ptr_nonnull(arr);
    ck_assert_int_eq(arr->type, MSGPACK_OBJECT_ARRAY);
    ck_assert_uint_eq(arr->via.array.size, N);
    for (i = 0; i < N; i++) {
        ck_assert_int_eq(arr->via.array.ptr[i].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
        ck_assert_uint_eq(arr->via.array.ptr[i].via.u64, wire[i]);
    }
    msgpack_unpacked_destroy(&up);

    /* Decoded: negative again. */
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.id, 3);
    ck_assert_uint_eq(rep.op, KVCD_OP_REMOVE);
    ck_assert_int_eq(rep.err, 0);
    ck_assert_uint_eq(rep.nresults, N);
    for (i = 0; i < N; i++)
        ck_assert_int_eq(rep.results[i], res[i]);
    ck_assert_ptr_null(rep.present);
    kvcd_proto_reply_free(&rep);
    ck_assert_ptr_null(rep.results);
    kvcd_wbuf_destroy(&w);

    /* Zero results is a valid (empty) array. */
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_results(&w, 4, KVCD_OP_LOAD, NULL, 0);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.nresults, 0);
    kvcd_proto_reply_free(&rep);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_reply_lookup_roundtrip)
{
    enum { N = 300 };
    uint8_t present[N];
    kvcd_wbuf_t w;
    kvcd_reply_hdr_t rep;
    size_t i;

    for (i = 0; i < N; i++)
        present[i] = i < 100 || i % 3 == 0;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_lookup(&w, 1ull << 50, 100, present, N);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.id, 1ull << 50);
    ck_assert_uint_eq(rep.op, KVCD_OP_LOOKUP);
    ck_assert_int_eq(rep.err, 0);
    ck_assert_uint_eq(rep.prefix, 100);
    ck_assert_uint_eq(rep.nresults, N);
    ck_assert_ptr_nonnull(rep.present);
    for (i = 0; i < N; i++)
        ck_assert_uint_eq(rep.present[i], present[i]);
    kvcd_proto_reply_free(&rep);
    ck_assert_ptr_null(rep.present);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_reply_ping_long_server)
{
    char name[100];
    kvcd_ping_t p = ping_fields;
    kvcd_wbuf_t w;
    kvcd_reply_hdr_t rep;

    memset(name, 's', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    p.server = name;
    p.max_request = UINT64_MAX;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_ping(&w, 1, &p);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(strlen(rep.ping.server), sizeof(rep.server_buf) - 1);
    ck_assert_uint_eq(rep.ping.max_request, UINT64_MAX);
    ck_assert_uint_eq(rep.ping.max_keys, 4096);
    kvcd_proto_reply_free(&rep);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_reply_clear_roundtrip)
{
    kvcd_wbuf_t w;
    kvcd_reply_hdr_t rep;

    kvcd_wbuf_init(&w);
    kvcd_proto_reply_begin(&w, 12, KVCD_OP_CLEAR, 0, NULL, 1);
    kvcd_pack_cstr(&w.pk, "removed");
    msgpack_pack_uint64(&w.pk, 12345678901ull);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.id, 12);
    ck_assert_uint_eq(rep.op, KVCD_OP_CLEAR);
    ck_assert_int_eq(rep.err, 0);
    ck_assert_uint_eq(rep.removed, 12345678901ull);
    kvcd_proto_reply_free(&rep);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_reply_status_roundtrip)
{
    json_error_t jerr;
    json_t *st = json_pack_ex(
        &jerr, 0,
        "{s:s, s:f, s:I, s:{s:I, s:I, s:I, s:s, s:f, s:f, s:I},"
        " s:{s:I, s:I, s:I}, s:[I, I, f, f, b, b, n, s, [], {}, [[I]]], s:{}, s:s}",
        "server", "kvcd 0.1.0", "uptime_s", 12.25, "inflight", (json_int_t)0,
        "l1", "capacity", (json_int_t)1 << 40, "used", (json_int_t)4096, "objects",
        (json_int_t)1, "eviction_policy", "lru", "high_watermark", 0.9, "low_watermark",
        0.75, "largest_free", (json_int_t)0,
        "counters", "requests", (json_int_t)INT64_MAX, "errors", (json_int_t)-1, "clears",
        (json_int_t)INT64_MIN,
        "mixed", (json_int_t)1, (json_int_t)-200000, -0.5, 1e300, 1, 0, "str", (json_int_t)7,
        "empty", "utf8", "\xc3\xa9t\xc3\xa9");
    kvcd_wbuf_t w;
    kvcd_reply_hdr_t rep;

    ck_assert_msg(st != NULL, "json_pack: %s", jerr.text);
    kvcd_wbuf_init(&w);
    kvcd_proto_reply_begin(&w, 8, KVCD_OP_STATUS, 0, NULL, 1);
    kvcd_pack_cstr(&w.pk, "status");
    kvcd_pack_json(&w.pk, st);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.op, KVCD_OP_STATUS);
    ck_assert_ptr_nonnull(rep.status);
    if (!json_equal(st, rep.status)) {
        char *a = json_dumps(st, JSON_SORT_KEYS), *b = json_dumps(rep.status, JSON_SORT_KEYS);

        ck_abort_msg("status differs:\n%s\n%s", a, b);
    }
    /* Reals stay reals, integers stay integers. */
    ck_assert(json_is_real(json_object_get(json_object_get(rep.status, "l1"),
                                           "high_watermark")));
    ck_assert(json_is_integer(json_object_get(rep.status, "inflight")));
    kvcd_proto_reply_free(&rep);
    ck_assert_ptr_null(rep.status);
    kvcd_wbuf_destroy(&w);
    json_decref(st);
}
END_TEST

/* What msgpack has and JSON lacks. */
START_TEST(test_msgpack_to_json_edges)
{
    static const char mp[] = "\x87"
                             "\xa1" "b" "\xc4\x03\xde\xad\x0f"         /* bin -> hex */
                             "\xa3" "f32" "\xca\x3f\xc0\x00\x00"       /* 1.5f */
                             "\x01" "\xa4" "skip"                      /* int key: dropped */
                             "\xa1" "e" "\xd4\x01\x00"                 /* ext -> null */
                             "\xa3" "big" "\xcf\xff\xff\xff\xff\xff\xff\xff\xff"
                             "\xa3" "neg" "\xd3\x80\x00\x00\x00\x00\x00\x00\x00"
                             "\xa1" "n" "\xc0";
    msgpack_unpacked up;
    json_t *j;

    msgpack_unpacked_init(&up);
    ck_assert_int_eq(msgpack_unpack_next(&up, mp, sizeof(mp) - 1, NULL),
                     MSGPACK_UNPACK_SUCCESS);
    j = kvcd_msgpack_to_json(&up.data);
    ck_assert_ptr_nonnull(j);
    ck_assert_uint_eq(json_object_size(j), 6);
    ck_assert_str_eq(json_string_value(json_object_get(j, "b")), "dead0f");
    ck_assert(json_real_value(json_object_get(j, "f32")) == 1.5);
    ck_assert(json_is_null(json_object_get(j, "e")));
    ck_assert_int_eq(json_integer_value(json_object_get(j, "big")), INT64_MAX);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "neg")), INT64_MIN);
    ck_assert(json_is_null(json_object_get(j, "n")));
    json_decref(j);
    msgpack_unpacked_destroy(&up);
}
END_TEST

START_TEST(test_reply_malformed)
{
#define C(lit) {lit, sizeof(lit) - 1}
    static const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        C(""),
        C("\xc1"),
        C("\x91\x00"),                                              /* not a map */
        C("\x81\xa3" "err" "\x00" "\xc0"),                          /* trailing */
        C("\x81\xa3" "err"),                                        /* truncated */
        C("\x81\xa7" "results" "\x92\x00\xa1" "x"),                /* result not an int */
        C("\x81\xa7" "results" "\x91\xff"),                         /* negative result */
        C("\x81\xa7" "results" "\x91\xce\x80\x00\x00\x00"),       /* > INT32_MAX */
        C("\x82\xa7" "results" "\x92\x00\x00\xa7" "present" "\x91\xc3"), /* lengths differ */
        C("\x82\xa7" "present" "\x91\xc3\xa7" "results" "\x92\x00\x00"),
        C("\x82\xa7" "results" "\x91\x00\xa7" "lengths" "\x92\x00\x00"),
        C("\x81\xa7" "lengths" "\x92\x00\xc0"),                  /* length not an int */
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kvcd_reply_hdr_t rep;
        uint8_t *b = dup_exact(cases[i].bytes, cases[i].len);

        ck_assert_msg(kvcd_proto_decode_reply(b, cases[i].len, &rep) == KVCD_EMALFORMED,
                      "case %zu", i);
        ck_assert_ptr_null(rep.results);
        ck_assert_ptr_null(rep.present);
        ck_assert_ptr_null(rep.lengths);
        ck_assert_ptr_null(rep.status);
        free(b);
    }
#undef C
}
END_TEST

START_TEST(test_reply_unknown_fields_ignored)
{
    static const int res[] = {0, KVCD_ENOTFOUND};
    kvcd_wbuf_t w;
    kvcd_reply_hdr_t rep;

    kvcd_wbuf_init(&w);
    kvcd_proto_reply_begin(&w, 9, KVCD_OP_LOAD, 0, NULL, 3);
    kvcd_pack_cstr(&w.pk, "future");
    msgpack_pack_map(&w.pk, 1);
    kvcd_pack_cstr(&w.pk, "a");
    msgpack_pack_array(&w.pk, 0);
    kvcd_pack_cstr(&w.pk, "results");
    msgpack_pack_array(&w.pk, 2);
    msgpack_pack_uint32(&w.pk, (uint32_t)-res[0]);
    msgpack_pack_uint32(&w.pk, (uint32_t)-res[1]);
    kvcd_pack_cstr(&w.pk, "latency_us");
    msgpack_pack_double(&w.pk, 3.5);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.nresults, 2);
    ck_assert_int_eq(rep.results[1], KVCD_ENOTFOUND);
    kvcd_proto_reply_free(&rep);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* ---- error table ---- */

static const struct {
    int code;
    int wire;
    const char *name;
    const char *msg;
} err_table[] = {
#define ERR_ROW(sym, code, name, msg) {KVCD_##sym, code, name, msg},
    KVCD_ERR_MAP(ERR_ROW)
#undef ERR_ROW
};
#define NERR (sizeof(err_table) / sizeof(err_table[0]))

/* PROTOCOL.md section 5: these numbers are on the wire and never change. */
static const struct {
    const char *name;
    int wire;
} doc_codes[] = {
    {"EMALFORMED", 1001}, {"EVERSION", 1002},  {"EUNKNOWNOP", 1003}, {"EMISSING", 1004},
    {"EBADFIELD", 1005},  {"ETOOLARGE", 1006}, {"ETOOMANYKEYS", 1007}, {"EFRAMES", 1008},
    {"ENOSPACE", 1009},   {"ENOTFOUND", 1010}, {"ESHUTDOWN", 1011},  {"EBUSY", 1012},
    {"ETIMEDOUT", 1013},  {"EINTERNAL", 1014}, {"ECHECKSUM", 1015},  {"ECONFIG", 1016},
    {"EUNAVAIL", 1017},   {"ESEGMENT", 1018},  {"ECANCELED", 1019},  {"ECONNECT", 1020},
    {"EPEERUNVERIFIED", 1021}, {"EQUEUEFULL", 1022}, {"EDUPLICATE", 1023},
};

#define SYS(e) {-e, #e}
static const struct {
    int code;
    const char *name;
} sys_errs[] = {
    SYS(EPERM),  SYS(ENOENT), SYS(EIO),     SYS(ENOMEM),       SYS(EACCES),
    SYS(EEXIST), SYS(ENOTDIR), SYS(EISDIR), SYS(EINVAL),       SYS(ENFILE),
    SYS(EMFILE), SYS(EFBIG),  SYS(ENOSPC),  SYS(EROFS),        SYS(EAGAIN),
    SYS(ENAMETOOLONG), SYS(EDQUOT), SYS(ESTALE), SYS(ETIMEDOUT), SYS(ECONNREFUSED),
    SYS(ECONNRESET), SYS(EPIPE), SYS(EBADF), SYS(EFAULT),      SYS(EINTR),
    SYS(ENOTSUP), SYS(EXDEV), SYS(ENOSYS), SYS(EHOSTUNREACH),  SYS(EMSGSIZE),
    SYS(ELOOP),  SYS(EOVERFLOW),
};
#undef SYS
#define NSYS (sizeof(sys_errs) / sizeof(sys_errs[0]))

START_TEST(test_err_table)
{
    size_t i, j;

    ck_assert_uint_eq(NERR, sizeof(doc_codes) / sizeof(doc_codes[0]));
    for (i = 0; i < NERR; i++) {
        ck_assert_str_eq(err_table[i].name, doc_codes[i].name);
        ck_assert_int_eq(err_table[i].wire, doc_codes[i].wire);
        ck_assert_int_eq(err_table[i].code, -err_table[i].wire);
        ck_assert_int_ge(err_table[i].wire, 1000); /* never an errno */
        ck_assert_str_eq(kvcd_errname(err_table[i].code), err_table[i].name);
        ck_assert_str_eq(kvcd_strerror(err_table[i].code), err_table[i].msg);
        ck_assert_int_eq(kvcd_errcode(err_table[i].name), err_table[i].code);
        ck_assert_uint_lt(strlen(err_table[i].name), 32); /* fits kvcd_reply_hdr_t.ename */
        for (j = 0; j < i; j++) {
            ck_assert_int_ne(err_table[i].code, err_table[j].code);
            ck_assert_str_ne(err_table[i].name, err_table[j].name);
            ck_assert_str_ne(err_table[i].msg, err_table[j].msg);
        }
    }
    ck_assert_str_eq(kvcd_errname(0), "OK");
    ck_assert_str_eq(kvcd_strerror(0), "ok");
    ck_assert_int_eq(kvcd_errcode("nonsense"), 0);
    ck_assert_int_eq(kvcd_errcode(""), 0);
    ck_assert_int_eq(kvcd_errcode("eio"), 0); /* names are case-sensitive */
    ck_assert_str_eq(kvcd_errname(KVCD_EDUPLICATE - 1), "ESYS");
    ck_assert_str_eq(kvcd_strerror(KVCD_EDUPLICATE - 1), "unknown error");
    ck_assert_str_eq(kvcd_strerror(-1000), "unknown error");
    ck_assert_str_eq(kvcd_strerror(7), "unknown error");
}
END_TEST

START_TEST(test_err_sys_names)
{
    size_t i, j;

    ck_assert_str_eq(kvcd_errname(-EIO), "EIO");
    ck_assert_int_eq(kvcd_errcode("EIO"), -EIO);
    ck_assert_str_eq(kvcd_strerror(-EIO), strerror(EIO));
    ck_assert_str_eq(kvcd_errname(-ENOTSUP), "ENOTSUP");
    /* An errno without a name of its own. */
    ck_assert_str_eq(kvcd_errname(-ECHILD), "ESYS");
    ck_assert_str_eq(kvcd_strerror(-ECHILD), strerror(ECHILD));

    for (i = 0; i < NSYS; i++) {
        int kvcd_twin = 0;

        ck_assert_int_lt(-sys_errs[i].code, 1000);
        ck_assert_str_eq(kvcd_errname(sys_errs[i].code), sys_errs[i].name);
        ck_assert_str_eq(kvcd_strerror(sys_errs[i].code), strerror(-sys_errs[i].code));
        for (j = 0; j < NERR; j++)
            if (strcmp(err_table[j].name, sys_errs[i].name) == 0)
                kvcd_twin = err_table[j].code;
        /* ETIMEDOUT is both errno 110 and kvcd's 1013: the name maps back to
         * kvcd's code. Any other shared name is a new ambiguity on the wire. */
        if (kvcd_twin) {
            ck_assert_str_eq(sys_errs[i].name, "ETIMEDOUT");
            ck_assert_int_eq(kvcd_errcode(sys_errs[i].name), kvcd_twin);
        } else {
            ck_assert_msg(kvcd_errcode(sys_errs[i].name) == sys_errs[i].code,
                          "%s does not round-trip", sys_errs[i].name);
        }
        for (j = 0; j < i; j++)
            ck_assert_str_ne(sys_errs[i].name, sys_errs[j].name);
    }
}
END_TEST

/* RESERVE carries lengths (>= 1, one per hash); the other zero-copy ops only
 * a key set; RESERVE and MAP replies carry results, offsets and lengths. */
START_TEST(test_zero_copy_ops_roundtrip)
{
    static const uint8_t h0[] = {1, 2, 3}, h1[] = {4, 5};
    const kvcd_bytes_t hs[2] = {{h0, 3}, {h1, 2}};
    const uint64_t lens[2] = {4096, 1}, zero[2] = {4096, 0};
    const int results[2] = {0, KVCD_EDUPLICATE};
    const uint64_t offs[2] = {8192, 0}, rlens[2] = {4096, 0};
    kvcd_shm_args_t shm;
    kvcd_reply_hdr_t rep;
    kvcd_key_t base;
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;
    uint32_t op;

    memset(&base, 0, sizeof(base));
    base.model = "m";
    base.model_len = 1;
    memset(&shm, 0, sizeof(shm));
    shm.lengths = lens;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req_shm(&w, 9, KVCD_OP_RESERVE, &base, hs, 2, &shm);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
    ck_assert_uint_eq(req.op, KVCD_OP_RESERVE);
    ck_assert_uint_eq(req.nkeys, 2);
    ck_assert_ptr_nonnull(req.lengths);
    ck_assert_uint_eq(req.lengths[0], 4096);
    ck_assert_uint_eq(req.lengths[1], 1);
    kvcd_proto_req_free(&req);
    free(b);
    kvcd_wbuf_destroy(&w);

    shm.lengths = zero;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req_shm(&w, 9, KVCD_OP_RESERVE, &base, hs, 2, &shm);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EBADFIELD);
    ck_assert_ptr_nonnull(strstr(msg, "lengths[1]"));
    free(b);
    kvcd_wbuf_destroy(&w);

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_req(&w, 9, KVCD_OP_RESERVE, &base, hs, 2);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EMISSING);
    ck_assert_ptr_nonnull(strstr(msg, "lengths"));
    free(b);
    kvcd_wbuf_destroy(&w);

    for (op = KVCD_OP_COMMIT; op <= KVCD_OP_LOOKUP_MAP; op++) {
        kvcd_wbuf_init(&w);
        kvcd_proto_encode_req_shm(&w, 9, op, &base, hs, 2, &shm);
        ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), 0);
        ck_assert_uint_eq(req.nkeys, 2);
        ck_assert_ptr_null(req.lengths);
        kvcd_proto_req_free(&req);
        free(b);
        kvcd_wbuf_destroy(&w);
    }

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_extents(&w, 9, KVCD_OP_MAP, results, offs, rlens, 2);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.op, KVCD_OP_MAP);
    ck_assert_uint_eq(rep.nresults, 2);
    ck_assert_int_eq(rep.results[1], KVCD_EDUPLICATE);
    ck_assert_uint_eq(rep.offsets[0], 8192);
    ck_assert_uint_eq(rep.lengths[0], 4096);
    ck_assert_uint_eq(rep.offsets[1], 0);
    kvcd_proto_reply_free(&rep);
    ck_assert_ptr_null(rep.offsets);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* LOOKUP_MAP's reply: the prefix's extents as one bin of little-endian
 * (offset, length) pairs, byte for byte; and more pairs than fit one
 * staging block of the encoder. */
START_TEST(test_lookup_map_extents)
{
    static const uint8_t want[] = {0x00, 0x20, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0,
                                   0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
                                   0x11, 0, 0, 0, 0, 0, 0, 0};
    uint64_t offs[600], lens[600];
    kvcd_reply_hdr_t rep;
    kvcd_wbuf_t w;
    const uint8_t *p;
    size_t i;

    offs[0] = 8192;
    lens[0] = 4096;
    offs[1] = 0x0807060504030201ull;
    lens[1] = 17;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_lookup_map(&w, 5, 2, offs, lens);
    p = memmem(w.sb.data, w.sb.size, "extents", 7);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(p[7], 0xc4); /* bin 8 */
    ck_assert_uint_eq(p[8], sizeof(want));
    ck_assert_mem_eq(p + 9, want, sizeof(want));
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.op, KVCD_OP_LOOKUP_MAP);
    ck_assert_uint_eq(rep.prefix, 2);
    ck_assert_uint_eq(rep.nextents, 2);
    ck_assert_uint_eq(rep.nresults, 0);
    ck_assert_uint_eq(rep.offsets[1], offs[1]);
    ck_assert_uint_eq(rep.lengths[1], 17);
    kvcd_proto_reply_free(&rep);
    ck_assert_uint_eq(rep.nextents, 0);
    kvcd_wbuf_destroy(&w);

    for (i = 0; i < 600; i++) {
        offs[i] = (uint64_t)i << 12;
        lens[i] = i + 1;
    }
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_lookup_map(&w, 5, 600, offs, lens);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.nextents, 600);
    for (i = 0; i < 600; i++) {
        ck_assert_uint_eq(rep.offsets[i], (uint64_t)i << 12);
        ck_assert_uint_eq(rep.lengths[i], i + 1);
    }
    kvcd_proto_reply_free(&rep);
    kvcd_wbuf_destroy(&w);

    /* An empty prefix has an empty bin. */
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_lookup_map(&w, 5, 0, offs, lens);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), 0);
    ck_assert_uint_eq(rep.prefix, 0);
    ck_assert_uint_eq(rep.nextents, 0);
    kvcd_proto_reply_free(&rep);
    kvcd_wbuf_destroy(&w);

    /* A bin that is not whole pairs is malformed. */
    kvcd_wbuf_init(&w);
    kvcd_proto_reply_begin(&w, 5, KVCD_OP_LOOKUP_MAP, 0, NULL, 1);
    kvcd_pack_cstr(&w.pk, "extents");
    msgpack_pack_bin(&w.pk, 15);
    msgpack_pack_bin_body(&w.pk, want, 15);
    ck_assert_int_eq(decode_reply_wbuf(&w, &rep), KVCD_EMALFORMED);
    kvcd_wbuf_destroy(&w);
}
END_TEST

START_TEST(test_op_names)
{
    static const char *const names[] = {NULL, "PING", "STORE", "LOOKUP", "LOAD", "REMOVE",
                                        "CLEAR", "STATUS", "REGISTER_SEGMENT",
                                        "UNREGISTER_SEGMENT", "STORE_SHM", "LOAD_SHM",
                                        "RESERVE", "COMMIT", "ABORT", "MAP", "RELEASE",
                                        "LOOKUP_MAP"};
    uint32_t op;

    for (op = 1; op <= 17; op++) {
        ck_assert_str_eq(kvcd_op_name(op), names[op]);
        ck_assert_int_eq(kvcd_op_has_keys(op), (op >= 2 && op <= 5) || op >= 10);
        ck_assert_int_eq(kvcd_op_is_zero_copy(op), op >= 12);
    }
    ck_assert_ptr_null(kvcd_op_name(0));
    ck_assert_ptr_null(kvcd_op_name(18));
    ck_assert_ptr_null(kvcd_op_name(99));
    ck_assert_ptr_null(kvcd_op_name(UINT32_MAX));
    ck_assert_int_eq(kvcd_op_has_keys(0), 0);
    ck_assert_int_eq(kvcd_op_has_keys(99), 0);
}
END_TEST

/* ---- keys ---- */

static const uint8_t key_h[8] = {1, 2, 3, 4, 5, 6, 7, 8};
static const uint8_t key_h2[8] = {1, 2, 3, 4, 5, 6, 7, 9};

static kvcd_key_t mkkey(const char *model, const char *salt, const uint8_t *h, uint32_t hl,
                        uint32_t rank, uint32_t group)
{
    kvcd_key_t k = {.model = model, .model_len = (uint32_t)strlen(model),
                    .salt = salt && *salt ? salt : NULL,
                    .salt_len = salt ? (uint32_t)strlen(salt) : 0,
                    .hash = h, .hash_len = hl, .kv_rank = rank, .group = group};

    return k;
}

START_TEST(test_key_hash_and_equal)
{
    kvcd_key_t keys[] = {
        mkkey("ab", "c", key_h, 8, 0x02010201, 7),  /* the base */
        mkkey("a", "bc", key_h, 8, 0x02010201, 7),  /* same bytes, other boundary */
        mkkey("abc", NULL, key_h, 8, 0x02010201, 7),
        mkkey("ab", NULL, key_h, 8, 0x02010201, 7),
        mkkey("ac", "c", key_h, 8, 0x02010201, 7),  /* model */
        mkkey("ab", "d", key_h, 8, 0x02010201, 7),  /* salt */
        mkkey("ab", "c", key_h2, 8, 0x02010201, 7), /* hash byte */
        mkkey("ab", "c", key_h, 7, 0x02010201, 7),  /* hash length */
        mkkey("ab", "c", key_h, 8, 0x02000201, 7),  /* rank */
        mkkey("ab", "c", key_h, 8, 0x01020102, 7),
        mkkey("ab", "c", key_h, 8, 0x02010201, 8),  /* group */
        mkkey("ab", "c", key_h, 8, 0x02010201, 0),
        mkkey("ab", "c", key_h, 8, 0x07, 0x02010201), /* rank and group swapped */
        mkkey("ab", "c\x01", key_h + 1, 7, 0x02010201, 7), /* salt grows, hash shrinks */
    };
    enum { N = sizeof(keys) / sizeof(keys[0]) };
    size_t i, j;

    for (i = 0; i < N; i++) {
        ck_assert(kvcd_key_equal(&keys[i], &keys[i]));
        for (j = 0; j < N; j++) {
            if (i == j)
                continue;
            ck_assert_msg(!kvcd_key_equal(&keys[i], &keys[j]), "keys %zu and %zu equal", i, j);
            ck_assert_msg(kvcd_key_hash(&keys[i]) != kvcd_key_hash(&keys[j]),
                          "keys %zu and %zu hash alike", i, j);
        }
    }
}
END_TEST

START_TEST(test_key_equal_by_bytes)
{
    char m1[] = "meta/llama", m2[] = "meta/llama", s1[] = "salt", s2[] = "salt";
    uint8_t h1[8], h2[8];
    kvcd_key_t a, b;

    memcpy(h1, key_h, 8);
    memcpy(h2, key_h, 8);
    a = mkkey(m1, s1, h1, 8, 5, 6);
    b = mkkey(m2, s2, h2, 8, 5, 6);
    ck_assert(kvcd_key_equal(&a, &b));
    ck_assert_uint_eq(kvcd_key_hash(&a), kvcd_key_hash(&b));

    /* An empty salt is the same whether the pointer is NULL or "". */
    a = mkkey(m1, NULL, h1, 8, 5, 6);
    b = mkkey(m2, "", h2, 8, 5, 6);
    b.salt = "";
    ck_assert(kvcd_key_equal(&a, &b));
    ck_assert(kvcd_key_equal(&b, &a));
    ck_assert_uint_eq(kvcd_key_hash(&a), kvcd_key_hash(&b));

    /* The last byte of each field counts. */
    a = mkkey(m1, s1, h1, 8, 5, 6);
    b = mkkey(m2, s2, h2, 8, 5, 6);
    m2[9] = 'A';
    ck_assert(!kvcd_key_equal(&a, &b));
    m2[9] = 'a';
    s2[3] = 'T';
    ck_assert(!kvcd_key_equal(&a, &b));
    s2[3] = 't';
    h2[7] ^= 0x80;
    ck_assert(!kvcd_key_equal(&a, &b));
    ck_assert_uint_ne(kvcd_key_hash(&a), kvcd_key_hash(&b));
    h2[7] ^= 0x80;
    ck_assert(kvcd_key_equal(&a, &b));
}
END_TEST

START_TEST(test_key_copy_is_deep)
{
    char *model = strdup("meta/llama"), *salt = strdup("tenant");
    uint8_t *hash = malloc(32);
    kvcd_key_t src, dst, ref;
    uint64_t hv;
    size_t n;
    char *buf;

    ck_assert_ptr_nonnull(model);
    ck_assert_ptr_nonnull(salt);
    ck_assert_ptr_nonnull(hash);
    fill_hash(hash, 32, 3);
    src = mkkey(model, salt, hash, 32, 0x02010201, 9);
    ref = mkkey("meta/llama", "tenant", NULL, 32, 0x02010201, 9);
    {
        static uint8_t refh[32];

        fill_hash(refh, 32, 3);
        ref.hash = refh;
    }
    n = kvcd_key_extra(&src);
    ck_assert_uint_eq(n, 10 + 6 + 32);
    buf = malloc(n); /* exact: ASan catches any write past it */
    ck_assert_ptr_nonnull(buf);
    kvcd_key_copy(&dst, &src, buf);
    hv = kvcd_key_hash(&src);

    /* Wipe and free the source: the copy must not notice. */
    memset(model, 0, 10);
    memset(salt, 0, 6);
    memset(hash, 0, 32);
    free(model);
    free(salt);
    free(hash);

    ck_assert(kvcd_key_equal(&dst, &ref));
    ck_assert_uint_eq(kvcd_key_hash(&dst), hv);
    ck_assert_uint_eq(dst.kv_rank, 0x02010201);
    ck_assert_uint_eq(dst.group, 9);
    assert_inside(dst.model, dst.model_len, buf, n);
    assert_inside(dst.salt, dst.salt_len, buf, n);
    assert_inside(dst.hash, dst.hash_len, buf, n);
    free(buf);

    /* Without a salt. */
    src = mkkey("m", NULL, key_h, 8, 1, 2);
    n = kvcd_key_extra(&src);
    ck_assert_uint_eq(n, 9);
    buf = malloc(n);
    ck_assert_ptr_nonnull(buf);
    kvcd_key_copy(&dst, &src, buf);
    ck_assert(kvcd_key_equal(&dst, &src));
    ck_assert_ptr_null(dst.salt);
    ck_assert_uint_eq(dst.salt_len, 0);
    ck_assert_ptr_ne(dst.model, src.model);
    ck_assert_ptr_ne(dst.hash, src.hash);
    free(buf);
}
END_TEST

START_TEST(test_key_validate)
{
    static const char big[KVCD_MODEL_MAX + 2] = {[0 ... KVCD_MODEL_MAX] = 'm'};
    kvcd_key_t k = mkkey("m", "s", key_h, 8, 0, 0);
    const char *field = NULL;

    ck_assert_int_eq(kvcd_key_validate(&k, &field), 0);
    k.model_len = KVCD_MODEL_MAX + 1;
    k.model = big;
    ck_assert_int_eq(kvcd_key_validate(&k, &field), KVCD_EBADFIELD);
    ck_assert_str_eq(field, "model");
    k.model_len = KVCD_MODEL_MAX;
    ck_assert_int_eq(kvcd_key_validate(&k, &field), 0);
    k = mkkey("m", "s", key_h, 0, 0, 0);
    ck_assert_int_eq(kvcd_key_validate(&k, &field), KVCD_EBADFIELD);
    ck_assert_str_eq(field, "hashes");
    k = mkkey("m", "s/t", key_h, 8, 0, 0);
    ck_assert_int_eq(kvcd_key_validate(&k, &field), KVCD_EBADFIELD);
    ck_assert_str_eq(field, "salt");
    k = mkkey("", NULL, key_h, 8, 0, 0);
    ck_assert_int_eq(kvcd_key_validate(&k, &field), KVCD_EBADFIELD);
    ck_assert_str_eq(field, "model");
}
END_TEST

/* ---- robustness ---- */

static int known_error(int rc)
{
    return rc == KVCD_EMALFORMED || rc == KVCD_EVERSION || rc == KVCD_EUNKNOWNOP ||
           rc == KVCD_EMISSING || rc == KVCD_EBADFIELD || rc == KVCD_ETOOLARGE ||
           rc == KVCD_ETOOMANYKEYS || rc == -ENOMEM;
}

/* Valid headers to mutate. */
static size_t fuzz_corpus(kvcd_wbuf_t *c, size_t max)
{
    static const uint8_t h[3][8] = {{1}, {2, 2}, {3, 3, 3}};
    kvcd_bytes_t hashes[3] = {{h[0], 8}, {h[1], 4}, {h[2], 1}};
    kvcd_key_t base = {.model = "org/m", .model_len = 5, .salt = "s", .salt_len = 1,
                       .kv_rank = 0x02010201, .group = 300};
    static const field_t extra = FU("world_size", 4);
    static const uint64_t offs[3] = {0, 8, 1u << 20}, lens[3] = {8, 4, 1};
    kvcd_shm_args_t shm = {.pid = 99, .fd = 3, .size = 1u << 20, .segment = 2,
                           .offsets = offs, .lengths = lens};
    size_t n = 0;

    ck_assert_uint_ge(max, 10);
    kvcd_wbuf_init(&c[n]);
    build(&c[n++], NULL, NULL);
    kvcd_wbuf_init(&c[n]);
    build(&c[n++], "salt", &extra);
    kvcd_wbuf_init(&c[n]);
    kvcd_proto_encode_req(&c[n++], 7, KVCD_OP_PING, NULL, NULL, 0);
    kvcd_wbuf_init(&c[n]);
    kvcd_proto_encode_req(&c[n++], 1ull << 33, KVCD_OP_LOOKUP, &base, hashes, 3);
    kvcd_wbuf_init(&c[n]);
    kvcd_proto_encode_req(&c[n++], 70000, KVCD_OP_STORE, &base, hashes, 1);
    kvcd_wbuf_init(&c[n]);
    kvcd_proto_encode_req(&c[n++], 1, KVCD_OP_STATUS, NULL, NULL, 0);
    kvcd_wbuf_init(&c[n]);
    kvcd_proto_encode_req_shm(&c[n++], 2, KVCD_OP_REGISTER_SEGMENT, NULL, NULL, 0, &shm);
    kvcd_wbuf_init(&c[n]);
    kvcd_proto_encode_req_shm(&c[n++], 3, KVCD_OP_UNREGISTER_SEGMENT, NULL, NULL, 0, &shm);
    kvcd_wbuf_init(&c[n]);
    kvcd_proto_encode_req_shm(&c[n++], 4, KVCD_OP_STORE_SHM, &base, hashes, 3, &shm);
    kvcd_wbuf_init(&c[n]);
    kvcd_proto_encode_req_shm(&c[n++], 5, KVCD_OP_LOAD_SHM, &base, hashes, 3, &shm);
    return n;
}

/* Mutate a copy of src (1..8 edits: byte, bit, interesting value, truncation,
 * extension). The result is malloc'd at its exact size. */
static uint8_t *mutate(const uint8_t *src, size_t len, size_t *outlen)
{
    static const uint8_t interesting[] = {0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0,
                                          0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6,
                                          0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd3,
                                          0xd4, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf,
                                          0xe0, 0xff};
    size_t n = len, edits = 1 + rnd_below(8), e;
    uint8_t *b = malloc(len + 16);

    ck_assert_ptr_nonnull(b);
    memcpy(b, src, len);
    for (e = 0; e < edits && n > 0; e++) {
        size_t at = rnd_below(n);

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
            n = at; /* may become 0 */
            break;
        case 5:
            if (n < len + 16)
                b[n++] = (uint8_t)rnd();
            break;
        }
    }
    *outlen = n;
    {
        uint8_t *exact = dup_exact(b, n);

        free(b);
        return exact;
    }
}

START_TEST(test_fuzz_decode_req)
{
    enum { ITER = 50000 };
    kvcd_wbuf_t corpus[12];
    size_t nc = fuzz_corpus(corpus, 12), it, ok = 0, bad = 0;

    rng_state = 0x6b766364; /* fixed: failures reproduce */
    for (it = 0; it < ITER; it++) {
        const kvcd_wbuf_t *c = &corpus[rnd_below(nc)];
        size_t len, max_keys = rnd_below(5), i;
        uint8_t *b = mutate((const uint8_t *)c->sb.data, c->sb.size, &len);
        kvcd_req_t req;
        char msg[128];
        int rc;

        memset(msg, 0x5a, sizeof(msg));
        memset(&req, 0xa5, sizeof(req));
        alloc_watch();
        rc = kvcd_proto_decode_req(b, len, max_keys, &req, msg, sizeof(msg));
        alloc_bounded(1 << 20, "iteration", it);
        if (rc == 0) {
            ok++;
            ck_assert_uint_eq(req.version, KVCD_PROTO_VERSION);
            ck_assert_ptr_nonnull(kvcd_op_name(req.op));
            if (kvcd_op_has_keys(req.op)) {
                ck_assert_uint_ge(req.nkeys, 1);
                ck_assert_uint_le(req.nkeys, max_keys);
                assert_inside(req.base.model, req.base.model_len, b, len);
                if (req.base.salt_len)
                    assert_inside(req.base.salt, req.base.salt_len, b, len);
                for (i = 0; i < req.nkeys; i++) {
                    kvcd_key_t k;
                    const char *field;

                    kvcd_req_key(&req, i, &k);
                    assert_inside(k.hash, k.hash_len, b, len);
                    ck_assert_msg(kvcd_key_validate(&k, &field) == 0,
                                  "iteration %zu: key %zu accepted with a bad %s", it, i, field);
                    (void)kvcd_key_hash(&k);
                }
                if (req.op == KVCD_OP_STORE_SHM || req.op == KVCD_OP_LOAD_SHM) {
                    ck_assert_ptr_nonnull(req.offsets);
                    ck_assert_ptr_nonnull(req.lengths);
                    (void)req.offsets[req.nkeys - 1];
                    (void)req.lengths[req.nkeys - 1];
                    if (req.op == KVCD_OP_STORE_SHM)
                        for (i = 0; i < req.nkeys; i++)
                            ck_assert_uint_ge(req.lengths[i], 1);
                } else {
                    ck_assert_ptr_null(req.offsets);
                    ck_assert_ptr_null(req.lengths);
                }
            } else {
                ck_assert_uint_eq(req.nkeys, 0);
                ck_assert_ptr_null(req.hashes);
            }
            kvcd_proto_req_free(&req);
        } else {
            bad++;
            ck_assert_msg(known_error(rc), "iteration %zu: rc %d", it, rc);
            ck_assert_msg(memchr(msg, '\0', sizeof(msg)) != NULL,
                          "iteration %zu: message not terminated", it);
            ck_assert_msg(msg[0] != '\0', "iteration %zu: empty message", it);
            ck_assert_ptr_null(req.hashes);
            ck_assert_uint_eq(req.nkeys, 0);
            ck_assert_ptr_null(req.offsets);
            ck_assert_ptr_null(req.lengths);
        }
        free(b);
    }
    /* The mutations must reach both outcomes, or the test proves nothing. */
    ck_assert_uint_gt(ok, ITER / 100);
    ck_assert_uint_gt(bad, ITER / 2);
    for (it = 0; it < nc; it++)
        kvcd_wbuf_destroy(&corpus[it]);
}
END_TEST

START_TEST(test_fuzz_decode_reply)
{
    enum { ITER = 20000 };
    static const int res[] = {0, KVCD_ENOTFOUND, 0};
    static const uint8_t present[] = {1, 0, 1};
    static const uint64_t lens[] = {4096, 0, 1};
    kvcd_wbuf_t corpus[7];
    size_t it, ok = 0;
    json_t *st = json_pack("{s:s, s:{s:I, s:f}, s:[b, n]}", "server", "kvcd", "l1", "used",
                           (json_int_t)5, "hw", 0.5, "a", 1);

    ck_assert_ptr_nonnull(st);
    for (it = 0; it < 7; it++)
        kvcd_wbuf_init(&corpus[it]);
    kvcd_proto_encode_ping(&corpus[0], 1, &ping_fields);
    kvcd_proto_encode_results(&corpus[1], 2, KVCD_OP_STORE, res, 3);
    kvcd_proto_encode_lookup(&corpus[2], 3, 1, present, 3);
    kvcd_proto_encode_error(&corpus[3], 4, KVCD_OP_LOAD, KVCD_EBADFIELD, "model: bad");
    kvcd_proto_reply_begin(&corpus[4], 5, KVCD_OP_STATUS, 0, NULL, 1);
    kvcd_pack_cstr(&corpus[4].pk, "status");
    kvcd_pack_json(&corpus[4].pk, st);
    json_decref(st);
    kvcd_proto_encode_segment(&corpus[5], 6, 1ull << 35);
    kvcd_proto_encode_load_shm(&corpus[6], 7, res, lens, 3);

    rng_state = 0x7265706c79;
    for (it = 0; it < ITER; it++) {
        const kvcd_wbuf_t *c = &corpus[rnd_below(7)];
        size_t len;
        uint8_t *b = mutate((const uint8_t *)c->sb.data, c->sb.size, &len);
        kvcd_reply_hdr_t rep;
        int rc;

        alloc_watch();
        rc = kvcd_proto_decode_reply(b, len, &rep);
        alloc_bounded(1 << 20, "iteration", it);

        if (rc == 0) {
            ok++;
            ck_assert_ptr_nonnull(memchr(rep.ename, '\0', sizeof(rep.ename)));
            ck_assert_ptr_nonnull(memchr(rep.msg, '\0', sizeof(rep.msg)));
            ck_assert_ptr_nonnull(memchr(rep.server_buf, '\0', sizeof(rep.server_buf)));
            if (rep.status) {
                char *s = json_dumps(rep.status, JSON_ENCODE_ANY);

                free(s);
            }
            kvcd_proto_reply_free(&rep);
        } else {
            ck_assert_msg(rc == KVCD_EMALFORMED || rc == -ENOMEM, "iteration %zu: rc %d", it,
                          rc);
            ck_assert_ptr_null(rep.results);
            ck_assert_ptr_null(rep.present);
            ck_assert_ptr_null(rep.lengths);
            ck_assert_ptr_null(rep.status);
        }
        free(b);
    }
    ck_assert_uint_gt(ok, ITER / 100);
    for (it = 0; it < 7; it++)
        kvcd_wbuf_destroy(&corpus[it]);
}
END_TEST

/* ---- item 18: v and op above 2^32 are a version and an operation ---- */

START_TEST(test_item18_big_version_and_op)
{
    static const field_t bigv = FU("v", (1ull << 32) + 1), bigop = FU("op", (1ull << 32) + 5);
    static const field_t maxv = FU("v", UINT64_MAX);
    kvcd_wbuf_t w;
    kvcd_req_t req;
    char msg[256];
    uint8_t *b;

    kvcd_wbuf_init(&w);
    build(&w, NULL, &bigv);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EVERSION);
    ck_assert_str_eq(msg, "protocol version 4294967297 not supported (server speaks 1)");
    ck_assert_uint_eq(req.id, BASE_ID);
    free(b);
    kvcd_wbuf_destroy(&w);

    kvcd_wbuf_init(&w);
    build(&w, NULL, &maxv);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EVERSION);
    free(b);
    kvcd_wbuf_destroy(&w);

    kvcd_wbuf_init(&w);
    build(&w, NULL, &bigop);
    ck_assert_int_eq(decode_wbuf(&w, MAXKEYS, &req, msg, sizeof(msg), &b), KVCD_EUNKNOWNOP);
    ck_assert_str_eq(msg, "unknown operation 4294967301");
    ck_assert_uint_eq(req.id, BASE_ID);
    free(b);
    kvcd_wbuf_destroy(&w);
}
END_TEST

/* ---- item 18: documentation, help and the launch script ---- */

/* The whole file (malloc'd, NUL-terminated). */
static char *slurp(const char *rel)
{
    char path[1024];
    FILE *f;
    char *buf;
    long n;

    snprintf(path, sizeof(path), "%s/%s", kvcd_test_srcdir(), rel);
    f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(fread(buf, 1, (size_t)n, f), n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The paragraph of text that starts at the first `start` (up to a blank line). */
static char *paragraph(const char *text, const char *start)
{
    const char *p = strstr(text, start), *end;
    char *out;

    ck_assert_msg(p != NULL, "\"%s\" not found", start);
    end = strstr(p, "\n\n");
    if (!end)
        end = p + strlen(p);
    out = strndup(p, (size_t)(end - p));
    ck_assert_ptr_nonnull(out);
    return out;
}

START_TEST(test_item18_docs_name_every_builtin_adapter)
{
    char dir[1024], name[256], want[300];
    char *readme = slurp("README.md"), *adapters = slurp("docs/ADAPTERS.md");
    char *rp = paragraph(readme, "Built in:"), *ap = paragraph(adapters, "An L2 adapter is");
    struct dirent *de;
    DIR *d;
    int n = 0;

    snprintf(dir, sizeof(dir), "%s/adapters", kvcd_test_srcdir());
    d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);

        if (len < 3 || strcmp(de->d_name + len - 2, ".c") != 0)
            continue;
        snprintf(name, sizeof(name), "%.*s", (int)(len - 2), de->d_name);
        if (strcmp(name, "registry") == 0)
            continue; /* the registry, not an adapter (scripts/gen-adapter-table.sh) */
        snprintf(want, sizeof(want), "`%s`", name);
        ck_assert_msg(strstr(rp, want), "README's built-in adapters omit %s", want);
        ck_assert_msg(strstr(ap, want), "docs/ADAPTERS.md's first paragraph omits %s", want);
        n++;
    }
    closedir(d);
    ck_assert_int_ge(n, 4); /* fault, fs, mock, redis at least */
    free(rp);
    free(ap);
    free(readme);
    free(adapters);
}
END_TEST

START_TEST(test_item18_help_is_quiet_and_exact)
{
    const char *help[] = {kvcd_test_bin(), "--help", NULL};
    const char *hadapter[] = {kvcd_test_bin(), "--help-adapter", "mock", NULL};
    static char out[32768];
    const char *line;

    ck_assert_int_eq(kvcd_run(help, out, sizeof(out), 10000), 0);
    ck_assert_msg(strncmp(out, "Usage: kvcd", 11) == 0, "--help starts with: %.200s", out);
    ck_assert_msg(!strstr(out, " INFO "), "--help printed log lines: %.300s", out);
    line = strstr(out, "--max-segment-gb G");
    ck_assert_ptr_nonnull(line);
    ck_assert_msg(strncmp(line, "--max-segment-gb G       GiB of segments registered", 51) == 0,
                  "%.80s", line);
    ck_assert_int_eq(kvcd_run(hadapter, out, sizeof(out), 10000), 0);
    ck_assert_msg(!strstr(out, " INFO "), "--help-adapter printed log lines: %.300s", out);
    ck_assert_ptr_nonnull(strstr(out, "mock"));
}
END_TEST

START_TEST(test_item18_launch_uses_config_endpoint)
{
    char dir[] = "/tmp/kvcd-launch-XXXXXX", cfg[256], outp[256], pidf[256], want[400];
    char script[1024], buf[8192];
    uint64_t deadline;
    int status, fd, found = 0;
    pid_t pid;
    FILE *f;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(cfg, sizeof(cfg), "%s/kvcd.json", dir);
    snprintf(outp, sizeof(outp), "%s/out", dir);
    snprintf(pidf, sizeof(pidf), "%s/kvcd.pid", dir);
    snprintf(want, sizeof(want), "KVCD_ENDPOINT=ipc://%s/from-config.sock", dir);
    snprintf(script, sizeof(script), "%s/scripts/kvcd-launch.sh", kvcd_test_srcdir());
    f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "{\"endpoint\": \"ipc://%s/from-config.sock\", \"l1_size_gb\": 0.01}\n", dir);
    fclose(f);
    setenv("KVCD_BIN", kvcd_test_bin(), 1);
    setenv("KVCDCTL_BIN", kvcd_test_ctl(), 1);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        fd = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        execl("/bin/sh", "sh", script, "--pid-file", pidf, "--wait-timeout", "8", "--",
              "--config", cfg, (char *)NULL);
        _exit(127);
    }
    deadline = (uint64_t)time(NULL) + 15;
    while (!found && (uint64_t)time(NULL) < deadline) {
        size_t n;

        usleep(100000);
        f = fopen(outp, "r");
        if (!f)
            continue;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        found = strstr(buf, want) != NULL;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            pid = 0;
            break;
        }
    }
    if (pid > 0) {
        kill(pid, SIGTERM);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    }
    ck_assert_msg(found, "launch script output:\n%s", buf);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "launch script status %d",
                  status);
    unlink(cfg);
    unlink(outp);
    unlink(pidf);
    rmdir(dir);
}
END_TEST

/* ---- item 12: the C client never leaves the caller's buffer to ZeroMQ ---- */

START_TEST(test_item12_timeout_keeps_buffer)
{
    /* kvcd is stopped (SIGSTOP), so a 64 MiB STORE cannot be sent in full and
     * the call times out. Once it has returned the buffer is the caller's:
     * overwriting and freeing it must go unnoticed by ZeroMQ (ASan would
     * report a use after free; a plain build would read unmapped memory), and
     * the key must never show up with the overwritten bytes. */
    const size_t len = 64u << 20;
    kvcd_proc_t p;
    kvcd_client_t *c;
    kvcd_key_t base;
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 12);
    const void *bufs[1];
    size_t lens[1] = {len}, prefix = 9;
    uint8_t *buf = malloc(len), *back;
    int res = 1;

    ck_assert_ptr_nonnull(buf);
    kvcd_fill_random(buf, len, 12);
    ck_assert_int_eq(kvcd_proc_start(&p, NULL), 0);
    ck_assert_int_eq(kvcd_client_connect(p.endpoint, 300, &c), 0);
    ck_assert_int_eq(kvcd_client_ping(c, NULL, NULL, 0), 0);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    ck_assert_int_eq(kill(p.pid, SIGSTOP), 0);
    bufs[0] = buf;
    ck_assert_int_eq(kvcd_client_store(c, &base, &h, 1, bufs, lens, &res), KVCD_ETIMEDOUT);
    memset(buf, 0xEE, len);
    free(buf);
    ck_assert_int_eq(kill(p.pid, SIGCONT), 0);
    usleep(200000);

    /* The client still works, and nothing half-sent became visible. */
    {
        kvcd_client_t *c2;

        ck_assert_int_eq(kvcd_client_connect(p.endpoint, 10000, &c2), 0);
        ck_assert_int_eq(kvcd_client_ping(c2, NULL, NULL, 0), 0);
        ck_assert_int_eq(kvcd_client_lookup(c2, &base, &h, 1, &prefix, NULL), 0);
        if (prefix == 1) {
            void *out[1];
            size_t cap[1] = {len}, got[1];
            int r[1];

            back = malloc(len);
            buf = malloc(len);
            ck_assert(back && buf);
            kvcd_fill_random(buf, len, 12);
            out[0] = back;
            ck_assert_int_eq(kvcd_client_load(c2, &base, &h, 1, out, cap, got, r), 0);
            ck_assert_int_eq(r[0], 0);
            ck_assert_uint_eq(got[0], len);
            ck_assert(memcmp(back, buf, len) == 0);
            free(back);
            free(buf);
        }
        kvcd_client_close(c2);
    }
    {
        uint64_t id;
        kvcd_reply_t *r;

        ck_assert_int_eq(kvcd_client_send(c, KVCD_OP_PING, NULL, NULL, 0, NULL, NULL, &id), 0);
        ck_assert_int_eq(kvcd_client_wait(c, id, 10000, &r), 0);
        ck_assert_int_eq(kvcd_reply_hdr(r)->err, 0);
        kvcd_reply_free(r);
    }
    kvcd_client_close(c);
    ck_assert_int_eq(kvcd_proc_stop(&p, SIGTERM, 20000), 0);
    ck_assert_msg(!kvcd_proc_log_has_sanitizer_report(&p), "see %s", p.log);
    kvcd_proc_cleanup(&p);
}
END_TEST

START_TEST(test_item12_pipelined_store_released_on_wait)
{
    /* The pipelined form: a STORE's buffers are the caller's again once
     * kvcd_client_wait for its id returns, here after a timeout while kvcd
     * is stopped; the request's reply is then gone, other waits say so. */
    const size_t len = 32u << 20;
    kvcd_proc_t p;
    kvcd_client_t *c;
    kvcd_key_t base;
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 13);
    const void *bufs[1];
    size_t lens[1] = {len};
    uint8_t *buf = malloc(len);
    uint64_t sid, pid_;
    kvcd_reply_t *r;

    ck_assert_ptr_nonnull(buf);
    memset(buf, 1, len);
    ck_assert_int_eq(kvcd_proc_start(&p, NULL), 0);
    ck_assert_int_eq(kvcd_client_connect(p.endpoint, 10000, &c), 0);
    ck_assert_int_eq(kvcd_client_ping(c, NULL, NULL, 0), 0);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    ck_assert_int_eq(kill(p.pid, SIGSTOP), 0);
    bufs[0] = buf;
    ck_assert_int_eq(kvcd_client_send(c, KVCD_OP_STORE, &base, &h, 1, bufs, lens, &sid), 0);
    ck_assert_int_eq(kvcd_client_send(c, KVCD_OP_PING, NULL, NULL, 0, NULL, NULL, &pid_), 0);
    ck_assert_int_eq(kvcd_client_wait(c, sid, 300, &r), KVCD_ETIMEDOUT);
    free(buf);
    /* The PING was queued behind it on the connection that was reset. */
    ck_assert_int_eq(kvcd_client_wait(c, pid_, 300, &r), KVCD_ECONNECT);
    ck_assert_int_eq(kill(p.pid, SIGCONT), 0);
    ck_assert_int_eq(kvcd_client_ping(c, NULL, NULL, 0), 0);
    kvcd_client_close(c);
    ck_assert_int_eq(kvcd_proc_stop(&p, SIGTERM, 20000), 0);
    ck_assert_msg(!kvcd_proc_log_has_sanitizer_report(&p), "see %s", p.log);
    kvcd_proc_cleanup(&p);
}
END_TEST

START_TEST(test_item12_abandoned_ids_unbounded)
{
    /* 300 requests given up on (more than any fixed table of 256): every late
     * reply is recognised and dropped, none is parked or mismatched. */
    kvcd_proc_t p;
    kvcd_client_t *c;
    kvcd_reply_t *r;
    size_t parked = 9, abandoned = 9;
    uint64_t id;
    int i;

    ck_assert_int_eq(kvcd_proc_start(&p, NULL), 0);
    ck_assert_int_eq(kvcd_client_connect(p.endpoint, 10000, &c), 0);
    ck_assert_int_eq(kvcd_client_ping(c, NULL, NULL, 0), 0);
    ck_assert_int_eq(kill(p.pid, SIGSTOP), 0);
    for (i = 0; i < 300; i++) {
        ck_assert_int_eq(kvcd_client_send(c, KVCD_OP_PING, NULL, NULL, 0, NULL, NULL, &id), 0);
        ck_assert_int_eq(kvcd_client_wait(c, id, 1, &r), KVCD_ETIMEDOUT);
    }
    kvcd_client_pending(c, &parked, &abandoned);
    ck_assert_uint_eq(parked, 0);
    ck_assert_uint_eq(abandoned, 300);
    ck_assert_int_eq(kill(p.pid, SIGCONT), 0);
    /* Replies come in order: once this one is here, all 300 were read. */
    ck_assert_int_eq(kvcd_client_send(c, KVCD_OP_PING, NULL, NULL, 0, NULL, NULL, &id), 0);
    ck_assert_int_eq(kvcd_client_wait(c, id, 10000, &r), 0);
    ck_assert_uint_eq(kvcd_reply_hdr(r)->id, id);
    kvcd_reply_free(r);
    kvcd_client_pending(c, &parked, &abandoned);
    ck_assert_uint_eq(parked, 0);
    ck_assert_uint_eq(abandoned, 0);
    kvcd_client_close(c);
    ck_assert_int_eq(kvcd_proc_stop(&p, SIGTERM, 20000), 0);
    kvcd_proc_cleanup(&p);
}
END_TEST

/* ---- conf/ depends on protocol/ and libraries only ---- */

START_TEST(test_conf_includes_no_daemon_header)
{
    static const char *const files[] = {"conf/options.c", "conf/options.h"};
    size_t i;

    for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char *text = slurp(files[i]);

        ck_assert_msg(!strstr(text, "#include \"daemon/"), "%s includes a daemon/ header",
                      files[i]);
        ck_assert_msg(!strstr(text, "#include \"adapters/"), "%s includes an adapters/ header",
                      files[i]);
        ck_assert_msg(!strstr(text, "KVCD_LOG("), "%s logs instead of returning text",
                      files[i]);
        free(text);
    }
}
END_TEST

static Suite *proto_suite(void)
{
    Suite *s = suite_create("proto");
    TCase *tc;

    tc = tcase_create("request");
    tcase_set_timeout(tc, 60); /* sanitizer builds on a busy machine */
    tcase_add_test(tc, test_base_header_decodes);
    tcase_add_test(tc, test_req_roundtrip_with_rank);
    tcase_add_test(tc, test_req_roundtrip_empty_salt);
    tcase_add_test(tc, test_req_rank_from_world);
    tcase_add_test(tc, test_req_explicit_rank_wins);
    tcase_add_test(tc, test_req_no_keys_ops);
    tcase_add_loop_test(tc, test_req_good_boundaries, 0,
                        (int)(sizeof(good_cases) / sizeof(good_cases[0])));
    tcase_add_test(tc, test_unknown_keys_ignored);
    tcase_add_test(tc, test_unknown_keys_every_format);
    suite_add_tcase(s, tc);

    tc = tcase_create("bytes");
    tcase_set_timeout(tc, 60); /* sanitizer builds on a busy machine */
    tcase_add_test(tc, test_bytes_ping_request);
    tcase_add_test(tc, test_bytes_keyset_request);
    tcase_add_test(tc, test_bytes_decode_doc_example);
    tcase_add_test(tc, test_bytes_decode_wide_encodings);
    tcase_add_test(tc, test_bytes_ping_reply);
    tcase_add_test(tc, test_bytes_error_reply);
    tcase_add_test(tc, test_bytes_results_and_lookup);
    suite_add_tcase(s, tc);

    tc = tcase_create("shm");
    tcase_set_timeout(tc, 60); /* sanitizer builds on a busy machine */
    tcase_add_test(tc, test_shm_register_roundtrip);
    tcase_add_test(tc, test_shm_store_load_roundtrip);
    tcase_add_test(tc, test_shm_load_needs_capacities);
    tcase_add_test(tc, test_shm_replies);
    suite_add_tcase(s, tc);

    tc = tcase_create("malformed");
    tcase_set_timeout(tc, 60); /* sanitizer builds on a busy machine */
    tcase_add_test(tc, test_bad_empty);
    tcase_add_test(tc, test_bad_every_prefix);
    tcase_add_test(tc, test_bad_not_a_map);
    tcase_add_test(tc, test_bad_not_msgpack);
    tcase_add_test(tc, test_bad_huge_counts);
    tcase_add_test(tc, test_bad_claim_after_every_format);
    tcase_add_test(tc, test_bad_trailing_bytes);
    tcase_add_test(tc, test_bad_header_too_large);
    tcase_add_loop_test(tc, test_bad_field, 0,
                        (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
    tcase_add_test(tc, test_bad_messages);
    tcase_add_test(tc, test_too_many_keys);
    tcase_add_test(tc, test_bad_field_on_ping);
    tcase_add_test(tc, test_item18_big_version_and_op);
    suite_add_tcase(s, tc);

    tc = tcase_create("client");
    tcase_set_timeout(tc, 120); /* end to end, sanitizer builds on a busy machine */
    tcase_add_test(tc, test_item12_timeout_keeps_buffer);
    tcase_add_test(tc, test_item12_pipelined_store_released_on_wait);
    tcase_add_test(tc, test_item12_abandoned_ids_unbounded);
    tcase_add_test(tc, test_item18_docs_name_every_builtin_adapter);
    tcase_add_test(tc, test_item18_help_is_quiet_and_exact);
    tcase_add_test(tc, test_item18_launch_uses_config_endpoint);
    tcase_add_test(tc, test_conf_includes_no_daemon_header);
    suite_add_tcase(s, tc);

    tc = tcase_create("reply");
    tcase_set_timeout(tc, 60); /* sanitizer builds on a busy machine */
    tcase_add_test(tc, test_reply_error_roundtrip);
    tcase_add_test(tc, test_reply_results_roundtrip);
    tcase_add_test(tc, test_reply_lookup_roundtrip);
    tcase_add_test(tc, test_reply_ping_long_server);
    tcase_add_test(tc, test_reply_clear_roundtrip);
    tcase_add_test(tc, test_reply_status_roundtrip);
    tcase_add_test(tc, test_msgpack_to_json_edges);
    tcase_add_test(tc, test_reply_malformed);
    tcase_add_test(tc, test_reply_unknown_fields_ignored);
    suite_add_tcase(s, tc);

    tc = tcase_create("tables");
    tcase_set_timeout(tc, 60); /* sanitizer builds on a busy machine */
    tcase_add_test(tc, test_err_table);
    tcase_add_test(tc, test_err_sys_names);
    tcase_add_test(tc, test_op_names);
    tcase_add_test(tc, test_zero_copy_ops_roundtrip);
    tcase_add_test(tc, test_lookup_map_extents);
    suite_add_tcase(s, tc);

    tc = tcase_create("key");
    tcase_set_timeout(tc, 60); /* sanitizer builds on a busy machine */
    tcase_add_test(tc, test_key_hash_and_equal);
    tcase_add_test(tc, test_key_equal_by_bytes);
    tcase_add_test(tc, test_key_copy_is_deep);
    tcase_add_test(tc, test_key_validate);
    suite_add_tcase(s, tc);

    tc = tcase_create("fuzz");
    tcase_set_timeout(tc, 120); /* slow under sanitizers */
    tcase_add_test(tc, test_fuzz_decode_req);
    tcase_add_test(tc, test_fuzz_decode_reply);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(proto_suite());
    int failed;

    signal(SIGPIPE, SIG_IGN);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
