/*
 * blake3.h - BLAKE3 in hash mode (no key, no key derivation), written from
 * the BLAKE3 specification: 32-byte digests and extendable output of any
 * length.
 *
 * This is the portable form of the algorithm, one compression at a time: a
 * reference for the LMCache front end's token hashing (LMCache hashes token
 * ids with BLAKE3), checked against the official test vectors and b3sum, not
 * a fast bulk hasher.
 *
 * A kvcd_blake3_t is caller-owned storage, no allocation. Not thread-safe per
 * object; distinct objects on distinct threads are fine. Pure: no I/O.
 */
#ifndef KVCD_BLAKE3_H
#define KVCD_BLAKE3_H

#include <stddef.h>
#include <stdint.h>

#define KVCD_BLAKE3_OUT_LEN 32
#define KVCD_BLAKE3_BLOCK_LEN 64
#define KVCD_BLAKE3_CHUNK_LEN 1024

typedef struct {
    uint32_t cv[8];
    uint64_t chunk_counter;
    uint8_t block[KVCD_BLAKE3_BLOCK_LEN];
    uint8_t block_len;
    uint8_t blocks_compressed;
} kvcd_blake3_chunk_t;

typedef struct {
    kvcd_blake3_chunk_t chunk;
    uint32_t cv_stack[54][8]; /* one per level: 2^54 chunks is more than 2^64 bytes */
    uint8_t cv_stack_len;
} kvcd_blake3_t;

/* Start a hash. */
void kvcd_blake3_init(kvcd_blake3_t *h);

/* Add len bytes (any split of the input gives the same result). */
void kvcd_blake3_update(kvcd_blake3_t *h, const void *data, size_t len);

/* Write outlen bytes of output (32 for the standard digest; any length, the
 * first 32 bytes always the digest). h is not changed: more input may follow
 * and finalize again. */
void kvcd_blake3_final(const kvcd_blake3_t *h, uint8_t *out, size_t outlen);

/* One call: the 32-byte digest of data. */
void kvcd_blake3(const void *data, size_t len, uint8_t out[KVCD_BLAKE3_OUT_LEN]);

#endif
