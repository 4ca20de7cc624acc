/*
 * test_lmcache_python.c - runs tests/python/test_lmcache_compat.py (kvcd's
 * LMCache codec, hasher and fs files against the installed lmcache 0.5.6
 * package itself) under Check, so that its result is part of `make test`.
 *
 * The interpreter is the one of the virtual environment scripts/test-venv.sh
 * builds (KVCD_VENV, by default build/venv in the source tree): lmcache and
 * torch live there, not in any system Python. The codec comes as the
 * ctypes-loadable KVCD_LMC_SHIM (tests/python/lmc_shim.c).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/support.h"

static void paths(char *py, size_t pylen, char *shim, size_t shimlen)
{
    const char *v = getenv("KVCD_VENV"), *s = getenv("KVCD_LMC_SHIM");

    if (v && *v)
        snprintf(py, pylen, "%s/bin/python", v);
    else
        snprintf(py, pylen, "%s/build/venv/bin/python", kvcd_test_srcdir());
    if (s && *s)
        snprintf(shim, shimlen, "%s", s);
    else
        snprintf(shim, shimlen, "%s/build/tests/python/libkvcd_lmc.so", kvcd_test_srcdir());
}

START_TEST(lmcache_compat)
{
    char py[1024], shim[1024], script[1024];
    static char out[1 << 18];
    const char *argv[] = {py, script, kvcd_test_bin(), shim, NULL};
    int rc;

    paths(py, sizeof(py), shim, sizeof(shim));
    ck_assert_msg(access(py, X_OK) == 0, "%s missing: run `make venv` (scripts/test-venv.sh)", py);
    ck_assert_msg(access(shim, R_OK) == 0, "%s missing: `make test` builds it", shim);
    snprintf(script, sizeof(script), "%s/tests/python/test_lmcache_compat.py",
             kvcd_test_srcdir());
    rc = kvcd_run(argv, out, sizeof(out), 600000);
    fputs(out, stdout);
    ck_assert_msg(rc == 0, "test_lmcache_compat.py exited %d", rc);
    ck_assert_ptr_nonnull(strstr(out, " 0 failed"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lmcache_python");
    TCase *tc = tcase_create("lmcache");

    tcase_set_timeout(tc, 660);
    tcase_add_test(tc, lmcache_compat);
    suite_add_tcase(s, tc);
    return kvcd_test_run(s);
}
