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

#include "daemon/log.h"
#include "options.h"

enum {
    OPT_HOST = 256, OPT_PORT, OPT_ENDPOINT, OPT_CHUNK_SIZE, OPT_L1_SIZE_GB,
    OPT_EVICTION, OPT_MAX_WORKERS, OPT_L2_ADAPTER, OPT_LOG_LEVEL, OPT_VERSION,
    OPT_HELP, OPT_HIGH_WM, OPT_LOW_WM, OPT_HUGEPAGES, OPT_MLOCK, OPT_MAX_KEYS,
    OPT_MAX_FRAME_MB, OPT_MAX_REQUEST_MB, OPT_SHUTDOWN_TIMEOUT, OPT_PLUGIN,
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
    {"max-workers", required_argument, NULL, OPT_MAX_WORKERS},
    {"l2-adapter", required_argument, NULL, OPT_L2_ADAPTER},
    {"plugin", required_argument, NULL, OPT_PLUGIN},
    {"max-keys", required_argument, NULL, OPT_MAX_KEYS},
    {"max-frame-mb", required_argument, NULL, OPT_MAX_FRAME_MB},
    {"max-request-mb", required_argument, NULL, OPT_MAX_REQUEST_MB},
    {"shutdown-timeout-ms", required_argument, NULL, OPT_SHUTDOWN_TIMEOUT},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"version", no_argument, NULL, OPT_VERSION},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static void usage(void)
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
"Cache:\n"
"  --chunk-size N           tokens per chunk, reported to clients (default 256)\n"
"  --l1-size-gb G           L1 memory pool in GiB, fractions allowed (default 1)\n"
"  --eviction-policy P      LRU or noop (noop refuses stores when full) (default LRU)\n"
"  --l1-high-watermark F    start evicting above this fraction of L1 (default 0.95)\n"
"  --l1-low-watermark F     evict down to this fraction of L1 (default 0.85)\n"
"  --l1-hugepages           back L1 with huge pages if available (default off)\n"
"  --l1-mlock               lock L1 in RAM; failing to is an error (default off)\n"
"  --l2-adapter JSON        an L2 adapter spec, repeatable; order is priority\n"
"                           (default: none)\n"
"  --plugin PATH.so         load an out-of-tree adapter, repeatable (default: none)\n"
"\n"
"Limits:\n"
"  --max-workers N          threadpool size for copies and L2 I/O (default 4)\n"
"  --max-keys N             most keys in one request (default 4096)\n"
"  --max-frame-mb N         largest bulk frame in MiB (default 128)\n"
"  --max-request-mb N       largest sum of bulk frames in one request, MiB\n"
"                           (default 1024)\n"
"  --shutdown-timeout-ms N  how long SIGTERM waits for in-flight work (default 10000)\n"
"\n"
"Other:\n"
"  --log-level L            debug, info, warning or error (default info)\n"
"  --version                print the version and exit\n"
"  --help                   print this help and exit\n"
"\n"
"Example:\n"
"  kvcd --endpoint ipc:///tmp/kvcd.sock --l1-size-gb 4 --eviction-policy LRU\n");
}

static int bad(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

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

int kvcd_options_parse(int argc, char **argv, kvcd_options_t *o, char *err,
                       size_t errlen)
{
    const char *endpoint = NULL;
    uint64_t u;
    json_error_t jerr;
    json_t *spec;
    int c, lvl;

    memset(o, 0, sizeof(*o));
    snprintf(o->host, sizeof(o->host), "127.0.0.1");
    o->port = 5555;
    o->chunk_size = 256;
    o->l1_size_gb = 1.0;
    o->eviction_policy = KVCD_EVICT_LRU;
    o->high_watermark = 0.95;
    o->low_watermark = 0.85;
    o->max_workers = 4;
    o->log_level = KVCD_LOG_INFO;
    o->max_keys = 4096;
    o->max_frame = 128ull << 20;
    o->max_request = 1024ull << 20;
    o->shutdown_timeout_ms = 10000;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_HOST:
            if (strlen(optarg) == 0 || strlen(optarg) >= sizeof(o->host))
                return bad(err, errlen, "--host: expected a host name or address");
            snprintf(o->host, sizeof(o->host), "%s", optarg);
            break;
        case OPT_PORT:
            if (parse_u64(optarg, 1, 65535, &u))
                return bad(err, errlen, "--port: expected an integer in 1..65535, got '%s'", optarg);
            o->port = (int)u;
            break;
        case OPT_ENDPOINT:
            if (!strstr(optarg, "://") || strlen(optarg) >= sizeof(o->endpoint))
                return bad(err, errlen, "--endpoint: expected a ZeroMQ endpoint such as ipc:///path or tcp://host:port, got '%s'", optarg);
            endpoint = optarg;
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
                o->eviction_policy = KVCD_EVICT_LRU;
            else if (strcasecmp(optarg, "noop") == 0)
                o->eviction_policy = KVCD_EVICT_NOOP;
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
        case OPT_SHUTDOWN_TIMEOUT:
            if (parse_u64(optarg, 0, 3600000, &u))
                return bad(err, errlen, "--shutdown-timeout-ms: expected an integer in 0..3600000, got '%s'", optarg);
            o->shutdown_timeout_ms = (int)u;
            break;
        case OPT_LOG_LEVEL:
            lvl = kvcd_log_parse_level(optarg);
            if (lvl < 0)
                return bad(err, errlen, "--log-level: expected debug, info, warning or error, got '%s'", optarg);
            o->log_level = lvl;
            break;
        case OPT_VERSION:
            printf("kvcd %s (protocol 1)\n", KVCD_VERSION);
            return 1;
        case OPT_HELP:
            usage();
            return 1;
        case ':':
            return bad(err, errlen, "%s: requires a value", argv[optind - 1]);
        default:
            return bad(err, errlen, "%s: unknown option (see kvcd --help)",
                       argv[optind - 1]);
        }
    }
    if (optind < argc)
        return bad(err, errlen, "%s: unexpected argument (see kvcd --help)", argv[optind]);
    if (o->low_watermark > o->high_watermark)
        return bad(err, errlen, "--l1-low-watermark: %.2f is above --l1-high-watermark %.2f",
                   o->low_watermark, o->high_watermark);
    if (o->max_frame > o->max_request)
        return bad(err, errlen, "--max-frame-mb: larger than --max-request-mb");
    if (endpoint)
        snprintf(o->endpoint, sizeof(o->endpoint), "%s", endpoint);
    else if (strchr(o->host, ':'))
        snprintf(o->endpoint, sizeof(o->endpoint), "tcp://[%s]:%d", o->host, o->port);
    else
        snprintf(o->endpoint, sizeof(o->endpoint), "tcp://%s:%d", o->host, o->port);
    return 0;
}

void kvcd_options_free(kvcd_options_t *o)
{
    size_t i;

    for (i = 0; i < o->n_l2; i++)
        json_decref(o->l2_specs[i]);
    o->n_l2 = 0;
}
