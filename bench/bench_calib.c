/* bench_calib.c - calibration throughput (tokens/s), achieved GFLOP/s of the
 * forward pass as a ratio to OpenBLAS SGEMM measured in the same run (one
 * thread per rank, as in the pipeline), and peak RSS per rank against the
 * checkpoint size. Run under mpiexec with 1 and 2 ranks (bench/calib.sh) to
 * compare rank counts.
 *   usage: bench_calib [MODEL_DIR TOKENS]   default: a synthetic mixtral with
 *   d 1024, f 2048, 8 experts, 2 layers, 32 x 128 tokens in $MOEPACK_BENCH_DIR
 *   (default /tmp/moepack-bench-calib; reused when present). */
#define _GNU_SOURCE
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "pipeline.h"
#include "weights.h"
#include "error.h"
#include "runtime.h"
#include "synth.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double sgemm_gflops(int n)
{
    float *a = malloc(sizeof(float) * (size_t)n * n), *b = malloc(sizeof(float) * (size_t)n * n),
          *c = malloc(sizeof(float) * (size_t)n * n);
    for (int64_t i = 0; i < (int64_t)n * n; i++)
        a[i] = (float)(i % 7) * 0.1f, b[i] = (float)(i % 5) * 0.1f;
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        best = now() - t0 < best ? now() - t0 : best;
    }
    free(a), free(b), free(c);
    return 2.0 * n * (double)n * n / best / 1e9;
}

/* matrix-multiply flops of the forward pass (no statistics) */
static double forward_flops(const mp_config *c, const mp_tokens *t)
{
    double T = (double)t->n_seq * t->seq_len, d = c->hidden, hd = c->head_dim;
    double qd = c->n_heads * hd, kvd = c->n_kv_heads * hd, S = t->seq_len;
    double per_layer = 2 * T * d * (2 * qd + 2 * kvd) + 2 * 2 * T * S * qd; /* projections + scores/values */
    double total = 0;
    for (int l = 0; l < c->n_layers; l++) {
        total += per_layer;
        if (c->is_moe[l])
            total += 2 * T * d * c->n_experts + T * c->top_k * 6 * d * c->moe_ffn +
                     (c->shared_ffn ? T * 6 * d * c->shared_ffn : 0);
        else
            total += T * 6 * d * c->dense_ffn;
    }
    return total + 2 * T * d * c->vocab;
}

int main(int argc, char **argv)
{
    if (mp_mpi_init(&argc, &argv) < 0)
        return 8;
    int rank = mp_mpi_rank(), rc = 0;
    char tmp[64] = "", mdir[600], tokp[700];
    if (argc >= 3) {
        snprintf(mdir, sizeof mdir, "%s", argv[1]);
        snprintf(tokp, sizeof tokp, "%s", argv[2]);
    } else {
        const char *bd = getenv("MOEPACK_BENCH_DIR");
        snprintf(tmp, sizeof tmp, "%s", bd ? bd : "/tmp/moepack-bench-calib");
        snprintf(mdir, sizeof mdir, "%s/model", tmp);
        snprintf(tokp, sizeof tokp, "%s/tokens.h5", mdir);
        if (rank == 0 && access(mdir, F_OK) != 0) {
            mp_synth_opts o;
            mp_synth_defaults(&o);
            o.layers = 2, o.experts = 8, o.hidden = 1024, o.ffn = 2048, o.heads = 16, o.kv_heads = 4;
            o.vocab = 4096, o.n_seq = 32, o.seq_len = 128, o.delta_rank = 16;
            char cmd[128];
            snprintf(cmd, sizeof cmd, "mkdir -p %s", tmp);
            rc = system(cmd) == 0 ? mp_synth_write(&o, mdir) : -1;
        }
    }
    rc = mp_mpi_agree(rc);
    mp_model *m = NULL;
    mp_tokens t = {0};
    if (rc == 0)
        rc = mp_model_open(mdir, &m);
    if (rc == 0)
        rc = mp_tokens_read(tokp, m->cfg.vocab, &t);
    rc = mp_mpi_agree(rc);
    if (rc < 0) {
        mp_mpi_report(rc);
        mp_mpi_finalize();
        return mp_exit_code(rc);
    }
    double peak = sgemm_gflops(1024);
    char set_ck[700];
    snprintf(set_ck, sizeof set_ck, "checkpoint.dir=%s/ckpt-np%d", tmp[0] ? tmp : "/tmp", mp_mpi_size());
    char *sets[] = {"model.path=x", "calibration.tokens=y", set_ck};
    mp_job job;
    rc = mp_job_load(NULL, sets, 3, &job);
    /* the forward pass alone (no statistics), then the whole calibration (a fresh checkpoint) */
    mp_weights w;
    mp_model_weights(m, &w);
    double nll;
    int64_t npred;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = now();
    if (rc == 0)
        rc = mp_epf_run(&w, &t, NULL, NULL, &nll, &npred);
    MPI_Barrier(MPI_COMM_WORLD);
    double fwd = now() - t0;
    t0 = now();
    mp_run_opts ro = {.until = "calibrate", .fresh = 1, .quiet = 1};
    mp_run run;
    if (rc == 0)
        rc = mp_pipeline_run(&job, m, &t, &ro, &run);
    MPI_Barrier(MPI_COMM_WORLD);
    double el = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss = (double)ru.ru_maxrss * 1024, maxrss = 0, ckpt = 0;
    MPI_Reduce(&rss, &maxrss, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    for (int i = 0; i < m->ck->nfiles; i++)
        ckpt += (double)m->ck->files[i].size;
    if (rc == 0 && rank == 0) {
        double T = (double)t.n_seq * t.seq_len, fl = forward_flops(&m->cfg, &t);
        int P = mp_mpi_size();
        printf("model %s: d %d, f %d, %d experts, %d layers; %d x %d tokens; %d rank%s\n", mdir, m->cfg.hidden,
               m->cfg.moe_ffn, m->cfg.n_experts, m->cfg.n_layers, t.n_seq, t.seq_len, P, P == 1 ? "" : "s");
        printf("  calibration (forward + fp64 statistics + files): %.3f s, %.0f tokens/s\n", el, T / el);
        printf("  forward pass alone: %.3f s, %.0f tokens/s, %.2f GFLOP/s per rank\n", fwd, T / fwd,
               fl / fwd / 1e9 / P);
        printf("  SGEMM 1024^3 one thread %.2f GFLOP/s; forward / SGEMM ratio %.2f\n", peak, fl / fwd / 1e9 / P / peak);
        printf("  peak RSS per rank %.1f MB, checkpoint %.1f MB, ratio %.2f\n", maxrss / 1e6, ckpt / 1e6,
               maxrss / ckpt);
    }
    mp_tokens_free(&t);
    mp_model_close(m);
    rc = mp_mpi_agree(rc);
    mp_mpi_report(rc);
    mp_mpi_finalize();
    return mp_exit_code(rc);
}
