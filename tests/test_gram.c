/* test_gram.c - the fp32-chunk Gram (src/gram.h) against the pure fp64 sum of the same rows:
 *  - synthetic activations shaped like a MoE layer's (channels of unequal scale, a few outliers, a mean
 *    offset, a SwiGLU-like heavy tail), 1000 tokens = 3 full chunks of 256 and a partial one: relative
 *    Frobenius error <= 1e-6 of the upper triangle (packed: nothing written past it), h_sq exact in fp64;
 *  - the hidden states transformers computed for the qwen2_moe_f32 and mixtral_f32 fixtures
 *    (ref.safetensors: hidden.*): the same bound. */
#include <stdint.h>

#include "gram.h"
#include "rng.h"
#include "safetensors.h"
#include "testutil.h"

/* accumulate X [t, n] in chunks of MP_GRAM_CHUNK with mp_gram_add_chunk and compare with the fp64 loop */
static double check_rows(const char *what, const float *X, int64_t t, int n)
{
    int64_t np = (int64_t)n * (n + 1) / 2; /* the packed triangle, then a guard */
    double *G = calloc((size_t)np + 64, sizeof(double)), *R = calloc((size_t)n * n, sizeof(double));
    double *sq = calloc((size_t)n, sizeof(double)), *rsq = calloc((size_t)n, sizeof(double));
    float *scr = malloc(sizeof(float) * MP_GRAM_PANEL * (size_t)n);
    for (int64_t i = np; i < np + 64; i++)
        G[i] = -7.0; /* nothing past the triangle is written */
    for (int64_t c0 = 0; c0 < t; c0 += MP_GRAM_CHUNK) {
        int nb = (int)(t - c0 < MP_GRAM_CHUNK ? t - c0 : MP_GRAM_CHUNK);
        mp_gram_add_chunk(X + c0 * n, nb, n, scr, G, sq);
    }
    for (int64_t r = 0; r < t; r++) /* the reference: every product and sum in fp64 */
        for (int64_t i = 0; i < n; i++) {
            double xi = X[r * n + i];
            rsq[i] += xi * xi;
            for (int64_t j = i; j < n; j++)
                R[i * n + j] += xi * (double)X[r * n + j];
        }
    double num = 0, den = 0, sqerr = 0;
    int guard_ok = 1;
    for (int64_t i = np; i < np + 64; i++)
        guard_ok &= G[i] == -7.0;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = i; j < n; j++) {
            double e = G[mp_gram_at(n, i, j)] - R[i * n + j];
            num += e * e, den += R[i * n + j] * R[i * n + j];
        }
        sqerr = fmax(sqerr, fabs(sq[i] - rsq[i]) / fmax(rsq[i], 1e-300));
    }
    double rel = sqrt(num / den);
    printf("  %-28s %5lld tokens x %4d: fp32-chunk Gram rel err %.2e, h_sq rel err %.1e\n", what, (long long)t, n, rel,
           sqerr);
    CHECK(rel <= 1e-6);
    CHECK(guard_ok);
    CHECK(sqerr <= 1e-12);
    free(G), free(R), free(sq), free(rsq), free(scr);
    return rel;
}

static void synthetic(void)
{
    const int64_t t = 1000;
    const int d = 192, f = 320;
    mp_rng g;
    mp_rng_seed(&g, 11);
    float *X = malloc(sizeof(float) * (size_t)(t * d)), *H = malloc(sizeof(float) * (size_t)(t * f));
    for (int64_t r = 0; r < t; r++)
        for (int j = 0; j < d; j++) { /* unequal channel scales, two outlier channels, a mean offset */
            double s = (j == 5 || j == 77) ? 40.0 : 0.2 + (j % 13) * 0.15;
            X[r * d + j] = (float)(0.3 + s * mp_rng_normal(&g));
        }
    for (int64_t r = 0; r < t; r++)
        for (int j = 0; j < f; j++) { /* silu(a) * b: heavy-tailed, mostly small */
            double a = 2 * mp_rng_normal(&g), b = mp_rng_normal(&g);
            H[r * f + j] = (float)(a / (1 + exp(-a)) * b);
        }
    check_rows("synthetic inputs x", X, t, d);
    check_rows("synthetic activations h", H, t, f);
    free(X), free(H);
}

static void fixture(const char *model)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s/ref.safetensors", MP_FIXTURES, model);
    mp_ckpt *c = NULL;
    CHECK_OK(mp_ckpt_open_file(dir, &c));
    if (!c)
        return;
    for (int l = 0; l < 3; l++) {
        char name[64];
        snprintf(name, sizeof name, "hidden.%d", l);
        const mp_tensor *h = mp_ckpt_find(c, name);
        if (!h)
            continue;
        CHECK(h->dtype == MP_DT_F32 && h->ndim == 3);
        int n = (int)h->shape[2];
        int64_t t = h->numel / n;
        float *X = malloc(sizeof(float) * (size_t)h->numel);
        memcpy(X, h->data, sizeof(float) * (size_t)h->numel);
        char what[96];
        snprintf(what, sizeof what, "%s %s", model, name);
        check_rows(what, X, t, n);
        free(X);
    }
    mp_ckpt_close(c);
}

int main(void)
{
    synthetic();
    fixture("qwen2_moe_f32");
    fixture("mixtral_f32");
    return t_done("gram");
}
