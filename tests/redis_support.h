/*
 * redis_support.h - start and stop private redis-server processes for the
 * tests: a unix socket (and optionally a loopback TCP port) in a directory,
 * no persistence, killed with the test process (PR_SET_PDEATHSIG).
 *
 * redis-server is found on PATH, then in /usr/bin and /usr/local/bin. It is
 * installed by scripts/install-deps.sh; a test that needs it fails (never
 * skips) when it is missing.
 *
 * Clusters: kvcd_redis_cluster_start starts cluster-enabled servers (each with
 * a private cluster-config-file, a loopback port whose bus port, +10000, is
 * free too) and joins them with `redis-cli --cluster create`; redis-cli comes
 * from the same package (redis-tools).
 */
#ifndef KVCD_TEST_REDIS_SUPPORT_H
#define KVCD_TEST_REDIS_SUPPORT_H

#include <stdint.h>
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

/* A string (or status) reply, or the whole INFO/CLUSTER INFO text, into out.
 * 0, or -1 on an error reply or no connection. */
int kvcd_redis_str(const kvcd_redis_t *r, char *out, size_t outlen, const char *fmt, ...);

/* The value of "field:" in INFO (all sections), or -1 when absent. */
int kvcd_redis_info(const kvcd_redis_t *r, const char *field, char *out, size_t outlen);

#define KVCD_REDIS_CLUSTER_MAX 8

typedef struct {
    kvcd_redis_t node[KVCD_REDIS_CLUSTER_MAX];
    int n, masters;
    char dir[256];
    char conf[KVCD_REDIS_CLUSTER_MAX][64], rdb[KVCD_REDIS_CLUSTER_MAX][64];
    const char *args[KVCD_REDIS_CLUSTER_MAX][16];
} kvcd_redis_cluster_t;

/* Start masters * (1 + replicas) nodes in dir (must exist), create the
 * cluster (`redis-cli --cluster create ... --cluster-replicas R`), wait until
 * every node says cluster_state:ok and knows every other. cluster-node-timeout
 * is 1000 ms; each node has its own dbfilename (replicas load the initial
 * sync from it: shared, they would load each other's), no sync delay. 0, or -1 with the reason on stderr (what started is stopped by
 * kvcd_redis_cluster_cleanup, which the caller must call either way). */
int kvcd_redis_cluster_start(kvcd_redis_cluster_t *c, const char *dir, int masters, int replicas);

/* Wait until every running node reports cluster_state:ok with all 16384
 * slots ok. 0, or -1 after limit_ms. */
int kvcd_redis_cluster_wait_ok(kvcd_redis_cluster_t *c, uint64_t limit_ms);

/* Wait until every running node's CLUSTER SLOTS names a replica for every
 * slot range (Redis 7.0 lists them there several seconds after
 * `--cluster create` has returned). 0, or -1 after limit_ms. */
int kvcd_redis_cluster_wait_replicas(kvcd_redis_cluster_t *c, uint64_t limit_ms);

/* Wait until every running replica's link is up and it holds as many keys
 * as its master. 0, or -1 after limit_ms. */
int kvcd_redis_cluster_wait_synced(kvcd_redis_cluster_t *c, uint64_t limit_ms);

/* 1 when node i is a master now, 0 a replica, -1 unknown (down). */
int kvcd_redis_cluster_is_master(kvcd_redis_cluster_t *c, int i);

/* The node a replica replicates from (index), or -1. */
int kvcd_redis_cluster_master_of(kvcd_redis_cluster_t *c, int i);

/* Run redis-cli with argv (argv[0] is ignored; NULL-terminated), output to
 * <dir>/<logname>. wait != 0: wait (bounded by limit_ms) and return its exit
 * status, -1 on a timeout; wait == 0: return its pid at once. */
int kvcd_redis_cli(const char *dir, const char *logname, const char *const *argv, int wait,
                   uint64_t limit_ms);

/* Stop every node with SIGKILL (the cluster config files stay). */
void kvcd_redis_cluster_cleanup(kvcd_redis_cluster_t *c);

#endif
