/* qgemm.h - products of token rows with quantized blocks, grouped over the experts of a layer, on the CPU:
 * the validation's CPU path and the reference of the GPU kernels (src/gpu/qgemm_gpu.h computes the same
 * three operations). Serial and local: BLAS (sgemm), no MPI, no file I/O.
 *
 * Grouped product. Items (one per expert) name row ranges of one token matrix X and one output Y:
 *   Y[row0 + i, 0:m] (=|+=) X[row0 + i, 0:n] W^T,  i < rows,  W [m, n] an mp_qtensor in any format of the
 * table (quant.h), each item its own format. X [*, ldx] and Y [*, ldy] are row-major in fp32, fp16 or
 * bf16 (mp_qg_type); ldx >= n and ldy >= m of every item. The weights are dequantized by
 * mp_qtensor_dequant (the definition of the format), a panel of rows at a time, never the whole block;
 * 16-bit X is converted to fp32, the product is an fp32 sgemm; a 16-bit Y is rounded once (to nearest
 * even) from the fp32 result (+ the old value when accumulating). Activation formats (w8a8, w4a4): each
 * X row's first n values are quantized per token with mp_quant_act(act_bits) before the product, i.e.
 * Y = Qa(X) Wq^T, the definition mp_loss_act measures.
 *
 * Low-rank delta. Y[rows] += (X V^T) U^T per item with U [m, r] and V [r, n] quantized blocks (their own
 * formats): T = X V^T [rows, r] is kept in fp32 and is the input of U (quantized per token when U has an
 * activation format). Base + delta: Y[0:rows] = X W_b^T for one base block shared by the layer, run once
 * on all stacked rows, then every item's delta added (with a 16-bit Y the base product is rounded before
 * the delta is added: two roundings). Factors are never folded into dense per-expert weights.
 *
 * Items' row ranges must be disjoint (checked); rows = 0 is allowed (an expert no token chose). Errors:
 * MP_EUSAGE naming `label` and the item (NULL block, bad type, ld too small, negative or overlapping rows,
 * U/V ranks or shapes that do not match, a base whose shape differs from the deltas'), MP_ENOMEM.
 * Thread safety: no global state; BLAS threading is the caller's choice. */
#ifndef MP_QGEMM_H
#define MP_QGEMM_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

typedef enum { MP_QG_F32 = 0, MP_QG_F16 = 1, MP_QG_BF16 = 2 } mp_qg_type;
size_t mp_qg_type_size(mp_qg_type t); /* 4 or 2; 0 for a value outside the enum */
const char *mp_qg_type_name(mp_qg_type t);

typedef struct {
    const mp_qtensor *w; /* W [m, n] */
    int64_t row0, rows;  /* the item's token rows in X and Y */
} mp_qgemm_item;

typedef struct {
    const mp_qtensor *u; /* U [m, r]; u and v both NULL: no delta for these rows */
    const mp_qtensor *v; /* V [r, n] */
    int64_t row0, rows;
} mp_qdelta_item;

/* Y[rows of item] = X W^T (accumulate = 0) or Y += X W^T (accumulate = 1), for every item. */
int mp_qgemm_grouped(const mp_qgemm_item *items, int count, const void *X, mp_qg_type xt, int64_t ldx, void *Y,
                     mp_qg_type yt, int64_t ldy, int accumulate, const char *label);
/* Y[rows of item] += (X V^T) U^T for every item (T in fp32). */
int mp_qgemm_delta(const mp_qdelta_item *items, int count, const void *X, mp_qg_type xt, int64_t ldx, void *Y,
                   mp_qg_type yt, int64_t ldy, const char *label);
/* Y[0:rows] = X W_b^T, then Y[rows of item] += (X V^T) U^T; items lie inside [0, rows). */
int mp_qgemm_base_delta(const mp_qtensor *base, int64_t rows, const mp_qdelta_item *items, int count, const void *X,
                        mp_qg_type xt, int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy, const char *label);

/* The argument checks of the three calls (shared with the GPU implementation): 0 or MP_EUSAGE. For the
 * delta form, *r_max receives the largest rank (may be NULL). rows_total < 0: no base bound. */
int mp_qgemm_check(const mp_qgemm_item *items, int count, mp_qg_type xt, int64_t ldx, mp_qg_type yt, int64_t ldy,
                   const char *label);
int mp_qdelta_check(const mp_qtensor *base, int64_t rows_total, const mp_qdelta_item *items, int count, mp_qg_type xt,
                    int64_t ldx, mp_qg_type yt, int64_t ldy, int64_t *r_max, const char *label);

/* Element conversions of the token matrices: to fp32 (exact) and from fp32 (round to nearest even). */
float mp_qg_load(const void *p, mp_qg_type t, int64_t i);
void mp_qg_store(void *p, mp_qg_type t, int64_t i, float v);

#endif
