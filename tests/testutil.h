/* testutil.h - tiny assertion helpers shared by the C tests.
 * A failed check prints file:line, the expression and the library's last
 * error message, counts the failure, and the test returns non-zero at the end. */
#ifndef MP_TESTUTIL_H
#define MP_TESTUTIL_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static int t_failures = 0, t_checks = 0;

#define CHECK(cond)                                                                                                \
    do {                                                                                                           \
        t_checks++;                                                                                                \
        if (!(cond)) {                                                                                             \
            t_failures++;                                                                                          \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond,             \
                    mp_error_message());                                                                           \
        }                                                                                                          \
    } while (0)

#define CHECK_OK(expr)                                                                                             \
    do {                                                                                                           \
        int t_rc_ = (expr);                                                                                        \
        t_checks++;                                                                                                \
        if (t_rc_ != 0) {                                                                                          \
            t_failures++;                                                                                          \
            fprintf(stderr, "%s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #expr, t_rc_, mp_error_message()); \
        }                                                                                                          \
    } while (0)

/* expr must fail with `code` and the message must contain `needle` */
#define CHECK_ERR(expr, code, needle)                                                                              \
    do {                                                                                                           \
        mp_error_clear();                                                                                          \
        int t_rc_ = (expr);                                                                                        \
        t_checks++;                                                                                                \
        if (t_rc_ != (code) || !strstr(mp_error_message(), (needle))) {                                            \
            t_failures++;                                                                                          \
            fprintf(stderr, "%s:%d: %s: expected %d with '%s', got %d: %s\n", __FILE__, __LINE__, #expr, (code),   \
                    (needle), t_rc_, mp_error_message());                                                          \
        }                                                                                                          \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                                      \
    do {                                                                                                           \
        double t_a_ = (a), t_b_ = (b);                                                                             \
        t_checks++;                                                                                                \
        if (!(fabs(t_a_ - t_b_) <= (tol))) {                                                                       \
            t_failures++;                                                                                          \
            fprintf(stderr, "%s:%d: %s = %.9g, %s = %.9g, differ by more than %g\n", __FILE__, __LINE__, #a, t_a_, \
                    #b, t_b_, (double)(tol));                                                                      \
        }                                                                                                          \
    } while (0)

static int t_done(const char *name)
{
    if (t_failures)
        fprintf(stderr, "%s: %d of %d checks FAILED\n", name, t_failures, t_checks);
    else
        printf("%s: all %d checks passed\n", name, t_checks);
    return t_failures ? 1 : 0;
}

#endif
