/* plan.h - the plan of a job (DESIGN section 1): who does what, and what it costs.
 *
 * Ownership (local functions, the same on every rank):
 *  - calibration sequences are split into contiguous, near-equal ranges, one
 *    per rank (mp_seq_range);
 *  - the units of MoE layer l (routed experts 0..E-1, the shared expert as
 *    unit E) are owned round-robin: unit u -> rank (l (E + 1) + u) mod P.
 *    Every expert has the same size, so this balances bytes, is stable for a
 *    rank count, and for P > 1 no rank owns all experts of a layer.
 *
 * Estimates (mp_plan_make): per rank and stage, the peak resident memory,
 * the checkpoint bytes written and the output bytes, derived from the
 * buffers the stages allocate (see plan.c for the terms), so that a cluster
 * user can choose --ntasks, --mem and --time before submitting (`moepack
 * plan`). Local. */
#ifndef MP_PLAN_H
#define MP_PLAN_H
#include <stdint.h>
#include <stdio.h>

#include "model_config.h"

/* the half-open range [lo, hi) of n items taken by `rank` of `size` (contiguous, near-equal) */
void mp_shard_range(int64_t n, int rank, int size, int64_t *lo, int64_t *hi);
/* the calibration sequences of `rank` */
void mp_seq_range(int64_t n_seq, int rank, int size, int64_t *lo, int64_t *hi);
/* owner rank of unit u (0..E-1 routed, E = shared) of layer l */
int mp_unit_owner(int l, int u, int n_experts, int nranks);

#endif
