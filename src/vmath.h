/* vmath.h - the forward pass's elementwise kernels (exp-based; the weights' finiteness check), vectorised.
 *
 * glibc's expf is a scalar call (7.7 % of an eval's samples on Mixtral, plus the loops around it). These
 * kernels evaluate exp as a Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, and exp(r) by its Taylor
 * series to r^7 (truncation < 6e-9 relative; with the fp32 rounding of the Horner steps the result is
 * within 2 ulp of the true exp, tests/test_vmath.c measures it against an fp64 exp), then 2^n in two
 * factors so that subnormal results come out right. Loops are written so that the compiler vectorises
 * them; sums use 16 partial sums in a fixed order and the file is built without fused multiply-adds, so
 * every instruction set (SSE2, AVX2, AVX-512 clones where the compiler supports them) gives the same bits.
 * exp(-inf) = 0, exp(x > 88.73) = inf, NaN stays NaN. Local; no allocation. */
#ifndef MP_VMATH_H
#define MP_VMATH_H
#include <stdint.h>

/* y[i] = exp(x[i]) for n values (x == y allowed) */
void mp_vexp(const float *x, float *y, int64_t n);

/* g[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i] (the SwiGLU gate; transformers' act_fn(gate) * up) */
void mp_silu_mul(float *g, const float *u, int64_t n);

/* the largest of x[n] (n >= 1; NaN propagates as `a > m ? a : m` does) */
float mp_vmax(const float *x, int64_t n);

/* x[i] = exp(x[i] - m) for n values; returns their fp32 sum (16 partial sums in a fixed order) */
float mp_exp_shift_sum(float *x, int64_t n, float m);

/* -log softmax(r)[y] of one row r [V] of logits: exp in fp32, the sum of the exponentials in fp64 */
double mp_row_nll(const float *r, int V, int y);

/* the index of the first non-finite value (inf or NaN) of x[n], -1 if there is none (a bit test over all
 * values first: the checkpoint reader checks every weight it loads) */
int64_t mp_first_nonfinite(const float *x, int64_t n);

#endif
