/* test_qgemm.c - the CPU grouped products (src/qgemm.h) against the fp64 reference of qgemm_ref.h:
 * every format alone on odd shapes, all nine formats mixed in one call with every X/Y type and with and
 * without accumulation, items of different shapes, deltas with mixed U/V formats and ranks, base + delta,
 * activation-format U in two stages, aligned and longer shapes; tolerance 1e-5 of sum |w x| (fp32 sgemm
 * accumulation) plus the rounding of a 16-bit output. Then the argument checks. */
#include "qgemm.h"
#include "qgemm_ref.h"
#include "testutil.h"

static int cpu_grouped(void *ctx, const mp_qgemm_item *items, int count, const void *X, mp_qg_type xt, int64_t ldx,
                       void *Y, mp_qg_type yt, int64_t ldy, int accumulate)
{
    (void)ctx;
    return mp_qgemm_grouped(items, count, X, xt, ldx, Y, yt, ldy, accumulate, "test");
}

static int cpu_delta(void *ctx, const mp_qdelta_item *items, int count, const void *X, mp_qg_type xt, int64_t ldx,
                     void *Y, mp_qg_type yt, int64_t ldy)
{
    (void)ctx;
    return mp_qgemm_delta(items, count, X, xt, ldx, Y, yt, ldy, "test");
}

static int cpu_base_delta(void *ctx, const mp_qtensor *base, int64_t rows, const mp_qdelta_item *items, int count,
                          const void *X, mp_qg_type xt, int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy)
{
    (void)ctx;
    return mp_qgemm_base_delta(base, rows, items, count, X, xt, ldx, Y, yt, ldy, "test");
}

static double cpu_tol(void *ctx, mp_qg_type xt)
{
    (void)ctx;
    (void)xt;
    return 1e-5;
}

static void bad_arguments(void)
{
    mp_rng g;
    mp_rng_seed(&g, 5);
    mp_qtensor *W = ref_block(&g, ref_fmt("w4g128"), 10, 20), *U = ref_block(&g, ref_fmt("w8"), 10, 4),
               *V = ref_block(&g, ref_fmt("w3g128"), 5, 20);
    float X[40 * 20] = {0}, Y[40 * 10] = {0};
    mp_qgemm_item it[2] = {{W, 0, 5}, {W, 4, 3}};
    CHECK_ERR(mp_qgemm_grouped(it, 2, X, MP_QG_F32, 20, Y, MP_QG_F32, 10, 0, "layer 3 gate"), MP_EUSAGE,
              "layer 3 gate: items 0 and 1 overlap");
    it[1].row0 = 5;
    CHECK_OK(mp_qgemm_grouped(it, 2, X, MP_QG_F32, 20, Y, MP_QG_F32, 10, 0, "layer 3 gate"));
    CHECK_ERR(mp_qgemm_grouped(it, 2, X, MP_QG_F32, 19, Y, MP_QG_F32, 10, 0, "blk"), MP_EUSAGE, "ldx = 19");
    CHECK_ERR(mp_qgemm_grouped(it, 2, X, MP_QG_F32, 20, Y, MP_QG_F32, 9, 0, "blk"), MP_EUSAGE, "ldy = 9");
    CHECK_ERR(mp_qgemm_grouped(it, 2, X, (mp_qg_type)7, 20, Y, MP_QG_F32, 10, 0, "blk"), MP_EUSAGE,
              "unknown element type");
    it[0].rows = -1;
    CHECK_ERR(mp_qgemm_grouped(it, 2, X, MP_QG_F32, 20, Y, MP_QG_F32, 10, 0, "blk"), MP_EUSAGE,
              "item 0: negative rows");
    it[0].rows = 5;
    it[1].w = NULL;
    CHECK_ERR(mp_qgemm_grouped(it, 2, X, MP_QG_F32, 20, Y, MP_QG_F32, 10, 0, "blk"), MP_EUSAGE, "item 1: W is missing");
    CHECK_ERR(mp_qgemm_grouped(it, -1, X, MP_QG_F32, 20, Y, MP_QG_F32, 10, 0, "blk"), MP_EUSAGE, "no items");
    mp_qdelta_item d[2] = {{U, V, 0, 3}, {NULL, NULL, 3, 2}};
    CHECK_ERR(mp_qgemm_delta(d, 2, X, MP_QG_F32, 20, Y, MP_QG_F32, 10, "expert 2"), MP_EUSAGE,
              "expert 2: item 0: U [10, 4] and V [5, 20] have different ranks");
    mp_qtensor *V4 = ref_block(&g, ref_fmt("w3g128"), 4, 20), *B = ref_block(&g, ref_fmt("w2g64"), 10, 21);
    d[0].v = V4;
    CHECK_OK(mp_qgemm_delta(d, 2, X, MP_QG_F32, 20, Y, MP_QG_F32, 10, "expert 2"));
    d[1] = (mp_qdelta_item){U, NULL, 3, 2};
    CHECK_ERR(mp_qgemm_delta(d, 2, X, MP_QG_F32, 20, Y, MP_QG_F32, 10, "e"), MP_EUSAGE, "item 1: V is missing");
    d[1] = (mp_qdelta_item){NULL, NULL, 3, 2};
    CHECK_ERR(mp_qgemm_base_delta(B, 5, d, 2, X, MP_QG_F32, 21, Y, MP_QG_F32, 10, "base"), MP_EUSAGE,
              "does not match the base [10, 21]");
    CHECK_ERR(mp_qgemm_base_delta(W, 4, d, 2, X, MP_QG_F32, 20, Y, MP_QG_F32, 10, "base"), MP_EUSAGE, "outside [0, 4)");
    CHECK_OK(mp_qgemm_base_delta(W, 5, d, 2, X, MP_QG_F32, 20, Y, MP_QG_F32, 10, "base"));
    CHECK_ERR(mp_qgemm_base_delta(NULL, 5, d, 2, X, MP_QG_F32, 20, Y, MP_QG_F32, 10, "base"), MP_EUSAGE,
              "no base block");
    mp_qtensor_destroy(W);
    mp_qtensor_destroy(U);
    mp_qtensor_destroy(V);
    mp_qtensor_destroy(V4);
    mp_qtensor_destroy(B);
}

int main(void)
{
    ref_impl cpu = {"cpu", NULL, cpu_grouped, cpu_delta, cpu_base_delta, cpu_tol, 0, 0, 0.0, 0.0};
    ref_suite(&cpu, 20240613, 2);
    printf("qgemm cpu: %lld comparisons, %lld failed; worst error / allowance %.3g (fp32 outputs: %.3g)\n",
           (long long)cpu.checks, (long long)cpu.failures, cpu.worst, cpu.worst32);
    t_checks += (int)cpu.checks;
    t_failures += (int)cpu.failures;
    bad_arguments();
    return t_done("qgemm");
}
