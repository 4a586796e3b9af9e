/* ep_forward.h - the expert-parallel forward pass, one layer at a time.
 *
 * Sequences are split into contiguous ranges, one per rank, and the units of
 * every MoE layer (routed experts, the shared expert as unit E) have owners
 * (plan.h: mp_seq_range, mp_unit_owner; by load with mp_epf_balance). One MoE layer on every rank, window
 * after window of the global sequences (mp_epf_set_window; one window by
 * default):
 *   attention  norms and attention of the rank's sequences in the window (src/forward.h);
 *   route      router logits, top-k experts and weights of those tokens;
 *   dispatch   every (token, unit) pair to the unit's owner (MPI_Alltoallv; one
 *              rank: no copy);
 *   experts    the owner appends what it received, in global token order, to
 *              each unit's staged rows and runs every full chunk of MP_CHUNK
 *              tokens of that order (the last window also the rest); hooks see
 *              every chunk (calibration statistics);
 *   combine    outputs go back to the token's rank (MPI_Alltoallv); once all of
 *              a token's slots are back they are summed with the routing
 *              weights in top-k order, then the shared expert, and added to
 *              the residual stream.
 * Chunks and sums are thus the same for any number of ranks and any window,
 * and every result is bit-identical (BLAS has one thread per rank). Memory:
 * the residual stream [local tokens, d] (or on a file: mp_epf_create_spilled), the rest bounded by the window and
 * the staged chunks. A rank without sequences or without tokens for its
 * units still takes part in every collective. All functions but
 * mp_epf_free are collective over MPI_COMM_WORLD and return the agreed status. */
#ifndef MP_EP_FORWARD_H
#define MP_EP_FORWARD_H
#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "tokens.h"

#define MP_CHUNK 256 /* tokens per expert chunk (and statistics block), in global token order */

/* Observer of intermediate results on the local rank (tests): what = "hidden" (index 0 = embeddings,
 * l + 1 = output of layer l, n_layers + 1 = after the final norm), "router" (index l, width E) or
 * "logits" (width V). Rows are the tokens of global sequences [seq0, seq0 + nseq) in order (one call may
 * cover part of the rank's sequences: "router" one window, "hidden" after the final norm and "logits"
 * one group of the output head, up to 1024 tokens' worth of sequences). */
typedef void (*mp_observer)(void *ctx, const char *what, int index, int seq0, int nseq, int width,
                            const float *rows);

/* Called on the owner of unit u (u = E: the shared expert) of MoE layer l, and on the owner of the dense MLP
 * of a non-MoE layer l (u = MP_UNIT_DENSE, f = dense_ffn, every token with weight 1: its tokens travel to the
 * owner for the statistics only; the layer's output is computed where they are): begin, then its chunks,
 * then end; with one window unit after unit in unit order, with several the units' calls interleave. chunk gets the
 * unit's inputs x [nb, d], its intermediate activations h [nb, f] (h = silu(x Wg^T) * (x Wu^T)), the
 * tokens' routing weights w [nb] and their global token indices tok [nb] (sequence * seq_len + position,
 * strictly increasing; the same for any number of ranks), chunk after chunk in global token order. The
 * arrays are valid during the call only. A negative return is agreed on. */
typedef struct {
    void *ctx;
    int (*begin)(void *ctx, int l, int u, int d, int f);
    int (*chunk)(void *ctx, int l, int u, const float *x, const float *h, const float *w, const int64_t *tok, int nb);
    int (*end)(void *ctx, int l, int u);
} mp_unit_hooks;

typedef struct mp_epf mp_epf;

/* Embed the local sequences of `tok` (every rank holds all of them). */
int mp_epf_create(const mp_weights *w, const mp_tokens *tok, mp_observer observe, void *observe_ctx,
                  mp_epf **out);
/* As mp_epf_create, with the residual stream on a file in `dir` (created and unlinked at once: nothing stays
 * behind, even after a crash; its size reserved at once: no space left is an error here): its pages go back
 * to the file after each window of every layer and each sequence of the output head, so that with windows
 * (mp_epf_set_window) no buffer of the pass grows with the calibration tokens. The kernel's page cache
 * holds the file as memory allows. Results do not change. */
int mp_epf_create_spilled(const mp_weights *w, const mp_tokens *tok, mp_observer observe, void *observe_ctx,
                          const char *dir, mp_epf **out);
/* The MoE exchange in windows of `tokens` calibration tokens (whole sequences, at least one; 0: all
 * tokens at once, the default): only the residual stream of the local tokens grows with their number,
 * every other buffer with the window. Results do not depend on it. With more than one window the units'
 * hook calls interleave (every owned unit is begun in the first window and ended in the last). */
int mp_epf_set_window(mp_epf *s, int64_t tokens);
/* Owners by load (off by default): in each MoE layer the routed experts and the shared one go to ranks by
 * their tokens in the first window (the most first, to the least loaded rank) instead of plan.h's
 * mp_unit_owner, so that no rank waits at the exchange for another's busier experts. Hooks are then
 * called on whichever rank runs a unit; results do not change. Only for weights every rank can serve
 * (w->expert; a provider of units serves its owners' units only: MP_EINTERNAL). Local. */
int mp_epf_balance(mp_epf *s, int on);
/* Wall seconds this rank spent so far in the exchanges of the MoE layers: packing, MPI_Alltoallv both
 * ways, and waiting there for the other ranks (bench/). Local. */
double mp_epf_exchange_seconds(const mp_epf *s);
/* The local residual stream h [nseq * seq_len, d] of global sequences [seq0, seq0 + nseq), between layers
 * (to save it, or to replace it with the states after a later layer, which then follows). Local. */
float *mp_epf_hidden(mp_epf *s, int *seq0, int *nseq);
/* After `bytes` of the residual stream at `rows` (inside mp_epf_hidden's array) were read or written: a
 * spilled stream's pages there go back to its file (ctx: the mp_epf; the shape of a callback of
 * hidden_ckpt.h); otherwise nothing. Local. */
void mp_epf_hidden_done(void *ctx, const void *rows, size_t bytes);
/* Layer l (all layers in order): hidden states of the local tokens advance by one layer. hooks may be NULL. */
int mp_epf_layer(mp_epf *s, int l, const mp_unit_hooks *hooks);
/* Layer l as mp_epf_layer; when it is a MoE layer, its MoE block is computed once more with the units of
 * `alt` (alt->unit must be set: e.g. a compressed model) on the same inputs and routing (a dense MLP layer:
 * its MLP by alt's unit MP_UNIT_DENSE on the same inputs), and root gets
 * sq[0] = sum over tokens of ||y - y_alt||^2 and sq[1] = sum of ||y||^2 (y: the block output of s's own
 * weights, which also advances the hidden states; added per sequence, in sequence order: the same for
 * any number of ranks). sq is 0 for a non-MoE layer. */
int mp_epf_layer_compare(mp_epf *s, int l, const mp_unit_hooks *hooks, const mp_weights *alt, double sq[2]);
/* After the last layer: final norm, output head and the next-token NLL; root gets the sum over all
 * sequences (added in sequence order) and the number of predicted tokens. */
int mp_epf_head(mp_epf *s, double *nll_sum, int64_t *n_pred);
void mp_epf_free(mp_epf *s);
/* Two passes over the same tokens (a: the original model, b: e.g. the compressed one), after their last
 * layer: per predicted token the NLL of each, KL(p_a || p_b) of the next-token distributions and whether
 * their top-1 tokens agree; root gets the sums (added in sequence order). */
typedef struct {
    double nll[2];  /* a, b */
    double kl_sum;  /* sum over predicted tokens of KL(p_a || p_b) (nats) */
    int64_t top1;   /* tokens whose argmax agrees */
    int64_t n_pred;
} mp_head_cmp;
int mp_epf_head_compare(mp_epf *a, mp_epf *b, mp_head_cmp *out);
/* The whole forward pass (eval): create, every layer, head. */
int mp_epf_run(const mp_weights *w, const mp_tokens *tok, mp_observer observe, void *observe_ctx, double *nll_sum,
               int64_t *n_pred);

#endif
