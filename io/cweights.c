/* cweights.c - a compressed model as forward weights (see cweights.h). */
#include "cweights.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "quant.h"
#include "vmath.h"
#include "weights.h"

struct mp_cweights {
    const mp_model *m;
    mp_outdir *o;
    mp_weights orig;
    int layer, unit;        /* the cached unit */
    mp_outdir_factors f[3]; /* its three projections */
    float *t, *a, *g, *q;   /* scratch: [n, r], [n, f], [n, f], a quantized input */
    int64_t cap_t, cap_a, cap_g, cap_q;
};

static int load_unit(mp_cweights *c, int l, int u)
{
    if (c->layer == l && c->unit == u)
        return 0;
    for (int p = 0; p < 3; p++)
        mp_outdir_factors_free(&c->f[p]);
    c->layer = c->unit = -1;
    for (int p = 0; p < 3; p++)
        MP_CHECK(mp_outdir_read_factors(c->o, l, u, p, &c->f[p]));
    c->layer = l, c->unit = u;
    return 0;
}

static int grow(float **p, int64_t *cap, int64_t need)
{
    if (need <= *cap)
        return 0;
    float *q = realloc(*p, sizeof(float) * (size_t)need);
    if (!q)
        return mp_errorf(MP_ENOMEM, "out of memory in the compressed forward pass");
    *p = q, *cap = need;
    return 0;
}

/* the rows of X [n, k] as a part with `act` activation bits sees them: X itself, or quantized per token */
static const float *act_input(mp_cweights *c, const float *X, int n, int64_t k, int act)
{
    if (!act)
        return X;
    if (grow(&c->q, &c->cap_q, (int64_t)n * k) < 0)
        return NULL;
    mp_quant_act(X, n, k, act, c->q);
    return c->q;
}

/* out [n, m] = X [n, k] W^T and/or (X V^T) U^T: the parts of one projection of a unit, factored */
static int project(mp_cweights *c, const mp_outdir_factors *f, const float *X, int n, mp_cw_part part, float *out)
{
    int64_t m = f->m, k = f->n, r = f->rank;
    const float *x = X;
    if ((part & MP_CW_DENSE) && !(x = act_input(c, X, n, k, f->act_w)))
        return mp_errorf(MP_ENOMEM, "out of memory");
    if (part & MP_CW_DENSE)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)m, (int)k, 1.0f, x, (int)k, f->W, (int)k, 0.0f,
                    out, (int)m);
    else
        memset(out, 0, sizeof(float) * (size_t)(n * m));
    if (r <= 0 || !(part & MP_CW_DELTA))
        return 0;
    MP_CHECK(grow(&c->t, &c->cap_t, (int64_t)n * r));
    if (!(x = act_input(c, X, n, k, f->act_v)))
        return mp_errorf(MP_ENOMEM, "out of memory");
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)r, (int)k, 1.0f, x, (int)k, f->V, (int)k, 0.0f, c->t,
                (int)r);
    if (!(x = act_input(c, c->t, n, r, f->act_u)))
        return mp_errorf(MP_ENOMEM, "out of memory");
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)m, (int)r, 1.0f, x, (int)r, f->U, (int)r, 1.0f, out,
                (int)m);
    return 0;
}

int mp_cweights_project(mp_cweights *c, int l, int u, int p, mp_cw_part part, const float *X, int n, float *out)
{
    MP_CHECK(load_unit(c, l, u));
    return project(c, &c->f[p], X, n, part, out);
}

static int unit_fn(void *ctx, int l, int u, const float *X, int n, float *Y)
{
    mp_cweights *c = ctx;
    MP_CHECK(load_unit(c, l, u));
    int64_t f = c->f[0].m;
    MP_CHECK(grow(&c->a, &c->cap_a, (int64_t)n * f));
    MP_CHECK(grow(&c->g, &c->cap_g, (int64_t)n * f));
    MP_CHECK(project(c, &c->f[0], X, n, MP_CW_ALL, c->g));
    MP_CHECK(project(c, &c->f[1], X, n, MP_CW_ALL, c->a));
    mp_silu_mul(c->g, c->a, (int64_t)n * f); /* as the forward pass's SwiGLU */
    MP_CHECK(project(c, &c->f[2], c->g, n, MP_CW_ALL, Y));
    for (int64_t i = 0; i < (int64_t)n * c->f[2].m; i++)
        if (!isfinite(Y[i]))
            return mp_errorf(MP_ENUMERIC, "%s: layer %d unit %d: the compressed expert's output is not finite",
                             mp_outdir_dir(c->o), l, u);
    return 0;
}

static int layer_fn(void *ctx, int l, mp_layer_w *w)
{
    mp_cweights *c = ctx;
    MP_CHECK(c->orig.layer(c->orig.ctx, l, w));
    if (mp_config_dense_mlp(&c->m->cfg, l)) { /* served compressed by unit_fn (MP_UNIT_DENSE), never these */
        free(w->mlp_gate), free(w->mlp_up), free(w->mlp_down);
        w->mlp_gate = w->mlp_up = w->mlp_down = NULL;
    }
    return 0;
}
static int expert_fn(void *ctx, int l, int e, mp_proj p, float *out)
{
    mp_cweights *c = ctx;
    return mp_outdir_read_expert(c->o, l, e, (int)p, out);
}
static int embed_fn(void *ctx, const int32_t *ids, int n, float *h)
{
    mp_cweights *c = ctx;
    return c->orig.embed(c->orig.ctx, ids, n, h);
}
static int head_fn(void *ctx, float **nw, float **nb, float **hw, float **hb)
{
    mp_cweights *c = ctx;
    return c->orig.head(c->orig.ctx, nw, nb, hw, hb);
}

int mp_cweights_open(const mp_model *m, mp_outdir *o, mp_cweights **out, mp_weights *w)
{
    *out = NULL;
    const mp_config *a = &m->cfg, *b = mp_outdir_config(o);
    if (a->n_layers != b->n_layers || a->hidden != b->hidden || a->n_experts != b->n_experts ||
        a->moe_ffn != b->moe_ffn || a->vocab != b->vocab || a->top_k != b->top_k || a->dense_ffn != b->dense_ffn)
        return mp_errorf(MP_EMISMATCH, "%s: the compressed model is not a compression of %s (config differs)",
                         mp_outdir_dir(o), m->dir);
    mp_cweights *c = calloc(1, sizeof *c);
    if (!c)
        return mp_errorf(MP_ENOMEM, "out of memory");
    c->m = m, c->o = o, c->layer = c->unit = -1;
    mp_model_weights(m, &c->orig);
    *w = (mp_weights){&m->cfg, c, layer_fn, expert_fn, embed_fn, head_fn, unit_fn};
    *out = c;
    return 0;
}

void mp_cweights_close(mp_cweights *c)
{
    if (!c)
        return;
    for (int p = 0; p < 3; p++)
        mp_outdir_factors_free(&c->f[p]);
    free(c->t), free(c->a), free(c->g), free(c->q);
    free(c);
}
