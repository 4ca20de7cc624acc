/*
 * registry.h - the adapter registry (adapters/registry.c): the built-in
 * adapters (the generated table) plus those registered at run time (tests) or
 * loaded from plugins (--plugin x.so); each is checked once: ABI version,
 * struct size, the layout of the structs that cross the ABI, flag bits, a
 * unique non-empty name, the required methods and its field table.
 *
 * It also holds the one spec parser (every adapter's fields, plus the runner's
 * "workers" and "max_queue" of blocking adapters), --help-adapter, and the
 * core-services table handed to every instance.
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

/* The runner's fields of a blocking adapter's spec; 0 = not given. */
typedef struct {
    int64_t workers;   /* threads of its executor, 1..256 */
    int64_t max_queue; /* slices queued before KVCD_EQUEUEFULL, 1..1000000 */
} kvcd_runner_fields_t;

/* The one spec parser. Check spec against a's field table (a must come from
 * this registry), write every field's value or default into self (zeroed by
 * the caller, a->instance_size bytes) and, when `runner` is not NULL and a is
 * blocking, the runner's fields into *runner (else they are unknown fields).
 * Strings and JSON values written into self borrow from spec (or the
 * registry's defaults): valid while spec is. 0 or KVCD_ECONFIG with
 * "field: what is wrong" in err. */
int kvcd_adapter_spec_parse(const kvcd_adapter_t *a, const json_t *spec, void *self,
                            kvcd_runner_fields_t *runner, char *err, size_t errlen);

/* Parse spec into self (zeroed) and call a->init: an instance without a
 * runner (the fault adapter's inner one, tests). env's struct_size and svc
 * are filled in when the caller left them 0. Close it with a->close. */
int kvcd_adapter_instance_init(const kvcd_adapter_t *a, void *self, const json_t *spec,
                               const kvcd_adapter_env_t *env, char *err, size_t errlen);

/* Parse one JSON object of a spec (an array element, a sub-object) against a
 * field table: unknown fields are named with pfx ("nodes[1].") and `what`
 * ("a nodes[] entry") in the message, types and bounds are checked, values go
 * into dst. Defaults are not applied (a field not given stays as dst has it).
 * 0 or KVCD_ECONFIG. The services' fields_parse. */
int kvcd_adapter_fields_parse(const kvcd_adapter_field_t *table, const char *what,
                              const json_t *obj, void *dst, const char *pfx, char *err,
                              size_t errlen);

/* The services table every instance gets (env->svc). */
const kvcd_core_services_t *kvcd_l2_services(void);

#endif
