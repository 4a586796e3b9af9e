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
/* owner rank of unit u (0..E-1 routed, E = shared) of layer l; the dense MLP of a non-MoE layer
 * (u = MP_UNIT_DENSE, model_config.h) is owned like unit 0 */
int mp_unit_owner(int l, int u, int n_experts, int nranks);

enum { MP_PLAN_CALIBRATE, MP_PLAN_DECOMPOSE, MP_PLAN_NSTAGES };

typedef struct {
    int64_t peak_bytes;  /* resident memory of the busiest rank */
    int64_t ckpt_bytes;  /* checkpoint bytes the busiest rank writes */
    int64_t ckpt_total;  /* checkpoint bytes of the stage, all ranks */
    int64_t out_bytes;   /* output bytes (the stages so far write none) */
    double flops;        /* floating-point work of the busiest rank */
} mp_plan_stage;

typedef struct {
    int ranks, n_seq, seq_len, moe_layers, units_per_rank; /* units: (MoE layer, expert) of the busiest rank */
    int64_t seqs_per_rank;
    int64_t model_bytes;     /* the checkpoint as stored */
    double delta_fraction;   /* the rank policy's fraction */
    int sample_tokens;       /* calibration.sample_tokens: tokens kept per unit */
    mp_plan_stage st[MP_PLAN_NSTAGES];
} mp_plan;

/* The plan of a job on `ranks` ranks: n_seq x seq_len calibration tokens, model_bytes on disk, the
 * decomposition at `fraction` (its largest rank), sample_tokens kept per unit (calibration.sample_tokens). */
void mp_plan_make(const mp_config *c, int ranks, int n_seq, int seq_len, int64_t model_bytes, double fraction,
                  int sample_tokens, mp_plan *p);
/* A table for people, or JSON. */
void mp_plan_print(const mp_plan *p, const mp_config *c, int json, FILE *out);

#endif
