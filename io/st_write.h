/* st_write.h - streaming safetensors writer (optionally sharded).
 *
 * The caller declares every tensor (name, dtype, shape) first; the writer lays
 * them out into files of at most `max_shard_bytes` of data (one file named
 * model.safetensors when everything fits, else model-0000i-of-0000n.safetensors
 * plus model.safetensors.index.json) and then asks a callback for each
 * tensor's values as fp32, converting to the declared dtype (F32, F16, BF16).
 * Files are written under temporary names in `dir` and renamed only when all
 * were written; on error none of them is left behind. Local. */
#ifndef MP_ST_WRITE_H
#define MP_ST_WRITE_H

#include <stdint.h>

#include "dtype.h"

typedef struct {
    const char *name;
    mp_dtype dtype;
    int ndim;
    int64_t shape[3];
} mp_st_decl;

/* Fill out[numel] with the values of tensor `idx`. */
typedef int (*mp_st_fill_fn)(void *ctx, int idx, float *out, int64_t numel);

int mp_st_write(const char *dir, const mp_st_decl *decl, int n, uint64_t max_shard_bytes, mp_st_fill_fn fill,
                void *ctx);

#endif
