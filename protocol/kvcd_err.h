/*
 * kvcd_err.h - the one table of kvcd error codes.
 *
 * Functions return 0 on success or a negative code: either -errno for a system
 * error, or one of the KVCD_E* codes below (all >= 1000 so they never collide
 * with errno values). On the wire a code travels as its positive value plus its
 * stable name (KVCD_ERR_MAP's second column); numbers are never reused or
 * renumbered. A miss is a result (KVCD_ENOTFOUND), not a failure of the request.
 *
 * Pure, thread-safe, no allocation.
 */
#ifndef KVCD_ERR_H
#define KVCD_ERR_H

#include <stddef.h>

/* X(symbol, wire code, stable name, message) */
#define KVCD_ERR_MAP(X)                                                        \
    X(EMALFORMED, 1001, "EMALFORMED", "malformed request")                     \
    X(EVERSION, 1002, "EVERSION", "unsupported protocol version")              \
    X(EUNKNOWNOP, 1003, "EUNKNOWNOP", "unknown operation")                     \
    X(EMISSING, 1004, "EMISSING", "required field missing")                    \
    X(EBADFIELD, 1005, "EBADFIELD", "field has a wrong type or value")         \
    X(ETOOLARGE, 1006, "ETOOLARGE", "frame or request exceeds server limits")  \
    X(ETOOMANYKEYS, 1007, "ETOOMANYKEYS", "too many keys in one request")      \
    X(EFRAMES, 1008, "EFRAMES", "frame count does not match the keys")         \
    X(ENOSPACE, 1009, "ENOSPACE", "no space left in L1")                       \
    X(ENOTFOUND, 1010, "ENOTFOUND", "key not found")                           \
    X(ESHUTDOWN, 1011, "ESHUTDOWN", "server is shutting down")                 \
    X(EBUSY, 1012, "EBUSY", "object is being written")                         \
    X(ETIMEDOUT, 1013, "ETIMEDOUT", "operation timed out")                     \
    X(EINTERNAL, 1014, "EINTERNAL", "internal error")                          \
    X(ECHECKSUM, 1015, "ECHECKSUM", "checksum mismatch")                       \
    X(ECONFIG, 1016, "ECONFIG", "invalid configuration")                       \
    X(EUNAVAIL, 1017, "EUNAVAIL", "adapter unavailable")                       \
    X(ESEGMENT, 1018, "ESEGMENT", "bad shared-memory segment reference")       \
    X(ECANCELED, 1019, "ECANCELED", "operation canceled")                      \
    X(ECONNECT, 1020, "ECONNECT", "cannot reach server")                       \
    X(EPEERUNVERIFIED, 1021, "EPEERUNVERIFIED", "peer's user cannot be verified for shared memory") \
    X(EQUEUEFULL, 1022, "EQUEUEFULL", "work queue full")                       \
    X(EDUPLICATE, 1023, "EDUPLICATE", "key is already stored")

enum {
#define KVCD_ERR_ENUM(sym, code, name, msg) KVCD_##sym = -(code),
    KVCD_ERR_MAP(KVCD_ERR_ENUM)
#undef KVCD_ERR_ENUM
};

/* Human message for any code (0, -errno or KVCD_E*). Never NULL. */
const char *kvcd_strerror(int err);

/* Stable name for any code: "OK", "EIO", "ENOSPACE", ... Never NULL. */
const char *kvcd_errname(int err);

/* Map a wire name back to a code; 0 if unknown. */
int kvcd_errcode(const char *name);

/* The one "format a message, return a code" helper of kvcd: vsnprintf into
 * buf (always NUL-terminated when buflen > 0), return code. Config errors
 * pass KVCD_ECONFIG and a message "field: what is wrong". Any thread. */
int kvcd_errf(char *buf, size_t buflen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
