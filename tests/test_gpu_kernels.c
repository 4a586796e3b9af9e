/* test_gpu_kernels.c - the CUDA grouped products (src/gpu/qgemm_gpu.h) against the fp64 reference of
 * qgemm_ref.h, the same suite the CPU implementation passes (test_qgemm): every format alone on odd
 * shapes, all nine formats mixed in one launch with every X/Y type, with and without accumulation,
 * items of different shapes, deltas with mixed U/V formats and ranks, base + delta, activation-format U
 * in two stages, aligned rows (vector copies), many and few tokens per expert (both tile shapes), long
 * rows. Run twice: the default path (tensor cores for fp16/bf16 X) and CUDA cores only.
 * Tolerance (of sum |w x|, plus the rounding of a 16-bit output): 1e-4 on tensor cores (fp16/bf16 X),
 * 1e-5 on CUDA cores. Also: the mixed-format call is one kernel launch, bad arguments launch nothing.
 * Without a GPU (or without CUDA in the build) it checks that the API says so, prints SKIPPED and exits
 * 77 (ctest: skipped). */
#include "gpu_info.h"
#include "gpu_memory.h"
#ifndef GPU_TEST_LEVEL
#define GPU_TEST_LEVEL 2 /* ref_suite level: everything (test_qgemm_emu runs level 1 on the emulator) */
#endif
#include "qgemm.h"
#include "qgemm_gpu.h"
#include "qgemm_ref.h"
#include "testutil.h"

typedef struct {
    mp_gpu_qgemm *g;
    mp_gpu_path path;
} gpu_ctx;

/* device copies of the items' blocks (the same block may appear twice) */
static int upload_all(const mp_qtensor *const *q, int n, mp_gpu_qtensor **d)
{
    for (int i = 0; i < n; i++) {
        d[i] = NULL;
        if (q[i] && mp_gpu_qtensor_upload(q[i], &d[i]) < 0)
            return -1;
    }
    return 0;
}

static void free_all(mp_gpu_qtensor **d, int n)
{
    for (int i = 0; i < n; i++)
        mp_gpu_qtensor_destroy(d[i]);
}

/* X [rows_x, ldx] and Y [rows_y, ldy] to the device, run, Y back */
typedef struct {
    void *dx, *dy;
    size_t xb, yb;
} io_bufs;

static int io_in(io_bufs *b, const void *X, mp_qg_type xt, int64_t rows, int64_t ldx, const void *Y, mp_qg_type yt,
                 int64_t ldy)
{
    b->xb = mp_qg_type_size(xt) * (size_t)(rows * ldx);
    b->yb = mp_qg_type_size(yt) * (size_t)(rows * ldy);
    b->dx = b->dy = NULL;
    if (mp_gpu_alloc(&b->dx, b->xb) < 0 || mp_gpu_alloc(&b->dy, b->yb) < 0 ||
        mp_gpu_copy_to_device(b->dx, X, b->xb) < 0 || mp_gpu_copy_to_device(b->dy, Y, b->yb) < 0)
        return -1;
    return 0;
}

static int io_out(io_bufs *b, void *Y, int rc)
{
    if (rc >= 0)
        rc = mp_gpu_copy_to_host(Y, b->dy, b->yb);
    mp_gpu_free(b->dx);
    mp_gpu_free(b->dy);
    return rc;
}

static int gpu_grouped(void *ctx, const mp_qgemm_item *items, int count, const void *X, mp_qg_type xt, int64_t ldx,
                       void *Y, mp_qg_type yt, int64_t ldy, int accumulate)
{
    gpu_ctx *c = (gpu_ctx *)ctx;
    const mp_qtensor **q = (const mp_qtensor **)calloc((size_t)count, sizeof *q);
    mp_gpu_qtensor **d = (mp_gpu_qtensor **)calloc((size_t)count, sizeof *d);
    mp_gpu_qgemm_item *it = (mp_gpu_qgemm_item *)calloc((size_t)count, sizeof *it);
    int64_t rows = 0;
    for (int i = 0; i < count; i++) {
        q[i] = items[i].w;
        rows = items[i].row0 + items[i].rows > rows ? items[i].row0 + items[i].rows : rows;
    }
    io_bufs b = {NULL, NULL, 0, 0};
    int rc = upload_all(q, count, d);
    if (rc >= 0)
        rc = io_in(&b, X, xt, rows, ldx, Y, yt, ldy);
    if (rc >= 0) {
        for (int i = 0; i < count; i++)
            it[i] = (mp_gpu_qgemm_item){d[i], items[i].row0, items[i].rows};
        mp_gpu_qgemm_set_path(c->g, c->path);
        rc = mp_gpu_qgemm_grouped(c->g, it, count, b.dx, xt, ldx, b.dy, yt, ldy, accumulate, "test");
        if (rc >= 0)
            rc = mp_gpu_qgemm_sync(c->g);
    }
    rc = io_out(&b, Y, rc);
    free_all(d, count);
    free(q);
    free(d);
    free(it);
    return rc;
}

static int gpu_deltas(gpu_ctx *c, const mp_qtensor *base, int64_t rows_total, const mp_qdelta_item *items, int count,
                      const void *X, mp_qg_type xt, int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy)
{
    const mp_qtensor **q = (const mp_qtensor **)calloc((size_t)(2 * count + 1), sizeof *q);
    mp_gpu_qtensor **d = (mp_gpu_qtensor **)calloc((size_t)(2 * count + 1), sizeof *d);
    mp_gpu_qdelta_item *it = (mp_gpu_qdelta_item *)calloc((size_t)(count + 1), sizeof *it);
    int64_t rows = rows_total > 0 ? rows_total : 0;
    for (int i = 0; i < count; i++) {
        q[2 * i] = items[i].u;
        q[2 * i + 1] = items[i].v;
        rows = items[i].row0 + items[i].rows > rows ? items[i].row0 + items[i].rows : rows;
    }
    q[2 * count] = base;
    io_bufs b = {NULL, NULL, 0, 0};
    int rc = upload_all(q, 2 * count + 1, d);
    if (rc >= 0)
        rc = io_in(&b, X, xt, rows, ldx, Y, yt, ldy);
    if (rc >= 0) {
        for (int i = 0; i < count; i++)
            it[i] = (mp_gpu_qdelta_item){d[2 * i], d[2 * i + 1], items[i].row0, items[i].rows};
        mp_gpu_qgemm_set_path(c->g, c->path);
        rc = base ? mp_gpu_qgemm_base_delta(c->g, d[2 * count], rows_total, it, count, b.dx, xt, ldx, b.dy, yt, ldy,
                                            "test")
                  : mp_gpu_qgemm_delta(c->g, it, count, b.dx, xt, ldx, b.dy, yt, ldy, "test");
        if (rc >= 0)
            rc = mp_gpu_qgemm_sync(c->g);
    }
    rc = io_out(&b, Y, rc);
    free_all(d, 2 * count + 1);
    free(q);
    free(d);
    free(it);
    return rc;
}

static int gpu_delta(void *ctx, const mp_qdelta_item *items, int count, const void *X, mp_qg_type xt, int64_t ldx,
                     void *Y, mp_qg_type yt, int64_t ldy)
{
    return gpu_deltas((gpu_ctx *)ctx, NULL, -1, items, count, X, xt, ldx, Y, yt, ldy);
}

static int gpu_base_delta(void *ctx, const mp_qtensor *base, int64_t rows, const mp_qdelta_item *items, int count,
                          const void *X, mp_qg_type xt, int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy)
{
    return gpu_deltas((gpu_ctx *)ctx, base, rows, items, count, X, xt, ldx, Y, yt, ldy);
}

static double gpu_tol(void *ctx, mp_qg_type xt)
{
    const gpu_ctx *c = (gpu_ctx *)ctx;
    return c->path == MP_GPU_PATH_AUTO && xt != MP_QG_F32 ? 1e-4 : 1e-5;
}

/* launches per call: one for all formats with fp16 X; bf16 X sends the fp16 block to the CUDA cores */
static void launch_counts(mp_gpu_qgemm *g)
{
    mp_rng r;
    mp_rng_seed(&r, 11);
    const mp_qtensor *q[REF_NFORMATS];
    mp_qtensor *own[REF_NFORMATS];
    mp_gpu_qtensor *d[REF_NFORMATS];
    mp_gpu_qgemm_item it[REF_NFORMATS];
    for (int i = 0; i < REF_NFORMATS; i++)
        q[i] = own[i] = ref_block(&r, ref_fmt(REF_FORMATS[i]), 40, 128);
    CHECK_OK(upload_all(q, REF_NFORMATS, d));
    for (int i = 0; i < REF_NFORMATS; i++)
        it[i] = (mp_gpu_qgemm_item){d[i], 4 * i, 4};
    void *X = NULL, *Y = NULL;
    CHECK_OK(mp_gpu_alloc(&X, 4 * 36 * 128));
    CHECK_OK(mp_gpu_alloc(&Y, 4 * 36 * 40));
    mp_gpu_qgemm_set_path(g, MP_GPU_PATH_AUTO);
    CHECK_OK(mp_gpu_memset(X, 0, 4 * 36 * 128));
    const mp_qg_type xt[3] = {MP_QG_F16, MP_QG_BF16, MP_QG_F32};
    const int want[3] = {1, 2, 1};
    for (int a = 0; a < 3; a++) {
        CHECK_OK(mp_gpu_qgemm_grouped(g, it, REF_NFORMATS, X, xt[a], 128, Y, MP_QG_F32, 40, 0, "launches"));
        CHECK(mp_gpu_qgemm_last_launches(g) == want[a]);
    }
    CHECK_ERR(mp_gpu_qgemm_grouped(g, it, REF_NFORMATS, X, MP_QG_F16, 127, Y, MP_QG_F32, 40, 0, "layer 2 up"),
              MP_EUSAGE, "layer 2 up: item 0: W is [40, 128] but ldx = 127");
    CHECK(mp_gpu_qgemm_last_launches(g) == 0);
    it[1].row0 = 2;
    CHECK_ERR(mp_gpu_qgemm_grouped(g, it, REF_NFORMATS, X, MP_QG_F16, 128, Y, MP_QG_F32, 40, 0, "up"), MP_EUSAGE,
              "items 0 and 1 overlap");
    CHECK_OK(mp_gpu_qgemm_sync(g));
    mp_gpu_free(X);
    mp_gpu_free(Y);
    free_all(d, REF_NFORMATS);
    for (int i = 0; i < REF_NFORMATS; i++)
        mp_qtensor_destroy(own[i]);
}

int main(void)
{
    char build[256], dev[256];
    mp_gpu_build_info(build, sizeof build);
    int n = mp_gpu_device_count();
    if (n == 0) {
        /* the API must say why it cannot run, not crash */
        mp_gpu_qgemm *g = NULL;
        CHECK_ERR(mp_gpu_qgemm_create(NULL, &g), MP_EUSAGE, MOEPACK_HAVE_CUDA ? "no CUDA device" : "no CUDA support");
        CHECK(g == NULL);
        mp_rng r;
        mp_rng_seed(&r, 1);
        mp_qtensor *q = ref_block(&r, ref_fmt("w4g128"), 4, 8);
        mp_gpu_qtensor *d = NULL;
        CHECK_ERR(mp_gpu_qtensor_upload(q, &d), MP_EUSAGE, "GPU upload");
        mp_qtensor_destroy(q);
        if (MOEPACK_HAVE_CUDA)
            printf("SKIPPED: no GPU visible (%s; no CUDA device on this machine)\n", build);
        else
            printf("SKIPPED: no GPU visible (built without CUDA)\n");
        return t_failures ? 1 : 77;
    }
    mp_gpu_describe(0, dev, sizeof dev);
    printf("gpu_kernels: %s; %s\n", build, dev);
    gpu_ctx c = {NULL, MP_GPU_PATH_AUTO};
    CHECK_OK(mp_gpu_qgemm_create(NULL, &c.g));
    if (!c.g)
        return t_done("gpu_kernels");
    launch_counts(c.g);
    const char *names[2] = {"gpu (tensor cores where they apply)", "gpu (CUDA cores only)"};
    for (int p = 0; p < 2; p++) {
        c.path = p ? MP_GPU_PATH_SIMT : MP_GPU_PATH_AUTO;
        ref_impl im = {names[p], &c, gpu_grouped, gpu_delta, gpu_base_delta, gpu_tol, 0, 0, 0.0, 0.0};
        ref_suite(&im, 20240613 + (uint64_t)p, GPU_TEST_LEVEL);
        printf("%s: %lld comparisons, %lld failed; worst error / allowance %.3g (fp32 outputs: %.3g)\n", im.name,
               (long long)im.checks, (long long)im.failures, im.worst, im.worst32);
        t_checks += (int)im.checks;
        t_failures += (int)im.failures;
    }
    mp_gpu_qgemm_destroy(c.g);
    return t_done("gpu_kernels");
}
