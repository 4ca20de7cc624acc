/*
 * bridge.h - the daemon's socket (kvcd's ZMTP transport, daemon/zmtp.h):
 * whole messages in, replies out, and the admission switch that stops reading
 * when the budget is spent (--max-pending-mb for everyone, --max-unsent-mb
 * per connection).
 *
 * A message arrives as frames (frame 0 is the header) from a connection
 * (kvcd_conn_t, referenced by every request it sent until that request is
 * freed). Replies are sent on the connection a request came from; bulk frames
 * are sent without copying and must stay valid until the `sent` callback.
 *
 * Loop thread only. Every callback runs on the loop thread, never inside the
 * call that caused it unless said so.
 */
#ifndef KVCD_BRIDGE_H
#define KVCD_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "conf/options.h"
#include "daemon/peer.h"

typedef struct kvcd_bridge_s kvcd_bridge_t;
typedef struct kvcd_conn_s kvcd_conn_t;

/* A received frame; release it with kvcd_frame_release (idempotent). */
typedef struct {
    void *data;
    size_t len;
    void *owner;
} kvcd_frame_t;

/* A frame to send: `len` bytes at `data`, not copied. */
typedef struct {
    const void *data;
    size_t len;
} kvcd_bulk_t;

/* A whole message: frames[0] is the header (len 0 if the message had none),
 * frames[1..n) the bulk frames. `dropped` is NULL, or the reason the
 * transport dropped the rest of the message unread (a limit): frames then
 * holds only the header, and the request is answered ETOOLARGE. The callee
 * owns `frames` (a malloc'd array), every frame in it, and one reference on
 * conn. */
typedef void (*kvcd_bridge_msg_cb)(void *data, kvcd_conn_t *conn, kvcd_frame_t *frames,
                                   size_t n, const char *dropped);

/* Bind opt->endpoint. max_frames: frames per message (more: dropped). 0 or a
 * negative code with a message naming the endpoint. */
int kvcd_bridge_create(uv_loop_t *loop, const kvcd_options_t *opt, size_t max_frames,
                       kvcd_bridge_msg_cb cb, void *data, kvcd_bridge_t **out, char *err,
                       size_t errlen);

/* Send [header, bulk...] to conn. hdr is a malloc'd buffer the bridge takes
 * over. `sent(arg)` runs exactly once, on a later loop turn, when the bulk
 * buffers are no longer used (sent or dropped); it may be NULL when nbulk is 0.
 * 0, or a negative code when the reply was dropped (peer gone, socket closed);
 * `sent` runs in both cases. */
int kvcd_bridge_send(kvcd_bridge_t *b, kvcd_conn_t *conn, void *hdr, size_t hdr_len,
                     const kvcd_bulk_t *bulk, size_t nbulk, void (*sent)(void *arg),
                     void *arg);

/* {"admission": {budget_bytes, used_bytes, request_bytes, unsent_bytes,
 * per_connection_unsent_bytes, paused, pauses, connection_pauses,
 * dropped_messages}, "transport": {connections, ...}} (new reference). */
struct json_t;
struct json_t *kvcd_bridge_status(const kvcd_bridge_t *b);

/* cb(data, conn) runs (loop thread) when a connection closes, before its
 * last reference goes: what the peer held for its connection can go. */
void kvcd_bridge_on_close(kvcd_bridge_t *b, void (*cb)(void *data, kvcd_conn_t *conn),
                          void *data);

/* Stop receiving and close the socket; queued replies get up to linger_ms to
 * go out. The bridge's handles are closed; destroy after uv_run. */
void kvcd_bridge_close(kvcd_bridge_t *b, int linger_ms);
void kvcd_bridge_destroy(kvcd_bridge_t *b);

void kvcd_frame_release(kvcd_frame_t *f);

/* Receiving bulk frames in place (optional): the request layer may say where
 * a bulk frame goes before it is read, so that the kernel copies it straight
 * into its final memory (an L1 object) and nothing copies it again.
 *  - place(data, memo, hdr, hdr_len, index, len, &token): frame `index` (>= 1)
 *    of `len` bytes of a message whose header (frame 0, whole) is hdr: return
 *    the buffer to read it into and set *token (non-NULL), or NULL for an
 *    ordinary buffer. *memo is one word per message being received (NULL at
 *    its first call), for what place wants to keep between the frames of one
 *    message (the decoded header); the bridge gives it to forget once the
 *    message is delivered or dropped, or the connection closes;
 *  - unplace(data, token): the frame was released without kvcd_frame_take
 *    (message dropped mid-way, request refused, connection closed): undo;
 *  - forget(data, memo): free a non-NULL memo.
 * All three run on the loop thread, inside the transport's receive path:
 * they must not send, close or pause. A placed frame counts against the
 * admission budget like any other until it is released. */
typedef struct {
    void *(*place)(void *data, void **memo, const void *hdr, size_t hdr_len, size_t index,
                   size_t len, void **token);
    void (*unplace)(void *data, void *token);
    void (*forget)(void *data, void *memo);
    void *data;
} kvcd_bridge_placer_t;

/* Install (copied) or remove (NULL) the placer; before any message arrives. */
void kvcd_bridge_set_placer(kvcd_bridge_t *b, const kvcd_bridge_placer_t *p);

/* The token of a frame received in place, which the caller takes over (a
 * later release then only drops the frame's accounting, not the token); NULL
 * for an ordinary frame or one already taken. f->data stays valid. */
void *kvcd_frame_take(kvcd_frame_t *f);

void kvcd_conn_ref(kvcd_conn_t *c);
void kvcd_conn_unref(kvcd_conn_t *c);
/* Bytes that identify the peer for as long as it is connected (segment
 * ownership). */
const void *kvcd_conn_ident(const kvcd_conn_t *c, size_t *len);
/* Who the peer is, as far as the kernel says (peer.h): verified only for a
 * local peer whose credentials the transport read from the socket. */
void kvcd_conn_peer(const kvcd_conn_t *c, kvcd_peer_t *out);
/* 1 once the transport closed the connection (the close callback has run). */
int kvcd_conn_closed(const kvcd_conn_t *c);

#endif
