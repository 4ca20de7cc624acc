/*
 * registry.h - the adapter registry (adapters/registry.c): the built-in
 * adapters (the generated table) plus those registered at run time (tests) or
 * loaded from plugins (--plugin x.so); each is checked once: ABI version,
 * struct size, a unique non-empty name, the required methods.
 *
 * Main or loop thread; not thread-safe.
 */
#ifndef KVCD_ADAPTER_REGISTRY_H
#define KVCD_ADAPTER_REGISTRY_H

#include "adapters/adapter.h"

/* Register an adapter at run time (tests, plugins). 0 or KVCD_ECONFIG with the
 * reason in err. The adapter object must outlive the process's use of it. */
int kvcd_l2_register(const kvcd_adapter_t *a, char *err, size_t errlen);

/* dlopen path, look up kvcd_adapter_entry, check and register. */
int kvcd_l2_load_plugin(const char *path, char *err, size_t errlen);

/* The adapter named `type`, or NULL. */
const kvcd_adapter_t *kvcd_l2_find_type(const char *type);

/* Comma-separated list of known type names, for help and errors. */
void kvcd_l2_type_list(char *buf, size_t buflen);

/* Print an adapter's fields (for --help-adapter). -1 if unknown. */
int kvcd_l2_print_help(const char *type);

/* Forget run-time registrations and unload plugins (tests, exit). */
void kvcd_l2_registry_reset(void);

#endif
