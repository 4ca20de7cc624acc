/*
 * fs_int.h - private to the fs adapter (adapters/fs.c and the files beside this one).
 *
 * The instance structure and the helpers the adapter's files share. Nothing
 * here is part of any interface: the adapter's only public symbol is
 * kvcd_adapter_fs (plus the test hooks of adapters/fs.h). Helpers are hidden
 * from a shared object's dynamic symbol table.
 *
 * Threading: fields under "options" are immutable after init; the index and
 * last_err are guarded by `mu`; everything _Atomic may be read and bumped by
 * any thread.
 */
#ifndef KVCD_ADAPTER_FS_INT_H
#define KVCD_ADAPTER_FS_INT_H

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include <jansson.h>

#include "adapters/adapter.h"
#include "adapters/fs.h"
#include "adapters/object/format.h"

#define KVCD_FS_HIDDEN __attribute__((visibility("hidden")))

#define TRL_SIZE KVCD_OBJ_TRL_SIZE /* trailer bytes after the payload */
#define DIO_ALIGN 4096                   /* O_DIRECT offset/length/buffer alignment */
#define NAME_LIMIT KVCD_OBJ_NAME_LIMIT    /* NAME_MAX of Linux filesystems */
#define REL_MAX (2 * 3 + NAME_LIMIT + 1) /* "ab/cd/" + name + NUL */
#define ERRNO_SLOTS 160
#define DEFAULT_FLOOR_PERCENT 5.0

/* One file known to the index. Recency order: lru.next is the most recent. */
typedef struct ent_s ent_t;
struct ent_s {
    ent_t *hnext;
    ent_t *prev, *next;
    uint64_t hash;
    uint64_t bytes; /* file length, trailer included */
    uint64_t stamp; /* file time (ms), while the start-up scan sorts its finds */
    char path[];    /* relative to base_path */
};

/* Every descriptor of an object file, temp file or directory is opened with
 * O_NONBLOCK: a FIFO or device swapped in under a name can never block a
 * worker in open or read; fstat then tells a regular file from anything else. */
#define OPEN_DIR (O_RDONLY | O_DIRECTORY | O_NONBLOCK | O_CLOEXEC)
#define OPEN_FILE (O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)

/* Store failures that will not go away by themselves: the adapter is unhealthy
 * from the first one until a store succeeds. */
static inline bool kvcd_fs_persistent(int e)
{
    return e == ENOSPC || e == EDQUOT || e == EROFS || e == EACCES || e == EPERM;
}

/* Causes of an O_DIRECT fallback to buffered I/O. */
enum { ODF_UNSUPPORTED, ODF_UNALIGNED, ODF_IO, ODF_N };

typedef struct {
    _Atomic uint64_t count;
    _Atomic int first_errno;
    atomic_bool logged; /* set by the first occurrence: the one to log */
} odf_t;

typedef struct {
    /* options, immutable after init */
    char *base_path;
    char *tmp_dir;
    char tmp_top[NAME_LIMIT + 1]; /* first component of tmp_dir */
    uint64_t read_ahead;
    bool odirect, fsync_on, skip_existing;
    bool checksum; /* stores write kvcd's trailer ("xxh3" and format "kvcd") */
    bool verify;   /* loads verify a trailer's payload checksum ("xxh3") */
    bool read_raw; /* files without a kvcd trailer are served whole */
    bool lmc_names; /* format "lmcache": stores use LMCache's own names, raw */
    int checksum_kind; /* spec: index in "xxh3", "none" */
    int format_kind;   /* spec: index in "kvcd", "lmcache" */
    mode_t file_mode, dir_mode;
    bool chmod_files, chmod_dirs; /* the umask would strip bits */
    int32_t dir_levels;
    double max_capacity_gb, min_free_gb, min_free_percent;
    uint64_t capacity;  /* bytes, 0 = unbounded */
    uint64_t floor_abs; /* bytes from min_free_gb */
    double floor_pct;   /* effective min_free_percent */
    uint64_t orphan_age_ms, health_window_ms;
    const char *rec_field;         /* recency_file as parsed, borrowed during init */
    char rec_name[NAME_LIMIT + 1]; /* recency_file; "" = off */

    const kvcd_core_services_t *svc; /* the core's functions (log) */
    int base_fd;
    _Atomic int tmp_fd; /* -1 while relative_tmp_dir could not be made (full disk) */
    char ident[128];    /* "<host>.<boot>.<pidns>.<pid>.<nonce>" temp name prefix */
    char host[64];
    char boot[17]; /* 16 hex digits of XXH3-64(boot_id); "0..0" unknown */
    uint64_t pidns; /* inode of this process's pid namespace; 0 unknown */
    pid_t pid;
    uint64_t nonce;
    _Atomic uint64_t tmp_seq;
    bool inited;

    /* index: guarded by mu */
    pthread_mutex_t mu;
    ent_t **tab;
    size_t tab_mask;
    size_t nent;
    ent_t lru;
    uint64_t used, reserved;
    char last_err[320];
    uint64_t last_err_at;

    /* last statvfs of base_path, for status (which makes no system call) */
    _Atomic uint64_t fs_free, fs_total, fs_stat_at;

    _Atomic bool odirect_ok;
    odf_t odf[ODF_N];
    _Atomic uint64_t errs[ERRNO_SLOTS];
    _Atomic uint64_t err_streak, err_at;
    /* write health: ro_errno is why the start-up probe could not write (0 =
     * writable); wfail the errno of the last store that failed for a persistent
     * cause. A successful store or probe clears both. */
    _Atomic int ro_errno, wfail;
    pthread_mutex_t rmu; /* one recovery (temp dir, probe) at a time */

    _Atomic uint64_t stores, store_bytes, store_skipped, nospace, lookups, hits, loads, load_bytes,
        removes, evictions, evicted_bytes, checksum_fail, timeouts, evict_errors, touches,
        touches_unknown;
    _Atomic int scan_state; /* 0 not started, 1 running, 2 done */
    _Atomic uint64_t scan_files, scan_bytes, orphans_removed, next_sweep;
    _Atomic uint64_t rec_restored; /* scanned files the recency journal ordered */
    _Atomic int rec_state;         /* journal at the scan: 0 none, 1 applied, 2 invalid */
} fs_t;

#define CNT(f, n) atomic_fetch_add_explicit(&(f), (n), memory_order_relaxed)
#define LD(f) atomic_load_explicit(&(f), memory_order_relaxed)

static inline uint64_t rup(uint64_t n)
{
    return (n + DIO_ALIGN - 1) & ~(uint64_t)(DIO_ALIGN - 1);
}

/* sys.c: the system call table in use; clock; error accounting */
extern const kvcd_fs_syscalls_t *kvcd_fs_sys KVCD_FS_HIDDEN;
KVCD_FS_HIDDEN uint64_t kvcd_fs_now_ms(void); /* CLOCK_MONOTONIC, like uv_now() */
/* Count a failed system call by errno, mark unhealthy, remember it. -e. */
KVCD_FS_HIDDEN int kvcd_fs_err(fs_t *fs, const char *op, const char *path, int e);
/* A store failed with errno e (> 0): unhealthy until one succeeds, if persistent. */
KVCD_FS_HIDDEN void kvcd_fs_store_failed(fs_t *fs, int e);
/* Writing works (a store or probe succeeded): writable and healthy again. */
KVCD_FS_HIDDEN void kvcd_fs_store_worked(fs_t *fs);
KVCD_FS_HIDDEN void kvcd_fs_odf_note(fs_t *fs, int cause, int e);

/* A hash-prefix directory name: two lower-case hex digits. */
static inline bool kvcd_fs_is_hex2(const char *s)
{
    return isxdigit((unsigned char)s[0]) && !isupper((unsigned char)s[0]) &&
           isxdigit((unsigned char)s[1]) && !isupper((unsigned char)s[1]) && !s[2];
}

/* An object file name: ends in ".data" after at least one byte. */
static inline bool kvcd_fs_is_data(const char *s)
{
    size_t n = strlen(s);

    return n > 5 && !strcmp(s + n - 5, KVCD_OBJ_NAME_SUFFIX);
}

/* index.c: usage accounting, LRU, pins, eviction */
KVCD_FS_HIDDEN int kvcd_fs_idx_init(fs_t *fs);
KVCD_FS_HIDDEN void kvcd_fs_idx_free(fs_t *fs);
KVCD_FS_HIDDEN ent_t *kvcd_fs_ent_new(const char *path, uint64_t bytes);
KVCD_FS_HIDDEN bool kvcd_fs_idx_touch(fs_t *fs, const char *path, uint64_t bytes);
KVCD_FS_HIDDEN bool kvcd_fs_idx_refresh(fs_t *fs, const char *path);
KVCD_FS_HIDDEN void kvcd_fs_idx_drop(fs_t *fs, const char *path);
KVCD_FS_HIDDEN void kvcd_fs_idx_add_scanned(fs_t *fs, ent_t **v, size_t n);
KVCD_FS_HIDDEN uint64_t kvcd_fs_floor_of(const fs_t *fs, uint64_t total);
KVCD_FS_HIDDEN int kvcd_fs_reserve(fs_t *fs, uint64_t need);
KVCD_FS_HIDDEN void kvcd_fs_unreserve(fs_t *fs, uint64_t n);
/* Evict least recently used files until at least `bytes` are freed: the bytes
 * freed (0: nothing left to evict). For a disk that is full below the floor's
 * radar (quota, floor 0, another writer). */
KVCD_FS_HIDDEN uint64_t kvcd_fs_evict(fs_t *fs, uint64_t bytes);

/* recency.c: the LRU order saved on close, restored by the scan */
typedef struct {
    struct {
        uint64_t hash;
        uint64_t rank1; /* 1 + position, most recent first; 0 = empty slot */
    } *slot;
    uint64_t mask, n;
    bool found, valid; /* a journal file exists; it checked out */
} fs_rec_t;
KVCD_FS_HIDDEN int kvcd_fs_rec_save(fs_t *fs);
KVCD_FS_HIDDEN void kvcd_fs_rec_load(fs_t *fs, fs_rec_t *rec);
KVCD_FS_HIDDEN uint64_t kvcd_fs_rec_rank(const fs_rec_t *rec, uint64_t hash);
KVCD_FS_HIDDEN void kvcd_fs_rec_done(fs_t *fs, fs_rec_t *rec);

/* io.c: whole-object reads and writes, O_DIRECT, temp files */
KVCD_FS_HIDDEN int kvcd_fs_io_full(int fd, const struct iovec *in, int cnt, off_t off, bool wr);
KVCD_FS_HIDDEN int kvcd_fs_direct_on(fs_t *fs, int fd);
KVCD_FS_HIDDEN int kvcd_fs_write_obj(fs_t *fs, int fd, const void *buf, size_t len,
                                     const uint8_t *trl, size_t tlen);
KVCD_FS_HIDDEN int kvcd_fs_read_obj(fs_t *fs, int fd, void *buf, size_t plen, uint8_t *trl,
                                    size_t tlen);
KVCD_FS_HIDDEN int kvcd_fs_tmp_create(fs_t *fs, char *tmp, size_t tmplen);

/* config.c: the JSON spec (the field table, then checks across fields) and the
 * directories */
extern const kvcd_adapter_field_t kvcd_fs_fields[] KVCD_FS_HIDDEN;
KVCD_FS_HIDDEN int kvcd_fs_parse_spec(fs_t *fs, const json_t *spec, char *err, size_t errlen);
KVCD_FS_HIDDEN int kvcd_fs_open_dirs(fs_t *fs, char *err, size_t errlen);
/* Read-only since start: make the temp dir if it is missing and publish a probe,
 * evicting our own files while the disk is full. 0 once writable, else -errno.
 * Any worker; one at a time (rmu), a concurrent call returns -EBUSY. */
KVCD_FS_HIDDEN int kvcd_fs_recover(fs_t *fs);


#endif
