/* fuzz_safetensors.c - libFuzzer harness for the safetensors header parser.
 *
 * The input is a whole safetensors file image; it goes through mp_ckpt_open_mem,
 * the parser mp_ckpt_open_file uses, and every float tensor that validates is
 * then read as fp32 (FP8 block scales included), so an accepted header must
 * describe bytes that really lie inside the image. */
#include <stdint.h>
#include <stdlib.h>

#include "error.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mp_ckpt *c = NULL;
    if (mp_ckpt_open_mem(data, size, "fuzz.safetensors", &c) == 0) {
        for (int i = 0; i < c->ntensors; i++) {
            const mp_tensor *t = &c->tensors[i];
            if (mp_ckpt_find(c, t->name) != t)
                abort(); /* names are unique and sorted */
            if (!mp_dtype_is_float(t->dtype) || t->numel > (int64_t)size)
                continue;
            float *buf = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *buf);
            if (buf) {
                mp_ckpt_read_f32(c, t, 0, t->numel, buf);
                if (t->numel > 1)
                    mp_ckpt_read_f32(c, t, t->numel / 2, t->numel - t->numel / 2, buf);
            }
            free(buf);
        }
        mp_ckpt_close(c);
    }
    mp_error_clear();
    return 0;
}
