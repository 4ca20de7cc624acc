/*
 * storage.h - orchestration of L1 and the L2 adapters.
 *
 *  - write-behind: objects published by a STORE are written to every L2 adapter
 *    (one batch per adapter per request), referenced until each write is done;
 *    with the skip_l1 policy they leave L1 once every adapter has them;
 *  - lookup: the L1 prefix first, the keys L1 lacks asked of all adapters in
 *    parallel, the longest prefix across tiers brought up into L1 (the first
 *    adapter in priority order that has a key wins) and pinned for the LOAD that
 *    follows; a pin nobody loads expires;
 *  - remove: from L1 and from every adapter;
 *  - touches: the keys of L1 hits (LOOKUP, LOAD) go in bounded, deduplicated
 *    batches to the adapters that implement `touch`, so their recency follows
 *    every use (flushed every 100 ms, when full, at stop and before any other
 *    call to an adapter); never one call per hit.
 *
 * Loop thread only. Everything handed to an adapter stays valid until the
 * adapter's call has released it, even after a deadline has passed.
 */
#ifndef KVCD_STORAGE_H
#define KVCD_STORAGE_H

#include <uv.h>

#include "conf/options.h"
#include "daemon/l1.h"
#include "protocol/proto.h"

typedef struct kvcd_storage_s kvcd_storage_t;

/* Create the configured L2 instances (opt->l2_specs). 0, or a negative code
 * with "--l2-adapter #N (type): field: problem" in err. */
int kvcd_storage_create(uv_loop_t *loop, const kvcd_options_t *opt, kvcd_l1_t *l1,
                        kvcd_storage_t **out, char *err, size_t errlen);

/* Called whenever an object leaves the WRITING state (published or dropped), so
 * the server can retry LOADs that wait for a prefetch. */
void kvcd_storage_on_change(kvcd_storage_t *st, void (*cb)(void *), void *data);

/* STORE published these objects: start write-behind. NULLs are skipped. */
void kvcd_storage_write_behind(kvcd_storage_t *st, kvcd_obj_t *const *objs, size_t n);

/* Clean stop (--l2-save-l1-on-stop): write every READY L1 object behind once
 * more, least recently used first, one batch per adapter. An adapter that skips
 * what it has (fs skip_existing) then holds L1's objects as its most recent
 * ones, in L1's order, so a restart loses nothing L1 held. Loop thread; before
 * kvcd_storage_stop. */
void kvcd_storage_save_l1(kvcd_storage_t *st);

/* LOOKUP. cb gets the prefix and per-key presence (n flags), once, possibly
 * before this returns (no L2), and the prefix's objects (objs[0..prefix),
 * each pinned, borrowed for the callback; READY or, rarely, still being
 * written by a STORE). present and objs are NULL when out of memory. The
 * request (keys) must stay valid until cb. */
typedef void (*kvcd_storage_lookup_cb)(void *data, size_t prefix, const uint8_t *present,
                                       kvcd_obj_t *const *objs);
void kvcd_storage_lookup(kvcd_storage_t *st, const kvcd_req_t *req,
                         kvcd_storage_lookup_cb cb, void *data);

/* LOAD is about to send obj: consume a pin, and drop a temporary prefetched
 * copy from L1 (prefetch policy default). The caller holds its own reference. */
void kvcd_storage_served(kvcd_storage_t *st, kvcd_obj_t *obj);

/* REMOVE: results[i] = 0 if the key was removed from L1 or any adapter, else
 * KVCD_ENOTFOUND. cb once, possibly before this returns. */
typedef void (*kvcd_storage_remove_cb)(void *data, const int *results);
void kvcd_storage_remove(kvcd_storage_t *st, const kvcd_req_t *req,
                         kvcd_storage_remove_cb cb, void *data);

/* L2 work in flight (write-behind, lookups, prefetches, removes). */
size_t kvcd_storage_inflight(const kvcd_storage_t *st);

/* Add "l2" (array of per-adapter status) and storage counters to status. */
void kvcd_storage_status(kvcd_storage_t *st, json_t *status);

/* Stop timers and release pins (loop thread, before the loop's last run). Closes
 * the adapters now when nothing is in flight, else when the last call is
 * released, so their handles close while the loop runs. */
void kvcd_storage_stop(kvcd_storage_t *st);

/* The shutdown deadline passed: stop, and abandon every adapter (callers still
 * waiting are answered as timed out; calls stuck in workers are never
 * delivered, and their instances are never freed). */
void kvcd_storage_abandon(kvcd_storage_t *st);

/* CLEAR: unlink every L1 object, dropping their pins first so the memory of
 * objects nobody reads comes back at once. Returns how many were linked. */
size_t kvcd_storage_clear_l1(kvcd_storage_t *st);

/* Close the adapters not closed yet, and free (after uv_run). */
void kvcd_storage_destroy(kvcd_storage_t *st);

#endif
