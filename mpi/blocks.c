/* blocks.c - a layer's blocks for the measure and quantize stages (see blocks.h). */
#include "blocks.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "factors.h"
#include "stats.h"

static void *xmalloc(size_t n) { return malloc(n ? n : 1); }

void mp_blocks_free(mp_block_src b[3])
{
    for (int p = 0; p < 3; p++) {
        free(b[p].W), free(b[p].U), free(b[p].V), free(b[p].sigma), free(b[p].H), free(b[p].X);
        memset(&b[p], 0, sizeof b[p]);
    }
}

/* the intermediate size of unit u (E the shared expert, MP_UNIT_DENSE a dense MLP) */
static int64_t unit_ffn(const mp_config *c, int u)
{
    return u == MP_UNIT_DENSE ? c->dense_ffn : u == c->n_experts ? c->shared_ffn : c->moe_ffn;
}

/* the shape of projection p of unit u: gate/up [f, d], down [d, f] */
static void shape(const mp_config *c, int u, int p, int64_t *m, int64_t *n)
{
    int64_t f = unit_ffn(c, u), d = c->hidden;
    *m = p == 2 ? d : f;
    *n = p == 2 ? f : d;
}

/* the weight of projection p of the shared expert (Qwen2-MoE / DeepSeek names) or of a dense MLP */
static int read_named(const mp_model *m, int l, int dense, int p, float *out, int64_t cap)
{
    static const char *const PJ[3] = {"gate_proj", "up_proj", "down_proj"};
    char name[256];
    snprintf(name, sizeof name, "model.layers.%d.mlp.%s%s.weight", l,
             dense                              ? ""
             : m->cfg.arch == MP_ARCH_QWEN2_MOE ? "shared_expert."
                                                : "shared_experts.",
             PJ[p]);
    return mp_ckpt_read_named_f32(m->ck, name, out, cap);
}

/* add the sample rows of st (X_sample for gate/up, H_sample for down) to b->X */
static int add_sample(mp_block_src *b, const mp_expert_stats *st, int p)
{
    if (st->n_sample <= 0)
        return 0;
    const float *src = p == 2 ? st->H_sample : st->X_sample;
    float *x = realloc(b->X, sizeof(float) * (size_t)((b->t + st->n_sample) * b->n));
    if (!x)
        return mp_errorf(MP_ENOMEM, "out of memory for the input sample");
    b->X = x;
    memcpy(x + b->t * b->n, src, sizeof(float) * (size_t)(st->n_sample * b->n));
    b->t += st->n_sample;
    return 0;
}

int mp_blocks_load(const mp_blocks_ctx *cx, int l, int unit, mp_block_src b[3])
{
    const mp_config *c = &cx->m->cfg;
    int E = c->n_experts, dense = unit == MP_UNIT_DENSE, base = unit == -1, shared = unit == E || dense;
    int delta = cx->decomp_dir != NULL, rc = 0;
    memset(b, 0, 3 * sizeof *b);
    char path[4400];
    for (int p = 0; p < 3; p++) {
        b[p].kind = base     ? MP_BK_BASE
                    : dense  ? MP_BK_DENSE
                    : shared ? MP_BK_SHARED
                    : delta  ? MP_BK_DELTA
                             : MP_BK_EXPERT;
        b[p].layer = l, b[p].unit = unit, b[p].proj = p;
        shape(c, unit, p, &b[p].m, &b[p].n);
        if (!(b[p].H = calloc((size_t)(b[p].n * b[p].n), sizeof(double))))
            rc = mp_errorf(MP_ENOMEM, "out of memory for the Gram of layer %d unit %d", l, unit);
    }
    /* Grams (and samples): the unit's own, or the sum over the routed experts for the base */
    int e0 = base ? 0 : unit, e1 = base ? E : unit + 1;
    double *tmp = NULL;
    for (int e = e0; e < e1 && rc == 0; e++) {
        mp_expert_stats st = {0};
        mp_stats_path(path, sizeof path, cx->stats_dir, l, e);
        rc = mp_stats_read(path, &st);
        if (rc == 0 && (st.d != c->hidden || st.f != unit_ffn(c, e)))
            rc = mp_errorf(MP_EFORMAT, "%s: statistics of shape d %lld, f %lld do not fit the model", path,
                           (long long)st.d, (long long)st.f);
        for (int p = 0; p < 3 && rc == 0; p++) {
            if (p == 1) { /* gate and up share G_in */
                memcpy(b[1].H, b[0].H, sizeof(double) * (size_t)(b[1].n * b[1].n));
                b[1].tokens = b[0].tokens;
                rc = add_sample(&b[1], &st, 1);
                continue;
            }
            int64_t n = b[p].n;
            if (!base) {
                mp_stats_regularized(&st, p == 2, b[p].H);
            } else {
                if (!tmp && !(tmp = malloc(sizeof(double) * (size_t)(c->moe_ffn > c->hidden ? c->moe_ffn : c->hidden) *
                                           (size_t)(c->moe_ffn > c->hidden ? c->moe_ffn : c->hidden)))) {
                    rc = mp_errorf(MP_ENOMEM, "out of memory");
                    break;
                }
                mp_stats_regularized(&st, p == 2, tmp);
                for (int64_t i = 0; i < n * n; i++)
                    b[p].H[i] += tmp[i];
            }
            b[p].tokens += (double)(st.count + st.prior_tokens);
            rc = add_sample(&b[p], &st, p);
        }
        if (rc < 0)
            mp_error_prefix("layer %d %s", l,
                            base     ? "base"
                            : dense  ? "dense MLP"
                            : shared ? "shared expert"
                                     : "expert");
        mp_stats_free(&st);
    }
    free(tmp);
    /* weights */
    for (int p = 0; p < 3 && rc == 0; p++) {
        mp_block_src *x = &b[p];
        if (x->kind == MP_BK_DELTA) {
            mp_factors_data fd;
            snprintf(path, sizeof path, "%s/layer%04d/expert%04d.h5", cx->decomp_dir, l, unit);
            rc = mp_factors_read(path, p, x->m, x->n, &fd);
            if (rc == 0)
                x->U = fd.U, x->V = fd.V, x->sigma = fd.sigma, x->rmax = fd.rank, x->k = fd.k, x->energy = fd.energy;
            continue;
        }
        if (!(x->W = xmalloc(sizeof(float) * (size_t)(x->m * x->n)))) {
            rc = mp_errorf(MP_ENOMEM, "out of memory for the weights of layer %d", l);
            break;
        }
        if (base) {
            snprintf(path, sizeof path, "%s/layer%04d/base.h5", cx->decomp_dir, l);
            rc = mp_base_read(path, p, x->m, x->n, x->W);
        } else if (shared) {
            rc = read_named(cx->m, l, dense, p, x->W, x->m * x->n);
            for (int64_t i = 0; rc == 0 && i < x->m * x->n; i++)
                if (!isfinite(x->W[i]))
                    rc = mp_errorf(MP_ENUMERIC, "layer %d %s %s: non-finite weight at element %lld", l,
                                   dense ? "dense MLP" : "shared expert", MP_PROJ_NAME[p], (long long)i);
        } else {
            rc = mp_model_read_expert(cx->m, l, unit, (mp_proj)p, x->W);
            if (rc == 0)
                rc = mp_model_check_finite(cx->m, l, unit, (mp_proj)p, x->W);
        }
    }
    if (rc < 0)
        mp_blocks_free(b);
    return rc;
}

double mp_block_trunc_loss(const mp_block_src *b, int64_t r)
{
    double kept = 0;
    for (int64_t j = 0; j < r && j < b->k; j++)
        kept += b->sigma[j] * b->sigma[j];
    double v = b->energy - kept;
    return v > 0 ? v : 0;
}

int mp_block_delta_at(const mp_block_src *b, int64_t r, float **Ur, float **Vr, double **HU, double **OV, float **XU)
{
    if (b->kind != MP_BK_DELTA || r < 1 || r > b->rmax)
        return mp_errorf(MP_EINTERNAL, "rank %lld of a block with factors of rank %lld", (long long)r,
                         (long long)b->rmax);
    int64_t m = b->m, n = b->n, t = b->t;
    float *u = xmalloc(sizeof(float) * (size_t)(m * r)), *v = xmalloc(sizeof(float) * (size_t)(r * n));
    double *hu = HU ? xmalloc(sizeof(double) * (size_t)(r * r)) : NULL;
    double *ov = OV ? xmalloc(sizeof(double) * (size_t)(r * r)) : NULL, *ud = OV ? xmalloc(sizeof(double) * (size_t)(m * r)) : NULL;
    float *xu = XU && t > 0 ? xmalloc(sizeof(float) * (size_t)(t * r)) : NULL;
    int rc = 0;
    if (!u || !v || (HU && !hu) || (OV && (!ov || !ud)) || (XU && t > 0 && !xu))
        rc = mp_errorf(MP_ENOMEM, "out of memory for the factors at rank %lld", (long long)r);
    if (rc == 0) {
        for (int64_t i = 0; i < m; i++)
            memcpy(u + i * r, b->U + i * b->rmax, sizeof(float) * (size_t)r);
        memcpy(v, b->V, sizeof(float) * (size_t)(r * n));
        if (HU)
            rc = mp_factor_gram(v, r, n, b->H, hu);
    }
    if (rc == 0 && OV) {
        for (int64_t i = 0; i < m * r; i++)
            ud[i] = u[i];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)r, (int)m, 1.0, ud, (int)r, 0.0, ov, (int)r);
        for (int64_t i = 0; i < r; i++)
            for (int64_t j = 0; j < i; j++)
                ov[i * r + j] = ov[j * r + i];
    }
    if (rc == 0 && xu)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)t, (int)r, (int)n, 1.0f, b->X, (int)n, v, (int)n,
                    0.0f, xu, (int)r);
    free(ud);
    if (rc < 0) {
        free(u), free(v), free(hu), free(ov), free(xu);
        return rc;
    }
    if (Ur) *Ur = u; else free(u);
    if (Vr) *Vr = v; else free(v);
    if (HU) *HU = hu;
    if (OV) *OV = ov;
    if (XU) *XU = xu; else free(xu);
    return 0;
}

static int quantize_one(const mp_qformat *f, const mp_job *job, const float *W, int64_t m, int64_t n, const double *H,
                        const char *label, mp_qtensor **q)
{
    if (!strcmp(job->quant_method, "rtn"))
        return mp_quant_rtn(f, W, m, n, label, q);
    mp_gptq_opts o;
    mp_gptq_opts_default(&o);
    o.percdamp = job->quant_percdamp, o.act_order = job->quant_act_order;
    return mp_quant_gptq(f, W, m, n, H, &o, label, q, NULL);
}

int mp_block_quantize(const mp_block_src *b, const mp_job *job, const mp_choice *c, mp_qtensor **q0, mp_qtensor **q1)
{
    *q0 = *q1 = NULL;
    char label[128];
    snprintf(label, sizeof label, "layer %d %s %d %s", b->layer, mp_block_kind_name(b->kind), b->unit,
             MP_PROJ_NAME[b->proj]);
    if (c->kind != b->kind || c->unit != b->unit || c->proj != b->proj)
        return mp_errorf(MP_EINTERNAL, "%s: the allocation names another block", label);
    if (b->kind != MP_BK_DELTA) {
        if (!c->fmt)
            return mp_errorf(MP_EFORMAT, "%s: the allocation gives no format", label);
        return quantize_one(c->fmt, job, b->W, b->m, b->n, b->H, label, q0);
    }
    if (c->rank == 0)
        return 0;
    float *U = NULL, *V = NULL;
    double *HU = NULL;
    MP_CHECK(mp_block_delta_at(b, c->rank, &U, &V, &HU, NULL, NULL));
    char lu[160], lv[160];
    snprintf(lu, sizeof lu, "%s U", label), snprintf(lv, sizeof lv, "%s V", label);
    int rc = quantize_one(c->fmt, job, U, b->m, c->rank, HU, lu, q0);
    if (rc == 0)
        rc = quantize_one(c->fmt_v, job, V, c->rank, b->n, b->H, lv, q1);
    if (rc < 0) {
        mp_qtensor_destroy(*q0);
        mp_qtensor_destroy(*q1);
        *q0 = *q1 = NULL;
    }
    free(U), free(V), free(HU);
    return rc;
}
