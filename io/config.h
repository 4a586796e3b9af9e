/* config.h - the model configuration read from a Hugging Face config.json.
 *
 * Recognises Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3 and
 * Phi-3.5-MoE by "model_type" (falling back to "architectures"), and fills
 * every field the forward pass and the pipeline need, with the defaults the
 * transformers configuration classes use for optional keys. Rope settings are
 * read from either the legacy keys (rope_theta + rope_scaling) or transformers
 * 5's "rope_parameters". A required key that is missing, or a key of the wrong
 * JSON type, is an MP_ECONFIG error naming the file and key.
 * Local; mp_config_free releases the per-layer arrays. */
#ifndef MP_CONFIG_H
#define MP_CONFIG_H

#include "model_config.h"

/* Parse `path` (a config.json). On error *cfg is left zeroed. */
int mp_config_load(const char *path, mp_config *cfg);
/* Parse from a JSON text; `what` names the source in messages. */
int mp_config_parse(const char *json, const char *what, mp_config *cfg);

#endif
