/* cweights.h - a compressed model as the forward pass's weights (src/forward.h: mp_weights).
 *
 * The MoE layers are served from a moepack output directory as stored: every unit's blocks are the
 * packed codes dequantized by the code that defines the formats (mp_qtensor_dequant); with the
 * decomposition a routed expert's projection p runs as base_p x + U_p (V_p x), the factors kept apart
 * (never folded into a dense per-expert weight), rank 0 being the base alone. A part in an activation
 * format (w8a8, w4a4) sees its input quantized per token (mp_quant_act), as a kernel computes it. The
 * shared expert and the dense MLP of every non-MoE layer (unit MP_UNIT_DENSE; ep_forward runs it through
 * `unit`) are quantized like the others and served from the output too; every other non-MoE tensor comes
 * from the original model (the output holds copies of them in their dtype). The dequantized base of a
 * layer and the factors of the unit in use are cached. Local (no MPI). */
#ifndef MP_CWEIGHTS_H
#define MP_CWEIGHTS_H

#include "forward.h"
#include "model.h"
#include "outdir.h"

typedef struct mp_cweights mp_cweights;

/* m: the original model (the non-MoE weights); o: its compressed output (the same config.json:
 * MP_EMISMATCH otherwise). *w is valid while both and *out live. */
int mp_cweights_open(const mp_model *m, mp_outdir *o, mp_cweights **out, mp_weights *w);
void mp_cweights_close(mp_cweights *c);

/* One part of projection p of unit u of MoE layer l (mp_outdir_read_factors) for inputs X [n, k]
 * (k = its columns), as the forward pass computes it: MP_CW_DENSE out [n, m] = X W^T (the base with the
 * decomposition, else the block), MP_CW_DELTA out = (X V^T) U^T (0 at rank 0), MP_CW_ALL their sum;
 * inputs quantized per token where a part's format has activation bits. */
typedef enum { MP_CW_DENSE = 1, MP_CW_DELTA = 2, MP_CW_ALL = 3 } mp_cw_part;
int mp_cweights_project(mp_cweights *c, int l, int u, int p, mp_cw_part part, const float *X, int n, float *out);

#endif
