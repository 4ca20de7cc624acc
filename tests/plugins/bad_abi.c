/*
 * bad_abi.c - a plugin built for an ABI version this kvcd does not speak; the
 * registry must refuse it with a clear message.
 */
#include "adapters/adapter.h"

static int init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *err,
                size_t errlen)
{
    return 0;
}

static void op(void *self, kvcd_l2_batch_t *b)
{
}

static const kvcd_adapter_t adapter = {
    .abi_version = 42, /* a future version */
    .struct_size = sizeof(kvcd_adapter_t),
    .layout = KVCD_ABI_LAYOUT,
    .name = "bad_abi",
    .instance_size = 8,
    .flags = KVCD_ADAPTER_BLOCKING,
    .init = init,
    .store = op,
    .lookup = op,
    .load = op,
    .remove = op,
};

const kvcd_adapter_t *kvcd_adapter_entry(void);

const kvcd_adapter_t *kvcd_adapter_entry(void)
{
    return &adapter;
}
