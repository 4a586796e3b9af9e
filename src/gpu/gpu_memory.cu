/* gpu_memory.cu - device selection, memory and copies of a CUDA build (contract in gpu_memory.h). */
#include "gpu_memory.h"

#include <stdio.h>

#include "cuda_check.h"

extern "C" int mp_gpu_set_device(int device)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        n = 0;
    }
    if (device < 0 || device >= n)
        return mp_errorf(MP_EUSAGE, "GPU %d requested but %d CUDA device%s visible", device, n,
                         n == 1 ? " is" : "s are");
    MP_CUDA(cudaSetDevice(device), "cudaSetDevice");
    return 0;
}

extern "C" int mp_gpu_alloc(void **dptr, size_t bytes)
{
    *dptr = NULL;
    if (bytes == 0)
        return 0;
    cudaError_t e = cudaMalloc(dptr, bytes);
    if (e != cudaSuccess) {
        *dptr = NULL;
        char what[96];
        snprintf(what, sizeof what, "cudaMalloc of %zu bytes", bytes);
        return mp_cuda_error(e, what);
    }
    return 0;
}

extern "C" void mp_gpu_free(void *dptr)
{
    if (dptr)
        cudaFree(dptr);
}

extern "C" int mp_gpu_copy_to_device(void *dst, const void *src, size_t bytes)
{
    if (bytes)
        MP_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "copy to the GPU");
    return 0;
}

extern "C" int mp_gpu_copy_to_host(void *dst, const void *src, size_t bytes)
{
    if (bytes)
        MP_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy from the GPU");
    return 0;
}

extern "C" int mp_gpu_memset(void *dst, int byte, size_t bytes)
{
    if (bytes)
        MP_CUDA(cudaMemset(dst, byte, bytes), "cudaMemset");
    return 0;
}

extern "C" int mp_gpu_synchronize(void)
{
    MP_CUDA(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    return 0;
}
