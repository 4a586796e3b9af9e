/* decompose.h - D2-MoE numerics for one block: importance-weighted base,
 * whitened (truncation-aware) SVD of the deltas. Serial, LAPACK/BLAS, fp64.
 *
 * Shapes: a projection's weights are W_i [m, n] (row-major [out, in]); its
 * input Gram G [n, n] (G_in for gate/up, G_mid for down).
 *   base:    W_b = sum_i alpha_i (.) W_i, alpha_i = w_i / sum_j w_j elementwise,
 *            w_i[r, c] = n_i ("frequency") or G_i[c, c] ("activation");
 *            when every weight of an element is 0 the experts count equally.
 *   whiten:  S = chol(G + lambda mean(diag G) I), lower; lambda is multiplied
 *            by 10 until the factorisation succeeds (up to lambda = 1) and the
 *            value used is returned.
 *   svd:     A = Delta S = U Sigma V^T; rank r factors
 *            U_r Sigma_r^(1/2) [m, r] and Sigma_r^(1/2) V_r^T S^-1 [r, n]
 *            (triangular solve). sigma[min(m, n)] is the whole spectrum:
 *            ||(Delta - U V) X||_F^2 = sum_{j >= r} sigma_j^2 when G = X X^T.
 *   randomized: the same factors from a seeded randomized SVD (Gaussian test
 *            matrix, oversampling p, q power iterations with re-orthogonalisation);
 *            sigma then holds only the first r + p values, the rest are 0.
 * Errors: MP_ENUMERIC for non-finite input or a failed factorisation. */
#ifndef MP_DECOMPOSE_H
#define MP_DECOMPOSE_H
#include <stdint.h>

#include "model_config.h"

typedef enum { MP_WEIGHTS_FREQUENCY, MP_WEIGHTS_ACTIVATION } mp_weight_source;

/* Rows [r0, r1) of the base. W[i] points at expert i's rows [r0, r1) (row-major, n columns);
 * count[i] = tokens of expert i; gdiag[i][n] = diag of expert i's input Gram. out[(r1-r0) * n]. */
void mp_base_rows(int E, int64_t nrows, int64_t n, const float *const *W, const int64_t *count,
                  const double *const *gdiag, mp_weight_source src, float *out);
/* The same with per-element weights (the "fisher" source): F[i] points at expert i's weights for the
 * same rows, [nrows, n]. */
void mp_base_rows_elem(int E, int64_t nrows, int64_t n, const float *const *W, const float *const *F, float *out);
/* S [n, n] lower (upper part zeroed) from G [n, n]; *lambda in: starting value, out: used value. */
int mp_whiten(const double *G, int64_t n, double *lambda, double *S);
/* Factors of rank r of Delta [m, n] with whitening S [n, n]. U [m, r], V [r, n], sigma [min(m, n)]
 * (U/V may be NULL when r = 0 to get the spectrum only). */
int mp_whitened_svd(const double *Delta, int64_t m, int64_t n, const double *S, int64_t r, double *U, double *V,
                    double *sigma);
int mp_whitened_rsvd(const double *Delta, int64_t m, int64_t n, const double *S, int64_t r, int p, int q,
                     uint64_t seed, double *U, double *V, double *sigma);
/* r = floor(delta m n / (m + n)) */
int64_t mp_rank_for_fraction(double delta, int64_t m, int64_t n);

/* Overall compression ratio 1 - compressed/original of the whole model (every parameter the registry
 * lists) when each MoE layer keeps a dense base and every expert's three deltas at fraction delta. */
double mp_compression_ratio(const mp_config *c, double delta);
/* The largest delta whose compression ratio is at least `ratio` (bisection); -1 when even delta = 0
 * does not compress that much (the base alone is larger than the budget). */
double mp_fraction_for_ratio(const mp_config *c, double ratio);

#endif
