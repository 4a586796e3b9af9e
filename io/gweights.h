/* gweights.h - a compressed model as the forward pass's weights (src/forward.h: mp_weights), its MoE units
 * run on a GPU.
 *
 * The contract of cweights.h (same model, same output directory, the same numbers to float rounding), with
 * `unit` computed by the CUDA kernels of src/gpu/qgemm_gpu.h from the packed codes as stored
 * (io/outdir.h: mp_outdir_read_qfactors): a routed expert's projection p with the decomposition is one
 * mp_gpu_qgemm_base_delta call (base_p x + U_p (V_p x); rank 0: the base alone), a dense block (the shared
 * expert, or no decomposition) one mp_gpu_qgemm_grouped call; silu(gate) * up is mp_gpu_qgemm_swiglu, on
 * the device; only X goes to the device and Y comes back. X and every intermediate (gate, up, T = X V^T)
 * are fp32 and the kernels run on the CUDA-core path (MP_GPU_PATH_SIMT: fp32 FMA, 1e-5 of each dot
 * product's scale), so the output equals cweights' to float rounding. A part in an activation format
 * (w8a8, w4a4) sees its input quantized per token inside the kernel by mp_quant_act's fp32 operations -
 * X for the base, V or a dense block, T for U - as cweights quantizes it on the CPU.
 * Residency: the three base blocks of the layer in use stay on the device until another layer is asked
 * for, the blocks of the unit in use until another unit is; the token buffers grow to the largest call.
 * Everything else (embedding, attention, router, head, `expert`) is a cweights provider opened inside.
 * Local (no MPI). One thread; the current device must stay `device` while the provider is in use.
 * Errors as cweights', and MP_EUSAGE when the build has no CUDA support or `device` is not visible,
 * MP_ENOMEM when device memory runs out, MP_EINTERNAL for a CUDA error (named). */
#ifndef MP_GWEIGHTS_H
#define MP_GWEIGHTS_H

#include "forward.h"
#include "model.h"
#include "outdir.h"

typedef struct mp_gweights mp_gweights;

/* As mp_cweights_open, the units on CUDA device `device` (made current). Under MPI a rank passes its
 * node-local rank modulo the device count (mpi/runtime.h: mp_mpi_node_rank; src/gpu/gpu_info.h:
 * mp_gpu_device_count). *w is valid while m, o and *out live. */
int mp_gweights_open(const mp_model *m, mp_outdir *o, int device, mp_gweights **out, mp_weights *w);
void mp_gweights_close(mp_gweights *g);

#endif
