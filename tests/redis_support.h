/*
 * redis_support.h - start and stop private redis-server processes for the
 * tests: a unix socket (and optionally a loopback TCP port) in a directory,
 * no persistence, killed with the test process (PR_SET_PDEATHSIG).
 *
 * redis-server is found on PATH, then in /usr/bin and /usr/local/bin. It is
 * installed by scripts/install-deps.sh; a test that needs it fails (never
 * skips) when it is missing.
 */
#ifndef KVCD_TEST_REDIS_SUPPORT_H
#define KVCD_TEST_REDIS_SUPPORT_H

#include <sys/types.h>

#include <hiredis/hiredis.h>

typedef struct {
    pid_t pid;
    char dir[256];  /* where the socket and the log live */
    char sock[320]; /* <dir>/<name>.sock */
    char log[320];  /* <dir>/<name>.log */
    int port;       /* loopback TCP port, or 0 for unix socket only */
    int own_dir;    /* dir was created by kvcd_redis_start: removed by cleanup */
    const char *password;    /* requirepass, or NULL; used by kvcd_redis_connect */
    const char *const *args; /* extra redis-server arguments, NULL-terminated, or NULL */
} kvcd_redis_t;

/* The redis-server binary, or NULL when none is installed. */
const char *kvcd_redis_bin(void);

/* Start a server named `name` in dir (NULL: a new temp dir), with a TCP port
 * on 127.0.0.1 when tcp != 0. Waits up to 5 s for PING. 0, or -1 with the
 * reason on stderr. */
int kvcd_redis_start(kvcd_redis_t *r, const char *dir, const char *name, int tcp);

/* The same with a password (requirepass) and extra arguments (both may be
 * NULL; both must outlive r). */
int kvcd_redis_start_ex(kvcd_redis_t *r, const char *dir, const char *name, int tcp,
                        const char *password, const char *const *args);

/* Start it again on the same socket and port (after kvcd_redis_stop). */
int kvcd_redis_restart(kvcd_redis_t *r);

/* Stop it with sig (SIGKILL, SIGTERM, ...) and reap it, bounded. */
void kvcd_redis_stop(kvcd_redis_t *r, int sig);

/* Stop if running; remove the temp dir if kvcd_redis_start made it. */
void kvcd_redis_cleanup(kvcd_redis_t *r);

/* A blocking connection over the unix socket (1 s timeouts), or NULL. */
redisContext *kvcd_redis_connect(const kvcd_redis_t *r);

/* Run one command (printf-style, hiredis format) and return its integer
 * reply, or -1 on an error. */
long long kvcd_redis_int(const kvcd_redis_t *r, const char *fmt, ...);

#endif
