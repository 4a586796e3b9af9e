/* test_scalapack.c - run with mpiexec -n 1, 2, 4: the ScaLAPACK whitened SVD
 * (pdpotrf, pdtrmm, pdgesvd, pdtrsm on a BLACS grid) against the LAPACK path
 * on the same delta and Gram (made on the root, whose rank varies): singular
 * values and the rank-r product U V agree to 1e-9 relative, for a tall, a
 * wide and a square block, with the root being rank 0 or the last rank; a
 * singular Gram gets the same raised lambda. */
#include <cblas.h>

#include "blacs_svd.h"
#include "decompose.h"
#include "rng.h"
#include "runtime.h"
#include "testutil.h"

static void one_case(int m, int n, int r, int root, int singular)
{
    int is_root = mp_mpi_rank() == root, k = m < n ? m : n, t = singular ? n / 3 : 3 * n;
    double *D = NULL, *G = NULL, *U = NULL, *V = NULL, *sig = NULL;
    if (is_root) {
        mp_rng g;
        mp_rng_seed(&g, (uint64_t)(m * 131 + n));
        D = malloc(sizeof(double) * m * n), G = calloc((size_t)n * n, sizeof(double));
        double *X = malloc(sizeof(double) * n * t);
        for (int i = 0; i < m * n; i++)
            D[i] = mp_rng_normal(&g) / (1 + i % 5);
        for (int i = 0; i < n * t; i++)
            X[i] = mp_rng_normal(&g) * (1 + (i / t) % 4);
        cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, n, t, 1.0, X, t, 0.0, G, n);
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
                G[i * n + j] = G[j * n + i];
        free(X);
        U = malloc(sizeof(double) * m * r), V = malloc(sizeof(double) * r * n), sig = malloc(sizeof(double) * k);
    }
    double lam = singular ? 1e-14 : 1e-6;
    CHECK_OK(mp_pwhitened_svd(root, D, m, n, G, &lam, r, U, V, sig));
    if (is_root) {
        double lam2 = singular ? 1e-14 : 1e-6, *S = malloc(sizeof(double) * n * n);
        double *U2 = malloc(sizeof(double) * m * r), *V2 = malloc(sizeof(double) * r * n), *s2 = malloc(sizeof(double) * k);
        CHECK_OK(mp_whiten(G, n, &lam2, S));
        CHECK_OK(mp_whitened_svd(D, m, n, S, r, U2, V2, s2));
        double es = 0, ep = 0, sp = 0;
        for (int j = 0; j < k; j++)
            es = fmax(es, fabs(sig[j] - s2[j]) / s2[0]);
        double *P = malloc(sizeof(double) * m * n), *P2 = malloc(sizeof(double) * m * n);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, r, 1.0, U, r, V, n, 0.0, P, n);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, r, 1.0, U2, r, V2, n, 0.0, P2, n);
        for (int i = 0; i < m * n; i++)
            ep = fmax(ep, fabs(P[i] - P2[i])), sp = fmax(sp, fabs(P2[i]));
        printf("%d ranks, root %d, %d x %d rank %d%s: sigma rel err %.1e, UV rel err %.1e, lambda %.0e (LAPACK %.0e)\n",
               mp_mpi_size(), root, m, n, r, singular ? " (singular Gram)" : "", es, ep / sp, lam, lam2);
        CHECK(es <= 1e-9);
        CHECK(ep <= 1e-9 * sp);
        CHECK(lam == lam2);
        free(S), free(U2), free(V2), free(s2), free(P), free(P2);
    }
    free(D), free(G), free(U), free(V), free(sig);
}

int main(int argc, char **argv)
{
    CHECK_OK(mp_mpi_init(&argc, &argv));
    int last = mp_mpi_size() - 1;
    one_case(150, 100, 20, 0, 0);
    one_case(90, 170, 30, last, 0);
    one_case(130, 130, 64, last, 0);
    one_case(80, 60, 10, 0, 1);
    int f = t_failures, all = 0;
    MPI_Allreduce(&f, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    mp_mpi_finalize();
    return all ? 1 : (mp_mpi_rank() == 0 ? t_done("scalapack") : 0);
}
