/* config.c - config.json parsing for the supported MoE architectures (see config.h). */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"

typedef struct {
    const cJSON *root;
    const char *what;
    const char *arch;
} jctx;

static const cJSON *item(const jctx *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->root, key);
    return cJSON_IsNull(v) ? NULL : v;
}

/* Integer key: required when def is NULL. */
static int get_int(const jctx *j, const char *key, const int *def, int *out)
{
    const cJSON *v = item(j, key);
    if (!v) {
        if (def) {
            *out = *def;
            return 0;
        }
        return mp_errorf(MP_ECONFIG, "%s: missing key '%s' (required for %s)", j->what, key, j->arch);
    }
    if (!cJSON_IsNumber(v) || floor(v->valuedouble) != v->valuedouble || fabs(v->valuedouble) > 2147483647.0)
        return mp_errorf(MP_ECONFIG, "%s: key '%s' must be an integer", j->what, key);
    *out = (int)v->valuedouble;
    return 0;
}

/* A size: positive and at most MP_CONFIG_SIZE_MAX (so that products of a few sizes fit int64). */
static int get_pos(const jctx *j, const char *key, const int *def, int *out)
{
    MP_CHECK(get_int(j, key, def, out));
    if (*out <= 0)
        return mp_errorf(MP_ECONFIG, "%s: key '%s' must be positive, got %d", j->what, key, *out);
    if (*out > MP_CONFIG_SIZE_MAX)
        return mp_errorf(MP_ECONFIG, "%s: key '%s' = %d is larger than the supported %d", j->what, key, *out,
                         MP_CONFIG_SIZE_MAX);
    return 0;
}

/* A count that may be 0 (bounded like get_pos). */
static int get_nonneg(const jctx *j, const char *key, const int *def, int *out)
{
    MP_CHECK(get_int(j, key, def, out));
    if (*out < 0 || *out > MP_CONFIG_SIZE_MAX)
        return mp_errorf(MP_ECONFIG, "%s: key '%s' must be in [0, %d], got %d", j->what, key, MP_CONFIG_SIZE_MAX, *out);
    return 0;
}

static int get_num(const jctx *j, const char *key, double def, int required, double *out)
{
    const cJSON *v = item(j, key);
    if (!v) {
        if (required)
            return mp_errorf(MP_ECONFIG, "%s: missing key '%s' (required for %s)", j->what, key, j->arch);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return mp_errorf(MP_ECONFIG, "%s: key '%s' must be a finite number", j->what, key);
    *out = v->valuedouble;
    return 0;
}

/* A number with lo < x (or lo <= x when lo_incl) and x <= hi. */
static int check_range(const jctx *j, const char *key, double x, double lo, int lo_incl, double hi)
{
    if ((lo_incl ? x >= lo : x > lo) && x <= hi)
        return 0;
    char hib[64] = "";
    if (hi < HUGE_VAL)
        snprintf(hib, sizeof hib, " and <= %g", hi);
    return mp_errorf(MP_ECONFIG, "%s: key '%s' = %g is out of range (it must be %s %g%s)", j->what, key, x,
                     lo_incl ? ">=" : ">", lo, hib);
}

static int get_bool(const jctx *j, const char *key, int def, int *out)
{
    const cJSON *v = item(j, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return mp_errorf(MP_ECONFIG, "%s: key '%s' must be true or false", j->what, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int get_str(const jctx *j, const char *key, const char *def, char *out, size_t cap)
{
    const cJSON *v = item(j, key);
    if (!v) {
        snprintf(out, cap, "%s", def);
        return 0;
    }
    if (!cJSON_IsString(v))
        return mp_errorf(MP_ECONFIG, "%s: key '%s' must be a string", j->what, key);
    if (strlen(v->valuestring) >= cap)
        return mp_errorf(MP_ECONFIG, "%s: key '%s' value '%s' is too long", j->what, key, v->valuestring);
    snprintf(out, cap, "%s", v->valuestring);
    return 0;
}

static int get_factor_list(const jctx *j, const cJSON *obj, const char *key, double **out, int *n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    *n = 0;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsArray(v))
        return mp_errorf(MP_ECONFIG, "%s: key '%s' must be a list of numbers", j->what, key);
    int len = cJSON_GetArraySize(v);
    *out = calloc((size_t)(len ? len : 1), sizeof **out);
    if (!*out)
        return mp_errorf(MP_ENOMEM, "out of memory");
    int i = 0;
    for (const cJSON *x = v->child; x; x = x->next, i++) { /* not GetArrayItem: quadratic in the length */
        if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble) || !(x->valuedouble > 0))
            return mp_errorf(MP_ECONFIG, "%s: key '%s'[%d] must be a positive finite number", j->what, key, i);
        (*out)[i] = x->valuedouble;
    }
    *n = len;
    return 0;
}

/* rope: legacy rope_theta + rope_scaling, or transformers 5 rope_parameters. */
static int parse_rope(const jctx *j, mp_config *c, double def_theta)
{
    const cJSON *rp = item(j, "rope_parameters");
    const cJSON *rs = item(j, "rope_scaling");
    if (rp && !cJSON_IsObject(rp))
        return mp_errorf(MP_ECONFIG, "%s: key 'rope_parameters' must be an object", j->what);
    if (rs && !cJSON_IsObject(rs))
        return mp_errorf(MP_ECONFIG, "%s: key 'rope_scaling' must be an object or null", j->what);
    MP_CHECK(get_num(j, "rope_theta", def_theta, 0, &c->rope_theta));
    MP_CHECK(get_num(j, "partial_rotary_factor", 1.0, 0, &c->partial_rotary_factor));
    snprintf(c->rope_type, sizeof c->rope_type, "default");
    snprintf(c->rope_type_key, sizeof c->rope_type_key, "rope_parameters.rope_type");
    c->rope_factor = 1.0;
    c->rope_beta_fast = 32;
    c->rope_beta_slow = 1;
    c->rope_mscale = 0;
    c->rope_mscale_all_dim = 0;
    c->rope_low_freq_factor = 1;
    c->rope_high_freq_factor = 4;
    c->rope_orig_max_pos = c->max_pos;
    c->rope_truncate = 1;
    const cJSON *src[2] = {rp, rs};
    static const char *src_key[2] = {"rope_parameters", "rope_scaling"};
    for (int s = 0; s < 2; s++) {
        const cJSON *o = src[s];
        if (!o)
            continue;
        char what[4200];
        snprintf(what, sizeof what, "%s: %s", j->what, src_key[s]);
        jctx sub = {o, what, j->arch};
        const char *tkey = "rope_type";
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(o, tkey);
        if (!ty)
            ty = cJSON_GetObjectItemCaseSensitive(o, tkey = "type");
        if (ty && cJSON_IsString(ty)) {
            if (strlen(ty->valuestring) >= sizeof c->rope_type)
                return mp_errorf(MP_ECONFIG, "%s: key '%s': unsupported rope type '%.40s...'", what, tkey,
                                 ty->valuestring);
            snprintf(c->rope_type, sizeof c->rope_type, "%s", ty->valuestring);
            snprintf(c->rope_type_key, sizeof c->rope_type_key, "%s.%s", src_key[s], tkey);
        } else if (ty)
            return mp_errorf(MP_ECONFIG, "%s: key '%s' (the rope type) must be a string", what, tkey);
        if (strcmp(c->rope_type, "su") == 0)
            snprintf(c->rope_type, sizeof c->rope_type, "longrope");
        MP_CHECK(get_num(&sub, "rope_theta", c->rope_theta, 0, &c->rope_theta));
        MP_CHECK(get_num(&sub, "factor", c->rope_factor, 0, &c->rope_factor));
        c->rope_has_factor |= item(&sub, "factor") != NULL;
        MP_CHECK(get_num(&sub, "attention_factor", c->rope_attention_factor, 0, &c->rope_attention_factor));
        MP_CHECK(get_bool(&sub, "truncate", c->rope_truncate, &c->rope_truncate));
        MP_CHECK(get_num(&sub, "short_mscale", c->rope_short_mscale, 0, &c->rope_short_mscale));
        MP_CHECK(get_num(&sub, "long_mscale", c->rope_long_mscale, 0, &c->rope_long_mscale));
        MP_CHECK(get_num(&sub, "partial_rotary_factor", c->partial_rotary_factor, 0, &c->partial_rotary_factor));
        MP_CHECK(get_num(&sub, "beta_fast", c->rope_beta_fast, 0, &c->rope_beta_fast));
        MP_CHECK(get_num(&sub, "beta_slow", c->rope_beta_slow, 0, &c->rope_beta_slow));
        MP_CHECK(get_num(&sub, "mscale", c->rope_mscale, 0, &c->rope_mscale));
        MP_CHECK(get_num(&sub, "mscale_all_dim", c->rope_mscale_all_dim, 0, &c->rope_mscale_all_dim));
        MP_CHECK(get_num(&sub, "low_freq_factor", c->rope_low_freq_factor, 0, &c->rope_low_freq_factor));
        MP_CHECK(get_num(&sub, "high_freq_factor", c->rope_high_freq_factor, 0, &c->rope_high_freq_factor));
        int omp = c->rope_orig_max_pos;
        MP_CHECK(get_int(&sub, "original_max_position_embeddings", &omp, &c->rope_orig_max_pos));
        if (!c->rope_short_factor)
            MP_CHECK(get_factor_list(&sub, o, "short_factor", &c->rope_short_factor, &c->n_rope_short));
        if (!c->rope_long_factor)
            MP_CHECK(get_factor_list(&sub, o, "long_factor", &c->rope_long_factor, &c->n_rope_long));
        if (strcmp(c->rope_type, "default") != 0)
            MP_CHECK(check_range(&sub, "factor", c->rope_factor, 0, 0, HUGE_VAL));
        MP_CHECK(check_range(&sub, "attention_factor", c->rope_attention_factor, 0, 1, HUGE_VAL));
    }
    /* Phi-3.5-MoE keeps original_max_position_embeddings at the top level */
    int omp = c->rope_orig_max_pos;
    MP_CHECK(get_pos(j, "original_max_position_embeddings", &omp, &c->rope_orig_max_pos));
    MP_CHECK(check_range(j, "rope_theta", c->rope_theta, 0, 0, HUGE_VAL));
    MP_CHECK(check_range(j, "partial_rotary_factor", c->partial_rotary_factor, 0, 0, 1));
    static const char *known[] = {"default", "linear", "dynamic", "yarn", "longrope", "llama3"};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (strcmp(c->rope_type, known[i]) == 0)
            return 0;
    return mp_errorf(MP_ECONFIG, "%s: key '%s': unsupported rope type '%s'", j->what, c->rope_type_key, c->rope_type);
}

static int find_arch(const jctx *j, mp_config *c)
{
    const cJSON *mt = item(j, "model_type");
    if (mt && !cJSON_IsString(mt))
        return mp_errorf(MP_ECONFIG, "%s: key 'model_type' must be a string", j->what);
    if (mt && mp_arch_from_name(mt->valuestring, &c->arch) == 0)
        return 0;
    const cJSON *ar = mt ? NULL : item(j, "architectures"); /* model_type, when present, decides */
    if (cJSON_IsArray(ar)) {
        const cJSON *a0 = cJSON_GetArrayItem(ar, 0);
        if (cJSON_IsString(a0) && mp_arch_from_class(a0->valuestring, &c->arch) == 0)
            return 0;
    }
    return mp_errorf(MP_ECONFIG,
                     "%s: unknown architecture (model_type '%s'); supported: mixtral, qwen2_moe, qwen3_moe, "
                     "olmoe, deepseek, deepseek_v2, deepseek_v3, phimoe",
                     j->what, mt ? mt->valuestring : "(none)");
}

static int parse_int_list(const jctx *j, const char *key, unsigned char *mark, int n)
{
    const cJSON *v = item(j, key);
    if (!v)
        return 0;
    if (!cJSON_IsArray(v))
        return mp_errorf(MP_ECONFIG, "%s: key '%s' must be a list of layer indices", j->what, key);
    for (const cJSON *x = v->child; x; x = x->next) {
        if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble >= n || floor(x->valuedouble) != x->valuedouble)
            return mp_errorf(MP_ECONFIG, "%s: key '%s' holds an entry that is not a layer index in [0, %d)", j->what,
                             key, n);
        mark[(int)x->valuedouble] = 1;
    }
    return 0;
}

static int parse_common(const jctx *j, mp_config *c)
{
    MP_CHECK(get_pos(j, "hidden_size", NULL, &c->hidden));
    MP_CHECK(get_pos(j, "num_hidden_layers", NULL, &c->n_layers));
    MP_CHECK(get_pos(j, "num_attention_heads", NULL, &c->n_heads));
    MP_CHECK(get_pos(j, "num_key_value_heads", &c->n_heads, &c->n_kv_heads));
    MP_CHECK(get_pos(j, "vocab_size", NULL, &c->vocab));
    int def_maxpos = 4096;
    MP_CHECK(get_pos(j, "max_position_embeddings", &def_maxpos, &c->max_pos));
    if (c->hidden % c->n_heads != 0 && !item(j, "head_dim"))
        return mp_errorf(MP_ECONFIG, "%s: hidden_size %d is not a multiple of num_attention_heads %d", j->what,
                         c->hidden, c->n_heads);
    int hd = c->hidden / c->n_heads;
    if (hd == 0 && !item(j, "head_dim"))
        return mp_errorf(MP_ECONFIG, "%s: hidden_size %d is smaller than num_attention_heads %d", j->what, c->hidden,
                         c->n_heads);
    MP_CHECK(get_pos(j, "head_dim", hd > 0 ? &hd : NULL, &c->head_dim));
    if (c->n_heads % c->n_kv_heads != 0)
        return mp_errorf(MP_ECONFIG, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                         j->what, c->n_heads, c->n_kv_heads);
    MP_CHECK(get_bool(j, "tie_word_embeddings", 0, &c->tie_embeddings));
    MP_CHECK(get_str(j, "hidden_act", "silu", c->hidden_act, sizeof c->hidden_act));
    if (strcmp(c->hidden_act, "silu") != 0 && strcmp(c->hidden_act, "swish") != 0)
        return mp_errorf(MP_ECONFIG, "%s: hidden_act '%s' is not supported (silu only)", j->what, c->hidden_act);
    c->is_moe = calloc((size_t)c->n_layers, 1);
    return c->is_moe ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
}

/* DeepSeek's MoE keys (deepseek, deepseek_v2, deepseek_v3): experts, sizes, shared experts, which layers */
static int parse_deepseek_moe(const jctx *j, mp_config *c)
{
    int zero = 0, one = 1;
    MP_CHECK(get_pos(j, "n_routed_experts", NULL, &c->n_experts));
    MP_CHECK(get_pos(j, "num_experts_per_tok", NULL, &c->top_k));
    MP_CHECK(get_pos(j, "moe_intermediate_size", NULL, &c->moe_ffn));
    MP_CHECK(get_pos(j, "intermediate_size", NULL, &c->dense_ffn));
    MP_CHECK(get_nonneg(j, "n_shared_experts", &zero, &c->n_shared));
    if ((int64_t)c->n_shared * c->moe_ffn > MP_CONFIG_SIZE_MAX)
        return mp_errorf(MP_ECONFIG,
                         "%s: n_shared_experts %d x moe_intermediate_size %d is larger than the supported %d", j->what,
                         c->n_shared, c->moe_ffn, MP_CONFIG_SIZE_MAX);
    c->shared_ffn = c->n_shared * c->moe_ffn;
    MP_CHECK(get_nonneg(j, "first_k_dense_replace", &zero, &c->first_k_dense));
    MP_CHECK(get_pos(j, "moe_layer_freq", &one, &c->moe_layer_freq));
    for (int l = 0; l < c->n_layers; l++)
        c->is_moe[l] = l >= c->first_k_dense && l % c->moe_layer_freq == 0;
    return 0;
}

static int parse_arch(const jctx *j, mp_config *c)
{
    int zero = 0, one = 1, two = 2;
    double theta = 10000.0;
    switch (c->arch) {
    case MP_ARCH_MIXTRAL:
    case MP_ARCH_PHIMOE: {
        MP_CHECK(get_pos(j, "intermediate_size", NULL, &c->moe_ffn));
        MP_CHECK(get_pos(j, "num_local_experts", NULL, &c->n_experts));
        MP_CHECK(get_pos(j, "num_experts_per_tok", &two, &c->top_k));
        c->norm_topk_prob = 1;
        theta = 1e6;
        if (c->arch == MP_ARCH_PHIMOE) {
            c->layernorm = 1;
            MP_CHECK(get_bool(j, "attention_bias", 0, &c->attn_bias));
            c->o_bias = c->attn_bias;
            MP_CHECK(get_bool(j, "lm_head_bias", 0, &c->lm_head_bias));
        }
        MP_CHECK(get_num(j, "rms_norm_eps", 1e-5, 0, &c->norm_eps));
        /* transformers' defaults: PhimoeConfig 0.01 (sparsemixer's threshold), MixtralConfig 0 */
        MP_CHECK(get_num(j, "router_jitter_noise", c->arch == MP_ARCH_PHIMOE ? 0.01 : 0.0, 0, &c->router_jitter));
        MP_CHECK(check_range(j, "router_jitter_noise", c->router_jitter, 0, 1, HUGE_VAL));
        MP_CHECK(get_nonneg(j, "sliding_window", &zero, &c->sliding_window));
        memset(c->is_moe, 1, (size_t)c->n_layers);
        break;
    }
    case MP_ARCH_QWEN2_MOE:
    case MP_ARCH_QWEN3_MOE:
    case MP_ARCH_OLMOE: {
        /* transformers 5 writes qwen3_moe's count as num_local_experts;
         * published checkpoints use num_experts. */
        const char *ne = c->arch == MP_ARCH_QWEN3_MOE && !item(j, "num_experts") && item(j, "num_local_experts")
                             ? "num_local_experts"
                             : "num_experts";
        MP_CHECK(get_pos(j, ne, NULL, &c->n_experts));
        MP_CHECK(get_pos(j, "num_experts_per_tok", NULL, &c->top_k));
        MP_CHECK(get_num(j, "rms_norm_eps", 1e-6, 0, &c->norm_eps));
        if (c->arch == MP_ARCH_OLMOE) {
            MP_CHECK(get_pos(j, "intermediate_size", NULL, &c->moe_ffn));
            MP_CHECK(get_bool(j, "norm_topk_prob", 0, &c->norm_topk_prob));
            MP_CHECK(get_bool(j, "attention_bias", 0, &c->attn_bias));
            c->o_bias = c->attn_bias;
            MP_CHECK(get_num(j, "clip_qkv", 0.0, 0, &c->clip_qkv));
            MP_CHECK(check_range(j, "clip_qkv", c->clip_qkv, 0, 1, HUGE_VAL));
            c->qk_norm = MP_QKNORM_FULL;
            memset(c->is_moe, 1, (size_t)c->n_layers);
            break;
        }
        MP_CHECK(get_pos(j, "moe_intermediate_size", NULL, &c->moe_ffn));
        MP_CHECK(get_pos(j, "intermediate_size", NULL, &c->dense_ffn));
        MP_CHECK(get_pos(j, "decoder_sparse_step", &one, &c->decoder_sparse_step));
        if (c->arch == MP_ARCH_QWEN2_MOE) {
            MP_CHECK(get_pos(j, "shared_expert_intermediate_size", NULL, &c->shared_ffn));
            c->n_shared = 1;
            c->shared_gate = 1;
            MP_CHECK(get_bool(j, "norm_topk_prob", 0, &c->norm_topk_prob));
            MP_CHECK(get_bool(j, "qkv_bias", 1, &c->attn_bias));
        } else {
            MP_CHECK(get_bool(j, "norm_topk_prob", 0, &c->norm_topk_prob));
            MP_CHECK(get_bool(j, "attention_bias", 0, &c->attn_bias));
            c->o_bias = c->attn_bias;
            c->qk_norm = MP_QKNORM_HEAD;
        }
        unsigned char *mlp_only = calloc((size_t)c->n_layers, 1);
        if (!mlp_only)
            return mp_errorf(MP_ENOMEM, "out of memory");
        int rc = parse_int_list(j, "mlp_only_layers", mlp_only, c->n_layers);
        for (int l = 0; l < c->n_layers && rc == 0; l++)
            c->is_moe[l] = !mlp_only[l] && (l + 1) % c->decoder_sparse_step == 0;
        free(mlp_only);
        MP_CHECK(rc);
        int sw = 0, use_sw = 0;
        MP_CHECK(get_bool(j, "use_sliding_window", 0, &use_sw));
        MP_CHECK(get_nonneg(j, "sliding_window", &zero, &sw));
        c->sliding_window = use_sw ? sw : 0;
        break;
    }
    case MP_ARCH_DEEPSEEK_V2:
    case MP_ARCH_DEEPSEEK_V3: {
        int v3 = c->arch == MP_ARCH_DEEPSEEK_V3;
        MP_CHECK(parse_deepseek_moe(j, c));
        MP_CHECK(get_nonneg(j, "q_lora_rank", &zero, &c->q_lora_rank));
        MP_CHECK(get_pos(j, "kv_lora_rank", NULL, &c->kv_lora_rank));
        MP_CHECK(get_pos(j, "qk_nope_head_dim", NULL, &c->qk_nope_dim));
        MP_CHECK(get_pos(j, "qk_rope_head_dim", NULL, &c->qk_rope_dim));
        MP_CHECK(get_pos(j, "v_head_dim", NULL, &c->v_head_dim));
        MP_CHECK(get_pos(j, "n_group", &one, &c->n_group));
        MP_CHECK(get_pos(j, "topk_group", &one, &c->topk_group));
        MP_CHECK(get_str(j, "topk_method", v3 ? "noaux_tc" : "greedy", c->topk_method, sizeof c->topk_method));
        MP_CHECK(get_str(j, "scoring_func", v3 ? "sigmoid" : "softmax", c->scoring_func, sizeof c->scoring_func));
        MP_CHECK(get_num(j, "routed_scaling_factor", 1.0, 0, &c->routed_scaling));
        MP_CHECK(check_range(j, "routed_scaling_factor", c->routed_scaling, 0, 0, HUGE_VAL));
        MP_CHECK(get_bool(j, "norm_topk_prob", v3, &c->norm_topk_prob));
        MP_CHECK(get_num(j, "rms_norm_eps", 1e-6, 0, &c->norm_eps));
        MP_CHECK(get_bool(j, "attention_bias", 0, &c->attn_bias));
        /* DeepseekV2 always rotates interleaved pairs; DeepseekV3 unless rope_interleave is false */
        MP_CHECK(get_bool(j, "rope_interleave", 1, &c->rope_interleave));
        if (!v3)
            c->rope_interleave = 1;
        c->head_dim = c->qk_nope_dim + c->qk_rope_dim;
        if (strcmp(c->topk_method, "greedy") && strcmp(c->topk_method, "group_limited_greedy") &&
            strcmp(c->topk_method, "noaux_tc"))
            return mp_errorf(MP_ECONFIG, "%s: unsupported topk_method '%s'", j->what, c->topk_method);
        if (strcmp(c->scoring_func, "softmax") && strcmp(c->scoring_func, "sigmoid"))
            return mp_errorf(MP_ECONFIG, "%s: unsupported scoring_func '%s'", j->what, c->scoring_func);
        if (c->n_experts % c->n_group != 0 || c->topk_group > c->n_group ||
            (int64_t)c->topk_group * (c->n_experts / c->n_group) < c->top_k)
            return mp_errorf(MP_ECONFIG,
                             "%s: keys n_routed_experts %d, n_group %d, topk_group %d and num_experts_per_tok %d are "
                             "inconsistent (n_group must divide the experts, topk_group <= n_group, and the chosen "
                             "groups must hold num_experts_per_tok experts)",
                             j->what, c->n_experts, c->n_group, c->topk_group, c->top_k);
        if (c->qk_rope_dim % 2 != 0)
            return mp_errorf(MP_ECONFIG, "%s: key 'qk_rope_head_dim' = %d must be even (rotary pairs)", j->what,
                             c->qk_rope_dim);
        break;
    }
    case MP_ARCH_DEEPSEEK: { /* DeepSeek-MoE-16B's remote code: Llama attention, DeepSeek-V2's softmax MoE */
        MP_CHECK(parse_deepseek_moe(j, c));
        MP_CHECK(get_bool(j, "norm_topk_prob", 0, &c->norm_topk_prob));
        MP_CHECK(get_num(j, "rms_norm_eps", 1e-6, 0, &c->norm_eps));
        MP_CHECK(get_bool(j, "attention_bias", 0, &c->attn_bias));
        c->o_bias = c->attn_bias;
        MP_CHECK(get_str(j, "scoring_func", "softmax", c->scoring_func, sizeof c->scoring_func));
        if (strcmp(c->scoring_func, "softmax"))
            return mp_errorf(MP_ECONFIG, "%s: unsupported scoring_func '%s' (softmax)", j->what, c->scoring_func);
        break;
    }
    default: return mp_errorf(MP_EINTERNAL, "unhandled architecture");
    }
    if (c->top_k > c->n_experts)
        return mp_errorf(MP_ECONFIG, "%s: key 'num_experts_per_tok' = %d exceeds the number of experts %d", j->what,
                         c->top_k, c->n_experts);
    MP_CHECK(check_range(j, "rms_norm_eps", c->norm_eps, 0, 0, HUGE_VAL));
    MP_CHECK(parse_rope(j, c, theta));
    if (c->dense_ffn == 0)
        for (int l = 0; l < c->n_layers; l++)
            if (!c->is_moe[l])
                return mp_errorf(MP_ECONFIG, "%s: layer %d is dense but intermediate_size is not set", j->what, l);
    if (mp_config_n_moe_layers(c) == 0)
        return mp_errorf(MP_ECONFIG, "%s: no layer is a MoE layer (num_hidden_layers %d; see %s)", j->what, c->n_layers,
                         c->arch == MP_ARCH_DEEPSEEK_V2 || c->arch == MP_ARCH_DEEPSEEK_V3 || c->arch == MP_ARCH_DEEPSEEK
                             ? "first_k_dense_replace and moe_layer_freq"
                             : "mlp_only_layers and decoder_sparse_step");
    /* rotate-half rope works on pairs */
    if (c->arch != MP_ARCH_DEEPSEEK_V2 && c->arch != MP_ARCH_DEEPSEEK_V3) {
        int64_t rd = (int64_t)(c->head_dim * c->partial_rotary_factor);
        if (rd < 2)
            return mp_errorf(MP_ECONFIG, "%s: head_dim %d x partial_rotary_factor %g leaves no rotary dimension",
                             j->what, c->head_dim, c->partial_rotary_factor);
        if (rd % 2 != 0)
            return mp_errorf(MP_ECONFIG,
                             "%s: head_dim %d x partial_rotary_factor %g = %lld rotary dimensions, which must be even "
                             "(rotary pairs)",
                             j->what, c->head_dim, c->partial_rotary_factor, (long long)rd);
        if (c->rope_short_factor && c->n_rope_short != rd / 2)
            return mp_errorf(MP_ECONFIG, "%s: rope short_factor has %d entries; the rotary dimension %lld needs %lld",
                             j->what, c->n_rope_short, (long long)rd, (long long)(rd / 2));
        if (c->rope_long_factor && c->n_rope_long != rd / 2)
            return mp_errorf(MP_ECONFIG, "%s: rope long_factor has %d entries; the rotary dimension %lld needs %lld",
                             j->what, c->n_rope_long, (long long)rd, (long long)(rd / 2));
    }
    (void)zero;
    return 0;
}

int mp_config_parse(const char *json, const char *what, mp_config *cfg)
{
    return mp_config_parse_n(json, strlen(json), what, cfg);
}

int mp_config_parse_n(const char *json, size_t len, const char *what, mp_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->file, sizeof cfg->file, "%s", what);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mp_errorf(MP_ECONFIG, "%s: not a valid JSON object", what);
    }
    jctx j = {root, cfg->file, "?"};
    int rc = 0;
    MP_CHECK_GOTO(find_arch(&j, cfg), out);
    j.arch = mp_arch_name(cfg->arch);
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", j.arch);
    MP_CHECK_GOTO(parse_common(&j, cfg), out);
    MP_CHECK_GOTO(parse_arch(&j, cfg), out);
out:
    cJSON_Delete(root);
    if (rc < 0)
        mp_config_free(cfg);
    return rc;
}

int mp_config_load(const char *path, mp_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    char *buf = NULL;
    size_t n = 0;
    /* a directory, FIFO or device named config.json, or an absurdly large one, is an invalid config */
    MP_CHECK(mp_read_file_max(path, 64u << 20, MP_ECONFIG, &buf, &n));
    int rc = mp_config_parse_n(buf, n, path, cfg);
    free(buf);
    MP_CHECK(rc);
    return 0;
}
