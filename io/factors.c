/* factors.c - D2 factor files and Fisher weights (see factors.h). */
#include "factors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "h5check.h"
#include "h5util.h"

static const char *PN[3] = {"gate", "up", "down"};

struct mp_factor_file {
    hid_t f;
};

int mp_factors_create(mp_factor_file **out)
{
    *out = malloc(sizeof **out);
    if (!*out)
        return mp_errorf(MP_ENOMEM, "out of memory");
    if (((*out)->f = mp_h5_create_mem()) < 0) {
        free(*out);
        *out = NULL;
        return mp_errorf(MP_EINTERNAL, "HDF5 could not create an in-memory file");
    }
    return 0;
}

static int put_f32(hid_t f, const char *name, const float *v, hsize_t a, hsize_t b)
{
    return mp_h5_put(f, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, v, b ? 2 : 1, a, b);
}

static int put_f64(hid_t f, const char *name, const double *v, hsize_t n)
{
    return mp_h5_put(f, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, v, 1, n, 0);
}

int mp_factors_put(mp_factor_file *ff, int p, const mp_factor_block *b)
{
    hid_t f = ff->f;
    char nm[48];
    int bad = 0;
    int64_t r = b->rank;
    snprintf(nm, sizeof nm, "U_%s", PN[p]);
    bad |= put_f32(f, nm, b->U, (hsize_t)b->rows, (hsize_t)r);
    snprintf(nm, sizeof nm, "V_%s", PN[p]);
    bad |= put_f32(f, nm, b->V, (hsize_t)r, (hsize_t)b->cols);
    snprintf(nm, sizeof nm, "sigma_%s", PN[p]);
    bad |= put_f64(f, nm, b->sigma, (hsize_t)b->k);
    snprintf(nm, sizeof nm, "rank_%s", PN[p]);
    bad |= mp_h5_put_attr(f, nm, H5T_STD_I64LE, H5T_NATIVE_INT64, &r);
    snprintf(nm, sizeof nm, "lambda_%s", PN[p]);
    bad |= mp_h5_put_attr(f, nm, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &b->lambda);
    snprintf(nm, sizeof nm, "energy_%s", PN[p]);
    bad |= mp_h5_put_attr(f, nm, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &b->energy);
    if (b->n_cand > 0) { /* nested factors: the first r_c columns/rows are the rank-r_c ones */
        snprintf(nm, sizeof nm, "candidate_ranks_%s", PN[p]);
        bad |= put_f64(f, nm, b->cand_ranks, (hsize_t)b->n_cand);
    }
    return bad ? mp_errorf(MP_EINTERNAL, "HDF5 could not store the %s factors", PN[p]) : 0;
}

int mp_factors_save(mp_factor_file *ff, const char *path)
{
    int rc = mp_h5_save(ff->f, path);
    free(ff);
    return rc;
}

void mp_factors_discard(mp_factor_file *ff)
{
    if (!ff)
        return;
    H5Fclose(ff->f);
    free(ff);
}

int mp_base_save(const char *path, float *const base[3], const int64_t rows[3], const int64_t cols[3],
                 const double *score, int64_t f)
{
    hid_t h = mp_h5_create_mem();
    if (h < 0)
        return mp_errorf(MP_EINTERNAL, "HDF5 could not create an in-memory file for %s", path);
    int bad = 0;
    for (int p = 0; p < 3 && !bad; p++) {
        char nm[32];
        snprintf(nm, sizeof nm, "base_%s", PN[p]);
        bad |= put_f32(h, nm, base[p], (hsize_t)rows[p], (hsize_t)cols[p]);
    }
    bad |= put_f64(h, "prune_score", score, (hsize_t)f);
    if (bad) {
        H5Fclose(h);
        return mp_errorf(MP_EINTERNAL, "HDF5 could not build %s", path);
    }
    return mp_h5_save(h, path);
}

int mp_factors_read_loss(const char *path, int p, int64_t *rank, double *energy, double *kept)
{
    char nm[48];
    double *sig = NULL;
    int rc = 0;
    *rank = 0, *energy = 0, *kept = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), a = -1, ds = -1, sp = -1;
    if (f < 0)
        return mp_errorf(MP_ENOENT, "%s: cannot open the factor file", path);
    snprintf(nm, sizeof nm, "energy_%s", PN[p]);
    if ((a = H5Aopen(f, nm, H5P_DEFAULT)) < 0 || H5Aread(a, H5T_NATIVE_DOUBLE, energy) < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: attribute '%s' is missing or unreadable", path, nm);
    if (a >= 0)
        H5Aclose(a), a = -1;
    snprintf(nm, sizeof nm, "rank_%s", PN[p]);
    if (rc == 0 && ((a = H5Aopen(f, nm, H5P_DEFAULT)) < 0 || H5Aread(a, H5T_NATIVE_INT64, rank) < 0))
        rc = mp_errorf(MP_EFORMAT, "%s: attribute '%s' is missing or unreadable", path, nm);
    if (a >= 0)
        H5Aclose(a);
    snprintf(nm, sizeof nm, "sigma_%s", PN[p]);
    hssize_t n = 0;
    if (rc == 0 && ((ds = H5Dopen2(f, nm, H5P_DEFAULT)) < 0 || (sp = H5Dget_space(ds)) < 0 ||
                    (n = H5Sget_simple_extent_npoints(sp)) < *rank))
        rc = mp_errorf(MP_EFORMAT, "%s: dataset '%s' is missing or shorter than rank %lld", path, nm,
                       (long long)*rank);
    if (rc == 0 && !(sig = malloc(sizeof(double) * (size_t)(n + 1))))
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    if (rc == 0 && H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, sig) < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: cannot read dataset '%s'", path, nm);
    for (int64_t j = 0; rc == 0 && j < *rank; j++)
        *kept += sig[j] * sig[j];
    free(sig);
    if (sp >= 0)
        H5Sclose(sp);
    if (ds >= 0)
        H5Dclose(ds);
    H5Fclose(f);
    return rc;
}

int mp_fisher_read_rows(const char *path, int l, int e, int p, int64_t rows, int64_t cols, int64_t lo, int64_t hi,
                        float *out)
{
    char name[96];
    snprintf(name, sizeof name, "layer%d/expert%d/%s", l, e, PN[p]);
    char top[24]; /* a user's file: regular, with metadata HDF5 can walk (h5check.h) */
    snprintf(top, sizeof top, "layer%d", l);
    MP_CHECK(mp_h5_precheck_path(path, top));
    mp_h5_init();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return mp_errorf(MP_ENOENT, "%s: cannot open the Fisher file", path);
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    int rc = 0;
    if (ds < 0)
        rc = mp_errorf(MP_ENOENT, "%s: dataset '%s' is missing", path, name);
    hid_t sp = ds >= 0 ? H5Dget_space(ds) : -1;
    hsize_t dm[2] = {0, 0};
    if (rc == 0 && (H5Sget_simple_extent_ndims(sp) != 2 || H5Sget_simple_extent_dims(sp, dm, NULL) < 0 ||
                    dm[0] != (hsize_t)rows || dm[1] != (hsize_t)cols))
        rc = mp_errorf(MP_EFORMAT, "%s: dataset '%s' must be [%lld, %lld]", path, name, (long long)rows,
                       (long long)cols);
    if (rc == 0 && hi > lo) {
        hsize_t start[2] = {(hsize_t)lo, 0}, count[2] = {(hsize_t)(hi - lo), (hsize_t)cols};
        hid_t ms = H5Screate_simple(2, count, NULL);
        if (H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL) < 0 || ms < 0 ||
            H5Dread(ds, H5T_NATIVE_FLOAT, ms, sp, H5P_DEFAULT, out) < 0)
            rc = mp_errorf(MP_EFORMAT, "%s: cannot read dataset '%s' as float", path, name);
        if (ms >= 0)
            H5Sclose(ms);
    }
    for (int64_t i = 0; rc == 0 && i < (hi - lo) * cols; i++)
        if (!isfinite(out[i]))
            rc = mp_errorf(MP_ENUMERIC, "%s: dataset '%s' holds a NaN or an infinity at element %lld", path, name,
                           (long long)(lo * cols + i));
    if (sp >= 0)
        H5Sclose(sp);
    if (ds >= 0)
        H5Dclose(ds);
    H5Fclose(f);
    return rc;
}

/* dataset `name` of f as `mtype` into a new buffer of `esz`-byte elements; its dims into dm (rank <= 2) */
static int read_whole(hid_t f, const char *path, const char *name, hid_t mtype, size_t esz, int want_rank,
                      hsize_t dm[2], void **out)
{
    *out = NULL;
    dm[0] = dm[1] = 1;
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT), sp = ds >= 0 ? H5Dget_space(ds) : -1;
    int rc = 0;
    if (ds < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: dataset '%s' is missing", path, name);
    else if (sp < 0 || H5Sget_simple_extent_ndims(sp) != want_rank || H5Sget_simple_extent_dims(sp, dm, NULL) < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: dataset '%s' must have %d dimension(s)", path, name, want_rank);
    size_t n = rc == 0 ? (size_t)dm[0] * (size_t)(want_rank == 2 ? dm[1] : 1) : 0;
    if (rc == 0 && dm[0] > ((hsize_t)1 << 40) / (want_rank == 2 && dm[1] ? dm[1] : 1))
        rc = mp_errorf(MP_EFORMAT, "%s: dataset '%s' is implausibly large", path, name);
    if (rc == 0 && !(*out = malloc(esz * (n + 1))))
        rc = mp_errorf(MP_ENOMEM, "out of memory reading %s of %s", name, path);
    if (rc == 0 && n && H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: cannot read dataset '%s'", path, name);
    if (rc < 0) {
        free(*out);
        *out = NULL;
    }
    if (sp >= 0)
        H5Sclose(sp);
    if (ds >= 0)
        H5Dclose(ds);
    return rc;
}

static int finite_f32(const float *v, size_t n, const char *path, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return mp_errorf(MP_ENUMERIC, "%s: dataset '%s' holds a NaN or an infinity at element %zu", path, name, i);
    return 0;
}

void mp_factors_data_free(mp_factors_data *d)
{
    free(d->U), free(d->V), free(d->sigma);
    d->U = d->V = NULL, d->sigma = NULL;
}

int mp_factors_read(const char *path, int p, int64_t rows, int64_t cols, mp_factors_data *out)
{
    memset(out, 0, sizeof *out);
    mp_h5_init();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return mp_errorf(MP_ENOENT, "%s: cannot open the factor file", path);
    char nu[32], nv[32], ns[32], ne[32];
    snprintf(nu, sizeof nu, "U_%s", PN[p]), snprintf(nv, sizeof nv, "V_%s", PN[p]);
    snprintf(ns, sizeof ns, "sigma_%s", PN[p]), snprintf(ne, sizeof ne, "energy_%s", PN[p]);
    hsize_t du[2], dv[2], dsg[2];
    void *U = NULL, *V = NULL, *S = NULL;
    int rc = read_whole(f, path, nu, H5T_NATIVE_FLOAT, sizeof(float), 2, du, &U);
    if (rc == 0)
        rc = read_whole(f, path, nv, H5T_NATIVE_FLOAT, sizeof(float), 2, dv, &V);
    if (rc == 0)
        rc = read_whole(f, path, ns, H5T_NATIVE_DOUBLE, sizeof(double), 1, dsg, &S);
    out->U = U, out->V = V, out->sigma = S;
    if (rc == 0 && (du[0] != (hsize_t)rows || dv[1] != (hsize_t)cols || du[1] != dv[0]))
        rc = mp_errorf(MP_EFORMAT, "%s: factors %s [%llu, %llu] and %s [%llu, %llu] do not make a [%lld, %lld] block",
                       path, nu, (unsigned long long)du[0], (unsigned long long)du[1], nv, (unsigned long long)dv[0],
                       (unsigned long long)dv[1], (long long)rows, (long long)cols);
    if (rc == 0) {
        out->rank = (int64_t)du[1], out->k = (int64_t)dsg[0];
        hid_t a = H5Aopen(f, ne, H5P_DEFAULT);
        if (a < 0 || H5Aread(a, H5T_NATIVE_DOUBLE, &out->energy) < 0)
            rc = mp_errorf(MP_EFORMAT, "%s: attribute '%s' is missing or unreadable", path, ne);
        if (a >= 0)
            H5Aclose(a);
    }
    if (rc == 0 && out->k < out->rank)
        rc = mp_errorf(MP_EFORMAT, "%s: dataset '%s' is shorter than the rank %lld", path, ns, (long long)out->rank);
    if (rc == 0)
        rc = finite_f32(out->U, (size_t)(rows * out->rank), path, nu);
    if (rc == 0)
        rc = finite_f32(out->V, (size_t)(out->rank * cols), path, nv);
    for (int64_t i = 0; rc == 0 && i < out->k; i++)
        if (!isfinite(out->sigma[i]) || out->sigma[i] < 0)
            rc = mp_errorf(MP_ENUMERIC, "%s: dataset '%s' holds a bad singular value at %lld", path, ns, (long long)i);
    if (rc == 0 && !(isfinite(out->energy) && out->energy >= 0))
        rc = mp_errorf(MP_ENUMERIC, "%s: attribute '%s' is not a finite energy", path, ne);
    if (rc < 0)
        mp_factors_data_free(out);
    H5Fclose(f);
    return rc;
}

int mp_base_read(const char *path, int p, int64_t rows, int64_t cols, float *out)
{
    mp_h5_init();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return mp_errorf(MP_ENOENT, "%s: cannot open the base file", path);
    char nm[32];
    snprintf(nm, sizeof nm, "base_%s", PN[p]);
    hsize_t dm[2];
    void *b = NULL;
    int rc = read_whole(f, path, nm, H5T_NATIVE_FLOAT, sizeof(float), 2, dm, &b);
    if (rc == 0 && (dm[0] != (hsize_t)rows || dm[1] != (hsize_t)cols))
        rc = mp_errorf(MP_EFORMAT, "%s: dataset '%s' must be [%lld, %lld]", path, nm, (long long)rows, (long long)cols);
    if (rc == 0)
        rc = finite_f32(b, (size_t)(rows * cols), path, nm);
    if (rc == 0)
        memcpy(out, b, sizeof(float) * (size_t)(rows * cols));
    free(b);
    H5Fclose(f);
    return rc;
}
