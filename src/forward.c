/* forward.c - fp32 forward-pass building blocks (see forward.h). */
#include "forward.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "vmath.h"

static int is_deepseek(const mp_config *c) { return c->arch == MP_ARCH_DEEPSEEK_V2 || c->arch == MP_ARCH_DEEPSEEK_V3; }

int mp_forward_supported(const mp_config *c)
{
    /* what the config asks for is valid, but this forward pass cannot compute it: a config problem
     * (MP_ECONFIG, exit 4) naming the file and the key, never a command-line error */
    if (c->arch != MP_ARCH_MIXTRAL && c->arch != MP_ARCH_QWEN2_MOE && c->arch != MP_ARCH_QWEN3_MOE &&
        c->arch != MP_ARCH_OLMOE && c->arch != MP_ARCH_PHIMOE && c->arch != MP_ARCH_DEEPSEEK && !is_deepseek(c))
        return mp_errorf(MP_ECONFIG,
                         "%s: key 'model_type': the forward pass does not support %s yet (mixtral, qwen2_moe, "
                         "qwen3_moe, olmoe, deepseek, deepseek_v2, deepseek_v3, phimoe)",
                         c->file, mp_arch_name(c->arch));
    if (c->arch == MP_ARCH_PHIMOE && c->top_k != 2)
        return mp_errorf(MP_ECONFIG,
                         "%s: key 'num_experts_per_tok' = %d: Phi-3.5-MoE's sparsemixer routes every token to 2 "
                         "experts",
                         c->file, c->top_k);
    if (strcmp(c->rope_type, "default") && strcmp(c->rope_type, "linear") && strcmp(c->rope_type, "dynamic") &&
        strcmp(c->rope_type, "yarn") && strcmp(c->rope_type, "longrope"))
        return mp_errorf(MP_ECONFIG,
                         "%s: key '%s': the forward pass does not support rope type '%s' yet (default, "
                         "linear, dynamic, yarn, longrope)",
                         c->file, c->rope_type_key, c->rope_type);
    if (!strcmp(c->rope_type, "longrope") && (!c->rope_short_factor || !c->rope_long_factor))
        return mp_errorf(MP_ECONFIG, "%s: key '%s' is 'longrope' but short_factor or long_factor is missing", c->file,
                         c->rope_type_key);
    if (is_deepseek(c) && c->attn_bias)
        return mp_errorf(MP_ECONFIG,
                         "%s: key 'attention_bias' = true: the forward pass does not support biases in DeepSeek's "
                         "latent attention yet",
                         c->file);
    if (is_deepseek(c) && c->moe_layer_freq != 1)
        return mp_errorf(MP_ECONFIG,
                         "%s: key 'moe_layer_freq' = %d: transformers' DeepSeek classes make every layer from "
                         "first_k_dense_replace on a MoE layer; only moe_layer_freq 1 is supported",
                         c->file, c->moe_layer_freq);
    if (is_deepseek(c) && c->n_heads != c->n_kv_heads)
        return mp_errorf(MP_ECONFIG,
                         "%s: key 'num_key_value_heads' = %d: DeepSeek's latent attention expands one key/value head "
                         "per query head; num_attention_heads is %d",
                         c->file, c->n_kv_heads, c->n_heads);
    /* Mixtral and Phi-3.5-MoE slide every layer's window; Qwen's per-layer windows are not done */
    if (c->sliding_window > 0 && c->arch != MP_ARCH_MIXTRAL && c->arch != MP_ARCH_PHIMOE)
        return mp_errorf(MP_ECONFIG,
                         "%s: key 'use_sliding_window' = true (sliding_window %d): the forward pass does not support "
                         "%s's sliding-window attention yet",
                         c->file, c->sliding_window, mp_arch_name(c->arch));
    int rd = is_deepseek(c) ? c->qk_rope_dim : (int)(c->head_dim * c->partial_rotary_factor);
    if (!strcmp(c->rope_type, "longrope") && (c->n_rope_short != rd / 2 || c->n_rope_long != rd / 2))
        return mp_errorf(MP_ECONFIG,
                         "%s: rope short_factor / long_factor have %d / %d entries; %d rotary dimensions need %d",
                         c->file, c->n_rope_short, c->n_rope_long, rd, rd / 2);
    if (rd > 1024)
        return mp_errorf(MP_ECONFIG, "%s: %d rotary dimensions per head are more than the forward pass supports (1024)",
                         c->file, rd);
    if (is_deepseek(c) && c->n_group > 64)
        return mp_errorf(MP_ECONFIG, "%s: key 'n_group' = %d is more than the forward pass supports (64)", c->file,
                         c->n_group);
    if (c->n_experts > MP_FORWARD_MAX_EXPERTS)
        return mp_errorf(MP_ECONFIG, "%s: %d experts per layer is more than the forward pass supports (%d)", c->file,
                         c->n_experts, MP_FORWARD_MAX_EXPERTS);
    if (c->top_k > MP_FORWARD_MAX_TOPK)
        return mp_errorf(MP_ECONFIG, "%s: key 'num_experts_per_tok' = %d is more than the forward pass supports (%d)",
                         c->file, c->top_k, MP_FORWARD_MAX_TOPK);
    /* the forward pass holds these products in int */
    if ((int64_t)c->n_heads * c->head_dim > MP_CONFIG_SIZE_MAX ||
        (int64_t)c->n_kv_heads * c->head_dim > MP_CONFIG_SIZE_MAX ||
        (int64_t)c->n_heads * (c->qk_nope_dim + c->v_head_dim) > MP_CONFIG_SIZE_MAX)
        return mp_errorf(MP_ECONFIG,
                         "%s: num_attention_heads %d x the head size is larger than the forward pass "
                         "supports (%d)",
                         c->file, c->n_heads, MP_CONFIG_SIZE_MAX);
    return 0;
}

void mp_layer_free(mp_layer_w *w)
{
    float **p[] = {&w->in_norm, &w->in_norm_b, &w->post_norm, &w->post_norm_b, &w->wq,      &w->wk,
                   &w->wv,      &w->wo,        &w->bq,        &w->bk,          &w->bv,      &w->bo,
                   &w->q_norm,  &w->k_norm,    &w->router,    &w->sh_gate,     &w->sh_up,   &w->sh_down,
                   &w->sh_gate_w, &w->mlp_gate, &w->mlp_up,   &w->mlp_down, &w->wq_a,  &w->q_a_norm,
                   &w->wq_b,    &w->wkv_a,     &w->kv_a_norm, &w->wkv_b,     &w->router_bias};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
        free(*p[i]);
        *p[i] = NULL;
    }
}

void mp_norm(const mp_config *c, const float *x, int n, int d, const float *w, const float *b, float *out)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (int64_t)i * d;
        float *o = out + (int64_t)i * d;
        if (c->layernorm) {
            float mean = 0, var = 0;
            for (int j = 0; j < d; j++)
                mean += xi[j];
            mean /= (float)d;
            for (int j = 0; j < d; j++)
                var += (xi[j] - mean) * (xi[j] - mean);
            float r = 1.0f / sqrtf(var / (float)d + (float)c->norm_eps);
            for (int j = 0; j < d; j++)
                o[j] = (xi[j] - mean) * r * w[j] + (b ? b[j] : 0.0f);
        } else {
            float ss = 0;
            for (int j = 0; j < d; j++)
                ss += xi[j] * xi[j];
            float r = 1.0f / sqrtf(ss / (float)d + (float)c->norm_eps);
            for (int j = 0; j < d; j++)
                o[j] = w[j] * (xi[j] * r);
        }
    }
}

/* MLA sizes: q [S, H qk], q_a [S, ql], ckv [S, r + rope], kv [S, H (nope + v)], K [S, H qk], att [S, H v] */
static int64_t mla_scratch(const mp_config *c, int S)
{
    int64_t H = c->n_heads, qk = c->qk_nope_dim + c->qk_rope_dim;
    return (int64_t)S * (2 * H * qk + c->q_lora_rank + c->kv_lora_rank + c->qk_rope_dim +
                         H * (c->qk_nope_dim + c->v_head_dim) + H * c->v_head_dim) +
           (int64_t)S * S;
}

/* rotary dimensions per head */
static int rope_dims(const mp_config *c)
{
    if (is_deepseek(c))
        return c->qk_rope_dim;
    int rd = (int)(c->head_dim * c->partial_rotary_factor);
    return rd - rd % 2;
}

static int64_t attention_scratch_base(const mp_config *c, int S)
{
    if (is_deepseek(c))
        return mla_scratch(c, S);
    int64_t qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
    return (int64_t)S * (qd + 2 * kvd + qd) + (int64_t)S * S + (int64_t)S * c->head_dim;
}

/* the base, then the rotary table: cos and sin of every position and frequency (rope_angles) */
int64_t mp_attention_scratch(const mp_config *c, int S)
{
    return attention_scratch_base(c, S) + (int64_t)S * rope_dims(c);
}

static void add_bias(float *y, int n, int m, const float *b)
{
    if (b)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < m; j++)
                y[(int64_t)i * m + j] += b[j];
}

/* YaRN's magnitude correction (transformers' get_mscale / yarn_get_mscale) */
static double yarn_mscale(double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0; }

/* The rotary frequencies inv[rd / 2] and the factor on cos/sin for sequences of S tokens, as transformers'
 * rope init functions compute them (the dynamic rope equals the default one up to max_position_embeddings,
 * which the callers guarantee; longrope takes its long factors past original_max_position_embeddings). */
typedef struct {
    float inv[512];
    float mscale;
} rope_tab;

static void rope_table(const mp_config *c, int rd, int S, rope_tab *t)
{
    int half = rd / 2;
    double base = c->rope_theta, f = c->rope_factor;
    if (!c->rope_has_factor && (!strcmp(c->rope_type, "yarn") || !strcmp(c->rope_type, "longrope")))
        f = (double)c->max_pos / c->rope_orig_max_pos; /* transformers' default for both */
    t->mscale = 1.0f;
    for (int i = 0; i < half; i++)
        t->inv[i] = (float)(1.0 / pow(base, (double)(2 * i) / rd));
    if (!strcmp(c->rope_type, "linear")) {
        for (int i = 0; i < half; i++)
            t->inv[i] = (float)(t->inv[i] / f);
    } else if (!strcmp(c->rope_type, "yarn")) {
        double af = c->rope_attention_factor;
        if (af <= 0)
            af = c->rope_mscale > 0 && c->rope_mscale_all_dim > 0
                     ? yarn_mscale(f, c->rope_mscale) / yarn_mscale(f, c->rope_mscale_all_dim)
                     : yarn_mscale(f, 1.0);
        t->mscale = (float)af;
        double omp = c->rope_orig_max_pos, bf = c->rope_beta_fast > 0 ? c->rope_beta_fast : 32,
               bs = c->rope_beta_slow > 0 ? c->rope_beta_slow : 1;
        double lo = rd * log(omp / (bf * 2 * M_PI)) / (2 * log(base));
        double hi = rd * log(omp / (bs * 2 * M_PI)) / (2 * log(base));
        if (c->rope_truncate)
            lo = floor(lo), hi = ceil(hi);
        lo = lo > 0 ? lo : 0;
        hi = hi < rd - 1 ? hi : rd - 1;
        if (lo == hi)
            hi += 0.001;
        for (int i = 0; i < half; i++) {
            float pf = (float)pow(base, (double)(2 * i) / rd);
            float ramp = (float)((i - lo) / (hi - lo));
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            float ex = 1.0f - ramp; /* the extrapolation share */
            t->inv[i] = 1.0f / ((float)f * pf) * (1.0f - ex) + 1.0f / pf * ex;
        }
    } else if (!strcmp(c->rope_type, "longrope")) {
        int lng = S > c->rope_orig_max_pos;
        const double *ext = lng ? c->rope_long_factor : c->rope_short_factor;
        for (int i = 0; i < half; i++)
            t->inv[i] = 1.0f / ((float)ext[i] * (float)pow(base, (double)(2 * i) / rd));
        double af = c->rope_attention_factor > 0 ? c->rope_attention_factor
                    : f <= 1.0                 ? 1.0
                                               : sqrt(1 + log(f) / log((double)c->rope_orig_max_pos));
        double pm = lng ? c->rope_long_mscale : c->rope_short_mscale; /* Phi-3.5-MoE's own factors */
        t->mscale = (float)(pm > 0 ? pm : af);
    }
}

/* the rotary table of positions [0, S): cs[s rd / 2 + i] = cos(s inv[i]) mscale, sn likewise with sin (once per
 * attention call, not once per head) */
static void rope_angles(const rope_tab *t, int rd, int S, float *cs, float *sn)
{
    int half = rd / 2;
    for (int s = 0; s < S; s++)
        for (int i = 0; i < half; i++) {
            float ang = (float)s * t->inv[i];
            cs[(int64_t)s * half + i] = cosf(ang) * t->mscale, sn[(int64_t)s * half + i] = sinf(ang) * t->mscale;
        }
}

/* rope on one [rd] vector with the angles cs/sn [rd / 2] of its position: pairs (i, i + rd/2) (rotate-half)
 * or (2i, 2i + 1) (interleaved) */
static void rope(float *v, int rd, const float *cs, const float *sn, int interleave)
{
    int half = rd / 2;
    for (int i = 0; i < half; i++) {
        float *pa = interleave ? v + 2 * i : v + i, *pb = interleave ? v + 2 * i + 1 : v + i + half;
        float a = *pa, b = *pb;
        *pa = a * cs[i] - b * sn[i];
        *pb = b * cs[i] + a * sn[i];
    }
}

/* causal softmax of the rows of sc [S, S]; with a window W > 0 row i sees the keys j > i - W */
static void causal_softmax(float *sc, int S, int W)
{
    for (int i = 0; i < S; i++) {
        float *row = sc + (int64_t)i * S, mx, sum;
        int j0 = W > 0 && i - W + 1 > 0 ? i - W + 1 : 0;
        mx = mp_vmax(row + j0, i + 1 - j0);
        sum = mp_exp_shift_sum(row + j0, i + 1 - j0, mx);
        for (int j = j0; j <= i; j++)
            row[j] /= sum;
        memset(row, 0, sizeof(float) * (size_t)j0);
        memset(row + i + 1, 0, sizeof(float) * (size_t)(S - 1 - i));
    }
}

/* DeepSeek's multi-head latent attention (transformers' DeepseekV2Attention / DeepseekV3Attention, eager) */
static int mla_attention(const mp_config *c, const mp_layer_w *w, const float *x, int S, float *out, float *scratch)
{
    int d = c->hidden, H = c->n_heads, nope = c->qk_nope_dim, rd = c->qk_rope_dim, vd = c->v_head_dim;
    int qk = nope + rd, ql = c->q_lora_rank, r = c->kv_lora_rank, kvw = nope + vd;
    float *q = scratch, *qa = q + (int64_t)S * H * qk, *ckv = qa + (int64_t)S * ql, *kv = ckv + (int64_t)S * (r + rd);
    float *K = kv + (int64_t)S * H * kvw, *att = K + (int64_t)S * H * qk, *sc = att + (int64_t)S * H * vd;
    mp_config rc = *c; /* q_a_layernorm and kv_a_layernorm: RMSNorm with transformers' default eps */
    rc.layernorm = 0;
    rc.norm_eps = 1e-6;
    if (ql > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, ql, d, 1.0f, x, d, w->wq_a, d, 0.0f, qa, ql);
        mp_norm(&rc, qa, S, ql, w->q_a_norm, NULL, qa);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, H * qk, ql, 1.0f, qa, ql, w->wq_b, ql, 0.0f, q, H * qk);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, H * qk, d, 1.0f, x, d, w->wq, d, 0.0f, q, H * qk);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, r + rd, d, 1.0f, x, d, w->wkv_a, d, 0.0f, ckv, r + rd);
    for (int s = 0; s < S; s++)
        mp_norm(&rc, ckv + (int64_t)s * (r + rd), 1, r, w->kv_a_norm, NULL, ckv + (int64_t)s * (r + rd));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, H * kvw, r, 1.0f, ckv, r + rd, w->wkv_b, r, 0.0f, kv,
                H * kvw);
    rope_tab t;
    rope_table(c, rd, S, &t);
    float *cs = scratch + mla_scratch(c, S), *sn = cs + (int64_t)S * (rd / 2);
    rope_angles(&t, rd, S, cs, sn);
    for (int s = 0; s < S; s++) {
        float *kpe = ckv + (int64_t)s * (r + rd) + r;
        const float *cp = cs + (int64_t)s * (rd / 2), *sp = sn + (int64_t)s * (rd / 2);
        rope(kpe, rd, cp, sp, c->rope_interleave);
        for (int h = 0; h < H; h++) {
            float *qh = q + ((int64_t)s * H + h) * qk, *kh = K + ((int64_t)s * H + h) * qk;
            rope(qh + nope, rd, cp, sp, c->rope_interleave);
            memcpy(kh, kv + ((int64_t)s * H + h) * kvw, sizeof(float) * (size_t)nope);
            memcpy(kh + nope, kpe, sizeof(float) * (size_t)rd);
        }
    }
    double scale = 1.0 / sqrt((double)qk);
    if (strcmp(c->rope_type, "default") && c->rope_mscale_all_dim != 0) {
        double m = yarn_mscale(c->rope_factor, c->rope_mscale_all_dim);
        scale *= m * m;
    }
    for (int h = 0; h < H; h++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, qk, (float)scale, q + h * qk, H * qk, K + h * qk,
                    H * qk, 0.0f, sc, S);
        causal_softmax(sc, S, 0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, vd, S, 1.0f, sc, S, kv + h * kvw + nope, H * kvw,
                    0.0f, att + h * vd, H * vd);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, d, H * vd, 1.0f, att, H * vd, w->wo, H * vd, 0.0f, out, d);
    return 0;
}

int mp_attention(const mp_config *c, const mp_layer_w *w, const float *x, int S, float *out, float *scratch)
{
    if (is_deepseek(c))
        return mla_attention(c, w, x, S, out, scratch);
    int d = c->hidden, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
    int qd = H * hd, kvd = KV * hd, grp = H / KV;
    int rd = rope_dims(c);
    float *q = scratch, *k = q + (int64_t)S * qd, *v = k + (int64_t)S * kvd, *att = v + (int64_t)S * kvd;
    float *sc = att + (int64_t)S * qd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, qd, d, 1.0f, x, d, w->wq, d, 0.0f, q, qd);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, kvd, d, 1.0f, x, d, w->wk, d, 0.0f, k, kvd);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, kvd, d, 1.0f, x, d, w->wv, d, 0.0f, v, kvd);
    add_bias(q, S, qd, w->bq);
    add_bias(k, S, kvd, w->bk);
    add_bias(v, S, kvd, w->bv);
    mp_config rc = *c;
    rc.layernorm = 0;
    if (c->qk_norm == MP_QKNORM_FULL) {
        mp_norm(&rc, q, S, qd, w->q_norm, NULL, q);
        mp_norm(&rc, k, S, kvd, w->k_norm, NULL, k);
    } else if (c->qk_norm == MP_QKNORM_HEAD) {
        mp_norm(&rc, q, S * H, hd, w->q_norm, NULL, q);
        mp_norm(&rc, k, S * KV, hd, w->k_norm, NULL, k);
    }
    if (c->clip_qkv > 0) {
        float cl = (float)c->clip_qkv;
        float *arrs[3] = {q, k, v};
        int64_t lens[3] = {(int64_t)S * qd, (int64_t)S * kvd, (int64_t)S * kvd};
        for (int a = 0; a < 3; a++)
            for (int64_t i = 0; i < lens[a]; i++)
                arrs[a][i] = arrs[a][i] > cl ? cl : arrs[a][i] < -cl ? -cl : arrs[a][i];
    }
    rope_tab t;
    rope_table(c, rd, S, &t);
    float *cs = scratch + attention_scratch_base(c, S), *sn = cs + (int64_t)S * (rd / 2);
    rope_angles(&t, rd, S, cs, sn);
    for (int s = 0; s < S; s++) {
        const float *cp = cs + (int64_t)s * (rd / 2), *sp = sn + (int64_t)s * (rd / 2);
        for (int h = 0; h < H; h++)
            rope(q + (int64_t)s * qd + h * hd, rd, cp, sp, 0);
        for (int h = 0; h < KV; h++)
            rope(k + (int64_t)s * kvd + h * hd, rd, cp, sp, 0);
    }
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < H; h++) {
        const float *qh = q + h * hd, *kh = k + (h / grp) * hd, *vh = v + (h / grp) * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, hd, scale, qh, qd, kh, kvd, 0.0f, sc, S);
        causal_softmax(sc, S, c->sliding_window);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, hd, S, 1.0f, sc, S, vh, kvd, 0.0f, att + h * hd, qd);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, d, qd, 1.0f, att, qd, w->wo, qd, 0.0f, out, d);
    add_bias(out, S, d, w->bo);
    return 0;
}

/* ix[k]: the k largest of v[n] among those with ok[e] (NULL: all), descending, ties to the lower index */
static void top_k(const float *v, const unsigned char *ok, int n, int k, int *ix)
{
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < n; e++) {
            int used = ok && !ok[e];
            for (int i = 0; i < j && !used; i++)
                used = ix[i] == e;
            if (!used && (best < 0 || v[e] > v[best]))
                best = e;
        }
        ix[j] = best;
    }
}

/* DeepSeek's group limit: ok[e] = 1 for the experts of the topk_group groups of largest score (V2: the
 * group's largest score; V3: the sum of its two largest) */
static void group_mask(const mp_config *c, const float *sc, int v3, unsigned char *ok)
{
    int G = c->n_group, per = c->n_experts / G, gi[64];
    float gs[4096];
    for (int g = 0; g < G; g++) {
        int t2[2] = {0, 0};
        top_k(sc + g * per, NULL, per, per > 1 && v3 ? 2 : 1, t2);
        gs[g] = sc[g * per + t2[0]] + (per > 1 && v3 ? sc[g * per + t2[1]] : 0.0f);
    }
    top_k(gs, NULL, G, c->topk_group, gi);
    memset(ok, 0, (size_t)c->n_experts);
    for (int j = 0; j < c->topk_group; j++)
        memset(ok + gi[j] * per, 1, (size_t)per);
}

/* Phi-3.5-MoE's sparsemixer in eval mode (transformers' sparsemixer, training=False): the largest score, then
 * the largest other one; each weighs softmax over the scores within 2 * router_jitter_noise (relative) of it */
static void sparsemixer(const mp_config *c, const float *s, int E, int *ix, float *wk)
{
    float eps2 = (float)(2 * c->router_jitter);
    for (int k = 0; k < 2; k++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if ((k == 0 || e != ix[0]) && (best < 0 || s[e] > s[best]))
                best = e;
        float m = s[best], sum = 0;
        for (int e = 0; e < E; e++) {
            float f = fabsf(s[e]) > m ? fabsf(s[e]) : m;
            if ((k == 0 || e != ix[0]) && !((m - s[e]) / f > eps2))
                sum += expf(s[e] - m);
        }
        ix[k] = best;
        wk[k] = 1.0f / sum; /* exp(m - m) / sum */
    }
}

void mp_route(const mp_config *c, const mp_layer_w *w, const float *x, int n, float *logits, int *idx, float *wt)
{
    int E = c->n_experts, K = c->top_k, d = c->hidden;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, E, d, 1.0f, x, d, w->router, d, 0.0f, logits, E);
    _Static_assert(MP_FORWARD_MAX_EXPERTS <= 4096, "p holds one token's router probabilities");
    float p[4096], ch[4096];
    unsigned char ok[4096];
    int v3 = c->arch == MP_ARCH_DEEPSEEK_V3, grouped = v3 || !strcmp(c->topk_method, "group_limited_greedy");
    for (int t = 0; t < n; t++) {
        const float *lg = logits + (int64_t)t * E;
        int *ix = idx + (int64_t)t * K;
        float *wk = wt + (int64_t)t * K, tot = 0;
        if (c->arch == MP_ARCH_PHIMOE) {
            sparsemixer(c, lg, E, ix, wk);
            continue;
        }
        if (v3) { /* sigmoid scores; the choice adds e_score_correction_bias, the weights do not */
            for (int e = 0; e < E; e++) {
                p[e] = 1.0f / (1.0f + expf(-lg[e]));
                ch[e] = p[e] + (w->router_bias ? w->router_bias[e] : 0.0f);
            }
        } else {
            float mx = -INFINITY, sum = 0;
            for (int e = 0; e < E; e++)
                mx = lg[e] > mx ? lg[e] : mx;
            for (int e = 0; e < E; e++)
                sum += p[e] = expf(lg[e] - mx);
            for (int e = 0; e < E; e++)
                ch[e] = p[e] /= sum;
        }
        if (grouped && is_deepseek(c))
            group_mask(c, ch, v3, ok);
        top_k(ch, grouped && is_deepseek(c) ? ok : NULL, E, K, ix);
        for (int k = 0; k < K; k++)
            tot += wk[k] = p[ix[k]];
        if (is_deepseek(c)) { /* transformers' DeepseekV2 router never renormalises */
            for (int k = 0; k < K; k++)
                wk[k] = (float)(v3 && c->norm_topk_prob ? wk[k] / (tot + 1e-20f) : wk[k]) * (float)c->routed_scaling;
        } else if (c->norm_topk_prob)
            for (int k = 0; k < K; k++)
                wk[k] /= tot;
    }
}

void mp_swiglu_ws(const float *wg, const float *wu, const float *wd, const float *x, int n, int d, int f, float *y,
                  float *ws)
{
    if (n == 0)
        return;
    float *g = ws, *u = ws + (size_t)n * f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, f, d, 1.0f, x, d, wg, d, 0.0f, g, f);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, f, d, 1.0f, x, d, wu, d, 0.0f, u, f);
    mp_silu_mul(g, u, (int64_t)n * f);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, f, 1.0f, g, f, wd, f, 0.0f, y, d);
}

int mp_swiglu(const float *wg, const float *wu, const float *wd, const float *x, int n, int d, int f, float *y,
              float *hmid)
{
    if (n == 0)
        return 0;
    float *g = malloc(sizeof(float) * (size_t)n * (size_t)f * 2);
    if (!g)
        return mp_errorf(MP_ENOMEM, "out of memory (expert activations for %d tokens)", n);
    mp_swiglu_ws(wg, wu, wd, x, n, d, f, y, g);
    if (hmid)
        memcpy(hmid, g, sizeof(float) * (size_t)n * f);
    free(g);
    return 0;
}

void mp_lm_head(const mp_config *c, const float *w, const float *b, const float *x, int n, int v0, int nv,
                float *logits, int ld)
{
    int d = c->hidden;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nv, d, 1.0f, x, d, w + (int64_t)v0 * d, d, 0.0f, logits,
                ld);
    if (b)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < nv; j++)
                logits[(int64_t)i * ld + j] += b[v0 + j];
}
