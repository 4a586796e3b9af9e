/* outdir.h - reading a moepack output directory (io/output.h): index.json and the HDF5 shards.
 *
 * mp_outdir_open parses index.json (format "moepack", format_version 1), the config.json text it
 * records and the source's tensor list; shards are opened on first use (read-only) and stay open.
 * Dequantization is src/quant.h's mp_qtensor_dequant, the code that defines the formats. A routed
 * expert's weight is rebuilt as the checkpoint held it:
 *   decomposition on:  W_e = deq(base_p) + deq(U_e,p) deq(V_e,p)   (rank 0: deq(base_p))
 *   decomposition off: W_e = deq(W_e,p)
 * with the sum and the product in fp64 (each product of two fp32 values is exact in fp64) and the
 * result rounded once to fp32, so an independent reader (numpy: float64 matmul + base, rounded to
 * float32) gets the same values. The dequantized base of the last layer read is cached.
 * Local (no MPI). */
#ifndef MP_OUTDIR_H
#define MP_OUTDIR_H
#include <cjson/cJSON.h>
#include <stdint.h>

#include "dtype.h"
#include "model_config.h"
#include "quant.h"
#include "registry.h"

typedef enum { MP_SRC_PLAIN, MP_SRC_EXPERT, MP_SRC_FUSED, MP_SRC_SHARED, MP_SRC_DENSE } mp_src_kind;

/* one tensor of the source checkpoint, in the source's order */
typedef struct {
    const char *name;
    mp_dtype dtype;
    int ndim;
    int64_t shape[8];
    mp_src_kind kind;
    int layer, expert, proj; /* EXPERT: layer, expert, proj; FUSED: layer, proj 0 = gate_up, 2 = down; SHARED, DENSE
                                (the dense MLP of a non-MoE layer): layer, proj */
    const char *path; /* PLAIN: the dataset in the shards */
} mp_out_src;

typedef struct mp_outdir mp_outdir;

/* MP_ENOENT when dir has no index.json, MP_EFORMAT (naming the file and key) when it is malformed. */
int mp_outdir_open(const char *dir, mp_outdir **out);
void mp_outdir_close(mp_outdir *o);
/* 1 when dir looks like a moepack output (an index.json with "format": "moepack") */
int mp_outdir_detect(const char *dir);

const mp_config *mp_outdir_config(const mp_outdir *o);
const char *mp_outdir_config_json(const mp_outdir *o);
const cJSON *mp_outdir_index(const mp_outdir *o); /* the parsed index.json */
const char *mp_outdir_dir(const mp_outdir *o);
int mp_outdir_nsrc(const mp_outdir *o);
const mp_out_src *mp_outdir_src(const mp_outdir *o, int i);

/* A non-MoE dataset (by its shard path) as raw bytes of its stored dtype (cap bytes) / as fp32. */
int mp_outdir_read_raw(mp_outdir *o, const char *path, void *out, int64_t cap);
int mp_outdir_read_plain(mp_outdir *o, const char *path, mp_dtype dtype, float *out, int64_t n);
/* Routed expert e of layer l, projection p (gate/up [f, d], down [d, f]), rebuilt as above. */
int mp_outdir_read_expert(mp_outdir *o, int l, int e, int p, float *out);
/* The shared expert's projection p of layer l (dequantized). */
int mp_outdir_read_shared(mp_outdir *o, int l, int p, float *out);
/* Projection p of a unit stored whole, dequantized: the shared expert (u = E) of a MoE layer or the dense
 * MLP (u = MP_UNIT_DENSE, /layers/{l}/mlp/{gate,up,down}) of a non-MoE layer. */
int mp_outdir_read_unit_proj(mp_outdir *o, int l, int u, int p, float *out);
/* Unit u of layer l (0..E-1 a routed expert, E the shared expert, MP_UNIT_DENSE the dense MLP of a non-MoE
 * layer), projection p, as stored and
 * dequantized, kept factored: W [m, n] (the layer's base with the decomposition, else the block itself)
 * and, for a delta of rank r > 0, U [m, r] and V [r, n] (the expert computes W x + U (V x)). The arrays
 * are the caller's (mp_outdir_factors_free). */
typedef struct {
    int64_t m, n, rank;
    float *W, *U, *V;
    int act_w, act_u, act_v; /* activation bits of each part's format (0: weights only): its input is
                                quantized per token (src/quant.h: mp_quant_act) before the product */
} mp_outdir_factors;
int mp_outdir_read_factors(mp_outdir *o, int l, int u, int p, mp_outdir_factors *f);
void mp_outdir_factors_free(mp_outdir_factors *f);
/* The same unit as stored, packed (src/quant.h: mp_qtensor; each block's format, and with it its activation
 * bits, in q->fmt) - what a kernel that runs packed codes (src/gpu/qgemm_gpu.h) uploads. delta = 1 (a routed
 * expert with the decomposition): the unit computes base x + U (V x) with the layer's base
 * (mp_outdir_read_qbase), U [m, rank] and V [rank, n], both NULL for rank 0, W NULL; delta = 0 (the shared
 * expert, a dense MLP, or no decomposition): W [m, n] is the block itself. The tensors are the caller's
 * (mp_outdir_qfactors_free). mp_outdir_read_factors is this, dequantized. */
typedef struct {
    int64_t m, n, rank;
    int delta;
    mp_qtensor *W, *U, *V;
} mp_outdir_qfactors;
int mp_outdir_read_qfactors(mp_outdir *o, int l, int u, int p, mp_outdir_qfactors *q);
void mp_outdir_qfactors_free(mp_outdir_qfactors *q);
/* The base block of projection p of MoE layer l ([m, n] as the routed experts'), packed; the caller destroys
 * it (mp_qtensor_destroy). MP_EUSAGE when the output has no decomposition. */
int mp_outdir_read_qbase(mp_outdir *o, int l, int p, mp_qtensor **out);
/* 1 when the output stores the decomposition (base + U V per routed expert) */
int mp_outdir_has_delta(const mp_outdir *o);
/* Open every shard listed in index.json; MP_ENOENT / MP_EFORMAT naming the first that is missing, of
 * another size than recorded, not HDF5 or, with verify, of another XXH64 than recorded (checked before
 * HDF5 reads it: a damaged file is refused, not handed to libhdf5). */
int mp_outdir_check_shards(mp_outdir *o, int verify);

#endif
