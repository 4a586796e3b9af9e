/* gweights.c - a compressed model as forward weights, the MoE units on a GPU (see gweights.h). */
#include "gweights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allocation.h"
#include "cweights.h"
#include "error.h"
#include "gpu_memory.h"
#include "qgemm_gpu.h"

typedef struct {
    float *p; /* device memory */
    int64_t cap;
} dbuf;

struct mp_gweights {
    mp_outdir *o;
    mp_cweights *cw;
    mp_weights cpu; /* cw's functions: everything but `unit` */
    mp_gpu_qgemm *q;
    int base_layer; /* the layer whose base blocks are on the device, -1 */
    mp_gpu_qtensor *base[3];
    int layer, unit; /* the unit whose blocks are on the device */
    int delta;       /* it computes base x + U (V x) */
    int64_t m[3], n[3];
    mp_gpu_qtensor *w[3], *u[3], *v[3];
    dbuf x, g, a, y; /* X [n, d], gate and up [n, f], Y [n, d] */
};

static int dgrow(dbuf *b, int64_t need)
{
    if (need <= b->cap)
        return 0;
    mp_gpu_free(b->p);
    b->p = NULL, b->cap = 0;
    MP_CHECK(mp_gpu_alloc((void **)&b->p, sizeof(float) * (size_t)need));
    b->cap = need;
    return 0;
}

static void drop_unit(mp_gweights *g)
{
    for (int p = 0; p < 3; p++) {
        mp_gpu_qtensor_destroy(g->w[p]), mp_gpu_qtensor_destroy(g->u[p]), mp_gpu_qtensor_destroy(g->v[p]);
        g->w[p] = g->u[p] = g->v[p] = NULL;
    }
    g->layer = g->unit = -1;
}

static void drop_base(mp_gweights *g)
{
    for (int p = 0; p < 3; p++) {
        mp_gpu_qtensor_destroy(g->base[p]);
        g->base[p] = NULL;
    }
    g->base_layer = -1;
}

/* q (may be NULL) on the device */
static int upload(const mp_qtensor *q, mp_gpu_qtensor **out, int l, int u, int p, const char *part)
{
    *out = NULL;
    if (!q)
        return 0;
    int rc = mp_gpu_qtensor_upload(q, out);
    if (rc < 0 && u < 0)
        mp_error_prefix("layer %d base %s", l, MP_PROJ_NAME[p]);
    else if (rc < 0)
        mp_error_prefix("layer %d unit %d %s %s", l, u, MP_PROJ_NAME[p], part);
    return rc;
}

static int load_base(mp_gweights *g, int l)
{
    if (g->base_layer == l)
        return 0;
    drop_base(g);
    for (int p = 0; p < 3; p++) {
        mp_qtensor *q;
        MP_CHECK(mp_outdir_read_qbase(g->o, l, p, &q));
        int rc = upload(q, &g->base[p], l, -1, p, NULL);
        mp_qtensor_destroy(q);
        if (rc < 0) {
            drop_base(g);
            return rc;
        }
    }
    g->base_layer = l;
    return 0;
}

static int load_unit(mp_gweights *g, int l, int u)
{
    if (g->layer == l && g->unit == u)
        return 0;
    drop_unit(g);
    for (int p = 0; p < 3; p++) {
        mp_outdir_qfactors q;
        MP_CHECK(mp_outdir_read_qfactors(g->o, l, u, p, &q));
        g->delta = q.delta, g->m[p] = q.m, g->n[p] = q.n;
        int rc = upload(q.W, &g->w[p], l, u, p, "W");
        if (rc == 0)
            rc = upload(q.U, &g->u[p], l, u, p, "U");
        if (rc == 0)
            rc = upload(q.V, &g->v[p], l, u, p, "V");
        mp_outdir_qfactors_free(&q);
        if (rc < 0) {
            drop_unit(g);
            return rc;
        }
    }
    if (g->delta) {
        int rc = load_base(g, l);
        if (rc < 0) {
            drop_unit(g);
            return rc;
        }
    }
    g->layer = l, g->unit = u;
    return 0;
}

/* out [n, m_p] = X [n, n_p] through projection p of the unit on the device (device pointers, enqueued) */
static int project(mp_gweights *g, int p, const float *X, int n, float *out, const char *label)
{
    if (g->delta) {
        mp_gpu_qdelta_item it = {g->u[p], g->v[p], 0, n};
        return mp_gpu_qgemm_base_delta(g->q, g->base[p], n, &it, 1, X, MP_QG_F32, g->n[p], out, MP_QG_F32, g->m[p],
                                       label);
    }
    mp_gpu_qgemm_item it = {g->w[p], 0, n};
    return mp_gpu_qgemm_grouped(g->q, &it, 1, X, MP_QG_F32, g->n[p], out, MP_QG_F32, g->m[p], 0, label);
}

static int unit_fn(void *ctx, int l, int u, const float *X, int n, float *Y)
{
    mp_gweights *g = ctx;
    MP_CHECK(load_unit(g, l, u));
    if (n <= 0)
        return 0;
    const int64_t d = g->n[0], f = g->m[0], dout = g->m[2];
    char label[160];
    snprintf(label, sizeof label, "%s: layer %d unit %d (GPU)", mp_outdir_dir(g->o), l, u);
    MP_CHECK(dgrow(&g->x, n * d));
    MP_CHECK(dgrow(&g->g, n * f));
    MP_CHECK(dgrow(&g->a, n * f));
    MP_CHECK(dgrow(&g->y, n * dout));
    MP_CHECK(mp_gpu_copy_to_device(g->x.p, X, sizeof(float) * (size_t)(n * d)));
    MP_CHECK(project(g, 0, g->x.p, n, g->g.p, label));
    MP_CHECK(project(g, 1, g->x.p, n, g->a.p, label));
    MP_CHECK(mp_gpu_qgemm_swiglu(g->q, g->g.p, g->a.p, n * f, label));
    MP_CHECK(project(g, 2, g->a.p, n, g->y.p, label));
    MP_CHECK(mp_gpu_qgemm_sync(g->q));
    MP_CHECK(mp_gpu_copy_to_host(Y, g->y.p, sizeof(float) * (size_t)(n * dout)));
    for (int64_t i = 0; i < n * dout; i++)
        if (!isfinite(Y[i]))
            return mp_errorf(MP_ENUMERIC, "%s: the compressed expert's output is not finite", label);
    return 0;
}

static int layer_fn(void *ctx, int l, mp_layer_w *w)
{
    mp_gweights *g = ctx;
    return g->cpu.layer(g->cpu.ctx, l, w);
}
static int expert_fn(void *ctx, int l, int e, mp_proj p, float *out)
{
    mp_gweights *g = ctx;
    return g->cpu.expert(g->cpu.ctx, l, e, p, out);
}
static int embed_fn(void *ctx, const int32_t *ids, int n, float *h)
{
    mp_gweights *g = ctx;
    return g->cpu.embed(g->cpu.ctx, ids, n, h);
}
static int head_fn(void *ctx, float **nw, float **nb, float **hw, float **hb)
{
    mp_gweights *g = ctx;
    return g->cpu.head(g->cpu.ctx, nw, nb, hw, hb);
}

int mp_gweights_open(const mp_model *m, mp_outdir *o, int device, mp_gweights **out, mp_weights *w)
{
    *out = NULL;
    int rc = mp_gpu_set_device(device);
    if (rc < 0) {
        mp_error_prefix("%s: GPU validation on device %d", mp_outdir_dir(o), device);
        return rc;
    }
    mp_gweights *g = calloc(1, sizeof *g);
    if (!g)
        return mp_errorf(MP_ENOMEM, "out of memory");
    g->o = o, g->base_layer = g->layer = g->unit = -1;
    rc = mp_cweights_open(m, o, &g->cw, &g->cpu);
    if (rc == 0)
        rc = mp_gpu_qgemm_create(NULL, &g->q);
    if (rc < 0) {
        mp_gweights_close(g);
        return rc;
    }
    mp_gpu_qgemm_set_path(g->q, MP_GPU_PATH_SIMT);
    *w = g->cpu;
    w->ctx = g, w->layer = layer_fn, w->expert = expert_fn, w->embed = embed_fn, w->head = head_fn;
    w->unit = unit_fn;
    *out = g;
    return 0;
}

void mp_gweights_close(mp_gweights *g)
{
    if (!g)
        return;
    drop_unit(g), drop_base(g);
    mp_gpu_free(g->x.p), mp_gpu_free(g->g.p), mp_gpu_free(g->a.p), mp_gpu_free(g->y.p);
    mp_gpu_qgemm_destroy(g->q);
    mp_cweights_close(g->cw);
    free(g);
}
