/*
 * peer.h - who is on the other end of a request, as far as the kernel says.
 *
 * kvcd lets a peer share memory with it only when it knows the peer's user.
 * Over ipc:// ZeroMQ (4.3, on Linux) reads SO_PEERCRED when the connection is
 * accepted and attaches it to every message received on that connection as
 * the "Peer-Address" property, "<host>:<uid>:<gid>:<pid>". Over tcp:// (and
 * any other transport) the property is an address, never credentials, so such
 * a peer is never verified, whatever its address looks like: an IPv6 address
 * can end in three decimal groups.
 *
 * Pure: no state, any thread; the message is only read.
 */
#ifndef KVCD_PEER_H
#define KVCD_PEER_H

#include <stdint.h>
#include <sys/types.h>

#include <zmq.h>

typedef struct {
    int verified;   /* 1: uid, gid and pid come from the kernel (SO_PEERCRED) */
    uid_t uid;
    gid_t gid;
    pid_t pid;      /* the process that connected, in kvcd's PID namespace */
} kvcd_peer_t;

/* The peer that sent msg (any frame of a received message) over a socket bound
 * to `endpoint`. Always fills *out; verified only when endpoint is ipc:// and
 * the property carries the three credential fields. */
void kvcd_peer_from_msg(const zmq_msg_t *msg, const char *endpoint, kvcd_peer_t *out);

/* Parse a "Peer-Address" value of an ipc:// peer: 0 and *out verified, or -1
 * (out->verified = 0). Exposed for tests. */
int kvcd_peer_parse(const char *addr, kvcd_peer_t *out);

#endif
