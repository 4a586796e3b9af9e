/* quant.h - weight formats, RTN and GPTQ quantizers, code packing with fp16 scales/zeros, and the exact
 * losses of a quantized block (DESIGN.md section 4). Serial and local: BLAS/LAPACK, no MPI, no file I/O.
 * Losses and Grams are fp64; weights, GPTQ updates and codes' values are fp32.
 *
 * Shapes. A block is W [m, n] row-major (m = out, n = in), its input Gram H [n, n] fp64, symmetric
 * (H = sum over tokens of x x^T; any positive multiple gives the same quantization). Groups run along
 * the input dimension: group k of row r is columns [k g, min((k+1) g, n)), g = the format's group size;
 * the last group may be partial and has its own scale/zero. Per-channel formats (group 0) and a group
 * size >= n both mean ONE group per row of width n (no error: a rank-64 factor under w4g128 is
 * quantized per channel; mp_qformat_bytes counts what is stored).
 *
 * Grid (the compressed-tensors / llm-compressor min-max convention). With b bits, qmax = 2^b - 1,
 * half = 2^(b-1), mn = min(min(group), 0), mx = max(max(group), 0), all in fp32:
 *   asymmetric: s = (mx - mn) / qmax, zs = rint(clamp(-half - mn / s, -half, half - 1))
 *   symmetric:  s = max(-mn, mx) / (qmax / 2), zs = 0
 *   stored:     scale = fp16(s) (round to nearest even; s = 0 -> 1; an fp16 underflow -> the smallest
 *               subnormal; overflow -> MP_ENUMERIC), zero = zs + half (an integer 0..qmax, stored as fp16;
 *               symmetric formats store no zeros, their zero is half)
 *   code:       c = rint(clamp(w / scale + zs, -half, half - 1)) + half, in 0..qmax
 *   value:      (c - zero) * scale, exact in fp32; the quantizers choose codes with the fp16 scale and
 *               zero, so dequantization reproduces bit for bit the values GPTQ and the losses used.
 * fp16 format: the weights themselves rounded to IEEE half (RNE); no scales, no zeros.
 * Activations (w8a8, w4a4): per token (row of X), symmetric with the same grid and an fp32 scale
 * (computed at run time by a kernel, not stored).
 *
 * Packing. Codes of b bits (b = 2, 3, 4, 8; 16 for fp16 bit patterns) are packed per row into
 * ceil(n b / 32) uint32 words, rows padded with zero bits. Code i of a row occupies bits [b i, b i + b)
 * of the row's little-endian bit stream, stream bit p being bit (p mod 32) of word p / 32 (LSB first).
 * For b in {2, 4, 8, 16}: k = 32 / b codes per word, code i at bits [b (i mod k), b (i mod k) + b) of word
 * i / k. For b = 3 the stream is continuous: 32 codes fill 3 words and codes 10 and 21 of each such run
 * straddle two words (the GPTQ/AutoGPTQ 3-bit order, here along a row of W).
 *
 * GPTQ (Frantar et al. 2022, with llm-compressor's quantize_weight conventions): columns with H_ii = 0 are
 * dead (H_ii := 1, W[:, i] := 0); damping percdamp * mean(diag H) is added to the diagonal (after the
 * dead fix); if the Cholesky factorisation fails, percdamp is multiplied by 10 and it is retried (at most
 * 6 times; the final value is reported). Columns are processed in blocks of `blocksize` (lazy batch
 * updates, BLAS-3). The implementation is left-looking with R, H = R R^T (R upper, computed as the
 * reversed Cholesky factor in fp64): with U = R^-1 the upper Cholesky factor of H^-1 that GPTQ uses,
 * W - Q = Err U, so Err = (W - Q) R and the weight seen by column j is W_j + (sum_{i<j} D_i R_ij) / R_jj,
 * D = W - Q. That is the same algorithm in exact arithmetic and needs one n^3/3 factorisation instead of
 * three. Group scales/zeros: static_groups (default) computes every group's scale/zero up front from
 * the original (dead-zeroed) weights, as llm-compressor >= 0.6 always does; with static_groups = 0 (and
 * act_order = 0) a group's scale/zero is computed when its first column is reached, from the weights as
 * updated by every earlier block (GPTQ's lazy-batch state; with g = blocksize = 128 that is the fully
 * updated weight), as the GPTQ reference code, AutoGPTQ and llm-compressor <= 0.5 do; blocksize is then
 * rounded up to a multiple of g. act_order (default, llm-compressor's default "static" ordering):
 * columns are processed by descending diag H (stable: ties by index; dead columns last); it forces
 * static_groups, so a column's group stays column / g in the original order and no g_idx is stored.
 * Codes, scales and zeros are always in the original column order. Per-channel formats compute their
 * scales up front (static and dynamic coincide). On correlated H with unequal channel scales, static
 * groups give up to 17 % lower loss than dynamic ones and act-order about a third lower than either
 * (README, "Quantizers"; bench_gptq --options).
 *
 * Ownership: mp_qtensor and mp_gptq_factor have create/destroy pairs and one owner; the quantizers and
 * mp_quant_measure hand a new mp_qtensor to the caller. Formats point into a static table.
 * Errors: negative MP_E* codes with a message naming the caller's `label` (e.g. "layer 3 expert 5 gate U";
 * NULL reads "block"): MP_EUSAGE (unknown format, empty list, bad shape/argument), MP_ENUMERIC (NaN/Inf
 * in W, H or X, negative diag H, Cholesky failing after every retry, a scale overflowing fp16, a
 * non-finite loss), MP_ENOMEM. Thread safety: no global state; BLAS threading is the caller's choice. */
#ifndef MP_QUANT_H
#define MP_QUANT_H

#include <stdint.h>

/* ---- formats ------------------------------------------------------------------------------------ */
typedef struct {
    const char *name;       /* "w4g128" */
    int bits;               /* weight bits 2, 3, 4, 8; 16 = fp16 (weights stored as IEEE half) */
    int group;              /* input columns per scale/zero; 0 = per output channel */
    int symmetric;          /* 1: no zero point stored (zero = 2^(bits-1)) */
    int act_bits;           /* per-token symmetric activation bits, 0 = weights only */
    double bits_per_weight; /* nominal stored bits incl. a group's fp16 scale (+ zero): w4g128 = 4.25;
                               per-channel formats count the codes only (w8 = 8, + 32 bits per row) */
} mp_qformat;

/* The table: fp16 w8 w4 w4g128 w3g128 w2g128 w2g64 w8a8 w4a4 (in that order). */
int mp_qformat_count(void);
const mp_qformat *mp_qformat_at(int i); /* NULL when out of range */
/* By name; MP_EUSAGE naming `name` and listing the known names. */
int mp_qformat_find(const char *name, const mp_qformat **out);
/* Comma-separated names (spaces around names ignored) into out[cap]; *count = number parsed.
 * MP_EUSAGE: empty list, empty entry, unknown name, a name listed twice, more than cap names. */
int mp_qformat_parse_list(const char *list, const mp_qformat **out, int cap, int *count);
/* Effective group width of an [m, n] block: the format's group, or n for per-channel / group >= n. */
int64_t mp_qformat_group_width(const mp_qformat *f, int64_t n);
int64_t mp_qformat_groups(const mp_qformat *f, int64_t n); /* groups per row: ceil(n / width) */
/* Exact stored bytes of an [m, n] block: packed codes (rows padded to words) + fp16 scales + fp16 zeros. */
int64_t mp_qformat_bytes(const mp_qformat *f, int64_t m, int64_t n);

/* ---- packing ------------------------------------------------------------------------------------ */
int64_t mp_packed_words(int64_t n, int bits); /* uint32 words per row: ceil(n bits / 32) */
/* codes [m, n] (each < 2^bits) -> words [m, mp_packed_words(n, bits)]; MP_EUSAGE if a code is too wide. */
int mp_pack_codes(const uint16_t *codes, int64_t m, int64_t n, int bits, uint32_t *words);
void mp_unpack_codes(const uint32_t *words, int64_t m, int64_t n, int bits, uint16_t *codes);

/* ---- quantized tensor --------------------------------------------------------------------------- */
typedef struct {
    const mp_qformat *fmt;
    int64_t m, n;
    int64_t group;         /* effective group width (mp_qformat_group_width) */
    int64_t ngroups;       /* groups per row */
    int64_t words_per_row; /* mp_packed_words(n, fmt->bits) */
    uint32_t *qweight;     /* [m, words_per_row] packed codes (fp16: the half bit patterns) */
    uint16_t *scales;      /* [m, ngroups] fp16; NULL for fp16 */
    uint16_t *zeros;       /* [m, ngroups] fp16 integers 0..2^bits-1; NULL for symmetric formats and fp16 */
} mp_qtensor;

/* Zero-filled tensor of format f and shape [m, n] (m, n >= 1); a reader fills it. */
int mp_qtensor_create(const mp_qformat *f, int64_t m, int64_t n, mp_qtensor **out);
void mp_qtensor_destroy(mp_qtensor *q);
/* out [m, n] fp32 = (code - zero) * scale (fp16: the half values). */
void mp_qtensor_dequant(const mp_qtensor *q, float *out);
void mp_qtensor_codes(const mp_qtensor *q, uint16_t *codes); /* unpacked codes [m, n] */

/* ---- quantizers --------------------------------------------------------------------------------- */
/* Round to nearest with min-max scales. W [m, n]. */
int mp_quant_rtn(const mp_qformat *f, const float *W, int64_t m, int64_t n, const char *label, mp_qtensor **out);

typedef struct {
    double percdamp;   /* relative damping, default 0.01 */
    int blocksize;     /* lazy-batch block, default 128 */
    int act_order;     /* process columns by descending diag H (forces static_groups), default 1 */
    int static_groups; /* group scales from the original weights up front, default 1 */
} mp_gptq_opts;
void mp_gptq_opts_default(mp_gptq_opts *o);

typedef struct {
    double percdamp; /* relative damping that succeeded (opts.percdamp * 10^retries) */
    double damp;     /* absolute value added to the diagonal: percdamp * mean(diag H after the dead fix) */
    int retries;     /* failed Cholesky attempts before it */
    int64_t dead;    /* columns with H_ii = 0 */
    double flops;    /* floating-point operations executed (factorisation and/or quantization) */
} mp_gptq_info;

/* The damped, permuted Hessian factor of one block (n^3/3 flops, n^2 fp32 kept), reusable for every
 * format quantized with the same H: the measure stage prepares it once per block. H [n, n] is read, not
 * kept. opts NULL = defaults. */
typedef struct mp_gptq_factor mp_gptq_factor;
int mp_gptq_factor_create(const double *H, int64_t n, const mp_gptq_opts *opts, const char *label,
                          mp_gptq_factor **out);
void mp_gptq_factor_destroy(mp_gptq_factor *fac);
void mp_gptq_factor_info(const mp_gptq_factor *fac, mp_gptq_info *info); /* flops: of the factorisation */

/* GPTQ of W [m, n] with a prepared factor (its n must match). info (may be NULL): the factor's damping and
 * the flops of this quantization only. fp16 format: plain rounding. */
int mp_quant_gptq_factored(const mp_qformat *f, const float *W, int64_t m, int64_t n, const mp_gptq_factor *fac,
                           const char *label, mp_qtensor **out, mp_gptq_info *info);
/* Both steps in one call; info->flops counts both. */
int mp_quant_gptq(const mp_qformat *f, const float *W, int64_t m, int64_t n, const double *H, const mp_gptq_opts *opts,
                  const char *label, mp_qtensor **out, mp_gptq_info *info);

/* ---- losses (fp64) ------------------------------------------------------------------------------ */
/* tr(O E H E^T), E = W - Wq [m, n], H [n, n] symmetric, O [m, m] symmetric or NULL (= identity: the
 * squared output error on the tokens of H). With O = U^T U it is the loss of a V factor seen through U. */
int mp_loss_gram(const float *W, const float *Wq, int64_t m, int64_t n, const double *H, const double *O,
                 const char *label, double *loss);
/* V G V^T [r, r] (symmetrised) for V [r, n], G [n, n]: the Hessian of a U factor. */
int mp_factor_gram(const float *V, int64_t r, int64_t n, const double *G, double *out);
/* Exact loss of a delta U V (U [m, r], V [r, n]) stored as Uq Vq, on the tokens of G [n, n]:
 * tr((UV - Uq Vq) G (UV - Uq Vq)^T), computed without forming the [m, n] product as
 * tr(A^T A . B G B^T) with A = [U, U - Uq], B = [V - Vq; Vq]. Uq or Vq NULL: that factor is exact, giving
 * tr(U^T U . E_V G E_V^T) (V quantized) or tr(E_U (V G V^T) E_U^T) (U quantized). */
int mp_loss_factors(const float *U, const float *Uq, int64_t m, int64_t r, const float *V, const float *Vq, int64_t n,
                    const double *G, const char *label, double *loss);
/* Per-token symmetric activation quantization of X [t, n] to `bits` (fp32 scale per row): Xq [t, n]. */
void mp_quant_act(const float *X, int64_t t, int64_t n, int bits, float *Xq);
/* sum over the t rows x of X [t, n] of d^T O d, d = W x - Wq Qa(x) (Qa: mp_quant_act with act_bits),
 * O [m, m] or NULL (identity). Computed as [X - Qa(X), Qa(X)] [W, W - Wq]^T in fp64 (no cancellation). */
int mp_loss_act(const float *W, const float *Wq, int64_t m, int64_t n, const float *X, int64_t t, int act_bits,
                const double *O, const char *label, double *loss);

/* ---- one call for the measure stage --------------------------------------------------------------- */
typedef enum { MP_QUANT_RTN = 0, MP_QUANT_GPTQ = 1 } mp_qmethod;

typedef struct {
    const float *W; /* [m, n] block (a base projection, an expert weight, a U or a V factor) */
    int64_t m, n;
    const double *H; /* [n, n] input Gram: G_in / G_mid / their sums; V G V^T for a U factor */
    const double *O; /* [m, m] output metric or NULL; U^T U for a V factor */
    const float *X;  /* [t, n] sample of the block's inputs (activation formats only; X V^T for U) */
    int64_t t;
    double x_scale;    /* weight of the sample loss, e.g. (tokens of H) / t; <= 0 means 1 */
    const char *label; /* names the block in errors */
} mp_qblock;

typedef struct {
    double loss;        /* loss of the option: loss_gram, or x_scale * loss_sample for activation formats */
    double loss_gram;   /* tr(O E H E^T): the weight error on every token of H */
    double loss_sample; /* activation formats: sum over the sample of ||O^1/2 (W x - Wq Qa(x))||^2; else 0 */
    int64_t bytes;      /* mp_qformat_bytes */
    mp_gptq_info gptq;  /* GPTQ only (zero for RTN): damping used and retries */
} mp_qresult;

/* Quantize blk->W with format f and method, and measure its loss. GPTQ uses `fac` when given (prepared
 * from blk->H; its options apply), else prepares one with default options. Activation formats need
 * blk->X (MP_EUSAGE otherwise). out (may be NULL) receives the quantized tensor. */
int mp_quant_measure(const mp_qformat *f, mp_qmethod method, const mp_qblock *blk, const mp_gptq_factor *fac,
                     mp_qresult *res, mp_qtensor **out);

#endif
