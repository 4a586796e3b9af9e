/* qunit.c - the quantize stage's unit files (see qunit.h). */
#include "qunit.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"
#include "h5util.h"
#include "qtensor_h5.h"

struct mp_qunit {
    hid_t f;
    char root[64], tmp[4400], path[4400];
};

void mp_qunit_root(int unit, int n_experts, char *buf, int cap)
{
    if (unit == MP_UNIT_DENSE)
        snprintf(buf, (size_t)cap, "mlp");
    else if (unit < 0)
        snprintf(buf, (size_t)cap, "base");
    else if (unit >= n_experts)
        snprintf(buf, (size_t)cap, "shared");
    else
        snprintf(buf, (size_t)cap, "experts/%d", unit);
}

void mp_qunit_file(int unit, int n_experts, char *buf, int cap)
{
    if (unit == MP_UNIT_DENSE)
        snprintf(buf, (size_t)cap, "dense.h5");
    else if (unit < 0)
        snprintf(buf, (size_t)cap, "base.h5");
    else if (unit >= n_experts)
        snprintf(buf, (size_t)cap, "shared.h5");
    else
        snprintf(buf, (size_t)cap, "expert%04d.h5", unit);
}

int64_t mp_qtensor_bytes(const mp_qtensor *q)
{
    if (!q)
        return 0;
    int64_t b = 4 * q->m * q->words_per_row;
    if (q->scales)
        b += 2 * q->m * q->ngroups;
    if (q->zeros)
        b += 2 * q->m * q->ngroups;
    return b;
}

int mp_qunit_create(const char *path, int unit, int n_experts, int64_t est_bytes, mp_qunit **out)
{
    mp_h5_init();
    mp_qunit *u = calloc(1, sizeof *u);
    if (!u)
        return mp_errorf(MP_ENOMEM, "out of memory");
    mp_qunit_root(unit, n_experts, u->root, sizeof u->root);
    snprintf(u->path, sizeof u->path, "%s", path);
    snprintf(u->tmp, sizeof u->tmp, "%s.tmp.%d", path, (int)getpid());
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE), fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_obj_track_times(fcpl, 0);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18); /* compact groups */
    u->f = H5Fcreate(u->tmp, H5F_ACC_TRUNC, fcpl, fapl);
    H5Pclose(fcpl);
    H5Pclose(fapl);
    if (u->f < 0) {
        int rc = mp_h5_fail(MP_EIO, u->tmp, "cannot create");
        free(u);
        return rc;
    }
    /* a full disk found here, not inside HDF5's writes (see fsutil.h) */
    int rc = mp_reserve_space(u->tmp, (long long)(est_bytes + est_bytes / 4) + (256 << 10), u->path);
    if (rc < 0) {
        mp_qunit_discard(u);
        return rc;
    }
    *out = u;
    return 0;
}

int mp_qunit_put(mp_qunit *u, const mp_choice *c, int64_t m, int64_t n, const mp_qtensor *q0, const mp_qtensor *q1,
                 int64_t *bytes)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", u->root, MP_PROJ_NAME[c->proj]);
    int64_t shape[2] = {m, n}, b = mp_qtensor_bytes(q0) + mp_qtensor_bytes(q1);
    *bytes = b;
    int bad = 0;
    if (c->kind == MP_BK_DELTA) {
        hid_t g = mp_h5_mkgroup(u->f, path);
        bad = g < 0;
        if (!bad && q0 && q1)
            bad |= mp_qtensor_h5_write(g, "U", q0, c->rank) | mp_qtensor_h5_write(g, "V", q1, c->rank);
        if (!bad)
            bad |= mp_h5_attr_i64(g, "rank", q0 && q1 ? c->rank : 0);
        if (g >= 0) {
            bad |= mp_h5_attr_str(g, "kind", "delta") | mp_h5_attr_i64v(g, "shape", shape, 2) |
                   mp_h5_attr_i64(g, "bytes", b) | mp_h5_attr_f64(g, "loss", c->loss) |
                   mp_h5_attr_f64(g, "loss_raw", c->loss_raw) | mp_h5_attr_f64(g, "cost_s", c->cost);
            H5Gclose(g);
        }
    } else {
        if (!q0)
            return mp_errorf(MP_EINTERNAL, "unit %s %s: no tensor for a dense block", u->root, MP_PROJ_NAME[c->proj]);
        bad = mp_qtensor_h5_write(u->f, path, q0, -1);
        hid_t g = bad ? -1 : H5Gopen2(u->f, path, H5P_DEFAULT);
        bad |= g < 0;
        if (g >= 0) {
            bad |= mp_h5_attr_str(g, "kind", mp_block_kind_name(c->kind)) | mp_h5_attr_i64(g, "bytes", b) |
                   mp_h5_attr_f64(g, "loss", c->loss) | mp_h5_attr_f64(g, "loss_raw", c->loss_raw) |
                   mp_h5_attr_f64(g, "cost_s", c->cost);
            H5Gclose(g);
        }
    }
    if (bad) {
        char w[256];
        snprintf(w, sizeof w, "HDF5 could not store block %s", path);
        return mp_h5_fail(MP_EINTERNAL, u->tmp, w);
    }
    return 0;
}

int mp_qunit_save(mp_qunit *u)
{
    int rc = 0;
    if (H5Fclose(u->f) < 0)
        rc = mp_h5_fail(MP_EIO, u->tmp, "HDF5 could not finish the file");
    if (rc == 0)
        rc = mp_release_space(u->tmp);
    if (rc == 0)
        rc = mp_commit_file(u->tmp, u->path);
    if (rc < 0)
        unlink(u->tmp);
    free(u);
    return rc;
}

void mp_qunit_discard(mp_qunit *u)
{
    if (!u)
        return;
    H5Fclose(u->f);
    unlink(u->tmp);
    free(u);
}
