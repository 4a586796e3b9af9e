/* bench_scalapack.c - the ScaLAPACK whitened SVD of one N x N block (default 2048; the 4096 with
 * an argument) on however many ranks mpiexec starts, one BLAS thread per rank; bench/scalapack.sh runs
 * it with 1 and 2 ranks and prints the speed-up (times measured in the same script run).
 *   usage: bench_scalapack [N] */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "blacs_svd.h"
#include "rng.h"
#include "runtime.h"

int main(int argc, char **argv)
{
    if (mp_mpi_init(&argc, &argv) < 0)
        return 8;
    int n = argc > 1 ? atoi(argv[1]) : 2048, root = 0, r = n / 4;
    double *D = NULL, *G = NULL, *U = NULL, *V = NULL, *s = NULL;
    if (mp_mpi_rank() == root) {
        mp_rng g;
        mp_rng_seed(&g, 1);
        D = malloc(sizeof(double) * (size_t)n * n), G = malloc(sizeof(double) * (size_t)n * n);
        double *X = malloc(sizeof(double) * (size_t)n * 2 * n);
        for (int64_t i = 0; i < (int64_t)n * n; i++)
            D[i] = mp_rng_normal(&g);
        for (int64_t i = 0; i < (int64_t)n * 2 * n; i++)
            X[i] = mp_rng_normal(&g);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, 2 * n, 1.0, X, 2 * n, X, 2 * n, 0.0, G, n);
        free(X);
        U = malloc(sizeof(double) * (size_t)n * r), V = malloc(sizeof(double) * (size_t)r * n);
        s = malloc(sizeof(double) * (size_t)n);
    }
    double lam = 1e-6;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    int rc = mp_pwhitened_svd(root, D, n, n, G, &lam, r, U, V, s);
    double t = MPI_Wtime() - t0;
    if (mp_mpi_rank() == 0)
        printf("ScaLAPACK whitened SVD %d x %d, rank %d, %d rank%s: %.2f s%s\n", n, n, r, mp_mpi_size(),
               mp_mpi_size() == 1 ? "" : "s", t, rc ? " (FAILED)" : "");
    free(D), free(G), free(U), free(V), free(s);
    mp_mpi_finalize();
    return rc ? 1 : 0;
}
