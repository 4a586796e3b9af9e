/* inspect.c - checkpoint summary for `moepack inspect` (see inspect.h). */
#include "inspect.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "registry.h"

int mp_inspect_collect(const char *dir, mp_inspect_info *info)
{
    memset(info, 0, sizeof *info);
    MP_CHECK(mp_model_open_unchecked(dir, &info->model));
    const mp_model *m = info->model;
    const mp_config *c = &m->cfg;
    int rc = mp_model_check(m, &info->problems, &info->nproblems);
    if (rc < 0) {
        mp_inspect_free(info);
        MP_CHECK(rc);
    }
    for (int i = 0; i < info->nproblems; i++)
        info->nerrors += mp_problem_is_error(info->problems[i].kind);
    for (int i = 0; i < m->ck->ntensors; i++) {
        const mp_tensor *t = &m->ck->tensors[i];
        info->n_tensors++;
        info->bytes_total += t->nbytes;
        info->dtype_tensors[t->dtype]++;
        info->dtype_bytes[t->dtype] += t->nbytes;
        if (!mp_tensor_is_aux(t->name))
            info->params_total += t->numel;
    }
    for (int i = 0; i < m->nspecs; i++) {
        const mp_tensor *t = mp_ckpt_find(m->ck, m->specs[i].name);
        if (!t)
            continue;
        if (m->specs[i].role == MP_ROLE_EXPERT)
            info->params_expert += t->numel;
        else if (m->specs[i].role == MP_ROLE_SHARED)
            info->params_shared += t->numel;
    }
    info->params_active =
        info->params_total - info->params_expert + (int64_t)mp_config_n_moe_layers(c) * c->top_k * mp_expert_params(c);
    return 0;
}

void mp_inspect_free(mp_inspect_info *info)
{
    mp_model_close(info->model);
    free(info->problems);
    memset(info, 0, sizeof *info);
}

int mp_inspect_status(const mp_inspect_info *info)
{
    for (int i = 0; i < info->nproblems; i++) {
        const mp_problem *p = &info->problems[i];
        if (p->kind == MP_PROBLEM_MISSING)
            return mp_errorf(MP_ENOENT, "%s: %s (%d problems in all)", info->model->dir, p->text, info->nerrors);
    }
    for (int i = 0; i < info->nproblems; i++) {
        const mp_problem *p = &info->problems[i];
        if (mp_problem_is_error(p->kind))
            return mp_errorf(MP_EFORMAT, "%s: %s (%d problems in all)", info->model->dir, p->text, info->nerrors);
    }
    return 0;
}

static const char *problem_kind(mp_problem_kind k)
{
    switch (k) {
    case MP_PROBLEM_MISSING: return "missing";
    case MP_PROBLEM_SHAPE: return "shape";
    case MP_PROBLEM_DTYPE: return "dtype";
    case MP_PROBLEM_NOTE: return "note";
    default: return "unexpected";
    }
}

static void moe_layers_str(const mp_config *c, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int l = 0; l < c->n_layers && n + 16 < cap; l++)
        if (c->is_moe[l])
            n += (size_t)snprintf(buf + n, cap - n, "%s%d", n ? "," : "", l);
}

static int print_json(const mp_inspect_info *info, FILE *out)
{
    const mp_model *m = info->model;
    const mp_config *c = &m->cfg;
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return mp_errorf(MP_ENOMEM, "out of memory");
    cJSON_AddStringToObject(j, "dir", m->dir);
    cJSON_AddStringToObject(j, "architecture", mp_arch_name(c->arch));
    cJSON_AddStringToObject(j, "model_type", c->model_type);
    cJSON_AddStringToObject(j, "expert_layout", mp_layout_name(m->layout));
    cJSON_AddNumberToObject(j, "layers", c->n_layers);
    cJSON *ml = cJSON_AddArrayToObject(j, "moe_layers");
    for (int l = 0; l < c->n_layers; l++)
        if (c->is_moe[l])
            cJSON_AddItemToArray(ml, cJSON_CreateNumber(l));
    cJSON_AddNumberToObject(j, "hidden_size", c->hidden);
    cJSON_AddNumberToObject(j, "experts", c->n_experts);
    cJSON_AddNumberToObject(j, "experts_per_token", c->top_k);
    cJSON_AddNumberToObject(j, "expert_intermediate_size", c->moe_ffn);
    cJSON_AddNumberToObject(j, "shared_experts", c->n_shared);
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab);
    cJSON *p = cJSON_AddObjectToObject(j, "parameters");
    cJSON_AddNumberToObject(p, "total", (double)info->params_total);
    cJSON_AddNumberToObject(p, "routed_experts", (double)info->params_expert);
    cJSON_AddNumberToObject(p, "shared_experts", (double)info->params_shared);
    cJSON_AddNumberToObject(p, "active_per_token", (double)info->params_active);
    cJSON_AddNumberToObject(p, "per_expert", (double)mp_expert_params(c));
    cJSON_AddNumberToObject(j, "tensors", (double)info->n_tensors);
    cJSON_AddNumberToObject(j, "files", m->ck->nfiles);
    cJSON_AddNumberToObject(j, "bytes", (double)info->bytes_total);
    cJSON *dt = cJSON_AddObjectToObject(j, "dtypes");
    for (int d = 0; d < MP_DT_COUNT; d++)
        if (info->dtype_tensors[d]) {
            cJSON *o = cJSON_AddObjectToObject(dt, mp_dtype_name((mp_dtype)d));
            cJSON_AddNumberToObject(o, "tensors", (double)info->dtype_tensors[d]);
            cJSON_AddNumberToObject(o, "bytes", (double)info->dtype_bytes[d]);
        }
    cJSON_AddBoolToObject(j, "ok", info->nerrors == 0);
    cJSON *pr = cJSON_AddArrayToObject(j, "problems");
    for (int i = 0; i < info->nproblems; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "kind", problem_kind(info->problems[i].kind));
        cJSON_AddStringToObject(o, "text", info->problems[i].text);
        cJSON_AddItemToArray(pr, o);
    }
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    if (!s)
        return mp_errorf(MP_ENOMEM, "out of memory");
    fprintf(out, "%s\n", s);
    free(s);
    return 0;
}

int mp_inspect_print(const mp_inspect_info *info, int json, FILE *out)
{
    if (json)
        return print_json(info, out);
    const mp_model *m = info->model;
    const mp_config *c = &m->cfg;
    char moe[1024];
    moe_layers_str(c, moe, sizeof moe);
    fprintf(out, "checkpoint      %s (%d file%s, %s experts)\n", m->dir, m->ck->nfiles, m->ck->nfiles == 1 ? "" : "s",
            mp_layout_name(m->layout));
    fprintf(out, "architecture    %s (model_type %s)\n", mp_arch_name(c->arch), c->model_type);
    fprintf(out, "layers          %d, MoE layers %d: %s\n", c->n_layers, mp_config_n_moe_layers(c), moe);
    fprintf(out, "dims            hidden %d, heads %d (kv %d), vocab %d\n", c->hidden, c->n_heads, c->n_kv_heads,
            c->vocab);
    fprintf(out, "experts         %d routed per layer, top-%d, expert ffn %d, %d shared (ffn %d)\n", c->n_experts,
            c->top_k, c->moe_ffn, c->n_shared, c->shared_ffn);
    fprintf(out, "parameters      total %lld, routed experts %lld (%.1f%%), shared %lld, active/token %lld\n",
            (long long)info->params_total, (long long)info->params_expert,
            info->params_total ? 100.0 * (double)info->params_expert / (double)info->params_total : 0.0,
            (long long)info->params_shared, (long long)info->params_active);
    fprintf(out, "tensors         %lld, %llu bytes\n", (long long)info->n_tensors,
            (unsigned long long)info->bytes_total);
    for (int d = 0; d < MP_DT_COUNT; d++)
        if (info->dtype_tensors[d])
            fprintf(out, "  %-13s %lld tensors, %llu bytes\n", mp_dtype_name((mp_dtype)d),
                    (long long)info->dtype_tensors[d], (unsigned long long)info->dtype_bytes[d]);
    if (info->nerrors == 0)
        fprintf(out, "check           OK: all %d expected tensors present with the right shapes\n", m->nspecs);
    else
        fprintf(out, "check           FAILED: %d problem%s\n", info->nerrors, info->nerrors == 1 ? "" : "s");
    for (int i = 0; i < info->nproblems; i++)
        fprintf(out, "  %-10s %s\n", problem_kind(info->problems[i].kind), info->problems[i].text);
    return 0;
}

int mp_inspect_config(const char *path, int json, FILE *out)
{
    mp_config c;
    MP_CHECK(mp_config_load(path, &c));
    mp_tensor_spec *s = NULL;
    int n = 0, rc = mp_registry_list(&c, MP_LAYOUT_PER_EXPERT, &s, &n);
    int64_t total = 0, expert = 0, shared = 0;
    for (int i = 0; i < n; i++) {
        int64_t ne = 1;
        for (int k = 0; k < s[i].ndim; k++)
            ne *= s[i].shape[k]; /* bounded by mp_registry_list */
        total += ne;
        expert += s[i].role == MP_ROLE_EXPERT ? ne : 0;
        shared += s[i].role == MP_ROLE_SHARED ? ne : 0;
    }
    free(s);
    int64_t active = total - expert + (int64_t)mp_config_n_moe_layers(&c) * c.top_k * mp_expert_params(&c);
    if (rc == 0 && json) {
        cJSON *j = cJSON_CreateObject(), *p = NULL;
        char *txt = NULL;
        if (j) {
            cJSON_AddStringToObject(j, "config", path);
            cJSON_AddStringToObject(j, "architecture", mp_arch_name(c.arch));
            cJSON_AddNumberToObject(j, "layers", c.n_layers);
            cJSON_AddNumberToObject(j, "moe_layers", mp_config_n_moe_layers(&c));
            p = cJSON_AddObjectToObject(j, "parameters");
        }
        if (p) {
            cJSON_AddNumberToObject(p, "total", (double)total);
            cJSON_AddNumberToObject(p, "routed_experts", (double)expert);
            cJSON_AddNumberToObject(p, "shared_experts", (double)shared);
            cJSON_AddNumberToObject(p, "active_per_token", (double)active);
            cJSON_AddNumberToObject(p, "per_expert", (double)mp_expert_params(&c));
            cJSON_AddNumberToObject(p, "embedding", (double)c.vocab * c.hidden);
            txt = cJSON_Print(j);
        }
        cJSON_Delete(j);
        if (!txt)
            rc = mp_errorf(MP_ENOMEM, "out of memory");
        else
            fprintf(out, "%s\n", txt);
        free(txt);
    } else if (rc == 0) {
        fprintf(out, "config          %s (no weights: counts from the expected tensor shapes)\n", path);
        fprintf(out, "architecture    %s, %d layers, %d MoE layers, %d experts, top-%d\n", mp_arch_name(c.arch),
                c.n_layers, mp_config_n_moe_layers(&c), c.n_experts, c.top_k);
        fprintf(out,
                "parameters      total %lld (%.2fB), routed experts %lld, shared %lld, active/token %lld (%.2fB; "
                "%.2fB without the input embedding)\n",
                (long long)total, (double)total / 1e9, (long long)expert, (long long)shared, (long long)active,
                (double)active / 1e9, (double)(active - (int64_t)c.vocab * c.hidden) / 1e9);
    }
    mp_config_free(&c);
    return rc;
}
