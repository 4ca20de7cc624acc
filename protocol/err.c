/*
 * err.c - messages and stable names for the error table in kvcd_err.h.
 *
 * System errors keep their errno name so logs and STATUS counters read like
 * the kernel's; only the common ones have names, the rest print as "ESYS".
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kvcd_err.h"

#define SYS_ERR_MAP(X)                                                         \
    X(EPERM) X(ENOENT) X(EIO) X(ENOMEM) X(EACCES) X(EEXIST) X(ENOTDIR)         \
    X(EISDIR) X(EINVAL) X(ENFILE) X(EMFILE) X(EFBIG) X(ENOSPC) X(EROFS)        \
    X(EAGAIN) X(ENAMETOOLONG) X(EDQUOT) X(ESTALE) X(ETIMEDOUT) X(ECONNREFUSED) \
    X(ECONNRESET) X(EPIPE) X(EBADF) X(EFAULT) X(EINTR) X(ENOTSUP) X(EXDEV)     \
    X(ENOSYS) X(EHOSTUNREACH) X(EMSGSIZE) X(ELOOP) X(EOVERFLOW)

const char *kvcd_strerror(int err)
{
    if (err == 0)
        return "ok";
    switch (err) {
#define MSG_CASE(sym, code, name, msg) case KVCD_##sym: return msg;
    KVCD_ERR_MAP(MSG_CASE)
#undef MSG_CASE
    }
    if (err < 0 && -err < 1000)
        return strerror(-err);
    return "unknown error";
}

const char *kvcd_errname(int err)
{
    if (err == 0)
        return "OK";
    switch (err) {
#define NAME_CASE(sym, code, name, msg) case KVCD_##sym: return name;
    KVCD_ERR_MAP(NAME_CASE)
#undef NAME_CASE
#define SYS_CASE(e) case -e: return #e;
    SYS_ERR_MAP(SYS_CASE)
#undef SYS_CASE
    }
    return "ESYS";
}

int kvcd_errcode(const char *name)
{
#define CODE_CMP(sym, code, n, msg) if (strcmp(name, n) == 0) return KVCD_##sym;
    KVCD_ERR_MAP(CODE_CMP)
#undef CODE_CMP
#define SYS_CMP(e) if (strcmp(name, #e) == 0) return -e;
    SYS_ERR_MAP(SYS_CMP)
#undef SYS_CMP
    return 0;
}

int kvcd_errf(char *buf, size_t buflen, int code, const char *fmt, ...)
{
    va_list ap;

    if (!buf || !buflen)
        return code;
    va_start(ap, fmt);
    vsnprintf(buf, buflen, fmt, ap);
    va_end(ap);
    return code;
}
