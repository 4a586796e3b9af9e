/* fsutil.h - small file-system helpers: directories, atomic file commits.
 *
 * mp_commit_file: fsync a finished temporary file, rename it over its final
 * name and fsync the directory, so that the final name either holds the whole
 * file or does not exist. Local. */
#ifndef MP_FSUTIL_H
#define MP_FSUTIL_H

#include <stddef.h>

/* mkdir -p; an existing directory is fine. */
int mp_mkdir_p(const char *path);
/* fsync(tmp), rename(tmp, final), fsync(dirname(final)). */
int mp_commit_file(const char *tmp, const char *final);
/* Write `n` bytes to `path` atomically (through path.tmp.<pid>). */
int mp_write_file_atomic(const char *path, const void *data, size_t n);
/* rm -r; a missing path is fine. */
int mp_remove_tree(const char *path);
/* Read a whole regular file; *out is malloc'ed and NUL-terminated. A missing path is MP_ENOENT; a
 * directory, FIFO, device... is MP_EFORMAT naming what it is (never opened for reading, so a FIFO
 * does not block). */
int mp_read_file(const char *path, char **out, size_t *n);
/* The same with a size limit: a file larger than `max` bytes, or a path that is not a regular file,
 * is an error with code `bad_code` (e.g. MP_ECONFIG for config.json). */
int mp_read_file_max(const char *path, size_t max, int bad_code, char **out, size_t *n);
/* open(2) a regular file read-only: *fd and its *size; a path that exists but is not a regular
 * file is an error with code `not_regular_code`. */
int mp_open_regular(const char *path, int not_regular_code, int *fd, size_t *size);
/* "a directory", "a FIFO", ... for a st_mode */
const char *mp_file_kind(unsigned mode);
/* Large files without the page-cache copy: mp_open_direct opens `path` for writing (`create`: creates or
 * truncates it) with O_DIRECT where the file system takes it (*direct = 1), else buffered (*direct = 0).
 * mp_pwrite_all writes p[0, n) at `off`; with *direct, p, n and off must be multiples of MP_DIRECT_ALIGN,
 * and a file system that accepted the flag but refuses the write (EINVAL) is written buffered instead
 * (*direct = 0). A short write (disk full) is MP_EIO naming `path`. */
#define MP_DIRECT_ALIGN 4096
int mp_open_direct(const char *path, int create, int *fd, int *direct);
int mp_pwrite_all(int fd, const void *p, size_t n, long long off, int *direct, const char *path);
/* fwrite that reports short writes (disk full, file size limit) as MP_EIO. */
int mp_fwrite_all(const void *p, size_t n, void *fp, const char *path);
/* Reserve `bytes` of disk for the file at `path` without changing its size (fallocate KEEP_SIZE), so that a
 * full disk is found here, as MP_EIO naming `what` ("No space left on device"), and not inside a library's
 * writes (HDF5 1.10's error paths can crash, e.g. in H5Ocopy). A file system without fallocate reserves
 * nothing (0). mp_release_space gives back what was not used (truncate to the file's size). */
int mp_reserve_space(const char *path, long long bytes, const char *what);
int mp_release_space(const char *path);
/* Memory that lives on the disk: a shared mapping of `bytes` (> 0) on a new file in `dir`, unlinked at once
 * (nothing stays behind, even after a crash; `what` names it in errors), its blocks allocated now (a full
 * disk is MP_EIO here, not a SIGBUS at a page fault). Its pages are zero at first; mp_pages_drop gives
 * back the resident ones, which the file keeps, so the kernel's page cache holds the data as memory allows.
 * munmap frees it. */
int mp_map_scratch(const char *dir, const char *what, size_t bytes, void **out);
/* madvise(MADV_DONTNEED) of the whole pages inside [p, p + bytes) of a file's mapping (mp_map_scratch's, or
 * a read-only one): they go back to the file, and a later access maps them in again (a refusal only costs
 * memory). Never on anonymous memory: its pages would read as zeros. */
void mp_pages_drop(const void *p, size_t bytes);

#endif
