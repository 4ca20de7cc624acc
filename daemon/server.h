/*
 * server.h - the kvcd process core: ZeroMQ ROUTER socket bridged into a libuv
 * loop, request dispatch, L1, replies.
 *
 * Everything here runs on the loop thread (DESIGN.md §2.1). Threadpool workers
 * only copy bytes between buffers the loop thread keeps referenced; ZeroMQ's I/O
 * thread only hands finished zero-copy frames back through a queue and a
 * uv_async_t.
 */
#ifndef KVCD_SERVER_H
#define KVCD_SERVER_H

#include <uv.h>

#include "conf/options.h"

typedef struct kvcd_server_s kvcd_server_t;

/* Reserve L1, create the socket and bind it, install SIGTERM/SIGINT handlers.
 * opt must outlive the server. 0 or a negative code, with a message in err. */
int kvcd_server_create(uv_loop_t *loop, const kvcd_options_t *opt,
                       kvcd_server_t **out, char *err, size_t errlen);

/* The STATUS document (new reference, NULL when out of memory): what STATUS
 * over ZeroMQ replies and what the HTTP endpoint renders. Loop thread. */
json_t *kvcd_server_status(kvcd_server_t *srv);

/* Stop accepting requests, answer what is in flight, close the socket; the loop
 * then runs out of handles. Idempotent. */
void kvcd_server_stop(kvcd_server_t *srv);

/* After uv_run returned: wait for queued replies (bounded by the linger),
 * release the last references, free L1. -1 when workers are still inside an
 * adapter or the loop had to be stopped at the shutdown deadline: then nothing
 * is freed and the caller should exit at once (_exit). */
int kvcd_server_destroy(kvcd_server_t *srv);

#endif
