/* test_gweights.c MODEL:OUTDIR... - the MoE units of a compressed model run on the GPU (io/gweights.h)
 * against the CPU provider (io/cweights.h, whose forward pass the output test checks against the exported
 * checkpoint): for every unit of every MoE layer (routed experts, the shared expert) and 1, 5 and 37 tokens
 * (one and two row tiles of the kernels), on the same random inputs, every token's output row of gweights
 * equals cweights' within 1e-5 relative (2-norm of the difference over that of the row). The one exception
 * is a property of the activation formats, not of the kernels: a part in w8a8/w4a4 whose input is computed
 * (U's input T = X V^T; the down projection's input silu(g) * u) quantizes it per token, and where a value
 * sits at a rounding tie of the grid (always the row's largest negative value, x / s = -(2^b - 1) / 2) an
 * fp32 sum taken in another order lands on the neighbouring code. The test recomputes the CPU side (checked
 * equal to cweights to 1e-6), marks such tokens, lets them differ (by less than 0.5) and counts them.
 * The outputs come from tests/gweights_setup.sh: decomposition on and off, activation formats on the base,
 * U, V and dense blocks, group and channel formats, rank-0 deltas, a shared expert. The units are visited
 * layer by layer and then once more out of order (the device-resident base and unit are replaced
 * correctly), and a call with 0 tokens is accepted.
 * Built twice: test_gweights runs on the real device (without one it checks that mp_gweights_open refuses
 * with MP_EUSAGE and exits 77, skipped, saying so); test_gweights_emu runs the same code with the CUDA
 * kernels on the CPU emulator (tests/gpu_emu.cpp; every GPU function renamed by tests/gpu_emu_names.h). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cweights.h"
#include "gpu_info.h"
#include "gweights.h"
#include "outdir.h"
#include "quant.h"
#include "rng.h"
#include "testutil.h"

#ifdef MP_GPU_EMULATED
#define WHERE "emulated GPU"
#else
#define WHERE "GPU"
#endif

static double worst = 0;
static long tokens_total = 0, tokens_tied = 0, tokens_tied_differ = 0;

/* 1 when a row x [k] that an activation format quantizes per token (mp_quant_act, `bits`) has a value
 * within 1e-3 of a step of a rounding boundary of its grid (x / s at k + 1/2, below the clamp at the top;
 * the row's largest negative value, at -(2^bits - 1) / 2, always is one): there fp32 sums taken in another
 * order (the GPU's) may give the neighbouring code */
static int near_tie(const float *x, int64_t k, int bits)
{
    const double qhalf = ((1 << bits) - 1) / 2.0, top = (1 << (bits - 1)) - 1;
    float amax = 0;
    for (int64_t i = 0; i < k; i++)
        amax = fmaxf(amax, fabsf(x[i]));
    if (amax == 0)
        return 0;
    const double s = amax / qhalf;
    for (int64_t i = 0; i < k; i++) {
        const double v = x[i] / s;
        if (v < top && fabs(v - floor(v) - 0.5) < 1e-3)
            return 1;
    }
    return 0;
}

/* out [n, m] = X [n, k] through the factored projection f, in cweights' order of operations; tie[i] is set
 * when an activation-format part quantizes a computed input of token i near a boundary (T = X V^T always
 * is computed; X is when xc) */
static void cpu_project(const mp_outdir_factors *f, const float *X, int n, int xc, float *out, char *tie)
{
    const int64_t m = f->m, k = f->n, r = f->rank;
    float *xq = malloc(sizeof(float) * (size_t)(n * k)), *t = malloc(sizeof(float) * (size_t)(n * r + 1)),
          *tq = malloc(sizeof(float) * (size_t)(n * r + 1));
    for (int i = 0; i < n; i++)
        tie[i] |= xc && ((f->act_w && near_tie(X + i * k, k, f->act_w)) ||
                         (r > 0 && f->act_v && near_tie(X + i * k, k, f->act_v)));
    if (f->act_w)
        mp_quant_act(X, n, k, f->act_w, xq);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)m, (int)k, 1.0f, f->act_w ? xq : X, (int)k, f->W,
                (int)k, 0.0f, out, (int)m);
    if (r > 0) {
        if (f->act_v)
            mp_quant_act(X, n, k, f->act_v, xq);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)r, (int)k, 1.0f, f->act_v ? xq : X, (int)k, f->V,
                    (int)k, 0.0f, t, (int)r);
        for (int i = 0; i < n; i++)
            tie[i] |= f->act_u && near_tie(t + i * r, r, f->act_u);
        if (f->act_u)
            mp_quant_act(t, n, r, f->act_u, tq);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)m, (int)r, 1.0f, f->act_u ? tq : t, (int)r, f->U,
                    (int)r, 1.0f, out, (int)m);
    }
    free(xq), free(t), free(tq);
}

/* unit u of layer l on n random tokens through both providers: every token's output row equal within 1e-5
 * relative, except tokens where an activation-format part saw a computed input at a rounding tie (counted;
 * their rows may differ by the step of one code) */
static void compare(mp_outdir *o, const mp_weights *cw, const mp_weights *gw, int l, int u, int n, uint64_t seed)
{
    const mp_config *c = cw->cfg;
    const int64_t d = c->hidden;
    float *X = malloc(sizeof(float) * (size_t)(n * d + 1)), *Yc = malloc(sizeof(float) * (size_t)(n * d + 1)),
          *Yg = malloc(sizeof(float) * (size_t)(n * d + 1)), *Yr = malloc(sizeof(float) * (size_t)(n * d + 1));
    char *tie = calloc((size_t)n, 1);
    mp_rng r;
    mp_rng_seed(&r, seed);
    for (int64_t i = 0; i < n * d; i++)
        X[i] = (float)mp_rng_normal(&r);
    for (int64_t i = 0; i < n * d; i++)
        Yg[i] = NAN;
    CHECK_OK(cw->unit(cw->ctx, l, u, X, n, Yc));
    CHECK_OK(gw->unit(gw->ctx, l, u, X, n, Yg));
    /* the CPU provider's computation once more, to find the ties */
    mp_outdir_factors f[3];
    for (int p = 0; p < 3; p++)
        CHECK_OK(mp_outdir_read_factors(o, l, u, p, &f[p]));
    const int64_t ff = f[0].m;
    float *g = malloc(sizeof(float) * (size_t)(n * ff)), *a = malloc(sizeof(float) * (size_t)(n * ff));
    cpu_project(&f[0], X, n, 0, g, tie);
    cpu_project(&f[1], X, n, 0, a, tie);
    for (int64_t i = 0; i < n * ff; i++)
        a[i] *= g[i] / (1.0f + expf(-g[i]));
    cpu_project(&f[2], a, n, 1, Yr, tie);
    for (int i = 0; i < n; i++) {
        double num = 0, den = 0, numr = 0;
        for (int64_t j = i * d; j < (i + 1) * d; j++) {
            const double e = (double)Yg[j] - Yc[j], er = (double)Yr[j] - Yc[j];
            num += e * e, den += (double)Yc[j] * Yc[j], numr += er * er;
        }
        const double rel = sqrt(num / den);
        CHECK(den > 0 && sqrt(numr / den) <= 1e-6); /* the tie finder computes what cweights computes */
        tokens_total++;
        if (tie[i]) {
            tokens_tied++;
            tokens_tied_differ += !(rel <= 1e-5);
            CHECK(rel < 0.5);
            continue;
        }
        if (!(rel <= 1e-5))
            fprintf(stderr, "%s: layer %d unit %d, token %d of %d: relative difference %.3g (|y| %.3g)\n",
                    mp_outdir_dir(o), l, u, i, n, rel, sqrt(den));
        CHECK(den > 0 && rel <= 1e-5);
        if (rel > worst || rel != rel)
            worst = rel;
    }
    for (int p = 0; p < 3; p++)
        mp_outdir_factors_free(&f[p]);
    free(X), free(Yc), free(Yg), free(Yr), free(tie), free(g), free(a);
}

static void run_output(const char *model_dir, const char *out_dir)
{
    mp_model *m = NULL;
    mp_outdir *o = NULL;
    mp_cweights *cwp = NULL;
    mp_gweights *gwp = NULL;
    mp_weights cw, gw;
    CHECK_OK(mp_model_open(model_dir, &m));
    CHECK_OK(mp_outdir_open(out_dir, &o));
    if (!m || !o)
        goto out;
    CHECK_OK(mp_cweights_open(m, o, &cwp, &cw));
    CHECK_OK(mp_gweights_open(m, o, 0, &gwp, &gw));
    if (!cwp || !gwp)
        goto out;
    CHECK(gw.cfg == cw.cfg && gw.unit && gw.layer && gw.expert && gw.embed && gw.head);
    const mp_config *c = cw.cfg;
    const int units = c->n_experts + (c->n_shared > 0 && c->shared_ffn > 0);
    const int ns[3] = {1, 5, 37};
    int calls = 0, first_moe = -1;
    uint64_t seed = 1;
    for (int l = 0; l < c->n_layers; l++) {
        if (!c->is_moe[l])
            continue;
        if (first_moe < 0)
            first_moe = l;
        for (int u = 0; u < units; u++)
            for (int k = 0; k < 3; k++, calls++)
                compare(o, &cw, &gw, l, u, ns[k], seed++);
    }
    /* out of order: back to the first layer (its base uploaded again), the last unit then the first */
    compare(o, &cw, &gw, first_moe, units - 1, 9, seed++);
    compare(o, &cw, &gw, first_moe, 0, 9, seed++);
    float dummy = 0;
    CHECK_OK(gw.unit(gw.ctx, first_moe, 0, &dummy, 0, &dummy));
    printf("%s (" WHERE "): %d units x 3 token counts + 2 out of order, decomposition %s: compared with the CPU "
           "provider\n",
           out_dir, calls / 3, mp_outdir_has_delta(o) ? "on" : "off");
out:
    mp_gweights_close(gwp);
    mp_cweights_close(cwp);
    mp_outdir_close(o);
    mp_model_close(m);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_gweights MODEL:OUTDIR...\n");
        return 2;
    }
    if (mp_gpu_device_count() == 0) {
        char info[256], first[4096], *sep;
        mp_model *m = NULL;
        mp_outdir *o = NULL;
        mp_gweights *g = NULL;
        mp_weights w;
        snprintf(first, sizeof first, "%s", argv[1]);
        if ((sep = strchr(first, ':')))
            *sep = '\0';
        CHECK_OK(mp_model_open(first, &m));
        CHECK_OK(mp_outdir_open(sep ? sep + 1 : "", &o));
        if (m && o)
            CHECK_ERR(mp_gweights_open(m, o, 0, &g, &w), MP_EUSAGE, "GPU validation on device 0");
        mp_gpu_build_info(info, sizeof info);
        printf("SKIPPED: no GPU visible (build: %s); mp_gweights_open refuses: %s\n", info, mp_error_message());
        mp_outdir_close(o);
        mp_model_close(m);
        return t_failures ? 1 : 77;
    }
    for (int i = 1; i < argc; i++) {
        char buf[4096], *sep;
        snprintf(buf, sizeof buf, "%s", argv[i]);
        if (!(sep = strchr(buf, ':'))) {
            fprintf(stderr, "test_gweights: %s is not MODEL:OUTDIR\n", argv[i]);
            return 2;
        }
        *sep = '\0';
        run_output(buf, sep + 1);
    }
    printf("%ld token rows: largest relative difference GPU vs CPU %.3g; %ld rows had an activation-quantized "
           "computed input at a rounding tie, %ld of them differ by more than 1e-5\n",
           tokens_total, worst, tokens_tied, tokens_tied_differ);
    return t_done("gweights (" WHERE ")");
}
