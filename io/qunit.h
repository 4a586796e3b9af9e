/* qunit.h - the quantize stage's unit files: the packed blocks of one unit of one MoE layer.
 *
 * checkpoint.dir/quant/layerLLLL/ holds base.h5 (the D2 base), expertEEEE.h5 (routed expert e) and
 * shared.h5 (the shared expert). Each file holds one subtree of the layer's `moe` group in the output
 * layout (DESIGN section 6), so that the output shards copy it as it is:
 *   base.h5        /base/{gate,up,down}/{qweight,scales,zeros}
 *   expertEEEE.h5  /experts/{e}/{gate,up,down}/{U,V}/{qweight,scales,zeros}   (decomposition on)
 *                  /experts/{e}/{gate,up,down}/{qweight,scales,zeros}         (decomposition off)
 *   shared.h5      /shared/{gate,up,down}/{qweight,scales,zeros}
 *   dense.h5       /mlp/{gate,up,down}/{qweight,scales,zeros}   (the dense MLP of a non-MoE layer: a subtree
 *                  of the layer group, not of `moe`; unit MP_UNIT_DENSE, kind "dense")
 * Packed tensors as in qtensor_h5.h. Each block group ({gate,up,down}) carries kind ("base", "delta",
 * "expert", "shared"), shape int64 [2] (the block's [m, n]), bytes (stored bytes of its tensors),
 * loss, loss_raw, cost_s (the allocation's predictions, allocation.h) and, for deltas, rank (0: no U
 * and V, the expert is served by the base for that projection). Dense blocks carry the tensor
 * attributes on the block group itself. Written in the HDF5 1.8 file format (groups keep their links in
 * their object headers: a few KB per unit instead of tens) under a temporary name, committed with
 * fsutil.h's mp_commit_file; no timestamps, so equal contents give equal bytes. Local. */
#ifndef MP_QUNIT_H
#define MP_QUNIT_H
#include <stdint.h>

#include "allocation.h"
#include "quant.h"

typedef struct mp_qunit mp_qunit;

/* The subtree root of unit `unit` (-1 base, 0..E-1 expert, E shared, MP_UNIT_DENSE): "base", "experts/5",
 * "shared", "mlp". */
void mp_qunit_root(int unit, int n_experts, char *buf, int cap);
/* "base.h5", "expert0005.h5", "shared.h5", "dense.h5" */
void mp_qunit_file(int unit, int n_experts, char *buf, int cap);

/* An empty unit file for unit `unit` of a layer with n_experts routed experts, to become `path`
 * (written to path.tmp.<pid> until saved), with disk space reserved for about est_bytes of tensors
 * (fsutil.h: mp_reserve_space; a full disk is MP_EIO here). */
int mp_qunit_create(const char *path, int unit, int n_experts, int64_t est_bytes, mp_qunit **out);
/* Block c (its proj; m x n) quantized as q0 (dense, or U of a delta) and q1 (V of a delta; NULL else).
 * bytes: what the tensors store (returned in *bytes). */
int mp_qunit_put(mp_qunit *u, const mp_choice *c, int64_t m, int64_t n, const mp_qtensor *q0, const mp_qtensor *q1,
                 int64_t *bytes);
/* Close, fsync and rename to its path; release u (also on error: then nothing is left). */
int mp_qunit_save(mp_qunit *u);
void mp_qunit_discard(mp_qunit *u);

/* The stored bytes of a packed tensor (codes + scales + zeros). */
int64_t mp_qtensor_bytes(const mp_qtensor *q);

#endif
