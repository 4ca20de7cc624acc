/*
 * format.c - the kvcd object format: names and the trailer, as the fs adapter
 * writes them into files and the redis adapter into values. Pure functions.
 *
 * Name: LMCache's `<model>@0x<kv_rank %08x>@<group %x>@<hash hex>[@<salt>].data`
 * with "/" in the model written "-SEP-". Unlike LMCache the encoding is
 * injective: bytes outside [A-Za-z0-9-_.+=,] become %XX, and a "-" that starts a
 * literal "-SEP" in a model becomes %2D, so every name decodes left to right to
 * exactly one key. Names over 255 bytes keep their first 216 bytes followed by
 * "@~", the 32 hex digits of the key digest and ".data" ('~' is always escaped,
 * so "@~" marks a shortened name and nothing else). The key digest is XXH3-128
 * of the full, unshortened name; with dir_levels its first bytes also name the
 * hash-prefix directories.
 *
 * Trailer (64 bytes after the payload, integers little-endian): magic
 * "KVCDTRLR", u16 version 1, u16 trailer size 64, u8 payload checksum type 1
 * (XXH3-64), u8 key digest type 1 (XXH3-128 of the full name), u16 0, u64
 * payload length, u64 XXH3-64 of the payload, 16 bytes key digest (canonical,
 * big-endian), 8 bytes 0, u64 XXH3-64 of trailer bytes 0..55.
 * docs/ADAPTERS.md has the same, with examples.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <xxhash.h>
/* Payload checksums use libxxhash's run-time CPU dispatch (AVX2/AVX-512: about
 * 4x the baseline SSE2 code on x86-64; same values). Build with
 * -DKVCD_NO_XXH_DISPATCH against a libxxhash built without it. */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(KVCD_NO_XXH_DISPATCH) &&                \
    defined(__has_include)
#if __has_include(<xxh_x86dispatch.h>)
#define XXH_DISPATCH_DISABLE_REPLACE
#include <xxh_x86dispatch.h>
#define payload_hash XXH3_64bits_dispatch
#endif
#endif
#ifndef payload_hash
#define payload_hash XXH3_64bits
#endif

#include "adapters/object/format.h"
#include "protocol/kvcd_err.h"

#define TRL_SIZE KVCD_OBJ_TRL_SIZE
#define TRL_VERSION 1
#define NAME_LIMIT KVCD_OBJ_NAME_LIMIT
#define SHORT_PREFIX 216 /* kept bytes of a shortened name: 216+2+32+5 = 255 */

#define FULL_MAX (KVCD_MODEL_MAX * 5 + KVCD_SALT_MAX * 3 + KVCD_HASH_MAX * 2 + 64)

static const char trl_magic[8] = {'K', 'V', 'C', 'D', 'T', 'R', 'L', 'R'};
static const char hexl[] = "0123456789abcdef";

static bool safe_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '+' || c == '=' || c == ',';
}

/* Escape n bytes of s into o; returns bytes written. In a model "/" becomes
 * "-SEP-" (LMCache); everywhere else a byte outside [A-Za-z0-9-_.+=,] becomes
 * %XX, and in a model a "-" that starts a literal "-SEP" becomes %2D, so the
 * encoding is decodable left to right without ambiguity. */
static size_t esc(char *o, const char *s, size_t n, bool model)
{
    static const char hexu[] = "0123456789ABCDEF";
    size_t i, j = 0;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (model && c == '/') {
            memcpy(o + j, "-SEP-", 5);
            j += 5;
        } else if (safe_char(c) &&
                   !(model && c == '-' && n - i >= 4 && !memcmp(s + i + 1, "SEP", 3))) {
            o[j++] = (char)c;
        } else {
            o[j++] = '%';
            o[j++] = hexu[c >> 4];
            o[j++] = hexu[c & 15];
        }
    }
    return j;
}

/* The path of k's file relative to base_path, and the key digest (XXH3-128 of
 * the full, unshortened file name, canonical byte order). 0 or KVCD_EBADFIELD. */
int kvcd_obj_name(int dir_levels, const kvcd_key_t *k, char *path, uint8_t dig[16])
{
    char full[FULL_MAX];
    size_t n, p = 0, i;
    XXH128_canonical_t c;
    int l;

    if (!k->model || k->model_len == 0 || k->model_len > KVCD_MODEL_MAX ||
        memchr(k->model, '\0', k->model_len))
        return KVCD_EBADFIELD;
    if (k->salt_len > KVCD_SALT_MAX ||
        (k->salt_len && (!k->salt || memchr(k->salt, '\0', k->salt_len))))
        return KVCD_EBADFIELD;
    if (!k->hash || k->hash_len == 0 || k->hash_len > KVCD_HASH_MAX)
        return KVCD_EBADFIELD;

    n = esc(full, k->model, k->model_len, true);
    n += (size_t)sprintf(full + n, "@0x%08" PRIx32 "@%" PRIx32 "@", k->kv_rank, k->group);
    for (i = 0; i < k->hash_len; i++) {
        full[n++] = hexl[k->hash[i] >> 4];
        full[n++] = hexl[k->hash[i] & 15];
    }
    if (k->salt_len) {
        full[n++] = '@';
        n += esc(full + n, k->salt, k->salt_len, false);
    }
    memcpy(full + n, ".data", 5);
    n += 5;

    XXH128_canonicalFromHash(&c, XXH3_128bits(full, n));
    memcpy(dig, c.digest, 16);

    for (l = 0; l < dir_levels; l++) {
        path[p++] = hexl[dig[l] >> 4];
        path[p++] = hexl[dig[l] & 15];
        path[p++] = '/';
    }
    if (n <= NAME_LIMIT) {
        memcpy(path + p, full, n);
        p += n;
    } else {
        /* "@~" never occurs in an unshortened name ('~' is always escaped). */
        memcpy(path + p, full, SHORT_PREFIX);
        p += SHORT_PREFIX;
        path[p++] = '@';
        path[p++] = '~';
        for (i = 0; i < 16; i++) {
            path[p++] = hexl[dig[i] >> 4];
            path[p++] = hexl[dig[i] & 15];
        }
        memcpy(path + p, ".data", 5);
        p += 5;
    }
    path[p] = '\0';
    return 0;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

void kvcd_obj_trl_build(uint8_t *t, const void *buf, size_t len, const uint8_t dig[16])
{
    memset(t, 0, TRL_SIZE);
    memcpy(t, trl_magic, 8);
    t[8] = TRL_VERSION; /* u16 LE version */
    t[10] = TRL_SIZE;   /* u16 LE trailer size */
    t[12] = 1;          /* payload checksum: XXH3-64 */
    t[13] = 1;          /* key digest: XXH3-128 of the full name */
    put64(t + 16, len);
    put64(t + 24, payload_hash(len ? buf : "", len));
    memcpy(t + 32, dig, 16);
    put64(t + 56, XXH3_64bits(t, 56));
}

/* Is t a well-formed trailer for a payload of plen bytes? */
bool kvcd_obj_trl_sane(const uint8_t *t, uint64_t plen)
{
    return !memcmp(t, trl_magic, 8) && t[8] == TRL_VERSION && t[9] == 0 && t[10] == TRL_SIZE &&
           t[11] == 0 && t[12] == 1 && t[13] == 1 && get64(t + 56) == XXH3_64bits(t, 56) &&
           get64(t + 16) == plen;
}

/* Does t vouch for this payload of plen bytes under the key with digest dig? */
bool kvcd_obj_trl_verify(const uint8_t *t, uint64_t plen, const uint8_t dig[16],
                         const void *payload)
{
    return kvcd_obj_trl_sane(t, plen) && !memcmp(t + 32, dig, 16) &&
           get64(t + 24) == payload_hash(plen ? payload : "", (size_t)plen);
}

/* LMCache's name: no escaping but "/" -> "-SEP-"; what it refuses, we cannot
 * name its way. */
int kvcd_obj_name_lmcache(const kvcd_key_t *k, bool legacy, char *out)
{
    char path[FULL_MAX];
    size_t n = 0, i;

    if (!k->model || k->model_len == 0 || k->model_len > KVCD_MODEL_MAX ||
        memchr(k->model, '\0', k->model_len) || memchr(k->model, '@', k->model_len))
        return KVCD_EBADFIELD;
    if (k->salt_len > 128 ||
        (k->salt_len && (!k->salt || memchr(k->salt, '\0', k->salt_len) ||
                         memchr(k->salt, '@', k->salt_len) || memchr(k->salt, '/', k->salt_len) ||
                         memchr(k->salt, '\\', k->salt_len))))
        return KVCD_EBADFIELD;
    if (!k->hash || k->hash_len == 0 || k->hash_len > KVCD_HASH_MAX)
        return KVCD_EBADFIELD;
    if (legacy && (k->group != 0 || k->salt_len))
        return KVCD_EBADFIELD;
    for (i = 0; i < k->model_len; i++) {
        if (k->model[i] == '/') {
            memcpy(path + n, "-SEP-", 5);
            n += 5;
        } else {
            path[n++] = k->model[i];
        }
    }
    if (legacy)
        n += (size_t)sprintf(path + n, "@0x%08" PRIx32 "@", k->kv_rank);
    else
        n += (size_t)sprintf(path + n, "@0x%08" PRIx32 "@%" PRIx32 "@", k->kv_rank, k->group);
    for (i = 0; i < k->hash_len; i++) {
        path[n++] = hexl[k->hash[i] >> 4];
        path[n++] = hexl[k->hash[i] & 15];
    }
    if (k->salt_len) {
        path[n++] = '@';
        memcpy(path + n, k->salt, k->salt_len);
        n += k->salt_len;
    }
    memcpy(path + n, ".data", 6);
    if (n + 5 > KVCD_OBJ_NAME_LIMIT)
        return KVCD_EBADFIELD; /* LMCache's open() would fail: ENAMETOOLONG */
    memcpy(out, path, n + 6);
    return 0;
}

int kvcd_obj_classify(const uint8_t *tail, size_t tail_len, uint64_t fsize)
{
    static const uint8_t fixed[8] = {TRL_VERSION, 0, TRL_SIZE, 0, 1, 1, 0, 0};
    size_t i;

    if (tail_len > fsize)
        tail_len = (size_t)fsize;
    if (fsize >= TRL_SIZE && tail_len >= TRL_SIZE) {
        const uint8_t *t = tail + tail_len - TRL_SIZE;

        if (kvcd_obj_trl_sane(t, fsize - TRL_SIZE))
            return KVCD_OBJ_KVCD;
        /* a trailer with a flipped byte: its fixed fields and length remain */
        if (!memcmp(t + 8, fixed, 8) && get64(t + 16) == fsize - TRL_SIZE)
            return KVCD_OBJ_DAMAGED;
    }
    /* a trailer that is not at the end: the file was cut or appended to */
    for (i = 0; i + 8 <= tail_len; i++)
        if (!memcmp(tail + i, trl_magic, 8))
            return KVCD_OBJ_DAMAGED;
    return KVCD_OBJ_RAW;
}
