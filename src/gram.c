/* gram.c - fp32-chunk Gram accumulation (see gram.h). */
#include "gram.h"

#include <cblas.h>
#include <stddef.h>

#define PANEL MP_GRAM_PANEL /* rows of the triangle per step: its fp32 block is still in cache when added */

/* g[j] += c[j] for j < m: one rounding per element, so vectorised (this file is built with -O3, CMakeLists.txt)
 * the sums are those of the scalar loop */
static void add_row(double *restrict g, const float *restrict c, int64_t m)
{
    for (int64_t j = 0; j < m; j++)
        g[j] += (double)c[j];
}

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
        for (int64_t i = i0; i < i1; i++) /* row i of the block holds (x^T x)[i, j] for j >= i at [j - i0] */
            add_row(G + mp_gram_at(n, i, i), c + (i - i0) * w + (i - i0), n - i);
    }
    if (sq)
        for (int64_t i = 0; i < nb; i++) {
            const float *r = x + i * n;
            for (int64_t j = 0; j < n; j++)
                sq[j] += (double)r[j] * (double)r[j];
        }
}
