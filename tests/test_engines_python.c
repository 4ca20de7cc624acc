/*
 * test_engines_python.c - runs tests/python/test_engines.py (the SGLang HiCache
 * storage backend protocol/python/kvcd_sglang.py and the vLLM secondary tier
 * protocol/python/kvcd_vllm.py, subclassing sglang 0.5.23's and vllm 0.33.0's
 * own base classes, against the real kvcd daemon on private ipc:// sockets)
 * under Check, so that its result is part of `make test`.
 *
 * The interpreter is the one of the virtual environment scripts/test-venv.sh
 * builds (KVCD_VENV, by default build/venv in the source tree): sglang, vllm
 * and torch live there, not in any system Python.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/support.h"

START_TEST(engines)
{
    char py[1024], script[1024];
    static char out[1 << 18];
    const char *argv[] = {py, script, kvcd_test_bin(), NULL};
    const char *v = getenv("KVCD_VENV");
    int rc;

    if (v && *v)
        snprintf(py, sizeof(py), "%s/bin/python", v);
    else
        snprintf(py, sizeof(py), "%s/build/venv/bin/python", kvcd_test_srcdir());
    ck_assert_msg(access(py, X_OK) == 0, "%s missing: run `make venv` (scripts/test-venv.sh)", py);
    snprintf(script, sizeof(script), "%s/tests/python/test_engines.py", kvcd_test_srcdir());
    rc = kvcd_run(argv, out, sizeof(out), 600000);
    fputs(out, stdout);
    ck_assert_msg(rc == 0, "test_engines.py exited %d", rc);
    ck_assert_ptr_nonnull(strstr(out, " 0 failed"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("engines_python");
    TCase *tc = tcase_create("engines");

    tcase_set_timeout(tc, 660);
    tcase_add_test(tc, engines);
    suite_add_tcase(s, tc);
    return kvcd_test_run(s);
}
