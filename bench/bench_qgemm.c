/* bench_qgemm.c - the grouped dequantize-GEMM kernels (src/gpu/qgemm_gpu.h) against cuBLAS fp16 GEMM of
 * the dense weights, measured in the same run: the experts of a Mixtral-8x7B layer (8 experts; W1/W3
 * [14336, 4096] and W2 [4096, 14336]), M = 16, 256 and 4096 tokens per expert, fp16 X and fp16 Y, every
 * weight format alone and a mixed layer (one launch for all experts). Reported: our time, GB/s of the
 * packed weight bytes (codes + scales + zeros), TFLOP/s (2 M m n per expert), cuBLAS
 * (cublasGemmStridedBatchedEx, fp16 in/out, fp32 compute, all experts in one call) time and TFLOP/s,
 * and the ratio cuBLAS time / our time (> 1: we are faster). "check" is max |ours - cuBLAS| / max |cuBLAS|
 * with cuBLAS given our dequantized weights rounded to fp16 (a sanity check, not the accuracy test).
 *
 * Usage: bench_qgemm [--experts E] [--tokens 16,256,4096] [--shape w13|w2|both] [--formats a,b,...|all]
 *                    [--simt] [--min-ms T]
 * Without CUDA in the build or without a GPU it says so and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_info.h"

#if !MOEPACK_HAVE_CUDA
int main(void)
{
    char b[256];
    mp_gpu_build_info(b, sizeof b);
    printf("bench_qgemm: no GPU support in this build (%s) - nothing to measure\n", b);
    return 0;
}
#else
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>

#include "dtype.h"
#include "error.h"
#include "qgemm_gpu.h"
#include "quant.h"
#include "rng.h"

#define CUDA_OK(call)                                                                                                  \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "bench_qgemm: %s: %s\n", #call, cudaGetErrorString(e_));                                   \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)
#define CUBLAS_OK(call)                                                                                                \
    do {                                                                                                               \
        cublasStatus_t s_ = (call);                                                                                    \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                             \
            fprintf(stderr, "bench_qgemm: %s: cuBLAS status %d\n", #call, (int)s_);                                    \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)
#define MP_OK(call)                                                                                                    \
    do {                                                                                                               \
        if ((call) < 0) {                                                                                              \
            fprintf(stderr, "bench_qgemm: %s: %s\n", #call, mp_error_message());                                       \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

typedef struct {
    int experts, simt;
    double min_ms;
    int tokens[8], ntokens;
    int shapes; /* 1: w13, 2: w2, 3: both */
    const mp_qformat *fmts[16];
    int nfmts;
    int mixed;
} opts;

typedef void (*run_fn)(void *ctx);

/* mean milliseconds of one call, the best of 3 trials of enough calls to last min_ms */
static double time_ms(run_fn f, void *ctx, double min_ms)
{
    cudaEvent_t a, b;
    CUDA_OK(cudaEventCreate(&a));
    CUDA_OK(cudaEventCreate(&b));
    f(ctx); /* warm-up */
    CUDA_OK(cudaDeviceSynchronize());
    float ms = 0;
    CUDA_OK(cudaEventRecord(a, 0));
    f(ctx);
    CUDA_OK(cudaEventRecord(b, 0));
    CUDA_OK(cudaEventSynchronize(b));
    CUDA_OK(cudaEventElapsedTime(&ms, a, b));
    int reps = ms > 0 ? (int)(min_ms / ms) + 1 : 100;
    reps = reps < 3 ? 3 : reps > 2000 ? 2000 : reps;
    double best = 1e30;
    for (int trial = 0; trial < 3; trial++) {
        CUDA_OK(cudaEventRecord(a, 0));
        for (int r = 0; r < reps; r++)
            f(ctx);
        CUDA_OK(cudaEventRecord(b, 0));
        CUDA_OK(cudaEventSynchronize(b));
        CUDA_OK(cudaEventElapsedTime(&ms, a, b));
        if (ms / reps < best)
            best = ms / reps;
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return best;
}

typedef struct {
    mp_gpu_qgemm *g;
    mp_gpu_qgemm_item *items;
    int count;
    void *X, *Y;
    int64_t n, m;
} ours_ctx;

static void run_ours(void *p)
{
    ours_ctx *c = p;
    MP_OK(mp_gpu_qgemm_grouped(c->g, c->items, c->count, c->X, MP_QG_F16, c->n, c->Y, MP_QG_F16, c->m, 0, "bench"));
}

typedef struct {
    cublasHandle_t h;
    const void *W, *X;
    void *Y;
    int m, n, M, E;
} cublas_ctx;

/* Y_e [M, m] = X_e [M, n] W_e^T for every expert: column-major Y_e^T = W_e X_e^T, i.e. op(A) = T on the
 * [n, m] column-major view of W_e (row-major [m, n]), B = the [n, M] view of X_e */
static void run_cublas(void *p)
{
    cublas_ctx *c = p;
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_OK(cublasGemmStridedBatchedEx(c->h, CUBLAS_OP_T, CUBLAS_OP_N, c->m, c->M, c->n, &one, c->W, CUDA_R_16F, c->n,
                                         (long long)c->m * c->n, c->X, CUDA_R_16F, c->n, (long long)c->M * c->n, &zero,
                                         c->Y, CUDA_R_16F, c->m, (long long)c->M * c->m, c->E, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT));
}

static float *random_block(mp_rng *g, int64_t m, int64_t n)
{
    float *W = malloc(sizeof(float) * (size_t)(m * n));
    if (!W) {
        fprintf(stderr, "bench_qgemm: out of host memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < m * n; i++)
        W[i] = (float)(0.02 * mp_rng_normal(g));
    return W;
}

static void parse(int argc, char **argv, opts *o)
{
    o->experts = 8;
    o->simt = 0;
    o->min_ms = 50;
    o->ntokens = 3;
    o->tokens[0] = 16, o->tokens[1] = 256, o->tokens[2] = 4096;
    o->shapes = 3;
    o->nfmts = 0;
    o->mixed = 1;
    const char *formats = "all";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--experts") && i + 1 < argc)
            o->experts = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--simt"))
            o->simt = 1;
        else if (!strcmp(argv[i], "--min-ms") && i + 1 < argc)
            o->min_ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
            i++;
            o->shapes = !strcmp(argv[i], "w13") ? 1 : !strcmp(argv[i], "w2") ? 2 : 3;
        } else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) {
            o->ntokens = 0;
            for (char *s = strtok(argv[++i], ","); s && o->ntokens < 8; s = strtok(NULL, ","))
                o->tokens[o->ntokens++] = atoi(s);
        } else if (!strcmp(argv[i], "--formats") && i + 1 < argc)
            formats = argv[++i];
        else {
            fprintf(stderr, "usage: bench_qgemm [--experts E] [--tokens 16,256,4096] [--shape w13|w2|both] "
                            "[--formats a,b,...|all] [--simt] [--min-ms T]\n");
            exit(2);
        }
    }
    if (!strcmp(formats, "all")) {
        for (int i = 0; i < mp_qformat_count(); i++)
            o->fmts[o->nfmts++] = mp_qformat_at(i);
    } else {
        o->mixed = 0;
        MP_OK(mp_qformat_parse_list(formats, o->fmts, 16, &o->nfmts));
    }
    if (o->experts < 1 || o->experts > 64 || o->ntokens < 1) {
        fprintf(stderr, "bench_qgemm: bad --experts or --tokens\n");
        exit(2);
    }
}

/* the formats of expert e in the mixed layer (an allocation at about 3.5 bits) */
static const mp_qformat *mixed_format(int e)
{
    static const char *names[8] = {"w4g128", "w3g128", "w2g128", "w8", "w4", "w2g64", "fp16", "w4g128"};
    const mp_qformat *f = NULL;
    MP_OK(mp_qformat_find(names[e % 8], &f));
    return f;
}

/* one shape: random weights per expert; for every format (and the mix) quantize, upload, check, time */
static void bench_shape(const opts *o, const char *name, int64_t m, int64_t n, mp_gpu_qgemm *g, cublasHandle_t h)
{
    const int E = o->experts;
    int Mmax = 0;
    for (int t = 0; t < o->ntokens; t++)
        Mmax = o->tokens[t] > Mmax ? o->tokens[t] : Mmax;
    mp_rng r;
    mp_rng_seed(&r, 7);
    float **W = malloc(sizeof(float *) * (size_t)E);
    for (int e = 0; e < E; e++)
        W[e] = random_block(&r, m, n);
    /* X [E Mmax, n] and Y fp16; dense fp16 weights [E, m, n] for cuBLAS */
    uint16_t *hx = malloc(sizeof(uint16_t) * (size_t)((int64_t)E * Mmax * n));
    for (int64_t i = 0; i < (int64_t)E * Mmax * n; i++)
        hx[i] = mp_f32_to_f16((float)mp_rng_normal(&r));
    void *X, *Y, *Yc, *Wd;
    CUDA_OK(cudaMalloc(&X, sizeof(uint16_t) * (size_t)((int64_t)E * Mmax * n)));
    CUDA_OK(cudaMalloc(&Y, sizeof(uint16_t) * (size_t)((int64_t)E * Mmax * m)));
    CUDA_OK(cudaMalloc(&Yc, sizeof(uint16_t) * (size_t)((int64_t)E * Mmax * m)));
    CUDA_OK(cudaMalloc(&Wd, sizeof(uint16_t) * (size_t)((int64_t)E * m * n)));
    CUDA_OK(cudaMemcpy(X, hx, sizeof(uint16_t) * (size_t)((int64_t)E * Mmax * n), cudaMemcpyHostToDevice));
    free(hx);
    float *deq = malloc(sizeof(float) * (size_t)(m * n));
    uint16_t *wh = malloc(sizeof(uint16_t) * (size_t)(m * n));
    uint16_t *y1 = malloc(sizeof(uint16_t) * (size_t)((int64_t)E * Mmax * m)),
             *y2 = malloc(sizeof(uint16_t) * (size_t)((int64_t)E * Mmax * m));
    if (!deq || !wh || !y1 || !y2) {
        fprintf(stderr, "bench_qgemm: out of host memory\n");
        exit(1);
    }
    const int rows = o->nfmts + o->mixed;
    for (int fi = 0; fi < rows; fi++) {
        const int mixed = fi == o->nfmts;
        mp_qtensor *q[64];
        mp_gpu_qtensor *dq[64];
        int64_t bytes = 0;
        for (int e = 0; e < E; e++) {
            const mp_qformat *f = mixed ? mixed_format(e) : o->fmts[fi];
            MP_OK(mp_quant_rtn(f, W[e], m, n, f->name, &q[e]));
            MP_OK(mp_gpu_qtensor_upload(q[e], &dq[e]));
            bytes += mp_qformat_bytes(f, m, n);
            mp_qtensor_dequant(q[e], deq);
            for (int64_t i = 0; i < m * n; i++)
                wh[i] = mp_f32_to_f16(deq[i]);
            CUDA_OK(cudaMemcpy((uint16_t *)Wd + (size_t)e * (size_t)(m * n), wh, sizeof(uint16_t) * (size_t)(m * n),
                               cudaMemcpyHostToDevice));
            mp_qtensor_destroy(q[e]);
        }
        for (int t = 0; t < o->ntokens; t++) {
            const int M = o->tokens[t];
            mp_gpu_qgemm_item it[64];
            for (int e = 0; e < E; e++)
                it[e] = (mp_gpu_qgemm_item){dq[e], (int64_t)e * M, M};
            ours_ctx oc = {g, it, E, X, Y, n, m};
            cublas_ctx cc = {h, Wd, X, Yc, (int)m, (int)n, M, E};
            mp_gpu_qgemm_set_path(g, o->simt ? MP_GPU_PATH_SIMT : MP_GPU_PATH_AUTO);
            run_ours(&oc);
            MP_OK(mp_gpu_qgemm_sync(g));
            const int launches = mp_gpu_qgemm_last_launches(g);
            run_cublas(&cc);
            CUDA_OK(cudaDeviceSynchronize());
            const size_t ny = (size_t)((int64_t)E * M * m);
            CUDA_OK(cudaMemcpy(y1, Y, sizeof(uint16_t) * ny, cudaMemcpyDeviceToHost));
            CUDA_OK(cudaMemcpy(y2, Yc, sizeof(uint16_t) * ny, cudaMemcpyDeviceToHost));
            double dmax = 0, ymax = 0;
            for (size_t i = 0; i < ny; i++) {
                double a = mp_f16_to_f32(y1[i]), b = mp_f16_to_f32(y2[i]);
                dmax = fabs(a - b) > dmax || a != a ? fabs(a - b) : dmax;
                ymax = fabs(b) > ymax ? fabs(b) : ymax;
            }
            const double ours = time_ms(run_ours, &oc, o->min_ms), ref = time_ms(run_cublas, &cc, o->min_ms);
            const double flop = 2.0 * E * (double)M * (double)m * (double)n;
            printf("| %s %lldx%lld | %5d | %-7s | %2d | %9.1f | %7.0f | %6.1f | %9.1f | %6.1f | %5.2f | %.1e |\n", name,
                   (long long)m, (long long)n, M, mixed ? "mixed" : o->fmts[fi]->name, launches, ours * 1e3,
                   bytes / (ours * 1e-3) / 1e9, flop / (ours * 1e-3) / 1e12, ref * 1e3, flop / (ref * 1e-3) / 1e12,
                   ref / ours, ymax > 0 ? dmax / ymax : dmax);
            fflush(stdout);
        }
        for (int e = 0; e < E; e++)
            mp_gpu_qtensor_destroy(dq[e]);
    }
    for (int e = 0; e < E; e++)
        free(W[e]);
    free(W);
    free(deq);
    free(wh);
    free(y1);
    free(y2);
    cudaFree(X);
    cudaFree(Y);
    cudaFree(Yc);
    cudaFree(Wd);
}

int main(int argc, char **argv)
{
    opts o;
    parse(argc, argv, &o);
    char b[256], d[256];
    mp_gpu_build_info(b, sizeof b);
    if (mp_gpu_device_count() == 0) {
        printf("bench_qgemm: no GPU visible (%s) - nothing to measure\n", b);
        return 0;
    }
    mp_gpu_describe(0, d, sizeof d);
    printf("bench_qgemm: %s; %s; %d experts, fp16 X and Y, %s path\n\n", b, d, o.experts,
           o.simt ? "CUDA-core" : "default");
    printf("| shape (m x n) | M/expert | format | launches | ours us | GB/s | TFLOP/s | cuBLAS us | TFLOP/s | "
           "cuBLAS/ours | check |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    mp_gpu_qgemm *g = NULL;
    MP_OK(mp_gpu_qgemm_create(NULL, &g));
    cublasHandle_t h;
    CUBLAS_OK(cublasCreate(&h));
    if (o.shapes & 1)
        bench_shape(&o, "W1/W3", 14336, 4096, g, h);
    if (o.shapes & 2)
        bench_shape(&o, "W2", 4096, 14336, g, h);
    cublasDestroy(h);
    mp_gpu_qgemm_destroy(g);
    return 0;
}
#endif
