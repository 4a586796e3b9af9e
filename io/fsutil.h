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
/* Read a whole file; *out is malloc'ed and NUL-terminated. */
int mp_read_file(const char *path, char **out, size_t *n);
/* fwrite that reports short writes (disk full, file size limit) as MP_EIO. */
int mp_fwrite_all(const void *p, size_t n, void *fp, const char *path);

#endif
