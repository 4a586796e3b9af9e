/* fuzz_tokens.c - libFuzzer harness for the calibration tokens reader, through the HDF5 API.
 *
 * HDF5 itself crashes on some damaged files (see fuzz_tokens_raw.c), so this
 * harness fuzzes what moepack controls: the input bytes choose how a *valid*
 * HDF5 file is built (with HDF5's API, in memory): the element type (every
 * integer width, signedness and byte order, floats, strings, enums,
 * compounds), the rank and dimensions (0 and sizes up to 2^40, extendible),
 * the layout (contiguous, chunked, compact, deflate), whether and how much
 * data is written, what `tokens` is (a dataset, a group, a soft, dangling or
 * external link, an attribute only, a dataset with external raw-data
 * storage) and the values. The file image then goes through
 * mp_tokens_read_image, whose checks are those of mp_tokens_read. An accepted
 * file must hold ids inside the vocabulary and sequences of >= 2 tokens; every
 * HDF5 object opened must be closed again. */
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "h5util.h"
#include "tokens.h"

typedef struct {
    const uint8_t *p;
    size_t n;
} input;

static unsigned take(input *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static hid_t pick_type(unsigned k)
{
    switch (k % 16) {
    case 0: return H5Tcopy(H5T_STD_I32BE);
    case 1: return H5Tcopy(H5T_STD_U32LE);
    case 2: return H5Tcopy(H5T_STD_I64LE);
    case 3: return H5Tcopy(H5T_STD_I16LE);
    case 4: return H5Tcopy(H5T_STD_I8LE);
    case 5: return H5Tcopy(H5T_STD_U8LE);
    case 6: return H5Tcopy(H5T_IEEE_F32LE);
    case 7: return H5Tcopy(H5T_IEEE_F64LE);
    case 8: return H5Tcopy(H5T_STD_U64BE);
    case 9: {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, 4);
        return t;
    }
    case 10: { /* an enum over int32 */
        hid_t t = H5Tenum_create(H5T_NATIVE_INT32);
        int v = 1;
        H5Tenum_insert(t, "one", &v);
        return t;
    }
    case 11: { /* a compound of one int32 */
        hid_t t = H5Tcreate(H5T_COMPOUND, 4);
        H5Tinsert(t, "id", 0, H5T_NATIVE_INT32);
        return t;
    }
    default: return H5Tcopy(H5T_STD_I32LE); /* the right type, most often */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in = {data, size};
    mp_h5_init();
    unsigned tsel = take(&in), rank = take(&in) % 4, layout = take(&in), what = take(&in), wmode = take(&in);
    hsize_t dims[3] = {1, 1, 1}, maxd[3];
    hsize_t total = 1;
    for (unsigned r = 0; r < rank; r++) {
        unsigned b = take(&in);
        dims[r] = b & 0x80 ? (hsize_t)1 << (b & 0x3f) % 41 : b % 9; /* small, or a power of two up to 2^40 */
        maxd[r] = layout & 0x40 ? H5S_UNLIMITED : dims[r];
    }
    int chunked = (layout & 3) == 1 || (layout & 3) == 2 || (layout & 0x40);
    for (unsigned r = 0; r < rank && chunked; r++)
        if (dims[r] > (1u << 20)) /* HDF5 spends minutes and gigabytes creating such chunked datasets */
            dims[r] = 1u << 20;
    for (unsigned r = 0; r < rank; r++) /* saturating: only compared with small bounds below */
        total = dims[r] && total > ((hsize_t)1 << 62) / dims[r] ? (hsize_t)1 << 62 : total * (dims[r] ? dims[r] : 1);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_core(fapl, 1 << 14, 0); /* small increments: this runs thousands of times a second */
    hid_t f = H5Fcreate("moepack-fuzz-tokens.h5", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (f < 0)
        abort();
    hid_t ty = pick_type(tsel);
    hid_t sp = rank ? H5Screate_simple((int)rank, dims, maxd) : H5Screate(what & 0x20 ? H5S_NULL : H5S_SCALAR);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunked && rank) {
        hsize_t ch[3];
        for (unsigned r = 0; r < rank; r++)
            ch[r] = dims[r] == 0 ? 1 : dims[r] > 64 ? 64 : dims[r];
        H5Pset_chunk(dcpl, (int)rank, ch);
        if ((layout & 3) == 2)
            H5Pset_deflate(dcpl, 1);
    } else if ((layout & 3) == 3 && total * 8 < 30000) {
        H5Pset_layout(dcpl, H5D_COMPACT);
    }
    if ((what & 7) == 6 && !chunked && (layout & 3) != 3 && rank) /* raw data in an external file (never created) */
        H5Pset_external(dcpl, "/nonexistent/moepack-fuzz-raw.bin", 0, H5F_UNLIMITED);
    const char *dname = (what & 7) == 1 ? "Tokens" : (what & 7) == 2 || (what & 7) == 3 ? "target" : "tokens";
    hid_t ds = -1;
    H5E_BEGIN_TRY
    {
        if ((what & 7) == 4) { /* a group named tokens */
            hid_t g = H5Gcreate2(f, "tokens", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
            if (g >= 0)
                H5Gclose(g);
        } else if ((what & 7) == 5) { /* only an attribute named tokens */
            hid_t a = H5Acreate2(f, "tokens", ty, sp, H5P_DEFAULT, H5P_DEFAULT);
            if (a >= 0)
                H5Aclose(a);
        } else {
            ds = H5Dcreate2(f, dname, ty, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        }
        if ((what & 7) == 2)
            H5Lcreate_soft("/target", f, "tokens", H5P_DEFAULT, H5P_DEFAULT);
        if ((what & 7) == 3)
            H5Lcreate_external("/nonexistent/moepack-fuzz.h5", "/tokens", f, "tokens", H5P_DEFAULT, H5P_DEFAULT);
        if ((what & 7) == 7)
            H5Lcreate_soft("/nowhere", f, "tokens", H5P_DEFAULT, H5P_DEFAULT);
        /* write the values (all, a part, or nothing) when the dataset is small enough */
        if (ds >= 0 && (wmode & 3) != 0 && total <= 4096 && rank > 0) {
            int32_t *v = calloc((size_t)total, sizeof *v);
            for (hsize_t i = 0; v && i < total; i++) {
                unsigned a = take(&in), b = take(&in);
                v[i] = (int32_t)(wmode & 4 ? (int32_t)((a << 8 | b) - 1024) : (int32_t)(a << 8 | b) % 1000);
            }
            if (v && (wmode & 3) == 1) {
                H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
            } else if (v && (wmode & 3) == 2 && dims[0] > 1) { /* the first row only */
                hsize_t start[3] = {0, 0, 0}, cnt[3] = {1, dims[1], dims[2]};
                hid_t fs = H5Dget_space(ds), ms = H5Screate_simple((int)rank, cnt, NULL);
                H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
                H5Dwrite(ds, H5T_NATIVE_INT32, ms, fs, H5P_DEFAULT, v);
                H5Sclose(ms), H5Sclose(fs);
            } else if (v) {
                H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
            }
            free(v);
        }
    }
    H5E_END_TRY;
    if (ds >= 0)
        H5Dclose(ds);
    H5Pclose(dcpl), H5Sclose(sp), H5Tclose(ty);
    H5Fflush(f, H5F_SCOPE_GLOBAL);
    ssize_t n = H5Fget_file_image(f, NULL, 0);
    void *img = n > 0 ? malloc((size_t)n) : NULL;
    if (img && H5Fget_file_image(f, img, (size_t)n) != n)
        abort();
    H5Fclose(f);
    if (!img)
        abort();

    mp_tokens t;
    const int vocab = 1000;
    int rc = mp_tokens_read_image(img, (size_t)n, "fuzz/tokens.h5", vocab, &t);
    if (getenv("MP_FUZZ_VERBOSE")) /* to see what the seeds exercise */
        fprintf(stderr, "fuzz_tokens: %s\n", rc == 0 ? "accepted" : mp_error_message());
    if (rc == 0) {
        if (t.n_seq < 1 || t.seq_len < 2)
            abort();
        for (int64_t i = 0; i < (int64_t)t.n_seq * t.seq_len; i++)
            if (t.ids[i] < 0 || t.ids[i] >= vocab)
                abort();
        mp_tokens_free(&t);
    } else if (!mp_error_message()[0]) {
        abort();
    }
    free(img);
    /* every HDF5 object opened here or by the reader is closed again */
    if (H5Fget_obj_count((hid_t)H5F_OBJ_ALL, H5F_OBJ_ALL) != 0)
        abort();
    mp_error_clear();
    return 0;
}
