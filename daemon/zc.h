/*
 * zc.h - zero-copy access to the shared L1: the reservations and read leases
 * kvcd holds for same-host clients that map L1 (docs/PROTOCOL.md, "Zero-copy
 * operations"). Any front end calls these; daemon/zcops.c is the native
 * protocol's.
 *
 * A holder is one client (a connection: its 8-byte identity). What it holds:
 *   reservation  a detached L1 object (kvcd_l1_reserve_detached): invisible to
 *                LOOKUP/LOAD/REMOVE/CLEAR, never evicted; one per key across
 *                all holders (a second reserve of the key is KVCD_EBUSY);
 *                commit attaches it (visible, READY) and starts write-behind,
 *                abort frees it;
 *   lease        a reference on a READY object the client reads in place,
 *                counted per (key, object): the object is never evicted, and
 *                its memory never reused, until every lease on it is released
 *                (a REMOVE or CLEAR meanwhile only unlinks it).
 * Everything a holder has goes back when the connection closes
 * (kvcd_zc_drop), when the client is silent for lease_ms (a timer), and at
 * shutdown (kvcd_zc_stop).
 *
 * Loop thread only, no locks. Clients write and read the bytes in their own
 * mappings; nothing here touches them.
 */
#ifndef KVCD_ZC_H
#define KVCD_ZC_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "daemon/l1.h"
#include "daemon/storage.h"

typedef struct kvcd_zc_s kvcd_zc_t;
typedef struct kvcd_zc_holder_s kvcd_zc_holder_t;

/* The table, with its expiry timer on loop. 0 or -ENOMEM. */
int kvcd_zc_create(uv_loop_t *loop, kvcd_l1_t *l1, kvcd_storage_t *st, uint64_t lease_ms,
                   kvcd_zc_t **out);

/* cb(data) runs after a commit or abort changed L1 (parked LOADs retry). */
void kvcd_zc_on_change(kvcd_zc_t *zc, void (*cb)(void *), void *data);

/* Release every holder's reservations and leases, refuse new ones, close the
 * timer (loop thread, before the loop's last run). */
void kvcd_zc_stop(kvcd_zc_t *zc);
/* Free (after uv_run; kvcd_zc_stop first). NULL is a no-op. */
void kvcd_zc_destroy(kvcd_zc_t *zc);

/* The holder for this identity, created when missing and `create`; renews its
 * lease. NULL when missing (or out of memory, or stopped). */
kvcd_zc_holder_t *kvcd_zc_holder(kvcd_zc_t *zc, const void *ident, size_t len, int create);

/* A request arrived from this identity: renew its lease (cheap if it holds
 * nothing). */
void kvcd_zc_touch(kvcd_zc_t *zc, const void *ident, size_t len);

/* The identity's connection closed: release what it holds. */
void kvcd_zc_drop(kvcd_zc_t *zc, const void *ident, size_t len);

/* Reserve `size` bytes for key: 0 and *out (data/size valid until commit or
 * abort), KVCD_EDUPLICATE (stored, or being stored by a STORE), KVCD_EBUSY
 * (reserved by a holder), KVCD_ENOSPACE, KVCD_ESHUTDOWN, -ENOMEM. */
int kvcd_zc_reserve(kvcd_zc_t *zc, kvcd_zc_holder_t *h, const kvcd_key_t *key, size_t size,
                    kvcd_obj_t **out);

/* Commit the holder's reservations of keys[0..n): results[i] 0 (visible now;
 * write-behind started for all of them in one batch), KVCD_ENOTFOUND (no
 * reservation of this holder), KVCD_EDUPLICATE (a STORE stored the key meanwhile:
 * the reservation is dropped, the stored object kept). */
void kvcd_zc_commit(kvcd_zc_t *zc, kvcd_zc_holder_t *h, const kvcd_key_t *keys, size_t n,
                    int *results);

/* Abort reservations: 0, or KVCD_ENOTFOUND. The memory is free at once. */
void kvcd_zc_abort(kvcd_zc_t *zc, kvcd_zc_holder_t *h, const kvcd_key_t *keys, size_t n,
                   int *results);

/* Lease a READY object the caller found (kvcd_l1_find_ready or a LOAD's
 * search): one more lease of h on it. 0, -ENOMEM, KVCD_ESHUTDOWN. */
int kvcd_zc_lease(kvcd_zc_t *zc, kvcd_zc_holder_t *h, kvcd_obj_t *obj);

/* Release one lease per key (of two objects under one key, the older first):
 * 0, or KVCD_ENOTFOUND. */
void kvcd_zc_release(kvcd_zc_t *zc, kvcd_zc_holder_t *h, const kvcd_key_t *keys, size_t n,
                     int *results);

/* Add "zero_copy": {holders, reserved, reserved_bytes, leases, leased_objects,
 * lease_ms} to status, and zc_reserves, zc_commits, zc_aborts, zc_leases,
 * zc_releases, zc_expired, zc_dropped to its "counters" map. */
void kvcd_zc_status(const kvcd_zc_t *zc, json_t *status);

#endif
