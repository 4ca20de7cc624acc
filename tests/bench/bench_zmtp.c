/*
 * bench_zmtp.c - kvcd's ZMTP transport (daemon/zmtp.c) next to a libzmq ROUTER.
 *
 * A DEALER in this process stores chunks of 1, 4 and 32 MiB (a 64-byte header
 * frame plus one bulk frame, sent zero-copy with zmq_send_const, DEPTH
 * requests in flight) to a sink server in a forked child, which acks each
 * request with a small frame. Per endpoint kind (ipc, tcp) and chunk size, three
 * servers run one after the other on the same kind of endpoint:
 *
 *  - zmtp:        kvcd_zsrv with frame_alloc handing out slots of a
 *                 preallocated pool (standing in for L1), so the kernel writes
 *                 each bulk frame straight into its final place;
 *  - zmq:         a libzmq 4.3 ROUTER (own I/O thread) that receives and drops
 *                 the frames (what libzmq alone costs);
 *  - zmq+copy:    the same ROUTER, copying each bulk frame into the pool, which
 *                 is what the daemon has to do with a libzmq message.
 *
 * Reported: MB/s seen by the client (decimal MB) and the server child's CPU
 * seconds per GB (user+sys from wait4, every thread included), each the
 * median of REPS runs; the three servers take turns (zmtp, zmq, zmq+copy,
 * zmtp, ...) so that they see the same noise. The pool is written once before
 * timing so that page faults do not count.
 *
 * Usage: bench_zmtp [MiB per run, default 1024] [repetitions, default 3]
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>
#include <zmq.h>

#include "daemon/zmtp.h"

#define MIB ((size_t)1 << 20)
#define DEPTH 4
#define SLOTS (DEPTH + 2)

static unsigned char *pool; /* SLOTS * chunk bytes */
static size_t chunk;

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_zmtp: %s\n", what);
    exit(1);
}

/* ---- zmtp sink ---- */

static unsigned slot_next;
static unsigned char hdr_buf[SLOTS][256];

static void *z_alloc(kvcd_zconn_t *c, size_t index, size_t len, void **owner)
{
    *owner = NULL;
    if (index == 0)
        return len <= sizeof(hdr_buf[0]) ? hdr_buf[slot_next % SLOTS] : NULL;
    if (len > chunk)
        return NULL;
    return pool + (size_t)(slot_next % SLOTS) * chunk;
}

static void z_free(kvcd_zconn_t *c, void *buf, size_t len, void *owner)
{
}

static void z_closed(kvcd_zsrv_t *srv, void *data)
{
}

static void z_message(kvcd_zconn_t *c, void **frames, const size_t *lens, void **owners, size_t n)
{
    static char ack[1] = {'A'};
    uv_buf_t b = uv_buf_init(ack, 1);

    slot_next++;
    if (n == 1 && lens[0] == 1 && ((char *)frames[0])[0] == 'Q') {
        kvcd_zsrv_close(kvcd_zconn_server(c), 1000, z_closed, NULL);
        return;
    }
    if (kvcd_zconn_send(c, &b, 1, NULL, NULL) < 0)
        die("zmtp send");
}

static void run_zmtp(int ready_fd, const char *kind)
{
    uv_loop_t loop;
    kvcd_zsrv_t *srv;
    kvcd_zsrv_cbs_t cbs = {
        .frame_alloc = z_alloc, .frame_free = z_free, .on_message = z_message};
    kvcd_zsrv_opts_t o = {.max_frame = 64 * MIB};
    char ep[200], err[200];

    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    if (kvcd_zsrv_create(&loop, &o, &cbs, &srv) < 0)
        die("create");
    if (strcmp(kind, "ipc") == 0)
        snprintf(ep, sizeof(ep), "ipc:///tmp/bench-zmtp-%d.sock", (int)getpid());
    else
        snprintf(ep, sizeof(ep), "tcp://127.0.0.1:0");
    if (kvcd_zsrv_bind(srv, ep, err, sizeof(err)) < 0)
        die(err);
    snprintf(ep, sizeof(ep), "%s", kvcd_zsrv_endpoint(srv, 0));
    if (write(ready_fd, ep, strlen(ep) + 1) < 0)
        die("pipe");
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}

/* ---- libzmq sink ---- */

static void run_zmq(int ready_fd, const char *kind, int copy)
{
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    char ep[200];
    size_t el = sizeof(ep);
    unsigned slot = 0;

    zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
    if (strcmp(kind, "ipc") == 0)
        snprintf(ep, sizeof(ep), "ipc:///tmp/bench-zmq-%d.sock", (int)getpid());
    else
        snprintf(ep, sizeof(ep), "tcp://127.0.0.1:*");
    if (zmq_bind(s, ep) < 0)
        die("zmq_bind");
    zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, ep, &el);
    if (write(ready_fd, ep, strlen(ep) + 1) < 0)
        die("pipe");
    for (;;) {
        zmq_msg_t id, m;
        int quit = 0, more, idx = 0;

        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, s, 0) < 0)
            die("zmq recv");
        do {
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, s, 0) < 0)
                die("zmq recv");
            if (idx == 0 && zmq_msg_size(&m) == 1 && *(char *)zmq_msg_data(&m) == 'Q')
                quit = 1;
            if (idx > 0 && copy)
                memcpy(pool + (size_t)(slot % SLOTS) * chunk, zmq_msg_data(&m), zmq_msg_size(&m));
            more = zmq_msg_more(&m);
            zmq_msg_close(&m);
            idx++;
        } while (more);
        slot++;
        if (quit) {
            zmq_msg_close(&id);
            break;
        }
        zmq_msg_send(&id, s, ZMQ_SNDMORE);
        zmq_send(s, "A", 1, 0);
    }
    zmq_close(s);
    zmq_ctx_term(ctx);
    if (strncmp(ep, "ipc://", 6) == 0)
        unlink(ep + 6);
}

/* ---- client ---- */

typedef struct {
    double mbs, cpu_per_gb;
} result_t;

static result_t run(const char *server, const char *kind, size_t total)
{
    int pfd[2];
    pid_t pid;
    char ep[200];
    ssize_t n;
    void *ctx, *s;
    static unsigned char *src;
    static size_t src_len;
    size_t reqs = total / chunk, sent = 0, acked = 0;
    int zero = 0, tmo = 60000, status;
    struct rusage ru;
    double t0, t1;
    result_t r;
    char hdr[64], ack[8];

    if (src_len < chunk) {
        free(src);
        src = malloc(chunk);
        memset(src, 0x5a, chunk);
        src_len = chunk;
    }
    memset(hdr, 'H', sizeof(hdr));
    if (pipe(pfd) < 0)
        die("pipe");
    pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        memset(pool, 1, SLOTS * chunk); /* fault the pool in before timing */
        if (strcmp(server, "zmtp") == 0)
            run_zmtp(pfd[1], kind);
        else
            run_zmq(pfd[1], kind, strcmp(server, "zmq+copy") == 0);
        _exit(0);
    }
    close(pfd[1]);
    n = read(pfd[0], ep, sizeof(ep));
    close(pfd[0]);
    if (n <= 0)
        die("server did not start");
    ctx = zmq_ctx_new();
    s = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof(tmo));
    if (zmq_connect(s, ep) < 0)
        die("connect");
    /* one round trip before timing: the connection is up */
    zmq_send(s, "P", 1, 0);
    if (zmq_recv(s, ack, sizeof(ack), 0) < 0)
        die("warm-up");
    t0 = now();
    while (acked < reqs) {
        while (sent < reqs && sent - acked < DEPTH) {
            zmq_send_const(s, hdr, sizeof(hdr), ZMQ_SNDMORE);
            zmq_send_const(s, src, chunk, 0);
            sent++;
        }
        if (zmq_recv(s, ack, sizeof(ack), 0) < 0)
            die("ack timeout");
        acked++;
    }
    t1 = now();
    zmq_send(s, "Q", 1, 0);
    if (wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
        die("server failed");
    zmq_close(s);
    zmq_ctx_term(ctx);
    r.mbs = (double)(reqs * chunk) / (t1 - t0) / 1e6;
    r.cpu_per_gb = ((double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
                    (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6) /
                   ((double)(reqs * chunk) / 1e9);
    return r;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    static const size_t sizes[] = {1, 4, 32};
    static const char *servers[] = {"zmtp", "zmq", "zmq+copy"};
    static const char *kinds[] = {"ipc", "tcp"};
    size_t total = (argc > 1 ? (size_t)atol(argv[1]) : 1024) * MIB;
    int reps = argc > 2 ? atoi(argv[2]) : 3;

    if (reps < 1 || reps > 99)
        die("repetitions: 1..99");

    pool = malloc(SLOTS * 32 * MIB);
    if (!pool)
        die("pool");
    printf("%-4s %6s  %-9s %10s %14s\n", "kind", "chunk", "server", "MB/s", "server CPU s/GB");
    for (size_t k = 0; k < 2; k++)
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
            double mbs[3][99], cpu[3][99];

            chunk = sizes[i] * MIB;
            for (int rep = 0; rep < reps; rep++)
                for (size_t j = 0; j < 3; j++) {
                    result_t r = run(servers[j], kinds[k], total < 8 * chunk ? 8 * chunk : total);

                    mbs[j][rep] = r.mbs;
                    cpu[j][rep] = r.cpu_per_gb;
                }
            for (size_t j = 0; j < 3; j++)
                printf("%-4s %4zuMiB  %-9s %10.0f %14.3f\n", kinds[k], sizes[i], servers[j],
                       median(mbs[j], reps), median(cpu[j], reps));
            fflush(stdout);
        }
    free(pool);
    return 0;
}
