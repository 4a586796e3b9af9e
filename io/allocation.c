/* allocation.c - a layer's allocation as JSON (see allocation.h). */
#include "allocation.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"

const char *const MP_PROJ_NAME[3] = {"gate", "up", "down"};
static const char *const KIND[MP_BK_COUNT] = {"base", "delta", "expert", "shared", "dense"};

const char *mp_block_kind_name(mp_block_kind k) { return (unsigned)k < MP_BK_COUNT ? KIND[k] : "?"; }

int mp_layer_blocks(int layer, int n_experts, int has_shared, int delta, mp_layer_alloc *a)
{
    a->layer = layer;
    a->n = 3 * (n_experts + (delta ? 1 : 0) + (has_shared ? 1 : 0));
    a->c = calloc((size_t)a->n, sizeof *a->c);
    if (!a->c)
        return mp_errorf(MP_ENOMEM, "out of memory");
    int i = 0;
    for (int p = 0; delta && p < 3; p++)
        a->c[i++] = (mp_choice){.kind = MP_BK_BASE, .unit = -1, .proj = p};
    for (int e = 0; e < n_experts; e++)
        for (int p = 0; p < 3; p++)
            a->c[i++] = (mp_choice){.kind = delta ? MP_BK_DELTA : MP_BK_EXPERT, .unit = e, .proj = p};
    for (int p = 0; has_shared && p < 3; p++)
        a->c[i++] = (mp_choice){.kind = MP_BK_SHARED, .unit = n_experts, .proj = p};
    return 0;
}

int mp_layer_units_blocks(const mp_config *c, int layer, int delta, mp_layer_alloc *a)
{
    if (c->is_moe[layer])
        return mp_layer_blocks(layer, c->n_experts, c->n_shared > 0 && c->shared_ffn > 0, delta, a);
    a->layer = layer, a->n = 3;
    if (!(a->c = calloc(3, sizeof *a->c)))
        return mp_errorf(MP_ENOMEM, "out of memory");
    for (int p = 0; p < 3; p++)
        a->c[p] = (mp_choice){.kind = MP_BK_DENSE, .unit = MP_UNIT_DENSE, .proj = p};
    return 0;
}

void mp_layer_alloc_free(mp_layer_alloc *a)
{
    free(a->c);
    a->c = NULL, a->n = 0;
}

void mp_alloc_path(char *buf, int cap, const char *dir, int layer)
{
    snprintf(buf, (size_t)cap, "%s/layer%04d/alloc.json", dir, layer);
}

/* numbers with 17 significant digits: equal values, equal text */
static void add_num(cJSON *o, const char *k, double v)
{
    char t[40];
    snprintf(t, sizeof t, "%.17g", v);
    cJSON_AddRawToObject(o, k, t);
}

int mp_alloc_write(const char *path, const mp_layer_alloc *a)
{
    cJSON *j = cJSON_CreateObject(), *bl = j ? cJSON_AddArrayToObject(j, "blocks") : NULL;
    if (!bl) {
        cJSON_Delete(j);
        return mp_errorf(MP_ENOMEM, "out of memory");
    }
    add_num(j, "layer", a->layer);
    for (int i = 0; i < a->n; i++) {
        const mp_choice *c = &a->c[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(bl, o);
        cJSON_AddStringToObject(o, "kind", mp_block_kind_name(c->kind));
        add_num(o, "unit", c->unit);
        cJSON_AddStringToObject(o, "proj", MP_PROJ_NAME[c->proj]);
        if (c->kind == MP_BK_DELTA)
            add_num(o, "rank", (double)c->rank);
        if (c->fmt)
            cJSON_AddStringToObject(o, "format", c->fmt->name);
        if (c->kind == MP_BK_DELTA && c->fmt_v)
            cJSON_AddStringToObject(o, "format_v", c->fmt_v->name);
        add_num(o, "bytes", (double)c->bytes);
        add_num(o, "loss", c->loss);
        add_num(o, "loss_raw", c->loss_raw);
        add_num(o, "cost_s", c->cost);
    }
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    if (!txt)
        return mp_errorf(MP_ENOMEM, "out of memory");
    int rc = mp_write_file_atomic(path, txt, strlen(txt));
    free(txt);
    return rc;
}

static int num(const cJSON *o, const char *k, double *v)
{
    const cJSON *x = cJSON_GetObjectItem(o, k);
    if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble))
        return -1;
    *v = x->valuedouble;
    return 0;
}

static int fmt_of(const cJSON *o, const char *k, const mp_qformat **f)
{
    const cJSON *x = cJSON_GetObjectItem(o, k);
    *f = NULL;
    if (!x)
        return 0;
    if (!cJSON_IsString(x))
        return -1;
    int rc = mp_qformat_find(x->valuestring, f);
    if (rc < 0)
        mp_error_clear();
    return rc < 0 ? -1 : 0;
}

int mp_alloc_read(const char *path, mp_layer_alloc *a)
{
    memset(a, 0, sizeof *a);
    char *txt = NULL;
    size_t n = 0;
    MP_CHECK(mp_read_file(path, &txt, &n));
    cJSON *j = cJSON_ParseWithLength(txt, n);
    free(txt);
    const cJSON *bl = j ? cJSON_GetObjectItem(j, "blocks") : NULL;
    double layer = 0;
    int rc = 0;
    if (!cJSON_IsArray(bl) || num(j, "layer", &layer) < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: not an allocation (expected {\"layer\": L, \"blocks\": [...]})", path);
    int nb = rc == 0 ? cJSON_GetArraySize(bl) : 0;
    if (rc == 0 && !(a->c = calloc((size_t)nb + 1, sizeof *a->c)))
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    a->layer = (int)layer, a->n = nb;
    for (int i = 0; rc == 0 && i < nb; i++) {
        const cJSON *o = cJSON_GetArrayItem(bl, i), *kd = cJSON_GetObjectItem(o, "kind"),
                    *pj = cJSON_GetObjectItem(o, "proj");
        mp_choice *c = &a->c[i];
        double u = 0, r = 0, b = 0;
        int k = -1, p = -1;
        for (int q = 0; q < MP_BK_COUNT && cJSON_IsString(kd); q++)
            k = !strcmp(kd->valuestring, KIND[q]) ? q : k;
        for (int q = 0; q < 3 && cJSON_IsString(pj); q++)
            p = !strcmp(pj->valuestring, MP_PROJ_NAME[q]) ? q : p;
        int bad = k < 0 || p < 0 || num(o, "unit", &u) < 0 || num(o, "bytes", &b) < 0 || b < 0 ||
                  num(o, "loss", &c->loss) < 0 || num(o, "loss_raw", &c->loss_raw) < 0 ||
                  num(o, "cost_s", &c->cost) < 0 || fmt_of(o, "format", &c->fmt) < 0 ||
                  fmt_of(o, "format_v", &c->fmt_v) < 0;
        if (!bad && k == MP_BK_DELTA)
            bad = num(o, "rank", &r) < 0 || r < 0 || r != floor(r) || (r > 0 && (!c->fmt || !c->fmt_v));
        else if (!bad)
            bad = !c->fmt;
        if (bad) {
            rc = mp_errorf(MP_EFORMAT, "%s: block %d is malformed (kind, unit, proj, rank, format(s), bytes, loss)",
                           path, i);
            break;
        }
        c->kind = (mp_block_kind)k, c->proj = p, c->unit = (int)u, c->rank = (int64_t)r, c->bytes = (int64_t)b;
    }
    cJSON_Delete(j);
    if (rc < 0)
        mp_layer_alloc_free(a);
    return rc;
}
