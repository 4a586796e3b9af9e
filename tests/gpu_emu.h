/* gpu_emu.h - the CUDA kernels of src/gpu/qgemm_gpu.cu as host C++ on the CPU emulator, with the device
 * runtime functions of src/gpu/gpu_memory.h and gpu_info.h over its memory (one device, synchronous copies),
 * all under the names of tests/gpu_emu_names.h. Included once per test program, after tests/cuda_emu.h. */
#ifndef MP_GPU_EMU_H
#define MP_GPU_EMU_H
#include "gpu_emu_names.h"

#include "../src/gpu/qgemm_gpu.cu"

extern "C" {
void emu_gpu_build_info(char *buf, size_t cap) { snprintf(buf, cap, "CPU emulator of the CUDA kernels"); }
int emu_gpu_device_count(void) { return 1; }
void emu_gpu_describe(int dev, char *buf, size_t cap) { snprintf(buf, cap, "device %d: tests/cuda_emu.h", dev); }
int emu_gpu_set_device(int device) { return device == 0 ? 0 : mp_errorf(MP_EUSAGE, "emulator: device %d", device); }
int emu_gpu_alloc(void **dptr, size_t bytes)
{
    *dptr = NULL;
    return bytes ? mp_cuda_error(cudaMalloc(dptr, bytes), "cudaMalloc") : 0;
}
void emu_gpu_free(void *dptr) { cudaFree(dptr); }
int emu_gpu_copy_to_device(void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
    return 0;
}
int emu_gpu_copy_to_host(void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
    return 0;
}
int emu_gpu_memset(void *dst, int byte, size_t bytes)
{
    memset(dst, byte, bytes);
    return 0;
}
int emu_gpu_synchronize(void) { return 0; }
}

#endif
