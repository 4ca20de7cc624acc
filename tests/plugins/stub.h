/*
 * stub.h - the do-nothing methods of the test plugins that the registry must
 * refuse (bad_abi.c, bad_layout.c, new_services.c): only their headers differ.
 */
#ifndef KVCD_TEST_PLUGIN_STUB_H
#define KVCD_TEST_PLUGIN_STUB_H

#include "adapters/adapter.h"

static int stub_init(void *self, const json_t *spec, const kvcd_adapter_env_t *env, char *err,
                     size_t errlen)
{
    return 0;
}

static void stub_op(void *self, kvcd_l2_batch_t *b)
{
}

#define STUB_METHODS                                                              \
    .init = stub_init, .store = stub_op, .lookup = stub_op, .load = stub_op,      \
    .remove = stub_op

const kvcd_adapter_t *kvcd_adapter_entry(void);

#endif
