/* fuzz_config.c - libFuzzer harness for config.json parsing.
 *
 * The input is the config text. A config that parses must hold only values the
 * rest of moepack can use: sizes in [1, MP_CONFIG_SIZE_MAX], top-k within the
 * experts, a positive finite rms_norm_eps, at least one MoE layer. Small ones
 * are also run through the registry (both expert layouts) and the forward
 * pass's feature check. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "config.h"
#include "error.h"
#include "forward.h"
#include "registry.h"

static int size_ok(int v) { return v >= 1 && v <= MP_CONFIG_SIZE_MAX; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mp_config c;
    if (mp_config_parse_n((const char *)data, size, "fuzz/config.json", &c) == 0) {
        if (!size_ok(c.hidden) || !size_ok(c.n_layers) || !size_ok(c.n_heads) || !size_ok(c.n_kv_heads) ||
            !size_ok(c.head_dim) || !size_ok(c.vocab) || !size_ok(c.n_experts) || !size_ok(c.top_k) ||
            !size_ok(c.moe_ffn) || c.top_k > c.n_experts || !(c.norm_eps > 0) || !isfinite(c.norm_eps) ||
            mp_config_n_moe_layers(&c) < 1 || !(c.rope_theta > 0) || !isfinite(c.rope_theta))
            abort();
        if ((int64_t)c.n_layers * (c.n_experts + 8) <= 4096)
            for (int layout = 0; layout < 2; layout++) {
                mp_tensor_spec *specs = NULL;
                int n = 0;
                if (mp_registry_list(&c, (mp_layout)layout, &specs, &n) == 0) {
                    for (int i = 0; i < n; i++)
                        for (int d = 0; d < specs[i].ndim; d++)
                            if (specs[i].shape[d] < 0)
                                abort();
                    mp_block_loc b;
                    for (int l = 0; l < c.n_layers; l++)
                        if (c.is_moe[l])
                            mp_expert_block(&c, (mp_layout)layout, l, c.n_experts - 1, MP_PROJ_DOWN, &b);
                }
                free(specs);
            }
        mp_forward_supported(&c);
        mp_config_free(&c);
    }
    mp_error_clear();
    return 0;
}
