/* qtensor_h5.h - packed quantized tensors (src/quant.h: mp_qtensor) as HDF5 groups, and the small
 * attribute helpers every moepack HDF5 output shares.
 *
 * A tensor is a group holding
 *   qweight  uint32 little-endian [m, words_per_row]  the packed codes (quant.h: packing bit order)
 *   scales   IEEE half [m, ngroups]                    absent for fp16
 *   zeros    IEEE half [m, ngroups]                    absent for symmetric formats and fp16
 * and the group and every dataset carry the attributes
 *   format      string, a name of quant.h's table ("w4g128")
 *   bits        int32, code bits (16 for fp16: half bit patterns, two per word)
 *   group_size  int64, the effective group width along the input dimension (n for per-channel
 *               formats, 0 for fp16)
 *   shape       int64 [2], the dequantized tensor's [m, n]
 *   scheme      string, "asym" (zeros stored), "sym" (zero = 2^(bits-1), none stored) or "fp16"
 *   act_bits    int32, per-token activation bits (w8a8, w4a4 only)
 *   rank        int64, the delta's rank (factors of a delta only)
 * HDF5 1.10 has no half type: it is the IEEE layout described to HDF5 (sign 15, exponent 10..14 with
 * bias 15, mantissa 0..9), which h5py reads as numpy.float16 and h5dump prints as numbers.
 * No object timestamps are stored (equal contents, equal bytes). Local. */
#ifndef MP_QTENSOR_H5_H
#define MP_QTENSOR_H5_H
#include <hdf5.h>
#include <stdint.h>

#include "quant.h"

/* The IEEE binary16 little-endian type (caller closes with H5Tclose). */
hid_t mp_h5_half_type(void);
/* A group creation property list without timestamps (caller closes). */
hid_t mp_h5_gcpl(void);
/* Create group `path` under loc and every missing group on the way ("a/b/c"), without timestamps;
 * returns the last group's id (caller closes) or < 0. */
hid_t mp_h5_mkgroup(hid_t loc, const char *path);

/* attributes on an object (0, or -1 on failure) */
int mp_h5_attr_str(hid_t loc, const char *name, const char *v);
int mp_h5_attr_i64(hid_t loc, const char *name, int64_t v);
int mp_h5_attr_i32(hid_t loc, const char *name, int32_t v);
int mp_h5_attr_f64(hid_t loc, const char *name, double v);
int mp_h5_attr_i64v(hid_t loc, const char *name, const int64_t *v, int n); /* int64 [n] */
/* Readers: 0, or -1 when absent or of another kind (the caller names the file). */
int mp_h5_attr_read_str(hid_t loc, const char *name, char *buf, int cap);
int mp_h5_attr_read_i64(hid_t loc, const char *name, int64_t *v);
int mp_h5_attr_read_f64(hid_t loc, const char *name, double *v);
int mp_h5_attr_read_i64v(hid_t loc, const char *name, int64_t *v, int n);

/* After a failed HDF5 call: MP_EIO "<file>: <what>: <system error>" when HDF5's error stack holds a failed
 * system call (a full disk: "No space left on device"), else `code` with "<file>: <what>"; the stack is
 * cleared. */
int mp_h5_fail(int code, const char *file, const char *what);
/* Keep the system error of a call that just failed for the next mp_h5_fail (every later HDF5 call clears
 * HDF5's stack: closing handles before reporting would lose it). */
void mp_h5_capture(void);

/* Write q as group `name` under loc (see above); rank >= 0 adds the rank attribute. -1 on failure. */
int mp_qtensor_h5_write(hid_t loc, const char *name, const mp_qtensor *q, int64_t rank);
/* Read the group `name` under loc into a new tensor: the format from its attribute, every dataset's
 * shape checked against it. MP_EFORMAT naming `what` (e.g. the file) and the group otherwise. */
int mp_qtensor_h5_read(hid_t loc, const char *name, const char *what, mp_qtensor **out);
/* "asym", "sym" or "fp16" */
const char *mp_qformat_scheme(const mp_qformat *f);

#endif
