/*
 * zcops.c - the zero-copy operations of the native protocol: RESERVE,
 * COMMIT, ABORT, MAP, RELEASE and LOOKUP_MAP (docs/PROTOCOL.md, "Zero-copy
 * operations"), over the reservations and leases of daemon/zc.h.
 *
 * Invariants kept here:
 *  - only a peer the kernel vouches for as kvcd's own effective user gets
 *    past the check (KVCD_EPEERUNVERIFIED otherwise: every tcp:// peer): such
 *    a peer could open the 0600 shared object anyway, so offsets into it give
 *    nothing away; anyone else must not learn or touch them;
 *  - a request that breaks a limit changes nothing; per-key outcomes are
 *    results, never request errors;
 *  - MAP waits for objects still being written, as LOAD does (a prefetch
 *    that a LOOKUP started), never longer than --l2-timeout-ms;
 *  - LOOKUP_MAP leases exactly the keys of the prefix it answers: the
 *    prefix ends at the first key it cannot lease (one a STORE is still
 *    writing), so every extent in the reply is held.
 * The daemon moves no payload byte here: clients write and read in place.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/server_int.h"
#include "protocol/kvcd_err.h"

/* kvcd's effective uid: it never changes, and a syscall per request is a
 * measurable part of a small MAP's cost. */
static uid_t own_euid(void)
{
    static uid_t euid;
    static int known;

    if (!known) {
        euid = geteuid();
        known = 1;
    }
    return euid;
}

/* The caller's holder, or the call was answered. */
static kvcd_zc_holder_t *zc_admit(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    kvcd_zc_holder_t *h;
    kvcd_peer_t peer;
    size_t ilen;
    const void *ident;
    char msg[160];

    kvcd_conn_peer(call->conn, &peer);
    if (!peer.verified || peer.uid != own_euid()) {
        if (!peer.verified)
            snprintf(msg, sizeof(msg), "%s needs a local (ipc://) peer whose user the kernel "
                     "reports; use STORE/LOAD frames", kvcd_op_name(call->req.op));
        else
            snprintf(msg, sizeof(msg), "%s: peer uid %u is not kvcd's uid %u; use STORE/LOAD "
                     "frames", kvcd_op_name(call->req.op), (unsigned)peer.uid,
                     (unsigned)own_euid());
        kvcd_call_error(call, KVCD_EPEERUNVERIFIED, msg);
        return NULL;
    }
    ident = kvcd_conn_ident(call->conn, &ilen);
    h = kvcd_zc_holder(srv->zc, ident, ilen, 1);
    if (!h)
        kvcd_call_error(call, -ENOMEM, "out of memory");
    return h;
}

/* The request's keys as an array (borrowing the header). */
static kvcd_key_t *req_keys(call_t *call)
{
    kvcd_key_t *keys = malloc(call->req.nkeys * sizeof(*keys));
    size_t i;

    if (!keys)
        return NULL;
    for (i = 0; i < call->req.nkeys; i++)
        kvcd_req_key(&call->req, i, &keys[i]);
    return keys;
}

static void reply_extents(call_t *call, const uint64_t *offs, const uint64_t *lens)
{
    kvcd_wbuf_t w;

    kvcd_wbuf_init(&w);
    kvcd_proto_encode_extents(&w, call->req.id, call->req.op, call->results, offs, lens,
                              call->req.nkeys);
    kvcd_call_reply(call, &w, NULL, 0, NULL, NULL);
}

void kvcd_op_reserve(call_t *call)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i;
    const char *base = kvcd_l1_base(srv->l1);
    kvcd_zc_holder_t *h;
    uint64_t *offs, *lens;
    kvcd_obj_t *obj;
    kvcd_key_t k;
    char msg[128];

    for (i = 0; i < n; i++)
        if (call->req.lengths[i] > srv->opt->max_frame) {
            snprintf(msg, sizeof(msg), "lengths[%zu] is %" PRIu64 " bytes, max_frame is %" PRIu64,
                     i, call->req.lengths[i], srv->opt->max_frame);
            return kvcd_call_error(call, KVCD_ETOOLARGE, msg);
        }
    if (!(h = zc_admit(call)))
        return;
    call->results = calloc(n, sizeof(int));
    offs = calloc(n, sizeof(uint64_t));
    lens = calloc(n, sizeof(uint64_t));
    if (!call->results || !offs || !lens) {
        free(offs);
        free(lens);
        return kvcd_call_error(call, -ENOMEM, "out of memory");
    }
    for (i = 0; i < n; i++) {
        kvcd_req_key(&call->req, i, &k);
        call->results[i] = kvcd_zc_reserve(srv->zc, h, &k, (size_t)call->req.lengths[i], &obj);
        if (call->results[i] == KVCD_ENOSPACE)
            srv->c.store_nospace++;
        else if (call->results[i] == KVCD_EDUPLICATE || call->results[i] == KVCD_EBUSY)
            srv->c.store_dups++;
        if (call->results[i] != 0)
            continue;
        offs[i] = (uint64_t)((const char *)obj->data - base);
        lens[i] = obj->size;
    }
    reply_extents(call, offs, lens);
    free(offs);
    free(lens);
}

/* COMMIT, ABORT and RELEASE: per-key results only. */
static void keys_op(call_t *call, void (*fn)(kvcd_zc_t *, kvcd_zc_holder_t *,
                                             const kvcd_key_t *, size_t, int *))
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i;
    kvcd_zc_holder_t *h;
    kvcd_key_t *keys;

    if (!(h = zc_admit(call)))
        return;
    call->results = calloc(n, sizeof(int));
    keys = req_keys(call);
    if (!call->results || !keys) {
        free(keys);
        return kvcd_call_error(call, -ENOMEM, "out of memory");
    }
    fn(srv->zc, h, keys, n, call->results);
    if (fn == kvcd_zc_commit)
        for (i = 0; i < n; i++)
            srv->c.stores += call->results[i] == 0;
    free(keys);
    kvcd_call_results(call);
}

void kvcd_op_commit(call_t *call)
{
    keys_op(call, kvcd_zc_commit);
}

void kvcd_op_abort(call_t *call)
{
    keys_op(call, kvcd_zc_abort);
}

void kvcd_op_release(call_t *call)
{
    keys_op(call, kvcd_zc_release);
}

/* Serve a MAP: lease every READY object of the keys. Returns 1 when
 * answered, 0 to wait (a key is still being written and !force). */
static int map_serve(call_t *call, int force)
{
    kvcd_server_t *srv = call->srv;
    size_t n = call->req.nkeys, i, ilen;
    const char *base = kvcd_l1_base(srv->l1);
    const void *ident = kvcd_conn_ident(call->conn, &ilen);
    kvcd_zc_holder_t *h;
    kvcd_obj_t **objs;
    uint64_t *offs, *lens;
    int wait;

    if (kvcd_conn_closed(call->conn)) {
        /* It closed while this MAP waited: a lease now would outlive it. */
        kvcd_call_error(call, KVCD_ECANCELED, "the connection closed");
        return 1;
    }
    objs = kvcd_find_for_load(call, force, &wait);
    if (!objs) {
        if (wait)
            return 0;
        kvcd_call_error(call, -ENOMEM, "out of memory");
        return 1;
    }
    h = kvcd_zc_holder(srv->zc, ident, ilen, 1);
    call->results = calloc(n, sizeof(int));
    offs = calloc(n, sizeof(uint64_t));
    lens = calloc(n, sizeof(uint64_t));
    if (!h || !call->results || !offs || !lens) {
        free(objs);
        free(offs);
        free(lens);
        kvcd_call_error(call, srv->state == KVCD_STATE_RUNNING ? -ENOMEM : KVCD_ESHUTDOWN,
                        "cannot lease");
        return 1;
    }
    for (i = 0; i < n; i++) {
        kvcd_obj_t *obj = objs[i];

        if (!obj) {
            call->results[i] = KVCD_ENOTFOUND;
            srv->c.load_misses++;
            continue;
        }
        call->results[i] = kvcd_zc_lease(srv->zc, h, obj);
        if (call->results[i] != 0)
            continue;
        kvcd_l1_touch(srv->l1, obj);
        /* Like a LOAD: consumes a LOOKUP's pin; a temporary prefetched copy
         * leaves the table but our lease keeps its memory. */
        kvcd_storage_served(srv->storage, obj);
        offs[i] = (uint64_t)((const char *)obj->data - base);
        lens[i] = obj->size;
        srv->c.load_hits++;
    }
    free(objs);
    srv->c.loads++;
    reply_extents(call, offs, lens);
    free(offs);
    free(lens);
    return 1;
}

void kvcd_op_map(call_t *call)
{
    if (!zc_admit(call))
        return;
    if (!map_serve(call, 0))
        kvcd_call_park(call, map_serve);
}

/* The LOOKUP of a LOOKUP_MAP answered: lease the prefix's objects (pinned by
 * the lookup; the lease consumes the pin, as a MAP after a LOOKUP would). */
static void lookup_map_done(void *data, size_t prefix, const uint8_t *present,
                            kvcd_obj_t *const *objs)
{
    call_t *call = data;
    kvcd_server_t *srv = call->srv;
    const char *base = kvcd_l1_base(srv->l1);
    size_t n = call->req.nkeys, i, ilen;
    const void *ident;
    kvcd_zc_holder_t *h;
    uint64_t *offs, *lens;
    kvcd_wbuf_t w;

    call->busy--;
    if (call->answered) {
        kvcd_call_maybe_free(call);
        return;
    }
    if (!present)
        return kvcd_call_error(call, -ENOMEM, "out of memory");
    if (kvcd_conn_closed(call->conn))
        /* It closed while L2 answered: a lease now would outlive it (the
         * pins expire). */
        return kvcd_call_error(call, KVCD_ECANCELED, "the connection closed");
    srv->c.lookups++;
    srv->c.lookup_keys += n;
    for (i = 0; i < n; i++)
        srv->c.lookup_hits += present[i];
    ident = kvcd_conn_ident(call->conn, &ilen);
    h = kvcd_zc_holder(srv->zc, ident, ilen, 1);
    offs = malloc((prefix ? prefix : 1) * sizeof(uint64_t));
    lens = malloc((prefix ? prefix : 1) * sizeof(uint64_t));
    if (!h || !offs || !lens) {
        free(offs);
        free(lens);
        return kvcd_call_error(call, srv->state == KVCD_STATE_RUNNING ? -ENOMEM : KVCD_ESHUTDOWN,
                               "cannot lease");
    }
    for (i = 0; i < prefix; i++) {
        kvcd_obj_t *obj = objs[i];

        /* A key a STORE is still writing ends the prefix here (its pin, and
         * those after it, expire): MAP it once written. */
        if (obj->state != KVCD_OBJ_READY || kvcd_zc_lease(srv->zc, h, obj) != 0)
            break;
        kvcd_storage_served(srv->storage, obj);
        offs[i] = (uint64_t)((const char *)obj->data - base);
        lens[i] = obj->size;
    }
    prefix = i;
    srv->c.loads++;
    srv->c.load_hits += prefix;
    kvcd_wbuf_init(&w);
    kvcd_proto_encode_lookup_map(&w, call->req.id, prefix, offs, lens);
    free(offs);
    free(lens);
    kvcd_call_reply(call, &w, NULL, 0, NULL, NULL);
}

void kvcd_op_lookup_map(call_t *call)
{
    if (!zc_admit(call))
        return;
    call->busy++;
    kvcd_storage_lookup(call->srv->storage, &call->req, lookup_map_done, call);
}
