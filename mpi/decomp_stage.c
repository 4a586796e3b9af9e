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
#include "expert_scan.h"
#include "fsutil.h"
#include "h5util.h"
#include "layer_commit.h"
#include "runtime.h"
#include "stats.h"
#include "store.h"

static const char *PN[3] = {"gate", "up", "down"};

/* above this many bytes of working memory for one delta, `auto` factors it with ScaLAPACK on all ranks */
#define MP_LOCAL_SVD_MAX ((int64_t)16 << 30)

static int put_f32(hid_t f, const char *name, const float *v, hsize_t a, hsize_t b)
{
    return mp_h5_put(f, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, v, b ? 2 : 1, a, b);
}

static int put_f64(hid_t f, const char *name, const double *v, hsize_t n)
{
    return mp_h5_put(f, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, v, 1, n, 0);
}

static int put_attr(hid_t f, const char *name, int is_int, double v)
{
    int64_t iv = (int64_t)v;
    return is_int ? mp_h5_put_attr(f, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &iv)
                  : mp_h5_put_attr(f, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}

typedef struct {
    const mp_model *m;
    const mp_job *job;
    const char *stats_dir, *dir;
    int rank, size, E;
    double fraction; /* the fraction in force (job, solved from target_ratio, or the largest candidate) */
} dctx;

static void dims(const mp_config *c, int p, int64_t *rows, int64_t *cols)
{
    *rows = p == 2 ? c->hidden : c->moe_ffn;
    *cols = p == 2 ? c->moe_ffn : c->hidden;
}

/* rows [lo, hi) of the Fisher weights of expert e, projection p, layer l: dataset layerL/expertE/{gate,up,down},
 * float32 [m, n] */
static int read_fisher_rows(const char *path, int l, int e, int p, int64_t rows, int64_t cols, int64_t lo, int64_t hi,
                            float *out)
{
    char name[96];
    snprintf(name, sizeof name, "layer%d/expert%d/%s", l, e, PN[p]);
    mp_h5_init();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return mp_errorf(MP_ENOENT, "%s: cannot open the Fisher file", path);
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    int rc = 0;
    if (ds < 0)
        rc = mp_errorf(MP_ENOENT, "%s: dataset '%s' is missing", path, name);
    hid_t sp = ds >= 0 ? H5Dget_space(ds) : -1;
    hsize_t dm[2] = {0, 0};
    if (rc == 0 && (H5Sget_simple_extent_ndims(sp) != 2 || H5Sget_simple_extent_dims(sp, dm, NULL) < 0 ||
                    dm[0] != (hsize_t)rows || dm[1] != (hsize_t)cols))
        rc = mp_errorf(MP_EFORMAT, "%s: dataset '%s' must be [%lld, %lld]", path, name, (long long)rows,
                       (long long)cols);
    if (rc == 0 && hi > lo) {
        hsize_t start[2] = {(hsize_t)lo, 0}, count[2] = {(hsize_t)(hi - lo), (hsize_t)cols};
        H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL);
        hid_t ms = H5Screate_simple(2, count, NULL);
        if (H5Dread(ds, H5T_NATIVE_FLOAT, ms, sp, H5P_DEFAULT, out) < 0)
            rc = mp_errorf(MP_EFORMAT, "%s: cannot read dataset '%s' as float", path, name);
        H5Sclose(ms);
    }
    if (sp >= 0)
        H5Sclose(sp);
    if (ds >= 0)
        H5Dclose(ds);
    H5Fclose(f);
    return rc;
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
            if (rc == 0)
                rc = mp_ckpt_read_f32(x->m->ck, t, b.first + lo * cols, (hi - lo) * cols, buf + (int64_t)e * (hi - lo) * cols);
            W[e] = buf + (int64_t)e * (hi - lo) * cols;
            gd[e] = p == 2 ? hs + e * f : xs + e * d;
            if (fisher && rc == 0) {
                F[e] = fb + (int64_t)e * (hi - lo) * cols;
                rc = read_fisher_rows(x->job->fisher_path, l, e, p, rows, cols, lo, hi, (float *)F[e]);
            }
        }
        if (rc == 0 && fisher)
            mp_base_rows_elem(E, hi - lo, cols, W, F, base[p] + lo * cols);
        else if (rc == 0)
            mp_base_rows(E, hi - lo, cols, W, count, gd, src, base[p] + lo * cols);
        free(buf);
        free(fb);
        MP_CHECK(mp_mpi_agree(rc));
        for (int r = 0; r < x->size; r++) {
            int64_t a, b;
            mp_shard_range(rows, r, x->size, &a, &b);
            cnt[r] = (int)((b - a) * cols), dsp[r] = (int)(a * cols);
        }
        int mrc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base[p], cnt, dsp, MPI_FLOAT, MPI_COMM_WORLD);
        if (mrc != MPI_SUCCESS)
            mp_mpi_fail(mp_mpi_check(mrc, "MPI_Allgatherv (base)"));
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
    int owner = mp_calib_owner(l, e, x->E, x->size) == x->rank, rc = 0;
    char path[4300];
    mp_expert_stats st = {0};
    hid_t f = -1;
    if (owner) {
        mp_stats_path(path, sizeof path, x->stats_dir, l, e);
        rc = mp_stats_read(path, &st);
        if (rc == 0 && (f = mp_h5_create_mem()) < 0)
            rc = MP_EINTERNAL;
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
                rc = mp_pwhitened_svd(mp_calib_owner(l, e, x->E, x->size), D, rows, cols, G, &lam, r, U, V, sig);
            for (int64_t i = 0; owner && rc == 0 && i < k; i++)
                energy += sig[i] * sig[i]; /* the whole spectrum holds all the energy */
        } else if (rc == 0) {
            rc = mp_whiten(G, cols, &lam, S);
            int randomized = !strcmp(j->delta_solver, "randomized") || (!strcmp(j->delta_solver, "auto") && r <= k / 8);
            if (rc == 0)
                rc = randomized ? mp_whitened_rsvd(D, rows, cols, S, r, 16, 3,
                                                   0x5eedULL + (uint64_t)(l * 4099 + e * 3 + p), U, V, sig)
                                : mp_whitened_svd(D, rows, cols, S, r, U, V, sig);
            if (rc == 0) { /* ||Delta S||_F^2: the loss of rank 0 */
                cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, (int)rows, (int)cols,
                            1.0, S, (int)cols, D, (int)cols);
                for (int64_t i = 0; i < rows * cols; i++)
                    energy += D[i] * D[i];
            }
        }
        if (rc < 0)
            mp_errorf(rc, "layer %d expert %d %s: %s", l, e, PN[p], mp_error_message());
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
            char nm[32];
            int bad = 0;
            snprintf(nm, sizeof nm, "U_%s", PN[p]);
            bad |= put_f32(f, nm, Uf, (hsize_t)rows, (hsize_t)r);
            snprintf(nm, sizeof nm, "V_%s", PN[p]);
            bad |= put_f32(f, nm, Vf, (hsize_t)r, (hsize_t)cols);
            snprintf(nm, sizeof nm, "sigma_%s", PN[p]);
            bad |= put_f64(f, nm, sig, (hsize_t)k);
            snprintf(nm, sizeof nm, "rank_%s", PN[p]);
            bad |= put_attr(f, nm, 1, (double)r);
            snprintf(nm, sizeof nm, "lambda_%s", PN[p]);
            bad |= put_attr(f, nm, 0, lam);
            snprintf(nm, sizeof nm, "energy_%s", PN[p]);
            bad |= put_attr(f, nm, 0, energy);
            if (j->n_candidates > 0) { /* nested factors: the first r_c columns/rows are the rank-r_c ones */
                double cr[16];
                for (int q = 0; q < j->n_candidates; q++)
                    cr[q] = (double)mp_rank_for_fraction(j->candidates[q], rows, cols);
                snprintf(nm, sizeof nm, "candidate_ranks_%s", PN[p]);
                bad |= put_f64(f, nm, cr, (hsize_t)j->n_candidates);
            }
            if (bad)
                rc = mp_errorf(MP_EINTERNAL, "HDF5 could not build the factors of layer %d expert %d", l, e);
        }
        free(w), free(D), free(G), free(S), free(sig), free(U), free(V), free(Uf), free(Vf);
        if (collective) /* the owner's writing may have failed: every rank leaves the loop together */
            rc = mp_mpi_agree(rc);
    }
    mp_stats_free(&st);
    if (owner && rc == 0) {
        snprintf(path, sizeof path, "%s/layer%04d/expert%04d.h5", x->dir, l, e);
        rc = mp_h5_save(f, path);
        if (rc == 0)
            rc = mp_file_xxh64(path, hash);
    } else if (f >= 0)
        H5Fclose(f);
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

int mp_decompose(const mp_model *m, const mp_job *job, const char *stats_dir, const char *dir, int resume,
                 const mp_calib_opts *progress, mp_decomp_result *res)
{
    const mp_config *c = &m->cfg;
    dctx x = {m, job, stats_dir, dir, mp_mpi_rank(), mp_mpi_size(), c->n_experts, job->delta_fraction};
    memset(res, 0, sizeof *res);
    if (job->delta_target_ratio > 0) {
        x.fraction = mp_fraction_for_ratio(c, job->delta_target_ratio);
        if (x.fraction < 0)
            return mp_errorf(MP_EUSAGE,
                             "delta.target_ratio %.3f cannot be reached: with dense bases the model compresses by "
                             "at most %.3f",
                             job->delta_target_ratio, mp_compression_ratio(c, 0.0));
    }
    for (int q = 0; q < job->n_candidates; q++)
        x.fraction = q == 0 || job->candidates[q] > x.fraction ? job->candidates[q] : x.fraction;
    res->fraction = x.fraction;
    double t0 = MPI_Wtime();
    int nmoe = mp_config_n_moe_layers(c), done = 0, rc = 0;
    float *base[3] = {0};
    double *score = malloc(sizeof(double) * (size_t)c->moe_ffn);
    if (!score)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int p = 0; p < 3; p++) {
        base[p] = malloc(sizeof(float) * (size_t)c->hidden * (size_t)c->moe_ffn);
        if (!base[p])
            rc = mp_errorf(MP_ENOMEM, "out of memory for the base");
    }
    MP_CHECK_GOTO(mp_mpi_agree(rc), out);
    for (int l = 0; l < c->n_layers; l++) {
        if (!c->is_moe[l])
            continue;
        int st[2] = {0, 0};
        char why[600] = "", ldir[4200];
        if (resume && x.rank == 0)
            rc = mp_store_layer_ok(dir, l, &st[0], &st[1], why, sizeof why);
        MP_CHECK_GOTO(mp_mpi_agree(rc), out);
        MPI_Bcast(st, 2, MPI_INT, 0, MPI_COMM_WORLD);
        if (x.rank == 0 && why[0])
            fprintf(stderr, "moepack: note: damaged unit %s; recomputing layer %d\n", why, l);
        if (st[0]) {
            res->n_resumed++;
        } else {
            snprintf(ldir, sizeof ldir, "%s/layer%04d", dir, l);
            rc = mp_mkdir_p(ldir);
            MP_CHECK_GOTO(mp_mpi_agree(rc), out);
            MP_CHECK_GOTO(layer_base(&x, l, base, score), out);
            int E = x.E, raised = 0;
            uint64_t *h = calloc((size_t)(2 * (E + 1)), sizeof *h);
            rc = h ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
            if (rc == 0 && x.rank == 0) { /* the base is the same on every rank: rank 0 writes it */
                hid_t f = mp_h5_create_mem();
                int64_t rows, cols;
                int bad = f < 0;
                for (int p = 0; p < 3 && !bad; p++) {
                    char nm[32];
                    dims(c, p, &rows, &cols);
                    snprintf(nm, sizeof nm, "base_%s", PN[p]);
                    bad |= put_f32(f, nm, base[p], (hsize_t)rows, (hsize_t)cols);
                }
                bad |= f >= 0 && put_f64(f, "prune_score", score, (hsize_t)c->moe_ffn);
                char path[4300];
                snprintf(path, sizeof path, "%s/base.h5", ldir);
                rc = bad ? (f >= 0 ? (H5Fclose(f), 0) : 0, mp_errorf(MP_EINTERNAL, "HDF5 could not build the base"))
                         : mp_h5_save(f, path);
                if (rc == 0)
                    rc = mp_file_xxh64(path, &h[E]);
                h[2 * E + 1] = 1;
            }
            /* ScaLAPACK for every expert in turn (all ranks) when asked, or with auto when the layer has
             * fewer experts than ranks; otherwise each owner factors its experts alone */
            int64_t big = (int64_t)c->hidden * c->moe_ffn * 8 * 6; /* bytes one rank needs for one delta */
            int collective = !strcmp(job->delta_solver, "scalapack") ||
                             (!strcmp(job->delta_solver, "auto") && x.size > 1 && (E < x.size || big > MP_LOCAL_SVD_MAX));
            if (collective)
                rc = mp_mpi_agree(rc);
            for (int e = 0; e < E && rc == 0; e++) {
                int mine = mp_calib_owner(l, e, E, x.size) == x.rank;
                if (collective || mine)
                    rc = decompose_expert(&x, l, e, base, collective, &raised, &h[e]);
                if (mine) {
                    h[E + 1 + e] = 1;
                    mp_fault_point("decompose: unit committed");
                }
            }
            rc = mp_commit_layer_units(rc, dir, l, h, E + 1, unit_file_name, 0, "decompose: before layer manifest");
            if (rc == 0) {
                MPI_Allreduce(MPI_IN_PLACE, &raised, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
                res->n_lambda_raised += raised;
            }
            free(h);
            MP_CHECK_GOTO(rc, out);
            mp_note_progress();
        }
        done++;
        res->n_layers_done++;
        double el = MPI_Wtime() - t0;
        if (x.rank == 0)
            mp_progress(progress, "decompose", done, nmoe, el, el / done * (nmoe - done));
        mp_fault_point("decompose: layer finished");
        char where[64];
        snprintf(where, sizeof where, "in decompose after layer %d", l);
        MP_CHECK_GOTO(mp_should_stop(el / done, where), out);
    }
    res->seconds = MPI_Wtime() - t0;
out:
    for (int p = 0; p < 3; p++)
        free(base[p]);
    free(score);
    return rc;
}
