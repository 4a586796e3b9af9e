/* weights.c - the forward pass's weights from an opened checkpoint (see weights.h). */
#include "weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* MP_ENUMERIC naming the tensor and the element when v[0..n) holds a NaN or an infinity */
static int check_finite(const mp_model *m, const char *name, const float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return mp_errorf(MP_ENUMERIC, "%s: tensor '%s' holds %s at element %lld", m->dir, name,
                             isnan(v[i]) ? "NaN" : "an infinity", (long long)i);
    return 0;
}

/* read tensor `name` (must have `numel` elements) into a new fp32 array */
static int load_named(const mp_model *m, float **out, int64_t numel, const char *name)
{
    const mp_tensor *t;
    MP_CHECK(mp_ckpt_get(m->ck, name, &t));
    if (t->numel != numel)
        return mp_errorf(MP_EFORMAT, "%s: tensor '%s' has %lld elements, expected %lld", m->dir, name,
                         (long long)t->numel, (long long)numel);
    *out = malloc(sizeof(float) * (size_t)numel);
    if (!*out)
        return mp_errorf(MP_ENOMEM, "out of memory loading %s", name);
    int rc = mp_ckpt_read_f32(m->ck, t, 0, numel, *out);
    if (rc == 0)
        rc = check_finite(m, name, *out, numel);
    if (rc < 0) {
        free(*out);
        *out = NULL;
        MP_CHECK(rc);
    }
    return 0;
}

/* the same for the tensor named by `fmt` with layer l */
static int load(const mp_model *m, float **out, int64_t numel, const char *fmt, int l)
{
    char name[MP_NAME_MAX];
    snprintf(name, sizeof name, fmt, l);
    return load_named(m, out, numel, name);
}

static int layer_load(void *ctx, int l, mp_layer_w *w)
{
    const mp_model *m = ctx;
    const mp_config *c = &m->cfg;
    int64_t d = c->hidden, hd = c->head_dim, qd = (int64_t)c->n_heads * hd, kvd = (int64_t)c->n_kv_heads * hd;
    memset(w, 0, sizeof *w);
    w->layer = l;
    w->moe = c->is_moe[l];
    int rc = 0;
#define LOAD(ptr, n, fmt) MP_CHECK_GOTO(load(m, &w->ptr, (n), (fmt), l), fail)
    LOAD(in_norm, d, "model.layers.%d.input_layernorm.weight");
    LOAD(post_norm, d, "model.layers.%d.post_attention_layernorm.weight");
    if (c->layernorm) {
        LOAD(in_norm_b, d, "model.layers.%d.input_layernorm.bias");
        LOAD(post_norm_b, d, "model.layers.%d.post_attention_layernorm.bias");
    }
    if (c->arch == MP_ARCH_DEEPSEEK_V2 || c->arch == MP_ARCH_DEEPSEEK_V3) {
        int64_t H = c->n_heads, qk = c->qk_nope_dim + c->qk_rope_dim, ql = c->q_lora_rank, r = c->kv_lora_rank;
        if (ql > 0) {
            LOAD(wq_a, ql * d, "model.layers.%d.self_attn.q_a_proj.weight");
            LOAD(q_a_norm, ql, "model.layers.%d.self_attn.q_a_layernorm.weight");
            LOAD(wq_b, H * qk * ql, "model.layers.%d.self_attn.q_b_proj.weight");
        } else {
            LOAD(wq, H * qk * d, "model.layers.%d.self_attn.q_proj.weight");
        }
        LOAD(wkv_a, (r + c->qk_rope_dim) * d, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight");
        LOAD(kv_a_norm, r, "model.layers.%d.self_attn.kv_a_layernorm.weight");
        LOAD(wkv_b, H * (c->qk_nope_dim + c->v_head_dim) * r, "model.layers.%d.self_attn.kv_b_proj.weight");
        LOAD(wo, d * H * c->v_head_dim, "model.layers.%d.self_attn.o_proj.weight");
    } else {
        LOAD(wq, qd * d, "model.layers.%d.self_attn.q_proj.weight");
        LOAD(wk, kvd * d, "model.layers.%d.self_attn.k_proj.weight");
        LOAD(wv, kvd * d, "model.layers.%d.self_attn.v_proj.weight");
        LOAD(wo, d * qd, "model.layers.%d.self_attn.o_proj.weight");
    }
    if (c->attn_bias) {
        LOAD(bq, qd, "model.layers.%d.self_attn.q_proj.bias");
        LOAD(bk, kvd, "model.layers.%d.self_attn.k_proj.bias");
        LOAD(bv, kvd, "model.layers.%d.self_attn.v_proj.bias");
    }
    if (c->o_bias)
        LOAD(bo, d, "model.layers.%d.self_attn.o_proj.bias");
    if (c->qk_norm == MP_QKNORM_HEAD) {
        LOAD(q_norm, hd, "model.layers.%d.self_attn.q_norm.weight");
        LOAD(k_norm, hd, "model.layers.%d.self_attn.k_norm.weight");
    } else if (c->qk_norm == MP_QKNORM_FULL) {
        LOAD(q_norm, qd, "model.layers.%d.self_attn.q_norm.weight");
        LOAD(k_norm, kvd, "model.layers.%d.self_attn.k_norm.weight");
    }
    if (w->moe) {
        char rn[MP_NAME_MAX];
        mp_name_router(c, m->layout, l, rn, sizeof rn);
        MP_CHECK_GOTO(load(m, &w->router, (int64_t)c->n_experts * d, rn, l), fail);
        if (strcmp(c->topk_method, "noaux_tc") == 0)
            LOAD(router_bias, c->n_experts, "model.layers.%d.mlp.gate.e_score_correction_bias");
        if (c->n_shared > 0 && c->shared_ffn > 0) {
            int64_t fs = c->shared_ffn;
            static const char *pj[3] = {"gate", "up", "down"};
            float **dst[3] = {&w->sh_gate, &w->sh_up, &w->sh_down};
            for (int p = 0; p < 3; p++) { /* Qwen2-MoE: mlp.shared_expert; DeepSeek: mlp.shared_experts */
                char fmt[96];
                snprintf(fmt, sizeof fmt, "model.layers.%%d.mlp.%s.%s_proj.weight",
                         c->arch == MP_ARCH_QWEN2_MOE ? "shared_expert" : "shared_experts", pj[p]);
                MP_CHECK_GOTO(load(m, dst[p], fs * d, fmt, l), fail);
            }
            if (c->shared_gate)
                LOAD(sh_gate_w, d, "model.layers.%d.mlp.shared_expert_gate.weight");
        }
    } else {
        int64_t f = c->dense_ffn;
        LOAD(mlp_gate, f * d, "model.layers.%d.mlp.gate_proj.weight");
        LOAD(mlp_up, f * d, "model.layers.%d.mlp.up_proj.weight");
        LOAD(mlp_down, d * f, "model.layers.%d.mlp.down_proj.weight");
    }
#undef LOAD
    return 0;
fail:
    mp_layer_free(w);
    return rc;
}

static int embed(void *ctx, const int32_t *ids, int n, float *h)
{
    const mp_model *m = ctx;
    const mp_tensor *t;
    MP_CHECK(mp_ckpt_get(m->ck, "model.embed_tokens.weight", &t));
    int64_t d = m->cfg.hidden;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab)
            return mp_errorf(MP_EFORMAT, "token id %d outside the vocabulary [0, %d)", ids[i], m->cfg.vocab);
        MP_CHECK(mp_ckpt_read_f32(m->ck, t, (int64_t)ids[i] * d, d, h + (int64_t)i * d));
        MP_CHECK(check_finite(m, "model.embed_tokens.weight", h + (int64_t)i * d, d));
    }
    return 0;
}

/* the output head as transformers loads it (model.h: mp_model.head_name): lm_head.weight, or the embedding
 * when tie_word_embeddings is true and the file has no different lm_head.weight */
static const char *head_tensor(const mp_model *m)
{
    if (m->head_name[0])
        return m->head_name;
    return m->cfg.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
}

static int head(void *ctx, float **nw, float **nb, float **hw, float **hb)
{
    const mp_model *m = ctx;
    const mp_config *c = &m->cfg;
    *nw = *nb = *hw = *hb = NULL;
    int64_t n = (int64_t)c->vocab * c->hidden;
    int rc = load(m, nw, c->hidden, "model.norm.weight", 0);
    if (rc == 0 && c->layernorm)
        rc = load(m, nb, c->hidden, "model.norm.bias", 0);
    if (rc == 0)
        rc = load_named(m, hw, n, head_tensor(m));
    if (rc == 0 && c->lm_head_bias)
        rc = load(m, hb, c->vocab, "lm_head.bias", 0);
    if (rc < 0) {
        free(*nw), free(*nb), free(*hw), free(*hb);
        *nw = *nb = *hw = *hb = NULL;
        MP_CHECK(rc);
    }
    return 0;
}

static int expert(void *ctx, int l, int e, mp_proj p, float *out)
{
    const mp_model *m = ctx;
    MP_CHECK(mp_model_read_expert(m, l, e, p, out));
    MP_CHECK(mp_model_check_finite(m, l, e, p, out));
    return 0;
}

void mp_model_weights(const mp_model *m, mp_weights *w)
{
    *w = (mp_weights){&m->cfg, (void *)m, layer_load, expert, embed, head, NULL};
}
