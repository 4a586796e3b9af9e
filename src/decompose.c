/* decompose.c - base merge and whitened SVD of the deltas (see decompose.h). */
#include "decompose.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "registry.h"
#include "rng.h"

void mp_base_rows(int E, int64_t nrows, int64_t n, const float *const *W, const int64_t *count,
                  const double *const *gdiag, mp_weight_source src, float *out)
{
    double *acc = calloc((size_t)n, sizeof(double)), *wsum = calloc((size_t)n, sizeof(double));
    double *wc = malloc(sizeof(double) * (size_t)n * (size_t)E);
    /* the weights depend on the column only: w_i[c] */
    for (int i = 0; i < E; i++)
        for (int64_t c = 0; c < n; c++)
            wc[(int64_t)i * n + c] = src == MP_WEIGHTS_FREQUENCY ? (double)count[i] : gdiag[i][c];
    for (int64_t c = 0; c < n; c++) {
        double s = 0;
        for (int i = 0; i < E; i++)
            s += wc[(int64_t)i * n + c];
        wsum[c] = s;
    }
    for (int64_t r = 0; r < nrows; r++) {
        memset(acc, 0, sizeof(double) * (size_t)n);
        for (int i = 0; i < E; i++) {
            const float *w = W[i] + r * n;
            for (int64_t c = 0; c < n; c++)
                acc[c] += wsum[c] > 0 ? wc[(int64_t)i * n + c] / wsum[c] * w[c] : w[c] / E;
        }
        for (int64_t c = 0; c < n; c++)
            out[r * n + c] = (float)acc[c];
    }
    free(acc), free(wsum), free(wc);
}

void mp_base_rows_elem(int E, int64_t nrows, int64_t n, const float *const *W, const float *const *F, float *out)
{
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t c = 0; c < n; c++) {
            double ws = 0, acc = 0, plain = 0;
            for (int i = 0; i < E; i++) {
                double w = F[i][r * n + c] > 0 ? F[i][r * n + c] : 0.0;
                ws += w;
                acc += w * W[i][r * n + c];
                plain += W[i][r * n + c];
            }
            out[r * n + c] = (float)(ws > 0 ? acc / ws : plain / E);
        }
}

int mp_whiten(const double *G, int64_t n, double *lambda, double *S)
{
    double md = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(G[i * n + i]))
            return mp_errorf(MP_ENUMERIC, "non-finite Gram diagonal at %lld", (long long)i);
        md += G[i * n + i];
    }
    md = md > 0 ? md / (double)n : 1.0;
    double lam = *lambda > 0 ? *lambda : 1e-8;
    for (int attempt = 0; attempt < 40 && lam <= 1.0; attempt++, lam *= 10) {
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++)
                S[i * n + j] = j <= i ? G[i * n + j] + (i == j ? lam * md : 0.0) : 0.0;
        if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', (lapack_int)n, S, (lapack_int)n) == 0) {
            *lambda = lam;
            return 0;
        }
    }
    return mp_errorf(MP_ENUMERIC, "Cholesky factorisation of the Gram failed up to lambda %.3g (not finite?)", lam / 10);
}

/* U_r Sigma^(1/2) and Sigma^(1/2) V_r^T S^-1 from the SVD pieces: u [m, k] (ldu), vt [k, n] (ldvt) */
static void factors(const double *u, int64_t ldu, const double *vt, int64_t ldvt, const double *sigma, int64_t m,
                    int64_t n, const double *S, int64_t r, double *U, double *V)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t k = 0; k < r; k++)
            U[i * r + k] = u[i * ldu + k] * sqrt(sigma[k]);
    for (int64_t k = 0; k < r; k++)
        for (int64_t j = 0; j < n; j++)
            V[k * n + j] = vt[k * ldvt + j] * sqrt(sigma[k]);
    /* V <- V S^-1: solve X S = V, S lower */
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, (int)r, (int)n, 1.0, S, (int)n, V,
                (int)n);
}

int mp_whitened_svd(const double *Delta, int64_t m, int64_t n, const double *S, int64_t r, double *U, double *V,
                    double *sigma)
{
    int64_t k = m < n ? m : n;
    if (r > k)
        return mp_errorf(MP_EUSAGE, "rank %lld exceeds min(%lld, %lld)", (long long)r, (long long)m, (long long)n);
    double *A = malloc(sizeof(double) * (size_t)(m * n));
    double *u = malloc(sizeof(double) * (size_t)(m * k)), *vt = malloc(sizeof(double) * (size_t)(k * n));
    if (!A || !u || !vt) {
        free(A), free(u), free(vt);
        return mp_errorf(MP_ENOMEM, "out of memory for a %lld x %lld SVD", (long long)m, (long long)n);
    }
    memcpy(A, Delta, sizeof(double) * (size_t)(m * n));
    for (int64_t i = 0; i < m * n; i++)
        if (!isfinite(A[i])) {
            free(A), free(u), free(vt);
            return mp_errorf(MP_ENUMERIC, "non-finite delta at element %lld", (long long)i);
        }
    /* A = Delta S (S lower triangular) */
    cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, (int)m, (int)n, 1.0, S, (int)n, A,
                (int)n);
    int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)m, (lapack_int)n, A, (lapack_int)n, sigma, u,
                              (lapack_int)k, vt, (lapack_int)n);
    if (info != 0) {
        free(A), free(u), free(vt);
        return mp_errorf(MP_ENUMERIC, "dgesdd failed (info %d)", info);
    }
    if (r > 0)
        factors(u, k, vt, n, sigma, m, n, S, r, U, V);
    free(A), free(u), free(vt);
    return 0;
}

/* orthonormalise the columns of Y [m, l] in place (QR) */
static int orth(double *Y, int64_t m, int64_t l)
{
    double *tau = malloc(sizeof(double) * (size_t)l);
    int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)l, Y, (lapack_int)l, tau);
    if (info == 0)
        info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)l, (lapack_int)l, Y, (lapack_int)l, tau);
    free(tau);
    return info == 0 ? 0 : mp_errorf(MP_ENUMERIC, "QR in the randomized SVD failed (info %d)", info);
}

int mp_whitened_rsvd(const double *Delta, int64_t m, int64_t n, const double *S, int64_t r, int p, int q,
                     uint64_t seed, double *U, double *V, double *sigma)
{
    int64_t k = m < n ? m : n, l = r + p < k ? r + p : k;
    memset(sigma, 0, sizeof(double) * (size_t)k);
    double *A = malloc(sizeof(double) * (size_t)(m * n)), *Om = malloc(sizeof(double) * (size_t)(n * l));
    double *Y = malloc(sizeof(double) * (size_t)(m * l)), *Z = malloc(sizeof(double) * (size_t)(n * l));
    double *B = malloc(sizeof(double) * (size_t)(l * n)), *ub = malloc(sizeof(double) * (size_t)(l * l));
    double *vt = malloc(sizeof(double) * (size_t)(l * n)), *uu = malloc(sizeof(double) * (size_t)(m * l));
    int rc = 0;
    if (!A || !Om || !Y || !Z || !B || !ub || !vt || !uu) {
        rc = mp_errorf(MP_ENOMEM, "out of memory for a randomized SVD");
        goto out;
    }
    memcpy(A, Delta, sizeof(double) * (size_t)(m * n));
    cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, (int)m, (int)n, 1.0, S, (int)n, A,
                (int)n);
    mp_rng g;
    mp_rng_seed(&g, seed);
    for (int64_t i = 0; i < n * l; i++)
        Om[i] = mp_rng_normal(&g);
    /* Y = A Om; power iterations Y = A (A^T Y) with QR in between */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0, A, (int)n, Om, (int)l, 0.0, Y,
                (int)l);
    MP_CHECK_GOTO(orth(Y, m, l), out);
    for (int it = 0; it < q; it++) {
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)l, (int)m, 1.0, A, (int)n, Y, (int)l, 0.0, Z,
                    (int)l);
        MP_CHECK_GOTO(orth(Z, n, l), out);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0, A, (int)n, Z, (int)l, 0.0,
                    Y, (int)l);
        MP_CHECK_GOTO(orth(Y, m, l), out);
    }
    /* B = Y^T A [l, n]; SVD B = ub s vt; U = Y ub */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)l, (int)n, (int)m, 1.0, Y, (int)l, A, (int)n, 0.0, B,
                (int)n);
    int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)l, (lapack_int)n, B, (lapack_int)n, sigma, ub,
                              (lapack_int)l, vt, (lapack_int)n);
    if (info != 0) {
        rc = mp_errorf(MP_ENUMERIC, "dgesdd in the randomized SVD failed (info %d)", info);
        goto out;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)l, 1.0, Y, (int)l, ub, (int)l, 0.0, uu,
                (int)l);
    if (r > 0)
        factors(uu, l, vt, n, sigma, m, n, S, r, U, V);
out:
    free(A), free(Om), free(Y), free(Z), free(B), free(ub), free(vt), free(uu);
    return rc;
}

int64_t mp_rank_for_fraction(double delta, int64_t m, int64_t n)
{
    return (int64_t)floor(delta * (double)m * (double)n / (double)(m + n));
}

double mp_compression_ratio(const mp_config *c, double delta)
{
    mp_tensor_spec *sp = NULL;
    int n = 0;
    if (mp_registry_list(c, MP_LAYOUT_PER_EXPERT, &sp, &n) < 0)
        return NAN;
    double total = 0;
    for (int i = 0; i < n; i++) {
        double ne = 1;
        for (int k = 0; k < sp[i].ndim; k++)
            ne *= (double)sp[i].shape[k];
        total += ne;
    }
    free(sp);
    double d = c->hidden, f = c->moe_ffn, r = (double)mp_rank_for_fraction(delta, c->moe_ffn, c->hidden);
    double per_layer_before = c->n_experts * 3 * f * d, per_layer_after = 3 * f * d + c->n_experts * 3 * r * (f + d);
    double compressed = total + mp_config_n_moe_layers(c) * (per_layer_after - per_layer_before);
    return 1.0 - compressed / total;
}

double mp_fraction_for_ratio(const mp_config *cfg, double ratio)
{
    if (mp_compression_ratio(cfg, 0.0) < ratio)
        return -1;
    double lo = 0, hi = 1;
    for (int it = 0; it < 60; it++) {
        double mid = 0.5 * (lo + hi);
        if (mp_compression_ratio(cfg, mid) >= ratio)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}
