/* calibrate.h - the expert-parallel calibration forward pass.
 *
 * Plan: calibration sequences are split into contiguous, near-equal ranges,
 * one per rank (mp_shard_range); the routed experts of MoE layer l, plus its
 * shared expert as unit E, are owned round-robin: unit u -> rank
 * (l (E + 1) + u) mod P. Every expert has the same size, so this balances
 * bytes, is stable for a rank count, and for P > 1 no rank owns all experts
 * of a layer.
 *
 * Per layer every rank runs norms and attention for its sequences, routes
 * its tokens, and sends each (token, expert) pair to the expert's owner with
 * MPI_Alltoallv; the owner sorts what it received by global token index,
 * computes the expert output and the statistics in chunks of that order
 * (fp64 Grams via dsyrk), and sends the outputs back, where they are combined
 * with the routing weights in top-k order. Hence statistics, hidden states
 * and logits are bit-identical for any number of ranks (BLAS single-threaded
 * inside a rank). A rank with no sequences or no tokens for its experts
 * still takes part in every collective.
 *
 * Statistics (see stats.h) go to `stats_dir`/layerLLLL/expertEEEE.h5, written
 * by the owner; experts with fewer than `min_tokens` tokens get the neutral
 * prior and are listed in `stats_dir`/layerLLLL/report.json by rank 0, which
 * writes the layer's manifest `stats_dir`/layerLLLL/DONE last (store.h:
 * unit names and checksums). With `resume`, intact committed layers keep
 * their files and only run forward. After each layer all ranks agree whether
 * to stop (signal, --walltime: MP_ESTOPPED). Collective over MPI_COMM_WORLD;
 * every failure is agreed on by all ranks. */
#ifndef MP_CALIBRATE_H
#define MP_CALIBRATE_H
#include <stdint.h>

#include "model.h"
#include "tokens.h"

/* Observer of intermediate results on the local rank (tests, eval):
 * what = "hidden" (index 0 = embeddings, l + 1 = output of layer l, n_layers+1 = after the final norm),
 * "router" (index l, width E) or "logits" (width V). Rows are the tokens of
 * global sequences [seq0, seq0 + nseq) in order. */
typedef void (*mp_calib_observer)(void *ctx, const char *what, int index, int seq0, int nseq, int width,
                                  const float *rows);

typedef struct {
    const char *stats_dir; /* NULL: collect nothing, only run the forward pass */
    int min_tokens;        /* experts below this get the prior (default 16) */
    int want_nll;          /* compute logits and the next-token NLL */
    int resume;            /* keep layers whose manifest and units are intact (forward only) */
    int quiet, log_json;   /* progress: none / JSON lines on stdout */
    mp_calib_observer observe;
    void *observe_ctx;
} mp_calib_opts;

typedef struct {
    double nll_sum;   /* root only: sum of -log p(next token) */
    int64_t n_pred;   /* root only: number of predicted tokens */
    int n_starved;    /* experts below min_tokens, all layers */
    int n_resumed;    /* layers found committed and kept */
} mp_calib_result;

/* Rank 0: a progress line (terminal: updated in place; log: one line per layer; --log-json: JSON). */
void mp_progress(const mp_calib_opts *o, const char *stage, int done, int total, double elapsed, double eta);

/* Local: owner rank of unit u (0..E-1 routed, E = shared) of layer l. */
int mp_calib_owner(int l, int u, int n_experts, int nranks);
/* Collective. `tok` holds all sequences on every rank. */
int mp_calibrate(const mp_model *m, const mp_tokens *tok, const mp_calib_opts *o, mp_calib_result *res);

#endif
