/*
 * main.c - the kvcd process: parse flags, size the threadpool, run the loop.
 *
 * Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 1 when start-up fails
 * (cannot reserve L1, cannot bind), 2 for a bad command line.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <uv.h>

#include "conf/options.h"
#include "daemon/log.h"
#include "daemon/server.h"

int main(int argc, char **argv)
{
    kvcd_options_t opt;
    kvcd_server_t *srv;
    uv_loop_t loop;
    char err[512], workers[16];
    int rc;

    rc = kvcd_options_parse(argc, argv, &opt, err, sizeof(err));
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "kvcd: %s\n", err);
        kvcd_options_free(&opt);
        return rc < 0 ? 2 : 0;
    }
    kvcd_log_level = opt.log_level;

    /* Files we create (ipc sockets, L2 files) are ours alone unless a flag says
     * otherwise (DESIGN.md §2.7). */
    umask(077);
    signal(SIGPIPE, SIG_IGN);
    /* libuv reads this once, when the threadpool first starts. */
    snprintf(workers, sizeof(workers), "%d", opt.max_workers);
    setenv("UV_THREADPOOL_SIZE", workers, 1);

    uv_loop_init(&loop);
    rc = kvcd_server_create(&loop, &opt, &srv, err, sizeof(err));
    if (rc != 0) {
        KVCD_LOG(KVCD_LOG_ERROR, "main", "%s", err);
        uv_loop_close(&loop);
        kvcd_options_free(&opt);
        return 1;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    kvcd_server_destroy(srv);
    rc = uv_loop_close(&loop);
    if (rc != 0)
        KVCD_LOG(KVCD_LOG_WARNING, "main", "loop closed with handles open: %s",
                 uv_strerror(rc));
    kvcd_options_free(&opt);
    KVCD_LOG(KVCD_LOG_INFO, "main", "exit");
    return 0;
}
