/* qgemm_ref.h - the fp64 reference of the grouped products of src/qgemm.h, random blocks in every format
 * (quantized with mp_quant_rtn), random token matrices in fp32/fp16/bf16, and the comparison; shared by
 * test_qgemm (the CPU implementation) and test_gpu_kernels (the CUDA kernels).
 *
 * Reference: W dequantized by mp_qtensor_dequant (exact in fp32), X as the implementation reads it (the
 * stored 16-bit values converted exactly), activation formats quantized per row with mp_quant_act, then
 * a plain fp64 loop. Tolerance, per output element:
 *     |got - ref| <= tol * scale + rnd * (|ref| + |ref_base|) + abs16
 * where scale = sum_k |w_k x_k| (delta: sum_j |u_j| sum_k |v_jk x_k|; plus |old| when accumulating) is
 * the condition scale of the dot product, tol the accumulation tolerance of the implementation, rnd the
 * rounding of a 16-bit output (2^-11 fp16, 2^-8 bf16, 0 fp32), ref_base the base product when base +
 * delta rounds twice, and abs16 = 2^-24 for fp16 outputs (subnormals). */
#ifndef MP_QGEMM_REF_H
#define MP_QGEMM_REF_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus /* also compiled as C++ by test_qgemm_emu.cpp */
extern "C" {
#endif
#include "dtype.h"
#include "error.h"
#include "qgemm.h"
#include "quant.h"
#include "rng.h"
#ifdef __cplusplus
}
#endif

static const mp_qformat *ref_fmt(const char *name)
{
    const mp_qformat *f = NULL;
    if (mp_qformat_find(name, &f) < 0) {
        fprintf(stderr, "no format %s\n", name);
        exit(1);
    }
    return f;
}

/* a random block [m, n] (Gaussian, per-column scales, a few outliers) quantized with RTN in format f */
static mp_qtensor *ref_block(mp_rng *g, const mp_qformat *f, int64_t m, int64_t n)
{
    float *W = (float *)malloc(sizeof(float) * (size_t)(m * n));
    double *cs = (double *)malloc(sizeof(double) * (size_t)n);
    for (int64_t j = 0; j < n; j++)
        cs[j] = 0.05 * exp(0.3 * mp_rng_normal(g));
    for (int64_t i = 0; i < m * n; i++)
        W[i] = (float)(mp_rng_normal(g) * cs[i % n] * (mp_rng_uniform(g) < 0.003 ? 6.0 : 1.0));
    mp_qtensor *q = NULL;
    if (mp_quant_rtn(f, W, m, n, f->name, &q) < 0) {
        fprintf(stderr, "mp_quant_rtn %s [%lld, %lld] failed: %s\n", f->name, (long long)m, (long long)n,
                mp_error_message());
        exit(1);
    }
    free(W);
    free(cs);
    return q;
}

/* a token matrix [rows, ld] of type t with random values (columns >= n hold a large sentinel that must
 * never be read), and its exact fp32 values in *xf (caller frees both) */
static void *ref_tokens(mp_rng *g, mp_qg_type t, int64_t rows, int64_t ld, int64_t n, float **xf)
{
    void *X = malloc(mp_qg_type_size(t) * (size_t)(rows * ld > 0 ? rows * ld : 1));
    float *F = (float *)malloc(sizeof(float) * (size_t)(rows * ld > 0 ? rows * ld : 1));
    for (int64_t r = 0; r < rows; r++) {
        double rs = exp(0.5 * mp_rng_normal(g)); /* per-token scale: activation scales differ per row */
        for (int64_t k = 0; k < ld; k++) {
            float v = k < n ? (float)(rs * mp_rng_normal(g)) : 3.0e4f;
            mp_qg_store(X, t, r * ld + k, v);
            F[r * ld + k] = mp_qg_load(X, t, r * ld + k);
        }
    }
    *xf = F;
    return X;
}

/* fp64 y[rows, m] and scale[rows, m] of Xf[rows, ldx] (fp32 values) times W^T, W dequantized */
static void ref_product(const mp_qtensor *W, const float *Xf, int64_t ldx, int64_t rows, double *y, double *scale)
{
    int64_t m = W->m, n = W->n;
    float *Wd = (float *)malloc(sizeof(float) * (size_t)(m * n));
    float *xq = (float *)malloc(sizeof(float) * (size_t)n);
    mp_qtensor_dequant(W, Wd);
    for (int64_t i = 0; i < rows; i++) {
        const float *x = Xf + i * ldx;
        if (W->fmt->act_bits) {
            mp_quant_act(x, 1, n, W->fmt->act_bits, xq);
            x = xq;
        }
        for (int64_t j = 0; j < m; j++) {
            double s = 0, a = 0;
            for (int64_t k = 0; k < n; k++) {
                double p = (double)Wd[j * n + k] * (double)x[k];
                s += p;
                a += fabs(p);
            }
            y[i * m + j] = s;
            scale[i * m + j] = a;
        }
    }
    free(Wd);
    free(xq);
}

/* reference of one delta item: y[rows, m] = (X V^T) U^T in fp64 (T in fp64, rounded to fp32 before an
 * activation-format U quantizes it), scale = sum_j |u_j| sum_k |v_jk x_k| */
static void ref_delta(const mp_qtensor *U, const mp_qtensor *V, const float *Xf, int64_t ldx, int64_t rows, double *y,
                      double *scale)
{
    int64_t m = U->m, r = U->n;
    double *t = (double *)malloc(sizeof(double) * (size_t)(r > 0 ? r : 1)),
           *ts = (double *)malloc(sizeof(double) * (size_t)r);
    float *tf = (float *)malloc(sizeof(float) * (size_t)r), *Ud = (float *)malloc(sizeof(float) * (size_t)(m * r));
    float *tq = (float *)malloc(sizeof(float) * (size_t)r);
    mp_qtensor_dequant(U, Ud);
    for (int64_t i = 0; i < rows; i++) {
        ref_product(V, Xf + i * ldx, ldx, 1, t, ts);
        for (int64_t j = 0; j < r; j++)
            tf[j] = (float)t[j];
        if (U->fmt->act_bits)
            mp_quant_act(tf, 1, r, U->fmt->act_bits, tq);
        for (int64_t a = 0; a < m; a++) {
            double s = 0, sc = 0;
            for (int64_t j = 0; j < r; j++) {
                double tv = U->fmt->act_bits ? (double)tq[j] : t[j];
                s += (double)Ud[a * r + j] * tv;
                sc += fabs((double)Ud[a * r + j]) * (ts[j] + fabs(tv));
            }
            y[i * m + a] = s;
            scale[i * m + a] = sc;
        }
    }
    free(t);
    free(ts);
    free(tf);
    free(Ud);
    free(tq);
}

static double ref_rnd(mp_qg_type t) { return t == MP_QG_F16 ? 0x1p-11 : t == MP_QG_BF16 ? 0x1p-8 : 0.0; }

/* Compare Y (type yt, [*, ldy]) rows [row0, row0 + rows), columns [0, m) with ref/scale [rows, m]
 * (base: the base product for two roundings, or NULL). Returns the number of violations; *worst receives
 * the largest |got - ref| / (tol * scale + rounding allowance) seen (<= 1 passes). */
static int64_t ref_compare(const void *Y, mp_qg_type yt, int64_t ldy, int64_t row0, int64_t rows, int64_t m,
                           const double *ref, const double *scale, const double *base, double tol, double *worst,
                           const char *what)
{
    int64_t bad = 0;
    double rnd = ref_rnd(yt), abs16 = yt == MP_QG_F16 ? 0x1p-24 : 0.0;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < m; j++) {
            double got = mp_qg_load(Y, yt, (row0 + i) * ldy + j), want = ref[i * m + j];
            double allow = tol * scale[i * m + j] + rnd * (fabs(want) + (base ? fabs(base[i * m + j]) : 0)) + abs16;
            if (allow <= 0)
                allow = 1e-300;
            double e = fabs(got - want) / allow;
            if (!(e <= 1.0)) { /* NaN fails too */
                if (bad < 5)
                    fprintf(stderr, "%s: [%lld, %lld] got %.9g, want %.9g (scale %.3g, allowed %.3g)\n", what,
                            (long long)(row0 + i), (long long)j, got, want, scale[i * m + j], allow);
                bad++;
            }
            if (worst && (e > *worst || e != e))
                *worst = e;
        }
    return bad;
}

/* ---- the cases, run against an implementation ------------------------------------------------------- */
typedef struct {
    const char *name;
    void *ctx;
    int (*grouped)(void *ctx, const mp_qgemm_item *items, int count, const void *X, mp_qg_type xt, int64_t ldx, void *Y,
                   mp_qg_type yt, int64_t ldy, int accumulate);
    int (*delta)(void *ctx, const mp_qdelta_item *items, int count, const void *X, mp_qg_type xt, int64_t ldx, void *Y,
                 mp_qg_type yt, int64_t ldy);
    int (*base_delta)(void *ctx, const mp_qtensor *base, int64_t rows, const mp_qdelta_item *items, int count,
                      const void *X, mp_qg_type xt, int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy);
    double (*tol)(void *ctx, mp_qg_type xt); /* accumulation tolerance for inputs of type xt */
    int64_t checks, failures;                /* counted by the cases */
    double worst;                            /* largest error / allowance seen */
    double worst32;                          /* the same on fp32 outputs (accumulation error / tol * scale) */
} ref_impl;

static const char *const REF_FORMATS[] = {"fp16", "w8", "w4", "w4g128", "w3g128", "w2g128", "w2g64", "w8a8", "w4a4"};
#define REF_NFORMATS 9

/* ref_compare into the implementation's counters */
static int64_t ref_check(ref_impl *im, const void *Y, mp_qg_type yt, int64_t ldy, int64_t row0, int64_t rows, int64_t m,
                         const double *ref, const double *scale, const double *base, double tol, const char *what)
{
    double w = 0;
    int64_t bad = ref_compare(Y, yt, ldy, row0, rows, m, ref, scale, base, tol, &w, what);
    if (w > im->worst || w != w)
        im->worst = w;
    if (yt == MP_QG_F32 && (w > im->worst32 || w != w))
        im->worst32 = w;
    return bad;
}

static void ref_count(ref_impl *im, int64_t bad, const char *what)
{
    im->checks++;
    if (bad) {
        im->failures++;
        fprintf(stderr, "%s: %s: %lld elements outside the tolerance\n", im->name, what, (long long)bad);
    }
}

/* Y [total, ldy] with random values (the old values when accumulating; sentinels elsewhere) and a copy */
static void *ref_output(mp_rng *g, mp_qg_type yt, int64_t total, int64_t ldy, void **copy)
{
    size_t bytes = mp_qg_type_size(yt) * (size_t)(total * ldy > 0 ? total * ldy : 1);
    void *Y = malloc(bytes);
    for (int64_t i = 0; i < total * ldy; i++)
        mp_qg_store(Y, yt, i, (float)mp_rng_normal(g));
    *copy = malloc(bytes);
    memcpy(*copy, Y, bytes);
    return Y;
}

/* elements of Y outside the item rectangles [row0, row0 + rows) x [0, m) must keep their old bits */
static int64_t ref_untouched(const void *Y, const void *Y0, mp_qg_type yt, int64_t total, int64_t ldy, int count,
                             const int64_t *row0, const int64_t *rows, const int64_t *m)
{
    size_t es = mp_qg_type_size(yt);
    int64_t bad = 0;
    for (int64_t r = 0; r < total; r++)
        for (int64_t c = 0; c < ldy; c++) {
            int inside = 0;
            for (int i = 0; i < count && !inside; i++)
                inside = r >= row0[i] && r < row0[i] + rows[i] && c < m[i];
            if (!inside && memcmp((const char *)Y + (r * ldy + c) * es, (const char *)Y0 + (r * ldy + c) * es, es))
                bad++;
        }
    return bad;
}

/* Grouped product of `count` items (format fmts[i], W [m[i], n[i]], rows[i] tokens); the items are stacked
 * with a gap row after every second one, X and Y have padded rows (ld = max + pad). */
static void ref_case_grouped(ref_impl *im, mp_rng *g, int count, const mp_qformat *const *fmts, const int64_t *m,
                             const int64_t *n, const int64_t *rows, mp_qg_type xt, mp_qg_type yt, int accumulate,
                             int64_t pad, const char *what)
{
    mp_qtensor **W = (mp_qtensor **)calloc((size_t)count, sizeof *W);
    mp_qgemm_item *it = (mp_qgemm_item *)calloc((size_t)count, sizeof *it);
    int64_t *row0 = (int64_t *)calloc((size_t)count, sizeof *row0), total = 0, mmax = 1, nmax = 1;
    for (int i = 0; i < count; i++) {
        W[i] = ref_block(g, fmts[i], m[i], n[i]);
        row0[i] = total;
        total += rows[i] + (i % 2);
        mmax = m[i] > mmax ? m[i] : mmax;
        nmax = n[i] > nmax ? n[i] : nmax;
        it[i] = (mp_qgemm_item){W[i], row0[i], rows[i]};
    }
    int64_t ldx = nmax + pad, ldy = mmax + pad;
    float *Xf;
    void *X = ref_tokens(g, xt, total, ldx, nmax, &Xf), *Y0;
    void *Y = ref_output(g, yt, total, ldy, &Y0);
    int rc = im->grouped(im->ctx, it, count, X, xt, ldx, Y, yt, ldy, accumulate);
    char buf[256];
    if (rc < 0) {
        fprintf(stderr, "%s: %s: failed: %s\n", im->name, what, mp_error_message());
        im->checks++;
        im->failures++;
    } else {
        double tol = im->tol(im->ctx, xt);
        for (int i = 0; i < count; i++) {
            double *ref = (double *)malloc(sizeof(double) * (size_t)(rows[i] * m[i] + 1));
            double *sc = (double *)malloc(sizeof(double) * (size_t)(rows[i] * m[i] + 1));
            ref_product(W[i], Xf + row0[i] * ldx, ldx, rows[i], ref, sc);
            if (accumulate)
                for (int64_t r = 0; r < rows[i]; r++)
                    for (int64_t j = 0; j < m[i]; j++) {
                        double old = mp_qg_load(Y0, yt, (row0[i] + r) * ldy + j);
                        ref[r * m[i] + j] += old;
                        sc[r * m[i] + j] += fabs(old);
                    }
            snprintf(buf, sizeof buf, "%s: item %d (%s [%lld, %lld], %lld rows, X %s, Y %s%s)", what, i, fmts[i]->name,
                     (long long)m[i], (long long)n[i], (long long)rows[i], mp_qg_type_name(xt), mp_qg_type_name(yt),
                     accumulate ? ", +=" : "");
            ref_count(im, ref_check(im, Y, yt, ldy, row0[i], rows[i], m[i], ref, sc, NULL, tol, buf), buf);
            free(ref);
            free(sc);
        }
        snprintf(buf, sizeof buf, "%s: elements outside the items", what);
        ref_count(im, ref_untouched(Y, Y0, yt, total, ldy, count, row0, rows, m), buf);
    }
    for (int i = 0; i < count; i++)
        mp_qtensor_destroy(W[i]);
    free(W);
    free(it);
    free(row0);
    free(X);
    free(Xf);
    free(Y);
    free(Y0);
}

/* the checks of ref_case_delta once the implementation ran */
static void ref_check_delta(ref_impl *im, const mp_qtensor *B, int count, mp_qtensor *const *U, mp_qtensor *const *V,
                            const mp_qdelta_item *it, int64_t m, int64_t n, int64_t total, const float *Xf, int64_t ldx,
                            const void *Y, const void *Y0, mp_qg_type xt, mp_qg_type yt, int64_t ldy, const char *what)
{
    char buf[256];
    double tol = im->tol(im->ctx, xt);
    double *ref = (double *)calloc((size_t)(total * m + 1), sizeof *ref),
           *sc = (double *)calloc((size_t)(total * m + 1), sizeof *sc);
    double *base = B ? (double *)calloc((size_t)(total * m + 1), sizeof *base) : NULL;
    double *d = (double *)malloc(sizeof(double) * (size_t)(total * m + 1)),
           *ds = (double *)malloc(sizeof(double) * (size_t)(total * m + 1));
    if (B) {
        ref_product(B, Xf, ldx, total, ref, sc);
        memcpy(base, ref, sizeof(double) * (size_t)(total * m));
    } else {
        for (int64_t i = 0; i < total * m; i++) {
            ref[i] = mp_qg_load(Y0, yt, (i / m) * ldy + i % m);
            sc[i] = fabs(ref[i]);
        }
    }
    for (int i = 0; i < count; i++) {
        if (!V[i] || !it[i].rows)
            continue;
        ref_delta(U[i], V[i], Xf + it[i].row0 * ldx, ldx, it[i].rows, d, ds);
        for (int64_t k = 0; k < it[i].rows * m; k++) {
            ref[it[i].row0 * m + k] += d[k];
            sc[it[i].row0 * m + k] += ds[k];
        }
    }
    /* rows the deltas cover were rounded twice with a base (base, then base + delta) */
    snprintf(buf, sizeof buf, "%s (%s%s%d deltas, [%lld, %lld], X %s, Y %s)", what, B ? B->fmt->name : "",
             B ? " base + " : "", count, (long long)m, (long long)n, mp_qg_type_name(xt), mp_qg_type_name(yt));
    ref_count(im, ref_check(im, Y, yt, ldy, 0, total, m, ref, sc, base, tol, buf), buf);
    int64_t r0 = 0, mm = m;
    snprintf(buf, sizeof buf, "%s: elements outside the rows", what);
    ref_count(im, ref_untouched(Y, Y0, yt, total, ldy, 1, &r0, &total, &mm), buf);
    free(ref);
    free(sc);
    free(base);
    free(d);
    free(ds);
}

/* Deltas (or base + deltas when base_fmt is given): items with V [ranks[i], n] in vf[i], U [m, ranks[i]] in
 * uf[i] (vf[i] NULL: no delta for that item), stacked with gap rows. */
static void ref_case_delta(ref_impl *im, mp_rng *g, const mp_qformat *base_fmt, int count, const mp_qformat *const *vf,
                           const mp_qformat *const *uf, const int64_t *ranks, int64_t m, int64_t n, const int64_t *rows,
                           mp_qg_type xt, mp_qg_type yt, int64_t pad, const char *what)
{
    mp_qtensor **U = (mp_qtensor **)calloc((size_t)count, sizeof *U),
               **V = (mp_qtensor **)calloc((size_t)count, sizeof *V), *B = NULL;
    mp_qdelta_item *it = (mp_qdelta_item *)calloc((size_t)count, sizeof *it);
    int64_t total = 0;
    for (int i = 0; i < count; i++) {
        if (vf[i]) {
            V[i] = ref_block(g, vf[i], ranks[i], n);
            U[i] = ref_block(g, uf[i], m, ranks[i]);
        }
        it[i] = (mp_qdelta_item){U[i], V[i], total, rows[i]};
        total += rows[i] + (i % 2);
    }
    if (base_fmt)
        B = ref_block(g, base_fmt, m, n);
    int64_t ldx = n + pad, ldy = m + pad;
    float *Xf;
    void *X = ref_tokens(g, xt, total, ldx, n, &Xf), *Y0;
    void *Y = ref_output(g, yt, total, ldy, &Y0);
    int rc = B ? im->base_delta(im->ctx, B, total, it, count, X, xt, ldx, Y, yt, ldy)
               : im->delta(im->ctx, it, count, X, xt, ldx, Y, yt, ldy);
    if (rc < 0) {
        fprintf(stderr, "%s: %s: failed: %s\n", im->name, what, mp_error_message());
        im->checks++;
        im->failures++;
    } else {
        ref_check_delta(im, B, count, U, V, it, m, n, total, Xf, ldx, Y, Y0, xt, yt, ldy, what);
    }
    for (int i = 0; i < count; i++) {
        mp_qtensor_destroy(U[i]);
        mp_qtensor_destroy(V[i]);
    }
    mp_qtensor_destroy(B);
    free(U);
    free(V);
    free(it);
    free(X);
    free(Xf);
    free(Y);
    free(Y0);
}

/* An activation-format U in two explicit grouped stages: T = X V^T (fp32), then Y += T U^T checked against
 * the reference computed from the T the implementation produced (a T one ulp away can flip a per-token
 * rounding, so the end-to-end reference would be ill-conditioned there). */
static void ref_case_act_u(ref_impl *im, mp_rng *g, const mp_qformat *vfmt, const mp_qformat *ufmt, int64_t m,
                           int64_t n, int64_t r, int64_t rows, mp_qg_type xt, const char *what)
{
    mp_qtensor *V = ref_block(g, vfmt, r, n), *U = ref_block(g, ufmt, m, r);
    float *Xf, *T = (float *)calloc((size_t)(rows * r + 1), sizeof *T);
    void *X = ref_tokens(g, xt, rows, n, n, &Xf), *Y0;
    void *Y = ref_output(g, MP_QG_F32, rows, m, &Y0);
    mp_qgemm_item a = {V, 0, rows}, b = {U, 0, rows};
    char buf[256];
    snprintf(buf, sizeof buf, "%s (V %s, U %s, X %s)", what, vfmt->name, ufmt->name, mp_qg_type_name(xt));
    if (im->grouped(im->ctx, &a, 1, X, xt, n, T, MP_QG_F32, r, 0) < 0 ||
        im->grouped(im->ctx, &b, 1, T, MP_QG_F32, r, Y, MP_QG_F32, m, 1) < 0) {
        fprintf(stderr, "%s: %s: failed: %s\n", im->name, buf, mp_error_message());
        im->checks++;
        im->failures++;
    } else {
        double *ref = (double *)malloc(sizeof(double) * (size_t)(rows * (m > r ? m : r) + 1));
        double *sc = (double *)malloc(sizeof(double) * (size_t)(rows * (m > r ? m : r) + 1));
        ref_product(V, Xf, n, rows, ref, sc);
        ref_count(im, ref_check(im, T, MP_QG_F32, r, 0, rows, r, ref, sc, NULL, im->tol(im->ctx, xt), buf), buf);
        ref_product(U, T, r, rows, ref, sc);
        for (int64_t i = 0; i < rows * m; i++) {
            ref[i] += ((const float *)Y0)[i];
            sc[i] += fabs(((const float *)Y0)[i]);
        }
        ref_count(im, ref_check(im, Y, MP_QG_F32, m, 0, rows, m, ref, sc, NULL, im->tol(im->ctx, MP_QG_F32), buf), buf);
        free(ref);
        free(sc);
    }
    mp_qtensor_destroy(U);
    mp_qtensor_destroy(V);
    free(T);
    free(X);
    free(Xf);
    free(Y);
    free(Y0);
}

/* The suite both implementations pass: every format alone on odd shapes and every type combination, all
 * formats mixed in one grouped call (different row counts, an expert without tokens), items of different
 * shapes, deltas with mixed U/V formats and ranks, base + delta, activation-format U in two stages.
 * level 1 adds moderate shapes with aligned rows (n a multiple of 64, ld a multiple of 8) and many or few
 * tokens per item, level 2 larger ones (longer rows, higher ranks). */
static void ref_suite(ref_impl *im, uint64_t seed, int level)
{
    mp_rng g;
    mp_rng_seed(&g, seed);
    const mp_qformat *F[REF_NFORMATS];
    for (int i = 0; i < REF_NFORMATS; i++)
        F[i] = ref_fmt(REF_FORMATS[i]);
    const mp_qg_type types[3] = {MP_QG_F32, MP_QG_F16, MP_QG_BF16};
    /* every format alone, odd shapes (partial groups, 3-bit words straddling, one column, one row) */
    const int64_t shapes[][3] = {{37, 201, 5}, {1, 1, 1}, {130, 129, 3}, {9, 67, 33}, {64, 64, 16}, {17, 300, 2}};
    for (int f = 0; f < REF_NFORMATS; f++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            mp_qg_type xt = types[(f + s) % 3], yt = types[(f + 2 * s) % 3];
            int acc = (int)((f + s) % 2);
            ref_case_grouped(im, &g, 1, &F[f], &shapes[s][0], &shapes[s][1], &shapes[s][2], xt, yt, acc, 3,
                             "single format");
        }
    /* every type combination on one mixed call: all nine formats, one expert per format */
    int64_t m9[REF_NFORMATS], n9[REF_NFORMATS], r9[REF_NFORMATS];
    const int64_t rows9[REF_NFORMATS] = {7, 0, 19, 1, 40, 3, 16, 9, 2};
    for (int i = 0; i < REF_NFORMATS; i++) {
        m9[i] = 75;
        n9[i] = 197;
        r9[i] = rows9[i];
    }
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int acc = 0; acc < 2; acc++)
                ref_case_grouped(im, &g, REF_NFORMATS, F, m9, n9, r9, types[a], types[b], acc, acc ? 3 : 5,
                                 "mixed formats"); /* ldx 200: 16-byte rows with a partial last vector */
    /* items of different shapes in one call (as the U and V factors of several ranks are) */
    const mp_qformat *Fd[4] = {F[3], F[4], F[1], F[7]};
    const int64_t md[4] = {33, 5, 70, 8}, nd[4] = {150, 63, 8, 129}, rd[4] = {4, 20, 1, 11};
    ref_case_grouped(im, &g, 4, Fd, md, nd, rd, MP_QG_F32, MP_QG_F32, 0, 0, "different shapes");
    ref_case_grouped(im, &g, 4, Fd, md, nd, rd, MP_QG_F16, MP_QG_F16, 1, 1, "different shapes");
    /* deltas: U and V in different formats, ranks 1 ... 40, an item without a delta */
    const mp_qformat *vf[5] = {F[2], F[4], NULL, F[7], F[0]}, *uf[5] = {F[6], F[0], NULL, F[3], F[1]};
    const int64_t ranks[5] = {8, 1, 0, 40, 13}, drows[5] = {12, 5, 7, 1, 30};
    for (int a = 0; a < 3; a++) {
        ref_case_delta(im, &g, NULL, 5, vf, uf, ranks, 90, 140, drows, types[a], types[(a + 1) % 3], 2, "delta");
        ref_case_delta(im, &g, F[(a * 4) % REF_NFORMATS], 5, vf, uf, ranks, 90, 140, drows, types[a], types[a], 0,
                       "base + delta");
    }
    ref_case_delta(im, &g, F[5], 5, vf, uf, ranks, 90, 140, drows, MP_QG_BF16, MP_QG_F32, 3, "base + delta");
    for (int a = 0; a < 3; a++) {
        ref_case_act_u(im, &g, F[3], F[7], 50, 100, 24, 9, types[a], "activation-format U");
        ref_case_act_u(im, &g, F[8], F[8], 31, 70, 17, 6, types[a], "activation-format U");
    }
    if (level < 1)
        return;
    /* aligned rows (n a multiple of 64, ld a multiple of 8: vector copies), many tokens per expert (mean
     * above 32: the large tiles) and few (the small tiles), moderate sizes */
    int64_t ma[REF_NFORMATS], na[REF_NFORMATS], ra[REF_NFORMATS];
    const int64_t rowsa[REF_NFORMATS] = {40, 33, 0, 70, 35, 64, 1, 50, 36};
    for (int i = 0; i < REF_NFORMATS; i++) {
        ma[i] = 96;
        na[i] = 256;
        ra[i] = rowsa[i];
    }
    for (int a = 1; a < 3; a++) {
        ref_case_grouped(im, &g, REF_NFORMATS, F, ma, na, ra, types[a], types[3 - a], a - 1, 0,
                         "mixed formats, aligned, many tokens");
        ref_case_grouped(im, &g, REF_NFORMATS, F, ma, na, ra, types[a], MP_QG_F32, 2 - a, 8,
                         "mixed formats, aligned, padded ld, many tokens");
    }
    for (int i = 0; i < REF_NFORMATS; i++)
        ra[i] = 16 - (i % 3);
    for (int a = 1; a < 3; a++)
        ref_case_grouped(im, &g, REF_NFORMATS, F, ma, na, ra, types[a], types[a], a - 1, 0,
                         "mixed formats, aligned, few tokens");
    const int64_t aranks[5] = {64, 16, 0, 32, 8}, arows[5] = {40, 8, 12, 35, 3};
    for (int a = 1; a < 3; a++)
        ref_case_delta(im, &g, F[3 + a], 5, vf, uf, aranks, 96, 256, arows, types[a], types[a], 0,
                       "base + delta, aligned");
    if (level < 2)
        return;
    int64_t mb[REF_NFORMATS], nb[REF_NFORMATS], rb[REF_NFORMATS];
    const int64_t rowsb[REF_NFORMATS] = {150, 64, 0, 97, 200, 33, 128, 70, 65};
    for (int i = 0; i < REF_NFORMATS; i++) {
        mb[i] = 384;
        nb[i] = 512;
        rb[i] = rowsb[i];
    }
    for (int a = 1; a < 3; a++)
        for (int acc = 0; acc < 2; acc++) {
            ref_case_grouped(im, &g, REF_NFORMATS, F, mb, nb, rb, types[a], types[acc ? a : 0], acc, 0,
                             "mixed formats, aligned");
            ref_case_grouped(im, &g, REF_NFORMATS, F, mb, nb, rb, types[a], MP_QG_F32, acc, 8,
                             "mixed formats, aligned, padded ld");
        }
    for (int i = 0; i < REF_NFORMATS; i++)
        rb[i] = 16 - (i % 3); /* few tokens per expert: the small tiles */
    for (int a = 0; a < 3; a++)
        ref_case_grouped(im, &g, REF_NFORMATS, F, mb, nb, rb, types[a], types[(a + 2) % 3], a % 2, 0,
                         "mixed formats, few tokens");
    const int64_t long_shape[3] = {96, 1408, 24};
    for (int f = 0; f < REF_NFORMATS; f++)
        ref_case_grouped(im, &g, 1, &F[f], &long_shape[0], &long_shape[1], &long_shape[2], types[1 + f % 2], MP_QG_F32,
                         0, 0, "long rows");
    const int64_t bigranks[5] = {64, 16, 0, 128, 32}, bigrows[5] = {100, 16, 40, 70, 3};
    for (int a = 0; a < 3; a++)
        ref_case_delta(im, &g, F[3], 5, vf, uf, bigranks, 256, 512, bigrows, types[a], types[a], 0,
                       "base + delta, aligned");
}

#endif
