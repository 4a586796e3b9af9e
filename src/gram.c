/* gram.c - fp32-chunk Gram accumulation (see gram.h). */
#include "gram.h"

#include <cblas.h>
#include <stddef.h>

void mp_gram_add_chunk(const float *x, int nb, int n, float *scratch, double *G, double *sq)
{
    if (nb <= 0)
        return;
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, nb, 1.0f, x, n, 0.0f, scratch, n);
    for (int64_t i = 0; i < n; i++) {
        const float *c = scratch + i * n;
        double *g = G + i * n;
        for (int64_t j = i; j < n; j++)
            g[j] += (double)c[j];
    }
    if (sq)
        for (int64_t i = 0; i < nb; i++) {
            const float *r = x + i * n;
            for (int64_t j = 0; j < n; j++)
                sq[j] += (double)r[j] * (double)r[j];
        }
}
