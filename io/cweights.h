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

#endif
