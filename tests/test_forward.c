/* test_forward.c - run with mpiexec -n 1, 2, 4: the expert-parallel forward
 * pass against transformers on every fixture model it covers (per-layer
 * hidden states, router logits, final logits), the Gram matrices, counts and
 * routing-weight sums against the forward-hook reference of qwen2_moe_f32,
 * the stored token samples (qwen2_moe_f32: every routed token kept, the
 * token set that of transformers' top-k, X^T X and H^T H of the sample equal
 * its Grams; a synth model with more tokens than sample_tokens and than one
 * chunk: the sample is the min(K, count) tokens of smallest priority, its x
 * and h exactly the rows the expert saw, h recomputed from x with the
 * checkpoint's weights, G_in and G_mid equal to sum x x^T and sum h h^T of
 * those rows in a plain fp64 loop; its layer 0 is a dense MLP layer
 * (mlp_only_layers), whose unit sees every token), packed Grams (file triangle = unpacked Gram, pack /
 * unpack round trip), and a model whose router starves expert 3 (the job
 * finishes, the expert gets the prior and an empty sample, nothing is NaN).
 * Statistics are written under DIR for the cross-rank byte comparison
 * (same_stats.sh).
 *   usage: test_forward DIR */
#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>

#include <hdf5.h>
#include <xxhash.h>

#include "fsutil.h"
#include "pipeline.h"
#include "weights.h"
#include "runtime.h"
#include "stats.h"
#include "synth.h"
#include "testutil.h"

typedef struct {
    mp_ckpt *ref;
    int L, S;
    double err[64]; /* max |a - b| per observed tensor, normalised at the end */
    double scale[64];
    const char *name[64];
} obs_ctx;

static int slot(obs_ctx *o, const char *what, int index, int L)
{
    if (!strcmp(what, "hidden"))
        return index;            /* 0 .. L + 1 */
    if (!strcmp(what, "router")) /* L + 2 .. 2L + 1 */
        return L + 2 + index;
    (void)o;
    return 2 * L + 2; /* logits */
}

static void ref_name(const char *what, int index, int L, char *buf, size_t cap)
{
    if (!strcmp(what, "hidden"))
        snprintf(buf, cap, index == L ? "hidden_last_prenorm" : "hidden.%d", index == L + 1 ? L : index);
    else if (!strcmp(what, "router"))
        snprintf(buf, cap, "router_logits.%d", index);
    else
        snprintf(buf, cap, "logits");
}

static void observe(void *vctx, const char *what, int index, int seq0, int nseq, int width, const float *rows)
{
    obs_ctx *o = vctx;
    char name[64];
    ref_name(what, index, o->L, name, sizeof name);
    const mp_tensor *t = mp_ckpt_find(o->ref, name);
    if (!t)
        return; /* e.g. no router logits for a dense layer */
    int k = slot(o, what, index, o->L);
    int64_t n = (int64_t)nseq * o->S * width, first = (int64_t)seq0 * o->S * width;
    CHECK(first + n <= t->numel);
    float *r = malloc(sizeof(float) * (size_t)n);
    CHECK_OK(mp_ckpt_read_f32(o->ref, t, first, n, r));
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)rows[i] - r[i]);
        o->err[k] = e > o->err[k] || isnan(e) ? e : o->err[k];
    }
    /* the scale is the largest |value| of the whole reference tensor */
    float *all = malloc(sizeof(float) * (size_t)t->numel);
    CHECK_OK(mp_ckpt_read_f32(o->ref, t, 0, t->numel, all));
    for (int64_t i = 0; i < t->numel; i++)
        o->scale[k] = fabs(all[i]) > o->scale[k] ? fabs(all[i]) : o->scale[k];
    o->name[k] = mp_ckpt_find(o->ref, name)->name;
    free(all);
    free(r);
}

static double rel_diff(const double *a, const double *b, int64_t n)
{
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        e = fmax(e, fabs(a[i] - b[i]));
        s = fmax(s, fabs(b[i]));
    }
    return s > 0 ? e / s : e;
}

/* sum over the rows of X [t, n] of x x^T, fp64 [n, n] */
static double *sample_gram(const float *X, int64_t t, int64_t n)
{
    double *G = calloc((size_t)(n * n), sizeof(double));
    for (int64_t r = 0; r < t; r++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++)
                G[i * n + j] += (double)X[r * n + i] * X[r * n + j];
    return G;
}

/* the file's packed triangles hold exactly the upper triangles of the Grams mp_stats_read unpacked, and
 * the unpacked Grams are symmetric */
static void check_packed(const char *path, const mp_expert_stats *st)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(f >= 0);
    for (int w = 0; w < 2 && f >= 0; w++) {
        int64_t n = w ? st->f : st->d, np = n * (n + 1) / 2;
        const double *G = w ? st->G_mid : st->G_in;
        double *P = malloc(sizeof(double) * (size_t)np);
        hid_t ds = H5Dopen2(f, w ? "G_mid_packed" : "G_in_packed", H5P_DEFAULT), sp = H5Dget_space(ds);
        CHECK(ds >= 0 && H5Sget_simple_extent_npoints(sp) == np &&
              H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, P) >= 0);
        H5Sclose(sp), H5Dclose(ds);
        int ok = 1;
        for (int64_t i = 0, k = 0; i < n; i++)
            for (int64_t j = i; j < n; j++, k++)
                ok &= P[k] == G[i * n + j] && G[j * n + i] == G[i * n + j];
        CHECK(ok);
        free(P);
    }
    if (f >= 0)
        H5Fclose(f);
}

static void check_grams(const char *stats, const mp_ckpt *ref, int E)
{
    char path[1024], name[64];
    for (int u = 0; u <= E; u++) {
        mp_expert_stats st;
        mp_stats_path(path, sizeof path, stats, 1, u);
        CHECK_OK(mp_stats_read(path, &st));
        if (!st.G_in)
            continue;
        snprintf(name, sizeof name, u == E ? "gin.1.shared" : "gin.1.%d", u);
        const mp_tensor *t = mp_ckpt_find(ref, name);
        double *r = malloc(sizeof(double) * (size_t)(st.f > st.d ? st.f * st.f : st.d * st.d));
        CHECK(t && t->numel == st.d * st.d);
        float *rf = malloc(sizeof(float) * (size_t)(st.f > st.d ? st.f * st.f : st.d * st.d));
        /* the reference is F64; read it exactly */
        memcpy(r, t->data, sizeof(double) * (size_t)t->numel);
        double e_in = rel_diff(st.G_in, r, st.d * st.d);
        snprintf(name, sizeof name, u == E ? "gmid.1.shared" : "gmid.1.%d", u);
        t = mp_ckpt_find(ref, name);
        CHECK(t && t->numel == st.f * st.f);
        memcpy(r, t->data, sizeof(double) * (size_t)t->numel);
        double e_mid = rel_diff(st.G_mid, r, st.f * st.f);
        printf("  gram layer 1 %s %d: tokens %lld, G_in rel err %.2e, G_mid rel err %.2e\n",
               u == E ? "shared" : "expert", u, (long long)st.count, e_in, e_mid);
        CHECK(e_in <= 1e-5 && e_mid <= 1e-5);
        check_packed(path, &st);
        /* the sample (sample_tokens 256 > every count here): every routed token, the set transformers routed
         * to the unit, and its rows are the expert's inputs: X^T X and H^T H are transformers' Grams */
        const mp_tensor *tk = mp_ckpt_find(ref, "topk_idx.1");
        CHECK(tk && st.n_sample == st.count);
        int64_t nr = 0, same = 1;
        for (int64_t g = 0; tk && g < tk->shape[0]; g++) {
            int routed = u == E;
            for (int64_t k = 0; k < tk->shape[1]; k++)
                routed |= ((const int32_t *)tk->data)[g * tk->shape[1] + k] == u;
            if (routed)
                same &= nr < st.n_sample && st.sample_token[nr++] == g;
        }
        CHECK(same && nr == st.n_sample);
        double *gx = sample_gram(st.X_sample, st.n_sample, st.d), *gh = sample_gram(st.H_sample, st.n_sample, st.f);
        snprintf(name, sizeof name, u == E ? "gin.1.shared" : "gin.1.%d", u);
        memcpy(r, mp_ckpt_find(ref, name)->data, sizeof(double) * (size_t)(st.d * st.d));
        double s_in = rel_diff(gx, r, st.d * st.d);
        snprintf(name, sizeof name, u == E ? "gmid.1.shared" : "gmid.1.%d", u);
        memcpy(r, mp_ckpt_find(ref, name)->data, sizeof(double) * (size_t)(st.f * st.f));
        double s_mid = rel_diff(gh, r, st.f * st.f);
        printf("  sample layer 1 %s %d: %lld tokens = transformers' routed set %s, X^T X rel err %.2e, H^T H rel err "
               "%.2e\n",
               u == E ? "shared" : "expert", u, (long long)st.n_sample, same ? "yes" : "NO", s_in, s_mid);
        CHECK(s_in <= 1e-5 && s_mid <= 1e-5);
        free(gx), free(gh);
        if (u < E) {
            const mp_tensor *tc = mp_ckpt_find(ref, "count.1"), *tw = mp_ckpt_find(ref, "wsum.1");
            CHECK(tc && ((const int64_t *)tc->data)[u] == st.count);
            double ws;
            memcpy(&ws, tw->data + 8 * u, 8);
            CHECK_NEAR(st.weight_sum, ws, 1e-5 * fmax(1.0, ws));
        }
        free(r);
        free(rf);
        mp_stats_free(&st);
    }
}

/* The calibration stage (statistics into ckpt/calib) through the pipeline, or, without ckpt, the forward
 * pass alone; root gets the NLL sum and the number of predicted tokens. */
static int calibrate(const mp_model *m, const mp_tokens *tok, const char *ckpt, const char *extra, const char *until,
                     mp_observer ob, void *ctx, double *nll, int64_t *npred, int *starved)
{
    *starved = 0;
    if (!ckpt) {
        mp_weights w;
        mp_model_weights(m, &w);
        return mp_epf_run(&w, tok, ob, ctx, nll, npred);
    }
    char set_ck[700], set_out[720];
    snprintf(set_ck, sizeof set_ck, "checkpoint.dir=%s", ckpt);
    snprintf(set_out, sizeof set_out, "output.dir=%s.out", ckpt); /* every job its own output */
    /* extra: one key=value, or two separated by ';' */
    char ex[256] = "", *ex2 = NULL;
    snprintf(ex, sizeof ex, "%s", extra ? extra : "");
    if ((ex2 = strchr(ex, ';')))
        *ex2++ = 0;
    char *sets[] = {"model.path=x", "calibration.tokens=y", set_ck, set_out, ex, ex2};
    mp_job job;
    MP_CHECK(mp_job_load(NULL, sets, extra ? (ex2 ? 6 : 5) : 4, &job));
    mp_run_opts o = {.until = until, .quiet = 1, .fresh = 1, .observe = ob, .observe_ctx = ctx};
    mp_run r;
    MP_CHECK(mp_pipeline_run(&job, m, tok, &o, &r));
    *nll = mp_summary_get(&r.sum[MP_STAGE_CALIBRATE], "nll_sum");
    *npred = (int64_t)mp_summary_get(&r.sum[MP_STAGE_CALIBRATE], "predicted_tokens");
    *starved = (int)mp_summary_get(&r.sum[MP_STAGE_CALIBRATE], "starved_experts");
    return 0;
}

static void run_fixture(const char *name, double tol, const char *ckpt)
{
    char dir[512], refp[600];
    snprintf(dir, sizeof dir, "%s/%s", MP_FIXTURES, name);
    snprintf(refp, sizeof refp, "%s/ref.safetensors", dir);
    mp_model *m = NULL;
    obs_ctx o = {0};
    CHECK_OK(mp_model_open(dir, &m));
    CHECK_OK(mp_ckpt_open_file(refp, &o.ref));
    if (!m || !o.ref)
        return;
    const mp_tensor *tt = mp_ckpt_find(o.ref, "tokens");
    mp_tokens tok = {(int)tt->shape[0], (int)tt->shape[1], malloc(sizeof(int32_t) * (size_t)tt->numel)};
    memcpy(tok.ids, tt->data, sizeof(int32_t) * (size_t)tt->numel);
    o.L = m->cfg.n_layers, o.S = tok.seq_len;
    double nll = 0;
    int64_t npred = 0;
    int starved = 0;
    CHECK_OK(calibrate(m, &tok, ckpt, NULL, "calibrate", observe, &o, &nll, &npred, &starved));
    double err[64], sc[64];
    MPI_Allreduce(o.err, err, 64, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(o.scale, sc, 64, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    double worst = 0;
    int n = 0;
    for (int k = 0; k < 64; k++)
        if (sc[k] > 0) {
            double r = err[k] / sc[k];
            worst = r > worst || isnan(r) ? r : worst;
            n++;
        }
    if (mp_mpi_rank() == 0) {
        /* the perplexity implied by transformers' logits */
        const mp_tensor *tl = mp_ckpt_find(o.ref, "logits");
        int V = m->cfg.vocab;
        float *lg = malloc(sizeof(float) * (size_t)tl->numel);
        CHECK_OK(mp_ckpt_read_f32(o.ref, tl, 0, tl->numel, lg));
        double ref_nll = 0;
        for (int q = 0; q < tok.n_seq; q++)
            for (int t = 0; t + 1 < tok.seq_len; t++) {
                const float *r = lg + ((int64_t)q * tok.seq_len + t) * V;
                double mx = r[0], z = 0;
                for (int v = 1; v < V; v++)
                    mx = fmax(mx, r[v]);
                for (int v = 0; v < V; v++)
                    z += exp(r[v] - mx);
                ref_nll += mx + log(z) - r[tok.ids[q * tok.seq_len + t + 1]];
            }
        free(lg);
        double ppl = exp(nll / (double)npred), ref_ppl = exp(ref_nll / (double)npred);
        printf("%-18s %d tensors vs transformers: max relative error %.2e (tolerance %.0e), ppl %.4f (transformers "
               "%.4f)\n",
               name, n, worst, tol, ppl, ref_ppl);
        CHECK(fabs(ppl - ref_ppl) <= 10 * tol * ref_ppl);
        CHECK(n >= 2 * o.L + 2);
        CHECK(worst <= tol);
        if (ckpt) {
            char stats[700];
            snprintf(stats, sizeof stats, "%s/calib", ckpt);
            check_grams(stats, o.ref, m->cfg.n_experts);
        }
    }
    free(tok.ids);
    mp_ckpt_close(o.ref);
    mp_model_close(m);
}

/* a qwen3-style model whose router rows 2 and 3 copy row 0: with top-2 and ties going to the lower
 * index, expert 3 is never chosen */
static void starved(const char *root)
{
    char dir[600], ckpt[700], stats[800], dec[800], path[1024];
    snprintf(dir, sizeof dir, "%s/starved_model", root);
    snprintf(ckpt, sizeof ckpt, "%s/starved_ckpt", root);
    snprintf(stats, sizeof stats, "%s/calib", ckpt);
    snprintf(dec, sizeof dec, "%s/decomp", ckpt);
    int rc = 0;
    if (mp_mpi_rank() == 0) {
        char cmd[1500];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", dir, ckpt);
        CHECK(system(cmd) == 0);
        mp_synth_opts so;
        mp_synth_defaults(&so);
        so.arch = MP_ARCH_QWEN3_MOE, so.experts = 4, so.n_seq = 6, so.seq_len = 32, so.ffn = 32;
        rc = mp_synth_write(&so, dir);
        mp_model *m = NULL;
        if (rc == 0)
            rc = mp_model_open(dir, &m);
        for (int l = 0; rc == 0 && l < m->cfg.n_layers; l++) {
            char rn[MP_NAME_MAX];
            mp_name_router(&m->cfg, m->layout, l, rn, sizeof rn);
            const mp_tensor *t = mp_ckpt_find(m->ck, rn);
            const mp_st_file *f = &m->ck->files[t->file];
            size_t row = sizeof(float) * (size_t)m->cfg.hidden;
            off_t off = (off_t)(t->data - f->map);
            int fd = open(f->path, O_WRONLY);
            CHECK(fd >= 0 && pwrite(fd, t->data, row, off + 2 * (off_t)row) == (ssize_t)row &&
                  pwrite(fd, t->data, row, off + 3 * (off_t)row) == (ssize_t)row);
            close(fd);
        }
        mp_model_close(m);
        CHECK_OK(rc);
    }
    CHECK_OK(mp_mpi_agree(rc));
    mp_model *m = NULL;
    mp_tokens tok = {0};
    snprintf(path, sizeof path, "%s/tokens.h5", dir);
    CHECK_OK(mp_model_open(dir, &m));
    CHECK_OK(mp_tokens_read(path, m ? m->cfg.vocab : 0, &tok));
    /* calibration and the decomposition of a starved expert, which uses the prior: finite factors */
    double nll = 0;
    int64_t npred = 0;
    int n_starved = 0;
    CHECK_OK(calibrate(m, &tok, ckpt, "delta.solver=lapack" /* byte-comparable */, NULL, NULL, NULL, &nll, &npred,
                       &n_starved));
    if (mp_mpi_rank() == 0) {
        CHECK(n_starved >= 2); /* expert 3 of both layers */
        CHECK(isfinite(nll));
        mp_expert_stats st;
        mp_stats_path(path, sizeof path, stats, 1, 3);
        CHECK_OK(mp_stats_read(path, &st));
        CHECK(st.count == 0 && st.prior_tokens == 16 && st.weight_sum == 0);
        CHECK(st.n_sample == 0 && !st.X_sample && !st.H_sample && !st.sample_token); /* an empty sample */
        double *G = malloc(sizeof(double) * (size_t)(st.d * st.d));
        mp_stats_regularized(&st, 0, G);
        int ok = 1;
        for (int64_t i = 0; i < st.d * st.d; i++)
            ok &= isfinite(G[i]) && (i % (st.d + 1) != 0 || G[i] > 0);
        CHECK(ok);
        free(G);
        mp_stats_free(&st);
        char *rep = NULL;
        size_t n;
        snprintf(path, sizeof path, "%s/layer0001/report.json", stats);
        CHECK_OK(mp_read_file(path, &rep, &n));
        CHECK(rep && strstr(rep, "{\"expert\": 3, \"tokens\": 0, \"prior\": true}"));
        free(rep);
        printf("starved expert: finished with %d starved experts, prior applied\n", n_starved);
    }
    if (mp_mpi_rank() == 0) {
        snprintf(path, sizeof path, "%s/layer0001/expert0003.h5", dec);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), root_g = H5Gopen2(f, "/", H5P_DEFAULT);
        double en = NAN;
        hid_t a = H5Aopen(root_g, "energy_up", H5P_DEFAULT);
        H5Aread(a, H5T_NATIVE_DOUBLE, &en);
        H5Aclose(a), H5Gclose(root_g), H5Fclose(f);
        printf("starved expert decomposed with the prior: energy_up %.4g\n", en);
        CHECK(isfinite(en) && en > 0);
    }
    mp_tokens_free(&tok);
    mp_model_close(m);
}

/* Tokens the model cannot take reach the forward pass only through the library (the command line refuses them
 * first): bad input data (MP_EFORMAT, exit 5), not a usage error; agreed by every rank. */
static void tokens_too_long(void)
{
    mp_model *m = NULL;
    CHECK_OK(mp_model_open(MP_FIXTURES "/mixtral_f32", &m));
    if (!m)
        return;
    mp_tokens tok = {2, m->cfg.max_pos + 1, NULL};
    tok.ids = calloc((size_t)tok.n_seq * (size_t)tok.seq_len, sizeof *tok.ids);
    mp_weights w;
    mp_model_weights(m, &w);
    double nll = 0;
    int64_t npred = 0;
    int rc = mp_epf_run(&w, &tok, NULL, NULL, &nll, &npred);
    CHECK(rc == MP_EFORMAT);
    CHECK(strstr(mp_error_message(), "longer than the model's") != NULL);
    mp_error_clear();
    free(tok.ids);
    mp_model_close(m);
}

/* ---- the token sample on a model with more routed tokens than sample_tokens and than one chunk ---- */

#define SAMPLE_K 100

typedef struct {
    const mp_weights *w;
    const char *stats;
    int d, f, n, cap;
    int64_t *tok;
    float *x, *h;
    int units, multi_chunk; /* units checked; units with more than K tokens over more than one chunk */
} rec_ctx;

static int rec_begin(void *vc, int l, int u, int d, int f)
{
    rec_ctx *c = vc;
    (void)l, (void)u;
    c->d = d, c->f = f, c->n = 0, c->cap = 0; /* the buffers regrow for this unit's dims */
    return 0;
}

/* every routed row of the unit, as ep_forward hands it to the hooks */
static int rec_chunk(void *vc, int l, int u, const float *x, const float *h, const float *w, const int64_t *tok,
                     int nb)
{
    rec_ctx *c = vc;
    (void)l, (void)u, (void)w;
    if (c->n + nb > c->cap) {
        c->cap = 2 * (c->n + nb);
        c->tok = realloc(c->tok, sizeof(int64_t) * (size_t)c->cap);
        c->x = realloc(c->x, sizeof(float) * (size_t)c->cap * (size_t)c->d);
        c->h = realloc(c->h, sizeof(float) * (size_t)c->cap * (size_t)c->f);
    }
    memcpy(c->tok + c->n, tok, sizeof(int64_t) * (size_t)nb);
    memcpy(c->x + (size_t)c->n * c->d, x, sizeof(float) * (size_t)nb * (size_t)c->d);
    memcpy(c->h + (size_t)c->n * c->f, h, sizeof(float) * (size_t)nb * (size_t)c->f);
    c->n += nb;
    return 0;
}

typedef struct {
    uint64_t pri;
    int64_t tok;
    int row;
} prio;

static int cmp_prio(const void *a, const void *b)
{
    const prio *x = a, *y = b;
    if (x->pri != y->pri)
        return x->pri < y->pri ? -1 : 1;
    return (x->tok > y->tok) - (x->tok < y->tok);
}

static int cmp_prio_tok(const void *a, const void *b)
{
    const prio *x = a, *y = b;
    return (x->tok > y->tok) - (x->tok < y->tok);
}

/* on the unit's owner, once its rows are recorded: the stored sample against them */
static int rec_end(void *vc, int l, int u)
{
    rec_ctx *c = vc;
    int d = c->d, f = c->f, n = c->n;
    char path[1024];
    mp_expert_stats st;
    mp_stats_path(path, sizeof path, c->stats, l, u);
    CHECK_OK(mp_stats_read(path, &st));
    int64_t t = n < SAMPLE_K ? n : SAMPLE_K;
    CHECK(st.count == n && st.n_sample == t);
    int sorted = 1;
    for (int64_t i = 0; i < n; i++)
        sorted &= i == 0 || c->tok[i] > c->tok[i - 1]; /* the hook's indices: increasing */
    for (int64_t i = 1; i < st.n_sample; i++)
        sorted &= st.sample_token[i] > st.sample_token[i - 1];
    CHECK(sorted);
    /* the expected choice: the t routed tokens of smallest XXH64(token; layer * 65537 + unit) */
    prio *p = malloc(sizeof(prio) * (size_t)(n + 1));
    for (int i = 0; i < n; i++) {
        int64_t g = c->tok[i]; /* little-endian machine: the int64's bytes as the format defines them */
        p[i] = (prio){XXH64(&g, sizeof g, (uint64_t)l * 65537 + (uint64_t)u), g, i};
    }
    qsort(p, (size_t)n, sizeof *p, cmp_prio);
    qsort(p, (size_t)t, sizeof *p, cmp_prio_tok);
    int same_tok = st.n_sample == t, same_x = 1, same_h = 1;
    for (int64_t i = 0; same_tok && i < t; i++) {
        same_tok &= st.sample_token[i] == p[i].tok;
        same_x &= !memcmp(st.X_sample + i * d, c->x + (size_t)p[i].row * d, sizeof(float) * (size_t)d);
        same_h &= !memcmp(st.H_sample + i * f, c->h + (size_t)p[i].row * f, sizeof(float) * (size_t)f);
    }
    CHECK(same_tok && same_x && same_h);
    /* h recomputed from the stored x with the checkpoint's weights */
    double err = INFINITY, scale = 0;
    if (st.n_sample > 0) {
        int64_t ns = st.n_sample;
        size_t fd = (size_t)f * (size_t)d;
        float *own = malloc(3 * fd * sizeof(float)), *y = malloc(sizeof(float) * (size_t)(ns * d)),
              *hm = malloc(sizeof(float) * (size_t)(ns * f));
        const float *wg = own, *wu = own + fd, *wd = own + 2 * fd;
        mp_layer_w lw = {0};
        if (u == c->w->cfg->n_experts || u == MP_UNIT_DENSE) {
            CHECK_OK(c->w->layer(c->w->ctx, l, &lw));
            wg = u == MP_UNIT_DENSE ? lw.mlp_gate : lw.sh_gate, wu = u == MP_UNIT_DENSE ? lw.mlp_up : lw.sh_up;
            wd = u == MP_UNIT_DENSE ? lw.mlp_down : lw.sh_down;
        } else
            for (int q = 0; q < 3; q++)
                CHECK_OK(c->w->expert(c->w->ctx, l, u, (mp_proj)q, own + (size_t)q * fd));
        CHECK_OK(mp_swiglu(wg, wu, wd, st.X_sample, (int)ns, d, f, y, hm));
        err = 0;
        for (int64_t i = 0; i < ns * f; i++) {
            err = fmax(err, fabs((double)hm[i] - st.H_sample[i]));
            scale = fmax(scale, fabs((double)st.H_sample[i]));
        }
        err = scale > 0 ? err / scale : err;
        mp_layer_free(&lw);
        free(own), free(y), free(hm);
    }
    CHECK(st.n_sample == 0 || err <= 1e-5);
    /* the Grams: sum over the recorded rows of x x^T and h h^T, a plain fp64 loop (the stored ones are fp32
     * chunks summed in fp64, src/gram.h: within 1e-6) */
    double gerr = 0;
    for (int which = 0; which < 2; which++) {
        int k = which ? f : d;
        const float *R = which ? c->h : c->x;
        const double *G = which ? st.G_mid : st.G_in;
        double *ref = calloc((size_t)k * (size_t)k, sizeof(double)), gmax = 0, emax = 0;
        for (int64_t r = 0; r < n; r++)
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++)
                    ref[(int64_t)i * k + j] += (double)R[r * k + i] * R[r * k + j];
        for (int64_t i = 0; i < (int64_t)k * k; i++)
            gmax = fmax(gmax, fabs(ref[i])), emax = fmax(emax, fabs(ref[i] - G[i]));
        gerr = fmax(gerr, gmax > 0 ? emax / gmax : emax);
        free(ref);
    }
    CHECK(gerr <= 1e-6);
    printf("  sample layer %d unit %d (rank %d): %d tokens routed, %lld kept = the smallest priorities %s, x and h "
           "= the expert's rows %s, h from x and the weights: rel err %.1e, Grams: rel err %.1e\n",
           l, u, mp_mpi_rank(), n, (long long)st.n_sample, same_tok ? "yes" : "NO", same_x && same_h ? "yes" : "NO",
           st.n_sample ? err : 0.0, gerr);
    c->units++;
    c->multi_chunk += n > SAMPLE_K && n > MP_CHUNK;
    free(p);
    mp_stats_free(&st);
    return 0;
}

static void balanced_owners(mp_model *m, const mp_weights *w, const mp_tokens *tok);

static void sample_selection(const char *root)
{
    char dir[600], ckpt[700], stats[800], path[1024];
    snprintf(dir, sizeof dir, "%s/sample_model", root);
    snprintf(ckpt, sizeof ckpt, "%s/sample_ckpt", root);
    snprintf(stats, sizeof stats, "%s/calib", ckpt);
    int rc = 0;
    if (mp_mpi_rank() == 0) {
        mp_synth_opts so;
        mp_synth_defaults(&so);
        so.arch = MP_ARCH_QWEN2_MOE, so.experts = 4, so.n_seq = 20, so.seq_len = 64, so.ffn = 32;
        so.layers = 3, so.dense_layers = 1; /* layer 0: a dense MLP */
        rc = mp_synth_write(&so, dir);
        CHECK_OK(rc);
    }
    CHECK_OK(mp_mpi_agree(rc));
    mp_model *m = NULL;
    mp_tokens tok = {0};
    snprintf(path, sizeof path, "%s/tokens.h5", dir);
    CHECK_OK(mp_model_open(dir, &m));
    CHECK_OK(mp_tokens_read(path, m ? m->cfg.vocab : 0, &tok));
    double nll = 0;
    int64_t npred = 0;
    int n_starved = 0;
    char set_k[64];
    snprintf(set_k, sizeof set_k, "calibration.sample_tokens=%d", SAMPLE_K);
    CHECK_OK(calibrate(m, &tok, ckpt, set_k, "calibrate", NULL, NULL, &nll, &npred, &n_starved));
    /* the same calibration with the MoE exchange in windows of 3 sequences (7 windows, units interleaved):
     * the same statistics, byte for byte, and the same NLL */
    char ckpt_w[800], set_kw[128], stats_w[900];
    snprintf(ckpt_w, sizeof ckpt_w, "%s_win", ckpt);
    snprintf(stats_w, sizeof stats_w, "%s/calib", ckpt_w);
    snprintf(set_kw, sizeof set_kw, "%s;calibration.chunk_tokens=%d", set_k, 3 * 64);
    double nll_w = 0;
    int64_t npred_w = 0;
    CHECK_OK(calibrate(m, &tok, ckpt_w, set_kw, "calibrate", NULL, NULL, &nll_w, &npred_w, &n_starved));
    CHECK(nll_w == nll && npred_w == npred);
    if (mp_mpi_rank() == 0 && m) {
        int same = 0, files = 0;
        for (int l = 0; l < m->cfg.n_layers; l++)
            for (int v = 0; mp_config_has_units(&m->cfg, l) && v <= (m->cfg.is_moe[l] ? m->cfg.n_experts : 0); v++) {
                int u = m->cfg.is_moe[l] ? v : MP_UNIT_DENSE; /* a dense MLP's file too */
                char pa[1024], pb[1024];
                char *ba = NULL, *bb = NULL;
                size_t na = 0, nb = 0;
                mp_stats_path(pa, sizeof pa, stats, l, u);
                mp_stats_path(pb, sizeof pb, stats_w, l, u);
                files++;
                if (mp_read_file(pa, &ba, &na) == 0 && mp_read_file(pb, &bb, &nb) == 0)
                    same += na == nb && !memcmp(ba, bb, na);
                free(ba), free(bb);
            }
        printf("windows of 3 sequences: %d of %d statistics files identical, nll %.17g vs %.17g\n", same, files,
               nll_w, nll);
        CHECK(files > 0 && same == files);
    }
    /* the forward pass once more, its hooks recording every routed row, each owner checking its units */
    mp_weights w;
    mp_model_weights(m, &w);
    rec_ctx rc_ = {.w = &w, .stats = stats};
    mp_unit_hooks hk = {&rc_, rec_begin, rec_chunk, rec_end};
    mp_epf *s = NULL;
    CHECK_OK(mp_epf_create(&w, &tok, NULL, NULL, &s));
    for (int l = 0; s && l < m->cfg.n_layers; l++)
        CHECK_OK(mp_epf_layer(s, l, &hk));
    mp_epf_free(s);
    int mine[2] = {rc_.units, rc_.multi_chunk}, all[2];
    MPI_Allreduce(mine, all, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    int moe = 0, dense = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        moe += m->cfg.is_moe[l], dense += mp_config_dense_mlp(&m->cfg, l);
    if (mp_mpi_rank() == 0)
        printf("sample (sample_tokens %d): %d units checked, %d of them with more tokens than the sample and than "
               "one chunk\n",
               SAMPLE_K, all[0], all[1]);
    CHECK(dense == 1 && all[0] == moe * (m->cfg.n_experts + 1) + dense && all[1] >= moe + dense);
    balanced_owners(m, &w, &tok);
    free(rc_.tok), free(rc_.x), free(rc_.h);
    mp_tokens_free(&tok);
    mp_model_close(m);
}

/* routed rows each rank ran per layer, units begun */
typedef struct {
    int64_t rows[8], unit_rows[8][16]; /* per layer; per layer and unit (slot 15: a dense MLP) */
    int units;
} load_ctx;

static int ld_begin(void *ctx, int l, int u, int d, int f)
{
    (void)l, (void)u, (void)d, (void)f;
    ((load_ctx *)ctx)->units++;
    return 0;
}

static int ld_chunk(void *ctx, int l, int u, const float *x, const float *h, const float *w, const int64_t *tok, int nb)
{
    (void)x, (void)h, (void)w, (void)tok;
    load_ctx *c = ctx;
    c->rows[l < 8 ? l : 7] += nb;
    c->unit_rows[l < 8 ? l : 7][u >= 0 && u < 15 ? u : 15] += nb;
    return 0;
}

static int ld_end(void *ctx, int l, int u)
{
    (void)ctx, (void)l, (void)u;
    return 0;
}

/* owners by load (mp_epf_balance) against plan.h's: the same hidden states bit for bit, every unit run once,
 * in no layer a busiest rank with more routed rows, and in every layer the busiest rank within LPT's bound,
 * 4/3 of the optimum (which is at least the busiest unit's rows and the average rank's) */
static void balanced_owners(mp_model *m, const mp_weights *w, const mp_tokens *tok)
{
    load_ctx lc[2];
    memset(lc, 0, sizeof lc);
    float *hs[2] = {NULL, NULL};
    int seq0 = 0, nseq = 0, L = m->cfg.n_layers < 8 ? m->cfg.n_layers : 8;
    for (int k = 0; k < 2; k++) {
        mp_unit_hooks hk = {&lc[k], ld_begin, ld_chunk, ld_end};
        mp_epf *s = NULL;
        CHECK_OK(mp_epf_create(w, tok, NULL, NULL, &s));
        if (s && k)
            CHECK_OK(mp_epf_balance(s, 1));
        for (int l = 0; s && l < m->cfg.n_layers; l++)
            CHECK_OK(mp_epf_layer(s, l, &hk));
        const float *h = s ? mp_epf_hidden(s, &seq0, &nseq) : NULL;
        size_t n = sizeof(float) * (size_t)nseq * (size_t)tok->seq_len * (size_t)m->cfg.hidden;
        hs[k] = malloc(n + 1);
        if (h && hs[k])
            memcpy(hs[k], h, n);
        mp_epf_free(s);
    }
    size_t n = (size_t)nseq * (size_t)tok->seq_len * (size_t)m->cfg.hidden;
    int same = hs[0] && hs[1] && !memcmp(hs[0], hs[1], sizeof(float) * n), all_same = 0;
    MPI_Allreduce(&same, &all_same, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    int64_t most[2][8], ur[8][16];
    int units[2], P = mp_mpi_size();
    for (int k = 0; k < 2; k++) {
        MPI_Allreduce(lc[k].rows, most[k], 8, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
        MPI_Allreduce(&lc[k].units, &units[k], 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    }
    MPI_Allreduce(lc[1].unit_rows, ur, 8 * 16, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    int not_worse = 1, within = 1;
    for (int l = 0; l < L; l++) {
        int64_t sum = 0, big = 0;
        for (int u = 0; u < 16; u++)
            sum += ur[l][u], big = ur[l][u] > big ? ur[l][u] : big;
        int64_t lb = (sum + P - 1) / P > big ? (sum + P - 1) / P : big;
        not_worse &= most[1][l] <= most[0][l];
        within &= 3 * most[1][l] <= 4 * lb;
    }
    if (mp_mpi_rank() == 0)
        printf("owners by load: hidden states %s; units %d / %d; busiest rank's routed rows per layer, plan.h's "
               "owners -> by load: %lld -> %lld, %lld -> %lld, %lld -> %lld\n",
               all_same ? "identical" : "DIFFERENT", units[1], units[0], (long long)most[0][0], (long long)most[1][0],
               (long long)most[0][1], (long long)most[1][1], (long long)most[0][2], (long long)most[1][2]);
    CHECK(all_same && units[0] == units[1] && not_worse && within);
    free(hs[0]), free(hs[1]);
}

/* pack -> unpack of an odd-sized symmetric matrix gives it back exactly */
static void pack_round_trip(void)
{
    int64_t n = 77, np = mp_gram_packed_size(n);
    double *G = malloc(sizeof(double) * (size_t)(n * n)), *H = malloc(sizeof(double) * (size_t)(n * n)),
           *P = malloc(sizeof(double) * (size_t)np);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = i; j < n; j++)
            G[i * n + j] = G[j * n + i] = sin((double)(i * 131 + j * 7)) * 1e3;
    mp_gram_pack(G, n, P);
    CHECK(np == 77 * 78 / 2 && P[0] == G[0] && P[n] == G[n + 1] && P[np - 1] == G[n * n - 1]);
    memset(H, 0xff, sizeof(double) * (size_t)(n * n));
    memcpy(H, P, sizeof(double) * (size_t)np);
    mp_gram_unpack(H, n);
    CHECK(!memcmp(G, H, sizeof(double) * (size_t)(n * n)));
    free(G), free(H), free(P);
}

int main(int argc, char **argv)
{
    CHECK_OK(mp_mpi_init(&argc, &argv));
    if (argc < 2) {
        fprintf(stderr, "usage: test_forward DIR\n");
        return 2;
    }
    char stats[600];
    snprintf(stats, sizeof stats, "%s/ckpt", argv[1]);
    if (mp_mpi_rank() == 0) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", argv[1], argv[1]);
        CHECK(system(cmd) == 0);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    static const struct {
        const char *name;
        double tol;
    } fx[] = {
        {"mixtral_f32", 1e-4},  {"mixtral_fused", 1e-4},  {"olmoe_f32", 1e-4},      {"olmoe_f32_sharded", 1e-4},
        {"qwen3_moe_f32", 1e-4}, {"mixtral_bf16", 5e-2},  {"qwen3_moe_bf16", 5e-2},  {"deepseek_v2_f32", 1e-5},
        {"deepseek_v2_yarn", 1e-5}, {"deepseek_v3_fp8", 1e-5}, {"phimoe_longrope", 1e-5},
        {"qwen3_moe_yarn", 1e-5},   {"mixtral_linear", 1e-5}, {"deepseek_moe", 1e-5},
    };
    for (size_t i = 0; i < sizeof fx / sizeof fx[0]; i++)
        run_fixture(fx[i].name, fx[i].tol, NULL);
    run_fixture("qwen2_moe_f32", 1e-4, stats);
    starved(argv[1]);
    tokens_too_long();
    sample_selection(argv[1]);
    if (mp_mpi_rank() == 0)
        pack_round_trip();
    int f = t_failures, all = 0;
    MPI_Allreduce(&f, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    mp_mpi_finalize();
    return all ? 1 : (mp_mpi_rank() == 0 ? t_done("forward") : 0);
}
