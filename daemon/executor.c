/*
 * executor.c - named, bounded worker pools (see executor.h).
 *
 * Invariants:
 *  - the queue holds at most max_queue tasks waiting for a thread; a task is
 *    either queued, running on exactly one thread, or on the done list, and
 *    its done callback runs once, on the loop thread, from the async handle;
 *  - `busy` (loop thread only) counts accepted tasks whose done has not run,
 *    so the lifecycle can wait for a pool to become idle;
 *  - the pool's threads touch only the mutex-protected lists and the task
 *    they run; the loop handle is closed before the pool is freed, and a pool
 *    with a thread still inside a task is never freed.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "daemon/executor.h"
#include "daemon/log.h"
#include "protocol/kvcd_err.h"

struct kvcd_exec_s {
    uv_loop_t *loop;
    char name[64];
    uv_async_t async;
    int async_live;            /* under mu: workers may uv_async_send */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    kvcd_task_t *q_head, *q_tail;
    kvcd_task_t *d_head, *d_tail;
    size_t queued, running, max_queue;
    int quiesced, stop;
    size_t nthreads;
    pthread_t *threads;
    /* loop thread */
    size_t busy;
    uint64_t submitted, completed, canceled, rejected;
    uint64_t busy_ns;          /* under mu */
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Under mu. */
static void push_done(kvcd_exec_t *ex, kvcd_task_t *t, int status)
{
    t->status_ = status;
    t->next_ = NULL;
    if (ex->d_tail)
        ex->d_tail->next_ = t;
    else
        ex->d_head = t;
    ex->d_tail = t;
    if (ex->async_live)
        uv_async_send(&ex->async);
}

static void *worker(void *arg)
{
    kvcd_exec_t *ex = arg;
    kvcd_task_t *t;
    uint64_t t0;

    pthread_mutex_lock(&ex->mu);
    for (;;) {
        while (!ex->q_head && !ex->stop)
            pthread_cond_wait(&ex->cv, &ex->mu);
        if (!ex->q_head)
            break;
        t = ex->q_head;
        ex->q_head = t->next_;
        if (!ex->q_head)
            ex->q_tail = NULL;
        ex->queued--;
        ex->running++;
        pthread_mutex_unlock(&ex->mu);
        t0 = now_ns();
        t->work(t);
        pthread_mutex_lock(&ex->mu);
        ex->busy_ns += now_ns() - t0;
        ex->running--;
        push_done(ex, t, 0);
    }
    pthread_mutex_unlock(&ex->mu);
    return NULL;
}

static void async_cb(uv_async_t *h)
{
    kvcd_exec_t *ex = h->data;
    kvcd_task_t *t, *next;

    pthread_mutex_lock(&ex->mu);
    t = ex->d_head;
    ex->d_head = ex->d_tail = NULL;
    pthread_mutex_unlock(&ex->mu);
    for (; t; t = next) {
        next = t->next_;
        ex->busy--;
        if (t->status_ == 0)
            ex->completed++;
        else
            ex->canceled++;
        t->done(t, t->status_);
    }
    if (ex->busy == 0 && ex->async_live)
        uv_unref((uv_handle_t *)&ex->async);
}

int kvcd_exec_create(uv_loop_t *loop, const char *name, int threads, size_t max_queue,
                     kvcd_exec_t **out)
{
    kvcd_exec_t *ex = calloc(1, sizeof(*ex));
    size_t i;
    int rc;

    *out = NULL;
    if (!ex)
        return -ENOMEM;
    if (threads < 1)
        threads = 1;
    ex->threads = calloc((size_t)threads, sizeof(pthread_t));
    if (!ex->threads) {
        free(ex);
        return -ENOMEM;
    }
    ex->loop = loop;
    snprintf(ex->name, sizeof(ex->name), "%s", name);
    ex->max_queue = max_queue;
    pthread_mutex_init(&ex->mu, NULL);
    pthread_cond_init(&ex->cv, NULL);
    rc = uv_async_init(loop, &ex->async, async_cb);
    if (rc != 0)
        goto fail;
    ex->async.data = ex;
    ex->async_live = 1;
    /* An idle pool must not keep the loop alive. */
    uv_unref((uv_handle_t *)&ex->async);
    for (i = 0; i < (size_t)threads; i++) {
        rc = -pthread_create(&ex->threads[i], NULL, worker, ex);
        if (rc != 0)
            break;
        ex->nthreads++;
    }
    if (ex->nthreads == 0) {
        ex->async_live = 0;
        uv_close((uv_handle_t *)&ex->async, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        goto fail;
    }
    KVCD_LOG(KVCD_LOG_DEBUG, "exec", "%s: %zu threads, queue %zu", ex->name, ex->nthreads,
             max_queue);
    *out = ex;
    return 0;

fail:
    pthread_cond_destroy(&ex->cv);
    pthread_mutex_destroy(&ex->mu);
    free(ex->threads);
    free(ex);
    return rc ? rc : -ENOMEM;
}

int kvcd_exec_submit(kvcd_exec_t *ex, kvcd_task_t *t)
{
    pthread_mutex_lock(&ex->mu);
    if (ex->quiesced || !ex->async_live) {
        pthread_mutex_unlock(&ex->mu);
        ex->rejected++;
        return KVCD_ESHUTDOWN;
    }
    if (ex->max_queue && ex->queued >= ex->max_queue) {
        pthread_mutex_unlock(&ex->mu);
        ex->rejected++;
        return KVCD_EQUEUEFULL;
    }
    t->next_ = NULL;
    if (ex->q_tail)
        ex->q_tail->next_ = t;
    else
        ex->q_head = t;
    ex->q_tail = t;
    ex->queued++;
    pthread_cond_signal(&ex->cv);
    pthread_mutex_unlock(&ex->mu);
    if (ex->busy++ == 0)
        uv_ref((uv_handle_t *)&ex->async);
    ex->submitted++;
    return 0;
}

void kvcd_exec_quiesce(kvcd_exec_t *ex)
{
    kvcd_task_t *t, *next;

    pthread_mutex_lock(&ex->mu);
    if (ex->quiesced) {
        pthread_mutex_unlock(&ex->mu);
        return;
    }
    ex->quiesced = 1;
    t = ex->q_head;
    ex->q_head = ex->q_tail = NULL;
    ex->queued = 0;
    for (; t; t = next) {
        next = t->next_;
        push_done(ex, t, KVCD_ECANCELED);
    }
    pthread_mutex_unlock(&ex->mu);
}

size_t kvcd_exec_busy(const kvcd_exec_t *ex)
{
    return ex->busy;
}

const char *kvcd_exec_name(const kvcd_exec_t *ex)
{
    return ex->name;
}

void kvcd_exec_stats(const kvcd_exec_t *ex, kvcd_exec_stats_t *st)
{
    kvcd_exec_t *m = (kvcd_exec_t *)ex;

    pthread_mutex_lock(&m->mu);
    st->queued = ex->queued;
    st->running = ex->running;
    st->busy_ns = ex->busy_ns;
    pthread_mutex_unlock(&m->mu);
    st->threads = ex->nthreads;
    st->max_queue = ex->max_queue;
    st->submitted = ex->submitted;
    st->completed = ex->completed;
    st->canceled = ex->canceled;
    st->rejected = ex->rejected;
}

static int abandoned; /* atomic */

int kvcd_exec_abandoned(void)
{
    return __atomic_load_n(&abandoned, __ATOMIC_RELAXED);
}

static void closed_cb(uv_handle_t *h)
{
    kvcd_exec_t *ex = h->data;
    size_t i;
    int stuck;

    pthread_mutex_lock(&ex->mu);
    ex->stop = 1;
    stuck = ex->running > 0;
    pthread_cond_broadcast(&ex->cv);
    pthread_mutex_unlock(&ex->mu);
    if (stuck) {
        /* The threads may come back and touch ex and their tasks: keep both. */
        KVCD_LOG(KVCD_LOG_WARNING, "exec", "%s: %zu tasks still running at close; abandoned",
                 ex->name, ex->running);
        __atomic_add_fetch(&abandoned, 1, __ATOMIC_RELAXED);
        return;
    }
    for (i = 0; i < ex->nthreads; i++)
        pthread_join(ex->threads[i], NULL);
    pthread_cond_destroy(&ex->cv);
    pthread_mutex_destroy(&ex->mu);
    free(ex->threads);
    free(ex);
}

void kvcd_exec_close(kvcd_exec_t *ex)
{
    if (!ex)
        return;
    kvcd_exec_quiesce(ex);
    pthread_mutex_lock(&ex->mu);
    ex->async_live = 0;
    pthread_mutex_unlock(&ex->mu);
    uv_close((uv_handle_t *)&ex->async, closed_cb);
}

json_t *kvcd_exec_json(const kvcd_exec_t *ex)
{
    kvcd_exec_stats_t es;

    kvcd_exec_stats(ex, &es);
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "name", kvcd_exec_name(ex),
                     "threads", (json_int_t)es.threads, "max_queue", (json_int_t)es.max_queue,
                     "queued", (json_int_t)es.queued, "running", (json_int_t)es.running,
                     "completed", (json_int_t)es.completed, "rejected",
                     (json_int_t)es.rejected, "busy_ms", (json_int_t)(es.busy_ns / 1000000u));
}
