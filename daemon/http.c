/*
 * http.c - /metrics, /healthcheck, /livez and /status over libmicrohttpd
 * (see http.h).
 *
 * Threads: libmicrohttpd's (HTTP parsing, the access handler) and the loop
 * thread (everything that reads daemon state). They share only the job queue
 * below, under `mu`. A job moves QUEUED (HTTP thread) -> TAKEN (loop thread,
 * rendering, outside the lock) -> DONE (loop thread, body attached). An HTTP
 * thread that stops waiting unlinks a QUEUED job itself and marks a TAKEN one
 * abandoned, which the loop thread then frees: a job is freed exactly once,
 * by whoever touches it last.
 */
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "daemon/http.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "protocol/kvcd_err.h"

typedef enum { PAGE_METRICS, PAGE_HEALTH, PAGE_LIVE, PAGE_STATUS } page_t;
typedef enum { JOB_QUEUED, JOB_TAKEN, JOB_DONE } job_state_t;

typedef struct job_s {
    struct job_s *next;
    page_t page;
    job_state_t state;
    int abandoned;
    unsigned status;        /* HTTP status */
    char *body;             /* malloc'd */
    size_t len;
} job_t;

struct kvcd_http_s {
    uv_loop_t *loop;
    uv_async_t async;
    kvcd_http_status_fn fn;
    void *data;
    struct MHD_Daemon *d;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* CLOCK_MONOTONIC */
    job_t *head;            /* QUEUED jobs */
    int closing;
};

/* ---- loop thread ---- */

static void set_text(job_t *j, unsigned status, const char *prefix, const char *msg)
{
    j->status = status;
    if (asprintf(&j->body, "%s%s\n", prefix, msg) < 0)
        j->body = NULL;
    j->len = j->body ? strlen(j->body) : 0;
}

static void render(kvcd_http_t *h, job_t *j)
{
    json_t *st = h->fn(h->data);
    char reason[256];

    if (!st) {
        set_text(j, MHD_HTTP_INTERNAL_SERVER_ERROR, "", "cannot build status");
        return;
    }
    switch (j->page) {
    case PAGE_METRICS:
        j->body = kvcd_metrics_render(st, &j->len);
        j->status = j->body ? MHD_HTTP_OK : MHD_HTTP_INTERNAL_SERVER_ERROR;
        break;
    case PAGE_HEALTH:
        if (kvcd_metrics_ready(st, reason, sizeof(reason)))
            set_text(j, MHD_HTTP_OK, "", "ok");
        else
            set_text(j, MHD_HTTP_SERVICE_UNAVAILABLE, "unhealthy: ", reason);
        break;
    case PAGE_LIVE:
        set_text(j, MHD_HTTP_OK, "", "ok");
        break;
    case PAGE_STATUS:
        j->body = json_dumps(st, JSON_COMPACT);
        j->len = j->body ? strlen(j->body) : 0;
        j->status = j->body ? MHD_HTTP_OK : MHD_HTTP_INTERNAL_SERVER_ERROR;
        break;
    }
    json_decref(st);
}

static void async_cb(uv_async_t *a)
{
    kvcd_http_t *h = a->data;
    job_t *list, *j, *next;

    pthread_mutex_lock(&h->mu);
    list = h->head;
    h->head = NULL;
    for (j = list; j; j = j->next)
        j->state = JOB_TAKEN;
    pthread_mutex_unlock(&h->mu);

    for (j = list; j; j = next) {
        next = j->next;
        render(h, j);
        pthread_mutex_lock(&h->mu);
        if (j->abandoned) {
            free(j->body);
            free(j);
        } else {
            j->state = JOB_DONE;
        }
        pthread_mutex_unlock(&h->mu);
    }
    pthread_mutex_lock(&h->mu);
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* ---- libmicrohttpd threads ---- */

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, const char *type,
                               char *body, size_t len, int must_free)
{
    struct MHD_Response *r;
    enum MHD_Result ret;

    r = MHD_create_response_from_buffer(len, body,
                                        must_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (must_free)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result respond_const(struct MHD_Connection *c, unsigned status, const char *msg)
{
    return respond(c, status, "text/plain; charset=utf-8", (char *)msg, strlen(msg), 0);
}

/* Post a job and wait for the loop; the job's body on success. */
static enum MHD_Result serve(kvcd_http_t *h, struct MHD_Connection *c, page_t page)
{
    static const char *const types[] = {
        [PAGE_METRICS] = "text/plain; version=0.0.4; charset=utf-8",
        [PAGE_HEALTH] = "text/plain; charset=utf-8",
        [PAGE_LIVE] = "text/plain; charset=utf-8",
        [PAGE_STATUS] = "application/json",
    };
    job_t *j = calloc(1, sizeof(*j)), **pp;
    struct timespec dl;
    unsigned status;
    char *body;
    size_t len;
    int rc = 0;

    if (!j)
        return respond_const(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    j->page = page;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += KVCD_HTTP_LOOP_TIMEOUT_MS / 1000;
    dl.tv_nsec += (long)(KVCD_HTTP_LOOP_TIMEOUT_MS % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }

    pthread_mutex_lock(&h->mu);
    if (h->closing) {
        pthread_mutex_unlock(&h->mu);
        free(j);
        return respond_const(c, MHD_HTTP_SERVICE_UNAVAILABLE, "unhealthy: daemon is exiting\n");
    }
    j->next = h->head;
    h->head = j;
    uv_async_send(&h->async);
    while (j->state != JOB_DONE && !h->closing && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&h->cv, &h->mu, &dl);
    if (j->state != JOB_DONE) {
        if (j->state == JOB_QUEUED) {
            for (pp = &h->head; *pp && *pp != j; pp = &(*pp)->next)
                ;
            if (*pp)
                *pp = j->next;
            free(j);
        } else {
            j->abandoned = 1; /* the loop thread frees it */
        }
        rc = h->closing;
        pthread_mutex_unlock(&h->mu);
        return respond_const(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                             rc ? "unhealthy: daemon is exiting\n"
                                : "unhealthy: event loop did not answer within 1000 ms\n");
    }
    pthread_mutex_unlock(&h->mu);
    status = j->status;
    body = j->body;
    len = j->len;
    free(j);
    if (!body)
        return respond_const(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return respond(c, status, types[page], body, len, 1);
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **con_cls)
{
    kvcd_http_t *h = cls;

    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return respond_const(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    /* A GET with a body: answer once it has been read. */
    if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (strcmp(url, "/metrics") == 0)
        return serve(h, c, PAGE_METRICS);
    if (strcmp(url, "/healthcheck") == 0)
        return serve(h, c, PAGE_HEALTH);
    if (strcmp(url, "/livez") == 0)
        return serve(h, c, PAGE_LIVE);
    if (strcmp(url, "/status") == 0)
        return serve(h, c, PAGE_STATUS);
    return respond_const(c, MHD_HTTP_NOT_FOUND,
                         "not found; try /metrics, /healthcheck, /livez or /status\n");
}

/* ---- lifecycle ---- */

static void free_cb(uv_handle_t *a)
{
    kvcd_http_t *h = a->data;

    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    free(h);
}

int kvcd_http_create(uv_loop_t *loop, const char *host, int port, kvcd_http_status_fn fn,
                     void *data, kvcd_http_t **out, char *err, size_t errlen)
{
    kvcd_http_t *h = calloc(1, sizeof(*h));
    struct addrinfo hints, *ai = NULL;
    pthread_condattr_t ca;
    const union MHD_DaemonInfo *info;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO;
    char portstr[16];
    int rc;

    if (!h) {
        snprintf(err, errlen, "--http-port: out of memory");
        return -ENOMEM;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(portstr, sizeof(portstr), "%d", port);
    rc = getaddrinfo(host, portstr, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "--http-host: cannot resolve '%s': %s", host, gai_strerror(rc));
        free(h);
        return KVCD_ECONFIG;
    }
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->loop = loop;
    h->fn = fn;
    h->data = data;
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);

    /* Two threads, so a request waiting for a busy loop does not hold up a
     * probe on another connection. */
    h->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, access_cb, h,
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)2,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)KVCD_HTTP_MAX_CONNECTIONS,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)KVCD_HTTP_IDLE_TIMEOUT_S,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)KVCD_HTTP_HEADER_LIMIT,
                            MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        rc = errno ? -errno : KVCD_EINTERNAL;
        snprintf(err, errlen, "--http-port: cannot listen on %s:%d: %s", host, port,
                 kvcd_strerror(rc));
        pthread_mutex_destroy(&h->mu);
        pthread_cond_destroy(&h->cv);
        free(h);
        return rc;
    }
    info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : port;
    uv_async_init(loop, &h->async, async_cb);
    h->async.data = h;
    uv_unref((uv_handle_t *)&h->async);
    KVCD_LOG(KVCD_LOG_INFO, "http", "serving /metrics, /healthcheck, /livez, /status on %s:%d",
             host, h->port);
    *out = h;
    return 0;
}

void kvcd_http_destroy(kvcd_http_t *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    h->closing = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    /* Joins the threads: nothing sends to the async handle after this. */
    MHD_stop_daemon(h->d);
    /* Jobs still queued belonged to handlers that have returned 503. */
    uv_close((uv_handle_t *)&h->async, free_cb);
    uv_run(h->loop, UV_RUN_NOWAIT);
}
