/* gpu_info.c - the GPU query functions of a build without CUDA. */
#include "gpu_info.h"

#include <stdio.h>

#if !MOEPACK_HAVE_CUDA
void mp_gpu_build_info(char *buf, size_t cap) { snprintf(buf, cap, "no CUDA (built with MOEPACK_CUDA=OFF or without nvcc)"); }

int mp_gpu_device_count(void) { return 0; }

void mp_gpu_describe(int dev, char *buf, size_t cap)
{
    snprintf(buf, cap, "device %d: this build has no CUDA support", dev);
}
#endif
