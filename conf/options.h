/*
 * options.h - kvcd's command line.
 *
 * Flags keep LMCache's multiprocess-server names and meanings (--host, --port,
 * --chunk-size, --l1-size-gb, --eviction-policy, --max-workers, --l2-adapter) and
 * add kvcd's own. Every flag, with its default, is printed by --help; a bad flag
 * is one clear line naming it. Parsing has no side effects beyond the struct.
 */
#ifndef KVCD_OPTIONS_H
#define KVCD_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "daemon/l1.h"

#define KVCD_VERSION "0.1.0"

typedef struct {
    char endpoint[512];         /* from --endpoint, or tcp://host:port */
    char host[256];
    int port;
    uint64_t chunk_size;        /* tokens per chunk, reported to clients */
    double l1_size_gb;
    kvcd_evict_policy_t eviction_policy;
    double high_watermark;
    double low_watermark;
    int hugepages;
    int mlock;
    int max_workers;
    int log_level;
    uint64_t max_keys;
    uint64_t max_frame;         /* bytes */
    uint64_t max_request;       /* bytes */
    int shutdown_timeout_ms;
    size_t n_l2;
    json_t *l2_specs[16];       /* parsed --l2-adapter objects, in priority order */
    size_t n_plugins;
    const char *plugins[16];
} kvcd_options_t;

/* Parse argv. Returns 0 to run, 1 when --help or --version was printed (exit 0),
 * -1 on a bad flag with a one-line message in err (exit 2). */
int kvcd_options_parse(int argc, char **argv, kvcd_options_t *o, char *err,
                       size_t errlen);
void kvcd_options_free(kvcd_options_t *o);

#endif
