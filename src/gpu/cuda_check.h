/* cuda_check.h - CUDA errors as moepack errors, for the .cu files of src/gpu (not a public header). */
#ifndef MP_CUDA_CHECK_H
#define MP_CUDA_CHECK_H
#ifndef MP_QGEMM_EMULATE /* tests/cuda_emu.h provides the runtime API */
#include <cuda_runtime.h>
#endif

extern "C" {
#include "error.h"
}

/* 0 for cudaSuccess; else MP_ENOMEM (allocation), MP_EUSAGE (no device or driver) or MP_EINTERNAL, with
 * a message naming `what` and the CUDA error. The sticky error state of a failed launch is cleared. */
static inline int mp_cuda_error(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 0;
    int code = MP_EINTERNAL;
    if (e == cudaErrorMemoryAllocation)
        code = MP_ENOMEM;
    else if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorInvalidDevice)
        code = MP_EUSAGE;
    cudaGetLastError();
    return mp_errorf(code, "%s: CUDA error %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

#define MP_CUDA(call, what) MP_CHECK(mp_cuda_error((call), (what)))

#endif
