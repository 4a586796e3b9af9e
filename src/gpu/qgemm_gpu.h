/* qgemm_gpu.h - the grouped products of qgemm.h on an NVIDIA GPU: compressed experts run from their
 * packed codes, all experts of a layer in one kernel launch even when their formats differ.
 *
 * Same operations, shapes and semantics as qgemm.h (which is their CPU reference), with every pointer to
 * X, Y and the blocks in device memory:
 *   grouped     Y[rows of item] (=|+=) X W^T              W [m, n] per item, any format of the table
 *   delta       Y[rows of item] += (X V^T) U^T            T = X V^T in fp32 (device workspace)
 *   base_delta  Y[0:rows] = X W_b^T, then the deltas      the base once on all stacked rows
 * X and Y are fp32, fp16 or bf16 ([*, ldx], [*, ldy], row-major); items' row ranges are disjoint.
 *
 * Kernels. The packed codes are read in the documented bit order (quant.h: code i of a row at bits
 * [b i, b i + b) of the row's LSB-first word stream, the 3-bit stream continuous) into shared memory, a
 * 64-code chunk of a tile's rows at a time, and dequantized in registers; dense weights never exist in
 * global memory. Two paths:
 *  - tensor cores (mma.sync m16n8k16, fp32 accumulation) for fp16/bf16 X: the integers (code - zero) are
 *    exact in fp16/bf16, each group's partial sum is scaled by its fp16 scale in fp32, so the weights are
 *    not rounded; fp16-format blocks multiply their half values directly (fp16 X only). Activation
 *    formats quantize each token row on the fly (the row's absmax first, then per element, the same fp32
 *    operations as mp_quant_act, so the integers equal the CPU's) and scale by the token's scale at the end.
 *  - CUDA cores (fp32 FMA) for everything else: fp32 X (the delta's T among them), fp16-format blocks with
 *    bf16 X, group widths that are not multiples of 64; weights dequantized exactly as mp_qtensor_dequant.
 * A call launches one kernel per path it needs (grouped: one launch when X is fp16/bf16 and no block is
 * fp16-format with bf16 X; delta and base + delta: the V products (and the base) in one, the U products in
 * the next). Each output element is written by one thread: no atomics, results do not depend on timing.
 * Accuracy against the fp64 reference (tests/qgemm_ref.h, with sum |w x| the dot product's scale): 1e-4 of
 * the scale on tensor cores, 1e-5 on CUDA cores, plus the rounding of a 16-bit output.
 *
 * Asynchrony. Calls enqueue on the context's stream and return; mp_gpu_qgemm_sync waits and reports
 * errors of the kernels. Argument errors are found before anything is enqueued (mp_qgemm_check).
 *
 * Built without CUDA every function fails with MP_EUSAGE ("no CUDA support"). Errors: MP_EUSAGE (bad
 * arguments as in qgemm.h, no CUDA), MP_ENOMEM (device memory), MP_EINTERNAL (a CUDA error, named).
 * Ownership: create/destroy pairs; a context and the tensors it runs must be used from one thread with
 * the same current device. */
#ifndef MP_QGEMM_GPU_H
#define MP_QGEMM_GPU_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
#include "qgemm.h"
#include "quant.h"

/* A quantized block in device memory (codes, scales, zeros; mp_qformat_bytes of them). */
typedef struct mp_gpu_qtensor mp_gpu_qtensor;
int mp_gpu_qtensor_upload(const mp_qtensor *q, mp_gpu_qtensor **out);
void mp_gpu_qtensor_destroy(mp_gpu_qtensor *t);
/* The block's header: format, shape, group; its pointers are device pointers. */
const mp_qtensor *mp_gpu_qtensor_header(const mp_gpu_qtensor *t);

typedef struct {
    const mp_gpu_qtensor *w; /* W [m, n] */
    int64_t row0, rows;
} mp_gpu_qgemm_item;

typedef struct {
    const mp_gpu_qtensor *u; /* U [m, r]; u and v NULL: no delta for these rows */
    const mp_gpu_qtensor *v; /* V [r, n] */
    int64_t row0, rows;
} mp_gpu_qdelta_item;

typedef enum {
    MP_GPU_PATH_AUTO = 0, /* tensor cores where they apply, CUDA cores elsewhere */
    MP_GPU_PATH_SIMT = 1  /* CUDA cores only (the simpler kernel; a cross-check) */
} mp_gpu_path;

/* A context: the stream (a cudaStream_t; NULL = the legacy default stream), the device buffers of the
 * descriptors and of T. */
typedef struct mp_gpu_qgemm mp_gpu_qgemm;
int mp_gpu_qgemm_create(void *stream, mp_gpu_qgemm **out);
void mp_gpu_qgemm_destroy(mp_gpu_qgemm *g); /* waits for the stream first */
void mp_gpu_qgemm_set_path(mp_gpu_qgemm *g, mp_gpu_path path);
/* Kernel launches made by the last call (0 when it had no rows). */
int mp_gpu_qgemm_last_launches(const mp_gpu_qgemm *g);

int mp_gpu_qgemm_grouped(mp_gpu_qgemm *g, const mp_gpu_qgemm_item *items, int count, const void *X, mp_qg_type xt,
                         int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy, int accumulate, const char *label);
int mp_gpu_qgemm_delta(mp_gpu_qgemm *g, const mp_gpu_qdelta_item *items, int count, const void *X, mp_qg_type xt,
                       int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy, const char *label);
int mp_gpu_qgemm_base_delta(mp_gpu_qgemm *g, const mp_gpu_qtensor *base, int64_t rows, const mp_gpu_qdelta_item *items,
                            int count, const void *X, mp_qg_type xt, int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy,
                            const char *label);
/* A[i] *= silu(G[i]) = G[i] / (1 + exp(-G[i])), i < count, fp32 in device memory: the SwiGLU between an
 * expert's gate/up products and its down product, enqueued on the context's stream (one launch; the same
 * fp32 expression as the CPU's forward pass, with the device's expf: within 2 ulp of the host's). */
int mp_gpu_qgemm_swiglu(mp_gpu_qgemm *g, const float *G, float *A, int64_t count, const char *label);
/* Waits for the context's stream; reports an asynchronous kernel error. */
int mp_gpu_qgemm_sync(mp_gpu_qgemm *g);

#ifdef __cplusplus
}
#endif
#endif
