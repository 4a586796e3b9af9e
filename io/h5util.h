/* h5util.h - HDF5 files built in memory and committed like any other file.
 *
 * moepack's HDF5 outputs are small enough to assemble with the core driver
 * (no backing store) and then write in one piece through
 * mp_write_file_atomic: the bytes on disk appear complete under their final
 * name or not at all, a full disk is a clean MP_EIO naming the file (HDF5's
 * own write path can leave its library state broken), and no object
 * timestamps are stored, so equal contents give equal bytes. HDF5's
 * automatic error printing is switched off by mp_h5_init; errors come back
 * as moepack messages. Local. */
#ifndef MP_H5UTIL_H
#define MP_H5UTIL_H
#include <hdf5.h>

/* Silence HDF5's error stack printing (once per process). */
void mp_h5_init(void);
/* A new, empty in-memory file; < 0 (with an error set) on failure. */
hid_t mp_h5_create_mem(void);
/* Write the in-memory file `f` to `path` atomically and close `f` (also on error). */
int mp_h5_save(hid_t f, const char *path);
/* Create a dataset creation property list without timestamps. */
hid_t mp_h5_dcpl(void);
/* Dataset `name` in `loc`, stored as file_type, of rank 1 ([a]) or 2 ([a, b]), written from v (mem_type);
 * no timestamps; a dataset with no elements is created empty. 0, or -1 on failure (the caller names the file). */
int mp_h5_put(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, const void *v, int rank, hsize_t a,
              hsize_t b);
/* Scalar attribute `name` on `loc` (a file: its root group). 0 or -1. */
int mp_h5_put_attr(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, const void *v);

#endif
