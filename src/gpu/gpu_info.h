/* gpu_info.h - what GPU support this build has and what the machine offers.
 *
 * Built with CUDA (MOEPACK_HAVE_CUDA=1) the functions ask the CUDA runtime and
 * NCCL; built without, they report that no GPU support was compiled in.
 * Local (no MPI). Never fails hard: a machine without a GPU is a normal case. */
#ifndef MP_GPU_INFO_H
#define MP_GPU_INFO_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif

/* Build features, e.g. "CUDA 13.0 (sm_90), NCCL 2.28.3" or "no CUDA". */
void mp_gpu_build_info(char *buf, size_t cap);
/* Number of usable CUDA devices; 0 without CUDA, a driver or a GPU. */
int mp_gpu_device_count(void);
/* Name and memory of device `dev`, or a reason why there is none. */
void mp_gpu_describe(int dev, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
