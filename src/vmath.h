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
#include <math.h>
#include <stdint.h>

/* y[i] = exp(x[i]) for n values (x == y allowed) */
void mp_vexp(const float *x, float *y, int64_t n);

/* g[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i] (the SwiGLU gate; transformers' act_fn(gate) * up) */
void mp_silu_mul(float *g, const float *u, int64_t n);

/* the largest of x[n] (n >= 1; NaN propagates as `a > m ? a : m` does) */
float mp_vmax(const float *x, int64_t n);

/* x[i] = exp(x[i] - m) for n values; returns their fp32 sum (16 partial sums in a fixed order) */
float mp_exp_shift_sum(float *x, int64_t n, float m);

/* The log-sum-exp of a row of logits in blocks of MP_LSE_BLOCK values, the blocks in which the output head
 * computes them (mpi/ep_forward.c): per block its max and the fp64 sum of exp(x - max) (exp in fp32, 16
 * partial sums), added block by block in order into a running (max, sum) in fp64. A row's log-sum-exp has
 * the same bits whether its logits were computed a block at a time or all at once. */
#define MP_LSE_BLOCK 4096
typedef struct {
    double m, z, t; /* the running max, sum exp(x - m) and (with mp_kl_block's terms) sum exp(a - m) (a - b) */
} mp_lse;
/* an empty row: no block yet */
static inline mp_lse mp_lse_empty(void) { return (mp_lse){-INFINITY, 0, 0}; }
/* one block x[n] (n >= 1): returns sum exp(x[i] - *mx), *mx = the block's max */
double mp_lse_block(const float *x, int64_t n, float *mx);
/* sum exp(a[i] - ma) (a[i] - b[i]) over a block of a and b (fp64, exp in fp32; ma = the block's max of a) */
double mp_kl_block(const float *a, const float *b, int64_t n, float ma);
/* the next block (its max mx, mp_lse_block's sum s, mp_kl_block's sum kl or 0) into l. At the end
 * log-sum-exp = mp_lse_value(&l), and with a's blocks E_p[a - b] = l.t / l.z for p = softmax(a), so that
 * KL(p || softmax(b)) = l.t / l.z - lse(a) + lse(b). */
void mp_lse_add(mp_lse *l, float mx, double s, double kl);
/* the log-sum-exp of the blocks added so far: l.m + log(l.z) */
static inline double mp_lse_value(const mp_lse *l) { return l->m + log(l->z); }

/* -log softmax(r)[y] of one row r [V] of logits: its log-sum-exp (the blocks above) - r[y] */
double mp_row_nll(const float *r, int V, int y);

/* the index of the first non-finite value (inf or NaN) of x[n], -1 if there is none (a bit test over all
 * values first: the checkpoint reader checks every weight it loads) */
int64_t mp_first_nonfinite(const float *x, int64_t n);

#endif
