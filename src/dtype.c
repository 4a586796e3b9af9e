/* dtype.c - element type table and exact conversions to fp32 (see dtype.h). */
#include "dtype.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
    int is_float;
} dt_table[MP_DT_COUNT] = {
    [MP_DT_BOOL] = {"BOOL", 1, 0},    [MP_DT_U8] = {"U8", 1, 0},
    [MP_DT_I8] = {"I8", 1, 0},        [MP_DT_F8_E4M3] = {"F8_E4M3", 1, 1},
    [MP_DT_F8_E5M2] = {"F8_E5M2", 1, 1}, [MP_DT_I16] = {"I16", 2, 0},
    [MP_DT_U16] = {"U16", 2, 0},      [MP_DT_F16] = {"F16", 2, 1},
    [MP_DT_BF16] = {"BF16", 2, 1},    [MP_DT_I32] = {"I32", 4, 0},
    [MP_DT_U32] = {"U32", 4, 0},      [MP_DT_F32] = {"F32", 4, 1},
    [MP_DT_I64] = {"I64", 8, 0},      [MP_DT_U64] = {"U64", 8, 0},
    [MP_DT_F64] = {"F64", 8, 1},
};

int mp_dtype_parse(const char *name, mp_dtype *out)
{
    for (int i = 0; i < MP_DT_COUNT; i++)
        if (strcmp(name, dt_table[i].name) == 0) {
            *out = (mp_dtype)i;
            return 0;
        }
    return -1;
}

const char *mp_dtype_name(mp_dtype t) { return (unsigned)t < MP_DT_COUNT ? dt_table[t].name : "?"; }
size_t mp_dtype_size(mp_dtype t) { return (unsigned)t < MP_DT_COUNT ? dt_table[t].size : 0; }
int mp_dtype_is_float(mp_dtype t) { return (unsigned)t < MP_DT_COUNT && dt_table[t].is_float; }

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float mp_bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

uint16_t mp_f32_to_bf16(float f)
{
    uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float mp_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0) { /* zero or subnormal: man * 2^-24 */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return bits_to_f32(sign | 0x7f800000u | (man << 13));
    return bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t mp_f32_to_f16(float f)
{
    uint32_t u = f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    float a = fabsf(f);
    if (isnan(f))
        return (uint16_t)(sign | 0x7e00u);
    if (a >= 65520.0f) /* rounds to infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x1p-14f) { /* subnormal: round(a / 2^-24) to nearest even */
        float q = a * 0x1p24f;
        float r = nearbyintf(q); /* default rounding mode is to nearest even */
        return (uint16_t)(sign | (uint16_t)r);
    }
    uint32_t ua = f32_to_bits(a);
    uint32_t exp = ((ua >> 23) & 0xffu) - 112u;
    uint32_t man = ua & 0x7fffffu;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++; /* carries into the exponent correctly */
    return (uint16_t)(sign | h);
}

float mp_f8e4m3_to_f32(uint8_t v)
{
    int sign = v & 0x80;
    int exp = (v >> 3) & 0xf;
    int man = v & 0x7;
    float r;
    if (exp == 0xf && man == 0x7)
        return NAN;
    if (exp == 0)
        r = (float)man * 0x1p-9f; /* man/8 * 2^-6 */
    else
        r = ldexpf(1.0f + (float)man / 8.0f, exp - 7);
    return sign ? -r : r;
}

float mp_f8e5m2_to_f32(uint8_t v) { return mp_f16_to_f32((uint16_t)((uint16_t)v << 8)); }

int mp_convert_to_f32(mp_dtype t, const void *src, size_t n, float *dst)
{
    const unsigned char *p = src;
    switch (t) {
    case MP_DT_F32: memcpy(dst, src, n * 4); return 0;
    case MP_DT_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return 0;
    case MP_DT_BF16:
    case MP_DT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = t == MP_DT_BF16 ? mp_bf16_to_f32(h) : mp_f16_to_f32(h);
        }
        return 0;
    case MP_DT_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            dst[i] = mp_f8e4m3_to_f32(p[i]);
        return 0;
    case MP_DT_F8_E5M2:
        for (size_t i = 0; i < n; i++)
            dst[i] = mp_f8e5m2_to_f32(p[i]);
        return 0;
    default: return -1;
    }
}
