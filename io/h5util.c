/* h5util.c - in-memory HDF5 files committed atomically (see h5util.h). */
#include "h5util.h"

#include <stdio.h>
#include <stdlib.h>

#include "error.h"
#include "fsutil.h"

void mp_h5_init(void)
{
    static int done = 0;
    if (!done) {
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        done = 1;
    }
}

static hid_t mem_fapl(void)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_core(fapl, 1 << 20, 0);
    return fapl;
}

static void mem_name(char *buf, size_t cap)
{
    static unsigned long n = 0;
    snprintf(buf, cap, "moepack-mem-%lu.h5", n++);
}

hid_t mp_h5_create_mem(void)
{
    mp_h5_init();
    char name[64];
    mem_name(name, sizeof name);
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE), fapl = mem_fapl();
    H5Pset_obj_track_times(fcpl, 0);
    hid_t f = H5Fcreate(name, H5F_ACC_EXCL, fcpl, fapl);
    H5Pclose(fcpl);
    H5Pclose(fapl);
    if (f < 0)
        mp_errorf(MP_EINTERNAL, "HDF5: cannot create an in-memory file");
    return f;
}

int mp_h5_save(hid_t f, const char *path)
{
    int rc = 0;
    if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0)
        rc = mp_errorf(MP_EINTERNAL, "%s: HDF5 could not finish the file", path);
    ssize_t n = rc == 0 ? H5Fget_file_image(f, NULL, 0) : -1;
    void *buf = n > 0 ? malloc((size_t)n) : NULL;
    if (rc == 0 && !buf)
        rc = mp_errorf(MP_ENOMEM, "%s: out of memory for the file image", path);
    if (rc == 0 && H5Fget_file_image(f, buf, (size_t)n) != n)
        rc = mp_errorf(MP_EINTERNAL, "%s: HDF5 could not produce the file image", path);
    H5Fclose(f);
    if (rc == 0)
        rc = mp_write_file_atomic(path, buf, (size_t)n);
    free(buf);
    return rc;
}

hid_t mp_h5_dcpl(void)
{
    hid_t d = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_obj_track_times(d, 0);
    return d;
}

int mp_h5_put(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, const void *v, int rank, hsize_t a,
              hsize_t b)
{
    hsize_t dims[2] = {a, b};
    hid_t sp = H5Screate_simple(rank, dims, NULL), dcpl = mp_h5_dcpl();
    hid_t ds = H5Dcreate2(loc, name, file_type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    int empty = a == 0 || (rank == 2 && b == 0);
    int ok = ds >= 0 && (empty || H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0);
    if (ds >= 0)
        H5Dclose(ds);
    H5Pclose(dcpl);
    H5Sclose(sp);
    return ok ? 0 : -1;
}

int mp_h5_put_attr(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, const void *v)
{
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t at = H5Acreate2(loc, name, file_type, sp, H5P_DEFAULT, H5P_DEFAULT);
    int ok = at >= 0 && H5Awrite(at, mem_type, v) >= 0;
    if (at >= 0)
        H5Aclose(at);
    H5Sclose(sp);
    return ok ? 0 : -1;
}
