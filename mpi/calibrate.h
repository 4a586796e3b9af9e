/* calibrate.h - the calibration stage: per-expert statistics from the expert-parallel forward pass.
 *
 * Every layer runs through ep_forward.h; on the owner of each unit of a MoE
 * layer, hooks accumulate the statistics (stats.h) chunk by chunk in global
 * token order: G_in and G_mid as fp64 sums of the chunks' fp32 SSYRK
 * (gram.h; upper triangle, stored packed), h_sq, the token count, the routing weights' sum
 * and the token sample (calibration.sample_tokens = K: a max-heap of the K
 * tokens of smallest priority XXH64(token; seed layer * 65537 + unit) seen so
 * far, with their x and h, so memory stays bounded by K rows per unit; with
 * windows the rows are on a file in the stage's directory, unlinked at once,
 * and only a chunk's rows are resident); the unit's file is written when the
 * unit is done. Then the
 * layer's prior is agreed (experts with fewer than calibration.min_tokens
 * tokens get the layer's average per-token diagonal, listed in
 * layerLLLL/report.json), the files are completed and the layer committed
 * (store.h, with the stage fingerprint), and each rank saves its hidden
 * states after the layer (hidden_ckpt.h). A committed layer computes
 * nothing: a resumed run loads the hidden states of the last committed
 * layer and replays the forward pass of the kept layers only when that
 * checkpoint is missing, damaged or made with other rank ranges. The
 * checkpoint is removed when the stage ends. The dense MLP of a non-MoE layer
 * (model_config.h: MP_UNIT_DENSE) is a unit like the shared expert: its statistics are accumulated on
 * its owner in chunks of global token order (ep_forward.h), its prior is its own average diagonal, and
 * the layer commits calib/layerLLLL/dense.h5 alone. Summary: perplexity,
 * nll_sum, predicted_tokens, starved_experts. Stage functions of the table
 * in pipeline.c; collective. */
#ifndef MP_CALIBRATE_H
#define MP_CALIBRATE_H

#include "pipeline.h"

int mp_calib_begin(mp_run *r, int s);
int mp_calib_layer(mp_run *r, int s, int l, int committed);
int mp_calib_end(mp_run *r, int s, int ok);
void mp_calib_print(const mp_run *r, int s, FILE *out);

#endif
