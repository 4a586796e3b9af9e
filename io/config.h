/* config.h - the model configuration read from a Hugging Face config.json.
 *
 * Recognises Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3 and
 * Phi-3.5-MoE by "model_type" (falling back to "architectures"), and fills
 * every field the forward pass and the pipeline need, with the defaults the
 * transformers configuration classes use for optional keys. Rope settings are
 * read from either the legacy keys (rope_theta + rope_scaling) or transformers
 * 5's "rope_parameters". A required key that is missing, a key of the wrong
 * JSON type, or a value that makes no sense (sizes <= 0 or above
 * MP_CONFIG_SIZE_MAX, rms_norm_eps <= 0, non-finite numbers, top-k above the
 * experts, no MoE layer, an unknown rope type, inconsistent heads or groups)
 * is an MP_ECONFIG error naming the file and key; so is a config.json that
 * is not a regular file.
 * Local; mp_config_free releases the per-layer arrays. */
#ifndef MP_CONFIG_H
#define MP_CONFIG_H

#include <stddef.h>

#include "model_config.h"

/* Parse `path` (a config.json). On error *cfg is left zeroed. */
int mp_config_load(const char *path, mp_config *cfg);
/* Parse from a JSON text; `what` names the source in messages. */
int mp_config_parse(const char *json, const char *what, mp_config *cfg);
/* The same for `len` bytes that need not be NUL-terminated. */
int mp_config_parse_n(const char *json, size_t len, const char *what, mp_config *cfg);

#endif
