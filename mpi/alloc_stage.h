/* alloc_stage.h - the allocate stage (DESIGN section 5): one global allocation of ranks and formats.
 *
 * Rank 0 reads every measure table (io/tables.h) and builds a multiple-choice knapsack (src/alloc.h):
 * one group per block (io/allocation.h's order, layer by layer), its options
 *  - dense block: one per format of quant.formats (tag: the format);
 *  - delta: rank 0 (the base alone: no bytes, loss = the whole truncation), and for each candidate rank
 *    r >= 1 and formats f_U, f_V (quant.factor_formats = independent: every pair; same: f_U = f_V):
 *    loss trunc(r) + U(r, f_U) + V(r, f_V), bytes and cost the sums (tag: the pair; rank 0 its own);
 * with loss the normalised loss of the tables. quant.tie_gate_up = true ties the gate and up groups of
 * every unit (one group of the pairs with equal tags: the same format(s), ranks free).
 * Budget: budget.bytes, or budget.bits_per_weight * (the compressed weights: routed and shared experts
 * of the MoE layers and the dense MLPs of the non-MoE layers, mp_moe_weights) / 8. A dense MLP's blocks
 * are groups like the shared expert's (read from measure/layerLLLL/dense.h5).
 * allocate.r = 1 minimises the total loss exactly (or with the gap reported); r < 1 MxMoE's
 * r log L + (1 - r) log T (mp_mckp_solve_tradeoff). A budget below the smallest possible model is a
 * usage error saying the minimum (bytes and bits per weight); one above what every block's best option
 * needs is reported and those options are taken. For comparison the stage also solves the per-layer
 * allocation (budget split by each layer's weights) and the best uniform allocation (one format for every
 * block, deltas at their largest rank) within the budget.
 * Per MoE layer rank 0 writes checkpoint.dir/alloc/layerLLLL/alloc.json, committed like every unit; a
 * restart after the stage does not solve again. Summary: budget_bytes, bytes, bits_per_weight,
 * loss, lower_bound, gap, optimal, min_bytes, max_bytes, per_layer_loss, uniform_loss, uniform_bytes,
 * options. */
#ifndef MP_ALLOC_STAGE_H
#define MP_ALLOC_STAGE_H

#include "pipeline.h"

int mp_allocate_begin(mp_run *r, int s);
int mp_allocate_layer(mp_run *r, int s, int l, int committed);
int mp_allocate_end(mp_run *r, int s, int ok);
void mp_allocate_print(const mp_run *r, int s, FILE *out);

/* The compressed weights of the model: routed and shared experts of the MoE layers and the dense MLPs of
 * the non-MoE layers (model_config.h: mp_config_dense_mlp) - the denominator of bits per weight. */
int64_t mp_moe_weights(const mp_config *c);

#endif
