/* quant_stage.h - the quantize stage: every block packed in its allocated format, then the output.
 *
 * Per MoE layer (in order), with the layer's allocation (io/allocation.h:
 * checkpoint.dir/alloc/layerLLLL/alloc.json, its blocks checked against the layer's expected
 * blocks): the units of the layer are routed experts u = 0..E-1, the shared expert (u = E, when the
 * config has one) and the D2 base (u = E + 1, with the decomposition on); unit u belongs to rank
 * plan.h: mp_unit_owner(l, u, E, P). The owner loads the unit's three blocks (mpi/blocks.h:
 * weights or factors, Hessians), quantizes each as its choice says (mp_block_quantize: GPTQ or RTN,
 * exactly the codes the measure stage measured), checks the stored bytes against the allocation's,
 * and commits one unit file (io/qunit.h) to checkpoint.dir/quant/layerLLLL (base.h5,
 * expertEEEE.h5, shared.h5); a manifest per layer (store.h) records them. A non-MoE layer with a dense
 * MLP has one unit, the dense MLP (u = MP_UNIT_DENSE, owned like unit 0, dense.h5).
 *
 * end (all layers committed): the output (io/output.h) in output.dir. Rank 0 lists the items and
 * their sizes (from the unit files) and the /moepack numbers and broadcasts them; every rank packs
 * the same shards (output.shard_bytes) and writes shard k when k mod P is its rank (temporary name,
 * fsync, rename); rank 0 removes shards of another count and writes index.json last, atomically.
 * Before the first shard is replaced the old index.json is removed, so an index never names a
 * shard of another result. When output.dir already holds this stage's result intact (index.json
 * with the stage fingerprint, every shard with its checksum) nothing is rewritten. The bytes do not
 * depend on the number of ranks or on interruptions.
 * Fault points (tests): "quantize: unit committed", "quantize: before layer manifest",
 * "output: shard committed", "output: index.json written, not renamed".
 * Collective over MPI_COMM_WORLD; failures are agreed on. */
#ifndef MP_QUANT_STAGE_H
#define MP_QUANT_STAGE_H

#include "pipeline.h"

/* Stage functions of the table in pipeline.c. Summary: bytes_used, budget_bytes, moe_weights,
 * bits_per_weight, budget_bits, predicted_loss, shards, output_bytes. */
int mp_quant_begin(mp_run *r, int s);
int mp_quant_layer(mp_run *r, int s, int l, int committed);
int mp_quant_end(mp_run *r, int s, int ok);
void mp_quant_print(const mp_run *r, int s, FILE *out);
/* Collective: a stage found committed counts as kept only while its output is intact; else *ok = 0
 * (with a note naming what is missing) and the stage runs again (its layers are kept). */
int mp_quant_output_kept(mp_run *r, int s, int *ok);

#endif
