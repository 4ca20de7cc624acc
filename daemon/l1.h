/*
 * l1.h - the L1 memory tier: one arena, an object table, LRU, reference counts.
 *
 * The arena of `capacity` bytes is one named POSIX shared-memory object
 * (kvcd_l1_shm_name, mode 0600) reserved once at create (mapped MAP_SHARED,
 * optionally transparent huge pages and mlock), unlinked at destroy, and
 * carved by kvcd_alloc (alloc.h) into 4 KiB-aligned blocks. Same-host clients
 * of kvcd's user map the object too (zero-copy operations, daemon/zc.h), so
 * an object's offset from kvcd_l1_base is its address for them. Objects are
 * found by their full key (key.h) in a hash table.
 *
 * Life of an object:
 *   kvcd_l1_reserve  -> WRITING, linked in the table, refs = 1 (the writer's).
 *                       Invisible to kvcd_l1_find_ready; a second reserve of the
 *                       same key returns KVCD_EBUSY.
 *   kvcd_l1_publish  -> READY: visible to lookups and loads.
 *   kvcd_l1_unlink   -> out of the table (remove, clear, eviction, aborted write);
 *                       memory is freed when the last reference is dropped.
 * A zero-copy reservation instead starts detached:
 *   kvcd_l1_reserve_detached -> WRITING, refs = 1, not in the table: invisible
 *                       to every lookup, never evicted, freed by its last unref;
 *   kvcd_l1_attach   -> linked and READY at once (a commit).
 * An object with refs > 0 (being sent, being written to L2, pinned by a
 * prefetch) is never freed and never chosen for eviction.
 *
 * Eviction (policy LRU): when an allocation would push used bytes above
 * high_watermark * capacity, or the allocator has no fitting block, the least
 * recently used unreferenced READY objects are unlinked until used bytes fall to
 * low_watermark * capacity and the block fits. The defaults (high 1, low =
 * high) evict only what the allocation needs: exact-capacity LRU. Policy NOOP
 * never evicts.
 *
 * Threading: everything here runs on the loop thread only; no locks. Object data
 * may be read or written by worker threads while the caller holds a reference.
 */
#ifndef KVCD_L1_H
#define KVCD_L1_H

#include <stddef.h>
#include <stdint.h>

#include "../protocol/key.h"

#define KVCD_L1_ALIGN 4096

typedef enum {
    KVCD_EVICT_LRU = 0,
    KVCD_EVICT_NOOP = 1,
} kvcd_evict_policy_t;

typedef enum {
    KVCD_OBJ_WRITING = 0,
    KVCD_OBJ_READY = 1,
} kvcd_obj_state_t;

typedef struct kvcd_l1_s kvcd_l1_t;
typedef struct kvcd_blk_s kvcd_blk_t;
typedef struct kvcd_obj_s kvcd_obj_t;

/* Fields above the line are read-only for users of l1. */
struct kvcd_obj_s {
    kvcd_key_t key;      /* deep copy, owned by the object */
    uint64_t keyhash;    /* kvcd_key_hash(&key) */
    void *data;          /* inside the arena, KVCD_L1_ALIGN aligned */
    size_t size;         /* payload bytes (block may be larger) */
    uint32_t refs;
    uint8_t state;       /* kvcd_obj_state_t */
    uint8_t linked;      /* 1 while in the table */
    /* ---- owned by the storage layer (storage.c); l1 only zeroes them ---- */
    uint8_t prefetched;  /* brought up from L2 by a LOOKUP's prefetch */
    uint32_t pins;       /* LOOKUP pins awaiting a LOAD; while > 0 the object
                            holds one reference for them and sits on the
                            storage layer's pin list */
    uint64_t pin_expire_ms;
    kvcd_obj_t *pin_prev, *pin_next;
    uint32_t wb_inflight; /* write-behind groups holding it, until released */
    /* ---- private to l1.c ---- */
    kvcd_obj_t *hnext;   /* hash chain */
    kvcd_obj_t *lru_prev, *lru_next;
    kvcd_blk_t *blk;
};

typedef struct {
    size_t capacity;          /* bytes; rounded up to KVCD_L1_ALIGN */
    kvcd_evict_policy_t policy;
    double high_watermark;    /* (0, 1]; 0 = default 1.0 */
    double low_watermark;     /* (0, high]; 0 = default: the high watermark */
    int hugepages;            /* try MAP_HUGETLB, fall back with a log line */
    int lock_memory;          /* mlock the arena; failure is an error */
} kvcd_l1_config_t;

typedef struct {
    size_t capacity;
    size_t used;              /* bytes of blocks held by objects (linked or not) */
    size_t objects;           /* linked objects */
    size_t largest_free;      /* largest block that could be allocated now */
    uint64_t evictions;       /* objects evicted */
    uint64_t evicted_bytes;
    double high_watermark;    /* in effect (defaults applied) */
    double low_watermark;
} kvcd_l1_stats_t;

/* Reserve the arena. 0, -errno (shm_open, mmap, mlock), KVCD_ENOSPACE (the
 * shared-memory filesystem has no room for it) or KVCD_ECONFIG (bad
 * watermarks). Removes stale objects of dead kvcds first. */
int kvcd_l1_create(const kvcd_l1_config_t *cfg, kvcd_l1_t **out);

/* Free everything. Objects still referenced are freed too: the caller makes sure
 * no worker thread or ZeroMQ message still uses the arena. */
void kvcd_l1_destroy(kvcd_l1_t *l1);

/* The linked object for key (any state), or NULL. No reference taken.
 * keyhash must be kvcd_key_hash(key). */
kvcd_obj_t *kvcd_l1_find(kvcd_l1_t *l1, const kvcd_key_t *key, uint64_t keyhash);

/* The linked READY object for key, or NULL. Does not touch LRU. */
kvcd_obj_t *kvcd_l1_find_ready(kvcd_l1_t *l1, const kvcd_key_t *key,
                               uint64_t keyhash);

/* Create a WRITING object of `size` bytes (size > 0) for key, linked, refs = 1.
 * Evicts as the policy allows. Returns 0 and *out, KVCD_EBUSY if the key is
 * already linked (in any state), KVCD_ENOSPACE if it cannot fit, -ENOMEM. */
int kvcd_l1_reserve(kvcd_l1_t *l1, const kvcd_key_t *key, uint64_t keyhash,
                    size_t size, kvcd_obj_t **out);

/* WRITING -> READY, and most recently used. The writer's reference stays. */
void kvcd_l1_publish(kvcd_l1_t *l1, kvcd_obj_t *obj);

/* Mark obj most recently used. */
void kvcd_l1_touch(kvcd_l1_t *l1, kvcd_obj_t *obj);

void kvcd_l1_ref(kvcd_obj_t *obj);

/* Drop a reference; frees the object when it reaches 0 and obj is unlinked. */
void kvcd_l1_unref(kvcd_l1_t *l1, kvcd_obj_t *obj);

/* Take obj out of the table (no-op if already out). Freed now if refs == 0,
 * else when the last reference goes. */
void kvcd_l1_unlink(kvcd_l1_t *l1, kvcd_obj_t *obj);

/* Unlink every object; returns how many were linked. */
size_t kvcd_l1_clear(kvcd_l1_t *l1);

void kvcd_l1_stats(const kvcd_l1_t *l1, kvcd_l1_stats_t *out);

/* The arena, for adapters that register memory with a transport. */
void *kvcd_l1_base(const kvcd_l1_t *l1);

/* Iterate linked objects from least to most recently used (NULL starts; returns
 * NULL at the end). The table must not change during the walk. */
kvcd_obj_t *kvcd_l1_lru_next(const kvcd_l1_t *l1, kvcd_obj_t *prev);

/* The shared object's name for shm_open ("/kvcd-<pid>-<n>") and its size. */
const char *kvcd_l1_shm_name(const kvcd_l1_t *l1);
size_t kvcd_l1_map_size(const kvcd_l1_t *l1);

/* Remove the shared object's name now (mappings stay valid; no client can
 * map L1 afterwards). For an exit that cannot free L1; destroy does it too. */
void kvcd_l1_unlink_shm(kvcd_l1_t *l1);

/* Remove the shared objects that kvcds of this user, now dead, left behind.
 * Returns how many. kvcd_l1_create calls it. */
size_t kvcd_l1_remove_stale(void);

/* A WRITING object of `size` bytes for key, NOT linked (invisible, never
 * evicted), refs = 1. Evicts as the policy allows. 0 and *out, KVCD_EDUPLICATE if
 * the key is linked now, KVCD_ENOSPACE, -ENOMEM. Free it with kvcd_l1_unref. */
int kvcd_l1_reserve_detached(kvcd_l1_t *l1, const kvcd_key_t *key, uint64_t keyhash,
                             size_t size, kvcd_obj_t **out);

/* Link a detached object as READY and most recently used; the caller's
 * reference stays. KVCD_EDUPLICATE when the key was linked meanwhile (the object
 * stays detached). */
int kvcd_l1_attach(kvcd_l1_t *l1, kvcd_obj_t *obj);

#endif
