/*
 * metrics.h - latency histograms, per-operation request counters, and the
 * Prometheus text rendering of the STATUS document.
 *
 * The counters live in the structures of their owners (the server's per-op
 * table, each L2 instance's histograms) and are touched on the loop thread
 * only, like everything STATUS reports (DESIGN.md §2.1). /metrics is rendered
 * from the STATUS document itself (kvcd_metrics_render), on the loop thread,
 * so a counter scraped by Prometheus is by construction the value STATUS
 * reports at that moment. The mapping from STATUS fields to metric names is
 * one table in metrics.c (docs/METRICS.md lists it with the LMCache names).
 *
 * Pure functions apart from the loop-thread counters; no locks, no I/O.
 */
#ifndef KVCD_METRICS_H
#define KVCD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Upper bounds of the latency buckets, in seconds (then +Inf). */
#define KVCD_HIST_BOUNDS                                                       \
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,       \
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
#define KVCD_HIST_NB 17

typedef struct {
    uint64_t counts[KVCD_HIST_NB + 1]; /* per bucket, not cumulative; last: +Inf */
    uint64_t n;
    uint64_t sum_ns;
} kvcd_hist_t;

void kvcd_hist_observe(kvcd_hist_t *h, uint64_t ns);

/* {"count": n, "sum_s": x, "buckets": [cumulative counts, one per bound]}
 * (new reference). The +Inf bucket is "count". */
json_t *kvcd_hist_json(const kvcd_hist_t *h);
/* The bucket bounds in seconds, [0.00005, ..., 10] (new reference). */
json_t *kvcd_hist_bounds_json(void);

/* Requests per operation as answered: one observe per reply sent. Index by
 * operation number; 0 holds requests whose header could not be decoded. */
#define KVCD_OPSTATS_MAX 32 /* above the largest operation number (16) */

typedef struct {
    uint64_t requests[KVCD_OPSTATS_MAX];
    kvcd_hist_t latency[KVCD_OPSTATS_MAX];
    json_t *errors[KVCD_OPSTATS_MAX]; /* error name -> count, created lazily */
} kvcd_opstats_t;

void kvcd_opstats_init(kvcd_opstats_t *s);
void kvcd_opstats_close(kvcd_opstats_t *s);
/* One reply to operation `op` (any number; unknown ones count as 0), err 0 or
 * the error it carried, ns from receipt to the reply being handed to ZeroMQ. */
void kvcd_opstats_observe(kvcd_opstats_t *s, uint32_t op, int err, uint64_t ns);
/* {"PING": {"requests": n, "errors": {"EMALFORMED": n}, "latency": hist}, ...}
 * for every operation answered at least once ("INVALID": headers that did not
 * decode) (new reference). */
json_t *kvcd_opstats_json(const kvcd_opstats_t *s);

/* Render a STATUS document as Prometheus text exposition format 0.0.4 into a
 * new malloc'd NUL-terminated buffer (*len bytes without the NUL). NULL when
 * out of memory. Fields missing from the document are left out. */
char *kvcd_metrics_render(const json_t *status, size_t *len);

/* Readiness from a STATUS document: 1 when ready; else 0 with a one-line
 * reason in buf ("shutting down", "L2 #1 (fs) unhealthy: ..."). */
int kvcd_metrics_ready(const json_t *status, char *buf, size_t buflen);

#endif
