/* gpu_info.cu - GPU query functions of a CUDA (+ NCCL) build. */
#include "gpu_info.h"

#include <cuda_runtime.h>
#include <stdio.h>
#if MOEPACK_HAVE_NCCL
#include <nccl.h>
#endif

extern "C" void mp_gpu_build_info(char *buf, size_t cap)
{
    int rt = 0;
    cudaRuntimeGetVersion(&rt);
#if MOEPACK_HAVE_NCCL
    int nv = 0;
    ncclGetVersion(&nv);
    snprintf(buf, cap, "CUDA runtime %d.%d, NCCL %d.%d.%d", rt / 1000, (rt % 1000) / 10, nv / 10000,
             (nv / 100) % 100, nv % 100);
#else
    snprintf(buf, cap, "CUDA runtime %d.%d, no NCCL", rt / 1000, (rt % 1000) / 10);
#endif
}

extern "C" int mp_gpu_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" void mp_gpu_describe(int dev, char *buf, size_t cap)
{
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, dev);
    if (e != cudaSuccess) {
        snprintf(buf, cap, "device %d: %s", dev, cudaGetErrorString(e));
        cudaGetLastError();
        return;
    }
    snprintf(buf, cap, "device %d: %s, sm_%d%d, %.1f GiB", dev, p.name, p.major, p.minor,
             (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
}
