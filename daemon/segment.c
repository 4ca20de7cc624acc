/*
 * segment.c - registered shared-memory segments (see segment.h).
 *
 * The checks at registration run on the file the daemon actually opened
 * (/proc/self/fd/<ours>), not on the client's path again, so a client cannot
 * swap the fd between the check and the map. Registered segments sit in a small
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

int kvcd_segtab_register(kvcd_segtab_t *t, const void *owner, size_t owner_len,
                         uint64_t pid, uint64_t fd, uint64_t size, uint64_t *id,
                         char *msg, size_t msglen)
{
    uint64_t max_bytes = (uint64_t)(t->opt->max_segment_gb * (double)(1ull << 30));
    kvcd_seg_owner_t *o = NULL;
    kvcd_seg_t *s = NULL;
    char path[64], target[128];
    struct stat st;
    ssize_t n;
    void *base;
    int mfd = -1, seals, rc;

    if (owner_len == 0 || owner_len > OWNER_MAX)
        return segfail(msg, msglen, KVCD_ESEGMENT, "connection has no routing identity");
    if (t->nregistered >= (size_t)t->opt->max_segments)
        return segfail(msg, msglen, KVCD_ESEGMENT,
                       "%zu segments are registered, the most allowed (--max-segments)",
                       t->nregistered);
    /* Registered bytes, not mapped ones: a segment unregistered a moment ago
     * may stay mapped until its copies finish, and that must not make the
     * client's next registration fail. */
    if (size > SIZE_MAX || size > max_bytes || t->registered_bytes > max_bytes - size)
        return segfail(msg, msglen, KVCD_ESEGMENT,
                       "size: %" PRIu64 " more bytes would take the registered segments "
                       "over --max-segment-gb %g GiB (%zu bytes registered)",
                       size, t->opt->max_segment_gb, t->registered_bytes);

    snprintf(path, sizeof(path), "/proc/%" PRIu64 "/fd/%" PRIu64, pid, fd);
    mfd = open(path, O_RDWR | O_CLOEXEC);
    if (mfd < 0)
        return segfail(msg, msglen, KVCD_ESEGMENT, "cannot open fd %" PRIu64
                       " of process %" PRIu64 ": %s", fd, pid, strerror(errno));
    /* From here on, look only at the file we hold. */
    snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
    n = readlink(path, target, sizeof(target) - 1);
    if (n < 0 || (target[n] = '\0', strncmp(target, NAME_PREFIX, strlen(NAME_PREFIX)) != 0)) {
        rc = segfail(msg, msglen, KVCD_ESEGMENT,
                     "not a kvcd memfd segment (memfd_create name must start with \"kvcd-\")");
        goto fail;
    }
    if (fstat(mfd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = segfail(msg, msglen, KVCD_ESEGMENT, "not a kvcd memfd segment");
        goto fail;
    }
    if (st.st_uid != geteuid()) {
        rc = segfail(msg, msglen, KVCD_ESEGMENT, "segment belongs to another user");
        goto fail;
    }
    seals = fcntl(mfd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
        rc = segfail(msg, msglen, KVCD_ESEGMENT,
                     "segment must be sealed against shrinking (F_SEAL_SHRINK)");
        goto fail;
    }
    if ((uint64_t)st.st_size < size) {
        rc = segfail(msg, msglen, KVCD_ESEGMENT,
                     "size: %" PRIu64 " bytes asked, the memfd has %jd", size,
                     (intmax_t)st.st_size);
        goto fail;
    }
    s = calloc(1, sizeof(*s));
    o = owner_find(t, owner, owner_len);
    if (!s || (!o && !(o = calloc(1, sizeof(*o))))) {
        rc = segfail(msg, msglen, -ENOMEM, "out of memory");
        goto fail;
    }
    base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (base == MAP_FAILED) {
        rc = segfail(msg, msglen, KVCD_ESEGMENT, "cannot map the segment: %s",
                     strerror(errno));
        goto fail;
    }
    close(mfd);

    if (o->nsegs == 0) {
        memcpy(o->id, owner, owner_len);
        o->len = owner_len;
        o->next = t->owners;
        t->owners = o;
    }
    o->nsegs++;
    o->last_ms = uv_now(t->loop);
    s->id = t->next_id++;
    s->base = base;
    s->size = (size_t)size;
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
             PRIu64 " of process %" PRIu64, s->id, s->size, fd, pid);
    *id = s->id;
    return 0;

fail:
    if (o && o->nsegs == 0)
        free(o);
    free(s);
    close(mfd);
    return rc;
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

int kvcd_segtab_unregister(kvcd_segtab_t *t, const void *owner, size_t owner_len,
                           uint64_t id, char *msg, size_t msglen)
{
    kvcd_seg_t *s;
    int rc = owned(t, owner, owner_len, id, &s, msg, msglen);

    if (rc != 0)
        return rc;
    KVCD_LOG(KVCD_LOG_DEBUG, "segment", "segment %" PRIu64 " unregistered%s", id,
             s->refs > 1 ? " (unmapped once its copies finish)" : "");
    seg_remove(t, s);
    return 0;
}

int kvcd_segtab_acquire(kvcd_segtab_t *t, const void *owner, size_t owner_len,
                        uint64_t id, kvcd_seg_t **out, char *msg, size_t msglen)
{
    int rc = owned(t, owner, owner_len, id, out, msg, msglen);

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
