/*
 * bench_kv.c - what a user would pick instead of kvcd (Redis, memcached), and
 * the transport's ceiling (a plain unix-socket stream of the same bytes).
 *
 * One run starts a private redis-server and a private memcached, each on a unix
 * socket in a fresh temp dir, and measures, for each value size (default 1, 4
 * and 16 MiB) in batches of 16 values:
 *
 *  - Redis through hiredis's synchronous API: 16 SETs appended with
 *    redisAppendCommandArgv and sent as one pipeline, then their 16 replies read
 *    with redisGetReply ("store"); the same with 16 GETs ("load"), the values
 *    read in place from the reply objects;
 *  - memcached through its ASCII protocol with the minimal client below: 16
 *    `set KEY 0 0 LEN` commands pipelined, then 16 STORED replies ("store"); one
 *    `get k1 ... k16` and its VALUE blocks, each value read into the caller's
 *    buffer ("load").
 *
 * Each batch overwrites the same 16 keys of its size (a steady-state cache, as
 * kvcd's L1 is in its benchmarks); an untimed batch of each kind warms both
 * servers first. Redis and memcached take turns within every repetition, so both
 * see the same noise; a repetition runs batches for at least --time seconds, and
 * the median repetition is reported. Every stored value carries a fresh stamp;
 * after each load batch (untimed) two of its values are compared byte for byte
 * with what was stored, and every reply is checked for type and length.
 *
 * The servers die with this program (PR_SET_PDEATHSIG) and are killed at exit;
 * the temp dir is removed on every path (normal, failure, Ctrl-C, watchdog).
 * A missing redis-server or memcached is an error (exit 1), not a skip.
 *
 * Usage: bench_kv [--sizes 1,4,16] [--batch 16] [--reps 3] [--time S] [--quick]
 *                 [--csv] [-v]
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "tests/bench/bench_util.h"

#define MAX_SIZES 8
#define MAX_BATCH 64
#define MAX_REPS 16
#define NSERVERS 3
#define WATCHDOG_S 120
#define BUDGET_S 25.0 /* no new repetition after this (each figure has at least one) */
#define START_MS 10000

enum { S_REDIS, S_MEMCACHED, S_STREAM };
static const char *const server_name[NSERVERS] = {"Redis", "memcached", "stream"};

/* ---- options ---- */

static struct {
    size_t sizes[MAX_SIZES];
    size_t nsizes;
    int batch;
    int reps;
    double rep_s;
    int quick;
    int csv;
    int verbose;
} O;

/* ---- the servers, their temp dir, and cleanup on every path ---- */

static char tmpdir[256];
static char files[5][320]; /* sockets and logs, removed with the dir */
static pid_t pids[NSERVERS];

static void cleanup_now(void)
{
    int i;

    for (i = 0; i < NSERVERS; i++)
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
            pids[i] = 0;
        }
    for (i = 0; i < 5; i++)
        if (files[i][0])
            unlink(files[i]);
    if (tmpdir[0])
        rmdir(tmpdir);
    tmpdir[0] = '\0';
}

static void on_signal(int sig)
{
    static const char msg[] = "bench_kv: interrupted or timed out; servers killed\n";
    ssize_t w = write(2, msg, sizeof(msg) - 1);

    (void)w;
    cleanup_now();
    _exit(sig == SIGALRM ? 3 : 128 + sig);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "bench_kv: FAIL: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    cleanup_now();
    exit(1);
}

/* 1 if prog is an executable in $PATH. */
static int in_path(const char *prog)
{
    const char *path = getenv("PATH");
    char buf[1024];
    size_t len;

    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
    while (*path) {
        len = strcspn(path, ":");
        snprintf(buf, sizeof(buf), "%.*s/%s", (int)len, len ? path : ".", prog);
        if (access(buf, X_OK) == 0)
            return 1;
        path += len;
        if (*path)
            path++;
    }
    return 0;
}

/* Start argv (searched in $PATH) with stdout and stderr to log; it dies with us. */
static pid_t spawn(const char *const *argv, const char *log)
{
    pid_t parent = getpid(), pid = fork();
    int fd;

    if (pid < 0)
        fail("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static void print_log(const char *log)
{
    char buf[2048];
    size_t n;
    FILE *f = fopen(log, "r");

    if (!f)
        return;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    fprintf(stderr, "---- %s ----\n%s---- end ----\n", log, buf);
}

static void check_alive(int s, const char *log)
{
    int status;

    if (pids[s] > 0 && waitpid(pids[s], &status, WNOHANG) == pids[s]) {
        pids[s] = 0;
        print_log(log);
        fail("%s exited (status 0x%x)", server_name[s], status);
    }
}

/* ---- Redis through hiredis (synchronous API) ---- */

static redisContext *R;

static void redis_start(const char *sock, const char *log)
{
    const char *argv[] = {"redis-server",
                          "--port",
                          "0",
                          "--unixsocket",
                          sock,
                          "--unixsocketperm",
                          "700",
                          "--save",
                          "",
                          "--appendonly",
                          "no",
                          "--maxmemory",
                          "0",
                          "--proto-max-bulk-len",
                          "1gb",
                          "--dir",
                          tmpdir,
                          NULL};
    double deadline = bench_now() + START_MS / 1000.0;
    struct timeval tv = {30, 0};

    pids[S_REDIS] = spawn(argv, log);
    while (bench_now() < deadline) {
        redisReply *rep;

        check_alive(S_REDIS, log);
        R = redisConnectUnix(sock);
        if (R && !R->err) {
            rep = redisCommand(R, "PING");
            if (rep && rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "PONG") == 0) {
                freeReplyObject(rep);
                redisSetTimeout(R, tv);
                return;
            }
            if (rep)
                freeReplyObject(rep);
        }
        if (R)
            redisFree(R);
        R = NULL;
        usleep(20000);
    }
    print_log(log);
    fail("redis-server did not answer PING on %s within %d ms", sock, START_MS);
}

static void redis_store(char keys[][32], uint8_t *const *vals, size_t n, size_t size)
{
    const char *argv[3];
    size_t argvlen[3];
    redisReply *rep;
    size_t i;

    for (i = 0; i < n; i++) {
        argv[0] = "SET";
        argvlen[0] = 3;
        argv[1] = keys[i];
        argvlen[1] = strlen(keys[i]);
        argv[2] = (const char *)vals[i];
        argvlen[2] = size;
        if (redisAppendCommandArgv(R, 3, argv, argvlen) != REDIS_OK)
            fail("Redis SET append: %s", R->errstr);
    }
    for (i = 0; i < n; i++) {
        if (redisGetReply(R, (void **)&rep) != REDIS_OK)
            fail("Redis SET: %s", R->errstr);
        if (rep->type != REDIS_REPLY_STATUS || strcmp(rep->str, "OK") != 0)
            fail("Redis SET %s: %s", keys[i], rep->type == REDIS_REPLY_ERROR ? rep->str : "not OK");
        freeReplyObject(rep);
    }
}

/* GET the n keys; the replies are left in reps[] (the values are read in place). */
static void redis_load(char keys[][32], size_t n, size_t size, redisReply **reps)
{
    const char *argv[2];
    size_t argvlen[2];
    size_t i;

    for (i = 0; i < n; i++) {
        argv[0] = "GET";
        argvlen[0] = 3;
        argv[1] = keys[i];
        argvlen[1] = strlen(keys[i]);
        if (redisAppendCommandArgv(R, 2, argv, argvlen) != REDIS_OK)
            fail("Redis GET append: %s", R->errstr);
    }
    for (i = 0; i < n; i++) {
        if (redisGetReply(R, (void **)&reps[i]) != REDIS_OK)
            fail("Redis GET: %s", R->errstr);
        if (reps[i]->type != REDIS_REPLY_STRING || (size_t)reps[i]->len != size)
            fail("Redis GET %s: type %d, %zu bytes (want a string of %zu)", keys[i], reps[i]->type,
                 reps[i]->type == REDIS_REPLY_STRING ? (size_t)reps[i]->len : 0, size);
    }
}

/* ---- memcached through its ASCII protocol: a minimal client ---- */

static struct {
    int fd;
    char buf[65536];
    size_t pos, len;
} M = {.fd = -1};

static int unix_connect(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        close(fd);
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Write all of iov (blocking socket). */
static void mc_writev(struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t w = writev(M.fd, iov, n);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            fail("memcached write: %s", strerror(errno));
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
}

static void mc_fill(void)
{
    ssize_t r;

    if (M.pos > 0) {
        memmove(M.buf, M.buf + M.pos, M.len - M.pos);
        M.len -= M.pos;
        M.pos = 0;
    }
    if (M.len == sizeof(M.buf))
        fail("memcached: reply line longer than %zu bytes", sizeof(M.buf));
    do
        r = read(M.fd, M.buf + M.len, sizeof(M.buf) - M.len);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        fail("memcached read: %s", strerror(errno));
    if (r == 0)
        fail("memcached closed the connection");
    M.len += (size_t)r;
}

/* The next reply line, without its \r\n, NUL-terminated in the buffer. */
static char *mc_line(void)
{
    char *p, *line;

    for (;;) {
        p = memmem(M.buf + M.pos, M.len - M.pos, "\r\n", 2);
        if (p) {
            line = M.buf + M.pos;
            *p = '\0';
            M.pos = (size_t)(p + 2 - M.buf);
            return line;
        }
        mc_fill();
    }
}

/* Read exactly n bytes into dst: what is buffered, then straight from the socket. */
static void mc_read(void *dst, size_t n)
{
    size_t have = M.len - M.pos;
    uint8_t *d = dst;

    if (have > n)
        have = n;
    memcpy(d, M.buf + M.pos, have);
    M.pos += have;
    d += have;
    n -= have;
    while (n > 0) {
        ssize_t r = read(M.fd, d, n);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            fail("memcached read: %s", r < 0 ? strerror(errno) : "connection closed");
        d += r;
        n -= (size_t)r;
    }
}

static void mc_start(const char *sock, const char *log)
{
    const char *argv[] = {"memcached", "-s",  sock, "-a", "0700", "-m",   "4096",
                          "-I",        "64m", "-U", "0",  "-u",   "root", NULL};
    double deadline = bench_now() + START_MS / 1000.0;
    struct iovec iov;

    if (geteuid() != 0)
        argv[11] = NULL; /* -u only matters (and is only allowed) for root */
    pids[S_MEMCACHED] = spawn(argv, log);
    while (bench_now() < deadline) {
        check_alive(S_MEMCACHED, log);
        M.fd = unix_connect(sock);
        if (M.fd >= 0) {
            struct timeval tv = {30, 0};

            setsockopt(M.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            setsockopt(M.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
            iov.iov_base = (void *)"version\r\n";
            iov.iov_len = 9;
            mc_writev(&iov, 1);
            if (strncmp(mc_line(), "VERSION ", 8) != 0)
                fail("memcached: unexpected answer to version");
            return;
        }
        usleep(20000);
    }
    print_log(log);
    fail("memcached did not accept a connection on %s within %d ms", sock, START_MS);
}

static void mc_store(char keys[][32], uint8_t *const *vals, size_t n, size_t size)
{
    char hdr[MAX_BATCH][64];
    struct iovec iov[3];
    char *line;
    size_t i;

    for (i = 0; i < n; i++) {
        iov[0].iov_base = hdr[i];
        iov[0].iov_len =
            (size_t)snprintf(hdr[i], sizeof(hdr[i]), "set %s 0 0 %zu\r\n", keys[i], size);
        iov[1].iov_base = vals[i];
        iov[1].iov_len = size;
        iov[2].iov_base = (void *)"\r\n";
        iov[2].iov_len = 2;
        mc_writev(iov, 3);
    }
    for (i = 0; i < n; i++) {
        line = mc_line();
        if (strcmp(line, "STORED") != 0)
            fail("memcached set %s: %s", keys[i], line);
    }
}

/* One `get` of the n keys; value i is read into dst[i]. */
static void mc_load(char keys[][32], size_t n, size_t size, uint8_t *const *dst)
{
    char cmd[MAX_BATCH * 40 + 8], *line, key[64], crlf[2];
    size_t i, len = 0, vlen;
    unsigned flags;
    struct iovec iov;

    len += (size_t)snprintf(cmd, sizeof(cmd), "get");
    for (i = 0; i < n; i++)
        len += (size_t)snprintf(cmd + len, sizeof(cmd) - len, " %s", keys[i]);
    len += (size_t)snprintf(cmd + len, sizeof(cmd) - len, "\r\n");
    iov.iov_base = cmd;
    iov.iov_len = len;
    mc_writev(&iov, 1);
    for (i = 0; i < n; i++) {
        line = mc_line();
        if (sscanf(line, "VALUE %63s %u %zu", key, &flags, &vlen) != 3)
            fail("memcached get: '%.80s' (want VALUE %s)", line, keys[i]);
        if (strcmp(key, keys[i]) != 0 || vlen != size)
            fail("memcached get: VALUE %s of %zu bytes, want %s of %zu", key, vlen, keys[i], size);
        mc_read(dst[i], size);
        mc_read(crlf, 2);
        if (crlf[0] != '\r' || crlf[1] != '\n')
            fail("memcached get %s: value not followed by \\r\\n", keys[i]);
    }
    line = mc_line();
    if (strcmp(line, "END") != 0)
        fail("memcached get: '%.80s' after the values, want END", line);
}

/* ---- a plain unix-socket stream of the same bytes: the ceiling ---- */

/* A child process that keeps MAX_BATCH slots of the largest value size, mapped
 * and faulted in once, and serves a minimal protocol on one connection: a
 * 16-byte request {op 'S' or 'L', slot, length}; 'S' is followed by the bytes,
 * read into the slot, and answered with one byte; 'L' is answered with the
 * slot's bytes. No parsing, no allocation, no copy beyond the kernel's: what
 * any server of frames over this transport can at best reach. */
static int ST = -1;

typedef struct {
    uint32_t op, slot;
    uint64_t len;
} st_req_t;

static int st_full(int fd, void *p, size_t len, int wr)
{
    char *b = p;

    while (len) {
        ssize_t n = wr ? write(fd, b, len) : read(fd, b, len);

        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            return -1;
        }
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

static void stream_serve(int lfd, size_t maxsize)
{
    uint8_t *slots = mmap(NULL, (size_t)MAX_BATCH * maxsize, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    int fd = accept(lfd, NULL, NULL);
    st_req_t q;
    char ack = 1;

    if (slots == MAP_FAILED || fd < 0)
        _exit(1);
    while (st_full(fd, &q, sizeof(q), 0) == 0) {
        uint8_t *slot = slots + (size_t)(q.slot % MAX_BATCH) * maxsize;

        if (q.len > maxsize)
            _exit(1);
        if (q.op == 'S') {
            if (st_full(fd, slot, q.len, 0) != 0 || st_full(fd, &ack, 1, 1) != 0)
                _exit(1);
        } else if (st_full(fd, slot, q.len, 1) != 0) {
            _exit(1);
        }
    }
    _exit(0);
}

static void stream_start(const char *sock, size_t maxsize)
{
    struct sockaddr_un sa;
    pid_t parent = getpid();
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(sock) >= sizeof(sa.sun_path))
        fail("socket path too long: %s", sock);
    memcpy(sa.sun_path, sock, strlen(sock) + 1);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 1) != 0)
        fail("stream: cannot listen on %s: %s", sock, strerror(errno));
    pids[S_STREAM] = fork();
    if (pids[S_STREAM] < 0)
        fail("fork: %s", strerror(errno));
    if (pids[S_STREAM] == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        stream_serve(lfd, maxsize);
    }
    close(lfd);
    ST = unix_connect(sock);
    if (ST < 0)
        fail("stream: cannot connect to %s: %s", sock, strerror(errno));
}

static void stream_store(uint8_t *const *vals, size_t n, size_t size)
{
    char acks[MAX_BATCH];
    size_t i;

    for (i = 0; i < n; i++) {
        st_req_t q = {'S', (uint32_t)i, size};

        if (st_full(ST, &q, sizeof(q), 1) != 0 || st_full(ST, vals[i], size, 1) != 0)
            fail("stream write: %s", strerror(errno));
    }
    if (st_full(ST, acks, n, 0) != 0)
        fail("stream: no acknowledgement");
}

static void stream_load(size_t n, size_t size, uint8_t *const *dst)
{
    st_req_t q[MAX_BATCH];
    size_t i;

    for (i = 0; i < n; i++) {
        q[i].op = 'L';
        q[i].slot = (uint32_t)i;
        q[i].len = size;
    }
    if (st_full(ST, q, n * sizeof(q[0]), 1) != 0)
        fail("stream write: %s", strerror(errno));
    for (i = 0; i < n; i++)
        if (st_full(ST, dst[i], size, 0) != 0)
            fail("stream read: %s", strerror(errno));
}

/* ---- the measurement ---- */

static uint8_t *src_pool, *dst_pool;
static uint64_t stamp = 1;
static uint64_t stored_stamp[NSERVERS][MAX_BATCH]; /* what each server was last given */

static void *map_pool(size_t len)
{
    void *p =
        mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

    if (p == MAP_FAILED)
        fail("cannot map %zu bytes: %s", len, strerror(errno));
    return p;
}

/* A fresh stamp in the first 8 bytes of every value before server s stores it,
 * so that a load of stale values fails the comparison. Untimed. */
static void restamp(int s, uint8_t *const *vals, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        stored_stamp[s][i] = stamp++;
        memcpy(vals[i], &stored_stamp[s][i], sizeof(uint64_t));
    }
}

/* Compare two of the n loaded values (rotating) byte for byte with what server s
 * was given: its stamp, then the rest of the source value (the sources are shared
 * by both servers, and only the stamp differs). */
static void verify(int s, size_t size, uint8_t *const *vals, const uint8_t *const *got, size_t n,
                   uint64_t turn)
{
    size_t k;

    for (k = 0; k < 2; k++) {
        size_t i = (size_t)((turn * 2 + k * 7) % n);

        if (memcmp(got[i], &stored_stamp[s][i], sizeof(uint64_t)) != 0 ||
            memcmp(got[i] + 8, vals[i] + 8, size - 8) != 0)
            fail("%s: value %zu of %zu MiB loaded differs from what was stored", server_name[s], i,
                 size >> 20);
    }
}

/* One batch: store (op 0) or load (op 1) on server s; returns the seconds timed. */
static double batch(int s, int op, size_t size, char keys[][32], uint8_t *const *vals,
                    uint64_t turn)
{
    redisReply *reps[MAX_BATCH];
    uint8_t *dst[MAX_BATCH];
    const uint8_t *got[MAX_BATCH];
    size_t n = (size_t)O.batch, i;
    double t;

    if (op == 0) {
        restamp(s, vals, n);
        t = bench_now();
        if (s == S_REDIS)
            redis_store(keys, vals, n, size);
        else if (s == S_MEMCACHED)
            mc_store(keys, vals, n, size);
        else
            stream_store(vals, n, size);
        return bench_now() - t;
    }
    for (i = 0; i < n; i++)
        dst[i] = dst_pool + i * size;
    t = bench_now();
    if (s == S_REDIS)
        redis_load(keys, n, size, reps);
    else if (s == S_MEMCACHED)
        mc_load(keys, n, size, dst);
    else
        stream_load(n, size, dst);
    t = bench_now() - t;
    for (i = 0; i < n; i++)
        got[i] = s == S_REDIS ? (const uint8_t *)reps[i]->str : dst[i];
    verify(s, size, vals, got, n, turn);
    if (s == S_REDIS)
        for (i = 0; i < n; i++)
            freeReplyObject(reps[i]);
    return t;
}

/* One repetition: GB/s, and the server's CPU ms per GB and minor page faults
 * per MB over it. */
typedef struct {
    double gbps, cpu_ms_gb, faults_mb;
} rep_t;

/* Batches for at least O.rep_s seconds (at least one). */
static rep_t rep_run(int s, int op, size_t size, char keys[][32], uint8_t *const *vals,
                     uint64_t *turn)
{
    double timed = 0, start = bench_now(), gb;
    double c0 = bench_proc_cpu(pids[s]), f0 = bench_proc_faults(pids[s]);
    size_t nb = 0;
    rep_t r;

    do {
        timed += batch(s, op, size, keys, vals, (*turn)++);
        nb++;
    } while (bench_now() - start < O.rep_s);
    gb = (double)nb * (double)O.batch * (double)size / BENCH_GB;
    r.gbps = gb / timed;
    r.cpu_ms_gb = (bench_proc_cpu(pids[s]) - c0) * 1000.0 / gb;
    r.faults_mb = (bench_proc_faults(pids[s]) - f0) / (gb * 1000.0);
    return r;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"sizes", required_argument, NULL, 's'},
        {"batch", required_argument, NULL, 'b'},
        {"reps", required_argument, NULL, 'r'},
        {"time", required_argument, NULL, 't'},
        {"quick", no_argument, NULL, 'q'},
        {"csv", no_argument, NULL, 'c'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static const char *const ops[2] = {"store", "load"};
    const char *tmp = getenv("TMPDIR");
    char rsock[320], msock[320], ssock[320], rlog[320], mlog[320];
    double res[MAX_SIZES][NSERVERS][2][3], v[NSERVERS][2][3][MAX_REPS], t0;
    char keys[MAX_BATCH][32];
    uint8_t *vals[MAX_BATCH];
    size_t maxsize = 0, z, i;
    int c, s, op, r, reps[MAX_SIZES], reps_opt = 0;
    uint64_t turn = 0;
    double time_opt = 0;

    O.nsizes = bench_parse_sizes("1,4,16", O.sizes, MAX_SIZES);
    O.batch = 16;
    while ((c = getopt_long(argc, argv, "vh", lo, NULL)) != -1) {
        switch (c) {
        case 's':
            O.nsizes = bench_parse_sizes(optarg, O.sizes, MAX_SIZES);
            if (!O.nsizes || O.nsizes > MAX_SIZES) {
                fprintf(stderr, "bench_kv: --sizes: expected MiB like 1,4,16, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'b':
            O.batch = atoi(optarg);
            break;
        case 'r':
            reps_opt = atoi(optarg);
            break;
        case 't':
            time_opt = atof(optarg);
            break;
        case 'q':
            O.quick = 1;
            break;
        case 'c':
            O.csv = 1;
            break;
        case 'v':
            O.verbose = 1;
            break;
        case 'h':
            printf("Usage: bench_kv [OPTIONS]\n"
                   "Start a private redis-server and memcached on unix sockets and measure\n"
                   "pipelined store and load of batches of values (GB/s = 1e9 bytes/s).\n\n"
                   "  --sizes LIST   value sizes in MiB (default 1,4,16; at most 31)\n"
                   "  --batch N      values per pipelined batch (default 16)\n"
                   "  --reps N       repetitions per figure, median reported (default 3)\n"
                   "  --time S       minimum seconds per repetition (default 0.2)\n"
                   "  --quick        smoke run: 1 repetition, one batch each\n"
                   "  --csv          print CSV instead of the table\n"
                   "  -v, --verbose  print every repetition on stderr\n");
            return 0;
        default:
            return 2;
        }
    }
    O.reps = reps_opt > 0 ? reps_opt : O.quick ? 1 : 3;
    O.rep_s = time_opt > 0 ? time_opt : O.quick ? 0 : 0.2;
    if (optind < argc || O.batch < 1 || O.batch > MAX_BATCH || O.reps > MAX_REPS) {
        fprintf(stderr, "bench_kv: --batch 1..%d, --reps 1..%d, no other arguments\n", MAX_BATCH,
                MAX_REPS);
        return 2;
    }
    for (z = 0; z < O.nsizes; z++) {
        if (O.sizes[z] > 32 * BENCH_MIB) {
            fprintf(stderr, "bench_kv: values must stay at or below 32 MiB (memcached -I 64m)\n");
            return 2;
        }
        if (O.sizes[z] > maxsize)
            maxsize = O.sizes[z];
    }
    if (!in_path("redis-server") || !in_path("memcached")) {
        fprintf(stderr,
                "bench_kv: %s not found in PATH; this benchmark needs both redis-server and "
                "memcached (scripts/install-deps.sh installs them)\n",
                !in_path("redis-server") ? "redis-server" : "memcached");
        return 1;
    }

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGALRM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    alarm(WATCHDOG_S);
    t0 = bench_now();

    src_pool = map_pool((size_t)O.batch * maxsize);
    dst_pool = map_pool((size_t)O.batch * maxsize);
    bench_fill_random(src_pool, (size_t)O.batch * maxsize, 3);
    memset(dst_pool, 0, (size_t)O.batch * maxsize);

    snprintf(tmpdir, sizeof(tmpdir), "%s/kvcd-benchkv-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmpdir)) {
        tmpdir[0] = '\0';
        fail("cannot create a temp dir: %s", strerror(errno));
    }
    snprintf(rsock, sizeof(rsock), "%s/r.sock", tmpdir);
    snprintf(msock, sizeof(msock), "%s/m.sock", tmpdir);
    snprintf(rlog, sizeof(rlog), "%s/redis.log", tmpdir);
    snprintf(mlog, sizeof(mlog), "%s/memcached.log", tmpdir);
    snprintf(ssock, sizeof(ssock), "%s/s.sock", tmpdir);
    snprintf(files[4], sizeof(files[4]), "%s", ssock);
    snprintf(files[0], sizeof(files[0]), "%s", rsock);
    snprintf(files[1], sizeof(files[1]), "%s", msock);
    snprintf(files[2], sizeof(files[2]), "%s", rlog);
    snprintf(files[3], sizeof(files[3]), "%s", mlog);
    if (strlen(msock) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        fail("socket path too long: %s (set TMPDIR to a shorter dir)", msock);

    redis_start(rsock, rlog);
    mc_start(msock, mlog);
    stream_start(ssock, maxsize);
    if (O.verbose)
        fprintf(stderr, "  redis-server pid %d, memcached pid %d in %s  [%.1f s]\n",
                (int)pids[S_REDIS], (int)pids[S_MEMCACHED], tmpdir, bench_now() - t0);

    for (z = 0; z < O.nsizes; z++) {
        size_t size = O.sizes[z];

        for (i = 0; i < (size_t)O.batch; i++) {
            snprintf(keys[i], sizeof(keys[i]), "bench:%zum:%zu", size >> 20, i);
            vals[i] = src_pool + i * size;
        }
        /* untimed warm-up: one batch of each kind on each server */
        for (s = 0; s < NSERVERS; s++)
            for (op = 0; op < 2; op++)
                batch(s, op, size, keys, vals, turn++);
        /* past the time budget, no new repetition: the run stays bounded */
        for (r = 0; r < O.reps && (r == 0 || bench_now() - t0 < BUDGET_S); r++)
            for (op = 0; op < 2; op++)
                for (s = 0; s < NSERVERS; s++) {
                    rep_t one = rep_run(s, op, size, keys, vals, &turn);

                    v[s][op][0][r] = one.gbps;
                    v[s][op][1][r] = one.cpu_ms_gb;
                    v[s][op][2][r] = one.faults_mb;
                    if (O.verbose)
                        fprintf(stderr,
                                "  %-9s %-5s %3zu MiB x%d  %6.2f GB/s  server %5.0f ms/GB "
                                "%6.1f faults/MB  [%.1f s]\n",
                                server_name[s], ops[op], size >> 20, O.batch, one.gbps,
                                one.cpu_ms_gb, one.faults_mb, bench_now() - t0);
                }
        reps[z] = r;
        for (s = 0; s < NSERVERS; s++)
            for (op = 0; op < 2; op++)
                for (i = 0; i < 3; i++)
                    res[z][s][op][i] = bench_median(v[s][op][i], (size_t)reps[z]);
        check_alive(S_REDIS, rlog);
        check_alive(S_MEMCACHED, mlog);
    }

    redisFree(R);
    R = NULL;
    close(M.fd);
    M.fd = -1;
    close(ST);
    ST = -1;
    cleanup_now();
    munmap(src_pool, (size_t)O.batch * maxsize);
    munmap(dst_pool, (size_t)O.batch * maxsize);

    if (O.csv) {
        printf("section,server,op,chunk_mib,batch,gbps,reps,server_cpu_ms_per_gb,"
               "server_faults_per_mb\n");
        for (z = 0; z < O.nsizes; z++)
            for (s = 0; s < NSERVERS; s++)
                for (op = 0; op < 2; op++)
                    printf("kv,%s,%s,%zu,%d,%.3f,%d,%.0f,%.2f\n", server_name[s], ops[op],
                           O.sizes[z] >> 20, O.batch, res[z][s][op][0], reps[z],
                           res[z][s][op][1], res[z][s][op][2]);
        return 0;
    }
    printf("\nRedis (hiredis, synchronous, pipelined), memcached (ASCII protocol, pipelined) and a\n"
           "plain stream of the same bytes, on unix sockets; batches of %d values, median of %d rep%s of >= %.2g s; GB/s = 1e9 "
           "bytes/s\n\n",
           O.batch, O.reps, O.reps > 1 ? "s" : "", O.rep_s);
    printf("%-22s", "GB/s");
    for (z = 0; z < O.nsizes; z++)
        printf(" %6zu MiB", O.sizes[z] >> 20);
    printf("\n");
    for (s = 0; s < NSERVERS; s++)
        for (op = 0; op < 2; op++) {
            printf("%-9s %-12s", server_name[s], ops[op]);
            for (z = 0; z < O.nsizes; z++)
                printf(" %10.2f", res[z][s][op][0]);
            printf("\n%-22s", "  server ms/GB");
            for (z = 0; z < O.nsizes; z++)
                printf(" %10.0f", res[z][s][op][1]);
            printf("\n%-22s", "  server faults/MB");
            for (z = 0; z < O.nsizes; z++)
                printf(" %10.2f", res[z][s][op][2]);
            printf("\n");
        }
    for (z = 0; z < O.nsizes; z++)
        if (reps[z] < O.reps)
            printf("(%zu MiB: %d rep%s only, to stay within the time budget)\n", O.sizes[z] >> 20,
                   reps[z], reps[z] > 1 ? "s" : "");
    printf("\nwhole run %.1f s; every reply checked, 2 values of every load batch compared "
           "byte for byte\n",
           bench_now() - t0);
    return 0;
}
