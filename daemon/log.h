/*
 * log.h - one line per event: time, level, module, message.
 *
 * KVCD_LOG checks the level before formatting anything, so a disabled debug line
 * costs one comparison. Lines go to stderr with a single write() so lines from
 * several threads never interleave mid-line. KVCD_LOG_RATELIMITED prints at most
 * one line per `interval_ms` per call site and counts what it suppressed.
 */
#ifndef KVCD_LOG_H
#define KVCD_LOG_H

#include <stdint.h>

typedef enum {
    KVCD_LOG_DEBUG = 0,
    KVCD_LOG_INFO = 1,
    KVCD_LOG_WARNING = 2,
    KVCD_LOG_ERROR = 3,
} kvcd_log_level_t;

extern int kvcd_log_level;

void kvcd_log_write(int level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define KVCD_LOG(level, module, ...)                                           \
    do {                                                                       \
        if ((level) >= kvcd_log_level)                                         \
            kvcd_log_write((level), (module), __VA_ARGS__);                    \
    } while (0)

/* Per call site: at most one line per interval; the next line says how many were
 * suppressed. Thread-safe (the state is updated with atomics). */
typedef struct {
    uint64_t next_ms;
    uint64_t suppressed;
} kvcd_ratelimit_t;

int kvcd_ratelimit_pass(kvcd_ratelimit_t *rl, uint64_t interval_ms,
                        uint64_t *suppressed);

#define KVCD_LOG_RATELIMITED(level, module, interval_ms, fmt, ...)             \
    do {                                                                       \
        static kvcd_ratelimit_t rl_;                                           \
        uint64_t sup_;                                                         \
        if ((level) >= kvcd_log_level &&                                       \
            kvcd_ratelimit_pass(&rl_, (interval_ms), &sup_))                   \
            kvcd_log_write((level), (module), fmt " (%llu similar suppressed)", \
                           ##__VA_ARGS__, (unsigned long long)sup_);           \
    } while (0)

#endif
