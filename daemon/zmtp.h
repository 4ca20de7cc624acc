/*
 * zmtp.h - kvcd's own ZMTP 3.1 server transport: a ROUTER-like server on libuv
 * streams, NULL mechanism only, for libzmq/pyzmq DEALER (and REQ) peers.
 *
 * Why not libzmq: this transport lets the daemon (a) see every frame as it
 * arrives and refuse a message before it is buffered (limits, admission
 * budget), (b) stop reading one connection or all of them (back-pressure that
 * reaches the peer through the kernel buffers), (c) receive bulk frames
 * straight into buffers it chose (the kernel copies once, into the user's
 * memory), and (d) learn an ipc peer's uid/gid/pid (SO_PEERCRED).
 *
 * Threads: every function here is called on the loop thread only, and every
 * callback runs on the loop thread. No function takes a lock; the transport
 * has no threads of its own.
 *
 * Re-entrancy: callbacks never run inside the call that causes them, with one
 * documented exception: kvcd_zconn_close() and kvcd_zsrv_close() give the
 * buffers of a half-received message back through frame_free synchronously,
 * before they return. Inside any callback the user may call any function of
 * this header (send, pause, resume, close, ref/unref, even kvcd_zsrv_close).
 *
 * The process must ignore SIGPIPE (kvcd's main does): sends use write(2).
 *
 * Errors: 0 or a negative code: -errno (libuv's UV_E* are -errno on Linux) or
 * KVCD_E* from protocol/kvcd_err.h.
 */
#ifndef KVCD_ZMTP_H
#define KVCD_ZMTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

typedef struct kvcd_zsrv_s kvcd_zsrv_t;
typedef struct kvcd_zconn_s kvcd_zconn_t;

/* Which limit made the transport drop a message. */
typedef enum {
    KVCD_ZLIMIT_FRAME = 1,   /* one frame was larger than max_frame */
    KVCD_ZLIMIT_FRAMES = 2,  /* the message had more than max_frames frames */
    KVCD_ZLIMIT_MESSAGE = 3, /* the frames added up to more than max_message */
    KVCD_ZLIMIT_ALLOC = 4,   /* frame_alloc returned NULL */
} kvcd_zlimit_t;

/* What on_discard is told about a dropped message. */
typedef struct {
    int reason;          /* KVCD_ETOOLARGE (a limit) or KVCD_ENOSPACE (ALLOC) */
    kvcd_zlimit_t limit; /* which one */
    size_t frame;        /* index of the frame that broke it */
    size_t frames;       /* frames in the whole message, as received */
    uint64_t bytes;      /* payload bytes of the whole message, as received */
} kvcd_zdiscard_t;

/* Who is at the other end of a connection. */
typedef struct {
    int verified;  /* 1: ipc, uid/gid/pid come from SO_PEERCRED; 0: tcp */
    uid_t uid;     /* only when verified */
    gid_t gid;
    pid_t pid;
    char addr[112]; /* tcp: "127.0.0.1:40000" or "[::1]:40000"; ipc: the path */
} kvcd_zcred_t;

/* Callbacks, all on the loop thread. `owner` is an opaque word the allocator
 * returns next to each buffer (for example the L1 object the buffer belongs
 * to); the transport hands it back unchanged. */
typedef struct {
    /* Give the transport a buffer of `len` (> 0) bytes for frame `index`
     * (0 = the first frame of a message). The buffer must stay valid until
     * it is passed back to on_message / on_discard (then the user owns it
     * again) or to frame_free. NULL = "don't keep this message": the rest
     * of the message is read and dropped without buffering, and the message
     * is reported through on_discard. Zero-length frames are never allocated:
     * they are delivered as frames[i] = NULL, lens[i] = 0, owners[i] = NULL.
     * Required. */
    void *(*frame_alloc)(kvcd_zconn_t *c, size_t index, size_t len, void **owner);
    /* Take back a buffer the transport will not deliver (message dropped,
     * connection closed mid-message). Required. */
    void (*frame_free)(kvcd_zconn_t *c, void *buf, size_t len, void *owner);
    /* A peer finished the handshake and can send and receive. Optional.
     * Only connections that got on_connect ever reach the other callbacks. */
    void (*on_connect)(kvcd_zconn_t *c);
    /* One whole message. The arrays are the transport's and valid only during
     * the call; the buffers (frames[i], with owners[i]) are the user's from
     * now on. n >= 1. Required. */
    void (*on_message)(kvcd_zconn_t *c, void **frames, const size_t *lens, void **owners,
                       size_t n);
    /* A message was dropped (d, valid during the call, says why); runs once the message's
     * last frame has been read, so the connection is in sync again. What the
     * transport kept of it is passed like in on_message: frame 0 if it had been
     * received whole (n = 1), else nothing (n = 0); the user owns those
     * buffers from now on. Optional: without it the kept frames go to
     * frame_free. */
    void (*on_discard)(kvcd_zconn_t *c, const kvcd_zdiscard_t *d, void **frames,
                       const size_t *lens, void **owners, size_t n);
    /* The connection is closed: every send callback of it has run, later
     * sends fail with -EPIPE. Runs exactly once per connection that got
     * on_connect. The kvcd_zconn_t stays valid while the user holds a
     * reference. Optional. */
    void (*on_close)(kvcd_zconn_t *c);
    void *data; /* for the user: kvcd_zsrv_data() */
} kvcd_zsrv_cbs_t;

/* Limits and knobs; 0 in any field selects the default in brackets. */
typedef struct {
    size_t max_frame;      /* bytes per frame [1 GiB] */
    size_t max_frames;     /* frames per message [4096] */
    uint64_t max_message;  /* payload bytes per message [4 GiB] */
    size_t stage_size;     /* per-connection staging buffer [64 KiB, min 1 KiB]; it
                              also bounds a command frame (READY, PING) */
    unsigned handshake_ms; /* close a peer that has not finished in time [10000] */
    unsigned max_conns;    /* refuse (accept and close) above this [unlimited] */
    int backlog;           /* listen(2) backlog [128] */
} kvcd_zsrv_opts_t;

/* Counters since create. */
typedef struct {
    uint64_t accepted;      /* connections accepted */
    uint64_t handshakes;    /* of which finished the handshake */
    uint64_t rejected;      /* closed during the handshake (by us or the peer): bad greeting, version,
                               mechanism, socket type, ERROR, timeout, garbage */
    uint64_t protocol_errors; /* closed after the handshake for a protocol error */
    uint64_t refused;       /* closed at once: max_conns reached, or no memory */
    uint64_t heartbeat_timeouts; /* closed because a PING's TTL expired */
    uint64_t pings;         /* PINGs answered with PONG */
    uint64_t messages;      /* messages delivered */
    uint64_t discarded;     /* messages dropped (on_discard) */
    uint64_t bytes_in;      /* payload bytes of delivered messages */
    uint64_t bytes_out;     /* payload bytes of completed sends */
    uint64_t bytes_direct;  /* of bytes_in, read by the kernel straight into
                               frame_alloc's buffers (not via the stage) */
    size_t conns;           /* open connections now (handshaking included) */
} kvcd_zstats_t;

/* Allocate a server on `loop` (borrowed; must outlive the server). `opts`
 * may be NULL (defaults); `cbs` is copied. Nothing listens until
 * kvcd_zsrv_bind. 0, -EINVAL (missing callback) or -ENOMEM. */
int kvcd_zsrv_create(uv_loop_t *loop, const kvcd_zsrv_opts_t *opts, const kvcd_zsrv_cbs_t *cbs,
                     kvcd_zsrv_t **out);

/* Listen on `endpoint` (copied): "ipc://<path>" or "tcp://<host>:<port>"
 * with host an IPv4 literal, "[IPv6 literal]", "localhost" or "*" (all
 * interfaces, IPv6 and IPv4 where the system has IPv6), port 0 = an
 * ephemeral port (kvcd_zsrv_endpoint tells which). ipc: a stale socket file at
 * <path> is removed first (any other kind of file is an error, -EEXIST); the
 * file gets its mode from the umask and is removed at close. Up to 4
 * endpoints per server. Synchronous. 0 or a negative code; `err` (may be
 * NULL) gets a one-line message naming the problem. */
int kvcd_zsrv_bind(kvcd_zsrv_t *srv, const char *endpoint, char *err, size_t errlen);

/* The i-th bound endpoint as a connectable string, with the real port:
 * "tcp://127.0.0.1:40123", "tcp://[::1]:40123", "ipc:///run/kvcd.sock".
 * Points into srv, valid until close; NULL if there is no i-th. */
const char *kvcd_zsrv_endpoint(const kvcd_zsrv_t *srv, size_t i);

/* The bound port of the i-th endpoint (tcp), 0 for ipc or none. */
int kvcd_zsrv_port(const kvcd_zsrv_t *srv, size_t i);

/* cbs->data. */
void *kvcd_zsrv_data(const kvcd_zsrv_t *srv);

/* Stop / restart reading every connection that finished its handshake
 * (see kvcd_zconn_pause). A connection is read only when neither it nor the
 * server is paused. New connections still complete their handshake. */
void kvcd_zsrv_pause_all(kvcd_zsrv_t *srv);
void kvcd_zsrv_resume_all(kvcd_zsrv_t *srv);

void kvcd_zsrv_stats(const kvcd_zsrv_t *srv, kvcd_zstats_t *out);

/* Stop listening (ipc socket files are removed now), stop reading every
 * connection, drop half-received messages (frame_free, synchronously), let
 * each connection flush what it has queued for at most `linger_ms`, then
 * close it (pending sends complete with a negative status, on_close runs).
 * When every handle of the server is closed, cb(srv, data) runs (may be
 * NULL) and the server is freed after it returns; from then on the loop holds
 * no handle of the transport. Call once. Connections the user still holds a
 * reference to stay valid (closed) until their last unref. */
void kvcd_zsrv_close(kvcd_zsrv_t *srv, unsigned linger_ms, void (*cb)(kvcd_zsrv_t *, void *),
                     void *data);

/* Connection: a unique id (per server, from 1, never reused). */
uint64_t kvcd_zconn_id(const kvcd_zconn_t *c);

/* The server a connection belongs to; NULL once on_close has run. */
kvcd_zsrv_t *kvcd_zconn_server(const kvcd_zconn_t *c);

/* Keep the connection object alive beyond on_close (the daemon holds one per
 * request in flight). The transport holds its own reference until on_close
 * has run; the last unref frees the object. */
void kvcd_zconn_ref(kvcd_zconn_t *c);
void kvcd_zconn_unref(kvcd_zconn_t *c);

/* 1 while the connection can send (after on_connect, not closing). */
int kvcd_zconn_is_open(const kvcd_zconn_t *c);

/* A user word per connection (0 at start). */
void kvcd_zconn_set_data(kvcd_zconn_t *c, void *data);
void *kvcd_zconn_data(const kvcd_zconn_t *c);

/* Send one message of n >= 1 frames. The frame bytes are not copied: each
 * frames[i].base must stay valid and unchanged until cb(data, status) runs;
 * the frames array itself may be reused when this returns. 0: cb runs
 * exactly once, later, on the loop thread, with status 0 (all written to the
 * kernel) or < 0 (the connection died or was closed first). < 0 (-EPIPE
 * once the connection is closing or closed, -EINVAL for n == 0, -ENOMEM):
 * nothing was queued and cb will not run. cb may be NULL. */
typedef void (*kvcd_zsend_cb)(void *data, int status);
int kvcd_zconn_send(kvcd_zconn_t *c, const uv_buf_t *frames, size_t n, kvcd_zsend_cb cb,
                    void *data);

/* Payload bytes of sends whose callback has not run yet. */
size_t kvcd_zconn_unsent(const kvcd_zconn_t *c);

/* Stop reading this connection (uv_read_stop) until resume: no more
 * messages or frame_alloc calls for it, the kernel buffers fill and the peer
 * blocks. Bytes already read but not parsed wait in the staging buffer; a
 * resume delivers them from the next loop iteration. A paused connection
 * still sends, answers nothing (its PINGs wait too), and still notices when
 * the peer goes away (checked every 200 ms), then closes. Idempotent. */
void kvcd_zconn_pause(kvcd_zconn_t *c);
void kvcd_zconn_resume(kvcd_zconn_t *c);

/* Who the peer is (see kvcd_zcred_t). 0, or -EPIPE after on_close. */
int kvcd_zconn_peer(const kvcd_zconn_t *c, kvcd_zcred_t *out);

/* The Identity the peer announced in its READY (ZMQ_ROUTING_ID), or NULL
 * with *len = 0 if none. Points into c. */
const void *kvcd_zconn_identity(const kvcd_zconn_t *c, size_t *len);

/* Inside frame_alloc: the frames already received of the message being
 * received (index 0 .. n-1), so the allocator can read frame 0 (the request
 * header) to decide where frame `index` goes. Returns n; the arrays and
 * buffers stay the transport's. Outside frame_alloc the result is
 * meaningless. */
size_t kvcd_zconn_pending(const kvcd_zconn_t *c, void *const **frames, const size_t **lens,
                          void *const **owners);

/* "DEALER" or "REQ". Points into static storage. */
const char *kvcd_zconn_socket_type(const kvcd_zconn_t *c);

/* Close this connection: stop reading, drop a half-received message
 * (frame_free, synchronously), flush queued sends for at most 1 s, then
 * close; on_close runs later. Idempotent; nothing happens after on_close. */
void kvcd_zconn_close(kvcd_zconn_t *c);

/* How a connection's memory (struct and staging buffer) is allocated;
 * calloc. Tests swap it to make accepting fail. Loop thread only. */
extern void *(*kvcd_zmtp_calloc)(size_t n, size_t size);

#endif
