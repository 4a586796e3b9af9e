/* forward.h - the building blocks of the fp32 forward pass (BLAS sgemm).
 *
 * Covers Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3 and Phi-3.5-MoE
 * exactly as transformers computes them: RMSNorm (variance in fp32) or
 * LayerNorm with bias (Phi), rotary embeddings
 * (rotate-half, or DeepSeek's interleaved pairs; rope types "default",
 * "linear", "dynamic" (at most max_position_embeddings tokens, where it is the
 * default rope), "yarn" with its attention factor, "longrope" with its short/long
 * factors and Phi's short/long mscale), grouped-query causal attention with
 * optional q/k/v/o biases, the sliding window of Mixtral and Phi, q/k
 * RMSNorm (per head for Qwen3, over the whole projection for OLMoE), OLMoE's
 * clip_qkv, DeepSeek's multi-head latent attention (q with or without
 * q_lora_rank, the compressed kv with its RMSNorm, the decoupled rotary part,
 * the softmax scale with YaRN's mscale_all_dim), the routers (softmax top-k
 * with optional renormalisation; DeepSeek-V2 softmax greedy or group-limited
 * top-k; DeepSeek-V3 sigmoid with e_score_correction_bias and grouped top-k;
 * both times routed_scaling_factor; Phi's sparsemixer in eval mode), SwiGLU experts, the shared expert with its
 * optional sigmoid gate.
 * All matrices are row-major; weights are [out, in] as in the checkpoints.
 * Weights come through mp_weights, an interface the loader implements
 * (io/weights.h for a Hugging Face checkpoint): a layer's non-expert weights
 * as fp32 (freed with mp_layer_free), experts on demand, the embedding rows
 * and the output head. Local (no MPI, no files). Results for one token never depend on which other tokens
 * share the call (every op works per sequence or per token list), which the
 * calibration relies on for results independent of the number of ranks. */
#ifndef MP_FORWARD_H
#define MP_FORWARD_H
#include <stdint.h>

#include "model_config.h"
#include "registry.h"

typedef struct {
    int layer, moe;
    float *in_norm, *in_norm_b, *post_norm, *post_norm_b; /* [d] */
    float *wq, *wk, *wv, *wo;                             /* [H hd, d], [KV hd, d], [KV hd, d], [d, H hd] */
    float *bq, *bk, *bv, *bo;                             /* optional biases */
    float *q_norm, *k_norm;                               /* [hd] (per head) or [H hd]/[KV hd] (full) */
    /* DeepSeek MLA (wq is q_proj [H qk, d] without q_lora_rank; wo is o_proj [d, H v]) */
    float *wq_a, *q_a_norm, *wq_b;                        /* [ql, d], [ql], [H qk, ql] */
    float *wkv_a, *kv_a_norm, *wkv_b;                     /* [r + rope, d], [r], [H (nope + v), r] */
    float *router;                                        /* [E, d] */
    float *router_bias;                                   /* DeepSeek-V3 e_score_correction_bias [E] */
    float *sh_gate, *sh_up, *sh_down, *sh_gate_w;        /* shared expert [fs, d], [fs, d], [d, fs], gate [1, d] */
    float *mlp_gate, *mlp_up, *mlp_down;                  /* dense MLP of non-MoE layers */
} mp_layer_w;

/* Where the forward pass gets its weights. Every function returns 0 or a negative MP_E* code with a message
 * naming the tensor; every value handed out is finite (checked by the implementation). */
typedef struct mp_weights {
    const mp_config *cfg;
    void *ctx;
    /* the non-expert weights of layer l, fp32 (release with mp_layer_free) */
    int (*layer)(void *ctx, int l, mp_layer_w *w);
    /* routed expert e of layer l, projection p, fp32 [rows, cols] (gate/up [f, d], down [d, f]) */
    int (*expert)(void *ctx, int l, int e, mp_proj p, float *out);
    /* h[n, d] = embedding rows of ids[n] */
    int (*embed)(void *ctx, const int32_t *ids, int n, float *h);
    /* the final norm (*nw [d], *nb [d] or NULL) and the output head (*hw [V, d], *hb [V] or NULL); caller frees */
    int (*head)(void *ctx, float **nw, float **nb, float **hw, float **hb);
    /* optional (NULL: dense experts from `expert` and the layer's shared expert): the output Y [n, d] of
     * unit u of MoE layer l (u < E a routed expert, u = E the shared expert, before routing weights) for
     * its inputs X [n, d] - a compressed model served as stored (quantized, base + U (V x) factored);
     * with it, the dense MLP of a non-MoE layer is served too (u = MP_UNIT_DENSE, model_config.h) */
    int (*unit)(void *ctx, int l, int u, const float *X, int n, float *Y);
} mp_weights;

/* MP_ECONFIG naming config.json and the key for what the forward pass does not cover yet:
 * architectures, rope type llama3, Qwen's sliding windows, DeepSeek's attention_bias or
 * moe_layer_freq != 1, Phi with other than 2 experts per token, more than
 * MP_FORWARD_MAX_EXPERTS experts or MP_FORWARD_MAX_TOPK experts per token. */
#define MP_FORWARD_MAX_EXPERTS 4096
#define MP_FORWARD_MAX_TOPK 63
int mp_forward_supported(const mp_config *c);
void mp_layer_free(mp_layer_w *w);

/* out[n, d] = norm(x) * w (+ b); RMSNorm, or LayerNorm when c->layernorm */
void mp_norm(const mp_config *c, const float *x, int n, int d, const float *w, const float *b, float *out);
/* One sequence of S tokens at positions 0..S-1: out[S, d] = attention(x[S, d]) including o_proj.
 * scratch: mp_attention_scratch(c, S) floats. */
int64_t mp_attention_scratch(const mp_config *c, int S);
int mp_attention(const mp_config *c, const mp_layer_w *w, const float *x, int S, float *out, float *scratch);
/* logits[n, E] = x[n, d] router^T; idx/wt[n, k]: top-k experts (descending score, ties to the lower
 * index) and their routing weights as the architecture forms them (see the top of this file). */
void mp_route(const mp_config *c, const mp_layer_w *w, const float *x, int n, float *logits, int *idx, float *wt);
/* SwiGLU MLP: hmid[n, f] = silu(x Wg^T) * (x Wu^T); y[n, d] = hmid Wd^T. hmid may be NULL. */
int mp_swiglu(const float *wg, const float *wu, const float *wd, const float *x, int n, int d, int f, float *y,
              float *hmid);
/* The same with the caller's workspace ws [2 n f] (no allocation); on return ws[0 .. n f) holds hmid. */
void mp_swiglu_ws(const float *wg, const float *wu, const float *wd, const float *x, int n, int d, int f, float *y,
                  float *ws);
/* The vocabulary block [v0, v0 + nv) of the logits: logits[i * ld + j] = x[i, :] . w[v0 + j, :] (+ b[v0 + j]),
 * i < n, j < nv (w [V, d]) */
void mp_lm_head(const mp_config *c, const float *w, const float *b, const float *x, int n, int v0, int nv,
                float *logits, int ld);

#endif
