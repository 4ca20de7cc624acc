/*
 * options.c - command-line parsing for kvcd (see options.h).
 *
 * Numbers are parsed strictly (the whole argument, in range), and --l2-adapter
 * specs are parsed as JSON here so a typo stops the daemon before it binds
 * anything; whether the fields are right is the adapter's init's business.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conf/options.h"
#include "protocol/kvcd_err.h"

enum {
    OPT_HOST = 256, OPT_PORT, OPT_ENDPOINT, OPT_CHUNK_SIZE, OPT_L1_SIZE_GB,
    OPT_EVICTION, OPT_MAX_WORKERS, OPT_L2_ADAPTER, OPT_LOG_LEVEL, OPT_VERSION,
    OPT_HELP, OPT_HIGH_WM, OPT_LOW_WM, OPT_HUGEPAGES, OPT_MLOCK, OPT_MAX_KEYS,
    OPT_MAX_FRAME_MB, OPT_MAX_REQUEST_MB, OPT_SHUTDOWN_TIMEOUT, OPT_PLUGIN,
    OPT_MAX_PENDING_MB, OPT_MAX_UNSENT_MB,
    OPT_STORE_POLICY, OPT_PREFETCH_POLICY, OPT_PREFETCH_MAX, OPT_L2_TIMEOUT,
    OPT_PIN_TIMEOUT, OPT_CONFIG, OPT_HELP_ADAPTER,
    OPT_MAX_SEGMENTS, OPT_MAX_SEGMENT_GB, OPT_SEGMENT_LEASE, OPT_PRINT_ENDPOINT,
    OPT_HTTP_HOST, OPT_HTTP_PORT, OPT_SAVE_L1,
    OPT_STORE_COPY,
};

static const struct option longopts[] = {
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"endpoint", required_argument, NULL, OPT_ENDPOINT},
    {"chunk-size", required_argument, NULL, OPT_CHUNK_SIZE},
    {"l1-size-gb", required_argument, NULL, OPT_L1_SIZE_GB},
    {"eviction-policy", required_argument, NULL, OPT_EVICTION},
    {"l1-high-watermark", required_argument, NULL, OPT_HIGH_WM},
    {"l1-low-watermark", required_argument, NULL, OPT_LOW_WM},
    {"l1-hugepages", no_argument, NULL, OPT_HUGEPAGES},
    {"l1-mlock", no_argument, NULL, OPT_MLOCK},
    {"store-copy", no_argument, NULL, OPT_STORE_COPY},
    {"max-workers", required_argument, NULL, OPT_MAX_WORKERS},
    {"l2-adapter", required_argument, NULL, OPT_L2_ADAPTER},
    {"plugin", required_argument, NULL, OPT_PLUGIN},
    {"max-keys", required_argument, NULL, OPT_MAX_KEYS},
    {"max-frame-mb", required_argument, NULL, OPT_MAX_FRAME_MB},
    {"max-request-mb", required_argument, NULL, OPT_MAX_REQUEST_MB},
    {"shutdown-timeout-ms", required_argument, NULL, OPT_SHUTDOWN_TIMEOUT},
    {"max-pending-mb", required_argument, NULL, OPT_MAX_PENDING_MB},
    {"max-unsent-mb", required_argument, NULL, OPT_MAX_UNSENT_MB},
    {"l2-store-policy", required_argument, NULL, OPT_STORE_POLICY},
    {"l2-prefetch-policy", required_argument, NULL, OPT_PREFETCH_POLICY},
    {"l2-prefetch-max-in-flight", required_argument, NULL, OPT_PREFETCH_MAX},
    {"l2-save-l1-on-stop", no_argument, NULL, OPT_SAVE_L1},
    {"l2-timeout-ms", required_argument, NULL, OPT_L2_TIMEOUT},
    {"pin-timeout-ms", required_argument, NULL, OPT_PIN_TIMEOUT},
    {"max-segments", required_argument, NULL, OPT_MAX_SEGMENTS},
    {"max-segment-gb", required_argument, NULL, OPT_MAX_SEGMENT_GB},
    {"segment-lease-ms", required_argument, NULL, OPT_SEGMENT_LEASE},
    {"http-host", required_argument, NULL, OPT_HTTP_HOST},
    {"http-port", required_argument, NULL, OPT_HTTP_PORT},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"help-adapter", required_argument, NULL, OPT_HELP_ADAPTER},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"version", no_argument, NULL, OPT_VERSION},
    {"print-endpoint", no_argument, NULL, OPT_PRINT_ENDPOINT},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

void kvcd_options_usage(const char *adapter_types)
{
    printf(
"Usage: kvcd [OPTIONS]\n"
"KV-cache daemon for LLM inference servers (protocol version 1).\n"
"\n"
"Network:\n"
"  --host HOST              address to bind with tcp:// (default 127.0.0.1)\n"
"  --port PORT              TCP port (default 5555)\n"
"  --endpoint URL           any ZeroMQ endpoint, e.g. ipc:///run/kvcd.sock;\n"
"                           overrides --host/--port (default: none)\n"
"\n"
"HTTP (docs/METRICS.md):\n"
"  --http-port PORT         serve GET /metrics (Prometheus), /healthcheck\n"
"                           (readiness), /livez (liveness) and /status (JSON) on\n"
"                           this TCP port; 0 picks a free one (default: off)\n"
"  --http-host HOST         address the HTTP endpoint binds (default 127.0.0.1)\n"
"\n"
"L1 memory:\n"
"  --chunk-size N           tokens per chunk, reported to clients (default 256)\n"
"  --l1-size-gb G           L1 memory pool in GiB, fractions allowed (default 1)\n"
"  --eviction-policy P      LRU or noop (noop refuses stores when full) (default LRU)\n"
"  --l1-high-watermark F    start evicting above this fraction of L1 (default 1: evict\n"
"                           only what an allocation needs, L1 stays full)\n"
"  --l1-low-watermark F     evict down to this fraction of L1 once above the high one\n"
"                           (batch eviction); 0 means the high watermark (default 0)\n"
"  --l1-hugepages           back L1 with huge pages if available (default off)\n"
"  --l1-mlock               lock L1 in RAM; failing to is an error (default off)\n"
"  --store-copy             receive STORE frames into their own buffers and copy\n"
"                           them into L1 (default: read straight into L1)\n"
"  --pin-timeout-ms N       a LOOKUP pins its prefix for the LOAD that follows;\n"
"                           unloaded pins expire after N ms (default 10000)\n"
"\n"
"L2 adapters:\n"
"  --l2-adapter JSON        an L2 adapter spec, repeatable; order is priority\n"
"                           (default: none). Types: %s\n"
"  --help-adapter TYPE      print the fields of an adapter type and exit\n"
"  --plugin PATH.so         load an out-of-tree adapter, repeatable (default: none)\n"
"  --l2-store-policy P      default (write behind, keep in L1) or skip_l1 (drop\n"
"                           from L1 once every adapter has it) (default default)\n"
"  --l2-prefetch-policy P   default (prefetched copies leave L1 after their LOAD)\n"
"                           or retain (they stay) (default default)\n"
"  --l2-prefetch-max-in-flight N\n"
"                           LOOKUP prefetches running at once (default 8)\n"
"  --l2-timeout-ms N        deadline of every L2 call (default 5000)\n"
"  --l2-save-l1-on-stop     on a clean stop, write L1's objects to the L2 adapters\n"
"                           once more, least recently used first (fs skips files it\n"
"                           has and only marks them recent), so a restart keeps what\n"
"                           L1 held (default off)\n"
"\n"
"Limits:\n"
"  --max-workers N          threads that copy bytes between clients and L1, and\n"
"                           the default \"workers\" of each blocking L2 adapter\n"
"                           (default 4)\n"
"  --max-keys N             most keys in one request (default 4096)\n"
"  --max-frame-mb N         largest bulk frame in MiB (default 128)\n"
"  --max-request-mb N       largest sum of bulk frames in one request, MiB\n"
"                           (default 1024)\n"
"  --max-pending-mb N       admission budget: MiB held by unfinished requests and\n"
"                           unsent replies before the socket is no longer read\n"
"                           (default 2 x --max-request-mb)\n"
"  --max-unsent-mb N        per connection: MiB of unsent replies before that\n"
"                           peer's requests are no longer read (default 256)\n"
"  --shutdown-timeout-ms N  how long SIGTERM waits for in-flight work and\n"
"                           write-behind; then every request still in flight is\n"
"                           answered ESHUTDOWN and the process exits (default\n"
"                           10000)\n"
"\n"
"Shared memory (clients on the same host, docs/PROTOCOL.md):\n"
"  --max-segments N         segments registered at once (default 64)\n"
"  --max-segment-gb G       GiB of segments registered at once (default 64)\n"
"  --segment-lease-ms N     a client's segments, L1 reservations and leases are\n"
"                           released after N ms without a request from it\n"
"                           (default 30000)\n"
"\n"
"Other:\n"
"  --config FILE            settings as one JSON object (keys are the flag names\n"
"                           with '_' for '-', \"l2_adapters\": [specs], \"plugins\":\n"
"                           [paths]); flags given too override it (default: none)\n"
"  --log-level L            debug, info, warning or error (default info)\n"
"  --version                print the version and exit\n"
"  --print-endpoint         print the endpoint these settings bind and exit\n"
"  --help                   print this help and exit\n"
"\n"
"Example:\n"
"  kvcd --endpoint ipc:///tmp/kvcd.sock --l1-size-gb 4 \\\n"
"       --l2-adapter '{\"type\":\"fs\",\"base_path\":\"/var/cache/kvcd\"}'\n",
        adapter_types && *adapter_types ? adapter_types : "(none)");
}

#define bad(err, errlen, ...) kvcd_errf((err), (errlen), -1, __VA_ARGS__)

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    unsigned long long v;
    char *end;

    if (*s == '-' || *s == '\0')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;

    if (*s == '\0')
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* The same names the daemon's log accepts. */
static int parse_log_level(const char *s)
{
    if (strcasecmp(s, "debug") == 0)
        return KVCD_OPT_LOG_DEBUG;
    if (strcasecmp(s, "info") == 0)
        return KVCD_OPT_LOG_INFO;
    if (strcasecmp(s, "warning") == 0 || strcasecmp(s, "warn") == 0)
        return KVCD_OPT_LOG_WARNING;
    if (strcasecmp(s, "error") == 0)
        return KVCD_OPT_LOG_ERROR;
    return -1;
}

const char *kvcd_options_evict_name(kvcd_opt_evict_t p)
{
    return p == KVCD_OPT_EVICT_NOOP ? "noop" : "LRU";
}

static void set_defaults(kvcd_options_t *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->host, sizeof(o->host), "127.0.0.1");
    o->port = 5555;
    o->chunk_size = 256;
    o->l1_size_gb = 1.0;
    o->eviction_policy = KVCD_OPT_EVICT_LRU;
    o->high_watermark = 1.0; /* exact-capacity LRU (docs/DECISIONS.md) */
    o->low_watermark = 0.0;  /* 0: the high watermark */
    o->max_workers = 4;
    o->log_level = KVCD_OPT_LOG_INFO;
    o->max_keys = 4096;
    o->max_frame = 128ull << 20;
    o->max_request = 1024ull << 20;
    o->max_pending = 0;  /* 2 x max_request unless given */
    o->max_unsent = 256ull << 20;
    o->shutdown_timeout_ms = 10000;
    o->l2_prefetch_max_inflight = 8;
    o->l2_timeout_ms = 5000;
    o->pin_timeout_ms = 10000;
    o->max_segments = 64;
    o->max_segment_gb = 64.0;
    o->segment_lease_ms = 30000;
    snprintf(o->http_host, sizeof(o->http_host), "127.0.0.1");
    o->http_port = -1;
}

/* Parse flags into o (already holding defaults or earlier settings). */
static int parse_args(int argc, char **argv, kvcd_options_t *o, char *err, size_t errlen)
{
    uint64_t u;
    json_error_t jerr;
    json_t *spec;
    int c, lvl;

    optind = 0; /* 0: reinitialise GNU getopt, we parse more than once */
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_HOST:
            if (strlen(optarg) == 0 || strlen(optarg) >= sizeof(o->host))
                return bad(err, errlen, "--host: expected a host name or address");
            snprintf(o->host, sizeof(o->host), "%s", optarg);
            break;
        case OPT_HTTP_HOST:
            if (strlen(optarg) == 0 || strlen(optarg) >= sizeof(o->http_host))
                return bad(err, errlen, "--http-host: expected a host name or address");
            snprintf(o->http_host, sizeof(o->http_host), "%s", optarg);
            break;
        case OPT_HTTP_PORT:
            if (parse_u64(optarg, 0, 65535, &u))
                return bad(err, errlen, "--http-port: expected an integer in 0..65535, got '%s'", optarg);
            o->http_port = (int)u;
            break;
        case OPT_PORT:
            if (parse_u64(optarg, 1, 65535, &u))
                return bad(err, errlen, "--port: expected an integer in 1..65535, got '%s'", optarg);
            o->port = (int)u;
            break;
        case OPT_ENDPOINT:
            if (!strstr(optarg, "://") || strlen(optarg) >= sizeof(o->endpoint))
                return bad(err, errlen, "--endpoint: expected a ZeroMQ endpoint such as ipc:///path or tcp://host:port, got '%s'", optarg);
            o->endpoint_arg = optarg;
            break;
        case OPT_CHUNK_SIZE:
            if (parse_u64(optarg, 1, 1u << 30, &o->chunk_size))
                return bad(err, errlen, "--chunk-size: expected a positive integer, got '%s'", optarg);
            break;
        case OPT_L1_SIZE_GB:
            if (parse_double(optarg, 1.0 / 1024, 1 << 20, &o->l1_size_gb))
                return bad(err, errlen, "--l1-size-gb: expected a number of GiB of at least 0.001, got '%s'", optarg);
            break;
        case OPT_EVICTION:
            if (strcasecmp(optarg, "LRU") == 0)
                o->eviction_policy = KVCD_OPT_EVICT_LRU;
            else if (strcasecmp(optarg, "noop") == 0)
                o->eviction_policy = KVCD_OPT_EVICT_NOOP;
            else
                return bad(err, errlen, "--eviction-policy: expected LRU or noop, got '%s'", optarg);
            break;
        case OPT_HIGH_WM:
            if (parse_double(optarg, 0.01, 1.0, &o->high_watermark))
                return bad(err, errlen, "--l1-high-watermark: expected a fraction in 0.01..1, got '%s'", optarg);
            break;
        case OPT_LOW_WM:
            if (parse_double(optarg, 0.0, 1.0, &o->low_watermark))
                return bad(err, errlen, "--l1-low-watermark: expected a fraction in 0..1, got '%s'", optarg);
            break;
        case OPT_HUGEPAGES:
            o->hugepages = 1;
            break;
        case OPT_MLOCK:
            o->mlock = 1;
            break;
        case OPT_STORE_COPY:
            o->store_copy = 1;
            break;
        case OPT_SAVE_L1:
            o->l2_save_l1_on_stop = 1;
            break;
        case OPT_MAX_WORKERS:
            if (parse_u64(optarg, 1, 1024, &u))
                return bad(err, errlen, "--max-workers: expected an integer in 1..1024, got '%s'", optarg);
            o->max_workers = (int)u;
            break;
        case OPT_L2_ADAPTER:
            if (o->n_l2 == sizeof(o->l2_specs) / sizeof(o->l2_specs[0]))
                return bad(err, errlen, "--l2-adapter: at most %zu adapters",
                           sizeof(o->l2_specs) / sizeof(o->l2_specs[0]));
            spec = json_loads(optarg, JSON_REJECT_DUPLICATES, &jerr);
            if (!spec)
                return bad(err, errlen, "--l2-adapter #%zu: invalid JSON at line %d column %d: %s",
                           o->n_l2 + 1, jerr.line, jerr.column, jerr.text);
            if (!json_is_object(spec)) {
                json_decref(spec);
                return bad(err, errlen, "--l2-adapter #%zu: expected a JSON object", o->n_l2 + 1);
            }
            if (!json_is_string(json_object_get(spec, "type"))) {
                json_decref(spec);
                return bad(err, errlen, "--l2-adapter #%zu: type: expected a string", o->n_l2 + 1);
            }
            o->l2_specs[o->n_l2++] = spec;
            break;
        case OPT_PLUGIN:
            if (o->n_plugins == sizeof(o->plugins) / sizeof(o->plugins[0]))
                return bad(err, errlen, "--plugin: too many plugins");
            o->plugins[o->n_plugins++] = optarg;
            break;
        case OPT_MAX_KEYS:
            if (parse_u64(optarg, 1, 1u << 20, &o->max_keys))
                return bad(err, errlen, "--max-keys: expected an integer in 1..1048576, got '%s'", optarg);
            break;
        case OPT_MAX_FRAME_MB:
            if (parse_u64(optarg, 1, 1u << 16, &u))
                return bad(err, errlen, "--max-frame-mb: expected an integer in 1..65536, got '%s'", optarg);
            o->max_frame = u << 20;
            break;
        case OPT_MAX_REQUEST_MB:
            if (parse_u64(optarg, 1, 1u << 20, &u))
                return bad(err, errlen, "--max-request-mb: expected an integer in 1..1048576, got '%s'", optarg);
            o->max_request = u << 20;
            break;
        case OPT_MAX_PENDING_MB:
            if (parse_u64(optarg, 1, 1u << 22, &u))
                return bad(err, errlen, "--max-pending-mb: expected an integer in 1..4194304, got '%s'", optarg);
            o->max_pending = u << 20;
            break;
        case OPT_MAX_UNSENT_MB:
            if (parse_u64(optarg, 1, 1u << 22, &u))
                return bad(err, errlen, "--max-unsent-mb: expected an integer in 1..4194304, got '%s'", optarg);
            o->max_unsent = u << 20;
            break;
        case OPT_SHUTDOWN_TIMEOUT:
            if (parse_u64(optarg, 0, 3600000, &u))
                return bad(err, errlen, "--shutdown-timeout-ms: expected an integer in 0..3600000, got '%s'", optarg);
            o->shutdown_timeout_ms = (int)u;
            break;
        case OPT_LOG_LEVEL:
            lvl = parse_log_level(optarg);
            if (lvl < 0)
                return bad(err, errlen, "--log-level: expected debug, info, warning or error, got '%s'", optarg);
            o->log_level = (kvcd_opt_log_t)lvl;
            break;
        case OPT_STORE_POLICY:
            if (strcmp(optarg, "default") == 0)
                o->l2_store_policy = KVCD_STORE_DEFAULT;
            else if (strcmp(optarg, "skip_l1") == 0)
                o->l2_store_policy = KVCD_STORE_SKIP_L1;
            else
                return bad(err, errlen, "--l2-store-policy: expected default or skip_l1, got '%s'", optarg);
            break;
        case OPT_PREFETCH_POLICY:
            if (strcmp(optarg, "default") == 0)
                o->l2_prefetch_policy = KVCD_PREFETCH_DEFAULT;
            else if (strcmp(optarg, "retain") == 0)
                o->l2_prefetch_policy = KVCD_PREFETCH_RETAIN;
            else
                return bad(err, errlen, "--l2-prefetch-policy: expected default or retain, got '%s'", optarg);
            break;
        case OPT_PREFETCH_MAX:
            if (parse_u64(optarg, 1, 1024, &u))
                return bad(err, errlen, "--l2-prefetch-max-in-flight: expected an integer in 1..1024, got '%s'", optarg);
            o->l2_prefetch_max_inflight = (int)u;
            break;
        case OPT_L2_TIMEOUT:
            if (parse_u64(optarg, 1, 3600000, &u))
                return bad(err, errlen, "--l2-timeout-ms: expected an integer in 1..3600000, got '%s'", optarg);
            o->l2_timeout_ms = (int)u;
            break;
        case OPT_PIN_TIMEOUT:
            if (parse_u64(optarg, 1, 3600000, &u))
                return bad(err, errlen, "--pin-timeout-ms: expected an integer in 1..3600000, got '%s'", optarg);
            o->pin_timeout_ms = (int)u;
            break;
        case OPT_MAX_SEGMENTS:
            if (parse_u64(optarg, 1, 65536, &u))
                return bad(err, errlen, "--max-segments: expected an integer in 1..65536, got '%s'", optarg);
            o->max_segments = (int)u;
            break;
        case OPT_MAX_SEGMENT_GB:
            if (parse_double(optarg, 1.0 / 1024, 1 << 20, &o->max_segment_gb))
                return bad(err, errlen, "--max-segment-gb: expected a number of GiB of at least 0.001, got '%s'", optarg);
            break;
        case OPT_SEGMENT_LEASE:
            if (parse_u64(optarg, 10, 86400000, &u))
                return bad(err, errlen, "--segment-lease-ms: expected an integer in 10..86400000, got '%s'", optarg);
            o->segment_lease_ms = (int)u;
            break;
        case OPT_CONFIG:
            break; /* read before the flags, in kvcd_options_parse */
        case OPT_HELP_ADAPTER:
            o->help_adapter = optarg;
            break;
        case OPT_VERSION:
            printf("kvcd %s (protocol 1)\n", KVCD_VERSION);
            return 1;
        case OPT_HELP:
            o->want_help = 1;
            break;
        case OPT_PRINT_ENDPOINT:
            o->want_endpoint = 1;
            break;
        case ':':
            return bad(err, errlen, "%s: requires a value", argv[optind - 1]);
        default:
            return bad(err, errlen, "%s: unknown option (see kvcd --help)",
                       argv[optind - 1]);
        }
    }
    if (optind < argc)
        return bad(err, errlen, "%s: unexpected argument (see kvcd --help)", argv[optind]);
    return 0;
}

/* --config FILE: turn the JSON object into flags ("l1_size_gb": 4 becomes
 * --l1-size-gb 4), so both sources go through one parser and one set of checks. */
static int config_to_argv(const char *path, int have_l2_flags, kvcd_options_t *o, char *err,
                          size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr), *v, *e;
    const char *key;
    size_t i, cap = 8, n = 1;
    char **av = NULL, flag[128], num[160];
    int rc = -1;

    if (!root)
        return bad(err, errlen, "--config %s: line %d column %d: %s", path, jerr.line,
                   jerr.column, jerr.text);
    if (!json_is_object(root)) {
        bad(err, errlen, "--config %s: expected a JSON object", path);
        goto out;
    }
    av = calloc(cap, sizeof(char *));
    if (!av)
        goto nomem;
    av[0] = strdup("kvcd");
#define PUSH(str)                                                              \
    do {                                                                       \
        if (n + 2 >= cap) {                                                    \
            char **nav = realloc(av, (cap *= 2) * sizeof(char *));             \
            if (!nav)                                                          \
                goto nomem;                                                    \
            av = nav;                                                          \
        }                                                                      \
        if (!(av[n++] = (str)))                                                \
            goto nomem;                                                        \
        av[n] = NULL;                                                          \
    } while (0)
    json_object_foreach(root, key, v) {
        const struct option *lo;
        size_t k;

        if (strcmp(key, "l2_adapters") == 0 || strcmp(key, "plugins") == 0) {
            int is_l2 = key[1] == '2';

            if (!json_is_array(v)) {
                bad(err, errlen, "--config %s: %s: expected an array", path, key);
                goto out;
            }
            if (is_l2 && have_l2_flags)
                continue; /* --l2-adapter flags replace the file's list */
            json_array_foreach(v, i, e) {
                if (is_l2 ? !json_is_object(e) : !json_is_string(e)) {
                    bad(err, errlen, "--config %s: %s[%zu]: expected %s", path, key, i,
                        is_l2 ? "an adapter spec object" : "a path string");
                    goto out;
                }
                PUSH(strdup(is_l2 ? "--l2-adapter" : "--plugin"));
                PUSH(is_l2 ? json_dumps(e, JSON_COMPACT) : strdup(json_string_value(e)));
            }
            continue;
        }
        snprintf(flag, sizeof(flag), "%s", key);
        for (k = 0; flag[k]; k++)
            if (flag[k] == '_')
                flag[k] = '-';
        for (lo = longopts; lo->name; lo++)
            if (strcmp(lo->name, flag) == 0)
                break;
        if (!lo->name || lo->val == OPT_CONFIG || lo->val == OPT_HELP ||
            lo->val == OPT_VERSION || lo->val == OPT_PRINT_ENDPOINT || lo->val == OPT_HELP_ADAPTER ||
            lo->val == OPT_L2_ADAPTER || lo->val == OPT_PLUGIN) {
            bad(err, errlen, "--config %s: %s: unknown setting", path, key);
            goto out;
        }
        if (lo->has_arg == no_argument) {
            if (!json_is_boolean(v)) {
                bad(err, errlen, "--config %s: %s: expected true or false", path, key);
                goto out;
            }
            if (json_is_true(v)) {
                snprintf(num, sizeof(num), "--%s", flag);
                PUSH(strdup(num));
            }
            continue;
        }
        snprintf(num, sizeof(num), "--%s", flag);
        PUSH(strdup(num));
        if (json_is_string(v))
            PUSH(strdup(json_string_value(v)));
        else if (json_is_integer(v)) {
            snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
            PUSH(strdup(num));
        } else if (json_is_real(v)) {
            snprintf(num, sizeof(num), "%.17g", json_real_value(v));
            PUSH(strdup(num));
        } else {
            bad(err, errlen, "--config %s: %s: expected a string or a number", path, key);
            goto out;
        }
    }
#undef PUSH
    o->config_argv = av;
    o->config_argc = (int)n;
    av = NULL;
    rc = 0;
    goto out;
nomem:
    bad(err, errlen, "--config %s: out of memory", path);
out:
    if (av) {
        for (i = 0; i < n; i++)
            free(av[i]);
        free(av);
    }
    json_decref(root);
    return rc;
}

int kvcd_options_parse(int argc, char **argv, kvcd_options_t *o, char *err,
                       size_t errlen)
{
    int i, rc, have_l2 = 0;

    set_defaults(o);
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--l2-adapter") == 0 || strncmp(argv[i], "--l2-adapter=", 13) == 0)
            have_l2 = 1;
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            o->config_path = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            o->config_path = argv[i] + 9;
    }
    if (o->config_path) {
        char sub[512];

        if (config_to_argv(o->config_path, have_l2, o, err, errlen) != 0)
            return -1;
        rc = parse_args(o->config_argc, o->config_argv, o, sub, sizeof(sub));
        if (rc != 0) {
            if (rc < 0)
                bad(err, errlen, "--config %s: %s", o->config_path, sub);
            return rc;
        }
    }
    rc = parse_args(argc, argv, o, err, errlen);
    if (rc != 0)
        return rc;
    if (o->low_watermark > o->high_watermark)
        return bad(err, errlen, "--l1-low-watermark: %.2f is above --l1-high-watermark %.2f",
                   o->low_watermark, o->high_watermark);
    if (o->max_frame > o->max_request)
        return bad(err, errlen, "--max-frame-mb: larger than --max-request-mb");
    if (o->max_pending == 0)
        o->max_pending = 2 * o->max_request;
    if (o->max_pending < o->max_request)
        return bad(err, errlen, "--max-pending-mb: smaller than --max-request-mb (a request of "
                   "the largest size could never be admitted)");
    if (o->endpoint_arg)
        snprintf(o->endpoint, sizeof(o->endpoint), "%s", o->endpoint_arg);
    else if (strchr(o->host, ':'))
        snprintf(o->endpoint, sizeof(o->endpoint), "tcp://[%s]:%d", o->host, o->port);
    else
        snprintf(o->endpoint, sizeof(o->endpoint), "tcp://%s:%d", o->host, o->port);
    if (o->want_endpoint) {
        printf("%s\n", o->endpoint);
        return 1;
    }
    return 0;
}

void kvcd_options_free(kvcd_options_t *o)
{
    size_t i;

    for (i = 0; i < o->n_l2; i++)
        json_decref(o->l2_specs[i]);
    o->n_l2 = 0;
    for (i = 0; i < (size_t)o->config_argc; i++)
        free(o->config_argv[i]);
    free(o->config_argv);
    o->config_argv = NULL;
    o->config_argc = 0;
}
