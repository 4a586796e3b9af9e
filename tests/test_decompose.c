/* test_decompose.c - the D2 numerics of one block:
 *  - whitening identity: ||(Delta - U V) X||_F^2 = sum_{j>=r} sigma_j^2 (relative 1e-6), and never
 *    worse than plain SVD truncation of Delta at the same rank;
 *  - the seeded randomized SVD against the exact one (loss within 1 %);
 *  - a singular Gram: lambda is raised, the result is finite; NaN input is reported;
 *  - base (activation and frequency weights) and singular values against the numpy reference
 *    tests/fixtures/d2_reference.safetensors (make_d2_reference.py) on qwen2_moe_f32 layer 1. */
#include <cblas.h>
#include <lapacke.h>

#include "config.h"
#include "decompose.h"
#include "model.h"
#include "rng.h"
#include "testutil.h"

/* ||M X||_F^2 for M [m, n], X [n, t] */
static double out_err(const double *M, const double *X, int m, int n, int t)
{
    double *Y = malloc(sizeof(double) * (size_t)m * t), s = 0;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, t, n, 1.0, M, n, X, t, 0.0, Y, t);
    for (int64_t i = 0; i < (int64_t)m * t; i++)
        s += Y[i] * Y[i];
    free(Y);
    return s;
}

static void identity_tests(void)
{
    const int m = 40, n = 30, t = 200, r = 8;
    mp_rng g;
    mp_rng_seed(&g, 7);
    double *D = malloc(sizeof(double) * m * n), *X = malloc(sizeof(double) * n * t), *G = calloc(n * n, sizeof(double));
    double *S = malloc(sizeof(double) * n * n), *U = malloc(sizeof(double) * m * r), *V = malloc(sizeof(double) * r * n);
    double sig[30], sig2[30], *R = malloc(sizeof(double) * m * n);
    /* a delta with a decaying spectrum, inputs with correlated, unequal channels */
    for (int i = 0; i < m * n; i++)
        D[i] = mp_rng_normal(&g) / (1 + i % 7);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < t; j++)
            X[i * t + j] = mp_rng_normal(&g) * (1.0 + i) + (i > 0 ? 0.5 * X[(i - 1) * t + j] : 0);
    cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, n, t, 1.0, X, t, 0.0, G, n);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            G[i * n + j] = G[j * n + i];
    double lam = 1e-13;
    CHECK_OK(mp_whiten(G, n, &lam, S));
    CHECK_OK(mp_whitened_svd(D, m, n, S, r, U, V, sig));
    /* residual Delta - U V */
    memcpy(R, D, sizeof(double) * m * n);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, r, -1.0, U, r, V, n, 1.0, R, n);
    double direct = out_err(R, X, m, n, t), tail = 0;
    for (int j = r; j < n; j++)
        tail += sig[j] * sig[j];
    printf("whitening identity: ||(D - UV)X||^2 = %.12g, sum_{j>=r} sigma^2 = %.12g (rel %.2e)\n", direct, tail,
           fabs(direct - tail) / tail);
    CHECK(fabs(direct - tail) <= 1e-6 * tail);
    /* plain truncated SVD of Delta at rank r */
    double *A = malloc(sizeof(double) * m * n), *u = malloc(sizeof(double) * m * n), *vt = malloc(sizeof(double) * n * n);
    memcpy(A, D, sizeof(double) * m * n);
    CHECK(LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, n, A, n, sig2, u, n, vt, n) == 0);
    memcpy(R, D, sizeof(double) * m * n);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            for (int k = 0; k < r; k++)
                R[i * n + j] -= u[i * n + k] * sig2[k] * vt[k * n + j];
    double plain = out_err(R, X, m, n, t);
    printf("plain SVD truncation: %.6g (whitened %.6g, %.2fx)\n", plain, direct, plain / direct);
    CHECK(direct <= plain * (1 + 1e-12));
    /* randomized SVD: same loss within 1 % */
    double sr[30];
    CHECK_OK(mp_whitened_rsvd(D, m, n, S, r, 8, 2, 11, U, V, sr));
    memcpy(R, D, sizeof(double) * m * n);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, r, -1.0, U, r, V, n, 1.0, R, n);
    double rl = out_err(R, X, m, n, t);
    printf("randomized SVD (p 8, q 2): loss %.6g vs exact %.6g (ratio %.4f)\n", rl, direct, rl / direct);
    CHECK(rl <= 1.01 * direct);
    /* a singular Gram (10 samples for 30 channels): lambda is raised until chol succeeds */
    cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, n, 10, 1.0, X, t, 0.0, G, n);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            G[i * n + j] = G[j * n + i];
    lam = 1e-30;
    CHECK_OK(mp_whiten(G, n, &lam, S));
    printf("singular Gram: lambda raised to %.1e\n", lam);
    CHECK(lam > 1e-30);
    CHECK_OK(mp_whitened_svd(D, m, n, S, r, U, V, sig));
    int finite = 1;
    for (int i = 0; i < m * r; i++)
        finite &= isfinite(U[i]);
    for (int i = 0; i < r * n; i++)
        finite &= isfinite(V[i]);
    CHECK(finite);
    /* all-zero Gram: identity-scaled prior */
    memset(G, 0, sizeof(double) * n * n);
    lam = 1e-6;
    CHECK_OK(mp_whiten(G, n, &lam, S));
    D[5] = NAN;
    CHECK_ERR(mp_whitened_svd(D, m, n, S, r, U, V, sig), MP_ENUMERIC, "non-finite delta at element 5");
    CHECK(mp_rank_for_fraction(0.668, 14336, 4096) == 2128 || mp_rank_for_fraction(0.668, 14336, 4096) == 2127);
    free(D), free(X), free(G), free(S), free(U), free(V), free(R), free(A), free(u), free(vt);
}

static double max_rel(const double *a, const double *b, int64_t n)
{
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++)
        e = fmax(e, fabs(a[i] - b[i])), s = fmax(s, fabs(b[i]));
    return e / s;
}

static void numpy_reference(void)
{
    mp_model *m = NULL;
    mp_ckpt *ref = NULL, *d2 = NULL;
    CHECK_OK(mp_model_open(MP_FIXTURES "/qwen2_moe_f32", &m));
    CHECK_OK(mp_ckpt_open_file(MP_FIXTURES "/qwen2_moe_f32/ref.safetensors", &ref));
    CHECK_OK(mp_ckpt_open_file(MP_FIXTURES "/d2_reference.safetensors", &d2));
    if (!m || !ref || !d2)
        return;
    const int E = 4, L = 1;
    const int64_t *count = (const int64_t *)mp_ckpt_find(ref, "count.1")->data;
    static const char *pn[3] = {"gate", "up", "down"};
    double worst_base = 0, worst_sig = 0;
    for (int p = 0; p < 3; p++) {
        int64_t rows = p == 2 ? m->cfg.hidden : m->cfg.moe_ffn, cols = p == 2 ? m->cfg.moe_ffn : m->cfg.hidden;
        float *W[4];
        const double *G[4], *gd[4];
        double *diag[4];
        char nm[64];
        for (int e = 0; e < E; e++) {
            W[e] = malloc(sizeof(float) * (size_t)(rows * cols));
            CHECK_OK(mp_model_read_expert(m, L, e, (mp_proj)p, W[e]));
            snprintf(nm, sizeof nm, "%s.1.%d", p == 2 ? "gmid" : "gin", e);
            G[e] = (const double *)mp_ckpt_find(ref, nm)->data;
            diag[e] = malloc(sizeof(double) * (size_t)cols);
            for (int64_t c = 0; c < cols; c++)
                diag[e][c] = G[e][c * cols + c];
            gd[e] = diag[e];
        }
        float *base = malloc(sizeof(float) * (size_t)(rows * cols));
        double *bd = malloc(sizeof(double) * (size_t)(rows * cols));
        for (int src = 0; src < 2; src++) {
            mp_base_rows(E, rows, cols, (const float *const *)W, count, gd,
                         src ? MP_WEIGHTS_FREQUENCY : MP_WEIGHTS_ACTIVATION, base);
            for (int64_t i = 0; i < rows * cols; i++)
                bd[i] = base[i];
            snprintf(nm, sizeof nm, "%s.%s", src ? "base_freq" : "base_act", pn[p]);
            worst_base = fmax(worst_base, max_rel(bd, (const double *)mp_ckpt_find(d2, nm)->data, rows * cols));
        }
        mp_base_rows(E, rows, cols, (const float *const *)W, count, gd, MP_WEIGHTS_ACTIVATION, base);
        double *S = malloc(sizeof(double) * (size_t)(cols * cols)), *D = malloc(sizeof(double) * (size_t)(rows * cols));
        double sig[64];
        for (int e = 0; e < E; e++) {
            for (int64_t i = 0; i < rows * cols; i++)
                D[i] = (double)W[e][i] - (double)base[i];
            double lam = 1e-6;
            CHECK_OK(mp_whiten(G[e], cols, &lam, S));
            CHECK(lam == 1e-6);
            CHECK_OK(mp_whitened_svd(D, rows, cols, S, 0, NULL, NULL, sig));
            snprintf(nm, sizeof nm, "sigma.%d.%s", e, pn[p]);
            worst_sig = fmax(worst_sig, max_rel(sig, (const double *)mp_ckpt_find(d2, nm)->data, rows < cols ? rows : cols));
        }
        for (int e = 0; e < E; e++)
            free(W[e]), free(diag[e]);
        free(base), free(bd), free(S), free(D);
    }
    printf("numpy reference: base max rel err %.2e, singular values max rel err %.2e\n", worst_base, worst_sig);
    /* the base is stored in fp32: its rounding bounds the agreement; the deltas then inherit it */
    CHECK(worst_base <= 1e-6);
    CHECK(worst_sig <= 1e-5);
    mp_ckpt_close(d2);
    mp_ckpt_close(ref);
    mp_model_close(m);
}

/* DESIGN.md's worked example: Mixtral-8x7B with a dense base, overall 20/40/60 % compression
 * <-> delta ~ .668/.461/.254 <-> r = 2127/1467/808 */
static void ratio_example(void)
{
    mp_config c;
    CHECK_OK(mp_config_load(MP_FIXTURES "/configs/mixtral-8x7b.json", &c));
    static const double ratio[3] = {0.2, 0.4, 0.6}, delta[3] = {0.668, 0.461, 0.254};
    static const int64_t rank[3] = {2127, 1467, 808};
    for (int i = 0; i < 3; i++) {
        double dl = mp_fraction_for_ratio(&c, ratio[i]);
        int64_t r = mp_rank_for_fraction(dl, c.moe_ffn, c.hidden);
        printf("mixtral-8x7b: ratio %.0f%% -> delta %.4f -> rank %lld (DESIGN.md: %.3f, %lld)\n", 100 * ratio[i], dl,
               (long long)r, delta[i], (long long)rank[i]);
        CHECK(fabs(dl - delta[i]) < 0.003);
        CHECK(llabs(r - rank[i]) <= 8);
        CHECK(mp_compression_ratio(&c, dl) >= ratio[i]);
    }
    CHECK(mp_fraction_for_ratio(&c, 0.9) < 0); /* the dense bases alone exceed that budget */
    mp_config_free(&c);
}

/* per-element (Fisher) weights: only expert 1 counts -> the base is W_1; equal or zero weights -> mean */
static void fisher_weights(void)
{
    float w0[6] = {1, 2, 3, 4, 5, 6}, w1[6] = {-1, 0, 7, 8, 9, 10}, one[6] = {1, 1, 1, 1, 1, 1}, zero[6] = {0};
    const float *W[2] = {w0, w1}, *only1[2] = {zero, one}, *eq[2] = {one, one}, *none[2] = {zero, zero};
    float out[6];
    mp_base_rows_elem(2, 2, 3, W, only1, out);
    CHECK(!memcmp(out, w1, sizeof out));
    mp_base_rows_elem(2, 2, 3, W, eq, out);
    for (int i = 0; i < 6; i++)
        CHECK(out[i] == 0.5f * (w0[i] + w1[i]));
    mp_base_rows_elem(2, 2, 3, W, none, out);
    CHECK(out[2] == 5.0f);
}

int main(void)
{
    identity_tests();
    fisher_weights();
    ratio_example();
    numpy_reference();
    return t_done("decompose");
}
