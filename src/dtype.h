/* dtype.h - element types of checkpoint tensors and conversions to/from fp32.
 *
 * Names follow the safetensors specification ("F32", "BF16", "F8_E4M3", ...).
 * Conversions to fp32 are exact for every source type listed; fp32 -> bf16/f16
 * rounds to nearest even. F8_E4M3 is the "fn" variant (no infinities,
 * S.1111.111 is NaN) used by DeepSeek-V3. */
#ifndef MP_DTYPE_H
#define MP_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    MP_DT_BOOL, MP_DT_U8, MP_DT_I8, MP_DT_F8_E4M3, MP_DT_F8_E5M2, MP_DT_I16, MP_DT_U16,
    MP_DT_F16, MP_DT_BF16, MP_DT_I32, MP_DT_U32, MP_DT_F32, MP_DT_I64, MP_DT_U64, MP_DT_F64,
    MP_DT_COUNT
} mp_dtype;

/* Parse a safetensors dtype name; returns 0 and sets *out, or -1 if unknown. */
int mp_dtype_parse(const char *name, mp_dtype *out);
const char *mp_dtype_name(mp_dtype t);
size_t mp_dtype_size(mp_dtype t);
/* 1 for the floating types that can be read as fp32 weights. */
int mp_dtype_is_float(mp_dtype t);

float mp_bf16_to_f32(uint16_t h);
uint16_t mp_f32_to_bf16(float f);
float mp_f16_to_f32(uint16_t h);
uint16_t mp_f32_to_f16(float f);
float mp_f8e4m3_to_f32(uint8_t v);
float mp_f8e5m2_to_f32(uint8_t v);

/* Convert n elements of type `t` at `src` to fp32 in `dst`.
 * Returns 0, or -1 if `t` is not a float type. */
int mp_convert_to_f32(mp_dtype t, const void *src, size_t n, float *dst);

#endif
