/*
 * bad_layout.c - a plugin of this ABI version whose recorded layout says it
 * was built with a different kvcd_l2_item_t (as if against a kvcd whose item
 * had one field fewer): it would walk batch arrays with the wrong stride, so
 * the registry must refuse it, naming the struct and both sizes.
 */
#include "tests/plugins/stub.h"

static kvcd_adapter_t adapter = {
    KVCD_ADAPTER_HEADER("bad_layout", int, KVCD_ADAPTER_BLOCKING),
    STUB_METHODS,
};

const kvcd_adapter_t *kvcd_adapter_entry(void)
{
    adapter.layout.item = (uint32_t)(sizeof(kvcd_l2_item_t) - 8);
    return &adapter;
}
