/* forward.c - fp32 forward-pass building blocks (see forward.h). */
#include "forward.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

int mp_forward_supported(const mp_config *c)
{
    /* what the config asks for is valid, but this forward pass cannot compute it: a config problem
     * (MP_ECONFIG, exit 4) naming the file and the key, never a command-line error */
    if (c->arch != MP_ARCH_MIXTRAL && c->arch != MP_ARCH_QWEN2_MOE && c->arch != MP_ARCH_QWEN3_MOE &&
        c->arch != MP_ARCH_OLMOE)
        return mp_errorf(MP_ECONFIG,
                         "%s: key 'model_type': the forward pass does not support %s yet (mixtral, qwen2_moe, "
                         "qwen3_moe, olmoe)",
                         c->file, mp_arch_name(c->arch));
    if (strcmp(c->rope_type, "default") && strcmp(c->rope_type, "linear"))
        return mp_errorf(MP_ECONFIG,
                         "%s: key '%s': the forward pass does not support rope type '%s' yet (default, "
                         "linear)",
                         c->file, c->rope_type_key, c->rope_type);
    if (c->sliding_window > 0)
        return mp_errorf(MP_ECONFIG,
                         "%s: key 'sliding_window' = %d: the forward pass does not support sliding-window attention "
                         "yet",
                         c->file, c->sliding_window);
    if (c->n_experts > MP_FORWARD_MAX_EXPERTS)
        return mp_errorf(MP_ECONFIG, "%s: %d experts per layer is more than the forward pass supports (%d)", c->file,
                         c->n_experts, MP_FORWARD_MAX_EXPERTS);
    if (c->top_k > MP_FORWARD_MAX_TOPK)
        return mp_errorf(MP_ECONFIG, "%s: key 'num_experts_per_tok' = %d is more than the forward pass supports (%d)",
                         c->file, c->top_k, MP_FORWARD_MAX_TOPK);
    /* the forward pass holds these products in int */
    if ((int64_t)c->n_heads * c->head_dim > MP_CONFIG_SIZE_MAX ||
        (int64_t)c->n_kv_heads * c->head_dim > MP_CONFIG_SIZE_MAX)
        return mp_errorf(MP_ECONFIG,
                         "%s: num_attention_heads %d x head_dim %d is larger than the forward pass "
                         "supports (%d)",
                         c->file, c->n_heads, c->head_dim, MP_CONFIG_SIZE_MAX);
    return 0;
}

void mp_layer_free(mp_layer_w *w)
{
    float **p[] = {&w->in_norm, &w->in_norm_b, &w->post_norm, &w->post_norm_b, &w->wq,      &w->wk,
                   &w->wv,      &w->wo,        &w->bq,        &w->bk,          &w->bv,      &w->bo,
                   &w->q_norm,  &w->k_norm,    &w->router,    &w->sh_gate,     &w->sh_up,   &w->sh_down,
                   &w->sh_gate_w, &w->mlp_gate, &w->mlp_up,   &w->mlp_down};
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

int64_t mp_attention_scratch(const mp_config *c, int S)
{
    int64_t qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
    /* q, k, v, attention output; scores; the rotary table (cos and sin of S x head_dim / 2 angles) */
    return (int64_t)S * (qd + 2 * kvd + qd) + (int64_t)S * S + (int64_t)S * c->head_dim;
}

static void add_bias(float *y, int n, int m, const float *b)
{
    if (b)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < m; j++)
                y[(int64_t)i * m + j] += b[j];
}

/* the rotary table of positions 0..S-1: cs, sn [S, half] (half = rd / 2) */
static void rope_table(const mp_config *c, int S, int rd, float *cs, float *sn)
{
    int half = rd / 2;
    double scale = strcmp(c->rope_type, "linear") == 0 ? c->rope_factor : 1.0;
    for (int i = 0; i < half; i++) {
        float inv = (float)(1.0 / pow(c->rope_theta, (double)(2 * i) / rd));
        for (int pos = 0; pos < S; pos++) {
            float ang = (float)((double)pos / scale) * inv;
            cs[(int64_t)pos * half + i] = cosf(ang), sn[(int64_t)pos * half + i] = sinf(ang);
        }
    }
}

/* rotate-half rope on one vector v [rd..] with the angles of its position (cs, sn [half]) */
static void rope(float *v, int half, const float *cs, const float *sn)
{
    for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cs[i] - b * sn[i];
        v[i + half] = b * cs[i] + a * sn[i];
    }
}

int mp_attention(const mp_config *c, const mp_layer_w *w, const float *x, int S, float *out, float *scratch)
{
    int d = c->hidden, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim;
    int qd = H * hd, kvd = KV * hd, grp = H / KV;
    int rd = (int)(hd * c->partial_rotary_factor);
    rd -= rd % 2;
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
    int half = rd / 2;
    float *cs = sc + (int64_t)S * S, *sn = cs + (int64_t)S * half; /* S * rd <= S * hd floats */
    rope_table(c, S, rd, cs, sn);
    for (int s = 0; s < S; s++) {
        const float *cp = cs + (int64_t)s * half, *sp = sn + (int64_t)s * half;
        for (int h = 0; h < H; h++)
            rope(q + (int64_t)s * qd + h * hd, half, cp, sp);
        for (int h = 0; h < KV; h++)
            rope(k + (int64_t)s * kvd + h * hd, half, cp, sp);
    }
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < H; h++) {
        const float *qh = q + h * hd, *kh = k + (h / grp) * hd, *vh = v + (h / grp) * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, hd, scale, qh, qd, kh, kvd, 0.0f, sc, S);
        for (int i = 0; i < S; i++) {
            float *row = sc + (int64_t)i * S, mx = -INFINITY, sum = 0;
            for (int j = 0; j <= i; j++)
                mx = row[j] > mx ? row[j] : mx;
            for (int j = 0; j <= i; j++)
                sum += row[j] = expf(row[j] - mx);
            for (int j = 0; j <= i; j++)
                row[j] /= sum;
            for (int j = i + 1; j < S; j++)
                row[j] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, hd, S, 1.0f, sc, S, vh, kvd, 0.0f, att + h * hd, qd);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, d, qd, 1.0f, att, qd, w->wo, qd, 0.0f, out, d);
    add_bias(out, S, d, w->bo);
    return 0;
}

void mp_route(const mp_config *c, const mp_layer_w *w, const float *x, int n, float *logits, int *idx, float *wt)
{
    int E = c->n_experts, K = c->top_k, d = c->hidden;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, E, d, 1.0f, x, d, w->router, d, 0.0f, logits, E);
    _Static_assert(MP_FORWARD_MAX_EXPERTS <= 4096, "p holds one token's router probabilities");
    float p[4096];
    for (int t = 0; t < n; t++) {
        const float *lg = logits + (int64_t)t * E;
        float mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; e++)
            mx = lg[e] > mx ? lg[e] : mx;
        for (int e = 0; e < E; e++)
            sum += p[e] = expf(lg[e] - mx);
        for (int e = 0; e < E; e++)
            p[e] /= sum;
        int *ix = idx + (int64_t)t * K;
        float *wk = wt + (int64_t)t * K, tot = 0;
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int used = 0;
                for (int j = 0; j < k; j++)
                    used |= ix[j] == e;
                if (!used && (best < 0 || p[e] > p[best]))
                    best = e;
            }
            ix[k] = best;
            wk[k] = p[best];
            tot += p[best];
        }
        if (c->norm_topk_prob)
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
    for (int64_t i = 0; i < (int64_t)n * f; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
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

void mp_lm_head(const mp_config *c, const float *w, const float *b, const float *x, int n, float *logits)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, c->vocab, c->hidden, 1.0f, x, c->hidden, w, c->hidden,
                0.0f, logits, c->vocab);
    add_bias(logits, n, c->vocab, b);
}
