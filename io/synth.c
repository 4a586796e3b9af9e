/* synth.c - tiny synthetic MoE checkpoints (see synth.h for the recipe). */
#define _GNU_SOURCE
#include "synth.h"

#include "config.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"
#include "rng.h"
#include "st_write.h"
#include "tokens.h"

void mp_synth_defaults(mp_synth_opts *o)
{
    memset(o, 0, sizeof *o);
    o->arch = MP_ARCH_MIXTRAL;
    o->layers = 2;
    o->experts = 8;
    o->hidden = 64;
    o->ffn = 128;
    o->vocab = 256;
    o->heads = 4;
    o->kv_heads = 2;
    o->top_k = 2;
    o->n_seq = 16;
    o->seq_len = 64;
    o->seed = 1234;
    o->dtype = MP_DT_F32;
    o->shards = 1;
    o->layout = MP_LAYOUT_PER_EXPERT;
    o->delta_scale = 0.5;
    o->noise_scale = 0.05;
}

int mp_synth_parse_arch(const char *name, mp_arch *out)
{
    if (mp_arch_from_name(name, out) == 0)
        return 0;
    return mp_errorf(MP_EUSAGE,
                     "unknown --arch '%s' (choose mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek, deepseek_v2, "
                     "deepseek_v3, phimoe)",
                     name);
}

static int check_opts(const mp_synth_opts *o)
{
    struct {
        const char *name;
        int v, lo, hi;
    } r[] = {
        {"--layers", o->layers, 1, 1024},   {"--experts", o->experts, 1, 4096}, {"--hidden", o->hidden, 8, 65536},
        {"--ffn", o->ffn, 1, 262144},       {"--vocab", o->vocab, 2, 1 << 24},  {"--heads", o->heads, 1, 1024},
        {"--kv-heads", o->kv_heads, 1, 1024}, {"--top-k", o->top_k, 1, 4096},   {"--n-seq", o->n_seq, 1, 1 << 20},
        {"--seq-len", o->seq_len, 2, 1 << 20}, {"--shards", o->shards, 1, 9999},
    };
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
        if (r[i].v < r[i].lo || r[i].v > r[i].hi)
            return mp_errorf(MP_EUSAGE, "synth: %s %d is outside [%d, %d]", r[i].name, r[i].v, r[i].lo, r[i].hi);
    if (o->top_k > o->experts)
        return mp_errorf(MP_EUSAGE, "synth: --top-k %d exceeds --experts %d", o->top_k, o->experts);
    if (o->hidden % o->heads != 0 || (o->hidden / o->heads) % 2 != 0)
        return mp_errorf(MP_EUSAGE, "synth: --hidden %d must be a multiple of 2 x --heads %d", o->hidden, o->heads);
    if (o->heads % o->kv_heads != 0)
        return mp_errorf(MP_EUSAGE, "synth: --heads %d must be a multiple of --kv-heads %d", o->heads, o->kv_heads);
    if (o->dtype != MP_DT_F32 && o->dtype != MP_DT_BF16 && o->dtype != MP_DT_F16)
        return mp_errorf(MP_EUSAGE, "synth: --dtype must be F32, BF16 or F16");
    if (o->dense_layers < 0 || o->dense_layers >= o->layers)
        return mp_errorf(MP_EUSAGE, "synth: --dense-layers %d is outside [0, --layers - 1 = %d]", o->dense_layers,
                         o->layers - 1);
    if (o->dense_layers > 0 && o->arch != MP_ARCH_QWEN2_MOE && o->arch != MP_ARCH_QWEN3_MOE)
        return mp_errorf(MP_EUSAGE, "synth: --dense-layers is for qwen2_moe and qwen3_moe (mlp_only_layers)");
    if (o->delta_rank < 0 || o->delta_scale < 0 || o->noise_scale < 0)
        return mp_errorf(MP_EUSAGE, "synth: --delta-rank, --delta-scale and --noise must be >= 0");
    return 0;
}

static const char *torch_dtype(mp_dtype t)
{
    return t == MP_DT_BF16 ? "bfloat16" : t == MP_DT_F16 ? "float16" : "float32";
}

/* A float key written with a decimal point (transformers' strict config
 * classes reject 1 where they expect 1.0). */
static void add_float(cJSON *j, const char *key, double v)
{
    char buf[48];
    snprintf(buf, sizeof buf, "%.17g", v);
    if (!strpbrk(buf, ".eEn"))
        strcat(buf, ".0");
    cJSON_AddRawToObject(j, key, buf);
}

int mp_synth_config_json(const mp_synth_opts *o, char **json)
{
    MP_CHECK(check_opts(o));
    if ((unsigned)o->arch >= MP_ARCH_COUNT)
        return mp_errorf(MP_EUSAGE, "synth: unsupported architecture");
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return mp_errorf(MP_ENOMEM, "out of memory");
    cJSON *arr = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(arr, cJSON_CreateString(mp_arch_class(o->arch)));
    cJSON_AddStringToObject(j, "model_type", mp_arch_name(o->arch));
    cJSON_AddStringToObject(j, "dtype", torch_dtype(o->dtype));
    cJSON_AddStringToObject(j, "hidden_act", "silu");
    cJSON_AddNumberToObject(j, "hidden_size", o->hidden);
    cJSON_AddNumberToObject(j, "num_hidden_layers", o->layers);
    cJSON_AddNumberToObject(j, "num_attention_heads", o->heads);
    cJSON_AddNumberToObject(j, "vocab_size", o->vocab);
    cJSON_AddNumberToObject(j, "max_position_embeddings", o->seq_len > 256 ? o->seq_len : 256);
    cJSON_AddNumberToObject(j, "num_experts_per_tok", o->top_k);
    add_float(j, "rope_theta", 10000.0);
    cJSON_AddBoolToObject(j, "tie_word_embeddings", 0);
    cJSON_AddBoolToObject(j, "use_cache", 0);
    add_float(j, "initializer_range", 0.02);
    int hd = o->hidden / o->heads;
    switch (o->arch) {
    case MP_ARCH_MIXTRAL:
    case MP_ARCH_PHIMOE:
        cJSON_AddNumberToObject(j, "num_key_value_heads", o->kv_heads);
        cJSON_AddNumberToObject(j, "intermediate_size", o->ffn);
        cJSON_AddNumberToObject(j, "num_local_experts", o->experts);
        add_float(j, "rms_norm_eps", 1e-5);
        add_float(j, "router_jitter_noise", o->arch == MP_ARCH_PHIMOE ? 0.01 : 0.0);
        if (o->arch == MP_ARCH_PHIMOE) {
            cJSON_AddBoolToObject(j, "attention_bias", 1);
            cJSON_AddBoolToObject(j, "lm_head_bias", 1);
            add_float(j, "input_jitter_noise", 0.0);
        }
        break;
    case MP_ARCH_QWEN2_MOE:
    case MP_ARCH_QWEN3_MOE:
        cJSON_AddNumberToObject(j, "num_key_value_heads", o->kv_heads);
        cJSON_AddNumberToObject(j, "num_experts", o->experts);
        cJSON_AddNumberToObject(j, "moe_intermediate_size", o->ffn);
        cJSON_AddNumberToObject(j, "intermediate_size", 2 * o->ffn);
        cJSON_AddNumberToObject(j, "decoder_sparse_step", 1);
        cJSON *mo = cJSON_AddArrayToObject(j, "mlp_only_layers");
        for (int l = 0; l < o->dense_layers; l++)
            cJSON_AddItemToArray(mo, cJSON_CreateNumber(l));
        add_float(j, "rms_norm_eps", 1e-6);
        cJSON_AddBoolToObject(j, "use_sliding_window", 0);
        if (o->arch == MP_ARCH_QWEN2_MOE) {
            cJSON_AddNumberToObject(j, "shared_expert_intermediate_size", 2 * o->ffn);
            cJSON_AddBoolToObject(j, "norm_topk_prob", 0);
            cJSON_AddBoolToObject(j, "qkv_bias", 1);
        } else {
            cJSON_AddNumberToObject(j, "head_dim", hd);
            cJSON_AddBoolToObject(j, "norm_topk_prob", 1);
            cJSON_AddBoolToObject(j, "attention_bias", 0);
        }
        break;
    case MP_ARCH_OLMOE:
        cJSON_AddNumberToObject(j, "num_key_value_heads", o->kv_heads);
        cJSON_AddNumberToObject(j, "num_experts", o->experts);
        cJSON_AddNumberToObject(j, "intermediate_size", o->ffn);
        add_float(j, "rms_norm_eps", 1e-5);
        cJSON_AddBoolToObject(j, "norm_topk_prob", 0);
        cJSON_AddBoolToObject(j, "attention_bias", 0);
        break;
    case MP_ARCH_DEEPSEEK: /* DeepSeek-MoE-16B: multi-head attention, two shared experts, the MoE of V2 */
    case MP_ARCH_DEEPSEEK_V2:
    case MP_ARCH_DEEPSEEK_V3: {
        int v3 = o->arch == MP_ARCH_DEEPSEEK_V3, v1 = o->arch == MP_ARCH_DEEPSEEK;
        cJSON_AddNumberToObject(j, "num_key_value_heads", o->heads); /* MLA: one KV head per head */
        cJSON_AddNumberToObject(j, "n_routed_experts", o->experts);
        cJSON_AddNumberToObject(j, "n_shared_experts", v1 ? 2 : 1);
        cJSON_AddNumberToObject(j, "moe_intermediate_size", o->ffn);
        cJSON_AddNumberToObject(j, "intermediate_size", 2 * o->ffn);
        cJSON_AddNumberToObject(j, "first_k_dense_replace", o->layers > 1 ? 1 : 0);
        cJSON_AddNumberToObject(j, "moe_layer_freq", 1);
        if (v1) {
            add_float(j, "rms_norm_eps", 1e-6);
            cJSON_AddStringToObject(j, "scoring_func", "softmax");
            cJSON_AddBoolToObject(j, "norm_topk_prob", 0);
            cJSON_AddBoolToObject(j, "attention_bias", 0);
            break;
        }
        cJSON_AddNumberToObject(j, "kv_lora_rank", o->hidden / 2);
        if (v3)
            cJSON_AddNumberToObject(j, "q_lora_rank", o->hidden / 2);
        else
            cJSON_AddNullToObject(j, "q_lora_rank");
        cJSON_AddNumberToObject(j, "qk_nope_head_dim", hd);
        cJSON_AddNumberToObject(j, "qk_rope_head_dim", hd / 2 + (hd / 2) % 2);
        cJSON_AddNumberToObject(j, "v_head_dim", hd);
        add_float(j, "rms_norm_eps", 1e-6);
        add_float(j, "routed_scaling_factor", v3 ? 2.5 : 1.0);
        cJSON_AddBoolToObject(j, "attention_bias", 0);
        if (v3) {
            int ng = o->experts % 2 == 0 && o->experts / 2 >= o->top_k ? 2 : 1;
            cJSON_AddNumberToObject(j, "n_group", ng);
            cJSON_AddNumberToObject(j, "topk_group", 1);
            cJSON_AddStringToObject(j, "topk_method", "noaux_tc");
            cJSON_AddStringToObject(j, "scoring_func", "sigmoid");
            cJSON_AddBoolToObject(j, "norm_topk_prob", 1);
        } else {
            cJSON_AddStringToObject(j, "topk_method", "greedy");
            cJSON_AddBoolToObject(j, "norm_topk_prob", 0);
        }
        break;
    }
    default: break;
    }
    *json = cJSON_Print(j);
    cJSON_Delete(j);
    if (!*json)
        return mp_errorf(MP_ENOMEM, "out of memory");
    return 0;
}

/* ---- tensor values --------------------------------------------------------------------------- */

typedef struct {
    const mp_synth_opts *o;
    const mp_config *cfg;
    const mp_tensor_spec *specs;
} fill_ctx;

static void fill_normal(uint64_t seed, const char *tag, double mean, double std, float *out, int64_t n)
{
    mp_rng r;
    mp_rng_seed(&r, mp_rng_derive(seed, tag));
    for (int64_t i = 0; i < n; i++)
        out[i] = (float)(mean + std * mp_rng_normal(&r));
}

/* W = B + P Q + N for expert e, projection p of layer l, into out[rows * cols]. */
static int expert_block(const fill_ctx *x, int l, int e, mp_proj p, int64_t rows, int64_t cols, float *out)
{
    const mp_synth_opts *o = x->o;
    int64_t mn = rows < cols ? rows : cols;
    int64_t r = o->delta_rank > 0 ? o->delta_rank : (mn / 8 > 1 ? mn / 8 : 1);
    if (r > mn)
        r = mn;
    double s = 1.0 / sqrt((double)cols);
    double *P = malloc(sizeof(double) * (size_t)(rows * r)), *Q = malloc(sizeof(double) * (size_t)(r * cols));
    double *acc = calloc((size_t)(rows * cols), sizeof(double));
    if (!P || !Q || !acc) {
        free(P), free(Q), free(acc);
        return mp_errorf(MP_ENOMEM, "synth: out of memory for an expert block of layer %d", l);
    }
    char tag[96];
    mp_rng g;
    snprintf(tag, sizeof tag, "layer%d.%s.base", l, mp_proj_name(p));
    mp_rng_seed(&g, mp_rng_derive(o->seed, tag));
    for (int64_t i = 0; i < rows * cols; i++)
        acc[i] = s * mp_rng_normal(&g);
    snprintf(tag, sizeof tag, "layer%d.expert%d.%s.delta", l, e, mp_proj_name(p));
    mp_rng_seed(&g, mp_rng_derive(o->seed, tag));
    for (int64_t i = 0; i < rows * r; i++)
        P[i] = mp_rng_normal(&g);
    for (int64_t i = 0; i < r * cols; i++)
        Q[i] = mp_rng_normal(&g);
    double ds = o->delta_scale * s / sqrt((double)r);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t k = 0; k < r; k++) {
            double a = ds * P[i * r + k];
            for (int64_t jj = 0; jj < cols; jj++)
                acc[i * cols + jj] += a * Q[k * cols + jj];
        }
    snprintf(tag, sizeof tag, "layer%d.expert%d.%s.noise", l, e, mp_proj_name(p));
    mp_rng_seed(&g, mp_rng_derive(o->seed, tag));
    for (int64_t i = 0; i < rows * cols; i++)
        out[i] = (float)(acc[i] + o->noise_scale * s * mp_rng_normal(&g));
    free(P), free(Q), free(acc);
    return 0;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int fill_tensor(void *ctx, int idx, float *out, int64_t numel)
{
    const fill_ctx *x = ctx;
    const mp_tensor_spec *t = &x->specs[idx];
    uint64_t seed = x->o->seed;
    if (t->role == MP_ROLE_EXPERT) {
        int e0 = t->expert >= 0 ? t->expert : 0, e1 = t->expert >= 0 ? t->expert + 1 : x->cfg->n_experts;
        int64_t covered = 0;
        for (int e = e0; e < e1; e++)
            for (int p = 0; p < 3; p++) {
                mp_block_loc b;
                mp_expert_block(x->cfg, x->o->layout, t->layer, e, (mp_proj)p, &b);
                if (strcmp(b.name, t->name) != 0)
                    continue;
                if (b.first + b.rows * b.cols > numel)
                    return mp_errorf(MP_EINTERNAL, "synth: expert block outside %s", t->name);
                MP_CHECK(expert_block(x, t->layer, e, (mp_proj)p, b.rows, b.cols, out + b.first));
                covered += b.rows * b.cols;
            }
        if (covered != numel)
            return mp_errorf(MP_EINTERNAL, "synth: %s: expert blocks cover %lld of %lld values", t->name,
                             (long long)covered, (long long)numel);
        return 0;
    }
    if (ends_with(t->name, ".bias"))
        fill_normal(seed, t->name, 0.0, 0.02, out, numel);
    else if (t->role == MP_ROLE_NORM)
        fill_normal(seed, t->name, 1.0, 0.05, out, numel);
    else if (t->role == MP_ROLE_EMBED)
        fill_normal(seed, t->name, 0.0, 1.0, out, numel);
    else if (t->role == MP_ROLE_ROUTER && t->ndim == 2)
        fill_normal(seed, t->name, 0.0, 2.0 / sqrt((double)t->shape[1]), out, numel);
    else if (t->ndim == 2)
        fill_normal(seed, t->name, 0.0, 1.0 / sqrt((double)t->shape[1]), out, numel);
    else
        fill_normal(seed, t->name, 0.0, 0.02, out, numel);
    return 0;
}

/* ---- tokens ---------------------------------------------------------------------------------- */

static int make_tokens(const mp_synth_opts *o, int32_t **out)
{
    int V = o->vocab;
    size_t n = (size_t)o->n_seq * (size_t)o->seq_len;
    int32_t *ids = malloc(n * sizeof *ids);
    double *cdf = malloc((size_t)V * sizeof *cdf);
    if (!ids || !cdf) {
        free(ids), free(cdf);
        return mp_errorf(MP_ENOMEM, "synth: out of memory for %zu tokens", n);
    }
    double acc = 0;
    for (int i = 0; i < V; i++)
        cdf[i] = acc += pow(i + 1.0, -1.1);
    mp_rng g;
    mp_rng_seed(&g, mp_rng_derive(o->seed, "tokens"));
    for (size_t i = 0; i < n; i++) {
        int start = i % (size_t)o->seq_len == 0;
        double u = mp_rng_uniform(&g);
        if (!start && u < 0.6) {
            uint64_t prev = (uint64_t)ids[i - 1], k = (uint64_t)(u / 0.15); /* 0..3 */
            ids[i] = (int32_t)((prev * 2654435761u + k * 40503u + 12345u) % (uint64_t)V);
        } else {
            double z = mp_rng_uniform(&g) * acc;
            int lo = 0, hi = V - 1;
            while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (cdf[mid] < z)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            ids[i] = lo;
        }
    }
    free(cdf);
    *out = ids;
    return 0;
}

/* ---- output directory ------------------------------------------------------------------------ */

static void remove_tree_flat(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        char p[4200];
        while ((de = readdir(d)))
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(dir);
}

static int dir_state(const char *dir) /* 0 absent, 1 empty dir, 2 other */
{
    struct stat st;
    if (stat(dir, &st) != 0)
        return 0;
    if (!S_ISDIR(st.st_mode))
        return 2;
    DIR *d = opendir(dir);
    if (!d)
        return 2;
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(d);
    return n ? 2 : 1;
}

int mp_synth_write(const mp_synth_opts *o, const char *dir)
{
    int rc = 0;
    char *json = NULL;
    int32_t *ids = NULL;
    mp_config cfg = {0};
    mp_tensor_spec *specs = NULL;
    mp_st_decl *decl = NULL;
    int nspecs = 0, made_tmp = 0;
    char tmp[4200], path[4300];

    MP_CHECK(mp_synth_config_json(o, &json));
    int st = dir_state(dir);
    if (st == 2) {
        free(json);
        return mp_errorf(MP_EUSAGE, "synth: output '%s' exists and is not an empty directory", dir);
    }
    snprintf(tmp, sizeof tmp, "%s.synth-tmp.%d", dir, (int)getpid());
    remove_tree_flat(tmp);
    if (mkdir(tmp, 0755) != 0) {
        rc = mp_syserrorf(MP_EIO, "synth: cannot create '%s'", tmp);
        goto out;
    }
    made_tmp = 1;
    MP_CHECK_GOTO(mp_config_parse(json, "synth config.json", &cfg), out);
    snprintf(path, sizeof path, "%s/config.json", tmp);
    MP_CHECK_GOTO(mp_write_file_atomic(path, json, strlen(json)), out);
    MP_CHECK_GOTO(mp_registry_list(&cfg, o->layout, &specs, &nspecs), out);
    decl = calloc((size_t)nspecs, sizeof *decl);
    if (!decl) {
        rc = mp_errorf(MP_ENOMEM, "out of memory");
        goto out;
    }
    uint64_t total = 0;
    for (int i = 0; i < nspecs; i++) {
        decl[i].name = specs[i].name;
        decl[i].dtype = o->dtype;
        decl[i].ndim = specs[i].ndim;
        uint64_t ne = 1;
        for (int k = 0; k < specs[i].ndim; k++)
            ne *= (uint64_t)(decl[i].shape[k] = specs[i].shape[k]);
        total += ne * mp_dtype_size(o->dtype);
    }
    fill_ctx fx = {o, &cfg, specs};
    uint64_t max_shard = o->shards > 1 ? (total + (uint64_t)o->shards - 1) / (uint64_t)o->shards : 0;
    MP_CHECK_GOTO(mp_st_write(tmp, decl, nspecs, max_shard, fill_tensor, &fx), out);
    MP_CHECK_GOTO(make_tokens(o, &ids), out);
    snprintf(path, sizeof path, "%s/tokens.h5", tmp);
    MP_CHECK_GOTO(mp_tokens_write(path, ids, o->n_seq, o->seq_len), out);
    if (st == 1 && rmdir(dir) != 0) {
        rc = mp_syserrorf(MP_EIO, "synth: cannot replace the empty directory '%s'", dir);
        goto out;
    }
    if (rename(tmp, dir) != 0) {
        rc = mp_syserrorf(MP_EIO, "synth: cannot rename '%s' to '%s'", tmp, dir);
        goto out;
    }
    made_tmp = 0;
out:
    if (made_tmp)
        remove_tree_flat(tmp);
    free(json);
    free(ids);
    free(decl);
    free(specs);
    mp_config_free(&cfg);
    return rc;
}
