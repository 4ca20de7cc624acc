/*
 * new_services.c - a plugin built against a newer kvcd whose services table
 * had grown: it may call functions this kvcd does not have, so the registry
 * must refuse it, saying a plugin may be older than kvcd, not newer.
 */
#include "tests/plugins/stub.h"

static kvcd_adapter_t adapter = {
    KVCD_ADAPTER_HEADER("new_services", int, KVCD_ADAPTER_BLOCKING),
    STUB_METHODS,
};

const kvcd_adapter_t *kvcd_adapter_entry(void)
{
    adapter.layout.services = (uint32_t)(sizeof(kvcd_core_services_t) + 2 * sizeof(void *));
    return &adapter;
}
