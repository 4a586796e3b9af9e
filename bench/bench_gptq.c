/* bench_gptq.c - GPTQ of one block with one BLAS thread, against SGEMM measured in the same run:
 *   factorisation (damped, reversed Cholesky of H in fp64) and quantization (left-looking lazy batches in
 *   fp32) timed separately; flops are those the algorithm executes (counted by src/quant.c: n^3/3 for the
 *   factorisation, 2 m n^2 / 2 for the block updates, the in-block work), GFLOP/s and the ratio to a
 *   4096^3 (or m x min(n, 4096)^2) single-thread SGEMM, best of 3. Wall and CPU seconds are both shown;
 *   ratios use CPU seconds, which stay meaningful on a shared machine (one thread: CPU <= wall).
 *   W [M, N] ~ N(0, 0.02^2); H = c c^T .* rho^|i-j| (rho 0.9, c log-normal): correlated, positive definite.
 * usage: bench_gptq [M N [FORMAT [ACT_ORDER]]]   default 4096 14336 w4g128 1 (Mixtral's down projection)
 *        bench_gptq --options    loss of GPTQ with dynamic groups, static groups and act-order, relative to
 *                                dynamic, on correlated blocks (the numbers behind the default options) */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "quant.h"
#include "rng.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int fail(const char *what)
{
    fprintf(stderr, "bench_gptq: %s: %s\n", what, mp_error_message());
    return 1;
}

/* the options comparison: 6 blocks 128 x 512, X with AR(1) features and log-normal channel scales */
static int options(void)
{
    const char *fs[] = {"w4g128", "w3g128", "w2g128", "w2g64", "w4", "w8"};
    const char *modes[] = {"dynamic groups", "static groups", "act-order"};
    double logsum[6][3] = {{0}};
    const int trials = 6, m = 128, n = 512, t = 3 * n;
    mp_rng g;
    mp_rng_seed(&g, 99);
    float *W = malloc(sizeof(float) * m * n), *Wq = malloc(sizeof(float) * m * n);
    double *X = malloc(sizeof(double) * (size_t)t * n), *H = malloc(sizeof(double) * n * n), *cs = malloc(8 * n);
    for (int tr = 0; tr < trials; tr++) {
        double rho = 0.3 + 0.1 * tr, sig = 0.3 + 0.2 * (tr % 3);
        for (int j = 0; j < n; j++)
            cs[j] = exp(sig * mp_rng_normal(&g)) * (mp_rng_uniform(&g) < 0.01 ? 20 : 1);
        for (int r = 0; r < t; r++) {
            double p = 0;
            for (int j = 0; j < n; j++) {
                double v = j ? rho * p + sqrt(1 - rho * rho) * mp_rng_normal(&g) : mp_rng_normal(&g);
                p = v;
                X[(size_t)r * n + j] = (float)(v * cs[j]);
            }
        }
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, n, t, 1.0, X, n, X, n, 0.0, H, n);
        for (int i = 0; i < m * n; i++)
            W[i] = (float)(0.02 * mp_rng_normal(&g) * (mp_rng_uniform(&g) < 0.002 ? 8 : 1));
        for (int k = 0; k < 6; k++) {
            const mp_qformat *f;
            if (mp_qformat_find(fs[k], &f) < 0)
                return fail("format");
            double base = 0;
            for (int mode = 0; mode < 3; mode++) {
                mp_gptq_opts o;
                mp_gptq_opts_default(&o);
                o.static_groups = mode >= 1;
                o.act_order = mode == 2;
                mp_qtensor *q;
                double l;
                if (mp_quant_gptq(f, W, m, n, H, &o, "options", &q, NULL) < 0)
                    return fail("gptq");
                mp_qtensor_dequant(q, Wq);
                mp_qtensor_destroy(q);
                if (mp_loss_gram(W, Wq, m, n, H, NULL, "options", &l) < 0)
                    return fail("loss");
                if (mode == 0)
                    base = l;
                logsum[k][mode] += log(l / base);
            }
        }
    }
    printf("GPTQ loss tr(E H E^T) relative to dynamic groups, geometric mean over %d blocks %d x %d\n", trials, m, n);
    printf("%-8s %15s %15s %15s\n", "format", modes[0], modes[1], modes[2]);
    for (int k = 0; k < 6; k++)
        printf("%-8s %15.3f %15.3f %15.3f\n", fs[k], 1.0, exp(logsum[k][1] / trials), exp(logsum[k][2] / trials));
    free(W), free(Wq), free(X), free(H), free(cs);
    return 0;
}

int main(int argc, char **argv)
{
    openblas_set_num_threads(1);
    if (argc > 1 && !strcmp(argv[1], "--options"))
        return options();
    int64_t m = argc > 2 ? atoll(argv[1]) : 4096, n = argc > 2 ? atoll(argv[2]) : 14336;
    const char *fname = argc > 3 ? argv[3] : "w4g128";
    int act_order = argc > 4 ? atoi(argv[4]) : 1;
    const mp_qformat *f;
    if (m < 1 || n < 1 || mp_qformat_find(fname, &f) < 0) {
        fprintf(stderr, "usage: bench_gptq [M N [FORMAT [ACT_ORDER]]] | --options\n%s\n", mp_error_message());
        return 2;
    }
    mp_rng g;
    mp_rng_seed(&g, 4);
    float *W = malloc(sizeof(float) * (size_t)(m * n));
    double *H = malloc(sizeof(double) * (size_t)(n * n)), *c = malloc(sizeof(double) * (size_t)n);
    if (!W || !H || !c) {
        fprintf(stderr, "bench_gptq: out of memory\n");
        return 7;
    }
    for (int64_t i = 0; i < m * n; i++)
        W[i] = (float)(0.02 * mp_rng_normal(&g));
    for (int64_t i = 0; i < n; i++)
        c[i] = exp(0.5 * mp_rng_normal(&g));
    const double lr = log(0.9);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            H[i * n + j] = c[i] * c[j] * exp(lr * (double)(i > j ? i - j : j - i));

    mp_gptq_opts o;
    mp_gptq_opts_default(&o);
    o.act_order = act_order;
    o.static_groups = 1;
    printf("GPTQ %s of W [%lld, %lld], act-order %s, blocksize %d, percdamp %g, 1 BLAS thread\n", f->name, (long long)m,
           (long long)n, act_order ? "on" : "off", o.blocksize, o.percdamp);
    fflush(stdout);
    mp_gptq_factor *fac;
    mp_gptq_info fi, qi;
    double t0 = now(), c0 = cpu();
    if (mp_gptq_factor_create(H, n, &o, "bench", &fac) < 0)
        return fail("factor");
    double t1 = now(), c1 = cpu();
    mp_qtensor *q;
    if (mp_quant_gptq_factored(f, W, m, n, fac, "bench", &q, &qi) < 0)
        return fail("quantize");
    double t2 = now(), c2 = cpu();
    mp_gptq_factor_info(fac, &fi);
    double flops = fi.flops + qi.flops;
    printf("  %-28s %8s %8s %11s %14s\n", "", "wall s", "CPU s", "flop", "GFLOP/s (CPU)");
    printf("  %-28s %8.2f %8.2f %11.3e %14.1f\n", "factorisation (fp64 potrf)", t1 - t0, c1 - c0, fi.flops,
           fi.flops / (c1 - c0) * 1e-9);
    printf("  %-28s %8.2f %8.2f %11.3e %14.1f\n", "quantization (fp32, BLAS-3)", t2 - t1, c2 - c1, qi.flops,
           qi.flops / (c2 - c1) * 1e-9);
    printf("  %-28s %8.2f %8.2f %11.3e %14.1f\n", "total", t2 - t0, c2 - c0, flops, flops / (c2 - c0) * 1e-9);
    mp_qtensor_destroy(q);
    mp_gptq_factor_destroy(fac);
    free(H);
    free(c);

    /* SGEMM of a comparable size: C [m, k] = A [m, k] B [k, k], k = min(n, 4096), best of 3 */
    int64_t k = n < 4096 ? n : 4096;
    float *A = malloc(sizeof(float) * (size_t)(m * k)), *B = malloc(sizeof(float) * (size_t)(k * k));
    float *C = malloc(sizeof(float) * (size_t)(m * k));
    for (int64_t i = 0; i < m * k; i++)
        A[i] = W[i];
    for (int64_t i = 0; i < k * k; i++)
        B[i] = (float)mp_rng_normal(&g);
    double best = 1e30, bestw = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double s = now(), sc = cpu();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)k, (int)k, 1.0f, A, (int)k, B, (int)k, 0.0f,
                    C, (int)k);
        best = fmin(best, cpu() - sc);
        bestw = fmin(bestw, now() - s);
    }
    double sgf = 2.0 * (double)m * (double)k * (double)k * 1e-9, sg = sgf / best;
    printf("  SGEMM [%lld x %lld] x [%lld x %lld]: %.1f GFLOP/s per CPU second (best of 3; %.1f per wall second)\n",
           (long long)m, (long long)k, (long long)k, (long long)k, sg, sgf / bestw);
    printf("  GPTQ / SGEMM throughput: %.2f\n", flops / (c2 - c0) * 1e-9 / sg);
    printf("gptq_seconds %.3f %.3f\n", t2 - t0, c2 - c0);
    free(A), free(B), free(C), free(W);
    return 0;
}
