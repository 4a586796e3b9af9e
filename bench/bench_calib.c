/* bench_calib.c - calibration against the forward pass and the BLAS, measured in one run (one BLAS thread
 * per rank, as in the pipeline; run under mpiexec with 1 and 2 ranks, bench/calib.sh):
 *   - forward pass alone (eval) and the whole calibrate stage (forward + fp32-chunk Grams + files) on the
 *     same tokens: tokens/s and calibrate / eval speed;
 *   - calibrate's system time (kernel: file writes, page faults) as a share of its wall time;
 *   - the Gram accumulation (mp_gram_add_chunk: SSYRK of a 256-token chunk + the fp64 sum) against a bare
 *     SSYRK of the same shape: rate ratio;
 *   - the forward's effective GFLOP/s against SGEMM at the expert chunk shapes, and the share of the
 *     layers' time (the forward without the output head) that the expert GEMMs take at that rate;
 *   - peak RSS per rank (calibration.chunk_tokens from $MOEPACK_BENCH_CHUNK bounds it).
 * usage: bench_calib [MODEL_DIR TOKENS]   default: a synthetic model in $MOEPACK_BENCH_DIR (default
 * /tmp/moepack-bench-calib; reused when present): $MOEPACK_BENCH_ARCH = mixtral (d 1024, f 2816, 8
 * experts top-2, 4 layers, vocab 32000) or qwen3_moe (d 1024, f 768, 32 experts top-4), 32 x 256
 * tokens; $MOEPACK_BENCH_NSEQ uses only the first N sequences, or repeats them up to N. */
#define _GNU_SOURCE
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "gram.h"
#include "pipeline.h"
#include "runtime.h"
#include "synth.h"
#include "weights.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double sys_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

static float *filled(int64_t n)
{
    float *a = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; a && i < n; i++)
        a[i] = (float)((i * 7919) % 1013) * 1e-3f - 0.5f;
    return a;
}

/* GFLOP/s of y[m, n] = x[m, k] w[n, k]^T (one thread), best of 3 */
static double sgemm_rate(int m, int n, int k)
{
    float *a = filled((int64_t)m * k), *b = filled((int64_t)n * k), *c = filled((int64_t)m * n);
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
        double t = now() - t0;
        best = t < best ? t : best;
    }
    free(a), free(b), free(c);
    return 2.0 * m * (double)n * k / best / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* the median over 21 interleaved pairs of (bare SSYRK of x [256, n], upper) / (mp_gram_add_chunk of the same)
 * time, and the SSYRK's best GFLOP/s */
static double gram_ratio(int n, double *syrk_gflops)
{
    float *x = filled((int64_t)MP_GRAM_CHUNK * n), *c = filled((int64_t)n * n); /* c: SSYRK's [n, n], the scratch */
    double *G = calloc((size_t)n * n, sizeof(double)), *sq = calloc((size_t)n, sizeof(double)), r[21], best = 1e30;
    for (int k = 0; k < 21; k++) {
        double t0 = now();
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, MP_GRAM_CHUNK, 1.0f, x, n, 0.0f, c, n);
        double t1 = now();
        mp_gram_add_chunk(x, MP_GRAM_CHUNK, n, c, G, sq);
        double t2 = now();
        r[k] = (t1 - t0) / (t2 - t1);
        best = t1 - t0 < best ? t1 - t0 : best;
    }
    qsort(r, 21, sizeof r[0], cmp_double);
    *syrk_gflops = (double)n * n * MP_GRAM_CHUNK / best / 1e9;
    free(x), free(c), free(G), free(sq);
    return r[10];
}

/* matrix-multiply flops of the forward pass: all, and those of the expert GEMMs */
static double forward_flops(const mp_config *c, const mp_tokens *t, double *expert)
{
    double T = (double)t->n_seq * t->seq_len, d = c->hidden, hd = c->head_dim;
    double qd = c->n_heads * hd, kvd = c->n_kv_heads * hd, S = t->seq_len;
    double per_layer = 2 * T * d * (2 * qd + 2 * kvd) + 2 * 2 * T * S * qd; /* projections + scores/values */
    double total = 0;
    *expert = 0;
    for (int l = 0; l < c->n_layers; l++) {
        total += per_layer;
        if (c->is_moe[l]) {
            double ex = T * c->top_k * 6 * d * c->moe_ffn + (c->shared_ffn ? T * 6 * d * c->shared_ffn : 0);
            total += 2 * T * d * c->n_experts + ex;
            *expert += ex;
        } else
            total += T * 6 * d * c->dense_ffn;
    }
    return total + 2 * T * d * c->vocab;
}

/* the first n sequences of t, or its sequences repeated up to n (the memory measurement's 4x) */
static int use_sequences(mp_tokens *t, int n)
{
    int64_t S = t->seq_len, have = t->n_seq;
    if (n > have) {
        int32_t *ids = realloc(t->ids, sizeof(int32_t) * (size_t)(n * S));
        if (!ids)
            return mp_errorf(MP_ENOMEM, "out of memory for %d sequences", n);
        for (int64_t i = have * S; i < n * S; i++)
            ids[i] = ids[i % (have * S)];
        t->ids = ids;
    }
    t->n_seq = n;
    return 0;
}

static int make_model(const char *dir, const char *mdir)
{
    const char *arch = getenv("MOEPACK_BENCH_ARCH");
    mp_synth_opts o;
    mp_synth_defaults(&o);
    int rc = mp_synth_parse_arch(arch ? arch : "mixtral", &o.arch);
    o.layers = 4, o.hidden = 1024, o.heads = 16, o.kv_heads = 4, o.vocab = 32000, o.n_seq = 32, o.seq_len = 256;
    o.delta_rank = 16;
    if (o.arch == MP_ARCH_MIXTRAL)
        o.experts = 8, o.top_k = 2, o.ffn = 2816;
    else
        o.experts = 32, o.top_k = 4, o.ffn = 768;
    char cmd[700];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    return rc == 0 && system(cmd) == 0 ? mp_synth_write(&o, mdir) : (rc < 0 ? rc : MP_EIO);
}

int main(int argc, char **argv)
{
    if (mp_mpi_init(&argc, &argv) < 0)
        return 8;
    int rank = mp_mpi_rank(), P = mp_mpi_size(), rc = 0;
    char tmp[512] = "", mdir[600], tokp[700];
    if (argc >= 3) {
        snprintf(mdir, sizeof mdir, "%s", argv[1]);
        snprintf(tokp, sizeof tokp, "%s", argv[2]);
    } else {
        const char *bd = getenv("MOEPACK_BENCH_DIR");
        snprintf(tmp, sizeof tmp, "%s", bd ? bd : "/tmp/moepack-bench-calib");
        snprintf(mdir, sizeof mdir, "%s/model", tmp);
        snprintf(tokp, sizeof tokp, "%s/tokens.h5", mdir);
        if (rank == 0 && access(mdir, F_OK) != 0)
            rc = make_model(tmp, mdir);
    }
    rc = mp_mpi_agree(rc);
    mp_model *m = NULL;
    mp_tokens t = {0};
    if (rc == 0)
        rc = mp_model_open(mdir, &m);
    if (rc == 0)
        rc = mp_tokens_read(tokp, m->cfg.vocab, &t);
    const char *ns = getenv("MOEPACK_BENCH_NSEQ");
    if (rc == 0 && ns && atoi(ns) > 0)
        rc = use_sequences(&t, atoi(ns));
    rc = mp_mpi_agree(rc);
    if (rc < 0) {
        mp_mpi_report(rc);
        mp_mpi_finalize();
        return mp_exit_code(rc);
    }
    const mp_config *c = &m->cfg;
    double g_up = sgemm_rate(MP_CHUNK, c->moe_ffn, c->hidden), g_down = sgemm_rate(MP_CHUNK, c->hidden, c->moe_ffn);
    double syrk_f, syrk_d, gr_f = gram_ratio(c->moe_ffn, &syrk_f), gr_d = gram_ratio(c->hidden, &syrk_d);
    char set_ck[700], set_chunk[96];
    snprintf(set_ck, sizeof set_ck, "checkpoint.dir=%s/ckpt-np%d", tmp[0] ? tmp : "/tmp", P);
    const char *ch = getenv("MOEPACK_BENCH_CHUNK");
    snprintf(set_chunk, sizeof set_chunk, "calibration.chunk_tokens=%s", ch ? ch : "0");
    char *sets[] = {"model.path=x", "calibration.tokens=y", set_ck, set_chunk};
    mp_job job;
    rc = mp_job_load(NULL, sets, 4, &job);
    mp_weights w;
    mp_model_weights(m, &w);
    double nll;
    int64_t npred;
    /* the whole calibration (a fresh checkpoint; the peak RSS is taken right after it), then the forward
     * pass alone */
    MPI_Barrier(MPI_COMM_WORLD);
    double s0 = sys_seconds(), t0 = now();
    mp_run_opts ro = {.until = "calibrate", .fresh = 1, .quiet = 1};
    mp_run run;
    if (rc == 0)
        rc = mp_pipeline_run(&job, m, &t, &ro, &run);
    MPI_Barrier(MPI_COMM_WORLD);
    double el = now() - t0, sys = sys_seconds() - s0, sysmax = 0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss = (double)ru.ru_maxrss * 1024, maxrss = 0;
    MPI_Reduce(&rss, &maxrss, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    MPI_Reduce(&sys, &sysmax, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = now();
    mp_epf *f = NULL;
    if (rc == 0)
        rc = mp_epf_create(&w, &t, NULL, NULL, &f);
    if (rc == 0)
        rc = mp_epf_balance(f, 1); /* as moepack eval */
    for (int l = 0; l < c->n_layers && rc == 0; l++)
        rc = mp_epf_layer(f, l, NULL);
    MPI_Barrier(MPI_COMM_WORLD);
    double layers = now() - t0, exch = f ? mp_epf_exchange_seconds(f) : 0, exch_max = 0;
    MPI_Reduce(&exch, &exch_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rc == 0)
        rc = mp_epf_head(f, &nll, &npred);
    mp_epf_free(f);
    MPI_Barrier(MPI_COMM_WORLD);
    double fwd = now() - t0;
    if (rc == 0 && rank == 0) {
        double T = (double)t.n_seq * t.seq_len, ex, fl = forward_flops(c, &t, &ex);
        double ex_rate = 3 / (2 / g_up + 1 / g_down); /* gate and up at one rate, down at the other */
        printf("model %s: %s d %d, f %d, %d experts top-%d, %d layers, vocab %d; %d x %d tokens; %d rank%s; "
               "calibration.chunk_tokens %s\n",
               mdir, mp_arch_name(c->arch), c->hidden, c->moe_ffn, c->n_experts, c->top_k, c->n_layers, c->vocab,
               t.n_seq, t.seq_len, P, P == 1 ? "" : "s", ch ? ch : "0");
        printf("  eval (forward only):  %8.3f s  %8.0f tokens/s  %6.2f GFLOP/s per rank\n", fwd, T / fwd,
               fl / fwd / 1e9 / P);
        printf("  calibrate (+ Grams + files): %8.3f s  %8.0f tokens/s\n", el, T / el);
        printf("  RATIO calibrate / eval speed: %.2f\n", fwd / el);
        printf("  RATIO calibrate system time / wall time: %.3f (%.2f s of %.2f s, the largest of the ranks)\n",
               sysmax / el, sysmax, el);
        printf("  RATIO Gram accumulation / bare SSYRK rate (median of 21 pairs): %.2f (n = f %d), %.2f (n = d %d); "
               "SSYRK %.1f / %.1f GFLOP/s\n",
               gr_f, c->moe_ffn, gr_d, c->hidden, syrk_f, syrk_d);
        printf("  SGEMM at the expert chunk shapes (%d x f x d): %.1f / %.1f GFLOP/s (gate/up, down)\n", MP_CHUNK, g_up,
               g_down);
        printf("  RATIO forward GFLOP/s / expert SGEMM rate: %.2f\n", fl / fwd / 1e9 / P / ex_rate);
        printf("  RATIO expert GEMM share of the layers (expert flops at the SGEMM rate / time of the layers, "
               "%.3f s of the %.3f s): %.2f\n",
               layers, fwd, ex / P / (ex_rate * 1e9) / layers);
        double hf = 2 * T * c->hidden * c->vocab;
        printf("  expert flops / the layers' flops: %.2f (where the share above ends with every GEMM at one rate)\n",
               ex / (fl - hf));
        printf("  exchange (packing, MPI_Alltoallv both ways, waiting there for the other ranks): %.3f s of the "
               "layers' %.3f s, the most of the ranks: %.3f\n",
               exch_max, layers, exch_max / layers);
        printf("  (the output head and the NLL: %.0f %% of the forward's time, %.0f %% of its flops)\n",
               100 * (fwd - layers) / fwd, 100 * 2 * T * c->hidden * c->vocab / fl);
        printf("  peak RSS per rank (calibrate) %.1f MB\n", maxrss / 1e6);
    }
    mp_tokens_free(&t);
    mp_model_close(m);
    rc = mp_mpi_agree(rc);
    mp_mpi_report(rc);
    mp_mpi_finalize();
    return mp_exit_code(rc);
}
