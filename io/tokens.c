/* tokens.c - HDF5 calibration token files (see tokens.h). */
#include "tokens.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"
#include "h5util.h"

int mp_tokens_read(const char *path, int vocab, mp_tokens *out)
{
    memset(out, 0, sizeof *out);
    if (access(path, R_OK) != 0)
        return mp_syserrorf(MP_ENOENT, "%s: cannot read tokens file", path);
    int rc = 0;
    hid_t f = -1, ds = -1, sp = -1, ty = -1;
    H5E_BEGIN_TRY { f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); }
    H5E_END_TRY;
    if (f < 0)
        return mp_errorf(MP_EFORMAT, "%s: not an HDF5 file", path);
    H5E_BEGIN_TRY { ds = H5Dopen2(f, "tokens", H5P_DEFAULT); }
    H5E_END_TRY;
    if (ds < 0) {
        rc = mp_errorf(MP_EFORMAT, "%s: no dataset 'tokens'", path);
        goto out;
    }
    ty = H5Dget_type(ds);
    if (H5Tget_class(ty) != H5T_INTEGER || H5Tget_size(ty) != 4 || H5Tget_sign(ty) != H5T_SGN_2) {
        rc = mp_errorf(MP_EFORMAT, "%s: dataset 'tokens' must be int32 (got class %d, %zu bytes)", path,
                       (int)H5Tget_class(ty), H5Tget_size(ty));
        goto out;
    }
    sp = H5Dget_space(ds);
    hsize_t dims[2] = {0, 0};
    if (H5Sget_simple_extent_ndims(sp) != 2) {
        rc = mp_errorf(MP_EFORMAT, "%s: dataset 'tokens' must be 2-D [n_seq, seq_len], has %d dimensions", path,
                       H5Sget_simple_extent_ndims(sp));
        goto out;
    }
    H5Sget_simple_extent_dims(sp, dims, NULL);
    if (dims[0] == 0 || dims[1] == 0 || dims[0] > (1u << 30) || dims[1] > (1u << 30)) {
        rc = mp_errorf(MP_EFORMAT, "%s: dataset 'tokens' has unusable shape [%llu, %llu]", path,
                       (unsigned long long)dims[0], (unsigned long long)dims[1]);
        goto out;
    }
    out->n_seq = (int)dims[0];
    out->seq_len = (int)dims[1];
    out->ids = malloc((size_t)(dims[0] * dims[1]) * sizeof(int32_t));
    if (!out->ids) {
        rc = mp_errorf(MP_ENOMEM, "out of memory reading %s", path);
        goto out;
    }
    if (H5Dread(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, out->ids) < 0) {
        rc = mp_errorf(MP_EIO, "%s: reading dataset 'tokens' failed", path);
        goto out;
    }
    if (vocab > 0)
        for (size_t i = 0; i < dims[0] * dims[1]; i++)
            if (out->ids[i] < 0 || out->ids[i] >= vocab) {
                rc = mp_errorf(MP_EFORMAT, "%s: token id %d at [%zu, %zu] is outside the vocabulary [0, %d)", path,
                               out->ids[i], (size_t)(i / dims[1]), (size_t)(i % dims[1]), vocab);
                goto out;
            }
out:
    if (sp >= 0)
        H5Sclose(sp);
    if (ty >= 0)
        H5Tclose(ty);
    if (ds >= 0)
        H5Dclose(ds);
    H5Fclose(f);
    if (rc < 0)
        mp_tokens_free(out);
    return rc;
}

int mp_tokens_write(const char *path, const int32_t *ids, int n_seq, int seq_len)
{
    hid_t f = mp_h5_create_mem();
    if (f < 0)
        MP_CHECK(MP_EINTERNAL);
    int bad = mp_h5_put(f, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, ids, 2, (hsize_t)n_seq, (hsize_t)seq_len) < 0;
    if (bad) {
        H5Fclose(f);
        return mp_errorf(MP_EINTERNAL, "%s: HDF5 could not build dataset 'tokens'", path);
    }
    MP_CHECK(mp_h5_save(f, path));
    return 0;
}

void mp_tokens_free(mp_tokens *t)
{
    free(t->ids);
    t->ids = NULL;
}
