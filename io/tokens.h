/* tokens.h - calibration token files: HDF5 dataset `tokens`, int32 [n_seq, seq_len].
 *
 * mp_tokens_read validates the file: the dataset exists, is a 2-D integer
 * dataset of 4-byte signed integers, and (when vocab > 0) every id lies in
 * [0, vocab); errors name the file and the offending position. Local. */
#ifndef MP_TOKENS_H
#define MP_TOKENS_H

#include <stdint.h>

typedef struct {
    int n_seq, seq_len;
    int32_t *ids; /* [n_seq * seq_len], malloc'ed */
} mp_tokens;

int mp_tokens_read(const char *path, int vocab, mp_tokens *out);
/* Write atomically (temporary name, then rename). */
int mp_tokens_write(const char *path, const int32_t *ids, int n_seq, int seq_len);
void mp_tokens_free(mp_tokens *t);

#endif
