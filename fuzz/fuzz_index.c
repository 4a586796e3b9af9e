/* fuzz_index.c - libFuzzer harness for the model.safetensors.index.json parser.
 *
 * The input is the index text; mp_st_index_parse must either refuse it with a
 * message or return shard names that all pass mp_st_shard_name_ok (no path
 * leaves the checkpoint directory) and tensors that each point at one of them. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mp_st_index ix;
    if (mp_st_index_parse((const char *)data, size, "fuzz/model.safetensors.index.json", &ix) == 0) {
        const char *why;
        if (ix.nfiles <= 0 || ix.ntensors <= 0)
            abort();
        for (int i = 0; i < ix.nfiles; i++)
            if (mp_st_shard_name_ok(ix.files[i], &why) != 0 || strstr(ix.files[i], "/") || !strcmp(ix.files[i], ".."))
                abort();
        for (int i = 0; i < ix.ntensors; i++)
            if (ix.file_of[i] < 0 || ix.file_of[i] >= ix.nfiles)
                abort();
        mp_st_index_free(&ix);
    } else if (!mp_error_message()[0]) {
        abort(); /* every refusal says why */
    }
    mp_error_clear();
    return 0;
}
