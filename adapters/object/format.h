/*
 * format.h - the kvcd object format (adapters/object/format.c): object names
 * and the integrity trailer, shared by every adapter that stores kvcd objects.
 *
 * The fs adapter writes an object as a file named kvcd_obj_name(...) holding the
 * payload followed by a KVCD_OBJ_TRL_SIZE-byte trailer (magic, payload length,
 * XXH3-64 of the payload, XXH3-128 digest of the full name). The redis adapter
 * stores the same bytes under the same name without ".data", so one format is
 * written, verified and documented in one place (docs/ADAPTERS.md, fs).
 *
 * Pure functions, any thread.
 */
#ifndef KVCD_ADAPTER_OBJECT_FORMAT_H
#define KVCD_ADAPTER_OBJECT_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol/key.h"

#define KVCD_OBJ_TRL_SIZE 64    /* trailer bytes after the payload */
#define KVCD_OBJ_NAME_LIMIT 255 /* NAME_MAX of Linux filesystems: the longest name */
#define KVCD_OBJ_NAME_MAX 256   /* a name with dir_levels 0, NUL included */
#define KVCD_OBJ_NAME_SUFFIX ".data"

#define KVCD_OBJ_HIDDEN __attribute__((visibility("hidden")))

/* k's file name (with dir_levels hash-prefix directories, "ab/cd/...") and
 * the key digest (XXH3-128 of the full, unshortened name, canonical bytes).
 * path holds at least KVCD_OBJ_NAME_MAX + 3 * dir_levels bytes. 0 or
 * KVCD_EBADFIELD (empty or oversized model or hash, NUL in model or salt). */
KVCD_OBJ_HIDDEN int kvcd_obj_name(int dir_levels, const kvcd_key_t *k, char *path,
                                  uint8_t dig[16]);

/* Write the trailer for len bytes at buf under the key with digest dig into t
 * (KVCD_OBJ_TRL_SIZE bytes). */
KVCD_OBJ_HIDDEN void kvcd_obj_trl_build(uint8_t *t, const void *buf, size_t len,
                                        const uint8_t dig[16]);

/* Is t a well-formed trailer (magic, version, its own checksum) for a payload
 * of plen bytes? Does not read the payload. */
KVCD_OBJ_HIDDEN bool kvcd_obj_trl_sane(const uint8_t *t, uint64_t plen);

/* Does t vouch for these plen payload bytes under the key with digest dig? */
KVCD_OBJ_HIDDEN bool kvcd_obj_trl_verify(const uint8_t *t, uint64_t plen, const uint8_t dig[16],
                                         const void *payload);

/* LMCache 0.5.6's own name for k (fs_l2_adapter.py _object_key_to_filename):
 * `<model, "/" as "-SEP->@0x<kv_rank %08x>@<group %x>@<hash hex>[@<salt>].data`,
 * nothing escaped; legacy = the older 3-field `<model>@0x<kv_rank>@<hash>.data`
 * (only for group 0 and no salt). path holds KVCD_OBJ_NAME_MAX bytes. 0, or
 * KVCD_EBADFIELD when LMCache cannot name k: '@' or NUL in the model, a salt
 * with '@', '/', '\\', NUL or over 128 bytes, a name over 255 bytes, or (legacy)
 * a group or salt. */
KVCD_OBJ_HIDDEN int kvcd_obj_name_lmcache(const kvcd_key_t *k, bool legacy, char *path);

/* What a file of fsize bytes is, from its last min(fsize, KVCD_OBJ_TAIL) bytes:
 * KVCD_OBJ_KVCD (a sane trailer ends it: payload fsize - 64), KVCD_OBJ_DAMAGED
 * (it carries kvcd's trailer signature - the magic anywhere in the tail, or
 * the trailer's fixed bytes and length where a trailer would end it - but no
 * sane trailer ends it: truncated, appended to or flipped), or KVCD_OBJ_RAW
 * (no kvcd trailer: raw bytes as LMCache writes them, payload fsize). */
#define KVCD_OBJ_TAIL 128
enum { KVCD_OBJ_RAW = 0, KVCD_OBJ_KVCD = 1, KVCD_OBJ_DAMAGED = 2 };
KVCD_OBJ_HIDDEN int kvcd_obj_classify(const uint8_t *tail, size_t tail_len, uint64_t fsize);

#endif
