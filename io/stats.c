/* stats.c - per-expert calibration statistics in HDF5 (see stats.h). */
#define _GNU_SOURCE
#include "stats.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "error.h"
#include "fsutil.h"
#include "h5util.h"

int mp_stats_alloc(mp_expert_stats *s, int64_t layer, int64_t expert, int64_t d, int64_t f)
{
    memset(s, 0, sizeof *s);
    int64_t dd, ff;
    if (d <= 0 || f <= 0 || mp_mul_i64(d, d, &dd) < 0 || mp_mul_i64(f, f, &ff) < 0 || dd > MP_MAX_ELEMS ||
        ff > MP_MAX_ELEMS)
        return mp_errorf(MP_EINTERNAL, "statistics of layer %lld expert %lld: unusable dims d %lld f %lld",
                         (long long)layer, (long long)expert, (long long)d, (long long)f);
    s->layer = layer, s->expert = expert, s->d = d, s->f = f;
    s->G_in = calloc((size_t)(d * d), sizeof(double));
    s->G_mid = calloc((size_t)(f * f), sizeof(double));
    s->h_sq = calloc((size_t)f, sizeof(double));
    s->prior_diag_in = calloc((size_t)d, sizeof(double));
    s->prior_diag_mid = calloc((size_t)f, sizeof(double));
    if (!s->G_in || !s->G_mid || !s->h_sq || !s->prior_diag_in || !s->prior_diag_mid) {
        mp_stats_free(s);
        return mp_errorf(MP_ENOMEM, "out of memory for the statistics of layer %lld expert %lld", (long long)layer,
                         (long long)expert);
    }
    return 0;
}

void mp_stats_free(mp_expert_stats *s)
{
    free(s->G_in);
    free(s->G_mid);
    free(s->h_sq);
    free(s->prior_diag_in);
    free(s->prior_diag_mid);
    memset(s, 0, sizeof *s);
}

void mp_stats_path(char *buf, size_t cap, const char *dir, int layer, int expert)
{
    snprintf(buf, cap, "%s/layer%04d/expert%04d.h5", dir, layer, expert);
}

static int put(hid_t f, const char *name, const double *v, int rank, hsize_t a, hsize_t b)
{
    return mp_h5_put(f, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, v, rank, a, b);
}

static int put_attr(hid_t f, const char *name, hid_t type, const void *v)
{
    return mp_h5_put_attr(f, name, type, type == H5T_STD_I64LE ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE, v);
}

static void tmp_name(char *buf, size_t cap, const char *path) { snprintf(buf, cap, "%s.partial", path); }

/* MP_ENUMERIC naming the file, the dataset and the element when v[0..n) holds a NaN or an infinity */
static int check_finite(const char *path, const char *name, const double *v, int64_t n, int64_t cols)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) {
            if (cols > 1)
                return mp_errorf(MP_ENUMERIC, "%s: statistics '%s': non-finite value %g at [%lld, %lld]", path, name,
                                 v[i], (long long)(i / cols), (long long)(i % cols));
            return mp_errorf(MP_ENUMERIC, "%s: statistics '%s': non-finite value %g at [%lld]", path, name, v[i],
                             (long long)i);
        }
    return 0;
}

static int check_all_finite(const char *path, const mp_expert_stats *s, int with_prior)
{
    MP_CHECK(check_finite(path, "G_in", s->G_in, s->d * s->d, s->d));
    MP_CHECK(check_finite(path, "G_mid", s->G_mid, s->f * s->f, s->f));
    MP_CHECK(check_finite(path, "h_sq", s->h_sq, s->f, 1));
    MP_CHECK(check_finite(path, "weight_sum", &s->weight_sum, 1, 1));
    if (with_prior) {
        MP_CHECK(check_finite(path, "prior_diag_in", s->prior_diag_in, s->d, 1));
        MP_CHECK(check_finite(path, "prior_diag_mid", s->prior_diag_mid, s->f, 1));
    }
    return 0;
}

int mp_stats_write_begin(const char *path, const mp_expert_stats *s)
{
    char tmp[4200];
    tmp_name(tmp, sizeof tmp, path);
    MP_CHECK(check_all_finite(path, s, 0));
    hid_t f = mp_h5_create_mem();
    if (f < 0)
        MP_CHECK(MP_EINTERNAL);
    hid_t root = H5Gopen2(f, "/", H5P_DEFAULT);
    double *x_sq = malloc(sizeof(double) * (size_t)s->d);
    for (int64_t i = 0; x_sq && i < s->d; i++)
        x_sq[i] = s->G_in[i * s->d + i];
    int bad = (x_sq == NULL) | put(f, "G_in", s->G_in, 2, (hsize_t)s->d, (hsize_t)s->d) |
              put(f, "G_mid", s->G_mid, 2, (hsize_t)s->f, (hsize_t)s->f) |
              put(f, "h_sq", s->h_sq, 1, (hsize_t)s->f, 0) | (x_sq ? put(f, "x_sq", x_sq, 1, (hsize_t)s->d, 0) : 1) |
              put_attr(root, "layer", H5T_STD_I64LE, &s->layer) | put_attr(root, "expert", H5T_STD_I64LE, &s->expert) |
              put_attr(root, "d", H5T_STD_I64LE, &s->d) | put_attr(root, "f", H5T_STD_I64LE, &s->f) |
              put_attr(root, "count", H5T_STD_I64LE, &s->count) |
              put_attr(root, "weight_sum", H5T_IEEE_F64LE, &s->weight_sum);
    H5Gclose(root);
    free(x_sq);
    if (bad) {
        H5Fclose(f);
        return mp_errorf(MP_EINTERNAL, "%s: HDF5 could not build the statistics", path);
    }
    return mp_h5_save(f, tmp);
}

int mp_stats_write_end(const char *path, int64_t prior_tokens, const double *prior_diag_in,
                       const double *prior_diag_mid, int64_t d, int64_t f)
{
    char tmp[4200];
    tmp_name(tmp, sizeof tmp, path);
    MP_CHECK(check_finite(path, "prior_diag_in", prior_diag_in, d, 1));
    MP_CHECK(check_finite(path, "prior_diag_mid", prior_diag_mid, f, 1));
    hid_t h = mp_h5_open_mem(tmp);
    if (h < 0)
        MP_CHECK(MP_EIO);
    hid_t root = H5Gopen2(h, "/", H5P_DEFAULT);
    int bad = put(h, "prior_diag_in", prior_diag_in, 1, (hsize_t)d, 0) |
              put(h, "prior_diag_mid", prior_diag_mid, 1, (hsize_t)f, 0) |
              put_attr(root, "prior_tokens", H5T_STD_I64LE, &prior_tokens);
    H5Gclose(root);
    if (bad) {
        H5Fclose(h);
        return mp_errorf(MP_EINTERNAL, "%s: HDF5 could not add the prior", path);
    }
    MP_CHECK(mp_h5_save(h, path));
    unlink(tmp);
    return 0;
}

static int get(hid_t f, const char *path, const char *name, double *v, hsize_t n)
{
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0)
        return mp_errorf(MP_EFORMAT, "%s: dataset '%s' is missing", path, name);
    hid_t sp = H5Dget_space(ds);
    hssize_t np = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    int ok = np == (hssize_t)n && H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0;
    H5Dclose(ds);
    return ok ? 0 : mp_errorf(MP_EFORMAT, "%s: dataset '%s' has the wrong size or cannot be read", path, name);
}

static int get_attr(hid_t f, const char *path, const char *name, hid_t mem, void *v)
{
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    int ok = a >= 0 && H5Aread(a, mem, v) >= 0;
    if (a >= 0)
        H5Aclose(a);
    return ok ? 0 : mp_errorf(MP_EFORMAT, "%s: attribute '%s' is missing", path, name);
}

int mp_stats_read(const char *path, mp_expert_stats *s)
{
    memset(s, 0, sizeof *s);
    if (access(path, R_OK) != 0)
        return mp_syserrorf(MP_ENOENT, "%s: cannot open statistics", path);
    mp_h5_init();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return mp_errorf(MP_EFORMAT, "%s: not an HDF5 file", path);
    hid_t root = H5Gopen2(f, "/", H5P_DEFAULT);
    int64_t layer = 0, expert = 0, d = 0, ff = 0;
    int rc = get_attr(root, path, "layer", H5T_NATIVE_INT64, &layer);
    if (rc == 0)
        rc = get_attr(root, path, "expert", H5T_NATIVE_INT64, &expert);
    if (rc == 0)
        rc = get_attr(root, path, "d", H5T_NATIVE_INT64, &d);
    if (rc == 0)
        rc = get_attr(root, path, "f", H5T_NATIVE_INT64, &ff);
    if (rc == 0 && (d <= 0 || ff <= 0 || d > 1 << 20 || ff > 1 << 20 || layer < 0 || expert < 0))
        rc = mp_errorf(MP_EFORMAT, "%s: implausible layer %lld expert %lld d %lld f %lld", path, (long long)layer,
                       (long long)expert, (long long)d, (long long)ff);
    if (rc == 0)
        rc = mp_stats_alloc(s, layer, expert, d, ff);
    if (rc == 0)
        rc = get_attr(root, path, "count", H5T_NATIVE_INT64, &s->count);
    if (rc == 0)
        rc = get_attr(root, path, "prior_tokens", H5T_NATIVE_INT64, &s->prior_tokens);
    if (rc == 0)
        rc = get_attr(root, path, "weight_sum", H5T_NATIVE_DOUBLE, &s->weight_sum);
    if (rc == 0)
        rc = get(f, path, "G_in", s->G_in, (hsize_t)(d * d));
    if (rc == 0)
        rc = get(f, path, "G_mid", s->G_mid, (hsize_t)(ff * ff));
    if (rc == 0)
        rc = get(f, path, "h_sq", s->h_sq, (hsize_t)ff);
    if (rc == 0)
        rc = get(f, path, "prior_diag_in", s->prior_diag_in, (hsize_t)d);
    if (rc == 0)
        rc = get(f, path, "prior_diag_mid", s->prior_diag_mid, (hsize_t)ff);
    if (rc == 0 && (s->count < 0 || s->prior_tokens < 0))
        rc = mp_errorf(MP_EFORMAT, "%s: negative token count %lld or prior_tokens %lld", path, (long long)s->count,
                       (long long)s->prior_tokens);
    if (rc == 0)
        rc = check_all_finite(path, s, 1);
    H5Gclose(root);
    H5Fclose(f);
    if (rc < 0)
        mp_stats_free(s);
    return rc;
}

void mp_stats_regularized(const mp_expert_stats *s, int which, double *out)
{
    int64_t n = which ? s->f : s->d;
    const double *G = which ? s->G_mid : s->G_in, *pd = which ? s->prior_diag_mid : s->prior_diag_in;
    memcpy(out, G, sizeof(double) * (size_t)(n * n));
    for (int64_t i = 0; i < n && s->prior_tokens > 0; i++)
        out[i * n + i] += (double)s->prior_tokens * pd[i];
}

int mp_stats_read_summary(const char *path, int64_t d, int64_t f, int64_t *count, double *x_sq, double *h_sq)
{
    if (access(path, R_OK) != 0)
        return mp_syserrorf(MP_ENOENT, "%s: cannot open statistics", path);
    mp_h5_init();
    hid_t h = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (h < 0)
        return mp_errorf(MP_EFORMAT, "%s: not an HDF5 file", path);
    hid_t root = H5Gopen2(h, "/", H5P_DEFAULT);
    int rc = get_attr(root, path, "count", H5T_NATIVE_INT64, count);
    if (rc == 0)
        rc = get(h, path, "x_sq", x_sq, (hsize_t)d);
    if (rc == 0)
        rc = get(h, path, "h_sq", h_sq, (hsize_t)f);
    if (rc == 0 && *count < 0)
        rc = mp_errorf(MP_EFORMAT, "%s: negative token count %lld", path, (long long)*count);
    if (rc == 0)
        rc = check_finite(path, "x_sq", x_sq, d, 1);
    if (rc == 0)
        rc = check_finite(path, "h_sq", h_sq, f, 1);
    H5Gclose(root);
    H5Fclose(h);
    return rc;
}
