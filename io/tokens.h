/* tokens.h - calibration token files: HDF5 dataset `tokens`, int32 [n_seq, seq_len].
 *
 * mp_tokens_read validates the file: a regular HDF5 file (its metadata walked
 * first, h5check.h, as HDF5 1.10.8 crashes on some damaged files) whose dataset
 * `tokens` is 2-D, of 4-byte signed integers, with data written, sequences of
 * at least 2 tokens (the first token of a sequence is never predicted), at
 * most 2^31 - 1 tokens in all, and (when vocab > 0) every id in [0, vocab).
 * Anything else is MP_EFORMAT (a missing file MP_ENOENT) naming the file and,
 * for ids, the position. Local. */
#ifndef MP_TOKENS_H
#define MP_TOKENS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_seq, seq_len;
    int32_t *ids; /* [n_seq * seq_len], malloc'ed */
} mp_tokens;

int mp_tokens_read(const char *path, int vocab, mp_tokens *out);
/* The same checks on an HDF5 file image in memory (`what` names it in messages); for the fuzzer. */
int mp_tokens_read_image(const void *buf, size_t n, const char *what, int vocab, mp_tokens *out);
/* Write atomically (temporary name, then rename). */
int mp_tokens_write(const char *path, const int32_t *ids, int n_seq, int seq_len);
void mp_tokens_free(mp_tokens *t);

#endif
