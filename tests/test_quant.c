/* test_quant.c - formats, packing, RTN/GPTQ and the losses of src/quant.h:
 *  - fp16 conversion (every half round-trips, ties to even), the format table, list parsing, stored bytes;
 *  - pack -> unpack round trip and the bit order for every width, RTN codes and dequantization against
 *    the grid formula on odd shapes (77 x 200, 5 x 129, 1 x 1, ...);
 *  - loss identities against direct fp64 measurement ||(W - Q) X^T||^2 (relative 1e-9): a block, a
 *    base-like block, a V factor through U, a U factor through V G V^T, both factors, a whole expert
 *    (gate/up on x, down on h = silu(gate x) * (up x)), activation formats on a token sample;
 *  - GPTQ against a plain column-loop GPTQ in fp64 written here (U = chol(H^-1), right-looking) on
 *    40 x 320 and odd shapes, GPTQ loss <= RTN loss on every block and format, damping retries, dead
 *    columns, bad input;
 *  - GPTQ against llm-compressor's quantize_weight (tests/fixtures/gptq_reference.safetensors,
 *    make_gptq_reference.py): identical codes on >= 99.9 % of elements, loss <= reference * 1.01. */
#include <cblas.h>
#include <lapacke.h>

#include "quant.h"
#include "dtype.h"
#include "rng.h"
#include "safetensors.h"
#include "testutil.h"

static const mp_qformat *fmt(const char *name)
{
    const mp_qformat *f = NULL;
    if (mp_qformat_find(name, &f) < 0) {
        fprintf(stderr, "no format %s\n", name);
        exit(1);
    }
    return f;
}

/* W [m, n]: Gaussian rows, per-column scales, a few outliers */
static float *rand_w(mp_rng *g, int64_t m, int64_t n)
{
    float *W = malloc(sizeof(float) * (size_t)(m * n));
    double *cs = malloc(sizeof(double) * (size_t)n);
    for (int64_t j = 0; j < n; j++)
        cs[j] = 0.02 * exp(0.3 * mp_rng_normal(g));
    for (int64_t i = 0; i < m * n; i++)
        W[i] = (float)(mp_rng_normal(g) * cs[i % n] * (mp_rng_uniform(g) < 0.003 ? 6.0 : 1.0));
    free(cs);
    return W;
}

/* X [t, n] float with AR(1)-correlated features (rho) and log-normal channel scales */
static float *rand_x(mp_rng *g, int64_t t, int64_t n, double rho)
{
    float *X = malloc(sizeof(float) * (size_t)(t * n));
    double *cs = malloc(sizeof(double) * (size_t)n);
    for (int64_t j = 0; j < n; j++)
        cs[j] = exp(0.5 * mp_rng_normal(g));
    for (int64_t r = 0; r < t; r++) {
        double prev = 0;
        for (int64_t j = 0; j < n; j++) {
            double v = j ? rho * prev + sqrt(1 - rho * rho) * mp_rng_normal(g) : mp_rng_normal(g);
            prev = v;
            X[r * n + j] = (float)(v * cs[j]);
        }
    }
    free(cs);
    return X;
}

/* G [n, n] += X^T X (fp64), X [t, n] double */
static void gram_add(const double *X, int64_t t, int64_t n, double *G)
{
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)n, (int)t, 1.0, X, (int)n, X, (int)n, 1.0, G,
                (int)n);
}

static double *to_f64(const float *a, int64_t k)
{
    double *d = malloc(sizeof(double) * (size_t)k);
    for (int64_t i = 0; i < k; i++)
        d[i] = a[i];
    return d;
}

static double *gram_of(const float *X, int64_t t, int64_t n)
{
    double *Xd = to_f64(X, t * n), *G = calloc((size_t)(n * n), sizeof(double));
    gram_add(Xd, t, n, G);
    free(Xd);
    return G;
}

/* ||E X^T||_F^2 for E [m, n], X [t, n], fp64: the squared output error on the tokens */
static double direct_err(const double *E, int64_t m, int64_t n, const double *X, int64_t t)
{
    double *Y = malloc(sizeof(double) * (size_t)(m * t)), s = 0;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)t, (int)n, 1.0, E, (int)n, X, (int)n, 0.0, Y,
                (int)t);
    for (int64_t i = 0; i < m * t; i++)
        s += Y[i] * Y[i];
    free(Y);
    return s;
}

static float *dequant(const mp_qtensor *q)
{
    float *o = malloc(sizeof(float) * (size_t)(q->m * q->n));
    mp_qtensor_dequant(q, o);
    return o;
}

static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-300); }

/* ---- fp16, table, parsing ------------------------------------------------------------------------- */
static void test_fp16_and_table(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 0x1f) == 0x1f)
            continue; /* inf/nan */
        if (mp_f32_to_f16(mp_f16_to_f32((uint16_t)h)) != h)
            bad++;
    }
    CHECK(bad == 0);
    CHECK(mp_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);     /* tie -> even */
    CHECK(mp_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02); /* tie -> even */
    CHECK(mp_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01);
    CHECK(mp_f32_to_f16(0x1p-25f) == 0x0000); /* subnormal tie -> even (0) */
    CHECK(mp_f32_to_f16(3 * 0x1p-25f) == 0x0002);
    CHECK(mp_f32_to_f16(65519.0f) == 0x7bff && mp_f32_to_f16(65520.0f) == 0x7c00);
#ifdef __FLT16_MAX__
    mp_rng g;
    mp_rng_seed(&g, 16);
    int diff = 0;
    for (int i = 0; i < 200000; i++) {
        float x = (float)(mp_rng_normal(&g) * exp(10 * mp_rng_normal(&g)));
        _Float16 h = (_Float16)x;
        uint16_t u;
        memcpy(&u, &h, 2);
        diff += u != mp_f32_to_f16(x);
    }
    CHECK(diff == 0);
#endif

    const char *names[] = {"fp16", "w8", "w4", "w4g128", "w3g128", "w2g128", "w2g64", "w8a8", "w4a4"};
    const double bpw[] = {16, 8, 4, 4.25, 3.25, 2.25, 2.5, 8, 4};
    CHECK(mp_qformat_count() == 9);
    for (int i = 0; i < 9; i++) {
        const mp_qformat *f = fmt(names[i]);
        CHECK(f == mp_qformat_at(i) && f->bits_per_weight == bpw[i]);
        /* stored bits per weight of a large aligned block: the nominal value (+ per-row scales) */
        int64_t m = 4096, n = 14336;
        double bits = 8.0 * (double)mp_qformat_bytes(f, m, n) / (double)(m * n);
        double extra = f->bits == 16 || f->group ? 0 : (f->symmetric ? 16.0 : 32.0) / (double)n;
        CHECK_NEAR(bits, bpw[i] + extra, 1e-12);
    }
    CHECK(fmt("w8a8")->act_bits == 8 && fmt("w8a8")->symmetric && fmt("w4a4")->act_bits == 4);
    CHECK(fmt("w2g64")->group == 64 && fmt("w4")->group == 0);
    /* exact bytes with a partial group and padded rows: 5 x 129 at w4g128: 17 words + 2 scales + 2 zeros */
    CHECK(mp_qformat_bytes(fmt("w4g128"), 5, 129) == 5 * (17 * 4 + 2 * 2 + 2 * 2));
    CHECK(mp_qformat_bytes(fmt("w3g128"), 1, 11) == 8 + 4);    /* 33 bits -> 2 words */
    CHECK(mp_qformat_bytes(fmt("w8a8"), 3, 5) == 3 * (8 + 2)); /* no zeros */
    CHECK(mp_qformat_bytes(fmt("fp16"), 3, 5) == 3 * 12);
    CHECK(mp_qformat_groups(fmt("w4g128"), 77) == 1 && mp_qformat_group_width(fmt("w4g128"), 77) == 77);
    CHECK(mp_qformat_groups(fmt("w2g64"), 129) == 3);

    const mp_qformat *list[16];
    int k = -1;
    CHECK_OK(mp_qformat_parse_list(" w4g128, w3g128 ,w8a8", list, 16, &k));
    CHECK(k == 3 && list[0] == fmt("w4g128") && list[1] == fmt("w3g128") && list[2] == fmt("w8a8"));
    CHECK_ERR(mp_qformat_find("w5g7", list), MP_EUSAGE, "'w5g7'");
    CHECK_ERR(mp_qformat_find("w5g7", list), MP_EUSAGE, "known: fp16, w8");
    CHECK_ERR(mp_qformat_parse_list("w4,w5g7", list, 16, &k), MP_EUSAGE, "'w5g7'");
    CHECK_ERR(mp_qformat_parse_list("", list, 16, &k), MP_EUSAGE, "empty");
    CHECK_ERR(mp_qformat_parse_list("  ", list, 16, &k), MP_EUSAGE, "empty");
    CHECK_ERR(mp_qformat_parse_list("w4,,w8", list, 16, &k), MP_EUSAGE, "empty entry");
    CHECK_ERR(mp_qformat_parse_list("w4,w8,w4", list, 16, &k), MP_EUSAGE, "twice");
    CHECK_ERR(mp_qformat_parse_list("w4,w8", list, 1, &k), MP_EUSAGE, "more than 1");
}

/* ---- packing -------------------------------------------------------------------------------------- */
static void test_packing(void)
{
    /* bit order */
    uint16_t c8[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    uint32_t w[4] = {0};
    CHECK_OK(mp_pack_codes(c8, 1, 8, 4, w));
    CHECK(w[0] == 0x76543210u);
    uint16_t c3[11] = {0};
    c3[10] = 7; /* bits 30..32 of the stream: bits 30, 31 of word 0 and bit 0 of word 1 */
    CHECK_OK(mp_pack_codes(c3, 1, 11, 3, w));
    CHECK(w[0] == 0xc0000000u && w[1] == 1u);
    c3[0] = 5;
    c3[1] = 3;
    c3[10] = 2; /* 5 | 3 << 3 | 2 << 30 -> bit 31 set, nothing in word 1 */
    CHECK_OK(mp_pack_codes(c3, 1, 11, 3, w));
    CHECK(w[0] == (5u | 3u << 3 | 2u << 30) && w[1] == 0u);
    uint16_t c2[17];
    for (int i = 0; i < 17; i++)
        c2[i] = (uint16_t)(i & 3);
    CHECK_OK(mp_pack_codes(c2, 1, 17, 2, w));
    CHECK(w[0] == 0xe4e4e4e4u && w[1] == 0u); /* codes 0,1,2,3 -> 0b11100100; code 16 = 0 in word 1 */
    uint16_t c16[3] = {0x3c00, 0xabcd, 0x0001};
    CHECK_OK(mp_pack_codes(c16, 1, 3, 16, w));
    CHECK(w[0] == 0xabcd3c00u && w[1] == 0x0001u);
    uint16_t too_wide = 8;
    CHECK_ERR(mp_pack_codes(&too_wide, 1, 1, 3, w), MP_EUSAGE, "does not fit in 3 bits");

    /* random round trips for every width on odd shapes */
    const int64_t shapes[][2] = {{77, 200}, {5, 129}, {1, 1}, {3, 31}, {2, 1000}, {7, 33}};
    const int widths[] = {2, 3, 4, 8, 16};
    mp_rng g;
    mp_rng_seed(&g, 3);
    int bad = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int b = 0; b < 5; b++) {
            int64_t m = shapes[s][0], n = shapes[s][1];
            int bits = widths[b];
            uint16_t *c = malloc(2 * (size_t)(m * n)), *c2b = malloc(2 * (size_t)(m * n));
            uint32_t *pw = malloc(4 * (size_t)(m * mp_packed_words(n, bits)));
            for (int64_t i = 0; i < m * n; i++)
                c[i] = (uint16_t)(mp_rng_next(&g) & ((1u << bits) - 1));
            CHECK_OK(mp_pack_codes(c, m, n, bits, pw));
            mp_unpack_codes(pw, m, n, bits, c2b);
            bad += memcmp(c, c2b, 2 * (size_t)(m * n)) != 0;
            /* padding bits are zero */
            int64_t wpr = mp_packed_words(n, bits), used = n * bits - (wpr - 1) * 32;
            for (int64_t r = 0; r < m; r++)
                if (used < 32)
                    bad += (pw[r * wpr + wpr - 1] >> used) != 0;
            free(c);
            free(c2b);
            free(pw);
        }
    CHECK(bad == 0);

    /* every format: RTN codes follow the grid formula with the stored fp16 scale/zero, the scales are the
     * min-max ones, and dequantization is exactly (code - zero) * scale */
    int n_fmt = mp_qformat_count(), bad_codes = 0, bad_vals = 0, bad_scales = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int fi = 0; fi < n_fmt; fi++) {
            const mp_qformat *f = mp_qformat_at(fi);
            int64_t m = shapes[s][0], n = shapes[s][1];
            float *W = rand_w(&g, m, n);
            mp_qtensor *q = NULL;
            CHECK_OK(mp_quant_rtn(f, W, m, n, "pack test", &q));
            if (!q) {
                free(W);
                continue;
            }
            uint16_t *codes = malloc(2 * (size_t)(m * n));
            mp_qtensor_codes(q, codes);
            float *dq = dequant(q);
            int half = 1 << (f->bits - 1);
            float qmax = (float)((1 << f->bits) - 1);
            for (int64_t r = 0; r < m; r++)
                for (int64_t i = 0; i < n; i++) {
                    float wv = W[r * n + i], ref;
                    if (f->bits == 16) {
                        ref = mp_f16_to_f32(mp_f32_to_f16(wv));
                        bad_codes += codes[r * n + i] != mp_f32_to_f16(wv);
                    } else {
                        int64_t k = i / q->group;
                        float sc = mp_f16_to_f32(q->scales[r * q->ngroups + k]);
                        int z = q->zeros ? (int)mp_f16_to_f32(q->zeros[r * q->ngroups + k]) : half;
                        float t = fminf(fmaxf(wv / sc + (float)(z - half), (float)-half), (float)(half - 1));
                        int code = (int)rintf(t) + half;
                        bad_codes += codes[r * n + i] != code;
                        ref = (float)(codes[r * n + i] - z) * sc;
                        if (i % q->group == 0) { /* the group's min-max scale */
                            int64_t c1 = i + q->group < n ? i + q->group : n;
                            float mn = 0, mx = 0;
                            for (int64_t c = i; c < c1; c++)
                                mn = fminf(mn, W[r * n + c]), mx = fmaxf(mx, W[r * n + c]);
                            float s0 = f->symmetric ? fmaxf(-mn, mx) / (qmax / 2) : (mx - mn) / qmax;
                            uint16_t h = mp_f32_to_f16(s0 == 0 ? 1.0f : s0);
                            bad_scales += q->scales[r * q->ngroups + k] != (h ? h : 1);
                        }
                    }
                    bad_vals += memcmp(&ref, &dq[r * n + i], sizeof ref) != 0;
                }
            free(codes);
            free(dq);
            free(W);
            mp_qtensor_destroy(q);
        }
    printf("packing: round trips of 2/3/4/8/16-bit codes on 6 shapes, RTN of 9 formats: %d code, %d value, %d "
           "scale mismatches\n",
           bad_codes, bad_vals, bad_scales);
    CHECK(bad_codes == 0 && bad_vals == 0 && bad_scales == 0);

    /* a group larger than the block is one group per row: w4g128 on 77 columns == w4 */
    float *W = rand_w(&g, 9, 77);
    mp_qtensor *a = NULL, *b = NULL;
    CHECK_OK(mp_quant_rtn(fmt("w4g128"), W, 9, 77, "g>n", &a));
    CHECK_OK(mp_quant_rtn(fmt("w4"), W, 9, 77, "g>n", &b));
    CHECK(a && b && a->ngroups == 1 && !memcmp(a->qweight, b->qweight, 4 * (size_t)(9 * a->words_per_row)) &&
          !memcmp(a->scales, b->scales, 2 * 9) && !memcmp(a->zeros, b->zeros, 2 * 9));
    mp_qtensor_destroy(a);
    mp_qtensor_destroy(b);
    /* zero rows and tiny groups stay finite and dequantize to (nearly) the weights */
    for (int i = 0; i < 77; i++)
        W[i] = 0.0f, W[77 + i] = 1e-9f * (float)(i - 30);
    CHECK_OK(mp_quant_rtn(fmt("w4g128"), W, 9, 77, "tiny", &a));
    if (a) {
        float *dq = dequant(a);
        int ok = 1;
        for (int i = 0; i < 77; i++)
            ok &= dq[i] == 0.0f && fabsf(dq[77 + i] - W[77 + i]) <= 1e-7f;
        CHECK(ok);
        free(dq);
        mp_qtensor_destroy(a);
    }
    free(W);
}

/* ---- loss identities ------------------------------------------------------------------------------ */
static double worst_identity = 0;

static void identity(const char *what, double formula, double direct)
{
    double r = rel(formula, direct);
    worst_identity = fmax(worst_identity, r);
    printf("  %-38s tr(E G E^T) = %-14.9g direct = %-14.9g rel %.1e\n", what, formula, direct, r);
    CHECK(r <= 1e-9);
}

static double *diff64(const float *A, const float *B, int64_t k)
{
    double *d = malloc(sizeof(double) * (size_t)k);
    for (int64_t i = 0; i < k; i++)
        d[i] = (double)A[i] - (double)B[i];
    return d;
}

static void test_loss_identities(void)
{
    printf("loss identities (fp64):\n");
    mp_rng g;
    mp_rng_seed(&g, 21);
    /* an ordinary block with a partial group: n = 160 = 128 + 32 */
    {
        int64_t m = 48, n = 160, t = 3 * n;
        float *W = rand_w(&g, m, n), *X = rand_x(&g, t, n, 0.7);
        double *G = gram_of(X, t, n), *Xd = to_f64(X, t * n);
        const char *fs[] = {"w4g128", "w3g128", "w2g64", "w8", "fp16"};
        for (int k = 0; k < 5; k++)
            for (int meth = 0; meth < 2; meth++) {
                mp_qblock blk = {.W = W, .m = m, .n = n, .H = G, .label = "block"};
                mp_qresult res;
                mp_qtensor *q = NULL;
                CHECK_OK(mp_quant_measure(fmt(fs[k]), meth, &blk, NULL, &res, &q));
                if (!q)
                    continue;
                float *Wq = dequant(q);
                double *E = diff64(W, Wq, m * n);
                char what[64];
                snprintf(what, sizeof what, "block %s %s", fs[k], meth ? "GPTQ" : "RTN");
                identity(what, res.loss, direct_err(E, m, n, Xd, t));
                CHECK(res.bytes == mp_qformat_bytes(fmt(fs[k]), m, n));
                free(Wq);
                free(E);
                mp_qtensor_destroy(q);
            }
        free(W);
        free(X);
        free(G);
        free(Xd);
    }
    /* base-like block: the merge of 4 experts, H = sum of their Grams, loss = sum of their output errors */
    {
        int64_t m = 40, n = 136, E4 = 4, t[4] = {150, 300, 90, 408};
        float *Wb = calloc((size_t)(m * n), sizeof(float));
        double *H = calloc((size_t)(n * n), sizeof(double)), *Xd[4];
        for (int e = 0; e < E4; e++) {
            float *We = rand_w(&g, m, n), *X = rand_x(&g, t[e], n, 0.5 + 0.1 * e);
            for (int64_t i = 0; i < m * n; i++)
                Wb[i] += We[i] / (float)E4;
            Xd[e] = to_f64(X, t[e] * n);
            gram_add(Xd[e], t[e], n, H);
            free(We);
            free(X);
        }
        mp_qtensor *q = NULL;
        mp_gptq_info info;
        CHECK_OK(mp_quant_gptq(fmt("w4g128"), Wb, m, n, H, NULL, "base", &q, &info));
        float *Wq = dequant(q);
        double *E = diff64(Wb, Wq, m * n), direct = 0, formula;
        for (int e = 0; e < E4; e++)
            direct += direct_err(E, m, n, Xd[e], t[e]);
        CHECK_OK(mp_loss_gram(Wb, Wq, m, n, H, NULL, "base", &formula));
        identity("base (4 experts) w4g128 GPTQ", formula, direct);
        for (int e = 0; e < E4; e++)
            free(Xd[e]);
        free(Wb);
        free(H);
        free(Wq);
        free(E);
        mp_qtensor_destroy(q);
    }
    /* delta factors U [m, r], V [r, n] with inputs X [t, n] */
    {
        int64_t m = 72, r = 24, n = 150, t = 3 * n;
        float *U = rand_w(&g, m, r), *V = rand_w(&g, r, n), *X = rand_x(&g, t, n, 0.8);
        for (int64_t i = 0; i < m * r; i++)
            U[i] *= 20.0f;
        double *G = gram_of(X, t, n), *Xd = to_f64(X, t * n);
        double *Ud = to_f64(U, m * r), *Vd = to_f64(V, r * n), *HU = malloc(sizeof(double) * (size_t)(r * r));
        double *O = calloc((size_t)(r * r), sizeof(double));
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r, (int)r, (int)m, 1.0, Ud, (int)r, Ud, (int)r, 0.0,
                    O, (int)r);
        CHECK_OK(mp_factor_gram(V, r, n, G, HU));
        mp_qtensor *qv = NULL, *qu = NULL;
        mp_qblock bv = {.W = V, .m = r, .n = n, .H = G, .O = O, .label = "V"};
        mp_qblock bu = {.W = U, .m = m, .n = r, .H = HU, .label = "U"};
        mp_qresult rv, ru;
        CHECK_OK(mp_quant_measure(fmt("w3g128"), MP_QUANT_GPTQ, &bv, NULL, &rv, &qv));
        CHECK_OK(mp_quant_measure(fmt("w4"), MP_QUANT_GPTQ, &bu, NULL, &ru, &qu));
        float *Vq = dequant(qv), *Uq = dequant(qu);
        double *Vqd = to_f64(Vq, r * n), *Uqd = to_f64(Uq, m * r);
        double *D = malloc(sizeof(double) * (size_t)(m * n)), *EV = diff64(V, Vq, r * n), *EU = diff64(U, Uq, m * r);
        double lf;
        /* V through U: U (V - Vq) */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, 1.0, Ud, (int)r, EV, (int)n, 0.0,
                    D, (int)n);
        double dv = direct_err(D, m, n, Xd, t);
        identity("V factor w3g128 (measure, O = U^T U)", rv.loss, dv);
        CHECK_OK(mp_loss_factors(U, NULL, m, r, V, Vq, n, G, "V", &lf));
        identity("V factor (mp_loss_factors)", lf, dv);
        /* U through V: (U - Uq) V */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, 1.0, EU, (int)r, Vd, (int)n, 0.0,
                    D, (int)n);
        double du = direct_err(D, m, n, Xd, t);
        identity("U factor w4 (measure, H = V G V^T)", ru.loss, du);
        CHECK_OK(mp_loss_factors(U, Uq, m, r, V, NULL, n, G, "U", &lf));
        identity("U factor (mp_loss_factors)", lf, du);
        /* both: U V - Uq Vq */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, 1.0, Ud, (int)r, Vd, (int)n, 0.0,
                    D, (int)n);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, -1.0, Uqd, (int)r, Vqd, (int)n,
                    1.0, D, (int)n);
        double db = direct_err(D, m, n, Xd, t);
        CHECK_OK(mp_loss_factors(U, Uq, m, r, V, Vq, n, G, "UV", &lf));
        identity("U and V (mp_loss_factors)", lf, db);
        printf("  delta losses: V only %.6g, U only %.6g, both %.6g (sum of the parts %.6g)\n", dv, du, db, dv + du);
        free(U), free(V), free(X), free(G), free(Xd), free(Ud), free(Vd), free(HU), free(O);
        free(Vq), free(Uq), free(Vqd), free(Uqd), free(D), free(EV), free(EU);
        mp_qtensor_destroy(qv);
        mp_qtensor_destroy(qu);
    }
    /* a whole expert: gate/up [f, d] on x, down [d, f] on h = silu(gate x) * (up x) */
    {
        int64_t d = 96, f = 136, t = 3 * f;
        float *Wg = rand_w(&g, f, d), *Wu = rand_w(&g, f, d), *Wd = rand_w(&g, d, f), *X = rand_x(&g, t, d, 0.6);
        for (int64_t i = 0; i < f * d; i++)
            Wg[i] *= 10.0f, Wu[i] *= 10.0f;
        double *Xd = to_f64(X, t * d), *Hd = malloc(sizeof(double) * (size_t)(t * f));
        double *Wgd = to_f64(Wg, f * d), *Wud = to_f64(Wu, f * d), *A = malloc(sizeof(double) * (size_t)(t * f));
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)t, (int)f, (int)d, 1.0, Xd, (int)d, Wgd, (int)d, 0.0,
                    A, (int)f);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)t, (int)f, (int)d, 1.0, Xd, (int)d, Wud, (int)d, 0.0,
                    Hd, (int)f);
        for (int64_t i = 0; i < t * f; i++)
            Hd[i] *= A[i] / (1.0 + exp(-A[i]));
        double *Gin = calloc((size_t)(d * d), sizeof(double)), *Gmid = calloc((size_t)(f * f), sizeof(double));
        gram_add(Xd, t, d, Gin);
        gram_add(Hd, t, f, Gmid);
        const float *Ws[3] = {Wg, Wu, Wd};
        const int64_t ms[3] = {f, f, d}, ns[3] = {d, d, f};
        const double *Gs[3] = {Gin, Gin, Gmid}, *ins[3] = {Xd, Xd, Hd};
        const char *fs[3] = {"w4g128", "w3g128", "w2g64"};
        for (int meth = 0; meth < 2; meth++) {
            double formula = 0, direct = 0;
            for (int p = 0; p < 3; p++) {
                mp_qblock blk = {.W = Ws[p], .m = ms[p], .n = ns[p], .H = Gs[p], .label = "expert"};
                mp_qresult res;
                mp_qtensor *q = NULL;
                CHECK_OK(mp_quant_measure(fmt(fs[p]), meth, &blk, NULL, &res, &q));
                float *Wq = dequant(q);
                double *E = diff64(Ws[p], Wq, ms[p] * ns[p]);
                formula += res.loss;
                direct += direct_err(E, ms[p], ns[p], ins[p], t);
                free(Wq);
                free(E);
                mp_qtensor_destroy(q);
            }
            identity(meth ? "whole expert GPTQ (gate, up, down)" : "whole expert RTN (gate, up, down)", formula,
                     direct);
        }
        free(Wg), free(Wu), free(Wd), free(X), free(Xd), free(Hd), free(Wgd), free(Wud), free(A), free(Gin);
        free(Gmid);
    }
    /* activation formats on a sample: against a plain loop over tokens */
    {
        int64_t m = 40, n = 96, t = 64;
        float *W = rand_w(&g, m, n), *X = rand_x(&g, t, n, 0.5), *Xq = malloc(sizeof(float) * (size_t)(t * n));
        double *G = gram_of(X, t, n);
        const char *fs[2] = {"w8a8", "w4a4"};
        for (int k = 0; k < 2; k++) {
            const mp_qformat *f = fmt(fs[k]);
            mp_qblock blk = {.W = W, .m = m, .n = n, .H = G, .X = X, .t = t, .x_scale = 2.0, .label = "act"};
            mp_qresult res;
            mp_qtensor *q = NULL;
            CHECK_OK(mp_quant_measure(f, MP_QUANT_GPTQ, &blk, NULL, &res, &q));
            float *Wq = dequant(q);
            mp_quant_act(X, t, n, f->act_bits, Xq);
            /* the activation grid: per-token amax / (2^(b-1) - 1), codes in [-(2^(b-1) - 1), 2^(b-1) - 1]; the
             * row's largest |x| lands on a code exactly */
            int bad = 0, top = (1 << (f->act_bits - 1)) - 1;
            for (int64_t r = 0; r < t; r++) {
                float amax = 0;
                for (int64_t i = 0; i < n; i++)
                    amax = fmaxf(amax, fabsf(X[r * n + i]));
                float s = amax / (float)top;
                for (int64_t i = 0; i < n; i++) {
                    float c = rintf(Xq[r * n + i] / s);
                    bad += fabsf(Xq[r * n + i] - c * s) > 1e-6f * s * fabsf(c) || c < -top || c > top ||
                           fabsf(Xq[r * n + i] - X[r * n + i]) > 0.50001f * s;
                    bad += fabsf(X[r * n + i]) == amax && fabsf(fabsf(Xq[r * n + i]) - amax) > 1e-6f * amax;
                }
            }
            CHECK(bad == 0);
            double direct = 0, direct_w = 0;
            for (int64_t r = 0; r < t; r++)
                for (int64_t o = 0; o < m; o++) {
                    double y = 0, yq = 0, yw = 0;
                    for (int64_t i = 0; i < n; i++) {
                        y += (double)W[o * n + i] * X[r * n + i];
                        yq += (double)Wq[o * n + i] * Xq[r * n + i];
                        yw += (double)Wq[o * n + i] * X[r * n + i];
                    }
                    direct += (y - yq) * (y - yq);
                    direct_w += (y - yw) * (y - yw);
                }
            char what[64];
            snprintf(what, sizeof what, "%s sample loss (x_scale 2)", fs[k]);
            identity(what, res.loss, 2.0 * direct);
            snprintf(what, sizeof what, "%s weight part on the same tokens", fs[k]);
            identity(what, res.loss_gram, direct_w);
            CHECK(res.loss_sample > res.loss_gram); /* quantized activations add error */
            free(Wq);
            mp_qtensor_destroy(q);
        }
        free(W), free(X), free(Xq), free(G);
    }
    printf("loss identities: worst relative difference %.2e\n", worst_identity);
}

/* ---- GPTQ: plain fp64 reference, GPTQ vs RTN, damping, bad input ------------------------------- */

/* The textbook algorithm, column by column in fp64 (right-looking, U = upper Cholesky factor of H^-1,
 * group scales from the weights as updated by the earlier blocks, or static). Returns codes [m, n]. */
static void plain_gptq(const mp_qformat *f, const float *W, int64_t m, int64_t n, const double *H0, int act_order,
                       int static_groups, int64_t B, uint16_t *codes)
{
    double *H = malloc(sizeof(double) * (size_t)(n * n)), *Wp = malloc(sizeof(double) * (size_t)(m * n));
    int64_t *perm = malloc(sizeof(int64_t) * (size_t)n);
    int *dead = calloc((size_t)n, sizeof(int));
    int64_t g = mp_qformat_group_width(f, n), ng = mp_qformat_groups(f, n);
    int dynamic = !static_groups && !act_order && ng > 1, half = 1 << (f->bits - 1);
    float qmax = (float)((1 << f->bits) - 1);
    float *S = malloc(sizeof(float) * (size_t)(m * ng)), *Z = malloc(sizeof(float) * (size_t)(m * ng));
    for (int64_t i = 0; i < n; i++) {
        perm[i] = i;
        dead[i] = H0[i * n + i] == 0;
    }
    if (act_order) /* insertion sort by descending diag, stable */
        for (int64_t i = 1; i < n; i++)
            for (int64_t j = i; j > 0 && H0[perm[j] * n + perm[j]] > H0[perm[j - 1] * n + perm[j - 1]]; j--) {
                int64_t tmp = perm[j];
                perm[j] = perm[j - 1];
                perm[j - 1] = tmp;
            }
    double mean = 0;
    for (int64_t i = 0; i < n; i++)
        mean += dead[i] ? 1 : H0[i * n + i];
    mean /= (double)n;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < n; b++)
            H[a * n + b] = H0[perm[a] * n + perm[b]] + (a == b ? (dead[perm[a]] ? 1 : 0) + 0.01 * mean : 0);
    /* H^-1 then its upper Cholesky factor */
    LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', (int)n, H, (int)n);
    LAPACKE_dpotri(LAPACK_COL_MAJOR, 'U', (int)n, H, (int)n);
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < a; b++)
            H[b * n + a] = H[a * n + b]; /* col-major upper = row-major lower: symmetrise */
    LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', (int)n, H, (int)n);
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < n; j++)
            Wp[r * n + j] = dead[perm[j]] ? 0 : W[r * n + perm[j]];
    /* static / per-channel parameters from the original (dead-zeroed) weights */
    for (int64_t r = 0; r < m; r++)
        for (int64_t k = 0; k < ng; k++) {
            float mn = 0, mx = 0;
            for (int64_t c = k * g; c < (k + 1) * g && c < n; c++) {
                float w = dead[c] ? 0 : W[r * n + c];
                mn = fminf(mn, w), mx = fmaxf(mx, w);
            }
            float s = f->symmetric ? fmaxf(-mn, mx) / (qmax / 2) : (mx - mn) / qmax;
            float zs = f->symmetric ? 0 : rintf(fminf(fmaxf(-half - mn / s, -half), half - 1));
            S[r * ng + k] = mp_f16_to_f32(mp_f32_to_f16(s));
            Z[r * ng + k] = zs;
        }
    double *Err = malloc(sizeof(double) * (size_t)(m * B));
    for (int64_t i1 = 0; i1 < n; i1 += B) {
        int64_t i2 = i1 + B < n ? i1 + B : n;
        double *W1 = malloc(sizeof(double) * (size_t)(m * (i2 - i1)));
        for (int64_t r = 0; r < m; r++)
            for (int64_t j = i1; j < i2; j++)
                W1[r * (i2 - i1) + j - i1] = Wp[r * n + j];
        for (int64_t j = i1; j < i2; j++) {
            if (dynamic && j % g == 0)
                for (int64_t r = 0; r < m; r++) { /* from the global W: updated by the earlier blocks only */
                    float mn = 0, mx = 0;
                    for (int64_t c = j; c < j + g && c < n; c++)
                        mn = fminf(mn, (float)Wp[r * n + c]), mx = fmaxf(mx, (float)Wp[r * n + c]);
                    float s = (mx - mn) / qmax;
                    S[r * ng + j / g] = mp_f16_to_f32(mp_f32_to_f16(s));
                    Z[r * ng + j / g] = rintf(fminf(fmaxf(-half - mn / s, -half), half - 1));
                }
            for (int64_t r = 0; r < m; r++) {
                int64_t k = perm[j] / g;
                float w = (float)W1[r * (i2 - i1) + j - i1];
                float t = fminf(fmaxf(w / S[r * ng + k] + Z[r * ng + k], -half), half - 1), q = rintf(t);
                codes[r * n + perm[j]] = (uint16_t)((int)q + half);
                double qv = (double)((q - Z[r * ng + k]) * S[r * ng + k]);
                double e = (W1[r * (i2 - i1) + j - i1] - qv) / H[j * n + j];
                Err[r * B + j - i1] = e;
                for (int64_t l = j; l < i2; l++)
                    W1[r * (i2 - i1) + l - i1] -= e * H[j * n + l];
            }
        }
        for (int64_t r = 0; r < m; r++)
            for (int64_t l = i2; l < n; l++) {
                double s = 0;
                for (int64_t j = i1; j < i2; j++)
                    s += Err[r * B + j - i1] * H[j * n + l];
                Wp[r * n + l] -= s;
            }
        free(W1);
    }
    free(Err), free(H), free(Wp), free(perm), free(dead), free(S), free(Z);
}

static double gptq_loss(const mp_qtensor *q, const float *W, const double *H)
{
    float *Wq = dequant(q);
    double l = -1;
    CHECK_OK(mp_loss_gram(W, Wq, q->m, q->n, H, NULL, "loss", &l));
    free(Wq);
    return l;
}

static void test_gptq(void)
{
    mp_rng g;
    mp_rng_seed(&g, 5);
    /* our left-looking fp32 GPTQ against the plain column loop in fp64 */
    {
        int64_t m = 40, n = 320, t = 3 * n;
        float *W = rand_w(&g, m, n), *X = rand_x(&g, t, n, 0.8);
        double *H = gram_of(X, t, n);
        uint16_t *ref = malloc(2 * (size_t)(m * n)), *ours = malloc(2 * (size_t)(m * n));
        const char *fs[] = {"w4g128", "w3g128", "w2g64", "w4", "w8a8"};
        printf("GPTQ vs a plain fp64 column-loop GPTQ (40 x 320):\n");
        for (int k = 0; k < 5; k++)
            for (int mode = 0; mode < 3; mode++) { /* dynamic groups, static groups, act-order */
                mp_gptq_opts o;
                mp_gptq_opts_default(&o);
                o.static_groups = mode == 1;
                o.act_order = mode == 2;
                mp_qtensor *q = NULL;
                CHECK_OK(mp_quant_gptq(fmt(fs[k]), W, m, n, H, &o, "plain", &q, NULL));
                if (!q)
                    continue;
                mp_qtensor_codes(q, ours);
                plain_gptq(fmt(fs[k]), W, m, n, H, o.act_order, o.static_groups, 128, ref);
                int64_t same = 0;
                for (int64_t i = 0; i < m * n; i++)
                    same += ours[i] == ref[i];
                double agree = (double)same / (double)(m * n);
                printf("  %-7s %-13s codes identical %.4f %%\n", fs[k],
                       mode == 0   ? "dynamic"
                       : mode == 1 ? "static groups"
                                   : "act-order",
                       100 * agree);
                CHECK(agree >= 0.999);
                mp_qtensor_destroy(q);
            }
        free(W), free(X), free(H), free(ref), free(ours);
    }
    /* GPTQ <= RTN on every block and format */
    {
        const int64_t shapes[][2] = {{64, 256}, {33, 200}, {96, 136}};
        const char *fs[] = {"w8", "w4", "w4g128", "w3g128", "w2g128", "w2g64", "w8a8", "w4a4"};
        int worse = 0, tried = 0;
        double worst = 0;
        printf("GPTQ / RTN loss (tr(E H E^T)):\n");
        for (int s = 0; s < 3; s++) {
            int64_t m = shapes[s][0], n = shapes[s][1], t = 3 * n;
            float *W = rand_w(&g, m, n), *X = rand_x(&g, t, n, 0.6 + 0.1 * s);
            double *H = gram_of(X, t, n);
            printf("  %3lld x %-4lld", (long long)m, (long long)n);
            for (int k = 0; k < 8; k++)
                for (int ao = 0; ao < 2; ao++) {
                    mp_gptq_opts o;
                    mp_gptq_opts_default(&o);
                    o.act_order = ao;
                    mp_qtensor *qr = NULL, *qg = NULL;
                    CHECK_OK(mp_quant_rtn(fmt(fs[k]), W, m, n, "rtn", &qr));
                    CHECK_OK(mp_quant_gptq(fmt(fs[k]), W, m, n, H, &o, "gptq", &qg, NULL));
                    if (!qr || !qg)
                        continue;
                    double lr = gptq_loss(qr, W, H), lg = gptq_loss(qg, W, H);
                    tried++;
                    worse += lg > lr;
                    worst = fmax(worst, lg / lr);
                    if (!ao)
                        printf(" %s %.3f", fs[k], lg / lr);
                    mp_qtensor_destroy(qr);
                    mp_qtensor_destroy(qg);
                }
            printf("\n");
            free(W), free(X), free(H);
        }
        printf("  GPTQ loss <= RTN loss on %d of %d blocks (formats x act-order on/off), worst ratio %.3f\n",
               tried - worse, tried, worst);
        CHECK(worse == 0 && tried == 48);
    }
    /* odd shapes, every format and both group modes: GPTQ runs, matches the plain loop, is no worse than RTN */
    {
        const int64_t shapes[][2] = {{1, 1}, {5, 129}, {3, 31}, {7, 257}};
        int bad = 0, runs = 0;
        for (int s = 0; s < 4; s++) {
            int64_t m = shapes[s][0], n = shapes[s][1];
            float *W = rand_w(&g, m, n), *X = rand_x(&g, 3 * n, n, 0.7);
            double *H = gram_of(X, 3 * n, n);
            uint16_t *ref = malloc(2 * (size_t)(m * n)), *ours = malloc(2 * (size_t)(m * n));
            for (int k = 0; k < mp_qformat_count(); k++)
                for (int st = 0; st < 2; st++) {
                    const mp_qformat *f = mp_qformat_at(k);
                    mp_gptq_opts o;
                    mp_gptq_opts_default(&o);
                    o.act_order = st;
                    o.static_groups = st;
                    mp_qtensor *qg = NULL, *qr = NULL;
                    CHECK_OK(mp_quant_gptq(f, W, m, n, H, &o, "odd", &qg, NULL));
                    CHECK_OK(mp_quant_rtn(f, W, m, n, "odd", &qr));
                    if (!qg || !qr)
                        continue;
                    runs++;
                    bad += gptq_loss(qg, W, H) > gptq_loss(qr, W, H) * (1 + 1e-12);
                    if (f->bits < 16) {
                        mp_qtensor_codes(qg, ours);
                        plain_gptq(f, W, m, n, H, st, st, 128, ref);
                        bad += memcmp(ours, ref, 2 * (size_t)(m * n)) != 0;
                    }
                    mp_qtensor_destroy(qg);
                    mp_qtensor_destroy(qr);
                }
            free(W), free(X), free(H), free(ref), free(ours);
        }
        printf("GPTQ on 1 x 1, 5 x 129, 3 x 31, 7 x 257, every format, static and dynamic groups: %d runs, %d "
               "problems\n",
               runs, bad);
        CHECK(runs == 72 && bad == 0);
    }
    /* damping: a singular H needs none; an indefinite one is retried with 10x damping and reported */
    {
        int64_t m = 16, n = 96, t = 40; /* t < n: rank 40 */
        float *W = rand_w(&g, m, n), *X = rand_x(&g, t, n, 0.5);
        for (int64_t j = 0; j < n; j++) { /* unit columns: diag H = 1, so the shift below has a known effect */
            double ss = 0;
            for (int64_t r = 0; r < t; r++)
                ss += (double)X[r * n + j] * X[r * n + j];
            for (int64_t r = 0; r < t; r++)
                X[r * n + j] = (float)(X[r * n + j] / sqrt(ss));
        }
        double *H = gram_of(X, t, n), mean = 0;
        mp_qtensor *q = NULL;
        mp_gptq_info info;
        CHECK_OK(mp_quant_gptq(fmt("w4g128"), W, m, n, H, NULL, "singular", &q, &info));
        CHECK(info.retries == 0 && info.percdamp == 0.01);
        if (q)
            CHECK(isfinite(gptq_loss(q, W, H)));
        mp_qtensor_destroy(q);
        for (int64_t i = 0; i < n; i++)
            mean += H[i * n + i] / (double)n;
        for (int64_t i = 0; i < n; i++)
            H[i * n + i] -= 0.05 * mean; /* 56 eigenvalues -0.05 mean(diag): 1 % damping fails, 10 % works */
        CHECK_OK(mp_quant_gptq(fmt("w4g128"), W, m, n, H, NULL, "indefinite", &q, &info));
        printf("indefinite H: %d retries, damping %g * mean(diag H) = %g\n", info.retries, info.percdamp, info.damp);
        CHECK(info.retries == 1 && fabs(info.percdamp - 0.1) < 1e-12 && isfinite(info.damp) && info.damp > 0);
        if (q) {
            float *Wq = dequant(q);
            int fin = 1;
            for (int64_t i = 0; i < m * n; i++)
                fin &= isfinite(Wq[i]);
            CHECK(fin);
            free(Wq);
        }
        mp_qtensor_destroy(q);
        /* very indefinite: every retry fails -> MP_ENUMERIC naming the block */
        for (int64_t i = 0; i < n; i++)
            H[i * n + i] = mean;
        H[1] = H[n] = 1e9 * mean; /* |H_01| >> H_00 = H_11 even with damping 1e4 * mean */
        CHECK_ERR(mp_quant_gptq(fmt("w4g128"), W, m, n, H, NULL, "layer 2 base up", &q, &info), MP_ENUMERIC,
                  "layer 2 base up: GPTQ Hessian");
        free(W), free(X), free(H);
    }
    /* dead columns: H_ii = 0 -> weights zeroed, codes at the zero point, counted */
    {
        int64_t m = 12, n = 130, t = 400;
        float *W = rand_w(&g, m, n), *X = rand_x(&g, t, n, 0.5);
        for (int64_t r = 0; r < t; r++)
            X[r * n + 3] = X[r * n + 129] = 0;
        double *H = gram_of(X, t, n);
        mp_qtensor *q = NULL;
        mp_gptq_info info;
        for (int ao = 0; ao < 2; ao++) {
            mp_gptq_opts o;
            mp_gptq_opts_default(&o);
            o.act_order = ao;
            CHECK_OK(mp_quant_gptq(fmt("w3g128"), W, m, n, H, &o, "dead", &q, &info));
            CHECK(info.dead == 2);
            if (q) {
                float *Wq = dequant(q);
                int ok = 1;
                for (int64_t r = 0; r < m; r++)
                    ok &= Wq[r * n + 3] == 0 && Wq[r * n + 129] == 0;
                CHECK(ok);
                free(Wq);
                mp_qtensor *qr = NULL;
                CHECK_OK(mp_quant_rtn(fmt("w3g128"), W, m, n, "dead", &qr));
                CHECK(gptq_loss(q, W, H) <= gptq_loss(qr, W, H));
                mp_qtensor_destroy(qr);
            }
            mp_qtensor_destroy(q);
        }
        /* bad input: NaN / Inf, negative diagonal, missing activations */
        W[5 * n + 7] = NAN;
        CHECK_ERR(mp_quant_gptq(fmt("w4g128"), W, m, n, H, NULL, "layer 3 expert 5 gate U", &q, &info), MP_ENUMERIC,
                  "layer 3 expert 5 gate U: W[5, 7] = nan");
        CHECK_ERR(mp_quant_rtn(fmt("w4"), W, m, n, "layer 3 expert 5 gate U", &q), MP_ENUMERIC, "W[5, 7]");
        W[5 * n + 7] = 0.01f;
        H[2 * n + 9] = INFINITY;
        CHECK_ERR(mp_quant_gptq(fmt("w4g128"), W, m, n, H, NULL, "layer 0 base down", &q, &info), MP_ENUMERIC,
                  "layer 0 base down: H[2, 9] = inf");
        H[2 * n + 9] = H[9 * n + 2];
        H[4 * n + 4] = -1;
        CHECK_ERR(mp_quant_gptq(fmt("w4g128"), W, m, n, H, NULL, "blk", &q, &info), MP_ENUMERIC, "not a Gram");
        H[4 * n + 4] = 1;
        mp_qblock blk = {.W = W, .m = m, .n = n, .H = H, .label = "layer 1 expert 0 up"};
        mp_qresult res;
        CHECK_ERR(mp_quant_measure(fmt("w8a8"), MP_QUANT_RTN, &blk, NULL, &res, NULL), MP_EUSAGE,
                  "w8a8 needs a sample");
        mp_gptq_factor *fac = NULL;
        CHECK_OK(mp_gptq_factor_create(H, n, NULL, "fac", &fac));
        CHECK_ERR(mp_quant_gptq_factored(fmt("w4"), W, m, n - 1, fac, "fac", &q, NULL), MP_EUSAGE, "GPTQ factor");
        /* a prepared factor gives the same result as the one-call path */
        mp_qtensor *a = NULL, *b = NULL;
        CHECK_OK(mp_quant_gptq_factored(fmt("w2g64"), W, m, n, fac, "fac", &a, NULL));
        CHECK_OK(mp_quant_gptq(fmt("w2g64"), W, m, n, H, NULL, "fac", &b, NULL));
        CHECK(a && b && !memcmp(a->qweight, b->qweight, 4 * (size_t)(m * a->words_per_row)) &&
              !memcmp(a->scales, b->scales, 2 * (size_t)(m * a->ngroups)));
        mp_qtensor_destroy(a);
        mp_qtensor_destroy(b);
        mp_gptq_factor_destroy(fac);
        free(W), free(X), free(H);
    }
}

/* ---- llm-compressor reference ------------------------------------------------------------------ */
static void test_reference(void)
{
    mp_ckpt *ck = NULL;
    CHECK_OK(mp_ckpt_open_file(MP_FIXTURES "/gptq_reference.safetensors", &ck));
    if (!ck)
        return;
    const mp_tensor *tw = mp_ckpt_find(ck, "W"), *th = mp_ckpt_find(ck, "H");
    CHECK(tw && th && tw->dtype == MP_DT_F32 && th->dtype == MP_DT_F32);
    if (!tw || !th) {
        mp_ckpt_close(ck);
        return;
    }
    int64_t m = tw->shape[0], n = tw->shape[1];
    float *W = malloc(sizeof(float) * (size_t)(m * n)), *Hf = malloc(sizeof(float) * (size_t)(n * n));
    memcpy(W, tw->data, sizeof(float) * (size_t)(m * n));
    memcpy(Hf, th->data, sizeof(float) * (size_t)(n * n));
    double *H = to_f64(Hf, n * n);
    uint16_t *codes = malloc(2 * (size_t)(m * n));
    const char *fs[] = {"w4g128", "w3g128", "w2g128"}, *orders[] = {"none", "weight"};
    printf("GPTQ vs llm-compressor quantize_weight (%lld x %lld, static min-max fp16 scales):\n", (long long)m,
           (long long)n);
    for (int k = 0; k < 3; k++)
        for (int ao = 0; ao < 2; ao++) {
            char nm[64];
            snprintf(nm, sizeof nm, "%s.%s.codes", fs[k], orders[ao]);
            const mp_tensor *tc = mp_ckpt_find(ck, nm);
            snprintf(nm, sizeof nm, "%s.%s.scale", fs[k], orders[ao]);
            const mp_tensor *ts = mp_ckpt_find(ck, nm);
            snprintf(nm, sizeof nm, "%s.%s.zero", fs[k], orders[ao]);
            const mp_tensor *tz = mp_ckpt_find(ck, nm);
            snprintf(nm, sizeof nm, "%s.%s.loss", fs[k], orders[ao]);
            const mp_tensor *tl = mp_ckpt_find(ck, nm);
            CHECK(tc && ts && tz && tl);
            if (!tc || !ts || !tz || !tl)
                continue;
            const uint8_t *rc = tc->data;
            double ref_loss;
            memcpy(&ref_loss, tl->data, 8);
            mp_gptq_opts o;
            mp_gptq_opts_default(&o);
            o.static_groups = 1;
            o.act_order = ao;
            mp_qtensor *q = NULL;
            CHECK_OK(mp_quant_gptq(fmt(fs[k]), W, m, n, H, &o, "reference", &q, NULL));
            if (!q)
                continue;
            /* the same min-max scales and zeros, bit for bit */
            int64_t ng = q->ngroups, same_sz = 0;
            for (int64_t i = 0; i < m * ng; i++) {
                float s, z;
                memcpy(&s, (const char *)ts->data + 4 * i, 4);
                memcpy(&z, (const char *)tz->data + 4 * i, 4);
                same_sz += mp_f16_to_f32(q->scales[i]) == s && mp_f16_to_f32(q->zeros[i]) == z;
            }
            CHECK(same_sz == m * ng);
            mp_qtensor_codes(q, codes);
            int64_t same = 0;
            for (int64_t i = 0; i < m * n; i++)
                same += codes[i] == rc[i];
            double agree = (double)same / (double)(m * n), ours = gptq_loss(q, W, H);
            /* our default (groups from the updated weights) for comparison */
            mp_qtensor *qd = NULL;
            double dyn = NAN;
            o.static_groups = 0;
            if (!ao && mp_quant_gptq(fmt(fs[k]), W, m, n, H, &o, "reference", &qd, NULL) == 0)
                dyn = gptq_loss(qd, W, H);
            mp_qtensor_destroy(qd);
            printf("  %-7s act-order %-3s codes identical %.3f %% (%lld differ), loss %.6g vs reference %.6g "
                   "(ratio %.5f)",
                   fs[k], ao ? "on" : "off", 100 * agree, (long long)(m * n - same), ours, ref_loss, ours / ref_loss);
            if (!ao)
                printf("; dynamic groups %.6g (%.4f)", dyn, dyn / ref_loss);
            printf("\n");
            CHECK(agree >= 0.999);
            CHECK(ours <= ref_loss * 1.01);
            mp_qtensor_destroy(q);
        }
    free(W), free(Hf), free(H), free(codes);
    mp_ckpt_close(ck);
}

int main(void)
{
    test_fp16_and_table();
    test_packing();
    test_loss_identities();
    test_gptq();
    test_reference();
    return t_done("test_quant");
}
