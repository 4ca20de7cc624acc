/*
 * lmcache.h - LMCache 0.5.6 multiprocess protocol: request decoding, reply
 * encoding and LMCache's chunk hashing, as pure functions (no sockets, no
 * libuv). docs/LMCACHE.md is the byte-level description this implements.
 *
 * A request is the frame sequence a DEALER sends, without the ROUTER
 * identity: [uid, op, payload_1 .. payload_N], each frame one msgpack value
 * as msgspec writes it. uid is an integer, op an integer for the operations
 * of LMCache's frozen legacy table or the snake_case method name as a string,
 * and there is one payload frame per parameter of the RequestClient method
 * (defaults always sent). Structs (IPCCacheServerKey, the engine-driven
 * registration payload) are maps keyed by field name: unknown fields are
 * ignored, missing ones take their defaults. A stream control message
 * [uid, b"", b"ack"|b"cancel"] decodes as control.
 *
 * A reply is [uid, op] followed by zero or one payload frame: none when the
 * handler's value is None. The uid and op frames are echoed byte for byte as
 * they came; the encoders here write the payload frame only.
 *
 * Ownership: a decoded request's strings and byte spans point into the
 * caller's frames (keep them alive or copy); the token id array is allocated
 * and released by kvcd_lmc_req_free. Any thread; no global state.
 */
#ifndef KVCD_LMCACHE_H
#define KVCD_LMCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol/proto.h"

/* The LMCache version whose wire format this is. */
#define KVCD_LMC_VERSION "0.5.6"
#define KVCD_LMC_MAX_PARAMS 8
#define KVCD_LMC_HASH_LEN 32

/* X(symbol, method name, legacy wire id or -1 when sent by name) */
#define KVCD_LMC_OP_MAP(X)                                                     \
    X(REGISTER_KV_CACHE, "register_kv_cache", 1)                               \
    X(UNREGISTER_KV_CACHE, "unregister_kv_cache", 2)                           \
    X(REGISTER_Q_CACHE, "register_q_cache", 3)                                 \
    X(UNREGISTER_Q_CACHE, "unregister_q_cache", 4)                             \
    X(STORE_Q, "store_q", 5)                                                   \
    X(STORE, "store", 6)                                                       \
    X(RETRIEVE, "retrieve", 7)                                                 \
    X(LOOKUP, "lookup", 8)                                                     \
    X(QUERY_PREFETCH_STATUS, "query_prefetch_status", 9)                       \
    X(WAIT_PREFETCH_STATUS, "wait_prefetch_status", 10)                        \
    X(FREE_LOOKUP_LOCKS, "free_lookup_locks", 12)                              \
    X(END_SESSION, "end_session", 13)                                          \
    X(REGISTER_ED_CONTEXT, "register_kv_cache_engine_driven_context", 14)      \
    X(UNREGISTER_ED_CONTEXT, "unregister_kv_cache_engine_driven_context", 15)  \
    X(PREPARE_STORE, "prepare_store", 16)                                      \
    X(COMMIT_STORE, "commit_store", 17)                                        \
    X(PREPARE_RETRIEVE, "prepare_retrieve", 18)                                \
    X(COMMIT_RETRIEVE, "commit_retrieve", 19)                                  \
    X(CLEAR, "clear", 20)                                                      \
    X(GET_CHUNK_SIZE, "get_chunk_size", 21)                                    \
    X(PING, "ping", 22)                                                        \
    X(REPORT_BLOCK_ALLOCATION, "report_block_allocation", 23)                  \
    X(NOOP, "noop", 24)                                                        \
    X(CB_REGISTER_ROPE, "cb_register_rope", 25)                                \
    X(CB_UNREGISTER_ROPE, "cb_unregister_rope", 26)                            \
    X(CB_RETRIEVE_PRE_COMPUTED, "cb_retrieve_pre_computed", 27)                \
    X(CB_UNIFIED_LOOKUP, "cb_unified_lookup", 28)                              \
    X(P2P_LOOKUP_AND_LOCK, "p2p_lookup_and_lock", 29)                          \
    X(P2P_QUERY_LOOKUP_RESULTS, "p2p_query_lookup_results", 30)                \
    X(P2P_UNLOCK_OBJECTS, "p2p_unlock_objects", 31)                            \
    X(GET_EXPERIMENTAL, "get_experimental", 32)                                \
    X(CB_PROTOCOL_HANDSHAKE, "cb_protocol_handshake", 33)                      \
    X(CB_REORDER_PLAN, "cb_reorder_plan", -1)                                  \
    X(SUBSCRIBE_KV_EVENTS, "subscribe_kv_events", -1)                          \
    X(SERVER_MODULE_CALL, "server_module_call", -1)

typedef enum {
    KVCD_LMC_OP_UNKNOWN = 0,
#define KVCD_LMC_OP_ENUM(sym, name, id) KVCD_LMC_OP_##sym,
    KVCD_LMC_OP_MAP(KVCD_LMC_OP_ENUM)
#undef KVCD_LMC_OP_ENUM
        KVCD_LMC_OP_COUNT
} kvcd_lmc_op_t;

/* What the client expects back (the method's MessagingFuture[T]). */
typedef enum {
    KVCD_LMC_R_NONE,             /* no payload frame */
    KVCD_LMC_R_INT_OR_NONE,      /* int, or no frame for None */
    KVCD_LMC_R_INT,              /* int */
    KVCD_LMC_R_BOOL,             /* bool */
    KVCD_LMC_R_STR,              /* str */
    KVCD_LMC_R_STR_LIST,         /* list[str] */
    KVCD_LMC_R_INT_LIST,         /* list[int] */
    KVCD_LMC_R_REGISTER,         /* RegisterEngineDrivenContextResponse */
    KVCD_LMC_R_PREPARE_STORE,    /* PrepareStoreResponse */
    KVCD_LMC_R_PREPARE_RETRIEVE, /* PrepareRetrieveResponse */
    KVCD_LMC_R_BYTES_BOOL,       /* tuple[bytes, bool] */
    KVCD_LMC_R_INT_BOOL,         /* tuple[int, bool] */
    KVCD_LMC_R_OPTIONAL,         /* a struct or list, or no frame for None */
    KVCD_LMC_R_STREAM,           /* a MessagingStream: frames until [uid, op] */
    KVCD_LMC_R_STRUCT            /* a struct only LMCache's modules define */
} kvcd_lmc_reply_t;

typedef struct {
    const char *p; /* into the frame; not NUL-terminated; NULL when absent */
    size_t n;
} kvcd_lmc_span_t;

/* One decoded payload frame, whatever its declared type. */
typedef enum {
    KVCD_LMC_V_NIL,
    KVCD_LMC_V_BOOL,
    KVCD_LMC_V_INT,
    KVCD_LMC_V_FLOAT,
    KVCD_LMC_V_STR,
    KVCD_LMC_V_BIN,
    KVCD_LMC_V_ARRAY,
    KVCD_LMC_V_MAP,
    KVCD_LMC_V_EXT
} kvcd_lmc_vtype_t;

typedef struct {
    kvcd_lmc_vtype_t type;
    bool b;
    int64_t i;       /* INT (also BOOL as 0/1) */
    double f;        /* FLOAT, and INT/BOOL converted */
    kvcd_lmc_span_t s; /* STR, BIN, EXT data */
    size_t count;    /* ARRAY elements, MAP pairs */
    kvcd_lmc_span_t raw; /* the whole frame */
} kvcd_lmc_val_t;

/* IPCCacheServerKey (lmcache/v1/multiprocess/custom_types.py). */
typedef struct {
    kvcd_lmc_span_t model_name;
    int64_t world_size;
    bool has_worker_id; /* worker_id None: a lookup, expands to all ranks */
    int64_t worker_id;
    uint32_t *token_ids; /* owned; LMCache hashes them as big-endian uint32 */
    size_t ntokens;
    int64_t start, end;
    kvcd_lmc_span_t request_id;
    kvcd_lmc_span_t cache_salt;
    bool has_request_configs; /* metadata, not identity: skipped */
    int64_t num_kv_readers;   /* 0 = not sent (a pre-field client) */
    uint32_t missing;         /* bit per required field that was absent */
} kvcd_lmc_key_t;

/* Bits of kvcd_lmc_key_t.missing. */
enum {
    KVCD_LMC_KEY_NO_MODEL = 1,
    KVCD_LMC_KEY_NO_WORLD = 2,
    KVCD_LMC_KEY_NO_WORKER = 4,
    KVCD_LMC_KEY_NO_TOKENS = 8,
    KVCD_LMC_KEY_NO_START = 16,
    KVCD_LMC_KEY_NO_END = 32,
    KVCD_LMC_KEY_NO_REQUEST = 64
};

/* RegisterEngineDrivenContextPayload. */
typedef struct {
    int64_t instance_id;
    kvcd_lmc_span_t model_name;
    int64_t world_size, block_size, num_layers, hidden_dim_size;
    kvcd_lmc_span_t dtype_str;
    bool use_mla;
    bool has_num_physical_slots; /* None: one slot per token (legacy) */
    int64_t num_physical_slots;
    uint32_t missing; /* bit i: the i-th required field (declaration order) absent */
} kvcd_lmc_register_t;

typedef struct {
    /* envelope */
    uint64_t uid;
    kvcd_lmc_span_t uid_frame, op_frame; /* echo these in the reply */
    kvcd_lmc_op_t op;
    int64_t wire_id;          /* the integer op sent, or -1 when sent by name */
    kvcd_lmc_span_t op_name;  /* the string op sent (for an unknown one too) */
    bool control;             /* stream control: [uid, b"", action] */
    kvcd_lmc_span_t action;   /* "ack" or "cancel" when control */
    size_t nparams;
    kvcd_lmc_val_t params[KVCD_LMC_MAX_PARAMS];

    /* parameters by role, for the operations that have them */
    bool has_key;
    kvcd_lmc_key_t key;
    bool has_instance_id; /* false for ping(None) and ops without one */
    int64_t instance_id;
    int64_t tp_size;
    kvcd_lmc_span_t request_id;
    double timeout; /* wait_prefetch_status, seconds */
    bool force;     /* clear */
    kvcd_lmc_span_t data; /* commit_store, store's event handle */
    kvcd_lmc_register_t reg;
    kvcd_lmc_span_t model_name; /* report_block_allocation, register_kv_cache */
    int64_t world_size;         /* register_kv_cache */
    int64_t skip_first_n_tokens;
} kvcd_lmc_req_t;

/* Op table lookups. Name/id of an op; NULL / -1 for UNKNOWN. */
const char *kvcd_lmc_op_name(kvcd_lmc_op_t op);
int64_t kvcd_lmc_op_wire_id(kvcd_lmc_op_t op);
size_t kvcd_lmc_op_nparams(kvcd_lmc_op_t op);
kvcd_lmc_reply_t kvcd_lmc_op_reply(kvcd_lmc_op_t op);
kvcd_lmc_op_t kvcd_lmc_op_by_name(const char *name, size_t len);
kvcd_lmc_op_t kvcd_lmc_op_by_id(int64_t id);

/* Is this first frame an LMCache uid (a msgpack integer) rather than a kvcd
 * header (a msgpack map)? How the shared socket tells the protocols apart. */
bool kvcd_lmc_is_lmcache(const void *frame0, size_t len);

/* Decode one request from nframes frames. 0 on success; on failure a
 * negative KVCD_E* code and a NUL-terminated message in msg: KVCD_EMALFORMED
 * (no uid, not msgpack, wrong payload count), KVCD_EUNKNOWNOP, KVCD_EBADFIELD
 * (a field of the wrong type, a token outside uint32) naming the field. When
 * the uid and op frames were readable req->uid, uid_frame and op_frame are
 * set even on failure, so that the caller can still answer; req owns nothing
 * after a failure. kvcd_lmc_req_free releases what a success allocated. */
int kvcd_lmc_decode(const void *const *frames, const size_t *lens, size_t nframes,
                    kvcd_lmc_req_t *req, char *msg, size_t msglen);
void kvcd_lmc_req_free(kvcd_lmc_req_t *req);

/* ---- reply payload frames (msgpack exactly as msgspec writes it) ---- */

typedef struct {
    uint64_t offset, length;
    const int64_t *shape;
    size_t ndim;
    const char *dtype; /* torch dtype name: "bfloat16", "float16", ... */
} kvcd_lmc_slot_t;

void kvcd_lmc_encode_int(kvcd_wbuf_t *w, int64_t v);
void kvcd_lmc_encode_bool(kvcd_wbuf_t *w, bool v);
void kvcd_lmc_encode_str(kvcd_wbuf_t *w, const char *s, size_t n);
void kvcd_lmc_encode_str_list(kvcd_wbuf_t *w, const char *const *v, size_t n);
void kvcd_lmc_encode_int_list(kvcd_wbuf_t *w, const int64_t *v, size_t n);
/* RegisterEngineDrivenContextResponse {shm_name, pool_size}. */
void kvcd_lmc_encode_register(kvcd_wbuf_t *w, const char *shm_name, uint64_t pool_size);
/* PrepareStoreResponse. slots == NULL: context {} (the client takes it as
 * "no slot protocol": nothing to write); else context {slots, chunk_indices},
 * n may be 0 (every chunk already present). */
void kvcd_lmc_encode_prepare_store(kvcd_wbuf_t *w, const kvcd_lmc_slot_t *slots,
                                   const int64_t *chunk_indices, size_t n);
/* PrepareRetrieveResponse {success, data, context}; context {} without slots,
 * {slots: [...]} with. */
void kvcd_lmc_encode_prepare_retrieve(kvcd_wbuf_t *w, bool success, const void *data,
                                      size_t dlen, const kvcd_lmc_slot_t *slots, size_t n);
void kvcd_lmc_encode_bytes_bool(kvcd_wbuf_t *w, const void *b, size_t n, bool v);
void kvcd_lmc_encode_int_bool(kvcd_wbuf_t *w, int64_t i, bool v);

/* The typed "cannot do it" answer to op: false, 0, an empty list, an
 * unsuccessful prepare, or no frame (returns false: send [uid, op] only).
 * For ops whose reply is a struct that only LMCache's optional modules define
 * (server_module_call), and for streams, it is no frame: the client's future
 * resolves to None or the stream ends, which is still an answer. */
bool kvcd_lmc_encode_refusal(kvcd_wbuf_t *w, kvcd_lmc_op_t op);

/* ---- chunk hashing (lmcache/v1/multiprocess/token_hasher.py) ---- */

typedef enum { KVCD_LMC_HASH_BLAKE3 = 1 } kvcd_lmc_hash_t;

/* --hash-algorithm: "blake3" is implemented; LMCache's others ("builtin",
 * "sha256_cbor", "sha256_cbor_64bit", "sha256", any vLLM hash name) are not:
 * KVCD_ECONFIG with a message saying so. */
int kvcd_lmc_hash_select(const char *name, kvcd_lmc_hash_t *alg, char *msg, size_t msglen);

/* NONE_HASH of blake3: BLAKE3 of 8 zero bytes (the int 0 as signed 64-bit
 * big-endian) followed by 4 zero bytes (the token 0). */
void kvcd_lmc_none_hash(uint8_t out[KVCD_LMC_HASH_LEN]);

/* One chunk: BLAKE3(prefix (32 bytes) || tokens as big-endian uint32). */
void kvcd_lmc_hash_chunk(const uint8_t prefix[KVCD_LMC_HASH_LEN], const uint32_t *tokens,
                         size_t n, uint8_t out[KVCD_LMC_HASH_LEN]);

/* TokenHasher.compute_chunk_hashes(tokens, start=start, end=end): the rolling
 * prefix chain over the full chunks of tokens[0 .. min(n, end)) (end < 0: no
 * end), starting at NONE_HASH, keeping the hashes of chunks at or after token
 * start. Writes at most max of them to out and returns how many there are. */
size_t kvcd_lmc_chunk_hashes(const uint32_t *tokens, size_t n, size_t chunk_size, size_t start,
                             int64_t end, uint8_t (*out)[KVCD_LMC_HASH_LEN], size_t max);

#endif
