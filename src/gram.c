/* gram.c - fp32-chunk Gram accumulation (see gram.h). */
#include "gram.h"

#include <cblas.h>
#include <stddef.h>

#define PANEL MP_GRAM_PANEL /* rows of the triangle per step: its fp32 block is still in cache when added */

void mp_gram_add_chunk(const float *x, int nb, int n, float *scratch, double *G, double *sq)
{
    if (nb <= 0)
        return;
    /* panel [i0, i1) x [i0, n): the diagonal block by SSYRK, the rest by SGEMM, then added in fp64 */
    for (int i0 = 0; i0 < n; i0 += PANEL) {
        int i1 = i0 + PANEL < n ? i0 + PANEL : n, w = n - i0;
        float *c = scratch; /* [i1 - i0, w]: the same cache-warm block for every panel */
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, i1 - i0, nb, 1.0f, x + i0, n, 0.0f, c, w);
        if (i1 < n)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1 - i0, n - i1, nb, 1.0f, x + i0, n, x + i1, n, 0.0f,
                        c + (i1 - i0), w);
        for (int64_t i = i0; i < i1; i++) {
            const float *ci = c + (i - i0) * w - i0; /* ci[j] = (x^T x)[i, j] for j >= i */
            double *g = G + i * n;
            for (int64_t j = i; j < n; j++)
                g[j] += (double)ci[j];
        }
    }
    if (sq)
        for (int64_t i = 0; i < nb; i++) {
            const float *r = x + i * n;
            for (int64_t j = 0; j < n; j++)
                sq[j] += (double)r[j] * (double)r[j];
        }
}
