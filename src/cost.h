/* cost.h - the cost (predicted time) of a block under a format: the roofline model of DESIGN section 4,
 * a device profile, and measured kernel timings that replace the model where they match.
 *
 * Model. A block W [m, n] (m outputs, n inputs, row-major as in the checkpoints) stored in format s and run
 * as one GEMM over M tokens (M = the expert's routed tokens at the design batch) takes
 *     time = max(bytes(W, s) / BW, 2*M*m*n / FLOPS_s)
 * with bytes(W, s) the stored size of the weights (codes, scales and zero points: the caller computes it
 * from the format table), BW the HBM bandwidth and FLOPS_s the dense tensor-core rate of the compute kind
 * the format runs on:
 *   - weight-only formats (fp16, w8, w4, w4g128, w3g128, w2g64, ...) dequantize to fp16 inside the kernel
 *     and multiply in fp16: the fp16 rate;
 *   - w8a8: the int8 rate;
 *   - w4a4: the int4 rate where the device has int4 tensor cores. Hopper (H100) has none (its MMA
 *     instructions stop at 8-bit; Ampere's INT4 path was dropped), and w4a4 kernels on Hopper unpack the
 *     4-bit values to int8 and use the int8 MMA, so a profile gives int4 as 0 ("not native") and the int8
 *     rate is used (fallback int4 -> int8 -> fp16; the kind actually used is reported).
 * Traffic of activations and outputs is ignored: the weights dominate at small M, the compute term at
 * large M. All rates are dense (no 2:4 sparsity).
 *
 * Measured timings. A table of (format name, m, n, M) -> seconds replaces the model where it matches:
 * the format and the shape must match exactly; for M, an entry with the same M is used as is, and an M
 * strictly between two measured M of that (format, m, n) is interpolated linearly between its two
 * neighbours; an M outside the measured range, or a shape or format without entries, uses the model (no
 * extrapolation). The table's file format and parser are in io/device_profile.h.
 *
 * Local, no I/O. Errors: MP_EUSAGE (bad arguments), MP_ENOMEM. */
#ifndef MP_COST_H
#define MP_COST_H

#include <stdint.h>

typedef enum { MP_COMPUTE_FP16, MP_COMPUTE_INT8, MP_COMPUTE_FP8, MP_COMPUTE_INT4, MP_COMPUTE_COUNT } mp_compute_kind;

/* "fp16", "int8", "fp8", "int4" */
const char *mp_compute_kind_name(mp_compute_kind k);
/* 0 and *k for a known name, -1 otherwise (no error recorded) */
int mp_compute_kind_from_name(const char *name, mp_compute_kind *k);
/* The kind a format computes in, from its activation bits: 16 (weight-only) -> fp16, 8 -> int8,
   4 -> int4; other values are MP_EUSAGE. */
int mp_compute_kind_for_act_bits(int act_bits, mp_compute_kind *k);

typedef struct {
    char name[64];
    double hbm_bytes_per_s;                  /* memory bandwidth, bytes/s */
    double peak_ops_per_s[MP_COMPUTE_COUNT]; /* dense tensor-core rate per kind (FLOP/s or OP/s); 0 = not native */
    char source[512];                        /* where the figures come from */
} mp_device_profile;

/* The built-in default: NVIDIA H100 SXM5 (the same figures as jobs/devices/h100-sxm.json). */
void mp_device_profile_h100_sxm(mp_device_profile *d);

/* The rate used for kind k: its own when > 0, else the fallback int4 -> int8 -> fp16 (fp8 -> fp16);
   `used` (may be NULL) receives the kind whose rate is returned. 0 when not even fp16 is given. */
double mp_device_rate(const mp_device_profile *d, mp_compute_kind k, mp_compute_kind *used);

typedef struct {
    double seconds;            /* the cost */
    double memory_s;           /* bytes / BW (the model's terms, also filled when a measurement is used) */
    double compute_s;          /* 2 M m n / rate */
    int memory_bound;          /* memory_s >= compute_s */
    int measured;              /* 1: from the timings table (exact M), 2: interpolated between two M */
    mp_compute_kind kind_used; /* the rate's kind (after fallback) */
} mp_cost;

/* Measured timings, kept sorted by (format, m, n, M). */
typedef struct {
    char format[32];
    int64_t m, n, M;
    double seconds;
} mp_timing;

typedef struct {
    int n, cap;
    mp_timing *t;
} mp_timings;

void mp_timings_init(mp_timings *tt);
void mp_timings_free(mp_timings *tt);
/* Insert an entry (format name of at most 31 characters, m, n, M > 0, seconds > 0 and finite).
   An entry with the same (format, m, n, M) already present is MP_EUSAGE; so are bad values. */
int mp_timings_add(mp_timings *tt, const char *format, int64_t m, int64_t n, int64_t M, double seconds);
/* The measured (or interpolated) time by the rule above: 1 exact M, 2 interpolated, 0 no match. */
int mp_timings_lookup(const mp_timings *tt, const char *format, int64_t m, int64_t n, int64_t M, double *seconds);

/* The roofline model alone. m, n, M >= 1, weight_bytes >= 0; a profile without a usable rate or
   bandwidth is MP_EUSAGE. */
int mp_roofline(const mp_device_profile *d, int64_t m, int64_t n, int64_t M, int64_t weight_bytes, mp_compute_kind kind,
                mp_cost *out);

/* The cost of a block: the timings table (may be NULL) where it matches `format`, else the model. */
int mp_block_cost(const mp_device_profile *d, const mp_timings *tt, const char *format, int64_t m, int64_t n, int64_t M,
                  int64_t weight_bytes, mp_compute_kind kind, mp_cost *out);

#endif
