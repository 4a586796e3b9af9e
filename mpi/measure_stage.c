/* measure_stage.c - loss and cost tables of every block (see measure_stage.h). */
#include "measure_stage.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blocks.h"
#include "cost.h"
#include "decompose.h"
#include "device_profile.h"
#include "error.h"
#include "fsutil.h"
#include "layer_commit.h"
#include "runtime.h"
#include "stats.h"
#include "tables.h"

typedef struct {
    mp_blocks_ctx bx;
    const mp_fingerprint *unused;
    int E, shared, delta, nf, rank, size;
    const mp_qformat *fmt[32];
    mp_device_profile dev;
    mp_timings tt;
    mp_gptq_opts gopt;
    mp_qmethod method;
    const char *dir;
    uint64_t fp;
    double *M;        /* tokens per unit in the design batch, [E + 2] */
    double damping_raised, unsampled; /* this rank's counts in the unit being measured */
} mctx;

int mp_measure_ranks(const mp_job *job, int64_t m, int64_t n, int64_t rmax, int64_t *ranks)
{
    int64_t v[18];
    int k = 0;
    v[k++] = 0;
    for (int q = 0; q < job->n_candidates; q++) {
        int64_t r = mp_rank_for_fraction(job->candidates[q], m, n);
        v[k++] = r > rmax ? rmax : r;
    }
    v[k++] = rmax;
    int out = 0;
    for (int i = 0; i < k; i++) { /* sort, unique */
        int64_t best = -1;
        for (int j = 0; j < k; j++)
            if (v[j] > (out ? ranks[out - 1] : -1) && (best < 0 || v[j] < best))
                best = v[j];
        if (best < 0)
            break;
        ranks[out++] = best;
    }
    return out;
}

static int owner(const mctx *x, int l, int u) { return (int)(((int64_t)l * (x->E + 2) + u) % x->size); }

/* the unit measured at index u of layer l: a MoE layer's 0..E-1, E (shared), E + 1 (base: -1); a dense
 * layer's only index 0 is its dense MLP */
static int unit_at(const mctx *x, int l, int u)
{
    if (!x->bx.m->cfg.is_moe[l])
        return MP_UNIT_DENSE;
    return u == x->E + 1 ? -1 : u;
}

int mp_measure_begin(mp_run *r, int s)
{
    const mp_job *job = r->job;
    const mp_config *c = &r->m->cfg;
    mctx *x = calloc(1, sizeof *x);
    r->state = x;
    if (!x)
        return mp_errorf(MP_ENOMEM, "out of memory");
    x->bx = (mp_blocks_ctx){r->m, job, r->dir[MP_STAGE_CALIBRATE], job->delta_enabled ? r->dir[MP_STAGE_DECOMPOSE] : NULL};
    x->E = c->n_experts, x->shared = c->n_shared > 0 && c->shared_ffn > 0, x->delta = job->delta_enabled;
    x->rank = r->rank, x->size = r->size, x->dir = r->dir[s], x->fp = r->fp[s];
    x->method = strcmp(job->quant_method, "rtn") ? MP_QUANT_GPTQ : MP_QUANT_RTN;
    mp_gptq_opts_default(&x->gopt);
    x->gopt.percdamp = job->quant_percdamp, x->gopt.act_order = job->quant_act_order;
    mp_timings_init(&x->tt);
    MP_CHECK(mp_qformat_parse_list(job->quant_formats, x->fmt, 32, &x->nf));
    if (job->device_path[0])
        MP_CHECK(mp_device_profile_load(job->device_path, &x->dev));
    else
        mp_device_profile_h100_sxm(&x->dev);
    if (job->timings_path[0])
        MP_CHECK(mp_timings_load(job->timings_path, &x->tt));
    if (!(x->M = calloc((size_t)x->E + 2, sizeof(double))))
        return mp_errorf(MP_ENOMEM, "out of memory");
    return 0;
}

/* the design batch's tokens of every unit of layer l (every rank reads the counts) */
static int unit_tokens(mctx *x, int l)
{
    const mp_config *c = &x->bx.m->cfg;
    int64_t d = c->hidden, f = c->moe_ffn, total = 0, *cnt = calloc((size_t)x->E, sizeof(int64_t));
    double *xs = malloc(sizeof(double) * (size_t)d), *hs = malloc(sizeof(double) * (size_t)f);
    int rc = cnt && xs && hs ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
    for (int e = 0; e < x->E && rc == 0; e++) {
        char path[4300];
        mp_stats_path(path, sizeof path, x->bx.stats_dir, l, e);
        rc = mp_stats_read_summary(path, d, f, &cnt[e], xs, hs);
        total += cnt[e];
    }
    double B = x->bx.job->batch_tokens, K = c->top_k;
    for (int e = 0; e < x->E && rc == 0; e++) {
        double share = total > 0 ? (double)cnt[e] / (double)total : 1.0 / x->E;
        x->M[e] = fmax(1.0, ceil(B * K * share));
    }
    x->M[x->E] = B, x->M[x->E + 1] = B * K;
    free(cnt), free(xs), free(hs);
    return rc;
}

static int cost_of(const mctx *x, const mp_qformat *f, int64_t m, int64_t n, double M, int64_t bytes, double *sec)
{
    mp_compute_kind k;
    MP_CHECK(mp_compute_kind_for_act_bits(f->act_bits ? f->act_bits : 16, &k));
    mp_cost c;
    MP_CHECK(mp_block_cost(&x->dev, &x->tt, f->name, m, n, (int64_t)M, bytes, k, &c));
    *sec = c.seconds;
    return 0;
}

/* a factorisation that needed more damping than asked: counted and reported once */
static void note_damping(mctx *x, const mp_gptq_factor *fac, const char *label)
{
    mp_gptq_info info;
    mp_gptq_factor_info(fac, &info);
    if (info.retries > 0) {
        x->damping_raised++;
        fprintf(stderr, "moepack: note: %s: GPTQ damping raised to %.3g (the Hessian is not positive definite)\n",
                label, info.percdamp);
    }
}

/* one block (W [m, n] with H, O, sample X [t, n]) under every format: rows (rank, part) of pt. GPTQ uses
 * `fac` when given (prepared from H), else a factor of its own. */
static int measure_formats(mctx *x, mp_proj_table *pt, double rank, int part, const float *W, int64_t m, int64_t n,
                           const double *H, const double *O, const float *X, int64_t t, double tokens, double M,
                           const mp_gptq_factor *fac, const char *label)
{
    mp_gptq_factor *own = NULL;
    if (x->method == MP_QUANT_GPTQ && !fac) {
        MP_CHECK(mp_gptq_factor_create(H, n, &x->gopt, label, &own));
        fac = own;
    }
    int rc = 0;
    for (int i = 0; i < x->nf && rc == 0; i++) {
        mp_qformat wf = *x->fmt[i];
        const mp_qformat *f = x->fmt[i];
        if (f->act_bits && t == 0) { /* no sample: the weight error alone */
            wf.act_bits = 0, f = &wf;
            x->unsampled++;
        }
        mp_qblock blk = {W, m, n, H, O, f->act_bits ? X : NULL, f->act_bits ? t : 0,
                         f->act_bits && t > 0 ? tokens / (double)t : 1.0, label};
        mp_qresult res;
        rc = mp_quant_measure(f, x->method, &blk, fac, &res, NULL);
        double sec = 0;
        if (rc == 0)
            rc = cost_of(x, x->fmt[i], m, n, M, res.bytes, &sec);
        if (rc == 0)
            rc = mp_table_add(pt, rank, part, i, res.loss, 0, (double)res.bytes, sec, M);
    }
    if (rc == 0 && own)
        note_damping(x, own, label);
    mp_gptq_factor_destroy(own);
    return rc;
}

/* the tables of unit u and its contribution to the layer's output energy */
static int measure_unit(mctx *x, int l, int u, mp_unit_table *t, double *energy)
{
    mp_block_src b[3];
    int E = x->E, unit = unit_at(x, l, u);
    MP_CHECK(mp_blocks_load(&x->bx, l, unit, b));
    memset(t, 0, sizeof *t);
    double damp0 = x->damping_raised, uns0 = x->unsampled;
    t->layer = l, t->unit = unit, t->kind = b[0].kind, t->nf = x->nf;
    memcpy(t->fmt, x->fmt, sizeof(t->fmt[0]) * (size_t)x->nf);
    double M = unit == MP_UNIT_DENSE ? x->bx.job->batch_tokens : x->M[unit < 0 ? E + 1 : u];
    int rc = 0;
    *energy = 0;
    /* output energy of the unit: tr(W_down G_mid W_down^T) with the unit's own (unregularised) Gram */
    if (unit != -1) {
        const mp_block_src *d = &b[2];
        float *W = d->W, *own = NULL, *zero = calloc((size_t)(d->m * d->n), sizeof(float));
        if (!W) {
            own = W = malloc(sizeof(float) * (size_t)(d->m * d->n));
            if (W)
                rc = mp_model_read_expert(x->bx.m, l, unit, MP_PROJ_DOWN, W);
        }
        mp_expert_stats st = {0};
        char path[4300];
        mp_stats_path(path, sizeof path, x->bx.stats_dir, l, unit);
        if (rc == 0 && (!W || !zero))
            rc = mp_errorf(MP_ENOMEM, "out of memory");
        if (rc == 0)
            rc = mp_stats_read(path, &st);
        if (rc == 0)
            rc = mp_loss_gram(W, zero, d->m, d->n, st.G_mid, NULL, "output energy", energy);
        mp_stats_free(&st);
        free(own), free(zero);
    }
    for (int p = 0; p < 3 && rc == 0; p++) {
        mp_block_src *s = &b[p];
        mp_proj_table *pt = &t->p[p];
        pt->m = s->m, pt->n = s->n;
        char label[96];
        snprintf(label, sizeof label, "layer %d %s %d %s", l, mp_block_kind_name(s->kind), unit, MP_PROJ_NAME[p]);
        if (s->kind != MP_BK_DELTA) {
            rc = measure_formats(x, pt, -1, 0, s->W, s->m, s->n, s->H, NULL, s->X, s->t, s->tokens, M, NULL, label);
            continue;
        }
        int64_t ranks[18];
        int nr = mp_measure_ranks(x->bx.job, s->m, s->n, s->rmax, ranks);
        mp_gptq_factor *fv = NULL; /* V's Hessian is G at every rank: one factor */
        if (x->method == MP_QUANT_GPTQ)
            rc = mp_gptq_factor_create(s->H, s->n, &x->gopt, label, &fv);
        if (fv)
            note_damping(x, fv, label);
        for (int i = 0; i < nr && rc == 0; i++) {
            int64_t r = ranks[i];
            rc = mp_table_add(pt, (double)r, 2, -1, mp_block_trunc_loss(s, r), 0, 0, 0, M);
            if (r == 0 || rc < 0)
                continue;
            float *Ur = NULL, *Vr = NULL, *XU = NULL;
            double *HU = NULL, *OV = NULL;
            char lu[128], lv[128];
            snprintf(lu, sizeof lu, "%s U (rank %lld)", label, (long long)r);
            snprintf(lv, sizeof lv, "%s V (rank %lld)", label, (long long)r);
            rc = mp_block_delta_at(s, r, &Ur, &Vr, &HU, &OV, &XU);
            if (rc == 0)
                rc = measure_formats(x, pt, (double)r, 0, Ur, s->m, r, HU, NULL, XU, s->t, s->tokens, M, NULL, lu);
            if (rc == 0) /* V is seen through U: output metric U^T U; its Hessian G is the same at every rank */
                rc = measure_formats(x, pt, (double)r, 1, Vr, r, s->n, s->H, OV, s->X, s->t, s->tokens, M, fv, lv);
            free(Ur), free(Vr), free(XU), free(HU), free(OV);
        }
        mp_gptq_factor_destroy(fv);
    }
    mp_blocks_free(b);
    t->damping_raised = x->damping_raised - damp0, t->unsampled = x->unsampled - uns0;
    if (rc < 0)
        mp_table_free(t);
    return rc;
}

static void unit_file_name(int u, int n, char *buf, size_t cap)
{
    int E = n - 2;
    if (n == 1) /* a dense layer */
        snprintf(buf, cap, "dense.h5");
    else if (u == E + 1)
        snprintf(buf, cap, "base.h5");
    else if (u == E)
        snprintf(buf, cap, "shared.h5");
    else
        snprintf(buf, cap, "expert%04d.h5", u);
}

int mp_measure_layer(mp_run *r, int s, int l, int committed)
{
    mctx *x = r->state;
    (void)s;
    if (committed)
        return 0;
    int E = x->E, moe = r->m->cfg.is_moe[l], n = moe ? E + 2 : 1, rc = 0;
    char ldir[4600];
    snprintf(ldir, sizeof ldir, "%s/layer%04d", x->dir, l);
    MP_CHECK(mp_mpi_agree(mp_mkdir_p(ldir)));
    if (moe)
        MP_CHECK(mp_mpi_agree(unit_tokens(x, l)));
    mp_unit_table *tab = calloc((size_t)n, sizeof *tab);
    double *energy = calloc((size_t)n, sizeof(double));
    uint64_t *h = calloc((size_t)(2 * n), sizeof *h);
    if (!tab || !energy || !h)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int u = 0; u < n && rc == 0; u++) {
        if ((moe && u == E && !x->shared) || (moe && u == E + 1 && !x->delta) || owner(x, l, u) != x->rank)
            continue;
        rc = measure_unit(x, l, u, &tab[u], &energy[u]);
    }
    rc = mp_mpi_agree(rc);
    if (rc == 0) /* each term has one contributor: the sum is exact, the total summed in unit order */
        MP_MPI(MPI_Allreduce(MPI_IN_PLACE, energy, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
    double total = 0;
    for (int u = 0; u < n; u++)
        total += energy[u];
    if (rc == 0 && !(total > 0)) {
        if (r->rank == 0)
            fprintf(stderr, "moepack: note: layer %d: no %s output energy (no tokens?): losses are not normalised\n", l,
                    moe ? "MoE" : "dense MLP");
        total = 1;
    }
    for (int u = 0; u < n && rc == 0; u++) {
        if (!tab[u].nf)
            continue;
        tab[u].energy = total;
        for (int p = 0; p < 3; p++)
            for (int i = 0; i < tab[u].p[p].rows; i++)
                tab[u].p[p].t[MP_TCOLS * i + MP_TCOL_LOSS] = tab[u].p[p].t[MP_TCOLS * i + MP_TCOL_LOSS_RAW] / total;
        char path[4800];
        mp_table_path(path, sizeof path, x->dir, l, tab[u].unit, E);
        rc = mp_table_write(path, &tab[u]);
        if (rc == 0)
            rc = mp_file_xxh64(path, &h[u]);
        h[n + u] = 1;
        mp_fault_point("measure: unit committed");
    }
    for (int u = 0; tab && u < n; u++)
        mp_table_free(&tab[u]);
    free(tab), free(energy);
    rc = mp_commit_layer_units(rc, x->dir, l, x->fp, h, n, unit_file_name, 0, "measure: before layer manifest");
    free(h);
    return rc;
}

/* blocks, options (as the allocator will see them), damping_raised and unsampled of every table */
static int count_tables(const mp_run *r, const mctx *x, double v[4])
{
    const mp_config *c = &r->m->cfg;
    int same = !strcmp(r->job->factor_formats, "same");
    for (int l = 0; l < c->n_layers; l++) {
        if (!mp_config_has_units(c, l))
            continue;
        int moe = c->is_moe[l];
        for (int u = moe ? (x->delta ? -1 : 0) : MP_UNIT_DENSE; u <= (moe ? x->E : MP_UNIT_DENSE); u++) {
            if (moe && u == x->E && !x->shared)
                break;
            char path[4800];
            mp_unit_table t;
            mp_table_path(path, sizeof path, x->dir, l, u, x->E);
            MP_CHECK(mp_table_read(path, &t));
            v[2] += t.damping_raised, v[3] += t.unsampled;
            for (int p = 0; p < 3; p++) {
                v[0]++;
                for (int i = 0; i < t.p[p].rows; i++) {
                    const double *row = t.p[p].t + MP_TCOLS * i;
                    if (t.kind != MP_BK_DELTA)
                        v[1] += 1;
                    else if (row[MP_TCOL_PART] == 2)
                        v[1] += row[MP_TCOL_RANK] == 0 ? 1 : same ? t.nf : (double)t.nf * t.nf;
                }
            }
            mp_table_free(&t);
        }
    }
    return 0;
}

int mp_measure_end(mp_run *r, int s, int ok)
{
    mctx *x = r->state;
    int rc = 0;
    if (x && ok && r->rank == 0) { /* from the committed tables: the same after any restart */
        double v[4] = {0, 0, 0, 0};
        rc = count_tables(r, x, v);
        mp_summary_set(&r->sum[s], "blocks", v[0]);
        mp_summary_set(&r->sum[s], "options", v[1]);
        mp_summary_set(&r->sum[s], "damping_raised", v[2]);
        mp_summary_set(&r->sum[s], "unsampled", v[3]);
    }
    if (x) {
        mp_timings_free(&x->tt);
        free(x->M);
        free(x);
    }
    r->state = NULL;
    return rc;
}

void mp_measure_print(const mp_run *r, int s, FILE *out)
{
    const mp_summary *sum = &r->sum[s];
    fprintf(out, "measure: %.0f blocks, %.0f options for the allocator (%s, %s); GPTQ damping raised on %.0f block(s)",
            mp_summary_get(sum, "blocks"), mp_summary_get(sum, "options"), r->job->quant_method, r->job->quant_formats,
            mp_summary_get(sum, "damping_raised"));
    if (mp_summary_get(sum, "unsampled") > 0)
        fprintf(out, "; %.0f activation-format measurement(s) without an input sample (weight error only)",
                mp_summary_get(sum, "unsampled"));
    fprintf(out, "\n  tables: moepack inspect %s\n", r->job->ckpt_dir);
}
