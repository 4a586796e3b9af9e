/* quant.c - weight formats, RTN/GPTQ quantizers, packing and losses (contract in quant.h). */
#include "quant.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "error.h"

#define LBL(label) ((label) ? (label) : "block")
#define GPTQ_MAX_RETRIES 6
#define GPTQ_LEAF 16 /* columns handled by the scalar kernel; wider spans recurse with sgemm */
#define GPTQ_ROWS 8  /* rows the scalar kernel interleaves */
#define LOSS_ROWS 128

/* ---- formats -------------------------------------------------------------------------------------- */
static const mp_qformat formats[] = {
    {"fp16", 16, 0, 0, 0, 16.0},    {"w8", 8, 0, 0, 0, 8.0},        {"w4", 4, 0, 0, 0, 4.0},
    {"w4g128", 4, 128, 0, 0, 4.25}, {"w3g128", 3, 128, 0, 0, 3.25}, {"w2g128", 2, 128, 0, 0, 2.25},
    {"w2g64", 2, 64, 0, 0, 2.5},    {"w8a8", 8, 0, 1, 8, 8.0},      {"w4a4", 4, 0, 1, 4, 4.0},
};
#define NFORMATS ((int)(sizeof formats / sizeof formats[0]))

int mp_qformat_count(void) { return NFORMATS; }

const mp_qformat *mp_qformat_at(int i) { return i >= 0 && i < NFORMATS ? &formats[i] : NULL; }

static const char *known_names(void) { return "fp16, w8, w4, w4g128, w3g128, w2g128, w2g64, w8a8, w4a4"; }

int mp_qformat_find(const char *name, const mp_qformat **out)
{
    for (int i = 0; name && i < NFORMATS; i++)
        if (!strcmp(formats[i].name, name)) {
            *out = &formats[i];
            return 0;
        }
    return mp_errorf(MP_EUSAGE, "unknown quantization format '%s' (known: %s)", name ? name : "(null)", known_names());
}

int mp_qformat_parse_list(const char *list, const mp_qformat **out, int cap, int *count)
{
    *count = 0;
    const char *p = list ? list : "";
    while (*p == ' ' || *p == '\t')
        p++;
    if (!*p)
        return mp_errorf(MP_EUSAGE, "the quantization format list is empty (known: %s)", known_names());
    int k = 0;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        const char *b = p;
        while (len && (*b == ' ' || *b == '\t'))
            b++, len--;
        while (len && (b[len - 1] == ' ' || b[len - 1] == '\t'))
            len--;
        char name[32];
        if (!len)
            return mp_errorf(MP_EUSAGE, "empty entry in the quantization format list '%s'", list);
        if (len >= sizeof name)
            return mp_errorf(MP_EUSAGE, "unknown quantization format '%.*s' (known: %s)", (int)len, b, known_names());
        memcpy(name, b, len);
        name[len] = 0;
        const mp_qformat *f = NULL;
        MP_CHECK(mp_qformat_find(name, &f));
        for (int i = 0; i < k; i++)
            if (out[i] == f)
                return mp_errorf(MP_EUSAGE, "quantization format '%s' listed twice in '%s'", name, list);
        if (k >= cap)
            return mp_errorf(MP_EUSAGE, "more than %d quantization formats in '%s'", cap, list);
        out[k++] = f;
        if (!e)
            break;
        p = e + 1;
    }
    *count = k;
    return 0;
}

int64_t mp_qformat_group_width(const mp_qformat *f, int64_t n) { return f->group <= 0 || f->group >= n ? n : f->group; }

int64_t mp_qformat_groups(const mp_qformat *f, int64_t n)
{
    int64_t g = mp_qformat_group_width(f, n);
    return g > 0 ? (n + g - 1) / g : 0;
}

static inline uint16_t code_at(const uint32_t *w, int64_t i, int bits)
{
    int64_t p = i * bits, k = p >> 5;
    int sh = (int)(p & 31);
    uint64_t x = w[k] >> sh;
    if (sh + bits > 32)
        x |= (uint64_t)w[k + 1] << (32 - sh);
    return (uint16_t)(x & ((1u << bits) - 1u));
}

int64_t mp_packed_words(int64_t n, int bits) { return (n * bits + 31) / 32; }

int64_t mp_qformat_bytes(const mp_qformat *f, int64_t m, int64_t n)
{
    int64_t bytes = 4 * m * mp_packed_words(n, f->bits);
    if (f->bits < 16)
        bytes += (f->symmetric ? 2 : 4) * m * mp_qformat_groups(f, n);
    return bytes;
}

/* ---- packing -------------------------------------------------------------------------------------- */
int mp_pack_codes(const uint16_t *codes, int64_t m, int64_t n, int bits, uint32_t *words)
{
    int64_t wpr = mp_packed_words(n, bits);
    uint32_t mask = (uint32_t)((1u << bits) - 1u);
    for (int64_t r = 0; r < m; r++) {
        uint32_t *w = words + r * wpr;
        const uint16_t *c = codes + r * n;
        memset(w, 0, (size_t)wpr * sizeof *w);
        for (int64_t i = 0; i < n; i++) {
            if (c[i] > mask)
                return mp_errorf(MP_EUSAGE, "code %u at [%lld, %lld] does not fit in %d bits", c[i], (long long)r,
                                 (long long)i, bits);
            int64_t p = i * bits, k = p >> 5;
            int sh = (int)(p & 31);
            w[k] |= (uint32_t)c[i] << sh;
            if (sh + bits > 32)
                w[k + 1] |= (uint32_t)c[i] >> (32 - sh);
        }
    }
    return 0;
}

void mp_unpack_codes(const uint32_t *words, int64_t m, int64_t n, int bits, uint16_t *codes)
{
    int64_t wpr = mp_packed_words(n, bits);
    for (int64_t r = 0; r < m; r++) {
        const uint32_t *w = words + r * wpr;
        uint16_t *c = codes + r * n;
        for (int64_t i = 0; i < n; i++)
            c[i] = code_at(w, i, bits);
    }
}

/* ---- quantized tensor ------------------------------------------------------------------------------ */
int mp_qtensor_create(const mp_qformat *f, int64_t m, int64_t n, mp_qtensor **out)
{
    *out = NULL;
    if (!f || m < 1 || n < 1)
        return mp_errorf(MP_EUSAGE, "quantized tensor: bad shape [%lld, %lld]", (long long)m, (long long)n);
    mp_qtensor *q = calloc(1, sizeof *q);
    if (!q)
        return mp_errorf(MP_ENOMEM, "out of memory (quantized tensor)");
    q->fmt = f;
    q->m = m;
    q->n = n;
    q->group = mp_qformat_group_width(f, n);
    q->ngroups = mp_qformat_groups(f, n);
    q->words_per_row = mp_packed_words(n, f->bits);
    q->qweight = calloc((size_t)(m * q->words_per_row), sizeof *q->qweight);
    int bad = !q->qweight;
    if (f->bits < 16) {
        q->scales = calloc((size_t)(m * q->ngroups), sizeof *q->scales);
        bad |= !q->scales;
        if (!f->symmetric) {
            q->zeros = calloc((size_t)(m * q->ngroups), sizeof *q->zeros);
            bad |= !q->zeros;
        }
    }
    if (bad) {
        mp_qtensor_destroy(q);
        return mp_errorf(MP_ENOMEM, "out of memory (quantized tensor [%lld, %lld] %s)", (long long)m, (long long)n,
                         f->name);
    }
    *out = q;
    return 0;
}

void mp_qtensor_destroy(mp_qtensor *q)
{
    if (!q)
        return;
    free(q->qweight);
    free(q->scales);
    free(q->zeros);
    free(q);
}

void mp_qtensor_codes(const mp_qtensor *q, uint16_t *codes)
{
    mp_unpack_codes(q->qweight, q->m, q->n, q->fmt->bits, codes);
}

void mp_qtensor_dequant(const mp_qtensor *q, float *out)
{
    const int bits = q->fmt->bits, half = 1 << (bits - 1);
    for (int64_t r = 0; r < q->m; r++) {
        const uint32_t *w = q->qweight + r * q->words_per_row;
        float *o = out + r * q->n;
        if (bits == 16) {
            for (int64_t i = 0; i < q->n; i++)
                o[i] = mp_f16_to_f32(code_at(w, i, 16));
            continue;
        }
        for (int64_t k = 0; k < q->ngroups; k++) {
            float s = mp_f16_to_f32(q->scales[r * q->ngroups + k]);
            int z = q->zeros ? (int)mp_f16_to_f32(q->zeros[r * q->ngroups + k]) : half;
            int64_t c0 = k * q->group, c1 = c0 + q->group < q->n ? c0 + q->group : q->n;
            for (int64_t i = c0; i < c1; i++)
                o[i] = (float)((int)code_at(w, i, bits) - z) * s;
        }
    }
}

/* ---- the grid ------------------------------------------------------------------------------------- */
typedef struct {
    float s;  /* fp16-rounded scale, as float */
    float zs; /* signed zero point: an integer in [-half, half - 1] (0 when symmetric) */
} qparam;

/* fminf/fmaxf are library calls at -O2; operands here are finite */
static inline float min_f(float a, float b) { return b < a ? b : a; }
static inline float max_f(float a, float b) { return b > a ? b : a; }

/* Scale and zero of a group with range [mn, mx] (see quant.h); sh/zh: the fp16 words stored. */
static int qparam_make(float mn, float mx, int bits, int symmetric, const char *label, qparam *p, uint16_t *sh,
                       uint16_t *zh)
{
    int half = 1 << (bits - 1);
    float qmax = (float)((1 << bits) - 1);
    mn = fminf(mn, 0.0f);
    mx = fmaxf(mx, 0.0f);
    float s, zs = 0.0f;
    if (symmetric) {
        s = fmaxf(-mn, mx) / (qmax / 2.0f);
        if (s == 0.0f)
            s = 1.0f;
    } else {
        s = (mx - mn) / qmax;
        if (s == 0.0f) {
            s = 1.0f;
            zs = (float)-half;
        } else {
            zs = (float)-half - mn / s;
            zs = rintf(fminf(fmaxf(zs, (float)-half), (float)(half - 1)));
        }
    }
    uint16_t h = mp_f32_to_f16(s);
    if ((h & 0x7fffu) >= 0x7c00u)
        return mp_errorf(MP_ENUMERIC, "%s: scale %g (weights in [%g, %g]) overflows fp16", LBL(label), (double)s,
                         (double)mn, (double)mx);
    if (h == 0)
        h = 1; /* smallest subnormal: every weight of the group rounds to the zero point */
    p->s = mp_f16_to_f32(h);
    p->zs = zs;
    *sh = h;
    if (zh)
        *zh = mp_f32_to_f16(zs + (float)half);
    return 0;
}

/* Code of w and its value (code - zero) * scale. Arithmetic as compressed-tensors: w / s + zs, clamp,
 * round half to even. */
static inline uint16_t qcode(float w, qparam p, int half, float *val)
{
    float t = w / p.s + p.zs, lo = (float)-half, hi = (float)(half - 1);
    t = t < lo ? lo : t > hi ? hi : t; /* fminf/fmaxf are library calls at -O2; t is finite */
    float q = rintf(t);
    *val = (q - p.zs) * p.s;
    return (uint16_t)((int)q + half);
}

static int check_finite_f32(const float *A, int64_t rows, int64_t cols, const char *what, const char *label)
{
    for (int64_t i = 0; i < rows * cols; i++)
        if (!isfinite(A[i]))
            return mp_errorf(MP_ENUMERIC, "%s: %s[%lld, %lld] = %g is not finite", LBL(label), what,
                             (long long)(i / cols), (long long)(i % cols), (double)A[i]);
    return 0;
}

static int check_finite_f64(const double *A, int64_t rows, int64_t cols, const char *what, const char *label)
{
    for (int64_t i = 0; i < rows * cols; i++)
        if (!isfinite(A[i]))
            return mp_errorf(MP_ENUMERIC, "%s: %s[%lld, %lld] = %g is not finite", LBL(label), what,
                             (long long)(i / cols), (long long)(i % cols), A[i]);
    return 0;
}

static int check_shape(const mp_qformat *f, const void *W, int64_t m, int64_t n, const char *label)
{
    if (!f || !W || m < 1 || n < 1)
        return mp_errorf(MP_EUSAGE, "%s: bad quantization arguments (format %s, shape [%lld, %lld])", LBL(label),
                         f ? f->name : "(none)", (long long)m, (long long)n);
    return 0;
}

/* Group parameters of every (row, group) from the weights src [m, n] (dead columns read as 0). */
static int params_static(const mp_qtensor *q, const float *src, const unsigned char *dead, const char *label,
                         qparam *par)
{
    const mp_qformat *f = q->fmt;
    for (int64_t r = 0; r < q->m; r++)
        for (int64_t k = 0; k < q->ngroups; k++) {
            int64_t c0 = k * q->group, c1 = c0 + q->group < q->n ? c0 + q->group : q->n;
            float mn = INFINITY, mx = -INFINITY;
            for (int64_t c = c0; c < c1; c++) {
                float w = dead && dead[c] ? 0.0f : src[r * q->n + c];
                mn = min_f(mn, w);
                mx = max_f(mx, w);
            }
            int64_t idx = r * q->ngroups + k;
            MP_CHECK(qparam_make(mn, mx, f->bits, f->symmetric, label, &par[idx], &q->scales[idx],
                                 q->zeros ? &q->zeros[idx] : NULL));
        }
    return 0;
}

static int quant_fp16(const float *W, int64_t m, int64_t n, const char *label, mp_qtensor *q)
{
    uint16_t *c = malloc((size_t)(m * n) * sizeof *c);
    if (!c)
        return mp_errorf(MP_ENOMEM, "%s: out of memory (fp16 codes)", LBL(label));
    for (int64_t i = 0; i < m * n; i++) {
        c[i] = mp_f32_to_f16(W[i]);
        if ((c[i] & 0x7fffu) >= 0x7c00u) {
            free(c);
            return mp_errorf(MP_ENUMERIC, "%s: W[%lld, %lld] = %g overflows fp16", LBL(label), (long long)(i / n),
                             (long long)(i % n), (double)W[i]);
        }
    }
    int rc = mp_pack_codes(c, m, n, 16, q->qweight);
    free(c);
    return rc;
}

int mp_quant_rtn(const mp_qformat *f, const float *W, int64_t m, int64_t n, const char *label, mp_qtensor **out)
{
    *out = NULL;
    MP_CHECK(check_shape(f, W, m, n, label));
    MP_CHECK(check_finite_f32(W, m, n, "W", label));
    mp_qtensor *q;
    MP_CHECK(mp_qtensor_create(f, m, n, &q));
    int rc = 0;
    uint16_t *codes = NULL;
    qparam *par = NULL;
    if (f->bits == 16) {
        MP_CHECK_GOTO(quant_fp16(W, m, n, label, q), done);
        goto done;
    }
    codes = malloc((size_t)(m * n) * sizeof *codes);
    par = malloc((size_t)(m * q->ngroups) * sizeof *par);
    if (!codes || !par) {
        rc = mp_errorf(MP_ENOMEM, "%s: out of memory (RTN)", LBL(label));
        goto done;
    }
    MP_CHECK_GOTO(params_static(q, W, NULL, label, par), done);
    int half = 1 << (f->bits - 1);
    for (int64_t r = 0; r < m; r++)
        for (int64_t i = 0; i < n; i++) {
            float v;
            codes[r * n + i] = qcode(W[r * n + i], par[r * q->ngroups + i / q->group], half, &v);
        }
    MP_CHECK_GOTO(mp_pack_codes(codes, m, n, f->bits, q->qweight), done);
done:
    free(codes);
    free(par);
    if (rc < 0)
        mp_qtensor_destroy(q);
    else
        *out = q;
    return rc;
}

/* ---- GPTQ ----------------------------------------------------------------------------------------- */
struct mp_gptq_factor {
    int64_t n;
    mp_gptq_opts opts;
    int64_t *perm;       /* processing order -> original column; NULL = identity */
    unsigned char *dead; /* [n] original order */
    float *R;            /* [n, n] row-major; upper triangle: H_damped(permuted) = R R^T */
    mp_gptq_info info;
};

void mp_gptq_opts_default(mp_gptq_opts *o)
{
    o->percdamp = 0.01;
    o->blocksize = 128;
    o->act_order = 1;
    o->static_groups = 1;
}

typedef struct {
    double key;
    int64_t idx;
} keyed;

static int by_desc_key(const void *a, const void *b)
{
    const keyed *x = a, *y = b;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

void mp_gptq_factor_destroy(mp_gptq_factor *fac)
{
    if (!fac)
        return;
    free(fac->perm);
    free(fac->dead);
    free(fac->R);
    free(fac);
}

void mp_gptq_factor_info(const mp_gptq_factor *fac, mp_gptq_info *info) { *info = fac->info; }

int mp_gptq_factor_create(const double *H, int64_t n, const mp_gptq_opts *opts, const char *label, mp_gptq_factor **out)
{
    *out = NULL;
    mp_gptq_opts o;
    if (opts)
        o = *opts;
    else
        mp_gptq_opts_default(&o);
    if (!H || n < 1 || !(o.percdamp > 0) || o.blocksize < 1)
        return mp_errorf(MP_EUSAGE, "%s: bad GPTQ arguments (n %lld, percdamp %g, blocksize %d)", LBL(label),
                         (long long)n, o.percdamp, o.blocksize);
    if (o.act_order)
        o.static_groups = 1;
    MP_CHECK(check_finite_f64(H, n, n, "H", label));
    for (int64_t i = 0; i < n; i++)
        if (H[i * n + i] < 0)
            return mp_errorf(MP_ENUMERIC, "%s: H[%lld, %lld] = %g < 0: not a Gram matrix", LBL(label), (long long)i,
                             (long long)i, H[i * n + i]);

    int rc = 0;
    mp_gptq_factor *fac = calloc(1, sizeof *fac);
    double *A = NULL, *diag = NULL;
    if (!fac)
        return mp_errorf(MP_ENOMEM, "%s: out of memory (GPTQ factor)", LBL(label));
    fac->n = n;
    fac->opts = o;
    fac->dead = calloc((size_t)n, 1);
    diag = malloc((size_t)n * sizeof *diag);
    A = malloc((size_t)(n * n) * sizeof *A);
    if (!fac->dead || !diag || !A || (o.act_order && !(fac->perm = malloc((size_t)n * sizeof *fac->perm)))) {
        rc = mp_errorf(MP_ENOMEM, "%s: out of memory (GPTQ factor, n = %lld)", LBL(label), (long long)n);
        goto fail;
    }
    double mean = 0;
    for (int64_t i = 0; i < n; i++) {
        diag[i] = H[i * n + i];
        fac->dead[i] = diag[i] == 0;
        fac->info.dead += fac->dead[i];
        mean += fac->dead[i] ? 1.0 : diag[i];
    }
    mean /= (double)n;
    if (fac->perm) { /* by descending raw diag H (dead columns, 0, last); ties by index */
        keyed *ks = malloc((size_t)n * sizeof *ks);
        if (!ks) {
            rc = mp_errorf(MP_ENOMEM, "%s: out of memory (act-order, n = %lld)", LBL(label), (long long)n);
            goto fail;
        }
        for (int64_t i = 0; i < n; i++)
            ks[i] = (keyed){diag[i], i};
        qsort(ks, (size_t)n, sizeof *ks, by_desc_key);
        for (int64_t i = 0; i < n; i++)
            fac->perm[i] = ks[i].idx;
        free(ks);
    }
    double pd = o.percdamp;
    int info = -1;
    for (int attempt = 0; attempt <= GPTQ_MAX_RETRIES; attempt++) {
        double damp = pd * mean;
        /* A = J P H P^T J + damp I (J reverses the order), row-major; its lower Cholesky factor L' gives
         * R = J L' J, upper, with P H P^T + damp I = R R^T */
        for (int64_t a = 0; a < n; a++) {
            int64_t i = fac->perm ? fac->perm[n - 1 - a] : n - 1 - a;
            double *row = A + a * n;
            for (int64_t b = 0; b <= a; b++) {
                int64_t j = fac->perm ? fac->perm[n - 1 - b] : n - 1 - b;
                row[b] = H[i * n + j];
            }
            if (fac->dead[i])
                row[a] = 1.0;
            row[a] += damp;
        }
        /* the row-major lower triangle is LAPACK's column-major upper one: no transposition */
        info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', (lapack_int)n, A, (lapack_int)n);
        fac->info.flops += (double)n * n * n / 3.0;
        if (info == 0) {
            fac->info.percdamp = pd;
            fac->info.damp = damp;
            break;
        }
        if (info < 0) {
            rc = mp_errorf(MP_EINTERNAL, "%s: dpotrf argument %d invalid", LBL(label), -info);
            goto fail;
        }
        fac->info.retries++;
        pd *= 10.0;
    }
    if (info != 0) {
        rc = mp_errorf(MP_ENUMERIC,
                       "%s: GPTQ Hessian [%lld x %lld] is not positive definite even with damping %g * mean(diag H)",
                       LBL(label), (long long)n, (long long)n, pd / 10.0);
        goto fail;
    }
    /* R_ij = L'_{n-1-i, n-1-j}: reverse the flat array in place, then narrow to fp32 in place (ascending:
     * float k is written over bytes of double k/2, already read) */
    int64_t nn = n * n;
    for (int64_t k = 0; k < nn / 2; k++) {
        double t = A[k];
        A[k] = A[nn - 1 - k];
        A[nn - 1 - k] = t;
    }
    float *Rf = (float *)(void *)A;
    for (int64_t k = 0; k < nn; k++) {
        double v = A[k];
        Rf[k] = (float)v;
    }
    float *shrunk = realloc(A, (size_t)nn * sizeof(float));
    fac->R = shrunk ? shrunk : Rf; /* shrinking failed: keep the larger block (A is still valid) */
    A = NULL;
    free(diag);
    *out = fac;
    return 0;
fail:
    free(A);
    free(diag);
    mp_gptq_factor_destroy(fac);
    return rc;
}

/* State of one GPTQ run (processing order: column j of Wp is original column perm[j]). */
typedef struct {
    int64_t m, n, bw, i1; /* block [i1, i1 + bw) */
    float *Wp;            /* [m, n] W_orig (dead zeroed, permuted); column j becomes D_j = W_j - Q_j */
    const float *R;       /* [n, n] */
    float *A;             /* [m, bw] sum_{i < j} D_i R_ij for the block's columns */
    const float *rinv;    /* 1 / R_jj */
    const int64_t *col;   /* processing order -> original column */
    const int64_t *gidx;  /* processing order -> group of the original column */
    const qparam *par;    /* [m, ngroups] */
    int64_t ngroups;
    int half;
    uint16_t *codes; /* [m, n] original order */
    double flops;
} gptq_run;

/* Quantize columns [c0, c1) (absolute) of the current block, every row. Rows are independent: a tile
 * of GPTQ_ROWS rows is advanced column by column so that their dependency chains overlap. */
static void gptq_leaf(gptq_run *g, int64_t c0, int64_t c1)
{
    const int64_t n = g->n, bw = g->bw, i1 = g->i1;
    for (int64_t r0 = 0; r0 < g->m; r0 += GPTQ_ROWS) {
        int64_t r1 = r0 + GPTQ_ROWS < g->m ? r0 + GPTQ_ROWS : g->m;
        for (int64_t j = c0; j < c1; j++) {
            const float *Rj = g->R + j * n, rinv = g->rinv[j];
            const int64_t oc = g->col[j], gi = g->gidx[j];
            for (int64_t r = r0; r < r1; r++) {
                float *a = g->A + r * bw - i1; /* a[j] for absolute column j */
                float *w = g->Wp + r * n, v;
                g->codes[r * n + oc] = qcode(w[j] + a[j] * rinv, g->par[r * g->ngroups + gi], g->half, &v);
                float d = w[j] - v;
                w[j] = d;
                for (int64_t l = j + 1; l < c1; l++)
                    a[l] += d * Rj[l];
            }
        }
    }
    int64_t L = c1 - c0;
    g->flops += (double)g->m * (double)(L * (L - 1) + 2 * L);
}

/* Columns [c0, c1) of the block: halves, the second updated by the first with one sgemm. */
static void gptq_span(gptq_run *g, int64_t c0, int64_t c1)
{
    if (c1 - c0 <= GPTQ_LEAF) {
        gptq_leaf(g, c0, c1);
        return;
    }
    int64_t mid = c0 + (c1 - c0 + 1) / 2;
    gptq_span(g, c0, mid);
    /* A[:, mid:c1] += D[:, c0:mid] R[c0:mid, mid:c1] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g->m, (int)(c1 - mid), (int)(mid - c0), 1.0f,
                g->Wp + c0, (int)g->n, g->R + c0 * g->n + mid, (int)g->n, 1.0f, g->A + (mid - g->i1), (int)g->bw);
    g->flops += 2.0 * (double)g->m * (double)(c1 - mid) * (double)(mid - c0);
    gptq_span(g, mid, c1);
}

int mp_quant_gptq_factored(const mp_qformat *f, const float *W, int64_t m, int64_t n, const mp_gptq_factor *fac,
                           const char *label, mp_qtensor **out, mp_gptq_info *info)
{
    *out = NULL;
    MP_CHECK(check_shape(f, W, m, n, label));
    if (!fac || fac->n != n)
        return mp_errorf(MP_EUSAGE, "%s: GPTQ factor of size %lld for a block with %lld columns", LBL(label),
                         fac ? (long long)fac->n : 0LL, (long long)n);
    if (info) {
        *info = fac->info;
        info->flops = 0;
    }
    if (f->bits == 16)
        return mp_quant_rtn(f, W, m, n, label, out);
    MP_CHECK(check_finite_f32(W, m, n, "W", label));
    mp_qtensor *q;
    MP_CHECK(mp_qtensor_create(f, m, n, &q));
    const int64_t g = q->group, ng = q->ngroups;
    const int dynamic = !fac->opts.static_groups && ng > 1;
    int64_t B = fac->opts.blocksize;
    if (dynamic)
        B = (B + g - 1) / g * g;
    if (B > n)
        B = n;

    int rc = 0;
    float *Wp = malloc((size_t)(m * n) * sizeof *Wp);
    float *A = malloc((size_t)(m * B) * sizeof *A);
    float *X = dynamic ? malloc((size_t)(m * B) * sizeof *X) : NULL;
    float *rinv = malloc((size_t)n * sizeof *rinv);
    int64_t *col = malloc((size_t)n * sizeof *col), *gidx = malloc((size_t)n * sizeof *gidx);
    qparam *par = malloc((size_t)(m * ng) * sizeof *par);
    uint16_t *codes = malloc((size_t)(m * n) * sizeof *codes);
    if (!Wp || !A || (dynamic && !X) || !rinv || !col || !gidx || !par || !codes) {
        rc = mp_errorf(MP_ENOMEM, "%s: out of memory (GPTQ of [%lld, %lld])", LBL(label), (long long)m, (long long)n);
        goto done;
    }
    for (int64_t j = 0; j < n; j++) {
        col[j] = fac->perm ? fac->perm[j] : j;
        gidx[j] = col[j] / g;
        rinv[j] = 1.0f / fac->R[j * n + j];
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < n; j++)
            Wp[r * n + j] = fac->dead[col[j]] ? 0.0f : W[r * n + col[j]];
    if (!dynamic)
        MP_CHECK_GOTO(params_static(q, W, fac->dead, label, par), done);

    gptq_run run = {.m = m,
                    .n = n,
                    .Wp = Wp,
                    .R = fac->R,
                    .A = A,
                    .rinv = rinv,
                    .col = col,
                    .gidx = gidx,
                    .par = par,
                    .ngroups = ng,
                    .half = 1 << (f->bits - 1),
                    .codes = codes};
    for (int64_t i1 = 0; i1 < n; i1 += B) {
        int64_t i2 = i1 + B < n ? i1 + B : n, bw = i2 - i1;
        run.i1 = i1;
        run.bw = bw;
        /* A = D[:, :i1] R[:i1, i1:i2]: every earlier column's contribution (left-looking lazy batch) */
        if (i1 > 0) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)bw, (int)i1, 1.0f, Wp, (int)n,
                        fac->R + i1, (int)n, 0.0f, A, (int)bw);
            run.flops += 2.0 * (double)m * (double)bw * (double)i1;
        } else {
            memset(A, 0, (size_t)(m * bw) * sizeof *A);
        }
        if (dynamic) {
            /* weights of the block as updated by the earlier blocks: W + A R_bb^-1 (R_bb upper) */
            memcpy(X, A, (size_t)(m * bw) * sizeof *X);
            cblas_strsm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, (int)m, (int)bw, 1.0f,
                        fac->R + i1 * n + i1, (int)n, X, (int)bw);
            run.flops += (double)m * (double)bw * (double)bw;
            for (int64_t r = 0; r < m; r++)
                for (int64_t k = i1 / g; k * g < i2; k++) {
                    int64_t c0 = k * g, c1 = c0 + g < n ? c0 + g : n;
                    float mn = INFINITY, mx = -INFINITY;
                    for (int64_t c = c0; c < c1; c++) {
                        float w = Wp[r * n + c] + X[r * bw + c - i1];
                        mn = min_f(mn, w);
                        mx = max_f(mx, w);
                    }
                    int64_t idx = r * ng + k;
                    MP_CHECK_GOTO(qparam_make(mn, mx, f->bits, f->symmetric, label, &par[idx], &q->scales[idx],
                                              q->zeros ? &q->zeros[idx] : NULL),
                                  done);
                }
        }
        gptq_span(&run, i1, i2);
    }
    MP_CHECK_GOTO(mp_pack_codes(codes, m, n, f->bits, q->qweight), done);
    if (info)
        info->flops = run.flops;
done:
    free(Wp);
    free(A);
    free(X);
    free(rinv);
    free(col);
    free(gidx);
    free(par);
    free(codes);
    if (rc < 0)
        mp_qtensor_destroy(q);
    else
        *out = q;
    return rc;
}

int mp_quant_gptq(const mp_qformat *f, const float *W, int64_t m, int64_t n, const double *H, const mp_gptq_opts *opts,
                  const char *label, mp_qtensor **out, mp_gptq_info *info)
{
    *out = NULL;
    MP_CHECK(check_shape(f, W, m, n, label));
    MP_CHECK(check_finite_f32(W, m, n, "W", label));
    mp_gptq_factor *fac;
    MP_CHECK(mp_gptq_factor_create(H, n, opts, label, &fac));
    int rc = mp_quant_gptq_factored(f, W, m, n, fac, label, out, info);
    if (info && rc == 0)
        info->flops += fac->info.flops;
    mp_gptq_factor_destroy(fac);
    if (rc < 0)
        mp_error_trace(__FILE__, __LINE__, __func__);
    return rc;
}

/* ---- losses --------------------------------------------------------------------------------------- */
static int loss_result(double v, const char *label, double *loss)
{
    if (!isfinite(v))
        return mp_errorf(MP_ENUMERIC, "%s: loss is not finite (%g)", LBL(label), v);
    *loss = v;
    return 0;
}

int mp_loss_gram(const float *W, const float *Wq, int64_t m, int64_t n, const double *H, const double *O,
                 const char *label, double *loss)
{
    if (!W || !Wq || !H || m < 1 || n < 1)
        return mp_errorf(MP_EUSAGE, "%s: bad loss arguments", LBL(label));
    int64_t rows = O ? m : (m < LOSS_ROWS ? m : LOSS_ROWS);
    double *E = malloc((size_t)(rows * n) * sizeof *E), *T = malloc((size_t)(rows * n) * sizeof *T);
    double *F = O ? malloc((size_t)(m * m) * sizeof *F) : NULL;
    if (!E || !T || (O && !F)) {
        free(E);
        free(T);
        free(F);
        return mp_errorf(MP_ENOMEM, "%s: out of memory (loss of [%lld, %lld])", LBL(label), (long long)m, (long long)n);
    }
    double sum = 0;
    for (int64_t r0 = 0; r0 < m; r0 += rows) {
        int64_t rb = r0 + rows < m ? rows : m - r0;
        for (int64_t i = 0; i < rb * n; i++)
            E[i] = (double)W[r0 * n + i] - (double)Wq[r0 * n + i];
        /* T = E H */
        cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (int)rb, (int)n, 1.0, H, (int)n, E, (int)n, 0.0, T, (int)n);
        if (O) {
            /* F = T E^T = E H E^T, loss = sum O .* F */
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)m, (int)n, 1.0, T, (int)n, E, (int)n, 0.0,
                        F, (int)m);
            for (int64_t i = 0; i < m * m; i++)
                sum += O[i] * F[i];
        } else {
            for (int64_t i = 0; i < rb * n; i++)
                sum += E[i] * T[i];
        }
    }
    free(E);
    free(T);
    free(F);
    return loss_result(sum, label, loss);
}

int mp_factor_gram(const float *V, int64_t r, int64_t n, const double *G, double *out)
{
    if (!V || !G || !out || r < 1 || n < 1)
        return mp_errorf(MP_EUSAGE, "factor Gram: bad arguments");
    double *Vd = malloc((size_t)(r * n) * sizeof *Vd), *T = malloc((size_t)(r * n) * sizeof *T);
    if (!Vd || !T) {
        free(Vd);
        free(T);
        return mp_errorf(MP_ENOMEM, "out of memory (factor Gram [%lld, %lld])", (long long)r, (long long)n);
    }
    for (int64_t i = 0; i < r * n; i++)
        Vd[i] = V[i];
    cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (int)r, (int)n, 1.0, G, (int)n, Vd, (int)n, 0.0, T, (int)n);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)r, (int)r, (int)n, 1.0, T, (int)n, Vd, (int)n, 0.0, out,
                (int)r);
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = i + 1; j < r; j++) {
            double s = 0.5 * (out[i * r + j] + out[j * r + i]);
            out[i * r + j] = out[j * r + i] = s;
        }
    free(Vd);
    free(T);
    return 0;
}

int mp_loss_factors(const float *U, const float *Uq, int64_t m, int64_t r, const float *V, const float *Vq, int64_t n,
                    const double *G, const char *label, double *loss)
{
    if (!U || !V || !G || m < 1 || r < 1 || n < 1)
        return mp_errorf(MP_EUSAGE, "%s: bad factor loss arguments", LBL(label));
    if (!Uq && !Vq) {
        *loss = 0;
        return 0;
    }
    /* D = UV - Uq Vq = A B with A = [U | U - Uq], B = [V - Vq ; Vq]; drop the half that is zero */
    int useV = Vq != NULL, useU = Uq != NULL;
    int64_t k = (int64_t)(useV + useU) * r;
    double *Am = malloc((size_t)(m * k) * sizeof *Am), *Bm = malloc((size_t)(k * n) * sizeof *Bm);
    double *T = malloc((size_t)(k * n) * sizeof *T), *S = malloc((size_t)(k * k) * sizeof *S);
    double *AtA = malloc((size_t)(k * k) * sizeof *AtA);
    int rc = 0;
    if (!Am || !Bm || !T || !S || !AtA) {
        rc = mp_errorf(MP_ENOMEM, "%s: out of memory (factor loss, rank %lld)", LBL(label), (long long)r);
        goto done;
    }
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < r; j++) {
            double u = U[i * r + j];
            int64_t c = 0;
            if (useV)
                Am[i * k + c++ * r + j] = u; /* pairs with V - Vq */
            if (useU)
                Am[i * k + c * r + j] = u - (double)Uq[i * r + j]; /* pairs with Vq (V when Vq is NULL) */
        }
    for (int64_t j = 0; j < r; j++)
        for (int64_t c = 0; c < n; c++) {
            double v = V[j * n + c];
            int64_t row = 0;
            if (useV)
                Bm[(row++ * r + j) * n + c] = v - (double)Vq[j * n + c];
            if (useU)
                Bm[(row * r + j) * n + c] = useV ? (double)Vq[j * n + c] : v;
        }
    /* S = B G B^T, AtA = A^T A, loss = sum AtA .* S */
    cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (int)k, (int)n, 1.0, G, (int)n, Bm, (int)n, 0.0, T, (int)n);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)k, (int)k, (int)n, 1.0, T, (int)n, Bm, (int)n, 0.0, S,
                (int)k);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)k, (int)k, (int)m, 1.0, Am, (int)k, Am, (int)k, 0.0, AtA,
                (int)k);
    double sum = 0;
    for (int64_t i = 0; i < k * k; i++)
        sum += AtA[i] * S[i];
    rc = loss_result(sum, label, loss);
done:
    free(Am);
    free(Bm);
    free(T);
    free(S);
    free(AtA);
    return rc;
}

void mp_quant_act(const float *X, int64_t t, int64_t n, int bits, float *Xq)
{
    /* symmetric, 2^bits - 1 levels: the row's extreme values land on +-top (x / s = +-top up to a rounding
     * error far from a tie), so inputs that differ in their last bits (another summation order, a GPU) give
     * the same codes */
    float top = (float)((1 << (bits - 1)) - 1);
    for (int64_t r = 0; r < t; r++) {
        const float *x = X + r * n;
        float *y = Xq + r * n, amax = 0;
        for (int64_t i = 0; i < n; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        float s = amax / top;
        for (int64_t i = 0; i < n; i++) {
            if (s == 0.0f) {
                y[i] = 0.0f;
                continue;
            }
            float v = fminf(fmaxf(x[i] / s, -top), top);
            y[i] = rintf(v) * s;
        }
    }
}

int mp_loss_act(const float *W, const float *Wq, int64_t m, int64_t n, const float *X, int64_t t, int act_bits,
                const double *O, const char *label, double *loss)
{
    if (!W || !Wq || !X || m < 1 || n < 1 || t < 1 || act_bits < 2 || act_bits > 16)
        return mp_errorf(MP_EUSAGE, "%s: bad activation loss arguments", LBL(label));
    MP_CHECK(check_finite_f32(X, t, n, "X", label));
    int64_t mc = m < LOSS_ROWS ? m : LOSS_ROWS;
    float *Xq = malloc((size_t)(t * n) * sizeof *Xq);
    double *L = malloc((size_t)(t * 2 * n) * sizeof *L), *Rm = malloc((size_t)(mc * 2 * n) * sizeof *Rm);
    double *D = malloc((size_t)(t * m) * sizeof *D), *DO = O ? malloc((size_t)(t * m) * sizeof *DO) : NULL;
    int rc = 0;
    if (!Xq || !L || !Rm || !D || (O && !DO)) {
        rc = mp_errorf(MP_ENOMEM, "%s: out of memory (activation loss)", LBL(label));
        goto done;
    }
    mp_quant_act(X, t, n, act_bits, Xq);
    /* D = W x - Wq xq = (x - xq)^T W^T + xq^T (W - Wq)^T, per token row: L = [X - Xq | Xq] */
    for (int64_t r = 0; r < t; r++)
        for (int64_t i = 0; i < n; i++) {
            L[r * 2 * n + i] = (double)X[r * n + i] - (double)Xq[r * n + i];
            L[r * 2 * n + n + i] = Xq[r * n + i];
        }
    for (int64_t r0 = 0; r0 < m; r0 += mc) {
        int64_t rb = r0 + mc < m ? mc : m - r0;
        for (int64_t r = 0; r < rb; r++)
            for (int64_t i = 0; i < n; i++) {
                double w = W[(r0 + r) * n + i];
                Rm[r * 2 * n + i] = w;
                Rm[r * 2 * n + n + i] = w - (double)Wq[(r0 + r) * n + i];
            }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)t, (int)rb, (int)(2 * n), 1.0, L, (int)(2 * n), Rm,
                    (int)(2 * n), 0.0, D + r0, (int)m);
    }
    double sum = 0;
    if (O) {
        cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (int)t, (int)m, 1.0, O, (int)m, D, (int)m, 0.0, DO, (int)m);
        for (int64_t i = 0; i < t * m; i++)
            sum += D[i] * DO[i];
    } else {
        for (int64_t i = 0; i < t * m; i++)
            sum += D[i] * D[i];
    }
    rc = loss_result(sum, label, loss);
done:
    free(Xq);
    free(L);
    free(Rm);
    free(D);
    free(DO);
    return rc;
}

/* ---- measure -------------------------------------------------------------------------------------- */
int mp_quant_measure(const mp_qformat *f, mp_qmethod method, const mp_qblock *blk, const mp_gptq_factor *fac,
                     mp_qresult *res, mp_qtensor **out)
{
    if (out)
        *out = NULL;
    memset(res, 0, sizeof *res);
    if (!blk || !blk->H)
        return mp_errorf(MP_EUSAGE, "%s: measure needs a block with its Gram", blk ? LBL(blk->label) : "block");
    const char *label = blk->label;
    MP_CHECK(check_shape(f, blk->W, blk->m, blk->n, label));
    if (f->act_bits && (!blk->X || blk->t < 1))
        return mp_errorf(MP_EUSAGE, "%s: format %s needs a sample of activations", LBL(label), f->name);
    if (method != MP_QUANT_RTN && method != MP_QUANT_GPTQ)
        return mp_errorf(MP_EUSAGE, "%s: unknown quantization method %d", LBL(label), (int)method);

    mp_qtensor *q = NULL;
    mp_gptq_factor *own = NULL;
    float *Wq = NULL;
    int rc = 0;
    if (method == MP_QUANT_GPTQ && f->bits < 16) {
        if (!fac) {
            MP_CHECK_GOTO(mp_gptq_factor_create(blk->H, blk->n, NULL, label, &own), done);
            fac = own;
        }
        MP_CHECK_GOTO(mp_quant_gptq_factored(f, blk->W, blk->m, blk->n, fac, label, &q, &res->gptq), done);
        if (own)
            res->gptq.flops += own->info.flops;
    } else {
        MP_CHECK_GOTO(mp_quant_rtn(f, blk->W, blk->m, blk->n, label, &q), done);
    }
    Wq = malloc((size_t)(blk->m * blk->n) * sizeof *Wq);
    if (!Wq) {
        rc = mp_errorf(MP_ENOMEM, "%s: out of memory (dequantized block)", LBL(label));
        goto done;
    }
    mp_qtensor_dequant(q, Wq);
    MP_CHECK_GOTO(mp_loss_gram(blk->W, Wq, blk->m, blk->n, blk->H, blk->O, label, &res->loss_gram), done);
    res->loss = res->loss_gram;
    if (f->act_bits) {
        MP_CHECK_GOTO(
            mp_loss_act(blk->W, Wq, blk->m, blk->n, blk->X, blk->t, f->act_bits, blk->O, label, &res->loss_sample),
            done);
        res->loss = res->loss_sample * (blk->x_scale > 0 ? blk->x_scale : 1.0);
    }
    res->bytes = mp_qformat_bytes(f, blk->m, blk->n);
done:
    free(Wq);
    mp_gptq_factor_destroy(own);
    if (rc < 0 || !out)
        mp_qtensor_destroy(q);
    else
        *out = q;
    return rc;
}
