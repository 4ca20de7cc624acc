/*
 * proto.h - the kvcd wire format (docs/PROTOCOL.md), encode and decode.
 *
 * Pure functions over byte buffers: no sockets, no libuv, no global state, so
 * every case can be tested byte for byte and fuzzed. Decoded requests borrow
 * strings and hash bytes from the frame they were decoded from: keep the frame
 * alive as long as the request, or copy. Any thread.
 */
#ifndef KVCD_PROTO_H
#define KVCD_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <msgpack.h>

#include "key.h"

#define KVCD_PROTO_VERSION 1
#define KVCD_HEADER_MAX (4u << 20) /* largest frame 0 accepted */

/* Operation numbers are never reused or renumbered. */
#define KVCD_OP_MAP(X)                                                         \
    X(PING, 1)                                                                 \
    X(STORE, 2)                                                                \
    X(LOOKUP, 3)                                                               \
    X(LOAD, 4)                                                                 \
    X(REMOVE, 5)                                                               \
    X(CLEAR, 6)                                                                \
    X(STATUS, 7)                                                               \
    X(REGISTER_SEGMENT, 8)                                                     \
    X(UNREGISTER_SEGMENT, 9)                                                   \
    X(STORE_SHM, 10)                                                           \
    X(LOAD_SHM, 11)                                                            \
    X(RESERVE, 12)                                                             \
    X(COMMIT, 13)                                                              \
    X(ABORT, 14)                                                               \
    X(MAP, 15)                                                                 \
    X(RELEASE, 16)                                                             \
    X(LOOKUP_MAP, 17)

typedef enum {
#define KVCD_OP_ENUM(name, num) KVCD_OP_##name = num,
    KVCD_OP_MAP(KVCD_OP_ENUM)
#undef KVCD_OP_ENUM
} kvcd_op_t;

/* "PING", "STORE", ... or NULL for an unknown number. */
const char *kvcd_op_name(uint32_t op);

/* 1 for operations that carry a key set. */
int kvcd_op_has_keys(uint32_t op);

typedef struct {
    const uint8_t *ptr;
    uint32_t len;
} kvcd_bytes_t;

/* A decoded request header. */
typedef struct {
    uint32_t version;
    uint32_t op;
    uint64_t id;
    kvcd_key_t base;        /* model, salt, kv_rank, group; hash unset */
    size_t nkeys;
    kvcd_bytes_t *hashes;   /* nkeys entries, malloc'd, bytes borrowed */
    /* Shared-memory data plane (ops 8-11), zero where the op has none. */
    uint64_t seg_pid;       /* REGISTER_SEGMENT: pid, fd, size (>= 1) */
    uint64_t seg_fd;
    uint64_t seg_size;
    uint64_t segment;       /* UNREGISTER_SEGMENT, STORE_SHM, LOAD_SHM */
    uint64_t *offsets;      /* STORE_SHM, LOAD_SHM: nkeys entries, malloc'd */
    uint64_t *lengths;      /* STORE_SHM, RESERVE: lengths (>= 1); LOAD_SHM: capacities */
} kvcd_req_t;

/* 1 for the shared-memory operations that name a registered segment. */
int kvcd_op_uses_segment(uint32_t op);

/* 1 for the zero-copy operations on the shared L1 (ops 12-17). */
int kvcd_op_is_zero_copy(uint32_t op);

/* Decode frame 0. Returns 0, or a negative KVCD_E* with a message naming the
 * problem (and the field) in msg. Even on error, req->id and req->op hold what
 * could be read (0 otherwise) so the reply can echo them. On success the caller
 * releases with kvcd_proto_req_free. max_keys bounds the key count. */
int kvcd_proto_decode_req(const void *buf, size_t len, size_t max_keys,
                          kvcd_req_t *req, char *msg, size_t msglen);
void kvcd_proto_req_free(kvcd_req_t *req);

/* Key i of a decoded request. */
static inline void kvcd_req_key(const kvcd_req_t *req, size_t i, kvcd_key_t *k)
{
    *k = req->base;
    k->hash = req->hashes[i].ptr;
    k->hash_len = req->hashes[i].len;
}

/* ---- writing ---- */

/* A growable output buffer with a msgpack packer on it. */
typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} kvcd_wbuf_t;

void kvcd_wbuf_init(kvcd_wbuf_t *w);
void kvcd_wbuf_destroy(kvcd_wbuf_t *w);
/* Hand the bytes over (caller frees with free()) and reset w. */
char *kvcd_wbuf_release(kvcd_wbuf_t *w, size_t *len);

void kvcd_pack_cstr(msgpack_packer *pk, const char *s);
/* Pack a JSON value as msgpack (objects become maps with str keys). */
void kvcd_pack_json(msgpack_packer *pk, const json_t *v);
/* Convert a msgpack object to JSON (bin becomes a hex string). New reference. */
json_t *kvcd_msgpack_to_json(const msgpack_object *o);

/* Reply header: v, id, op, err (+ ename, msg when err != 0) and `extra` more
 * key/value pairs that the caller packs next. err is 0 or a negative code. */
void kvcd_proto_reply_begin(kvcd_wbuf_t *w, uint64_t id, uint32_t op, int err,
                            const char *msg, size_t extra);

/* Complete replies. Per-key codes are negative internally, positive on the wire. */
void kvcd_proto_encode_error(kvcd_wbuf_t *w, uint64_t id, uint32_t op, int err,
                             const char *msg);
void kvcd_proto_encode_results(kvcd_wbuf_t *w, uint64_t id, uint32_t op,
                               const int *results, size_t n);
void kvcd_proto_encode_lookup(kvcd_wbuf_t *w, uint64_t id, size_t prefix,
                              const uint8_t *present, size_t n);

typedef struct {
    const char *server;
    uint32_t proto;
    uint64_t chunk_size;
    uint64_t max_frame;
    uint64_t max_keys;
    uint64_t max_request;
    uint64_t l1_capacity;
    const char *l1_shm;     /* the shared L1's shm_open name ("" if none) */
    uint64_t l1_size;       /* bytes to map of it */
} kvcd_ping_t;

void kvcd_proto_encode_ping(kvcd_wbuf_t *w, uint64_t id, const kvcd_ping_t *p);

/* REGISTER_SEGMENT reply: the new segment's id. */
void kvcd_proto_encode_segment(kvcd_wbuf_t *w, uint64_t id, uint64_t segment);
/* LOAD_SHM reply: per-key results and object sizes (0 on a miss). */
void kvcd_proto_encode_load_shm(kvcd_wbuf_t *w, uint64_t id, const int *results,
                                const uint64_t *lengths, size_t n);

/* RESERVE and MAP replies: per-key results, and offsets (into the shared L1)
 * and lengths, 0 where results[i] != 0. */
void kvcd_proto_encode_extents(kvcd_wbuf_t *w, uint64_t id, uint32_t op, const int *results,
                               const uint64_t *offsets, const uint64_t *lengths, size_t n);

/* LOOKUP_MAP reply: prefix, and per key of the prefix its offset (into the
 * shared L1) and length, packed into one bin `extents` of 16 bytes per key
 * (two little-endian uint64). */
void kvcd_proto_encode_lookup_map(kvcd_wbuf_t *w, uint64_t id, size_t prefix,
                                  const uint64_t *offsets, const uint64_t *lengths);

/* Request (client side). base may be NULL for operations without keys. */
void kvcd_proto_encode_req(kvcd_wbuf_t *w, uint64_t id, uint32_t op,
                           const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                           size_t n);

/* The fields of the shared-memory operations (client side). */
typedef struct {
    uint64_t pid, fd, size;     /* REGISTER_SEGMENT */
    uint64_t segment;           /* UNREGISTER_SEGMENT, STORE_SHM, LOAD_SHM */
    const uint64_t *offsets;    /* STORE_SHM, LOAD_SHM: n entries */
    const uint64_t *lengths;    /* STORE_SHM, RESERVE: lengths; LOAD_SHM: capacities */
} kvcd_shm_args_t;

/* A request with a key set (base may be NULL for ops 8 and 9) plus the shm
 * fields that op takes. */
void kvcd_proto_encode_req_shm(kvcd_wbuf_t *w, uint64_t id, uint32_t op,
                               const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                               size_t n, const kvcd_shm_args_t *shm);

/* A decoded reply header (client side); arrays malloc'd. */
typedef struct {
    uint32_t version;
    uint32_t op;
    uint64_t id;
    int err;                /* 0 or negative code */
    char ename[32];
    char msg[256];
    size_t nresults;
    int *results;           /* negative codes, 0 ok (STORE, LOAD, REMOVE) */
    uint8_t *present;       /* LOOKUP, nresults entries */
    uint64_t prefix;        /* LOOKUP */
    uint64_t removed;       /* CLEAR */
    kvcd_ping_t ping;       /* PING; server points into server_buf */
    char server_buf[64];
    char shm_buf[64];       /* PING: ping.l1_shm points here */
    json_t *status;         /* STATUS: new reference */
    uint64_t segment;       /* REGISTER_SEGMENT */
    uint64_t *lengths;      /* LOAD_SHM, RESERVE, MAP: nresults entries; LOOKUP_MAP: nextents */
    uint64_t *offsets;      /* RESERVE, MAP: nresults entries; LOOKUP_MAP: nextents */
    size_t nextents;        /* LOOKUP_MAP: entries of offsets/lengths (== prefix) */
} kvcd_reply_hdr_t;

int kvcd_proto_decode_reply(const void *buf, size_t len, kvcd_reply_hdr_t *rep);
void kvcd_proto_reply_free(kvcd_reply_hdr_t *rep);

#endif
