/*
 * config.c - the fs adapter's JSON spec, and the directories it works in.
 *
 * kvcd_fs_fields is the spec: the core parser validates every field against
 * it (unknown fields are errors) before init; kvcd_fs_parse_spec does what is
 * left across fields and writes "field: what is wrong" on failure. kvcd_fs_open_dirs creates base_path
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "adapters/fs/fs_int.h"

#define GIB 1073741824.0

static const char *const checksum_kinds[] = {"xxh3", "none", NULL};
static const char *const format_kinds[] = {"kvcd", "lmcache", NULL};

_Static_assert(sizeof(mode_t) == sizeof(uint32_t), "KVCD_FIELD_MODE writes a uint32_t");

#define F(nm, ty, member) KVCD_FIELD(nm, ty, fs_t, member)

const kvcd_adapter_field_t kvcd_fs_fields[] = {
    {F("base_path", KVCD_FIELD_STRING, base_path), .flags = KVCD_FIELD_REQUIRED | KVCD_FIELD_NONEMPTY,
     .doc = "directory of the cache files; created (dir_mode) if missing, must be writable"},
    {F("relative_tmp_dir", KVCD_FIELD_STRING, tmp_dir), .dflt = "\".tmp\"",
     .doc = "temp directory for writes in progress, relative to base_path, same filesystem"},
    {F("read_ahead_size", KVCD_FIELD_INT, read_ahead), .min = 1, .dflt = "65536",
     .doc = "bytes of the first read of a load, which starts the kernel's read-ahead"},
    {F("use_odirect", KVCD_FIELD_BOOL, odirect), .dflt = "false",
     .doc = "O_DIRECT for 4 KiB-aligned buffers; falls back to buffered I/O (counted)"},
    {F("max_capacity_gb", KVCD_FIELD_NUMBER, max_capacity_gb), .min = 0, .max = 1e9, .dflt = "0",
     .doc = "bound on the bytes of cache files (GiB); 0 = none"},
    {F("min_free_gb", KVCD_FIELD_NUMBER, min_free_gb), .min = 0, .max = 1e9, .dflt_doc = "unset",
     .doc = "free space (GiB) the filesystem always keeps"},
    {F("min_free_percent", KVCD_FIELD_NUMBER, min_free_percent), .min = 0, .max = 99,
     .dflt_doc = "5 if min_free_gb is unset",
     .doc = "free space (% of the filesystem) always kept; the larger floor applies"},
    {F("checksum", KVCD_FIELD_ENUM, checksum_kind), .choices = checksum_kinds, .dflt = "\"xxh3\"",
     .doc = "\"xxh3\": 64-byte trailer verified on every load; \"none\": plain files"},
    {F("format", KVCD_FIELD_ENUM, format_kind), .choices = format_kinds, .dflt = "\"kvcd\"",
     .doc = "what stores write: \"kvcd\" (payload + trailer, kvcd's escaped names) or "
            "\"lmcache\" (raw payload under LMCache 0.5.6's own names, flat: what LMCache's "
            "fs adapter reads)"},
    {F("read_raw", KVCD_FIELD_BOOL, read_raw), .dflt = "true",
     .doc = "serve files without a kvcd trailer (LMCache's raw files, its current and older "
            "3-field names) whole; false: such files are misses. Never deleted either way"},
    {F("fsync", KVCD_FIELD_BOOL, fsync_on), .dflt = "false",
     .doc = "fdatasync each file and fsync its directory"},
    {F("file_mode", KVCD_FIELD_MODE, file_mode), .min = 0600, .dflt = "\"0600\"",
     .doc = "mode of cache files (octal string; owner rw needed)"},
    {F("dir_mode", KVCD_FIELD_MODE, dir_mode), .min = 0700, .dflt = "\"0700\"",
     .doc = "mode of directories created (octal string; owner rwx needed)"},
    {F("dir_levels", KVCD_FIELD_INT32, dir_levels), .min = 0, .max = 2, .dflt = "0",
     .doc = "0 = flat (LMCache layout), 1 or 2 = levels of 256 hash-prefix subdirectories"},
    {F("skip_existing", KVCD_FIELD_BOOL, skip_existing), .dflt = "true",
     .doc = "a store of a key whose file exists with the same length writes nothing"},
    {.name = "lookup_pin_ms", .type = KVCD_FIELD_INT, .flags = KVCD_FIELD_DEPRECATED, .min = 0,
     .doc = "no effect (accepted for old specs): lookups do not pin, L1 holds what LOOKUP loads"},
    {F("orphan_tmp_age_s", KVCD_FIELD_INT, orphan_age_ms), .min = 1, .dflt = "3600",
     .doc = "temp files whose writer is not provably dead are swept once older than this"},
    {F("health_window_ms", KVCD_FIELD_INT, health_window_ms), .min = 0, .dflt = "5000",
     .doc = "unhealthy while the last operation failed less than this long ago"},
    {F("recency_file", KVCD_FIELD_STRING, rec_field), .max = NAME_LIMIT,
     .dflt = "\".kvcd-recency\"",
     .doc = "file in base_path that keeps the LRU order across a restart; \"\" = off"},
    {.name = NULL},
};

#undef F

/* recency_file: "" or one file name in base_path that the scan never takes
 * for an object or a directory, and not the temp directory. Copied. */
static int check_recency(fs_t *fs, char *err, size_t errlen)
{
    const char *r = fs->rec_field ? fs->rec_field : "", *t = fs->tmp_dir;
    size_t n = strlen(r);

    fs->rec_field = NULL; /* borrowed from the spec */
    if (strchr(r, '/') || !strcmp(r, ".") || !strcmp(r, "..") || kvcd_fs_is_data(r) ||
        (n && kvcd_fs_is_hex2(r)))
        return kvcd_errf(err, errlen, KVCD_ECONFIG,
                         "recency_file: must be \"\" or a file name in base_path (no \"/\", "
                         "not ending in .data)");
    while (*t == '/' || (t[0] == '.' && t[1] == '/'))
        t += *t == '/' ? 1 : 2;
    if (n && !strncmp(t, r, n) && (t[n] == '\0' || t[n] == '/'))
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "recency_file: \"%s\" is relative_tmp_dir",
                         r);
    snprintf(fs->rec_name, sizeof(fs->rec_name), "%s", r);
    return 0;
}

/* The core parser has filled the fields (adapters/registry.c); what is left
 * is what no single field can say. Strings are borrowed from the spec: copy. */
int kvcd_fs_parse_spec(fs_t *fs, const json_t *spec, char *err, size_t errlen)
{
    bool have_gb = json_object_get(spec, "min_free_gb") != NULL;
    bool have_pct = json_object_get(spec, "min_free_percent") != NULL;
    int r;

    fs->base_path = fs->base_path ? strdup(fs->base_path) : NULL;
    fs->tmp_dir = fs->tmp_dir ? strdup(fs->tmp_dir) : NULL;
    if (!fs->base_path || !fs->tmp_dir)
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "base_path: out of memory");
    if ((r = check_recency(fs, err, errlen)))
        return r;
    fs->verify = fs->checksum_kind == 0;
    fs->lmc_names = fs->format_kind == 1;
    fs->checksum = fs->verify && !fs->lmc_names;
    if (fs->lmc_names) {
        json_t *c = json_object_get(spec, "checksum");

        if (c && json_is_string(c) && !strcmp(json_string_value(c), "xxh3"))
            return kvcd_errf(err, errlen, KVCD_ECONFIG,
                             "checksum: format \"lmcache\" writes raw files, which carry no "
                             "trailer (use \"none\" or leave it out)");
        if (fs->dir_levels != 0)
            return kvcd_errf(err, errlen, KVCD_ECONFIG,
                             "dir_levels: format \"lmcache\" is flat, as LMCache's directory is");
    }
    fs->orphan_age_ms *= 1000; /* the spec says seconds */
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
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "relative_tmp_dir: out of memory");
    if (!*p || *p == '/') {
        r = kvcd_errf(err, errlen, KVCD_ECONFIG, "relative_tmp_dir: must be a non-empty relative path");
        goto out;
    }
    for (c = strtok_r(p, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (!strcmp(c, ".") || !strcmp(c, "..") || kvcd_fs_is_data(c) ||
            (first && kvcd_fs_is_hex2(c))) {
            r = kvcd_errf(err, errlen, KVCD_ECONFIG,
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
            r = kvcd_errf(err, errlen, KVCD_ECONFIG, "relative_tmp_dir: cannot open '%s' in base_path: %s%s",
                        fs->tmp_dir, strerror(e),
                        e == ELOOP || e == ENOTDIR ? " (must be a directory, not a symlink)" : "");
            goto out;
        }
        if (dfd != fs->base_fd)
            kvcd_fs_sys->close(dfd);
        dfd = fd;
    }
    if (dfd == fs->base_fd) {
        r = kvcd_errf(err, errlen, KVCD_ECONFIG, "relative_tmp_dir: must name a directory below base_path");
        goto out;
    }
    if (kvcd_fs_sys->fstat(fs->base_fd, &bs) || kvcd_fs_sys->fstat(dfd, &ts)) {
        r = kvcd_errf(err, errlen, KVCD_ECONFIG, "relative_tmp_dir: stat: %s", strerror(errno));
    } else if (bs.st_dev != ts.st_dev) {
        r = kvcd_errf(err, errlen, KVCD_ECONFIG, "relative_tmp_dir: not on base_path's filesystem");
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
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "base_path: cannot create '%s': %s", fs->base_path,
                       strerror(-r));
    fs->base_fd = kvcd_fs_sys->openat(AT_FDCWD, fs->base_path, OPEN_DIR, 0);
    if (fs->base_fd < 0)
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "base_path: cannot open '%s': %s", fs->base_path,
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
        return kvcd_errf(err, errlen, KVCD_ECONFIG, "relative_tmp_dir: cannot rename into base_path: %s",
                       strerror(-r));
    return kvcd_errf(err, errlen, KVCD_ECONFIG, "base_path: '%s' is not writable (cannot %s): %s",
                   fs->base_path, stage, strerror(-r));
}
