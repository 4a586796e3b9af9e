/* model_config.c - architecture names and small helpers of mp_config (see model_config.h). */
#include "model_config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const struct {
    mp_arch arch;
    const char *model_type;
    const char *architecture;
} arch_table[] = {
    {MP_ARCH_MIXTRAL, "mixtral", "MixtralForCausalLM"},
    {MP_ARCH_QWEN2_MOE, "qwen2_moe", "Qwen2MoeForCausalLM"},
    {MP_ARCH_QWEN3_MOE, "qwen3_moe", "Qwen3MoeForCausalLM"},
    {MP_ARCH_OLMOE, "olmoe", "OlmoeForCausalLM"},
    {MP_ARCH_DEEPSEEK_V2, "deepseek_v2", "DeepseekV2ForCausalLM"},
    {MP_ARCH_DEEPSEEK_V3, "deepseek_v3", "DeepseekV3ForCausalLM"},
    {MP_ARCH_PHIMOE, "phimoe", "PhimoeForCausalLM"}, /* published: PhiMoEForCausalLM (matched ignoring case) */
    {MP_ARCH_DEEPSEEK, "deepseek", "DeepseekForCausalLM"},
};
#define N_ARCH ((int)(sizeof arch_table / sizeof arch_table[0]))

int mp_arch_from_name(const char *model_type, mp_arch *out)
{
    for (int i = 0; i < N_ARCH; i++)
        if (strcmp(model_type, arch_table[i].model_type) == 0) {
            *out = arch_table[i].arch;
            return 0;
        }
    return -1;
}

int mp_arch_from_class(const char *cls, mp_arch *out)
{
    for (int i = 0; i < N_ARCH; i++)
        if (strcasecmp(cls, arch_table[i].architecture) == 0) {
            *out = arch_table[i].arch;
            return 0;
        }
    return -1;
}

const char *mp_arch_class(mp_arch a)
{
    for (int i = 0; i < N_ARCH; i++)
        if (arch_table[i].arch == a)
            return arch_table[i].architecture;
    return "?";
}

const char *mp_arch_name(mp_arch a)
{
    for (int i = 0; i < N_ARCH; i++)
        if (arch_table[i].arch == a)
            return arch_table[i].model_type;
    return "?";
}

void mp_config_free(mp_config *cfg)
{
    free(cfg->is_moe);
    free(cfg->rope_short_factor);
    free(cfg->rope_long_factor);
    cfg->is_moe = NULL;
    cfg->rope_short_factor = cfg->rope_long_factor = NULL;
}

int mp_config_n_moe_layers(const mp_config *cfg)
{
    int n = 0;
    for (int l = 0; l < cfg->n_layers; l++)
        n += cfg->is_moe[l];
    return n;
}
