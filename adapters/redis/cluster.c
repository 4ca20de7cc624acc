/*
 * cluster.c - key slots and redirect parsing for the redis adapter's cluster
 * mode (see cluster.h). Pure functions, no state.
 */
#include <stdlib.h>
#include <string.h>

#include "adapters/redis/cluster.h"

uint16_t kvcd_cluster_crc16(const void *buf, size_t len)
{
    /* bitwise: keys are ~100 bytes, a table buys nothing measurable */
    const uint8_t *p = buf;
    uint16_t crc = 0;
    size_t i;
    int b;

    for (i = 0; i < len; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (b = 0; b < 8; b++)
            crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

/* The tag's span: [*s, *e) inside key, or 0 when there is none. */
static int tag(const char *key, size_t len, size_t *s, size_t *e)
{
    const char *o = memchr(key, '{', len), *c;

    if (!o)
        return 0;
    c = memchr(o + 1, '}', len - (size_t)(o + 1 - key));
    if (!c || c == o + 1)
        return 0;
    *s = (size_t)(o + 1 - key);
    *e = (size_t)(c - key);
    return 1;
}

unsigned kvcd_cluster_slot(const char *key, size_t len)
{
    size_t s, e;

    if (tag(key, len, &s, &e))
        return kvcd_cluster_crc16(key + s, e - s) & (KVCD_CLUSTER_SLOTS - 1);
    return kvcd_cluster_crc16(key, len) & (KVCD_CLUSTER_SLOTS - 1);
}

int kvcd_cluster_has_tag(const char *str, size_t len)
{
    size_t s, e;

    return tag(str, len, &s, &e);
}

kvcd_redir_t kvcd_cluster_redirect(const char *s, size_t len, unsigned *slot, char *host,
                                   size_t hostlen, int *port)
{
    kvcd_redir_t kind;
    const char *p, *end = s + len, *colon = NULL, *q;
    unsigned long v = 0;
    size_t hl;

    if (len > 6 && !memcmp(s, "MOVED ", 6)) {
        kind = KVCD_REDIR_MOVED;
        p = s + 6;
    } else if (len > 4 && !memcmp(s, "ASK ", 4)) {
        kind = KVCD_REDIR_ASK;
        p = s + 4;
    } else {
        return KVCD_REDIR_NONE;
    }
    if (p >= end || *p < '0' || *p > '9')
        return KVCD_REDIR_NONE;
    while (p < end && *p >= '0' && *p <= '9') {
        v = v * 10 + (unsigned long)(*p++ - '0');
        if (v >= KVCD_CLUSTER_SLOTS)
            return KVCD_REDIR_NONE;
    }
    if (p >= end || *p++ != ' ')
        return KVCD_REDIR_NONE;
    for (q = p; q < end; q++)
        if (*q == ':')
            colon = q;
    if (!colon || colon + 1 >= end)
        return KVCD_REDIR_NONE;
    hl = (size_t)(colon - p);
    if (hl + 1 > hostlen)
        return KVCD_REDIR_NONE;
    *port = 0;
    for (q = colon + 1; q < end; q++) {
        if (*q < '0' || *q > '9')
            return KVCD_REDIR_NONE;
        *port = *port * 10 + (*q - '0');
        if (*port > 65535)
            return KVCD_REDIR_NONE;
    }
    if (*port == 0)
        return KVCD_REDIR_NONE;
    memcpy(host, p, hl);
    host[hl] = '\0';
    /* "[::1]:7000" as some servers write IPv6 */
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    *slot = (unsigned)v;
    return kind;
}
