/*
 * kvcdctl.c - command-line client for kvcd, on the C client library.
 *
 *   kvcdctl [-e ENDPOINT] [-t MS] ping | status | clear
 *   kvcdctl [-e ENDPOINT] put    --model M [KEYOPTS] --hash HEX FILE
 *   kvcdctl [-e ENDPOINT] get    --model M [KEYOPTS] --hash HEX OUTFILE
 *   (put and get take --zero-copy: through the shared L1, same host and user)
 *   kvcdctl [-e ENDPOINT] lookup --model M [KEYOPTS] HEX...
 *   kvcdctl [-e ENDPOINT] remove --model M [KEYOPTS] HEX...
 *
 * Exit status: 0 success, 1 a miss (get) or a failed request, 2 bad usage,
 * 3 the server did not answer.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocol/client.h"

#define MAX_HASHES 4096

static void usage(FILE *f)
{
    fprintf(f,
"Usage: kvcdctl [OPTIONS] COMMAND [ARGS]\n"
"\n"
"Commands:\n"
"  ping                         server version, protocol and limits\n"
"  status                       server status as JSON on stdout\n"
"  put --hash HEX FILE          store FILE as one chunk\n"
"  get --hash HEX OUTFILE       load one chunk into OUTFILE (exit 1 on a miss)\n"
"  lookup HEX...                print how many leading chunks are present\n"
"  remove HEX...                remove chunks; prints how many were removed\n"
"  clear                        remove everything from L1\n"
"\n"
"Options:\n"
"  -e, --endpoint URL           server endpoint (default $KVCD_ENDPOINT or\n"
"                               tcp://127.0.0.1:5555)\n"
"  -t, --timeout-ms MS          reply timeout (default 10000)\n"
"  --model M                    model name (key commands)\n"
"  --world-size W               world size (default 1)\n"
"  --worker-id R                worker id (default 0)\n"
"  --group G                    object group id (default 0)\n"
"  --salt S                     cache salt (default empty)\n"
"  --hash HEX                   chunk hash as hex (put, get)\n"
"  --zero-copy                  put/get through the shared L1 (same host and\n"
"                               user as kvcd, ipc:// endpoint): the bytes are\n"
"                               written and read in place, not sent\n"
"  -h, --help                   this help\n"
"\n"
"Exit status: 0 ok, 1 miss or failed request, 2 usage, 3 no answer.\n");
}

static int hex_decode(const char *s, uint8_t *out, size_t cap, size_t *len)
{
    size_t n = strlen(s), i;

    if (n == 0 || n % 2 || n / 2 > cap)
        return -1;
    for (i = 0; i < n / 2; i++) {
        unsigned v;

        if (sscanf(s + 2 * i, "%2x", &v) != 1 || !strchr("0123456789abcdefABCDEF", s[2 * i]) ||
            !strchr("0123456789abcdefABCDEF", s[2 * i + 1]))
            return -1;
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return 0;
}

static int fail_rc(kvcd_client_t *c, const char *what, int rc)
{
    const char *m = kvcd_client_errmsg(c);

    fprintf(stderr, "kvcdctl: %s: %s%s%s\n", what, kvcd_errname(rc), *m ? ": " : "",
            *m ? m : kvcd_strerror(rc));
    return rc == KVCD_ETIMEDOUT ? 3 : 1;
}

static int read_file(const char *path, void **buf, size_t *len)
{
    struct stat st;
    ssize_t r;
    size_t off = 0;
    int fd = open(path, O_RDONLY);

    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return -errno;
    }
    *len = (size_t)st.st_size;
    *buf = malloc(*len ? *len : 1);
    if (!*buf) {
        close(fd);
        return -ENOMEM;
    }
    while (off < *len) {
        r = read(fd, (char *)*buf + off, *len - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? -errno : -EIO;

            free(*buf);
            close(fd);
            return e;
        }
        off += (size_t)r;
    }
    close(fd);
    return 0;
}

static int write_file(const char *path, const void *buf, size_t len)
{
    size_t off = 0;
    ssize_t w;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

    if (fd < 0)
        return -errno;
    while (off < len) {
        w = write(fd, (const char *)buf + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = -errno;

            close(fd);
            return e;
        }
        off += (size_t)w;
    }
    return close(fd) == 0 ? 0 : -errno;
}

enum { O_MODEL = 256, O_WORLD, O_WORKER, O_GROUP, O_SALT, O_HASH, O_ZC };

/* put through the shared L1: RESERVE, write in place, COMMIT. */
static int put_zc(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *h,
                  const void *buf, size_t len)
{
    uint64_t l = len, off;
    kvcd_l1map_t *m;
    int rc, res;

    if ((rc = kvcd_client_map_l1(c, &m)) != 0)
        return fail_rc(c, "put", rc);
    rc = kvcd_client_reserve(c, base, h, 1, &l, &off, &res);
    if (rc == 0 && res == 0) {
        memcpy((char *)m->base + off, buf, len);
        rc = kvcd_client_commit(c, base, h, 1, &res);
    }
    kvcd_client_unmap_l1(m);
    if (rc != 0)
        return fail_rc(c, "put", rc);
    if (res == KVCD_EDUPLICATE)
        return 0; /* the key names the content: it is there */
    if (res != 0) {
        fprintf(stderr, "kvcdctl: put: %s: %s\n", kvcd_errname(res), kvcd_strerror(res));
        return 1;
    }
    return 0;
}

/* get through the shared L1: MAP, write the file from the mapping, RELEASE. */
static int get_zc(kvcd_client_t *c, const kvcd_key_t *base, const kvcd_bytes_t *h,
                  const char *path)
{
    uint64_t off, len;
    kvcd_l1map_t *m;
    int rc, res, ret = 0;

    if ((rc = kvcd_client_map_l1(c, &m)) != 0)
        return fail_rc(c, "get", rc);
    rc = kvcd_client_map(c, base, h, 1, &off, &len, &res);
    if (rc != 0) {
        ret = fail_rc(c, "get", rc);
    } else if (res != 0) {
        fprintf(stderr, "kvcdctl: get: miss\n");
        ret = 1;
    } else {
        rc = write_file(path, (char *)m->base + off, (size_t)len);
        if (rc != 0) {
            fprintf(stderr, "kvcdctl: get: %s: %s\n", path, kvcd_strerror(rc));
            ret = 1;
        }
        kvcd_client_release(c, base, h, 1, &res);
    }
    kvcd_client_unmap_l1(m);
    return ret;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"model", required_argument, NULL, O_MODEL},
        {"world-size", required_argument, NULL, O_WORLD},
        {"worker-id", required_argument, NULL, O_WORKER},
        {"group", required_argument, NULL, O_GROUP},
        {"salt", required_argument, NULL, O_SALT},
        {"hash", required_argument, NULL, O_HASH},
        {"zero-copy", no_argument, NULL, O_ZC},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *endpoint = getenv("KVCD_ENDPOINT"), *model = NULL, *salt = "";
    const char *hash_hex = NULL, *cmd;
    int zc = 0;
    unsigned long world = 1, worker = 0, group = 0, timeout = 10000;
    static uint8_t hashbuf[MAX_HASHES][KVCD_HASH_MAX];
    static kvcd_bytes_t hashes[MAX_HASHES];
    kvcd_client_t *c = NULL;
    kvcd_key_t base;
    size_t nh = 0, i, len;
    int opt, rc, ret = 0;
    char *end;

    if (!endpoint || !*endpoint)
        endpoint = "tcp://127.0.0.1:5555";
    /* '+' stops at the command; options may also follow it (parsed again). */
    while ((opt = getopt_long(argc, argv, "+e:t:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'e': endpoint = optarg; break;
        case 't':
            timeout = strtoul(optarg, &end, 10);
            if (*end || timeout == 0) {
                fprintf(stderr, "kvcdctl: --timeout-ms: expected a positive integer\n");
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    cmd = argv[optind];
    argc -= optind;
    argv += optind;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "e:t:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'e': endpoint = optarg; break;
        case 't': timeout = strtoul(optarg, &end, 10); break;
        case O_MODEL: model = optarg; break;
        case O_WORLD: world = strtoul(optarg, &end, 10); break;
        case O_WORKER: worker = strtoul(optarg, &end, 10); break;
        case O_GROUP: group = strtoul(optarg, &end, 10); break;
        case O_SALT: salt = optarg; break;
        case O_HASH: hash_hex = optarg; break;
        case O_ZC: zc = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (world < 1 || world > 255 || worker >= world) {
        fprintf(stderr, "kvcdctl: --world-size/--worker-id: need 1 <= world <= 255 and worker < world\n");
        return 2;
    }

    if (!strcmp(cmd, "put") || !strcmp(cmd, "get") || !strcmp(cmd, "lookup") ||
        !strcmp(cmd, "remove")) {
        int single = !strcmp(cmd, "put") || !strcmp(cmd, "get");

        if (!model) {
            fprintf(stderr, "kvcdctl: %s: --model is required\n", cmd);
            return 2;
        }
        if (single) {
            if (!hash_hex || optind + 1 != argc) {
                fprintf(stderr, "kvcdctl: %s: needs --hash HEX and one file\n", cmd);
                return 2;
            }
            if (hex_decode(hash_hex, hashbuf[0], KVCD_HASH_MAX, &len)) {
                fprintf(stderr, "kvcdctl: --hash: expected 1..%d bytes as hex\n", KVCD_HASH_MAX);
                return 2;
            }
            hashes[0].ptr = hashbuf[0];
            hashes[0].len = (uint32_t)len;
            nh = 1;
        } else {
            if (optind >= argc) {
                fprintf(stderr, "kvcdctl: %s: needs one or more hashes\n", cmd);
                return 2;
            }
            for (i = (size_t)optind; i < (size_t)argc; i++) {
                if (nh == MAX_HASHES || hex_decode(argv[i], hashbuf[nh], KVCD_HASH_MAX, &len)) {
                    fprintf(stderr, "kvcdctl: %s: bad hash '%s'\n", cmd, argv[i]);
                    return 2;
                }
                hashes[nh].ptr = hashbuf[nh];
                hashes[nh].len = (uint32_t)len;
                nh++;
            }
        }
        kvcd_keyset(&base, model, (uint32_t)world, (uint32_t)worker, (uint32_t)group, salt);
    } else if (strcmp(cmd, "ping") && strcmp(cmd, "status") && strcmp(cmd, "clear")) {
        fprintf(stderr, "kvcdctl: %s: unknown command\n", cmd);
        usage(stderr);
        return 2;
    }

    rc = kvcd_client_connect(endpoint, (int)timeout, &c);
    if (rc != 0) {
        fprintf(stderr, "kvcdctl: cannot connect to %s: %s\n", endpoint, kvcd_strerror(rc));
        return 3;
    }

    if (!strcmp(cmd, "ping")) {
        kvcd_ping_t p;
        char server[64];

        rc = kvcd_client_ping(c, &p, server, sizeof(server));
        if (rc != 0) {
            ret = fail_rc(c, "ping", rc);
        } else {
            printf("%s protocol %u chunk_size %llu max_keys %llu max_frame %llu "
                   "max_request %llu l1_capacity %llu\n",
                   p.server, p.proto, (unsigned long long)p.chunk_size,
                   (unsigned long long)p.max_keys, (unsigned long long)p.max_frame,
                   (unsigned long long)p.max_request, (unsigned long long)p.l1_capacity);
        }
    } else if (!strcmp(cmd, "status")) {
        char *json;

        rc = kvcd_client_status(c, &json);
        if (rc != 0) {
            ret = fail_rc(c, "status", rc);
        } else {
            printf("%s\n", json);
            free(json);
        }
    } else if (!strcmp(cmd, "clear")) {
        uint64_t removed;

        rc = kvcd_client_clear(c, &removed);
        if (rc != 0)
            ret = fail_rc(c, "clear", rc);
        else
            printf("%llu\n", (unsigned long long)removed);
    } else if (!strcmp(cmd, "put")) {
        void *buf = NULL;
        int res;

        rc = read_file(argv[optind], &buf, &len);
        if (rc != 0) {
            fprintf(stderr, "kvcdctl: put: %s: %s\n", argv[optind], kvcd_strerror(rc));
            ret = 1;
        } else if (len == 0) {
            fprintf(stderr, "kvcdctl: put: %s: empty file\n", argv[optind]);
            free(buf);
            ret = 1;
        } else if (zc) {
            ret = put_zc(c, &base, hashes, buf, len);
            free(buf);
        } else {
            const void *bufs[1] = {buf};

            rc = kvcd_client_store(c, &base, hashes, 1, bufs, &len, &res);
            if (rc != 0)
                ret = fail_rc(c, "put", rc);
            else if (res != 0) {
                fprintf(stderr, "kvcdctl: put: %s: %s\n", kvcd_errname(res), kvcd_strerror(res));
                ret = 1;
            }
            free(buf);
        }
    } else if (!strcmp(cmd, "get") && zc) {
        ret = get_zc(c, &base, hashes, argv[optind]);
    } else if (!strcmp(cmd, "get")) {
        kvcd_reply_t *r = NULL;
        uint64_t id;
        const void *p;

        rc = kvcd_client_send(c, KVCD_OP_LOAD, &base, hashes, 1, NULL, NULL, &id);
        if (rc == 0)
            rc = kvcd_client_wait(c, id, 0, &r);
        if (rc == 0 && kvcd_reply_hdr(r)->err)
            rc = kvcd_reply_hdr(r)->err;
        if (rc != 0) {
            ret = fail_rc(c, "get", rc);
        } else if (kvcd_reply_hdr(r)->nresults != 1 || kvcd_reply_hdr(r)->results[0] != 0) {
            fprintf(stderr, "kvcdctl: get: miss\n");
            ret = 1;
        } else {
            p = kvcd_reply_frame(r, 0, &len);
            rc = write_file(argv[optind], p, len);
            if (rc != 0) {
                fprintf(stderr, "kvcdctl: get: %s: %s\n", argv[optind], kvcd_strerror(rc));
                ret = 1;
            }
        }
        kvcd_reply_free(r);
    } else if (!strcmp(cmd, "lookup")) {
        size_t prefix;

        rc = kvcd_client_lookup(c, &base, hashes, nh, &prefix, NULL);
        if (rc != 0)
            ret = fail_rc(c, "lookup", rc);
        else
            printf("%zu\n", prefix);
    } else if (!strcmp(cmd, "remove")) {
        int *res = calloc(nh, sizeof(int));
        size_t removed = 0;

        rc = res ? kvcd_client_remove(c, &base, hashes, nh, res) : -ENOMEM;
        if (rc != 0) {
            ret = fail_rc(c, "remove", rc);
        } else {
            for (i = 0; i < nh; i++)
                removed += res[i] == 0;
            printf("%zu\n", removed);
        }
        free(res);
    }
    kvcd_client_close(c);
    return ret;
}
