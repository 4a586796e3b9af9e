/* expert_scan.h - read every routed expert once, sharded over the ranks.
 *
 * The (MoE layer, expert) units are numbered in layer-major order and split
 * into contiguous, near-equal ranges, one per rank (plan.h: mp_shard_range). Each rank
 * reads its experts' gate, up and down matrices as fp32, checks that every
 * value is finite, and computes a 64-bit XXH64 of the fp32 values (gate, up,
 * down in turn) and the three Frobenius norms. Root gathers the records in
 * unit order, so the result - and the combined digest - is the same for any
 * number of ranks. Collective over MPI_COMM_WORLD; a failure on any rank is
 * agreed on and returned on every rank. */
#ifndef MP_EXPERT_SCAN_H
#define MP_EXPERT_SCAN_H
#include <stdint.h>

#include "model.h"

typedef struct {
    int layer, expert;
    uint64_t hash;
    double fro[3]; /* gate, up, down */
} mp_expert_record;

typedef struct {
    int n;                       /* number of units (MoE layers x experts) */
    mp_expert_record *rec;       /* root only: n records in unit order; NULL elsewhere */
    uint64_t digest;             /* root only: XXH64 over the records' hashes in order */
} mp_expert_scan_result;

/* Collective. */
int mp_expert_scan(const mp_model *m, mp_expert_scan_result *out);
void mp_expert_scan_free(mp_expert_scan_result *r);

#endif
