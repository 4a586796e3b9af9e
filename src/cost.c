/* cost.c - roofline cost of a block, device profiles and measured-timings lookup (see cost.h). */
#include "cost.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static const char *kind_names[MP_COMPUTE_COUNT] = {"fp16", "int8", "fp8", "int4"};

const char *mp_compute_kind_name(mp_compute_kind k) { return k >= 0 && k < MP_COMPUTE_COUNT ? kind_names[k] : "?"; }

int mp_compute_kind_from_name(const char *name, mp_compute_kind *k)
{
    for (int i = 0; i < MP_COMPUTE_COUNT; i++)
        if (strcmp(name, kind_names[i]) == 0) {
            *k = (mp_compute_kind)i;
            return 0;
        }
    return -1;
}

int mp_compute_kind_for_act_bits(int act_bits, mp_compute_kind *k)
{
    switch (act_bits) {
    case 16: *k = MP_COMPUTE_FP16; return 0;
    case 8: *k = MP_COMPUTE_INT8; return 0;
    case 4: *k = MP_COMPUTE_INT4; return 0;
    default: return mp_errorf(MP_EUSAGE, "cost model: no compute kind for %d-bit activations", act_bits);
    }
}

void mp_device_profile_h100_sxm(mp_device_profile *d)
{
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "NVIDIA H100 SXM5 80GB");
    d->hbm_bytes_per_s = 3.35e12;
    d->peak_ops_per_s[MP_COMPUTE_FP16] = 989.4e12;
    d->peak_ops_per_s[MP_COMPUTE_INT8] = 1978.9e12;
    d->peak_ops_per_s[MP_COMPUTE_FP8] = 1978.9e12;
    d->peak_ops_per_s[MP_COMPUTE_INT4] = 0;
    snprintf(d->source, sizeof d->source,
             "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: HBM3 3.35 TB/s; dense = half of the "
             "datasheet's with-sparsity FP16/BF16 1979 TFLOPS, INT8 3958 TOPS, FP8 3958 TFLOPS; no INT4 tensor "
             "cores on Hopper");
}

double mp_device_rate(const mp_device_profile *d, mp_compute_kind k, mp_compute_kind *used)
{
    static const mp_compute_kind next[MP_COMPUTE_COUNT] = {MP_COMPUTE_COUNT, MP_COMPUTE_FP16, MP_COMPUTE_FP16,
                                                           MP_COMPUTE_INT8};
    while (k >= 0 && k < MP_COMPUTE_COUNT) {
        if (d->peak_ops_per_s[k] > 0) {
            if (used)
                *used = k;
            return d->peak_ops_per_s[k];
        }
        k = next[k];
    }
    if (used)
        *used = MP_COMPUTE_FP16;
    return 0;
}

int mp_roofline(const mp_device_profile *d, int64_t m, int64_t n, int64_t M, int64_t weight_bytes, mp_compute_kind kind,
                mp_cost *out)
{
    memset(out, 0, sizeof *out);
    if (m < 1 || n < 1 || M < 1 || weight_bytes < 0)
        return mp_errorf(MP_EUSAGE, "cost model: bad block [%lld, %lld] with M = %lld tokens, %lld bytes", (long long)m,
                         (long long)n, (long long)M, (long long)weight_bytes);
    if (kind < 0 || kind >= MP_COMPUTE_COUNT)
        return mp_errorf(MP_EUSAGE, "cost model: unknown compute kind %d", (int)kind);
    double rate = mp_device_rate(d, kind, &out->kind_used);
    if (!(rate > 0) || !(d->hbm_bytes_per_s > 0))
        return mp_errorf(MP_EUSAGE, "cost model: device profile '%s' has no %s rate or no bandwidth", d->name,
                         mp_compute_kind_name(kind));
    out->memory_s = (double)weight_bytes / d->hbm_bytes_per_s;
    out->compute_s = 2.0 * (double)M * (double)m * (double)n / rate;
    out->memory_bound = out->memory_s >= out->compute_s;
    out->seconds = out->memory_bound ? out->memory_s : out->compute_s;
    return 0;
}

/* ---- measured timings ------------------------------------------------------------------------------------ */

void mp_timings_init(mp_timings *tt) { memset(tt, 0, sizeof *tt); }

void mp_timings_free(mp_timings *tt)
{
    free(tt->t);
    memset(tt, 0, sizeof *tt);
}

static int cmp_key(const mp_timing *a, const char *format, int64_t m, int64_t n, int64_t M)
{
    int c = strcmp(a->format, format);
    if (c)
        return c < 0 ? -1 : 1;
    if (a->m != m)
        return a->m < m ? -1 : 1;
    if (a->n != n)
        return a->n < n ? -1 : 1;
    return (a->M > M) - (a->M < M);
}

/* first entry not less than the key */
static int lower_bound(const mp_timings *tt, const char *format, int64_t m, int64_t n, int64_t M)
{
    int lo = 0, hi = tt->n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (cmp_key(&tt->t[mid], format, m, n, M) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int mp_timings_add(mp_timings *tt, const char *format, int64_t m, int64_t n, int64_t M, double seconds)
{
    if (!format || !format[0] || strlen(format) >= sizeof tt->t[0].format)
        return mp_errorf(MP_EUSAGE, "timings: format name '%s' is empty or longer than %zu characters",
                         format ? format : "", sizeof tt->t[0].format - 1);
    if (m < 1 || n < 1 || M < 1 || !isfinite(seconds) || !(seconds > 0))
        return mp_errorf(MP_EUSAGE, "timings: bad entry %s [%lld, %lld] M = %lld: %g s", format, (long long)m,
                         (long long)n, (long long)M, seconds);
    int at = lower_bound(tt, format, m, n, M);
    if (at < tt->n && cmp_key(&tt->t[at], format, m, n, M) == 0)
        return mp_errorf(MP_EUSAGE, "timings: duplicate entry %s [%lld, %lld] M = %lld", format, (long long)m,
                         (long long)n, (long long)M);
    if (tt->n == tt->cap) {
        int nc = tt->cap ? 2 * tt->cap : 16;
        mp_timing *t = realloc(tt->t, sizeof(mp_timing) * (size_t)nc);
        if (!t)
            return mp_errorf(MP_ENOMEM, "timings: out of memory for %d entries", nc);
        tt->t = t;
        tt->cap = nc;
    }
    memmove(tt->t + at + 1, tt->t + at, sizeof(mp_timing) * (size_t)(tt->n - at));
    mp_timing *e = &tt->t[at];
    memset(e, 0, sizeof *e);
    snprintf(e->format, sizeof e->format, "%s", format);
    e->m = m;
    e->n = n;
    e->M = M;
    e->seconds = seconds;
    tt->n++;
    return 0;
}

static int same_block(const mp_timing *a, const char *format, int64_t m, int64_t n)
{
    return strcmp(a->format, format) == 0 && a->m == m && a->n == n;
}

int mp_timings_lookup(const mp_timings *tt, const char *format, int64_t m, int64_t n, int64_t M, double *seconds)
{
    if (!tt || tt->n == 0)
        return 0;
    int at = lower_bound(tt, format, m, n, M);
    if (at < tt->n && cmp_key(&tt->t[at], format, m, n, M) == 0) {
        *seconds = tt->t[at].seconds;
        return 1;
    }
    /* between the largest measured M below and the smallest above, for the same format and shape */
    if (at == 0 || at == tt->n || !same_block(&tt->t[at - 1], format, m, n) || !same_block(&tt->t[at], format, m, n))
        return 0;
    const mp_timing *a = &tt->t[at - 1], *b = &tt->t[at];
    double w = (double)(M - a->M) / (double)(b->M - a->M);
    *seconds = a->seconds + w * (b->seconds - a->seconds);
    return 2;
}

int mp_block_cost(const mp_device_profile *d, const mp_timings *tt, const char *format, int64_t m, int64_t n, int64_t M,
                  int64_t weight_bytes, mp_compute_kind kind, mp_cost *out)
{
    MP_CHECK(mp_roofline(d, m, n, M, weight_bytes, kind, out));
    double s;
    int hit = format ? mp_timings_lookup(tt, format, m, n, M, &s) : 0;
    if (hit) {
        out->seconds = s;
        out->measured = hit;
    }
    return 0;
}
