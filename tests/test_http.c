/*
 * test_http.c - the HTTP endpoint through the real daemon: /metrics (checked
 * by promtool and scraped by a real Prometheus server), /healthcheck turning
 * 503 when an L2 adapter goes unhealthy and back to 200, /status, and bad HTTP
 * input (unknown paths and methods, oversized headers, garbage, slow clients,
 * many connections) that must get the right status and leave the cache alone.
 *
 * Every daemon listens with --http-port 0 on loopback; the port it bound is
 * read from its log. Prometheus (Debian's `prometheus` package) runs on a free
 * loopback port with a private TSDB in the daemon's temp dir, and is killed on
 * every path: by the test, at exit, and by PR_SET_PDEATHSIG if the test dies.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "protocol/client.h"
#include "protocol/kvcd_err.h"
#include "daemon/metrics.h"
#include "tests/support.h"

static kvcd_proc_t proc;
static kvcd_client_t *cli;
static int http_port;

/* ---- helpers ---- */

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The port from the daemon's "serving ... on 127.0.0.1:PORT" log line. */
static int port_from_log(const char *log)
{
    char line[1024];
    FILE *f = fopen(log, "r");
    int port = -1;

    ck_assert_ptr_nonnull(f);
    while (fgets(line, sizeof(line), f)) {
        char *p = strstr(line, "serving /metrics");

        if (p && (p = strrchr(p, ':')))
            port = atoi(p + 1);
    }
    fclose(f);
    return port;
}

static void start(const char *const *extra)
{
    const char *args[32];
    size_t n = 0;

    args[n++] = "--http-port";
    args[n++] = "0";
    for (; extra && *extra; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    kvcd_test_start(&proc, &cli, args);
    http_port = port_from_log(proc.log);
    ck_assert_int_gt(http_port, 0);
}

static void stop(void)
{
    kvcd_test_stop(&proc, &cli);
}

static int connect_port(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    ck_assert_int_ge(fd, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Read until EOF or timeout into buf (NUL-terminated); bytes read. */
static size_t read_all(int fd, char *buf, size_t cap, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    size_t n = 0;

    while (n + 1 < cap) {
        struct pollfd p = {fd, POLLIN, 0};
        uint64_t t = now_ms();
        ssize_t r;

        if (t >= end || poll(&p, 1, (int)(end - t)) <= 0)
            break;
        r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return n;
}

/* Send a raw request; the status code of the answer (0 if none); the whole
 * response in resp. */
static int http_raw(int port, const char *req, size_t reqlen, char *resp, size_t cap)
{
    int fd = connect_port(port), status = 0;
    size_t off = 0;

    resp[0] = '\0';
    if (fd < 0)
        return 0; /* e.g. Prometheus still starting */
    while (off < reqlen) {
        ssize_t w = write(fd, req + off, reqlen - off);

        if (w <= 0)
            break; /* the server may close early on bad input */
        off += (size_t)w;
    }
    read_all(fd, resp, cap, 5000);
    close(fd);
    sscanf(resp, "HTTP/1.%*d %d", &status);
    return status;
}

static char *resp_buf;
#define RESP_CAP (1u << 20)

/* GET (or another method) path; the body in *body (points into resp_buf). */
static int http_req(const char *method, const char *path, const char **body)
{
    char req[512];
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                     method, path);
    int status;
    char *b;

    if (!resp_buf)
        resp_buf = malloc(RESP_CAP);
    status = http_raw(http_port, req, (size_t)n, resp_buf, RESP_CAP);
    b = strstr(resp_buf, "\r\n\r\n");
    if (body)
        *body = b ? b + 4 : "";
    return status;
}

/* The value of sample `series` (name with labels exactly as rendered), or -1. */
static double metric(const char *text, const char *series)
{
    size_t len = strlen(series);
    const char *p = text;

    while ((p = strstr(p, series))) {
        if ((p == text || p[-1] == '\n') && p[len] == ' ')
            return strtod(p + len + 1, NULL);
        p += len;
    }
    return -1;
}

static long long status_ll(json_t *st, const char *a, const char *b, const char *c)
{
    json_t *v = json_object_get(st, a);

    if (b)
        v = json_object_get(v, b);
    if (c)
        v = json_object_get(v, c);
    ck_assert_msg(json_is_integer(v), "status %s.%s.%s missing", a, b ? b : "", c ? c : "");
    return (long long)json_integer_value(v);
}

static kvcd_key_t base;
static uint8_t hb[64][8];

static void store_one(size_t i, size_t len)
{
    char *buf = malloc(len);
    const void *bufs[1] = {buf};
    size_t lens[1] = {len};
    kvcd_bytes_t h = kvcd_test_hash(hb[i], i + 1);
    int res[1];

    kvcd_fill_random(buf, len, i);
    kvcd_keyset(&base, "org/model", 1, 0, 0, "");
    ck_assert_int_eq(kvcd_client_store(cli, &base, &h, 1, bufs, lens, res), 0);
    ck_assert_int_eq(res[0], 0);
    free(buf);
}

/* Runs `promtool check metrics` on text; its exit status and output. */
static int promtool_check(const char *text, char *out, size_t outlen)
{
    char path[400], cmd[900];
    FILE *f;
    int rc;

    snprintf(path, sizeof(path), "%s/metrics.txt", proc.dir);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "promtool check metrics < '%s' 2>&1", path);
    f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    out[fread(out, 1, outlen - 1, f)] = '\0';
    rc = pclose(f);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* ---- /metrics, /status, /livez ---- */

START_TEST(test_metrics_match_status)
{
    const char *args[] = {"--l2-adapter", "{\"type\":\"mock\"}", NULL};
    const char *body;
    char *text, out[4096];
    json_t *st, *js;
    size_t i;

    start(args);
    for (i = 0; i < 3; i++)
        store_one(i, 4096 + i);
    ck_assert_int_eq(kvcd_client_lookup(cli, &base, (kvcd_bytes_t[]){kvcd_test_hash(hb[9], 1)},
                                        1, &(size_t){0}, NULL),
                     0);

    ck_assert_int_eq(http_req("GET", "/metrics", &body), 200);
    ck_assert_ptr_nonnull(strstr(resp_buf, "Content-Type: text/plain; version=0.0.4"));
    text = strdup(body);
    /* Nothing happened between the scrape and STATUS but STATUS itself. */
    st = kvcd_test_status(cli);
    ck_assert_int_eq(status_ll(st, "counters", "stores", NULL), 3);
    ck_assert_double_eq(metric(text, "kvcd_stored_objects_total"), 3);
    ck_assert_double_eq(metric(text, "kvcd_requests_total{op=\"STORE\"}"),
                        (double)status_ll(st, "ops", "STORE", "requests"));
    ck_assert_double_eq(metric(text, "kvcd_requests_total{op=\"STORE\"}"), 3);
    ck_assert_double_eq(metric(text, "kvcd_requests_total{op=\"LOOKUP\"}"), 1);
    ck_assert_double_eq(metric(text, "kvcd_request_duration_seconds_count{op=\"STORE\"}"), 3);
    ck_assert_double_eq(metric(text, "kvcd_request_duration_seconds_bucket{op=\"STORE\",le=\"+Inf\"}"),
                        3);
    ck_assert_double_eq(metric(text, "kvcd_stored_bytes_total"), 3 * 4096 + 3);
    ck_assert_double_eq(metric(text, "kvcd_l1_objects"), (double)status_ll(st, "l1", "objects", NULL));
    ck_assert_double_eq(metric(text, "kvcd_l2_healthy{adapter=\"#1 (mock)\",type=\"mock\"}"), 1);
    ck_assert_double_eq(metric(text, "kvcd_ready"), 1);
    json_decref(st);

    ck_assert_msg(promtool_check(text, out, sizeof(out)) == 0, "promtool check metrics: %s", out);
    free(text);

    /* /status is the STATUS document (one more STORE-free request later). */
    ck_assert_int_eq(http_req("GET", "/status", &body), 200);
    ck_assert_ptr_nonnull(strstr(resp_buf, "Content-Type: application/json"));
    js = json_loads(body, 0, NULL);
    ck_assert_ptr_nonnull(js);
    ck_assert_int_eq(status_ll(js, "counters", "stores", NULL), 3);
    ck_assert_str_eq(json_string_value(json_object_get(js, "state")), "running");
    json_decref(js);

    ck_assert_int_eq(http_req("GET", "/livez", &body), 200);
    ck_assert_str_eq(body, "ok\n");
    ck_assert_int_eq(http_req("HEAD", "/metrics", &body), 200);
    ck_assert_str_eq(body, "");
    /* A query string does not change the page. */
    ck_assert_int_eq(http_req("GET", "/healthcheck?verbose=1", &body), 200);
    stop();
}
END_TEST

/* Errors are counted by operation and error name. */
/* The Redis Cluster view (issue 14) reaches /metrics: rendered from a STATUS
 * document shaped like the redis adapter's, and promtool accepts it. */
START_TEST(test_cluster_view_rendered)
{
    json_t *st = json_pack(
        "{s:s, s:[{s:s, s:s, s:b, s:{s:b, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i},"
        " s:[{s:s, s:s, s:s}, {s:s, s:s, s:s}]}]}",
        "server", "kvcd test", "l2", "name", "#1 (redis)", "type", "redis", "healthy", 1,
        "cluster", "have_map", 1, "slots_covered", 16384, "masters", 3, "replicas", 3,
        "refreshes", 7, "refresh_failures", 1, "moved", 12, "ask", 2, "redirect_failures", 0,
        "cluster_down_errors", 4, "nodes", "address", "127.0.0.1:7000", "state", "ready",
        "role", "master", "address", "127.0.0.1:7001", "state", "down", "role", "replica");
    char out[4096];
    size_t len;
    char *text;

    ck_assert_ptr_nonnull(st);
    text = kvcd_metrics_render(st, &len);
    ck_assert_ptr_nonnull(text);
    ck_assert_double_eq(
        metric(text, "kvcd_redis_cluster_slots_covered{adapter=\"#1 (redis)\",type=\"redis\"}"),
        16384);
    ck_assert_double_eq(
        metric(text, "kvcd_redis_cluster_moved_total{adapter=\"#1 (redis)\",type=\"redis\"}"),
        12);
    ck_assert_double_eq(metric(text, "kvcd_redis_cluster_node_up{adapter=\"#1 (redis)\","
                                     "type=\"redis\",node=\"127.0.0.1:7001\",role=\"replica\"}"),
                        0);
    ck_assert_double_eq(metric(text, "kvcd_redis_cluster_node_up{adapter=\"#1 (redis)\","
                                     "type=\"redis\",node=\"127.0.0.1:7000\",role=\"master\"}"),
                        1);
    ck_assert_msg(promtool_check(text, out, sizeof(out)) == 0, "promtool check metrics: %s", out);
    free(text);
    json_decref(st);
}
END_TEST

START_TEST(test_error_counters)
{
    const char *body;
    kvcd_bytes_t h = kvcd_test_hash(hb[0], 1);
    const void *bufs[1] = {""};
    size_t lens[1] = {0};
    int res[1];

    start(NULL);
    kvcd_keyset(&base, "org/model", 1, 0, 0, "");
    /* An empty bulk frame: EFRAMES for the whole STORE. */
    ck_assert_int_eq(kvcd_client_store(cli, &base, &h, 1, bufs, lens, res), KVCD_EFRAMES);
    ck_assert_int_eq(http_req("GET", "/metrics", &body), 200);
    ck_assert_double_eq(metric(body, "kvcd_request_errors_total{op=\"STORE\",error=\"EFRAMES\"}"),
                        1);
    ck_assert_double_eq(metric(body, "kvcd_requests_total{op=\"STORE\"}"), 1);
    stop();
}
END_TEST

/* ---- /healthcheck ---- */

/* Poll /healthcheck until it answers `want`, at most 10 s. */
static int wait_health(int want, const char **body)
{
    uint64_t end = now_ms() + 10000;
    int got;

    do {
        got = http_req("GET", "/healthcheck", body);
        if (got == want)
            return got;
        usleep(20000);
    } while (now_ms() < end);
    return got;
}

START_TEST(test_healthcheck_follows_l2_health)
{
    /* One request = one adapter call (--max-workers 1): the first three
     * write-behind calls fail, which makes the adapter unhealthy; the fourth
     * succeeds, which makes it healthy again. */
    const char *args[] = {"--max-workers", "1", "--l2-adapter",
                          "{\"type\":\"fault\",\"inner\":{\"type\":\"mock\"},"
                          "\"fail_calls\":{\"store\":[0,1,2]}}",
                          NULL};
    const char *body;
    size_t i;

    start(args);
    ck_assert_int_eq(http_req("GET", "/healthcheck", &body), 200);
    ck_assert_str_eq(body, "ok\n");
    for (i = 0; i < 3; i++)
        store_one(i, 1024);
    ck_assert_int_eq(wait_health(503, &body), 503);
    ck_assert_msg(strstr(body, "L2 #1 (fault) unhealthy") != NULL, "body: %s", body);
    ck_assert_int_eq(http_req("GET", "/metrics", &body), 200);
    ck_assert_double_eq(metric(body, "kvcd_l2_healthy{adapter=\"#1 (fault)\",type=\"fault\"}"), 0);
    ck_assert_double_eq(metric(body, "kvcd_ready"), 0);
    /* Liveness does not follow the tiers: the loop still answers. */
    ck_assert_int_eq(http_req("GET", "/livez", &body), 200);
    /* The cache itself still serves from L1. */
    ck_assert_int_eq(kvcd_client_ping(cli, &(kvcd_ping_t){0}, (char[64]){0}, 64), 0);

    store_one(3, 1024);
    ck_assert_int_eq(wait_health(200, &body), 200);
    ck_assert_int_eq(http_req("GET", "/metrics", &body), 200);
    ck_assert_double_eq(metric(body, "kvcd_l2_healthy{adapter=\"#1 (fault)\",type=\"fault\"}"), 1);
    ck_assert_double_eq(metric(body, "kvcd_l2_failures_total{adapter=\"#1 (fault)\",type=\"fault\"}"),
                        3);
    stop();
}
END_TEST

/* ---- bad input ---- */

START_TEST(test_bad_requests)
{
    char *big, resp[8192];
    const char *body;
    size_t n;

    start(NULL);
    ck_assert_int_eq(http_req("GET", "/nope", &body), 404);
    ck_assert_int_eq(http_req("GET", "/metrics/../status", &body), 404);
    ck_assert_int_eq(http_req("POST", "/metrics", &body), 405);
    ck_assert_ptr_nonnull(strstr(resp_buf, "Allow: GET, HEAD"));
    ck_assert_int_eq(http_req("DELETE", "/status", &body), 405);
    ck_assert_int_eq(http_req("PUT", "/healthcheck", &body), 405);

    /* A POST with a body. */
    ck_assert_int_eq(http_raw(http_port,
                              "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                              "Connection: close\r\n\r\nhello",
                              strlen("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                     "Connection: close\r\n\r\nhello"),
                              resp, sizeof(resp)),
                     405);
    /* Not HTTP at all: closed without an answer. */
    ck_assert_int_eq(http_raw(http_port, "GARBAGE\r\n\r\n", 11, resp, sizeof(resp)), 0);
    ck_assert_str_eq(resp, "");
#define RAW(s) http_raw(http_port, s, strlen(s), resp, sizeof(resp))
    /* No HTTP version; an unknown one; a header line without a colon. */
    ck_assert_int_eq(RAW("GET /metrics\r\n\r\n"), 400);
    ck_assert_int_eq(RAW("GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
    ck_assert_int_eq(RAW("GET /metrics HTTP/1.1\r\nHost: x\r\nBadheader\r\n\r\n"), 400);
#undef RAW

    /* Headers larger than the connection's memory limit (16 KiB). */
    big = malloc(64 * 1024);
    n = (size_t)snprintf(big, 64 * 1024, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(big + n, 'a', 40000);
    n += 40000;
    n += (size_t)snprintf(big + n, 64 * 1024 - n, "\r\nConnection: close\r\n\r\n");
    ck_assert_int_eq(http_raw(http_port, big, n, resp, sizeof(resp)), 431);
    /* A URL that alone is too long. */
    n = (size_t)snprintf(big, 64 * 1024, "GET /");
    memset(big + n, 'b', 40000);
    n += 40000;
    n += (size_t)snprintf(big + n, 64 * 1024 - n, " HTTP/1.1\r\nHost: x\r\n\r\n");
    ck_assert_int_eq(http_raw(http_port, big, n, resp, sizeof(resp)), 414);
    free(big);

    /* After all that the endpoint and the cache still answer. */
    ck_assert_int_eq(http_req("GET", "/healthcheck", &body), 200);
    ck_assert_int_eq(kvcd_client_ping(cli, &(kvcd_ping_t){0}, (char[64]){0}, 64), 0);
    stop();
}
END_TEST

START_TEST(test_slow_and_many_clients)
{
    int fds[100], nfd = 0, slow, i, closed = 0;
    const char *body;
    char buf[256];

    start(NULL);
    /* A slow client: half a request line, then nothing. Others are served. */
    slow = connect_port(http_port);
    ck_assert_int_ge(slow, 0);
    ck_assert_int_eq(write(slow, "GET /met", 8), 8);
    ck_assert_int_eq(http_req("GET", "/healthcheck", &body), 200);

    /* More idle connections than the limit (64). */
    for (i = 0; i < 100; i++) {
        int fd = connect_port(http_port);

        if (fd >= 0)
            fds[nfd++] = fd;
    }
    /* The cache serves everyone meanwhile. */
    store_one(0, 65536);
    ck_assert_int_eq(kvcd_client_ping(cli, &(kvcd_ping_t){0}, (char[64]){0}, 64), 0);
    ck_assert_int_eq(kvcd_test_stat(cli, "counters", "stores"), 1);
    /* The slow client is dropped after the idle timeout (10 s): readable
     * with EOF, never left hanging; so are the idle connections it accepted
     * (those over the limit wait in the kernel's backlog until then). */
    {
        struct pollfd p = {slow, POLLIN, 0};

        ck_assert_int_eq(poll(&p, 1, 15000), 1);
        ck_assert_int_le(read(slow, buf, sizeof(buf)), 0);
        close(slow);
    }
    /* The idle ones accepted with it go the same way, each timed from its own
     * accept: give them the same bound, loaded machine or not. */
    {
        uint64_t until = now_ms() + 15000;

        while (closed == 0 && now_ms() < until) {
            for (i = 0; i < nfd; i++) {
                struct pollfd p = {fds[i], POLLIN, 0};

                if (fds[i] >= 0 && poll(&p, 1, 0) > 0 && read(fds[i], buf, sizeof(buf)) <= 0) {
                    close(fds[i]);
                    fds[i] = -1;
                    closed++;
                }
            }
            if (closed == 0)
                usleep(100 * 1000);
        }
    }
    ck_assert_int_gt(closed, 0);
    for (i = 0; i < nfd; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    ck_assert_int_eq(http_req("GET", "/healthcheck", &body), 200);
    stop();
}
END_TEST

/* ---- a real Prometheus scrapes kvcd ---- */

static pid_t prom_pid;

static void prom_kill(void)
{
    if (prom_pid > 0) {
        kill(prom_pid, SIGKILL);
        waitpid(prom_pid, NULL, 0);
        prom_pid = 0;
    }
}

static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Prometheus's instant value of `query`, or -1 while it has none. */
static double prom_query(int port, const char *query)
{
    char req[1024], resp[65536], *b;
    json_t *js, *res;
    double v = -1;
    int status;

    snprintf(req, sizeof(req),
             "GET /api/v1/query?query=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
             query);
    status = http_raw(port, req, strlen(req), resp, sizeof(resp));
    if (status != 200 || !(b = strstr(resp, "\r\n\r\n")))
        return -1;
    js = json_loads(b + 4, 0, NULL);
    res = json_object_get(json_object_get(js, "data"), "result");
    if (json_array_size(res) == 1) {
        json_t *val = json_object_get(json_array_get(res, 0), "value");

        v = strtod(json_string_value(json_array_get(val, 1)), NULL);
    }
    json_decref(js);
    return v;
}

START_TEST(test_prometheus_scrape)
{
    const char *args[] = {"--l2-adapter", "{\"type\":\"mock\"}", NULL};
    char cfg[400], tsdb[400], plog[400], listen[64], cfgarg[450], tsdbarg[450];
    int pport, i, ready = 0;
    long long want;
    double got = -1;
    uint64_t end;
    FILE *f;

    ck_assert_msg(access("/usr/bin/prometheus", X_OK) == 0 || system("command -v prometheus "
                                                                     ">/dev/null") == 0,
                  "prometheus is not installed (scripts/install-deps.sh)");
    start(args);
    snprintf(cfg, sizeof(cfg), "%s/prometheus.yml", proc.dir);
    snprintf(tsdb, sizeof(tsdb), "%s/tsdb", proc.dir);
    snprintf(plog, sizeof(plog), "%s/prometheus.log", proc.dir);
    f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f,
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
            "scrape_configs:\n  - job_name: kvcd\n    static_configs:\n"
            "      - targets: ['127.0.0.1:%d']\n",
            http_port);
    fclose(f);
    pport = free_port();
    snprintf(listen, sizeof(listen), "--web.listen-address=127.0.0.1:%d", pport);
    snprintf(cfgarg, sizeof(cfgarg), "--config.file=%s", cfg);
    snprintf(tsdbarg, sizeof(tsdbarg), "--storage.tsdb.path=%s", tsdb);

    atexit(prom_kill);
    prom_pid = fork();
    ck_assert_int_ge(prom_pid, 0);
    if (prom_pid == 0) {
        int fd = open(plog, O_WRONLY | O_CREAT | O_TRUNC, 0600);

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fd, 1);
        dup2(fd, 2);
        execlp("prometheus", "prometheus", cfgarg, tsdbarg, listen, (char *)NULL);
        _exit(127);
    }

    /* Known traffic: 7 STOREs of one key each, 2 LOOKUPs. */
    for (i = 0; i < 7; i++)
        store_one((size_t)i, 2048);
    for (i = 0; i < 2; i++)
        ck_assert_int_eq(kvcd_client_lookup(cli, &base,
                                            (kvcd_bytes_t[]){kvcd_test_hash(hb[20], 1)}, 1,
                                            &(size_t){0}, NULL),
                         0);
    want = kvcd_test_stat(cli, "counters", "stores");
    ck_assert_int_eq(want, 7);

    end = now_ms() + 30000;
    while (now_ms() < end) {
        got = prom_query(pport, "kvcd_stored_objects_total");
        if (got >= 0)
            ready = 1;
        if (got == (double)want)
            break;
        usleep(200000);
    }
    ck_assert_msg(ready, "Prometheus never reported kvcd_stored_objects_total (see %s)", plog);
    ck_assert_msg(got == (double)want, "Prometheus has %g, STATUS %lld", got, want);
    /* The labelled per-op counter too, against STATUS's ops table. */
    {
        json_t *st = kvcd_test_status(cli);
        long long lk = status_ll(st, "ops", "LOOKUP", "requests");

        json_decref(st);
        ck_assert_int_eq(lk, 2);
        end = now_ms() + 30000;
        do {
            got = prom_query(pport, "kvcd_requests_total%7Bop%3D%22LOOKUP%22%7D");
            if (got == (double)lk)
                break;
            usleep(200000);
        } while (now_ms() < end);
        ck_assert_msg(got == (double)lk, "Prometheus has %g LOOKUPs, STATUS %lld", got, lk);
    }
    /* Prometheus saw the target up. */
    ck_assert_double_eq(prom_query(pport, "up%7Bjob%3D%22kvcd%22%7D"), 1);
    prom_kill();
    stop();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("http");
    TCase *tc = tcase_create("http");

    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_metrics_match_status);
    tcase_add_test(tc, test_error_counters);
    tcase_add_test(tc, test_cluster_view_rendered);
    tcase_add_test(tc, test_healthcheck_follows_l2_health);
    tcase_add_test(tc, test_bad_requests);
    tcase_add_test(tc, test_slow_and_many_clients);
    tcase_add_test(tc, test_prometheus_scrape);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return kvcd_test_run(suite());
}
