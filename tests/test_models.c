/* test_models.c - every fixture checkpoint written by transformers'
 * save_pretrained opens cleanly, its config matches the facts recorded in
 * manifest.json by the generator, and the same weights saved in different
 * ways (per-expert vs fused 3-D experts, one file vs 4 shards, f32 vs bf16)
 * read back as the same values. */
#include <cjson/cJSON.h>
#include <unistd.h>

#include "fsutil.h"
#include "inspect.h"
#include "model.h"
#include "testutil.h"

static int jint(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valueint : 0; /* null -> 0 */
}

static void check_config(const char *name, const cJSON *f, const mp_model *m)
{
    const mp_config *c = &m->cfg;
    fprintf(stderr, "  %s: %s, %s layout, %d files\n", name, mp_arch_name(c->arch), mp_layout_name(m->layout),
            m->ck->nfiles);
    CHECK(c->n_layers == jint(f, "num_layers"));
    CHECK(c->hidden == jint(f, "hidden"));
    CHECK(c->n_experts == jint(f, "num_experts"));
    CHECK(c->top_k == jint(f, "top_k"));
    CHECK(c->moe_ffn == jint(f, "expert_ffn"));
    CHECK(c->vocab == jint(f, "vocab"));
    CHECK(c->n_heads == jint(f, "num_attention_heads"));
    CHECK(c->n_kv_heads == jint(f, "num_key_value_heads"));
    CHECK(c->tie_embeddings == cJSON_IsTrue(cJSON_GetObjectItem(f, "tie_word_embeddings")));
    if (jint(f, "dense_ffn"))
        CHECK(c->dense_ffn == jint(f, "dense_ffn"));
    CHECK(c->shared_ffn == jint(f, "shared_expert_ffn"));
    CHECK_NEAR(c->norm_eps, cJSON_GetObjectItem(f, "rms_norm_eps")->valuedouble, 1e-12);
    CHECK_NEAR(c->rope_theta, cJSON_GetObjectItem(f, "rope_theta")->valuedouble, 1e-9);
    const cJSON *ml = cJSON_GetObjectItem(f, "moe_layers");
    CHECK(mp_config_n_moe_layers(c) == cJSON_GetArraySize(ml));
    for (int i = 0; i < cJSON_GetArraySize(ml); i++)
        CHECK(c->is_moe[cJSON_GetArrayItem(ml, i)->valueint]);
    const char *lay = cJSON_GetObjectItem(f, "layout")->valuestring;
    CHECK((m->layout == MP_LAYOUT_FUSED) == (strcmp(lay, "fused") == 0));
    CHECK((m->ck->nfiles > 1) == cJSON_IsTrue(cJSON_GetObjectItem(f, "sharded")));
    CHECK(m->ck->sharded == cJSON_IsTrue(cJSON_GetObjectItem(f, "sharded")));
}

/* max |a - b| / max(|b|, tiny) over all experts of two checkpoints of the same weights */
static double expert_diff(const mp_model *a, const mp_model *b)
{
    const mp_config *c = &a->cfg;
    size_t n = (size_t)c->hidden * (size_t)c->moe_ffn;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    double worst = 0;
    int64_t compared = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int e = 0; c->is_moe[l] && e < c->n_experts; e++)
            for (int p = 0; p < 3; p++) {
                CHECK_OK(mp_model_read_expert(a, l, e, (mp_proj)p, x));
                CHECK_OK(mp_model_read_expert(b, l, e, (mp_proj)p, y));
                for (size_t i = 0; i < n; i++) {
                    double d = fabs((double)x[i] - y[i]) / fmax(fabs((double)y[i]), 1e-30);
                    worst = fmax(worst, d);
                    compared++;
                }
            }
    CHECK(compared > 0);
    free(x);
    free(y);
    return worst;
}

static mp_model *open_fixture(const char *name)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", MP_FIXTURES, name);
    mp_model *m = NULL;
    CHECK_OK(mp_model_open(dir, &m));
    return m;
}

/* `moepack inspect --json` agrees with the library's numbers */
static void check_inspect_json(const char *name)
{
    char cmd[2400], out[600], dir[512];
    snprintf(dir, sizeof dir, "%s/%s", MP_FIXTURES, name);
    snprintf(out, sizeof out, "%s/inspect.%d.json", MP_TEST_TMP, (int)getpid());
    /* the child initialises MPI, whose leftovers are not leak-checked (see tests/CMakeLists.txt) */
    snprintf(cmd, sizeof cmd, "ASAN_OPTIONS=detect_leaks=0 '%s' inspect '%s' --json > '%s'", MOEPACK_BIN, dir, out);
    CHECK(system(cmd) == 0);
    char *text = NULL;
    size_t n;
    CHECK_OK(mp_read_file(out, &text, &n));
    unlink(out);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    CHECK(j != NULL);
    mp_inspect_info info;
    CHECK_OK(mp_inspect_collect(dir, &info));
    if (j && info.model) {
        const cJSON *p = cJSON_GetObjectItem(j, "parameters");
        CHECK(cJSON_GetObjectItem(p, "total")->valuedouble == (double)info.params_total);
        CHECK(cJSON_GetObjectItem(p, "active_per_token")->valuedouble == (double)info.params_active);
        CHECK(cJSON_GetObjectItem(j, "bytes")->valuedouble == (double)info.bytes_total);
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")));
        CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(j, "moe_layers")) == mp_config_n_moe_layers(&info.model->cfg));
        CHECK(!strcmp(cJSON_GetObjectItem(j, "architecture")->valuestring, mp_arch_name(info.model->cfg.arch)));
    }
    mp_inspect_free(&info);
    cJSON_Delete(j);
    free(text);
}

/* `moepack inspect CONFIG.json --json` (no weights) gives the parameter counts the model cards publish */
static void check_inspect_config(const char *file, double total, double active, int active_wo_embed)
{
    char cmd[2400], out[600];
    snprintf(out, sizeof out, "%s/inspect_cfg.%d.json", MP_TEST_TMP, (int)getpid());
    snprintf(cmd, sizeof cmd, "ASAN_OPTIONS=detect_leaks=0 '%s' inspect '%s/configs/%s.json' --json > '%s'",
             MOEPACK_BIN, MP_FIXTURES, file, out);
    CHECK(system(cmd) == 0);
    char *text = NULL;
    size_t n;
    CHECK_OK(mp_read_file(out, &text, &n));
    unlink(out);
    cJSON *j = text ? cJSON_Parse(text) : NULL, *p = cJSON_GetObjectItem(j, "parameters");
    CHECK(p != NULL);
    if (p) {
        double t = cJSON_GetObjectItem(p, "total")->valuedouble / 1e9;
        double a = (cJSON_GetObjectItem(p, "active_per_token")->valuedouble -
                    (active_wo_embed ? cJSON_GetObjectItem(p, "embedding")->valuedouble : 0)) /
                   1e9;
        fprintf(stderr, "  inspect %s: total %.2fB (published %gB), active %.2fB (published %gB)\n", file, t, total, a,
                active);
        CHECK(fabs(t - total) <= 0.005 * total + 0.05);
        CHECK(fabs(a - active) <= 0.03 * active + 0.05);
    }
    cJSON_Delete(j);
    free(text);
}

int main(void)
{
    char *text = NULL;
    size_t n;
    CHECK_OK(mp_read_file(MP_FIXTURES "/manifest.json", &text, &n));
    cJSON *man = cJSON_Parse(text);
    CHECK(man != NULL);
    int models = 0;
    const cJSON *f;
    cJSON_ArrayForEach(f, man)
    {
        mp_model *m = open_fixture(f->string);
        if (!m)
            continue;
        models++;
        check_config(f->string, f, m);
        mp_inspect_info info;
        CHECK_OK(mp_inspect_collect(m->dir, &info));
        CHECK(info.nerrors == 0);
        CHECK(info.params_expert == (int64_t)mp_config_n_moe_layers(&m->cfg) * m->cfg.n_experts *
                                        mp_expert_params(&m->cfg));
        CHECK(info.params_active < info.params_total);
        mp_inspect_free(&info);
        mp_model_close(m);
    }
    CHECK(models == 15);
    check_inspect_json("qwen2_moe_f32");
    check_inspect_json("olmoe_f32_sharded");
    check_inspect_config("deepseek-v2-lite", 15.7, 2.4, 1); /* the card counts active without the embedding */
    check_inspect_config("deepseek-v3", 671, 37, 0);
    check_inspect_config("phi-3.5-moe", 41.9, 6.6, 0);

    /* the same seeds saved differently by transformers */
    static const struct {
        const char *a, *b;
        double tol;
    } same[] = {
        {"mixtral_fused", "mixtral_f32", 0.0},
        {"olmoe_f32_sharded", "olmoe_f32", 0.0},
        {"mixtral_bf16", "mixtral_f32", 1.0 / 256},     /* bf16 rounding: relative error <= 2^-8 */
        {"qwen3_moe_bf16", "qwen3_moe_f32", 1.0 / 256},
    };
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        mp_model *a = open_fixture(same[i].a), *b = open_fixture(same[i].b);
        if (a && b) {
            double d = expert_diff(a, b);
            fprintf(stderr, "  %s vs %s: max relative difference %.3g\n", same[i].a, same[i].b, d);
            CHECK(d <= same[i].tol);
        }
        mp_model_close(a);
        mp_model_close(b);
    }
    /* and different seeds do differ */
    mp_model *a = open_fixture("qwen3_moe_f32");
    if (a) {
        mp_model *b = open_fixture("qwen3_moe_bf16");
        float x[1], y[1];
        mp_block_loc la;
        mp_expert_block(&a->cfg, a->layout, 0, 0, MP_PROJ_GATE, &la);
        CHECK_OK(mp_ckpt_read_f32(a->ck, mp_ckpt_find(a->ck, la.name), 0, 1, x));
        CHECK_OK(mp_ckpt_read_f32(b->ck, mp_ckpt_find(b->ck, la.name), 0, 1, y));
        CHECK(x[0] != 0.0f);
        mp_model_close(b);
    }
    mp_model_close(a);
    cJSON_Delete(man);
    free(text);
    return t_done("models");
}
