/* decomp_stage.h - the D2 decomposition stage, distributed over the expert owners.
 *
 * For each MoE layer (in order) and projection p in {gate, up, down}:
 *  1. the base W_b (decompose.h: mp_base_rows) is computed by rows: rank k
 *     computes rows [plan.h: mp_shard_range(m, k, P)] from those rows of all experts
 *     (importance weights from the calibration statistics' diagonals and
 *     token counts, or, with delta.weights = fisher, per-element weights
 *     from the HDF5 file delta.fisher: one float32 dataset
 *     `layer<L>/expert<E>/<gate|up|down>` [m, n] per expert and projection,
 *     e.g. the sum over calibration tokens of the squared gradient of the
 *     loss with respect to each weight; negative values count as 0), and MPI_Allgatherv gives every rank the whole base. The
 *     value of each row does not depend on P.
 *  2. the owner of expert e (plan.h: mp_unit_owner) forms
 *     Delta = W_e - W_b, whitens with its regularised Gram (stats.h:
 *     mp_stats_regularized; G_in for gate/up, G_mid for down), and factors it
 *     at the rank of the job's policy (delta.rank; else the fraction, solved
 *     from delta.target_ratio when set; with delta.candidates the largest
 *     candidate, the factors being nested) with LAPACK (dgesdd) or the seeded
 *     randomized SVD ("auto": randomized when r <= min(m, n) / 8).
 * Outputs (io/factors.h) in checkpoint.dir/decomp/layerLLLL: base.h5 (rank 0: base_gate, base_up, base_down,
 * fp32 [m, n], and prune_score fp64 [f]: per intermediate channel j of the
 * base, (sum over experts of sum h_j^2) * ||(W_b,down)[:, j]||^2, the static
 * score of D2-MoE's structured pruning of the base) and expertEEEE.h5 (owner: U_p fp32 [m, r], V_p fp32 [r, n],
 * sigma_p fp64 (the whole spectrum with LAPACK; the first r + p values with
 * the randomized solver), attributes rank_p, lambda_p (the regularisation
 * used), energy_p = ||Delta S||_F^2, so the truncation loss of every rank up
 * to the computed spectrum is energy - sum of the kept sigma^2). Committed per
 * layer with a manifest (store.h) carrying the stage fingerprint. Collective
 * over MPI_COMM_WORLD; failures are agreed on. */
#ifndef MP_DECOMPOSE_STAGE_H
#define MP_DECOMPOSE_STAGE_H

#include "pipeline.h"

/* Stage functions of the table in pipeline.c. Summary: fraction, compression, lambda_raised (committed in STAGE: no timings, the bytes are
 * the same for any rank count). */
int mp_decomp_begin(mp_run *r, int s);
int mp_decomp_layer(mp_run *r, int s, int l, int committed);
int mp_decomp_end(mp_run *r, int s, int ok);
void mp_decomp_print(const mp_run *r, int s, FILE *out);

#endif
