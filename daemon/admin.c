/*
 * admin.c - PING and STATUS: the daemon describing itself.
 *
 * STATUS is one JSON document (docs/PROTOCOL.md §STATUS) built on the loop
 * thread from the same counters every other part updates; nothing here
 * changes state.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "daemon/server_int.h"
#include "protocol/kvcd_err.h"

void kvcd_op_ping(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    kvcd_l1_stats_t st;
    kvcd_ping_t p;
    kvcd_wbuf_t w;

    kvcd_l1_stats(srv->l1, &st);
    p.server = "kvcd " KVCD_VERSION;
    p.proto = KVCD_PROTO_VERSION;
    p.chunk_size = srv->opt->chunk_size;
    p.max_frame = srv->opt->max_frame;
    p.max_keys = srv->opt->max_keys;
    p.max_request = srv->opt->max_request;
    p.l1_capacity = st.capacity;
    p.l1_shm = kvcd_l1_shm_name(srv->l1);
    p.l1_size = kvcd_l1_map_size(srv->l1);
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_ping(&w, call->req.id, &p);
    kvcd_call_reply(call, &w, NULL, 0, NULL, NULL);
}

static const char *state_name(kvcd_state_t s)
{
    switch (s) {
    case KVCD_STATE_RUNNING:
        return "running";
    case KVCD_STATE_DRAINING:
        return "draining";
    case KVCD_STATE_FLUSHING:
        return "flushing";
    case KVCD_STATE_CLOSING:
        return "closing";
    }
    return "?";
}

json_t *kvcd_server_status(kvcd_server_t *srv)
{
    const counters_t *c = &srv->c;
    kvcd_l1_stats_t st;
    json_t *o, *counters, *execs, *a;
    size_t i;

    kvcd_l1_stats(srv->l1, &st);
    o = json_pack(
        "{s:s, s:s, s:f, s:I, s:{s:I, s:I, s:I, s:s, s:f, s:f, s:I}}",
        "server", "kvcd " KVCD_VERSION,
        "state", state_name(srv->state),
        "uptime_s", (double)(uv_now(srv->loop) - srv->start_ms) / 1000.0,
        "inflight", (json_int_t)srv->inflight,
        "l1",
        "capacity", (json_int_t)st.capacity,
        "used", (json_int_t)st.used,
        "objects", (json_int_t)st.objects,
        "eviction_policy", kvcd_options_evict_name(srv->opt->eviction_policy),
        "high_watermark", st.high_watermark,
        "low_watermark", st.low_watermark,
        "largest_free", (json_int_t)st.largest_free);
    if (!o)
        return NULL;
    counters = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I,"
        " s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
        "requests", (json_int_t)c->requests,
        "errors", (json_int_t)c->errors,
        "stores", (json_int_t)c->stores,
        "store_bytes", (json_int_t)c->store_bytes,
        "store_dups", (json_int_t)c->store_dups,
        "store_nospace", (json_int_t)c->store_nospace,
        "lookups", (json_int_t)c->lookups,
        "lookup_keys", (json_int_t)c->lookup_keys,
        "lookup_hits", (json_int_t)c->lookup_hits,
        "loads", (json_int_t)c->loads,
        "load_hits", (json_int_t)c->load_hits,
        "load_misses", (json_int_t)c->load_misses,
        "load_bytes", (json_int_t)c->load_bytes,
        "removes", (json_int_t)c->removes,
        "evictions", (json_int_t)st.evictions,
        "evicted_bytes", (json_int_t)st.evicted_bytes,
        "clears", (json_int_t)c->clears,
        "clear_requests", (json_int_t)c->clear_requests,
        "dropped_replies", (json_int_t)c->dropped_replies,
        "forced_answers", (json_int_t)c->forced_answers,
        "shm_stores", (json_int_t)c->shm_stores,
        "shm_loads", (json_int_t)c->shm_loads);
    json_object_set_new(o, "counters", counters);
    if (srv->bridge)
        json_object_update_new(o, kvcd_bridge_status(srv->bridge)); /* admission, transport */
    kvcd_storage_status(srv->storage, o);
    /* Every executor in one list: copies, then each blocking adapter's. */
    execs = json_array();
    if (srv->copy_exec)
        json_array_append_new(execs, kvcd_exec_json(srv->copy_exec));
    json_array_foreach(json_object_get(o, "l2"), i, a) {
        json_t *e = json_object_get(a, "executor");

        if (e)
            json_array_append(execs, e);
    }
    json_object_set_new(o, "executors", execs);
    kvcd_segtab_status(srv->segs, o);
    json_object_set_new(json_object_get(o, "l1"), "shm_name",
                        json_string(kvcd_l1_shm_name(srv->l1)));
    json_object_set_new(json_object_get(o, "l1"), "shm_size",
                        json_integer((json_int_t)kvcd_l1_map_size(srv->l1)));
    kvcd_zc_status(srv->zc, o);
    json_object_set_new(o, "ops", kvcd_opstats_json(&srv->ops));
    json_object_set_new(o, "latency_le_s", kvcd_hist_bounds_json());
    return o;
}

void kvcd_op_status(call_t *call)
{
    json_t *st = kvcd_server_status(call->srv);
    kvcd_wbuf_t w;

    if (!st)
        return kvcd_call_error(call, KVCD_EINTERNAL, "cannot build status");
    kvcd_wbuf_init(&w);
    kvcd_proto_reply_begin(&w, call->req.id, KVCD_OP_STATUS, 0, NULL, 1);
    kvcd_pack_cstr(&w.pk, "status");
    kvcd_pack_json(&w.pk, st);
    json_decref(st);
    kvcd_call_reply(call, &w, NULL, 0, NULL, NULL);
}
