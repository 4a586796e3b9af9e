/* spearman.c - Spearman's rank correlation (see spearman.h). */
#include "spearman.h"

#include <math.h>
#include <stdlib.h>

#include "error.h"

typedef struct {
    double v;
    int i;
} keyed;

static int cmp_keyed(const void *a, const void *b)
{
    const keyed *x = a, *y = b;
    if (x->v != y->v)
        return x->v < y->v ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* r[i] = the average 1-based rank of v[i] */
static void ranks(const double *v, int n, keyed *k, double *r)
{
    for (int i = 0; i < n; i++)
        k[i] = (keyed){v[i], i};
    qsort(k, (size_t)n, sizeof *k, cmp_keyed);
    for (int a = 0; a < n;) {
        int b = a;
        while (b + 1 < n && k[b + 1].v == k[a].v)
            b++;
        for (int j = a; j <= b; j++)
            r[k[j].i] = 0.5 * (a + b) + 1.0;
        a = b + 1;
    }
}

int mp_spearman(const double *x, const double *y, int n, double *rho)
{
    *rho = NAN;
    if (n < 2)
        return 0;
    keyed *k = malloc(sizeof *k * (size_t)n);
    double *rx = malloc(sizeof(double) * (size_t)n * 2);
    if (!k || !rx) {
        free(k), free(rx);
        return mp_errorf(MP_ENOMEM, "out of memory");
    }
    double *ry = rx + n, mean = 0.5 * (n + 1), sxy = 0, sxx = 0, syy = 0;
    ranks(x, n, k, rx);
    ranks(y, n, k, ry);
    for (int i = 0; i < n; i++) {
        double a = rx[i] - mean, b = ry[i] - mean;
        sxy += a * b, sxx += a * a, syy += b * b;
    }
    if (sxx > 0 && syy > 0)
        *rho = sxy / sqrt(sxx * syy);
    free(k), free(rx);
    return 0;
}
