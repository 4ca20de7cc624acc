/*
 * segment.h - the table of shared-memory segments clients registered
 * (docs/PROTOCOL.md, "Shared-memory data plane").
 *
 * A segment is a sealed memfd that a client created and named "kvcd-..."; the
 * daemon reaches it through /proc/<pid>/fd/<fd>, checks it (a kvcd memfd, this
 * user's, sealed against shrinking, large enough), maps it and closes the fd.
 * Only a peer whose credentials the kernel vouches for (an ipc:// peer, see
 * peer.h) running as kvcd's own effective user may register, use or
 * unregister a segment, and only a descriptor of its own process: kvcd opens
 * /proc/<pid>/fd/<fd> with its own rights, so without these checks any local
 * user could make it map another user's memory. The open, the checks and the
 * map run off the loop thread (a client-named file can block an open(): a FIFO,
 * a file under a lease), with O_NONBLOCK so even the worker is not held.
 * Because the memfd cannot shrink, the mapping can never raise SIGBUS, whatever
 * the client does afterwards, including dying. Right after registration a
 * worker pre-faults the whole mapping (MADV_POPULATE_WRITE), so the copies of
 * later requests do not pay a page fault per 4 KiB on first use.
 *
 * Life of a segment:
 *   kvcd_segtab_register   -> checked and mapped on a worker; on completion (loop
 *                             thread) in the table, refs = 1 (the table's), id
 *                             never reused within the process's life;
 *   kvcd_segtab_acquire    -> a request that copies to or from it takes a
 *                             reference for as long as its copies run;
 *   kvcd_segtab_unregister / lease expiry
 *                          -> out of the table at once (later requests naming it
 *                             get ESEGMENT), `registered` drops to 0; unmapped
 *                             when the last reference goes.
 *
 * Ownership: a segment belongs to the ZeroMQ routing identity that registered
 * it; only that identity may use or unregister it. Every request from an
 * identity renews its lease (kvcd_segtab_touch); a timer unregisters the
 * segments of owners silent for longer than --segment-lease-ms, so a client
 * that dies releases what it registered.
 *
 * Threading: loop thread only, no locks. Worker threads may read and write a
 * segment's bytes while the caller holds a reference.
 */
#ifndef KVCD_SEGMENT_H
#define KVCD_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "conf/options.h"
#include "daemon/peer.h"

typedef struct kvcd_segtab_s kvcd_segtab_t;
typedef struct kvcd_seg_s kvcd_seg_t;
typedef struct kvcd_seg_owner_s kvcd_seg_owner_t;

/* Fields above the line are read-only for users of the table. */
struct kvcd_seg_s {
    uint64_t id;
    void *base;             /* the mapping, `size` bytes, read-write */
    size_t size;
    uint8_t registered;     /* 0 once unregistered or expired */
    /* ---- private to segment.c ---- */
    uv_work_t populate;     /* pre-faults the mapping on the threadpool */
    uint32_t refs;
    kvcd_segtab_t *tab;
    kvcd_seg_owner_t *owner;
    kvcd_seg_t *next;
};

/* The table, with its lease timer on loop. opt must outlive it. 0 or -ENOMEM. */
int kvcd_segtab_create(uv_loop_t *loop, const kvcd_options_t *opt, kvcd_segtab_t **out);

/* Close the lease timer (loop thread, before the loop's last run). */
void kvcd_segtab_stop(kvcd_segtab_t *t);

/* Unmap every segment and free. Only when no copy is running (after uv_run). */
void kvcd_segtab_destroy(kvcd_segtab_t *t);

/* Completion of kvcd_segtab_register, on the loop thread, exactly once: status 0
 * and the new segment's id, or KVCD_ESEGMENT / -ENOMEM with the reason in msg
 * (valid during the call only). */
typedef void (*kvcd_segtab_register_cb)(void *data, int status, uint64_t id,
                                        const char *msg);

/* REGISTER_SEGMENT from `peer` for the identity owner[0..owner_len): check and
 * map fd `fd` of process `pid`, `size` bytes. Returns 0 when the registration
 * was started (cb follows, after this call has returned), or an error with the
 * reason in msg and no callback: KVCD_EPEERUNVERIFIED (peer not verified as
 * kvcd's user, or pid not the peer's own), KVCD_ESEGMENT (limits). The caller's
 * buffers are not kept; `data` is handed back to cb. Until cb runs the bytes
 * and the slot count against --max-segment-gb and --max-segments. */
int kvcd_segtab_register(kvcd_segtab_t *t, const kvcd_peer_t *peer, const void *owner,
                         size_t owner_len, uint64_t pid, uint64_t fd, uint64_t size,
                         kvcd_segtab_register_cb cb, void *data, char *msg, size_t msglen);

/* UNREGISTER_SEGMENT: 0, or KVCD_EPEERUNVERIFIED, or KVCD_ESEGMENT (unknown,
 * or another owner's). */
int kvcd_segtab_unregister(kvcd_segtab_t *t, const kvcd_peer_t *peer, const void *owner,
                           size_t owner_len, uint64_t id, char *msg, size_t msglen);

/* The registered segment `id` of this owner, with a reference the caller drops
 * with kvcd_seg_unref. 0, or KVCD_EPEERUNVERIFIED / KVCD_ESEGMENT with the
 * reason in msg. */
int kvcd_segtab_acquire(kvcd_segtab_t *t, const kvcd_peer_t *peer, const void *owner,
                        size_t owner_len, uint64_t id, kvcd_seg_t **out, char *msg,
                        size_t msglen);

/* Drop a reference; unmaps once the segment is out of the table and unused. */
void kvcd_seg_unref(kvcd_seg_t *seg);

/* A request arrived from this identity: renew its lease. Cheap when it owns
 * nothing. */
void kvcd_segtab_touch(kvcd_segtab_t *t, const void *owner, size_t owner_len);

/* Add "segments" (registered count) and "segment_bytes" (bytes mapped,
 * including unregistered segments still in use) to status, and
 * "segments_expired" to its "counters" map. */
void kvcd_segtab_status(const kvcd_segtab_t *t, json_t *status);

#endif
