/* test_vmath.c - the vectorised exp kernels (src/vmath.h) against glibc's fp64 exp / log:
 *  - mp_vexp on every float of [-88, 88] in steps of 2^-9 and a sweep through the subnormal range: within 2 ulp
 *    of the rounded fp64 exp (subnormal results: within 2 units of the smallest subnormal);
 *  - special values: -inf -> 0, +inf and overflow -> inf, NaN -> NaN, below -104 -> 0, exp(0) = 1 exactly;
 *  - mp_silu_mul, mp_exp_shift_sum, mp_vmax and mp_row_nll on lengths that are not multiples of the 16 lanes
 *    (the tails) against fp64 loops: 4e-7 relative per element, 1e-6 for the fp32 sum, 1e-6 absolute NLL;
 *  - a row with one logit far above the rest (the NLL of the top token ~0) and the NLL of a 32000-logit
 *    row as the forward pass meets it;
 *  - the blocked log-sum-exp (mp_lse_block / mp_lse_add, blocks of MP_LSE_BLOCK) as the output head uses it:
 *    a row's NLL from blocks copied out one at a time has mp_row_nll's bits; KL(softmax(a) || softmax(b)) from
 *    mp_kl_block against an fp64 log-softmax loop (1e-7 absolute + 1e-5 relative) for a close, a shifted
 *    (KL = 0) and an unrelated b at 4097 and 32000 logits;
 *  - mp_first_nonfinite: the first inf / -inf / NaN anywhere in arrays of several lengths (the tails), -1 for
 *    finite arrays holding FLT_MAX and subnormals. */
#include <float.h>
#include <stdint.h>

#include "rng.h"
#include "testutil.h"
#include "vmath.h"

/* |got - want| in units of the float spacing at want (the smallest subnormal below FLT_MIN) */
static double ulps(float got, double want)
{
    float w = (float)want;
    double sp = fabs(want) < FLT_MIN ? (double)FLT_TRUE_MIN : (double)(nextafterf(w, INFINITY) - w);
    return fabs((double)got - want) / sp;
}

static void check_exp(void)
{
    int64_t n = 0;
    double worst = 0, worst_x = 0;
    float *x = malloc(sizeof(float) * 200000), *y = malloc(sizeof(float) * 200000);
    for (float v = -104.0f; v <= 88.5f; v += 1.0f / 512) /* exactly representable steps */
        x[n++] = v;
    mp_vexp(x, y, n);
    for (int64_t i = 0; i < n; i++) {
        double u = ulps(y[i], exp((double)x[i]));
        if (u > worst)
            worst = u, worst_x = x[i];
    }
    printf("  exp on %lld points of [-104, 88.5]: max error %.3f ulp (at %g)\n", (long long)n, worst, worst_x);
    CHECK(worst <= 2.0);
    float sp[] = {-INFINITY, INFINITY, NAN, 0.0f, -0.0f, 88.72f, 88.73f, 89.0f, 1000.0f, -104.5f, -1e30f};
    float o[11];
    mp_vexp(sp, o, 11);
    CHECK(o[0] == 0.0f && isinf(o[1]) && o[1] > 0 && isnan(o[2]) && o[3] == 1.0f && o[4] == 1.0f);
    CHECK(isfinite(o[5]) && ulps(o[5], exp((double)sp[5])) <= 2.0);
    CHECK(isinf(o[6]) && isinf(o[7]) && isinf(o[8]) && o[9] == 0.0f && o[10] == 0.0f);
    free(x), free(y);
}

static void check_rows(void)
{
    mp_rng r;
    mp_rng_seed(&r, 11);
    int lens[] = {1, 15, 16, 17, 255, 1000, 4096, 4097, 32000};
    float *a = malloc(sizeof(float) * 32000), *b = malloc(sizeof(float) * 32000), *c = malloc(sizeof(float) * 32000);
    double worst_silu = 0, worst_exp = 0, worst_sum = 0, worst_nll = 0;
    int max_ok = 1;
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        int n = lens[k];
        for (int i = 0; i < n; i++)
            a[i] = (float)(8 * mp_rng_normal(&r)), b[i] = (float)mp_rng_normal(&r);
        memcpy(c, a, sizeof(float) * (size_t)n);
        mp_silu_mul(c, b, n);
        for (int i = 0; i < n; i++) {
            double want = (double)a[i] / (1 + exp(-(double)a[i])) * b[i];
            worst_silu = fmax(worst_silu, fabs(c[i] - want) / fmax(fabs(want), 1e-30));
        }
        float mx = mp_vmax(a, n);
        double rmx = a[0];
        for (int i = 1; i < n; i++)
            rmx = a[i] > rmx ? a[i] : rmx;
        max_ok &= mx == (float)rmx;
        memcpy(c, a, sizeof(float) * (size_t)n);
        float s = mp_exp_shift_sum(c, n, mx);
        double rs = 0;
        for (int i = 0; i < n; i++) {
            double e = exp((double)(a[i] - mx)); /* the kernel's argument, rounded to fp32 as it is there */
            rs += e;
            worst_exp = fmax(worst_exp, fabs(c[i] - e) / e);
        }
        worst_sum = fmax(worst_sum, fabs(s - rs) / rs);
        for (int y = 0; y < n; y += n / 3 + 1) {
            double nll = mp_row_nll(a, n, y), lse = 0;
            for (int i = 0; i < n; i++)
                lse += exp((double)a[i] - rmx);
            worst_nll = fmax(worst_nll, fabs(nll - (rmx + log(lse) - a[y])));
        }
    }
    printf("  lengths 1 .. 32000: silu * up rel err %.2e, exp(x - max) %.2e, its fp32 sum %.2e, NLL abs err %.2e\n",
           worst_silu, worst_exp, worst_sum, worst_nll);
    CHECK(max_ok);
    CHECK(worst_silu <= 4e-7);
    CHECK(worst_exp <= 4e-7);
    CHECK(worst_sum <= 1e-6);
    CHECK(worst_nll <= 1e-6);
    /* one logit far above the others: NLL of the top token ~0, of another ~the gap */
    for (int i = 0; i < 32000; i++)
        a[i] = (float)mp_rng_normal(&r);
    a[123] = 60.0f;
    double top = mp_row_nll(a, 32000, 123), other = mp_row_nll(a, 32000, 7);
    printf("  a dominant logit: NLL of it %.3e, of another token %.4f (gap %.4f)\n", top, other, 60.0 - a[7]);
    CHECK(top >= 0 && top < 1e-12);
    CHECK(fabs(other - (60.0 - a[7])) < 1e-6);
    free(a), free(b), free(c);
}

/* log-sum-exp of x[n] (and E_p[x - y], p = softmax(x), into *e when y) a block at a time, each block copied out */
static double blocked_lse(const float *x, const float *y, int n, double *e)
{
    static float bx[MP_LSE_BLOCK], by[MP_LSE_BLOCK];
    mp_lse l = mp_lse_empty();
    for (int v0 = 0; v0 < n; v0 += MP_LSE_BLOCK) {
        int nv = n - v0 < MP_LSE_BLOCK ? n - v0 : MP_LSE_BLOCK;
        memcpy(bx, x + v0, sizeof(float) * (size_t)nv);
        if (y)
            memcpy(by, y + v0, sizeof(float) * (size_t)nv);
        float mx;
        double z = mp_lse_block(bx, nv, &mx);
        mp_lse_add(&l, mx, z, y ? mp_kl_block(bx, by, nv, mx) : 0);
    }
    if (e)
        *e = l.t / l.z;
    return mp_lse_value(&l);
}

static void check_blocks(void)
{
    mp_rng r;
    mp_rng_seed(&r, 12);
    int lens[] = {4097, 32000};
    float *a = malloc(sizeof(float) * 32000), *b = malloc(sizeof(float) * 32000);
    double *pa = malloc(sizeof(double) * 32000), *pb = malloc(sizeof(double) * 32000);
    int same = 1;
    double worst = 0, kls[3] = {0};
    for (int k = 0; k < 2; k++) {
        int n = lens[k];
        for (int i = 0; i < n; i++)
            a[i] = (float)(3 * mp_rng_normal(&r));
        for (int y = 0; y < n; y += 977)
            same &= mp_row_nll(a, n, y) == blocked_lse(a, NULL, n, NULL) - (double)a[y];
        for (int c = 0; c < 3; c++) {
            for (int i = 0; i < n; i++)
                b[i] = c == 0   ? a[i] + (float)(0.1 * mp_rng_normal(&r))
                       : c == 1 ? a[i] + 5.0f
                                : (float)(3 * mp_rng_normal(&r));
            double e, kl = -blocked_lse(a, b, n, &e) + blocked_lse(b, NULL, n, NULL), ma = a[0], mb = b[0], za = 0,
                      zb = 0, ref = 0;
            kl += e;
            for (int i = 1; i < n; i++)
                ma = fmax(ma, a[i]), mb = fmax(mb, b[i]);
            for (int i = 0; i < n; i++)
                za += exp(a[i] - ma), zb += exp(b[i] - mb);
            for (int i = 0; i < n; i++)
                pa[i] = a[i] - ma - log(za), pb[i] = b[i] - mb - log(zb);
            for (int i = 0; i < n; i++)
                ref += exp(pa[i]) * (pa[i] - pb[i]);
            worst = fmax(worst, fabs(kl - ref) / (1e-7 + 1e-5 * fabs(ref)));
            kls[c] = ref;
        }
    }
    printf("  blocks of %d: NLL %s mp_row_nll's bits; KL (close %.3g, shifted %.2g, unrelated %.3g nats) within "
           "%.2f of the tolerance\n",
           MP_LSE_BLOCK, same ? "equal to" : "NOT", kls[0], kls[1], kls[2], worst);
    CHECK(same);
    CHECK(worst <= 1.0);
    free(a), free(b), free(pa), free(pb);
}

static void check_finite(void)
{
    float *x = malloc(sizeof(float) * 1000);
    float bad[] = {INFINITY, -INFINITY, NAN};
    int ok = 1;
    for (int n = 1; n <= 1000; n += 37) {
        for (int i = 0; i < n; i++)
            x[i] = i % 3 ? FLT_MAX : FLT_TRUE_MIN;
        ok &= mp_first_nonfinite(x, n) == -1;
        for (int k = 0; k < 3; k++) {
            int at = (n * (k + 1)) / 4, later = n - 1;
            x[later] = bad[(k + 1) % 3];
            x[at] = bad[k];
            ok &= mp_first_nonfinite(x, n) == at;
            x[at] = x[later] = 1.0f;
        }
    }
    printf("  first non-finite value: %s\n", ok ? "found at the right index in every case" : "WRONG");
    CHECK(ok);
    free(x);
}

int main(void)
{
    check_exp();
    check_rows();
    check_blocks();
    check_finite();
    return t_done("vmath");
}
