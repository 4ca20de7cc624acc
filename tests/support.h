/*
 * support.h - helpers shared by the test binaries: start the real kvcd binary
 * on a private ipc:// socket in a temp dir, wait until it answers PING, stop it.
 *
 * The binary comes from $KVCD_BIN (set by `make test`), else build/kvcd.
 */
#ifndef KVCD_TEST_SUPPORT_H
#define KVCD_TEST_SUPPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol/proto.h"

typedef struct {
    pid_t pid;
    char dir[256];        /* private temp dir, removed by kvcd_proc_cleanup */
    char endpoint[320];   /* ipc://<dir>/kvcd.sock */
    char log[320];        /* <dir>/kvcd.log: the daemon's stderr */
} kvcd_proc_t;

const char *kvcd_test_bin(void);
const char *kvcd_test_ctl(void);
const char *kvcd_test_srcdir(void);

/* Start kvcd with the given extra arguments (NULL-terminated, may be NULL).
 * Waits up to 10 s for PING. 0 or -1. */
int kvcd_proc_start(kvcd_proc_t *p, const char *const *args);

/* Like kvcd_proc_start, but reuse p->dir (already created) and p->endpoint. */
int kvcd_proc_restart(kvcd_proc_t *p, const char *const *args);

/* Send sig and wait up to timeout_ms for exit; returns the exit status, 128+sig
 * if killed by a signal, -1 on timeout (then the process is SIGKILLed). */
int kvcd_proc_stop(kvcd_proc_t *p, int sig, int timeout_ms);

/* 1 if the daemon's log holds a sanitizer report (ASan, UBSan, LSan). */
int kvcd_proc_log_has_sanitizer_report(const kvcd_proc_t *p);

/* Kill if still running, remove the temp dir. */
void kvcd_proc_cleanup(kvcd_proc_t *p);

/* Run a command (argv) with stdout/stderr captured into out (NUL-terminated,
 * truncated to outlen). Returns the exit status or -1. */
int kvcd_run(const char *const *argv, char *out, size_t outlen, int timeout_ms);

/* Run a suite with Check's normal output (fork mode unless CK_FORK=no), SIGPIPE
 * ignored; returns main's exit status: 0 when every test passed. */
struct Suite;
int kvcd_test_run(struct Suite *s);

/* ---- for tests that drive a daemon through the C client (Check asserts) ---- */

struct kvcd_client_s;
struct json_t;

/* Start kvcd with args and connect *cli to it; fails the test otherwise. */
void kvcd_test_start(kvcd_proc_t *p, struct kvcd_client_s **cli, const char *const *args);

/* Close *cli and stop kvcd with SIGTERM: it must exit 0 and its log must hold no
 * sanitizer report. Then remove its temp dir. */
void kvcd_test_stop(kvcd_proc_t *p, struct kvcd_client_s **cli);

/* STATUS as JSON (new reference). */
struct json_t *kvcd_test_status(struct kvcd_client_s *cli);

/* status[group][name] (status[name] when group is NULL); must be an integer. */
long long kvcd_test_stat(struct kvcd_client_s *cli, const char *group, const char *name);

/* Chunk hash number i: 8 big-endian bytes written to hb, which the result
 * borrows. */
kvcd_bytes_t kvcd_test_hash(uint8_t hb[8], uint64_t i);

/* CLOCK_MONOTONIC in milliseconds. */
uint64_t kvcd_test_now_ms(void);

/* Deterministic pseudo-random bytes. */
void kvcd_fill_random(void *buf, size_t len, uint64_t seed);

#endif
