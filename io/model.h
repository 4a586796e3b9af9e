/* model.h - an opened Hugging Face MoE checkpoint: config + tensors + layout.
 *
 * mp_model_open reads DIR/config.json and the safetensors files, detects the
 * expert layout (per-expert or fused) and checks that every tensor the
 * registry expects exists with the right shape and a floating-point dtype.
 * mp_model_check collects all problems (for `moepack inspect`) instead of
 * stopping at the first. Reads are memory-mapped; no tensor is loaded whole
 * unless asked for. Local (no MPI); mp_model_close releases everything. */
#ifndef MP_MODEL_H
#define MP_MODEL_H

#include "config.h"
#include "registry.h"
#include "safetensors.h"

typedef struct {
    char *dir;
    mp_config cfg;
    mp_ckpt *ck;
    mp_layout layout;
    mp_tensor_spec *specs; /* expected tensors */
    int nspecs;
    /* The output head, as transformers 5 loads it: "lm_head.weight", or "model.embed_tokens.weight"
     * when tie_word_embeddings is true and the file has no lm_head.weight or one equal to the
     * embedding. With tie_word_embeddings true and a *different* lm_head.weight in the file,
     * transformers does not tie (PreTrainedModel.tie_weights: "both are present in the checkpoints
     * with different values, so we will NOT tie them") and uses the file's tensor: so do we, and
     * head_untied is set (mp_model_check reports it as a note). */
    char head_name[MP_NAME_MAX];
    int head_untied;
} mp_model;

typedef enum {
    MP_PROBLEM_MISSING,
    MP_PROBLEM_SHAPE,
    MP_PROBLEM_DTYPE,
    MP_PROBLEM_UNEXPECTED, /* an extra tensor: reported, not an error */
    MP_PROBLEM_NOTE,       /* something the user should know, not an error (e.g. head_untied) */
} mp_problem_kind;

/* 1 for the kinds that make a checkpoint unusable */
static inline int mp_problem_is_error(mp_problem_kind k)
{
    return k == MP_PROBLEM_MISSING || k == MP_PROBLEM_SHAPE || k == MP_PROBLEM_DTYPE;
}

typedef struct {
    mp_problem_kind kind;
    char text[512];
} mp_problem;

/* Open without checking tensors (config and headers are still validated). */
int mp_model_open_unchecked(const char *dir, mp_model **out);
/* Open and require that the check finds no missing/mis-shaped tensor. */
int mp_model_open(const char *dir, mp_model **out);
void mp_model_close(mp_model *m);

/* Compare the checkpoint with the registry. *problems is malloc'ed.
 * Unexpected extra tensors and notes are reported but are not errors. */
int mp_model_check(const mp_model *m, mp_problem **problems, int *nproblems);

/* Read expert e's projection p of layer l as fp32 [rows, cols] (see mp_expert_block). */
int mp_model_read_expert(const mp_model *m, int l, int e, mp_proj p, float *out);
/* MP_ENUMERIC naming the tensor, the element and the expert when w (as read by
 * mp_model_read_expert) holds a NaN or an infinity; 0 otherwise. */
int mp_model_check_finite(const mp_model *m, int l, int e, mp_proj p, const float *w);

#endif
