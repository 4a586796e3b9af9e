/* qgemm_gpu.c - the GPU grouped products in a build without CUDA: every call reports the missing support. */
#include "qgemm_gpu.h"

#include <stddef.h>

#include "error.h"

#if !MOEPACK_HAVE_CUDA
#define NO_CUDA(label)                                                                                                 \
    mp_errorf(MP_EUSAGE, "%s: this build has no CUDA support (built with MOEPACK_CUDA=OFF or without nvcc)",           \
              (label) ? (label) : "qgemm (GPU)")

int mp_gpu_qtensor_upload(const mp_qtensor *q, mp_gpu_qtensor **out)
{
    (void)q;
    *out = NULL;
    return NO_CUDA("GPU upload");
}

void mp_gpu_qtensor_destroy(mp_gpu_qtensor *t) { (void)t; }

const mp_qtensor *mp_gpu_qtensor_header(const mp_gpu_qtensor *t)
{
    (void)t;
    return NULL;
}

int mp_gpu_qgemm_create(void *stream, mp_gpu_qgemm **out)
{
    (void)stream;
    *out = NULL;
    return NO_CUDA("GPU qgemm");
}

void mp_gpu_qgemm_destroy(mp_gpu_qgemm *g) { (void)g; }

void mp_gpu_qgemm_set_path(mp_gpu_qgemm *g, mp_gpu_path path)
{
    (void)g;
    (void)path;
}

int mp_gpu_qgemm_last_launches(const mp_gpu_qgemm *g)
{
    (void)g;
    return 0;
}

int mp_gpu_qgemm_grouped(mp_gpu_qgemm *g, const mp_gpu_qgemm_item *items, int count, const void *X, mp_qg_type xt,
                         int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy, int accumulate, const char *label)
{
    (void)g, (void)items, (void)count, (void)X, (void)xt, (void)ldx, (void)Y, (void)yt, (void)ldy, (void)accumulate;
    return NO_CUDA(label);
}

int mp_gpu_qgemm_delta(mp_gpu_qgemm *g, const mp_gpu_qdelta_item *items, int count, const void *X, mp_qg_type xt,
                       int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy, const char *label)
{
    (void)g, (void)items, (void)count, (void)X, (void)xt, (void)ldx, (void)Y, (void)yt, (void)ldy;
    return NO_CUDA(label);
}

int mp_gpu_qgemm_base_delta(mp_gpu_qgemm *g, const mp_gpu_qtensor *base, int64_t rows, const mp_gpu_qdelta_item *items,
                            int count, const void *X, mp_qg_type xt, int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy,
                            const char *label)
{
    (void)g, (void)base, (void)rows, (void)items, (void)count, (void)X, (void)xt, (void)ldx, (void)Y, (void)yt,
        (void)ldy;
    return NO_CUDA(label);
}

int mp_gpu_qgemm_swiglu(mp_gpu_qgemm *g, const float *G, float *A, int64_t count, const char *label)
{
    (void)g, (void)G, (void)A, (void)count;
    return NO_CUDA(label);
}

int mp_gpu_qgemm_sync(mp_gpu_qgemm *g)
{
    (void)g;
    return NO_CUDA("GPU qgemm");
}
#endif
