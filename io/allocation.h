/* allocation.h - the allocation of one MoE layer: the option chosen for each of its blocks.
 *
 * Blocks of MoE layer l, in this order (the order of the measure tables, the allocation and the output):
 *  - decomposition on (delta.enabled): the base projections gate, up, down (kind BASE, unit -1), then
 *    for each expert e = 0..E-1 its three deltas (kind DELTA, unit e, proj 0 gate, 1 up, 2 down);
 *  - decomposition off: for each expert its three projections (kind EXPERT, unit e);
 *  - then, when the layer has a shared expert, its three projections (kind SHARED, unit E).
 * A non-MoE layer with a dense MLP has its three projections (kind DENSE, unit MP_UNIT_DENSE = -2,
 * model_config.h), gate/up [dense_ffn, d], down [d, dense_ffn].
 * Dense blocks (BASE, EXPERT, SHARED) take one format; a DELTA takes a rank r and a format for each of
 * its factors U [m, r] and V [r, n] (rank 0: the expert is served by the base alone; no formats).
 *
 * File: checkpoint.dir/alloc/layerLLLL/alloc.json, written atomically by rank 0:
 *   {"layer": l, "blocks": [{"kind": "base|delta|expert|shared|dense", "unit": u, "proj": "gate|up|down",
 *     "rank": r, "format": "w4g128", "format_v": "w3g128", "bytes": b, "loss": x, "loss_raw": y,
 *     "cost_s": t}, ...]}
 * ("rank" and "format_v" only for deltas; "format" absent for a delta of rank 0). Numbers are printed
 * with 17 significant digits, so equal allocations give equal bytes. loss is normalised by the layer's
 * MoE output energy (measure stage), loss_raw is tr(E H E^T) (+ truncation), cost_s the predicted time.
 * Local. */
#ifndef MP_ALLOCATION_H
#define MP_ALLOCATION_H
#include <stdint.h>

#include "model_config.h"
#include "quant.h"

typedef enum { MP_BK_BASE, MP_BK_DELTA, MP_BK_EXPERT, MP_BK_SHARED, MP_BK_DENSE, MP_BK_COUNT } mp_block_kind;

extern const char *const MP_PROJ_NAME[3];       /* "gate", "up", "down" */
const char *mp_block_kind_name(mp_block_kind k); /* "base", "delta", "expert", "shared", "dense" */

typedef struct {
    mp_block_kind kind;
    int unit;                  /* expert index (DELTA, EXPERT), n_experts (SHARED), -1 (BASE), MP_UNIT_DENSE (DENSE) */
    int proj;                  /* 0 gate, 1 up, 2 down */
    int64_t rank;              /* DELTA: kept rank (0 = base alone); others 0 */
    const mp_qformat *fmt;     /* dense: the format; DELTA: U's format (NULL at rank 0) */
    const mp_qformat *fmt_v;   /* DELTA: V's format (NULL at rank 0); others NULL */
    int64_t bytes;             /* stored bytes of the option */
    double loss, loss_raw, cost; /* predicted normalised loss, raw loss, time (s) */
} mp_choice;

typedef struct {
    int layer, n;
    mp_choice *c; /* [n], in block order */
} mp_layer_alloc;

/* The blocks of a layer in the order above (choices zeroed but kind/unit/proj): n = 3 (E + 1) or 3 E,
 * plus 3 with a shared expert. */
int mp_layer_blocks(int layer, int n_experts, int has_shared, int delta, mp_layer_alloc *a);
/* The blocks of layer l of model config c (mp_config_has_units): a MoE layer's as above, a dense MLP's three. */
int mp_layer_units_blocks(const mp_config *c, int layer, int delta, mp_layer_alloc *a);
int mp_alloc_write(const char *path, const mp_layer_alloc *a);
/* MP_EFORMAT (naming the file and the entry) for a malformed file or an unknown format name. */
int mp_alloc_read(const char *path, mp_layer_alloc *a);
void mp_layer_alloc_free(mp_layer_alloc *a);
/* "DIR/layer0003/alloc.json" */
void mp_alloc_path(char *buf, int cap, const char *dir, int layer);

#endif
