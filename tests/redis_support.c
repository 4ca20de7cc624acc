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

int kvcd_redis_str(const kvcd_redis_t *r, char *out, size_t outlen, const char *fmt, ...)
{
    redisContext *c = kvcd_redis_connect(r);
    redisReply *rep;
    int rc = -1;
    va_list ap;

    if (!c)
        return -1;
    va_start(ap, fmt);
    rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (rep && (rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS)) {
        snprintf(out, outlen, "%.*s", (int)rep->len, rep->str);
        rc = 0;
    }
    freeReplyObject(rep);
    redisFree(c);
    return rc;
}

int kvcd_redis_info(const kvcd_redis_t *r, const char *field, char *out, size_t outlen)
{
    static char text[65536];
    char pat[128];
    const char *p;
    size_t n;

    if (r->pid <= 0 || kvcd_redis_str(r, text, sizeof(text), "INFO all") != 0)
        return -1;
    snprintf(pat, sizeof(pat), "\n%s:", field);
    p = strstr(text, pat);
    if (!p)
        return -1;
    p += strlen(pat);
    n = strcspn(p, "\r\n");
    snprintf(out, outlen, "%.*s", (int)n, p);
    return 0;
}

/* A port for a cluster node: it and its bus port (+10000) free, both below
 * the ephemeral range so a concurrent free_port() cannot take them. */
static int cluster_port(void)
{
    static unsigned seed;
    int tries;

    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)now_ms();
    for (tries = 0; tries < 200; tries++) {
        int port = 10000 + (int)(rand_r(&seed) % 12000), ok = 1, k;

        for (k = 0; k < 2 && ok; k++) {
            struct sockaddr_in sa;
            int fd = socket(AF_INET, SOCK_STREAM, 0);

            memset(&sa, 0, sizeof(sa));
            sa.sin_family = AF_INET;
            sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            sa.sin_port = htons((uint16_t)(port + 10000 * k));
            ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
            if (fd >= 0)
                close(fd);
        }
        if (ok)
            return port;
    }
    return -1;
}

static const char *cli_bin(void)
{
    static char bin[512];
    const char *srv = kvcd_redis_bin();
    size_t n;

    if (!srv)
        return NULL;
    n = strlen(srv) - strlen("redis-server");
    snprintf(bin, sizeof(bin), "%.*sredis-cli", (int)n, srv);
    return access(bin, X_OK) == 0 ? bin : NULL;
}

int kvcd_redis_cli(const char *dir, const char *logname, const char *const *argv, int wait,
                   uint64_t limit_ms)
{
    const char *bin = cli_bin();
    char log[400];
    uint64_t end;
    pid_t pid;
    int status;

    if (!bin) {
        fprintf(stderr, "redis-cli not found next to redis-server\n");
        return -1;
    }
    snprintf(log, sizeof(log), "%s/%s", dir, logname);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        fd = open("/dev/null", O_RDONLY);
        if (fd >= 0) {
            dup2(fd, 0);
            close(fd);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    if (!wait)
        return pid;
    end = now_ms() + limit_ms;
    while (now_ms() < end) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fprintf(stderr, "redis-cli did not finish within %llu ms, see %s\n",
            (unsigned long long)limit_ms, log);
    return -1;
}

int kvcd_redis_cluster_start(kvcd_redis_cluster_t *c, const char *dir, int masters, int replicas)
{
    char addrs[KVCD_REDIS_CLUSTER_MAX][32], reps[8];
    const char *argv[KVCD_REDIS_CLUSTER_MAX + 8];
    int i, n = masters * (1 + replicas), a = 0, rc;

    memset(c, 0, sizeof(*c));
    if (n > KVCD_REDIS_CLUSTER_MAX || masters < 3)
        return -1;
    snprintf(c->dir, sizeof(c->dir), "%s", dir);
    c->masters = masters;
    for (i = 0; i < n; i++) {
        kvcd_redis_t *r = &c->node[i];
        const char **v = c->args[i];
        int k = 0, tries;

        snprintf(c->conf[i], sizeof(c->conf[i]), "c%d.nodes.conf", i);
        v[k++] = "--cluster-enabled";
        v[k++] = "yes";
        v[k++] = "--cluster-config-file";
        v[k++] = c->conf[i];
        v[k++] = "--cluster-node-timeout";
        v[k++] = "1000";
        snprintf(c->rdb[i], sizeof(c->rdb[i]), "c%d.rdb", i);
        v[k++] = "--dbfilename";
        v[k++] = c->rdb[i];
        v[k++] = "--repl-diskless-sync-delay";
        v[k++] = "0";
        v[k] = NULL;
        snprintf(r->dir, sizeof(r->dir), "%s", dir);
        snprintf(r->sock, sizeof(r->sock), "%s/c%d.sock", dir, i);
        snprintf(r->log, sizeof(r->log), "%s/c%d.log", dir, i);
        r->args = v;
        for (tries = 0; tries < 3; tries++) {
            r->port = cluster_port();
            if (r->port > 0 && kvcd_redis_restart(r) == 0)
                break;
            r->port = 0;
        }
        if (!r->port) {
            fprintf(stderr, "cluster node %d did not start, see %s\n", i, r->log);
            return -1;
        }
        c->n = i + 1;
        snprintf(addrs[i], sizeof(addrs[i]), "127.0.0.1:%d", r->port);
    }
    argv[a++] = "redis-cli";
    argv[a++] = "--cluster";
    argv[a++] = "create";
    for (i = 0; i < n; i++)
        argv[a++] = addrs[i];
    snprintf(reps, sizeof(reps), "%d", replicas);
    argv[a++] = "--cluster-replicas";
    argv[a++] = reps;
    argv[a++] = "--cluster-yes";
    argv[a] = NULL;
    rc = kvcd_redis_cli(dir, "cluster-create.log", argv, 1, 30000);
    if (rc != 0) {
        fprintf(stderr, "redis-cli --cluster create failed (%d), see %s/cluster-create.log\n", rc,
                dir);
        return -1;
    }
    return kvcd_redis_cluster_wait_ok(c, 20000);
}

/* 1 when node r's CLUSTER SLOTS lists a replica for every range. */
static int slots_have_replicas(const kvcd_redis_t *r)
{
    redisContext *ctx = kvcd_redis_connect(r);
    redisReply *rep;
    size_t i;
    int ok;

    if (!ctx)
        return 0;
    rep = redisCommand(ctx, "CLUSTER SLOTS");
    ok = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements > 0;
    for (i = 0; ok && i < rep->elements; i++)
        ok = rep->element[i]->type == REDIS_REPLY_ARRAY && rep->element[i]->elements >= 4;
    freeReplyObject(rep);
    redisFree(ctx);
    return ok;
}

int kvcd_redis_cluster_wait_replicas(kvcd_redis_cluster_t *c, uint64_t limit_ms)
{
    uint64_t end = now_ms() + limit_ms;
    int i, ok;

    while (now_ms() < end) {
        for (i = 0, ok = 1; i < c->n && ok; i++)
            ok = c->node[i].pid <= 0 || slots_have_replicas(&c->node[i]);
        if (ok)
            return 0;
        usleep(50000);
    }
    return -1;
}

int kvcd_redis_cluster_wait_ok(kvcd_redis_cluster_t *c, uint64_t limit_ms)
{
    static char text[8192];
    uint64_t end = now_ms() + limit_ms;
    int i, up = 0, ok = 0;
    char want[64];

    while (now_ms() < end) {
        for (i = 0, up = 0, ok = 0; i < c->n; i++) {
            if (c->node[i].pid <= 0)
                continue;
            up++;
            if (kvcd_redis_str(&c->node[i], text, sizeof(text), "CLUSTER INFO") != 0)
                continue;
            snprintf(want, sizeof(want), "cluster_known_nodes:%d", c->n);
            ok += strstr(text, "cluster_state:ok") && strstr(text, "cluster_slots_ok:16384") &&
                  strstr(text, want);
        }
        if (up > 0 && ok == up)
            return 0;
        usleep(50000);
    }
    fprintf(stderr, "cluster not ok after %llu ms (%d of %d nodes ok)\n",
            (unsigned long long)limit_ms, ok, up);
    return -1;
}

int kvcd_redis_cluster_is_master(kvcd_redis_cluster_t *c, int i)
{
    char role[32];

    if (kvcd_redis_info(&c->node[i], "role", role, sizeof(role)) != 0)
        return -1;
    return !strcmp(role, "master");
}

int kvcd_redis_cluster_master_of(kvcd_redis_cluster_t *c, int i)
{
    char port[16];
    int j;

    if (kvcd_redis_cluster_is_master(c, i) != 0 ||
        kvcd_redis_info(&c->node[i], "master_port", port, sizeof(port)) != 0)
        return -1;
    for (j = 0; j < c->n; j++)
        if (c->node[j].port == atoi(port))
            return j;
    return -1;
}

int kvcd_redis_cluster_wait_synced(kvcd_redis_cluster_t *c, uint64_t limit_ms)
{
    uint64_t end = now_ms() + limit_ms;
    char link[32];
    int i, good;

    while (now_ms() < end) {
        good = 1;
        for (i = 0; i < c->n && good; i++) {
            int m;

            if (c->node[i].pid <= 0 || kvcd_redis_cluster_is_master(c, i) != 0)
                continue;
            m = kvcd_redis_cluster_master_of(c, i);
            if (m < 0 || c->node[m].pid <= 0)
                continue;
            good = kvcd_redis_info(&c->node[i], "master_link_status", link, sizeof(link)) == 0 &&
                   !strcmp(link, "up") &&
                   kvcd_redis_int(&c->node[i], "DBSIZE") == kvcd_redis_int(&c->node[m], "DBSIZE");
        }
        if (good)
            return 0;
        usleep(20000);
    }
    return -1;
}

void kvcd_redis_cluster_cleanup(kvcd_redis_cluster_t *c)
{
    int i;

    for (i = 0; i < c->n; i++)
        kvcd_redis_stop(&c->node[i], SIGKILL);
}
