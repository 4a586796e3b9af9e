/* qtensor_h5.c - packed tensors as HDF5 groups, attribute helpers (see qtensor_h5.h). */
#include "qtensor_h5.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "h5util.h"

hid_t mp_h5_half_type(void)
{
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    if (t < 0)
        return -1;
    if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, 15) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

hid_t mp_h5_gcpl(void)
{
    hid_t g = H5Pcreate(H5P_GROUP_CREATE);
    if (g >= 0)
        H5Pset_obj_track_times(g, 0);
    return g;
}

hid_t mp_h5_mkgroup(hid_t loc, const char *path)
{
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return -1;
    hid_t gcpl = mp_h5_gcpl(), cur = H5Gopen2(loc, ".", H5P_DEFAULT);
    char *save = NULL;
    for (char *tok = strtok_r(buf, "/", &save); tok && cur >= 0; tok = strtok_r(NULL, "/", &save)) {
        hid_t next;
        htri_t ex = H5Lexists(cur, tok, H5P_DEFAULT);
        if (ex > 0)
            next = H5Gopen2(cur, tok, H5P_DEFAULT);
        else if (ex == 0)
            next = H5Gcreate2(cur, tok, H5P_DEFAULT, gcpl, H5P_DEFAULT);
        else
            next = -1;
        H5Gclose(cur);
        cur = next;
    }
    H5Pclose(gcpl);
    return cur;
}

static int put_attr(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v, int n)
{
    hsize_t d = (hsize_t)n;
    hid_t sp = n < 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &d, NULL);
    if (H5Aexists(loc, name) > 0)
        H5Adelete(loc, name);
    hid_t at = H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
    int ok = at >= 0 && H5Awrite(at, mtype, v) >= 0;
    if (at >= 0)
        H5Aclose(at);
    H5Sclose(sp);
    return ok ? 0 : -1;
}

int mp_h5_attr_str(hid_t loc, const char *name, const char *v)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(v) + 1);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    int rc = put_attr(loc, name, t, t, v, -1);
    H5Tclose(t);
    return rc;
}

int mp_h5_attr_i64(hid_t loc, const char *name, int64_t v)
{
    return put_attr(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v, -1);
}

int mp_h5_attr_i32(hid_t loc, const char *name, int32_t v)
{
    return put_attr(loc, name, H5T_STD_I32LE, H5T_NATIVE_INT32, &v, -1);
}

int mp_h5_attr_f64(hid_t loc, const char *name, double v)
{
    return put_attr(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v, -1);
}

int mp_h5_attr_i64v(hid_t loc, const char *name, const int64_t *v, int n)
{
    return put_attr(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, v, n);
}

int mp_h5_attr_read_str(hid_t loc, const char *name, char *buf, int cap)
{
    buf[0] = '\0';
    if (H5Aexists(loc, name) <= 0)
        return -1;
    hid_t at = H5Aopen(loc, name, H5P_DEFAULT), ft = at >= 0 ? H5Aget_type(at) : -1;
    int rc = -1;
    if (ft >= 0 && H5Tget_class(ft) == H5T_STRING && !H5Tis_variable_str(ft)) {
        size_t sz = H5Tget_size(ft);
        char *tmp = calloc(sz + 1, 1);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, sz);
        if (tmp && H5Aread(at, mt, tmp) >= 0) {
            snprintf(buf, (size_t)cap, "%s", tmp);
            rc = 0;
        }
        H5Tclose(mt);
        free(tmp);
    }
    if (ft >= 0)
        H5Tclose(ft);
    if (at >= 0)
        H5Aclose(at);
    return rc;
}

static int read_attr(hid_t loc, const char *name, hid_t mtype, void *v, int n)
{
    if (H5Aexists(loc, name) <= 0)
        return -1;
    hid_t at = H5Aopen(loc, name, H5P_DEFAULT), sp = at >= 0 ? H5Aget_space(at) : -1;
    int rc = -1;
    if (sp >= 0 && H5Sget_simple_extent_npoints(sp) == (n < 0 ? 1 : n) && H5Aread(at, mtype, v) >= 0)
        rc = 0;
    if (sp >= 0)
        H5Sclose(sp);
    if (at >= 0)
        H5Aclose(at);
    return rc;
}

int mp_h5_attr_read_i64(hid_t loc, const char *name, int64_t *v)
{
    return read_attr(loc, name, H5T_NATIVE_INT64, v, -1);
}
int mp_h5_attr_read_f64(hid_t loc, const char *name, double *v)
{
    return read_attr(loc, name, H5T_NATIVE_DOUBLE, v, -1);
}
int mp_h5_attr_read_i64v(hid_t loc, const char *name, int64_t *v, int n)
{
    return read_attr(loc, name, H5T_NATIVE_INT64, v, n);
}

/* the message HDF5 left for a failed system call ("... error message = 'No space left on device' ...") */
static herr_t walk_cb(unsigned n, const H5E_error2_t *e, void *data)
{
    (void)n;
    char *out = data;
    const char *p = e->desc ? strstr(e->desc, "error message = '") : NULL;
    if (p && !out[0]) {
        p += strlen("error message = '");
        const char *q = strchr(p, '\'');
        snprintf(out, 256, "%.*s", (int)(q ? q - p : (long)strlen(p)), p);
    }
    return 0;
}

static __thread char saved[256]; /* the system error of the first failed call since the last report */

void mp_h5_capture(void)
{
    if (!saved[0])
        H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, saved);
}

int mp_h5_fail(int code, const char *file, const char *what)
{
    char sys[256] = "";
    if (saved[0])
        snprintf(sys, sizeof sys, "%s", saved);
    else
        H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, sys);
    saved[0] = '\0';
    H5Eclear2(H5E_DEFAULT);
    if (sys[0])
        return mp_errorf(MP_EIO, "%s: %s: %s", file, what, sys);
    return mp_errorf(code, "%s: %s", file, what);
}

const char *mp_qformat_scheme(const mp_qformat *f) { return f->bits == 16 ? "fp16" : f->symmetric ? "sym" : "asym"; }

/* the attributes of a packed tensor, on its group and on each of its datasets */
static int tensor_attrs(hid_t o, const mp_qtensor *q, int64_t rank)
{
    const mp_qformat *f = q->fmt;
    int64_t shape[2] = {q->m, q->n}, g = f->bits == 16 ? 0 : q->group;
    int bad = mp_h5_attr_str(o, "format", f->name);
    bad |= mp_h5_attr_i32(o, "bits", f->bits);
    bad |= mp_h5_attr_i64(o, "group_size", g);
    bad |= mp_h5_attr_i64v(o, "shape", shape, 2);
    bad |= mp_h5_attr_str(o, "scheme", mp_qformat_scheme(f));
    if (f->act_bits)
        bad |= mp_h5_attr_i32(o, "act_bits", f->act_bits);
    if (rank >= 0)
        bad |= mp_h5_attr_i64(o, "rank", rank);
    return bad ? -1 : 0;
}

static int put_ds(hid_t g, const char *name, hid_t ftype, hid_t mtype, const void *v, hsize_t a, hsize_t b,
                  const mp_qtensor *q, int64_t rank)
{
    if (mp_h5_put(g, name, ftype, mtype, v, 2, a, b) < 0) {
        mp_h5_capture();
        return -1;
    }
    hid_t ds = H5Dopen2(g, name, H5P_DEFAULT);
    int rc = ds >= 0 ? tensor_attrs(ds, q, rank) : -1;
    if (ds >= 0)
        H5Dclose(ds);
    return rc;
}

int mp_qtensor_h5_write(hid_t loc, const char *name, const mp_qtensor *q, int64_t rank)
{
    hid_t g = mp_h5_mkgroup(loc, name), half = mp_h5_half_type();
    int bad = g < 0 || half < 0;
    if (!bad)
        bad |= tensor_attrs(g, q, rank);
    if (!bad)
        bad |= put_ds(g, "qweight", H5T_STD_U32LE, H5T_NATIVE_UINT32, q->qweight, (hsize_t)q->m,
                      (hsize_t)q->words_per_row, q, rank);
    if (!bad && q->scales)
        bad |= put_ds(g, "scales", half, half, q->scales, (hsize_t)q->m, (hsize_t)q->ngroups, q, rank);
    if (!bad && q->zeros)
        bad |= put_ds(g, "zeros", half, half, q->zeros, (hsize_t)q->m, (hsize_t)q->ngroups, q, rank);
    if (half >= 0)
        H5Tclose(half);
    if (g >= 0)
        H5Gclose(g);
    return bad ? -1 : 0;
}

/* dataset `name` of g, [a, b], into buf (mem type mt) */
static int get_ds(hid_t g, const char *name, hid_t mt, void *buf, int64_t a, int64_t b, const char *what,
                  const char *gname)
{
    hid_t ds = H5Dopen2(g, name, H5P_DEFAULT), sp = ds >= 0 ? H5Dget_space(ds) : -1;
    hsize_t dm[2] = {0, 0};
    int rc = 0;
    if (ds < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: tensor %s has no dataset '%s'", what, gname, name);
    else if (H5Sget_simple_extent_ndims(sp) != 2 || H5Sget_simple_extent_dims(sp, dm, NULL) < 0 ||
             dm[0] != (hsize_t)a || dm[1] != (hsize_t)b)
        rc = mp_errorf(MP_EFORMAT, "%s: %s/%s is [%llu, %llu], its attributes say [%lld, %lld]", what, gname, name,
                       (unsigned long long)dm[0], (unsigned long long)dm[1], (long long)a, (long long)b);
    else if (H5Dread(ds, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: cannot read %s/%s", what, gname, name);
    if (sp >= 0)
        H5Sclose(sp);
    if (ds >= 0)
        H5Dclose(ds);
    return rc;
}

int mp_qtensor_h5_read(hid_t loc, const char *name, const char *what, mp_qtensor **out)
{
    *out = NULL;
    hid_t g = H5Gopen2(loc, name, H5P_DEFAULT);
    if (g < 0)
        return mp_errorf(MP_EFORMAT, "%s: tensor group %s is missing", what, name);
    char fname[64];
    int64_t shape[2];
    const mp_qformat *f = NULL;
    int rc = 0;
    if (mp_h5_attr_read_str(g, "format", fname, sizeof fname) < 0 || mp_h5_attr_read_i64v(g, "shape", shape, 2) < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: tensor %s lacks its 'format' or 'shape' attribute", what, name);
    else if (mp_qformat_find(fname, &f) < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: tensor %s has the unknown format '%s'", what, name, fname);
    else if (shape[0] < 1 || shape[1] < 1)
        rc = mp_errorf(MP_EFORMAT, "%s: tensor %s has the shape [%lld, %lld]", what, name, (long long)shape[0],
                       (long long)shape[1]);
    mp_qtensor *q = NULL;
    if (rc == 0)
        rc = mp_qtensor_create(f, shape[0], shape[1], &q);
    hid_t half = rc == 0 ? mp_h5_half_type() : -1;
    if (rc == 0)
        rc = get_ds(g, "qweight", H5T_NATIVE_UINT32, q->qweight, q->m, q->words_per_row, what, name);
    if (rc == 0 && q->scales)
        rc = get_ds(g, "scales", half, q->scales, q->m, q->ngroups, what, name);
    if (rc == 0 && q->zeros)
        rc = get_ds(g, "zeros", half, q->zeros, q->m, q->ngroups, what, name);
    if (half >= 0)
        H5Tclose(half);
    H5Gclose(g);
    if (rc < 0) {
        mp_qtensor_destroy(q);
        return rc;
    }
    *out = q;
    return 0;
}
