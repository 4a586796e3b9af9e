/* safetensors.h - memory-mapped reader for (sharded) safetensors checkpoints.
 *
 * A checkpoint is the shards listed in `model.safetensors.index.json`
 * ("weight_map": tensor -> file), else `model.safetensors` (other files next
 * to it are ignored), else every `*.safetensors` in the directory. Files are mmap'ed read-only;
 * nothing is loaded whole. Every header is validated on open: 8-byte length
 * within the file, JSON object, known dtype, integer shape, data_offsets inside
 * the data area, no two tensors overlapping, and shape x dtype size equal to
 * the byte span. A tensor named twice, or named in the index but absent from
 * its shard, is an error. Errors name the file and tensor.
 *
 * Reading converts F32/F16/BF16/F64/F8 to fp32. An F8_E4M3 tensor `X.weight`
 * with a companion `X.weight_scale_inv` ([ceil(rows/128), ceil(cols/128)], the
 * DeepSeek-V3 layout) is dequantised blockwise on read.
 *
 * Ownership: mp_ckpt_open allocates, mp_ckpt_close frees and unmaps.
 * All functions are local (no MPI). */
#ifndef MP_SAFETENSORS_H
#define MP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define MP_MAX_DIMS 8
#define MP_FP8_BLOCK 128

typedef struct {
    const char *name;      /* owned by the checkpoint */
    mp_dtype dtype;
    int ndim;
    int64_t shape[MP_MAX_DIMS];
    int64_t numel;
    uint64_t nbytes;
    const unsigned char *data; /* inside the mapping */
    int file;                  /* index into the checkpoint's file list */
} mp_tensor;

typedef struct mp_st_file {
    char *path;
    unsigned char *map;
    size_t size;
    size_t data_off; /* 8 + header length */
} mp_st_file;

typedef struct mp_ckpt {
    char *dir;
    int nfiles;
    mp_st_file *files;
    int ntensors;
    mp_tensor *tensors; /* sorted by name */
    char *names;        /* storage for all names */
    int sharded;        /* 1 when an index file was used */
} mp_ckpt;

/* Open every safetensors file of `dir` (see above). */
int mp_ckpt_open(const char *dir, mp_ckpt **out);
/* Open a single safetensors file. */
int mp_ckpt_open_file(const char *path, mp_ckpt **out);
void mp_ckpt_close(mp_ckpt *c);

/* Tensor by exact name, or NULL. */
const mp_tensor *mp_ckpt_find(const mp_ckpt *c, const char *name);
/* Like mp_ckpt_find but an error (MP_ENOENT naming the tensor) when absent. */
int mp_ckpt_get(const mp_ckpt *c, const char *name, const mp_tensor **out);
/* 1 if `name` is an auxiliary FP8 scale tensor ("*_scale_inv"). */
int mp_tensor_is_aux(const char *name);

/* Read elements [first, first+n) (row-major flat index) of `t` as fp32.
 * FP8 tensors with a scale_inv companion are dequantised. The whole pages read
 * are then released from the process's resident set (madvise DONTNEED; the
 * data stay in the page cache), so memory is bounded by what callers keep. */
int mp_ckpt_read_f32(const mp_ckpt *c, const mp_tensor *t, int64_t first, int64_t n, float *out);
/* Read a whole tensor by name into `out` (capacity `cap` floats). */
int mp_ckpt_read_named_f32(const mp_ckpt *c, const char *name, float *out, int64_t cap);

#endif
