/* test_export_check.c - `moepack export` against the shards and the source, without the export's code path.
 * usage: test_export_check OUTDIR EXPORTDIR SOURCEDIR MAXREL
 *  1. the export holds exactly the source's tensors, with the same names, dtypes and shapes;
 *  2. non-MoE tensors are byte-identical to the source;
 *  3. every routed expert equals, in the export's dtype, the shards' tensors dequantized here
 *     (mp_qtensor_h5_read + mp_qtensor_dequant) and folded with a plain fp64 loop: W = base + U V
 *     (rank from the block's attribute; the base alone at rank 0), or W itself without the
 *     decomposition; the shared expert and the dense MLPs of non-MoE layers (/layers/{l}/mlp) equal their
 *     dequantized tensors;
 *  4. the rebuilt experts are close to the source's: ||W_export - W_source||_F / ||W_source||_F <= MAXREL
 *     for the whole model's experts (the quantization and truncation error; printed).
 * Reads index.json with cJSON and the shards with HDF5 directly. */
#include <cjson/cJSON.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "error.h"
#include "fsutil.h"
#include "h5util.h"
#include "qtensor_h5.h"
#include "quant.h"
#include "safetensors.h"

static int failures = 0;
#define EXPECT(c, ...)                                                                                                 \
    do {                                                                                                               \
        if (!(c)) {                                                                                                    \
            fprintf(stderr, "FAIL: " __VA_ARGS__);                                                                     \
            fprintf(stderr, "\n");                                                                                     \
            failures++;                                                                                                \
        }                                                                                                              \
    } while (0)

static cJSON *idx, *units;
static const char *outdir;
static int delta;

static hid_t shard_for(const char *unit)
{
    static hid_t open_f[64];
    static char names[64][64];
    static int n = 0;
    const cJSON *s = cJSON_GetObjectItem(units, unit);
    if (!cJSON_IsString(s))
        return -1;
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], s->valuestring))
            return open_f[i];
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", outdir, s->valuestring);
    snprintf(names[n], sizeof names[n], "%s", s->valuestring);
    open_f[n] = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
    return open_f[n++];
}

/* dequantized tensor group g of unit u: new array, *m x *n */
static float *deq(const char *u, const char *g, int64_t *m, int64_t *n)
{
    mp_qtensor *q = NULL;
    hid_t f = shard_for(u);
    if (f < 0 || mp_qtensor_h5_read(f, g, outdir, &q) < 0) {
        fprintf(stderr, "FAIL: cannot read %s: %s\n", g, mp_error_message());
        failures++;
        return NULL;
    }
    float *w = malloc(sizeof(float) * (size_t)(q->m * q->n));
    mp_qtensor_dequant(q, w);
    *m = q->m, *n = q->n;
    mp_qtensor_destroy(q);
    return w;
}

/* expert e of layer l, projection p, rebuilt by hand */
static float *expert(int l, int e, const char *p, int64_t *m, int64_t *n)
{
    char u[96], g[160];
    snprintf(u, sizeof u, "/layers/%d/moe/experts/%d", l, e);
    snprintf(g, sizeof g, "%s/%s", u, p);
    if (!delta)
        return deq(u, g, m, n);
    char bu[96], bg[160];
    snprintf(bu, sizeof bu, "/layers/%d/moe/base", l);
    snprintf(bg, sizeof bg, "%s/%s", bu, p);
    float *W = deq(bu, bg, m, n);
    if (!W)
        return NULL;
    hid_t go = H5Oopen(shard_for(u), g, H5P_DEFAULT);
    int64_t r = -1;
    EXPECT(go >= 0 && mp_h5_attr_read_i64(go, "rank", &r) == 0, "%s: no rank attribute", g);
    if (go >= 0)
        H5Oclose(go);
    if (r <= 0)
        return W;
    char gu[200], gv[200];
    int64_t um, ur, vr, vn;
    snprintf(gu, sizeof gu, "%s/U", g), snprintf(gv, sizeof gv, "%s/V", g);
    float *U = deq(u, gu, &um, &ur), *V = deq(u, gv, &vr, &vn);
    EXPECT(U && V && um == *m && vn == *n && ur == r && vr == r, "%s: factor shapes", g);
    for (int64_t i = 0; U && V && i < *m; i++)
        for (int64_t j = 0; j < *n; j++) {
            double s = W[i * *n + j];
            for (int64_t k = 0; k < r; k++)
                s += (double)U[i * r + k] * (double)V[k * *n + j];
            W[i * *n + j] = (float)s;
        }
    free(U), free(V);
    return W;
}

static float in_dtype(float v, mp_dtype dt)
{
    return dt == MP_DT_BF16 ? mp_bf16_to_f32(mp_f32_to_bf16(v)) : dt == MP_DT_F16 ? mp_f16_to_f32(mp_f32_to_f16(v)) : v;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: test_export_check OUTDIR EXPORTDIR SOURCEDIR MAXREL\n");
        return 2;
    }
    mp_h5_init();
    outdir = argv[1];
    double maxrel = atof(argv[4]);
    char path[4400], *txt = NULL;
    snprintf(path, sizeof path, "%s/index.json", outdir);
    if (mp_read_file(path, &txt, NULL) < 0 || !(idx = cJSON_Parse(txt))) {
        fprintf(stderr, "FAIL: cannot read %s\n", path);
        return 1;
    }
    free(txt);
    units = cJSON_GetObjectItem(idx, "units");
    const cJSON *md = cJSON_GetObjectItem(idx, "metadata");
    delta = cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(md, "source"), "delta"));
    mp_ckpt *ex = NULL, *src = NULL;
    if (mp_ckpt_open(argv[2], &ex) < 0 || mp_ckpt_open(argv[3], &src) < 0) {
        fprintf(stderr, "FAIL: %s\n", mp_error_message());
        return 1;
    }
    EXPECT(ex->ntensors == src->ntensors, "the export has %d tensors, the source %d", ex->ntensors, src->ntensors);
    double err2 = 0, ref2 = 0;
    int n_plain = 0, n_exp = 0, n_shared = 0, n_dense = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(idx, "tensors"))
    {
        const char *name = cJSON_GetObjectItem(t, "name")->valuestring;
        const mp_tensor *a = mp_ckpt_find(ex, name), *b = mp_ckpt_find(src, name);
        EXPECT(a && b, "tensor %s missing from the export or the source", name);
        if (!a || !b)
            continue;
        EXPECT(a->dtype == b->dtype && a->ndim == b->ndim && a->numel == b->numel, "tensor %s: dtype/shape differ",
               name);
        for (int d = 0; d < a->ndim && d < b->ndim; d++)
            EXPECT(a->shape[d] == b->shape[d], "tensor %s: dimension %d differs", name, d);
        if (cJSON_GetObjectItem(t, "path")) {
            EXPECT(a->nbytes == b->nbytes && !memcmp(a->data, b->data, a->nbytes), "tensor %s: bytes differ", name);
            n_plain++;
            continue;
        }
        float *ev = malloc(sizeof(float) * (size_t)a->numel), *sv = malloc(sizeof(float) * (size_t)b->numel);
        mp_ckpt_read_f32(ex, a, 0, a->numel, ev);
        mp_ckpt_read_f32(src, b, 0, b->numel, sv);
        const cJSON *x;
        int64_t m = 0, n = 0, off = 0, bad = 0;
        const cJSON *dn = cJSON_GetObjectItem(t, "dense");
        if ((x = cJSON_GetObjectItem(t, "shared")) || dn) {
            char u[96], g[160];
            int l = cJSON_GetObjectItem(x ? x : dn, "layer")->valueint;
            snprintf(u, sizeof u, x ? "/layers/%d/moe/shared" : "/layers/%d/mlp", l);
            snprintf(g, sizeof g, "%s/%s", u, cJSON_GetObjectItem(x ? x : dn, "proj")->valuestring);
            float *w = deq(u, g, &m, &n);
            EXPECT(w && m * n == a->numel, "tensor %s: %lld dequantized values for %lld", name, (long long)(m * n),
                   (long long)a->numel);
            for (int64_t i = 0; w && i < m * n && i < a->numel; i++) {
                bad += in_dtype(w[i], a->dtype) != ev[i];
                double dd = (double)ev[i] - sv[i];
                err2 += dd * dd, ref2 += (double)sv[i] * sv[i];
            }
            free(w);
            n_shared += !dn, n_dense += dn != NULL;
        } else {
            int l, e0, e1;
            const char *parts[2] = {NULL, NULL};
            if ((x = cJSON_GetObjectItem(t, "expert"))) {
                l = cJSON_GetObjectItem(x, "layer")->valueint;
                e0 = cJSON_GetObjectItem(x, "expert")->valueint, e1 = e0 + 1;
                parts[0] = cJSON_GetObjectItem(x, "proj")->valuestring;
            } else {
                x = cJSON_GetObjectItem(t, "fused");
                l = cJSON_GetObjectItem(x, "layer")->valueint, e0 = 0, e1 = (int)a->shape[0];
                int gu = !strcmp(cJSON_GetObjectItem(x, "part")->valuestring, "gate_up");
                parts[0] = gu ? "gate" : "down", parts[1] = gu ? "up" : NULL;
            }
            for (int e = e0; e < e1; e++)
                for (int q = 0; q < 2 && parts[q]; q++) {
                    float *w = expert(l, e, parts[q], &m, &n);
                    for (int64_t i = 0; w && i < m * n && off + i < a->numel; i++) {
                        bad += in_dtype(w[i], a->dtype) != ev[off + i];
                        double dd = (double)ev[off + i] - sv[off + i];
                        err2 += dd * dd, ref2 += (double)sv[off + i] * sv[off + i];
                    }
                    off += m * n;
                    free(w);
                }
            EXPECT(off == a->numel, "tensor %s: %lld values rebuilt, %lld in the export", name, (long long)off,
                   (long long)a->numel);
            n_exp++;
        }
        EXPECT(bad == 0, "tensor %s: %lld values differ from the dequantized shards", name, (long long)bad);
        free(ev), free(sv);
    }
    double rel = ref2 > 0 ? sqrt(err2 / ref2) : 0;
    printf("export check: %d non-MoE tensors byte-identical to the source, %d expert tensors, %d shared-expert "
           "tensors and %d dense-MLP tensors equal to the dequantized shards; quantized weights vs source: relative "
           "error %.4f (limit %.4f)\n",
           n_plain, n_exp, n_shared, n_dense, rel, maxrel);
    EXPECT(rel <= maxrel, "experts' relative error %.4f > %.4f", rel, maxrel);
    EXPECT(n_exp > 0 && n_plain > 0, "nothing compared");
    mp_ckpt_close(ex), mp_ckpt_close(src);
    cJSON_Delete(idx);
    if (failures)
        fprintf(stderr, "%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
