/* synth.h - tiny synthetic MoE checkpoints in the real Hugging Face layout.
 *
 * mp_synth_write(opts, dir) creates `dir` holding config.json (loadable by
 * transformers), the weights as safetensors (optionally sharded, per-expert
 * or fused expert layout, F32/BF16/F16) and `tokens.h5` (HDF5 dataset
 * `tokens`, int32 [n_seq, seq_len]). The output is a pure function of the
 * options: every tensor block draws from its own stream seeded by
 * mp_rng_derive(seed, tag), and the tags do not depend on the layout, so the
 * fused and per-expert files of one seed hold the same values.
 *
 * Expert recipe, per MoE layer l and projection p (gate/up [f, d], down [d, f];
 * fan-in n, s = 1/sqrt(n), r = max(1, min(f, d)/8) unless opts.delta_rank):
 *     W_{l,e,p} = B_{l,p} + P_{l,e,p} Q_{l,e,p} + N_{l,e,p}
 *     B ~ s N(0,1)                 shared component of all experts
 *     P [rows, r], Q [r, cols] ~ N(0,1), scaled so that P Q has entries of
 *                                  std delta_scale * s (expert-specific, low rank)
 *     N ~ noise_scale * s N(0,1)    full-rank noise
 * Routers get std 2/sqrt(d) (decisive routing), norm weights 1 + 0.05 N(0,1),
 * biases 0.02 N(0,1), other matrices s N(0,1), embeddings N(0,1).
 * Tokens: a first-order Markov source over a Zipf(1.1) unigram distribution
 * (each token prefers 4 successors with probability 0.6).
 *
 * `dir` must not exist or be empty; everything is written to a sibling
 * temporary directory that is renamed onto `dir` at the end, so a failure
 * leaves nothing behind. Local (no MPI). */
#ifndef MP_SYNTH_H
#define MP_SYNTH_H
#include <stdint.h>

#include "model_config.h"
#include "dtype.h"
#include "registry.h"

typedef struct {
    mp_arch arch;
    int layers, experts, hidden, ffn, vocab, heads, kv_heads, top_k;
    int n_seq, seq_len;
    uint64_t seed;
    mp_dtype dtype;      /* F32, BF16 or F16 */
    int shards;          /* 1 = model.safetensors; n > 1 splits into about n shards */
    mp_layout layout;
    int delta_rank;      /* 0 = max(1, min(f, d)/8) */
    double delta_scale;  /* default 0.5 */
    double noise_scale;  /* default 0.05 */
    int dense_layers;    /* qwen2_moe, qwen3_moe: the first N layers have a dense MLP (mlp_only_layers, of
                            intermediate_size 2 ffn) instead of experts; default 0, at most layers - 1 */
} mp_synth_opts;

/* Defaults: mixtral, 2 layers, 8 experts, d 64, f 128, vocab 256, 4 heads,
 * 2 kv heads, top-2, 16 x 64 tokens, seed 1234, F32, 1 shard, per-expert. */
void mp_synth_defaults(mp_synth_opts *o);
/* Parse an architecture name (model_type, e.g. "mixtral", "deepseek_v3"). */
int mp_synth_parse_arch(const char *name, mp_arch *out);
/* The config.json text for the options (malloc'ed). Checks the options. */
int mp_synth_config_json(const mp_synth_opts *o, char **json);
int mp_synth_write(const mp_synth_opts *o, const char *dir);

#endif
