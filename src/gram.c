/* gram.c - fp32-chunk Gram accumulation (see gram.h). */
#include "gram.h"

#include <cblas.h>
#include <stddef.h>

#define PANEL MP_GRAM_PANEL /* rows of the triangle per step: its fp32 blocks are still in cache when added */

/* c [i1 - i0, n - i0] = rows [i0, i1) of upper(x^T x), x [nb, n], in fp32: the diagonal block by SSYRK, the
 * rest by SGEMM */
static void panel(const float *x, int nb, int n, int i0, int i1, float *c)
{
    int w = n - i0;
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, i1 - i0, nb, 1.0f, x + i0, n, 0.0f, c, w);
    if (i1 < n)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1 - i0, n - i1, nb, 1.0f, x + i0, n, x + i1, n, 0.0f,
                    c + (i1 - i0), w);
}

void mp_gram_add_block(const float *x, int nb, int n, float *scratch, double *G, double *sq)
{
    if (nb <= 0)
        return;
    int na = nb < MP_GRAM_CHUNK ? nb : MP_GRAM_CHUNK, nc = nb - na; /* the two fp32 chunks */
    float *a = scratch, *b = scratch + (size_t)PANEL * (size_t)n;
    for (int i0 = 0; i0 < n; i0 += PANEL) {
        int i1 = i0 + PANEL < n ? i0 + PANEL : n, w = n - i0;
        panel(x, na, n, i0, i1, a);
        if (nc > 0) /* the second chunk's panel; both go into G in one fp64 pass (G is what memory bounds) */
            panel(x + (size_t)na * (size_t)n, nc, n, i0, i1, b);
        for (int64_t i = i0; i < i1; i++) {
            const float *ai = a + (i - i0) * w - i0, *bi = b + (i - i0) * w - i0; /* [j] = (x^T x)[i, j], j >= i */
            double *g = G + i * n;
            if (nc > 0)
                for (int64_t j = i; j < n; j++)
                    g[j] += (double)ai[j] + (double)bi[j];
            else
                for (int64_t j = i; j < n; j++)
                    g[j] += (double)ai[j];
        }
    }
    if (sq)
        for (int64_t i = 0; i < nb; i++) {
            const float *r = x + i * n;
            for (int64_t j = 0; j < n; j++)
                sq[j] += (double)r[j] * (double)r[j];
        }
}
