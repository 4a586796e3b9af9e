/* registry.c - expected tensor names and shapes per architecture (see registry.h). */
#include "registry.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "error.h"

const char *mp_layout_name(mp_layout l) { return l == MP_LAYOUT_FUSED ? "fused" : "per-expert"; }

const char *mp_role_name(mp_role r)
{
    static const char *n[MP_ROLE_COUNT] = {"embed", "lm_head", "norm", "attention", "router", "experts", "shared",
                                           "dense_mlp"};
    return (unsigned)r < MP_ROLE_COUNT ? n[r] : "?";
}

const char *mp_proj_name(mp_proj p)
{
    static const char *n[3] = {"gate", "up", "down"};
    return (unsigned)p < 3 ? n[p] : "?";
}

static int mixtral_style(const mp_config *c) { return c->arch == MP_ARCH_MIXTRAL || c->arch == MP_ARCH_PHIMOE; }

static const char *moe_prefix(const mp_config *c, mp_layout layout)
{
    return mixtral_style(c) && layout == MP_LAYOUT_PER_EXPERT ? "block_sparse_moe" : "mlp";
}

void mp_name_router(const mp_config *c, mp_layout layout, int l, char *buf, size_t cap)
{
    const char *r = c->arch == MP_ARCH_PHIMOE && layout == MP_LAYOUT_FUSED ? "router" : "gate";
    snprintf(buf, cap, "model.layers.%d.%s.%s.weight", l, moe_prefix(c, layout), r);
}

void mp_expert_block(const mp_config *c, mp_layout layout, int l, int e, mp_proj p, mp_block_loc *loc)
{
    int64_t d = c->hidden, f = c->moe_ffn;
    loc->rows = p == MP_PROJ_DOWN ? d : f;
    loc->cols = p == MP_PROJ_DOWN ? f : d;
    if (layout == MP_LAYOUT_FUSED) {
        const char *t = p == MP_PROJ_DOWN ? "down_proj" : "gate_up_proj";
        snprintf(loc->name, sizeof loc->name, "model.layers.%d.mlp.experts.%s", l, t);
        loc->first = p == MP_PROJ_DOWN ? (int64_t)e * d * f : (int64_t)e * 2 * f * d + (p == MP_PROJ_UP ? f * d : 0);
        return;
    }
    static const char *mix[3] = {"w1", "w3", "w2"};
    static const char *std[3] = {"gate_proj", "up_proj", "down_proj"};
    snprintf(loc->name, sizeof loc->name, "model.layers.%d.%s.experts.%d.%s.weight", l, moe_prefix(c, layout), e,
             mixtral_style(c) ? mix[p] : std[p]);
    loc->first = 0;
}

int64_t mp_expert_params(const mp_config *c) { return 3 * (int64_t)c->hidden * c->moe_ffn; }

typedef struct {
    mp_tensor_spec *v;
    int n, cap;
    int err;       /* 1 out of memory, 2 a tensor too large, 3 too many tensors */
    int64_t total; /* elements of all tensors */
} spec_list;

static void add(spec_list *s, mp_role role, int layer, int expert, int ndim, int64_t a, int64_t b, int64_t c3,
                const char *fmt, ...) __attribute__((format(printf, 9, 10)));

static void add(spec_list *s, mp_role role, int layer, int expert, int ndim, int64_t a, int64_t b, int64_t c3,
                const char *fmt, ...)
{
    if (s->err)
        return;
    if (s->n >= MP_REGISTRY_MAX_TENSORS) {
        s->err = 3;
        return;
    }
    if (s->n == s->cap) {
        int nc = s->cap ? 2 * s->cap : 256;
        mp_tensor_spec *nv = realloc(s->v, (size_t)nc * sizeof *nv);
        if (!nv) {
            s->err = 1;
            return;
        }
        s->v = nv;
        s->cap = nc;
    }
    mp_tensor_spec *t = &s->v[s->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->shape[0] = a;
    t->shape[1] = b;
    t->shape[2] = c3;
    t->role = role;
    t->layer = layer;
    t->expert = expert;
    int64_t numel;
    if (mp_dims_product(t->shape, ndim, MP_MAX_ELEMS, &numel) < 0 || mp_add_i64(s->total, numel, &s->total) < 0 ||
        s->total > MP_REGISTRY_MAX_PARAMS)
        s->err = 2;
}

static void add_norm(spec_list *s, const mp_config *c, int layer, int64_t n, const char *name)
{
    add(s, MP_ROLE_NORM, layer, -1, 1, n, 0, 0, "%s.weight", name);
    if (c->layernorm)
        add(s, MP_ROLE_NORM, layer, -1, 1, n, 0, 0, "%s.bias", name);
}

static void add_mlp(spec_list *s, mp_role role, int l, int64_t d, int64_t f, const char *prefix)
{
    add(s, role, l, -1, 2, f, d, 0, "model.layers.%d.%s.gate_proj.weight", l, prefix);
    add(s, role, l, -1, 2, f, d, 0, "model.layers.%d.%s.up_proj.weight", l, prefix);
    add(s, role, l, -1, 2, d, f, 0, "model.layers.%d.%s.down_proj.weight", l, prefix);
}

static void add_attention(spec_list *s, const mp_config *c, int l)
{
    int64_t d = c->hidden, H = c->n_heads;
    char p[64];
    snprintf(p, sizeof p, "model.layers.%d.self_attn", l);
    if (c->arch == MP_ARCH_DEEPSEEK_V2 || c->arch == MP_ARCH_DEEPSEEK_V3) {
        int64_t qk = c->qk_nope_dim + c->qk_rope_dim;
        if (c->q_lora_rank > 0) {
            add(s, MP_ROLE_ATTN, l, -1, 2, c->q_lora_rank, d, 0, "%s.q_a_proj.weight", p);
            add(s, MP_ROLE_NORM, l, -1, 1, c->q_lora_rank, 0, 0, "%s.q_a_layernorm.weight", p);
            add(s, MP_ROLE_ATTN, l, -1, 2, H * qk, c->q_lora_rank, 0, "%s.q_b_proj.weight", p);
        } else {
            add(s, MP_ROLE_ATTN, l, -1, 2, H * qk, d, 0, "%s.q_proj.weight", p);
        }
        add(s, MP_ROLE_ATTN, l, -1, 2, c->kv_lora_rank + c->qk_rope_dim, d, 0, "%s.kv_a_proj_with_mqa.weight", p);
        add(s, MP_ROLE_NORM, l, -1, 1, c->kv_lora_rank, 0, 0, "%s.kv_a_layernorm.weight", p);
        add(s, MP_ROLE_ATTN, l, -1, 2, H * (c->qk_nope_dim + c->v_head_dim), c->kv_lora_rank, 0,
            "%s.kv_b_proj.weight", p);
        add(s, MP_ROLE_ATTN, l, -1, 2, d, H * c->v_head_dim, 0, "%s.o_proj.weight", p);
        return;
    }
    int64_t q = H * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    static const char *qkv[3] = {"q_proj", "k_proj", "v_proj"};
    int64_t out[3] = {q, kv, kv};
    for (int i = 0; i < 3; i++) {
        add(s, MP_ROLE_ATTN, l, -1, 2, out[i], d, 0, "%s.%s.weight", p, qkv[i]);
        if (c->attn_bias)
            add(s, MP_ROLE_ATTN, l, -1, 1, out[i], 0, 0, "%s.%s.bias", p, qkv[i]);
    }
    add(s, MP_ROLE_ATTN, l, -1, 2, d, q, 0, "%s.o_proj.weight", p);
    if (c->o_bias)
        add(s, MP_ROLE_ATTN, l, -1, 1, d, 0, 0, "%s.o_proj.bias", p);
    if (c->qk_norm == MP_QKNORM_HEAD) {
        add(s, MP_ROLE_NORM, l, -1, 1, c->head_dim, 0, 0, "%s.q_norm.weight", p);
        add(s, MP_ROLE_NORM, l, -1, 1, c->head_dim, 0, 0, "%s.k_norm.weight", p);
    } else if (c->qk_norm == MP_QKNORM_FULL) {
        add(s, MP_ROLE_NORM, l, -1, 1, q, 0, 0, "%s.q_norm.weight", p);
        add(s, MP_ROLE_NORM, l, -1, 1, kv, 0, 0, "%s.k_norm.weight", p);
    }
}

static void add_moe(spec_list *s, const mp_config *c, mp_layout layout, int l)
{
    int64_t d = c->hidden, f = c->moe_ffn, E = c->n_experts;
    char nm[MP_NAME_MAX];
    mp_name_router(c, layout, l, nm, sizeof nm);
    add(s, MP_ROLE_ROUTER, l, -1, 2, E, d, 0, "%s", nm);
    if (strcmp(c->topk_method, "noaux_tc") == 0)
        add(s, MP_ROLE_ROUTER, l, -1, 1, E, 0, 0, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
    if (layout == MP_LAYOUT_FUSED) {
        add(s, MP_ROLE_EXPERT, l, -1, 3, E, 2 * f, d, "model.layers.%d.mlp.experts.gate_up_proj", l);
        add(s, MP_ROLE_EXPERT, l, -1, 3, E, d, f, "model.layers.%d.mlp.experts.down_proj", l);
    } else {
        for (int e = 0; e < E && !s->err; e++)
            for (int p = 0; p < 3; p++) {
                mp_block_loc b;
                mp_expert_block(c, layout, l, e, (mp_proj)p, &b);
                add(s, MP_ROLE_EXPERT, l, e, 2, b.rows, b.cols, 0, "%s", b.name);
            }
    }
    if (c->n_shared > 0 && c->shared_ffn > 0) {
        const char *sp = c->arch == MP_ARCH_QWEN2_MOE ? "mlp.shared_expert" : "mlp.shared_experts";
        add_mlp(s, MP_ROLE_SHARED, l, d, c->shared_ffn, sp);
        if (c->shared_gate)
            add(s, MP_ROLE_SHARED, l, -1, 2, 1, d, 0, "model.layers.%d.mlp.shared_expert_gate.weight", l);
    }
}

int mp_registry_list(const mp_config *c, mp_layout layout, mp_tensor_spec **out, int *n)
{
    spec_list s = {0};
    int64_t d = c->hidden, V = c->vocab;
    add(&s, MP_ROLE_EMBED, -1, -1, 2, V, d, 0, "model.embed_tokens.weight");
    for (int l = 0; l < c->n_layers && !s.err; l++) {
        char nm[64];
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm", l);
        add_norm(&s, c, l, d, nm);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm", l);
        add_norm(&s, c, l, d, nm);
        add_attention(&s, c, l);
        if (c->is_moe[l])
            add_moe(&s, c, layout, l);
        else
            add_mlp(&s, MP_ROLE_DENSE, l, d, c->dense_ffn, "mlp");
    }
    add_norm(&s, c, -1, d, "model.norm");
    if (!c->tie_embeddings) {
        add(&s, MP_ROLE_LM_HEAD, -1, -1, 2, V, d, 0, "lm_head.weight");
        if (c->lm_head_bias)
            add(&s, MP_ROLE_LM_HEAD, -1, -1, 1, V, 0, 0, "lm_head.bias");
    }
    if (s.err) {
        int err = s.err;
        char last[MP_NAME_MAX] = "";
        if (s.n > 0)
            snprintf(last, sizeof last, "%s", s.v[s.n - 1].name);
        free(s.v);
        if (err == 1)
            return mp_errorf(MP_ENOMEM, "out of memory");
        if (err == 3)
            return mp_errorf(MP_ECONFIG, "%s: the sizes in this config imply more than %d tensors", c->file,
                             MP_REGISTRY_MAX_TENSORS);
        return mp_errorf(MP_ECONFIG,
                         "%s: the sizes in this config imply tensor '%s' with more than 2^50 elements, or more than "
                         "2^52 parameters in all",
                         c->file, last);
    }
    *out = s.v;
    *n = s.n;
    return 0;
}
