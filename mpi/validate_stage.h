/* validate_stage.h - the validate stage (DESIGN section 7): the accuracy the compressed model reached.
 *
 * Tokens: validate.tokens, else the sequences of calibration.tokens that calibration did not use (those
 * after calibration.max_sequences); when there are none, the calibration sequences themselves (said in
 * the report: "held_out": false). validate.max_sequences bounds their number.
 * Two expert-parallel forward passes advance layer by layer over those tokens: the original model and
 * the compressed one as stored in output.dir (io/cweights.h: packed codes dequantized, base + U (V x)
 * factored; validate.device = cuda: the same units on one GPU per rank). Per MoE layer, with the
 * original model's inputs (as the loss tables assumed):
 *  - the relative error of the MoE block's output, sum_t ||y_t - y'_t||^2 / sum_t ||y_t||^2 (y' = the
 *    block with every unit compressed, the same routing);
 *  - per unit (routed experts, the shared expert) the relative error of its output over its tokens;
 *  - per block of the allocation (io/allocation.h) the measured counterpart of the predicted loss:
 *    sum over the block's tokens of ||E z||^2 with E the block's error as stored (a dense block or base:
 *    W - deq(W), inputs quantized where the format says; a delta: (W_e - B) - deq(U) deq(V) with B the
 *    decomposition's base), z its original inputs (x, or the original intermediate h for down),
 *    normalised by the layer's MoE output energy on these tokens (sum over units of ||W_down h||^2, the
 *    measure stage's normaliser).
 * A non-MoE layer with a dense MLP (model_config.h: MP_UNIT_DENSE) is validated the same way: its MLP's
 * output error (original vs compressed, on the original inputs) as the layer's and its unit's, and its
 * three blocks' measured losses normalised by the MLP's output energy (the measure stage's normaliser
 * for it); the compressed pass serves it compressed.
 * Committed per MoE or dense MLP layer as validate/layerLLLL/validate.json (rank 0). After the last layer, end to end:
 * the perplexity of both models, KL(original || compressed) of the next-token distributions and top-1
 * agreement (ep_forward.h: mp_epf_head_compare), and Spearman's correlation of predicted and measured
 * loss over blocks and over layers (predicted loss vs relative output error). Rank 0 writes
 * output.dir/validation.json and the same numbers into every shard's /moepack attributes and index.json
 * (output.h: mp_out_record_validation). Every number is the same for any number of ranks: sums over
 * tokens are added per sequence or per unit (one owner) in a fixed order.
 * Summary: sequences, tokens (predicted), held_out, ppl_original, ppl_compressed, kl, top1,
 * rel_error_mean, rel_error_max, spearman_blocks, spearman_layers, blocks, cuda. */
#ifndef MP_VALIDATE_STAGE_H
#define MP_VALIDATE_STAGE_H

#include "pipeline.h"

int mp_validate_begin(mp_run *r, int s);
int mp_validate_layer(mp_run *r, int s, int l, int committed);
int mp_validate_end(mp_run *r, int s, int ok);
void mp_validate_print(const mp_run *r, int s, FILE *out);
/* Collective, before any stage runs: validate.device = cuda needs a GPU on every rank (MP_EUSAGE), and the
 * validation tokens must be readable and fit the model (MP_ENOENT / MP_EFORMAT naming the file). */
int mp_validate_check(mp_run *r, int s);
/* Collective: a committed stage is kept only while output.dir records its validation (*ok). */
int mp_validate_kept(mp_run *r, int s, int *ok);

#endif
