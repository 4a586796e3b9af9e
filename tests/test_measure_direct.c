/* test_measure_direct.c CKPT_DELTA CKPT_DENSE MODEL [CKPT_MLP MODEL_MLP] - the measure stage's losses
 * equal the direct measurement on the calibration tokens.
 *
 * Both checkpoints were made by `moepack run --until measure` with calibration.sample_tokens larger than
 * any expert's token count and calibration.min_tokens = 0, so each unit's stored sample holds every token
 * routed to it (checked here) and its Grams are sum x x^T of those tokens (no prior), accumulated as fp32
 * chunks of <= 256 tokens summed in fp64 (src/gram.h: within 1e-6 of the fp64 sum, tests/test_gram.c). For a base,
 * a U factor, a V factor (CKPT_DELTA) and a whole expert's gate and down (CKPT_DENSE), the block is
 * quantized as the quantize stage would (mp_block_quantize), the tokens are run through the original
 * and the quantized block (fp64 products of the fp32 values), and sum_t ||y_t - yq_t||^2 is compared with
 * the table's loss_raw, tr(E H E^T): relative difference <= 1e-6 (the Grams' fp32
 * chunks), and with the formula itself on the exact fp64 Gram of the same tokens: <= 1e-9. The quantized codes must also be the
 * measured ones, or the losses would not agree. With CKPT_MLP (a model whose layer 0 is a dense MLP,
 * MODEL_MLP, same settings), the dense MLP's gate (w3g128) and down (w2g64) likewise, and the table's
 * normaliser, the MLP's output energy, against sum_t ||W_down h_t||^2 over its tokens. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blocks.h"
#include "job.h"
#include "model.h"
#include "stats.h"
#include "tables.h"
#include "testutil.h"

static double worst = 0;

/* sum over t of ||A (B x_t) - Aq (Bq x_t)||^2 with A [m, k] (NULL: identity, k = m), B [k, n] */
static double direct(const float *A, const float *Aq, int64_t m, const float *B, const float *Bq, int64_t k,
                     int64_t n, const float *X, int64_t t)
{
    double s = 0, *u = malloc(sizeof(double) * (size_t)k), *uq = malloc(sizeof(double) * (size_t)k);
    for (int64_t i = 0; i < t; i++) {
        const float *x = X + i * n;
        for (int64_t r = 0; r < k; r++) {
            double a = 0, b = 0;
            for (int64_t c = 0; c < n; c++)
                a += (double)B[r * n + c] * x[c], b += (double)Bq[r * n + c] * x[c];
            u[r] = a, uq[r] = b;
        }
        if (!A) {
            for (int64_t r = 0; r < k; r++)
                s += (u[r] - uq[r]) * (u[r] - uq[r]);
            continue;
        }
        for (int64_t o = 0; o < m; o++) {
            double a = 0, b = 0;
            for (int64_t r = 0; r < k; r++)
                a += (double)A[o * k + r] * u[r], b += (double)Aq[o * k + r] * uq[r];
            s += (a - b) * (a - b);
        }
    }
    free(u), free(uq);
    return s;
}

/* the table's loss_raw of (rank, part, format name) in projection p of a unit's table */
static double table_loss(const char *dir, int l, int unit, int E, int p, double rank, int part, const char *fmt)
{
    char path[4200];
    mp_unit_table t;
    mp_table_path(path, sizeof path, dir, l, unit, E);
    if (mp_table_read(path, &t) < 0)
        return NAN;
    double v = NAN;
    for (int i = 0; i < t.p[p].rows; i++) {
        const double *r = t.p[p].t + MP_TCOLS * i;
        if (r[MP_TCOL_RANK] == rank && r[MP_TCOL_PART] == part && r[MP_TCOL_FMT] >= 0 &&
            !strcmp(t.fmt[(int)r[MP_TCOL_FMT]]->name, fmt))
            v = r[MP_TCOL_LOSS_RAW];
    }
    mp_table_free(&t);
    return v;
}

static double worst_formula = 0;

/* The loss formula itself, on the exact fp64 Gram G = sum_t x_t x_t^T of the same tokens: tr(E G E^T) for
 * B against Bq (A NULL); with A: U's loss tr(E_U (V G V^T) E_U^T) when B == Bq, V's tr(U^T U E_V G E_V^T)
 * when A == Aq (mp_loss_gram, mp_factor_gram: what the measure stage computes). */
static double formula(const float *A, const float *Aq, int64_t m, const float *B, const float *Bq, int64_t k,
                      int64_t n, const float *X, int64_t t)
{
    double *G = calloc((size_t)(n * n), sizeof(double)), *H = NULL, *O = NULL, loss = NAN;
    for (int64_t i = 0; i < t; i++)
        for (int64_t a = 0; a < n; a++)
            for (int64_t b = 0; b < n; b++)
                G[a * n + b] += (double)X[i * n + a] * X[i * n + b];
    if (!A)
        CHECK_OK(mp_loss_gram(B, Bq, k, n, G, NULL, "formula", &loss));
    else if (B == Bq) { /* U */
        H = malloc(sizeof(double) * (size_t)(k * k));
        CHECK_OK(mp_factor_gram(B, k, n, G, H));
        CHECK_OK(mp_loss_gram(A, Aq, m, k, H, NULL, "formula U", &loss));
    } else { /* V, seen through U: O = U^T U */
        O = calloc((size_t)(k * k), sizeof(double));
        for (int64_t o = 0; o < m; o++)
            for (int64_t a = 0; a < k; a++)
                for (int64_t b = 0; b < k; b++)
                    O[a * k + b] += (double)A[o * k + a] * A[o * k + b];
        CHECK_OK(mp_loss_gram(B, Bq, k, n, G, O, "formula V", &loss));
    }
    free(G), free(H), free(O);
    return loss;
}

/* direct: the measurement; f: the formula on the exact Gram (1e-9); tab: the table's loss (1e-6: its Grams
 * are fp32 chunks) */
static void compare3(const char *what, double d, double f, double tab)
{
    double rel = fabs(d - tab) / fmax(fabs(tab), 1e-300), rf = fabs(d - f) / fmax(fabs(f), 1e-300);
    worst = rel > worst ? rel : worst;
    worst_formula = rf > worst_formula ? rf : worst_formula;
    printf("  %-42s direct %.15e  formula rel %.1e  table %.15e  rel %.1e\n", what, d, rf, tab, rel);
    CHECK(isfinite(tab) && d > 0 && rel <= 1e-6);
    CHECK(isfinite(f) && rf <= 1e-9);
}

static void compare(const char *what, double d, double tab) { compare3(what, d, d, tab); }

static void load_job(const char *model, mp_job *job, const char *method)
{
    char a[4200], b[4200], c[64];
    snprintf(a, sizeof a, "model.path=%s", model);
    snprintf(b, sizeof b, "calibration.tokens=%s/tokens.h5", model);
    snprintf(c, sizeof c, "quant.method=%s", method);
    char *sets[3] = {a, b, c};
    CHECK_OK(mp_job_load(NULL, sets, 3, job));
}

/* the dense MLP of layer 0 of model md (checkpoint ck, decomposition off): gate and down, and the normaliser */
static void dense_mlp(const char *ck, const char *md, const mp_qformat *w3, const mp_qformat *w2)
{
    mp_model *m = NULL;
    CHECK_OK(mp_model_open(md, &m));
    if (!m)
        return;
    CHECK(mp_config_dense_mlp(&m->cfg, 0));
    mp_job job;
    load_job(md, &job, "gptq");
    job.delta_enabled = 0;
    char calib[4200], meas[4200];
    snprintf(calib, sizeof calib, "%s/calib", ck), snprintf(meas, sizeof meas, "%s/measure", ck);
    mp_blocks_ctx cx = {m, &job, calib, NULL};
    mp_block_src b[3];
    CHECK_OK(mp_blocks_load(&cx, 0, MP_UNIT_DENSE, b));
    CHECK(b[0].kind == MP_BK_DENSE && b[0].t > 0 && b[2].m == m->cfg.hidden && b[2].n == m->cfg.dense_ffn);
    mp_expert_stats st;
    char path[4300];
    mp_stats_path(path, sizeof path, calib, 0, MP_UNIT_DENSE);
    CHECK_OK(mp_stats_read(path, &st));
    CHECK(st.n_sample == st.count && st.count > 0 && st.prior_tokens == 0); /* every token, no prior */
    mp_stats_free(&st);
    for (int p = 0; p < 3; p += 2) {
        const mp_qformat *f = p == 0 ? w3 : w2;
        mp_choice c = {MP_BK_DENSE, MP_UNIT_DENSE, p, 0, f, NULL, 0, 0, 0, 0};
        mp_qtensor *q0 = NULL, *q1 = NULL;
        CHECK_OK(mp_block_quantize(&b[p], &job, &c, &q0, &q1));
        float *Q = malloc(sizeof(float) * (size_t)(b[p].m * b[p].n));
        mp_qtensor_dequant(q0, Q);
        char what[96];
        snprintf(what, sizeof what, "dense MLP %s %s (gptq)", p ? "down" : "gate", f->name);
        compare3(what, direct(NULL, NULL, 0, b[p].W, Q, b[p].m, b[p].n, b[p].X, b[p].t),
                 formula(NULL, NULL, 0, b[p].W, Q, b[p].m, b[p].n, b[p].X, b[p].t),
                 table_loss(meas, 0, MP_UNIT_DENSE, m->cfg.n_experts, p, -1, 0, f->name));
        free(Q), mp_qtensor_destroy(q0);
    }
    /* the normaliser: sum_t ||W_down h_t||^2 (W_down against a zero matrix) */
    float *zero = calloc((size_t)(b[2].m * b[2].n), sizeof(float));
    mp_unit_table t;
    mp_table_path(path, sizeof path, meas, 0, MP_UNIT_DENSE, m->cfg.n_experts);
    CHECK_OK(mp_table_read(path, &t));
    compare("dense MLP output energy (the normaliser)",
            direct(NULL, NULL, 0, b[2].W, zero, b[2].m, b[2].n, b[2].X, b[2].t), t.energy);
    mp_table_free(&t);
    free(zero);
    mp_blocks_free(b);
    mp_model_close(m);
}

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 6) {
        fprintf(stderr, "usage: test_measure_direct CKPT_DELTA CKPT_DENSE MODEL [CKPT_MLP MODEL_MLP]\n");
        return 2;
    }
    const char *ckd = argv[1], *ckf = argv[2], *model = argv[3];
    mp_model *m = NULL;
    CHECK_OK(mp_model_open(model, &m));
    if (!m)
        return t_done("test_measure_direct");
    int E = m->cfg.n_experts, l = 0;
    mp_job job;
    load_job(model, &job, "gptq");
    char calib[4200], decomp[4200], meas[4200];
    snprintf(calib, sizeof calib, "%s/calib", ckd), snprintf(decomp, sizeof decomp, "%s/decomp", ckd);
    snprintf(meas, sizeof meas, "%s/measure", ckd);
    mp_blocks_ctx cx = {m, &job, calib, decomp};
    const mp_qformat *w3, *w2, *w4;
    CHECK_OK(mp_qformat_find("w3g128", &w3));
    CHECK_OK(mp_qformat_find("w2g64", &w2));
    CHECK_OK(mp_qformat_find("w4", &w4));

    /* every unit's sample holds all of its tokens */
    for (int e = 0; e < E; e++) {
        mp_expert_stats st;
        char path[4300];
        mp_stats_path(path, sizeof path, calib, l, e);
        CHECK_OK(mp_stats_read(path, &st));
        CHECK(st.n_sample == st.count && st.count > 0 && st.prior_tokens == 0);
        mp_stats_free(&st);
    }

    /* the base (gate) under w3g128, on the tokens of every expert */
    mp_block_src b[3];
    CHECK_OK(mp_blocks_load(&cx, l, -1, b));
    mp_qtensor *q0 = NULL, *q1 = NULL;
    mp_choice c = {MP_BK_BASE, -1, 0, 0, w3, NULL, 0, 0, 0, 0};
    CHECK_OK(mp_block_quantize(&b[0], &job, &c, &q0, &q1));
    float *Q = malloc(sizeof(float) * (size_t)(b[0].m * b[0].n));
    mp_qtensor_dequant(q0, Q);
    compare3("base gate w3g128", direct(NULL, NULL, 0, b[0].W, Q, b[0].m, b[0].n, b[0].X, b[0].t),
             formula(NULL, NULL, 0, b[0].W, Q, b[0].m, b[0].n, b[0].X, b[0].t),
             table_loss(meas, l, -1, E, 0, -1, 0, "w3g128"));
    free(Q), mp_qtensor_destroy(q0);
    mp_blocks_free(b);

    /* expert 1's up delta at its stored rank: U under w2g64 (through V), V under w4 (through U) */
    CHECK_OK(mp_blocks_load(&cx, l, 1, b));
    mp_block_src *s = &b[1];
    int64_t r = s->rmax, mm = s->m, n = s->n;
    mp_choice cu = {MP_BK_DELTA, 1, 1, r, w2, w4, 0, 0, 0, 0};
    CHECK_OK(mp_block_quantize(s, &job, &cu, &q0, &q1));
    float *Uq = malloc(sizeof(float) * (size_t)(mm * r)), *Vq = malloc(sizeof(float) * (size_t)(r * n));
    float *U = NULL, *V = NULL;
    CHECK_OK(mp_block_delta_at(s, r, &U, &V, NULL, NULL, NULL));
    mp_qtensor_dequant(q0, Uq);
    mp_qtensor_dequant(q1, Vq);
    compare3("expert 1 up U (w2g64, seen through V)", direct(U, Uq, mm, V, V, r, n, s->X, s->t),
             formula(U, Uq, mm, V, V, r, n, s->X, s->t), table_loss(meas, l, 1, E, 1, (double)r, 0, "w2g64"));
    compare3("expert 1 up V (w4, seen through U)", direct(U, U, mm, V, Vq, r, n, s->X, s->t),
             formula(U, U, mm, V, Vq, r, n, s->X, s->t), table_loss(meas, l, 1, E, 1, (double)r, 1, "w4"));
    free(U), free(V), free(Uq), free(Vq), mp_qtensor_destroy(q0), mp_qtensor_destroy(q1);
    mp_blocks_free(b);

    /* a whole expert with the decomposition off: gate on x (w3g128), down on h (w2g64), GPTQ and RTN */
    const char *methods[2] = {"gptq", "rtn"};
    for (int k = 0; k < 2; k++) {
        mp_job jd;
        load_job(model, &jd, methods[k]);
        jd.delta_enabled = 0;
        char c2[4200], m2[4200];
        snprintf(c2, sizeof c2, "%s%s/calib", ckf, k ? "-rtn" : ""), snprintf(m2, sizeof m2, "%s%s/measure", ckf, k ? "-rtn" : "");
        mp_blocks_ctx cd = {m, &jd, c2, NULL};
        CHECK_OK(mp_blocks_load(&cd, l, 2, b));
        for (int p = 0; p < 3; p += 2) {
            const mp_qformat *f = p == 0 ? w3 : w2;
            mp_choice ce = {MP_BK_EXPERT, 2, p, 0, f, NULL, 0, 0, 0, 0};
            CHECK_OK(mp_block_quantize(&b[p], &jd, &ce, &q0, &q1));
            Q = malloc(sizeof(float) * (size_t)(b[p].m * b[p].n));
            mp_qtensor_dequant(q0, Q);
            char what[96];
            snprintf(what, sizeof what, "expert 2 %s %s (%s)", p ? "down" : "gate", f->name, methods[k]);
            compare3(what, direct(NULL, NULL, 0, b[p].W, Q, b[p].m, b[p].n, b[p].X, b[p].t),
                     formula(NULL, NULL, 0, b[p].W, Q, b[p].m, b[p].n, b[p].X, b[p].t),
                     table_loss(m2, l, 2, E, p, -1, 0, f->name));
            free(Q), mp_qtensor_destroy(q0);
        }
        mp_blocks_free(b);
    }
    if (argc == 6)
        dense_mlp(argv[4], argv[5], w3, w2);
    printf("worst relative difference: direct vs formula on the exact fp64 Gram %.2e (tolerance 1e-9), direct vs "
           "table %.2e (tolerance 1e-6)\n", worst_formula, worst);
    mp_model_close(m);
    return t_done("test_measure_direct");
}
