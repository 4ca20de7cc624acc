/*
 * test_e2e_python.c - runs the Python client's end-to-end test
 * (tests/e2e_python.py) against the real kvcd binary, under Check so that its
 * result is part of `make test` and its summary.
 *
 * The Python packages (python3-zmq, python3-msgpack) belong to Debian's
 * /usr/bin/python3; another python3 first on PATH may not have them.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "tests/support.h"

#define PYTHON "/usr/bin/python3"

START_TEST(python_client_end_to_end)
{
    char script[512];
    static char out[1 << 16];
    const char *argv[] = {PYTHON, script, kvcd_test_bin(), NULL};
    int rc;

    snprintf(script, sizeof(script), "%s/tests/e2e_python.py", kvcd_test_srcdir());
    rc = kvcd_run(argv, out, sizeof(out), 600000);
    /* Show the script's own summary in the test log. */
    fputs(out, stdout);
    ck_assert_msg(rc == 0, "e2e_python.py exited %d", rc);
    ck_assert_ptr_nonnull(strstr(out, " 0 failed"));
}
END_TEST

START_TEST(python_client_imports_with_debian_python)
{
    char path[512], code[1024];
    const char *argv[] = {PYTHON, "-c", code, NULL};
    char out[4096];

    snprintf(path, sizeof(path), "%s/protocol/python", kvcd_test_srcdir());
    snprintf(code, sizeof(code),
             "import sys; sys.path.insert(0, '%s'); import kvcd_client; "
             "print(hex(kvcd_client.kv_rank(2, 1)))", path);
    ck_assert_int_eq(kvcd_run(argv, out, sizeof(out), 30000), 0);
    ck_assert_str_eq(out, "0x2010201\n");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("e2e_python");
    TCase *tc = tcase_create("python");

    tcase_set_timeout(tc, 660);
    tcase_add_test(tc, python_client_imports_with_debian_python);
    tcase_add_test(tc, python_client_end_to_end);
    suite_add_tcase(s, tc);
    return kvcd_test_run(s);
}
