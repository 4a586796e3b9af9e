/* test_config.c - config.json parsing of the published checkpoints of every
 * supported architecture (tests/fixtures/configs): the fields the pipeline
 * needs, and the total / active parameter counts implied by the registry's
 * tensor shapes against the numbers the model cards publish. */
#include "config.h"
#include "forward.h"
#include "registry.h"
#include "testutil.h"

static void counts(const mp_config *c, double *total, double *active)
{
    mp_tensor_spec *s = NULL;
    int n = 0;
    CHECK_OK(mp_registry_list(c, MP_LAYOUT_PER_EXPERT, &s, &n));
    double t = 0, experts = 0;
    for (int i = 0; i < n; i++) {
        double ne = 1;
        for (int k = 0; k < s[i].ndim; k++)
            ne *= (double)s[i].shape[k];
        t += ne;
        if (s[i].role == MP_ROLE_EXPERT)
            experts += ne;
    }
    free(s);
    *total = t;
    *active = t - experts + (double)mp_config_n_moe_layers(c) * c->top_k * (double)mp_expert_params(c);
}

typedef struct {
    const char *file;
    mp_arch arch;
    int layers, moe_layers, experts, top_k, hidden, ffn, shared_ffn;
    double total, active; /* published, billions */
    int active_wo_embed;  /* the published active count leaves out the input embedding table */
} expect;

int main(void)
{
    static const expect E[] = {
        {"mixtral-8x7b", MP_ARCH_MIXTRAL, 32, 32, 8, 2, 4096, 14336, 0, 46.7, 12.9, 0},
        {"qwen1.5-moe-a2.7b", MP_ARCH_QWEN2_MOE, 24, 24, 60, 4, 2048, 1408, 5632, 14.3, 2.7, 0},
        {"qwen3-30b-a3b", MP_ARCH_QWEN3_MOE, 48, 48, 128, 8, 2048, 768, 0, 30.5, 3.3, 0},
        {"olmoe-1b-7b-0924", MP_ARCH_OLMOE, 16, 16, 64, 8, 2048, 1024, 0, 6.9, 1.3, 0},
        {"deepseek-v2-lite", MP_ARCH_DEEPSEEK_V2, 27, 26, 64, 6, 2048, 1408, 2816, 15.7, 2.4, 1},
        {"deepseek-v3", MP_ARCH_DEEPSEEK_V3, 61, 58, 256, 8, 7168, 2048, 2048, 671, 37, 0},
        {"phi-3.5-moe", MP_ARCH_PHIMOE, 32, 32, 16, 2, 4096, 6400, 0, 41.9, 6.6, 0},
    };
    for (size_t i = 0; i < sizeof E / sizeof E[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/configs/%s.json", MP_FIXTURES, E[i].file);
        mp_config c;
        CHECK_OK(mp_config_load(path, &c));
        CHECK(c.arch == E[i].arch);
        CHECK(c.n_layers == E[i].layers && mp_config_n_moe_layers(&c) == E[i].moe_layers);
        CHECK(c.n_experts == E[i].experts && c.top_k == E[i].top_k);
        CHECK(c.hidden == E[i].hidden && c.moe_ffn == E[i].ffn && c.shared_ffn == E[i].shared_ffn);
        double total, active;
        counts(&c, &total, &active);
        if (E[i].active_wo_embed)
            active -= (double)c.vocab * c.hidden;
        printf("%-20s total %8.3fB (published %gB)  active %7.3fB (published %gB)\n", E[i].file, total / 1e9,
               E[i].total, active / 1e9, E[i].active);
        CHECK(fabs(total / 1e9 - E[i].total) <= 0.01 * E[i].total + 0.05);
        CHECK(fabs(active / 1e9 - E[i].active) <= 0.03 * E[i].active + 0.05);
        CHECK_OK(mp_forward_supported(&c)); /* every published config runs through the forward pass */
        mp_config_free(&c);
    }

    /* architecture-specific fields */
    mp_config c;
    CHECK_OK(mp_config_load(MP_FIXTURES "/configs/deepseek-v3.json", &c));
    CHECK(c.q_lora_rank == 1536 && c.kv_lora_rank == 512 && c.qk_nope_dim == 128 && c.qk_rope_dim == 64);
    CHECK(c.v_head_dim == 128 && c.n_group == 8 && c.topk_group == 4 && c.first_k_dense == 3);
    CHECK(!strcmp(c.topk_method, "noaux_tc") && !strcmp(c.scoring_func, "sigmoid") && c.norm_topk_prob);
    CHECK_NEAR(c.routed_scaling, 2.5, 0);
    CHECK(!strcmp(c.rope_type, "yarn"));
    CHECK_NEAR(c.rope_factor, 40, 0);
    CHECK(c.rope_orig_max_pos == 4096);
    CHECK(!c.is_moe[2] && c.is_moe[3]);
    CHECK(c.rope_interleave && c.rope_mscale_all_dim == 1.0 && c.rope_has_factor);
    mp_config_free(&c);
    CHECK_OK(mp_config_load(MP_FIXTURES "/configs/phi-3.5-moe.json", &c));
    CHECK(c.layernorm && c.attn_bias && c.lm_head_bias && !strcmp(c.rope_type, "longrope"));
    CHECK(c.n_rope_short == 64 && c.n_rope_long == 64 && c.rope_short_factor && c.rope_long_factor);
    if (c.rope_long_factor)
        CHECK_NEAR(c.rope_long_factor[63], 32.5, 1e-12);
    CHECK(c.rope_short_mscale > 1 && c.rope_long_mscale > 1 && c.sliding_window > 0 && c.rope_orig_max_pos == 4096);
    mp_config_free(&c);
    CHECK_OK(mp_config_load(MP_FIXTURES "/configs/qwen1.5-moe-a2.7b.json", &c));
    CHECK(c.shared_gate && c.n_shared == 1 && c.attn_bias && c.dense_ffn == 5632);
    mp_config_free(&c);
    CHECK_OK(mp_config_load(MP_FIXTURES "/configs/olmoe-1b-7b-0924.json", &c));
    CHECK(c.qk_norm == MP_QKNORM_FULL && c.clip_qkv == 0 && !c.norm_topk_prob);
    mp_config_free(&c);
    CHECK_OK(mp_config_load(MP_FIXTURES "/configs/qwen3-30b-a3b.json", &c));
    CHECK(c.qk_norm == MP_QKNORM_HEAD && c.head_dim == 128 && c.norm_topk_prob);
    mp_config_free(&c);
    return t_done("config");
}
