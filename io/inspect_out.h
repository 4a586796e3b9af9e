/* inspect_out.h - `moepack inspect` of a moepack output directory (io/output.h).
 *
 * From index.json and the shards (every shard listed must exist with its recorded size and open as
 * HDF5; the /moepack group of the first is read): bytes used against the budget, bits per weight
 * achieved over the MoE weights, the formats used, the output's size on disk, and per MoE layer its
 * predicted loss, bytes and a table of format / rank per unit (base, routed experts, shared expert)
 * and projection with the tokens each expert was routed in calibration. json: the same as one
 * object. plot (not NULL): an SVG heatmap of bits per weight per (MoE layer, unit), written by hand
 * (no dependencies: axis labels, a colour legend, a tooltip per cell) and committed atomically.
 * Bits per weight of a unit = 8 x its stored bytes / the weights of the dense expert it stands for
 * (3 d f; for a delta that is U and V only, the base has its own column). Local. */
#ifndef MP_INSPECT_OUT_H
#define MP_INSPECT_OUT_H
#include <stdio.h>

int mp_inspect_output(const char *dir, int json, const char *plot, FILE *out);

#endif
