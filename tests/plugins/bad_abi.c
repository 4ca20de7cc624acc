/*
 * bad_abi.c - a plugin built for an ABI version this kvcd does not speak; the
 * registry must refuse it with a clear message.
 */
#include "tests/plugins/stub.h"

static const kvcd_adapter_t adapter = {
    .abi_version = 42, /* a future version */
    .struct_size = sizeof(kvcd_adapter_t),
    .layout = KVCD_ABI_LAYOUT,
    .name = "bad_abi",
    .instance_size = 8,
    .flags = KVCD_ADAPTER_BLOCKING,
    STUB_METHODS,
};

const kvcd_adapter_t *kvcd_adapter_entry(void)
{
    return &adapter;
}
