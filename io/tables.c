/* tables.c - measure tables on disk (see tables.h). */
#include "tables.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "h5util.h"
#include "qtensor_h5.h"

int mp_table_add(mp_proj_table *pt, double rank, int part, int fmt, double loss_raw, double loss, double bytes,
                 double cost, double M)
{
    double *t = realloc(pt->t, sizeof(double) * MP_TCOLS * (size_t)(pt->rows + 1));
    if (!t)
        return mp_errorf(MP_ENOMEM, "out of memory for a measure table");
    pt->t = t;
    double row[MP_TCOLS] = {rank, part, fmt, loss_raw, loss, bytes, cost, M};
    memcpy(t + MP_TCOLS * pt->rows++, row, sizeof row);
    return 0;
}

void mp_table_free(mp_unit_table *t)
{
    for (int p = 0; p < 3; p++)
        free(t->p[p].t);
    memset(t, 0, sizeof *t);
}

void mp_table_path(char *buf, int cap, const char *dir, int layer, int unit, int n_experts)
{
    if (unit == MP_UNIT_DENSE)
        snprintf(buf, (size_t)cap, "%s/layer%04d/dense.h5", dir, layer);
    else if (unit < 0)
        snprintf(buf, (size_t)cap, "%s/layer%04d/base.h5", dir, layer);
    else if (unit == n_experts)
        snprintf(buf, (size_t)cap, "%s/layer%04d/shared.h5", dir, layer);
    else
        snprintf(buf, (size_t)cap, "%s/layer%04d/expert%04d.h5", dir, layer, unit);
}

int mp_table_write(const char *path, const mp_unit_table *t)
{
    hid_t f = mp_h5_create_mem();
    if (f < 0)
        return mp_errorf(MP_EINTERNAL, "HDF5 could not create an in-memory file for %s", path);
    int64_t l = t->layer, u = t->unit, k = t->kind;
    int bad = mp_h5_put_attr(f, "layer", H5T_STD_I64LE, H5T_NATIVE_INT64, &l) |
              mp_h5_put_attr(f, "unit", H5T_STD_I64LE, H5T_NATIVE_INT64, &u) |
              mp_h5_put_attr(f, "kind", H5T_STD_I64LE, H5T_NATIVE_INT64, &k) |
              mp_h5_put_attr(f, "energy", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &t->energy) |
              mp_h5_put_attr(f, "damping_raised", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &t->damping_raised) |
              mp_h5_put_attr(f, "unsampled", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &t->unsampled);
    char names[1024] = "";
    for (int i = 0; i < t->nf; i++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? "," : "", t->fmt[i]->name);
    bad |= mp_h5_attr_str(f, "formats", names);
    for (int p = 0; p < 3 && !bad; p++) {
        char nm[32];
        snprintf(nm, sizeof nm, "table_%s", MP_PROJ_NAME[p]);
        bad |= mp_h5_put(f, nm, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, t->p[p].t, 2, (hsize_t)t->p[p].rows, MP_TCOLS);
        snprintf(nm, sizeof nm, "m_%s", MP_PROJ_NAME[p]);
        bad |= mp_h5_put_attr(f, nm, H5T_STD_I64LE, H5T_NATIVE_INT64, &t->p[p].m);
        snprintf(nm, sizeof nm, "n_%s", MP_PROJ_NAME[p]);
        bad |= mp_h5_put_attr(f, nm, H5T_STD_I64LE, H5T_NATIVE_INT64, &t->p[p].n);
    }
    if (bad) {
        H5Fclose(f);
        return mp_errorf(MP_EINTERNAL, "HDF5 could not build %s", path);
    }
    return mp_h5_save(f, path);
}

/* attribute `name` of the file's root, or MP_EFORMAT naming the file */
static int need(int rc, const char *path, const char *name)
{
    return rc < 0 ? mp_errorf(MP_EFORMAT, "%s: attribute '%s' is missing or unreadable", path, name) : 0;
}

int mp_table_read(const char *path, mp_unit_table *t)
{
    memset(t, 0, sizeof *t);
    mp_h5_init();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return mp_errorf(MP_ENOENT, "%s: cannot open the measure table", path);
    int64_t l = 0, u = 0, k = 0;
    char names[1024];
    int rc = need(mp_h5_attr_read_i64(f, "layer", &l), path, "layer");
    if (rc == 0)
        rc = need(mp_h5_attr_read_i64(f, "unit", &u), path, "unit");
    if (rc == 0)
        rc = need(mp_h5_attr_read_i64(f, "kind", &k), path, "kind");
    if (rc == 0)
        rc = need(mp_h5_attr_read_f64(f, "energy", &t->energy), path, "energy");
    if (rc == 0)
        rc = need(mp_h5_attr_read_f64(f, "damping_raised", &t->damping_raised), path, "damping_raised");
    if (rc == 0)
        rc = need(mp_h5_attr_read_f64(f, "unsampled", &t->unsampled), path, "unsampled");
    if (rc == 0)
        rc = need(mp_h5_attr_read_str(f, "formats", names, sizeof names), path, "formats");
    if (rc == 0 && (k < 0 || k >= MP_BK_COUNT || !(t->energy >= 0) || !isfinite(t->energy)))
        rc = mp_errorf(MP_EFORMAT, "%s: bad kind or energy", path);
    t->layer = (int)l, t->unit = (int)u, t->kind = (mp_block_kind)k;
    if (rc == 0 && (rc = mp_qformat_parse_list(names, t->fmt, 32, &t->nf)) < 0)
        mp_error_prefix("%s: attribute 'formats'", path);
    for (int p = 0; p < 3 && rc == 0; p++) {
        char nm[32];
        snprintf(nm, sizeof nm, "m_%s", MP_PROJ_NAME[p]);
        rc = need(mp_h5_attr_read_i64(f, nm, &t->p[p].m), path, nm);
        snprintf(nm, sizeof nm, "n_%s", MP_PROJ_NAME[p]);
        if (rc == 0)
            rc = need(mp_h5_attr_read_i64(f, nm, &t->p[p].n), path, nm);
        snprintf(nm, sizeof nm, "table_%s", MP_PROJ_NAME[p]);
        hid_t ds = rc == 0 ? H5Dopen2(f, nm, H5P_DEFAULT) : -1, sp = ds >= 0 ? H5Dget_space(ds) : -1;
        hsize_t dm[2] = {0, 0};
        if (rc == 0 && (sp < 0 || H5Sget_simple_extent_ndims(sp) != 2 || H5Sget_simple_extent_dims(sp, dm, NULL) < 0 ||
                        dm[1] != MP_TCOLS || dm[0] > (1u << 24)))
            rc = mp_errorf(MP_EFORMAT, "%s: dataset '%s' is missing or not [rows, %d]", path, nm, MP_TCOLS);
        if (rc == 0 && !(t->p[p].t = malloc(sizeof(double) * MP_TCOLS * (size_t)(dm[0] + 1))))
            rc = mp_errorf(MP_ENOMEM, "out of memory");
        if (rc == 0 && dm[0] && H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->p[p].t) < 0)
            rc = mp_errorf(MP_EFORMAT, "%s: cannot read dataset '%s'", path, nm);
        t->p[p].rows = (int)dm[0];
        for (int i = 0; rc == 0 && i < t->p[p].rows; i++) {
            const double *row = t->p[p].t + MP_TCOLS * i;
            int ok = row[MP_TCOL_PART] >= 0 && row[MP_TCOL_PART] <= 2 && row[MP_TCOL_FMT] >= -1 &&
                     row[MP_TCOL_FMT] < t->nf && row[MP_TCOL_BYTES] >= 0 && row[MP_TCOL_RANK] >= -1;
            for (int c = 0; c < MP_TCOLS; c++)
                ok &= isfinite(row[c]);
            ok &= row[MP_TCOL_LOSS_RAW] >= 0 && row[MP_TCOL_LOSS] >= 0 && row[MP_TCOL_COST] >= 0;
            if (!ok)
                rc = mp_errorf(MP_EFORMAT, "%s: dataset '%s' row %d is malformed", path, nm, i);
        }
        if (sp >= 0)
            H5Sclose(sp);
        if (ds >= 0)
            H5Dclose(ds);
    }
    H5Fclose(f);
    if (rc < 0)
        mp_table_free(t);
    return rc;
}

/* ---- printing ------------------------------------------------------------------------------------ */

static int layer_dirs(const char *dir, int **out, int *n)
{
    DIR *d = opendir(dir);
    *out = NULL, *n = 0;
    if (!d)
        return mp_syserrorf(MP_ENOENT, "%s: no measure tables (run the measure stage first)", dir);
    struct dirent *de;
    int cap = 0;
    while ((de = readdir(d))) {
        int l;
        char tail;
        if (sscanf(de->d_name, "layer%d%c", &l, &tail) != 1 || l < 0)
            continue;
        if (*n == cap) {
            int *v = realloc(*out, sizeof(int) * (size_t)(cap = cap ? 2 * cap : 64));
            if (!v) {
                closedir(d);
                return mp_errorf(MP_ENOMEM, "out of memory");
            }
            *out = v;
        }
        (*out)[(*n)++] = l;
    }
    closedir(d);
    for (int i = 1; i < *n; i++) /* insertion sort: few layers */
        for (int j = i; j > 0 && (*out)[j - 1] > (*out)[j]; j--) {
            int x = (*out)[j];
            (*out)[j] = (*out)[j - 1], (*out)[j - 1] = x;
        }
    return 0;
}

/* the unit files of a layer directory, in unit order (base, experts, shared; a dense layer's dense.h5) */
static int unit_files(const char *ldir, char ***names, int *n)
{
    DIR *d = opendir(ldir);
    *names = NULL, *n = 0;
    if (!d)
        return mp_syserrorf(MP_ENOENT, "%s", ldir);
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t k = strlen(de->d_name);
        if (k < 4 || strcmp(de->d_name + k - 3, ".h5"))
            continue;
        char **v = realloc(*names, sizeof(char *) * (size_t)(*n + 1));
        if (!v || !(v[*n] = strdup(de->d_name))) {
            free(v ? v : *names);
            closedir(d);
            return mp_errorf(MP_ENOMEM, "out of memory");
        }
        *names = v, (*n)++;
    }
    closedir(d);
    for (int i = 1; i < *n; i++) /* "base" < "expert..." < "shared" alphabetically: the unit order */
        for (int j = i; j > 0 && strcmp((*names)[j - 1], (*names)[j]) > 0; j--) {
            char *x = (*names)[j];
            (*names)[j] = (*names)[j - 1], (*names)[j - 1] = x;
        }
    return 0;
}

static void print_json_unit(const mp_unit_table *t, FILE *out, int first)
{
    fprintf(out, "%s\n  {\"layer\": %d, \"unit\": %d, \"kind\": \"%s\", \"energy\": %.17g, \"projections\": {",
            first ? "" : ",", t->layer, t->unit, mp_block_kind_name(t->kind), t->energy);
    for (int p = 0; p < 3; p++) {
        fprintf(out, "%s\"%s\": {\"m\": %lld, \"n\": %lld, \"rows\": [", p ? ", " : "", MP_PROJ_NAME[p],
                (long long)t->p[p].m, (long long)t->p[p].n);
        for (int i = 0; i < t->p[p].rows; i++) {
            const double *r = t->p[p].t + MP_TCOLS * i;
            int fi = (int)r[MP_TCOL_FMT], part = (int)r[MP_TCOL_PART];
            fprintf(out,
                    "%s{\"rank\": %.0f, \"part\": \"%s\", \"format\": %s%s%s, \"loss_raw\": %.17g, \"loss\": %.17g, "
                    "\"bytes\": %.0f, \"cost_s\": %.17g, \"tokens_M\": %.0f}",
                    i ? ", " : "", r[MP_TCOL_RANK], part == 0 ? (t->kind == MP_BK_DELTA ? "U" : "W") : part == 1 ? "V" : "truncation",
                    fi >= 0 ? "\"" : "", fi >= 0 ? t->fmt[fi]->name : "null", fi >= 0 ? "\"" : "",
                    r[MP_TCOL_LOSS_RAW], r[MP_TCOL_LOSS], r[MP_TCOL_BYTES], r[MP_TCOL_COST], r[MP_TCOL_M]);
        }
        fprintf(out, "]}");
    }
    fprintf(out, "}}");
}

/* readable: per block, the normalised loss under each format (a delta: at its largest rank, U and V in the
 * same format, truncation included) */
static void print_text_unit(const mp_unit_table *t, FILE *out)
{
    for (int p = 0; p < 3; p++) {
        const mp_proj_table *pt = &t->p[p];
        char who[48];
        if (t->kind == MP_BK_BASE)
            snprintf(who, sizeof who, "base");
        else if (t->kind == MP_BK_SHARED)
            snprintf(who, sizeof who, "shared");
        else if (t->kind == MP_BK_DENSE)
            snprintf(who, sizeof who, "dense MLP");
        else
            snprintf(who, sizeof who, "expert %d", t->unit);
        double rmax = -1, trunc = 0;
        for (int i = 0; i < pt->rows; i++)
            if (pt->t[MP_TCOLS * i + MP_TCOL_RANK] > rmax)
                rmax = pt->t[MP_TCOLS * i + MP_TCOL_RANK];
        for (int i = 0; i < pt->rows; i++) {
            const double *r = pt->t + MP_TCOLS * i;
            if (r[MP_TCOL_PART] == 2 && r[MP_TCOL_RANK] == rmax)
                trunc = r[MP_TCOL_LOSS];
        }
        fprintf(out, "  %5d  %-10s %-4s", t->layer, who, MP_PROJ_NAME[p]);
        if (t->kind == MP_BK_DELTA)
            fprintf(out, " r %-5.0f", rmax);
        else
            fprintf(out, "        ");
        for (int f = 0; f < t->nf; f++) {
            double loss = 0, bytes = 0;
            int seen = 0;
            for (int i = 0; i < pt->rows; i++) {
                const double *r = pt->t + MP_TCOLS * i;
                if ((int)r[MP_TCOL_FMT] == f && r[MP_TCOL_RANK] == rmax)
                    loss += r[MP_TCOL_LOSS], bytes += r[MP_TCOL_BYTES], seen = 1;
            }
            if (seen)
                fprintf(out, " %10.3e", loss + trunc);
            else
                fprintf(out, " %10s", "-");
            (void)bytes;
        }
        fprintf(out, "\n");
    }
}

int mp_tables_print(const char *dir, int json, FILE *out)
{
    int *layers = NULL, nl = 0, rc = 0, first = 1;
    MP_CHECK(layer_dirs(dir, &layers, &nl));
    if (json)
        fprintf(out, "{\"measure\": \"%s\", \"units\": [", dir);
    for (int i = 0; i < nl && rc == 0; i++) {
        char ldir[4400];
        char **names = NULL;
        int nn = 0;
        snprintf(ldir, sizeof ldir, "%s/layer%04d", dir, layers[i]);
        rc = unit_files(ldir, &names, &nn);
        for (int k = 0; k < nn; k++) {
            char path[4700];
            mp_unit_table t;
            snprintf(path, sizeof path, "%s/%s", ldir, names[k]);
            if (rc == 0 && (rc = mp_table_read(path, &t)) == 0) {
                if (json)
                    print_json_unit(&t, out, first);
                else {
                    if (first) {
                        fprintf(out,
                                "measure tables in %s: normalised loss (loss / layer MoE output energy; a dense "
                                "layer's: its MLP output energy) per format;\na delta at its largest candidate rank "
                                "with U and V in that format, "
                                "truncation included\n  layer  block      proj         ",
                                dir);
                        for (int f = 0; f < t.nf; f++)
                            fprintf(out, " %10s", t.fmt[f]->name);
                        fprintf(out, "\n");
                    }
                    print_text_unit(&t, out);
                }
                first = 0;
                mp_table_free(&t);
            }
            free(names[k]);
        }
        free(names);
    }
    if (json && rc == 0)
        fprintf(out, "\n]}\n");
    free(layers);
    return rc;
}
