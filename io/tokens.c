/* tokens.c - HDF5 calibration token files (see tokens.h). */
#include "tokens.h"

#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "error.h"
#include "fsutil.h"
#include "h5check.h"
#include "h5util.h"

/* Validate and read dataset `tokens` of the open file f; `what` names the file in messages. */
static int read_tokens(hid_t f, const char *what, int vocab, mp_tokens *out)
{
    int rc = 0;
    hid_t ds = -1, sp = -1, ty = -1, dcpl = -1;
    H5L_info_t li;
    int link = -1;
    H5E_BEGIN_TRY
    {
        if (H5Lexists(f, "tokens", H5P_DEFAULT) > 0 && H5Lget_info(f, "tokens", &li, H5P_DEFAULT) >= 0)
            link = li.type;
        /* a hard link only: a soft or external link names another object or another file */
        if (link == H5L_TYPE_HARD)
            ds = H5Dopen2(f, "tokens", H5P_DEFAULT);
    }
    H5E_END_TRY;
    if (link >= 0 && link != H5L_TYPE_HARD)
        return mp_errorf(MP_EFORMAT, "%s: 'tokens' is %s link, not a dataset stored in this file", what,
                         link == H5L_TYPE_SOFT       ? "a soft"
                         : link == H5L_TYPE_EXTERNAL ? "an external"
                                                     : "a user-defined");
    if (ds < 0)
        return mp_errorf(MP_EFORMAT, "%s: no dataset 'tokens' (int32 [n_seq, seq_len])", what);
    /* the data must be in this file: no external raw-data files, no virtual dataset mapping other files */
    H5E_BEGIN_TRY { dcpl = H5Dget_create_plist(ds); }
    H5E_END_TRY;
    int external = dcpl < 0 ? -1 : H5Pget_external_count(dcpl);
    H5D_layout_t layout = dcpl < 0 ? H5D_LAYOUT_ERROR : H5Pget_layout(dcpl);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (external != 0 || layout == H5D_LAYOUT_ERROR || layout == H5D_VIRTUAL) {
        H5Dclose(ds);
        return mp_errorf(MP_EFORMAT,
                         "%s: dataset 'tokens' keeps its data outside the file (external or virtual "
                         "storage), which is not accepted",
                         what);
    }
    H5E_BEGIN_TRY
    {
        ty = H5Dget_type(ds);
        sp = H5Dget_space(ds);
    }
    H5E_END_TRY;
    H5T_class_t cls = ty >= 0 ? H5Tget_class(ty) : H5T_NO_CLASS;
    size_t tsize = ty >= 0 ? H5Tget_size(ty) : 0;
    if (cls != H5T_INTEGER || tsize != 4 || H5Tget_sign(ty) != H5T_SGN_2) {
        rc = mp_errorf(MP_EFORMAT, "%s: dataset 'tokens' must be int32 (got %s of %zu bytes)", what,
                       cls == H5T_INTEGER  ? (H5Tget_sign(ty) == H5T_SGN_2 ? "signed integers" : "unsigned integers")
                       : cls == H5T_FLOAT  ? "floating point"
                       : cls == H5T_STRING ? "strings"
                                           : "another type",
                       tsize);
        goto out;
    }
    int ndims = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    if (ndims != 2) {
        rc = mp_errorf(MP_EFORMAT, "%s: dataset 'tokens' must be 2-D [n_seq, seq_len], has %d dimensions", what, ndims);
        goto out;
    }
    hsize_t dims[2] = {0, 0};
    int64_t total = 0;
    if (H5Sget_simple_extent_dims(sp, dims, NULL) != 2 || dims[0] == 0 || dims[1] == 0 || dims[0] > INT32_MAX ||
        dims[1] > INT32_MAX || mp_mul_i64((int64_t)dims[0], (int64_t)dims[1], &total) < 0 || total > INT32_MAX) {
        rc = mp_errorf(MP_EFORMAT,
                       "%s: dataset 'tokens' has unusable shape [%llu, %llu] (both > 0, at most 2^31 - 1 "
                       "tokens in all)",
                       what, (unsigned long long)dims[0], (unsigned long long)dims[1]);
        goto out;
    }
    if (dims[1] < 2) {
        rc = mp_errorf(MP_EFORMAT,
                       "%s: dataset 'tokens' holds sequences of %llu token: at least 2 are needed (the "
                       "first token of a sequence is never predicted)",
                       what, (unsigned long long)dims[1]);
        goto out;
    }
    /* the size declared must be backed by stored bytes: at most what deflate can expand (~1032x) */
    hsize_t stored = H5Dget_storage_size(ds);
    if (stored == 0) {
        rc = mp_errorf(MP_EFORMAT, "%s: dataset 'tokens' has no data written (only the fill value)", what);
        goto out;
    }
    if ((uint64_t)total * 4 > (uint64_t)stored * 1100 + 4096) {
        rc = mp_errorf(MP_EFORMAT,
                       "%s: dataset 'tokens' declares [%llu, %llu] but stores only %llu bytes (damaged file?)", what,
                       (unsigned long long)dims[0], (unsigned long long)dims[1], (unsigned long long)stored);
        goto out;
    }
    out->n_seq = (int)dims[0];
    out->seq_len = (int)dims[1];
    out->ids = malloc((size_t)total * sizeof(int32_t));
    if (!out->ids) {
        rc = mp_errorf(MP_ENOMEM, "out of memory reading %s (%lld tokens)", what, (long long)total);
        goto out;
    }
    herr_t r;
    H5E_BEGIN_TRY { r = H5Dread(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, out->ids); }
    H5E_END_TRY;
    if (r < 0) {
        rc = mp_errorf(MP_EFORMAT, "%s: dataset 'tokens' cannot be read (damaged file?)", what);
        goto out;
    }
    if (vocab > 0)
        for (int64_t i = 0; i < total; i++)
            if (out->ids[i] < 0 || out->ids[i] >= vocab) {
                rc = mp_errorf(MP_EFORMAT, "%s: token id %d at [%lld, %lld] is outside the vocabulary [0, %d)", what,
                               out->ids[i], (long long)(i / out->seq_len), (long long)(i % out->seq_len), vocab);
                goto out;
            }
out:
    if (sp >= 0)
        H5Sclose(sp);
    if (ty >= 0)
        H5Tclose(ty);
    H5Dclose(ds);
    if (rc < 0)
        mp_tokens_free(out);
    return rc;
}

int mp_tokens_read(const char *path, int vocab, mp_tokens *out)
{
    memset(out, 0, sizeof *out);
    /* a regular file whose metadata HDF5 can walk without crashing (h5check.h) */
    int rc = mp_h5_precheck_path(path, "tokens");
    if (rc == MP_ENOENT)
        return mp_errorf(MP_ENOENT, "%s: tokens file not found", path);
    MP_CHECK(rc);
    mp_h5_init();
    hid_t f;
    H5E_BEGIN_TRY { f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); }
    H5E_END_TRY;
    if (f < 0)
        return mp_errorf(MP_EFORMAT, "%s: not an HDF5 file (or a damaged one)", path);
    rc = read_tokens(f, path, vocab, out);
    H5Fclose(f);
    MP_CHECK(rc);
    return 0;
}

int mp_tokens_read_image(const void *buf, size_t n, const char *what, int vocab, mp_tokens *out)
{
    memset(out, 0, sizeof *out);
    MP_CHECK(mp_h5_precheck_image(buf, n, what, "tokens"));
    mp_h5_init();
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), f = -1;
    char name[64];
    static unsigned long seq = 0;
    snprintf(name, sizeof name, "moepack-tokens-image-%lu.h5", seq++);
    H5E_BEGIN_TRY
    {
        if (H5Pset_fapl_core(fapl, 1 << 16, 0) >= 0 && (n == 0 || H5Pset_file_image(fapl, (void *)buf, n) >= 0))
            f = H5Fopen(name, H5F_ACC_RDONLY, fapl);
    }
    H5E_END_TRY;
    H5Pclose(fapl);
    if (f < 0)
        return mp_errorf(MP_EFORMAT, "%s: not an HDF5 file (or a damaged one)", what);
    int rc = read_tokens(f, what, vocab, out);
    H5Fclose(f);
    MP_CHECK(rc);
    return 0;
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
