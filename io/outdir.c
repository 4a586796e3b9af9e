/* outdir.c - reading a moepack output directory (see outdir.h). */
#define _GNU_SOURCE
#include "outdir.h"

#include <cblas.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "fsutil.h"
#include "h5util.h"
#include "allocation.h"
#include "output.h"
#include "qtensor_h5.h"
#include "quant.h"
#include "store.h"

typedef struct {
    const char *path, *shard;
} entry;

struct mp_outdir {
    char dir[4096], index_path[4200];
    cJSON *index;
    const char *config_json;
    mp_config cfg;
    int have_cfg;
    mp_out_src *src;
    int nsrc;
    entry *map; /* weight_map and units, sorted by path */
    int nmap;
    char **shard_names;
    hid_t *shard_f;
    int nshards;
    int delta;
    int base_layer; /* layer of the cached base, -1 */
    float *base[3]; /* dequantized base of base_layer */
    int base_act[3];  /* its formats' activation bits */
};

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->path, ((const entry *)b)->path);
}

int mp_outdir_detect(const char *dir)
{
    char path[4200], *txt = NULL;
    snprintf(path, sizeof path, "%s/index.json", dir);
    if (access(path, R_OK) != 0 || mp_read_file(path, &txt, NULL) < 0) {
        mp_error_clear();
        return 0;
    }
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    const cJSON *f = j ? cJSON_GetObjectItem(j, "format") : NULL;
    int yes = cJSON_IsString(f) && !strcmp(f->valuestring, "moepack");
    cJSON_Delete(j);
    return yes;
}

static int proj_of(const char *s)
{
    return !strcmp(s, "gate") ? 0 : !strcmp(s, "up") ? 1 : !strcmp(s, "down") ? 2 : -1;
}

static int parse_src(mp_outdir *o)
{
    const cJSON *ts = cJSON_GetObjectItem(o->index, "tensors");
    if (!cJSON_IsArray(ts))
        return mp_errorf(MP_EFORMAT, "%s: no \"tensors\" list", o->index_path);
    o->nsrc = cJSON_GetArraySize(ts);
    o->src = calloc((size_t)o->nsrc + 1, sizeof *o->src);
    if (!o->src)
        return mp_errorf(MP_ENOMEM, "out of memory");
    int i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, ts)
    {
        mp_out_src *s = &o->src[i++];
        const cJSON *nm = cJSON_GetObjectItem(t, "name"), *dt = cJSON_GetObjectItem(t, "dtype"),
                    *sh = cJSON_GetObjectItem(t, "shape");
        if (!cJSON_IsString(nm) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) || cJSON_GetArraySize(sh) > 8 ||
            mp_dtype_parse(dt->valuestring, &s->dtype) < 0)
            return mp_errorf(MP_EFORMAT, "%s: tensors[%d] lacks a name, a known dtype or a shape", o->index_path,
                             i - 1);
        s->name = nm->valuestring;
        s->ndim = cJSON_GetArraySize(sh);
        for (int d = 0; d < s->ndim; d++)
            s->shape[d] = (int64_t)cJSON_GetArrayItem(sh, d)->valuedouble;
        const cJSON *e = cJSON_GetObjectItem(t, "expert"), *f = cJSON_GetObjectItem(t, "fused"),
                    *x = cJSON_GetObjectItem(t, "shared"), *p = cJSON_GetObjectItem(t, "path"),
                    *dn = cJSON_GetObjectItem(t, "dense");
        const cJSON *lay = NULL, *pj = NULL;
        if (e) {
            s->kind = MP_SRC_EXPERT, lay = cJSON_GetObjectItem(e, "layer"), pj = cJSON_GetObjectItem(e, "proj");
            const cJSON *ex = cJSON_GetObjectItem(e, "expert");
            s->expert = cJSON_IsNumber(ex) ? ex->valueint : -1;
        } else if (f) {
            s->kind = MP_SRC_FUSED, lay = cJSON_GetObjectItem(f, "layer");
            const cJSON *part = cJSON_GetObjectItem(f, "part");
            s->proj = cJSON_IsString(part) && !strcmp(part->valuestring, "gate_up") ? 0 : 2;
        } else if (x || dn) {
            s->kind = x ? MP_SRC_SHARED : MP_SRC_DENSE;
            lay = cJSON_GetObjectItem(x ? x : dn, "layer"), pj = cJSON_GetObjectItem(x ? x : dn, "proj");
        } else if (cJSON_IsString(p)) {
            s->kind = MP_SRC_PLAIN, s->path = p->valuestring, s->layer = -1;
            continue;
        } else
            return mp_errorf(MP_EFORMAT, "%s: tensor %s says neither where it is nor which expert", o->index_path,
                             s->name);
        s->layer = cJSON_IsNumber(lay) ? lay->valueint : -1;
        if (pj)
            s->proj = cJSON_IsString(pj) ? proj_of(pj->valuestring) : -1;
        if (s->layer < 0 || s->layer >= o->cfg.n_layers || s->proj < 0 ||
            (s->kind == MP_SRC_EXPERT && (s->expert < 0 || s->expert >= o->cfg.n_experts)) ||
            (s->kind == MP_SRC_DENSE && !mp_config_dense_mlp(&o->cfg, s->layer)))
            return mp_errorf(MP_EFORMAT, "%s: tensor %s names no valid layer/expert/projection", o->index_path,
                             s->name);
    }
    return 0;
}

static int parse_map(mp_outdir *o)
{
    const cJSON *wm = cJSON_GetObjectItem(o->index, "weight_map"), *un = cJSON_GetObjectItem(o->index, "units"),
                *sh = cJSON_GetObjectItem(o->index, "shards");
    if (!cJSON_IsObject(wm) || !cJSON_IsObject(un) || !cJSON_IsArray(sh))
        return mp_errorf(MP_EFORMAT, "%s: \"weight_map\", \"units\" or \"shards\" is missing", o->index_path);
    o->nmap = cJSON_GetArraySize(wm) + cJSON_GetArraySize(un);
    o->map = calloc((size_t)o->nmap + 1, sizeof *o->map);
    o->nshards = cJSON_GetArraySize(sh);
    o->shard_names = calloc((size_t)o->nshards + 1, sizeof *o->shard_names);
    o->shard_f = calloc((size_t)o->nshards + 1, sizeof *o->shard_f);
    if (!o->map || !o->shard_names || !o->shard_f)
        return mp_errorf(MP_ENOMEM, "out of memory");
    int k = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, sh)
    {
        const cJSON *f = cJSON_GetObjectItem(x, "file");
        if (!cJSON_IsString(f) || strchr(f->valuestring, '/'))
            return mp_errorf(MP_EFORMAT, "%s: shards[%d] has no plain file name", o->index_path, k);
        o->shard_names[k] = f->valuestring;
        o->shard_f[k++] = -1;
    }
    int i = 0;
    const cJSON *maps[2] = {wm, un};
    for (int q = 0; q < 2; q++)
        cJSON_ArrayForEach(x, maps[q])
        {
            if (!cJSON_IsString(x))
                return mp_errorf(MP_EFORMAT, "%s: entry %s does not name a shard", o->index_path, x->string);
            o->map[i++] = (entry){x->string, x->valuestring};
        }
    qsort(o->map, (size_t)o->nmap, sizeof *o->map, cmp_entry);
    return 0;
}

int mp_outdir_open(const char *dir, mp_outdir **out)
{
    mp_h5_init();
    *out = NULL;
    mp_outdir *o = calloc(1, sizeof *o);
    if (!o)
        return mp_errorf(MP_ENOMEM, "out of memory");
    o->base_layer = -1;
    snprintf(o->dir, sizeof o->dir, "%s", dir);
    snprintf(o->index_path, sizeof o->index_path, "%s/index.json", dir);
    char *txt = NULL;
    int rc = mp_read_file(o->index_path, &txt, NULL);
    if (rc < 0)
        mp_error_prefix("%s is not a moepack output", dir);
    if (rc == 0 && !(o->index = cJSON_Parse(txt)))
        rc = mp_errorf(MP_EFORMAT, "%s: not valid JSON", o->index_path);
    free(txt);
    const cJSON *j = o->index, *fmt = j ? cJSON_GetObjectItem(j, "format") : NULL,
                *ver = j ? cJSON_GetObjectItem(j, "format_version") : NULL;
    const cJSON *md = j ? cJSON_GetObjectItem(j, "metadata") : NULL,
                *cj = md ? cJSON_GetObjectItem(md, "config_json") : NULL;
    const cJSON *src = md ? cJSON_GetObjectItem(md, "source") : NULL,
                *dl = src ? cJSON_GetObjectItem(src, "delta") : NULL;
    if (rc == 0 && (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "moepack")))
        rc = mp_errorf(MP_EFORMAT, "%s: not a moepack index (\"format\" is not \"moepack\")", o->index_path);
    if (rc == 0 && (!cJSON_IsNumber(ver) || ver->valueint != MP_OUT_FORMAT_VERSION))
        rc = mp_errorf(MP_EFORMAT, "%s: format_version %d, this moepack reads %d", o->index_path,
                       cJSON_IsNumber(ver) ? ver->valueint : -1, MP_OUT_FORMAT_VERSION);
    if (rc == 0 && (!cJSON_IsString(cj) || !cJSON_IsBool(dl)))
        rc = mp_errorf(MP_EFORMAT, "%s: metadata.config_json or metadata.source.delta is missing", o->index_path);
    if (rc == 0) {
        o->config_json = cj->valuestring;
        o->delta = cJSON_IsTrue(dl);
        char what[4400];
        snprintf(what, sizeof what, "%s (metadata.config_json)", o->index_path);
        rc = mp_config_parse(o->config_json, what, &o->cfg);
        o->have_cfg = rc == 0;
    }
    if (rc == 0)
        rc = parse_src(o);
    if (rc == 0)
        rc = parse_map(o);
    if (rc < 0) {
        mp_outdir_close(o);
        return rc;
    }
    *out = o;
    return 0;
}

void mp_outdir_close(mp_outdir *o)
{
    if (!o)
        return;
    for (int k = 0; o->shard_f && k < o->nshards; k++)
        if (o->shard_f[k] >= 0)
            H5Fclose(o->shard_f[k]);
    for (int p = 0; p < 3; p++)
        free(o->base[p]);
    free(o->shard_f), free(o->shard_names), free(o->map), free(o->src);
    if (o->have_cfg)
        mp_config_free(&o->cfg);
    cJSON_Delete(o->index);
    free(o);
}

const mp_config *mp_outdir_config(const mp_outdir *o) { return &o->cfg; }
const char *mp_outdir_config_json(const mp_outdir *o) { return o->config_json; }
const cJSON *mp_outdir_index(const mp_outdir *o) { return o->index; }
const char *mp_outdir_dir(const mp_outdir *o) { return o->dir; }
int mp_outdir_nsrc(const mp_outdir *o) { return o->nsrc; }
const mp_out_src *mp_outdir_src(const mp_outdir *o, int i) { return i >= 0 && i < o->nsrc ? &o->src[i] : NULL; }

/* the open shard holding `path` (a dataset of weight_map or a unit group of "units") */
static int shard_of(mp_outdir *o, const char *path, hid_t *f)
{
    entry key = {path, NULL};
    const entry *e = bsearch(&key, o->map, (size_t)o->nmap, sizeof *o->map, cmp_entry);
    if (!e)
        return mp_errorf(MP_EFORMAT, "%s: %s is not in the index", o->index_path, path);
    for (int k = 0; k < o->nshards; k++)
        if (!strcmp(o->shard_names[k], e->shard)) {
            if (o->shard_f[k] < 0) {
                char sp[4400];
                snprintf(sp, sizeof sp, "%s/%s", o->dir, e->shard);
                if (access(sp, F_OK) != 0)
                    return mp_syserrorf(MP_ENOENT, "%s: shard is missing", sp);
                if ((o->shard_f[k] = H5Fopen(sp, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0)
                    return mp_errorf(MP_EFORMAT, "%s: not a readable HDF5 file", sp);
            }
            *f = o->shard_f[k];
            return 0;
        }
    return mp_errorf(MP_EFORMAT, "%s: %s names the shard %s, which \"shards\" does not list", o->index_path, path,
                     e->shard);
}

int mp_outdir_check_shards(mp_outdir *o, int verify)
{
    const cJSON *sh = cJSON_GetObjectItem(o->index, "shards"), *x;
    int k = 0;
    cJSON_ArrayForEach(x, sh)
    {
        char sp[4400];
        const cJSON *b = cJSON_GetObjectItem(x, "bytes");
        struct stat st;
        snprintf(sp, sizeof sp, "%s/%s", o->dir, o->shard_names[k]);
        if (stat(sp, &st) != 0)
            return mp_syserrorf(MP_ENOENT, "%s: shard is missing", sp);
        if (cJSON_IsNumber(b) && (double)st.st_size != b->valuedouble)
            return mp_errorf(MP_EFORMAT, "%s: %lld bytes, index.json records %.0f", sp, (long long)st.st_size,
                             b->valuedouble);
        const cJSON *h = cJSON_GetObjectItem(x, "xxh64");
        uint64_t hv = 0;
        char hex[17];
        if (verify && cJSON_IsString(h)) {
            MP_CHECK(mp_file_xxh64(sp, &hv));
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)hv);
            if (strcmp(hex, h->valuestring))
                return mp_errorf(MP_EFORMAT, "%s: damaged (XXH64 %s, index.json records %s)", sp, hex, h->valuestring);
        }
        if (o->shard_f[k] < 0 && (o->shard_f[k] = H5Fopen(sp, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0)
            return mp_errorf(MP_EFORMAT, "%s: not a readable HDF5 file", sp);
        k++;
    }
    return 0;
}

int mp_outdir_read_raw(mp_outdir *o, const char *path, void *out, int64_t cap)
{
    hid_t f;
    MP_CHECK(shard_of(o, path, &f));
    hid_t ds = H5Dopen2(f, path, H5P_DEFAULT), ft = ds >= 0 ? H5Dget_type(ds) : -1;
    int rc = 0;
    if (ds < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: dataset %s is missing from its shard", o->index_path, path);
    else if ((int64_t)H5Dget_storage_size(ds) > cap)
        rc = mp_errorf(MP_EFORMAT, "%s: dataset %s holds %lld bytes, expected at most %lld", o->index_path, path,
                       (long long)H5Dget_storage_size(ds), (long long)cap);
    else if (H5Dread(ds, ft, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: cannot read dataset %s", o->index_path, path);
    if (ft >= 0)
        H5Tclose(ft);
    if (ds >= 0)
        H5Dclose(ds);
    return rc;
}

int mp_outdir_read_plain(mp_outdir *o, const char *path, mp_dtype dtype, float *out, int64_t n)
{
    size_t es = mp_dtype_size(dtype);
    void *raw = malloc((size_t)n * es + 1);
    if (!raw)
        return mp_errorf(MP_ENOMEM, "out of memory reading %s", path);
    int rc = mp_outdir_read_raw(o, path, raw, n * (int64_t)es);
    if (rc == 0 && mp_convert_to_f32(dtype, raw, (size_t)n, out) < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: dataset %s has dtype %s, which has no float value", o->index_path, path,
                       mp_dtype_name(dtype));
    free(raw);
    return rc;
}

/* the packed tensor group at `gpath` (whose unit is `unit`), checked to be [m, n] */
static int read_qt(mp_outdir *o, const char *unit, const char *gpath, int64_t m, int64_t n, mp_qtensor **out)
{
    *out = NULL;
    hid_t f;
    MP_CHECK(shard_of(o, unit, &f));
    mp_qtensor *q = NULL;
    MP_CHECK(mp_qtensor_h5_read(f, gpath, o->index_path, &q));
    if (q->m != m || q->n != n) {
        int rc = mp_errorf(MP_EFORMAT, "%s: %s is [%lld, %lld], expected [%lld, %lld]", o->index_path, gpath,
                           (long long)q->m, (long long)q->n, (long long)m, (long long)n);
        mp_qtensor_destroy(q);
        return rc;
    }
    *out = q;
    return 0;
}

/* the shape of projection p of unit u (0..E-1 a routed expert or the base, E the shared expert,
 * MP_UNIT_DENSE a dense MLP) */
static void dims(const mp_config *c, int p, int u, int64_t *m, int64_t *n)
{
    int64_t f = u == MP_UNIT_DENSE ? c->dense_ffn : u == c->n_experts ? c->shared_ffn : c->moe_ffn, d = c->hidden;
    *m = p == 2 ? d : f;
    *n = p == 2 ? f : d;
}

int mp_outdir_has_delta(const mp_outdir *o) { return o->delta; }

/* projection p of the unit group `unit` (a base, an expert without the decomposition, the shared expert, a
 * dense MLP; u: its index for dims), packed, checked to be the block's shape */
static int block_qt(mp_outdir *o, const char *unit, int p, int u, mp_qtensor **out)
{
    int64_t m, n;
    dims(&o->cfg, p, u, &m, &n);
    char g[128];
    snprintf(g, sizeof g, "%s/%s", unit, MP_PROJ_NAME[p]);
    return read_qt(o, unit, g, m, n, out);
}

int mp_outdir_read_qbase(mp_outdir *o, int l, int p, mp_qtensor **out)
{
    const mp_config *c = &o->cfg;
    *out = NULL;
    if (!o->delta || l < 0 || l >= c->n_layers || !c->is_moe[l] || p < 0 || p > 2)
        return mp_errorf(MP_EUSAGE, "%s: no base block %d in layer %d", o->dir, p, l);
    char unit[64];
    snprintf(unit, sizeof unit, "/layers/%d/moe/base", l);
    return block_qt(o, unit, p, 0, out);
}

static int load_base(mp_outdir *o, int l)
{
    if (o->base_layer == l)
        return 0;
    o->base_layer = -1;
    for (int p = 0; p < 3; p++) {
        mp_qtensor *q;
        MP_CHECK(mp_outdir_read_qbase(o, l, p, &q));
        free(o->base[p]);
        if (!(o->base[p] = malloc(sizeof(float) * (size_t)(q->m * q->n)))) {
            mp_qtensor_destroy(q);
            return mp_errorf(MP_ENOMEM, "out of memory for the base of layer %d", l);
        }
        mp_qtensor_dequant(q, o->base[p]);
        o->base_act[p] = q->fmt->act_bits;
        mp_qtensor_destroy(q);
    }
    o->base_layer = l;
    return 0;
}

int mp_outdir_read_expert(mp_outdir *o, int l, int e, int p, float *out)
{
    const mp_config *c = &o->cfg;
    if (l < 0 || l >= c->n_layers || !c->is_moe[l] || e < 0 || e >= c->n_experts || p < 0 || p > 2)
        return mp_errorf(MP_EUSAGE, "%s: no routed expert %d in layer %d", o->dir, e, l);
    mp_outdir_factors f;
    MP_CHECK(mp_outdir_read_factors(o, l, e, p, &f));
    int64_t m = f.m, n = f.n, r = f.rank;
    if (r == 0) {
        memcpy(out, f.W, sizeof(float) * (size_t)(m * n));
        mp_outdir_factors_free(&f);
        return 0;
    }
    double *Ud = malloc(sizeof(double) * (size_t)(m * r)), *Vd = malloc(sizeof(double) * (size_t)(r * n));
    double *W = malloc(sizeof(double) * (size_t)(m * n));
    int rc = !Ud || !Vd || !W ? mp_errorf(MP_ENOMEM, "out of memory rebuilding layer %d expert %d", l, e) : 0;
    if (rc == 0) {
        for (int64_t i = 0; i < m * r; i++)
            Ud[i] = f.U[i];
        for (int64_t i = 0; i < r * n; i++)
            Vd[i] = f.V[i];
        for (int64_t i = 0; i < m * n; i++)
            W[i] = f.W[i];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, 1.0, Ud, (int)r, Vd, (int)n, 1.0,
                    W, (int)n);
        for (int64_t i = 0; i < m * n; i++)
            out[i] = (float)W[i];
    }
    free(Ud), free(Vd), free(W);
    mp_outdir_factors_free(&f);
    return rc;
}

/* 1 when layer l has unit u stored whole (one tensor per projection): the shared expert of a MoE layer,
 * the dense MLP of a non-MoE layer; its group in *unit */
static int whole_unit(const mp_config *c, int l, int u, char *unit, size_t cap)
{
    if (l < 0 || l >= c->n_layers)
        return 0;
    if (u == MP_UNIT_DENSE && mp_config_dense_mlp(c, l))
        snprintf(unit, cap, "/layers/%d/mlp", l);
    else if (u == c->n_experts && c->is_moe[l] && c->n_shared > 0 && c->shared_ffn > 0)
        snprintf(unit, cap, "/layers/%d/moe/shared", l);
    else
        return 0;
    return 1;
}

int mp_outdir_read_shared(mp_outdir *o, int l, int p, float *out)
{
    return mp_outdir_read_unit_proj(o, l, o->cfg.n_experts, p, out);
}

int mp_outdir_read_unit_proj(mp_outdir *o, int l, int u, int p, float *out)
{
    char unit[64];
    if (!whole_unit(&o->cfg, l, u, unit, sizeof unit) || p < 0 || p > 2)
        return mp_errorf(MP_EUSAGE, "%s: no %s in layer %d", o->dir, u == MP_UNIT_DENSE ? "dense MLP" : "shared expert",
                         l);
    mp_qtensor *q;
    MP_CHECK(block_qt(o, unit, p, u, &q));
    mp_qtensor_dequant(q, out);
    mp_qtensor_destroy(q);
    return 0;
}

void mp_outdir_qfactors_free(mp_outdir_qfactors *q)
{
    mp_qtensor_destroy(q->W), mp_qtensor_destroy(q->U), mp_qtensor_destroy(q->V);
    memset(q, 0, sizeof *q);
}

int mp_outdir_read_qfactors(mp_outdir *o, int l, int u, int p, mp_outdir_qfactors *q)
{
    const mp_config *c = &o->cfg;
    memset(q, 0, sizeof *q);
    char unit[64], g[128], gu[160], gv[160];
    int whole = whole_unit(c, l, u, unit, sizeof unit); /* the shared expert, a dense MLP */
    if ((!whole && (l < 0 || l >= c->n_layers || !c->is_moe[l] || u < 0 || u >= c->n_experts)) || p < 0 || p > 2)
        return mp_errorf(MP_EUSAGE, "%s: no unit %d in layer %d", o->dir, u, l);
    dims(c, p, u, &q->m, &q->n);
    if (!whole)
        snprintf(unit, sizeof unit, "/layers/%d/moe/experts/%d", l, u);
    snprintf(g, sizeof g, "%s/%s", unit, MP_PROJ_NAME[p]);
    if (whole || !o->delta)
        return block_qt(o, unit, p, u, &q->W);
    q->delta = 1;
    hid_t fh = -1, go = -1;
    int rc = shard_of(o, unit, &fh);
    if (rc == 0 && ((go = H5Oopen(fh, g, H5P_DEFAULT)) < 0 || mp_h5_attr_read_i64(go, "rank", &q->rank) < 0 ||
                    q->rank < 0 || q->rank > (q->m < q->n ? q->m : q->n)))
        rc = mp_errorf(MP_EFORMAT, "%s: delta %s or its rank attribute is missing or out of range", o->index_path, g);
    if (go >= 0)
        H5Oclose(go);
    if (rc == 0 && q->rank > 0) {
        snprintf(gu, sizeof gu, "%s/U", g), snprintf(gv, sizeof gv, "%s/V", g);
        rc = read_qt(o, unit, gu, q->m, q->rank, &q->U);
        if (rc == 0)
            rc = read_qt(o, unit, gv, q->rank, q->n, &q->V);
    }
    if (rc < 0)
        mp_outdir_qfactors_free(q);
    return rc;
}

void mp_outdir_factors_free(mp_outdir_factors *f)
{
    free(f->W), free(f->U), free(f->V);
    memset(f, 0, sizeof *f);
}

int mp_outdir_read_factors(mp_outdir *o, int l, int u, int p, mp_outdir_factors *f)
{
    memset(f, 0, sizeof *f);
    mp_outdir_qfactors q;
    MP_CHECK(mp_outdir_read_qfactors(o, l, u, p, &q));
    f->m = q.m, f->n = q.n, f->rank = q.rank;
    int rc = q.delta ? load_base(o, l) : 0;
    f->W = malloc(sizeof(float) * (size_t)(f->m * f->n));
    if (f->rank > 0) {
        f->U = malloc(sizeof(float) * (size_t)(f->m * f->rank));
        f->V = malloc(sizeof(float) * (size_t)(f->rank * f->n));
    }
    if (rc == 0 && (!f->W || (f->rank > 0 && (!f->U || !f->V))))
        rc = mp_errorf(MP_ENOMEM, "out of memory reading layer %d unit %d", l, u);
    if (rc == 0) {
        if (q.delta) {
            memcpy(f->W, o->base[p], sizeof(float) * (size_t)(f->m * f->n));
            f->act_w = o->base_act[p];
        } else {
            mp_qtensor_dequant(q.W, f->W);
            f->act_w = q.W->fmt->act_bits;
        }
        if (f->rank > 0) {
            mp_qtensor_dequant(q.U, f->U), mp_qtensor_dequant(q.V, f->V);
            f->act_u = q.U->fmt->act_bits, f->act_v = q.V->fmt->act_bits;
        }
    }
    mp_outdir_qfactors_free(&q);
    if (rc < 0)
        mp_outdir_factors_free(f);
    return rc;
}
