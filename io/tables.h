/* tables.h - the measure stage's tables: for every block of a MoE layer, the loss, bytes and cost of
 * every option (DESIGN section 4), one HDF5 file per unit.
 *
 * checkpoint.dir/measure/layerLLLL/{expertEEEE,shared,base}.h5 (unit = expert index, E for the shared
 * expert, -1 for the base); a non-MoE layer's dense MLP: layerLLLL/dense.h5 (unit MP_UNIT_DENSE, kind
 * DENSE, one row per format like the shared expert; its energy is the dense MLP's output energy).
 * Root attributes: layer, unit, kind (int: io/allocation.h's mp_block_kind),
 * energy (the layer's MoE output energy, the normaliser, see mpi/measure_stage.h), damping_raised,
 * unsampled (counts, for the stage's summary), formats (string:
 * the job's quant.formats, comma-separated: the format indices below point into it). Per projection p
 * in gate, up, down: dataset `table_<p>` fp64 [rows, 8], one row per measured atom:
 *   col 0 rank   (-1 for a dense block; a delta's candidate rank r >= 0)
 *   col 1 part   (0: the dense block or a delta's U, 1: a delta's V, 2: a delta's truncation at rank r)
 *   col 2 format (index into `formats`; -1 for a truncation row)
 *   col 3 loss_raw  (tr(E H E^T), with activation formats the sample's scaled loss; truncation:
 *                    energy - sum_{j<r} sigma_j^2)
 *   col 4 loss      (loss_raw / energy)
 *   col 5 bytes     (stored bytes; 0 for truncation rows)
 *   col 6 cost_s    (predicted time of the block's GEMM at the design batch, cost.h)
 *   col 7 tokens_M  (the design batch's tokens M the cost assumed)
 * and attributes m_<p>, n_<p> (block shape). Rows of a dense block: one per format, in format order. Rows of
 * a delta, per candidate rank in increasing order: its truncation row, then (r >= 1) U's rows in format
 * order, then V's. An option of a delta (r, f_U, f_V) has loss = trunc(r) + U(r, f_U) + V(r, f_V), bytes
 * and cost the sums; rank 0 is the base alone (bytes 0, cost 0).
 * Files are built in memory and committed atomically (equal contents, equal bytes). Local. */
#ifndef MP_TABLES_H
#define MP_TABLES_H
#include <stdint.h>
#include <stdio.h>

#include "allocation.h"

enum { MP_TCOL_RANK, MP_TCOL_PART, MP_TCOL_FMT, MP_TCOL_LOSS_RAW, MP_TCOL_LOSS, MP_TCOL_BYTES, MP_TCOL_COST,
       MP_TCOL_M, MP_TCOLS };

typedef struct {
    int64_t m, n;
    int rows;
    double *t; /* [rows, MP_TCOLS] */
} mp_proj_table;

typedef struct {
    int layer, unit;
    mp_block_kind kind;
    double energy;
    double damping_raised, unsampled; /* GPTQ factorisations that needed more damping; activation-format
                                         measurements without a sample (attributes of the same names) */
    int nf;
    const mp_qformat *fmt[32];
    mp_proj_table p[3];
} mp_unit_table;

/* append a row to projection p's table */
int mp_table_add(mp_proj_table *pt, double rank, int part, int fmt, double loss_raw, double loss, double bytes,
                 double cost, double M);
int mp_table_write(const char *path, const mp_unit_table *t);
/* MP_EFORMAT naming the file for anything malformed (unknown format name, bad columns, NaN). */
int mp_table_read(const char *path, mp_unit_table *t);
void mp_table_free(mp_unit_table *t);
/* "DIR/layer0003/expert0005.h5", ".../shared.h5", ".../base.h5", ".../dense.h5" (unit MP_UNIT_DENSE) */
void mp_table_path(char *buf, int cap, const char *dir, int layer, int unit, int n_experts);

/* `moepack inspect CKPT`: every measure table under checkpoint dir `dir` (layers found on disk),
 * readable (per layer: the mean normalised loss per format and projection, the options per block) or
 * as JSON (every row). */
int mp_tables_print(const char *measure_dir, int json, FILE *out);

#endif
