/*
 * config.c - the fs adapter's JSON spec, and the directories it works in.
 *
 * kvcd_fs_parse_spec validates every field (unknown fields are errors) and
 * writes "field: what is wrong" on failure. kvcd_fs_open_dirs creates base_path
 * (like mkdir -p, dir_mode) and relative_tmp_dir (one component at a time,
 * never through a symlink, same filesystem), then proves both writable by
 * publishing a probe file the way a store does, which also finds out whether
 * O_DIRECT works there.
 *
 * A directory that can be read but not written because its disk is full (or
 * over quota, or mounted read-only) is not a start-up error: the instance
 * starts read-only (ro_errno) and serves lookups and loads; kvcd_fs_recover
 * (background task, stores) evicts its own files to make room and probes again.
 * No permission (EACCES, EPERM) or a base_path that is not a directory is a
 * start-up error naming base_path.
 *
 * Loop thread (init); kvcd_fs_recover on any worker.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "adapters/fs/fs_int.h"
#include "daemon/log.h"

#define GIB 1073741824.0

const kvcd_adapter_field_t kvcd_fs_fields[] = {
    {"base_path", "string", NULL,
     "directory of the cache files; created (dir_mode) if missing, must be writable"},
    {"relative_tmp_dir", "string", "\".tmp\"",
     "temp directory for writes in progress, relative to base_path, same filesystem"},
    {"read_ahead_size", "integer", "65536",
     "bytes of the first read of a load, which starts the kernel's read-ahead"},
    {"use_odirect", "boolean", "false",
     "O_DIRECT for 4 KiB-aligned buffers; falls back to buffered I/O (counted)"},
    {"max_capacity_gb", "number", "0", "bound on the bytes of cache files (GiB); 0 = none"},
    {"min_free_gb", "number", "unset", "free space (GiB) the filesystem always keeps"},
    {"min_free_percent", "number", "5 if min_free_gb is unset",
     "free space (% of the filesystem) always kept; the larger floor applies"},
    {"checksum", "string", "\"xxh3\"",
     "\"xxh3\": 64-byte trailer verified on every load; \"none\": plain files"},
    {"fsync", "boolean", "false", "fdatasync each file and fsync its directory"},
    {"file_mode", "integer|string", "\"0600\"", "mode of cache files (octal string)"},
    {"dir_mode", "integer|string", "\"0700\"", "mode of directories created"},
    {"dir_levels", "integer", "0",
     "0 = flat (LMCache layout), 1 or 2 = levels of 256 hash-prefix subdirectories"},
    {"skip_existing", "boolean", "true",
     "a store of a key whose file exists with the same length writes nothing"},
    {"lookup_pin_ms", "integer", "unset",
     "no effect (accepted for old specs): lookups do not pin, L1 holds what LOOKUP loads"},
    {"orphan_tmp_age_s", "integer", "3600",
     "temp files whose writer is not provably dead are swept once older than this"},
    {"health_window_ms", "integer", "5000",
     "unhealthy while the last operation failed less than this long ago"},
    {"recency_file", "string", "\".kvcd-recency\"",
     "file in base_path that keeps the LRU order across a restart; \"\" = off"},
    {NULL, NULL, NULL, NULL},
};

static int cfg_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int cfg_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return KVCD_ECONFIG;
}

/* A mode: an integer (the numeric value, so 384 = 0600) or an octal string. */
static int parse_mode(const json_t *v, mode_t need, mode_t *out)
{
    long m = -1;

    if (json_is_integer(v)) {
        m = (long)json_integer_value(v);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;

        if (*s && strspn(s, "01234567") == strlen(s) && strlen(s) <= 4)
            m = strtol(s, &end, 8);
    }
    if (m < 0 || m > 0777 || ((mode_t)m & need) != need)
        return -1;
    *out = (mode_t)m;
    return 0;
}

static int parse_u64(const json_t *v, long long min, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < min)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int parse_num(const json_t *v, double max, double *out)
{
    double d;

    if (!json_is_number(v))
        return -1;
    d = json_number_value(v);
    if (!isfinite(d) || d < 0 || d > max)
        return -1;
    *out = d;
    return 0;
}

int kvcd_fs_parse_spec(fs_t *fs, const json_t *spec, char *err, size_t errlen)
{
    bool have_gb = false, have_pct = false, rec_set = false;
    const char *k;
    json_t *v;

    if (!json_is_object(spec))
        return cfg_err(err, errlen, "spec: must be a JSON object");
    json_object_foreach((json_t *)spec, k, v)
    {
        if (!strcmp(k, "type")) {
            if (!json_is_string(v) || strcmp(json_string_value(v), "fs"))
                return cfg_err(err, errlen, "type: must be \"fs\"");
        } else if (!strcmp(k, "base_path")) {
            if (!json_is_string(v) || !json_string_length(v) ||
                strlen(json_string_value(v)) != json_string_length(v))
                return cfg_err(err, errlen, "base_path: must be a non-empty string");
            free(fs->base_path);
            fs->base_path = strdup(json_string_value(v));
        } else if (!strcmp(k, "relative_tmp_dir")) {
            if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
                return cfg_err(err, errlen, "relative_tmp_dir: must be a string");
            free(fs->tmp_dir);
            fs->tmp_dir = strdup(json_string_value(v));
        } else if (!strcmp(k, "read_ahead_size")) {
            if (parse_u64(v, 1, &fs->read_ahead))
                return cfg_err(err, errlen, "read_ahead_size: must be a positive integer");
        } else if (!strcmp(k, "use_odirect")) {
            if (!json_is_boolean(v))
                return cfg_err(err, errlen, "use_odirect: must be a boolean");
            fs->odirect = json_is_true(v);
        } else if (!strcmp(k, "max_capacity_gb")) {
            if (parse_num(v, 1e9, &fs->max_capacity_gb))
                return cfg_err(err, errlen, "max_capacity_gb: must be a number >= 0");
        } else if (!strcmp(k, "min_free_gb")) {
            if (parse_num(v, 1e9, &fs->min_free_gb))
                return cfg_err(err, errlen, "min_free_gb: must be a number >= 0");
            have_gb = true;
        } else if (!strcmp(k, "min_free_percent")) {
            if (parse_num(v, 99, &fs->min_free_percent))
                return cfg_err(err, errlen, "min_free_percent: must be a number in [0, 99]");
            have_pct = true;
        } else if (!strcmp(k, "checksum")) {
            if (!json_is_string(v) ||
                (strcmp(json_string_value(v), "xxh3") && strcmp(json_string_value(v), "none")))
                return cfg_err(err, errlen, "checksum: must be \"xxh3\" or \"none\"");
            fs->checksum = !strcmp(json_string_value(v), "xxh3");
        } else if (!strcmp(k, "fsync")) {
            if (!json_is_boolean(v))
                return cfg_err(err, errlen, "fsync: must be a boolean");
            fs->fsync_on = json_is_true(v);
        } else if (!strcmp(k, "file_mode")) {
            if (parse_mode(v, 0600, &fs->file_mode))
                return cfg_err(err, errlen,
                               "file_mode: must be an octal string such as "
                               "\"0600\" (at most 0777, owner rw)");
        } else if (!strcmp(k, "dir_mode")) {
            if (parse_mode(v, 0700, &fs->dir_mode))
                return cfg_err(err, errlen,
                               "dir_mode: must be an octal string such as "
                               "\"0700\" (at most 0777, owner rwx)");
        } else if (!strcmp(k, "dir_levels")) {
            uint64_t l;

            if (parse_u64(v, 0, &l) || l > 2)
                return cfg_err(err, errlen, "dir_levels: must be 0, 1 or 2");
            fs->dir_levels = (int)l;
        } else if (!strcmp(k, "skip_existing")) {
            if (!json_is_boolean(v))
                return cfg_err(err, errlen, "skip_existing: must be a boolean");
            fs->skip_existing = json_is_true(v);
        } else if (!strcmp(k, "lookup_pin_ms")) {
            uint64_t unused;

            if (parse_u64(v, 0, &unused))
                return cfg_err(err, errlen, "lookup_pin_ms: must be an integer >= 0");
            KVCD_LOG(KVCD_LOG_WARNING, "fs",
                     "%s: lookup_pin_ms has no effect any more (lookups do not pin files)",
                     fs->base_path ? fs->base_path : "fs");
        } else if (!strcmp(k, "orphan_tmp_age_s")) {
            if (parse_u64(v, 1, &fs->orphan_age_ms))
                return cfg_err(err, errlen, "orphan_tmp_age_s: must be an integer >= 1");
            fs->orphan_age_ms *= 1000;
        } else if (!strcmp(k, "health_window_ms")) {
            if (parse_u64(v, 0, &fs->health_window_ms))
                return cfg_err(err, errlen, "health_window_ms: must be an integer >= 0");
        } else if (!strcmp(k, "recency_file")) {
            const char *r = json_is_string(v) ? json_string_value(v) : NULL;

            if (!r || strlen(r) != json_string_length(v) || strlen(r) > NAME_LIMIT ||
                strchr(r, '/') || !strcmp(r, ".") || !strcmp(r, "..") || kvcd_fs_is_data(r) ||
                (*r && kvcd_fs_is_hex2(r)))
                return cfg_err(err, errlen,
                               "recency_file: must be \"\" or a file name in base_path (no "
                               "\"/\", not ending in .data)");
            snprintf(fs->rec_name, sizeof(fs->rec_name), "%s", r);
            rec_set = true;
        } else {
            const kvcd_adapter_field_t *f;
            char known[512];
            size_t n = 4;

            memcpy(known, "type", 5);
            for (f = kvcd_fs_fields; f->name && n < sizeof(known); f++)
                n += (size_t)snprintf(known + n, sizeof(known) - n, "%s%s", n ? ", " : "", f->name);
            return cfg_err(err, errlen, "%s: unknown field (fs knows %s)", k, known);
        }
    }
    if (!fs->base_path || !fs->tmp_dir)
        return fs->base_path ? cfg_err(err, errlen, "spec: out of memory")
                             : cfg_err(err, errlen, "base_path: required");
    if (!rec_set)
        snprintf(fs->rec_name, sizeof(fs->rec_name), ".kvcd-recency");
    {
        const char *t = fs->tmp_dir;
        size_t n = strlen(fs->rec_name);

        while (*t == '/' || (t[0] == '.' && t[1] == '/'))
            t += *t == '/' ? 1 : 2;
        if (n && !strncmp(t, fs->rec_name, n) && (t[n] == '\0' || t[n] == '/'))
            return cfg_err(err, errlen, "recency_file: \"%s\" is relative_tmp_dir",
                           fs->rec_name);
    }
    fs->capacity = (uint64_t)(fs->max_capacity_gb * GIB);
    if (fs->max_capacity_gb > 0 && fs->capacity == 0)
        fs->capacity = 1;
    fs->floor_abs = (uint64_t)(fs->min_free_gb * GIB);
    fs->floor_pct = have_pct ? fs->min_free_percent : have_gb ? 0 : DEFAULT_FLOOR_PERCENT;
    if (!have_pct && !have_gb)
        fs->min_free_percent = DEFAULT_FLOOR_PERCENT;
    return 0;
}

/* Read the process umask without changing it (umask(2) would race threads). */
static mode_t read_umask(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[128];
    unsigned m = 0777;

    if (!f)
        return 0777;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "Umask: %o", &m) == 1)
            break;
    fclose(f);
    return (mode_t)m;
}

/* mkdir -p, new directories get dir_mode. 0 or -errno. */
static int mkdir_p(fs_t *fs, const char *path)
{
    char *p = strdup(path), *s;
    int r = 0;

    if (!p)
        return -ENOMEM;
    for (s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;

            *s = '\0';
            if (kvcd_fs_sys->mkdirat(AT_FDCWD, p, fs->dir_mode) == 0) {
                if (fs->chmod_dirs) {
                    int fd = kvcd_fs_sys->openat(AT_FDCWD, p, OPEN_DIR, 0);

                    if (fd >= 0) {
                        kvcd_fs_sys->fchmod(fd, fs->dir_mode);
                        kvcd_fs_sys->close(fd);
                    }
                }
            } else if (errno != EEXIST) {
                r = -errno;
                break;
            }
            *s = c;
            if (!c)
                break;
        }
    }
    free(p);
    return r;
}

/* Open (creating) relative_tmp_dir one component at a time without following
 * symlinks, and check it lives on base_path's filesystem. On failure *eno is
 * the errno of why a component is missing or cannot be opened (0 if none). */
static int open_tmp(fs_t *fs, char *err, size_t errlen, int *eno)
{
    char *p = strdup(fs->tmp_dir), *save = NULL, *c;
    struct stat bs, ts;
    int fd, dfd = fs->base_fd, first = 1, r = 0;

    *eno = 0;
    if (!p)
        return cfg_err(err, errlen, "relative_tmp_dir: out of memory");
    if (!*p || *p == '/') {
        r = cfg_err(err, errlen, "relative_tmp_dir: must be a non-empty relative path");
        goto out;
    }
    for (c = strtok_r(p, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (!strcmp(c, ".") || !strcmp(c, "..") || kvcd_fs_is_data(c) ||
            (first && kvcd_fs_is_hex2(c))) {
            r = cfg_err(err, errlen,
                        "relative_tmp_dir: component '%s' not allowed "
                        "(no '.', '..', '*.data' or two-hex-digit names)",
                        c);
            goto out;
        }
        if (first && !fs->tmp_top[0]) /* read by the scan once set: set it once */
            snprintf(fs->tmp_top, sizeof(fs->tmp_top), "%s", c);
        first = 0;
        if (kvcd_fs_sys->mkdirat(dfd, c, fs->dir_mode) == 0) {
            int x = fs->chmod_dirs ? kvcd_fs_sys->openat(dfd, c, OPEN_DIR | O_NOFOLLOW, 0) : -1;

            if (x >= 0) {
                kvcd_fs_sys->fchmod(x, fs->dir_mode);
                kvcd_fs_sys->close(x);
            }
        } else if (errno != EEXIST) {
            *eno = errno;
        }
        fd = kvcd_fs_sys->openat(dfd, c, OPEN_DIR | O_NOFOLLOW, 0);
        if (fd < 0) {
            int e = errno == ENOENT && *eno ? *eno : errno;

            *eno = e;
            r = cfg_err(err, errlen, "relative_tmp_dir: cannot open '%s' in base_path: %s%s",
                        fs->tmp_dir, strerror(e),
                        e == ELOOP || e == ENOTDIR ? " (must be a directory, not a symlink)" : "");
            goto out;
        }
        if (dfd != fs->base_fd)
            kvcd_fs_sys->close(dfd);
        dfd = fd;
    }
    if (dfd == fs->base_fd) {
        r = cfg_err(err, errlen, "relative_tmp_dir: must name a directory below base_path");
        goto out;
    }
    if (kvcd_fs_sys->fstat(fs->base_fd, &bs) || kvcd_fs_sys->fstat(dfd, &ts)) {
        r = cfg_err(err, errlen, "relative_tmp_dir: stat: %s", strerror(errno));
    } else if (bs.st_dev != ts.st_dev) {
        r = cfg_err(err, errlen, "relative_tmp_dir: not on base_path's filesystem");
    } else {
        fs->tmp_fd = dfd; /* published whole: stores may be reading it */
        dfd = fs->base_fd;
    }
out:
    if (dfd != fs->base_fd)
        kvcd_fs_sys->close(dfd);
    free(p);
    return r;
}

/* A cause of "cannot write" that lets the instance start read-only. */
static bool ro_cause(int e)
{
    return e == ENOSPC || e == EDQUOT || e == EROFS;
}

/* Write a probe through the temp dir into base_path: proves both writable, the
 * rename atomic (same mount), and finds out whether O_DIRECT works here.
 * 0 or -errno, *stage says which step failed. */
static int probe(fs_t *fs, const char **stage)
{
    char tmp[192], fin[256];
    void *blk = aligned_alloc(DIO_ALIGN, DIO_ALIGN);
    struct iovec v = {blk, DIO_ALIGN};
    int fd, r = 0;

    *stage = "create a temp file";
    if (!blk)
        return -ENOMEM;
    memset(blk, 0, DIO_ALIGN);
    if ((fd = kvcd_fs_tmp_create(fs, tmp, sizeof(tmp))) < 0) {
        free(blk);
        return fd;
    }
    if (fs->odirect) {
        int e = kvcd_fs_direct_on(fs, fd);

        if (!e && (e = -kvcd_fs_io_full(fd, &v, 1, 0, true)) == EINVAL)
            atomic_store(&fs->odirect_ok, false);
        if (ro_cause(e)) { /* a full disk says nothing about O_DIRECT */
            *stage = "write";
            kvcd_fs_sys->close(fd);
            kvcd_fs_sys->unlinkat(fs->tmp_fd, tmp, 0);
            free(blk);
            return -e;
        }
        if (e) {
            kvcd_fs_odf_note(fs, ODF_UNSUPPORTED, e);
            atomic_store(&fs->odirect_ok, false);
            kvcd_fs_sys->fcntl(fd, F_SETFL, 0);
        }
    }
    *stage = "write";
    r = kvcd_fs_io_full(fd, &v, 1, 0, true);
    if (kvcd_fs_sys->close(fd) && !r)
        r = -errno;
    free(blk);
    snprintf(fin, sizeof(fin), ".probe.%s", fs->ident);
    if (!r && kvcd_fs_sys->renameat(fs->tmp_fd, tmp, fs->base_fd, fin)) {
        *stage = "rename into base_path";
        r = -errno;
    }
    kvcd_fs_sys->unlinkat(fs->tmp_fd, tmp, 0);
    kvcd_fs_sys->unlinkat(fs->base_fd, fin, 0);
    return r;
}

#define RECOVER_EVICTIONS 8 /* files evicted at most per recovery to make room */

int kvcd_fs_recover(fs_t *fs)
{
    const char *stage;
    char err[256];
    int r = 0, e, i;

    if (pthread_mutex_trylock(&fs->rmu))
        return -EBUSY;
    for (i = 0; i <= RECOVER_EVICTIONS; i++) {
        if (fs->tmp_fd < 0 && open_tmp(fs, err, sizeof(err), &e))
            r = -(e ? e : EIO);
        else
            r = probe(fs, &stage);
        if (r == 0) {
            kvcd_fs_store_worked(fs);
            break;
        }
        atomic_store(&fs->ro_errno, -r);
        if ((r != -ENOSPC && r != -EDQUOT) || kvcd_fs_evict(fs, 1) == 0)
            break;
    }
    pthread_mutex_unlock(&fs->rmu);
    return r;
}

int kvcd_fs_open_dirs(fs_t *fs, char *err, size_t errlen)
{
    mode_t um = read_umask();
    const char *stage;
    int r, e;

    fs->chmod_files = (fs->file_mode & um) != 0;
    fs->chmod_dirs = (fs->dir_mode & um) != 0;
    if ((r = mkdir_p(fs, fs->base_path)))
        return cfg_err(err, errlen, "base_path: cannot create '%s': %s", fs->base_path,
                       strerror(-r));
    fs->base_fd = kvcd_fs_sys->openat(AT_FDCWD, fs->base_path, OPEN_DIR, 0);
    if (fs->base_fd < 0)
        return cfg_err(err, errlen, "base_path: cannot open '%s': %s", fs->base_path,
                       strerror(errno));
    if ((r = open_tmp(fs, err, errlen, &e))) {
        if (!ro_cause(e))
            return r;
        atomic_store(&fs->ro_errno, e); /* err says why, for the warning */
        return 0;
    }
    if ((r = probe(fs, &stage)) == 0)
        return 0;
    if (ro_cause(-r)) {
        atomic_store(&fs->ro_errno, -r);
        snprintf(err, errlen, "base_path '%s': cannot %s: %s", fs->base_path, stage,
                 strerror(-r));
        return 0;
    }
    if (r == -EXDEV)
        return cfg_err(err, errlen, "relative_tmp_dir: cannot rename into base_path: %s",
                       strerror(-r));
    return cfg_err(err, errlen, "base_path: '%s' is not writable (cannot %s): %s",
                   fs->base_path, stage, strerror(-r));
}
