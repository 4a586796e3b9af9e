/* test_d2.c - run with mpiexec -n 1, 2, 4: calibration + D2 decomposition of a
 * `moepack synth` model with planted structure (W_e = B + P_e Q_e + noise,
 * rank 4 per expert, 4 experts): the whitened spectrum of every delta drops
 * to the noise level after the planted directions (the deltas W_e - W_b hold
 * the expert's own part and a weighted share of the others': rank <= 4 x 4),
 * the truncation loss there is what the planted noise predicts, and the
 * outputs under DIR are compared byte for byte across rank counts by
 * same_stats.sh.   usage: test_d2 DIR */
#include <hdf5.h>

#include "pipeline.h"
#include "runtime.h"
#include "synth.h"
#include "testutil.h"

/* the pipeline on m, t with checkpoint.dir = ckpt and the given keys */
static int run_job(const mp_model *m, const mp_tokens *t, const char *ckpt, char *const *keys, int nkeys, mp_run *r)
{
    char set_ck[700], *sets[8] = {"model.path=x", "calibration.tokens=y", set_ck};
    snprintf(set_ck, sizeof set_ck, "checkpoint.dir=%s", ckpt);
    for (int i = 0; i < nkeys; i++)
        sets[3 + i] = keys[i];
    mp_job job;
    MP_CHECK(mp_job_load(NULL, sets, 3 + nkeys, &job));
    mp_run_opts o = {.quiet = 1};
    return mp_pipeline_run(&job, m, t, &o, r);
}

static double attr(hid_t f, const char *name)
{
    double v = NAN;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a >= 0)
        H5Aread(a, H5T_NATIVE_DOUBLE, &v), H5Aclose(a);
    return v;
}

int main(int argc, char **argv)
{
    CHECK_OK(mp_mpi_init(&argc, &argv));
    if (argc < 2)
        return 2;
    char model[600], ckpt[600], dec[600], tok[700];
    snprintf(model, sizeof model, "%s/model", argv[1]);
    snprintf(ckpt, sizeof ckpt, "%s/out", argv[1]);
    snprintf(dec, sizeof dec, "%s/out/decomp", argv[1]);
    snprintf(tok, sizeof tok, "%s/tokens.h5", model);
    mp_synth_opts so;
    mp_synth_defaults(&so);
    so.arch = MP_ARCH_QWEN3_MOE, so.layers = 2, so.experts = 4, so.hidden = 64, so.ffn = 64, so.delta_rank = 4;
    so.n_seq = 32, so.seq_len = 64, so.noise_scale = 0.02;
    int rc = 0;
    if (mp_mpi_rank() == 0) {
        char cmd[1300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", argv[1], argv[1]);
        CHECK(system(cmd) == 0);
        rc = mp_synth_write(&so, model);
    }
    CHECK_OK(mp_mpi_agree(rc));
    mp_model *m = NULL;
    mp_tokens t = {0};
    CHECK_OK(mp_mpi_agree(mp_model_open(model, &m)));
    CHECK_OK(mp_tokens_read(tok, m->cfg.vocab, &t));
    mp_run run;
    char *keys[] = {"delta.fraction=0.5"};
    CHECK_OK(run_job(m, &t, ckpt, keys, 1, &run));
    CHECK(run.ran[MP_STAGE_DECOMPOSE] == 1 && run.layers[MP_STAGE_DECOMPOSE] == 2 && run.kept[MP_STAGE_DECOMPOSE] == 0);
    if (mp_mpi_rank() == 0) {
        static const char *pn[3] = {"gate", "up", "down"};
        double worst_drop = 1e30, worst_tail = 0;
        for (int l = 0; l < 2; l++)
            for (int e = 0; e < 4; e++) {
                char path[800], nm[32];
                snprintf(path, sizeof path, "%s/layer%04d/expert%04d.h5", dec, l, e);
                hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
                CHECK(f >= 0);
                if (f < 0)
                    continue;
                hid_t root = H5Gopen2(f, "/", H5P_DEFAULT);
                for (int p = 0; p < 3; p++) {
                    double sig[64];
                    snprintf(nm, sizeof nm, "sigma_%s", pn[p]);
                    hid_t ds = H5Dopen2(f, nm, H5P_DEFAULT);
                    CHECK(ds >= 0 && H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, sig) >= 0);
                    H5Dclose(ds);
                    snprintf(nm, sizeof nm, "energy_%s", pn[p]);
                    double energy = attr(root, nm), tail = 0, s2 = 0;
                    for (int j = 0; j < 64; j++)
                        s2 += sig[j] * sig[j];
                    for (int j = 16; j < 64; j++)
                        tail += sig[j] * sig[j];
                    CHECK(fabs(s2 - energy) <= 1e-9 * energy); /* the full spectrum holds all the energy */
                    worst_drop = fmin(worst_drop, sig[15] / sig[16]);
                    worst_tail = fmax(worst_tail, tail / energy);
                }
                H5Gclose(root);
                H5Fclose(f);
            }
        printf("planted rank 4 x 4 experts: smallest sigma_16 / sigma_17 = %.1f, largest loss beyond rank 16 = "
               "%.2f%% of the delta energy\n",
               worst_drop, 100 * worst_tail);
        CHECK(worst_drop > 3);
        CHECK(worst_tail < 0.01);
    }
    /* delta.weights = fisher with a file in which only expert 1 has weight: its delta vanishes */
    char fisher[700], dec2[700];
    snprintf(fisher, sizeof fisher, "%s-fisher.h5", argv[1]); /* outside DIR: not compared across ranks */
    snprintf(dec2, sizeof dec2, "%s/fisher", argv[1]);
    if (mp_mpi_rank() == 0) {
        hid_t f = H5Fcreate(fisher, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        static const char *pn[3] = {"gate", "up", "down"};
        float *v = malloc(sizeof(float) * 64 * 64);
        for (int l = 0; l < 2; l++)
            for (int e = 0; e < 4; e++) {
                char g1[64], nm[96];
                snprintf(g1, sizeof g1, "layer%d", l);
                if (e == 0) {
                    hid_t g = H5Gcreate2(f, g1, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                    H5Gclose(g);
                }
                snprintf(nm, sizeof nm, "layer%d/expert%d", l, e);
                hid_t g = H5Gcreate2(f, nm, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                H5Gclose(g);
                for (int i = 0; i < 64 * 64; i++)
                    v[i] = e == 1 ? 1.0f : 0.0f;
                for (int p = 0; p < 3; p++) {
                    hsize_t dm[2] = {64, 64};
                    hid_t sp = H5Screate_simple(2, dm, NULL);
                    snprintf(nm, sizeof nm, "layer%d/expert%d/%s", l, e, pn[p]);
                    hid_t ds = H5Dcreate2(f, nm, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                    H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
                    H5Dclose(ds), H5Sclose(sp);
                }
            }
        free(v);
        H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    char fset[800];
    snprintf(fset, sizeof fset, "delta.fisher=%s", fisher);
    char *keys2[] = {"delta.weights=fisher", fset};
    CHECK_OK(run_job(m, &t, dec2, keys2, 2, &run));
    if (mp_mpi_rank() == 0) {
        char path[800];
        snprintf(path, sizeof path, "%s/decomp/layer0001/expert0001.h5", dec2);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), root = H5Gopen2(f, "/", H5P_DEFAULT);
        double en = attr(root, "energy_gate");
        H5Gclose(root), H5Fclose(f);
        printf("fisher weights on expert 1 only: its delta energy %.3g\n", en);
        CHECK(en == 0.0);
    }
    /* a missing Fisher file is an error naming it, on every rank */
    char *keys3[] = {"delta.weights=fisher", "delta.fisher=/nonexistent.h5"};
    CHECK_ERR(run_job(m, &t, dec2, keys3, 2, &run), MP_ENOENT, "/nonexistent.h5");
    mp_tokens_free(&t);
    mp_model_close(m);
    int fl = t_failures, all = 0;
    MPI_Allreduce(&fl, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    mp_mpi_finalize();
    return all ? 1 : (mp_mpi_rank() == 0 ? t_done("d2") : 0);
}
