/* export.h - `moepack export`: a moepack output as a Hugging Face checkpoint.
 *
 * Writes into `dir` (which must not exist, or be empty) the source's config.json byte for byte (from
 * index.json) and every tensor of the source checkpoint under its original name, shape and dtype
 * (io/st_write.h: model.safetensors, or shards of at most max_shard_bytes with
 * model.safetensors.index.json): non-MoE tensors as stored in the shards (exact), routed experts
 * rebuilt by io/outdir.h (base + U V folded back, per expert or in the fused [E, 2f, d] / [E, d, f]
 * layout the source had) and rounded to the source dtype, the shared expert dequantized. Float8
 * experts are written as bfloat16 (safetensors writers here do not produce float8). The output records
 * no paths (its bytes do not depend on where the model was), so the small files tools expect next to
 * the weights (tokenizer*, generation_config.json, special_tokens_map.json, vocab files) are copied from
 * `source` (the original checkpoint directory) when given; `notes` says which. Nothing is left in dir
 * on failure but what was complete before the failing file. Local. */
#ifndef MP_EXPORT_H
#define MP_EXPORT_H
#include <stdint.h>
#include <stdio.h>

int mp_export_safetensors(const char *outdir, const char *dir, const char *source, uint64_t max_shard_bytes,
                          FILE *notes);

#endif
