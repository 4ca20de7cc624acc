/*
 * main.c - the kvcd process: parse flags, size the threadpool, run the loop.
 *
 * Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 1 when start-up fails
 * (cannot reserve L1, cannot bind), 2 for a bad command line.
 */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "conf/options.h"
#include "protocol/kvcd_err.h"
#include "daemon/http.h"
#include "daemon/l2.h"
#include "daemon/log.h"
#include "daemon/server.h"

/* The HTTP endpoint's view of the daemon: the STATUS document. */
static json_t *server_status(void *srv)
{
    return kvcd_server_status(srv);
}

int main(int argc, char **argv)
{
    kvcd_options_t opt;
    kvcd_server_t *srv;
    kvcd_http_t *http = NULL;
    uv_loop_t loop;
    char err[512], workers[16];
    int rc, closed;

    rc = kvcd_options_parse(argc, argv, &opt, err, sizeof(err));
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "kvcd: %s\n", err);
        kvcd_options_free(&opt);
        return rc < 0 ? 2 : 0;
    }
    /* conf/ has its own level numbers; --help and --help-adapter print text
     * only, not the registry's start-up lines. */
    kvcd_log_level = opt.log_level == KVCD_OPT_LOG_DEBUG     ? KVCD_LOG_DEBUG
                     : opt.log_level == KVCD_OPT_LOG_WARNING ? KVCD_LOG_WARNING
                     : opt.log_level == KVCD_OPT_LOG_ERROR   ? KVCD_LOG_ERROR
                                                             : KVCD_LOG_INFO;
    if ((opt.want_help || opt.help_adapter) && kvcd_log_level < KVCD_LOG_WARNING)
        kvcd_log_level = KVCD_LOG_WARNING;

    /* Plugins first: --help and --help-adapter list what they bring too. */
    for (size_t i = 0; i < opt.n_plugins; i++) {
        if (kvcd_l2_load_plugin(opt.plugins[i], err, sizeof(err)) != 0) {
            fprintf(stderr, "kvcd: --plugin: %s\n", err);
            kvcd_options_free(&opt);
            return 2;
        }
    }
    if (opt.want_help || opt.help_adapter) {
        char types[512];

        kvcd_l2_type_list(types, sizeof(types));
        if (opt.want_help)
            kvcd_options_usage(types);
        else if (kvcd_l2_print_help(opt.help_adapter) != 0) {
            fprintf(stderr, "kvcd: --help-adapter: unknown type '%s' (known: %s)\n",
                    opt.help_adapter, types);
            rc = 2;
        }
        kvcd_options_free(&opt);
        kvcd_l2_registry_reset();
        return rc;
    }

    /* Files we create (ipc sockets, L2 files) are ours alone unless a flag says
     * otherwise (DESIGN.md §2.7). */
    umask(077);
    /* ZeroMQ receives every bulk frame into a fresh malloc block. Left to its
     * defaults glibc maps each large one anew and hands it back on free, so
     * every stored byte is first a page fault; keeping freed memory lets the
     * next request reuse it (docs/PERFORMANCE.md). */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    signal(SIGPIPE, SIG_IGN);
    /* libuv reads this once, when the threadpool first starts. */
    snprintf(workers, sizeof(workers), "%d", opt.max_workers);
    setenv("UV_THREADPOOL_SIZE", workers, 1);

    uv_loop_init(&loop);
    rc = kvcd_server_create(&loop, &opt, &srv, err, sizeof(err));
    if (rc != 0) {
        /* A bad adapter spec is a configuration error like a bad flag. */
        fprintf(stderr, "kvcd: %s\n", err);
        uv_loop_close(&loop);
        kvcd_options_free(&opt);
        kvcd_l2_registry_reset();
        return rc == KVCD_ECONFIG ? 2 : 1;
    }
    if (opt.http_port >= 0 &&
        kvcd_http_create(&loop, opt.http_host, opt.http_port,
                         server_status, srv, &http, err,
                         sizeof(err)) != 0) {
        /* Nobody was served yet: stop as a failed start. */
        fprintf(stderr, "kvcd: %s\n", err);
        kvcd_server_stop(srv);
        rc = 1;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    kvcd_http_destroy(http);
    if (kvcd_server_destroy(srv) != 0) {
        /* The shutdown deadline left workers inside an adapter: every request
         * was answered, but what they touch cannot be freed. */
        KVCD_LOG(KVCD_LOG_WARNING, "main", "exit (shutdown deadline; workers abandoned)");
        fflush(NULL);
        _exit(rc);
    }
    closed = uv_loop_close(&loop);
    if (closed != 0)
        KVCD_LOG(KVCD_LOG_WARNING, "main", "loop closed with handles open: %s",
                 uv_strerror(closed));
    kvcd_options_free(&opt);
    kvcd_l2_registry_reset();
    KVCD_LOG(KVCD_LOG_INFO, "main", "exit");
    return rc;
}
