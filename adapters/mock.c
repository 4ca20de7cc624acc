/*
 * mock.c - an in-memory L2 adapter for tests and benchmarks.
 *
 * {"type":"mock","max_size_gb":1,"mock_bandwidth_gb":0,"latency_ms":0}
 *
 * Objects live in malloc'd copies in a hash table, with a FIFO list for
 * eviction: a store that would exceed the capacity first drops the oldest
 * objects. Blocking: methods run on threadpool workers, concurrently, so every
 * access to the table goes through one mutex. Bytes are copied outside the lock
 * on store; a load copies under it (the object could otherwise be evicted
 * mid-copy).
 *
 * Simulated cost, paid by sleeping on the worker: `latency_ms` once per call,
 * and transfer time at `mock_bandwidth_gb` GiB/s through one shared "link"
 * (concurrent calls queue behind each other, as they would on one device).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapters/adapter.h"

#define GiB ((double)(1ull << 30))
#define BUCKETS_MIN 64

typedef struct obj_s {
    struct obj_s *hnext;       /* hash chain */
    struct obj_s *prev, *next; /* FIFO: oldest at mock_t.head */
    uint64_t h;
    kvcd_key_t key; /* borrows from kbytes */
    void *data;
    size_t size;
    char kbytes[];
} obj_t;

typedef struct {
    pthread_mutex_t mu;
    obj_t **buckets; /* power-of-two count */
    size_t nbuckets, objects;
    obj_t *head, *tail;
    size_t used, capacity;
    double bandwidth;     /* bytes per second, 0 = unlimited */
    uint64_t latency_ms;
    double size_gb, bw_gb; /* spec */
    uint64_t link_free_ns; /* when the simulated link is next idle */
    uint64_t stores, hits, misses, evictions, removes, rejected;
} mock_t;

static const kvcd_adapter_field_t fields[] = {
    {KVCD_FIELD("max_size_gb", KVCD_FIELD_NUMBER, mock_t, size_gb), .flags = KVCD_FIELD_ABOVE_MIN,
     .min = 0, .max = 1048576, .dflt = "1",
     .doc = "capacity in GiB; a store that does not fit evicts the oldest objects first (FIFO)"},
    {KVCD_FIELD("mock_bandwidth_gb", KVCD_FIELD_NUMBER, mock_t, bw_gb), .min = 0, .max = 1e6,
     .dflt = "0",
     .doc = "simulated transfer bandwidth in GiB/s, shared by concurrent calls; 0 = unlimited"},
    {KVCD_FIELD("latency_ms", KVCD_FIELD_INT, mock_t, latency_ms), .min = 0, .max = 3600000,
     .dflt = "0", .doc = "simulated latency added once to every call"},
    {.name = NULL},
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t_ns)
{
    struct timespec ts = {(time_t)(t_ns / 1000000000ull), (long)(t_ns % 1000000000ull)};

    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* Occupy the shared link for `bytes`, then wait until our transfer is over. */
static void transfer(mock_t *m, size_t bytes)
{
    uint64_t dur, start, end;

    if (m->bandwidth <= 0 || !bytes)
        return;
    dur = (uint64_t)((double)bytes / m->bandwidth * 1e9);
    pthread_mutex_lock(&m->mu);
    start = now_ns();
    if (m->link_free_ns > start)
        start = m->link_free_ns;
    end = start + dur;
    m->link_free_ns = end;
    pthread_mutex_unlock(&m->mu);
    sleep_until(end);
}

static void latency(mock_t *m)
{
    if (m->latency_ms)
        sleep_until(now_ns() + m->latency_ms * 1000000ull);
}

/* ---- table (caller holds mu) ---- */

static obj_t **slot(mock_t *m, const kvcd_key_t *k, uint64_t h)
{
    obj_t **p = &m->buckets[h & (m->nbuckets - 1)];

    while (*p && !((*p)->h == h && kvcd_key_equal(&(*p)->key, k)))
        p = &(*p)->hnext;
    return p;
}

static void grow(mock_t *m)
{
    size_t n = m->nbuckets * 2, i;
    obj_t **b = calloc(n, sizeof(*b));

    if (!b)
        return; /* longer chains, still correct */
    for (i = 0; i < m->nbuckets; i++) {
        obj_t *o = m->buckets[i], *nx;

        for (; o; o = nx) {
            nx = o->hnext;
            o->hnext = b[o->h & (n - 1)];
            b[o->h & (n - 1)] = o;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

static void fifo_unlink(mock_t *m, obj_t *o)
{
    if (o->prev)
        o->prev->next = o->next;
    else
        m->head = o->next;
    if (o->next)
        o->next->prev = o->prev;
    else
        m->tail = o->prev;
    o->prev = o->next = NULL;
}

/* Unlink o (found at *p) and return it for freeing outside the lock. */
static obj_t *take(mock_t *m, obj_t **p)
{
    obj_t *o = *p;

    *p = o->hnext;
    fifo_unlink(m, o);
    m->used -= o->size;
    m->objects--;
    return o;
}

static void obj_free(obj_t *o)
{
    if (o) {
        free(o->data);
        free(o);
    }
}

/* ---- methods ---- */

static int init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *err,
                size_t errlen)
{
    mock_t *m = self;

    m->capacity = (size_t)(m->size_gb * GiB);
    m->bandwidth = m->bw_gb * GiB;
    m->buckets = calloc(BUCKETS_MIN, sizeof(*m->buckets));
    if (!m->buckets)
        return -ENOMEM;
    m->nbuckets = BUCKETS_MIN;
    pthread_mutex_init(&m->mu, NULL);
    return 0;
}

static void store(void *self, kvcd_l2_batch_t *b)
{
    mock_t *m = self;
    size_t i, bytes = 0;

    latency(m);
    for (i = 0; i < b->n; i++) {
        kvcd_l2_item_t *it = &b->items[i];
        size_t extra = kvcd_key_extra(&it->key);
        obj_t *o, **p, *old, *victims = NULL;

        if (it->len > m->capacity) {
            it->result = -ENOSPC;
            pthread_mutex_lock(&m->mu);
            m->rejected++;
            pthread_mutex_unlock(&m->mu);
            continue;
        }
        o = calloc(1, sizeof(*o) + extra);
        if (o)
            o->data = malloc(it->len ? it->len : 1);
        if (!o || !o->data) {
            obj_free(o);
            it->result = -ENOMEM;
            continue;
        }
        kvcd_key_copy(&o->key, &it->key, o->kbytes);
        o->h = kvcd_key_hash(&o->key);
        o->size = it->len;
        memcpy(o->data, it->buf, it->len);
        bytes += it->len;

        pthread_mutex_lock(&m->mu);
        p = slot(m, &o->key, o->h);
        old = *p ? take(m, p) : NULL;
        while (m->head && m->used + o->size > m->capacity) {
            obj_t *e = take(m, slot(m, &m->head->key, m->head->h));

            e->next = victims;
            victims = e;
            m->evictions++;
        }
        if (m->objects >= m->nbuckets)
            grow(m);
        p = &m->buckets[o->h & (m->nbuckets - 1)];
        o->hnext = *p;
        *p = o;
        o->prev = m->tail;
        if (m->tail)
            m->tail->next = o;
        else
            m->head = o;
        m->tail = o;
        m->used += o->size;
        m->objects++;
        m->stores++;
        pthread_mutex_unlock(&m->mu);

        obj_free(old);
        while (victims) {
            obj_t *nx = victims->next;

            obj_free(victims);
            victims = nx;
        }
        it->result = 0;
    }
    transfer(m, bytes);
}

static void lookup(void *self, kvcd_l2_batch_t *b)
{
    mock_t *m = self;
    size_t i;

    latency(m);
    pthread_mutex_lock(&m->mu);
    for (i = 0; i < b->n; i++) {
        kvcd_l2_item_t *it = &b->items[i];
        obj_t *o = *slot(m, &it->key, kvcd_key_hash(&it->key));

        if (o) {
            it->size = o->size;
            it->result = 0;
        } else {
            it->result = KVCD_ENOTFOUND;
        }
    }
    pthread_mutex_unlock(&m->mu);
}

static void load(void *self, kvcd_l2_batch_t *b)
{
    mock_t *m = self;
    size_t i, bytes = 0;

    latency(m);
    for (i = 0; i < b->n; i++) {
        kvcd_l2_item_t *it = &b->items[i];
        uint64_t h = kvcd_key_hash(&it->key);
        obj_t *o;

        pthread_mutex_lock(&m->mu);
        o = *slot(m, &it->key, h);
        if (!o) {
            m->misses++;
            it->result = KVCD_ENOTFOUND;
        } else if (it->len < o->size) {
            it->size = o->size;
            it->result = -EMSGSIZE;
        } else {
            memcpy(it->buf, o->data, o->size);
            it->size = o->size;
            it->result = 0;
            bytes += o->size;
            m->hits++;
        }
        pthread_mutex_unlock(&m->mu);
    }
    transfer(m, bytes);
}

static void remove_(void *self, kvcd_l2_batch_t *b)
{
    mock_t *m = self;
    size_t i;

    latency(m);
    for (i = 0; i < b->n; i++) {
        kvcd_l2_item_t *it = &b->items[i];
        obj_t **p, *o = NULL;

        pthread_mutex_lock(&m->mu);
        p = slot(m, &it->key, kvcd_key_hash(&it->key));
        if (*p) {
            o = take(m, p);
            m->removes++;
        }
        pthread_mutex_unlock(&m->mu);
        it->result = o ? 0 : KVCD_ENOTFOUND;
        obj_free(o);
    }
}

static void status(void *self, json_t *out)
{
    mock_t *m = self;

    pthread_mutex_lock(&m->mu);
    json_object_set_new(out, "healthy", json_true());
    json_object_set_new(out, "used_bytes", json_integer((json_int_t)m->used));
    json_object_set_new(out, "capacity_bytes", json_integer((json_int_t)m->capacity));
    json_object_set_new(out, "objects", json_integer((json_int_t)m->objects));
    json_object_set_new(out, "stores", json_integer((json_int_t)m->stores));
    json_object_set_new(out, "hits", json_integer((json_int_t)m->hits));
    json_object_set_new(out, "misses", json_integer((json_int_t)m->misses));
    json_object_set_new(out, "evictions", json_integer((json_int_t)m->evictions));
    json_object_set_new(out, "removes", json_integer((json_int_t)m->removes));
    json_object_set_new(out, "rejected_too_large", json_integer((json_int_t)m->rejected));
    pthread_mutex_unlock(&m->mu);
}

static void close_(void *self)
{
    mock_t *m = self;

    while (m->head)
        obj_free(take(m, slot(m, &m->head->key, m->head->h)));
    free(m->buckets);
    pthread_mutex_destroy(&m->mu);
}

const kvcd_adapter_t kvcd_adapter_mock = {
    KVCD_ADAPTER_HEADER("mock", mock_t, KVCD_ADAPTER_BLOCKING),
    .doc = "in-memory store with FIFO eviction and simulated bandwidth/latency (tests)",
    .fields = fields,
    .init = init,
    .store = store,
    .lookup = lookup,
    .load = load,
    .remove = remove_,
    .status = status,
    .close = close_,
};
