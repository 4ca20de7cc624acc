/*
 * metrics.c - histograms, per-operation counters, and /metrics rendered from
 * the STATUS document (see metrics.h).
 *
 * Prometheus wants every sample of a family together under one HELP and TYPE,
 * so families with labels (per operation, per adapter) are rendered family by
 * family, walking the document once per family. Names follow Prometheus
 * conventions: the kvcd_ prefix, base units (bytes, seconds), _total on
 * counters. The LMCache lmcache_mp_* metric each one corresponds to is listed
 * in docs/METRICS.md; keep the two in step.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/metrics.h"
#include "protocol/kvcd_err.h"
#include "protocol/proto.h"

static const double bounds[KVCD_HIST_NB] = {KVCD_HIST_BOUNDS};

/* ---- histograms ---- */

void kvcd_hist_observe(kvcd_hist_t *h, uint64_t ns)
{
    double s = (double)ns / 1e9;
    size_t i = 0;

    while (i < KVCD_HIST_NB && s > bounds[i])
        i++;
    h->counts[i]++;
    h->n++;
    h->sum_ns += ns;
}

json_t *kvcd_hist_json(const kvcd_hist_t *h)
{
    json_t *b = json_array();
    uint64_t cum = 0;
    size_t i;

    for (i = 0; i < KVCD_HIST_NB; i++) {
        cum += h->counts[i];
        json_array_append_new(b, json_integer((json_int_t)cum));
    }
    return json_pack("{s:I, s:f, s:o}", "count", (json_int_t)h->n, "sum_s",
                     (double)h->sum_ns / 1e9, "buckets", b);
}

json_t *kvcd_hist_bounds_json(void)
{
    json_t *le = json_array();
    size_t i;

    for (i = 0; i < KVCD_HIST_NB; i++)
        json_array_append_new(le, json_real(bounds[i]));
    return le;
}

/* ---- per-operation counters ---- */

void kvcd_opstats_init(kvcd_opstats_t *s)
{
    memset(s, 0, sizeof(*s));
}

void kvcd_opstats_close(kvcd_opstats_t *s)
{
    size_t i;

    for (i = 0; i < KVCD_OPSTATS_MAX; i++)
        json_decref(s->errors[i]);
    memset(s, 0, sizeof(*s));
}

static size_t op_slot(uint32_t op)
{
    return op < KVCD_OPSTATS_MAX && kvcd_op_name(op) ? op : 0;
}

void kvcd_opstats_observe(kvcd_opstats_t *s, uint32_t op, int err, uint64_t ns)
{
    size_t i = op_slot(op);

    s->requests[i]++;
    kvcd_hist_observe(&s->latency[i], ns);
    if (err) {
        const char *nm = kvcd_errname(err);
        json_t *v;

        if (!s->errors[i] && !(s->errors[i] = json_object()))
            return;
        v = json_object_get(s->errors[i], nm);
        json_object_set_new(s->errors[i], nm, json_integer(v ? json_integer_value(v) + 1 : 1));
    }
}

json_t *kvcd_opstats_json(const kvcd_opstats_t *s)
{
    json_t *o = json_object();
    size_t i;

    for (i = 0; i < KVCD_OPSTATS_MAX; i++) {
        const char *nm = i ? kvcd_op_name((uint32_t)i) : "INVALID";

        if (!nm || !s->requests[i])
            continue;
        json_object_set_new(o, nm,
                            json_pack("{s:I, s:o, s:o}", "requests", (json_int_t)s->requests[i],
                                      "errors",
                                      s->errors[i] ? json_deep_copy(s->errors[i]) : json_object(),
                                      "latency", kvcd_hist_json(&s->latency[i])));
    }
    return o;
}

/* ---- rendering ---- */

/* One STATUS number (integer, real or boolean) as a metric. */
typedef struct {
    const char *group; /* NULL: top level of the document */
    const char *field;
    const char *name;
    const char *type;  /* "counter" or "gauge" */
    const char *help;
} field_metric_t;

/* The unlabelled metrics. The lead's admission budget and executors add rows
 * here (group "admission") and to render_executors below. */
static const field_metric_t scalar_metrics[] = {
    {NULL, "uptime_s", "kvcd_uptime_seconds", "gauge", "Seconds since the daemon started."},
    {NULL, "inflight", "kvcd_inflight_requests", "gauge",
     "Requests received and not yet answered."},
    {"l1", "capacity", "kvcd_l1_capacity_bytes", "gauge", "Size of the L1 memory pool."},
    {"l1", "used", "kvcd_l1_used_bytes", "gauge", "Bytes of L1 held by objects."},
    {"l1", "objects", "kvcd_l1_objects", "gauge", "Objects in L1."},
    {"l1", "largest_free", "kvcd_l1_largest_free_bytes", "gauge",
     "Largest free extent of L1 (fragmentation)."},
    {"l1", "high_watermark", "kvcd_l1_high_watermark_ratio", "gauge",
     "Fraction of L1 above which eviction starts."},
    {"counters", "evictions", "kvcd_l1_evictions_total", "counter", "Objects evicted from L1."},
    {"counters", "evicted_bytes", "kvcd_l1_evicted_bytes_total", "counter",
     "Bytes evicted from L1."},
    {"counters", "stores", "kvcd_stored_objects_total", "counter",
     "Objects stored into L1 by STORE and STORE_SHM."},
    {"counters", "store_bytes", "kvcd_stored_bytes_total", "counter", "Bytes stored into L1."},
    {"counters", "store_dups", "kvcd_store_duplicates_total", "counter",
     "Keys of a STORE already present (kept as they were)."},
    {"counters", "store_nospace", "kvcd_store_nospace_total", "counter",
     "Keys of a STORE refused with ENOSPACE."},
    {"counters", "lookup_keys", "kvcd_lookup_keys_total", "counter", "Keys asked by LOOKUP."},
    {"counters", "lookup_hits", "kvcd_lookup_hit_keys_total", "counter",
     "Keys LOOKUP found in any tier."},
    {"counters", "load_hits", "kvcd_load_hit_keys_total", "counter",
     "Keys LOAD and LOAD_SHM served."},
    {"counters", "load_misses", "kvcd_load_miss_keys_total", "counter",
     "Keys LOAD and LOAD_SHM did not find."},
    {"counters", "load_bytes", "kvcd_loaded_bytes_total", "counter", "Bytes served by LOAD."},
    {"counters", "removes", "kvcd_removed_keys_total", "counter", "Keys REMOVE removed."},
    {"counters", "clears", "kvcd_clears_total", "counter", "CLEAR requests."},
    {"counters", "dropped_replies", "kvcd_dropped_replies_total", "counter",
     "Replies that could not be sent (the peer was gone)."},
    {"counters", "shm_stores", "kvcd_shm_stored_objects_total", "counter",
     "Objects stored through shared-memory segments."},
    {"counters", "shm_loads", "kvcd_shm_loaded_objects_total", "counter",
     "Objects loaded through shared-memory segments."},
    {"counters", "segments_expired", "kvcd_shm_segments_expired_total", "counter",
     "Shared-memory segments whose lease expired."},
    {NULL, "segments", "kvcd_shm_segments", "gauge", "Shared-memory segments registered."},
    {NULL, "segment_bytes", "kvcd_shm_segment_bytes", "gauge",
     "Bytes of shared-memory segments mapped."},
    {"storage", "write_behind_keys", "kvcd_write_behind_keys_total", "counter",
     "Keys written behind to L2 (per adapter)."},
    {"storage", "write_behind_failed", "kvcd_write_behind_failed_keys_total", "counter",
     "Write-behind keys that failed."},
    {"storage", "skip_l1_dropped", "kvcd_skip_l1_dropped_total", "counter",
     "Objects dropped from L1 once in L2 (skip_l1 policy)."},
    {"storage", "prefetch_keys", "kvcd_prefetch_keys_total", "counter",
     "Keys brought from L2 into L1 by LOOKUP."},
    {"storage", "prefetch_bytes", "kvcd_prefetch_bytes_total", "counter",
     "Bytes brought from L2 into L1."},
    {"storage", "prefetch_failed", "kvcd_prefetch_failed_keys_total", "counter",
     "Prefetched keys that failed to load."},
    {"storage", "prefetch_trimmed", "kvcd_prefetch_trimmed_keys_total", "counter",
     "Prefetch keys dropped for want of L1 space."},
    {"storage", "prefetch_inflight", "kvcd_prefetch_inflight", "gauge",
     "LOOKUPs in their prefetch phase."},
    {"storage", "prefetch_queued", "kvcd_prefetch_queued", "gauge",
     "LOOKUPs waiting for a prefetch slot."},
    {"storage", "pins", "kvcd_pins_total", "counter", "Objects pinned by LOOKUP for a LOAD."},
    {"storage", "pins_used", "kvcd_pins_used_total", "counter", "Pins consumed by a LOAD."},
    {"storage", "pins_expired", "kvcd_pins_expired_total", "counter",
     "Pins that expired without a LOAD."},
    {"storage", "pinned_objects", "kvcd_pinned_objects", "gauge", "Objects pinned now."},
    {"storage", "l2_removed", "kvcd_l2_removed_keys_total", "counter",
     "Keys REMOVE removed from L2 adapters."},
    {"storage", "l2_inflight", "kvcd_l2_inflight_operations", "gauge",
     "L2 operations in flight (write-behind, lookups, prefetches, removes)."},
    /* Admission budget (DESIGN.md §2.7), once STATUS reports it. */
    {"admission", "budget_bytes", "kvcd_admission_budget_bytes", "gauge",
     "Bytes unfinished requests and unsent replies may hold."},
    {"admission", "used_bytes", "kvcd_admission_used_bytes", "gauge",
     "Bytes held by unfinished requests and unsent replies."},
    {"admission", "request_bytes", "kvcd_admission_request_bytes", "gauge",
     "Bytes held by requests not yet freed."},
    {"admission", "unsent_bytes", "kvcd_admission_unsent_bytes", "gauge",
     "Bytes of reply frames handed to the socket and not yet sent."},
    {"admission", "paused", "kvcd_admission_paused", "gauge",
     "1 while the socket is not read because the budget is spent."},
    {"admission", "pauses", "kvcd_admission_pauses_total", "counter",
     "Times the socket stopped being read because the budget was full."},
    {NULL, NULL, NULL, NULL, NULL},
};

static int num_of(const json_t *v, double *out)
{
    if (json_is_integer(v))
        *out = (double)json_integer_value(v);
    else if (json_is_real(v))
        *out = json_real_value(v);
    else if (json_is_boolean(v))
        *out = json_is_true(v) ? 1.0 : 0.0;
    else
        return -1;
    return 0;
}

static void put_num(FILE *f, const json_t *v)
{
    double d;

    if (json_is_integer(v))
        fprintf(f, "%" JSON_INTEGER_FORMAT "\n", json_integer_value(v));
    else if (num_of(v, &d) == 0)
        fprintf(f, "%.15g\n", d);
}

static void header(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value, escaped as the exposition format asks. */
static void put_label(FILE *f, const char *k, const char *v, int first)
{
    fprintf(f, "%s%s=\"", first ? "" : ",", k);
    for (; v && *v; v++) {
        if (*v == '\\' || *v == '"')
            fprintf(f, "\\%c", *v);
        else if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
    fputc('"', f);
}

static const json_t *field(const json_t *doc, const char *group, const char *name)
{
    if (group)
        doc = json_object_get(doc, group);
    return json_object_get(doc, name);
}

static void render_scalars(FILE *f, const json_t *st)
{
    const field_metric_t *m;

    for (m = scalar_metrics; m->name; m++) {
        const json_t *v = field(st, m->group, m->field);
        double d;

        if (!v || num_of(v, &d) != 0)
            continue;
        header(f, m->name, m->type, m->help);
        fprintf(f, "%s ", m->name);
        put_num(f, v);
    }
}

/* Samples of one histogram (kvcd_hist_json) with `labels` (already escaped
 * "k=\"v\"," pairs, or ""). */
static void put_hist(FILE *f, const char *name, const char *labels, const json_t *h)
{
    const json_t *b = json_object_get(h, "buckets"), *count = json_object_get(h, "count"),
                 *sum = json_object_get(h, "sum_s");
    int nl = labels[0] ? (int)strlen(labels) - 1 : 0;
    size_t i;

    /* No histogram (an operation never seen): all zero. */
    for (i = 0; i < KVCD_HIST_NB; i++) {
        fprintf(f, "%s_bucket{%sle=\"%g\"} ", name, labels, bounds[i]);
        if (json_array_get(b, i))
            put_num(f, json_array_get(b, i));
        else
            fputs("0\n", f);
    }
    fprintf(f, "%s_bucket{%sle=\"+Inf\"} ", name, labels);
    count ? put_num(f, count) : (void)fputs("0\n", f);
    fprintf(f, "%s_sum{%.*s} ", name, nl, labels);
    sum ? put_num(f, sum) : (void)fputs("0\n", f);
    fprintf(f, "%s_count{%.*s} ", name, nl, labels);
    count ? put_num(f, count) : (void)fputs("0\n", f);
}

/* "k1=\"v1\",k2=\"v2\"," into buf (escaped), for put_hist. */
static void label_pairs(char *buf, size_t len, const char *k1, const char *v1, const char *k2,
                        const char *v2)
{
    FILE *f = fmemopen(buf, len, "w");

    buf[0] = '\0';
    if (!f)
        return;
    put_label(f, k1, v1, 1);
    if (k2)
        put_label(f, k2, v2, 0);
    fputc(',', f);
    fclose(f);
}

/* Operation names in STATUS's "ops" (which lists only those seen); every one
 * is rendered, zero when absent, so each series exists from the start. */
static const char *op_label(size_t i)
{
    return i ? kvcd_op_name((uint32_t)i) : "INVALID";
}

static void render_ops(FILE *f, const json_t *st)
{
    const json_t *ops = json_object_get(st, "ops"), *o, *errs, *n;
    const char *op, *en;
    char lb[256];
    size_t i;

    if (!json_is_object(ops))
        return;
    header(f, "kvcd_requests_total", "counter",
           "Requests answered, by operation (INVALID: header could not be decoded).");
    for (i = 0; i < KVCD_OPSTATS_MAX; i++) {
        if (!(op = op_label(i)))
            continue;
        n = json_object_get(json_object_get(ops, op), "requests");
        fprintf(f, "kvcd_requests_total{");
        put_label(f, "op", op, 1);
        fprintf(f, "} ");
        n ? put_num(f, n) : (void)fputs("0\n", f);
    }
    header(f, "kvcd_request_errors_total", "counter",
           "Requests answered with an error, by operation and error name.");
    json_object_foreach((json_t *)ops, op, o) {
        errs = json_object_get(o, "errors");
        json_object_foreach((json_t *)errs, en, n) {
            fprintf(f, "kvcd_request_errors_total{");
            put_label(f, "op", op, 1);
            put_label(f, "error", en, 0);
            fprintf(f, "} ");
            put_num(f, n);
        }
    }
    header(f, "kvcd_request_duration_seconds", "histogram",
           "Time from receiving a request to handing its reply to ZeroMQ, by operation.");
    for (i = 0; i < KVCD_OPSTATS_MAX; i++) {
        if (!(op = op_label(i)))
            continue;
        label_pairs(lb, sizeof(lb), "op", op, NULL, NULL);
        put_hist(f, "kvcd_request_duration_seconds", lb,
                 json_object_get(json_object_get(ops, op), "latency"));
    }
}

/* Hits and misses by tier: L1 answers every LOOKUP key first, L2 is asked
 * for the keys L1 lacked. */
static void render_tiers(FILE *f, const json_t *st)
{
    const json_t *lk = field(st, "counters", "lookup_keys"), *l1h = field(st, "storage", "l1_hits"),
                 *l2k = field(st, "storage", "l2_lookup_keys"),
                 *l2h = field(st, "storage", "l2_hits");
    double a, b, c, d;

    if (num_of(lk, &a) || num_of(l1h, &b) || num_of(l2k, &c) || num_of(l2h, &d))
        return;
    header(f, "kvcd_tier_hits_total", "counter", "LOOKUP keys found, by the tier that had them.");
    fprintf(f, "kvcd_tier_hits_total{tier=\"l1\"} %.15g\n", b);
    fprintf(f, "kvcd_tier_hits_total{tier=\"l2\"} %.15g\n", d);
    header(f, "kvcd_tier_misses_total", "counter",
           "LOOKUP keys a tier was asked for and did not have.");
    fprintf(f, "kvcd_tier_misses_total{tier=\"l1\"} %.15g\n", a > b ? a - b : 0.0);
    fprintf(f, "kvcd_tier_misses_total{tier=\"l2\"} %.15g\n", c > d ? c - d : 0.0);
}

/* Per-adapter numbers: STATUS field -> metric, labelled adapter and type. */
static const field_metric_t l2_metrics[] = {
    {NULL, "healthy", "kvcd_l2_healthy", "gauge", "1 when the L2 adapter is healthy."},
    {NULL, "failures", "kvcd_l2_failures_total", "counter", "Failed L2 calls."},
    {NULL, "timeouts", "kvcd_l2_timeouts_total", "counter", "L2 calls that passed their deadline."},
    {NULL, "late_completions", "kvcd_l2_late_completions_total", "counter",
     "L2 calls that returned after their deadline."},
    {NULL, "consecutive_failures", "kvcd_l2_consecutive_failures", "gauge",
     "Failed L2 calls in a row (3 make the adapter unhealthy)."},
    {NULL, "inflight", "kvcd_l2_inflight_calls", "gauge", "L2 calls in flight."},
    {NULL, "used_bytes", "kvcd_l2_used_bytes", "gauge", "Bytes the adapter holds."},
    {NULL, "capacity_bytes", "kvcd_l2_capacity_bytes", "gauge", "The adapter's capacity bound."},
    {NULL, NULL, NULL, NULL, NULL},
};

static void adapter_labels(FILE *f, const json_t *a)
{
    put_label(f, "adapter", json_string_value(json_object_get(a, "name")), 1);
    put_label(f, "type", json_string_value(json_object_get(a, "type")), 0);
}

/* A Redis Cluster adapter's view (STATUS l2[i].cluster and its nodes). */
static void render_cluster(FILE *f, const json_t *st)
{
    static const field_metric_t cm[] = {
        {NULL, "have_map", "kvcd_redis_cluster_map_loaded", "gauge",
         "1 when the adapter has a slot map."},
        {NULL, "slots_covered", "kvcd_redis_cluster_slots_covered", "gauge",
         "Hash slots (of 16384) the slot map assigns to a master."},
        {NULL, "masters", "kvcd_redis_cluster_masters", "gauge", "Masters in the slot map."},
        {NULL, "replicas", "kvcd_redis_cluster_replicas", "gauge", "Replicas in the slot map."},
        {NULL, "refreshes", "kvcd_redis_cluster_refreshes_total", "counter",
         "Slot map refreshes."},
        {NULL, "refresh_failures", "kvcd_redis_cluster_refresh_failures_total", "counter",
         "Slot map refreshes that failed."},
        {NULL, "moved", "kvcd_redis_cluster_moved_total", "counter", "MOVED redirects."},
        {NULL, "ask", "kvcd_redis_cluster_ask_total", "counter", "ASK redirects."},
        {NULL, "redirect_failures", "kvcd_redis_cluster_redirect_failures_total", "counter",
         "Keys that failed after max_redirects."},
        {NULL, "cluster_down_errors", "kvcd_redis_cluster_down_errors_total", "counter",
         "CLUSTERDOWN and TRYAGAIN replies."},
        {NULL, NULL, NULL, NULL, NULL},
    };
    const json_t *l2 = json_object_get(st, "l2"), *a, *c, *n, *nodes;
    const field_metric_t *m;
    size_t i, j;
    int any;

    for (m = cm; m->name; m++) {
        any = 0;
        json_array_foreach(l2, i, a) {
            double d;

            c = json_object_get(a, "cluster");
            n = c ? json_object_get(c, m->field) : NULL;
            if (!n || num_of(n, &d) != 0)
                continue;
            if (!any++)
                header(f, m->name, m->type, m->help);
            fprintf(f, "%s{", m->name);
            adapter_labels(f, a);
            fprintf(f, "} ");
            put_num(f, n);
        }
    }
    any = 0;
    json_array_foreach(l2, i, a) {
        if (!json_object_get(a, "cluster"))
            continue;
        nodes = json_object_get(a, "nodes");
        json_array_foreach(nodes, j, n) {
            const char *state = json_string_value(json_object_get(n, "state"));
            const char *role = json_string_value(json_object_get(n, "role"));

            if (!any++)
                header(f, "kvcd_redis_cluster_node_up", "gauge",
                       "1 while kvcd is connected to the cluster node.");
            fprintf(f, "kvcd_redis_cluster_node_up{");
            adapter_labels(f, a);
            put_label(f, "node", json_string_value(json_object_get(n, "address")), 0);
            put_label(f, "role", role ? role : "", 0);
            fprintf(f, "} %d\n", state && strcmp(state, "ready") == 0);
        }
    }
}

static void render_l2(FILE *f, const json_t *st)
{
    const json_t *l2 = json_object_get(st, "l2"), *a, *ops, *o, *n;
    const field_metric_t *m;
    const char *op, *en;
    size_t i;
    char lb[512];
    static const struct {
        const char *field, *name, *help;
    } per_op[] = {
        {"calls", "kvcd_l2_calls_total", "L2 calls, by operation."},
        {"keys", "kvcd_l2_keys_total", "Keys in L2 calls, by operation."},
        {"bytes", "kvcd_l2_bytes_total", "Bytes moved by successful L2 keys, by operation."},
    };

    if (!json_is_array(l2) || json_array_size(l2) == 0)
        return;
    for (m = l2_metrics; m->name; m++) {
        int any = 0;

        json_array_foreach(l2, i, a) {
            double d;

            n = json_object_get(a, m->field);
            if (!n || num_of(n, &d) != 0)
                continue;
            if (!any++)
                header(f, m->name, m->type, m->help);
            fprintf(f, "%s{", m->name);
            adapter_labels(f, a);
            fprintf(f, "} ");
            put_num(f, n);
        }
    }
    for (size_t k = 0; k < sizeof(per_op) / sizeof(per_op[0]); k++) {
        header(f, per_op[k].name, "counter", per_op[k].help);
        json_array_foreach(l2, i, a) {
            ops = json_object_get(a, "ops");
            json_object_foreach((json_t *)ops, op, o) {
                n = json_object_get(o, per_op[k].field);
                if (!n)
                    continue;
                fprintf(f, "%s{", per_op[k].name);
                adapter_labels(f, a);
                put_label(f, "op", op, 0);
                fprintf(f, "} ");
                put_num(f, n);
            }
        }
    }
    header(f, "kvcd_l2_item_errors_total", "counter", "L2 keys that failed, by error name.");
    json_array_foreach(l2, i, a) {
        json_object_foreach(json_object_get(a, "item_errors"), en, n) {
            fprintf(f, "kvcd_l2_item_errors_total{");
            adapter_labels(f, a);
            put_label(f, "error", en, 0);
            fprintf(f, "} ");
            put_num(f, n);
        }
    }
    header(f, "kvcd_l2_call_duration_seconds", "histogram",
           "Time from submitting an L2 call to its results, by adapter and operation.");
    json_array_foreach(l2, i, a) {
        ops = json_object_get(a, "ops");
        json_object_foreach((json_t *)ops, op, o) {
            FILE *lf = fmemopen(lb, sizeof(lb), "w");
            if (!lf)
                continue;
            adapter_labels(lf, a);
            put_label(lf, "op", op, 0);
            fputc(',', lf);
            fclose(lf);
            put_hist(f, "kvcd_l2_call_duration_seconds", lb, json_object_get(o, "latency"));
        }
    }
}

/* Named executors (DESIGN.md §2.7), once STATUS reports them as
 * "executors": [{"name", "threads", "queued", "max_queue", "running",
 * "rejected"}]. */
static void render_executors(FILE *f, const json_t *st)
{
    const json_t *ex = json_object_get(st, "executors"), *e, *n;
    static const field_metric_t em[] = {
        {NULL, "threads", "kvcd_executor_threads", "gauge", "Threads of the executor."},
        {NULL, "running", "kvcd_executor_running_tasks", "gauge", "Tasks running."},
        {NULL, "queued", "kvcd_executor_queued_tasks", "gauge", "Tasks waiting."},
        {NULL, "max_queue", "kvcd_executor_queue_limit", "gauge", "Bound of the queue."},
        {NULL, "rejected", "kvcd_executor_rejected_total", "counter",
         "Tasks refused because the queue was full."},
        {NULL, NULL, NULL, NULL, NULL},
    };
    const field_metric_t *m;
    size_t i;

    if (!json_is_array(ex) || json_array_size(ex) == 0)
        return;
    for (m = em; m->name; m++) {
        header(f, m->name, m->type, m->help);
        json_array_foreach(ex, i, e) {
            n = json_object_get(e, m->field);
            if (!n)
                continue;
            fprintf(f, "%s{", m->name);
            put_label(f, "executor", json_string_value(json_object_get(e, "name")), 1);
            fprintf(f, "} ");
            put_num(f, n);
        }
    }
}

char *kvcd_metrics_render(const json_t *st, size_t *len)
{
    char *buf = NULL, reason[256];
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    const char *server = json_string_value(json_object_get(st, "server"));

    if (!f)
        return NULL;
    header(f, "kvcd_info", "gauge", "Always 1; the version is a label.");
    fprintf(f, "kvcd_info{");
    put_label(f, "version", server ? server : "", 1);
    fprintf(f, "} 1\n");
    header(f, "kvcd_ready", "gauge", "1 when /healthcheck would answer 200.");
    fprintf(f, "kvcd_ready %d\n", kvcd_metrics_ready(st, reason, sizeof(reason)));
    render_scalars(f, st);
    render_ops(f, st);
    render_tiers(f, st);
    render_l2(f, st);
    render_cluster(f, st);
    render_executors(f, st);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

int kvcd_metrics_ready(const json_t *st, char *buf, size_t buflen)
{
    const json_t *l2 = json_object_get(st, "l2"), *a;
    const char *state = json_string_value(json_object_get(st, "state"));
    size_t i;

    if (state && strcmp(state, "running") != 0) {
        snprintf(buf, buflen, "daemon is %s", state);
        return 0;
    }
    json_array_foreach(l2, i, a) {
        if (json_is_false(json_object_get(a, "healthy"))) {
            snprintf(buf, buflen, "L2 %s unhealthy: %" JSON_INTEGER_FORMAT
                     " consecutive failed calls, %" JSON_INTEGER_FORMAT " timeouts",
                     json_string_value(json_object_get(a, "name")),
                     json_integer_value(json_object_get(a, "consecutive_failures")),
                     json_integer_value(json_object_get(a, "timeouts")));
            return 0;
        }
    }
    snprintf(buf, buflen, "ok");
    return 1;
}
