/*
 * http.h - the operator's HTTP endpoint (--http-host/--http-port): GET
 * /metrics (Prometheus text format 0.0.4), /healthcheck (readiness), /livez
 * (liveness) and /status (the STATUS document as JSON).
 *
 * libmicrohttpd parses HTTP on its own threads. They never touch daemon state:
 * each request posts a job to the loop thread through a uv_async_t and waits on
 * a condition variable, at most KVCD_HTTP_LOOP_TIMEOUT_MS; the loop thread
 * builds the STATUS document (the same function STATUS over ZeroMQ uses),
 * renders the body and hands it back. A loop that does not answer in time gets
 * 503, so the endpoint never blocks the loop and a stuck loop is visible.
 * Connections are bounded in number, header size and idle time, so slow or
 * hostile clients cost the cache nothing.
 */
#ifndef KVCD_HTTP_H
#define KVCD_HTTP_H

#include <stddef.h>

#include <jansson.h>
#include <uv.h>

#define KVCD_HTTP_LOOP_TIMEOUT_MS 1000 /* how long a request waits for the loop */
#define KVCD_HTTP_MAX_CONNECTIONS 64
#define KVCD_HTTP_IDLE_TIMEOUT_S 10    /* a connection silent this long is closed */
#define KVCD_HTTP_HEADER_LIMIT 16384   /* bytes of request line and headers */

typedef struct kvcd_http_s kvcd_http_t;

/* Builds the STATUS document; called on the loop thread; new reference or
 * NULL. */
typedef json_t *(*kvcd_http_status_fn)(void *data);

/* Listen on host:port (port 0: any free port, logged). Loop thread.
 * The async handle it adds does not keep the loop alive. 0, or a negative code
 * with a message naming --http-host/--http-port in err. */
int kvcd_http_create(uv_loop_t *loop, const char *host, int port, kvcd_http_status_fn fn,
                     void *data, kvcd_http_t **out, char *err, size_t errlen);

/* Stop serving (requests waiting get 503), join libmicrohttpd's threads, close
 * the async handle and let its close callback run. Loop thread, after uv_run
 * returned and before the loop is closed. NULL is a no-op. */
void kvcd_http_destroy(kvcd_http_t *h);

#endif
