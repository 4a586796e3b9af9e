/* gpu_memory.h - device selection, device memory and copies for C callers (no CUDA headers needed).
 *
 * Built without CUDA (MOEPACK_HAVE_CUDA=0) every function fails with MP_EUSAGE "this build has no CUDA
 * support" (mp_gpu_free does nothing), so callers compile and link the same way in both builds. Local (no
 * MPI). Errors: MP_EUSAGE (no CUDA in the build, no device, a bad device index), MP_ENOMEM (cudaMalloc
 * failed), MP_EINTERNAL (any other CUDA error; the message names the call and the CUDA error). Copies are
 * synchronous (they wait for the device). */
#ifndef MP_GPU_MEMORY_H
#define MP_GPU_MEMORY_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif

/* cudaSetDevice(device) for the calling thread; MP_EUSAGE when device >= mp_gpu_device_count(). */
int mp_gpu_set_device(int device);
/* *dptr = bytes of device memory (bytes 0: NULL); free with mp_gpu_free. */
int mp_gpu_alloc(void **dptr, size_t bytes);
void mp_gpu_free(void *dptr);
int mp_gpu_copy_to_device(void *dst, const void *src, size_t bytes);
int mp_gpu_copy_to_host(void *dst, const void *src, size_t bytes);
int mp_gpu_memset(void *dst, int byte, size_t bytes);
/* Waits for all work on the current device; reports an asynchronous error of earlier kernels. */
int mp_gpu_synchronize(void);

#ifdef __cplusplus
}
#endif
#endif
