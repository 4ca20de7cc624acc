/*
 * blake3.c - BLAKE3 hash mode from the specification (see blake3.h).
 *
 * Structure as in the specification: the input is split into 1024-byte
 * chunks; each chunk is compressed block by block (64 bytes) into a chaining
 * value; chaining values are merged pairwise into a binary tree, the stack
 * holding the left subtrees not yet merged (a completed chunk number with k
 * trailing zero bits closes k subtrees). The root node is compressed with
 * ROOT set, once per 64 output bytes with an increasing counter, which gives
 * the extendable output. Words are little-endian.
 */
#include <string.h>

#include "protocol/blake3.h"

enum {
    CHUNK_START = 1 << 0,
    CHUNK_END = 1 << 1,
    PARENT = 1 << 2,
    ROOT = 1 << 3,
};

static const uint32_t IV[8] = {
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
};

static const uint8_t PERM[16] = {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8};

static uint32_t rotr(uint32_t w, unsigned c)
{
    return (w >> c) | (w << (32 - c));
}

static uint32_t load32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void store32(uint8_t *p, uint32_t w)
{
    p[0] = (uint8_t)w;
    p[1] = (uint8_t)(w >> 8);
    p[2] = (uint8_t)(w >> 16);
    p[3] = (uint8_t)(w >> 24);
}

static void g(uint32_t s[16], int a, int b, int c, int d, uint32_t mx, uint32_t my)
{
    s[a] = s[a] + s[b] + mx;
    s[d] = rotr(s[d] ^ s[a], 16);
    s[c] = s[c] + s[d];
    s[b] = rotr(s[b] ^ s[c], 12);
    s[a] = s[a] + s[b] + my;
    s[d] = rotr(s[d] ^ s[a], 8);
    s[c] = s[c] + s[d];
    s[b] = rotr(s[b] ^ s[c], 7);
}

static void round_fn(uint32_t s[16], const uint32_t m[16])
{
    g(s, 0, 4, 8, 12, m[0], m[1]);
    g(s, 1, 5, 9, 13, m[2], m[3]);
    g(s, 2, 6, 10, 14, m[4], m[5]);
    g(s, 3, 7, 11, 15, m[6], m[7]);
    g(s, 0, 5, 10, 15, m[8], m[9]);
    g(s, 1, 6, 11, 12, m[10], m[11]);
    g(s, 2, 7, 8, 13, m[12], m[13]);
    g(s, 3, 4, 9, 14, m[14], m[15]);
}

/* The compression function: all 16 words of output. */
static void compress(const uint32_t cv[8], const uint32_t block[16], uint64_t counter,
                     uint32_t block_len, uint32_t flags, uint32_t out[16])
{
    uint32_t s[16], m[16], t[16];
    int r, i;

    memcpy(s, cv, 8 * sizeof(uint32_t));
    memcpy(s + 8, IV, 4 * sizeof(uint32_t));
    s[12] = (uint32_t)counter;
    s[13] = (uint32_t)(counter >> 32);
    s[14] = block_len;
    s[15] = flags;
    memcpy(m, block, sizeof(m));
    for (r = 0; r < 7; r++) {
        round_fn(s, m);
        if (r == 6)
            break;
        for (i = 0; i < 16; i++)
            t[i] = m[PERM[i]];
        memcpy(m, t, sizeof(m));
    }
    for (i = 0; i < 8; i++) {
        out[i] = s[i] ^ s[i + 8];
        out[i + 8] = s[i + 8] ^ cv[i];
    }
}

static void words_of(const uint8_t block[KVCD_BLAKE3_BLOCK_LEN], uint32_t w[16])
{
    int i;

    for (i = 0; i < 16; i++)
        w[i] = load32(block + 4 * i);
}

/* A node not yet compressed: enough to get its chaining value or, for the
 * root, any number of output blocks. */
typedef struct {
    uint32_t cv[8];
    uint32_t block[16];
    uint64_t counter;
    uint32_t block_len;
    uint32_t flags;
} node_t;

static void node_cv(const node_t *n, uint32_t cv[8])
{
    uint32_t out[16];

    compress(n->cv, n->block, n->counter, n->block_len, n->flags, out);
    memcpy(cv, out, 8 * sizeof(uint32_t));
}

static void parent_node(const uint32_t left[8], const uint32_t right[8], node_t *n)
{
    memcpy(n->cv, IV, sizeof(n->cv));
    memcpy(n->block, left, 8 * sizeof(uint32_t));
    memcpy(n->block + 8, right, 8 * sizeof(uint32_t));
    n->counter = 0;
    n->block_len = KVCD_BLAKE3_BLOCK_LEN;
    n->flags = PARENT;
}

/* ---- chunks ---- */

static void chunk_init(kvcd_blake3_chunk_t *c, uint64_t counter)
{
    memset(c, 0, sizeof(*c));
    memcpy(c->cv, IV, sizeof(c->cv));
    c->chunk_counter = counter;
}

static size_t chunk_len(const kvcd_blake3_chunk_t *c)
{
    return (size_t)c->blocks_compressed * KVCD_BLAKE3_BLOCK_LEN + c->block_len;
}

static uint32_t chunk_start_flag(const kvcd_blake3_chunk_t *c)
{
    return c->blocks_compressed == 0 ? CHUNK_START : 0;
}

/* Add at most what the chunk still holds. A full block is compressed only
 * when more input arrives: the last block of a chunk needs CHUNK_END. */
static void chunk_update(kvcd_blake3_chunk_t *c, const uint8_t *in, size_t len)
{
    uint32_t w[16], out[16];
    size_t take;

    while (len > 0) {
        if (c->block_len == KVCD_BLAKE3_BLOCK_LEN) {
            words_of(c->block, w);
            compress(c->cv, w, c->chunk_counter, KVCD_BLAKE3_BLOCK_LEN,
                     chunk_start_flag(c), out);
            memcpy(c->cv, out, sizeof(c->cv));
            c->blocks_compressed++;
            memset(c->block, 0, sizeof(c->block));
            c->block_len = 0;
        }
        take = KVCD_BLAKE3_BLOCK_LEN - c->block_len;
        if (take > len)
            take = len;
        memcpy(c->block + c->block_len, in, take);
        c->block_len = (uint8_t)(c->block_len + take);
        in += take;
        len -= take;
    }
}

static void chunk_node(const kvcd_blake3_chunk_t *c, node_t *n)
{
    memcpy(n->cv, c->cv, sizeof(n->cv));
    words_of(c->block, n->block);
    n->counter = c->chunk_counter;
    n->block_len = c->block_len;
    n->flags = chunk_start_flag(c) | CHUNK_END;
}

/* ---- the tree ---- */

void kvcd_blake3_init(kvcd_blake3_t *h)
{
    chunk_init(&h->chunk, 0);
    h->cv_stack_len = 0;
}

/* A chunk's chaining value: merge it with the completed left subtrees. */
static void add_chunk_cv(kvcd_blake3_t *h, uint32_t cv[8], uint64_t total_chunks)
{
    node_t n;

    while ((total_chunks & 1) == 0) {
        parent_node(h->cv_stack[--h->cv_stack_len], cv, &n);
        node_cv(&n, cv);
        total_chunks >>= 1;
    }
    memcpy(h->cv_stack[h->cv_stack_len++], cv, 8 * sizeof(uint32_t));
}

void kvcd_blake3_update(kvcd_blake3_t *h, const void *data, size_t len)
{
    const uint8_t *in = data;
    uint32_t cv[8];
    uint64_t total;
    size_t take;
    node_t n;

    while (len > 0) {
        /* A full chunk is finished only when more input arrives: the last
         * chunk may be the root. */
        if (chunk_len(&h->chunk) == KVCD_BLAKE3_CHUNK_LEN) {
            chunk_node(&h->chunk, &n);
            node_cv(&n, cv);
            total = h->chunk.chunk_counter + 1;
            add_chunk_cv(h, cv, total);
            chunk_init(&h->chunk, total);
        }
        take = KVCD_BLAKE3_CHUNK_LEN - chunk_len(&h->chunk);
        if (take > len)
            take = len;
        chunk_update(&h->chunk, in, take);
        in += take;
        len -= take;
    }
}

void kvcd_blake3_final(const kvcd_blake3_t *h, uint8_t *out, size_t outlen)
{
    uint32_t cv[8], words[16];
    uint64_t counter = 0;
    size_t left = h->cv_stack_len, i, take;
    uint8_t block[KVCD_BLAKE3_BLOCK_LEN];
    node_t n;

    chunk_node(&h->chunk, &n);
    while (left > 0) {
        node_cv(&n, cv);
        parent_node(h->cv_stack[--left], cv, &n);
    }
    while (outlen > 0) {
        compress(n.cv, n.block, counter++, n.block_len, n.flags | ROOT, words);
        for (i = 0; i < 16; i++)
            store32(block + 4 * i, words[i]);
        take = outlen < sizeof(block) ? outlen : sizeof(block);
        memcpy(out, block, take);
        out += take;
        outlen -= take;
    }
}

void kvcd_blake3(const void *data, size_t len, uint8_t out[KVCD_BLAKE3_OUT_LEN])
{
    kvcd_blake3_t h;

    kvcd_blake3_init(&h);
    kvcd_blake3_update(&h, data, len);
    kvcd_blake3_final(&h, out, KVCD_BLAKE3_OUT_LEN);
}
