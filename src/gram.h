/* gram.h - Gram matrices accumulated from fp32 activations: fp32 SSYRK per chunk, fp64 sum of the chunks.
 *
 * A Gram G = sum_t x_t x_t^T over many tokens is accumulated chunk by chunk:
 * each chunk of at most MP_GRAM_CHUNK rows is multiplied in fp32 (twice the
 * rate of fp64; upper triangle only, in panels of 256 rows: SSYRK on the
 * diagonal block, SGEMM right of it) and each panel is added into the fp64
 * sum while it is in cache. With chunks fixed by global token index, the sum
 * is the same bit for bit for any split of the tokens over ranks. The error
 * against a pure fp64 sum is that of fp32 dot products of at most
 * MP_GRAM_CHUNK terms (about sqrt(nb) * 2^-24 relative per chunk; the
 * fixtures measure ~1e-7 in the Frobenius norm, tests/test_gram.c).
 * G holds only its upper triangle, packed row by row (mp_gram_at: row i from
 * [i n - i (i - 1) / 2], n (n + 1) / 2 doubles: half the memory of the full
 * matrix, and the layout of the statistics files). Local. */
#ifndef MP_GRAM_H
#define MP_GRAM_H
#include <stdint.h>

#define MP_GRAM_CHUNK 256 /* rows per fp32 chunk */
#define MP_GRAM_PANEL 256 /* rows of the triangle per step (the scratch holds MP_GRAM_PANEL n floats) */

/* the index of G[i, j] (i <= j) in a packed upper triangle of order n */
static inline int64_t mp_gram_at(int64_t n, int64_t i, int64_t j) { return i * n - i * (i - 1) / 2 + (j - i); }

/* G [n (n + 1) / 2] fp64 (packed upper triangle) += upper(x^T x) of x [nb, n] (row-major,
 * nb <= MP_GRAM_CHUNK), computed in fp32 in scratch [MP_GRAM_PANEL n] (workspace). sq [n], when not
 * NULL: sq[j] += sum_i x[i, j]^2 in fp64. */
void mp_gram_add_chunk(const float *x, int nb, int n, float *scratch, double *G, double *sq);

#endif
