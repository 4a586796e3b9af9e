/* inspect_out.c - summary, tables and the bits heatmap of a moepack output (see inspect_out.h). */
#define _GNU_SOURCE
#include "inspect_out.h"

#include <cjson/cJSON.h>
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"
#include "outdir.h"
#include "qtensor_h5.h"

/* one column of a layer: the base, a routed expert or the shared expert; a dense layer's only column: its
 * dense MLP */
typedef struct {
    int unit; /* -1 base, 0..E-1, E shared, MP_UNIT_DENSE */
    double bytes, weights, loss;
    int64_t tokens;   /* -1: not applicable (base) */
    char cell[3][64]; /* per projection: "w4g128", "r13 w4g128/w3g128", "r0" */
} ucol;

typedef struct {
    int layer;
    double loss, bytes, weights;
    int n;
    ucol *u;
} lrow;

typedef struct {
    mp_outdir *o;
    const cJSON *md;
    int E, nl, n_moe, has_base, has_shared; /* nl: the layers with units (MoE and dense MLP), n_moe of them MoE */
    lrow *rows;
    double out_bytes;
    int nshards;
    char version[32], fp[32], mfp[32];
} info;

static double num(const cJSON *o, const char *k)
{
    const cJSON *x = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *x = cJSON_GetObjectItem(o, k);
    return cJSON_IsString(x) ? x->valuestring : "";
}

static int col_index(const info *in, int unit) { return unit < 0 ? 0 : in->has_base + unit; } /* dense: 0 */

static void free_info(info *in)
{
    for (int i = 0; in->rows && i < in->nl; i++)
        free(in->rows[i].u);
    free(in->rows);
    mp_outdir_close(in->o);
}

/* tokens_per_expert [n_moe, cols] of the first shard's /moepack group */
static int read_tokens(info *in, int64_t **tok, int *cols)
{
    const cJSON *sh = cJSON_GetArrayItem(cJSON_GetObjectItem(mp_outdir_index(in->o), "shards"), 0);
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", mp_outdir_dir(in->o), str(sh, "file"));
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t g = f >= 0 ? H5Gopen2(f, "/moepack", H5P_DEFAULT) : -1,
          ds = g >= 0 ? H5Dopen2(g, "tokens_per_expert", H5P_DEFAULT) : -1;
    hid_t sp = ds >= 0 ? H5Dget_space(ds) : -1;
    hsize_t dm[2] = {0, 0};
    int rc = 0;
    if (sp < 0 || H5Sget_simple_extent_ndims(sp) != 2 || H5Sget_simple_extent_dims(sp, dm, NULL) < 0 ||
        (int)dm[0] != in->n_moe)
        rc = mp_errorf(MP_EFORMAT, "%s: /moepack/tokens_per_expert is missing or not [%d, E]", path, in->n_moe);
    if (rc == 0 && g >= 0) {
        mp_h5_attr_read_str(g, "version", in->version, sizeof in->version);
        *tok = malloc(sizeof(int64_t) * (size_t)(dm[0] * dm[1] + 1));
        *cols = (int)dm[1];
        if (!*tok || H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, *tok) < 0)
            rc = mp_errorf(MP_EFORMAT, "%s: cannot read /moepack/tokens_per_expert", path);
    }
    if (sp >= 0)
        H5Sclose(sp);
    if (ds >= 0)
        H5Dclose(ds);
    if (g >= 0)
        H5Gclose(g);
    if (f >= 0)
        H5Fclose(f);
    return rc;
}

static int collect(const char *dir, info *in)
{
    memset(in, 0, sizeof *in);
    MP_CHECK(mp_outdir_open(dir, &in->o));
    int rc = mp_outdir_check_shards(in->o, 0);
    const cJSON *j = mp_outdir_index(in->o);
    const mp_config *c = mp_outdir_config(in->o);
    in->md = cJSON_GetObjectItem(j, "metadata");
    const cJSON *src = cJSON_GetObjectItem(in->md, "source"), *layers = cJSON_GetObjectItem(in->md, "layers");
    in->E = c->n_experts;
    in->has_base = cJSON_IsTrue(cJSON_GetObjectItem(src, "delta"));
    in->has_shared = cJSON_IsTrue(cJSON_GetObjectItem(src, "shared_expert"));
    snprintf(in->fp, sizeof in->fp, "%s", str(j, "fingerprint"));
    snprintf(in->mfp, sizeof in->mfp, "%s", str(j, "model_fingerprint"));
    const cJSON *sh = cJSON_GetObjectItem(j, "shards"), *x;
    cJSON_ArrayForEach(x, sh) in->out_bytes += num(x, "bytes"), in->nshards++;
    if (rc == 0 && !cJSON_IsArray(layers))
        rc = mp_errorf(MP_EFORMAT, "%s/index.json: metadata.layers is missing", dir);
    in->nl = rc == 0 ? cJSON_GetArraySize(layers) : 0;
    in->n_moe = mp_config_n_moe_layers(c);
    int ncol = in->has_base + in->E + in->has_shared;
    in->rows = calloc((size_t)in->nl + 1, sizeof *in->rows);
    if (rc == 0 && !in->rows)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    int64_t *tok = NULL;
    int tcols = 0;
    if (rc == 0)
        rc = read_tokens(in, &tok, &tcols);
    int64_t d = c->hidden, f = c->moe_ffn, fs = c->shared_ffn;
    int li = 0, mi = 0; /* row, MoE row */
    cJSON_ArrayForEach(x, layers)
    {
        if (rc < 0)
            break;
        lrow *r = &in->rows[li];
        r->layer = (int)num(x, "layer");
        r->loss = num(x, "predicted_loss");
        int dense = r->layer >= 0 && r->layer < c->n_layers && mp_config_dense_mlp(c, r->layer);
        r->n = dense ? 1 : ncol;
        if (!dense && mi >= in->n_moe)
            rc = mp_errorf(MP_EFORMAT, "%s/index.json: metadata.layers lists more MoE layers than the model has", dir);
        if (rc < 0 || !(r->u = calloc((size_t)r->n, sizeof *r->u))) {
            rc = rc < 0 ? rc : mp_errorf(MP_ENOMEM, "out of memory");
            break;
        }
        for (int k = 0; k < r->n; k++) {
            ucol *u = &r->u[k];
            u->unit = dense ? MP_UNIT_DENSE : k < in->has_base ? -1 : k - in->has_base;
            u->weights = 3.0 * (double)d * (double)(dense ? c->dense_ffn : u->unit == in->E ? fs : f);
            u->tokens = u->unit < 0 ? -1 : u->unit < tcols ? tok[(int64_t)mi * tcols + u->unit] : -1;
        }
        mi += !dense;
        const cJSON *b;
        cJSON_ArrayForEach(b, cJSON_GetObjectItem(x, "blocks"))
        {
            const char *kind = str(b, "kind"), *pj = str(b, "proj");
            int unit = (int)num(b, "unit"), p = !strcmp(pj, "gate") ? 0 : !strcmp(pj, "up") ? 1 : 2;
            int k = !strcmp(kind, "base") ? 0 : col_index(in, unit);
            if (k < 0 || k >= r->n)
                continue;
            ucol *u = &r->u[k];
            u->bytes += num(b, "bytes"), u->loss += num(b, "loss");
            if (!strcmp(kind, "delta")) {
                double rk = num(b, "rank");
                if (rk > 0)
                    snprintf(u->cell[p], sizeof u->cell[p], "r%.0f %s/%s", rk, str(b, "format"), str(b, "format_v"));
                else
                    snprintf(u->cell[p], sizeof u->cell[p], "r0 (base)");
            } else
                snprintf(u->cell[p], sizeof u->cell[p], "%s", str(b, "format"));
        }
        for (int k = 0; k < r->n; k++)
            r->bytes += r->u[k].bytes, r->weights += r->u[k].unit == -1 ? 0 : r->u[k].weights;
        li++;
    }
    free(tok);
    if (rc < 0)
        free_info(in);
    return rc;
}

static void unit_name(const info *in, int unit, char *buf, size_t cap)
{
    if (unit == MP_UNIT_DENSE)
        snprintf(buf, cap, "dense MLP");
    else if (unit < 0)
        snprintf(buf, cap, "base");
    else if (unit == in->E)
        snprintf(buf, cap, "shared");
    else
        snprintf(buf, cap, "expert %d", unit);
}

static double ubits(const ucol *u) { return u->weights > 0 ? 8.0 * u->bytes / u->weights : 0; }

/* the validation's entry for MoE layer l (NULL when there is none) */
static const cJSON *validated_layer(const cJSON *v, int l)
{
    const cJSON *x;
    cJSON_ArrayForEach(x, cJSON_GetObjectItem(v, "layers"))
    {
        if ((int)num(x, "layer") == l)
            return x;
    }
    return NULL;
}

static double measured_total(const cJSON *v)
{
    double t = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, cJSON_GetObjectItem(v, "layers"))
    t += num(x, "measured_loss");
    return t;
}

static int print_text(const info *in, FILE *out)
{
    const mp_config *c = mp_outdir_config(in->o);
    const cJSON *src = cJSON_GetObjectItem(in->md, "source"), *al = cJSON_GetObjectItem(in->md, "allocation");
    double used = num(in->md, "bytes_used"), budget = num(in->md, "budget_bytes");
    fprintf(out, "moepack output  %s (%d shard%s, %.0f bytes on disk; moepack %s, format %d)\n", mp_outdir_dir(in->o),
            in->nshards, in->nshards == 1 ? "" : "s", in->out_bytes, in->version,
            (int)num(mp_outdir_index(in->o), "format_version"));
    fprintf(out, "model           %s: %d layers, %d MoE, %d experts%s, d %d, f %d; %s layout; decomposition %s\n",
            mp_arch_name(c->arch), c->n_layers, in->n_moe, in->E, in->has_shared ? " + shared" : "", c->hidden,
            c->moe_ffn, str(src, "expert_layout"), in->has_base ? "on (base + U V)" : "off");
    if (in->nl > in->n_moe)
        fprintf(out, "dense MLPs      %d non-MoE layer(s), f %d: quantized like a shared expert\n", in->nl - in->n_moe,
                c->dense_ffn);
    fprintf(out, "fingerprint     %s (model %s)\n", in->fp, in->mfp);
    fprintf(out, "budget          %.0f bytes = %.4f bits/weight over %.0f quantized weights\n", budget,
            num(in->md, "budget_bits_per_weight"), num(in->md, "moe_weights"));
    fprintf(out, "used            %.0f bytes = %.4f bits/weight (%.2f%% of the budget%s)\n", used,
            num(in->md, "bits_per_weight"), 100 * used / budget, used > budget ? ": OVER" : "");
    fprintf(out, "predicted loss  %.6g (sum of the normalised block losses)\n", num(in->md, "predicted_loss"));
    const cJSON *v = cJSON_GetObjectItem(mp_outdir_index(in->o), "validation");
    if (v)
        fprintf(out,
                "validation      perplexity %.6g -> %.6g, KL %.6g nats/token, top-1 agreement %.2f%% on %s (%s);\n"
                "                measured loss %.6g over MoE layers, Spearman(predicted, measured) %.4f over blocks\n",
                num(v, "ppl_original"), num(v, "ppl_compressed"), num(v, "kl"), 100 * num(v, "top1"),
                str(cJSON_GetObjectItem(v, "tokens"), "source"), str(v, "device"), measured_total(v),
                num(v, "spearman_blocks"));
    else
        fprintf(out, "validation      none yet (the validate stage of `moepack run` writes it)\n");
    const cJSON *f;
    cJSON_ArrayForEach(f, cJSON_GetObjectItem(al, "formats"))
        fprintf(out, "  %-12s  %6.0f tensors  %12.0f weights  %12.0f bytes\n", f->string, num(f, "tensors"),
                num(f, "weights"), num(f, "bytes"));
    if (!isnan(num(al, "deltas")))
        fprintf(out, "ranks           %.0f deltas, rank %.0f..%.0f (mean %.2f)\n", num(al, "deltas"),
                num(al, "rank_min"), num(al, "rank_max"), num(al, "rank_mean"));
    for (int i = 0; i < in->nl; i++) {
        const lrow *r = &in->rows[i];
        fprintf(out, "\nlayer %d: predicted loss %.6g, %.0f bytes (%.4f bits/weight)", r->layer, r->loss, r->bytes,
                r->weights > 0 ? 8 * r->bytes / r->weights : 0);
        const cJSON *vl = validated_layer(v, r->layer);
        if (vl)
            fprintf(out, "; measured loss %.6g, relative output error %.6g", num(vl, "measured_loss"),
                    num(vl, "rel_error"));
        fprintf(out, "\n");
        fprintf(out, "  %-10s %7s %6s  %-22s %-22s %-22s\n", "unit", "tokens", "bits", "gate", "up", "down");
        for (int k = 0; k < r->n; k++) {
            const ucol *u = &r->u[k];
            char nm[32], tk[24];
            unit_name(in, u->unit, nm, sizeof nm);
            if (u->tokens >= 0)
                snprintf(tk, sizeof tk, "%lld", (long long)u->tokens);
            else
                snprintf(tk, sizeof tk, "-");
            fprintf(out, "  %-10s %7s %6.3f  %-22s %-22s %-22s\n", nm, tk, ubits(u), u->cell[0], u->cell[1],
                    u->cell[2]);
        }
    }
    return 0;
}

static int print_json(const info *in, FILE *out)
{
    const cJSON *j = mp_outdir_index(in->o);
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return mp_errorf(MP_ENOMEM, "out of memory");
    cJSON_AddStringToObject(o, "dir", mp_outdir_dir(in->o));
    cJSON_AddStringToObject(o, "kind", "moepack output");
    cJSON_AddStringToObject(o, "moepack_version", str(j, "moepack_version"));
    cJSON_AddNumberToObject(o, "format_version", num(j, "format_version"));
    cJSON_AddStringToObject(o, "fingerprint", in->fp);
    cJSON_AddStringToObject(o, "model_fingerprint", in->mfp);
    cJSON_AddStringToObject(o, "architecture", mp_arch_name(mp_outdir_config(in->o)->arch));
    cJSON_AddNumberToObject(o, "shards", in->nshards);
    cJSON_AddNumberToObject(o, "output_bytes", in->out_bytes);
    static const char *const K[] = {"budget_bytes",    "budget_bits_per_weight", "bytes_used", "moe_weights",
                                    "bits_per_weight", "predicted_loss",         NULL};
    for (int i = 0; K[i]; i++)
        cJSON_AddNumberToObject(o, K[i], num(in->md, K[i]));
    cJSON_AddNumberToObject(o, "budget_fraction_used", num(in->md, "bytes_used") / num(in->md, "budget_bytes"));
    cJSON *al = cJSON_Duplicate(cJSON_GetObjectItem(in->md, "allocation"), 1);
    cJSON_AddItemToObject(o, "allocation", al ? al : cJSON_CreateNull());
    cJSON *va = cJSON_Duplicate(cJSON_GetObjectItem(j, "validation"), 1);
    cJSON_AddItemToObject(o, "validation", va ? va : cJSON_CreateNull());
    cJSON *ls = cJSON_AddArrayToObject(o, "layers");
    for (int i = 0; i < in->nl; i++) {
        const lrow *r = &in->rows[i];
        cJSON *l = cJSON_CreateObject();
        cJSON_AddNumberToObject(l, "layer", r->layer);
        cJSON_AddNumberToObject(l, "predicted_loss", r->loss);
        cJSON_AddNumberToObject(l, "bytes", r->bytes);
        cJSON_AddNumberToObject(l, "bits_per_weight", r->weights > 0 ? 8 * r->bytes / r->weights : 0);
        cJSON *us = cJSON_AddArrayToObject(l, "units");
        for (int k = 0; k < r->n; k++) {
            const ucol *u = &r->u[k];
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "unit",
                                    u->unit == MP_UNIT_DENSE ? "dense"
                                    : u->unit < 0            ? "base"
                                    : u->unit == in->E       ? "shared"
                                                             : "expert");
            if (u->unit >= 0 && u->unit < in->E)
                cJSON_AddNumberToObject(x, "expert", u->unit);
            if (u->tokens >= 0)
                cJSON_AddNumberToObject(x, "tokens", (double)u->tokens);
            cJSON_AddNumberToObject(x, "bytes", u->bytes);
            cJSON_AddNumberToObject(x, "bits_per_weight", ubits(u));
            cJSON_AddNumberToObject(x, "predicted_loss", u->loss);
            cJSON *pr = cJSON_AddObjectToObject(x, "projections");
            for (int p = 0; p < 3; p++)
                cJSON_AddStringToObject(pr, p == 0 ? "gate" : p == 1 ? "up" : "down", u->cell[p]);
            cJSON_AddItemToArray(us, x);
        }
        cJSON_AddItemToArray(ls, l);
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    if (!s)
        return mp_errorf(MP_ENOMEM, "out of memory");
    fprintf(out, "%s\n", s);
    free(s);
    return 0;
}

/* viridis, sampled at 9 points */
static void colour(double t, char *buf, size_t cap)
{
    static const double V[9][3] = {{68, 1, 84},    {71, 44, 122}, {59, 81, 139},  {44, 113, 142}, {33, 144, 141},
                                   {39, 173, 129}, {92, 200, 99}, {170, 220, 50}, {253, 231, 37}};
    t = isnan(t) ? 0 : t < 0 ? 0 : t > 1 ? 1 : t;
    double x = t * 8;
    int i = (int)x;
    if (i > 7)
        i = 7;
    double w = x - i;
    snprintf(buf, cap, "#%02x%02x%02x", (int)lround(V[i][0] + w * (V[i + 1][0] - V[i][0])),
             (int)lround(V[i][1] + w * (V[i + 1][1] - V[i][1])), (int)lround(V[i][2] + w * (V[i + 1][2] - V[i][2])));
}

/* the widest row's columns (a MoE layer's; a dense layer has one), its index in *full */
static int max_cols(const info *in, int *full)
{
    int cols = 0;
    *full = 0;
    for (int i = 0; i < in->nl; i++)
        if (in->rows[i].n > cols)
            cols = in->rows[i].n, *full = i;
    return cols;
}

/* the heatmap of bits per weight; *W, *H its size */
static void heatmap_size(const info *in, int *cw, int *ch, int *W, int *H)
{
    int full, cols = max_cols(in, &full), rows = in->nl;
    *cw = cols ? 900 / cols : 20, *ch = rows ? 560 / rows : 20;
    *cw = *cw < 6 ? 6 : *cw > 36 ? 36 : *cw;
    *ch = *ch < 6 ? 6 : *ch > 36 ? 36 : *ch;
    *W = 90 + cols * *cw + 170, *H = 60 + rows * *ch + 70;
    *W = *W < 680 ? 680 : *W; /* room for the subtitle */
}

static void heatmap(const info *in, FILE *s)
{
    int full = 0, cols = max_cols(in, &full), rows = in->nl; /* full: a MoE row (the column labels) */
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < rows; i++)
        for (int k = 0; k < in->rows[i].n; k++) {
            double b = ubits(&in->rows[i].u[k]);
            lo = b < lo ? b : lo, hi = b > hi ? b : hi;
        }
    if (!(hi > lo))
        hi = lo + 1;
    int cw, ch, W, H, left = 90, top = 60;
    heatmap_size(in, &cw, &ch, &W, &H);
    fprintf(s,
            "<text x=\"%d\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Bits per weight by MoE layer and "
            "expert</text>\n",
            left);
    fprintf(s, "<text x=\"%d\" y=\"40\" fill=\"#444\">%s: %.4f bits/weight overall (budget %.4f)%s</text>\n", left,
            mp_arch_name(mp_outdir_config(in->o)->arch), num(in->md, "bits_per_weight"),
            num(in->md, "budget_bits_per_weight"),
            in->has_base ? "; experts: their U and V; base: its own column" : "");
    if (in->nl > in->n_moe)
        fprintf(s, "<text x=\"%d\" y=\"52\" fill=\"#444\">dense layers: one cell, their MLP</text>\n", left);
    int step = cols > 40 ? (cols + 31) / 32 : 1, rstep = rows > 40 ? (rows + 31) / 32 : 1;
    for (int i = 0; i < rows; i++) {
        const lrow *r = &in->rows[i];
        int y = top + i * ch;
        if (i % rstep == 0)
            fprintf(s, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" dominant-baseline=\"middle\">%d</text>\n", left - 6,
                    y + ch / 2, r->layer);
        for (int k = 0; k < r->n; k++) {
            const ucol *u = &r->u[k];
            char fill[8], nm[32];
            colour((ubits(u) - lo) / (hi - lo), fill, sizeof fill);
            unit_name(in, u->unit, nm, sizeof nm);
            fprintf(s,
                    "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"white\" "
                    "stroke-width=\"0.5\"><title>layer %d %s: %.3f bits/weight; gate %s; up %s; down %s",
                    left + k * cw, y, cw, ch, fill, r->layer, nm, ubits(u), u->cell[0], u->cell[1], u->cell[2]);
            if (u->tokens >= 0)
                fprintf(s, "; %lld tokens", (long long)u->tokens);
            fprintf(s, "</title></rect>\n");
        }
    }
    for (int k = 0; k < cols; k += step) { /* column labels */
        const ucol *u = &in->rows[full].u[k];
        char nm[16];
        if (u->unit < 0)
            snprintf(nm, sizeof nm, "B");
        else if (u->unit == in->E)
            snprintf(nm, sizeof nm, "S");
        else
            snprintf(nm, sizeof nm, "%d", u->unit);
        fprintf(s, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", left + k * cw + cw / 2,
                top + rows * ch + 14, nm);
    }
    fprintf(s, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">expert%s</text>\n", left + cols * cw / 2,
            top + rows * ch + 34, in->has_base || in->has_shared ? " (B = D2 base, S = shared expert)" : "");
    fprintf(s, "<text transform=\"translate(%d,%d) rotate(-90)\" text-anchor=\"middle\">MoE layer</text>\n", 24,
            top + rows * ch / 2);
    /* legend: a vertical gradient with ticks */
    int lx = left + cols * cw + 40, lh = rows * ch < 120 ? 120 : rows * ch;
    fprintf(s, "<defs><linearGradient id=\"bits\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">\n");
    for (int q = 0; q <= 8; q++) {
        char fill[8];
        colour(q / 8.0, fill, sizeof fill);
        fprintf(s, "<stop offset=\"%.3f\" stop-color=\"%s\"/>\n", q / 8.0, fill);
    }
    fprintf(s, "</linearGradient></defs>\n");
    fprintf(s,
            "<rect x=\"%d\" y=\"%d\" width=\"18\" height=\"%d\" fill=\"url(#bits)\" stroke=\"#333\" "
            "stroke-width=\"0.5\"/>\n",
            lx, top, lh);
    for (int q = 0; q <= 4; q++) {
        double v = lo + (hi - lo) * q / 4.0;
        int y = top + lh - lh * q / 4;
        fprintf(s, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>\n", lx + 18, y, lx + 23, y);
        fprintf(s, "<text x=\"%d\" y=\"%d\" dominant-baseline=\"middle\">%.2f</text>\n", lx + 26, y, v);
    }
    fprintf(s, "<text transform=\"translate(%d,%d) rotate(-90)\" text-anchor=\"middle\">bits per weight</text>\n",
            lx + 75, top + lh / 2);
}

/* predicted loss against measured error per block (validation.json's blocks), log-log, with y = x */
#define SC_W 680
#define SC_H 440
static void scatter(const info *in, const cJSON *v, FILE *s, int y0)
{
    static const char *const KIND[] = {"base", "delta", "expert", "shared"}, *const COL[] = {"#d62728", "#1f77b4",
                                                                                          "#2ca02c", "#ff7f0e"};
    double lo = INFINITY, hi = -INFINITY;
    const cJSON *l, *b;
    cJSON_ArrayForEach(l, cJSON_GetObjectItem(v, "layers"))
    cJSON_ArrayForEach(b, cJSON_GetObjectItem(l, "blocks"))
    {
        double p = num(b, "predicted"), m = num(b, "measured");
        if (p > 0 && m > 0) {
            double a = log10(p), c = log10(m);
            lo = fmin(lo, fmin(a, c)), hi = fmax(hi, fmax(a, c));
        }
    }
    if (!(hi >= lo))
        lo = -6, hi = 0;
    lo = floor(lo), hi = ceil(hi);
    if (hi <= lo)
        hi = lo + 1;
    int left = 90, top = y0 + 60, side = SC_H - 120;
    fprintf(s, "<text x=\"%d\" y=\"%d\" font-size=\"15\" font-weight=\"bold\">Predicted loss vs measured error "
               "per block</text>\n", left, y0 + 22);
    fprintf(s, "<text x=\"%d\" y=\"%d\" fill=\"#444\">normalised by the layer's MoE output energy; Spearman %.4f "
               "over %.0f blocks; %s</text>\n", left, y0 + 40, num(v, "spearman_blocks"), num(v, "blocks"),
            str(cJSON_GetObjectItem(v, "tokens"), "source"));
    fprintf(s, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333\"/>\n", left,
            top, side, side);
    fprintf(s, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n",
            left, top + side, left + side, top);
    for (double t = lo; t <= hi + 1e-9; t += 1) { /* decades */
        int px = left + (int)lround((t - lo) / (hi - lo) * side), py = top + side - (int)lround((t - lo) / (hi - lo) * side);
        fprintf(s, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">1e%.0f</text>\n", px, top + side + 14, t);
        fprintf(s, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" dominant-baseline=\"middle\">1e%.0f</text>\n",
                left - 6, py, t);
    }
    fprintf(s, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">predicted loss (allocation)</text>\n",
            left + side / 2, top + side + 34);
    fprintf(s, "<text transform=\"translate(%d,%d) rotate(-90)\" text-anchor=\"middle\">measured error "
               "(validation)</text>\n", 30, top + side / 2);
    cJSON_ArrayForEach(l, cJSON_GetObjectItem(v, "layers"))
    cJSON_ArrayForEach(b, cJSON_GetObjectItem(l, "blocks"))
    {
        double p = num(b, "predicted"), m = num(b, "measured");
        if (!(p > 0 && m > 0))
            continue;
        const char *kind = str(b, "kind"), *col = "#555";
        for (int k = 0; k < 4; k++)
            if (!strcmp(kind, KIND[k]))
                col = COL[k];
        double px = left + (log10(p) - lo) / (hi - lo) * side, py = top + side - (log10(m) - lo) / (hi - lo) * side;
        fprintf(s, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\" fill-opacity=\"0.7\"><title>layer %d %s %d "
                   "%s: predicted %.4g, measured %.4g</title></circle>\n",
                px, py, col, (int)num(l, "layer"), kind, (int)num(b, "unit"), str(b, "proj"), p, m);
    }
    for (int k = 0; k < 4; k++) { /* legend */
        int y = top + 10 + 18 * k;
        fprintf(s, "<circle cx=\"%d\" cy=\"%d\" r=\"4\" fill=\"%s\"/><text x=\"%d\" y=\"%d\" "
                   "dominant-baseline=\"middle\">%s</text>\n", left + side + 30, y, COL[k], left + side + 40, y, KIND[k]);
    }
    (void)in;
}

static int write_svg(const info *in, const char *path)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *s = open_memstream(&buf, &len);
    if (!s)
        return mp_syserrorf(MP_ENOMEM, "cannot build the SVG");
    const cJSON *v = cJSON_GetObjectItem(mp_outdir_index(in->o), "validation");
    int cw, ch, W, H;
    heatmap_size(in, &cw, &ch, &W, &H);
    int total = H + (v ? SC_H : 0);
    W = v && W < SC_W ? SC_W : W;
    fprintf(s, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"sans-serif\" font-size=\"11\">\n",
            W, total, W, total);
    fprintf(s, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, total);
    heatmap(in, s);
    if (v)
        scatter(in, v, s, H);
    fprintf(s, "</svg>\n");
    if (fclose(s) != 0) {
        free(buf);
        return mp_errorf(MP_ENOMEM, "cannot build the SVG");
    }
    int rc = mp_write_file_atomic(path, buf, len);
    free(buf);
    return rc;
}

int mp_inspect_output(const char *dir, int json, const char *plot, FILE *out)
{
    info in;
    MP_CHECK(collect(dir, &in));
    int rc = json ? print_json(&in, out) : print_text(&in, out);
    if (rc == 0 && plot) {
        rc = write_svg(&in, plot);
        int full, cols = max_cols(&in, &full);
        if (rc == 0 && !json)
            fprintf(out, "\nplot: %s (bits per weight, %d layers x up to %d columns%s)\n", plot, in.nl, cols,
                    cJSON_GetObjectItem(mp_outdir_index(in.o), "validation")
                        ? "; predicted loss vs measured error per block"
                        : "");
    }
    free_info(&in);
    return rc;
}
