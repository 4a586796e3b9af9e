/* blocks.h - the blocks of a MoE layer as the measure and quantize stages see them: weights, input
 * Gram (the GPTQ Hessian) and a sample of inputs, loaded from the model and the committed results of
 * the calibration and decomposition stages (block order and kinds: io/allocation.h).
 *
 * Per block (m outputs, n inputs):
 *  - BASE p: W = the D2 base (decomp/layerLLLL/base.h5), H = sum over experts of the regularised Gram
 *    (G_in for gate/up, G_mid for down), X = the experts' samples stacked in expert order;
 *  - DELTA p of expert e: the factors U [m, rmax], V [rmax, n] as stored (nested: rank r uses the
 *    first r columns of U and rows of V), the spectrum sigma and ||Delta S||^2 (truncation loss of
 *    rank r = energy - sum_{j<r} sigma_j^2), H = the expert's regularised Gram, X its sample;
 *  - EXPERT / SHARED / DENSE p: W = the checkpoint's weight, H its regularised Gram, X its sample (DENSE:
 *    the dense MLP of a non-MoE layer, model.layers.L.mlp.{gate,up,down}_proj, calib/layerLLLL/dense.h5).
 * The regularised Gram is stats.h's mp_stats_regularized (the neutral prior for starved experts).
 * tokens = the tokens H was summed over (with the prior's virtual tokens), so a sample's loss scales
 * by tokens / t.
 * Local (each rank loads the blocks it owns); no MPI. */
#ifndef MP_BLOCKS_H
#define MP_BLOCKS_H
#include <stdint.h>

#include "allocation.h"
#include "job.h"
#include "model.h"
#include "quant.h"

typedef struct {
    const mp_model *m;
    const mp_job *job;
    const char *stats_dir;  /* checkpoint.dir/calib */
    const char *decomp_dir; /* checkpoint.dir/decomp, NULL with the decomposition off */
} mp_blocks_ctx;

typedef struct {
    mp_block_kind kind;
    int layer, unit, proj;
    int64_t m, n;
    float *W;             /* dense blocks [m, n]; NULL for DELTA */
    float *U, *V;         /* DELTA: [m, rmax], [rmax, n] */
    int64_t rmax, k;      /* stored rank, spectrum length */
    double *sigma, energy; /* DELTA: spectrum [k], ||Delta S||_F^2 */
    double *H;            /* [n, n] */
    double tokens;        /* tokens behind H (incl. the prior's) */
    float *X;             /* [t, n] sampled inputs, NULL when t = 0 */
    int64_t t;
} mp_block_src;

/* The three projections (gate, up, down) of unit `unit` of layer l: -1 = the base (decomposition on),
 * 0..E-1 = an expert (DELTA with the decomposition on, EXPERT otherwise), E = the shared expert,
 * MP_UNIT_DENSE = the dense MLP of a non-MoE layer. */
int mp_blocks_load(const mp_blocks_ctx *cx, int l, int unit, mp_block_src b[3]);
void mp_blocks_free(mp_block_src b[3]);

/* The truncation loss of a DELTA at rank r (0 <= r <= rmax): energy - sum_{j<r} sigma_j^2, >= 0. */
double mp_block_trunc_loss(const mp_block_src *b, int64_t r);

/* The pieces of a DELTA at rank r >= 1: Ur [m, r], Vr [r, n] copies, HU = Vr H Vr^T [r, r] (U's Hessian),
 * OV = Ur^T Ur [r, r] (V's output metric), XU = X Vr^T [t, r] (U's sampled inputs; NULL when t = 0).
 * Any output pointer may be NULL when not wanted. Caller frees. */
int mp_block_delta_at(const mp_block_src *b, int64_t r, float **Ur, float **Vr, double **HU, double **OV,
                      float **XU);

/* Quantize the block as choice c says (its kind/unit/proj must match b), with the job's quantizer
 * (quant.method, quant.percdamp, quant.act_order): exactly the codes the measure stage measured.
 * Dense: *q0; DELTA of rank r >= 1: *q0 = U_r, *q1 = V_r; rank 0: both NULL. */
int mp_block_quantize(const mp_block_src *b, const mp_job *job, const mp_choice *c, mp_qtensor **q0,
                      mp_qtensor **q1);

#endif
