/* weights.h - an opened checkpoint as the forward pass's weight source (src/forward.h: mp_weights).
 *
 * Non-expert tensors are read whole and converted to fp32, experts on demand
 * (mp_model_read_expert); every value handed out is checked to be finite
 * (MP_ENUMERIC naming the tensor and the element otherwise). The output head
 * is the tensor mp_model.head_name names (tied embeddings with a different
 * lm_head.weight in the file use the file's head, as transformers does). The interface
 * borrows `m`, which must outlive it. Local. */
#ifndef MP_WEIGHTS_H
#define MP_WEIGHTS_H

#include "forward.h"
#include "model.h"

void mp_model_weights(const mp_model *m, mp_weights *w);

#endif
