/* h5check.h - a structural check of an HDF5 file's metadata, before libhdf5 walks it.
 *
 * HDF5 1.10.8 crashes (SIGSEGV in H5F__accum_read, or allocations of ~2^64
 * bytes in H5C_protect) on some damaged files while it looks a name up in the
 * root group, before its caller sees any error
 * (tests/fixtures/fuzz-regressions/hdf5-1.10.8-segv-H5Lexists.h5).
 * mp_h5_precheck walks the same structures in the file's bytes first: the
 * superblock (versions 0-3, the signature at 0 or at 512, 1024, 2048, ...),
 * the root group's object header (versions 1 and 2, continuation chunks
 * included), its symbol table (v1 B-tree nodes, symbol nodes, local heap) or
 * its link messages, and the object header of the object `name` names in the
 * root group with its data layout. Every address followed must lie inside the
 * file with the structure it points to, carry that structure's signature and
 * version, and every count and size must fit its block. It does not prove a
 * file sound (HDF5 still checks checksums, datatypes, dataspaces and the data
 * itself): it keeps HDF5 off addresses that are not in the file. Bounded work
 * (at most MP_H5CHECK_MAX_NODES structures). Local; no HDF5 calls. Callers:
 * the tokens reader and the Fisher-weights reader, before H5Fopen. */
#ifndef MP_H5CHECK_H
#define MP_H5CHECK_H

#include <stddef.h>

#define MP_H5CHECK_MAX_NODES 100000

/* 0 when the structures above are sound; -1 with *why (at most cap bytes) saying what is wrong and
 * where (byte offsets in the file). */
int mp_h5_precheck(const unsigned char *buf, size_t n, const char *name, char *why, size_t cap);
/* The check on a file image: 0, or MP_EFORMAT "<what>: not an HDF5 file ..." / "<what>: damaged HDF5
 * file: <why>". */
int mp_h5_precheck_image(const void *buf, size_t n, const char *what, const char *name);
/* The check on the file at `path`, which must be a regular file (fsutil.h: mp_open_regular; it is
 * mapped read-only): 0, MP_ENOENT when it is missing, else MP_EFORMAT as above. */
int mp_h5_precheck_path(const char *path, const char *name);

#endif
