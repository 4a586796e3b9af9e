/* metric_reduce.h - sums of per-rank fp64 metric values over MPI_COMM_WORLD: with NCCL on the GPUs when
 * every rank has one, else with MPI (the validation's counters: error sums, KL, token counts).
 *
 * One GPU per rank, chosen by the node-local rank (MPI_Comm_split_type SHARED): NCCL is used only when
 * the build has NCCL and every node has at least as many visible GPUs as ranks. The ncclUniqueId is made
 * on rank 0 and broadcast with MPI; the NCCL calls are in src/gpu/gpu_comm. Determinism: a slot filled by
 * one rank and 0 on the others sums exactly with either backend (lay metric arrays out by owner, e.g.
 * per expert); slots summed from several ranks' partials depend on the backend's order (fixed for a given
 * rank count and backend). All functions are collective over MPI_COMM_WORLD except the getters. A
 * failure inside an NCCL collective aborts the job (mp_mpi_fail) instead of leaving ranks waiting. */
#ifndef MP_METRIC_REDUCE_H
#define MP_METRIC_REDUCE_H
#include <stdint.h>

typedef enum {
    MP_REDUCE_AUTO = 0, /* NCCL when every rank can, else MPI (the reason is kept, see _why) */
    MP_REDUCE_NCCL = 1, /* NCCL or MP_EUSAGE on every rank (the ranks that cannot say why) */
    MP_REDUCE_MPI = 2
} mp_reduce_backend;

typedef struct mp_metric_reducer mp_metric_reducer;
int mp_metric_reducer_create(mp_reduce_backend want, mp_metric_reducer **out);
/* values[count] := their sum over all ranks (count equal on every rank, <= INT_MAX). */
int mp_metric_reducer_sum(mp_metric_reducer *r, double *values, int64_t count);
mp_reduce_backend mp_metric_reducer_backend(const mp_metric_reducer *r); /* NCCL or MPI; local */
int mp_metric_reducer_device(const mp_metric_reducer *r);                /* the rank's GPU, -1 with MPI; local */
/* Why AUTO chose MPI ("" otherwise), e.g. "2 ranks on this node but 0 GPUs visible"; local. */
const char *mp_metric_reducer_why(const mp_metric_reducer *r);
void mp_metric_reducer_destroy(mp_metric_reducer *r);

#endif
