/*
 * example.c - an out-of-tree adapter, built as a shared object and loaded with
 * --plugin (the tests load it from the build directory).
 *
 * {"type":"example","max_objects":1024}
 *
 * A tiny in-memory store: a linked list under one mutex. It uses nothing from
 * kvcd but the ABI header, so it shows everything an adapter outside the tree
 * needs: a kvcd_adapter_t filled through KVCD_ADAPTER_HEADER (which records
 * the layout it was built with), a field table the core parses its spec with,
 * the core's services reached only through env->svc, and the exported
 * function kvcd_adapter_entry returning the adapter.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter.h"

typedef struct ent_s {
    struct ent_s *next;
    size_t klen, size;
    unsigned char *kbytes; /* the key, serialised */
    unsigned char *data;
} ent_t;

typedef struct {
    pthread_mutex_t mu;
    ent_t *head;
    size_t n;
    uint64_t max; /* spec: max_objects */
    const kvcd_core_services_t *svc;
} example_t;

static const kvcd_adapter_field_t fields[] = {
    {KVCD_FIELD("max_objects", KVCD_FIELD_INT, example_t, max), .min = 1, .max = 1 << 30,
     .dflt = "1024", .doc = "objects kept; a store beyond it fails with ENOSPC"},
    {.name = NULL},
};

/* A key as one byte string, so equality is memcmp. */
static unsigned char *key_bytes(const kvcd_key_t *k, size_t *len)
{
    size_t n = 5 * 4 + k->model_len + k->salt_len + k->hash_len;
    unsigned char *p = malloc(n), *q = p;
    uint32_t hdr[5] = {k->model_len, k->salt_len, k->hash_len, k->kv_rank, k->group};

    if (!p)
        return NULL;
    memcpy(q, hdr, sizeof(hdr));
    q += sizeof(hdr);
    memcpy(q, k->model, k->model_len);
    q += k->model_len;
    if (k->salt_len)
        memcpy(q, k->salt, k->salt_len);
    q += k->salt_len;
    memcpy(q, k->hash, k->hash_len);
    *len = n;
    return p;
}

static ent_t **find(example_t *x, const unsigned char *kb, size_t klen)
{
    ent_t **p = &x->head;

    while (*p && !((*p)->klen == klen && memcmp((*p)->kbytes, kb, klen) == 0))
        p = &(*p)->next;
    return p;
}

static void ent_free(ent_t *e)
{
    free(e->kbytes);
    free(e->data);
    free(e);
}

static int init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *err,
                size_t errlen)
{
    example_t *x = self;

    /* x->max is set from the spec already; nothing spans fields here */
    x->svc = env->svc;
    pthread_mutex_init(&x->mu, NULL);
    KVCD_ALOG(x->svc, KVCD_ALOG_DEBUG, "example", "%s: up to %llu objects", env->instance,
              (unsigned long long)x->max);
    return 0;
}

static void store(void *self, kvcd_l2_batch_t *b)
{
    example_t *x = self;
    size_t i;

    for (i = 0; i < b->n; i++) {
        kvcd_l2_item_t *it = &b->items[i];
        ent_t *e = calloc(1, sizeof(*e)), **p;

        if (!e || !(e->kbytes = key_bytes(&it->key, &e->klen)) ||
            !(e->data = malloc(it->len ? it->len : 1))) {
            if (e)
                ent_free(e);
            it->result = -ENOMEM;
            continue;
        }
        memcpy(e->data, it->buf, it->len);
        e->size = it->len;
        pthread_mutex_lock(&x->mu);
        p = find(x, e->kbytes, e->klen);
        if (*p) {
            ent_t *old = *p;

            e->next = old->next;
            *p = e;
            ent_free(old);
            it->result = 0;
        } else if (x->n < x->max) {
            e->next = x->head;
            x->head = e;
            x->n++;
            it->result = 0;
        } else {
            ent_free(e);
            it->result = -ENOSPC;
        }
        pthread_mutex_unlock(&x->mu);
    }
}

/* lookup and load share this: load copies when the buffer is big enough. */
static void get(example_t *x, kvcd_l2_batch_t *b, int copy)
{
    size_t i, klen;

    for (i = 0; i < b->n; i++) {
        kvcd_l2_item_t *it = &b->items[i];
        unsigned char *kb = key_bytes(&it->key, &klen);
        ent_t *e;

        if (!kb) {
            it->result = -ENOMEM;
            continue;
        }
        pthread_mutex_lock(&x->mu);
        e = *find(x, kb, klen);
        if (!e) {
            it->result = KVCD_ENOTFOUND;
        } else {
            it->size = e->size;
            if (copy && it->len < e->size) {
                it->result = -EMSGSIZE;
            } else {
                if (copy)
                    memcpy(it->buf, e->data, e->size);
                it->result = 0;
            }
        }
        pthread_mutex_unlock(&x->mu);
        free(kb);
    }
}

static void lookup(void *self, kvcd_l2_batch_t *b)
{
    get(self, b, 0);
}

static void load(void *self, kvcd_l2_batch_t *b)
{
    get(self, b, 1);
}

static void remove_(void *self, kvcd_l2_batch_t *b)
{
    example_t *x = self;
    size_t i, klen;

    for (i = 0; i < b->n; i++) {
        kvcd_l2_item_t *it = &b->items[i];
        unsigned char *kb = key_bytes(&it->key, &klen);
        ent_t **p, *e = NULL;

        if (!kb) {
            it->result = -ENOMEM;
            continue;
        }
        pthread_mutex_lock(&x->mu);
        p = find(x, kb, klen);
        if (*p) {
            e = *p;
            *p = e->next;
            x->n--;
        }
        pthread_mutex_unlock(&x->mu);
        it->result = e ? 0 : KVCD_ENOTFOUND;
        if (e)
            ent_free(e);
        free(kb);
    }
}

static void status(void *self, json_t *out)
{
    example_t *x = self;

    pthread_mutex_lock(&x->mu);
    json_object_set_new(out, "healthy", json_true());
    json_object_set_new(out, "objects", json_integer((json_int_t)x->n));
    pthread_mutex_unlock(&x->mu);
}

static void close_(void *self)
{
    example_t *x = self;

    while (x->head) {
        ent_t *e = x->head;

        x->head = e->next;
        ent_free(e);
    }
    pthread_mutex_destroy(&x->mu);
}

static const kvcd_adapter_t adapter = {
    KVCD_ADAPTER_HEADER("example", example_t, KVCD_ADAPTER_BLOCKING),
    .doc = "example out-of-tree adapter: a small in-memory list",
    .fields = fields,
    .init = init,
    .store = store,
    .lookup = lookup,
    .load = load,
    .remove = remove_,
    .status = status,
    .close = close_,
};

const kvcd_adapter_t *kvcd_adapter_entry(void);

const kvcd_adapter_t *kvcd_adapter_entry(void)
{
    return &adapter;
}
