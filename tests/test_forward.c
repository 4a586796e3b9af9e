/* test_forward.c - run with mpiexec -n 1, 2, 4: the expert-parallel forward
 * pass against transformers on every fixture model it covers (per-layer
 * hidden states, router logits, final logits), the Gram matrices, counts and
 * routing-weight sums against the forward-hook reference of qwen2_moe_f32,
 * and a model whose router starves expert 3 (the job finishes, the expert
 * gets the prior, nothing is NaN). Statistics are written under DIR for the
 * cross-rank byte comparison (same_stats.sh).
 *   usage: test_forward DIR */
#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>

#include <hdf5.h>

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
static int calibrate(const mp_model *m, const mp_tokens *tok, const char *ckpt, const char *extra, mp_observer ob,
                     void *ctx, double *nll, int64_t *npred, int *starved)
{
    *starved = 0;
    if (!ckpt) {
        mp_weights w;
        mp_model_weights(m, &w);
        return mp_epf_run(&w, tok, ob, ctx, nll, npred);
    }
    char set_ck[700];
    snprintf(set_ck, sizeof set_ck, "checkpoint.dir=%s", ckpt);
    char *sets[] = {"model.path=x", "calibration.tokens=y", set_ck, (char *)extra};
    mp_job job;
    MP_CHECK(mp_job_load(NULL, sets, extra ? 4 : 3, &job));
    mp_run_opts o = {.until = extra ? NULL : "calibrate", .quiet = 1, .fresh = 1, .observe = ob, .observe_ctx = ctx};
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
    CHECK_OK(calibrate(m, &tok, ckpt, NULL, observe, &o, &nll, &npred, &starved));
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
    CHECK_OK(calibrate(m, &tok, ckpt, "delta.solver=lapack" /* byte-comparable */, NULL, NULL, &nll, &npred,
                       &n_starved));
    if (mp_mpi_rank() == 0) {
        CHECK(n_starved >= 2); /* expert 3 of both layers */
        CHECK(isfinite(nll));
        mp_expert_stats st;
        mp_stats_path(path, sizeof path, stats, 1, 3);
        CHECK_OK(mp_stats_read(path, &st));
        CHECK(st.count == 0 && st.prior_tokens == 16 && st.weight_sum == 0);
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
        {"qwen3_moe_f32", 1e-4}, {"mixtral_bf16", 5e-2},  {"qwen3_moe_bf16", 5e-2},
    };
    for (size_t i = 0; i < sizeof fx / sizeof fx[0]; i++)
        run_fixture(fx[i].name, fx[i].tol, NULL);
    run_fixture("qwen2_moe_f32", 1e-4, stats);
    starved(argv[1]);
    tokens_too_long();
    int f = t_failures, all = 0;
    MPI_Allreduce(&f, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    mp_mpi_finalize();
    return all ? 1 : (mp_mpi_rank() == 0 ? t_done("forward") : 0);
}
