/*
 * segment.c - registered shared-memory segments (see segment.h).
 *
 * The checks at registration run on the file the daemon actually opened
 * (/proc/self/fd/<ours>), not on the client's path again, so a client cannot
 * swap the fd between the check and the map. They run on a worker (reg_work)
 * that sees only its own reg_t; the table changes on the loop thread only, when
 * the registration completes (reg_after). Registered segments sit in a small
 * hash table by id; owners (routing identities with at least one segment) in a
 * list with the time of their last request, walked by the lease timer.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/log.h"
#include "daemon/segment.h"
#include "protocol/kvcd_err.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

#define NBUCKETS 256
#define NAME_PREFIX "/memfd:kvcd-"
#define OWNER_MAX 255 /* ZeroMQ routing ids are at most 255 bytes */

struct kvcd_seg_owner_s {
    kvcd_seg_owner_t *next;
    uint64_t last_ms;
    size_t nsegs;
    size_t len;
    uint8_t id[OWNER_MAX];
};

struct kvcd_segtab_s {
    uv_loop_t *loop;
    const kvcd_options_t *opt;
    uv_timer_t lease_timer;
    int timer_live;
    kvcd_seg_t *buckets[NBUCKETS];
    kvcd_seg_owner_t *owners;
    uint64_t next_id;
    size_t nregistered;
    size_t mapped_bytes;    /* every mapping, registered or still referenced */
    size_t registered_bytes; /* registered segments only: what the limit bounds */
    size_t live;            /* mappings not yet unmapped */
    size_t npending;        /* registrations on a worker */
    size_t pending_bytes;   /* their sizes: they count against the limit */
    uint64_t expired;
};

#define segfail kvcd_errf

static kvcd_seg_owner_t *owner_find(const kvcd_segtab_t *t, const void *id, size_t len)
{
    kvcd_seg_owner_t *o;

    for (o = t->owners; o; o = o->next)
        if (o->len == len && memcmp(o->id, id, len) == 0)
            return o;
    return NULL;
}

static void owner_drop(kvcd_segtab_t *t, kvcd_seg_owner_t *o)
{
    kvcd_seg_owner_t **pp;

    if (--o->nsegs > 0)
        return;
    for (pp = &t->owners; *pp != o; pp = &(*pp)->next)
        ;
    *pp = o->next;
    free(o);
}

static kvcd_seg_t **bucket_of(kvcd_segtab_t *t, uint64_t id)
{
    return &t->buckets[id % NBUCKETS];
}

static kvcd_seg_t *seg_find(kvcd_segtab_t *t, uint64_t id)
{
    kvcd_seg_t *s;

    for (s = *bucket_of(t, id); s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

static void seg_unmap(kvcd_seg_t *s)
{
    kvcd_segtab_t *t = s->tab;

    munmap(s->base, s->size);
    t->mapped_bytes -= s->size;
    t->live--;
    free(s);
}

void kvcd_seg_unref(kvcd_seg_t *s)
{
    if (--s->refs == 0)
        seg_unmap(s);
}

/* Out of the table (new requests cannot name it), the table's reference gone. */
static void seg_remove(kvcd_segtab_t *t, kvcd_seg_t *s)
{
    kvcd_seg_t **pp;

    for (pp = bucket_of(t, s->id); *pp != s; pp = &(*pp)->next)
        ;
    *pp = s->next;
    s->next = NULL;
    s->registered = 0;
    t->nregistered--;
    t->registered_bytes -= s->size;
    owner_drop(t, s->owner);
    s->owner = NULL;
    kvcd_seg_unref(s);
}

/* Threadpool: map every page of the segment writable in our page tables now,
 * rather than one fault at a time inside the copies. Only the page tables
 * change, never the bytes, so it may run while the client writes. Kernels
 * before 5.14 refuse it; the copies then fault the pages in as they go. */
static void populate_work(uv_work_t *w)
{
    kvcd_seg_t *s = w->data;

    (void)madvise(s->base, s->size, MADV_POPULATE_WRITE);
}

static void populate_after(uv_work_t *w, int status)
{
    kvcd_seg_unref(w->data);
}

static void lease_cb(uv_timer_t *h)
{
    kvcd_segtab_t *t = h->data;
    uint64_t now = uv_now(t->loop), lease = (uint64_t)t->opt->segment_lease_ms;
    kvcd_seg_owner_t *o, *next;
    kvcd_seg_t *s, *snext;
    size_t b, n;

    for (o = t->owners; o; o = next) {
        next = o->next;
        if (now - o->last_ms <= lease)
            continue;
        n = o->nsegs;
        /* Removing the owner's last segment frees the owner: count first. */
        for (b = 0; b < NBUCKETS && n > 0; b++)
            for (s = t->buckets[b]; s && n > 0; s = snext) {
                snext = s->next;
                if (s->owner != o)
                    continue;
                KVCD_LOG(KVCD_LOG_INFO, "segment",
                         "segment %" PRIu64 " (%zu bytes) expired: its client sent nothing "
                         "for %" PRIu64 " ms",
                         s->id, s->size, now - o->last_ms);
                t->expired++;
                n--;
                seg_remove(t, s);
            }
    }
    if (!t->owners)
        uv_timer_stop(&t->lease_timer);
}

int kvcd_segtab_create(uv_loop_t *loop, const kvcd_options_t *opt, kvcd_segtab_t **out)
{
    kvcd_segtab_t *t = calloc(1, sizeof(*t));

    if (!t)
        return -ENOMEM;
    t->loop = loop;
    t->opt = opt;
    t->next_id = 1;
    uv_timer_init(loop, &t->lease_timer);
    t->lease_timer.data = t;
    t->timer_live = 1;
    *out = t;
    return 0;
}

void kvcd_segtab_stop(kvcd_segtab_t *t)
{
    if (!t->timer_live)
        return;
    t->timer_live = 0;
    uv_close((uv_handle_t *)&t->lease_timer, NULL);
}

void kvcd_segtab_destroy(kvcd_segtab_t *t)
{
    kvcd_seg_t *s;
    size_t b;

    if (!t)
        return;
    for (b = 0; b < NBUCKETS; b++)
        while ((s = t->buckets[b]) != NULL)
            seg_remove(t, s);
    if (t->live)
        KVCD_LOG(KVCD_LOG_WARNING, "segment", "%zu segments still referenced at exit",
                 t->live);
    free(t);
}

/* A registration between its request and its completion. */
typedef struct {
    uv_work_t work;
    kvcd_segtab_t *tab;
    kvcd_segtab_register_cb cb;
    void *data;
    uint64_t pid, fd, size;
    uid_t euid;
    size_t owner_len;
    uint8_t owner[OWNER_MAX];
    /* filled by the worker */
    int rc;
    void *base;
    char msg[256];
} reg_t;

/* The peer may share memory with kvcd at all. */
static int peer_ok(const kvcd_peer_t *peer, char *msg, size_t msglen)
{
    if (!peer || !peer->verified)
        return segfail(msg, msglen, KVCD_EPEERUNVERIFIED,
                       "shared memory needs a peer whose user kvcd can verify: connect "
                       "over ipc://, or use frames");
    if (peer->uid != geteuid())
        return segfail(msg, msglen, KVCD_EPEERUNVERIFIED,
                       "peer runs as uid %ju, kvcd as uid %ju: shared memory only with "
                       "kvcd's own user", (uintmax_t)peer->uid, (uintmax_t)geteuid());
    return 0;
}

/* Worker thread: open, check and map the client's descriptor. Touches nothing
 * but r. O_NONBLOCK: an open that would wait (a FIFO, a lease to break) fails
 * at once instead of holding the worker. */
static void reg_work(uv_work_t *w)
{
    reg_t *r = w->data;
    char path[64], target[128];
    struct stat st;
    ssize_t n;
    void *base;
    int mfd, seals;

    r->rc = 0;
    snprintf(path, sizeof(path), "/proc/%" PRIu64 "/fd/%" PRIu64, r->pid, r->fd);
    mfd = open(path, O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (mfd < 0) {
        r->rc = segfail(r->msg, sizeof(r->msg), KVCD_ESEGMENT,
                        "cannot open fd %" PRIu64 " of process %" PRIu64 ": %s", r->fd,
                        r->pid, strerror(errno));
        return;
    }
    /* From here on, look only at the file we hold. */
    snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
    n = readlink(path, target, sizeof(target) - 1);
    if (n < 0 || (target[n] = '\0', strncmp(target, NAME_PREFIX, strlen(NAME_PREFIX)) != 0)) {
        r->rc = segfail(r->msg, sizeof(r->msg), KVCD_ESEGMENT,
                        "not a kvcd memfd segment (memfd_create name must start with \"kvcd-\")");
        goto out;
    }
    if (fstat(mfd, &st) != 0 || !S_ISREG(st.st_mode)) {
        r->rc = segfail(r->msg, sizeof(r->msg), KVCD_ESEGMENT, "not a kvcd memfd segment");
        goto out;
    }
    if (st.st_uid != r->euid) {
        r->rc = segfail(r->msg, sizeof(r->msg), KVCD_ESEGMENT,
                        "segment belongs to another user");
        goto out;
    }
    seals = fcntl(mfd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
        r->rc = segfail(r->msg, sizeof(r->msg), KVCD_ESEGMENT,
                        "segment must be sealed against shrinking (F_SEAL_SHRINK)");
        goto out;
    }
    if ((uint64_t)st.st_size < r->size) {
        r->rc = segfail(r->msg, sizeof(r->msg), KVCD_ESEGMENT,
                        "size: %" PRIu64 " bytes asked, the memfd has %jd", r->size,
                        (intmax_t)st.st_size);
        goto out;
    }
    base = mmap(NULL, (size_t)r->size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (base == MAP_FAILED) {
        r->rc = segfail(r->msg, sizeof(r->msg), KVCD_ESEGMENT, "cannot map the segment: %s",
                        strerror(errno));
        goto out;
    }
    r->base = base;
out:
    close(mfd);
}

/* Loop thread: put the mapped segment in the table, or report why not. */
static void reg_after(uv_work_t *w, int status)
{
    reg_t *r = w->data;
    kvcd_segtab_t *t = r->tab;
    kvcd_seg_owner_t *o = NULL;
    kvcd_seg_t *s = NULL;

    t->npending--;
    t->pending_bytes -= (size_t)r->size;
    if (status != 0 && r->rc == 0) {
        /* Canceled before it ran (uv_cancel): nothing was mapped. */
        r->rc = segfail(r->msg, sizeof(r->msg), KVCD_ECANCELED, "registration canceled");
    }
    if (r->rc != 0)
        goto done;
    s = calloc(1, sizeof(*s));
    o = owner_find(t, r->owner, r->owner_len);
    if (!s || (!o && !(o = calloc(1, sizeof(*o))))) {
        r->rc = segfail(r->msg, sizeof(r->msg), -ENOMEM, "out of memory");
        if (o && o->nsegs == 0)
            free(o);
        free(s);
        munmap(r->base, (size_t)r->size);
        goto done;
    }
    if (o->nsegs == 0) {
        memcpy(o->id, r->owner, r->owner_len);
        o->len = r->owner_len;
        o->next = t->owners;
        t->owners = o;
    }
    o->nsegs++;
    o->last_ms = uv_now(t->loop);
    s->id = t->next_id++;
    s->base = r->base;
    s->size = (size_t)r->size;
    s->registered = 1;
    s->refs = 1;
    s->tab = t;
    s->owner = o;
    s->next = *bucket_of(t, s->id);
    *bucket_of(t, s->id) = s;
    t->nregistered++;
    t->registered_bytes += s->size;
    t->mapped_bytes += s->size;
    t->live++;
    s->refs++; /* the populate work's */
    s->populate.data = s;
    if (uv_queue_work(t->loop, &s->populate, populate_work, populate_after) != 0)
        s->refs--;
    if (t->timer_live && !uv_is_active((uv_handle_t *)&t->lease_timer)) {
        uint64_t every = (uint64_t)t->opt->segment_lease_ms / 4;

        every = every < 10 ? 10 : every > 1000 ? 1000 : every;
        uv_timer_start(&t->lease_timer, lease_cb, every, every);
    }
    KVCD_LOG(KVCD_LOG_DEBUG, "segment", "segment %" PRIu64 " registered: %zu bytes, fd %"
             PRIu64 " of process %" PRIu64, s->id, s->size, r->fd, r->pid);
done:
    r->cb(r->data, r->rc, s && r->rc == 0 ? s->id : 0, r->msg);
    free(r);
}

/* The one place registrations leave the loop thread. A named bounded executor
 * can replace the threadpool here without touching anything else. */
static int offload(kvcd_segtab_t *t, reg_t *r)
{
    r->work.data = r;
    return uv_queue_work(t->loop, &r->work, reg_work, reg_after);
}

int kvcd_segtab_register(kvcd_segtab_t *t, const kvcd_peer_t *peer, const void *owner,
                         size_t owner_len, uint64_t pid, uint64_t fd, uint64_t size,
                         kvcd_segtab_register_cb cb, void *data, char *msg, size_t msglen)
{
    uint64_t max_bytes = (uint64_t)(t->opt->max_segment_gb * (double)(1ull << 30));
    size_t held = t->registered_bytes + t->pending_bytes;
    reg_t *r;
    int rc;

    if ((rc = peer_ok(peer, msg, msglen)) != 0)
        return rc;
    if (pid != (uint64_t)peer->pid)
        return segfail(msg, msglen, KVCD_EPEERUNVERIFIED,
                       "pid: %" PRIu64 " is not the connected process (%ju): a segment must "
                       "be a descriptor of the client's own process",
                       pid, (uintmax_t)peer->pid);
    if (owner_len == 0 || owner_len > OWNER_MAX)
        return segfail(msg, msglen, KVCD_ESEGMENT, "connection has no routing identity");
    if (t->nregistered + t->npending >= (size_t)t->opt->max_segments)
        return segfail(msg, msglen, KVCD_ESEGMENT,
                       "%zu segments are registered, the most allowed (--max-segments)",
                       t->nregistered + t->npending);
    /* Registered (and being registered) bytes, not mapped ones: a segment
     * unregistered a moment ago may stay mapped until its copies finish, and
     * that must not make the client's next registration fail. */
    if (size > SIZE_MAX || size > max_bytes || held > max_bytes - size)
        return segfail(msg, msglen, KVCD_ESEGMENT,
                       "size: %" PRIu64 " more bytes would take the registered segments "
                       "over --max-segment-gb %g GiB (%zu bytes registered)",
                       size, t->opt->max_segment_gb, held);
    r = calloc(1, sizeof(*r));
    if (!r)
        return segfail(msg, msglen, -ENOMEM, "out of memory");
    r->tab = t;
    r->cb = cb;
    r->data = data;
    r->pid = pid;
    r->fd = fd;
    r->size = size;
    r->euid = geteuid();
    r->owner_len = owner_len;
    memcpy(r->owner, owner, owner_len);
    if ((rc = offload(t, r)) != 0) {
        free(r);
        return segfail(msg, msglen, KVCD_EINTERNAL, "cannot queue the registration: %s",
                       uv_strerror(rc));
    }
    t->npending++;
    t->pending_bytes += (size_t)size;
    return 0;
}

/* The registered segment id if this owner may use it. */
static int owned(kvcd_segtab_t *t, const void *owner, size_t owner_len, uint64_t id,
                 kvcd_seg_t **out, char *msg, size_t msglen)
{
    kvcd_seg_t *s = seg_find(t, id);

    if (!s)
        return segfail(msg, msglen, KVCD_ESEGMENT, "unknown segment %" PRIu64, id);
    if (s->owner->len != owner_len || memcmp(s->owner->id, owner, owner_len) != 0)
        return segfail(msg, msglen, KVCD_ESEGMENT,
                       "segment %" PRIu64 " belongs to another connection", id);
    *out = s;
    return 0;
}

int kvcd_segtab_unregister(kvcd_segtab_t *t, const kvcd_peer_t *peer, const void *owner,
                           size_t owner_len, uint64_t id, char *msg, size_t msglen)
{
    kvcd_seg_t *s;
    int rc = peer_ok(peer, msg, msglen);

    if (rc == 0)
        rc = owned(t, owner, owner_len, id, &s, msg, msglen);

    if (rc != 0)
        return rc;
    KVCD_LOG(KVCD_LOG_DEBUG, "segment", "segment %" PRIu64 " unregistered%s", id,
             s->refs > 1 ? " (unmapped once its copies finish)" : "");
    seg_remove(t, s);
    return 0;
}

int kvcd_segtab_acquire(kvcd_segtab_t *t, const kvcd_peer_t *peer, const void *owner,
                        size_t owner_len, uint64_t id, kvcd_seg_t **out, char *msg,
                        size_t msglen)
{
    int rc = peer_ok(peer, msg, msglen);

    if (rc == 0)
        rc = owned(t, owner, owner_len, id, out, msg, msglen);

    if (rc == 0)
        (*out)->refs++;
    return rc;
}

void kvcd_segtab_touch(kvcd_segtab_t *t, const void *owner, size_t owner_len)
{
    kvcd_seg_owner_t *o;

    if (!t->owners)
        return;
    o = owner_find(t, owner, owner_len);
    if (o)
        o->last_ms = uv_now(t->loop);
}

void kvcd_segtab_status(const kvcd_segtab_t *t, json_t *status)
{
    json_t *counters = json_object_get(status, "counters");

    json_object_set_new(status, "segments", json_integer((json_int_t)t->nregistered));
    json_object_set_new(status, "segment_bytes", json_integer((json_int_t)t->mapped_bytes));
    if (counters)
        json_object_set_new(counters, "segments_expired", json_integer((json_int_t)t->expired));
}
