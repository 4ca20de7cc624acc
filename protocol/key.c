/*
 * key.c - hashing, comparison, validation and copying of object keys.
 */
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#define XXH_INLINE_ALL          /* a LOOKUP of 1000 keys hashes 1000 short keys: */
#include <xxhash.h>             /* inlined, XXH3 of ~40 bytes costs ~40% less */

#include "key.h"
#include "kvcd_err.h"

uint64_t kvcd_key_hash(const kvcd_key_t *k)
{
    uint32_t v[5] = {k->kv_rank, k->group, k->model_len, k->salt_len, k->hash_len};
    uint8_t buf[256], *p = buf;
    size_t total = 20 + (size_t)k->model_len + k->salt_len + k->hash_len;
    XXH3_state_t st;
    int i;

    /* Lengths are hashed too, so ("ab","c") and ("a","bc") differ; and in
     * little-endian order, so every machine places a key on the same node. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    (void)i;
    memcpy(buf, v, 20);
#else
    for (i = 0; i < 20; i++)
        buf[i] = (uint8_t)(v[i / 4] >> (8 * (i % 4)));
#endif
    if (total <= sizeof(buf)) {
        /* The usual key is small: one-shot XXH3 is several times cheaper
         * than the streaming API (a LOOKUP hashes every key). */
        p += 20;
        memcpy(p, k->model, k->model_len);
        p += k->model_len;
        if (k->salt_len)
            memcpy(p, k->salt, k->salt_len);
        p += k->salt_len;
        memcpy(p, k->hash, k->hash_len);
        return XXH3_64bits(buf, total);
    }
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, buf, 20);
    XXH3_64bits_update(&st, k->model, k->model_len);
    if (k->salt_len)
        XXH3_64bits_update(&st, k->salt, k->salt_len);
    XXH3_64bits_update(&st, k->hash, k->hash_len);
    return XXH3_64bits_digest(&st);
}

int kvcd_key_equal(const kvcd_key_t *a, const kvcd_key_t *b)
{
    return a->kv_rank == b->kv_rank && a->group == b->group &&
           a->model_len == b->model_len && a->salt_len == b->salt_len &&
           a->hash_len == b->hash_len &&
           memcmp(a->hash, b->hash, a->hash_len) == 0 &&
           memcmp(a->model, b->model, a->model_len) == 0 &&
           (a->salt_len == 0 || memcmp(a->salt, b->salt, a->salt_len) == 0);
}

/* LMCache forbids these in a salt: they would break file and key names. */
static int salt_bad(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (s[i] == '@' || s[i] == '/' || s[i] == '\\' || s[i] == '\0')
            return 1;
    return 0;
}

int kvcd_key_validate(const kvcd_key_t *k, const char **field)
{
    if (k->model_len == 0 || k->model_len > KVCD_MODEL_MAX ||
        memchr(k->model, '\0', k->model_len)) {
        *field = "model";
        return KVCD_EBADFIELD;
    }
    if (k->salt_len > KVCD_SALT_MAX ||
        (k->salt_len && salt_bad(k->salt, k->salt_len))) {
        *field = "salt";
        return KVCD_EBADFIELD;
    }
    if (k->hash_len == 0 || k->hash_len > KVCD_HASH_MAX) {
        *field = "hashes";
        return KVCD_EBADFIELD;
    }
    return 0;
}

size_t kvcd_key_extra(const kvcd_key_t *k)
{
    return (size_t)k->model_len + k->salt_len + k->hash_len;
}

void kvcd_key_copy(kvcd_key_t *dst, const kvcd_key_t *src, void *buf)
{
    char *p = buf;

    *dst = *src;
    memcpy(p, src->hash, src->hash_len);
    dst->hash = (const uint8_t *)p;
    p += src->hash_len;
    memcpy(p, src->model, src->model_len);
    dst->model = p;
    p += src->model_len;
    if (src->salt_len)
        memcpy(p, src->salt, src->salt_len);
    dst->salt = src->salt_len ? p : NULL;
}
