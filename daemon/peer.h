/*
 * peer.h - who is on the other end of a request, as far as the kernel says.
 *
 * kvcd lets a peer share memory with it only when it knows the peer's user.
 * Over ipc:// the transport (daemon/zmtp.c) reads SO_PEERCRED from the Unix
 * socket when the connection is accepted; over tcp:// nothing the peer says
 * about itself is trusted, so such a peer is never verified.
 */
#ifndef KVCD_PEER_H
#define KVCD_PEER_H

#include <stdint.h>
#include <sys/types.h>

typedef struct {
    int verified;   /* 1: uid, gid and pid come from the kernel (SO_PEERCRED) */
    uid_t uid;
    gid_t gid;
    pid_t pid;      /* the process that connected, in kvcd's PID namespace */
} kvcd_peer_t;

#endif
