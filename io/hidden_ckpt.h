/* hidden_ckpt.h - the residual stream after the last calibrated layer, one file per rank, so that a resumed
 * calibration loads it instead of replaying the forward pass of the layers it keeps.
 *
 * File DIR/hidden/seqAAAAAAAA-BBBBBBBB.bin for the global sequences [A, B) of one rank: a 64-byte header
 * (magic "MPHIDDEN", version 1, the calibrate stage fingerprint, the layer whose output it holds, A, B,
 * seq_len, d, the XXH64 of the data; int64/uint64 little-endian) and the rows h [(B - A) seq_len, d] as
 * fp32 little-endian. Written under a temporary name and renamed over the previous layer's file, without
 * fsync: a damaged or stale file fails its checks and the forward pass is replayed instead. Local. */
#ifndef MP_HIDDEN_CKPT_H
#define MP_HIDDEN_CKPT_H
#include <stddef.h>
#include <stdint.h>

/* Told of each slice of h once it was read or written (done may be NULL): e.g. to give its memory back
 * (ep_forward.h: mp_epf_hidden_done). */
typedef void (*mp_rows_done)(void *ctx, const void *rows, size_t bytes);

/* Save h after `layer` for sequences [seq0, seq0 + nseq) (nseq > 0), read slice by slice. */
int mp_hidden_save(const char *dir, uint64_t fp, int layer, int seq0, int nseq, int S, int d, const float *h,
                   mp_rows_done done, void *ctx);
/* The layer of the file for this rank's range when its header matches (fp, S, d), else -1 (no error). */
int mp_hidden_find(const char *dir, uint64_t fp, int seq0, int nseq, int S, int d);
/* Load the file's rows into h, slice by slice, when it holds `layer` and its data are intact (checked
 * first, h untouched otherwise: MP_EFORMAT; h NULL: only this check). MP_EIO when the file could not be
 * read again or changed while h was being filled: h is then neither the old nor the new states. */
int mp_hidden_load(const char *dir, uint64_t fp, int layer, int seq0, int nseq, int S, int d, float *h,
                   mp_rows_done done, void *ctx);
/* Remove DIR/hidden and everything in it. */
int mp_hidden_remove(const char *dir);

#endif
