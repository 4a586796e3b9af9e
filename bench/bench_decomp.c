/* bench_decomp.c - the D2 numerics of one block, single-threaded BLAS:
 *  1. one delta's decomposition (mp_whiten + mp_whitened_svd: regularise, potrf, Delta S, gesdd, factors,
 *     trsm) vs the bare LAPACK/BLAS calls it needs on the same matrices (potrf + trmm + gesdd + trsm);
 * *  2. the randomized solver (p = 16, q = 3) vs the exact one at r = n/8 and n/4: speed-up and the ratio of
 *     their truncation losses ||(Delta - U V) S||_F^2.
 * Ratios are measured in the same run (best of 3).   usage: bench_decomp [M N]  (default 1536 1024) */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "decompose.h"
#include "rng.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double loss(const double *D, const double *U, const double *V, const double *S, int m, int n, int r)
{
    double *R = malloc(sizeof(double) * (size_t)m * n), s = 0;
    memcpy(R, D, sizeof(double) * (size_t)m * n);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, r, -1.0, U, r, V, n, 1.0, R, n);
    cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, m, n, 1.0, S, n, R, n);
    for (int64_t i = 0; i < (int64_t)m * n; i++)
        s += R[i] * R[i];
    free(R);
    return s;
}

static int P_OS = 16, Q_IT = 3;

int main(int argc, char **argv)
{
    if (getenv("RSVD_P"))
        P_OS = atoi(getenv("RSVD_P"));
    if (getenv("RSVD_Q"))
        Q_IT = atoi(getenv("RSVD_Q"));
    openblas_set_num_threads(1);
    int m = argc > 2 ? atoi(argv[1]) : 1536, n = argc > 2 ? atoi(argv[2]) : 1024, t = 2 * n, k = m < n ? m : n;
    mp_rng g;
    mp_rng_seed(&g, 3);
    double *D = malloc(sizeof(double) * (size_t)m * n), *X = malloc(sizeof(double) * (size_t)n * t);
    double *G = malloc(sizeof(double) * (size_t)n * n), *S = malloc(sizeof(double) * (size_t)n * n);
    double *A = malloc(sizeof(double) * (size_t)m * n), *u = malloc(sizeof(double) * (size_t)m * k);
    double *vt = malloc(sizeof(double) * (size_t)k * n), *sig = malloc(sizeof(double) * (size_t)k);
    double *U = malloc(sizeof(double) * (size_t)m * k), *V = malloc(sizeof(double) * (size_t)k * n);
    /* a delta whose singular values decay like j^-0.8 (P Q with scaled rows of Q) and correlated inputs */
    int pr = k;
    double *P = malloc(sizeof(double) * (size_t)m * pr), *Q = malloc(sizeof(double) * (size_t)pr * n);
    for (int64_t i = 0; i < (int64_t)m * pr; i++)
        P[i] = mp_rng_normal(&g);
    for (int64_t i = 0; i < (int64_t)pr * n; i++)
        Q[i] = mp_rng_normal(&g) * pow(1 + (double)(i / n), -0.8);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, pr, 1.0, P, pr, Q, n, 0.0, D, n);
    for (int64_t i = 0; i < (int64_t)n * t; i++)
        X[i] = mp_rng_normal(&g) * (1 + (double)(i / t) / n);
    cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, n, t, 1.0, X, t, 0.0, G, n);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            G[(int64_t)i * n + j] = G[(int64_t)j * n + i];
    int r = n / 4;
    double best_ours = 1e30, best_bare = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now(), lam = 1e-6;
        mp_whiten(G, n, &lam, S);
        mp_whitened_svd(D, m, n, S, r, U, V, sig);
        double t1 = now();
        /* the bare calls: potrf, trmm, gesdd, trsm */
        memcpy(S, G, sizeof(double) * (size_t)n * n);
        for (int i = 0; i < n; i++)
            S[(int64_t)i * n + i] += 1e-6;
        LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', n, S, n);
        memcpy(A, D, sizeof(double) * (size_t)m * n);
        cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, m, n, 1.0, S, n, A, n);
        LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, n, A, n, sig, u, k, vt, n);
        cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, r, n, 1.0, S, n, vt, n);
        double t2 = now();
        best_ours = t1 - t0 < best_ours ? t1 - t0 : best_ours;
        best_bare = t2 - t1 < best_bare ? t2 - t1 : best_bare;
    }
    printf("block %d x %d, rank %d, one BLAS thread\n", m, n, r);
    printf("  decomposition %.3f s vs bare potrf+trmm+gesdd+trsm %.3f s: ratio %.3f\n", best_ours, best_bare,
           best_ours / best_bare);
    double lam = 1e-6;
    mp_whiten(G, n, &lam, S);
    for (int div = 8; div >= 4; div /= 2) {
        r = n / div;
        double te = 1e30, tr = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            double t0 = now();
            mp_whitened_svd(D, m, n, S, r, U, V, sig);
            double t1 = now();
            mp_whitened_rsvd(D, m, n, S, r, P_OS, Q_IT, 99, U, V, sig);
            double t2 = now();
            te = t1 - t0 < te ? t1 - t0 : te;
            tr = t2 - t1 < tr ? t2 - t1 : tr;
        }
        mp_whitened_svd(D, m, n, S, r, U, V, sig);
        double le = loss(D, U, V, S, m, n, r);
        mp_whitened_rsvd(D, m, n, S, r, P_OS, Q_IT, 99, U, V, sig);
        double lr = loss(D, U, V, S, m, n, r);
        printf("  r = n/%d = %d: exact %.3f s, randomized %.3f s: speed-up %.2fx, loss ratio %.4f\n", div, r, te, tr,
               te / tr, lr / le);
    }
    free(D), free(X), free(G), free(S), free(A), free(u), free(vt), free(sig), free(U), free(V), free(P), free(Q);
    return 0;
}
