/* logits_file.c - logits as HDF5 (see logits_file.h). */
#include "logits_file.h"

#include <hdf5.h>

#include "error.h"
#include "h5util.h"

int mp_logits_write(const char *path, const float *logits, int64_t n_seq, int64_t seq_len, int64_t vocab)
{
    hid_t f = mp_h5_create_mem();
    if (f < 0)
        return mp_errorf(MP_EINTERNAL, "HDF5 could not create an in-memory file for %s", path);
    hsize_t dims[3] = {(hsize_t)n_seq, (hsize_t)seq_len, (hsize_t)vocab};
    hid_t sp = H5Screate_simple(3, dims, NULL), dcpl = mp_h5_dcpl();
    hid_t ds = H5Dcreate2(f, "logits", H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    int ok = ds >= 0 && H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, logits) >= 0;
    if (ds >= 0)
        H5Dclose(ds);
    H5Pclose(dcpl);
    H5Sclose(sp);
    if (!ok) {
        H5Fclose(f);
        return mp_errorf(MP_EINTERNAL, "HDF5 could not store the logits for %s", path);
    }
    return mp_h5_save(f, path);
}
