/*
 * test_shm.c - the shared-memory data plane end to end: the real kvcd binary on
 * a private ipc:// socket, driven through the C client's segment calls and
 * hand-made REGISTER_SEGMENT requests for the segments it must refuse.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "protocol/client.h"
#include "tests/support.h"

#define MiB (1u << 20)

static kvcd_proc_t proc;
static kvcd_client_t *cli;

static void start(const char *const *args)
{
    kvcd_test_start(&proc, &cli, args);
}

/* Every test ends with a clean shutdown: exit 0 and no sanitizer report. */
static void stop(void)
{
    kvcd_test_stop(&proc, &cli);
}

/* status[name] or status.counters[name]. */
static json_int_t stat_of(const char *group, const char *name)
{
    return kvcd_test_stat(cli, group, name);
}

/* Wait up to 5 s for a status figure to reach `want` (a segment stays mapped,
 * and counted in segment_bytes, until the copies and the background pre-fault
 * that use it are done). Returns the last value seen. */
static json_int_t wait_stat(const char *group, const char *name, json_int_t want)
{
    json_int_t v = -1;
    int i;

    for (i = 0; i < 100; i++) {
        v = stat_of(group, name);
        if (v == want)
            break;
        usleep(50000);
    }
    return v;
}

/* Send a shm request and return its request-level error; msg gets the text. */
static int shm_call(kvcd_client_t *c, uint32_t op, const kvcd_key_t *base,
                    const kvcd_bytes_t *h, size_t n, const kvcd_shm_args_t *shm,
                    char *msg, size_t msglen, kvcd_reply_t **keep)
{
    kvcd_reply_t *r;
    uint64_t id;
    int err;

    ck_assert_int_eq(kvcd_client_send_shm(c, op, base, h, n, shm, &id), 0);
    ck_assert_int_eq(kvcd_client_wait(c, id, 0, &r), 0);
    err = kvcd_reply_hdr(r)->err;
    if (msg)
        snprintf(msg, msglen, "%s", kvcd_reply_hdr(r)->msg);
    if (keep)
        *keep = r;
    else
        kvcd_reply_free(r);
    return err;
}

/* REGISTER_SEGMENT fd of process pid, size bytes. */
static int register_fd(pid_t pid, int fd, size_t size, char *msg, size_t msglen)
{
    kvcd_shm_args_t shm = {.pid = (uint64_t)pid, .fd = (uint64_t)fd, .size = size};

    return shm_call(cli, KVCD_OP_REGISTER_SEGMENT, NULL, NULL, 0, &shm, msg, msglen, NULL);
}

static int make_memfd(const char *name, size_t size, unsigned seals)
{
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
    if (seals)
        ck_assert_int_eq(fcntl(fd, F_ADD_SEALS, seals), 0);
    return fd;
}

/* ---- round trips ---- */

START_TEST(roundtrip_byte_exact)
{
    /* 16 chunks of 1 MiB and odd sizes, stored in three requests, loaded back
     * in two, compared with what was written; then across paths: STORE_SHM then
     * LOAD over frames, STORE over frames then LOAD_SHM. */
    enum { N = 22 };
    static const size_t odd[] = {1, 7, 4095, 4097, 300001, 3 * MiB + 5};
    static uint8_t hb[N + 1][8];
    kvcd_bytes_t h[N + 1];
    uint64_t off[N], len[N], loff[N], cap[N], got[N], pos = 0;
    int res[N];
    kvcd_segment_t *seg;
    kvcd_key_t base;
    char *src, *dst;
    size_t i, prefix, total;

    start(NULL);
    kvcd_keyset(&base, "shm/model", 2, 1, 0, "");
    for (i = 0; i < N; i++) {
        h[i] = kvcd_test_hash(hb[i], 500 + i);
        len[i] = i < 16 ? MiB : odd[i - 16];
        off[i] = pos;
        pos += (len[i] + 4095) & ~(uint64_t)4095;
    }
    h[N] = kvcd_test_hash(hb[N], 9999);
    total = pos;
    ck_assert_int_eq(kvcd_client_segment_create(cli, 2 * total, &seg), 0);
    ck_assert_uint_ge(seg->id, 1);
    ck_assert_uint_eq(seg->size, 2 * total);
    src = seg->base;
    dst = src + total;
    for (i = 0; i < N; i++) {
        kvcd_fill_random(src + off[i], len[i], 7000 + i);
        loff[i] = total + off[i];
        cap[i] = len[i];
    }
    /* Three requests: 8 + 8 + 6 keys. */
    ck_assert_int_eq(kvcd_client_store_shm(cli, &base, h, 8, seg, off, len, res), 0);
    ck_assert_int_eq(kvcd_client_store_shm(cli, &base, h + 8, 8, seg, off + 8, len + 8,
                                           res + 8), 0);
    ck_assert_int_eq(kvcd_client_store_shm(cli, &base, h + 16, 6, seg, off + 16, len + 16,
                                           res + 16), 0);
    for (i = 0; i < N; i++)
        ck_assert_int_eq(res[i], 0);
    ck_assert_int_eq(kvcd_client_lookup(cli, &base, h, N, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, N);

    memset(dst, 0xee, total);
    ck_assert_int_eq(kvcd_client_load_shm(cli, &base, h, 11, seg, loff, cap, got, res), 0);
    ck_assert_int_eq(kvcd_client_load_shm(cli, &base, h + 11, N - 11, seg, loff + 11,
                                          cap + 11, got + 11, res + 11), 0);
    for (i = 0; i < N; i++) {
        ck_assert_int_eq(res[i], 0);
        ck_assert_uint_eq(got[i], len[i]);
        ck_assert_msg(memcmp(src + off[i], dst + off[i], len[i]) == 0, "key %zu differs", i);
    }

    /* A miss in the middle: ENOTFOUND, length 0, its range untouched. */
    {
        kvcd_bytes_t hm[3] = {h[0], h[N], h[17]};
        uint64_t mo[3] = {loff[0], loff[1], loff[17]}, mc[3] = {cap[0], cap[1], cap[17]};

        memset(dst, 0xee, total);
        ck_assert_int_eq(kvcd_client_load_shm(cli, &base, hm, 3, seg, mo, mc, got, res), 0);
        ck_assert_int_eq(res[0], 0);
        ck_assert_int_eq(res[1], KVCD_ENOTFOUND);
        ck_assert_int_eq(res[2], 0);
        ck_assert_uint_eq(got[1], 0);
        ck_assert_uint_eq((uint8_t)dst[off[1]], 0xee);
        ck_assert(memcmp(src + off[17], dst + off[17], len[17]) == 0);
    }

    /* Stored through the segment, loaded over frames. */
    {
        void *outs[1];
        size_t fcap = 3 * MiB + 5, flen;
        void *buf = malloc(fcap);

        outs[0] = buf;
        ck_assert_int_eq(kvcd_client_load(cli, &base, &h[21], 1, outs, &fcap, &flen, res), 0);
        ck_assert_int_eq(res[0], 0);
        ck_assert_uint_eq(flen, len[21]);
        ck_assert(memcmp(buf, src + off[21], flen) == 0);
        free(buf);
    }
    /* Stored over frames, loaded through the segment. */
    {
        const void *bufs[1] = {src + off[3]};
        size_t flen = MiB;

        ck_assert_int_eq(kvcd_client_store(cli, &base, &h[N], 1, bufs, &flen, res), 0);
        ck_assert_int_eq(res[0], 0);
        memset(dst, 0, MiB);
        ck_assert_int_eq(kvcd_client_load_shm(cli, &base, &h[N], 1, seg, &loff[0], &cap[0],
                                              got, res), 0);
        ck_assert_int_eq(res[0], 0);
        ck_assert(memcmp(dst, src + off[3], MiB) == 0);
    }
    /* A duplicate store succeeds without copying. */
    ck_assert_int_eq(kvcd_client_store_shm(cli, &base, h, 2, seg, off, len, res), 0);
    ck_assert_int_eq(res[0], 0);
    ck_assert_int_eq(res[1], 0);

    ck_assert_int_eq(stat_of(NULL, "segments"), 1);
    ck_assert_int_eq(stat_of(NULL, "segment_bytes"), (json_int_t)(2 * total));
    ck_assert_int_eq(stat_of("counters", "shm_stores"), N);
    ck_assert_int_ge(stat_of("counters", "shm_loads"), N + 3);
    ck_assert_int_eq(kvcd_client_segment_destroy(cli, seg), 0);
    ck_assert_int_eq(stat_of(NULL, "segments"), 0);
    ck_assert_int_eq(wait_stat(NULL, "segment_bytes", 0), 0);
    stop();
}
END_TEST

START_TEST(load_capacity_too_small)
{
    uint8_t hb[2][8];
    kvcd_bytes_t h[2] = {kvcd_test_hash(hb[0], 1), kvcd_test_hash(hb[1], 2)};
    uint64_t off[2] = {0, 8192}, len[2] = {5000, 100}, cap[2] = {4999, 100}, got[2];
    uint64_t loff[2] = {65536, 65536 + 8192};
    int res[2];
    kvcd_segment_t *seg;
    kvcd_key_t base;
    char *b;

    start(NULL);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    ck_assert_int_eq(kvcd_client_segment_create(cli, 1 * MiB, &seg), 0);
    b = seg->base;
    kvcd_fill_random(b, 16384, 3);
    ck_assert_int_eq(kvcd_client_store_shm(cli, &base, h, 2, seg, off, len, res), 0);
    memset(b + 65536, 0x55, 16384);
    ck_assert_int_eq(kvcd_client_load_shm(cli, &base, h, 2, seg, loff, cap, got, res), 0);
    ck_assert_int_eq(res[0], -EMSGSIZE);
    ck_assert_uint_eq(got[0], 5000);     /* the size it would have needed */
    ck_assert_uint_eq((uint8_t)b[65536], 0x55);
    ck_assert_uint_eq((uint8_t)b[65536 + 4998], 0x55);
    ck_assert_int_eq(res[1], 0);
    ck_assert_uint_eq(got[1], 100);
    ck_assert(memcmp(b + 65536 + 8192, b + 8192, 100) == 0);
    ck_assert_int_eq(kvcd_client_segment_destroy(cli, seg), 0);
    stop();
}
END_TEST

/* ---- bad references ---- */

START_TEST(out_of_bounds_is_ebadfield)
{
    const char *args[] = {"--max-frame-mb", "1", NULL};
    uint8_t hb[3][8];
    kvcd_bytes_t h[3] = {kvcd_test_hash(hb[0], 1), kvcd_test_hash(hb[1], 2), kvcd_test_hash(hb[2], 3)};
    const size_t size = 2 * MiB;
    struct {
        uint64_t off, len;
        const char *needle;
    } cases[] = {
        {size, 1, "offsets[1]"},                   /* starts at the end */
        {size - 10, 11, "offsets[1]"},             /* one byte past */
        {size + 4096, 1, "offsets[1]"},            /* wholly beyond */
        {UINT64_MAX - 10, 100, "offsets[1]"},      /* offset + length overflows */
        {10, UINT64_MAX, "offsets[1]"},            /* length alone overflows */
    };
    uint64_t off[3], len[3];
    kvcd_shm_args_t shm;
    kvcd_segment_t *seg;
    kvcd_key_t base;
    char msg[256];
    size_t i, prefix;

    start(args);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    ck_assert_int_eq(kvcd_client_segment_create(cli, size, &seg), 0);
    shm.segment = seg->id;
    shm.offsets = off;
    shm.lengths = len;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        off[0] = 0, len[0] = 100;
        off[1] = cases[i].off, len[1] = cases[i].len;
        off[2] = 4096, len[2] = 100;
        ck_assert_int_eq(shm_call(cli, KVCD_OP_STORE_SHM, &base, h, 3, &shm, msg, sizeof(msg),
                                  NULL), KVCD_EBADFIELD);
        ck_assert_msg(strstr(msg, cases[i].needle), "case %zu: %s", i, msg);
        ck_assert_int_eq(shm_call(cli, KVCD_OP_LOAD_SHM, &base, h, 3, &shm, msg, sizeof(msg),
                                  NULL), KVCD_EBADFIELD);
        ck_assert_msg(strstr(msg, "capacities[1]"), "case %zu: %s", i, msg);
    }
    /* The last byte exactly is fine. */
    off[1] = size - 10, len[1] = 10;
    ck_assert_int_eq(shm_call(cli, KVCD_OP_STORE_SHM, &base, h, 3, &shm, NULL, 0, NULL), 0);
    ck_assert_int_eq(kvcd_client_remove(cli, &base, h, 3, NULL), 0);
    /* A length over max_frame (1 MiB) is ETOOLARGE; a zero length, a count
     * that does not match the keys, a missing field are rejected by the
     * decoder. */
    off[1] = 0, len[1] = MiB + 1;
    ck_assert_int_eq(shm_call(cli, KVCD_OP_STORE_SHM, &base, h, 3, &shm, NULL, 0, NULL),
                     KVCD_ETOOLARGE);
    len[1] = 0;
    ck_assert_int_eq(shm_call(cli, KVCD_OP_STORE_SHM, &base, h, 3, &shm, msg, sizeof(msg),
                              NULL), KVCD_EBADFIELD);
    ck_assert_msg(strstr(msg, "lengths[1]"), "%s", msg);
    len[1] = 10;
    /* Nothing was stored by any of it. */
    ck_assert_int_eq(kvcd_client_lookup(cli, &base, h, 3, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, 0);
    ck_assert_int_eq(kvcd_client_ping(cli, NULL, NULL, 0), 0);
    ck_assert_int_eq(kvcd_client_segment_destroy(cli, seg), 0);
    stop();
}
END_TEST

START_TEST(unknown_segment_is_esegment)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 1);
    uint64_t off = 0, len = 10, got;
    kvcd_segment_t *seg, fake;
    kvcd_shm_args_t shm = {.segment = 424242};
    kvcd_key_t base;
    char msg[256];
    int res;

    start(NULL);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    memset(&fake, 0, sizeof(fake));
    fake.id = 424242;
    ck_assert_int_eq(kvcd_client_store_shm(cli, &base, &h, 1, &fake, &off, &len, &res),
                     KVCD_ESEGMENT);
    ck_assert_ptr_nonnull(strstr(kvcd_client_errmsg(cli), "unknown segment 424242"));
    ck_assert_int_eq(kvcd_client_load_shm(cli, &base, &h, 1, &fake, &off, &len, &got, &res),
                     KVCD_ESEGMENT);
    ck_assert_int_eq(shm_call(cli, KVCD_OP_UNREGISTER_SEGMENT, NULL, NULL, 0, &shm, msg,
                              sizeof(msg), NULL), KVCD_ESEGMENT);
    ck_assert_ptr_nonnull(strstr(msg, "unknown segment"));
    /* An unregistered id stays unknown, and ids are never reused. */
    ck_assert_int_eq(kvcd_client_segment_create(cli, MiB, &seg), 0);
    fake.id = seg->id;
    ck_assert_int_eq(kvcd_client_segment_destroy(cli, seg), 0);
    ck_assert_int_eq(kvcd_client_store_shm(cli, &base, &h, 1, &fake, &off, &len, &res),
                     KVCD_ESEGMENT);
    ck_assert_int_eq(kvcd_client_segment_create(cli, MiB, &seg), 0);
    ck_assert_uint_gt(seg->id, fake.id);
    /* Another connection may not use or unregister it. */
    {
        kvcd_client_t *other;

        ck_assert_int_eq(kvcd_client_connect(proc.endpoint, 10000, &other), 0);
        ck_assert_int_eq(kvcd_client_store_shm(other, &base, &h, 1, seg, &off, &len, &res),
                         KVCD_ESEGMENT);
        ck_assert_ptr_nonnull(strstr(kvcd_client_errmsg(other), "another connection"));
        shm.segment = seg->id;
        ck_assert_int_eq(shm_call(other, KVCD_OP_UNREGISTER_SEGMENT, NULL, NULL, 0, &shm, NULL,
                                  0, NULL), KVCD_ESEGMENT);
        kvcd_client_close(other);
    }
    ck_assert_int_eq(kvcd_client_store_shm(cli, &base, &h, 1, seg, &off, &len, &res), 0);
    ck_assert_int_eq(res, 0);
    ck_assert_int_eq(kvcd_client_segment_destroy(cli, seg), 0);
    stop();
}
END_TEST

START_TEST(wrong_name_unsealed_small_rejected)
{
    char msg[256], path[400];
    int fd;

    start(NULL);
    /* A memfd whose name kvcd does not own. */
    fd = make_memfd("other-thing", MiB, F_SEAL_SHRINK | F_SEAL_GROW);
    ck_assert_int_eq(register_fd(getpid(), fd, MiB, msg, sizeof(msg)), KVCD_ESEGMENT);
    ck_assert_msg(strstr(msg, "not a kvcd memfd segment"), "%s", msg);
    close(fd);
    /* A plain file, even one called kvcd-... */
    snprintf(path, sizeof(path), "%s/kvcd-file", proc.dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, MiB), 0);
    ck_assert_int_eq(register_fd(getpid(), fd, MiB, msg, sizeof(msg)), KVCD_ESEGMENT);
    ck_assert_msg(strstr(msg, "not a kvcd memfd segment"), "%s", msg);
    close(fd);
    /* Not sealed: the client could shrink it under the daemon's mapping. */
    fd = make_memfd("kvcd-unsealed", MiB, 0);
    ck_assert_int_eq(register_fd(getpid(), fd, MiB, msg, sizeof(msg)), KVCD_ESEGMENT);
    ck_assert_msg(strstr(msg, "sealed against shrinking"), "%s", msg);
    close(fd);
    /* Sealed, but smaller than the size claimed. */
    fd = make_memfd("kvcd-small", MiB, F_SEAL_SHRINK);
    ck_assert_int_eq(register_fd(getpid(), fd, 2 * MiB, msg, sizeof(msg)), KVCD_ESEGMENT);
    ck_assert_msg(strstr(msg, "size"), "%s", msg);
    /* The same fd with an honest size is fine. */
    ck_assert_int_eq(register_fd(getpid(), fd, MiB, msg, sizeof(msg)), 0);
    close(fd);
    /* An fd that does not exist, a process that does not exist. */
    ck_assert_int_eq(register_fd(getpid(), 999999, MiB, msg, sizeof(msg)), KVCD_ESEGMENT);
    /* Another process's descriptor, here one that does not exist: not this
     * connection's process, refused before anything is opened. */
    ck_assert_int_eq(register_fd(0x7ffffff0, 3, MiB, msg, sizeof(msg)), KVCD_EPEERUNVERIFIED);
    /* Missing and mistyped fields. */
    {
        kvcd_shm_args_t shm = {.pid = (uint64_t)getpid(), .fd = 3, .size = 0};

        ck_assert_int_eq(shm_call(cli, KVCD_OP_REGISTER_SEGMENT, NULL, NULL, 0, &shm, msg,
                                  sizeof(msg), NULL), KVCD_EBADFIELD);
        ck_assert_msg(strstr(msg, "size"), "%s", msg);
    }
    ck_assert_int_eq(stat_of(NULL, "segments"), 1);
    ck_assert_int_eq(stat_of(NULL, "segment_bytes"), MiB);
    stop();
}
END_TEST

/* Send fd over a Unix socket (SCM_RIGHTS). */
static int send_fd(int sock, int fd)
{
    char cbuf[CMSG_SPACE(sizeof(int))], c = 'f';
    struct iovec iov = {.iov_base = &c, .iov_len = 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof(cbuf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

    memset(cbuf, 0, sizeof(cbuf));
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    return sendmsg(sock, &mh, 0) == 1 ? 0 : -1;
}

static int recv_fd(int sock)
{
    char cbuf[CMSG_SPACE(sizeof(int))], c;
    struct iovec iov = {.iov_base = &c, .iov_len = 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof(cbuf)};
    struct cmsghdr *cm;
    int fd = -1;

    if (recvmsg(sock, &mh, 0) != 1)
        return -1;
    cm = CMSG_FIRSTHDR(&mh);
    if (cm && cm->cmsg_type == SCM_RIGHTS)
        memcpy(&fd, CMSG_DATA(cm), sizeof(int));
    return fd;
}

/* Fork a child that runs as nobody (65534). Returns its pid; the caller must
 * waitpid it. */
static pid_t fork_nobody(void)
{
    pid_t child = fork();

    ck_assert_int_ge(child, 0);
    if (child == 0 && (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0))
        _exit(2);
    return child;
}

START_TEST(other_users_segment_rejected)
{
    /* Needs root: a child setuid()s to nobody (65534), creates a sealed
     * kvcd-named memfd (so the memfd belongs to nobody) and hands it to us over
     * a Unix socket. We (kvcd's user, a verified peer) register our own copy of
     * the descriptor: kvcd can open it, but must refuse memory that belongs to
     * another user. */
    int sv[2], fd = -1, status;
    char msg[256];
    pid_t child;

    if (geteuid() != 0) {
        fprintf(stderr, "other_users_segment_rejected: skipped (needs root)\n");
        return;
    }
    start(NULL);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    child = fork_nobody();
    if (child == 0) {
        close(sv[0]);
        fd = memfd_create("kvcd-nobody", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, MiB) != 0 ||
            fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)
            _exit(3);
        _exit(send_fd(sv[1], fd) == 0 ? 0 : 4);
    }
    close(sv[1]);
    fd = recv_fd(sv[0]);
    ck_assert_int_ge(fd, 0);
    close(sv[0]);
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ck_assert_int_eq(register_fd(getpid(), fd, MiB, msg, sizeof(msg)), KVCD_ESEGMENT);
    ck_assert_msg(strstr(msg, "belongs to another user"), "%s", msg);
    close(fd);
    ck_assert_int_eq(stat_of(NULL, "segments"), 0);
    stop();
}
END_TEST

/* ---- item 14: shared memory only with verified peers of kvcd's user ---- */

/* A free loopback TCP port (bound and released: good enough for a test). */
static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

    ck_assert_int_ge(s, 0);
    ck_assert_int_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(getsockname(s, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(s);
    return port;
}

START_TEST(test_item14_tcp_peer_refused)
{
    uint8_t hb[8];
    kvcd_bytes_t h = kvcd_test_hash(hb, 1);
    uint64_t off = 0, len = 10, got;
    kvcd_shm_args_t shm = {.segment = 1};
    kvcd_segment_t *seg, fake;
    kvcd_key_t base;
    char tmpl[] = "/tmp/kvcd-test-XXXXXX", msg[256];
    int res, i;

    /* kvcd on tcp:// (loopback): every peer is unverified. */
    memset(&proc, 0, sizeof(proc));
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    snprintf(proc.dir, sizeof(proc.dir), "%s", tmpl);
    snprintf(proc.log, sizeof(proc.log), "%s/kvcd.log", proc.dir);
    for (i = 0; i < 5; i++) {
        snprintf(proc.endpoint, sizeof(proc.endpoint), "tcp://127.0.0.1:%d", free_port());
        if (kvcd_proc_restart(&proc, NULL) == 0)
            break;
    }
    ck_assert_msg(i < 5, "kvcd did not start on tcp (log in %s)", proc.log);
    ck_assert_int_eq(kvcd_client_connect(proc.endpoint, 10000, &cli), 0);

    ck_assert_int_eq(kvcd_client_segment_create(cli, MiB, &seg), KVCD_EPEERUNVERIFIED);
    ck_assert_msg(strstr(kvcd_client_errmsg(cli), "ipc://"), "%s", kvcd_client_errmsg(cli));
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    memset(&fake, 0, sizeof(fake));
    fake.id = 1;
    ck_assert_int_eq(kvcd_client_store_shm(cli, &base, &h, 1, &fake, &off, &len, &res),
                     KVCD_EPEERUNVERIFIED);
    ck_assert_int_eq(kvcd_client_load_shm(cli, &base, &h, 1, &fake, &off, &len, &got, &res),
                     KVCD_EPEERUNVERIFIED);
    ck_assert_int_eq(shm_call(cli, KVCD_OP_UNREGISTER_SEGMENT, NULL, NULL, 0, &shm, msg,
                              sizeof(msg), NULL), KVCD_EPEERUNVERIFIED);
    ck_assert_str_eq(kvcd_errname(KVCD_EPEERUNVERIFIED), "EPEERUNVERIFIED");
    /* Frames still work for it. */
    ck_assert_int_eq(kvcd_client_ping(cli, NULL, NULL, 0), 0);
    ck_assert_int_eq(stat_of(NULL, "segments"), 0);
    stop();
}
END_TEST

START_TEST(test_item14_ipc_other_pid_refused)
{
    /* Same user, ipc://, but the descriptor named is another process's (a
     * child of ours): only the connected process's own descriptors count. */
    int to_parent[2], to_child[2], fd = -1, status;
    kvcd_segment_t *seg;
    char msg[256], c;
    pid_t child;

    start(NULL);
    ck_assert_int_eq(pipe(to_parent), 0);
    ck_assert_int_eq(pipe(to_child), 0);
    child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        close(to_parent[0]);
        close(to_child[1]);
        fd = memfd_create("kvcd-child", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, MiB) != 0 ||
            fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)
            _exit(3);
        if (write(to_parent[1], &fd, sizeof(fd)) != sizeof(fd))
            _exit(4);
        (void)!read(to_child[0], &c, 1); /* until the parent closes its end */
        _exit(0);
    }
    close(to_parent[1]);
    close(to_child[0]);
    ck_assert_int_eq(read(to_parent[0], &fd, sizeof(fd)), sizeof(fd));
    ck_assert_int_eq(register_fd(child, fd, MiB, msg, sizeof(msg)), KVCD_EPEERUNVERIFIED);
    ck_assert_msg(strstr(msg, "pid"), "%s", msg);
    close(to_child[1]);
    close(to_parent[0]);
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ck_assert_int_eq(stat_of(NULL, "segments"), 0);
    /* The normal path on the same daemon: our own memfd over ipc://. */
    ck_assert_int_eq(kvcd_client_segment_create(cli, MiB, &seg), 0);
    ck_assert_int_eq(stat_of(NULL, "segments"), 1);
    ck_assert_int_eq(kvcd_client_segment_destroy(cli, seg), 0);
    stop();
}
END_TEST

START_TEST(test_item14_other_user_refused)
{
    /* Needs root: a child running as nobody connects over ipc:// (we open the
     * socket to it) and registers a memfd of its own: kvcd (root) could open
     * it, but the peer is not kvcd's user. The child is forked before this
     * process starts any ZeroMQ thread (a fork of a threaded process may
     * inherit a locked allocator) and gets the endpoint through a pipe. */
    char sock[400];
    int go[2], status;
    pid_t child;

    if (geteuid() != 0) {
        fprintf(stderr, "test_item14_other_user_refused: skipped (needs root)\n");
        return;
    }
    ck_assert_int_eq(pipe(go), 0);
    child = fork_nobody();
    if (child == 0) {
        char endpoint[sizeof(proc.endpoint)];
        kvcd_client_t *c;
        kvcd_segment_t *seg = NULL;
        ssize_t n;
        int rc;

        close(go[1]);
        n = read(go[0], endpoint, sizeof(endpoint) - 1);
        if (n <= 0)
            _exit(9);
        endpoint[n] = '\0';
        if (kvcd_client_connect(endpoint, 10000, &c) != 0)
            _exit(3);
        rc = kvcd_client_ping(c, NULL, NULL, 0);
        if (rc != 0) {
            fprintf(stderr, "nobody's PING: %s (%s)\n", kvcd_errname(rc),
                    kvcd_client_errmsg(c));
            _exit(4); /* it can reach kvcd: only shared memory is refused */
        }
        rc = kvcd_client_segment_create(c, MiB, &seg);
        if (rc != KVCD_EPEERUNVERIFIED)
            _exit(rc == 0 ? 5 : rc == KVCD_ESEGMENT ? 6 : 7);
        if (!strstr(kvcd_client_errmsg(c), "uid 65534"))
            _exit(8);
        kvcd_client_close(c);
        _exit(0);
    }
    close(go[0]);
    start(NULL);
    snprintf(sock, sizeof(sock), "%s/kvcd.sock", proc.dir);
    ck_assert_int_eq(chmod(proc.dir, 0711), 0);
    ck_assert_int_eq(chmod(sock, 0777), 0);
    ck_assert_int_eq(write(go[1], proc.endpoint, strlen(proc.endpoint)),
                     (ssize_t)strlen(proc.endpoint));
    close(go[1]);
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    ck_assert_int_eq(stat_of(NULL, "segments"), 0);
    stop();
}
END_TEST

/* ---- item 13: registration never blocks the loop ---- */

/* Send REGISTER_SEGMENT without waiting for its reply. */
static uint64_t register_async(kvcd_client_t *c, pid_t pid, int fd, size_t size)
{
    kvcd_shm_args_t shm = {.pid = (uint64_t)pid, .fd = (uint64_t)fd, .size = size};
    uint64_t id;

    ck_assert_int_eq(kvcd_client_send_shm(c, KVCD_OP_REGISTER_SEGMENT, NULL, NULL, 0, &shm,
                                          &id), 0);
    return id;
}

/* PING from a second connection must answer within 1 s. */
static void ping_other_quickly(void)
{
    kvcd_client_t *other;

    ck_assert_int_eq(kvcd_client_connect(proc.endpoint, 1000, &other), 0);
    ck_assert_msg(kvcd_client_ping(other, NULL, NULL, 0) == 0,
                  "PING from another client got no answer within 1 s while a "
                  "REGISTER_SEGMENT was in progress");
    kvcd_client_close(other);
}

START_TEST(test_item13_register_blocking_file_keeps_loop)
{
    /* A file under a read lease held by us: a blocking open() for writing
     * waits until the lease is given up or /proc/sys/fs/lease-break-time
     * (45 s by default) passes. kvcd must keep answering everyone meanwhile. */
    char path[400], msg[256];
    kvcd_reply_t *r;
    uint64_t id;
    int fd, wfd;

    start(NULL);
    signal(SIGIO, SIG_IGN); /* the lease-break notice */
    snprintf(path, sizeof(path), "%s/kvcd-leased", proc.dir);
    wfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ck_assert_int_ge(wfd, 0);
    ck_assert_int_eq(ftruncate(wfd, MiB), 0);
    close(wfd);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    if (fcntl(fd, F_SETLEASE, F_RDLCK) != 0) {
        fprintf(stderr, "test_item13: leases unavailable here (%s), lease part skipped\n",
                strerror(errno));
    } else {
        id = register_async(cli, getpid(), fd, MiB);
        usleep(100000); /* let the daemon start on it */
        ping_other_quickly();
        ck_assert_int_eq(kvcd_client_wait(cli, id, 5000, &r), 0);
        ck_assert_int_eq(kvcd_reply_hdr(r)->err, KVCD_ESEGMENT);
        kvcd_reply_free(r);
        ck_assert_int_eq(fcntl(fd, F_SETLEASE, F_UNLCK), 0);
    }
    close(fd);

    /* A FIFO: opened without blocking, refused as not a regular file. */
    snprintf(path, sizeof(path), "%s/kvcd-fifo", proc.dir);
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    id = register_async(cli, getpid(), fd, MiB);
    ping_other_quickly();
    ck_assert_int_eq(kvcd_client_wait(cli, id, 5000, &r), 0);
    ck_assert_int_eq(kvcd_reply_hdr(r)->err, KVCD_ESEGMENT);
    snprintf(msg, sizeof(msg), "%s", kvcd_reply_hdr(r)->msg);
    ck_assert_msg(strstr(msg, "not a kvcd memfd segment"), "%s", msg);
    kvcd_reply_free(r);
    close(fd);
    ck_assert_int_eq(stat_of(NULL, "segments"), 0);
    stop();
}
END_TEST

START_TEST(test_item13_concurrent_registrations)
{
    /* Registrations complete asynchronously: many in flight at once all get
     * their own reply, the limit counts the ones still in flight, and every
     * registered segment works. */
    const char *args[] = {"--max-segments", "4", NULL};
    kvcd_reply_t *r;
    uint64_t ids[6];
    int fds[6], ok = 0, full = 0, i;

    start(args);
    for (i = 0; i < 6; i++) {
        fds[i] = make_memfd("kvcd-many", MiB, F_SEAL_SHRINK);
        ids[i] = register_async(cli, getpid(), fds[i], MiB);
    }
    for (i = 0; i < 6; i++) {
        ck_assert_int_eq(kvcd_client_wait(cli, ids[i], 5000, &r), 0);
        if (kvcd_reply_hdr(r)->err == 0)
            ok++;
        else if (kvcd_reply_hdr(r)->err == KVCD_ESEGMENT &&
                 strstr(kvcd_reply_hdr(r)->msg, "--max-segments"))
            full++;
        kvcd_reply_free(r);
        close(fds[i]);
    }
    ck_assert_int_eq(ok, 4);
    ck_assert_int_eq(full, 2);
    ck_assert_int_eq(stat_of(NULL, "segments"), 4);
    stop();
}
END_TEST

START_TEST(limits_on_segments)
{
    const char *args[] = {"--max-segments", "2", "--max-segment-gb", "0.01", NULL};
    kvcd_segment_t *a, *b, *c;

    start(args);
    /* 0.01 GiB is about 10 MiB. */
    ck_assert_int_eq(kvcd_client_segment_create(cli, 16 * MiB, &c), KVCD_ESEGMENT);
    ck_assert_ptr_nonnull(strstr(kvcd_client_errmsg(cli), "--max-segment-gb"));
    ck_assert_int_eq(kvcd_client_segment_create(cli, 4 * MiB, &a), 0);
    ck_assert_int_eq(kvcd_client_segment_create(cli, 4 * MiB, &b), 0);
    ck_assert_int_eq(kvcd_client_segment_create(cli, MiB, &c), KVCD_ESEGMENT);
    ck_assert_ptr_nonnull(strstr(kvcd_client_errmsg(cli), "--max-segments"));
    ck_assert_int_eq(kvcd_client_segment_destroy(cli, b), 0);
    ck_assert_int_eq(kvcd_client_segment_create(cli, 4 * MiB, &c), 0);
    ck_assert_int_eq(kvcd_client_segment_destroy(cli, a), 0);
    ck_assert_int_eq(kvcd_client_segment_destroy(cli, c), 0);
    stop();
}
END_TEST

START_TEST(flags_help_and_config)
{
    const char *help[] = {kvcd_test_bin(), "--help", NULL};
    const char *lease[] = {kvcd_test_bin(), "--segment-lease-ms", "5", NULL};
    const char *nseg[] = {kvcd_test_bin(), "--max-segments", "0", NULL};
    const char *gb[] = {kvcd_test_bin(), "--max-segment-gb", "lots", NULL};
    char out[8192], cfg[400], arg[420];
    kvcd_segment_t *a, *b;
    FILE *f;

    ck_assert_int_eq(kvcd_run(help, out, sizeof(out), 5000), 0);
    ck_assert_ptr_nonnull(strstr(out, "--max-segments N"));
    ck_assert_ptr_nonnull(strstr(out, "--max-segment-gb G"));
    ck_assert_ptr_nonnull(strstr(out, "--segment-lease-ms N"));
    ck_assert_int_eq(kvcd_run(lease, out, sizeof(out), 5000), 2);
    ck_assert_ptr_nonnull(strstr(out, "--segment-lease-ms"));
    ck_assert_int_eq(kvcd_run(nseg, out, sizeof(out), 5000), 2);
    ck_assert_ptr_nonnull(strstr(out, "--max-segments"));
    ck_assert_int_eq(kvcd_run(gb, out, sizeof(out), 5000), 2);
    ck_assert_ptr_nonnull(strstr(out, "--max-segment-gb"));

    /* The same settings from --config. */
    snprintf(cfg, sizeof(cfg), "/tmp/kvcd-shm-cfg-%d.json", (int)getpid());
    f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "{\"max_segments\": 1, \"segment_lease_ms\": 60000}\n");
    fclose(f);
    snprintf(arg, sizeof(arg), "%s", cfg);
    {
        const char *args[] = {"--config", arg, NULL};

        start(args);
    }
    unlink(cfg);
    ck_assert_int_eq(kvcd_client_segment_create(cli, MiB, &a), 0);
    ck_assert_int_eq(kvcd_client_segment_create(cli, MiB, &b), KVCD_ESEGMENT);
    ck_assert_int_eq(kvcd_client_segment_destroy(cli, a), 0);
    stop();
}
END_TEST

/* ---- lifetime ---- */

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A kvcd file in /dev/shm other than the daemon's own L1 object. */
/* Did this test's processes leave a kvcd file in /dev/shm? Segments are
 * memfds and never appear there; a daemon's L1 object is "kvcd-<pid>-<n>", so
 * the L1 of this test's daemon, and of any other kvcd running on the machine,
 * is not counted: only names of this process or of `child`, or a kvcd name of
 * another form. */
static int dev_shm_has_kvcd(pid_t child)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *de;
    int found = 0;

    if (!d)
        return 0;
    while ((de = readdir(d)) != NULL) {
        long pid;
        int n = 0;

        if (strncmp(de->d_name, "kvcd", 4) != 0)
            continue;
        if (sscanf(de->d_name, "kvcd-%ld-%*d%n", &pid, &n) != 1 || n == 0 ||
            de->d_name[n] != '\0' || pid == (long)getpid() || pid == (long)child)
            found = 1;
    }
    closedir(d);
    return found;
}

START_TEST(client_death_releases_segments)
{
    /* A child registers a segment over its own connection, heartbeats with
     * PING, and is SIGKILLed; with a 300 ms lease its segment goes within a
     * couple of seconds. Our own segment, kept alive by PINGs, stays. */
    const char *args[] = {"--segment-lease-ms", "300", NULL};
    int to_parent[2], status;
    uint64_t child_id = 0, deadline;
    kvcd_segment_t *mine;
    pid_t child;
    json_int_t n = -1;

    ck_assert_msg(kvcd_proc_start(&proc, args) == 0, "kvcd did not start (log in %s)",
                  proc.log);
    ck_assert_int_eq(pipe(to_parent), 0);
    /* Fork before this process has any ZeroMQ context. */
    child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        kvcd_client_t *c;
        kvcd_segment_t *seg;

        close(to_parent[0]);
        if (kvcd_client_connect(proc.endpoint, 10000, &c) != 0 ||
            kvcd_client_segment_create(c, 8 * MiB, &seg) != 0)
            _exit(2);
        if (write(to_parent[1], &seg->id, sizeof(seg->id)) != sizeof(seg->id))
            _exit(3);
        for (;;) { /* a live client's heartbeat, until the SIGKILL */
            kvcd_client_ping(c, NULL, NULL, 0);
            usleep(50000);
        }
    }
    close(to_parent[1]);
    ck_assert_int_eq(read(to_parent[0], &child_id, sizeof(child_id)), sizeof(child_id));
    close(to_parent[0]);
    ck_assert_int_eq(kvcd_client_connect(proc.endpoint, 10000, &cli), 0);
    ck_assert_int_eq(kvcd_client_segment_create(cli, MiB, &mine), 0);
    ck_assert_int_eq(stat_of(NULL, "segments"), 2);
    kill(child, SIGKILL);
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    deadline = now_ms() + 3000;
    while (now_ms() < deadline) {
        n = stat_of(NULL, "segments"); /* also our heartbeat */
        if (n == 1)
            break;
        usleep(100000);
    }
    ck_assert_int_eq(n, 1);
    ck_assert_int_eq(stat_of("counters", "segments_expired"), 1);
    ck_assert_int_eq(stat_of(NULL, "segment_bytes"), MiB);
    ck_assert_msg(!dev_shm_has_kvcd(child), "a kvcd file appeared in /dev/shm");
    /* Ours survived on PINGs over several leases. */
    deadline = now_ms() + 1000;
    while (now_ms() < deadline) {
        ck_assert_int_eq(kvcd_client_ping(cli, NULL, NULL, 0), 0);
        usleep(100000);
    }
    ck_assert_int_eq(stat_of(NULL, "segments"), 1);
    /* Silent for longer than the lease: ours goes too. */
    usleep(1000000);
    ck_assert_int_eq(kvcd_client_segment_destroy(cli, mine), KVCD_ESEGMENT);
    ck_assert_int_eq(stat_of(NULL, "segments"), 0);
    ck_assert_int_eq(stat_of("counters", "segments_expired"), 2);
    (void)child_id;
    stop();
}
END_TEST

START_TEST(unregister_during_store)
{
    /* A 64 MiB store (16 x 4 MiB, copied on the threadpool) with an UNREGISTER
     * right behind it, and the client's own mapping gone at once: the store
     * either completes byte-exact or fails as a whole, and the daemon carries
     * on. Several rounds, so both orders get a chance. */
    enum { N = 16, ROUNDS = 6 };
    static uint8_t hb[ROUNDS][N][8];
    kvcd_bytes_t h[N];
    uint64_t off[N], len[N];
    kvcd_shm_args_t shm;
    kvcd_key_t base;
    size_t i, r, completed = 0, failed = 0;
    void *check = malloc(4 * MiB);

    start(NULL);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    for (r = 0; r < ROUNDS; r++) {
        kvcd_segment_t *seg;
        uint64_t sid, uid;
        kvcd_reply_t *rs, *ru;
        size_t prefix;

        ck_assert_int_eq(kvcd_client_segment_create(cli, N * 4 * MiB, &seg), 0);
        for (i = 0; i < N; i++) {
            h[i] = kvcd_test_hash(hb[r][i], r * 100 + i);
            off[i] = i * 4 * MiB;
            len[i] = 4 * MiB;
            kvcd_fill_random((char *)seg->base + off[i], len[i], r * 100 + i);
        }
        shm.segment = seg->id;
        shm.offsets = off;
        shm.lengths = len;
        ck_assert_int_eq(kvcd_client_send_shm(cli, KVCD_OP_STORE_SHM, &base, h, N, &shm, &sid),
                         0);
        if (r % 2)
            usleep(2000); /* let the copies start */
        ck_assert_int_eq(kvcd_client_send_shm(cli, KVCD_OP_UNREGISTER_SEGMENT, NULL, NULL, 0,
                                              &shm, &uid), 0);
        munmap(seg->base, seg->size);
        close(seg->fd);
        free(seg);
        ck_assert_int_eq(kvcd_client_wait(cli, sid, 0, &rs), 0);
        ck_assert_int_eq(kvcd_client_wait(cli, uid, 0, &ru), 0);
        ck_assert_int_eq(kvcd_reply_hdr(ru)->err, 0);
        kvcd_reply_free(ru);
        ck_assert_int_eq(kvcd_client_lookup(cli, &base, h, N, &prefix, NULL), 0);
        if (kvcd_reply_hdr(rs)->err == 0) {
            completed++;
            for (i = 0; i < N; i++)
                ck_assert_int_eq(kvcd_reply_hdr(rs)->results[i], 0);
            ck_assert_uint_eq(prefix, N);
            for (i = 0; i < N; i++) {
                void *outs[1] = {check};
                size_t cap = 4 * MiB, got;
                int res;
                void *want = malloc(4 * MiB);

                ck_assert_int_eq(kvcd_client_load(cli, &base, &h[i], 1, outs, &cap, &got,
                                                  &res), 0);
                ck_assert_int_eq(res, 0);
                kvcd_fill_random(want, 4 * MiB, r * 100 + i);
                ck_assert_msg(memcmp(want, check, 4 * MiB) == 0, "round %zu key %zu", r, i);
                free(want);
            }
        } else {
            failed++;
            ck_assert_int_eq(kvcd_reply_hdr(rs)->err, KVCD_ESEGMENT);
            ck_assert_uint_eq(prefix, 0);
        }
        kvcd_reply_free(rs);
    }
    fprintf(stderr, "unregister_during_store: %zu completed, %zu failed cleanly\n", completed,
            failed);
    ck_assert_int_eq(kvcd_client_ping(cli, NULL, NULL, 0), 0);
    ck_assert_int_eq(stat_of(NULL, "segments"), 0);
    ck_assert_int_eq(wait_stat(NULL, "segment_bytes", 0), 0);
    free(check);
    stop();
}
END_TEST

START_TEST(unregister_while_store_waits_for_space)
{
    /* 16 MiB of L1 holding 12 MiB that a slow L2 (1.5 s per call) is still
     * writing behind: a 6 MiB STORE_SHM cannot evict anything and waits for
     * the writes. Its segment is unregistered meanwhile, so when it resumes it
     * must fail as a whole with ESEGMENT and store nothing. */
    const char *args[] = {"--l1-size-gb", "0.015625", "--l2-adapter",
                          "{\"type\":\"mock\",\"latency_ms\":1500}", NULL};
    enum { N = 12 };
    static uint8_t hb[N + 1][8];
    kvcd_bytes_t h[N + 1];
    const void *bufs[N];
    size_t lens[N], i, prefix;
    uint64_t off = 0, len = 6 * MiB, sid, uid;
    kvcd_shm_args_t shm;
    kvcd_segment_t *seg;
    kvcd_reply_t *r;
    kvcd_key_t base;
    void *buf = calloc(1, MiB);
    int res[N];

    start(args);
    kvcd_keyset(&base, "m", 1, 0, 0, "");
    for (i = 0; i <= N; i++)
        h[i] = kvcd_test_hash(hb[i], 300 + i);
    for (i = 0; i < N; i++) {
        bufs[i] = buf;
        lens[i] = MiB;
    }
    /* Register first: registration runs on the threadpool, which the slow
     * write-behind below occupies for 1.5 s. */
    ck_assert_int_eq(kvcd_client_segment_create(cli, 8 * MiB, &seg), 0);
    ck_assert_int_eq(kvcd_client_store(cli, &base, h, N, bufs, lens, res), 0);
    shm.segment = seg->id;
    shm.offsets = &off;
    shm.lengths = &len;
    ck_assert_int_eq(kvcd_client_send_shm(cli, KVCD_OP_STORE_SHM, &base, &h[N], 1, &shm, &sid),
                     0);
    ck_assert_int_eq(kvcd_client_send_shm(cli, KVCD_OP_UNREGISTER_SEGMENT, NULL, NULL, 0, &shm,
                                          &uid), 0);
    ck_assert_int_eq(kvcd_client_wait(cli, uid, 0, &r), 0);
    ck_assert_int_eq(kvcd_reply_hdr(r)->err, 0);
    kvcd_reply_free(r);
    ck_assert_int_eq(kvcd_client_wait(cli, sid, 0, &r), 0);
    ck_assert_int_eq(kvcd_reply_hdr(r)->err, KVCD_ESEGMENT);
    kvcd_reply_free(r);
    ck_assert_int_eq(kvcd_client_lookup(cli, &base, &h[N], 1, &prefix, NULL), 0);
    ck_assert_uint_eq(prefix, 0);
    ck_assert_int_eq(wait_stat(NULL, "segment_bytes", 0), 0);
    munmap(seg->base, seg->size);
    close(seg->fd);
    free(seg);
    free(buf);
    stop();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("shm");
    TCase *tc = tcase_create("shm");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, roundtrip_byte_exact);
    tcase_add_test(tc, load_capacity_too_small);
    tcase_add_test(tc, out_of_bounds_is_ebadfield);
    tcase_add_test(tc, unknown_segment_is_esegment);
    tcase_add_test(tc, wrong_name_unsealed_small_rejected);
    tcase_add_test(tc, other_users_segment_rejected);
    tcase_add_test(tc, limits_on_segments);
    tcase_add_test(tc, flags_help_and_config);
    tcase_add_test(tc, client_death_releases_segments);
    tcase_add_test(tc, unregister_during_store);
    tcase_add_test(tc, unregister_while_store_waits_for_space);
    tcase_add_test(tc, test_item13_register_blocking_file_keeps_loop);
    tcase_add_test(tc, test_item13_concurrent_registrations);
    tcase_add_test(tc, test_item14_tcp_peer_refused);
    tcase_add_test(tc, test_item14_ipc_other_pid_refused);
    tcase_add_test(tc, test_item14_other_user_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    signal(SIGPIPE, SIG_IGN);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
