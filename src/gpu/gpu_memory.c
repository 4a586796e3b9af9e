/* gpu_memory.c - the device memory functions of a build without CUDA: all report the missing support. */
#include "gpu_memory.h"

#include "error.h"

#if !MOEPACK_HAVE_CUDA
#define NO_CUDA() mp_errorf(MP_EUSAGE, "this build has no CUDA support (built with MOEPACK_CUDA=OFF or without nvcc)")

int mp_gpu_set_device(int device)
{
    (void)device;
    return NO_CUDA();
}

int mp_gpu_alloc(void **dptr, size_t bytes)
{
    (void)bytes;
    *dptr = NULL;
    return NO_CUDA();
}

void mp_gpu_free(void *dptr) { (void)dptr; }

int mp_gpu_copy_to_device(void *dst, const void *src, size_t bytes)
{
    (void)dst, (void)src, (void)bytes;
    return NO_CUDA();
}

int mp_gpu_copy_to_host(void *dst, const void *src, size_t bytes)
{
    (void)dst, (void)src, (void)bytes;
    return NO_CUDA();
}

int mp_gpu_memset(void *dst, int byte, size_t bytes)
{
    (void)dst, (void)byte, (void)bytes;
    return NO_CUDA();
}

int mp_gpu_synchronize(void) { return NO_CUDA(); }
#endif
