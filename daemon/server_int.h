/*
 * server_int.h - what the parts of the server share: the process state, one
 * request's bookkeeping (call_t), and the functions each part offers the others.
 *
 *   server.c   the lifecycle state machine and the components it owns
 *   bridge.c   the socket: receive, admission budget, replies
 *   request.c  one request from arrival to its single reply: dispatch,
 *              parking (waiting for L1 to change), forced answers at shutdown
 *   keyops.c   STORE, LOOKUP, LOAD, REMOVE, CLEAR
 *   shmops.c   REGISTER/UNREGISTER_SEGMENT, STORE_SHM, LOAD_SHM
 *   zcops.c    RESERVE, COMMIT, ABORT, MAP, RELEASE (zero-copy, daemon/zc.h)
 *   admin.c    PING, STATUS
 *
 * Ownership of in-flight work: a call_t is owned by request.c from arrival
 * until it is answered *and* nothing refers to it any more (`busy` counts the
 * copies and storage operations still running on its behalf). Answering and
 * freeing are separate so that a request can be answered at the shutdown
 * deadline while a copy into L1 is still running: the copy's completion then
 * only cleans up. Loop thread only.
 */
#ifndef KVCD_SERVER_INT_H
#define KVCD_SERVER_INT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "conf/options.h"
#include "daemon/bridge.h"
#include "daemon/executor.h"
#include "daemon/l1.h"
#include "daemon/metrics.h"
#include "daemon/segment.h"
#include "daemon/server.h"
#include "daemon/storage.h"
#include "daemon/zc.h"
#include "protocol/proto.h"

typedef struct {
    uint64_t requests, errors;
    uint64_t stores, store_bytes, store_dups, store_nospace;
    uint64_t lookups, lookup_keys, lookup_hits;
    uint64_t loads, load_hits, load_misses, load_bytes;
    uint64_t removes, clears, clear_requests, dropped_replies;
    uint64_t shm_stores, shm_loads;
    uint64_t forced_answers;
} counters_t;

typedef enum {
    KVCD_STATE_RUNNING,
    KVCD_STATE_DRAINING, /* signal received: new requests get ESHUTDOWN */
    KVCD_STATE_FLUSHING, /* no request in flight: write-behind drains to L2 */
    KVCD_STATE_CLOSING,  /* socket and adapters closing; the loop then ends */
} kvcd_state_t;

typedef struct call_s call_t;

typedef struct {
    kvcd_task_t task;
    call_t *call;
    void *dst;
    const void *src;
    size_t len;
} copy_task_t;

struct call_s {
    kvcd_server_t *srv;
    kvcd_conn_t *conn;          /* referenced until the call is freed */
    kvcd_frame_t hdr;
    kvcd_frame_t *frames;       /* bulk frames received */
    size_t nframes;
    const char *dropped;        /* why the transport dropped the bulk (then ETOOLARGE) */
    kvcd_req_t req;
    int decoded;
    int answered;
    size_t busy;                /* copies + storage operations outstanding */
    call_t *prev, *next;        /* srv->calls while unanswered */
    uint64_t t_start_ns;        /* arrival, for the latency metric */
    int err;                    /* the request-level error replied, or 0 */
    int *results;
    kvcd_obj_t **objs;          /* STORE: objects being written */
    copy_task_t *tasks;
    size_t copies_pending;
    void (*copy_after)(call_t *call);
    int copy_failed;            /* a copy could not run (queue full, shutdown) */
    call_t *park_next;          /* srv->parked while waiting for L1 to change */
    int parked;
    int (*park_fn)(call_t *call, int force);
    uint64_t park_deadline;
    size_t store_next;          /* STORE: next key to reserve */
    kvcd_seg_t *seg;            /* STORE_SHM, LOAD_SHM: referenced until freed */
    uint64_t *shm_lens;         /* LOAD_SHM: object sizes for the reply */
};

struct kvcd_server_s {
    uv_loop_t *loop;
    const kvcd_options_t *opt;
    kvcd_l1_t *l1;
    kvcd_storage_t *storage;
    kvcd_segtab_t *segs;
    kvcd_zc_t *zc;              /* reservations and leases in the shared L1 */
    kvcd_bridge_t *bridge;
    kvcd_exec_t *copy_exec;     /* memcpy between client memory and L1 only */
    kvcd_state_t state;
    call_t *calls;              /* unanswered calls */
    uint64_t inflight;          /* unanswered calls */
    call_t *parked, *parked_tail;
    int retrying, retry_again;
    uv_timer_t park_timer;
    uv_signal_t sigterm, sigint;
    uv_timer_t stop_timer;      /* the hard deadline */
    uv_timer_t step_timer;      /* drives the drain order */
    uv_timer_t backstop_timer;  /* ends the loop if closing itself hangs */
    int forced;                 /* the deadline passed */
    int loop_stopped;           /* the backstop had to stop the loop */
    int handles_closed;
    uint64_t start_ms;
    uint64_t last_recv_ms;
    counters_t c;
    kvcd_opstats_t ops;         /* per-op requests, errors, latency (metrics.h) */
};

/* request.c */
void kvcd_call_arrived(void *srv, kvcd_conn_t *conn, kvcd_frame_t *frames, size_t n,
                       const char *dropped);
/* The one reply: `sent(arg)` runs once the bulk buffers are free again (at
 * once when the call was already answered). */
void kvcd_call_reply(call_t *call, kvcd_wbuf_t *w, const kvcd_bulk_t *bulk, size_t nbulk,
                     void (*sent)(void *), void *arg);
void kvcd_call_error(call_t *call, int err, const char *msg);
void kvcd_call_results(call_t *call);
/* Free the call if it was answered and nothing runs for it any more. */
void kvcd_call_maybe_free(call_t *call);
void kvcd_call_park(call_t *call, int (*fn)(call_t *, int));
void kvcd_call_retry_parked(kvcd_server_t *srv, int force_all);
void kvcd_call_force_all(kvcd_server_t *srv);
/* Queue call->tasks[0..ntasks) (dst, src, len filled in) on the copy
 * executor; after_fn runs once all are done, with call->copy_failed set if
 * some could not run. 0, or the error when none was queued. */
int kvcd_call_copy(call_t *call, size_t ntasks, void (*after_fn)(call_t *));

/* keyops.c */
void kvcd_op_store(call_t *call);
void kvcd_op_lookup(call_t *call);
void kvcd_op_load(call_t *call);
void kvcd_op_remove(call_t *call);
void kvcd_op_clear(call_t *call);
int kvcd_store_reserve(call_t *call, int force);
void kvcd_store_drop(call_t *call);
kvcd_obj_t **kvcd_find_for_load(call_t *call, int force, int *wait);
void kvcd_call_cleanup_store(call_t *call);
/* The bridge's placer (bridge.h): STORE bulk frames straight into L1. */
void *kvcd_store_place(void *data, void **memo, const void *hdr, size_t hdr_len, size_t index,
                       size_t len, void **token);
void kvcd_store_unplace(void *data, void *token);
void kvcd_store_forget(void *data, void *memo);

/* shmops.c */
void kvcd_op_register_segment(call_t *call);
void kvcd_op_unregister_segment(call_t *call);
void kvcd_op_store_shm(call_t *call);
void kvcd_op_load_shm(call_t *call);

/* zcops.c */
void kvcd_op_reserve(call_t *call);
void kvcd_op_commit(call_t *call);
void kvcd_op_abort(call_t *call);
void kvcd_op_map(call_t *call);
void kvcd_op_release(call_t *call);
void kvcd_op_lookup_map(call_t *call);

/* admin.c */
void kvcd_op_ping(call_t *call);
void kvcd_op_status(call_t *call);

/* server.c */
void kvcd_server_step(kvcd_server_t *srv);

#define KVCD_INLINE_COPY (256u << 10) /* smaller copies run on the loop */
#define KVCD_COPY_SLICE (4u << 20)    /* a copy task moves at most this */
#define KVCD_PLACE_MIN (64u << 10)    /* smaller STORE frames are copied */

#endif
