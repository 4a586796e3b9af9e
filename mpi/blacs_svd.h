/* blacs_svd.h - the whitened SVD of one delta with ScaLAPACK on all ranks.
 *
 * The same factors as mp_whitened_svd (src/decompose.h) for matrices too
 * large for one rank, or when a layer has fewer experts than ranks: the root
 * holds Delta [m, n] and the Gram G [n, n] (row-major); they are distributed
 * block-cyclically (64 x 64 blocks) over a near-square BLACS grid of all
 * ranks, then pdpotrf (S = chol(G + lambda mean(diag G) I), lambda raised
 * x10 on failure), pdtrmm (A = Delta S), pdgesvd, column/row scaling by
 * sigma^(1/2) and pdtrsm (V = Sigma_r^(1/2) V_r^T S^-1); U [m, r], V [r, n]
 * and sigma [min(m, n)] come back to the root (row-major). Results agree
 * with the LAPACK path to rounding; they depend on the grid, so they are not
 * bit-identical across rank counts. Collective over MPI_COMM_WORLD. */
#ifndef MP_BLACS_SVD_H
#define MP_BLACS_SVD_H
#include <stdint.h>

/* Delta, G: read on root only. *lambda: root's value in, used value out (all ranks). U, V, sigma:
 * written on root only. */
int mp_pwhitened_svd(int root, const double *Delta, int64_t m, int64_t n, const double *G, double *lambda,
                     int64_t r, double *U, double *V, double *sigma);

#endif
