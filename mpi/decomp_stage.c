/* decomp_stage.c - distributed D2 decomposition stage (see decomp_stage.h). */
#define _GNU_SOURCE
#include "decomp_stage.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blacs_svd.h"
#include "decompose.h"
#include "error.h"
#include "plan.h"
#include "fsutil.h"
#include "factors.h"
#include "layer_commit.h"
#include "runtime.h"
#include "stats.h"
#include "store.h"

static const char *PN[3] = {"gate", "up", "down"};

/* above this many bytes of working memory for one delta, `auto` factors it with ScaLAPACK on all ranks */
#define MP_LOCAL_SVD_MAX ((int64_t)16 << 30)

typedef struct {
    const mp_model *m;
    const mp_job *job;
    const char *stats_dir, *dir;
    int rank, size, E;
    double fraction; /* the fraction in force (job, solved from target_ratio, or the largest candidate) */
    uint64_t fp;     /* the stage fingerprint */
    float *base[3];  /* the current layer's base, on every rank */
    double *score;   /* its pruning scores [f] */
    int n_lambda_raised;
} dctx;

static void dims(const mp_config *c, int p, int64_t *rows, int64_t *cols)
{
    *rows = p == 2 ? c->hidden : c->moe_ffn;
    *cols = p == 2 ? c->moe_ffn : c->hidden;
}

/* the base of every projection of layer l on every rank: base[p] [m, n]; and the static pruning score
 * of each intermediate channel j of the base, score[j] = (sum_e h_sq_e[j]) * ||(W_b,down)[:, j]||^2 */
static int layer_base(const dctx *x, int l, float *base[3], double *score)
{
    const mp_config *c = &x->m->cfg;
    int E = x->E, rc = 0;
    int64_t d = c->hidden, f = c->moe_ffn, *count = calloc((size_t)E, sizeof(int64_t));
    double *xs = malloc(sizeof(double) * (size_t)(E * d)), *hs = malloc(sizeof(double) * (size_t)(E * f));
    if (!count || !xs || !hs)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    char path[4300];
    for (int e = 0; e < E && rc == 0; e++) {
        mp_stats_path(path, sizeof path, x->stats_dir, l, e);
        rc = mp_stats_read_summary(path, d, f, &count[e], xs + e * d, hs + e * f);
    }
    mp_weight_source src = strcmp(x->job->delta_weights, "frequency") ? MP_WEIGHTS_ACTIVATION : MP_WEIGHTS_FREQUENCY;
    int *cnt = malloc(sizeof(int) * (size_t)x->size * 2), *dsp = cnt ? cnt + x->size : NULL;
    for (int p = 0; p < 3; p++) {
        int64_t rows, cols, lo, hi;
        dims(c, p, &rows, &cols);
        mp_shard_range(rows, x->rank, x->size, &lo, &hi);
        const float *W[4096], *F[4096];
        const double *gd[4096];
        int fisher = !strcmp(x->job->delta_weights, "fisher");
        float *buf = rc == 0 ? malloc(sizeof(float) * (size_t)((hi - lo) * cols * E + 1)) : NULL;
        float *fb = rc == 0 && fisher ? malloc(sizeof(float) * (size_t)((hi - lo) * cols * E + 1)) : NULL;
        if (rc == 0 && (!buf || !cnt || (fisher && !fb)))
            rc = mp_errorf(MP_ENOMEM, "out of memory for the base of layer %d", l);
        for (int e = 0; e < E && rc == 0; e++) {
            mp_block_loc b;
            mp_expert_block(c, x->m->layout, l, e, (mp_proj)p, &b);
            const mp_tensor *t;
            rc = mp_ckpt_get(x->m->ck, b.name, &t);
            float *we = buf + (int64_t)e * (hi - lo) * cols;
            if (rc == 0)
                rc = mp_ckpt_read_f32(x->m->ck, t, b.first + lo * cols, (hi - lo) * cols, we);
            for (int64_t i = 0; rc == 0 && i < (hi - lo) * cols; i++)
                if (!isfinite(we[i]))
                    rc = mp_errorf(MP_ENUMERIC, "%s: tensor %s: non-finite value at element %lld (layer %d, expert %d, %s)",
                                   x->m->dir, b.name, (long long)(b.first + lo * cols + i), l, e, PN[p]);
            if (rc < 0)
                mp_error_prefix("layer %d base %s", l, PN[p]);
            W[e] = we;
            gd[e] = p == 2 ? hs + e * f : xs + e * d;
            if (fisher && rc == 0) {
                F[e] = fb + (int64_t)e * (hi - lo) * cols;
                rc = mp_fisher_read_rows(x->job->fisher_path, l, e, p, rows, cols, lo, hi, (float *)F[e]);
            }
        }
        if (rc == 0 && fisher)
            mp_base_rows_elem(E, hi - lo, cols, W, F, base[p] + lo * cols);
        else if (rc == 0)
            mp_base_rows(E, hi - lo, cols, W, count, gd, src, base[p] + lo * cols);
        free(buf);
        free(fb);
        int arc = mp_mpi_agree(rc);
        if (arc < 0) {
            free(cnt), free(count), free(xs), free(hs);
            return arc;
        }
        for (int r = 0; r < x->size; r++) {
            int64_t a, b;
            mp_shard_range(rows, r, x->size, &a, &b);
            cnt[r] = (int)((b - a) * cols), dsp[r] = (int)(a * cols);
        }
        MP_MPI(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base[p], cnt, dsp, MPI_FLOAT, MPI_COMM_WORLD));
    }
    for (int64_t j = 0; j < f; j++) {
        double sh = 0, col = 0;
        for (int e = 0; e < E; e++)
            sh += hs[e * f + j];
        for (int64_t r = 0; r < d; r++)
            col += (double)base[2][r * f + j] * base[2][r * f + j];
        score[j] = sh * col;
    }
    free(cnt), free(count), free(xs), free(hs);
    return 0;
}

/* Expert e of layer l: factors of its three deltas into one file. Local to the owner, or, with
 * `collective` (the ScaLAPACK solver), called by every rank: the owner prepares the matrices and writes
 * the file, all ranks factor. */
static int decompose_expert(const dctx *x, int l, int e, float *const base[3], int collective, int *lambda_raised,
                            uint64_t *hash)
{
    const mp_config *c = &x->m->cfg;
    const mp_job *j = x->job;
    int owner = mp_unit_owner(l, e, x->E, x->size) == x->rank, rc = 0;
    char path[4300];
    mp_expert_stats st = {0};
    mp_factor_file *f = NULL;
    if (owner) {
        mp_stats_path(path, sizeof path, x->stats_dir, l, e);
        rc = mp_stats_read(path, &st);
        if (rc == 0)
            rc = mp_factors_create(&f);
    }
    if (collective)
        rc = mp_mpi_agree(rc);
    for (int p = 0; p < 3 && rc == 0; p++) {
        int64_t rows, cols;
        dims(c, p, &rows, &cols);
        int64_t k = rows < cols ? rows : cols;
        int64_t r = j->delta_rank > 0 ? j->delta_rank : mp_rank_for_fraction(x->fraction, rows, cols);
        r = r > k ? k : r;
        float *w = NULL, *Uf = NULL, *Vf = NULL;
        double *D = NULL, *G = NULL, *S = NULL, *sig = NULL, *U = NULL, *V = NULL, lam = j->delta_lambda, energy = 0;
        if (owner) {
            w = malloc(sizeof(float) * (size_t)(rows * cols));
            D = malloc(sizeof(double) * (size_t)(rows * cols)), G = malloc(sizeof(double) * (size_t)(cols * cols));
            S = malloc(sizeof(double) * (size_t)(cols * cols)), sig = calloc((size_t)k, sizeof(double));
            U = malloc(sizeof(double) * (size_t)(rows * r + 1)), V = malloc(sizeof(double) * (size_t)(r * cols + 1));
            Uf = malloc(sizeof(float) * (size_t)(rows * r + 1)), Vf = malloc(sizeof(float) * (size_t)(r * cols + 1));
            if (!w || !D || !G || !S || !sig || !U || !V || !Uf || !Vf)
                rc = mp_errorf(MP_ENOMEM, "out of memory decomposing expert %d of layer %d", e, l);
            if (rc == 0)
                rc = mp_model_read_expert(x->m, l, e, (mp_proj)p, w);
            if (rc == 0)
                rc = mp_model_check_finite(x->m, l, e, (mp_proj)p, w);
            if (rc == 0) {
                for (int64_t i = 0; i < rows * cols; i++)
                    D[i] = (double)w[i] - (double)base[p][i];
                mp_stats_regularized(&st, p == 2, G);
            }
        }
        if (collective) {
            rc = mp_mpi_agree(rc);
            if (rc == 0)
                rc = mp_pwhitened_svd(mp_unit_owner(l, e, x->E, x->size), D, rows, cols, G, &lam, r, U, V, sig);
            for (int64_t i = 0; owner && rc == 0 && i < k; i++)
                energy += sig[i] * sig[i]; /* the whole spectrum holds all the energy */
        } else if (rc == 0) {
            rc = mp_whiten(G, cols, &lam, S);
            int randomized = !strcmp(j->delta_solver, "randomized") || (!strcmp(j->delta_solver, "auto") && r <= k / 8);
            if (rc == 0)
                rc = randomized ? mp_whitened_rsvd(D, rows, cols, S, r, 16, 3,
                                                   0x5eedULL + (uint64_t)(l * 4099 + e * 3 + p), U, V, sig)
                                : mp_whitened_svd(D, rows, cols, S, r, U, V, sig);
            if (rc == 0 && !randomized) /* ||Delta S||_F^2, the loss of rank 0: the whole thin spectrum's */
                for (int64_t i = 0; i < k; i++)
                    energy += sig[i] * sig[i];
            else if (rc == 0) { /* the randomized SVD has only the leading values */
                cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, (int)rows, (int)cols,
                            1.0, S, (int)cols, D, (int)cols);
                for (int64_t i = 0; i < rows * cols; i++)
                    energy += D[i] * D[i];
            }
        }
        if (rc < 0)
            mp_error_prefix("layer %d expert %d %s", l, e, PN[p]);
        if (rc == 0 && owner) {
            if (lam > j->delta_lambda) {
                (*lambda_raised)++;
                fprintf(stderr, "moepack: note: layer %d expert %d %s: Gram regularised with lambda %.1e (asked %.1e)\n",
                        l, e, PN[p], lam, j->delta_lambda);
            }
            for (int64_t i = 0; i < rows * r; i++)
                Uf[i] = (float)U[i];
            for (int64_t i = 0; i < r * cols; i++)
                Vf[i] = (float)V[i];
            double cr[16];
            for (int q = 0; q < j->n_candidates; q++)
                cr[q] = (double)mp_rank_for_fraction(j->candidates[q], rows, cols);
            mp_factor_block b = {rows, cols, r, k, Uf, Vf, sig, lam, energy, cr, j->n_candidates};
            rc = mp_factors_put(f, p, &b);
            if (rc < 0)
                mp_error_prefix("layer %d expert %d", l, e);
        }
        free(w), free(D), free(G), free(S), free(sig), free(U), free(V), free(Uf), free(Vf);
        if (collective) /* the owner's writing may have failed: every rank leaves the loop together */
            rc = mp_mpi_agree(rc);
    }
    mp_stats_free(&st);
    if (owner && rc == 0) {
        snprintf(path, sizeof path, "%s/layer%04d/expert%04d.h5", x->dir, l, e);
        rc = mp_factors_save(f, path);
        if (rc == 0)
            rc = mp_file_xxh64(path, hash);
    } else
        mp_factors_discard(f);
    return collective ? mp_mpi_agree(rc) : rc;
}

/* the units of a layer: expert e's factors, and the base as the last unit (E) */
static void unit_file_name(int u, int n, char *buf, size_t cap)
{
    if (u == n - 1)
        snprintf(buf, cap, "base.h5");
    else
        snprintf(buf, cap, "expert%04d.h5", u);
}

int mp_decomp_begin(mp_run *r, int s)
{
    const mp_config *c = &r->m->cfg;
    const mp_job *job = r->job;
    dctx *x = calloc(1, sizeof *x);
    r->state = x;
    if (!x)
        return mp_errorf(MP_ENOMEM, "out of memory");
    *x = (dctx){r->m, job, r->dir[MP_STAGE_CALIBRATE], r->dir[s], r->rank, r->size, c->n_experts,
                job->delta_fraction, r->fp[s], {NULL, NULL, NULL}, NULL, 0};
    if (job->delta_target_ratio > 0) {
        x->fraction = mp_fraction_for_ratio(c, job->delta_target_ratio);
        if (x->fraction < 0)
            return mp_errorf(MP_EUSAGE,
                             "delta.target_ratio %.3f cannot be reached: with dense bases the model compresses by "
                             "at most %.3f",
                             job->delta_target_ratio, mp_compression_ratio(c, 0.0));
    }
    for (int q = 0; q < job->n_candidates; q++)
        x->fraction = q == 0 || job->candidates[q] > x->fraction ? job->candidates[q] : x->fraction;
    x->score = malloc(sizeof(double) * (size_t)c->moe_ffn);
    for (int p = 0; p < 3; p++)
        x->base[p] = malloc(sizeof(float) * (size_t)c->hidden * (size_t)c->moe_ffn);
    if (!x->score || !x->base[0] || !x->base[1] || !x->base[2])
        return mp_errorf(MP_ENOMEM, "out of memory for the base");
    return 0;
}

int mp_decomp_layer(mp_run *r, int s, int l, int committed)
{
    dctx *x = r->state;
    const mp_config *c = &r->m->cfg;
    (void)s;
    if (committed)
        return 0;
    char ldir[4600];
    snprintf(ldir, sizeof ldir, "%s/layer%04d", x->dir, l);
    MP_CHECK(mp_mpi_agree(mp_mkdir_p(ldir)));
    MP_CHECK(layer_base(x, l, x->base, x->score));
    int E = x->E, raised = 0, rc = 0;
    uint64_t *h = calloc((size_t)(2 * (E + 1)), sizeof *h);
    if (!h)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    if (rc == 0 && x->rank == 0) { /* the base is the same on every rank: rank 0 writes it */
        int64_t rows[3], cols[3];
        for (int p = 0; p < 3; p++)
            dims(c, p, &rows[p], &cols[p]);
        char path[4700];
        snprintf(path, sizeof path, "%s/base.h5", ldir);
        rc = mp_base_save(path, x->base, rows, cols, x->score, c->moe_ffn);
        if (rc == 0)
            rc = mp_file_xxh64(path, &h[E]);
        h[2 * E + 1] = 1;
    }
    /* ScaLAPACK for every expert in turn (all ranks) when asked, or with auto when the layer has fewer
     * experts than ranks; otherwise each owner factors its experts alone */
    int64_t big = (int64_t)c->hidden * c->moe_ffn * 8 * 6; /* bytes one rank needs for one delta */
    int collective = !strcmp(x->job->delta_solver, "scalapack") ||
                     (!strcmp(x->job->delta_solver, "auto") && x->size > 1 && (E < x->size || big > MP_LOCAL_SVD_MAX));
    if (collective)
        rc = mp_mpi_agree(rc);
    for (int e = 0; e < E && rc == 0; e++) {
        int mine = mp_unit_owner(l, e, E, x->size) == x->rank;
        if (collective || mine)
            rc = decompose_expert(x, l, e, x->base, collective, &raised, &h[e]);
        if (mine) {
            h[E + 1 + e] = 1;
            mp_fault_point("decompose: unit committed");
        }
    }
    rc = mp_commit_layer_units(rc, x->dir, l, x->fp, h, E + 1, unit_file_name, 0, "decompose: before layer manifest");
    free(h);
    MP_CHECK(rc);
    MP_MPI(MPI_Allreduce(MPI_IN_PLACE, &raised, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD));
    x->n_lambda_raised += raised;
    return 0;
}

int mp_decomp_end(mp_run *r, int s, int ok)
{
    dctx *x = r->state;
    if (x && ok) {
        mp_summary *sum = &r->sum[s];
        mp_summary_set(sum, "fraction", x->fraction);
        mp_summary_set(sum, "compression", mp_compression_ratio(&r->m->cfg, x->fraction));
        mp_summary_set(sum, "lambda_raised", x->n_lambda_raised);
    }
    if (x) {
        for (int p = 0; p < 3; p++)
            free(x->base[p]);
        free(x->score);
        free(x);
    }
    r->state = NULL;
    return 0;
}

void mp_decomp_print(const mp_run *r, int s, FILE *out)
{
    const mp_config *m = &r->m->cfg;
    const mp_summary *sum = &r->sum[s];
    fprintf(out, "decompose: fraction %.4f (overall compression %.1f%%); %.0f Gram(s) needed a larger lambda\n",
            mp_summary_get(sum, "fraction"), 100 * mp_summary_get(sum, "compression"),
            mp_summary_get(sum, "lambda_raised"));
    fprintf(out, "   layer  rank  loss gate  loss up  loss down   (||(W - W_b - U V) X||^2 / ||(W - W_b) X||^2, "
                 "mean over experts)\n");
    for (int l = 0; l < m->n_layers; l++) {
        if (!m->is_moe[l])
            continue;
        double loss[3] = {0, 0, 0};
        int64_t rank = 0;
        for (int e = 0; e < m->n_experts; e++)
            for (int p = 0; p < 3; p++) {
                char path[4700];
                double energy, kept;
                snprintf(path, sizeof path, "%s/layer%04d/expert%04d.h5", r->dir[s], l, e);
                if (mp_factors_read_loss(path, p, &rank, &energy, &kept) < 0) {
                    fprintf(out, "   %5d  (unreadable: %s)\n", l, mp_error_message());
                    mp_error_clear();
                    e = m->n_experts, p = 3;
                    continue;
                }
                loss[p] += energy > 0 ? (energy - kept) / energy / m->n_experts : 0;
            }
        fprintf(out, "   %5d  %4lld  %8.2f%%  %6.2f%%  %8.2f%%\n", l, (long long)rank, 100 * loss[0], 100 * loss[1],
                100 * loss[2]);
    }
}
