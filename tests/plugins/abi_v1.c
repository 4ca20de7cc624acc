/*
 * abi_v1.c - a plugin as it was built against ABI version 1: the adapter
 * struct of that version (no layout signature, completion through a callback
 * pointer in the batch), copied here verbatim in shape because today's header
 * no longer has it. The registry must refuse it and say that it needs a
 * rebuild, never read the v1 struct as a v2 one.
 */
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t abi_version; /* 1 */
    uint32_t struct_size;
    const char *name;
    size_t instance_size;
    uint32_t flags;
    const char *doc;
    const void *fields;
    int (*init)(void *self, const void *spec, const void *env, char *err, size_t errlen);
    void (*store)(void *self, void *b);
    void (*lookup)(void *self, void *b);
    void (*load)(void *self, void *b);
    void (*remove)(void *self, void *b);
    void (*status)(void *self, void *out);
    void (*close)(void *self);
    void (*background)(void *self);
} v1_adapter_t;

static int init(void *self, const void *spec, const void *env, char *err, size_t errlen)
{
    return 0;
}

static void op(void *self, void *b)
{
}

static const v1_adapter_t adapter = {
    .abi_version = 1,
    .struct_size = sizeof(v1_adapter_t),
    .name = "abi_v1",
    .instance_size = 8,
    .flags = 0x1,
    .init = init,
    .store = op,
    .lookup = op,
    .load = op,
    .remove = op,
};

const void *kvcd_adapter_entry(void);

const void *kvcd_adapter_entry(void)
{
    return &adapter;
}
