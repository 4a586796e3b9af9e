/* output.c - HDF5 shards and index.json of a compressed model (see output.h). */
#define _GNU_SOURCE
#include "output.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "allocation.h"
#include "error.h"
#include "fsutil.h"
#include "h5util.h"
#include "qtensor_h5.h"
#include "qunit.h"
#include "quant.h"
#include "stats.h"
#include "store.h"

/* HDF5 metadata of one copied tensor (object header, attributes) and of a shard (superblock, /moepack,
 * the groups of the layers), counted when packing so that shard files stay within shard_bytes */
#define TENSOR_OVERHEAD 2048
#define SHARD_OVERHEAD (64 * 1024)

static const char PACKING[] =
    "codes of b bits packed per row into ceil(n b / 32) uint32 words; code i at bits [b i, b i + b) of the "
    "row's little-endian bit stream, stream bit p = bit (p mod 32) of word p / 32; value = (code - zero) * "
    "scale per group of group_size input columns (sym: zero = 2^(b-1)); fp16: half bit patterns, two per word";

/* ---- items ------------------------------------------------------------------------------------ */

static int has_shared_unit(const mp_config *c) { return c->n_shared > 0 && c->shared_ffn > 0; }

/* a shared-expert projection that the quantize stage owns (gate/up/down of the shared MLP) */
static int shared_proj(const mp_tensor_spec *s)
{
    return s->role == MP_ROLE_SHARED && s->ndim == 2 && !strstr(s->name, "shared_expert_gate");
}

/* a projection of the dense MLP of a non-MoE layer (a quantize unit of its own) */
static int dense_proj(const mp_config *c, const mp_tensor_spec *s)
{
    return s->role == MP_ROLE_DENSE && s->ndim == 2 && s->layer >= 0 && s->layer < c->n_layers &&
           mp_config_dense_mlp(c, s->layer);
}

/* gate, up or down (0, 1, 2) of an MLP projection's tensor name */
static int proj_of_name(const char *name) { return strstr(name, "gate_proj") ? 0 : strstr(name, "up_proj") ? 1 : 2; }

/* the shard path of a non-MoE tensor */
static void tensor_path(const mp_tensor_spec *s, char *buf, size_t cap)
{
    const char *nm = s->name;
    if (s->role == MP_ROLE_EMBED) {
        snprintf(buf, cap, "/embed");
        return;
    }
    if (s->layer < 0) {
        if (!strcmp(nm, "lm_head.weight"))
            snprintf(buf, cap, "/lm_head");
        else if (!strcmp(nm, "lm_head.bias"))
            snprintf(buf, cap, "/lm_head_bias");
        else if (!strcmp(nm, "model.norm.weight"))
            snprintf(buf, cap, "/norm");
        else if (!strcmp(nm, "model.norm.bias"))
            snprintf(buf, cap, "/norm_bias");
        else
            snprintf(buf, cap, "/extra/%s", nm);
        return;
    }
    char pre[64];
    int l = s->layer;
    snprintf(pre, sizeof pre, "model.layers.%d.", l);
    const char *rest = strncmp(nm, pre, strlen(pre)) ? nm : nm + strlen(pre);
    if (s->role == MP_ROLE_ROUTER)
        snprintf(buf, cap,
                 strstr(rest, "e_score_correction_bias") ? "/layers/%d/moe/router_bias" : "/layers/%d/moe/router", l);
    else if (s->role == MP_ROLE_SHARED)
        snprintf(buf, cap, "/layers/%d/moe/shared_gate", l);
    else if (!strncmp(rest, "self_attn.", 10))
        snprintf(buf, cap, "/layers/%d/attn/%s", l, rest + 10);
    else if (s->role == MP_ROLE_DENSE && !strncmp(rest, "mlp.", 4))
        snprintf(buf, cap, "/layers/%d/mlp/%s", l, rest + 4);
    else
        snprintf(buf, cap, "/layers/%d/%s", l, rest);
}

static int push(mp_out_plan *p, int *cap, const mp_out_item *it)
{
    if (p->n == *cap) {
        int nc = *cap ? 2 * *cap : 256;
        mp_out_item *v = realloc(p->items, sizeof *v * (size_t)nc);
        if (!v)
            return mp_errorf(MP_ENOMEM, "out of memory");
        p->items = v, *cap = nc;
    }
    p->items[p->n++] = *it;
    return 0;
}

static int tensor_index(const mp_ckpt *ck, const mp_tensor *t) { return (int)(t - ck->tensors); }

int mp_out_items(const mp_model *m, int delta, mp_out_plan *p)
{
    const mp_config *c = &m->cfg;
    const mp_ckpt *ck = m->ck;
    memset(p, 0, sizeof *p);
    p->delta = delta, p->shared = has_shared_unit(c);
    unsigned char *seen = calloc((size_t)ck->ntensors + 1, 1), *units_done = calloc((size_t)c->n_layers + 1, 1);
    int cap = 0, rc = 0;
    if (!seen || !units_done)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int i = 0; i < m->nspecs && rc == 0; i++) {
        const mp_tensor_spec *s = &m->specs[i];
        const mp_tensor *t = mp_ckpt_find(ck, s->name);
        if (!t) {
            rc = mp_errorf(MP_ENOENT, "%s: tensor '%s' is missing", m->dir, s->name);
            break;
        }
        seen[tensor_index(ck, t)] = 1;
        int moe_block = s->role == MP_ROLE_EXPERT || (p->shared && shared_proj(s)) || dense_proj(c, s);
        if (moe_block && !units_done[s->layer]) { /* the layer's units where its experts (its MLP) are */
            int l = s->layer, moe = c->is_moe[l];
            units_done[l] = 1;
            for (int u = moe ? (delta ? -1 : 0) : MP_UNIT_DENSE; u <= (moe ? c->n_experts : MP_UNIT_DENSE) && rc == 0;
                 u++) {
                if (moe && u == c->n_experts && !p->shared)
                    break;
                mp_out_item it = {.kind = MP_ITEM_UNIT, .tensor = -1, .layer = l, .unit = u};
                char root[64];
                mp_qunit_root(u, c->n_experts, root, sizeof root);
                snprintf(it.path, sizeof it.path, moe ? "/layers/%d/moe/%s" : "/layers/%d/%s", l, root);
                rc = push(p, &cap, &it);
            }
        }
        if (moe_block || rc < 0)
            continue;
        mp_out_item it = {.kind = MP_ITEM_TENSOR, .tensor = tensor_index(ck, t), .layer = s->layer, .unit = -2};
        tensor_path(s, it.path, sizeof it.path);
        it.data_bytes = (int64_t)t->nbytes;
        it.pack_bytes = it.data_bytes + TENSOR_OVERHEAD;
        rc = push(p, &cap, &it);
    }
    /* tensors the registry does not list (e.g. buffers), but not the scales of quantized experts */
    for (int i = 0; i < ck->ntensors && rc == 0; i++) {
        const mp_tensor *t = &ck->tensors[i];
        if (seen[i])
            continue;
        if (mp_tensor_is_aux(t->name)) {
            char base[MP_NAME_MAX * 2];
            snprintf(base, sizeof base, "%s", t->name);
            char *sfx = strstr(base, "_scale_inv");
            if (sfx)
                *sfx = '\0';
            int skip = 0;
            for (int k = 0; k < m->nspecs; k++)
                if (!strcmp(m->specs[k].name, base))
                    skip = m->specs[k].role == MP_ROLE_EXPERT || (p->shared && shared_proj(&m->specs[k])) ||
                           dense_proj(c, &m->specs[k]);
            if (skip)
                continue;
        }
        mp_out_item it = {.kind = MP_ITEM_TENSOR, .tensor = i, .layer = -1, .unit = -2};
        snprintf(it.path, sizeof it.path, "/extra/%s", t->name);
        it.data_bytes = (int64_t)t->nbytes;
        it.pack_bytes = it.data_bytes + TENSOR_OVERHEAD;
        rc = push(p, &cap, &it);
    }
    free(seen), free(units_done);
    if (rc < 0)
        mp_out_plan_free(p);
    return rc;
}

void mp_out_plan_free(mp_out_plan *p)
{
    free(p->items);
    memset(p, 0, sizeof *p);
}

static void unit_path(const char *unit_dir, int l, int u, int E, char *buf, size_t cap)
{
    char f[32];
    mp_qunit_file(u, E, f, sizeof f);
    snprintf(buf, cap, "%s/layer%04d/%s", unit_dir, l, f);
}

int mp_out_unit_sizes(mp_out_plan *p, const mp_model *m, const char *unit_dir)
{
    int E = m->cfg.n_experts;
    for (int i = 0; i < p->n; i++) {
        mp_out_item *it = &p->items[i];
        if (it->kind != MP_ITEM_UNIT)
            continue;
        char path[4600], root[64];
        unit_path(unit_dir, it->layer, it->unit, E, path, sizeof path);
        mp_qunit_root(it->unit, E, root, sizeof root);
        struct stat st;
        if (stat(path, &st) != 0)
            return mp_syserrorf(MP_ENOENT, "%s: quantized unit is missing", path);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0)
            return mp_errorf(MP_EFORMAT, "%s: not a readable HDF5 file", path);
        int64_t data = 0;
        int rc = 0;
        for (int q = 0; q < 3 && rc == 0; q++) {
            char g[96];
            int64_t b = 0;
            snprintf(g, sizeof g, "%s/%s", root, MP_PROJ_NAME[q]);
            hid_t o = H5Oopen(f, g, H5P_DEFAULT);
            if (o < 0 || mp_h5_attr_read_i64(o, "bytes", &b) < 0)
                rc = mp_errorf(MP_EFORMAT, "%s: block %s or its 'bytes' attribute is missing", path, g);
            if (o >= 0)
                H5Oclose(o);
            data += b;
        }
        H5Fclose(f);
        MP_CHECK(rc);
        it->data_bytes = data;
        it->pack_bytes = (int64_t)st.st_size;
    }
    return 0;
}

void mp_out_pack(mp_out_plan *p, double shard_bytes)
{
    double cap = shard_bytes - SHARD_OVERHEAD, used = 0;
    int shard = 0;
    for (int i = 0; i < p->n; i++) {
        double b = (double)p->items[i].pack_bytes;
        if (used > 0 && used + b > cap)
            shard++, used = 0;
        p->items[i].shard = shard;
        used += b;
    }
    p->nshards = p->n ? shard + 1 : 0;
}

void mp_out_shard_name(int k, int nshards, char *buf, int cap)
{
    snprintf(buf, (size_t)cap, "moepack-%05d-of-%05d.h5", k + 1, nshards);
}

/* ---- the /moepack numbers ----------------------------------------------------------------------- */

int mp_out_meta_collect(const mp_model *m, const mp_job *job, const mp_out_plan *p, const char *alloc_dir,
                        const char *stats_dir, mp_out_meta *meta, int64_t **tokens)
{
    const mp_config *c = &m->cfg;
    int E = c->n_experts, rc = 0;
    memset(meta, 0, sizeof *meta);
    meta->n_moe = mp_config_n_moe_layers(c);
    meta->cols = E + (has_shared_unit(c) ? 1 : 0);
    *tokens = calloc((size_t)meta->n_moe * (size_t)meta->cols + 1, sizeof **tokens);
    if (!*tokens)
        return mp_errorf(MP_ENOMEM, "out of memory");
    int64_t d = c->hidden, f = c->moe_ffn;
    for (int i = 0; i < p->n; i++)
        if (p->items[i].kind == MP_ITEM_UNIT)
            meta->bytes_used += p->items[i].data_bytes;
    /* formats used: tensors, weights, bytes; ranks */
    int nf = mp_qformat_count();
    int64_t ft[32] = {0}, fw[32] = {0}, fb[32] = {0}, rmin = -1, rmax = 0, nd = 0, blocks = 0;
    double rsum = 0;
    int64_t fmax = f > c->shared_ffn ? f : c->shared_ffn;
    double *xs = malloc(sizeof(double) * (size_t)(d + fmax));
    if (!xs)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    int li = 0;
    for (int l = 0; l < c->n_layers && rc == 0; l++) {
        if (!mp_config_has_units(c, l))
            continue;
        if (c->is_moe[l])
            meta->moe_weights += (int64_t)E * 3 * d * f + (has_shared_unit(c) ? 3 * d * (int64_t)c->shared_ffn : 0);
        else
            meta->moe_weights += 3 * d * (int64_t)c->dense_ffn;
        char path[4400];
        mp_layer_alloc a = {0};
        mp_alloc_path(path, sizeof path, alloc_dir, l);
        rc = mp_alloc_read(path, &a);
        for (int b = 0; b < a.n && rc == 0; b++) {
            const mp_choice *ch = &a.c[b];
            meta->predicted_loss += ch->loss;
            blocks++;
            int64_t bf = ch->kind == MP_BK_SHARED ? c->shared_ffn : ch->kind == MP_BK_DENSE ? c->dense_ffn : f;
            int64_t bm = ch->proj == 2 ? d : bf, bn = ch->proj == 2 ? bf : d;
            const mp_qformat *fs[2] = {ch->fmt, ch->kind == MP_BK_DELTA ? ch->fmt_v : NULL};
            int64_t ws[2] = {ch->kind == MP_BK_DELTA ? bm * ch->rank : bm * bn, ch->rank * bn};
            int64_t ms[2] = {bm, ch->rank}, ns[2] = {ch->kind == MP_BK_DELTA ? ch->rank : bn, bn};
            for (int k = 0; k < 2; k++) {
                if (!fs[k])
                    continue;
                for (int q = 0; q < nf && q < 32; q++)
                    if (mp_qformat_at(q) == fs[k]) {
                        ft[q]++, fw[q] += ws[k];
                        fb[q] += mp_qformat_bytes(fs[k], ms[k], ns[k]);
                    }
            }
            if (ch->kind == MP_BK_DELTA) {
                nd++, rsum += (double)ch->rank;
                rmin = rmin < 0 || ch->rank < rmin ? ch->rank : rmin;
                rmax = ch->rank > rmax ? ch->rank : rmax;
            }
        }
        mp_layer_alloc_free(&a);
        if (!c->is_moe[l]) /* tokens_per_expert: the MoE layers' */
            continue;
        for (int e = 0; e < meta->cols && rc == 0; e++) {
            int64_t cnt = 0;
            mp_stats_path(path, sizeof path, stats_dir, l, e);
            rc = mp_stats_read_summary(path, d, e == E ? c->shared_ffn : f, &cnt, xs, xs + d);
            (*tokens)[(int64_t)li * meta->cols + e] = cnt;
        }
        li++;
    }
    free(xs);
    if (rc < 0) {
        free(*tokens);
        *tokens = NULL;
        return rc;
    }
    meta->budget_bits = job->budget_bits;
    meta->budget_bytes = job->budget_bytes > 0 ? job->budget_bytes : job->budget_bits * (double)meta->moe_weights / 8.0;
    if (job->budget_bytes > 0)
        meta->budget_bits = 8.0 * job->budget_bytes / (double)(meta->moe_weights ? meta->moe_weights : 1);
    /* the summary as JSON text */
    size_t n = 0, cap = sizeof meta->allocation;
    char *s = meta->allocation;
    n += (size_t)snprintf(s + n, cap - n, "{\"blocks\": %lld, \"formats\": {", (long long)blocks);
    int first = 1;
    for (int q = 0; q < nf && q < 32 && n < cap; q++)
        if (ft[q]) {
            n += (size_t)snprintf(s + n, cap - n, "%s\"%s\": {\"tensors\": %lld, \"weights\": %lld, \"bytes\": %lld}",
                                  first ? "" : ", ", mp_qformat_at(q)->name, (long long)ft[q], (long long)fw[q],
                                  (long long)fb[q]);
            first = 0;
        }
    if (n < cap)
        n += (size_t)snprintf(s + n, cap - n, "}");
    if (nd && n < cap)
        n += (size_t)snprintf(s + n, cap - n,
                              ", \"deltas\": %lld, \"rank_min\": %lld, \"rank_max\": %lld, \"rank_mean\": %.6g",
                              (long long)nd, (long long)rmin, (long long)rmax, rsum / (double)nd);
    if (n < cap)
        snprintf(s + n, cap - n, "}");
    return 0;
}

/* ---- writing a shard ---------------------------------------------------------------------------- */

static int h5_fail(const char *final, const char *what)
{
    char w[4900];
    snprintf(w, sizeof w, "cannot write the shard (%s)", what);
    return mp_h5_fail(MP_EIO, final, w);
}

/* HDF5 type and the dtype attribute of a checkpoint dtype; ftype closed by the caller when *own */
static hid_t file_type(mp_dtype dt, const char **name, int *own)
{
    *own = 0;
    switch (dt) {
    case MP_DT_F32: *name = "float32"; return H5T_IEEE_F32LE;
    case MP_DT_F64: *name = "float64"; return H5T_IEEE_F64LE;
    case MP_DT_F16:
        *name = "float16";
        *own = 1;
        return mp_h5_half_type();
    case MP_DT_BF16: *name = "bfloat16"; return H5T_STD_U16LE;
    case MP_DT_F8_E4M3: *name = "float8_e4m3fn"; return H5T_STD_U8LE;
    case MP_DT_F8_E5M2: *name = "float8_e5m2"; return H5T_STD_U8LE;
    case MP_DT_BOOL: *name = "bool"; return H5T_STD_U8LE;
    case MP_DT_U8: *name = "uint8"; return H5T_STD_U8LE;
    case MP_DT_I8: *name = "int8"; return H5T_STD_I8LE;
    case MP_DT_I16: *name = "int16"; return H5T_STD_I16LE;
    case MP_DT_U16: *name = "uint16"; return H5T_STD_U16LE;
    case MP_DT_I32: *name = "int32"; return H5T_STD_I32LE;
    case MP_DT_U32: *name = "uint32"; return H5T_STD_U32LE;
    case MP_DT_I64: *name = "int64"; return H5T_STD_I64LE;
    case MP_DT_U64: *name = "uint64"; return H5T_STD_U64LE;
    default: *name = "?"; return -1;
    }
}

static void split_path(const char *path, char *parent, size_t pcap, const char **leaf)
{
    const char *sl = strrchr(path, '/');
    snprintf(parent, pcap, "%.*s", (int)(sl ? sl - path : 0), path);
    if (!parent[0])
        snprintf(parent, pcap, "/");
    *leaf = sl ? sl + 1 : path;
}

static int write_tensor(hid_t f, const mp_out_item *it, const mp_tensor *t)
{
    const char *dname;
    int own;
    hid_t ft = file_type(t->dtype, &dname, &own);
    if (ft < 0)
        return -1;
    char parent[400];
    const char *leaf;
    split_path(it->path, parent, sizeof parent, &leaf);
    hid_t g = mp_h5_mkgroup(f, parent);
    hsize_t dims[MP_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++)
        dims[i] = (hsize_t)t->shape[i];
    hid_t sp = t->ndim ? H5Screate_simple(t->ndim, dims, NULL) : H5Screate(H5S_SCALAR), dcpl = mp_h5_dcpl();
    hid_t ds = g >= 0 ? H5Dcreate2(g, leaf, ft, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT) : -1;
    int bad = ds < 0;
    if (!bad && t->numel > 0)
        bad |= H5Dwrite(ds, ft, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data) < 0;
    if (bad)
        mp_h5_capture();
    if (!bad) {
        int64_t shape[MP_MAX_DIMS];
        for (int i = 0; i < t->ndim; i++)
            shape[i] = t->shape[i];
        bad |= mp_h5_attr_str(ds, "dtype", dname) | mp_h5_attr_str(ds, "hf_name", t->name);
        bad |= t->ndim ? mp_h5_attr_i64v(ds, "shape", shape, t->ndim) : 0;
    }
    if (ds >= 0)
        H5Dclose(ds);
    H5Pclose(dcpl);
    H5Sclose(sp);
    if (g >= 0)
        H5Gclose(g);
    if (own)
        H5Tclose(ft);
    return bad ? -1 : 0;
}

static int copy_unit(hid_t f, const mp_out_item *it, const char *unit_dir, int E, char *err, size_t ecap)
{
    char src[4600], root[64], parent[400];
    const char *leaf;
    unit_path(unit_dir, it->layer, it->unit, E, src, sizeof src);
    mp_qunit_root(it->unit, E, root, sizeof root);
    split_path(it->path, parent, sizeof parent, &leaf);
    hid_t u = H5Fopen(src, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (u < 0) {
        snprintf(err, ecap, "%s: cannot open the quantized unit", src);
        return -1;
    }
    hid_t g = mp_h5_mkgroup(f, parent);
    int bad = g < 0 || H5Ocopy(u, root, g, leaf, H5P_DEFAULT, H5P_DEFAULT) < 0;
    if (bad)
        mp_h5_capture();
    if (g >= 0)
        H5Gclose(g);
    H5Fclose(u);
    if (bad)
        snprintf(err, ecap, "copying %s:%s", src, root);
    return bad ? -1 : 0;
}

static int write_meta(hid_t f, const mp_out_meta *me, const int64_t *tokens, const mp_model *m, int k, int nshards)
{
    hid_t g = mp_h5_mkgroup(f, "/moepack");
    if (g < 0)
        return -1;
    char fp[17], mfp[17];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)me->fingerprint);
    snprintf(mfp, sizeof mfp, "%016llx", (unsigned long long)me->model_fingerprint);
    double bpw = me->moe_weights ? 8.0 * (double)me->bytes_used / (double)me->moe_weights : 0;
    int bad =
        mp_h5_attr_str(g, "version", MOEPACK_VERSION) | mp_h5_attr_i32(g, "format_version", MP_OUT_FORMAT_VERSION);
    bad |= mp_h5_attr_str(g, "fingerprint", fp) | mp_h5_attr_str(g, "model_fingerprint", mfp);
    bad |= mp_h5_attr_f64(g, "budget_bytes", me->budget_bytes) |
           mp_h5_attr_f64(g, "budget_bits_per_weight", me->budget_bits);
    bad |= mp_h5_attr_i64(g, "bytes_used", me->bytes_used) | mp_h5_attr_i64(g, "moe_weights", me->moe_weights);
    bad |= mp_h5_attr_f64(g, "bits_per_weight", bpw) | mp_h5_attr_f64(g, "predicted_loss", me->predicted_loss);
    bad |= mp_h5_attr_str(g, "allocation", me->allocation) | mp_h5_attr_str(g, "packing", PACKING);
    bad |= mp_h5_attr_i32(g, "shard", k + 1) | mp_h5_attr_i32(g, "shards", nshards);
    bad |= mp_h5_attr_str(g, "architecture", mp_arch_name(m->cfg.arch));
    int32_t *ml = malloc(sizeof(int32_t) * (size_t)(me->n_moe + 1));
    if (!ml)
        bad = 1;
    for (int l = 0, i = 0; ml && l < m->cfg.n_layers; l++)
        if (m->cfg.is_moe[l])
            ml[i++] = l;
    if (!bad)
        bad |= mp_h5_put(g, "moe_layers", H5T_STD_I32LE, H5T_NATIVE_INT32, ml, 1, (hsize_t)me->n_moe, 0);
    if (!bad)
        bad |= mp_h5_put(g, "tokens_per_expert", H5T_STD_I64LE, H5T_NATIVE_INT64, tokens, 2, (hsize_t)me->n_moe,
                         (hsize_t)me->cols);
    if (!bad) {
        hid_t ds = H5Dopen2(g, "tokens_per_expert", H5P_DEFAULT);
        bad |= ds < 0 ||
               mp_h5_attr_str(ds, "columns", me->cols > m->cfg.n_experts ? "experts 0..E-1, shared" : "experts 0..E-1");
        if (ds >= 0)
            H5Dclose(ds);
    }
    free(ml);
    H5Gclose(g);
    return bad ? -1 : 0;
}

int mp_out_write_shard(const char *dir, const mp_out_plan *p, int k, const mp_model *m, const char *unit_dir,
                       const mp_out_meta *meta, const int64_t *tokens, uint64_t *hash, int64_t *size)
{
    char name[64], final[4400], tmp[4400], err[4800] = "";
    mp_out_shard_name(k, p->nshards, name, sizeof name);
    snprintf(final, sizeof final, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    mp_h5_init();
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_obj_track_times(fcpl, 0);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS); /* the 1.8 format: compact groups (io/h5util.h) */
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, fapl);
    H5Pclose(fcpl);
    H5Pclose(fapl);
    if (f < 0) {
        int rc = h5_fail(final, "cannot create the temporary file");
        unlink(tmp);
        return rc;
    }
    /* the disk space up front: a full disk is a clean error here, never inside HDF5's writes */
    double est = SHARD_OVERHEAD;
    for (int i = 0; i < p->n; i++)
        est += p->items[i].shard == k ? (double)p->items[i].pack_bytes : 0;
    int rc = mp_reserve_space(tmp, (long long)(1.1 * est) + (64 << 10), final);
    if (rc < 0) {
        H5Fclose(f);
        unlink(tmp);
        return rc;
    }
    for (int i = 0; i < p->n && rc == 0; i++) {
        const mp_out_item *it = &p->items[i];
        if (it->shard != k)
            continue;
        if (it->kind == MP_ITEM_TENSOR) {
            const mp_tensor *t = &m->ck->tensors[it->tensor];
            if (write_tensor(f, it, t) < 0) {
                snprintf(err, sizeof err, "tensor %s as %s", t->name, it->path);
                rc = h5_fail(final, err);
            }
        } else if (copy_unit(f, it, unit_dir, m->cfg.n_experts, err, sizeof err) < 0)
            rc = h5_fail(final, err);
    }
    if (rc == 0 && write_meta(f, meta, tokens, m, k, p->nshards) < 0)
        rc = h5_fail(final, "the /moepack group");
    if (H5Fclose(f) < 0 && rc == 0)
        rc = h5_fail(final, "closing the file");
    if (rc == 0)
        rc = mp_release_space(tmp);
    if (rc == 0)
        rc = mp_commit_file(tmp, final);
    if (rc < 0) {
        unlink(tmp);
        return rc;
    }
    struct stat st;
    if (stat(final, &st) != 0)
        return mp_syserrorf(MP_EIO, "%s: cannot stat", final);
    *size = (int64_t)st.st_size;
    return mp_file_xxh64(final, hash);
}

/* ---- the directory ------------------------------------------------------------------------------ */

static int is_shard_name(const char *nm, int *k, int *n)
{
    int a, b, len = 0;
    if (sscanf(nm, "moepack-%5d-of-%5d.h5%n", &a, &b, &len) == 2 && len == (int)strlen(nm) && len == 25) {
        *k = a, *n = b;
        return 1;
    }
    return 0;
}

int mp_out_begin(const char *dir)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/index.json", dir);
    if (unlink(path) != 0 && errno != ENOENT)
        return mp_syserrorf(MP_EIO, "%s: cannot remove the previous index", path);
    snprintf(path, sizeof path, "%s/validation.json", dir); /* it described the shards replaced now */
    if (unlink(path) != 0 && errno != ENOENT)
        return mp_syserrorf(MP_EIO, "%s: cannot remove the previous validation", path);
    DIR *d = opendir(dir);
    if (!d)
        return mp_syserrorf(MP_EIO, "%s: cannot list the output directory", dir);
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL && rc == 0) {
        size_t n = strlen(e->d_name);
        if (!strncmp(e->d_name, ".moepack-", 9) && n > 4 && !strcmp(e->d_name + n - 4, ".tmp")) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (unlink(path) != 0 && errno != ENOENT)
                rc = mp_syserrorf(MP_EIO, "%s: cannot remove a leftover temporary shard", path);
        }
        if (!strncmp(e->d_name, "index.json.tmp", 14)) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
    return rc;
}

/* remove every shard of the name pattern except those of a set of `keep` shards (0: all) */
static int remove_shards(const char *dir, int keep)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : mp_syserrorf(MP_EIO, "%s: cannot list the output directory", dir);
    struct dirent *e;
    int rc = 0, k, n;
    char path[4400];
    while ((e = readdir(d)) != NULL && rc == 0)
        if (is_shard_name(e->d_name, &k, &n) && n != keep) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (unlink(path) != 0 && errno != ENOENT)
                rc = mp_syserrorf(MP_EIO, "%s: cannot remove a shard of a previous result", path);
        }
    closedir(d);
    return rc;
}

int mp_out_prune(const char *dir, int nshards) { return remove_shards(dir, nshards); }

/* ---- index.json --------------------------------------------------------------------------------- */

static void add_raw_num(cJSON *o, const char *k, double v)
{
    char t[40];
    snprintf(t, sizeof t, "%.17g", v);
    cJSON_AddRawToObject(o, k, t);
}

static void add_hex(cJSON *o, const char *k, uint64_t v)
{
    char t[17];
    snprintf(t, sizeof t, "%016llx", (unsigned long long)v);
    cJSON_AddStringToObject(o, k, t);
}

struct visit_ctx {
    cJSON *wm;
    const char *prefix, *shard;
};

static herr_t visit_ds(hid_t o, const char *name, const H5O_info_t *info, void *data)
{
    (void)o;
    struct visit_ctx *v = data;
    if (info->type == H5O_TYPE_DATASET) {
        char full[1024];
        snprintf(full, sizeof full, "%s/%s", v->prefix, name);
        cJSON_AddStringToObject(v->wm, full, v->shard);
    }
    return 0;
}

/* the source's tensors as export needs them: name, dtype, shape, and where the values come from */
/* {"name", "dtype", "shape"} of a source tensor */
static cJSON *tensor_entry(const mp_tensor *t)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", t->name);
    cJSON_AddStringToObject(o, "dtype", mp_dtype_name(t->dtype));
    cJSON *sh = cJSON_AddArrayToObject(o, "shape");
    for (int d = 0; d < t->ndim; d++)
        cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
    return o;
}

static cJSON *source_list(const mp_model *m, const mp_out_plan *p)
{
    const mp_config *c = &m->cfg;
    cJSON *arr = cJSON_CreateArray();
    char *where = calloc((size_t)m->ck->ntensors + 1, 384);
    if (!where)
        return arr;
    for (int i = 0; i < p->n; i++)
        if (p->items[i].kind == MP_ITEM_TENSOR)
            snprintf(where + (size_t)p->items[i].tensor * 384, 384, "%s", p->items[i].path);
    for (int i = 0; i < m->nspecs; i++) { /* registry order first */
        const mp_tensor_spec *s = &m->specs[i];
        const mp_tensor *t = mp_ckpt_find(m->ck, s->name);
        if (!t)
            continue;
        cJSON *o = tensor_entry(t);
        if (s->role == MP_ROLE_EXPERT && s->expert >= 0) { /* per-expert layout: which projection */
            int proj = -1;
            for (int q = 0; q < 3; q++) {
                mp_block_loc b;
                mp_expert_block(c, m->layout, s->layer, s->expert, (mp_proj)q, &b);
                if (!strcmp(b.name, s->name))
                    proj = q;
            }
            cJSON *e = cJSON_AddObjectToObject(o, "expert");
            cJSON_AddNumberToObject(e, "layer", s->layer);
            cJSON_AddNumberToObject(e, "expert", s->expert);
            cJSON_AddStringToObject(e, "proj", proj >= 0 ? MP_PROJ_NAME[proj] : "?");
        } else if (s->role == MP_ROLE_EXPERT) { /* fused [E, 2f, d] (gate rows first) or [E, d, f] */
            cJSON *e = cJSON_AddObjectToObject(o, "fused");
            cJSON_AddNumberToObject(e, "layer", s->layer);
            cJSON_AddStringToObject(e, "part", strstr(s->name, "gate_up_proj") ? "gate_up" : "down");
        } else if (p->shared && shared_proj(s)) {
            cJSON *e = cJSON_AddObjectToObject(o, "shared");
            cJSON_AddNumberToObject(e, "layer", s->layer);
            cJSON_AddStringToObject(e, "proj", MP_PROJ_NAME[proj_of_name(s->name)]);
        } else if (dense_proj(c, s)) {
            cJSON *e = cJSON_AddObjectToObject(o, "dense");
            cJSON_AddNumberToObject(e, "layer", s->layer);
            cJSON_AddStringToObject(e, "proj", MP_PROJ_NAME[proj_of_name(s->name)]);
        } else
            cJSON_AddStringToObject(o, "path", where + (size_t)tensor_index(m->ck, t) * 384);
        cJSON_AddItemToArray(arr, o);
    }
    for (int i = 0; i < p->n; i++) { /* then the extras */
        const mp_out_item *it = &p->items[i];
        if (it->kind != MP_ITEM_TENSOR || strncmp(it->path, "/extra/", 7))
            continue;
        const mp_tensor *t = &m->ck->tensors[it->tensor];
        int listed = 0;
        for (int k = 0; k < m->nspecs && !listed; k++)
            listed = !strcmp(m->specs[k].name, t->name);
        if (listed)
            continue;
        cJSON *o = tensor_entry(t);
        cJSON_AddStringToObject(o, "path", it->path);
        cJSON_AddItemToArray(arr, o);
    }
    free(where);
    return arr;
}

/* per MoE layer and dense MLP layer: the allocation's blocks, predicted loss and stored bytes */
static int layers_json(const mp_model *m, const char *alloc_dir, cJSON *arr)
{
    const mp_config *c = &m->cfg;
    for (int l = 0; l < c->n_layers; l++) {
        if (!mp_config_has_units(c, l))
            continue;
        char path[4400];
        mp_layer_alloc a = {0};
        mp_alloc_path(path, sizeof path, alloc_dir, l);
        MP_CHECK(mp_alloc_read(path, &a));
        cJSON *o = cJSON_CreateObject(), *bl = cJSON_CreateArray();
        double loss = 0, bytes = 0;
        for (int b = 0; b < a.n; b++) {
            const mp_choice *ch = &a.c[b];
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "kind", mp_block_kind_name(ch->kind));
            cJSON_AddNumberToObject(x, "unit", ch->unit);
            cJSON_AddStringToObject(x, "proj", MP_PROJ_NAME[ch->proj]);
            if (ch->kind == MP_BK_DELTA)
                cJSON_AddNumberToObject(x, "rank", (double)ch->rank);
            if (ch->fmt)
                cJSON_AddStringToObject(x, "format", ch->fmt->name);
            if (ch->fmt_v)
                cJSON_AddStringToObject(x, "format_v", ch->fmt_v->name);
            cJSON_AddNumberToObject(x, "bytes", (double)ch->bytes);
            add_raw_num(x, "loss", ch->loss);
            add_raw_num(x, "loss_raw", ch->loss_raw);
            add_raw_num(x, "cost_s", ch->cost);
            cJSON_AddItemToArray(bl, x);
            loss += ch->loss, bytes += (double)ch->bytes;
        }
        cJSON_AddNumberToObject(o, "layer", l);
        add_raw_num(o, "predicted_loss", loss);
        cJSON_AddNumberToObject(o, "bytes", bytes);
        cJSON_AddItemToObject(o, "blocks", bl);
        cJSON_AddItemToArray(arr, o);
        mp_layer_alloc_free(&a);
    }
    return 0;
}

int mp_out_index_write(const char *tmp_path, const mp_out_plan *p, const mp_model *m, const mp_job *job,
                       const char *unit_dir, const char *alloc_dir, const mp_out_meta *meta, const uint64_t *hashes,
                       const int64_t *sizes)
{
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return mp_errorf(MP_ENOMEM, "out of memory");
    int rc = 0;
    cJSON_AddStringToObject(j, "format", "moepack");
    cJSON_AddNumberToObject(j, "format_version", MP_OUT_FORMAT_VERSION);
    cJSON_AddStringToObject(j, "moepack_version", MOEPACK_VERSION);
    add_hex(j, "fingerprint", meta->fingerprint);
    add_hex(j, "model_fingerprint", meta->model_fingerprint);
    cJSON *sh = cJSON_AddArrayToObject(j, "shards");
    double total = 0;
    for (int k = 0; k < p->nshards; k++) {
        char nm[64];
        mp_out_shard_name(k, p->nshards, nm, sizeof nm);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "file", nm);
        cJSON_AddNumberToObject(o, "bytes", (double)sizes[k]);
        add_hex(o, "xxh64", hashes[k]);
        cJSON_AddItemToArray(sh, o);
        total += (double)sizes[k];
    }
    cJSON *md = cJSON_AddObjectToObject(j, "metadata");
    cJSON_AddNumberToObject(md, "total_size", total);
    add_raw_num(md, "budget_bytes", meta->budget_bytes);
    add_raw_num(md, "budget_bits_per_weight", meta->budget_bits);
    cJSON_AddNumberToObject(md, "bytes_used", (double)meta->bytes_used);
    cJSON_AddNumberToObject(md, "moe_weights", (double)meta->moe_weights);
    add_raw_num(md, "bits_per_weight",
                meta->moe_weights ? 8.0 * (double)meta->bytes_used / (double)meta->moe_weights : 0);
    add_raw_num(md, "predicted_loss", meta->predicted_loss);
    cJSON *al = cJSON_Parse(meta->allocation);
    cJSON_AddItemToObject(md, "allocation", al ? al : cJSON_CreateNull());
    cJSON *src = cJSON_AddObjectToObject(md, "source");
    cJSON_AddStringToObject(src, "architecture", mp_arch_name(m->cfg.arch));
    cJSON_AddStringToObject(src, "expert_layout", mp_layout_name(m->layout));
    cJSON_AddBoolToObject(src, "delta", p->delta);
    cJSON_AddBoolToObject(src, "shared_expert", p->shared);
    cJSON_AddNumberToObject(src, "experts", m->cfg.n_experts);
    cJSON_AddStringToObject(md, "quant_method", job->quant_method);
    char cpath[4200], *cfg = NULL;
    snprintf(cpath, sizeof cpath, "%s/config.json", m->dir);
    rc = mp_read_file(cpath, &cfg, NULL);
    if (rc == 0)
        cJSON_AddStringToObject(md, "config_json", cfg);
    free(cfg);
    cJSON *fm = cJSON_AddObjectToObject(md, "formats");
    for (int q = 0; q < mp_qformat_count(); q++) {
        const mp_qformat *f = mp_qformat_at(q);
        cJSON *o = cJSON_AddObjectToObject(fm, f->name);
        cJSON_AddNumberToObject(o, "bits", f->bits);
        cJSON_AddNumberToObject(o, "group_size", f->group);
        cJSON_AddStringToObject(o, "scheme", mp_qformat_scheme(f));
        cJSON_AddNumberToObject(o, "act_bits", f->act_bits);
        add_raw_num(o, "bits_per_weight", f->bits_per_weight);
    }
    cJSON_AddStringToObject(md, "packing", PACKING);
    if (rc == 0)
        rc = layers_json(m, alloc_dir, cJSON_AddArrayToObject(md, "layers"));
    cJSON_AddItemToObject(j, "tensors", source_list(m, p));
    cJSON *un = cJSON_AddObjectToObject(j, "units"), *wm = cJSON_AddObjectToObject(j, "weight_map");
    for (int i = 0; i < p->n && rc == 0; i++) {
        const mp_out_item *it = &p->items[i];
        char nm[64];
        mp_out_shard_name(it->shard, p->nshards, nm, sizeof nm);
        if (it->kind == MP_ITEM_TENSOR) {
            cJSON_AddStringToObject(wm, it->path, nm);
            continue;
        }
        cJSON_AddStringToObject(un, it->path, nm);
        char upath[4600], root[64];
        unit_path(unit_dir, it->layer, it->unit, m->cfg.n_experts, upath, sizeof upath);
        mp_qunit_root(it->unit, m->cfg.n_experts, root, sizeof root);
        hid_t f = H5Fopen(upath, H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t g = f >= 0 ? H5Gopen2(f, root, H5P_DEFAULT) : -1;
        struct visit_ctx v = {wm, it->path, nm};
        if (g < 0 || H5Ovisit(g, H5_INDEX_NAME, H5_ITER_INC, visit_ds, &v) < 0)
            rc = mp_errorf(MP_EFORMAT, "%s: cannot list the datasets of %s", upath, root);
        if (g >= 0)
            H5Gclose(g);
        if (f >= 0)
            H5Fclose(f);
    }
    char *txt = rc == 0 ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (rc == 0 && !txt)
        rc = mp_errorf(MP_ENOMEM, "out of memory for index.json");
    if (rc == 0) {
        FILE *fp = fopen(tmp_path, "wb");
        if (!fp)
            rc = mp_syserrorf(MP_EIO, "%s: cannot create", tmp_path);
        else {
            rc = mp_fwrite_all(txt, strlen(txt), fp, tmp_path);
            if (rc == 0)
                rc = mp_fwrite_all("\n", 1, fp, tmp_path);
            if (fclose(fp) != 0 && rc == 0)
                rc = mp_syserrorf(MP_EIO, "%s: write failed", tmp_path);
        }
        if (rc < 0)
            unlink(tmp_path);
    }
    free(txt);
    return rc;
}

int mp_out_index_commit(const char *tmp_path, const char *dir)
{
    char final[4400];
    snprintf(final, sizeof final, "%s/index.json", dir);
    int rc = mp_commit_file(tmp_path, final);
    if (rc < 0)
        unlink(tmp_path);
    return rc;
}

/* index.json's object, or NULL with *missing = 1 when there is none (MP_EFORMAT when unreadable) */
static int read_index(const char *dir, cJSON **out, int *missing)
{
    char path[4400], *txt = NULL;
    *out = NULL, *missing = 0;
    snprintf(path, sizeof path, "%s/index.json", dir);
    if (access(path, F_OK) != 0) {
        *missing = 1;
        return 0;
    }
    MP_CHECK(mp_read_file(path, &txt, NULL));
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    const cJSON *fmt = j ? cJSON_GetObjectItem(j, "format") : NULL;
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "moepack")) {
        cJSON_Delete(j);
        return mp_errorf(MP_EFORMAT, "%s: not a moepack index (no \"format\": \"moepack\")", path);
    }
    *out = j;
    return 0;
}

int mp_out_claim(const char *dir, uint64_t model_fp, int fresh, FILE *notes)
{
    cJSON *j = NULL;
    int missing = 0, rc = read_index(dir, &j, &missing);
    if (missing)
        return 0;
    char path[4400], want[17];
    snprintf(path, sizeof path, "%s/index.json", dir);
    snprintf(want, sizeof want, "%016llx", (unsigned long long)model_fp);
    const cJSON *mf = j ? cJSON_GetObjectItem(j, "model_fingerprint") : NULL;
    const char *have = cJSON_IsString(mf) ? mf->valuestring : "(none)";
    int other = rc < 0 || strcmp(have, want) != 0;
    if (other && !fresh) {
        if (rc == 0)
            rc = mp_errorf(MP_EMISMATCH,
                           "output.dir %s holds the result of another job (%s: model fingerprint %s, this job's %s); "
                           "choose another output.dir, or pass --fresh to replace it",
                           dir, path, have, want);
        else
            mp_error_prefix("output.dir %s: cannot tell which job wrote it; pass --fresh to replace it", dir);
        cJSON_Delete(j);
        return rc;
    }
    cJSON_Delete(j);
    mp_error_clear();
    if (fresh) { /* the index first: no index ever names a missing shard */
        if (unlink(path) != 0 && errno != ENOENT)
            return mp_syserrorf(MP_EIO, "%s: cannot remove", path);
        MP_CHECK(remove_shards(dir, 0));
        if (notes)
            fprintf(notes, "moepack: note: --fresh: removed the previous result in %s\n", dir);
    }
    return 0;
}

int mp_out_intact(const char *dir, uint64_t fp, int *ok, char *why, int cap)
{
    *ok = 0, why[0] = '\0';
    cJSON *j = NULL;
    int missing = 0;
    if (read_index(dir, &j, &missing) < 0) {
        snprintf(why, (size_t)cap, "%s", mp_error_message());
        mp_error_clear();
        return 0;
    }
    if (missing)
        return 0;
    char want[17], path[4400];
    snprintf(want, sizeof want, "%016llx", (unsigned long long)fp);
    const cJSON *f = cJSON_GetObjectItem(j, "fingerprint"), *sh = cJSON_GetObjectItem(j, "shards");
    if (!cJSON_IsString(f) || strcmp(f->valuestring, want)) {
        snprintf(why, (size_t)cap, "%s/index.json: made with other parameters", dir);
        cJSON_Delete(j);
        return 0;
    }
    int good = cJSON_IsArray(sh);
    const cJSON *s;
    cJSON_ArrayForEach(s, sh)
    {
        const cJSON *nm = cJSON_GetObjectItem(s, "file"), *b = cJSON_GetObjectItem(s, "bytes"),
                    *h = cJSON_GetObjectItem(s, "xxh64");
        struct stat st;
        uint64_t hv = 0;
        char hex[17] = "";
        if (!cJSON_IsString(nm) || !cJSON_IsNumber(b) || !cJSON_IsString(h)) {
            good = 0;
            break;
        }
        snprintf(path, sizeof path, "%s/%s", dir, nm->valuestring);
        if (stat(path, &st) != 0 || (double)st.st_size != b->valuedouble || mp_file_xxh64(path, &hv) < 0) {
            mp_error_clear();
            snprintf(why, (size_t)cap, "%s: missing or of another size", path);
            good = 0;
            break;
        }
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)hv);
        if (strcmp(hex, h->valuestring)) {
            snprintf(why, (size_t)cap, "%s: checksum differs from index.json", path);
            good = 0;
            break;
        }
    }
    cJSON_Delete(j);
    *ok = good;
    return 0;
}

/* ---- validation results ------------------------------------------------------------------------- */

static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        int rc = mp_syserrorf(MP_EIO, "%s: cannot sync", path);
        if (fd >= 0)
            close(fd);
        return rc;
    }
    close(fd);
    return 0;
}

/* /moepack of one shard gets the validation attributes (rewritten in place; the caller rehashes) */
static int shard_add_validation(const char *path, const char *json, const char *const *keys, const double *vals,
                                int n)
{
    mp_h5_capture();
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0)
        return mp_h5_fail(MP_EIO, path, "cannot open the shard for writing");
    hid_t g = H5Gopen2(f, "/moepack", H5P_DEFAULT);
    int rc = g < 0 ? mp_h5_fail(MP_EFORMAT, path, "no /moepack group") : 0;
    char name[64];
    for (int i = -1; i < n && rc == 0; i++) {
        snprintf(name, sizeof name, i < 0 ? "validation" : "validation_%s", i < 0 ? "" : keys[i]);
        if (H5Aexists(g, name) > 0 && H5Adelete(g, name) < 0)
            rc = mp_h5_fail(MP_EIO, path, "cannot replace a /moepack attribute");
        else
            rc = i < 0 ? mp_h5_attr_str(g, name, json) : mp_h5_attr_f64(g, name, vals[i]);
    }
    if (g >= 0)
        H5Gclose(g);
    if (H5Fclose(f) < 0 && rc == 0)
        rc = mp_h5_fail(MP_EIO, path, "cannot close the shard");
    if (rc == 0)
        rc = fsync_path(path);
    return rc;
}

int mp_out_record_validation(const char *dir, uint64_t fp, const char *json, const char *const *keys,
                             const double *vals, int n)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/validation.json", dir);
    MP_CHECK(mp_write_file_atomic(path, json, strlen(json)));
    cJSON *j = NULL, *v = cJSON_Parse(json);
    int missing = 0, rc = read_index(dir, &j, &missing);
    if (rc == 0 && (missing || !v))
        rc = mp_errorf(missing ? MP_ENOENT : MP_EINTERNAL, "%s: %s", dir,
                       missing ? "no index.json to record the validation in" : "validation.json is not JSON");
    const cJSON *sh = j ? cJSON_GetObjectItem(j, "shards") : NULL, *s;
    cJSON_ArrayForEach(s, sh)
    {
        const cJSON *nm = cJSON_GetObjectItem(s, "file");
        if (rc < 0)
            break;
        if (!cJSON_IsString(nm) || strchr(nm->valuestring, '/')) {
            rc = mp_errorf(MP_EFORMAT, "%s/index.json: a shard without a plain file name", dir);
            break;
        }
        snprintf(path, sizeof path, "%s/%s", dir, nm->valuestring);
        uint64_t h = 0;
        struct stat st;
        rc = shard_add_validation(path, json, keys, vals, n);
        if (rc == 0)
            rc = mp_file_xxh64(path, &h);
        if (rc == 0 && stat(path, &st) != 0)
            rc = mp_syserrorf(MP_EIO, "%s: cannot stat", path);
        if (rc == 0) {
            char hex[17];
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
            cJSON_ReplaceItemInObject((cJSON *)s, "bytes", cJSON_CreateNumber((double)st.st_size));
            cJSON_ReplaceItemInObject((cJSON *)s, "xxh64", cJSON_CreateString(hex));
        }
    }
    if (rc == 0) { /* index.json last: a crash before leaves an index whose checksums say "write again" */
        cJSON_DeleteItemFromObject(j, "validation");
        add_hex(v, "fingerprint", fp);
        cJSON_AddItemToObject(j, "validation", v);
        v = NULL;
        char *txt = cJSON_Print(j);
        snprintf(path, sizeof path, "%s/index.json", dir);
        rc = txt ? mp_write_file_atomic(path, txt, strlen(txt)) : mp_errorf(MP_ENOMEM, "out of memory");
        free(txt);
    }
    cJSON_Delete(j), cJSON_Delete(v);
    return rc;
}

int mp_out_written_bytes(const char *dir, double *bytes)
{
    cJSON *j = NULL;
    int missing = 0;
    *bytes = 0;
    MP_CHECK(read_index(dir, &j, &missing));
    const cJSON *md = j ? cJSON_GetObjectItem(j, "metadata") : NULL, *t = cJSON_GetObjectItem(md, "total_size");
    int rc = cJSON_IsNumber(t) ? 0 : mp_errorf(MP_EFORMAT, "%s/index.json: no metadata.total_size", dir);
    if (rc == 0)
        *bytes = t->valuedouble;
    cJSON_Delete(j);
    return rc;
}

int mp_out_validation_current(const char *dir, uint64_t fp, int *ok)
{
    cJSON *j = NULL;
    int missing = 0;
    char want[17], path[4400];
    *ok = 0;
    if (read_index(dir, &j, &missing) < 0) {
        mp_error_clear();
        return 0;
    }
    snprintf(want, sizeof want, "%016llx", (unsigned long long)fp);
    snprintf(path, sizeof path, "%s/validation.json", dir);
    const cJSON *v = j ? cJSON_GetObjectItem(j, "validation") : NULL, *f = v ? cJSON_GetObjectItem(v, "fingerprint") : NULL;
    *ok = cJSON_IsString(f) && !strcmp(f->valuestring, want) && access(path, F_OK) == 0;
    cJSON_Delete(j);
    return 0;
}
