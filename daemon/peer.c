/*
 * peer.c - peer credentials from ZeroMQ message metadata (see peer.h).
 *
 * The value is parsed from its end: the host part before the credentials is
 * whatever libzmq chose ("localhost" in 4.3) and is ignored. Every field must
 * be a plain decimal number that fits its type; anything else is unverified.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/peer.h"

/* The decimal number in s[0..len), at most max. 0 or -1. */
static int decimal(const char *s, size_t len, unsigned long long max,
                   unsigned long long *out)
{
    unsigned long long v = 0;
    size_t i;

    if (len == 0 || len > 19)
        return -1;
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long long)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

int kvcd_peer_parse(const char *addr, kvcd_peer_t *out)
{
    unsigned long long f[3];
    const char *end, *p;
    int i;

    memset(out, 0, sizeof(*out));
    if (!addr)
        return -1;
    end = addr + strlen(addr);
    /* f[2] = pid, f[1] = gid, f[0] = uid, each after a ':' */
    for (i = 2; i >= 0; i--) {
        for (p = end; p > addr && p[-1] != ':'; p--)
            ;
        if (p == addr)
            return -1; /* no ':' before this field */
        if (decimal(p, (size_t)(end - p), i == 2 ? INT_MAX : UINT_MAX - 1, &f[i]) != 0)
            return -1;
        end = p - 1;
    }
    if (f[2] == 0)
        return -1; /* SO_PEERCRED of a socket with no process behind it */
    out->uid = (uid_t)f[0];
    out->gid = (gid_t)f[1];
    out->pid = (pid_t)f[2];
    out->verified = 1;
    return 0;
}

void kvcd_peer_from_msg(const zmq_msg_t *msg, const char *endpoint, kvcd_peer_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!endpoint || strncmp(endpoint, "ipc://", 6) != 0)
        return;
    (void)kvcd_peer_parse(zmq_msg_gets(msg, "Peer-Address"), out);
}
