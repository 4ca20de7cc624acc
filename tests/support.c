/*
 * support.c - process helpers for the end-to-end tests (see support.h).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "protocol/client.h"
#include "tests/support.h"

const char *kvcd_test_bin(void)
{
    const char *b = getenv("KVCD_BIN");

    return b && *b ? b : "build/kvcd";
}

const char *kvcd_test_ctl(void)
{
    const char *b = getenv("KVCDCTL_BIN");

    return b && *b ? b : "build/kvcdctl";
}

const char *kvcd_test_srcdir(void)
{
    const char *b = getenv("KVCD_SRCDIR");

    return b && *b ? b : ".";
}

uint64_t kvcd_test_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int wait_ping(kvcd_proc_t *p, int timeout_ms)
{
    uint64_t deadline = kvcd_test_now_ms() + (uint64_t)timeout_ms;
    kvcd_client_t *c;
    int status;

    while (kvcd_test_now_ms() < deadline) {
        if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
            p->pid = 0;
            return -1;
        }
        if (kvcd_client_connect(p->endpoint, 200, &c) == 0) {
            int rc = kvcd_client_ping(c, NULL, NULL, 0);

            kvcd_client_close(c);
            if (rc == 0)
                return 0;
        }
        usleep(20000);
    }
    return -1;
}

int kvcd_proc_restart(kvcd_proc_t *p, const char *const *args)
{
    const char *argv[64];
    size_t n = 0;
    int fd;

    argv[n++] = kvcd_test_bin();
    argv[n++] = "--endpoint";
    argv[n++] = p->endpoint;
    argv[n++] = "--log-level";
    argv[n++] = "info";
    for (; args && *args && n < 62; args++)
        argv[n++] = *args;
    argv[n] = NULL;

    p->pid = fork();
    if (p->pid < 0)
        return -1;
    if (p->pid == 0) {
        /* If the test process dies (a failed assertion), so does kvcd. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    if (wait_ping(p, 10000) != 0) {
        kvcd_proc_stop(p, SIGKILL, 1000);
        return -1;
    }
    return 0;
}

int kvcd_proc_start(kvcd_proc_t *p, const char *const *args)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->dir, sizeof(p->dir), "/tmp/kvcd-test-XXXXXX");
    if (!mkdtemp(p->dir))
        return -1;
    snprintf(p->endpoint, sizeof(p->endpoint), "ipc://%s/kvcd.sock", p->dir);
    snprintf(p->log, sizeof(p->log), "%s/kvcd.log", p->dir);
    return kvcd_proc_restart(p, args);
}

int kvcd_proc_stop(kvcd_proc_t *p, int sig, int timeout_ms)
{
    uint64_t deadline = kvcd_test_now_ms() + (uint64_t)timeout_ms;
    int status;

    if (p->pid <= 0)
        return -1;
    kill(p->pid, sig);
    while (kvcd_test_now_ms() < deadline) {
        if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
            p->pid = 0;
            if (WIFEXITED(status))
                return WEXITSTATUS(status);
            return 128 + WTERMSIG(status);
        }
        usleep(10000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &status, 0);
    p->pid = 0;
    return -1;
}

int kvcd_proc_log_has_sanitizer_report(const kvcd_proc_t *p)
{
    static const char *const marks[] = {"ERROR: AddressSanitizer", "runtime error:",
                                        "ERROR: LeakSanitizer", NULL};
    char line[4096];
    int found = 0;
    FILE *f = fopen(p->log, "r");
    size_t i;

    if (!f)
        return 0;
    while (!found && fgets(line, sizeof(line), f))
        for (i = 0; marks[i]; i++)
            if (strstr(line, marks[i])) {
                fprintf(stderr, "sanitizer report in %s: %s", p->log, line);
                found = 1;
            }
    fclose(f);
    return found;
}

void kvcd_proc_cleanup(kvcd_proc_t *p)
{
    char cmd[400];

    if (p->pid > 0)
        kvcd_proc_stop(p, SIGKILL, 2000);
    if (p->dir[0] && strncmp(p->dir, "/tmp/kvcd-test-", 15) == 0) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", p->dir);
    }
    p->dir[0] = '\0';
}

int kvcd_run(const char *const *argv, char *out, size_t outlen, int timeout_ms)
{
    uint64_t deadline = kvcd_test_now_ms() + (uint64_t)timeout_ms;
    int pfd[2], status = -1, done = 0;
    size_t len = 0;
    pid_t pid;

    if (pipe(pfd) != 0)
        return -1;
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        close(pfd[0]);
        close(pfd[1]);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    while (!done) {
        char tmp[4096];
        ssize_t r = read(pfd[0], tmp, sizeof(tmp));

        if (r > 0) {
            size_t k = (size_t)r;

            if (out && len + 1 < outlen) {
                if (k > outlen - 1 - len)
                    k = outlen - 1 - len;
                memcpy(out + len, tmp, k);
                len += k;
            }
            continue;
        }
        if (r == 0) {
            done = 1;
            break;
        }
        if (kvcd_test_now_ms() > deadline) {
            kill(pid, SIGKILL);
            break;
        }
        usleep(5000);
    }
    close(pfd[0]);
    if (out && outlen)
        out[len] = '\0';
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    if (!done)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void kvcd_fill_random(void *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1, *p = buf;
    size_t i;

    for (i = 0; i < len / 8; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = x;
    }
    for (i = len & ~(size_t)7; i < len; i++)
        ((uint8_t *)buf)[i] = (uint8_t)(x >> (8 * (i & 7)));
}

int kvcd_test_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    int failed;

    signal(SIGPIPE, SIG_IGN);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

void kvcd_test_start(kvcd_proc_t *p, kvcd_client_t **cli, const char *const *args)
{
    ck_assert_msg(kvcd_proc_start(p, args) == 0, "kvcd did not start (log in %s)", p->log);
    ck_assert_int_eq(kvcd_client_connect(p->endpoint, 20000, cli), 0);
}

void kvcd_test_stop(kvcd_proc_t *p, kvcd_client_t **cli)
{
    kvcd_client_close(*cli);
    *cli = NULL;
    if (p->pid > 0)
        ck_assert_int_eq(kvcd_proc_stop(p, SIGTERM, 20000), 0);
    ck_assert_msg(!kvcd_proc_log_has_sanitizer_report(p), "see %s", p->log);
    kvcd_proc_cleanup(p);
}

json_t *kvcd_test_status(kvcd_client_t *cli)
{
    json_error_t e;
    char *text;
    json_t *j;

    ck_assert_int_eq(kvcd_client_status(cli, &text), 0);
    j = json_loads(text, 0, &e);
    free(text);
    ck_assert_ptr_nonnull(j);
    return j;
}

long long kvcd_test_stat(kvcd_client_t *cli, const char *group, const char *name)
{
    json_t *st = kvcd_test_status(cli);
    json_t *v = json_object_get(group ? json_object_get(st, group) : st, name);
    long long r;

    ck_assert_msg(json_is_integer(v), "status %s.%s missing", group ? group : "", name);
    r = (long long)json_integer_value(v);
    json_decref(st);
    return r;
}

kvcd_bytes_t kvcd_test_hash(uint8_t hb[8], uint64_t i)
{
    kvcd_bytes_t b;
    int k;

    for (k = 0; k < 8; k++)
        hb[k] = (uint8_t)(i >> (56 - 8 * k));
    b.ptr = hb;
    b.len = 8;
    return b;
}
