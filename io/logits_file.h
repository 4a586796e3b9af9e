/* logits_file.h - next-token logits as an HDF5 file, for comparisons with other implementations.
 *
 * One dataset `logits`, float32 [n_seq, seq_len, vocab]: row t of sequence s holds the logits that
 * predict token t + 1 (as `moepack eval --dump-logits` computes them with the C forward pass).
 * Built in memory and committed atomically (h5util.h). Local. */
#ifndef MP_LOGITS_FILE_H
#define MP_LOGITS_FILE_H
#include <stdint.h>

int mp_logits_write(const char *path, const float *logits, int64_t n_seq, int64_t seq_len, int64_t vocab);

#endif
