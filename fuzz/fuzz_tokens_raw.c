/* fuzz_tokens_raw.c - libFuzzer harness: raw bytes as an HDF5 file image for the tokens reader.
 *
 * The input is an HDF5 file image read with mp_tokens_read_image (the checks of
 * mp_tokens_read, on HDF5's in-memory "core" driver). A file that is accepted
 * must hold ids inside the vocabulary and sequences of at least 2 tokens.
 * NOT part of scripts/fuzz.sh: HDF5 1.10.8 itself crashed within minutes on
 * damaged files (a NULL memcpy in H5F__accum_read under H5Lexists; h5dump and
 * h5ls crash on the same file). The reader now walks the metadata first
 * (io/h5check.c) and refuses such files; HDF5's own code is not instrumented,
 * so damage beyond that walk stays HDF5's to handle (README, "Fuzzing"). Run it
 * by hand with FUZZ_ONLY=tokens_raw scripts/fuzz.sh. */
#include <hdf5.h>
#include <stdint.h>
#include <stdlib.h>

#include "error.h"
#include "tokens.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mp_tokens t;
    const int vocab = 1000;
    if (mp_tokens_read_image(data, size, "fuzz/tokens.h5", vocab, &t) == 0) {
        if (t.n_seq < 1 || t.seq_len < 2)
            abort();
        for (int64_t i = 0; i < (int64_t)t.n_seq * t.seq_len; i++)
            if (t.ids[i] < 0 || t.ids[i] >= vocab)
                abort();
        mp_tokens_free(&t);
    }
    /* every HDF5 object we opened is closed again (HDF5's own allocations are not ours: see README) */
    if (H5Fget_obj_count((hid_t)H5F_OBJ_ALL, H5F_OBJ_ALL) != 0)
        abort();
    mp_error_clear();
    return 0;
}
