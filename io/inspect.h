/* inspect.h - summary of a checkpoint for `moepack inspect`.
 *
 * mp_inspect_collect opens DIR without the strict tensor check, then gathers
 * the architecture, which layers are MoE, expert counts, parameter counts
 * (total, routed-expert, active per token = non-expert + top_k experts per MoE
 * layer), tensors and bytes per dtype, and every problem the registry check
 * finds. mp_inspect_print writes it as text or JSON. Local (no MPI). */
#ifndef MP_INSPECT_H
#define MP_INSPECT_H
#include <stdint.h>
#include <stdio.h>

#include "dtype.h"
#include "model.h"

typedef struct {
    mp_model *model;
    int64_t params_total, params_expert, params_shared, params_active;
    int64_t n_tensors;
    uint64_t bytes_total;
    int64_t dtype_tensors[MP_DT_COUNT];
    uint64_t dtype_bytes[MP_DT_COUNT];
    mp_problem *problems;
    int nproblems, nerrors; /* nerrors: problems other than unexpected extra tensors */
} mp_inspect_info;

int mp_inspect_collect(const char *dir, mp_inspect_info *info);
/* A config.json alone (no weights): the parameter counts (total, routed experts, shared, active per token)
 * implied by the registry's tensor shapes, as text or JSON, e.g. to size a job before a download. */
int mp_inspect_config(const char *path, int json, FILE *out);
int mp_inspect_print(const mp_inspect_info *info, int json, FILE *out);
void mp_inspect_free(mp_inspect_info *info);
/* 0 when the checkpoint has every expected tensor with the right shape,
 * else MP_ENOENT (a tensor is missing) or MP_EFORMAT (wrong shape/dtype),
 * with a message naming the first problem. */
int mp_inspect_status(const mp_inspect_info *info);

#endif
