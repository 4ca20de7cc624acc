/*
 * key.h - the object key: (model, kv_rank, chunk hash, group, salt).
 *
 * A kvcd_key_t borrows its bytes (usually from a received msgpack frame); whoever
 * keeps a key past the frame's life copies it (kvcd_l1 does). Two keys are equal
 * only if all five fields are byte-for-byte equal. Pure functions, any thread.
 */
#ifndef KVCD_KEY_H
#define KVCD_KEY_H

#include <stddef.h>
#include <stdint.h>

#define KVCD_MODEL_MAX 1024 /* bytes of a model name */
#define KVCD_SALT_MAX 128   /* bytes of a cache salt */
#define KVCD_HASH_MAX 64    /* bytes of a chunk hash */

typedef struct kvcd_key_s {
    const char *model;    /* not NUL-terminated; model_len bytes */
    const char *salt;     /* may be NULL when salt_len == 0 */
    const uint8_t *hash;
    uint32_t model_len;
    uint32_t salt_len;
    uint32_t hash_len;
    uint32_t kv_rank;
    uint32_t group;
} kvcd_key_t;

/* LMCache's packed rank: one byte each of world size, worker, world size, worker. */
static inline uint32_t kvcd_kv_rank(uint32_t world_size, uint32_t worker_id)
{
    return (world_size & 0xff) << 24 | (worker_id & 0xff) << 16 |
           (world_size & 0xff) << 8 | (worker_id & 0xff);
}

/* 64-bit hash over every field (XXH3), for tables and consistent hashing. */
uint64_t kvcd_key_hash(const kvcd_key_t *k);

/* 1 if a and b name the same object. */
int kvcd_key_equal(const kvcd_key_t *a, const kvcd_key_t *b);

/* Check field bounds and forbidden characters; 0 or KVCD_EBADFIELD with the name of
 * the offending field in *field. */
int kvcd_key_validate(const kvcd_key_t *k, const char **field);

/* Bytes needed by kvcd_key_copy for k's variable parts. */
size_t kvcd_key_extra(const kvcd_key_t *k);

/* Deep-copy src into dst, placing model, salt and hash bytes in buf (at least
 * kvcd_key_extra(src) bytes). dst then borrows from buf. */
void kvcd_key_copy(kvcd_key_t *dst, const kvcd_key_t *src, void *buf);

#endif
