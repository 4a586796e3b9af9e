/* validate_stage.c - the validate stage (see validate_stage.h). */
#include "validate_stage.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "allocation.h"
#include "cweights.h"
#include "error.h"
#include "factors.h"
#include "fsutil.h"
#include "gpu_info.h"
#include "gweights.h"
#include "layer_commit.h"
#include "metric_reduce.h"
#include "outdir.h"
#include "output.h"
#include "plan.h"
#include "runtime.h"
#include "spearman.h"
#include "store.h"

/* per unit u (0..E, E = the shared expert; a dense MLP layer's unit in slot 0) and projection p: ACC_* slots
 * of acc[(slot(u) * 3 + p) * NACC] */
enum { ACC_ERR, ACC_BASE, ACC_UERR, ACC_UREF, ACC_TOK, NACC };

typedef struct {
    mp_run *r;
    mp_tokens tok;
    char source[128]; /* where the tokens come from (no paths: the output's bytes do not depend on them) */
    int held_out, own_tok, cuda;
    mp_outdir *o;
    mp_cweights *cw; /* the compressed model on the CPU (also: the per-block parts) */
    mp_gweights *gw; /* its units on this rank's GPU (validate.device = cuda) */
    mp_weights cwv;  /* the compressed model as the validation runs it (CPU or GPU units) */
    mp_epf *a, *b;  /* the original and the compressed forward pass */
    mp_metric_reducer *red;
    int E, shared, delta, d, f;
    double *acc;             /* [(E + 1) * 3 * NACC], this rank's units */
    float *B[3];             /* the layer's base (decomposition on) */
    float *W[3];             /* the unit's original weights (routed: owned copies) */
    mp_layer_w lw;           /* the layer's original weights (the shared expert) */
    float *o1, *o2, *o3, *y; /* chunk scratch */
} vctx;

/* ---- tokens ------------------------------------------------------------------------------------- */

/* x->tok: validate.tokens (read, owned), else the held-out sequences or the calibration's (views) */
static int choose_tokens(vctx *x)
{
    const mp_job *job = x->r->job;
    const mp_tokens *h = x->r->o->held_out;
    int first = 0;
    if (job->val_tokens[0]) {
        MP_CHECK(mp_tokens_read(job->val_tokens, x->r->m->cfg.vocab, &x->tok));
        x->own_tok = x->held_out = 1;
    } else if (h && h->n_seq > 0) {
        x->tok = *h, x->held_out = 1, first = x->r->tok->n_seq;
    } else
        x->tok = *x->r->tok;
    if (job->val_max_sequences > 0 && job->val_max_sequences < x->tok.n_seq)
        x->tok.n_seq = job->val_max_sequences;
    if (job->val_tokens[0])
        snprintf(x->source, sizeof x->source, "sequences 0..%d of validate.tokens", x->tok.n_seq - 1);
    else
        snprintf(x->source, sizeof x->source, "%s sequences %d..%d of calibration.tokens",
                 x->held_out ? "held-out" : "calibration (none held out)", first, first + x->tok.n_seq - 1);
    return 0;
}

static void release_tokens(vctx *x)
{
    if (x->own_tok)
        mp_tokens_free(&x->tok);
    memset(&x->tok, 0, sizeof x->tok), x->own_tok = 0;
}

/* ---- device ------------------------------------------------------------------------------------- */

/* Collective: x->cuda = 1 when validate.device is cuda, or auto and every rank sees a GPU in a build with
 * CUDA; cuda without one is MP_EUSAGE (said before any work: mp_validate_check). */
static int choose_device(vctx *x, int say)
{
    const char *want = x->r->job->val_device;
    int gpus = mp_gpu_device_count(), all = 0; /* 0 in a build without CUDA */
    MP_MPI(MPI_Allreduce(&gpus, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
    x->cuda = strcmp(want, "cpu") && all > 0;
    if (x->cuda || !strcmp(want, "cpu"))
        return 0;
    const char *why = MOEPACK_HAVE_CUDA ? "no GPU is visible" : "no GPU is visible (built without CUDA)";
    if (!strcmp(want, "cuda"))
        return mp_mpi_agree(mp_errorf(MP_EUSAGE, "validate.device = cuda: %s%s; use validate.device = auto or cpu",
                                      why, x->r->size > 1 ? " on some rank" : ""));
    if (say && x->r->rank == 0 && !x->r->o->quiet)
        fprintf(x->r->o->log_json ? stderr : stdout, "validate: %s; the compressed experts run on the CPU\n", why);
    return 0;
}

/* Collective: the GPU units of x->cwv (one GPU per rank: the node-local rank modulo the devices). A failure
 * is an error with validate.device = cuda; with auto it is said and the CPU serves the units. */
static int open_gpu(vctx *x)
{
    int lr = 0, ls = 1, nd = mp_gpu_device_count();
    mp_weights cpu = x->cwv;
    MP_CHECK(mp_mpi_node_rank(&lr, &ls));
    int rc = mp_mpi_agree(nd > 0 ? mp_gweights_open(x->r->m, x->o, lr % nd, &x->gw, &x->cwv)
                                 : mp_errorf(MP_EUSAGE, "rank %d: no GPU is visible", x->r->rank));
    if (rc == 0 || !strcmp(x->r->job->val_device, "cuda"))
        return rc;
    if (x->r->rank == 0 && !x->r->o->quiet)
        fprintf(x->r->o->log_json ? stderr : stdout, "validate: the GPU path failed (%s); the compressed experts run "
                "on the CPU\n", mp_error_message());
    mp_error_clear();
    mp_gweights_close(x->gw), x->gw = NULL;
    x->cwv = cpu, x->cuda = 0;
    return 0;
}

/* ---- per-block measurement (unit hooks on the original forward pass) ---------------------------- */

static int slot(int u) { return u == MP_UNIT_DENSE ? 0 : u; }

static int v_begin(void *ctx, int l, int u, int d, int f)
{
    vctx *x = ctx;
    (void)d;
    x->f = f;
    if (u == x->E) {
        x->W[0] = x->lw.sh_gate, x->W[1] = x->lw.sh_up, x->W[2] = x->lw.sh_down;
        return 0;
    }
    if (u == MP_UNIT_DENSE) {
        x->W[0] = x->lw.mlp_gate, x->W[1] = x->lw.mlp_up, x->W[2] = x->lw.mlp_down;
        return 0;
    }
    size_t fd = (size_t)f * (size_t)x->d;
    float *w = malloc(sizeof(float) * fd * 3);
    if (!w)
        return mp_errorf(MP_ENOMEM, "out of memory for expert %d of layer %d", u, l);
    x->W[0] = w, x->W[1] = w + fd, x->W[2] = w + 2 * fd;
    for (int p = 0; p < 3; p++)
        MP_CHECK(x->r->w.expert(x->r->w.ctx, l, u, (mp_proj)p, x->W[p]));
    return 0;
}

static double sq_diff(const float *a, const float *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)a[i] - (b ? b[i] : 0.0f);
        s += e * e;
    }
    return s;
}

/* out [n, m] = Z [n, k] W^T */
static void gemm_nt(const float *Z, int n, int k, const float *W, int m, float *out)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, 1.0f, Z, k, W, k, 0.0f, out, m);
}

static int v_chunk(void *ctx, int l, int u, const float *X, const float *H, const float *w, const int64_t *tok, int nb)
{
    vctx *x = ctx;
    (void)w, (void)tok;
    int d = x->d, f = x->f, base = x->delta && u >= 0 && u < x->E;
    double *acc = x->acc + (size_t)slot(u) * 3 * NACC;
    for (int p = 0; p < 3; p++) {
        const float *Z = p < 2 ? X : H;
        int m = p < 2 ? f : d, k = p < 2 ? d : f;
        gemm_nt(Z, nb, k, x->W[p], m, x->o1); /* the original projection */
        if (p == 2)
            memcpy(x->y, x->o1, sizeof(float) * (size_t)nb * (size_t)d);
        if (base) { /* base block: B z against deq(B) z; delta block: (W - B) z against deq(U) deq(V) z */
            gemm_nt(Z, nb, k, x->B[p], m, x->o2);
            MP_CHECK(mp_cweights_project(x->cw, l, u, p, MP_CW_DENSE, Z, nb, x->o3));
            acc[p * NACC + ACC_BASE] += sq_diff(x->o2, x->o3, (int64_t)nb * m);
            MP_CHECK(mp_cweights_project(x->cw, l, u, p, MP_CW_DELTA, Z, nb, x->o3));
            for (int64_t i = 0; i < (int64_t)nb * m; i++)
                x->o1[i] -= x->o2[i] + x->o3[i];
            acc[p * NACC + ACC_ERR] += sq_diff(x->o1, NULL, (int64_t)nb * m);
        } else {
            MP_CHECK(mp_cweights_project(x->cw, l, u, p, MP_CW_ALL, Z, nb, x->o3));
            acc[p * NACC + ACC_ERR] += sq_diff(x->o1, x->o3, (int64_t)nb * m);
        }
    }
    /* the whole unit: original output against the compressed unit's (its own intermediate) */
    MP_CHECK(x->cwv.unit(x->cwv.ctx, l, u, X, nb, x->o2));
    acc[ACC_UERR] += sq_diff(x->y, x->o2, (int64_t)nb * d);
    acc[ACC_UREF] += sq_diff(x->y, NULL, (int64_t)nb * d);
    acc[ACC_TOK] += nb;
    return 0;
}

static int v_end(void *ctx, int l, int u)
{
    vctx *x = ctx;
    (void)l;
    if (u >= 0 && u < x->E)
        free(x->W[0]);
    x->W[0] = x->W[1] = x->W[2] = NULL;
    return 0;
}

/* ---- the layer's report ------------------------------------------------------------------------- */

static void num(cJSON *o, const char *k, double v)
{
    char t[40];
    if (isfinite(v))
        snprintf(t, sizeof t, "%.17g", v);
    else
        snprintf(t, sizeof t, "null");
    cJSON_AddRawToObject(o, k, t);
}

static double get_num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* Rank 0: validate.json of layer l from the summed accumulators and the layer's allocation. */
static int layer_report(vctx *x, int l, const double sq[2], const char *path)
{
    mp_run *r = x->r;
    char ap[4700];
    mp_alloc_path(ap, sizeof ap, r->dir[MP_STAGE_ALLOCATE], l);
    mp_layer_alloc a = {0};
    MP_CHECK(mp_alloc_read(ap, &a));
    int dense = !r->m->cfg.is_moe[l], U = dense ? 1 : x->E + x->shared; /* a dense layer: its MLP in slot 0 */
    double energy = 0, tokens = 0;
    for (int u = 0; u < U; u++)
        energy += x->acc[(size_t)u * 3 * NACC + ACC_UREF];
    for (int u = 0; u < (dense ? 1 : x->E); u++)
        tokens += x->acc[(size_t)u * 3 * NACC + ACC_TOK];
    cJSON *j = cJSON_CreateObject(), *units = cJSON_CreateArray(), *blocks = cJSON_CreateArray();
    cJSON_AddNumberToObject(j, "layer", l);
    num(j, "routed_tokens", tokens);
    num(j, "rel_error", sq[1] > 0 ? sq[0] / sq[1] : NAN);
    num(j, "energy", energy);
    double pred = 0, meas = 0;
    for (int i = 0; i < a.n; i++) {
        const mp_choice *c = &a.c[i];
        double raw = 0;
        if (c->kind == MP_BK_BASE)
            for (int e = 0; e < x->E; e++)
                raw += x->acc[((size_t)e * 3 + c->proj) * NACC + ACC_BASE];
        else
            raw = x->acc[((size_t)slot(c->unit) * 3 + c->proj) * NACC + ACC_ERR];
        double m = energy > 0 ? raw / energy : NAN;
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "kind", mp_block_kind_name(c->kind));
        cJSON_AddNumberToObject(b, "unit", c->unit);
        cJSON_AddStringToObject(b, "proj", MP_PROJ_NAME[c->proj]);
        if (c->kind == MP_BK_DELTA)
            cJSON_AddNumberToObject(b, "rank", (double)c->rank);
        if (c->fmt)
            cJSON_AddStringToObject(b, "format", c->fmt->name);
        if (c->fmt_v)
            cJSON_AddStringToObject(b, "format_v", c->fmt_v->name);
        num(b, "predicted", c->loss);
        num(b, "measured", m);
        num(b, "measured_raw", raw);
        cJSON_AddItemToArray(blocks, b);
        pred += c->loss, meas += m;
    }
    num(j, "predicted_loss", pred);
    num(j, "measured_loss", meas);
    for (int u = 0; u < U; u++) {
        const double *q = x->acc + (size_t)u * 3 * NACC;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "unit", dense ? MP_UNIT_DENSE : u);
        if (dense)
            cJSON_AddTrueToObject(o, "dense");
        else if (u == x->E)
            cJSON_AddTrueToObject(o, "shared");
        num(o, "tokens", q[ACC_TOK]);
        num(o, "rel_error", q[ACC_UREF] > 0 ? q[ACC_UERR] / q[ACC_UREF] : NAN);
        cJSON_AddItemToArray(units, o);
    }
    cJSON_AddItemToObject(j, "units", units);
    cJSON_AddItemToObject(j, "blocks", blocks);
    mp_layer_alloc_free(&a);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    int rc = txt ? mp_write_file_atomic(path, txt, strlen(txt)) : mp_errorf(MP_ENOMEM, "out of memory");
    free(txt);
    return rc;
}

/* ---- stage -------------------------------------------------------------------------------------- */

int mp_validate_begin(mp_run *r, int s)
{
    const mp_config *c = &r->m->cfg;
    vctx *x = calloc(1, sizeof *x);
    r->state = x;
    (void)s;
    if (!x)
        return mp_errorf(MP_ENOMEM, "out of memory");
    x->r = r, x->E = c->n_experts, x->shared = c->n_shared > 0 && c->shared_ffn > 0;
    x->delta = r->job->delta_enabled, x->d = c->hidden;
    int rc = mp_mpi_agree(choose_tokens(x));
    if (rc == 0)
        rc = choose_device(x, 1);
    if (rc == 0)
        rc = mp_outdir_open(r->job->out_dir, &x->o);
    if (rc == 0)
        rc = mp_cweights_open(r->m, x->o, &x->cw, &x->cwv);
    MP_CHECK(mp_mpi_agree(rc));
    if (x->cuda)
        MP_CHECK(open_gpu(x));
    MP_CHECK(mp_metric_reducer_create(x->cuda ? MP_REDUCE_AUTO : MP_REDUCE_MPI, &x->red));
    int fm = c->moe_ffn > c->shared_ffn ? c->moe_ffn : c->shared_ffn;
    fm = c->dense_ffn > fm ? c->dense_ffn : fm;
    int w = fm > x->d ? fm : x->d;
    size_t chunk = (size_t)MP_CHUNK * (size_t)w;
    x->acc = calloc((size_t)(x->E + 1) * 3 * NACC, sizeof(double));
    x->o1 = malloc(sizeof(float) * chunk), x->o2 = malloc(sizeof(float) * chunk);
    x->o3 = malloc(sizeof(float) * chunk), x->y = malloc(sizeof(float) * chunk);
    rc = x->acc && x->o1 && x->o2 && x->o3 && x->y ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
    MP_CHECK(mp_mpi_agree(rc));
    MP_CHECK(mp_epf_create(&r->w, &x->tok, NULL, NULL, &x->a));
    return mp_epf_create(&x->cwv, &x->tok, NULL, NULL, &x->b);
}

static void unit_name(int u, int n, char *buf, size_t cap)
{
    (void)u, (void)n;
    snprintf(buf, cap, "validate.json");
}

/* the layer's base B_p (decomposition on), for the ranks that own one of its experts */
static int load_base(vctx *x, int l)
{
    mp_run *r = x->r;
    int f = r->m->cfg.moe_ffn, d = x->d, own = 0;
    for (int e = 0; e < x->E; e++)
        own |= mp_unit_owner(l, e, x->E, r->size) == r->rank;
    if (!x->delta || !own)
        return 0;
    char path[4700];
    snprintf(path, sizeof path, "%s/layer%04d/base.h5", r->dir[MP_STAGE_DECOMPOSE], l);
    for (int p = 0; p < 3; p++) {
        int64_t m = p < 2 ? f : d, n = p < 2 ? d : f;
        if (!(x->B[p] = malloc(sizeof(float) * (size_t)(m * n))))
            return mp_errorf(MP_ENOMEM, "out of memory for the base of layer %d", l);
        MP_CHECK(mp_base_read(path, p, m, n, x->B[p]));
    }
    return 0;
}

static void free_layer(vctx *x)
{
    for (int p = 0; p < 3; p++)
        free(x->B[p]), x->B[p] = NULL;
    mp_layer_free(&x->lw);
    memset(&x->lw, 0, sizeof x->lw);
}

int mp_validate_layer(mp_run *r, int s, int l, int committed)
{
    vctx *x = r->state;
    if (committed || !mp_config_has_units(&r->m->cfg, l)) { /* only what the next layers need */
        MP_CHECK(mp_epf_layer(x->a, l, NULL));
        return mp_epf_layer(x->b, l, NULL);
    }
    memset(x->acc, 0, sizeof(double) * (size_t)(x->E + 1) * 3 * NACC);
    int moe = r->m->cfg.is_moe[l], rc = moe ? load_base(x, l) : 0;
    if (rc == 0 && moe && x->shared && mp_unit_owner(l, x->E, x->E, r->size) == r->rank)
        rc = r->w.layer(r->w.ctx, l, &x->lw);
    if (rc == 0 && !moe && mp_unit_owner(l, MP_UNIT_DENSE, x->E, r->size) == r->rank) /* the dense MLP's owner */
        rc = r->w.layer(r->w.ctx, l, &x->lw);
    mp_unit_hooks hk = {x, v_begin, v_chunk, v_end};
    double sq[2] = {0, 0};
    rc = mp_mpi_agree(rc);
    if (rc == 0)
        rc = mp_epf_layer_compare(x->a, l, &hk, &x->cwv, sq);
    free_layer(x);
    MP_CHECK(rc);
    MP_CHECK(mp_epf_layer(x->b, l, NULL));
    MP_CHECK(mp_metric_reducer_sum(x->red, x->acc, (int64_t)(x->E + 1) * 3 * NACC));
    uint64_t h[2] = {0, 0};
    if (r->rank == 0) {
        char ldir[4600], path[4700];
        snprintf(ldir, sizeof ldir, "%s/layer%04d", r->dir[s], l);
        snprintf(path, sizeof path, "%s/validate.json", ldir);
        rc = mp_mkdir_p(ldir);
        if (rc == 0)
            rc = layer_report(x, l, sq, path);
        if (rc == 0)
            rc = mp_file_xxh64(path, &h[0]);
        h[1] = 1;
    }
    return mp_commit_layer_units(rc, r->dir[s], l, r->fp[s], h, 1, unit_name, 0, "validate: before layer manifest");
}

/* Rank 0: every MoE and dense MLP layer's validate.json into the report; Spearman over blocks and layers. */
static int assemble(vctx *x, int s, const mp_head_cmp *hc, cJSON *rep)
{
    mp_run *r = x->r;
    const mp_config *c = &r->m->cfg;
    int cap = 0, n = 0, nl = 0, rc = 0;
    double *bp = NULL, *bm = NULL, *lp = calloc((size_t)c->n_layers + 1, sizeof(double) * 2), *lm = lp + c->n_layers;
    double err_sum = 0, err_max = 0;
    cJSON *layers = cJSON_CreateArray();
    if (!lp)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int l = 0; l < c->n_layers && rc == 0; l++) {
        if (!mp_config_has_units(c, l))
            continue;
        char path[4700], *txt = NULL;
        snprintf(path, sizeof path, "%s/layer%04d/validate.json", r->dir[s], l);
        if ((rc = mp_read_file(path, &txt, NULL)) < 0)
            break;
        cJSON *j = cJSON_Parse(txt);
        free(txt);
        const cJSON *bl = j ? cJSON_GetObjectItem(j, "blocks") : NULL, *b;
        if (!cJSON_IsArray(bl)) {
            cJSON_Delete(j);
            rc = mp_errorf(MP_EFORMAT, "%s: not a validate.json (no \"blocks\")", path);
            break;
        }
        cJSON_ArrayForEach(b, bl)
        {
            if (n == cap) {
                cap = cap ? 2 * cap : 256;
                double *p = realloc(bp, sizeof(double) * (size_t)cap), *q = p ? realloc(bm, sizeof(double) * (size_t)cap) : NULL;
                if (p)
                    bp = p;
                if (q)
                    bm = q;
                if (!p || !q) {
                    rc = mp_errorf(MP_ENOMEM, "out of memory");
                    break;
                }
            }
            bp[n] = get_num(b, "predicted"), bm[n] = get_num(b, "measured");
            n += isfinite(bp[n]) && isfinite(bm[n]);
        }
        double e = get_num(j, "rel_error");
        lp[nl] = get_num(j, "predicted_loss"), lm[nl] = e;
        nl += isfinite(e) && isfinite(lp[nl]);
        if (isfinite(e))
            err_sum += e, err_max = e > err_max ? e : err_max;
        cJSON_AddItemToArray(layers, j);
    }
    double rb = NAN, rl = NAN, np = (double)hc->n_pred;
    if (rc == 0)
        rc = mp_spearman(bp, bm, n, &rb);
    if (rc == 0)
        rc = mp_spearman(lp, lm, nl, &rl);
    mp_summary *sm = &r->sum[s];
    if (rc == 0) {
        int nmoe = cJSON_GetArraySize(layers);
        mp_summary_set(sm, "sequences", x->tok.n_seq);
        mp_summary_set(sm, "tokens", np);
        mp_summary_set(sm, "held_out", x->held_out);
        mp_summary_set(sm, "ppl_original", exp(hc->nll[0] / np));
        mp_summary_set(sm, "ppl_compressed", exp(hc->nll[1] / np));
        mp_summary_set(sm, "kl", hc->kl_sum / np);
        mp_summary_set(sm, "top1", (double)hc->top1 / np);
        mp_summary_set(sm, "rel_error_mean", nmoe ? err_sum / nmoe : NAN);
        mp_summary_set(sm, "rel_error_max", err_max);
        mp_summary_set(sm, "spearman_blocks", rb);
        mp_summary_set(sm, "spearman_layers", rl);
        mp_summary_set(sm, "blocks", n);
        mp_summary_set(sm, "cuda", x->cuda);
        cJSON *t = cJSON_AddObjectToObject(rep, "tokens");
        cJSON_AddStringToObject(t, "source", x->source);
        cJSON_AddBoolToObject(t, "held_out", x->held_out);
        cJSON_AddNumberToObject(t, "sequences", x->tok.n_seq);
        cJSON_AddNumberToObject(t, "seq_len", x->tok.seq_len);
        cJSON_AddNumberToObject(t, "predicted", np);
        cJSON_AddStringToObject(rep, "device", x->cuda ? "cuda" : "cpu");
        for (int i = 0; i < sm->n; i++)
            if (strcmp(sm->key[i], "sequences") && strcmp(sm->key[i], "tokens") && strcmp(sm->key[i], "held_out") &&
                strcmp(sm->key[i], "cuda"))
                num(rep, sm->key[i], sm->val[i]);
        num(rep, "nll_original", hc->nll[0] / np);
        num(rep, "nll_compressed", hc->nll[1] / np);
        cJSON_AddItemToObject(rep, "layers", layers);
        layers = NULL;
    }
    cJSON_Delete(layers);
    free(bp), free(bm), free(lp);
    return rc;
}

int mp_validate_end(mp_run *r, int s, int ok)
{
    vctx *x = r->state;
    int rc = 0;
    if (ok && x) {
        mp_head_cmp hc;
        rc = mp_epf_head_compare(x->a, x->b, &hc);
        mp_epf_free(x->b), x->b = NULL; /* the shards are written below: nothing may hold them open */
        mp_gweights_close(x->gw), x->gw = NULL;
        mp_cweights_close(x->cw), x->cw = NULL;
        mp_outdir_close(x->o), x->o = NULL;
        rc = mp_mpi_agree(rc); /* also: every rank has closed the shards before rank 0 opens them to write */
        if (rc == 0 && r->rank == 0) {
            cJSON *rep = cJSON_CreateObject();
            rc = rep ? assemble(x, s, &hc, rep) : mp_errorf(MP_ENOMEM, "out of memory");
            char *txt = rc == 0 ? cJSON_Print(rep) : NULL;
            static const char *const keys[] = {"ppl_original", "ppl_compressed", "kl", "top1", "rel_error_mean",
                                               "spearman_blocks", "spearman_layers"};
            double vals[7];
            for (int i = 0; i < 7; i++)
                vals[i] = mp_summary_get(&r->sum[s], keys[i]);
            mp_fault_point("validate: before the output records the validation");
            if (rc == 0)
                rc = txt ? mp_out_record_validation(r->job->out_dir, r->fp[s], txt, keys, vals, 7)
                         : mp_errorf(MP_ENOMEM, "out of memory");
            free(txt);
            cJSON_Delete(rep);
        }
        rc = mp_mpi_agree(rc);
    }
    if (x) {
        mp_epf_free(x->a), mp_epf_free(x->b);
        mp_gweights_close(x->gw);
        mp_cweights_close(x->cw);
        mp_outdir_close(x->o);
        mp_metric_reducer_destroy(x->red);
        free_layer(x);
        release_tokens(x);
        free(x->acc), free(x->o1), free(x->o2), free(x->o3), free(x->y);
        free(x);
    }
    r->state = NULL;
    return rc;
}

int mp_validate_check(mp_run *r, int s)
{
    vctx x = {.r = r};
    (void)s;
    int rc = choose_tokens(&x);
    if (rc == 0 && x.tok.n_seq > 0 && x.tok.seq_len > r->m->cfg.max_pos)
        rc = mp_errorf(MP_EFORMAT, "%s: sequences of %d tokens are longer than the model's %d positions",
                       r->job->val_tokens[0] ? r->job->val_tokens : r->job->tokens_path, x.tok.seq_len,
                       r->m->cfg.max_pos);
    release_tokens(&x);
    MP_CHECK(mp_mpi_agree(rc));
    return choose_device(&x, 0);
}

int mp_validate_kept(mp_run *r, int s, int *ok)
{
    int good = 0, rc = 0;
    if (r->rank == 0)
        rc = mp_out_validation_current(r->job->out_dir, r->fp[s], &good);
    MP_CHECK(mp_mpi_agree(rc));
    MP_MPI(MPI_Bcast(&good, 1, MPI_INT, 0, MPI_COMM_WORLD));
    *ok = good;
    return 0;
}

void mp_validate_print(const mp_run *r, int s, FILE *out)
{
    const mp_summary *sm = &r->sum[s];
    char path[4400], *txt = NULL;
    snprintf(path, sizeof path, "%s/validation.json", r->job->out_dir);
    cJSON *j = mp_read_file(path, &txt, NULL) == 0 ? cJSON_Parse(txt) : NULL;
    free(txt);
    mp_error_clear();
    const cJSON *t = cJSON_GetObjectItem(j, "tokens"), *src = cJSON_GetObjectItem(t, "source");
    double po = mp_summary_get(sm, "ppl_original"), pc = mp_summary_get(sm, "ppl_compressed");
    fprintf(out, "validate: %.0f sequences, %.0f predicted tokens (%s); compressed experts on the %s\n",
            mp_summary_get(sm, "sequences"), mp_summary_get(sm, "tokens"),
            cJSON_IsString(src) ? src->valuestring : "?", mp_summary_get(sm, "cuda") > 0 ? "GPU" : "CPU");
    fprintf(out, "  perplexity original %.6f, compressed %.6f (%+.3f%%); KL(original || compressed) %.6g nats/token; "
                 "top-1 agreement %.2f%%\n",
            po, pc, 100 * (pc / po - 1), mp_summary_get(sm, "kl"), 100 * mp_summary_get(sm, "top1"));
    const cJSON *layers = cJSON_GetObjectItem(j, "layers"), *l;
    if (cJSON_GetArraySize(layers) > 0)
        fprintf(out, "  %5s  %14s  %14s  %14s  %s\n", "layer", "predicted loss", "measured loss", "output error",
                "worst unit (relative error)");
    cJSON_ArrayForEach(l, layers)
    {
        const cJSON *units = cJSON_GetObjectItem(l, "units"), *u;
        int worst = -1, found = 0;
        double we = -1;
        cJSON_ArrayForEach(u, units)
        {
            double e = get_num(u, "rel_error");
            if (isfinite(e) && e > we)
                we = e, worst = (int)get_num(u, "unit"), found = 1;
        }
        fprintf(out, "  %5d  %14.6g  %14.6g  %14.6g  ", (int)get_num(l, "layer"), get_num(l, "predicted_loss"),
                get_num(l, "measured_loss"), get_num(l, "rel_error"));
        if (found && worst == MP_UNIT_DENSE)
            fprintf(out, "dense MLP (%.4g)\n", we);
        else if (found)
            fprintf(out, "%d (%.4g)\n", worst, we);
        else
            fprintf(out, "-\n");
    }
    fprintf(out, "  Spearman(predicted, measured): %.4f over %.0f blocks, %.4f over layers (vs output error)\n",
            mp_summary_get(sm, "spearman_blocks"), mp_summary_get(sm, "blocks"), mp_summary_get(sm, "spearman_layers"));
    fprintf(out, "  report: %s (and the /moepack attributes of the shards)\n", path);
    cJSON_Delete(j);
}
