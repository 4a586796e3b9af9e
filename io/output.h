/* output.h - the compressed model on disk (DESIGN section 6): HDF5 shards and index.json.
 *
 * output.dir holds moepack-000NN-of-000MM.h5 shards and index.json. A shard is an HDF5 file with
 *   /layers/{l}/moe/base/{gate,up,down}/{qweight,scales,zeros}          (qunit.h, qtensor_h5.h)
 *   /layers/{l}/moe/experts/{e}/{gate,up,down}/{U,V}/{qweight,scales,zeros}
 *   /layers/{l}/moe/shared/{gate,up,down}/{qweight,scales,zeros}
 *   /layers/{l}/mlp/{gate,up,down}/{qweight,scales,zeros}   the dense MLP of a non-MoE layer, quantized
 *             like the shared expert (qunit.h's dense.h5; format_version 2: version 1 copied it as tensors)
 *   /layers/{l}/moe/router, /layers/{l}/moe/router_bias, /layers/{l}/moe/shared_gate
 *   /layers/{l}/attn/<name after self_attn.>, /layers/{l}/mlp/<name after mlp.> (other dense-layer tensors),
 *   /layers/{l}/<norm name>, /embed, /norm, /norm_bias, /lm_head, /lm_head_bias, /extra/<HF name>
 *   /moepack: attributes version, format_version, fingerprint, model_fingerprint, budget_bytes,
 *             budget_bits_per_weight, bytes_used, moe_weights, bits_per_weight, predicted_loss,
 *             allocation (JSON text), packing, shard, shards; datasets moe_layers int32 [L] and
 *             tokens_per_expert int64 [L, E (+1: the shared expert's tokens)]
 * The non-MoE tensors are copied in their stored dtype: float32/float64 as IEEE types, float16 as
 * the IEEE half type, bfloat16 (no HDF5 type) as uint16 holding the bf16 bit patterns, float8 as
 * uint8; each carries the attributes dtype ("bfloat16", "float16", "float32", ...), shape and
 * hf_name (the checkpoint's tensor name).
 *
 * Items (a non-MoE tensor, or one quantize unit: a subtree copied from the unit file) are listed in
 * the checkpoint's order (mp_out_items: the registry's order, a MoE layer's units where its experts
 * are, then tensors the registry does not know under /extra) and packed in that order into shards
 * of at most shard_bytes (mp_out_pack; an item larger than that gets a shard of its own). The sizes
 * are those of the unit files and the tensors, so the assignment depends on the contents alone,
 * never on the number of ranks. Shards are written under a temporary name (.NAME.tmp), fsync'ed and
 * renamed; index.json (rank 0, last, atomically) maps every dataset to its shard ("weight_map") and
 * every quantize unit's group to its shard ("units": a unit is never split), and records the
 * shards' sizes and XXH64, the source's tensor list (names, dtypes, shapes, expert layout, for
 * export), config.json's text, the formats, the per-layer allocation and the /moepack numbers.
 * Local. */
#ifndef MP_OUTPUT_H
#define MP_OUTPUT_H
#include <stdint.h>
#include <stdio.h>

#include "job.h"
#include "model.h"

#define MP_OUT_FORMAT_VERSION 2

typedef enum { MP_ITEM_TENSOR, MP_ITEM_UNIT } mp_item_kind;

typedef struct {
    mp_item_kind kind;
    int tensor;         /* TENSOR: index into the checkpoint's tensors (m->ck->tensors) */
    int layer, unit;    /* UNIT: layer, unit (-1 base, 0..E-1 expert, E shared, MP_UNIT_DENSE a dense MLP) */
    char path[384];     /* where it lands in a shard: "/embed", "/layers/3/moe/experts/5" */
    int64_t data_bytes; /* tensor data (UNIT: its blocks' stored bytes) */
    int64_t pack_bytes; /* data + HDF5 metadata, what packing counts */
    int shard;
} mp_out_item;

typedef struct {
    mp_out_item *items;
    int n, nshards;
    int delta, shared; /* the units present: a base per layer, a quantized shared expert */
} mp_out_plan;

/* The numbers of /moepack (computed by rank 0, the same in every shard). */
typedef struct {
    uint64_t fingerprint, model_fingerprint;
    double budget_bytes, budget_bits, predicted_loss;
    int64_t bytes_used, moe_weights; /* moe_weights: every quantized weight (experts, shared, dense MLPs) */
    int n_moe, cols;       /* MoE layers; columns of tokens (E, +1 with a shared expert) */
    char allocation[2048]; /* JSON summary: tensors, weights and bytes per format; ranks */
} mp_out_meta;

/* The items of model m (sizes not yet known for units); delta: units have a base; the shared expert is
 * a unit when the config has one. */
int mp_out_items(const mp_model *m, int delta, mp_out_plan *p);
void mp_out_plan_free(mp_out_plan *p);
/* Fill the units' sizes from their files under unit_dir (layerLLLL/<qunit file>). */
int mp_out_unit_sizes(mp_out_plan *p, const mp_model *m, const char *unit_dir);
/* Assign shards in item order (sizes must be known). */
void mp_out_pack(mp_out_plan *p, double shard_bytes);
/* "moepack-00002-of-00005.h5" (k from 0) */
void mp_out_shard_name(int k, int nshards, char *buf, int cap);

/* The /moepack numbers: budget from the job (budget.bytes, else bits_per_weight over moe_weights),
 * predicted loss and summary from the allocations under alloc_dir, tokens per expert [n_moe * cols]
 * (malloc'ed) from the statistics under stats_dir, bytes_used from the plan's units. */
int mp_out_meta_collect(const mp_model *m, const mp_job *job, const mp_out_plan *p, const char *alloc_dir,
                        const char *stats_dir, mp_out_meta *meta, int64_t **tokens);

/* Write shard k of the plan into dir (temporary name with its disk space reserved first, fsync, rename);
 * *hash = its XXH64, *size its bytes. MP_EIO naming the shard on a full disk, nothing left under the
 * final name and no temporary file. */
int mp_out_write_shard(const char *dir, const mp_out_plan *p, int k, const mp_model *m, const char *unit_dir,
                       const mp_out_meta *meta, const int64_t *tokens, uint64_t *hash, int64_t *size);

/* Before shards are replaced: remove dir/index.json (so no index ever names a shard of another
 * result) and leftover temporaries. */
int mp_out_begin(const char *dir);
/* The shards' summed bytes as they were written (index.json's metadata.total_size; the validation's
 * attributes, added later, are not counted). */
int mp_out_written_bytes(const char *dir, double *bytes);
/* After the shards: remove shards of this name pattern that the plan does not have. */
int mp_out_prune(const char *dir, int nshards);
/* index.json's text into tmp_path (not yet under its name; the caller commits it with
 * mp_out_index_commit after its fault point). */
int mp_out_index_write(const char *tmp_path, const mp_out_plan *p, const mp_model *m, const mp_job *job,
                       const char *unit_dir, const char *alloc_dir, const mp_out_meta *meta, const uint64_t *hashes,
                       const int64_t *sizes);
int mp_out_index_commit(const char *tmp_path, const char *dir);

/* Before a job: an output.dir whose index.json was made from another model is MP_EMISMATCH (naming
 * it) unless fresh; with fresh, an existing result is removed (index.json first). An unreadable
 * index.json is MP_EFORMAT unless fresh. Notes go to `notes`. */
int mp_out_claim(const char *dir, uint64_t model_fp, int fresh, FILE *notes);
/* *ok = 1 when dir/index.json carries fingerprint fp and every shard it lists has its recorded size
 * and XXH64; else 0 with the reason in why (empty when there is no index.json). */
int mp_out_intact(const char *dir, uint64_t fp, int *ok, char *why, int cap);

/* The validate stage's results in an existing output: validation.json (atomically), then in every shard
 * listed in index.json the /moepack attributes `validation` (the JSON text) and validation_<key> (fp64)
 * for keys[n] / vals[n], then index.json (atomically, last) with the shards' new sizes and XXH64 and
 * "validation": the JSON object plus "fingerprint" (fp, the validate stage's). A crash in between
 * leaves checksums that mp_out_intact refuses, so the output is written again. Local (rank 0). */
int mp_out_record_validation(const char *dir, uint64_t fp, const char *json, const char *const *keys,
                             const double *vals, int n);
/* *ok = 1 when dir/index.json records a validation with fingerprint fp and validation.json exists. */
int mp_out_validation_current(const char *dir, uint64_t fp, int *ok);

#endif
