/* qgemm.c - grouped products with quantized blocks on the CPU (contract in qgemm.h). */
#include "qgemm.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "error.h"

#define LBL(label) ((label) ? (label) : "qgemm")
#define ROW_CHUNK 256 /* token rows converted (and activation-quantized) at a time */
#define PANEL 128     /* weight rows dequantized at a time */

size_t mp_qg_type_size(mp_qg_type t)
{
    switch (t) {
    case MP_QG_F32: return 4;
    case MP_QG_F16:
    case MP_QG_BF16: return 2;
    }
    return 0;
}

const char *mp_qg_type_name(mp_qg_type t)
{
    switch (t) {
    case MP_QG_F32: return "fp32";
    case MP_QG_F16: return "fp16";
    case MP_QG_BF16: return "bf16";
    }
    return "?";
}

float mp_qg_load(const void *p, mp_qg_type t, int64_t i)
{
    switch (t) {
    case MP_QG_F16: return mp_f16_to_f32(((const uint16_t *)p)[i]);
    case MP_QG_BF16: return mp_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

void mp_qg_store(void *p, mp_qg_type t, int64_t i, float v)
{
    switch (t) {
    case MP_QG_F16: ((uint16_t *)p)[i] = mp_f32_to_f16(v); break;
    case MP_QG_BF16: ((uint16_t *)p)[i] = mp_f32_to_bf16(v); break;
    default: ((float *)p)[i] = v; break;
    }
}

/* ---- argument checks ------------------------------------------------------------------------------ */
static int check_types(mp_qg_type xt, mp_qg_type yt, const char *label)
{
    if (!mp_qg_type_size(xt) || !mp_qg_type_size(yt))
        return mp_errorf(MP_EUSAGE, "%s: unknown element type (X %d, Y %d; fp32 = 0, fp16 = 1, bf16 = 2)", LBL(label),
                         (int)xt, (int)yt);
    return 0;
}

static int check_block(const mp_qtensor *w, const char *what, int i, const char *label)
{
    if (!w || !w->fmt || !w->qweight || w->m < 1 || w->n < 1 || (w->fmt->bits < 16 && !w->scales) ||
        (w->fmt->bits < 16 && !w->fmt->symmetric && !w->zeros))
        return mp_errorf(MP_EUSAGE, "%s: item %d: %s is missing or incomplete", LBL(label), i, what);
    return 0;
}

typedef struct {
    int64_t row0, rows;
    int item;
} row_range;

static int by_row0(const void *a, const void *b)
{
    const row_range *x = a, *y = b;
    return x->row0 < y->row0 ? -1 : x->row0 > y->row0 ? 1 : x->item - y->item;
}

/* rows >= 0, row0 >= 0, inside [0, rows_total) when rows_total >= 0, pairwise disjoint */
static int check_rows(const int64_t *row0, const int64_t *rows, size_t stride, int count, int64_t rows_total,
                      const char *label)
{
    row_range *r = malloc((size_t)(count > 0 ? count : 1) * sizeof *r);
    if (!r)
        return mp_errorf(MP_ENOMEM, "%s: out of memory (row check)", LBL(label));
    int n = 0, rc = 0;
    for (int i = 0; i < count; i++) {
        int64_t a = *(const int64_t *)((const char *)row0 + i * stride);
        int64_t k = *(const int64_t *)((const char *)rows + i * stride);
        if (a < 0 || k < 0) {
            rc = mp_errorf(MP_EUSAGE, "%s: item %d: negative rows (row0 %lld, rows %lld)", LBL(label), i, (long long)a,
                           (long long)k);
            goto done;
        }
        if (rows_total >= 0 && a + k > rows_total) {
            rc = mp_errorf(MP_EUSAGE, "%s: item %d: rows [%lld, %lld) are outside [0, %lld)", LBL(label), i,
                           (long long)a, (long long)(a + k), (long long)rows_total);
            goto done;
        }
        if (k > 0)
            r[n++] = (row_range){a, k, i};
    }
    qsort(r, (size_t)n, sizeof *r, by_row0);
    for (int i = 1; i < n; i++)
        if (r[i].row0 < r[i - 1].row0 + r[i - 1].rows) {
            rc = mp_errorf(MP_EUSAGE, "%s: items %d and %d overlap (rows [%lld, %lld) and [%lld, %lld))", LBL(label),
                           r[i - 1].item, r[i].item, (long long)r[i - 1].row0,
                           (long long)(r[i - 1].row0 + r[i - 1].rows), (long long)r[i].row0,
                           (long long)(r[i].row0 + r[i].rows));
            goto done;
        }
done:
    free(r);
    return rc;
}

int mp_qgemm_check(const mp_qgemm_item *items, int count, mp_qg_type xt, int64_t ldx, mp_qg_type yt, int64_t ldy,
                   const char *label)
{
    MP_CHECK(check_types(xt, yt, label));
    if (count < 0 || (count > 0 && !items))
        return mp_errorf(MP_EUSAGE, "%s: no items (count %d)", LBL(label), count);
    for (int i = 0; i < count; i++) {
        MP_CHECK(check_block(items[i].w, "W", i, label));
        if (ldx < items[i].w->n || ldy < items[i].w->m)
            return mp_errorf(MP_EUSAGE, "%s: item %d: W is [%lld, %lld] but ldx = %lld, ldy = %lld", LBL(label), i,
                             (long long)items[i].w->m, (long long)items[i].w->n, (long long)ldx, (long long)ldy);
    }
    if (count == 0)
        return 0;
    return check_rows(&items[0].row0, &items[0].rows, sizeof *items, count, -1, label);
}

int mp_qdelta_check(const mp_qtensor *base, int64_t rows_total, const mp_qdelta_item *items, int count, mp_qg_type xt,
                    int64_t ldx, mp_qg_type yt, int64_t ldy, int64_t *r_max, const char *label)
{
    MP_CHECK(check_types(xt, yt, label));
    if (count < 0 || (count > 0 && !items))
        return mp_errorf(MP_EUSAGE, "%s: no items (count %d)", LBL(label), count);
    int64_t rmax = 0;
    if (base) {
        MP_CHECK(check_block(base, "the base block", -1, label));
        if (rows_total < 0 || ldx < base->n || ldy < base->m)
            return mp_errorf(MP_EUSAGE, "%s: base [%lld, %lld] with %lld rows, ldx = %lld, ldy = %lld", LBL(label),
                             (long long)base->m, (long long)base->n, (long long)rows_total, (long long)ldx,
                             (long long)ldy);
    }
    for (int i = 0; i < count; i++) {
        const mp_qtensor *u = items[i].u, *v = items[i].v;
        if (!u && !v)
            continue;
        MP_CHECK(check_block(u, "U", i, label));
        MP_CHECK(check_block(v, "V", i, label));
        if (u->n != v->m)
            return mp_errorf(MP_EUSAGE, "%s: item %d: U [%lld, %lld] and V [%lld, %lld] have different ranks",
                             LBL(label), i, (long long)u->m, (long long)u->n, (long long)v->m, (long long)v->n);
        if (base && (u->m != base->m || v->n != base->n))
            return mp_errorf(MP_EUSAGE, "%s: item %d: delta [%lld, %lld] does not match the base [%lld, %lld]",
                             LBL(label), i, (long long)u->m, (long long)v->n, (long long)base->m, (long long)base->n);
        if (ldx < v->n || ldy < u->m)
            return mp_errorf(MP_EUSAGE, "%s: item %d: delta [%lld, %lld] but ldx = %lld, ldy = %lld", LBL(label), i,
                             (long long)u->m, (long long)v->n, (long long)ldx, (long long)ldy);
        if (u->n > rmax)
            rmax = u->n;
    }
    if (r_max)
        *r_max = rmax;
    if (count == 0)
        return 0;
    return check_rows(&items[0].row0, &items[0].rows, sizeof *items, count, base ? rows_total : -1, label);
}

/* ---- the product of one item ---------------------------------------------------------------------- */
typedef struct {
    float *x, *xq; /* [ROW_CHUNK, nmax] */
    float *w;      /* [PANEL, nmax] */
    float *c;      /* [ROW_CHUNK, PANEL] */
} workspace;

static void ws_free(workspace *ws)
{
    free(ws->x);
    free(ws->xq);
    free(ws->w);
    free(ws->c);
    memset(ws, 0, sizeof *ws);
}

static int ws_alloc(workspace *ws, int64_t nmax, const char *label)
{
    memset(ws, 0, sizeof *ws);
    if (nmax < 1)
        nmax = 1;
    ws->x = malloc((size_t)(ROW_CHUNK * nmax) * sizeof *ws->x);
    ws->xq = malloc((size_t)(ROW_CHUNK * nmax) * sizeof *ws->xq);
    ws->w = malloc((size_t)(PANEL * nmax) * sizeof *ws->w);
    ws->c = malloc((size_t)(ROW_CHUNK * PANEL) * sizeof *ws->c);
    if (!ws->x || !ws->xq || !ws->w || !ws->c) {
        ws_free(ws);
        return mp_errorf(MP_ENOMEM, "%s: out of memory (qgemm workspace, n = %lld)", LBL(label), (long long)nmax);
    }
    return 0;
}

/* Y[y0 + i] (=|+=) X[x0 + i] W^T for i < rows. Rows of W [p0, p0 + pr) are dequantized by the definition
 * (mp_qtensor_dequant on a view of those rows). */
static void item_product(const mp_qtensor *W, const void *X, mp_qg_type xt, int64_t ldx, int64_t x0, void *Y,
                         mp_qg_type yt, int64_t ldy, int64_t y0, int64_t rows, int accumulate, workspace *ws)
{
    const int64_t m = W->m, n = W->n;
    const int act = W->fmt->act_bits;
    for (int64_t c0 = 0; c0 < rows; c0 += ROW_CHUNK) {
        int64_t rc = rows - c0 < ROW_CHUNK ? rows - c0 : ROW_CHUNK;
        const float *A;
        int64_t lda;
        if (xt == MP_QG_F32 && !act) {
            A = (const float *)X + (x0 + c0) * ldx;
            lda = ldx;
        } else {
            for (int64_t i = 0; i < rc; i++)
                for (int64_t k = 0; k < n; k++)
                    ws->x[i * n + k] = mp_qg_load(X, xt, (x0 + c0 + i) * ldx + k);
            if (act)
                mp_quant_act(ws->x, rc, n, act, ws->xq);
            A = act ? ws->xq : ws->x;
            lda = n;
        }
        for (int64_t p0 = 0; p0 < m; p0 += PANEL) {
            int64_t pr = m - p0 < PANEL ? m - p0 : PANEL;
            mp_qtensor view = *W;
            view.m = pr;
            view.qweight = W->qweight + p0 * W->words_per_row;
            view.scales = W->scales ? W->scales + p0 * W->ngroups : NULL;
            view.zeros = W->zeros ? W->zeros + p0 * W->ngroups : NULL;
            mp_qtensor_dequant(&view, ws->w);
            if (yt == MP_QG_F32) {
                float *C = (float *)Y + (y0 + c0) * ldy + p0;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rc, (int)pr, (int)n, 1.0f, A, (int)lda, ws->w,
                            (int)n, accumulate ? 1.0f : 0.0f, C, (int)ldy);
                continue;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rc, (int)pr, (int)n, 1.0f, A, (int)lda, ws->w,
                        (int)n, 0.0f, ws->c, (int)pr);
            for (int64_t i = 0; i < rc; i++)
                for (int64_t j = 0; j < pr; j++) {
                    int64_t at = (y0 + c0 + i) * ldy + p0 + j;
                    float v = ws->c[i * pr + j];
                    if (accumulate)
                        v += mp_qg_load(Y, yt, at);
                    mp_qg_store(Y, yt, at, v);
                }
        }
    }
}

int mp_qgemm_grouped(const mp_qgemm_item *items, int count, const void *X, mp_qg_type xt, int64_t ldx, void *Y,
                     mp_qg_type yt, int64_t ldy, int accumulate, const char *label)
{
    MP_CHECK(mp_qgemm_check(items, count, xt, ldx, yt, ldy, label));
    int64_t nmax = 0, total = 0;
    for (int i = 0; i < count; i++) {
        nmax = items[i].w->n > nmax ? items[i].w->n : nmax;
        total += items[i].rows;
    }
    if (total == 0)
        return 0;
    if (!X || !Y)
        return mp_errorf(MP_EUSAGE, "%s: X or Y is NULL", LBL(label));
    workspace ws;
    MP_CHECK(ws_alloc(&ws, nmax, label));
    for (int i = 0; i < count; i++)
        if (items[i].rows > 0)
            item_product(items[i].w, X, xt, ldx, items[i].row0, Y, yt, ldy, items[i].row0, items[i].rows, accumulate,
                         &ws);
    ws_free(&ws);
    return 0;
}

/* deltas of checked items; T [ROW_CHUNK, r_max] fp32 */
static int run_deltas(const mp_qdelta_item *items, int count, int64_t r_max, const void *X, mp_qg_type xt, int64_t ldx,
                      void *Y, mp_qg_type yt, int64_t ldy, const char *label)
{
    int64_t nmax = r_max;
    for (int i = 0; i < count; i++)
        if (items[i].v && items[i].v->n > nmax)
            nmax = items[i].v->n;
    workspace ws;
    MP_CHECK(ws_alloc(&ws, nmax, label));
    float *T = malloc((size_t)(ROW_CHUNK * (r_max > 0 ? r_max : 1)) * sizeof *T);
    if (!T) {
        ws_free(&ws);
        return mp_errorf(MP_ENOMEM, "%s: out of memory (delta T, rank %lld)", LBL(label), (long long)r_max);
    }
    for (int i = 0; i < count; i++) {
        const mp_qdelta_item *it = &items[i];
        if (!it->u || it->rows == 0)
            continue;
        int64_t r = it->u->n;
        for (int64_t c0 = 0; c0 < it->rows; c0 += ROW_CHUNK) {
            int64_t rc = it->rows - c0 < ROW_CHUNK ? it->rows - c0 : ROW_CHUNK;
            item_product(it->v, X, xt, ldx, it->row0 + c0, T, MP_QG_F32, r, 0, rc, 0, &ws);
            item_product(it->u, T, MP_QG_F32, r, 0, Y, yt, ldy, it->row0 + c0, rc, 1, &ws);
        }
    }
    free(T);
    ws_free(&ws);
    return 0;
}

int mp_qgemm_delta(const mp_qdelta_item *items, int count, const void *X, mp_qg_type xt, int64_t ldx, void *Y,
                   mp_qg_type yt, int64_t ldy, const char *label)
{
    int64_t r_max = 0, total = 0;
    MP_CHECK(mp_qdelta_check(NULL, -1, items, count, xt, ldx, yt, ldy, &r_max, label));
    for (int i = 0; i < count; i++)
        total += items[i].u ? items[i].rows : 0;
    if (total == 0)
        return 0;
    if (!X || !Y)
        return mp_errorf(MP_EUSAGE, "%s: X or Y is NULL", LBL(label));
    return run_deltas(items, count, r_max, X, xt, ldx, Y, yt, ldy, label);
}

int mp_qgemm_base_delta(const mp_qtensor *base, int64_t rows, const mp_qdelta_item *items, int count, const void *X,
                        mp_qg_type xt, int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy, const char *label)
{
    int64_t r_max = 0;
    if (!base)
        return mp_errorf(MP_EUSAGE, "%s: no base block", LBL(label));
    MP_CHECK(mp_qdelta_check(base, rows, items, count, xt, ldx, yt, ldy, &r_max, label));
    if (rows == 0)
        return 0;
    mp_qgemm_item b = {base, 0, rows};
    MP_CHECK(mp_qgemm_grouped(&b, 1, X, xt, ldx, Y, yt, ldy, 0, label));
    return run_deltas(items, count, r_max, X, xt, ldx, Y, yt, ldy, label);
}
