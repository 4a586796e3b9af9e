/* safetensors.h - memory-mapped reader for (sharded) safetensors checkpoints.
 *
 * A checkpoint is the shards listed in `model.safetensors.index.json`
 * ("weight_map": tensor -> file), else `model.safetensors` (other files next
 * to it are ignored), else every `*.safetensors` in the directory. Files are mmap'ed read-only;
 * nothing is loaded whole. Every header is validated on open: 8-byte length
 * within the file, JSON object, known dtype, integer shape, data_offsets inside
 * the data area, no two tensors overlapping, and shape x dtype size equal to
 * the byte span (element counts are computed with overflow checks and bounded
 * by 2^50). A tensor named twice, or named in the index but absent from
 * its shard, is an error; an index may only name plain files of the
 * directory, and every shard must be a regular file. Errors name the file and
 * tensor.
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
    int borrowed;    /* map is the caller's buffer (mp_ckpt_open_mem): not unmapped */
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
/* Validate a safetensors image held in memory exactly as a file is validated (the same parser);
 * `buf` is not copied and must outlive the checkpoint; `name` stands for the file in messages. */
int mp_ckpt_open_mem(const void *buf, size_t size, const char *name, mp_ckpt **out);

/* model.safetensors.index.json, parsed and validated: every weight_map value is a plain file name
 * (mp_st_shard_name_ok), no tensor is named twice, the map is not empty. */
typedef struct {
    int nfiles;
    char **files; /* unique shard names, in order of first appearance */
    int ntensors;
    char **tensors; /* weight_map keys */
    int *file_of;   /* tensors[i] lives in files[file_of[i]] */
} mp_st_index;
/* Parse an index from its text (`len` bytes, need not be NUL-terminated); `what` names it in messages.
 * MP_EFORMAT for anything malformed; on error *ix is empty. */
int mp_st_index_parse(const char *json, size_t len, const char *what, mp_st_index *ix);
void mp_st_index_free(mp_st_index *ix);
/* 0 when `name` may be a shard named by an index: a plain file name in the checkpoint directory (not
 * empty, not "." or "..", no '/' or '\\', no control characters, at most 255 bytes), as Hugging Face
 * writes them; else -1 and *why says what is wrong. The file itself must then be a regular file (a
 * symbolic link to one is fine: the Hugging Face cache links snapshots to blobs). */
int mp_st_shard_name_ok(const char *name, const char **why);
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
/* Read rows rows[0..n) of `t` as a [*, width] matrix into out [n, width], as mp_ckpt_read_f32 reads each; the
 * pages go once at the end, for the span from the smallest row to the largest (one madvise, so one TLB
 * shootdown, per call instead of one per row: embedding lookups). */
int mp_ckpt_read_rows_f32(const mp_ckpt *c, const mp_tensor *t, const int32_t *rows, int n, int64_t width,
                          float *out);
/* Read a whole tensor by name into `out` (capacity `cap` floats). */
int mp_ckpt_read_named_f32(const mp_ckpt *c, const char *name, float *out, int64_t cap);

#endif
