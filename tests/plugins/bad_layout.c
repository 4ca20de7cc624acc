/*
 * bad_layout.c - a plugin of this ABI version whose recorded layout says it
 * was built with a different kvcd_l2_item_t (as if against a kvcd whose item
 * had one field fewer): it would walk batch arrays with the wrong stride, so
 * the registry must refuse it, naming the struct and both sizes.
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
    KVCD_ADAPTER_HEADER("bad_layout", int, KVCD_ADAPTER_BLOCKING),
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
    a.layout.item = (uint32_t)(sizeof(kvcd_l2_item_t) - sizeof(int) - 4);
    return &a;
}
