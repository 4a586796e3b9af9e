/* alloc_stage.c - the global allocation of ranks and formats (see alloc_stage.h). */
#include "alloc_stage.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "allocation.h"
#include "error.h"
#include "fsutil.h"
#include "layer_commit.h"
#include "runtime.h"
#include "tables.h"

typedef struct {
    int64_t rank; /* -1 dense */
    int fu, fv;   /* format indices (-1: none) */
    double loss_raw;
} opt_desc;

typedef struct {
    int n_layers;
    mp_layer_alloc *la; /* [n_layers] (MoE layers only filled), rank 0 */
    const char *dir;
    uint64_t fp;
    int nf;
    const mp_qformat *fmt[32];
} actx;

/* growable arrays of the instance */
typedef struct {
    int ng, cap_g, no, cap_o;
    int *first, *layer;
    int64_t *ref;  /* per group: the dense block's fp16 bytes */
    int64_t *rmax; /* per group: a delta's largest rank (-1 dense) */
    mp_option *opt;
    opt_desc *desc;
    int *ties, nt, cap_t;
} inst;

static int grow(void **p, int *cap, int need, size_t esz)
{
    if (need <= *cap)
        return 0;
    int c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, esz * (size_t)c);
    if (!q)
        return mp_errorf(MP_ENOMEM, "out of memory for the allocation problem");
    *p = q, *cap = c;
    return 0;
}

static int add_opt(inst *I, double loss, double cost, int64_t bytes, int tag, int64_t rank, int fu, int fv,
                   double loss_raw)
{
    int cap = I->cap_o;
    MP_CHECK(grow((void **)&I->desc, &cap, I->no + 1, sizeof *I->desc));
    MP_CHECK(grow((void **)&I->opt, &I->cap_o, I->no + 1, sizeof *I->opt));
    I->opt[I->no] = (mp_option){loss, cost, bytes, tag};
    I->desc[I->no] = (opt_desc){rank, fu, fv, loss_raw};
    I->first[I->ng] = ++I->no; /* the open group ends here so far */
    return 0;
}

static int new_group(inst *I, int layer, int64_t ref, int64_t rmax)
{
    if (I->ng + 2 > I->cap_g) { /* the per-group arrays grow together */
        int c = I->cap_g ? 2 * I->cap_g : 256;
        int *f = realloc(I->first, sizeof(int) * (size_t)c), *ly = f ? realloc(I->layer, sizeof(int) * (size_t)c) : NULL;
        if (f)
            I->first = f;
        if (ly)
            I->layer = ly;
        int64_t *rf = ly ? realloc(I->ref, sizeof(int64_t) * (size_t)c) : NULL;
        if (rf)
            I->ref = rf;
        int64_t *rm = rf ? realloc(I->rmax, sizeof(int64_t) * (size_t)c) : NULL;
        if (!rm)
            return mp_errorf(MP_ENOMEM, "out of memory for the allocation problem");
        I->rmax = rm, I->cap_g = c;
    }
    I->first[I->ng] = I->no;
    I->layer[I->ng] = layer, I->ref[I->ng] = ref, I->rmax[I->ng] = rmax;
    I->ng++;
    I->first[I->ng] = I->no;
    return 0;
}

static void inst_free(inst *I)
{
    free(I->first), free(I->layer), free(I->ref), free(I->rmax), free(I->opt), free(I->desc), free(I->ties);
}

/* the options of one block from its unit's table */
static int block_options(inst *I, const mp_unit_table *t, int p, int layer, int nf, int same, const char *path)
{
    const mp_proj_table *pt = &t->p[p];
    const double *T = pt->t;
    int rows = pt->rows;
    if (t->kind != MP_BK_DELTA) {
        MP_CHECK(new_group(I, layer, 2 * pt->m * pt->n, -1));
        int seen = 0;
        for (int i = 0; i < rows; i++) {
            const double *r = T + MP_TCOLS * i;
            if (r[MP_TCOL_PART] != 0)
                continue;
            MP_CHECK(add_opt(I, r[MP_TCOL_LOSS], r[MP_TCOL_COST], (int64_t)r[MP_TCOL_BYTES], (int)r[MP_TCOL_FMT], -1,
                             (int)r[MP_TCOL_FMT], -1, r[MP_TCOL_LOSS_RAW]));
            seen++;
        }
        if (seen != nf)
            return mp_errorf(MP_EFORMAT, "%s: table_%s has %d options for %d formats", path, MP_PROJ_NAME[p], seen, nf);
        return 0;
    }
    int64_t rmax = 0;
    for (int i = 0; i < rows; i++)
        rmax = T[MP_TCOLS * i + MP_TCOL_RANK] > rmax ? (int64_t)T[MP_TCOLS * i + MP_TCOL_RANK] : rmax;
    MP_CHECK(new_group(I, layer, 2 * pt->m * pt->n, rmax));
    for (int i = 0; i < rows; i++) {
        const double *tr = T + MP_TCOLS * i;
        if (tr[MP_TCOL_PART] != 2)
            continue;
        int64_t r = (int64_t)tr[MP_TCOL_RANK];
        if (r == 0) {
            MP_CHECK(add_opt(I, tr[MP_TCOL_LOSS], 0, 0, nf * nf, 0, -1, -1, tr[MP_TCOL_LOSS_RAW]));
            continue;
        }
        /* this rank's U rows and V rows follow its truncation row */
        const double *U[32] = {0}, *V[32] = {0};
        for (int j = i + 1; j < rows && T[MP_TCOLS * j + MP_TCOL_PART] != 2; j++) {
            const double *x = T + MP_TCOLS * j;
            int f = (int)x[MP_TCOL_FMT];
            if ((int64_t)x[MP_TCOL_RANK] != r || f < 0 || f >= nf)
                return mp_errorf(MP_EFORMAT, "%s: table_%s row %d does not belong to rank %lld", path,
                                 MP_PROJ_NAME[p], j, (long long)r);
            if (x[MP_TCOL_PART] == 0)
                U[f] = x;
            else
                V[f] = x;
        }
        for (int fu = 0; fu < nf; fu++)
            for (int fv = 0; fv < nf; fv++) {
                if (same && fu != fv)
                    continue;
                if (!U[fu] || !V[fv])
                    return mp_errorf(MP_EFORMAT, "%s: table_%s lacks rank %lld under format %d or %d", path,
                                     MP_PROJ_NAME[p], (long long)r, fu, fv);
                MP_CHECK(add_opt(I, tr[MP_TCOL_LOSS] + U[fu][MP_TCOL_LOSS] + V[fv][MP_TCOL_LOSS],
                                 U[fu][MP_TCOL_COST] + V[fv][MP_TCOL_COST],
                                 (int64_t)(U[fu][MP_TCOL_BYTES] + V[fv][MP_TCOL_BYTES]), fu * nf + fv, r, fu, fv,
                                 tr[MP_TCOL_LOSS_RAW] + U[fu][MP_TCOL_LOSS_RAW] + V[fv][MP_TCOL_LOSS_RAW]));
            }
    }
    return 0;
}

int64_t mp_moe_weights(const mp_config *c)
{
    int64_t n = 0;
    for (int l = 0; l < c->n_layers; l++)
        if (c->is_moe[l])
            n += 3 * (int64_t)c->hidden * ((int64_t)c->n_experts * c->moe_ffn +
                                            (c->n_shared > 0 ? (int64_t)c->shared_ffn : 0));
        else if (mp_config_dense_mlp(c, l))
            n += 3 * (int64_t)c->hidden * c->dense_ffn;
    return n;
}

/* the best uniform allocation within the budget: every group at format f (deltas: largest rank, f for U and V) */
static void uniform(const inst *I, const mp_mckp *P, int nf, int64_t budget, int *choice, double *best_loss,
                    int64_t *best_bytes)
{
    *best_loss = NAN, *best_bytes = 0;
    for (int f = 0; f < nf; f++) {
        int ok = 1;
        for (int g = 0; g < I->ng && ok; g++) {
            choice[g] = -1;
            for (int o = I->first[g]; o < I->first[g + 1]; o++) {
                const opt_desc *d = &I->desc[o];
                if (d->fu == f && (d->rank < 0 || (d->rank == I->rmax[g] && d->fv == f)))
                    choice[g] = o - I->first[g];
            }
            ok = choice[g] >= 0;
        }
        if (!ok)
            continue;
        double loss, cost;
        int64_t bytes;
        mp_mckp_totals(P, choice, &loss, &cost, &bytes);
        if (bytes <= budget && (isnan(*best_loss) || loss < *best_loss))
            *best_loss = loss, *best_bytes = bytes;
    }
}

static int solve(mp_run *r, int s, actx *x)
{
    const mp_config *c = &r->m->cfg;
    const mp_job *job = r->job;
    int E = c->n_experts, shared = c->n_shared > 0 && c->shared_ffn > 0, delta = job->delta_enabled;
    int same = !strcmp(job->factor_formats, "same"), rc = 0;
    inst I = {0};
    const char *mdir = r->dir[MP_STAGE_MEASURE];
    for (int l = 0; l < c->n_layers && rc == 0; l++) {
        if (!mp_config_has_units(c, l))
            continue;
        int moe = c->is_moe[l];
        rc = mp_layer_units_blocks(c, l, delta, &x->la[l]);
        for (int u = moe ? (delta ? -1 : 0) : MP_UNIT_DENSE; u <= (moe ? E : MP_UNIT_DENSE) && rc == 0; u++) {
            if (moe && u == E && !shared)
                break;
            char path[4800];
            mp_unit_table t;
            mp_table_path(path, sizeof path, mdir, l, u, E);
            if ((rc = mp_table_read(path, &t)) < 0)
                break;
            if (t.nf != x->nf)
                rc = mp_errorf(MP_EFORMAT, "%s: measured under %d formats, the job lists %d", path, t.nf, x->nf);
            int g0 = I.ng;
            for (int p = 0; p < 3 && rc == 0; p++)
                rc = block_options(&I, &t, p, l, x->nf, same, path);
            mp_table_free(&t);
            if (rc == 0 && job->tie_gate_up) {
                rc = grow((void **)&I.ties, &I.cap_t, 2 * I.nt + 2, sizeof(int));
                if (rc == 0)
                    I.ties[2 * I.nt] = g0, I.ties[2 * I.nt + 1] = g0 + 1, I.nt++;
            }
        }
    }
    int64_t n_weights = mp_moe_weights(c);
    double want = job->budget_bytes > 0 ? job->budget_bytes : job->budget_bits * (double)n_weights / 8.0;
    int64_t budget = (int64_t)floor(want);
    mp_mckp P = {I.ng, I.first, I.opt};
    mp_mckp_tied T = {0};
    int *tc = NULL, *choice = NULL;
    mp_mckp_report rep = {0}, lrep = {0};
    if (rc == 0)
        rc = job->tie_gate_up ? mp_mckp_tie(&P, I.nt, I.ties, &T) : 0;
    const mp_mckp *Q = job->tie_gate_up ? &T.p : &P;
    if (rc == 0 && (!(tc = malloc(sizeof(int) * (size_t)(Q->n_groups + 1))) ||
                    !(choice = malloc(sizeof(int) * (size_t)(I.ng + 1)))))
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    if (rc == 0) {
        rc = job->alloc_r < 1 ? mp_mckp_solve_tradeoff(Q, budget, job->alloc_r, NULL, tc, &rep)
                              : mp_mckp_solve(Q, budget, NULL, tc, &rep);
        if (rc < 0 && budget < rep.min_bytes) {
            mp_error_clear();
            rc = mp_errorf(MP_EUSAGE,
                           "budget of %lld bytes (%.4g bits per weight) is below the smallest possible model: "
                           "%lld bytes = %.4g bits per weight with quant.formats = %s",
                           (long long)budget, 8.0 * (double)budget / (double)n_weights, (long long)rep.min_bytes,
                           8.0 * (double)rep.min_bytes / (double)n_weights, job->quant_formats);
        }
    }
    if (rc == 0) {
        if (job->tie_gate_up)
            mp_mckp_untie(&T, tc, choice);
        else
            memcpy(choice, tc, sizeof(int) * (size_t)I.ng);
    }
    /* baselines: per layer (on the same, tied, instance) and uniform */
    double per_layer = NAN, uni_loss = NAN;
    int64_t uni_bytes = 0;
    if (rc == 0) {
        int *lay = malloc(sizeof(int) * (size_t)(Q->n_groups + 1)), *pc = malloc(sizeof(int) * (size_t)(Q->n_groups + 1));
        int64_t *ref = malloc(sizeof(int64_t) * (size_t)(Q->n_groups + 1));
        if (lay && pc && ref) {
            for (int g = 0; g < Q->n_groups; g++) {
                int a = job->tie_gate_up ? T.group_of[2 * g] : g, b = job->tie_gate_up ? T.group_of[2 * g + 1] : -1;
                lay[g] = I.layer[a], ref[g] = I.ref[a] + (b >= 0 ? I.ref[b] : 0);
            }
            if (mp_mckp_solve_per_layer(Q, lay, ref, budget, NULL, pc, &lrep) == 0)
                per_layer = lrep.objective;
            else
                mp_error_clear();
        }
        free(lay), free(pc), free(ref);
        int *uc = malloc(sizeof(int) * (size_t)(I.ng + 1));
        if (uc)
            uniform(&I, &P, x->nf, budget, uc, &uni_loss, &uni_bytes);
        free(uc);
    }
    /* the choices, layer by layer in block order */
    for (int g = 0, l = 0, k = 0; rc == 0 && g < I.ng; g++) {
        if (g == 0 || I.layer[g] != I.layer[g - 1])
            l = I.layer[g], k = 0;
        mp_choice *ch = &x->la[l].c[k++];
        const opt_desc *d = &I.desc[I.first[g] + choice[g]];
        const mp_option *o = &I.opt[I.first[g] + choice[g]];
        ch->rank = d->rank < 0 ? 0 : d->rank;
        ch->fmt = d->fu >= 0 ? x->fmt[d->fu] : NULL;
        ch->fmt_v = d->fv >= 0 ? x->fmt[d->fv] : NULL;
        ch->bytes = o->bytes, ch->loss = o->loss, ch->cost = o->cost, ch->loss_raw = d->loss_raw;
    }
    if (rc == 0) {
        mp_summary *sm = &r->sum[s];
        mp_summary_set(sm, "budget_bytes", (double)budget);
        mp_summary_set(sm, "bytes", (double)rep.bytes);
        mp_summary_set(sm, "bits_per_weight", 8.0 * (double)rep.bytes / (double)n_weights);
        mp_summary_set(sm, "loss", rep.objective);
        mp_summary_set(sm, "lower_bound", rep.lower_bound);
        mp_summary_set(sm, "gap", rep.rel_gap);
        mp_summary_set(sm, "optimal", rep.optimal);
        mp_summary_set(sm, "min_bytes", (double)rep.min_bytes);
        mp_summary_set(sm, "max_bytes", (double)rep.max_bytes);
        mp_summary_set(sm, "unconstrained", rep.unconstrained);
        if (!isnan(per_layer)) /* absent when a layer's share is below its minimum */
            mp_summary_set(sm, "per_layer_loss", per_layer);
        if (!isnan(uni_loss)) { /* absent when no single format fits */
            mp_summary_set(sm, "uniform_loss", uni_loss);
            mp_summary_set(sm, "uniform_bytes", (double)uni_bytes);
        }
        mp_summary_set(sm, "options", (double)I.no);
        mp_summary_set(sm, "cost_s", rep.cost);
    }
    free(tc), free(choice);
    if (job->tie_gate_up)
        mp_mckp_tied_free(&T);
    inst_free(&I);
    return rc;
}

int mp_allocate_begin(mp_run *r, int s)
{
    const mp_config *c = &r->m->cfg;
    actx *x = calloc(1, sizeof *x);
    r->state = x;
    if (!x)
        return mp_errorf(MP_ENOMEM, "out of memory");
    x->n_layers = c->n_layers, x->dir = r->dir[s], x->fp = r->fp[s];
    MP_CHECK(mp_qformat_parse_list(r->job->quant_formats, x->fmt, 32, &x->nf));
    if (r->rank != 0)
        return 0;
    if (!(x->la = calloc((size_t)c->n_layers, sizeof *x->la)))
        return mp_errorf(MP_ENOMEM, "out of memory");
    return solve(r, s, x);
}

static void unit_name(int u, int n, char *buf, size_t cap)
{
    (void)u, (void)n;
    snprintf(buf, cap, "alloc.json");
}

int mp_allocate_layer(mp_run *r, int s, int l, int committed)
{
    actx *x = r->state;
    (void)s;
    if (committed)
        return 0;
    uint64_t h[2] = {0, 0};
    int rc = 0;
    if (r->rank == 0) {
        char ldir[4600], path[4700];
        snprintf(ldir, sizeof ldir, "%s/layer%04d", x->dir, l);
        rc = mp_mkdir_p(ldir);
        mp_alloc_path(path, sizeof path, x->dir, l);
        if (rc == 0)
            rc = mp_alloc_write(path, &x->la[l]);
        if (rc == 0)
            rc = mp_file_xxh64(path, &h[0]);
        h[1] = 1;
    }
    return mp_commit_layer_units(rc, x->dir, l, x->fp, h, 1, unit_name, 0, "allocate: before layer manifest");
}

int mp_allocate_end(mp_run *r, int s, int ok)
{
    actx *x = r->state;
    (void)s, (void)ok;
    if (x) {
        for (int l = 0; x->la && l < x->n_layers; l++)
            mp_layer_alloc_free(&x->la[l]);
        free(x->la);
        free(x);
    }
    r->state = NULL;
    return 0;
}

void mp_allocate_print(const mp_run *r, int s, FILE *out)
{
    const mp_summary *sm = &r->sum[s];
    double budget = mp_summary_get(sm, "budget_bytes"), bytes = mp_summary_get(sm, "bytes");
    fprintf(out, "allocate: %.0f of %.0f budget bytes (%.1f%%), %.4f bits per weight; predicted loss %.6g (%s", bytes,
            budget, budget > 0 ? 100 * bytes / budget : 0, mp_summary_get(sm, "bits_per_weight"),
            mp_summary_get(sm, "loss"), mp_summary_get(sm, "optimal") > 0 ? "optimal" : "not proven optimal");
    if (!(mp_summary_get(sm, "optimal") > 0))
        fprintf(out, ", gap %.3g%% to the bound %.6g", 100 * mp_summary_get(sm, "gap"), mp_summary_get(sm, "lower_bound"));
    fprintf(out, ") over %.0f options\n", mp_summary_get(sm, "options"));
    if (mp_summary_get(sm, "unconstrained") > 0)
        fprintf(out, "  the budget exceeds what every block's best option needs (%.0f bytes): those options are "
                     "taken\n",
                mp_summary_get(sm, "max_bytes"));
    double pl = mp_summary_get(sm, "per_layer_loss"), ul = mp_summary_get(sm, "uniform_loss");
    if (!isnan(pl))
        fprintf(out, "  per-layer allocation at the same budget: loss %.6g\n", pl);
    if (!isnan(ul))
        fprintf(out, "  best uniform format within the budget: loss %.6g at %.0f bytes\n", ul,
                mp_summary_get(sm, "uniform_bytes"));
}
