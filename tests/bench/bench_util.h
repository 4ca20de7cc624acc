/*
 * bench_util.h - helpers shared by the benchmark programs in tests/bench/.
 *
 * The Makefile builds every C file of tests/bench/ as its own program, so shared
 * code lives here as static inline functions (no object file to link).
 *
 *  - clocks and CPU time (this process, and every thread of another process);
 *  - sample statistics (median, percentiles);
 *  - starting the real kvcd on a private ipc:// socket in a fresh temp dir,
 *    waiting for PING, stopping it, and removing the dir on every exit path
 *    (normal, failure, SIGINT/SIGTERM, watchdog);
 *  - deterministic random fill, size lists ("1,4,16" MiB), a failure exit.
 */
#ifndef KVCD_BENCH_UTIL_H
#define KVCD_BENCH_UTIL_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "protocol/client.h"

#define BENCH_MIB (1ull << 20)
#define BENCH_GB 1e9 /* throughput is reported in decimal GB/s */

/* ---- clocks ---- */

static inline double bench_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU seconds used by this process (all threads). */
static inline double bench_self_cpu(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU seconds used by every live thread of pid (sum of schedstat run times),
 * or -1 when it cannot be read. Threads that exited meanwhile are not counted:
 * fine for a daemon whose threads live as long as it does. */
static inline double bench_proc_cpu(pid_t pid)
{
    char path[64], line[128];
    unsigned long long run, total = 0;
    struct dirent *de;
    DIR *d;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    d = opendir(path);
    if (!d)
        return -1;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%.16s/schedstat", (int)pid, de->d_name);
        f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(line, sizeof(line), f) && sscanf(line, "%llu", &run) == 1)
            total += run;
        fclose(f);
    }
    closedir(d);
    return (double)total * 1e-9;
}

/* Minor page faults of pid (all threads; /proc/<pid>/stat field 10), or -1. */
static inline double bench_proc_faults(pid_t pid)
{
    char path[64], buf[1024], *p;
    unsigned long long v = 0;
    FILE *f;
    int field;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    p = fgets(buf, sizeof(buf), f);
    fclose(f);
    if (!p || !(p = strrchr(buf, ')')))
        return -1;
    /* after "pid (comm)": field 3 is the state; minflt is field 10 */
    for (field = 2; field < 10 && p; field++)
        p = strchr(p + 1, ' ');
    if (!p || sscanf(p + 1, "%llu", &v) != 1)
        return -1;
    return (double)v;
}

/* ---- statistics ---- */

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* p in [0, 100] of n samples (sorted in place), nearest rank. */
static inline double bench_percentile(double *v, size_t n, double p)
{
    size_t k;

    if (n == 0)
        return 0.0;
    qsort(v, n, sizeof(double), bench_cmp_double);
    k = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return v[k - 1];
}

static inline double bench_median(double *v, size_t n)
{
    if (n == 0)
        return 0.0;
    qsort(v, n, sizeof(double), bench_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

/* ---- misc ---- */

/* Deterministic pseudo-random bytes (splitmix64), fast enough for GiBs. */
static inline void bench_fill_random(void *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed, z, *p = buf;
    size_t i, n = len / 8;

    for (i = 0; i < n; i++) {
        z = (x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        p[i] = z ^ (z >> 31);
    }
    for (i = n * 8; i < len; i++)
        ((uint8_t *)buf)[i] = (uint8_t)(seed + i);
}

/* Parse "1,4,16" (MiB) into sizes (bytes); returns the count, 0 on a bad list. */
static inline size_t bench_parse_sizes(const char *s, size_t *sizes, size_t max)
{
    size_t n = 0;
    char *end;

    while (*s && n < max) {
        unsigned long v = strtoul(s, &end, 10);

        if (end == s || v == 0 || v > 1024 || (*end && *end != ','))
            return 0;
        sizes[n++] = (size_t)v * BENCH_MIB;
        s = *end ? end + 1 : end;
    }
    return *s ? 0 : n;
}

/* ---- the daemon under test ---- */

typedef struct {
    pid_t pid;
    char dir[256];      /* private temp dir */
    char endpoint[320]; /* ipc://<dir>/kvcd.sock */
    char log[320];      /* <dir>/kvcd.log: the daemon's stdout and stderr */
    const char *bin;
} bench_daemon_t;

/* One daemon and one temp dir per program, so that a signal handler can clean
 * up with async-signal-safe calls only (kill, unlink, rmdir). */
static bench_daemon_t *bench_cleanup_daemon;
static char bench_cleanup_files[8][320];

static inline void bench_track_file(const char *path)
{
    size_t i;

    for (i = 0; i < 8; i++)
        if (!bench_cleanup_files[i][0]) {
            snprintf(bench_cleanup_files[i], sizeof(bench_cleanup_files[i]), "%s", path);
            return;
        }
}

/* Async-signal-safe: SIGKILL the daemon, remove the known files and the dir. */
static inline void bench_cleanup_now(void)
{
    bench_daemon_t *d = bench_cleanup_daemon;
    size_t i;

    if (!d)
        return;
    if (d->pid > 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
    }
    for (i = 0; i < 8; i++)
        if (bench_cleanup_files[i][0])
            unlink(bench_cleanup_files[i]);
    if (d->dir[0])
        rmdir(d->dir);
    d->dir[0] = '\0';
}

static inline void bench_signal_handler(int sig)
{
    static const char msg[] = "bench: interrupted or timed out; daemon killed\n";
    ssize_t w = write(2, msg, sizeof(msg) - 1);

    (void)w;
    bench_cleanup_now();
    _exit(sig == SIGALRM ? 3 : 128 + sig);
}

/* Clean up on SIGINT/SIGTERM, and after watchdog_s seconds (SIGALRM). */
static inline void bench_install_cleanup(unsigned watchdog_s)
{
    signal(SIGINT, bench_signal_handler);
    signal(SIGTERM, bench_signal_handler);
    signal(SIGALRM, bench_signal_handler);
    signal(SIGPIPE, SIG_IGN);
    if (watchdog_s)
        alarm(watchdog_s);
}

/* Print the last lines of the daemon's log to stderr (for a failure report). */
static inline void bench_daemon_log_tail(const bench_daemon_t *d, size_t max_bytes)
{
    char buf[4096];
    FILE *f = d->log[0] ? fopen(d->log, "r") : NULL;
    long size;
    size_t n;

    if (!f)
        return;
    if (max_bytes > sizeof(buf) - 1)
        max_bytes = sizeof(buf) - 1;
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, size > (long)max_bytes ? size - (long)max_bytes : 0, SEEK_SET);
    n = fread(buf, 1, max_bytes, f);
    buf[n] = '\0';
    fclose(f);
    fprintf(stderr, "---- last lines of the kvcd log ----\n%s---- end of log ----\n", buf);
}

/* Print a message, the daemon's log tail, clean up, exit 1. */
static inline void bench_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static inline void bench_fail(const char *fmt, ...)
{
    va_list ap;
    int status;

    fprintf(stderr, "bench: FAIL: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    if (bench_cleanup_daemon) {
        bench_daemon_t *d = bench_cleanup_daemon;

        if (d->pid > 0 && waitpid(d->pid, &status, WNOHANG) == d->pid) {
            if (WIFSIGNALED(status))
                fprintf(stderr, "bench: kvcd (pid %d) died by signal %d\n", (int)d->pid,
                        WTERMSIG(status));
            else
                fprintf(stderr, "bench: kvcd (pid %d) exited with status %d\n", (int)d->pid,
                        WEXITSTATUS(status));
            d->pid = 0;
        }
        bench_daemon_log_tail(d, 2000);
    }
    bench_cleanup_now();
    exit(1);
}

/* 1 if the daemon is still running; reports how it ended otherwise. */
static inline int bench_daemon_alive(bench_daemon_t *d)
{
    int status;

    if (d->pid <= 0)
        return 0;
    if (waitpid(d->pid, &status, WNOHANG) != d->pid)
        return 1;
    if (WIFSIGNALED(status))
        fprintf(stderr, "bench: kvcd (pid %d) died by signal %d\n", (int)d->pid, WTERMSIG(status));
    else
        fprintf(stderr, "bench: kvcd (pid %d) exited with status %d\n", (int)d->pid,
                WEXITSTATUS(status));
    d->pid = 0;
    return 0;
}

/* Make the private temp dir (under $TMPDIR or /tmp) and register it for cleanup. */
static inline int bench_make_dir(bench_daemon_t *d)
{
    const char *tmp = getenv("TMPDIR");

    memset(d, 0, sizeof(*d));
    snprintf(d->dir, sizeof(d->dir), "%s/kvcd-bench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(d->dir)) {
        d->dir[0] = '\0';
        return -1;
    }
    bench_cleanup_daemon = d;
    return 0;
}

/* Start bin with --endpoint ipc://<dir>/kvcd.sock and the extra arguments
 * (NULL-terminated), then wait up to timeout_ms for a PING reply. The daemon
 * dies with us (PDEATHSIG). 0, or -1 with a message on stderr. */
static inline int bench_daemon_start(bench_daemon_t *d, const char *bin, const char *const *args,
                                     int timeout_ms)
{
    const char *argv[64];
    double deadline;
    size_t n = 0;
    int fd;

    d->bin = bin;
    snprintf(d->endpoint, sizeof(d->endpoint), "ipc://%s/kvcd.sock", d->dir);
    snprintf(d->log, sizeof(d->log), "%s/kvcd.log", d->dir);
    bench_track_file(d->endpoint + strlen("ipc://"));
    bench_track_file(d->log);
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "bench: %s: %s (build it with `make`, or pass the path)\n", bin,
                strerror(errno));
        return -1;
    }
    argv[n++] = bin;
    argv[n++] = "--endpoint";
    argv[n++] = d->endpoint;
    for (; args && *args && n < 62; args++)
        argv[n++] = *args;
    argv[n] = NULL;

    d->pid = fork();
    if (d->pid < 0) {
        d->pid = 0;
        return -1;
    }
    if (d->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }

    deadline = bench_now() + timeout_ms / 1000.0;
    while (bench_now() < deadline) {
        kvcd_client_t *c;

        if (!bench_daemon_alive(d)) {
            bench_daemon_log_tail(d, 2000);
            return -1;
        }
        if (kvcd_client_connect(d->endpoint, 200, &c) == 0) {
            int rc = kvcd_client_ping(c, NULL, NULL, 0);

            kvcd_client_close(c);
            if (rc == 0)
                return 0;
        }
        usleep(20000);
    }
    fprintf(stderr, "bench: kvcd did not answer PING within %d ms\n", timeout_ms);
    bench_daemon_log_tail(d, 2000);
    return -1;
}

/* SIGTERM and wait up to timeout_ms; returns the exit status (128+sig when
 * killed by a signal), or -1 on a timeout (then it is SIGKILLed). */
static inline int bench_daemon_stop(bench_daemon_t *d, int timeout_ms)
{
    double deadline = bench_now() + timeout_ms / 1000.0;
    int status;

    if (d->pid <= 0)
        return -1;
    kill(d->pid, SIGTERM);
    while (bench_now() < deadline) {
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            d->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        usleep(10000);
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
    return -1;
}

#endif
