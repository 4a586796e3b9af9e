/* vmath.c - vectorised exp-based kernels of the forward pass (see vmath.h). Built with -O3 and without
 * fused multiply-adds (CMakeLists.txt); on x86-64 with GCC each kernel is cloned for AVX-512 and AVX2 and
 * picked at load time, and the clones give the same bits as the SSE2 baseline. */
#include "vmath.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MP_CLONES
#endif

#define LANES 16 /* partial sums: fixed, whatever the vector width */

static inline float bits_to_float(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* exp(x) in fp32, branch-free (see vmath.h) */
static inline float vexp1(float x)
{
    int nan = x != x;
    float xc = nan ? 0.0f : x;
    xc = xc < -104.0f ? -104.0f : xc;                  /* exp(-104) is below half the smallest subnormal: 0 */
    xc = xc > 89.0f ? 89.0f : xc;                      /* exp(89) overflows: inf */
    float n = xc * 1.44269504088896341f + 12582912.0f; /* 1.5 * 2^23: rounds to an integer */
    n -= 12582912.0f;
    float r = xc - n * 0.693359375f; /* ln 2 in two parts: the first times n is exact */
    r = r - n * -2.12194440054690583e-4f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t k = (int32_t)n, k1 = k / 2, k2 = k - k1; /* k in [-150, 129]: both halves normal powers of 2 */
    float y = p * bits_to_float((uint32_t)(k1 + 127) << 23) * bits_to_float((uint32_t)(k2 + 127) << 23);
    return nan ? x : y;
}

MP_CLONES void mp_vexp(const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = vexp1(x[i]);
}

MP_CLONES void mp_silu_mul(float *g, const float *u, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        g[i] = g[i] / (1.0f + vexp1(-g[i])) * u[i];
}

MP_CLONES float mp_vmax(const float *x, int64_t n)
{
    float m[LANES];
    int64_t i = 0;
    for (int j = 0; j < LANES; j++)
        m[j] = x[0];
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
    for (; i < n; i++)
        m[0] = x[i] > m[0] ? x[i] : m[0];
    float mx = m[0];
    for (int j = 1; j < LANES; j++)
        mx = m[j] > mx ? m[j] : mx;
    return mx;
}

MP_CLONES float mp_exp_shift_sum(float *x, int64_t n, float m)
{
    float s[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            s[j] += x[i + j] = vexp1(x[i + j] - m);
    for (int j = 0; i < n; i++, j++)
        s[j] += x[i] = vexp1(x[i] - m);
    float sum = 0;
    for (int j = 0; j < LANES; j++)
        sum += s[j];
    return sum;
}

MP_CLONES double mp_lse_block(const float *x, int64_t n, float *mx)
{
    float m = mp_vmax(x, n);
    double s[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            s[j] += (double)vexp1(x[i + j] - m);
    for (int j = 0; i < n; i++, j++)
        s[j] += (double)vexp1(x[i] - m);
    double z = 0;
    for (int j = 0; j < LANES; j++)
        z += s[j];
    *mx = m;
    return z;
}

MP_CLONES double mp_kl_block(const float *a, const float *b, int64_t n, float ma)
{
    double s[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            s[j] += (double)vexp1(a[i + j] - ma) * ((double)a[i + j] - (double)b[i + j]);
    for (int j = 0; i < n; i++, j++)
        s[j] += (double)vexp1(a[i] - ma) * ((double)a[i] - (double)b[i]);
    double z = 0;
    for (int j = 0; j < LANES; j++)
        z += s[j];
    return z;
}

void mp_lse_add(mp_lse *l, float mx, double s, double kl)
{
    if (mx > l->m) { /* a new max: rescale what came before */
        double c = exp(l->m - mx);
        l->z = l->z * c + s, l->t = l->t * c + kl, l->m = mx;
    } else {
        double c = exp(mx - l->m);
        l->z += s * c, l->t += kl * c;
    }
}

double mp_row_nll(const float *r, int V, int y)
{
    mp_lse l = mp_lse_empty();
    for (int v0 = 0; v0 < V; v0 += MP_LSE_BLOCK) {
        float mx;
        double s = mp_lse_block(r + v0, V - v0 < MP_LSE_BLOCK ? V - v0 : MP_LSE_BLOCK, &mx);
        mp_lse_add(&l, mx, s, 0);
    }
    return mp_lse_value(&l) - (double)r[y];
}

MP_CLONES int64_t mp_first_nonfinite(const float *x, int64_t n)
{
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, x + i, sizeof b);
        bad |= (b & 0x7f800000u) == 0x7f800000u; /* every exponent bit set */
    }
    for (int64_t i = 0; bad && i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return -1;
}
