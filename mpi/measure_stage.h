/* measure_stage.h - the measure stage (DESIGN section 4): loss, bytes and cost of every option of every
 * block of every MoE layer and of every dense MLP of a non-MoE layer, committed per layer to
 * checkpoint.dir/measure (io/tables.h).
 *
 * Units of MoE layer l: the routed experts 0..E-1, the shared expert (unit E, when the model has one)
 * and the base (unit E + 1, with the decomposition on); unit u is measured by rank (l (E + 2) + u) mod P,
 * which loads its blocks (blocks.h) and, per projection:
 *  - dense block (base, expert with the decomposition off, shared expert): for every format of
 *    quant.formats, quantize with the job's quantizer (GPTQ with one prepared Hessian factor per block,
 *    or RTN) and measure loss = tr(E H E^T) (activation formats: on the block's input sample, scaled to
 *    the tokens of H; without a sample the weight error alone, counted in the summary);
 *  - delta of expert e: for each candidate rank r (0, the ranks of delta.candidates clamped to the
 *    stored rank, and the stored rank), the truncation loss from the spectrum, and for r >= 1 and every
 *    format the loss of U_r seen through V_r (Hessian V_r G V_r^T) and of V_r seen through U_r (Hessian
 *    G, output metric U_r^T U_r), each exact for its place in the product;
 *  - the cost of each option: cost.h's roofline (measure.device, default H100 SXM; measure.timings
 *    replaces it where it has entries) at M = the block's tokens in a design batch of
 *    measure.batch_tokens tokens: batch * top_k * n_e / sum n (an expert, at least 1), batch * top_k (the
 *    base), batch (the shared expert).
 * A non-MoE layer with a dense MLP has one unit, the dense MLP (model_config.h: MP_UNIT_DENSE, measured by
 * the rank of index 0, table dense.h5), measured like the shared expert (one row per format, M = batch);
 * its normaliser is the dense MLP's output energy on the same tokens, tr(W_down G_mid W_down^T) (every
 * token, exact from its Gram), so that its losses compare with the MoE layers' relative errors.
 * Normaliser: the layer's MoE output energy on the calibration tokens, sum over the routed (token,
 * expert) pairs and the shared expert of ||W_down h||^2 = sum_u tr(W_down,u G_mid,u W_down,u^T) (exact from
 * the Grams); every loss is stored raw and divided by it. Owners contribute their units' terms, summed in
 * unit order (the same for any rank count). Summary: blocks, options (of the allocation, with the job's
 * quant.factor_formats), damping_raised, unsampled. Stage functions of the table in pipeline.c. */
#ifndef MP_MEASURE_STAGE_H
#define MP_MEASURE_STAGE_H

#include "pipeline.h"

int mp_measure_begin(mp_run *r, int s);
int mp_measure_layer(mp_run *r, int s, int l, int committed);
int mp_measure_end(mp_run *r, int s, int ok);
void mp_measure_print(const mp_run *r, int s, FILE *out);

/* The candidate ranks of a delta with stored rank rmax in an [m, n] block: 0, the job's delta.candidates
 * as ranks (decompose.h's mp_rank_for_fraction) clamped to rmax, and rmax; increasing, no duplicates.
 * Returns the count (at most 18). */
int mp_measure_ranks(const mp_job *job, int64_t m, int64_t n, int64_t rmax, int64_t *ranks);

#endif
