/* test_dtype_reader.c - dtype conversions and the safetensors reader against
 * values written by PyTorch (tests/fixtures/fp8_blocks.safetensors: an FP8 E4M3
 * weight with DeepSeek-V3 128x128 block scales, an F16 and a BF16 tensor, each
 * with the fp32 values torch computed). */
#include <stdint.h>

#include "dtype.h"
#include "safetensors.h"
#include "testutil.h"

static void check_against_expected(const mp_ckpt *c, const char *w, const char *exp, double rtol)
{
    const mp_tensor *tw = mp_ckpt_find(c, w), *te = mp_ckpt_find(c, exp);
    CHECK(tw && te);
    if (!tw || !te)
        return;
    CHECK(tw->numel == te->numel);
    float *a = malloc(sizeof(float) * (size_t)tw->numel), *b = malloc(sizeof(float) * (size_t)te->numel);
    CHECK_OK(mp_ckpt_read_f32(c, tw, 0, tw->numel, a));
    CHECK_OK(mp_ckpt_read_f32(c, te, 0, te->numel, b));
    int64_t bad = 0;
    for (int64_t i = 0; i < tw->numel; i++)
        if (!(fabs((double)a[i] - b[i]) <= rtol * fabs((double)b[i])))
            bad++;
    CHECK(bad == 0);
    if (bad)
        fprintf(stderr, "  %s: %lld of %lld values differ from %s\n", w, (long long)bad, (long long)tw->numel, exp);
    /* a read of a sub-range gives the same values */
    int64_t first = tw->numel / 3, n = tw->numel / 4;
    float *part = malloc(sizeof(float) * (size_t)n);
    CHECK_OK(mp_ckpt_read_f32(c, tw, first, n, part));
    CHECK(memcmp(part, a + first, sizeof(float) * (size_t)n) == 0);
    free(part);
    /* rows in any order, repeated (an embedding lookup): the same values; a row past the end is an error */
    if (tw->ndim == 2 && tw->shape[0] >= 2) {
        int64_t w_ = tw->shape[1];
        int32_t rows[4] = {(int32_t)tw->shape[0] - 1, 0, (int32_t)(tw->shape[0] / 2), 0};
        float *r = malloc(sizeof(float) * (size_t)(4 * w_));
        CHECK_OK(mp_ckpt_read_rows_f32(c, tw, rows, 4, w_, r));
        for (int i = 0; i < 4; i++)
            CHECK(memcmp(r + i * w_, a + rows[i] * w_, sizeof(float) * (size_t)w_) == 0);
        rows[2] = (int32_t)tw->shape[0];
        CHECK(mp_ckpt_read_rows_f32(c, tw, rows, 4, w_, r) == MP_EINTERNAL);
        free(r);
    }
    free(a);
    free(b);
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int main(void)
{
    mp_ckpt *c = NULL;
    CHECK_OK(mp_ckpt_open_file(MP_FIXTURES "/fp8_blocks.safetensors", &c));
    if (!c)
        return t_done("dtype_reader");
    check_against_expected(c, "w.weight", "w.expected", 0.0); /* fp8 x fp32 scale is exact in fp32 */
    check_against_expected(c, "b.weight", "b.expected", 0.0);
    check_against_expected(c, "c.weight", "c.expected", 0.0);
    CHECK(mp_tensor_is_aux("w.weight_scale_inv"));
    CHECK(!mp_tensor_is_aux("w.weight"));
    CHECK_ERR(mp_ckpt_read_named_f32(c, "nope.weight", NULL, 0), MP_ENOENT, "nope.weight");
    mp_ckpt_close(c);

    /* FP8 E5M2 is the top byte of an IEEE half */
    for (int v = 0; v < 256; v++) {
        float a = mp_f8e5m2_to_f32((uint8_t)v), b = mp_f16_to_f32((uint16_t)(v << 8));
        CHECK((isnan(a) && isnan(b)) || bits(a) == bits(b));
    }
    /* FP8 E4M3FN landmarks (OCP spec): 1.0, max 448, min subnormal 2^-9, NaN, -0 */
    CHECK(mp_f8e4m3_to_f32(0x38) == 1.0f);
    CHECK(mp_f8e4m3_to_f32(0x7e) == 448.0f);
    CHECK(mp_f8e4m3_to_f32(0x01) == ldexpf(1.0f, -9));
    CHECK(isnan(mp_f8e4m3_to_f32(0x7f)) && isnan(mp_f8e4m3_to_f32(0xff)));
    CHECK(bits(mp_f8e4m3_to_f32(0x80)) == 0x80000000u);
    /* every finite half survives f16 -> f32 -> f16 */
    int bad = 0;
    for (int h = 0; h < 65536; h++) {
        float f = mp_f16_to_f32((uint16_t)h);
        if (!isnan(f) && mp_f32_to_f16(f) != h)
            bad++;
    }
    CHECK(bad == 0);
    /* round to nearest even */
    CHECK(mp_f32_to_bf16(from_bits(0x3F808000u)) == 0x3F80); /* tie, even below */
    CHECK(mp_f32_to_bf16(from_bits(0x3F818000u)) == 0x3F82); /* tie, even above */
    CHECK(mp_f32_to_bf16(from_bits(0x3F808001u)) == 0x3F81);
    CHECK(mp_f32_to_f16(65504.0f) == 0x7BFF);
    CHECK(mp_f32_to_f16(65520.0f) == 0x7C00); /* rounds to +inf */
    CHECK(mp_f32_to_f16(1.0f / 3.0f) == 0x3555);
    CHECK(mp_f32_to_f16(ldexpf(1.0f, -24)) == 0x0001); /* smallest subnormal */
    CHECK(isnan(mp_bf16_to_f32(mp_f32_to_bf16(NAN))));
    mp_dtype t;
    CHECK_OK(mp_dtype_parse("BF16", &t));
    CHECK(t == MP_DT_BF16 && mp_dtype_size(t) == 2);
    CHECK(mp_dtype_parse("F7", &t) < 0);
    return t_done("dtype_reader");
}
