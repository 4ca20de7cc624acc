/*
 * new_services.c - a plugin built against a newer kvcd whose services table
 * (and env) had grown: it may call functions this kvcd does not have, so the
 * registry must refuse it, saying a plugin may be older than kvcd, not newer.
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
    KVCD_ADAPTER_HEADER("new_services", int, KVCD_ADAPTER_BLOCKING),
    .init = init,
    .store = op,
    .lookup = op,
    .load = op,
    .remove = op,
};

const kvcd_adapter_t *kvcd_adapter_entry(void);

const kvcd_adapter_t *kvcd_adapter_entry(void)
{
    static kvcd_adapter_t a;

    a = adapter;
    a.layout.services = (uint32_t)(sizeof(kvcd_core_services_t) + 2 * sizeof(void *));
    return &a;
}
