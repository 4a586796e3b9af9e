/* gpu_comm.c - the NCCL sums in a build without CUDA: unavailable, every call says so. */
#include "gpu_comm.h"

#include <stddef.h>

#include "error.h"

#if !MOEPACK_HAVE_CUDA
#define NO_NCCL()                                                                                                      \
    mp_errorf(MP_EUSAGE, "this build has no CUDA/NCCL support (built with MOEPACK_CUDA=OFF or without nvcc)")

int mp_gpu_comm_available(void) { return 0; }

int mp_gpu_device_for_local_rank(int local_rank, int local_size, int *device)
{
    (void)local_rank, (void)local_size;
    *device = -1;
    return NO_NCCL();
}

int mp_gpu_comm_unique_id(unsigned char id[MP_GPU_COMM_ID_BYTES])
{
    (void)id;
    return NO_NCCL();
}

int mp_gpu_comm_create(const unsigned char id[MP_GPU_COMM_ID_BYTES], int nranks, int rank, int device,
                       mp_gpu_comm **out)
{
    (void)id, (void)nranks, (void)rank, (void)device;
    *out = NULL;
    return NO_NCCL();
}

int mp_gpu_comm_sum(mp_gpu_comm *c, double *values, int64_t count)
{
    (void)c, (void)values, (void)count;
    return NO_NCCL();
}

void mp_gpu_comm_destroy(mp_gpu_comm *c) { (void)c; }
#endif
