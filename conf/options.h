/*
 * options.h - kvcd's command line.
 *
 * Flags keep LMCache's multiprocess-server names and meanings (--host, --port,
 * --chunk-size, --l1-size-gb, --eviction-policy, --max-workers, --l2-adapter) and
 * add kvcd's own. Every flag, with its default, is printed by --help; a bad flag
 * is one clear line naming it. Parsing has no side effects beyond the struct
 * (and stdout for --version and --print-endpoint).
 *
 * conf/ depends on nothing but libraries: it has its own types for the choices
 * it parses (eviction policy, log level), which the daemon maps to its own, and
 * reports problems as text for the caller to print, never through the log.
 */
#ifndef KVCD_OPTIONS_H
#define KVCD_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define KVCD_VERSION "0.1.0"

typedef enum { KVCD_OPT_EVICT_LRU = 0, KVCD_OPT_EVICT_NOOP = 1 } kvcd_opt_evict_t;
typedef enum {
    KVCD_OPT_LOG_DEBUG = 0,
    KVCD_OPT_LOG_INFO = 1,
    KVCD_OPT_LOG_WARNING = 2,
    KVCD_OPT_LOG_ERROR = 3,
} kvcd_opt_log_t;

typedef enum { KVCD_STORE_DEFAULT = 0, KVCD_STORE_SKIP_L1 = 1 } kvcd_store_policy_t;
typedef enum { KVCD_PREFETCH_DEFAULT = 0, KVCD_PREFETCH_RETAIN = 1 } kvcd_prefetch_policy_t;

typedef struct {
    char endpoint[512];         /* from --endpoint, or tcp://host:port */
    const char *endpoint_arg;   /* the last --endpoint seen */
    char host[256];
    int port;
    uint64_t chunk_size;        /* tokens per chunk, reported to clients */
    double l1_size_gb;
    kvcd_opt_evict_t eviction_policy;
    double high_watermark;
    double low_watermark;
    int hugepages;
    int mlock;
    int store_copy;             /* --store-copy: no STORE frames received into L1 */
    int max_workers;
    kvcd_opt_log_t log_level;
    uint64_t max_keys;
    uint64_t max_frame;         /* bytes */
    uint64_t max_request;       /* bytes */
    uint64_t max_pending;       /* admission budget: bytes of unfinished requests
                                   and unsent replies before reading stops */
    uint64_t max_unsent;        /* per connection: unsent reply bytes before
                                   its requests are no longer read */
    int shutdown_timeout_ms;
    size_t n_l2;
    json_t *l2_specs[16];       /* parsed --l2-adapter objects, in priority order */
    size_t n_plugins;
    const char *plugins[16];
    kvcd_store_policy_t l2_store_policy;
    kvcd_prefetch_policy_t l2_prefetch_policy;
    int l2_prefetch_max_inflight;
    int l2_timeout_ms;
    int pin_timeout_ms;
    int max_segments;           /* shared-memory segments registered at once */
    double max_segment_gb;      /* GiB registered for them, in total */
    int segment_lease_ms;       /* a silent owner's segments go after this */
    char http_host[256];        /* --http-host: the HTTP endpoint's address */
    int http_port;              /* --http-port: -1 off (default), 0 any free port */
    int want_help;              /* --help: print after the registry is loaded */
    int want_endpoint;          /* --print-endpoint */
    const char *help_adapter;   /* --help-adapter TYPE */
    const char *config_path;    /* --config FILE */
    char **config_argv;         /* flags made from the config file (owned) */
    int config_argc;
    int l2_save_l1_on_stop;     /* --l2-save-l1-on-stop */
} kvcd_options_t;

/* Print --help (adapter_types: comma-separated list of registered types). */
void kvcd_options_usage(const char *adapter_types);

/* "LRU" or "noop". */
const char *kvcd_options_evict_name(kvcd_opt_evict_t p);

/* Parse argv (and the --config file it names: its settings come first, flags
 * override them). Returns 0 to run, 1 when --version or --print-endpoint was
 * printed (exit 0), -1 on a bad flag or setting with a one-line message in err
 * (exit 2). --print-endpoint prints the endpoint kvcd would bind, after every
 * flag and the config file were applied (what kvcd-launch.sh pings). --help and
 * --help-adapter only set want_help / help_adapter: main prints them once the
 * adapter registry is loaded. */
int kvcd_options_parse(int argc, char **argv, kvcd_options_t *o, char *err,
                       size_t errlen);
void kvcd_options_free(kvcd_options_t *o);

#endif
