/*
 * cluster.h - the pure parts of the redis adapter's Redis Cluster mode: key
 * slots and redirect replies.
 *
 * A key's slot is CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0, as
 * in Redis's crc16.c) of the key modulo 16384, where a key holding a hash tag
 * (the bytes between the first '{' and the first '}' after it, if there are
 * any) is hashed on the tag alone. kvcd never adds tags, but a model name or
 * key_prefix may contain braces, and the adapter must compute the slot the
 * server computes.
 *
 * Pure; any thread.
 */
#ifndef KVCD_ADAPTER_REDIS_CLUSTER_H
#define KVCD_ADAPTER_REDIS_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#define KVCD_CLUSTER_HIDDEN __attribute__((visibility("hidden")))

#define KVCD_CLUSTER_SLOTS 16384

typedef enum { KVCD_REDIR_NONE = 0, KVCD_REDIR_MOVED = 1, KVCD_REDIR_ASK = 2 } kvcd_redir_t;

KVCD_CLUSTER_HIDDEN uint16_t kvcd_cluster_crc16(const void *buf, size_t len);

/* The slot of key[0..len), hash tags honoured. */
KVCD_CLUSTER_HIDDEN unsigned kvcd_cluster_slot(const char *key, size_t len);

/* Nonzero when s[0..len) has a non-empty hash tag: every key it prefixes
 * shares one slot. */
KVCD_CLUSTER_HIDDEN int kvcd_cluster_has_tag(const char *s, size_t len);

/* Parse an error reply "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>"
 * (host may be an IPv6 address; the port is after the last ':'; an empty
 * host means "the node that answered", returned as ""). Returns the kind, or
 * KVCD_REDIR_NONE when s is some other error or malformed. host gets at most
 * hostlen - 1 bytes, NUL-terminated. */
KVCD_CLUSTER_HIDDEN kvcd_redir_t kvcd_cluster_redirect(const char *s, size_t len, unsigned *slot,
                                                       char *host, size_t hostlen, int *port);

#endif
