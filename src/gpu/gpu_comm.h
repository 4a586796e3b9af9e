/* gpu_comm.h - sums of fp64 values over the ranks of a job with NCCL, one GPU per rank.
 *
 * No MPI here (src/ never calls MPI): the ncclUniqueId travels as MP_GPU_COMM_ID_BYTES opaque bytes, made
 * on one rank by mp_gpu_comm_unique_id and broadcast by the caller (mpi/metric_reduce.c does it over MPI).
 * mp_gpu_comm_create and mp_gpu_comm_sum are collective over the `nranks` processes that share the id;
 * the rest is local. Summation order is NCCL's: a value present on one rank and 0 on all others sums
 * exactly, partial sums of several ranks are reproducible for a fixed rank count and topology only.
 * Built without NCCL (or without CUDA) mp_gpu_comm_available() is 0 and the other calls fail with
 * MP_EUSAGE. Errors: MP_EUSAGE (no NCCL, bad device or arguments), MP_ENOMEM, MP_EINTERNAL (a CUDA or
 * NCCL error, named). */
#ifndef MP_GPU_COMM_H
#define MP_GPU_COMM_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

#define MP_GPU_COMM_ID_BYTES 128 /* sizeof(ncclUniqueId) */

/* 1 when this build has NCCL (the machine may still have no GPU). */
int mp_gpu_comm_available(void);
/* The device a rank uses: its node-local rank, when the node has a GPU for each of its local_size ranks;
 * else MP_EUSAGE saying how many GPUs and ranks there are. Local. */
int mp_gpu_device_for_local_rank(int local_rank, int local_size, int *device);
/* A fresh NCCL id (ncclGetUniqueId), on one rank. */
int mp_gpu_comm_unique_id(unsigned char id[MP_GPU_COMM_ID_BYTES]);

typedef struct mp_gpu_comm mp_gpu_comm;
/* Collective: selects `device`, creates the communicator of `nranks` ranks (this one is `rank`). */
int mp_gpu_comm_create(const unsigned char id[MP_GPU_COMM_ID_BYTES], int nranks, int rank, int device,
                       mp_gpu_comm **out);
/* Collective: values[count] (host memory) := their sum over the ranks; returns when the sum is back. */
int mp_gpu_comm_sum(mp_gpu_comm *c, double *values, int64_t count);
void mp_gpu_comm_destroy(mp_gpu_comm *c);

#ifdef __cplusplus
}
#endif
#endif
