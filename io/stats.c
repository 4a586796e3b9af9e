/* stats.c - per-expert calibration statistics in HDF5 (see stats.h). */
#define _GNU_SOURCE
#include "stats.h"

#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "checked.h"
#include "error.h"
#include "fsutil.h"
#include "gram.h"
#include "h5util.h"
#include "model_config.h"

static int alloc_stats(mp_expert_stats *s, int64_t layer, int64_t expert, int64_t d, int64_t f, double *G_in,
                       double *G_mid, int packed)
{
    memset(s, 0, sizeof *s);
    int64_t dd, ff;
    if (d <= 0 || f <= 0 || mp_mul_i64(d, d, &dd) < 0 || mp_mul_i64(f, f, &ff) < 0 || dd > MP_MAX_ELEMS ||
        ff > MP_MAX_ELEMS) {
        free(G_in), free(G_mid);
        return mp_errorf(MP_EINTERNAL, "statistics of layer %lld expert %lld: unusable dims d %lld f %lld",
                         (long long)layer, (long long)expert, (long long)d, (long long)f);
    }
    s->layer = layer, s->expert = expert, s->d = d, s->f = f, s->packed = packed;
    s->G_in = G_in ? G_in : calloc((size_t)(packed ? mp_gram_packed_size(d) : dd), sizeof(double));
    s->G_mid = G_mid ? G_mid : calloc((size_t)(packed ? mp_gram_packed_size(f) : ff), sizeof(double));
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

int mp_stats_alloc(mp_expert_stats *s, int64_t layer, int64_t expert, int64_t d, int64_t f)
{
    return alloc_stats(s, layer, expert, d, f, NULL, NULL, 0);
}

int mp_stats_alloc_with(mp_expert_stats *s, int64_t layer, int64_t expert, int64_t d, int64_t f, double *G_in,
                        double *G_mid)
{
    return alloc_stats(s, layer, expert, d, f, G_in, G_mid, 1);
}

void mp_stats_free(mp_expert_stats *s)
{
    free(s->G_in);
    free(s->G_mid);
    free(s->h_sq);
    free(s->X_sample);
    free(s->H_sample);
    free(s->sample_token);
    free(s->prior_diag_in);
    free(s->prior_diag_mid);
    memset(s, 0, sizeof *s);
}

void mp_stats_path(char *buf, size_t cap, const char *dir, int layer, int expert)
{
    if (expert == MP_UNIT_DENSE)
        snprintf(buf, cap, "%s/layer%04d/dense.h5", dir, layer);
    else
        snprintf(buf, cap, "%s/layer%04d/expert%04d.h5", dir, layer, expert);
}

int64_t mp_gram_packed_size(int64_t n) { return n * (n + 1) / 2; }

void mp_gram_pack(const double *G, int64_t n, double *P)
{
    for (int64_t i = 0, k = 0; i < n; k += n - i, i++)
        memcpy(P + k, G + i * n + i, sizeof(double) * (size_t)(n - i));
}

void mp_gram_unpack(double *G, int64_t n)
{
    /* row i's packed run starts at i n - i (i - 1) / 2 <= i n + i, its place: rows from the last one down
     * never overwrite a run still to be moved */
    for (int64_t i = n - 1; i >= 0; i--)
        memmove(G + i * n + i, G + i * n - i * (i - 1) / 2, sizeof(double) * (size_t)(n - i));
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < i; j++)
            G[i * n + j] = G[j * n + i];
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

/* The packed upper triangle P of order n (a writer's input), checked: the first non-finite value is an
 * error naming it */
static int check_packed(const char *path, const char *name, const double *P, int64_t n)
{
    for (int64_t i = 0, k = 0; i < n; k += n - i, i++)
        for (int64_t j = i; j < n; j++)
            if (!isfinite(P[k + j - i]))
                return mp_errorf(MP_ENUMERIC, "%s: statistics '%s': non-finite value %g at [%lld, %lld]", path, name,
                                 P[k + j - i], (long long)i, (long long)j);
    return 0;
}

/* upper: the Grams are a writer's packed input (checked by check_packed); else the whole matrices (a file
 * read) */
static int check_all_finite(const char *path, const mp_expert_stats *s, int with_prior, int upper)
{
    if (!upper) {
        MP_CHECK(check_finite(path, "G_in", s->G_in, s->d * s->d, s->d));
        MP_CHECK(check_finite(path, "G_mid", s->G_mid, s->f * s->f, s->f));
    }
    MP_CHECK(check_finite(path, "h_sq", s->h_sq, s->f, 1));
    MP_CHECK(check_finite(path, "weight_sum", &s->weight_sum, 1, 1));
    if (with_prior) {
        MP_CHECK(check_finite(path, "prior_diag_in", s->prior_diag_in, s->d, 1));
        MP_CHECK(check_finite(path, "prior_diag_mid", s->prior_diag_mid, s->f, 1));
    }
    return 0;
}

/* ---- writing once: the file with placeholders for the prior, patched in its tail ---------------------- */

/* the placeholder of prior_tokens, found again in the image: a NaN pattern both as one fp64 and as two
 * fp32 values, so no finite statistic or sample value can be mistaken for it */
static const uint64_t PRIOR_SENTINEL = 0x7ff4dead7ff4beefull;

/* A file written by mp_stats_write_begin whose prior is still to come: its bytes [tail_at, size) are kept,
 * the XXH64 of the bytes before them is in `hash`; the prior's places are offsets into the file. */
typedef struct pending {
    struct pending *next;
    char path[4200];
    XXH64_state_t *hash;
    int64_t d, f, size, tail_at, at_in, at_mid, at_tokens;
    unsigned char *tail;
} pending;

static pending *pending_list = NULL;

static pending *pending_take(const char *path)
{
    for (pending **p = &pending_list; *p; p = &(*p)->next)
        if (!strcmp((*p)->path, path)) {
            pending *q = *p;
            *p = q->next;
            return q;
        }
    return NULL;
}

static void pending_free(pending *p)
{
    if (p)
        free(p->tail), XXH64_freeState(p->hash);
    free(p);
}

static void le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* n rounded up to the direct write's unit */
static size_t direct_padded(size_t n) { return (n + MP_DIRECT_ALIGN - 1) / MP_DIRECT_ALIGN * MP_DIRECT_ALIGN; }

static uint64_t dbits(double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

/* the file offset of dataset `name`'s contiguous data, -1 when HDF5 has none */
static int64_t data_offset(hid_t f, const char *name)
{
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    haddr_t a = ds >= 0 ? H5Dget_offset(ds) : HADDR_UNDEF;
    if (ds >= 0)
        H5Dclose(ds);
    return a == HADDR_UNDEF ? -1 : (int64_t)a;
}

/* the only place of the sentinel in img [n], or -1 */
static int64_t find_sentinel(const unsigned char *img, int64_t n)
{
    unsigned char key[8];
    for (int i = 0; i < 8; i++)
        key[i] = (unsigned char)(PRIOR_SENTINEL >> (8 * i)); /* the attribute is little-endian */
    int64_t at = -1;
    for (const unsigned char *p = img; (p = memmem(p, (size_t)(img + n - p), key, 8)) != NULL; p++) {
        if (at >= 0)
            return -1;
        at = p - img;
    }
    return at;
}

int mp_stats_write_begin(const char *path, const mp_expert_stats *s)
{
    char tmp[4200];
    tmp_name(tmp, sizeof tmp, path);
    MP_CHECK(check_all_finite(path, s, 0, 1));
    pending_free(pending_take(path)); /* an earlier attempt's */
    hid_t f = mp_h5_create_mem();
    if (f < 0)
        MP_CHECK(MP_EINTERNAL);
    hid_t root = H5Gopen2(f, "/", H5P_DEFAULT);
    int64_t d = s->d, ff = s->f, t = s->n_sample;
    double *x_sq = malloc(sizeof(double) * (size_t)d), *P = calloc((size_t)(d > ff ? d : ff), sizeof(double));
    for (int64_t i = 0; x_sq && i < d; i++)
        x_sq[i] = s->G_in[mp_gram_at(d, i, i)];
    int bad = x_sq == NULL || P == NULL; /* P: the zeros of the prior's placeholders */
    int rc = s->packed ? 0 : mp_errorf(MP_EINTERNAL, "%s: the Grams to write are not packed", path);
    bad |= rc < 0;
    for (int w = 0; w < 2 && !bad; w++) { /* the packed triangles as they are (HDF5 copies each) */
        const double *G = w ? s->G_mid : s->G_in;
        int64_t n = w ? ff : d;
        rc = check_packed(path, w ? "G_mid" : "G_in", G, n);
        bad |= rc < 0 || put(f, w ? "G_mid_packed" : "G_in_packed", G, 1, (hsize_t)mp_gram_packed_size(n), 0);
    }
    bad |= t < 0 || (t > 0 && (!s->X_sample || !s->H_sample || !s->sample_token));
    if (!bad)
        bad |= mp_h5_put(f, "X_sample", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, s->X_sample, 2, (hsize_t)t, (hsize_t)d) |
               mp_h5_put(f, "H_sample", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, s->H_sample, 2, (hsize_t)t, (hsize_t)ff) |
               mp_h5_put(f, "sample_token", H5T_STD_I64LE, H5T_NATIVE_INT64, s->sample_token, 1, (hsize_t)t, 0);
    if (!bad)
        bad |= put(f, "h_sq", s->h_sq, 1, (hsize_t)ff, 0) | put(f, "x_sq", x_sq, 1, (hsize_t)d, 0) |
               put_attr(root, "layer", H5T_STD_I64LE, &s->layer) | put_attr(root, "expert", H5T_STD_I64LE, &s->expert) |
               put_attr(root, "d", H5T_STD_I64LE, &s->d) | put_attr(root, "f", H5T_STD_I64LE, &s->f) |
               put_attr(root, "count", H5T_STD_I64LE, &s->count) |
               put_attr(root, "weight_sum", H5T_IEEE_F64LE, &s->weight_sum);
    /* the prior's places, last, so that they lie in the file's tail: zeros and the sentinel for now */
    if (!bad) {
        int64_t sentinel = (int64_t)PRIOR_SENTINEL;
        bad |= put(f, "prior_diag_in", P, 1, (hsize_t)d, 0) | put(f, "prior_diag_mid", P, 1, (hsize_t)ff, 0) |
               put_attr(root, "prior_tokens", H5T_STD_I64LE, &sentinel);
    }
    free(P);
    H5Gclose(root);
    free(x_sq);
    pending *pd = bad ? NULL : calloc(1, sizeof *pd);
    unsigned char *img = NULL;
    ssize_t n = -1;
    if (pd) {
        pd->d = d, pd->f = ff;
        pd->at_in = data_offset(f, "prior_diag_in"), pd->at_mid = data_offset(f, "prior_diag_mid");
        void *a = NULL; /* aligned for the direct write */
        if (H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0 && (n = H5Fget_file_image(f, NULL, 0)) > 0 &&
            posix_memalign(&a, MP_DIRECT_ALIGN, (size_t)n) == 0 && (img = a) != NULL &&
            H5Fget_file_image(f, img, (size_t)n) != n)
            n = -1;
    }
    H5Fclose(f);
    if (pd && img && n > 0) { /* where it was put: after the prior's datasets, else anywhere */
        int64_t from = (pd->at_in < pd->at_mid ? pd->at_in : pd->at_mid) - (1 << 16);
        from = from > 0 && from < n ? from : 0;
        pd->at_tokens = find_sentinel(img + from, n - from);
        if (pd->at_tokens < 0 && from > 0)
            pd->at_tokens = find_sentinel(img, n);
        else if (pd->at_tokens >= 0)
            pd->at_tokens += from;
    }
    if (!pd || !img || n <= 0 || pd->at_in < 0 || pd->at_mid < 0 || pd->at_tokens < 0 ||
        pd->at_in + 8 * d > n || pd->at_mid + 8 * ff > n) {
        pending_free(pd), free(img);
        return rc < 0 ? rc : mp_errorf(MP_EINTERNAL, "%s: HDF5 could not build the statistics", path);
    }
    /* the bytes before the first place of the prior are final: written and hashed now, up to a multiple of
     * MP_DIRECT_ALIGN (the direct write's unit); the tail from there stays in memory */
    pd->size = n;
    pd->tail_at = pd->at_in < pd->at_mid ? pd->at_in : pd->at_mid;
    pd->tail_at = pd->at_tokens < pd->tail_at ? pd->at_tokens : pd->tail_at;
    pd->tail_at -= pd->tail_at % MP_DIRECT_ALIGN;
    /* the tail goes out directly too, padded to MP_DIRECT_ALIGN (the file is truncated after) */
    size_t tail_cap = direct_padded((size_t)(n - pd->tail_at));
    void *tail = NULL;
    pd->tail = posix_memalign(&tail, MP_DIRECT_ALIGN, tail_cap) == 0 ? tail : NULL;
    pd->hash = XXH64_createState();
    rc = pd->tail && pd->hash ? 0 : mp_errorf(MP_ENOMEM, "%s: out of memory", path);
    if (rc == 0) {
        memcpy(pd->tail, img + pd->tail_at, (size_t)(n - pd->tail_at));
        memset(pd->tail + (n - pd->tail_at), 0, tail_cap - (size_t)(n - pd->tail_at));
        XXH64_reset(pd->hash, 0);
        XXH64_update(pd->hash, img, (size_t)pd->tail_at);
        snprintf(pd->path, sizeof pd->path, "%s", path);
        /* O_DIRECT: the hundreds of MB of a layer's Grams go to the disk from this buffer, not copied
         * through the page cache (that copy was most of calibrate's system time) */
        int fd = -1, direct = 0;
        rc = mp_open_direct(tmp, 1, &fd, &direct);
        if (rc == 0)
            rc = mp_pwrite_all(fd, img, (size_t)pd->tail_at, 0, &direct, tmp);
        /* buffered (a file system without O_DIRECT): start the write-back now (advisory), so that the
         * commit's fsync, a layer later, finds it done instead of writing while every rank waits */
        if (rc == 0 && !direct)
            (void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        if (fd >= 0 && close(fd) != 0 && rc == 0)
            rc = mp_syserrorf(MP_EIO, "%s: write failed", tmp);
    }
    free(img);
    if (rc < 0) {
        unlink(tmp);
        pending_free(pd);
        return rc;
    }
    pd->next = pending_list, pending_list = pd;
    return 0;
}

int mp_stats_write_end(const char *path, int64_t prior_tokens, const double *prior_diag_in,
                       const double *prior_diag_mid, int64_t d, int64_t f, uint64_t *xxh64)
{
    char tmp[4200];
    tmp_name(tmp, sizeof tmp, path);
    pending *pd = pending_take(path);
    int rc = pd && pd->d == d && pd->f == f ? 0
                                            : mp_errorf(MP_EINTERNAL, "%s: no statistics of d %lld f %lld pending", path,
                                                        (long long)d, (long long)f);
    if (rc == 0)
        rc = check_finite(path, "prior_diag_in", prior_diag_in, d, 1);
    if (rc == 0)
        rc = check_finite(path, "prior_diag_mid", prior_diag_mid, f, 1);
    if (rc == 0) { /* the file format is little-endian: so are the patches */
        unsigned char *t = pd->tail - pd->tail_at;
        for (int64_t i = 0; i < d; i++)
            le64(t + pd->at_in + 8 * i, dbits(prior_diag_in[i]));
        for (int64_t i = 0; i < f; i++)
            le64(t + pd->at_mid + 8 * i, dbits(prior_diag_mid[i]));
        le64(t + pd->at_tokens, (uint64_t)prior_tokens);
        int fd = -1, direct = 0;
        size_t len = (size_t)(pd->size - pd->tail_at);
        rc = mp_open_direct(tmp, 0, &fd, &direct);
        if (rc == 0)
            rc = mp_pwrite_all(fd, pd->tail, direct ? direct_padded(len) : len, pd->tail_at, &direct, tmp);
        if (rc == 0 && ftruncate(fd, (off_t)pd->size) != 0)
            rc = mp_syserrorf(MP_EIO, "%s: write failed", tmp);
        if (fd >= 0 && close(fd) != 0 && rc == 0)
            rc = mp_syserrorf(MP_EIO, "%s: write failed", tmp);
        XXH64_update(pd->hash, pd->tail, len);
    }
    if (rc == 0)
        rc = mp_commit_file(tmp, path);
    if (rc == 0 && xxh64)
        *xxh64 = XXH64_digest(pd->hash);
    if (rc < 0)
        unlink(tmp);
    pending_free(pd);
    return rc;
}

/* dataset `name` of exactly n elements into v (memory type mem); an empty one reads nothing */
static int get_typed(hid_t f, const char *path, const char *name, hid_t mem, void *v, hsize_t n)
{
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0)
        return mp_errorf(MP_EFORMAT, "%s: dataset '%s' is missing", path, name);
    hid_t sp = H5Dget_space(ds);
    hssize_t np = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    int ok = np == (hssize_t)n && (n == 0 || H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0);
    H5Dclose(ds);
    return ok ? 0 : mp_errorf(MP_EFORMAT, "%s: dataset '%s' has the wrong size or cannot be read", path, name);
}

static int get(hid_t f, const char *path, const char *name, double *v, hsize_t n)
{
    return get_typed(f, path, name, H5T_NATIVE_DOUBLE, v, n);
}

/* the number of elements of dataset `name` */
static int extent(hid_t f, const char *path, const char *name, int64_t *n)
{
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0)
        return mp_errorf(MP_EFORMAT, "%s: dataset '%s' is missing", path, name);
    hid_t sp = H5Dget_space(ds);
    hssize_t np = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    H5Dclose(ds);
    *n = np;
    return np >= 0 ? 0 : mp_errorf(MP_EFORMAT, "%s: dataset '%s' cannot be read", path, name);
}

/* the sample: t from sample_token, then X_sample [t, d] and H_sample [t, f] */
static int get_sample(hid_t f, const char *path, mp_expert_stats *s)
{
    int64_t t = 0;
    MP_CHECK(extent(f, path, "sample_token", &t));
    if (t == 0)
        return 0;
    s->sample_token = malloc(sizeof(int64_t) * (size_t)t);
    s->X_sample = malloc(sizeof(float) * (size_t)(t * s->d));
    s->H_sample = malloc(sizeof(float) * (size_t)(t * s->f));
    if (!s->sample_token || !s->X_sample || !s->H_sample)
        return mp_errorf(MP_ENOMEM, "%s: out of memory for a sample of %lld tokens", path, (long long)t);
    s->n_sample = t;
    MP_CHECK(get_typed(f, path, "sample_token", H5T_NATIVE_INT64, s->sample_token, (hsize_t)t));
    MP_CHECK(get_typed(f, path, "X_sample", H5T_NATIVE_FLOAT, s->X_sample, (hsize_t)(t * s->d)));
    MP_CHECK(get_typed(f, path, "H_sample", H5T_NATIVE_FLOAT, s->H_sample, (hsize_t)(t * s->f)));
    return 0;
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
    if (rc == 0 &&
        (d <= 0 || ff <= 0 || d > 1 << 20 || ff > 1 << 20 || layer < 0 || (expert < 0 && expert != MP_UNIT_DENSE)))
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
    /* the packed triangles are read into the front of the full matrices and unpacked in place */
    if (rc == 0)
        rc = get(f, path, "G_in_packed", s->G_in, (hsize_t)mp_gram_packed_size(d));
    if (rc == 0)
        rc = get(f, path, "G_mid_packed", s->G_mid, (hsize_t)mp_gram_packed_size(ff));
    if (rc == 0) {
        mp_gram_unpack(s->G_in, d);
        mp_gram_unpack(s->G_mid, ff);
        rc = get_sample(f, path, s);
    }
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
        rc = check_all_finite(path, s, 1, 0);
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
