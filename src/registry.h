/* registry.h - architecture -> the tensors a checkpoint must hold.
 *
 * For a parsed config and an expert layout, lists every expected tensor with
 * its Hugging Face name, shape and role, and names individual blocks (router,
 * expert projections) for the stages that read them. Two expert layouts:
 *   MP_LAYOUT_PER_EXPERT  `...experts.{e}.w1|w3|w2.weight` (Mixtral, Phi) or
 *                         `...experts.{e}.gate_proj|up_proj|down_proj.weight`
 *   MP_LAYOUT_FUSED       `model.layers.{l}.mlp.experts.gate_up_proj` [E, 2f, d]
 *                         (gate rows first) and `...mlp.experts.down_proj` [E, d, f]
 * Pure naming: no file access. */
#ifndef MP_REGISTRY_H
#define MP_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "model_config.h"

typedef enum { MP_LAYOUT_PER_EXPERT, MP_LAYOUT_FUSED } mp_layout;
typedef enum { MP_PROJ_GATE, MP_PROJ_UP, MP_PROJ_DOWN } mp_proj;
typedef enum {
    MP_ROLE_EMBED,
    MP_ROLE_LM_HEAD,
    MP_ROLE_NORM,
    MP_ROLE_ATTN,
    MP_ROLE_ROUTER,
    MP_ROLE_EXPERT, /* routed expert weights (one expert, or all for fused tensors) */
    MP_ROLE_SHARED, /* shared expert(s) and their gate */
    MP_ROLE_DENSE,  /* MLP of a dense layer */
    MP_ROLE_COUNT
} mp_role;

#define MP_NAME_MAX 160

typedef struct {
    char name[MP_NAME_MAX];
    int ndim;
    int64_t shape[3];
    mp_role role;
    int layer;  /* -1 for model-level tensors */
    int expert; /* routed expert index, -1 otherwise (and for fused tensors) */
} mp_tensor_spec;

const char *mp_layout_name(mp_layout l);
const char *mp_role_name(mp_role r);
const char *mp_proj_name(mp_proj p);

/* Bounds on what a config may imply (checked by mp_registry_list, MP_ECONFIG naming the config file):
 * every tensor at most MP_MAX_ELEMS elements, all together at most 2^52, at most 2^21 tensors. */
#define MP_REGISTRY_MAX_TENSORS (1 << 21)
#define MP_REGISTRY_MAX_PARAMS (INT64_C(1) << 52)

/* Every tensor the checkpoint must contain. *out is malloc'ed (caller frees). */
int mp_registry_list(const mp_config *c, mp_layout layout, mp_tensor_spec **out, int *n);

/* Router weight name of MoE layer l ([E, d]). */
void mp_name_router(const mp_config *c, mp_layout layout, int l, char *buf, size_t cap);

/* Where expert e's projection p of layer l lives: tensor name and the range of
 * elements inside it. The block is [rows, cols] row-major: gate/up are [f, d],
 * down is [d, f]. For the per-expert layout first = 0. */
typedef struct {
    char name[MP_NAME_MAX];
    int64_t first;
    int64_t rows, cols;
} mp_block_loc;
void mp_expert_block(const mp_config *c, mp_layout layout, int l, int e, mp_proj p, mp_block_loc *loc);

/* Number of parameters of one routed expert (3 f d). */
int64_t mp_expert_params(const mp_config *c);

#endif
