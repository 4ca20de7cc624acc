/*
 * client.h - the kvcd C client library.
 *
 * One kvcd_client_t wraps one ZeroMQ DEALER socket connected to a kvcd. It is not
 * thread-safe: use one client per thread (they are cheap). Two styles:
 *
 *  - blocking calls (kvcd_client_store, _lookup, _load, ...) send one request and
 *    wait for its reply, at most the client's timeout;
 *  - pipelined calls: kvcd_client_send returns a request id at once, and
 *    kvcd_client_wait(id) returns that request's reply; replies that arrive for
 *    other ids meanwhile are kept until asked for.
 *
 * Bulk bytes are sent without copying. Ownership of a STORE's buffers:
 *  - blocking calls: the buffers are the caller's again when the call returns,
 *    whatever it returns, including KVCD_ETIMEDOUT;
 *  - kvcd_client_send: the buffers must stay valid and unchanged until
 *    kvcd_client_wait for that id returns (whatever it returns) or the client
 *    is closed.
 * To keep that promise after a timeout, a wait that gives up on a request
 * whose frames ZeroMQ has not finished sending resets the connection: ZeroMQ
 * drops the unsent bytes, every other request still in flight loses its reply
 * (waiting for it answers KVCD_ECONNECT at once), and the server sees a new
 * peer, so segments registered before belong to the old one (the server drops
 * them after --segment-lease-ms; register again). A reset never happens while
 * the server answers within the timeout.
 *
 * Functions return 0 or a negative code from kvcd_err.h (request-level errors
 * of the server come back as their code; KVCD_ETIMEDOUT when the server did not
 * answer in time).
 */
#ifndef KVCD_CLIENT_H
#define KVCD_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "key.h"
#include "kvcd_err.h"
#include "proto.h"

typedef struct kvcd_client_s kvcd_client_t;
typedef struct kvcd_reply_s kvcd_reply_t;

/* Connect to endpoint (e.g. "ipc:///run/kvcd.sock", "tcp://127.0.0.1:5555").
 * timeout_ms bounds every blocking call (<= 0: 30 s). ZeroMQ connects lazily, so
 * a missing server shows as a timeout on the first call (use kvcd_client_ping). */
int kvcd_client_connect(const char *endpoint, int timeout_ms, kvcd_client_t **out);
void kvcd_client_close(kvcd_client_t *c);

/* Opt-in, process-wide: make the buffers ZeroMQ allocates for every received
 * frame (one malloc per LOAD frame, of the frame's size) reuse memory instead
 * of faulting in fresh pages each time. glibc maps every block above its mmap
 * threshold (at most 32 MiB) anew and unmaps it on free, so without this each
 * page of a large LOAD frame is a page fault (docs/PERFORMANCE.md). It sets
 * glibc's malloc to one arena, no mmap'd blocks, no trimming: freed memory
 * stays with the process (its peak heap is kept) for the next frames. Call it
 * once, before the first kvcd_client_connect and before the process starts
 * other threads (an arena is chosen per thread at its first malloc). 0, or
 * -ENOTSUP where the C library is not glibc or refuses. */
int kvcd_client_keep_memory(void);

/* The key set shared by the keys of one request: model, kv_rank, group, salt.
 * Fills base (borrowing model and salt). */
void kvcd_keyset(kvcd_key_t *base, const char *model, uint32_t world_size,
                 uint32_t worker_id, uint32_t group, const char *salt);

/* ---- pipelined ---- */

/* Send a request. base/hashes/n for key operations (NULL/NULL/0 otherwise);
 * bufs/lens: one bulk frame per key for STORE (NULL otherwise). *id receives the
 * request id. */
int kvcd_client_send(kvcd_client_t *c, uint32_t op, const kvcd_key_t *base,
                     const kvcd_bytes_t *hashes, size_t n, const void *const *bufs,
                     const size_t *lens, uint64_t *id);

/* Wait for the reply to id (timeout_ms <= 0: the client's timeout). On success
 * *out is the reply (free with kvcd_reply_free) and the return value is 0, even
 * when the server answered with an error: check kvcd_reply_hdr(r)->err. On a
 * timeout (KVCD_ETIMEDOUT) the id is abandoned and its late reply discarded
 * when it comes; if ZeroMQ was still sending the id's frames the connection is
 * reset first (see above). KVCD_ECONNECT: the request was lost in such a reset.
 * When it returns, ZeroMQ no longer reads the id's buffers. */
int kvcd_client_wait(kvcd_client_t *c, uint64_t id, int timeout_ms,
                     kvcd_reply_t **out);

/* Diagnostics: replies received but not yet asked for, and ids given up on
 * whose replies have not arrived yet. Neither has a fixed bound: abandoned ids
 * leave when their reply arrives or the connection is reset. */
void kvcd_client_pending(const kvcd_client_t *c, size_t *parked, size_t *abandoned);

const kvcd_reply_hdr_t *kvcd_reply_hdr(const kvcd_reply_t *r);
size_t kvcd_reply_nframes(const kvcd_reply_t *r);
/* Bulk frame i of the reply (valid until kvcd_reply_free). */
const void *kvcd_reply_frame(const kvcd_reply_t *r, size_t i, size_t *len);
void kvcd_reply_free(kvcd_reply_t *r);

/* ---- blocking ---- */

/* ping: fills *info (info->server points into info_buf of size buflen). */
int kvcd_client_ping(kvcd_client_t *c, kvcd_ping_t *info, char *info_buf,
                     size_t buflen);

/* results[i]: 0 stored (or already present), else a negative code. */
int kvcd_client_store(kvcd_client_t *c, const kvcd_key_t *base,
                      const kvcd_bytes_t *hashes, size_t n, const void *const *bufs,
                      const size_t *lens, int *results);

/* *prefix: leading keys available; present (may be NULL): n flags. */
int kvcd_client_lookup(kvcd_client_t *c, const kvcd_key_t *base,
                       const kvcd_bytes_t *hashes, size_t n, size_t *prefix,
                       uint8_t *present);

/* Copy each hit into bufs[i] (capacity caps[i]); lens[i] = object size.
 * results[i]: 0 hit, KVCD_ENOTFOUND miss, -EMSGSIZE if caps[i] was too small. */
int kvcd_client_load(kvcd_client_t *c, const kvcd_key_t *base,
                     const kvcd_bytes_t *hashes, size_t n, void *const *bufs,
                     const size_t *caps, size_t *lens, int *results);

int kvcd_client_remove(kvcd_client_t *c, const kvcd_key_t *base,
                       const kvcd_bytes_t *hashes, size_t n, int *results);

int kvcd_client_clear(kvcd_client_t *c, uint64_t *removed);

/* *json: the STATUS map as JSON text (malloc'd, caller frees). */
int kvcd_client_status(kvcd_client_t *c, char **json);

/* The message of the last request-level error this client received (or ""). */
const char *kvcd_client_errmsg(const kvcd_client_t *c);

/* ---- shared memory (client and server on the same host) ----
 *
 * A segment is a sealed memfd this process creates, maps and registers with
 * the server (docs/PROTOCOL.md, "Shared-memory data plane"). STORE_SHM and
 * LOAD_SHM then name an (offset, length) in it per key and the server copies
 * between the segment and its memory: no bytes cross the socket. The segment
 * belongs to this client's connection: the server drops it when the client
 * sends nothing for --segment-lease-ms (ping to keep it while idle). Bytes a
 * STORE_SHM reads must not change until its reply; bytes a LOAD_SHM writes are
 * there when its reply arrives. */
typedef struct {
    void *base;     /* this process's read-write mapping, `size` bytes */
    size_t size;
    uint64_t id;    /* the server's segment id */
    int fd;         /* the memfd */
} kvcd_segment_t;

/* memfd_create("kvcd-client"), size it, seal it (shrink, grow, seal), map it
 * and REGISTER_SEGMENT it. *out is freed by kvcd_client_segment_destroy. */
int kvcd_client_segment_create(kvcd_client_t *c, size_t size, kvcd_segment_t **out);

/* UNREGISTER_SEGMENT, unmap, close and free (all of it even when the server
 * does not answer; that error is returned). NULL is a no-op. */
int kvcd_client_segment_destroy(kvcd_client_t *c, kvcd_segment_t *seg);

/* STORE_SHM: key i's bytes are seg->base[offsets[i] .. + lengths[i]).
 * results[i]: 0 stored (or already present), else a negative code. */
int kvcd_client_store_shm(kvcd_client_t *c, const kvcd_key_t *base,
                          const kvcd_bytes_t *hashes, size_t n, const kvcd_segment_t *seg,
                          const uint64_t *offsets, const uint64_t *lengths, int *results);

/* LOAD_SHM: each hit is copied to seg->base + offsets[i] if it fits in caps[i].
 * lens[i] = object size (0 on a miss); results[i]: 0 hit, KVCD_ENOTFOUND miss,
 * -EMSGSIZE if caps[i] was too small (nothing written). */
int kvcd_client_load_shm(kvcd_client_t *c, const kvcd_key_t *base,
                         const kvcd_bytes_t *hashes, size_t n, const kvcd_segment_t *seg,
                         const uint64_t *offsets, const uint64_t *caps, uint64_t *lens,
                         int *results);

/* Pipelined form of the shared-memory operations (ops 8-11) and of the
 * zero-copy ones (12-17, below): base/hashes/n for the ops with keys (NULL/
 * NULL/0 otherwise), the op's fields in shm (RESERVE: lengths). The reply's
 * header has `segment` (REGISTER_SEGMENT), `lengths` (LOAD_SHM, RESERVE, MAP)
 * and `offsets` (RESERVE, MAP); LOOKUP_MAP's has `prefix`, and `nextents`
 * entries in `offsets` and `lengths`. */
int kvcd_client_send_shm(kvcd_client_t *c, uint32_t op, const kvcd_key_t *base,
                         const kvcd_bytes_t *hashes, size_t n, const kvcd_shm_args_t *shm,
                         uint64_t *id);

/* ---- zero-copy: the shared L1 (client and server on the same host, same user) ----
 *
 * kvcd's L1 is one shared-memory object (docs/PROTOCOL.md, "Zero-copy
 * operations"). Map it once; then RESERVE gives per key an offset into the
 * mapping where this process writes the object's bytes itself, COMMIT makes
 * them visible (ABORT gives them back), MAP gives the offset and length of
 * stored objects to read in place, each held under a lease until RELEASE.
 * The server releases what a client holds when its connection closes and when
 * it sends nothing for --segment-lease-ms (ping to keep them while idle). Only
 * an ipc:// peer of kvcd's own user may use these (KVCD_EPEERUNVERIFIED
 * otherwise). Between RESERVE and COMMIT the region is this client's alone;
 * after COMMIT and between MAP and RELEASE it must not be written. */
typedef struct {
    void *base;     /* read-write mapping of all of L1 */
    size_t size;
    char name[64];  /* the shm_open name the server reported */
} kvcd_l1map_t;

/* PING for the shared object's name and size, shm_open and map it. Free with
 * kvcd_client_unmap_l1 (after which no offset may be used). */
int kvcd_client_map_l1(kvcd_client_t *c, kvcd_l1map_t **out);
void kvcd_client_unmap_l1(kvcd_l1map_t *m);

/* RESERVE lengths[i] bytes per key: results[i] 0 and offsets[i] (write at
 * map->base + offsets[i]), KVCD_EDUPLICATE (stored already: nothing to write),
 * KVCD_EBUSY (another client reserved it), KVCD_ENOSPACE. */
int kvcd_client_reserve(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                        size_t n, const uint64_t *lengths, uint64_t *offsets, int *results);

/* COMMIT: results[i] 0 (visible now), KVCD_ENOTFOUND (no reservation of this
 * client: expired, aborted, never made), KVCD_EDUPLICATE (stored meanwhile by a
 * STORE; the reservation is gone). */
int kvcd_client_commit(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                       size_t n, int *results);

/* ABORT: results[i] 0 or KVCD_ENOTFOUND. */
int kvcd_client_abort(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                      size_t n, int *results);

/* MAP: results[i] 0 and offsets[i]/lengths[i] of the object (one lease
 * taken), or KVCD_ENOTFOUND. */
int kvcd_client_map(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                    size_t n, uint64_t *offsets, uint64_t *lengths, int *results);

/* RELEASE one lease per key: results[i] 0 or KVCD_ENOTFOUND. */
int kvcd_client_release(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *hashes,
                        size_t n, int *results);

/* LOOKUP_MAP: LOOKUP the keys (L2 included) and MAP the prefix in one round
 * trip. *prefix: how many leading keys are leased; offsets[i]/lengths[i]
 * (arrays of n, NULL to skip) for i < *prefix. Release them with
 * kvcd_client_release of the first *prefix hashes. */
int kvcd_client_lookup_map(kvcd_client_t *c, const kvcd_key_t *base,
                           const kvcd_bytes_t *hashes, size_t n, size_t *prefix,
                           uint64_t *offsets, uint64_t *lengths);

#endif
