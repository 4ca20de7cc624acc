/*
 * executor.h - named, bounded worker pools with completions on the loop thread.
 *
 * nginx's `thread_pool name threads=N max_queue=M`: each pool has its own
 * threads and a bound on queued tasks, so a slow or stuck user (an fs adapter
 * blocked in the kernel) uses up only its own threads, and "queue full" is an
 * immediate result, never a wait. kvcd runs one pool for copies (memcpy
 * between client memory and L1, pre-faulting), one for scans (adapter
 * background tasks, segment registration), and one per blocking adapter.
 *
 * A task is caller-owned memory that must stay valid until its `done` callback
 * has run (libuv's request discipline). `work` runs on a pool thread and may
 * only touch what the task carries; `done` runs on the loop thread, exactly
 * once per accepted task: status 0 after `work`, KVCD_ECANCELED when the task
 * was still queued at quiesce. A task whose `work` never returns never
 * completes; kvcd_exec_busy() tells how many are outstanding, and
 * kvcd_exec_close() never frees a pool whose threads are still inside a task
 * (the process then exits without freeing it).
 */
#ifndef KVCD_EXECUTOR_H
#define KVCD_EXECUTOR_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct kvcd_exec_s kvcd_exec_t;
typedef struct kvcd_task_s kvcd_task_t;

typedef void (*kvcd_task_work_cb)(kvcd_task_t *t);
typedef void (*kvcd_task_done_cb)(kvcd_task_t *t, int status);

struct kvcd_task_s {
    kvcd_task_work_cb work;   /* pool thread */
    kvcd_task_done_cb done;   /* loop thread */
    void *data;               /* the caller's */
    /* private */
    kvcd_task_t *next_;
    int status_;
};

typedef struct {
    uint64_t submitted, completed, canceled, rejected;
    size_t queued, running, threads, max_queue;
    uint64_t busy_ns; /* time threads spent inside tasks */
} kvcd_exec_stats_t;

/* A pool of `threads` threads (>= 1) accepting at most `max_queue` tasks that
 * are waiting for a thread (0: unbounded). `name` is copied (logs, STATUS).
 * Loop thread. 0 or a negative errno. */
int kvcd_exec_create(uv_loop_t *loop, const char *name, int threads, size_t max_queue,
                     kvcd_exec_t **out);

/* Queue t. 0, KVCD_EQUEUEFULL when max_queue tasks already wait, or
 * KVCD_ESHUTDOWN after quiesce; when it fails, t->done is never called.
 * Loop thread. */
int kvcd_exec_submit(kvcd_exec_t *ex, kvcd_task_t *t);

/* Refuse new tasks; tasks still queued complete with KVCD_ECANCELED on a later
 * loop turn. Running tasks finish normally. Idempotent. Loop thread. */
void kvcd_exec_quiesce(kvcd_exec_t *ex);

/* Tasks accepted whose done has not run yet (queued + running + finished but
 * not yet delivered). Loop thread. */
size_t kvcd_exec_busy(const kvcd_exec_t *ex);

const char *kvcd_exec_name(const kvcd_exec_t *ex);
/* {name, threads, max_queue, queued, running, completed, rejected, busy_ms}
 * (new reference). */
struct json_t;
struct json_t *kvcd_exec_json(const kvcd_exec_t *ex);
void kvcd_exec_stats(const kvcd_exec_t *ex, kvcd_exec_stats_t *st);

/* Quiesce, close the loop handle, and free the pool once its threads have
 * left: at once when they are idle, else when its tasks have completed.
 * Completions that have not been delivered when the handle closes are dropped,
 * so call it when kvcd_exec_busy() is 0, or when giving up on the pool at the
 * shutdown deadline. A thread stuck inside a task keeps the pool (and what the
 * task touches) allocated: it is counted by kvcd_exec_abandoned() and the
 * process should exit without freeing what those tasks use. ex must not be used
 * after this call. Loop thread. */
void kvcd_exec_close(kvcd_exec_t *ex);

/* Pools closed with a thread still inside a task (process-wide). */
int kvcd_exec_abandoned(void);

#endif
