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
} mp_model;

typedef enum { MP_PROBLEM_MISSING, MP_PROBLEM_SHAPE, MP_PROBLEM_DTYPE, MP_PROBLEM_UNEXPECTED } mp_problem_kind;

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
 * Unexpected extra tensors are reported but are not errors. */
int mp_model_check(const mp_model *m, mp_problem **problems, int *nproblems);

/* Read expert e's projection p of layer l as fp32 [rows, cols] (see mp_expert_block). */
int mp_model_read_expert(const mp_model *m, int l, int e, mp_proj p, float *out);
/* MP_ENUMERIC naming the tensor, the element and the expert when w (as read by
 * mp_model_read_expert) holds a NaN or an infinity; 0 otherwise. */
int mp_model_check_finite(const mp_model *m, int l, int e, mp_proj p, const float *w);

#endif
