/* gpu_comm.cu - fp64 sums over ranks with NCCL (contract in gpu_comm.h). Without NCCL in a CUDA build
 * the same stubs as gpu_comm.c report that NCCL is missing. */
#include "gpu_comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"
#include "gpu_info.h"
#include "gpu_memory.h"
#if MOEPACK_HAVE_NCCL
#include <nccl.h>
#endif

extern "C" int mp_gpu_device_for_local_rank(int local_rank, int local_size, int *device)
{
    *device = -1;
    const int n = mp_gpu_device_count();
    if (local_rank < 0 || local_rank >= local_size)
        return mp_errorf(MP_EUSAGE, "node-local rank %d of %d", local_rank, local_size);
    if (n < local_size)
        return mp_errorf(MP_EUSAGE, "%d rank%s on this node but %d GPU%s visible (one GPU per rank)", local_size,
                         local_size == 1 ? "" : "s", n, n == 1 ? "" : "s");
    *device = local_rank;
    return 0;
}

#if MOEPACK_HAVE_NCCL
static_assert(sizeof(ncclUniqueId) == MP_GPU_COMM_ID_BYTES, "MP_GPU_COMM_ID_BYTES must match ncclUniqueId");

static int nccl_error(ncclResult_t r, const char *what)
{
    if (r == ncclSuccess)
        return 0;
    return mp_errorf(r == ncclInvalidArgument || r == ncclInvalidUsage ? MP_EUSAGE : MP_EINTERNAL,
                     "%s: NCCL error %d (%s)", what, (int)r, ncclGetErrorString(r));
}
#define MP_NCCL(call, what) MP_CHECK(nccl_error((call), (what)))

struct mp_gpu_comm {
    ncclComm_t comm;
    cudaStream_t stream;
    int device;
    double *buf; /* device buffer of cap values */
    int64_t cap;
};

extern "C" int mp_gpu_comm_available(void) { return 1; }

extern "C" int mp_gpu_comm_unique_id(unsigned char id[MP_GPU_COMM_ID_BYTES])
{
    ncclUniqueId u;
    MP_NCCL(ncclGetUniqueId(&u), "ncclGetUniqueId");
    memcpy(id, &u, sizeof u);
    return 0;
}

extern "C" int mp_gpu_comm_create(const unsigned char id[MP_GPU_COMM_ID_BYTES], int nranks, int rank, int device,
                                  mp_gpu_comm **out)
{
    *out = NULL;
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return mp_errorf(MP_EUSAGE, "NCCL communicator: rank %d of %d", rank, nranks);
    MP_CHECK(mp_gpu_set_device(device));
    mp_gpu_comm *c = (mp_gpu_comm *)calloc(1, sizeof *c);
    if (!c)
        return mp_errorf(MP_ENOMEM, "out of memory (NCCL communicator)");
    c->device = device;
    int rc = mp_cuda_error(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    if (rc < 0) {
        free(c);
        return rc;
    }
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    char what[96];
    snprintf(what, sizeof what, "ncclCommInitRank (rank %d of %d, GPU %d)", rank, nranks, device);
    rc = nccl_error(ncclCommInitRank(&c->comm, nranks, u, rank), what);
    if (rc < 0) {
        cudaStreamDestroy(c->stream);
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

extern "C" int mp_gpu_comm_sum(mp_gpu_comm *c, double *values, int64_t count)
{
    if (count <= 0)
        return 0;
    MP_CUDA(cudaSetDevice(c->device), "cudaSetDevice");
    if (count > c->cap) {
        cudaFree(c->buf);
        c->buf = NULL;
        c->cap = 0;
        MP_CUDA(cudaMalloc(&c->buf, (size_t)count * sizeof(double)), "NCCL sum buffer");
        c->cap = count;
    }
    const size_t bytes = (size_t)count * sizeof(double);
    MP_CUDA(cudaMemcpyAsync(c->buf, values, bytes, cudaMemcpyHostToDevice, c->stream), "NCCL sum (copy in)");
    MP_NCCL(ncclAllReduce(c->buf, c->buf, (size_t)count, ncclDouble, ncclSum, c->comm, c->stream), "ncclAllReduce");
    MP_CUDA(cudaMemcpyAsync(values, c->buf, bytes, cudaMemcpyDeviceToHost, c->stream), "NCCL sum (copy out)");
    MP_CUDA(cudaStreamSynchronize(c->stream), "NCCL sum");
    return 0;
}

extern "C" void mp_gpu_comm_destroy(mp_gpu_comm *c)
{
    if (!c)
        return;
    cudaSetDevice(c->device);
    ncclCommDestroy(c->comm);
    cudaFree(c->buf);
    cudaStreamDestroy(c->stream);
    free(c);
}

#else /* CUDA without NCCL */
#define NO_NCCL() mp_errorf(MP_EUSAGE, "this build has no NCCL (libnccl was not found when cmake ran)")

extern "C" int mp_gpu_comm_available(void) { return 0; }
extern "C" int mp_gpu_comm_unique_id(unsigned char id[MP_GPU_COMM_ID_BYTES])
{
    (void)id;
    return NO_NCCL();
}
extern "C" int mp_gpu_comm_create(const unsigned char id[MP_GPU_COMM_ID_BYTES], int nranks, int rank, int device,
                                  mp_gpu_comm **out)
{
    (void)id, (void)nranks, (void)rank, (void)device;
    *out = NULL;
    return NO_NCCL();
}
extern "C" int mp_gpu_comm_sum(mp_gpu_comm *c, double *values, int64_t count)
{
    (void)c, (void)values, (void)count;
    return NO_NCCL();
}
extern "C" void mp_gpu_comm_destroy(mp_gpu_comm *c) { (void)c; }
#endif
