/*
 * redis_support.c - private redis-server processes for the tests (see
 * redis_support.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/redis_support.h"

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

const char *kvcd_redis_bin(void)
{
    static char found[512];
    static const char *const fixed[] = {"/usr/bin/redis-server", "/usr/local/bin/redis-server",
                                        NULL};
    const char *path = getenv("PATH");
    size_t i;

    if (path) {
        const char *p = path;

        while (*p) {
            size_t n = strcspn(p, ":");

            if (n > 0 && n < sizeof(found) - 16) {
                snprintf(found, sizeof(found), "%.*s/redis-server", (int)n, p);
                if (access(found, X_OK) == 0)
                    return found;
            }
            p += n;
            if (*p == ':')
                p++;
        }
    }
    for (i = 0; fixed[i]; i++)
        if (access(fixed[i], X_OK) == 0)
            return fixed[i];
    return NULL;
}

static int free_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

redisContext *kvcd_redis_connect(const kvcd_redis_t *r)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectUnixWithTimeout(r->sock, tv);

    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    if (c)
        redisSetTimeout(c, tv);
    if (c && r->password) {
        redisReply *rep = redisCommand(c, "AUTH %s", r->password);
        int ok = rep && rep->type == REDIS_REPLY_STATUS;

        freeReplyObject(rep);
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

static int ping(const kvcd_redis_t *r)
{
    redisContext *c = kvcd_redis_connect(r);
    redisReply *rep;
    int ok;

    if (!c)
        return -1;
    rep = redisCommand(c, "PING");
    ok = rep && rep->type == REDIS_REPLY_STATUS && !strcmp(rep->str, "PONG");
    freeReplyObject(rep);
    redisFree(c);
    return ok ? 0 : -1;
}

int kvcd_redis_restart(kvcd_redis_t *r)
{
    const char *bin = kvcd_redis_bin();
    char port[16];
    const char *argv[64];
    uint64_t end;
    size_t n = 0, i;
    int status;

    if (!bin) {
        fprintf(stderr, "redis-server not found on PATH or in /usr/bin: install it "
                        "(scripts/install-deps.sh installs redis-server)\n");
        return -1;
    }
    snprintf(port, sizeof(port), "%d", r->port);
    unlink(r->sock);
    r->pid = fork();
    if (r->pid < 0)
        return -1;
    if (r->pid == 0) {
        static const char *const fixed[] = {"--bind", "127.0.0.1", "--unixsocketperm", "700",
                                            "--save", "", "--appendonly", "no", "--daemonize",
                                            "no", "--protected-mode", "no", NULL};
        int fd = open("/dev/null", O_RDWR);

        argv[n++] = bin;
        argv[n++] = "--port";
        argv[n++] = port;
        argv[n++] = "--unixsocket";
        argv[n++] = r->sock;
        argv[n++] = "--dir";
        argv[n++] = r->dir;
        argv[n++] = "--logfile";
        argv[n++] = r->log;
        for (i = 0; fixed[i]; i++)
            argv[n++] = fixed[i];
        if (r->password) {
            argv[n++] = "--requirepass";
            argv[n++] = r->password;
        }
        for (i = 0; r->args && r->args[i] && n < 62; i++)
            argv[n++] = r->args[i]; /* later arguments override earlier ones */
        argv[n] = NULL;

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    end = now_ms() + 5000;
    while (now_ms() < end) {
        if (waitpid(r->pid, &status, WNOHANG) == r->pid) {
            fprintf(stderr, "redis-server exited at start (status %d), see %s\n", status, r->log);
            r->pid = 0;
            return -1;
        }
        if (ping(r) == 0)
            return 0;
        usleep(10000);
    }
    fprintf(stderr, "redis-server did not answer PING within 5 s, see %s\n", r->log);
    kvcd_redis_stop(r, SIGKILL);
    return -1;
}

int kvcd_redis_start(kvcd_redis_t *r, const char *dir, const char *name, int tcp)
{
    return kvcd_redis_start_ex(r, dir, name, tcp, NULL, NULL);
}

int kvcd_redis_start_ex(kvcd_redis_t *r, const char *dir, const char *name, int tcp,
                        const char *password, const char *const *args)
{
    memset(r, 0, sizeof(*r));
    r->password = password;
    r->args = args;
    if (dir) {
        snprintf(r->dir, sizeof(r->dir), "%s", dir);
    } else {
        snprintf(r->dir, sizeof(r->dir), "/tmp/kvcd-redis-XXXXXX");
        if (!mkdtemp(r->dir))
            return -1;
        r->own_dir = 1;
    }
    snprintf(r->sock, sizeof(r->sock), "%s/%s.sock", r->dir, name);
    snprintf(r->log, sizeof(r->log), "%s/%s.log", r->dir, name);
    r->port = tcp ? free_port() : 0;
    if (r->port < 0)
        return -1;
    return kvcd_redis_restart(r);
}

void kvcd_redis_stop(kvcd_redis_t *r, int sig)
{
    uint64_t end = now_ms() + 5000;
    int status;

    if (r->pid <= 0)
        return;
    kill(r->pid, sig);
    while (now_ms() < end) {
        if (waitpid(r->pid, &status, WNOHANG) == r->pid) {
            r->pid = 0;
            return;
        }
        usleep(5000);
    }
    kill(r->pid, SIGKILL);
    waitpid(r->pid, &status, 0);
    r->pid = 0;
}

void kvcd_redis_cleanup(kvcd_redis_t *r)
{
    char cmd[400];

    kvcd_redis_stop(r, SIGKILL);
    if (r->own_dir && !strncmp(r->dir, "/tmp/kvcd-redis-", 16)) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", r->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", r->dir);
    }
    r->own_dir = 0;
}

long long kvcd_redis_int(const kvcd_redis_t *r, const char *fmt, ...)
{
    redisContext *c = kvcd_redis_connect(r);
    redisReply *rep;
    long long v = -1;
    va_list ap;

    if (!c)
        return -1;
    va_start(ap, fmt);
    rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        v = rep->integer;
    else if (rep && rep->type == REDIS_REPLY_STATUS)
        v = 0;
    freeReplyObject(rep);
    redisFree(c);
    return v;
}
