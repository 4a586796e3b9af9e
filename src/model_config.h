/* model_config.h - the model configuration: architecture, sizes, attention, rope, routing.
 *
 * Plain data filled by the config.json parser (io/config.h) or by the
 * synthetic-model writer; the numerics and the forward pass read it. Local;
 * mp_config_free releases the per-layer arrays. */
#ifndef MP_MODEL_CONFIG_H
#define MP_MODEL_CONFIG_H

#include <stdint.h>

typedef enum {
    MP_ARCH_MIXTRAL,
    MP_ARCH_QWEN2_MOE,
    MP_ARCH_QWEN3_MOE,
    MP_ARCH_OLMOE,
    MP_ARCH_DEEPSEEK_V2,
    MP_ARCH_DEEPSEEK_V3,
    MP_ARCH_PHIMOE,
    MP_ARCH_DEEPSEEK, /* DeepSeek-MoE-16B (remote code): plain attention, DeepSeek-V2's MoE */
    MP_ARCH_COUNT
} mp_arch;

/* q/k normalisation inside attention */
typedef enum { MP_QKNORM_NONE, MP_QKNORM_HEAD, MP_QKNORM_FULL } mp_qknorm;

/* Every size read from config.json (hidden_size, intermediate sizes, heads, experts, vocab, layers,
 * positions, ...) is in [1, MP_CONFIG_SIZE_MAX]; products of a few of them fit int64. */
#define MP_CONFIG_SIZE_MAX (1 << 24)

typedef struct {
    char file[4096]; /* the config.json it was read from (or the `what` given to mp_config_parse) */
    mp_arch arch;
    char model_type[32];
    char hidden_act[16];
    int hidden;        /* d */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;      /* q/k/v head size (non-MLA) */
    int vocab;
    int max_pos;
    int dense_ffn;     /* intermediate size of dense (non-MoE) MLP layers, 0 if none */
    int moe_ffn;       /* intermediate size of one routed expert (f) */
    int n_experts;     /* routed experts per MoE layer (E) */
    int top_k;
    int n_shared;      /* shared experts (DeepSeek: count; Qwen2-MoE: 1) */
    int shared_ffn;    /* total intermediate size of the shared expert MLP */
    int shared_gate;   /* Qwen2-MoE: sigmoid gate on the shared expert */
    int norm_topk_prob;
    double norm_eps;
    int layernorm;     /* Phi-3.5-MoE: LayerNorm with bias instead of RMSNorm */
    int tie_embeddings;
    int attn_bias;     /* bias on q/k/v */
    int o_bias;        /* bias on o_proj */
    int lm_head_bias;
    mp_qknorm qk_norm;
    double clip_qkv;   /* OLMoE; 0 = off */
    int sliding_window; /* 0 = off */
    double router_jitter;
    /* rope */
    double rope_theta;
    char rope_type[24]; /* "default", "linear", "dynamic", "yarn", "longrope", "llama3" */
    char rope_type_key[40]; /* where it came from, e.g. "rope_scaling.type" (for messages) */
    double rope_factor;
    int rope_has_factor;          /* 'factor' was given (longrope without it: max_position / original) */
    double rope_attention_factor; /* yarn/longrope 'attention_factor'; 0 = derived as transformers does */
    int rope_truncate;            /* yarn 'truncate' (default true) */
    double rope_short_mscale, rope_long_mscale; /* Phi-3.5-MoE longrope; 0 = absent */
    int rope_interleave;          /* DeepSeek: rotary pairs (2i, 2i+1) instead of (i, i + rd/2) */
    int rope_orig_max_pos;
    double rope_beta_fast, rope_beta_slow, rope_mscale, rope_mscale_all_dim;
    double rope_low_freq_factor, rope_high_freq_factor;
    double partial_rotary_factor;
    int n_rope_short, n_rope_long;
    double *rope_short_factor, *rope_long_factor;
    /* DeepSeek MLA and routing */
    int q_lora_rank;   /* 0 = plain q_proj */
    int kv_lora_rank;
    int qk_nope_dim, qk_rope_dim, v_head_dim;
    int first_k_dense, moe_layer_freq;
    int n_group, topk_group;
    char topk_method[24];   /* "greedy", "group_limited_greedy", "noaux_tc" */
    char scoring_func[16];  /* "softmax", "sigmoid" */
    double routed_scaling;
    /* Qwen sparse layer pattern */
    int decoder_sparse_step;
    /* per layer: 1 if the layer's MLP is a routed MoE block */
    unsigned char *is_moe;
} mp_config;

const char *mp_arch_name(mp_arch a);  /* model_type, e.g. "mixtral" */
const char *mp_arch_class(mp_arch a); /* transformers class, e.g. "MixtralForCausalLM" */
/* model_type -> arch; -1 (no message) when unknown. */
int mp_arch_from_name(const char *model_type, mp_arch *out);
/* transformers class name (case-insensitive, e.g. "PhiMoEForCausalLM") -> arch; -1 when unknown. */
int mp_arch_from_class(const char *cls, mp_arch *out);
void mp_config_free(mp_config *cfg);
/* Number of MoE layers. */
int mp_config_n_moe_layers(const mp_config *cfg);

/* The dense MLP of a non-MoE layer (Qwen2-MoE mlp_only_layers / decoder_sparse_step, DeepSeek
 * first_k_dense_replace) is a unit of its own, with this index where routed experts are 0..E-1, the
 * shared expert E and the D2 base -1: its Grams are collected, it is measured, allocated and quantized
 * like a shared expert (gate/up [dense_ffn, d], down [d, dense_ffn]). */
#define MP_UNIT_DENSE (-2)
/* 1 when layer l is not a MoE layer and has a dense MLP (such a layer's only unit is MP_UNIT_DENSE). */
static inline int mp_config_dense_mlp(const mp_config *c, int l) { return !c->is_moe[l] && c->dense_ffn > 0; }
/* 1 when layer l has units the pipeline compresses: a MoE layer, or a layer with a dense MLP. */
static inline int mp_config_has_units(const mp_config *c, int l) { return c->is_moe[l] || mp_config_dense_mlp(c, l); }

#endif
